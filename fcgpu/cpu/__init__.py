"""The compiled CPU path (Numba): Philox masks and fused elementwise passes.

Each function here has a plain array-code reference (``fcgpu.random``,
``fcgpu.fused_ref``) that the tests compare it with.

Threads. Numba's parallel loops run between OpenBLAS calls on the same cores, and
idle threads of either pool that spin-wait steal the cores from the other. Measured on
2 cores, training step of the default net (3x500, batch 490), min of 3 interleaved runs:
OpenMP layer with GNU OpenMP's default spin count 45+ ms (a 490x3072x500 GEMM alone
went from 8 to 15 ms), Numba's ``workqueue`` layer 36 ms (no spinning, but ~150 us to
start each parallel loop), OpenMP with ``GOMP_SPINCOUNT=1000`` 33 ms, and with
``GOMP_SPINCOUNT=0`` 30 ms. So fcgpu prefers the OpenMP layer with no spinning, unless
the user chose a layer (``NUMBA_THREADING_LAYER``) or a spin count. The variable is
read when libgomp loads (Numba's first parallel loop), so it has no effect where
another library (PyTorch, say) loaded libgomp first. Without libgomp, Numba falls
back to ``workqueue``.
"""
import os as _os

if "NUMBA_THREADING_LAYER" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "0")
    import numba as _numba
    _numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
