"""The dispatch point for the fusable elementwise steps and the dropout keep-masks.

Each step has three implementations with one signature:

* ``fcgpu.fused_ref``: plain array code for any ``xp`` (the reference the tests use;
  its ``*_ref`` functions are importable from here too);
* ``fcgpu.cpu.ops``: Numba-compiled passes for NumPy arrays;
* ``fcgpu.cuda.ops``: our CUDA kernels (``kernels/``) for CuPy arrays.

The public functions below pick by the arrays they receive; layer code calls only
them. The CUDA backward of dropout regenerates the mask from (seed, stream), so the
GPU stores none; the CPU path keeps the boolean mask, which is cheaper there.

Imports point down: this module imports the implementations (lazily, so importing it
compiles nothing and never imports CuPy); they import the references and the spec
(:mod:`fcgpu.random`); none of them imports this module.

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
* ``dropout_mask(shape, p, seed, stream, xp=None) -> bool array`` (the keep mask alone)

Where an implementation offers them (:func:`folds_bias`; the compiled CPU path does),
the sandwich layers hand it an affine layer's product and bias separately, so that
the bias is added inside the next pass and its gradient summed inside the backward:

* ``bias_bn_relu_dropout_forward(x, b, gamma, beta, eps, momentum, running_mean,
  running_var, p, seed, stream) -> (out, mean, inv_std)``: as above, of ``x + b``
* ``bias_bn_relu_dropout_backward(dout, out, x, b, gamma, mean, inv_std, p)
  -> (dx, dgamma, dbeta, db)`` with ``db = dx.sum(axis=0)``
* ``bias_relu_dropout_forward(x, b, p, seed, stream) -> out``: of ``x + b``
* ``bias_relu_dropout_backward(dout, out, p) -> (dx, db)``
"""
from __future__ import annotations

import numpy as np

from .backend import is_cupy_array
from .fused_ref import (  # noqa: F401  (the references, importable from the dispatch point)
    bias_bn_relu_dropout_backward_ref, bias_bn_relu_dropout_forward_ref,
    bias_relu_dropout_backward_ref, bias_relu_dropout_forward_ref, bn_backward_ref,
    bn_forward_infer_ref, bn_forward_train_ref, bn_relu_dropout_backward_ref,
    bn_relu_dropout_forward_ref, dropout_backward_ref, dropout_forward_ref, reference,
    relu_dropout_backward_ref, relu_dropout_forward_ref)

__all__ = [
    "dropout_forward", "dropout_backward", "bn_forward_train", "bn_forward_infer",
    "bn_backward", "bn_relu_dropout_forward", "bn_relu_dropout_backward",
    "relu_dropout_forward", "relu_dropout_backward", "dropout_mask", "impl_for",
    "use_compiled_cpu", "folds_bias", "bias_bn_relu_dropout_forward",
    "bias_bn_relu_dropout_backward", "bias_relu_dropout_forward", "bias_relu_dropout_backward",
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
    return reference


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


def folds_bias(x):
    """Whether the implementation for arrays like ``x`` takes an affine layer's bias
    into its passes (the ``bias_*`` steps). Where it does not, the sandwich layers add
    the bias after the product, as ``affine_forward`` does."""
    return hasattr(impl_for(x), "bias_bn_relu_dropout_forward")


def bias_bn_relu_dropout_forward(x, b, gamma, beta, eps, momentum, running_mean,
                                 running_var, p, seed, stream):
    return impl_for(x).bias_bn_relu_dropout_forward(x, b, gamma, beta, eps, momentum,
                                                    running_mean, running_var, p, seed,
                                                    stream)


def bias_bn_relu_dropout_backward(dout, out, x, b, gamma, mean, inv_std, p):
    return impl_for(dout).bias_bn_relu_dropout_backward(dout, out, x, b, gamma, mean,
                                                        inv_std, p)


def bias_relu_dropout_forward(x, b, p, seed, stream):
    return impl_for(x).bias_relu_dropout_forward(x, b, p, seed, stream)


def bias_relu_dropout_backward(dout, out, p):
    return impl_for(dout).bias_relu_dropout_backward(dout, out, p)


def dropout_mask(shape, p, seed, stream, xp=None):
    """Boolean keep mask for ``shape``: True where the unit is kept.

    ``xp`` (default NumPy) picks where it is made: NumPy uses the compiled CPU path,
    CuPy the CUDA kernel. Results are bit-identical to
    :func:`fcgpu.random.dropout_mask_reference`.
    """
    if xp is None or xp is np:
        from .cpu import philox
        return philox.dropout_mask(shape, p, seed, stream)
    from .cuda import ops
    return ops.dropout_mask(shape, p, seed, stream)
