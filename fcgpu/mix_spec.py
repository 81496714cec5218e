"""MixUp and CutMix of a gathered minibatch: the spec and its reference.

After the augmenting gather (:mod:`fcgpu.augment_spec`) has made the minibatch ``A``
(B, D), each image flipped and cropped by its own draws, row ``r`` is mixed with its
**partner**, row ``B-1-r`` (the batch reversed, as timm's ``Mixup`` does: the epoch's
permutation already makes each pair a uniformly random pair of training images, so no
draw is needed, and the partner is the same on every backend, in a resumed run and in
a replayed CUDA graph). An odd batch's middle row is its own partner.

The draws
---------
Sample position ``q = b*B + r`` draws one Philox4x32-10 block from the augmentation's
stream, at block ``2**63 + q`` (the flips and crops use blocks ``q < 2**63``)::

    stream  = 2**63 + epoch,   j = 2**63 + q
    (r0, r1, r2, r3) = philox4x32_10((j mod 2**32, j div 2**32, stream mod 2**32,
                                      stream div 2**32), (seed mod 2**32, seed div 2**32))
    k = r0 >> 20,  f = (r0 mod 2**20) * 2**-20
    lam = Q[k] + f * (Q[k+1] - Q[k])            (float64, each operation rounded once)

``Q`` is the quantile table of Beta(alpha, alpha) (:mod:`fcgpu.beta_table`, 4097
values, the same bits on every machine): ``lam`` is the inverse CDF at the 32-bit
uniform ``r0 / 2**32``, interpolated linearly, so its distribution is within 1/4096 of
Beta(alpha, alpha). ``r1`` is reserved. One ``lam`` per sample (not per batch): the
rows of a step mix by different amounts, so the batch statistics that batchnorm
normalizes with do not jump from step to step with one shared ``lam``.

The mix (``T`` the batch's dtype; ``A'`` the batch reversed)
-----------------------------------------------------------
* ``'mixup'`` (Zhang et al. 2018): ``X[r] = T(lam) * A[r] + T(1 - lam) * A'[r]``, two
  products and one sum rounded in ``T`` (no FMA); the target weight is ``T(lam)``.
* ``'cutmix'`` (Yun et al. 2019, their code's box): with ``c = sqrt(1 - lam)``
  (correctly rounded), ``cw = floor(W * c)``, ``ch = floor(H * c)``, the centre
  ``cx = (r2 * W) >> 32``, ``cy = (r3 * H) >> 32`` (integer multiply-highs) and
  ``x1 = clip(cx - cw div 2, 0, W)``, ``x2 = clip(cx + cw div 2, 0, W)`` (``y1``, ``y2``
  alike), pixels ``(c, i, j)`` with ``y1 <= i < y2``, ``x1 <= j < x2`` are copied from
  ``A'[r]``, the others stay; the target weight is ``lam`` adjusted to the box's exact
  area, ``T((H*W - (x2-x1)(y2-y1)) / (H*W))``.

The targets: ``y2[r] = y[B-1-r]`` and ``lam[r]`` above, for
:func:`fcgpu.layers.softmax_loss`'s ``mix=(y2, lam)``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .augment_spec import augment_stream, batch_positions, check_epoch, check_image_shape
from .backend import get_array_module
from .beta_table import TABLE_BITS, beta_quantile_table
from .random import check_seed, philox4x32_10
from .setting_spec import Setting

__all__ = ["MIX_MODES", "MIX_CODES", "MIX", "MIX_ALPHA", "MIX_BLOCK_BASE", "MixArgs",
           "check_mix_args", "mix_table", "mix_draws_reference", "mix_batch_reference"]

MIX_MODES = ("none", "mixup", "cutmix")
MIX_CODES = {"none": 0, "mixup": 1, "cutmix": 2}   # kernels/augment.cu MixMode
MIX_BLOCK_BASE = 1 << 63
MIX = Setting("mix", str, choices=MIX_MODES,
              help="mix each row with the batch reversed: none, mixup or cutmix")
MIX_ALPHA = Setting("mix_alpha", float, low=0.05, high=100,
                    help="the mixing weight is drawn from Beta(mix_alpha, mix_alpha)")
_MASK32 = 0xFFFFFFFF
_FRAC_BITS = 32 - TABLE_BITS


def mix_table(alpha, label="mix_alpha"):
    """The quantile table of Beta(alpha, alpha) after checking ``alpha`` (ConfigError)."""
    return beta_quantile_table(MIX_ALPHA.check(alpha, label))


class MixArgs:
    """The checked arguments of one mix (see :func:`check_mix_args`)."""

    __slots__ = ("X", "y", "b", "batch", "image_shape", "mode", "table", "seed", "epoch")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw[k])


def _counter(value, what, device_counters, check):
    if device_counters and not isinstance(value, numbers.Integral):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError("%s must be an integer, got %r" % (what, value))
    return check(int(value))


def _batch_index(b):
    if b < 0:
        raise ValueError("batch index b must be >= 0, got %d" % b)
    return b


def check_mix_args(X, y, b, image_shape, mode, alpha, seed, epoch, device_counters=False):
    """Validate a mix's arguments; raise a one-line error. ``X`` is the gathered batch
    (B, D), float32 or float64; with ``device_counters`` (the CUDA path) ``b`` and
    ``epoch`` may be one-element device arrays."""
    if getattr(X, "ndim", 0) != 2 or np.dtype(X.dtype) not in (np.float32, np.float64):
        raise ValueError("mix: the batch must be a 2-D float32 or float64 array (B, D), got "
                         "%s %s" % (getattr(X, "dtype", type(X).__name__),
                                    tuple(getattr(X, "shape", ()))))
    B, d = int(X.shape[0]), int(X.shape[1])
    shape = check_image_shape(image_shape, d)
    mode = MIX.check(mode)
    table = mix_table(alpha)
    seed = check_seed(seed)
    if y is not None and (tuple(y.shape) != (B,) or np.dtype(y.dtype).kind not in "iu"):
        raise ValueError("mix: labels must be integers of shape (%d,), got %s %s"
                         % (B, y.dtype, tuple(y.shape)))
    return MixArgs(X=X, y=y, b=_counter(b, "batch index b", device_counters, _batch_index),
                   batch=B, image_shape=shape, mode=mode, table=table, seed=seed,
                   epoch=_counter(epoch, "epoch", device_counters, check_epoch))


def mix_draws_reference(positions, seed, epoch, mode, alpha, image_shape, xp=None):
    """``(lam, x1, x2, y1, y2)`` for uint64 sample ``positions`` (the spec): ``lam``
    float64 (for 'cutmix', adjusted to the box), the box int64 (zeros for 'mixup')."""
    xp = get_array_module(positions) if xp is None else xp
    mode = MIX.check(mode)
    table = xp.asarray(mix_table(alpha))
    _, H, W = image_shape
    u64 = xp.uint64
    q = xp.asarray(positions, dtype=u64) | u64(MIX_BLOCK_BASE)
    stream = augment_stream(epoch)
    seed = check_seed(seed)
    n = q.shape[0]
    counter = xp.stack([q & u64(_MASK32), q >> u64(32),
                        xp.full(n, stream & _MASK32, dtype=u64),
                        xp.full(n, stream >> 32, dtype=u64)], axis=-1)
    r = philox4x32_10(counter, xp.asarray([seed & _MASK32, seed >> 32], dtype=u64)).astype(u64)
    k = (r[:, 0] >> u64(_FRAC_BITS)).astype(xp.int64)
    f = (r[:, 0] & u64((1 << _FRAC_BITS) - 1)).astype(xp.float64) * (0.5 ** _FRAC_BITS)
    lam = table[k] + f * (table[k + 1] - table[k])
    zero = xp.zeros(n, dtype=xp.int64)
    if mode != "cutmix":
        return lam, zero, zero, zero, zero
    cut = xp.sqrt(1.0 - lam)
    cw = (W * cut).astype(xp.int64) // 2       # (truncation: the products are >= 0)
    ch = (H * cut).astype(xp.int64) // 2
    cx = ((r[:, 2] * u64(W)) >> u64(32)).astype(xp.int64)
    cy = ((r[:, 3] * u64(H)) >> u64(32)).astype(xp.int64)
    x1, x2 = xp.clip(cx - cw, 0, W), xp.clip(cx + cw, 0, W)
    y1, y2 = xp.clip(cy - ch, 0, H), xp.clip(cy + ch, 0, H)
    area = (x2 - x1) * (y2 - y1)
    lam = (H * W - area).astype(xp.float64) / float(H * W)
    return lam, x1, x2, y1, y2


def mix_batch_reference(X, y, b, image_shape, mode="mixup", alpha=1.0, seed=0, epoch=0):
    """The spec in plain array code: ``(Xm, y2, lam)``, ``Xm`` a new array (``X`` is
    not changed), ``y2`` (int64) None without ``y``, ``lam`` in ``X``'s dtype. Mode
    'none' gives ``X`` itself, None, None."""
    a = check_mix_args(X, y, b, image_shape, mode, alpha, seed, epoch)
    if a.mode == "none":
        return X, None, None
    xp = get_array_module(X)
    T = np.dtype(X.dtype)
    B = a.batch
    lam, x1, x2, y1, y2 = mix_draws_reference(batch_positions(a.b, B, xp), a.seed, a.epoch,
                                              a.mode, alpha, a.image_shape, xp)
    partner = X[::-1]
    if a.mode == "mixup":
        w1 = lam.astype(T)
        w2 = (1.0 - lam).astype(T)
        Xm = w1[:, None] * X + w2[:, None] * partner
    else:
        C, H, W = a.image_shape
        i = xp.arange(H)[None, :]
        j = xp.arange(W)[None, :]
        rows = (i >= y1[:, None]) & (i < y2[:, None])                   # (B, H)
        cols = (j >= x1[:, None]) & (j < x2[:, None])                   # (B, W)
        box = (rows[:, :, None] & cols[:, None, :])[:, None, :, :]      # (B, 1, H, W)
        Xm = xp.where(box, partner.reshape(B, C, H, W), X.reshape(B, C, H, W))
    Xm = xp.ascontiguousarray(Xm.reshape(B, math.prod(a.image_shape))).astype(T, copy=False)
    y2 = None if y is None else xp.ascontiguousarray(y[::-1]).astype(xp.int64)
    return Xm, y2, lam.astype(T)
