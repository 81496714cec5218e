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

import json
import os
import subprocess
import sys
import time

import numpy as np

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

TTA_BACKENDS = ("numpy", "torch_cpu", "fcgpu", "torch_cuda")


class _Reached(Exception):
    pass


def _tta_fcgpu(backend_name, src, max_epochs, target):
    from ..train import TrainConfig, load_data, run_training
    cfg = TrainConfig(backend=backend_name, epochs=max_epochs, data=src)
    data = load_data(cfg, progress=False)
    hist = []
    state = {}

    def cb(solver):
        hist.append(solver.val_acc_history[-1])
        if solver.val_acc_history[-1] >= target:
            state["t"] = time.perf_counter() - t0
            state["train_s"] = sum(solver.epoch_seconds)
            state["epochs"] = solver.epoch
            raise _Reached()

    from .. import backend
    t0 = time.perf_counter()
    try:
        run_training(cfg, data=data, progress=False, verbose=False, epoch_callback=cb)
    except _Reached:
        pass
    out = {"val_acc_history": hist, "device": backend.device_name(backend.get_xp()),
           "reached": "t" in state, "best_val_acc": max(hist) if hist else None}
    if "t" in state:
        out.update(seconds=state["t"], train_seconds=state["train_s"], epochs=state["epochs"])
    else:
        out.update(seconds=None, epochs=None, wall_seconds=time.perf_counter() - t0)
    return out


def _tta_torch(device, src, max_epochs, target):
    import torch
    import torch.nn.functional as F
    from ..train import TrainConfig, load_data
    from . import models

    cfg = TrainConfig(epochs=max_epochs, data=src)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data = load_data(cfg, progress=False)
    torch.manual_seed(cfg.seed)
    layers = []
    d = 3 * 32 * 32
    for h in cfg.hidden_dims:
        layers += [torch.nn.Linear(d, h), torch.nn.BatchNorm1d(h), torch.nn.ReLU(),
                   torch.nn.Dropout(1 - cfg.dropout)]
        d = h
    layers.append(torch.nn.Linear(d, 10))
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, cfg.weight_scale)
                m.bias.zero_()
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    Xt = torch.from_numpy(data["X_train"].reshape(len(data["X_train"]), -1)).to(device)
    yt = torch.from_numpy(data["y_train"]).to(device)
    Xv = torch.from_numpy(data["X_val"].reshape(len(data["X_val"]), -1)).to(device)
    yv = torch.from_numpy(data["y_val"]).to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    n = Xt.shape[0]
    steps = max(n // cfg.batch_size, 1)
    hist = []
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    train_s = 0.0
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=g).to(device)
        e0 = time.perf_counter()
        for it in range(steps):
            idx = order[it * cfg.batch_size:(it + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(Xt.index_select(0, idx)), yt.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        train_s += time.perf_counter() - e0
        sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(Xv).argmax(1) == yv).float().mean())
        hist.append(acc)
        if acc >= target:
            return {"val_acc_history": hist, "reached": True, "epochs": epoch,
                    "seconds": time.perf_counter() - t0, "train_seconds": train_s,
                    "device": device, "best_val_acc": max(hist)}
    return {"val_acc_history": hist, "reached": False, "epochs": None, "seconds": None,
            "wall_seconds": time.perf_counter() - t0, "device": device,
            "best_val_acc": max(hist) if hist else None}


def _tta_one(name, src, max_epochs, target):
    if name == "numpy":
        return _tta_fcgpu("numpy", src, max_epochs, target)
    if name == "fcgpu":
        return _tta_fcgpu("cupy", src, max_epochs, target)
    if name == "torch_cpu":
        return _tta_torch("cpu", src, max_epochs, target)
    if name == "torch_cuda":
        import torch
        if not torch.cuda.is_available():
            return {"skipped": "torch.cuda.is_available() is False"}
        return _tta_torch("cuda", src, max_epochs, target)
    raise ValueError(name)


def _run_sampling_load(cmd, timeout, every=5.0):
    """Run ``cmd``; return (stdout, stderr, exit code, 1-minute load averages sampled
    every ``every`` seconds while it ran)."""
    import tempfile
    from .worker import _worker_env
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=_worker_env())
        t0 = time.monotonic()
        while True:
            try:
                proc.wait(every)
                break
            except subprocess.TimeoutExpired:
                loads.append(os.getloadavg()[0])
                if time.monotonic() - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    raise
        loads.append(os.getloadavg()[0])
        fo.seek(0)
        fe.seek(0)
        return fo.read(), fe.read(), proc.returncode, loads


def time_to_accuracy(path=None, enabled=False, backends=None, max_epochs=17,
                     target=TTA_TARGET, timeout=1800):
    """Seconds of training until validation accuracy >= ``target``, per backend."""
    if not enabled:
        return {"skipped": "not run: opt in with `fcgpu bench --time-to-accuracy` (it trains "
                           "the default net to %.0f%% on every backend: minutes)" % (100 * target)}
    src = data_source(path)
    if src is None:
        return {"skipped": "needs the real CIFAR-10 data: set FCGPU_DATA (or pass --data)"}
    from .. import backend
    gpu_ok, gpu_why = backend.cupy_status()
    results = {}
    for name in backends or TTA_BACKENDS:
        if name == "fcgpu" and not gpu_ok:
            results[name] = {"skipped": "no GPU backend: %s" % gpu_why}
            continue
        cmd = [sys.executable, "-m", "fcgpu.bench.experiments", "tta", name, src,
               str(max_epochs), str(target)]
        try:
            out, err, code, loads = _run_sampling_load(cmd, timeout)
        except subprocess.TimeoutExpired:
            results[name] = {"skipped": "did not finish within %d s" % timeout}
            continue
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if code != 0 or not lines:
            tail = (err or "").strip().splitlines()[-1:] or ["no output"]
            results[name] = {"skipped": "failed (exit %d): %s" % (code, tail[0])}
            continue
        results[name] = json.loads(lines[-1])
        results[name]["loadavg"] = [min(loads), sum(loads) / len(loads), max(loads)]
    return {"target": target, "max_epochs": max_epochs, "config": "fcgpu train defaults "
            "(3x500, batchnorm, keep 0.8, Adam 5e-3, decay 0.9, batch 490)",
            "backends": results}


def _main(argv):
    if argv[:1] == ["tta"]:
        name, src, max_epochs, target = argv[1], argv[2], int(argv[3]), float(argv[4])
        print(json.dumps(_tta_one(name, src, max_epochs, target)))
        return 0
    print("usage: python -m fcgpu.bench.experiments tta BACKEND DATA MAX_EPOCHS TARGET",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
