"""Hyperparameter search over the CIFAR-10 net with Optuna: ``fcgpu search``.

The search space is the course notebook's random search (1-3 hidden layers of
100-1000 units, dropout keep 0.5-1.0, learning rate 1e-4..1e-2 log, L2 1e-8..1e-2 log,
weight scale 1e-3..1e-1 log, batch size 100/200/490/1000), overridable from a small
TOML file or ``--param NAME=SPEC`` flags (:func:`build_space`).

A study lives in an Optuna RDB storage: SQLite on one machine, PostgreSQL (or MySQL)
shared by workers on many. Every worker process:

* loads the data once and trains each trial with :func:`fcgpu.train.run_training`,
  reporting the validation accuracy after every epoch so the pruner can stop it;
* records a trial whose loss turns NaN/inf or that runs out of memory as FAIL with the
  reason in the user attribute ``fail_reason``, and goes on with the next trial;
* sends a heartbeat while a trial runs: a trial whose worker was killed (or lost its
  machine) is marked FAIL by the next worker that starts a trial once the grace
  period has passed; nothing else of the study is lost.

``n_trials`` counts the trials one command runs, shared by its ``--workers``
processes through a small locked counter file; rerunning a command adds trials to
the same study (``load_if_exists``). Workers are pinned one per visible GPU
(``CUDA_VISIBLE_DEVICES`` in the child's environment, before anything imports CuPy)
or, on the CPU, split the cores (each pinned to ``cores // K`` of them with as many
BLAS/OpenMP/Numba threads, set before the child imports NumPy).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field

__all__ = [
    "PARAMS", "SearchSettings", "TrialFailed", "default_space", "build_space", "load_space_file",
    "parse_param", "suggest_config", "mask_url", "open_storage", "open_study", "make_sampler",
    "make_pruner", "load_search_data", "make_objective", "run_worker", "run_search",
    "visible_gpus", "plan_workers", "retrain_command", "summarize", "write_report",
    "describe_trial",
]

DEFAULT_STORAGE = "sqlite:///fcgpu-search.db"
DEFAULT_STUDY = "fcgpu"
DEFAULT_N_TRIALS = 20          # when neither --n-trials nor --timeout is given
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
LOST_REASON = ("worker lost: no heartbeat within the grace period (killed, crashed or "
               "disconnected)")

# ----------------------------------------------------------------------- search space

_UPDATE_RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")


def _check_positive(v):
    return None if v > 0 else "must be > 0"


def _check_nonneg(v):
    return None if v >= 0 else "must be >= 0"


def _check_keep(v):
    return None if 0 <= v <= 1 else "is a keep probability, in [0, 1]"


def _check_layers(v):
    return None if 1 <= v <= 20 else "must be in 1..20"


def _check_rule(v):
    return None if v in _UPDATE_RULES else "must be one of " + ", ".join(_UPDATE_RULES)


# name: (type, default spec, check of a single value, help)
PARAMS = {
    "layers": (int, {"low": 1, "high": 3}, _check_layers, "number of hidden layers"),
    "units": (int, {"low": 100, "high": 1000}, _check_positive,
              "units per hidden layer (drawn per layer: units_1, units_2, ...)"),
    "dropout": (float, {"low": 0.5, "high": 1.0}, _check_keep,
                "dropout KEEP probability (1 = no dropout)"),
    "learning_rate": (float, {"low": 1e-4, "high": 1e-2, "log": True}, _check_positive,
                      "learning rate"),
    "reg": (float, {"low": 1e-8, "high": 1e-2, "log": True}, _check_nonneg, "L2 strength"),
    "weight_scale": (float, {"low": 1e-3, "high": 1e-1, "log": True}, _check_positive,
                     "std of the initial weights"),
    "batch_size": (int, {"choices": [100, 200, 490, 1000]}, _check_positive, "minibatch size"),
    "batchnorm": (bool, {"value": True}, lambda v: None, "batch normalization"),
    "update_rule": (str, {"value": "adam"}, _check_rule, "optimizer"),
    "lr_decay": (float, {"value": 0.9}, _check_positive, "learning-rate factor per epoch"),
}
_LOG_BY_DEFAULT = {name for name, (_, spec, _, _) in PARAMS.items() if spec.get("log")}


def default_space():
    """The notebook's search space: ``{name: spec}``, each spec one of
    ``{"low", "high", "log"}`` (a range), ``{"choices": [...]}`` or ``{"value": v}``."""
    return {name: dict(spec) for name, (_, spec, _, _) in PARAMS.items()}


def _coerce(name, value, where):
    kind = PARAMS[name][0]
    bad = ValueError("%s: %s takes %s values, got %r" % (where, name, kind.__name__, value))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false",
                                                       "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            raise bad from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise bad
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad
    return float(value)


def _normalize(name, raw, where):
    """One parameter's spec in canonical form, checked."""
    if name not in PARAMS:
        raise ValueError("%s: unknown search parameter %r (known: %s)"
                         % (where, name, ", ".join(PARAMS)))
    kind, _, check, _ = PARAMS[name]

    def ok(v):
        v = _coerce(name, v, where)
        why = check(v)
        if why:
            raise ValueError("%s: %s = %r %s" % (where, name, v, why))
        return v

    if isinstance(raw, dict):
        keys = set(raw)
        if keys == {"value"}:
            return {"value": ok(raw["value"])}
        if keys == {"choices"}:
            raw = raw["choices"]
            if not isinstance(raw, (list, tuple)):
                raise ValueError("%s: %s.choices must be a list" % (where, name))
        elif keys and keys <= {"low", "high", "log"} and {"low", "high"} <= keys:
            if kind not in (int, float):
                raise ValueError("%s: %s is not numeric: give a value or a list of choices"
                                 % (where, name))
            low, high = ok(raw["low"]), ok(raw["high"])
            log = raw.get("log", name in _LOG_BY_DEFAULT)
            if not isinstance(log, bool):
                raise ValueError("%s: %s.log must be true or false" % (where, name))
            if low > high:
                raise ValueError("%s: %s range has low %r > high %r" % (where, name, low, high))
            if log and low <= 0:
                raise ValueError("%s: %s log range needs low > 0, got %r" % (where, name, low))
            if low == high:
                return {"value": low}
            return {"low": low, "high": high, "log": log}
        else:
            raise ValueError("%s: %s must be a value, a list of choices, or a table with "
                             "low/high[/log], {choices = [...]} or {value = ...}; got keys %s"
                             % (where, name, ", ".join(sorted(keys)) or "none"))
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ValueError("%s: %s has an empty list of choices" % (where, name))
        choices = []
        for v in raw:
            v = ok(v)
            if v not in choices:
                choices.append(v)
        return {"value": choices[0]} if len(choices) == 1 else {"choices": choices}
    return {"value": ok(raw)}


