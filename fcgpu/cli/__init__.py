"""The ``fcgpu`` command: ``train``, ``bench``, ``report``, ``search``, ``convert-checkpoint``.

Each subcommand lives in its own module here with ``add_arguments(parser)`` and
``run(args) -> exit code``; heavy imports happen inside ``run``.

The error policy: fcgpu's own errors (:class:`fcgpu.errors.FcgpuError`: bad input,
missing data, no GPU, a checkpoint that does not fit) end in one line on stderr and
exit code 2, never a traceback (``FCGPU_DEBUG=1`` shows it too). Anything else is a
bug: its traceback, a line asking for a report, and exit code 1. A subcommand whose
module cannot be imported (a missing extra: ``ImportError``) stays listed, and says why
in one line when it is run; one whose module fails otherwise (a bug) stays listed too,
and running it shows that failure as a bug.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

# --help shows plain text (the module docstring is reStructuredText)
DESCRIPTION = "fcgpu: train fully-connected nets on NVIDIA GPUs (CuPy) or the CPU (NumPy)."

SUBCOMMANDS = {
    "train": ("fcgpu.cli.train", "train the CIFAR-10 net (a named recipe, --preset; every flag "
              "overrides it)"),
    "evaluate": ("fcgpu.cli.evaluate", "test accuracy and confusion matrix of a checkpoint"),
    "bench": ("fcgpu.cli.bench", "run the benchmark suites that fit this machine"),
    "report": ("fcgpu.cli.report", "turn benchmark results JSON into a Markdown report"),
    "search": ("fcgpu.cli.search", "hyperparameter search with Optuna"),
    "convert-checkpoint": ("fcgpu.cli.convert_checkpoint",
                           "rewrite a pickle checkpoint of an earlier fcgpu (needs --trust)"),
}


def _unavailable(name, modname, exc):
    """The run of a subcommand whose module failed to import.

    An ``ImportError`` (a package the module needs is missing) is the user's to fix:
    one line saying why. Anything else the import raised is a bug: running the
    subcommand raises it again, with the traceback of the import."""
    why = "%s: %s" % (type(exc).__name__, exc)

    def run(args):
        from ..errors import FcgpuError
        if not isinstance(exc, ImportError):
            raise exc
        raise FcgpuError("this subcommand cannot run: importing %s failed (%s); reinstall "
                         "fcgpu with the extras it needs" % (modname, why)) from exc
    return run


def debugging():
    """Whether ``FCGPU_DEBUG`` asks for tracebacks of user errors too (set, and not
    ``0``)."""
    return os.environ.get("FCGPU_DEBUG", "").strip() not in ("", "0")


def build_parser():
    from .. import __version__
    parser = argparse.ArgumentParser(prog="fcgpu", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version="fcgpu " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, help_text) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except Exception as exc:  # listed all the same; its run says why (_unavailable)
            p = sub.add_parser(name, help=help_text + " (unavailable: cannot import %s)"
                               % modname, description=help_text)
            p.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(_run=_unavailable(name, modname, exc))
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


BUG_REPORT = ("fcgpu: this is a bug in fcgpu, not a problem with your input; please report "
              "it with the traceback above, the command line and `fcgpu --version`")


def command_words(argv=None):
    """The words of the command line that ran: ``fcgpu`` and ``argv`` when given, else
    the process's own (``python -m fcgpu.cli`` as the interpreter that runs it, so the
    words run the same fcgpu again)."""
    if argv is not None:
        return ["fcgpu", *argv]
    prog = ["fcgpu"]
    if os.path.basename(sys.argv[0]) == "__main__.py":
        prog = [sys.executable, "-m", "fcgpu.cli"]
    return prog + sys.argv[1:]


def main(argv=None):
    from ..errors import FcgpuError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    args.command_words = command_words(argv)  # (fcgpu train prints how to resume)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as exc:  # (fcgpu train tells its own, with how to resume)
        print("fcgpu: interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except FcgpuError as exc:
        if debugging():
            raise
        msg = str(exc) or type(exc).__name__
        print("fcgpu %s: error: %s" % (args.command, msg), file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(BUG_REPORT, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
