"""Per-sample augmentation fused into the minibatch gather: the dispatch point.

``augment_gather(X, y, perm, b, batch_size, image_shape, mode='crop', pad=4, seed=0,
epoch=0, mean=None, out_dtype=np.float32, out=None, y_out=None) -> (Xb, yb)`` makes
minibatch ``b`` (rows ``perm[b*B .. b*B + B)`` of ``X``) as a float array in one pass:
per-sample random horizontal flip ('flip'), flip and crop with padding ('crop'), or
neither ('none'), then the mean image subtracted. :mod:`fcgpu.augment_spec` has the
exact definition, the random stream layout and the reference.

Three implementations, one signature, the same bits for the same (seed, epoch):

* :func:`fcgpu.augment_spec.augment_gather_reference`: plain array code, any ``xp``;
* :mod:`fcgpu.cpu.augment`: the Numba pass, for NumPy arrays;
* :mod:`fcgpu.cuda.augment`: ``kernels/augment.cu``, for CuPy arrays (``b`` and
  ``epoch`` may live in device memory there, for a step captured as a CUDA graph).

:func:`augment_gather` picks by the type of ``X``; NumPy arrays take the reference
instead of the Numba pass when ``fcgpu.fused.use_compiled_cpu(False)`` is set.

``mix_batch(Xb, yb, b, image_shape, mode='mixup', alpha=1.0, seed=0, epoch=0,
y2_out=None, lam_out=None) -> (Xb, y2, lam)`` then mixes the gathered batch in place
(MixUp or CutMix with the batch reversed; :mod:`fcgpu.mix_spec` has the spec), with
the same three implementations picked the same way.
"""
from __future__ import annotations

import numpy as np

from .augment_spec import (AUGMENT_STREAM_BASE, DEFAULT_PAD, MODES, augment_gather_reference,
                           augment_stream, draws_reference)
from .backend import is_cupy_array
from .mix_spec import MIX_MODES, mix_batch_reference

__all__ = ["augment_gather", "augment_gather_reference", "draws_reference", "augment_stream",
           "impl_for", "MODES", "DEFAULT_PAD", "AUGMENT_STREAM_BASE", "mix_batch",
           "mix_batch_reference", "mix_impl_for", "MIX_MODES"]


def _reference(X, y, perm, b, batch_size, image_shape, mode="crop", pad=DEFAULT_PAD, seed=0,
               epoch=0, mean=None, out_dtype=np.float32, out=None, y_out=None):
    Xb, yb = augment_gather_reference(X, y, perm, b, batch_size, image_shape, mode, pad, seed,
                                      epoch, mean, out_dtype)
    return _into(out, Xb), _into(y_out, yb)


def _into(out, value):
    """``value`` written into ``out`` (and ``out`` returned), or ``value`` itself when
    there is no ``out`` (or no value): the references fill the caller's buffers as the
    compiled and CUDA versions do."""
    if out is None or value is None:
        return value
    out[...] = value
    return out


def _pick(X, name, reference):
    """The function ``name`` of the implementation for arrays like ``X``: our CUDA
    kernels for CuPy arrays, the compiled CPU passes where Numba runs, else
    ``reference``."""
    if is_cupy_array(X):
        from .cuda import augment
        return getattr(augment, name)
    from . import fused
    if fused.use_compiled_cpu():
        from .cpu import augment
        return getattr(augment, name)
    return reference


def impl_for(X):
    """The ``augment_gather`` implementing the gather for arrays like ``X``."""
    return _pick(X, "augment_gather", _reference)


def augment_gather(X, y, perm, b, batch_size, image_shape, mode="crop", pad=DEFAULT_PAD,
                   seed=0, epoch=0, mean=None, out_dtype=np.float32, out=None, y_out=None):
    """Minibatch ``b`` of ``X`` (and ``y``), augmented: ``(Xb, yb)``; see the module
    docstring. ``yb`` (int64) is None when ``y`` is None."""
    return impl_for(X)(X, y, perm, b, batch_size, image_shape, mode, pad, seed, epoch, mean,
                       out_dtype, out, y_out)


def _mix_reference(X, y, b, image_shape, mode="mixup", alpha=1.0, seed=0, epoch=0, y2_out=None,
                   lam_out=None):
    Xm, y2, lam = mix_batch_reference(X, y, b, image_shape, mode, alpha, seed, epoch)
    if Xm is not X:
        X[...] = Xm
    return X, _into(y2_out, y2), _into(lam_out, lam)


def mix_impl_for(X):
    """The ``mix_batch`` implementing the mix for arrays like ``X``."""
    return _pick(X, "mix_batch", _mix_reference)


def mix_batch(X, y, b, image_shape, mode="mixup", alpha=1.0, seed=0, epoch=0, y2_out=None,
              lam_out=None):
    """Mix batch ``b`` (``X`` (B, D), the gather's output, and its labels ``y``) in place:
    ``(X, y2, lam)`` with the partner's labels ``y2`` (int64, None without ``y``) and each
    row's target weight ``lam`` in X's dtype (:mod:`fcgpu.mix_spec`); given ``y2_out``
    and ``lam_out`` are written. Mode 'none' changes nothing: ``(X, None, None)``."""
    return mix_impl_for(X)(X, y, b, image_shape, mode, alpha, seed, epoch, y2_out, lam_out)
