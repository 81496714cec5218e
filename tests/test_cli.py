"""The fcgpu command: help texts in plain text, and its error policy both ways.

The policy (``fcgpu/cli/__init__.py``): fcgpu's own errors (:class:`fcgpu.errors.FcgpuError`)
are the user's, one line on stderr and exit 2; anything else is a bug, its traceback,
a line asking for a report, and exit 1; ``FCGPU_DEBUG=1`` shows a user error's traceback
too; a subcommand whose module cannot be imported stays listed and says why when run.
"""
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import fcgpu.cli
from fcgpu import errors
from fcgpu.cli import BUG_REPORT, SUBCOMMANDS, build_parser, main

MARKUP = re.compile(r"``|:(func|class|meth|mod|attr|data):`")
REPO = Path(__file__).resolve().parents[1]


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    texts = {"fcgpu": capsys.readouterr().out}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        texts["fcgpu " + name] = p.format_help()
    assert {"fcgpu train", "fcgpu evaluate"} <= set(texts)
    assert set(texts) - {"fcgpu"} <= {"fcgpu " + n for n in SUBCOMMANDS}
    for name, text in texts.items():
        assert not MARKUP.search(text), "%s --help shows markup:\n%s" % (name, text)


# ------------------------------------------------------------------ the error policy

def plant(monkeypatch, run, name="planted"):
    """A subcommand ``name`` whose ``run`` is ``run`` (its module: a stand-in)."""
    mod = types.ModuleType("fcgpu_planted_" + name)
    mod.add_arguments = lambda p: p.add_argument("--flag", default=None)
    mod.run = run
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(SUBCOMMANDS, name, (mod.__name__, "a subcommand planted by a test"))
    monkeypatch.delenv("FCGPU_DEBUG", raising=False)


def deep(exc):
    """A run that raises ``exc`` three calls down (as a real failure would)."""
    def inner_most():
        raise exc

    def middle():
        inner_most()

    def run(args):
        middle()
    return run


USER_ERRORS = [errors.ConfigError("--epochs must be >= 1, got 0"),
               errors.DataError("labels out of range:\n found 0..12, expected 0..9"),
               errors.CheckpointError("the file is truncated", "/tmp/run.ckpt"),
               errors.CheckpointUnreadable("cannot read it: Is a directory", "/tmp"),
               errors.BackendUnavailable("backend 'cupy' is unavailable: no CUDA device"),
               errors.NonFiniteLossError("the loss is nan at step 3"),
               errors.StorageError("cannot write /ro/m.json: Read-only file system"),
               errors.StudyStorageError("cannot open the study storage x://u:***@h/db: "
                                        "refused", url="x://u:***@h/db"),
               errors.DeviceOutOfMemory("out of memory: asked 4 GiB, 1 GiB free"),
               errors.FcgpuError("the base class itself")]


@pytest.mark.parametrize("exc", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys, exc):
    """Mutants: the CLI printing the traceback of an FcgpuError, or exiting 1 for it;
    an error class that is not an FcgpuError; ``one_line`` not folding a newline."""
    plant(monkeypatch, deep(exc))
    assert main(["planted"]) == 2
    out, err = capsys.readouterr()
    assert err == "fcgpu planted: error: %s\n" % " ".join(str(exc).split())
    assert "Traceback" not in err and out == ""


def _singular():
    """NumPy raising deep inside a run: LinAlgError is a ValueError."""
    return np.linalg.inv(np.zeros((2, 2)))


