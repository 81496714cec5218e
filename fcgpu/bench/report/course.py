"""The course's whole training, wall time per backend (``fcgpu bench --course-wall``):
the report's section and its summary line, against the design's goal (under 1 s on
an H200) and PyTorch eager on the same GPU."""
from __future__ import annotations

from .format import fmt_ratio, fmt_time, not_run, table

ORDER = ["fcgpu", "fcgpu_graph", "torch_cuda", "numpy"]
LABELS = {"fcgpu": "fcgpu (CuPy, fused)", "fcgpu_graph": "fcgpu + CUDA graph",
          "torch_cuda": "PyTorch eager (CUDA)", "numpy": "fcgpu NumPy (CPU)"}


def _cw(res):
    return (res.get("experiments") or {}).get("course_wall")


def _rows(cw):
    b = cw.get("backends") or {}
    return [(n, b[n]) for n in ORDER if n in b] + [(n, r) for n, r in b.items()
                                                   if n not in ORDER]


def _acc(x):
    return "—" if x is None else "%.3f" % x


def _verdict(r, goal):
    return "✅ met" if r["seconds"] < goal else "❌ missed (%.1f× the goal)" % (
        r["seconds"] / goal)


def course_md(cw):
    if not cw or "skipped" in cw:
        return [not_run((cw or {}).get("skipped")), ""]
    goal = cw.get("goal_seconds", 1.0)
    rows = []
    for name, r in _rows(cw):
        label = LABELS.get(name, name)
        if "skipped" in r:
            rows.append([label, "—", "—", "—", "—", "—", "Not run: %s" % r["skipped"]])
            continue
        ep = r.get("epoch_seconds") or []
        gpu = name != "numpy"
        rows.append([label, fmt_time(r["seconds"]),
                     fmt_time(sum(ep) / len(ep)) if ep else "—",
                     fmt_ratio(r.get("vs_torch_cuda")) if name != "torch_cuda" else "1.00×",
                     "%s / %s" % (_acc(r.get("final_val_acc")), _acc(r.get("best_val_acc"))),
                     _verdict(r, goal) if gpu else "— (CPU)", r.get("device") or "?"])
    return ["%s, %d epochs of %d training images, validation accuracy (%d images) after "
            "every epoch. Data: %s; the accuracies are a sanity number only (near chance "
            "on random labels). %s; %s. Goal: the whole run in under %g s on an %s "
            "(the design's GPU wall-time target); *× PyTorch* is PyTorch eager's wall time "
            "over the row's (above 1: faster than PyTorch).%s"
            % (cw["config"], cw["epochs"], cw["num_train"], cw["num_val"], cw["data"],
               cw.get("isolation", "").capitalize(), cw.get("warm_up", ""), goal,
               cw.get("goal_device", "H200"),
               " Matmul precision `%s` for fcgpu and PyTorch alike." % cw["matmul_precision"]
               if cw.get("matmul_precision") else ""), "",
            table(["Backend", "Wall time (whole run)", "Per epoch (steps)", "× PyTorch eager",
                   "Val acc final / best", "Goal < %g s" % goal, "Device / why not run"], rows), "",
            "Wall time: fcgpu rows, all of `Solver.train()` (`run_training`'s "
            "`wall_seconds`: steps, the accuracy checks after the first step and each epoch, "
            "CUDA-graph capture); PyTorch, the epochs' steps and validation checks up to a "
            "final `torch.cuda.synchronize()`. Both start with the data and the model on the "
            "device. Per epoch: the training steps only.", ""]


def course_bullets(res):
    """Summary lines: the fastest fcgpu GPU row against the goal and PyTorch eager."""
    cw = _cw(res)
    if not cw or "skipped" in cw:
        return []
    goal = cw.get("goal_seconds", 1.0)
    rows = [(n, r) for n, r in _rows(cw) if n in ("fcgpu", "fcgpu_graph") and "seconds" in r]
    if not rows:
        return []
    name, r = min(rows, key=lambda nr: nr[1]["seconds"])
    torch_s = ((cw.get("backends") or {}).get("torch_cuda") or {}).get("seconds")
    return ["Course run, whole %d-epoch training on %s: **%s** with %s (goal < %g s on an "
            "%s: **%s**)%s." % (cw["epochs"], r.get("device") or "the GPU",
                                fmt_time(r["seconds"]), LABELS[name], goal,
                                cw.get("goal_device", "H200"), _verdict(r, goal),
                                "; PyTorch eager %s, %s as long" % (
                                    fmt_time(torch_s), fmt_ratio(r.get("vs_torch_cuda")))
                                if torch_s else "; PyTorch eager not measured")]


def course_section(results, names):
    """The section; absent when no results file has the measurement (older files)."""
    if not any(_cw(res) is not None for res in results):
        return []
    out = ["## The course's whole training: wall time", ""]
    for res, name in zip(results, names):
        if len(results) > 1:
            out += ["*%s*" % name, ""]
        out += course_md(_cw(res))
    return out
