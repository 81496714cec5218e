"""CUDA-graph capture of the training step (fcgpu.cuda.graph), its kernels
(kernels/optim.cu, kernels/graph.cu, the dropout stream pointer), and the plumbing
(``Solver(cuda_graph=...)``, ``TrainConfig.cuda_graph``, ``fcgpu train --cuda-graph``).

Three layers, so that most of it runs without a GPU:

* plain CPU tests: errors on NumPy, config and CLI plumbing;
* emulated (no GPU): the kernels built for the host (tests/host/kernel_emu.cpp) run
  behind the NumPy stand-in for CuPy of tests/test_kernels_host.py: Adam and the
  device-lr rules bit for bit against the xp references, the stream-pointer dropout
  against the by-value one, the gather and advance kernels, and whole Solver runs
  with ``cuda_graph=True`` against the uncaptured Solver on the same stand-in. There
  a "capture" records the launches without running them (as CUDA does) and a
  "replay" runs the step's code again, checking that every launch repeats the
  captured one (same kernels, grids, scalar arguments, and the static buffers at
  the addresses they had when the capture began): nothing that changes between
  steps may be baked into a launch. What CUDA refuses on a capturing stream, the
  stand-in refuses too: any read of device memory by the host (``get``,
  ``asnumpy``, ``float()``/``int()``/``bool()``, ``.item()``), any upload of host
  data (``asarray``/``array`` of a host array or scalar, ``set``) and any
  synchronize;
* GPU (``-m gpu``, skip without CuPy and a device): real capture and replay against
  the uncaptured Solver, the kernels against float64 references.
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
import types

import numpy as np
import pytest

import fake_cublas
from fcgpu import fused, fused_optim, optim
from fcgpu import random as frandom
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.layers import labels_checked
from fcgpu.solver import Solver
from fcgpu.cuda import train_ops
from gpu_util import CUPY_OK, CUPY_WHY, assert_close, bits_equal
import test_kernels_host as hk
from test_kernels_host import FakeArray, _fake, _misaligned, _uses_cublas

DTYPES = [np.float32, np.float64]
RULES = ["sgd", "sgd_momentum", "sgd_nesterov", "rmsprop", "adam"]


def _np(a):
    return np.array(a).view(np.ndarray)


def blobs(rng, n=120, d=12, c=3):
    centers = rng.standard_normal((c, d)) * 2
    y = rng.integers(c, size=n)
    X = centers[y] + rng.standard_normal((n, d))
    return {"X_train": X[: n - 40], "y_train": y[: n - 40],
            "X_val": X[n - 40:], "y_val": y[n - 40:]}


# ----------------------------------------------------------------- plain CPU

def test_solver_cuda_graph_on_numpy_is_a_clear_error():
    rng = np.random.default_rng(0)
    model = FullyConnectedNet([8], input_dim=12, num_classes=3, seed=0, xp=np)
    with pytest.raises(ValueError, match="cuda_graph=True.*CuPy.*NumPy"):
        Solver(model, blobs(rng), cuda_graph=True)
    Solver(model, blobs(rng), cuda_graph=False)  # the default path is untouched


def test_check_supported_names_the_supported_rules():
    from fcgpu.cuda.graph import SUPPORTED_RULES, check_supported
    model = FullyConnectedNet([8], input_dim=12, num_classes=3, seed=0, xp=np)
    assert set(SUPPORTED_RULES) == set(optim.RULES)
    for rule in SUPPORTED_RULES:
        check_supported(model, rule)
    def my_rule(w, dw, config=None):
        return w, config
    with pytest.raises(ValueError, match="my_rule.*sgd, sgd_momentum, sgd_nesterov, rmsprop, adam"):
        check_supported(model, my_rule)
    with pytest.raises(ValueError, match="'nesterov'"):
        check_supported(model, "nesterov")
    with pytest.raises(ValueError, match="FullyConnectedNet"):
        check_supported(types.SimpleNamespace(params={}), "adam")


def test_train_config_and_cli_flag():
    import argparse
    from fcgpu.cli import train as cli_train
    from fcgpu.checkpoint import check_train_config
    from fcgpu.train import TrainConfig
    assert TrainConfig().cuda_graph is False
    assert TrainConfig(cuda_graph=True).to_dict()["cuda_graph"] is True
    p = argparse.ArgumentParser()
    cli_train.add_arguments(p)
    assert cli_train.config_from_args(p.parse_args([])).cuda_graph is False
    cfg = cli_train.config_from_args(p.parse_args(["--cuda-graph", "--backend", "numpy"]))
    assert cfg.cuda_graph is True
    # how the step runs is not part of what a checkpoint must match
    saved = dict(TrainConfig().to_dict(), cuda_graph=True)
    check_train_config({"train_config": saved}, TrainConfig())  # (raises if it refuses)
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "cuda_graph"}
    check_train_config({"train_config": old}, TrainConfig(cuda_graph=True))


def test_run_training_and_cli_refuse_cuda_graph_on_numpy(capsys):
    from fcgpu.cli import main
    from fcgpu.train import TrainConfig, run_training
    cfg = TrainConfig(hidden_dims=(8,), epochs=1, backend="numpy", cuda_graph=True)
    with pytest.raises(ValueError, match="--cuda-graph.*GPU backend.*numpy"):
        run_training(cfg, data={}, progress=False, verbose=False)
    assert main(["train", "--cuda-graph", "--backend", "numpy", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cuda-graph" in err[0]


def test_device_stream_only_on_the_cuda_path():
    ds = frandom.DeviceStream(np.zeros(1, np.uint64), 3)
    assert ds.offset == 3 and "CuPy kernels only" in repr(ds)
    with pytest.raises(TypeError, match="stream"):
        fused.dropout_forward_ref(np.ones(4), 0.5, 1, ds)
    with pytest.raises(ValueError):
        frandom.DeviceStream(np.zeros(1, np.uint64), -1)


# ----------------------------------------------------------------- the stand-in for CuPy
#
# What CuPy and CUDA refuse while a stream captures, the stand-in refuses too, with the
# exception CuPy raises (type and message read from CuPy v14.2.0's source):
#
# * CuPy's library wrappers check the current stream first: cuBLAS
#   (cupy_backends/cuda/libs/cublas.pyx lines 642-655, setStream, reached by every
#   product: _routines_linalg.pyx tensordot_core), cuRAND (curand.pyx lines 140-149),
#   cuSOLVER (cusolver.pyx lines 1495-1505), cuSPARSE (cusparse.pyx lines 1331-1343):
#   ``NotImplementedError('calling <library> API during stream capture is currently
#   unsupported')``;
# * cupy/cuda/memory.pyx: copies between host and device check the stream they run
#   on: ``RuntimeError('the current stream is capturing, so H2D transfers are
#   disallowed')`` (copy_from_host_async, lines 611-621: ndarray.set, asarray/array of
#   host data, _core/core.pyx lines 2210-2242 and 3020-3098), the same with D2H
#   (copy_to_host_async, lines 709-719: ndarray.get, asnumpy, float(), item(), ...)
#   and ``'... synchronous API calls are disallowed'`` for the synchronous copies and
#   memset (lines 540-547, 587-593, 685-691, 739-745);
# * CUDA itself: a synchronize of a capturing stream fails
#   (cudaErrorStreamCaptureUnsupported; CuPy raises CUDARuntimeError).
#
# ``with stream:`` makes a stream current, as cupy.cuda.Stream does; the checks above
# look at the current stream (or the one passed), as CuPy's do.

LIBRARY_REFUSAL = "calling %s API during stream capture is currently unsupported"
TRANSFER_REFUSAL = "the current stream is capturing, so %s transfers are disallowed"


class CUDARuntimeError(RuntimeError):
    """The stand-in's cudaErrorStreamCaptureUnsupported (CuPy: CUDARuntimeError)."""


class _State:
    """What the fake CUDA runtime knows: the current stream, capture and replay."""

    def __init__(self, cublas):
        self.cublas = cublas            # the host stand-in for libcublas
        self.legacy = _FakeStream(self, null=True)
        self.stack = []                 # streams made current with ``with stream:``
        self.capture = None             # the capturing stream
        self.captured = None
        self.replaying = None
        self.capturer = None
        self.static = None
        self.captures = 0
        self.launches = 0

    @property
    def capturing(self):
        return self.capture is not None

    def current(self):
        return self.stack[-1] if self.stack else self.legacy

    def stream_capturing(self, ptr):
        return self.capture is not None and self.capture.ptr == ptr

    def refuse_sync(self, what):
        if self.capturing:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: %s is not permitted "
                                   "while a stream is capturing" % what)

    def library_call(self, library):
        if self.current().capturing:
            raise NotImplementedError(LIBRARY_REFUSAL % library)

    def transfer(self, direction, stream=None):
        if (stream or self.current()).capturing:
            raise RuntimeError(TRANSFER_REFUSAL % direction)


