"""The suite's own switches, FCGPU_REQUIRE_GPU and FCGPU_REQUIRE_NVCC: a run that must
exercise the GPU or the kernel toolchain fails where it would otherwise skip."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import toolchain

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

@pytest.mark.gpu
def test_gpu_thing():
    pytest.skip("no device here")

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="needs CuPy")
def test_gpu_marked_skipif():
    pass

def test_cpu_thing():
    pytest.skip("not a GPU test")

@pytest.mark.gpu
def test_gpu_that_runs():
    pass
'''

HOOK = '''
import importlib.util, sys
sys.path.insert(0, %r)
spec = importlib.util.spec_from_file_location("fcgpu_tests_conftest", %r)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
pytest_runtest_makereport = mod.pytest_runtest_makereport
'''


def _run(tmp_path, require):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "conftest.py").write_text(HOOK % (str(TESTS), str(TESTS / "conftest.py")))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: a GPU test\n")
    env = dict(os.environ)
    env.pop("FCGPU_REQUIRE_GPU", None)
    if require:
        env["FCGPU_REQUIRE_GPU"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(tmp_path)], capture_output=True, text=True, cwd=str(tmp_path),
                          env=env, timeout=300)


def test_require_gpu_turns_skipped_gpu_tests_into_failures(tmp_path):
    r = _run(tmp_path, require=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 3 skipped" in r.stdout, r.stdout
    r = _run(tmp_path, require=True)
    assert r.returncode == 1, r.stdout + r.stderr
    # both ways a GPU test skips fail (in the test, in its setup); a CPU test may skip
    assert "1 failed, 1 passed, 1 skipped, 1 error" in r.stdout, r.stdout
    assert "FCGPU_REQUIRE_GPU=1 but this GPU test skipped: no device here" in r.stdout
    assert "FCGPU_REQUIRE_GPU=1 but this GPU test skipped: needs CuPy" in r.stdout


def test_require_nvcc_turns_missing_tools_into_failures(monkeypatch):
    monkeypatch.delenv(toolchain.REQUIRE_NVCC, raising=False)
    with pytest.raises(pytest.skip.Exception, match="nvcc not found"):
        toolchain.unavailable("nvcc not found")
    for off in ("", "0"):
        monkeypatch.setenv(toolchain.REQUIRE_NVCC, off)
        with pytest.raises(pytest.skip.Exception):
            toolchain.unavailable("nvcc not found")
    monkeypatch.setenv(toolchain.REQUIRE_NVCC, "1")
    with pytest.raises(pytest.fail.Exception, match="FCGPU_REQUIRE_NVCC=1 but nvcc not found"):
        toolchain.unavailable("nvcc not found")
    monkeypatch.setattr(toolchain, "NVCC", None)
    with pytest.raises(pytest.fail.Exception, match="FCGPU_REQUIRE_NVCC=1 but nvcc not found"):
        toolchain.nvcc_reports()
