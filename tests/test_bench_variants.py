"""The benchmark variants' one table (fcgpu.bench.variants): every name the summary and
the headline compare is a row of it, and a row added to it is started, built, forced to
its implementation, labelled, ordered and reported with no other file touched. Nothing
is timed: the measurements here are fake or unchecked."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fcgpu.bench import gather, kernels, models, plugin, results, schedule, variants
from fcgpu.bench.report import gather as report_gather
from fcgpu.bench.variants import Variant

TINY = {"hidden": [12, 8], "batch": 20}


def test_the_names_others_compare_are_rows_of_the_right_suite():
    """Mutant caught: a row renamed (or a typo in the headline's list) that the summary
    or the headline would then look for in vain."""
    for _, _, vs, _ in schedule.HEADLINE_KERNELS:
        assert all(variants.get(v).kernels for v in vs), vs
    for _, vs, _ in schedule.HEADLINE_TRAIN:
        assert all(variants.get(v).train for v in vs), vs
    for v in (results.FUSED_BASELINE, results.FUSED_REF, "numba", "fcgpu"):
        assert variants.get(v).kernels, v
    for v in ("fcgpu", "fcgpu_graph", "numpy", "torch_cpu", "torch_cuda",
              "torch_cuda_compile"):
        assert variants.get(v).train, v
    for a, p, _ in report_gather.COSTS:
        assert variants.applicable(a, "augment") and variants.applicable(p, "gather"), (a, p)
    assert (variants.baseline("cpu"), variants.baseline("gpu")) == ("torch_cpu", "torch_cuda")
    for row in variants.TABLE:
        assert set(row.ops or ()) <= set(kernels.OPS), row.name
        assert set(gather.LABELS["augment"]) | set(gather.LABELS["gather"]) <= set(
            variants.VARIANTS)
    assert variants.get("cupy_curand").impl == "user"
    assert not variants.applicable("fcgpu", "copy") and variants.applicable("fcgpu", "gather")
    with pytest.raises(ValueError, match="unknown variant 'nope'; known: numpy_ref"):
        variants.get("nope")
    with pytest.raises(ValueError, match="variant 'bad'"):
        Variant("bad", "jax", "cpu", kernels="x")


@pytest.fixture
def twins(monkeypatch):
    """Two rows added to the table, as a new variant would be: a kernel one on the
    Numba passes, a training one on the xp references."""
    rows = (Variant("numba_twin", "numpy", "cpu", kernels="Numba twin", color="#123456",
                    impl="numba", ops=("dropout_fwd", "gather")),
            Variant("numpy_twin", "numpy", "cpu", train="NumPy twin, reference passes",
                    short="NumPy twin", color="#654321", impl="reference"))
    table = []
    for row in variants.TABLE:   # each right after its sibling, as one would add it
        table += [row] + [r for r in rows if r.name == row.name + "_twin"
                          or r.name == "numba_twin" and row.name == "numba"]
    monkeypatch.setattr(variants, "TABLE", tuple(table))
    for r in rows:
        monkeypatch.setitem(variants.VARIANTS, r.name, r)
    return rows


def _opts(part="all"):
    o = plugin.Options.__new__(plugin.Options)
    o.gpu, o.full, o.quick, o.part = False, False, True, part
    o.budget, o.deadline, o.partial, o.only = None, None, None, None
    return o


def test_a_new_row_is_started_and_measured_where_it_applies(twins):
    """Mutants caught: the suites' variant lists written out by hand again (the new row
    is never started); applicability kept in a list of its own."""
    assert "numba_twin" in schedule.suite_variants(_opts(), "kernels")
    assert "numpy_twin" in schedule.suite_variants(_opts(), "train")
    assert "numba_twin" not in schedule.suite_variants(_opts(), "train")
    assert schedule.case_variant(_opts(), "dropout_fwd", (1 << 16,), "numba_twin")
    for op in ("copy", "bn_fwd", "augment"):   # not in its ops: not applicable
        assert not schedule.case_variant(_opts(), op, (1 << 16,), "numba_twin"), op
    assert kernels.label("numba_twin", "gather") == "Numba twin"


def test_a_new_row_runs_in_its_worker(twins):
    """The worker reads the row: family (its libraries), device, label."""
    from fcgpu.bench.worker import _Server
    s = _Server("numba_twin")
    assert (s.family, s.kind) == ("numpy", "cpu")
    hello = s.hello({})
    assert hello["ok"] and hello["device_kind"] == "cpu" and "numba" in hello["threads"]
    setup = s.kernel_setup({"op": "dropout_fwd", "shape": [4096]})
    assert setup == {"ok": True, "rotate": setup["rotate"], "label": "Numba twin"}
    assert len(s.kernel_run({"calls": 2})["host"]) == 2


def test_a_new_row_trains_under_its_forced_implementation(twins, monkeypatch):
    """The training step runs inside fcgpu.fused.force_impl of the row's impl, and
    fcgpu.fused.impl_for is never replaced. Mutants caught: the impl ignored (the Numba
    passes ran instead of the references); impl_for patched as before."""
    from fcgpu import fused, fused_ref
    calls = []
    real = fused_ref.reference.bn_relu_dropout_forward

    def spy(*a, **k):
        calls.append(fused.forced_impl())
        return real(*a, **k)
    monkeypatch.setattr(fused_ref.reference, "bn_relu_dropout_forward", spy)
    impl_for = fused.impl_for
    case = models.build_fcgpu("numpy_twin", TINY)
    case.steps(2)
    assert case.label == "NumPy twin, reference passes"
    assert calls == ["reference"] * 2 * len(TINY["hidden"])
    assert fused.impl_for is impl_for and fused.forced_impl() is None
    calls.clear()
    models.build_fcgpu("numpy", TINY).steps(1)
    assert calls == []          # the Numba row: no reference pass


def test_a_new_row_is_labelled_and_ordered_in_the_report(twins, tmp_path):
    """Mutant caught: the report's order written out by hand again (the new row's
    column and bar are dropped)."""
    pytest.importorskip("matplotlib")
    from fcgpu.bench.report import load, render
    from test_report import CPU_MACHINE, _kcase, _raw, _tcase
    cases = [_kcase("dropout_fwd", (1 << 16,), {"torch_cpu": 3e-4, "numba_twin": 2e-4,
                                                 "numba": 1e-4}, device="cpu"),
             _tcase("default", {"numpy": 900.0, "numpy_twin": 300.0, "torch_cpu": 1000.0})]
    for c in cases:
        for v, m in c["measurements"].items():
            m.update(device="cpu", label=variants.label(v, c["suite"]))
    res = results.build_results([_raw(cases)], machine=CPU_MACHINE)
    p = tmp_path / "r.json"
    import json
    p.write_text(json.dumps(res))
    md = open(render(load([str(p)]), str(tmp_path / "out")), encoding="utf-8").read()
    head = next(ln for ln in md.splitlines() if ln.startswith("| Elements"))
    assert head.index("fcgpu CPU path (Numba)") < head.index("Numba twin") < head.index(
        "PyTorch CPU")                 # the table's order: right after its sibling
    train = [ln for ln in md.splitlines() if ln.startswith("| default")]
    assert [ln.split("|")[2].strip() for ln in train] == [
        "fcgpu NumPy path (Numba)", "NumPy twin, reference passes", "PyTorch CPU eager"]
    assert "0.30×" in train[1]         # against the CPU's baseline, PyTorch eager
    assert (tmp_path / "out" / "train_samples_per_s.png").exists()


def test_rows_are_frozen_and_their_suites_follow_their_labels():
    row = variants.get("numpy_ref")
    assert row.suites == ("kernels", "train")
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.color = "#000000"
    assert np.all([variants.color(v) for v in variants.names()])
