"""Adam's update as one pass: a CUDA kernel on CuPy, a compiled loop on NumPy, plain
array code otherwise (and as the reference the tests compare with).

``m`` and ``v`` are updated in place; a new ``next_w`` is returned.
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module, is_cupy_array
from . import fused

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def adam_step_ref(w, dw, m, v, lr, beta1, beta2, eps, t):
    xp = get_array_module(w)
    m *= beta1
    m += (1 - beta1) * dw
    v *= beta2
    v += (1 - beta2) * (dw * dw)
    mt = m / (1 - beta1 ** t)
    vt = v / (1 - beta2 ** t)
    return w - lr * mt / (xp.sqrt(vt) + eps)


def _fusable(w, dw, m, v):
    """One dtype (float32/float64), one shape, state arrays updatable in place."""
    return (w.dtype == dw.dtype == m.dtype == v.dtype and w.dtype in _FLOATS
            and w.shape == dw.shape == m.shape == v.shape
            and m.flags.c_contiguous and v.flags.c_contiguous)


def adam_step(w, dw, m, v, lr, beta1, beta2, eps, t):
    if is_cupy_array(w):
        if all(is_cupy_array(a) for a in (dw, m, v)) and _fusable(w, dw, m, v):
            from .cuda import train_ops
            return train_ops.adam_step(w, dw, m, v, lr, beta1, beta2, eps, t)
        return adam_step_ref(w, dw, m, v, lr, beta1, beta2, eps, t)
    if (fused.use_compiled_cpu() and w.flags.c_contiguous and dw.flags.c_contiguous
            and _fusable(w, dw, m, v)):
        from .cpu import ops
        return ops.adam_step(w, dw, m, v, lr, beta1, beta2, eps, t)
    return adam_step_ref(w, dw, m, v, lr, beta1, beta2, eps, t)
