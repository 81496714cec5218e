"""FullyConnectedNet: whole-net gradient checks and the course's conventions."""
import numpy as np
import pytest

from fcgpu.fc_net import FullyConnectedNet
from fcgpu.gradient_check import eval_numerical_gradient
from fcgpu.backend import asnumpy


def _check_net_gradients(xp, rng, dropout, use_batchnorm, reg=0.0, mix=False):
    # the notebook's sizes; with batchnorm, N=2 makes every normalized unit +-1, so
    # dW1 is of the order of eps and its centered differences are mostly rounding
    # noise (relative errors up to ~3e-3 on random seeds): use N=4 there
    N, D, H1, H2, C = (4 if use_batchnorm else 2), 15, 20, 30, 10
    X = xp.asarray(rng.standard_normal((N, D)))
    y = xp.asarray(rng.integers(C, size=N))
    model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, weight_scale=5e-2,
                              dtype=np.float64, dropout=dropout, seed=123,
                              use_batchnorm=use_batchnorm, reg=reg, xp=xp,
                              label_smoothing=0.1 if mix else 0.0)
    # mixed targets (MixUp, CutMix): a partner label and a weight per row
    targets = {"mix": (xp.asarray(rng.integers(C, size=N)), xp.asarray(rng.uniform(0, 1, N)))
               } if mix else {}
    # Biases and shifts start at zero, which puts an exact ReLU kink in reach: with
    # keep 0.25 the fixed masks leave a few layer-1 units per row, and when they are
    # all dead the row is 0, layer 2's pre-activations are exactly b2 = 0, and no
    # step size avoids the kink (about 6% of seeds failed on b2). Small random
    # values move every pre-activation off zero.
    for name, value in model.params.items():
        if name.startswith(("b", "beta")):
            model.params[name] = xp.asarray(0.05 * rng.standard_normal(value.shape))
    loss, grads = model.loss(X, y, **targets)
    worst = {}
    f = lambda _: model.loss(X, y, **targets)[0]
    for name in sorted(grads):
        num = eval_numerical_gradient(f, model.params[name], verbose=False, h=1e-5)
        if use_batchnorm and name in ("b1", "b2"):
            # a bias in front of batchnorm cannot change the loss: its true gradient
            # is 0, and the relative error of two zeros is only rounding noise
            assert float(abs(grads[name]).max()) < 1e-12
            assert float(abs(num).max()) < 1e-8
            continue
        err = scaled_rel_errors(num, grads[name])
        if err.max() >= 1e-5:
            # On fresh random inputs a step of 1e-5 now and then straddles a ReLU kink
            # (seen: 0.2 "error" at h=1e-5, 3e-6 at h=1e-7 for the same entry); an
            # entry passes if the centered difference agrees at either step size.
            num2 = eval_numerical_gradient(f, model.params[name], verbose=False, h=1e-7)
            err = np.minimum(err, scaled_rel_errors(num2, grads[name]))
        if err.max() >= 1e-5:
            # About 1 seed in 1000 puts a pre-activation within 1e-7 of its kink (seen:
            # 1.3e-7), which both steps straddle. The kink is on one side only, so the
            # one-sided quotient on the other side is clean: an entry passes if either
            # one-sided difference agrees.
            bad = [tuple(int(i) for i in ix) for ix in np.argwhere(err >= 1e-5)]
            for side in (1.0, -1.0):
                one = one_sided_gradient(f, model.params[name], bad, side * 1e-7)
                err = np.fmin(err, scaled_rel_errors(one, grads[name]))  # (NaN: not computed)
        worst[name] = float(err.max())
    return float(loss), worst


def one_sided_gradient(f, x, entries, h):
    """(f(x + h e_i) - f(x)) / h at ``entries`` of ``x`` (restored); NaN elsewhere."""
    grad = np.full(x.shape, np.nan)
    f0 = float(f(x))
    for ix in entries:
        old = x[ix].copy() if hasattr(x[ix], "copy") else x[ix]
        x[ix] = old + h
        grad[ix] = (float(f(x)) - f0) / h
        x[ix] = old
    return grad


def scaled_rel_errors(num, ana):
    """The notebook's relative error, elementwise, with the floor raised from 1e-8 to
    1e-4 of the gradient's largest entry: on fresh random inputs some entries are ~1e-7,
    where the centered differences carry ~1e-11 of rounding noise (a 1e-4 'error' that
    says nothing about the analytic gradient). The notebook's own cell, with its seed,
    is checked with the plain formula in test_notebook.py."""
    num, ana = asnumpy(num), asnumpy(ana)
    floor = max(1e-8, 1e-4 * float(np.abs(ana).max()))
    return np.abs(num - ana) / np.maximum(floor, np.abs(num) + np.abs(ana))


@pytest.mark.parametrize("dropout", [0, 0.25, 0.5])
def test_net_gradients(xp, rng, dropout):
    """The notebook's check: worst relative error under 1e-4 in float64."""
    _, worst = _check_net_gradients(xp, rng, dropout, False)
    assert max(worst.values()) < 1e-4, worst