def parse_param(text):
    """``NAME=SPEC`` from the command line: ``LOW:HIGH[:log|:linear]`` is a range,
    ``A,B,C`` a list of choices, anything else a fixed value. Returns ``(name, spec)``."""
    if "=" not in text:
        raise ValueError("--param takes NAME=SPEC (e.g. learning_rate=1e-4:1e-2, "
                         "batch_size=100,200, batchnorm=false), got %r" % text)
    name, spec = (s.strip() for s in text.split("=", 1))
    where = "--param %s" % text
    if name not in PARAMS:
        raise ValueError("%s: unknown search parameter %r (known: %s)"
                         % (where, name, ", ".join(PARAMS)))
    if ":" in spec:
        parts = spec.split(":")
        raw = {"low": parts[0], "high": parts[1]}
        if len(parts) == 3 and parts[2] in ("log", "linear"):
            raw["log"] = parts[2] == "log"
        elif len(parts) != 2:
            raise ValueError("%s: a range is LOW:HIGH, LOW:HIGH:log or LOW:HIGH:linear" % where)
        return name, _normalize(name, raw, where)
    if "," in spec:
        return name, _normalize(name, [s.strip() for s in spec.split(",") if s.strip()], where)
    return name, _normalize(name, spec, where)


def _read_toml(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("--space %s: reading TOML needs Python 3.11+ (tomllib) or the "
                             "tomli package on Python 3.10 (pip install tomli)" % path) from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError("--space %s: not valid TOML: %s" % (path, exc)) from None


def load_space_file(path):
    """Overrides from a TOML file: top-level keys (or a ``[space]`` table) naming the
    parameters of :data:`PARAMS`; see ``docs/search.md`` for the format."""
    doc = _read_toml(path)
    if set(doc) == {"space"} and isinstance(doc["space"], dict):
        doc = doc["space"]
    return {name: _normalize(name, raw, "--space %s" % path) for name, raw in doc.items()}


def build_space(space_file=None, params=()):
    """The default space updated by the TOML file, then by ``--param`` strings."""
    space = default_space()
    if space_file:
        space.update(load_space_file(space_file))
    for text in params or ():
        name, spec = parse_param(text)
        space[name] = spec
    return space


def _suggest(trial, name, spec, kind):
    if "value" in spec:
        return spec["value"]
    if "choices" in spec:
        return trial.suggest_categorical(name, list(spec["choices"]))
    if kind is int:
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))


