"""The course's whole-run wall time (fcgpu.bench.course_run, ``fcgpu bench --course-wall``):
its fields on a tiny NumPy run, the reasons of backends that cannot run, the PyTorch
mirror of the net, the report's rows and the CLI flag. No timing is asserted."""
import json

import numpy as np
import pytest

from fcgpu.bench import course_run
from fcgpu.bench.report import load, render
from fcgpu.bench.report.course import course_bullets, course_md
from fcgpu.bench.results import build_results

TINY = dict(epochs=2, num_train=980, num_val=100, hidden_dims=[16, 12])


def test_synthetic_data_has_cifar10_shape():
    d = course_run.synthetic_data(50, 7)
    assert d["X_train"].shape == (50, 3, 32, 32) and d["X_val"].shape == (7, 3, 32, 32)
    assert d["X_train"].dtype == np.float32
    assert 40 < float(d["X_train"].std()) < 90 and abs(float(d["X_train"].mean())) < 5
    assert set(np.unique(d["y_train"])) <= set(range(10)) and len(d["y_val"]) == 7


def test_numpy_backend_tiny_run_has_sane_fields(monkeypatch):
    from fcgpu import backend
    monkeypatch.setattr(backend, "cupy_status", lambda: (False, "no CuPy here"))
    out = course_run.course_wall(enabled=True, backends=["numpy", "fcgpu", "fcgpu_graph"],
                                 **TINY)
    r = out["backends"]["numpy"]
    assert "skipped" not in r, r
    assert r["epochs"] == 2 and len(r["epoch_seconds"]) == 2
    assert r["seconds"] > 0 and all(s > 0 for s in r["epoch_seconds"])
    assert r["seconds"] >= sum(r["epoch_seconds"])   # the whole run holds its epochs
    assert r["run_seconds"] >= r["seconds"]
    # (after the first step, then each epoch: the Solver's history)
    assert len(r["val_acc_history"]) == 3
    assert 0 <= r["final_val_acc"] <= 1 and r["best_val_acc"] == max(r["val_acc_history"])
    assert r["config"]["hidden_dims"] == [16, 12] and r["config"]["preset"] == "course"
    assert r["config"]["batch_size"] == 490 and r["config"]["backend"] == "numpy"
    assert isinstance(r["device"], str) and r["device"]
    for name in ("fcgpu", "fcgpu_graph"):
        assert out["backends"][name] == {"skipped": "no GPU backend: no CuPy here"}
    assert out["epochs"] == 2 and out["num_train"] == 980 and out["goal_seconds"] == 1.0
    assert "16 x 12" in out["config"]
    json.dumps(out)   # JSON-able


def test_not_enabled_bad_names_and_deadline():
    assert "--course-wall" in course_run.course_wall()["skipped"]
    with pytest.raises(ValueError, match="torch_cpu"):
        course_run.course_wall(enabled=True, backends=["torch_cpu"])
    with pytest.raises(ValueError, match="num_train"):
        course_run.course_wall(enabled=True, backends=["numpy"], num_train=60000)
    import time
    out = course_run.course_wall(enabled=True, backends=["numpy"], deadline=time.time() + 1,
                                 **TINY)
    assert "deadline" in out["backends"]["numpy"]["skipped"]


def test_child_skips_with_a_reason(monkeypatch):
    """Children that cannot run answer with a reason, not a crash."""
    out = course_run._run_child(dict(TINY, backend="torch_cuda", seed=0), timeout=300)
    try:
        import torch as _t
        cuda = _t.cuda.is_available()
    except ImportError:
        cuda = None
    if cuda:
        pytest.skip("a GPU is here: torch_cuda runs (checked on the GPU machine)")
    assert "skipped" in out and out["skipped"], out
    assert ("torch.cuda.is_available() is False" in out["skipped"] if cuda is False
            else "PyTorch is not installed" in out["skipped"])
    failed = course_run._run_child(dict(TINY, backend="numpy", hidden_dims=[0]), timeout=300)
    # the child's last line on stderr says why (the config's own check of the sizes)
    assert failed["skipped"].startswith("failed (exit 1): ") and "hidden" in \
        failed["skipped"] and "Error" in failed["skipped"], failed


