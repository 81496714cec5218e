"""pytest plugin and JUnit summary for ``bench/gpu_check.sh``'s GPU test steps.

As a plugin (``pytest -p bench.gpu_check_pytest``): a test not started by the Unix
time in ``$FCGPU_CHECK_DEADLINE`` is skipped with :data:`OUT_OF_TIME`, so a step
that runs out of time still ends normally, writes its JUnit XML and says which
tests it did not get to.

As a script (``python bench/gpu_check_pytest.py RC JUNIT_XML``): one line,
``STATUS detail``, for the step that exited with ``RC`` and wrote ``JUNIT_XML``:

* ``ok``      tests ran and none failed (some may have skipped for other reasons:
              listed, e.g. a GPU with too little memory for the 2^32-element tests);
* ``FAIL``    a test failed or errored, or pytest itself failed;
* ``CUT``     no failure, but tests were skipped because the step's time ran out;
* ``NOTESTS`` nothing ran: no test collected, or every one skipped (no CuPy, no
              device) — a GPU test step that tested nothing is not a pass.
"""
from __future__ import annotations

import os
import sys
import time
import xml.etree.ElementTree as ET

import pytest

OUT_OF_TIME = "gpu_check: the step's time ran out before this test"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before skipif marks and fixtures: a test not started in time costs nothing and
    is reported as cut (tests/conftest.py keeps it a skip under FCGPU_REQUIRE_GPU=1)."""
    deadline = os.environ.get("FCGPU_CHECK_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip(OUT_OF_TIME)


def summarize(rc, junit_path):
    """``(status, detail)`` of a GPU test step (see the module docstring)."""
    try:
        root = ET.parse(junit_path).getroot()
    except (OSError, ET.ParseError) as exc:
        if rc == 5:
            return "NOTESTS", "no test collected"
        return "FAIL", "pytest exited %d without a readable JUnit report (%s)" % (rc, exc)
    passed = failed = 0
    skips = {}
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            continue
        sk = case.find("skipped")
        if sk is not None:
            why = (sk.get("message") or sk.text or "").strip().splitlines()[0:1]
            why = why[0] if why else "?"
            skips[why] = skips.get(why, 0) + 1
            continue
        passed += 1
    nskip = sum(skips.values())
    out_of_time = sum(n for why, n in skips.items() if OUT_OF_TIME in why)
    detail = "%d passed, %d failed, %d skipped" % (passed, failed, nskip)
    if skips:
        top = sorted(skips.items(), key=lambda kv: -kv[1])[:3]
        detail += " (%s)" % "; ".join("%d: %s" % (n, why[:120]) for why, n in top)
    if failed or rc not in (0, 1, 5):
        return "FAIL", detail if failed else "pytest exited %d; %s" % (rc, detail)
    if rc == 1:
        return "FAIL", "pytest exited 1; " + detail
    if out_of_time:
        return "CUT", detail
    if passed == 0:
        return "NOTESTS", detail
    return "ok", detail


def main(argv):
    if len(argv) != 3:
        print("usage: gpu_check_pytest.py RC JUNIT_XML", file=sys.stderr)
        return 2
    status, detail = summarize(int(argv[1]), argv[2])
    print(status, detail)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
