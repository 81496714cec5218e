"""One CPU training step, phase by phase, beside its GEMM floor (``fcgpu bench --profile``).

The floor is what the step's matrix products take alone: the same products (forward
``h @ W`` for every layer, ``h.T @ dout`` for every weight gradient, ``dout @ W.T``
for every input gradient but the first layer's), with the same shapes, dtype and
memory layouts (the net's own weights), as plain ``@`` calls back to back. The step is
the training suite's (:func:`fcgpu.bench.models.fcgpu_parts`): gather a minibatch,
forward, backward, Adam on every parameter.

Each round times, in the same process and in an order that alternates every round:
the floor, one plain step, and one instrumented step. The instrumented step runs with
the functions the step calls wrapped in timers (the three matrix products of an
affine layer, every fused pass of :mod:`fcgpu.fused`, the loss, Adam, the batch
gather, the layer functions): each wrapper records the time spent in that call minus
the time of the wrapped calls inside it, so a phase's time is its own. What no phase
claims (Python, allocation, glue) is the row ``other``. The ratio step / floor uses the
plain steps only. Minimum and median over the rounds are both reported: the minimum is
the least disturbed by other work on the machine; the ratio of minima, the ratio of
medians and the median of the per-round ratios should agree on a quiet machine. On a
busy one, the sum of each product's fastest time and the sum of each phase's fastest
time (``sum_of_minima``) are the least disturbed estimates of the two.

With ``layouts=True`` a second floor stores every weight transposed (``Wt = W.T``,
C-contiguous), ``h @ Wt.T``, ``dout.T @ h`` (giving ``dWt``) and ``dout @ Wt``,
interleaved with the first: whether storing W or its transpose makes the products
faster.
"""
from __future__ import annotations

import functools
import os
import statistics
import sys
import time

import numpy as np

from .. import linalg

PROFILE_FORMAT = "fcgpu-profile-1"

# (module, attribute, kind, label): the functions the instrumented step wraps. The
# layer functions and the sandwiches are wrapped too, so that what they do beyond the
# calls below (the last layer's bias add and db sum, the glue) has a row of its own.
SEAMS = [
    ("fcgpu.layers", "softmax_loss", "loss", "softmax loss"),
    ("fcgpu.layers", "affine_forward", "glue", "affine forward (bias add)"),
    ("fcgpu.layers", "affine_backward", "glue", "affine backward (db sum)"),
    ("fcgpu.optim", "adam", "optim", "Adam"),
    ("fcgpu.bench.models", "gather", "data", "minibatch gather"),
    ("fcgpu.bench.models", "augmented_gather", "data", "augmenting minibatch gather"),
]
# the layers' matrix products, seen through fcgpu.linalg.observe (no patching): their
# rows by role
GEMM_LABELS = {"forward": "GEMM forward", "weight_gradient": "GEMM dW",
               "input_gradient": "GEMM dX"}
# every public step of the dispatch point is a phase too
FUSED_KIND = "fused"
# rows that sum all their calls in a step instead of one row per call
AGGREGATE = {"Adam", "softmax loss", "minibatch gather", "augmenting minibatch gather"}
GLUE_MODULES = ("fcgpu.layer_utils",)


class _Recorder:
    """Exclusive time per call of each wrapped function, in call order."""

    def __init__(self, clock=time.perf_counter):
        self.calls = []   # (label, kind, shapes, exclusive seconds)
        self._stack = []  # time spent in wrapped callees of each open call
        self.active = False
        self.clock = clock

    def wrap(self, fn, label, kind):
        rec = self
        perf = self.clock

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not rec.active:
                return fn(*args, **kwargs)
            rec._stack.append(0.0)
            t0 = perf()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = perf() - t0
                inner = rec._stack.pop()
                if rec._stack:
                    rec._stack[-1] += dt
                shapes = [tuple(a.shape) for a in args[:2] if hasattr(a, "shape")]
                rec.calls.append((label, kind, shapes, dt - inner))
        timed.__fcgpu_profiled__ = fn
        return timed


def fused_steps():
    """The steps of :mod:`fcgpu.fused` the NumPy path can run: the dispatch's public
    names that its Numba implementation defines (not the controls such as
    ``force_impl`` or ``use_compiled_cpu``, nor constants)."""
    from .. import fused
    from ..cpu import ops
    return [name for name in fused.__all__ if callable(getattr(ops, name, None))]


