"""The kernel benchmark's honesty, on the CPU (no timing asserted): the fused pass's
summary baseline is what a CuPy user writes (a fresh, seeded cupy.random mask each call
and separate ops, never our Philox), a GPU chunk of calls sits between one pair of CUDA
events, a GPU chunk has at least MIN_GPU_CALLS calls, and the headline's cases and
variants run first (or alone, or not again)."""
from __future__ import annotations

import types

import numpy as np
import pytest

from fcgpu.bench import kernels, measure, plugin, schedule, variants
from fcgpu.bench.cases import Case
from fcgpu.bench.worker import _Server


class FakeRandom:
    """``cupy.random`` on NumPy: ``seed`` must come before ``random`` (nothing unseeded)."""

    def __init__(self):
        self.gen = None
        self.draws = 0

    def seed(self, seed):
        self.gen = np.random.default_rng(seed)

    def random(self, shape, dtype):
        assert self.gen is not None, "cupy.random drawn before cupy.random.seed"
        self.draws += 1
        return self.gen.random(shape, dtype=dtype)

    def RandomState(self, seed):  # noqa: N802  (CuPy's name)
        g = np.random.default_rng(seed)
        return types.SimpleNamespace(standard_normal=lambda shape, dtype: g.standard_normal(
            shape, dtype=dtype))


def fake_cupy():
    names = ("float32", "maximum", "sqrt", "asarray", "zeros", "ones", "empty_like")
    return types.SimpleNamespace(random=FakeRandom(), **{n: getattr(np, n) for n in names})


@pytest.fixture
def no_fcgpu_passes(monkeypatch):
    """The baseline must not reach fcgpu's passes or its Philox mask."""
    from fcgpu import fused, fused_ref, random as frandom

    def boom(*a, **k):
        raise AssertionError("the CuPy user's baseline called fcgpu's own code")
    for mod in (fused, fused_ref):
        for name in ("dropout_forward", "dropout_forward_ref", "bn_relu_dropout_forward",
                     "bn_relu_dropout_forward_ref", "bn_forward_train", "bn_forward_train_ref"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, boom)
    for name in vars(fused_ref.reference):   # fused.reference is this same namespace
        monkeypatch.setattr(fused_ref.reference, name, boom)
    monkeypatch.setattr(frandom, "dropout_mask_reference", boom)


def test_user_fused_forward_is_the_course_math_with_a_fresh_mask(no_fcgpu_passes):
    """Mutants caught: the baseline built on fcgpu.fused.reference (the Philox-emulating
    *_ref code) instead of cupy.random; a mask drawn once at set-up instead of each call;
    cupy.random used unseeded."""
    xp = fake_cupy()
    n, d = 37, 11
    case = kernels.build_xp_case("cupy_curand", "fused_fwd", (n, d), xp, 2)
    assert case.label == variants.label("cupy_curand") and "cupy.random" in case.label
    # the inputs it reads, made the way the case makes them
    xs0 = xp.random.RandomState(1).standard_normal((n, d), dtype=np.float32)
    gamma = np.linspace(0.5, 1.5, d, dtype=np.float32)
    beta = np.linspace(-0.2, 0.2, d, dtype=np.float32)
    out1, mu, inv_std = case.call()
    out2, _, _ = case.call()
    assert xp.random.draws == 2 and out1.dtype == np.float32
    x64 = xs0.astype(np.float64)
    m64, v64 = x64.mean(0), x64.var(0)
    r = np.maximum(gamma * (x64 - m64) / np.sqrt(v64 + kernels.EPS) + beta, 0)
    kept = out1 != 0
    assert np.allclose(out1[kept], (r / kernels.KEEP_P)[kept], rtol=1e-5, atol=1e-6)
    assert np.all(out1[~kept] == 0) and 0.6 < kept[r > 0].mean() < 0.95
    assert not np.array_equal(out1 != 0, out2 != 0)   # a fresh mask each call
    assert np.allclose(mu, m64, rtol=1e-5, atol=1e-6)
    assert np.allclose(inv_std, 1 / np.sqrt(v64 + kernels.EPS), rtol=1e-5)


