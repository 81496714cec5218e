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
"""
from __future__ import annotations

import numpy as np

from .augment_spec import (AUGMENT_STREAM_BASE, DEFAULT_PAD, MODES, augment_gather_reference,
                           augment_stream, draws_reference)
from .backend import is_cupy_array

__all__ = ["augment_gather", "augment_gather_reference", "draws_reference", "augment_stream",
           "impl_for", "MODES", "DEFAULT_PAD", "AUGMENT_STREAM_BASE"]


def _reference(X, y, perm, b, batch_size, image_shape, mode="crop", pad=DEFAULT_PAD, seed=0,
               epoch=0, mean=None, out_dtype=np.float32, out=None, y_out=None):
    Xb, yb = augment_gather_reference(X, y, perm, b, batch_size, image_shape, mode, pad, seed,
                                      epoch, mean, out_dtype)
    if out is not None:
        out[...] = Xb
        Xb = out
    if y_out is not None and yb is not None:
        y_out[...] = yb
        yb = y_out
    return Xb, yb


def impl_for(X):
    """The ``augment_gather`` implementing the gather for arrays like ``X``."""
    if is_cupy_array(X):
        from .cuda import augment
        return augment.augment_gather
    from . import fused
    if fused.use_compiled_cpu():
        from .cpu import augment
        return augment.augment_gather
    return _reference


def augment_gather(X, y, perm, b, batch_size, image_shape, mode="crop", pad=DEFAULT_PAD,
                   seed=0, epoch=0, mean=None, out_dtype=np.float32, out=None, y_out=None):
    """Minibatch ``b`` of ``X`` (and ``y``), augmented: ``(Xb, yb)``; see the module
    docstring. ``yb`` (int64) is None when ``y`` is None."""
    return impl_for(X)(X, y, perm, b, batch_size, image_shape, mode, pad, seed, epoch, mean,
                       out_dtype, out, y_out)
