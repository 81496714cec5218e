"""The notebook's experiments, computed for the report, and time-to-accuracy.

* :func:`dropout_stats`: the dropout statistics table (x = randn(500, 500) + 10; means
  of input, train and test output; fraction zeroed), on NumPy, and a bit-for-bit
  check of the same masks on the GPU where one is present.
* :func:`dropout_regularizer`: 500 CIFAR-10 training images, 25 epochs, a [500] net
  without dropout against keep 0.6, Adam 5e-4, batch 100; train and val accuracy
  per epoch. Needs the real data (``FCGPU_DATA`` or ``--data``).
* :func:`time_to_accuracy`: the default ``fcgpu train`` run (and the same net and
  hyperparameters in PyTorch) until validation accuracy reaches 60%, per backend, each
  in its own process, one after the other. Opt-in: it takes minutes.

Each returns a dict; ``{"skipped": reason}`` where it cannot run.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from .child import Child, ChildGone, protocol_out, send

DROPOUT_PS = (0.25, 0.3, 0.4, 0.6, 0.7, 0.75)
TTA_TARGET = 0.60


def data_source(path=None):
    """The CIFAR-10 path to use, or None: only ``path`` or ``FCGPU_DATA`` (never the cache
    or a download, so that a benchmark run never fetches anything)."""
    return path or os.environ.get("FCGPU_DATA") or None


def dropout_stats(ps=DROPOUT_PS, seed=123):
    from .. import backend
    from ..layers import dropout_forward

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 500)) + 10
    rows = []
    gpu = {"checked": False}
    cp = None
    ok, why = backend.cupy_status()
    if ok:
        cp = backend.require_cupy()
        gpu["checked"] = True
        gpu["identical"] = True
    else:
        gpu["reason"] = why
    for p in ps:
        out, _ = dropout_forward(x, {"mode": "train", "p": p, "seed": seed})
        out_test, _ = dropout_forward(x, {"mode": "test", "p": p})
        rows.append({"p": p, "input_mean": float(x.mean()), "train_mean": float(out.mean()),
                     "test_mean": float(out_test.mean()),
                     "train_zero_frac": float((out == 0).mean()),
                     "test_zero_frac": float((out_test == 0).mean())})
        if cp is not None:
            try:
                g, _ = dropout_forward(cp.asarray(x), {"mode": "train", "p": p, "seed": seed})
                same = bool(np.array_equal(cp.asnumpy(g), out))
            except Exception as exc:  # report, do not hide
                gpu["identical"] = False
                gpu["error"] = "%s: %s" % (type(exc).__name__, exc)
                cp = None
                continue
            gpu["identical"] = gpu["identical"] and same
    return {"x": "randn(500, 500) + 10 (float64)", "seed": seed, "rows": rows, "gpu": gpu}


def dropout_regularizer(path=None, backend_name="numpy", num_train=500, epochs=25,
                        choices=(0, 0.6)):
    src = data_source(path)
    if src is None:
        return {"skipped": "needs the real CIFAR-10 data: set FCGPU_DATA (or pass --data)"}
    from .. import backend
    from ..data import get_CIFAR10_data
    from ..fc_net import FullyConnectedNet
    from ..solver import Solver

    data = get_CIFAR10_data(path=src)
    small = {"X_train": data["X_train"][:num_train], "y_train": data["y_train"][:num_train],
             "X_val": data["X_val"], "y_val": data["y_val"]}
    xp = backend.set_backend(backend_name)
    runs = []
    for keep in choices:
        model = FullyConnectedNet([500], dropout=keep, seed=0, fresh_masks=True, xp=xp)
        solver = Solver(model, small, num_epochs=epochs, batch_size=100, update_rule="adam",
                        optim_config={"learning_rate": 5e-4}, verbose=False, seed=0)
        t0 = time.perf_counter()
        solver.train()
        runs.append({"dropout": keep, "label": "no dropout" if keep in (0, 1)
                     else "dropout keep %.2g" % keep,
                     "train_acc_history": list(solver.train_acc_history),
                     "val_acc_history": list(solver.val_acc_history),
                     "final_train_acc": solver.train_acc_history[-1],
                     "final_val_acc": solver.val_acc_history[-1],
                     "best_val_acc": solver.best_val_acc,
                     "seconds": time.perf_counter() - t0})
    return {"num_train": num_train, "epochs": epochs, "backend": backend.get_backend(),
            "device": backend.device_name(xp), "net": "FullyConnectedNet([500])",
            "solver": "adam, lr 5e-4, batch 100", "runs": runs}


# ----------------------------------------------------------------- time to accuracy
#
# Each backend trains in its own process; the parent lets them run one epoch at a time,
# in turn, so that load from elsewhere on a shared machine hits all backends alike.
# A child answers every "go" with one JSON line: the epoch's validation accuracy and its
# active seconds so far (time spent waiting for its turn is not counted), or, once the
# target is reached or the epochs are used up, the final result with "done": true.

TTA_BACKENDS = ("numpy", "torch_cpu", "fcgpu", "torch_cuda", "numpy_default_preset",
                "fcgpu_default_preset")
# the rows that train `fcgpu train`'s default preset (the others: the course's net)
PRESET_ROWS = {"numpy_default_preset": "numpy", "fcgpu_default_preset": "fcgpu"}


class _Turns:
    """The child's side: wait for "go", account active time, report epochs."""

    def __init__(self, proto, target, max_epochs, to_end=False):
        self.proto = proto
        self.target = target
        self.max_epochs = max_epochs
        self.to_end = to_end   # keep going after the target: a recipe's whole schedule
        self.reached_at = None  # (epoch, active seconds, training seconds)
        self.active = 0.0
        self.train_s = 0.0
        self.hist = []
        self.t_go = None

    def send(self, obj):
        send(self.proto, obj)

    def wait_go(self):
        line = sys.stdin.readline()
        if line.strip() != "go":
            raise SystemExit(0)
        self.t_go = time.perf_counter()

    def epoch_done(self, val_acc, train_s):
        """Report one epoch; True when the run is over (target reached or last epoch)."""
        self.active += time.perf_counter() - self.t_go
        self.train_s += train_s
        self.hist.append(float(val_acc))
        epoch = len(self.hist)
        if val_acc >= self.target and self.reached_at is None:
            self.reached_at = (epoch, self.active, self.train_s)
        if (self.reached_at and not self.to_end) or epoch >= self.max_epochs:
            return True
        self.send({"epoch": epoch, "val_acc": float(val_acc), "active_s": self.active})
        self.wait_go()
        return False

    def result(self, device):
        epoch, seconds, train_s = self.reached_at or (None, None, None)
        out = {"done": True, "reached": self.reached_at is not None, "epochs": epoch,
               "seconds": seconds, "train_seconds": train_s,
               "active_seconds": self.active, "val_acc_history": self.hist,
               "best_val_acc": max(self.hist) if self.hist else None, "device": device}
        if self.to_end:
            out["ran_to_end"] = True
        return out


