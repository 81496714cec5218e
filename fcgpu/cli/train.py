"""``fcgpu train``: CIFAR-10 from a named recipe (``--preset``), progress, metrics, plot,
checkpoints and resume.

Faults around a run (README, ``fcgpu train``): SIGINT or SIGTERM stops it at a step's
end (:class:`StopSignals`) with the command that resumes it, exit 130 or 143; a file
that cannot be written is one line naming it and the cause (exit 2), and the results
are not lost: a checkpoint that cannot be written stops the run with the result so far
and the previous checkpoint intact; metrics and plots that cannot be written go to the
temp folder instead."""
from __future__ import annotations

import contextlib
import shlex
import signal
import sys


def _dims(text):
    from ..errors import ConfigError
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise ConfigError("--hidden takes sizes like 500,500,500, got %r" % text) from None
    return dims


def add_arguments(p):
    from ..augment_spec import MODES
    from ..mix_spec import MIX_MODES
    from ..optim import rule_names
    from ..schedules import SCHEDULES
    from ..train import DEFAULT_PRESET, PRESETS, TrainConfig, describe_preset
    d = TrainConfig()  # the course's run
    # every default is None: the preset fills what the command line leaves out
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="the recipe to start from; flags override it (default %s; with "
                        "--data FILE.npz, course: the presets are CIFAR-10 recipes). "
                        % DEFAULT_PRESET
                        + "; ".join(("%s: %s" % (n, describe_preset(n))).replace("%", "%%")
                                    for n in PRESETS))
    g = p.add_argument_group("network")
    g.add_argument("--hidden", default=None,
                   help="hidden layer sizes (course: %s)" % ",".join(map(str, d.hidden_dims)))
    g.add_argument("--weight-scale", type=float, default=None,
                   help="std of the initial weights (course: %s)" % d.weight_scale)
    g.add_argument("--batchnorm", action=_BoolAction, default=None,
                   help="batch normalization after each hidden affine (course: on; "
                        "--no-batchnorm turns it off)")
    g.add_argument("--dropout", type=float, default=None,
                   help="dropout KEEP probability; 1 disables (course: %s)" % d.dropout)
    g.add_argument("--reg", type=float, default=None, help="L2 strength (course: %s)" % d.reg)
    g.add_argument("--label-smoothing", type=float, default=None,
                   help="softmax targets (1-e)*onehot + e/C (course: 0)")
    g = p.add_argument_group("optimization")
    g.add_argument("--update-rule", default=None, choices=rule_names(),
                   help="optimizer (course: %s)" % d.update_rule)
    g.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float,
                   default=None, help="learning rate, the peak of cosine/onecycle (course: %s)"
                   % d.learning_rate)
    g.add_argument("--lr-decay", type=float, default=None,
                   help="learning-rate factor per epoch, --schedule step (course: %s)"
                   % d.lr_decay)
    g.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="learning-rate schedule (course: step, i.e. --lr-decay per epoch)")
    g.add_argument("--warmup-epochs", type=float, default=None,
                   help="cosine: linear warmup epochs (default 0); onecycle: the epoch of "
                        "the peak (default 0.3 of the run)")
    g.add_argument("--ema", dest="ema_decay", type=float, default=None, metavar="DECAY",
                   help="evaluate and keep an exponential moving average of the weights "
                        "(and batchnorm statistics), updated after every step with this "
                        "decay in (0, 1), e.g. 0.999 (course: off)")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--num-train", type=int, default=None,
                   help="train on the first M training examples (default: all; the 49000 "
                        "CIFAR-10 training images)")
    g.add_argument("--seed", type=int, default=None)
    g = p.add_argument_group("augmentation")
    g.add_argument("--augment", default=None, choices=MODES,
                   help="per-sample random flips, or crops (with flips), made in the "
                        "minibatch gather (course: none)")
    g.add_argument("--pad", type=int, default=None,
                   help="crop padding in pixels per side (default %d)" % d.pad)
    g.add_argument("--mix", default=None, choices=MIX_MODES,
                   help="MixUp or CutMix of each row with the batch reversed, after the flips "
                        "and crops (course: none; docs/random.md)")
    g.add_argument("--mix-alpha", type=float, default=None, metavar="A",
                   help="the mixing weight is drawn from Beta(A, A) (default %g)" % d.mix_alpha)
    _where_and_output(p)


