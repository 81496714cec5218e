"""`fcgpu train` presets, augmentation and schedules: `fcgpu train` runs the default
preset and `--preset course` the course's run, flags override presets, the raw-uint8
CIFAR path gives the numbers the mean-subtracted one does, and the run records what it
used."""
import numpy as np
import pytest

from fcgpu import data as cifar
from fcgpu import train
from fcgpu.augment import augment_gather
from fcgpu.cli import build_parser
from fcgpu.cli.train import config_from_args
from fcgpu.train import PRESETS, TrainConfig, from_preset, run_training

from test_train import cfg, fake_cifar


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_default_preset_and_the_course_config():
    assert train.DEFAULT_PRESET == "augmented"
    assert parse() == from_preset("augmented") == parse("--preset", "augmented")
    assert parse().preset == "augmented" and parse().augment == "flip"
    # the presets are CIFAR-10 recipes: your own .npz starts from the course's run
    assert parse("--data", "mine.npz").preset == "course"
    assert parse("--data", "mine.npz").augment == "none"
    assert parse("--data", "mine.npz", "--preset", "augmented").augment == "flip"
    assert parse("--data", "cifar-10-python.tar.gz").preset == "augmented"
    # TrainConfig's own defaults are the course's run, labelled so
    assert parse("--preset", "course") == TrainConfig() and TrainConfig().preset == "course"
    assert TrainConfig().augment == "none" and TrainConfig().schedule == "step"
    assert TrainConfig().label_smoothing == 0.0 and PRESETS["course"] == {}


def test_flags_override_the_preset():
    c = parse("--preset", "augmented", "--epochs", "3", "--hidden", "8,8", "--pad", "2",
              "--augment", "flip", "--label-smoothing", "0.05")
    assert (c.epochs, c.hidden_dims, c.pad, c.augment, c.label_smoothing) == (
        3, (8, 8), 2, "flip", 0.05)
    assert c.preset == "augmented" and c.schedule == PRESETS["augmented"]["schedule"]
    assert c.dropout == PRESETS["augmented"]["dropout"]
    c = parse("--preset", "best", "--schedule", "step", "--lr-decay", "0.8")
    assert (c.schedule, c.lr_decay, c.augment) == ("step", 0.8, "crop")
    # a schedule other than 'step' drops the course's per-epoch decay unless it is given
    assert parse("--preset", "course", "--schedule", "cosine").lr_decay == 1.0
    with pytest.raises(ValueError, match="lr_decay"):
        parse("--preset", "course", "--schedule", "cosine", "--lr-decay", "0.9")
    assert parse("--data", "x.npz").num_train is None  # (all of an .npz, as before)


@pytest.mark.parametrize("kw,match", [({"augment": "rotate"}, "augment must be one of"),
                                      ({"pad": -1}, "pad"),
                                      ({"label_smoothing": 1.0}, "label_smoothing"),
                                      ({"schedule": "linear"}, "schedule"),
                                      ({"schedule": "cosine", "warmup_epochs": 3,
                                        "lr_decay": 1.0}, "warmup_epochs"),
                                      ({"preset": "fastest"}, "preset")])
def test_bad_settings(kw, match):
    from fcgpu.errors import ConfigError
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)


def test_schedule_options():
    c = cfg(schedule="cosine", lr_decay=1.0, warmup_epochs=1, epochs=3)
    assert c.schedule_options(8) == ("cosine", {"warmup_steps": 8})
    c = cfg(schedule="onecycle", lr_decay=1.0, warmup_epochs=1.5, epochs=3)
    assert c.schedule_options(8) == ("onecycle", {"pct_start": 0.5})
    assert cfg().schedule_options(8) == (None, {})


def test_raw_cifar_is_the_mean_subtracted_data_as_uint8(monkeypatch):
    rng = np.random.default_rng(0)
    Xtr = rng.integers(0, 256, (150, 3, 32, 32), dtype=np.uint8)
    Xte = rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8)
    ytr, yte = rng.integers(0, 10, 150), rng.integers(0, 10, 30)
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 30)
    monkeypatch.setattr(cifar, "resolve_cifar10", lambda path=None, **kw: "x")
    monkeypatch.setattr(cifar, "_load_arrays", lambda src: (Xtr, ytr, Xte, yte))
    monkeypatch.setattr(train, "_VAL_START", 120)
    ref = cifar.get_CIFAR10_data(num_training=120, num_validation=30, num_test=30)
    raw = train.load_data(cfg(augment="crop", num_train=100, num_val=20))
    assert raw["X_train"].dtype == np.uint8 and raw["X_train"].shape == (100, 3, 32, 32)
    for k in ("X_val", "y_val"):
        assert np.array_equal(raw[k], ref[k][:20]), k
    for k in ("X_test", "y_test"):
        assert np.array_equal(raw[k], ref[k]), k
    assert np.array_equal(raw["y_train"], ref["y_train"][:100])
    # the gather with no augmentation rebuilds get_CIFAR10_data's X_train bit for bit
    Xb, _ = augment_gather(raw["X_train"], None, np.arange(100), 0, 100, (3, 32, 32), "none",
                           mean=raw["mean"])
    assert np.array_equal(Xb, ref["X_train"][:100].reshape(100, -1))


