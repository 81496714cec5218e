"""``fcgpu bench``: run the benchmark suites that fit this machine, then write one
results JSON (and, with ``--report``, the Markdown report and plots).

``fcgpu bench --profile`` times one CPU training step phase by phase beside its GEMM
floor (:mod:`fcgpu.bench.profile`) and prints the tables; with ``--out`` it writes them
into results.json too, and with ``--only SUITE`` it runs that suite first."""
from __future__ import annotations

import json
import os
import sys
import time

from ..errors import BackendUnavailable, ConfigError
from ..bench.runner import Run, make_dir


PART_HELP = ("headline: only the four summary figures (dropout bandwidth fractions at "
             "2^26, fused vs what a CuPy user writes, training vs PyTorch eager, the "
             "course's whole run), --deadline shared by their estimates "
             "(fcgpu.bench.schedule); rest: everything else, added to the --part "
             "headline results already in --out; all (default): on a GPU the headline "
             "first, then the rest")


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
                        "on a GPU it ends the headline (--part headline always runs it); "
                        "without one it runs first, in 40%% of --deadline (25 s, at most "
                        "60%%, where that is more)")
    p.add_argument("--course-backends", default=None, metavar="LIST",
                   help="comma-separated backends for --course-wall, in the order to run "
                        "them (default: fcgpu_graph,torch_cuda,fcgpu,numpy; with --part "
                        "headline: fcgpu_graph,torch_cuda,fcgpu)")
    p.add_argument("--part", choices=["all", "headline", "rest"], default="all",
                   help=PART_HELP)
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="finish within about this many seconds: cases not started by then "
                        "are reported as not run and results.json says complete: false "
                        "(kernels get half, training up to 90%%; --part headline: shares "
                        "by the estimates); a suite still running 15 s past it is stopped")
    p.add_argument("--report", action="store_true",
                   help="also write report.md and the plots into --out")
    p.add_argument("--matmul-precision", choices=["highest", "high"], default=None,
                   help="float32 matrix products of fcgpu and of PyTorch on the GPU alike: "
                        "highest (float32) or high (TF32 allowed, compute capability 8.0 "
                        "and later); default: FCGPU_MATMUL_PRECISION, else highest; "
                        "recorded in results.json")
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
        raise ConfigError("--profile-net %r: give one of %s, or hidden sizes such as "
                         "1024,1024,1024" % (text, ", ".join(NETS)))
    return {"hidden": hidden, "batch": NETS["default"]["batch"]}


def _profile(args):
    """Run the step profile; print its tables (and the JSON with --json)."""
    from ..bench.profile import profile_step
    from ..bench.report.profile import profile_text
    if args.pad < 0:
        raise ConfigError("--pad must be >= 0, got %d" % args.pad)
    if args.rounds < 3:
        raise ConfigError("--rounds must be at least 3, got %d" % args.rounds)
    if args.profile_seconds is not None and args.profile_seconds <= 0:
        raise ConfigError("--profile-seconds must be positive, got %g" % args.profile_seconds)
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
    """``fcgpu bench`` with the matmul precision of ``--matmul-precision`` (else the
    process's, FCGPU_MATMUL_PRECISION or 'highest') for the run: every child process
    gets it, and the PyTorch variants compute as fcgpu does
    (:func:`fcgpu.bench.torch_course.match_precision`)."""
    from .. import backend
    previous = backend.set_matmul_precision(args.matmul_precision
                                            or backend.get_matmul_precision())
    try:
        if args.profile and args.only is None:
            return _profile_only(args)
        return _run_suites(args)
    finally:
        backend.set_matmul_precision(previous)


def _run_suites(args):
    _check_args(args)
    b = Run(args)
    if args.part == "rest":
        b.load_headline()
    _warn_load()
    for phase, secs in _phases(args, b):
        if phase == "headline":
            _run_headline(b, args, secs)
        else:
            _run_rest(b, args, phase, secs)
    if args.profile:
        b.prof["profile"] = _profile(args)
        b.write()
    if args.only in (None, "experiments") and args.part != "headline":
        _run_experiments(b, args)
    results = b.write(final=True)
    _print_results(b, results, args)
    return 0 if b.rc in (0, 5) else 1


def _check_args(args):
    """The flags of a suite run, checked before anything runs (one-line errors)."""
    if not args.out:
        raise ConfigError("--out DIR is required (only --profile runs without it)")
    if args.deadline is not None and args.deadline <= 0:
        raise ConfigError("--deadline must be positive, got %g" % args.deadline)
    if args.budget is not None and args.budget <= 0:
        raise ConfigError("--budget must be positive, got %g" % args.budget)
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        raise ConfigError("fcgpu bench needs pytest-benchmark: pip install 'fcgpu[bench]'") \
            from None
    _course_names(args)
    if args.variants:
        from ..bench.variants import VARIANTS
        bad = [v for v in args.variants.split(",") if v.strip() not in VARIANTS]
        if bad:
            raise ConfigError("--variants: unknown variant %s; choose from %s"
                              % (", ".join(bad), ", ".join(VARIANTS)))
    if args.part != "all":
        from .. import backend
        ok, why = backend.cupy_status()
        if not ok:
            raise BackendUnavailable("--part %s splits a GPU run (the headline is the GPU's "
                                     "summary figures), and there is no GPU backend here: %s"
                                     % (args.part, why))


def _course_names(args):
    """--course-backends as a list (None: the default), checked."""
    from ..bench.course_run import COURSE_BACKENDS
    names = args.course_backends.split(",") if args.course_backends else None
    bad = [n for n in names or () if n not in COURSE_BACKENDS]
    if bad:
        raise ConfigError("--course-backends: unknown backend %s; choose from %s"
                         % (", ".join(bad), ", ".join(COURSE_BACKENDS)))
    return names


