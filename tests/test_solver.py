"""Solver: the course API, input checks, NaN stops, float32 end to end, resume."""
import io
import os

import numpy as np
import pytest

from fcgpu.fc_net import FullyConnectedNet
from fcgpu import checkpoint
from fcgpu.errors import ConfigError, DataError
from fcgpu.solver import CheckpointError, NonFiniteLossError, Solver


def blobs(rng, n=600, d=12, c=3, xp=np):
    """Linearly separable-ish clusters."""
    centers = rng.standard_normal((c, d)) * 3
    y = rng.integers(c, size=n)
    X = centers[y] + rng.standard_normal((n, d))
    return {"X_train": xp.asarray(X[: n - 100]), "y_train": xp.asarray(y[: n - 100]),
            "X_val": xp.asarray(X[n - 100:]), "y_val": xp.asarray(y[n - 100:])}


def small_model(xp=np, **kw):
    args = dict(input_dim=12, num_classes=3, weight_scale=1e-1, seed=0, fresh_masks=True, xp=xp)
    args.update(kw)
    return FullyConnectedNet([32, 32], **args)


def test_trains_to_high_accuracy_course_api(xp):
    """(Seeded data: an accuracy threshold on fresh random data passes by luck.)"""
    data = blobs(np.random.default_rng(1), xp=xp)
    model = small_model(xp, use_batchnorm=True, dropout=0.9)
    out = io.StringIO()
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
                    lr_decay=0.95, num_epochs=5, batch_size=50, print_every=5, out=out, seed=1)
    solver.train()
    assert solver.best_val_acc > 0.9
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 6
    assert len(solver.loss_history) == 5 * (500 // 50)
    assert solver.loss_history[-1] < solver.loss_history[0]
    assert "(Iteration 1 / 50) loss:" in out.getvalue()
    assert "(Epoch 5 / 5) train acc:" in out.getvalue()
    # the learning rate decayed once per epoch
    assert abs(solver.optim_configs["W1"]["learning_rate"] - 1e-2 * 0.95 ** 5) < 1e-12
    # float32 end to end
    assert all(v.dtype == np.float32 for v in model.params.values())
    assert solver.X_train.dtype == np.float32
    assert all(c["m"].dtype == np.float32 for c in solver.optim_configs.values())


def test_data_is_moved_once_and_batches_stay_on_its_module(xp, rng):
    data = blobs(rng)  # host arrays, float64
    model = small_model(xp)
    solver = Solver(model, data, num_epochs=1, batch_size=100, verbose=False)
    assert type(solver.X_train) is type(model.params["W1"])
    assert solver.X_train.dtype == model.dtype


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.__setitem__("y_train", d["y_train"] + 5), r"labels in \[.*must be in \[0, 3\)"),
    (lambda d: d["y_val"].__setitem__(0, -1), "labels in"),
    (lambda d: d["X_train"].__setitem__((3, 2), np.nan), "NaN or inf"),
    (lambda d: d["X_val"].__setitem__((7, 0), np.inf), "NaN or inf"),
    (lambda d: d.__setitem__("y_train", d["y_train"][:-1]), "rows but"),
    (lambda d: d.__setitem__("X_train", d["X_train"][:, :10]), "input_dim is 12"),
    (lambda d: d.pop("X_val"), "X_val"),
    (lambda d: d.__setitem__("y_train", d["y_train"] + 0.5), "integer class labels"),
])
def test_bad_data_is_rejected_at_construction(rng, mutate, match):
    data = blobs(rng)
    mutate(data)
    with pytest.raises(DataError, match=match):
        Solver(small_model(), data)


def test_bad_solver_arguments(rng):
    data = blobs(rng)
    with pytest.raises(ValueError, match="unrecognized arguments frobnicate"):
        Solver(small_model(), data, frobnicate=1)
    with pytest.raises(ConfigError, match="update_rule must be one of sgd, sgd_momentum"):
        Solver(small_model(), data, update_rule="lbfgs")


def test_nan_loss_stops_training_and_keeps_best_params(rng):
    data = blobs(rng)
    model = small_model()
    calls = {"n": 0}

    def poisoned_sgd(w, dw, config):
        calls["n"] += 1
        from fcgpu.optim import sgd
        next_w, config = sgd(w, dw, config)
        if calls["n"] > 6 * 25:  # epoch 3 (6 params x 10 steps per epoch)
            next_w = next_w * np.nan
        return next_w, config

    solver = Solver(model, data, update_rule=poisoned_sgd, num_epochs=5, batch_size=50,
                    verbose=False)
    with pytest.raises(NonFiniteLossError, match="became nan"):
        solver.train()
    assert solver.best_params and solver.best_val_acc > 0
    assert all(np.isfinite(v).all() for v in model.params.values())
    assert all(np.array_equal(model.params[k], solver.best_params[k]) for k in model.params)
    assert solver.epoch == 2


