"""MixUp and CutMix in the Solver and in ``fcgpu train`` (issue 24): each step trains on
the mixed gather of its epoch and position against the mixed targets, a resume continues
exactly, other mix settings are refused, the default (none) is the run it was, and the
flags and settings take their ranges from one place."""
import numpy as np
import pytest

from fcgpu import augment as faugment
from fcgpu.augment_spec import augment_gather_reference
from fcgpu.errors import ConfigError
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.mix_spec import mix_batch_reference
from fcgpu.solver import Solver
from helpers import stopped_and_resumed

SHAPE = (3, 6, 5)
D = 90


def images(seed=0, n=70):
    rng = np.random.default_rng(seed)
    return {"X_train": rng.integers(0, 256, (n,) + SHAPE).astype(np.uint8),
            "y_train": rng.integers(0, 4, n), "X_val": rng.standard_normal((20, D)),
            "y_val": rng.integers(0, 4, 20)}


def make(data, epochs=2, **kw):
    model = FullyConnectedNet([24, 16], input_dim=D, num_classes=4, weight_scale=5e-2,
                              use_batchnorm=True, dropout=0.8, seed=2, fresh_masks=True,
                              dtype=np.float64, label_smoothing=0.1)
    args = dict(update_rule="adam", optim_config={"learning_rate": 2e-3}, batch_size=13,
                num_epochs=epochs, num_train_samples=1000, verbose=False, seed=7)
    args.update(kw)
    return Solver(model, data, **args)


def same_run(a, b):
    assert a.loss_history == b.loss_history
    assert a.val_acc_history == b.val_acc_history
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k]), k


@pytest.mark.parametrize("augment,mix", [("crop", "mixup"), ("flip", "cutmix"),
                                         ("none", "cutmix")])