def test_torch_mirror_trains_the_course_net_on_cpu():
    torch = pytest.importorskip("torch")
    from fcgpu.train import from_preset
    cfg = from_preset("course", hidden_dims=(16, 12))
    data = course_run.synthetic_data(980, 100)
    seconds, epoch_s, hist = course_run._torch_course(torch, cfg, data, 2, "cpu")
    assert seconds >= sum(epoch_s) > 0 and len(epoch_s) == 2
    assert len(hist) == 2 and all(0 <= a <= 1 for a in hist)


# ----------------------------------------------------------------- the report

def fake_course():
    return {"epochs": 17, "num_train": 49000, "num_val": 1000, "goal_seconds": 1.0,
            "goal_device": "H200", "config": "the course's net (3 x 500)",
            "data": "synthetic", "warm_up": "one untimed epoch", "isolation": "own process",
            "backends": {
                "fcgpu": {"seconds": 1.6, "epoch_seconds": [0.08] * 17, "final_val_acc": 0.11,
                          "best_val_acc": 0.12, "device": "NVIDIA H200", "vs_torch_cuda": 2.5},
                "fcgpu_graph": {"seconds": 0.8, "epoch_seconds": [0.04] * 17,
                                "final_val_acc": 0.1, "best_val_acc": 0.13,
                                "device": "NVIDIA H200", "vs_torch_cuda": 5.0},
                "torch_cuda": {"seconds": 4.0, "epoch_seconds": [0.2] * 17,
                               "final_val_acc": 0.09, "best_val_acc": 0.1,
                               "device": "NVIDIA H200", "vs_torch_cuda": 1.0},
                "numpy": {"skipped": "not asked for"}}}


def test_report_rows_goal_and_ratio():
    md = "\n".join(course_md(fake_course()))
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "800.00 ms" in rows["fcgpu + CUDA graph"] and "5.00×" in rows["fcgpu + CUDA graph"]
    assert "✅ met" in rows["fcgpu + CUDA graph"]
    assert "1.60 s" in rows["fcgpu (CuPy, fused)"] and "❌ missed (1.6× the goal)" in \
        rows["fcgpu (CuPy, fused)"]
    assert "80.00 ms" in rows["fcgpu (CuPy, fused)"]     # the mean of its epochs (steps)
    assert "4.00 s" in rows["PyTorch eager (CUDA)"] and "0.100" in rows["PyTorch eager (CUDA)"]
    assert "not asked for" in rows["fcgpu NumPy (CPU)"]
    assert "under 1 s on an H200" in md
    bullet = course_bullets({"experiments": {"course_wall": fake_course()}})
    assert len(bullet) == 1 and "800.00 ms" in bullet[0] and "fcgpu + CUDA graph" in bullet[0]
    assert "✅ met" in bullet[0] and "5.00×" in bullet[0]
    assert course_md({"skipped": "not run: opt in"}) == ["Not run: opt in.", ""]
    assert course_bullets({"experiments": {"course_wall": {"skipped": "x"}}}) == []


def test_report_page_has_the_section(tmp_path):
    pytest.importorskip("matplotlib")
    res = build_results([], experiments={"course_wall": fake_course()}, machine=None)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(res))
    md = open(render(load([str(p)]), str(tmp_path / "out")), encoding="utf-8").read()
    section = md[md.index("## The course's whole training"):md.index("## Notebook")]
    assert "fcgpu + CUDA graph" in section and "800.00 ms" in section
    assert "Course run, whole 17-epoch training" in md[:md.index("### Targets")]
    res = build_results([], experiments={}, machine=None)   # older files: no section
    p.write_text(json.dumps(res))
    md = open(render(load([str(p)]), str(tmp_path / "out2")), encoding="utf-8").read()
    assert "## The course's whole training" not in md


# ----------------------------------------------------------------- the CLI