class _Stop(Exception):
    pass


def _tta_fcgpu(turns, backend_name, src, max_epochs, preset=None):
    """The course's net for at most ``max_epochs``; or, with ``preset``, that recipe
    over its own epochs, to the end (its schedule is fitted to them)."""
    from .. import backend
    from ..train import TrainConfig, from_preset, load_data, run_training
    if preset is None:
        cfg = TrainConfig(backend=backend_name, epochs=max_epochs, data=src,
                          matmul_precision=backend.get_matmul_precision())
    else:
        cfg = from_preset(preset, backend=backend_name, data=src,
                          matmul_precision=backend.get_matmul_precision())
        turns.max_epochs, turns.to_end = cfg.epochs, True
    data = load_data(cfg, progress=False)
    backend.set_backend(backend_name)
    device = backend.device_name(backend.get_xp())
    turns.send({"ready": True, "device": device})
    turns.wait_go()

    def cb(solver):
        if turns.epoch_done(solver.val_acc_history[-1], solver.epoch_seconds[-1]):
            raise _Stop()

    try:
        run_training(cfg, data=data, progress=False, verbose=False, epoch_callback=cb)
    except _Stop:
        pass
    return device


def _tta_torch(turns, device, src, max_epochs):
    import torch
    from ..train import TrainConfig, load_data

    if device == "cuda" and not torch.cuda.is_available():
        turns.send({"skipped": "torch.cuda.is_available() is False"})
        raise SystemExit(0)
    from .. import backend
    cfg = TrainConfig(epochs=max_epochs, data=src, matmul_precision=backend.get_matmul_precision())
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data = load_data(cfg, progress=False)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    turns.send({"ready": True, "device": name})
    turns.wait_go()
    from .torch_course import TorchCourse
    run = TorchCourse(torch, cfg, data, device)
    for _ in range(max_epochs):
        train_s = run.epoch()
        if turns.epoch_done(run.val_acc(), train_s):
            break
    return name


