"""The moving average of the weights (fcgpu.solver_ema, ``Solver(ema_decay=...)``,
``fcgpu train --ema``): its formula and warm-up, the compiled CPU pass, what the
Solver evaluates and keeps, the checkpoint's ``ema`` entry and its checks, exact
resume, the metrics and the flag. The CUDA-graph step's average is checked against
the uncaptured one in tests/test_cuda_graph.py."""
import types

import numpy as np
import pytest

from fcgpu import checkpoint, fused
from fcgpu.checkpoint import CheckpointError
from fcgpu.errors import ConfigError
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.solver import Solver
from fcgpu.solver_ema import WeightEMA, blend, decay_at, ema_rates
from test_checkpoint import (assert_untouched, make_solver, one_line_error, params_of,
                             resign, trained)  # noqa: F401  (trained: a fixture)
from test_solver import assert_same_state, blobs, small_model


# ----------------------------------------------------------------- the formula

def test_decay_warms_up_then_holds():
    """d_t = min(d, (1+t)/(10+t)): 2/11 at the first update, d from step
    (10d-1)/(1-d) on. Mutants caught: no warm-up (d from the start), max for min."""
    assert decay_at(0.999, 1) == 2 / 11 and decay_at(0.5, 1) == 2 / 11
    assert decay_at(0.99, 889) < 0.99 and decay_at(0.99, 890) == 0.99
    assert decay_at(0.99, 10 ** 6) == 0.99
    t = np.arange(1, 5000)
    ds = np.array([decay_at(0.999, k) for k in t])
    assert (np.diff(ds) > 0).all() and ds[-1] < 0.999
    rates = ema_rates(0.99, 888, 4, np.float32)  # (updates 889 to 892)
    assert rates.dtype == np.float32 and rates.shape == (4, 2)
    assert rates[0, 0] == np.float32(890 / 899) and (rates[1:, 0] == np.float32(0.99)).all()
    assert rates[:, 1].tolist() == [np.float32(1 - decay_at(0.99, t)) for t in range(889, 893)]


def _fake_model(rng, dtype):
    params = {"W1": rng.standard_normal((7, 5)).astype(dtype),
              "gamma1": rng.standard_normal(5).astype(dtype)}
    return types.SimpleNamespace(params=params, bn_params=[{"mode": "train"}])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_update_is_the_formula_on_params_and_running_statistics(rng, dtype):
    """ema = d_t*ema + (1-d_t)*w after every update, for the parameters (from a copy
    of the initial weights) and the running statistics (from zeros, once the model
    has them), each product and sum rounded once in the dtype. Mutants caught: the
    running statistics copied instead of averaged, the lerp form e + a*(w - e)."""
    m = _fake_model(rng, dtype)
    ema = WeightEMA(0.9, m)
    want = {k: v.copy() for k, v in m.params.items()}
    want_bn = {}
    for t in range(1, 8):
        for k in m.params:
            m.params[k] = rng.standard_normal(m.params[k].shape).astype(dtype)
        if t >= 3:  # the running statistics appear after a few steps
            m.bn_params[0]["running_mean"] = rng.standard_normal(5).astype(dtype)
            m.bn_params[0]["running_var"] = rng.random(5).astype(dtype)
        ema.update(m)
        d = dtype(decay_at(0.9, t))
        a = dtype(1 - decay_at(0.9, t))
        for k in m.params:
            want[k] = d * want[k] + a * m.params[k]
        for key in ("running_mean", "running_var"):
            if key in m.bn_params[0]:
                old = want_bn.get(key, np.zeros(5, dtype))
                want_bn[key] = d * old + a * m.bn_params[0][key]
        assert ema.updates == t
        for k in m.params:
            assert ema.params[k].dtype == dtype
            assert np.array_equal(ema.params[k], want[k]), (t, k)
        for key, v in want_bn.items():
            assert np.array_equal(ema.bn[0][key], v), (t, key)
    assert ema.params["W1"] is not m.params["W1"]


def _awkward(rng, n, dtype):
    x = rng.standard_normal(n).astype(dtype)
    if dtype == np.float32 and n >= 8:  # subnormals and signed zeros, where they matter
        tiny = np.finfo(np.float32).tiny
        x[:4] = np.array([tiny / 3, -tiny / 7, 0.0, -0.0], np.float32)
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 9, 5000, 70001])
def test_compiled_pass_equals_the_array_code_bit_for_bit(rng, dtype, n):
    """fcgpu.cpu.ema (one pass) against the
    plain ``e *= d; e += a * w``, subnormals and signed zeros included. Mutant caught:
    the kernel compiled with fastmath (a fused multiply-add rounds once)."""
    from fcgpu.cpu import ema as cpu_ema
    e, w = _awkward(rng, n, dtype), _awkward(rng, n, dtype)
    d = dtype(0.9873)
    a = dtype(1 - 0.9873)
    ref = e.copy()
    ref *= d
    ref += a * w
    fast = e.copy()
    cpu_ema.ema_update(fast, w, d, a)
    assert np.array_equal(fast.view(np.uint8), ref.view(np.uint8))
    assert fused.use_compiled_cpu()
    via = e.copy()
    blend(via, w, d, a)  # (the dispatch takes the compiled pass)
    assert np.array_equal(via.view(np.uint8), ref.view(np.uint8))


