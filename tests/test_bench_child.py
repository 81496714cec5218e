"""The one child-process helper of the benchmarks (fcgpu.bench.child): what a child
sees in its environment, how the parent reads its JSON lines, and what it says when a
child is slow, dies or is gone. The children here are a few lines of Python; nothing
is timed (the timeouts only bound how long a broken child is waited for)."""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from fcgpu import backend
from fcgpu.bench import child
from fcgpu.bench.child import Child, ChildGone

SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    from fcgpu.bench.child import protocol_out, send
    print("chatter before the protocol")          # on stdout: not a JSON line
    proto = protocol_out()
    print("chatter after: goes to stderr")
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "env":
            send(proto, {k: os.environ.get(k) for k in ("PYTHONPATH", "FCGPU_MATMUL_PRECISION")})
        elif cmd == "two":     # two answers in one write: both must be read, in order
            proto.write(json.dumps({"n": 1}) + "\\n" + json.dumps({"n": 2}) + "\\n")
            proto.flush()
        elif cmd == "sleep":
            time.sleep(60)
        elif cmd == "die":
            sys.stderr.write("the last words\\n")
            sys.exit(3)
''')


@pytest.fixture
def kid(tmp_path, monkeypatch):
    (tmp_path / "fake_child.py").write_text(SCRIPT)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    started = []

    def start(**kw):
        c = Child("fake_child", **kw)
        started.append(c)
        return c
    yield start
    for c in started:
        c.kill()


def test_json_lines_only_and_several_in_one_write(kid):
    """Mutants caught: the line before protocol_out() read as an answer (a JSON error);
    a second line that arrived with the first lost, or waited for until the timeout
    (select on the pipe while the line sits in a buffer)."""
    c = kid()
    c.send("two")
    assert c.read(10) == {"n": 1}
    assert c.read(10) == {"n": 2}
    c.close()
    assert c.proc.returncode == 0


def test_the_child_gets_this_checkout_and_the_parents_matmul_precision(kid):
    """Mutant caught: env() without FCGPU_MATMUL_PRECISION (a child then computes its
    products in its own default, not as `fcgpu bench --matmul-precision` asked)."""
    previous = backend.set_matmul_precision("high")
    try:
        c = kid()
        c.send("env")
        got = c.read(30)
    finally:
        backend.set_matmul_precision(previous)
    root = os.path.dirname(os.path.dirname(os.path.abspath(child.__file__)))
    assert got["PYTHONPATH"].split(os.pathsep)[0] == os.path.dirname(root)
    assert got["FCGPU_MATMUL_PRECISION"] == "high"


def test_a_slow_child_is_stopped(kid):
    c = kid()
    c.send("sleep")
    with pytest.raises(ChildGone) as gone:
        c.read(0.5)
    assert gone.value.reason == "timeout" and gone.value.timeout == 0.5
    assert not c.running


def test_a_dying_child_says_its_exit_code_and_last_words(kid):
    c = kid(keep_stderr=True)
    c.send("die")
    with pytest.raises(ChildGone) as gone:
        c.read(30)
    assert (gone.value.reason, gone.value.code, gone.value.tail) == ("died", 3, "the last words")
    with pytest.raises(ChildGone) as gone:
        c.send("env")
    assert gone.value.reason == "exited" and gone.value.code == 3


def test_request_sends_json(kid, monkeypatch):
    c = kid()
    sent = []
    monkeypatch.setattr(c, "send", lambda line: sent.append(line))
    monkeypatch.setattr(c, "read", lambda timeout: {"ok": True})
    assert c.request({"cmd": "x"}, 5) == {"ok": True} and json.loads(sent[0]) == {"cmd": "x"}