class _FakeStream:
    def __init__(self, state, non_blocking=False, null=False):
        self.state, self._legacy = state, null
        self.ptr = 0 if null else id(self)
        self.capturing = False

    def __enter__(self):
        self.state.stack.append(self)
        return self

    def __exit__(self, *exc):
        assert self.state.stack.pop() is self
        return False

    def synchronize(self):
        self.state.refuse_sync("Stream.synchronize()")

    def begin_capture(self, mode=None):
        st = self.state
        if self._legacy:  # cupy/cuda/stream.pyx lines 393-394
            raise RuntimeError("cannot capture on the default (legacy) stream")
        assert not st.capturing, "nested capture"
        st.capture, st.captured = self, []
        self.capturing = True
        st.cublas.fake_cublas_set_capturing(self.ptr, 1)
        st.cublas_mark = st.cublas.fake_cublas_log_size()
        # the object whose step is being captured (a replay runs its step again), and
        # where its static buffers are now: the graph holds these addresses
        st.capturer = sys._getframe(1).f_locals.get("self")
        st.static = _static_ranges(st.capturer) if hasattr(st.capturer, "_body") else []

    def end_capture(self):
        st = self.state
        assert st.capture is self
        st.capture, self.capturing = None, False
        st.cublas.fake_cublas_set_capturing(self.ptr, 0)
        st.captures += 1
        products = fake_cublas.log(st.cublas)[st.cublas_mark:]
        return _FakeGraph(st, st.captured, products, st.capturer, st.static)


class _FakeGraph:
    """A replay runs the captured object's step again (kernels executing) and checks
    that it launches exactly what the capture recorded, cuBLAS products included."""

    def __init__(self, state, launches, products, owner, static):
        self.state, self.launches, self.owner = state, launches, owner
        self.products = products
        self.static = static  # (taken when the capture began, not at replay)

    def launch(self, stream=None):
        st = self.state
        if not hasattr(self.owner, "_body"):
            # captured outside a step (bench/gpu_smoke.py): run the recorded products
            assert not self.launches, "the stand-in replays kernels through a step's body"
            for row in self.products:
                fake_cublas.run_logged(st.cublas, row, (stream or st.current()).ptr)
            return
        st.replaying = []
        mark = st.cublas.fake_cublas_log_size()
        try:
            self.owner._body()
            replayed = st.replaying
        finally:
            st.replaying = None
        _check_same_launches(self.launches, replayed, self.static)
        _check_same_products(self.products, fake_cublas.log(st.cublas)[mark:], self.static)


def _static_ranges(g):
    arrays = [g.X, g.y, g.Xb, g.yb, g.perm, g.ctr, g.lr, g.loss_buf]
    arrays += [a for a in (g.corr, g.lr_rows, g.ema_rows, getattr(g, "ema_rate", None))
               if a is not None]
    arrays += list(g._params.values()) + list(g._state.values()) + list(g._bn.values())
    arrays += list(g._ema.values())
    return [(a.data.ptr, a.data.ptr + a.nbytes) for a in arrays]


def _launch_record(name, grid, block, args):
    rec = []
    for a in args:
        if isinstance(a, FakeArray):
            rec.append(("ptr", a.data.ptr))
        elif isinstance(a, np.ndarray) and a.size != 1:
            rec.append(("host", a.tobytes()))
        else:
            rec.append((type(a).__name__, a.item() if hasattr(a, "item") else a))
    return (name, grid, block, tuple(rec))


def _is_static(p, static):
    return any(lo <= p < hi for lo, hi in static)


def _check_same_launches(captured, replayed, static):
    assert len(captured) == len(replayed), (len(captured), len(replayed))
    for k, (c, r) in enumerate(zip(captured, replayed)):
        assert c[:3] == r[:3], (k, c[:3], r[:3])
        for (ck, cv), (rk, rv) in zip(c[3], r[3]):
            assert ck == rk, (k, c[0], ck, rk)
            if ck != "ptr":
                assert cv == rv, "launch %d (%s): argument baked %r, replay %r" % (k, c[0], cv, rv)
            elif _is_static(cv, static):
                assert cv == rv, "launch %d (%s): static buffer moved" % (k, c[0])


def _check_same_products(captured, replayed, static):
    """The replay's cuBLAS calls are the capture's: sizes, operations, types and
    workspace the same, static operands at the captured addresses."""
    assert len(captured) == len(replayed), ("cuBLAS products", len(captured), len(replayed))
    for k, (c, r) in enumerate(zip(captured, replayed)):
        assert c["capturing"] == 1 and r["capturing"] == 0, (k, c, r)
        for key in ("transa", "transb", "m", "n", "k", "lda", "ldb", "ldc", "type", "compute",
                    "workspace_bytes"):
            assert c[key] == r[key], "product %d: %s captured %r, replay %r" % (k, key, c[key],
                                                                               r[key])
        for key in ("A", "B", "C"):
            if _is_static(c[key], static):
                assert c[key] == r[key], "product %d: static operand %s moved" % (k, key)


class _GraphKernel(hk.FakeKernel):
    """The stand-in kernel: checks the launch, runs the host build of the kernel
    unless a capture is in progress, and records launches for capture / replay."""

    def __init__(self, name, sig, log, emu, state, max_threads=None):
        super().__init__(name, sig, log, emu, None, max_threads)
        self.state = state

    def __call__(self, grid, block, args, **kwargs):
        st = self.state
        rec = _launch_record(self.name, grid, block, args)
        if st.capturing:
            emu, self.emu = self.emu, None
            try:
                super().__call__(grid, block, args, **kwargs)
            finally:
                self.emu = emu
            st.captured.append(rec)
            return
        super().__call__(grid, block, args, **kwargs)
        st.launches += 1
        if st.replaying is not None:
            st.replaying.append(rec)


class _Alloc(hk._Guards):
    """Aligned allocations like CuPy's pool (no canaries: whole training runs)."""

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        raw = np.empty(n * dtype.itemsize + 256, dtype=np.uint8)
        off = (-raw.ctypes.data) % 256
        buf = raw[off:off + n * dtype.itemsize].view(dtype)
        buf[...] = np.nan if dtype.kind == "f" else 0x5A
        return buf.reshape(shape).view(FakeArray)


class _FakeMemory:
    """``cupy.cuda.Memory(size)``: ``size`` bytes of "device" memory (256-byte aligned,
    like cudaMalloc's) owned by the object; ``.ptr``, ``.size``."""

    def __init__(self, size):
        self._raw = np.empty(int(size) + 256, dtype=np.uint8)
        self.size = int(size)
        self.ptr = self._raw.ctypes.data + (-self._raw.ctypes.data) % 256


class _FakeDevice:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        self.compute_capability = "90"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _wrap(v):
    if isinstance(v, np.ndarray) and not isinstance(v, FakeArray):
        return v.view(FakeArray)
    if isinstance(v, np.generic):  # (CuPy returns 0-d device arrays where NumPy scalars)
        return np.asarray(v).view(FakeArray)
    if isinstance(v, tuple):
        return tuple(_wrap(x) for x in v)
    return v


_UPLOADS = ("array", "asarray", "asanyarray", "asfortranarray")
# what cupy.linalg and cupy.random offer (their __init__.py in v14.2.0), of NumPy's
_CUPY_LINALG = ("matrix_power", "cholesky", "qr", "svd", "eigh", "eig", "eigvalsh", "eigvals",
                "norm", "cond", "det", "matrix_rank", "slogdet", "solve", "tensorsolve", "lstsq",
                "inv", "pinv", "tensorinv")
_CUPY_RANDOM = ("beta", "binomial", "chisquare", "dirichlet", "exponential", "f", "gamma",
                "geometric", "gumbel", "hypergeometric", "laplace", "logistic", "lognormal",
                "logseries", "multivariate_normal", "negative_binomial", "noncentral_chisquare",
                "noncentral_f", "normal", "pareto", "poisson", "power", "rayleigh",
                "standard_cauchy", "standard_exponential", "standard_gamma", "standard_normal",
                "standard_t", "triangular", "uniform", "vonmises", "wald", "weibull", "zipf",
                "seed", "permutation", "shuffle", "choice", "multinomial", "rand", "randint",
                "randn", "random_integers", "random_sample", "random")
_PRODUCTS = ("matmul", "dot", "inner", "tensordot", "vdot", "einsum")
# cupy.linalg functions that call cuSOLVER (the rest: reductions or products)
_CUSOLVER = ("solve", "inv", "pinv", "cholesky", "qr", "svd", "eigh", "eigvalsh", "lstsq",
             "det", "slogdet", "matrix_rank", "tensorsolve", "tensorinv")


def _library_namespace(state, module, library, offered, names=None):
    """``module``'s functions of the names CuPy ``offered`` as a namespace whose calls
    (of ``names``, default all) go through ``state.library_call(library)`` first;
    results as FakeArray."""
    ns = types.SimpleNamespace()
    for name in offered:
        f = getattr(module, name, None)
        if f is None or not callable(f) or isinstance(f, type):
            continue
        guarded = names is None or name in names

        def call(*args, _f=f, _guarded=guarded, **kwargs):
            if _guarded:
                state.library_call(library)
            return _wrap(_f(*args, **kwargs))
        setattr(ns, name, call)
    return ns


