"""Shared fixtures: the ``xp`` backend fixture and fresh random generators.

``xp`` runs a test once on NumPy and once on CuPy; the CuPy run skips with the
reason the backend reports (not installed, no driver, no device) where it cannot run.
"""
import os
import secrets

import numpy as np
import pytest

from fcgpu import backend


def cupy_or_skip():
    ok, why = backend.cupy_status()
    if not ok:
        pytest.skip("CuPy backend unavailable: %s" % why)
    return backend.require_cupy()


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
