"""What the first minutes on a lent GPU measure first, and how long each piece is
assumed to take: the one place these estimates live.

The four summary figures (the *headline*): dropout forward and backward as fractions
of the device-to-device copy bandwidth at 2^26 fp32 elements, the fused
batchnorm-ReLU-dropout forward against what a CuPy user writes, training samples/s
against PyTorch eager, and the course's whole 17-epoch wall time. ``fcgpu bench
--part headline`` measures only those, in three phases (kernels, training, the
course run), and splits its ``--deadline`` between the phases in proportion to
their estimates (:func:`phase_deadlines`). ``bench/gpu_check.sh`` runs it right after
``info`` and ``smoke``; ``tests/test_gpu_check.py`` computes the schedule from the
script's plan (``GPU_CHECK_PLAN=1``) and these estimates, and fails if a summary case
would not fit in its budget.

The estimates are seconds on the lent machine (one H200, 16 cores, CuPy 14.2 for CUDA
13, PyTorch 2.11) on a first call: a cold page cache and an empty compile cache.
Nothing here has been measured on that machine yet; the first call's log (each
step's seconds, the smoke's module load times) is what to correct them with.
"""
from __future__ import annotations

from . import kernels as _kernels
from . import models as _models
from . import variants as _variants

BIG = 1 << 26

# why a case, suite, course backend or experiment did not run: a deadline cut it (a
# results file with any of these is not complete)
NOT_STARTED = "not started: the run's deadline was reached"

# (name, seconds, what): start-up costs, cold. bench/README.md and the header of
# bench/gpu_check.sh quote these lines (a test keeps them in step).
STARTUP = (
    ("python", 1.0, "Python with NumPy and fcgpu imported"),
    ("cupy", 2.5, "import cupy and create the CUDA context (a first kernel launch)"),
    ("torch", 7.0, "import torch 2.11 from a cold page cache, and its CUDA context"),
    ("nvrtc", 30.0, "NVRTC compile of our 5 kernels/ modules on an empty CuPy cache"),
    ("cupy_kernel", 0.5, "one of CuPy's own elementwise or reduction kernels, empty cache"),
    ("pytest", 3.0, "a suite's pytest process (pytest, pytest-benchmark, the plugin)"),
    ("nvidia_smi", 2.0, "nvidia-smi, twice, on a driver without persistence mode"),
)


def startup(name):
    """Seconds of one start-up cost in :data:`STARTUP`."""
    for key, secs, _ in STARTUP:
        if key == name:
            return secs
    raise KeyError("no start-up cost %r; known: %s" % (name, ", ".join(k for k, _, _ in STARTUP)))


def startup_lines():
    """One line per start-up cost, as the docs quote them."""
    return ["%-12s %5.1f s  %s" % (k, s, what) for k, s, what in STARTUP]


def _s(*names):
    return sum(startup(n) for n in names)


# The steps before the headline in bench/gpu_check.sh, estimated (each within its cap).
STEP_ESTIMATES = {
    # nvidia-smi, CuPy's device properties, torch imported (warms the page cache)
    "info": _s("nvidia_smi", "python", "cupy", "python", "torch"),
    # --load-times: a cold process (compiles every module into a fresh cache, copied to
    # the shared one) and a warm one; then every kernel once on small inputs (~8 s)
    "smoke": _s("python", "cupy", "nvrtc") + _s("python", "cupy") + 1.0 + _s("python", "cupy")
    + 8.0,
}

# Headline kernel cases, in the order they run: (op, shape, variants, seconds). A case's
# seconds: setting up each variant's inputs, one untimed call, three sizing calls and
# the quick budget (1 s) of interleaved chunks. Our modules come from the cache the
# smoke filled; the CuPy baseline compiles its own kernels (about 8) here.
HEADLINE_KERNELS = (
    ("copy", (BIG,), ("cupy_unfused", "torch_cuda"), 3.0),
    ("dropout_fwd", (BIG,), ("fcgpu",), 2.5),
    ("dropout_bwd", (BIG,), ("fcgpu",), 2.5),
    ("fused_fwd", (490, 500), ("fcgpu", "cupy_curand"), 2.0 + 8 * startup("cupy_kernel")),
    ("fused_fwd", (65536, 4096), ("fcgpu", "cupy_curand"), 5.0),
)
# Headline training: (net, variants, seconds): each variant's model and first step
# (fcgpu compiles ~10 CuPy kernels; the graph variant captures), then the quick
# budget (10 s) of interleaved chunks.
HEADLINE_TRAIN = (
    ("default", ("fcgpu", "fcgpu_graph", "torch_cuda"),
     3.0 + 10 * startup("cupy_kernel") + 3.0 + 3.0 + 12.0),
)
# The course's whole run: (backend, seconds) in the order they run; each a fresh
# process: imports, 50000 synthetic rows (~1.5 s), one warm-up epoch, 17 epochs.
HEADLINE_COURSE = (
    ("fcgpu_graph", _s("python", "cupy") + 1.5 + 1.0 + 3.0),
    ("torch_cuda", _s("python", "torch") + 1.5 + 1.0 + 4.0),
    ("fcgpu", _s("python", "cupy") + 1.5 + 1.0 + 3.0),
)
# Each suite starts a pytest process and its variant workers, all at once (the slowest
# hello, PyTorch's, is what it waits for).
SUITE_START = _s("pytest", "python", "torch")

PHASES = ("kernels", "train", "course")


