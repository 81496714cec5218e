"""Solver options of issue 17: augmentation in the gather, learning-rate schedules,
label smoothing; their defaults leave a run bit for bit as it was, and a resume with
them on continues exactly like an uninterrupted run."""
import numpy as np
import pytest

from fcgpu import checkpoint, schedules
from fcgpu.augment_spec import augment_gather_reference
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.gradient_check import eval_numerical_gradient
from fcgpu.solver import CheckpointError, Solver
from helpers import stopped_and_resumed

SHAPE = (3, 6, 5)
D = 90


def images(seed=0, n=70, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n,) + SHAPE).astype(dtype)
    y = rng.integers(0, 4, n)
    Xv = rng.standard_normal((20, D))
    yv = rng.integers(0, 4, 20)
    return {"X_train": X, "y_train": y, "X_val": Xv, "y_val": yv}


def make(data, epochs=3, ls=0.0, dropout=0.8, **kw):
    model = FullyConnectedNet([24, 16], input_dim=D, num_classes=4, weight_scale=5e-2,
                              use_batchnorm=True, dropout=dropout, seed=2, fresh_masks=True,
                              dtype=np.float64, label_smoothing=ls)
    args = dict(update_rule="adam", optim_config={"learning_rate": 2e-3}, batch_size=13,
                num_epochs=epochs, num_train_samples=1000, verbose=False, seed=7)
    args.update(kw)
    return Solver(model, data, **args)


def same_run(a, b):
    assert a.loss_history == b.loss_history
    assert a.val_acc_history == b.val_acc_history
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k]), k


def test_defaults_are_todays_run_bit_for_bit():
    data = images()
    data["X_train"] = data["X_train"].astype(np.float64).reshape(70, D) / 255 - 0.5
    plain = make(data, lr_decay=0.9)
    plain.train()
    explicit = make(data, lr_decay=0.9, augment="none", pad=4, lr_schedule="step", ls=0.0)
    explicit.train()
    same_run(plain, explicit)
    flipped = make(data, lr_decay=0.9, augment="flip", image_shape=SHAPE)
    flipped.train()
    assert flipped.loss_history[1:] != plain.loss_history[1:]  # (the option does something)


