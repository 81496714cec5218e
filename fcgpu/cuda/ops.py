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

The launch plumbing lives here too (``get_kernel``, grid sizing from the device's
occupancy, argument checks: the public helpers below); :mod:`fcgpu.cuda.train_ops`
and :mod:`fcgpu.cuda.augment` launch their kernels through it. This module imports
neither: imports point one way. Each kernel is a :class:`fcgpu.cuda.module.Kernel`
declared beside the function that launches it (``_FLAT``, ``_BN_STATS``, ...).

Importing this module compiles nothing: each kernel module is built on its first
launch on a device and cached (see :mod:`fcgpu.cuda.module`).
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..backend import is_cupy_array, require_cupy
from ..random import DeviceStream, check_seed, dropout_scale, keep_threshold, mask_args
from .module import FLOAT_DTYPES, Kernel, blocks_per_sm, get_kernel, sm_count

__all__ = [
    "dropout_forward", "dropout_backward", "dropout_mask", "bn_forward_train",
    "bn_forward_infer", "bn_backward", "bn_relu_dropout_forward",
    "bn_relu_dropout_backward", "relu_dropout_forward", "relu_dropout_backward",
]

# op codes: kernels/ops.cuh (FlatOp, ColOp; tests/test_kernel_enums.py compares them)
FLAT_DROPOUT, FLAT_RELU_DROPOUT, FLAT_RELU, FLAT_RELU_DROPOUT_BWD = 0, 1, 2, 3
COL_BN, COL_BN_RELU, COL_BN_RELU_DROPOUT, COL_BN_BWD, COL_BN_RELU_DROPOUT_BWD = 0, 1, 2, 3, 4
FLAT_OPS = (FLAT_DROPOUT, FLAT_RELU_DROPOUT, FLAT_RELU, FLAT_RELU_DROPOUT_BWD)
COL_OPS = (COL_BN, COL_BN_RELU, COL_BN_RELU_DROPOUT, COL_BN_BWD, COL_BN_RELU_DROPOUT_BWD)
VEC = (True, False)     # the 16-byte vector path, or the scalar one

KEEP_ALL = 1 << 32          # threshold meaning p >= 1
THREADS = 256
RED_X, RED_Y = 32, 8        # reduction block shape (kernels/batchnorm.cu)
WAVES = 2                   # grid-stride grids: this many full waves of resident blocks
MAX_GRID_Y = 65535

_u64 = np.uint64
_f64 = np.float64
NULL = np.uint64(0)         # a null pointer argument (8 bytes of zero)

# kernels/dropout.cu
_FLAT = Kernel("dropout.cu", "fcgpu_flat", FLOAT_DTYPES, FLAT_OPS, VEC)
_MASK = Kernel("dropout.cu", "fcgpu_dropout_mask")
# kernels/batchnorm.cu
_BN_STATS = Kernel("batchnorm.cu", "fcgpu_bn_stats", FLOAT_DTYPES)
_BN_STATS_FINALIZE = Kernel("batchnorm.cu", "fcgpu_bn_stats_finalize", FLOAT_DTYPES)
_BN_INFER_COEF = Kernel("batchnorm.cu", "fcgpu_bn_infer_coef", FLOAT_DTYPES)
_BN_BWD_SUMS = Kernel("batchnorm.cu", "fcgpu_bn_bwd_sums", FLOAT_DTYPES, (False, True))
_BN_BWD_FINALIZE = Kernel("batchnorm.cu", "fcgpu_bn_bwd_finalize", FLOAT_DTYPES)
_COL_VEC = Kernel("batchnorm.cu", "fcgpu_col_vec", FLOAT_DTYPES, COL_OPS)
_COL_FLAT = Kernel("batchnorm.cu", "fcgpu_col_flat", FLOAT_DTYPES, COL_OPS)


# ----------------------------------------------------------------- helpers
# (public: fcgpu.cuda.train_ops and fcgpu.cuda.augment launch through them)

def _cp():  # every CuPy call of the launchers goes through here (tests stand CuPy in)
    return require_cupy()


def cupy():
    """The cupy module."""
    return _cp()


def float_dtype(a, what):
    """``a``'s dtype, refused unless float32 or float64."""
    dt = np.dtype(a.dtype)
    if dt not in FLOAT_DTYPES:
        raise ValueError("%s must be float32 or float64, got %s" % (what, dt))
    return dt


def device_of(a):
    """A context on ``a``'s device when it is not the current one."""
    cp = _cp()
    if is_cupy_array(a) and a.device.id != cp.cuda.runtime.getDevice():
        return a.device
    return contextlib.nullcontext()