def _where_and_output(p):
    """The arguments that say where a run computes and what it writes."""
    from ..backend import CHOICES as BACKENDS, MATMUL_PRECISIONS
    from ..settings import DTYPES
    g = p.add_argument_group("where")
    g.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="array backend (default: FCGPU_BACKEND, else auto)")
    g.add_argument("--data", default=None,
                   help="CIFAR-10 archive or folder (default: FCGPU_DATA, the cache, "
                        "else download), or your own data as FILE.npz (see docs/data.md)")
    g.add_argument("--dtype", default=None, choices=DTYPES)
    g.add_argument("--cuda-graph", action="store_true", default=None,
                   help="capture the whole training step as one CUDA graph and replay it "
                        "(GPU backend only; same results, fewer launches)")
    g.add_argument("--matmul-precision", default=None, choices=MATMUL_PRECISIONS,
                   help="float32 matrix products: highest (float32, the default) or high "
                        "(TF32 on GPUs of compute capability 8.0 and later; on the NumPy "
                        "backend it changes nothing)")
    g = p.add_argument_group("output")
    g.add_argument("--metrics", metavar="FILE.json", help="write the run's metrics as JSON")
    g.add_argument("--plot", metavar="FILE.png", help="plot loss and accuracy per epoch")
    g.add_argument("--checkpoint", metavar="FILE",
                   help="save the full training state atomically after every epoch")
    g.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")


class _BoolAction:
    """--flag / --no-flag (argparse.BooleanOptionalAction, spelled out for 3.8 too)."""

    def __new__(cls, option_strings, dest, **kw):
        import argparse
        return argparse.BooleanOptionalAction(option_strings, dest, **kw)


def preset_of(args):
    """--preset, else the default preset for CIFAR-10 and ``course`` for an .npz (the
    presets' augmentation and schedule are tuned for CIFAR-10 images)."""
    from ..data_npz import is_npz
    from ..train import DEFAULT_PRESET
    if args.preset:
        return args.preset
    return "course" if is_npz(args.data) else DEFAULT_PRESET


def config_from_args(args):
    import os
    from ..train import from_preset
    backend = args.backend
    if backend == "auto" and os.environ.get("FCGPU_BACKEND"):
        backend = os.environ["FCGPU_BACKEND"]
    return from_preset(preset_of(args), hidden_dims=args.hidden and _dims(args.hidden),
                       weight_scale=args.weight_scale, batchnorm=args.batchnorm,
                       dropout=args.dropout, reg=args.reg, update_rule=args.update_rule,
                       learning_rate=args.learning_rate, lr_decay=args.lr_decay,
                       batch_size=args.batch_size, epochs=args.epochs, num_train=args.num_train,
                       seed=args.seed, backend=backend, data=args.data, dtype=args.dtype,
                       cuda_graph=args.cuda_graph, matmul_precision=args.matmul_precision,
                       augment=args.augment, pad=args.pad, mix=args.mix,
                       mix_alpha=args.mix_alpha,
                       label_smoothing=args.label_smoothing, schedule=args.schedule,
                       warmup_epochs=args.warmup_epochs, ema_decay=args.ema_decay)


