"""pytest plumbing for the suites: options, the variant workers, interleaved rounds, the
terminal summary and what goes into ``--benchmark-json``.

Each test is one *case* (an op at one size, or one net). Its pytest-benchmark target
is one *round*: every variant that can run the case runs one chunk of calls (or
steps) in its own worker process, in an order that rotates from round to round. The
per-variant times go to the test's ``extra_info["measurements"]``; pytest-benchmark's
own statistics for the test are those of the whole round. Variants that cannot run a
case are listed, with the reason, in ``extra_info["skipped"]``.

The conftest files of the suites star-import this module.
"""
from __future__ import annotations

import os
import statistics

import pytest

from . import kernels as _kernels
from . import models as _models
from . import schedule as _schedule
from . import variants as _variants
from .worker import Worker, WorkerGone


PARTS = ("all", "headline", "rest")
# on a GPU, one pair of CUDA events brackets at least this many back-to-back calls, so
# the host's launch latency is spread over them (see worker.kernel_run)
MIN_GPU_CALLS = 10

# what the run recorded beyond pytest-benchmark's own data (-> --benchmark-json)
RECORD = {"variant_skips": {}, "case_skips": [], "workers": {}, "settings": {}}


# ----------------------------------------------------------------- options

def pytest_addoption(parser):
    g = parser.getgroup("fcgpu-bench")
    g.addoption("--fcgpu-quick", action="store_true",
                help="fewer sizes, shorter budgets, no torch.compile")
    g.addoption("--fcgpu-full", action="store_true",
                help="on a CPU-only machine also run sizes up to 2^26 and 65536x4096, and "
                     "torch.compile on the wide net")
    g.addoption("--fcgpu-variants", default=None,
                help="comma-separated variants to run (default: all that apply)")
    g.addoption("--fcgpu-partial", default=None, metavar="PATH",
                help="append each case's measurements to PATH as a JSON line as soon as it "
                     "is done (survives a run that is stopped before pytest-benchmark writes "
                     "its JSON)")
    g.addoption("--fcgpu-deadline", type=float, default=None,
                help="a Unix time: cases not started by then are skipped, with that reason")
    g.addoption("--fcgpu-budget", type=float, default=None,
                help="seconds of measurement per case (default: kernels 2, training 30; "
                     "quick: 1 and 10)")
    g.addoption("--fcgpu-part", default="all", choices=PARTS,
                help="headline: only the cases and variants of the summary figures "
                     "(fcgpu.bench.schedule); rest: everything else; all (default): "
                     "everything, the summary's cases first")


class Options:
    def __init__(self, config):
        from .. import backend
        self.quick = config.getoption("--fcgpu-quick")
        self.full = config.getoption("--fcgpu-full")
        only = config.getoption("--fcgpu-variants")
        self.only = set(v.strip() for v in only.split(",")) if only else None
        self.budget = config.getoption("--fcgpu-budget")
        self.deadline = config.getoption("--fcgpu-deadline")
        self.partial = config.getoption("--fcgpu-partial")
        self.part = config.getoption("--fcgpu-part")
        self.gpu, self.gpu_reason = backend.cupy_status()

    def kernel_budget(self):
        return self.budget or (1.0 if self.quick else 2.0)

    def train_budget(self):
        return self.budget or (10.0 if self.quick else 30.0)

    def flat_sizes(self):
        top = 26 if (self.gpu or self.full) else 24
        if self.quick:
            return [1 << e for e in sorted({16, 20, min(24, top), top})]
        return [1 << e for e in range(16, top + 1)]

    def row_shapes(self):
        shapes = [(490, 500)]
        if self.gpu or self.full:
            shapes.append((65536, 4096))
        return shapes

    def gather_batches(self):
        from .gather import BATCH, BIG_BATCH
        return [BATCH, BIG_BATCH] if (self.gpu or self.full) else [BATCH]

    def settings(self):
        return {"quick": self.quick, "full": self.full,
                "variants": sorted(self.only) if self.only else None,
                "kernel_budget_s": self.kernel_budget(), "train_budget_s": self.train_budget(),
                "flat_sizes": self.flat_sizes(), "row_shapes": self.row_shapes(),
                "gather_batches": self.gather_batches(), "part": self.part,
                "gpu": self.gpu, "gpu_reason": self.gpu_reason}


_OPTIONS = None


def _opts(config):
    global _OPTIONS
    if _OPTIONS is None:
        _OPTIONS = Options(config)
        RECORD["settings"] = _OPTIONS.settings()
    return _OPTIONS