def test_each_step_trains_on_the_mixed_gather_of_its_epoch_and_position(augment, mix,
                                                                        monkeypatch):
    """The minibatch of step (epoch, b) is the reference gather mixed by the reference
    mix, and the targets handed to the model are its (y2, lam), bit for bit. Mutants
    that fail here: the Solver mixing with batch index 0 (not b); the mix drawn with
    another seed than the gather's (augment_seed); the targets left out of the loss."""
    data = images(1)
    mean = data["X_train"].mean(axis=0)
    s = make(data, augment=augment, pad=2, mean=mean, augment_seed=99, mix=mix,
             mix_alpha=0.6)
    assert s.X_train.dtype == np.uint8  # the gather makes every batch
    seen = []
    loss = FullyConnectedNet.loss

    def spy(model, X, y=None, mix=None):
        if y is not None:
            seen.append((X.copy(), y.copy(), None if mix is None else tuple(
                m.copy() for m in mix)))
        return loss(model, X, y, mix=mix)
    monkeypatch.setattr(FullyConnectedNet, "loss", spy)
    s.train()
    rng = np.random.default_rng(7)  # the Solver's seed; 1000 >= N draws no subsamples
    steps = iter(seen)
    for epoch in range(2):
        perm = rng.permutation(70)
        for b in range(70 // 13):
            Xr, yr = augment_gather_reference(data["X_train"], data["y_train"], perm, b, 13,
                                              SHAPE, augment, 2, 99, epoch, mean, np.float64)
            Xm, y2, lam = mix_batch_reference(Xr, yr, b, SHAPE, mix, 0.6, 99, epoch)
            X, y, targets = next(steps)
            assert np.array_equal(X, Xm) and np.array_equal(y, yr), (epoch, b)
            assert targets is not None, (epoch, b)
            assert np.array_equal(targets[0], y2) and np.array_equal(targets[1], lam)
    assert next(steps, None) is None


def test_mix_alone_on_float_rows_goes_through_the_gather(monkeypatch):
    """No augmentation and no mean image, flat float rows and an image_shape: mixing
    alone still makes every batch through the gather and mixes it. Mutant that fails
    here: _gathers() not counting mix (the plain steps, never mixed)."""
    data = images(2)
    data["X_train"] = data["X_train"].reshape(70, D) / 255.0
    s = make(data, epochs=1, mix="mixup", image_shape=SHAPE)
    seen = []
    monkeypatch.setattr(Solver, "_step", lambda self, X, y, mix=None: seen.append(mix))
    s.train()
    assert len(seen) == 5 and all(m is not None and m[1].shape == (13,) for m in seen)


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_resume_mid_run_with_mix_equals_uninterrupted(tmp_path, mix):
    """Stopped after epoch 2 of 4 and resumed from its checkpoint (by a Solver given
    another augment_seed: the state's wins), the run ends as the uninterrupted one did,
    bit for bit: the draws come from (seed, epoch, position)."""
    data = images(3)
    kw = dict(augment="crop", mean=data["X_train"].mean(axis=0), mix=mix, mix_alpha=0.3,
              augment_seed=2 ** 63 + 5)
    whole = make(data, epochs=4, **kw)
    whole.train()
    rest = stopped_and_resumed(make, data, tmp_path / "ck.safetensors", kw)
    same_run(whole, rest)
    assert rest.state_dict()["settings"]["mix"] == mix


def test_mix_none_is_todays_run_bit_for_bit(monkeypatch):
    """mix 'none' (with any alpha) is the run without the argument, and never mixes;
    with mixing the run differs (the option does something)."""
    data = images(4)
    mean = data["X_train"].mean(axis=0)
    plain = make(data, augment="flip", mean=mean)
    plain.train()
    calls = []
    monkeypatch.setattr("fcgpu.solver.mix_batch",
                        lambda *a, **k: calls.append(a) or faugment.mix_batch(*a, **k))
    explicit = make(data, augment="flip", mean=mean, mix="none", mix_alpha=0.2)
    explicit.train()
    same_run(plain, explicit)
    assert calls == [] and explicit.state_dict()["settings"]["mix"] == "none"
    mixed = make(data, augment="flip", mean=mean, mix="mixup")
    mixed.train()
    assert len(calls) == 10 and mixed.loss_history[1:] != plain.loss_history[1:]


def test_a_state_without_mix_settings_resumes_as_mix_none(tmp_path):
    """A checkpoint written before mixing existed (settings without 'mix' and
    'mix_alpha') continues a run without mixing, whatever its (unused) alpha, and is
    refused by one with mixing. Mutants that fail here: LATER_SETTINGS without mix's
    default; mix_alpha compared when neither run mixes."""
    from fcgpu import checkpoint
    from fcgpu.solver import CheckpointError
    data = images(5)
    s = make(data, epochs=1, augment="flip")
    s.train()
    state = s.state_dict()
    for key in ("mix", "mix_alpha"):
        del state["settings"][key]
    checkpoint.check_state(state)
    make(data, epochs=2, augment="flip").load_state_dict(state)
    make(data, epochs=2, augment="flip", mix_alpha=0.3).load_state_dict(state)  # (unused)
    with pytest.raises(CheckpointError, match=r"other settings \(mix 'none', this Solver "
                                              r"'cutmix'\)"):
        make(data, epochs=2, augment="flip", mix="cutmix").load_state_dict(state)


class _CourseModel:
    """A model of the course's shape whose loss takes no mixed targets."""

    def __init__(self):
        self.params = {"W": np.zeros((D, 4))}

    def loss(self, X, y=None):
        raise AssertionError("not reached")


def test_bad_mix_options_are_one_line_errors():
    data = images(6)
    flat = dict(data, X_train=data["X_train"].reshape(70, D))
    cases = [(dict(mix="blend"), "Solver: mix must be one of none, mixup, cutmix, got 'blend'"),
             (dict(mix="mixup", mix_alpha=0.0), r"Solver: mix_alpha must be in \[0.05, 100\]"),
             (dict(mix="mixup", mix_alpha="1"), "Solver: mix_alpha must be a number"),
             (dict(mix="cutmix", data=flat),
              r"Solver: mix='cutmix' needs image_shape \(C, H, W\) for X_train rows of 90")]
    for kw, match in cases:
        with pytest.raises(ConfigError, match=match) as info:
            make(kw.pop("data", data), **kw)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"mix='mixup' needs a model whose loss\(X, y, "
                                          r"mix=\(y2, lam\)\) takes mixed targets"):
        Solver(_CourseModel(), data, mix="mixup")
    Solver(_CourseModel(), data)  # (without mixing the course's models are fine)


