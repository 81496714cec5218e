"""The dispatch point for the layers' matrix products.

``matmul(a, b)`` is ``a @ b`` for 2-D arrays (transposed views such as ``x.T``
welcome): NumPy's own product for NumPy arrays, and for CuPy arrays cuBLAS called
directly by :mod:`fcgpu.cuda.blas`, which is legal inside a CUDA-graph capture (CuPy's
``@`` is not) and follows :func:`fcgpu.backend.set_matmul_precision`. Layer code
calls the three products of an affine layer below, never ``@``:

* :func:`forward` ``x2 @ w``, :func:`weight_gradient` ``x2.T @ dout`` and
  :func:`input_gradient` ``dout @ w.T``, each a :func:`matmul` with its role.

:func:`observe` lets a caller see every product of a block (the step profiler,
``fcgpu bench --profile``, times each one by its role) without patching anything.
"""
from __future__ import annotations

import contextlib
import contextvars

from .backend import is_cupy_array

__all__ = ["matmul", "forward", "weight_gradient", "input_gradient", "observe", "ROLES"]

# the roles of an affine layer's products, in the order a step runs them
ROLES = ("forward", "weight_gradient", "input_gradient")

_OBSERVER = contextvars.ContextVar("fcgpu_matmul_observer", default=None)


def _product(a, b):
    if is_cupy_array(a):
        from .cuda import blas
        return blas.matmul(a, b)
    return a @ b


def matmul(a, b, role=None):
    """``a @ b`` (see the module docstring); ``role`` names the product for an
    :func:`observe` block."""
    fn = _OBSERVER.get()
    return _product(a, b) if fn is None else fn(_product, a, b, role)


def forward(x2, w):
    """An affine layer's forward product ``x2 @ w`` (``x2``: its input as rows)."""
    return matmul(x2, w, "forward")


def weight_gradient(x2, dout):
    """The weight gradient ``x2.T @ dout``."""
    return matmul(x2.T, dout, "weight_gradient")


def input_gradient(dout, w):
    """The input gradient, as rows: ``dout @ w.T``."""
    return matmul(dout, w.T, "input_gradient")


@contextlib.contextmanager
def observe(fn):
    """Within the block every product is ``fn(product, a, b, role)``, where
    ``product(a, b)`` computes it and ``role`` is one of :data:`ROLES` (or None for
    a product a caller made itself); ``fn`` returns the result."""
    token = _OBSERVER.set(fn)
    try:
        yield
    finally:
        _OBSERVER.reset(token)