def test_cli_flag_lands_in_results_json(tmp_path, monkeypatch):
    pytest.importorskip("pytest_benchmark")
    from fcgpu.cli import main
    real = course_run.course_wall
    seen = {}

    def tiny(**kw):
        seen.update(kw)
        return real(**dict(kw, **TINY))
    monkeypatch.setattr(course_run, "course_wall", tiny)
    monkeypatch.delenv("FCGPU_DATA", raising=False)
    out = tmp_path / "b"
    assert main(["bench", "--only", "experiments", "--course-wall", "--course-backends",
                 "numpy", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cw = res["experiments"]["course_wall"]
    assert list(cw["backends"]) == ["numpy"] and cw["backends"]["numpy"]["epochs"] == 2
    assert seen["backends"] == ["numpy"] and seen["enabled"] is True
    assert seen["deadline"] is None
    assert res["settings"]["course_wall"] is True
    assert main(["bench", "--only", "experiments", "--course-wall", "--course-backends",
                 "numpy,cuda", "--out", str(tmp_path / "c")]) == 2


def _script_function(name):
    from pathlib import Path
    script = (Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh").read_text()
    start = script.index("%s() {" % name)
    return script[start:script.index("\n}\n", start) + 3]


def test_time_share_of_a_deadline_and_the_gpu_check_asks_for_it():
    from fcgpu.bench import schedule
    assert course_run.time_share(40) == pytest.approx(24)     # 60%: 25 s would be more
    assert course_run.time_share(50) == pytest.approx(25)
    assert course_run.time_share(150) == pytest.approx(60)    # 40%
    step = _script_function("bench_step")
    assert "--course-wall" in step and "--deadline" in step
    names = step.split("--course-backends", 1)[1].split()[0].rstrip(")").split(",")
    assert names and set(names) <= set(course_run.GPU_BACKENDS)
    # the headline runs the course on the GPU backends, in their estimated order
    assert "--part headline" in _script_function("headline_step")
    assert set(schedule.headline_course_backends()) == set(course_run.GPU_BACKENDS)


def test_ratio_to_pytorch_and_the_children_it_runs(monkeypatch):
    from fcgpu import backend
    monkeypatch.setattr(backend, "cupy_status", lambda: (True, None))
    secs = {"fcgpu_graph": 0.5, "torch_cuda": 2.0, "fcgpu": 0.8, "numpy": 40.0}
    calls = []

    def child(spec, timeout):
        calls.append((spec["backend"], timeout))
        return {"seconds": secs[spec["backend"]]}
    monkeypatch.setattr(course_run, "_run_child", child)
    out = course_run.course_wall(enabled=True, backends=None, timeout=77, **TINY)
    b = out["backends"]
    assert [c[0] for c in calls] == ["fcgpu_graph", "torch_cuda", "fcgpu", "numpy"]
    assert all(t == 77 for _, t in calls)
    assert b["fcgpu_graph"]["vs_torch_cuda"] == pytest.approx(4.0)
    assert b["fcgpu"]["vs_torch_cuda"] == pytest.approx(2.5)
    assert b["torch_cuda"]["vs_torch_cuda"] == pytest.approx(1.0)


@pytest.mark.parametrize("headline_ran", [True, False])
def test_gpu_checks_bench_adds_the_rest_to_this_calls_headline(tmp_path, headline_ran):
    """After this call's headline step the bench step measures the rest only (--part
    rest, the course run kept); on a second call (STEPS=bench, no headline here) it
    measures everything, the headline first (--part all, with the course run)."""
    import subprocess
    work = tmp_path / "w"
    (work / "bench").mkdir(parents=True)
    if headline_ran:
        (work / "bench" / "results.json").write_text("{}")
    funcs = _script_function("gpu_or_fail") + _script_function("bench_step")
    r = subprocess.run(["bash", "-c", funcs + "\nbench_step"], capture_output=True, text=True,
                       env={"PY": "echo", "WORK": str(work), "STEP_SECONDS": "200",
                            "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.strip().splitlines()[-1]  # what PY (echo) was given
    assert "--deadline 180" in cmd and "--quick" in cmd
    assert ("--part rest" in cmd) == headline_ran
    assert ("--part all" in cmd and "--course-wall" in cmd) == (not headline_ran)


@pytest.mark.parametrize("seconds,deadline", [(120, 105), (15, 7)])
def test_gpu_checks_headline_deadline_stays_positive(seconds, deadline):
    """The headline's --deadline is its step's seconds less 15, but at least half of
    them. Mutant caught: a step given only 15 s passing --deadline 0 (a usage error)."""
    import subprocess
    funcs = "gpu_or_fail() { :; }\n" + _script_function("headline_step")
    r = subprocess.run(["bash", "-c", funcs + "\nheadline_step"], capture_output=True, text=True,
                       env={"PY": "echo", "WORK": "/w", "STEP_SECONDS": str(seconds),
                            "HEADLINE_MARGIN": "15", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ["--deadline", str(deadline)], r.stdout
