"""The compiled CPU path (fcgpu.cpu.ops, Numba) against the plain xp references in
fcgpu.fused, computed in float64 on fresh random inputs: fp32 within 1e-5, dropout
outputs bit-identical."""
import numpy as np
import pytest

from fcgpu import fused
from fcgpu.cpu import ops
from fcgpu.fused_optim import adam_step_ref
from helpers import assert_close_to_ref

SHAPES = [(490, 500), (7, 13), (2, 1), (64, 3)]
DTYPES = [(np.float32, 1e-5), (np.float64, 1e-12)]


def _bn_inputs(rng, shape, dtype):
    n, d = shape
    x = (rng.standard_normal(shape) * 3 + rng.standard_normal(d) * 5).astype(dtype)
    gamma = rng.standard_normal(d).astype(dtype)
    beta = rng.standard_normal(d).astype(dtype)
    return x, gamma, beta


def _f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def _assert_within_terms(a, ref, terms, tol, what):
    """Elementwise |a - ref| <= tol * terms, ``terms`` the magnitudes of what the
    computation adds up: the bound rounding obeys however much the terms cancel."""
    err = np.abs(np.asarray(a, np.float64) - ref)
    worst = np.max(err / np.maximum(terms, 1e-300))
    assert worst <= tol, "%s: error %.3g of its terms' magnitude >= %.3g" % (what, worst, tol)


def _assert_bn_forward(got, ref, x, gamma, beta, tol, p=1.0, running=None):
    """Output, mean, inv_std (and the running statistics ``(new, new_ref, old_mean,
    old_var, momentum)``) against the float64 reference. With N=2 the two rows can be
    close, and x - mean cancels to the rounding of x; gamma * xhat + beta can cancel
    too; so each is held to the magnitude of its terms, and, with more rows, also to
    the norm-wise relative error."""
    out, mean, inv_std = got
    ref_out, ref_mean, ref_inv = ref
    x64, g64, b64 = _f64(x, gamma, beta)
    terms = (np.abs(g64) * ref_inv * (np.abs(x64) + np.abs(ref_mean)) + np.abs(b64)) / p
    _assert_within_terms(out, ref_out, terms, tol, "out")
    assert_close_to_ref(mean, ref_mean, tol)
    assert_close_to_ref(inv_std, ref_inv, tol)
    if x.shape[0] > 2:
        assert_close_to_ref(out, ref_out, tol)
    if running is not None:
        (rm, rv), (rm_ref, rv_ref), (rm_old, rv_old), m = running
        # momentum * old + (1 - momentum) * batch stat: the old mean can cancel the new
        _assert_within_terms(rm, rm_ref, m * np.abs(rm_old) + (1 - m) * np.abs(ref_mean), tol,
                             "running_mean")
        assert_close_to_ref(rv, rv_ref, tol)