def test_checkpoints_are_written_atomically_per_epoch(tmp_path, rng):
    data = blobs(rng)
    solver = Solver(small_model(), data, num_epochs=2, batch_size=100, verbose=False,
                    checkpoint_name=str(tmp_path / "ck"))
    solver.train()
    names = sorted(os.listdir(tmp_path))
    # safetensors files, and no temporary files left over
    assert names == ["ck_epoch_1.safetensors", "ck_epoch_2.safetensors"]
    blob = (tmp_path / "ck_epoch_2.safetensors").read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    assert blob[8:9] == b"{" and b'"fcgpu-checkpoint"' in blob[8:8 + header_len]
    state = checkpoint.load(tmp_path / "ck_epoch_2.safetensors")
    assert state["epoch"] == 2 and len(state["loss_history"]) == 2 * (500 // 100)


def assert_same_state(a, b, where="state"):
    """Equal nested states: arrays bit for bit with the same dtype, the rest ==."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), (where, sorted(a), sorted(b))
        for k in a:
            if k != "epoch_seconds":  # wall-clock times
                assert_same_state(a[k], b[k], "%s.%s" % (where, k))
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, "%s[%d]" % (where, i))
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b), where
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


@pytest.mark.parametrize("rule", ["adam", "sgd_momentum", "rmsprop"])
def test_resume_equals_uninterrupted_run(tmp_path, rng, rule):
    data = blobs(rng)
    kw = dict(update_rule=rule, optim_config={"learning_rate": 5e-3}, lr_decay=0.9,
              batch_size=50, verbose=False, seed=3)

    def fresh():
        return small_model(use_batchnorm=True, dropout=0.7)

    full = Solver(fresh(), data, num_epochs=4, **kw)
    full.train()

    path = tmp_path / "state.safetensors"
    # a run killed after epoch 2: its checkpoint is written from the epoch callback,
    # before train() restores the best parameters, as `fcgpu train` does
    first = Solver(fresh(), data, num_epochs=2, epoch_callback=lambda s: s.save_checkpoint(path),
                   **kw)
    first.train()
    resumed = Solver(fresh(), data, num_epochs=4, **kw)
    resumed.load_checkpoint(path)
    assert resumed.epoch == 2
    resumed.train()
    assert resumed.loss_history == full.loss_history
    assert resumed.val_acc_history == full.val_acc_history
    for k in full.model.params:
        assert np.array_equal(resumed.model.params[k], full.model.params[k]), k
    # everything else too: optimizer state (Adam's m, v, t; velocities; caches),
    # batchnorm running statistics, the dropout and minibatch generator positions
    assert_same_state(resumed.state_dict(), full.state_dict())


def test_each_epoch_visits_every_row_once_in_a_new_order(rng):
    """A fresh permutation per epoch (the same order every epoch would train a
    different net yet land near the same accuracy)."""
    data = blobs(rng, n=150)
    data["X_train"][:, 0] = np.arange(50)  # row ids the model sees
    model = small_model()
    seen = []
    loss = model.loss

    def recording_loss(X, y=None):
        if y is not None:
            seen.append(np.asarray(X[:, 0]).astype(int))
        return loss(X, y)
    model.loss = recording_loss
    Solver(model, data, num_epochs=3, batch_size=10, verbose=False, seed=4).train()
    orders = np.concatenate(seen).reshape(3, 50)
    for order in orders:
        assert sorted(order) == list(range(50))
    assert len({tuple(o) for o in orders}) == 3, orders


def test_load_checkpoint_rejects_garbage(tmp_path, rng):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not a checkpoint")
    solver = Solver(small_model(), blobs(rng), verbose=False)
    with pytest.raises(CheckpointError, match="bad.safetensors.*not a safetensors file"):
        solver.load_checkpoint(path)


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    from fcgpu.atomic import atomic_write_bytes
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(b"x", tmp_path / "f.json")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "f.json").read_bytes() == b"x"


def test_stop_check_stops_after_the_step_and_keeps_the_last_whole_epoch(rng):
    """stop_check runs after every step and after each epoch's bookkeeping; what it
    raises stops train() right there: the epoch in progress is not counted (epoch,
    histories, and the checkpoint a resume would read, stay at the last whole epoch)
    and the model holds the best parameters. Mutants: no check after a step (the stop
    comes at the epoch's end: 5 epochs' losses), the check before the step (one loss
    fewer)."""
    class Stop(Exception):
        pass

    calls = []

    def stop_check():
        calls.append(len(solver.loss_history))  # (NumPy: read after every step)
        if len(calls) == 8:
            raise Stop()
    solver = Solver(small_model(), blobs(rng), num_epochs=3, batch_size=100,
                    verbose=False, seed=1, stop_check=stop_check)
    with pytest.raises(Stop):
        solver.train()
    # 5 steps an epoch: steps 1-5, the epoch's end, then steps 6 and 7 of epoch 2
    assert calls == [1, 2, 3, 4, 5, 5, 6, 7]
    assert solver.epoch == 1 and len(solver.val_acc_history) == 2
    for k, v in solver.best_params.items():
        assert np.array_equal(solver.model.params[k], v)
