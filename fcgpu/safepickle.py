"""Pickles that may hold NumPy array data and plain Python values, nothing else.

A pickle names the callables that rebuild its objects, and ``pickle.load`` calls
them: a file can run any code it likes while it is read. :class:`NumpyUnpickler`
resolves only the few globals that NumPy arrays, dtypes and scalars need and
refuses every other one, so reading cannot execute anything beyond them.
:func:`load_numpy_pickle` adds a scan of the opcodes first (``pickletools``, which
runs nothing): CPython's C unpickler grows its memo table to the largest index a
PUT names, so four damaged bytes can make it allocate and clear gigabytes.

fcgpu reads two kinds of pickle: CIFAR-10 batch files (:mod:`fcgpu.data`) and, on
explicit request, checkpoints written by earlier versions of fcgpu
(``fcgpu convert-checkpoint``). It writes none.
"""
from __future__ import annotations

import codecs
import io
import pickle
import pickletools
import warnings

import numpy as np

__all__ = ["NumpyUnpickler", "load_numpy_pickle", "is_pickle"]

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
    allowed[("_codecs", "encode")] = _latin1  # how protocol 2 spells bytes
    return allowed


def _latin1(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol 2 uses it for bytes (latin-1), and no other
    codec (some, such as punycode, take quadratic time)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode(..., {encoding!r}) "
                                     "(bytes in a protocol-2 pickle are latin-1)")
    return codecs.encode(text, encoding, errors)


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


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def load_numpy_pickle(data: bytes, encoding="ASCII"):
    """Unpickle ``data`` with :class:`NumpyUnpickler`, after checking that no PUT
    names a memo index beyond the number of opcodes before it (a real pickle
    memoizes objects it has made, numbered from 0). Raises what unpickling raises
    on bad input (``pickle.UnpicklingError``, ``ValueError`` and others)."""
    with warnings.catch_warnings():  # (genops decodes STRING args, warning on bad escapes)
        warnings.simplefilter("ignore", DeprecationWarning)
        for count, (op, arg, pos) in enumerate(pickletools.genops(data)):
            if op.name in _MEMO_PUTS and arg > count:
                raise pickle.UnpicklingError(f"memo index {arg} at byte {pos} is larger "
                                             "than the pickle could need (damaged file)")
    return NumpyUnpickler(io.BytesIO(data), encoding=encoding).load()


def is_pickle(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like a pickle of protocol 2
    or later (``PROTO`` opcode), which is what Python 3 writes; nothing is read
    beyond the two bytes."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL
