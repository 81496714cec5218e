"""The ``fcgpu`` command: ``train``, ``bench``, ``report``, ``search``, ``convert-checkpoint``.

Each subcommand lives in its own module here with ``add_arguments(parser)`` and
``run(args) -> exit code``; heavy imports happen inside ``run``. Expected failures
(bad input, missing data, no GPU) end in one line on stderr and exit code 2, never
a traceback; ``FCGPU_DEBUG=1`` shows the traceback too.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

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


def build_parser():
    from .. import __version__
    parser = argparse.ArgumentParser(prog="fcgpu", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version="fcgpu " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, help_text) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _expected_errors():
    from ..backend import BackendUnavailable
    from ..solver import NonFiniteLossError
    return (BackendUnavailable, NonFiniteLossError, ValueError, OSError)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("fcgpu: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as exc:
        if os.environ.get("FCGPU_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print("fcgpu %s: error: %s" % (args.command, msg), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
