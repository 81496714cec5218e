"""``fcgpu convert-checkpoint --trust OLD NEW``: rewrite a checkpoint pickled by an
earlier fcgpu in the current format (a safetensors file)."""
from __future__ import annotations

import argparse

EPILOG = """\
Earlier fcgpu versions saved checkpoints with pickle. Loading a pickle runs the
code it names, so a pickle from an untrusted source can do anything on your
machine; fcgpu train --resume and Solver.load_checkpoint refuse them.

Convert only a file you trust (one you wrote yourself, or from someone you trust).
Even then it is read with an unpickler that rebuilds NumPy arrays and plain
values only, and refuses anything else. OLD is not changed; NEW is written
atomically and holds arrays and plain data only.

Example:
  fcgpu convert-checkpoint --trust run.ckpt run.safetensors
  fcgpu train --checkpoint run.safetensors --resume
"""


def add_arguments(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("old", metavar="OLD", help="the pickle checkpoint (only read)")
    p.add_argument("new", metavar="NEW", help="where to write the converted checkpoint")
    p.add_argument("--trust", action="store_true",
                   help="confirm that you trust OLD: reading it means unpickling it")


def run(args):
    from ..errors import ConfigError
    if not args.trust:
        raise ConfigError("%s is read by unpickling it, and a pickle from an untrusted source "
                         "can run code; if you trust this file, run again with --trust"
                         % args.old)
    from ..checkpoint import convert_pickle
    state = convert_pickle(args.old, args.new)
    print("fcgpu convert-checkpoint: wrote %s (epoch %s)" % (args.new, state.get("epoch")))
    return 0
