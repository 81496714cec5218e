"""The saved state's schema, and whether a state may continue a run.

A Solver state (:meth:`fcgpu.solver.Solver.state_dict`) is a dict of the entries in
:data:`SOLVER_KEYS` (plus the optional ones in :data:`OPTIONAL_KEYS`). Its optimizer
configs hold the update rules' hyperparameters, counters and state arrays, all as
:data:`fcgpu.optim.RULES` lists them; its training settings are checked with the ranges
of :data:`fcgpu.settings.SETTINGS`.

* :func:`check_state` checks a state's structure and values; given a model, that it
  fits the model; given an update rule's name, that it was written by that rule;
* :func:`check_resume` is the one place that decides whether a state may continue a
  run: :func:`check_state`, then the Solver's training settings, then (for ``fcgpu
  train``) every :class:`~fcgpu.train.TrainConfig` field that is not in
  :data:`fcgpu.settings.RESUME_EXEMPT`.

Every problem raises :class:`CheckpointError` with a one-line message.
"""
from __future__ import annotations

import math
import numbers
import reprlib

import numpy as np

from ..errors import CheckpointError
from ..optim import COUNTER_KEYS, HYPER_KEYS, STATE_KEYS
from ..settings import HYPERPARAMETERS, RESUME_EXEMPT, SETTINGS

__all__ = ["SOLVER_STATE", "SOLVER_KEYS", "OPTIONAL_KEYS", "SETTINGS_KEYS", "LATER_SETTINGS",
           "EMA_KEYS", "STATE_ARRAYS",
           "need", "Short", "check_state", "check_settings", "check_resume", "check_train_config",
           "default_settings"]

SOLVER_STATE = "fcgpu-solver-1"  # the "format" entry of Solver.state_dict()
MAX_DEPTH = 32                   # nesting of the state (it uses 4)

# optimizer-state arrays of the built-in rules: shaped like their parameter
STATE_ARRAYS = STATE_KEYS
_BN_KEYS = ("mode", "eps", "momentum", "running_mean", "running_var")
SOLVER_KEYS = ("format", "model", "optim_configs", "update_rule", "lr_decay", "batch_size",
               "num_train_samples", "num_val_samples", "epoch", "rng", "best_val_acc",
               "best_params", "best_bn", "loss_history", "train_acc_history",
               "val_acc_history", "epoch_seconds")
OPTIONAL_KEYS = ("train_config",  # written by `fcgpu train`
                 "settings",      # augmentation, schedule, label smoothing (absent: none)
                 "ema")           # the average of the weights (settings' ema_decay not None)
# the Solver's training settings (Solver._settings()), which a resume must share
SETTINGS_KEYS = ("augment", "pad", "image_shape", "augment_seed", "mean", "lr_schedule",
                 "lr_schedule_options", "label_smoothing", "ema_decay", "mix", "mix_alpha")
# settings added later, with the value a state written before them had
LATER_SETTINGS = {"ema_decay": None, "mix": "none", "mix_alpha": 1.0}
# the "ema" entry (fcgpu.solver_ema.WeightEMA.state_dict())
EMA_KEYS = ("decay", "updates", "params", "bn_params", "raw_val_acc_history")

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 4