@pytest.mark.parametrize("dropout", [0, 0.25, 0.5])
def test_net_gradients_with_batchnorm(xp, rng, dropout):
    _, worst = _check_net_gradients(xp, rng, dropout, True)
    assert max(worst.values()) < 1e-3, worst


def test_net_gradients_with_regularization(xp, rng):
    _, worst = _check_net_gradients(xp, rng, 0.5, True, reg=3.14)
    assert max(worst.values()) < 1e-3, worst


@pytest.mark.parametrize("use_batchnorm", [False, True])
def test_net_gradients_with_mixed_targets(xp, rng, use_batchnorm):
    """loss(X, y, mix=(y2, lam)) with label smoothing: the numerical gradient check."""
    _, worst = _check_net_gradients(xp, rng, 0.5, use_batchnorm, mix=True)
    assert max(worst.values()) < (1e-3 if use_batchnorm else 1e-4), worst


def test_mixed_targets_reach_the_loss(xp, rng):
    """With one weight lam for every row, the mixed loss and gradients are lam times
    those against y plus (1 - lam) times those against y2 (same masks: a seeded net).
    Mutant that fails here: FullyConnectedNet.loss dropping ``mix`` (the loss against y
    alone). A call without mix is the course's (checked by the tests above)."""
    N, D, C = 6, 9, 4
    X = xp.asarray(rng.standard_normal((N, D)))
    y, y2 = xp.asarray(rng.integers(C, size=N)), xp.asarray(rng.integers(C, size=N))
    model = FullyConnectedNet([11, 8], input_dim=D, num_classes=C, weight_scale=0.3,
                              dtype=np.float64, dropout=0.7, seed=5, use_batchnorm=True, xp=xp)
    lam = 0.3
    mixed, g_mixed = model.loss(X, y, mix=(y2, xp.full(N, lam)))
    one, g_one = model.loss(X, y)
    two, g_two = model.loss(X, y2)
    assert abs(float(mixed) - (lam * float(one) + (1 - lam) * float(two))) < 1e-12
    for name in g_mixed:
        want = lam * asnumpy(g_one[name]) + (1 - lam) * asnumpy(g_two[name])
        assert np.allclose(asnumpy(g_mixed[name]), want, rtol=1e-10, atol=1e-13), name
    with pytest.raises(ValueError, match="mix needs the labels"):
        model.loss(X, mix=(y2, xp.full(N, lam)))


def test_initial_loss_is_log_num_classes(xp, rng):
    model = FullyConnectedNet([50, 40], input_dim=20, num_classes=10, weight_scale=1e-3,
                              dtype=np.float64, xp=xp)
    X = xp.asarray(rng.standard_normal((100, 20)))
    y = xp.asarray(rng.integers(10, size=100))
    loss, _ = model.loss(X, y)
    assert abs(float(loss) - np.log(10)) < 0.02


def test_dropout_zero_or_one_builds_no_dropout_layers(xp):
    for d in (0, 1):
        model = FullyConnectedNet([5], input_dim=4, num_classes=3, dropout=d, xp=xp)
        assert not model.use_dropout and model.dropout_param == {}
    model = FullyConnectedNet([5], input_dim=4, num_classes=3, dropout=0.5, xp=xp)
    assert model.use_dropout and model.dropout_param["p"] == 0.5


def test_params_follow_the_course_naming_and_dtype(xp):
    model = FullyConnectedNet([6, 7], input_dim=5, num_classes=3, use_batchnorm=True, xp=xp)
    assert sorted(model.params) == sorted(["W1", "b1", "W2", "b2", "W3", "b3",
                                           "gamma1", "beta1", "gamma2", "beta2"])
    assert model.params["W2"].shape == (6, 7)
    assert all(v.dtype == np.float32 for v in model.params.values())


def test_seeded_net_uses_the_same_masks_every_call(xp, rng):
    X = xp.asarray(rng.standard_normal((8, 6)))
    y = xp.asarray(rng.integers(3, size=8))
    model = FullyConnectedNet([30], input_dim=6, num_classes=3, dropout=0.5, seed=1,
                              dtype=np.float64, xp=xp)
    assert float(model.loss(X, y)[0]) == float(model.loss(X, y)[0])
    fresh = FullyConnectedNet([30], input_dim=6, num_classes=3, dropout=0.5, seed=1,
                              fresh_masks=True, dtype=np.float64, xp=xp)
    assert float(fresh.loss(X, y)[0]) != float(fresh.loss(X, y)[0])
    assert fresh.dropout_step == 2


def test_scores_in_test_mode_are_deterministic(xp, rng):
    model = FullyConnectedNet([10], input_dim=6, num_classes=3, dropout=0.5,
                              use_batchnorm=True, xp=xp)
    X = xp.asarray(rng.standard_normal((8, 6)).astype(np.float32))
    model.loss(X, xp.zeros(8, dtype=np.int64))  # one training step fills running stats
    s1, s2 = model.loss(X), model.loss(X)
    assert s1.shape == (8, 3) and bool((s1 == s2).all())


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="keep probability"):
        FullyConnectedNet([5], dropout=1.5)
    with pytest.raises(ValueError, match="positive"):
        FullyConnectedNet([0])
    with pytest.raises(ValueError, match="dtype"):
        FullyConnectedNet([5], dtype=np.int32)