def kernel_cases(opts):
    """``[(op, shape)]`` in the order they run. A run with a deadline (the GPU check
    gives the suite seconds) measures the first ones: the summary's cases first (the
    copy reference and dropout at the largest size, the fused forward at each row
    shape: :data:`fcgpu.bench.schedule.HEADLINE_KERNELS`), then the minibatch gathers
    (augmenting and plain, at every batch size), then the flat ops by size and the
    row ops. ``--fcgpu-part headline`` keeps the summary's cases only; ``rest`` keeps
    the cases with a variant the headline does not measure."""
    part = getattr(opts, "part", "all")
    every = [("copy", (opts.flat_sizes()[-1],))]
    for b in opts.gather_batches():
        every += [(op, (b,)) for op in _kernels.GATHER_OPS]
    for n in opts.flat_sizes():
        every += [(op, (n,)) for op in _kernels.FLAT_OPS if (op, (n,)) not in every]
    for shape in opts.row_shapes():
        every += [(op, shape) for op in _kernels.ROW_OPS]
    head = [(op, tuple(shape)) for op, shape, _, _ in _schedule.HEADLINE_KERNELS]
    if part == "headline":
        return head
    # (without the 2^26 sizes, a CPU-only run, the copy reference stays first)
    first = [c for c in head if c in every] if head[0] in every else []
    cases = first + [c for c in every if c not in first]
    if part == "rest":
        cases = [(op, shape) for op, shape in cases
                 if any(case_variant(opts, op, shape, v) for v in _variants.names("kernels"))]
    return cases


def case_variant(opts, op, shape, variant):
    """Whether this run's part measures ``variant`` on kernel case ``(op, shape)``."""
    if not _variants.applicable(variant, op):
        return False
    part = getattr(opts, "part", "all")
    if part == "all":
        return True
    head = variant in _schedule.headline_variants(op, shape)
    return head if part == "headline" else not head


def train_nets(opts):
    if getattr(opts, "part", "all") == "headline":
        return [net for net, _, _ in _schedule.HEADLINE_TRAIN]
    return list(_models.NETS)


def train_variant(opts, net, variant):
    """Whether this run's part trains ``variant`` on ``net``."""
    part = getattr(opts, "part", "all")
    if part == "all":
        return True
    head = variant in _schedule.headline_train_variants(net)
    return head if part == "headline" else not head


def suite_variants(opts, suite):
    """The variants whose workers a suite ('kernels' or 'train') starts in this run's
    part, in the table's order (:mod:`fcgpu.bench.variants`)."""
    return _part_variants(opts, _variants.names(suite), suite)


def _part_variants(opts, variants, suite):
    """The variants a suite's workers are started for in this run's part."""
    if getattr(opts, "part", "all") != "headline":
        return list(variants)
    if suite == "kernels":
        used = {v for _, _, vs, _ in _schedule.HEADLINE_KERNELS for v in vs}
    else:
        used = {v for _, vs, _ in _schedule.HEADLINE_TRAIN for v in vs}
    return [v for v in variants if v in used]


def pytest_generate_tests(metafunc):
    opts = _opts(metafunc.config)
    if "kernel_case" in metafunc.fixturenames:
        cases = kernel_cases(opts)
        metafunc.parametrize("kernel_case", cases,
                             ids=["%s-%s" % (op, _kernels.shape_label(s)) for op, s in cases])
    if "train_net" in metafunc.fixturenames:
        metafunc.parametrize("train_net", train_nets(opts))


# ----------------------------------------------------------------- workers

QUICK_CPU_MAX = 1 << 24  # with --quick, CPU variants stop at this many elements


def _start(variants, opts):
    """Start one worker per variant (all at once, then wait for each hello)."""
    started = {}
    for v in variants:
        row = _variants.get(v)
        if opts.quick and not row.quick and (opts.only is None or v not in opts.only):
            RECORD["variant_skips"][v] = ("not measured with --quick (a slow reference; "
                                          "select it with --variants)")
            continue
        if opts.quick and row.compile:
            RECORD["variant_skips"][v] = "not measured with --quick (torch.compile takes minutes)"
            continue
        if opts.only is not None and v not in opts.only:
            RECORD["variant_skips"][v] = "not selected (--fcgpu-variants / --variants)"
            continue
        if row.family == "cupy" and not opts.gpu:
            RECORD["variant_skips"][v] = "no GPU backend: %s" % opts.gpu_reason
            continue
        started[v] = Worker(v, wait=False)
    pool = {}
    for v, w in started.items():
        w.hello()
        if w.skip:
            RECORD["variant_skips"][v] = w.skip
            continue
        pool[v] = w
        RECORD["workers"][v] = w.info
    return pool


