"""The update rules' passes: a CUDA kernel on CuPy, a compiled loop on NumPy (Adam),
plain array code otherwise (and as the reference the tests compare with).

* ``adam_step``: ``m`` and ``v`` are updated in place; a new ``next_w`` is returned;
* ``rule_step`` (SGD, SGD with momentum, RMSProp): on CuPy one kernel that keeps
  float32 subnormals as NumPy does (CuPy's own elementwise kernels flush them), so the
  plain GPU step equals NumPy's and the CUDA-graph step's bit for bit; ``None`` where
  the arrays do not fit it (the rule then runs its plain array code).
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


def rule_step(rule_id, w, dw, state, lr, h=0.0, eps=0.0):
    """``next_w`` of the rule ``rule_id`` of ``kernels/optim.cuh``'s UpdateRule
    (``fcgpu.optim.RULES[name].device_id``): SGD, SGD with momentum (``state`` the
    velocity, ``h`` the momentum) or RMSProp (``state`` the cache, ``h`` the decay
    rate, ``eps``) in one CUDA kernel, ``state`` updated in place; or None when the
    arrays are not CuPy arrays of one float dtype and shape (the caller then computes
    the rule itself)."""
    if not is_cupy_array(w):
        return None
    arrays = (w, dw) if state is None else (w, dw, state)
    if not (all(is_cupy_array(a) for a in arrays) and all(a.dtype == w.dtype for a in arrays)
            and w.dtype in _FLOATS and all(a.shape == w.shape for a in arrays)
            and (state is None or state.flags.c_contiguous)):
        return None
    from .cuda import train_ops
    return train_ops.rule_step(rule_id, w, dw, state, lr, h, eps)
