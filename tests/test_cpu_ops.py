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


def _assert_bn_grads(got, ref, dy, x, gamma, mean, inv_std, tol):
    """dgamma, dbeta against the reference; dx against the size of the terms that
    cancel in gamma*inv_std/N * (N*dy - dbeta - xhat*dgamma): with N=2 they cancel
    to rounding noise, where an elementwise relative error means nothing."""
    dx, dgamma, dbeta = got
    rdx, rdgamma, rdbeta = ref
    assert dx.dtype == dgamma.dtype == dbeta.dtype == x.dtype
    assert_close_to_ref(dgamma, rdgamma, tol)
    assert_close_to_ref(dbeta, rdbeta, tol)
    n = x.shape[0]
    xhat = (x.astype(np.float64) - mean) * inv_std
    terms = np.abs(gamma * inv_std / n) * (n * np.abs(dy) + np.abs(rdbeta) + np.abs(xhat * rdgamma))
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
    out, mean, inv_std = ops.bn_forward_train(x, gamma, beta, 1e-5, 0.9, rm, rv)
    ref = fused.bn_forward_train_ref(*_f64(x, gamma, beta), 1e-5, 0.9, rm64, rv64)
    assert out.dtype == dtype and mean.dtype == dtype
    for a, r in zip((out, mean, inv_std, rm, rv), (*ref, rm64, rv64)):
        assert_close_to_ref(a, r, tol)


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
    ref_out, ref_mean, ref_inv = fused.bn_relu_dropout_forward_ref(
        x64, g64, b64, 1e-5, 0.9, np.zeros(d), np.ones(d), p, seed, stream)
    assert_close_to_ref(out, ref_out, tol)
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
    assert_close_to_ref(ops.bn_forward_infer(x, gamma, beta, 1e-5, rm, rv),
                        fused.bn_forward_infer_ref(*_f64(x, gamma, beta), 1e-5, *_f64(rm, rv)),
                        tol)
    mean = x.mean(axis=0)
    inv_std = (1 / np.sqrt(x.astype(np.float64).var(axis=0) + 1e-5)).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    got = ops.bn_backward(dout, x, gamma, mean, inv_std)
    ref = fused.bn_backward_ref(*_f64(dout, x, gamma, mean, inv_std))
    _assert_bn_grads(got, ref, dout.astype(np.float64), x, *_f64(gamma, mean, inv_std), tol)


@pytest.mark.parametrize("shape", [(490, 500), (3, 5, 7), (1,), (6, 1)])
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