def suggest_config(trial, space, **fixed):
    """Draw one :class:`~fcgpu.train.TrainConfig` from ``space`` through ``trial``;
    ``fixed`` sets the other fields (epochs, num_train, seed, backend, data)."""
    from .train import TrainConfig

    def get(name, label=None):
        return _suggest(trial, label or name, space[name], PARAMS[name][0])

    layers = get("layers")
    hidden = tuple(get("units", "units_%d" % (i + 1)) for i in range(layers))
    return TrainConfig(hidden_dims=hidden, dropout=get("dropout"),
                       learning_rate=get("learning_rate"), reg=get("reg"),
                       weight_scale=get("weight_scale"), batch_size=get("batch_size"),
                       batchnorm=get("batchnorm"), update_rule=get("update_rule"),
                       lr_decay=get("lr_decay"), **fixed)


# ------------------------------------------------------------------------- settings

@dataclass
class SearchSettings:
    """Everything a worker needs; travels to worker processes as JSON."""
    storage: str = DEFAULT_STORAGE
    study: str = DEFAULT_STUDY
    n_trials: int | None = None
    timeout: float | None = None
    epochs: int = 5
    num_train: int = 49000
    data: str | None = None
    backend: str = "auto"
    sampler: str = "tpe"
    pruner: str = "median"
    space: dict = field(default_factory=default_space)
    seed: int | None = None
    heartbeat: int = 60
    grace: int | None = None
    verbose: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    deadline: float | None = None   # time.time() after which no trial starts

    def __post_init__(self):
        if self.sampler not in ("tpe", "random"):
            raise ValueError("--sampler must be tpe or random, got %r" % self.sampler)
        if self.pruner not in ("median", "none"):
            raise ValueError("--pruner must be median or none, got %r" % self.pruner)
        if self.n_trials is not None and self.n_trials < 0:
            raise ValueError("--n-trials must be >= 0, got %r" % self.n_trials)
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError("--timeout must be > 0 seconds, got %r" % self.timeout)
        if self.epochs < 1:
            raise ValueError("--epochs must be >= 1, got %r" % self.epochs)
        if not 1 <= self.num_train <= 49000:
            raise ValueError("--num-train must be in 1..49000, got %r" % self.num_train)
        if int(self.heartbeat) < 1:
            raise ValueError("--heartbeat must be >= 1 second, got %r" % self.heartbeat)
        if self.grace is not None and int(self.grace) < 1:
            raise ValueError("--grace must be >= 1 second, got %r" % self.grace)
        if not self.study:
            raise ValueError("--study needs a name")
        self.space = {name: _normalize(name, spec, "search space")
                      for name, spec in {**default_space(), **self.space}.items()}

    @property
    def train_seed(self):
        return 0 if self.seed is None else int(self.seed)

    def trial_budget(self):
        """Trials this command runs: n_trials, else unlimited with a timeout, else 20."""
        if self.n_trials is not None:
            return self.n_trials
        return None if self.timeout is not None else DEFAULT_N_TRIALS

    def to_json(self):
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


# -------------------------------------------------------------------------- storage

def mask_url(url):
    """``url`` with its password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", str(url))


def _short(exc, url=None):
    """A one-line reason from a (SQLAlchemy/driver) exception, without secrets."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("(Background on this error",
                                                       "[SQL:", "[parameters:"))]
    text = " ".join(lines[:3]) or type(exc).__name__
    if url:
        text = text.replace(str(url), mask_url(url))
        try:
            from sqlalchemy.engine import make_url
            pw = make_url(url).password
            if pw:
                text = text.replace(str(pw), "***")
        except Exception:
            pass
    return text


def _engine_kwargs(url):
    from sqlalchemy.engine import make_url
    u = make_url(url)
    backend, driver = u.get_backend_name(), u.get_driver_name()
    if backend == "sqlite":
        # several processes share the file: wait for its lock instead of failing
        return {"connect_args": {"timeout": 60}}
    kw = {"pool_pre_ping": True}
    if driver in ("psycopg2", "psycopg", "pymysql", "mysqldb"):
        kw["connect_args"] = {"connect_timeout": 10}
    return kw


def _prepare_sqlite(url, masked):
    """A SQLite file: check its folder, and switch it to write-ahead logging once (readers
    no longer block the writer, and a commit costs one fsync instead of three): several
    worker processes on one machine share it smoothly. Keep it on a local disk."""
    from sqlalchemy.engine import make_url
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" \
            or u.database.startswith("file:"):
        return
    folder = os.path.dirname(os.path.abspath(u.database))
    if not os.path.isdir(folder):
        raise ValueError("cannot open the study storage %s: the folder %s does not exist"
                         % (masked, folder))
    import sqlite3
    try:
        con = sqlite3.connect(u.database, timeout=60)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise ValueError("cannot open the study storage %s: %s" % (masked, exc)) from None
    except sqlite3.Error:
        pass  # e.g. a read-only folder: SQLite's default journal still works


