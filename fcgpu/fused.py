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

Which implementation runs: by default the CUDA kernels for CuPy arrays, the Numba
passes for NumPy arrays (the reference instead when ``use_compiled_cpu(False)`` is
set). ``with force_impl(name):`` picks one for the block instead (``'reference'``,
``'numba'`` or ``'cuda'``; see :func:`force_impl`).
"""
from __future__ import annotations

import contextlib
import contextvars

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
    "force_impl", "forced_impl", "IMPLS",
]

# the names force_impl takes: the xp reference (any array), the Numba passes (NumPy
# arrays), the CUDA kernels (CuPy arrays)
IMPLS = ("reference", "numba", "cuda")

_use_compiled_cpu = True
_forced = contextvars.ContextVar("fcgpu_fused_forced_impl", default=None)


def use_compiled_cpu(flag=None):
    """Get (or set, with ``flag``) whether NumPy arrays take the Numba path.

    Off, NumPy arrays run the ``*_ref`` code: handy to compare or to profile. The
    setting holds for the process; inside a :func:`force_impl` block the getter says
    what the block forces ('reference': False, 'numba': True), so the Numba passes of
    Adam (:mod:`fcgpu.fused_optim`) and of the augmenting gather follow the block too."""
    global _use_compiled_cpu
    if flag is not None:
        _use_compiled_cpu = bool(flag)
    forced = _forced.get()
    if forced in ("reference", "numba"):
        return forced == "numba"
    return _use_compiled_cpu


def forced_impl():
    """The name :func:`force_impl` forces here, or None outside such a block."""
    return _forced.get()


@contextlib.contextmanager
def force_impl(name):
    """Within the ``with`` block, every fused step (and :func:`dropout_mask`) runs
    implementation ``name``, whatever :func:`use_compiled_cpu` says:

    * ``'reference'``: the plain ``xp`` code of :mod:`fcgpu.fused_ref`, for NumPy and
      CuPy arrays alike (what a CuPy user would write, unfused);
    * ``'numba'``: the compiled CPU passes (:mod:`fcgpu.cpu.ops`); NumPy arrays only;
    * ``'cuda'``: our kernels (:mod:`fcgpu.cuda.ops`); CuPy arrays only.

    An array the forced implementation cannot take raises TypeError (never a silent
    fall back). Blocks nest (the innermost wins) and are local to the thread or
    asyncio task that enters them (a :class:`contextvars.ContextVar`). Used by the
    step profiler and the benchmark variants instead of patching :func:`impl_for`."""
    if name not in IMPLS:
        raise ValueError("force_impl: unknown implementation %r (one of %s)"
                         % (name, ", ".join(IMPLS)))
    token = _forced.set(name)
    try:
        yield name
    finally:
        _forced.reset(token)


def _forced_module(name, x):
    cupy = is_cupy_array(x)
    if name == "reference":
        return reference
    if name == "numba" and not cupy:
        from .cpu import ops
        return ops
    if name == "cuda" and cupy:
        from .cuda import ops
        return ops
    raise TypeError("force_impl(%r) cannot take a %s array" % (name, type(x).__module__))


def impl_for(x):
    """The module implementing the fused steps for arrays like ``x``."""
    forced = _forced.get()
    if forced is not None:
        return _forced_module(forced, x)
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
    :func:`fcgpu.random.dropout_mask_reference`. Inside a :func:`force_impl` block
    the forced implementation makes it ('reference': that function, on ``xp``).
    """
    forced = _forced.get()
    if forced == "reference":
        from .random import dropout_mask_reference
        return dropout_mask_reference(shape, p, seed, stream, np if xp is None else xp)
    if forced is not None and (forced == "cuda") == (xp is None or xp is np):
        raise TypeError("force_impl(%r) cannot make a mask on %s"
                        % (forced, getattr(xp, "__name__", xp)))
    if xp is None or xp is np:
        from .cpu import philox
        return philox.dropout_mask(shape, p, seed, stream)
    from .cuda import ops
    return ops.dropout_mask(shape, p, seed, stream)
