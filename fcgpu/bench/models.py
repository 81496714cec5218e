"""Model-level cases: one training step of the same net on each variant.

The net is the course's final one: ``{affine - batchnorm - ReLU - dropout(keep 0.8)}
x 3 - affine - softmax``, 3072 inputs, 10 classes, Adam (lr 5e-3), batch 490, fp32;
``default`` has 500 hidden units per layer, ``wide`` 4096. Data are synthetic, of
CIFAR-10's shape, and live on the variant's device: a pool of 10 batches, from which
each step gathers a batch by a device-side index (as ``Solver`` does), then runs the
forward pass, the backward pass and one Adam update of every parameter.

Variants (:mod:`fcgpu.bench.variants`; the builders read a row's ``family``,
``device``, ``impl``, ``graph`` and ``compile``): fcgpu on NumPy arrays (``numpy``:
the Numba passes; ``numpy_ref``: the plain xp reference passes), fcgpu on CuPy
(``fcgpu``: our kernels; ``fcgpu_graph``: the same step captured as a CUDA graph;
``cupy_unfused``: every fusable step as the xp reference, separate CuPy ops), each
step run inside ``fcgpu.fused.force_impl`` of the row's ``impl`` where it has one;
the same net in PyTorch eager (``torch_cpu``, ``torch_cuda``) and compiled
(``torch_cpu_compile``, ``torch_cuda_compile``: ``torch.compile`` of the model).
"""
from __future__ import annotations

import contextlib

import numpy as np

from .variants import get as _variant, label as _label

NETS = {
    "default": {"hidden": [500, 500, 500], "batch": 490},
    "wide": {"hidden": [4096, 4096, 4096], "batch": 490},
}
INPUT_DIM = 3 * 32 * 32
IMAGE_SHAPE = (3, 32, 32)
CLASSES = 10
KEEP_P = 0.8
LR = 5e-3
WEIGHT_SCALE = 4e-2
POOL_BATCHES = 10

class TrainCase:
    """``steps(k)`` runs k training steps and waits for the device at the end."""

    def __init__(self, step, sync, label, info=None):
        self._step = step
        self._sync = sync
        self.label = label
        self.info = info or {}

    def steps(self, k):
        for _ in range(k):
            self._step()
        self._sync()


def build_fcgpu(variant, net):
    parts = fcgpu_parts(variant, net)
    step, sync = parts["step"], parts["sync"]
    model = parts["model"]
    nparams = int(sum(int(np.prod(v.shape)) for v in model.params.values()))
    if _variant(variant).graph:
        step = _graphed_step(model, parts["configs"], parts["X"], parts["y"], parts["batch"],
                             parts["rng"])
    return TrainCase(step, sync, _label(variant, "train"), {"params": nparams})


def gather(X, y, idx):
    """One minibatch: the rows ``idx`` of the pool (a copy, as ``Solver`` makes)."""
    return X[idx], y[idx]


def augmented_gather(X, y, perm, b, batch, mode, pad, epoch, mean):
    """Minibatch ``b`` of ``perm`` from the uint8 pool ``X``, flipped/cropped per sample
    and centred in one pass (:func:`fcgpu.augment.augment_gather`, what ``Solver``
    calls for ``augment=mode``)."""
    from ..augment import augment_gather
    return augment_gather(X, y, perm, b, batch, IMAGE_SHAPE, mode, pad, 0, epoch, mean)