class Short:
    """A value quoted in a message, cut short: files may hold anything."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return _REPR.repr(self.value)

    def __str__(self):
        text = str(self.value)
        return text if len(text) <= 80 else text[:77] + "..."


def need(ok, problem, *args):
    """Raise :class:`CheckpointError` ``problem % args`` unless ``ok`` (the values
    quoted are cut short)."""
    if not ok:
        args = tuple(a if isinstance(a, (int, float)) else Short(a) for a in args)
        raise CheckpointError(problem % args if args else problem)


# ------------------------------------------------------------------ values

def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _finite(x):
    return _is_real(x) and math.isfinite(x)


def _array(a, what, shape=None, dtype=None, floating=True):
    need(isinstance(a, np.ndarray), "%s is a %s, not an array", what, type(a).__name__)
    if floating:
        need(a.dtype.kind == "f", "%s has dtype %s, not a floating-point one", what, a.dtype)
    need(shape is None or a.shape == tuple(shape), "%s has shape %s; this model's is %s",
         what, a.shape, None if shape is None else tuple(shape))
    need(dtype is None or a.dtype == dtype, "%s has dtype %s; this model's is %s",
         what, a.dtype, dtype)
    if a.dtype.kind in "fc":
        need(bool(np.isfinite(a).all()), "%s holds NaN or inf", what)


def _same_names(got, want, what):
    need(isinstance(got, dict), "%s are a %s, not a dict", what, type(got).__name__)
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    need(not missing and not extra, "%s do not match this model: %s", what, "; ".join(
        s for s in ("missing " + ", ".join(map(str, missing)) if missing else "",
                    "unexpected " + ", ".join(map(str, extra)) if extra else "") if s))


# ------------------------------------------------------------------ the parts

def _model_ref(state_params, model):
    """``{name: (shape, dtype)}`` of the parameters the state must match."""
    if model is None:
        need(isinstance(state_params, dict) and state_params,
             "the model parameters are missing")
        for k, a in state_params.items():
            _array(a, "model parameter %s" % k)
        return {k: (a.shape, a.dtype) for k, a in state_params.items()}
    params = model.params
    dtype = getattr(model, "dtype", None)
    return {k: (tuple(v.shape), np.dtype(dtype if dtype is not None else v.dtype))
            for k, v in params.items()}


def _check_bn(bn, what, widths, model_dtype, only_running=False):
    need(isinstance(bn, list), "%s is a %s, not a list", what, type(bn).__name__)
    if widths is not None:
        need(len(bn) == len(widths), "%s has %d layers; this model has %d", what, len(bn),
             len(widths))
    for i, layer in enumerate(bn):
        where = "%s[%d]" % (what, i)
        need(isinstance(layer, dict), "%s is not a dict", where)
        allowed = _BN_KEYS[3:] if only_running else _BN_KEYS
        bad = [k for k in layer if k not in allowed]
        need(not bad, "%s has unexpected entries %s", where, bad)
        need(layer.get("mode", "train") in ("train", "test"), "%s mode %r", where,
             layer.get("mode"))
        for k in ("eps", "momentum"):
            if k in layer:
                need(_finite(layer[k]), "%s %s is %r, not a finite number", where, k, layer[k])
        need(layer.get("eps", 1) > 0, "%s eps must be positive", where)
        for k in ("running_mean", "running_var"):
            if k in layer:
                width = widths[i] if widths is not None else None
                _array(layer[k], "%s %s" % (where, k), None if width is None else (width,),
                       model_dtype)
                need(layer[k].ndim == 1, "%s %s is not 1-D", where, k)
        if "running_var" in layer:
            need(bool((layer["running_var"] >= 0).all()), "%s running_var is negative", where)


def _check_rng(rng):
    need(isinstance(rng, dict) and rng.get("bit_generator") == "PCG64",
         "the Solver's generator state is not a PCG64 state")
    inner = rng.get("state")
    need(set(rng) == {"bit_generator", "state", "has_uint32", "uinteger"}
         and isinstance(inner, dict) and set(inner) == {"state", "inc"}
         and all(_is_int(inner[k]) and 0 <= inner[k] < 2 ** 128 for k in inner)
         and rng["has_uint32"] in (0, 1) and _is_int(rng["has_uint32"])
         and _is_int(rng["uinteger"]) and 0 <= rng["uinteger"] < 2 ** 32,
         "the Solver's generator state is malformed")
    bitgen = np.random.PCG64()
    bitgen.state = rng
    need(bitgen.state == rng, "the Solver's generator state does not round-trip")


def _check_config(config, what, shape, dtype):
    """One parameter's optimizer config: the rules' state arrays (fcgpu.optim.RULES)
    shaped like the parameter, their hyperparameters in their ranges
    (fcgpu.settings.HYPERPARAMETERS), their step counters 64-bit."""
    need(isinstance(config, dict), "%s is a %s, not a dict", what, type(config).__name__)
    for k, v in config.items():
        where = "%s[%r]" % (what, k)
        if isinstance(v, np.ndarray):
            if k in STATE_ARRAYS:
                _array(v, where, shape, dtype)
            else:
                _array(v, where, floating=False)
        else:
            need(v is None or isinstance(v, (bool, str)) or _finite(v),
                 "%s is %r, not an array or a finite number", where, v)
    for k in HYPER_KEYS:
        if k in config:
            setting = HYPERPARAMETERS.get(k)
            why = "must be a finite number" if not _finite(config[k]) else (
                setting.why(config[k]) if setting is not None else None)
            need(why is None, "%s %s is %r; it %s", what, k, config[k], why)
    for k in COUNTER_KEYS:
        if k in config:  # (Adam's t)
            need(_is_int(config[k]) and 0 <= config[k] < 2 ** 63,
                 "%s %s (the step counter) is %r", what, k, config[k])


def _check_model(m, model):
    """The model part of a state; returns ``(ref, dtype, widths)``: the parameters'
    ``{name: (shape, dtype)}``, their dtype and the batchnorm widths (None: unknown)."""
    need(isinstance(m, dict) and "params" in m, "the state has no model parameters")
    bad = [k for k in m if k not in ("params", "bn_params", "dropout_key", "dropout_step")]
    need(not bad, "the model state has unknown entries %s", ", ".join(map(str, bad)))
    ref = _model_ref(m["params"], model)
    _same_names(m["params"], ref, "the model parameters")
    for k, (shape, dtype) in ref.items():
        _array(m["params"][k], "model parameter %s" % k, shape, dtype)
    dtype = next(iter(ref.values()))[1] if ref else None
    widths = None
    if model is not None and hasattr(model, "bn_params"):
        widths = [ref["gamma%d" % (i + 1)][0][0] if "gamma%d" % (i + 1) in ref else None
                  for i in range(len(model.bn_params))]
        need(len(model.bn_params) == 0 or "bn_params" in m,
             "the state has no batchnorm statistics; this model uses batchnorm")
    if "bn_params" in m:
        _check_bn(m["bn_params"], "batchnorm layer", widths, dtype)
    if model is not None and hasattr(model, "dropout_key"):
        need("dropout_key" in m and "dropout_step" in m,
             "the state has no dropout generator position")
    for k in ("dropout_key", "dropout_step"):
        if k in m:  # (Philox keys and streams are 64-bit: random.check_seed)
            need(_is_int(m[k]) and 0 <= m[k] < 2 ** 64, "the model's %s is %r", k, m[k])
    if "dropout_step" in m and model is not None:
        layers = int(getattr(model, "num_layers", 1))
        need(m["dropout_step"] * max(layers - 1, 1) + layers < 2 ** 64,
             "the model's dropout_step %d is past the last 64-bit stream", m["dropout_step"])
    return ref, dtype, widths


def _check_progress(state):
    """The run's counters and the generator."""
    need(_finite(state["lr_decay"]) and state["lr_decay"] > 0, "lr_decay is %r",
         state["lr_decay"])
    need(_is_int(state["batch_size"]) and state["batch_size"] >= 1, "batch_size is %r",
         state["batch_size"])
    for k in ("num_train_samples", "num_val_samples"):
        need(state[k] is None or (_is_int(state[k]) and state[k] >= 1), "%s is %r", k,
             state[k])
    need(_is_int(state["epoch"]) and state["epoch"] >= 0, "the epoch is %r", state["epoch"])
    _check_rng(state["rng"])