def _make_cupy(state):
    """tests/test_kernels_host.py's stand-in, plus what the Solver and the graph use:
    NumPy functions as the array module (results as FakeArray), streams, capture,
    pools, ``cuda.Memory``, ``ndarray.get()``/``set()``; with CuPy's refusals while
    the current stream captures (above)."""
    fake = hk._make_fake_cupy(_Alloc())

    def no_upload(name, f):
        def call(a, *args, **kwargs):
            if not isinstance(a, FakeArray):  # host data: a copy to the device
                state.transfer("H2D")
            return f(a, *args, **kwargs)
        return call

    def product(name):
        f = getattr(np, name)

        def call(*args, **kwargs):
            if name == "einsum" or _uses_cublas(*args[:2]):
                state.library_call("cuBLAS")
            return _wrap(f(*[a.view(np.ndarray) if isinstance(a, FakeArray) else a
                             for a in args], **kwargs))
        return call

    def fallback(name):
        f = getattr(np, name)
        if callable(f) and not isinstance(f, type):
            g = lambda *a, **k: _wrap(f(*a, **k))  # noqa: E731
            return no_upload(name, g) if name in _UPLOADS else g
        return f
    fake.__getattr__ = fallback
    fake.asarray = no_upload("asarray", fake.asarray)
    for name in _PRODUCTS:
        setattr(fake, name, product(name))
    fake.random = _library_namespace(state, np.random, "cuRAND", _CUPY_RANDOM)
    fake.linalg = _library_namespace(state, np.linalg, "cuSOLVER", _CUPY_LINALG, _CUSOLVER)
    to_host = fake.asnumpy

    def asnumpy(a, stream=None, **kwargs):
        state.transfer("D2H", stream)
        return to_host(a, **kwargs)
    fake.asnumpy = asnumpy
    pool = types.SimpleNamespace(malloc=lambda size: None, free_all_blocks=lambda: None)
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0,
                                      streamIsCapturing=state.stream_capturing),
        get_current_stream=state.current,
        Stream=lambda non_blocking=False: _FakeStream(state, non_blocking),
        MemoryPool=lambda: pool,
        Memory=_FakeMemory,
        Device=_FakeDevice,
        using_allocator=lambda allocator=None: contextlib.nullcontext(),
    )
    fake.float32, fake.float64 = np.float32, np.float64
    return fake


def _captured_ufunc(state):
    """CuPy's elementwise operations as CUDA captures them: recorded, not run. While
    a stream captures, what an operation writes into existing arrays (``out=``, and
    the first operand of ``ufunc.at``) is put back, and both the capture and a replay
    log each operation like a kernel launch (arrays by address, scalars by value), so
    the replay check sees a scalar baked into the graph that a replay would need
    changed (fcgpu.solver_ema's update: d_t from device memory, not from the host)."""
    ufunc_call = FakeArray.__array_ufunc__

    def call(self, ufunc, method, *inputs, **kwargs):
        written = tuple(kwargs.get("out") or ()) + ((inputs[0],) if method == "at" else ())
        written = tuple(o for o in written if isinstance(o, np.ndarray))
        before = [np.array(o.view(np.ndarray)) for o in written] if state.capturing else None
        result = ufunc_call(self, ufunc, method, *inputs, **kwargs)
        rec = _launch_record("%s.%s" % (ufunc.__name__, method), None, None, inputs + written)
        if state.capturing:
            for o, old in zip(written, before):
                o.view(np.ndarray)[...] = old
            state.captured.append(rec)
        elif state.replaying is not None:
            state.replaying.append(rec)
        return result
    return call


@pytest.fixture
def emu(kernel_signatures, launch_bounds, emu_lib, monkeypatch):
    """fcgpu.cuda on the host-built kernels and the host stand-in for libcublas, behind
    a NumPy stand-in for CuPy that obeys CuPy's rules (above) and flushes float32
    subnormals in its own elementwise operations, as CuPy's kernels do."""
    from fcgpu.cuda import blas
    from fcgpu.cuda import graph as cgraph
    from fcgpu.cuda import ops
    sigs = kernel_signatures
    state = _State(fake_cublas.install(monkeypatch))
    fake = _make_cupy(state)
    log = []
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(ops, "_cp", lambda: fake)
    monkeypatch.setattr(ops, "sm_count", lambda: 3)
    monkeypatch.setattr(ops, "blocks_per_sm", lambda name, threads: 2)
    monkeypatch.setattr(ops, "get_kernel",
                        lambda name: _GraphKernel(name, sigs[name], log, emu_lib, state,
                                                  None if launch_bounds is None
                                                  else launch_bounds[name]))
    monkeypatch.setattr(cgraph, "require_cupy", lambda: fake)
    monkeypatch.setattr(blas, "require_cupy", lambda: fake)
    monkeypatch.setattr(FakeArray, "library_guard", state.library_call)
    monkeypatch.setattr(FakeArray, "flush_subnormals", True)

    def get(self, stream=None, order="C", out=None, blocking=True):
        state.transfer("D2H", stream)
        return _np(self)
    monkeypatch.setattr(FakeArray, "get", get, raising=False)

    def set_(self, arr, stream=None):
        # _core/core.pyx lines 2210-2242: type, dtype and shape checks, then the copy
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError("{} array cannot be set to {} array".format(arr.dtype, self.dtype))
        if self.shape != arr.shape:
            raise ValueError("Shape mismatch. Old shape: {}, new shape: {}".format(
                self.shape, arr.shape))
        state.transfer("H2D", stream)
        self.view(np.ndarray)[...] = arr
    monkeypatch.setattr(FakeArray, "set", set_, raising=False)

    def host_read(name):
        base = getattr(np.ndarray, name)

        def read(self, *args):
            state.transfer("D2H")  # (CuPy: through get())
            return base(self, *args)
        return read
    for name in ("__float__", "__int__", "__index__", "__bool__", "__complex__", "item",
                 "tolist"):
        monkeypatch.setattr(FakeArray, name, host_read(name))
    monkeypatch.setattr(FakeArray, "__array_ufunc__", _captured_ufunc(state))
    return types.SimpleNamespace(ops=ops, cp=fake, log=log, state=state, graph=cgraph,
                                 cublas=state.cublas)


# ----------------------------------------------------------------- emulated kernels

@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_adam_step_bit_identical_to_reference(emu, dtype):
    rng = np.random.default_rng(1)
    shapes = [(1,), (3,), (4,), (1001,), (37, 11), (64, 16)]
    for shape in shapes + ["misaligned", "transposed_dw"]:
        if shape == "misaligned":
            w, dw = (_misaligned((257,), dtype, rng) for _ in range(2))
            m = _misaligned((257,), dtype, rng)
            v = _fake(np.abs(_np(_misaligned((257,), dtype, rng))))
        else:
            sh = (12, 7) if shape == "transposed_dw" else shape
            w = _fake(rng.standard_normal(sh).astype(dtype))
            dw = _fake(rng.standard_normal(sh[::-1]).astype(dtype).T) \
                if shape == "transposed_dw" else _fake(rng.standard_normal(sh).astype(dtype))
            m = _fake(rng.standard_normal(sh).astype(dtype))
            v = _fake(rng.random(sh).astype(dtype))
        wn, dwn, mn, vn = (_np(a).copy() for a in (w, dw, m, v))
        for t in (1, 7, 1000):
            emu.log.clear()
            out = fused_optim.adam_step(w, dw, m, v, 3e-3, 0.9, 0.999, 1e-8, t)
            assert emu.log and emu.log[-1][0].startswith("fcgpu_adam<"), emu.log
            ref = fused_optim.adam_step_ref(wn, dwn, mn, vn, 3e-3, 0.9, 0.999, 1e-8, t)
            assert bits_equal(_np(out), ref), (shape, t)
            assert bits_equal(_np(m), mn) and bits_equal(_np(v), vn), (shape, t)
        vec = shape != "misaligned"
        assert emu.log[-1][0].endswith("true>" if vec else "false>"), (shape, emu.log[-1])
    # the optimizer rule itself dispatches to the kernel for (stand-in) CuPy arrays
    w = _fake(rng.standard_normal((5, 4)).astype(dtype))
    dw = _fake(rng.standard_normal((5, 4)).astype(dtype))
    emu.log.clear()
    nw, cfg = optim.adam(w, dw, {"learning_rate": 1e-2})
    assert [n for n, _, _ in emu.log] == ["fcgpu_adam<%s, true>"
                                          % ("float" if dtype == np.float32 else "double")]
    assert cfg["t"] == 1 and isinstance(cfg["m"], FakeArray)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_place", [True, False])
