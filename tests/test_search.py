"""Tests for ``fcgpu search`` on SQLite in a temporary folder, with tiny synthetic data.

In-process runs monkeypatch ``fcgpu.train.load_data``; runs in other processes (two
commands sharing a study, ``--workers 2``, a killed worker) get the same synthetic data
from a ``sitecustomize`` module put on their ``PYTHONPATH``. Trials are a few hundred
examples, 1-2 epochs, one or two hidden layers of 8-32 units.

The helpers ``check_two_processes_share`` and ``check_killed_worker`` take a storage
URL; ``test_search_postgres.py`` runs them against a real PostgreSQL server.
"""
from __future__ import annotations

import inspect
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from fcgpu import backend, search  # noqa: E402
from fcgpu.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--num-train", "300", "--backend", "numpy",
        "--param", "layers=1:2", "--param", "units=8:32", "--param", "batch_size=100",
        "--heartbeat", "1"]

def fake_data(cfg, progress=True):
    """Synthetic CIFAR-shaped data with some class structure (learnable)."""
    import numpy as np
    rng = np.random.default_rng(0)
    n, n_val = cfg.num_train, 100
    centers = rng.standard_normal((10, 3 * 32 * 32)).astype(np.float32)
    y = rng.integers(0, 10, n + n_val)
    X = 0.5 * centers[y] + rng.standard_normal((n + n_val, 3 * 32 * 32)).astype(np.float32)
    X = X.reshape(-1, 3, 32, 32)
    return {"X_train": X[:n], "y_train": y[:n], "X_val": X[n:], "y_val": y[n:]}


# put on the PYTHONPATH of the processes the tests start (and of their workers)
SITECUSTOMIZE = inspect.getsource(fake_data) + '''
import os
if os.environ.get("FCGPU_TEST_FAKE_DATA"):
    import json
    env_dir = os.environ.get("FCGPU_TEST_ENV_DIR")
    if env_dir:  # what the process saw before importing anything
        keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                "CUDA_VISIBLE_DEVICES", "FCGPU_SEARCH_CPUS")
        with open(os.path.join(env_dir, "env-%d.json" % os.getpid()), "w") as f:
            json.dump({k: os.environ.get(k) for k in keys}, f)
    import fcgpu.search.run
    import fcgpu.train
    fcgpu.train.load_data = fake_data
    fcgpu.search.run.prefetch_data = lambda settings: None
'''


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    """Synthetic data, the backend restored afterwards, run in tmp_path."""
    import fcgpu.train
    monkeypatch.setattr(fcgpu.train, "load_data", fake_data)
    monkeypatch.setattr(search.run, "prefetch_data", lambda settings: None)
    monkeypatch.setattr(backend, "_backend", backend._backend)
    monkeypatch.chdir(tmp_path)


def sqlite_url(tmp_path, name="study.db"):
    return "sqlite:///" + str(tmp_path / name)


def load(url, study):
    return optuna.load_study(study_name=study, storage=url)


def states(study):
    return [t.state.name for t in study.get_trials(deepcopy=False)]


# ------------------------------------------------------------- subprocess helpers

def _sitedir(tmp_path):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return site


def cli_env(tmp_path, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_sitedir(tmp_path)), str(REPO)]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                           if p])
    env["FCGPU_TEST_FAKE_DATA"] = "1"
    env["FCGPU_BACKEND"] = "numpy"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_cli(tmp_path, args, **env):
    return subprocess.Popen([sys.executable, "-m", "fcgpu.cli", "search", *args],
                            env=cli_env(tmp_path, **env), cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def check_two_processes_share(url, tmp_path, study="shared"):
    """Two commands (as on two machines) run concurrently on one study."""
    a = start_cli(tmp_path, ["--storage", url, "--study", study, "--n-trials", "2", *TINY])
    b = start_cli(tmp_path, ["--storage", url, "--study", study, "--n-trials", "2", *TINY])
    (ra, oa), (rb, ob) = finish(a), finish(b)
    assert ra == 0 and rb == 0, oa + ob
    s = load(url, study)
    trials = s.get_trials()
    assert len(trials) == 4 and set(states(s)) <= {"COMPLETE", "PRUNED"}, oa + ob
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert workers == {str(a.pid), str(b.pid)}
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]


