"""One trial: the data a worker loads once, and the Optuna objective that trains a
drawn configuration, reports every epoch to the pruner, and turns a NaN loss or an
out-of-memory error into a failed trial with its reason."""
from __future__ import annotations

import contextlib
import os
import socket
import sys

from .space import suggest_config
from .storage import storage_gone


class TrialFailed(Exception):
    """A trial that failed for a reason the search survives (NaN loss, out of memory)."""


class TrialAbandoned(BaseException):
    """The trial's own storage call found the storage gone (a lost connection), or the
    trial already finished by another worker (marked FAIL when its heartbeat went
    stale); ``cause`` is that error. A ``BaseException``, so that it leaves Optuna's
    ``optimize`` without the trial being told: the tell would fail on the lost
    connection, or, with the server back, record the trial FAIL with no retry. The
    worker settles the trial once the storage answers (:mod:`fcgpu.search.recovery`)."""

    def __init__(self, cause):
        super().__init__(" ".join(str(cause).split()))
        self.cause = cause


def _is_oom(exc):
    for cls in type(exc).__mro__:
        if cls.__name__ in ("OutOfMemoryError", "MemoryError"):
            return True
    text = str(exc)
    return type(exc).__name__ in ("CUDARuntimeError", "CUBLASError", "CUDADriverError") and (
        "out of memory" in text.lower() or "ALLOC_FAILED" in text
        or "MemoryAllocation" in text)


def _free_device_memory():
    import gc
    from ..backend import free_cached_memory
    gc.collect()
    free_cached_memory()


def load_search_data(settings, progress=False):
    """The training and validation splits, loaded once per worker (no test split: the
    search never looks at it)."""
    import numpy as np
    from .. import train as _train
    cfg = _train.TrainConfig(num_train=settings.num_train, data=settings.data)
    data = _train.load_data(cfg, progress=progress)
    data = {k: v for k, v in data.items() if k not in ("X_test", "y_test")}
    # own the slices, so the full training array can be freed
    return {k: (np.array(v) if getattr(v, "base", None) is not None else v)
            for k, v in data.items()}


def prefetch_data(settings):
    """Download/decode/cache CIFAR-10 once before several workers read it."""
    from ..data import get_CIFAR10_data
    get_CIFAR10_data(num_training=1, num_validation=0, num_test=0, path=settings.data)


def _worker_name():
    return "%s:%d" % (socket.gethostname(), os.getpid())


def make_objective(settings, data, out=None):
    """The Optuna objective: validation accuracy of one training run."""
    import numpy as np
    import optuna
    from ..errors import NonFiniteLossError
    from ..train import run_training
    out = out or sys.stdout

    def objective(trial):
        try:
            return train_trial(trial)
        except Exception as exc:
            if storage_gone(exc):
                raise TrialAbandoned(exc) from exc
            raise

    def train_trial(trial):
        cfg = suggest_config(trial, settings.space, epochs=settings.epochs,
                             num_train=settings.num_train, seed=settings.train_seed,
                             backend=settings.backend, data=settings.data)
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("worker", _worker_name())
        trial.set_user_attr("run", settings.run_id)
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
        if gpu is not None:
            trial.set_user_attr("cuda_visible_devices", gpu)

        def on_epoch(solver):
            acc = float(solver.val_acc_history[-1])
            trial.report(acc, solver.epoch)
            # pruning after the last epoch would only throw a finished run away
            if solver.epoch < cfg.epochs and trial.should_prune():
                raise optuna.TrialPruned("pruned at epoch %d (val acc %.4f)"
                                         % (solver.epoch, acc))

        def fail(kind, exc):
            reason = "%s: %s: %s" % (kind, type(exc).__name__, " ".join(str(exc).split()))
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from exc

        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                metrics = run_training(cfg, data=data, progress=False,
                                       verbose=settings.verbose, epoch_callback=on_epoch,
                                       out=out)
        except optuna.TrialPruned:
            raise
        except NonFiniteLossError as exc:
            fail("non-finite loss", exc)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):  # (a storage that is gone: still stop)
                trial.set_user_attr("fail_reason", "interrupted (SIGINT/SIGTERM)")
            raise
        except Exception as exc:
            if storage_gone(exc):
                raise
            if _is_oom(exc):
                _free_device_memory()
                fail("out of memory", exc)
            trial.set_user_attr("fail_reason", "%s: %s" % (type(exc).__name__,
                                                           " ".join(str(exc).split())))
            raise
        trial.set_user_attr("metrics", {k: metrics[k] for k in (
            "train_acc", "best_val_acc", "samples_per_s", "epoch_seconds", "backend",
            "device")})
        return float(metrics["val_acc"])

    return objective
