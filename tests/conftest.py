"""Shared fixtures: the ``xp`` backend fixture, fresh random generators, and the
kernel toolchain builds (once per session).

``xp`` runs a test once on NumPy and once on CuPy; the CuPy run skips with the
reason the backend reports (not installed, no driver, no device) where it cannot run.

Two environment variables turn skips that could hide breakage into failures:

* ``FCGPU_REQUIRE_GPU=1`` (set by bench/gpu_check.sh): every test marked ``gpu`` must
  run; one that skips (no CuPy, a broken driver, no device, too little memory)
  fails with its skip reason. The one exception: a test that the GPU check's step did
  not start because the step's time ran out (bench/gpu_check_pytest.py) stays
  skipped, and the step reads CUT (the run INCOMPLETE), not FAIL;
* ``FCGPU_REQUIRE_NVCC=1`` (set by .ci/run): the CPU-side kernel checks must run; a
  missing nvcc, NVRTC, c++filt, nm or host C++ compiler fails them (tests/toolchain.py).
"""
import os
import secrets

import numpy as np
import pytest

import toolchain
from fcgpu import backend

REQUIRE_GPU = "FCGPU_REQUIRE_GPU"
# bench/gpu_check_pytest.py's OUT_OF_TIME (tests/test_gpu_check.py checks they agree)
CHECK_OUT_OF_TIME = "gpu_check: the step's time ran out before this test"


def cupy_or_skip():
    ok, why = backend.cupy_status()
    if not ok:
        pytest.skip("CuPy backend unavailable: %s" % why)
    return backend.require_cupy()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under FCGPU_REQUIRE_GPU=1 a skipped ``gpu`` test is a failure: whatever made it
    skip (skipif marks, the xp fixture, a helper) is reported as the reason. A test
    skipped because the GPU check's step ran out of time is not: it was cut, not
    broken (the step reads CUT)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and item.get_closest_marker("gpu") is not None \
            and toolchain.required(REQUIRE_GPU) and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
        if reason.startswith(CHECK_OUT_OF_TIME):
            return
        rep.outcome = "failed"
        rep.longrepr = "%s=1 but this GPU test skipped: %s" % (REQUIRE_GPU, reason)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test."""
    if request.param == "numpy":
        return np
    return cupy_or_skip()


@pytest.fixture
def rng():
    """A generator with a fresh seed each run; the seed is printed for replays."""
    seed = int(os.environ.get("FCGPU_TEST_SEED", secrets.randbits(32)))
    print("rng seed:", seed, "(replay with FCGPU_TEST_SEED=%d)" % seed)
    return np.random.default_rng(seed)


@pytest.fixture
def cifar_path():
    """The real CIFAR-10 archive named by FCGPU_DATA (integration tests only)."""
    path = os.environ.get("FCGPU_DATA")
    if not path or not os.path.exists(path):
        pytest.skip("FCGPU_DATA is not set to a CIFAR-10 archive (set it to "
                    "../shared/cifar10/cifar-10-python.tar.gz to run this test)")
    return path


# ----------------------------------------------------------------- kernel toolchain
# Session-scoped: test_kernels_host.py and test_cuda_graph.py share one build each.

@pytest.fixture(scope="session")
def nvcc_reports():
    """{file: (ptxas output, per-entry registers/spills)}; skips without nvcc."""
    return toolchain.nvcc_reports()


@pytest.fixture(scope="session")
def emu_lib(tmp_path_factory):
    """The kernels built for the host (tests/host/kernel_emu.cpp); needs only g++."""
    return toolchain.build_emulator(tmp_path_factory.mktemp("emu"))


@pytest.fixture(scope="session")
def kernel_signatures(emu_lib):
    """{name expression: parameter types}, from the emulator library's symbols."""
    return toolchain.emulator_signatures(emu_lib.path)


@pytest.fixture(scope="session")
def launch_bounds():
    """{name expression: most threads per block} from NVRTC's PTX (.maxntid), or None
    where NVRTC is missing (test_kernels_host.py's own check of it then skips, or
    fails under FCGPU_REQUIRE_NVCC=1)."""
    if toolchain.find_nvrtc() is None and not toolchain.required(toolchain.REQUIRE_NVCC):
        return None
    return toolchain.launch_bounds()
