"""The report's Markdown sections after the summary: the machine, the kernels, training,
the notebook experiments, and how it was all measured."""
from __future__ import annotations

import os

from .. import variants as _variants
from ..kernels import OP_TITLES, ROW_OPS
from ..results import find_row
from .format import (fmt_frac, fmt_num, fmt_ratio, fmt_time, in_order, not_run, pow2,
                     table, variant_label)
from .gather import gather_section


def machine_section(results, names):
    def row(label, fn):
        vals = []
        for r in results:
            try:
                v = fn(r.get("machine") or {}, r)
            except (KeyError, TypeError, AttributeError):
                v = None
            vals.append("—" if v in (None, "") else v)
        return [label] + vals

    def gpu(m, key):
        g = m.get("gpu") or {}
        return g.get(key) if g.get("available") else None

    def threads(r, family, key):
        vals = set()
        for v, w in (r.get("workers") or {}).items():
            t = (w.get("threads_end") or w.get("threads") or {})
            if key in t and t[key] is not None and (family is None or v.startswith(family)):
                vals.add(str(t[key]))
        return ", ".join(sorted(vals)) or None

    def blas(m, r):
        b = m.get("blas") or {}
        if not b.get("name"):
            return None
        s = "%s %s" % (b["name"], b.get("version") or "")
        if b.get("threads") is not None:
            s += ", %s threads" % b["threads"]
        return s

    def commit(m, r):
        c = m.get("fcgpu_commit")
        if not c:
            return None
        return "`%s`%s" % (c[:12], " (with uncommitted changes)" if m.get("fcgpu_dirty") else "")

    rows = [
        row("Device", lambda m, r: r.get("device")),
        row("CPU", lambda m, r: m.get("cpu")),
        row("Cores (usable)", lambda m, r: "%s (%s)" % (m.get("cpu_count"), m.get("cpu_affinity"))),
        row("Memory", lambda m, r: "%.0f GiB" % (m["memory_bytes"] / 2 ** 30)),
        row("GPU", lambda m, r: gpu(m, "name") or "none: %s" % (m.get("gpu") or {}).get("reason", "")),
        row("GPU memory / SMs / L2", lambda m, r: "%.0f GiB / %s / %.0f MiB" % (
            gpu(m, "memory_bytes") / 2 ** 30, gpu(m, "sm_count"), gpu(m, "l2_bytes") / 2 ** 20)
            if gpu(m, "name") else None),
        row("Compute capability", lambda m, r: gpu(m, "compute_capability")),
        row("Driver", lambda m, r: gpu(m, "driver")),
        row("CUDA (driver API / runtime)", lambda m, r: "%s / %s" % (
            gpu(m, "cuda_driver_api"), gpu(m, "cuda_runtime")) if gpu(m, "name") else None),
        row("NumPy BLAS", blas),
        row("Matmul precision (float32 products)", lambda m, r: precision_text(r)),
        row("Numba threads (layer)", lambda m, r: (threads(r, None, "numba") or "—") + (
            " (%s)" % threads(r, None, "numba_layer") if threads(r, None, "numba_layer") else "")),
        row("PyTorch threads", lambda m, r: threads(r, "torch", "torch")),
        row("Load average (1 min) during the run", lambda m, r: "%.1f–%.1f" % (
            min(r["settings"]["loadavg"]), max(r["settings"]["loadavg"]))
            if (r.get("settings") or {}).get("loadavg") else None),
        row("Python", lambda m, r: m.get("python")),
    ]
    libs = ["numpy", "numba", "cupy", "torch", "matplotlib", "pytest-benchmark"]
    for lib in libs:
        rows.append(row(lib, lambda m, r, lib=lib: (m.get("libraries") or {}).get(lib)
                        or "not installed"))
    rows += [
        row("fcgpu commit", commit),
        row("Date (UTC)", lambda m, r: m.get("date")),
        row("Thread/env settings", lambda m, r: ", ".join("%s=%s" % kv for kv in
                                                          sorted((m.get("env") or {}).items()))
            or "none set"),
        row("Results file", lambda m, r: "`%s`" % os.path.basename(r.get("_path", ""))),
    ]
    return ["## Machine", "", table(["", *names], rows, ["l"] * (1 + len(names))), ""]