def check_killed_worker(url, tmp_path, study="killed"):
    """SIGKILL a worker mid-trial: the study stays readable, and the next worker marks
    the dead trial FAIL once the heartbeat grace period has passed, and runs its retry
    (within its own budget: the lost trial was another command's)."""
    slow = ["--storage", url, "--study", study, "--n-trials", "1", "--epochs", "400",
            "--num-train", "300", "--backend", "numpy", "--param", "layers=1",
            "--param", "units=16", "--param", "batch_size=100", "--pruner", "none",
            "--heartbeat", "1", "--grace", "2"]
    victim = start_cli(tmp_path, slow)
    try:
        deadline = time.time() + 60
        while True:
            assert victim.poll() is None, victim.communicate()[0]
            assert time.time() < deadline, "the worker never reported an epoch"
            try:
                running = [t for t in load(url, study).get_trials()
                           if t.state.name == "RUNNING" and t.intermediate_values]
            except (KeyError, ValueError):  # study not created yet
                running = []
            if running:
                break
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.communicate()
    dead = running[0].number
    s = load(url, study)  # readable right after the kill
    assert s.trials[dead].state.name == "RUNNING"
    time.sleep(3)  # past the grace period
    rc, out = finish(start_cli(tmp_path, ["--storage", url, "--study", study, "--n-trials",
                                          "1", *TINY, "--grace", "2"]))
    assert rc == 0, out
    s = load(url, study)
    assert s.trials[dead].state.name == "FAIL"
    assert "trial %d of worker" % dead in out and "retried as trial %d" % (dead + 1) in out
    assert [t.state.name for t in s.trials[dead + 1:]] in (["COMPLETE"], ["PRUNED"])
    assert s.trials[dead + 1].system_attrs["failed_trial"] == dead  # its retry ran
    return s


# ------------------------------------------------------------------------- tests

def test_study_has_n_finished_trials_and_retrain_command(tmp_path, capsys):
    url = sqlite_url(tmp_path)
    assert main(["search", "--storage", url, "--study", "s", "--n-trials", "3", *TINY,
                 "--seed", "1"]) == 0
    out = capsys.readouterr().out
    s = load(url, "s")
    assert len(s.trials) == 3
    assert set(states(s)) <= {"COMPLETE", "PRUNED"}
    for n in range(3):
        assert "trial %d " % n in out  # one progress line per trial
    assert s.trials[0].user_attrs["config"]["num_train"] == 300
    # the printed command retrains the best trial with exactly its configuration
    cmd = out.split("retrain it with:\n", 1)[1].splitlines()[0].strip()
    argv = shlex.split(cmd)
    assert argv[:2] == ["fcgpu", "train"]
    from fcgpu.cli import build_parser
    from fcgpu.cli.train import config_from_args
    cfg = config_from_args(build_parser().parse_args(argv[1:]))
    want = s.best_trial.user_attrs["config"]
    got = cfg.to_dict()
    for k in ("backend", "data"):
        got.pop(k), want.pop(k)
    assert got == want


def test_each_epoch_is_reported_and_pruning_stops_trials(tmp_path):
    url = sqlite_url(tmp_path)
    space = search.build_space(params=["layers=1", "units=8:16", "batch_size=100"])

    def settings(**kw):
        return search.SearchSettings(storage=url, study="p", num_train=300, backend="numpy",
                                     space=space, heartbeat=1, **kw)

    # no pruning: one intermediate value per epoch
    search.run_search(settings(n_trials=2, epochs=2, pruner="none"), out=open(os.devnull, "w"))
    s = load(url, "p")
    assert states(s) == ["COMPLETE", "COMPLETE"]
    assert all(sorted(t.intermediate_values) == [1, 2] for t in s.trials)
    assert all(t.value == pytest.approx(t.user_attrs["metrics"]["best_val_acc"]) for t in s.trials)
    # a pruner that always says stop: stopped after epoch 1 of 3
    always = optuna.pruners.ThresholdPruner(lower=2.0)
    search.run_search(settings(n_trials=2, epochs=3), pruner=always, out=open(os.devnull, "w"))
    s = load(url, "p")
    pruned = s.trials[2:]
    assert [t.state.name for t in pruned] == ["PRUNED", "PRUNED"]
    assert all(sorted(t.intermediate_values) == [1] for t in pruned)
    # ... but never after the last epoch: that run is complete
    search.run_search(settings(n_trials=1, epochs=1), pruner=always, out=open(os.devnull, "w"))
    assert load(url, "p").trials[-1].state.name == "COMPLETE"


