"""The benchmark post-processing and report generator, on fake results (no timing here).

Checks that the summary keys are computed from the right rows, that nulls carry a note,
that the targets' met/missed logic and margins are right, and that the page has its
sections, tables and plots, also when variants or whole suites are missing.
"""
import json
import os

import pytest

from fcgpu.bench import RESULTS_FORMAT
from fcgpu.bench.kernels import op_bytes
from fcgpu.bench.report import load, render, target_status
from fcgpu.bench.results import build_results

BIG = 1 << 26


def _kcase(op, shape, times, device="gpu", skipped=None):
    """A kernel test's extra_info: ``times`` maps variant -> median seconds."""
    nbytes = op_bytes(op, shape)
    ms = {}
    for v, t in times.items():
        ms[v] = {"label": "label of " + v, "device": device if v not in (
            "numba", "numpy_ref", "torch_cpu") else "cpu", "rotate": 1,
            "calls_per_chunk": 3, "host": {"median": t * 1.1, "q1": t, "q3": t * 1.2, "n": 30},
            "device_time": {"median": t, "q1": t, "q3": t, "n": 30}, "time_s": t,
            "timer": "cuda_events", "gbps": nbytes / t / 1e9}
    return {"suite": "kernels", "op": op, "shape": list(shape), "dtype": "float32",
            "bytes": nbytes, "measurements": ms, "skipped": skipped or {}}


def _tcase(net, sps, skipped=None):
    ms = {}
    for v, s in sps.items():
        step = 490.0 / s
        ms[v] = {"label": "label of " + v, "device": "cpu" if v in ("numpy", "numpy_ref",
                                                                   "torch_cpu") else "gpu",
                 "steps_per_chunk": 2, "step_s": {"median": step, "q1": step, "q3": step,
                                                  "n": 12},
                 "samples_per_s": s, "steps": 24, "first_step_s": 0.5, "build_s": 0.1}
    hidden = [500] * 3 if net == "default" else [4096] * 3
    return {"suite": "train", "net": net, "hidden": hidden, "batch": 490,
            "measurements": ms, "skipped": skipped or {}}


def _raw(cases, variant_skips=None, machine=None):
    return {"benchmarks": [{"name": "t%d" % i, "stats": {"median": 1.0}, "extra_info": c}
                           for i, c in enumerate(cases)],
            "fcgpu": {"variant_skips": variant_skips or {}, "case_skips": [],
                      "workers": {}, "settings": {"quick": False, "loadavg": [0.5, 0.7]},
                      "machine": machine}}


GPU_MACHINE = {"cpu": "Some Xeon", "cpu_count": 16, "cpu_affinity": 16,
               "memory_bytes": 128 << 30, "date": "2026-11-26T12:00:00+00:00",
               "fcgpu_commit": "0123456789abcdef", "fcgpu_dirty": False,
               "gpu": {"available": True, "name": "NVIDIA H100 80GB HBM3", "driver": "580.1",
                       "cuda_driver_api": "13.0", "cuda_runtime": "13.0",
                       "memory_bytes": 80 << 30, "sm_count": 132, "l2_bytes": 50 << 20,
                       "compute_capability": "9.0"},
               "blas": {"name": "scipy-openblas", "version": "0.3", "threads": 16},
               "libraries": {"numpy": "2.4", "torch": "2.13", "cupy": "13.6"}}
CPU_MACHINE = {"cpu": "AMD EPYC", "cpu_count": 2, "cpu_affinity": 2,
               "memory_bytes": 24 << 30, "date": "2026-11-26T13:00:00+00:00",
               "fcgpu_commit": "fedcba9876543210", "fcgpu_dirty": True,
               "gpu": {"available": False, "reason": "CuPy is not installed"},
               "blas": {"name": "scipy-openblas", "version": "0.3", "threads": 2},
               "libraries": {"numpy": "2.4", "torch": "2.13", "cupy": None}}