def precision_text(res):
    """The run's matmul precision and where TF32 was allowed, or None (older results)."""
    p = (res.get("settings") or {}).get("matmul_precision")
    if p is None:
        return None
    tf32 = sorted(v for v, w in (res.get("workers") or {}).items() if (w or {}).get("tf32"))
    if tf32:
        return "%s: TF32 allowed in %s" % (p, ", ".join(tf32))
    return "%s: float32 products in float32%s" % (p, "" if p == "highest" else
                                                  " (no variant here can use TF32)")


def _precision_line(results):
    ps = sorted({(r.get("settings") or {}).get("matmul_precision") for r in results} - {None})
    if not ps:
        return ""
    return (" Matmul precision %s, the same for fcgpu and PyTorch on the GPU "
            "(`torch.set_float32_matmul_precision`); PyTorch on the CPU computes in "
            "float32, as the NumPy path does." % " / ".join("`%s`" % p for p in ps))


def kernel_section(results, names):
    out = ["## Kernels", ""]
    if not any(r.get("kernels") for r in results):
        return out + ["No kernel measurements in these results.", ""]
    out += _copy_table(results, names)
    for op in ("dropout_fwd", "dropout_bwd"):
        out += ["### %s: GB/s (fraction of copy bandwidth)" % OP_TITLES[op].capitalize(), ""]
        for res, name in zip(results, names):
            out += _flat_table(res, name if len(results) > 1 else None, op)
    out += ["### Batchnorm and the fused pass: median time per call (GB/s)", ""]
    for res, name in zip(results, names):
        out += _row_table(res, name if len(results) > 1 else None)
    out += gather_section(results, names)
    out += skipped_section(results, names, "kernel")
    return out


def _copy_table(results, names):
    multi = len(results) > 1
    rows = []
    for res, name in zip(results, names):
        for dev, ref in sorted((res.get("copy_bandwidth") or {}).items()):
            for v, g in sorted(ref.get("all", {}).items(), key=lambda kv: -kv[1]):
                rows.append(([name] if multi else []) + [
                    dev.upper(), variant_label(res, v, "copy"), pow2(ref["n"]) + " fp32",
                    fmt_num(g), "**reference**" if v == ref["variant"] else ""])
    return ["### Copy bandwidth (the reference)", "",
            "Bytes moved count the read and the write. The fastest copy at the largest size is "
            "each device's reference for the bandwidth fractions below.", "",
            table((["Machine"] if multi else []) + ["Device", "Copy", "Size", "GB/s", ""], rows),
            ""]


def _flat_table(res, name, op):
    """GB/s (fraction of copy) of ``op`` per size and variant, times folded below."""
    rows_k = [r for r in res.get("kernels") or [] if r["op"] == op]
    if not rows_k:
        return []
    variants = in_order({r["variant"] for r in rows_k}, "kernels")
    body, tbody = [], []
    for n in sorted({r["n"] for r in rows_k}):
        found = [find_row(rows_k, variant=v, n=n) for v in variants]
        body.append([pow2(n)] + ["%s (%s)" % (fmt_num(r["gbps"]), fmt_frac(r["bw_frac"]))
                                 if r else "—" for r in found])
        tbody.append([pow2(n)] + [fmt_time(r["time_s"]) if r else "—" for r in found])
    head = ["Elements"] + [variant_label(res, v, op) for v in variants]
    return (["*%s*" % name, ""] if name else []) + [
        table(head, body), "", "<details><summary>Median time per call</summary>", "",
        table(head, tbody), "", "</details>", ""]


def _row_table(res, name):
    """Batchnorm and the fused pass per (N, D) and variant, then the fused forward's
    speedups."""
    rows_k = [r for r in res.get("kernels") or [] if r["op"] in ROW_OPS]
    if not rows_k:
        return []
    variants = in_order({r["variant"] for r in rows_k}, "kernels")
    body = []
    for op in ROW_OPS:
        for shape in sorted({tuple(r["shape"]) for r in rows_k if r["op"] == op}):
            found = [find_row(rows_k, variant=v, op=op, shape=shape) for v in variants]
            body.append([OP_TITLES[op], "x".join(map(str, shape))] + [
                "%s (%s)" % (fmt_time(r["time_s"]), fmt_num(r["gbps"])) if r else "—"
                for r in found])
    return (["*%s*" % name, ""] if name else []) + [
        table(["Op", "N x D"] + [variant_label(res, v) for v in variants], body,
              ["l", "l"] + ["r"] * len(variants)), ""] + _fused_speedups(rows_k)


