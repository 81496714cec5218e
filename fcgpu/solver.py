"""``Solver``: the course's training loop, with the data kept where the model lives.

The API is the course framework's (``train()``, ``check_accuracy()``, the histories,
``best_params``). What differs is inside:

* the data are moved once to the model's array module (NumPy or CuPy) and cast to
  the model's dtype; minibatches are gathered there, from one permutation of the
  training set per epoch (drawn on the host from the Solver's seeded generator);
* losses stay on the device and are read at print points and epoch ends only;
* how a step runs (plain rows, the augmenting gather, or with ``cuda_graph=True`` on
  CuPy models the whole step captured once as a CUDA graph and replayed) is chosen
  once per ``train()`` call (:mod:`fcgpu.solver_steps`); the results are those of
  the plain loop;
* a loss that turns NaN or inf stops training with :class:`NonFiniteLossError`; the
  best parameters so far are kept;
* ``state_dict()`` / ``load_state_dict()`` capture everything needed to continue a
  run bit for bit (model, optimizer state, RNG positions, histories);
  ``save_checkpoint()`` / ``load_checkpoint()`` store them as safetensors files
  (:mod:`fcgpu.checkpoint`: arrays and plain data, nothing that can run code),
  written atomically and checked (:func:`fcgpu.checkpoint.check_resume`) before
  anything is loaded;
* the arguments are checked with :data:`fcgpu.settings.SETTINGS`' ranges, the data
  with :mod:`fcgpu.data_checks`.
"""
from __future__ import annotations

import contextlib
import sys
import time

import numpy as np

from . import checkpoint
from . import schedules
from .augment import augment_gather, mix_batch
from .backend import asnumpy, get_array_module, synchronize, to_backend
from .data_checks import check_split
from .errors import ConfigError, NonFiniteLossError
from .layers import labels_checked
from .solver_ema import WeightEMA
from .solver_options import SolverOptions
from .solver_steps import GatherSteps, GraphSteps, PlainSteps, graph_step

__all__ = ["Solver", "NonFiniteLossError", "CheckpointError"]

CheckpointError = checkpoint.CheckpointError

def _host_copy(a):
    """A host (NumPy) array that shares no memory with ``a``."""
    h = asnumpy(a)
    return h.copy() if h is a or h.base is not None else h


def _copy_arrays(obj):
    if isinstance(obj, dict):
        return {k: _copy_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy_arrays(v) for v in obj]
    return np.array(obj) if isinstance(obj, np.ndarray) else obj