def test_nan_trials_fail_with_reason_and_the_study_goes_on(tmp_path, capsys):
    url = sqlite_url(tmp_path)
    rc = main(["search", "--storage", url, "--study", "nan", "--n-trials", "2", *TINY,
               "--param", "weight_scale=1e30", "--param", "batchnorm=false"])
    assert rc == 0
    out = capsys.readouterr().out
    s = load(url, "nan")
    assert states(s) == ["FAIL", "FAIL"]  # the first failure did not stop the run
    for t in s.trials:
        assert "non-finite loss" in t.user_attrs["fail_reason"]
        assert "nan" in t.user_attrs["fail_reason"]
    assert "trial 0 FAIL non-finite loss" in out
    assert "no completed trial yet" in out
    assert main(["search", "--storage", url, "--study", "nan", "--n-trials", "1", *TINY]) == 0
    assert states(load(url, "nan"))[2] in ("COMPLETE", "PRUNED")


def test_oom_counts_as_a_failed_trial(tmp_path, monkeypatch):
    import fcgpu.train

    class OutOfMemoryError(MemoryError):  # the name CuPy's allocator error has
        pass

    def oom(cfg, **kw):
        raise OutOfMemoryError("Out of memory allocating 1,000,000,000 bytes")

    monkeypatch.setattr(fcgpu.train, "run_training", oom)
    url = sqlite_url(tmp_path)
    s, code = search.run_search(search.SearchSettings(storage=url, study="oom", n_trials=2,
                                                      epochs=1, num_train=300,
                                                      backend="numpy", heartbeat=1),
                                out=open(os.devnull, "w"))
    assert code == 0 and states(s) == ["FAIL", "FAIL"]
    assert s.trials[0].user_attrs["fail_reason"].startswith("out of memory: OutOfMemoryError")


def test_rerun_resumes_the_study(tmp_path, capsys):
    url = sqlite_url(tmp_path)
    args = ["search", "--storage", url, "--study", "r", "--n-trials", "2", *TINY]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "'r' in %s: 2 trials so far" % url in out
    s = load(url, "r")
    assert len(s.trials) == 4 and set(states(s)) <= {"COMPLETE", "PRUNED"}
    assert len({t.user_attrs["run"] for t in s.trials}) == 2
    # --timeout: no new trial after S seconds (the one running finishes)
    assert main(["search", "--storage", url, "--study", "r", "--timeout", "2", *TINY]) == 0
    assert 5 <= len(load(url, "r").trials) < 4 + 20


@pytest.mark.parametrize("url, shown", [
    ("nosuchdb://user:s3cret@host/db", "nosuchdb://user:***@host/db"),
    ("postgresql://fcgpu:s3cret@127.0.0.1:1/nodb", "postgresql://fcgpu:***@127.0.0.1:1/nodb"),
    ("sqlite:////nonexistent-folder/x/study.db", "sqlite:////nonexistent-folder/x/study.db"),
    ("not a url", "not a url"),
])
def test_bad_storage_is_one_clear_line(tmp_path, capsys, url, shown):
    rc = main(["search", "--storage", url, "--n-trials", "1", *TINY])
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fcgpu search: error: cannot open the study storage")
    assert shown in err
    assert "s3cret" not in captured.err + captured.out
    assert "Traceback" not in captured.err


def test_bad_storage_is_a_study_storage_error():
    """Storage problems raise their own FcgpuError (also the ValueError callers caught
    before, and an OSError) carrying the masked URL. Mutants: ``_cannot_open`` returning
    a plain ValueError (the CLI reports a bug); the URL unmasked."""
    from fcgpu.errors import FcgpuError, StorageError, StudyStorageError
    with pytest.raises(StudyStorageError) as info:
        search.open_storage("nosuchdb://user:s3cret@host/db")
    exc = info.value
    assert isinstance(exc, FcgpuError) and isinstance(exc, StorageError)
    assert isinstance(exc, ValueError) and isinstance(exc, OSError)
    assert exc.url == "nosuchdb://user:***@host/db" and "s3cret" not in str(exc)


def _lost(kind):
    """What a database that went away mid-search raises: SQLAlchemy's OperationalError
    (the driver's error inside), or Optuna's StorageInternalError wrapping it."""
    import sqlalchemy.exc
    driver = Exception("server closed the connection unexpectedly\n\tThis probably means "
                       "the server terminated abnormally")
    op = sqlalchemy.exc.OperationalError("SELECT trials.trial_id FROM trials", {}, driver)
    if kind == "sqlalchemy":
        return op
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the "
                                                     "commit.") from op
    except optuna.exceptions.StorageInternalError as exc:
        return exc


