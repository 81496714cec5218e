"""Kernel cases of the minibatch gather: the augmenting gather and the plain one.

Both ops make minibatch ``b`` of a training epoch as a float32 (B, 3072) array from a
pool of uint8 CIFAR-shaped images (3 x 32 x 32), by the rows ``perm[b*B:(b+1)*B]``
of a random permutation, with the mean image subtracted and the labels gathered too:

=========  =====  ================================================================
op         shape  call
=========  =====  ================================================================
augment    (B,)   ``fcgpu.augment.augment_gather(X, y, perm, b, B, (3, 32, 32),
                  'crop', 4, seed, epoch, mean)``: per-sample random flip and crop
                  with padding 4, in one pass
gather     (B,)   the same minibatch without augmentation: ``X[idx]`` to float32
                  minus the mean (the floor the augmentation adds to)
=========  =====  ================================================================

Variants of ``augment``: ``numpy_ref`` and ``cupy_unfused`` run the plain-xp
reference (:func:`fcgpu.augment.augment_gather_reference`) on NumPy or CuPy arrays,
``numba`` and ``fcgpu`` the dispatch (:func:`fcgpu.augment.augment_gather`) on NumPy
arrays (the Numba pass) or CuPy arrays (``kernels/augment.cu``). PyTorch has no
per-sample augmenting batch gather (torchvision's v2 transforms draw one set of
parameters per call, so every image of a batch tensor gets the same crop), so
``torch_cpu`` and ``torch_cuda`` run the plain gather only.

Variants of ``gather``: ``numpy_ref`` and ``cupy_unfused`` write it as separate array
ops (``X[idx].astype(float32) - mean``, ``y[idx]``), ``torch_cpu`` and ``torch_cuda``
the same in torch ops, ``numba`` and ``fcgpu`` run the dispatch with mode 'none' (the
augmenting pass without its draws). Every variant of both ops gives the bits of
``augment_gather`` with its mode ('crop' or 'none').

Bytes that must move (:func:`op_bytes`, both ops): the B gathered rows read as uint8
(``B*D``), the float32 batch written (``4*B*D``), the mean image read (``4*D``), and
8 bytes each for the B row numbers of ``perm`` read and the labels read and written.

The pool holds ``k`` batches (the rotation count of :func:`fcgpu.bench.kernels.
rotation_count`, at least :data:`POOL_MIN`): call ``i`` makes batch ``i % k`` of the
permutation, so consecutive calls read other images, as the other ops rotate inputs.
"""
from __future__ import annotations

import numpy as np

from .cases import TILE, Case, SkipCase, tiled
from .variants import get as _variant, label as _label

IMAGE_SHAPE = (3, 32, 32)
D = 3 * 32 * 32
MODE = "crop"
PAD = 4
SEED = 1234
EPOCH = 1
CLASSES = 10
OPS = ("augment", "gather")
BATCH = 490          # the training batch
BIG_BATCH = 65536    # about 1 GB moved per call: where a GPU's bandwidth shows
POOL_MIN = 4         # batches in the pool, at least
# the plain-NumPy reference gathers through (B, 3, 32, 32) index grids and keeps a few
# full-size temporaries (about 25 bytes per value): capped like the Philox reference
NUMPY_REF_MAX = 1 << 22

TITLES = {
    "augment": "augmenting minibatch gather (crop, pad 4)",
    "gather": "plain minibatch gather (X[idx] to float32 minus mean)",
}
LABELS = {
    "augment": {
        "numpy_ref": "NumPy: augment_gather_reference (xp code)",
        "numba": "fcgpu CPU path (Numba), one pass",
        "cupy_unfused": "CuPy: augment_gather_reference (xp code)",
        "fcgpu": "fcgpu CUDA kernel (augment.cu), one pass",
    },
    "gather": {
        "numpy_ref": "NumPy: X[idx].astype(float32) - mean",
        "numba": "fcgpu CPU path (Numba), mode 'none'",
        "torch_cpu": "PyTorch CPU: X[idx].float() - mean",
        "cupy_unfused": "CuPy: X[idx].astype(float32) - mean",
        "fcgpu": "fcgpu CUDA kernel, mode 'none'",
        "torch_cuda": "PyTorch CUDA: X[idx].float() - mean",
    },
}


