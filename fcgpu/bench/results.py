"""pytest-benchmark JSON (+ experiments) -> one results JSON with a ``summary``.

Layout of the results (``format`` = ``fcgpu-bench-1``)::

    {
      "format", "device", "created", "machine": {...}, "settings": {...},
      "workers": {variant: hello},            # what each variant process ran on
      "variant_skips": {variant: reason},     # variants that could not start here
      "copy_bandwidth": {"cpu": {...}, "gpu": {...}},   # the reference, per device
      "kernels": [ {op, shape, shape_label, n, bytes, variant, label, device,
                    time_s, timer, gbps, bw_frac, host: {stats}, device_time: {stats}} ],
      "kernel_skips": [ {op, shape, variant, reason} ],
      "train": [ {net, hidden, batch, variant, label, device, samples_per_s,
                  step_s: {stats}, steps, first_step_s, params} ],
      "train_skips": [ {net, variant, reason} ],
      "experiments": {"dropout_stats": ..., "dropout_regularizer": ...,
                      "time_to_accuracy": ..., "course_wall": ...},
      "profile": {...} or null,               # fcgpu.bench.profile (--profile)
      "summary": {key: number or null}, "summary_notes": {key: why},
      "summary_details": {...}
    }

Times are medians in seconds. ``gbps`` = bytes that must move / median time;
``bw_frac`` = gbps / the copy bandwidth of the same device (see :func:`copy_reference`).
"""
from __future__ import annotations

import datetime as _dt

from ..errors import DataError
from . import RESULTS_FORMAT
from . import variants
from .kernels import shape_label

BIG_FLAT = 1 << 26
FUSED_SHAPES = ((490, 500), (65536, 4096))
# the fused pass's baseline in the summary: what a CuPy user writes (cupy.random mask,
# separate ops); the Philox-emulating *_ref code on CuPy is in the details only
FUSED_BASELINE = "cupy_curand"
FUSED_REF = "cupy_unfused"
HEADLINE_KEYS = ("dropout_fwd_bw_frac", "dropout_bwd_bw_frac", "fused_vs_unfused",
                 "train_vs_torch")


def _entries(raw):
    for b in raw.get("benchmarks", []):
        ei = b.get("extra_info") or {}
        if ei.get("suite"):
            yield ei
    for ei in (raw.get("fcgpu") or {}).get("case_skips", []):
        yield ei


def copy_reference(kernels):
    """Per device ('cpu', 'gpu'): the copy bandwidth at the largest size measured,
    the best over that device's copy variants."""
    ref = {}
    for dev in ("cpu", "gpu"):
        rows = [r for r in kernels if r["op"] == "copy" and r["device"] == dev and r.get("gbps")]
        if not rows:
            continue
        top = max(r["n"] for r in rows)
        best = max((r for r in rows if r["n"] == top), key=lambda r: r["gbps"])
        ref[dev] = {"gbps": best["gbps"], "n": top, "bytes": best["bytes"],
                    "variant": best["variant"], "method": best["label"],
                    "all": {r["variant"]: r["gbps"] for r in rows if r["n"] == top}}
    return ref


def collect(raw_list):
    """Kernel and training rows (and skips) from pytest-benchmark JSON dicts."""
    kernels, kskips, train, tskips = [], [], [], []
    fc = {"variant_skips": {}, "workers": {}, "settings": {}, "machine": None}
    for raw in raw_list:
        extra = raw.get("fcgpu") or {}
        fc["variant_skips"].update(extra.get("variant_skips") or {})
        fc["workers"].update(extra.get("workers") or {})
        fc["settings"].update(extra.get("settings") or {})
        fc["machine"] = fc["machine"] or extra.get("machine")
        for ei in _entries(raw):
            if ei["suite"] == "kernels":
                shape = tuple(ei["shape"])
                n = 1
                for s in shape:
                    n *= s
                for v, m in (ei.get("measurements") or {}).items():
                    kernels.append({
                        "op": ei["op"], "shape": list(shape), "shape_label": shape_label(shape),
                        "n": n, "bytes": ei["bytes"], "variant": v, "label": m["label"],
                        "device": m["device"], "time_s": m["time_s"], "timer": m["timer"],
                        "gbps": m["gbps"], "host": m["host"], "device_time": m["device_time"],
                        "rotate": m.get("rotate"), "calls_per_chunk": m.get("calls_per_chunk"),
                    })
                for v, why in (ei.get("skipped") or {}).items():
                    kskips.append({"op": ei["op"], "shape": list(shape),
                                   "shape_label": shape_label(shape), "variant": v,
                                   "reason": why})
            elif ei["suite"] == "train":
                for v, m in (ei.get("measurements") or {}).items():
                    row = {"net": ei["net"], "hidden": ei["hidden"], "batch": ei["batch"],
                           "variant": v}
                    row.update(m)
                    train.append(row)
                for v, why in (ei.get("skipped") or {}).items():
                    tskips.append({"net": ei["net"], "variant": v, "reason": why})
    return kernels, kskips, train, tskips, fc


