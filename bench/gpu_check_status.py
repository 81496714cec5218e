"""The status of one ``bench/gpu_check.sh`` step, from what it left behind.

``python bench/gpu_check_status.py STEP RC OUT WORK`` prints one line, ``STATUS
detail``, for step STEP that exited with RC (a hard stop at the step's cap, 124 or
137, is decided by the script itself: CUT). Statuses:

* ``ok``          the step ran to its end and passed;
* ``FAIL``        something is wrong with fcgpu or the run: a test failed, the smoke
                  found a mismatch, a sanitizer reported an error, a summary figure is
                  missing although nothing was cut, a command failed;
* ``CUT``         time ran out: the step was stopped at its cap, its tests were not
                  all started, or the bench's --deadline cut cases (results.json says
                  ``complete: false``);
* ``UNAVAILABLE`` the tool cannot run on this machine (compute-sanitizer: device not
                  supported, error 999 at initialization, a runtime it refuses), with
                  the tool's own message;
* ``NOTESTS``     a GPU test step that tested nothing (no CuPy, no device).

The script adds ``SKIPPED`` (not started: too little time, or the tool is missing).
The verdict: FAIL makes the run FAILED; everything but ok makes it INCOMPLETE.

What each step is judged by: kernels, graph: their JUnit XML in OUT
(``summarize`` in gpu_check_pytest.py); memcheck, racecheck: ``OUT/sanitizer-STEP.log``
and the step's output ``WORK/out-STEP.log`` (:func:`sanitizer_status`); headline,
bench: ``WORK/bench/results.json`` (:func:`bench_status`); the others: their exit
status, with the last line they printed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

STATUSES = ("ok", "FAIL", "CUT", "UNAVAILABLE", "NOTESTS")

# compute-sanitizer cannot run here: its own refusals, and CUDA failing to initialize
# under it (error 999, "unknown error") before the smoke checked anything
UNAVAILABLE = [re.compile(p, re.I) for p in (
    r"device (is )?not supported", r"internal sanitizer error",
    r"unsupported (device|gpu|architecture|driver|cuda (driver|runtime)|runtime)",
    r"(driver|runtime)( version)? .*(is )?not supported",
    r"(sanitizer|tool) (failed|unable) to (initiali[sz]e|attach|start)")]
INIT_FAILURE = [re.compile(p, re.I) for p in (
    r"error 999\b", r"cudaErrorUnknown", r"CUDA_ERROR_UNKNOWN", r"\bunknown error\b")]
# what a sanitizer prints for a real error in our kernels
REAL_ERROR = [re.compile(p, re.I) for p in (
    r"invalid __(global|shared|local)__", r"race reported", r"\bhazard\b.*(between|at)",
    r"out of bounds", r"misaligned address", r"leaked \d+ bytes", r"uninitiali[sz]ed .*access")]
SUMMARY = re.compile(r"(ERROR|RACECHECK) SUMMARY: (\d+) (error|hazard)", re.I)


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _clean(line):
    return re.sub(r"^=+\s*", "", line.strip())[:200]


def _first(patterns, lines):
    for ln in lines:
        if any(p.search(ln) for p in patterns):
            return _clean(ln)
    return None


def _last_line(text):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def sanitizer_status(rc, log_text, out_text):
    """``(status, detail)`` of a compute-sanitizer step: its log (``--log-file``) and
    the output of the smoke it ran."""
    lines = log_text.splitlines() + out_text.splitlines()
    real = _first(REAL_ERROR, lines)
    errors = sum(int(m.group(2)) for m in SUMMARY.finditer(log_text + "\n" + out_text))
    started = any(ln.startswith(("ok   ", "FAIL ")) for ln in out_text.splitlines())
    if real:
        return "FAIL", "%s (exit %d)" % (real, rc)
    unavailable = _first(UNAVAILABLE, lines)
    if unavailable is None and not started:
        unavailable = _first(INIT_FAILURE, lines)
    if unavailable and rc != 0:
        return "UNAVAILABLE", unavailable
    if rc == 0 and errors == 0:
        if "all checks passed" in out_text:
            return "ok", "0 errors; the smoke passed under the sanitizer"
        return "FAIL", "exit 0, but the smoke never said 'all checks passed' under it"
    summary = SUMMARY.search(log_text + "\n" + out_text)
    what = _clean(summary.group(0)) if summary else _last_line(out_text or log_text)
    return "FAIL", "exit status %d: %s" % (rc, what)


def bench_status(rc, results_path, out_text=""):
    """``(status, detail)`` of the headline or bench step: its results.json (and the
    last line it printed, where it wrote none)."""
    try:
        with open(results_path) as f:
            res = json.load(f)
    except (OSError, ValueError) as exc:
        return "FAIL", "exit status %d, no readable results.json (%s): %s" % (
            rc, type(exc).__name__, _last_line(out_text))
    from fcgpu.bench.results import headline_figures
    st = res.get("settings") or {}
    figs = headline_figures(res)
    have = "; ".join("%s %s" % (k, "%.3g" % v) for k, (v, _) in figs.items() if v is not None)
    if rc != 0:
        failed = "; ".join("%s: %s" % kv for kv in (st.get("suites_failed") or {}).items())
        return "FAIL", "exit status %d%s" % (rc, "; " + failed if failed else "")
    if not st.get("complete"):
        cut = "; ".join(st.get("cut") or []) or "; ".join(
            "%s: %s" % kv for kv in (st.get("suites_failed") or {}).items()) or "?"
        return "CUT", "cut: %s%s" % (cut[:300], " | measured: " + have if have else "")
    missing = ["%s (%s)" % (k, why) for k, (v, why) in figs.items() if v is None
               and (k != "course_wall_s" or st.get("course_wall") or st.get("part") in
                    ("headline", "rest"))]
    if missing:
        return "FAIL", "nothing was cut, but not measured: " + "; ".join(missing)[:400]
    return "ok", have


def _junit_summary(rc, path):
    """bench/gpu_check_pytest.py's :func:`summarize`, loaded from beside this file."""
    spec = importlib.util.spec_from_file_location("gpu_check_pytest",
                                                  os.path.join(HERE, "gpu_check_pytest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.summarize(rc, path)


def step_status(step, rc, out_dir, work):
    if step in ("kernels", "graph"):
        return _junit_summary(rc, os.path.join(out_dir, "junit-%s.xml" % step))
    out_text = _read(os.path.join(work, "out-%s.log" % step))
    if step in ("memcheck", "racecheck"):
        return sanitizer_status(rc, _read(os.path.join(out_dir, "sanitizer-%s.log" % step)),
                                out_text)
    if step in ("headline", "bench"):
        return bench_status(rc, os.path.join(work, "bench", "results.json"), out_text)
    if rc == 0:
        return "ok", ""
    return "FAIL", "exit status %d: %s" % (rc, _last_line(out_text))


def main(argv):
    if len(argv) != 5:
        print("usage: gpu_check_status.py STEP RC OUT WORK", file=sys.stderr)
        return 2
    try:
        rc = int(argv[2])
    except ValueError:
        print("gpu_check_status.py: RC must be an integer, got %r" % argv[2], file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(HERE))  # fcgpu, for the bench steps' results
    status, detail = step_status(argv[1], rc, argv[3], argv[4])
    print(status, detail)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
