"""Per-sample augmentation fused into the minibatch gather: the spec and its reference.

The training minibatch ``b`` of size ``B`` is made from the rows ``perm[b*B + r]``,
``r < B``, of ``X`` (N, D), each row a C x H x W image in C order, in one pass: a
random horizontal flip and a random crop with zero-mean padding, then the mean image
is subtracted, giving ``Xb`` (B, D) in float32 or float64. The labels come along
(``yb[r] = y[perm[b*B + r]]``, int64).

The random draws
----------------
Every *sample position* ``q = b*B + r`` of an epoch (its index into ``perm``) draws one
Philox4x32-10 block (:func:`fcgpu.random.philox4x32_10`)::

    stream  = AUGMENT_STREAM_BASE + epoch            (2**63 + epoch)
    counter = (q mod 2**32, q div 2**32, stream mod 2**32, stream div 2**32)
    key     = (seed mod 2**32, seed div 2**32)
    (r0, r1, r2, r3) = philox4x32_10(counter, key)
    flip = r0 >> 31                                  ('flip' and 'crop'; else 0)
    dx   = (r1 * (2*pad + 1)) >> 32                  ('crop'; else pad)
    dy   = (r2 * (2*pad + 1)) >> 32                  ('crop'; else pad)
    r3 is reserved.

``dx`` and ``dy`` are exact 64-bit integer multiply-highs, uniform over 0..2*pad up to
one part in 2**32, and the same integers on every backend. Dropout streams count up
from 0 (``dropout_step * (L-1) + layer``) or use a per-process random key, so the
streams with the top bit set are the augmentation's alone (docs/random.md).

A draw belongs to the position, not to the image: for a given (seed, epoch, q) every
backend makes the same choice, whichever image the permutation puts there.

The output
----------
With ``f, dx, dy`` the draws of row ``r`` and ``src = perm[b*B + r]``, for channel
``c``, row ``i`` and column ``j`` of the output image::

    jj = W-1-j if f else j            (the crop window is mirrored)
    si = i + dy - pad,  sj = jj + dx - pad
    Xb[r, c, i, j] = T(X[src, c, si, sj]) - T(mean[c, i, j])   if 0 <= si < H, 0 <= sj < W
                   = 0                                         otherwise (padding)

``T`` is the output dtype: the pixel and the mean are converted to ``T`` (round to
nearest) and subtracted once in ``T``, so every backend gives the same bits. The crop
reads the image padded by ``pad`` pixels on each side at offset (dy, dx); with no
shift (dx = dy = pad) it is the image itself. Padded pixels take the value of the
mean image at their output position, so they are exactly 0 after the subtraction:
the padding is "the average image", which keeps the input's statistics (a black
border would not be black after mean subtraction). With ``mean=None`` (the course's
arrays, already mean-subtracted) nothing is subtracted and padding is 0 too.

Modes: ``'none'`` (the plain gather and cast), ``'flip'`` (flips only) and ``'crop'``
(crops and flips).

The CUDA kernel rounds as IEEE does with subnormals kept (no flush to zero): its
float32 subtraction and float64-to-float32 conversion are written in PTX without
``.ftz``, so "bit-identical" covers every input.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_array_module
from .random import check_seed, philox4x32_10

__all__ = ["MODES", "DEFAULT_PAD", "AUGMENT_STREAM_BASE", "INPUT_DTYPES", "OUTPUT_DTYPES",
           "augment_stream", "check_mode", "check_image_shape", "check_pad", "check_epoch",
           "check_out_dtype", "check_input_dtype", "batch_positions", "draws_reference",
           "augment_gather_reference", "check_gather_args", "check_rows", "GatherArgs"]

MODES = ("none", "flip", "crop")
MODE_CODES = {"none": 0, "flip": 1, "crop": 2}   # kernels/augment.cu AugmentMode
DEFAULT_PAD = 4
AUGMENT_STREAM_BASE = 1 << 63
INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------- argument checks

def _int(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError("%s must be an integer, got %r" % (what, value))
    return int(value)


def check_mode(mode):
    if mode not in MODES:
        raise ValueError("augment mode must be one of %s, got %r" % (", ".join(MODES), mode))
    return mode


def check_image_shape(image_shape, d=None):
    """``(C, H, W)`` as ints; ``d``, when given, must be ``C*H*W``."""
    try:
        shape = tuple(image_shape)
    except TypeError:
        raise ValueError("image_shape must be (C, H, W), got %r" % (image_shape,)) from None
    if len(shape) != 3:
        raise ValueError("image_shape must be (C, H, W), got %r" % (image_shape,))
    shape = tuple(_int(s, "image_shape entry") for s in shape)
    if min(shape) < 1:
        raise ValueError("image_shape must be positive, got %s" % (shape,))
    if d is not None and math.prod(shape) != d:
        raise ValueError("image_shape %s has %d values but rows of X have %d"
                         % (shape, math.prod(shape), d))
    return shape


def check_pad(pad, mode, image_shape):
    """``pad`` as an int: >= 0, and below H and W when ``mode`` is 'crop'."""
    pad = _int(pad, "pad")
    if pad < 0:
        raise ValueError("pad must be >= 0, got %d" % pad)
    _, h, w = image_shape
    if mode == "crop" and pad >= min(h, w):
        raise ValueError("pad %d must be smaller than the image's height and width (%d x %d)"
                         % (pad, h, w))
    return pad


def check_epoch(epoch):
    epoch = check_seed(epoch, "epoch")
    if epoch >= AUGMENT_STREAM_BASE:
        raise ValueError("epoch must be below 2**63, got %d" % epoch)
    return epoch


def augment_stream(epoch):
    """The Philox stream of the augmentation draws of ``epoch``: ``2**63 + epoch``."""
    return AUGMENT_STREAM_BASE + check_epoch(epoch)


def check_input_dtype(dtype, what="X"):
    dt = np.dtype(dtype)
    if dt not in INPUT_DTYPES:
        raise ValueError("%s must be uint8, float32 or float64, got %s" % (what, dt))
    return dt


def check_out_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError("out_dtype must be float32 or float64, got %r" % (dtype,)) from None
    if dt not in OUTPUT_DTYPES:
        raise ValueError("out_dtype must be float32 or float64, got %s" % dt)
    return dt


class GatherArgs:
    """The checked arguments of one gather (see :func:`check_gather_args`)."""

    __slots__ = ("X", "y", "perm", "b", "batch", "image_shape", "mode", "pad", "seed",
                 "epoch", "mean", "out_dtype", "n", "d")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw[k])

    @property
    def start(self):
        return self.b * self.batch


def check_gather_args(X, y, perm, b, batch_size, image_shape, mode, pad, seed, epoch, mean,
                      out_dtype, device_counters=False):
    """Validate the arguments every implementation takes; raise a one-line error.

    ``X`` comes back as (N, D) (a reshape of (N, C, H, W) is fine) and ``mean`` as
    None or a (D,) array in ``out_dtype`` of ``X``'s array module. With
    ``device_counters`` (the CUDA path), ``b`` and ``epoch`` may be one-element
    device arrays, read when the kernel runs; then they are not range-checked here.
    """
    xp = get_array_module(X)
    if getattr(X, "ndim", 0) < 2:
        raise ValueError("X must be (N, D) or (N, C, H, W), got shape %s"
                         % (tuple(getattr(X, "shape", ())),))
    n = int(X.shape[0])
    d = int(math.prod(X.shape[1:]))
    check_input_dtype(X.dtype)
    X2 = X.reshape(n, d)
    shape = check_image_shape(image_shape, d)
    mode = check_mode(mode)
    pad = check_pad(pad, mode, shape)
    seed = check_seed(seed)
    out_dtype = check_out_dtype(out_dtype)
    batch = _int(batch_size, "batch_size")
    if batch < 1:
        raise ValueError("batch_size must be >= 1, got %d" % batch)
    if getattr(perm, "ndim", None) != 1 or np.dtype(perm.dtype).kind not in "iu":
        raise ValueError("perm must be a 1-D integer array, got %s"
                         % (getattr(perm, "dtype", type(perm).__name__),))
    if device_counters and not isinstance(b, numbers.Integral):
        b_val = b
    else:
        b_val = _int(b, "batch index b")
        if b_val < 0 or (b_val + 1) * batch > perm.shape[0]:
            raise ValueError("batch %d of %d rows needs positions up to %d but perm has %d"
                             % (b_val, batch, (b_val + 1) * batch, perm.shape[0]))
    if device_counters and not isinstance(epoch, numbers.Integral):
        epoch_val = epoch
    else:
        epoch_val = check_epoch(epoch)
    if y is not None and tuple(y.shape) != (n,):
        raise ValueError("y must have shape (%d,), got %s" % (n, tuple(y.shape)))
    if mean is not None:
        if int(getattr(mean, "size", -1)) != d:
            raise ValueError("mean must have %d values (one image), got shape %s"
                             % (d, tuple(getattr(mean, "shape", ()))))
        mean = xp.ascontiguousarray(xp.asarray(mean).reshape(d), dtype=out_dtype)
    return GatherArgs(X=X2, y=y, perm=perm, b=b_val, batch=batch, image_shape=shape, mode=mode,
                      pad=pad, seed=seed, epoch=epoch_val, mean=mean, out_dtype=out_dtype,
                      n=n, d=d)


def check_rows(idx, n):
    """The gathered row numbers must lie in [0, N) (host arrays only)."""
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError("perm holds row numbers outside [0, %d) in this batch" % n)


# ----------------------------------------------------------------- the reference

def batch_positions(b, batch_size, xp=np):
    """The sample positions ``b*B .. b*B + B - 1`` of a batch, uint64."""
    start = int(b) * int(batch_size)
    return xp.arange(start, start + int(batch_size), dtype=xp.uint64)


def draws_reference(positions, seed, epoch, mode, pad, xp=None):
    """``(flip, dx, dy)`` int64 arrays for uint64 sample ``positions`` (the spec)."""
    xp = get_array_module(positions) if xp is None else xp
    mode = check_mode(mode)
    seed = check_seed(seed)
    stream = augment_stream(epoch)
    q = xp.asarray(positions, dtype=xp.uint64)
    n = q.shape[0]
    if mode == "none":
        zero = xp.zeros(n, dtype=xp.int64)
        return zero, zero + pad, zero + pad
    u64 = xp.uint64
    counter = xp.stack([q & u64(_MASK32), q >> u64(32),
                        xp.full(n, stream & _MASK32, dtype=u64),
                        xp.full(n, stream >> 32, dtype=u64)], axis=-1)
    key = xp.asarray([seed & _MASK32, seed >> 32], dtype=u64)
    r = philox4x32_10(counter, key).astype(u64)
    flip = (r[:, 0] >> u64(31)).astype(xp.int64)
    if mode == "flip":
        fixed = xp.full(n, pad, dtype=xp.int64)
        return flip, fixed, fixed.copy()
    span = u64(2 * pad + 1)
    dx = ((r[:, 1] * span) >> u64(32)).astype(xp.int64)
    dy = ((r[:, 2] * span) >> u64(32)).astype(xp.int64)
    return flip, dx, dy


def augment_gather_reference(X, y, perm, b, batch_size, image_shape, mode="crop",
                             pad=DEFAULT_PAD, seed=0, epoch=0, mean=None,
                             out_dtype=np.float32):
    """The spec in plain array code: ``(Xb, yb)``; ``yb`` is None without ``y``."""
    a = check_gather_args(X, y, perm, b, batch_size, image_shape, mode, pad, seed, epoch, mean,
                          out_dtype)
    xp = get_array_module(a.X)
    C, H, W = a.image_shape
    B, P, T = a.batch, a.pad, a.out_dtype
    idx = xp.asarray(a.perm[a.start:a.start + B]).astype(xp.int64)
    if xp is np:
        check_rows(idx, a.n)
    flip, dx, dy = draws_reference(batch_positions(a.b, B, xp), a.seed, a.epoch, a.mode, P, xp)
    i = xp.arange(H, dtype=xp.int64)
    j = xp.arange(W, dtype=xp.int64)
    jj = xp.where(flip[:, None] != 0, W - 1 - j[None, :], j[None, :])     # (B, W)
    si = i[None, :] + dy[:, None] - P                                       # (B, H)
    sj = jj + dx[:, None] - P                                               # (B, W)
    inside = ((si >= 0) & (si < H))[:, :, None] & ((sj >= 0) & (sj < W))[:, None, :]
    imgs = a.X[idx].reshape(B, C, H, W)
    g = imgs[xp.arange(B)[:, None, None, None], xp.arange(C)[None, :, None, None],
             xp.clip(si, 0, H - 1)[:, None, :, None], xp.clip(sj, 0, W - 1)[:, None, None, :]]
    val = g.astype(T)
    if a.mean is not None:
        val = val - a.mean.reshape(C, H, W)
    Xb = xp.where(inside[:, None, :, :], val, T.type(0)).astype(T, copy=False)
    Xb = xp.ascontiguousarray(Xb.reshape(B, C * H * W))
    yb = None if a.y is None else xp.asarray(a.y)[idx].astype(xp.int64)
    return Xb, yb
