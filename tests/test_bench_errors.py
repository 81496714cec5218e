"""``fcgpu bench`` and ``fcgpu report`` tell every error of their input in one line with
exit status 2 (fcgpu's own error types), never a traceback: bad flags, results files that
are unreadable, not JSON, not fcgpu's or malformed, and a GPU part without a GPU. A bug
(here a planted one) still shows its traceback and exits 1."""
from __future__ import annotations

import json

import pytest

from fcgpu.cli import main
from test_report import CPU_MACHINE, _kcase, _raw

pytest.importorskip("pytest_benchmark")


def _results(tmp_path, **change):
    from fcgpu.bench.results import build_results
    res = build_results([_raw([_kcase("copy", (1 << 16,), {"numba": 1e-5})])],
                        machine=CPU_MACHINE)
    res.update(change)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(res))
    return str(p)


@pytest.fixture
def no_suites(monkeypatch):
    """A suite's pytest run would start after the flags passed: none may."""
    import subprocess

    def call(cmd, **kw):
        raise AssertionError("a suite was started: %s" % cmd)
    monkeypatch.setattr(subprocess, "call", call)


def _one_line_error(capsys, argv, words):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    said = [ln for ln in err.splitlines() if ln.startswith("fcgpu %s: error: " % argv[0])]
    assert len(said) == 1 and words in said[0], err


@pytest.mark.parametrize("argv,words", [
    (["--deadline", "0"], "--deadline must be positive"),
    (["--budget", "-1"], "--budget must be positive"),
    (["--course-backends", "numpy,cuda"], "--course-backends: unknown backend cuda"),
    (["--variants", "fcgpu,fcgpuu"], "--variants: unknown variant fcgpuu"),
])
def test_bench_flags(tmp_path, capsys, no_suites, argv, words):
    """Mutants caught: --budget and --variants unchecked (a typo measured nothing)."""
    _one_line_error(capsys, ["bench", "--out", str(tmp_path / "o")] + argv, words)


@pytest.mark.parametrize("argv,words", [
    (["--pad", "-1"], "--pad must be >= 0"),
    (["--profile-seconds", "0"], "--profile-seconds must be positive"),
    (["--profile-net", "3,x"], "--profile-net '3,x'"),
])
def test_profile_flags(capsys, argv, words):
    _one_line_error(capsys, ["bench", "--profile", "--rounds", "3"] + argv, words)


@pytest.mark.parametrize("part", ["headline", "rest"])
def test_a_gpu_part_without_a_gpu(tmp_path, capsys, monkeypatch, no_suites, part):
    """Mutant caught: --part headline on a CPU machine ran and wrote a results file with
    every summary figure missing."""
    from fcgpu import backend
    monkeypatch.setattr(backend, "cupy_status", lambda: (False, "no CUDA device here"))
    _one_line_error(capsys, ["bench", "--out", str(tmp_path / "o"), "--part", part],
                    "there is no GPU backend here: no CUDA device here")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,words", [
    ("{", "cannot be read (Expecting property name"),
    ("[1, 2]", "is from --part all"),
    (json.dumps({"settings": {"part": "all"}}), "is from --part all"),
])
def test_rest_after_an_unreadable_headline(tmp_path, capsys, monkeypatch, content, words):
    """Mutant caught: a results.json that is JSON but not an object read with .get (an
    AttributeError, a traceback)."""
    from fcgpu import backend
    from fcgpu.bench import machine
    monkeypatch.setattr(backend, "cupy_status", lambda: (True, None))
    monkeypatch.setattr(machine, "machine_info", lambda: dict(CPU_MACHINE))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.json").write_text(content)
    _one_line_error(capsys, ["bench", "--out", str(tmp_path / "o"), "--part", "rest"],
                    "--part rest adds to a --part headline run")
    _one_line_error(capsys, ["bench", "--out", str(tmp_path / "o"), "--part", "rest"], words)


def test_report_inputs(tmp_path, capsys):
    """Mutants caught: a missing file or an unreadable --notes raising OSError (a
    traceback); a kernel row without its keys read as a KeyError deep in the page."""
    pytest.importorskip("matplotlib")
    out = ["--out", str(tmp_path / "rep")]
    _one_line_error(capsys, ["report", str(tmp_path / "missing.json")] + out,
                    "missing.json cannot be read")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    _one_line_error(capsys, ["report", str(bad)] + out, "is not JSON")
    bad.write_text(json.dumps({"format": "something-else"}))
    _one_line_error(capsys, ["report", str(bad)] + out, "is not an fcgpu results file")
    good = _results(tmp_path)
    res = json.loads(open(good).read())
    del res["kernels"][0]["gbps"]
    bad.write_text(json.dumps(res))
    _one_line_error(capsys, ["report", str(bad)] + out, "kernels[0] lacks gbps")
    bad.write_text(json.dumps(dict(res, kernels={"copy": 1})))
    _one_line_error(capsys, ["report", str(bad)] + out, "'kernels' is a dict, not a list")
    _one_line_error(capsys, ["report", good, "--notes", str(tmp_path / "no.md")] + out,
                    "--notes %s cannot be read" % (tmp_path / "no.md"))
    (tmp_path / "file").write_text("")
    _one_line_error(capsys, ["report", good, "--out", str(tmp_path / "file" / "x")],
                    "cannot make the folder")
    assert main(["report", good] + out) == 0


def test_a_planted_bug_still_shows_its_traceback(tmp_path, capsys, monkeypatch):
    """The other way round: an error that is not the user's (a KeyError planted in the
    page's rendering) is a bug: traceback, exit 1."""
    pytest.importorskip("matplotlib")
    from fcgpu.bench import report

    def broken(*a, **k):
        return {}["planted"]
    monkeypatch.setattr(report, "render", broken)
    assert main(["report", _results(tmp_path), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'planted'" in err and "this is a bug" in err
