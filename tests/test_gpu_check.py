"""bench/gpu_check.sh's own logic, on the CPU: its steps replaced by stand-ins
(GPU_CHECK_CMD_<step>) that pass, fail, run past their cap, test nothing, run out of
time, leave a cut bench or a sanitizer that cannot run here, so that each step's status,
the summary and the exit status are known to be right before the script meets a GPU;
the real script on this machine (no GPU: never PASSED); the schedule of the first call
computed from the script's plan and fcgpu/bench/schedule.py's estimates. Also the
pytest plugin and JUnit summary it uses for the GPU test steps
(bench/gpu_check_pytest.py), on real pytest runs, and the conftest hook it relies on."""
from __future__ import annotations

import importlib.util
import json
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
STEPS = ["info", "smoke", "headline", "warmup", "kernels", "graph", "memcheck", "racecheck",
         "bench"]
TEST_STEPS = ("kernels", "graph")
SANITIZER_STEPS = ("memcheck", "racecheck")
BENCH_STEPS = ("headline", "bench")
OUT_FILES = {"gpu_check.log", "junit-kernels.xml", "junit-graph.xml", "sanitizer-memcheck.log",
             "sanitizer-racecheck.log", "bench-results.json", "bench-report.md", "bench.tar.gz"}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / ("%s.py" % name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gcp = _load("gpu_check_pytest")
gcs = _load("gpu_check_status")

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


def results(complete=True, cut=(), drop=(), course=True, part="headline"):
    """A bench results.json as fcgpu bench writes it (the fields the status reads)."""
    summary = {"dropout_fwd_bw_frac": 0.9, "dropout_bwd_bw_frac": 0.88,
               "fused_vs_unfused": 3.1, "train_vs_torch": 2.2}
    notes = {}
    for k in drop:
        summary[k] = None
        notes[k] = "fcgpu skipped: failed: CUDARuntimeError: boom"
    cw = {"backends": {"fcgpu_graph": {"seconds": 0.8}, "torch_cuda": {"seconds": 2.0}}} \
        if course else {"skipped": "not run: opt in"}
    return {"format": "fcgpu-bench-1", "summary": summary, "summary_notes": notes,
            "experiments": {"course_wall": cw},
            "settings": {"complete": complete, "cut": list(cut), "part": part,
                         "course_wall": course, "suites_failed": {}}}


def bench_cmd(res=None, rc=0, before=""):
    """A stand-in headline/bench step: writes ``res`` as $WORK/bench/results.json."""
    text = json.dumps(res if res is not None else results())
    return ('%smkdir -p "$WORK/bench" && cat > "$WORK/bench/results.json" <<\'JSON\'\n%s\nJSON\n'
            'echo report > "$WORK/bench/report.md"; exit %d' % (before, text, rc))


def sanitizer_cmd(log="", out="all checks passed", rc=0):
    """A stand-in sanitizer step: its --log-file and what the smoke printed under it."""
    return ("cat > \"$OUT/sanitizer-$STEP_NAME.log\" <<'LOG'\n%s\nLOG\n"
            "cat <<'TXT'\n%s\nTXT\nexit %d" % (log, out, rc))


def passing(step):
    if step in TEST_STEPS:
        return junit()
    if step in SANITIZER_STEPS:
        return sanitizer_cmd().replace("$STEP_NAME", step)
    if step in BENCH_STEPS:
        return bench_cmd()
    return "true"


def run_check(tmp_path, cmds=None, steps=None, timeout=120, **env_extra):
    """Run the script with every step a passing stand-in unless ``cmds`` says
    otherwise; returns (exit status, {step: (status, detail)}, verdict, log)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPU_CHECK_", "FCGPU_CHECK", "CUPY_CACHE", "NUMBA_CACHE"))
           and k not in ("STEPS", "OUT", "FCGPU_REQUIRE_GPU")}
    for s in STEPS:
        env["GPU_CHECK_CMD_" + s] = passing(s)
    for s, c in (cmds or {}).items():
        env["GPU_CHECK_CMD_" + s] = c.replace("$STEP_NAME", s)
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
    assert "fused_vs_unfused 3.1" in rows["headline"][1]
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "GPU CHECK: PASSED" in log and "=== summary" in log
    assert "second call" not in out


def test_a_failing_step_fails_the_run_and_the_rest_still_runs(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, {"smoke": "echo mismatch here; exit 1"})
    assert (rc, verdict) == (1, "FAILED"), out
    assert rows["smoke"] == ("FAIL", "exit status 1: mismatch here") and list(rows) == STEPS
    assert all(rows[s][0] == "ok" for s in STEPS if s != "smoke")


def test_a_failing_test_fails_the_run(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, {"graph": junit(passed=5, failed=1)})
    assert (rc, verdict) == (1, "FAILED"), out
    assert rows["graph"][0] == "FAIL" and "1 failed" in rows["graph"][1]


@pytest.mark.parametrize("step,cmd", [
    ("kernels", "sleep 30"),                                  # a hard stop at the cap
    ("headline", bench_cmd(before="sleep 30; ")),             # the same, for the bench
    ("bench", bench_cmd(results(complete=False, cut=[         # cut by its own --deadline
        "kernels: 12 case(s) not started by the deadline (bn_fwd 490x500, ...)"]),
        )),
    ("headline", bench_cmd(results(complete=False, drop=["train_vs_torch"], cut=[
        "headline-train: stopped at the run's --deadline"]))),
    ("graph", junit(passed=10, skipped=4, skip_msg=gcp.OUT_OF_TIME)),   # tests not started
])
def test_a_step_cut_for_time_reads_cut_and_the_run_incomplete(tmp_path, step, cmd):
    """Never FAILED, never PASSED. Mutants caught: a hard stop of the bench counted as a
    failure; a bench cut by --deadline read as ok (results.json's complete ignored)."""
    rc, rows, verdict, out = run_check(tmp_path, {step: cmd}, GPU_CHECK_CAP_kernels=2,
                                       GPU_CHECK_CAP_headline=2)
    assert (rc, verdict) == (2, "INCOMPLETE"), out
    assert rows[step][0] == "CUT", rows[step]
    assert all(rows[s][0] == "ok" for s in STEPS if s != step), rows   # the rest still ran
    assert re.search(r"^second call: STEPS=%s " % step, out, re.M), out


def test_a_test_step_that_tested_nothing_is_incomplete(tmp_path):
    """No CuPy or no device: every GPU test skipped. Not a pass."""
    rc, rows, verdict, out = run_check(
        tmp_path, {"kernels": junit(passed=0, skipped=40, skip_msg="needs CuPy and a CUDA device"),
                   "graph": "exit 5"})  # pytest: no test collected
    assert (rc, verdict) == (2, "INCOMPLETE"), out
    assert rows["kernels"][0] == "NOTESTS" and "40 skipped" in rows["kernels"][1]
    assert rows["graph"][0] == "NOTESTS"


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
    assert "second call: STEPS=%s " % ",".join(STEPS[2:]) in out


def test_failure_outranks_incomplete(tmp_path):
    rc, rows, verdict, out = run_check(tmp_path, {"kernels": "sleep 30", "bench": "exit 3"},
                                       GPU_CHECK_CAP_kernels=1)
    assert (rc, verdict) == (1, "FAILED"), out
    assert rows["kernels"][0] == "CUT" and rows["bench"][0] == "FAIL"


@pytest.mark.parametrize("res,rc,words", [
    (results(drop=["dropout_fwd_bw_frac"]), 0, "nothing was cut, but not measured: "
                                                "dropout_fwd_bw_frac (fcgpu skipped"),
    (results(course=False), 0, "course_wall_s"),
    (results(), 1, "exit status 1"),
])
def test_a_bench_step_missing_a_figure_or_erroring_fails(tmp_path, res, rc, words):
    """Mutant caught: a headline step that ran to its end without a summary figure (our
    kernel failed, say) read as ok."""
    rc_, rows, verdict, out = run_check(tmp_path, {"headline": bench_cmd(res, rc=rc)})
    assert (rc_, verdict) == (1, "FAILED"), out
    assert rows["headline"][0] == "FAIL" and words in rows["headline"][1], rows["headline"]


def test_chosen_steps_only_and_the_bench_takes_the_time_left(tmp_path):
    rc, rows, verdict, out = run_check(
        tmp_path,
        {"bench": bench_cmd(before='[ "$STEP_SECONDS" -ge 25 ] || { echo "bench got '
                                   '$STEP_SECONDS s"; exit 1; }; ')},
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
    cmds = {s: '%s; [ -z "${FCGPU_REQUIRE_GPU:-}" ] || exit 8\n%s' % (want_env, passing(s))
            for s in STEPS if s not in TEST_STEPS}
    for s in TEST_STEPS:
        cmds[s] = '%s; [ "${FCGPU_REQUIRE_GPU:-}" = 1 ] || exit 8\n%s' % (want_env, junit())
    rc, rows, verdict, out = run_check(tmp_path, cmds)
    assert (rc, verdict) == (0, "PASSED"), out


def test_out_holds_at_most_eight_plain_files(tmp_path):
    bench = bench_cmd(before='mkdir -p "$WORK/bench/raw" && echo x > "$WORK/bench/raw/k.json"; ')
    rc, rows, verdict, out = run_check(tmp_path, {"bench": bench})
    assert rc == 0, out
    files = list((tmp_path / "out").iterdir())
    assert all(f.is_file() for f in files) and len(files) <= 8
    assert {f.name for f in files} <= OUT_FILES
    assert {"bench-results.json", "bench-report.md", "bench.tar.gz"} <= {f.name for f in files}


def test_the_headlines_results_are_kept_before_the_rest_runs(tmp_path):
    """The headline's results reach $OUT at once: a later step that hangs or kills the
    run cannot take them."""
    rc, rows, verdict, out = run_check(tmp_path, {"warmup": 'cp "$OUT/bench-results.json" '
                                                            '"$WORK/seen.json" || exit 4; '
                                                            'cat "$WORK/seen.json"'})
    assert rc == 0 and rows["warmup"][0] == "ok", out
    assert '"fused_vs_unfused": 3.1' in out


# ----------------------------------------------------------------- sanitizers

DEVICE_NOT_SUPPORTED = "========= COMPUTE-SANITIZER\n========= Error: Device not supported"
INIT_999 = ('========= COMPUTE-SANITIZER\n========= Program hit cudaErrorUnknown (error 999) '
            'due to "unknown error" on CUDA API call to cudaGetDeviceCount.\n'
            '========= ERROR SUMMARY: 1 error')
TRACEBACK_999 = ("Traceback (most recent call last):\n"
                 "cupy_backends.cuda.api.runtime.CUDARuntimeError: cudaErrorUnknown: "
                 "unknown error")
REAL_ERRORS = ("========= COMPUTE-SANITIZER\n========= Invalid __global__ read of size 4 bytes\n"
               "=========     at fcgpu_flat<float, 0, true>+0x1d0\n"
               "========= ERROR SUMMARY: 3 errors")


@pytest.mark.parametrize("log,out,rc,status,words", [
    (DEVICE_NOT_SUPPORTED, "", 1, "UNAVAILABLE", "Error: Device not supported"),
    (INIT_999, TRACEBACK_999, 1, "UNAVAILABLE", "cudaErrorUnknown (error 999)"),
    ("", "========= Error: this version of the CUDA runtime is not supported", 255,
     "UNAVAILABLE", "CUDA runtime is not supported"),
    (REAL_ERRORS, "ok   dropout_forward float32 n1\n", 99, "FAIL",
     "Invalid __global__ read of size 4 bytes"),
    # error 999 after the smoke had started checking: the device broke, not the tool
    (INIT_999, "ok   dropout_forward float32 n1\n" + TRACEBACK_999, 1, "FAIL", "error"),
    ("========= ERROR SUMMARY: 0 errors", "all checks passed", 0, "ok", "0 errors"),
    # a false pass: exit 0 and nothing run
    ("========= ERROR SUMMARY: 0 errors", "", 0, "FAIL", "never said 'all checks passed'"),
    ("", "ok   x\nFAIL dropout_forward float32 n5\n1 check(s) FAILED", 1, "FAIL",
     "exit status 1"),
])
def test_sanitizer_statuses(log, out, rc, status, words):
    """Mutants caught: every non-zero exit read as FAIL (a machine whose sanitizer cannot
    run would fail the run); any 'unknown error' read as UNAVAILABLE (a crash in our
    kernels hidden); a sanitizer exit 0 that ran nothing read as ok."""
    st, detail = gcs.sanitizer_status(rc, log, out)
    assert (st, words in detail) == (status, True), (st, detail)


@pytest.mark.parametrize("log,rc,status,verdict", [
    (DEVICE_NOT_SUPPORTED, 1, "UNAVAILABLE", "INCOMPLETE"),
    (REAL_ERRORS, 99, "FAIL", "FAILED"),
])
def test_a_sanitizer_that_cannot_run_here_is_unavailable_not_fail(tmp_path, log, rc, status,
                                                                   verdict):
    rc_, rows, got, out = run_check(tmp_path, {"memcheck": sanitizer_cmd(log, "", rc)})
    assert rows["memcheck"][0] == status and got == verdict, out
    assert rc_ == {"INCOMPLETE": 2, "FAILED": 1}[verdict]
    if status == "UNAVAILABLE":
        assert rows["memcheck"][1] == "Error: Device not supported"
        assert "second call" not in out   # no time would make it run


# ----------------------------------------------------------------- the real script, no GPU

def test_on_a_machine_without_a_gpu_the_real_script_never_passes(tmp_path):
    """The real steps, no stand-ins, where CuPy cannot reach a GPU. Mutants caught: a
    step that cannot find a GPU reading ok (e.g. the bench measuring the CPU path
    instead), a verdict PASSED with nothing measured."""
    from fcgpu import backend
    if backend.cupy_status()[0]:
        pytest.skip("a GPU is here: bench/gpu_check.sh runs for real on it")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPU_CHECK_", "FCGPU_CHECK", "CUPY_CACHE", "NUMBA_CACHE"))
           and k not in ("STEPS", "OUT", "FCGPU_REQUIRE_GPU")}
    env.update(OUT=str(tmp_path / "out"), GPU_CHECK_CACHE=str(tmp_path / "cache"),
               PYTHON=sys.executable, TMPDIR=str(tmp_path))
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=600, cwd=str(tmp_path))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "PASSED" not in out, out[-3000:]
    assert re.search(r"^GPU CHECK: FAILED$", out, re.M), out[-3000:]
    for step in ("info", "smoke", "headline", "kernels", "bench"):
        assert re.search(r"^%s\s+FAIL\s" % step, out, re.M), (step, out[-3000:])
    assert "no usable GPU here" in out


# ----------------------------------------------------------------- the first call's schedule

def _plan(**env_extra):
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("GPU_CHECK_") or k == "STEPS")}
    env.update(GPU_CHECK_PLAN="1", **env_extra)
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_default_caps_fit_the_budget():
    text = _plan()
    assert "budget 390s" in text and "WARNING" not in text, text
    caps = dict(re.findall(r"^  (\w+) cap (\d+)s$", text, re.M))
    assert list(caps) == STEPS[:-1]  # the bench takes the time left
    m = re.search(r"fixed caps (\d+)s; needed (\d+)s of (\d+)s", text)
    assert int(m.group(1)) == sum(int(v) for v in caps.values())
    assert int(m.group(2)) <= int(m.group(3)) == 390