def find_row(rows, **kw):
    """The first row whose fields equal ``kw`` (a list field compared as a tuple)."""
    for r in rows:
        if all((tuple(r[k]) if isinstance(r[k], list) else r[k]) == v for k, v in kw.items()):
            return r
    return None


def _why_missing(variant, kskips_or_tskips, variant_skips, **where):
    if variant in variant_skips:
        return "%s did not run: %s" % (variant, variant_skips[variant])
    for s in kskips_or_tskips:
        if s["variant"] in (variant, "*") and all(
                (tuple(s[k]) if isinstance(s[k], list) else s[k]) == v
                for k, v in where.items()):
            return "%s skipped: %s" % (variant, s["reason"])
    return "%s was not measured at %s" % (variant, ", ".join("%s=%s" % kv
                                                             for kv in where.items()))


def _fused_summary(kernels, kskips, variant_skips, kernels_ran, summary, notes, details):
    """``fused_vs_unfused``: the smaller over :data:`FUSED_SHAPES` of the baseline's time
    (what a CuPy user writes) over fcgpu's; the *_ref emulation's ratio goes to the
    details (``fused_vs_ref_<shape>``)."""
    ratios = {}
    details["fused_vs_unfused_baseline"] = variants.label(FUSED_BASELINE)
    for shape in FUSED_SHAPES:
        name = "x".join(map(str, shape))
        f = find_row(kernels, op="fused_fwd", variant="fcgpu", shape=shape)
        u = find_row(kernels, op="fused_fwd", variant=FUSED_BASELINE, shape=shape)
        r = find_row(kernels, op="fused_fwd", variant=FUSED_REF, shape=shape)
        if f and u:
            ratios[name] = u["time_s"] / f["time_s"]
            details["fused_vs_unfused_" + name] = ratios[name]
        else:
            details["fused_vs_unfused_" + name] = None
            missing = "fcgpu" if not f else FUSED_BASELINE
            details["fused_vs_unfused_%s_note" % name] = _why_missing(
                missing, kskips, variant_skips, op="fused_fwd", shape=shape)
        if f and r:
            details["fused_vs_ref_" + name] = r["time_s"] / f["time_s"]
    if ratios:
        summary["fused_vs_unfused"] = min(ratios.values())
        if len(ratios) < len(FUSED_SHAPES):
            notes["fused_vs_unfused"] = "measured at %s only" % ", ".join(ratios)
    else:
        summary["fused_vs_unfused"] = None
        notes["fused_vs_unfused"] = ("the kernel suite did not run" if not kernels_ran else
                                     details.get("fused_vs_unfused_490x500_note"))


