"""One subprocess per variant: the measuring side and the driving side.

``python -m fcgpu.bench.worker VARIANT`` reads one JSON request per line on stdin and
answers one JSON line on stdout (anything else the libraries print goes to stderr).
Requests:

* ``{"cmd": "hello"}`` -> what runs here (device, library versions, thread counts), or
  ``{"ok": false, "skip": reason}`` when the variant cannot run on this machine;
* ``{"cmd": "kernel_setup", "op", "shape"}`` -> builds the inputs (rotating several
  input sets so that consecutive calls span 4x the last-level cache);
* ``{"cmd": "kernel_run", "calls": k}`` -> times per call: on a CPU, ``host``, one
  host-clock time per call; on a GPU, one pair of CUDA events on the stream brackets
  all k calls launched back to back (after a device synchronize), so the GPU never
  waits for Python between calls and the host's launch latency is spread over k:
  ``device`` = [event time / k] and ``host`` = [host-clock time to the end event / k];
* ``{"cmd": "train_setup", "net"}`` / ``{"cmd": "train_run", "steps": k}`` -> one time
  for k training steps with a device sync at the end only;
* ``{"cmd": "free"}``, ``{"cmd": "quit"}``.

A variant that cannot run a case answers ``{"ok": false, "skip": reason}``; an
unexpected exception answers ``{"ok": false, "error": "Type: message"}``.

:class:`Worker` is the driving side (used by the suites): it starts the process,
sends requests and gives up on one that outlives its timeout (the worker is killed
and the variant reported as skipped with that reason).
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback

from .child import Child, ChildGone, protocol_out, send
from .variants import VARIANTS


def cpu_llc_bytes():
    """Total last-level cache of the CPUs we may run on (sum over distinct caches)."""
    seen = {}
    base = "/sys/devices/system/cpu"
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    for c in cpus:
        d = "%s/cpu%d/cache" % (base, c)
        try:
            best = None
            for idx in os.listdir(d):
                if not idx.startswith("index"):
                    continue
                with open("%s/%s/level" % (d, idx)) as f:
                    level = int(f.read())
                with open("%s/%s/size" % (d, idx)) as f:
                    size = f.read().strip()
                with open("%s/%s/shared_cpu_list" % (d, idx)) as f:
                    shared = f.read().strip()
                mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
                nbytes = int(size.rstrip("KMG")) * mult
                if best is None or level > best[0]:
                    best = (level, shared, nbytes)
            if best:
                seen[(best[0], best[1])] = best[2]
        except (OSError, ValueError):
            continue
    return sum(seen.values()) or (32 << 20)


def _gpu_l2_bytes(cp, default=50 << 20):
    """The current GPU's L2 size in bytes (CuPy's device properties), else ``default``."""
    try:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
        return int(props.get("l2CacheSize") or default)
    except Exception:
        return default



def _out_of_memory(exc):
    """Why a case was skipped when ``exc`` is an out-of-memory error, else None: CuPy's
    in fcgpu's one line (size asked for, free and total memory:
    :func:`fcgpu.backend.device_out_of_memory`), PyTorch's by its name, the host's."""
    from ..backend import device_out_of_memory
    dev = device_out_of_memory(exc, "a smaller case")
    if dev is not None:
        return "out of device memory: %s" % dev
    if "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc):
        return "out of device memory: %s" % exc
    if isinstance(exc, MemoryError):
        return "out of host memory (%s)" % exc
    return None

class _Server:
    def __init__(self, variant):
        self.variant = variant
        self.row = VARIANTS.get(variant)
        self.family = self.row.family if self.row else None
        self.kind = self.row.device if self.row else None
        self.case = None
        self.train = None
        self.torch = None
        self.cp = None
        self.xp = None

    # ------------------------------------------------------------- hello
    def hello(self, req):
        """What runs here: device, libraries, threads, the matmul precision that
        applies (``matmul_precision``, and ``tf32``: whether float32 products may use
        TF32); or a skip where the variant cannot run on this machine."""
        if self.row is None:
            return {"ok": False, "skip": "unknown variant %r" % self.variant}
        info = {"ok": True, "variant": self.variant, "device_kind": self.kind,
                "pid": os.getpid(), "threads": {}}
        why = {"torch": self._hello_torch, "cupy": self._hello_cupy,
               "numpy": self._hello_numpy}[self.family](info)
        if why:
            return {"ok": False, "skip": why}
        if self.kind == "cpu":
            from ..backend import device_name
            import numpy as np
            info["device"] = device_name(np)
            info["cache_bytes"] = cpu_llc_bytes()
        self.cache_bytes = info["cache_bytes"]
        return info

    def _hello_torch(self, info):
        try:
            import torch
        except Exception as exc:
            return "PyTorch is not importable (%s)" % exc
        from .torch_course import match_precision
        self.torch = torch
        torch.set_num_threads(len(os.sched_getaffinity(0)))  # as many as the NumPy path
        info["threads"]["torch"] = torch.get_num_threads()
        info["torch"] = torch.__version__
        if self.kind == "gpu":
            if not torch.cuda.is_available():
                return "torch.cuda.is_available() is False (PyTorch %s)" % torch.__version__
            info["device"] = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            info["cache_bytes"] = int(getattr(props, "L2_cache_size", 50 << 20))
            info["cuda"] = torch.version.cuda
        info["matmul_precision"], info["tf32"] = match_precision(
            torch, "cuda" if self.kind == "gpu" else "cpu")
        if self.row.compile and not hasattr(torch, "compile"):
            return "torch.compile is not available"
        return None

    def _hello_cupy(self, info):
        from .. import backend
        ok, why = backend.cupy_status()
        if not ok:
            return "no GPU backend: " + why
        cp = backend.require_cupy()
        self.cp = self.xp = cp
        info["device"] = backend.device_name(cp)
        info["cupy"] = cp.__version__
        info["cache_bytes"] = _gpu_l2_bytes(cp)
        from ..cuda.blas import tf32_enabled
        import numpy as np
        info["matmul_precision"] = backend.get_matmul_precision()
        info["tf32"] = bool(tf32_enabled(np.float32))
        if self.row.graph:
            try:
                from ..cuda import graph  # noqa: F401
            except ImportError as exc:
                return "no CUDA-graph step in this fcgpu (%s)" % exc
        return None

    def _hello_numpy(self, info):
        import numpy as np
        import numba
        from .. import backend, cpu  # noqa: F401  (cpu: Numba's threading layer)
        from .machine import blas_info
        self.xp = np
        info["threads"]["blas"] = blas_info().get("threads")
        info["threads"]["numba"] = numba.get_num_threads()
        info["numba"] = numba.__version__
        # (NumPy computes float32 products in float32 whatever the setting)
        info["matmul_precision"], info["tf32"] = backend.get_matmul_precision(), False
        return None

    # ------------------------------------------------------------- kernels
    def kernel_setup(self, req):
        from . import kernels
        self.free({})
        op = req["op"]
        shape = tuple(int(s) for s in req["shape"])
        k = kernels.rotation_count(op, shape, self.cache_bytes,
                                   factor=req.get("rotate_factor", 4))
        try:
            if self.family == "torch":
                dev = "cuda" if self.kind == "gpu" else "cpu"
                self.case = kernels.build_torch_case(self.variant, op, shape, self.torch, dev, k)
            else:
                self.case = kernels.build_xp_case(self.variant, op, shape, self.xp, k)
        except kernels.SkipCase as exc:
            return {"ok": False, "skip": str(exc)}
        except Exception as exc:
            self.free({})
            why = _out_of_memory(exc)
            if why is None:
                raise
            return {"ok": False, "skip": why}
        self._sync()
        return {"ok": True, "rotate": k, "label": self.case.label}

    def _sync(self):
        if self.kind != "gpu":
            return
        if self.family == "torch":
            self.torch.cuda.synchronize()
        else:
            self.cp.cuda.runtime.deviceSynchronize()

    def kernel_run(self, req):
        calls = int(req["calls"])
        if calls < 1:
            raise ValueError("kernel_run needs calls >= 1, got %d" % calls)
        if self.kind == "gpu":
            host, dev = self._gpu_chunk(self.case, calls)
            return {"ok": True, "host": [host], "device": [dev], "calls": calls}
        host = []
        perf = time.perf_counter
        for _ in range(calls):
            t0 = perf()
            self.case.call()
            host.append(perf() - t0)
        return {"ok": True, "host": host, "device": None, "calls": calls}

    def _gpu_chunk(self, case, calls):
        """``(host s, device s)`` per call: ``calls`` launches between one pair of
        CUDA events on the current stream (PyTorch: ``torch.cuda.Event``; CuPy:
        ``cupy.cuda.Event``, ``record`` on the current stream and
        ``get_elapsed_time`` in ms, cupy/cuda/stream.pyx v14.2.0)."""
        if self.family == "torch":
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
        else:
            start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        self._sync()
        t0 = time.perf_counter()
        start.record()
        for _ in range(calls):
            case.call()
        end.record()
        end.synchronize()
        host = time.perf_counter() - t0
        if self.family == "torch":
            ms = start.elapsed_time(end)
        else:
            ms = self.cp.cuda.get_elapsed_time(start, end)
        return host / calls, ms / 1e3 / calls

    def free(self, req):
        self.case = None
        self.train = None
        gc.collect()
        if self.cp is not None:
            self.cp.get_default_memory_pool().free_all_blocks()
        if self.torch is not None and self.kind == "gpu":
            self.torch.cuda.empty_cache()
        return {"ok": True}

    # ------------------------------------------------------------- training
    def train_setup(self, req):
        from . import models
        self.free({})
        net = req["net"]
        t0 = time.perf_counter()
        try:
            if self.family == "torch":
                self.train = models.build_torch(self.variant, net, self.torch)
            else:
                self.train = models.build_fcgpu(self.variant, net)
        except Exception as exc:
            self.free({})
            why = _out_of_memory(exc)
            if why is None:
                raise
            return {"ok": False, "skip": why}
        t1 = time.perf_counter()
        try:
            self.train.steps(1)  # first step: compiles (Numba, NVRTC, torch.compile)
        except Exception as exc:
            self.free({})
            return {"ok": False, "skip": "the first training step failed: %s: %s"
                                         % (type(exc).__name__, exc)}
        t2 = time.perf_counter()
        out = {"ok": True, "label": self.train.label, "build_s": t1 - t0,
               "first_step_s": t2 - t1}
        out.update(self.train.info)
        return out

    def train_run(self, req):
        k = int(req["steps"])
        t0 = time.perf_counter()
        self.train.steps(k)
        return {"ok": True, "seconds": time.perf_counter() - t0, "steps": k}

    def threads(self, req):
        out = {}
        if self.family == "numpy":
            import numba
            out["numba"] = numba.get_num_threads()
            try:
                out["numba_layer"] = numba.threading_layer()
            except Exception:
                out["numba_layer"] = None
            from .machine import blas_info
            out["blas"] = blas_info().get("threads")
        if self.torch is not None:
            out["torch"] = self.torch.get_num_threads()
        return {"ok": True, "threads": out}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    proto = protocol_out()  # library chatter goes to stderr, never into the protocol
    server = _Server(argv[0])
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        cmd = req.get("cmd")
        if cmd == "quit":
            send(proto, {"ok": True})
            break
        try:
            resp = getattr(server, cmd)(req)
        except Exception as exc:
            resp = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc),
                    "traceback": traceback.format_exc(limit=6)}
        send(proto, resp)
    return 0


# ----------------------------------------------------------------- driving side

class WorkerGone(RuntimeError):
    """The worker died or did not answer in time; the message says which."""


class Worker:
    """A started worker for one variant (a :class:`fcgpu.bench.child.Child`). ``info``
    holds its hello (or ``skip``, why it cannot run here)."""

    def __init__(self, variant, timeout=180.0, wait=True):
        self.variant = variant
        self.skip = None
        self.info = {}
        self.child = Child("fcgpu.bench.worker", [variant])
        self.proc = self.child.proc
        if wait:
            self.hello(timeout)

    def hello(self, timeout=180.0):
        """Ask what runs here; sets ``info``, or ``skip`` (and stops the worker)."""
        try:
            resp = self.request({"cmd": "hello"}, timeout)
        except WorkerGone as exc:
            self.skip = str(exc)
            return
        if not resp.get("ok"):
            self.skip = resp.get("skip") or resp.get("error") or "worker failed to start"
            self.close()
        else:
            self.info = resp

    @property
    def alive(self):
        return self.skip is None and self.child.running

    def request(self, req, timeout=600.0):
        try:
            return self.child.request(req, timeout)
        except ChildGone as gone:
            raise WorkerGone(self._why(gone, req.get("cmd"))) from None

    def _why(self, gone, cmd):
        v = self.variant
        if gone.reason == "exited":
            return "the %s worker exited (code %s)" % (v, gone.code)
        if gone.reason == "gone":
            return "the %s worker is gone (%s)" % (v, gone.detail)
        if gone.reason == "timeout":
            return "the %s worker did not answer %r within %.0f s; stopped it" % (
                v, cmd, gone.timeout)
        return "the %s worker died during %r (exit code %s%s)" % (
            v, cmd, gone.code, ", likely killed for memory" if gone.code in (-9, 137) else "")

    def kill(self):
        self.child.kill()

    def close(self):
        if self.child.running:
            try:
                self.request({"cmd": "quit"}, 10)
            except WorkerGone:
                pass
        self.child.close(10)


if __name__ == "__main__":
    sys.exit(main())