# ----------------------------------------------------------------- fcgpu train

def test_train_config_and_flags():
    """--mix and --mix-alpha reach TrainConfig (defaults: none, 1.0, the course's run);
    a bad value is one ConfigError line; argparse refuses an unknown mode."""
    from fcgpu.cli import build_parser
    from fcgpu.cli.train import config_from_args
    from fcgpu.train import TrainConfig, from_preset
    c = config_from_args(build_parser().parse_args(["train", "--mix", "cutmix",
                                                    "--mix-alpha", "0.4"]))
    assert (c.mix, c.mix_alpha) == ("cutmix", 0.4)
    for preset in ("course", "augmented", "best"):
        assert (from_preset(preset).mix, from_preset(preset).mix_alpha) == ("none", 1.0)
    with pytest.raises(ConfigError, match=r"^mix_alpha must be in \[0.05, 100\], got 200.0$"):
        TrainConfig(mix="mixup", mix_alpha=200.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--mix", "blend"])


def test_run_training_with_mix_on_raw_images():
    """fcgpu train's run with --mix and no --augment: raw images through the gather (the
    mean subtracted there), mixed; the metrics record the settings."""
    from fcgpu.train import TrainConfig, run_training
    rng = np.random.default_rng(9)
    y = rng.integers(0, 10, 150)
    data = {"X_train": rng.integers(0, 256, (150, 3, 8, 8)).astype(np.uint8), "y_train": y,
            "X_val": rng.standard_normal((30, 192)).astype(np.float32),
            "y_val": rng.integers(0, 10, 30)}
    data["mean"] = data["X_train"].mean(axis=0).astype(np.float32)
    cfg = TrainConfig(hidden_dims=(16,), epochs=2, batch_size=50, num_train=150, num_val=30,
                      backend="numpy", mix="cutmix", mix_alpha=0.5, seed=3)
    m = run_training(cfg, data=data, progress=False, verbose=False)
    assert m["config"]["mix"] == "cutmix" and m["config"]["mix_alpha"] == 0.5
    assert len(m["loss_history"]) == 6 and np.all(np.isfinite(m["loss_history"]))


def test_search_space_parameters():
    """``mix`` and ``mix_alpha`` in fcgpu search's space: off (none, 1.0) by default, the
    settings' choices and range otherwise; a drawn mode and alpha reach the config, and
    without mixing the alpha is left out (not a distinct config). Mutants that fail here:
    mix left out of suggest_config's names (the drawn mode never reaches TrainConfig);
    mix_alpha kept when mix is none."""
    optuna = pytest.importorskip("optuna")
    from fcgpu.search import space as sp
    s = sp.default_space()
    assert s["mix"] == {"value": "none"} and s["mix_alpha"] == {"value": 1.0}
    with pytest.raises(ConfigError, match=r"mix_alpha = 200.0 must be in \[0.05, 100\]"):
        sp.parse_param("mix_alpha=0.2:200")
    with pytest.raises(ConfigError, match="mix = 'blend' must be one of none, mixup, cutmix"):
        sp.parse_param("mix=mixup,blend")
    s["mix"] = sp.parse_param("mix=none,mixup,cutmix")[1]
    s["mix_alpha"] = sp.parse_param("mix_alpha=0.2:2")[1]
    assert s["mix_alpha"] == {"low": 0.2, "high": 2.0, "log": False}
    fixed = {"layers": 1, "units_1": 10, "dropout": 1.0, "learning_rate": 1e-3, "reg": 1e-4,
             "weight_scale": 1e-2, "batch_size": 100}
    for mix, alpha, want in (("cutmix", 0.3, 0.3), ("mixup", 1.7, 1.7), ("none", 0.3, 1.0)):
        trial = optuna.trial.FixedTrial(dict(fixed, mix=mix, mix_alpha=alpha))
        cfg = sp.suggest_config(trial, s, epochs=1, backend="numpy")
        assert (cfg.mix, cfg.mix_alpha) == (mix, want)
