"""Backend selection: the one module of fcgpu that imports CuPy.

The backend decides which array module new arrays (model parameters, data moved by
the Solver) are created with. Layer code never asks it: it uses the module of the
arrays it receives (:func:`get_array_module`).

* ``FCGPU_BACKEND=numpy|cupy|auto`` picks the backend at first use; ``auto`` (the
  default) takes CuPy when it imports and sees a device, else NumPy.
* :func:`set_backend` does the same from Python.
* Asking for ``cupy`` where it cannot run raises :class:`BackendUnavailable` with the
  cause (not installed, no driver, no device): never a silent fall back to the CPU.
* ``FCGPU_MATMUL_PRECISION=highest|high`` or :func:`set_matmul_precision` (PyTorch's
  switch, ``torch.set_float32_matmul_precision``): ``highest`` (the default) computes
  float32 matrix products in float32; ``high`` lets the GPU use TF32 tensor cores for
  them (compute capability 8.0 and later). NumPy's products, and float64 everywhere,
  are the same under both.

CuPy is imported lazily, at most once; the outcome of that probe is recorded and
reported by :func:`cupy_status`.
"""
from __future__ import annotations

import os
import sys

import numpy

from .errors import BackendUnavailable, ConfigError, DeviceOutOfMemory

__all__ = [
    "BackendUnavailable", "set_backend", "get_backend", "get_xp", "get_array_module",
    "is_cupy_array", "asnumpy", "to_backend", "require_cupy", "cupy_status",
    "device_name", "cpu_model", "synchronize", "MATMUL_PRECISIONS", "set_matmul_precision",
    "get_matmul_precision", "free_cached_memory", "device_out_of_memory",
]

ENV_VAR = "FCGPU_BACKEND"
CHOICES = ("numpy", "cupy", "auto")
PRECISION_ENV_VAR = "FCGPU_MATMUL_PRECISION"
# float32 matrix products: 'highest' in float32, 'high' may round inputs to TF32 on GPUs
MATMUL_PRECISIONS = ("highest", "high")


_cupy = None          # the cupy module once probed successfully
_cupy_error = None    # why cupy cannot run, once probed unsuccessfully
_probed = False
_backend = None       # "numpy" or "cupy" once resolved
_precision = None     # one of MATMUL_PRECISIONS once resolved


def _probe_cupy():
    """Import CuPy and look for a device, once. Returns the module or None."""
    global _cupy, _cupy_error, _probed
    if _probed:
        return _cupy
    _probed = True
    try:
        import cupy  # noqa: the only import of CuPy in fcgpu
    except ImportError as exc:
        _cupy_error = ("CuPy is not installed (%s); install fcgpu[cuda12] or "
                       "fcgpu[cuda13] for your CUDA driver" % exc)
        return None
    except Exception as exc:  # broken installs raise all sorts of things
        _cupy_error = "CuPy failed to import: %s: %s" % (type(exc).__name__, exc)
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        text = str(exc)
        if "InsufficientDriver" in text or "NoDriver" in text or "driver" in text.lower():
            _cupy_error = "no usable NVIDIA driver: %s" % text
        elif "NoDevice" in text:
            _cupy_error = "no CUDA device found: %s" % text
        else:
            _cupy_error = "CUDA runtime error: %s" % text
        return None
    if count < 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        _cupy_error = "no CUDA device visible" + (
            " (CUDA_VISIBLE_DEVICES=%r)" % visible if visible is not None else "")
        return None
    _cupy = cupy
    return cupy


def cupy_status():
    """``(available, reason)``: whether CuPy can run here and, if not, why."""
    mod = _probe_cupy()
    return (mod is not None, None if mod is not None else _cupy_error)


def require_cupy():
    """Return the cupy module or raise :class:`BackendUnavailable` naming the cause."""
    mod = _probe_cupy()
    if mod is None:
        raise BackendUnavailable("backend 'cupy' is unavailable: " + _cupy_error)
    return mod


def _resolve(name):
    name = (name or "auto").strip().lower()
    if name not in CHOICES:
        raise ConfigError("unknown backend %r: choose one of %s" % (name, ", ".join(CHOICES)))
    if name == "numpy":
        return "numpy"
    if name == "cupy":
        require_cupy()
        return "cupy"
    return "cupy" if _probe_cupy() is not None else "numpy"


def set_backend(name):
    """Select ``'numpy'``, ``'cupy'`` or ``'auto'``; returns the array module chosen."""
    global _backend
    _backend = _resolve(name)
    return get_xp()


def get_backend():
    """The resolved backend name, ``'numpy'`` or ``'cupy'`` (reads FCGPU_BACKEND once)."""
    global _backend
    if _backend is None:
        try:
            _backend = _resolve(os.environ.get(ENV_VAR, "auto"))
        except ConfigError as exc:
            raise ConfigError("%s: %s" % (ENV_VAR, exc)) from None
    return _backend


def _check_precision(name):
    if not isinstance(name, str) or name.strip().lower() not in MATMUL_PRECISIONS:
        raise ConfigError("unknown matmul precision %r: choose one of %s"
                         % (name, ", ".join(MATMUL_PRECISIONS)))
    return name.strip().lower()


