"""The quantiles of Beta(alpha, alpha), computed the same to the last bit on every machine.

MixUp and CutMix draw their mixing weight ``lam ~ Beta(alpha, alpha)`` by inverting its
CDF: :func:`beta_quantile_table` tabulates ``Q[k] = F^-1(k / K)`` for ``k = 0 .. K``
(``K = TABLE_SIZE``), and a draw interpolates linearly between two neighbours
(:mod:`fcgpu.mix_spec`). The interpolated distribution's CDF meets F at every knot, so
it is within 1/K of F everywhere (Kolmogorov distance), whatever alpha.

The table is made on the host once per alpha and handed as it is to the NumPy
reference, the Numba pass and the CUDA kernel, so those agree bit for bit. It is also
the same on every machine: it is computed with IEEE float64 additions, subtractions,
multiplications and divisions only (each correctly rounded, elementwise NumPy ufuncs,
never contracted into an FMA), ``frexp``/``ldexp`` (exact) and comparisons. The math
library's ``log``, ``exp`` and ``pow``, whose last bit differs between libraries and
between a CPU with and one without FMA, are not used: :func:`_log` and :func:`_exp`
below are fixed polynomials.

The CDF, for ``0 <= x <= 1/2`` (DLMF 8.17.8 with b = a; the upper half by symmetry)::

    F(x) = (4 x (1 - x))**a * H(x) / (2 H(1/2)),
    H(x) = 2F1(2a, 1; a + 1; x) = sum_n t_n,  t_0 = 1,  t_{n+1} = t_n x (2a + n) / (a + 1 + n)

whose terms are positive and decreasing (the ratio is below 2x <= 1), so the sum has no
cancellation. ``Q[k]`` for ``k < K/2`` is found by bisection on the bit patterns of the
doubles in [0, 1/2] (ordered like the numbers), which ends at neighbouring doubles in 63
steps even where Q is tiny (small alpha); ``Q[K/2] = 1/2``, ``Q[K - k] = 1 - Q[k]``,
``Q[0] = 0``, ``Q[K] = 1``.
"""
from __future__ import annotations

import functools
import struct

import numpy as np

__all__ = ["TABLE_SIZE", "TABLE_BITS", "beta_quantile_table", "beta_cdf"]

TABLE_BITS = 12
TABLE_SIZE = 1 << TABLE_BITS   # K: intervals of the table (K + 1 entries)

_LN2 = 0.6931471805599453
_LN2_HI = 0.693145751953125          # 16 significant bits: n * _LN2_HI is exact
_LN2_LO = 1.4286068203094173e-06     # ln 2 - _LN2_HI
_SQRT_HALF = 0.7071067811865476
_LOG_TERMS = 14                      # odd powers of z, |z| <= 0.172: z**29 < 1e-22
_EXP_TERMS = 20                      # |r| <= 0.35: r**20 / 20! < 1e-27
_HALF_BITS = struct.unpack("<q", struct.pack("<d", 0.5))[0]   # 0.5's bit pattern


def _log(x):
    """ln x for positive finite float64 ``x`` (an array), from a fixed series:
    ``x = m 2**e`` with m in [sqrt(1/2), sqrt(2)), ``ln m = 2 atanh(z)``, ``z = (m-1)/(m+1)``."""
    m, e = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    z = (m - 1.0) / (m + 1.0)
    z2 = z * z
    s = np.full_like(z, 1.0 / (2 * _LOG_TERMS + 1))
    for n in range(_LOG_TERMS - 1, -1, -1):
        s = s * z2 + 1.0 / (2 * n + 1)
    return (e * _LN2_HI + 2.0 * z * s) + e * _LN2_LO


def _exp(y):
    """e**y for float64 ``y <= 0`` (an array): ``y = n ln 2 + r``, a Taylor polynomial in r,
    scaled by 2**n (``ldexp`` rounds once into the subnormals, or to 0)."""
    n = np.rint(y / _LN2)
    r = (y - n * _LN2_HI) - n * _LN2_LO
    s = np.full_like(r, 1.0)
    for k in range(_EXP_TERMS, 0, -1):
        s = s * r / k + 1.0
    return np.ldexp(s, np.maximum(n, -2000.0).astype(np.int64))


def _h(x, a):
    """H(x) = 2F1(2a, 1; a + 1; x) for float64 ``x`` in [0, 1/2] (an array)."""
    total = np.ones_like(x)
    term = np.ones_like(x)
    n = 0
    while True:
        term = term * x * ((2.0 * a + n) / (a + 1.0 + n))
        total = total + term
        n += 1
        if not np.any(term > total * 1e-18):
            return total


def beta_cdf(x, alpha, _norm=None):
    """F(x) of Beta(alpha, alpha) for float64 ``x`` in [0, 1/2] (an array), as the table
    computes it."""
    x = np.asarray(x, dtype=np.float64)
    a = float(alpha)
    norm = 2.0 * _h(np.array([0.5]), a)[0] if _norm is None else _norm
    w = 4.0 * x * (1.0 - x)
    safe = np.where(w > 0, w, 1.0)
    power = np.where(w > 0, _exp(a * _log(safe)), 0.0)
    return power * _h(x, a) / norm


@functools.lru_cache(maxsize=16)
def _table(alpha):
    k = TABLE_SIZE
    half = k // 2
    p = np.arange(1, half, dtype=np.float64) / k
    lo = np.zeros(half - 1, dtype=np.int64)           # F(lo) <= p < F(hi), as bits
    hi = np.full(half - 1, _HALF_BITS, dtype=np.int64)
    norm = 2.0 * _h(np.array([0.5]), alpha)[0]
    while np.any(hi - lo > 1):
        mid = lo + (hi - lo) // 2
        below = beta_cdf(np.frombuffer(mid, np.float64), alpha, norm) <= p
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    x_lo, x_hi = np.frombuffer(lo, np.float64), np.frombuffer(hi, np.float64)
    nearer_hi = np.abs(beta_cdf(x_hi, alpha, norm) - p) < np.abs(beta_cdf(x_lo, alpha, norm) - p)
    lower = np.where(nearer_hi, x_hi, x_lo)
    q = np.empty(k + 1, dtype=np.float64)
    q[0], q[half], q[k] = 0.0, 0.5, 1.0
    q[1:half] = lower
    q[half + 1:k] = 1.0 - lower[::-1]
    return bytes(q)


def beta_quantile_table(alpha):
    """``Q`` (K + 1 float64 values, read-only): ``Q[k]`` is the ``k/K`` quantile of
    Beta(alpha, alpha), the same bits on every machine (see the module docstring).
    ``alpha`` is a positive finite number (the callers check its range)."""
    return np.frombuffer(_table(float(alpha)), np.float64)   # (read-only: bytes)
