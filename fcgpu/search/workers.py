"""Worker processes on one machine: how many and where (one per GPU, or a share of
the cores each), pinning, spawning and waiting for them, the trial budget they share,
and SIGTERM as an interrupt."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ..errors import ConfigError
from .summary import say

STORAGE_GAVE_UP = 75   # a worker's exit code when it gave up waiting for the storage (EX_TEMPFAIL)


class Tickets:
    """The trial budget of one command, shared by its worker processes: a counter in a
    file, updated under an exclusive lock. ``total=None`` means no limit."""

    def __init__(self, path, total):
        self.path, self.total = path, total

    @classmethod
    def create(cls, folder, total):
        path = os.path.join(folder, "tickets")
        with open(path, "w") as f:
            f.write("0")
        return cls(path, total)

    def claim(self):
        """Take one trial of the budget; False when none is left."""
        return self.total is None or self._update(lambda used: used + 1
                                                  if used < self.total else None)

    def release(self):
        """Give back a trial that did not count: none ran, or it was lost to a fault
        (its retry takes a trial of the budget again)."""
        if self.total is not None:
            self._update(lambda used: max(0, used - 1))

    def _update(self, change):
        """Apply ``change(used) -> new used, or None to leave it`` under the lock."""
        import fcntl
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            new = change(int(f.read().strip() or 0))
            if new is None:
                return False
            f.seek(0)
            f.truncate()
            f.write(str(new))
            f.flush()
            return True


class LocalTickets:
    """The trial budget of a worker that runs in the command's own process."""

    def __init__(self, total):
        self.left = total

    def claim(self):
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def release(self):
        if self.left is not None:
            self.left += 1


class TermAsInterrupt:
    """SIGTERM raises KeyboardInterrupt (in the main thread), so a worker's Optuna marks
    its running trial FAIL cleanly, and the command stops its workers as on Ctrl-C."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise KeyboardInterrupt
            self.old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def visible_gpus():
    """The ``CUDA_VISIBLE_DEVICES`` entries of the GPUs this process may use, one per
    GPU (or MIG instance), found without importing CuPy: from ``CUDA_VISIBLE_DEVICES``
    when set, else from ``nvidia-smi -L``; ``[]`` without a driver."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = []
        for tok in cvd.split(","):
            tok = tok.strip()
            if not tok or tok.startswith("-"):
                break   # CUDA ignores everything after an invalid entry
            ids.append(tok)
        return ids
    try:
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if res.returncode != 0:
        return []
    gpus, migs = [], []
    for line in res.stdout.splitlines():
        m = re.match(r"\s*GPU (\d+):", line)
        if m:
            gpus.append(m.group(1))
        m = re.search(r"\(UUID: (MIG-[^)\s]+)\)", line)
        if m:
            migs.append(m.group(1))
    return migs or gpus


def usable_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return list(range(os.cpu_count() or 1))


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


_CPUS_VAR = "FCGPU_SEARCH_CPUS"   # read by worker_main: the cores a worker is pinned to


