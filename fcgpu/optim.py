"""First-order update rules: ``rule(w, dw, config) -> (next_w, config)``.

``config`` holds the hyperparameters and the rule's state (velocity, moments),
created on the first call with the course's defaults. State arrays live with ``w``
(NumPy or CuPy); ``w`` itself is not modified. On CuPy arrays each rule is one of our
kernels (:mod:`fcgpu.fused_optim`), with NumPy's rounding, float32 subnormals included.
"""
from __future__ import annotations

from . import fused_optim
from .backend import get_array_module

__all__ = ["sgd", "sgd_momentum", "rmsprop", "adam", "RULES"]


def _state(config, key, w):
    if config.get(key) is None:
        config[key] = get_array_module(w).zeros_like(w)
    return config[key]


def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent. config: learning_rate (1e-2)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    fused = fused_optim.rule_step("sgd", w, dw, None, config["learning_rate"])
    if fused is not None:
        return fused, config
    return w - config["learning_rate"] * dw, config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum. config: learning_rate (1e-2), momentum (0.9), velocity."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    v = _state(config, "velocity", w)
    fused = fused_optim.rule_step("sgd_momentum", w, dw, v, config["learning_rate"],
                                  config["momentum"])
    if fused is not None:
        return fused, config
    v *= config["momentum"]
    v -= config["learning_rate"] * dw
    return w + v, config


def rmsprop(w, dw, config=None):
    """RMSProp. config: learning_rate (1e-2), decay_rate (0.99), epsilon (1e-8), cache."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    xp = get_array_module(w)
    cache = _state(config, "cache", w)
    dr = config["decay_rate"]
    fused = fused_optim.rule_step("rmsprop", w, dw, cache, config["learning_rate"], dr,
                                  config["epsilon"])
    if fused is not None:
        return fused, config
    cache *= dr
    cache += (1 - dr) * dw * dw
    return w - config["learning_rate"] * dw / (xp.sqrt(cache) + config["epsilon"]), config


def adam(w, dw, config=None):
    """Adam with bias correction. config: learning_rate (1e-3), beta1 (0.9),
    beta2 (0.999), epsilon (1e-8), m, v, t (incremented before use)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("t", 0)
    m = _state(config, "m", w)
    v = _state(config, "v", w)
    config["t"] += 1
    next_w = fused_optim.adam_step(w, dw, m, v, config["learning_rate"], config["beta1"],
                                   config["beta2"], config["epsilon"], config["t"])
    return next_w, config


RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}