def run(args):
    from ..atomic import check_writable
    from ..errors import ConfigError, RunInterrupted, StorageError, TrainingStopped
    from ..train import run_training
    if args.resume and not args.checkpoint:
        raise ConfigError("--resume needs --checkpoint FILE")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'fcgpu[plot]'") from None
    cfg = config_from_args(args)
    for path in (args.checkpoint, args.metrics, args.plot):
        if path:  # a folder that refuses files: said now, before anything is trained
            check_writable(path)
    problems, metrics, saved = [], None, None
    try:
        with StopSignals() as stop:
            try:
                metrics = run_training(cfg, checkpoint=args.checkpoint, resume=args.resume,
                                       progress=not args.quiet and sys.stderr.isatty(),
                                       verbose=not args.quiet, stop=stop)
                saved = metrics["epochs"] if args.checkpoint else None
            except TrainingStopped as exc:  # the checkpoint could not be written
                metrics, saved = exc.metrics, exc.saved_epoch
                problems.append("%s; once it can be written, resume with: %s"
                                % (exc, _command(args, resume=True)))
            _print_quiet(args, metrics)
            with stop.deferred():  # (the files are whole or not there; then a signal)
                problems += write_outputs(args, metrics)
    except RunInterrupted as exc:
        if exc.epoch is None and metrics is not None:  # (training was over)
            exc.epoch, exc.epochs, exc.saved_epoch = metrics["epochs"], cfg.epochs, saved
        print("fcgpu train: " + interrupted_message(args, exc), file=sys.stderr)
        return exc.exit_code
    if problems:
        raise StorageError("; ".join(problems))
    return 0


def _print_quiet(args, metrics):
    if args.quiet:
        test = metrics["test_acc"]  # None for an .npz without a test split
        print("val_acc %.4f test_acc %s" % (metrics["val_acc"],
                                            "n/a" if test is None else "%.4f" % test))


# ------------------------------------------------------------- signals

