"""The weight average's update ``e = d * e + a * w`` in one pass, compiled with Numba.

The plain array code does it in three passes (``e *= d``, a temporary ``a * w``,
``e += t``): 1.0 ms, 3.2-3.8% of the course net's step on the 2-core machine; this
pass 0.42-0.54 ms alone, about 0.9-1.0 ms inside the step (the step's own data have
pushed the average out of the caches: reading and writing its 8 MB is the floor; the
same update fused into Adam's pass cost as much), 2.4-2.7% of the step (docs/presets.md).
One thread: the start of a parallel loop costs more than the second core saves on a
pass this short and memory-bound (measured). Each element is computed as the plain
code computes it, ``round(round(d * e) + round(a * w))`` (Numba contracts no
multiply-add into an FMA unless told to), so the two agree bit for bit, subnormals
included.
"""
from __future__ import annotations

from numba import njit

__all__ = ["ema_update"]


@njit(cache=True)
def _ema(e, w, d, a):
    for i in range(e.size):
        e[i] = d * e[i] + a * w[i]


def ema_update(e, w, d, a):
    """``e = d * e + a * w`` in place; ``e`` and ``w`` C-contiguous NumPy arrays of one
    float dtype and shape, ``d`` and ``a`` scalars of that dtype."""
    _ema(e.reshape(-1), w.reshape(-1), d, a)
