"""Learning-rate schedules (fcgpu.schedules): the course's step decay exactly as the
Solver applies it, and the shapes of cosine and one-cycle (end points, peaks,
monotone pieces, midpoints), plus the argument checks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcgpu import schedules
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.schedules import cosine_lr, lr_at, lr_table, onecycle_lr, step_lr
from fcgpu.solver import Solver


def test_step_is_the_course_solver_decay_exactly():
    """The rate each step of a real Solver run uses, float for float (repeated
    multiplication: base * decay**e differs from it in the last bit here)."""
    rng = np.random.default_rng(0)
    data = {"X_train": rng.standard_normal((20, 6)), "y_train": rng.integers(0, 3, 20),
            "X_val": rng.standard_normal((5, 6)), "y_val": rng.integers(0, 3, 5)}
    model = FullyConnectedNet([5], input_dim=6, num_classes=3, dtype=np.float64, seed=0, xp=np)
    seen = []

    def rule(w, dw, config):
        if w is model.params["W1"] or w.shape == (6, 5):
            seen.append(config["learning_rate"])
        return w - config["learning_rate"] * dw, config

    base, decay, spe, epochs = 0.0123, 0.9, 2, 10
    Solver(model, data, update_rule=rule, optim_config={"learning_rate": base}, lr_decay=decay,
           batch_size=10, num_epochs=epochs, verbose=False, seed=0).train()
    total = spe * epochs
    assert len(seen) == total
    assert [step_lr(s, total, base, spe, decay) for s in range(total)] == seen
    assert list(lr_table("step", total, base, steps_per_epoch=spe, lr_decay=decay)) == seen
    assert any(base * decay ** (s // spe) != seen[s] for s in range(total))  # (the point)
    assert step_lr(total, total, base, spe) == base   # lr_decay 1: constant


def _monotone(values, increasing):
    d = np.diff(values)
    return bool(np.all(d > 0) if increasing else np.all(d <= 0))


@pytest.mark.parametrize("total, warm", [(100, 0), (100, 10), (7, 3), (1, 0)])
def test_cosine_shape(total, warm):
    base, low = 0.3, 0.01
    lr = [cosine_lr(s, total, base, warm, low) for s in range(total + 1)]
    assert lr[warm] == pytest.approx(base, rel=1e-15)
    assert lr[total] == pytest.approx(low, rel=1e-12)
    assert _monotone(lr[:warm + 1], True) and _monotone(lr[warm:], False)
    if warm:
        assert lr[0] == pytest.approx(base / (warm + 1))
    if (total - warm) % 2 == 0:
        assert lr[warm + (total - warm) // 2] == pytest.approx((base + low) / 2, rel=1e-12)
    assert list(lr_table("cosine", total, base, warmup_steps=warm, min_lr=low)) == lr[:total]


def test_cosine_warmup_against_the_written_formula():
    """Cosine with 4 warm-up steps over 10, written out here rather than computed by the
    function under test: steps 0..3 climb by base/5 (0.2, 0.4, 0.6, 0.8 of the base),
    step 4 is the base, then half a cosine down to min_lr at step 10. The Solver trains
    each step at that rate. Mutants caught: a warm-up that ends one step early (step 3
    already at the base, or the cosine starting at step 3)."""
    base, low = 0.5, 0.05
    want = [base * 0.2, base * 0.4, base * 0.6, base * 0.8, base]
    want += [low + (base - low) * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(1, 7)]
    got = [cosine_lr(s, 10, base, warmup_steps=4, min_lr=low) for s in range(11)]
    assert got == pytest.approx(want, rel=1e-15, abs=0)
    assert got[3] < base == got[4]
    # the Solver's steps (cosine warm-up from TrainConfig's warmup_epochs: 2 epochs of 2)
    rng = np.random.default_rng(0)
    data = {"X_train": rng.standard_normal((20, 6)), "y_train": rng.integers(0, 3, 20),
            "X_val": rng.standard_normal((5, 6)), "y_val": rng.integers(0, 3, 5)}
    model = FullyConnectedNet([5], input_dim=6, num_classes=3, dtype=np.float64, seed=0, xp=np)
    seen = []

    def rule(w, dw, config):
        if w.shape == (6, 5):
            seen.append(config["learning_rate"])
        return w - config["learning_rate"] * dw, config
    from fcgpu.train import TrainConfig
    name, opts = TrainConfig(schedule="cosine", lr_decay=1.0, warmup_epochs=2,
                             epochs=5).schedule_options(2)
    assert (name, opts) == ("cosine", {"warmup_steps": 4})
    Solver(model, data, update_rule=rule, optim_config={"learning_rate": base}, batch_size=10,
           num_epochs=5, verbose=False, seed=0, lr_schedule=name,
           lr_schedule_options=dict(opts, min_lr=low)).train()
    assert seen == pytest.approx(want[:10], rel=1e-15, abs=0)


@pytest.mark.parametrize("warmup", ["linear", "cos"])
@pytest.mark.parametrize("anneal", ["linear", "cos"])
def test_onecycle_shape(warmup, anneal):
    total, base = 200, 0.1
    lr = [onecycle_lr(s, total, base, 0.25, 20.0, 100.0, warmup, anneal) for s in range(total + 1)]
    peak = 50
    assert int(np.argmax(lr)) == peak and lr[peak] == base
    assert lr[0] == pytest.approx(base / 20) and lr[total] == pytest.approx(base / 20 / 100)
    assert _monotone(lr[:peak + 1], True) and _monotone(lr[peak:], False)
    start, end = base / 20, base / 2000
    assert lr[peak // 2] == pytest.approx((start + base) / 2, rel=1e-12)
    assert lr[peak + (total - peak) // 2] == pytest.approx((base + end) / 2, rel=1e-12)
    if anneal == "cos":   # a cosine stays above the straight line in its first half
        assert lr[peak + 10] > base + (end - base) * 10 / 150
    else:
        assert lr[peak + 10] == pytest.approx(base + (end - base) * 10 / 150, rel=1e-12)
    if warmup == "cos":
        assert lr[10] < start + (base - start) * 10 / 50
    assert lr_at("onecycle", 17, total, base, pct_start=0.25, div_factor=20.0,
                 final_div_factor=100.0, warmup=warmup, anneal=anneal) == lr[17]


def test_onecycle_without_warmup_starts_at_the_peak():
    lr = [onecycle_lr(s, 10, 0.5, pct_start=0.0) for s in range(11)]
    assert lr[0] == 0.5 and _monotone(lr, False)
    assert lr[10] == pytest.approx(0.5 / 25 / 1e4)


def test_lr_at_names_and_table():
    assert lr_at("step", 5, 10, 1.0, steps_per_epoch=2, lr_decay=0.5) == 0.25
    assert lr_at("cosine", 0, 4, 2.0) == 2.0
    t = lr_table("cosine", 5, 1.0)
    assert t.dtype == np.float64 and t.shape == (5,)
    assert schedules.SCHEDULES == ("step", "cosine", "onecycle")
    with pytest.raises(ValueError, match="schedule must be one of step, cosine, onecycle"):
        lr_at("linear", 0, 10, 1.0)


def test_argument_errors():
    cases = [
        (lambda: cosine_lr(11, 10, 0.1), ValueError, "step must be in \\[0, total_steps\\]"),
        (lambda: cosine_lr(-1, 10, 0.1), ValueError, "step must be in"),
        (lambda: cosine_lr(0, 0, 0.1), ValueError, "total_steps must be >= 1"),
        (lambda: cosine_lr(0.5, 10, 0.1), TypeError, "step must be an integer"),
        (lambda: cosine_lr(True, 10, 0.1), TypeError, "step must be an integer"),
        (lambda: cosine_lr(0, 10, 0.0), ValueError, "base_lr must be > 0"),
        (lambda: cosine_lr(0, 10, math.nan), ValueError, "base_lr must be finite"),
        (lambda: cosine_lr(0, 10, "0.1"), TypeError, "base_lr must be a number"),
        (lambda: cosine_lr(0, 10, 0.1, warmup_steps=10), ValueError, "warmup_steps must be in"),
        (lambda: cosine_lr(0, 10, 0.1, min_lr=0.2), ValueError, "min_lr must be in"),
        (lambda: step_lr(0, 10, 0.1, 0), ValueError, "steps_per_epoch must be >= 1"),
        (lambda: step_lr(0, 10, 0.1, 2, 0.0), ValueError, "lr_decay must be > 0"),
        (lambda: onecycle_lr(0, 10, 0.1, pct_start=1.0), ValueError, "pct_start must be in"),
        (lambda: onecycle_lr(0, 10, 0.1, div_factor=0.5), ValueError, "div_factor"),
        (lambda: onecycle_lr(0, 10, 0.1, anneal="exp"), ValueError, "anneal must be 'linear'"),
        (lambda: onecycle_lr(0, 10, 0.1, warmup="step"), ValueError, "warmup must be 'linear'"),
        (lambda: lr_table("step", 10, 0.1), TypeError, "steps_per_epoch"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()
