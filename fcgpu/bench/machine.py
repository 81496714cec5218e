"""What the benchmarks ran on: CPU, cores, memory, GPU, driver, CUDA, library versions,
the BLAS NumPy uses and its threads, the fcgpu commit, the date."""
from __future__ import annotations

import ctypes
import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata

ENV_KEYS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
            "NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "OPENBLAS_CORETYPE", "FCGPU_BACKEND",
            "CUDA_VISIBLE_DEVICES")


def _version(*dists):
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def blas_info():
    """The BLAS NumPy was built with, and how many threads it uses now.

    threadpoolctl answers when installed; otherwise the OpenBLAS library NumPy loaded
    is asked directly (``*openblas_get_num_threads*``)."""
    import numpy as np
    out = {"name": None, "version": None, "threads": None, "config": None, "source": None}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        out["name"] = blas.get("name")
        out["version"] = blas.get("version")
        out["config"] = blas.get("openblas configuration")
    except Exception:
        pass
    try:
        import threadpoolctl
        for pool in threadpoolctl.threadpool_info():
            if pool.get("user_api") == "blas":
                out.update(threads=pool.get("num_threads"), source="threadpoolctl",
                           internal_api=pool.get("internal_api"),
                           architecture=pool.get("architecture"))
                return out
    except ImportError:
        pass
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "blas" in ln.lower() and ".so" in ln})
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                    "scipy_openblas_get_num_threads", "openblas_get_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                out["threads"] = int(fn())
                out["source"] = "%s (%s)" % (sym, os.path.basename(path))
                cfgsym = sym.replace("get_num_threads", "get_config")
                cfn = getattr(lib, cfgsym, None)
                if cfn is not None:
                    cfn.restype = ctypes.c_char_p
                    out["runtime_config"] = cfn().decode(errors="replace").strip()
                return out
    return out


def _cpu_model():
    from ..backend import cpu_model
    return cpu_model()


def _mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def git_commit(root=None):
    """``(commit, dirty)`` of the fcgpu source tree, or ``(None, None)``."""
    root = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def gpu_info():
    """The GPU as CuPy and the driver see it, or ``{"available": False, "reason"}``."""
    from .. import backend
    ok, why = backend.cupy_status()
    if not ok:
        return {"available": False, "reason": why}
    cp = backend.require_cupy()
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    drv = cp.cuda.runtime.driverGetVersion()
    rt = cp.cuda.runtime.runtimeGetVersion()
    info = {
        "available": True,
        "name": backend.device_name(cp),
        "count": cp.cuda.runtime.getDeviceCount(),
        "compute_capability": "%s.%s" % (props.get("major"), props.get("minor")),
        "memory_bytes": int(props.get("totalGlobalMem", 0)),
        "sm_count": int(props.get("multiProcessorCount", 0)),
        "l2_bytes": int(props.get("l2CacheSize", 0)),
        "cuda_driver_api": "%d.%d" % (drv // 1000, (drv % 1000) // 10),
        "cuda_runtime": "%d.%d" % (rt // 1000, (rt % 1000) // 10),
        "driver": None,   # the driver's version as nvidia-smi reports it
    }
    try:
        info["pci_bus_id"] = dev.pci_bus_id
    except Exception:  # (a CuPy or driver that cannot say)
        info["pci_bus_id"] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=pci.bus_id,driver_version",
                              "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            info["driver"] = smi_driver_for(info["pci_bus_id"], smi.stdout)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _bus_key(bus_id):
    """(domain, bus, device, function) of a PCI bus id such as CUDA's "0000:65:00.0"
    or nvidia-smi's "00000000:65:00.0" (domains differ in width), or None."""
    try:
        head, func = bus_id.strip().rsplit(".", 1)
        parts = head.split(":")
        if len(parts) == 2:
            parts = ["0"] + parts
        domain, bus, device = parts
        return int(domain, 16), int(bus, 16), int(device, 16), int(func, 16)
    except (AttributeError, ValueError):
        return None


def smi_driver_for(pci_bus_id, smi_csv):
    """The driver version of the GPU at ``pci_bus_id`` in the output of
    ``nvidia-smi --query-gpu=pci.bus_id,driver_version --format=csv,noheader``.

    nvidia-smi numbers GPUs its own way (PCI order, all of them), the CUDA device id
    counts the GPUs CUDA_VISIBLE_DEVICES leaves in CUDA's order: the PCI bus id is
    what both name alike. None when no line matches."""
    want = _bus_key(pci_bus_id) if pci_bus_id else None
    if want is None:
        return None
    for line in smi_csv.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and _bus_key(fields[0]) == want and fields[1]:
            return fields[1]
    return None


def machine_info():
    """Everything the report names about the machine and the software."""
    import numpy as np
    commit, dirty = git_commit()
    gpu = gpu_info()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    from .. import __version__
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_bytes": _mem_total(),
        "gpu": gpu,
        "blas": blas_info(),
        "libraries": {
            "fcgpu": __version__,
            "numpy": np.__version__,
            "numba": _version("numba"),
            "cupy": _version("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"),
            "torch": _version("torch"),
            "matplotlib": _version("matplotlib"),
            "pytest-benchmark": _version("pytest-benchmark"),
        },
        "fcgpu_commit": commit,
        "fcgpu_dirty": dirty,
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }


def device_label(info):
    """The results' ``device``: the GPU name as the driver reports it, else the CPU."""
    gpu = info.get("gpu") or {}
    return gpu.get("name") if gpu.get("available") else info.get("cpu")
