"""What a kernel case is, for every op's builders (:mod:`.kernels`, :mod:`.gather`)."""
from __future__ import annotations

import numpy as np

TILE = 1 << 22  # large inputs repeat a random block of this many elements (fast to make)


def tiled(block, n):
    """``n`` elements of ``block`` repeated (a 1-D array of block's dtype)."""
    out = np.empty(n, dtype=block.dtype)
    full = n // block.size * block.size
    out[:full].reshape(-1, block.size)[...] = block
    out[full:] = block[:n - full]
    return out


class SkipCase(Exception):
    """This variant cannot run this case; the message says why."""


class Case:
    """``fn(i)`` runs one call on input set ``i % k``; ``call()`` runs the next one.

    ``inputs``, where a builder sets it, names the arrays the calls read (so that a
    test can compute what a call must return)."""

    def __init__(self, fn, k, label, inputs=None):
        self.fn = fn
        self.k = k
        self.label = label
        self.inputs = inputs
        self.i = 0

    def call(self):
        i = self.i
        self.i = (i + 1) % self.k
        return self.fn(i)
