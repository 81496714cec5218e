"""Results JSON -> ``report.md`` and PNG plots (matplotlib, Agg).

The page reads top-down: a short summary and the targets (met or missed, by how much),
then tables (machine, kernels, training, the notebook experiments), then the plots,
then how it was measured. Several results files (say one CPU machine and one GPU
machine) go into one page; every table and line names its machine when there is more
than one.
"""
from __future__ import annotations

import json
import math
import os

from . import RESULTS_FORMAT, TARGETS
from .kernels import FLAT_OPS, OP_TITLES, ROW_OPS, VARIANTS as KVARIANTS
from .models import VARIANTS as TVARIANTS

KERNEL_ORDER = ["numpy_ref", "numba", "torch_cpu", "cupy_unfused", "cupy_curand", "fcgpu",
                "torch_cuda"]
TRAIN_ORDER = ["numpy_ref", "numpy", "torch_cpu", "torch_cpu_compile", "cupy_unfused",
               "fcgpu", "fcgpu_graph", "torch_cuda", "torch_cuda_compile"]
TARGET_ROWS = [
    ("dropout_fwd_bw_frac", "Dropout forward, 2^26 fp32, fraction of D2D copy bandwidth",
     "frac"),
    ("dropout_bwd_bw_frac", "Dropout backward, 2^26 fp32, fraction of D2D copy bandwidth",
     "frac"),
    ("fused_vs_unfused", "Fused BN-ReLU-dropout forward vs the unfused CuPy ops "
     "(smaller of 490x500 and 65536x4096)", "ratio"),
    ("train_vs_torch", "GPU training samples/s, fcgpu / PyTorch eager (default net; fcgpu: "
     "the faster of fused and fused + CUDA graph)", "ratio"),
    ("train_vs_cpu", "GPU training samples/s, fcgpu / NumPy path (default net)", "ratio"),
    ("cpu_train_vs_torch", "CPU training samples/s, NumPy path / PyTorch CPU (default net)",
     "ratio"),
]
TRAIN_SHORT = {
    "numpy": "NumPy path (Numba)", "numpy_ref": "NumPy path, no Numba",
    "torch_cpu": "PyTorch CPU eager", "torch_cpu_compile": "PyTorch CPU compile",
    "cupy_unfused": "CuPy unfused", "fcgpu": "fcgpu fused (GPU)",
    "fcgpu_graph": "fcgpu + CUDA graph", "torch_cuda": "PyTorch CUDA eager",
    "torch_cuda_compile": "PyTorch CUDA compile",
}
COLORS = {
    "numpy_ref": "#9e9e9e", "numba": "#1f77b4", "numpy": "#1f77b4", "torch_cpu": "#ff7f0e",
    "torch_cpu_compile": "#ffbb78", "cupy_unfused": "#8c564b", "cupy_curand": "#c49c94",
    "fcgpu": "#2ca02c", "fcgpu_graph": "#98df8a", "torch_cuda": "#d62728",
    "torch_cuda_compile": "#ff9896", "copy": "#000000",
}


# ----------------------------------------------------------------- loading

def load(paths):
    out = []
    for p in paths:
        with open(p) as f:
            try:
                res = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError("%s is not JSON: %s" % (p, exc)) from None
        if not isinstance(res, dict) or res.get("format") != RESULTS_FORMAT:
            raise ValueError("%s is not an fcgpu results file (format %r, expected %r)"
                             % (p, res.get("format") if isinstance(res, dict) else None,
                                RESULTS_FORMAT))
        res["_path"] = p
        out.append(res)
    return out


# ----------------------------------------------------------------- formatting

def fmt_time(s):
    if s is None:
        return "—"
    if s < 1e-3:
        return "%.1f µs" % (s * 1e6)
    if s < 1:
        return "%.2f ms" % (s * 1e3)
    return "%.2f s" % s


def fmt_num(x, digits=3):
    if x is None:
        return "—"
    if x == 0:
        return "0"
    mag = int(math.floor(math.log10(abs(x))))
    dec = max(0, digits - 1 - mag)
    return "{:,.{d}f}".format(x, d=dec)


