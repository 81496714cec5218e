"""`fcgpu train` stopped by a signal: SIGINT (Ctrl-C) or SIGTERM sent by this process
to a real `python -m fcgpu.cli train` child, at a point the child reaches
deterministically (issue 25, "Interrupted training").

The child either runs the command as it is, or through a small driver (CHILD below)
that runs it as `python -m fcgpu.cli` does (runpy) and waits, at one chosen step or
checkpoint write, until the signal has been handled, after printing a line the test
reads: so where the signal lands does not depend on how fast the machine is. The test
then runs the resume command the child printed, word for word, and compares its
metrics and checkpoint with an uninterrupted run's, exactly.
"""
import json
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

from fcgpu.checkpoint import load as load_checkpoint

ARGS = ["--hidden", "24", "--epochs", "3", "--batch-size", "50", "--seed", "3"]

# The driver: pauses at training step PAUSE_STEP (the model's loss with labels), at the
# first scoring (the loss without labels) after Solver.train() returned (PAUSE_SCORING),
# or at the PAUSE_WRITE-th rename onto the file WRITE_NAME, until fcgpu train's handler
# has seen the signal (SIGNALS_TO_WAIT of them), then carries on.
CHILD = r"""
import os, runpy, signal, sys, time
import fcgpu.fc_net as fc_net
import fcgpu.solver as solver

step, write = int(os.environ.get("PAUSE_STEP", 0)), int(os.environ.get("PAUSE_WRITE", 0))
scoring = os.environ.get("PAUSE_SCORING") == "1"
wanted = int(os.environ.get("SIGNALS_TO_WAIT", 1))
seen = {"steps": 0, "writes": 0, "trained": False}


def wait_for_signals(where):
    stop = signal.getsignal(signal.SIGINT).__self__  # fcgpu train's StopSignals
    print("PAUSED " + where, file=sys.stderr, flush=True)
    while stop.signum is None:
        time.sleep(0.002)  # (waits for the signal to be handled: no timing)
    if wanted > 1:  # the second signal raises in this loop; there is no way out else
        print("NOTED", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.002)


loss = fc_net.FullyConnectedNet.loss


def counting_loss(self, X, y=None):
    if y is not None:
        seen["steps"] += 1
        if seen["steps"] == step:
            wait_for_signals("step %d" % step)
    elif scoring and seen["trained"]:
        seen["trained"] = False
        wait_for_signals("scoring after training")
    return loss(self, X, y)


train = solver.Solver.train


def noting_train(self):
    train(self)
    seen["trained"] = True


replace = os.replace


def counting_replace(src, dst, *args, **kwargs):
    if os.path.basename(dst) == os.environ.get("WRITE_NAME"):
        seen["writes"] += 1
        if seen["writes"] == write:
            wait_for_signals("write %d" % write)
    return replace(src, dst, *args, **kwargs)


fc_net.FullyConnectedNet.loss = counting_loss
solver.Solver.train = noting_train
os.replace = counting_replace
runpy.run_module("fcgpu.cli", run_name="__main__", alter_sys=True)
"""


def synthetic_npz(path, seed=0, n_train=300, n_val=100, n_test=100, signal_strength=0.12):
    """CIFAR-shaped (3x32x32) noisy images, one faint pattern per class: learnable
    but not at once, so losses and accuracies move from epoch to epoch (seeded)."""
    rng = np.random.default_rng(seed)
    patterns = rng.choice([-signal_strength, signal_strength], size=(10, 3, 32, 32))

    def make(n):
        y = rng.integers(10, size=n)
        return (rng.standard_normal((n, 3, 32, 32)) + patterns[y]).astype(np.float32), y
    splits = {}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        splits["X_" + name], splits["y_" + name] = make(n)
    np.savez(path, **splits)
    return path


def cli(*args):
    return [sys.executable, "-m", "fcgpu.cli", "train", *args]


def run_cli(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def outcome(metrics_path, checkpoint_path):
    """What must not change across an interruption: every metric that is not a time,
    and the checkpoint's whole training state (model, optimizer, RNG, best)."""
    m = json.loads(open(metrics_path).read())
    for timing in ("epoch_seconds", "wall_seconds", "samples_per_s", "resumed_from_epoch"):
        m.pop(timing)
    state = load_checkpoint(checkpoint_path)
    state.pop("epoch_seconds")
    return m, state


def assert_same_state(a, b, where="state"):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            assert_same_state(a[k], b[k], "%s[%r]" % (where, k))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, "%s[%d]" % (where, i))
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The data and an uninterrupted run's metrics and checkpoint."""
    d = tmp_path_factory.mktemp("signals")
    synthetic_npz(d / "data.npz")
    done = run_cli(cli("--data", "data.npz", *ARGS, "--checkpoint", "ref.ckpt",
                       "--metrics", "ref.json"), d)
    assert done.returncode == 0, done.stderr
    return d


