"""One training run of the standard CIFAR-10 net: config in, metrics out.

``fcgpu train`` and ``fcgpu search`` both go through :func:`run_training`.
:class:`TrainConfig`'s defaults are the course's final run: 3 x 500 hidden units,
batchnorm, dropout keep 0.8, Adam 5e-3 with lr decay 0.9 per epoch, batch 490, 17
epochs, 49000/1000 split (the ``course`` preset). :data:`PRESETS` holds named recipes;
``fcgpu train`` starts from :data:`DEFAULT_PRESET` (``--preset`` names another) and
every flag still overrides it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, RunInterrupted, StorageError, TrainingStopped
from .optim import RULES
from .settings import SETTINGS

__all__ = ["TrainConfig", "PRESETS", "DEFAULT_PRESET", "from_preset", "describe_preset",
           "run_training", "load_data"]

# Named recipes: TrainConfig fields that differ from its defaults (the course's run).
# Measured over seeds in docs/presets.md; `augmented` is the default.
PRESETS = {
    "course": {},
    # tuned with `fcgpu search` on the validation split (docs/presets.md): the net and
    # epochs that fit in about 3x the course run's wall time, random flips, a little
    # label smoothing, one-cycle Adam
    "augmented": dict(hidden_dims=(1024, 1024, 1024), dropout=0.9, augment="flip",
                      label_smoothing=0.05, schedule="onecycle", lr_decay=1.0,
                      learning_rate=3.2e-3, epochs=20),
    # the longest recipe: wider, crops as well as flips, five times the epochs
    "best": dict(hidden_dims=(2048, 2048, 2048), dropout=0.9, augment="crop",
                 label_smoothing=0.05, schedule="onecycle", lr_decay=1.0,
                 learning_rate=2e-3, epochs=100),
}
DEFAULT_PRESET = "augmented"


@dataclass
class TrainConfig:
    hidden_dims: tuple = (500, 500, 500)
    weight_scale: float = 4e-2
    batchnorm: bool = True
    dropout: float = 0.8          # keep probability; 1 (or 0) means none
    update_rule: str = "adam"
    learning_rate: float = 5e-3
    lr_decay: float = 0.9
    reg: float = 0.0
    batch_size: int = 490
    epochs: int = 17
    num_train: int | None = 49000  # the first M training examples (None: all of an .npz)
    num_val: int = 1000           # validation is always train[49000:50000]
    seed: int = 0
    backend: str = "auto"
    data: str | None = None
    dtype: str = "float32"
    cuda_graph: bool = False      # capture the training step as a CUDA graph (CuPy only)
    matmul_precision: str = "highest"  # 'high': TF32 float32 products on the GPU (cc >= 8.0)
    image_shape: tuple | None = None  # an .npz's image_shape (C, H, W), for augmentation
    augment: str = "none"         # 'none' | 'flip' | 'crop' (crop includes flip)
    pad: int = 4                  # crop padding, pixels per side
    label_smoothing: float = 0.0
    mix: str = "none"             # 'none' | 'mixup' | 'cutmix' (after the gather)
    mix_alpha: float = 1.0        # the mixing weight ~ Beta(mix_alpha, mix_alpha)
    schedule: str = "step"        # 'step' (lr_decay per epoch) | 'cosine' | 'onecycle'
    warmup_epochs: float | None = None  # cosine: linear warmup; onecycle: the peak (0.3 run)
    ema_decay: float | None = None  # evaluate and keep a moving average of the weights
    preset: str = "course"        # the recipe the fields started from (a label)

    def __post_init__(self):
        """Each field checked by its :data:`fcgpu.settings.SETTINGS` entry, then the
        checks that involve two fields; a bad value raises ConfigError."""
        for name, setting in SETTINGS.items():
            setting.check(getattr(self, name))
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.image_shape is not None:
            self.image_shape = tuple(int(v) for v in self.image_shape)
        if self.preset not in PRESETS:
            raise ConfigError("preset must be one of %s, got %r"
                              % (", ".join(PRESETS), self.preset))
        if self.schedule != "step" and self.lr_decay != 1.0:
            raise ConfigError("lr_decay %r is the 'step' schedule's; schedule %r sets every "
                              "step's rate (use lr_decay 1)" % (self.lr_decay, self.schedule))
        if self.warmup_epochs is not None and not self.warmup_epochs < max(self.epochs, 1):
            raise ConfigError("warmup_epochs must be in [0, epochs), got %r"
                              % self.warmup_epochs)
        from .data_npz import is_npz
        if is_npz(self.data):
            return
        if self.num_train is None:
            self.num_train = 49000
        if self.num_train > 49000 or self.num_val > 1000:
            raise ConfigError("num_train must be <= 49000 and num_val <= 1000 (validation is "
                              "train[49000:50000]), got %d and %d"
                              % (self.num_train, self.num_val))

    def schedule_options(self, steps_per_epoch):
        """The Solver's ``(lr_schedule, lr_schedule_options)`` for this config."""
        if self.schedule == "step":
            return None, {}
        total = max(self.epochs, 1) * steps_per_epoch
        if self.schedule == "cosine":
            warm = round((self.warmup_epochs or 0) * steps_per_epoch)
            return "cosine", {"warmup_steps": min(warm, total - 1)}
        if self.warmup_epochs is None:
            return "onecycle", {}
        return "onecycle", {"pct_start": self.warmup_epochs / max(self.epochs, 1)}

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        if self.image_shape is not None:
            d["image_shape"] = list(self.image_shape)
        return d


