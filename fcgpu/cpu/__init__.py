"""The compiled CPU path (Numba): Philox masks and fused elementwise passes.

Each function here has a plain array-code reference (``fcgpu.random``,
``fcgpu.fused``) that the tests compare it with.

Numba's parallel loops run between OpenBLAS calls. With the OpenMP threading layer
the two thread pools spin-wait against each other on small machines (measured on 2
cores: a 490x3072x500 GEMM went from 17 ms to 56 ms when OpenMP threads were left
spinning), so fcgpu asks for Numba's own ``workqueue`` layer unless the user chose
one with ``NUMBA_THREADING_LAYER``.
"""
import os as _os

if "NUMBA_THREADING_LAYER" not in _os.environ:
    import numba as _numba
    _numba.config.THREADING_LAYER = "workqueue"
