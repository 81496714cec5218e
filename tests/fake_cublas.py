"""The host stand-in for libcublas (tests/host/fake_cublas.c), built once per session,
and the helpers that point :mod:`fcgpu.cuda.blas` at it.

``fcgpu.cuda.blas`` opens whatever ``FCGPU_CUBLAS_LIBRARY`` names, with its own ctypes
prototypes; pointed at this library, its calls, argument types and column-major
bookkeeping run for real on host memory (the stand-in for CuPy keeps its "device"
arrays there).
"""
from __future__ import annotations

import ctypes
import functools
import subprocess
import tempfile
from pathlib import Path

import toolchain as tc

SOURCE = tc.HOST / "fake_cublas.c"
LOG_FIELDS = ("transa", "transb", "m", "n", "k", "A", "lda", "B", "ldb", "C", "ldc",
              "type", "compute", "stream", "workspace_bytes", "capturing")


@functools.lru_cache(maxsize=None)
def build():
    """Compile the stand-in (C, host compiler) and load it; the path is ``.path``."""
    out_dir = Path(tempfile.mkdtemp(prefix="fcgpu-fake-cublas-"))
    out = out_dir / "libfake_cublas.so"
    cc = tc.host_compiler().replace("g++", "gcc").replace("clang++", "clang")
    cmd = [cc, "-std=c11", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
           str(SOURCE), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, "fake cuBLAS build failed:\n%s" % res.stderr
    lib = ctypes.CDLL(str(out))
    lib.fake_cublas_log_get.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_longlong)]
    lib.fake_cublas_set_capturing.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.path = out
    return lib


def log(lib):
    """The product calls made so far, as dicts of :data:`LOG_FIELDS`."""
    rows = []
    buf = (ctypes.c_longlong * len(LOG_FIELDS))()
    for i in range(lib.fake_cublas_log_size()):
        assert lib.fake_cublas_log_get(i, buf) == 0
        rows.append(dict(zip(LOG_FIELDS, list(buf))))
    return rows


def install(monkeypatch):
    """Point fcgpu.cuda.blas at the stand-in for the calling test; returns it."""
    import threading
    from fcgpu.cuda import blas
    lib = build()
    monkeypatch.setenv(blas.LIBRARY_ENV_VAR, str(lib.path))
    # fresh module state for the test, and the real one back after it (a GPU test
    # later in the same process must not meet a handle of the stand-in)
    monkeypatch.setattr(blas, "_lib", None)
    monkeypatch.setattr(blas, "_local", threading.local())
    monkeypatch.setattr(blas, "_capability", {})
    lib.fake_cublas_log_clear()
    return lib
