"""What a search prints: one line per finished trial, the study's counts, the best
trial and the ``fcgpu train`` command that retrains it."""
from __future__ import annotations

import shlex
import sys


LOST_REASON = ("worker lost: no heartbeat within the grace period (killed, crashed or "
               "disconnected)")


def say(out, line):
    """Print ``line`` on ``out`` in one write, newline included, and flush. Workers
    share the command's stdout, and ``print`` writes the newline apart: unbuffered
    (``PYTHONUNBUFFERED``, ``python -u``) that is two writes, and two workers' lines
    came out as one run-on line and an empty one."""
    out.write(line + "\n")
    out.flush()


def fmt_value(v):
    if isinstance(v, float):
        return "%.3g" % v
    return str(v)


def describe_config(cfg):
    """``hidden 812x140 keep 0.73 lr 0.00123 ...`` for a TrainConfig dict."""
    if not cfg:
        return ""
    parts = ["hidden %s" % "x".join(str(h) for h in cfg["hidden_dims"]),
             "keep %s" % fmt_value(cfg["dropout"]), "lr %s" % fmt_value(cfg["learning_rate"]),
             "reg %s" % fmt_value(cfg["reg"]), "ws %s" % fmt_value(cfg["weight_scale"]),
             "batch %d" % cfg["batch_size"]]
    if not cfg.get("batchnorm", True):
        parts.append("no-bn")
    if cfg.get("update_rule", "adam") != "adam":
        parts.append(cfg["update_rule"])
    # the recipe's other settings, where they differ from the course's
    aug = cfg.get("augment", "none")
    if aug != "none":
        parts.append("augment %s" % aug + (" pad %d" % cfg.get("pad", 4) if aug == "crop" else ""))
    if cfg.get("label_smoothing"):
        parts.append("smoothing %s" % fmt_value(cfg["label_smoothing"]))
    if cfg.get("mix", "none") != "none":
        parts.append("%s alpha %s" % (cfg["mix"], fmt_value(cfg.get("mix_alpha", 1.0))))
    if cfg.get("ema_decay"):
        parts.append("ema %s" % fmt_value(cfg["ema_decay"]))
    sched = cfg.get("schedule", "step")
    if sched != "step":
        parts.append(sched + ("" if cfg.get("warmup_epochs") is None
                              else " warmup %s" % fmt_value(cfg["warmup_epochs"])))
    elif cfg.get("lr_decay", 0.9) != 0.9:
        parts.append("decay %s" % fmt_value(cfg["lr_decay"]))
    return " ".join(parts)


def fail_reason(t):
    return t.user_attrs.get("fail_reason") or LOST_REASON


def describe_trial(t):
    """One progress line for a finished :class:`optuna.trial.FrozenTrial`."""
    state = t.state.name
    dur = t.duration.total_seconds() if t.duration is not None else float("nan")
    if state == "COMPLETE":
        what = "val acc %.4f" % t.value
    elif state == "PRUNED":
        steps = sorted(t.intermediate_values)
        what = ("at epoch %d, val acc %.4f" % (steps[-1], t.intermediate_values[steps[-1]])
                if steps else "before the first epoch")
    elif state == "FAIL":
        what = fail_reason(t)
    else:
        what = ""
    cfg = describe_config(t.user_attrs.get("config"))
    again = t.system_attrs.get("failed_trial")
    return "trial %d %s %s (%.1f s)%s%s" % (t.number, state, what, dur,
                                            "" if again is None else " retry of trial %d" % again,
                                            ("  " + cfg) if cfg else "")


def progress_callback(out, tag=""):
    def callback(study, trial):
        say(out, tag + describe_trial(trial))
    return callback


def retrain_command(cfg):
    """The ``fcgpu train`` command line that reruns a trial's configuration (from the
    ``course`` preset, whose settings the trial's config has where it names none)."""
    args = ["fcgpu", "train", "--preset", "course",
            "--hidden", ",".join(str(h) for h in cfg["hidden_dims"]),
            "--weight-scale", repr(float(cfg["weight_scale"])),
            "--batchnorm" if cfg.get("batchnorm", True) else "--no-batchnorm",
            "--dropout", repr(float(cfg["dropout"])),
            "--reg", repr(float(cfg["reg"])),
            "--update-rule", cfg.get("update_rule", "adam"),
            "--lr", repr(float(cfg["learning_rate"])),
            "--lr-decay", repr(float(cfg.get("lr_decay", 0.9))),
            "--batch-size", str(int(cfg["batch_size"])),
            "--epochs", str(int(cfg["epochs"])),
            "--num-train", str(int(cfg["num_train"])),
            "--seed", str(int(cfg.get("seed", 0)))]
    if cfg.get("augment", "none") != "none":
        args += ["--augment", cfg["augment"], "--pad", str(int(cfg.get("pad", 4)))]
    if cfg.get("label_smoothing"):
        args += ["--label-smoothing", repr(float(cfg["label_smoothing"]))]
    if cfg.get("mix", "none") != "none":
        args += ["--mix", cfg["mix"], "--mix-alpha", repr(float(cfg.get("mix_alpha", 1.0)))]
    if cfg.get("ema_decay"):
        args += ["--ema", repr(float(cfg["ema_decay"]))]
    if cfg.get("schedule", "step") != "step":
        args += ["--schedule", cfg["schedule"]]
        if cfg.get("warmup_epochs") is not None:
            args += ["--warmup-epochs", repr(float(cfg["warmup_epochs"]))]
    if cfg.get("dtype", "float32") != "float32":
        args += ["--dtype", cfg["dtype"]]
    if cfg.get("backend", "auto") not in ("auto", None):
        args += ["--backend", cfg["backend"]]
    if cfg.get("data"):
        args += ["--data", cfg["data"]]
    return " ".join(shlex.quote(a) for a in args)


def count_states(trials):
    counts = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def counts_text(counts):
    order = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    return ", ".join("%d %s" % (counts.get(s, 0), s.lower()) for s in order if counts.get(s))


def summarize(study, out=None, run_id=None, storage_url=None):
    """Print the study's trial counts, the best trial and its retrain command."""
    out = out or sys.stdout
    trials = study.get_trials(deepcopy=False)
    counts = count_states(trials)
    line = "study %r: %d trial%s (%s)" % (study.study_name, len(trials),
                                         "" if len(trials) == 1 else "s",
                                         counts_text(counts) or "none")
    retries = sum(1 for t in trials if t.system_attrs.get("failed_trial") is not None)
    if retries:
        line += "; %d retr%s of lost trials" % (retries, "y" if retries == 1 else "ies")
    if run_id:
        mine = [t for t in trials if t.user_attrs.get("run") == run_id]
        if mine:
            line += "; this run: %d (%s)" % (len(mine), counts_text(count_states(mine)))
    print(line, file=out)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        print("no completed trial yet: no best parameters", file=out, flush=True)
        return None
    best = max(complete, key=lambda t: t.value)
    print("best: trial %d, val acc %.4f (%s)" % (best.number, best.value,
                                                  best.user_attrs.get("worker", "?")), file=out)
    for name, value in best.params.items():
        print("  %-14s %s" % (name, value), file=out)
    cfg = best.user_attrs.get("config")
    if cfg:
        print("retrain it with:\n  %s" % retrain_command(cfg), file=out)
    out.flush()
    return best
