"""The CUDA kernels on a GPU against the float64 xp references of ``fcgpu.fused``.

Every test here is marked ``gpu`` and skips with the reason ``fcgpu.backend`` gives
where CuPy or a device is missing. Run on a GPU machine with
``PYTHONPATH=. python3 -m pytest tests/test_kernels_gpu.py -m gpu -rs`` (or through
``bench/gpu_check.sh``).

* each fused step against the float64 reference, in every layout: the ``gpu``
  implementation of tests/test_fused_contract.py (which runs the same contract on the
  NumPy reference, Numba and the emulated kernels);
* here: the exact steps on subnormals, signed zeros, infinities and NaN (CuPy's
  -ftz=true), running statistics through copies, a large offset, validation errors,
  arrays past 2^31 and 2^32 elements (both elementwise batchnorm paths and dropout)
  where the free GPU memory allows;
* whole-net float64 gradient checks on CuPy; NumPy and CuPy training runs with the
  same seed draw the same masks and the same losses for the first steps.
"""
from __future__ import annotations

import numpy as np
import pytest

from fcgpu import random as frandom
from gpu_util import (CUPY_OK, CUPY_WHY, assert_close, bits_equal, cupy, mask_window,
                      need_device_bytes)
from helpers import check_exact_steps_on_edge_values

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUPY_OK, reason="needs CuPy and a CUDA device: %s" % (CUPY_WHY,)),
]

DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def cp():
    return cupy()


@pytest.fixture(scope="module")
def ops():
    from fcgpu.cuda import ops as cuda_ops
    return cuda_ops


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_steps_keep_float32_subnormals(cp, ops, dtype):
    """CuPy compiles with -ftz=true; the steps that promise NumPy's bits still keep
    subnormal inputs and results, give relu(-0.0) = +0.0, and keep NaN a NaN."""
    check_exact_steps_on_edge_values(ops, cp.asarray, cp.asnumpy, dtype)


# ----------------------------------------------------------------- batchnorm

def _bn_inputs(cp, dtype, shape, rng):
    n, d = shape
    xh = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, d)
          + 2.0 * rng.standard_normal(d)).astype(dtype)
    x = cp.asarray(xh)
    gh = rng.uniform(0.5, 1.5, d).astype(dtype)
    bh = rng.standard_normal(d).astype(dtype)
    return x, xh, cp.asarray(gh), gh, cp.asarray(bh), bh


@pytest.mark.parametrize("dtype", DTYPES)
def test_running_stats_views_and_other_dtypes(cp, ops, dtype):
    rng = np.random.default_rng(4)
    x, xh, g, _, b, _ = _bn_inputs(cp, dtype, (50, 6), rng)
    other = np.float64 if dtype == np.float32 else np.float32
    big = cp.zeros(12, dtype)
    rm = big[::2]
    rv = cp.ones(6, other)
    ops.bn_forward_train(x, g, b, 1e-5, 0.8, rm, rv)
    x64 = xh.astype(np.float64)
    assert np.allclose(rm.get(), 0.2 * x64.mean(axis=0), rtol=1e-5, atol=1e-7)
    assert not bool(big[1::2].any())
    assert np.allclose(rv.get(), 0.8 + 0.2 * x64.var(axis=0), rtol=1e-5)


def test_large_offset_batchnorm_is_stable(cp, ops):
    rng = np.random.default_rng(8)
    xh = (rng.standard_normal((65536, 64)) + 1e4).astype(np.float32)
    g, b = cp.ones(64, cp.float32), cp.zeros(64, cp.float32)
    rm, rv = cp.zeros(64, cp.float32), cp.zeros(64, cp.float32)
    _, mean, inv_std = ops.bn_forward_train(cp.asarray(xh), g, b, 1e-5, 0.0, rm, rv)
    var = xh.astype(np.float64).var(axis=0)
    assert np.allclose(rv.get(), var, rtol=2e-3)
    assert np.allclose(inv_std.get(), 1 / np.sqrt(var + 1e-5), rtol=1e-3)


def test_validation_errors(cp, ops):
    x = cp.ones((4, 3), cp.float32)
    g = cp.ones(3, cp.float32)
    with pytest.raises(ValueError):
        ops.dropout_forward(cp.ones(4, cp.int32), 0.5, 1, 2)
    with pytest.raises(ValueError):
        ops.bn_forward_train(cp.ones((2, 3, 4), cp.float32), g, g, 1e-5, 0.9, g, g)
    with pytest.raises(ValueError):
        ops.bn_forward_train(x, cp.ones(4, cp.float32), g, 1e-5, 0.9, g.copy(), g.copy())
    with pytest.raises(ValueError):
        ops.relu_dropout_backward(x, cp.ones((3, 4), cp.float32), 0.5)