def fcgpu_parts(variant, net, augment="none", pad=4):
    """The pieces of an fcgpu variant's training step on ``net`` (a name in
    :data:`NETS`, or a spec like its values): ``{"step", "sync", "model",
    "configs", "X", "y", "batch", "rng", "xp"}``. ``step()`` gathers a minibatch
    (:func:`gather`), runs ``model.loss`` and Adam on every parameter (``optim.adam``),
    all looked up at call time so that the step profiler can time each, inside
    ``fcgpu.fused.force_impl`` of the variant's ``impl`` where it has one ('numba':
    the compiled CPU passes; 'reference': the xp references, on CuPy separate CuPy
    ops). With ``augment`` 'flip' or 'crop' the pool holds uint8 images and the step
    gathers with :func:`augmented_gather` instead, as ``fcgpu train --augment`` does."""
    from .. import backend, fused, optim
    from ..fc_net import FullyConnectedNet

    row = _variant(variant)
    xp = backend.set_backend(row.family)
    forced = (lambda: fused.force_impl(row.impl)) if row.impl else contextlib.nullcontext
    spec = NETS[net] if isinstance(net, str) else net
    batch = spec["batch"]
    model = FullyConnectedNet(spec["hidden"], input_dim=INPUT_DIM, num_classes=CLASSES,
                              dropout=KEEP_P, use_batchnorm=True, weight_scale=WEIGHT_SCALE,
                              dtype=np.float32, seed=0, fresh_masks=True, xp=xp)
    rng = np.random.default_rng(0)
    pool = batch * POOL_BATCHES
    from ..augment_spec import check_mode
    check_mode(augment)
    if augment == "none":
        X = xp.asarray(rng.standard_normal((pool,) + IMAGE_SHAPE, dtype=np.float32))
        mean = None
    else:
        X8 = rng.integers(0, 256, (pool,) + IMAGE_SHAPE, dtype=np.uint8)
        mean = xp.asarray(X8.mean(axis=0, dtype=np.float64).astype(np.float32))
        X = xp.asarray(X8)
    y = xp.asarray(rng.integers(0, CLASSES, pool))
    configs = {p: {"learning_rate": LR} for p in model.params}
    state = {"order": None, "pos": pool, "epoch": -1}

    def minibatch():
        if state["pos"] + batch > pool:
            state["order"] = xp.asarray(rng.permutation(pool))
            state["pos"] = 0
            state["epoch"] += 1
        b = state["pos"] // batch
        state["pos"] += batch
        if mean is None:
            return gather(X, y, state["order"][b * batch:(b + 1) * batch])
        return augmented_gather(X, y, state["order"], b, batch, augment, pad, state["epoch"],
                                mean)

    def step():
        with forced():
            loss, grads = model.loss(*minibatch())
            params = model.params
            for p, w in params.items():
                params[p], configs[p] = optim.adam(w, grads[p], configs[p])
        return loss

    def sync():
        backend.synchronize(xp)

    return {"step": step, "sync": sync, "model": model, "configs": configs, "X": X, "y": y,
            "batch": batch, "rng": rng, "xp": xp}


def _graphed_step(model, configs, X, y, batch, rng):
    """The same step captured as one CUDA graph (``fcgpu.cuda.graph``, what
    ``Solver(cuda_graph=True)`` uses): one epoch = one pass over the pool."""
    from ..cuda.graph import GraphedTrainStep
    pool = X.shape[0]
    g = GraphedTrainStep(model, "adam", X, y, batch, POOL_BATCHES)
    state = {"left": 0}

    def step():
        if state["left"] == 0:
            g.sync_out(configs)
            g.begin_epoch(rng.permutation(pool), configs)
            state["left"] = POOL_BATCHES
        state["left"] -= 1
        return g.step()
    return step


def build_torch(variant, net, torch):
    import torch.nn as nn
    import torch.nn.functional as F

    row = _variant(variant)
    device = "cuda" if row.device == "gpu" else "cpu"
    spec = NETS[net]
    batch = spec["batch"]
    torch.manual_seed(0)
    layers = []
    d = INPUT_DIM
    for h in spec["hidden"]:
        layers += [nn.Linear(d, h), nn.BatchNorm1d(h, eps=1e-5, momentum=0.1), nn.ReLU(),
                   nn.Dropout(1.0 - KEEP_P)]
        d = h
    layers.append(nn.Linear(d, CLASSES))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, WEIGHT_SCALE)
                m.bias.zero_()
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    run = torch.compile(model) if row.compile else model
    g = torch.Generator(device="cpu")
    g.manual_seed(0)
    pool = batch * POOL_BATCHES
    X = torch.randn((pool, INPUT_DIM), generator=g).to(device)
    y = torch.randint(0, CLASSES, (pool,), generator=g).to(device)
    state = {"order": None, "pos": pool}

    def step():
        if state["pos"] + batch > pool:
            state["order"] = torch.randperm(pool, generator=g).to(device)
            state["pos"] = 0
        idx = state["order"][state["pos"]:state["pos"] + batch]
        state["pos"] += batch
        out = run(X.index_select(0, idx))
        loss = F.cross_entropy(out, y.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if device == "cuda":
        sync = torch.cuda.synchronize
    else:
        def sync():
            pass
    nparams = int(sum(p.numel() for p in model.parameters()))
    return TrainCase(step, sync, _label(variant, "train"), {"params": nparams})
