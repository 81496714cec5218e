"""The design's performance targets, met or missed and by how much: the report's
summary and its targets table."""
from __future__ import annotations

from .. import TARGETS
from .format import fmt_frac, fmt_num, fmt_ratio, pow2, table
from .course import course_bullets
from .gather import gather_bullets
from .profile import GOAL as PROFILE_GOAL, verdict as profile_verdict


TARGET_ROWS = [
    ("dropout_fwd_bw_frac", "Dropout forward, 2^26 fp32, fraction of D2D copy bandwidth",
     "frac"),
    ("dropout_bwd_bw_frac", "Dropout backward, 2^26 fp32, fraction of D2D copy bandwidth",
     "frac"),
    ("fused_vs_unfused", "Fused BN-ReLU-dropout forward vs CuPy as a user writes it: a "
     "`cupy.random` mask drawn each call; batchnorm, ReLU, dropout as separate CuPy ops "
     "(smaller of 490x500 and 65536x4096)", "ratio"),
    ("train_vs_torch", "GPU training samples/s, fcgpu / PyTorch eager (default net; fcgpu: "
     "the faster of fused and fused + CUDA graph)", "ratio"),
    ("train_vs_cpu", "GPU training samples/s, fcgpu / NumPy path (default net)", "ratio"),
    ("cpu_train_vs_torch", "CPU training samples/s, NumPy path / PyTorch CPU (default net)",
     "ratio"),
]


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


def _cpu_bullets(res):
    """The CPU path's lines: training against PyTorch CPU, the step profile, dropout."""
    s, det = res.get("summary") or {}, res.get("summary_details") or {}
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
    prof = res.get("profile")
    if prof:
        r = prof["ratio"]
        bullets.append("CPU step (`--profile`): %s ms, **%s** the %s ms its matrix products "
                       "take alone (fastest of each; medians %s; sums of per-phase "
                       "minima %s), goal ≤ %.2f×: **%s**."
                       % ("%.2f" % (prof["step_s"]["min"] * 1e3), fmt_ratio(r["min"]),
                          "%.2f" % (prof["floor_s"]["min"] * 1e3), fmt_ratio(r["median"]),
                          fmt_ratio(r.get("sum_of_minima")), PROFILE_GOAL,
                          profile_verdict(prof)[1]))
    for key, what in (("dropout_fwd_bw_frac", "forward"), ("dropout_bwd_bw_frac",
                                                            "backward")):
        c = det.get(key + "_cpu_numba")
        if c:
            bullets.append("CPU dropout %s (Numba, %s elements): %s GB/s, %.2f of the "
                           "CPU's copy bandwidth (%s GB/s)."
                           % (what, pow2(c["n"]), fmt_num(c["gbps"]), c["frac"],
                              fmt_num(c["copy_gbps"])))
    return bullets


def _target_bullets(res):
    """The targets measured, and why the others are not."""
    s, notes = res.get("summary") or {}, res.get("summary_notes") or {}
    bullets = []
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
    return bullets


def _caveats(res):
    """A run cut short for time; a busy machine."""
    st, m = res.get("settings") or {}, res.get("machine") or {}
    bullets = []
    if st.get("complete") is False and st.get("cut"):
        bullets.append("⚠️ This run was cut short for time, so some figures are missing: "
                       "%s." % "; ".join(st["cut"][:6]))
    load = st.get("loadavg")
    cores = m.get("cpu_affinity") or m.get("cpu_count")
    if load and cores and max(load) > 1.5 * cores:
        bullets.append("⚠️ The machine was shared and busy during the run (1-minute load "
                       "average %.1f–%.1f on %s cores): absolute times are pessimistic "
                       "and noisy; the ratios come from interleaved measurements, so "
                       "the noise hit every variant." % (min(load), max(load), cores))
    return bullets


def summary_section(results, names):
    out = ["## Summary", ""]
    for res, name in zip(results, names):
        m = res.get("machine") or {}
        gpu = (m.get("gpu") or {})
        where = "%s (%s cores%s)" % (name, m.get("cpu_affinity") or m.get("cpu_count") or "?",
                                     ", " + gpu["name"] if gpu.get("available") else ", no GPU")
        bullets = _cpu_bullets(res) + gather_bullets(res) + course_bullets(res)
        bullets += _target_bullets(res) + _caveats(res)
        out.append("**%s**" % where)
        out.append("")
        out.extend("- " + b for b in bullets)
        out.append("")
    return out + _targets_table(results, names)


def _targets_table(results, names):
    """Every target, per machine: met or missed and by how much, or why not measured."""
    out = []
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