# the fused forward's speedups: (column, variant on top, variant below): time over time
SPEEDUPS = (("GPU: vs CuPy as a user writes it (cupy.random mask; the summary's baseline)",
             "cupy_curand", "fcgpu"),
            ("GPU: vs CuPy emulating fcgpu (*_ref, Philox mask as array code)",
             "cupy_unfused", "fcgpu"),
            ("GPU: vs PyTorch", "torch_cuda", "fcgpu"),
            ("CPU: Numba vs NumPy ref", "numpy_ref", "numba"),
            ("CPU: Numba vs PyTorch", "torch_cpu", "numba"))


def _fused_speedups(rows_k):
    fr = []
    for shape in sorted({tuple(r["shape"]) for r in rows_k if r["op"] == "fused_fwd"}):
        def t(v):
            r = find_row(rows_k, variant=v, op="fused_fwd", shape=shape)
            return r["time_s"] if r else None
        fr.append(["x".join(map(str, shape))] + [
            fmt_ratio(t(a) / t(b)) if t(a) and t(b) else "—" for _, a, b in SPEEDUPS])
    if not fr:
        return []
    return ["Speedups of the fused forward (time of the alternative / time of fcgpu's "
            "fused pass on the same device):", "",
            table(["N x D"] + [c for c, _, _ in SPEEDUPS], fr), ""]


def skipped_section(results, names, kind):
    out = []
    lines = []
    for res, name in zip(results, names):
        prefix = "%s: " % name if len(results) > 1 else ""
        vs = res.get("variant_skips") or {}
        relevant = _variants.names("kernels" if kind == "kernel" else "train")
        for v, why in vs.items():
            if v in relevant:
                lines.append("- %s`%s` did not run at all: %s" % (prefix, v, why))
        groups = {}
        skips = res.get("kernel_skips" if kind == "kernel" else "train_skips") or []
        for s in skips:
            if s["variant"] in vs:
                continue
            where = (("%s %s" % (s["op"], s["shape_label"])) if kind == "kernel"
                     else "%s net" % s["net"])
            groups.setdefault((s["variant"], s["reason"]), []).append(where)
        for (v, why), where in sorted(groups.items()):
            who = "every variant" if v == "*" else "`%s`" % v
            lines.append("- %s%s skipped on %s: %s" % (prefix, who, ", ".join(where), why))
    if lines:
        out += ["### Skipped (%s)" % ("kernel variants" if kind == "kernel"
                                      else "training variants"), ""] + lines + [""]
    return out


def train_section(results, names):
    out = ["## Training", ""]
    multi = len(results) > 1
    rows = []
    for res, name in zip(results, names):
        tr = res.get("train") or []
        for net in ("default", "wide"):
            sub = [r for r in tr if r["net"] == net]
            if not sub:
                continue
            ref = {dev: next((r["samples_per_s"] for r in sub
                              if r["variant"] == _variants.baseline(dev)), None)
                   for dev in ("cpu", "gpu")}
            npy = next((r["samples_per_s"] for r in sub if r["variant"] == "numpy"), None)
            for v in in_order({r["variant"] for r in sub}, "train"):
                r = next((r for r in sub if r["variant"] == v), None)
                if r is None:
                    continue
                st = r.get("step_s") or {}
                base = ref.get(r["device"])
                rows.append(([name] if multi else []) + [
                    "%s (%s)" % (net, "×".join(map(str, r["hidden"][:1])) + " × %d" % len(r["hidden"])),
                    r.get("label") or _variants.label(v, "train"), r["device"].upper(),
                    "**%s**" % fmt_num(r["samples_per_s"]),
                    "%s [%s–%s]" % (fmt_time(st.get("median")), fmt_time(st.get("q1")),
                                    fmt_time(st.get("q3"))),
                    fmt_time(st.get("min")),
                    fmt_ratio(r["samples_per_s"] / base) if base else "—",
                    fmt_ratio(r["samples_per_s"] / npy) if npy else "—",
                    r.get("steps", "—"),
                    fmt_time(r.get("first_step_s")),
                ])
    if not rows:
        out += ["No training measurements in these results.", ""]
    else:
        head = (["Machine"] if multi else []) + [
            "Net", "Variant", "Device", "Samples/s", "Step: median [q1–q3]", "Fastest step",
            "vs PyTorch eager (same device)", "vs NumPy path", "Steps timed",
            "First step (compile)"]
        out += ["Batch 490, fp32, batchnorm, dropout keep 0.8, Adam; synthetic CIFAR-shaped "
                "data on the device; variants interleaved in the same run.%s" % _precision_line(
                    results), "",
                table(head, rows, ["l"] * (len(head) - 8) + ["r"] * 8), ""]
    out += skipped_section(results, names, "train")
    return out