def test_emulated_adam_step_device(emu, dtype, in_place):
    rng = np.random.default_rng(2)
    ops, cp = emu.ops, emu.cp
    for n in (1, 5, 1024, 1027):
        w = _fake(rng.standard_normal(n).astype(dtype))
        dw = _fake(rng.standard_normal(n).astype(dtype))
        m = _fake(rng.standard_normal(n).astype(dtype))
        v = _fake(rng.random(n).astype(dtype))
        wn, dwn, mn, vn = (_np(a).copy() for a in (w, dw, m, v))
        lr = cp.asarray(np.array([0.5, 2e-3, 7.0]))[1:2]   # a view: the pointer is offset
        # the bias corrections of steps 40..44; the kernel takes row index[0] (t = 42)
        corr = cp.asarray(train_ops.bias_corrections(0.8, 0.99, 40, 5))
        index = cp.asarray(np.array([9, 2], np.uint64))[1:]
        out = None if in_place else cp.empty(n, dtype)
        res = train_ops.adam_step_device(w, dw, m, v, lr, corr, index, 0.8, 0.99, 1e-6, out=out)
        assert res is (w if in_place else out)
        ref = fused_optim.adam_step_ref(wn, dwn, mn, vn, 2e-3, 0.8, 0.99, 1e-6, 42)
        assert bits_equal(_np(res), ref), n
        assert bits_equal(_np(m), mn) and bits_equal(_np(v), vn)
        if not in_place:
            assert bits_equal(_np(w), wn)
        # an index past the table updates nothing
        before = [_np(a).copy() for a in (res, m, v)]
        index.set(np.array([5], np.uint64))
        train_ops.adam_step_device(w, dw, m, v, lr, corr, index, 0.8, 0.99, 1e-6, out=out)
        assert all(bits_equal(_np(a), b) for a, b in zip((res, m, v), before))
    with pytest.raises(ValueError, match=r"shape \(K, 2\)"):
        train_ops.adam_step_device(w, dw, m, v, lr, cp.asarray(np.zeros(4)), index, 0.8, 0.99, 1e-6)


def test_bias_corrections_are_the_python_formula():
    """The one table the plain and the captured Adam step divide by: exactly
    ``1 - beta**t`` in Python floats, as the references and the CPU path compute it."""
    from fcgpu.cuda.train_ops import bias_corrections
    for beta1, beta2 in ((0.9, 0.999), (0.5, 0.99), (0.8, 0.9999)):
        tab = bias_corrections(beta1, beta2, 3, 2000)
        assert tab.shape == (2000, 2) and tab.dtype == np.float64
        for k in (0, 1, 996, 1999):
            t = 3 + k
            assert tab[k, 0] == 1 - beta1 ** t and tab[k, 1] == 1 - beta2 ** t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "sgd_nesterov", "rmsprop"])
def test_emulated_rule_step_device_bit_identical_to_optim(emu, dtype, rule):
    rng = np.random.default_rng(3)
    ops, cp = emu.ops, emu.cp
    code = optim.RULES[rule].device_id
    state_key = {"sgd": None, "sgd_momentum": "velocity", "sgd_nesterov": "velocity",
                 "rmsprop": "cache"}[rule]
    for shape in [(1,), (6,), (8,), (33, 5), "misaligned"]:
        if shape == "misaligned":
            w, dw, s = (_misaligned((101,), dtype, rng) for _ in range(3))
            s[...] = np.abs(_np(s))
        else:
            w, dw = (_fake(rng.standard_normal(shape).astype(dtype)) for _ in range(2))
            s = _fake(rng.random(shape).astype(dtype))
        wn, dwn, sn = (_np(a).copy() for a in (w, dw, s))
        cfg = {"learning_rate": 3e-2, "momentum": 0.85, "decay_rate": 0.95, "epsilon": 1e-7}
        if state_key:
            cfg[state_key] = sn
        ref, cfg = optim.RULES[rule](wn, dwn, cfg)
        lr = cp.asarray(np.array([3e-2]))
        h = {"sgd": 0.0, "sgd_momentum": 0.85, "sgd_nesterov": 0.85, "rmsprop": 0.95}[rule]
        res = train_ops.rule_step_device(code, w, dw, s if state_key else None, lr, h=h, eps=1e-7)
        assert res is w
        assert bits_equal(_np(w), ref), (rule, shape)
        if state_key:
            assert bits_equal(_np(s), cfg[state_key]), (rule, shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.3, 0.8, 1.0])