def test_run_training_subtracts_the_mean_of_raw_images():
    """CIFAR-10 with augmentation trains on the raw uint8 images and subtracts the
    training mean in the gather. With a mean that is constant per channel (so flips
    and crops move nothing that matters), that run equals one on the same images
    centred beforehand, bit for bit. Mutant caught: run_training not passing the data's
    mean to the Solver (seconds here; before, only the 4-minute CIFAR-10 run saw it)."""
    rng = np.random.default_rng(11)
    data = fake_cifar(rng)
    mean = np.broadcast_to(np.array([100.5, 120.25, 90.75], np.float32)[:, None, None],
                           (3, 32, 32)).copy()

    def centred(x):
        out = np.empty(x.shape, np.float32)
        np.subtract(x, mean, out=out, dtype=np.float32)
        return out
    raw = dict(data, mean=mean)
    for k in ("X_train", "X_val", "X_test"):
        raw[k] = np.clip(data[k] * 40 + 110, 0, 255).astype(np.uint8)
    ready = {k: (centred(v) if k.startswith("X_") else v) for k, v in raw.items()
             if k != "mean"}
    raw["X_val"], raw["X_test"] = ready["X_val"], ready["X_test"]  # (given centred)
    c = cfg(augment="crop", pad=2, epochs=2, hidden_dims=(32,))
    a = run_training(c, data=raw, progress=False, verbose=False)
    b = run_training(c, data=ready, progress=False, verbose=False)
    assert a["loss_history"] == b["loss_history"]
    assert (a["val_acc_history"], a["test_acc"]) == (b["val_acc_history"], b["test_acc"])
    assert np.isfinite(a["loss_history"]).all()


def test_augmented_run_records_preset_and_augmentation_and_resumes(tmp_path, rng):
    data = fake_cifar(rng)
    data["X_train"] = np.clip(data["X_train"] * 40 + 128, 0, 255).astype(np.uint8)
    data["mean"] = data["X_train"].mean(axis=0, dtype=np.float64).astype(np.float32)
    data["X_val"] = data["X_val"] * 40
    data["X_test"] = data["X_test"] * 40
    c = from_preset("best", hidden_dims=(32,), epochs=3, batch_size=50, num_train=400,
                    num_val=100, backend="numpy", seed=3)
    full = run_training(c, data=data, progress=False, verbose=False)
    assert full["preset"] == "best"
    assert full["augment"] == {"mode": "crop", "pad": 4, "image_shape": [3, 32, 32]}
    assert full["config"]["schedule"] == "onecycle"
    assert full["config"]["label_smoothing"] == PRESETS["best"]["label_smoothing"] > 0
    assert np.isfinite(full["loss_history"]).all()  # (pixel patterns do not survive crops)
    ck = tmp_path / "run.ckpt"

    class Killed(Exception):
        pass

    def kill(solver):
        if solver.epoch == 2:
            raise Killed
    with pytest.raises(Killed):
        run_training(c, data=data, checkpoint=str(ck), progress=False, verbose=False,
                     epoch_callback=kill)
    resumed = run_training(c, data=data, checkpoint=str(ck), resume=True, progress=False,
                           verbose=False)
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["loss_history"] == full["loss_history"]
    assert resumed["val_acc"] == full["val_acc"] and resumed["test_acc"] == full["test_acc"]
    # other augmentation: refused
    from fcgpu.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="augment"):
        run_training(from_preset("best", hidden_dims=(32,), epochs=3, batch_size=50,
                                 num_train=400, num_val=100, backend="numpy", seed=3,
                                 augment="flip"),
                     data=data, checkpoint=str(ck), resume=True, progress=False, verbose=False)


def test_augment_needs_an_image_shape_for_flat_data(rng):
    data = fake_cifar(rng)
    for k in ("X_train", "X_val", "X_test"):
        data[k] = data[k].reshape(len(data[k]), -1)
    with pytest.raises(ValueError, match="image_shape"):
        run_training(cfg(augment="flip"), data=data, progress=False, verbose=False)
    data["image_shape"] = (3, 32, 32)  # what an .npz with image_shape brings
    m = run_training(cfg(augment="flip", epochs=1), data=data, progress=False, verbose=False)
    assert m["augment"]["image_shape"] == [3, 32, 32]
    data["image_shape"] = (3072,)
    with pytest.raises(ValueError, match=r"image_shape \[C, H, W\]"):
        run_training(cfg(augment="flip"), data=data, progress=False, verbose=False)


def test_presets_are_described_from_their_fields(capsys):
    """--help lists every preset as its fields say, so the text cannot drift from them."""
    from fcgpu.train import describe_preset
    assert describe_preset("course") == ("3 x 500, keep 0.8, Adam 0.005 decayed 0.9 per epoch, "
                                         "batch 490, 17 epochs")
    for name, fields in PRESETS.items():
        text = describe_preset(name)
        c = from_preset(name)
        assert ("%d epochs" % c.epochs) in text and ("%d x %d" % (len(c.hidden_dims),
                                                                  c.hidden_dims[0])) in text
        assert ("flips" in text) == (c.augment != "none")
        assert ("one-cycle" in text) == (c.schedule == "onecycle")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = "".join(capsys.readouterr().out.split())  # (wrapped at any width)
    for name in PRESETS:
        assert "".join(("%s: %s" % (name, describe_preset(name))).split()) in out
