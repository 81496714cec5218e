"""bench/gpu_check.sh's own logic, on the CPU: its steps replaced by stand-ins
(GPU_CHECK_CMD_<step>) that pass, fail, run past their cap, test nothing or run out
of time, so that the summary and the exit status are known to be right before the
script meets a GPU. Also the pytest plugin and JUnit summary it uses for the GPU
test steps (bench/gpu_check_pytest.py), on real pytest runs."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# the emulated CuPy of the CUDA-graph tests, for the smoke's warm-up
from test_cuda_graph import emu  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"
STEPS = ["info", "smoke", "kernels", "graph", "memcheck", "racecheck", "bench"]
TEST_STEPS = ("kernels", "graph")
OUT_FILES = {"gpu_check.log", "junit-kernels.xml", "junit-graph.xml", "sanitizer-memcheck.log",
             "sanitizer-racecheck.log", "bench-results.json", "bench-report.md", "bench.tar.gz"}

_spec = importlib.util.spec_from_file_location("gpu_check_pytest",
                                              REPO / "bench" / "gpu_check_pytest.py")
gcp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gcp)

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def junit(passed=3, failed=0, skipped=0, skip_msg="needs a GPU"):
    """A stand-in test step: writes a JUnit report to $JUNIT and exits as pytest would."""
    cases = ['<testcase classname="t" name="p%d"/>' % i for i in range(passed)]
    cases += ['<testcase classname="t" name="f%d"><failure message="boom"/></testcase>' % i
              for i in range(failed)]
    cases += ['<testcase classname="t" name="s%d"><skipped message="%s"/></testcase>'
              % (i, skip_msg) for i in range(skipped)]
    xml = '<?xml version="1.0"?><testsuites><testsuite name="pytest">%s</testsuite></testsuites>' \
        % "".join(cases)
    rc = 1 if failed else 0
    return "cat > \"$JUNIT\" <<'XML'\n%s\nXML\nexit %d" % (xml, rc)


def run_check(tmp_path, cmds=None, steps=None, timeout=120, **env_extra):
    """Run the script with every step a passing stand-in unless ``cmds`` says
    otherwise; returns (exit status, {step: (status, detail)}, verdict, log)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPU_CHECK_", "FCGPU_CHECK", "CUPY_CACHE", "NUMBA_CACHE"))
           and k not in ("STEPS", "OUT", "FCGPU_REQUIRE_GPU")}
    for s in STEPS:
        env["GPU_CHECK_CMD_" + s] = junit() if s in TEST_STEPS else "true"
    for s, c in (cmds or {}).items():
        env["GPU_CHECK_CMD_" + s] = c
    env.update(OUT=str(tmp_path / "out"), GPU_CHECK_CACHE=str(tmp_path / "cache"),
               PYTHON=sys.executable, TMPDIR=str(tmp_path))
    if steps is not None:
        env["STEPS"] = steps
    env.update({k: str(v) for k, v in env_extra.items()})
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=str(tmp_path))
    out = res.stdout + res.stderr
    rows = {}
    summary = out.split("=== summary", 1)
    if len(summary) == 2:
        for line in summary[1].splitlines()[2:]:
            parts = line.split(None, 4)
            if len(parts) >= 4 and parts[0] in STEPS:
                rows[parts[0]] = (parts[1], parts[4] if len(parts) > 4 else "")
    m = re.search(r"^GPU CHECK: (\w+)$", out, re.M)
    return res.returncode, rows, m.group(1) if m else None, out


def test_all_steps_pass(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path)
    assert (rc, verdict) == (0, "PASSED"), out
    assert list(rows) == STEPS  # every step, in the order of what we most need to learn
    assert all(st == "ok" for st, _ in rows.values()), rows
    assert "3 passed, 0 failed, 0 skipped" in rows["kernels"][1]
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "GPU CHECK: PASSED" in log and "=== summary" in log


def test_a_failing_step_fails_the_run_and_the_rest_still_runs(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, {"smoke": "echo mismatch; exit 1"})
    assert (rc, verdict) == (1, "FAILED"), out
    assert rows["smoke"][0] == "FAIL" and list(rows) == STEPS
    assert all(rows[s][0] == "ok" for s in STEPS if s != "smoke")


def test_a_failing_test_fails_the_run(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, {"graph": junit(passed=5, failed=1)})
    assert (rc, verdict) == (1, "FAILED"), out
    assert rows["graph"][0] == "FAIL" and "1 failed" in rows["graph"][1]


