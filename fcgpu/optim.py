"""First-order update rules: ``rule(w, dw, config) -> (next_w, config)``.

``config`` holds the hyperparameters and the rule's state (velocity, moments),
created on the first call with the course's defaults. State arrays live with ``w``
(NumPy or CuPy); ``w`` itself is not modified. On CuPy arrays each rule is one of our
kernels (:mod:`fcgpu.fused_optim`), with NumPy's rounding, float32 subnormals included.

:data:`RULES` is the one table of the rules: name -> :class:`UpdateRule` (the update
function, its defaults, its state arrays, its device kernel). Everything else that
knows about update rules reads it: the command line's choices, the checkpoint schema,
the CUDA-graph step, the search space and the settings' checks. An entry is callable
as the update function itself (``RULES['adam'](w, dw, config)``).

Adding a rule: write its function and add its entry to :data:`RULES`. Without a
device kernel (``device=None``) it trains on every backend through its array code and
is refused by the CUDA-graph step; a device kernel for the captured step is a separate
step (``kernels/optim.cuh``'s ``UpdateRule`` and ``fcgpu.cuda.train_ops``' ``RULE_*``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import fused_optim
from .backend import get_array_module

__all__ = ["sgd", "sgd_momentum", "sgd_nesterov", "rmsprop", "adam", "RULES", "UpdateRule", "rule_names",
           "STATE_KEYS", "HYPER_KEYS", "COUNTER_KEYS", "DEVICE_RULE", "DEVICE_ADAM"]

DEVICE_RULE = "rule"  # the shared kernel of kernels/optim.cuh (UpdateRule id, h, eps)
DEVICE_ADAM = "adam"  # Adam's kernel, bias corrections read from a device table


@dataclass(frozen=True)
class UpdateRule:
    """One update rule: everything fcgpu knows about it, in one place.

    * ``name``: the name of ``--update-rule`` and ``Solver(update_rule=...)``;
    * ``title``: the rule in words (run descriptions);
    * ``update``: the function ``update(w, dw, config) -> (next_w, config)``;
    * ``defaults``: ``((key, value), ...)`` set on a config where missing, in this
      order: the hyperparameters (floats) and step counters (ints, e.g. Adam's t);
    * ``state``: the config keys of the state arrays, shaped like the parameter
      (zeros on the first call);
    * ``device``: the kernel of a step captured as a CUDA graph: :data:`DEVICE_RULE`
      (the shared rule kernel, with ``device_id`` and the config keys ``device_args``
      passed as its ``h`` and ``eps``), :data:`DEVICE_ADAM`, or None (no captured
      step for this rule);
    * ``device_id``: the rule's id in ``kernels/optim.cuh``'s ``UpdateRule`` enum
      (``fcgpu.cuda.train_ops.RULE_*``; a test compares them).
    """
    name: str
    title: str
    update: Callable
    defaults: tuple
    state: tuple = ()
    device: str | None = None
    device_id: int | None = None
    device_args: tuple = ()

    def __call__(self, w, dw, config=None):
        return self.update(w, dw, config)

    @property
    def hyper(self):
        """The float hyperparameters' keys, ``learning_rate`` first."""
        return tuple(k for k, v in self.defaults if isinstance(v, float))

    @property
    def counters(self):
        """The integer step counters' keys (Adam's ``t``)."""
        return tuple(k for k, v in self.defaults if isinstance(v, int))

    def configured(self, w, config):
        """``config`` (a new dict for None) with the defaults set where missing and the
        state arrays created (zeros like ``w``) where missing or None."""
        config = {} if config is None else config
        for key, value in self.defaults:
            config.setdefault(key, value)
        for key in self.state:
            if config.get(key) is None:
                config[key] = get_array_module(w).zeros_like(w)
        return config


def _kernel_step(name, w, dw, state, config):
    """The rule's plain step as one CUDA kernel on CuPy arrays (its device id and
    arguments from :data:`RULES`; NumPy's rounding, subnormals kept), else None."""
    rule = RULES[name]
    return fused_optim.rule_step(rule.device_id, w, dw, state, config["learning_rate"],
                                 *(config[k] for k in rule.device_args))


def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent. config: learning_rate (1e-2)."""
    config = RULES["sgd"].configured(w, config)
    fused = _kernel_step("sgd", w, dw, None, config)
    if fused is not None:
        return fused, config
    return w - config["learning_rate"] * dw, config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum. config: learning_rate (1e-2), momentum (0.9), velocity."""
    config = RULES["sgd_momentum"].configured(w, config)
    v = config["velocity"]
    fused = _kernel_step("sgd_momentum", w, dw, v, config)
    if fused is not None:
        return fused, config
    v *= config["momentum"]
    v -= config["learning_rate"] * dw
    return w + v, config


def sgd_nesterov(w, dw, config=None):
    """SGD with Nesterov momentum (Sutskever et al. 2013, in the course's velocity
    form): ``v = mu*v - lr*dw``, next ``w + mu*v - lr*dw``. config: learning_rate
    (1e-2), momentum (0.9), velocity."""
    config = RULES["sgd_nesterov"].configured(w, config)
    v = config["velocity"]
    fused = _kernel_step("sgd_nesterov", w, dw, v, config)
    if fused is not None:
        return fused, config
    v *= config["momentum"]
    v -= config["learning_rate"] * dw
    return w + config["momentum"] * v - config["learning_rate"] * dw, config


def rmsprop(w, dw, config=None):
    """RMSProp. config: learning_rate (1e-2), decay_rate (0.99), epsilon (1e-8), cache."""
    config = RULES["rmsprop"].configured(w, config)
    xp = get_array_module(w)
    cache = config["cache"]
    dr = config["decay_rate"]
    fused = _kernel_step("rmsprop", w, dw, cache, config)
    if fused is not None:
        return fused, config
    cache *= dr
    cache += (1 - dr) * dw * dw
    return w - config["learning_rate"] * dw / (xp.sqrt(cache) + config["epsilon"]), config


def adam(w, dw, config=None):
    """Adam with bias correction. config: learning_rate (1e-3), beta1 (0.9),
    beta2 (0.999), epsilon (1e-8), m, v, t (incremented before use)."""
    config = RULES["adam"].configured(w, config)
    config["t"] += 1
    next_w = fused_optim.adam_step(w, dw, config["m"], config["v"], config["learning_rate"],
                                   config["beta1"], config["beta2"], config["epsilon"],
                                   config["t"])
    return next_w, config


RULES = {rule.name: rule for rule in (
    UpdateRule("sgd", "SGD", sgd, (("learning_rate", 1e-2),),
               device=DEVICE_RULE, device_id=0),
    UpdateRule("sgd_momentum", "SGD with momentum", sgd_momentum,
               (("learning_rate", 1e-2), ("momentum", 0.9)), state=("velocity",),
               device=DEVICE_RULE, device_id=1, device_args=("momentum",)),
    UpdateRule("sgd_nesterov", "SGD with Nesterov momentum", sgd_nesterov,
               (("learning_rate", 1e-2), ("momentum", 0.9)), state=("velocity",),
               device=DEVICE_RULE, device_id=3, device_args=("momentum",)),
    UpdateRule("rmsprop", "RMSProp", rmsprop,
               (("learning_rate", 1e-2), ("decay_rate", 0.99), ("epsilon", 1e-8)),
               state=("cache",), device=DEVICE_RULE, device_id=2,
               device_args=("decay_rate", "epsilon")),
    UpdateRule("adam", "Adam", adam,
               (("learning_rate", 1e-3), ("beta1", 0.9), ("beta2", 0.999), ("epsilon", 1e-8),
                ("t", 0)), state=("m", "v"), device=DEVICE_ADAM),
)}


def rule_names():
    """The rules' names, in the table's order."""
    return tuple(RULES)


# unions over the rules: what a stored optimizer config may hold
STATE_KEYS = tuple(dict.fromkeys(k for r in RULES.values() for k in r.state))
HYPER_KEYS = tuple(dict.fromkeys(k for r in RULES.values() for k in r.hyper))
COUNTER_KEYS = tuple(dict.fromkeys(k for r in RULES.values() for k in r.counters))