def set_matmul_precision(name):
    """Select ``'highest'`` (float32 products in float32, the default) or ``'high'``
    (the GPU may use TF32 for float32 products, on compute capability 8.0 and later);
    returns the previous setting. Read by :mod:`fcgpu.cuda.blas` at every product, so
    it applies from the next one on (a captured CUDA-graph step is recaptured)."""
    global _precision
    previous = get_matmul_precision()
    _precision = _check_precision(name)
    return previous


def get_matmul_precision():
    """The matmul precision, ``'highest'`` or ``'high'`` (reads FCGPU_MATMUL_PRECISION
    once)."""
    global _precision
    if _precision is None:
        try:
            _precision = _check_precision(os.environ.get(PRECISION_ENV_VAR, "highest"))
        except ConfigError as exc:
            raise ConfigError("%s: %s" % (PRECISION_ENV_VAR, exc)) from None
    return _precision


def get_xp():
    """The array module of the selected backend."""
    return _cupy if get_backend() == "cupy" else numpy


def is_cupy_array(a):
    """True for a ``cupy.ndarray``; never imports CuPy."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(a, cp.ndarray)


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (like
    ``cupy.get_array_module``, but without importing CuPy)."""
    cp = sys.modules.get("cupy")
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return numpy


def asnumpy(a):
    """A NumPy copy/view of ``a`` (a CuPy array is copied to the host)."""
    if is_cupy_array(a):
        return a.get()
    return numpy.asarray(a)


def to_backend(a, xp, dtype=None):
    """``a`` as an array of module ``xp`` (copying across devices when needed)."""
    if xp is numpy:
        out = asnumpy(a)
        return out if dtype is None else out.astype(dtype, copy=False)
    return xp.asarray(a, dtype=dtype)


def device_name(xp=None):
    """The GPU's name as the driver reports it (CuPy), or the CPU model (NumPy)."""
    xp = get_xp() if xp is None else xp
    if xp is not numpy:
        dev = xp.cuda.Device()
        props = xp.cuda.runtime.getDeviceProperties(dev.id)
        name = props.get("name", b"GPU")
        return name.decode() if isinstance(name, bytes) else str(name)
    return cpu_model()


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "CPU"


def synchronize(xp):
    """Wait for queued device work (a no-op on NumPy)."""
    if xp is not numpy:
        xp.cuda.get_current_stream().synchronize()


def free_cached_memory():
    """Give the blocks CuPy's memory pools keep cached back to the device (after an
    out-of-memory error, say). A no-op where nothing has imported CuPy."""
    cp = sys.modules.get("cupy")
    if cp is not None:
        try:
            cp.get_default_memory_pool().free_all_blocks()
            cp.get_default_pinned_memory_pool().free_all_blocks()
        except Exception:
            pass


def _size(n):
    """Bytes in words: ``512.0 MiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "bytes" else "%.1f %s" % (n, unit)
        n /= 1024.0


def device_out_of_memory(exc, hint):
    """``exc`` as a one-line :class:`DeviceOutOfMemory` if it is CuPy's out-of-memory
    error, else None. The message gives the size asked for, the device's free and total
    memory (read after CuPy's cached blocks are given back: :func:`free_cached_memory`)
    and ``hint`` (what to make smaller).

    CuPy's memory pool raises ``cupy.cuda.memory.OutOfMemoryError`` (a MemoryError),
    ``'Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).'``
    (cupy/cuda/memory.pyx:55-78 in v14.2.0, raised at :1479, :1528, :1560); an
    allocation outside the pool (``cupy.cuda.Memory``) raises ``CUDARuntimeError``
    ``'cudaErrorMemoryAllocation: out of memory'`` (cupy_backends/cuda/api/runtime.pyx:
    128-135), whose size CuPy does not say."""
    import re
    cp = sys.modules.get("cupy")
    if cp is None or isinstance(exc, DeviceOutOfMemory):
        return None
    try:
        pool_error = cp.cuda.memory.OutOfMemoryError
        runtime_error = cp.cuda.runtime.CUDARuntimeError
    except AttributeError:  # a stand-in without them: not CuPy's error
        return None
    if isinstance(exc, pool_error):
        m = re.search(r"allocating ([\d,]+) bytes", str(exc))
        n = int(m.group(1).replace(",", "")) if m else None
        asked = ("an unknown size" if n is None else _size(n) if n < 1024
                 else "%s (%s bytes)" % (_size(n), m.group(1)))
    elif isinstance(exc, runtime_error) and str(exc).startswith("cudaErrorMemoryAllocation"):
        asked = "an allocation outside CuPy's pool (size not reported)"
    else:
        return None
    free_cached_memory()
    try:
        free, total = cp.cuda.runtime.memGetInfo()
        memory = ("the device has %s free of %s (after freeing CuPy's cached blocks)"
                  % (_size(free), _size(total)))
    except Exception as e:  # (the device may be in no state to answer)
        memory = ("the device's free and total memory could not be read (%s)"
                  % (str(e) or type(e).__name__))
    return DeviceOutOfMemory("out of GPU memory: asked for %s; %s; %s" % (asked, memory, hint))
