"""Checkpoints: safetensors files that hold arrays and plain data, never code.

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
* ``sha256``: a digest of ``state`` and of every array (name, dtype, shape and
  bytes), so that a damaged byte anywhere in the contents is reported instead of
  being trained on.

:func:`load` checks a file layer by layer (size, header, array table, metadata,
digest, then the state's structure with :func:`check_state`); given the model,
:func:`check_state` also checks that the state fits it. Every problem raises
:class:`CheckpointError`, a ``ValueError`` whose one-line message names the file and
what is wrong with it. Nothing is written while reading.

Earlier fcgpu versions pickled their checkpoints; those files are recognized by
their first two bytes and refused unread. :func:`convert_pickle` (``fcgpu
convert-checkpoint --trust OLD NEW``) rewrites one that the user trusts.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import reprlib
import struct

import numpy as np

from .atomic import atomic_write_bytes
from .backend import asnumpy
from .errors import CheckpointError
from .safepickle import is_pickle, load_numpy_pickle

__all__ = ["CheckpointError", "FORMAT", "VERSION", "SOLVER_STATE", "encode", "save",
           "decode", "load", "check_state", "convert_pickle"]

FORMAT = "fcgpu-checkpoint"
VERSION = 1
SOLVER_STATE = "fcgpu-solver-1"  # the "format" entry of Solver.state_dict()
MAX_HEADER = 100 << 20           # safetensors' own limit on the JSON header
_MAX_DEPTH = 32                  # nesting of the state (it uses 4)
_EXACT_INT = 2 ** 53
_INT_TEXT = re.compile(r"-?[0-9]{1,60}\Z")

# safetensors dtype codes for the NumPy dtypes a checkpoint may hold
_CODES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "|i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "|u1", "BOOL": "|b1"}
_DTYPES = {code: np.dtype(s) for code, s in _CODES.items()}
_CODE_OF = {dt: code for code, dt in _DTYPES.items()}

# optimizer-state arrays of the built-in rules: shaped like their parameter
_STATE_ARRAYS = ("m", "v", "velocity", "cache")
# hyperparameters of the built-in rules: numbers
_HYPER = ("learning_rate", "momentum", "decay_rate", "epsilon", "beta1", "beta2")
_BN_KEYS = ("mode", "eps", "momentum", "running_mean", "running_var")
_SOLVER_KEYS = ("format", "model", "optim_configs", "update_rule", "lr_decay", "batch_size",
                "num_train_samples", "num_val_samples", "epoch", "rng", "best_val_acc",
                "best_params", "best_bn", "loss_history", "train_acc_history",
                "val_acc_history", "epoch_seconds")
_OPTIONAL_KEYS = ("train_config",  # written by `fcgpu train`
                  "settings")      # augmentation, schedule, label smoothing (absent: none)
_SETTINGS = {"augment": ("none", "flip", "crop"), "lr_schedule": (None, "step", "cosine",
                                                                  "onecycle")}

_PICKLE = ("it is a pickle, the checkpoint format of earlier fcgpu versions. Loading a "
           "pickle can run any code it names, so fcgpu no longer reads them. If you trust "
           "where this file came from, convert it once with: fcgpu convert-checkpoint "
           "--trust OLD NEW")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 4


class _Short:
    """A value quoted in a message, cut short: files may hold anything."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return _REPR.repr(self.value)

    def __str__(self):
        text = str(self.value)
        return text if len(text) <= 80 else text[:77] + "..."


def _need(ok, problem, *args):
    if not ok:
        args = tuple(a if isinstance(a, (int, float)) else _Short(a) for a in args)
        raise CheckpointError(problem % args if args else problem)


# --------------------------------------------------------------------- writing

def _dtype_code(dtype):
    return _CODE_OF.get(np.dtype(dtype).newbyteorder("<"))


def _to_tree(obj, path, tensors):
    """``obj`` as JSON-ready data; arrays go to ``tensors`` (host, little-endian)."""
    where = "/".join(path) or "the state"
    if len(path) > _MAX_DEPTH:
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
        return obj if abs(obj) <= _EXACT_INT else {"$int": str(obj)}
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


