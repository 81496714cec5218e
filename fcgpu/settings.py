"""The settings of a training run, each defined and checked in one place.

A :class:`~fcgpu.setting_spec.Setting` is a name, a kind (int, float, bool, str, or a
custom check), a range or a list of choices, and the words of its message.
:data:`SETTINGS` holds one per :class:`fcgpu.train.TrainConfig` field, and the Solver's arguments and the search
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

import os

from . import optim
from .augment_spec import MODES
from .backend import CHOICES as BACKENDS, MATMUL_PRECISIONS
from .mix_spec import MIX, MIX_ALPHA
from .schedules import SCHEDULES
from .setting_spec import DROPOUT, LABEL_SMOOTHING, Setting, positive_ints

__all__ = ["Setting", "SETTINGS", "HYPERPARAMETERS", "RESUME_EXEMPT", "DTYPES", "check"]

DTYPES = ("float32", "float64")


def _image_shape(value):
    why = positive_ints(value)
    return None if why is None else why.replace("must be", "must be a shape of")


def _backend(value):
    ok = isinstance(value, str) and value.strip().lower() in BACKENDS
    return None if ok else "must be one of " + ", ".join(BACKENDS)


def _path(value):
    return None if isinstance(value, (str, os.PathLike)) else "must be a path"


def _settings(*entries):
    return {s.name: s for s in entries}


SETTINGS = _settings(
    Setting("hidden_dims", tuple, rule=positive_ints, help="hidden layer sizes"),
    Setting("weight_scale", float, low=0, low_open=True, help="std of the initial weights"),
    Setting("batchnorm", bool, help="batch normalization"),
    DROPOUT,
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
    LABEL_SMOOTHING,
    MIX,
    MIX_ALPHA,
    Setting("schedule", str, choices=SCHEDULES,
            help="learning-rate schedule: step (lr_decay per epoch), cosine or onecycle"),
    Setting("warmup_epochs", float, low=0, optional=True,
            help="cosine: linear warmup epochs; onecycle: the epoch of the peak"),
    Setting("ema_decay", float, low=0, high=1, low_open=True, high_open=True, optional=True,
            help="decay of the moving average of the weights that is evaluated and kept "
                 "(None: off; fcgpu.solver_ema)"),
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