def _phases(args, b):
    """``[(phase, seconds or None)]``: --part all runs the headline first on a GPU (in
    its estimated seconds plus 15, or all of --deadline where that is less), then the
    rest in the time left."""
    from .. import backend
    from ..bench import schedule
    d = args.deadline
    if args.part != "all":
        return [(args.part, d)]
    if not backend.cupy_status()[0]:  # no GPU: no headline to measure first
        return [("all", d)]
    head = None if d is None else min(d, schedule.headline_seconds() + 15)
    return [("headline", head), ("rest", None if d is None else d - head)]


def _run_headline(b, args, secs):
    """The summary's kernel cases, its training cases, then the course's whole run, each
    phase by its share of ``secs`` (:func:`fcgpu.bench.schedule.phase_deadlines`)."""
    from ..bench import schedule
    from ..bench.course_run import course_wall
    suites = _suite_files(args.only)
    course = args.part == "headline" or args.course_wall
    phases = [p for p in schedule.PHASES if (p == "course" and course) or p in suites]
    if not phases:
        return
    start = time.time()
    ends = schedule.phase_deadlines(secs, phases) if secs else {}
    for p in phases:
        end = start + ends[p] if secs else None
        if end is not None and time.time() > end - 5:  # an earlier phase overran
            b.not_run["headline-" + p] = "not started: the run's --deadline was reached first"
            continue
        if p != "course":
            b.suite(p, suites[p], "headline", end, end + 10 if end else None)
            continue
        names = _course_names(args) or (list(schedule.headline_course_backends())
                                         if args.part == "headline" else None)
        print("fcgpu bench: course wall time (headline)", file=sys.stderr, flush=True)
        b.exps["course_wall"] = _guard(lambda: course_wall(enabled=True, backends=names,
                                                           deadline=end))
        b.write()


def _run_rest(b, args, phase, secs):
    """The suites (and, without a GPU, the course run first) in ``secs``: kernels may
    start cases until half of it, training until 90%."""
    from ..bench.course_run import course_wall, time_share
    start = time.time()
    end = None if secs is None else start + secs
    if phase == "all" and args.course_wall:  # first: short, and a headline figure
        b.exps["course_wall"] = _guard(lambda: course_wall(
            enabled=True, backends=_course_names(args),
            deadline=None if secs is None else start + time_share(secs)))
        b.write()
    suites = _suite_files(args.only)
    share = {"kernels": 0.5, "train": 0.9} if len(suites) > 1 else {k: 0.9 for k in suites}
    for name, file in suites.items():
        if end is not None and time.time() > end - 10:
            b.not_run[name] = "the run's --deadline was reached first"
            continue
        b.suite(name, file, phase, None if end is None else start + share[name] * secs,
                None if end is None else end + 15)


def _run_experiments(b, args):
    from ..bench import experiments
    from ..bench.course_run import course_wall
    if b.deadline and time.time() > b.deadline - 5:
        why = "not run: the run's --deadline was reached first"
        b.exps.update({k: {"skipped": why} for k in ("dropout_stats", "dropout_regularizer",
                                                     "time_to_accuracy")})
    else:
        print("fcgpu bench: notebook experiments", file=sys.stderr, flush=True)
        b.exps["dropout_stats"] = _guard(experiments.dropout_stats)
        b.exps["dropout_regularizer"] = _guard(
            lambda: experiments.dropout_regularizer(args.data, backend_name="auto"))
        b.exps["time_to_accuracy"] = _guard(
            lambda: experiments.time_to_accuracy(args.data, enabled=args.time_to_accuracy))
    if "course_wall" not in b.exps:
        b.exps["course_wall"] = course_wall(enabled=False)


def _print_results(b, results, args):
    print("fcgpu bench: wrote %s (%.0f s)" % (b.path, time.time() - b.t0))
    for k, v in results["summary"].items():
        print("  %-22s %s%s" % (k, "null" if v is None else "%.3f" % v,
                                "" if v is not None else
                                "  (%s)" % results["summary_notes"].get(k, "")))
    st = results["settings"]
    print("  complete: %s" % ("yes" if st["complete"] else "no: " + "; ".join(
        st["cut"] + ["%s failed: %s" % kv for kv in st["suites_failed"].items()])))
    if results.get("suggested_dir"):
        print("  to commit it: bench/results/%s/" % results["suggested_dir"])
    if args.report:
        from ..bench import report
        res = report.load([b.path])
        print("fcgpu bench: wrote %s" % report.render(res, b.out))


def _profile_only(args):
    _warn_load()
    prof = _profile(args)
    if not args.out:
        return 0
    from .. import backend
    from ..atomic import atomic_write_bytes
    from ..bench.machine import machine_info
    from ..bench.results import build_results
    out = os.path.abspath(args.out)
    make_dir(out)
    path = os.path.join(out, "results.json")
    results = build_results([], machine=machine_info(), profile=prof, settings={
        "command": " ".join(sys.argv), "only": "profile", "complete": True,
        "matmul_precision": backend.get_matmul_precision(),
        "suites_not_run": {}})
    atomic_write_bytes(json.dumps(results, indent=1).encode(), path)
    print("fcgpu bench: wrote %s" % path, file=sys.stderr)
    if args.report:
        from ..bench import report
        print("fcgpu bench: wrote %s" % report.render(report.load([path]), out),
              file=sys.stderr)
    return 0


def _guard(fn):
    try:
        return fn()
    except Exception as exc:  # an experiment that fails is reported, not fatal
        if os.environ.get("FCGPU_DEBUG"):
            raise
        return {"skipped": "failed: %s: %s" % (type(exc).__name__, exc)}
