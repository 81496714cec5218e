"""Evaluating a trained net: accuracy, per-class accuracy, the confusion matrix.

``fcgpu evaluate CHECKPOINT`` goes through :func:`load_model_from_checkpoint`,
:func:`evaluate`, :func:`format_report` and :func:`plot_confusion`. Probabilities
come from ``FullyConnectedNet.predict_proba`` on the model's backend (NumPy or
CuPy); everything returned here is on the host.

Labels and arrays that do not fit raise :class:`~fcgpu.errors.DataError`, arguments
out of range :class:`~fcgpu.errors.ConfigError`, a checkpoint that cannot be read or
does not fit the net :class:`~fcgpu.errors.CheckpointError` (all ``ValueError`` too).
"""
from __future__ import annotations

import numpy as np

from .backend import asnumpy
from .errors import CheckpointError, ConfigError, DataError

__all__ = ["CIFAR10_CLASSES", "confusion_matrix", "evaluate", "format_report",
           "plot_confusion", "load_model_from_checkpoint"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _labels(y, name, num_classes):
    # asnumpy, not np.asarray: CuPy arrays refuse implicit conversion (their
    # __array__ raises TypeError, cupy/_core/core.pyx:1803-1809 in CuPy v14.2.0)
    y = asnumpy(y)
    if y.ndim != 1:
        raise DataError("%s must be 1-D class labels, got shape %s" % (name, y.shape))
    if y.size and y.dtype.kind not in "iu":
        raise DataError("%s must hold integer class labels, got dtype %s" % (name, y.dtype))
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError("%s has labels in [%d, %d]; they must be in [0, %d)"
                         % (name, int(y.min()), int(y.max()), num_classes))
    return y.astype(np.int64)


def confusion_matrix(y_true, y_pred, num_classes):
    """``(C, C)`` int64 counts: entry ``[i, j]`` is how many examples of class ``i``
    were predicted as class ``j`` (rows: true class, columns: prediction). The labels
    may be NumPy or CuPy arrays (or sequences); the counts are on the host."""
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ConfigError("num_classes must be >= 1, got %d" % num_classes)
    t = _labels(y_true, "y_true", num_classes)
    p = _labels(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise DataError("y_true has %d labels but y_pred has %d" % (t.size, p.size))
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def evaluate(model, X, y, num_classes=None, batch_size=1000):
    """Evaluate ``model`` (anything with ``predict_proba``) on ``(X, y)``.

    Returns a dict of host values: ``accuracy``, ``num_examples``, ``num_classes``,
    ``per_class_accuracy`` (a list; None for a class with no examples),
    ``per_class_count`` and ``confusion`` (:func:`confusion_matrix`).
    """
    num_classes = int(num_classes if num_classes is not None else model.num_classes)
    y = _labels(asnumpy(y), "y", num_classes)
    if len(y) != X.shape[0]:
        raise DataError("X has %d rows but y has %d labels" % (X.shape[0], len(y)))
    if len(y) == 0:
        raise DataError("nothing to evaluate: X and y are empty")
    probs = model.predict_proba(X, batch_size=batch_size)
    if probs.shape[1] != num_classes:
        raise ConfigError("the model has %d outputs but num_classes is %d"
                         % (probs.shape[1], num_classes))
    pred = asnumpy(probs.argmax(axis=1)).astype(np.int64)
    cm = confusion_matrix(y, pred, num_classes)
    count = cm.sum(axis=1)
    hits = np.diag(cm)
    return {
        "accuracy": float(hits.sum()) / len(y),
        "num_examples": int(len(y)),
        "num_classes": num_classes,
        "per_class_accuracy": [float(h) / c if c else None for h, c in zip(hits, count)],
        "per_class_count": [int(c) for c in count],
        "confusion": cm,
    }


def format_report(result, class_names=None):
    """The result of :func:`evaluate` as plain-text tables."""
    C = result["num_classes"]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in
                                                                           range(C)]
    if len(names) != C:
        raise ConfigError("%d class names for %d classes" % (len(names), C))
    w = max(5, max(len(n) for n in names))
    lines = ["accuracy %.4f (%d examples, %d classes)"
             % (result["accuracy"], result["num_examples"], C), "",
             "%-*s  %8s  %8s" % (w, "class", "examples", "accuracy")]
    for n, c, a in zip(names, result["per_class_count"], result["per_class_accuracy"]):
        lines.append("%-*s  %8d  %8s" % (w, n, c, "%.4f" % a if a is not None else "-"))
    cm = result["confusion"]
    cw = max(len(str(int(cm.max()))), len(str(C - 1)))
    if class_names is not None:  # columns are numbered: number the rows to match
        names = ["%d %s" % (i, n) for i, n in enumerate(names)]
        w = max(w, max(len(n) for n in names))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              "%-*s  %s" % (w, "", " ".join("%*d" % (cw, j) for j in range(C)))]
    for n, row in zip(names, cm):
        lines.append("%-*s  %s" % (w, n, " ".join("%*d" % (cw, v) for v in row)))
    return "\n".join(lines)


