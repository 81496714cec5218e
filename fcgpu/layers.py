"""Layers as pure functions returning ``(out, cache)``, for NumPy or CuPy arrays.

The course framework's API, written once against the array module of the inputs.
The elementwise steps that fuse (dropout, batchnorm) go through :mod:`fcgpu.fused`,
which runs our CUDA kernels for CuPy arrays and the compiled CPU path for NumPy.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from . import fused, linalg
from .backend import get_array_module
from .setting_spec import LABEL_SMOOTHING
from .random import DeviceStream, check_seed, fresh_stream, keep_threshold

__all__ = [
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "dropout_forward", "dropout_backward", "svm_loss", "softmax_loss", "labels_checked",
]


def affine_forward(x, w, b):
    """``out = x.reshape(N, D) @ w + b``; cache ``(x, w, b)``."""
    out = linalg.forward(affine_rows(x, w, b), w)
    out += b
    return out, (x, w, b)


def affine_backward(dout, cache, need_dx=True):
    """``(dx, dw, db)``; with ``need_dx=False`` (the net's first layer) dx is None."""
    x, w, _ = cache
    dw = linalg.weight_gradient(x.reshape(x.shape[0], -1), dout)
    db = dout.sum(axis=0)
    dx = linalg.input_gradient(dout, w).reshape(x.shape) if need_dx else None
    return dx, dw, db


def affine_rows(x, w, b):
    """``x`` as rows ``(N, D)``, after checking that x, w and b chain."""
    if x.ndim < 1 or w.ndim != 2 or b.ndim != 1:
        raise ValueError("affine_forward: need x (N, d1, ...), w (D, M), b (M,); got %s, %s, %s"
                         % (x.shape, w.shape, b.shape))
    x2 = x.reshape(x.shape[0], -1)
    if x2.shape[1] != w.shape[0] or w.shape[1] != b.shape[0]:
        raise ValueError("affine_forward: shapes do not chain: x %s -> (N, %d), w %s, b %s"
                         % (x.shape, x2.shape[1], w.shape, b.shape))
    return x2


def relu_forward(x):
    xp = get_array_module(x)
    return xp.maximum(x, 0), x


def relu_backward(dout, cache):
    x = cache
    xp = get_array_module(dout)
    return xp.where(x > 0, dout, dout.dtype.type(0))


def bn_settings(x, gamma, beta, bn_param):
    """``(mode, eps, momentum)`` of a batchnorm call, after checking its arguments (and
    creating the running statistics where missing); layer_utils' sandwiches share it."""
    if x.ndim != 2:
        raise ValueError("batchnorm_forward: x must be 2-D (N, D), got shape %s" % (x.shape,))
    n, d = x.shape
    if gamma.shape != (d,) or beta.shape != (d,):
        raise ValueError("batchnorm_forward: gamma and beta must have shape (%d,), got %s and %s"
                         % (d, gamma.shape, beta.shape))
    mode = bn_param.get("mode")
    if mode not in ("train", "test"):
        raise ValueError("batchnorm_forward: bn_param['mode'] must be 'train' or 'test', got %r"
                         % (mode,))
    if mode == "train" and n < 2:
        raise ValueError("batchnorm_forward: a training batch needs at least 2 rows to "
                         "estimate its variance, got N=%d" % n)
    xp = get_array_module(x)
    if bn_param.get("running_mean") is None:
        bn_param["running_mean"] = xp.zeros(d, dtype=x.dtype)
    if bn_param.get("running_var") is None:
        bn_param["running_var"] = xp.zeros(d, dtype=x.dtype)
    return mode, bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)


