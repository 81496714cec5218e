"""The CUDA side of fcgpu: our kernels (``kernels/``) launched through CuPy.

This package is the only place that knows CUDA. It is imported lazily, by
:func:`fcgpu.fused.impl_for` for CuPy arrays and by :func:`fcgpu.random.dropout_mask`
with ``xp=cupy``; importing it imports neither CuPy nor compiles anything.

* :mod:`fcgpu.cuda.ops`: the fused steps (same signatures as ``fcgpu.fused``).
* :mod:`fcgpu.cuda.module`: kernel sources, NVRTC builds and per-device caches.
"""