def test_emulated_device_stream_equals_stream_by_value(emu, dtype, p):
    """stream_ptr != null: stream = *stream_ptr + offset, bit-identical to passing
    that number (and so to the NumPy reference)."""
    ops, cp = emu.ops, emu.cp
    rng = np.random.default_rng(4)
    seed, base, off = 2 ** 40 + 3, 2 ** 33 + 17, 2
    ctr = cp.asarray(np.array([0, base, 5, 6], np.uint64))
    ds = frandom.DeviceStream(ctr[1:2], off)
    for shape in [(1,), (7,), (16, 8), (9, 5)]:
        x = _fake(rng.standard_normal(shape).astype(dtype))
        a, _ = ops.dropout_forward(x, p, seed, ds)
        b, _ = ops.dropout_forward(x, p, seed, base + off)
        assert bits_equal(_np(a), _np(b))
        ref, _ = fused.dropout_forward_ref(_np(x), p, seed, base + off)
        assert bits_equal(_np(a), ref)
        assert bits_equal(_np(ops.dropout_backward(x, p, seed, ds)),
                          _np(ops.dropout_backward(x, p, seed, base + off)))
        assert bits_equal(_np(ops.relu_dropout_forward(x, p, seed, ds)),
                          fused.relu_dropout_forward_ref(_np(x), p, seed, base + off))
        if len(shape) == 2:
            g = _fake(rng.uniform(0.5, 1.5, shape[1]).astype(dtype))
            bt = _fake(rng.standard_normal(shape[1]).astype(dtype))
            stats = [_fake(np.zeros(shape[1], dtype)) for _ in range(4)]
            o1, _, _ = ops.bn_relu_dropout_forward(x, g, bt, 1e-5, 0.9, stats[0], stats[1],
                                                   p, seed, ds)
            o2, _, _ = ops.bn_relu_dropout_forward(x, g, bt, 1e-5, 0.9, stats[2], stats[3],
                                                   p, seed, base + off)
            assert bits_equal(_np(o1), _np(o2))
    with pytest.raises(ValueError, match="uint64"):
        ops.dropout_forward(_fake(np.ones(4, dtype)), 0.5, 1,
                            frandom.DeviceStream(_fake(np.zeros(1, np.int64)), 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [12, 7, 1])
def test_emulated_gather_rows(emu, dtype, d):
    ops, cp = emu.ops, emu.cp
    rng = np.random.default_rng(d)
    n, b = 50, 8
    X = cp.asarray(rng.standard_normal((n, d)).astype(dtype))
    y = cp.asarray(rng.integers(0, 10, n).astype(np.int64))
    order = rng.permutation(n)
    perm = cp.asarray(order.astype(np.int64))
    idx = cp.asarray(np.array([0, 0], np.uint64))
    Xb, yb = cp.empty((b, d), dtype), cp.empty(b, np.int64)
    for batch in (0, 3, 5):
        idx.set(np.array([7, batch], np.uint64))
        emu.log.clear()
        train_ops.gather_rows(X, y, perm, idx[1:], Xb, yb)
        rows = order[batch * b:(batch + 1) * b]
        assert np.array_equal(_np(Xb), _np(X)[rows]) and np.array_equal(_np(yb), _np(y)[rows])
        assert emu.log[-1][0].endswith("true>" if d % 4 == 0 else "false>")
    # a batch past the permutation writes nothing (and reads nothing out of bounds)
    idx.set(np.array([0, 7], np.uint64))
    before = _np(Xb).copy()
    train_ops.gather_rows(X, y, perm, idx[1:], Xb, yb)
    assert np.array_equal(_np(Xb), before)
    with pytest.raises(ValueError, match="int64"):
        train_ops.gather_rows(X, cp.asarray(np.zeros(n, np.int32)), perm, idx, Xb, yb)


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_graph_advance(emu, dtype):
    ops, cp = emu.ops, emu.cp
    ctr = cp.asarray(np.array([0, 10, 1, 0], np.uint64))
    buf = cp.asarray(np.zeros(3, dtype))
    for k in range(7):
        loss = cp.asarray(np.array(1.5 + k, dtype))
        train_ops.graph_advance(ctr, loss, buf, 3, 2)
        assert list(_np(ctr)) == [(k + 1) % 3, 10 + 2 * (k + 1), k + 2, k + 1]
        assert _np(buf)[k % 3] == 1.5 + k
    with pytest.raises(ValueError, match="fewer than"):
        train_ops.graph_advance(ctr, loss, buf, 4, 0)


# ----------------------------------------------------------------- emulated Solver runs

CONFIGS = [
    # (rule, batchnorm, dropout keep, fresh masks, reg)
    ("adam", True, 0.7, True, 0.0),
    ("adam", False, 0.6, False, 1e-3),
    ("sgd", False, 0, True, 0.0),
    ("sgd_momentum", False, 0.8, True, 1e-2),
    ("sgd_nesterov", True, 0.8, True, 0.0),
    ("rmsprop", True, 0, True, 0.0),
]


def _model(xp, dtype, bn, dropout, fresh, reg, seed=3):
    return FullyConnectedNet([16, 8], input_dim=12, num_classes=3, use_batchnorm=bn,
                             dropout=dropout, reg=reg, weight_scale=0.3, dtype=dtype, seed=seed,
                             fresh_masks=fresh, xp=xp)


def _solver(xp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph, epochs=2, **kw):
    model = _model(xp, dtype, bn, dropout, fresh, reg)
    lr = {"adam": 1e-2, "sgd": 5e-2, "sgd_momentum": 2e-2, "sgd_nesterov": 2e-2,
          "rmsprop": 1e-3}[rule]
    args = dict(update_rule=rule, optim_config={"learning_rate": lr}, lr_decay=0.8,
                batch_size=20, num_epochs=epochs, num_train_samples=40, verbose=True,
                print_every=3, out=io.StringIO(), seed=11, cuda_graph=cuda_graph)
    args.update(kw)
    return Solver(model, data, **args)


def _assert_same_training(a, b, host=_np):
    """Solver b (captured) ended exactly where solver a (uncaptured) did."""
    assert a.loss_history == b.loss_history
    assert a.train_acc_history == b.train_acc_history and a.val_acc_history == b.val_acc_history
    for k in a.model.params:
        assert bits_equal(host(a.model.params[k]), host(b.model.params[k])), k
    for bpa, bpb in zip(a.model.bn_params, b.model.bn_params):
        for key in ("running_mean", "running_var"):
            assert bits_equal(host(bpa[key]), host(bpb[key])), key
    assert a.model.dropout_step == b.model.dropout_step
    for k, ca in a.optim_configs.items():
        cb = b.optim_configs[k]
        assert set(ca) == set(cb), (k, set(ca) ^ set(cb))
        for key, va in ca.items():
            if hasattr(va, "shape"):
                assert bits_equal(host(va), host(cb[key])), (k, key)
            else:
                assert va == cb[key], (k, key, va, cb[key])
    assert (a.ema is None) == (b.ema is None)
    if a.ema is not None:  # the average of the weights (fcgpu.solver_ema)
        assert a.ema.updates == b.ema.updates
        assert a.ema.raw_val_acc_history == b.ema.raw_val_acc_history
        for k, va in a.ema.params.items():
            assert bits_equal(host(va), host(b.ema.params[k])), ("ema", k)
        for ma, mb in zip(a.ema.bn, b.ema.bn):
            assert set(ma) == set(mb)
            for key in ma:
                assert bits_equal(host(ma[key]), host(mb[key])), ("ema", key)


@pytest.mark.parametrize("rule,bn,dropout,fresh,reg", CONFIGS)
def test_emulated_graphed_solver_equals_uncaptured(emu, rule, bn, dropout, fresh, reg):
    dtype = np.float64 if rule == "rmsprop" else np.float32
    data = blobs(np.random.default_rng(5))
    plain = _solver(emu.cp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph=False)
    plain.train()
    graphed = _solver(emu.cp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph=True)
    captures = emu.state.captures
    graphed.train()
    _assert_same_training(plain, graphed)
    g = graphed._graph_step
    steps = 2 * (80 // 20)
    assert emu.state.captures == captures + 1 and g.captures == 1
    assert g.replays == steps - 1  # the first step runs uncaptured, then the capture
    # the products are in the graph: 3 forward, 3 weight gradients, 2 input gradients,
    # through cuBLAS itself on the side stream with its workspace
    captured = [r for r in fake_cublas.log(emu.cublas) if r["capturing"]]
    assert len(captured) == 8
    assert {r["stream"] for r in captured} == {g._side.ptr}
    assert all(r["workspace_bytes"] == 32 << 20 for r in captured)
    assert g.counters() == g.host_counters()
    assert g.counters()["steps"] == steps and g.counters()["batch"] == 0
    if dropout and fresh:
        assert g.counters()["stream"] == graphed.model.dropout_step * 2 == steps * 2
    # the learning rate decayed on the host each epoch and reached the device: it
    # holds the last epoch's (the host has decayed it once more since)
    lrs = np.array([c["learning_rate"] for c in graphed.optim_configs.values()])
    np.testing.assert_allclose(_np(g.lr), lrs / 0.8, rtol=1e-15)
    assert lrs[0] == plain.optim_configs["W1"]["learning_rate"]
    # the static buffers are the model's and the configs' own arrays while training
    # (train() ends by restoring the best parameters as copies, like the plain loop)
    if rule == "adam":
        assert graphed.optim_configs["W1"]["m"] is g._state[("W1", "m")]


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "sgd_nesterov", "rmsprop", "adam"])
def test_emulated_plain_and_graphed_steps_keep_subnormals_alike(emu, rule):
    """The Solver's promise (the graph step gives the plain step's losses and
    parameters) down to float32 subnormals: the stand-in flushes them in CuPy's own
    elementwise operations as CuPy's -ftz=true kernels do, and both steps update
    through our kernels, which keep them as NumPy does. A weight row whose gradient is
    exactly zero (its input feature is always 0) starts subnormal and must stay so on
    both sides. Mutant caught: the plain SGD/momentum/RMSProp step on CuPy's
    elementwise operations (fcgpu.fused_optim.rule_step returning None)."""
    data = blobs(np.random.default_rng(12))
    for key in ("X_train", "X_val"):
        data[key] = data[key].copy()
        data[key][:, 0] = 0.0
    tiny = np.float32(np.finfo(np.float32).tiny)
    row = (np.arange(1, 17, dtype=np.float32) * tiny / np.float32(64)) * np.where(
        np.arange(16) % 2, np.float32(-1), np.float32(1))
    assert (np.abs(row) < tiny).all() and (row != 0).all()
    solvers = []
    for graph in (False, True):
        s = _solver(emu.cp, data, np.float32, rule, False, 0, True, 0.0, cuda_graph=graph,
                    epochs=1)
        s.model.params["W1"][0, :] = row
        s.train()
        solvers.append(s)
    _assert_same_training(*solvers)
    for s in solvers:
        assert bits_equal(_np(s.model.params["W1"])[0], row), rule


