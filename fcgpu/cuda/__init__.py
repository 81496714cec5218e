"""The CUDA side of fcgpu: our kernels (``kernels/``) launched through CuPy.

This package is the only place that knows CUDA. It is imported lazily, by
:func:`fcgpu.fused.impl_for` for CuPy arrays and by :func:`fcgpu.random.dropout_mask`
with ``xp=cupy``; importing it imports neither CuPy nor compiles anything.

* :mod:`fcgpu.cuda.ops`: the fused steps (same signatures as ``fcgpu.fused``) and the
  launch plumbing;
* :mod:`fcgpu.cuda.train_ops`: the update rules and the CUDA-graph step's kernels;
* :mod:`fcgpu.cuda.augment`: the augmenting minibatch gather;
* :mod:`fcgpu.cuda.module`: kernel sources, the :class:`~fcgpu.cuda.module.Kernel`
  table, NVRTC builds and per-device caches.

Each launcher module declares its kernels (``Kernel`` objects beside the code that
launches them); they are imported here, so that ``module.MODULES``, the list of every
kernel NVRTC builds, is complete whenever any part of the package is imported.
"""
from . import augment, ops, train_ops  # noqa: F401  (they declare the kernels)