def _shape(shape):
    if len(shape) == 1 and shape[0] & (shape[0] - 1) == 0:
        return "2^%d" % (shape[0].bit_length() - 1)
    return "x".join(map(str, shape))


def phase_items():
    """``[(phase, [(what, seconds), ...]), ...]`` in the order the headline runs them;
    a suite's first item is its start-up."""
    kernels = [("start: pytest and the workers", SUITE_START)]
    kernels += [("%s %s" % (op, _shape(shape)), secs) for op, shape, _, secs in HEADLINE_KERNELS]
    train = [("start: pytest and the workers", SUITE_START)]
    train += [("train %s net" % net, secs) for net, _, secs in HEADLINE_TRAIN]
    course = [("course run %s" % name, secs) for name, secs in HEADLINE_COURSE]
    return [("kernels", kernels), ("train", train), ("course", course)]


def phase_seconds():
    """``{phase: estimated seconds}``."""
    return {phase: sum(s for _, s in items) for phase, items in phase_items()}


def headline_seconds():
    """The headline's estimated seconds, all phases."""
    return sum(phase_seconds().values())


def phase_deadlines(deadline_s, phases=PHASES):
    """``{phase: seconds from the start}`` by which each of ``phases`` (in order) must
    be done: ``deadline_s`` shared in proportion to the phases' estimates, so each gets
    its estimate where the deadline holds them all, and the same fraction of it where
    it does not."""
    if deadline_s <= 0:
        raise ValueError("the headline's deadline must be positive, got %r" % deadline_s)
    est = phase_seconds()
    total = sum(est[p] for p in phases)
    out, cum = {}, 0.0
    for p in phases:
        cum += est[p]
        out[p] = deadline_s * cum / total
    return out


def headline_variants(op, shape):
    """The variants the headline measures for kernel case ``(op, shape)``, or ()."""
    for hop, hshape, variants, _ in HEADLINE_KERNELS:
        if hop == op and tuple(hshape) == tuple(shape):
            return variants
    return ()


def headline_train_variants(net):
    """The variants the headline trains on ``net``, or ()."""
    for hnet, variants, _ in HEADLINE_TRAIN:
        if hnet == net:
            return variants
    return ()


def headline_course_backends():
    return tuple(name for name, _ in HEADLINE_COURSE)


# ----------------------------------------------------------------- what each part measures
#
# ``fcgpu bench --part`` (the suites' ``--fcgpu-part``): 'headline' measures the cases
# and variants above only, 'rest' everything else (never what the headline measured),
# 'all' both, the headline's cases first. ``opts``: the suites' options
# (:class:`fcgpu.bench.plugin.Options`).

def _part(opts):
    return getattr(opts, "part", "all")


def _in_part(opts, variant, headline):
    """Whether this run's part measures ``variant`` where the headline measures the
    variants ``headline``."""
    if _part(opts) == "all":
        return True
    return (variant in headline) == (_part(opts) == "headline")


def kernel_cases(opts):
    """``[(op, shape)]`` in the order they run. A run with a deadline (the GPU check
    gives the suite seconds) measures the first ones: the summary's cases first (the
    copy reference and dropout at the largest size, the fused forward at each row
    shape: :data:`HEADLINE_KERNELS`), then the minibatch gathers (augmenting and plain,
    at every batch size), then the flat ops by size and the row ops. Part 'headline'
    keeps the summary's cases only; 'rest' the cases with a variant the headline does
    not measure."""
    every = [("copy", (opts.flat_sizes()[-1],))]
    for b in opts.gather_batches():
        every += [(op, (b,)) for op in _kernels.GATHER_OPS]
    for n in opts.flat_sizes():
        every += [(op, (n,)) for op in _kernels.FLAT_OPS if (op, (n,)) not in every]
    for shape in opts.row_shapes():
        every += [(op, shape) for op in _kernels.ROW_OPS]
    head = [(op, tuple(shape)) for op, shape, _, _ in HEADLINE_KERNELS]
    if _part(opts) == "headline":
        return head
    # (without the 2^26 sizes, a CPU-only run, the copy reference stays first)
    first = [c for c in head if c in every] if head[0] in every else []
    cases = first + [c for c in every if c not in first]
    if _part(opts) == "rest":
        cases = [(op, shape) for op, shape in cases
                 if any(case_variant(opts, op, shape, v) for v in _variants.names("kernels"))]
    return cases


def case_variant(opts, op, shape, variant):
    """Whether this run's part measures ``variant`` on kernel case ``(op, shape)``."""
    return _variants.applicable(variant, op) and _in_part(opts, variant,
                                                          headline_variants(op, shape))


def train_nets(opts):
    if _part(opts) == "headline":
        return [net for net, _, _ in HEADLINE_TRAIN]
    return list(_models.NETS)


def train_variant(opts, net, variant):
    """Whether this run's part trains ``variant`` on ``net``."""
    return _in_part(opts, variant, headline_train_variants(net))


def suite_variants(opts, suite):
    """The variants whose workers a suite ('kernels' or 'train') starts in this run's
    part, in the table's order (:mod:`fcgpu.bench.variants`)."""
    names = _variants.names(suite)
    if _part(opts) != "headline":
        return names
    if suite == "kernels":
        used = {v for _, _, vs, _ in HEADLINE_KERNELS for v in vs}
    else:
        used = {v for _, vs, _ in HEADLINE_TRAIN for v in vs}
    return [v for v in names if v in used]