def _revive(pool, v):
    """A fresh worker for ``v`` if its process died in an earlier case (out of memory,
    a crash); None if it could not start."""
    w = pool[v]
    if w.alive:
        return w
    if w.info and w.proc.poll() is not None:  # it had started fine, then died
        nw = Worker(v)
        if not nw.skip:
            pool[v] = nw
            return nw
    return None


def _close(pool):
    for v, w in pool.items():
        if w.alive:
            try:
                resp = w.request({"cmd": "threads"}, 30)
                if resp.get("ok"):
                    RECORD["workers"].setdefault(v, {})["threads_end"] = resp["threads"]
            except WorkerGone:
                pass
        w.close()


@pytest.fixture(scope="session")
def bench_opts(request):
    opts = _opts(request.config)
    _load_sample()
    return opts


@pytest.fixture(scope="module")
def kernel_workers(bench_opts):
    pool = _start(suite_variants(bench_opts, "kernels"), bench_opts)
    yield pool
    _close(pool)


@pytest.fixture(scope="module")
def train_workers(bench_opts):
    pool = _start(suite_variants(bench_opts, "train"), bench_opts)
    yield pool
    _close(pool)


# ----------------------------------------------------------------- measuring

def _req(w, req, timeout):
    """The worker's answer, or ``{"ok": False, "skip": why}`` if it failed or died."""
    try:
        resp = w.request(req, timeout)
    except WorkerGone as exc:
        return {"ok": False, "skip": str(exc)}
    if not resp.get("ok") and "error" in resp:
        resp["skip"] = "failed: " + resp["error"]
    return resp


def _stats(xs):
    xs = sorted(xs)
    if not xs:
        return {}
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": xs[0],
            "max": xs[-1], "n": len(xs)}


def run_interleaved(benchmark, active, run_req, units, rounds, timeout):
    """Rounds of one chunk per variant, order rotating; returns per-variant raw data.

    ``active``: variant -> (worker, chunk size); ``run_req(k)`` builds the request;
    ``units(resp, k)`` turns an answer into a list of per-unit time samples.
    """
    order = list(active)
    data = {v: [] for v in order}
    failed = {}
    counter = {"r": 0}

    def one_round():
        r = counter["r"]
        counter["r"] += 1
        rot = order[r % len(order):] + order[:r % len(order)]
        for v in rot:
            if v in failed:
                continue
            w, k = active[v]
            resp = _req(w, run_req(k), timeout)
            if not resp.get("ok"):
                failed[v] = resp.get("skip", "failed")
                continue
            data[v].append(units(resp, k))

    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    return data, failed


