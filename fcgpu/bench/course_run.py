"""Wall time of the course's whole training run (``fcgpu bench --course-wall``).

The design's GPU wall-time target: the ``course`` preset's 17 epochs (3 x 500,
batchnorm, dropout keep 0.8, Adam 5e-3 decaying 0.9 per epoch, batch 490, 49000
training and 1000 validation images) in under a second on an H200, beside the same
net in PyTorch eager on the same GPU.

The data are synthetic, of CIFAR-10's shape (float32 rows of 3 x 32 x 32, normal
values of about the spread of mean-subtracted pixels, labels uniform over 10
classes): a GPU machine need not hold CIFAR-10, and the wall time does not depend on
the values (the accuracies are a sanity number only, near chance).

Backends: ``fcgpu`` (``run_training`` on CuPy), ``fcgpu_graph`` (the same with
``cuda_graph=True``), ``torch_cuda`` (PyTorch eager, the net and hyperparameters of
the time-to-accuracy rows) and ``numpy`` (the CPU path; for tests and comparison).

Each backend runs in its own process, one after the other: a CUDA error that
poisons a context, or one library's cached device memory, never reaches the next
backend, and each child's numbers are its own. In the child, one untimed warm-up
(one epoch on a small slice: NVRTC compiles, cuBLAS handles, allocator pools), then
the timed run with the data already on the device:

* fcgpu rows: ``wall_seconds`` of :func:`fcgpu.train.run_training`, i.e. all of
  ``Solver.train()``: every step, the accuracy checks after the first step and after
  each epoch (1000 training rows and the validation split; each ends in a host
  transfer, so the device is synchronized), CUDA-graph capture where on. Model
  construction and the host-to-device copy of the data come before it.
* torch_cuda: the epochs' steps, the scheduler and the validation accuracy after each
  epoch, then ``torch.cuda.synchronize()``; the model and the device copy of the data
  are made before the clock starts.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from ..errors import ConfigError
from .child import Child, ChildGone, protocol_out, send

# in the order they run: with little time, the CUDA-graph row and its reference first
COURSE_BACKENDS = ("fcgpu_graph", "torch_cuda", "fcgpu", "numpy")
GPU_BACKENDS = ("fcgpu_graph", "torch_cuda", "fcgpu")
GOAL_SECONDS = 1.0           # the design's target on an H200
PIXEL_STD = 64.0             # about the spread of mean-subtracted CIFAR-10 pixels
WARMUP_ROWS = 4900           # the warm-up epoch's training rows (10 steps of 490)


def synthetic_data(num_train, num_val, seed=0):
    """CIFAR-10-shaped float32 splits: ``X_train (num_train, 3, 32, 32)``, ``y_train``,
    ``X_val``, ``y_val``; normal values times :data:`PIXEL_STD`, labels 0..9."""
    rng = np.random.default_rng(seed)

    def images(n):
        x = rng.standard_normal((n, 3, 32, 32), dtype=np.float32)
        x *= np.float32(PIXEL_STD)
        return x
    return {"X_train": images(num_train), "y_train": rng.integers(0, 10, num_train),
            "X_val": images(num_val), "y_val": rng.integers(0, 10, num_val)}


def _warm_slice(data):
    n = min(WARMUP_ROWS, len(data["X_train"]))
    v = min(100, len(data["X_val"]))
    return {"X_train": data["X_train"][:n], "y_train": data["y_train"][:n],
            "X_val": data["X_val"][:v], "y_val": data["y_val"][:v]}


def _config(spec, backend_name, graph):
    from ..train import from_preset
    extra = {"hidden_dims": tuple(spec["hidden_dims"])} if spec.get("hidden_dims") else {}
    return from_preset("course", backend=backend_name, epochs=spec["epochs"],
                       num_train=spec["num_train"], num_val=spec["num_val"],
                       cuda_graph=graph, matmul_precision=spec.get("matmul_precision"),
                       **extra)


def _run_fcgpu(spec, data, backend_name, graph=False):
    import dataclasses
    from .. import backend
    from ..train import run_training
    cfg = _config(spec, backend_name, graph)
    quiet = dict(progress=False, verbose=False)
    run_training(dataclasses.replace(cfg, epochs=1), data=_warm_slice(data), **quiet)
    xp = backend.get_xp()
    backend.synchronize(xp)
    t0 = time.perf_counter()
    m = run_training(cfg, data=data, **quiet)
    backend.synchronize(xp)
    return {"seconds": m["wall_seconds"], "epoch_seconds": m["epoch_seconds"],
            "run_seconds": time.perf_counter() - t0,
            "val_acc_history": m["val_acc_history"], "final_val_acc": m["val_acc_history"][-1]
            if m["val_acc_history"] else None, "best_val_acc": m["best_val_acc"],
            "epochs": m["epochs"], "device": m["device"], "config": cfg.to_dict(),
            "matmul_precision": cfg.matmul_precision, "tf32": bool(m.get("tf32"))}


def _torch_course(torch, cfg, data, epochs, device):
    """Train the course's net in PyTorch for ``epochs`` (:class:`TorchCourse`): (seconds,
    per-epoch step seconds, validation accuracies)."""
    from .torch_course import TorchCourse
    run = TorchCourse(torch, cfg, data, device)
    run.sync()
    epoch_s, hist = [], []
    t0 = time.perf_counter()
    for _ in range(epochs):
        epoch_s.append(run.epoch())
        hist.append(run.val_acc())
    run.sync()
    return time.perf_counter() - t0, epoch_s, hist


def _run_torch(spec, data):
    import torch
    if not torch.cuda.is_available():
        return {"skipped": "torch.cuda.is_available() is False"}
    from .torch_course import match_precision
    cfg = _config(spec, "numpy", False)
    precision, tf32 = match_precision(torch, "cuda", cfg.matmul_precision)
    _torch_course(torch, cfg, _warm_slice(data), 1, "cuda")
    seconds, epoch_s, hist = _torch_course(torch, cfg, data, spec["epochs"], "cuda")
    return {"seconds": seconds, "epoch_seconds": epoch_s, "val_acc_history": hist,
            "final_val_acc": hist[-1] if hist else None,
            "best_val_acc": max(hist) if hist else None, "epochs": len(hist),
            "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "matmul_precision": precision, "tf32": tf32}


def _child(spec):
    """One backend's run, in this (child) process; returns its result dict."""
    data = synthetic_data(spec["num_train"], spec["num_val"], spec.get("seed", 0))
    name = spec["backend"]
    if name == "torch_cuda":
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return {"skipped": "PyTorch is not installed (%s)" % exc}
        return _run_torch(spec, data)
    if name == "numpy":
        return _run_fcgpu(spec, data, "numpy")
    return _run_fcgpu(spec, data, "cupy", graph=name == "fcgpu_graph")


