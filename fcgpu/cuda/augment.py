"""Launcher of ``kernels/augment.cu``: the augmenting minibatch gather on CuPy arrays.

Same signature and results (bit for bit) as :func:`fcgpu.augment_spec.augment_gather_reference`.
For a step captured in a CUDA graph, ``b`` and ``epoch`` may be one-element uint64
device arrays: the kernel reads them when it runs, and with ``out``/``y_out`` given
(static buffers) a launch allocates nothing and does no host work beyond the launch.

:func:`mix_batch` launches ``fcgpu_mix_pairs`` (MixUp, CutMix: :mod:`fcgpu.mix_spec`)
on the gathered batch, in place, with the same device counters; the Beta quantile
table is uploaded once per (alpha, device) by :func:`device_table` (a CUDA-graph step
calls it before capturing, so that the capture copies nothing).
"""
from __future__ import annotations

import numbers

import numpy as np

from ..augment_spec import MODE_CODES, check_gather_args
from ..backend import is_cupy_array
from ..mix_spec import MIX_CODES, check_mix_args, mix_table
from .module import FLOAT_DTYPES, Kernel, get_kernel
from .ops import NULL, THREADS, cupy as _cp   # (_cp: the tests stand CuPy in here)

__all__ = ["augment_gather", "kernel_name", "mix_batch", "mix_kernel_name", "device_table"]

ELEMS_PER_THREAD = 4    # output elements of one row per thread (the row's draw is redone per thread)
MAX_GRID_X = 64
MAX_GRID_Y = 65535
# The largest row (D = C*H*W values) the kernel walks without its 32-bit index
# wrapping: see check_row_size.
MAX_ROW_VALUES = 2 ** 32 - MAX_GRID_X * THREADS
_u64 = np.uint64

# kernels/augment.cu
_GATHER = Kernel("augment.cu", "fcgpu_augment_gather", (np.uint8,) + FLOAT_DTYPES, FLOAT_DTYPES)
_MIX = Kernel("augment.cu", "fcgpu_mix_pairs", FLOAT_DTYPES)
_TABLES = {}   # (alpha, device id) -> the Beta quantile table on that device


def kernel_name(in_dtype, out_dtype):
    """The kernel's name expression for images of ``in_dtype`` gathered to ``out_dtype``."""
    return _GATHER.name(np.dtype(in_dtype), np.dtype(out_dtype))


