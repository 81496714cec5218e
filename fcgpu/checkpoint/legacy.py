"""Checkpoints of earlier fcgpu versions: pickles, converted only on request.

Earlier fcgpu versions pickled their checkpoints; :func:`fcgpu.checkpoint.load`
recognizes those files by their first two bytes and refuses them unread.
:func:`convert_pickle` (``fcgpu convert-checkpoint --trust OLD NEW``) rewrites one that
the user trusts in the current format.
"""
from __future__ import annotations

import os

from ..atomic import atomic_write_bytes
from ..errors import CheckpointError, CheckpointUnreadable
from ..safepickle import is_pickle, load_numpy_pickle
from .codec import decode, encode

__all__ = ["convert_pickle"]


def convert_pickle(old, new):
    """Rewrite ``old``, a checkpoint pickled by an earlier fcgpu, as a checkpoint in
    this format at ``new`` (atomically); returns the state.

    Only for files the user trusts. Even so, the pickle is read with an unpickler
    that rebuilds NumPy arrays and plain Python values only and refuses any other
    callable the file names; ``old`` is not modified.
    """
    old, new = os.fspath(old), os.fspath(new)
    if os.path.exists(new) and os.path.samefile(old, new):
        raise CheckpointError("NEW is the same file as OLD; write the converted checkpoint "
                              "to another path (OLD is kept unchanged)", old)
    try:
        f = open(old, "rb")
    except OSError as e:
        raise CheckpointUnreadable("cannot read it (%s)" % (e.strerror or e), old) from e
    with f:
        head = f.read(2)
        if not is_pickle(head):
            try:
                decode(head + f.read())
                problem = "it is already a checkpoint in the current format"
            except CheckpointError:
                problem = "it is not a pickle checkpoint (it does not start like a pickle)"
            raise CheckpointError(problem, old)
        f.seek(0)
        try:
            state = load_numpy_pickle(f.read())
        except Exception as e:  # unpickling can raise nearly anything on bad input
            raise CheckpointError("cannot unpickle it (%s: %s)" % (type(e).__name__, e),
                                  old) from e
    if isinstance(state, dict):
        state.setdefault("best_bn", [])       # (absent in the first fcgpu checkpoints)
        state.setdefault("epoch_seconds", [])
    try:
        blob = encode(state)
        decode(blob)  # the same checks as a resume (the model aside)
    except CheckpointError as e:
        raise CheckpointError("cannot convert it: " + e.problem, old) from e
    atomic_write_bytes(blob, new)
    return state
