"""``fcgpu bench``'s parts, deadlines and completeness, with the suites' pytest runs and
the course run replaced by stand-ins that write what a real run writes (no timing
asserted): --part headline runs the summary's phases in the shares of its deadline,
--part rest adds to it, a hard stop or a case not started makes results.json say
``complete: false`` (and never fails the run), and only a run with nothing cut says
``complete: true``."""
from __future__ import annotations

import json
import subprocess

import pytest

from fcgpu.bench import course_run, schedule
from fcgpu.bench.schedule import NOT_STARTED
from fcgpu.cli import main
from test_report import BIG, GPU_MACHINE, _kcase, _tcase

pytest.importorskip("pytest_benchmark")


def _cases(suite, part):
    """What each suite's stand-in measures, by part."""
    copy_t = 2 * 4 * BIG / 3000e9
    if suite == "kernels" and part == "headline":
        return [_kcase("copy", (BIG,), {"cupy_unfused": copy_t}),
                _kcase("dropout_fwd", (BIG,), {"fcgpu": copy_t / 0.9}),
                _kcase("dropout_bwd", (BIG,), {"fcgpu": copy_t / 0.9}),
                _kcase("fused_fwd", (490, 500), {"fcgpu": 1e-5, "cupy_curand": 3e-5}),
                _kcase("fused_fwd", (65536, 4096), {"fcgpu": 1e-3, "cupy_curand": 3e-3})]
    if suite == "kernels":
        return [_kcase("dropout_fwd", (BIG,), {"torch_cuda": copy_t})]
    if part == "headline":
        return [_tcase("default", {"fcgpu": 3e5, "torch_cuda": 1e5})]
    return [_tcase("default", {"numpy": 2e4}), _tcase("wide", {"fcgpu": 3e4})]


class Suites:
    """subprocess.call for the suites' pytest runs: writes the raw JSON, or behaves as
    told (``stop``: the hard stop fires; ``cut``: its cases are not started)."""

    def __init__(self, stop=(), cut=()):
        self.cmds, self.stop, self.cut = [], set(stop), set(cut)

    def __call__(self, cmd, env=None, cwd=None, timeout=None):
        arg = lambda name: cmd[cmd.index(name) + 1] if name in cmd else None  # noqa: E731
        suite = "kernels" if cmd[3].endswith("test_kernels.py") else "train"
        part = arg("--fcgpu-part")
        self.cmds.append({"suite": suite, "part": part, "timeout": timeout,
                          "deadline": arg("--fcgpu-deadline")})
        if (suite, part) in self.stop:
            raise subprocess.TimeoutExpired(cmd, timeout)
        cases, skips = _cases(suite, part), []
        if (suite, part) in self.cut:
            skips = [dict(c, measurements={}, skipped={"*": NOT_STARTED}) for c in cases]
            cases = []
        raw = {"benchmarks": [{"name": "t", "extra_info": c} for c in cases],
               "fcgpu": {"variant_skips": {}, "case_skips": skips, "workers": {},
                         "settings": {"quick": True}, "machine": GPU_MACHINE}}
        with open(arg("--benchmark-json"), "w") as f:
            json.dump(raw, f)
        return 0


def _course(seen):
    def course_wall(enabled=False, backends=None, deadline=None, **kw):
        seen.append({"backends": backends, "deadline": deadline})
        return {"epochs": 17, "num_train": 49000, "num_val": 1000, "goal_seconds": 1.0,
                "config": "c", "data": "d", "backends": {
                    "fcgpu_graph": {"seconds": 0.8}, "torch_cuda": {"seconds": 2.0},
                    "fcgpu": {"skipped": "stopped after 9 s (the time it was given)"}
                    if kw.get("_cut") else {"seconds": 1.2}}}
    return course_wall


@pytest.fixture
def bench(monkeypatch):
    """Runs ``fcgpu bench`` with stand-ins; returns (rc, results, suites, course calls)."""
    from fcgpu import backend
    from fcgpu.bench import machine
    monkeypatch.setattr(backend, "cupy_status", lambda: (True, None))
    monkeypatch.setattr(machine, "machine_info", lambda: dict(GPU_MACHINE))
    monkeypatch.delenv("FCGPU_DATA", raising=False)

    def run(out, *argv, suites=None, course=None):
        suites = suites or Suites()
        seen = []
        monkeypatch.setattr(subprocess, "call", suites)
        monkeypatch.setattr(course_run, "course_wall", course or _course(seen))
        rc = main(["bench", "--out", str(out), "--quick"] + list(argv))
        res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() \
            else None
        return rc, res, suites, seen
    return run


def test_headline_runs_the_summary_phases_in_their_shares(bench, tmp_path):
    """Mutant caught: the phases' deadlines not shared by the estimates (e.g. the kernel
    suite given the whole deadline, as the course run was before)."""
    import time
    t0 = time.time()
    rc, res, suites, seen = bench(tmp_path / "o", "--part", "headline", "--deadline", "100")
    assert rc == 0, res
    assert [(c["suite"], c["part"]) for c in suites.cmds] == [("kernels", "headline"),
                                                            ("train", "headline")]
    ends = schedule.phase_deadlines(100)
    for c, phase in zip(suites.cmds, ("kernels", "train")):
        assert float(c["deadline"]) == pytest.approx(t0 + ends[phase], abs=3)
    assert seen[0]["backends"] == list(schedule.headline_course_backends())
    assert seen[0]["deadline"] == pytest.approx(t0 + 100, abs=3)
    st = res["settings"]
    assert st["part"] == "headline" and st["complete"] is True and st["cut"] == []
    assert "dropout_stats" not in res["experiments"]        # not part of the headline
    s = res["summary"]
    assert s["dropout_fwd_bw_frac"] == pytest.approx(0.9) and s["fused_vs_unfused"] == 3.0
    assert s["train_vs_torch"] == pytest.approx(3.0)
    assert st["raw"] == ["raw/headline-kernels.json", "raw/headline-train.json"]


