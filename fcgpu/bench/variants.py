"""Every benchmark variant, in one table: what it is, where it runs, what it is called,
where it is listed and in what colour.

A *variant* is one way of running the suites' cases, in a worker process of its own
(:mod:`fcgpu.bench.worker`). Everything else reads this table: which variants each
suite starts (in the table's order, which is also the report's), the worker's
libraries and device, the builders' choices (:mod:`.kernels`, :mod:`.gather`,
:mod:`.models` read ``impl``, ``compile``, ``graph``), which kernel ops a variant has
code for, the labels, the plots' colours, and which variants are the training
reference of their device.

Adding a variant: one row here. If it runs code that no row runs yet, that code goes
into its suite's builder (:mod:`.kernels` or :mod:`.gather` for kernels,
:mod:`.models` for training), guarded by a field of the row. The summary's figures
(:mod:`.results`) and the headline's cases (:mod:`.schedule`) name the variants they
compare on purpose; a new variant needs neither.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Variant", "TABLE", "VARIANTS", "SUITES", "FAMILIES", "IMPLS", "get", "names",
           "applicable", "label", "short", "color", "baseline"]

SUITES = ("kernels", "train")
FAMILIES = ("numpy", "cupy", "torch")
# what runs fcgpu's fusable steps: a name fcgpu.fused.force_impl takes, or "user"
# (the course's layers as a CuPy user writes them), or None (fcgpu's own dispatch)
IMPLS = ("reference", "numba", "user", None)


@dataclass(frozen=True)
class Variant:
    """One row of :data:`TABLE`.

    ``family``: the libraries its worker loads ('numpy': NumPy, Numba and fcgpu;
    'cupy': CuPy and fcgpu; 'torch': PyTorch). ``device``: 'cpu' or 'gpu'.
    ``kernels`` / ``train``: its label in that suite (None: not in the suite).
    ``short``: its name in the training plot (default: its training label).
    ``impl``: see :data:`IMPLS`. ``compile``: ``torch.compile`` of the model.
    ``graph``: the training step captured once as a CUDA graph and replayed.
    ``ops``: the kernel ops it has code for (None: every op). ``quick``: measured by
    ``--quick`` (False: only where ``--variants`` names it). ``baseline``: the training
    reference of its device (the report's "vs PyTorch eager" column)."""

    name: str
    family: str
    device: str
    kernels: str | None = None
    train: str | None = None
    short: str | None = None
    color: str = "#7f7f7f"
    impl: str | None = None
    compile: bool = False
    graph: bool = False
    ops: tuple | None = None
    quick: bool = True
    baseline: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES or self.device not in ("cpu", "gpu") \
                or self.impl not in IMPLS or not (self.kernels or self.train):
            raise ValueError("variant %r: family %r, device %r, impl %r, suites %r"
                             % (self.name, self.family, self.device, self.impl,
                                self.suites))

    @property
    def suites(self):
        return tuple(s for s in SUITES if getattr(self, s))


_TORCH_OPS = ("copy", "dropout_fwd", "dropout_bwd", "bn_fwd", "bn_bwd", "fused_fwd",
              "fused_bwd", "gather")   # no per-sample augmenting gather in PyTorch

TABLE = (
    Variant("numpy_ref", "numpy", "cpu", kernels="NumPy (reference xp code)",
            train="fcgpu NumPy path, no Numba (reference passes)",
            short="NumPy path, no Numba", color="#9e9e9e", impl="reference", quick=False),
    Variant("numba", "numpy", "cpu", kernels="fcgpu CPU path (Numba)", color="#1f77b4",
            impl="numba"),
    Variant("numpy", "numpy", "cpu", train="fcgpu NumPy path (Numba)",
            short="NumPy path (Numba)", color="#1f77b4", impl="numba"),
    Variant("torch_cpu", "torch", "cpu", kernels="PyTorch CPU", train="PyTorch CPU eager",
            color="#ff7f0e", ops=_TORCH_OPS, baseline=True),
    Variant("torch_cpu_compile", "torch", "cpu", train="PyTorch CPU torch.compile",
            short="PyTorch CPU compile", color="#ffbb78", compile=True),
    Variant("cupy_unfused", "cupy", "gpu",
            kernels="CuPy ops emulating fcgpu (*_ref, Philox mask as array code)",
            train="fcgpu on CuPy, unfused (reference ops)", short="CuPy unfused",
            color="#8c564b", impl="reference"),
    Variant("cupy_curand", "cupy", "gpu",
            kernels="CuPy as a user writes it (cupy.random mask, separate ops)",
            color="#c49c94", impl="user", ops=("dropout_fwd", "fused_fwd")),
    Variant("fcgpu", "cupy", "gpu", kernels="fcgpu CUDA kernels",
            train="fcgpu on CuPy, fused kernels", short="fcgpu fused (GPU)", color="#2ca02c",
            ops=("dropout_fwd", "dropout_bwd", "bn_fwd", "bn_bwd", "fused_fwd", "fused_bwd",
                 "augment", "gather")),
    Variant("fcgpu_graph", "cupy", "gpu", train="fcgpu fused, step captured as a CUDA graph",
            short="fcgpu + CUDA graph", color="#98df8a", graph=True),
    Variant("torch_cuda", "torch", "gpu", kernels="PyTorch CUDA", train="PyTorch CUDA eager",
            color="#d62728", ops=_TORCH_OPS, baseline=True),
    Variant("torch_cuda_compile", "torch", "gpu", train="PyTorch CUDA torch.compile",
            short="PyTorch CUDA compile", color="#ff9896", compile=True),
)
VARIANTS = {v.name: v for v in TABLE}


def get(name):
    """The row of variant ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError("unknown variant %r; known: %s" % (name, ", ".join(VARIANTS))) \
            from None


def names(suite=None):
    """The variants of ``suite`` ('kernels' or 'train'; None: all), in the table's order."""
    return [v.name for v in TABLE if suite is None or getattr(v, suite)]


def applicable(name, op):
    """Whether variant ``name`` has code for kernel op ``op`` (the others are "not
    applicable" there, not skipped)."""
    v = VARIANTS.get(name)
    return v is not None and bool(v.kernels) and (v.ops is None or op in v.ops)


def label(name, suite="kernels"):
    """What ``name`` runs, in words, in ``suite`` (its name where the table lacks it)."""
    v = VARIANTS.get(name)
    return (getattr(v, suite) if v else None) or name


def short(name):
    """The training plot's name of ``name``."""
    v = VARIANTS.get(name)
    return (v.short or v.train) if v else name


def color(name):
    v = VARIANTS.get(name)
    return v.color if v else None


def baseline(device):
    """The training reference of ``device`` ('cpu' or 'gpu'): the variant marked
    ``baseline`` there, or None."""
    return next((v.name for v in TABLE if v.baseline and v.device == device and v.train),
                None)