class Solver(SolverOptions):
    """Trains a model with minibatch gradient descent.

    ``Solver(model, data, update_rule='sgd', optim_config={}, lr_decay=1.0,
    batch_size=100, num_epochs=10, num_train_samples=1000, num_val_samples=None,
    checkpoint_name=None, print_every=10, verbose=True)``. With ``checkpoint_name``
    the state is saved after every epoch to ``<checkpoint_name>_epoch_<N>.safetensors``
    (:meth:`save_checkpoint`; the course pickled it to ``.pkl``, but a pickle can run
    code when loaded, so fcgpu writes none). fcgpu's own keywords:

    * ``seed``: seeds the minibatch order and accuracy subsamples;
    * ``progress``: show a progress bar per epoch (tqdm);
    * ``epoch_callback(solver)``: called after each epoch's bookkeeping (checkpoints,
      metrics, pruning: it may raise to stop the run);
    * ``stop_check()``: called after every step and after each epoch's bookkeeping; it
      raises to stop the run there (``fcgpu train`` stops on SIGINT/SIGTERM this way:
      the step in progress finishes, the epoch in progress is dropped, and ``epoch``
      stays the last one completed);
    * ``out``: where the verbose lines go (default ``sys.stdout``);
    * ``cuda_graph``: capture the training step (minibatch gather, forward, backward,
      update) as one CUDA graph and replay it (CuPy models only; the update rule must
      have a device kernel: :func:`fcgpu.cuda.graph.supported_rules`, today all of
      :data:`fcgpu.optim.RULES`). Same losses and parameters as
      without, fewer launches and no per-step host work. The augmenting gather below is
      captured too, and so are the per-step schedules (a table of the epoch's rates).

    Augmentation and schedules (defaults: none, the course's behaviour bit for bit):

    * ``augment``: 'none', 'flip' (random horizontal flips) or 'crop' (flips and random
      crops with ``pad`` pixels of padding, default 4): each minibatch is made by
      :func:`fcgpu.augment.augment_gather` from the epoch's permutation, batch index
      and epoch, so a run is reproducible and resumes bit for bit;
    * ``image_shape``: (C, H, W) of a row of X_train (needed when rows are flat;
      taken from X_train's shape when it is (N, C, H, W));
    * ``augment_seed``: the Philox key of the draws (default: the Solver's ``seed``);
    * ``mean``: a mean image subtracted inside the gather, for raw (e.g. uint8)
      X_train, which then stays in its own dtype on the device (X_val is used as
      given, so pass it mean-subtracted);
    * ``lr_schedule``: None or 'step' (the course's per-epoch ``lr_decay``), 'cosine'
      or 'onecycle' (:mod:`fcgpu.schedules`, set before every step from the
      optim_config's ``learning_rate`` as the peak; ``lr_schedule_options`` are the
      schedule's keywords, e.g. ``warmup_steps``, ``pct_start``);
    * ``ema_decay``: None (the course's behaviour) or d in (0, 1): an exponential moving
      average of the weights and batchnorm statistics, updated after every step
      (:mod:`fcgpu.solver_ema`), is what the accuracy checks evaluate and so what
      ``val_acc_history``, ``best_params`` and the kept model hold; ``ema``
      (:class:`~fcgpu.solver_ema.WeightEMA`) keeps it, with the raw weights'
      validation accuracy per check (``ema.raw_val_acc_history``);
    * ``mix``: 'none', 'mixup' or 'cutmix' (:func:`fcgpu.augment.mix_batch`: each
      gathered batch mixed with itself reversed, weights ~ Beta(``mix_alpha``,
      ``mix_alpha``)); the model trains on ``loss(X, y, mix=(y2, lam))``.
    """

    def __init__(self, model, data, **kwargs):
        self.model = model
        self._take_arguments(kwargs)
        xp = getattr(model, "xp", None) or get_array_module(*model.params.values())
        self.xp = xp
        self._check_schedule(int(getattr(data.get("X_train"), "shape", (1,))[0]))
        if self.cuda_graph:
            if xp is np:
                raise ConfigError("Solver: cuda_graph=True captures the training step as a "
                                  "CUDA graph, which needs the model on CuPy (a GPU); this "
                                  "model's parameters are NumPy arrays (backend 'numpy')")
            from .cuda.graph import check_supported
            check_supported(model, self.update_rule_name)
        self._graph_step = None
        dtype = getattr(model, "dtype", None)
        dims = dict(input_dim=getattr(model, "input_dim", None),
                    num_classes=getattr(model, "num_classes", None))
        y_train = check_split(data.get("X_train"), data.get("y_train"), "train", **dims)
        y_val = check_split(data.get("X_val"), data.get("y_val"), "val", **dims)
        self._check_augment(data["X_train"])
        self._check_mix()
        keep = self._gathers() and np.dtype(data["X_train"].dtype) == np.uint8
        self.X_train = to_backend(data["X_train"], xp, None if keep else dtype)
        if self.mean is not None:
            self.mean = to_backend(self.mean, xp)
        self.y_train = to_backend(y_train, xp)
        self.X_val = to_backend(data["X_val"], xp, dtype)
        self.y_val = to_backend(y_val, xp)
        self._reset()

    # ------------------------------------------------------------- state

    def _reset(self):
        self.epoch = 0
        self.best_val_acc = 0
        self.best_params = {}
        self._best_bn = []
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.epoch_seconds = []
        self.rng = np.random.default_rng(self.seed)
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}
        self._pending = []
        self.ema = None if self.ema_decay is None else WeightEMA(self.ema_decay, self.model)

    def state_dict(self):
        """Everything needed to continue training, on the host: NumPy arrays, numbers,
        strings, lists and dicts (what :mod:`fcgpu.checkpoint` stores). The arrays
        are copies: training on does not change a state taken earlier (Adam's
        moments, for one, are updated in place)."""
        self._flush_losses()
        configs = {p: {k: (_host_copy(v) if hasattr(v, "shape") else v) for k, v in c.items()}
                   for p, c in self.optim_configs.items()}
        model_state = _copy_arrays(
            self.model.state_dict() if hasattr(self.model, "state_dict")
            else {"params": {k: asnumpy(v) for k, v in self.model.params.items()}})
        state = {
            "format": checkpoint.SOLVER_STATE,
            "model": model_state,
            "optim_configs": configs,
            "update_rule": self.update_rule_name if isinstance(self.update_rule_name, str)
            else None,
            "lr_decay": self.lr_decay,
            "batch_size": self.batch_size,
            "num_train_samples": self.num_train_samples,
            "num_val_samples": self.num_val_samples,
            "epoch": self.epoch,
            "rng": self.rng.bit_generator.state,
            "best_val_acc": self.best_val_acc,
            "best_params": {k: _host_copy(v) for k, v in self.best_params.items()},
            "best_bn": [{k: _host_copy(v) for k, v in snap.items()} for snap in self._best_bn],
            "loss_history": list(self.loss_history),
            "train_acc_history": list(self.train_acc_history),
            "val_acc_history": list(self.val_acc_history),
            "epoch_seconds": list(self.epoch_seconds),
            "settings": self._settings(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state, train_config=None):
        """Continue from ``state`` (from :meth:`state_dict` or a checkpoint). The whole
        state is checked against the model, the update rule and the training settings
        first (:func:`fcgpu.checkpoint.check_resume`; with ``train_config``, a
        :class:`~fcgpu.train.TrainConfig`, against that run's settings too); on any
        problem a :class:`CheckpointError` is raised and the Solver and model are
        unchanged. The arrays are copied in: ``state`` is not changed by training on."""
        rule = self.update_rule_name if isinstance(self.update_rule_name, str) else None
        checkpoint.check_resume(state, self.model, rule, self._settings(), train_config)
        state = _copy_arrays(state)  # training on must not write into the caller's state
        xp = self.xp
        if hasattr(self.model, "load_state_dict"):
            self.model.load_state_dict(state["model"])
        else:
            self.model.params = {k: to_backend(v, xp) for k, v in state["model"]["params"].items()}
        self.optim_configs = {p: {k: (to_backend(v, xp) if hasattr(v, "shape") else v)
                                  for k, v in c.items()}
                              for p, c in state["optim_configs"].items()}
        self.epoch = int(state["epoch"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.best_val_acc = state["best_val_acc"]
        self.best_params = {k: to_backend(v, xp) for k, v in state["best_params"].items()}
        self._best_bn = [{k: to_backend(v, xp) for k, v in snap.items()}
                         for snap in state["best_bn"]]
        self.loss_history = list(state["loss_history"])
        self.train_acc_history = list(state["train_acc_history"])
        self.val_acc_history = list(state["val_acc_history"])
        self.epoch_seconds = list(state["epoch_seconds"])
        if state.get("settings") is not None:
            self.augment_seed = state["settings"]["augment_seed"]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"], xp, getattr(self.model, "dtype", None))
        self._pending = []

    def save_checkpoint(self, path):
        """Write :meth:`state_dict` to ``path`` atomically, as a safetensors file."""
        checkpoint.save(self.state_dict(), path)

    def load_checkpoint(self, path):
        """Continue from the checkpoint at ``path``. A file that is unreadable,
        corrupt, of an old pickle format, or that does not fit this model raises
        :class:`CheckpointError` (one line naming the file and the problem); the
        Solver, the model and the file are then left as they were."""
        state = checkpoint.load(path)
        try:
            self.load_state_dict(state)
        except CheckpointError as e:
            raise CheckpointError(e.problem, path) from e

    def _save_checkpoint(self):
        if self.checkpoint_name is None:
            return
        self.save_checkpoint("%s_epoch_%d.safetensors" % (self.checkpoint_name, self.epoch))

    # ------------------------------------------------------------- training

    def _print(self, msg):
        if self.verbose:
            print(msg, file=self.out or sys.stdout)

    def _flush_losses(self):
        """Bring the pending device losses to the host; stop on NaN/inf."""
        if not self._pending:
            return
        xp = self.xp
        values = [float(v) for v in asnumpy(xp.stack([xp.asarray(v) for v in self._pending]))]
        self._pending = []
        first = len(self.loss_history)
        self.loss_history.extend(values)
        for k, v in enumerate(values):
            if not np.isfinite(v):
                raise NonFiniteLossError(
                    "training loss became %s at iteration %d (epoch %d); stopping. The best "
                    "parameters so far (val acc %.4f) are kept in best_params and the model. "
                    "Try a smaller learning rate or weight scale."
                    % (v, first + k + 1, self.epoch + 1, self.best_val_acc))

    def _set_lr(self, t, total):
        lr = schedules.lr_at(self.lr_schedule, t, total, self.optim_config["learning_rate"],
                             **self.lr_schedule_options)
        for config in self.optim_configs.values():
            config["learning_rate"] = lr

    def _lr_steps(self, per_epoch, total):
        """The rates of this epoch's steps (the CUDA-graph step's table), or None."""
        if not self._scheduled():
            return None
        first = self.epoch * per_epoch
        return [schedules.lr_at(self.lr_schedule, t, total, self.optim_config["learning_rate"],
                                **self.lr_schedule_options) for t in range(first, first + per_epoch)]

    def _gather(self, order, it, batch):
        Xb, yb = augment_gather(self.X_train, self.y_train, order, it, batch, self.image_shape,
                                self.augment, self.pad, self.augment_seed, self.epoch, self.mean,
                                getattr(self.model, "dtype", np.float32))
        if self.mix == "none":
            return Xb, yb
        _, y2, lam = mix_batch(Xb, yb, it, self.image_shape, self.mix, self.mix_alpha,
                               self.augment_seed, self.epoch)
        return Xb, yb, (y2, lam)

    def _step(self, X_batch, y_batch, mix=None):
        loss, grads = (self.model.loss(X_batch, y_batch) if mix is None
                       else self.model.loss(X_batch, y_batch, mix=mix))
        self._pending.append(loss)
        params = self.model.params
        for p, w in params.items():
            next_w, next_config = self.update_rule(w, grads[p], self.optim_configs[p])
            params[p] = next_w
            self.optim_configs[p] = next_config
        if self.ema is not None:
            self.ema.update(self.model)

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Accuracy of the model on ``(X, y)``, optionally on a random subsample."""
        xp = self.xp
        dtype = getattr(self.model, "dtype", None)
        raw = X is self.X_train and self._gathers()  # (mean not yet subtracted)
        X = X if raw else to_backend(X, xp, dtype)
        y = to_backend(y, xp)
        n = X.shape[0]
        idx = None
        if num_samples is not None and n > num_samples:
            idx = to_backend(self.rng.choice(n, num_samples, replace=False), xp)
            n = num_samples
        if raw:  # the rows as they are, less the mean: the gather with mode 'none'
            idx = to_backend(np.arange(n), xp) if idx is None else idx
        elif idx is not None:
            X, y = X[idx], y[idx]
        correct = None
        for start in range(0, n, batch_size):
            if raw:  # (batch by batch: the float copy of a whole raw split is large)
                Xb, yb = augment_gather(X, y, idx[start:start + batch_size], 0,
                                        min(batch_size, n - start), self.image_shape, "none",
                                        0, 0, 0, self.mean, dtype or np.float32)
            else:
                Xb, yb = X[start:start + batch_size], y[start:start + batch_size]
            scores = self.model.loss(Xb)
            hits = (xp.argmax(scores, axis=1) == yb).sum()
            correct = hits if correct is None else correct + hits
        return float(correct) / n

    def _end_of_epoch_checks(self):
        """Accuracy of the model checked (with ``ema_decay``, the average's: swapped in
        for the checks), and the best parameters; then the raw weights' too."""
        ema = self.ema
        with ema.swapped_in(self.model) if ema is not None else contextlib.nullcontext():
            train_acc = self.check_accuracy(self.X_train, self.y_train,
                                            num_samples=self.num_train_samples)
            rows = self.rng.bit_generator.state  # (where the validation rows are drawn)
            val_acc = self.check_accuracy(self.X_val, self.y_val,
                                          num_samples=self.num_val_samples)
            if val_acc > self.best_val_acc:
                self.best_val_acc = val_acc
                self.best_params = {k: v.copy() for k, v in self.model.params.items()}
                self._best_bn = self._bn_snapshot()
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        raw = "" if ema is None else "; raw weights' val_acc: %f" % self._raw_val_acc(rows)
        self._print("(Epoch %d / %d) train acc: %f; val_acc: %f%s"
                    % (self.epoch, self.num_epochs, train_acc, val_acc, raw))

    def _raw_val_acc(self, rows):
        """The raw weights' validation accuracy, on the rows the average's check used
        (the generator state ``rows`` drew them; it is left where that check left it),
        kept in ``ema.raw_val_acc_history``."""
        after = self.rng.bit_generator.state
        self.rng.bit_generator.state = rows
        acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
        self.rng.bit_generator.state = after
        self.ema.raw_val_acc_history.append(acc)
        return acc

    def _sync(self):
        synchronize(self.xp)

    def train(self):
        """Run (or continue) the optimization; the model ends with ``best_params``.
        (The labels were checked against the model's classes when the Solver was made,
        so the steps' losses do not check them again: :func:`fcgpu.layers.labels_checked`.)"""
        checked = getattr(self.model, "num_classes", None) is not None
        with labels_checked() if checked else contextlib.nullcontext():
            self._train()

    def _train(self):
        per_epoch = max(self.X_train.shape[0] // self.batch_size, 1)
        total = self.num_epochs * per_epoch
        steps = self._steps(per_epoch, total)
        try:
            while self.epoch < self.num_epochs:
                self._run_epoch(steps, per_epoch, total)
                self._finish_epoch()
                self._check_stop()
        finally:
            steps.close()
            self._pending = []
            self.restore_best()

    def _steps(self, per_epoch, total):
        """How this train() call's steps run (:mod:`fcgpu.solver_steps`): chosen once."""
        batch = min(self.batch_size, self.X_train.shape[0])
        if self.cuda_graph:
            return GraphSteps(lambda: self._graphed(per_epoch), lambda: self.optim_configs,
                              lambda: self.epoch, lambda: self._lr_steps(per_epoch, total),
                              lambda loss: self._pending.append(loss))
        if self._gathers():
            return GatherSteps(self._gather, batch, self.xp, self._step)
        return PlainSteps(self.X_train, self.y_train, self.batch_size, self.xp, self._step)

    def _graphed(self, per_epoch):
        """The CUDA-graph step (built on first use, kept across epochs and train()
        calls while the data and the batch layout stay the same)."""
        augment = None
        if self._gathers():
            augment = {"mode": self.augment, "pad": self.pad, "image_shape": self.image_shape,
                       "seed": self.augment_seed, "mean": self.mean, "mix": self.mix,
                       "mix_alpha": self.mix_alpha}
        self._graph_step = graph_step(self._graph_step, self.model, self.update_rule_name,
                                      self.X_train, self.y_train, self.batch_size, per_epoch,
                                      augment, self._scheduled(), self.ema)
        return self._graph_step

    def _run_epoch(self, steps, per_epoch, total):
        """One epoch: its permutation, then its steps with a progress bar (closed
        however the epoch ends)."""
        steps.begin_epoch(self.rng.permutation(self.X_train.shape[0]))
        bar = self._progress_bar(per_epoch)
        try:
            self._epoch_steps(steps, per_epoch, total, bar)
        finally:
            if bar is not None:
                bar.close()

    def _check_stop(self):
        if self.stop_check is not None:
            self.stop_check()

    def _epoch_steps(self, steps, per_epoch, total, bar):
        """The steps of one epoch, timed; the accuracy checks after the very first step
        (as the course does) are not counted in the epoch's time. ``stop_check`` runs
        after every step."""
        sync_every = 1 if self.xp is np else (self.print_every if self.verbose else None)
        scheduled = self._scheduled()
        self._sync()
        start = time.perf_counter()
        for it in range(per_epoch):
            t = self.epoch * per_epoch + it
            if scheduled:
                self._set_lr(t, total)
            steps.step(it)
            if bar is not None:
                bar.update()
            if sync_every and t % sync_every == 0:
                self._flush_losses()
            if self.verbose and t % self.print_every == 0:
                self._print("(Iteration %d / %d) loss: %f"
                            % (t + 1, total, self.loss_history[-1]))
            if t == 0:
                self._sync()
                paused = time.perf_counter()
                self._end_of_epoch_checks()
                start += time.perf_counter() - paused
            self._check_stop()
        steps.end_epoch()
        self._sync()
        self.epoch_seconds.append(time.perf_counter() - start)

    def _finish_epoch(self):
        """The epoch's bookkeeping: losses read, the step schedule's decay, accuracy,
        the best parameters, the checkpoint, the callback."""
        self._flush_losses()
        self.epoch += 1
        if not self._scheduled():
            for config in self.optim_configs.values():
                if "learning_rate" in config:
                    config["learning_rate"] = schedules.step_decay(config["learning_rate"],
                                                                   self.lr_decay)
        self._end_of_epoch_checks()
        self._save_checkpoint()
        if self.epoch_callback is not None:
            self.epoch_callback(self)

    def _progress_bar(self, per_epoch):
        if not self.progress:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=per_epoch, desc="epoch %d/%d" % (self.epoch + 1, self.num_epochs),
                    unit="step", leave=False, file=sys.stderr)

    def _bn_snapshot(self):
        # the running statistics belong to the parameters they were gathered with
        return [{k: v.copy() for k, v in bp.items() if k.startswith("running_")}
                for bp in getattr(self.model, "bn_params", [])]

    def restore_best(self):
        """Put the best-validation parameters (and their batchnorm running
        statistics) into the model."""
        if not self.best_params:
            return
        self.model.params = {k: v.copy() for k, v in self.best_params.items()}
        for bp, snap in zip(getattr(self.model, "bn_params", []), self._best_bn or []):
            bp.update({k: v.copy() for k, v in snap.items()})
