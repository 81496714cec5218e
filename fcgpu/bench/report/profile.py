"""The CPU step profile (:mod:`fcgpu.bench.profile`) as tables: Markdown for the report,
plain text for ``fcgpu bench --profile``. Both come from :func:`profile_tables`."""
from __future__ import annotations

from .format import fmt_num, fmt_ratio, table

GOAL = 1.25  # the step within 1.25x its GEMM floor


def verdict(p):
    """``(status, text)`` for the goal: 'met', 'missed', or 'inconclusive' when the ratio
    of minima, the ratio of medians and the median per-round ratio disagree by more than
    10% or the step came out faster than its own matrix products (other work on the
    machine, not the step, decided those numbers)."""
    r = p["ratio"]
    vals = [r["min"], r["median"], r["paired_median"]]
    if min(vals) < 0.95 or max(vals) > 1.1 * min(vals):
        return "inconclusive", ("inconclusive: the ratios disagree (minima %s, medians %s, "
                                "per round %s), so the machine was busy; measure again on "
                                "a quiet one" % tuple(fmt_ratio(v) for v in vals))
    if r["min"] <= GOAL:
        return "met", "met"
    return "missed", "missed by %.0f%%" % (100 * (r["min"] / GOAL - 1))


def _ms(s):
    return "—" if s is None else "%.2f" % (s * 1e3)


def _share(t, step):
    return "%.1f%%" % (100 * t / step) if t is not None and step else "—"


def _net(p):
    dims = [p.get("input_dim", "?")] + list(p.get("hidden") or []) + [p.get("classes", "?")]
    return "%s net (%s, batch %s, %s)" % (p.get("net"), "-".join(map(str, dims)),
                                          p.get("batch"), p.get("dtype"))


def _augment(p):
    """The augmentation the step's gather made, in words ('' for none)."""
    mode = p.get("augment") or "none"
    if mode == "none":
        return ""
    return ", augmented in the gather (%s, from uint8 images)" % (
        "random crops and flips, pad %s" % p.get("pad") if mode == "crop" else "random flips")


def augment_share(p):
    """``(min_s, median_s, share of the median plain step)`` of the augmenting gather,
    or None when the step did not augment."""
    ph = next((ph for ph in p.get("phases") or []
               if ph["label"] == "augmenting minibatch gather"), None)
    if ph is None:
        return None
    return ph["min_s"], ph["median_s"], ph["median_s"] / p["step_s"]["median"]


def describe(p):
    """One line: what was profiled, how often, on how many threads, under what load."""
    th = p.get("threads") or {}
    blas = th.get("blas")
    load = [x for x in (p.get("loadavg") or []) if x is not None]
    return ("%s on the NumPy path%s; %d rounds (floor, step and instrumented step "
            "interleaved); threads: Numba %s%s, BLAS %s%s" % (
                _net(p), _augment(p), p.get("rounds", 0), th.get("numba", "?"),
                " (%s)" % th["numba_layer"] if th.get("numba_layer") else "",
                ", ".join(map(str, blas)) if isinstance(blas, list) else blas,
                "; 1-minute load average %.1f–%.1f" % (min(load), max(load)) if load else ""))