def start_child(run_dir, name, sig_env, extra=()):
    env = dict(os.environ, WRITE_NAME=name + ".ckpt")
    env.update(sig_env)
    return subprocess.Popen([sys.executable, "-c", CHILD, "train", "--data", "data.npz", *ARGS,
                             "--checkpoint", name + ".ckpt", "--metrics", name + ".json",
                             *extra], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def interrupt(child, *signals):
    """Wait for the child's PAUSED line, send ``signals`` (the next one once the child
    says it has handled the one before); returns (exit code, stderr)."""
    seen = child.stderr.readline()
    assert seen.startswith("PAUSED"), seen + child.stderr.read()
    for k, s in enumerate(signals):
        child.send_signal(s)
        if k + 1 < len(signals):
            line = child.stderr.readline()
            seen += line
            assert line == "NOTED\n", seen + child.stderr.read()
    try:
        _, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise
    return child.returncode, seen + err


def resume_line(stderr, name):
    """The one line fcgpu train printed, and its resume command as words."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("fcgpu train:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0], shlex.split(lines[0].split("resume with: ", 1)[1])


def check_resumes_exactly(run_dir, name, words, saved_epoch):
    """The printed command, run as printed, finishes the run: its metrics and final
    checkpoint are the uninterrupted run's."""
    done = run_cli(words, run_dir)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((run_dir / (name + ".json")).read_text())
    assert resumed["resumed_from_epoch"] == saved_epoch
    m, state = outcome(run_dir / (name + ".json"), run_dir / (name + ".ckpt"))
    ref_m, ref_state = outcome(run_dir / "ref.json", run_dir / "ref.ckpt")
    assert m == ref_m
    assert_same_state(state, ref_state)


def no_temporary_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")] == []


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_epoch_stops_at_the_step_and_the_printed_command_resumes_exactly(
        run_dir, sig, code):
    """The signal lands in step 3 of epoch 2 (6 steps an epoch): exit 130 or 143, one
    line naming the signal, the epoch dropped and what the checkpoint holds (epoch 1,
    intact), and the command with --resume; run as printed, it ends where an
    uninterrupted run ends, metric for metric and array for array. Mutants: the
    Solver not calling stop_check after a step (the run goes on to its end: exit 0),
    the exit code 128 + SIGINT for every signal (SIGTERM gives 130), the resume
    command without --resume (resumed_from_epoch None), the epoch and saved epoch not
    filled in (the line says "before training started")."""
    name = "mid-%d" % sig
    child = start_child(run_dir, name, {"PAUSE_STEP": "9"})
    returncode, err = interrupt(child, sig)
    assert returncode == code, err
    line, words = resume_line(err, name)
    assert line == ("fcgpu train: interrupted by %s during epoch 2/3; the epoch in progress "
                    "was dropped; %s.ckpt holds epoch 1; resume with: %s"
                    % (sig.name, name, shlex.join(words)))
    assert words == cli("--data", "data.npz", *ARGS, "--checkpoint", name + ".ckpt",
                        "--metrics", name + ".json", "--resume")
    assert load_checkpoint(run_dir / (name + ".ckpt"))["epoch"] == 1
    assert not (run_dir / (name + ".json")).exists() and no_temporary_files(run_dir)
    check_resumes_exactly(run_dir, name, words, saved_epoch=1)


def test_a_signal_during_a_checkpoint_write_lets_the_write_finish(run_dir):
    """SIGTERM while epoch 2's checkpoint is being renamed into place: the write
    finishes (the file holds epoch 2, whole), then the run stops (143) and resumes
    exactly from epoch 2. Mutant: a handler that raises at once, even inside the
    training loop (the write is cut: the file still holds epoch 1)."""
    name = "write"
    child = start_child(run_dir, name, {"PAUSE_WRITE": "2"})
    returncode, err = interrupt(child, signal.SIGTERM)
    assert returncode == 143, err
    line, words = resume_line(err, name)
    assert "during epoch 3/3; the epoch in progress was dropped; write.ckpt holds epoch 2" \
        in line
    assert load_checkpoint(run_dir / "write.ckpt")["epoch"] == 2 and no_temporary_files(run_dir)
    check_resumes_exactly(run_dir, name, words, saved_epoch=2)


@pytest.mark.parametrize("where,sig", [("scoring", signal.SIGINT), ("writing", signal.SIGTERM)])
def test_a_signal_after_the_last_epoch(run_dir, where, sig):
    """The signal lands after training: while the final accuracies are computed (it
    stops there) or while the metrics file is written (the file is finished first).
    The line says the run was past its last epoch and the checkpoint holds it; the
    printed command then trains nothing more and writes the same metrics. Mutants: no
    note of where the run was in either place (the line says "before training
    started")."""
    name = "after-" + where
    env = ({"PAUSE_SCORING": "1"} if where == "scoring"
           else {"PAUSE_WRITE": "1", "WRITE_NAME": name + ".json"})
    child = start_child(run_dir, name, env)
    returncode, err = interrupt(child, sig)
    assert returncode == 128 + sig, err
    line, words = resume_line(err, name)
    assert line.startswith("fcgpu train: interrupted by %s after the last epoch (3/3); "
                           "%s.ckpt holds epoch 3; resume with: " % (sig.name, name))
    if where == "writing":  # (whole: the same as the resumed run writes below)
        assert json.loads((run_dir / (name + ".json")).read_text())["epochs"] == 3
    check_resumes_exactly(run_dir, name, words, saved_epoch=3)


def test_a_second_signal_cuts_the_step_and_the_checkpoint_stays(run_dir):
    """Ctrl-C twice in one step: the second raises at once, inside the step; the
    command still exits 130 with the one line, the checkpoint of epoch 1 is intact and
    the resume is exact. Mutant: the second signal only noted like the first (the
    child's step waits for it forever: the test's timeout fails)."""
    name = "twice"
    child = start_child(run_dir, name, {"PAUSE_STEP": "9", "SIGNALS_TO_WAIT": "2"})
    returncode, err = interrupt(child, signal.SIGINT, signal.SIGINT)
    assert returncode == 130, err
    line, words = resume_line(err, name)
    assert "twice.ckpt holds epoch 1" in line
    check_resumes_exactly(run_dir, name, words, saved_epoch=1)


def test_without_a_checkpoint_it_says_nothing_was_saved_and_how_to_save(run_dir):
    """No --checkpoint: the line says nothing was saved and gives the command with a
    checkpoint file added. Mutant: the message of a run with a checkpoint (a resume
    command whose --resume fails: it needs --checkpoint)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, "train", "--data", "data.npz",
                              *ARGS], cwd=run_dir, env=dict(os.environ, PAUSE_STEP="2"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    returncode, err = interrupt(child, signal.SIGINT)
    assert returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.startswith("fcgpu train:")]
    assert lines == ["fcgpu train: interrupted by SIGINT during epoch 1/3; the epoch in "
                     "progress was dropped; nothing was saved (no --checkpoint): to make a "
                     "run resumable, give it a checkpoint file, e.g.: %s"
                     % shlex.join(cli("--data", "data.npz", *ARGS,
                                      "--checkpoint", "train.ckpt"))]


def open_once_read(fifo, child):
    """The named pipe ``fifo`` opened for writing once ``child`` has opened it to read
    (a non-blocking open fails with ENXIO until then); a child that ends first fails
    the test instead of leaving it waiting."""
    import errno
    import time
    while True:
        try:
            return os.fdopen(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb")
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        if child.poll() is not None:
            pytest.fail("the child ended before it read the data: %s" % child.stderr.read())
        time.sleep(0.002)  # (waits for the child to open the pipe: no timing)


def wait_blocked_reading(fifo, child):
    """Return once ``child`` sleeps in a system call on its descriptor of ``fifo`` (its
    read: /proc/PID/syscall names the call's first argument). A signal that lands after
    open() returned but before read() began runs Python's handler only when the read
    returns, and this read never does (CI hung so, once in several runs, on a loaded
    machine): the signal must come while the child sleeps in the read."""
    import time
    proc = "/proc/%d" % child.pid
    if not os.path.exists(proc + "/syscall"):
        pytest.skip("needs Linux's /proc/PID/syscall to see the child block in read()")
    target = os.path.realpath(fifo)
    while True:
        assert child.poll() is None, "the child ended before it read: %s" % child.stderr.read()
        fds = [int(fd) for fd in os.listdir(proc + "/fd")
               if _readlink(proc + "/fd/" + fd) == target]
        with open(proc + "/syscall") as f:
            call = f.read().split()
        with open(proc + "/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "S" and len(call) > 1 and call[0] != "running" and fds \
                and int(call[1], 16) in fds:
            return
        time.sleep(0.002)  # (polls the child's state: no timing)


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError:  # (a descriptor closed meanwhile)
        return None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe (os.mkfifo)")
def test_a_signal_while_the_data_load_stops_at_once_and_writes_nothing(run_dir):
    """The plain command, its --data a named pipe the test holds open and empty: the
    child is reading it (np.load) when SIGINT comes. It stops there (130), says no
    epoch was saved, and leaves no file; with the real data in the pipe's place, the
    printed command runs the whole run to the uninterrupted run's end. Mutant: the
    handler installed after the data are loaded (Python's own KeyboardInterrupt:
    "fcgpu: interrupted", no resume line)."""
    folder = run_dir / "fifo"
    folder.mkdir()
    os.mkfifo(folder / "data.npz")
    child = subprocess.Popen(cli("--data", "data.npz", *ARGS, "--checkpoint", "f.ckpt",
                                 "--metrics", "f.json"), cwd=folder,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open_once_read(folder / "data.npz", child):
        wait_blocked_reading(folder / "data.npz", child)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    line, words = resume_line(err, "f")
    assert line == ("fcgpu train: interrupted by SIGINT before training started; no epoch "
                    "of this run was saved to f.ckpt yet, so resuming starts over; resume "
                    "with: " + shlex.join(words))
    assert sorted(p.name for p in folder.iterdir()) == ["data.npz"]
    os.unlink(folder / "data.npz")
    os.link(run_dir / "data.npz", folder / "data.npz")
    for f in ("ref.json", "ref.ckpt"):
        os.link(run_dir / f, folder / f)
    check_resumes_exactly(folder, "f", words, saved_epoch=None)