def test_rest_adds_to_the_headline_and_never_measures_it_again(bench, tmp_path):
    out = tmp_path / "o"
    bench(out, "--part", "headline")
    rc, res, suites, seen = bench(out, "--part", "rest", "--only", "kernels")
    assert rc == 0
    assert [(c["suite"], c["part"]) for c in suites.cmds] == [("kernels", "rest")]
    assert seen == []                                       # the course run is kept
    assert res["experiments"]["course_wall"]["backends"]["fcgpu_graph"]["seconds"] == 0.8
    rows = {(k["op"], k["variant"]) for k in res["kernels"]}
    assert ("dropout_fwd", "fcgpu") in rows and ("dropout_fwd", "torch_cuda") in rows
    assert res["summary"]["train_vs_torch"] == pytest.approx(3.0)   # the headline's
    assert res["settings"]["complete"] is True and res["settings"]["part"] == "rest"


def test_rest_without_a_headline_is_a_one_line_error(bench, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.json").write_text(json.dumps({"settings": {"part": "all"}}))
    rc, _, _, _ = bench(tmp_path / "o", "--part", "rest")
    err = capsys.readouterr().err
    assert rc == 2 and "--part rest adds to a --part headline run" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("stop,cut,words", [
    ({("train", "headline")}, (), "headline-train: stopped at the run's --deadline"),
    ((), {("kernels", "headline")}, "kernels: 5 case(s) not started by the deadline"),
])
def test_anything_cut_makes_the_run_incomplete_but_not_failed(bench, tmp_path, stop, cut,
                                                               words):
    """Mutants caught: a suite stopped by the hard stop counted as an error (exit 1);
    results.json saying complete: true with cases not started."""
    rc, res, _, _ = bench(tmp_path / "o", "--part", "headline", "--deadline", "100",
                          suites=Suites(stop=stop, cut=cut))
    assert rc == 0
    st = res["settings"]
    assert st["complete"] is False and any(words in c for c in st["cut"]), st["cut"]


def test_a_course_backend_stopped_makes_the_run_incomplete(bench, tmp_path):
    seen = []
    real = _course(seen)
    rc, res, _, _ = bench(tmp_path / "o", "--part", "headline",
                          course=lambda **kw: real(_cut=True, **kw))
    assert rc == 0 and res["settings"]["complete"] is False
    assert any(c.startswith("course_wall fcgpu: stopped after") for c in res["settings"]["cut"])


def test_all_on_a_gpu_runs_the_headline_first_then_the_rest(bench, tmp_path):
    rc, res, suites, seen = bench(tmp_path / "o", "--course-wall", "--deadline", "400",
                                  "--only", "kernels")
    assert rc == 0
    assert [(c["suite"], c["part"]) for c in suites.cmds] == [("kernels", "headline"),
                                                            ("kernels", "rest")]
    assert seen and res["settings"]["complete"] is True


def test_a_failing_suite_fails_the_run(bench, tmp_path):
    class Failing(Suites):
        def __call__(self, cmd, **kw):
            super().__call__(cmd, **kw)
            return 1
    rc, res, _, _ = bench(tmp_path / "o", "--part", "headline", suites=Failing())
    assert rc == 1 and res["settings"]["complete"] is False


def test_a_suite_whose_every_case_skipped_is_neither_failed_nor_cut(bench, tmp_path):
    """pytest-benchmark saves no JSON when no case ran (no GPU variant could start, say);
    the per-case lines stand in. Mutant caught: that read as a failed suite."""
    class AllSkipped(Suites):
        def __call__(self, cmd, **kw):
            partial = cmd[cmd.index("--fcgpu-partial") + 1]
            case = dict(_cases("kernels", "headline")[0], measurements={},
                        skipped={"fcgpu": "no GPU backend: none here"})
            with open(partial, "w") as f:
                f.write(json.dumps({"case": case, "variant_skips": {}, "workers": {},
                                    "settings": {}}) + "\n")
            return 0
    rc, res, _, _ = bench(tmp_path / "o", "--part", "headline", suites=AllSkipped())
    st = res["settings"]
    assert rc == 0 and st["suites_failed"] == {} and st["complete"] is True, st
    assert st["raw"] == ["raw/headline-kernels.partial.jsonl", "raw/headline-train.partial.jsonl"]
    assert any(s["reason"] == "no GPU backend: none here" for s in res["kernel_skips"])


def test_a_headline_phase_left_no_time_is_not_started(bench, tmp_path, monkeypatch):
    """The kernel phase overran its share: the training phase is reported as not started
    (the run incomplete) instead of starting a pytest run it has no time for."""
    import time
    clock = {"t": time.time()}
    monkeypatch.setattr(time, "time", lambda: clock["t"])

    class Slow(Suites):
        def __call__(self, cmd, **kw):
            clock["t"] += 97      # past the training phase's share, and 3 s before the end
            return super().__call__(cmd, **kw)
    rc, res, suites, seen = bench(tmp_path / "o", "--part", "headline", "--deadline", "100",
                                  suites=Slow())
    assert rc == 0 and [c["suite"] for c in suites.cmds] == ["kernels"] and seen == []
    cut = res["settings"]["cut"]
    assert any(c.startswith("headline-train: not started") for c in cut), cut
    assert any(c.startswith("headline-course: not started") for c in cut), cut
