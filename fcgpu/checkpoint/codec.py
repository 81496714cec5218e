"""The checkpoint file format: a Solver state to safetensors bytes and back.

A checkpoint is one `safetensors <https://github.com/huggingface/safetensors>`_
file: an 8-byte header length, a JSON header giving each array's dtype, shape and
byte range, then the raw little-endian array bytes. Reading one parses JSON and
copies bytes; nothing named in the file is ever called. fcgpu's own data go in the
header's string metadata:

* ``format`` = ``"fcgpu-checkpoint"`` and ``format_version`` = ``"1"``;
* ``state``: the Solver state (:meth:`fcgpu.solver.Solver.state_dict`) as JSON, each
  array replaced by ``{"$array": NAME}`` (NAME: the safetensors tensor that holds
  it) and each integer beyond 2**53 by ``{"$int": "DIGITS"}`` (other JSON readers
  round such numbers; the generator state is made of them);
* ``sha256``: :func:`digest` of ``state`` and of every array (name, dtype, shape and
  bytes), so that a damaged byte anywhere in the contents is reported instead of
  being trained on.

:func:`decode` checks a file layer by layer (size, header, array table, metadata,
digest, then the state's structure with :func:`fcgpu.checkpoint.schema.check_state`).
Every problem raises :class:`CheckpointError`. Nothing is written while reading.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct

import numpy as np

from ..atomic import atomic_write_bytes
from ..backend import asnumpy
from ..errors import CheckpointError, CheckpointUnreadable
from ..safepickle import is_pickle
from .schema import MAX_DEPTH, check_state, need

__all__ = ["FORMAT", "VERSION", "MAX_HEADER", "EXACT_INT", "PICKLE_PROBLEM", "encode", "save",
           "decode", "load", "digest"]

FORMAT = "fcgpu-checkpoint"
VERSION = 1
MAX_HEADER = 100 << 20           # safetensors' own limit on the JSON header
EXACT_INT = 2 ** 53              # larger integers are stored as {"$int": "DIGITS"}
_INT_TEXT = re.compile(r"-?[0-9]{1,60}\Z")

# safetensors dtype codes for the NumPy dtypes a checkpoint may hold
_CODES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "|i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "|u1", "BOOL": "|b1"}
_DTYPES = {code: np.dtype(s) for code, s in _CODES.items()}
_CODE_OF = {dt: code for code, dt in _DTYPES.items()}

PICKLE_PROBLEM = (
    "it is a pickle, the checkpoint format of earlier fcgpu versions. Loading a pickle can "
    "run any code it names, so fcgpu no longer reads them. If you trust where this file "
    "came from, convert it once with: fcgpu convert-checkpoint --trust OLD NEW")


# --------------------------------------------------------------------- writing

def _dtype_code(dtype):
    return _CODE_OF.get(np.dtype(dtype).newbyteorder("<"))


def _to_tree(obj, path, tensors):
    """``obj`` as JSON-ready data; arrays go to ``tensors`` (host, little-endian)."""
    where = "/".join(path) or "the state"
    if len(path) > MAX_DEPTH:
        raise CheckpointError("cannot store %s: nested too deeply" % where)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k in ("$array", "$int"):
                raise CheckpointError("cannot store %s: key %r is not a plain string" % (where, k))
            out[k] = _to_tree(v, path + (k,), tensors)
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_tree(v, path + (str(i),), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        obj = obj.item()  # NumPy scalars are stored as the Python numbers they equal
    if obj is None or isinstance(obj, (bool, str, float)):
        return obj
    if isinstance(obj, int):
        return obj if abs(obj) <= EXACT_INT else {"$int": str(obj)}
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        a = asnumpy(obj)  # CuPy arrays: a host copy
        code = _dtype_code(a.dtype)
        if code is None:
            raise CheckpointError("cannot store %s: arrays of dtype %s are not supported"
                                  % (where, a.dtype))
        a = np.ascontiguousarray(a, dtype=_DTYPES[code])
        name, k = where, 1
        while name in tensors:
            k += 1
            name = "%s#%d" % (where, k)
        tensors[name] = a
        return {"$array": name}
    raise CheckpointError("cannot store %s: a %s is neither an array nor plain data"
                          % (where, type(obj).__name__))


def digest(text, arrays):
    h = hashlib.sha256(b"fcgpu-checkpoint-1\0")
    h.update(text.encode("utf-8", "surrogatepass"))
    for name in sorted(arrays):
        a = arrays[name]
        h.update(("\0%s\0%s\0%s\0" % (name, _dtype_code(a.dtype), list(a.shape)))
                 .encode("utf-8", "surrogatepass"))
        h.update(np.ascontiguousarray(a))
    return h.hexdigest()


def encode(state):
    """``state`` (dicts, lists, arrays, numbers, strings, None) as checkpoint bytes."""
    from safetensors.numpy import save as st_save
    tensors = {}
    text = json.dumps(_to_tree(state, (), tensors), separators=(",", ":"))
    meta = {"format": FORMAT, "format_version": str(VERSION), "state": text,
            "sha256": digest(text, tensors)}
    return st_save(tensors, metadata=meta)


def save(state, path):
    """Write ``state`` to ``path`` atomically (the old file or the new one, never
    a mixture, even if the process is killed mid-way)."""
    atomic_write_bytes(encode(state), path)


# --------------------------------------------------------------------- reading

def _json(text, what):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # (incl. UnicodeDecodeError)
        raise CheckpointError("%s is not valid JSON (%s)" % (what, e)) from None


def _check_layout(blob):
    """The safetensors header of ``blob`` after checking it against the file's
    size; raises on anything that is not a whole safetensors file."""
    size = len(blob)
    need(size > 0, "the file is empty")
    n = struct.unpack_from("<Q", blob)[0] if size >= 8 else None
    if n is None or size < 9 or blob[8:9] != b"{" or n > MAX_HEADER:
        if is_pickle(blob[:2]):
            raise CheckpointError(PICKLE_PROBLEM)
        if blob[:4] == b"PK\x03\x04":
            raise CheckpointError("it is a zip archive (a PyTorch or .npz file?), not an "
                                  "fcgpu checkpoint (a safetensors file)")
        need(n is None or n <= MAX_HEADER or blob[8:9] != b"{",
             "the safetensors header claims %d bytes, more than the format allows", n)
        raise CheckpointError("it is not an fcgpu checkpoint: %s" % (
            "%d bytes is too short for a safetensors file" % size if size < 9 else
            "it is not a safetensors file (it starts with %r)" % bytes(blob[:12])))
    need(8 + n <= size, "the file is truncated: its header claims %d bytes, the file has "
         "%d in all", n, size)
    header = _json(bytes(blob[8:8 + n]), "the safetensors header")
    need(isinstance(header, dict), "the safetensors header is not a JSON object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        need(isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"},
             "array %r: its header entry is malformed", name)
        dtype, shape, span = info["dtype"], info["shape"], info["data_offsets"]
        need(isinstance(dtype, str) and dtype in _DTYPES,
             "array %r: unsupported dtype %r", name, dtype)
        need(isinstance(shape, list) and len(shape) <= 32
             and all(type(d) is int and d >= 0 for d in shape),
             "array %r: invalid shape %r", name, shape)
        need(isinstance(span, list) and len(span) == 2
             and all(type(o) is int and o >= 0 for o in span) and span[0] <= span[1],
             "array %r: invalid byte range %r", name, span)
        need(span[1] - span[0] == math.prod(shape) * _DTYPES[dtype].itemsize,
             "array %r: its byte range %r does not hold a %s array of shape %s",
             name, span, dtype, shape)
        spans.append((span[0], span[1], name))
    end = 0
    for start, stop, name in sorted(spans):
        need(start == end, "array %r: its bytes %s at %d (expected %d)", name,
             "overlap another array's" if start < end else "leave a gap", start, end)
        end = stop
    need(size >= 8 + n + end, "the file is truncated: %d bytes, the header describes %d",
         size, 8 + n + end)
    need(size == 8 + n + end, "%d unexpected bytes follow the arrays", size - 8 - n - end)
    return header


def _from_tree(obj, arrays, used, depth=0):
    need(depth <= MAX_DEPTH, "the state is nested too deeply")
    if isinstance(obj, dict):
        if "$array" in obj:
            name = obj["$array"]
            need(len(obj) == 1 and isinstance(name, str) and name in arrays
                 and name not in used, "the state refers to array %r wrongly", name)
            used.add(name)
            return np.array(arrays[name])  # a writable copy of the read-only view
        if "$int" in obj:
            text = obj["$int"]
            need(len(obj) == 1 and isinstance(text, str) and _INT_TEXT.match(text),
                 "the state holds a malformed integer %r", text)
            return int(text)
        return {k: _from_tree(v, arrays, used, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_tree(v, arrays, used, depth + 1) for v in obj]
    return obj


def decode(blob, path=None):
    """The Solver state held by checkpoint bytes ``blob``, after checking the file's
    layout, digest and the state's structure (not yet against a model: see
    :func:`check_state`). Raises :class:`CheckpointError` naming ``path``."""
    try:
        return _decode(blob)
    except CheckpointError as e:
        raise CheckpointError(e.problem, path) from e.__cause__


def _decode(blob):
    from safetensors.numpy import load as st_load
    header = _check_layout(blob)
    meta = header.get("__metadata__")
    need(isinstance(meta, dict) and "format" in meta,
         "it is a safetensors file without fcgpu's metadata, not an fcgpu checkpoint")
    need(meta["format"] == FORMAT, "it is a safetensors file of another kind (format %r), "
         "not an fcgpu checkpoint", meta["format"])
    version = meta.get("format_version")
    need(isinstance(version, str) and version.isdigit() and len(version) < 6,
         "its format version %r is not a number", version)
    need(int(version) <= VERSION, "it was written by a newer fcgpu (checkpoint format "
         "version %s; this fcgpu reads version %d): upgrade fcgpu", version, VERSION)
    need(int(version) == VERSION, "unknown checkpoint format version %s", version)
    for key in ("state", "sha256"):
        need(isinstance(meta.get(key), str), "its metadata lacks %r", key)
    try:
        arrays = st_load(bytes(blob))
    except Exception as e:  # the parser's checks duplicate ours; report any it adds
        raise CheckpointError("it is not a valid safetensors file (%s: %s)"
                              % (type(e).__name__, e)) from e
    need(digest(meta["state"], arrays) == meta["sha256"],
         "its contents do not match their SHA-256 digest: the file is corrupt (a byte "
         "changed after it was written); use another copy")
    used = set()
    state = _from_tree(_json(meta["state"], "the stored state"), arrays, used)
    unused = sorted(set(arrays) - used)
    need(not unused, "it holds arrays the state does not use (%s)", ", ".join(unused[:5]))
    check_state(state)
    return state


def load(path):
    """Read and check the checkpoint at ``path``; returns the Solver state (host
    arrays and plain data). The file is only read."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise CheckpointUnreadable("cannot read it (%s)" % (e.strerror or e), path) from e
    return decode(blob, path)