def _dropout_stats_md(ds):
    if not ds or "skipped" in ds:
        return [not_run((ds or {}).get("skipped")), ""]
    rows = [[r["p"], "%.4f" % r["input_mean"], "%.4f" % r["train_mean"],
             "%.4f" % r["test_mean"], "%.4f" % r["train_zero_frac"],
             "%.4f" % r["test_zero_frac"]] for r in ds["rows"]]
    out = ["x = %s; `dropout_forward` with `p` the probability of keeping a unit "
           "(inverted dropout, seed %s): the train-time mean stays at the input's and about "
           "1 − p of the units are zeroed; test time is the identity." % (ds.get("x"),
                                                                           ds.get("seed")), "",
           table(["p (keep)", "Mean of input", "Mean of train output", "Mean of test output",
                  "Zeroed (train)", "Zeroed (test)"], rows), ""]
    g = ds.get("gpu") or {}
    if g.get("checked"):
        out += ["Same masks on the GPU: **%s**%s." % (
            "bit-identical" if g.get("identical") else "DIFFERENT",
            " (%s)" % g["error"] if g.get("error") else ""), ""]
    else:
        out += ["GPU masks not compared: %s." % g.get("reason", "no GPU"), ""]
    return out


def _regularizer_md(rg):
    if not rg or "skipped" in rg:
        return [not_run((rg or {}).get("skipped")), ""]
    rows = [[r["label"], "%.3f" % r["final_train_acc"], "%.3f" % r["final_val_acc"],
             "%.3f" % r["best_val_acc"], "%.3f" % (r["final_train_acc"] - r["final_val_acc"])]
            for r in rg["runs"]]
    return ["%s on %d training images, %d epochs, %s, on %s (%s); plot "
            "`dropout_regularizer.png` below." % (rg["net"], rg["num_train"], rg["epochs"],
                                                  rg["solver"], rg["backend"], rg["device"]),
            "", table(["Run", "Final train acc", "Final val acc", "Best val acc",
                       "Train − val gap"], rows), ""]


def _tta_note(r, preset):
    best = "best val %.3f" % (r["best_val_acc"] or 0)
    if not r.get("ran_to_end"):
        return best if r.get("reached") else "%s in %d epochs" % (best, len(r["val_acc_history"]))
    return "preset `%s`, run to the end of its %d epochs in %s: %s" % (
        (preset or {}).get("name", "?"), len(r["val_acc_history"]),
        fmt_time(r.get("active_seconds")), best)


def _tta_md(tta):
    if not tta or "skipped" in tta:
        return [not_run((tta or {}).get("skipped")), ""]
    rows = []
    preset = tta.get("preset")
    for b, r in tta["backends"].items():
        load = r.get("loadavg")
        load = ("%.1f (%.1f–%.1f)" % (load[1], load[0], load[2]) if load and len(load) == 3
                else "%.1f–%.1f" % (min(load), max(load)) if load else "—")
        if "skipped" in r:
            rows.append([b, "—", "—", "—", "—", not_run(r["skipped"])])
        elif r.get("reached"):
            rows.append([b, fmt_time(r["seconds"]), fmt_time(r.get("train_seconds")),
                         r["epochs"], load, _tta_note(r, preset)])
        else:
            rows.append([b, "not reached", "—", "—", load, _tta_note(r, preset)])
    how = ("The backends took turns epoch by epoch, each in its own process; a backend's "
           "time counts only its own turns (model build, training steps, accuracy checks)."
           if tta.get("interleaved") else
           "Backends ran one after the other, not interleaved: compare them only where the "
           "load average was alike.")
    rows_of_preset = ""
    if preset:
        rows_of_preset = (" The `*_default_preset` rows train `fcgpu train`'s default preset "
                          "(`%s`, %d epochs) and run its whole schedule; their time to target "
                          "is the first epoch at or above it." % (preset["name"],
                                                                  preset["epochs"]))
    return ["%s; stops at the first epoch whose validation accuracy is ≥ %.2f (at most %d "
            "epochs).%s %s" % (tta["config"], tta["target"], tta["max_epochs"],
                               rows_of_preset, how), "",
            table(["Backend", "Wall time to target", "Of which training steps", "Epochs",
                   "Load average: mean (min–max)", "Note"], rows), ""]