def describe_preset(name):
    """A preset in a few words: ``3 x 1024, keep 0.9, random flips, ...``."""
    c = from_preset(name)
    dims = c.hidden_dims
    parts = ["%d x %d" % (len(dims), dims[0]) if len(set(dims)) == 1
             else "x".join(map(str, dims))]
    if not c.batchnorm:
        parts.append("no batchnorm")
    parts.append("keep %g" % c.dropout if 0 < c.dropout < 1 else "no dropout")
    if c.augment != "none":
        parts.append("random flips" if c.augment == "flip"
                     else "random crops (pad %d) and flips" % c.pad)
    if c.label_smoothing:
        parts.append("label smoothing %g" % c.label_smoothing)
    if c.reg:
        parts.append("L2 %g" % c.reg)
    rule = RULES[c.update_rule].title
    if c.schedule == "step":
        parts.append("%s %g decayed %g per epoch" % (rule, c.learning_rate, c.lr_decay))
    else:
        parts.append("%s %s peaking at %g" % (
            {"onecycle": "one-cycle", "cosine": "cosine"}[c.schedule], rule, c.learning_rate))
    parts += ["weight average %g" % c.ema_decay] if c.ema_decay is not None else []
    parts.append("batch %d, %d epochs" % (c.batch_size, c.epochs))
    return ", ".join(parts)


def from_preset(name, **overrides):
    """``TrainConfig`` of the preset ``name`` with ``overrides`` (None values ignored)."""
    if name not in PRESETS:
        raise ConfigError("unknown preset %r; choose one of %s" % (name, ", ".join(PRESETS)))
    fields = dict(PRESETS[name], preset=name)
    given = {k: v for k, v in overrides.items() if v is not None}
    fields.update(given)
    fields["num_train"] = overrides.get("num_train")  # (None: all of an .npz, 49000 of CIFAR)
    if fields.get("schedule", "step") != "step" and "lr_decay" not in given:
        fields["lr_decay"] = 1.0  # (the per-epoch decay is the 'step' schedule's)
    return TrainConfig(**fields)


_VAL_START = 49000  # CIFAR-10's validation split starts here (train[49000:50000])


