"""The course's net in PyTorch eager, for the benchmarks that train it side by side
with fcgpu (time to accuracy, the course's whole run): ``{affine - BatchNorm1d - ReLU -
Dropout} x L - affine``, fcgpu's initialization (normal weights of ``weight_scale``,
zero biases), Adam with ``ExponentialLR(lr_decay)``, batch ``batch_size``, the data on
``device`` before anything is timed; and :func:`match_precision`, which gives PyTorch
fcgpu's matmul precision, for every PyTorch variant of the benchmarks."""
from __future__ import annotations

import time

import numpy as np


def match_precision(torch, device, precision=None):
    """Set PyTorch's float32 matmul precision (``torch.set_float32_matmul_precision``)
    as fcgpu computes its products: on the GPU the same name as fcgpu's setting
    (``precision``, default :func:`fcgpu.backend.get_matmul_precision`; 'high' lets
    both use TF32), on the CPU 'highest' (fcgpu's NumPy path computes float32
    products in float32 whatever the setting, and PyTorch's 'high' could use bfloat16
    there). Returns ``(setting, tf32)``: PyTorch's setting now, and whether its
    float32 products on ``device`` may use TF32 (compute capability 8.0 or later)."""
    from .. import backend
    want = (precision or backend.get_matmul_precision()) if device == "cuda" else "highest"
    torch.set_float32_matmul_precision(want)
    tf32 = (device == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)
            and torch.cuda.get_device_capability(0)[0] >= 8)
    return torch.get_float32_matmul_precision(), tf32


class TorchCourse:
    """Model, optimizer, schedule and device data of ``cfg`` (a TrainConfig)."""

    def __init__(self, torch, cfg, data, device):
        self.torch, self.cfg, self.device = torch, cfg, device
        self.precision, self.tf32 = match_precision(torch, device, cfg.matmul_precision)
        torch.manual_seed(cfg.seed)
        layers, d = [], int(np.prod(data["X_train"].shape[1:]))
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
        self.model = model.to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=cfg.lr_decay)
        flat = lambda X: torch.from_numpy(X.reshape(len(X), -1)).to(device)  # noqa: E731
        self.Xt, self.Xv = flat(data["X_train"]), flat(data["X_val"])
        self.yt = torch.from_numpy(data["y_train"]).to(device)
        self.yv = torch.from_numpy(data["y_val"]).to(device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def epoch(self):
        """One epoch of steps over a fresh permutation, then the schedule's step; returns
        the seconds of the steps (the device synchronized at their end)."""
        import torch.nn.functional as F
        torch, cfg = self.torch, self.cfg
        n = self.Xt.shape[0]
        self.model.train()
        order = torch.randperm(n, generator=self.gen).to(self.device)
        e0 = time.perf_counter()
        for it in range(max(n // cfg.batch_size, 1)):
            idx = order[it * cfg.batch_size:(it + 1) * cfg.batch_size]
            loss = F.cross_entropy(self.model(self.Xt.index_select(0, idx)),
                                   self.yt.index_select(0, idx))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.sync()
        seconds = time.perf_counter() - e0
        self.sched.step()
        return seconds

    def val_acc(self):
        self.model.eval()
        with self.torch.no_grad():
            return float((self.model(self.Xv).argmax(1) == self.yv).float().mean())
