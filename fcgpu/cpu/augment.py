"""The augmenting minibatch gather (:mod:`fcgpu.augment_spec`) compiled with Numba.

One parallel loop over the batch rows. A row draws its Philox block once, then
writes each image line as three runs: the padding before the crop window, the
pixels (read forwards, or backwards when the row is flipped), the padding after.
Bit-identical to :func:`fcgpu.augment_spec.augment_gather_reference`: one
conversion and one subtraction per pixel, in the output dtype.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..augment_spec import MODE_CODES, augment_stream, check_gather_args, check_rows
from .philox import LO32, SHIFT32, philox_block

__all__ = ["augment_gather"]

_S31 = np.uint64(31)


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
