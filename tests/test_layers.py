"""Each layer against numerical gradients (float64, fresh random inputs), on every
backend the machine has (the ``xp`` fixture)."""
import numpy as np
import pytest

from fcgpu.backend import get_array_module
from fcgpu.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array
from fcgpu.layers import (affine_backward, affine_forward, batchnorm_backward,
                          batchnorm_forward, dropout_backward, dropout_forward, labels_checked,
                          relu_backward, relu_forward, softmax_loss, svm_loss)
from fcgpu.layer_utils import (affine_bn_relu_dropout_backward, affine_bn_relu_dropout_forward,
                               affine_relu_backward, affine_relu_dropout_backward,
                               affine_relu_dropout_forward, affine_relu_forward)
from helpers import grad_error, max_rel_error, rel_error


def randn(xp, rng, *shape, scale=1.0, shift=0.0):
    return xp.asarray(rng.standard_normal(shape) * scale + shift)


def test_affine(xp, rng):
    x, w, b = randn(xp, rng, 4, 2, 3), randn(xp, rng, 6, 5), randn(xp, rng, 5)
    out, cache = affine_forward(x, w, b)
    expected = x.reshape(4, 6) @ w + b
    assert rel_error(out, expected) < 1e-12
    dout = randn(xp, rng, 4, 5)
    dx, dw, db = affine_backward(dout, cache)
    # (grad_error: entries far below the largest see the central difference's rounding)
    assert grad_error(dx, eval_numerical_gradient_array(lambda v: affine_forward(v, w, b)[0], x, dout)) < 1e-8
    assert grad_error(dw, eval_numerical_gradient_array(lambda v: affine_forward(x, v, b)[0], w, dout)) < 1e-8
    assert grad_error(db, eval_numerical_gradient_array(lambda v: affine_forward(x, w, v)[0], b, dout)) < 1e-8
    assert affine_backward(dout, cache, need_dx=False)[0] is None


def test_affine_shape_errors(xp):
    with pytest.raises(ValueError, match="shapes do not chain"):
        affine_forward(xp.ones((2, 3)), xp.ones((4, 5)), xp.ones(5))


def test_relu(xp, rng):
    x = randn(xp, rng, 6, 7)
    out, cache = relu_forward(x)
    assert float(out.min()) >= 0 and rel_error(out, xp.where(x > 0, x, 0)) == 0
    dout = randn(xp, rng, 6, 7)
    dx = relu_backward(dout, cache)
    assert grad_error(dx, eval_numerical_gradient_array(lambda v: relu_forward(v)[0], x, dout)) < 1e-8


@pytest.mark.parametrize("n", [2, 5, 40])
def test_batchnorm_train_gradients(xp, rng, n):
    d = 7
    x = randn(xp, rng, n, d, scale=3.0, shift=5.0)
    gamma, beta = randn(xp, rng, d), randn(xp, rng, d)
    dout = randn(xp, rng, n, d)
    fx = lambda v: batchnorm_forward(v, gamma, beta, {"mode": "train"})[0]
    fg = lambda v: batchnorm_forward(x, v, beta, {"mode": "train"})[0]
    fb = lambda v: batchnorm_forward(x, gamma, v, {"mode": "train"})[0]
    _, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    # with N=2 the normalized output hardly depends on x (xhat = +-1), so dx is of the
    # order of eps and the centered differences carry relative noise of ~1e-5
    tol = 1e-4 if n == 2 else 1e-6
    assert max_rel_error(dx, eval_numerical_gradient_array(fx, x, dout)) < tol
    assert rel_error(dgamma, eval_numerical_gradient_array(fg, gamma, dout)) < 1e-7
    assert rel_error(dbeta, eval_numerical_gradient_array(fb, beta, dout)) < 1e-7


def test_batchnorm_train_output_statistics(xp, rng):
    x = randn(xp, rng, 200, 3, scale=4.0, shift=11.0)
    gamma = xp.asarray([1.0, 2.0, 3.0])
    beta = xp.asarray([0.0, -1.0, 5.0])
    out, _ = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert rel_error(out.mean(axis=0), beta) < 1e-6 or float(abs(out.mean(axis=0) - beta).max()) < 1e-9
    assert float(abs(out.std(axis=0) - gamma).max()) < 1e-4


