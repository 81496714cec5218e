"""CPU-side checks of the CUDA kernels (CI has no GPU).

(a) every ``kernels/*.cu`` compiles with the local ``nvcc`` for sm_90 with
    ``-Xptxas -v`` and no register spills, and instantiates exactly the kernels that
    ``fcgpu.cuda`` asks NVRTC for, with the parameter lists the host build has; the
    sources as ``fcgpu.cuda.module`` expands them compile with NVRTC and every name
    expression resolves (what ``cupy.RawModule`` does at run time), and the PTX gives
    each kernel's ``__launch_bounds__``. (The builds are session fixtures, see
    tests/toolchain.py; FCGPU_REQUIRE_NVCC=1 makes a missing tool a failure.)
(b) ``kernels/philox.cuh`` built by the host C++ compiler reproduces the Random123
    known-answer vectors, the keep thresholds, and ``fcgpu.random.dropout_mask`` /
    ``dropout_mask_reference`` on large arrays;
(d) ``fcgpu.cuda.ops`` against a stand-in for CuPy: every launch's arguments, grid
    and block checked against the kernel's parameter list and launch bounds;
(e) the same with the kernels themselves built for the host (tests/host/cuda_emu.h)
    running each launch: results against the float64 xp references of
    ``fcgpu.fused`` (bit-identical for dropout), over chunk layouts of several device
    sizes, and past 2^32 elements in windows (f).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import toolchain as tc
from fcgpu import fused
from fcgpu import random as frandom
from fcgpu.cuda import module as cmod
from fcgpu.cuda.ops import chunk_layout
from gpu_util import (assert_close, bits_equal, bn_backward_terms, bn_forward_terms,
                      bn_running_terms, mask_window)
from helpers import check_exact_steps_on_edge_values

KERNELS = tc.KERNELS
HOST = tc.HOST


# ----------------------------------------------------------------- (a) nvcc, NVRTC
# (the builds themselves, every architecture and -ftz=true: tests/test_kernels_nvcc.py)

def _nvcc_signatures(nvcc_reports, fname):
    _, info = nvcc_reports[fname]
    return dict(tc.split_signature(p) for p in tc.demangle(list(info)).values())


def test_emulator_symbols_have_nvccs_signatures(nvcc_reports, kernel_signatures):
    """The launch checks take parameter lists from the host build's symbols (no nvcc
    needed); where nvcc is present they must be the device build's."""
    nvcc = {}
    for fname, _ in cmod.MODULES.values():
        nvcc.update(_nvcc_signatures(nvcc_reports, fname))
    assert kernel_signatures == nvcc


def test_emulator_symbols_cover_every_kernel(kernel_signatures):
    assert set(kernel_signatures) == tc.all_kernel_names()
    for name, sig in kernel_signatures.items():
        assert sig and all(sig), (name, sig)


def test_ptx_maxntid_parser():
    ptx = (".visible .entry _Z1a(\n\t.param .u64 p\n)\n.maxntid 256, 1, 1\n"
           ".minnctapersm 8\n{\n\tret;\n}\n"
           ".visible .entry _Z1b(\n)\n.maxntid 32, 8, 2\n{\n}\n"
           ".visible .entry _Z1c(\n)\n{\n.maxntid 64, 1, 1\n}\n")
    assert tc.ptx_maxntid(ptx) == {"_Z1a": 256, "_Z1b": 512, "_Z1c": None}


def test_launch_bounds_from_ptx(launch_bounds):
    """Every kernel declares __launch_bounds__; the emulated launches (section (d))
    must fit them, as a GPU requires."""
    if launch_bounds is None:
        tc.unavailable("libnvrtc not found (pip install nvidia-cuda-nvrtc): launch bounds "
                       "not checked")
    assert set(launch_bounds) == tc.all_kernel_names()
    missing = sorted(k for k, b in launch_bounds.items() if b is None)
    assert not missing, "kernels without __launch_bounds__: %s" % missing
    assert all(1 <= b <= 1024 for b in launch_bounds.values()), launch_bounds
    assert launch_bounds["fcgpu_graph_advance<float>"] == 32
    assert launch_bounds["fcgpu_bn_stats<double>"] == 256


# ----------------------------------------------------------------- host builds

