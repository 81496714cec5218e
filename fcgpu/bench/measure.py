"""How the suites measure a case: the variant workers, interleaved rounds, and what a
case records.

Each test is one *case* (an op at one size, or one net). Every variant that can run
it is readied in its worker (set-up, an untimed call, sizing calls); then each
pytest-benchmark round runs one chunk of calls (or steps) per variant, in an order
that rotates from round to round. The per-variant times go to the test's
``extra_info["measurements"]``; pytest-benchmark's own statistics for the test are
those of the whole round. Variants that cannot run a case are listed, with the reason,
in ``extra_info["skipped"]``; a case not started by the run's deadline is recorded as
skipped by every variant (``"*"``).
"""
from __future__ import annotations

import json
import os
import statistics
import time

import pytest

from . import kernels as _kernels
from . import models as _models
from . import schedule as _schedule
from . import variants as _variants
from .worker import Worker, WorkerGone

# on a GPU, one pair of CUDA events brackets at least this many back-to-back calls, so
# the host's launch latency is spread over them (see worker.kernel_run)
MIN_GPU_CALLS = 10
QUICK_CPU_MAX = 1 << 24  # with --quick, CPU variants stop at this many elements
MAX_STEP_S = 20.0        # a training variant whose step takes longer is skipped

# what the run recorded beyond pytest-benchmark's own data (-> --benchmark-json)
RECORD = {"variant_skips": {}, "case_skips": [], "workers": {}, "settings": {}}


# ----------------------------------------------------------------- workers

def _not_started(v, opts):
    """Why variant ``v`` gets no worker in this run, or None."""
    row = _variants.get(v)
    if opts.quick and not row.quick and (opts.only is None or v not in opts.only):
        return "not measured with --quick (a slow reference; select it with --variants)"
    if opts.quick and row.compile:
        return "not measured with --quick (torch.compile takes minutes)"
    if opts.only is not None and v not in opts.only:
        return "not selected (--fcgpu-variants / --variants)"
    if row.family == "cupy" and not opts.gpu:
        return "no GPU backend: %s" % opts.gpu_reason
    return None


def start(variants, opts):
    """One worker per variant (all started at once, then each hello waited for);
    ``{variant: Worker}`` of those that can run here."""
    started = {}
    for v in variants:
        why = _not_started(v, opts)
        if why:
            RECORD["variant_skips"][v] = why
        else:
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


def close(pool):
    """Record each worker's thread counts at the end, then stop it."""
    for v, w in pool.items():
        if w.alive:
            try:
                resp = w.request({"cmd": "threads"}, 30)
                if resp.get("ok"):
                    RECORD["workers"].setdefault(v, {})["threads_end"] = resp["threads"]
            except WorkerGone:
                pass
        w.close()


# ----------------------------------------------------------------- one case

def _req(w, req, timeout):
    """The worker's answer, or ``{"ok": False, "skip": why}`` if it failed or died."""
    try:
        resp = w.request(req, timeout)
    except WorkerGone as exc:
        return {"ok": False, "skip": str(exc)}
    if not resp.get("ok") and "error" in resp:
        resp["skip"] = "failed: " + resp["error"]
    return resp


class _Skip(Exception):
    """This variant cannot run this case; the message says why."""


def _ask(w, req, timeout):
    """The worker's answer to ``req``; :class:`_Skip` where it failed."""
    resp = _req(w, req, timeout)
    if not resp.get("ok"):
        raise _Skip(resp.get("skip", "failed"))
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


def load_sample():
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
    line = {"case": case, "variant_skips": RECORD["variant_skips"], "workers": RECORD["workers"],
            "settings": RECORD["settings"]}
    with open(opts.partial, "a") as f:
        f.write(json.dumps(line) + "\n")