def _digest(text, arrays):
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
            "sha256": _digest(text, tensors)}
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
    _need(size > 0, "the file is empty")
    n = struct.unpack_from("<Q", blob)[0] if size >= 8 else None
    if n is None or size < 9 or blob[8:9] != b"{" or n > MAX_HEADER:
        if is_pickle(blob[:2]):
            raise CheckpointError(_PICKLE)
        if blob[:4] == b"PK\x03\x04":
            raise CheckpointError("it is a zip archive (a PyTorch or .npz file?), not an "
                                  "fcgpu checkpoint (a safetensors file)")
        _need(n is None or n <= MAX_HEADER or blob[8:9] != b"{",
              "the safetensors header claims %d bytes, more than the format allows", n)
        raise CheckpointError("it is not an fcgpu checkpoint: %s" % (
            "%d bytes is too short for a safetensors file" % size if size < 9 else
            "it is not a safetensors file (it starts with %r)" % bytes(blob[:12])))
    _need(8 + n <= size, "the file is truncated: its header claims %d bytes, the file has "
          "%d in all", n, size)
    header = _json(bytes(blob[8:8 + n]), "the safetensors header")
    _need(isinstance(header, dict), "the safetensors header is not a JSON object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        _need(isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"},
              "array %r: its header entry is malformed", name)
        dtype, shape, span = info["dtype"], info["shape"], info["data_offsets"]
        _need(isinstance(dtype, str) and dtype in _DTYPES,
              "array %r: unsupported dtype %r", name, dtype)
        _need(isinstance(shape, list) and len(shape) <= 32
              and all(type(d) is int and d >= 0 for d in shape),
              "array %r: invalid shape %r", name, shape)
        _need(isinstance(span, list) and len(span) == 2
              and all(type(o) is int and o >= 0 for o in span) and span[0] <= span[1],
              "array %r: invalid byte range %r", name, span)
        _need(span[1] - span[0] == math.prod(shape) * _DTYPES[dtype].itemsize,
              "array %r: its byte range %r does not hold a %s array of shape %s",
              name, span, dtype, shape)
        spans.append((span[0], span[1], name))
    end = 0
    for start, stop, name in sorted(spans):
        _need(start == end, "array %r: its bytes %s at %d (expected %d)", name,
              "overlap another array's" if start < end else "leave a gap", start, end)
        end = stop
    _need(size >= 8 + n + end, "the file is truncated: %d bytes, the header describes %d",
          size, 8 + n + end)
    _need(size == 8 + n + end, "%d unexpected bytes follow the arrays", size - 8 - n - end)
    return header


