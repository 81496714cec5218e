"""End-to-end runs on the real CIFAR-10 (FCGPU_DATA); skipped without it.

`.ci/run` sets FCGPU_DATA, so CI runs the full default training once and a
regression in accuracy cannot land. Accuracy only: nothing here is timed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_default_training_reaches_target_accuracy(cifar_path, tmp_path):
    """`fcgpu train` with its defaults (the course's final net, 17 epochs)."""
    metrics = tmp_path / "metrics.json"
    env = dict(os.environ, FCGPU_DATA=cifar_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("FCGPU_BACKEND", None)
    r = subprocess.run([sys.executable, "-m", "fcgpu.cli", "train", "--backend", "numpy",
                        "--metrics", str(metrics), "--checkpoint", str(tmp_path / "ck")],
                       capture_output=True, text=True, env=env, timeout=3600)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0
    m = json.loads(metrics.read_text())
    print("val_acc", m["val_acc"], "test_acc", m["test_acc"], "samples/s", m["samples_per_s"])
    assert m["epochs"] == 17
    assert m["val_acc"] >= 0.58
    assert m["test_acc"] >= 0.56


def test_dropout_as_regularizer(cifar_path):
    """The notebook's experiment: 500 examples, 25 epochs, no dropout against keep 0.6
    (Adam 5e-4). Without dropout the net overfits (train acc > 0.9); with it the
    training accuracy stays clearly lower."""
    from fcgpu.data import get_CIFAR10_data
    from fcgpu.fc_net import FullyConnectedNet
    from fcgpu.solver import Solver

    data = get_CIFAR10_data(path=cifar_path)
    small = {k: data[k][:500] for k in ("X_train", "y_train")}
    small.update(X_val=data["X_val"], y_val=data["y_val"])
    final_train = {}
    for dropout in (0, 0.6):
        model = FullyConnectedNet([500], dropout=dropout, xp=np)
        solver = Solver(model, small, num_epochs=25, batch_size=100, update_rule="adam",
                        optim_config={"learning_rate": 5e-4}, verbose=False, seed=0)
        solver.train()
        final_train[dropout] = np.mean(solver.train_acc_history[-3:])
        print(dropout, solver.train_acc_history[-1], solver.val_acc_history[-1])
    assert final_train[0] > 0.9
    assert final_train[0.6] < final_train[0] - 0.05
