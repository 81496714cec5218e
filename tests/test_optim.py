"""Update rules against steps computed by hand, element by element, in float64."""
import math

import numpy as np
import pytest

from fcgpu import fused
from fcgpu.optim import adam, rmsprop, sgd, sgd_momentum


def _inputs(xp, rng, dtype=np.float64):
    w = rng.standard_normal((4, 5))
    dw = rng.standard_normal((4, 5))
    return w, dw, xp.asarray(w, dtype=dtype), xp.asarray(dw, dtype=dtype)


def _scalar_loop(fn, *arrays):
    out = np.empty_like(arrays[0])
    for ix in np.ndindex(arrays[0].shape):
        out[ix] = fn(*(float(a[ix]) for a in arrays))
    return out


def test_sgd(xp, rng):
    w, dw, W, DW = _inputs(xp, rng)
    next_w, config = sgd(W, DW, {"learning_rate": 0.1})
    assert np.allclose(xp.asnumpy(next_w) if xp is not np else next_w, w - 0.1 * dw, rtol=1e-14)
    assert sgd(W, DW)[1]["learning_rate"] == 1e-2


def test_sgd_momentum(xp, rng):
    w, dw, W, DW = _inputs(xp, rng)
    v0 = rng.standard_normal((4, 5))
    config = {"learning_rate": 1e-3, "velocity": xp.asarray(v0.copy())}
    next_w, config = sgd_momentum(W, DW, config)
    v1 = _scalar_loop(lambda v, g: 0.9 * v - 1e-3 * g, v0, dw)
    to_np = (lambda a: a) if xp is np else xp.asnumpy
    assert np.allclose(to_np(config["velocity"]), v1, rtol=1e-13, atol=0)
    assert np.allclose(to_np(next_w), w + v1, rtol=1e-13, atol=0)


