"""Issue 24 prototype: architecture options at the default preset's budget, before any
is built into fcgpu. Each net is written here from fcgpu.layers' functions (plain NumPy,
float32) and trained by fcgpu's Solver with the default preset's recipe: random flips in
the gather, keep 0.9, label smoothing 0.05, one-cycle Adam peaking at 3.2e-3, batch 490,
seed 0 (or SEED: the weights, the dropout masks, the minibatches and the flips).
Validation split only.

    python arch.py KIND EPOCHS [NUM_TRAIN [SEED]]

KIND:
  bn        {affine - batchnorm - relu - dropout} x 3, 1024 wide (the default's net,
            on this script's unfused path: the baseline for the others)
  ln        the same with LayerNorm (per-row statistics) in place of batchnorm
  bottle    Z-Lin's linear bottleneck: 2048 (bn-relu-dropout) - 512 linear (affine
            only) - 2048 (bn-relu-dropout)
  resid     a pre-norm residual MLP: affine 3072->1024, then 2 blocks
            h + W2 relu(W1 LN(h)) (1024 -> 2048 -> 1024, dropout after the relu),
            then LN - affine to the classes
"""
import sys
import time

import numpy as np

from fcgpu import layers as L
from fcgpu.solver import Solver
from fcgpu.train import TrainConfig, load_data

KIND, EPOCHS = sys.argv[1], int(sys.argv[2])
NUM_TRAIN = int(sys.argv[3]) if len(sys.argv) > 3 else 49000
SEED = int(sys.argv[4]) if len(sys.argv) > 4 else 0
KEEP, LS = 0.9, 0.05