@pytest.mark.parametrize("kind", ["sqlalchemy", "optuna"])
def test_a_storage_lost_mid_search_is_one_clear_line(tmp_path, capsys, monkeypatch, kind):
    """The database keeps failing while trials run: the worker says it waits, retries
    for --storage-wait seconds, then one line naming the storage, the driver's reason
    and the bound, exit 2. Mutants: ``transient_cause`` not following Optuna's
    StorageInternalError to its cause (no wait: a bug's traceback, exit 1);
    ``short_error`` not following the wrapped cause (Optuna's generic "exception during
    the commit" instead of the reason); a wait that never gives up (the test hangs)."""
    url = sqlite_url(tmp_path)

    def optimize(self, *args, **kwargs):
        raise _lost(kind)
    monkeypatch.setattr(optuna.study.Study, "optimize", optimize)
    assert main(["search", "--storage", url, "--n-trials", "1", *TINY,
                 "--storage-wait", "1"]) == 2
    out, err = capsys.readouterr()
    reason = ("server closed the connection unexpectedly This probably means the server "
              "terminated abnormally")
    assert err == ("fcgpu search: error: lost the study storage %s: %s (gave up after 1 s; "
                   "--storage-wait)\n" % (url, reason))
    assert "lost the study storage %s: %s; waiting up to 1 s" % (url, reason) in out


