"""Matrix products of CuPy arrays through cuBLAS itself, legal inside a CUDA-graph
capture.

Why not CuPy's ``@``: every CuPy product reaches cuBLAS through CuPy's wrapper, which
refuses to run while the current stream captures (``cupy_backends/cuda/libs/
cublas.pyx``, ``setStream``, lines 642-655 of v14.2.0: ``NotImplementedError('calling
cuBLAS API during stream capture is currently unsupported')``; CuPy issue #6290). cuBLAS
itself supports stream capture (the cuBLAS documentation, "CUDA Graphs Support"), so
fcgpu calls it directly, for every product of its layers, captured or not: the
CUDA-graph step runs the very calls the plain step runs.

* **Library.** The libcublas that CuPy uses, found by NVIDIA's ``cuda.pathfinder``
  (a dependency of CuPy 14; ``load_nvidia_dynamic_lib('cublas')`` returns the copy
  already loaded into the process when there is one, else the NVIDIA wheel's or the
  system's) and opened with :mod:`ctypes`; ``FCGPU_CUBLAS_LIBRARY=/path/libcublas.so``
  overrides the search. (Also weighed: nvmath-python's raw bindings, not installed with
  CuPy and not on our GPU machines; CuPy's cuTENSOR contractions, another library to
  install. Neither is needed for one GEMM entry point.)
* **Handles and workspaces.** One handle per thread and device (``cublasCreate``), and
  one workspace of :func:`workspace_bytes` per stream, allocated outside any capture
  with ``cupy.cuda.Memory`` (plain ``cudaMalloc``, so a CUDA-graph step's private pool
  never holds it) and kept for the life of the process. Before every product the
  handle is bound to the current stream (``cublasSetStream``, which also resets the
  workspace to cuBLAS's own pool) and then to that stream's workspace
  (``cublasSetWorkspace``): inside a capture cuBLAS then allocates nothing, the
  condition cuBLAS's documentation gives for graphs. A product on a stream that
  captures before it ever ran uncaptured is refused with a ``RuntimeError`` (its
  workspace would have to be allocated inside the capture).
* **Products.** ``cublasGemmEx`` with host-side ``alpha = 1``, ``beta = 0`` (captured
  by value) and compute type ``CUBLAS_COMPUTE_64F`` (float64), ``CUBLAS_COMPUTE_32F``
  (float32, matmul precision ``'highest'``) or ``CUBLAS_COMPUTE_32F_FAST_TF32``
  (float32, ``'high'``, compute capability 8.0 and later;
  :func:`fcgpu.backend.set_matmul_precision`).
* **What is guaranteed.** The plain and the captured step make the same
  ``cublasGemmEx`` calls: same handle settings, workspace size, compute type, shapes,
  leading dimensions and operand alignment (CuPy's allocations are 512-byte aligned).
  cuBLAS promises bit-wise identical results for the same call on GPUs of the same
  architecture and SM count with one stream active at a time (its documentation,
  "Results reproducibility"), so the two steps give the same bits. Against CuPy's own
  ``@`` (another handle and workspace, ``cublasSgemmEx``) the results agree to
  rounding, not bit for bit.
"""
from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from ..backend import BackendUnavailable, get_matmul_precision, is_cupy_array, require_cupy

__all__ = ["matmul", "tf32_enabled", "workspace_bytes", "library", "reset", "CublasError",
           "LIBRARY_ENV_VAR"]

LIBRARY_ENV_VAR = "FCGPU_CUBLAS_LIBRARY"

# cublas_api.h / library_types.h (CuPy's cupy_backends/cuda/libs/cublas.pxd and
# cupy_backends/cuda/api/_runtime_enum.pxd spell the same values)
OP_N, OP_T = 0, 1
CUDA_R_32F, CUDA_R_64F = 0, 1
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
GEMM_DEFAULT = -1
_INT_MAX = 2 ** 31 - 1

_TYPES = {np.dtype(np.float32): (CUDA_R_32F, ctypes.c_float),
          np.dtype(np.float64): (CUDA_R_64F, ctypes.c_double)}
_ONE = {CUDA_R_32F: ctypes.c_float(1.0), CUDA_R_64F: ctypes.c_double(1.0)}
_ZERO = {CUDA_R_32F: ctypes.c_float(0.0), CUDA_R_64F: ctypes.c_double(0.0)}