def _build(tmp_dir, source, name):
    exe = Path(tmp_dir) / name
    cmd = [tc.host_compiler(), "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror",
           "-ffp-contract=off", "-I%s" % KERNELS, str(HOST / source), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, "host build of %s failed:\n%s" % (source, res.stderr)
    return exe


@pytest.fixture(scope="module")
def philox_exe(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("philox"), "philox_kat.cpp", "philox_kat")


# ----------------------------------------------------------------- (b) Philox on the host

KAT = [
    ("00000000 00000000 00000000 00000000 00000000 00000000",
     "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff",
     "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0",
     "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def test_host_philox_known_answers(philox_exe):
    out = subprocess.run([str(philox_exe)], capture_output=True, text=True, check=True).stdout
    lines = [ln.split(" -> ") for ln in out.strip().splitlines()]
    assert [(a.strip(), b.strip()) for a, b in lines] == KAT
    # and the xp reference agrees on the same vectors
    for inp, exp in KAT:
        words = [int(w, 16) for w in inp.split()]
        r = frandom.philox4x32_10(np.array(words[:4], np.uint32), np.array(words[4:], np.uint32))
        assert " ".join("%08x" % v for v in r) == exp


def test_host_keep_threshold_matches_python(philox_exe):
    ps = [1e-9, 0.1, 0.25, 0.3, 0.5, 0.8, 0.9, 1.0 - 2 ** -40, 1.0 - 2 ** -53, 1.0]
    out = subprocess.run([str(philox_exe), "threshold"] + [repr(p) for p in ps],
                         capture_output=True, text=True, check=True).stdout.split()
    for p, t in zip(ps, out):
        expect = frandom.keep_threshold(p)
        assert int(t) == (1 << 32 if expect is None else expect), p


MASK_CASES = [
    # (n, seed, stream, p)
    (1_000_003, 0, 0, 0.5),
    (1_000_000, 123, 7, 0.8),
    (999_999, 2 ** 32 + 5, 2 ** 33 + 1, 0.3),
    (1_000_001, 2 ** 64 - 1, 2 ** 64 - 2, 0.9),
]


@pytest.mark.parametrize("n,seed,stream,p", MASK_CASES)
def test_host_philox_mask_matches_python(philox_exe, n, seed, stream, p):
    t = frandom.keep_threshold(p)
    res = subprocess.run([str(philox_exe), "mask", str(n), str(seed), str(stream), str(t)],
                         capture_output=True, check=True)
    host = np.frombuffer(res.stdout, dtype=np.uint8)
    assert host.size == n
    host = host.astype(bool)
    compiled = fused.dropout_mask((n,), p, seed, stream)
    ref = frandom.dropout_mask_reference((n,), p, seed, stream)
    assert np.array_equal(host, ref)
    assert np.array_equal(compiled, ref)
    assert abs(host.mean() - p) < 5e-3


@pytest.mark.parametrize("start", [0, 5, 2 ** 31 - 6, 2 ** 32 - 3, 2 ** 34 - 7, 2 ** 40 + 1])
def test_host_philox_window_far_elements(philox_exe, start):
    """Elements past 2^31, 2^32 and 2^34 (block counters past 2^32 use the high
    counter word): the host header equals the xp window helper of the GPU tests."""
    n, seed, stream, p = 4099, 2 ** 33 + 9, 2 ** 32 + 4, 0.6
    t = frandom.keep_threshold(p)
    res = subprocess.run([str(philox_exe), "window", str(start), str(n), str(seed), str(stream),
                          str(t)], capture_output=True, check=True)
    host = np.frombuffer(res.stdout, dtype=np.uint8).astype(bool)
    assert np.array_equal(host, mask_window(start, start + n, p, seed, stream))


def test_mask_window_matches_reference():
    ref = frandom.dropout_mask_reference((10_007,), 0.45, 2 ** 50, 3)
    for a, b in [(0, 10_007), (1, 2), (3, 9), (4, 8), (4097, 10_007), (10_006, 10_007)]:
        assert np.array_equal(mask_window(a, b, 0.45, 2 ** 50, 3), ref[a:b]), (a, b)


DTYPES = [np.float32, np.float64]


def test_chunk_layout_covers_rows():
    for n in (1, 2, 63, 64, 65, 490, 4097, 65536, 10 ** 6):
        for d in (1, 31, 32, 500, 4096):
            for sms in (1, 8, 132):
                r, g = chunk_layout(n, d, sms)
                assert r >= 1 and 1 <= g <= 65535
                assert (g - 1) * r < n <= g * r, (n, d, sms, r, g)


# ----------------------------------------------------------------- (d) launch arguments
# fcgpu.cuda.ops run against a stand-in for CuPy (NumPy-backed arrays, kernels that
# only check their launch): every launch must pass exactly the kernel's parameter
# list (count, pointer dtypes, 64-bit integers, float/double scalars by value; read
# from the emulator library's symbols), a valid grid and a block within the kernel's
# __launch_bounds__ (from NVRTC's PTX), arrays large enough and aligned where the
# vector path needs it.

class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class _FakeDevice:
    id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _uses_cublas(a, b):
    """Whether CuPy computes the product of ``a`` and ``b`` with cuBLAS
    (``cupy/_core/_routines_linalg.pyx`` v14.2.0: ``dot`` and ``matmul`` up to 2-D go
    to ``tensordot_core``, which returns early for empty operands (lines 557-561),
    reduces with its own kernels when both sides are vectors, m == n == 1 (lines
    566-578), uses its own integer kernels (line 615), and otherwise calls cuBLAS;
    ``matmul`` beyond 2-D uses cuBLAS's batched GEMMs)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 0 or b.ndim == 0 or a.size == 0 or b.size == 0:
        return False
    if np.result_type(a, b).kind not in "fc":
        return False
    k = a.shape[-1]
    n = a.size // k
    m = b.size // k
    return not (n == 1 and m == 1)


def _flush(a):
    """float32 subnormals to (signed) zero, as CuPy's -ftz=true kernels do."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        tiny = np.abs(a) < np.finfo(np.float32).tiny
        if tiny.any():
            a = np.where(tiny, np.copysign(np.float32(0), a), a).astype(np.float32)
    elif isinstance(a, np.float32) and abs(a) < np.finfo(np.float32).tiny:
        a = np.copysign(np.float32(0), a)
    return a


class FakeArray(np.ndarray):
    """A "device" array of the stand-in for CuPy (host memory). Two class-level
    switches make it behave more like CuPy where a test asks for it:

    * ``library_guard(library)``: called before an operation that CuPy runs through
      one of its library wrappers (products through cuBLAS); it raises where CuPy
      would (tests/test_cuda_graph.py: while the current stream captures);
    * ``flush_subnormals``: float32 elementwise operations and reductions flush
      subnormal inputs and results to zero, as CuPy's kernels do (CuPy compiles every
      kernel with ``-ftz=true``: ``cupy/cuda/compiler.py`` v14.2.0 line 667); products
      (cuBLAS) do not flush.
    """

    library_guard = None
    flush_subnormals = False

    def _product(self, a, b, f):
        if FakeArray.library_guard is not None and _uses_cublas(a, b):
            FakeArray.library_guard("cuBLAS")
        out = f(np.asarray(a).view(np.ndarray), np.asarray(b).view(np.ndarray))
        return np.asarray(out).view(FakeArray)

    def __matmul__(self, other):
        return self._product(self, other, np.matmul)

    def __rmatmul__(self, other):
        return self._product(other, self, np.matmul)

    def dot(self, other, out=None):
        assert out is None
        return self._product(self, other, np.dot)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul and method == "__call__":
            if FakeArray.library_guard is not None and _uses_cublas(*inputs[:2]):
                FakeArray.library_guard("cuBLAS")
        flush = FakeArray.flush_subnormals and ufunc is not np.matmul and method != "at"
        plain = lambda x: x.view(np.ndarray) if isinstance(x, FakeArray) else x  # noqa: E731
        args = [_flush(plain(x)) if flush else plain(x) for x in inputs]
        outs = kwargs.get("out")
        if outs is not None:
            kwargs["out"] = tuple(plain(o) for o in outs)
        result = getattr(ufunc, method)(*args, **kwargs)
        if outs is not None:
            for o in outs:
                if flush and isinstance(o, np.ndarray) and o.dtype == np.float32:
                    o.view(np.ndarray)[...] = _flush(o.view(np.ndarray))
            return outs[0] if len(outs) == 1 else outs
        results = result if isinstance(result, tuple) else (result,)
        results = tuple(_flush(r) if flush else r for r in results)
        # (CuPy returns 0-d arrays where NumPy returns scalars)
        results = tuple(np.asarray(r).view(FakeArray) if isinstance(r, (np.ndarray, np.generic))
                        else r for r in results)
        return results if isinstance(result, tuple) else results[0]

    @property
    def data(self):
        return _Ptr(self.__array_interface__["data"][0])

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if not isinstance(out, np.ndarray):  # one element: CuPy gives a 0-d device array
            out = super().__getitem__((key if isinstance(key, tuple) else (key,)) + (Ellipsis,))
        return out

    @property
    def device(self):
        return _FakeDevice()


def _fake(a):
    return np.asarray(a).view(FakeArray)


_GUARD = 64  # elements of canary on each side of every array the stand-in allocates


class _Guards:
    """Arrays allocated with canaries around them, checked after every launch."""

    def __init__(self):
        self.blocks = []

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        raw = np.empty((n + 2 * _GUARD) * dtype.itemsize + 256, dtype=np.uint8)
        off = (-raw.ctypes.data) % 256  # 256-byte aligned, like CuPy's pool
        buf = raw[off:off + (n + 2 * _GUARD) * dtype.itemsize].view(dtype)
        buf[...] = np.nan if dtype.kind == "f" else 0xA5
        canary = buf[:_GUARD].copy()
        self.blocks.append((buf, canary, n))
        return buf[_GUARD:_GUARD + n].reshape(shape).view(FakeArray)

    def check(self, what):
        for buf, canary, n in self.blocks:
            for part in (buf[:_GUARD], buf[_GUARD + n:]):
                assert np.array_equal(part.view(np.uint8), canary.view(np.uint8)), \
                    "%s wrote outside an array" % what


def _make_fake_cupy(guards=None):
    import types
    guards = guards or _Guards()
    fake = types.ModuleType("cupy")
    fake.ndarray = FakeArray

    def empty(shape, dtype=float):
        return guards.empty(shape, dtype)

    def ascontiguousarray(a, dtype=None):
        a = np.asarray(a, dtype=dtype)
        out = guards.empty(a.shape, a.dtype)
        out[...] = a
        return out

    fake.empty = empty
    fake.ones = lambda shape, dtype=float: _fake(np.ones(shape, dtype=dtype))
    fake.asarray = lambda a, dtype=None: a if (isinstance(a, FakeArray) and (
        dtype is None or a.dtype == dtype)) else ascontiguousarray(a, dtype)
    def strict_ascontiguousarray(a, dtype=None):
        # cupy/_core/core.pxd v14.2.0 line 101: ``cpdef _ndarray_base
        # ascontiguousarray(_ndarray_base a, dtype=*)``: Cython refuses anything else
        if not isinstance(a, FakeArray):
            raise TypeError("Argument 'a' has incorrect type (expected "
                            "cupy._core.core._ndarray_base, got %s)" % type(a).__name__)
        if a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
            return a
        return ascontiguousarray(a, dtype)
    fake.ascontiguousarray = strict_ascontiguousarray
    fake.asnumpy = lambda a: np.array(a).view(np.ndarray)
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0))
    fake.guards = guards
    return fake


_PTR_DTYPES = {"float": np.float32, "double": np.float64, "unsigned char": np.uint8,
               "unsigned long long": np.uint64, "long long": np.int64}


def _null_allowed(name, k, sig):
    """Null pointer arguments the kernels accept: the running statistics of the
    batchnorm finalize (last two), and the dropout stream pointer of the flat and
    per-column passes (last; null = the stream by value)."""
    if name.startswith("fcgpu_bn_stats_finalize"):
        return k >= len(sig) - 2
    if name.startswith(("fcgpu_flat<", "fcgpu_col_vec<", "fcgpu_col_flat<")):
        return k == len(sig) - 1
    return False


class FakeKernel:
    """A launch checked against kernel ``name``'s parameter list ``sig`` and, when
    known, its ``__launch_bounds__`` (``max_threads``); run on the host build of the
    kernel when ``emu`` is given."""

    def __init__(self, name, sig, log, emu=None, guards=None, max_threads=None):
        self.name, self.sig, self.log = name, sig, log
        self.emu, self.guards = emu, guards
        self.max_threads = max_threads

    def __call__(self, grid, block, args, **kwargs):
        name, sig = self.name, self.sig
        assert not kwargs, kwargs
        assert isinstance(grid, tuple) and isinstance(block, tuple), name
        assert 1 <= len(grid) <= 3 and 1 <= len(block) <= 3, name
        assert all(isinstance(v, int) and v >= 1 for v in grid + block), (name, grid, block)
        assert int(np.prod(block)) <= 1024, (name, block)
        if self.max_threads is not None:
            assert int(np.prod(block)) <= self.max_threads, \
                "%s launched with block %s, over its __launch_bounds__ of %d threads" \
                % (name, block, self.max_threads)
        assert grid[0] < 2 ** 31 and all(v <= 65535 for v in grid[1:]), (name, grid)
        assert len(args) == len(sig), (name, len(args), sig)
        for k, (ptype, arg) in enumerate(zip(sig, args)):
            if ptype.endswith("*"):
                base = ptype[:-1].replace(" const", "").strip()
                if isinstance(arg, np.uint64):
                    assert int(arg) == 0 and _null_allowed(name, k, sig), \
                        (name, k, "null pointer not allowed here")
                    continue
                assert isinstance(arg, FakeArray), (name, k, type(arg))
                want = _PTR_DTYPES[base]
                assert arg.dtype == want or (want == np.uint8 and arg.dtype == np.bool_), \
                    (name, k, arg.dtype, ptype)
                assert arg.flags.c_contiguous, (name, k)
            elif ptype == "unsigned long long":
                assert isinstance(arg, np.uint64), (name, k, type(arg))
            elif ptype == "float":
                assert isinstance(arg, np.float32), (name, k, type(arg))
            elif ptype == "double":
                assert isinstance(arg, np.float64), (name, k, type(arg))
            else:
                raise AssertionError("unexpected parameter type %r in %s" % (ptype, name))
        self._check_semantics(grid, block, args)
        self.log.append((name, grid, block))
        if self.emu is not None:
            self._emulate(grid, block, args)

    def _emulate(self, grid, block, args):
        vals = []
        for arg in args:
            if isinstance(arg, FakeArray):
                vals.append(ctypes.c_void_p(arg.data.ptr))
            elif isinstance(arg, np.uint64):
                vals.append(ctypes.c_uint64(int(arg)))  # (a null pointer too: 8 zero bytes)
            elif isinstance(arg, np.float32):
                vals.append(ctypes.c_float(float(arg)))
            else:
                vals.append(ctypes.c_double(float(arg)))
        params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        g = (grid + (1, 1))[:3]
        b = (block + (1, 1))[:3]
        rc = self.emu.emu_launch(self.name.encode(), *[ctypes.c_uint(v) for v in g + b], params)
        assert rc == 0, "emulator has no kernel %r" % self.name
        if self.guards is not None:
            self.guards.check(self.name)

    def _check_semantics(self, grid, block, args):
        name = self.name
        aligned = lambda *arrs: all(a.data.ptr % 16 == 0 for a in arrs)  # noqa: E731
        if name.startswith("fcgpu_flat<"):
            a, b, y, n = args[0], args[1], args[2], int(args[3])
            op, vec = name.split(",")[1].strip(), name.split(",")[2].strip(" >")
            assert a.size >= n and y.size >= n and (op != "3" or b.size >= n)
            if vec == "true":
                assert aligned(a, b, y), name
            assert grid[0] * block[0] >= 1
        elif name == "fcgpu_dropout_mask":
            assert args[0].size >= int(args[1])
        elif name.startswith(("fcgpu_bn_stats<", "fcgpu_bn_bwd_sums<")):
            n_rows, d, r = (int(v) for v in (args[-6], args[-5], args[-4])) \
                if name.startswith("fcgpu_bn_bwd_sums") else (int(args[1]), int(args[2]), int(args[3]))
            g = (n_rows + r - 1) // r
            assert block == (32, 8), (name, block)
            assert grid == ((d + 31) // 32, g), (name, grid, d, g)
            assert args[-1].size >= g * d and args[-2].size >= g * d
            for arr in args[:-2]:
                if isinstance(arr, FakeArray) and arr.ndim == 2:
                    assert arr.shape == (n_rows, d)
        elif name.startswith(("fcgpu_col_vec<", "fcgpu_col_flat<")):
            a, b, c, y = args[:4]
            n_rows, d = int(args[4]), int(args[5])
            for arr in (a, b, c, y):
                assert arr.size >= n_rows * d
            for par in args[6:10]:
                assert par.size >= d
            if name.startswith("fcgpu_col_vec<"):
                assert d % 4 == 0 and aligned(a, b, c, y), name
                assert grid[0] * block[0] >= d // 4
                assert len(block) == 2 and block[0] * block[1] == 256
        elif name.endswith("finalize<float>") or name.endswith("finalize<double>") \
                or name.startswith("fcgpu_bn_infer_coef"):
            assert grid[0] * block[0] >= int(args[2] if name.startswith("fcgpu_bn_infer") else
                                             args[3])


def _install_fake_cuda(sigs, bounds, monkeypatch, emu=None):
    from fcgpu.cuda import ops
    log = []
    fake = _make_fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(ops, "_cp", lambda: fake)
    monkeypatch.setattr(ops, "sm_count", lambda: 3)
    monkeypatch.setattr(ops, "blocks_per_sm", lambda name, threads: 2)

    def get_kernel(name):
        assert name in sigs, "no compiled kernel named %r" % name
        assert any(name in names for _, names in cmod.MODULES.values()), name
        return FakeKernel(name, sigs[name], log, emu, fake.guards,
                          None if bounds is None else bounds[name])
    monkeypatch.setattr(ops, "get_kernel", get_kernel)
    return ops, log, fake


@pytest.fixture
def fake_cuda(kernel_signatures, launch_bounds, monkeypatch):
    ops, log, _ = _install_fake_cuda(kernel_signatures, launch_bounds, monkeypatch)
    return ops, log


@pytest.fixture
def emu_cuda(kernel_signatures, launch_bounds, monkeypatch, emu_lib):
    ops, log, _ = _install_fake_cuda(kernel_signatures, launch_bounds, monkeypatch, emu_lib)
    return ops, log


def _misaligned(shape, dtype, rng):
    base = rng.standard_normal(int(np.prod(shape)) + 1).astype(dtype)
    return _fake(base[1:].reshape(shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_launch_arguments_flat(fake_cuda, dtype):
    ops, log = fake_cuda
    rng = np.random.default_rng(0)
    cases = [_fake(rng.standard_normal(s).astype(dtype)) for s in [(1,), (3,), (5, 7), (64, 4)]]
    cases += [_misaligned((13,), dtype, rng), _fake(rng.standard_normal((6, 8)).astype(dtype).T)]
    for x in cases:
        for p in (0.5, 1.0):
            log.clear()
            out, mask = ops.dropout_forward(x, p, 2 ** 63, 2 ** 40)
            assert mask is None and out.shape == x.shape and out.dtype == x.dtype
            dx = ops.dropout_backward(x, p, 1, 2, mask=np.zeros(x.shape, bool))
            assert dx.shape == x.shape
            y = ops.relu_dropout_forward(x, p, 3, 4)
            assert y.shape == x.shape
            dx = ops.relu_dropout_backward(x, _fake(np.abs(np.asarray(x))), p)
            assert dx.shape == x.shape
            if p < 1:
                assert {n.split("<")[0] for n, _, _ in log} == {"fcgpu_flat"}
        m = ops.dropout_mask(x.shape, 0.3, 5, 6)
        assert m.dtype == np.bool_ and m.shape == x.shape
    # misaligned input takes the scalar path
    log.clear()
    ops.dropout_forward(_misaligned((1001,), dtype, rng), 0.5, 1, 2)
    assert log[-1][0].endswith("false>")
    log.clear()
    ops.dropout_forward(_fake(rng.standard_normal(1001).astype(dtype)), 0.5, 1, 2)
    assert log[-1][0].endswith("true>")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5), (2, 1), (490, 500), (64, 8), (7, 3), (100000, 4)])
def test_ops_launch_arguments_batchnorm(fake_cuda, dtype, shape):
    ops, log = fake_cuda
    rng = np.random.default_rng(1)
    n, d = shape
    x = _fake(rng.standard_normal(shape).astype(dtype))
    gamma, beta = _fake(np.ones(d, dtype)), _fake(np.zeros(d, dtype))
    rm, rv = _fake(np.zeros(d, dtype)), _fake(np.ones(d, dtype))
    for fn_args in [(x,), (_misaligned(shape, dtype, rng),), (_fake(np.asfortranarray(x)),)]:
        xx = fn_args[0]
        log.clear()
        out, mean, inv_std = ops.bn_forward_train(xx, gamma, beta, 1e-5, 0.9, rm, rv)
        assert out.shape == shape and mean.shape == (d,) and inv_std.shape == (d,)
        names = [nm for nm, _, _ in log]
        assert names[0].startswith("fcgpu_bn_stats<") and names[1].startswith("fcgpu_bn_stats_finalize")
        vec = d % 4 == 0 and xx.data.ptr % 16 == 0
        assert names[2].startswith("fcgpu_col_vec<" if vec else "fcgpu_col_flat<"), names
        out = ops.bn_forward_infer(xx, gamma, beta, 1e-5, rm, rv)
        assert out.shape == shape
        for p in (0.7, 1.0):
            out, mean, inv_std = ops.bn_relu_dropout_forward(xx, gamma, beta, 1e-5, 0.9, rm, rv,
                                                             p, 2 ** 33, 7)
            dx, dg, db = ops.bn_relu_dropout_backward(xx, _fake(np.abs(np.asarray(xx))), xx,
                                                      gamma, mean, inv_std, p)
            assert dx.shape == shape and dg.shape == (d,) and db.shape == (d,)
        dx, dg, db = ops.bn_backward(xx, xx, gamma, mean, inv_std)
        assert dx.shape == shape and dg.shape == (d,) and db.shape == (d,)
    # running statistics that are not contiguous arrays of x.dtype: updated through a copy
    other = np.float64 if dtype == np.float32 else np.float32
    rm2 = _fake(np.zeros(2 * d, dtype))[::2]
    rv2 = _fake(np.ones(d, other))
    before = np.asarray(rv2).copy()
    ops.bn_forward_train(x, gamma, beta, 1e-5, 0.9, rm2, rv2)
    # (the stand-in kernels write nothing: the copies come back as they went)
    assert np.array_equal(np.asarray(rv2), before)


def test_ops_validation_errors(fake_cuda):
    ops, _ = fake_cuda
    x = _fake(np.ones((4, 3), np.float32))
    g = _fake(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        ops.dropout_forward(_fake(np.ones(4, np.int32)), 0.5, 1, 2)
    with pytest.raises(ValueError, match="keep probability"):
        ops.dropout_forward(x, 0.0, 1, 2)
    with pytest.raises(ValueError, match="keep probability"):
        ops.relu_dropout_forward(x, 1.5, 1, 2)
    with pytest.raises(ValueError, match="2-D"):
        ops.bn_forward_train(_fake(np.ones((2, 3, 4), np.float32)), g, g, 1e-5, 0.9, g, g)
    with pytest.raises(ValueError, match="gamma must have shape"):
        ops.bn_forward_train(x, _fake(np.ones(4, np.float32)), g, 1e-5, 0.9, g, g)
    with pytest.raises(ValueError, match="running_var must have shape"):
        ops.bn_forward_train(x, g, g, 1e-5, 0.9, g, _fake(np.ones(2, np.float32)))
    with pytest.raises(ValueError, match="shape"):
        ops.relu_dropout_backward(x, _fake(np.ones((3, 4), np.float32)), 0.5)
    with pytest.raises(ValueError, match="dtype"):
        ops.bn_backward(_fake(np.ones((4, 3), np.float64)), x, g, g, g)
    with pytest.raises(ValueError, match="at least one row"):
        ops.bn_forward_train(_fake(np.ones((0, 3), np.float32)), g, g, 1e-5, 0.9, g, g)
    with pytest.raises(ValueError, match="seed"):
        ops.dropout_forward(x, 0.5, -1, 2)
    with pytest.raises(TypeError):
        ops.dropout_forward(x, 0.5, 1.5, 2)


# ----------------------------------------------------------------- (e) kernels emulated on the CPU
# The same stand-in, but each launch runs the kernel itself (kernels/*.cu compiled
# for the host with tests/host/cuda_emu.h): fcgpu.cuda.ops end to end, grid-stride
# loops, vector paths and tails, the shared-memory merges, 64-bit index arithmetic,
# compared with the xp references. (sm_count is 3 here: small grids, many strides.)

def test_emulator_has_every_kernel(emu_lib):
    names = {emu_lib.emu_name(i).decode() for i in range(emu_lib.emu_count())}
    expected = set()
    for _, nms in cmod.MODULES.values():
        expected |= set(nms)
    assert names == expected


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_exact_steps_on_edge_values(emu_cuda, dtype, monkeypatch):
    """Subnormals, signed zeros, NaN and infinities through the host build of the
    kernels: relu is numpy.maximum(x, 0) exactly (-0.0 gives +0.0). The stand-in's own
    elementwise operations flush float32 subnormals here, as CuPy's do, so a step that
    left our kernels for CuPy's operations (the plain SGD of fcgpu.optim did) fails.
    (On the GPU the same check, tests/test_kernels_gpu.py, meets CuPy's -ftz=true.)"""
    monkeypatch.setattr(FakeArray, "flush_subnormals", True)
    ops, _ = emu_cuda
    check_exact_steps_on_edge_values(ops, _fake, lambda a: np.asarray(a).view(np.ndarray),
                                     dtype)


def test_emulated_dispatch_through_fused(emu_cuda):
    """fcgpu.fused picks fcgpu.cuda.ops for (stand-in) CuPy arrays."""
    rng = np.random.default_rng(3)
    x = _fake(rng.standard_normal((6, 10)).astype(np.float32))
    out, mask = fused.dropout_forward(x, 0.5, 1, 2)
    assert mask is None and isinstance(out, FakeArray)
    ref, _ = fused.dropout_forward_ref(np.asarray(x).view(np.ndarray), 0.5, 1, 2)
    assert bits_equal(np.asarray(out).view(np.ndarray), ref)


def _bn_case(dtype, shape, rng, layout):
    n, d = shape
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, d) + 2.0 * rng.standard_normal(d))
    if layout == "misaligned":
        xf = _misaligned(shape, dtype, rng)
        xf[...] = x.astype(dtype)
    elif layout == "fortran":
        xf = _fake(np.asfortranarray(x.astype(dtype)))
    else:
        xf = _fake(x.astype(dtype))
    gamma = _fake(rng.uniform(0.5, 1.5, d).astype(dtype))
    beta = _fake(rng.standard_normal(d).astype(dtype))
    return xf, gamma, beta