def test_a_test_step_stopped_at_its_cap_is_incomplete(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, {"kernels": "sleep 30"},
                                       GPU_CHECK_CAP_kernels=2)
    assert (rc, verdict) == (2, "INCOMPLETE"), out
    assert rows["kernels"][0] == "TIMEOUT"
    assert rows["graph"][0] == "ok"  # the next steps still run


def test_a_test_step_that_tested_nothing_is_incomplete(tmp_path):
    """No CuPy or no device: every GPU test skipped. Not a pass."""
    rc, rows, verdict, out = run_check(
        tmp_path, {"kernels": junit(passed=0, skipped=40, skip_msg="needs CuPy and a CUDA device"),
                   "graph": "exit 5"})  # pytest: no test collected
    assert (rc, verdict) == (2, "INCOMPLETE"), out
    assert rows["kernels"][0] == "NOTESTS" and "40 skipped" in rows["kernels"][1]
    assert rows["graph"][0] == "NOTESTS"


def test_tests_skipped_for_time_make_the_run_incomplete(tmp_path):
    rc, rows, verdict, out = run_check(
        tmp_path, {"graph": junit(passed=10, skipped=4, skip_msg=gcp.OUT_OF_TIME)})
    assert (rc, verdict) == (2, "INCOMPLETE"), out
    assert rows["graph"][0] == "CUT"


def test_other_skips_in_a_test_step_that_ran_are_listed_not_fatal(tmp_path):
    rc, rows, verdict, out = run_check(
        tmp_path, {"kernels": junit(passed=30, skipped=2,
                                    skip_msg="needs 34.0 GiB of free GPU memory")})
    assert (rc, verdict) == (0, "PASSED"), out
    assert "2 skipped" in rows["kernels"][1] and "GiB" in rows["kernels"][1]


def test_steps_skipped_for_time_make_the_run_incomplete(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, {"smoke": "sleep 4"}, GPU_CHECK_BUDGET_S=7,
                                       GPU_CHECK_MIN_STEP_S=5)
    assert (rc, verdict) == (2, "INCOMPLETE"), out
    assert rows["info"][0] == "ok" and rows["smoke"][0] == "ok"
    assert all(rows[s][0] == "SKIPPED" for s in STEPS[2:]), rows
    assert "time budget" in rows["kernels"][1]


def test_failure_outranks_incomplete(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, {"kernels": "sleep 30", "bench": "exit 3"},
                                       GPU_CHECK_CAP_kernels=1)
    assert (rc, verdict) == (1, "FAILED"), out
    assert rows["kernels"][0] == "TIMEOUT" and rows["bench"][0] == "FAIL"


def test_chosen_steps_only_and_the_bench_takes_the_time_left(tmp_path):
    rc, rows, verdict, out = run_check(
        tmp_path,
        {"bench": '[ "$STEP_SECONDS" -ge 25 ] || { echo "bench got $STEP_SECONDS s"; exit 1; }'},
        steps="bench,graph", GPU_CHECK_BUDGET_S=40)
    assert (rc, verdict) == (0, "PASSED"), out
    assert list(rows) == ["graph", "bench"]  # the script's order, not the caller's


def test_unknown_step_is_a_usage_error(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, steps="graph,benchmarks")
    assert rc == 64 and "unknown step 'benchmarks'" in out and verdict is None


def test_gpu_test_steps_require_the_gpu_and_caches_are_shared(tmp_path):
    cache = tmp_path / "cache"
    want_env = ('[ "$CUPY_CACHE_DIR" = "%s/cupy" ] && [ "$NUMBA_CACHE_DIR" = "%s/numba" ] '
                '&& [ -d "$CUPY_CACHE_DIR" ] || exit 9' % (cache, cache))
    cmds = {s: '%s; [ -z "${FCGPU_REQUIRE_GPU:-}" ] || exit 8' % want_env
            for s in STEPS if s not in TEST_STEPS}
    for s in TEST_STEPS:
        cmds[s] = '%s; [ "${FCGPU_REQUIRE_GPU:-}" = 1 ] || exit 8\n%s' % (want_env, junit())
    rc, rows, verdict, out = run_check(tmp_path, cmds)
    assert (rc, verdict) == (0, "PASSED"), out


def test_out_holds_at_most_eight_plain_files(tmp_path):
    bench = ('mkdir -p "$WORK/bench/raw" && echo "{}" > "$WORK/bench/results.json" '
             '&& echo report > "$WORK/bench/report.md" && echo x > "$WORK/bench/raw/k.json"')
    rc, rows, verdict, out = run_check(tmp_path, {"bench": bench})
    assert rc == 0, out
    files = list((tmp_path / "out").iterdir())
    assert all(f.is_file() for f in files) and len(files) <= 8
    assert {f.name for f in files} <= OUT_FILES
    assert {"bench-results.json", "bench-report.md", "bench.tar.gz"} <= {f.name for f in files}