def gpu_results():
    copy_t = op_bytes("copy", (BIG,)) / 3000e9            # 3000 GB/s copy
    cases = [
        _kcase("copy", (BIG,), {"cupy_unfused": copy_t, "torch_cuda": copy_t * 1.05}),
        _kcase("dropout_fwd", (BIG,), {"fcgpu": copy_t / 0.9, "cupy_unfused": copy_t * 20,
                                       "torch_cuda": copy_t * 1.5}),
        _kcase("dropout_bwd", (BIG,), {"fcgpu": copy_t / 0.8, "torch_cuda": copy_t * 1.2}),
        _kcase("fused_fwd", (490, 500), {"fcgpu": 10e-6, "cupy_unfused": 40e-6,
                                         "cupy_curand": 30e-6}),
        _kcase("fused_fwd", (65536, 4096), {"fcgpu": 1e-3, "cupy_unfused": 3e-3,
                                            "cupy_curand": 2.5e-3}),
        _kcase("bn_fwd", (490, 500), {"fcgpu": 8e-6, "torch_cuda": 12e-6}),
        _tcase("default", {"fcgpu": 240000.0, "fcgpu_graph": 300000.0,
                           "torch_cuda": 100000.0, "numpy": 20000.0, "torch_cpu": 25000.0}),
        _tcase("wide", {"fcgpu": 30000.0, "torch_cuda": 20000.0},  # no graph variant here
               skipped={"numpy": "one step takes 30 s, over the limit"}),
    ]
    raw = _raw(cases, variant_skips={"fcgpu_graph": "fcgpu has no CUDA-graph capture"},
               machine=GPU_MACHINE)
    exps = {"dropout_stats": {"x": "randn", "seed": 1, "gpu": {"checked": True,
                                                               "identical": True},
                              "rows": [{"p": 0.3, "input_mean": 10.0, "train_mean": 10.01,
                                        "test_mean": 10.0, "train_zero_frac": 0.7,
                                        "test_zero_frac": 0.0}]},
            "dropout_regularizer": {"num_train": 500, "epochs": 3, "backend": "cupy",
                                    "device": "H100", "net": "FullyConnectedNet([500])",
                                    "solver": "adam", "runs": [
                                        {"label": "no dropout", "dropout": 0,
                                         "train_acc_history": [0.1, 0.5, 0.9],
                                         "val_acc_history": [0.1, 0.2, 0.25],
                                         "final_train_acc": 0.9, "final_val_acc": 0.25,
                                         "best_val_acc": 0.25},
                                        {"label": "dropout keep 0.6", "dropout": 0.6,
                                         "train_acc_history": [0.1, 0.4, 0.7],
                                         "val_acc_history": [0.1, 0.22, 0.29],
                                         "final_train_acc": 0.7, "final_val_acc": 0.29,
                                         "best_val_acc": 0.29}]},
            "time_to_accuracy": {"target": 0.6, "max_epochs": 17, "config": "defaults",
                                 "backends": {
                                     "fcgpu": {"reached": True, "seconds": 12.5,
                                               "train_seconds": 10.0, "epochs": 9,
                                               "best_val_acc": 0.61, "loadavg": [1.0, 1.5, 2.0],
                                               "val_acc_history": [0.4] * 8 + [0.61]},
                                     "numpy": {"reached": False, "seconds": None,
                                               "epochs": None, "best_val_acc": 0.58,
                                               "val_acc_history": [0.5] * 16 + [0.58]},
                                     "torch_cuda": {"skipped": "failed (exit 1): boom"},
                                     "fcgpu_default_preset": {
                                         "reached": True, "seconds": 30.0,
                                         "train_seconds": 25.0, "epochs": 12,
                                         "active_seconds": 50.0, "ran_to_end": True,
                                         "best_val_acc": 0.63,
                                         "val_acc_history": [0.5] * 11 + [0.61] * 8 + [0.63]}},
                                 "preset": {"name": "augmented", "epochs": 20, "config": {}}}}
    return build_results([raw], experiments=exps, machine=GPU_MACHINE)


