"""The weight average's update ``e = d * e + a * w`` in one pass, compiled with Numba.

The plain array code does it in three (``e *= d``, a temporary ``a * w``, ``e += t``),
reading and writing every parameter a second time: 6% of the course net's step on the
2-core machine, this pass 2% (:mod:`fcgpu.solver_ema`). Each element is computed as
the plain code computes it, ``round(round(d * e) + round(a * w))`` (Numba contracts no
multiply-add into an FMA unless told to), so the two agree bit for bit, subnormals
included.
"""
from __future__ import annotations

from numba import njit, prange

__all__ = ["ema_update", "PARALLEL_FROM"]

# arrays of at least this many elements are split between the cores; below it the
# start of a parallel loop costs more than it saves (the biases, gamma and beta)
PARALLEL_FROM = 1 << 15


@njit(cache=True)
def _ema(e, w, d, a):
    for i in range(e.size):
        e[i] = d * e[i] + a * w[i]


@njit(parallel=True, cache=True)
def _ema_parallel(e, w, d, a):
    for i in prange(e.size):
        e[i] = d * e[i] + a * w[i]


def ema_update(e, w, d, a):
    """``e = d * e + a * w`` in place; ``e`` and ``w`` C-contiguous NumPy arrays of one
    float dtype and shape, ``d`` and ``a`` scalars of that dtype."""
    e1, w1 = e.reshape(-1), w.reshape(-1)
    (_ema_parallel if e1.size >= PARALLEL_FROM else _ema)(e1, w1, d, a)
