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
  period has passed, and retried (a new trial with its parameters); nothing else of
  the study is lost;
* waits, with bounded retries (``--storage-wait``), for a database that went away (a
  server that restarts): a trial whose training finished meanwhile keeps its result,
  one cut short is marked FAIL and retried, and the command still completes its
  budget (lost trials give their place in it back).

``n_trials`` counts the trials one command runs, shared by its ``--workers``
processes through a small locked counter file; rerunning a command adds trials to
the same study (``load_if_exists``). Workers are pinned one per visible GPU
(``CUDA_VISIBLE_DEVICES`` in the child's environment, before anything imports CuPy)
or, on the CPU, split the cores (each pinned to ``cores // K`` of them with as many
BLAS/OpenMP/Numba threads, set before the child imports NumPy).

The package, one concern a module (imports point down this list):

* :mod:`~fcgpu.search.run`: a worker's loop over trials, a worker process's entry
  point, and :func:`run_search`, the command as a whole;
* :mod:`~fcgpu.search.workers`: worker planning, CPU/GPU pinning, spawning, the shared
  trial budget, SIGTERM handling;
* :mod:`~fcgpu.search.report`: ``report.md``, ``trials.csv`` and Optuna's plots;
* :mod:`~fcgpu.search.recovery`: a storage that goes away, trials lost to it or to a
  dead worker, and their retries;
* :mod:`~fcgpu.search.summary`: progress lines, the summary and the retrain command;
* :mod:`~fcgpu.search.objective`: the data and the objective of one trial;
* :mod:`~fcgpu.search.storage`: the RDB storage, its URLs and errors, the study, its
  sampler and pruner;
* :mod:`~fcgpu.search.settings`: the settings a command sends its workers;
* :mod:`~fcgpu.search.space`: the space, its TOML file and ``--param`` flags.

Importing this package imports neither Optuna nor SQLAlchemy; the functions that need
them import them.
"""
from __future__ import annotations

from .objective import TrialFailed, load_search_data, make_objective
from .report import write_report
from .run import run_search, run_worker, worker_main
from .settings import DEFAULT_N_TRIALS, DEFAULT_STORAGE, DEFAULT_STUDY, SearchSettings
from .space import (PARAMS, build_space, default_space, load_space_file, parse_param,
                    suggest_config)
from .storage import make_pruner, make_sampler, mask_url, open_storage, open_study
from .summary import describe_trial, retrain_command, summarize
from .workers import plan_workers, visible_gpus

__all__ = [
    "PARAMS", "SearchSettings", "TrialFailed", "default_space", "build_space", "load_space_file",
    "parse_param", "suggest_config", "mask_url", "open_storage", "open_study", "make_sampler",
    "make_pruner", "load_search_data", "make_objective", "run_worker", "run_search",
    "visible_gpus", "plan_workers", "retrain_command", "summarize", "write_report",
    "describe_trial", "worker_main", "DEFAULT_STORAGE", "DEFAULT_STUDY", "DEFAULT_N_TRIALS",
]