def fmt_ratio(x):
    return "—" if x is None else "%.2f×" % x


def fmt_frac(x):
    return "—" if x is None else "%.2f" % x


def short_device(res):
    d = res.get("device") or "?"
    for junk in ("NVIDIA ", "(R)", "(TM)", " CPU", " Processor"):
        d = d.replace(junk, "")
    return " ".join(d.split())


def _machine_names(results):
    names = [short_device(r) for r in results]
    if len(set(names)) < len(names):
        names = ["%s #%d" % (n, i + 1) for i, n in enumerate(names)]
    return names


def table(header, rows, align=None):
    align = align or (["l"] + ["r"] * (len(header) - 1))
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        lines.append("| " + " | ".join("" if c is None else str(c) for c in r) + " |")
    return "\n".join(lines)


def target_status(key, value, note=None):
    """``(status, text)``: status is 'met', 'missed', 'info' or 'not measured'."""
    goal = TARGETS[key][0]
    if value is None:
        return "not measured", "not measured" + (": " + note if note else "")
    if goal is None:
        return "info", "no target (for information)"
    if value >= goal:
        return "met", "met, %.0f%% above the goal" % (100 * (value / goal - 1))
    return "missed", "missed by %.0f%%" % (100 * (1 - value / goal))


def _why(res, key):
    """Numbers behind a summary key, for the 'why' of a miss."""
    det = res.get("summary_details") or {}
    d = det.get(key)
    if key.startswith("dropout") and isinstance(d, dict):
        return "kernel %s GB/s against a copy at %s GB/s (%s)" % (
            fmt_num(d["gbps"]), fmt_num(d["copy_gbps"]), d.get("copy_method", "copy"))
    if key == "fused_vs_unfused":
        parts = []
        for shape in ("490x500", "65536x4096"):
            v = det.get("fused_vs_unfused_" + shape)
            if v is not None:
                parts.append("%s at %s" % (fmt_ratio(v), shape))
        return ", ".join(parts)
    if key in ("train_vs_torch", "train_vs_cpu", "cpu_train_vs_torch") and isinstance(d, dict):
        items = [(k, v) for k, v in d.items() if k != "net"]
        return ", ".join("%s %s samples/s" % (k, fmt_num(v)) for k, v in items)
    return ""


# ----------------------------------------------------------------- sections