def cpu_results():
    copy_t = op_bytes("copy", (1 << 24,)) / 20e9
    cases = [
        _kcase("copy", (1 << 24,), {"numba": copy_t, "numpy_ref": copy_t * 1.2}),
        _kcase("dropout_fwd", (1 << 24,), {"numba": copy_t * 4, "torch_cpu": copy_t * 3},
               skipped={"numpy_ref": "capped at 2^22"}),
        _kcase("fused_fwd", (490, 500), {"numba": 1e-3, "numpy_ref": 5e-3}),
        _tcase("default", {"numpy": 850.0, "torch_cpu": 1000.0}),   # 0.85x: missed
    ]
    skips = {v: "no GPU backend: CuPy is not installed" for v in
             ("cupy_unfused", "cupy_curand", "fcgpu")}
    skips["torch_cuda"] = "torch.cuda.is_available() is False"
    raw = _raw(cases, variant_skips=skips, machine=CPU_MACHINE)
    return build_results([raw], experiments={
        "dropout_stats": {"skipped": "failed: boom"},
        "dropout_regularizer": {"skipped": "needs the real CIFAR-10 data: set FCGPU_DATA"},
        "time_to_accuracy": {"skipped": "not run: opt in"}}, machine=CPU_MACHINE)


def _write(tmp_path, res, name):
    p = tmp_path / name
    p.write_text(json.dumps(res))
    return str(p)


# ----------------------------------------------------------------- summary logic

def test_summary_keys_from_the_right_rows():
    r = gpu_results()
    s = r["summary"]
    assert r["format"] == RESULTS_FORMAT
    assert r["device"] == "NVIDIA H100 80GB HBM3"
    # the reference is the best copy at the largest size: cudaMemcpy at 3000 GB/s
    assert r["copy_bandwidth"]["gpu"]["variant"] == "cupy_unfused"
    assert s["dropout_fwd_bw_frac"] == pytest.approx(0.9)
    assert s["dropout_bwd_bw_frac"] == pytest.approx(0.8)
    # against what a CuPy user writes (cupy_curand), both shapes reported, the key holds
    # the smaller (2.5 at 65536x4096, 3.0 at 490x500); the *_ref emulation in the details
    # (mutant caught: the summary's baseline back to cupy_unfused gives 3.0 and 4.0)
    det = r["summary_details"]
    assert det["fused_vs_unfused_490x500"] == pytest.approx(3.0)
    assert det["fused_vs_unfused_65536x4096"] == pytest.approx(2.5)
    assert s["fused_vs_unfused"] == pytest.approx(2.5)
    assert det["fused_vs_ref_490x500"] == pytest.approx(4.0)
    assert det["fused_vs_ref_65536x4096"] == pytest.approx(3.0)
    assert "cupy.random" in det["fused_vs_unfused_baseline"]
    # fcgpu on the GPU is the faster of the plain and the graph-captured step
    assert s["train_vs_torch"] == pytest.approx(3.0)
    assert s["train_vs_cpu"] == pytest.approx(15.0)
    assert r["summary_details"]["fcgpu_gpu_variant"] == "fcgpu_graph"
    assert r["summary_details"]["train_vs_torch_fcgpu"] == pytest.approx(2.4)
    assert s["cpu_train_vs_torch"] == pytest.approx(0.8)
    assert r["summary_details"]["train_vs_torch_wide"] == pytest.approx(1.5)
    assert r["summary_notes"] == {}
    frac = {(k["op"], k["variant"]): k["bw_frac"] for k in r["kernels"] if k["n"] == BIG}
    assert frac[("dropout_fwd", "fcgpu")] == pytest.approx(0.9)


def test_nulls_carry_the_reason():
    r = cpu_results()
    s, notes = r["summary"], r["summary_notes"]
    for key in ("dropout_fwd_bw_frac", "dropout_bwd_bw_frac", "fused_vs_unfused",
                "train_vs_torch", "train_vs_cpu"):
        assert s[key] is None
        assert notes[key], key
    assert "CuPy is not installed" in notes["dropout_fwd_bw_frac"]
    assert "CuPy is not installed" in notes["fused_vs_unfused"]
    assert "CuPy is not installed" in notes["train_vs_cpu"]
    assert s["cpu_train_vs_torch"] == pytest.approx(0.85)
    assert "cpu_train_vs_torch" not in notes
    # the CPU path's dropout figure is kept for information
    assert r["summary_details"]["dropout_fwd_bw_frac_cpu_numba"]["frac"] == pytest.approx(0.25)
    assert any(k["variant"] == "numpy_ref" and "2^22" in k["reason"]
               for k in r["kernel_skips"])