def _assert_bn_grads(got, ref, dy, x, gamma, mean, inv_std, tol):
    """dgamma, dbeta against the reference; dx against the size of the terms that
    cancel in gamma*inv_std/N * (N*dy - dbeta - xhat*dgamma): with N=2 they cancel
    to rounding noise, where an elementwise relative error means nothing."""
    dx, dgamma, dbeta = got
    rdx, rdgamma, rdbeta = ref
    assert dx.dtype == dgamma.dtype == dbeta.dtype == x.dtype
    n = x.shape[0]
    # dgamma = sum(dy * xhat), dbeta = sum(dy): sums that can cancel, of an xhat whose
    # rounding is that of x - mean (see _assert_bn_forward)
    xterm = (np.abs(x.astype(np.float64)) + np.abs(mean)) * inv_std
    _assert_within_terms(dgamma, rdgamma, np.sum(np.abs(dy) * xterm, axis=0), tol, "dgamma")
    _assert_within_terms(dbeta, rdbeta, np.sum(np.abs(dy), axis=0), tol, "dbeta")
    if n > 2:
        assert_close_to_ref(dgamma, rdgamma, tol)
        assert_close_to_ref(dbeta, rdbeta, tol)
    # dx = gamma*inv_std/N * (N*dy - dbeta - xhat*dgamma), with xhat and dgamma as
    # well or badly conditioned as above
    sdy = np.sum(np.abs(dy), axis=0)
    terms = np.abs(gamma * inv_std / n) * (n * np.abs(dy) + sdy + xterm * (
        np.abs(rdgamma) + np.sum(np.abs(dy) * xterm, axis=0)))
    assert np.max(np.abs(dx - rdx)) <= tol * np.max(terms)
    if n > 2:
        assert_close_to_ref(dx, rdx, tol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_bn_forward_train(rng, shape, dtype, tol):
    x, gamma, beta = _bn_inputs(rng, shape, dtype)
    d = shape[1]
    rm, rv = rng.standard_normal(d).astype(dtype), rng.random(d).astype(dtype)
    rm64, rv64 = _f64(rm, rv)
    rm_old, rv_old = rm64.copy(), rv64.copy()
    out, mean, inv_std = ops.bn_forward_train(x, gamma, beta, 1e-5, 0.9, rm, rv)
    ref = fused.bn_forward_train_ref(*_f64(x, gamma, beta), 1e-5, 0.9, rm64, rv64)
    assert out.dtype == dtype and mean.dtype == dtype
    _assert_bn_forward((out, mean, inv_std), ref, x, gamma, beta, tol,
                       running=((rm, rv), (rm64, rv64), (rm_old, rv_old), 0.9))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("p", [1.0, 0.8, 0.3])
def test_bn_relu_dropout_forward_and_backward(rng, shape, dtype, tol, p):
    x, gamma, beta = _bn_inputs(rng, shape, dtype)
    d = shape[1]
    seed, stream = int(rng.integers(2**63)), int(rng.integers(2**63))
    rm, rv = np.zeros(d, dtype), np.ones(d, dtype)
    out, mean, inv_std = ops.bn_relu_dropout_forward(x, gamma, beta, 1e-5, 0.9, rm, rv,
                                                     p, seed, stream)
    x64, g64, b64 = _f64(x, gamma, beta)
    rm64, rv64 = np.zeros(d), np.ones(d)
    ref_out, ref_mean, ref_inv = fused.bn_relu_dropout_forward_ref(
        x64, g64, b64, 1e-5, 0.9, rm64, rv64, p, seed, stream)
    _assert_bn_forward((out, mean, inv_std), (ref_out, ref_mean, ref_inv), x, gamma, beta,
                       tol, p=p, running=((rm, rv), (rm64, rv64), (np.zeros(d), np.ones(d)),
                                          0.9))
    # the same units are dropped
    kept = fused.reference.dropout_forward(np.ones(shape), p, seed, stream)[0] > 0
    assert not np.any(out[~kept])

    dout = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = ops.bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p)
    # reference from the reference forward's own output and statistics
    ref = fused.bn_relu_dropout_backward_ref(dout.astype(np.float64), ref_out, x64, g64,
                                             ref_mean, ref_inv, p)
    dy = fused.relu_dropout_backward_ref(dout.astype(np.float64), ref_out, p)
    _assert_bn_grads((dx, dgamma, dbeta), ref, dy, x, g64, ref_mean, ref_inv, tol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_bn_backward_and_infer(rng, shape, dtype, tol):
    x, gamma, beta = _bn_inputs(rng, shape, dtype)
    d = shape[1]
    rm, rv = rng.standard_normal(d).astype(dtype), rng.random(d).astype(dtype) + 0.5
    got = ops.bn_forward_infer(x, gamma, beta, 1e-5, rm, rv)
    x64, g64, b64, rm64, rv64 = _f64(x, gamma, beta, rm, rv)
    ref = fused.bn_forward_infer_ref(x64, g64, b64, 1e-5, rm64, rv64)
    terms = np.abs(g64) * (np.abs(x64) + np.abs(rm64)) / np.sqrt(rv64 + 1e-5) + np.abs(b64)
    _assert_within_terms(got, ref, terms, tol, "inference out")
    if shape[0] > 2:
        assert_close_to_ref(got, ref, tol)
    mean = x.mean(axis=0)
    inv_std = (1 / np.sqrt(x.astype(np.float64).var(axis=0) + 1e-5)).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    got = ops.bn_backward(dout, x, gamma, mean, inv_std)
    ref = fused.bn_backward_ref(*_f64(dout, x, gamma, mean, inv_std))
    _assert_bn_grads(got, ref, dout.astype(np.float64), x, *_f64(gamma, mean, inv_std), tol)


# (130, 257): chunks of rows whose elements start off a Philox block boundary
@pytest.mark.parametrize("shape", [(490, 500), (130, 257), (3, 5, 7), (1,), (6, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_dropout_and_relu_dropout_are_bit_identical(rng, shape, dtype, p):
    x = rng.standard_normal(shape).astype(dtype)
    seed, stream = int(rng.integers(2**64, dtype=np.uint64)), int(rng.integers(2**40))
    out, mask = ops.dropout_forward(x, p, seed, stream)
    ref_out, ref_mask = fused.dropout_forward_ref(x, p, seed, stream)
    assert out.dtype == dtype and np.array_equal(out, ref_out)
    dout = rng.standard_normal(shape).astype(dtype)
    assert np.array_equal(ops.dropout_backward(dout, p, seed, stream, mask),
                          fused.dropout_backward_ref(dout, p, seed, stream, ref_mask))
    # without the stored mask, the backward regenerates it
    assert np.array_equal(ops.dropout_backward(dout, p, seed, stream, None),
                          fused.dropout_backward_ref(dout, p, seed, stream, None))
    rout = ops.relu_dropout_forward(x, p, seed, stream)
    assert np.array_equal(rout, fused.relu_dropout_forward_ref(x, p, seed, stream))
    assert np.array_equal(ops.relu_dropout_backward(dout, rout, p),
                          fused.relu_dropout_backward_ref(dout, rout, p))


def _db_tol(db, ref_dx, tol):
    """db = dx.sum(axis=0) against a float64 sum: the sum may cancel (it is zero up to
    rounding after batchnorm), so scale by the sum of magnitudes."""
    return np.max(np.abs(db - ref_dx.sum(axis=0))) <= tol * np.max(np.abs(ref_dx).sum(axis=0))


@pytest.mark.parametrize("shape", [(490, 500), (130, 257), (7, 13), (2, 1)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("p", [1.0, 0.8])
def test_bias_bn_relu_dropout_is_the_pass_on_x_plus_b(rng, shape, dtype, tol, p):
    """The bias-folded passes give exactly what the plain passes give on ``x + b``
    (the bias is added in the input's precision), and db = dx.sum(axis=0)."""
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
    # and against the float64 reference (not with N=2: there x - mean can cancel to
    # the rounding of x + b, whatever computes it)
    ref_out = fused.bias_bn_relu_dropout_forward_ref(*_f64(x, b, gamma, beta), 1e-5, 0.9,
                                                     np.zeros(d), np.ones(d), p, seed, stream)[0]
    if shape[0] > 2:
        assert_close_to_ref(out, ref_out, tol)

    dout = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta, db = ops.bias_bn_relu_dropout_backward(dout, out, x, b, gamma, mean,
                                                              inv_std, p)
    dx2, dgamma2, dbeta2 = ops.bn_relu_dropout_backward(dout, out, xb, gamma, mean, inv_std, p)
    for a, a2 in ((dx, dx2), (dgamma, dgamma2), (dbeta, dbeta2)):
        assert a.dtype == dtype and np.array_equal(a, a2)
    assert db.dtype == dtype and db.shape == (d,)
    ref = fused.bias_bn_relu_dropout_backward_ref(*_f64(dout, out, x, b, gamma, mean, inv_std),
                                                  p)
    if shape[0] > 2:
        assert_close_to_ref(dx, ref[0], tol)
    # db is the sum of the dx returned (the float64 reference's own dx differs from it
    # by the rounding of terms that cancel, which with N=2 is all of it)
    assert _db_tol(db, dx.astype(np.float64), tol)


@pytest.mark.parametrize("shape", [(490, 500), (130, 257), (7, 13), (2, 1)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_bias_relu_dropout_is_the_pass_on_x_plus_b(rng, shape, dtype, tol, p):
    x = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    seed, stream = int(rng.integers(2**63)), int(rng.integers(2**63))
    out = ops.bias_relu_dropout_forward(x, b, p, seed, stream)
    assert out.dtype == dtype
    assert np.array_equal(out, ops.relu_dropout_forward(x + b, p, seed, stream))
    assert np.array_equal(out, fused.bias_relu_dropout_forward_ref(x, b, p, seed, stream))
    dout = rng.standard_normal(shape).astype(dtype)
    dx, db = ops.bias_relu_dropout_backward(dout, out, p)
    assert np.array_equal(dx, ops.relu_dropout_backward(dout, out, p))
    assert db.dtype == dtype
    ref_dx, _ = fused.bias_relu_dropout_backward_ref(dout.astype(np.float64), out, p)
    assert _db_tol(db, ref_dx, tol)
    assert_close_to_ref(db, ref_dx.sum(axis=0), tol)


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


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_adam_step(rng, dtype, tol):
    w, dw, m = (rng.standard_normal(10007).astype(dtype) for _ in range(3))
    v = rng.random(10007).astype(dtype)
    m64, v64 = _f64(m, v)
    got = ops.adam_step(w, dw, m, v, 1e-3, 0.9, 0.999, 1e-8, 3)
    ref = adam_step_ref(*_f64(w, dw), m64, v64, 1e-3, 0.9, 0.999, 1e-8, 3)
    assert_close_to_ref(got, ref, tol)
    assert_close_to_ref(m, m64, tol)
    assert_close_to_ref(v, v64, tol)


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
    old = fused.use_compiled_cpu()
    try:
        results = []
        for compiled, net in zip((True, False), nets):
            fused.use_compiled_cpu(compiled)
            results.append(net.loss(X, y))
            assert fused.folds_bias(X) == compiled
    finally:
        fused.use_compiled_cpu(old)
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
