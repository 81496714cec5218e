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

import os
import re
import threading
from pathlib import Path

from ..backend import require_cupy

__all__ = ["kernels_dir", "expand_source", "name_expressions", "get_kernel", "sm_count",
           "blocks_per_sm", "compile_options", "MODULES", "CTYPES"]

ENV_KERNELS_DIR = "FCGPU_KERNELS_DIR"

CTYPES = ("float", "double")


def _flat_names():
    return [f"fcgpu_flat<{t}, {op}, {vec}>" for t in CTYPES for op in range(4)
            for vec in ("true", "false")] + ["fcgpu_dropout_mask"]


def _bn_names():
    names = []
    for t in CTYPES:
        names += [f"fcgpu_bn_stats<{t}>", f"fcgpu_bn_stats_finalize<{t}>",
                  f"fcgpu_bn_infer_coef<{t}>", f"fcgpu_bn_bwd_sums<{t}, false>",
                  f"fcgpu_bn_bwd_sums<{t}, true>", f"fcgpu_bn_bwd_finalize<{t}>"]
        names += [f"fcgpu_col_vec<{t}, {op}>" for op in range(5)]
        names += [f"fcgpu_col_flat<{t}, {op}>" for op in range(5)]
    return names


def _optim_names():
    names = []
    for t in CTYPES:
        for vec in ("true", "false"):
            names += [f"fcgpu_adam<{t}, {vec}>", f"fcgpu_adam_dev<{t}, {vec}>"]
            names += [f"fcgpu_rule<{t}, {rule}, {vec}>" for rule in range(3)]
            names += [f"fcgpu_rule_dev<{t}, {rule}, {vec}>" for rule in range(3)]
    return names


def _graph_names():
    names = []
    for t in CTYPES:
        names += [f"fcgpu_gather_rows<{t}, true>", f"fcgpu_gather_rows<{t}, false>",
                  f"fcgpu_graph_advance<{t}>"]
    return names


def _augment_names():
    return [f"fcgpu_augment_gather<{ti}, {to}>" for ti in ("unsigned char",) + CTYPES
            for to in CTYPES]


# module name -> (source file in kernels/, the kernels' name expressions)
MODULES = {
    "dropout": ("dropout.cu", tuple(_flat_names())),
    "batchnorm": ("batchnorm.cu", tuple(_bn_names())),
    "optim": ("optim.cu", tuple(_optim_names())),
    "graph": ("graph.cu", tuple(_graph_names())),
    "augment": ("augment.cu", tuple(_augment_names())),
}


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
_modules = {}       # (device id, module) -> cupy.RawModule
_kernels = {}       # (device id, name expression) -> cupy.RawKernel
_sm_counts = {}     # device id -> multiprocessor count
_occupancy = {}     # (device id, name, threads per block) -> resident blocks per SM


def _module_of(name):
    for mod, (_, names) in MODULES.items():
        if name in names:
            return mod
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
        raw = _modules.get((dev, module))
        if raw is None:
            src = _sources.get(module)
            kdir = kernels_dir()
            if src is None:
                src = _sources[module] = expand_source(MODULES[module][0], kdir)
            raw = cp.RawModule(code=src, options=compile_options(kdir),
                               name_expressions=list(MODULES[module][1]))
            _modules[(dev, module)] = raw
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


def clear_caches():
    """Forget compiled modules and sources (tests; after editing kernels/)."""
    with _lock:
        _sources.clear()
        _modules.clear()
        _kernels.clear()
        _occupancy.clear()
