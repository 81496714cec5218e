"""One setting's spec: its kind, range or choices, and the words of its message.

:class:`Setting` is how fcgpu checks a value a user gives (an argument, a flag, a field
of a file), in one place per setting: ``LABEL_SMOOTHING.check(0.1)``. The table of a
training run's settings is :data:`fcgpu.settings.SETTINGS`; the settings the layer
library checks itself (the net's keep probability and label smoothing) are defined here,
below the layers, and that table holds these very entries.

A value out of its range raises :class:`fcgpu.errors.ConfigError` (a ``ValueError``)
whose one line names the setting, the range and the value:
``label_smoothing must be in [0, 1), got 1.0``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ConfigError

__all__ = ["Setting", "DROPOUT", "LABEL_SMOOTHING", "positive_ints"]

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


def positive_ints(value):
    """None if ``value`` is a non-empty sequence of positive integers, else why not."""
    try:
        dims = tuple(value)
    except TypeError:
        return "must be a list of positive integers"
    if not dims or not all(_is_kind(h, int) and h >= 1 for h in dims):
        return "must be positive integers"
    return None


DROPOUT = Setting("dropout", float, low=0, high=1, reason="is the keep probability, in [0, 1]",
                  help="dropout KEEP probability (1 = no dropout)")
LABEL_SMOOTHING = Setting("label_smoothing", float, low=0, high=1, high_open=True,
                          help="label smoothing")