def open_storage(url, heartbeat_interval=60, grace_period=None, stale_callback=None):
    """An :class:`optuna.storages.RDBStorage` for ``url`` with the heartbeat on.

    Any problem (unparseable URL, unknown dialect, missing driver, unreachable or
    refusing server, missing folder) raises ``ValueError`` naming the URL with its
    password masked.
    """
    import optuna

    masked = mask_url(url)
    try:
        kwargs = _engine_kwargs(url)
    except Exception as exc:
        hint = ""
        if str(url).startswith("postgres://"):
            hint = " (write postgresql://, not postgres://)"
        raise ValueError("cannot open the study storage %s: %s%s"
                         % (masked, _short(exc, url), hint)) from None
    _prepare_sqlite(url, masked)
    for attempt in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=int(heartbeat_interval),
                    grace_period=int(grace_period) if grace_period else None,
                    heartbeat_stale_trial_callback=stale_callback)
            except Exception as exc:
                if attempt < 5 and _creation_race(exc):
                    # another worker is creating the same tables right now
                    time.sleep(0.2 * (attempt + 1) + 0.3 * (os.getpid() % 7) / 7)
                    continue
                hint = ""
                if "postgres" in str(url).split(":", 1)[0] and isinstance(exc, ImportError):
                    hint = " (pip install psycopg2-binary, or fcgpu[search])"
                if str(url).startswith("postgres://"):
                    hint = " (write postgresql://, not postgres://)"
                raise ValueError("cannot open the study storage %s: %s%s"
                                 % (masked, _short(exc, url), hint)) from None


def _creation_race(exc):
    """Whether ``exc`` is two processes initializing a fresh database at once."""
    import sqlalchemy.exc
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and (
        "already exists" in text or "duplicate key" in text or "database is locked" in text)


def make_sampler(name, seed=None):
    import optuna
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: running trials count as bad, so parallel workers spread out
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(name):
    import optuna
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def open_study(storage, name, sampler=None, pruner=None, url=None):
    """Create the study (maximizing validation accuracy) or load the existing one."""
    import optuna
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    except Exception as exc:
        raise ValueError("cannot open study %r in %s: %s"
                         % (name, mask_url(url or "the storage"), _short(exc, url))) from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ValueError("study %r in %s minimizes its objective; fcgpu search maximizes the "
                         "validation accuracy: pick another --study name"
                         % (name, mask_url(url or "the storage")))
    return study


def _quiet_optuna(verbose):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ---------------------------------------------------------------------------- trials

class TrialFailed(Exception):
    """A trial that failed for a reason the search survives (NaN loss, out of memory)."""


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
    gc.collect()
    cp = sys.modules.get("cupy")   # only if a trial already imported it
    if cp is not None:
        try:
            cp.get_default_memory_pool().free_all_blocks()
            cp.get_default_pinned_memory_pool().free_all_blocks()
        except Exception:
            pass


def load_search_data(settings, progress=False):
    """The training and validation splits, loaded once per worker (no test split: the
    search never looks at it)."""
    import numpy as np
    from . import train as _train
    cfg = _train.TrainConfig(num_train=settings.num_train, data=settings.data)
    data = _train.load_data(cfg, progress=progress)
    data = {k: v for k, v in data.items() if k not in ("X_test", "y_test")}
    # own the slices, so the full training array can be freed
    return {k: (np.array(v) if getattr(v, "base", None) is not None else v)
            for k, v in data.items()}


def _prefetch_data(settings):
    """Download/decode/cache CIFAR-10 once before several workers read it."""
    from .data import get_CIFAR10_data
    get_CIFAR10_data(num_training=1, num_validation=0, num_test=0, path=settings.data)


def _worker_name():
    return "%s:%d" % (socket.gethostname(), os.getpid())


def make_objective(settings, data, out=None):
    """The Optuna objective: validation accuracy of one training run."""
    import numpy as np
    import optuna
    from .solver import NonFiniteLossError
    from .train import run_training
    out = out or sys.stdout

    def objective(trial):
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
            trial.set_user_attr("fail_reason", "interrupted (SIGINT/SIGTERM)")
            raise
        except Exception as exc:
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


# ------------------------------------------------------------------ progress output

def _fmt(v):
    if isinstance(v, float):
        return "%.3g" % v
    return str(v)


def describe_config(cfg):
    """``hidden 812x140 keep 0.73 lr 0.00123 ...`` for a TrainConfig dict."""
    if not cfg:
        return ""
    parts = ["hidden %s" % "x".join(str(h) for h in cfg["hidden_dims"]),
             "keep %s" % _fmt(cfg["dropout"]), "lr %s" % _fmt(cfg["learning_rate"]),
             "reg %s" % _fmt(cfg["reg"]), "ws %s" % _fmt(cfg["weight_scale"]),
             "batch %d" % cfg["batch_size"]]
    if not cfg.get("batchnorm", True):
        parts.append("no-bn")
    if cfg.get("update_rule", "adam") != "adam":
        parts.append(cfg["update_rule"])
    return " ".join(parts)


def _fail_reason(t):
    return t.user_attrs.get("fail_reason") or LOST_REASON


