"""The dispatch point for the layers' matrix products.

``matmul(a, b)`` is ``a @ b`` for 2-D arrays (transposed views such as ``x.T``
welcome): NumPy's own product for NumPy arrays, and for CuPy arrays cuBLAS called
directly by :mod:`fcgpu.cuda.blas`, which is legal inside a CUDA-graph capture (CuPy's
``@`` is not) and follows :func:`fcgpu.backend.set_matmul_precision`. Layer code
calls this, never ``@``, for its products.
"""
from __future__ import annotations

from .backend import is_cupy_array

__all__ = ["matmul"]


def matmul(a, b):
    """``a @ b`` (see the module docstring)."""
    if is_cupy_array(a):
        from .cuda import blas
        return blas.matmul(a, b)
    return a @ b