def _patch(recorder):
    """Wrap every seam wherever it is bound (its module and the modules that imported it
    by name); returns the undo list."""
    import importlib
    from .. import fused
    targets = []
    for mod, attr, kind, label in SEAMS:
        targets.append((importlib.import_module(mod), attr, kind, label))
    for name in fused_steps():
        targets.append((fused, name, FUSED_KIND, "fused " + name))
    glue = importlib.import_module(GLUE_MODULES[0])
    for name in glue.__all__:
        targets.append((glue, name, "glue", "sandwich glue"))
    undo = []
    fcgpu_modules = [m for n, m in list(sys.modules.items())
                     if m is not None and (n == "fcgpu" or n.startswith("fcgpu."))]
    for mod, attr, kind, label in targets:
        orig = getattr(mod, attr)
        wrapped = recorder.wrap(orig, label, kind)
        for m in fcgpu_modules:
            if getattr(m, attr, None) is orig:
                setattr(m, attr, wrapped)
                undo.append((m, attr, orig))
    return undo


def _gemm_observer(recorder):
    """An observer for :func:`fcgpu.linalg.observe` that times each product, by role."""
    def observed(product, a, b, role):
        return recorder.wrap(product, GEMM_LABELS.get(role, "GEMM"), "gemm")(a, b)
    return observed


def _unpatch(undo):
    for m, attr, orig in reversed(undo):
        setattr(m, attr, orig)


def floor_products(model, batch, transposed=False):
    """``[(label, op, layer, (m, k, n), thunk)]``: the step's matrix products with
    operands of the step's shapes and layouts (``transposed``: weights stored as W.T)."""
    rng = np.random.default_rng(1)
    dt = model.dtype
    L = model.num_layers
    dims = [model.input_dim] + list(model.hidden_dims) + [model.num_classes]
    hs = [rng.standard_normal((batch, dims[i]), dtype=np.float64).astype(dt) for i in range(L)]
    ds = [rng.standard_normal((batch, dims[i + 1]), dtype=np.float64).astype(dt)
          for i in range(L)]
    Ws = [model.params["W%d" % (i + 1)] for i in range(L)]
    if transposed:
        Ws = [np.ascontiguousarray(w.T) for w in Ws]
    out = []
    for i in range(L):
        h, w = hs[i], Ws[i]
        mkn = (batch, dims[i], dims[i + 1])
        f = (lambda h=h, w=w: h @ w.T) if transposed else (lambda h=h, w=w: h @ w)
        out.append(("h%d @ W%d" % (i, i + 1), "forward", i + 1, mkn, f))
    for i in range(L):
        h, d = hs[i], ds[i]
        mkn = (dims[i], batch, dims[i + 1])
        f = (lambda h=h, d=d: d.T @ h) if transposed else (lambda h=h, d=d: h.T @ d)
        out.append(("dW%d" % (i + 1), "dW", i + 1, mkn, f))
    for i in range(L - 1, 0, -1):
        d, w = ds[i], Ws[i]
        mkn = (batch, dims[i + 1], dims[i])
        f = (lambda d=d, w=w: d @ w) if transposed else (lambda d=d, w=w: d @ w.T)
        out.append(("dX%d" % (i + 1), "dX", i + 1, mkn, f))
    return out


def _time_products(products):
    perf = time.perf_counter
    times = []
    for *_, f in products:
        t0 = perf()
        f()
        times.append(perf() - t0)
    return times


def _stats(xs):
    xs = sorted(xs)
    if not xs:
        return None
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"min": xs[0], "median": statistics.median(xs), "q1": q[0], "q3": q[2],
            "max": xs[-1], "n": len(xs)}