def summary_section(results, names):
    out = ["## Summary", ""]
    for res, name in zip(results, names):
        s = res.get("summary") or {}
        notes = res.get("summary_notes") or {}
        det = res.get("summary_details") or {}
        m = res.get("machine") or {}
        gpu = (m.get("gpu") or {})
        where = "%s (%s cores%s)" % (name, m.get("cpu_affinity") or m.get("cpu_count") or "?",
                                     ", " + gpu["name"] if gpu.get("available") else ", no GPU")
        bullets = []
        v = s.get("cpu_train_vs_torch")
        if v is not None:
            d = det.get("cpu_train_vs_torch") or {}
            st, txt = target_status("cpu_train_vs_torch", v)
            best = det.get("cpu_train_vs_torch_best_steps")
            bullets.append("CPU training: the NumPy path runs the default net at **%s "
                           "samples/s**, **%s** PyTorch CPU's %s samples/s on the same "
                           "cores (target ≥ 0.9×: **%s**)%s."
                           % (fmt_num(d.get("numpy")), fmt_ratio(v),
                              fmt_num(d.get("torch_cpu")), txt,
                              "; from the fastest steps of each: %s" % fmt_ratio(best)
                              if best else ""))
        wide = det.get("cpu_train_vs_torch_wide")
        if wide is not None:
            bullets.append("On the wide net (3 × 4096) the NumPy path runs at %s PyTorch "
                           "CPU's samples/s." % fmt_ratio(wide))
        for key, what in (("dropout_fwd_bw_frac", "forward"), ("dropout_bwd_bw_frac",
                                                                "backward")):
            c = det.get(key + "_cpu_numba")
            if c:
                bullets.append("CPU dropout %s (Numba, %s elements): %s GB/s, %.2f of the "
                               "CPU's copy bandwidth (%s GB/s)."
                               % (what, _pow2(c["n"]), fmt_num(c["gbps"]), c["frac"],
                                  fmt_num(c["copy_gbps"])))
        for key in ("dropout_fwd_bw_frac", "dropout_bwd_bw_frac", "fused_vs_unfused",
                    "train_vs_torch", "train_vs_cpu"):
            v = s.get(key)
            if v is None:
                continue
            st, txt = target_status(key, v)
            bullets.append("%s: **%s** (%s)." % (TARGETS[key][1][0].upper() + TARGETS[key][1][1:],
                                                 fmt_frac(v) if key.startswith("dropout")
                                                 else fmt_ratio(v), txt))
        missing = [k for k in ("dropout_fwd_bw_frac", "dropout_bwd_bw_frac",
                               "fused_vs_unfused", "train_vs_torch", "train_vs_cpu",
                               "cpu_train_vs_torch") if s.get(k) is None]
        by_note = {}
        for k in missing:
            by_note.setdefault(notes.get(k) or "not measured", []).append("`%s`" % k)
        for note, keys in by_note.items():
            bullets.append("Not measured here: %s — %s." % (", ".join(keys), note))
        load = (res.get("settings") or {}).get("loadavg")
        cores = m.get("cpu_affinity") or m.get("cpu_count")
        if load and cores and max(load) > 1.5 * cores:
            bullets.append("⚠️ The machine was shared and busy during the run (1-minute load "
                           "average %.1f–%.1f on %s cores): absolute times are pessimistic "
                           "and noisy; the ratios come from interleaved measurements, so "
                           "the noise hit every variant." % (min(load), max(load), cores))
        out.append("**%s**" % where)
        out.append("")
        out.extend("- " + b for b in bullets)
        out.append("")
    # targets table
    header = ["Target", "Goal"]
    multi = len(results) > 1
    if multi:
        header.append("Machine")
    header += ["Measured", "Result"]
    rows = []
    footnotes = []
    for key, title, kind in TARGET_ROWS:
        goal = TARGETS[key][0]
        for res, name in zip(results, names):
            v = (res.get("summary") or {}).get(key)
            note = (res.get("summary_notes") or {}).get(key)
            st, txt = target_status(key, v)
            if st == "not measured" and note:
                if note not in footnotes:
                    footnotes.append(note)
                txt += " [%d]" % (footnotes.index(note) + 1)
            elif st == "missed":
                why = _why(res, key)
                if why:
                    txt += "; " + why
            elif st == "met" and key == "fused_vs_unfused":
                txt += " (%s)" % _why(res, key)
            row = [title, "—" if goal is None else "≥ %s%s" % (goal, "" if kind == "frac"
                                                               else "×")]
            if multi:
                row.append(name)
            row += [fmt_frac(v) if kind == "frac" else fmt_ratio(v),
                    {"met": "✅ ", "missed": "❌ "}.get(st, "") + txt]
            rows.append(row)
    out.append("### Targets")
    out.append("")
    out.append(table(header, rows, ["l", "r"] + (["l"] if multi else []) + ["r", "l"]))
    out.append("")
    for i, note in enumerate(footnotes):
        out.append("[%d] %s  " % (i + 1, note))
    if footnotes:
        out.append("")
    return out


def _pow2(n):
    k = int(round(math.log2(n))) if n else 0
    return "2^%d" % k if (1 << k) == n else str(n)


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


def _variant_label(res, v, op=None):
    for r in res.get("kernels") or []:
        if r["variant"] == v and (r["op"] == op if op else r["op"] != "copy"):
            return r["label"]
    return KVARIANTS.get(v, (None, v))[1]