def _from_tree(obj, arrays, used, depth=0):
    _need(depth <= _MAX_DEPTH, "the state is nested too deeply")
    if isinstance(obj, dict):
        if "$array" in obj:
            name = obj["$array"]
            _need(len(obj) == 1 and isinstance(name, str) and name in arrays
                  and name not in used, "the state refers to array %r wrongly", name)
            used.add(name)
            return np.array(arrays[name])  # a writable copy of the read-only view
        if "$int" in obj:
            text = obj["$int"]
            _need(len(obj) == 1 and isinstance(text, str) and _INT_TEXT.match(text),
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
    _need(isinstance(meta, dict) and "format" in meta,
          "it is a safetensors file without fcgpu's metadata, not an fcgpu checkpoint")
    _need(meta["format"] == FORMAT, "it is a safetensors file of another kind (format %r), "
          "not an fcgpu checkpoint", meta["format"])
    version = meta.get("format_version")
    _need(isinstance(version, str) and version.isdigit() and len(version) < 6,
          "its format version %r is not a number", version)
    _need(int(version) <= VERSION, "it was written by a newer fcgpu (checkpoint format "
          "version %s; this fcgpu reads version %d): upgrade fcgpu", version, VERSION)
    _need(int(version) == VERSION, "unknown checkpoint format version %s", version)
    for key in ("state", "sha256"):
        _need(isinstance(meta.get(key), str), "its metadata lacks %r", key)
    try:
        arrays = st_load(bytes(blob))
    except Exception as e:  # the parser's checks duplicate ours; report any it adds
        raise CheckpointError("it is not a valid safetensors file (%s: %s)"
                              % (type(e).__name__, e)) from e
    _need(_digest(meta["state"], arrays) == meta["sha256"],
          "its contents do not match their SHA-256 digest: the file is corrupt (a byte "
          "changed after it was written); use another copy")
    used = set()
    state = _from_tree(_json(meta["state"], "the stored state"), arrays, used)
    unused = sorted(set(arrays) - used)
    _need(not unused, "it holds arrays the state does not use (%s)", ", ".join(unused[:5]))
    check_state(state)
    return state


def load(path):
    """Read and check the checkpoint at ``path``; returns the Solver state (host
    arrays and plain data). The file is only read."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    return decode(blob, path)


# ------------------------------------------------------------------ validation

def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _finite(x):
    return _is_real(x) and math.isfinite(x)


def _array(a, what, shape=None, dtype=None, floating=True):
    _need(isinstance(a, np.ndarray), "%s is a %s, not an array", what, type(a).__name__)
    if floating:
        _need(a.dtype.kind == "f", "%s has dtype %s, not a floating-point one", what, a.dtype)
    _need(shape is None or a.shape == tuple(shape), "%s has shape %s; this model's is %s",
          what, a.shape, None if shape is None else tuple(shape))
    _need(dtype is None or a.dtype == dtype, "%s has dtype %s; this model's is %s",
          what, a.dtype, dtype)
    if a.dtype.kind in "fc":
        _need(bool(np.isfinite(a).all()), "%s holds NaN or inf", what)


def _same_names(got, want, what):
    _need(isinstance(got, dict), "%s are a %s, not a dict", what, type(got).__name__)
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    _need(not missing and not extra, "%s do not match this model: %s", what, "; ".join(
        s for s in ("missing " + ", ".join(map(str, missing)) if missing else "",
                    "unexpected " + ", ".join(map(str, extra)) if extra else "") if s))


def _model_ref(state_params, model):
    """``{name: (shape, dtype)}`` of the parameters the state must match."""
    if model is None:
        _need(isinstance(state_params, dict) and state_params,
              "the model parameters are missing")
        for k, a in state_params.items():
            _array(a, "model parameter %s" % k)
        return {k: (a.shape, a.dtype) for k, a in state_params.items()}
    params = model.params
    dtype = getattr(model, "dtype", None)
    return {k: (tuple(v.shape), np.dtype(dtype if dtype is not None else v.dtype))
            for k, v in params.items()}


def _check_bn(bn, what, widths, model_dtype, only_running=False):
    _need(isinstance(bn, list), "%s is a %s, not a list", what, type(bn).__name__)
    if widths is not None:
        _need(len(bn) == len(widths), "%s has %d layers; this model has %d", what, len(bn),
              len(widths))
    for i, layer in enumerate(bn):
        where = "%s[%d]" % (what, i)
        _need(isinstance(layer, dict), "%s is not a dict", where)
        allowed = _BN_KEYS[3:] if only_running else _BN_KEYS
        bad = [k for k in layer if k not in allowed]
        _need(not bad, "%s has unexpected entries %s", where, bad)
        _need(layer.get("mode", "train") in ("train", "test"), "%s mode %r", where,
              layer.get("mode"))
        for k in ("eps", "momentum"):
            if k in layer:
                _need(_finite(layer[k]), "%s %s is %r, not a finite number", where, k, layer[k])
        _need(layer.get("eps", 1) > 0, "%s eps must be positive", where)
        for k in ("running_mean", "running_var"):
            if k in layer:
                width = widths[i] if widths is not None else None
                _array(layer[k], "%s %s" % (where, k), None if width is None else (width,),
                       model_dtype)
                _need(layer[k].ndim == 1, "%s %s is not 1-D", where, k)
        if "running_var" in layer:
            _need(bool((layer["running_var"] >= 0).all()), "%s running_var is negative", where)


def _check_rng(rng):
    _need(isinstance(rng, dict) and rng.get("bit_generator") == "PCG64",
          "the Solver's generator state is not a PCG64 state")
    inner = rng.get("state")
    _need(set(rng) == {"bit_generator", "state", "has_uint32", "uinteger"}
          and isinstance(inner, dict) and set(inner) == {"state", "inc"}
          and all(_is_int(inner[k]) and 0 <= inner[k] < 2 ** 128 for k in inner)
          and rng["has_uint32"] in (0, 1) and _is_int(rng["has_uint32"])
          and _is_int(rng["uinteger"]) and 0 <= rng["uinteger"] < 2 ** 32,
          "the Solver's generator state is malformed")
    bitgen = np.random.PCG64()
    bitgen.state = rng
    _need(bitgen.state == rng, "the Solver's generator state does not round-trip")


def _check_config(config, what, shape, dtype):
    _need(isinstance(config, dict), "%s is a %s, not a dict", what, type(config).__name__)
    for k, v in config.items():
        where = "%s[%r]" % (what, k)
        if isinstance(v, np.ndarray):
            if k in _STATE_ARRAYS:
                _array(v, where, shape, dtype)
            else:
                _array(v, where, floating=False)
        else:
            _need(v is None or isinstance(v, (bool, str)) or _finite(v),
                  "%s is %r, not an array or a finite number", where, v)
    for k in _HYPER:
        if k in config:
            _need(_finite(config[k]) and config[k] >= 0, "%s %s is %r, not a finite number "
                  ">= 0", what, k, config[k])
    for k, top in (("beta1", 1), ("beta2", 1), ("decay_rate", 1), ("momentum", 1)):
        if k in config:  # (Adam divides by 1 - beta**t)
            _need(config[k] < top or (config[k] == top and not k.startswith("beta")),
                  "%s %s is %r, outside [0, 1%s", what, k, config[k],
                  ")" if k.startswith("beta") else "]")
    if "t" in config:
        _need(_is_int(config["t"]) and 0 <= config["t"] < 2 ** 63,
              "%s t (Adam's step) is %r", what, config["t"])


def check_state(state, model=None, update_rule=None):
    """Check a Solver state: its structure and values always; with ``model``, that
    its parameters, batchnorm statistics and optimizer state fit that model (names,
    shapes, dtype); with ``update_rule`` (a rule's name), that it was written by
    the same rule. Raises :class:`CheckpointError` naming the first problem."""
    _need(isinstance(state, dict), "the state is a %s, not a dict", type(state).__name__)
    _need(state.get("format") == SOLVER_STATE, "it holds no fcgpu Solver state (format %r)",
          state.get("format"))
    missing = [k for k in _SOLVER_KEYS if k not in state]
    extra = [k for k in state if k not in _SOLVER_KEYS + _OPTIONAL_KEYS]
    _need(not missing, "the state lacks %s", ", ".join(missing))
    _need(not extra, "the state has unknown entries %s", ", ".join(map(str, extra)))

    m = state["model"]
    _need(isinstance(m, dict) and "params" in m, "the state has no model parameters")
    bad = [k for k in m if k not in ("params", "bn_params", "dropout_key", "dropout_step")]
    _need(not bad, "the model state has unknown entries %s", ", ".join(map(str, bad)))
    ref = _model_ref(m["params"], model)
    _same_names(m["params"], ref, "the model parameters")
    for k, (shape, dtype) in ref.items():
        _array(m["params"][k], "model parameter %s" % k, shape, dtype)
    dtype = next(iter(ref.values()))[1] if ref else None

    widths = None
    if model is not None and hasattr(model, "bn_params"):
        widths = [ref["gamma%d" % (i + 1)][0][0] if "gamma%d" % (i + 1) in ref else None
                  for i in range(len(model.bn_params))]
        _need(len(model.bn_params) == 0 or "bn_params" in m,
              "the state has no batchnorm statistics; this model uses batchnorm")
    if "bn_params" in m:
        _check_bn(m["bn_params"], "batchnorm layer", widths, dtype)
    if model is not None and hasattr(model, "dropout_key"):
        _need("dropout_key" in m and "dropout_step" in m,
              "the state has no dropout generator position")
    for k in ("dropout_key", "dropout_step"):
        if k in m:  # (Philox keys and streams are 64-bit: random.check_seed)
            _need(_is_int(m[k]) and 0 <= m[k] < 2 ** 64, "the model's %s is %r", k, m[k])
    if "dropout_step" in m and model is not None:
        layers = int(getattr(model, "num_layers", 1))
        _need(m["dropout_step"] * max(layers - 1, 1) + layers < 2 ** 64,
              "the model's dropout_step %d is past the last 64-bit stream", m["dropout_step"])

    _same_names(state["optim_configs"], ref, "the optimizer states")
    for k, (shape, dt) in ref.items():
        _check_config(state["optim_configs"][k], "optimizer state %s" % k, shape, dt)
    rule = state["update_rule"]
    _need(rule is None or isinstance(rule, str), "the update rule is %r", rule)
    _need(update_rule is None or rule is None or rule == update_rule,
          "it was written with update rule %r; this Solver uses %r", rule, update_rule)

    _need(_finite(state["lr_decay"]) and state["lr_decay"] > 0, "lr_decay is %r",
          state["lr_decay"])
    _need(_is_int(state["batch_size"]) and state["batch_size"] >= 1, "batch_size is %r",
          state["batch_size"])
    for k in ("num_train_samples", "num_val_samples"):
        _need(state[k] is None or (_is_int(state[k]) and state[k] >= 1), "%s is %r", k,
              state[k])
    _need(_is_int(state["epoch"]) and state["epoch"] >= 0, "the epoch is %r", state["epoch"])
    _check_rng(state["rng"])

    _need(_finite(state["best_val_acc"]) and 0 <= state["best_val_acc"] <= 1,
          "best_val_acc is %r", state["best_val_acc"])
    if state["best_params"]:
        _same_names(state["best_params"], ref, "the best parameters")
        for k, (shape, dt) in ref.items():
            _array(state["best_params"][k], "best parameter %s" % k, shape, dt)
    else:
        _need(state["best_params"] == {}, "the best parameters are %r",
              type(state["best_params"]).__name__)
    if state["best_bn"]:
        _check_bn(state["best_bn"], "best batchnorm layer",
                  widths if widths is not None else
                  [None] * len(m.get("bn_params", [])), dtype, only_running=True)
    else:
        _need(state["best_bn"] == [], "the best batchnorm statistics are a %s",
              type(state["best_bn"]).__name__)

    for k in ("loss_history", "train_acc_history", "val_acc_history", "epoch_seconds"):
        _need(isinstance(state[k], list), "%s is a %s, not a list", k, type(state[k]).__name__)
    _need(all(_is_real(v) for v in state["loss_history"]), "loss_history holds non-numbers")
    for k in ("train_acc_history", "val_acc_history"):
        _need(all(_finite(v) and 0 <= v <= 1 for v in state[k]),
              "%s holds values outside [0, 1]", k)
    _need(len(state["train_acc_history"]) == len(state["val_acc_history"]),
          "the train and validation accuracy histories differ in length")
    _need(all(_finite(v) and v >= 0 for v in state["epoch_seconds"]),
          "epoch_seconds holds invalid durations")
    _need(isinstance(state.get("train_config", {}), dict), "train_config is not a dict")
    if "settings" in state:
        _check_settings(state["settings"])


def _check_settings(s):
    keys = ("augment", "pad", "image_shape", "augment_seed", "mean", "lr_schedule",
            "lr_schedule_options", "label_smoothing")
    _need(isinstance(s, dict) and set(s) == set(keys), "the training settings are malformed")
    for k, allowed in _SETTINGS.items():
        _need(s[k] in allowed, "the training setting %s is %r", k, s[k])
    _need(_is_int(s["pad"]) and 0 <= s["pad"] < 2 ** 31, "the augmentation pad is %r", s["pad"])
    shape = s["image_shape"]
    _need(shape is None or (isinstance(shape, list) and len(shape) == 3
                            and all(_is_int(v) and 0 < v < 2 ** 31 for v in shape)),
          "the image_shape is %r", shape)
    _need(s["augment_seed"] is None or (_is_int(s["augment_seed"])
                                        and 0 <= s["augment_seed"] < 2 ** 64),
          "the augment_seed is %r", s["augment_seed"])
    _need(isinstance(s["mean"], bool), "the settings' mean flag is %r", s["mean"])
    opts = s["lr_schedule_options"]
    _need(isinstance(opts, dict) and all(isinstance(k, str) and (
        isinstance(v, str) or _finite(v)) for k, v in opts.items()),
        "the lr_schedule_options are malformed")
    _need(_finite(s["label_smoothing"]) and 0 <= s["label_smoothing"] < 1,
          "label_smoothing is %r", s["label_smoothing"])


# ---------------------------------------------------------------- old pickles

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
        raise CheckpointError("cannot read it (%s)" % (e.strerror or e), old) from None
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
