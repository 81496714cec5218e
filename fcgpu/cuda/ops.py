"""The fused steps of :mod:`fcgpu.fused` for CuPy arrays, on our CUDA kernels.

Same signatures as the ``*_ref`` references in :mod:`fcgpu.fused` (see its module
docstring), plus :func:`dropout_mask`. Differences that callers can see:

* ``dropout_forward`` returns ``(out, None)``: the GPU stores no mask, and
  ``dropout_backward`` regenerates it from ``(seed, stream)`` (its ``mask`` argument
  is ignored).
* Outputs are new C-contiguous arrays. Inputs may be any strided views: the
  non-contiguous ones are copied first; misaligned views take the scalar path.
* Batchnorm wants 2-D ``x`` (N, D) and 1-D ``(D,)`` parameters; ``gamma``, ``beta``
  and the statistics are cast to ``x.dtype``. Running statistics are updated in
  place (through a temporary when they are not contiguous arrays of ``x.dtype``).
* ``stream`` may be a :class:`fcgpu.random.DeviceStream`: the kernels then read the
  stream from device memory when they run (a step captured in a CUDA graph).

Also here: :func:`adam_step` (Adam in one kernel per parameter), and the launches of
the CUDA-graph training step (:mod:`fcgpu.cuda.graph`): :func:`adam_step_device` and
:func:`rule_step_device` (step counter and learning rate read from device memory),
:func:`gather_rows` (the minibatch at a batch index held on the device) and
:func:`graph_advance` (the step's loss recorded, the counters advanced).

Importing this module compiles nothing: each kernel module is built on its first
launch on a device and cached (see :mod:`fcgpu.cuda.module`).
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..backend import is_cupy_array, require_cupy
from ..random import DeviceStream, check_seed, dropout_scale, keep_threshold, mask_args
from .module import blocks_per_sm, get_kernel, sm_count

__all__ = [
    "dropout_forward", "dropout_backward", "dropout_mask", "bn_forward_train",
    "bn_forward_infer", "bn_backward", "bn_relu_dropout_forward",
    "bn_relu_dropout_backward", "relu_dropout_forward", "relu_dropout_backward",
    "adam_step", "adam_step_device", "rule_step_device", "gather_rows", "graph_advance",
]

# op codes: kernels/ops.cuh (FlatOp, ColOp)
FLAT_DROPOUT, FLAT_RELU_DROPOUT, FLAT_RELU, FLAT_RELU_DROPOUT_BWD = 0, 1, 2, 3
COL_BN, COL_BN_RELU, COL_BN_RELU_DROPOUT, COL_BN_BWD, COL_BN_RELU_DROPOUT_BWD = 0, 1, 2, 3, 4
# kernels/optim.cuh (UpdateRule)
RULE_SGD, RULE_SGD_MOMENTUM, RULE_RMSPROP = 0, 1, 2

KEEP_ALL = 1 << 32          # threshold meaning p >= 1
THREADS = 256
RED_X, RED_Y = 32, 8        # reduction block shape (kernels/batchnorm.cu)
WAVES = 2                   # grid-stride grids: this many full waves of resident blocks
MAX_GRID_Y = 65535

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_u64 = np.uint64
_f64 = np.float64
_NULL = np.uint64(0)        # a null pointer argument (8 bytes of zero)


# ----------------------------------------------------------------- helpers

def _cp():
    return require_cupy()


def _float_dtype(a, what):
    dt = np.dtype(a.dtype)
    if dt not in _CTYPE:
        raise ValueError("%s must be float32 or float64, got %s" % (what, dt))
    return dt


def _device_of(a):
    cp = _cp()
    if is_cupy_array(a) and a.device.id != cp.cuda.runtime.getDevice():
        return a.device
    return contextlib.nullcontext()


def _as_input(a, what, dtype=None):
    """``a`` as a C-contiguous CuPy array (of ``dtype`` when given)."""
    cp = _cp()
    if not is_cupy_array(a):
        raise ValueError("%s must be a CuPy array on the CUDA path, got %s"
                         % (what, type(a).__name__))
    if dtype is not None and a.dtype != dtype:
        raise ValueError("%s has dtype %s, expected %s" % (what, a.dtype, dtype))
    if not a.flags.c_contiguous:
        a = cp.ascontiguousarray(a)
    return a


def _same_shape(a, b, what_a, what_b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError("%s has shape %s but %s has shape %s"
                         % (what_b, tuple(b.shape), what_a, tuple(a.shape)))


def _param(a, d, dtype, what):
    """A per-feature vector of shape (D,) as a contiguous CuPy array of ``dtype``."""
    cp = _cp()
    if a is None:
        raise ValueError("%s is required" % what)
    shape = tuple(getattr(a, "shape", ()))
    if shape != (d,):
        raise ValueError("%s must have shape (%d,), got %s" % (what, d, shape))
    if is_cupy_array(a) and a.dtype == dtype and a.flags.c_contiguous:
        return a
    return cp.ascontiguousarray(cp.asarray(a), dtype=dtype)


def _running(a, d, dtype, what):
    """``(buffer, writeback)`` for a running statistic updated in place: the array
    itself when it is a contiguous CuPy array of ``dtype``, else a temporary and a
    function copying it back."""
    cp = _cp()
    if a is None:
        return _NULL, None
    shape = tuple(getattr(a, "shape", ()))
    if shape != (d,):
        raise ValueError("%s must have shape (%d,), got %s" % (what, d, shape))
    if is_cupy_array(a) and a.dtype == dtype and a.flags.c_contiguous:
        return a, None
    buf = cp.ascontiguousarray(cp.asarray(a), dtype=dtype)

    def writeback():
        if is_cupy_array(a):
            a[...] = buf
        else:  # a NumPy array (or similar): copy the update to the host
            a[...] = cp.asnumpy(buf)
    return buf, writeback


def _seed_stream(seed, stream):
    """``(seed, stream, stream_ptr)``: a :class:`DeviceStream` gives its offset and
    its device counter as the kernels' pointer argument; a number gives a null one."""
    seed = check_seed(seed)
    if isinstance(stream, DeviceStream):
        return seed, stream.offset, _device_scalar(stream.base, np.uint64, "DeviceStream.base")
    return seed, check_seed(stream, "stream"), _NULL