def grid_x(d):
    """Blocks along a row of ``d`` output values: ELEMS_PER_THREAD per thread, at
    most MAX_GRID_X (the kernel's threads then stride over the rest of the row)."""
    return max(1, min(-(-d // (THREADS * ELEMS_PER_THREAD)), MAX_GRID_X))


def check_row_size(d):
    """Refuse rows of ``d`` values that the kernel's 32-bit row index cannot walk.

    kernels/augment.cu walks a row with ``u32 e = e0; e < d; e += estride``, where
    ``estride = gridDim.x * blockDim.x = grid_x(d) * THREADS``. The values of ``e``
    cover [0, d), so some thread's last ``e`` is ``d - 1``; its next step,
    ``d - 1 + estride``, must stay below 2^32, or it wraps to a value below ``d`` and
    the loop goes on (rewriting the row, without end). So the kernel is right exactly
    when ``d + grid_x(d) * THREADS <= 2^32``. Rows that long have grid_x = MAX_GRID_X,
    so the largest is MAX_ROW_VALUES = 2^32 - 64 * 256 = 2^32 - 16384. Within it the
    kernel's other u32 values stay in range too: ``d`` itself, ``e0 < estride``, and
    the source offset ``(line - i + si) * w + sj``, which is below ``d``."""
    if d + grid_x(d) * THREADS > 2 ** 32:
        raise ValueError("augment: images of %d values are too large: the kernel walks a row "
                         "with a 32-bit index, so at most %d values (2^32 - %d)"
                         % (d, MAX_ROW_VALUES, MAX_GRID_X * THREADS))


def _device_array(a, what, dtype=None):
    """``a`` as a C-contiguous CuPy array (converted to ``dtype`` if it differs)."""
    cp = _cp()
    if not is_cupy_array(a):
        raise ValueError("%s must be a CuPy array on the CUDA path, got %s"
                         % (what, type(a).__name__))
    if (dtype is not None and a.dtype != dtype) or not a.flags.c_contiguous:
        a = cp.ascontiguousarray(a, dtype=dtype)
    return a


def _counter(value, what):
    """``(value, pointer)`` for a kernel argument given as an int (by value) or as a
    one-element uint64 device array (read when the kernel runs)."""
    if isinstance(value, numbers.Integral):
        return _u64(int(value)), NULL
    if (not is_cupy_array(value) or value.dtype != np.uint64 or value.size < 1
            or not value.flags.c_contiguous):
        raise ValueError("%s must be an integer or a contiguous uint64 CuPy array of at least "
                         "one element, got %s" % (what, getattr(value, "dtype", type(value).__name__)))
    return NULL, value


def _out(buf, shape, dtype, what):
    cp = _cp()
    if buf is None:
        return cp.empty(shape, dtype=dtype)
    if (not is_cupy_array(buf) or tuple(buf.shape) != shape or buf.dtype != dtype
            or not buf.flags.c_contiguous):
        raise ValueError("%s must be a C-contiguous %s CuPy array of %s"
                         % (what, shape, np.dtype(dtype).name))
    return buf


def augment_gather(X, y, perm, b, batch_size, image_shape, mode="crop", pad=4, seed=0,
                   epoch=0, mean=None, out_dtype=np.float32, out=None, y_out=None):
    """``(Xb, yb)`` on the device (see :mod:`fcgpu.augment_spec`)."""
    a = check_gather_args(X, y, perm, b, batch_size, image_shape, mode, pad, seed, epoch, mean,
                          out_dtype, device_counters=True)
    B, d, T = a.batch, a.d, a.out_dtype
    check_row_size(d)
    Xc = _device_array(a.X, "X")
    perm_d = _device_array(a.perm, "perm", np.int64)
    b_val, b_ptr = _counter(a.b, "batch index b")
    e_val, e_ptr = _counter(a.epoch, "epoch")
    mean_d = NULL if a.mean is None else _device_array(a.mean, "mean")
    Xb = _out(out, (B, d), T, "out")
    if a.y is None:
        y_d, yb = NULL, None
    else:
        y_d = _device_array(a.y, "y", np.int64)
        yb = _out(y_out, (B,), np.int64, "y_out")
    if d == 0:
        return Xb, yb
    C, H, W = a.image_shape
    gx = grid_x(d)
    gy = max(1, min(B, MAX_GRID_Y))
    with Xc.device:
        get_kernel(kernel_name(Xc.dtype, T))(
            (gx, gy), (THREADS,),
            (Xc, y_d, perm_d, b_ptr, e_ptr, mean_d, _u64(a.n), _u64(perm_d.size), _u64(C),
             _u64(H), _u64(W), _u64(B), b_val, e_val, _u64(MODE_CODES[a.mode]), _u64(a.pad),
             _u64(a.seed), Xb, NULL if yb is None else yb))
    return Xb, yb


def mix_kernel_name(dtype):
    """The mixing kernel's name expression for batches of ``dtype``."""
    return _MIX.name(np.dtype(dtype))


def device_table(alpha, device_id=None):
    """The Beta(alpha, alpha) quantile table (:func:`fcgpu.mix_spec.mix_table`) on the
    current device (or ``device_id``), uploaded on first use and kept."""
    cp = _cp()
    if device_id is None:
        device_id = cp.cuda.runtime.getDevice()
    key = (float(alpha), int(device_id))
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = cp.ascontiguousarray(cp.asarray(mix_table(alpha)))
    return table


def mix_batch(X, y, b, image_shape, mode="mixup", alpha=1.0, seed=0, epoch=0, y2_out=None,
              lam_out=None):
    """``(X, y2, lam)``: the CuPy batch ``X`` mixed in place (:mod:`fcgpu.mix_spec`)."""
    a = check_mix_args(X, y, b, image_shape, mode, alpha, seed, epoch, device_counters=True)
    if a.mode == "none":
        return X, None, None
    B, d = a.batch, int(X.shape[1])
    check_row_size(d)
    if not is_cupy_array(X) or not X.flags.c_contiguous:
        raise ValueError("mix: the batch must be a C-contiguous CuPy array")
    b_val, b_ptr = _counter(a.b, "batch index b")
    e_val, e_ptr = _counter(a.epoch, "epoch")
    lam = _out(lam_out, (B,), X.dtype, "lam_out")
    if y is None:
        y_d, y2 = NULL, None
    else:
        y_d = _device_array(y, "y", np.int64)
        y2 = _out(y2_out, (B,), np.int64, "y2_out")
    C, H, W = a.image_shape
    with X.device:
        table = device_table(alpha, X.device.id)
        get_kernel(mix_kernel_name(X.dtype))(
            (grid_x(d), max(1, min((B + 1) // 2, MAX_GRID_Y))), (THREADS,),
            (X, y_d, NULL if y2 is None else y2, lam, table, b_ptr, e_ptr, _u64(B), _u64(C),
             _u64(H), _u64(W), b_val, e_val, _u64(MIX_CODES[a.mode]), _u64(a.seed)))
    return X, y2, lam