def _fit_rounds(opts, rounds, round_s, least=3):
    """Fewer rounds when the deadline would pass before they are done (at least 3)."""
    if not opts.deadline or round_s <= 0:
        return rounds
    left = opts.deadline - time.time()
    return int(max(least, min(rounds, left // round_s)))


def _past_deadline(opts, case):
    if opts.deadline and time.time() > opts.deadline:
        case = dict(case, skipped={"*": _schedule.NOT_STARTED}, measurements={})
        RECORD["case_skips"].append(case)
        RECORD["settings"]["deadline_reached"] = True
        _keep(opts, case)
        pytest.skip("the run's deadline was reached")


def _ready(pool, case, variants, prepare):
    """``{variant: (worker, seconds per unit, what prepare returned)}`` of the variants
    that ``prepare(variant, worker)`` readied (it returns ``(seconds, info)`` or raises
    :class:`_Skip`); the others go to ``case["skipped"]``."""
    active = {}
    for v in variants:
        w = _revive(pool, v)
        try:
            if w is None:
                raise _Skip(pool[v].skip or "its worker died in an earlier case and did not "
                                             "restart")
            active[v] = (w,) + tuple(prepare(v, w))
        except _Skip as why:
            case["skipped"][v] = str(why)
    return active


def _run(benchmark, opts, case, active, plan, request, units):
    """Measure the readied variants in interleaved rounds; returns ``(per-variant
    data, chunk sizes)`` (variants that failed on the way are added to the skips).
    ``plan``: ``(rounds, budget, cap, least, timeout(chunks))``."""
    benchmark.group = "%s %s" % ("kernel" if case["suite"] == "kernels" else "train",
                                 case.get("op") or case.get("net"))
    benchmark.extra_info.update(case)
    if not active:
        RECORD["case_skips"].append(case)
        _keep(opts, case)
        pytest.skip("no variant can run %s: %s" % (_what(case), "; ".join(
            "%s: %s" % kv for kv in case["skipped"].items())))
    rounds, budget, cap, least, timeout = plan
    est = {v: a[1] for v, a in active.items()}
    chunks = _plan(est, budget, rounds, cap, least)
    rounds = _fit_rounds(opts, rounds, sum(chunks[v] * est[v] for v in active))
    data, failed = run_interleaved(benchmark, {v: (a[0], chunks[v]) for v, a in active.items()},
                                   request, units, rounds, timeout(max(chunks.values())))
    case["skipped"].update(failed)
    return {v: d for v, d in data.items() if v not in failed and d}, chunks


def _done(benchmark, opts, case, active):
    for a in active.values():
        _req(a[0], {"cmd": "free"}, 60)
    case["loadavg"] = load_sample()
    benchmark.extra_info.update(case)
    _keep(opts, case)


def _what(case):
    if case["suite"] == "kernels":
        return "%s %s" % (case["op"], _kernels.shape_label(case["shape"]))
    return "the %s net" % case["net"]


# ----------------------------------------------------------------- the two suites

def _kernel_ready(opts, op, shape, max_call):
    """``prepare`` of a kernel case: set up, one untimed call (it may compile), then
    one or three sizing calls; ``(seconds per call, (label, input sets))``."""
    def prepare(v, w):
        if opts.quick and _variants.get(v).device == "cpu" and \
                _kernels.elements(op, shape) > QUICK_CPU_MAX:
            raise _Skip("CPU variants stop at 2^24 elements with --quick")
        setup = _ask(w, {"cmd": "kernel_setup", "op": op, "shape": list(shape)}, 600)
        first = _ask(w, {"cmd": "kernel_run", "calls": 1}, 600)
        calls = 1 if first["host"][0] > max_call else 3  # a slow first call may be compiling
        t = statistics.median(_ask(w, {"cmd": "kernel_run", "calls": calls}, 600)["host"])
        if t > max_call:
            _req(w, {"cmd": "free"}, 60)
            raise _Skip("one call takes %.1f s, over this run's per-call limit of %.0f s"
                        % (t, max_call))
        return t, (setup["label"], setup["rotate"])
    return prepare


def measure_kernel_case(benchmark, pool, opts, op, shape):
    nbytes = _kernels.op_bytes(op, shape)
    case = {"suite": "kernels", "op": op, "shape": list(shape),
            "dtype": _kernels.op_dtype(op), "bytes": nbytes, "skipped": {}, "measurements": {}}
    _past_deadline(opts, case)
    max_call = 4.0 if opts.full else 2.0
    active = _ready(pool, case, [v for v in pool if _schedule.case_variant(opts, op, shape, v)],
                    _kernel_ready(opts, op, shape, max_call))
    least = {v: MIN_GPU_CALLS for v in active if _variants.get(v).device == "gpu"}
    data, chunks = _run(benchmark, opts, case, active,
                        (6 if opts.quick else 10, opts.kernel_budget(), 500, least,
                         lambda k: max(60.0, 20 * max_call * k)),
                        lambda k: {"cmd": "kernel_run", "calls": k},
                        lambda resp, k: (resp["host"], resp["device"]))
    for v, chunks_data in data.items():
        hs = _stats([t for h, _ in chunks_data for t in h])
        ds = _stats([t for _, d in chunks_data if d for t in d])
        t = ds.get("median") or hs["median"]
        label, rotate = active[v][2]
        case["measurements"][v] = {
            "label": label, "device": _variants.get(v).device, "rotate": rotate,
            "calls_per_chunk": chunks[v], "host": hs, "device_time": ds or None,
            "time_s": t, "timer": "cuda_events" if ds else "host_clock",
            "gbps": nbytes / t / 1e9 if t > 0 else None,
        }
    _done(benchmark, opts, case, active)


def _train_ready(opts, net):
    """``prepare`` of a training case: build the model and run its first step (it may
    compile), then two steps; ``(seconds per step, what the set-up said)``."""
    def prepare(v, w):
        if _variants.get(v).compile:
            if opts.quick:
                raise _Skip("not measured with --quick (torch.compile takes minutes)")
            if net != "default" and not opts.full:
                raise _Skip("torch.compile is measured on the default net only (compile "
                            "time); --full measures it here too")
        resp = _ask(w, {"cmd": "train_setup", "net": net}, 900)
        info = {k: resp[k] for k in ("label", "build_s", "first_step_s", "params") if k in resp}
        t = _ask(w, {"cmd": "train_run", "steps": 2}, 600)["seconds"] / 2
        if t > MAX_STEP_S:
            _req(w, {"cmd": "free"}, 60)
            raise _Skip("one step takes %.1f s, over the limit of %.0f s" % (t, MAX_STEP_S))
        return t, info
    return prepare


def measure_train_case(benchmark, pool, opts, net):
    spec = _models.NETS[net]
    case = {"suite": "train", "net": net, "hidden": spec["hidden"], "batch": spec["batch"],
            "skipped": {}, "measurements": {}}
    _past_deadline(opts, case)
    active = _ready(pool, case, [v for v in pool if _schedule.train_variant(opts, net, v)],
                    _train_ready(opts, net))
    data, chunks = _run(benchmark, opts, case, active,
                        (6 if opts.quick else 12, opts.train_budget(), 200, None,
                         lambda k: max(120.0, 10 * MAX_STEP_S * k)),
                        lambda k: {"cmd": "train_run", "steps": k},
                        lambda resp, k: resp["seconds"] / k)
    for v, per_step in data.items():
        st = _stats(per_step)
        case["measurements"][v] = dict(
            active[v][2], device=_variants.get(v).device, steps_per_chunk=chunks[v],
            step_s=st, samples_per_s=spec["batch"] / st["median"],
            steps=chunks[v] * len(per_step))
    _done(benchmark, opts, case, active)