def _run_child(spec, timeout):
    """One backend's run in a child process (:class:`fcgpu.bench.child.Child`), stopped
    after ``timeout`` seconds; its result, or ``{"skipped": why}``."""
    child = Child("fcgpu.bench.course_run", [json.dumps(spec)], keep_stderr=True)
    try:
        result = child.read(timeout)
        if child.proc.wait(max(timeout, 1)) != 0:
            raise ChildGone("died", code=child.proc.returncode, tail=child.tail())
        return result
    except ChildGone as gone:
        if gone.reason == "timeout":
            return {"skipped": "stopped after %.0f s (the time it was given)" % timeout}
        return {"skipped": "failed (exit %d)%s" % (gone.code, ": " + gone.tail if gone.tail
                                                   else "")}
    finally:
        child.close()


def time_share(deadline_s):
    """Seconds of a ``fcgpu bench --deadline`` run for the course wall time, which runs
    first: 40% of it, but 25 s where that leaves room (at most 60%): three GPU backends
    take about 5 to 10 s each (start-up, data, warm-up, the run)."""
    return min(max(0.4 * deadline_s, 25.0), 0.6 * deadline_s)


def course_wall(enabled=False, backends=None, epochs=17, num_train=49000, num_val=1000,
                hidden_dims=None, deadline=None, timeout=600.0, seed=0):
    """Wall time of the course's whole training per backend (see the module's doc).

    ``deadline``: a ``time.time()`` by which to be done: a backend not started 5 s
    before it is reported as not run, and one still running at it is stopped."""
    if not enabled:
        return {"skipped": "not run: opt in with `fcgpu bench --course-wall` (the course's "
                           "whole training per backend on synthetic data: seconds on a GPU)"}
    backends = list(backends or COURSE_BACKENDS)
    bad = [b for b in backends if b not in COURSE_BACKENDS]
    if bad:
        raise ConfigError("unknown course-wall backend %s; choose from %s"
                         % (", ".join(bad), ", ".join(COURSE_BACKENDS)))
    from .. import backend
    gpu_ok, gpu_why = backend.cupy_status()
    spec = {"epochs": int(epochs), "num_train": int(num_train), "num_val": int(num_val),
            "hidden_dims": list(hidden_dims) if hidden_dims else None, "seed": int(seed),
            "matmul_precision": backend.get_matmul_precision()}
    cfg = _config(dict(spec), "numpy", False)  # bad sizes fail here, with the config's words
    results = {}
    for name in backends:
        left = None if deadline is None else deadline - time.time()
        if left is not None and left < 5:
            results[name] = {"skipped": "not run: the run's --deadline was reached first"}
            continue
        if name in ("fcgpu", "fcgpu_graph") and not gpu_ok:
            results[name] = {"skipped": "no GPU backend: %s" % gpu_why}
            continue
        print("fcgpu bench: course wall time, %s" % name, file=sys.stderr, flush=True)
        results[name] = _run_child(dict(spec, backend=name),
                                   timeout if left is None else min(timeout, left))
    torch_s = (results.get("torch_cuda") or {}).get("seconds")
    for r in results.values():
        if r.get("seconds") and torch_s:
            r["vs_torch_cuda"] = torch_s / r["seconds"]
    return {"epochs": int(epochs), "num_train": int(num_train), "num_val": int(num_val),
            "goal_seconds": GOAL_SECONDS, "goal_device": "H200",
            "matmul_precision": spec["matmul_precision"],
            "config": "the course's net (`--preset course`: %s, batchnorm, keep %g, Adam %g, "
                      "decay %g, batch %d)" % (" x ".join(map(str, cfg.hidden_dims)),
                                               cfg.dropout, cfg.learning_rate, cfg.lr_decay,
                                               cfg.batch_size),
            "data": "synthetic, CIFAR-10's shape (3x32x32 float32, normal x %g)" % PIXEL_STD,
            "warm_up": "one untimed epoch on %d rows first, in the same process"
                       % min(WARMUP_ROWS, int(num_train)),
            "isolation": "each backend in its own process, one after the other",
            "backends": results}


def _main(argv):
    if len(argv) != 1:
        print("usage: python -m fcgpu.bench.course_run SPEC_JSON", file=sys.stderr)
        return 2
    proto = protocol_out()  # anything printed on the way goes to stderr
    from .. import backend
    spec = json.loads(argv[0])
    if spec["backend"] in ("fcgpu", "fcgpu_graph"):
        ok, why = backend.cupy_status()
        if not ok:
            send(proto, {"skipped": "no GPU backend: %s" % why})
            return 0
    send(proto, _child(spec))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
