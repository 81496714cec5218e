"""Which BLAS NumPy uses and whether it runs on every core the process may use.

The CPU path spends most of a training step in three GEMMs per layer, so a BLAS
limited to one thread (an ``OMP_NUM_THREADS=1`` left in the environment, say) halves
the speed on two cores. ``fcgpu train`` reports this line and warns when it happens.
"""
from __future__ import annotations

import os


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def blas_info():
    """``[{'library', 'version', 'threads', 'threading'}]`` for each BLAS loaded."""
    import numpy  # noqa: F401  (loads the BLAS so that threadpoolctl sees it)
    from threadpoolctl import threadpool_info
    return [{"library": p.get("internal_api"), "version": p.get("version"),
             "threads": p.get("num_threads"), "threading": p.get("threading_layer")}
            for p in threadpool_info() if p.get("user_api") == "blas"]


def blas_summary():
    """``(line, warning_or_None)``: a one-line description and a warning when the
    BLAS uses fewer threads than there are usable cores."""
    cores = usable_cores()
    infos = blas_info()
    if not infos:
        return "BLAS: none found by threadpoolctl", None
    line = "BLAS: " + "; ".join("%s %s, %s threads" % (i["library"], i["version"], i["threads"])
                                for i in infos) + " (%d usable cores)" % cores
    low = [i for i in infos if (i["threads"] or 0) < cores]
    warning = None
    if low:
        warning = ("the BLAS runs on %d thread(s) but %d cores are usable; check "
                   "OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS"
                   % (low[0]["threads"] or 0, cores))
    return line, warning
