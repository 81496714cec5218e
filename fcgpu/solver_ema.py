"""An exponential moving average (EMA) of the weights: ``Solver(ema_decay=d)``,
``fcgpu train --ema d``.

After every optimizer step ``t`` (1, 2, ...), every parameter and every batchnorm
running statistic (as timm's ``ModelEmaV2`` does with a model's buffers) moves
towards the model's::

    ema = d_t * ema + (1 - d_t) * w,      d_t = min(d, (1 + t) / (10 + t))

the warm-up of TensorFlow's ``ExponentialMovingAverage(decay, num_updates=t)``: the
average starts close to the weights and lengthens with the run, ``(1 + t)/(10 + t)``
(a time constant of about t/9 steps: the last tenth of the run so far) capping it
until ``d`` takes over, at step ``(10d - 1)/(1 - d)`` (890 for d = 0.99, 8,990 for
0.999). Chosen on the course run (docs/presets.md, "A moving average of the weights"):
with a fixed ``d`` from the initial weights, a decay long enough to help drags the
random initial weights along (0.999**1700 = 0.18 of them is left at the end of the
course run's 1,700 steps; its validation accuracy fell to 0.50 at d = 0.9998); the
bias-corrected average (Adam's ``1 - d**t``) starts from the first step's weights but
weighs the early, poor weights like the late ones until ``t`` nears ``1/(1-d)``
(0.595 at d = 0.9998). With the warm-up every d from 0.995 up gave the best of all
(0.619, the raw weights' best 0.612): in a short run it averages the last tenth of
the run whatever ``d``, and ``d`` matters only in runs longer than its take-over
step. The initial values (a copy of the weights; zeros for the running statistics,
like the model's own) weigh ``prod d_t``, below 1e-11 by step 100.

The batchnorm statistics are averaged rather than copied: the averaged weights
produce activations whose statistics the raw weights' running statistics (the last
ten or so batches, momentum 0.9) do not describe, and averaging them with the same
decay keeps them with the weights they belong to (re-estimating them with a pass over
the training data, as SWA does, would be exact and cost an epoch's forward passes).

The update is ``ema *= d_t; ema += (1 - d_t) * w`` on CuPy arrays (plain CuPy
elementwise operations; inside the CUDA-graph step ``d_t`` and ``1 - d_t`` are read
from device memory: :mod:`fcgpu.cuda.graph`), and one compiled pass computing the
same numbers on NumPy arrays (:mod:`fcgpu.cpu.ema`).

The Solver evaluates the average: its accuracy checks swap it into the model
(:meth:`WeightEMA.swapped_in`), so ``val_acc_history``, ``best_params`` and the model
it keeps are the average's; the raw weights' validation accuracy is kept beside it
(:attr:`WeightEMA.raw_val_acc_history`). Its arrays and counter are part of the
Solver's state (the ``ema`` entry of a checkpoint).
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import fused
from .backend import asnumpy, get_array_module, is_cupy_array, to_backend

__all__ = ["WeightEMA", "BN_KEYS", "decay_at", "ema_rates", "ema_metrics"]

BN_KEYS = ("running_mean", "running_var")  # the batchnorm statistics that are averaged


def decay_at(decay, t):
    """``d_t`` of update ``t`` (1-based): ``min(decay, (1 + t) / (10 + t))``."""
    return min(float(decay), (1.0 + t) / (10.0 + t))


def ema_rates(decay, first, count, dtype):
    """``[[d_t, 1 - d_t], ...]`` for the updates ``t = first + 1 .. first + count``, as
    an array of ``dtype`` (computed in float64, then rounded once)."""
    d = np.array([decay_at(decay, first + 1 + i) for i in range(count)], dtype=np.float64)
    return np.ascontiguousarray(np.stack([d, 1.0 - d], axis=1).astype(dtype))


def _compiled(e, w, d):
    return (not is_cupy_array(e) and fused.use_compiled_cpu() and np.ndim(d) == 0
            and e.dtype == w.dtype == np.asarray(d).dtype and e.dtype.kind == "f"
            and e.shape == w.shape and e.flags.c_contiguous and w.flags.c_contiguous)


def blend(e, w, d, a):
    """``e = d * e + a * w`` in place: ``e *= d; e += a * w`` (``d`` and ``a`` scalars
    of ``e``'s dtype, or one-element arrays on ``e``'s device), or the compiled pass
    that computes the same numbers (NumPy arrays)."""
    if _compiled(e, w, d):
        from .cpu.ema import ema_update
        ema_update(e, w, d, a)
        return
    e *= d
    e += a * w


class WeightEMA:
    """The average of a model's weights (see the module docstring).

    ``WeightEMA(decay, model)`` starts from a copy of ``model.params``; ``params``
    (name -> array) and ``bn`` (one dict per batchnorm layer of ``model.bn_params``,
    holding the averaged ``running_mean`` and ``running_var`` once the model has them)
    are on the model's device, ``updates`` counts the updates made."""

    def __init__(self, decay, model):
        self.decay = float(decay)
        self.updates = 0
        self.params = {k: v.copy() for k, v in model.params.items()}
        self.bn = [{} for _ in getattr(model, "bn_params", [])]
        self.raw_val_acc_history = []

    def _bn_pairs(self, model):
        """``(ema dict, key, model array)`` of every statistic the model has; the
        average's copy of one it did not have yet starts at zeros, as the model's did."""
        pairs = []
        for mine, bp in zip(self.bn, getattr(model, "bn_params", [])):
            for key in BN_KEYS:
                w = bp.get(key)
                if w is None:
                    continue
                if mine.get(key) is None:
                    mine[key] = get_array_module(w).zeros_like(w)
                pairs.append((mine, key, w))
        return pairs

    def apply(self, model, d, a):
        """One update with ``d_t = d``, ``1 - d_t = a`` (host scalars of the model's
        dtype, or one-element device arrays: the CUDA-graph step's)."""
        for name, w in model.params.items():
            blend(self.params[name], w, d, a)
        for mine, key, w in self._bn_pairs(model):
            blend(mine[key], w, d, a)

    def update(self, model):
        """After an optimizer step: the next update, ``d_t`` from :func:`decay_at`."""
        (d, a), = self.rates(1)
        self.updates += 1
        self.apply(model, d, a)

    def rates(self, count):
        """``[d_t, 1 - d_t]`` of the next ``count`` updates (the CUDA-graph step's table
        for an epoch), in the arrays' dtype."""
        dtype = next(iter(self.params.values())).dtype
        return ema_rates(self.decay, self.updates, count, dtype)

    @contextlib.contextmanager
    def swapped_in(self, model):
        """The average in ``model`` (its parameters and running statistics) for the
        duration of the block; the model's own arrays come back after it."""
        params = model.params
        bn_params = getattr(model, "bn_params", [])
        saved = [{k: bp[k] for k in mine if k in bp} for mine, bp in zip(self.bn, bn_params)]
        model.params = dict(self.params)
        for mine, bp in zip(self.bn, bn_params):
            bp.update(mine)
        try:
            yield
        finally:
            model.params = params
            for old, bp in zip(saved, bn_params):
                bp.update(old)

    def state_dict(self):
        """Host copies of the arrays, the decay, the counter and the raw weights'
        validation accuracies (the ``ema`` entry of the Solver's state)."""
        def host(a):
            h = asnumpy(a)
            return h.copy() if h is a or h.base is not None else h
        return {"decay": self.decay, "updates": self.updates,
                "params": {k: host(v) for k, v in self.params.items()},
                "bn_params": [{k: host(v) for k, v in mine.items()} for mine in self.bn],
                "raw_val_acc_history": list(self.raw_val_acc_history)}

    def load_state_dict(self, state, xp, dtype=None):
        """Continue from :meth:`state_dict`'s (checked: :mod:`fcgpu.checkpoint.schema`)."""
        self.updates = int(state["updates"])
        self.params = {k: to_backend(np.array(v), xp, dtype) for k, v in state["params"].items()}
        self.bn = [{k: to_backend(np.array(v), xp, dtype) for k, v in mine.items()}
                   for mine in state["bn_params"]]
        self.raw_val_acc_history = list(state["raw_val_acc_history"])


def ema_metrics(ema, val_acc_history):
    """What a run's metrics say of the average (None without one): its decay, and the
    last epoch's validation accuracy of the average and of the raw weights."""
    if ema is None:
        return None
    raw = ema.raw_val_acc_history
    return {"decay": ema.decay, "updates": ema.updates,
            "final_val_acc": val_acc_history[-1] if val_acc_history else None,
            "final_raw_val_acc": raw[-1] if raw else None,
            "raw_val_acc_history": list(raw)}