def _raw_cifar(cfg):
    """CIFAR-10 for an augmented run: X_train as the raw uint8 images (the gather
    converts them and subtracts ``mean``, the training split's mean image), X_val and
    X_test mean-subtracted float32, the same numbers as get_CIFAR10_data's."""
    from . import data
    X_all, y_all, X_te, y_te = data.cifar10_arrays(cfg.data)
    split = _VAL_START
    mean = X_all[:split].mean(axis=0, dtype=np.float64).astype(np.float32)

    def centred(x):
        out = np.empty(x.shape, np.float32)
        np.subtract(x, mean, out=out, dtype=np.float32)
        return out
    return {"X_train": X_all[:min(cfg.num_train, split)],
            "y_train": np.array(y_all[:min(cfg.num_train, split)], dtype=np.int64),
            "X_val": centred(X_all[split:split + cfg.num_val]),
            "y_val": np.array(y_all[split:split + cfg.num_val], dtype=np.int64),
            "X_test": centred(X_te), "y_test": np.array(y_te, dtype=np.int64), "mean": mean}


def load_data(cfg, progress=True):
    """The CIFAR-10 splits for ``cfg``: the first ``num_train`` training images, the
    validation images train[49000:49000+num_val], and all 10000 test images.
    An ``.npz`` ``cfg.data`` is the user's own data (:mod:`fcgpu.data_npz`). With
    augmentation on, CIFAR-10's X_train stays uint8 and ``mean`` comes along."""
    from .data_npz import is_npz, load_npz
    if is_npz(cfg.data):
        data = load_npz(cfg.data, batch_size=cfg.batch_size)
        if cfg.num_train is not None and cfg.num_train < len(data["X_train"]):
            data["X_train"] = data["X_train"][:cfg.num_train]
            data["y_train"] = data["y_train"][:cfg.num_train]
        return data
    if cfg.augment != "none" or cfg.mix != "none":
        return _raw_cifar(cfg)
    from .data import get_CIFAR10_data
    data = get_CIFAR10_data(num_training=49000, num_validation=1000, num_test=10000,
                            path=cfg.data)
    if cfg.num_train < 49000:
        data["X_train"] = data["X_train"][:cfg.num_train]
        data["y_train"] = data["y_train"][:cfg.num_train]
    if cfg.num_val < 1000:
        data["X_val"] = data["X_val"][:cfg.num_val]
        data["y_val"] = data["y_val"][:cfg.num_val]
    return data


def run_training(cfg, data=None, checkpoint=None, resume=False, progress=True, verbose=True,
                 epoch_callback=None, out=None, stop=None):
    """Train per ``cfg``; returns the metrics dict (see ``fcgpu train --metrics``).

    ``checkpoint``: a path written atomically after every epoch (a safetensors file,
    :mod:`fcgpu.checkpoint`); with ``resume`` an existing one is loaded first and
    training continues where it stopped. A checkpoint that is corrupt, an old pickle,
    or from other settings raises :class:`fcgpu.checkpoint.CheckpointError` before
    anything is trained or written. A checkpoint that cannot be written stops the run
    at that epoch's end: :class:`~fcgpu.errors.TrainingStopped` (a StorageError naming
    the file and the cause) carries the metrics so far; the file keeps its last epoch.
    ``epoch_callback(solver)`` runs after each epoch (Optuna pruning uses it).
    ``stop``: None, or what stops the run on a signal (``fcgpu train``'s
    ``StopSignals``): ``stop.deferred()`` is a context manager held while the Solver
    trains and ``stop.check()`` runs after every step; a
    :class:`~fcgpu.errors.RunInterrupted` leaving the run gets its ``epoch``, ``epochs``
    and ``saved_epoch`` filled in.
    CuPy's out-of-memory errors leave as :class:`~fcgpu.errors.DeviceOutOfMemory`.
    ``cfg.matmul_precision`` applies for the run (the previous setting comes back).
    """
    from . import backend

    out = out or sys.stdout
    xp = backend.set_backend(cfg.backend)
    previous = backend.set_matmul_precision(cfg.matmul_precision)
    try:
        return _run(cfg, xp, data, dict(checkpoint=checkpoint, resume=resume,
                                        progress=progress, verbose=verbose,
                                        epoch_callback=epoch_callback, out=out, stop=stop))
    except Exception as exc:
        oom = backend.device_out_of_memory(exc, _memory_hint(cfg))
        if oom is None:
            raise
        raise oom from exc
    finally:
        backend.set_matmul_precision(previous)