def test_user_dropout_and_batchnorm_on_numpy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 9)).astype(np.float32)
    u = rng.random(x.shape, dtype=np.float32)
    out = kernels.user_dropout(x, 0.8, lambda shape: u)
    assert out.dtype == np.float32
    assert np.array_equal(out, np.where(u < 0.8, x * np.float32(1 / 0.8), np.float32(0)))
    running = {"mean": np.zeros(9, np.float32), "var": np.ones(9, np.float32)}
    y, mu, inv = kernels.user_batchnorm_train(np, x, np.ones(9, np.float32),
                                              np.zeros(9, np.float32), 1e-5, 0.9, running)
    assert y.dtype == np.float32 and np.allclose(y.mean(0), 0, atol=1e-5)
    assert np.allclose(running["mean"], 0.1 * x.mean(0), atol=1e-6)
    assert np.allclose(running["var"], 0.9 + 0.1 * x.var(0), atol=1e-6)


def test_user_dropout_forward_case_draws_each_call():
    xp = fake_cupy()
    case = kernels.build_xp_case("cupy_curand", "dropout_fwd", (4096,), xp, 1)
    a, b = case.call(), case.call()
    assert xp.random.draws == 2 and not np.array_equal(a != 0, b != 0)


# ----------------------------------------------------------------- one pair of events

class _Log:
    def __init__(self):
        self.items = []


def _fake_gpu_server(family, log):
    s = _Server("fcgpu" if family == "cupy" else "torch_cuda")
    s.kind, s.family = "gpu", family

    class Event:
        def __init__(self, *a, **k):
            self.id = sum(1 for x in log.items if x[0] == "new") + 1
            log.items.append(("new", self.id))

        def record(self):
            log.items.append(("record", self.id))

        def synchronize(self):
            log.items.append(("wait", self.id))

        def elapsed_time(self, end):   # torch: ms
            return 7.0
    sync = lambda: log.items.append(("sync",))  # noqa: E731
    if family == "cupy":
        s.cp = types.SimpleNamespace(cuda=types.SimpleNamespace(
            Event=Event, get_elapsed_time=lambda a, b: 7.0,
            runtime=types.SimpleNamespace(deviceSynchronize=sync)))
    else:
        s.torch = types.SimpleNamespace(cuda=types.SimpleNamespace(Event=Event,
                                                                   synchronize=sync))
    s.case = Case(lambda i: log.items.append(("call",)), 1, "x")
    return s


@pytest.mark.parametrize("family", ["cupy", "torch"])
def test_a_gpu_chunk_is_timed_between_one_pair_of_events(family):
    """Mutant caught: events around each call (Python's launch overhead counted as kernel
    time against the copy reference)."""
    log = _Log()
    s = _fake_gpu_server(family, log)
    resp = s.kernel_run({"calls": 50})
    kinds = [x[0] for x in log.items]
    assert kinds.count("new") == 2 and kinds.count("record") == 2 and kinds.count("call") == 50
    first, last = kinds.index("record"), len(kinds) - 1 - kinds[::-1].index("record")
    assert kinds[first + 1:last] == ["call"] * 50          # back to back between the events
    assert kinds[:first].count("sync") == 1 and kinds[-1] == "wait"
    assert resp["device"] == [pytest.approx(7.0 / 1e3 / 50)] and len(resp["host"]) == 1
    assert resp["calls"] == 50
    with pytest.raises(ValueError, match="calls >= 1"):
        s.kernel_run({"calls": 0})


# ----------------------------------------------------------------- chunks and parts

