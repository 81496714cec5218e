"""The Solver's keyword arguments: taken, each checked once, and the training settings
a resume must share.

:class:`SolverOptions` is the part of :class:`fcgpu.solver.Solver` that reads its
keyword arguments (``update_rule``, ``batch_size``, ``augment``, ``lr_schedule``...),
checks each with its :data:`fcgpu.settings.SETTINGS` entry (the ranges ``fcgpu train``
uses), and says which minibatch gather and learning-rate schedule they ask for.
"""
from __future__ import annotations

import numpy as np

from . import optim
from . import schedules
from .augment_spec import DEFAULT_PAD, check_image_shape, check_input_dtype, check_pad
from .errors import ConfigError, DataError
from .random import check_seed
from .settings import HYPERPARAMETERS, SETTINGS

__all__ = ["SolverOptions"]

# the Solver's own arguments, as the settings they are (fcgpu.settings.SETTINGS)
_ARGUMENTS = {"batch_size": "batch_size", "num_epochs": "epochs", "lr_decay": "lr_decay",
              "augment": "augment", "ema_decay": "ema_decay", "mix": "mix",
              "mix_alpha": "mix_alpha"}


def _spec_check(error, check, *args):
    """``check(*args)`` (an :mod:`fcgpu.augment_spec` check) with its ValueError or
    TypeError raised as ``error`` (the Solver's arguments are the user's input)."""
    try:
        return check(*args)
    except (TypeError, ValueError) as e:
        raise error("Solver: %s" % e) from None