def profile_tables(p):
    """``[(title, header, rows, align)]`` of a profile dict."""
    st, fl, r = p["step_s"], p["floor_s"], p["ratio"]
    sps = p.get("samples_per_s") or {}
    ngemm = len(p.get("gemms") or [])
    summary = [
        ["Training step (gather, forward, backward, Adam)", _ms(st["min"]), _ms(st["median"])],
        ["GEMM floor: the step's %d matrix products alone" % ngemm, _ms(fl["min"]),
         _ms(fl["median"])],
        ["**Step / floor** (goal ≤ %.2f×; median of per-round ratios %s)"
         % (GOAL, fmt_ratio(r.get("paired_median"))),
         "**%s**" % fmt_ratio(r["min"]), "**%s**" % fmt_ratio(r["median"])],
        ["Sums of the fastest time of each phase / of each product: %s ms / %s ms"
         % (_ms(p.get("step_sum_of_minima_s")), _ms(p.get("floor_sum_of_minima_s"))),
         fmt_ratio(r.get("sum_of_minima")), ""],
        ["Samples/s (batch / step time)", fmt_num(sps.get("best")), fmt_num(sps.get("median"))],
        ["GFLOP/s of the floor (%.2f GFLOP per step)" % (p["gemm_flops"] / 1e9),
         fmt_num(p["gemm_flops"] / fl["min"] / 1e9), fmt_num(p["gemm_flops"] / fl["median"] / 1e9)],
    ]
    aug = augment_share(p)
    if aug is not None:
        summary.append(["Augmenting gather (%s; goal < 5%% of the step): %s of the median step"
                        % (p["augment"], _share(aug[1], st["median"])), _ms(aug[0]),
                        _ms(aug[1])])
    tables = [("Step against its GEMM floor", ["", "Min (ms)", "Median (ms)"], summary,
               ["l", "r", "r"])]

    inst = (p.get("step_instrumented_s") or {}).get("median")
    rows = []
    for ph in p["phases"]:
        mkn = ph.get("mkn")
        rows.append([ph["label"] + (" (%s)" % "×".join(map(str, mkn)) if mkn else ""),
                     ph["kind"], ph["calls"], _ms(ph["min_s"]), _ms(ph["median_s"]),
                     _share(ph["median_s"], inst)])
    oth = p.get("other_s") or {}
    rows.append(["other: Python, allocation, what no phase claims", "other", "",
                 _ms(oth.get("min")), _ms(oth.get("median")), _share(oth.get("median"), inst)])
    rows.append(["**instrumented step**", "", "", _ms((p.get("step_instrumented_s") or {})
                                                      .get("min")), _ms(inst), ""])
    tables.append(("Phases of one step (time of each call minus the calls it wraps)",
                   ["Phase", "Kind", "Calls", "Min (ms)", "Median (ms)", "Share"], rows,
                   ["l", "l", "r", "r", "r", "r"]))

    kinds = p.get("kinds") or {}
    krows = [[k, _ms(v), _share(v, inst)] for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    tables.append(("By kind (sums of the medians)", ["Kind", "Median (ms)", "Share"], krows,
                   ["l", "r", "r"]))

    grows = []
    for g in p.get("gemms") or []:
        grows.append([g["label"], g["op"], "×".join(map(str, g["mkn"])), _ms(g["min_s"]),
                      _ms(g["median_s"]), fmt_num(g["gflops"]), _ms(g.get("in_step_min_s")),
                      _ms(g.get("in_step_median_s"))])
    tables.append(("The floor's products: alone, and the same product inside the step",
                   ["Product", "Op", "m×k×n", "Alone min (ms)", "Alone median (ms)",
                    "GFLOP/s (min)", "In step min (ms)", "In step median (ms)"], grows,
                   ["l", "l", "l", "r", "r", "r", "r", "r"]))

    lay = p.get("layouts")
    if lay:
        a, b = lay["W"], lay["W.T"]
        lrows = []
        for ga, gb in zip(a["gemms"], b["gemms"]):
            lrows.append([ga["label"], _ms(ga["min_s"]), _ms(gb["min_s"]),
                          fmt_ratio(gb["min_s"] / ga["min_s"])])
        lrows.append(["**all**", _ms(a["floor_s"]["min"]), _ms(b["floor_s"]["min"]),
                      fmt_ratio(b["floor_s"]["min"] / a["floor_s"]["min"])])
        tables.append(("Storing W (D×M, as the course does) or its transpose: the floor's "
                       "products, interleaved, min over the rounds",
                       ["Product", "W (ms)", "W.T stored (ms)", "W.T / W"], lrows,
                       ["l", "r", "r", "r"]))
    return tables


def profile_markdown(p):
    out = [describe(p) + ". Goal step / floor ≤ %.2f×: **%s**." % (GOAL, verdict(p)[1]), ""]
    for title, head, rows, align in profile_tables(p):
        out += ["**%s**" % title, "", table(head, rows, align), ""]
    return out


def profile_text(p):
    """The same tables for a terminal."""
    out = [describe(p), "Goal step / floor <= %.2fx: %s" % (GOAL, verdict(p)[1])]
    for title, head, rows, align in profile_tables(p):
        cells = [[str(c).replace("**", "") for c in r] for r in [head] + rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
        out += ["", title]
        for r in cells:
            out.append("  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                                 for c, w, a in zip(r, widths, align)).rstrip())
    return "\n".join(out)


def profile_section(results, names):
    """The report's section: one profile per results file that has one."""
    have = [(r, n) for r, n in zip(results, names) if r.get("profile")]
    if not have:
        return []
    out = ["## CPU step profile", "",
           "`fcgpu bench --profile`: one training step of the NumPy path timed phase by phase "
           "beside its GEMM floor (the same matrix products, shapes, dtype and layouts, alone), "
           "in the same process, interleaved round by round. The ratio uses plain steps; the "
           "phases come from a separate instrumented step in each round.", ""]
    for r, name in have:
        if len(results) > 1:
            out += ["*%s*" % name, ""]
        out += profile_markdown(r["profile"])
    return out
