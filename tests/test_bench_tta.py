"""Time to accuracy (fcgpu.bench.experiments): the child's epoch-by-epoch accounting,
with and without running a recipe to its end, and which rows run. Nothing is timed:
the clock is fake and no data is read."""
import io
import json

from fcgpu.bench import experiments


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _run(monkeypatch, accs, to_end, target=0.6):
    """Feed `accs` epoch by epoch, 10 s of active time each; returns (epochs consumed,
    the lines sent, the result)."""
    clock = FakeClock()
    monkeypatch.setattr(experiments.time, "perf_counter", clock)
    monkeypatch.setattr(experiments.sys, "stdin", io.StringIO("go\n" * 100))
    proto = io.StringIO()
    turns = experiments._Turns(proto, target, len(accs), to_end=to_end)
    turns.wait_go()
    used = 0
    for acc in accs:
        clock.t += 10.0
        used += 1
        if turns.epoch_done(acc, 8.0):
            break
    sent = [json.loads(x) for x in proto.getvalue().splitlines()]
    return used, sent, turns.result("cpu")


def test_stops_at_the_target(monkeypatch):
    used, sent, r = _run(monkeypatch, [0.4, 0.55, 0.61, 0.65, 0.7], to_end=False)
    assert used == 3 and [s["epoch"] for s in sent] == [1, 2]
    assert (r["reached"], r["epochs"], r["seconds"], r["train_seconds"]) == (True, 3, 30.0, 24.0)
    assert "ran_to_end" not in r and r["best_val_acc"] == 0.61


def test_a_recipe_runs_to_its_end_and_keeps_its_time_to_target(monkeypatch):
    used, sent, r = _run(monkeypatch, [0.4, 0.61, 0.58, 0.65, 0.7], to_end=True)
    assert used == 5 and len(sent) == 4
    assert (r["reached"], r["epochs"], r["seconds"], r["train_seconds"]) == (True, 2, 20.0, 16.0)
    assert r["ran_to_end"] and r["active_seconds"] == 50.0 and r["best_val_acc"] == 0.7
    assert r["val_acc_history"] == [0.4, 0.61, 0.58, 0.65, 0.7]


def test_not_reached(monkeypatch):
    used, _, r = _run(monkeypatch, [0.4, 0.5, 0.59], to_end=True)
    assert used == 3 and r["reached"] is False and r["seconds"] is None
    assert r["active_seconds"] == 30.0


def test_preset_rows_follow_the_default_preset(monkeypatch, tmp_path):
    """While the default preset is the course's net its rows would repeat the course's;
    otherwise they train that preset. (No child is started: every row is skipped.)"""
    from fcgpu import train
    data = tmp_path / "cifar.tar.gz"
    data.write_bytes(b"")
    monkeypatch.setattr(experiments, "data_source", lambda path: str(data))
    monkeypatch.setattr(train, "DEFAULT_PRESET", "course")
    out = experiments.time_to_accuracy(enabled=True, backends=["numpy_default_preset"])
    assert "course's net" in out["backends"]["numpy_default_preset"]["skipped"]
    assert out["preset"]["name"] == "course"
    monkeypatch.setattr(train, "DEFAULT_PRESET", "augmented")
    from fcgpu import backend
    monkeypatch.setattr(backend, "cupy_status", lambda: (False, "no CuPy here"))
    out = experiments.time_to_accuracy(enabled=True, backends=["fcgpu_default_preset"])
    assert out["backends"]["fcgpu_default_preset"] == {"skipped": "no GPU backend: no CuPy here"}
    assert out["preset"]["name"] == "augmented"
    assert out["preset"]["epochs"] == train.PRESETS["augmented"]["epochs"]


def test_preset_rows_are_run_by_default():
    assert set(experiments.PRESET_ROWS) <= set(experiments.TTA_BACKENDS)
    assert set(experiments.PRESET_ROWS.values()) <= set(experiments.TTA_BACKENDS)