def kernel_section(results, names):
    out = ["## Kernels", ""]
    multi = len(results) > 1
    any_rows = any(r.get("kernels") for r in results)
    if not any_rows:
        out += ["No kernel measurements in these results.", ""]
        return out
    # copy reference
    rows = []
    for res, name in zip(results, names):
        for dev, ref in sorted((res.get("copy_bandwidth") or {}).items()):
            for v, g in sorted(ref.get("all", {}).items(), key=lambda kv: -kv[1]):
                rows.append(([name] if multi else []) + [
                    dev.upper(), _variant_label(res, v, "copy"), _pow2(ref["n"]) + " fp32",
                    fmt_num(g), "**reference**" if v == ref["variant"] else ""])
    out += ["### Copy bandwidth (the reference)", "",
            "Bytes moved count the read and the write. The fastest copy at the largest size is "
            "each device's reference for the bandwidth fractions below.", "",
            table((["Machine"] if multi else []) + ["Device", "Copy", "Size", "GB/s", ""], rows),
            ""]
    # dropout tables
    for op in ("dropout_fwd", "dropout_bwd"):
        out += ["### %s: GB/s (fraction of copy bandwidth)" % OP_TITLES[op].capitalize(), ""]
        for res, name in zip(results, names):
            rows_k = [r for r in res.get("kernels") or [] if r["op"] == op]
            if not rows_k:
                continue
            variants = [v for v in KERNEL_ORDER if any(r["variant"] == v for r in rows_k)]
            sizes = sorted({r["n"] for r in rows_k})
            body, tbody = [], []
            for n in sizes:
                cells, tcells = [_pow2(n)], [_pow2(n)]
                for v in variants:
                    r = next((r for r in rows_k if r["n"] == n and r["variant"] == v), None)
                    cells.append("%s (%s)" % (fmt_num(r["gbps"]), fmt_frac(r["bw_frac"]))
                                 if r else "—")
                    tcells.append(fmt_time(r["time_s"]) if r else "—")
                body.append(cells)
                tbody.append(tcells)
            head = ["Elements"] + [_variant_label(res, v, op) for v in variants]
            if multi:
                out += ["*%s*" % name, ""]
            out += [table(head, body), "", "<details><summary>Median time per call</summary>",
                    "", table(head, tbody), "", "</details>", ""]
    # batchnorm and fused
    out += ["### Batchnorm and the fused pass: median time per call (GB/s)", ""]
    for res, name in zip(results, names):
        rows_k = [r for r in res.get("kernels") or [] if r["op"] in ROW_OPS]
        if not rows_k:
            continue
        variants = [v for v in KERNEL_ORDER if any(r["variant"] == v for r in rows_k)]
        body = []
        for op in ROW_OPS:
            for shape in sorted({tuple(r["shape"]) for r in rows_k if r["op"] == op}):
                cells = [OP_TITLES[op], "x".join(map(str, shape))]
                for v in variants:
                    r = next((r for r in rows_k if r["op"] == op and tuple(r["shape"]) == shape
                              and r["variant"] == v), None)
                    cells.append("%s (%s)" % (fmt_time(r["time_s"]), fmt_num(r["gbps"]))
                                 if r else "—")
                body.append(cells)
        if multi:
            out += ["*%s*" % name, ""]
        out += [table(["Op", "N x D"] + [_variant_label(res, v) for v in variants], body,
                      ["l", "l"] + ["r"] * len(variants)), ""]
        # fused speedups
        fr = []
        for shape in sorted({tuple(r["shape"]) for r in rows_k if r["op"] == "fused_fwd"}):
            def t(v, op="fused_fwd"):
                r = next((r for r in rows_k if r["op"] == op and tuple(r["shape"]) == shape
                          and r["variant"] == v), None)
                return r["time_s"] if r else None
            f = t("fcgpu")
            cells = ["x".join(map(str, shape))]
            for base in ("cupy_unfused", "cupy_curand", "torch_cuda"):
                b = t(base)
                cells.append(fmt_ratio(b / f) if f and b else "—")
            n_, c_ = t("numba"), t("numpy_ref")
            cells.append(fmt_ratio(c_ / n_) if n_ and c_ else "—")
            cells.append(fmt_ratio(t("torch_cpu") / n_) if n_ and t("torch_cpu") else "—")
            fr.append(cells)
        if fr:
            out += ["Speedups of the fused forward (time of the alternative / time of fcgpu's "
                    "fused pass on the same device):", "",
                    table(["N x D", "GPU: vs CuPy unfused (*_ref)", "GPU: vs CuPy + cuRAND",
                           "GPU: vs PyTorch", "CPU: Numba vs NumPy ref",
                           "CPU: Numba vs PyTorch"], fr), ""]
    out += skipped_section(results, names, "kernel")
    return out


