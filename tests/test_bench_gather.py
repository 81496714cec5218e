"""The benchmark's minibatch-gather cases (fcgpu/bench/gather.py): every variant computes
the batch fcgpu.augment.augment_gather makes from the same inputs, bit for bit, call
after call through its pool; the bytes counted; where the cases run in the suite's
order; and the report's rendering of their rows (fake results, no timing here)."""
from __future__ import annotations

import numpy as np
import pytest

from fcgpu import augment
from fcgpu.bench import gather, kernels, measure, plugin
from fcgpu.bench.report import load, render
from fcgpu.bench.results import build_results
from gpu_util import CUPY_OK, CUPY_WHY, bits_equal, cupy
from test_report import CPU_MACHINE, GPU_MACHINE, _kcase, _raw, _write

D = 3 * 32 * 32
B = 37      # odd, and not a divisor of anything in the pool
K = 3       # batches in the pool
MODE = {"augment": "crop", "gather": "none"}


@pytest.fixture
def fresh_pool(rng, monkeypatch):
    """The cases build their pool from a fresh seed (the suite's is fixed)."""
    seed = int(rng.integers(2 ** 32))
    make = gather.host_inputs
    monkeypatch.setattr(gather, "host_inputs", lambda b, k, seed_=0: make(b, k, seed))


@pytest.fixture
def compiled_cpu():
    """The numba cases switch the Numba path on; put the switch back after."""
    from fcgpu import fused
    was = fused.use_compiled_cpu()
    yield
    fused.use_compiled_cpu(was)


def expected(case, op, b, convert=None):
    """What batch ``b`` of ``case`` must be: ``augment_gather`` on its own inputs, or
    with ``convert`` (torch tensors to NumPy) the spec's reference on host copies."""
    a = case.inputs
    run = augment.augment_gather
    if convert is not None:
        a = {k: v if k == "batch" else convert(v) for k, v in a.items()}
        run = augment.augment_gather_reference
    return run(a["X"], a["y"], a["perm"], b, a["batch"], (3, 32, 32), MODE[op], 4,
               gather.SEED, gather.EPOCH, a["mean"])


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def check_case(case, op, k, to_host=_host, convert=None):
    """k calls in a row make batches 0..k-1, then the pool starts over."""
    assert case.k == k and case.inputs["batch"] == B
    outs = [case.call() for _ in range(k + 1)]
    for b, (Xb, yb) in enumerate(outs[:k]):
        want_X, want_y = expected(case, op, b, convert)
        assert bits_equal(to_host(Xb), _host(want_X)), (op, b)
        assert np.array_equal(to_host(yb), _host(want_y)), (op, b)
    assert bits_equal(to_host(outs[k][0]), to_host(outs[0][0]))
    assert not bits_equal(to_host(outs[1][0]), to_host(outs[0][0]))   # other images


# ----------------------------------------------------------------- the CPU variants

@pytest.mark.parametrize("op", gather.OPS)
@pytest.mark.parametrize("variant", ["numpy_ref", "numba"])
def test_cpu_cases_make_the_batches_of_augment_gather(variant, op, fresh_pool, compiled_cpu):
    case = kernels.build_xp_case(variant, op, (B,), np, K)
    assert case.label == gather.LABELS[op][variant] == kernels.label(variant, op)
    check_case(case, op, K)
    a = case.inputs
    assert a["X"].dtype == np.uint8 and a["X"].shape == (K * B, D)
    assert sorted(a["perm"].tolist()) == list(range(K * B))
    for b in range(K):
        Xb, yb = case.fn(b)
        idx = a["perm"][b * B:(b + 1) * B]
        if op == "augment":  # the spec itself, in plain array code
            ref = augment.augment_gather_reference(a["X"], a["y"], a["perm"], b, B, (3, 32, 32),
                                                   "crop", 4, gather.SEED, gather.EPOCH,
                                                   a["mean"])
            assert bits_equal(Xb, ref[0])
            # augmented: not the plain batch (a flip or a shift moves most pixels)
            plain = a["X"][idx].astype(np.float32) - a["mean"]
            assert np.mean(Xb != plain) > 0.3
        else:                # float64, rounded once: the same bits as one float32 subtraction
            ref = (a["X"][idx].astype(np.float64) - a["mean"].astype(np.float64))
            assert bits_equal(Xb, ref.astype(np.float32))
        assert np.array_equal(yb, a["y"][idx])


