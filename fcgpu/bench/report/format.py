"""Formatting shared by the report's sections and plots: numbers, times and ratios,
Markdown tables, machine and variant names, the order variants are listed in."""
from __future__ import annotations

import math

from .. import variants as _variants
from ..kernels import OWN_LABEL_OPS



def in_order(present, suite):
    """The variants of ``present`` in the order the report lists them: the table's
    (:mod:`fcgpu.bench.variants`) for ``suite``, then any the table lacks (results of
    another fcgpu), by name."""
    present = set(present)
    known = _variants.names(suite)
    return [v for v in known if v in present] + sorted(present - set(known))


def not_run(reason):
    """"Not run: <reason>." (one "not run" however the reason starts)."""
    reason = reason or "not in these results"
    if reason.lower().startswith("not run: "):
        reason = reason[len("not run: "):]
    return "Not run: %s." % reason.rstrip(".")


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


def pow2(n):
    k = int(round(math.log2(n))) if n else 0
    return "2^%d" % k if (1 << k) == n else str(n)


def short_device(res):
    d = res.get("device") or "?"
    for junk in ("NVIDIA ", "(R)", "(TM)", " CPU", " Processor"):
        d = d.replace(junk, "")
    return " ".join(d.split())


def machine_names(results):
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


def variant_label(res, v, op=None):
    for r in res.get("kernels") or []:
        if r["variant"] == v and (r["op"] == op if op else r["op"] not in OWN_LABEL_OPS):
            return r["label"]
    return _variants.label(v)