def summarize(kernels, kskips, train, tskips, variant_skips, copy_ref, settings=None):
    """The ``summary`` keys, with notes for the nulls and the details behind them."""
    summary, notes, details = {}, {}, {}
    gpu_ref = copy_ref.get("gpu")
    kernels_ran, train_ran = bool(kernels or kskips), bool(train or tskips)

    for key, op in (("dropout_fwd_bw_frac", "dropout_fwd"), ("dropout_bwd_bw_frac", "dropout_bwd")):
        row = find_row(kernels, op=op, variant="fcgpu", n=BIG_FLAT)
        if row and gpu_ref:
            summary[key] = row["gbps"] / gpu_ref["gbps"]
            details[key] = {"gbps": row["gbps"], "copy_gbps": gpu_ref["gbps"],
                            "copy_method": gpu_ref["method"], "time_s": row["time_s"]}
        else:
            summary[key] = None
            if not kernels_ran:
                notes[key] = "the kernel suite did not run"
            elif not row:
                notes[key] = _why_missing("fcgpu", kskips, variant_skips, op=op,
                                          shape=(BIG_FLAT,))
            else:
                notes[key] = "no GPU copy bandwidth was measured"
        # the CPU path's figure, for information
        cpu_ref = copy_ref.get("cpu")
        cpu_rows = [r for r in kernels if r["op"] == op and r["variant"] == "numba"]
        if cpu_rows and cpu_ref:
            top = max(cpu_rows, key=lambda r: r["n"])
            details[key + "_cpu_numba"] = {"n": top["n"], "gbps": top["gbps"],
                                           "frac": top["gbps"] / cpu_ref["gbps"],
                                           "copy_gbps": cpu_ref["gbps"]}

    _fused_summary(kernels, kskips, variant_skips, kernels_ran, summary, notes, details)

    def sps(net, variant):
        if variant == "fcgpu":  # fcgpu on the GPU: the faster of plain and graph-captured
            found = [r for r in train if r["net"] == net and r["variant"] in ("fcgpu",
                                                                              "fcgpu_graph")]
            best = max(found, key=lambda r: r["samples_per_s"]) if found else None
            if best is not None and net == "default":
                details["fcgpu_gpu_variant"] = best["variant"]
            return best["samples_per_s"] if best else None
        r = find_row(train, net=net, variant=variant)
        return r["samples_per_s"] if r else None

    for key, num, den in (("train_vs_torch", "fcgpu", "torch_cuda"),
                          ("train_vs_cpu", "fcgpu", "numpy"),
                          ("cpu_train_vs_torch", "numpy", "torch_cpu")):
        for net in ("default", "wide"):
            a, b = sps(net, num), sps(net, den)
            details["%s_%s" % (key, net)] = a / b if a and b else None
        a, b = sps("default", num), sps("default", den)
        if a and b:
            summary[key] = a / b
            details[key] = {"net": "default", num: a, den: b}
        else:
            summary[key] = None
            missing = num if not a else den
            notes[key] = ("the training suite did not run" if not train_ran else
                          _why_missing(missing, tskips, variant_skips, net="default"))
    for v in ("fcgpu", "fcgpu_graph"):
        a, b = find_row(train, net="default", variant=v), find_row(train, net="default",
                                                             variant="torch_cuda")
        if a and b:
            details["train_vs_torch_" + v] = a["samples_per_s"] / b["samples_per_s"]
    # from the fastest steps: less sensitive to other load on a shared machine
    for key, num, den in (("train_vs_torch", details.get("fcgpu_gpu_variant", "fcgpu"),
                           "torch_cuda"),
                          ("cpu_train_vs_torch", "numpy", "torch_cpu")):
        a, b = find_row(train, net="default", variant=num), find_row(train, net="default",
                                                                variant=den)
        if a and b and a["step_s"].get("min") and b["step_s"].get("min"):
            details[key + "_best_steps"] = b["step_s"]["min"] / a["step_s"]["min"]
    g = find_row(train, net="default", variant="torch_cuda_compile")
    f = find_row(train, net="default", variant=details.get("fcgpu_gpu_variant", "fcgpu"))
    if g and f:
        details["train_vs_torch_compile"] = f["samples_per_s"] / g["samples_per_s"]
    return summary, notes, details


def cut_reasons(raw_list, experiments=None, not_run=None):
    """What a deadline cut, as short lines: suites not run or stopped (``not_run``:
    {suite: why}), kernel and training cases not started, course-run backends and
    experiments not run or stopped. ``[]`` when nothing was cut."""
    from .schedule import NOT_STARTED
    out = ["%s: %s" % (k, v) for k, v in (not_run or {}).items()]
    for raw in raw_list:
        skips = (raw.get("fcgpu") or {}).get("case_skips") or []
        cut = [ei for ei in skips if (ei.get("skipped") or {}).get("*") == NOT_STARTED]
        if cut:
            what = ["%s %s" % (ei.get("op") or ei.get("net"), shape_label(ei["shape"])
                               if "shape" in ei else "net") for ei in cut]
            out.append("%s: %d case(s) not started by the deadline (%s)"
                       % (cut[0]["suite"], len(cut), ", ".join(what[:4])
                          + (", ..." if len(what) > 4 else "")))
    for name, exp in (experiments or {}).items():
        rows = dict((exp or {}).get("backends") or {}, **({"": exp} if exp else {}))
        for backend, r in rows.items():
            why = (r or {}).get("skipped") or ""
            if "deadline" in why or why.startswith("stopped after"):
                out.append("%s%s: %s" % (name, " " + backend if backend else "", why))
    return out


def headline_figures(results):
    """The four summary figures of a GPU run: ``{name: (value, why it is missing)}`` for
    the keys of :data:`HEADLINE_KEYS` and ``course_wall_s`` (the fastest fcgpu GPU row of
    the course's whole run, seconds)."""
    s, notes = results.get("summary") or {}, results.get("summary_notes") or {}
    out = {k: (s.get(k), None if s.get(k) is not None else notes.get(k) or "not measured")
           for k in HEADLINE_KEYS}
    cw = (results.get("experiments") or {}).get("course_wall") or {"skipped": "not run"}
    rows = cw.get("backends") or {}
    secs = [rows[n]["seconds"] for n in ("fcgpu", "fcgpu_graph") if (rows.get(n) or {}).get(
        "seconds")]
    why = cw.get("skipped") or "; ".join("%s: %s" % (n, (rows.get(n) or {}).get(
        "skipped", "not asked for")) for n in ("fcgpu_graph", "fcgpu"))
    out["course_wall_s"] = (min(secs), None) if secs else (None, why)
    return out