def _check_best(state, ref, dtype, widths):
    need(_finite(state["best_val_acc"]) and 0 <= state["best_val_acc"] <= 1,
         "best_val_acc is %r", state["best_val_acc"])
    if state["best_params"]:
        _same_names(state["best_params"], ref, "the best parameters")
        for k, (shape, dt) in ref.items():
            _array(state["best_params"][k], "best parameter %s" % k, shape, dt)
    else:
        need(state["best_params"] == {}, "the best parameters are %r",
             type(state["best_params"]).__name__)
    if state["best_bn"]:
        _check_bn(state["best_bn"], "best batchnorm layer",
                  widths if widths is not None else
                  [None] * len(state["model"].get("bn_params", [])), dtype, only_running=True)
    else:
        need(state["best_bn"] == [], "the best batchnorm statistics are a %s",
             type(state["best_bn"]).__name__)


def _check_ema(state, ref, dtype, widths):
    """The average of the weights: there exactly when the settings' ``ema_decay`` is
    set, with that decay, arrays like the parameters and the running statistics, and
    one raw-weights validation accuracy per check."""
    decay = (state.get("settings") or {}).get("ema_decay")
    ema = state.get("ema")
    if decay is None:
        need("ema" not in state,
             "it holds an average of the weights but its settings have no ema_decay")
        return
    need("ema" in state, "its settings have ema_decay %r but it holds no average of the "
         "weights", decay)
    need(isinstance(ema, dict) and set(ema) == set(EMA_KEYS),
         "the average of the weights is malformed")
    need(_is_real(ema["decay"]) and ema["decay"] == decay,
         "the average's decay %r is not the settings' ema_decay %r", ema["decay"], decay)
    need(_is_int(ema["updates"]) and 0 <= ema["updates"] < 2 ** 63,
         "the average's update count is %r", ema["updates"])
    _same_names(ema["params"], ref, "the averaged parameters")
    for k, (shape, dt) in ref.items():
        _array(ema["params"][k], "averaged parameter %s" % k, shape, dt)
    _check_bn(ema["bn_params"], "averaged batchnorm layer",
              widths if widths is not None else
              [None] * len(state["model"].get("bn_params", [])), dtype, only_running=True)
    raw = ema["raw_val_acc_history"]
    need(isinstance(raw, list) and all(_finite(v) and 0 <= v <= 1 for v in raw),
         "the raw weights' validation accuracies are not a list of values in [0, 1]")
    need(len(raw) == len(state["val_acc_history"]),
         "the average has %d raw-weights validation accuracies for %d checks", len(raw),
         len(state["val_acc_history"]))


