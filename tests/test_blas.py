"""fcgpu.cuda.blas (products through cuBLAS itself) and its dispatch point fcgpu.linalg.

* emulated (no GPU): the stand-in for CuPy of tests/test_cuda_graph.py with the host
  stand-in for libcublas (tests/host/fake_cublas.c): every layout the layers use
  against a float64 reference, the cuBLAS calls made (handle bound to the current
  stream, then its workspace; compute types), the precision switch, and the refusals;
* GPU (``-m gpu``): the same products against a float64 reference and CuPy's own
  ``@``, and a product captured in a CUDA graph against the same product uncaptured,
  bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

import fake_cublas
from fcgpu import backend, linalg
from fcgpu.cuda import blas
from gpu_util import CUPY_OK, CUPY_WHY, assert_close, bits_equal
from test_cuda_graph import emu  # noqa: F401  (fixture)

DTYPES = [np.float32, np.float64]


def _np(a):
    return np.array(a).view(np.ndarray)


def _layouts(rng, dtype, m, k, n):
    """(a, b) pairs as the layers pass them: x2 @ w, x2.T @ dout, dout @ w.T, and
    non-contiguous views (copied first)."""
    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)
    yield "x @ w", r(m, k), r(k, n)
    yield "x.T @ d", r(k, m).T, r(k, n)
    yield "d @ w.T", r(m, k), r(n, k).T
    yield "a.T @ b.T", r(k, m).T, r(n, k).T
    yield "strided", r(m, 2 * k)[:, ::2], r(k + 3, n)[3:]


@pytest.fixture
def fixed_precision():
    """The matmul precision back to what it was after the test."""
    before = backend.get_matmul_precision()
    yield
    backend.set_matmul_precision(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(7, 5, 3), (1, 9, 4), (6, 1, 2), (4, 3, 1), (1, 8, 1),
                                   (33, 64, 17)])
def test_emulated_products_match_float64(emu, dtype, m, k, n):  # noqa: F811
    """Mutants caught: either operation flag swapped, a leading dimension of the
    wrong operand, operands passed in row-major order (a first)."""
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    for what, a, b in _layouts(rng, dtype, m, k, n):
        ref = a.astype(np.float64) @ b.astype(np.float64)
        out = linalg.matmul(emu.cp.asarray(a), emu.cp.asarray(b))
        assert out.shape == (m, n) and out.dtype == dtype and out.flags.c_contiguous, what
        assert_close(_np(out), ref, dtype, "%s %s" % (what, (m, k, n)))


def test_emulated_product_calls(emu):  # noqa: F811
    """One cublasGemmEx per product, on the current stream with the stream's
    workspace (cublasSetStream resets it: the stand-in refuses a capture without),
    column-major: out^T = op(b)^T op(a)^T, so b's base comes first."""
    cp = emu.cp
    rng = np.random.default_rng(1)
    x, w = (cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((6, 4), (4, 5)))
    emu.cublas.fake_cublas_log_clear()
    linalg.matmul(x, w)
    linalg.matmul(x.T, x)
    (c1, c2) = fake_cublas.log(emu.cublas)
    assert (c1["transa"], c1["transb"], c1["m"], c1["n"], c1["k"]) == (0, 0, 5, 6, 4)
    assert (c1["B"], c1["A"], c1["lda"], c1["ldb"], c1["ldc"]) == (x.data.ptr, w.data.ptr,
                                                                   5, 4, 5)
    assert (c2["transa"], c2["transb"], c2["m"], c2["n"], c2["k"]) == (0, 1, 4, 4, 6)
    assert c1["compute"] == blas.COMPUTE_32F and c1["type"] == blas.CUDA_R_32F
    assert c1["stream"] == cp.cuda.get_current_stream().ptr
    assert c1["workspace_bytes"] == blas.workspace_bytes(90) == 32 << 20
    assert blas.workspace_bytes(86) == 4 << 20


def test_emulated_workspace_per_stream_and_capture_rules(emu):  # noqa: F811
    """A stream gets its own workspace the first time it runs a product; the first
    product on a stream may not be inside a capture (its workspace would be allocated
    there), and the product inside a capture is recorded, not run."""
    cp = emu.cp
    a = cp.asarray(np.ones((3, 3), np.float32))
    linalg.matmul(a, a)
    fresh = cp.cuda.Stream(non_blocking=True)
    with fresh:
        fresh.begin_capture()
        try:
            with pytest.raises(RuntimeError, match="inside a CUDA-graph capture.*once uncaptured"):
                linalg.matmul(a, a)
        finally:
            fresh.end_capture()
    side = cp.cuda.Stream(non_blocking=True)
    with side:
        warm = linalg.matmul(a, a)
        assert _np(warm).tolist() == [[3.0] * 3] * 3
        computed = emu.cublas.fake_cublas_computed()
        side.begin_capture()
        try:
            linalg.matmul(a, a)
        finally:
            side.end_capture()
        assert emu.cublas.fake_cublas_computed() == computed
    handles = blas._local.handles[0].workspaces
    assert set(handles) == {cp.cuda.get_current_stream().ptr, side.ptr}


