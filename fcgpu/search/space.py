"""The search space: its parameters, their checks, the ``--space`` TOML file and the
``--param NAME=SPEC`` flags, and drawing one training configuration from it.

A space is ``{name: spec}`` over the names of :data:`PARAMS`; a spec is a range
``{"low", "high", "log"}``, ``{"choices": [...]}`` or ``{"value": v}``, always in the
canonical form :func:`normalize` gives.
"""
from __future__ import annotations

import math


from ..errors import ConfigError
from ..settings import SETTINGS


def _check_layers(v):
    return None if 1 <= v <= 20 else "must be in 1..20"


def _units(v):
    return None if v > 0 else "must be > 0"


def _train_setting(name, default):
    """A parameter that is a TrainConfig field: its kind, check and help come from
    :data:`fcgpu.settings.SETTINGS` (one range per setting)."""
    s = SETTINGS[name]
    return (s.kind, default, s.why, s.help)


# name: (type, default spec, check of a single value (None or the reason), help)
PARAMS = {
    "layers": (int, {"low": 1, "high": 3}, _check_layers, "number of hidden layers"),
    "units": (int, {"low": 100, "high": 1000}, _units,
              "units per hidden layer (drawn per layer: units_1, units_2, ...)"),
    "dropout": _train_setting("dropout", {"low": 0.5, "high": 1.0}),
    "learning_rate": _train_setting("learning_rate", {"low": 1e-4, "high": 1e-2, "log": True}),
    "reg": _train_setting("reg", {"low": 1e-8, "high": 1e-2, "log": True}),
    "weight_scale": _train_setting("weight_scale", {"low": 1e-3, "high": 1e-1, "log": True}),
    "batch_size": _train_setting("batch_size", {"choices": [100, 200, 490, 1000]}),
    "batchnorm": _train_setting("batchnorm", {"value": True}),
    "update_rule": _train_setting("update_rule", {"value": "adam"}),
    "lr_decay": _train_setting("lr_decay", {"value": 0.9}),
    # fixed at the course's behaviour by default: open them with --param or --space
    "augment": _train_setting("augment", {"value": "none"}),
    "pad": _train_setting("pad", {"value": 4}),
    "label_smoothing": _train_setting("label_smoothing", {"value": 0.0}),
    "schedule": _train_setting("schedule", {"value": "step"}),
    "mix": _train_setting("mix", {"value": "none"}),
    "mix_alpha": _train_setting("mix_alpha", {"value": 1.0}),
    "ema_decay": (float, {"value": 0.0}, lambda v: v and SETTINGS["ema_decay"].why(v),
                  SETTINGS["ema_decay"].help.replace("None: off", "0: off")),
}


_LOG_BY_DEFAULT = {name for name, (_, spec, _, _) in PARAMS.items() if spec.get("log")}


def default_space():
    """The notebook's search space: ``{name: spec}``, each spec one of
    ``{"low", "high", "log"}`` (a range), ``{"choices": [...]}`` or ``{"value": v}``."""
    return {name: dict(spec) for name, (_, spec, _, _) in PARAMS.items()}


def _coerce(name, value, where):
    kind = PARAMS[name][0]
    bad = ConfigError("%s: %s takes %s values, got %r" % (where, name, kind.__name__, value))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false",
                                                       "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            raise bad from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise bad
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad
    return float(value)


def normalize(name, raw, where):
    """One parameter's spec in canonical form, checked."""
    if name not in PARAMS:
        raise ConfigError("%s: unknown search parameter %r (known: %s)"
                         % (where, name, ", ".join(PARAMS)))
    kind, _, check, _ = PARAMS[name]

    def ok(v):
        v = _coerce(name, v, where)
        why = check(v)
        if why:
            raise ConfigError("%s: %s = %r %s" % (where, name, v, why))
        return v

    if isinstance(raw, dict):
        keys = set(raw)
        if keys == {"value"}:
            return {"value": ok(raw["value"])}
        if keys == {"choices"}:
            raw = raw["choices"]
            if not isinstance(raw, (list, tuple)):
                raise ConfigError("%s: %s.choices must be a list" % (where, name))
        elif keys and keys <= {"low", "high", "log"} and {"low", "high"} <= keys:
            if kind not in (int, float):
                raise ConfigError("%s: %s is not numeric: give a value or a list of choices"
                                 % (where, name))
            low, high = ok(raw["low"]), ok(raw["high"])
            log = raw.get("log", name in _LOG_BY_DEFAULT)
            if not isinstance(log, bool):
                raise ConfigError("%s: %s.log must be true or false" % (where, name))
            if low > high:
                raise ConfigError("%s: %s range has low %r > high %r" % (where, name, low, high))
            if log and low <= 0:
                raise ConfigError("%s: %s log range needs low > 0, got %r" % (where, name, low))
            if low == high:
                return {"value": low}
            return {"low": low, "high": high, "log": log}
        else:
            raise ConfigError("%s: %s must be a value, a list of choices, or a table with "
                             "low/high[/log], {choices = [...]} or {value = ...}; got keys %s"
                             % (where, name, ", ".join(sorted(keys)) or "none"))
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ConfigError("%s: %s has an empty list of choices" % (where, name))
        choices = []
        for v in raw:
            v = ok(v)
            if v not in choices:
                choices.append(v)
        return {"value": choices[0]} if len(choices) == 1 else {"choices": choices}
    return {"value": ok(raw)}


