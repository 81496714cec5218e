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
import struct
import subprocess
import tempfile
from pathlib import Path

import toolchain as tc

SOURCE = tc.HOST / "fake_cublas.c"
LOG_FIELDS = ("transa", "transb", "m", "n", "k", "A", "lda", "B", "ldb", "C", "ldc",
              "type", "compute", "stream", "workspace_bytes", "capturing", "alpha", "beta")


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
    """The product calls made so far, as dicts of :data:`LOG_FIELDS` (alpha and beta
    as floats)."""
    rows = []
    buf = (ctypes.c_longlong * len(LOG_FIELDS))()
    for i in range(lib.fake_cublas_log_size()):
        assert lib.fake_cublas_log_get(i, buf) == 0
        row = dict(zip(LOG_FIELDS, list(buf)))
        for key in ("alpha", "beta"):
            row[key] = struct.unpack("<d", struct.pack("<q", row[key]))[0]
        rows.append(row)
    return rows


def run_logged(lib, row, stream):
    """Run one logged product again on ``stream`` (a replay of a captured graph that
    has no Python body to run again)."""
    handle = ctypes.c_void_p()
    assert lib.cublasCreate_v2(ctypes.byref(handle)) == 0
    ws = ctypes.create_string_buffer(row["workspace_bytes"] + 256)
    lib.cublasSetStream_v2(handle, ctypes.c_void_p(stream))
    lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(ctypes.addressof(ws) + (-ctypes.addressof(
        ws)) % 256), ctypes.c_size_t(row["workspace_bytes"]))
    scalar = ctypes.c_float if row["type"] == 0 else ctypes.c_double
    alpha, beta = scalar(row["alpha"]), scalar(row["beta"])
    i = ctypes.c_int
    p = ctypes.c_void_p
    status = lib.cublasGemmEx(handle, i(row["transa"]), i(row["transb"]), i(row["m"]),
                              i(row["n"]), i(row["k"]), ctypes.byref(alpha), p(row["A"]),
                              i(row["type"]), i(row["lda"]), p(row["B"]), i(row["type"]),
                              i(row["ldb"]), ctypes.byref(beta), p(row["C"]), i(row["type"]),
                              i(row["ldc"]), i(row["compute"]), i(-1))
    lib.cublasDestroy_v2(handle)
    assert status == 0, status


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
