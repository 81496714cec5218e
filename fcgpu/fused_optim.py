"""Adam's update as one pass: a compiled loop on NumPy, plain array code otherwise.

``m`` and ``v`` are updated in place; a new ``next_w`` is returned.
"""
from __future__ import annotations

from .backend import get_array_module, is_cupy_array
from . import fused


def adam_step_ref(w, dw, m, v, lr, beta1, beta2, eps, t):
    xp = get_array_module(w)
    m *= beta1
    m += (1 - beta1) * dw
    v *= beta2
    v += (1 - beta2) * (dw * dw)
    mt = m / (1 - beta1 ** t)
    vt = v / (1 - beta2 ** t)
    return w - lr * mt / (xp.sqrt(vt) + eps)


def adam_step(w, dw, m, v, lr, beta1, beta2, eps, t):
    if (not is_cupy_array(w) and fused.use_compiled_cpu() and w.flags.c_contiguous
            and dw.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous
            and w.dtype == dw.dtype == m.dtype == v.dtype and w.dtype.kind == "f"):
        from .cpu import ops
        return ops.adam_step(w, dw, m, v, lr, beta1, beta2, eps, t)
    return adam_step_ref(w, dw, m, v, lr, beta1, beta2, eps, t)