def as_input(a, what, dtype=None):
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


def same_shape(a, b, what_a, what_b):
    """Refuse ``b`` unless it has ``a``'s shape."""
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
        return NULL, None
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
        return seed, stream.offset, device_scalar(stream.base, np.uint64, "DeviceStream.base")
    return seed, check_seed(stream, "stream"), NULL


def device_scalar(a, dtype, what):
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


def aligned(*arrays):
    """Whether every array starts on a 16-byte boundary (the vector paths)."""
    return all(a.data.ptr % 16 == 0 for a in arrays)


def _resident(name, threads=THREADS):
    """Blocks of kernel ``name`` resident on the whole device at once."""
    return sm_count() * blocks_per_sm(name, threads)


def grid_1d(name, nwork):
    """Blocks for a grid-stride loop over ``nwork`` items of one thread each: enough
    to cover them, at most WAVES whole waves of the kernel's resident blocks."""
    return max(1, min((nwork + THREADS - 1) // THREADS, _resident(name) * WAVES))


def _pow2_at_least(v):
    return 1 << max(0, int(v - 1).bit_length())


# ----------------------------------------------------------------- flat kernels

def _flat(op, a, b, seed, stream, threshold, s, stream_ptr=NULL):
    """y = flat op of a (and b), C-contiguous, same shape as a."""
    cp = _cp()
    y = cp.empty(a.shape, dtype=a.dtype)
    n = a.size
    if n == 0:
        return y
    arrays = (a,) if b is None else (a, b)
    name = _FLAT.name(a.dtype, op, aligned(*arrays))
    kern = get_kernel(name)
    nblk = (n + 3) // 4
    kern((grid_1d(name, nblk),), (THREADS,),
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
        name = _MASK.name()
        get_kernel(name)((grid_1d(name, (n + 3) // 4),), (THREADS,),
                         (mask, _u64(n), _u64(seed), _u64(stream), _u64(t)))
    return mask


def dropout_forward(x, p, seed, stream):
    """``(x * s where kept else 0, None)``: inverted dropout, no stored mask."""
    seed, stream, sptr = _seed_stream(seed, stream)
    t, keep_all = _threshold(p)
    float_dtype(x, "x")
    if keep_all:
        return x.copy(), None
    x = as_input(x, "x")
    with device_of(x):
        return _flat(FLAT_DROPOUT, x, None, seed, stream, t,
                     _scale(p, x.dtype, False), sptr), None


def dropout_backward(dout, p, seed, stream, mask=None):
    """dx of dropout: the mask is regenerated from (seed, stream); ``mask`` is ignored."""
    seed, stream, sptr = _seed_stream(seed, stream)
    t, keep_all = _threshold(p)
    float_dtype(dout, "dout")
    if keep_all:
        return dout.copy()
    dout = as_input(dout, "dout")
    with device_of(dout):
        return _flat(FLAT_DROPOUT, dout, None, seed, stream, t, _scale(p, dout.dtype, False),
                     sptr)


def relu_dropout_forward(x, p, seed, stream):
    """dropout(relu(x)) in one pass."""
    seed, stream, sptr = _seed_stream(seed, stream)
    t, keep_all = _threshold(p)
    float_dtype(x, "x")
    x = as_input(x, "x")
    op = FLAT_RELU if keep_all else FLAT_RELU_DROPOUT
    with device_of(x):
        return _flat(op, x, None, seed, stream, t, _scale(p, x.dtype, keep_all), sptr)


def relu_dropout_backward(dout, out, p):
    """dx = dout * s where out > 0, else 0 (out > 0 is both the ReLU gate and the mask)."""
    t, keep_all = _threshold(p)
    dt = float_dtype(dout, "dout")
    dout = as_input(dout, "dout")
    out = as_input(out, "out", dt)
    same_shape(dout, out, "dout", "out")
    with device_of(dout):
        return _flat(FLAT_RELU_DROPOUT_BWD, dout, out, 0, 0, t, _scale(p, dt, keep_all))


# ----------------------------------------------------------------- batchnorm

def check_2d(x, what="x"):
    """``x``'s float dtype, refused unless ``x`` is 2-D."""
    dt = float_dtype(x, what)
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
         stream_ptr=NULL):
    """One elementwise pass over (N, D) with per-column coefficients p0..p3."""
    cp = _cp()
    n_rows, d = a.shape
    y = cp.empty((n_rows, d), dtype=a.dtype)
    if y.size == 0:
        return y
    if s is None:
        s = a.dtype.type(1.0)
    ins = [a] + [v for v in (b, c) if v is not None]
    args = (a, a if b is None else b, a if c is None else c, y, _u64(n_rows), _u64(d),
            p0, p1, p2, p0 if p3 is None else p3,
            _u64(seed), _u64(stream), _u64(threshold), s, stream_ptr)
    if d % 4 == 0 and aligned(*ins):
        name = _COL_VEC.name(a.dtype, op)
        kern = get_kernel(name)
        d4 = d // 4
        bx = min(64, _pow2_at_least(d4))
        by = THREADS // bx
        gx = (d4 + bx - 1) // bx
        gy = max(1, min((n_rows + by - 1) // by, (_resident(name) * WAVES) // gx, MAX_GRID_Y))
        kern((gx, gy), (bx, by), args)
    else:
        name = _COL_FLAT.name(a.dtype, op)
        kern = get_kernel(name)
        nblk = (n_rows * d + 3) // 4
        kern((grid_1d(name, nblk),), (THREADS,), args)
    return y


def _stats(x, gamma, eps, momentum, running_mean, running_var):
    """Per-column (mean, inv_std, scale=gamma*inv_std); running stats updated."""
    cp = _cp()
    n_rows, d = x.shape
    dt = x.dtype
    rm, rm_back = _running(running_mean, d, dt, "running_mean")
    rv, rv_back = _running(running_var, d, dt, "running_var")
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    coef = cp.empty((3, d), dtype=dt)
    mean, inv_std, scale = coef[0], coef[1], coef[2]
    if d == 0:
        return mean, inv_std, scale
    stats = _BN_STATS.name(dt)
    r, g = _chunks(n_rows, d, stats)
    ws = cp.empty((2, g, d), dtype=dt)
    get_kernel(stats)(
        ((d + RED_X - 1) // RED_X, g), (RED_X, RED_Y),
        (x, _u64(n_rows), _u64(d), _u64(r), ws[0], ws[1]))
    get_kernel(_BN_STATS_FINALIZE.name(dt))(
        ((d + THREADS - 1) // THREADS,), (THREADS,),
        (ws[0], ws[1], _u64(n_rows), _u64(d), _u64(r), _u64(g), _f64(eps), _f64(momentum),
         gamma, mean, inv_std, scale, rm, rv))
    for back in (rm_back, rv_back):
        if back is not None:
            back()
    return mean, inv_std, scale


def _bn_prepare(x, gamma, beta=None):
    dt = check_2d(x)
    x = as_input(x, "x")
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
    with device_of(x):
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
    with device_of(x):
        scale = cp.empty(d, dtype=dt)
        if d == 0:
            return cp.empty(x.shape, dtype=dt)
        get_kernel(_BN_INFER_COEF.name(dt))(
            ((d + THREADS - 1) // THREADS,), (THREADS,), (gamma, rv, _u64(d), _f64(eps), scale))
        return _col(COL_BN, x, None, None, rm, scale, beta, None)


def _bn_bwd(dout, out, x, gamma, mean, inv_std, p):
    cp = _cp()
    dt = check_2d(x)
    x = as_input(x, "x")
    dout = as_input(dout, "dout", dt)
    same_shape(x, dout, "x", "dout")
    fused = out is not None
    if fused:
        out = as_input(out, "out", dt)
        same_shape(x, out, "x", "out")
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
    with device_of(x):
        coef = cp.empty((5, d), dtype=dt)
        dgamma, dbeta, k1, k2, k3 = coef[0], coef[1], coef[2], coef[3], coef[4]
        if d == 0:
            return cp.empty((n_rows, 0), dtype=dt), dgamma, dbeta
        sums = _BN_BWD_SUMS.name(dt, fused)
        r, g = _chunks(n_rows, d, sums)
        ws = cp.empty((2, g, d), dtype=dt)
        get_kernel(sums)(
            ((d + RED_X - 1) // RED_X, g), (RED_X, RED_Y),
            (dout, out if fused else dout, x, mean, _u64(n_rows), _u64(d), _u64(r), s,
             ws[0], ws[1]))
        get_kernel(_BN_BWD_FINALIZE.name(dt))(
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
    with device_of(x):
        mean, inv_std, scale = _stats(x, gamma, eps, momentum, running_mean, running_var)
        op = COL_BN_RELU if keep_all else COL_BN_RELU_DROPOUT
        out = _col(op, x, None, None, mean, scale, beta, None, seed, stream, t,
                   _scale(p, x.dtype, keep_all), sptr)
    return out, mean, inv_std


def bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p):
    """``(dx, dgamma, dbeta)`` through dropout, ReLU and batchnorm; ``out > 0`` gives
    the ReLU gate and the keep mask together."""
    return _bn_bwd(dout, out, x, gamma, mean, inv_std, p)
