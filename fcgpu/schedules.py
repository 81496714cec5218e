"""Learning-rate schedules as pure functions of the training step.

Each schedule is ``lr(step, total_steps, base_lr, ...) -> float`` for the optimizer
step ``step`` (0-based; ``step == total_steps`` is allowed and gives the end point)
of a run of ``total_steps`` steps:

* ``'step'`` (:func:`step_lr`): the course's schedule, ``base_lr`` multiplied by
  ``lr_decay`` after every epoch (:func:`step_decay`, which the Solver applies after
  each epoch: one implementation, the same floats);
* ``'cosine'`` (:func:`cosine_lr`): optional linear warmup, then cosine annealing
  from ``base_lr`` to ``min_lr``;
* ``'onecycle'`` (:func:`onecycle_lr`): warmup (linear or cosine) from
  ``base_lr / div_factor`` to the peak ``base_lr``, then annealing (cosine or linear)
  to ``base_lr / div_factor / final_div_factor`` (Smith and Topin's one-cycle policy).

:func:`lr_at` picks one by name; :func:`lr_table` gives a whole run's rates (for a
device buffer indexed by the step, or a plot). Nothing here touches an optimizer.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ConfigError

__all__ = ["SCHEDULES", "step_decay", "step_lr", "cosine_lr", "onecycle_lr", "lr_at",
           "lr_table"]

SCHEDULES = ("step", "cosine", "onecycle")
_SHAPES = ("linear", "cos")


# ----------------------------------------------------------------- argument checks

def _int(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError("%s must be an integer, got %r" % (what, value))
    return int(value)


def _real(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number, got %r" % (what, value))
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError("%s must be finite, got %r" % (what, value))
    return value


def _run(step, total_steps, base_lr):
    total = _int(total_steps, "total_steps")
    if total < 1:
        raise ConfigError("total_steps must be >= 1, got %d" % total)
    step = _int(step, "step")
    if not 0 <= step <= total:
        raise ConfigError("step must be in [0, total_steps] = [0, %d], got %d" % (total, step))
    base = _real(base_lr, "base_lr")
    if base <= 0:
        raise ConfigError("base_lr must be > 0, got %r" % base)
    return step, total, base


def _shape(name, what):
    if name not in _SHAPES:
        raise ConfigError("%s must be 'linear' or 'cos', got %r" % (what, name))
    return name


def _ramp(t, shape):
    """0 -> 1 as t goes 0 -> 1: linear, or half a cosine."""
    return t if shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))


# ----------------------------------------------------------------- schedules

def step_decay(lr, lr_decay, epochs=1):
    """``lr`` multiplied by ``lr_decay`` ``epochs`` times, one multiplication after
    another: the course's per-epoch decay (the Solver's float after each epoch, not
    ``lr * lr_decay**epochs``). No checks: the Solver's arguments were checked."""
    for _ in range(epochs):
        lr *= lr_decay
    return lr


def _step_args(steps_per_epoch, lr_decay):
    spe = _int(steps_per_epoch, "steps_per_epoch")
    if spe < 1:
        raise ConfigError("steps_per_epoch must be >= 1, got %d" % spe)
    decay = _real(lr_decay, "lr_decay")
    if decay <= 0:
        raise ConfigError("lr_decay must be > 0, got %r" % decay)
    return spe, decay


def step_lr(step, total_steps, base_lr, steps_per_epoch, lr_decay=1.0):
    """``base_lr`` after the :func:`step_decay` of each finished epoch of
    ``steps_per_epoch`` steps (the rate the Solver trains step ``step`` with)."""
    step, _, lr = _run(step, total_steps, base_lr)
    spe, decay = _step_args(steps_per_epoch, lr_decay)
    return step_decay(lr, decay, step // spe)


def cosine_lr(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """Linear warmup over the first ``warmup_steps`` steps (step s < W runs at
    ``base_lr * (s + 1) / (W + 1)``), then ``min_lr + (base_lr - min_lr) *
    (1 + cos(pi * (s - W) / (T - W))) / 2``: ``base_lr`` at s = W, ``min_lr`` at
    s = T (one past the last step)."""
    step, total, base = _run(step, total_steps, base_lr)
    warm = _int(warmup_steps, "warmup_steps")
    if not 0 <= warm < total:
        raise ConfigError("warmup_steps must be in [0, total_steps) = [0, %d), got %d"
                         % (total, warm))
    low = _real(min_lr, "min_lr")
    if not 0 <= low <= base:
        raise ConfigError("min_lr must be in [0, base_lr] = [0, %r], got %r" % (base, low))
    if step < warm:
        return base * (step + 1) / (warm + 1)
    t = (step - warm) / (total - warm)
    return low + (base - low) * 0.5 * (1.0 + math.cos(math.pi * t))


def onecycle_lr(step, total_steps, base_lr, pct_start=0.3, div_factor=25.0,
                final_div_factor=1e4, warmup="linear", anneal="cos"):
    """One cycle with peak ``base_lr`` at step ``P = round(pct_start * T)``: from
    ``base_lr / div_factor`` at s = 0 up to the peak (``warmup`` shape), then down to
    ``base_lr / div_factor / final_div_factor`` at s = T (``anneal`` shape). Shapes:
    'linear' or 'cos' (half a cosine)."""
    step, total, base = _run(step, total_steps, base_lr)
    pct = _real(pct_start, "pct_start")
    if not 0 <= pct < 1:
        raise ConfigError("pct_start must be in [0, 1), got %r" % pct)
    div = _real(div_factor, "div_factor")
    final_div = _real(final_div_factor, "final_div_factor")
    if div < 1 or final_div < 1:
        raise ConfigError("div_factor and final_div_factor must be >= 1, got %r and %r"
                         % (div, final_div))
    up, down = _shape(warmup, "warmup"), _shape(anneal, "anneal")
    peak = min(int(round(pct * total)), total - 1)
    start = base / div
    end = start / final_div
    if step <= peak:
        return base if peak == 0 else start + (base - start) * _ramp(step / peak, up)
    t = (step - peak) / (total - peak)
    return end + (base - end) * (1.0 - _ramp(t, down))


_FUNCS = {"step": step_lr, "cosine": cosine_lr, "onecycle": onecycle_lr}


def _func(schedule):
    if schedule not in _FUNCS:
        raise ConfigError("learning-rate schedule must be one of %s, got %r"
                         % (", ".join(SCHEDULES), schedule))
    return _FUNCS[schedule]


def lr_at(schedule, step, total_steps, base_lr, **options):
    """The learning rate of ``step`` under the schedule named ``schedule``;
    ``options`` are that schedule's keyword arguments."""
    return _func(schedule)(step, total_steps, base_lr, **options)


def lr_table(schedule, total_steps, base_lr, **options):
    """float64 array of the rates of steps ``0 .. total_steps - 1``."""
    f = _func(schedule)
    total = _int(total_steps, "total_steps")
    if f is step_lr:  # (one step_decay per epoch, not per step and epoch)
        f(0, total, base_lr, **options)  # checks the arguments
        spe, decay = _step_args(options["steps_per_epoch"], options.get("lr_decay", 1.0))
        out, lr = np.empty(total), float(base_lr)
        for s in range(total):
            if s and s % spe == 0:
                lr = step_decay(lr, decay)
            out[s] = lr
        return out
    return np.array([f(s, total, base_lr, **options) for s in range(total)], dtype=np.float64)
