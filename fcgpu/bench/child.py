"""The benchmarks' child processes: one helper for every protocol that drives them.

Three protocols run a measurement in a process of its own, so that thread pools,
CUDA contexts and allocator caches never mix:

* :mod:`fcgpu.bench.worker`: one process per variant; a JSON request line in, a JSON
  answer line out;
* :mod:`fcgpu.bench.experiments` (time to accuracy): one process per backend; ``go``
  in, one JSON line per epoch out;
* :mod:`fcgpu.bench.course_run`: one process per backend; one JSON result line out.

Parent side: :class:`Child` starts ``python -m MODULE ARGS...`` with this checkout on
``PYTHONPATH`` and the parent's matmul precision (:func:`env`), sends lines and reads
JSON lines with a timeout; a child that does not answer in time (it is stopped), that
exits, or whose pipe breaks raises :class:`ChildGone`, which says which (each protocol
words its own message from it). Child side: :func:`protocol_out` keeps the real stdout
for the protocol and sends everything else printed, by Python or by a library's C
code, to stderr.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time

__all__ = ["Child", "ChildGone", "env", "protocol_out", "send"]


class ChildGone(RuntimeError):
    """The child cannot answer. ``reason``: ``'timeout'`` (no answer in ``timeout``
    seconds; it was stopped), ``'died'`` (its output ended: ``code`` is its exit status,
    ``tail`` the last line it wrote on stderr where that is kept), ``'exited'`` (it had
    exited before the request) or ``'gone'`` (writing to it failed: ``detail``)."""

    def __init__(self, reason, code=None, timeout=None, tail=None, detail=None):
        self.reason, self.code, self.timeout = reason, code, timeout
        self.tail, self.detail = tail, detail
        super().__init__("%s (exit code %s, timeout %s, %s)" % (reason, code, timeout,
                                                               tail or detail))


def env():
    """The environment of a child: ours, this checkout first on ``PYTHONPATH``,
    unbuffered output, and ``FCGPU_MATMUL_PRECISION`` set to this process's matmul
    precision (:func:`fcgpu.backend.get_matmul_precision`), so every child computes its
    products as the parent asked."""
    from .. import backend
    out = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parts = [root] + [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join(parts)
    out.setdefault("PYTHONUNBUFFERED", "1")
    out[backend.PRECISION_ENV_VAR] = backend.get_matmul_precision()
    return out


def protocol_out():
    """Child side: a line-buffered file on the process's real stdout, for the protocol;
    from here on file descriptor 1 and ``sys.stdout`` are stderr, so nothing else that
    is printed can get into the protocol."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def send(proto, obj):
    """Child side: one JSON line on ``proto``."""
    proto.write(json.dumps(obj) + "\n")
    proto.flush()


class Child:
    """``python -m module *args`` with pipes to its stdin and stdout. ``keep_stderr``:
    its stderr goes to a temporary file (instead of ours) whose last line a
    :class:`ChildGone` of reason ``'died'`` carries as ``tail``."""

    def __init__(self, module, args=(), keep_stderr=False):
        self._err = tempfile.TemporaryFile() if keep_stderr else None
        self.proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, env=env())
        self._buf = b""

    @property
    def running(self):
        return self.proc.poll() is None

    def send(self, line):
        """Write one line (``ChildGone`` 'exited' or 'gone' where it cannot be)."""
        if not self.running:
            raise ChildGone("exited", code=self.proc.returncode, tail=self.tail())
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:  # BrokenPipeError among them
            raise ChildGone("gone", detail=str(exc)) from None

    def read(self, timeout):
        """The next JSON object line within ``timeout`` seconds (lines that are not a
        JSON object are skipped); ``ChildGone`` 'timeout' (the child is stopped) or
        'died'."""
        end = time.monotonic() + timeout
        while True:
            while b"\n" not in self._buf:
                left = end - time.monotonic()
                ready = select.select([self.proc.stdout], [], [], max(left, 0))[0] \
                    if left > 0 else []
                if not ready:
                    self.kill()
                    raise ChildGone("timeout", timeout=timeout)
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise ChildGone("died", code=self.proc.wait(), tail=self.tail())
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            if line.lstrip().startswith(b"{"):
                return json.loads(line)

    def request(self, obj, timeout):
        """Send ``obj`` as a JSON line and read the answer."""
        self.send(json.dumps(obj))
        return self.read(timeout)

    def tail(self):
        """The last non-blank line the child wrote on stderr, where it is kept."""
        if self._err is None:
            return None
        self._err.seek(0)
        lines = [ln for ln in self._err.read().decode(errors="replace").splitlines()
                 if ln.strip()]
        return lines[-1] if lines else None

    def kill(self):
        if self.running:
            self.proc.kill()
        self.proc.wait()

    def close(self, timeout=10.0):
        """Close its stdin (a protocol's end), wait ``timeout`` seconds for it to exit,
        else stop it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc.stdout.close()
        if self._err is not None:
            self._err.close()