def describe_trial(t):
    """One progress line for a finished :class:`optuna.trial.FrozenTrial`."""
    state = t.state.name
    dur = t.duration.total_seconds() if t.duration is not None else float("nan")
    if state == "COMPLETE":
        what = "val acc %.4f" % t.value
    elif state == "PRUNED":
        steps = sorted(t.intermediate_values)
        what = ("at epoch %d, val acc %.4f" % (steps[-1], t.intermediate_values[steps[-1]])
                if steps else "before the first epoch")
    elif state == "FAIL":
        what = _fail_reason(t)
    else:
        what = ""
    cfg = describe_config(t.user_attrs.get("config"))
    return "trial %d %s %s (%.1f s)%s" % (t.number, state, what, dur,
                                          ("  " + cfg) if cfg else "")


def _progress_callback(out, tag=""):
    def callback(study, trial):
        print(tag + describe_trial(trial), file=out, flush=True)
    return callback


def _stale_callback(out):
    def callback(study, trial):
        print("trial %d of worker %s sent no heartbeat for too long: marked FAIL"
              % (trial.number, trial.user_attrs.get("worker", "?")), file=out, flush=True)
    return callback


# --------------------------------------------------------------------------- workers

class _Tickets:
    """The trial budget of one command, shared by its worker processes: a counter in a
    file, updated under an exclusive lock. ``total=None`` means no limit."""

    def __init__(self, path, total):
        self.path, self.total = path, total

    @classmethod
    def create(cls, folder, total):
        path = os.path.join(folder, "tickets")
        with open(path, "w") as f:
            f.write("0")
        return cls(path, total)

    def claim(self):
        if self.total is None:
            return True
        import fcntl
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            used = int(f.read().strip() or 0)
            if used >= self.total:
                return False
            f.seek(0)
            f.truncate()
            f.write(str(used + 1))
            f.flush()
            return True


class _LocalTickets:
    def __init__(self, total):
        self.left = total

    def claim(self):
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class _TermAsInterrupt:
    """SIGTERM raises KeyboardInterrupt, so Optuna marks the running trial FAIL cleanly."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise KeyboardInterrupt
            self.old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def run_worker(settings, index=0, tickets=None, data=None, out=None, pruner=None, tag="",
               storage=None):
    """Run trials of the study until the budget (tickets), the deadline or an interrupt
    ends them. Returns the number of trials this worker ran."""
    out = out or sys.stdout
    _quiet_optuna(settings.verbose)
    if storage is None:
        storage = open_storage(settings.storage, settings.heartbeat, settings.grace,
                               stale_callback=_stale_callback(out))
    seed = None if settings.seed is None else int(settings.seed) + index
    study = open_study(storage, settings.study, sampler=make_sampler(settings.sampler, seed),
                       pruner=pruner or make_pruner(settings.pruner), url=settings.storage)
    if tickets is None:
        tickets = _LocalTickets(settings.trial_budget())
    if data is None:
        data = load_search_data(settings)
    objective = make_objective(settings, data, out=out)
    callbacks = [_progress_callback(out, tag)]
    ran = 0
    import sqlalchemy.exc
    with _TermAsInterrupt():
        try:
            while True:
                if settings.deadline is not None and time.time() >= settings.deadline:
                    break
                if not tickets.claim():
                    break
                study.optimize(objective, n_trials=1, catch=(TrialFailed,),
                               callbacks=callbacks, gc_after_trial=True)
                ran += 1
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise ValueError("lost the study storage %s: %s"
                             % (mask_url(settings.storage), _short(exc, settings.storage))
                             ) from None
    return ran


def visible_gpus():
    """The ``CUDA_VISIBLE_DEVICES`` entries of the GPUs this process may use, one per
    GPU (or MIG instance), found without importing CuPy: from ``CUDA_VISIBLE_DEVICES``
    when set, else from ``nvidia-smi -L``; ``[]`` without a driver."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = []
        for tok in cvd.split(","):
            tok = tok.strip()
            if not tok or tok.startswith("-"):
                break   # CUDA ignores everything after an invalid entry
            ids.append(tok)
        return ids
    try:
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if res.returncode != 0:
        return []
    gpus, migs = [], []
    for line in res.stdout.splitlines():
        m = re.match(r"\s*GPU (\d+):", line)
        if m:
            gpus.append(m.group(1))
        m = re.search(r"\(UUID: (MIG-[^)\s]+)\)", line)
        if m:
            migs.append(m.group(1))
    return migs or gpus


def _usable_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return list(range(os.cpu_count() or 1))


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
_CPUS_VAR = "FCGPU_SEARCH_CPUS"   # read by worker_main: the cores a worker is pinned to


