"""Loading ``kernels/`` into CuPy: sources, name expressions, per-device caches.

Nothing here compiles or imports CuPy at import time. The first launch of a kernel
on a device builds its whole ``.cu`` file with NVRTC through ``cupy.RawModule`` and
later launches in the process reuse it. Whether the next process compiles again
depends on CuPy: a module built with ``name_expressions`` (all of ours) is kept in
CuPy's on-disk kernel cache (``CUPY_CACHE_DIR``) by CuPy 14.2 and later, and by 14.1
under a CUDA driver >= 12.4; CuPy 13.x to 14.0.x recompile it in every process (so
the extras require 14.1/14.2). ``bench/gpu_check.sh`` logs the cold and warm load
times of each module.

Local ``#include "x.cuh"`` lines are expanded here, in Python, before the source goes
to NVRTC. CuPy's on-disk cache is keyed on the source text and the options, so an
edited header then always gives a new key instead of a stale binary.
"""
from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..backend import require_cupy

__all__ = ["kernels_dir", "expand_source", "name_expressions", "get_kernel", "sm_count",
           "blocks_per_sm", "compile_options", "loaded_kernels", "Kernel", "MODULES",
           "CTYPES", "c_type", "FLOAT_DTYPES"]

ENV_KERNELS_DIR = "FCGPU_KERNELS_DIR"

# the C++ spelling of each array dtype a kernel template takes
_C_TYPES = {np.dtype(np.uint8): "unsigned char", np.dtype(np.float32): "float",
            np.dtype(np.float64): "double"}
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
CTYPES = tuple(_C_TYPES[d] for d in FLOAT_DTYPES)   # ("float", "double")


def c_type(dtype):
    """``'float'``, ``'double'`` or ``'unsigned char'`` for a NumPy dtype."""
    try:
        return _C_TYPES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise ValueError("no kernel takes arrays of dtype %r" % (dtype,)) from None


