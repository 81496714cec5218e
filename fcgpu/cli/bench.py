"""``fcgpu bench``: run the benchmark suites that fit this machine, then write one
results JSON (and, with ``--report``, the Markdown report and plots)."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def add_arguments(p):
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for results.json and the raw pytest-benchmark JSON")
    p.add_argument("--only", choices=["kernels", "train", "experiments"], default=None,
                   help="run one suite only (default: kernels, train and the experiments)")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes, shorter budgets, no torch.compile (a few minutes)")
    p.add_argument("--full", action="store_true",
                   help="on a CPU-only machine also run sizes up to 2^26 and 65536x4096 "
                        "(slow), and torch.compile on the wide net")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants to run (default: all that apply)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of measurement per case")
    p.add_argument("--data", default=None,
                   help="CIFAR-10 for the experiments that need it (default: FCGPU_DATA; "
                        "never downloads)")
    p.add_argument("--time-to-accuracy", action="store_true",
                   help="also train the default net to 60%% validation on every backend "
                        "(minutes; needs the data)")
    p.add_argument("--report", action="store_true",
                   help="also write report.md and the plots into --out")
    p.add_argument("--pytest-args", default="",
                   help="extra arguments for pytest, as one string")


def _suite_files(only):
    from ..bench import suites
    here = os.path.dirname(os.path.abspath(suites.__file__))
    files = {"kernels": os.path.join(here, "test_kernels.py"),
             "train": os.path.join(here, "test_train.py")}
    if only == "experiments":
        return []
    if only:
        return [files[only]]
    return [files["kernels"], files["train"]]


def run(args):
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        raise ValueError("fcgpu bench needs pytest-benchmark: pip install 'fcgpu[bench]'") \
            from None
    from ..bench import experiments
    from ..bench.machine import machine_info
    from ..bench.results import build_results

    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
        if load > 1.5 * cores:
            print("fcgpu bench: warning: the 1-minute load average is %.1f on %d cores; "
                  "other work will slow every variant (the report says so)" % (load, cores),
                  file=sys.stderr)
    except (OSError, AttributeError):
        pass
    out = os.path.abspath(args.out)
    raw_dir = os.path.join(out, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    files = _suite_files(args.only)
    raw_path = os.path.join(raw_dir, "pytest-benchmark.json")
    rc = 0
    raw_list = []
    if files:
        cmd = [sys.executable, "-m", "pytest", *files, "-p", "no:cacheprovider", "-q",
               "-o", "addopts=", "--benchmark-json", raw_path, "--benchmark-columns",
               "median,rounds", "--benchmark-sort", "name"]
        if args.quick:
            cmd.append("--fcgpu-quick")
        if args.full:
            cmd.append("--fcgpu-full")
        if args.variants:
            cmd += ["--fcgpu-variants", args.variants]
        if args.budget:
            cmd += ["--fcgpu-budget", str(args.budget)]
        if args.pytest_args:
            import shlex
            cmd += shlex.split(args.pytest_args)
        print("fcgpu bench: %s" % " ".join(cmd), file=sys.stderr, flush=True)
        from ..bench.worker import _worker_env
        rc = subprocess.call(cmd, env=_worker_env(), cwd=os.path.dirname(files[0]))
        if os.path.exists(raw_path):
            with open(raw_path) as f:
                raw_list.append(json.load(f))
        if rc not in (0, 5):
            print("fcgpu bench: pytest exited with %d; writing what was measured" % rc,
                  file=sys.stderr)

    exps = {}
    if args.only in (None, "experiments"):
        print("fcgpu bench: notebook experiments", file=sys.stderr, flush=True)
        exps["dropout_stats"] = _guard(experiments.dropout_stats)
        exps["dropout_regularizer"] = _guard(
            lambda: experiments.dropout_regularizer(args.data, backend_name="auto"))
        exps["time_to_accuracy"] = _guard(
            lambda: experiments.time_to_accuracy(args.data, enabled=args.time_to_accuracy))
    machine = machine_info()
    results = build_results(raw_list, experiments=exps, machine=machine,
                            settings={"command": " ".join(sys.argv),
                                      "only": args.only, "time_to_accuracy":
                                      args.time_to_accuracy})
    if raw_list:
        results["settings"]["raw"] = os.path.relpath(raw_path, out)
    from ..atomic import atomic_write_bytes
    path = os.path.join(out, "results.json")
    atomic_write_bytes(json.dumps(results, indent=1, sort_keys=False).encode(), path)
    print("fcgpu bench: wrote %s" % path)
    s = results["summary"]
    for k, v in s.items():
        print("  %-22s %s%s" % (k, "null" if v is None else "%.3f" % v,
                                "" if v is not None else
                                "  (%s)" % results["summary_notes"].get(k, "")))
    if results.get("suggested_dir"):
        print("  to commit it: bench/results/%s/" % results["suggested_dir"])
    if args.report:
        from ..bench import report
        res = report.load([path])
        print("fcgpu bench: wrote %s" % report.render(res, out))
    return 0 if rc in (0, 5) else 1


def _guard(fn):
    try:
        return fn()
    except Exception as exc:  # an experiment that fails is reported, not fatal
        if os.environ.get("FCGPU_DEBUG"):
            raise
        return {"skipped": "failed: %s: %s" % (type(exc).__name__, exc)}