def first_call_schedule(plan_text):
    """From the script's plan and fcgpu/bench/schedule.py's estimates: each summary
    case's estimated end, in seconds from the start of the call, if every step before
    the headline used its whole cap; and the time each must end by (its phase's share
    of the headline's deadline). Returns (rows, budget, headline end)."""
    from fcgpu.bench import schedule
    budget = int(re.search(r"budget (\d+)s", plan_text).group(1))
    caps = [(s, int(c)) for s, c in re.findall(r"^  (\w+) cap (\d+)s$", plan_text, re.M)]
    names = [s for s, _ in caps]
    before = names[:names.index("headline")]
    start = sum(c for s, c in caps if s in before)
    deadline = int(re.search(r"--part headline --deadline (\d+)", plan_text).group(1))
    ends = schedule.phase_deadlines(deadline)
    rows, t = [], start
    for phase, items in schedule.phase_items():
        for what, secs in items:
            t += secs
            rows.append((phase, what, t, start + ends[phase]))
    return rows, budget, start + dict(caps)["headline"], before


def test_the_first_call_measures_every_summary_figure_in_its_budget():
    """Mutants caught: a summary case's estimate grown past its phase's share (e.g. the
    course's PyTorch run at 60 s); the headline's cap cut to 80 s; the headline moved
    after the test steps; a step before the headline capped below its estimate."""
    from fcgpu.bench import schedule
    rows, budget, headline_end, before = first_call_schedule(_plan())
    assert before == ["info", "smoke"], before          # the headline comes third
    late = ["%s: %s ends at %.0f s, its share ends at %.0f s" % (p, w, t, end)
            for p, w, t, end in rows if t > end + 1e-9]
    assert not late, late
    assert rows[-1][2] <= headline_end <= budget
    assert {p for p, _, _, _ in rows} == set(schedule.PHASES)
    caps = dict(re.findall(r"^  (\w+) cap (\d+)s$", _plan(), re.M))
    for step, est in schedule.STEP_ESTIMATES.items():
        assert est <= int(caps[step]), (step, est, caps[step])


def test_the_schedule_catches_a_case_that_does_not_fit():
    """The check itself can fail: the same plan with a 60 s headline cap leaves the course
    run out."""
    rows, _, _, _ = first_call_schedule(_plan(GPU_CHECK_CAP_headline="60"))
    assert any(t > end for _, _, t, end in rows)


def test_the_start_up_costs_are_written_down_where_people_read_them():
    from fcgpu.bench import schedule
    header = SCRIPT.read_text()
    readme = (REPO / "bench" / "README.md").read_text()
    for line in schedule.startup_lines():
        assert "#   " + line in header, line
        assert line in readme, line


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
