"""The CUDA-graph step with augmentation, on the emulated CuPy of test_cuda_graph.py:
the captured augmenting gather (batch index and epoch read from device memory) gives
the losses and parameters of the uncaptured Solver, epoch after epoch."""
import io

import numpy as np
import pytest

import test_cuda_graph as tcg
import test_kernels_host as hk
from fcgpu.cuda import augment as cuda_augment
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.solver import Solver
from test_cuda_graph import emu  # noqa: F401  (fixture)
from test_kernels_host import emu_lib, nvcc_reports  # noqa: F401  (fixtures)

# pointer arguments the augment kernel accepts as null: y, b_ptr, epoch_ptr, mean, yb
_NULLABLE = {1, 3, 4, 5, 18}


@pytest.fixture
def emu_aug(emu, nvcc_reports, emu_lib, monkeypatch):  # noqa: F811
    sigs = hk._signatures(nvcc_reports)
    monkeypatch.setattr(cuda_augment, "_cp", lambda: emu.cp)
    monkeypatch.setattr(cuda_augment, "get_kernel", lambda name: tcg._GraphKernel(
        name, sigs[name], emu.log, emu_lib, emu.state))
    allowed = hk._null_allowed
    monkeypatch.setattr(hk, "_null_allowed", lambda name, k, sig: allowed(name, k, sig) or (
        name.startswith("fcgpu_augment_gather<") and k in _NULLABLE))
    return emu


def _data(cp, seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (75, 3, 4, 5)).astype(np.uint8)
    return {"X_train": cp.asarray(X), "y_train": cp.asarray(rng.integers(0, 3, 75)),
            "X_val": cp.asarray(rng.standard_normal((20, 60))),
            "y_val": cp.asarray(rng.integers(0, 3, 20))}, X.mean(axis=0)


def _solver(cp, data, mean, graph, mode, epochs=3, rule="adam"):
    model = FullyConnectedNet([16, 8], input_dim=60, num_classes=3, use_batchnorm=True,
                              dropout=0.7, weight_scale=0.3, dtype=np.float32, seed=3,
                              fresh_masks=True, xp=cp, label_smoothing=0.1)
    return Solver(model, data, update_rule=rule, optim_config={"learning_rate": 1e-2},
                  lr_decay=0.8, batch_size=20, num_epochs=epochs, num_train_samples=40,
                  verbose=False, out=io.StringIO(), seed=11, cuda_graph=graph,
                  augment=mode, pad=2, mean=cp.asarray(mean))


@pytest.mark.parametrize("mode,rule", [("crop", "adam"), ("flip", "sgd_momentum"),
                                       ("none", "adam")])
def test_emulated_graphed_augmented_solver_equals_uncaptured(emu_aug, mode, rule):
    data, mean = _data(emu_aug.cp, 4)
    plain = _solver(emu_aug.cp, data, mean, False, mode, rule=rule)
    plain.train()
    graphed = _solver(emu_aug.cp, data, mean, True, mode, rule=rule)
    graphed.train()
    tcg._assert_same_training(plain, graphed)
    g = graphed._graph_step
    assert g.captures == 1 and g.replays == 3 * (75 // 20) - 1
    assert g.augment is not None and int(g.epoch_slot.get()[0]) == 2
    names = [entry[0] if isinstance(entry, tuple) else str(entry) for entry in emu_aug.log]
    assert any("augment_gather" in str(n) for n in names)
    assert not any("gather_rows" in str(n) for n in names)


def test_emulated_graph_refuses_a_schedule(emu_aug):
    data, mean = _data(emu_aug.cp, 5)
    model = FullyConnectedNet([8], input_dim=60, num_classes=3, xp=emu_aug.cp)
    with pytest.raises(ValueError, match="lr_schedule='cosine'"):
        Solver(model, data, optim_config={"learning_rate": 1e-2}, cuda_graph=True,
               lr_schedule="cosine", update_rule="adam")