def test_the_dispatch_takes_the_compiled_pass_only_where_it_fits(monkeypatch):
    from fcgpu.cpu import ema as cpu_ema
    calls = []
    monkeypatch.setattr(cpu_ema, "ema_update", lambda *a: calls.append(a))
    e = np.ones((4, 6), np.float32)
    blend(e, np.ones((4, 6), np.float32), np.float32(0.5), np.float32(0.5))
    assert len(calls) == 1
    blend(e[:, ::2], np.ones((4, 3), np.float32), np.float32(0.5), np.float32(0.5))
    blend(e, np.ones((4, 6), np.float64), np.float32(0.5), np.float32(0.5))
    assert len(calls) == 1
    with fused.force_impl("reference"):
        blend(e, np.ones((4, 6), np.float32), np.float32(0.5), np.float32(0.5))
    assert len(calls) == 1


# ----------------------------------------------------------------- the Solver

def hard_blobs(rng, n=600, d=12, c=3):
    """Overlapping clusters: accuracies well below 1, so weights that differ score
    differently."""
    centers = rng.standard_normal((c, d)) * 0.4
    y = rng.integers(c, size=n)
    X = centers[y] + rng.standard_normal((n, d))
    return {"X_train": X[:n - 100], "y_train": y[:n - 100], "X_val": X[n - 100:],
            "y_val": y[n - 100:]}


def _pair(rng, epochs=3, **kw):
    """Two seeded Solvers on the same data, without and with the average."""
    data = hard_blobs(rng)
    args = dict(update_rule="adam", optim_config={"learning_rate": 5e-3}, lr_decay=0.9,
                batch_size=50, num_epochs=epochs, verbose=False, seed=3)
    args.update(kw)
    out = []
    for ema in (None, 0.9):
        model = small_model(use_batchnorm=True, dropout=0.7)
        out.append(Solver(model, data, ema_decay=ema, **args))
    return out


def _snapshots(solver, into):
    def on_epoch(s):
        into.append(({k: v.copy() for k, v in s.model.params.items()},
                     [{k: v.copy() for k, v in bp.items() if k.startswith("running_")}
                      for bp in s.model.bn_params],
                     {k: v.copy() for k, v in s.ema.params.items()} if s.ema else None,
                     [{k: v.copy() for k, v in mine.items()} for mine in s.ema.bn]
                     if s.ema else None))
    solver.epoch_callback = on_epoch