def test_the_philox_emulation_alone_is_no_summary_baseline():
    """Mutant caught: the summary's fused ratio taken against cupy_unfused (the *_ref
    code emulating our Philox mask) when the CuPy user's baseline was not measured."""
    raw = _raw([_kcase("fused_fwd", (490, 500), {"fcgpu": 1e-5, "cupy_unfused": 9e-5},
                       skipped={"cupy_curand": "out of device memory"})],
               machine=GPU_MACHINE)
    r = build_results([raw], machine=GPU_MACHINE)
    assert r["summary"]["fused_vs_unfused"] is None
    assert "cupy_curand skipped: out of device memory" in r["summary_notes"]["fused_vs_unfused"]
    assert r["summary_details"]["fused_vs_ref_490x500"] == pytest.approx(9.0)


def test_missing_one_fused_shape_keeps_the_other_with_a_note():
    copy_t = 1e-4
    raw = _raw([_kcase("copy", (BIG,), {"cupy_unfused": copy_t}),
                _kcase("fused_fwd", (490, 500), {"fcgpu": 1e-5, "cupy_curand": 5e-5,
                                                 "cupy_unfused": 9e-5}),
                _kcase("fused_fwd", (65536, 4096), {"cupy_curand": 5e-3},
                       skipped={"fcgpu": "out of device memory"})], machine=GPU_MACHINE)
    r = build_results([raw], machine=GPU_MACHINE)
    assert r["summary"]["fused_vs_unfused"] == pytest.approx(5.0)
    assert "490x500" in r["summary_notes"]["fused_vs_unfused"]
    assert "out of device memory" in r["summary_details"]["fused_vs_unfused_65536x4096_note"]
    assert r["summary"]["dropout_fwd_bw_frac"] is None
    assert "fcgpu" in r["summary_notes"]["dropout_fwd_bw_frac"]


@pytest.mark.parametrize("key,value,status,words", [
    ("cpu_train_vs_torch", 0.93, "met", "3% above"),
    ("cpu_train_vs_torch", 0.9, "met", "0% above"),
    ("cpu_train_vs_torch", 0.81, "missed", "missed by 10%"),
    ("cpu_train_vs_torch", 0.8999, "missed", "missed by 0%"),
    ("dropout_fwd_bw_frac", 0.68, "missed", "missed by 20%"),
    ("fused_vs_unfused", 5.0, "met", "100% above"),
    ("train_vs_torch", 1.5, "missed", "missed by 25%"),
    ("train_vs_cpu", 12.0, "info", "no target"),
    ("train_vs_torch", None, "not measured", "not measured"),
])
def test_target_status(key, value, status, words):
    st, text = target_status(key, value)
    assert st == status
    assert words in text


# ----------------------------------------------------------------- the page

