"""The report's PNG plots (matplotlib, Agg). Each ``plot_*`` writes its file and returns
whether there was anything to draw."""
from __future__ import annotations

import math

from ...atomic import atomic_save_figure
from .. import variants as _variants
from ..kernels import GATHER_OPS, OP_TITLES, ROW_OPS
from .format import fmt_num, in_order, variant_label

COPY_COLOR = "#000000"  # the copy reference's line; the variants' colours are the table's


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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
                lab = ("copy: " + variant_label(res, v, "copy")) if is_copy else \
                    variant_label(res, v, op)
                if multi:
                    lab += " — " + name
                ax.plot([p[0] for p in pts], [p[1] for p in pts],
                        linestyle=":" if is_copy else styles[i % len(styles)],
                        marker="" if is_copy else "o", ms=3.5, lw=1.6,
                        color=COPY_COLOR if is_copy else _variants.color(v), label=lab)
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
    atomic_save_figure(fig, path, dpi=100)
    return any_line


def _bar_groups(groups, title, path):
    """Grouped bars of GB/s: ``groups`` = [(x label, {variant: GB/s})], log scale."""
    plt = _plt()
    variants = in_order({v for g in groups for v in g[1]}, "kernels")
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(groups) + 2), 4.8))
    width = 0.8 / max(len(variants), 1)
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(groups))]
        ys = [g[1].get(v, 0) or 0 for g in groups]
        ax.bar(xs, ys, width=width, color=_variants.color(v), label=_variants.label(v))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], fontsize=8)
    ax.set_yscale("log")
    top = max((g[1].get(v) or 0) for g in groups for v in variants)
    if top > 0:
        ax.set_ylim(top=top * 6)  # room for the legend above the bars
    ax.set_ylabel("GB/s (bytes that must move)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8, ncol=min(4, len(variants)), loc="upper left", frameon=False)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)


def _groups(results, names, ops, name_of):
    """[(label, {variant: GB/s})] for each (op, shape) of ``ops`` measured, per machine."""
    groups = []
    multi = len(results) > 1
    for res, name in zip(results, names):
        rows = [r for r in res.get("kernels") or [] if r["op"] in ops]
        for op in ops:
            for shape in sorted({tuple(r["shape"]) for r in rows if r["op"] == op}):
                vals = {r["variant"]: r["gbps"] for r in rows
                        if r["op"] == op and tuple(r["shape"]) == shape and r.get("time_s")}
                lab = name_of(op, shape)
                if multi:
                    lab += "\n" + name
                groups.append((lab, vals))
    return groups


def plot_rowops(results, names, path):
    groups = _groups(results, names, ROW_OPS, lambda op, shape: "%s\n%s" % (
        op.replace("_", " "), "x".join(map(str, shape))))
    if not groups:
        return False
    _bar_groups(groups, "Batchnorm and the fused batchnorm-ReLU-dropout, per variant", path)
    return True


def plot_gather(results, names, path):
    groups = _groups(results, names, GATHER_OPS, lambda op, shape: "%s\nbatch %d" % (
        {"augment": "augmenting", "gather": "plain"}[op], shape[0]))
    if not groups:
        return False
    _bar_groups(groups, "Minibatch gather from uint8 images: augmenting (crop, pad 4) "
                "and plain", path)
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
            for v in in_order({r["variant"] for r in res.get("train") or []}, "train"):
                r = next((r for r in res.get("train") or []
                          if r["net"] == net and r["variant"] == v), None)
                if r:
                    lab = _variants.short(v) + (" — " + name if multi else "")
                    bars.append((lab, r["samples_per_s"], _variants.color(v), r))
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
    atomic_save_figure(fig, path, dpi=100)
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
    atomic_save_figure(fig, path, dpi=100)
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
    atomic_save_figure(fig, path, dpi=100)
    return True
