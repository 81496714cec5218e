"""``fcgpu search``: hyperparameter search with Optuna, on SQLite or a shared
PostgreSQL study, one worker per GPU (or sharing the CPU cores).

The default space is the course notebook's: 1-3 hidden layers of 100-1000 units,
dropout keep 0.5-1.0, learning rate 1e-4..1e-2 (log), L2 1e-8..1e-2 (log), weight scale
1e-3..1e-1 (log), batch size 100/200/490/1000. ``--space FILE.toml`` and ``--param``
change it; see docs/search.md.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(p):
    from ..search import DEFAULT_N_TRIALS, DEFAULT_STORAGE, DEFAULT_STUDY
    from ..search.settings import DEFAULT_STORAGE_WAIT
    from ..search.space import PARAMS
    g = p.add_argument_group("study")
    g.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL",
                   help="Optuna RDB storage: sqlite:///FILE.db on one machine, "
                        "postgresql://USER:PASS@HOST:PORT/DB shared by several "
                        "(default %(default)s)")
    g.add_argument("--study", default=DEFAULT_STUDY, metavar="NAME",
                   help="study name; rerunning with the same name resumes it "
                        "(default %(default)s)")
    g.add_argument("--n-trials", type=int, default=None, metavar="N",
                   help="trials this command runs, shared by its workers (default %d, or "
                        "unlimited with --timeout; 0: only summarize/report)"
                        % DEFAULT_N_TRIALS)
    g.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="start no new trial after S seconds")
    g.add_argument("--sampler", default="tpe", choices=["tpe", "random"],
                   help="TPE (default) or random search")
    g.add_argument("--pruner", default="median", choices=["median", "none"],
                   help="stop trials whose validation accuracy is below the median of "
                        "earlier trials at the same epoch (default median)")
    g.add_argument("--pruner-warmup", type=int, default=0, metavar="E",
                   help="never prune a trial before its epoch E (default 0); use about half "
                        "the epochs with --schedule onecycle or cosine")
    g.add_argument("--seed", type=int, default=None,
                   help="sampler seed (worker i uses seed+i) and training seed "
                        "(default: random sampler seed, training seed 0)")
    g = p.add_argument_group("trials")
    g.add_argument("--epochs", type=int, default=5, metavar="E",
                   help="epochs per trial (default %(default)s)")
    g.add_argument("--num-train", type=int, default=49000, metavar="M",
                   help="train on the first M of the 49000 training images (default "
                        "%(default)s)")
    g.add_argument("--data", default=None,
                   help="CIFAR-10 archive or folder (default: FCGPU_DATA, the cache, "
                        "else download)")
    g.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"],
                   help="array backend (default: FCGPU_BACKEND, else auto)")
    g.add_argument("--space", metavar="FILE.toml",
                   help="search-space overrides: NAME = value | [choices] | "
                        "{low, high, log}")
    g.add_argument("--param", action="append", default=[], metavar="NAME=SPEC",
                   help="override one parameter: LOW:HIGH[:log|:linear], A,B,C or a value "
                        "(repeatable; applied after --space). Names: "
                        + ", ".join(PARAMS))
    g = p.add_argument_group("workers")
    g.add_argument("--workers", type=int, default=None, metavar="K",
                   help="worker processes on this machine (default: one per visible GPU, "
                        "else 1); CPU workers split the cores")
    g.add_argument("--heartbeat", type=int, default=60, metavar="S",
                   help="a running trial's worker writes a heartbeat every S seconds "
                        "(default %(default)s)")
    g.add_argument("--grace", type=int, default=None, metavar="S",
                   help="a running trial with no heartbeat for S seconds is marked FAIL "
                        "(its worker was killed or lost); default 2 x --heartbeat")
    g.add_argument("--storage-wait", type=float, default=DEFAULT_STORAGE_WAIT, metavar="S",
                   help="a worker that loses the study storage mid-search (a database server "
                        "that restarts) waits up to S seconds for it, retrying, before it "
                        "gives up (default %(default)g; 0: give up at once)")
    g = p.add_argument_group("output")
    g.add_argument("--report", metavar="DIR",
                   help="write DIR/report.md (best trials), DIR/trials.csv and Optuna's "
                        "plots as PNG")
    g.add_argument("--verbose", action="store_true",
                   help="print every epoch and Optuna's own log")
    # internal: a worker process started by --workers
    g.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    g.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    g.add_argument("--worker-tickets", help=argparse.SUPPRESS)


def settings_from_args(args):
    import os
    from ..errors import ConfigError
    from ..search import SearchSettings, build_space
    backend = args.backend
    if backend == "auto" and os.environ.get("FCGPU_BACKEND"):
        backend = os.environ["FCGPU_BACKEND"]
    if args.space and not os.path.isfile(args.space):
        raise ConfigError("--space %s: no such file" % args.space)
    return SearchSettings(storage=args.storage, study=args.study, n_trials=args.n_trials,
                          timeout=args.timeout, epochs=args.epochs, num_train=args.num_train,
                          data=args.data, backend=backend, sampler=args.sampler,
                          pruner=args.pruner, pruner_warmup=args.pruner_warmup,
                          space=build_space(args.space, args.param),
                          seed=args.seed, heartbeat=args.heartbeat, grace=args.grace,
                          storage_wait=args.storage_wait, verbose=args.verbose)


def run(args):
    from .. import search
    from ..errors import ConfigError
    if args.worker:
        return search.worker_main(args.worker, args.worker_index, args.worker_tickets)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("fcgpu search needs Optuna: pip install 'fcgpu[search]'") from None
    if args.report:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--report needs matplotlib: pip install 'fcgpu[plot]'") from None
    settings = settings_from_args(args)
    _, code = search.run_search(settings, workers=args.workers, out=sys.stdout,
                                report=args.report)
    return code
