"""The settings of a training run, each defined and checked in one place.

A :class:`Setting` is a name, a kind (int, float, bool, str, or a custom check), a
range or a list of choices, and the words of its message. :data:`SETTINGS` holds one
per :class:`fcgpu.train.TrainConfig` field, and the Solver's arguments and the search
space's parameters use the same entries (under their own labels), so a range is written
once: ``label_smoothing`` is in [0, 1) for ``fcgpu train``, the Solver, the model, the
search space and a stored checkpoint alike. :data:`HYPERPARAMETERS` holds the ranges of
the update rules' hyperparameters (the keys of :data:`fcgpu.optim.RULES` entries'
``defaults``), for the Solver's ``optim_config`` and a checkpoint's optimizer state.

A value out of its range raises :class:`fcgpu.errors.ConfigError` (a ``ValueError``)
whose one line names the setting, the range and the value:
``label_smoothing must be in [0, 1), got 1.0``.

:data:`RESUME_EXEMPT` names the TrainConfig fields a run may change when it resumes
from a checkpoint (how and where the steps run, not what they compute); every other
field must match (:func:`fcgpu.checkpoint.check_resume`).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import optim
from .augment_spec import MODES
from .backend import CHOICES as BACKENDS, MATMUL_PRECISIONS
from .errors import ConfigError
from .schedules import SCHEDULES

__all__ = ["Setting", "SETTINGS", "HYPERPARAMETERS", "RESUME_EXEMPT", "DTYPES", "check"]

DTYPES = ("float32", "float64")
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _is_kind(value, kind):
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is str:
        return isinstance(value, str)
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    return isinstance(value, numbers.Real) and math.isfinite(value)


class Setting:
    """One setting: ``Setting(name, kind, low=..., high=..., choices=..., ...)``.

    * ``kind``: int, float (finite), bool or str; a value of another kind is refused;
    * ``low``/``high``: the range (inclusive; ``low_open``/``high_open`` exclude the
      end), for numbers;
    * ``choices``: the allowed values (a tuple, or a callable that returns one);
    * ``optional``: None is allowed too;
    * ``rule``: a custom check ``rule(value) -> reason or None`` in place of the above;
    * ``reason``: the words that say the range (default: from the range), e.g. "is
      the keep probability, in [0, 1]"; messages read ``NAME REASON, got VALUE``.
    """

    def __init__(self, name, kind, low=None, high=None, low_open=False, high_open=False,
                 choices=None, optional=False, rule=None, reason=None, help=""):
        self.name, self.kind, self.help = name, kind, help
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self._choices, self.optional, self.rule = choices, optional, rule
        self._reason = reason

    @property
    def choices(self):
        c = self._choices
        return tuple(c() if callable(c) else c) if c is not None else None

    def reason(self):
        """The range in words: ``must be in [0, 1)``, ``must be one of a, b``, ..."""
        if self._reason:
            return self._reason
        if self.choices is not None:
            return "must be one of " + ", ".join(map(str, self.choices))
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return "must be in %s%s, %s%s" % ("(" if self.low_open else "[", _num(lo), _num(hi),
                                             ")" if self.high_open else "]")
        if lo is not None:
            return "must be %s %s" % (">" if self.low_open else ">=", _num(lo))
        if hi is not None:
            return "must be %s %s" % ("<" if self.high_open else "<=", _num(hi))
        return "must be " + _KINDS.get(self.kind, "valid")

    def why(self, value):
        """None when ``value`` is allowed, else the reason it is not (the range in
        words, or the kind it should have)."""
        if value is None and self.optional:
            return None
        if self.rule is not None:
            return self.rule(value)
        if self.choices is not None:
            return None if _is_choice(value, self.choices) else self.reason()
        if not _is_kind(value, self.kind):
            return "must be " + _KINDS.get(self.kind, "valid")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return self.reason()
        if self.high is not None and (value > self.high
                                      or (self.high_open and value == self.high)):
            return self.reason()
        return None

    def check(self, value, label=None):
        """``value`` if allowed; else :class:`ConfigError` ``LABEL REASON, got VALUE``
        (``label`` defaults to the setting's name, e.g. ``Solver: num_epochs``)."""
        why = self.why(value)
        if why is not None:
            raise ConfigError("%s %s, got %r" % (label or self.name, why, value))
        return value


def _num(x):
    return "%d" % x if isinstance(x, int) else "%g" % x


def _is_choice(value, choices):
    try:
        return value in choices
    except TypeError:  # (an unhashable or odd value)
        return False


def _positive_ints(value):
    try:
        dims = tuple(value)
    except TypeError:
        return "must be a list of positive integers"
    if not dims or not all(_is_kind(h, int) and h >= 1 for h in dims):
        return "must be positive integers"
    return None


def _image_shape(value):
    why = _positive_ints(value)
    return None if why is None else why.replace("must be", "must be a shape of")


def _backend(value):
    ok = isinstance(value, str) and value.strip().lower() in BACKENDS
    return None if ok else "must be one of " + ", ".join(BACKENDS)


def _path(value):
    import os
    return None if isinstance(value, (str, os.PathLike)) else "must be a path"


def _settings(*entries):
    return {s.name: s for s in entries}


SETTINGS = _settings(
    Setting("hidden_dims", tuple, rule=_positive_ints, help="hidden layer sizes"),
    Setting("weight_scale", float, low=0, low_open=True, help="std of the initial weights"),
    Setting("batchnorm", bool, help="batch normalization"),
    Setting("dropout", float, low=0, high=1, reason="is the keep probability, in [0, 1]",
            help="dropout KEEP probability (1 = no dropout)"),
    Setting("update_rule", str, choices=optim.rule_names, help="optimizer"),
    Setting("learning_rate", float, low=0, low_open=True, help="learning rate"),
    Setting("lr_decay", float, low=0, low_open=True,
            help="learning-rate factor per epoch (schedule 'step' only)"),
    Setting("reg", float, low=0, help="L2 strength"),
    Setting("batch_size", int, low=1, help="minibatch size"),
    Setting("epochs", int, low=0, help="epochs"),
    Setting("num_train", int, low=1, optional=True, help="training examples"),
    Setting("num_val", int, low=1, help="validation examples"),
    Setting("seed", int, low=0, high=2 ** 64, high_open=True, reason="must be in [0, 2**64)",
            help="seed of the weights, dropout, minibatch order and augmentation"),
    Setting("backend", str, rule=_backend, help="array backend"),
    Setting("data", str, optional=True, rule=_path,
            help="the data: a CIFAR-10 archive or folder, or FILE.npz"),
    Setting("dtype", str, choices=DTYPES, help="float dtype of the net"),
    Setting("cuda_graph", bool, help="capture the training step as a CUDA graph"),
    Setting("matmul_precision", str, choices=MATMUL_PRECISIONS, help="float32 products"),
    Setting("image_shape", tuple, optional=True, rule=_image_shape,
            help="the shape of one example"),
    Setting("augment", str, choices=MODES,
            help="per-sample augmentation in the gather: none, flip or crop (with flips)"),
    Setting("pad", int, low=0, help="crop padding, pixels per side"),
    Setting("label_smoothing", float, low=0, high=1, high_open=True, help="label smoothing"),
    Setting("schedule", str, choices=SCHEDULES,
            help="learning-rate schedule: step (lr_decay per epoch), cosine or onecycle"),
    Setting("warmup_epochs", float, low=0, optional=True,
            help="cosine: linear warmup epochs; onecycle: the epoch of the peak"),
    Setting("preset", str, help="the recipe the fields started from"),
)

# how and where the steps run, not what they compute: a resumed run may change these
RESUME_EXEMPT = ("epochs", "backend", "data", "cuda_graph", "preset", "matmul_precision")

# the update rules' hyperparameters (fcgpu.optim.RULES defaults), as a stored
# optimizer state and the Solver's optim_config may hold them
HYPERPARAMETERS = _settings(
    Setting("learning_rate", float, low=0),
    Setting("momentum", float, low=0, high=1),
    Setting("decay_rate", float, low=0, high=1),
    Setting("epsilon", float, low=0),
    Setting("beta1", float, low=0, high=1, high_open=True),  # (Adam divides by 1 - beta**t)
    Setting("beta2", float, low=0, high=1, high_open=True),
)


def check(name, value, label=None):
    """``SETTINGS[name].check(value, label)``."""
    return SETTINGS[name].check(value, label)