def skipped_section(results, names, kind):
    out = []
    lines = []
    for res, name in zip(results, names):
        prefix = "%s: " % name if len(results) > 1 else ""
        vs = res.get("variant_skips") or {}
        relevant = KVARIANTS if kind == "kernel" else TVARIANTS
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
            ref = {dev: next((r["samples_per_s"] for r in sub if r["variant"] == v), None)
                   for dev, v in (("cpu", "torch_cpu"), ("gpu", "torch_cuda"))}
            npy = next((r["samples_per_s"] for r in sub if r["variant"] == "numpy"), None)
            for v in TRAIN_ORDER:
                r = next((r for r in sub if r["variant"] == v), None)
                if r is None:
                    continue
                st = r.get("step_s") or {}
                base = ref.get(r["device"])
                rows.append(([name] if multi else []) + [
                    "%s (%s)" % (net, "×".join(map(str, r["hidden"][:1])) + " × %d" % len(r["hidden"])),
                    r.get("label") or TVARIANTS.get(v, (None, v))[1], r["device"].upper(),
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
                "data on the device; variants interleaved in the same run.", "",
                table(head, rows, ["l"] * (len(head) - 8) + ["r"] * 8), ""]
    out += skipped_section(results, names, "train")
    return out


def _not_run(reason):
    reason = reason or "not in these results"
    if reason.lower().startswith("not run: "):
        reason = reason[len("not run: "):]
    return "Not run: %s." % reason.rstrip(".")


def _dropout_stats_md(ds):
    if not ds or "skipped" in ds:
        return [_not_run((ds or {}).get("skipped")), ""]
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
        return [_not_run((rg or {}).get("skipped")), ""]
    rows = [[r["label"], "%.3f" % r["final_train_acc"], "%.3f" % r["final_val_acc"],
             "%.3f" % r["best_val_acc"], "%.3f" % (r["final_train_acc"] - r["final_val_acc"])]
            for r in rg["runs"]]
    return ["%s on %d training images, %d epochs, %s, on %s (%s); plot "
            "`dropout_regularizer.png` below." % (rg["net"], rg["num_train"], rg["epochs"],
                                                  rg["solver"], rg["backend"], rg["device"]),
            "", table(["Run", "Final train acc", "Final val acc", "Best val acc",
                       "Train − val gap"], rows), ""]


def _tta_md(tta):
    if not tta or "skipped" in tta:
        return [_not_run((tta or {}).get("skipped")), ""]
    rows = []
    for b, r in tta["backends"].items():
        load = r.get("loadavg")
        load = ("%.1f (%.1f–%.1f)" % (load[1], load[0], load[2]) if load and len(load) == 3
                else "%.1f–%.1f" % (min(load), max(load)) if load else "—")
        if "skipped" in r:
            rows.append([b, "—", "—", "—", "—", _not_run(r["skipped"])])
        elif r.get("reached"):
            rows.append([b, fmt_time(r["seconds"]), fmt_time(r.get("train_seconds")),
                         r["epochs"], load, "best val %.3f" % r["best_val_acc"]])
        else:
            rows.append([b, "not reached", "—", "—", load, "best val %.3f in %d epochs" % (
                r["best_val_acc"] or 0, len(r["val_acc_history"]))])
    how = ("The backends took turns epoch by epoch, each in its own process; a backend's "
           "time counts only its own turns (model build, training steps, accuracy checks)."
           if tta.get("interleaved") else
           "Backends ran one after the other, not interleaved: compare them only where the "
           "load average was alike.")
    return ["%s; stops at the first epoch whose validation accuracy is ≥ %.2f (at most %d "
            "epochs). %s" % (tta["config"], tta["target"], tta["max_epochs"], how), "",
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
            "- Kernel times are medians over all calls. On a GPU each call is bracketed by CUDA "
            "events on its stream, after a device synchronize (the host clock, read after the "
            "device finished, is kept too); on a CPU the host clock times each call. One "
            "untimed warm-up call (compilation) and three calls to size the chunks come first.",
            "- Bytes counted: each input read once and each output written once, by the op's "
            "contract (dropout: x in, out out; batchnorm forward: x in, out out, plus the "
            "per-feature vectors; backward: dout and x in, dx out; the fused backward also "
            "reads the forward's output). Masks an implementation stores are its own cost, "
            "not counted. GB/s = bytes / median time (10^9 bytes).",
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
            "- `CuPy unfused` is fcgpu on CuPy with `fcgpu.fused.impl_for` patched, inside that "
            "worker only, to return the plain xp references (every fusable step as separate "
            "CuPy operations; the Philox mask as array code). `CuPy + cuRAND` is what a plain "
            "CuPy user would write: batchnorm in xp code, `maximum`, and a `cupy.random` mask.",
            "- Tests never time anything; only these benchmarks do. Variants that cannot run are "
            "listed with the reason, never dropped silently.",
            ""]


# ----------------------------------------------------------------- plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _series_label(res, v, name, multi, op=None):
    lab = _variant_label(res, v, op)
    return "%s — %s" % (lab, name) if multi else lab


def plot_dropout(results, names, path, frac=False):
    plt = _plt()
    multi = len(results) > 1
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    any_line = False
    styles = ["-", "--", ":", "-."]
    for ax, op in zip(axes, ("dropout_fwd", "dropout_bwd")):
        for i, (res, name) in enumerate(zip(results, names)):
            rows = res.get("kernels") or []
            series = {}
            for r in rows:
                if r["op"] == op or (r["op"] == "copy" and not frac):
                    key = "copy:" + r["variant"] if r["op"] == "copy" else r["variant"]
                    val = r["bw_frac"] if frac else r["gbps"]
                    if val is not None:
                        series.setdefault(key, []).append((r["n"], val, r))
            for key, pts in sorted(series.items()):
                pts.sort()
                is_copy = key.startswith("copy:")
                v = key.split(":", 1)[1] if is_copy else key
                if is_copy:
                    ref = (res.get("copy_bandwidth") or {}).get(pts[0][2]["device"]) or {}
                    if ref.get("variant") != v:
                        continue  # only the reference copy, to keep the plot readable
                lab = ("copy: " + _variant_label(res, v, "copy")) if is_copy else \
                    _variant_label(res, v, op)
                if multi:
                    lab += " — " + name
                ax.plot([p[0] for p in pts], [p[1] for p in pts],
                        linestyle=":" if is_copy else styles[i % len(styles)],
                        marker="" if is_copy else "o", ms=3.5, lw=1.6,
                        color=COLORS.get("copy" if is_copy else v, None), label=lab)
                any_line = True
        ax.set_xscale("log", base=2)
        ax.set_xlabel("elements (fp32)")
        ax.set_title(OP_TITLES[op].capitalize())
        ax.grid(alpha=0.3, which="both")
        if frac:
            ax.axhline(0.85, color="#444", lw=1, ls="--")
            ax.text(ax.get_xlim()[0], 0.86, " GPU target 0.85", fontsize=8, va="bottom")
        else:
            ax.set_yscale("log")
    axes[0].set_ylabel("fraction of copy bandwidth" if frac else "GB/s (bytes that must move)")
    if any_line:
        handles, labels = [], []
        for ax in axes:
            h, l_ = ax.get_legend_handles_labels()
            for hh, ll in zip(h, l_):
                if ll not in labels:
                    handles.append(hh)
                    labels.append(ll)
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
                   frameon=False)
    fig.suptitle("Dropout: %s vs size" % ("fraction of the copy bandwidth" if frac
                                           else "achieved bandwidth"))
    fig.tight_layout(rect=(0, 0.06 + 0.035 * math.ceil(len(labels if any_line else []) / 4), 1, 1))
    _save(fig, path)
    return any_line


