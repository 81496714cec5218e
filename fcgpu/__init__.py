"""fcgpu: fully-connected nets on NumPy or CuPy, with fused CUDA kernels.

``import fcgpu`` never imports CuPy; the backend is resolved on first use from
``FCGPU_BACKEND`` (numpy | cupy | auto) or :func:`set_backend`.
"""
from .backend import (BackendUnavailable, cupy_status, get_backend, get_matmul_precision,
                      get_xp, set_backend, set_matmul_precision)

__version__ = "0.1.0"
__all__ = ["BackendUnavailable", "cupy_status", "get_backend", "get_xp", "set_backend",
           "get_matmul_precision", "set_matmul_precision", "__version__"]
