"""Philox4x32-10 compiled for the host with Numba, and dropout on top of it.

The masks are drawn a chunk at a time: :func:`philox_fill` writes the 32-bit outputs of
a run of consecutive blocks into a buffer, in a loop whose iterations are independent
and branch-free 64-bit arithmetic on values below 2^32, which LLVM vectorizes (one
``vpmuludq`` multiplies four 32x32->64 pairs with AVX2, eight with AVX-512); a second
loop compares and selects over contiguous elements. A block computed one at a time
(:func:`philox_block`) is a chain of dependent multiplies and runs several times slower.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..random import check_seed, dropout_scale, keep_threshold, mask_args

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
LO32 = np.uint64(0xFFFFFFFF)   # the low 32-bit word (public: the Numba gather uses both)
SHIFT32 = np.uint64(32)
_FOUR = np.uint64(4)

# Elements per chunk of the flat kernels: a 64 KiB buffer of draws (L2-resident), big
# enough that allocating it costs nothing next to filling it.
CHUNK = 16384


@njit(inline="always", cache=True)
def philox_block(j, s0, s1, k0, k1):
    """The four 32-bit outputs (as uint64) of block ``j`` for stream words s0, s1."""
    c0 = j & LO32
    c1 = j >> SHIFT32
    c2 = s0
    c3 = s1
    for r in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        n0 = (p1 >> SHIFT32) ^ c1 ^ k0
        n2 = (p0 >> SHIFT32) ^ c3 ^ k1
        c1 = p1 & LO32
        c3 = p0 & LO32
        c0 = n0
        c2 = n2
        k0 = (k0 + _W0) & LO32
        k1 = (k1 + _W1) & LO32
    return c0, c1, c2, c3


@njit(inline="always", cache=True)
def key_words(seed, stream):
    """The 32-bit words ``(k0, k1, s0, s1)`` (as uint64) of a seed and a stream: the
    key, and the stream half of every counter."""
    seed = np.uint64(seed)
    stream = np.uint64(stream)
    return seed & LO32, seed >> SHIFT32, stream & LO32, stream >> SHIFT32


@njit(cache=True)
def philox_fill(buf, first, nblocks, s0, s1, k0, k1):
    """``buf[4*q + lane]`` = output ``lane`` of block ``first + q``, for q < nblocks
    (``buf`` uint32, at least ``4 * nblocks`` long). Vectorizes over blocks."""
    # The words are 32-bit already; saying so lets LLVM see that every product is
    # 32x32 -> 64 bits (vpmuludq) rather than a full 64-bit multiply (vpmullq, or with
    # AVX2 alone three multiplies).
    s0, s1, k0, k1 = s0 & LO32, s1 & LO32, k0 & LO32, k1 & LO32
    for q in range(nblocks):
        r0, r1, r2, r3 = philox_block(np.uint64(first + q), s0, s1, k0, k1)
        buf[4 * q] = np.uint32(r0)
        buf[4 * q + 1] = np.uint32(r1)
        buf[4 * q + 2] = np.uint32(r2)
        buf[4 * q + 3] = np.uint32(r3)


@njit(inline="always", cache=True)
def fill_range(buf, e0, e1, s0, s1, k0, k1):
    """Draws for the flat elements ``e0 <= e < e1``: returns ``off`` such that element
    ``e`` compares ``buf[off + e - e0]``. ``buf`` holds at least ``e1 - e0 + 6``."""
    b0 = e0 // 4
    philox_fill(buf, b0, (e1 - 1) // 4 - b0 + 1, s0, s1, k0, k1)
    return e0 - 4 * b0


@njit(parallel=True, cache=True)
def _mask_kernel(out, t, seed, stream):
    n = out.size
    k0, k1, s0, s1 = key_words(seed, stream)
    tt = np.uint32(t)
    for c in prange((n + CHUNK - 1) // CHUNK):
        e0 = c * CHUNK
        e1 = min(n, e0 + CHUNK)
        buf = np.empty(e1 - e0 + 8, np.uint32)
        fill_range(buf, e0, e1, s0, s1, k0, k1)
        o = out[e0:e1]  # (indices known to be >= 0: no wraparound select)
        for k in range(e1 - e0):
            o[k] = buf[k] < tt


@njit(parallel=True, cache=True)
def _dropout_kernel(x, out, mask, t, scale, seed, stream):
    """out = x * scale where kept, else 0; records the mask. x, out, mask flat."""
    n = x.size
    k0, k1, s0, s1 = key_words(seed, stream)
    tt = np.uint32(t)
    zero = x.dtype.type(0)
    for c in prange((n + CHUNK - 1) // CHUNK):
        e0 = c * CHUNK
        e1 = min(n, e0 + CHUNK)
        buf = np.empty(e1 - e0 + 8, np.uint32)
        fill_range(buf, e0, e1, s0, s1, k0, k1)
        xc, oc, mc = x[e0:e1], out[e0:e1], mask[e0:e1]
        for k in range(e1 - e0):
            keep = buf[k] < tt
            mc[k] = keep
            oc[k] = xc[k] * scale if keep else zero


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