def experiments_section(results, names):
    out = ["## Notebook experiments", ""]
    multi = len(results) > 1
    for title, key, fn in (("Dropout statistics", "dropout_stats", _dropout_stats_md),
                           ("Dropout as a regularizer", "dropout_regularizer", _regularizer_md),
                           ("Time to 60% validation accuracy", "time_to_accuracy", _tta_md)):
        out += ["### " + title, ""]
        for res, name in zip(results, names):
            if multi:
                out += ["*%s*" % name, ""]
            out += fn((res.get("experiments") or {}).get(key))
    return out


def method_section(results):
    return ["## How this was measured", "",
            "- Every variant runs in its own worker process (`fcgpu.bench.worker`), so "
            "OpenBLAS, Numba and PyTorch thread pools never share a process. Each test is one "
            "case (an op at one size, or one net); within it the variants run in interleaved "
            "rounds, one chunk of calls each, in an order that rotates every round, so noise "
            "on a shared machine hits all of them alike. Ratios come from the same run.",
            "- Kernel times are medians over chunks of calls. On a GPU one pair of CUDA events "
            "on the stream brackets a whole chunk (at least 10 calls, launched back to back "
            "after a device synchronize), so Python's launch overhead overlaps the kernels "
            "instead of counting as kernel time: time per call = event time / calls (the host "
            "clock to the end event is kept too); on a CPU the host clock times each call. "
            "One untimed warm-up call (compilation) and three calls to size the chunks come "
            "first.",
            "- Bytes counted: each input read once and each output written once, by the op's "
            "contract (dropout: x in, out out; batchnorm forward: x in, out out, plus the "
            "per-feature vectors; backward: dout and x in, dx out; the fused backward also "
            "reads the forward's output; the minibatch gathers: the uint8 rows in, the float32 "
            "batch out, the mean image, the row numbers and the labels). Masks an "
            "implementation stores are its own cost, not counted. GB/s = bytes / median time "
            "(10^9 bytes).",
            "- Copy bandwidth is measured by the suite itself at every size (device-to-device "
            "`cudaMemcpy` and `torch.copy_` on a GPU; `np.copyto` and a Numba parallel copy "
            "on a CPU); the fastest at the largest size is the reference of the fractions.",
            "- Inputs rotate through enough buffers that consecutive calls span 4× the last-level "
            "cache (the GPU's L2; the CPU's L3), so small sizes are not served from cache. "
            "Outputs are allocated by each op, as in training.",
            "- Training: one step = gather a batch of 490 from a device-resident synthetic pool, "
            "forward, backward, Adam update of every parameter. A chunk of steps ends with one "
            "device synchronize; step time = chunk time / steps; samples/s = 490 / median step "
            "time. PyTorch uses as many threads as there are usable cores "
            "(`torch.set_num_threads`); NumPy's BLAS and Numba use their defaults (all cores).",
            "- The fused pass's baseline in the summary is CuPy as a user writes it "
            "(`cupy_curand`): the course's batchnorm (`mean`, `var`, `(x - mu) / sqrt(var + "
            "eps)`, `gamma * xhat + beta`), `cupy.maximum(y, 0)` and dropout as `x * "
            "(cupy.random.random(shape, dtype=float32) < p) * (1/p)`, a fresh mask each call, "
            "every step a separate CuPy op. `CuPy ops emulating fcgpu` (`cupy_unfused`) runs "
            "fcgpu's plain xp references on CuPy, its Philox mask as array code (bit for bit "
            "ours, and slow): in the details only. In training, `cupy_unfused` is fcgpu on "
            "CuPy with `fcgpu.fused.impl_for` patched, inside that worker only, to return "
            "those references.",
            "- Matmul precision (`fcgpu bench --matmul-precision`, default "
            "`FCGPU_MATMUL_PRECISION`, else `highest`): every fcgpu process computes its "
            "float32 products so, and every PyTorch variant on the GPU gets the same name "
            "through `torch.set_float32_matmul_precision` (`high`: both may use TF32); "
            "PyTorch on the CPU stays at `highest`, since the NumPy path computes in float32 "
            "whatever the setting. Each worker records what applied to it (`workers`: "
            "`matmul_precision`, `tf32`).",
            "- Tests never time anything; only these benchmarks do. Variants that cannot run are "
            "listed with the reason, never dropped silently.",
            ""]