def _np(a):
    return np.array(a).view(np.ndarray)


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_running_stats_through_copies(emu_cuda, dtype):
    """Running statistics that are strided views or of another dtype are updated in
    place through a temporary."""
    ops, _ = emu_cuda
    rng = np.random.default_rng(9)
    x, gamma, beta = _bn_case(dtype, (50, 6), rng, "contiguous")
    other = np.float64 if dtype == np.float32 else np.float32
    big = _fake(np.zeros(12, dtype))
    rm = big[::2]
    rv = _fake(np.ones(6, other))
    ops.bn_forward_train(x, gamma, beta, 1e-5, 0.8, rm, rv)
    x64 = _np(x).astype(np.float64)
    assert np.allclose(_np(rm), 0.2 * x64.mean(axis=0), rtol=1e-5)
    assert np.allclose(_np(big)[1::2], 0)
    assert np.allclose(_np(rv), 0.8 + 0.2 * x64.var(axis=0), rtol=1e-5)
    assert _np(rv).dtype == other


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_bn_large_offset_is_stable(emu_cuda, dtype):
    """Mean 1e4 x std: a one-pass sum of squares (over a chunk, or inside the 8-row
    batches) would lose every digit in fp32."""
    ops, _ = emu_cuda
    rng = np.random.default_rng(5)
    n, d = 4096, 16
    x = _fake((rng.standard_normal((n, d)) + 1e4).astype(dtype))
    gamma, beta = _fake(np.ones(d, dtype)), _fake(np.zeros(d, dtype))
    rm, rv = _fake(np.zeros(d, dtype)), _fake(np.ones(d, dtype))
    _, _, inv_std = ops.bn_forward_train(x, gamma, beta, 1e-5, 0.9, rm, rv)
    var_ref = _np(x).astype(np.float64).var(axis=0)
    var_got = (_np(rv).astype(np.float64) - 0.9) / 0.1  # running_var = 0.9 + 0.1 * var
    assert np.allclose(var_got, var_ref, rtol=2e-3)
    assert np.allclose(_np(inv_std), 1.0 / np.sqrt(var_ref + 1e-5),
                       rtol=1e-3 if dtype == np.float32 else 1e-10)