class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM during ``fcgpu train``: a context manager that
    installs their handler and puts the previous ones back.

    Outside :meth:`deferred` a signal raises :class:`~fcgpu.errors.RunInterrupted`
    where it lands (loading data, computing the results: nothing is half-written,
    since every file is written atomically). Inside (while the Solver trains, while the
    results are written), the first signal is only noted: the step or the file in
    progress finishes, and :meth:`check` (after every step, after each epoch's
    checkpoint) or the end of the section raises. A second signal raises at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._deferring = 0
        self._previous = {}

    def __enter__(self):
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc_info):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        from ..errors import RunInterrupted
        first = self.signum is None
        if first:
            self.signum = signum
        if not (first and self._deferring):
            raise RunInterrupted(self.signum)

    def check(self):
        """Raise :class:`~fcgpu.errors.RunInterrupted` if a signal came."""
        from ..errors import RunInterrupted
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    @contextlib.contextmanager
    def deferred(self):
        """A section that a first signal does not cut; it raises at the end."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1
        self.check()


def _command(args, resume=False, checkpoint=None):
    """The command line that ran, shell-quoted, with ``--resume`` (when ``resume`` and
    it was not there) or ``--checkpoint FILE`` added."""
    words = list(getattr(args, "command_words", None) or ["fcgpu", "train"])
    if resume and not args.resume:
        words.append("--resume")
    if checkpoint:
        words += ["--checkpoint", checkpoint]
    return shlex.join(words)


def interrupted_message(args, exc):
    """One line: which signal, where the run was, what the checkpoint holds, and the
    command that resumes it (or, without --checkpoint, one that would save)."""
    if exc.epoch is None:
        where = "before training started"
    elif exc.epochs is not None and exc.epoch >= exc.epochs:
        where = "after the last epoch (%d/%d)" % (exc.epoch, exc.epochs)
    else:
        where = "during epoch %d%s; the epoch in progress was dropped" % (
            exc.epoch + 1, "" if exc.epochs is None else "/%d" % exc.epochs)
    head = "interrupted by %s %s" % (exc.signal_name, where)
    if not args.checkpoint:
        return ("%s; nothing was saved (no --checkpoint): to make a run resumable, give it "
                "a checkpoint file, e.g.: %s" % (head, _command(args, checkpoint="train.ckpt")))
    if exc.saved_epoch is None:
        return ("%s; no epoch of this run was saved to %s yet, so resuming starts over; "
                "resume with: %s" % (head, args.checkpoint, _command(args, resume=True)))
    return "%s; %s holds epoch %d; resume with: %s" % (
        head, args.checkpoint, exc.saved_epoch, _command(args, resume=True))


# ------------------------------------------------------------- outputs

def write_outputs(args, metrics):
    """Write --metrics and --plot. A write the system refuses (a full disk, a
    read-only folder) goes to a new file in the temp folder instead; returns one line
    per refused write, naming the file, the cause and where it went."""
    from ..errors import StorageError
    problems = []
    for path, what, write in ((args.metrics, "metrics", write_metrics),
                              (args.plot, "plot", plot_history)):
        if not path:
            continue
        try:
            write(metrics, path)
        except StorageError as exc:
            problems.append("%s; %s" % (exc, _fallback(write, metrics, path, what)))
    return problems


def _fallback(write, metrics, path, what):
    """Write ``what`` to a new file in the temp folder; says where it went (the
    metrics are printed on stdout when that fails too)."""
    import json
    import os
    import tempfile
    stem, ext = os.path.splitext(os.path.basename(path))
    spare = None
    try:
        fd, spare = tempfile.mkstemp(prefix="fcgpu-%s-" % stem, suffix=ext)
        os.close(fd)
        write(metrics, spare)
        return "the %s went to %s instead" % (what, spare)
    except OSError as exc:  # (StorageError is one)
        if spare is not None:
            with contextlib.suppress(OSError):
                os.unlink(spare)
        if what == "metrics":
            print(json.dumps(metrics))
            return ("the temp folder refused them too (%s): the metrics are printed on "
                    "stdout" % exc)
        return "the temp folder refused it too (%s)" % exc


def write_metrics(metrics, path):
    """The metrics (:func:`fcgpu.train.run_training`'s) as JSON, written atomically."""
    import json
    from ..atomic import atomic_write_bytes
    atomic_write_bytes(json.dumps(metrics, indent=2).encode(), path)


def plot_history(metrics, path):
    """Loss per iteration and train/val accuracy per epoch, as one PNG."""
    import matplotlib
    import numpy as np
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = np.asarray(metrics["loss_history"], dtype=float)
    epochs = metrics["epochs"] or 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if loss.size:
        it = np.arange(1, loss.size + 1) * epochs / loss.size
        ax1.plot(it, loss, lw=0.6, alpha=0.5, label="per step")
        per = max(loss.size // epochs, 1)
        if loss.size >= per * epochs and epochs > 0:
            means = loss[:per * epochs].reshape(epochs, per).mean(axis=1)
            ax1.plot(np.arange(1, epochs + 1), means, "o-", label="epoch mean")
    ax1.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax1.legend()
    ep = np.arange(len(metrics["train_acc_history"]))
    ax2.plot(ep, metrics["train_acc_history"], "o-", label="train (1000-sample estimate)")
    ema = metrics.get("ema")  # (with --ema the validation accuracy is the average's)
    ax2.plot(ep, metrics["val_acc_history"], "o-",
             label="validation (weight average)" if ema else "validation")
    if ema:
        ax2.plot(ep, ema["raw_val_acc_history"], ".--", label="validation (raw weights)")
    ax2.set(xlabel="epoch (0 = after the first step)", ylabel="accuracy",
            title="Accuracy: val %.3f, test %s" % (metrics["val_acc"], "%.3f" % metrics[
                "test_acc"] if metrics.get("test_acc") is not None else "n/a"))
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle("fcgpu train on %s (%s)" % (metrics["device"], metrics["backend"]))
    fig.tight_layout()
    from ..atomic import atomic_save_figure
    atomic_save_figure(fig, path, dpi=110)