class FakeWorker:
    """A worker whose calls take ``secs`` each; remembers the chunk sizes asked for."""

    def __init__(self, variant, secs):
        self.variant, self.secs, self.asked = variant, secs, []
        self.alive, self.skip, self.info = True, None, {"ok": True}

    def request(self, req, timeout):
        cmd = req["cmd"]
        if cmd == "kernel_setup":
            return {"ok": True, "label": self.variant, "rotate": 1}
        if cmd == "kernel_run":
            k = req["calls"]
            self.asked.append(k)
            gpu = variants.get(self.variant).device == "gpu"
            return {"ok": True, "host": [self.secs] if gpu else [self.secs] * k,
                    "device": [self.secs] if gpu else None, "calls": k}
        return {"ok": True}


class FakeBenchmark:
    def __init__(self):
        self.extra_info, self.group = {}, None

    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        for _ in range(rounds):
            fn()


def _opts(part="all", gpu=True):
    o = plugin.Options.__new__(plugin.Options)
    o.gpu, o.full, o.quick, o.part = gpu, False, True, part
    o.budget, o.deadline, o.partial, o.only = None, None, None, None
    return o


def test_gpu_chunks_have_at_least_min_gpu_calls():
    """Mutant caught: a slow GPU call (here 0.5 s) sized to one call per chunk, so the
    event pair holds one launch and its host latency."""
    pool = {"fcgpu": FakeWorker("fcgpu", 0.5), "cupy_curand": FakeWorker("cupy_curand", 0.5),
            "torch_cpu": FakeWorker("torch_cpu", 0.5)}
    bench = FakeBenchmark()
    measure.measure_kernel_case(bench, pool, _opts(), "fused_fwd", (490, 500))
    for v in ("fcgpu", "cupy_curand"):
        chunks = pool[v].asked[2:]   # after the warm-up call and the sizing calls
        assert chunks and min(chunks) == measure.MIN_GPU_CALLS, (v, pool[v].asked)
    assert min(pool["torch_cpu"].asked[2:]) == 1
    assert set(bench.extra_info["measurements"]) == {"fcgpu", "cupy_curand", "torch_cpu"}


def test_parts_split_the_variants_of_a_headline_case():
    """headline measures the summary's variants only; rest measures the others, never
    the headline's again. Mutant caught: rest re-measuring fcgpu on dropout 2^26."""
    big = (schedule.BIG,)
    for part, want in (("headline", {"fcgpu"}), ("rest", {"cupy_unfused", "torch_cuda"}),
                       ("all", {"fcgpu", "cupy_unfused", "torch_cuda"})):
        pool = {v: FakeWorker(v, 1e-4) for v in ("fcgpu", "cupy_unfused", "torch_cuda")}
        bench = FakeBenchmark()
        measure.measure_kernel_case(bench, pool, _opts(part), "dropout_fwd", big)
        assert set(bench.extra_info["measurements"]) == want, part
        assert all(not w.asked for v, w in pool.items() if v not in want), part


def test_headline_cases_come_first_and_the_rest_leaves_them_out():
    o = _opts("all")
    cases = schedule.kernel_cases(o)
    head = [(op, tuple(shape)) for op, shape, _, _ in schedule.HEADLINE_KERNELS]
    assert cases[:len(head)] == head
    assert cases[len(head)] == ("augment", (490,))     # then the gathers
    assert len(set(cases)) == len(cases)
    assert schedule.kernel_cases(_opts("headline")) == head
    rest = schedule.kernel_cases(_opts("rest"))
    # a headline case stays in the rest only where other variants measure it
    assert ("dropout_fwd", (schedule.BIG,)) in rest and ("copy", (schedule.BIG,)) in rest
    assert set(rest) == set(cases)
    assert schedule.train_nets(_opts("headline")) == ["default"]
    assert schedule.train_variant(_opts("rest"), "default", "numpy")
    assert not schedule.train_variant(_opts("rest"), "default", "torch_cuda")
    assert schedule.train_variant(_opts("rest"), "wide", "torch_cuda")
    assert schedule.suite_variants(_opts("headline"), "kernels") == \
        ["cupy_unfused", "cupy_curand", "fcgpu", "torch_cuda"]
