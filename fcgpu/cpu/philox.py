"""Philox4x32-10 compiled for the host with Numba, and dropout on top of it."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..random import check_seed, dropout_scale, keep_threshold, mask_args

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_FOUR = np.uint64(4)


@njit(inline="always", cache=True)
def philox_block(j, s0, s1, k0, k1):
    """The four 32-bit outputs (as uint64) of block ``j`` for stream words s0, s1."""
    c0 = j & _LO
    c1 = j >> _S32
    c2 = s0
    c3 = s1
    for r in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ k0
        n2 = (p0 >> _S32) ^ c3 ^ k1
        c1 = p1 & _LO
        c3 = p0 & _LO
        c0 = n0
        c2 = n2
        k0 = (k0 + _W0) & _LO
        k1 = (k1 + _W1) & _LO
    return c0, c1, c2, c3


@njit(inline="always", cache=True)
def key_words(seed, stream):
    """The 32-bit words ``(k0, k1, s0, s1)`` (as uint64) of a seed and a stream: the
    key, and the stream half of every counter."""
    seed = np.uint64(seed)
    stream = np.uint64(stream)
    return seed & _LO, seed >> _S32, stream & _LO, stream >> _S32


@njit(parallel=True, cache=True)
def _mask_kernel(out, t, seed, stream):
    n = out.size
    k0, k1, s0, s1 = key_words(seed, stream)
    tt = np.uint64(t)
    nblocks = (n + 3) // 4
    for jb in prange(nblocks):
        j = np.uint64(jb)
        r0, r1, r2, r3 = philox_block(j, s0, s1, k0, k1)
        i = jb * 4
        if i + 3 < n:
            out[i] = r0 < tt
            out[i + 1] = r1 < tt
            out[i + 2] = r2 < tt
            out[i + 3] = r3 < tt
        else:
            out[i] = r0 < tt
            if i + 1 < n:
                out[i + 1] = r1 < tt
            if i + 2 < n:
                out[i + 2] = r2 < tt


@njit(parallel=True, cache=True)
def _dropout_kernel(x, out, mask, t, scale, seed, stream):
    """out = x * scale where kept, else 0; records the mask. x, out, mask flat."""
    n = x.size
    k0, k1, s0, s1 = key_words(seed, stream)
    tt = np.uint64(t)
    zero = x.dtype.type(0)
    nblocks = (n + 3) // 4
    for jb in prange(nblocks):
        r0, r1, r2, r3 = philox_block(np.uint64(jb), s0, s1, k0, k1)
        i = jb * 4
        for lane in range(4):
            k = i + lane
            if k < n:
                r = r0 if lane == 0 else (r1 if lane == 1 else (r2 if lane == 2 else r3))
                keep = r < tt
                mask[k] = keep
                out[k] = x[k] * scale if keep else zero


def dropout_mask(shape, p, seed, stream):
    """Boolean keep mask (NumPy), bit-identical to the reference."""
    shape, n, seed, stream, t = mask_args(shape, p, seed, stream)
    if t is None:
        return np.ones(shape, dtype=bool)
    out = np.empty(n, dtype=np.bool_)
    if n:
        _mask_kernel(out, np.uint64(t), np.uint64(seed), np.uint64(stream))
    return out.reshape(shape)


def dropout_forward(x, p, seed, stream):
    """``(out, mask)`` for NumPy ``x``: inverted dropout, one multiply per element."""
    seed = check_seed(seed)
    stream = check_seed(stream, "stream")
    t = keep_threshold(p)
    if t is None:
        return x.copy(), None
    xc = np.ascontiguousarray(x)
    out = np.empty_like(xc)
    mask = np.empty(xc.shape, dtype=np.bool_)
    if xc.size:
        _dropout_kernel(xc.reshape(-1), out.reshape(-1), mask.reshape(-1), np.uint64(t),
                        dropout_scale(p, xc.dtype), np.uint64(seed), np.uint64(stream))
    return out, mask
