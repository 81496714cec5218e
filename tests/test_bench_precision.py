"""The benchmarks' matmul precision (``fcgpu bench --matmul-precision``): fcgpu and the
PyTorch variants compute their float32 products alike (PyTorch's
``set_float32_matmul_precision`` with fcgpu's setting on the GPU, ``highest`` on the CPU,
where the NumPy path is float32 whatever the setting), every child gets the setting,
and results.json and the report say what applied. PyTorch is a stand-in here (no
PyTorch, no GPU needed); nothing is timed."""
from __future__ import annotations

import json
import sys
import types

import pytest

from fcgpu import backend
from fcgpu.bench import course_run
from fcgpu.bench.torch_course import match_precision
from fcgpu.cli import main


def fake_torch(capability=(9, 0), cuda=True):
    """The parts of ``torch`` the precision switch and a worker's hello touch."""
    state = {"precision": "highest", "threads": 1}
    matmul = types.SimpleNamespace(allow_tf32=False)

    def set_precision(name):
        assert name in ("highest", "high", "medium"), name
        state["precision"] = name
        matmul.allow_tf32 = name != "highest"   # as PyTorch does
    t = types.SimpleNamespace(
        __version__="2.13.0-fake", set_float32_matmul_precision=set_precision,
        get_float32_matmul_precision=lambda: state["precision"],
        set_num_threads=lambda n: state.update(threads=n),
        get_num_threads=lambda: state["threads"], compile=lambda m: m,
        backends=types.SimpleNamespace(cuda=types.SimpleNamespace(matmul=matmul)),
        version=types.SimpleNamespace(cuda="13.0"),
        cuda=types.SimpleNamespace(
            is_available=lambda: cuda, get_device_capability=lambda i=0: capability,
            get_device_name=lambda i=0: "Fake GPU",
            get_device_properties=lambda i=0: types.SimpleNamespace(L2_cache_size=1 << 20)))
    return t


@pytest.fixture
def precision():
    """Set fcgpu's matmul precision for a test; the previous one comes back."""
    previous = backend.get_matmul_precision()
    yield backend.set_matmul_precision
    backend.set_matmul_precision(previous)


@pytest.mark.parametrize("fcgpu_p,device,cap,want", [
    ("high", "cuda", (9, 0), ("high", True)),
    ("high", "cuda", (7, 5), ("high", False)),      # no TF32 before compute capability 8.0
    ("highest", "cuda", (9, 0), ("highest", False)),
    ("high", "cpu", (9, 0), ("highest", False)),    # the NumPy path is float32 anyway
])
def test_pytorch_computes_as_fcgpu_does(precision, fcgpu_p, device, cap, want):
    """Mutants caught: PyTorch left at its own setting on the GPU; PyTorch on the CPU
    given 'high' (bfloat16 there, while the NumPy path is float32)."""
    precision(fcgpu_p)
    t = fake_torch(cap)
    t.set_float32_matmul_precision("medium")
    assert match_precision(t, device) == want


@pytest.mark.parametrize("variant,want", [("torch_cuda", ("high", True)),
                                          ("torch_cpu", ("highest", False)),
                                          ("numpy", ("high", False))])
def test_each_worker_records_what_applied_to_it(precision, monkeypatch, variant, want):
    """Mutant caught: the worker's hello not calling match_precision (PyTorch's
    products then in its own default while fcgpu's use TF32)."""
    from fcgpu.bench.worker import _Server
    precision("high")
    monkeypatch.setitem(sys.modules, "torch", fake_torch())
    hello = _Server(variant).hello({})
    assert hello["ok"], hello
    assert (hello["matmul_precision"], hello["tf32"]) == want
    if variant.startswith("torch"):
        assert sys.modules["torch"].get_float32_matmul_precision() == want[0]


def test_the_flag_applies_to_the_run_and_lands_in_results_json(precision, tmp_path,
                                                                monkeypatch):
    """--matmul-precision high: the course run's children are asked for it, results.json
    records it, and the process's setting comes back afterwards. Mutant caught: the
    flag parsed but not applied (the children ran in 'highest')."""
    pytest.importorskip("pytest_benchmark")
    precision("highest")
    seen = {}

    def child(spec, timeout):
        seen.update(spec=spec, now=backend.get_matmul_precision())
        return {"seconds": 1.0}
    monkeypatch.setattr(course_run, "_run_child", child)
    monkeypatch.delenv("FCGPU_DATA", raising=False)
    out = tmp_path / "b"
    assert main(["bench", "--only", "experiments", "--course-wall", "--course-backends",
                 "numpy", "--matmul-precision", "high", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert seen["spec"]["matmul_precision"] == "high" and seen["now"] == "high"
    assert res["settings"]["matmul_precision"] == "high"
    assert res["experiments"]["course_wall"]["matmul_precision"] == "high"
    assert backend.get_matmul_precision() == "highest"
    cfg = course_run._config(dict(seen["spec"], hidden_dims=None), "numpy", False)
    assert cfg.matmul_precision == "high"       # what the child's run_training applies


def test_rest_refuses_a_headline_of_another_precision(precision, tmp_path, monkeypatch,
                                                      capsys):
    """--part rest adds figures to the headline's: both must use the same precision."""
    pytest.importorskip("pytest_benchmark")
    from fcgpu.bench import machine
    monkeypatch.setattr(backend, "cupy_status", lambda: (True, None))
    monkeypatch.setattr(machine, "machine_info", lambda: {})
    import subprocess

    def no_suite(cmd, **kw):
        raise AssertionError("a suite was started")
    monkeypatch.setattr(subprocess, "call", no_suite)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.json").write_text(json.dumps(
        {"settings": {"part": "headline", "matmul_precision": "high"}}))
    assert main(["bench", "--out", str(tmp_path / "o"), "--part", "rest"]) == 2
    assert "which ran with matmul precision high, not highest" in capsys.readouterr().err


def test_the_report_says_what_applied(tmp_path):
    pytest.importorskip("matplotlib")
    from fcgpu.bench.report import load, render
    from fcgpu.bench.report.sections import precision_text
    from test_report import gpu_results
    res = gpu_results()
    res["settings"]["matmul_precision"] = "high"
    res["workers"] = {"fcgpu": {"tf32": True}, "torch_cuda": {"tf32": True},
                      "numpy": {"tf32": False}}
    assert precision_text(res) == "high: TF32 allowed in fcgpu, torch_cuda"
    p = tmp_path / "r.json"
    p.write_text(json.dumps(res))
    md = open(render(load([str(p)]), str(tmp_path / "o")), encoding="utf-8").read()
    assert "| Matmul precision (float32 products) | high: TF32 allowed in fcgpu, torch_cuda |" \
        in md
    assert "Matmul precision `high`, the same for fcgpu and PyTorch on the GPU" in md
    res["workers"] = {}
    res["settings"]["matmul_precision"] = "highest"
    assert precision_text(res) == "highest: float32 products in float32"
    del res["settings"]["matmul_precision"]
    assert precision_text(res) is None          # older results: not recorded
