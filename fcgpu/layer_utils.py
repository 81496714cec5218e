"""Sandwich layers: affine followed by [batchnorm] - ReLU - [dropout].

In training mode, batchnorm-ReLU-dropout (or ReLU-dropout) is one fused pass
(:mod:`fcgpu.fused`): a CUDA kernel on CuPy, a compiled loop on NumPy. Where the
implementation folds the affine layer's bias into that pass (``fused.folds_bias``:
the compiled CPU path), the product goes in without its bias, the pass adds it as it
reads, and the backward pass returns its gradient: two passes over the layer's output
fewer per step, the same values up to the rounding of the bias gradient's sum.
"""
from __future__ import annotations

from . import fused, linalg
from .layers import (affine_backward, affine_forward, affine_rows, bn_settings,
                     dropout_settings, dropout_stream, relu_backward, relu_forward)

__all__ = [
    "affine_relu_forward", "affine_relu_backward",
    "affine_bn_relu_forward", "affine_bn_relu_backward",
    "affine_relu_dropout_forward", "affine_relu_dropout_backward",
    "affine_bn_relu_dropout_forward", "affine_bn_relu_dropout_backward",
]


def affine_relu_forward(x, w, b):
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache, need_dx=True):
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache, need_dx)


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    return affine_bn_relu_dropout_forward(x, w, b, gamma, beta, bn_param, None)


def affine_bn_relu_backward(dout, cache, need_dx=True):
    return affine_bn_relu_dropout_backward(dout, cache, need_dx)


def affine_relu_dropout_forward(x, w, b, dropout_param):
    mode, p = dropout_settings(dropout_param)
    if mode == "train" and fused.folds_bias(x):
        a = linalg.forward(affine_rows(x, w, b), w)
        seed, stream = dropout_stream(dropout_param)
        out = fused.bias_relu_dropout_forward(a, b, p, seed, stream)
        return out, ((x, w, b), out, p, True)
    a, fc_cache = affine_forward(x, w, b)
    if mode == "test":
        out, _ = relu_forward(a)
        return out, (fc_cache, out, 1.0, False)
    seed, stream = dropout_stream(dropout_param)
    out = fused.relu_dropout_forward(a, p, seed, stream)
    return out, (fc_cache, out, p, False)


def affine_relu_dropout_backward(dout, cache, need_dx=True):
    fc_cache, out, p, folded = cache
    if folded:
        da, db = fused.bias_relu_dropout_backward(dout, out, p)
        dx, dw = _affine_grads(da, fc_cache, need_dx)
        return dx, dw, db
    da = fused.relu_dropout_backward(dout, out, p)
    return affine_backward(da, fc_cache, need_dx)


def _affine_grads(da, fc_cache, need_dx):
    """``(dx, dw)`` of an affine layer whose bias gradient came from elsewhere."""
    x, w, _ = fc_cache
    dw = linalg.weight_gradient(x.reshape(x.shape[0], -1), da)
    dx = linalg.input_gradient(da, w).reshape(x.shape) if need_dx else None
    return dx, dw


def affine_bn_relu_dropout_forward(x, w, b, gamma, beta, bn_param, dropout_param):
    """affine - batchnorm - ReLU - dropout; ``dropout_param=None`` means no dropout."""
    a = linalg.forward(affine_rows(x, w, b), w)
    mode, eps, momentum = bn_settings(a, gamma, beta, bn_param)
    folded = mode == "train" and fused.folds_bias(a)
    if not folded:
        a += b  # as affine_forward
    fc_cache = (x, w, b)
    p, seed, stream = 1.0, 0, 0
    if dropout_param is not None:
        _, p = dropout_settings(dropout_param)
        if dropout_param["mode"] == "train":
            seed, stream = dropout_stream(dropout_param)
        else:
            p = 1.0
    if mode == "test":
        y = fused.bn_forward_infer(a, gamma, beta, eps, bn_param["running_mean"],
                                   bn_param["running_var"])
        out = fused.relu_dropout_forward(y, p, seed, stream)
        return out, None
    args = (gamma, beta, eps, momentum, bn_param["running_mean"], bn_param["running_var"],
            p, seed, stream)
    if folded:  # a is the product without its bias
        out, mean, inv_std = fused.bias_bn_relu_dropout_forward(a, b, *args)
    else:
        out, mean, inv_std = fused.bn_relu_dropout_forward(a, *args)
    return out, (fc_cache, a, gamma, mean, inv_std, out, p, folded)


def affine_bn_relu_dropout_backward(dout, cache, need_dx=True):
    """``(dx, dw, db, dgamma, dbeta)``."""
    if cache is None:
        raise ValueError("backward of a test-mode forward pass: nothing to differentiate")
    fc_cache, a, gamma, mean, inv_std, out, p, folded = cache
    if folded:
        da, dgamma, dbeta, db = fused.bias_bn_relu_dropout_backward(
            dout, out, a, fc_cache[2], gamma, mean, inv_std, p)
        dx, dw = _affine_grads(da, fc_cache, need_dx)
        return dx, dw, db, dgamma, dbeta
    da, dgamma, dbeta = fused.bn_relu_dropout_backward(dout, out, a, gamma, mean, inv_std, p)
    dx, dw, db = affine_backward(da, fc_cache, need_dx)
    return dx, dw, db, dgamma, dbeta
