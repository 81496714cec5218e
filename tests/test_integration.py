"""End-to-end runs on the real CIFAR-10 (FCGPU_DATA); skipped without it.

`.ci/run` sets FCGPU_DATA, so CI runs the full default training once and a
regression in accuracy cannot land. Accuracy only: nothing here is timed."""
import json
import os
import subprocess
import sys

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