def plan_workers(n_workers=None, backend="auto", gpus=None, cpus=None):
    """How many workers and each one's environment overrides.

    On a GPU machine (backend cupy, or auto with CuPy installed and a GPU visible) the
    default is one worker per visible GPU, each pinned to its own through
    ``CUDA_VISIBLE_DEVICES`` (round robin if there are more workers than GPUs). On the
    CPU the default is one worker. Several workers split the cores: each gets
    ``cores // K`` of them (its CPU affinity) and as many BLAS/OpenMP/Numba threads.
    Returns ``(k, [env dict per worker], [description per worker])``.
    """
    import importlib.util
    if backend == "auto":
        backend = (os.environ.get("FCGPU_BACKEND") or "auto").strip().lower()
    if gpus is None:
        if backend == "numpy" or (backend == "auto"
                                  and importlib.util.find_spec("cupy") is None):
            gpus = []
        else:
            gpus = visible_gpus()
    cpus = list(cpus) if cpus else _usable_cpus()
    k = n_workers if n_workers is not None else (len(gpus) if gpus else 1)
    if k < 1:
        raise ValueError("--workers must be >= 1, got %r" % k)
    threads = max(1, len(cpus) // k)
    envs, descs = [], []
    for i in range(k):
        env, where = {}, []
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            where.append("GPU %s" % gpus[i % len(gpus)])
        if k > 1:
            mine = (cpus[i * threads:(i + 1) * threads] if k <= len(cpus)
                    else [cpus[i % len(cpus)]])
            env.update({var: str(threads) for var in _THREAD_VARS})
            env[_CPUS_VAR] = ",".join(map(str, mine))
            where.append("CPU%s %s, %d thread%s" % ("s" if len(mine) > 1 else "",
                                                    _cpu_ranges(mine), threads,
                                                    "s" if threads > 1 else ""))
        else:
            where.append("%d CPU threads" % len(cpus))
        envs.append(env)
        descs.append(", ".join(where))
    return k, envs, descs


def _cpu_ranges(cpus):
    """``[0, 1, 2, 5]`` -> ``'0-2,5'``."""
    out, start, prev = [], None, None
    for c in list(cpus) + [None]:
        if start is not None and (c is None or c != prev + 1):
            out.append(str(start) if start == prev else "%d-%d" % (start, prev))
            start = None
        if c is not None and start is None:
            start = c
        prev = c
    return ",".join(out)


def _pin_this_process():
    """Apply the worker's CPU set (``FCGPU_SEARCH_CPUS``) to every thread already
    running (the BLAS starts its threads when NumPy is imported) and to later ones."""
    text = os.environ.get(_CPUS_VAR)
    if not text or not hasattr(os, "sched_setaffinity"):
        return
    cpus = {int(c) for c in text.split(",") if c.strip()}
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def _spawn_workers(settings, envs, descs, out):
    """Start the worker processes; wait for them; returns the list of exit codes."""
    import fcgpu
    folder = tempfile.mkdtemp(prefix="fcgpu-search-")
    try:
        tickets = _Tickets.create(folder, settings.trial_budget())
        spec = os.path.join(folder, "settings.json")
        with open(spec, "w") as f:
            f.write(settings.to_json())
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fcgpu.__file__)))
        procs = []
        for i, (extra, desc) in enumerate(zip(envs, descs)):
            env = dict(os.environ)
            env.update(extra)
            env["PYTHONPATH"] = os.pathsep.join(
                [pkg_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
            cmd = [sys.executable, "-m", "fcgpu.cli", "search", "--worker", spec,
                   "--worker-index", str(i), "--worker-tickets", tickets.path]
            p = subprocess.Popen(cmd, env=env)
            print("worker %d/%d: pid %d, %s" % (i, len(envs), p.pid, desc), file=out, flush=True)
            procs.append(p)
        return _wait_workers(procs, out)
    finally:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def _wait_workers(procs, out):
    codes = [None] * len(procs)
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):
            raise KeyboardInterrupt
        old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            while any(c is None for c in codes):
                for i, p in enumerate(procs):
                    if codes[i] is None and p.poll() is not None:
                        codes[i] = p.returncode
                        if p.returncode < 0:
                            print("worker %d (pid %d) was killed by signal %d; its running "
                                  "trial is marked FAIL once its heartbeat is stale"
                                  % (i, p.pid, -p.returncode), file=out, flush=True)
                        elif p.returncode != 0:
                            print("worker %d (pid %d) exited with code %d"
                                  % (i, p.pid, p.returncode), file=out, flush=True)
                time.sleep(0.2)
        except KeyboardInterrupt:
            # a terminal's Ctrl-C reached the workers too; make sure the others stop
            # (SIGTERM: the workers fail their running trial cleanly and exit)
            deadline = time.time() + 5
            while time.time() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.1)
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return codes