def test_batchnorm_running_statistics(xp, rng):
    """running = momentum * running + (1 - momentum) * batch statistic (biased var);
    test mode then normalizes with the running statistics."""
    d = 4
    gamma, beta = xp.ones(d), xp.zeros(d)
    bn_param = {"mode": "train", "momentum": 0.9}
    x1 = randn(xp, rng, 30, d, scale=2.0, shift=3.0)
    batchnorm_forward(x1, gamma, beta, bn_param)
    assert rel_error(bn_param["running_mean"], 0.1 * x1.mean(axis=0)) < 1e-12
    assert rel_error(bn_param["running_var"], 0.1 * x1.var(axis=0)) < 1e-12
    x2 = randn(xp, rng, 30, d, scale=2.0, shift=3.0)
    batchnorm_forward(x2, gamma, beta, bn_param)
    assert rel_error(bn_param["running_mean"],
                     0.9 * 0.1 * x1.mean(axis=0) + 0.1 * x2.mean(axis=0)) < 1e-12
    for _ in range(200):
        batchnorm_forward(randn(xp, rng, 50, d, scale=2.0, shift=3.0), gamma, beta, bn_param)
    bn_param["mode"] = "test"
    xt = randn(xp, rng, 500, d, scale=2.0, shift=3.0)
    out, cache = batchnorm_forward(xt, gamma, beta, bn_param)
    assert cache is None
    # normalized with the running statistics: about zero mean and unit variance
    assert float(abs(out.mean(axis=0)).max()) < 0.2
    assert float(abs(out.std(axis=0) - 1).max()) < 0.2
    expected = (xt - bn_param["running_mean"]) / xp.sqrt(bn_param["running_var"] + 1e-5)
    assert rel_error(out, expected) < 1e-10


def test_batchnorm_errors(xp):
    g, b = xp.ones(3), xp.zeros(3)
    with pytest.raises(ValueError, match="at least 2 rows"):
        batchnorm_forward(xp.ones((1, 3)), g, b, {"mode": "train"})
    with pytest.raises(ValueError, match="mode"):
        batchnorm_forward(xp.ones((4, 3)), g, b, {"mode": "eval"})
    with pytest.raises(ValueError, match="shape"):
        batchnorm_forward(xp.ones((4, 3)), xp.ones(2), b, {"mode": "train"})
    # one row is fine at test time
    batchnorm_forward(xp.ones((1, 3)), g, b, {"mode": "test"})


def test_dropout_backward_numerical(xp, rng):
    x = randn(xp, rng, 10, 10, shift=10.0)
    dout = randn(xp, rng, 10, 10)
    param = {"mode": "train", "p": 0.2, "seed": 123}
    out, cache = dropout_forward(x, param)
    dx = dropout_backward(dout, cache)
    dx_num = eval_numerical_gradient_array(lambda v: dropout_forward(v, param)[0], x, dout)
    assert rel_error(dx, dx_num) < 1e-8


@pytest.mark.parametrize("p", [0.25, 0.4, 0.7, 0.3, 0.6, 0.75])
def test_dropout_statistics(xp, rng, p):
    """The notebook's cell: p keeps, train output mean ~ input mean, test is identity."""
    x = randn(xp, rng, 500, 500, shift=10.0)
    out, _ = dropout_forward(x, {"mode": "train", "p": p})
    out_test, _ = dropout_forward(x, {"mode": "test", "p": p})
    assert abs(float((out == 0).mean()) - (1 - p)) < 0.01
    assert abs(float(out.mean()) - float(x.mean())) < 0.02 * float(x.mean())
    assert float((out_test == 0).mean()) == 0
    assert rel_error(out_test, x) == 0


def test_dropout_seed_gives_same_mask_and_fresh_calls_differ(xp, rng):
    x = randn(xp, rng, 64, 64, shift=1.0)
    a, _ = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 7})
    b, _ = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 7})
    c, _ = dropout_forward(x, {"mode": "train", "p": 0.5})
    d, _ = dropout_forward(x, {"mode": "train", "p": 0.5})
    assert bool((a == b).all())
    assert not bool((c == d).all())


