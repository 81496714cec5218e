"""Fused elementwise passes for NumPy arrays, compiled with Numba.

Same names and signatures as ``fcgpu.fused`` documents (and as ``fcgpu.cuda.ops``).
Inputs the loops are not written for (non-contiguous views, integer dtypes, other
ranks) take the plain reference code (``fcgpu.fused_ref``), so every input is handled.

Per-feature reductions accumulate in float64, over row blocks in parallel. The
elementwise passes run over chunks of rows in parallel; each chunk first draws its
Philox outputs into a small buffer in a vectorized loop (``philox.fill_range``), then
applies them (the dropout mask of the whole tensor is never materialized).

The ``bias_*`` passes take an affine layer's product before its bias and add the bias
as they read it (in the input's precision, so the values are those of ``x + b``), and
their backward passes also return the bias gradient, summed from the ``dx`` they write:
the affine layer's separate bias-add and ``dout.sum(axis=0)`` passes disappear.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import fused_ref as _ref
from ..random import check_seed, dropout_scale, keep_threshold
from . import philox as _philox
from .philox import CHUNK, fill_range, key_words

# Per-feature reductions split the rows into this many blocks (run in parallel, each
# summing whole contiguous rows, which vectorizes), then add the block sums. This was
# 2.3x faster than parallel column chunks on (490, 500) float32.
_PARTS = 8


def _ok(*arrays, ndim=2):
    a0 = arrays[0]
    if a0.dtype not in (np.float32, np.float64):
        return False
    for a in arrays:
        if a.dtype != a0.dtype or not a.flags.c_contiguous:
            return False
    return ndim is None or a0.ndim == ndim


def _vec(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def _dropout_consts(p, dtype):
    t = keep_threshold(p)
    if t is None:
        return False, np.uint64(0), dtype.type(1)
    return True, np.uint64(t), dropout_scale(p, dtype)


# ----------------------------------------------------------------- kernels

@njit(parallel=True, cache=True)
def _col_mean_var(x, bias, mean, var):
    """Per-column mean and biased variance of ``x`` (+ ``bias`` per column unless it is
    None, added in the input's precision), in float64. One parallel loop: each row
    block takes its mean, then its squared deviations from it (a second read, from
    cache), and the blocks combine exactly (Chan et al.): M2 = sum of the blocks' M2 +
    n_b * (mean_b - mean)^2."""
    n, d = x.shape
    rows = (n + _PARTS - 1) // _PARTS
    pmean = np.zeros((_PARTS, d), np.float64)
    pm2 = np.zeros((_PARTS, d), np.float64)
    for p in prange(_PARTS):
        r0 = p * rows
        r1 = min(n, r0 + rows)
        if r1 <= r0:
            continue
        mu = pmean[p]
        m2 = pm2[p]
        for i in range(r0, r1):
            if bias is not None:
                for j in range(d):
                    mu[j] += x[i, j] + bias[j]
            else:
                for j in range(d):
                    mu[j] += x[i, j]
        inv = 1.0 / (r1 - r0)
        for j in range(d):
            mu[j] *= inv
        for i in range(r0, r1):
            for j in range(d):
                y = x[i, j]
                if bias is not None:
                    y = y + bias[j]
                dv = y - mu[j]
                m2[j] += dv * dv
    for j in range(d):
        mu = 0.0
        for p in range(_PARTS):
            nb = min(n, (p + 1) * rows) - p * rows
            if nb > 0:
                mu += nb * pmean[p, j]
        mu /= n
        m2 = 0.0
        for p in range(_PARTS):
            nb = min(n, (p + 1) * rows) - p * rows
            if nb > 0:
                dm = pmean[p, j] - mu
                m2 += pm2[p, j] + nb * dm * dm
        mean[j] = mu
        var[j] = m2 / n


@njit(inline="always", cache=True)
def _transform(y, j, bias, mean, g, beta, has_affine, relu, zero):
    if bias is not None:
        y = y + bias[j]
    if has_affine:
        y = (y - mean[j]) * g[j] + beta[j]
    if relu and y < zero:
        y = zero
    return y


@njit(inline="always", cache=True)
def _apply_row(x, i, bias, mean, g, beta, out, buf, q, has_affine, relu, dropout, tt, s):
    zero = x.dtype.type(0)
    if dropout:  # two loops, not one with a branch inside: both vectorize
        r = buf[q:]  # (indices known to be >= 0: no wraparound select to block that)
        for j in range(x.shape[1]):
            y = _transform(x[i, j], j, bias, mean, g, beta, has_affine, relu, zero)
            out[i, j] = y * s if r[j] < tt else zero
    else:
        for j in range(x.shape[1]):
            out[i, j] = _transform(x[i, j], j, bias, mean, g, beta, has_affine, relu, zero)


@njit(parallel=True, cache=True)
def _affine_relu_dropout(x, bias, mean, g, beta, out, has_affine, relu, dropout, t, s, seed,
                         stream):
    """out = drop(relu((x + bias - mean) * g + beta)) row-wise; each flag switches a
    step, and ``bias`` None skips its add. Rows go in chunks of about ``CHUNK`` elements, whose Philox draws are made
    first, vectorized, into a buffer (``fill_range``); then the rows are applied."""
    n, d = x.shape
    k0, k1, s0, s1 = key_words(seed, stream)
    tt = np.uint32(t)
    rows = max(1, CHUNK // max(d, 1))
    for c in prange((n + rows - 1) // rows):
        r0 = c * rows
        r1 = min(n, r0 + rows)
        buf = np.empty((r1 - r0) * d + 8 if dropout else 0, np.uint32)
        off = fill_range(buf, r0 * d, r1 * d, s0, s1, k0, k1) if dropout else 0
        for i in range(r0, r1):
            _apply_row(x, i, bias, mean, g, beta, out, buf, off + (i - r0) * d, has_affine,
                       relu, dropout, tt, s)


@njit(parallel=True, cache=True)
def _bn_grad_reduce(dout, out, x, bias, mean, inv_std, s, gated, dbeta, dgamma):
    """dbeta = sum(dy), dgamma = sum(dy * xhat) over rows, with dy = dout, or
    (out > 0) * dout * s when ``gated``, and xhat from ``x`` (+ ``bias`` unless None);
    float64 partial sums per row block."""
    n, d = x.shape
    rows = (n + _PARTS - 1) // _PARTS
    pb = np.zeros((_PARTS, d), np.float64)
    pg = np.zeros((_PARTS, d), np.float64)
    zero = dout.dtype.type(0)
    for p in prange(_PARTS):
        ab = pb[p]
        ag = pg[p]
        for i in range(p * rows, min(n, (p + 1) * rows)):
            for j in range(d):
                dy = dout[i, j]
                if gated:
                    dy = dy * s if out[i, j] > zero else zero
                y = x[i, j]
                if bias is not None:
                    y = y + bias[j]
                ab[j] += dy
                ag[j] += dy * ((y - mean[j]) * inv_std[j])
    for j in range(d):
        sb = 0.0
        sg = 0.0
        for p in range(_PARTS):
            sb += pb[p, j]
            sg += pg[p, j]
        dbeta[j] = sb
        dgamma[j] = sg


@njit(parallel=True, cache=True)
def _bn_grad_apply(dout, out, x, bias, mean, inv_std, gamma, dbeta, dgamma, s, gated, dx,
                   db):
    """dx of batchnorm (after the gate when ``gated``), xhat from ``x`` (+ ``bias``
    unless None); unless ``db`` is None also ``db = dx.sum(axis=0)``, float64 partial
    sums per row block of the dx written."""
    n, d = x.shape
    zero = dout.dtype.type(0)
    fn = dout.dtype.type(n)
    rows = (n + _PARTS - 1) // _PARTS
    part = np.zeros((_PARTS, d), np.float64)
    for p in prange(_PARTS):
        acc = part[p]
        for i in range(p * rows, min(n, (p + 1) * rows)):
            for j in range(d):
                dy = dout[i, j]
                if gated:
                    dy = dy * s if out[i, j] > zero else zero
                y = x[i, j]
                if bias is not None:
                    y = y + bias[j]
                xhat = (y - mean[j]) * inv_std[j]
                dx[i, j] = (gamma[j] * inv_std[j] / fn) * (fn * dy - dbeta[j] - xhat * dgamma[j])
            if db is not None:  # the row is still in L1
                for j in range(d):
                    acc[j] += dx[i, j]
    if db is not None:
        for j in range(d):
            sb = 0.0
            for p in range(_PARTS):
                sb += part[p, j]
            db[j] = sb


@njit(parallel=True, cache=True)
def _gate(dout, out, s, scaled, dx):
    zero = dout.dtype.type(0)
    for i in prange(dout.size):
        if out[i] > zero:
            dx[i] = dout[i] * s if scaled else dout[i]
        else:
            dx[i] = zero


@njit(parallel=True, cache=True)
def _gate_db(dout, out, s, scaled, dx, db):
    """dx = (out > 0) * dout (* s when ``scaled``), and db = dx.sum(axis=0) in float64
    partial sums per row block."""
    n, d = dout.shape
    zero = dout.dtype.type(0)
    rows = (n + _PARTS - 1) // _PARTS
    part = np.zeros((_PARTS, d), np.float64)
    for p in prange(_PARTS):
        acc = part[p]
        for i in range(p * rows, min(n, (p + 1) * rows)):
            for j in range(d):
                v = zero
                if out[i, j] > zero:
                    v = dout[i, j] * s if scaled else dout[i, j]
                dx[i, j] = v
            for j in range(d):  # the row is still in L1
                acc[j] += dx[i, j]
    for j in range(d):
        sb = 0.0
        for p in range(_PARTS):
            sb += part[p, j]
        db[j] = sb


@njit(parallel=True, cache=True)
def _masked_scale(dout, mask, s, dx):
    zero = dout.dtype.type(0)
    for i in prange(dout.size):
        dx[i] = dout[i] * s if mask[i] else zero


@njit(parallel=True, cache=True)
def _adam(w, dw, m, v, out, lr, b1, omb1, b2, omb2, c1, c2, eps):
    for i in prange(w.size):
        g = dw[i]
        mi = b1 * m[i] + omb1 * g
        vi = b2 * v[i] + omb2 * (g * g)
        m[i] = mi
        v[i] = vi
        out[i] = w[i] - lr * (mi / c1) / (np.sqrt(vi / c2) + eps)


# ----------------------------------------------------------------- ops

def dropout_forward(x, p, seed, stream):
    return _philox.dropout_forward(x, p, seed, stream)


def dropout_backward(dout, p, seed, stream, mask=None):
    dropout, _, s = _dropout_consts(p, dout.dtype)
    if not dropout:
        return dout.copy()
    if mask is None:
        mask = _philox.dropout_mask(dout.shape, p, seed, stream)
    if not _ok(dout, ndim=None) or mask.shape != dout.shape:
        return _ref.dropout_backward_ref(dout, p, seed, stream, mask)
    dx = np.empty_like(dout)
    _masked_scale(dout.reshape(-1), np.ascontiguousarray(mask).reshape(-1), s, dx.reshape(-1))
    return dx


def _stats(x, bias=None):
    mean = np.empty(x.shape[1], x.dtype)
    var = np.empty(x.shape[1], x.dtype)
    _col_mean_var(x, bias, mean, var)
    return mean, var


def _bias(b, x):
    """The bias as a contiguous vector of x's dtype, or None. (The kernels take None
    for "no bias": Numba compiles that case apart, with the add pruned.)"""
    return None if b is None else _vec(b, x.dtype)


def _seeds(seed, stream):
    return np.uint64(check_seed(seed)), np.uint64(check_seed(stream, "stream"))


def bn_forward_train(x, gamma, beta, eps, momentum, running_mean, running_var):
    return _bn_train(x, None, gamma, beta, eps, momentum, running_mean, running_var,
                     relu=False, p=1.0, seed=0, stream=0)


def _bn_train(x, b, gamma, beta, eps, momentum, running_mean, running_var, relu, p, seed,
              stream):
    if not _ok(x) or x.size == 0:
        if b is not None:
            return _ref.bias_bn_relu_dropout_forward_ref(x, b, gamma, beta, eps, momentum,
                                                         running_mean, running_var, p,
                                                         seed, stream)
        y, mean, inv_std = _ref.bn_forward_train_ref(x, gamma, beta, eps, momentum,
                                                       running_mean, running_var)
        if relu:
            y = _ref.relu_dropout_forward_ref(y, p, seed, stream)
        return y, mean, inv_std
    dt = x.dtype
    bias = _bias(b, x)
    mean, var = _stats(x, bias)
    running_mean *= momentum
    running_mean += (1.0 - momentum) * mean
    running_var *= momentum
    running_var += (1.0 - momentum) * var
    inv_std = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(dt)
    g = _vec(gamma, dt) * inv_std
    dropout, t, s = _dropout_consts(p, dt)
    out = np.empty_like(x)
    _affine_relu_dropout(x, bias, mean, g, _vec(beta, dt), out, True, relu, dropout, t, s,
                         *_seeds(seed, stream))
    return out, mean, inv_std


def bn_forward_infer(x, gamma, beta, eps, running_mean, running_var):
    if not _ok(x) or x.size == 0:
        return _ref.bn_forward_infer_ref(x, gamma, beta, eps, running_mean, running_var)
    dt = x.dtype
    inv_std = (1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)).astype(dt)
    out = np.empty_like(x)
    _affine_relu_dropout(x, None, _vec(running_mean, dt), _vec(gamma, dt) * inv_std,
                         _vec(beta, dt), out, True, False, False, np.uint64(0), dt.type(1),
                         np.uint64(0), np.uint64(0))
    return out


def _bn_grad(dout, out, x, b, gamma, mean, inv_std, p, gated):
    dt = x.dtype
    _, _, s = _dropout_consts(p, dt)
    mean, inv_std, gamma = _vec(mean, dt), _vec(inv_std, dt), _vec(gamma, dt)
    bias = _bias(b, x)
    dbeta = np.empty(x.shape[1], dt)
    dgamma = np.empty(x.shape[1], dt)
    _bn_grad_reduce(dout, out, x, bias, mean, inv_std, s, gated, dbeta, dgamma)
    dx = np.empty_like(x)
    db = None if b is None else np.empty(x.shape[1], dt)
    _bn_grad_apply(dout, out, x, bias, mean, inv_std, gamma, dbeta, dgamma, s, gated, dx, db)
    if b is None:
        return dx, dgamma, dbeta
    return dx, dgamma, dbeta, db


def bn_backward(dout, x, gamma, mean, inv_std):
    if not _ok(dout, x):
        return _ref.bn_backward_ref(dout, x, gamma, mean, inv_std)
    return _bn_grad(dout, x, x, None, gamma, mean, inv_std, 1.0, False)


def bn_relu_dropout_forward(x, gamma, beta, eps, momentum, running_mean, running_var,
                            p, seed, stream):
    return _bn_train(x, None, gamma, beta, eps, momentum, running_mean, running_var,
                     relu=True, p=p, seed=seed, stream=stream)


def bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p):
    if not _ok(dout, out, x):
        return _ref.bn_relu_dropout_backward_ref(dout, out, x, gamma, mean, inv_std, p)
    return _bn_grad(dout, out, x, None, gamma, mean, inv_std, p, True)


def bias_bn_relu_dropout_forward(x, b, gamma, beta, eps, momentum, running_mean, running_var,
                                 p, seed, stream):
    return _bn_train(x, b, gamma, beta, eps, momentum, running_mean, running_var,
                     relu=True, p=p, seed=seed, stream=stream)


def bias_bn_relu_dropout_backward(dout, out, x, b, gamma, mean, inv_std, p):
    if not _ok(dout, out, x):
        return _ref.bias_bn_relu_dropout_backward_ref(dout, out, x, b, gamma, mean, inv_std, p)
    return _bn_grad(dout, out, x, b, gamma, mean, inv_std, p, True)


def relu_dropout_forward(x, p, seed, stream):
    return _relu_dropout(x, None, p, seed, stream)


def bias_relu_dropout_forward(x, b, p, seed, stream):
    return _relu_dropout(x, b, p, seed, stream)


def _relu_dropout(x, b, p, seed, stream):
    if not _ok(x) or x.size == 0:
        if b is not None:
            return _ref.bias_relu_dropout_forward_ref(x, b, p, seed, stream)
        return _ref.relu_dropout_forward_ref(x, p, seed, stream)
    dt = x.dtype
    dropout, t, s = _dropout_consts(p, dt)
    out = np.empty_like(x)
    empty = np.empty(0, dt)
    _affine_relu_dropout(x, _bias(b, x), empty, empty, empty, out, False, True, dropout, t, s,
                         *_seeds(seed, stream))
    return out


def relu_dropout_backward(dout, out, p):
    if not _ok(dout, out, ndim=None):
        return _ref.relu_dropout_backward_ref(dout, out, p)
    dropout, _, s = _dropout_consts(p, dout.dtype)
    dx = np.empty_like(dout)
    _gate(dout.reshape(-1), out.reshape(-1), s, dropout, dx.reshape(-1))
    return dx


def bias_relu_dropout_backward(dout, out, p):
    if not _ok(dout, out):
        return _ref.bias_relu_dropout_backward_ref(dout, out, p)
    dropout, _, s = _dropout_consts(p, dout.dtype)
    dx = np.empty_like(dout)
    db = np.empty(dout.shape[1], dout.dtype)
    _gate_db(dout, out, s, dropout, dx, db)
    return dx, db


def adam_step(w, dw, m, v, lr, beta1, beta2, eps, t):
    f = w.dtype.type
    out = np.empty_like(w)
    _adam(w.reshape(-1), dw.reshape(-1), m.reshape(-1), v.reshape(-1), out.reshape(-1),
          f(lr), f(beta1), f(1 - beta1), f(beta2), f(1 - beta2),
          f(1 - beta1 ** t), f(1 - beta2 ** t), f(eps))
    return out
