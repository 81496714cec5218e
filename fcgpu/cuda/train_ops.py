"""The training step's kernels for CuPy arrays: parameter updates
(``kernels/optim.cu``) and the CUDA-graph step's bookkeeping (``kernels/graph.cu``).

* :func:`adam_step`, :func:`rule_step`: Adam, SGD, SGD with momentum and RMSProp in
  one kernel per parameter (the plain step);
* :func:`adam_step_device`, :func:`rule_step_device`: the updates of a step captured
  in a CUDA graph (:mod:`fcgpu.cuda.graph`), with the learning rate and Adam's bias
  corrections read from device memory when the kernel runs;
* :func:`gather_rows` (the minibatch at a batch index held on the device) and
  :func:`graph_advance` (the step's loss recorded, the counters advanced).

These launch through :mod:`fcgpu.cuda.ops` (its ``get_kernel``, grid sizing and
argument checks); each kernel is a :class:`fcgpu.cuda.module.Kernel` declared below.
"""
from __future__ import annotations

import numpy as np

from ..backend import is_cupy_array
from . import ops
from .module import FLOAT_DTYPES, Kernel

__all__ = ["adam_step", "adam_step_device", "rule_step", "rule_step_device", "gather_rows",
           "graph_advance", "bias_corrections", "RULE_SGD", "RULE_SGD_MOMENTUM",
           "RULE_RMSPROP", "RULE_SGD_NESTEROV"]

# kernels/optim.cuh (UpdateRule; tests/test_kernel_enums.py compares them)
RULE_SGD, RULE_SGD_MOMENTUM, RULE_RMSPROP, RULE_SGD_NESTEROV = 0, 1, 2, 3
RULES = (RULE_SGD, RULE_SGD_MOMENTUM, RULE_RMSPROP, RULE_SGD_NESTEROV)

_u64 = np.uint64
_f64 = np.float64

# kernels/optim.cu
_ADAM = Kernel("optim.cu", "fcgpu_adam", FLOAT_DTYPES, ops.VEC)
_ADAM_DEV = Kernel("optim.cu", "fcgpu_adam_dev", FLOAT_DTYPES, ops.VEC)
_RULE = Kernel("optim.cu", "fcgpu_rule", FLOAT_DTYPES, RULES, ops.VEC)
_RULE_DEV = Kernel("optim.cu", "fcgpu_rule_dev", FLOAT_DTYPES, RULES, ops.VEC)
# kernels/graph.cu
_GATHER_ROWS = Kernel("graph.cu", "fcgpu_gather_rows", FLOAT_DTYPES, ops.VEC)
_GRAPH_ADVANCE = Kernel("graph.cu", "fcgpu_graph_advance", FLOAT_DTYPES)


def bias_corrections(beta1, beta2, t, count=1):
    """Adam's bias corrections for the steps s = t, t + 1, ..., t + count - 1: a
    float64 ``(count, 2)`` table of ``(1 - beta1**s, 1 - beta2**s)`` computed in
    Python floats (C ``pow``), exactly as :func:`fcgpu.fused_optim.adam_step_ref` and
    the CPU path compute them. :func:`adam_step` takes its row, and a step captured
    in a CUDA graph reads its rows from device memory (:func:`adam_step_device`): the
    plain and the captured step divide by the same numbers."""
    beta1, beta2, t = float(beta1), float(beta2), int(t)
    return np.array([(1 - beta1 ** s, 1 - beta2 ** s) for s in range(t, t + int(count))],
                    dtype=np.float64).reshape(-1, 2)


def _same_as(a, w, what, contiguous=False):
    """``a`` checked against ``w``: a CuPy array of the same shape and dtype
    (C-contiguous when it is updated in place)."""
    if not is_cupy_array(a):
        raise ValueError("%s must be a CuPy array on the CUDA path, got %s"
                         % (what, type(a).__name__))
    if a.dtype != w.dtype:
        raise ValueError("%s has dtype %s, expected %s" % (what, a.dtype, w.dtype))
    ops.same_shape(w, a, "w", what)
    if contiguous and not a.flags.c_contiguous:
        raise ValueError("%s must be C-contiguous (it is updated in place)" % what)
    return a