def _phase_rows(rounds_calls, layers):
    """Per-round phase times -> rows with min and median over the rounds. A label that
    occurs several times in a step gets one row per occurrence, named by its layer
    (backward phases run from the last layer down), except the aggregated ones."""
    per_round, order = [], []
    for calls in rounds_calls:
        seen, row = {}, {}
        for label, kind, shapes, t in calls:
            if label in AGGREGATE or kind == "glue":
                key = (label, 0)
            else:
                seen[label] = seen.get(label, 0) + 1
                key = (label, seen[label])
            if key not in row:
                row[key] = {"kind": kind, "calls": 0, "t": 0.0, "shapes": shapes}
                if key not in order:
                    order.append(key)
            row[key]["calls"] += 1
            row[key]["t"] += t
        per_round.append(row)
    counts = {}
    for label, k in order:
        counts[label] = max(counts.get(label, 0), k)
    out = []
    for key in order:
        ts = [r[key]["t"] for r in per_round if key in r]
        first = next(r[key] for r in per_round if key in r)
        label, k = key
        row = {"label": label, "kind": first["kind"], "calls": first["calls"],
               "shapes": [list(s) for s in first["shapes"]],
               "min_s": min(ts), "median_s": statistics.median(ts)}
        if k:
            # which layer: forward phases count up from 1; backward ones count down
            # from the last layer that has them (dX stops at layer 2)
            n = counts[label]
            if label in ("GEMM dW", "GEMM dX") or "backward" in label:
                top = layers if label.startswith("GEMM") else n
                row["layer"] = top + 1 - k
            else:
                row["layer"] = k
            row["label"] = "%s, layer %d" % (label, row["layer"])
            mkn = _mkn(label, first["shapes"])
            if mkn:
                row["mkn"] = mkn
        out.append(row)
    return out


def _mkn(label, shapes):
    """(m, k, n) of a product from its operands' shapes, ``a (m, k) @ b (k, n)``."""
    if label not in GEMM_LABELS.values() or len(shapes) != 2 or len(shapes[0]) != 2 \
            or len(shapes[1]) != 2:
        return None
    (a0, a1), (_, b1) = shapes
    return [a0, a1, b1]


def _kinds(phases, other):
    """Median time per step of each kind of phase (medians of rows, summed)."""
    out = {}
    for p in phases:
        out[p["kind"]] = out.get(p["kind"], 0.0) + p["median_s"]
    out["other"] = statistics.median(other)
    return out


def _threads():
    out = {}
    try:
        import numba
        out["numba"] = numba.get_num_threads()
        try:
            out["numba_layer"] = numba.threading_layer()
        except ValueError:
            out["numba_layer"] = None
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = [p.get("num_threads") for p in threadpool_info()
                       if p.get("user_api") == "blas"]
    except ImportError:
        pass
    return out


def _loadavg():
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def profile_step(net="default", rounds=40, seconds=None, warmup=3, layouts=False,
                 progress=None, augment="none", pad=4):
    """Profile the NumPy path's training step; returns the profile dict (see the module
    docstring). ``net``: a name in :data:`fcgpu.bench.models.NETS` or a spec
    ``{"hidden": [...], "batch": N}``. Stops after ``rounds`` rounds, or earlier once
    ``seconds`` have passed (at least 3 rounds). ``augment`` 'flip' or 'crop' (with
    ``pad``): the step gathers its minibatch from uint8 images through the augmenting
    gather, as ``fcgpu train --augment`` does."""
    from . import models
    parts = models.fcgpu_parts("numpy", net, augment=augment, pad=pad)
    step, model, batch = parts["step"], parts["model"], parts["batch"]
    spec = models.NETS[net] if isinstance(net, str) else net
    products = floor_products(model, batch)
    tproducts = floor_products(model, batch, transposed=True) if layouts else None
    for _ in range(max(1, warmup)):  # compiles, and warms BLAS, Numba and the allocator
        step()
        _time_products(products)
        if tproducts:
            _time_products(tproducts)
    m = _rounds(step, products, tproducts, rounds, seconds, progress)
    out = {"format": PROFILE_FORMAT, "net": net if isinstance(net, str) else "custom",
           "hidden": list(spec["hidden"]), "batch": batch, "dtype": str(model.dtype),
           "input_dim": model.input_dim, "classes": model.num_classes, "variant": "numpy",
           "augment": augment, "pad": pad if augment == "crop" else None,
           "rounds": len(m["steps"]), "threads": _threads(), "loadavg": m["load"]}
    out.update(_summary(m, products, model.num_layers, batch))
    if tproducts:
        out["layouts"] = _layouts(out, tproducts, m)
    return out


