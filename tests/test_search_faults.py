"""Faults under a running ``fcgpu search``, caused for real (issue 25, "The search's
database"): a worker SIGKILLed mid-trial (SQLite and PostgreSQL), and a PostgreSQL
server stopped and started again (same data directory and port) while trials run.

Each test checks the study's figures (:func:`fault_figures`): trials completed, failed,
retried and lost (must be 0), and that the command's trial budget was reached. The
figures of each run are printed (``pytest -s`` shows them).

The fault points are deterministic: the worker processes get a ``sitecustomize`` (the
synthetic data of ``test_search``, plus :data:`PAUSE_HOOK`) that pauses the first
worker(s) to reach a chosen point of a trial (after its first epoch was reported, after
its objective returned, or as its objective raises) until the test says go, and leaves
a file when a heartbeat fails; the test kills a worker or stops the server while they
wait, and starts the server again once each worker has printed that it lost it.

The PostgreSQL tests run when ``FCGPU_TEST_POSTGRES_URL`` is set (``. .ci/postgres.sh
start``), and start a server of their own through the same script (its own
``FCGPU_PG_STATE``), so that stopping it disturbs no other test.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

optuna = pytest.importorskip("optuna")

from test_search import REPO, SITECUSTOMIZE, load  # noqa: E402

POSTGRES = os.environ.get("FCGPU_TEST_POSTGRES_URL")
NO_POSTGRES = ("FCGPU_TEST_POSTGRES_URL is not set: start a server with "
               "`. .ci/postgres.sh start`")


def needs_postgres(test):
    return pytest.mark.postgres(pytest.mark.skipif(not POSTGRES, reason=NO_POSTGRES)(test))

# trials of two epochs on 300 synthetic images, never pruned, everything seeded
TRIALS = ["--epochs", "2", "--num-train", "300", "--backend", "numpy", "--param", "layers=1:2",
          "--param", "units=8:32", "--param", "batch_size=100", "--pruner", "none",
          "--seed", "0", "--heartbeat", "1", "--grace", "2"]

PAUSE_HOOK = '''
if os.environ.get("FCGPU_TEST_PAUSE_DIR"):
    import time as _time
    import fcgpu.search.run as _search_run
    _DIR = os.environ["FCGPU_TEST_PAUSE_DIR"]
    _AT = os.environ.get("FCGPU_TEST_PAUSE_AT", "epoch")     # epoch | end
    _SLOTS = int(os.environ.get("FCGPU_TEST_PAUSE_COUNT", "1"))
    _TRIAL = int(os.environ.get("FCGPU_TEST_PAUSE_TRIAL", "0"))  # this process's n-th trial
    _ON_RAISE = os.environ.get("FCGPU_TEST_PAUSE_ON_RAISE")  # pause again as it raises
    _state = {"seen": 0, "armed": None, "slot": None}

    def _wait(trial, name, go):
        """Say DIR/name-K (pid and trial number) and wait for DIR/go."""
        tmp = os.path.join(_DIR, "tmp-%d" % _state["slot"])
        with open(tmp, "w") as f:
            f.write("%d %d" % (os.getpid(), trial.number))
        os.rename(tmp, os.path.join(_DIR, "%s-%d" % (name, _state["slot"])))
        while not os.path.exists(os.path.join(_DIR, go)):
            _time.sleep(0.02)

    def _pause(trial):
        """Take a free slot K (DIR/slot-K), say so in DIR/paused-K and wait for DIR/go;
        no free slot: go on."""
        for k in range(_SLOTS):
            try:
                os.close(os.open(os.path.join(_DIR, "slot-%d" % k), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            _state["slot"] = k
            _wait(trial, "paused", "go")
            return

    import optuna.storages as _storages
    _real_beat = _storages.RDBStorage.record_heartbeat

    def _beat(self, trial_id):
        """Optuna's heartbeat, leaving DIR/beat-failed-PID when it fails."""
        try:
            return _real_beat(self, trial_id)
        except BaseException:
            open(os.path.join(_DIR, "beat-failed-%d" % os.getpid()), "w").close()
            raise
    _storages.RDBStorage.record_heartbeat = _beat

    _real_training = fcgpu.train.run_training

    def _training(cfg, *args, epoch_callback=None, **kwargs):
        def on_epoch(solver):
            epoch_callback(solver)
            trial, _state["armed"] = _state["armed"], None
            if trial is not None:
                _pause(trial)
        return _real_training(cfg, *args, epoch_callback=on_epoch, **kwargs)
    fcgpu.train.run_training = _training

    _real_make = _search_run.make_objective

    def _make_objective(settings, data, out=None):
        objective = _real_make(settings, data, out=out)

        def paused(trial):
            mine = _state["seen"] == _TRIAL
            _state["seen"] += 1
            if mine and _AT == "epoch":
                _state["armed"] = trial
            try:
                value = objective(trial)
            except BaseException:
                if mine and _ON_RAISE and _state["slot"] is not None:
                    _wait(trial, "raised", "go-on")
                raise
            if mine and _AT == "end":
                _pause(trial)
            return value
        return paused
    _search_run.make_objective = _make_objective