def _grouped(name, n):
    """Grid of the optimizer kernels: one thread per group of 4 elements."""
    return (ops.grid_1d(name, (n + 3) // 4),), (ops.THREADS,)


def adam_step(w, dw, m, v, lr, beta1, beta2, eps, t):
    """Adam in one kernel (the math of :func:`fcgpu.fused_optim.adam_step_ref`):
    ``m`` and ``v`` are updated in place, a new ``next_w`` is returned. The bias
    corrections ``1 - beta**t`` are :func:`bias_corrections`' float64 numbers, those
    of the CPU path and of the CUDA-graph step. ``m`` and ``v`` must be C-contiguous
    arrays of ``w``'s dtype and shape."""
    cp = ops.cupy()
    dt = ops.float_dtype(w, "w")
    w = ops.as_input(w, "w")
    dw = ops.as_input(_same_as(dw, w, "dw"), "dw")
    m = _same_as(m, w, "m", contiguous=True)
    v = _same_as(v, w, "v", contiguous=True)
    (c1, c2), = bias_corrections(beta1, beta2, t)
    with ops.device_of(w):
        out = cp.empty(w.shape, dtype=dt)
        n = w.size
        if n == 0:
            return out
        name = _ADAM.name(dt, ops.aligned(out, w, dw, m, v))
        grid, block = _grouped(name, n)
        ops.get_kernel(name)(grid, block,
                             (out, w, dw, m, v, _u64(n), _f64(lr), _f64(beta1), _f64(beta2),
                              _f64(eps), _f64(c1), _f64(c2)))
    return out


def adam_step_device(w, dw, m, v, lr_ptr, corrections, index, beta1, beta2, eps, out=None):
    """Adam with the learning rate (``lr_ptr[0]``, float64) and the bias corrections
    read from device memory when the kernel runs: for a step captured in a CUDA graph.
    ``corrections`` is a C-contiguous float64 (K, 2) table of ``(1 - beta1**t,
    1 - beta2**t)`` rows (:func:`bias_corrections`) and the kernel
    uses row ``index[0]`` (uint64); an index past the table updates nothing.
    ``m``, ``v`` in place; next w into ``out`` (default: ``w`` itself, in place).
    ``w``, ``m``, ``v``, ``out`` must be C-contiguous."""
    dt = ops.float_dtype(w, "w")
    w = _same_as(w, w, "w", contiguous=True)
    dw = ops.as_input(_same_as(dw, w, "dw"), "dw")
    m = _same_as(m, w, "m", contiguous=True)
    v = _same_as(v, w, "v", contiguous=True)
    out = w if out is None else _same_as(out, w, "out", contiguous=True)
    lr_ptr = ops.device_scalar(lr_ptr, np.float64, "lr_ptr")
    corrections = ops.device_scalar(corrections, np.float64, "corrections")
    if corrections.ndim != 2 or corrections.shape[1] != 2:
        raise ValueError("corrections must have shape (K, 2), got %s"
                         % (tuple(corrections.shape),))
    index = ops.device_scalar(index, np.uint64, "index")
    n = w.size
    if n == 0:
        return out
    with ops.device_of(w):
        name = _ADAM_DEV.name(dt, ops.aligned(out, w, dw, m, v))
        grid, block = _grouped(name, n)
        ops.get_kernel(name)(grid, block,
                             (out, w, dw, m, v, _u64(n), lr_ptr, corrections, index,
                              _u64(corrections.shape[0]), _f64(beta1), _f64(beta2),
                              _f64(eps)))
    return out


def rule_step(rule, w, dw, state, lr, h=0.0, eps=0.0):
    """SGD (``rule`` RULE_SGD: ``w - lr*dw``), SGD with momentum (RULE_SGD_MOMENTUM:
    ``state`` is the velocity, ``h`` the momentum) or RMSProp (RULE_RMSPROP: ``state``
    is the cache, ``h`` the decay rate, ``eps``) in one kernel, the learning rate by
    value: ``state`` updated in place, a new ``next_w`` returned. The math and rounding
    of :mod:`fcgpu.optim`'s rules, float32 subnormals kept (CuPy's own elementwise
    kernels would flush them: -ftz=true)."""
    cp = ops.cupy()
    if rule not in RULES:
        raise ValueError("unknown update rule code %r" % (rule,))
    dt = ops.float_dtype(w, "w")
    w = ops.as_input(w, "w")
    dw = ops.as_input(_same_as(dw, w, "dw"), "dw")
    state = w if rule == RULE_SGD else _same_as(state, w, "state", contiguous=True)
    with ops.device_of(w):
        out = cp.empty(w.shape, dtype=dt)
        n = w.size
        if n == 0:
            return out
        name = _RULE.name(dt, rule, ops.aligned(out, w, dw, state))
        grid, block = _grouped(name, n)
        ops.get_kernel(name)(grid, block, (out, w, dw, state, _u64(n), _f64(lr), _f64(h),
                                           _f64(eps)))
    return out


def rule_step_device(rule, w, dw, state, lr_ptr, h=0.0, eps=0.0):
    """``w`` updated in place by SGD (``rule`` RULE_SGD: ``w - lr*dw``), SGD with
    momentum (RULE_SGD_MOMENTUM: ``state`` is the velocity, ``h`` the momentum) or
    RMSProp (RULE_RMSPROP: ``state`` is the cache, ``h`` the decay rate, ``eps``), with
    the learning rate read from device memory (``lr_ptr[0]``, float64) when the
    kernel runs. The math and rounding of :mod:`fcgpu.optim`'s rules."""
    if rule not in RULES:
        raise ValueError("unknown update rule code %r" % (rule,))
    dt = ops.float_dtype(w, "w")
    w = _same_as(w, w, "w", contiguous=True)
    dw = ops.as_input(_same_as(dw, w, "dw"), "dw")
    if rule == RULE_SGD:
        state = w  # not read
    else:
        state = _same_as(state, w, "state", contiguous=True)
    lr_ptr = ops.device_scalar(lr_ptr, np.float64, "lr_ptr")
    n = w.size
    if n == 0:
        return w
    with ops.device_of(w):
        name = _RULE_DEV.name(dt, rule, ops.aligned(w, dw, state))
        grid, block = _grouped(name, n)
        ops.get_kernel(name)(grid, block,
                             (w, dw, state, _u64(n), lr_ptr, _f64(h), _f64(eps)))
    return w


# ----------------------------------------------------------------- CUDA-graph step

def gather_rows(X, y, perm, batch_index, Xb, yb):
    """``Xb[r] = X[perm[b*B + r]]``, ``yb[r] = y[perm[b*B + r]]`` for r < B, with
    ``b = batch_index[0]`` read on the device. ``X`` (N, D) and ``Xb`` (B, D) of one
    float dtype, ``y``, ``perm``, ``yb`` int64, ``batch_index`` uint64; all contiguous."""
    dt = ops.check_2d(X, "X")
    if Xb.ndim != 2 or Xb.shape[1] != X.shape[1] or Xb.dtype != dt:
        raise ValueError("Xb must be (B, %d) of dtype %s, got %s %s"
                         % (X.shape[1], dt, tuple(Xb.shape), Xb.dtype))
    for a, what in ((X, "X"), (Xb, "Xb")):
        if not is_cupy_array(a) or not a.flags.c_contiguous:
            raise ValueError("%s must be a C-contiguous CuPy array" % what)
    n_rows, d = X.shape
    b_rows = Xb.shape[0]
    y = ops.device_scalar(y, np.int64, "y")
    perm = ops.device_scalar(perm, np.int64, "perm")
    yb = ops.device_scalar(yb, np.int64, "yb")
    batch_index = ops.device_scalar(batch_index, np.uint64, "batch_index")
    if y.size != n_rows or yb.size != b_rows:
        raise ValueError("y must have %d labels and yb %d, got %d and %d"
                         % (n_rows, b_rows, y.size, yb.size))
    if b_rows == 0 or d == 0:
        return Xb, yb
    with ops.device_of(X):
        vec = d % 4 == 0 and ops.aligned(X, Xb)
        name = _GATHER_ROWS.name(dt, vec)
        ncol = d // 4 if vec else d
        gx = max(1, min((ncol + ops.THREADS - 1) // ops.THREADS, 64))
        gy = max(1, min(b_rows, ops.MAX_GRID_Y))
        ops.get_kernel(name)((gx, gy), (ops.THREADS,),
                             (X, y, perm, batch_index, _u64(n_rows), _u64(perm.size),
                              _u64(d), _u64(b_rows), Xb, yb))
    return Xb, yb


def graph_advance(ctr, loss, loss_buf, batches_per_epoch, stream_stride):
    """End of a graph step (one thread): ``loss_buf[ctr[0]] = loss``, then the batch
    index ``ctr[0]`` advances (wrapping at ``batches_per_epoch``), the dropout stream
    base ``ctr[1]`` by ``stream_stride``, ``ctr[2]`` (t) and ``ctr[3]`` (steps) by 1."""
    ctr = ops.device_scalar(ctr, np.uint64, "ctr")
    if ctr.size < 4:
        raise ValueError("ctr must hold 4 counters, got %d" % ctr.size)
    dt = ops.float_dtype(loss_buf, "loss_buf")
    loss_buf = ops.device_scalar(loss_buf, dt, "loss_buf")
    loss = ops.device_scalar(loss, dt, "loss")
    if loss_buf.size < int(batches_per_epoch):
        raise ValueError("loss_buf holds %d values, fewer than the %d batches per epoch"
                         % (loss_buf.size, batches_per_epoch))
    with ops.device_of(ctr):
        ops.get_kernel(_GRAPH_ADVANCE.name(dt))(
            (1,), (32,), (ctr, loss, loss_buf, _u64(batches_per_epoch), _u64(stream_stride)))