def _check_histories(state):
    for k in ("loss_history", "train_acc_history", "val_acc_history", "epoch_seconds"):
        need(isinstance(state[k], list), "%s is a %s, not a list", k, type(state[k]).__name__)
    need(all(_is_real(v) for v in state["loss_history"]), "loss_history holds non-numbers")
    for k in ("train_acc_history", "val_acc_history"):
        need(all(_finite(v) and 0 <= v <= 1 for v in state[k]),
             "%s holds values outside [0, 1]", k)
    need(len(state["train_acc_history"]) == len(state["val_acc_history"]),
         "the train and validation accuracy histories differ in length")
    need(all(_finite(v) and v >= 0 for v in state["epoch_seconds"]),
         "epoch_seconds holds invalid durations")


def check_state(state, model=None, update_rule=None):
    """Check a Solver state: its structure and values always; with ``model``, that
    its parameters, batchnorm statistics and optimizer state fit that model (names,
    shapes, dtype); with ``update_rule`` (a rule's name), that it was written by
    the same rule. Raises :class:`CheckpointError` naming the first problem."""
    need(isinstance(state, dict), "the state is a %s, not a dict", type(state).__name__)
    need(state.get("format") == SOLVER_STATE, "it holds no fcgpu Solver state (format %r)",
         state.get("format"))
    missing = [k for k in SOLVER_KEYS if k not in state]
    extra = [k for k in state if k not in SOLVER_KEYS + OPTIONAL_KEYS]
    need(not missing, "the state lacks %s", ", ".join(missing))
    need(not extra, "the state has unknown entries %s", ", ".join(map(str, extra)))

    ref, dtype, widths = _check_model(state["model"], model)
    _same_names(state["optim_configs"], ref, "the optimizer states")
    for k, (shape, dt) in ref.items():
        _check_config(state["optim_configs"][k], "optimizer state %s" % k, shape, dt)
    rule = state["update_rule"]
    need(rule is None or isinstance(rule, str), "the update rule is %r", rule)
    need(update_rule is None or rule is None or rule == update_rule,
         "it was written with update rule %r; this Solver uses %r", rule, update_rule)
    _check_progress(state)
    _check_best(state, ref, dtype, widths)
    _check_histories(state)
    need(isinstance(state.get("train_config", {}), dict), "train_config is not a dict")
    if "settings" in state:
        check_settings(state["settings"])
    _check_ema(state, ref, dtype, widths)