_STATUS = {0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED",
           3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
           8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
           13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
           15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}

_vp, _int, _size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
_PROTOTYPES = {  # name: argument types (every one returns cublasStatus_t, an int)
    "cublasCreate_v2": [ctypes.POINTER(_vp)],
    "cublasSetStream_v2": [_vp, _vp],
    "cublasSetWorkspace_v2": [_vp, _vp, _size],
    "cublasGemmEx": [_vp, _int, _int, _int, _int, _int, _vp, _vp, _int, _int, _vp, _int,
                     _int, _vp, _vp, _int, _int, _int, _int],
}


class CublasError(RuntimeError):
    """A cuBLAS call returned an error status."""


_lock = threading.Lock()
_lib = None
_local = threading.local()   # .handles: {device id: _Handle}
_capability = {}             # device id -> compute capability as an int (e.g. 90)


def _open_library():
    path = os.environ.get(LIBRARY_ENV_VAR)
    if path:
        return ctypes.CDLL(path)
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
    except ImportError as exc:
        raise BackendUnavailable(
            "cuBLAS: cuda.pathfinder is not installed (%s); CuPy 14 installs it, or set %s "
            "to libcublas's path" % (exc, LIBRARY_ENV_VAR)) from None
    try:
        return ctypes.CDLL(load_nvidia_dynamic_lib("cublas").abs_path)
    except Exception as exc:  # DynamicLibNotFoundError, OSError
        raise BackendUnavailable("cuBLAS could not be loaded: %s: %s (set %s to libcublas's "
                                 "path)" % (type(exc).__name__, exc, LIBRARY_ENV_VAR)) from None


def library():
    """The cuBLAS library (a :class:`ctypes.CDLL` with our prototypes), loaded once."""
    global _lib
    with _lock:
        if _lib is None:
            lib = _open_library()
            for name, argtypes in _PROTOTYPES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = argtypes, ctypes.c_int
            _lib = lib
        return _lib


def reset():
    """Forget the loaded library and this thread's handles (tests; a new
    ``FCGPU_CUBLAS_LIBRARY``). Handles are not destroyed: graphs may hold them."""
    global _lib
    with _lock:
        _lib = None
        _local.__dict__.clear()
        _capability.clear()


def _check(status, what):
    if status != 0:
        raise CublasError("%s failed: %s (%d)" % (what, _STATUS.get(status, "unknown status"),
                                                  status))


def _capability_of(cp, device):
    cc = _capability.get(device)
    if cc is None:
        cc = _capability[device] = int(cp.cuda.Device(device).compute_capability)
    return cc


def workspace_bytes(capability):
    """The workspace per stream: 32 MiB on compute capability 9.0 and later (Hopper,
    Blackwell), 4 MiB before (the sizes the cuBLAS documentation recommends for a
    user-provided workspace, "cublasSetWorkspace")."""
    return (32 if capability >= 90 else 4) << 20


class _Handle:
    """A cuBLAS handle of one thread on one device, with a workspace per stream."""

    def __init__(self, cp, lib, device):
        self.lib, self.device = lib, device
        self.nbytes = workspace_bytes(_capability_of(cp, device))
        self.workspaces = {}     # stream pointer -> cupy.cuda.Memory
        handle = _vp()
        _check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.ptr = handle.value

    def bind(self, cp, stream):
        """Bind the handle to ``stream`` and its workspace (allocated on first use,
        which must not be inside a capture)."""
        ws = self.workspaces.get(stream)
        if ws is None:
            if cp.cuda.runtime.streamIsCapturing(stream):
                raise RuntimeError(
                    "fcgpu: the first matrix product on stream 0x%x runs inside a CUDA-graph "
                    "capture, so its cuBLAS workspace would be allocated there; run the "
                    "captured work once uncaptured on that stream first" % stream)
            ws = self.workspaces[stream] = cp.cuda.Memory(self.nbytes)
        _check(self.lib.cublasSetStream_v2(self.ptr, stream), "cublasSetStream")
        _check(self.lib.cublasSetWorkspace_v2(self.ptr, ws.ptr, self.nbytes),
               "cublasSetWorkspace")