def _memory_hint(cfg):
    """What to make smaller when the GPU's memory runs out (the data live on it)."""
    return ("try a smaller --batch-size (now %d) or --num-train (now %s), or narrower "
            "--hidden layers (now %s)" % (cfg.batch_size, "all" if cfg.num_train is None
                                          else cfg.num_train,
                                          ",".join(map(str, cfg.hidden_dims))))


def _matmul_note(cfg, xp):
    """The precision the products ran in, in words, and whether TF32 was used."""
    dtype = np.dtype(cfg.dtype)
    if xp is np:
        note = ("matmul precision %s: the NumPy backend computes %s products in %s whatever "
                "the setting (TF32 is a GPU format)" % (cfg.matmul_precision, dtype, dtype))
        return note, False
    from .cuda.blas import tf32_enabled
    tf32 = tf32_enabled(dtype)
    if tf32:
        return "matmul precision high: float32 products in TF32", True
    why = ("float64 products" if dtype != np.float32 else
           "this GPU has no TF32 (compute capability 8.0 or later needed)"
           if cfg.matmul_precision == "high" else "float32 products in float32")
    return "matmul precision %s: %s" % (cfg.matmul_precision, why), False


def _run(cfg, xp, data, opts):
    """The run of :func:`run_training`; ``opts`` holds its keyword arguments."""
    from . import backend

    if cfg.cuda_graph and xp is np:
        raise ConfigError("--cuda-graph captures the training step as a CUDA graph, which "
                          "needs the GPU backend; the backend here is numpy (%s)"
                          % (backend.cupy_status()[1] or "selected explicitly"))
    if data is None:
        data = load_data(cfg, progress=opts["progress"])
    if data.get("image_shape") is not None and cfg.image_shape is None:
        cfg = dataclasses.replace(cfg, image_shape=data["image_shape"])

    def log(msg):
        if opts["verbose"]:
            print(msg, file=opts["out"], flush=True)

    checkpoint, stop = opts["checkpoint"], opts["stop"]
    saved = {"epoch": None}  # the epoch the checkpoint file holds, as far as this run knows
    solver = _solver(cfg, xp, data, _epoch_end(cfg, checkpoint, log, opts["epoch_callback"],
                                               saved), opts["progress"], stop)
    resumed_from = None
    if opts["resume"] and checkpoint and os.path.exists(checkpoint):
        resumed_from = saved["epoch"] = _resume(solver, cfg, checkpoint)
        log("resumed from %s at epoch %d" % (checkpoint, solver.epoch))
    blas, tf32 = _log_start(cfg, xp, solver, log)
    t0 = time.perf_counter()
    stopped = None
    try:  # (a signal: where the run was, told with it)
        try:
            with stop.deferred() if stop is not None else contextlib.nullcontext():
                solver.train()
        except TrainingStopped as exc:
            stopped = exc
        metrics = _metrics(cfg, xp, solver, data, dict(
            blas=blas, tf32=tf32, wall_seconds=time.perf_counter() - t0,
            resumed_from_epoch=resumed_from))
    except RunInterrupted as exc:
        exc.epoch, exc.epochs, exc.saved_epoch = solver.epoch, cfg.epochs, saved["epoch"]
        raise
    test = metrics["test_acc"]
    log("%s: val acc %.4f, test acc %s, %.0f samples/s" % (
        "done" if stopped is None else "stopped after epoch %d/%d" % (solver.epoch, cfg.epochs),
        metrics["val_acc"], "n/a" if test is None else "%.4f" % test,
        metrics["samples_per_s"] or 0))
    if stopped is not None:
        metrics["stopped"] = str(stopped)
        stopped.metrics = metrics
        raise stopped
    return metrics