def worker_main(spec_path, index, tickets_path, out=None):
    """Entry point of a worker process (``fcgpu search --worker SPEC``)."""
    _pin_this_process()
    if threading.current_thread() is threading.main_thread():
        # a shell's background job starts with SIGINT ignored: take Ctrl-C seriously
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(spec_path) as f:
        settings = SearchSettings.from_json(f.read())
    tickets = _Tickets(tickets_path, settings.trial_budget())
    run_worker(settings, index=index, tickets=tickets, out=out, tag="[w%d] " % index)
    return 0


def run_search(settings, workers=None, data=None, out=None, pruner=None, report=None):
    """Open (or create) the study, run this command's trials on ``workers`` processes
    (in this process when there is one), print the summary and the best trial's
    ``fcgpu train`` command, and write the report. Returns ``(study, exit_code)``."""
    out = out or sys.stdout
    _quiet_optuna(settings.verbose)
    if settings.timeout is not None and settings.deadline is None:
        settings.deadline = time.time() + settings.timeout
    storage = open_storage(settings.storage, settings.heartbeat, settings.grace,
                           stale_callback=_stale_callback(out))
    study = open_study(storage, settings.study, url=settings.storage)
    before = len(study.get_trials(deepcopy=False))
    budget = settings.trial_budget()
    print("study %r in %s: %d trial%s so far; this run: %s trial%s, %d epoch%s on %d images"
          % (settings.study, mask_url(settings.storage), before, "" if before == 1 else "s",
             "unlimited" if budget is None else budget, "" if budget == 1 else "s",
             settings.epochs, "" if settings.epochs == 1 else "s", settings.num_train),
          file=out, flush=True)
    code = 0
    if budget != 0:
        k, envs, descs = plan_workers(workers, settings.backend)
        if k == 1:
            run_worker(settings, data=data, out=out, pruner=pruner, storage=storage)
        else:
            if data is not None or pruner is not None:
                raise ValueError("data= and pruner= only apply to a single in-process worker")
            _prefetch_data(settings)
            codes = _spawn_workers(settings, envs, descs, out)
            if any(c != 0 for c in codes):
                code = 1
    study = open_study(storage, settings.study, url=settings.storage)
    summarize(study, out=out, run_id=settings.run_id, storage_url=settings.storage)
    if report:
        path = write_report(study, report, storage_url=settings.storage)
        print("report: %s" % path, file=out, flush=True)
    return study, code


# ----------------------------------------------------------------- summary / report

def retrain_command(cfg):
    """The ``fcgpu train`` command line that reruns a trial's configuration."""
    args = ["fcgpu", "train",
            "--hidden", ",".join(str(h) for h in cfg["hidden_dims"]),
            "--weight-scale", repr(float(cfg["weight_scale"])),
            "--batchnorm" if cfg.get("batchnorm", True) else "--no-batchnorm",
            "--dropout", repr(float(cfg["dropout"])),
            "--reg", repr(float(cfg["reg"])),
            "--update-rule", cfg.get("update_rule", "adam"),
            "--lr", repr(float(cfg["learning_rate"])),
            "--lr-decay", repr(float(cfg.get("lr_decay", 0.9))),
            "--batch-size", str(int(cfg["batch_size"])),
            "--epochs", str(int(cfg["epochs"])),
            "--num-train", str(int(cfg["num_train"])),
            "--seed", str(int(cfg.get("seed", 0)))]
    if cfg.get("dtype", "float32") != "float32":
        args += ["--dtype", cfg["dtype"]]
    if cfg.get("backend", "auto") not in ("auto", None):
        args += ["--backend", cfg["backend"]]
    if cfg.get("data"):
        args += ["--data", cfg["data"]]
    return " ".join(shlex.quote(a) for a in args)


def _counts(trials):
    counts = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def _count_text(counts):
    order = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    return ", ".join("%d %s" % (counts.get(s, 0), s.lower()) for s in order if counts.get(s))


def summarize(study, out=None, run_id=None, storage_url=None):
    """Print the study's trial counts, the best trial and its retrain command."""
    out = out or sys.stdout
    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    line = "study %r: %d trial%s (%s)" % (study.study_name, len(trials),
                                         "" if len(trials) == 1 else "s",
                                         _count_text(counts) or "none")
    if run_id:
        mine = [t for t in trials if t.user_attrs.get("run") == run_id]
        if mine:
            line += "; this run: %d (%s)" % (len(mine), _count_text(_counts(mine)))
    print(line, file=out)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        print("no completed trial yet: no best parameters", file=out, flush=True)
        return None
    best = max(complete, key=lambda t: t.value)
    print("best: trial %d, val acc %.4f (%s)" % (best.number, best.value,
                                                  best.user_attrs.get("worker", "?")), file=out)
    for name, value in best.params.items():
        print("  %-14s %s" % (name, value), file=out)
    cfg = best.user_attrs.get("config")
    if cfg:
        print("retrain it with:\n  %s" % retrain_command(cfg), file=out)
    out.flush()
    return best