def _handle(cp):
    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    device = cp.cuda.runtime.getDevice()
    h = handles.get(device)
    if h is None:
        if cp.cuda.runtime.streamIsCapturing(cp.cuda.get_current_stream().ptr):
            raise RuntimeError("fcgpu: the first matrix product of this thread on device %d "
                               "runs inside a CUDA-graph capture (cublasCreate allocates); "
                               "run the captured work once uncaptured first" % device)
        h = handles[device] = _Handle(cp, library(), device)
    return h


def tf32_enabled(dtype, device=None):
    """Whether products of ``dtype`` use TF32 on ``device`` (default: the current
    one): float32, matmul precision ``'high'``, compute capability 8.0 or later."""
    if np.dtype(dtype) != np.float32 or get_matmul_precision() != "high":
        return False
    cp = require_cupy()
    return _capability_of(cp, cp.cuda.runtime.getDevice() if device is None else device) >= 80


def _operand(a, cp):
    """``(base, op, ld)``: ``a`` (2-D) as a C-contiguous base array read directly
    (``OP_N``) or transposed (``OP_T``: ``a`` is the transpose of a C-contiguous
    array, like ``x.T``); anything else is copied first."""
    if not a.flags.c_contiguous and a.T.flags.c_contiguous:
        base, op = a.T, OP_T
    else:
        base, op = (a if a.flags.c_contiguous else cp.ascontiguousarray(a)), OP_N
    return base, op, max(1, base.shape[1])


def _check_args(a, b, out):
    if not (is_cupy_array(a) and is_cupy_array(b)):
        raise TypeError("fcgpu.cuda.blas.matmul needs CuPy arrays, got %s and %s"
                        % (type(a).__name__, type(b).__name__))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError("matmul: shapes %s and %s do not chain (2-D, inner dimensions equal)"
                         % (tuple(a.shape), tuple(b.shape)))
    if a.dtype != b.dtype or np.dtype(a.dtype) not in _TYPES:
        raise ValueError("matmul: operands must be both float32 or both float64, got %s and %s"
                         % (a.dtype, b.dtype))
    if max(a.shape + b.shape) > _INT_MAX:
        raise ValueError("matmul: dimensions over 2^31 - 1 (%s, %s): cuBLAS's 32-bit "
                         "interface cannot take them" % (tuple(a.shape), tuple(b.shape)))
    shape = (a.shape[0], b.shape[1])
    if out is not None and (not is_cupy_array(out) or out.shape != shape
                            or out.dtype != a.dtype or not out.flags.c_contiguous):
        raise ValueError("matmul: out must be a C-contiguous CuPy array of shape %s and dtype "
                         "%s" % (shape, a.dtype))


def matmul(a, b, out=None):
    """``a @ b`` for 2-D CuPy arrays of one float dtype (transposed views such as
    ``x.T`` are read in place), by ``cublasGemmEx`` on the current stream; legal
    inside a CUDA-graph capture (see the module docstring). Returns ``out`` (a new
    C-contiguous array when not given)."""
    _check_args(a, b, out)
    cp = require_cupy()
    m, n, k = a.shape[0], b.shape[1], a.shape[1]
    if out is None:
        out = cp.empty((m, n), dtype=a.dtype)
    if m == 0 or n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    a_base, op_a, lda = _operand(a, cp)
    b_base, op_b, ldb = _operand(b, cp)
    ctype, _ = _TYPES[np.dtype(a.dtype)]
    compute = (COMPUTE_64F if ctype == CUDA_R_64F
               else COMPUTE_32F_FAST_TF32 if tf32_enabled(a.dtype) else COMPUTE_32F)
    h = _handle(cp)
    h.bind(cp, cp.cuda.get_current_stream().ptr)
    # cuBLAS is column-major: the row-major (m, n) result is the column-major (n, m)
    # matrix out^T = op(b)^T op(a)^T, and a row-major base read column-major is its
    # transpose, so b's base comes first with b's op, then a's.
    status = h.lib.cublasGemmEx(
        h.ptr, op_b, op_a, n, m, k, ctypes.addressof(_ONE[ctype]),
        b_base.data.ptr, ctype, ldb, a_base.data.ptr, ctype, lda,
        ctypes.addressof(_ZERO[ctype]), out.data.ptr, ctype, max(1, n), compute, GEMM_DEFAULT)
    _check(status, "cublasGemmEx(%dx%d @ %dx%d, %s)" % (m, k, k, n, a.dtype))
    return out