def _spell(value):
    """A template argument as C++ writes it in a name expression."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str):
        return value
    return c_type(value)


# source file in kernels/ -> the Kernel objects declared for it, in declaration order
_REGISTRY = {}


class Kernel:
    """A ``__global__`` function (template) of ``kernels/<source>`` and the
    instantiations fcgpu launches: the one place a kernel's name is spelled in Python.

    ``Kernel("dropout.cu", "fcgpu_flat", FLOAT_DTYPES, FLAT_OPS, (True, False))``
    declares ``fcgpu_flat<T, OP, VEC>`` for every combination of the given values
    (dtypes, ints, bools, or C++ spellings); without value lists, a plain kernel.
    ``kernel.name(np.float32, 2, True)`` is the name expression
    ``'fcgpu_flat<float, 2, true>'`` (built once per argument tuple, and refused
    unless the table declares it), which ``get_kernel`` compiles and
    ``blocks_per_sm`` sizes. The objects live beside the Python that launches them, in
    CuPy's style; declaring one adds its names to :data:`MODULES`, from which NVRTC's
    name expressions, the host emulator of the tests and the nvcc checks all derive.
    Each ``.cu`` must explicitly instantiate exactly these names (the tests check)."""

    def __init__(self, source, template, *params):
        if not source.endswith(".cu"):
            raise ValueError("Kernel source must be a kernels/*.cu file, got %r" % (source,))
        self.source, self.template = source, template
        self.params = tuple(tuple(_spell(v) for v in p) for p in params)
        combos = itertools.product(*self.params) if self.params else [()]
        self.names = tuple(self._join(c) for c in combos)
        self._cache = {}
        owners = _REGISTRY.setdefault(source, [])
        taken = {n for k in owners for n in k.names}
        if taken & set(self.names) or any(k.template == template for k in owners):
            raise ValueError("kernel %s of %s is declared twice" % (template, source))
        owners.append(self)

    def _join(self, spelled):
        return "%s<%s>" % (self.template, ", ".join(spelled)) if spelled else self.template

    def name(self, *args):
        """The name expression of the instantiation for template arguments ``args``."""
        got = self._cache.get(args)
        if got is None:
            if len(args) != len(self.params):
                raise TypeError("%s takes %d template arguments, got %d"
                                % (self.template, len(self.params), len(args)))
            got = self._join(tuple(_spell(a) for a in args))
            if got not in self.names:
                raise KeyError("%s is not among the instantiations declared for %s"
                               % (got, self.source))
            self._cache[args] = got
        return got

    def __repr__(self):
        return "Kernel(%r, %r, %d instantiations)" % (self.source, self.template,
                                                      len(self.names))


class _Modules(Mapping):
    """``{module: (source file, name expressions)}``, read from the declared
    :class:`Kernel` objects (module = the file's stem: ``'dropout'`` for dropout.cu)."""

    def _table(self):
        return {src[:-3]: (src, tuple(n for k in ks for n in k.names))
                for src, ks in _REGISTRY.items()}

    def __getitem__(self, module):
        return self._table()[module]

    def __iter__(self):
        return iter(self._table())

    def __len__(self):
        return len(_REGISTRY)

    def __repr__(self):
        return "MODULES(%r)" % (self._table(),)


# Filled as fcgpu.cuda's launcher modules (ops, train_ops, augment) declare their
# kernels; the package's __init__ imports them, so it is complete before any launch.
MODULES = _Modules()


def name_expressions(module):
    return MODULES[module][1]


def kernels_dir():
    """The folder holding the ``.cu``/``.cuh`` sources.

    ``$FCGPU_KERNELS_DIR`` if set; else ``fcgpu/kernels`` (the installed wheel ships
    the top-level ``kernels/`` there); else ``<repo>/kernels`` in a source checkout.
    """
    pkg = Path(__file__).resolve().parent.parent
    env = os.environ.get(ENV_KERNELS_DIR)
    candidates = [Path(env)] if env else []
    candidates += [pkg / "kernels", pkg.parent / "kernels"]
    for cand in candidates:
        if (cand / "philox.cuh").is_file():
            return cand
    raise FileNotFoundError(
        "fcgpu CUDA kernel sources not found (looked in %s); reinstall fcgpu or set %s"
        % (", ".join(str(c) for c in candidates), ENV_KERNELS_DIR))


_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"\s*(//.*)?$')


def expand_source(filename, kdir=None):
    """The text of ``kdir/filename`` with its local ``#include "..."`` lines replaced
    by the files' text (each file once), with ``#line`` markers for diagnostics."""
    kdir = Path(kdir) if kdir is not None else kernels_dir()
    seen = set()

    def expand(name):
        path = (kdir / name).resolve()
        seen.add(path)
        out = ['#line 1 "%s"' % name]
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = _INCLUDE_RE.match(line)
            if m is None:
                out.append(line)
                continue
            inc = m.group(1)
            inc_path = (kdir / inc).resolve()
            if not inc_path.is_file():
                raise FileNotFoundError("%s:%d: include %r not found in %s"
                                        % (name, lineno, inc, kdir))
            if inc_path not in seen:
                out.append(expand(inc))
            out.append('#line %d "%s"' % (lineno + 1, name))
        return "\n".join(out)

    return expand(filename) + "\n"


def compile_options(kdir=None):
    kdir = kernels_dir() if kdir is None else kdir
    # No fast-math: the dropout multiply must stay one IEEE multiply, and the
    # statistics need correctly rounded division and square root.
    return ("-std=c++17", "-I%s" % kdir)


_lock = threading.Lock()
_sources = {}       # module -> expanded source text
_modules = {}       # (device id, module) -> (cupy.RawModule, the names it was built with)
_kernels = {}       # (device id, name expression) -> cupy.RawKernel
_sm_counts = {}     # device id -> multiprocessor count
_occupancy = {}     # (device id, name, threads per block) -> resident blocks per SM


def _module_of(name):
    for src, kernels in _REGISTRY.items():
        if any(name in k.names for k in kernels):
            return src[:-3]
    raise KeyError("no fcgpu kernel named %r" % (name,))


def get_kernel(name):
    """The ``cupy.RawKernel`` for name expression ``name`` on the current device,
    compiling its module on first use there."""
    cp = require_cupy()
    dev = cp.cuda.runtime.getDevice()
    kern = _kernels.get((dev, name))
    if kern is not None:
        return kern
    module = _module_of(name)
    with _lock:
        kern = _kernels.get((dev, name))
        if kern is not None:
            return kern
        raw, built = _modules.get((dev, module), (None, ()))
        if name not in built:  # first use here (or a kernel declared since the build)
            fname, built = MODULES[module]
            src = _sources.get(module)
            kdir = kernels_dir()
            if src is None:
                src = _sources[module] = expand_source(fname, kdir)
            raw = cp.RawModule(code=src, options=compile_options(kdir),
                               name_expressions=list(built))
            _modules[(dev, module)] = (raw, built)
        kern = raw.get_function(name)
        _kernels[(dev, name)] = kern
        return kern


def sm_count():
    """Multiprocessor count of the current device (cached)."""
    cp = require_cupy()
    dev = cp.cuda.runtime.getDevice()
    n = _sm_counts.get(dev)
    if n is None:
        n = int(cp.cuda.Device(dev).attributes["MultiProcessorCount"])
        _sm_counts[dev] = n
    return n


def blocks_per_sm(name, threads, default=8):
    """How many ``threads``-thread blocks of kernel ``name`` one SM holds at once on
    the current device (the driver's occupancy calculator; ``default`` if CuPy does
    not expose it). Grids are sized in whole waves of this, so none ends half empty."""
    cp = require_cupy()
    dev = cp.cuda.runtime.getDevice()
    key = (dev, name, int(threads))
    n = _occupancy.get(key)
    if n is None:
        kern = get_kernel(name)
        try:
            n = int(cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                kern.kernel.ptr, int(threads), 0))
        except Exception:  # an older CuPy without the binding: assume full occupancy
            n = default
        n = max(1, n)
        _occupancy[key] = n
    return n


def loaded_kernels(device_id):
    """The name expressions fetched on device ``device_id`` in this process."""
    return {name for dev, name in list(_kernels) if dev == device_id}


def clear_caches():
    """Forget compiled modules and sources (tests; after editing kernels/)."""
    with _lock:
        _sources.clear()
        _modules.clear()
        _kernels.clear()
        _occupancy.clear()
