"""The fused elementwise steps in plain array code, for any ``xp``.

These are the specification of each step (see :mod:`fcgpu.fused` for the signatures):
the tests compare the compiled CPU passes (:mod:`fcgpu.cpu.ops`) and the CUDA kernels
(:mod:`fcgpu.cuda.ops`) with them, and the CPU passes fall back to them for inputs
their loops are not written for. They sit below both implementations and below the
dispatch point, and import only the spec of the random stream and the backend.
"""
from __future__ import annotations

from types import SimpleNamespace

from .backend import get_array_module
from .random import dropout_mask_reference, dropout_scale, keep_threshold

__all__ = [
    "dropout_forward_ref", "dropout_backward_ref", "bn_forward_train_ref",
    "bn_forward_infer_ref", "bn_backward_ref", "bn_relu_dropout_forward_ref",
    "bn_relu_dropout_backward_ref", "relu_dropout_forward_ref", "relu_dropout_backward_ref",
    "bias_bn_relu_dropout_forward_ref", "bias_bn_relu_dropout_backward_ref",
    "bias_relu_dropout_forward_ref", "bias_relu_dropout_backward_ref", "reference",
]


def _scale(p, dtype):
    return dropout_scale(p, dtype) if keep_threshold(p) is not None else None


def dropout_forward_ref(x, p, seed, stream):
    xp = get_array_module(x)
    s = _scale(p, x.dtype)
    if s is None:
        return x.copy(), None
    mask = dropout_mask_reference(x.shape, p, seed, stream, xp)
    return xp.where(mask, x * s, x.dtype.type(0)), mask


def dropout_backward_ref(dout, p, seed, stream, mask=None):
    xp = get_array_module(dout)
    s = _scale(p, dout.dtype)
    if s is None:
        return dout.copy()
    if mask is None:
        mask = dropout_mask_reference(dout.shape, p, seed, stream, xp)
    return xp.where(mask, dout * s, dout.dtype.type(0))


def bn_forward_train_ref(x, gamma, beta, eps, momentum, running_mean, running_var):
    xp = get_array_module(x)
    mean = x.mean(axis=0)
    var = x.var(axis=0)
    inv_std = 1.0 / xp.sqrt(var + eps)
    out = (x - mean) * inv_std * gamma + beta
    running_mean[...] = momentum * running_mean + (1.0 - momentum) * mean
    running_var[...] = momentum * running_var + (1.0 - momentum) * var
    return out.astype(x.dtype, copy=False), mean, inv_std.astype(x.dtype, copy=False)


def bn_forward_infer_ref(x, gamma, beta, eps, running_mean, running_var):
    xp = get_array_module(x)
    out = (x - running_mean) / xp.sqrt(running_var + eps) * gamma + beta
    return out.astype(x.dtype, copy=False)


def bn_backward_ref(dout, x, gamma, mean, inv_std):
    n = x.shape[0]
    xhat = (x - mean) * inv_std
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = (gamma * inv_std / n) * (n * dout - dbeta - xhat * dgamma)
    return dx.astype(x.dtype, copy=False), dgamma, dbeta


def bn_relu_dropout_forward_ref(x, gamma, beta, eps, momentum, running_mean, running_var,
                                p, seed, stream):
    xp = get_array_module(x)
    y, mean, inv_std = bn_forward_train_ref(x, gamma, beta, eps, momentum,
                                            running_mean, running_var)
    out, _ = dropout_forward_ref(xp.maximum(y, 0), p, seed, stream)
    return out, mean, inv_std


def bn_relu_dropout_backward_ref(dout, out, x, gamma, mean, inv_std, p):
    return bn_backward_ref(relu_dropout_backward_ref(dout, out, p), x, gamma, mean, inv_std)


def relu_dropout_forward_ref(x, p, seed, stream):
    xp = get_array_module(x)
    return dropout_forward_ref(xp.maximum(x, 0), p, seed, stream)[0]


def relu_dropout_backward_ref(dout, out, p):
    xp = get_array_module(dout)
    s = _scale(p, dout.dtype)
    return xp.where(out > 0, dout if s is None else dout * s, dout.dtype.type(0))


def _add_bias(x, b):
    return (x + b).astype(x.dtype, copy=False)


def bias_bn_relu_dropout_forward_ref(x, b, gamma, beta, eps, momentum, running_mean,
                                     running_var, p, seed, stream):
    """:func:`bn_relu_dropout_forward_ref` of ``x + b`` (an affine layer's product and
    its bias)."""
    return bn_relu_dropout_forward_ref(_add_bias(x, b), gamma, beta, eps, momentum,
                                       running_mean, running_var, p, seed, stream)


def bias_bn_relu_dropout_backward_ref(dout, out, x, b, gamma, mean, inv_std, p):
    """``(dx, dgamma, dbeta, db)``: the backward of the above; ``db = dx.sum(axis=0)``."""
    dx, dgamma, dbeta = bn_relu_dropout_backward_ref(dout, out, _add_bias(x, b), gamma, mean,
                                                     inv_std, p)
    return dx, dgamma, dbeta, dx.sum(axis=0)


def bias_relu_dropout_forward_ref(x, b, p, seed, stream):
    return relu_dropout_forward_ref(_add_bias(x, b), p, seed, stream)


def bias_relu_dropout_backward_ref(dout, out, p):
    """``(dx, db)``: :func:`relu_dropout_backward_ref` and ``db = dx.sum(axis=0)``."""
    dx = relu_dropout_backward_ref(dout, out, p)
    return dx, dx.sum(axis=0)


# the references under the names fcgpu.cpu.ops and fcgpu.cuda.ops use, for dispatch
reference = SimpleNamespace(
    dropout_forward=dropout_forward_ref, dropout_backward=dropout_backward_ref,
    bn_forward_train=bn_forward_train_ref, bn_forward_infer=bn_forward_infer_ref,
    bn_backward=bn_backward_ref, bn_relu_dropout_forward=bn_relu_dropout_forward_ref,
    bn_relu_dropout_backward=bn_relu_dropout_backward_ref,
    relu_dropout_forward=relu_dropout_forward_ref,
    relu_dropout_backward=relu_dropout_backward_ref)
