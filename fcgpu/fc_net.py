"""``FullyConnectedNet``: {affine - [batchnorm] - relu - [dropout]} x (L-1) - affine - softmax."""
from __future__ import annotations

import secrets

import numpy as np

from . import layer_utils, layers
from .backend import get_xp, to_backend
from .errors import CheckpointError, ConfigError, DataError
from .layer_utils import *  # noqa: F401,F403  (the course's fc_net re-exports the layers)
from .layer_utils import (affine_bn_relu_dropout_backward, affine_bn_relu_dropout_forward,
                          affine_relu_backward, affine_relu_dropout_backward,
                          affine_relu_dropout_forward, affine_relu_forward)
from .layers import *  # noqa: F401,F403
from .layers import affine_backward, affine_forward, softmax_loss
from .random import DeviceStream
from .setting_spec import DROPOUT, LABEL_SMOOTHING

# `from fcgpu.fc_net import *` gives the notebook the layers too, as the course's did
__all__ = ["FullyConnectedNet"] + layers.__all__ + layer_utils.__all__


class FullyConnectedNet:
    """A fully-connected net of any depth, on the selected backend (NumPy or CuPy).

    ``dropout`` is the keep probability; 0 or 1 build no dropout layers. With a
    ``seed``, weights are drawn from it and (as in the course framework) every
    training-mode call uses the same dropout masks, which numerical gradient checks
    need. Without one, or with ``fresh_masks=True``, each call draws fresh masks from
    the Philox streams ``(dropout_key, dropout_step * (L-1) + layer)``.

    ``label_smoothing`` (default 0, the course's loss) trains against smoothed
    targets (:func:`fcgpu.layers.softmax_loss`). ``loss(X, y, mix=(y2, lam))`` trains
    against mixed targets (MixUp, CutMix: the Solver's ``mix``); ``loss(X, y)`` is the
    course's call, unchanged.

    ``xp`` (optional) places the parameters on NumPy or CuPy; by default the backend
    chosen by ``FCGPU_BACKEND`` / :func:`fcgpu.set_backend`.
    """

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout=0,
                 use_batchnorm=False, reg=0.0, weight_scale=1e-2, dtype=np.float32,
                 seed=None, fresh_masks=None, xp=None, label_smoothing=0.0):
        hidden_dims = [int(h) for h in hidden_dims]
        if any(h < 1 for h in hidden_dims) or input_dim < 1 or num_classes < 1:
            raise ConfigError("FullyConnectedNet: layer sizes must be positive, got "
                              "input_dim=%r hidden_dims=%r num_classes=%r"
                              % (input_dim, hidden_dims, num_classes))
        DROPOUT.check(dropout, "FullyConnectedNet: dropout (0 or 1: none)")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ConfigError("FullyConnectedNet: dtype must be float32 or float64, got %r"
                              % (dtype,))
        self.xp = get_xp() if xp is None else xp
        self.use_batchnorm = bool(use_batchnorm)
        self.use_dropout = dropout not in (0, 1)
        self.reg = reg
        LABEL_SMOOTHING.check(label_smoothing, "FullyConnectedNet: label_smoothing")
        self.label_smoothing = float(label_smoothing)
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = np.dtype(dtype)
        self.input_dim = int(input_dim)
        self.num_classes = int(num_classes)
        self.hidden_dims = hidden_dims

        rng = np.random.default_rng(seed)
        dims = [self.input_dim] + hidden_dims + [self.num_classes]
        params = {}
        for i in range(self.num_layers):
            params["W%d" % (i + 1)] = weight_scale * rng.standard_normal((dims[i], dims[i + 1]))
            params["b%d" % (i + 1)] = np.zeros(dims[i + 1])
            if self.use_batchnorm and i < self.num_layers - 1:
                params["gamma%d" % (i + 1)] = np.ones(dims[i + 1])
                params["beta%d" % (i + 1)] = np.zeros(dims[i + 1])
        self.params = {k: to_backend(v, self.xp, self.dtype) for k, v in params.items()}

        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": float(dropout)}
        self.fresh_masks = (seed is None) if fresh_masks is None else bool(fresh_masks)
        if self.use_dropout and not self.fresh_masks:
            self.dropout_param["seed"] = int(seed)
        self.dropout_key = int(seed) if seed is not None else secrets.randbits(64)
        self.dropout_step = 0
        # CUDA-graph capture (fcgpu.cuda.graph) sets this to a one-element device
        # uint64 array holding dropout_step * (L-1): fresh-mask streams are then read
        # on the device (base + layer), so that each replay draws its own step's masks.
        self._device_stream_base = None
        self.bn_params = []
        if self.use_batchnorm:
            self.bn_params = [{"mode": "train"} for _ in range(self.num_layers - 1)]

    def _layer_dropout(self, mode, layer):
        if not self.use_dropout:
            return None
        dp = dict(self.dropout_param, mode=mode)
        if mode == "train":
            if self.fresh_masks:
                dp["seed"] = self.dropout_key
                base = getattr(self, "_device_stream_base", None)
                if base is not None:
                    dp["stream"] = DeviceStream(base, layer)
                else:
                    dp["stream"] = self.dropout_step * (self.num_layers - 1) + layer
            else:
                dp["stream"] = layer
        return dp

    def loss(self, X, y=None, mix=None):
        """Scores (N, C) when ``y`` is None; else ``(loss, grads)`` for a training step.
        ``mix`` = ``(y2, lam)``: row n's target is ``lam[n]`` of class ``y[n]`` and
        ``1 - lam[n]`` of class ``y2[n]`` (:func:`fcgpu.layers.softmax_loss`)."""
        if mix is not None and y is None:
            raise ValueError("FullyConnectedNet.loss: mix needs the labels y (a training "
                             "step)")
        xp = self.xp
        X = to_backend(X, xp, self.dtype)
        mode = "test" if y is None else "train"
        for bn_param in self.bn_params:
            bn_param["mode"] = mode

        h = X
        caches = []
        p = self.params
        for i in range(1, self.num_layers):
            W, b = p["W%d" % i], p["b%d" % i]
            dp = self._layer_dropout(mode, i - 1)
            if self.use_batchnorm:
                h, cache = affine_bn_relu_dropout_forward(h, W, b, p["gamma%d" % i],
                                                          p["beta%d" % i],
                                                          self.bn_params[i - 1], dp)
            elif dp is not None:
                h, cache = affine_relu_dropout_forward(h, W, b, dp)
            else:
                h, cache = affine_relu_forward(h, W, b)
            caches.append(cache)
        L = self.num_layers
        scores, cache = affine_forward(h, p["W%d" % L], p["b%d" % L])
        if mode == "test":
            return scores
        if self.use_dropout and self.fresh_masks:
            self.dropout_step += 1

        y = to_backend(y, xp)
        if mix is not None:
            mix = (to_backend(mix[0], xp), to_backend(mix[1], xp))
            loss, dout = softmax_loss(scores, y, label_smoothing=self.label_smoothing, mix=mix)
        elif self.label_smoothing:
            loss, dout = softmax_loss(scores, y, label_smoothing=self.label_smoothing)
        else:
            loss, dout = softmax_loss(scores, y)
        grads = {}
        dh, grads["W%d" % L], grads["b%d" % L] = affine_backward(dout, cache,
                                                                 need_dx=L > 1)
        for i in range(L - 1, 0, -1):
            need_dx = i > 1  # nobody wants the gradient of the input images
            if self.use_batchnorm:
                dh, dw, db, dg, dbt = affine_bn_relu_dropout_backward(dh, caches[i - 1], need_dx)
                grads["gamma%d" % i], grads["beta%d" % i] = dg, dbt
            elif self.use_dropout:
                dh, dw, db = affine_relu_dropout_backward(dh, caches[i - 1], need_dx)
            else:
                dh, dw, db = affine_relu_backward(dh, caches[i - 1], need_dx)
            grads["W%d" % i], grads["b%d" % i] = dw, db

        if self.reg:
            for i in range(1, L + 1):
                W = p["W%d" % i]
                flat = W.reshape(-1)
                loss = loss + 0.5 * self.reg * xp.dot(flat, flat)
                grads["W%d" % i] += self.reg * W
        return loss, grads

    def predict_proba(self, X, batch_size=1000):
        """Class probabilities ``(N, C)`` for ``X`` (NumPy or CuPy, ``(N, ...)`` with
        ``input_dim`` features), in test mode (running batchnorm statistics, no
        dropout), ``batch_size`` rows at a time. The result is an array of the
        model's module (NumPy or CuPy) in its dtype; rows sum to 1."""
        xp = self.xp
        shape = getattr(X, "shape", None)
        if shape is None or len(shape) < 2 or int(np.prod(shape[1:])) != self.input_dim:
            raise DataError("predict_proba: X must be (N, ...) with %d features per row, got "
                            "shape %s" % (self.input_dim, shape))
        if int(batch_size) < 1:
            raise ConfigError("predict_proba: batch_size must be >= 1, got %r" % (batch_size,))
        n, batch_size = shape[0], int(batch_size)
        out = xp.empty((n, self.num_classes), self.dtype)
        for start in range(0, n, batch_size):
            scores = self.loss(X[start:start + batch_size])
            e = xp.exp(scores - scores.max(axis=1, keepdims=True))
            out[start:start + batch_size] = e / e.sum(axis=1, keepdims=True)
        return out

    # ------------------------------------------------------------- state

    def state_dict(self):
        """Parameters, batchnorm running statistics and the dropout RNG position,
        as host (NumPy) arrays and plain numbers."""
        from .backend import asnumpy
        return {
            "params": {k: asnumpy(v) for k, v in self.params.items()},
            "bn_params": [{k: (asnumpy(v) if hasattr(v, "shape") else v)
                           for k, v in bp.items()} for bp in self.bn_params],
            "dropout_key": self.dropout_key,
            "dropout_step": self.dropout_step,
        }

    def load_state_dict(self, state):
        for k, v in state["params"].items():
            if k not in self.params or self.params[k].shape != v.shape:
                raise CheckpointError("checkpoint parameter %s of shape %s does not fit this "
                                      "net" % (k, getattr(v, "shape", None)))
            self.params[k] = to_backend(v, self.xp, self.dtype)
        self.bn_params = [{k: (to_backend(v, self.xp, self.dtype) if hasattr(v, "shape") else v)
                           for k, v in bp.items()} for bp in state["bn_params"]]
        self.dropout_key = int(state["dropout_key"])
        self.dropout_step = int(state["dropout_step"])