def test_dropout_output_is_bit_identical_single_multiply(xp, rng):
    from fcgpu.random import dropout_mask_reference
    x = xp.asarray(rng.standard_normal((33, 17)).astype(np.float32))
    out, _ = dropout_forward(x, {"mode": "train", "p": 0.3, "seed": 5, "stream": 9})
    mask = xp.asarray(dropout_mask_reference(x.shape, 0.3, 5, 9))
    expected = xp.where(mask, x * np.float32(1 / 0.3), np.float32(0))
    assert out.dtype == np.float32
    assert bool((out == expected).all())


@pytest.mark.parametrize("param,match", [
    ({"mode": "train", "p": 0}, "keep probability"),
    ({"mode": "train", "p": 1.2}, "keep probability"),
    ({"mode": "train", "p": -0.5}, "keep probability"),
    ({"mode": "train"}, "'p'"),
    ({"mode": "predict", "p": 0.5}, "mode"),
])
def test_dropout_errors(xp, param, match):
    with pytest.raises(ValueError, match=match):
        dropout_forward(xp.ones((3, 3)), param)


def test_softmax_loss(xp, rng):
    n, c = 50, 10
    x = randn(xp, rng, n, c, scale=1e-3)
    y = xp.asarray(rng.integers(c, size=n))
    loss, dx = softmax_loss(x, y)
    assert abs(float(loss) - np.log(c)) < 0.01
    dx_num = eval_numerical_gradient(lambda v: softmax_loss(v, y)[0], x, verbose=False)
    assert rel_error(dx, dx_num) < 1e-7
    # numerically stable for huge scores
    big_loss, _ = softmax_loss(x * 1e6, y)
    assert np.isfinite(float(big_loss))


def _course_softmax_loss(x, y):
    """The course framework's softmax_loss, verbatim in xp code."""
    xp = get_array_module(x)
    shifted_logits = x - xp.max(x, axis=1, keepdims=True)
    Z = xp.sum(xp.exp(shifted_logits), axis=1, keepdims=True)
    log_probs = shifted_logits - xp.log(Z)
    probs = xp.exp(log_probs)
    N = x.shape[0]
    loss = -xp.sum(log_probs[xp.arange(N), y]) / N
    dx = probs.copy()
    dx[xp.arange(N), y] -= 1
    dx /= N
    return loss, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_default_is_the_course_loss(xp, rng, dtype):
    x = randn(xp, rng, 37, 10, scale=3.0).astype(dtype)
    y = xp.asarray(rng.integers(10, size=37))
    loss, dx = softmax_loss(x, y)
    ref_loss, ref_dx = _course_softmax_loss(x, y)
    assert float(loss) == float(ref_loss)
    assert dx.dtype == ref_dx.dtype and bool((dx == ref_dx).all())
    loss0, dx0 = softmax_loss(x, y, label_smoothing=0.0)
    assert float(loss0) == float(loss) and bool((dx0 == dx).all())


@pytest.mark.parametrize("eps", [0.1, 0.37])
def test_softmax_loss_label_smoothing(xp, rng, eps):
    n, c = 23, 7
    x = randn(xp, rng, n, c, scale=2.0)
    y = xp.asarray(rng.integers(c, size=n))
    loss, dx = softmax_loss(x, y, label_smoothing=eps)
    # cross-entropy against the smoothed targets, written out in float64
    xh, yh = np.asarray(x.get() if hasattr(x, "get") else x), np.asarray(
        y.get() if hasattr(y, "get") else y)
    logp = xh - xh.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    q = np.full((n, c), eps / c)
    q[np.arange(n), yh] += 1 - eps
    assert abs(float(loss) - float(-(q * logp).sum() / n)) < 1e-12
    assert rel_error(dx, (np.exp(logp) - q) / n) < 1e-10
    dx_num = eval_numerical_gradient(lambda v: softmax_loss(v, y, label_smoothing=eps)[0], x,
                                     verbose=False)
    # entries near p = eps / C are close to 0: measured against the largest entry
    assert max_rel_error(dx, dx_num) < 1e-7


def test_softmax_loss_label_smoothing_errors(xp):
    x, y = xp.ones((4, 3)), xp.zeros(4, dtype=int)
    for bad in (-0.1, 1.0, float("nan"), "a", None):
        with pytest.raises(ValueError, match="label_smoothing"):
            softmax_loss(x, y, label_smoothing=bad)


