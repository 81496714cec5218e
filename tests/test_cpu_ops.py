"""What the compiled CPU path (fcgpu.cpu.ops, Numba) does beyond the contract every
implementation meets (tests/test_fused_contract.py: each fused step against the float64
reference): the bias-folded passes are the plain passes on ``x + b``, inputs its loops
are not written for take the reference, the Philox fill is vectorized, and a whole
training step on the compiled path equals the reference path's."""
import numpy as np
import pytest

from fcgpu import fused
from fcgpu.cpu import ops
from helpers import assert_close_to_ref

DTYPES = [(np.float32, 1e-5), (np.float64, 1e-12)]


def _bn_inputs(rng, shape, dtype):
    n, d = shape
    x = (rng.standard_normal(shape) * 3 + rng.standard_normal(d) * 5).astype(dtype)
    gamma = rng.standard_normal(d).astype(dtype)
    beta = rng.standard_normal(d).astype(dtype)
    return x, gamma, beta


@pytest.mark.parametrize("shape", [(490, 500), (130, 257), (7, 13), (2, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1.0, 0.8])
def test_bias_bn_relu_dropout_is_the_pass_on_x_plus_b(rng, shape, dtype, p):
    """The bias-folded passes give exactly what the plain passes give on ``x + b``
    (the bias is added in the input's precision). (Against the float64 reference, and
    db: tests/test_fused_contract.py.)"""
    x, gamma, beta = _bn_inputs(rng, shape, dtype)
    b = (rng.standard_normal(shape[1]) * 4).astype(dtype)
    seed, stream = int(rng.integers(2**63)), int(rng.integers(2**63))
    d = shape[1]
    rm, rv = rng.standard_normal(d).astype(dtype), rng.random(d).astype(dtype)
    rm2, rv2 = rm.copy(), rv.copy()
    out, mean, inv_std = ops.bias_bn_relu_dropout_forward(x, b, gamma, beta, 1e-5, 0.9, rm, rv,
                                                          p, seed, stream)
    xb = x + b
    out2, mean2, inv_std2 = ops.bn_relu_dropout_forward(xb, gamma, beta, 1e-5, 0.9, rm2, rv2,
                                                        p, seed, stream)
    for a, a2 in ((out, out2), (mean, mean2), (inv_std, inv_std2), (rm, rm2), (rv, rv2)):
        assert a.dtype == dtype and np.array_equal(a, a2)

    dout = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta, db = ops.bias_bn_relu_dropout_backward(dout, out, x, b, gamma, mean,
                                                              inv_std, p)
    dx2, dgamma2, dbeta2 = ops.bn_relu_dropout_backward(dout, out, xb, gamma, mean, inv_std, p)
    for a, a2 in ((dx, dx2), (dgamma, dgamma2), (dbeta, dbeta2)):
        assert a.dtype == dtype and np.array_equal(a, a2)
    assert db.dtype == dtype and db.shape == (d,)


@pytest.mark.parametrize("shape", [(490, 500), (130, 257), (7, 13), (2, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_bias_relu_dropout_is_the_pass_on_x_plus_b(rng, shape, dtype, p):
    x = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    seed, stream = int(rng.integers(2**63)), int(rng.integers(2**63))
    out = ops.bias_relu_dropout_forward(x, b, p, seed, stream)
    assert out.dtype == dtype
    assert np.array_equal(out, ops.relu_dropout_forward(x + b, p, seed, stream))
    dout = rng.standard_normal(shape).astype(dtype)
    dx, db = ops.bias_relu_dropout_backward(dout, out, p)
    assert np.array_equal(dx, ops.relu_dropout_backward(dout, out, p))
    assert db.dtype == dtype and db.shape == (shape[1],)


def test_bias_passes_take_the_reference_for_other_inputs(rng):
    x = rng.standard_normal((40, 30)).astype(np.float32)[:, ::2]
    b, g = rng.standard_normal(15).astype(np.float32), np.ones(15, np.float32)
    out, mean, inv_std = ops.bias_bn_relu_dropout_forward(
        x, b, g, b, 1e-5, 0.9, np.zeros(15, np.float32), np.ones(15, np.float32), 0.5, 1, 2)
    ref = fused.bias_bn_relu_dropout_forward_ref(x, b, g, b, 1e-5, 0.9, np.zeros(15),
                                                 np.ones(15), 0.5, 1, 2)[0]
    assert_close_to_ref(out, ref, 1e-5)
    dout = rng.standard_normal((40, 30)).astype(np.float32)[:, ::2]
    got = ops.bias_bn_relu_dropout_backward(dout, out, x, b, g, mean, inv_std, 0.5)
    want = fused.bias_bn_relu_dropout_backward_ref(dout, out, x, b, g, mean, inv_std, 0.5)
    for a, r in zip(got[:3], want[:3]):
        assert_close_to_ref(a, r, 1e-5)
    assert np.array_equal(ops.bias_relu_dropout_forward(x, b, 0.5, 1, 2),
                          fused.bias_relu_dropout_forward_ref(x, b, 0.5, 1, 2))


def _host_has_avx2():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _host_has_avx2(), reason="the host CPU has no AVX2 (or no /proc/cpuinfo)")
def test_philox_fill_runs_on_simd_lanes():
    """The Philox fill compiles to packed 32x32->64 multiplies (vpmuludq), not one block
    at a time: what makes the CPU masks cheap. A fresh, uncached compile (Numba does
    not keep the assembly of cached code) for the host CPU."""
    import numba
    from fcgpu.cpu import philox
    if numba.config.CPU_NAME not in (None, "host"):
        pytest.skip("Numba compiles for %r, not the host CPU" % numba.config.CPU_NAME)
    fill = numba.njit(philox.philox_fill.py_func)
    u = np.uint64
    buf = np.empty(64, np.uint32)
    fill(buf, 5, 16, u(1), u(2), u(3), u(4))
    for q in range(16):  # and it computes the blocks it should
        assert buf[4 * q:4 * q + 4].tolist() == list(philox.philox_block(u(5 + q), u(1), u(2),
                                                                         u(3), u(4)))
    asm = fill.inspect_asm(fill.signatures[0])
    assert "vpmuludq" in asm
    assert "vpmullq" not in asm  # (a full 64-bit multiply: the 32-bit words went unseen)


def test_non_contiguous_inputs_take_the_reference(rng):
    x = rng.standard_normal((40, 30)).astype(np.float32)[:, ::2]
    gamma, beta = np.ones(15, np.float32), np.zeros(15, np.float32)
    out, _, _ = ops.bn_relu_dropout_forward(x, gamma, beta, 1e-5, 0.9, np.zeros(15, np.float32),
                                            np.ones(15, np.float32), 0.5, 1, 2)
    ref, _, _ = fused.bn_relu_dropout_forward_ref(x, gamma, beta, 1e-5, 0.9,
                                                  np.zeros(15, np.float32),
                                                  np.ones(15, np.float32), 0.5, 1, 2)
    assert_close_to_ref(out, ref.astype(np.float64), 1e-5)


@pytest.mark.parametrize("use_batchnorm", [True, False])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_net_step_on_the_compiled_path_equals_the_reference_path(rng, use_batchnorm, dtype, tol):
    """A whole training step (loss, every gradient, running statistics) with the bias
    folded into the compiled passes, against the net on the plain reference passes."""
    from fcgpu.fc_net import FullyConnectedNet
    from helpers import max_rel_error
    X = rng.standard_normal((50, 3, 5, 7)).astype(dtype)
    y = rng.integers(10, size=50)
    nets = []
    for compiled in (True, False):
        net = FullyConnectedNet([60, 40], input_dim=105, num_classes=10, dropout=0.8,
                                use_batchnorm=use_batchnorm, weight_scale=0.1, dtype=dtype,
                                seed=5, fresh_masks=True, xp=np)
        for k, v in net.params.items():  # biases, gammas, betas away from 0 and 1
            if k[0] in "bg":
                v[...] = rng.standard_normal(v.shape)
        nets.append(net)
    nets[1].params = {k: v.copy() for k, v in nets[0].params.items()}
    results = []
    for compiled, net in zip((True, False), nets):
        with fused.force_impl("numba" if compiled else "reference"):
            results.append(net.loss(X, y))
            assert fused.folds_bias(X) == compiled
    (loss, grads), (rloss, rgrads) = results
    assert abs(float(loss) - float(rloss)) <= tol * abs(float(rloss))
    assert sorted(grads) == sorted(rgrads)
    for k in grads:
        assert grads[k].dtype == dtype
        if use_batchnorm and k in ("b1", "b2"):
            # in front of batchnorm: zero up to rounding on both paths
            scale = np.abs(rgrads[k.replace("b", "beta")]).max()
            assert np.abs(grads[k]).max() <= 1e-4 * scale
            assert np.abs(rgrads[k]).max() <= 1e-4 * scale
            continue
        assert max_rel_error(grads[k], rgrads[k]) < 10 * tol, k
    for bp, rbp in zip(nets[0].bn_params, nets[1].bn_params):
        for key in ("running_mean", "running_var"):
            assert_close_to_ref(bp[key], rbp[key].astype(np.float64), tol)
