"""The augmenting minibatch gather (:mod:`fcgpu.augment_spec`) compiled with Numba.

One parallel loop over the batch rows. A row draws its Philox block once, then
writes each image line as three runs: the padding before the crop window, the
pixels (read forwards, or backwards when the row is flipped), the padding after.
Bit-identical to :func:`fcgpu.augment_spec.augment_gather_reference`: one
conversion and one subtraction per pixel, in the output dtype.

:func:`mix_batch` (MixUp, CutMix: :mod:`fcgpu.mix_spec`) mixes the gathered batch in
place, one parallel loop over the pairs of rows ``(r, B-1-r)``: each pair's two rows
are read once and both written, so no copy of the batch is needed. Bit-identical to
:func:`fcgpu.mix_spec.mix_batch_reference` (the same float64 steps for lam, the same
two products and one sum in the batch's dtype; Numba compiles without fast-math, so
nothing is fused into an FMA).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..augment_spec import MODE_CODES, augment_stream, check_gather_args, check_rows
from ..beta_table import TABLE_BITS
from ..mix_spec import MIX_BLOCK_BASE, MIX_CODES, check_mix_args
from .philox import LO32, SHIFT32, philox_block

__all__ = ["augment_gather", "mix_batch"]

_S31 = np.uint64(31)
_MIX_BIT = np.uint64(MIX_BLOCK_BASE)
_FRAC_SHIFT = np.uint64(32 - TABLE_BITS)
_FRAC_MASK = np.uint64((1 << (32 - TABLE_BITS)) - 1)
_FRAC_SCALE = 0.5 ** (32 - TABLE_BITS)


@njit(cache=True)
def _augment_row(xs, orow, mean, C, H, W, pad, flip, dx, dy):
    """One image: orow = the crop of xs (mirrored when flip != 0) minus mean."""
    T = orow.dtype.type
    zero = T(0)
    # output columns [j0, j1) have their source inside the image, read forwards from
    # column s_first (no flip) or backwards from it (flip); output rows [i0, i1) too
    if flip == 0:
        j0 = max(0, pad - dx)
        j1 = min(W, W + pad - dx)
        s_first = j0 + dx - pad
    else:
        j0 = max(0, dx - pad)
        j1 = min(W, W + dx - pad)
        s_first = W - 1 - j0 + dx - pad
    n = j1 - j0
    i0 = max(0, pad - dy)
    i1 = min(H, H + pad - dy)
    for c in range(C):
        for i in range(H):
            o = (c * H + i) * W
            if i < i0 or i >= i1:
                for j in range(W):
                    orow[o + j] = zero
                continue
            s = (c * H + i + dy - pad) * W + s_first
            for j in range(j0):
                orow[o + j] = zero
            o2 = o + j0
            if flip == 0:
                for k in range(n):
                    orow[o2 + k] = T(xs[s + k]) - mean[o2 + k]
            else:
                for k in range(n):
                    orow[o2 + k] = T(xs[s - k]) - mean[o2 + k]
            for j in range(j1, W):
                orow[o + j] = zero


@njit(parallel=True, cache=True)
def _augment_rows(X, y, idx, start, C, H, W, mode, pad, k0, k1, s0, s1, mean, out, yout,
                  with_labels):
    """out[r] = the augmented row X[idx[r]] minus mean; yout[r] = y[idx[r]]."""
    span = np.uint64(2 * pad + 1)
    for r in prange(out.shape[0]):
        src = idx[r]
        flip = 0
        dx = pad
        dy = pad
        if mode != 0:
            q0, q1, q2, _ = philox_block(np.uint64(start + r), s0, s1, k0, k1)
            flip = np.int64(q0 >> _S31)
            if mode == 2:
                dx = np.int64((q1 * span) >> SHIFT32)
                dy = np.int64((q2 * span) >> SHIFT32)
        if with_labels:
            yout[r] = y[src]
        if W == 32:  # CIFAR's width as a constant: LLVM specializes the line loops (~2x)
            _augment_row(X[src], out[r], mean, C, H, 32, pad, flip, dx, dy)
        else:
            _augment_row(X[src], out[r], mean, C, H, W, pad, flip, dx, dy)


def augment_gather(X, y, perm, b, batch_size, image_shape, mode="crop", pad=4, seed=0,
                   epoch=0, mean=None, out_dtype=np.float32, out=None, y_out=None):
    """``(Xb, yb)`` for NumPy arrays (see :mod:`fcgpu.augment_spec`). ``out`` (B, D)
    and ``y_out`` (B,) int64, C-contiguous, are written when given."""
    a = check_gather_args(X, y, perm, b, batch_size, image_shape, mode, pad, seed, epoch, mean,
                          out_dtype)
    B, d, T = a.batch, a.d, a.out_dtype
    if out is None:
        out = np.empty((B, d), dtype=T)
    elif (not isinstance(out, np.ndarray) or out.shape != (B, d) or out.dtype != T
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError("out must be a writeable C-contiguous (%d, %d) %s array" % (B, d, T))
    yb = None
    if a.y is not None:
        if y_out is None:
            yb = np.empty(B, dtype=np.int64)
        elif (not isinstance(y_out, np.ndarray) or y_out.shape != (B,)
              or y_out.dtype != np.int64 or not y_out.flags.c_contiguous):
            raise ValueError("y_out must be a C-contiguous (%d,) int64 array" % B)
        else:
            yb = y_out
    idx = np.ascontiguousarray(a.perm[a.start:a.start + B], dtype=np.int64)
    check_rows(idx, a.n)
    Xc = np.ascontiguousarray(a.X)
    mean = np.zeros(d, dtype=T) if a.mean is None else a.mean   # x - (+0) == x, bit for bit
    yc = np.ascontiguousarray(a.y) if a.y is not None else np.zeros(1, dtype=np.int64)
    C, H, W = a.image_shape
    stream = augment_stream(a.epoch)
    _augment_rows(Xc, yc, idx, np.int64(a.start), np.int64(C), np.int64(H), np.int64(W),
                  np.int64(MODE_CODES[a.mode]), np.int64(a.pad),
                  np.uint64(a.seed) & LO32, np.uint64(a.seed >> 32),
                  np.uint64(stream) & LO32, np.uint64(stream >> 32), mean, out,
                  yb if yb is not None else np.zeros(1, dtype=np.int64), yb is not None)
    return out, yb


# ----------------------------------------------------------------- MixUp, CutMix

@njit(inline="always", cache=True)
def _mix_draw(q, table, mode, H, W, k0, k1, s0, s1):
    """``(lam, x1, x2, y1, y2)`` of sample position ``q`` (fcgpu.mix_spec)."""
    r0, _, r2, r3 = philox_block(np.uint64(q) | _MIX_BIT, s0, s1, k0, k1)
    k = np.int64(r0 >> _FRAC_SHIFT)
    f = np.float64(r0 & _FRAC_MASK) * _FRAC_SCALE
    lo = table[k]
    lam = lo + f * (table[k + 1] - lo)
    if mode != 2:
        return lam, 0, 0, 0, 0
    cut = math.sqrt(1.0 - lam)
    hw = np.int64(W * cut) // 2
    hh = np.int64(H * cut) // 2
    cx = np.int64((r2 * np.uint64(W)) >> SHIFT32)
    cy = np.int64((r3 * np.uint64(H)) >> SHIFT32)
    x1, x2 = max(cx - hw, 0), min(cx + hw, W)
    y1, y2 = max(cy - hh, 0), min(cy + hh, H)
    return np.float64(H * W - (x2 - x1) * (y2 - y1)) / np.float64(H * W), x1, x2, y1, y2


@njit(inline="always", cache=True)
def _cutmix_pair(xr, xp, C, H, W, br, bp):
    """Row r takes row p's pixels inside its box ``br`` (x1, x2, y1, y2), and row p
    row r's inside ``bp``; both read before either is written. Lines that neither
    box crosses are left alone."""
    for c in range(C):
        for i in range(H):
            in_r = br[2] <= i < br[3]
            in_p = bp[2] <= i < bp[3]
            if not (in_r or in_p):
                continue
            o = (c * H + i) * W
            for j in range(W):
                a = xr[o + j]
                b = xp[o + j]
                if in_r and br[0] <= j < br[1]:
                    xr[o + j] = b
                if in_p and bp[0] <= j < bp[1]:
                    xp[o + j] = a


@njit(parallel=True, cache=True)
def _mix_pairs(X, y, y2, lam_out, table, start, C, H, W, mode, k0, k1, s0, s1, with_labels):
    """Mix rows r and B-1-r of X in place; their target weights into lam_out, the
    partners' labels into y2."""
    B = X.shape[0]
    T = X.dtype.type
    for r in prange((B + 1) // 2):
        p = B - 1 - r
        lr, ax1, ax2, ay1, ay2 = _mix_draw(start + r, table, mode, H, W, k0, k1, s0, s1)
        lp, bx1, bx2, by1, by2 = _mix_draw(start + p, table, mode, H, W, k0, k1, s0, s1)
        lam_out[r] = T(lr)
        lam_out[p] = T(lp)
        if with_labels:
            y2[r] = y[p]
            y2[p] = y[r]
        xr = X[r]
        xp = X[p]
        if mode == 2:
            _cutmix_pair(xr, xp, C, H, W, (ax1, ax2, ay1, ay2), (bx1, bx2, by1, by2))
            continue
        w1r, w2r = T(lr), T(1.0 - lr)
        w1p, w2p = T(lp), T(1.0 - lp)
        for e in range(X.shape[1]):
            a = xr[e]
            b = xp[e]
            xr[e] = w1r * a + w2r * b
            xp[e] = w1p * b + w2p * a


def _buffer(buf, shape, dtype, what):
    if buf is None:
        return np.empty(shape, dtype=dtype)
    if (not isinstance(buf, np.ndarray) or buf.shape != shape or buf.dtype != dtype
            or not buf.flags.c_contiguous or not buf.flags.writeable):
        raise ValueError("%s must be a writeable C-contiguous %s %s array"
                         % (what, shape, np.dtype(dtype).name))
    return buf


def mix_batch(X, y, b, image_shape, mode="mixup", alpha=1.0, seed=0, epoch=0, y2_out=None,
              lam_out=None):
    """``(X, y2, lam)``: ``X`` (a NumPy batch) mixed in place (:mod:`fcgpu.mix_spec`)."""
    a = check_mix_args(X, y, b, image_shape, mode, alpha, seed, epoch)
    if a.mode == "none":
        return X, None, None
    B = a.batch
    _buffer(X, X.shape, X.dtype, "the batch")
    lam = _buffer(lam_out, (B,), X.dtype, "lam_out")
    y2 = None if y is None else _buffer(y2_out, (B,), np.int64, "y2_out")
    C, H, W = a.image_shape
    stream = augment_stream(a.epoch)
    _mix_pairs(X, np.zeros(1, np.int64) if y is None else np.ascontiguousarray(y),
               np.zeros(1, np.int64) if y2 is None else y2, lam, a.table,
               np.int64(a.b * B), np.int64(C), np.int64(H), np.int64(W),
               np.int64(MIX_CODES[a.mode]), np.uint64(a.seed) & LO32, np.uint64(a.seed >> 32),
               np.uint64(stream) & LO32, np.uint64(stream >> 32), y is not None)
    return X, y2, lam