def check_settings(s):
    """A state's training settings (the Solver's augmentation, schedule and loss):
    their structure, and each value in its :data:`fcgpu.settings.SETTINGS` range."""
    need(isinstance(s, dict) and set(SETTINGS_KEYS) - set(LATER_SETTINGS) <= set(s)
         <= set(SETTINGS_KEYS), "the training settings are malformed")
    decay = s.get("ema_decay")
    need(decay is None or SETTINGS["ema_decay"].why(decay) is None,
         "the training setting ema_decay is %r", decay)
    s = dict(LATER_SETTINGS, **s)
    for key, setting in (("augment", SETTINGS["augment"]), ("lr_schedule", SETTINGS["schedule"]),
                         ("label_smoothing", SETTINGS["label_smoothing"]),
                         ("mix", SETTINGS["mix"]), ("mix_alpha", SETTINGS["mix_alpha"])):
        ok = (s[key] is None and key == "lr_schedule") or setting.why(s[key]) is None
        need(ok, "the training setting %s is %r", key, s[key])
    need(_is_int(s["pad"]) and 0 <= s["pad"] < 2 ** 31, "the augmentation pad is %r", s["pad"])
    shape = s["image_shape"]
    need(shape is None or (isinstance(shape, list) and len(shape) == 3
                           and all(_is_int(v) and 0 < v < 2 ** 31 for v in shape)),
         "the image_shape is %r", shape)
    need(s["augment_seed"] is None or (_is_int(s["augment_seed"])
                                       and 0 <= s["augment_seed"] < 2 ** 64),
         "the augment_seed is %r", s["augment_seed"])
    need(isinstance(s["mean"], bool), "the settings' mean flag is %r", s["mean"])
    opts = s["lr_schedule_options"]
    need(isinstance(opts, dict) and all(isinstance(k, str) and (
        isinstance(v, str) or _finite(v)) for k, v in opts.items()),
        "the lr_schedule_options are malformed")


# ------------------------------------------------------------------ resuming

def default_settings(mine):
    """The training settings of a state written before they were stored: ``mine``
    with no augmentation, no mean, no schedule and no label smoothing."""
    return dict(mine, augment="none", mean=False, lr_schedule=None, lr_schedule_options={},
                label_smoothing=0.0, **LATER_SETTINGS)


def _settings_differ(saved, mine):
    """The Solver settings a resume must share (the augmentation's seed comes from the
    state; its pad and image shape matter only when the run gathers, mix_alpha only
    when it mixes)."""
    saved = default_settings(mine) if saved is None else dict(LATER_SETTINGS, **saved)
    mixes = mine.get("mix", "none") != "none"
    gathers = mine["augment"] != "none" or mine["mean"] or mixes
    return [k for k in mine if k != "augment_seed" and saved.get(k) != mine[k]
            and (gathers or k not in ("pad", "image_shape")) and (mixes or k != "mix_alpha")]


def _train_config_differ(saved, cfg):
    """The TrainConfig fields, other than those a resume may change, whose value in the
    state's ``train_config`` is not ``cfg``'s (a field the state lacks had its
    default: it was added to TrainConfig later)."""
    mine, default = cfg.to_dict(), type(cfg)().to_dict()
    return [k for k in mine if k not in RESUME_EXEMPT and saved.get(k, default[k]) != mine[k]]


def check_train_config(state, train_config):
    """Raise :class:`CheckpointError` unless ``state`` was written by ``fcgpu train``
    with ``train_config``'s value of every TrainConfig field a resume must keep (all
    but :data:`fcgpu.settings.RESUME_EXEMPT`)."""
    saved = state.get("train_config")
    need(saved is not None, "it was not written by fcgpu train")
    need(isinstance(saved, dict), "train_config is not a dict")
    diff = _train_config_differ(saved, train_config)
    mine = train_config.to_dict()
    if diff:
        raise CheckpointError("its settings differ (%s)" % ", ".join(
            "%s: %r vs %r" % (k, Short(saved.get(k)), Short(mine[k])) for k in diff))


def check_resume(state, model=None, update_rule=None, settings=None, train_config=None):
    """Whether ``state`` may continue this run; the one place that decides. Raises
    :class:`CheckpointError` naming the first problem:

    * ``train_config`` (a :class:`~fcgpu.train.TrainConfig`, from ``fcgpu train``):
      the state was written by ``fcgpu train`` with the same value of every field
      except :data:`fcgpu.settings.RESUME_EXEMPT`;
    * :func:`check_state` with ``model`` and ``update_rule``;
    * ``settings`` (the Solver's, as its state stores them): the same augmentation,
      mean subtraction, schedule and label smoothing (a state without settings was
      trained with none of them).
    """
    need(isinstance(state, dict), "the state is a %s, not a dict", type(state).__name__)
    if train_config is not None:
        check_train_config(state, train_config)
    check_state(state, model, update_rule)
    if settings is not None:
        saved = state.get("settings")
        diff = _settings_differ(saved, settings)
        saved = (default_settings(settings) if saved is None
                 else dict(LATER_SETTINGS, **saved))
        if diff:
            raise CheckpointError("it was trained with other settings (%s)" % ", ".join(
                "%s %r, this Solver %r" % (k, Short(saved.get(k)), Short(settings[k]))
                for k in diff))
