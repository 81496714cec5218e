"""CPU-side checks of the CUDA kernels (CI has no GPU), and the stand-in for CuPy
that the other kernel tests run ``fcgpu.cuda`` behind.

(a) every ``kernels/*.cu`` compiles with the local ``nvcc`` for sm_90 with
    ``-Xptxas -v`` and no register spills, and instantiates exactly the kernels that
    ``fcgpu.cuda`` asks NVRTC for, with the parameter lists the host build has; the
    sources as ``fcgpu.cuda.module`` expands them compile with NVRTC and every name
    expression resolves (what ``cupy.RawModule`` does at run time), and the PTX gives
    each kernel's ``__launch_bounds__``. (The builds are session fixtures, see
    tests/toolchain.py; FCGPU_REQUIRE_NVCC=1 makes a missing tool a failure.)
(d) the stand-in: NumPy-backed "device" arrays (:class:`FakeArray`, with canaries
    around every allocation) and :class:`FakeKernel`, which checks each launch's
    arguments, grid and block against the kernel's parameter list and launch bounds
    and, with the host build of the kernels (tests/host/cuda_emu.h), runs it; the
    ``fake_cuda`` and ``emu_cuda`` fixtures of the modules below install it
    (:func:`_install_fake_cuda`).

Elsewhere: the host Philox (tests/test_philox_host.py), the launches
(tests/test_kernels_launch.py), what only the emulated kernels show
(tests/test_kernels_emulated.py), and each fused step against the float64 reference
on every implementation (tests/test_fused_contract.py).
"""
from __future__ import annotations

import ctypes
import sys

import numpy as np

import toolchain as tc
from fcgpu.cuda import module as cmod

KERNELS = tc.KERNELS
HOST = tc.HOST
DTYPES = [np.float32, np.float64]


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


def _misaligned(shape, dtype, rng):
    base = rng.standard_normal(int(np.prod(shape)) + 1).astype(dtype)
    return _fake(base[1:].reshape(shape))


def test_emulator_has_every_kernel(emu_lib):
    names = {emu_lib.emu_name(i).decode() for i in range(emu_lib.emu_count())}
    expected = set()
    for _, nms in cmod.MODULES.values():
        expected |= set(nms)
    assert names == expected
