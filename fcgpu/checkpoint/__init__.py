"""Checkpoints: safetensors files that hold arrays and plain data, never code.

Three concerns, one module each:

* :mod:`~fcgpu.checkpoint.codec`: the file format (a Solver state to safetensors bytes
  and back, with a SHA-256 digest of the contents; integers beyond 2**53 tagged);
* :mod:`~fcgpu.checkpoint.schema`: the saved state's schema (:func:`check_state`) and
  the one place that decides whether a state may continue a run
  (:func:`check_resume`);
* :mod:`~fcgpu.checkpoint.legacy`: the pickles of earlier fcgpu versions, refused when
  read and converted on request (:func:`convert_pickle`).

:func:`load` checks a file layer by layer (size, header, array table, metadata,
digest, then the state's structure); given the model, :func:`check_state` also checks
that the state fits it. Every problem raises :class:`CheckpointError`, a ``ValueError``
whose one-line message names the file and what is wrong with it. Nothing is written
while reading.
"""
from __future__ import annotations

from ..errors import CheckpointError
from .codec import FORMAT, VERSION, decode, digest, encode, load, save
from .legacy import convert_pickle
from .schema import SOLVER_STATE, check_resume, check_state, check_train_config

__all__ = ["CheckpointError", "FORMAT", "VERSION", "SOLVER_STATE", "encode", "save",
           "decode", "load", "digest", "check_state", "check_resume", "check_train_config",
           "convert_pickle"]