def ln_forward(x, g, b, eps=1e-5):
    mu = x.mean(axis=1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=1, keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    xh = xc * inv
    return xh * g + b, (xh, inv, g)


def ln_backward(dout, cache):
    xh, inv, g = cache
    dg = (dout * xh).sum(axis=0)
    db = dout.sum(axis=0)
    dxh = dout * g
    D = xh.shape[1]
    dx = inv / D * (D * dxh - dxh.sum(axis=1, keepdims=True)
                    - xh * (dxh * xh).sum(axis=1, keepdims=True))
    return dx.astype(np.float32), dg, db


class Net:
    def __init__(self, kind, D=3072, C=10, seed=0):
        self.rng = np.random.default_rng(seed)
        self.kind, self.dtype, self.params, self.bn_params = kind, np.float32, {}, []
        self.seed = seed
        self.label_smoothing = LS
        self.step = 0
        self.input_dim, self.num_classes = D, C
        if kind in ("bn", "ln"):
            self.spec = [(D, 1024, "norm"), (1024, 1024, "norm"), (1024, 1024, "norm"),
                         (1024, C, "out")]
        elif kind == "bottle":
            self.spec = [(D, 2048, "norm"), (2048, 512, "linear"), (512, 2048, "norm"),
                         (2048, C, "out")]
        elif kind == "resid":
            self.spec = None
        else:
            raise SystemExit("unknown kind " + kind)
        if self.spec:
            for i, (a, b, how) in enumerate(self.spec, 1):
                self._affine(i, a, b)
                if how == "norm":
                    self.params["gamma%d" % i] = np.ones(b, np.float32)
                    self.params["beta%d" % i] = np.zeros(b, np.float32)
                    self.bn_params.append({"mode": "train"})
        else:
            self._affine("in", D, 1024)
            for k in (1, 2):
                self.params["lng%d" % k] = np.ones(1024, np.float32)
                self.params["lnb%d" % k] = np.zeros(1024, np.float32)
                self._affine("up%d" % k, 1024, 2048)
                self._affine("down%d" % k, 2048, 1024, scale=0.0)  # blocks start as identity
            self.params["lngf"] = np.ones(1024, np.float32)
            self.params["lnbf"] = np.zeros(1024, np.float32)
            self._affine("out", 1024, C)

    def _affine(self, name, a, b, scale=None):
        std = 0.04 if scale is None else scale  # (the presets' weight_scale)
        self.params["W%s" % name] = (self.rng.standard_normal((a, b)) * std).astype(np.float32)
        self.params["b%s" % name] = np.zeros(b, np.float32)

    def _drop(self, h, train, tag):
        if not train or KEEP >= 1:
            return h, None
        return L.dropout_forward(h, {"mode": "train", "p": KEEP,
                                     "seed": ((self.seed << 40) + self.step * 64 + tag) % 2 ** 63})

    def loss(self, X, y=None):
        train = y is not None
        if train:
            self.step += 1
        X = X.reshape(X.shape[0], -1)
        p, caches, h = self.params, [], X
        if self.spec:
            nb = 0
            for i, (a, b, how) in enumerate(self.spec, 1):
                h, c_aff = L.affine_forward(h, p["W%d" % i], p["b%d" % i])
                c = [c_aff]
                if how == "norm":
                    if self.kind == "ln":
                        h, c_n = ln_forward(h, p["gamma%d" % i], p["beta%d" % i])
                    else:
                        bp = self.bn_params[nb]
                        bp["mode"] = "train" if train else "test"
                        h, c_n = L.batchnorm_forward(h, p["gamma%d" % i], p["beta%d" % i], bp)
                    nb += 1
                    h, c_r = L.relu_forward(h)
                    h, c_d = self._drop(h, train, i)
                    c += [c_n, c_r, c_d]
                caches.append(c)
        else:
            h, c_in = L.affine_forward(h, p["Win"], p["bin"])
            blocks = []
            for k in (1, 2):
                z, c_ln = ln_forward(h, p["lng%d" % k], p["lnb%d" % k])
                z, c_up = L.affine_forward(z, p["Wup%d" % k], p["bup%d" % k])
                z, c_r = L.relu_forward(z)
                z, c_d = self._drop(z, train, k)
                z, c_dn = L.affine_forward(z, p["Wdown%d" % k], p["bdown%d" % k])
                h = h + z
                blocks.append((c_ln, c_up, c_r, c_d, c_dn))
            z, c_lf = ln_forward(h, p["lngf"], p["lnbf"])
            h, c_out = L.affine_forward(z, p["Wout"], p["bout"])
        if not train:
            return h
        loss, d = L.softmax_loss(h, y, label_smoothing=LS)
        g = {}
        if self.spec:
            for i in range(len(self.spec), 0, -1):
                how = self.spec[i - 1][2]
                c = caches[i - 1]
                if how == "norm":
                    if c[3] is not None:
                        d = L.dropout_backward(d, c[3])
                    d = L.relu_backward(d, c[2])
                    if self.kind == "ln":
                        d, g["gamma%d" % i], g["beta%d" % i] = ln_backward(d, c[1])
                    else:
                        d, g["gamma%d" % i], g["beta%d" % i] = L.batchnorm_backward(d, c[1])
                d, g["W%d" % i], g["b%d" % i] = L.affine_backward(d, c[0])
        else:
            d, g["Wout"], g["bout"] = L.affine_backward(d, c_out)
            d, g["lngf"], g["lnbf"] = ln_backward(d, c_lf)
            for k in (2, 1):
                c_ln, c_up, c_r, c_d, c_dn = blocks[k - 1]
                dz, g["Wdown%d" % k], g["bdown%d" % k] = L.affine_backward(d, c_dn)
                if c_d is not None:
                    dz = L.dropout_backward(dz, c_d)
                dz = L.relu_backward(dz, c_r)
                dz, g["Wup%d" % k], g["bup%d" % k] = L.affine_backward(dz, c_up)
                dz, g["lng%d" % k], g["lnb%d" % k] = ln_backward(dz, c_ln)
                d = d + dz
            d, g["Win"], g["bin"] = L.affine_backward(d, c_in)
        return loss, {k: v.astype(np.float32) for k, v in g.items()}


import os
AUGMENT = os.environ.get("ARCH_AUGMENT", "flip")  # crop: random crops (pad 4) and flips
cfg = TrainConfig(augment=AUGMENT, epochs=EPOCHS, num_train=NUM_TRAIN)
data = load_data(cfg, progress=False)
net = Net(KIND, seed=SEED)
print(KIND, "params %.2f M" % (sum(v.size for v in net.params.values()) / 1e6), flush=True)
s = Solver(net, data, update_rule="adam", optim_config={"learning_rate": 3.2e-3},
           batch_size=490, num_epochs=EPOCHS, num_train_samples=1000, verbose=False, seed=SEED,
           lr_schedule="onecycle", augment=AUGMENT, mean=data["mean"],
           epoch_callback=lambda sv: print("epoch %d val %.3f train %.3f (%.1f s)" % (
               sv.epoch, sv.val_acc_history[-1], sv.train_acc_history[-1],
               sv.epoch_seconds[-1]), flush=True))
t0 = time.time()
s.train()
print(KIND, "epochs", EPOCHS, "best val", s.best_val_acc, "time %.0f s" % (time.time() - t0))