def test_default_caps_fit_the_budget():
    env = dict(os.environ, GPU_CHECK_PLAN="1")
    for k in list(env):
        if k.startswith("GPU_CHECK_") and k != "GPU_CHECK_PLAN" or k == "STEPS":
            env.pop(k)
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "budget 345s" in text and "WARNING" not in text, text
    caps = dict(re.findall(r"^  (\w+) cap (\d+)s$", text, re.M))
    assert list(caps) == STEPS[:-1]  # the bench takes the time left
    m = re.search(r"fixed caps (\d+)s; needed (\d+)s of (\d+)s", text)
    assert int(m.group(1)) == sum(int(v) for v in caps.values())
    assert int(m.group(2)) <= int(m.group(3)) == 345


# ----------------------------------------------------------------- the pytest side

@pytest.fixture
def tiny_suite(tmp_path):
    d = tmp_path / "suite"
    d.mkdir()
    (d / "test_tiny.py").write_text(
        "import os, pytest\n"
        "def test_a():\n    pass\n"
        "def test_b():\n    assert os.environ.get('TINY_FAIL') != '1'\n"
        "@pytest.mark.skipif(os.environ.get('TINY_SKIP') == '1', reason='needs CuPy')\n"
        "def test_c():\n    pass\n")
    return d


def _pytest(suite, tmp_path, **env_extra):
    junit_path = tmp_path / "junit.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + sys.path))
    env.pop("FCGPU_CHECK_DEADLINE", None)
    env.update({k: str(v) for k, v in env_extra.items()})
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "bench.gpu_check_pytest", "--junitxml", str(junit_path),
                          "-o", "junit_family=xunit2", "--rootdir", str(suite), str(suite)],
                         env=env, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    return gcp.summarize(res.returncode, str(junit_path)), res


@pytest.mark.parametrize("env,status", [
    ({}, "ok"),
    ({"TINY_FAIL": "1"}, "FAIL"),
    ({"FCGPU_CHECK_DEADLINE": 1.0}, "CUT"),      # a deadline long past: every test skipped
    ({"FCGPU_CHECK_DEADLINE": 4e9}, "ok"),
])
def test_plugin_and_summary_on_real_pytest_runs(tiny_suite, tmp_path, env, status):
    (st, detail), res = _pytest(tiny_suite, tmp_path, **env)
    assert st == status, (detail, res.stdout[-2000:], res.stderr[-2000:])
    if status == "CUT":
        assert "3 skipped" in detail


def test_summary_of_all_skipped_and_of_nothing_collected(tiny_suite, tmp_path):
    summarize = gcp.summarize
    (tiny_suite / "test_tiny.py").write_text(
        "import pytest\npytestmark = pytest.mark.skip(reason='needs CuPy')\n"
        "def test_a():\n    pass\n")
    (st, detail), _ = _pytest(tiny_suite, tmp_path)
    assert st == "NOTESTS" and "needs CuPy" in detail
    assert summarize(5, str(tmp_path / "missing.xml"))[0] == "NOTESTS"
    assert summarize(2, str(tmp_path / "missing.xml"))[0] == "FAIL"


# ----------------------------------------------------------------- through the real conftest

THROWAWAY = """
import pytest

@pytest.mark.gpu
def test_gpu_no_cupy():
    pytest.skip("CuPy backend unavailable: no CuPy here")

@pytest.mark.gpu
def test_gpu_too_little_memory():
    pytest.skip("needs 34.0 GiB of free GPU memory")

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="needs CuPy and a CUDA device")
def test_gpu_skipif_mark():
    pass

def test_xp_fixture(xp):   # the conftest's xp fixture: its cupy run is marked gpu
    pass

@pytest.mark.gpu
def test_gpu_runs():
    pass
"""


def _real_conftest_run(tmp_path, **env_extra):
    """pytest as gpu_check.sh runs a GPU test step (repo root, -m gpu, the plugin,
    FCGPU_REQUIRE_GPU=1), on a throwaway file in a hidden folder under tests/, so the
    real tests/conftest.py applies (a whole-suite run never collects a dot-folder)."""
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix=".gpu-check-", dir=REPO / "tests"))
    junit_path = tmp_path / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("FCGPU_CHECK_DEADLINE",)}
    env.update(FCGPU_REQUIRE_GPU="1", PYTHONPATH=str(REPO))
    env.update({k: str(v) for k, v in env_extra.items()})
    try:
        (folder / "test_throwaway.py").write_text(THROWAWAY)
        res = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-q",
                              "-p", "no:cacheprovider", "-p", "bench.gpu_check_pytest",
                              "-o", "junit_family=xunit2", "--junitxml", str(junit_path),
                              str(folder / "test_throwaway.py")],
                             env=env, capture_output=True, text=True, timeout=120,
                             cwd=str(REPO))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return gcp.summarize(res.returncode, str(junit_path)), res