def _epoch_end(cfg, checkpoint, log, epoch_callback, saved):
    """The Solver's epoch callback: the checkpoint (with the run's config; ``saved``
    keeps the epoch it holds), a line, then the caller's callback. A checkpoint that
    cannot be written stops the run: :class:`TrainingStopped`."""
    from .checkpoint import save as save_checkpoint

    def on_epoch(solver):
        if checkpoint:
            state = solver.state_dict()
            state["train_config"] = cfg.to_dict()
            try:
                save_checkpoint(state, checkpoint)
            except StorageError as exc:
                held = ("holds no epoch yet" if saved["epoch"] is None
                        else "still holds epoch %d" % saved["epoch"])
                raise TrainingStopped("%s; training stopped after epoch %d/%d, whose "
                                      "checkpoint could not be saved (%s %s)"
                                      % (exc, solver.epoch, solver.num_epochs, checkpoint,
                                         held), saved_epoch=saved["epoch"]) from exc
            saved["epoch"] = solver.epoch
        raw = "" if solver.ema is None else " (raw weights %.4f)" % (
            solver.ema.raw_val_acc_history[-1])  # (--ema: val acc is the average's)
        log("epoch %2d/%d  loss %.4f  train acc %.4f  val acc %.4f%s  (%.1f s)"
            % (solver.epoch, solver.num_epochs, solver.loss_history[-1],
               solver.train_acc_history[-1], solver.val_acc_history[-1], raw,
               solver.epoch_seconds[-1]))
        if epoch_callback is not None:
            epoch_callback(solver)
    return on_epoch