def plan_workers(n_workers=None, backend="auto", gpus=None, cpus=None):
    """How many workers and each one's environment overrides.

    On a GPU machine (backend cupy, or auto with CuPy installed and a GPU visible) the
    default is one worker per visible GPU, each pinned to its own through
    ``CUDA_VISIBLE_DEVICES`` (round robin if there are more workers than GPUs). On the
    CPU the default is one worker. Several workers split the cores: each gets
    ``cores // K`` of them (its CPU affinity) and as many BLAS/OpenMP/Numba threads.
    Returns ``(k, [env dict per worker], [description per worker])``.
    """
    import importlib.util
    if backend == "auto":
        backend = (os.environ.get("FCGPU_BACKEND") or "auto").strip().lower()
    if gpus is None:
        if backend == "numpy" or (backend == "auto"
                                  and importlib.util.find_spec("cupy") is None):
            gpus = []
        else:
            gpus = visible_gpus()
    cpus = list(cpus) if cpus else usable_cpus()
    k = n_workers if n_workers is not None else (len(gpus) if gpus else 1)
    if k < 1:
        raise ConfigError("--workers must be >= 1, got %r" % k)
    threads = max(1, len(cpus) // k)
    envs, descs = [], []
    for i in range(k):
        env, where = {}, []
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            where.append("GPU %s" % gpus[i % len(gpus)])
        if k > 1:
            mine = (cpus[i * threads:(i + 1) * threads] if k <= len(cpus)
                    else [cpus[i % len(cpus)]])
            env.update({var: str(threads) for var in _THREAD_VARS})
            env[_CPUS_VAR] = ",".join(map(str, mine))
            where.append("CPU%s %s, %d thread%s" % ("s" if len(mine) > 1 else "",
                                                    _cpu_ranges(mine), threads,
                                                    "s" if threads > 1 else ""))
        else:
            where.append("%d CPU threads" % len(cpus))
        envs.append(env)
        descs.append(", ".join(where))
    return k, envs, descs


def _cpu_ranges(cpus):
    """``[0, 1, 2, 5]`` -> ``'0-2,5'``."""
    out, start, prev = [], None, None
    for c in list(cpus) + [None]:
        if start is not None and (c is None or c != prev + 1):
            out.append(str(start) if start == prev else "%d-%d" % (start, prev))
            start = None
        if c is not None and start is None:
            start = c
        prev = c
    return ",".join(out)


def pin_this_process():
    """Apply the worker's CPU set (``FCGPU_SEARCH_CPUS``) to every thread already
    running (the BLAS starts its threads when NumPy is imported) and to later ones."""
    text = os.environ.get(_CPUS_VAR)
    if not text or not hasattr(os, "sched_setaffinity"):
        return
    cpus = {int(c) for c in text.split(",") if c.strip()}
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def whole_lines(stream):
    """Make a text stream hand each line to its file in one write. The workers share
    the command's stdout; unbuffered (``PYTHONUNBUFFERED``, ``python -u``), ``print``
    writes a line's text and its newline apart, and a training log line of one worker
    (``--verbose``) could be cut by another's. Line buffering without write-through
    keeps both parts until the newline. A stream that cannot change is left as it is."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True, write_through=False)


def spawn_workers(settings, envs, descs, out):
    """Start the worker processes; wait for them; returns the list of exit codes."""
    import fcgpu
    folder = tempfile.mkdtemp(prefix="fcgpu-search-")
    try:
        tickets = Tickets.create(folder, settings.trial_budget())
        spec = os.path.join(folder, "settings.json")
        with open(spec, "w") as f:
            f.write(settings.to_json())
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fcgpu.__file__)))
        procs = []
        for i, (extra, desc) in enumerate(zip(envs, descs)):
            env = dict(os.environ)
            env.update(extra)
            env["PYTHONPATH"] = os.pathsep.join(
                [pkg_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
            cmd = [sys.executable, "-m", "fcgpu.cli", "search", "--worker", spec,
                   "--worker-index", str(i), "--worker-tickets", tickets.path]
            p = subprocess.Popen(cmd, env=env)
            say(out, "worker %d/%d: pid %d, %s" % (i, len(envs), p.pid, desc))
            procs.append(p)
        return _wait_workers(procs, out)
    finally:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def _wait_workers(procs, out):
    codes = [None] * len(procs)
    with TermAsInterrupt():
        try:
            while any(c is None for c in codes):
                for i, p in enumerate(procs):
                    if codes[i] is None and p.poll() is not None:
                        codes[i] = p.returncode
                        if p.returncode < 0:
                            say(out, "worker %d (pid %d) was killed by signal %d; its running "
                                "trial is marked FAIL and retried once its heartbeat is stale"
                                % (i, p.pid, -p.returncode))
                        elif p.returncode == STORAGE_GAVE_UP:
                            say(out, "worker %d (pid %d) gave up waiting for the study storage"
                                % (i, p.pid))
                        elif p.returncode != 0:
                            say(out, "worker %d (pid %d) exited with code %d"
                                % (i, p.pid, p.returncode))
                time.sleep(0.2)
        except KeyboardInterrupt:
            # a terminal's Ctrl-C reached the workers too; make sure the others stop
            # (SIGTERM: the workers fail their running trial cleanly and exit)
            deadline = time.time() + 5
            while time.time() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.1)
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            raise
    return codes
