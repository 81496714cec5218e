"""fcgpu evaluate: test accuracy, per-class accuracy and the confusion matrix of a
checkpoint written by fcgpu train --checkpoint."""
from __future__ import annotations


def add_arguments(p):
    from ..backend import CHOICES as BACKENDS
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a file written by fcgpu train --checkpoint")
    p.add_argument("--data", default=None,
                   help="the data to evaluate on: a CIFAR-10 archive or folder, or FILE.npz "
                        "(default: the data the checkpoint was trained on; for CIFAR-10, "
                        "FCGPU_DATA, the cache, else download)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="which split to evaluate (default %(default)s; CIFAR-10's test "
                        "split is all 10000 test images)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="array backend (default: FCGPU_BACKEND, else auto)")
    p.add_argument("--batch-size", type=int, default=1000,
                   help="rows per forward pass (default %(default)s)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the confusion matrix as a PNG")


def run(args):
    import os

    from .. import backend
    from ..errors import ConfigError

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'fcgpu[plot]'") from None
    name = args.backend
    if name == "auto" and os.environ.get("FCGPU_BACKEND"):
        name = os.environ["FCGPU_BACKEND"]
    xp = backend.set_backend(name)
    try:
        return _evaluate(args, xp)
    except Exception as exc:  # CuPy's out-of-memory error: one line (DeviceOutOfMemory)
        oom = backend.device_out_of_memory(
            exc, "try a smaller --batch-size (now %d)" % args.batch_size)
        if oom is None:
            raise
        raise oom from exc


def _evaluate(args, xp):
    """Load the checkpoint and the data, score, print (and plot); returns 0."""
    import os

    from .. import backend
    from ..data_npz import is_npz
    from ..errors import DataError
    from ..evaluate import (CIFAR10_CLASSES, evaluate, format_report,
                            load_model_from_checkpoint, plot_confusion)
    from ..train import TrainConfig, load_data
    model, info = load_model_from_checkpoint(args.checkpoint, xp=xp)
    path = args.data
    if path is None:
        path = (info.get("train_config") or {}).get("data")
    # the loader fcgpu train used: same file, same split-off, same mean subtracted
    data = load_data(TrainConfig(data=path, batch_size=1, num_train=None), progress=False)
    X, y = data.get("X_" + args.split), data.get("y_" + args.split)
    if X is None:
        raise DataError("%s has no %s split (X_%s/y_%s)" % (path, args.split, args.split,
                                                             args.split))
    num_classes = int(data.get("num_classes", 10))
    if num_classes > model.num_classes:
        raise DataError("the data have %d classes but the checkpoint's net has %d outputs"
                         % (num_classes, model.num_classes))
    result = evaluate(model, X, y, num_classes=model.num_classes, batch_size=args.batch_size)
    names = CIFAR10_CLASSES if not is_npz(path) else None
    where = path or "CIFAR-10"
    print("%s (epoch %s) on %s, %s split, backend %s"
          % (args.checkpoint, info.get("epoch"), where, args.split, backend.get_backend()))
    print(format_report(result, class_names=names))
    if args.plot:
        plot_confusion(result, args.plot, class_names=names,
                       title="%s: %s accuracy %.4f" % (os.path.basename(args.checkpoint),
                                                       args.split, result["accuracy"]))
        print("wrote %s" % args.plot)
    return 0
