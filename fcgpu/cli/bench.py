"""``fcgpu bench``: run the benchmark suites that fit this machine, then write one
results JSON (and, with ``--report``, the Markdown report and plots).

``fcgpu bench --profile`` times one CPU training step phase by phase beside its GEMM
floor (:mod:`fcgpu.bench.profile`) and prints the tables; with ``--out`` it writes them
into results.json too, and with ``--only SUITE`` it runs that suite first."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def add_arguments(p):
    p.add_argument("--out", metavar="DIR",
                   help="folder for results.json and the raw pytest-benchmark JSON (needed "
                        "unless only profiling)")
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
    p.add_argument("--course-wall", action="store_true",
                   help="also time the course's whole 17-epoch training per backend (fcgpu, "
                        "fcgpu + CUDA graph, PyTorch eager on the GPU; numpy too unless "
                        "--course-backends says otherwise) on synthetic CIFAR-10-shaped data; "
                        "it runs first, in 40%% of --deadline (25 s, at most 60%%, where "
                        "that is more)")
    p.add_argument("--course-backends", default=None, metavar="LIST",
                   help="comma-separated backends for --course-wall, in the order to run "
                        "them (default: fcgpu_graph,torch_cuda,fcgpu,numpy)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="finish within about this many seconds: cases not started by then "
                        "are reported as not run (kernels get half, training up to 90%%); a "
                        "suite still running 15 s past it is stopped")
    p.add_argument("--report", action="store_true",
                   help="also write report.md and the plots into --out")
    p.add_argument("--pytest-args", default="",
                   help="extra arguments for pytest, as one string")
    g = p.add_argument_group("step profile")
    g.add_argument("--profile", action="store_true",
                   help="time one CPU training step of the default net phase by phase beside "
                        "its GEMM floor (the same matrix products alone), interleaved; alone, "
                        "or after the suite named by --only")
    g.add_argument("--rounds", type=int, default=60,
                   help="profile rounds (floor, step, instrumented step each; default 60)")
    g.add_argument("--profile-seconds", type=float, default=None, metavar="S",
                   help="stop profiling after about S seconds (at least 3 rounds)")
    g.add_argument("--layouts", action="store_true",
                   help="profile: also time the floor with every weight stored transposed")
    g.add_argument("--json", action="store_true",
                   help="profile: print the profile as JSON on stdout (the tables go to stderr)")
    g.add_argument("--profile-net", default="default", metavar="NET",
                   help="profile: the net, a name (default: the course's 3 x 500) or hidden "
                        "sizes such as 1024,1024,1024 (batch 490)")
    g.add_argument("--augment", default="none", choices=["none", "flip", "crop"],
                   help="profile: gather the step's minibatch from uint8 images through the "
                        "augmenting gather, as fcgpu train --augment does (default none)")
    g.add_argument("--pad", type=int, default=4,
                   help="profile: crop padding with --augment crop (default 4)")


def _suite_files(only):
    """``{suite: test file}`` of the suites to run, in order."""
    from ..bench import suites
    here = os.path.dirname(os.path.abspath(suites.__file__))
    files = {"kernels": os.path.join(here, "test_kernels.py"),
             "train": os.path.join(here, "test_train.py")}
    if only == "experiments":
        return {}
    if only:
        return {only: files[only]}
    return files


def _profile_net(text):
    """--profile-net: a name in NETS, or hidden sizes 'H1,H2,...' (batch 490)."""
    from ..bench.models import NETS
    if text in NETS:
        return text
    try:
        hidden = [int(h) for h in text.split(",")]
    except ValueError:
        hidden = []
    if not hidden or min(hidden) < 1:
        raise ValueError("--profile-net %r: give one of %s, or hidden sizes such as "
                         "1024,1024,1024" % (text, ", ".join(NETS)))
    return {"hidden": hidden, "batch": NETS["default"]["batch"]}


def _profile(args):
    """Run the step profile; print its tables (and the JSON with --json)."""
    from ..bench.profile import profile_step
    from ..bench.report.profile import profile_text
    if args.pad < 0:
        raise ValueError("--pad must be >= 0, got %d" % args.pad)
    if args.rounds < 3:
        raise ValueError("--rounds must be at least 3, got %d" % args.rounds)
    print("fcgpu bench: profiling the CPU training step (%d rounds%s)" % (
        args.rounds, ", at most %.0f s" % args.profile_seconds if args.profile_seconds else ""),
        file=sys.stderr, flush=True)
    prof = profile_step(_profile_net(args.profile_net), rounds=args.rounds,
                        seconds=args.profile_seconds, layouts=args.layouts,
                        augment=args.augment, pad=args.pad)
    text = profile_text(prof)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(prof, indent=1))
    else:
        print(text)
    return prof


def _warn_load():
    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
        if load > 1.5 * cores:
            print("fcgpu bench: warning: the 1-minute load average is %.1f on %d cores; "
                  "other work will slow every variant (the report says so)" % (load, cores),
                  file=sys.stderr)
    except (OSError, AttributeError):
        pass


def run(args):
    if args.profile and args.only is None:
        return _profile_only(args)
    if not args.out:
        raise ValueError("--out DIR is required (only --profile runs without it)")
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        raise ValueError("fcgpu bench needs pytest-benchmark: pip install 'fcgpu[bench]'") \
            from None
    from ..atomic import atomic_write_bytes
    from ..bench import experiments
    from ..bench.machine import machine_info
    from ..bench.results import build_results
    from ..bench.worker import _worker_env

    t0 = time.time()
    deadline = t0 + args.deadline if args.deadline else None
    _warn_load()
    out = os.path.abspath(args.out)
    raw_dir = os.path.join(out, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    path = os.path.join(out, "results.json")
    machine = machine_info()
    suites = _suite_files(args.only)
    raw_list, raw_paths, not_run, exps = [], [], {}, {}
    prof = {}
    rc = 0

    def write(complete):
        results = build_results(raw_list, experiments=exps, machine=machine, settings={
            "command": " ".join(sys.argv), "only": args.only,
            "time_to_accuracy": args.time_to_accuracy, "course_wall": args.course_wall,
            "deadline_s": args.deadline,
            "raw": [os.path.relpath(p, out) for p in raw_paths], "complete": complete,
            "suites_not_run": not_run}, profile=prof.get("profile"))
        for key, note in results["summary_notes"].items():
            for suite, why in not_run.items():
                if note == "the %s suite did not run" % ("kernel" if suite == "kernels"
                                                         else "training"):
                    results["summary_notes"][key] = note + ": " + why
        atomic_write_bytes(json.dumps(results, indent=1).encode(), path)
        return results

    if args.course_wall:  # first: it is short, and the headline of a first GPU run
        from ..bench.course_run import COURSE_BACKENDS, course_wall, time_share
        names = args.course_backends.split(",") if args.course_backends else None
        bad = [n for n in names or () if n not in COURSE_BACKENDS]
        if bad:
            raise ValueError("--course-backends: unknown backend %s; choose from %s"
                             % (", ".join(bad), ", ".join(COURSE_BACKENDS)))
        exps["course_wall"] = _guard(lambda: course_wall(
            enabled=True, backends=names,
            deadline=t0 + time_share(args.deadline) if deadline else None))
        write(complete=False)

    # each suite in its own pytest run, and results.json rewritten after each, so that a
    # run cut short still leaves what it measured
    share = {"kernels": 0.5, "train": 0.9} if len(suites) > 1 else {k: 0.9 for k in suites}
    for name, file in suites.items():
        if deadline and time.time() > deadline - 10:
            not_run[name] = "the run's --deadline was reached first"
            continue
        raw_path = os.path.join(raw_dir, "%s.json" % name)
        partial = os.path.join(raw_dir, "%s.partial.jsonl" % name)
        for p in (raw_path, partial):
            if os.path.exists(p):
                os.remove(p)
        cmd = [sys.executable, "-m", "pytest", file, "-p", "no:cacheprovider", "-q",
               "-o", "addopts=", "--benchmark-json", raw_path, "--benchmark-columns",
               "median,rounds", "--benchmark-sort", "name", "--fcgpu-partial", partial]
        if args.quick:
            cmd.append("--fcgpu-quick")
        if args.full:
            cmd.append("--fcgpu-full")
        if args.variants:
            cmd += ["--fcgpu-variants", args.variants]
        if args.budget:
            cmd += ["--fcgpu-budget", str(args.budget)]
        timeout = None
        if deadline:
            suite_deadline = t0 + share[name] * args.deadline
            cmd += ["--fcgpu-deadline", "%.3f" % suite_deadline]
            timeout = max(30.0, deadline + 15 - time.time())  # a hard stop after the soft one
        if args.pytest_args:
            import shlex
            cmd += shlex.split(args.pytest_args)
        print("fcgpu bench: %s" % " ".join(cmd), file=sys.stderr, flush=True)
        try:
            code = subprocess.call(cmd, env=_worker_env(), cwd=os.path.dirname(file),
                                   timeout=timeout)
        except subprocess.TimeoutExpired:
            code = 124
            not_run.setdefault(name, "stopped at the run's --deadline")
        if code not in (0, 5):
            rc = code
            print("fcgpu bench: the %s suite's pytest exited with %d; keeping what was "
                  "measured" % (name, code), file=sys.stderr)
        try:
            with open(raw_path) as f:
                raw_list.append(json.load(f))
            raw_paths.append(raw_path)
        except (OSError, ValueError):
            raw = _from_partial(partial)
            if raw is not None:  # stopped before pytest-benchmark wrote its JSON
                raw_list.append(raw)
                raw_paths.append(partial)
                not_run.setdefault(name + "_partial", "the %s suite was stopped (exit %d); "
                                   "the cases it finished are kept" % (name, code))
            else:
                not_run.setdefault(name, "pytest wrote no results (exit %d)" % code)
        write(complete=False)

    if args.profile:
        prof["profile"] = _profile(args)
        write(complete=False)

    if args.only in (None, "experiments"):
        if deadline and time.time() > deadline - 5:
            why = "not run: the run's --deadline was reached first"
            exps.update({k: {"skipped": why} for k in ("dropout_stats", "dropout_regularizer",
                                                       "time_to_accuracy")})
        else:
            print("fcgpu bench: notebook experiments", file=sys.stderr, flush=True)
            exps["dropout_stats"] = _guard(experiments.dropout_stats)
            exps["dropout_regularizer"] = _guard(
                lambda: experiments.dropout_regularizer(args.data, backend_name="auto"))
            exps["time_to_accuracy"] = _guard(
                lambda: experiments.time_to_accuracy(args.data, enabled=args.time_to_accuracy))
        if "course_wall" not in exps:
            from ..bench.course_run import course_wall
            exps["course_wall"] = course_wall(enabled=False)
    results = write(complete=True)
    print("fcgpu bench: wrote %s (%.0f s)" % (path, time.time() - t0))
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


def _profile_only(args):
    _warn_load()
    prof = _profile(args)
    if not args.out:
        return 0
    from ..atomic import atomic_write_bytes
    from ..bench.machine import machine_info
    from ..bench.results import build_results
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.json")
    results = build_results([], machine=machine_info(), profile=prof, settings={
        "command": " ".join(sys.argv), "only": "profile", "complete": True,
        "suites_not_run": {}})
    atomic_write_bytes(json.dumps(results, indent=1).encode(), path)
    print("fcgpu bench: wrote %s" % path, file=sys.stderr)
    if args.report:
        from ..bench import report
        print("fcgpu bench: wrote %s" % report.render(report.load([path]), out),
              file=sys.stderr)
    return 0


def _from_partial(path):
    """A pytest-benchmark-like dict from the per-case lines of ``--fcgpu-partial``."""
    try:
        with open(path) as f:
            lines = [json.loads(ln) for ln in f if ln.strip()]
    except (OSError, ValueError):
        return None
    if not lines:
        return None
    last = lines[-1]
    return {"benchmarks": [{"name": "partial", "extra_info": ln["case"]} for ln in lines
                           if ln["case"].get("measurements")],
            "fcgpu": {"variant_skips": last.get("variant_skips", {}),
                      "workers": last.get("workers", {}), "settings": last.get("settings", {}),
                      "case_skips": [ln["case"] for ln in lines
                                     if not ln["case"].get("measurements")],
                      "machine": None}}


def _guard(fn):
    try:
        return fn()
    except Exception as exc:  # an experiment that fails is reported, not fatal
        if os.environ.get("FCGPU_DEBUG"):
            raise
        return {"skipped": "failed: %s: %s" % (type(exc).__name__, exc)}