def batch_of(shape):
    (b,) = shape
    return int(b)


def elements(shape):
    """Output values of one call (B images of D values)."""
    return batch_of(shape) * D


def op_bytes(op, shape):
    """Bytes one call must move: uint8 rows in, float32 batch out, the mean image in,
    the row numbers and labels in, the labels out."""
    if op not in OPS:
        raise ValueError("unknown op %r" % op)
    b = batch_of(shape)
    return b * D + 4 * b * D + 4 * D + 3 * 8 * b


def input_bytes(op, shape):
    """Bytes of the pool one call reads (its rows, row numbers and labels)."""
    return batch_of(shape) * (D + 16)


def host_inputs(batch, k, seed=0):
    """``(X, y, perm, mean)`` for a pool of ``k`` batches: X (k*batch, D) uint8 (a
    random 4 MiB block, tiled: fast to make, and values do not change the timings),
    int64 labels and permutation, a float32 mean image."""
    rng = np.random.default_rng(seed)
    n = int(batch) * int(k)
    X = tiled(rng.integers(0, 256, TILE, dtype=np.uint8), n * D)
    y = rng.integers(0, CLASSES, n, dtype=np.int64)
    perm = rng.permutation(n).astype(np.int64)
    mean = rng.uniform(100.0, 150.0, D).astype(np.float32)
    return X.reshape(n, D), y, perm, mean


def _inputs(arrays, batch):
    X, y, perm, mean = arrays
    return {"X": X, "y": y, "perm": perm, "mean": mean, "batch": batch}


def build_xp_case(variant, op, shape, xp, k):
    """The cases of the numpy and cupy families on ``xp``: the plain-xp reference where
    the row's ``impl`` is 'reference' (``numpy_ref``, ``cupy_unfused``), else the
    dispatch (``numba``, ``fcgpu``)."""
    from .. import augment, fused

    B = batch_of(shape)
    how = _variant(variant).impl
    ref = how == "reference"
    if ref and xp is np and op == "augment" and B * D > NUMPY_REF_MAX:
        raise SkipCase("the plain-NumPy reference (index grids and full-size temporaries, "
                       "~25 B per value) is capped at 2^22 values (batch %d)"
                       % (NUMPY_REF_MAX // D))
    if how == "numba":
        fused.use_compiled_cpu(True)
    X, y, perm, mean = arrays = tuple(xp.asarray(a) for a in host_inputs(B, k))
    label = LABELS[op].get(variant) or _label(variant)
    if op == "augment":
        run = augment.augment_gather_reference if ref else augment.augment_gather

        def fn(b):
            return run(X, y, perm, b, B, IMAGE_SHAPE, MODE, PAD, SEED, EPOCH, mean)
    elif op == "gather" and ref:
        f32 = xp.float32

        def fn(b):
            idx = perm[b * B:(b + 1) * B]
            return X[idx].astype(f32) - mean, y[idx]
    elif op == "gather":
        def fn(b):
            return augment.augment_gather(X, y, perm, b, B, IMAGE_SHAPE, "none", PAD, SEED,
                                          EPOCH, mean)
    else:
        raise ValueError("unknown op %r" % op)
    return Case(fn, k, label, _inputs(arrays, B))


def build_torch_case(variant, op, shape, torch, device, k):
    """The plain gather in torch ops on ``device`` ('cpu' or 'cuda')."""
    if op != "gather":
        raise ValueError("PyTorch runs the plain gather only, not %r" % op)
    B = batch_of(shape)
    X, y, perm, mean = arrays = tuple(torch.from_numpy(a).to(device)
                                      for a in host_inputs(B, k))
    f32 = torch.float32

    def fn(b):
        idx = perm[b * B:(b + 1) * B]
        return X[idx].to(f32) - mean, y[idx]
    return Case(fn, k, LABELS[op][variant], _inputs(arrays, B))