def _device_scalar(a, dtype, what):
    """A one-element (or more) contiguous CuPy array of ``dtype``, whose first element
    a kernel reads through a pointer."""
    if not is_cupy_array(a):
        raise ValueError("%s must be a CuPy array, got %s" % (what, type(a).__name__))
    if a.dtype != dtype or a.size < 1 or not a.flags.c_contiguous:
        raise ValueError("%s must be a contiguous %s CuPy array of at least one element, "
                         "got dtype %s, shape %s" % (what, np.dtype(dtype).name, a.dtype,
                                                     tuple(a.shape)))
    return a


def _threshold(p):
    t = keep_threshold(p)  # validates p
    return KEEP_ALL if t is None else t, t is None


def _scale(p, dtype, keep_all):
    return np.dtype(dtype).type(1.0) if keep_all else dropout_scale(p, dtype)


def _aligned(*arrays):
    return all(a.data.ptr % 16 == 0 for a in arrays)


def _resident(name, threads=THREADS):
    """Blocks of kernel ``name`` resident on the whole device at once."""
    return sm_count() * blocks_per_sm(name, threads)


def _grid_1d(name, nwork):
    """Blocks for a grid-stride loop over ``nwork`` items of one thread each: enough
    to cover them, at most WAVES whole waves of the kernel's resident blocks."""
    return max(1, min((nwork + THREADS - 1) // THREADS, _resident(name) * WAVES))


def _pow2_at_least(v):
    return 1 << max(0, int(v - 1).bit_length())


# ----------------------------------------------------------------- flat kernels

def _flat(op, a, b, seed, stream, threshold, s, stream_ptr=_NULL):
    """y = flat op of a (and b), C-contiguous, same shape as a."""
    cp = _cp()
    y = cp.empty(a.shape, dtype=a.dtype)
    n = a.size
    if n == 0:
        return y
    arrays = (a,) if b is None else (a, b)
    vec = "true" if _aligned(*arrays) else "false"
    name = "fcgpu_flat<%s, %d, %s>" % (_CTYPE[a.dtype], op, vec)
    kern = get_kernel(name)
    nblk = (n + 3) // 4
    kern((_grid_1d(name, nblk),), (THREADS,),
         (a, a if b is None else b, y, _u64(n), _u64(seed), _u64(stream), _u64(threshold), s,
          stream_ptr))
    return y


def dropout_mask(shape, p, seed, stream):
    """Boolean keep mask (CuPy), equal to :func:`fcgpu.random.dropout_mask_reference`."""
    cp = _cp()
    shape, n, seed, stream, t = mask_args(shape, p, seed, stream)
    if t is None:
        return cp.ones(shape, dtype=bool)
    mask = cp.empty(shape, dtype=bool)
    if n:
        kern = get_kernel("fcgpu_dropout_mask")
        kern((_grid_1d("fcgpu_dropout_mask", (n + 3) // 4),), (THREADS,),
             (mask, _u64(n), _u64(seed), _u64(stream), _u64(t)))
    return mask


def dropout_forward(x, p, seed, stream):
    """``(x * s where kept else 0, None)``: inverted dropout, no stored mask."""
    seed, stream, sptr = _seed_stream(seed, stream)
    t, keep_all = _threshold(p)
    _float_dtype(x, "x")
    if keep_all:
        return x.copy(), None
    x = _as_input(x, "x")
    with _device_of(x):
        return _flat(FLAT_DROPOUT, x, None, seed, stream, t,
                     _scale(p, x.dtype, False), sptr), None


def dropout_backward(dout, p, seed, stream, mask=None):
    """dx of dropout: the mask is regenerated from (seed, stream); ``mask`` is ignored."""
    seed, stream, sptr = _seed_stream(seed, stream)
    t, keep_all = _threshold(p)
    _float_dtype(dout, "dout")
    if keep_all:
        return dout.copy()
    dout = _as_input(dout, "dout")
    with _device_of(dout):
        return _flat(FLAT_DROPOUT, dout, None, seed, stream, t, _scale(p, dout.dtype, False),
                     sptr)


def relu_dropout_forward(x, p, seed, stream):
    """dropout(relu(x)) in one pass."""
    seed, stream, sptr = _seed_stream(seed, stream)
    t, keep_all = _threshold(p)
    _float_dtype(x, "x")
    x = _as_input(x, "x")
    op = FLAT_RELU if keep_all else FLAT_RELU_DROPOUT
    with _device_of(x):
        return _flat(op, x, None, seed, stream, t, _scale(p, x.dtype, keep_all), sptr)


def relu_dropout_backward(dout, out, p):
    """dx = dout * s where out > 0, else 0 (out > 0 is both the ReLU gate and the mask)."""
    t, keep_all = _threshold(p)
    dt = _float_dtype(dout, "dout")
    dout = _as_input(dout, "dout")
    out = _as_input(out, "out", dt)
    _same_shape(dout, out, "dout", "out")
    with _device_of(dout):
        return _flat(FLAT_RELU_DROPOUT_BWD, dout, out, 0, 0, t, _scale(p, dt, keep_all))


# ----------------------------------------------------------------- batchnorm

def _check_2d(x, what="x"):
    dt = _float_dtype(x, what)
    if x.ndim != 2:
        raise ValueError("%s must be 2-D (N, D) for batchnorm, got shape %s"
                         % (what, tuple(x.shape)))
    return dt


def chunk_layout(n, d, sms, blocks_per_sm=8):
    """``(R, G)``: rows per chunk and chunk count of the two-stage column reductions
    of an (n, d) array on a device with ``sms`` multiprocessors holding
    ``blocks_per_sm`` reduction blocks each: at most one full wave of blocks (so no
    wave runs half empty), and at least 64 rows (8 per row lane) per chunk."""
    gx = (d + RED_X - 1) // RED_X
    target = max(1, sms) * max(1, blocks_per_sm)
    g = max(1, min(target // gx, (n + 63) // 64, MAX_GRID_Y))
    r = max(1, (n + g - 1) // g)
    g = max(1, (n + r - 1) // r)
    return r, g


def _chunks(n, d, kernel):
    return chunk_layout(n, d, sm_count(), blocks_per_sm(kernel, RED_X * RED_Y))


def _col(op, a, b, c, p0, p1, p2, p3, seed=0, stream=0, threshold=KEEP_ALL, s=None,
         stream_ptr=_NULL):
    """One elementwise pass over (N, D) with per-column coefficients p0..p3."""
    cp = _cp()
    n_rows, d = a.shape
    y = cp.empty((n_rows, d), dtype=a.dtype)
    if y.size == 0:
        return y
    if s is None:
        s = a.dtype.type(1.0)
    ins = [a] + [v for v in (b, c) if v is not None]
    ct = _CTYPE[a.dtype]
    args = (a, a if b is None else b, a if c is None else c, y, _u64(n_rows), _u64(d),
            p0, p1, p2, p0 if p3 is None else p3,
            _u64(seed), _u64(stream), _u64(threshold), s, stream_ptr)
    if d % 4 == 0 and _aligned(*ins):
        name = "fcgpu_col_vec<%s, %d>" % (ct, op)
        kern = get_kernel(name)
        d4 = d // 4
        bx = min(64, _pow2_at_least(d4))
        by = THREADS // bx
        gx = (d4 + bx - 1) // bx
        gy = max(1, min((n_rows + by - 1) // by, (_resident(name) * WAVES) // gx, MAX_GRID_Y))
        kern((gx, gy), (bx, by), args)
    else:
        name = "fcgpu_col_flat<%s, %d>" % (ct, op)
        kern = get_kernel(name)
        nblk = (n_rows * d + 3) // 4
        kern((_grid_1d(name, nblk),), (THREADS,), args)
    return y


def _stats(x, gamma, eps, momentum, running_mean, running_var):
    """Per-column (mean, inv_std, scale=gamma*inv_std); running stats updated."""
    cp = _cp()
    n_rows, d = x.shape
    dt = x.dtype
    ct = _CTYPE[dt]
    rm, rm_back = _running(running_mean, d, dt, "running_mean")
    rv, rv_back = _running(running_var, d, dt, "running_var")
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    coef = cp.empty((3, d), dtype=dt)
    mean, inv_std, scale = coef[0], coef[1], coef[2]
    if d == 0:
        return mean, inv_std, scale
    r, g = _chunks(n_rows, d, "fcgpu_bn_stats<%s>" % ct)
    ws = cp.empty((2, g, d), dtype=dt)
    get_kernel("fcgpu_bn_stats<%s>" % ct)(
        ((d + RED_X - 1) // RED_X, g), (RED_X, RED_Y),
        (x, _u64(n_rows), _u64(d), _u64(r), ws[0], ws[1]))
    get_kernel("fcgpu_bn_stats_finalize<%s>" % ct)(
        ((d + THREADS - 1) // THREADS,), (THREADS,),
        (ws[0], ws[1], _u64(n_rows), _u64(d), _u64(r), _u64(g), _f64(eps), _f64(momentum),
         gamma, mean, inv_std, scale, rm, rv))
    for back in (rm_back, rv_back):
        if back is not None:
            back()
    return mean, inv_std, scale


def _bn_prepare(x, gamma, beta=None):
    dt = _check_2d(x)
    x = _as_input(x, "x")
    n_rows, d = x.shape
    if n_rows < 1:
        raise ValueError("batchnorm needs at least one row, got shape %s" % (tuple(x.shape),))
    gamma = _param(gamma, d, dt, "gamma")
    if beta is not None:
        beta = _param(beta, d, dt, "beta")
    return x, gamma, beta


def bn_forward_train(x, gamma, beta, eps, momentum, running_mean, running_var):
    """``(out, mean, inv_std)``; running statistics updated in place."""
    x, gamma, beta = _bn_prepare(x, gamma, beta)
    with _device_of(x):
        mean, inv_std, scale = _stats(x, gamma, eps, momentum, running_mean, running_var)
        out = _col(COL_BN, x, None, None, mean, scale, beta, None)
    return out, mean, inv_std


def bn_forward_infer(x, gamma, beta, eps, running_mean, running_var):
    """(x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    cp = _cp()
    x, gamma, beta = _bn_prepare(x, gamma, beta)
    d = x.shape[1]
    dt = x.dtype
    rm = _param(running_mean, d, dt, "running_mean")
    rv = _param(running_var, d, dt, "running_var")
    with _device_of(x):
        scale = cp.empty(d, dtype=dt)
        if d == 0:
            return cp.empty(x.shape, dtype=dt)
        get_kernel("fcgpu_bn_infer_coef<%s>" % _CTYPE[dt])(
            ((d + THREADS - 1) // THREADS,), (THREADS,), (gamma, rv, _u64(d), _f64(eps), scale))
        return _col(COL_BN, x, None, None, rm, scale, beta, None)


def _bn_bwd(dout, out, x, gamma, mean, inv_std, p):
    cp = _cp()
    dt = _check_2d(x)
    x = _as_input(x, "x")
    dout = _as_input(dout, "dout", dt)
    _same_shape(x, dout, "x", "dout")
    fused = out is not None
    if fused:
        out = _as_input(out, "out", dt)
        _same_shape(x, out, "x", "out")
        _, keep_all = _threshold(p)
        s = _scale(p, dt, keep_all)
    else:
        s = dt.type(1.0)
    n_rows, d = x.shape
    if n_rows < 1:
        raise ValueError("batchnorm needs at least one row, got shape %s" % (tuple(x.shape),))
    gamma = _param(gamma, d, dt, "gamma")
    mean = _param(mean, d, dt, "mean")
    inv_std = _param(inv_std, d, dt, "inv_std")
    ct = _CTYPE[dt]
    with _device_of(x):
        coef = cp.empty((5, d), dtype=dt)
        dgamma, dbeta, k1, k2, k3 = coef[0], coef[1], coef[2], coef[3], coef[4]
        if d == 0:
            return cp.empty((n_rows, 0), dtype=dt), dgamma, dbeta
        sums = "fcgpu_bn_bwd_sums<%s, %s>" % (ct, "true" if fused else "false")
        r, g = _chunks(n_rows, d, sums)
        ws = cp.empty((2, g, d), dtype=dt)
        get_kernel(sums)(
            ((d + RED_X - 1) // RED_X, g), (RED_X, RED_Y),
            (dout, out if fused else dout, x, mean, _u64(n_rows), _u64(d), _u64(r), s,
             ws[0], ws[1]))
        get_kernel("fcgpu_bn_bwd_finalize<%s>" % ct)(
            ((d + THREADS - 1) // THREADS,), (THREADS,),
            (ws[0], ws[1], _u64(n_rows), _u64(d), _u64(g), gamma, inv_std,
             dgamma, dbeta, k1, k2, k3))
        op = COL_BN_RELU_DROPOUT_BWD if fused else COL_BN_BWD
        dx = _col(op, dout, out, x, mean, k1, k2, k3, s=s)
    return dx, dgamma, dbeta


def bn_backward(dout, x, gamma, mean, inv_std):
    """``(dx, dgamma, dbeta)`` of batchnorm (training mode)."""
    return _bn_bwd(dout, None, x, gamma, mean, inv_std, 1.0)


def bn_relu_dropout_forward(x, gamma, beta, eps, momentum, running_mean, running_var,
                            p, seed, stream):
    """``(dropout(relu(batchnorm(x))), mean, inv_std)`` with one elementwise pass
    after the per-column statistics; running statistics updated in place."""
    seed, stream, sptr = _seed_stream(seed, stream)
    t, keep_all = _threshold(p)
    x, gamma, beta = _bn_prepare(x, gamma, beta)
    with _device_of(x):
        mean, inv_std, scale = _stats(x, gamma, eps, momentum, running_mean, running_var)
        op = COL_BN_RELU if keep_all else COL_BN_RELU_DROPOUT
        out = _col(op, x, None, None, mean, scale, beta, None, seed, stream, t,
                   _scale(p, x.dtype, keep_all), sptr)
    return out, mean, inv_std


def bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p):
    """``(dx, dgamma, dbeta)`` through dropout, ReLU and batchnorm; ``out > 0`` gives
    the ReLU gate and the keep mask together."""
    return _bn_bwd(dout, out, x, gamma, mean, inv_std, p)


# ----------------------------------------------------------------- optimizer steps

def _same_as(a, w, what, contiguous=False):
    """``a`` checked against ``w``: a CuPy array of the same shape and dtype
    (C-contiguous when it is updated in place)."""
    if not is_cupy_array(a):
        raise ValueError("%s must be a CuPy array on the CUDA path, got %s"
                         % (what, type(a).__name__))
    if a.dtype != w.dtype:
        raise ValueError("%s has dtype %s, expected %s" % (what, a.dtype, w.dtype))
    _same_shape(w, a, "w", what)
    if contiguous and not a.flags.c_contiguous:
        raise ValueError("%s must be C-contiguous (it is updated in place)" % what)
    return a


def _grouped(name, n):
    """Grid of the optimizer kernels: one thread per group of 4 elements."""
    return (_grid_1d(name, (n + 3) // 4),), (THREADS,)


def adam_step(w, dw, m, v, lr, beta1, beta2, eps, t):
    """Adam in one kernel (the math of :func:`fcgpu.fused_optim.adam_step_ref`):
    ``m`` and ``v`` are updated in place, a new ``next_w`` is returned. The bias
    corrections ``1 - beta**t`` are computed here in float64, as the CPU path does.
    ``m`` and ``v`` must be C-contiguous arrays of ``w``'s dtype and shape."""
    cp = _cp()
    dt = _float_dtype(w, "w")
    w = _as_input(w, "w")
    dw = _as_input(_same_as(dw, w, "dw"), "dw")
    m = _same_as(m, w, "m", contiguous=True)
    v = _same_as(v, w, "v", contiguous=True)
    t = int(t)
    beta1, beta2 = float(beta1), float(beta2)
    c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
    with _device_of(w):
        out = cp.empty(w.shape, dtype=dt)
        n = w.size
        if n == 0:
            return out
        vec = "true" if _aligned(out, w, dw, m, v) else "false"
        name = "fcgpu_adam<%s, %s>" % (_CTYPE[dt], vec)
        grid, block = _grouped(name, n)
        get_kernel(name)(grid, block,
                         (out, w, dw, m, v, _u64(n), _f64(lr), _f64(beta1), _f64(beta2),
                          _f64(eps), _f64(c1), _f64(c2)))
    return out


def adam_step_device(w, dw, m, v, lr_ptr, t_ptr, beta1, beta2, eps, out=None):
    """Adam with the step ``t`` (``t_ptr[0]``, uint64, 1-based) and the learning rate
    (``lr_ptr[0]``, float64) read from device memory when the kernel runs: for a step
    captured in a CUDA graph. ``m``, ``v`` in place; next w into ``out`` (default:
    ``w`` itself, in place). ``w``, ``m``, ``v``, ``out`` must be C-contiguous."""
    dt = _float_dtype(w, "w")
    w = _same_as(w, w, "w", contiguous=True)
    dw = _as_input(_same_as(dw, w, "dw"), "dw")
    m = _same_as(m, w, "m", contiguous=True)
    v = _same_as(v, w, "v", contiguous=True)
    out = w if out is None else _same_as(out, w, "out", contiguous=True)
    lr_ptr = _device_scalar(lr_ptr, np.float64, "lr_ptr")
    t_ptr = _device_scalar(t_ptr, np.uint64, "t_ptr")
    n = w.size
    if n == 0:
        return out
    with _device_of(w):
        vec = "true" if _aligned(out, w, dw, m, v) else "false"
        name = "fcgpu_adam_dev<%s, %s>" % (_CTYPE[dt], vec)
        grid, block = _grouped(name, n)
        get_kernel(name)(grid, block,
                         (out, w, dw, m, v, _u64(n), lr_ptr, t_ptr, _f64(beta1), _f64(beta2),
                          _f64(eps)))
    return out


def rule_step_device(rule, w, dw, state, lr_ptr, h=0.0, eps=0.0):
    """``w`` updated in place by SGD (``rule`` RULE_SGD: ``w - lr*dw``), SGD with
    momentum (RULE_SGD_MOMENTUM: ``state`` is the velocity, ``h`` the momentum) or
    RMSProp (RULE_RMSPROP: ``state`` is the cache, ``h`` the decay rate, ``eps``), with
    the learning rate read from device memory (``lr_ptr[0]``, float64) when the
    kernel runs. The math and rounding of :mod:`fcgpu.optim`'s rules."""
    if rule not in (RULE_SGD, RULE_SGD_MOMENTUM, RULE_RMSPROP):
        raise ValueError("unknown update rule code %r" % (rule,))
    dt = _float_dtype(w, "w")
    w = _same_as(w, w, "w", contiguous=True)
    dw = _as_input(_same_as(dw, w, "dw"), "dw")
    if rule == RULE_SGD:
        state = w  # not read
    else:
        state = _same_as(state, w, "state", contiguous=True)
    lr_ptr = _device_scalar(lr_ptr, np.float64, "lr_ptr")
    n = w.size
    if n == 0:
        return w
    with _device_of(w):
        vec = "true" if _aligned(w, dw, state) else "false"
        name = "fcgpu_rule_dev<%s, %d, %s>" % (_CTYPE[dt], rule, vec)
        grid, block = _grouped(name, n)
        get_kernel(name)(grid, block, (w, dw, state, _u64(n), lr_ptr, _f64(h), _f64(eps)))
    return w


# ----------------------------------------------------------------- CUDA-graph step

def gather_rows(X, y, perm, batch_index, Xb, yb):
    """``Xb[r] = X[perm[b*B + r]]``, ``yb[r] = y[perm[b*B + r]]`` for r < B, with
    ``b = batch_index[0]`` read on the device. ``X`` (N, D) and ``Xb`` (B, D) of one
    float dtype, ``y``, ``perm``, ``yb`` int64, ``batch_index`` uint64; all contiguous."""
    dt = _check_2d(X, "X")
    if Xb.ndim != 2 or Xb.shape[1] != X.shape[1] or Xb.dtype != dt:
        raise ValueError("Xb must be (B, %d) of dtype %s, got %s %s"
                         % (X.shape[1], dt, tuple(Xb.shape), Xb.dtype))
    for a, what in ((X, "X"), (Xb, "Xb")):
        if not is_cupy_array(a) or not a.flags.c_contiguous:
            raise ValueError("%s must be a C-contiguous CuPy array" % what)
    n_rows, d = X.shape
    b_rows = Xb.shape[0]
    y = _device_scalar(y, np.int64, "y")
    perm = _device_scalar(perm, np.int64, "perm")
    yb = _device_scalar(yb, np.int64, "yb")
    batch_index = _device_scalar(batch_index, np.uint64, "batch_index")
    if y.size != n_rows or yb.size != b_rows:
        raise ValueError("y must have %d labels and yb %d, got %d and %d"
                         % (n_rows, b_rows, y.size, yb.size))
    if b_rows == 0 or d == 0:
        return Xb, yb
    with _device_of(X):
        vec = d % 4 == 0 and _aligned(X, Xb)
        name = "fcgpu_gather_rows<%s, %s>" % (_CTYPE[dt], "true" if vec else "false")
        ncol = d // 4 if vec else d
        gx = max(1, min((ncol + THREADS - 1) // THREADS, 64))
        gy = max(1, min(b_rows, MAX_GRID_Y))
        get_kernel(name)((gx, gy), (THREADS,),
                         (X, y, perm, batch_index, _u64(n_rows), _u64(perm.size), _u64(d),
                          _u64(b_rows), Xb, yb))
    return Xb, yb


def graph_advance(ctr, loss, loss_buf, batches_per_epoch, stream_stride):
    """End of a graph step (one thread): ``loss_buf[ctr[0]] = loss``, then the batch
    index ``ctr[0]`` advances (wrapping at ``batches_per_epoch``), the dropout stream
    base ``ctr[1]`` by ``stream_stride``, ``ctr[2]`` (t) and ``ctr[3]`` (steps) by 1."""
    ctr = _device_scalar(ctr, np.uint64, "ctr")
    if ctr.size < 4:
        raise ValueError("ctr must hold 4 counters, got %d" % ctr.size)
    dt = _float_dtype(loss_buf, "loss_buf")
    loss_buf = _device_scalar(loss_buf, dt, "loss_buf")
    loss = _device_scalar(loss, dt, "loss")
    if loss_buf.size < int(batches_per_epoch):
        raise ValueError("loss_buf holds %d values, fewer than the %d batches per epoch"
                         % (loss_buf.size, batches_per_epoch))
    with _device_of(ctr):
        get_kernel("fcgpu_graph_advance<%s>" % _CTYPE[dt])(
            (1,), (32,), (ctr, loss, loss_buf, _u64(batches_per_epoch), _u64(stream_stride)))