def _host(a):
    return np.asarray(a.get() if hasattr(a, "get") else a)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_loss_mixed_targets(xp, rng, eps):
    """MixUp/CutMix targets: q = lam * smooth(y) + (1 - lam) * smooth(y2), the loss and
    dx against a float64 cross-entropy written out here, and dx against the numerical
    gradient (some rows with y2 == y, lam 0 and 1 among the weights). Mutants that fail
    here: w2 = lam * on (the partner weighted like the row), the eps / C term dropped
    from dx with mixing on, dx[rows, y2] -= w2 left out."""
    n, c = 29, 7
    x = randn(xp, rng, n, c, scale=2.0)
    yh = rng.integers(c, size=n)
    y2h = rng.integers(c, size=n)
    y2h[:4] = yh[:4]
    lamh = rng.uniform(0, 1, n)
    lamh[4], lamh[5] = 0.0, 1.0
    y, y2, lam = xp.asarray(yh), xp.asarray(y2h), xp.asarray(lamh)
    loss, dx = softmax_loss(x, y, label_smoothing=eps, mix=(y2, lam))
    xh = _host(x)
    logp = xh - xh.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    q = np.full((n, c), eps / c)
    np.add.at(q, (np.arange(n), yh), (1 - eps) * lamh)
    np.add.at(q, (np.arange(n), y2h), (1 - eps) * (1 - lamh))
    assert abs(float(loss) - float(-(q * logp).sum() / n)) < 1e-12
    assert rel_error(dx, (np.exp(logp) - q) / n) < 1e-10
    dx_num = eval_numerical_gradient(
        lambda v: softmax_loss(v, y, label_smoothing=eps, mix=(y2, lam))[0], x, verbose=False)
    assert max_rel_error(dx, dx_num) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_mix_with_lam_one_is_the_plain_loss(xp, rng, dtype):
    """lam = 1 everywhere (and any y2) is the unmixed loss, to rounding; lam is used in
    the scores' dtype (a float64 lam does not make a float32 loss float64). Mutant that
    fails here: lam used as given (no astype to the scores' dtype)."""
    x = randn(xp, rng, 13, 5, scale=2.0).astype(dtype)
    y = xp.asarray(rng.integers(5, size=13))
    y2 = xp.asarray(rng.integers(5, size=13))
    for eps in (0.0, 0.2):
        loss, dx = softmax_loss(x, y, label_smoothing=eps, mix=(y2, xp.ones(13)))
        ref_loss, ref_dx = softmax_loss(x, y, label_smoothing=eps)
        tol = 1e-6 if dtype == np.float32 else 1e-14
        assert abs(float(loss) - float(ref_loss)) <= tol * abs(float(ref_loss))
        assert dx.dtype == dtype and max_rel_error(dx, ref_dx) < tol
        assert np.asarray(loss).dtype == dtype


def test_softmax_loss_mix_errors(xp):
    """One-line errors for a malformed mix; within labels_checked() lam's range is not
    read back (the Solver's steps, where the gather made it)."""
    x, y = xp.ones((4, 3)), xp.zeros(4, dtype=int)
    cases = [((y,), "mix must be a pair"),
             ((xp.zeros(3, dtype=int), xp.ones(4)), r"labels must have shape \(4,\)"),
             ((xp.asarray(np.array([0, 1, 3, 0])), xp.ones(4)), r"labels must be in \[0, 3\)"),
             ((y, xp.ones(3)), r"lam must be a float array of shape \(4,\)"),
             ((y, xp.zeros(4, dtype=int)), "lam must be a float array"),
             ((y, xp.asarray(np.array([0.5, 1.5, 0.0, 1.0]))), r"lam must be in \[0, 1\]")]
    for mix, match in cases:
        with pytest.raises(ValueError, match=match):
            softmax_loss(x, y, mix=mix)
    with labels_checked():
        softmax_loss(x, y, mix=(y, xp.asarray(np.array([0.5, 1.5, 0.0, 1.0]))))


def test_svm_loss(xp, rng):
    n, c = 50, 10
    x = randn(xp, rng, n, c, scale=1e-3)
    y = xp.asarray(rng.integers(c, size=n))
    loss, dx = svm_loss(x, y)
    assert abs(float(loss) - (c - 1)) < 0.1
    dx_num = eval_numerical_gradient(lambda v: svm_loss(v, y)[0], x, verbose=False)
    assert rel_error(dx, dx_num) < 1e-7


def test_loss_shape_errors(xp):
    with pytest.raises(ValueError, match="labels"):
        softmax_loss(xp.ones((4, 3)), xp.zeros(5, dtype=int))