def plot_rowops(results, names, path):
    plt = _plt()
    groups = []  # (label, {series: gbps})
    multi = len(results) > 1
    for res, name in zip(results, names):
        rows = [r for r in res.get("kernels") or [] if r["op"] in ROW_OPS]
        for op in ROW_OPS:
            for shape in sorted({tuple(r["shape"]) for r in rows if r["op"] == op}):
                vals = {}
                for r in rows:
                    if r["op"] == op and tuple(r["shape"]) == shape and r.get("time_s"):
                        vals[r["variant"]] = r["gbps"]
                lab = "%s\n%s" % (op.replace("_", " "), "x".join(map(str, shape)))
                if multi:
                    lab += "\n" + name
                groups.append((lab, vals))
    if not groups:
        return False
    variants = [v for v in KERNEL_ORDER if any(v in g[1] for g in groups)]
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(groups) + 2), 4.8))
    width = 0.8 / max(len(variants), 1)
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(groups))]
        ys = [g[1].get(v, 0) or 0 for g in groups]
        ax.bar(xs, ys, width=width, color=COLORS.get(v), label=KVARIANTS[v][1])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], fontsize=8)
    ax.set_yscale("log")
    top = max((g[1].get(v) or 0) for g in groups for v in variants)
    if top > 0:
        ax.set_ylim(top=top * 6)  # room for the legend above the bars
    ax.set_ylabel("GB/s (bytes that must move)")
    ax.set_title("Batchnorm and the fused batchnorm-ReLU-dropout, per variant")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8, ncol=min(4, len(variants)), loc="upper left", frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_train(results, names, path):
    plt = _plt()
    nets = [n for n in ("default", "wide")
            if any(r["net"] == n for res in results for r in res.get("train") or [])]
    if not nets:
        return False
    multi = len(results) > 1
    per_net = {}
    for net in nets:
        bars = []
        for res, name in zip(results, names):
            for v in TRAIN_ORDER:
                r = next((r for r in res.get("train") or []
                          if r["net"] == net and r["variant"] == v), None)
                if r:
                    lab = TRAIN_SHORT.get(v, v) + (" — " + name if multi else "")
                    bars.append((lab, r["samples_per_s"], COLORS.get(v), r))
        per_net[net] = bars[::-1]
    heights = [0.9 + 0.38 * len(b) for b in per_net.values()]
    fig, axes = plt.subplots(len(nets), 1, figsize=(9, sum(heights) + 0.4),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, net in zip(axes[:, 0], nets):
        bars = per_net[net]
        ys = list(range(len(bars)))
        vals = [b[1] for b in bars]
        ax.barh(ys, vals, color=[b[2] for b in bars], height=0.7)
        ax.set_yticks(ys)
        ax.set_yticklabels([b[0] for b in bars], fontsize=9)
        log = max(vals) / max(min(vals), 1e-9) > 30
        if log:
            ax.set_xscale("log")
        for y, b in zip(ys, bars):
            ax.text(b[1], y, "  " + fmt_num(b[1]), va="center", fontsize=8)
        ax.set_xlim(left=min(vals) / 3 if log else 0,
                    right=max(vals) * (4 if log else 1.18))
        spec = bars[0][3]
        ax.set_title("%s net: %s hidden, batch %d" % (
            net, " × ".join(map(str, spec["hidden"])), spec["batch"]), fontsize=10)
        ax.grid(alpha=0.3, axis="x", which="both")
    axes[-1, 0].set_xlabel("training samples/s (median over interleaved chunks; higher is "
                           "better)")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_regularizer(res_list, names, path):
    plt = _plt()
    runs = []
    for res, name in zip(res_list, names):
        rg = (res.get("experiments") or {}).get("dropout_regularizer") or {}
        for r in rg.get("runs") or []:
            runs.append((r["label"] + (" — " + name if len(res_list) > 1 else ""), r))
    if not runs:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for lab, r in runs:
        a1.plot(range(len(r["train_acc_history"])), r["train_acc_history"], "o-", ms=3,
                label=lab)
        a2.plot(range(len(r["val_acc_history"])), r["val_acc_history"], "o-", ms=3, label=lab)
    for ax, t in ((a1, "Train accuracy"), (a2, "Validation accuracy")):
        ax.set_title(t)
        ax.set_xlabel("epoch (0 = after the first step)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a1.set_ylabel("accuracy")
    fig.suptitle("Dropout as a regularizer: 500 training images, 25 epochs")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_tta(res_list, names, path):
    plt = _plt()
    lines = []
    target = None
    for res, name in zip(res_list, names):
        tta = (res.get("experiments") or {}).get("time_to_accuracy") or {}
        target = tta.get("target", target)
        for b, r in (tta.get("backends") or {}).items():
            if r.get("val_acc_history"):
                lines.append((b + (" — " + name if len(res_list) > 1 else ""), r))
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for lab, r in lines:
        h = r["val_acc_history"]
        ax.plot(range(1, len(h) + 1), h, "o-", ms=3, label=lab)
    if target:
        ax.axhline(target, color="#444", ls="--", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Default net: validation accuracy per epoch, per backend")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path):
    import io
    from ..atomic import atomic_write_bytes
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)


# ----------------------------------------------------------------- the page

def render(results, out_dir, title=None, notes=None):
    """Write ``report.md`` and the PNGs into ``out_dir``; returns the report's path.

    ``notes``: Markdown written by a person (why a target was missed, what was going on
    on the machine), placed right after the summary."""
    os.makedirs(out_dir, exist_ok=True)
    names = _machine_names(results)
    plots = []
    specs = [
        ("kernels_dropout_gbps.png", "Dropout forward and backward: achieved GB/s against "
         "size, per variant, with the copy reference (dotted)",
         lambda p: plot_dropout(results, names, p, frac=False)),
        ("kernels_dropout_bw_frac.png", "Dropout: fraction of the device's copy bandwidth "
         "(dashed: the 0.85 target)", lambda p: plot_dropout(results, names, p, frac=True)),
        ("kernels_batchnorm_fused.png", "Batchnorm and the fused pass: GB/s per variant",
         lambda p: plot_rowops(results, names, p)),
        ("train_samples_per_s.png", "Training samples/s per backend",
         lambda p: plot_train(results, names, p)),
        ("dropout_regularizer.png", "Dropout as a regularizer: train and validation accuracy "
         "per epoch", lambda p: plot_regularizer(results, names, p)),
        ("time_to_accuracy.png", "Time to 60%: validation accuracy per epoch",
         lambda p: plot_tta(results, names, p)),
    ]
    for fname, caption, fn in specs:
        path = os.path.join(out_dir, fname)
        if fn(path):
            plots.append((fname, caption))
        elif os.path.exists(path):
            os.remove(path)
    title = title or "fcgpu benchmarks: " + ", ".join(names)
    commits = sorted({(r.get("machine") or {}).get("fcgpu_commit") or "?" for r in results})
    dates = sorted({(r.get("machine") or {}).get("date") or r.get("created") or "?"
                    for r in results})
    settings = [r.get("settings") or {} for r in results]
    mode = ", ".join(sorted({"quick" if s.get("quick") else ("full" if s.get("full")
                                                              else "default")
                             for s in settings}))
    lines = ["# " + title, "",
             "%s · fcgpu commit %s · %s run%s · generated by `fcgpu report` from %s" % (
                 ", ".join(d[:16].replace("T", " ") for d in dates),
                 ", ".join("`%s`" % c[:12] for c in commits), mode,
                 "" if len(results) == 1 else "s",
                 ", ".join("`%s`" % os.path.basename(r.get("_path", "results.json"))
                           for r in results)),
             ""]
    lines += summary_section(results, names)
    if notes:
        lines += ["### Notes", "", notes.strip(), ""]
    lines += machine_section(results, names)
    lines += kernel_section(results, names)
    lines += train_section(results, names)
    lines += experiments_section(results, names)
    lines += ["## Plots", ""]
    if plots:
        for fname, caption in plots:
            lines += ["**%s**" % caption, "", "![%s](%s)" % (caption, fname), ""]
    else:
        lines += ["No data to plot.", ""]
    lines += method_section(results)
    path = os.path.join(out_dir, "report.md")
    from ..atomic import atomic_write_bytes
    atomic_write_bytes("\n".join(lines).encode("utf-8"), path)
    return path