# ----------------------------------------------------------------- past 2^31 elements

def test_dropout_past_2_31_and_2_32_elements(cp, ops):
    n = 2 ** 32 + 4099  # past 2^32: 64-bit element and block indices everywhere
    need_device_bytes(2 * n * 4 + (1 << 30), "dropout on 2^32+ fp32 elements")
    p, seed, stream = 0.6, 2 ** 33 + 1, 5
    x = cp.arange(n, dtype=cp.float32)
    out, _ = ops.dropout_forward(x, p, seed, stream)
    s = frandom.dropout_scale(p, np.float32)
    for start in (0, 2 ** 31 - 5, 2 ** 32 - 7, n - 4099):
        stop = min(n, start + 4099)
        xh = x[start:stop].get()
        ref = np.where(mask_window(start, stop, p, seed, stream), xh * s, np.float32(0))
        assert bits_equal(out[start:stop].get(), ref), start
    del x, out
    cp.get_default_memory_pool().free_all_blocks()


def test_mask_past_2_31_elements(cp, ops):
    n = 2 ** 31 + 13
    need_device_bytes(n + (1 << 30), "a 2^31+ element mask")
    m = ops.dropout_mask((n,), 0.5, 7, 2 ** 32 + 1)
    for start in (0, 2 ** 31 - 6, n - 13):
        stop = min(n, start + 1000)
        assert np.array_equal(m[start:stop].get(), mask_window(start, stop, 0.5, 7, 2 ** 32 + 1))
    del m
    cp.get_default_memory_pool().free_all_blocks()


