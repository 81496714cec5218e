"""``fcgpu.cuda.ops`` against the stand-in for CuPy of tests/test_kernels_host.py
(NumPy-backed arrays, kernels that only check their launch): every launch must pass
exactly the kernel's parameter list (count, pointer dtypes, 64-bit integers,
float/double scalars by value; read from the emulator library's symbols), a valid grid
and a block within the kernel's ``__launch_bounds__`` (from NVRTC's PTX), arrays large
enough and aligned where the vector path needs it; and the arguments it refuses."""
from __future__ import annotations

import numpy as np
import pytest

from fcgpu.cuda.ops import chunk_layout
import test_kernels_host as tkh
from test_kernels_host import DTYPES, _fake, _misaligned


@pytest.fixture
def fake_cuda(kernel_signatures, launch_bounds, monkeypatch):
    """fcgpu.cuda.ops behind the stand-in, its kernels checking their launches only:
    ``(ops, launch log)``."""
    return tkh._install_fake_cuda(kernel_signatures, launch_bounds, monkeypatch)[:2]


def test_chunk_layout_covers_rows():
    for n in (1, 2, 63, 64, 65, 490, 4097, 65536, 10 ** 6):
        for d in (1, 31, 32, 500, 4096):
            for sms in (1, 8, 132):
                r, g = chunk_layout(n, d, sms)
                assert r >= 1 and 1 <= g <= 65535
                assert (g - 1) * r < n <= g * r, (n, d, sms, r, g)


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
