"""The CUDA-graph step with augmentation, on the emulated CuPy of test_cuda_graph.py:
the captured augmenting gather (batch index and epoch read from device memory), and the
MixUp/CutMix kernel after it with the mixed targets in static buffers, give the losses
and parameters of the uncaptured Solver, epoch after epoch."""
import io

import numpy as np
import pytest

import test_cuda_graph as tcg
from fcgpu.cuda import augment as cuda_augment
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.solver import Solver
from test_cuda_graph import emu  # noqa: F401  (fixture)
from gpu_util import cupy, requires_gpu
from test_augment_kernels import allow_null_pointers


@pytest.fixture
def emu_aug(emu, kernel_signatures, launch_bounds, emu_lib, monkeypatch):  # noqa: F811
    sigs = kernel_signatures
    monkeypatch.setattr(cuda_augment, "_cp", lambda: emu.cp)
    monkeypatch.setattr(cuda_augment, "_TABLES", {})  # (no table of another stand-in)
    monkeypatch.setattr(cuda_augment, "get_kernel", lambda name: tcg._GraphKernel(
        name, sigs[name], emu.log, emu_lib, emu.state,
        None if launch_bounds is None else launch_bounds[name]))
    allow_null_pointers(monkeypatch)
    return emu


def _data(cp, seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (75, 3, 4, 5)).astype(np.uint8)
    return {"X_train": cp.asarray(X), "y_train": cp.asarray(rng.integers(0, 3, 75)),
            "X_val": cp.asarray(rng.standard_normal((20, 60))),
            "y_val": cp.asarray(rng.integers(0, 3, 20))}, X.mean(axis=0)


def _solver(cp, data, mean, graph, mode, epochs=3, rule="adam", **kw):
    model = FullyConnectedNet([16, 8], input_dim=60, num_classes=3, use_batchnorm=True,
                              dropout=0.7, weight_scale=0.3, dtype=np.float32, seed=3,
                              fresh_masks=True, xp=cp, label_smoothing=0.1)
    args = dict(lr_decay=0.8)
    args.update(kw)
    return Solver(model, data, update_rule=rule, optim_config={"learning_rate": 1e-2},
                  batch_size=20, num_epochs=epochs, num_train_samples=40,
                  verbose=False, out=io.StringIO(), seed=11, cuda_graph=graph,
                  augment=mode, pad=2, mean=cp.asarray(mean), **args)


@pytest.mark.parametrize("mode,rule,mix", [("crop", "adam", "none"),
                                           ("flip", "sgd_momentum", "none"),
                                           ("none", "adam", "none"), ("crop", "adam", "cutmix"),
                                           ("flip", "rmsprop", "mixup"),
                                           ("none", "sgd_momentum", "mixup")])
def test_emulated_graphed_augmented_solver_equals_uncaptured(emu_aug, mode, rule, mix):
    """Mutants that fail here (with mixing): the captured step's loss without the mixed
    targets; the mixing kernel given epoch 0 instead of epoch_slot."""
    data, mean = _data(emu_aug.cp, 4)
    plain = _solver(emu_aug.cp, data, mean, False, mode, rule=rule, mix=mix, mix_alpha=0.5)
    plain.train()
    graphed = _solver(emu_aug.cp, data, mean, True, mode, rule=rule, mix=mix, mix_alpha=0.5)
    graphed.train()
    tcg._assert_same_training(plain, graphed)
    g = graphed._graph_step
    assert g.captures == 1 and g.replays == 3 * (75 // 20) - 1
    assert g.augment is not None and int(g.epoch_slot.get()[0]) == 2
    names = [entry[0] if isinstance(entry, tuple) else str(entry) for entry in emu_aug.log]
    assert any("augment_gather" in str(n) for n in names)
    assert not any("gather_rows" in str(n) for n in names)
    assert any("mix_pairs" in str(n) for n in names) == (mix != "none")
    assert (g.mix is None) == (mix == "none")


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("mode,mix", [("crop", "cutmix"), ("flip", "mixup"), ("none", "mixup")])
def test_gpu_graphed_mixed_solver_equals_uncaptured(mode, mix):
    """On a GPU: the captured step with the augmenting gather and the mixing kernel (the
    targets in static buffers) gives the uncaptured Solver's run bit for bit."""
    cp = cupy()
    data, mean = _data(cp, 6)
    plain = _solver(cp, data, mean, False, mode, mix=mix, mix_alpha=0.5)
    plain.train()
    graphed = _solver(cp, data, mean, True, mode, mix=mix, mix_alpha=0.5)
    graphed.train()
    tcg._assert_same_training(plain, graphed, host=cp.asnumpy)
    g = graphed._graph_step
    assert g.captures == 1 and g.mix is not None


@pytest.mark.parametrize("schedule,opts,rule,mode", [
    ("onecycle", {"pct_start": 0.4}, "adam", "crop"),
    ("cosine", {"warmup_steps": 2}, "sgd_momentum", "none"),
    ("cosine", {}, "rmsprop", "flip")])
def test_emulated_graphed_schedule_equals_uncaptured(emu_aug, schedule, opts, rule, mode):
    """Per-step learning rates: the epoch's table uploaded in begin_epoch, the step's
    row copied into the rates on the device; same run as uncaptured."""
    data, mean = _data(emu_aug.cp, 5)
    runs = []
    for graph in (False, True):
        s = _solver(emu_aug.cp, data, mean, graph, mode, rule=rule, lr_decay=1.0,
                    lr_schedule=schedule, lr_schedule_options=opts)
        s.train()
        runs.append(s)
    tcg._assert_same_training(*runs)
    g = runs[1]._graph_step
    assert g.captures == 1 and g.lr_rows is not None
    # the last epoch's table holds the schedule's rates of its steps
    from fcgpu import schedules
    want = [schedules.lr_at(schedule, t, 9, 1e-2, **opts) for t in range(6, 9)]
    assert np.array_equal(tcg._np(g.lr_rows)[:, 0], want)


def test_emulated_gpu_smoke_augment_section(emu_aug):
    """bench/gpu_smoke.py's augment section (which memcheck and racecheck run on the GPU
    machine) passes on the host-built kernels and launches every augment kernel: the
    smoke exits 2 when some kernel of fcgpu.cuda.module.MODULES was never launched."""
    import importlib.util
    from pathlib import Path
    from fcgpu.cuda import module as cmod
    path = Path(__file__).resolve().parent.parent / "bench" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("fcgpu_gpu_smoke_aug", path)
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        smoke.run_augment(emu_aug.cp, dtype, rng)
    assert smoke.FAILURES == []
    launched = {name for name, _, _ in emu_aug.log}
    assert launched >= set(cmod.MODULES["augment"][1])


def test_gpu_smoke_launches_every_module():
    """Each kernel module has a section in bench/gpu_smoke.py's main loop (a module added
    without one makes the GPU check's smoke, memcheck and racecheck steps fail)."""
    from pathlib import Path
    from fcgpu.cuda import module as cmod
    text = (Path(__file__).resolve().parent.parent / "bench" / "gpu_smoke.py").read_text()
    main = text[text.index("def main("):]
    sections = {"dropout": "run_flat(", "batchnorm": "run_bn(", "optim": "run_optim(",
                "graph": "run_graph(", "augment": "run_augment("}
    assert set(sections) == set(cmod.MODULES)
    for module, call in sections.items():
        assert call in main, "gpu_smoke.main never calls %s (module %s)" % (call, module)