@pytest.mark.parametrize("d", [4096, 4095])
def test_bn_relu_dropout_past_2_31_elements(cp, ops, d):
    """(N, D) with N*D > 2^31: the 2-D vector path (D % 4 == 0) and the flat path."""
    n = 2 ** 31 // d + 3
    need_device_bytes(3 * n * d * 4 + (1 << 30), "batchnorm on 2^31+ fp32 elements")
    x = cp.random.standard_normal((n, d), dtype=cp.float32)
    g = cp.asarray(np.linspace(0.5, 1.5, d, dtype=np.float32))
    b = cp.asarray(np.linspace(-1, 1, d, dtype=np.float32))
    rm, rv = cp.zeros(d, cp.float32), cp.ones(d, cp.float32)
    p, seed, stream = 0.8, 3, 2 ** 32 + 9
    out, mean, inv_std = ops.bn_relu_dropout_forward(x, g, b, 1e-5, 0.9, rm, rv, p, seed, stream)
    # float64 column statistics, in chunks
    s1 = cp.zeros(d, cp.float64)
    for r in range(0, n, 65536):
        s1 += x[r:r + 65536].astype(cp.float64).sum(axis=0)
    mean64 = s1 / n
    s2 = cp.zeros(d, cp.float64)
    for r in range(0, n, 65536):
        s2 += ((x[r:r + 65536].astype(cp.float64) - mean64) ** 2).sum(axis=0)
    var64 = (s2 / n).get()
    mean64 = mean64.get()
    # standard-normal columns have means near 0: measure their error against the std
    assert_close(mean.get(), mean64, np.float32, "mean", magnitude=np.sqrt(var64))
    assert_close(inv_std.get(), 1 / np.sqrt(var64 + 1e-5), np.float32, "inv_std")
    sc = frandom.dropout_scale(p, np.float64)
    gh, bh = g.get().astype(np.float64), b.get().astype(np.float64)
    for r0 in (0, (2 ** 31) // d - 1, n - 2):
        rows = slice(r0, r0 + 2)
        xh = x[rows].get().astype(np.float64)
        y = np.maximum((xh - mean64) / np.sqrt(var64 + 1e-5) * gh + bh, 0)
        start = r0 * d
        keep = mask_window(start, start + 2 * d, p, seed, stream).reshape(2, d)
        ref = np.where(keep, y * sc, 0.0)
        assert_close(out[rows].get(), ref, np.float32, "rows %d.." % r0)
    del x, out
    cp.get_default_memory_pool().free_all_blocks()


def bn_relu_dropout_flat_windows(xp, forward, limit, d=4095, period=61):
    """The fused forward on an (n, d) fp32 array with n*d just past ``limit`` (2^32 on
    the GPU: fcgpu_col_flat's 64-bit branch; d % 4 != 0 takes the flat path, with a
    tail block), checked against float64 references at the rows around flat index
    ``limit`` and at the end. (d = 4095 keeps the rows per column, and so the fp32
    reductions, near those of the 2^31 test above.)

    Cheap at 2^32 elements: the rows repeat a block of ``period`` random rows, so the
    float64 column statistics come from that block (and the checked rows, which hold
    fresh values of their own: a wrong row or column there shows), with no pass over
    the whole array on the host or in float64. Returns the checked windows."""
    rng = np.random.default_rng(21)
    half = max(4, 2048 // d)  # rows checked on each side of flat index `limit`
    reps = (limit // d + 3 * half) // period + 1
    while (reps * period * d) % 4 == 0:
        reps += 1
    n = reps * period
    assert n * d > limit and (n * d) % 4
    block = (rng.standard_normal((period, d)) * rng.uniform(0.5, 2.0, d)
             + rng.standard_normal(d)).astype(np.float32)
    x = xp.tile(xp.asarray(block), (reps, 1))
    r = limit // d
    windows = [slice(r - half, r + half), slice(n - half - 1, n)]
    assert windows[0].stop < windows[1].start
    old, new = [], []
    for w in windows:
        new.append(rng.standard_normal((w.stop - w.start, d)).astype(np.float32) + 0.5)
        old.append(block[np.arange(w.start, w.stop) % period].astype(np.float64))
        x[w] = xp.asarray(new[-1])
    b64 = block.astype(np.float64)
    mean64 = (reps * b64.sum(axis=0) - sum(o.sum(axis=0) for o in old)
              + sum(v.astype(np.float64).sum(axis=0) for v in new)) / n
    m2 = (reps * ((b64 - mean64) ** 2).sum(axis=0) - sum(((o - mean64) ** 2).sum(axis=0)
                                                         for o in old)
          + sum(((v.astype(np.float64) - mean64) ** 2).sum(axis=0) for v in new))
    var64 = m2 / n
    g = np.linspace(0.5, 1.5, d).astype(np.float32)
    b = np.linspace(-1.0, 1.0, d).astype(np.float32)
    p, seed, stream = 0.7, 2 ** 33 + 5, 2 ** 32 + 11
    out, mean, inv_std = forward(x, xp.asarray(g), xp.asarray(b), 1e-5, 0.9,
                                 xp.zeros(d, np.float32), xp.ones(d, np.float32), p, seed,
                                 stream)
    host = lambda a: a.get() if hasattr(a, "get") else np.asarray(a)  # noqa: E731
    assert_close(host(mean), mean64, np.float32, "mean", magnitude=np.sqrt(var64))
    assert_close(host(inv_std), 1 / np.sqrt(var64 + 1e-5), np.float32, "inv_std")
    sc = frandom.dropout_scale(p, np.float64)
    for w, v in zip(windows, new):
        y = np.maximum((v.astype(np.float64) - mean64) / np.sqrt(var64 + 1e-5) * g + b, 0)
        keep = mask_window(w.start * d, w.stop * d, p, seed, stream).reshape(-1, d)
        got = host(out[w])
        assert not np.any(got[~keep]), "rows %d..%d: a dropped unit is not 0" % (w.start, w.stop)
        assert_close(got, np.where(keep, y * sc, 0.0), np.float32,
                     "rows %d..%d" % (w.start, w.stop))
    return windows


def test_bn_relu_dropout_flat_path_past_2_32_elements(cp, ops):
    """fcgpu_col_flat past 2^32 elements (its 64-bit column arithmetic): 2 x 16 GiB."""
    need_device_bytes(2 * (2 ** 32 + 2 ** 20) * 4 + (1 << 30),
                      "batchnorm on 2^32+ fp32 elements")
    bn_relu_dropout_flat_windows(cp, ops.bn_relu_dropout_forward, 2 ** 32)
    cp.get_default_memory_pool().free_all_blocks()


# ----------------------------------------------------------------- whole nets

def _small_data(n, d, c, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(c, size=n)


# The numerical check costs two loss evaluations per parameter entry. It runs where
# our kernels compute a backward pass (ReLU-dropout, batchnorm, the fused sandwich);
# the plain net runs only CuPy's own operations, which the comparison with the NumPy
# net covers (and tests/test_fc_net.py checks that one numerically on the CPU).
@pytest.mark.parametrize("use_bn,dropout,numerical", [(False, 0, False), (False, 0.25, True),
                                                      (True, 0, True), (True, 0.5, True)])
def test_fc_net_gradient_check_float64_on_cupy(cp, use_bn, dropout, numerical):
    from fcgpu.fc_net import FullyConnectedNet
    from fcgpu.gradient_check import eval_numerical_gradient, rel_error

    # H1 % 4 == 0 takes the 2-D vector path of the column kernels, H2 % 4 != 0 the
    # flat path; 3,900 loss evaluations in all (15-20-30-10 layers on all four nets
    # took 10,500 to check the same code; much smaller layers leave a batch of 3
    # with all of a layer's units dropped, a ReLU kink the check cannot pass).
    N, D, H1, H2, C = 3, 10, 20, 14, 6
    X, y = _small_data(N, D, C, 0)
    kw = dict(input_dim=D, num_classes=C, weight_scale=5e-2, dtype=np.float64, seed=123,
              dropout=dropout, use_batchnorm=use_bn, reg=0.1)
    model = FullyConnectedNet([H1, H2], xp=cp, **kw)
    Xd, yd = cp.asarray(X), cp.asarray(y)
    loss, grads = model.loss(Xd, yd)
    # the same net on NumPy gives the same loss and gradients (same seed, same masks)
    model_np = FullyConnectedNet([H1, H2], xp=np, **kw)
    loss_np, grads_np = model_np.loss(X, y)
    assert abs(float(loss) - float(loss_np)) <= 1e-10 * max(1.0, abs(float(loss_np)))
    for name in sorted(grads):
        assert np.allclose(grads[name].get(), grads_np[name], rtol=1e-8, atol=1e-10), name
    if not numerical:
        return
    for name in sorted(grads):
        f = lambda _: model.loss(Xd, yd)[0]  # noqa: E731
        num = eval_numerical_gradient(f, model.params[name], verbose=False, h=1e-5).get()
        ana = grads[name].get()
        scale = max(np.linalg.norm(num), np.linalg.norm(ana))
        if scale < 1e-7:
            # e.g. the biases feeding a batchnorm: the true gradient is 0
            assert np.abs(num - ana).max() < 1e-8, name
            continue
        err = np.linalg.norm(num - ana) / scale
        assert err < 1e-6, "%s: normwise relative error %.3g (course-style max %.3g)" % (
            name, err, rel_error(num, ana))


def test_numpy_and_cupy_training_agree(cp):
    """Same seed on both backends: the same dropout masks every step and the same
    losses for the first steps (float64: to 1e-8; float32: to 1e-4)."""
    from fcgpu.fc_net import FullyConnectedNet
    from fcgpu.layers import dropout_forward
    from fcgpu.solver import Solver

    # layer level: the same masks
    xh = np.random.default_rng(1).standard_normal((100, 50))
    dp = {"mode": "train", "p": 0.7, "seed": 2 ** 40 + 1, "stream": 3}
    out_np, _ = dropout_forward(xh, dict(dp))
    out_cp, _ = dropout_forward(cp.asarray(xh), dict(dp))
    assert bits_equal(out_cp.get(), out_np)

    rng = np.random.default_rng(0)
    data = {"X_train": rng.standard_normal((400, 30)), "y_train": rng.integers(10, size=400),
            "X_val": rng.standard_normal((100, 30)), "y_val": rng.integers(10, size=100)}
    for dtype, tol in ((np.float64, 1e-8), (np.float32, 1e-4)):
        histories = []
        for xp in (np, cp):
            model = FullyConnectedNet([40, 40], input_dim=30, num_classes=10, dropout=0.6,
                                      use_batchnorm=True, weight_scale=5e-2, dtype=dtype,
                                      seed=7, fresh_masks=True, xp=xp)
            solver = Solver(model, data, update_rule="adam",
                            optim_config={"learning_rate": 1e-3}, batch_size=50, num_epochs=1,
                            verbose=False, seed=11)
            solver.train()
            histories.append([float(v) for v in solver.loss_history])
        h_np, h_cp = histories
        assert len(h_np) == len(h_cp) >= 5
        first = np.array(h_np[:5])
        assert np.allclose(np.array(h_cp[:5]), first, rtol=tol, atol=0), (dtype, h_np[:5], h_cp[:5])
