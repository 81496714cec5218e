"""How the Solver's training steps run: one strategy per way, chosen once per
``train()`` call (:meth:`fcgpu.solver.Solver.train`), not on every step.

* :class:`PlainSteps`: the minibatch is the rows ``order[it*B:(it+1)*B]`` of the
  training data (the course's step);
* :class:`GatherSteps`: the minibatch is made by the augmenting gather
  (:func:`fcgpu.augment.augment_gather`: flips, crops, the mean image subtracted);
* :class:`GraphSteps`: the whole step (gather, forward, backward, update) is a CUDA
  graph replayed once per step (:mod:`fcgpu.cuda.graph`).

A strategy has :meth:`~Steps.begin_epoch` (the epoch's permutation of the training
rows), :meth:`~Steps.step` (batch ``it`` of the epoch), :meth:`~Steps.end_epoch` and
:meth:`~Steps.close` (after the last epoch of the call, or on an error).
"""
from __future__ import annotations

from .backend import to_backend

__all__ = ["Steps", "PlainSteps", "GatherSteps", "GraphSteps", "graph_step"]


class Steps:
    """The steps of an epoch; ``train_step(X_batch, y_batch)`` runs one step on a
    minibatch (forward, backward, update, the loss kept)."""

    def __init__(self, xp, train_step):
        self.xp = xp
        self.train_step = train_step
        self.order = None

    def begin_epoch(self, perm):
        """Before the epoch's first step: ``perm`` is its permutation (host ints)."""
        self.order = to_backend(perm, self.xp)

    def step(self, it):
        raise NotImplementedError

    def end_epoch(self):
        """After the epoch's last step."""

    def close(self):
        """After the last epoch of this train() call (or an error)."""


class PlainSteps(Steps):
    """The minibatch is rows of ``X``, ``y``: ``order[it*B:(it+1)*B]``."""

    def __init__(self, X, y, batch_size, xp, train_step):
        super().__init__(xp, train_step)
        self.X, self.y, self.batch_size = X, y, batch_size

    def step(self, it):
        idx = self.order[it * self.batch_size:(it + 1) * self.batch_size]
        self.train_step(self.X[idx], self.y[idx])


class GatherSteps(Steps):
    """The minibatch is ``gather(order, it, batch)`` (the augmenting gather)."""

    def __init__(self, gather, batch, xp, train_step):
        super().__init__(xp, train_step)
        self.gather, self.batch = gather, batch

    def step(self, it):
        self.train_step(*self.gather(self.order, it, self.batch))


class GraphSteps(Steps):
    """Each step is a replay of a CUDA graph (:class:`fcgpu.cuda.graph.GraphedTrainStep`,
    made by ``build()`` before the first epoch that runs).

    ``configs()`` gives the Solver's optimizer configs, ``epoch()`` its epoch,
    ``lr_steps()`` the rates of the epoch's steps (None without a per-step schedule)
    and ``record(loss)`` keeps a step's loss (a device scalar)."""

    def __init__(self, build, configs, epoch, lr_steps, record):
        super().__init__(None, None)
        self.build, self.configs, self.epoch = build, configs, epoch
        self.lr_steps, self.record = lr_steps, record
        self.graph = None

    def begin_epoch(self, perm):
        if self.graph is None:
            self.graph = self.build()
        self.graph.begin_epoch(perm, self.configs(), epoch=self.epoch(),
                               lr_steps=self.lr_steps())

    def step(self, it):
        self.record(self.graph.step())

    def end_epoch(self):
        self.graph.sync_out(self.configs())  # t, dropout_step: the host mirrors

    def close(self):
        if self.graph is not None:  # (steps ran through the graph in this call)
            self.graph.sync_out(self.configs())


def graph_step(previous, model, update_rule, X, y, batch_size, per_epoch, augment,
               scheduled, ema=None):
    """The CUDA-graph step for this data and batch layout: ``previous`` (a
    :class:`~fcgpu.cuda.graph.GraphedTrainStep` or None) when it was built for the
    same ones, else a new one (``previous`` is closed). ``augment``: None or the
    gather's settings (``mode, pad, image_shape, seed, mean``; ``mix, mix_alpha``);
    ``ema``: None or the Solver's :class:`~fcgpu.solver_ema.WeightEMA`, updated inside
    the step."""
    key = None if augment is None else (augment["mode"], augment["pad"],
                                        augment["image_shape"], augment["seed"],
                                        id(augment["mean"]), augment.get("mix", "none"),
                                        augment.get("mix_alpha"))
    g = previous
    if g is not None and (g.X_source is X and g.y_source is y and g.per_epoch == per_epoch
                          and g.batch == min(batch_size, X.shape[0])
                          and g.augment_key == key and (g.lr_rows is not None) == scheduled
                          and g.ema is ema):
        return g
    from .cuda.graph import GraphedTrainStep
    if g is not None:
        g.close()
    g = GraphedTrainStep(model, update_rule, X, y, batch_size, per_epoch, augment=augment,
                         lr_schedule=scheduled, ema=ema)
    g.augment_key = key
    return g
