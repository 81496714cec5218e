"""``fcgpu search`` against a real PostgreSQL server: two worker processes share one
study, a worker killed mid-trial does not corrupt it (its trial ends as FAIL), and a
server that cannot be reached, a database that is not there or one dropped mid-search
is one line naming the storage (password masked) and the server's reason.

The server comes from ``FCGPU_TEST_POSTGRES_URL`` (``.ci/postgres.sh start`` sets it up:
``. .ci/postgres.sh start`` exports it, ``. .ci/postgres.sh stop`` tears it down).
"""
from __future__ import annotations

import os
import uuid

import pytest

pytestmark = pytest.mark.postgres

URL = os.environ.get("FCGPU_TEST_POSTGRES_URL")
if not URL:
    pytest.skip("FCGPU_TEST_POSTGRES_URL is not set: start a throwaway server with "
                "`. .ci/postgres.sh start` (it exports the variable)", allow_module_level=True)

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="the PostgreSQL driver psycopg2 is not installed "
                                       "(pip install 'fcgpu[search]')")

from test_search import check_killed_worker, check_two_processes_share  # noqa: E402

from fcgpu.cli import main  # noqa: E402


@pytest.fixture
def study_name():
    """A fresh study name; the study is deleted afterwards (the database persists)."""
    name = "test-%s" % uuid.uuid4().hex[:10]
    yield name
    try:
        optuna.delete_study(study_name=name, storage=URL)
    except KeyError:
        pass


def test_two_worker_processes_share_one_study(tmp_path, study_name):
    check_two_processes_share(URL, tmp_path, study=study_name)


def test_killed_worker_does_not_corrupt_the_study(tmp_path, study_name):
    s = check_killed_worker(URL, tmp_path, study=study_name)
    assert [t.number for t in s.trials] == list(range(len(s.trials)))


def test_unreachable_server_is_one_clear_line(capsys):
    from sqlalchemy.engine import make_url
    u = make_url(URL).set(port=1, password="s3cret")
    rc = main(["search", "--storage", u.render_as_string(hide_password=False),
               "--n-trials", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert u.render_as_string(hide_password=True) in err and "s3cret" not in err


def _url(**parts):
    from sqlalchemy.engine import make_url
    return make_url(URL).set(**parts)


def _admin():
    """A connection to the test database outside Optuna (the test user may create and
    drop databases: .ci/postgres.sh makes it the cluster's owner)."""
    import psycopg2
    u = _url()
    con = psycopg2.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                           dbname=u.database)
    con.autocommit = True
    return con


def test_a_database_that_is_not_there_is_one_clear_line(capsys):
    """The server answers but has no such database: exit 2, one line with the server's
    reason. Mutant: _cannot_open returning a plain ValueError (a bug's traceback)."""
    u = _url(database="no_such_db_%s" % uuid.uuid4().hex[:8], password="s3cret")
    rc = main(["search", "--storage", u.render_as_string(hide_password=False),
               "--n-trials", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("fcgpu search: error: cannot open the study storage %s: "
                          % u.render_as_string(hide_password=True))
    assert 'database "%s" does not exist' % u.database in err and "s3cret" not in err


def test_a_database_dropped_mid_search_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """The study's database is dropped (its connections cut) after the study is open,
    as a server that goes away for good: the next database call fails, the worker waits
    --storage-wait seconds for it, and the search ends with one line "lost the study
    storage URL: reason (gave up after 1 s ...)", exit 2. The failure arrives as
    Optuna's StorageInternalError wrapping SQLAlchemy's OperationalError, so the reason
    shown is the wrapped one. Mutant: transient_cause not following
    StorageInternalError to its cause (a bug's traceback, exit 1)."""
    import test_search
    monkeypatch.setattr("fcgpu.train.load_data", test_search.fake_data)
    monkeypatch.chdir(tmp_path)
    name = "fcgpu_lost_%s" % uuid.uuid4().hex[:8]
    admin = _admin()
    admin.cursor().execute('CREATE DATABASE "%s"' % name)
    url = _url(database=name).render_as_string(hide_password=False)
    real = optuna.study.Study.optimize

    def optimize(self, *args, **kwargs):
        admin.cursor().execute('DROP DATABASE "%s" WITH (FORCE)' % name)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(optuna.study.Study, "optimize", optimize)
    try:
        rc = main(["search", "--storage", url, "--n-trials", "1", *test_search.TINY,
                   "--storage-wait", "1"])
    finally:
        admin.cursor().execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        admin.close()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("fcgpu search: error: lost the study storage %s: "
                          % _url(database=name).render_as_string(hide_password=True)), err
    assert 'database "%s" does not exist' % name in err, err
