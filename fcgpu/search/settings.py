"""The settings of one ``fcgpu search`` command: checked once, and sent to its worker
processes as JSON."""
from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field

from ..errors import ConfigError
from .space import default_space, normalize


DEFAULT_STORAGE = "sqlite:///fcgpu-search.db"
DEFAULT_STUDY = "fcgpu"
DEFAULT_N_TRIALS = 20          # when neither --n-trials nor --timeout is given
DEFAULT_STORAGE_WAIT = 300     # seconds a worker waits for a storage that went away


@dataclass
class SearchSettings:
    """Everything a worker needs; travels to worker processes as JSON."""
    storage: str = DEFAULT_STORAGE
    study: str = DEFAULT_STUDY
    n_trials: int | None = None
    timeout: float | None = None
    epochs: int = 5
    num_train: int = 49000
    data: str | None = None
    backend: str = "auto"
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_warmup: int = 0          # epochs reported before the pruner may stop a trial
    space: dict = field(default_factory=default_space)
    seed: int | None = None
    heartbeat: int = 60
    grace: int | None = None
    storage_wait: float = DEFAULT_STORAGE_WAIT   # seconds a worker waits for a lost storage
    verbose: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    deadline: float | None = None   # time.time() after which no trial starts

    def __post_init__(self):
        if self.sampler not in ("tpe", "random"):
            raise ConfigError("--sampler must be tpe or random, got %r" % self.sampler)
        if self.pruner not in ("median", "none"):
            raise ConfigError("--pruner must be median or none, got %r" % self.pruner)
        if int(self.pruner_warmup) < 0:
            raise ConfigError("--pruner-warmup must be >= 0 epochs, got %r" % self.pruner_warmup)
        if self.n_trials is not None and self.n_trials < 0:
            raise ConfigError("--n-trials must be >= 0, got %r" % self.n_trials)
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("--timeout must be > 0 seconds, got %r" % self.timeout)
        if self.epochs < 1:
            raise ConfigError("--epochs must be >= 1, got %r" % self.epochs)
        if not 1 <= self.num_train <= 49000:
            raise ConfigError("--num-train must be in 1..49000, got %r" % self.num_train)
        if int(self.heartbeat) < 1:
            raise ConfigError("--heartbeat must be >= 1 second, got %r" % self.heartbeat)
        if self.grace is not None and int(self.grace) < 1:
            raise ConfigError("--grace must be >= 1 second, got %r" % self.grace)
        if not float(self.storage_wait) >= 0:
            raise ConfigError("--storage-wait must be >= 0 seconds, got %r" % self.storage_wait)
        if not self.study:
            raise ConfigError("--study needs a name")
        self.space = {name: normalize(name, spec, "search space")
                      for name, spec in {**default_space(), **self.space}.items()}

    @property
    def train_seed(self):
        return 0 if self.seed is None else int(self.seed)

    def trial_budget(self):
        """Trials this command runs: n_trials, else unlimited with a timeout, else 20."""
        if self.n_trials is not None:
            return self.n_trials
        return None if self.timeout is not None else DEFAULT_N_TRIALS

    def to_json(self):
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))