def test_the_average_leaves_the_training_alone(rng):
    """With the average on, the raw weights train exactly as without it (losses,
    weights, optimizer state, dropout and minibatch generators), its raw-weights
    validation accuracies are the plain run's, and it draws the accuracy checks'
    subsamples from the same generator positions. Mutants caught: the average written
    into the model's arrays; the raw check drawing its own rows (the generator then
    moves, and the minibatches after it differ)."""
    off, on = _pair(rng, num_train_samples=60, num_val_samples=40)
    raw_off, raw_on = [], []
    _snapshots(off, raw_off)
    _snapshots(on, raw_on)
    off.train()
    on.train()
    assert on.loss_history == off.loss_history
    assert on.ema.raw_val_acc_history == off.val_acc_history
    assert on.rng.bit_generator.state == off.rng.bit_generator.state
    assert on.model.dropout_step == off.model.dropout_step
    for (p_off, bn_off, _, _), (p_on, bn_on, _, _) in zip(raw_off, raw_on):
        assert_same_state(p_on, p_off)
        assert_same_state(bn_on, bn_off)
    assert_same_state(on.optim_configs, off.optim_configs)
    assert on.ema.updates == len(on.loss_history) == 3 * (500 // 50)


def test_the_checks_evaluate_and_keep_the_average(rng):
    """val_acc_history is the average's accuracy (weights and running statistics),
    the raw weights' is kept beside it, best_params and the model after train() are
    the average at its best epoch. Mutant caught: the checks not swapping the
    average in (val_acc_history is then the raw weights')."""
    _, on = _pair(rng, epochs=4)
    snaps = []
    _snapshots(on, snaps)
    on.train()

    def accuracy(params, bn):
        m = small_model(use_batchnorm=True, dropout=0.7)
        m.params = params
        for bp, stats in zip(m.bn_params, bn):
            bp.update(stats)
        return float((np.argmax(m.loss(on.X_val), axis=1) == on.y_val).mean())
    vals = [accuracy(ep, eb) for _, _, ep, eb in snaps]
    raws = [accuracy(p, b) for p, b, _, _ in snaps]
    assert vals == on.val_acc_history[1:] and raws == on.ema.raw_val_acc_history[1:]
    assert vals != raws  # (the data and decay make them differ: the check can fail)
    best = 1 + int(np.argmax(on.val_acc_history[1:]))
    assert on.best_val_acc == on.val_acc_history[best]
    ema_best, bn_best = snaps[best - 1][2], snaps[best - 1][3]
    if max(on.val_acc_history[1:]) > on.val_acc_history[0]:
        assert_same_state(on.best_params, ema_best)
        assert_same_state(on.model.params, ema_best)
        for bp, stats in zip(on.model.bn_params, bn_best):
            for k, v in stats.items():
                assert np.array_equal(bp[k], v)


def test_resume_with_the_average_equals_the_uninterrupted_run(tmp_path, rng):
    """A run stopped after epoch 2 and resumed from its checkpoint ends where one
    that never stopped ends: the average's arrays, its update count and the raw
    weights' accuracies included. Mutants caught: the average not saved or not
    loaded (the resumed average restarts from the weights), the count not restored
    (its warm-up restarts)."""
    data = blobs(rng)
    kw = dict(update_rule="adam", optim_config={"learning_rate": 5e-3}, lr_decay=0.9,
              batch_size=50, verbose=False, seed=3, ema_decay=0.95)

    def fresh():
        return small_model(use_batchnorm=True, dropout=0.7)
    full = Solver(fresh(), data, num_epochs=4, **kw)
    full.train()
    path = tmp_path / "state.safetensors"
    first = Solver(fresh(), data, num_epochs=2, epoch_callback=lambda s: s.save_checkpoint(path),
                   **kw)
    first.train()
    resumed = Solver(fresh(), data, num_epochs=4, **kw)
    resumed.load_checkpoint(path)
    assert resumed.ema.updates == 2 * 10 and len(resumed.ema.raw_val_acc_history) == 3
    resumed.train()
    assert resumed.val_acc_history == full.val_acc_history
    assert_same_state(resumed.state_dict(), full.state_dict())
    assert resumed.state_dict()["ema"]["updates"] == 40


# ----------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def trained_ema():
    s = make_solver(ema_decay=0.9)
    s.train()
    return s, checkpoint.encode(s.state_dict())


def _drop_ema(t, a):
    t.pop("ema")
    for k in [k for k in a if k.startswith("ema/")]:
        a.pop(k)


def _set(arrays, name, index, value):
    arrays[name][index] = value


EMA_MADE = [
    (_drop_ema, ["ema_decay 0.9 but it holds no average"]),
    (lambda t, a: t["settings"].update(ema_decay=None), ["holds an average of the weights "
                                                         "but its settings have no ema_decay"]),
    (lambda t, a: t["ema"].update(decay=0.8), ["decay 0.8 is not the settings' ema_decay 0.9"]),
    (lambda t, a: t["settings"].update(ema_decay=1.0), ["ema_decay is 1.0"]),
    (lambda t, a: t["ema"].update(updates=-1), ["update count is -1"]),
    (lambda t, a: t["ema"].pop("raw_val_acc_history"), ["average of the weights is malformed"]),
    (lambda t, a: t["ema"]["raw_val_acc_history"].pop(), ["raw-weights validation"]),
    (lambda t, a: t["ema"]["raw_val_acc_history"].__setitem__(0, 2.0), ["in [0, 1]"]),
    (lambda t, a: _set(a, "ema/params/W2", (0, 0), np.nan), ["averaged parameter W2", "NaN"]),
    (lambda t, a: a.__setitem__("ema/params/W1", np.ones((12, 15), np.float32)),
     ["averaged parameter W1", "(12, 15)"]),
    (lambda t, a: a.__setitem__("ema/bn_params/0/running_var", np.ones(16)),
     ["averaged batchnorm layer[0] running_var", "float64"]),
    (lambda t, a: [t["ema"]["params"].pop("b3"), a.pop("ema/params/b3")],
     ["averaged parameters do not match", "missing b3"]),
]


@pytest.mark.parametrize("edit,words", EMA_MADE, ids=[w[-1] for _, w in EMA_MADE])
def test_hand_made_averages_are_checked(tmp_path, trained_ema, edit, words):
    """The ``ema`` entry is checked like the rest of the state, and against the
    settings' ema_decay. Mutant caught: check_state without the average's checks."""
    _, blob = trained_ema

    def apply(tree, arrays):
        edit(tree, arrays)
        return tree
    path = tmp_path / "made.safetensors"
    path.write_bytes(resign(blob, apply))
    s = make_solver(ema_decay=0.9)
    before = params_of(s)
    with pytest.raises(CheckpointError) as e:
        s.load_checkpoint(path)
    one_line_error(e, path, *words)
    assert_untouched(s, before)


@pytest.mark.parametrize("mine,theirs", [(None, 0.9), (0.99, 0.9), (0.9, None)])
def test_resume_with_another_decay_is_refused(tmp_path, trained, trained_ema, mine, theirs):
    """A Solver resumes only a state of the same ema_decay (None: none). Mutant
    caught: ema_decay left out of the Solver's settings."""
    solver, blob = trained_ema if theirs is not None else trained
    path = tmp_path / "other.safetensors"
    path.write_bytes(blob)
    s = make_solver(ema_decay=mine)
    before = params_of(s)
    with pytest.raises(CheckpointError) as e:
        s.load_checkpoint(path)
    one_line_error(e, path, "other settings", "ema_decay %r, this Solver %r" % (theirs, mine))
    assert_untouched(s, before)


def test_states_written_before_the_average_still_load(tmp_path, trained):
    """Settings without ema_decay (fcgpu before the average) mean none: accepted."""
    _, blob = trained

    def older(tree, arrays):
        tree["settings"].pop("ema_decay")
        return tree
    path = tmp_path / "older.safetensors"
    path.write_bytes(resign(blob, older))
    s = make_solver()
    s.load_checkpoint(path)
    assert s.epoch == 2
    with pytest.raises(CheckpointError, match="ema_decay None, this Solver 0.9"):
        make_solver(ema_decay=0.9).load_checkpoint(path)


# ----------------------------------------------------------------- fcgpu train

def test_run_training_metrics_say_what_the_average_bought(tmp_path):
    from fcgpu.train import run_training
    from test_train import cfg, fake_cifar
    data = fake_cifar(np.random.default_rng(2))
    m = run_training(cfg(ema_decay=0.99), data=data, progress=False, verbose=False)
    e = m["ema"]
    assert e["decay"] == 0.99 and e["updates"] == 3 * (400 // 50)
    assert e["final_val_acc"] == m["val_acc_history"][-1]
    assert e["final_raw_val_acc"] == e["raw_val_acc_history"][-1]
    assert len(e["raw_val_acc_history"]) == len(m["val_acc_history"]) == 4
    assert m["config"]["ema_decay"] == 0.99
    pytest.importorskip("matplotlib")
    from fcgpu.cli.train import plot_history
    plot_history(m, tmp_path / "p.png")  # (the raw weights' curve beside the average's)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    off = run_training(cfg(), data=data, progress=False, verbose=False)
    assert off["ema"] is None
    assert off["loss_history"] == m["loss_history"]
    assert off["val_acc_history"] == e["raw_val_acc_history"]


def test_cli_flag_and_its_range():
    import argparse
    from fcgpu.cli.train import add_arguments, config_from_args
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert config_from_args(p.parse_args(["--ema", "0.999"])).ema_decay == 0.999
    assert config_from_args(p.parse_args([])).ema_decay is None
    with pytest.raises(ConfigError) as e:
        config_from_args(p.parse_args(["--ema", "1"]))
    assert str(e.value) == "ema_decay must be in (0, 1), got 1.0"


def test_model_without_batchnorm(rng):
    data = blobs(rng)
    model = FullyConnectedNet([8], input_dim=12, num_classes=3, seed=0, xp=np)
    s = Solver(model, data, update_rule="sgd", num_epochs=1, batch_size=100, verbose=False,
               seed=1, ema_decay=0.5)
    s.train()
    assert s.ema.bn == [] and s.ema.updates == 500 // 100
    assert checkpoint.decode(checkpoint.encode(s.state_dict()))["ema"]["bn_params"] == []


def test_search_space_parameter():
    """``ema_decay`` in fcgpu search's space: off (0) by default, the setting's range
    otherwise, and a drawn 0 is a config without an average. Mutant caught: the 0
    passed on as ema_decay=0.0 (TrainConfig refuses it)."""
    optuna = pytest.importorskip("optuna")
    from fcgpu.search import space as sp
    s = sp.default_space()
    assert s["ema_decay"] == {"value": 0.0}
    with pytest.raises(ConfigError, match=r"ema_decay = 1.0 must be in \(0, 1\)"):
        sp.parse_param("ema_decay=0.9,1.0")
    s["ema_decay"] = sp.parse_param("ema_decay=0,0.999")[1]
    fixed = {"layers": 1, "units_1": 10, "dropout": 1.0, "learning_rate": 1e-3, "reg": 1e-4,
             "weight_scale": 1e-2, "batch_size": 100}
    for drawn, want in ((0.0, None), (0.999, 0.999)):
        trial = optuna.trial.FixedTrial(dict(fixed, ema_decay=drawn))
        assert sp.suggest_config(trial, s).ema_decay == want