def test_emulated_precision_switch(emu, fixed_precision):  # noqa: F811
    """'high' asks cuBLAS for TF32 on float32 products from compute capability 8.0
    on (the stand-in then rounds the inputs to TF32); float64 and older GPUs compute
    as under 'highest'. Mutant caught: TF32 on float64, or regardless of the device."""
    cp = emu.cp
    rng = np.random.default_rng(2)
    a32 = rng.standard_normal((8, 16)).astype(np.float32)
    b32 = rng.standard_normal((16, 4)).astype(np.float32)
    ref = a32.astype(np.float64) @ b32.astype(np.float64)
    backend.set_matmul_precision("highest")
    exact = _np(linalg.matmul(cp.asarray(a32), cp.asarray(b32)))
    assert_close(exact, ref, np.float32, "highest")
    assert not blas.tf32_enabled(np.float32)
    assert backend.set_matmul_precision("high") == "highest"
    assert blas.tf32_enabled(np.float32) and not blas.tf32_enabled(np.float64)
    emu.cublas.fake_cublas_log_clear()
    tf32 = _np(linalg.matmul(cp.asarray(a32), cp.asarray(b32)))
    linalg.matmul(cp.asarray(a32.astype(np.float64)), cp.asarray(b32.astype(np.float64)))
    c32, c64 = fake_cublas.log(emu.cublas)
    assert c32["compute"] == blas.COMPUTE_32F_FAST_TF32 and c64["compute"] == blas.COMPUTE_64F
    assert not np.array_equal(tf32, exact)
    np.testing.assert_allclose(tf32, ref, rtol=0, atol=5e-3 * np.abs(ref).max())
    blas._capability[0] = 75  # a Turing GPU: no TF32
    assert not blas.tf32_enabled(np.float32)
    emu.cublas.fake_cublas_log_clear()
    linalg.matmul(cp.asarray(a32), cp.asarray(b32))
    assert fake_cublas.log(emu.cublas)[0]["compute"] == blas.COMPUTE_32F


def test_precision_setting_checks_its_value(monkeypatch, fixed_precision):
    with pytest.raises(ValueError, match="unknown matmul precision 'medium'.*highest, high"):
        backend.set_matmul_precision("medium")
    monkeypatch.setattr(backend, "_precision", None)
    monkeypatch.setenv(backend.PRECISION_ENV_VAR, "fast")
    with pytest.raises(ValueError, match="FCGPU_MATMUL_PRECISION: unknown matmul precision"):
        backend.get_matmul_precision()
    monkeypatch.setenv(backend.PRECISION_ENV_VAR, " High ")
    assert backend.get_matmul_precision() == "high"


def test_emulated_edge_shapes_and_errors(emu):  # noqa: F811
    cp = emu.cp
    z = linalg.matmul(cp.asarray(np.ones((3, 0), np.float32)),
                      cp.asarray(np.ones((0, 2), np.float32)))
    assert _np(z).tolist() == [[0.0, 0.0]] * 3
    assert linalg.matmul(cp.asarray(np.ones((0, 4))), cp.asarray(np.ones((4, 2)))).shape == (0, 2)
    with pytest.raises(ValueError, match="do not chain"):
        linalg.matmul(cp.asarray(np.ones((2, 3))), cp.asarray(np.ones((2, 3))))
    with pytest.raises(ValueError, match="both float32 or both float64"):
        linalg.matmul(cp.asarray(np.ones((2, 3), np.float32)), cp.asarray(np.ones((3, 2))))
    with pytest.raises(ValueError, match="both float32 or both float64"):
        linalg.matmul(cp.asarray(np.ones((2, 3), np.int64)), cp.asarray(np.ones((3, 2), np.int64)))
    with pytest.raises(TypeError, match="needs CuPy arrays"):
        blas.matmul(np.ones((2, 2)), np.ones((2, 2)))