def test_torch_cpu_runs_the_plain_gather(fresh_pool):
    torch = pytest.importorskip("torch")
    case = kernels.build_torch_case("torch_cpu", "gather", (B,), torch, "cpu", K)
    check_case(case, "gather", K, to_host=lambda t: t.numpy(), convert=lambda t: t.numpy())
    with pytest.raises(ValueError, match="plain gather only"):
        kernels.build_torch_case("torch_cpu", "augment", (B,), torch, "cpu", K)


def test_numpy_reference_is_capped():
    with pytest.raises(kernels.SkipCase, match="capped at 2\\^22 values"):
        kernels.build_xp_case("numpy_ref", "augment", (gather.BIG_BATCH,), np, 1)


def test_which_variants_apply():
    for v in ("numpy_ref", "numba", "cupy_unfused", "fcgpu"):
        assert kernels.applicable(v, "augment") and kernels.applicable(v, "gather")
    for v in ("torch_cpu", "torch_cuda"):
        assert not kernels.applicable(v, "augment") and kernels.applicable(v, "gather")
    assert not kernels.applicable("cupy_curand", "augment")
    assert not kernels.applicable("cupy_curand", "gather")


def test_the_worker_sets_up_and_runs_a_case(compiled_cpu):
    from fcgpu.bench.worker import _Server
    w = _Server("numba")
    assert w.hello({})["ok"]
    w.cache_bytes = 8 << 20     # a small cache: a small pool
    resp = w.kernel_setup({"op": "augment", "shape": [B]})
    assert resp["ok"] and resp["label"] == gather.LABELS["augment"]["numba"]
    # 4 x 8 MiB over 37 rows of 3088 bytes
    assert resp["rotate"] == w.case.k == -(-(32 << 20) // (B * (D + 16)))
    assert w.case.inputs["X"].shape == (resp["rotate"] * B, D)
    run = w.kernel_run({"calls": 2})
    assert run["ok"] and len(run["host"]) == 2 and run["device"] is None


# ----------------------------------------------------------------- bytes and order

def test_op_bytes_count_each_input_and_output_once():
    for op in gather.OPS:
        for b in (490, 65536):
            # uint8 rows in, float32 out, the mean in, row numbers in, labels in and out
            assert kernels.op_bytes(op, (b,)) == b * D + 4 * b * D + 4 * D + 8 * b * 3
            assert kernels.elements(op, (b,)) == b * D
            assert kernels.input_bytes(op, (b,)) == b * (D + 16)
    assert kernels.op_bytes("augment", (490,)) == 7_550_448
    with pytest.raises(ValueError, match="unknown op"):
        gather.op_bytes("gather_all", (490,))


def test_the_pool_holds_several_batches_and_spans_the_cache():
    per = 490 * (D + 16)
    assert kernels.rotation_count("augment", (490,), 60 << 20) == -(-(240 << 20) // per)
    # a batch larger than the cache still rotates over POOL_MIN batches
    assert kernels.rotation_count("gather", (65536,), 60 << 20) == gather.POOL_MIN
    assert kernels.rotation_count("copy", (1 << 26,), 60 << 20) == 1


def _opts(gpu, quick=True, full=False):
    o = plugin.Options.__new__(plugin.Options)
    o.gpu, o.full, o.quick = gpu, full, quick
    return o


@pytest.mark.parametrize("gpu", [True, False])
def test_gathers_run_right_after_the_summary_cases(gpu):
    """A suite with a deadline measures its first cases: on a GPU the summary's cases
    (the copy reference and dropout at 2^26, the fused forward), then the gathers at
    every batch size; without one the copy reference, then the gathers."""
    from fcgpu.bench import schedule
    o = _opts(gpu)
    cases = schedule.kernel_cases(o)
    top = o.flat_sizes()[-1]
    batches = [490, 65536] if gpu else [490]
    assert o.gather_batches() == batches
    head = [(op, tuple(s)) for op, s, _, _ in schedule.HEADLINE_KERNELS] if gpu else \
        [("copy", (top,))]
    assert cases[:len(head)] == head and head[0] == ("copy", (top,))
    gathers = cases[len(head):len(head) + 2 * len(batches)]
    assert gathers == [(op, (b,)) for b in batches for op in gather.OPS]
    assert len(set(cases)) == len(cases)      # nothing is measured twice
    rest = [(op, (n,)) for n in o.flat_sizes() for op in kernels.FLAT_OPS] + \
        [(op, s) for s in o.row_shapes() for op in kernels.ROW_OPS]
    assert sorted(cases) == sorted(rest + gathers)


def test_quick_cpu_variants_skip_the_big_batch_by_its_values():
    assert kernels.elements("augment", (gather.BIG_BATCH,)) > measure.QUICK_CPU_MAX
    assert kernels.elements("augment", (gather.BATCH,)) <= measure.QUICK_CPU_MAX


# ----------------------------------------------------------------- the GPU variants

gpu = [pytest.mark.gpu,
       pytest.mark.skipif(not CUPY_OK, reason="needs CuPy and a CUDA device: %s" % (CUPY_WHY,))]


@pytest.mark.parametrize("op", gather.OPS)
@pytest.mark.parametrize("variant", [pytest.param(v, marks=gpu)
                                     for v in ("cupy_unfused", "fcgpu")])
def test_gpu_cases_make_the_batches_of_augment_gather(variant, op, fresh_pool):
    cp = cupy()
    case = kernels.build_xp_case(variant, op, (B,), cp, K)
    assert isinstance(case.inputs["X"], cp.ndarray)
    check_case(case, op, K)          # against the dispatch on the same CuPy arrays
    a = {k: _host(v) if k != "batch" else v for k, v in case.inputs.items()}
    for b in range(K):               # and against the spec on host copies
        Xb, yb = case.fn(b)
        ref = augment.augment_gather_reference(a["X"], a["y"], a["perm"], b, B, (3, 32, 32),
                                               MODE[op], 4, gather.SEED, gather.EPOCH,
                                               a["mean"])
        assert bits_equal(_host(Xb), ref[0]) and np.array_equal(_host(yb), ref[1])


@pytest.mark.gpu
@pytest.mark.skipif(not CUPY_OK, reason="needs CuPy and a CUDA device: %s" % (CUPY_WHY,))
def test_gpu_big_batch_matches_the_reference():
    """The measured big batch (more rows than a grid's y dimension holds)."""
    cp = cupy()
    case = kernels.build_xp_case("fcgpu", "augment", (gather.BIG_BATCH,), cp, 1)
    a = case.inputs
    Xb, yb = case.call()
    ref = augment.augment_gather_reference(a["X"], a["y"], a["perm"], 0, gather.BIG_BATCH,
                                           (3, 32, 32), "crop", 4, gather.SEED, gather.EPOCH,
                                           a["mean"])
    assert bool(cp.array_equal(Xb.view(cp.uint32), ref[0].view(cp.uint32)))
    assert bool(cp.array_equal(yb, ref[1]))


@pytest.mark.gpu
def test_torch_cuda_runs_the_plain_gather(fresh_pool):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch.cuda.is_available() is False")
    case = kernels.build_torch_case("torch_cuda", "gather", (B,), torch, "cuda", K)
    host = lambda t: t.cpu().numpy()  # noqa: E731
    check_case(case, "gather", K, to_host=host, convert=host)


# ----------------------------------------------------------------- the report

def _gather_cases(device, times_aug, times_plain, batches=(490,)):
    """Fake results of both gathers, labelled as the suite labels them."""
    cases = [c for b in batches for c in (_kcase("augment", (b,), times_aug, device),
                                          _kcase("gather", (b,), times_plain, device))]
    for c in cases:
        for v, m in c["measurements"].items():
            m["label"] = gather.LABELS[c["op"]][v]
    return cases


def test_report_renders_the_gathers(tmp_path):
    pytest.importorskip("matplotlib")
    copy_t = kernels.op_bytes("copy", (1 << 26,)) / 4000e9      # 4000 GB/s
    aug = kernels.op_bytes("augment", (65536,))
    gpu_cases = _gather_cases("gpu", {"fcgpu": 10e-6, "cupy_unfused": 80e-6},
                              {"fcgpu": 8e-6, "cupy_unfused": 20e-6, "torch_cuda": 25e-6}) + \
        _gather_cases("gpu", {"fcgpu": aug / 3000e9}, {"fcgpu": aug / 3200e9,
                                                       "torch_cuda": aug / 1000e9},
                      batches=(65536,))
    # gather rows first: the batchnorm table's headers must not take their labels
    gpu_raw = _raw(gpu_cases + [_kcase("copy", (1 << 26,), {"cupy_unfused": copy_t}),
                                _kcase("fused_fwd", (490, 500), {"fcgpu": 1e-5,
                                                                 "cupy_unfused": 4e-5})],
                   machine=GPU_MACHINE)
    cpu_raw = _raw(_gather_cases("cpu", {"numba": 1e-3, "numpy_ref": 8e-3},
                                 {"numba": 0.8e-3, "numpy_ref": 0.5e-3, "torch_cpu": 4e-3}),
                   machine=CPU_MACHINE)   # no copy measured: no fraction
    paths = [_write(tmp_path, build_results([gpu_raw], machine=GPU_MACHINE), "g.json"),
             _write(tmp_path, build_results([cpu_raw], machine=CPU_MACHINE), "c.json")]
    out = tmp_path / "r"
    md = open(render(load(paths), str(out)), encoding="utf-8").read()
    sec = md[md.index("### Minibatch gather"):md.index("## Training")]
    assert md.index("## Kernels") < md.index("### Minibatch gather")
    # GB/s (fraction of copy): 3000 GB/s against 4000 is 0.75
    assert "| 65536 | augmenting (crop, pad 4) | — | 3,000 (0.75) | n/a |" in sec
    assert "| 65536 | plain | — | 3,200 (0.80) | 1,000 (0.25) |" in sec
    b490 = kernels.op_bytes("augment", (490,)) / 1e9
    assert "| 490 | augmenting (crop, pad 4) | %s (%.2f) | %s (%.2f) | n/a |" % (
        _num(b490 / 80e-6), b490 / 80e-6 / 4000, _num(b490 / 10e-6), b490 / 10e-6 / 4000) in sec
    assert "| 490 | plain | 15.1 (—) | 9.44 (—) | 1.89 (—) |" in sec    # CPU, no copy
    assert "| 490 | augmenting (crop, pad 4) | 8.00 ms | 1.00 ms | n/a |" in sec
    # the cost: augmenting time over plain time (fcgpu 10/8, vs CuPy 10/20, vs torch 10/25)
    assert "| 490 | 1.25× | 0.50× | 0.40× |" in sec
    assert "| 65536 | 1.07× | — | 0.33× |" in sec
    assert "| 490 | 1.25× | 2.00× | 0.25× |" in sec    # Numba 1/0.8, 1/0.5, 1/4
    assert "- `torch_cuda`: augmenting (crop, pad 4): not applicable; plain: PyTorch CUDA: " \
           "X[idx].float() - mean." in sec
    # the summary: per batch, kernel time, GB/s, fraction and cost
    summary = md[md.index("## Summary"):md.index("### Targets")]
    assert ("Augmenting minibatch gather (crop, pad 4), batch 65536: GPU kernel %s per call "
            "(3,000 GB/s, 0.75 of copy), 1.07× its plain pass." % _time(aug / 3000e9)) in summary
    assert ("batch 490: Numba pass 1.00 ms per call (%s GB/s), 1.25× its plain pass."
            % _num(b490 / 1e-3)) in summary
    # the batchnorm table kept its variants' own labels; the plot is there
    bn = md[md.index("### Batchnorm"):md.index("### Minibatch gather")]
    assert "| Op | N x D | label of cupy_unfused | label of fcgpu |" in bn
    assert (out / "kernels_gather.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(kernels_gather.png)" in md


def test_report_without_gathers_has_no_gather_section(tmp_path):
    pytest.importorskip("matplotlib")
    raw = _raw([_kcase("copy", (1 << 26,), {"cupy_unfused": 1e-4})], machine=GPU_MACHINE)
    md = open(render(load([_write(tmp_path, build_results([raw], machine=GPU_MACHINE),
                                  "g.json")]), str(tmp_path / "r")), encoding="utf-8").read()
    assert "Minibatch gather" not in md and "kernels_gather.png" not in md
    assert not (tmp_path / "r" / "kernels_gather.png").exists()


def _num(x):
    from fcgpu.bench.report.format import fmt_num
    return fmt_num(x)


def _time(s):
    from fcgpu.bench.report.format import fmt_time
    return fmt_time(s)
