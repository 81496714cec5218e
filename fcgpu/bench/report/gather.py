"""The report's minibatch-gather tables: the augmenting gather beside the plain one,
and what the augmentation costs (ops ``augment`` and ``gather``, :mod:`..gather`)."""
from __future__ import annotations

from .. import variants as _variants
from ..gather import LABELS, OPS, PAD
from ..results import find_row
from .format import fmt_frac, in_order, fmt_num, fmt_ratio, fmt_time, table

OP_SHORT = {"augment": "augmenting (crop, pad %d)" % PAD, "gather": "plain"}
# (augmenting variant, plain variant, column): time of the first over the second's
COSTS = [("fcgpu", "fcgpu", "GPU: fcgpu kernel ÷ its plain pass (mode 'none')"),
         ("fcgpu", "cupy_unfused", "GPU: fcgpu kernel ÷ CuPy ops"),
         ("fcgpu", "torch_cuda", "GPU: fcgpu kernel ÷ PyTorch CUDA"),
         ("numba", "numba", "CPU: Numba ÷ its plain pass (mode 'none')"),
         ("numba", "numpy_ref", "CPU: Numba ÷ NumPy ops"),
         ("numba", "torch_cpu", "CPU: Numba ÷ PyTorch CPU")]


def gather_rows(res):
    return [r for r in res.get("kernels") or [] if r["op"] in OPS]


def _find(rows, op, batch, variant):
    return find_row(rows, op=op, shape=(batch,), variant=variant)


def _time(rows, op, batch, variant):
    r = _find(rows, op, batch, variant)
    return r["time_s"] if r else None


def _ratio(a, b):
    return a / b if a and b else None


def _cell(r, applies, fmt):
    if r is not None:
        return fmt(r)
    return "—" if applies else "n/a"


def _what_runs(rows, variants):
    lines = []
    for v in variants:
        parts = []
        for op in OPS:
            r = next((r for r in rows if r["op"] == op and r["variant"] == v), None)
            lab = r["label"] if r else LABELS[op].get(v)
            parts.append("%s: %s" % (OP_SHORT[op], lab if lab else "not applicable"))
        lines.append("- `%s`: %s." % (v, "; ".join(parts)))
    return lines


def gather_section(results, names):
    """Markdown lines (none when no result has a gather row)."""
    multi = len(results) > 1
    body = []
    for res, name in zip(results, names):
        rows = gather_rows(res)
        if not rows:
            continue
        variants = in_order({r["variant"] for r in rows}, "kernels")
        batches = sorted({r["shape"][0] for r in rows})
        speed, times = [], []
        for b in batches:
            for op in OPS:
                head = [str(b), OP_SHORT[op]]
                speed.append(head + [_cell(_find(rows, op, b, v), _variants.applicable(v, op),
                                           lambda r: "%s (%s)" % (fmt_num(r["gbps"]),
                                                                  fmt_frac(r.get("bw_frac"))))
                                     for v in variants])
                times.append(head + [_cell(_find(rows, op, b, v), _variants.applicable(v, op),
                                           lambda r: fmt_time(r["time_s"])) for v in variants])
        cols = [c for c in COSTS if any(_ratio(_time(rows, "augment", b, c[0]),
                                               _time(rows, "gather", b, c[1]))
                                        for b in batches)]
        cost = [[str(b)] + [fmt_ratio(_ratio(_time(rows, "augment", b, a),
                                             _time(rows, "gather", b, p)))
                            for a, p, _ in cols] for b in batches]
        head = ["Batch", "Gather"] + [_variants.label(v) for v in variants]
        align = ["r", "l"] + ["r"] * len(variants)
        if multi:
            body += ["*%s*" % name, ""]
        body += [table(head, speed, align), "", "<details><summary>Median time per call"
                 "</summary>", "", table(head, times, align), "", "</details>", ""]
        if cols:
            body += ["What the augmentation costs: time of the augmenting gather ÷ time of a "
                     "plain gather of the same batch (below 1×: augmenting in one pass beats "
                     "the plain gather written as separate ops).", "",
                     table(["Batch"] + [c[2] for c in cols], cost), ""]
        body += ["What each variant runs:", ""] + _what_runs(rows, variants) + [""]
    if not body:
        return []
    return ["### Minibatch gather from uint8 images, augmenting (crop, pad %d) and plain: "
            "GB/s (fraction of copy bandwidth)" % PAD, "",
            "Minibatch b of an epoch, B images of 3 × 32 × 32 gathered from a uint8 pool by "
            "a random permutation, as float32 minus the mean image, with the labels. "
            "Bytes counted: the B uint8 rows read, the float32 batch written, the mean image "
            "read, the row numbers read and the labels read and written. PyTorch has no "
            "per-sample augmenting batch gather (torchvision's v2 transforms draw one crop "
            "per call for the whole batch), so it shows the plain gather only (n/a). On a "
            "GPU the time of one call at batch 490 includes its launch from Python, which a "
            "training step captured as a CUDA graph does not pay.", ""] + body


def gather_bullets(res):
    """Summary lines: the augmenting gather of fcgpu's GPU kernel and of its Numba pass,
    per batch size, with the cost over its plain pass."""
    rows = gather_rows(res)
    out = []
    for b in sorted({r["shape"][0] for r in rows if r["op"] == "augment"}):
        parts = []
        for v, what in (("fcgpu", "GPU kernel"), ("numba", "Numba pass")):
            r = _find(rows, "augment", b, v)
            if r is None:
                continue
            frac = r.get("bw_frac")
            cost = _ratio(r["time_s"], _time(rows, "gather", b, v))
            parts.append("%s %s per call (%s GB/s%s)%s" % (
                what, fmt_time(r["time_s"]), fmt_num(r["gbps"]),
                ", %s of copy" % fmt_frac(frac) if frac is not None else "",
                ", %s its plain pass" % fmt_ratio(cost) if cost else ""))
        if parts:
            out.append("Augmenting minibatch gather (crop, pad %d), batch %d: %s."
                       % (PAD, b, "; ".join(parts)))
    return out