def test_a_study_that_minimizes_is_a_setting_to_change(tmp_path, capsys):
    """An existing study of that name minimizes: one line telling to pick another
    --study, exit 2. Mutant: a plain ValueError (a bug's traceback, exit 1)."""
    url = sqlite_url(tmp_path)
    optuna.create_study(storage=url, study_name="low", direction="minimize")
    assert main(["search", "--storage", url, "--study", "low", "--n-trials", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fcgpu search: error: study 'low' in %s minimizes" % url)
    assert err.rstrip().endswith("pick another --study name") and err.count("\n") == 1


def test_search_flags_that_cannot_work_are_one_line(tmp_path, capsys):
    """--workers 0, a --space file that is not there, a --report folder that cannot be
    made: each one line, exit 2. Mutants: each raised as a plain ValueError/OSError
    again (a bug's traceback, exit 1)."""
    url = sqlite_url(tmp_path)
    (tmp_path / "afile").write_text("")
    for args, msg in [(["--workers", "0", "--n-trials", "1"], "--workers must be >= 1"),
                      (["--space", str(tmp_path / "no.toml")], "no.toml: no such file"),
                      (["--n-trials", "0", "--report", str(tmp_path / "afile" / "r")],
                       "cannot write the report to %s: Not a directory"
                       % (tmp_path / "afile" / "r"))]:
        assert main(["search", "--storage", url, *TINY, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("fcgpu search: error: ") and msg in err, err
        assert err.count("\n") == 1, err


def test_space_file_and_params(tmp_path):
    f = tmp_path / "space.toml"
    f.write_text('layers = 2\nunits = [64, 128]\nlearning_rate = {low = 1e-3, high = 5e-3}\n'
                 'dropout = {low = 0.6, high = 0.9, log = false}\nbatchnorm = false\n')
    space = search.build_space(str(f), ["reg=0:0.1:linear", "batch_size=200"])
    assert space["layers"] == {"value": 2}
    assert space["units"] == {"choices": [64, 128]}
    assert space["learning_rate"] == {"low": 1e-3, "high": 5e-3, "log": True}
    assert space["dropout"] == {"low": 0.6, "high": 0.9, "log": False}
    assert space["batchnorm"] == {"value": False}
    assert space["reg"] == {"low": 0.0, "high": 0.1, "log": False}
    assert space["batch_size"] == {"value": 200}
    assert space["weight_scale"] == search.default_space()["weight_scale"]
    (tmp_path / "t.toml").write_text("[space]\nlayers = [1, 3]\n")
    assert search.build_space(str(tmp_path / "t.toml"))["layers"] == {"choices": [1, 3]}
    for bad, msg in [("dropout = 1.5", "keep probability"), ("nope = 1", "unknown search"),
                     ("layers = 1.5", "takes int"), ("reg = {low = 0, high = 1, log = true}",
                                                      "needs low > 0"),
                     ("units = [", "not valid TOML")]:
        (tmp_path / "bad.toml").write_text(bad + "\n")
        with pytest.raises(ValueError, match=msg):
            search.build_space(str(tmp_path / "bad.toml"))
    with pytest.raises(ValueError, match="NAME=SPEC"):
        search.parse_param("learning_rate")


def test_report_with_plots_and_without_enough_trials(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    url = sqlite_url(tmp_path)
    base = ["search", "--storage", url, *TINY, "--pruner", "none", "--sampler", "random",
            "--seed", "3"]
    assert main([*base, "--study", "one", "--n-trials", "1", "--report",
                 str(tmp_path / "r1")]) == 0
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "| 1 | 0 |" in md  # the best-trials table
    assert "augment" not in md.split("## Best trials")[1].splitlines()[2]  # (course's)
    assert "Not drawn: parameter importances need at least 2 completed trials" in md
    assert (tmp_path / "r1" / "optimization_history.png").stat().st_size > 1000
    assert not (tmp_path / "r1" / "param_importances.png").exists()
    assert main([*base, "--study", "three", "--n-trials", "3", "--report",
                 str(tmp_path / "r3")]) == 0
    md = (tmp_path / "r3" / "report.md").read_text()
    for png in ("optimization_history.png", "param_importances.png",
                "intermediate_values.png"):
        assert (tmp_path / "r3" / png).read_bytes()[:4] == b"\x89PNG"
        assert "(%s)" % png in md
    assert "fcgpu train --preset course --hidden" in md
    assert len((tmp_path / "r3" / "trials.csv").read_text().splitlines()) == 4
    # a recipe search: its augmentation, smoothing and schedule get columns
    assert main([*base, "--study", "aug", "--n-trials", "1", "--param", "augment=flip",
                 "--param", "label_smoothing=0.1", "--param", "schedule=cosine",
                 "--param", "lr_decay=1", "--report", str(tmp_path / "ra")]) == 0
    md = (tmp_path / "ra" / "report.md").read_text()
    head, _, row = md.split("## Best trials")[1].strip().splitlines()[:3]
    cols = [c.strip() for c in head.strip("|").split("|")]
    cells = dict(zip(cols, [c.strip() for c in row.strip("|").split("|")]))
    assert (cells["augment"], cells["smoothing"], cells["schedule"], cells["lr decay"]) == (
        "flip", "0.1", "cosine", "1")
    assert "pad" not in cols and "mix" not in cols and "ema" not in cols  # (the course's)
    # mixing (with its alpha) and the weight average get columns too
    assert main([*base, "--study", "mix", "--n-trials", "2", "--param", "augment=flip",
                 "--param", "mix=cutmix", "--param", "mix_alpha=0.25",
                 "--param", "ema_decay=0,0.9", "--report", str(tmp_path / "rm")]) == 0
    table = (tmp_path / "rm" / "report.md").read_text().split("## Best trials")[1]
    head, _, *rows = table.strip().split("\n\n")[0].splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    cells = [dict(zip(cols, [c.strip() for c in r.strip("|").split("|")])) for r in rows]
    assert {c["mix"] for c in cells} == {"cutmix 0.25"}
    assert {c["ema"] for c in cells} <= {"off", "0.9"} and len(cells) == 2
    # --n-trials 0: only the summary and the report
    assert main(["search", "--storage", url, "--study", "three", "--n-trials", "0",
                 "--report", str(tmp_path / "r0")]) == 0
    assert len(load(url, "three").trials) == 3


def test_plan_workers_pins_gpus_and_splits_cores(monkeypatch):
    k, envs, descs = search.plan_workers(None, "cupy", gpus=["0", "1"], cpus=range(16))
    assert k == 2 and [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert envs[0]["OMP_NUM_THREADS"] == "8"
    assert [e["FCGPU_SEARCH_CPUS"] for e in envs] == ["0,1,2,3,4,5,6,7",
                                                      "8,9,10,11,12,13,14,15"]
    assert descs[1] == "GPU 1, CPUs 8-15, 8 threads"
    k, envs, _ = search.plan_workers(3, "cupy", gpus=["0", "1"], cpus=range(16))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert envs[2]["FCGPU_SEARCH_CPUS"] == "10,11,12,13,14"
    k, envs, _ = search.plan_workers(None, "numpy", cpus=range(16))
    assert k == 1 and envs == [{}]
    k, envs, descs = search.plan_workers(4, "numpy", cpus=[0, 1])
    assert k == 4 and all(e["NUMBA_NUM_THREADS"] == "1" for e in envs)
    assert [e["FCGPU_SEARCH_CPUS"] for e in envs] == ["0", "1", "0", "1"]
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in envs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert search.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert search.visible_gpus() == []
    with pytest.raises(ValueError, match="--workers"):
        search.plan_workers(0, "numpy")


def test_two_processes_share_one_study(tmp_path):
    check_two_processes_share(sqlite_url(tmp_path), tmp_path)


def test_workers_option_shares_the_trial_budget(tmp_path):
    url = sqlite_url(tmp_path)
    envdir = tmp_path / "envs"
    envdir.mkdir()
    proc = start_cli(tmp_path, ["--storage", url, "--study", "w", "--n-trials", "3",
                                "--workers", "2", *TINY], FCGPU_TEST_ENV_DIR=envdir)
    rc, out = finish(proc)
    assert rc == 0, out
    assert "worker 0/2: pid" in out and "worker 1/2: pid" in out
    s = load(url, "w")
    assert len(s.trials) == 3  # shared budget, not 3 per worker
    assert set(states(s)) <= {"COMPLETE", "PRUNED"}
    # each worker process saw its share of the cores before importing anything
    import json
    cpus = search.workers.usable_cpus()
    seen = [json.loads(p.read_text()) for p in envdir.glob("env-*.json")]
    workers = [e for e in seen if e["OMP_NUM_THREADS"] == str(max(1, len(cpus) // 2))
               and e["NUMBA_NUM_THREADS"] == str(max(1, len(cpus) // 2))]
    assert len(workers) == 2, seen
    assert len({e["FCGPU_SEARCH_CPUS"] for e in workers}) == min(2, len(cpus))
    assert "BLAS runs on" not in out  # pinned: no "fewer threads than cores" warning


def test_killed_worker_loses_only_its_trial(tmp_path):
    url = sqlite_url(tmp_path)
    s = check_killed_worker(url, tmp_path)
    rep = search.write_report(s, str(tmp_path / "rep"), storage_url=url)
    assert "worker lost: no heartbeat" in Path(rep).read_text()


def test_median_pruner_waits_for_its_warmup_epochs():
    """--pruner-warmup E: a trial far below the median is kept through epoch E-1 and
    stopped from epoch E on (what one-cycle runs need: their early epochs are noisy)."""
    def prunes_at(warmup):
        study = optuna.create_study(direction="maximize",
                                    pruner=search.make_pruner("median", warmup))
        for _ in range(5):
            t = study.ask()
            for epoch in range(1, 6):
                t.report(0.5, epoch)
            study.tell(t, 0.5)
        t = study.ask()
        for epoch in range(1, 6):
            t.report(0.1, epoch)
            if t.should_prune():
                return epoch
        return None

    assert prunes_at(0) == 1
    assert prunes_at(3) == 3
    assert prunes_at(9) is None
    assert search.make_pruner("none", 3).__class__.__name__ == "NopPruner"


def test_pruner_warmup_is_a_checked_setting_from_the_command_line():
    with pytest.raises(ValueError, match="--pruner-warmup"):
        search.SearchSettings(pruner_warmup=-1)
    from fcgpu.cli import build_parser
    from fcgpu.cli.search import settings_from_args
    args = build_parser().parse_args(["search", "--pruner-warmup", "4"])
    s = settings_from_args(args)
    assert s.pruner_warmup == 4
    assert search.SearchSettings.from_json(s.to_json()).pruner_warmup == 4

def test_settings_round_trip_as_json():
    s = search.SearchSettings(n_trials=3, seed=4, space=search.build_space(
        params=["units=10,20"]))
    t = search.SearchSettings.from_json(s.to_json())
    assert t == s
    assert search.SearchSettings(timeout=5).trial_budget() is None
    assert search.SearchSettings().trial_budget() == search.DEFAULT_N_TRIALS
    with pytest.raises(ValueError, match="--num-train"):
        search.SearchSettings(num_train=50000)


def test_space_has_augmentation_schedule_and_smoothing_fixed_at_the_course_by_default():
    from fcgpu.search.space import suggest_config
    from fcgpu.train import TrainConfig
    space = search.default_space()
    assert space["augment"] == {"value": "none"} and space["schedule"] == {"value": "step"}
    assert space["label_smoothing"] == {"value": 0.0} and space["pad"] == {"value": 4}
    fixed = {"layers": 2, "dropout": 0.8, "learning_rate": 1e-3, "reg": 1e-4,
             "weight_scale": 1e-2, "batch_size": 100}
    trial = optuna.trial.FixedTrial(dict(fixed, units_1=640, units_2=320))
    cfg = suggest_config(trial, space, epochs=1)
    assert cfg == TrainConfig(hidden_dims=(640, 320), dropout=0.8, learning_rate=1e-3,
                              reg=1e-4, weight_scale=1e-2, batch_size=100, epochs=1)


def test_space_draws_augmentation_width_schedule_and_smoothing(tmp_path):
    from fcgpu.search.space import suggest_config
    space = search.build_space(None, ["augment=flip,crop", "schedule=step,onecycle",
                                      "label_smoothing=0:0.2:linear", "pad=2,4",
                                      "units=256,1024"])
    assert space["augment"] == {"choices": ["flip", "crop"]}
    assert space["schedule"] == {"choices": ["step", "onecycle"]}
    assert space["label_smoothing"] == {"low": 0.0, "high": 0.2, "log": False}
    base = {"layers": 1, "units_1": 1024, "dropout": 0.9, "learning_rate": 1e-3, "reg": 1e-4,
            "weight_scale": 1e-2, "batch_size": 100, "pad": 2, "label_smoothing": 0.1}
    cfg = suggest_config(optuna.trial.FixedTrial(dict(base, augment="crop",
                                                      schedule="onecycle")), space)
    assert (cfg.hidden_dims, cfg.augment, cfg.pad, cfg.schedule, cfg.label_smoothing,
            cfg.lr_decay) == ((1024,), "crop", 2, "onecycle", 0.1, 1.0)
    cfg = suggest_config(optuna.trial.FixedTrial(dict(base, augment="flip", schedule="step")),
                         space)
    assert (cfg.augment, cfg.schedule, cfg.lr_decay) == ("flip", "step", 0.9)
    for bad, msg in [("augment=rotate", "augment"), ("schedule=linear", "schedule"),
                     ("label_smoothing=1", r"\[0, 1\)"), ("pad=-1", ">= 0")]:
        with pytest.raises(ValueError, match=msg):
            search.build_space(None, [bad])


def test_retrain_command_carries_augmentation_schedule_and_smoothing():
    """The printed command rebuilds the trial's config, mixing and the weight average
    included (mutant caught: --mix or --ema left out of it)."""
    from fcgpu.cli import build_parser
    from fcgpu.cli.train import config_from_args
    from fcgpu.search.summary import retrain_command
    from fcgpu.train import TrainConfig
    want = TrainConfig(hidden_dims=(64,), augment="crop", pad=2, label_smoothing=0.1,
                       schedule="cosine", warmup_epochs=1.0, lr_decay=1.0, epochs=3,
                       backend="numpy", mix="cutmix", mix_alpha=0.5, ema_decay=0.999)
    argv = shlex.split(retrain_command(want.to_dict()))
    assert argv[:2] == ["fcgpu", "train"]
    assert config_from_args(build_parser().parse_args(argv[1:])) == want
    plain = TrainConfig(hidden_dims=(64,), epochs=3, backend="numpy")
    argv = shlex.split(retrain_command(plain.to_dict()))
    assert "--augment" not in argv and "--schedule" not in argv
    assert "--mix" not in argv and "--ema" not in argv
    assert config_from_args(build_parser().parse_args(argv[1:])) == plain


def test_trial_lines_name_the_recipe_where_it_leaves_the_course():
    from fcgpu.search.summary import describe_config
    from fcgpu.train import TrainConfig, from_preset
    course = describe_config(TrainConfig().to_dict())
    assert course == "hidden 500x500x500 keep 0.8 lr 0.005 reg 0 ws 0.04 batch 490"
    cfg = TrainConfig(augment="crop", pad=2, label_smoothing=0.1, schedule="onecycle",
                      lr_decay=1.0, warmup_epochs=3).to_dict()
    assert describe_config(cfg).endswith("augment crop pad 2 smoothing 0.1 onecycle warmup 3")
    assert describe_config(TrainConfig(augment="flip", lr_decay=0.8).to_dict()).endswith(
        "augment flip decay 0.8")
    assert "augment" in describe_config(from_preset("augmented").to_dict())