def _rounds(step, products, tproducts, rounds, seconds, progress):
    """Floor, plain step and instrumented step, alternating, in every round: the
    per-round times (``steps``, ``floors``, ``gemms``: each product's, ``inst``: the
    instrumented steps, ``calls``: their phases; ``t*``: the transposed floor)."""
    rec = _Recorder()
    perf = time.perf_counter
    m = {k: [] for k in ("steps", "floors", "tfloors", "inst", "gemms", "tgemms", "calls")}
    m["load"] = [_loadavg()]
    t_start = perf()
    for r in range(rounds):
        def plain():
            t0 = perf()
            step()
            m["steps"].append(perf() - t0)

        def floor():
            for prods, key in ((products, ""), (tproducts, "t")):
                if prods:
                    g = _time_products(prods)
                    m[key + "gemms"].append(g)
                    m[key + "floors"].append(sum(g))

        for part in ((floor, plain) if r % 2 == 0 else (plain, floor)):
            part()
        rec.calls = []
        undo = _patch(rec)  # only around the instrumented step: the plain one is plain
        try:
            rec.active = True
            t0 = perf()
            with linalg.observe(_gemm_observer(rec)):
                step()
            m["inst"].append(perf() - t0)
        finally:
            rec.active = False
            _unpatch(undo)
        m["calls"].append(rec.calls)
        if progress:
            progress(r + 1, m["steps"][-1], m["floors"][-1])
        if seconds is not None and perf() - t_start > seconds and r >= 2:
            break
    m["load"].append(_loadavg())
    return m


def _gemm_rows(products, per_round):
    """One row per product of the floor: its shape, FLOPs, min and median time."""
    rows = []
    for k, (label, op, layer, mkn, _) in enumerate(products):
        ts = [g[k] for g in per_round]
        flops = 2.0 * mkn[0] * mkn[1] * mkn[2]
        rows.append({"label": label, "op": op, "layer": layer, "mkn": list(mkn),
                     "flops": flops, "min_s": min(ts), "median_s": statistics.median(ts),
                     "gflops": flops / min(ts) / 1e9})
    return rows


def _summary(m, products, layers, batch):
    """The profile's numbers from the rounds' times: the step and its floor, their
    ratios, each product alone and inside the step, the phases, what no phase claims."""
    gemms = _gemm_rows(products, m["gemms"])
    phases = _phase_rows(m["calls"], layers)
    for g in gemms:  # the same product inside the step
        op = {"forward": "GEMM forward", "dW": "GEMM dW", "dX": "GEMM dX"}[g["op"]]
        ph = next((p for p in phases if p["label"] == "%s, layer %d" % (op, g["layer"])), None)
        if ph is not None and ph.get("mkn") == g["mkn"]:
            g["in_step_min_s"], g["in_step_median_s"] = ph["min_s"], ph["median_s"]
    phase_sum = [sum(c[3] for c in cs) for cs in m["calls"]]
    other = [t - s for t, s in zip(m["inst"], phase_sum)]
    st, fl = _stats(m["steps"]), _stats(m["floors"])
    # under load, each piece's fastest run is the least disturbed one
    floor_mins = sum(g["min_s"] for g in gemms)
    step_mins = sum(p["min_s"] for p in phases) + min(other)
    return {
        "step_s": st, "floor_s": fl, "step_instrumented_s": _stats(m["inst"]),
        "other_s": _stats(other),
        "ratio": {"min": st["min"] / fl["min"], "median": st["median"] / fl["median"],
                  "paired_median": statistics.median(s / f for s, f in zip(m["steps"],
                                                                           m["floors"])),
                  "sum_of_minima": step_mins / floor_mins},
        "step_sum_of_minima_s": step_mins, "floor_sum_of_minima_s": floor_mins,
        "samples_per_s": {"median": batch / st["median"], "best": batch / st["min"]},
        "gemm_flops": sum(g["flops"] for g in gemms),
        "gemms": gemms, "phases": phases, "kinds": _kinds(phases, other),
    }


def _layouts(out, tproducts, m):
    """The floor with W stored as it is, and transposed (``--layouts``)."""
    keys = ("label", "op", "layer", "min_s", "median_s")
    return {"W": {"floor_s": out["floor_s"], "gemms": [{k: g[k] for k in keys}
                                                      for g in out["gemms"]]},
            "W.T": {"floor_s": _stats(m["tfloors"]),
                    "gemms": [{k: g[k] for k in keys}
                              for g in _gemm_rows(tproducts, m["tgemms"])]}}