def _solver(cfg, xp, data, on_epoch, progress, stop=None):
    """The net and the Solver of ``cfg`` on ``data`` (``stop.check`` after each step)."""
    from .fc_net import FullyConnectedNet
    from .solver import Solver
    model = FullyConnectedNet(cfg.hidden_dims, input_dim=int(np.prod(data["X_train"].shape[1:])),
                              num_classes=int(data.get("num_classes", 10)), dropout=cfg.dropout,
                              use_batchnorm=cfg.batchnorm, reg=cfg.reg,
                              weight_scale=cfg.weight_scale, dtype=np.dtype(cfg.dtype),
                              seed=cfg.seed, fresh_masks=True, xp=xp,
                              label_smoothing=cfg.label_smoothing)
    per_epoch = max(len(data["X_train"]) // cfg.batch_size, 1)
    schedule, schedule_options = cfg.schedule_options(per_epoch)
    extra = dict(mix=cfg.mix, mix_alpha=cfg.mix_alpha)
    if cfg.augment != "none" or cfg.mix != "none":
        flag = ("--augment %s" % cfg.augment) if cfg.augment != "none" else "--mix %s" % cfg.mix
        if cfg.image_shape is None and np.ndim(data["X_train"]) != 4:
            raise ConfigError("%s needs images: an .npz with image_shape [C, H, W] "
                              "(docs/data.md)" % flag)
        if cfg.image_shape is not None and len(cfg.image_shape) != 3:
            raise ConfigError("%s needs image_shape [C, H, W], the data's is %s"
                              % (flag, list(cfg.image_shape)))
        extra.update(augment=cfg.augment, pad=cfg.pad, image_shape=cfg.image_shape,
                     mean=data.get("mean"))
    return Solver(model, data, update_rule=cfg.update_rule,
                  optim_config={"learning_rate": cfg.learning_rate}, lr_decay=cfg.lr_decay,
                  batch_size=cfg.batch_size, num_epochs=cfg.epochs, num_train_samples=1000,
                  num_val_samples=None, verbose=False, seed=cfg.seed, progress=progress,
                  epoch_callback=on_epoch, cuda_graph=cfg.cuda_graph,
                  stop_check=None if stop is None else stop.check,
                  lr_schedule=schedule, lr_schedule_options=schedule_options,
                  ema_decay=cfg.ema_decay, **extra)


def _resume(solver, cfg, checkpoint):
    """Load ``checkpoint`` into ``solver`` after every check (file, train config, model,
    settings: :func:`fcgpu.checkpoint.check_resume`) passed; returns the epoch."""
    from .checkpoint import CheckpointError, load as load_checkpoint
    state = load_checkpoint(checkpoint)
    try:
        solver.load_state_dict(state, train_config=cfg)
    except CheckpointError as e:
        raise CheckpointError("cannot resume from it: %s" % e.problem, checkpoint) from e
    return solver.epoch


def _log_start(cfg, xp, solver, log):
    """The BLAS, the matmul precision and the run in one line each; returns the BLAS
    summary (NumPy backend) and whether TF32 runs."""
    from . import backend
    blas = None
    if xp is np:
        from .cpu.blas import blas_summary
        blas, warning = blas_summary()
        log(blas)
        if warning:
            print("fcgpu: warning: " + warning, file=sys.stderr)
    precision_note, tf32 = _matmul_note(cfg, xp)
    if cfg.matmul_precision != "highest" or xp is not np:
        log(precision_note)
    log("training %s on %s (%s%s): %d train / %d val images, %d epochs of %d steps"
        % ("x".join(map(str, cfg.hidden_dims)), backend.device_name(xp), backend.get_backend(),
           ", CUDA graph" if cfg.cuda_graph else "",
           solver.X_train.shape[0], solver.X_val.shape[0], cfg.epochs,
           max(solver.X_train.shape[0] // cfg.batch_size, 1)))
    return blas, tf32


def _metrics(cfg, xp, solver, data, extra):
    """The run's metrics (``fcgpu train --metrics``); ``extra`` adds ``blas``, ``tf32``,
    ``wall_seconds`` and ``resumed_from_epoch``."""
    from . import backend
    from .solver_ema import ema_metrics
    # solver.train() leaves the best-validation parameters in the model
    val_acc = solver.check_accuracy(solver.X_val, solver.y_val)
    test_acc = None
    if "X_test" in data:
        test_acc = solver.check_accuracy(data["X_test"], data["y_test"], batch_size=1000)
    train_acc = solver.check_accuracy(solver.X_train, solver.y_train, num_samples=10000,
                                      batch_size=1000)
    steps = max(solver.X_train.shape[0] // cfg.batch_size, 1)
    per_epoch = [steps * cfg.batch_size / s for s in solver.epoch_seconds if s > 0]
    return {
        "backend": backend.get_backend(),
        "device": backend.device_name(xp),
        "blas": extra["blas"],
        "matmul_precision": cfg.matmul_precision,
        "tf32": extra["tf32"],
        "epochs": solver.epoch,
        "train_acc": train_acc,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "best_val_acc": solver.best_val_acc,
        "samples_per_s": statistics.median(per_epoch) if per_epoch else None,
        "epoch_seconds": list(solver.epoch_seconds),
        "wall_seconds": extra["wall_seconds"],
        "resumed_from_epoch": extra["resumed_from_epoch"],
        "train_acc_history": list(solver.train_acc_history),
        "val_acc_history": list(solver.val_acc_history),
        "loss_history": list(solver.loss_history),
        "ema": ema_metrics(solver.ema, solver.val_acc_history),
        "config": cfg.to_dict(),
        "preset": cfg.preset,
        "augment": {"mode": cfg.augment, "pad": cfg.pad, "image_shape": list(
            solver.image_shape) if solver.image_shape is not None else None},
    }