def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization over the rows of ``x`` (N, D).

    Training mode normalizes with the batch statistics and updates
    ``running = momentum * running + (1 - momentum) * batch`` (biased variance) in
    ``bn_param``; test mode normalizes with the running statistics.
    """
    mode, eps, momentum = bn_settings(x, gamma, beta, bn_param)
    if mode == "test":
        out = fused.bn_forward_infer(x, gamma, beta, eps, bn_param["running_mean"],
                                     bn_param["running_var"])
        return out, None
    out, mean, inv_std = fused.bn_forward_train(x, gamma, beta, eps, momentum,
                                                bn_param["running_mean"],
                                                bn_param["running_var"])
    return out, (x, gamma, mean, inv_std)


def batchnorm_backward(dout, cache):
    """``(dx, dgamma, dbeta)`` for a training-mode :func:`batchnorm_forward`."""
    if cache is None:
        raise ValueError("batchnorm_backward: the forward pass ran in test mode; "
                         "there is nothing to differentiate")
    x, gamma, mean, inv_std = cache
    return fused.bn_backward(dout, x, gamma, mean, inv_std)


# The course keeps a second, simplified derivation; ours is already the simple one.
batchnorm_backward_alt = batchnorm_backward


def dropout_settings(dropout_param):
    """``(mode, p)`` of a dropout call, after checking ``dropout_param``."""
    mode = dropout_param.get("mode")
    if mode not in ("train", "test"):
        raise ValueError("dropout_forward: dropout_param['mode'] must be 'train' or 'test', "
                         "got %r" % (mode,))
    if "p" not in dropout_param:
        raise ValueError("dropout_forward: dropout_param needs 'p', the keep probability")
    p = dropout_param["p"]
    keep_threshold(p)  # validates p in (0, 1]
    return mode, float(p)


def dropout_stream(dropout_param):
    """``(seed, stream)`` for one training-mode dropout call.

    With ``dropout_param['seed']`` the same mask is drawn every call (stream
    ``dropout_param.get('stream', 0)``); without it, each call gets a fresh stream.
    """
    if dropout_param.get("seed") is not None:
        stream = dropout_param.get("stream", 0)
        if not isinstance(stream, DeviceStream):  # (CUDA graphs: read on the device)
            stream = check_seed(stream, "stream")
        return check_seed(dropout_param["seed"]), stream
    return fresh_stream()


def dropout_forward(x, dropout_param):
    """Inverted dropout; ``dropout_param['p']`` is the probability of KEEPING a unit.

    Train mode keeps a unit iff its Philox draw is below ``p * 2**32`` and scales kept
    units by ``1/p``; test mode is the identity.
    """
    mode, p = dropout_settings(dropout_param)
    if mode == "test":
        return x, (dropout_param, mode, p, None, None, None)
    seed, stream = dropout_stream(dropout_param)
    out, mask = fused.dropout_forward(x, p, seed, stream)
    return out, (dropout_param, mode, p, seed, stream, mask)


def dropout_backward(dout, cache):
    _, mode, p, seed, stream, mask = cache
    if mode == "test":
        return dout
    return fused.dropout_backward(dout, p, seed, stream, mask)


_LABELS_CHECKED = contextvars.ContextVar("fcgpu_labels_checked", default=False)


@contextlib.contextmanager
def labels_checked():
    """Within this block :func:`softmax_loss` and :func:`svm_loss` trust that their
    labels lie in ``[0, C)``: the caller has checked them once (the Solver does, for
    its data, so that its steps, and a step captured in a CUDA graph, read nothing
    back from the device). Outside it each call checks them, because CuPy's integer
    indexing wraps out-of-range labels silently
    (``cupy/_core/_routines_indexing.pyx`` v14.2.0 line 1207, "wrap all out-of-bound
    indices"), and NumPy's wraps negative ones; on CuPy arrays that check reads two
    numbers back to the host."""
    token = _LABELS_CHECKED.set(True)
    try:
        yield
    finally:
        _LABELS_CHECKED.reset(token)


def _check_scores(x, y, name):
    if x.ndim != 2:
        raise ValueError("%s: scores must be 2-D (N, C), got shape %s" % (name, x.shape))
    if y.shape != (x.shape[0],):
        raise ValueError("%s: labels must have shape (%d,), got %s" % (name, x.shape[0], y.shape))
    if y.dtype.kind not in "iu":
        raise ValueError("%s: labels must be integers, got dtype %s" % (name, y.dtype))
    if y.size and not _LABELS_CHECKED.get():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= x.shape[1]:
            raise ValueError("%s: labels must be in [0, %d) for %d classes, got values in "
                             "[%d, %d]" % (name, x.shape[1], x.shape[1], lo, hi))


def svm_loss(x, y):
    """Multiclass SVM (hinge, margin 1): ``(loss, dx)`` averaged over the batch."""
    _check_scores(x, y, "svm_loss")
    xp = get_array_module(x)
    n = x.shape[0]
    rows = xp.arange(n)
    correct = x[rows, y][:, None]
    margins = xp.maximum(0, x - correct + 1)
    margins[rows, y] = 0
    loss = margins.sum() / n
    positive = (margins > 0).astype(x.dtype)
    positive[rows, y] -= positive.sum(axis=1)
    return loss, positive / n


def _check_mix(x, mix):
    """``(y2, lam)`` of a mixed target, checked: y2 like the labels, lam (N,) floats in
    [0, 1] (values read only where the labels are, outside :func:`labels_checked`)."""
    try:
        y2, lam = mix
    except (TypeError, ValueError):
        raise ValueError("softmax_loss: mix must be a pair (y2, lam), got %r"
                         % (type(mix).__name__,)) from None
    _check_scores(x, y2, "softmax_loss (mix y2)")
    n = x.shape[0]
    if getattr(lam, "shape", None) != (n,) or getattr(lam, "dtype", np.dtype(int)).kind != "f":
        raise ValueError("softmax_loss: mix lam must be a float array of shape (%d,), got %s"
                         % (n, getattr(lam, "shape", type(lam).__name__)))
    if n and not _LABELS_CHECKED.get():
        lo, hi = float(lam.min()), float(lam.max())
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("softmax_loss: mix lam must be in [0, 1], got values in [%g, %g]"
                             % (lo, hi))
    return y2, lam.astype(x.dtype, copy=False)


def softmax_loss(x, y, label_smoothing=0.0, mix=None):
    """Softmax cross-entropy: ``(loss, dx)`` averaged over the batch.

    ``label_smoothing`` = eps > 0 trains against the target distribution
    ``q = (1 - eps) * onehot(y) + eps / C`` instead of ``onehot(y)``: the loss is
    ``-sum_k q_k log p_k`` averaged over the batch and ``dx = (p - q) / N``. The
    default (0) is the course's loss, computed exactly as before.

    ``mix`` = ``(y2, lam)`` (MixUp, CutMix: :func:`fcgpu.augment.mix_batch`) trains row
    n against ``q = lam[n] * smooth(y[n]) + (1 - lam[n]) * smooth(y2[n])``, ``smooth``
    the label smoothing above (the identity without it)."""
    _check_scores(x, y, "softmax_loss")
    eps = float(LABEL_SMOOTHING.check(label_smoothing, "softmax_loss: label_smoothing"))
    xp = get_array_module(x)
    n, c = x.shape
    rows = xp.arange(n)
    shifted = x - x.max(axis=1, keepdims=True)
    log_z = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_z
    if mix is not None:
        return _mixed_loss(log_probs, y, _check_mix(x, mix), eps)
    if eps == 0.0:
        loss = -log_probs[rows, y].sum() / n
        dx = xp.exp(log_probs)
        dx[rows, y] -= 1
        dx /= n
        return loss, dx
    loss = -((1.0 - eps) * log_probs[rows, y].sum() + (eps / c) * log_probs.sum()) / n
    dx = xp.exp(log_probs)
    dx -= eps / c
    dx[rows, y] -= 1.0 - eps
    dx /= n
    return loss, dx


def _mixed_loss(log_probs, y, mix, eps):
    """The loss and dx of :func:`softmax_loss` against mixed targets."""
    xp = get_array_module(log_probs)
    y2, lam = mix
    n, c = log_probs.shape
    rows = xp.arange(n)
    on = 1.0 - eps
    w1 = lam * on
    w2 = (1 - lam) * on
    picked = w1 * log_probs[rows, y] + w2 * log_probs[rows, y2]
    loss = -(picked.sum() + (eps / c) * log_probs.sum()) / n
    dx = xp.exp(log_probs)
    if eps:
        dx -= eps / c
    dx[rows, y] -= w1
    dx[rows, y2] -= w2
    dx /= n
    return loss, dx
