"""run_training and `fcgpu train`: metrics, plot, checkpoint/resume, clean errors.

These use small synthetic data shaped like CIFAR-10; the real run is in
test_integration.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fcgpu.cli import main
from fcgpu.cli.train import plot_history, write_metrics
from fcgpu.train import TrainConfig, run_training


def fake_cifar(rng, n_train=400, n_val=100, n_test=200):
    """Noisy images with one fixed pattern per class: learnable."""
    patterns = rng.choice([-0.3, 0.3], size=(10, 3, 32, 32)).astype(np.float32)

    def make(n):
        y = rng.integers(10, size=n)
        X = rng.standard_normal((n, 3, 32, 32)).astype(np.float32) + patterns[y]
        return X, y
    Xtr, ytr = make(n_train)
    Xv, yv = make(n_val)
    Xte, yte = make(n_test)
    return dict(X_train=Xtr, y_train=ytr, X_val=Xv, y_val=yv, X_test=Xte, y_test=yte)


def cfg(**kw):
    base = dict(hidden_dims=(64, 64), epochs=3, batch_size=50, num_train=400, num_val=100,
                learning_rate=5e-3, backend="numpy", seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_run_training_metrics_and_outputs(tmp_path):
    data = fake_cifar(np.random.default_rng(2))  # (seeded: the accuracy threshold below)
    m = run_training(cfg(), data=data, progress=False, verbose=False)
    for key in ("backend", "device", "epochs", "train_acc", "val_acc", "test_acc",
                "samples_per_s", "epoch_seconds"):
        assert key in m
    assert m["backend"] == "numpy" and m["epochs"] == 3
    assert len(m["epoch_seconds"]) == 3 and m["samples_per_s"] > 0
    assert m["val_acc"] > 0.5  # far above chance (0.1) on this learnable data
    write_metrics(m, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text())["val_acc"] == m["val_acc"]
    pytest.importorskip("matplotlib")
    plot_history(m, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("ema", [None, 0.95])
def test_resume_after_kill_matches_uninterrupted(tmp_path, rng, ema):
    """(With --ema too: the average and its raw-weights accuracies resume exactly.)"""
    data = fake_cifar(rng)
    full = run_training(cfg(epochs=4, ema_decay=ema), data=data, progress=False,
                        verbose=False)
    ck = tmp_path / "run.ckpt"

    class Killed(Exception):
        pass

    def kill_after_two(solver):
        if solver.epoch == 2:
            raise Killed()

    with pytest.raises(Killed):
        run_training(cfg(epochs=4, ema_decay=ema), data=data, checkpoint=str(ck),
                     progress=False, verbose=False, epoch_callback=kill_after_two)
    resumed = run_training(cfg(epochs=4, ema_decay=ema), data=data, checkpoint=str(ck),
                           resume=True, progress=False, verbose=False)
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["loss_history"] == full["loss_history"]
    assert resumed["val_acc_history"] == full["val_acc_history"]
    assert resumed["val_acc"] == full["val_acc"] and resumed["test_acc"] == full["test_acc"]
    assert resumed["ema"] == full["ema"] and (ema is None) == (full["ema"] is None)


def test_resume_refuses_a_checkpoint_of_another_net(tmp_path, rng):
    data = fake_cifar(rng)
    ck = tmp_path / "run.ckpt"
    run_training(cfg(epochs=1), data=data, checkpoint=str(ck), progress=False, verbose=False)
    with pytest.raises(ValueError, match="settings differ.*hidden_dims"):
        run_training(cfg(epochs=2, hidden_dims=(32,)), data=data, checkpoint=str(ck),
                     resume=True, progress=False, verbose=False)


# TrainConfig fields a resumed run may change (how and where the steps run) ...
RESUME_EXEMPT = {"epochs", "backend", "data", "cuda_graph", "preset", "matmul_precision"}
# ... and for every other field, a value other than cfg()'s that a resume must refuse
OTHER_VALUES = {
    "hidden_dims": (32,), "weight_scale": 3e-2, "batchnorm": False, "dropout": 0.5,
    "update_rule": "sgd", "learning_rate": 1e-3, "lr_decay": 0.8, "reg": 1e-4,
    "batch_size": 40, "num_train": 300, "num_val": 50, "seed": 6, "dtype": "float64",
    "image_shape": (3, 32, 32), "augment": "flip", "pad": 2, "label_smoothing": 0.1,
    "schedule": "cosine", "warmup_epochs": 0.5, "ema_decay": 0.999, "mix": "mixup",
    "mix_alpha": 0.5,
}


def test_every_train_config_field_is_exempt_or_checked_on_resume():
    """The lists above cover TrainConfig: a new field needs a refusal case (or a
    reason to be exempt), and the exempt fields are the library's."""
    import dataclasses
    from fcgpu.settings import RESUME_EXEMPT as exempt
    from fcgpu.train import TrainConfig
    assert set(exempt) == RESUME_EXEMPT
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields == RESUME_EXEMPT | set(OTHER_VALUES)


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory):
    data = fake_cifar(np.random.default_rng(0))
    ck = tmp_path_factory.mktemp("resume") / "run.ckpt"
    run_training(cfg(epochs=1), data=data, checkpoint=str(ck), progress=False, verbose=False)
    return data, ck


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_resume_refuses_each_changed_setting(one_epoch_checkpoint, field):
    """One refusal per TrainConfig field that is not exempt: `fcgpu train --resume`
    with that one setting changed stops before training, naming the field. Mutants
    caught: a resume that ignores a changed seed, augmentation, or any other field."""
    from fcgpu.checkpoint import CheckpointError
    data, ck = one_epoch_checkpoint
    blob = ck.read_bytes()
    changed = {field: OTHER_VALUES[field]}
    if field == "schedule":
        changed["lr_decay"] = 1.0  # (the per-epoch decay is the step schedule's)
    with pytest.raises(CheckpointError, match=r"cannot resume from it: its settings differ "
                                              r"\(.*\b%s: " % field):
        run_training(cfg(epochs=2, **changed), data=data, checkpoint=str(ck), resume=True,
                     progress=False, verbose=False)
    assert ck.read_bytes() == blob