class SolverOptions:
    """The Solver's options (see :class:`fcgpu.solver.Solver` for each)."""

    def _take_arguments(self, kwargs):
        """The keyword arguments, each checked once (:data:`fcgpu.settings.SETTINGS`)."""
        self.update_rule_name = kwargs.pop("update_rule", "sgd")
        self.optim_config = kwargs.pop("optim_config", {})
        self.lr_decay = kwargs.pop("lr_decay", 1.0)
        self.batch_size = int(kwargs.pop("batch_size", 100))
        self.num_epochs = int(kwargs.pop("num_epochs", 10))
        self.num_train_samples = kwargs.pop("num_train_samples", 1000)
        self.num_val_samples = kwargs.pop("num_val_samples", None)
        self.checkpoint_name = kwargs.pop("checkpoint_name", None)
        self.print_every = int(kwargs.pop("print_every", 10))
        self.verbose = kwargs.pop("verbose", True)
        self.seed = kwargs.pop("seed", None)
        self.progress = kwargs.pop("progress", False)
        self.epoch_callback = kwargs.pop("epoch_callback", None)
        self.stop_check = kwargs.pop("stop_check", None)
        self.out = kwargs.pop("out", None)
        self.cuda_graph = bool(kwargs.pop("cuda_graph", False))
        self.augment = kwargs.pop("augment", "none")
        self.pad = kwargs.pop("pad", DEFAULT_PAD)
        self.image_shape = kwargs.pop("image_shape", None)
        self.augment_seed = kwargs.pop("augment_seed", None)
        self.mean = kwargs.pop("mean", None)
        self.lr_schedule = kwargs.pop("lr_schedule", None)
        self.lr_schedule_options = dict(kwargs.pop("lr_schedule_options", None) or {})
        self.ema_decay = kwargs.pop("ema_decay", None)
        self.mix = kwargs.pop("mix", "none")
        self.mix_alpha = kwargs.pop("mix_alpha", 1.0)
        if kwargs:
            raise ConfigError("Solver: unrecognized arguments %s" % ", ".join(sorted(kwargs)))
        if callable(self.update_rule_name):
            self.update_rule = self.update_rule_name
        else:
            SETTINGS["update_rule"].check(self.update_rule_name, "Solver: update_rule")
            self.update_rule = optim.RULES[self.update_rule_name].update
        for arg, name in _ARGUMENTS.items():
            SETTINGS[name].check(getattr(self, arg), "Solver: " + arg)
        if self.print_every < 1:
            raise ConfigError("Solver: print_every must be >= 1, got %d" % self.print_every)
        for key, value in self.optim_config.items():
            if key in HYPERPARAMETERS:
                HYPERPARAMETERS[key].check(value, "Solver: optim_config[%r]" % key)

    # ------------------------------------------------------------- options

    def _gathers(self):
        """Whether minibatches come from the augmenting gather (else the plain one);
        mixing (``mix``) works on the gather's batch."""
        return self.augment != "none" or self.mean is not None or self.mix != "none"

    def _scheduled(self):
        """Whether the learning rate is set per step from a schedule."""
        return self.lr_schedule not in (None, "step")

    def _check_schedule(self, num_train):
        if self.lr_schedule is not None:
            SETTINGS["schedule"].check(self.lr_schedule, "Solver: lr_schedule")
        if not self._scheduled():
            if self.lr_schedule_options:
                raise ConfigError("Solver: lr_schedule_options need lr_schedule 'cosine' or "
                                  "'onecycle'")
            return
        if self.lr_decay != 1.0:
            raise ConfigError("Solver: lr_decay=%r is the 'step' schedule's; lr_schedule=%r "
                              "sets every step's rate" % (self.lr_decay, self.lr_schedule))
        lr = self.optim_config.get("learning_rate")
        if lr is None:
            raise ConfigError("Solver: lr_schedule=%r needs optim_config['learning_rate'] "
                              "(the peak rate)" % self.lr_schedule)
        total = self.num_epochs * max(num_train // self.batch_size, 1)
        schedules.lr_at(self.lr_schedule, 0, max(total, 1), lr,
                        **self.lr_schedule_options)  # checks the options

    def _check_augment(self, X):
        if not self._gathers():
            if self.image_shape is not None:
                _spec_check(ConfigError, check_image_shape, self.image_shape,
                            int(np.prod(X.shape[1:])))
            return
        if self.image_shape is None:
            if X.ndim != 4:
                what = "augment=%r" % self.augment if self.mix == "none" else "mix=%r" % self.mix
                raise ConfigError("Solver: %s needs image_shape (C, H, W) for X_train rows of "
                                  "%d values" % (what, int(np.prod(X.shape[1:]))))
            self.image_shape = tuple(int(v) for v in X.shape[1:])
        self.image_shape = _spec_check(ConfigError, check_image_shape, self.image_shape,
                                       int(np.prod(X.shape[1:])))
        self.pad = _spec_check(ConfigError, check_pad, self.pad, self.augment, self.image_shape)
        _spec_check(DataError, check_input_dtype, X.dtype, "X_train")
        if self.augment_seed is None:
            self.augment_seed = (self.seed if self.seed is not None
                                 else int(np.random.SeedSequence().entropy) % (1 << 64))
        self.augment_seed = _spec_check(ConfigError, check_seed, self.augment_seed,
                                        "augment_seed")

    def _check_mix(self):
        """A model trained with ``mix`` must take the mixed targets: ``loss(X, y, mix=...)``."""
        if self.mix == "none":
            return
        import inspect
        try:
            takes = "mix" in inspect.signature(self.model.loss).parameters
        except (TypeError, ValueError):
            takes = False
        if not takes:
            raise ConfigError("Solver: mix=%r needs a model whose loss(X, y, mix=(y2, lam)) "
                              "takes mixed targets, as FullyConnectedNet's does" % self.mix)

    def _settings(self):
        """The training settings a resume must share (the checkpoint's 'settings')."""
        return {"augment": self.augment, "pad": int(self.pad),
                "image_shape": None if self.image_shape is None else list(self.image_shape),
                "augment_seed": self.augment_seed, "mean": self.mean is not None,
                "lr_schedule": self.lr_schedule,
                "lr_schedule_options": dict(self.lr_schedule_options),
                "label_smoothing": float(getattr(self.model, "label_smoothing", 0.0)),
                "ema_decay": None if self.ema_decay is None else float(self.ema_decay),
                "mix": self.mix, "mix_alpha": float(self.mix_alpha)}