def test_report_has_sections_tables_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    paths = [_write(tmp_path, gpu_results(), "gpu.json"),
             _write(tmp_path, cpu_results(), "cpu.json")]
    out = tmp_path / "report"
    md_path = render(load(paths), str(out))
    md = open(md_path, encoding="utf-8").read()
    order = ["## Summary", "### Targets", "## Machine", "## Kernels", "## Training",
             "## Notebook experiments", "## Plots", "## How this was measured"]
    pos = [md.index(h) for h in order]
    assert pos == sorted(pos), "sections out of order"
    # both machines are named, with GPU, driver and commit
    assert "H100 80GB HBM3" in md and "AMD EPYC" in md
    assert "580.1" in md and "`0123456789ab`" in md
    assert "uncommitted changes" in md
    # the targets: met on the GPU, missed on the CPU with the margin and the numbers
    targets = md[md.index("### Targets"):md.index("## Machine")]
    assert "✅ met" in targets and "❌ missed by 6%" in targets
    assert "numpy 850 samples/s" in targets
    assert "not measured [" in targets and "CuPy is not installed" in targets
    # tables
    assert "| Elements |" in md and "2^26" in md
    assert "0.90" in md  # dropout fraction in a cell
    assert "Speedups of the fused forward" in md and "4.00×" in md
    # the summary names its baseline for the fused pass; the *_ref ratio is in the details
    summary = md[md.index("## Summary"):md.index("## Machine")]
    assert "CuPy as a user writes it" in summary and "cupy.random" in summary
    assert "2.50×" in summary and "4.00×" not in summary
    assert "emulating fcgpu" in md[md.index("## Kernels"):]
    assert "| Net | Variant |" in md
    assert "Mean of train output" in md and "bit-identical" in md
    assert "Train − val gap" in md
    assert "needs the real CIFAR-10 data" in md
    assert "Not run: opt in." in md and "Not run: not run" not in md
    assert "`fcgpu_graph` did not run at all" in md
    assert "one step takes 30 s" in md
    # plots written, valid PNGs, and linked from the page
    for name in ("kernels_dropout_gbps.png", "kernels_dropout_bw_frac.png",
                 "kernels_batchnorm_fused.png", "train_samples_per_s.png",
                 "dropout_regularizer.png", "time_to_accuracy.png"):
        p = out / name
        assert p.exists(), name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "(%s)" % name in md
    # time to accuracy: reached, not reached, failed; the CPU machine did not run it
    assert "| fcgpu | 12.50 s | 10.00 s | 9 | 1.5 (1.0–2.0) |" in md
    assert "not reached" in md and "best val 0.580 in 17 epochs" in md
    assert ("| fcgpu_default_preset | 30.00 s | 25.00 s | 12 | — | preset `augmented`, run to "
            "the end of its 20 epochs in 50.00 s: best val 0.630 |") in md
    assert "default preset (`augmented`, 20 epochs)" in md
    assert "failed (exit 1): boom" in md
    assert (out / "time_to_accuracy.png").exists()


def test_report_with_nothing_measured(tmp_path):
    pytest.importorskip("matplotlib")
    res = build_results([], experiments={}, machine=CPU_MACHINE)
    for key in res["summary"]:
        assert res["summary"][key] is None
        assert "suite did not run" in res["summary_notes"][key]
    md = open(render(load([_write(tmp_path, res, "r.json")]), str(tmp_path / "o")),
              encoding="utf-8").read()
    assert "No kernel measurements" in md
    assert "No training measurements" in md
    assert "No data to plot." in md
    assert not list((tmp_path / "o").glob("*.png"))


def test_load_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="not an fcgpu results file"):
        load([str(p)])