def test_rmsprop(xp, rng):
    w, dw, W, DW = _inputs(xp, rng)
    c0 = rng.random((4, 5))
    config = {"learning_rate": 1e-2, "cache": xp.asarray(c0.copy())}
    next_w, config = rmsprop(W, DW, config)
    c1 = _scalar_loop(lambda c, g: 0.99 * c + 0.01 * g * g, c0, dw)
    expected = _scalar_loop(lambda w_, g, c: w_ - 1e-2 * g / (math.sqrt(c) + 1e-8), w, dw, c1)
    to_np = (lambda a: a) if xp is np else xp.asnumpy
    assert np.allclose(to_np(config["cache"]), c1, rtol=1e-13)
    assert np.allclose(to_np(next_w), expected, rtol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_adam_two_steps(xp, rng, compiled, dtype, rtol):
    w, dw, W, DW = _inputs(xp, rng, dtype)
    m0, v0 = rng.standard_normal((4, 5)), rng.random((4, 5))
    config = {"learning_rate": 1e-2, "m": xp.asarray(m0.copy(), dtype=dtype),
              "v": xp.asarray(v0.copy(), dtype=dtype), "t": 5}
    old = fused.use_compiled_cpu()
    fused.use_compiled_cpu(compiled)
    try:
        next_w, config = adam(W, DW, config)
        next_w2, config = adam(next_w, DW, config)
    finally:
        fused.use_compiled_cpu(old)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-2
    expected_w, m, v = w, m0, v0
    for t in (6, 7):
        m = _scalar_loop(lambda m_, g: b1 * m_ + (1 - b1) * g, m, dw)
        v = _scalar_loop(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, dw)
        expected_w = _scalar_loop(
            lambda w_, m_, v_: w_ - lr * (m_ / (1 - b1 ** t)) / (math.sqrt(v_ / (1 - b2 ** t)) + eps),
            expected_w, m, v)
    to_np = (lambda a: a) if xp is np else xp.asnumpy
    assert config["t"] == 7
    assert next_w2.dtype == dtype
    assert np.allclose(to_np(config["m"]), m, rtol=rtol, atol=rtol)
    assert np.allclose(to_np(config["v"]), v, rtol=rtol, atol=rtol)
    assert np.allclose(to_np(next_w2), expected_w, rtol=rtol, atol=rtol)


def test_adam_defaults_and_fresh_state(xp, rng):
    _, _, W, DW = _inputs(xp, rng)
    _, config = adam(W, DW)
    assert (config["learning_rate"], config["beta1"], config["beta2"], config["epsilon"],
            config["t"]) == (1e-3, 0.9, 0.999, 1e-8, 1)
    assert config["m"].shape == W.shape


# ----------------------------------------------------------------- the rules table

def test_rules_table_entries_are_the_rules_and_match_the_device_enum():
    """optim.RULES is the one table: each entry is callable as its update function,
    its defaults and state arrays are what a fresh config gets, and the device ids are
    kernels/optim.cuh's UpdateRule values (as fcgpu.cuda.train_ops spells them).
    Mutants caught: an entry whose defaults or state keys differ from what its function
    sets; a device id off by one; a rule missing from the table."""
    from fcgpu import optim
    from fcgpu.cuda import train_ops
    names = ("sgd", "sgd_momentum", "sgd_nesterov", "rmsprop", "adam")
    assert set(optim.RULES) == set(names)
    assert (optim.sgd, optim.sgd_momentum, optim.sgd_nesterov, optim.rmsprop,
            optim.adam) == tuple(optim.RULES[n].update for n in names)
    w, dw = np.ones((2, 3)), np.full((2, 3), 0.5)
    for name, rule in optim.RULES.items():
        assert rule.name == name and rule.title
        next_w, config = rule(w, dw)  # (callable as the function, as callers use it)
        ref_w, _ = rule.update(w, dw)
        assert np.array_equal(next_w, ref_w)
        assert set(config) == {k for k, _ in rule.defaults} | set(rule.state), name
        for key, value in rule.defaults:
            if key not in rule.counters:
                assert config[key] == value, (name, key)
        for key in rule.state:
            assert config[key].shape == w.shape, (name, key)
        if rule.device == optim.DEVICE_RULE:
            assert rule.device_id == getattr(train_ops, "RULE_" + name.upper()), name
            assert set(rule.device_args) <= set(rule.hyper)
        else:
            assert rule.device_id is None
    assert optim.RULES["adam"].counters == ("t",)
    assert optim.RULES["adam"].hyper == ("learning_rate", "beta1", "beta2", "epsilon")



def test_everything_that_lists_update_rules_reads_the_table(monkeypatch):
    """The command line's choices, the settings' check, the search space, the
    CUDA-graph step and the checkpoint schema take the rules from optim.RULES: a rule
    added to the table (here a copy of SGD) is accepted by each of them. Mutant
    caught: a hand-written list of rules left somewhere."""
    import argparse
    from fcgpu import optim, settings
    from fcgpu.checkpoint import schema
    from fcgpu.cli import train as cli_train
    from fcgpu.cuda import graph
    from fcgpu.search import space
    extra = optim.UpdateRule("plain", "plain SGD", optim.sgd, (("learning_rate", 1e-2),))
    monkeypatch.setitem(optim.RULES, "plain", extra)
    p = argparse.ArgumentParser()
    cli_train.add_arguments(p)
    for name in optim.RULES:
        assert p.parse_args(["--update-rule", name]).update_rule == name
    assert settings.SETTINGS["update_rule"].why("plain") is None
    assert settings.SETTINGS["update_rule"].why("nesterov") is not None
    assert space.normalize("update_rule", "plain", "test") == {"value": "plain"}
    # the graph captures the rules with a device kernel; this one has none
    assert graph.supported_rules() == ("sgd", "sgd_momentum", "sgd_nesterov", "rmsprop", "adam")
    with pytest.raises(ValueError, match="update rule 'plain' cannot be captured"):
        graph.check_supported(None, "plain")
    extra = optim.UpdateRule("plain", "plain SGD", optim.sgd, (("learning_rate", 1e-2),),
                             device=optim.DEVICE_RULE, device_id=0)
    monkeypatch.setitem(optim.RULES, "plain", extra)
    assert "plain" in graph.supported_rules()
    monkeypatch.undo()
    assert set(schema.STATE_ARRAYS) == {k for r in optim.RULES.values() for k in r.state}
    # every hyperparameter of a rule has its range
    assert set(optim.HYPER_KEYS) <= set(settings.HYPERPARAMETERS)


def test_nesterov_is_the_look_ahead_gradient(rng):
    """sgd_nesterov is SGD with momentum whose gradient is taken at the look-ahead
    point w + mu*v (Sutskever et al. 2013): on a quadratic f(w) = 0.5 * a * w^2, the
    course's velocity form equals the look-ahead form step after step, and differs
    from plain momentum. Mutants caught: the look-ahead term dropped (plain
    momentum), or taken with the old velocity."""
    from fcgpu import optim
    a = rng.uniform(0.5, 2.0, 6)
    w0 = rng.standard_normal(6)
    lr, mu = 0.1, 0.9
    w, cfg = w0.copy(), {"learning_rate": lr, "momentum": mu}
    x, v = w0.copy(), np.zeros(6)   # the look-ahead form: x is the look-ahead point
    plain, pcfg = w0.copy(), {"learning_rate": lr, "momentum": mu}
    for _ in range(20):
        w, cfg = optim.sgd_nesterov(w, a * w, cfg)
        theta = x - mu * v          # the parameters behind the look-ahead point
        v_new = mu * v - lr * a * x  # the gradient at the look-ahead point
        theta = theta + v_new
        x, v = theta + mu * v_new, v_new
        plain, pcfg = optim.sgd_momentum(plain, a * plain, pcfg)
    np.testing.assert_allclose(w, x, rtol=1e-12, atol=1e-14)
    assert not np.allclose(w, plain, rtol=1e-6)