BUGS = [ValueError("a ValueError nobody meant"), ZeroDivisionError("division by zero"),
        KeyError("W3"), TypeError("unsupported operand"), FileNotFoundError(2, "gone", "/x"),
        AttributeError("'NoneType' object has no attribute 'shape'"),
        RuntimeError("CUDA error")]


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: type(e).__name__)
def test_a_bug_shows_its_traceback_and_exit_1(monkeypatch, capsys, exc):
    """A plain exception is a bug, even a ValueError or an OSError. Mutants: the CLI
    catching ``(FcgpuError, ValueError, OSError)`` as the user's again (the ValueError
    and FileNotFoundError cases exit 2 with one line); no report line; exit 2."""
    plant(monkeypatch, deep(exc))
    assert main(["planted"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in inner_most" in err            # the frame where it happened
    assert "%s: " % type(exc).__name__ in err
    assert err.rstrip("\n").splitlines()[-1] == BUG_REPORT


def test_a_numpy_error_deep_in_a_real_subcommand_is_a_bug(monkeypatch, capsys, tmp_path):
    """The issue's case: NumPy raising ValueError (``LinAlgError``) deep inside a run of a
    real subcommand (here ``fcgpu search``'s run_search, swapped for one that inverts a
    singular matrix) prints its traceback and exits 1. Mutant: the CLI treating every
    ValueError as the user's (exit 2, one line, no traceback)."""
    pytest.importorskip("optuna")
    import fcgpu.search

    def run_search(settings, **kwargs):
        _singular()
    monkeypatch.setattr(fcgpu.search, "run_search", run_search)
    monkeypatch.delenv("FCGPU_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--n-trials", "1", "--backend", "numpy"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in _singular" in err
    assert "LinAlgError: Singular matrix" in err
    assert err.rstrip("\n").splitlines()[-1] == BUG_REPORT


def test_fcgpu_debug_shows_a_user_errors_traceback(monkeypatch, capsys):
    """``FCGPU_DEBUG=1``: the user error propagates (Python prints its traceback);
    ``FCGPU_DEBUG=0`` or empty: one line. Mutants: ignoring FCGPU_DEBUG; treating "0"
    as on (``os.environ.get`` alone)."""
    exc = errors.ConfigError("--epochs must be >= 1, got 0")
    plant(monkeypatch, deep(exc))
    monkeypatch.setenv("FCGPU_DEBUG", "1")
    with pytest.raises(errors.ConfigError) as info:
        main(["planted"])
    assert info.value is exc
    for off in ("0", ""):
        monkeypatch.setenv("FCGPU_DEBUG", off)
        assert main(["planted"]) == 2
    assert capsys.readouterr().err.count("error: --epochs must be >= 1") == 2


def _cli(args, **env):
    full = {k: v for k, v in os.environ.items() if k != "FCGPU_DEBUG"}
    full.update(PYTHONPATH=str(REPO), FCGPU_BACKEND="numpy", **env)
    return subprocess.run([sys.executable, "-m", "fcgpu.cli", *args], env=full,
                          capture_output=True, text=True, timeout=120)


def test_the_command_tells_a_user_error_in_one_line_or_with_fcgpu_debug(tmp_path):
    """The real command, in its own process: a checkpoint that is not there is one line
    and exit 2; with FCGPU_DEBUG=1 the same error shows its traceback (exit 1, Python's
    own). Mutants: the CLI ignoring FCGPU_DEBUG; checkpoint.load letting the missing
    file's OSError through (a bug's traceback and exit 1 without FCGPU_DEBUG; run on a
    copy of the tree, that file being another owner's)."""
    missing = str(tmp_path / "missing.ckpt")
    r = _cli(["evaluate", missing])
    assert r.returncode == 2, r.stderr
    assert r.stderr == ("fcgpu evaluate: error: checkpoint %s: cannot read it (No such file "
                        "or directory)\n" % missing)
    r = _cli(["evaluate", missing], FCGPU_DEBUG="1")
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):")
    assert re.search(r"^fcgpu\.errors\.Checkpoint\w*: checkpoint %s: cannot read it"
                     % re.escape(missing), r.stderr, re.M), r.stderr
    assert BUG_REPORT not in r.stderr


def _failing_import(monkeypatch, modname, exc):
    real = fcgpu.cli.importlib.import_module

    def import_module(name, *args):
        if name == modname:
            raise exc
        return real(name, *args)
    monkeypatch.setattr(fcgpu.cli.importlib, "import_module", import_module)
    monkeypatch.delenv("FCGPU_DEBUG", raising=False)


def test_a_subcommand_that_cannot_be_imported_stays_listed_and_says_why(monkeypatch, capsys):
    """A missing extra (``ModuleNotFoundError`` while importing ``fcgpu.cli.report``):
    ``fcgpu --help`` still lists ``report``, and running it is one line naming the module
    and the cause, exit 2. The others still work. Mutants: build_parser skipping the
    module that failed (argparse: "invalid choice", SystemExit); its run raising the
    ImportError (a bug's traceback, exit 1)."""
    _failing_import(monkeypatch, "fcgpu.cli.report",
                    ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"))
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = " ".join(capsys.readouterr().out.split())   # argparse wraps the lines
    assert ("report turn benchmark results JSON into a Markdown report (unavailable: "
            "cannot import fcgpu.cli.report) search ") in listed, listed
    assert " train train the CIFAR-10 net" in listed
    assert main(["report", "results.json", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err == ("fcgpu report: error: this subcommand cannot run: importing "
                   "fcgpu.cli.report failed (ModuleNotFoundError: No module named "
                   "'matplotlib'); reinstall fcgpu with the extras it needs\n")
    with pytest.raises(SystemExit) as info:   # the others parse as before
        main(["train", "--help"])
    assert info.value.code == 0


def test_a_subcommand_module_that_is_not_there(monkeypatch, capsys):
    """A table entry pointing to a module that does not exist: listed, one line, exit 2."""
    monkeypatch.setitem(SUBCOMMANDS, "ghost", ("fcgpu.cli._no_such_module", "a ghost"))
    monkeypatch.delenv("FCGPU_DEBUG", raising=False)
    assert "ghost" in build_parser().format_help()
    assert main(["ghost"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "No module named 'fcgpu.cli._no_such_module'" in err


def test_a_subcommand_whose_import_has_a_bug_is_a_bug_when_run(monkeypatch, capsys):
    """An import that fails with something else than ImportError (a NameError in the
    module: our bug) keeps the other subcommands working, and running that one shows
    the failure's traceback, the report line and exit 1. Mutants: build_parser catching
    only ImportError (every command dies in build_parser); the run telling it in one
    line like a missing extra."""
    _failing_import(monkeypatch, "fcgpu.cli.report", NameError("name 'xp' is not defined"))
    assert "report" in build_parser().format_help()
    assert main(["report", "r.json", "--out", "x"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "NameError: name 'xp' is not defined" in err
    assert err.rstrip("\n").splitlines()[-1] == BUG_REPORT