def _load_sample():
    """The 1-minute load average now (kept per case and for the whole run)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    RECORD["settings"].setdefault("loadavg", []).append(load)
    return load


def _plan(est, budget, rounds, cap, least=None):
    """Chunk sizes so each variant gets about budget/len(est) seconds over ``rounds``;
    ``least``: {variant: the fewest calls a chunk of it may have}."""
    share = budget / max(len(est), 1)
    least = least or {}
    return {v: int(max(least.get(v, 1), min(cap, share // (rounds * max(t, 1e-7)))))
            for v, t in est.items()}


def _keep(opts, case):
    """Append a finished (or skipped) case to the --fcgpu-partial file."""
    if not opts.partial:
        return
    import json
    line = {"case": case, "variant_skips": RECORD["variant_skips"], "workers": RECORD["workers"],
            "settings": RECORD["settings"]}
    with open(opts.partial, "a") as f:
        f.write(json.dumps(line) + "\n")


def _fit_rounds(opts, rounds, round_s, least=3):
    """Fewer rounds when the deadline would pass before they are done (at least 3)."""
    import time
    if not opts.deadline or round_s <= 0:
        return rounds
    left = opts.deadline - time.time()
    return int(max(least, min(rounds, left // round_s)))


def _past_deadline(opts, case):
    import time
    if opts.deadline and time.time() > opts.deadline:
        case["skipped"] = {"*": _schedule.NOT_STARTED}
        RECORD["case_skips"].append(case)
        RECORD["settings"]["deadline_reached"] = True
        _keep(opts, case)
        pytest.skip("the run's deadline was reached")


def measure_kernel_case(benchmark, pool, opts, op, shape):
    _past_deadline(opts, {"suite": "kernels", "op": op, "shape": list(shape),
                          "dtype": _kernels.op_dtype(op), "bytes": _kernels.op_bytes(op, shape),
                          "measurements": {}})
    nbytes = _kernels.op_bytes(op, shape)
    skipped, est, active, labels, rot = {}, {}, {}, {}, {}
    max_call = 4.0 if opts.full else 2.0
    for v in list(pool):
        if not case_variant(opts, op, shape, v):
            continue
        if opts.quick and _variants.get(v).device == "cpu" and \
                _kernels.elements(op, shape) > QUICK_CPU_MAX:
            skipped[v] = "CPU variants stop at 2^24 elements with --quick"
            continue
        w = _revive(pool, v)
        if w is None:
            skipped[v] = pool[v].skip or "its worker died in an earlier case and did not restart"
            continue
        resp = _req(w, {"cmd": "kernel_setup", "op": op, "shape": list(shape)}, 600)
        if not resp.get("ok"):
            skipped[v] = resp.get("skip", "failed")
            continue
        labels[v], rot[v] = resp["label"], resp["rotate"]
        first = _req(w, {"cmd": "kernel_run", "calls": 1}, 600)  # warm-up (compiles)
        if not first.get("ok"):
            skipped[v] = first.get("skip", "failed")
            continue
        calls = 1 if first["host"][0] > max_call else 3  # a slow first call may be compiling
        more = _req(w, {"cmd": "kernel_run", "calls": calls}, 600)
        if not more.get("ok"):
            skipped[v] = more.get("skip", "failed")
            continue
        t = statistics.median(more["host"])
        if t > max_call:
            skipped[v] = ("one call takes %.1f s, over this run's per-call limit of %.0f s"
                          % (t, max_call))
            _req(w, {"cmd": "free"}, 60)
            continue
        est[v] = t
        active[v] = w
    case = {"suite": "kernels", "op": op, "shape": list(shape), "dtype": _kernels.op_dtype(op),
            "bytes": nbytes, "skipped": skipped, "measurements": {}}
    benchmark.group = "kernel %s" % op
    benchmark.extra_info.update(case)
    if not active:
        RECORD["case_skips"].append(case)
        _keep(opts, case)
        pytest.skip("no variant can run %s %s: %s" % (op, _kernels.shape_label(shape),
                                                      "; ".join("%s: %s" % kv
                                                                for kv in skipped.items())))
    rounds = 6 if opts.quick else 10
    chunks = _plan(est, opts.kernel_budget(), rounds, 500,
                   {v: MIN_GPU_CALLS for v in est if _variants.get(v).device == "gpu"})
    rounds = _fit_rounds(opts, rounds, sum(chunks[v] * est[v] for v in active))
    data, failed = run_interleaved(
        benchmark, {v: (active[v], chunks[v]) for v in active},
        lambda k: {"cmd": "kernel_run", "calls": k},
        lambda resp, k: (resp["host"], resp["device"]), rounds,
        timeout=max(60.0, 20 * max_call * max(chunks.values())))
    skipped.update(failed)
    for v, chunks_data in data.items():
        if v in failed or not chunks_data:
            continue
        host = [t for h, _ in chunks_data for t in h]
        dev = [t for _, d in chunks_data if d for t in d]
        hs, ds = _stats(host), _stats(dev)
        t = ds.get("median") or hs["median"]
        case["measurements"][v] = {
            "label": labels[v], "device": _variants.get(v).device, "rotate": rot[v],
            "calls_per_chunk": chunks[v], "host": hs, "device_time": ds or None,
            "time_s": t, "timer": "cuda_events" if ds else "host_clock",
            "gbps": nbytes / t / 1e9 if t > 0 else None,
        }
    for w in active.values():
        _req(w, {"cmd": "free"}, 60)
    case["loadavg"] = _load_sample()
    benchmark.extra_info.update(case)
    _keep(opts, case)


def measure_train_case(benchmark, pool, opts, net):
    _past_deadline(opts, {"suite": "train", "net": net, "hidden": _models.NETS[net]["hidden"],
                          "batch": _models.NETS[net]["batch"], "measurements": {}})
    spec = _models.NETS[net]
    batch = spec["batch"]
    skipped, est, active, info = {}, {}, {}, {}
    max_step = 20.0
    for v in list(pool):
        if not train_variant(opts, net, v):
            continue
        w = _revive(pool, v)
        if w is None:
            skipped[v] = pool[v].skip or "its worker died in an earlier case and did not restart"
            continue
        if _variants.get(v).compile:
            if opts.quick:
                skipped[v] = "not measured with --quick (torch.compile takes minutes)"
                continue
            if net != "default" and not opts.full:
                skipped[v] = ("torch.compile is measured on the default net only (compile "
                              "time); --full measures it here too")
                continue
        resp = _req(w, {"cmd": "train_setup", "net": net}, 900)
        if not resp.get("ok"):
            skipped[v] = resp.get("skip", "failed")
            continue
        info[v] = {k: resp[k] for k in ("label", "build_s", "first_step_s", "params")
                   if k in resp}
        warm = _req(w, {"cmd": "train_run", "steps": 2}, 600)
        if not warm.get("ok"):
            skipped[v] = warm.get("skip", "failed")
            continue
        t = warm["seconds"] / 2
        if t > max_step:
            skipped[v] = "one step takes %.1f s, over the limit of %.0f s" % (t, max_step)
            _req(w, {"cmd": "free"}, 60)
            continue
        est[v] = t
        active[v] = w
    case = {"suite": "train", "net": net, "hidden": spec["hidden"], "batch": batch,
            "skipped": skipped, "measurements": {}}
    benchmark.group = "train %s" % net
    benchmark.extra_info.update(case)
    if not active:
        RECORD["case_skips"].append(case)
        _keep(opts, case)
        pytest.skip("no variant can train the %s net: %s"
                    % (net, "; ".join("%s: %s" % kv for kv in skipped.items())))
    rounds = 6 if opts.quick else 12
    chunks = _plan(est, opts.train_budget(), rounds, 200)
    rounds = _fit_rounds(opts, rounds, sum(chunks[v] * est[v] for v in active))
    data, failed = run_interleaved(
        benchmark, {v: (active[v], chunks[v]) for v in active},
        lambda k: {"cmd": "train_run", "steps": k},
        lambda resp, k: resp["seconds"] / k, rounds,
        timeout=max(120.0, 10 * max_step * max(chunks.values())))
    skipped.update(failed)
    for v, per_step in data.items():
        if v in failed or not per_step:
            continue
        st = _stats(per_step)
        m = dict(info[v])
        m.update({"device": _variants.get(v).device, "steps_per_chunk": chunks[v],
                  "step_s": st, "samples_per_s": batch / st["median"],
                  "steps": chunks[v] * len(per_step)})
        case["measurements"][v] = m
    for w in active.values():
        _req(w, {"cmd": "free"}, 60)
    case["loadavg"] = _load_sample()
    benchmark.extra_info.update(case)
    _keep(opts, case)


# ----------------------------------------------------------------- reporting

def pytest_benchmark_update_json(config, benchmarks, output_json):
    from .machine import machine_info
    output_json["fcgpu"] = dict(RECORD, machine=machine_info())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    benches = getattr(bs, "benchmarks", None) or []
    lines = []
    cpu_pair = {}
    for b in benches:
        ei = getattr(b, "extra_info", {}) or {}
        ms = ei.get("measurements") or {}
        if ei.get("suite") == "kernels":
            head = "%-12s %-10s" % (ei["op"], _kernels.shape_label(ei["shape"]))
            cells = ["%s %.1f GB/s" % (v, m["gbps"]) for v, m in ms.items() if m.get("gbps")]
            lines.append(head + "  " + ", ".join(cells))
        elif ei.get("suite") == "train":
            cells = ["%s %.0f/s" % (v, m["samples_per_s"]) for v, m in ms.items()]
            lines.append("train %-8s samples/s: %s" % (ei["net"], ", ".join(cells)))
            if "numpy" in ms and "torch_cpu" in ms:
                cpu_pair[ei["net"]] = ms["numpy"]["samples_per_s"] / ms["torch_cpu"]["samples_per_s"]
    if not lines and not RECORD["variant_skips"]:
        return
    tr = terminalreporter
    tr.section("fcgpu benchmarks (per variant, interleaved rounds)")
    for ln in lines:
        tr.write_line(ln)
    for net, ratio in cpu_pair.items():
        tr.write_line("NumPy path / PyTorch CPU samples/s, %s net, same run: %.2fx "
                      "(target >= 0.9x)" % (net, ratio), bold=True)
    for v, why in RECORD["variant_skips"].items():
        tr.write_line("skipped %s: %s" % (v, why))