def test_cli_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from fcgpu.cli import main
    path = _write(tmp_path, cpu_results(), "cpu.json")
    assert main(["report", path, "--out", str(tmp_path / "r")]) == 0
    assert os.path.exists(tmp_path / "r" / "report.md")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["report", str(bad), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "not JSON" in err and "Traceback" not in err


def test_op_bytes_counts_each_input_and_output_once():
    assert op_bytes("dropout_fwd", (BIG,)) == 2 * 4 * BIG
    assert op_bytes("dropout_bwd", (BIG,)) == 2 * 4 * BIG
    n, d = 490, 500
    assert op_bytes("fused_fwd", (n, d)) == 4 * (2 * n * d + 8 * d)
    assert op_bytes("fused_bwd", (n, d)) == 4 * (4 * n * d + 5 * d)
    assert op_bytes("bn_bwd", (n, d)) == 4 * (3 * n * d + 5 * d)


def fake_profile(step=0.032, floor=0.0256, layouts=True):
    """A step profile as fcgpu.bench.profile writes it, with made-up times."""
    gemms = [{"label": "h0 @ W1", "op": "forward", "layer": 1, "mkn": [490, 3072, 500],
              "flops": 1.505e9, "min_s": 0.0085, "median_s": 0.0087, "gflops": 177.1,
              "in_step_min_s": 0.0088, "in_step_median_s": 0.0090},
             {"label": "dW1", "op": "dW", "layer": 1, "mkn": [3072, 490, 500],
              "flops": 1.505e9, "min_s": 0.0091, "median_s": 0.0093, "gflops": 165.4}]
    phases = [{"label": "GEMM forward, layer 1", "kind": "gemm", "calls": 1,
               "shapes": [[490, 3072], [3072, 500]], "mkn": [490, 3072, 500],
               "layer": 1, "min_s": 0.0088, "median_s": 0.0090},
              {"label": "fused bias_bn_relu_dropout_forward, layer 1", "kind": "fused",
               "calls": 1, "shapes": [[490, 500], [500]], "layer": 1, "min_s": 0.00031,
               "median_s": 0.00033},
              {"label": "Adam", "kind": "optim", "calls": 14, "shapes": [],
               "min_s": 0.0029, "median_s": 0.0031}]
    st = {"min": step, "median": step * 1.02, "q1": step, "q3": step * 1.05, "max": step * 2,
          "n": 40}
    fl = {"min": floor, "median": floor * 1.01, "q1": floor, "q3": floor * 1.02,
          "max": floor * 2, "n": 40}
    p = {"format": "fcgpu-profile-1", "net": "default", "hidden": [500, 500, 500],
         "batch": 490, "dtype": "float32", "input_dim": 3072, "classes": 10,
         "variant": "numpy", "rounds": 40, "threads": {"numba": 2, "numba_layer": "omp",
                                                        "blas": [2]},
         "loadavg": [1.8, 1.9], "step_s": st, "floor_s": fl,
         "step_instrumented_s": dict(st, median=step * 1.03), "other_s": {"min": 0.0004,
                                                                          "median": 0.0005},
         "ratio": {"min": step / floor, "median": st["median"] / fl["median"],
                   "paired_median": st["median"] / fl["median"], "sum_of_minima": 1.19},
         "step_sum_of_minima_s": 0.0305, "floor_sum_of_minima_s": 0.0256,
         "samples_per_s": {"median": 490 / st["median"], "best": 490 / step},
         "gemm_flops": 4.5e9, "gemms": gemms, "phases": phases,
         "kinds": {"gemm": 0.0090, "fused": 0.00033, "optim": 0.0031, "other": 0.0005}}
    if layouts:
        p["layouts"] = {"W": {"floor_s": fl, "gemms": [dict(label=g["label"], op=g["op"],
                                                              layer=g["layer"],
                                                              min_s=g["min_s"],
                                                              median_s=g["median_s"])
                                                         for g in gemms]},
                        "W.T": {"floor_s": dict(fl, min=floor * 1.1),
                                "gemms": [dict(label=g["label"], op=g["op"], layer=g["layer"],
                                               min_s=g["min_s"] * 1.2,
                                               median_s=g["median_s"] * 1.2)
                                          for g in gemms]}}
    return p


def test_report_renders_the_step_profile(tmp_path):
    pytest.importorskip("matplotlib")
    res = build_results([], machine=CPU_MACHINE, profile=fake_profile())
    md = open(render(load([_write(tmp_path, res, "p.json")]), str(tmp_path / "o")),
              encoding="utf-8").read()
    order = ["## Summary", "## Training", "## CPU step profile", "## Plots"]
    pos = [md.index(h) for h in order]
    assert pos == sorted(pos)
    sec = md[md.index("## CPU step profile"):md.index("## Plots")]
    # step, floor and their ratios (min 32/25.6 = 1.25, medians 1.02/1.01 of that)
    assert "| Training step (gather, forward, backward, Adam) | 32.00 | 32.64 |" in sec
    assert "| GEMM floor: the step's 2 matrix products alone | 25.60 | 25.86 |" in sec
    assert "**1.25×** | **1.26×**" in sec and "per-round ratios 1.26×" in sec
    assert "30.50 ms / 25.60 ms | 1.19×" in sec
    assert "| Samples/s (batch / step time) | 15,312 | 15,012 |" in sec
    # phases with their shapes, calls and shares of the instrumented step (32.96 ms)
    assert "| GEMM forward, layer 1 (490×3072×500) | gemm | 1 | 8.80 | 9.00 | 27.3% |" in sec
    assert "| Adam | optim | 14 | 2.90 | 3.10 | 9.4% |" in sec
    assert "other: Python, allocation" in sec
    # the products alone and in the step; one not matched in the step shows a dash
    assert "| h0 @ W1 | forward | 490×3072×500 | 8.50 | 8.70 | 177 | 8.80 | 9.00 |" in sec
    assert "| dW1 | dW | 3072×490×500 | 9.10 | 9.30 | 165 | — | — |" in sec
    # the layouts table
    assert "| dW1 | 9.10 | 10.92 | 1.20× |" in sec and "| **all** | 25.60 | 28.16 | 1.10× |" in sec
    assert "load average 1.8–1.9" in sec
    # and the summary's line: 1.25 meets a goal of <= 1.25
    summary = md[md.index("## Summary"):md.index("### Targets")]
    assert "CPU step (`--profile`): 32.00 ms, **1.25×** the 25.60 ms" in summary
    assert "goal ≤ 1.25×: **met**" in summary
    assert "Goal step / floor ≤ 1.25×: **met**." in sec


def test_profile_section_absent_without_a_profile_and_says_missed(tmp_path):
    pytest.importorskip("matplotlib")
    md = open(render(load([_write(tmp_path, cpu_results(), "c.json")]), str(tmp_path / "o")),
              encoding="utf-8").read()
    assert "## CPU step profile" not in md and "--profile" not in md
    res = build_results([], machine=CPU_MACHINE, profile=fake_profile(step=0.040,
                                                                      layouts=False))
    md = open(render(load([_write(tmp_path, res, "p.json")]), str(tmp_path / "o2")),
              encoding="utf-8").read()
    assert "**1.56×** the 25.60 ms" in md and "goal ≤ 1.25×: **missed by 25%**" in md
    assert "Storing W" not in md


@pytest.mark.parametrize("ratios,status", [((1.2, 1.22, 1.21), "met"),
                                           ((1.3, 1.31, 1.33), "missed"),
                                           ((0.9, 1.1, 1.0), "inconclusive"),
                                           ((1.1, 1.5, 1.3), "inconclusive")])
def test_profile_verdict_needs_ratios_that_agree(ratios, status):
    from fcgpu.bench.report.profile import verdict
    p = fake_profile()
    p["ratio"].update(min=ratios[0], median=ratios[1], paired_median=ratios[2])
    got, text = verdict(p)
    assert got == status and text.startswith(status)


def test_profile_text_has_the_same_tables():
    from fcgpu.bench.report.profile import profile_text
    text = profile_text(fake_profile())
    assert "**" not in text and "|" not in text
    lines = text.splitlines()
    assert lines[0].startswith("default net (3072-500-500-500-10, batch 490, float32)")
    for title in ("Step against its GEMM floor", "Phases of one step", "By kind",
                  "The floor's products", "Storing W"):
        assert any(ln.startswith(title) for ln in lines), title
    row = next(ln for ln in lines if ln.startswith("Step / floor"))
    assert row.split()[-2:] == ["1.25×", "1.26×"]


def test_a_run_cut_short_says_so_in_the_summary(tmp_path):
    """Mutant caught: the summary silent about a deadline having cut the run (its missing
    figures would read as not measurable here)."""
    pytest.importorskip("matplotlib")
    res = gpu_results()
    res["settings"].update(complete=False, cut=["train: stopped at the run's --deadline"])
    md = open(render(load([_write(tmp_path, res, "r.json")]), str(tmp_path / "o")),
              encoding="utf-8").read()
    summary = md[md.index("## Summary"):md.index("### Targets")]
    assert "cut short for time" in summary and "train: stopped at the run's --deadline" in summary
    res["settings"].update(complete=True, cut=[])
    md = open(render(load([_write(tmp_path, res, "r.json")]), str(tmp_path / "o2")),
              encoding="utf-8").read()
    assert "cut short" not in md