# What the report reads without a default: each top-level field's type (absent or
# null is fine), the keys of every row of the row lists, and those of a profile.
FIELD_TYPES = {"settings": dict, "machine": dict, "workers": dict, "variant_skips": dict,
               "copy_bandwidth": dict, "kernels": list, "kernel_skips": list, "train": list,
               "train_skips": list, "experiments": dict, "profile": dict, "summary": dict,
               "summary_notes": dict, "summary_details": dict}
ROW_KEYS = {"kernels": ("op", "shape", "n", "variant", "label", "device", "time_s", "gbps",
                        "bw_frac"),
            "kernel_skips": ("op", "shape_label", "variant", "reason"),
            "train": ("net", "hidden", "batch", "variant", "device", "samples_per_s"),
            "train_skips": ("net", "variant", "reason")}
PROFILE_KEYS = ("ratio", "step_s", "floor_s", "phases", "gemms", "gemm_flops")


def check_results(res, where="results"):
    """Raise :class:`fcgpu.errors.DataError` (one line naming ``where`` and the field)
    unless ``res`` is an fcgpu results dict of this format that the report can read."""
    if not isinstance(res, dict) or res.get("format") != RESULTS_FORMAT:
        raise DataError("%s is not an fcgpu results file (format %r, expected %r)"
                        % (where, res.get("format") if isinstance(res, dict) else None,
                           RESULTS_FORMAT))
    for key, kind in FIELD_TYPES.items():
        if res.get(key) is not None and not isinstance(res[key], kind):
            raise DataError("%s: %r is a %s, not a %s" % (where, key, type(res[key]).__name__,
                                                          kind.__name__))
    for key, need in ROW_KEYS.items():
        for i, row in enumerate(res.get(key) or []):
            missing = [k for k in need if not isinstance(row, dict) or k not in row]
            if missing:
                raise DataError("%s: %s[%d] lacks %s" % (where, key, i, ", ".join(missing)))
    missing = [k for k in PROFILE_KEYS if res.get("profile") and k not in res["profile"]]
    if missing:
        raise DataError("%s: the profile lacks %s" % (where, ", ".join(missing)))
    bad = [k for k, v in (res.get("experiments") or {}).items() if not isinstance(v, dict)]
    if bad:
        raise DataError("%s: experiments %s are not objects" % (where, ", ".join(bad)))


def results_dir_name(machine):
    """``<date>-<device>`` for committing under ``bench/results/``, e.g.
    ``2026-11-26-cpu-amd-epyc`` or ``2026-11-26-nvidia-h100-80gb-hbm3``."""
    import re
    from .machine import device_label
    date = (machine.get("date") or _dt.date.today().isoformat())[:10]
    gpu = machine.get("gpu") or {}
    dev = device_label(machine) or "unknown"
    if not gpu.get("available"):
        dev = "cpu-" + dev
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower().replace("(r)", "").replace("(tm)", ""))
    return "%s-%s" % (date, slug.strip("-"))


def build_results(raw_list, experiments=None, machine=None, settings=None, profile=None):
    """The results dict from pytest-benchmark JSON dicts (one per suite run), and the
    CPU step profile when one was taken."""
    kernels, kskips, train, tskips, fc = collect(raw_list)
    machine = machine or fc["machine"] or {}
    copy_ref = copy_reference(kernels)
    for r in kernels:
        ref = copy_ref.get(r["device"])
        r["bw_frac"] = r["gbps"] / ref["gbps"] if ref and r.get("gbps") else None
    summary, notes, details = summarize(kernels, kskips, train, tskips, fc["variant_skips"],
                                        copy_ref)
    from .machine import device_label
    return {
        "format": RESULTS_FORMAT,
        "device": device_label(machine) if machine else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": dict(fc["settings"], **(settings or {})),
        "workers": fc["workers"],
        "variant_skips": fc["variant_skips"],
        "copy_bandwidth": copy_ref,
        "kernels": kernels,
        "kernel_skips": kskips,
        "train": train,
        "train_skips": tskips,
        "experiments": experiments or {},
        "profile": profile,
        "summary": summary,
        "summary_notes": notes,
        "summary_details": details,
        "variant_labels": {v: variants.label(v) for v in variants.names("kernels")},
        "suggested_dir": results_dir_name(machine) if machine else None,
    }