@pytest.mark.parametrize("mode", ["flip", "crop"])
def test_each_step_trains_on_the_augmented_gather_of_its_epoch_and_position(mode, monkeypatch):
    data = images(1)
    mean = data["X_train"].mean(axis=0)
    s = make(data, epochs=2, augment=mode, pad=2, mean=mean, augment_seed=99)
    assert s.X_train.dtype == np.uint8  # raw images stay uint8; the gather subtracts
    seen = []
    step = Solver._step
    monkeypatch.setattr(Solver, "_step", lambda self, X, y: (seen.append((X.copy(), y.copy())),
                                                             step(self, X, y)))
    s.train()
    rng = np.random.default_rng(7)  # the Solver's seed; 1000 >= N draws no subsamples
    for epoch in range(2):
        perm = rng.permutation(70)
        for b in range(70 // 13):
            Xr, yr = augment_gather_reference(data["X_train"], data["y_train"], perm, b, 13,
                                              SHAPE, mode, 2, 99, epoch, mean, np.float64)
            X, y = seen[epoch * 5 + b]
            assert np.array_equal(X, Xr) and np.array_equal(y, yr), (epoch, b)
    assert len(seen) == 10


def test_train_accuracy_on_raw_images_subtracts_the_mean():
    data = images(2)
    mean = data["X_train"].mean(axis=0)
    s = make(data, epochs=0, augment="crop", mean=mean)
    Xf = data["X_train"].astype(np.float64) - mean
    want = float((np.argmax(s.model.loss(Xf.reshape(70, D)), axis=1) == data["y_train"]).mean())
    assert s.check_accuracy(s.X_train, s.y_train) == want
    assert s.check_accuracy(s.X_train, s.y_train, batch_size=16) == want  # 5 batches
    # a subsample: the same rows (same generator draw) as float data would give
    idx = np.random.default_rng(7).choice(70, 30, replace=False)
    hits = np.argmax(s.model.loss(Xf.reshape(70, D)[idx]), axis=1) == data["y_train"][idx]
    assert s.check_accuracy(s.X_train, s.y_train, num_samples=30, batch_size=8) == float(
        hits.mean())


def test_resume_mid_run_with_augment_and_schedule_equals_uninterrupted(tmp_path):
    data = images(3)
    mean = data["X_train"].mean(axis=0)
    kw = dict(augment="crop", mean=mean, lr_schedule="onecycle",
              lr_schedule_options={"pct_start": 0.25}, ls=0.1, augment_seed=2 ** 63 + 5)
    whole = make(data, epochs=4, **kw)
    whole.train()
    # the schedule spans num_epochs, so the interrupted run is a 4-epoch run stopped
    # after its second epoch, its checkpoint written there (as `fcgpu train` does);
    # the fresh Solver resuming it has another augment_seed: the checkpoint's wins
    rest = stopped_and_resumed(make, data, tmp_path / "ck.safetensors", kw)
    same_run(whole, rest)


# (a setting the resume checks, the Solver that saved, the Solver that resumes)
OTHER_SETTINGS = [
    ("augment", dict(augment="crop"), dict(augment="flip")),
    ("augment", dict(augment="crop"), dict(augment="none")),
    ("pad", dict(augment="crop"), dict(augment="crop", pad=3)),
    ("image_shape", dict(augment="crop"), dict(augment="crop", image_shape=(3, 5, 6))),
    ("mean", dict(augment="crop"), dict(augment="crop", mean=np.zeros(D))),
    ("lr_schedule", dict(augment="crop"), dict(augment="crop", lr_schedule="cosine")),
    ("lr_schedule_options", dict(lr_schedule="cosine"),
     dict(lr_schedule="cosine", lr_schedule_options={"warmup_steps": 2})),
    ("label_smoothing", dict(augment="crop"), dict(augment="crop", ls=0.1)),
    ("mix", dict(augment="crop"), dict(augment="crop", mix="mixup")),
    ("mix_alpha", dict(augment="crop", mix="cutmix"),
     dict(augment="crop", mix="cutmix", mix_alpha=0.5)),
    ("ema_decay", dict(augment="crop"), dict(augment="crop", ema_decay=0.9)),
]


@pytest.mark.parametrize("key,saved,resumed", OTHER_SETTINGS,
                         ids=["%s-%d" % (c[0], i) for i, c in enumerate(OTHER_SETTINGS)])
def test_resume_refuses_each_other_setting(tmp_path, key, saved, resumed):
    """One refusal per training setting the state stores (all but the augmentation's
    seed, which the state supplies): the message names the setting. Mutant caught: a
    resume that ignores a changed setting."""
    data = images(4)
    s = make(data, epochs=1, optim_config={"learning_rate": 2e-3}, **saved)
    s.train()
    path = str(tmp_path / "ck.safetensors")
    s.save_checkpoint(path)
    other = make(data, epochs=2, optim_config={"learning_rate": 2e-3}, **resumed)
    before = {k: v.copy() for k, v in other.model.params.items()}
    with pytest.raises(CheckpointError, match=r"other settings \(%s " % key):
        other.load_checkpoint(path)
    assert other.epoch == 0 and all(np.array_equal(before[k], other.model.params[k])
                                    for k in before)
    make(data, epochs=2, optim_config={"learning_rate": 2e-3}, **saved).load_checkpoint(path)


def test_the_refusals_cover_every_stored_setting():
    from fcgpu.checkpoint import schema
    assert {c[0] for c in OTHER_SETTINGS} == set(schema.SETTINGS_KEYS) - {"augment_seed"}


def test_check_state_refuses_malformed_settings():
    s = make(images(5), epochs=0, augment="flip")
    state = s.state_dict()
    checkpoint.check_state(state)
    for key, bad in (("augment", "rotate"), ("pad", -1), ("image_shape", [3, 6]),
                     ("augment_seed", 2 ** 64), ("mean", 1), ("lr_schedule", "linear"),
                     ("lr_schedule_options", {"pct_start": float("nan")}),
                     ("label_smoothing", 1.0), ("mix", "blend"), ("mix_alpha", 0.0)):
        broken = dict(state, settings=dict(state["settings"], **{key: bad}))
        with pytest.raises(CheckpointError):
            checkpoint.check_state(broken)
    with pytest.raises(CheckpointError, match="malformed"):
        checkpoint.check_state(dict(state, settings={"augment": "flip"}))


@pytest.mark.parametrize("name,opts", [("cosine", {"warmup_steps": 3}),
                                       ("onecycle", {"pct_start": 0.3}),
                                       (None, {})])
def test_schedule_sets_every_steps_rate(name, opts, monkeypatch):
    data = images(6)
    data["X_train"] = data["X_train"].reshape(70, D) / 255.0
    s = make(data, epochs=3, lr_schedule=name, lr_schedule_options=opts,
             lr_decay=1.0 if name else 0.5)
    rates = []
    step = Solver._step
    monkeypatch.setattr(Solver, "_step", lambda self, X, y: (
        rates.append(self.optim_configs["W1"]["learning_rate"]), step(self, X, y)))
    s.train()
    if name is None:
        want = schedules.lr_table("step", 15, 2e-3, steps_per_epoch=5, lr_decay=0.5)
    else:
        want = schedules.lr_table(name, 15, 2e-3, **opts)
    assert rates == list(want)


def test_bad_options_are_one_line_errors():
    data = images(7)
    flat = dict(data, X_train=data["X_train"].reshape(70, D))
    with pytest.raises(ValueError, match="needs image_shape"):
        make(flat, augment="crop")
    with pytest.raises(ValueError, match="image_shape"):
        make(flat, augment="crop", image_shape=(3, 5, 5))
    with pytest.raises(ValueError, match="augment must be one of none, flip, crop"):
        make(data, augment="rotate")
    with pytest.raises(ValueError, match="pad"):
        make(data, augment="crop", pad=5)
    with pytest.raises(ValueError, match="lr_schedule"):
        make(data, lr_schedule="linear")
    with pytest.raises(ValueError, match="lr_decay"):
        make(data, lr_schedule="cosine", lr_decay=0.9)
    with pytest.raises(ValueError, match="learning_rate"):
        make(data, lr_schedule="cosine", optim_config={})
    with pytest.raises(ValueError, match="warmup_steps"):
        make(data, lr_schedule="cosine", lr_schedule_options={"warmup_steps": -1})
    with pytest.raises(ValueError, match="cuda_graph"):  # (NumPy model: no graph at all)
        make(data, augment="flip", cuda_graph=True)
    with pytest.raises(ValueError, match="label_smoothing"):
        make(data, ls=1.0)


@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_label_smoothing_in_the_net_gradient_check(ls):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((5, 7))
    y = rng.integers(0, 4, 5)
    model = FullyConnectedNet([6, 5], input_dim=7, num_classes=4, weight_scale=0.3, seed=1,
                              dtype=np.float64, dropout=0.7, use_batchnorm=True,
                              label_smoothing=ls)
    loss, grads = model.loss(X, y)
    for name in ("W1", "b3", "gamma1"):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name],
                                      verbose=False, h=1e-6)
        assert np.max(np.abs(num - grads[name]) / np.maximum(1e-8, np.abs(num)
                                                             + np.abs(grads[name]))) < 1e-5
    plain = FullyConnectedNet([6, 5], input_dim=7, num_classes=4, weight_scale=0.3, seed=1,
                              dtype=np.float64, dropout=0.7, use_batchnorm=True)
    assert (model.loss(X, y)[0] == plain.loss(X, y)[0]) == (ls == 0.0)