def test_cublas_errors_name_the_call_and_status(emu, monkeypatch):  # noqa: F811
    """A cuBLAS status other than success becomes CublasError naming the call (the
    stand-in returns CUBLAS_STATUS_INVALID_VALUE for a leading dimension too small)."""
    cp = emu.cp
    a = cp.asarray(np.ones((4, 3), np.float32))
    monkeypatch.setattr(blas, "_operand", lambda x, cp_: (x, blas.OP_N, 1))
    with pytest.raises(blas.CublasError, match=r"cublasGemmEx\(4x3 @ 3x4.*INVALID_VALUE \(7\)"):
        linalg.matmul(a, a.T)


def test_library_errors_are_one_line(monkeypatch):
    monkeypatch.setattr(blas, "_lib", None)
    monkeypatch.setenv(blas.LIBRARY_ENV_VAR, "/nonexistent/libcublas.so.13")
    with pytest.raises(OSError, match="nonexistent"):
        blas.library()
    monkeypatch.delenv(blas.LIBRARY_ENV_VAR)
    import sys
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", None)
    with pytest.raises(backend.BackendUnavailable, match="cuda.pathfinder is not installed"):
        blas.library()


def test_numpy_products_are_numpys():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    assert bits_equal(linalg.matmul(a, b), a @ b)
    assert bits_equal(linalg.matmul(a.T.T, b), a @ b)


# ----------------------------------------------------------------- on a GPU

requires_gpu = pytest.mark.skipif(not CUPY_OK, reason="needs CuPy and a CUDA device: %s"
                                  % (CUPY_WHY,))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(490, 3072, 500), (490, 500, 10), (7, 5, 3), (1, 9, 4)])
def test_gpu_products_match_float64_and_cupy(dtype, m, k, n, fixed_precision):
    from gpu_util import cupy
    cp = cupy()
    backend.set_matmul_precision("highest")
    rng = np.random.default_rng(m + k + n)
    for what, a, b in _layouts(rng, dtype, m, k, n):
        ref = a.astype(np.float64) @ b.astype(np.float64)
        da, db = cp.asarray(a), cp.asarray(b)
        out = blas.matmul(da, db)
        assert_close(cp.asnumpy(out), ref, dtype, "%s %s" % (what, (m, k, n)))
        assert_close(cp.asnumpy(out), cp.asnumpy(da @ db).astype(np.float64), dtype,
                     "against CuPy's @, " + what)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_captured_product_is_bit_identical(dtype, fixed_precision):
    """The guarantee of fcgpu.cuda.blas: the same call captured in a CUDA graph and
    replayed gives the bits of the uncaptured call (same handle settings and
    workspace size; CuPy's own @ could not even be captured)."""
    from gpu_util import cupy
    cp = cupy()
    rng = np.random.default_rng(4)
    a = cp.asarray(rng.standard_normal((490, 3072)).astype(dtype))
    b = cp.asarray(rng.standard_normal((3072, 500)).astype(dtype))
    for precision in backend.MATMUL_PRECISIONS:
        backend.set_matmul_precision(precision)
        side = cp.cuda.Stream(non_blocking=True)
        out = cp.empty((490, 500), dtype)
        with side:
            blas.matmul(a, b, out=out)      # uncaptured, on the side stream
            plain = out.copy()
            side.synchronize()
            out.fill(0)
            side.begin_capture()
            blas.matmul(a, b, out=out)
            graph = side.end_capture()
            with pytest.raises(NotImplementedError, match="stream capture"):
                side.begin_capture()
                try:
                    a @ b                    # what CuPy refuses (issue #6290)
                finally:
                    side.end_capture()
        graph.launch(stream=side)
        side.synchronize()
        assert bits_equal(cp.asnumpy(out), cp.asnumpy(plain)), precision


def test_emulated_training_reports_the_precision_it_ran_in(emu, fixed_precision):  # noqa: F811
    """What fcgpu train prints and records (metrics 'tf32') for each case on a GPU."""
    from fcgpu.train import TrainConfig, _matmul_note
    cfg = TrainConfig(matmul_precision="high")
    backend.set_matmul_precision("high")
    assert _matmul_note(cfg, emu.cp) == ("matmul precision high: float32 products in TF32", True)
    note, tf32 = _matmul_note(TrainConfig(matmul_precision="high", dtype="float64"), emu.cp)
    assert not tf32 and "float64 products" in note
    blas._capability[0] = 75
    note, tf32 = _matmul_note(cfg, emu.cp)
    assert not tf32 and "compute capability 8.0" in note
    backend.set_matmul_precision("highest")
    note, tf32 = _matmul_note(TrainConfig(), emu.cp)
    assert not tf32 and note == "matmul precision highest: float32 products in float32"
