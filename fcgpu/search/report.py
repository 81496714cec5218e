"""``fcgpu search --report DIR``: ``report.md`` (best trials, failures, the retrain
command), ``trials.csv`` and Optuna's standard plots as PNG."""
from __future__ import annotations

import os
import warnings

from ..atomic import atomic_save_figure, atomic_write_bytes
from ..errors import StorageError
from .storage import mask_url
from .summary import count_states, counts_text, fail_reason, fmt_value, retrain_command


def _save_fig(ax, path):
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")


def _importance_blocker(study):
    """Why parameter importances cannot be computed, or None if they can."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return ("parameter importances need at least 2 completed trials; the study has %d"
                % len(complete))
    common = set(complete[0].params)
    for t in complete[1:]:
        common &= set(t.params)
    varying = [p for p in common if len({repr(t.params[p]) for t in complete}) > 1]
    if not varying:
        return ("parameter importances need parameters that vary across the completed "
                "trials; these %d all share the same values" % len(complete))
    return None


# settings beyond the notebook's space: (config key, column head)
RECIPE_COLUMNS = [("augment", "augment"), ("pad", "pad"), ("label_smoothing", "smoothing"),
                  ("schedule", "schedule"), ("lr_decay", "lr decay"), ("mix", "mix"),
                  ("ema_decay", "ema")]


def _recipe_cell(cfg, key, default):
    """A recipe column's cell: the value, mixing with its alpha, 'off' for no average."""
    value = cfg.get(key, default)
    if key == "mix" and value not in (None, "none"):
        return "%s %s" % (value, fmt_value(cfg.get("mix_alpha", 1.0)))
    if key == "ema_decay" and value is None:
        return "off"
    return fmt_value(value)


def write_report(study, folder, storage_url=None, top=10):
    """``report.md`` (best trials, failures, retrain command), ``trials.csv`` and
    Optuna's standard plots as PNG in ``folder``. Returns the Markdown file's path."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StorageError("cannot write the report to %s: %s"
                           % (folder, exc.strerror or exc)) from exc
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state.name == "COMPLETE"),
                      key=lambda t: t.value, reverse=True)
    lines = ["# fcgpu search: study `%s`" % study.study_name, ""]
    if storage_url:
        lines += ["Storage: `%s`" % mask_url(storage_url), ""]
    lines += ["%d trials: %s." % (len(trials), counts_text(count_states(trials)) or "none"),
              ""]
    lines += ["## Best trials", ""] + _best_trials(complete[:top])
    failed = [t for t in trials if t.state.name == "FAIL"]
    if failed:
        lines += ["", "## Failed trials", "", "| trial | reason |", "|---:|---|"]
        for t in failed:
            lines.append("| %d | %s |" % (t.number, fail_reason(t).replace("|", "\\|")))
    lines += ["", "## Plots", ""] + _plots(study, folder, trials, complete)
    _write_csv(trials, os.path.join(folder, "trials.csv"))
    lines += ["All trials: [trials.csv](trials.csv).", ""]
    path = os.path.join(folder, "report.md")
    atomic_write_bytes("\n".join(lines).encode(), path)
    return path


def _best_trials(best):
    """The Markdown table of the ``best`` completed trials (best first) and the command
    that retrains the first; a line saying so when there is none."""
    if not best:
        return ["No completed trial yet."]
    from ..train import TrainConfig
    course = TrainConfig().to_dict()  # what a trial's config leaves out
    configs = [t.user_attrs.get("config") or {} for t in best]
    # the recipe's other settings, as columns where some trial sets them
    extra = [(k, head) for k, head in RECIPE_COLUMNS
             if any(c.get(k, course.get(k)) != course.get(k) for c in configs)]
    lines = ["| rank | trial | val acc | train acc | hidden | keep | lr | reg | "
             "weight scale | batch | " + "".join(h + " | " for _, h in extra)
             + "epochs | time (s) | worker |",
             "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|" + "---|" * len(extra)
             + "---:|---:|---|"]
    for rank, (t, c) in enumerate(zip(best, configs), 1):
        tr = (t.user_attrs.get("metrics") or {}).get("train_acc")
        cells = [str(rank), str(t.number), "%.4f" % t.value,
                 "%.4f" % tr if tr is not None else "",
                 "x".join(str(h) for h in c.get("hidden_dims", [])),
                 fmt_value(c.get("dropout", "")), fmt_value(c.get("learning_rate", "")),
                 fmt_value(c.get("reg", "")), fmt_value(c.get("weight_scale", "")),
                 str(c.get("batch_size", ""))]
        cells += [_recipe_cell(c, k, course.get(k)) for k, _ in extra]
        cells += [str(len(t.intermediate_values)),
                  "%.1f" % (t.duration.total_seconds() if t.duration else float("nan")),
                  t.user_attrs.get("worker", "")]
        lines.append("| " + " | ".join(cells) + " |")
    cfg = best[0].user_attrs.get("config")
    if cfg:
        lines += ["", "Retrain the best trial:", "", "```", retrain_command(cfg), "```"]
    return lines


def _plots(study, folder, trials, complete):
    """Optuna's plots as PNG in ``folder``; the Markdown lines that show each, or say
    why it was not drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import optuna.visualization.matplotlib as ovm
    except ImportError as exc:
        return ["No plots: matplotlib is not installed (%s)." % exc]
    plots = [("optimization_history.png", "Optimization history",
              None if complete else "it needs at least 1 completed trial",
              lambda: ovm.plot_optimization_history(study, target_name="val acc")),
             ("param_importances.png", "Parameter importances", _importance_blocker(study),
              lambda: ovm.plot_param_importances(study)),
             ("intermediate_values.png", "Validation accuracy per epoch",
              None if any(t.intermediate_values for t in trials)
              else "no trial has reported an epoch yet",
              lambda: ovm.plot_intermediate_values(study))]
    lines = []
    for fname, title, blocker, make in plots:
        if blocker is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _save_fig(make(), os.path.join(folder, fname))
            except Exception as exc:
                blocker = "plotting failed: %s: %s" % (type(exc).__name__, exc)
        if blocker is None:
            lines += ["### %s" % title, "", "![%s](%s)" % (title, fname), ""]
        else:
            lines += ["### %s" % title, "", "Not drawn: %s." % blocker, ""]
    return lines


def _write_csv(trials, path):
    """Every trial as a CSV row (no pandas needed)."""
    import csv
    import io
    names = sorted({p for t in trials for p in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", "value", "duration_s", *names, "epochs", "worker",
                "fail_reason"])
    for t in trials:
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                    "" if t.duration is None else round(t.duration.total_seconds(), 3),
                    *[t.params.get(n, "") for n in names], len(t.intermediate_values),
                    t.user_attrs.get("worker", ""),
                    fail_reason(t) if t.state.name == "FAIL" else ""])
    atomic_write_bytes(buf.getvalue().encode(), path)