BN_LAYOUTS = [
    # (N, D, multiprocessors, reduction blocks per SM): chunks of the column
    # reductions from 1 (all rows in one) to 47 (64 rows each), odd leftovers
    (1000, 37, 132, 8), (3000, 4, 132, 8), (513, 8, 4, 8), (490, 500, 2, 1), (3000, 4, 1, 1),
    (7, 3, 132, 8),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,sms,bps", BN_LAYOUTS)
def test_emulated_bn_chunk_layouts(emu_cuda, monkeypatch, dtype, n, d, sms, bps):
    """The two-stage reductions on the chunk layouts of other device sizes."""
    ops, log = emu_cuda
    monkeypatch.setattr(ops, "sm_count", lambda: sms)
    monkeypatch.setattr(ops, "blocks_per_sm", lambda name, threads: bps)
    r, g = chunk_layout(n, d, sms, bps)
    rng = np.random.default_rng(n * 1000 + d)
    x, gamma, beta = _bn_case(dtype, (n, d), rng, "contiguous")
    x64, g64, b64 = (_np(a).astype(np.float64) for a in (x, gamma, beta))
    rm = _fake(rng.standard_normal(d).astype(dtype))
    rv = _fake(rng.uniform(0.5, 2, d).astype(dtype))
    rm_ref, rv_ref = _np(rm).astype(np.float64), _np(rv).astype(np.float64)
    p, seed, stream = 0.8, 99, 2 ** 35 + 1
    log.clear()
    out, mean, inv_std = ops.bn_relu_dropout_forward(x, gamma, beta, 1e-5, 0.9, rm, rv, p,
                                                     seed, stream)
    assert log[0][0].startswith("fcgpu_bn_stats<") and log[0][1] == ((d + 31) // 32, g), \
        (log[0], r, g)
    rm_old, rv_old = rm_ref.copy(), rv_ref.copy()
    want = fused.bn_relu_dropout_forward_ref(x64, g64, b64, 1e-5, 0.9, rm_ref, rv_ref, p, seed,
                                             stream)
    # the tolerance policy of tests/test_fused_contract.py (gpu_util: bn_*_terms)
    terms = bn_forward_terms(x64, g64, b64, want[1], want[2], p)
    rm_terms, rv_terms = bn_running_terms(rm_old, rv_old, 0.9, terms)
    for what, a, w, t in (("out", out, want[0], terms["out"]),
                          ("mean", mean, want[1], terms["mean"]),
                          ("inv_std", inv_std, want[2], terms["inv_std"]),
                          ("running_mean", rm, rm_ref, rm_terms),
                          ("running_var", rv, rv_ref, rv_terms)):
        assert_close(_np(a), w, dtype, what, magnitude=np.broadcast_to(t, w.shape))
    for fused_pass in (False, True):
        dout = _fake((rng.standard_normal((n, d)) + 0.25).astype(dtype))
        d64 = _np(dout).astype(np.float64)
        m64, i64 = _np(mean).astype(np.float64), _np(inv_std).astype(np.float64)
        if fused_pass:
            o64 = _np(out).astype(np.float64)
            got = ops.bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p)
            want = fused.bn_relu_dropout_backward_ref(d64, o64, x64, g64, m64, i64, p)
            dy = fused.relu_dropout_backward_ref(d64, o64, p)
        else:
            got = ops.bn_backward(dout, x, gamma, mean, inv_std)
            want = fused.bn_backward_ref(d64, x64, g64, m64, i64)
            dy = d64
        for what, a, w, t in zip(("dx", "dgamma", "dbeta"), got, want,
                                 bn_backward_terms(dy, x64, g64, m64, i64, want[1])):
            assert_close(_np(a), w, dtype, what, magnitude=t)


def test_emulated_empty_shapes(emu_cuda):
    ops, log = emu_cuda
    for dtype in DTYPES:
        x = _fake(np.ones((0,), dtype))
        assert ops.dropout_forward(x, 0.5, 1, 2)[0].shape == (0,)
        assert ops.relu_dropout_forward(x, 0.5, 1, 2).shape == (0,)
        assert ops.dropout_mask((0, 3), 0.5, 1, 2).shape == (0, 3)
        x = _fake(np.ones((4, 0), dtype))
        e = _fake(np.ones(0, dtype))
        out, mean, inv_std = ops.bn_forward_train(x, e, e, 1e-5, 0.9, _fake(np.ones(0, dtype)),
                                                  _fake(np.ones(0, dtype)))
        assert out.shape == (4, 0) and mean.shape == (0,)
        assert ops.bn_forward_infer(x, e, e, 1e-5, e, e).shape == (4, 0)
        dx, dg, db = ops.bn_backward(x, x, e, e, e)
        assert dx.shape == (4, 0) and dg.shape == (0,)
        out, _, _ = ops.bn_relu_dropout_forward(x, e, e, 1e-5, 0.9, _fake(np.ones(0, dtype)),
                                                _fake(np.ones(0, dtype)), 0.5, 1, 2)
        assert out.shape == (4, 0)


# ----------------------------------------------------------------- (f) past 2^32 elements
# fcgpu_col_flat takes the column of a Philox block's first element with a 32-bit
# remainder while n = N*D fits in 32 bits, and a 64-bit one past that. A whole
# (N, D) array past 2^32 elements is far too big to emulate, so the kernel runs here
# on a grid of one Philox block per thread (a valid launch of a grid-stride kernel)
# of which only a few blocks execute: those around flat index 2^32 and at the end.
# Its array arguments point at small host buffers offset by the window's start, so
# the kernel's own 64-bit index arithmetic reaches them (and canaries around them).
# The launch runs in a forked child: a kernel that strays far outside the window
# fails the test (a segfault there) instead of ending the whole run.

_COL_PARAMS = ["{T} const*", "{T} const*", "{T} const*", "{T}*", "unsigned long long",
               "unsigned long long", "{T} const*", "{T} const*", "{T} const*", "{T} const*",
               "unsigned long long", "unsigned long long", "unsigned long long", "{T}",
               "unsigned long long const*"]


def _window_buffer(values, guard=64):
    """``values`` with NaN canaries on both sides, in memory shared with forked
    children: (array, canaries)."""
    size = (values.size + 2 * guard) * values.itemsize
    buf = np.frombuffer(mmap.mmap(-1, size), dtype=values.dtype)
    buf[...] = np.nan
    buf[guard:guard + values.size] = values
    return buf, guard


def _in_child(fn):
    """fn() in a forked child; its exit status (a signal: a crash) is asserted."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            code = int(fn())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), \
        "the kernel crashed (signal %d): it reached memory outside its window" \
        % os.WTERMSIG(status)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


@pytest.mark.parametrize("dtype,op", [(np.float32, 2), (np.float64, 2), (np.float32, 4),
                                      (np.float64, 4)])
@pytest.mark.parametrize("past_2_32", [False, True])
def test_emulated_col_flat_windows_near_2_32_elements(emu_lib, kernel_signatures, launch_bounds,
                                                       dtype, op, past_2_32):
    T = "float" if dtype == np.float32 else "double"
    name = "fcgpu_col_flat<%s, %d>" % (T, op)
    assert kernel_signatures[name] == [p.format(T=T) for p in _COL_PARAMS]
    threads = 256
    assert launch_bounds is None or threads <= launch_bounds[name]
    D = 5  # odd: the flat path, and columns wrap inside Philox blocks
    N = (2 ** 32 + 4099) // D + 2 if past_2_32 else (2 ** 32 - 1) // D
    n = N * D
    assert (n > 2 ** 32) == past_2_32 and n % 4 != 0  # (a tail block too)
    nblk = (n + 3) // 4
    grid = (nblk + threads - 1) // threads
    per_cta = 4 * threads  # elements one block of the launch covers
    rng = np.random.default_rng(op * 2 + past_2_32)
    p0, p1, p2, p3 = (rng.standard_normal(D).astype(dtype) for _ in range(4))
    seed, stream, p = 2 ** 35 + 3, 2 ** 33 + 7, 0.6
    t = frandom.keep_threshold(p)
    s = frandom.dropout_scale(p, dtype)
    first_ctas = [2 ** 32 // per_cta - 1, grid - 2] if past_2_32 else [grid - 2]
    for cta in first_ctas:
        e0 = cta * per_cta
        e1 = min(n, (cta + 2) * per_cta)  # two blocks of the launch
        m = e1 - e0
        a, b, c = (rng.standard_normal(m).astype(dtype) for _ in range(3))
        b[rng.random(m) < 0.3] = 0  # (op 4: out == 0 is a dropped or dead unit)
        ins = [_window_buffer(v) for v in (a, b, c)]
        ybuf, guard = _window_buffer(np.full(m, np.nan, dtype))
        item = np.dtype(dtype).itemsize

        def at(buf, g):  # a pointer that makes buf[g] element e0 of a huge array
            return ctypes.c_void_p(buf.ctypes.data + (g - e0) * item)
        vals = [at(*ins[0]), at(*ins[1]), at(*ins[2]), at(ybuf, guard),
                ctypes.c_uint64(N), ctypes.c_uint64(D)]
        vals += [ctypes.c_void_p(v.ctypes.data) for v in (p0, p1, p2, p3)]
        vals += [ctypes.c_uint64(seed), ctypes.c_uint64(stream), ctypes.c_uint64(t),
                 (ctypes.c_float if dtype == np.float32 else ctypes.c_double)(float(s)),
                 ctypes.c_uint64(0)]
        params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        _in_child(lambda: emu_lib.emu_launch_blocks(name.encode(), grid, 1, 1, threads, 1, 1,
                                                    params, ctypes.c_uint64(cta),
                                                    ctypes.c_uint64(2)))
        for buf, g in ins + [(ybuf, guard)]:
            assert np.isnan(buf[:g]).all() and np.isnan(buf[g + m:]).all(), \
                "%s wrote outside elements [%d, %d)" % (name, e0, e1)
        y = ybuf[guard:guard + m]
        # the reference, element by element in the array dtype (the host build does
        # not contract a*b+c into an FMA, so it rounds the same)
        col = np.arange(e0, e1, dtype=np.uint64) % np.uint64(D)
        q0, q1, q2, q3 = p0[col], p1[col], p2[col], p3[col]
        if op == 2:
            keep = mask_window(e0, e1, p, seed, stream)
            ref = np.where(keep, np.maximum((a - q0) * q1 + q2, dtype(0)) * s, dtype(0))
        else:
            dy = np.where(b > 0, a * s, dtype(0))
            ref = q1 * dy + (q2 * (c - q0) + q3)
        assert bits_equal(y, ref.astype(dtype)), \
            "%s: elements [%d, %d) of n = %d differ" % (name, e0, e1, n)