@pytest.mark.parametrize("ema", [None, 0.9])
def test_emulated_graphed_solver_continues_and_resumes(emu, tmp_path, ema):
    """A second train() (more epochs) after restore_best replaced the parameters,
    and a checkpoint round trip: the graph copies the new arrays into its static
    buffers and carries on exactly like the uncaptured Solver; with the average of
    the weights, its arrays and update count too. Mutant caught: sync_out not
    writing the average's update count back (the checkpoint's count lags, and the
    resumed average's warm-up with it)."""
    data = blobs(np.random.default_rng(6))
    cfg = ("adam", True, 0.7, True, 0.0)
    plain = _solver(emu.cp, data, np.float32, *cfg, cuda_graph=False, epochs=1, ema_decay=ema)
    graphed = _solver(emu.cp, data, np.float32, *cfg, cuda_graph=True, epochs=1, ema_decay=ema)
    for s in (plain, graphed):
        s.train()
        s.num_epochs = 2
        s.train()
    _assert_same_training(plain, graphed)
    assert graphed._graph_step.captures == 1
    ck = tmp_path / "ck.pkl"
    graphed.save_checkpoint(str(ck))
    plain.num_epochs = graphed.num_epochs = 3
    graphed2 = _solver(emu.cp, data, np.float32, *cfg, cuda_graph=True, epochs=3,
                       ema_decay=ema)
    graphed2.load_checkpoint(str(ck))
    plain.train()
    graphed2.train()
    _assert_same_training(plain, graphed2)
    if ema is not None:
        assert graphed2.ema.updates == 3 * (80 // 20)


EMA_CONFIGS = [("adam", True, 0.7, True, 0.0, np.float32),
               ("sgd_momentum", False, 0, True, 1e-2, np.float64),
               ("rmsprop", True, 0, True, 0.0, np.float32)]


@pytest.mark.parametrize("rule,bn,dropout,fresh,reg,dtype", EMA_CONFIGS)
def test_emulated_graphed_average_equals_uncaptured(emu, rule, bn, dropout, fresh, reg, dtype):
    """The average of the weights (Solver(ema_decay=...)) updated inside the captured
    step: the same average, update count and accuracies as the uncaptured Solver, bit
    for bit, through a capture and replays whose launches and CuPy operations repeat
    the captured ones (the per-step (d_t, 1 - d_t) read from device memory); its
    arrays are static buffers. Mutant caught: the update left out of the graph."""
    data = blobs(np.random.default_rng(13))
    plain = _solver(emu.cp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph=False,
                    ema_decay=0.8)
    plain.train()
    graphed = _solver(emu.cp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph=True,
                      ema_decay=0.8)
    graphed.train()
    _assert_same_training(plain, graphed)
    g = graphed._graph_step
    steps = 2 * (80 // 20)
    assert g.captures == 1 and g.replays == steps - 1 and graphed.ema.updates == steps
    assert graphed.val_acc_history != graphed.ema.raw_val_acc_history
    assert graphed.ema.params["W1"] is g._ema["W1"]
    if bn:
        assert graphed.ema.bn[0]["running_var"] is g._ema[(0, "running_var")]
    # the captured step writes the average (a launch or operation on its buffer)
    ptr = ("ptr", g._ema["W1"].data.ptr)
    assert any(ptr in rec[3] for rec in g._graph.launches)


def test_emulated_average_from_host_rates_fails_the_replay(emu, monkeypatch):
    """The stand-in sees a per-step scalar baked into the graph: the average updated
    with d_t taken on the host (the uncaptured step's way, the count advanced in
    Python) replays the captured value, and the replay check names the operation."""
    from fcgpu.solver_ema import WeightEMA
    apply = WeightEMA.apply

    def host_rates(self, model, d, a):
        (d, a), = self.rates(1)
        self.updates += 1
        apply(self, model, d, a)
    monkeypatch.setattr(WeightEMA, "apply", host_rates)
    s = _solver(emu.cp, blobs(np.random.default_rng(14)), np.float32, "adam", True, 0.7,
                True, 0.0, cuda_graph=True, epochs=1, ema_decay=0.8)
    with pytest.raises(AssertionError, match=r"\(multiply.__call__\): argument baked"):
        s.train()


def test_emulated_average_flushes_subnormals_on_both_steps(emu):
    """The average is updated with CuPy's own elementwise operations, which flush
    float32 subnormals (-ftz=true; the stand-in too), on the plain and the captured
    step alike: the two agree bit for bit, and a weight row that stays subnormal (its
    gradient is zero) is averaged to zero on the GPU, where NumPy keeps it."""
    data = blobs(np.random.default_rng(12))
    for key in ("X_train", "X_val"):
        data[key] = data[key].copy()
        data[key][:, 0] = 0.0
    tiny = np.float32(np.finfo(np.float32).tiny)
    row = np.arange(1, 17, dtype=np.float32) * tiny / np.float32(64)
    solvers = []
    for xp, graph in ((emu.cp, False), (emu.cp, True), (np, False)):
        s = _solver(xp, data, np.float32, "sgd", False, 0, True, 0.0, cuda_graph=graph,
                    epochs=1, ema_decay=0.5)
        s.model.params["W1"][0, :] = row
        s.ema.params["W1"][0, :] = row
        s.train()
        solvers.append(s)
    _assert_same_training(*solvers[:2])
    assert not _np(solvers[1].ema.params["W1"])[0].any()
    assert bits_equal(_np(solvers[2].ema.params["W1"])[0], row)


def test_emulated_graph_recaptures_when_a_baked_hyperparameter_changes(emu):
    data = blobs(np.random.default_rng(7))
    s = _solver(emu.cp, data, np.float32, "adam", False, 0, True, 0.0, cuda_graph=True,
                epochs=1)
    s.train()
    for c in s.optim_configs.values():
        c["beta1"] = 0.5
    s.num_epochs = 2
    s.train()
    assert s._graph_step.captures == 2


def test_emulated_solver_cuda_graph_refuses_a_custom_rule(emu):
    data = blobs(np.random.default_rng(8))
    model = _model(emu.cp, np.float32, False, 0, True, 0.0)
    with pytest.raises(ValueError, match="cannot be captured.*adam"):
        Solver(model, data, update_rule=optim.sgd, cuda_graph=True)


def test_emulated_graph_epoch_has_at_most_its_batches(emu):
    """Adam's bias corrections are uploaded per epoch, one row per batch: a step past
    the epoch's batches is refused until begin_epoch uploads the next rows."""
    data = blobs(np.random.default_rng(9))
    s = _solver(emu.cp, data, np.float32, "adam", True, 0, True, 0.0, cuda_graph=True,
                epochs=1)
    s.train()
    g = s._graph_step
    with pytest.raises(RuntimeError, match="begin_epoch"):
        g.step()
    g.begin_epoch(np.arange(80), s.optim_configs)
    t0 = s.optim_configs["W1"]["t"]
    assert _np(g.corr[0, :, 0]).tolist() == [1 - 0.9 ** t
                                             for t in range(t0 + 1, t0 + 1 + g.per_epoch)]
    with labels_checked():  # (as Solver.train steps: the replay reruns the body's Python)
        g.step()


# what a step must not do while it is captured (each one fails a real capture), with
# the exception CuPy raises for it
D2H = (RuntimeError, TRANSFER_REFUSAL % "D2H")
H2D = (RuntimeError, TRANSFER_REFUSAL % "H2D")
FORBIDDEN_IN_CAPTURE = {
    "float": (lambda g, cp: float(g.loss_buf[0]), D2H),
    "int": (lambda g, cp: int(g.ctr[0]), D2H),
    "bool": (lambda g, cp: bool(g.ctr[0] == 0), D2H),
    "item": (lambda g, cp: g.ctr[0].item(), D2H),
    "tolist": (lambda g, cp: g.lr.tolist(), D2H),
    "get": (lambda g, cp: g.ctr.get(), D2H),
    "asnumpy": (lambda g, cp: cp.asnumpy(g.lr), D2H),
    "asarray of a host array": (lambda g, cp: cp.asarray(np.zeros(3)), H2D),
    "asarray of a scalar": (lambda g, cp: cp.asarray(1.5), H2D),
    "array of a list": (lambda g, cp: cp.array([1.0, 2.0]), H2D),
    "set": (lambda g, cp: g.lr.set(np.zeros(g.lr.shape)), H2D),
    "synchronize": (lambda g, cp: cp.cuda.get_current_stream().synchronize(),
                    (CUDARuntimeError, "not permitted while a stream is capturing")),
    "CuPy's @ (cuBLAS)": (lambda g, cp: g.Xb @ g.model.params["W1"],
                          (NotImplementedError, LIBRARY_REFUSAL % "cuBLAS")),
    "cupy.matmul (cuBLAS)": (lambda g, cp: cp.matmul(g.Xb.T, g.Xb),
                             (NotImplementedError, LIBRARY_REFUSAL % "cuBLAS")),
    "cupy.dot of matrices (cuBLAS)": (lambda g, cp: cp.dot(g.Xb, g.Xb.T),
                                      (NotImplementedError, LIBRARY_REFUSAL % "cuBLAS")),
    "cupy.random (cuRAND)": (lambda g, cp: cp.random.random(3),
                             (NotImplementedError, LIBRARY_REFUSAL % "cuRAND")),
    "cupy.linalg.inv (cuSOLVER)": (lambda g, cp: cp.linalg.inv(g.Xb[:2, :2]),
                                   (NotImplementedError, LIBRARY_REFUSAL % "cuSOLVER")),
}


@pytest.mark.parametrize("what", sorted(FORBIDDEN_IN_CAPTURE))
def test_emulated_capture_refuses_what_cupy_refuses(emu, monkeypatch, what):
    """The stand-in is only as good as what it refuses: a step that reads the device,
    uploads host data, synchronizes or calls one of CuPy's library wrappers fails to
    capture, with the exception CuPy raises; the same step run uncaptured (the
    warm-up before the capture) is fine."""
    from fcgpu.cuda.graph import GraphedTrainStep
    body = GraphedTrainStep._body
    bad, (error, message) = FORBIDDEN_IN_CAPTURE[what]
    ran = []

    def bad_body(self):
        body(self)
        bad(self, emu.cp)
        ran.append(emu.state.capturing)
    monkeypatch.setattr(GraphedTrainStep, "_body", bad_body)
    s = _solver(emu.cp, blobs(np.random.default_rng(9)), np.float32, "adam", True, 0.7, True,
                0.0, cuda_graph=True, epochs=1)
    with pytest.raises(error, match=re.escape(message)):
        s.train()
    assert ran == [False]  # the warm-up ran it; the capture refused it
    assert not emu.state.capturing  # the failed capture was ended


def test_emulated_vector_products_need_no_cublas(emu):
    """CuPy reduces a product of two vectors (and anything empty) with its own kernels
    (_routines_linalg.pyx tensordot_core, lines 557-578): legal in a capture, as the
    regularization term's ``xp.dot(flat, flat)`` needs; a matrix product is not."""
    cp = emu.cp
    x = cp.asarray(np.arange(6.0))
    with emu.cp.cuda.Stream() as s:
        s.begin_capture()
        try:
            cp.dot(x, x)
            _ = x @ x
            cp.dot(x[:0], x[:0])
            with pytest.raises(NotImplementedError, match="cuBLAS"):
                cp.dot(x.reshape(2, 3), x.reshape(3, 2))
            with pytest.raises(NotImplementedError, match="cuBLAS"):
                _ = x.reshape(2, 3) @ x[:3]
        finally:
            s.end_capture()


def test_emulated_graph_body_on_cupys_matmul_fails_to_capture(emu, monkeypatch):
    """The step as it was before fcgpu.cuda.blas (the layers' products through CuPy's
    ``@``) cannot be captured: CuPy's cuBLAS wrapper refuses (issue #6290). The same
    run with the products through fcgpu.cuda.blas captures (the Solver tests below)."""
    from fcgpu import linalg
    monkeypatch.setattr(linalg, "matmul", lambda a, b, role=None: a @ b)
    s = _solver(emu.cp, blobs(np.random.default_rng(9)), np.float32, "adam", True, 0.7, True,
                0.0, cuda_graph=True, epochs=1)
    with pytest.raises(NotImplementedError, match=re.escape(LIBRARY_REFUSAL % "cuBLAS")):
        s.train()
    assert not emu.state.capturing


def test_emulated_replay_checks_static_buffers_where_the_capture_saw_them(emu, monkeypatch):
    """A static buffer reallocated after the capture (the graph still reads the old
    one) fails the replay's comparison at the first launch that uses it."""
    from fcgpu.cuda.graph import GraphedTrainStep
    begin = GraphedTrainStep.begin_epoch
    old = []

    def realloc_perm(self, order, configs, **kwargs):
        if self._graph is not None:
            old.append(self.perm)  # (kept alive: its address cannot be reused)
            self.perm = emu.cp.zeros_like(self.perm)
        begin(self, order, configs, **kwargs)
    monkeypatch.setattr(GraphedTrainStep, "begin_epoch", realloc_perm)
    s = _solver(emu.cp, blobs(np.random.default_rng(10)), np.float32, "sgd", False, 0, True,
                0.0, cuda_graph=True, epochs=2)
    with pytest.raises(AssertionError, match="launch 0 .fcgpu_gather_rows.*static buffer moved"):
        s.train()
    assert old


# ----------------------------------------------------------------- on a GPU

requires_gpu = pytest.mark.skipif(not CUPY_OK, reason="needs CuPy and a CUDA device: %s"
                                  % (CUPY_WHY,))


@pytest.fixture(scope="module")
def cp():
    from gpu_util import cupy
    return cupy()


def _tol(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def _noise_drift_bound(solver):
    """The farthest the Solver's update rule can have moved a parameter whose
    gradient is rounding noise (|g| <= 1 per step for SGD and momentum; any g for
    Adam and RMSProp, whose steps are normalized: Kingma & Ba's bound
    lr * max(1, (1 - beta1) / sqrt(1 - beta2)), and lr / sqrt(1 - decay_rate))."""
    cfg = solver.optim_configs["b1"]
    rule = solver.update_rule_name
    if rule == "adam":
        k = max(1.0, (1 - cfg["beta1"]) / np.sqrt(1 - cfg["beta2"]))
    elif rule == "rmsprop":
        k = 1 / np.sqrt(1 - cfg["decay_rate"])
    elif rule == "sgd_momentum":
        k = 1 / (1 - cfg["momentum"])
    else:
        k = 1.0
    per_epoch = len(solver.loss_history) // solver.epoch
    lr_sum = per_epoch * sum(cfg["learning_rate"] / solver.lr_decay ** (solver.epoch - e)
                             for e in range(solver.epoch))
    return k * lr_sum


def _assert_close_training(host, a, b, rtol):
    """Solvers a (uncaptured) and b (captured) trained alike, up to rounding: losses,
    weights, gammas, betas, the last bias and the running variances within ``rtol``
    (a diagnosis before the bit-for-bit check: it tells "close but not identical"
    from "wrong"). The biases that feed a batchnorm have a true gradient of
    zero: Adam and RMSProp turn their noise into full-size steps, different on each
    side, and batchnorm removes them again. Those biases, and the running means they
    shift, are compared on the absolute scale of how far noise can move them."""
    np.testing.assert_allclose(b.loss_history, a.loss_history, rtol=rtol)
    model = a.model
    bn_fed = {"b%d" % (i + 1) for i in range(len(model.hidden_dims))} \
        if model.use_batchnorm else set()
    drift = 2 * max(_noise_drift_bound(a), _noise_drift_bound(b))
    for k in model.params:
        pa, pb = host(a.model.params[k]), host(b.model.params[k])
        if k in bn_fed:
            np.testing.assert_allclose(pb, pa, rtol=0, atol=drift, err_msg=k)
        else:
            np.testing.assert_allclose(pb, pa, rtol=rtol,
                                       atol=rtol * max(float(np.abs(pa).max()), 1e-30),
                                       err_msg=k)
    for bpa, bpb in zip(a.model.bn_params, b.model.bn_params):
        ma, mb = host(bpa["running_mean"]), host(bpb["running_mean"])
        np.testing.assert_allclose(mb, ma, rtol=rtol, atol=drift, err_msg="running_mean")
        va, vb = host(bpa["running_var"]), host(bpb["running_var"])
        np.testing.assert_allclose(vb, va, rtol=rtol, atol=rtol, err_msg="running_var")


def test_close_training_comparison_can_fail(emu):
    """The GPU comparison above, on two emulated runs: it passes when only the
    batchnorm-fed biases (and so the running means) differ by noise-sized steps, and
    fails when anything else moves, or those biases move farther than noise can."""
    data = blobs(np.random.default_rng(5))
    a = _solver(emu.cp, data, np.float32, "adam", True, 0.7, True, 0.0, cuda_graph=False)
    b = _solver(emu.cp, data, np.float32, "adam", True, 0.7, True, 0.0, cuda_graph=True)
    a.train()
    b.train()
    _assert_close_training(_np, a, b, 1e-3)
    drift = _noise_drift_bound(a)
    assert 0 < drift < 1
    b.model.params["b1"] = b.model.params["b1"] + drift
    b.model.bn_params[0]["running_mean"] = b.model.bn_params[0]["running_mean"] - drift
    _assert_close_training(_np, a, b, 1e-3)
    for key, bump in (("b1", 2.5 * drift), ("W1", 1e-2), ("gamma2", 1e-2), ("b3", 1e-2)):
        c = _solver(emu.cp, data, np.float32, "adam", True, 0.7, True, 0.0, cuda_graph=False)
        c.train()
        c.model.params[key] = c.model.params[key] + bump
        with pytest.raises(AssertionError, match=key):
            _assert_close_training(_np, a, c, 1e-3)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("rule,bn,dropout,fresh,reg,dtype", EMA_CONFIGS)
def test_gpu_graphed_average_matches_uncaptured(cp, rule, bn, dropout, fresh, reg, dtype):
    """The moving average of the weights on a real capture: one graph, and the plain
    step's average, count and accuracies bit for bit (both update it with the same
    CuPy operations; the captured one reads (d_t, 1 - d_t) from device memory)."""
    data = blobs(np.random.default_rng(15), n=240)
    plain = _solver(cp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph=False, epochs=3,
                    ema_decay=0.9)
    plain.train()
    graphed = _solver(cp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph=True,
                      epochs=3, ema_decay=0.9)
    graphed.train()
    g = graphed._graph_step
    steps = 3 * (200 // 20)
    assert g.captures == 1 and g.replays == steps - 1 and graphed.ema.updates == steps
    _assert_same_training(plain, graphed, host=cp.asnumpy)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule,bn,dropout,fresh,reg", CONFIGS)
def test_gpu_graphed_solver_matches_uncaptured(cp, rule, bn, dropout, fresh, reg, dtype):
    data = blobs(np.random.default_rng(5), n=240)
    plain = _solver(cp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph=False, epochs=3)
    plain.train()
    graphed = _solver(cp, data, dtype, rule, bn, dropout, fresh, reg, cuda_graph=True, epochs=3)
    graphed.train()
    g = graphed._graph_step
    steps = 3 * (200 // 20)
    # one capture for the whole run (the lr decays through device memory), every
    # step after the first a replay, device counters where the host expects them
    assert g.captures == 1 and g.replays == steps - 1
    assert g.counters() == g.host_counters()
    assert g.counters()["steps"] == steps
    assert g._pool.total_bytes() > 0  # the step's temporaries live in the private pool
    # the same minibatches and dropout masks (other masks would move the losses by far
    # more): first the losses and parameters to rounding (what went wrong, if anything
    # does), then the guarantee: the captured step makes the plain step's kernel
    # launches and cuBLAS calls (fcgpu.cuda.blas: same handle settings and workspace
    # size), so the whole run is the same bit for bit
    tol = _tol(dtype)
    np.testing.assert_allclose(graphed.loss_history[0], plain.loss_history[0], rtol=tol)
    _assert_close_training(cp.asnumpy, plain, graphed, 100 * tol)
    _assert_same_training(plain, graphed, host=cp.asnumpy)
    assert plain.model.dropout_step == graphed.model.dropout_step
    for k, ca in plain.optim_configs.items():
        cb = graphed.optim_configs[k]
        assert ca["learning_rate"] == cb["learning_rate"]
        if rule == "adam":
            assert ca["t"] == cb["t"] == steps
        for key in ("m", "v", "velocity", "cache"):
            if key in ca:
                np.testing.assert_allclose(cp.asnumpy(cb[key]), cp.asnumpy(ca[key]),
                                           rtol=1000 * tol, atol=1000 * tol, err_msg=key)
    lrs = np.array([c["learning_rate"] for c in graphed.optim_configs.values()])
    np.testing.assert_allclose(cp.asnumpy(g.lr), lrs / 0.8, rtol=1e-15)  # last epoch's
    assert lrs[0] == pytest.approx({"adam": 1e-2, "sgd": 5e-2, "sgd_momentum": 2e-2,
                                    "sgd_nesterov": 2e-2, "rmsprop": 1e-3}[rule] * 0.8 ** 3,
                                   rel=1e-14)


@pytest.mark.gpu
@requires_gpu
def test_gpu_graphed_solver_continues_after_restore_best(cp):
    data = blobs(np.random.default_rng(6), n=240)
    cfg = ("adam", True, 0.7, True, 0.0)
    plain = _solver(cp, data, np.float32, *cfg, cuda_graph=False, epochs=1)
    graphed = _solver(cp, data, np.float32, *cfg, cuda_graph=True, epochs=1)
    for s in (plain, graphed):
        s.train()
        s.num_epochs = 2
        s.train()
    assert graphed._graph_step.captures == 1
    _assert_close_training(cp.asnumpy, plain, graphed, 1e-3)
    _assert_same_training(plain, graphed, host=cp.asnumpy)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_adam_kernels_vs_float64_reference(cp, dtype):
    from fcgpu.cuda import ops
    rng = np.random.default_rng(9)
    for n in (1, 3, 4, 5, 1001, 1 << 20):
        for misaligned in (False, True):
            h = [rng.standard_normal(n + 1).astype(dtype) for _ in range(3)]
            h.append(rng.random(n + 1).astype(dtype))
            d = [cp.asarray(a) for a in h]
            if misaligned:
                h, d = [a[1:] for a in h], [a[1:] for a in d]
            else:
                h, d = [a[:n] for a in h], [a[:n] for a in d]
            w, dw, m, v = d
            out = train_ops.adam_step(w, dw, m, v, 3e-3, 0.9, 0.999, 1e-8, 17)
            h64 = [a.astype(np.float64) for a in h]
            ref = fused_optim.adam_step_ref(h64[0], h64[1], h64[2], h64[3], 3e-3, 0.9, 0.999,
                                            1e-8, 17)
            tag = "%s n=%d%s" % (np.dtype(dtype).name, n, " misaligned" if misaligned else "")
            assert_close(cp.asnumpy(out), ref, dtype, "adam next_w " + tag)
            assert_close(cp.asnumpy(m), h64[2], dtype, "adam m " + tag)
            assert_close(cp.asnumpy(v), h64[3], dtype, "adam v " + tag)
            # in the array dtype, the kernel rounds like NumPy: bit-identical
            hm, hv = h[2].copy(), h[3].copy()
            d2 = [cp.asarray(a) for a in (h[0], h[1], hm, hv)]
            out2 = train_ops.adam_step(*d2, 3e-3, 0.9, 0.999, 1e-8, 17)
            assert bits_equal(cp.asnumpy(out2),
                              fused_optim.adam_step_ref(h[0], h[1], hm, hv, 3e-3, 0.9, 0.999,
                                                        1e-8, 17)), tag
            # the device variant: t and lr from device memory
            hm, hv = h[2].copy(), h[3].copy()
            d3 = [cp.asarray(a) for a in (h[0], h[1], hm, hv)]
            train_ops.adam_step_device(d3[0], d3[1], d3[2], d3[3], cp.asarray([3e-3]),
                                 cp.asarray(train_ops.bias_corrections(0.9, 0.999, 16, 2)),
                                 cp.asarray(np.array([1], np.uint64)), 0.9, 0.999, 1e-8)
            assert_close(cp.asnumpy(d3[0]), ref, dtype, "adam_dev next_w " + tag)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "sgd_nesterov", "rmsprop"])
def test_gpu_rule_kernels_bit_identical_to_optim(cp, dtype, rule):
    from fcgpu.cuda import ops
    rng = np.random.default_rng(10)
    code = optim.RULES[rule].device_id
    key = {"sgd": None, "sgd_momentum": "velocity", "sgd_nesterov": "velocity",
           "rmsprop": "cache"}[rule]
    h = {"sgd": 0.0, "sgd_momentum": 0.85, "sgd_nesterov": 0.85, "rmsprop": 0.95}[rule]
    for n in (1, 7, 4096, 100003):
        w, dw, s = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype), \
            rng.random(n).astype(dtype)
        cfg = {"learning_rate": 3e-2, "momentum": 0.85, "decay_rate": 0.95, "epsilon": 1e-7}
        if key:
            cfg[key] = s.copy()
        ref, cfg = optim.RULES[rule](w, dw, cfg)
        dwd, sd, wd = cp.asarray(dw), cp.asarray(s), cp.asarray(w)
        train_ops.rule_step_device(code, wd, dwd, sd if key else None, cp.asarray([3e-2]), h=h,
                             eps=1e-7)
        assert bits_equal(cp.asnumpy(wd), ref), (rule, n)
        if key:
            assert bits_equal(cp.asnumpy(sd), cfg[key]), (rule, n)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_device_stream_dropout_bit_identical(cp, dtype):
    from fcgpu.cuda import ops
    rng = np.random.default_rng(11)
    seed, base, off = 2 ** 40 + 3, 2 ** 33 + 17, 2
    ctr = cp.asarray(np.array([0, base, 0, 0], np.uint64))
    ds = frandom.DeviceStream(ctr[1:2], off)
    for shape in [(1,), (7,), (1 << 16,), (490, 500), (33, 7)]:
        xh = rng.standard_normal(shape).astype(dtype)
        x = cp.asarray(xh)
        for p in (0.3, 0.8):
            a, _ = ops.dropout_forward(x, p, seed, ds)
            ref, _ = fused.dropout_forward_ref(xh, p, seed, base + off)
            assert bits_equal(cp.asnumpy(a), ref), (shape, p)
            assert bits_equal(cp.asnumpy(ops.relu_dropout_forward(x, p, seed, ds)),
                              fused.relu_dropout_forward_ref(xh, p, seed, base + off))
            if len(shape) == 2:
                d = shape[1]
                g, bt = cp.ones(d, dtype), cp.zeros(d, dtype)
                o1, _, _ = ops.bn_relu_dropout_forward(x, g, bt, 1e-5, 0.9, cp.zeros(d, dtype),
                                                       cp.ones(d, dtype), p, seed, ds)
                o2, _, _ = ops.bn_relu_dropout_forward(x, g, bt, 1e-5, 0.9, cp.zeros(d, dtype),
                                                       cp.ones(d, dtype), p, seed, base + off)
                assert bits_equal(cp.asnumpy(o1), cp.asnumpy(o2)), (shape, p)
    ctr[1] = base + 100  # the kernels read the counter when they run
    a, _ = ops.dropout_forward(x, 0.5, seed, ds)
    assert bits_equal(cp.asnumpy(a), fused.dropout_forward_ref(xh, 0.5, seed, base + 102)[0])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_gather_rows_and_advance(cp, dtype):
    from fcgpu.cuda import ops
    rng = np.random.default_rng(12)
    for d in (3072, 12, 7):
        n, b = 300, 49
        Xh = rng.standard_normal((n, d)).astype(dtype)
        yh = rng.integers(0, 10, n).astype(np.int64)
        order = rng.permutation(n)
        X, y, perm = cp.asarray(Xh), cp.asarray(yh), cp.asarray(order)
        ctr = cp.zeros(4, np.uint64)
        Xb, yb = cp.empty((b, d), dtype), cp.empty(b, np.int64)
        loss_buf = cp.zeros(n // b, dtype)
        for step in range(n // b + 2):
            batch = step % (n // b)
            train_ops.gather_rows(X, y, perm, ctr[0:1], Xb, yb)
            rows = order[batch * b:(batch + 1) * b]
            assert np.array_equal(cp.asnumpy(Xb), Xh[rows]), (d, step)
            assert np.array_equal(cp.asnumpy(yb), yh[rows]), (d, step)
            train_ops.graph_advance(ctr, cp.asarray(np.array(step, dtype)), loss_buf, n // b, 3)
        assert list(cp.asnumpy(ctr)) == [2, 3 * (n // b + 2), n // b + 2, n // b + 2]


def test_emulated_gpu_smoke_sections(emu):
    """bench/gpu_smoke.py's optimizer, cuBLAS and graph sections (run under the
    sanitizers on the GPU machine) pass on the host-built kernels and the host
    stand-in for libcublas."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "bench" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("fcgpu_gpu_smoke", path)
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        smoke.run_optim(emu.cp, dtype, rng)
        smoke.run_blas(emu.cp, dtype, rng)
        smoke.run_graph(emu.cp, dtype, rng)
    assert smoke.FAILURES == []
    launched = {name for name, _, _ in emu.log}
    from fcgpu.cuda import module as cmod
    assert launched >= set(cmod.MODULES["optim"][1]) | set(cmod.MODULES["graph"][1])