def test_resume_accepts_changed_exempt_settings(one_epoch_checkpoint, tmp_path):
    """More epochs, another matmul precision or preset label: the run resumes."""
    data, ck = one_epoch_checkpoint
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ck.read_bytes())
    m = run_training(cfg(epochs=2, matmul_precision="high", preset="best", data=None),
                     data=data, checkpoint=str(copy), resume=True, progress=False,
                     verbose=False)
    assert m["resumed_from_epoch"] == 1 and m["epochs"] == 2


def test_resume_refuses_a_damaged_checkpoint_and_leaves_it(tmp_path, rng, monkeypatch, capsys):
    """A truncated checkpoint: one line naming the file (CheckpointError from Python,
    exit 2 from the CLI), nothing trained, the file and its folder unchanged."""
    from fcgpu import train
    from fcgpu.checkpoint import CheckpointError
    data = fake_cifar(rng)
    ck = tmp_path / "run.ckpt"
    run_training(cfg(epochs=1), data=data, checkpoint=str(ck), progress=False, verbose=False)
    damaged = ck.read_bytes()[:-100]
    ck.write_bytes(damaged)
    with pytest.raises(CheckpointError) as e:
        run_training(cfg(epochs=2), data=data, checkpoint=str(ck), resume=True,
                     progress=False, verbose=False)
    assert str(e.value).startswith("checkpoint %s: the file is truncated" % ck)
    monkeypatch.setattr(train, "load_data", lambda cfg, progress=True: data)
    code = main(["train", "--backend", "numpy", "--epochs", "2", "--hidden", "64,64",
                 "--batch-size", "50", "--num-train", "400", "--lr", "5e-3", "--seed", "5",
                 "--checkpoint", str(ck), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(ck) in err, err
    assert ck.read_bytes() == damaged and os.listdir(tmp_path) == ["run.ckpt"]


@pytest.mark.parametrize("kw,match", [
    (dict(dropout=1.5), "keep probability"),
    (dict(hidden_dims=(0,)), "positive"),
    (dict(num_train=60000), "num_train"),
    (dict(learning_rate=-1.0), "learning_rate"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(**kw)


def _cli(args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fcgpu.cli"] + args, capture_output=True,
                          text=True, env=e, timeout=300)


def test_cli_missing_data_is_one_clear_line(tmp_path):
    r = _cli(["train", "--epochs", "1", "--backend", "numpy", "--data",
              str(tmp_path / "nowhere.tar.gz")])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "nowhere.tar.gz" in lines[0]


def test_cli_corrupt_archive_is_one_clear_line(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage" * 100)
    r = _cli(["train", "--epochs", "1", "--backend", "numpy", "--data", str(bad)],
             env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr


def test_cli_bad_flag_values():
    assert main(["train", "--hidden", "500,abc", "--backend", "numpy"]) == 2
    assert main(["train", "--resume", "--backend", "numpy"]) == 2


def test_matmul_precision_on_numpy_changes_nothing_and_says_so(rng):
    """--matmul-precision high on the NumPy backend: the same run bit for bit, a line
    saying the setting has no effect there, recorded in the metrics; the process's
    setting is back afterwards. Mutants caught: the setting not restored, not
    recorded, or the NumPy note missing."""
    import io
    from fcgpu import backend
    data = fake_cifar(rng)
    before = backend.get_matmul_precision()
    out = io.StringIO()
    high = run_training(cfg(epochs=1, matmul_precision="high"), data=data, progress=False,
                        out=out)
    assert backend.get_matmul_precision() == before
    assert "matmul precision high: the NumPy backend computes float32 products in float32" \
        in out.getvalue()
    highest = run_training(cfg(epochs=1), data=data, progress=False, verbose=False)
    assert high["loss_history"] == highest["loss_history"]
    assert (high["matmul_precision"], high["tf32"]) == ("high", False)
    assert highest["matmul_precision"] == "highest"
    with pytest.raises(ValueError, match="matmul_precision must be one of highest, high"):
        cfg(matmul_precision="medium")


def test_cli_matmul_precision_flag(capsys):
    from fcgpu.cli import build_parser
    args = build_parser().parse_args(["train", "--matmul-precision", "high"])
    from fcgpu.cli.train import config_from_args
    assert config_from_args(args).matmul_precision == "high"
    assert config_from_args(build_parser().parse_args(["train"])).matmul_precision == "highest"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--matmul-precision", "medium"])