def test_out_of_time_skips_stay_skips_under_require_gpu(tmp_path):
    """Mutants caught: the conftest hook turning every skip of a gpu test into a failure
    (the verdict read FAILED for a step cut for time); the plugin's skip running after
    skipif marks (no tryfirst: the mark's reason would fail the test instead)."""
    (st, detail), res = _real_conftest_run(tmp_path, FCGPU_CHECK_DEADLINE=1.0)
    out = res.stdout + res.stderr
    assert st == "CUT", (detail, out[-3000:])
    assert "0 failed" in detail and "5 skipped" in detail, detail
    assert "FCGPU_REQUIRE_GPU=1 but" not in out


def test_other_skips_of_gpu_tests_still_fail_under_require_gpu(tmp_path):
    """Mutant caught: the hook exempting every skip (no CuPy, no device and too little
    memory must still fail the step)."""
    from fcgpu import backend
    gpu = backend.cupy_status()[0]   # with a GPU the xp fixture's cupy run passes
    (st, detail), res = _real_conftest_run(tmp_path)
    out = res.stdout + res.stderr
    assert st == "FAIL", (detail, out[-3000:])
    assert "%d passed, %d failed, 0 skipped" % (1 + gpu, 4 - gpu) in detail, (detail,
                                                                              out[-3000:])
    whys = ["no CuPy here", "34.0 GiB", "needs CuPy and a CUDA device"]
    whys += [] if gpu else ["CuPy backend unavailable"]
    for why in whys:
        assert "FCGPU_REQUIRE_GPU=1 but this GPU test skipped: " in out and why in out, why


def test_conftest_knows_the_plugins_out_of_time_reason():
    import conftest
    assert conftest.CHECK_OUT_OF_TIME == gcp.OUT_OF_TIME


# ----------------------------------------------------------------- bench/gpu_smoke.py

def _smoke_module():
    spec = importlib.util.spec_from_file_location("fcgpu_gpu_smoke_t",
                                                  REPO / "bench" / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("warm,verdict", [(0.05, "the on-disk cache is used"),
                                          (1.9, "NOT cached")])
def test_smoke_module_load_times_report(monkeypatch, capsys, tmp_path, warm, verdict):
    import json
    import types
    smoke = _smoke_module()
    from fcgpu.cuda import module as cmod
    calls = []

    def run(cmd, env=None, **kw):
        calls.append((cmd, env))
        secs = 2.0 if len(calls) == 1 else warm
        return subprocess.CompletedProcess(cmd, 0, stdout="compiling\n" + json.dumps(
            {m: secs for m in cmod.MODULES}) + "\n", stderr="")

    monkeypatch.setattr(smoke.subprocess, "run", run)
    monkeypatch.setattr(smoke, "require_cupy", lambda: types.SimpleNamespace(__version__="14.2.0"))
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "shared"))
    smoke.module_load_times()
    text = capsys.readouterr().out
    assert verdict in text and "CuPy 14.2.0" in text
    assert all("--time-loads" in c[0] for c in calls) and len(calls) == 2
    cache = {c[1]["CUPY_CACHE_DIR"] for c in calls}
    assert len(cache) == 1 and str(tmp_path / "shared") not in cache  # one fresh dir for both
    assert smoke.FAILURES == []


def test_smoke_warm_up_runs_on_the_emulator(emu, monkeypatch):  # noqa: F811
    """The warm-up's trainings (every rule, both dtypes, plain and CUDA-graph on the
    stand-in CuPy, and on NumPy) run: a mistake there would cost a GPU run."""
    import types
    smoke = _smoke_module()
    cp = emu.cp
    monkeypatch.setattr(cp, "get_default_memory_pool",
                        lambda: types.SimpleNamespace(malloc=None), raising=False)
    monkeypatch.setattr(cp.cuda, "set_allocator", lambda allocator=None: None, raising=False)
    monkeypatch.setattr(cp.cuda.runtime, "deviceSynchronize", lambda: None, raising=False)
    captures = emu.state.captures
    smoke.warm_up(cp)
    assert emu.state.captures - captures == 8  # 4 rules x 2 dtypes with cuda_graph=True
    launched = {name for name, _, _ in emu.log}
    assert any(n.startswith("fcgpu_adam_dev<") for n in launched)
    assert any(n.startswith("fcgpu_col_") for n in launched)
