"""The settings table (fcgpu.settings): one entry per TrainConfig field, each range
written once and used by TrainConfig, the Solver, the net, the search space and the
checkpoint schema alike; every refusal is one ConfigError line naming the setting."""
import dataclasses

import numpy as np
import pytest

from fcgpu import settings
from fcgpu.errors import ConfigError
from fcgpu.train import TrainConfig

# a value out of range (or of the wrong kind) for every TrainConfig field
BAD = {
    "hidden_dims": (64, 0), "weight_scale": 0.0, "batchnorm": "yes", "dropout": 1.5,
    "update_rule": "nesterov", "learning_rate": -1.0, "lr_decay": 0.0, "reg": -1e-3,
    "batch_size": 0, "epochs": -1, "num_train": 0, "num_val": 0, "seed": -1,
    "backend": "tpu", "data": 3, "dtype": "float16", "cuda_graph": "no",
    "matmul_precision": "medium", "image_shape": (3, 0, 32), "augment": "rotate",
    "pad": -1, "label_smoothing": 1.0, "schedule": "linear", "warmup_epochs": -0.5,
    "preset": "fastest", "ema_decay": 1.0, "mix": "blend", "mix_alpha": 0.0,
}


def test_every_train_config_field_has_its_setting():
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(settings.SETTINGS) == sorted(fields)
    assert sorted(BAD) == sorted(fields)


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_setting_refuses_its_bad_value_in_one_line(name):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{name: BAD[name]})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(name + " ") and repr(BAD[name]) in msg, msg


def test_label_smoothing_has_one_range_everywhere(monkeypatch):
    """TrainConfig, the net, the Solver (through the net), the search space and a
    stored checkpoint's settings take label smoothing's range from one Setting: moved
    there, it moves everywhere. (It was range-checked in five files.)"""
    from fcgpu import setting_spec
    from fcgpu.checkpoint import CheckpointError, schema
    from fcgpu.fc_net import FullyConnectedNet
    from fcgpu.search import space
    spec = setting_spec.LABEL_SMOOTHING
    assert settings.SETTINGS["label_smoothing"] is spec

    def refusals(value):
        out = []
        for check in (lambda: TrainConfig(label_smoothing=value),
                      lambda: FullyConnectedNet([4], input_dim=3, num_classes=2,
                                                label_smoothing=value),
                      lambda: space.normalize("label_smoothing", value, "test"),
                      lambda: schema.check_settings(dict(
                          augment="none", pad=4, image_shape=None, augment_seed=None,
                          mean=False, lr_schedule=None, lr_schedule_options={},
                          label_smoothing=value))):
            try:
                check()
                out.append(False)
            except (ConfigError, CheckpointError):
                out.append(True)
        return out
    assert refusals(0.99) == [False] * 4 and refusals(1.0) == [True] * 4
    monkeypatch.setattr(spec, "high", 0.5)
    assert refusals(0.6) == [True] * 4 and refusals(0.4) == [False] * 4


def test_solver_arguments_use_the_settings():
    """The Solver's batch_size, num_epochs, lr_decay, augment, update_rule and
    optimizer hyperparameters are refused with the settings' words."""
    from fcgpu.fc_net import FullyConnectedNet
    from fcgpu.solver import Solver
    rng = np.random.default_rng(0)
    data = {"X_train": rng.standard_normal((20, 6)), "y_train": rng.integers(0, 3, 20),
            "X_val": rng.standard_normal((5, 6)), "y_val": rng.integers(0, 3, 5)}
    for kw, words in [({"batch_size": 0}, "Solver: batch_size must be >= 1, got 0"),
                      ({"num_epochs": -1}, "Solver: num_epochs must be >= 0, got -1"),
                      ({"lr_decay": 0.0}, "Solver: lr_decay must be > 0, got 0.0"),
                      ({"augment": "rotate"}, "Solver: augment must be one of none, flip"),
                      ({"update_rule": "lbfgs"}, "Solver: update_rule must be one of sgd"),
                      ({"update_rule": "adam", "optim_config": {"beta1": 1.0}},
                       "Solver: optim_config['beta1'] must be in [0, 1), got 1.0"),
                      ({"print_every": 0}, "Solver: print_every must be >= 1"),
                      ({"ema_decay": 0}, "Solver: ema_decay must be in (0, 1), got 0")]:
        model = FullyConnectedNet([5], input_dim=6, num_classes=3, seed=0, xp=np)
        with pytest.raises(ConfigError) as e:
            Solver(model, data, **kw)
        assert str(e.value).startswith(words), (kw, str(e.value))


def test_hyperparameter_ranges_cover_the_rules():
    from fcgpu import optim
    assert set(optim.HYPER_KEYS) <= set(settings.HYPERPARAMETERS)
    for rule in optim.RULES.values():
        for key, value in rule.defaults:
            if key in settings.HYPERPARAMETERS:
                assert settings.HYPERPARAMETERS[key].why(value) is None, (rule.name, key)