'''


class Search:
    """An ``fcgpu search`` command in a subprocess, with the synthetic data and the
    pause hook; its stdout lines are collected as they come (``lines``), stderr apart."""

    def __init__(self, tmp_path, args, pause_count=1, pause_at="epoch", pause_trial=0,
                 pause_on_raise=False):
        site = tmp_path / "site-faults"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE + PAUSE_HOOK)
        self.pause_dir = tmp_path / "pause"
        self.pause_dir.mkdir(exist_ok=True)
        env = dict(os.environ, FCGPU_TEST_FAKE_DATA="1", FCGPU_BACKEND="numpy",
                   FCGPU_TEST_PAUSE_DIR=str(self.pause_dir), FCGPU_TEST_PAUSE_AT=pause_at,
                   FCGPU_TEST_PAUSE_COUNT=str(pause_count),
                   FCGPU_TEST_PAUSE_TRIAL=str(pause_trial),
                   FCGPU_TEST_PAUSE_ON_RAISE="1" if pause_on_raise else "")
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)] + [
            p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen([sys.executable, "-m", "fcgpu.cli", "search", *args],
                                     env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines, self.err = [], []
        self.readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                        for s, b in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err))]
        for r in self.readers:
            r.start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def output(self):
        return "\n".join(self.lines) + "\n--- stderr:\n" + "\n".join(self.err)

    def wait_until(self, what, test, timeout=60):
        """Poll ``test()`` until it holds; fail naming ``what`` if the command ends or
        ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while not test():
            assert self.proc.poll() is None, "ended before %s:\n%s" % (what, self.output())
            assert time.monotonic() < deadline, "no %s in %d s:\n%s" % (what, timeout,
                                                                        self.output())
            time.sleep(0.05)

    def paused(self, count, name="paused"):
        """Wait for ``count`` workers to pause (at ``name``: paused, raised); returns
        their ``(pid, trial number)``."""
        files = [self.pause_dir / ("%s-%d" % (name, k)) for k in range(count)]
        self.wait_until("%d paused worker(s)" % count, lambda: all(f.exists() for f in files))
        return [tuple(int(x) for x in f.read_text().split()) for f in files]

    def go(self, name="go"):
        (self.pause_dir / name).write_text("")

    def count(self, text):
        return sum(text in line for line in self.lines)

    def finish(self, timeout=90):
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for r in self.readers:
                r.join(timeout=10)
        return self.proc.returncode


def is_fault(t):
    """A trial lost to a fault: failed by the heartbeat check (no reason of its own) or
    cut short by a lost storage."""
    reason = t.user_attrs.get("fail_reason")
    return t.state.name == "FAIL" and (reason is None or reason.startswith("storage lost"))


def fault_figures(study):
    """Trials completed, failed, retried (retries queued) and lost (a trial lost to a
    fault with no retry, or one left RUNNING or WAITING)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["retry_history"][-1] for t in trials
               if t.system_attrs.get("retry_history")}
    states = [t.state.name for t in trials]
    return {"completed": states.count("COMPLETE"), "failed": states.count("FAIL"),
            "retried": len(retried),
            "lost": sum(1 for t in trials if is_fault(t) and t.number not in retried)
            + states.count("RUNNING") + states.count("WAITING")}


def check_retries(study):
    """Each retry has its lost trial's parameters, and finished COMPLETE."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for t in by_number.values():
        lost = t.system_attrs.get("failed_trial")
        if lost is not None:
            assert t.state.name == "COMPLETE" and t.params == by_number[lost].params, t


def report(name, figures):
    print("\n%s: %s" % (name, ", ".join("%s %d" % kv for kv in figures.items())))


class Writes:
    """A stdout that keeps each ``write`` call apart: workers share the command's
    stdout, so a line must reach it in one write or two workers' lines interleave."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass

    def getvalue(self):
        return "".join(self.writes)

    def assert_whole_lines(self):
        for text in self.writes:
            assert text.endswith("\n") and text.count("\n") == 1, self.writes


def test_the_wait_for_a_lost_storage_backs_off_and_is_bounded():
    """StorageWait on a fake clock: tries after 0.5, 1, 2, 4, 8, 10, 10 ... s, returns
    once the probe answers (one line when lost, one when back, each in one write), and
    after the bound raises one line with the last reason. Mutants: no cap on the
    back-off; the bound counted from each try instead of from the loss (never gives up);
    print() writing the newline apart (under PYTHONUNBUFFERED two workers' lines ran
    together in CI)."""
    import sqlalchemy.exc

    from fcgpu.errors import StudyStorageError
    from fcgpu.search.recovery import StorageWait
    now, slept = [0.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    def refused(text="Connection refused"):
        return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(text))

    answers = iter([False] * 6 + [True])

    def probe():
        if not next(answers):
            raise refused()
    out = Writes()
    wait = StorageWait("postgresql://u:s3cret@db/x", 60, probe, out, tag="[w0] ",
                       clock=lambda: now[0], sleep=sleep)
    wait.lost(refused())
    assert slept == [0.5, 1, 2, 4, 8, 10, 10]
    assert out.getvalue().splitlines() == [
        "[w0] lost the study storage postgresql://u:***@db/x: Connection refused; waiting "
        "up to 60 s for it (--storage-wait)",
        "[w0] the study storage answers again (35.5 s after it was lost)"]
    out.assert_whole_lines()
    answers = iter([False] * 100)
    with pytest.raises(StudyStorageError) as info:
        wait.lost(refused("server closed the connection"))   # the clock did not restart
    assert str(info.value) == ("lost the study storage postgresql://u:***@db/x: Connection "
                               "refused (gave up after 60 s; --storage-wait)")
    assert now[0] == 60 and "s3cret" not in out.getvalue()


def test_a_finished_trial_is_one_write():
    """The line each worker prints per finished trial reaches stdout in one write.
    Mutant: print() with the newline apart."""
    from fcgpu.search.summary import progress_callback
    trial = optuna.trial.create_trial(params={"units_1": 26}, value=0.5,
                                      distributions={"units_1": optuna.distributions
                                                     .IntDistribution(10, 100)})
    out = Writes()
    progress_callback(out, tag="[w1] ")(None, trial)
    out.assert_whole_lines()
    assert out.getvalue().startswith("[w1] trial ")


def test_a_worker_hands_each_printed_line_over_in_one_write():
    """A worker's stdout, unbuffered as under PYTHONUNBUFFERED (text layer written
    through, raw file below), after workers.whole_lines: each print() reaches the file
    as one write, newline included, so another worker's line cannot cut it (the
    training log of --verbose prints with print()). Mutant: whole_lines doing nothing
    (the text and the newline arrive apart)."""
    import io

    from fcgpu.search.workers import whole_lines

    class Raw(io.RawIOBase):
        def __init__(self):
            self.writes = []

        def writable(self):
            return True

        def write(self, b):
            self.writes.append(bytes(b))
            return len(b)

    raw = Raw()
    stdout = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    whole_lines(stdout)
    print("(Epoch 1 / 20) train acc 0.41", file=stdout)
    print("[w1] trial 3 COMPLETE", file=stdout)
    assert raw.writes == [b"(Epoch 1 / 20) train acc 0.41\n", b"[w1] trial 3 COMPLETE\n"]


def check_killed_worker_is_retried(url, tmp_path, study="killed-retried"):
    """Two workers share a budget of 4 trials; one is SIGKILLed while its trial runs
    (paused after its first epoch was reported, so the trial is RUNNING with a
    heartbeat). The other worker marks it FAIL once the heartbeat is stale (2 s), its
    retry runs with the same parameters, and the study reaches its budget: 4 completed,
    1 failed, 1 retried, 0 lost. Mutants: LostTrials.retry not queueing the retry
    (retried 0, lost 1); not giving the trial back to the budget (3 completed); drain
    returning at once (the survivor leaves before the trial is stale: lost 1)."""
    search = Search(tmp_path, ["--storage", url, "--study", study, "--n-trials", "4",
                               "--workers", "2", *TRIALS])
    try:
        [(pid, number)] = search.paused(1)
        trial = load(url, study).trials[number]
        assert trial.state.name == "RUNNING" and trial.intermediate_values
        os.kill(pid, signal.SIGKILL)
        rc = search.finish()
    finally:
        search.go()
        search.finish()
    out = search.output()
    assert rc == 1, out     # the command says a worker died...
    assert "was killed by signal 9" in out
    assert search.count("trial %d of worker" % number) == 1, out   # ...and the study lives
    s = load(url, study)
    figures = fault_figures(s)
    report("worker SIGKILLed mid-trial (%s)" % url.split(":")[0], figures)
    assert figures == {"completed": 4, "failed": 1, "retried": 1, "lost": 0}, out
    assert s.trials[number].state.name == "FAIL"
    check_retries(s)
    assert "Traceback" not in out, out
    return s


def test_a_killed_worker_s_trial_is_retried_and_the_budget_completes(tmp_path):
    check_killed_worker_is_retried("sqlite:///" + str(tmp_path / "study.db"), tmp_path)


# ------------------------------------------------------------ a server that restarts

class Server:
    """A PostgreSQL server of the tests' own, through .ci/postgres.sh."""

    def __init__(self, state):
        self.env = dict(os.environ, FCGPU_PG_STATE=str(state))
        self.url = self._script("start")

    def _script(self, verb):
        res = subprocess.run(["bash", str(REPO / ".ci" / "postgres.sh"), verb], env=self.env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, ".ci/postgres.sh %s: %s" % (verb, res.stderr)
        return res.stdout.strip()

    def halt(self):
        self._script("halt")

    def resume(self):
        assert self._script("resume") == self.url

    def stop(self):
        self._script("stop")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not POSTGRES:
        pytest.skip(NO_POSTGRES)
    pytest.importorskip("psycopg2")
    srv = Server(tmp_path_factory.mktemp("postgres") / "state")
    yield srv
    srv.stop()


@pytest.fixture
def running_server(server):
    """The server, running again whatever the test left it in."""
    yield server
    server.resume()


@needs_postgres
def test_a_killed_worker_s_trial_is_retried_on_postgres(tmp_path, server):
    check_killed_worker_is_retried(server.url, tmp_path, study="killed-pg")


def restart_args(url, study, n_trials, workers, wait=60):
    return ["--storage", url, "--study", study, "--n-trials", str(n_trials), "--workers",
            str(workers), "--storage-wait", str(wait), *TRIALS]


@needs_postgres
def test_a_server_restart_mid_trial_is_survived(tmp_path, running_server):
    """Two workers, each paused after the first epoch of its first trial; the server
    stops, and once a heartbeat of each has failed on it the workers go on, lose the
    storage on their next report and say so; the server starts again (same data and
    port). Both reconnect, mark their trial FAIL ("storage lost mid-trial") and retry
    it, and the study reaches its budget: 4 completed, 2 failed, 2 retried, 0 lost, exit
    0, nothing on stderr. Mutants: no wait (run_trial raising the lost connection: the
    workers give up, exit 2); the heartbeat left as Optuna's (its thread's traceback on
    stderr); no retry (retried 0, lost 2)."""
    server = running_server
    search = Search(tmp_path, restart_args(server.url, "restart", 4, 2), pause_count=2)
    try:
        paused = search.paused(2)
        server.halt()
        beats = [search.pause_dir / ("beat-failed-%d" % pid) for pid, _ in paused]
        search.wait_until("a failed heartbeat in each worker",
                          lambda: all(f.exists() for f in beats))
        search.go()
        search.wait_until("two workers waiting for the storage",
                          lambda: search.count("lost the study storage") == 2)
        server.resume()
        rc = search.finish()
    finally:
        search.go()
        search.finish()
    out = search.output()
    assert rc == 0 and search.err == [], out
    assert search.count("the study storage answers again") == 2, out
    s = load(server.url, "restart")
    figures = fault_figures(s)
    report("server restarted under two running trials", figures)
    assert figures == {"completed": 4, "failed": 2, "retried": 2, "lost": 0}, out
    assert sorted(t.number for t in s.trials if t.state.name == "FAIL") == sorted(
        number for _, number in paused)
    check_retries(s)
    assert "Traceback" not in out


@needs_postgres
def test_a_server_back_before_the_worker_noticed_still_gets_the_trial_retried(
        tmp_path, running_server):
    """The server stops under a running trial and is back before its worker is done
    with the failure: the trial's report failed, and the server answers again by the
    time Optuna would record the trial. The trial is still marked FAIL ("storage lost
    mid-trial") and retried: 2 completed, 1 failed, 1 retried, 0 lost. Mutant: the
    objective letting the storage error through as any other (no TrialAbandoned):
    Optuna records the trial FAIL with no retry (lost 1)."""
    server = running_server
    search = Search(tmp_path, restart_args(server.url, "back", 2, 1), pause_on_raise=True)
    try:
        [(_, number)] = search.paused(1)
        server.halt()
        search.go()
        search.paused(1, "raised")
        server.resume()
        search.go("go-on")
        rc = search.finish()
    finally:
        search.go()
        search.go("go-on")
        search.finish()
    out = search.output()
    assert rc == 0 and search.err == [], out
    s = load(server.url, "back")
    figures = fault_figures(s)
    report("server back before the worker noticed", figures)
    assert figures == {"completed": 2, "failed": 1, "retried": 1, "lost": 0}, out
    assert s.trials[number].user_attrs["fail_reason"].startswith("storage lost mid-trial")
    check_retries(s)


@needs_postgres
def test_a_trial_that_finished_as_the_server_stopped_keeps_its_result(tmp_path,
                                                                      running_server):
    """The first trial's training has finished (its objective returned) when the server
    stops, before Optuna records the result: the worker waits for the server and then
    tells the trial its value; it is COMPLETE, not failed and run again. 2 completed, 0
    failed, 0 retried, 0 lost. Mutant: settle ignoring the finished training (the trial
    becomes FAIL and is retried: failed 1)."""
    server = running_server
    search = Search(tmp_path, restart_args(server.url, "at-end", 2, 1), pause_at="end")
    try:
        [(_, number)] = search.paused(1)
        server.halt()
        search.go()
        search.wait_until("the worker waiting for the storage",
                          lambda: search.count("lost the study storage") == 1)
        server.resume()
        rc = search.finish()
    finally:
        search.go()
        search.finish()
    out = search.output()
    assert rc == 0 and search.err == [], out
    s = load(server.url, "at-end")
    figures = fault_figures(s)
    report("server stopped as a trial finished", figures)
    assert figures == {"completed": 2, "failed": 0, "retried": 0, "lost": 0}, out
    t = s.trials[number]
    assert t.value == pytest.approx(t.user_attrs["metrics"]["best_val_acc"])
    assert search.count("trial %d COMPLETE" % number) == 1, out


@needs_postgres
@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_that_stays_down_ends_in_one_line(tmp_path, running_server, workers):
    """The server stops while each worker runs its second trial, and stays down: after
    --storage-wait (2 s) the command ends with one line on stderr and exit 2. The study
    is as it was: the first trials COMPLETE, the cut ones RUNNING; a rerun once the
    server is back marks them FAIL (stale heartbeat), retries them, and the study
    reaches the first command's budget: completed 2 per worker, failed and retried 1
    per worker, 0 lost. Mutants: a wait with no bound (the command never ends);
    worker_main not catching its give-up (a line per worker on stderr, and the
    command's)."""
    server = running_server
    url, n = server.url, 2 * workers
    search = Search(tmp_path, restart_args(url, "down-%d" % workers, n, workers, wait=2),
                    pause_count=workers, pause_trial=1)
    try:
        paused = search.paused(workers)
        server.halt()
        search.go()
        rc = search.finish(timeout=60)
    finally:
        search.go()
        search.finish()
    out = search.output()
    assert rc == 2 and len(search.err) == 1, out
    masked = url.replace("fcgpu@", "fcgpu@")   # (no password in the test URL)
    assert search.err[0].startswith("fcgpu search: error: lost the study storage %s: "
                                    % masked), out
    if workers == 1:
        assert search.err[0].endswith("(gave up after 2 s; --storage-wait)"), out
    else:
        assert "gave up on it" in search.err[0]
        assert search.count("gave up: lost the study storage") == workers, out
    assert search.count("waiting up to 2 s") == workers, out
    server.resume()
    s = load(url, "down-%d" % workers)
    assert sorted(t.state.name for t in s.trials) == ["COMPLETE"] * workers + ["RUNNING"] * workers
    assert {number for _, number in paused} == {t.number for t in s.trials
                                                 if t.state.name == "RUNNING"}
    rerun = Search(tmp_path, restart_args(url, "down-%d" % workers, workers, 1),
                   pause_count=0)
    assert rerun.finish() == 0, rerun.output()
    s = load(url, "down-%d" % workers)
    figures = fault_figures(s)
    report("server down for good (%d worker%s), then a rerun" % (workers, "s" * (workers > 1)),
           figures)
    assert figures == {"completed": n, "failed": workers, "retried": workers, "lost": 0}, (
        out + rerun.output())
    check_retries(s)