def plot_confusion(result, path, class_names=None, title=None):
    """The confusion matrix as a PNG at ``path`` (written atomically): cells coloured
    by the fraction of their true class, annotated with counts up to 20 classes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_save_figure
    cm = result["confusion"]
    C = cm.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in
                                                                           range(C)]
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.45 * C, 16)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if C <= 20:
        for i in range(C):
            for j in range(C):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if frac[i, j] > 0.5 else "black")
    ticks = np.arange(C) if C <= 40 else np.arange(0, C, max(1, C // 20))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([names[t] for t in ticks], rotation=45, ha="right")
    ax.set_yticklabels([names[t] for t in ticks])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "accuracy %.4f on %d examples"
                 % (result["accuracy"], result["num_examples"]))
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)


def load_model_from_checkpoint(path, xp=None):
    """Rebuild the trained net from a checkpoint written by ``fcgpu train
    --checkpoint`` (or ``Solver.save_checkpoint``).

    Returns ``(model, info)``: a ``FullyConnectedNet`` on ``xp`` (default: the
    selected backend) holding the best-validation parameters and their batchnorm
    running statistics (what ``fcgpu train`` reports its accuracies with; the last
    epoch's when the checkpoint has no best yet), and ``info``, a dict with
    ``train_config`` (the settings of ``fcgpu train``, or None), ``epoch`` and
    ``best_val_acc``. The architecture is read from the parameter shapes. The file is
    read and checked by :func:`fcgpu.checkpoint.load` (a safetensors file: reading it
    cannot run code); every problem is a one-line
    :class:`fcgpu.checkpoint.CheckpointError` naming the file.
    """
    from . import checkpoint
    from .backend import to_backend
    from .fc_net import FullyConnectedNet

    state = checkpoint.load(path)   # a file it cannot read is a CheckpointError too
    try:
        params = dict(state["model"]["params"])
        L = sum(1 for k in params if k.startswith("W"))
        Ws = [params["W%d" % i] for i in range(1, L + 1)]
    except (KeyError, TypeError) as exc:
        raise CheckpointError("the model parameters are incomplete (%s: %s)"
                              % (type(exc).__name__, exc), path) from None
    if L < 1 or any(getattr(W, "ndim", 0) != 2 for W in Ws) or any(
            Ws[i].shape[1] != Ws[i + 1].shape[0] for i in range(L - 1)):
        raise CheckpointError("the weights W1..W%d do not form a chain of matrices" % L, path)
    model = FullyConnectedNet([W.shape[1] for W in Ws[:-1]], input_dim=Ws[0].shape[0],
                              num_classes=Ws[-1].shape[1], use_batchnorm="gamma1" in params,
                              dtype=Ws[0].dtype, xp=xp)
    if set(params) != set(model.params):
        raise CheckpointError("its parameters are %s, not the net's %s"
                              % (sorted(params), sorted(model.params)), path)
    best = state.get("best_params") or {}
    if best and set(best) != set(model.params):
        raise CheckpointError("its best parameters are %s, not the net's %s"
                              % (sorted(best), sorted(model.params)), path)
    try:
        checkpoint.check_state(state, model)
    except CheckpointError as exc:
        if exc.path is not None:
            raise
        raise CheckpointError(exc.problem, path) from None
    model.load_state_dict(state["model"])
    if best:
        model.load_state_dict(dict(state["model"], params=best))
        for bp, snap in zip(model.bn_params, state.get("best_bn") or []):
            bp.update({k: to_backend(v, model.xp, model.dtype) for k, v in snap.items()})
    info = {"train_config": state.get("train_config"), "epoch": state.get("epoch"),
            "best_val_acc": state.get("best_val_acc")}
    return model, info