@pytest.mark.parametrize("loss", [softmax_loss, svm_loss])
@pytest.mark.parametrize("bad", [3, -1, 7])
def test_loss_label_range(xp, rng, loss, bad):
    """A label outside [0, C) is an error on every backend: CuPy's indexing would wrap
    it silently, and NumPy's wraps negative ones. Within labels_checked() (the
    Solver's steps, whose data were checked once) the check is skipped. Mutant
    caught: the range check removed (-1 then gives a loss on NumPy)."""
    x = randn(xp, rng, 4, 3)
    y = xp.asarray(np.array([0, 2, bad, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) for 3 classes, got "
                                         r"values in \[%d, %d\]" % (min(0, bad), max(2, bad))):
        loss(x, y)
    with pytest.raises(ValueError, match="labels must be integers, got dtype float"):
        loss(x, xp.asarray(np.array([0.0, 1.0, 2.0, 1.0])))
    if bad == -1:
        with labels_checked():
            loss(x, y)  # trusted: not checked (NumPy wraps -1 to the last class)
    loss(x, xp.asarray(np.array([0, 2, 2, 1])))


def test_model_loss_checks_labels(rng):
    from fcgpu.fc_net import FullyConnectedNet
    model = FullyConnectedNet([5], input_dim=6, num_classes=3, seed=0, dtype=np.float64)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        model.loss(rng.standard_normal((4, 6)), np.array([0, 1, 2, 3]))


def test_affine_relu_sandwich(xp, rng):
    x, w, b = randn(xp, rng, 2, 3, 4), randn(xp, rng, 12, 10), randn(xp, rng, 10)
    dout = randn(xp, rng, 2, 10)
    out, cache = affine_relu_forward(x, w, b)
    dx, dw, db = affine_relu_backward(dout, cache)
    f = lambda: affine_relu_forward(x, w, b)[0]
    assert rel_error(dx, eval_numerical_gradient_array(lambda _: f(), x, dout)) < 1e-7
    assert rel_error(dw, eval_numerical_gradient_array(lambda _: f(), w, dout)) < 1e-7
    assert rel_error(db, eval_numerical_gradient_array(lambda _: f(), b, dout)) < 1e-7


def test_affine_relu_dropout_sandwich(xp, rng):
    x, w, b = randn(xp, rng, 6, 5), randn(xp, rng, 5, 8), randn(xp, rng, 8)
    dout = randn(xp, rng, 6, 8)
    dp = {"mode": "train", "p": 0.6, "seed": 3}
    out, cache = affine_relu_dropout_forward(x, w, b, dp)
    dx, dw, db = affine_relu_dropout_backward(dout, cache)
    f = lambda: affine_relu_dropout_forward(x, w, b, dp)[0]
    assert rel_error(dx, eval_numerical_gradient_array(lambda _: f(), x, dout)) < 1e-7
    assert rel_error(dw, eval_numerical_gradient_array(lambda _: f(), w, dout)) < 1e-7
    assert rel_error(db, eval_numerical_gradient_array(lambda _: f(), b, dout)) < 1e-7


@pytest.mark.parametrize("p", [1.0, 0.7])
def test_affine_bn_relu_dropout_sandwich(xp, rng, p):
    x, w, b = randn(xp, rng, 9, 5), randn(xp, rng, 5, 6), randn(xp, rng, 6)
    gamma, beta = randn(xp, rng, 6), randn(xp, rng, 6)
    dout = randn(xp, rng, 9, 6)
    dp = {"mode": "train", "p": p, "seed": 11} if p < 1 else None
    f = lambda: affine_bn_relu_dropout_forward(x, w, b, gamma, beta, {"mode": "train"}, dp)[0]
    _, cache = affine_bn_relu_dropout_forward(x, w, b, gamma, beta, {"mode": "train"}, dp)
    dx, dw, db, dgamma, dbeta = affine_bn_relu_dropout_backward(dout, cache)
    for analytic, wrt in [(dx, x), (dw, w), (dgamma, gamma), (dbeta, beta)]:
        assert rel_error(analytic, eval_numerical_gradient_array(lambda _: f(), wrt, dout)) < 1e-6
    # the bias before batchnorm has no effect: its gradient is zero
    assert float(abs(db).max()) < 1e-10
