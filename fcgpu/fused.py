"""The dispatch point for the fusable elementwise steps.

Each step has three implementations with one signature:

* ``*_ref`` here: plain array code for any ``xp`` (the reference the tests use);
* ``fcgpu.cpu.ops``: Numba-compiled passes for NumPy arrays;
* ``fcgpu.cuda.ops``: our CUDA kernels (``kernels/``) for CuPy arrays.

The public functions below pick by the arrays they receive; layer code calls only
them. The CUDA backward of dropout regenerates the mask from (seed, stream), so the
GPU stores none; the CPU path keeps the boolean mask, which is cheaper there.

Signatures (``p`` is the keep probability, 1 meaning no dropout):

* ``dropout_forward(x, p, seed, stream) -> (out, mask_or_None)``
* ``dropout_backward(dout, p, seed, stream, mask_or_None) -> dx``
* ``bn_forward_train(x, gamma, beta, eps, momentum, running_mean, running_var)
  -> (out, mean, inv_std)``; running statistics are updated in place
* ``bn_forward_infer(x, gamma, beta, eps, running_mean, running_var) -> out``
* ``bn_backward(dout, x, gamma, mean, inv_std) -> (dx, dgamma, dbeta)``
* ``bn_relu_dropout_forward(x, gamma, beta, eps, momentum, running_mean, running_var,
  p, seed, stream) -> (out, mean, inv_std)``
* ``bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p) -> (dx, dgamma, dbeta)``
  (``out > 0`` holds both the ReLU gate and the keep mask, so nothing is regenerated)
* ``relu_dropout_forward(x, p, seed, stream) -> out``
* ``relu_dropout_backward(dout, out, p) -> dx``
"""
from __future__ import annotations

from .backend import get_array_module, is_cupy_array
from .random import dropout_mask_reference, dropout_scale, keep_threshold

__all__ = [
    "dropout_forward", "dropout_backward", "bn_forward_train", "bn_forward_infer",
    "bn_backward", "bn_relu_dropout_forward", "bn_relu_dropout_backward",
    "relu_dropout_forward", "relu_dropout_backward", "impl_for", "use_compiled_cpu",
]

_use_compiled_cpu = True


def use_compiled_cpu(flag=None):
    """Get (or set, with ``flag``) whether NumPy arrays take the Numba path.

    Off, NumPy arrays run the ``*_ref`` code: handy to compare or to profile."""
    global _use_compiled_cpu
    if flag is not None:
        _use_compiled_cpu = bool(flag)
    return _use_compiled_cpu


def impl_for(x):
    """The module implementing the fused steps for arrays like ``x``."""
    if is_cupy_array(x):
        from .cuda import ops
        return ops
    if _use_compiled_cpu:
        from .cpu import ops
        return ops
    return _reference


# ----------------------------------------------------------------- references

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


class _reference:  # namespace with the same names as fcgpu.cpu.ops / fcgpu.cuda.ops
    dropout_forward = staticmethod(dropout_forward_ref)
    dropout_backward = staticmethod(dropout_backward_ref)
    bn_forward_train = staticmethod(bn_forward_train_ref)
    bn_forward_infer = staticmethod(bn_forward_infer_ref)
    bn_backward = staticmethod(bn_backward_ref)
    bn_relu_dropout_forward = staticmethod(bn_relu_dropout_forward_ref)
    bn_relu_dropout_backward = staticmethod(bn_relu_dropout_backward_ref)
    relu_dropout_forward = staticmethod(relu_dropout_forward_ref)
    relu_dropout_backward = staticmethod(relu_dropout_backward_ref)


reference = _reference


# ----------------------------------------------------------------- dispatch

def dropout_forward(x, p, seed, stream):
    return impl_for(x).dropout_forward(x, p, seed, stream)


def dropout_backward(dout, p, seed, stream, mask=None):
    return impl_for(dout).dropout_backward(dout, p, seed, stream, mask)


def bn_forward_train(x, gamma, beta, eps, momentum, running_mean, running_var):
    return impl_for(x).bn_forward_train(x, gamma, beta, eps, momentum,
                                        running_mean, running_var)


def bn_forward_infer(x, gamma, beta, eps, running_mean, running_var):
    return impl_for(x).bn_forward_infer(x, gamma, beta, eps, running_mean, running_var)


def bn_backward(dout, x, gamma, mean, inv_std):
    return impl_for(dout).bn_backward(dout, x, gamma, mean, inv_std)


def bn_relu_dropout_forward(x, gamma, beta, eps, momentum, running_mean, running_var,
                            p, seed, stream):
    return impl_for(x).bn_relu_dropout_forward(x, gamma, beta, eps, momentum,
                                               running_mean, running_var, p, seed, stream)


def bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p):
    return impl_for(dout).bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p)


def relu_dropout_forward(x, p, seed, stream):
    return impl_for(x).relu_dropout_forward(x, p, seed, stream)


def relu_dropout_backward(dout, out, p):
    return impl_for(dout).relu_dropout_backward(dout, out, p)