def parse_param(text):
    """``NAME=SPEC`` from the command line: ``LOW:HIGH[:log|:linear]`` is a range,
    ``A,B,C`` a list of choices, anything else a fixed value. Returns ``(name, spec)``."""
    if "=" not in text:
        raise ConfigError("--param takes NAME=SPEC (e.g. learning_rate=1e-4:1e-2, "
                         "batch_size=100,200, batchnorm=false), got %r" % text)
    name, spec = (s.strip() for s in text.split("=", 1))
    where = "--param %s" % text
    if name not in PARAMS:
        raise ConfigError("%s: unknown search parameter %r (known: %s)"
                         % (where, name, ", ".join(PARAMS)))
    if ":" in spec:
        parts = spec.split(":")
        raw = {"low": parts[0], "high": parts[1]}
        if len(parts) == 3 and parts[2] in ("log", "linear"):
            raw["log"] = parts[2] == "log"
        elif len(parts) != 2:
            raise ConfigError("%s: a range is LOW:HIGH, LOW:HIGH:log or LOW:HIGH:linear" % where)
        return name, normalize(name, raw, where)
    if "," in spec:
        return name, normalize(name, [s.strip() for s in spec.split(",") if s.strip()], where)
    return name, normalize(name, spec, where)


def _read_toml(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("--space %s: reading TOML needs Python 3.11+ (tomllib) or the "
                             "tomli package on Python 3.10 (pip install tomli)" % path) from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--space %s: not valid TOML: %s" % (path, exc)) from None


def load_space_file(path):
    """Overrides from a TOML file: top-level keys (or a ``[space]`` table) naming the
    parameters of :data:`PARAMS`; see ``docs/search.md`` for the format."""
    doc = _read_toml(path)
    if set(doc) == {"space"} and isinstance(doc["space"], dict):
        doc = doc["space"]
    return {name: normalize(name, raw, "--space %s" % path) for name, raw in doc.items()}


def build_space(space_file=None, params=()):
    """The default space updated by the TOML file, then by ``--param`` strings."""
    space = default_space()
    if space_file:
        space.update(load_space_file(space_file))
    for text in params or ():
        name, spec = parse_param(text)
        space[name] = spec
    return space


def _suggest(trial, name, spec, kind):
    if "value" in spec:
        return spec["value"]
    if "choices" in spec:
        return trial.suggest_categorical(name, list(spec["choices"]))
    if kind is int:
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))


def suggest_config(trial, space, **fixed):
    """Draw one :class:`~fcgpu.train.TrainConfig` from ``space`` through ``trial``;
    ``fixed`` sets the other fields (epochs, num_train, seed, backend, data)."""
    from ..train import TrainConfig

    def get(name, label=None):
        return _suggest(trial, label or name, space[name], PARAMS[name][0])

    layers = get("layers")
    hidden = tuple(get("units", "units_%d" % (i + 1)) for i in range(layers))
    extra = {}
    for name in ("augment", "pad", "label_smoothing", "schedule", "ema_decay", "mix",
                 "mix_alpha"):
        if name in space:  # (a space saved before these existed lacks them)
            extra[name] = get(name)
    extra["ema_decay"] = extra.get("ema_decay") or None  # (0: no average)
    if extra.get("augment", "none") == "none":
        extra.pop("pad", None)  # (meaningless without crops: not a distinct config)
    if extra.get("mix", "none") == "none":
        extra.pop("mix_alpha", None)  # (meaningless without mixing)
    schedule = extra.get("schedule", "step")
    # the per-epoch decay is the 'step' schedule's: drawn only for it
    lr_decay = get("lr_decay") if schedule == "step" else 1.0
    return TrainConfig(hidden_dims=hidden, dropout=get("dropout"),
                       learning_rate=get("learning_rate"), reg=get("reg"),
                       weight_scale=get("weight_scale"), batch_size=get("batch_size"),
                       batchnorm=get("batchnorm"), update_rule=get("update_rule"),
                       lr_decay=lr_decay, **extra, **fixed)
