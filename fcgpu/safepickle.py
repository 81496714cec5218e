"""Pickles that may hold NumPy array data and plain Python values, nothing else.

A pickle names the callables that rebuild its objects, and ``pickle.load`` calls
them: a file can run any code it likes while it is read. :class:`NumpyUnpickler`
resolves only the few globals that NumPy arrays, dtypes and scalars need and
refuses every other one, so reading cannot execute anything beyond them.

fcgpu reads two kinds of pickle: CIFAR-10 batch files (:mod:`fcgpu.data`) and, on
explicit request, checkpoints written by earlier versions of fcgpu
(``fcgpu convert-checkpoint``). It writes none.
"""
from __future__ import annotations

import codecs
import pickle

import numpy as np

__all__ = ["NumpyUnpickler", "is_pickle"]

_allowed = None


def _numpy_globals() -> dict:
    """The only callables NumPy array data needs (found version-proof: NumPy 2
    moved ``numpy.core`` to ``numpy._core``, and pickles name either)."""
    rebuild = np.empty(0).__reduce__()[0]
    scalar = np.int64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = rebuild
        allowed[(f"{mod}.multiarray", "scalar")] = scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    allowed[("_codecs", "encode")] = codecs.encode  # how protocol 2 spells bytes
    return allowed


class NumpyUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only rebuilds NumPy arrays, dtypes and scalars
    (and the built-in containers and values pickle handles without globals)."""

    def find_class(self, module, name):
        global _allowed
        if _allowed is None:
            _allowed = _numpy_globals()
        try:
            return _allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (not NumPy array data)"
            ) from None


def is_pickle(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like a pickle of protocol 2
    or later (``PROTO`` opcode), which is what Python 3 writes; nothing is read
    beyond the two bytes."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL
