"""Philox4x32-10 (Random123) and the dropout keep-masks drawn from it.

One stream on every backend: element ``i`` of a flattened (C-order) tensor uses block
``j = i // 4``, lane ``i % 4``; counter ``(j lo, j hi, stream lo, stream hi)``; key
``(seed lo, seed hi)``; the unit is kept iff ``r < floor(p * 2**32)``. The same
(seed, stream) gives the same mask on NumPy, in the compiled CPU path and on the GPU.

:func:`philox4x32_10` and :func:`dropout_mask_reference` are the plain, vectorized
array-module reference. This module is the spec: it imports nothing of fcgpu but the
backend, and the compiled paths (:mod:`fcgpu.cpu.philox`, :mod:`fcgpu.cuda.ops`)
import their argument checks from it. :func:`fcgpu.fused.dropout_mask`, above them,
picks the compiled path for the backend of ``xp`` (Numba on the CPU, CUDA on CuPy).
"""
from __future__ import annotations

import math
import secrets
import threading

import numpy as np

from .backend import get_array_module

__all__ = ["philox4x32_10", "dropout_mask_reference", "keep_threshold", "dropout_scale",
           "check_seed", "mask_args", "fresh_stream", "DeviceStream"]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
ROUNDS = 10
_MASK32 = 0xFFFFFFFF
_U64_MAX = 2 ** 64 - 1


def philox4x32_10(counter, key):
    """Philox4x32 with 10 rounds: ``counter`` (..., 4) and ``key`` (..., 2) uint32,
    broadcast together; returns uint32 (..., 4)."""
    xp = get_array_module(counter, key)
    counter = xp.asarray(counter)
    key = xp.asarray(key)
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError("philox4x32_10 needs counter (..., 4) and key (..., 2), got %s and %s"
                         % (counter.shape, key.shape))
    u64 = xp.uint64
    m = u64(_MASK32)
    c0, c1, c2, c3 = (counter[..., i].astype(u64) & m for i in range(4))
    k0, k1 = (key[..., i].astype(u64) & m for i in range(2))
    m0, m1, w0, w1, s32 = u64(PHILOX_M0), u64(PHILOX_M1), u64(PHILOX_W0), u64(PHILOX_W1), u64(32)
    for r in range(ROUNDS):
        p0 = m0 * c0
        p1 = m1 * c2
        c0, c1, c2, c3 = (p1 >> s32) ^ c1 ^ k0, p1 & m, (p0 >> s32) ^ c3 ^ k1, p0 & m
        if r + 1 < ROUNDS:
            k0 = (k0 + w0) & m
            k1 = (k1 + w1) & m
    return xp.stack(xp.broadcast_arrays(c0, c1, c2, c3), axis=-1).astype(xp.uint32)


def check_seed(value, what="seed"):
    """Validate a seed or stream number: an integer in [0, 2**64)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError("%s must be an integer, got %r" % (what, value))
    value = int(value)
    if not 0 <= value <= _U64_MAX:
        raise ValueError("%s must be in [0, 2**64), got %d" % (what, value))
    return value


class DeviceStream:
    """A dropout stream number kept in device memory: ``base[0] + offset``.

    For a training step captured as a CUDA graph (:mod:`fcgpu.cuda.graph`), where the
    stream must change from one replay to the next: the CUDA kernels read ``base[0]``
    when they run. ``base`` is a one-element uint64 CuPy array; ``offset`` (the layer)
    an integer. Only the CuPy path (:mod:`fcgpu.cuda.ops`) accepts it.
    """

    __slots__ = ("base", "offset")

    def __init__(self, base, offset=0):
        self.base = base
        self.offset = check_seed(offset, "stream offset")

    def __repr__(self):
        return "DeviceStream(base=<device uint64>, offset=%d) (CuPy kernels only)" % self.offset


def _check_p(p):
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError("dropout keep probability p must be a number, got %r" % (p,)) from None
    if not (0.0 < p <= 1.0):  # also rejects NaN
        raise ValueError("dropout keep probability p must be in (0, 1], got %r" % (p,))
    return p


def keep_threshold(p):
    """``floor(p * 2**32)``; ``None`` when ``p >= 1`` (everything is kept)."""
    p = _check_p(p)
    if p >= 1.0:
        return None
    return min(int(math.floor(p * 4294967296.0)), _MASK32)


def dropout_scale(p, dtype):
    """The inverted-dropout scale ``dtype(1/p)``: computed in float64, then cast."""
    return np.dtype(dtype).type(1.0 / _check_p(p))


def _shape_size(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError("negative dimension in shape %s" % (shape,))
    return shape, math.prod(shape)


def mask_args(shape, p, seed, stream):
    """``(shape, n, seed, stream, threshold)`` checked for a keep mask; the threshold
    is None when ``p >= 1`` (everything is kept). Every mask maker starts here."""
    shape, n = _shape_size(shape)
    return shape, n, check_seed(seed), check_seed(stream, "stream"), keep_threshold(p)


def dropout_mask_reference(shape, p, seed, stream, xp=np):
    """The keep mask of the spec in plain array code (the reference)."""
    shape, n, seed, stream, t = mask_args(shape, p, seed, stream)
    if t is None:
        return xp.ones(shape, dtype=bool)
    blocks = (n + 3) // 4
    j = xp.arange(blocks, dtype=xp.uint64)
    counter = xp.stack([j & xp.uint64(_MASK32), j >> xp.uint64(32),
                        xp.full(blocks, stream & _MASK32, dtype=xp.uint64),
                        xp.full(blocks, stream >> 32, dtype=xp.uint64)], axis=-1)
    key = xp.asarray([seed & _MASK32, seed >> 32], dtype=xp.uint64)
    r = philox4x32_10(counter, key).reshape(-1)[:n]
    return (r < xp.uint32(t)).reshape(shape)


# Streams for dropout calls that name no seed: one random key per process and a
# counter, so that every such call draws a fresh mask.
_session_key = secrets.randbits(64)
_stream_lock = threading.Lock()
_stream_next = 0


def fresh_stream():
    """``(seed, stream)`` never returned before in this process."""
    global _stream_next
    with _stream_lock:
        s = _stream_next
        _stream_next += 1
    return _session_key, s
