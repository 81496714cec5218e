"""``fcgpu search`` against a real PostgreSQL server: two worker processes share one
study, and a worker killed mid-trial does not corrupt it (its trial ends as FAIL).

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
