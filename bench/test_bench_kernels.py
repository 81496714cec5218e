"""Kernel-level suite; the code lives in fcgpu/bench/suites/test_kernels.py."""
from fcgpu.bench.suites.test_kernels import test_kernel  # noqa: F401