def _tta_child(name, src, max_epochs, target):
    turns = _Turns(protocol_out(), target, max_epochs)
    if name in PRESET_ROWS:
        from ..train import DEFAULT_PRESET
        plain = PRESET_ROWS[name]
        device = _tta_fcgpu(turns, "numpy" if plain == "numpy" else "cupy", src, max_epochs,
                            preset=DEFAULT_PRESET)
    elif name in ("numpy", "fcgpu"):
        device = _tta_fcgpu(turns, "numpy" if name == "numpy" else "cupy", src, max_epochs)
    elif name in ("torch_cpu", "torch_cuda"):
        device = _tta_torch(turns, "cpu" if name == "torch_cpu" else "cuda", src, max_epochs)
    else:
        raise ValueError(name)
    turns.send(turns.result(device))


class _Backend:
    """The parent's side of one backend's child (:class:`fcgpu.bench.child.Child`):
    every failure reads as ``{"skipped": why}``."""

    def __init__(self, name, args):
        self.name = name
        self.child = Child("fcgpu.bench.experiments", args)
        self.loads = []

    def read(self, timeout):
        try:
            return self.child.read(timeout)
        except ChildGone as gone:
            return {"skipped": self._why(gone)}

    def go(self, timeout):
        try:
            self.child.send("go")
        except ChildGone as gone:
            return {"skipped": self._why(gone)}
        return self.read(timeout)

    @staticmethod
    def _why(gone):
        if gone.reason == "timeout":
            return "no answer within %d s; stopped it" % gone.timeout
        return "failed (exit %s)" % (gone.code if gone.code is not None else "?")

    def close(self):
        self.child.close(30)


def time_to_accuracy(path=None, enabled=False, backends=None, max_epochs=17,
                     target=TTA_TARGET, epoch_timeout=900):
    """Seconds of training until validation accuracy >= ``target``, per backend, with
    the backends taking turns epoch by epoch."""
    if not enabled:
        return {"skipped": "not run: opt in with `fcgpu bench --time-to-accuracy` (it trains "
                           "the default net to %.0f%% on every backend: minutes)" % (100 * target)}
    src = data_source(path)
    if src is None:
        return {"skipped": "needs the real CIFAR-10 data: set FCGPU_DATA (or pass --data)"}
    from .. import backend
    from ..train import DEFAULT_PRESET, from_preset
    gpu_ok, gpu_why = backend.cupy_status()
    results, children = {}, []
    for name in backends or TTA_BACKENDS:
        if name in PRESET_ROWS and DEFAULT_PRESET == "course":
            results[name] = {"skipped": "the default preset is the course's net (its rows "
                                        "above)"}
            continue
        if PRESET_ROWS.get(name, name) == "fcgpu" and not gpu_ok:
            results[name] = {"skipped": "no GPU backend: %s" % gpu_why}
            continue
        cmd = ["tta", name, src, max_epochs, target]
        children.append(_Backend(name, cmd))
    live = []
    for c in children:  # all start (and load the data) at once
        resp = c.read(epoch_timeout)
        if resp.get("ready"):
            live.append(c)
        else:
            results[c.name] = {"skipped": resp.get("skipped", "did not start")}
            c.close()
    turn = 0
    while live:
        order = live[turn % len(live):] + live[:turn % len(live)]
        turn += 1
        for c in order:
            resp = c.go(epoch_timeout)
            c.loads.append(os.getloadavg()[0])
            if "epoch" in resp:
                continue
            live.remove(c)
            if resp.get("done"):
                resp.pop("done")
                results[c.name] = resp
                results[c.name]["loadavg"] = [min(c.loads), sum(c.loads) / len(c.loads),
                                              max(c.loads)]
            else:
                results[c.name] = {"skipped": resp.get("skipped", "failed")}
            c.close()
    preset = from_preset(DEFAULT_PRESET)
    return {"target": target, "max_epochs": max_epochs, "config": "the course's net "
            "(`--preset course`: 3x500, batchnorm, keep 0.8, Adam 5e-3, decay 0.9, batch 490)",
            "preset": {"name": DEFAULT_PRESET, "epochs": preset.epochs,
                       "config": preset.to_dict()},
            "matmul_precision": backend.get_matmul_precision(),
            "interleaved": True, "backends": {n: results[n] for n in (backends or TTA_BACKENDS)
                                              if n in results}}


def _main(argv):
    if argv[:1] == ["tta"]:
        name, src, max_epochs, target = argv[1], argv[2], int(argv[3]), float(argv[4])
        _tta_child(name, src, max_epochs, target)
        return 0
    print("usage: python -m fcgpu.bench.experiments tta BACKEND DATA MAX_EPOCHS TARGET",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