def _save_fig(ax, path):
    import io
    import matplotlib.pyplot as plt
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    _write_public(buf.getvalue(), path)


def _importance_blocker(study):
    """Why parameter importances cannot be computed, or None if they can."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return ("parameter importances need at least 2 completed trials; the study has %d"
                % len(complete))
    common = set(complete[0].params)
    for t in complete[1:]:
        common &= set(t.params)
    varying = [p for p in common if len({repr(t.params[p]) for t in complete}) > 1]
    if not varying:
        return ("parameter importances need parameters that vary across the completed "
                "trials; these %d all share the same values" % len(complete))
    return None


def _write_public(data, path):
    from .atomic import atomic_write_bytes
    atomic_write_bytes(data, path)


def write_report(study, folder, storage_url=None, top=10):
    """``report.md`` (best trials, failures, retrain command), ``trials.csv`` and
    Optuna's standard plots as PNG in ``folder``. Returns the Markdown file's path."""
    import csv
    import io
    os.makedirs(folder, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    complete = sorted((t for t in trials if t.state.name == "COMPLETE"),
                      key=lambda t: t.value, reverse=True)
    lines = ["# fcgpu search: study `%s`" % study.study_name, ""]
    if storage_url:
        lines += ["Storage: `%s`" % mask_url(storage_url), ""]
    lines += ["%d trials: %s." % (len(trials), _count_text(counts) or "none"), ""]
    lines += ["## Best trials", ""]
    if complete:
        lines += ["| rank | trial | val acc | train acc | hidden | keep | lr | reg | "
                  "weight scale | batch | epochs | time (s) | worker |",
                  "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for rank, t in enumerate(complete[:top], 1):
            c = t.user_attrs.get("config") or {}
            tr = (t.user_attrs.get("metrics") or {}).get("train_acc")
            lines.append("| %d | %d | %.4f | %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %s |"
                         % (rank, t.number, t.value, "%.4f" % tr if tr is not None else "",
                            "x".join(str(h) for h in c.get("hidden_dims", [])),
                            _fmt(c.get("dropout", "")), _fmt(c.get("learning_rate", "")),
                            _fmt(c.get("reg", "")), _fmt(c.get("weight_scale", "")),
                            c.get("batch_size", ""), len(t.intermediate_values),
                            t.duration.total_seconds() if t.duration else float("nan"),
                            t.user_attrs.get("worker", "")))
        cfg = complete[0].user_attrs.get("config")
        if cfg:
            lines += ["", "Retrain the best trial:", "", "```", retrain_command(cfg), "```"]
    else:
        lines.append("No completed trial yet.")
    failed = [t for t in trials if t.state.name == "FAIL"]
    if failed:
        lines += ["", "## Failed trials", "", "| trial | reason |", "|---:|---|"]
        for t in failed:
            lines.append("| %d | %s |" % (t.number, _fail_reason(t).replace("|", "\\|")))

    lines += ["", "## Plots", ""]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import optuna.visualization.matplotlib as ovm
        have_mpl = True
    except ImportError as exc:
        have_mpl = False
        lines.append("No plots: matplotlib is not installed (%s)." % exc)
    if have_mpl:
        plots = [("optimization_history.png", "Optimization history",
                  None if complete else "it needs at least 1 completed trial",
                  lambda: ovm.plot_optimization_history(study, target_name="val acc")),
                 ("param_importances.png", "Parameter importances", _importance_blocker(study),
                  lambda: ovm.plot_param_importances(study)),
                 ("intermediate_values.png", "Validation accuracy per epoch",
                  None if any(t.intermediate_values for t in trials)
                  else "no trial has reported an epoch yet",
                  lambda: ovm.plot_intermediate_values(study))]
        for fname, title, blocker, make in plots:
            if blocker is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        _save_fig(make(), os.path.join(folder, fname))
                except Exception as exc:
                    blocker = "plotting failed: %s: %s" % (type(exc).__name__, exc)
            if blocker is None:
                lines += ["### %s" % title, "", "![%s](%s)" % (title, fname), ""]
            else:
                lines += ["### %s" % title, "", "Not drawn: %s." % blocker, ""]

    # every trial as CSV (no pandas needed)
    names = sorted({p for t in trials for p in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", "value", "duration_s", *names, "epochs", "worker",
                "fail_reason"])
    for t in trials:
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                    "" if t.duration is None else round(t.duration.total_seconds(), 3),
                    *[t.params.get(n, "") for n in names], len(t.intermediate_values),
                    t.user_attrs.get("worker", ""),
                    _fail_reason(t) if t.state.name == "FAIL" else ""])
    _write_public(buf.getvalue().encode(), os.path.join(folder, "trials.csv"))
    lines += ["All trials: [trials.csv](trials.csv).", ""]
    path = os.path.join(folder, "report.md")
    _write_public("\n".join(lines).encode(), path)
    return path
