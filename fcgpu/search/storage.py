"""The study's storage and the study itself: an Optuna RDB storage (SQLite on one
machine, PostgreSQL or MySQL shared by many) with its URL handling and one-line
errors that never show a password, and the study with its sampler and pruner.

A storage that cannot be opened, or a study that cannot be loaded, raises
:class:`fcgpu.errors.StudyStorageError`: one line naming the URL (password masked) and
the cause, which ``fcgpu search`` prints without a traceback.

A connection lost later (a server that restarts) is told apart from other database
failures by :func:`transient_cause`; the heartbeat of a running trial skips the beats
it cannot write instead of ending its thread (:func:`open_storage`), and
:func:`storage_gone` says when a trial's own write found the storage gone (or the trial
already failed by another worker). What the search does then is
:mod:`fcgpu.search.recovery`'s."""
from __future__ import annotations

import contextlib
import functools
import os
import re
import time
import warnings

from ..errors import ConfigError, StudyStorageError


def mask_url(url):
    """``url`` with its password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", str(url))


def database_errors():
    """The exception types that mean the database failed, not fcgpu: SQLAlchemy's (a
    driver's error arrives wrapped in one) and Optuna's ``StorageInternalError`` (what
    Optuna makes of a SQLAlchemy error inside its sessions)."""
    import optuna
    import sqlalchemy.exc
    return (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def transient_cause(exc):
    """The failure behind ``exc`` if it is one a lost connection causes (a server that
    restarts or goes away for a while), else None: SQLAlchemy's ``OperationalError``,
    ``InterfaceError``, ``DisconnectionError`` or pool ``TimeoutError``, raised bare,
    wrapped by Optuna's ``StorageInternalError``, or in the context of an error raised
    while handling one (Optuna's ``optimize`` raises an ``UnboundLocalError`` when its
    final tell fails on a lost connection: optuna/optuna#5280, still so in 5.1)."""
    import sqlalchemy.exc as sx
    kinds = (sx.OperationalError, sx.InterfaceError, sx.DisconnectionError, sx.TimeoutError)
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kinds):
            return e
        stack += [e.__context__, e.__cause__]
    return None


def storage_gone(exc):
    """Whether a trial's own storage call failed because the storage went away
    (:func:`transient_cause`) or because the trial is already finished: another worker
    marked it FAIL when its heartbeat went stale."""
    import optuna
    return (transient_cause(exc) is not None
            or isinstance(exc, optuna.exceptions.UpdateFinishedTrialError))


def short_error(exc, url=None):
    """A one-line reason from a (SQLAlchemy/driver) exception, without secrets. An
    Optuna ``StorageInternalError`` gives the reason of the error it wraps."""
    while (type(exc).__name__ == "StorageInternalError" and exc.__cause__ is not None):
        exc = exc.__cause__
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("(Background on this error",
                                                       "[SQL:", "[parameters:"))]
    text = " ".join(lines[:3]) or type(exc).__name__
    if url:
        text = text.replace(str(url), mask_url(url))
        try:
            from sqlalchemy.engine import make_url
            pw = make_url(url).password
            if pw:
                text = text.replace(str(pw), "***")
        except Exception:
            pass
    return text


def _engine_kwargs(url):
    from sqlalchemy.engine import make_url
    u = make_url(url)
    backend, driver = u.get_backend_name(), u.get_driver_name()
    if backend == "sqlite":
        # several processes share the file: wait for its lock instead of failing
        return {"connect_args": {"timeout": 60}}
    kw = {"pool_pre_ping": True}
    if driver in ("psycopg2", "psycopg", "pymysql", "mysqldb"):
        kw["connect_args"] = {"connect_timeout": 10}
    return kw


def _prepare_sqlite(url, masked):
    """A SQLite file: check its folder, and switch it to write-ahead logging once (readers
    no longer block the writer, and a commit costs one fsync instead of three): several
    worker processes on one machine share it smoothly. Keep it on a local disk."""
    from sqlalchemy.engine import make_url
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" \
            or u.database.startswith("file:"):
        return
    folder = os.path.dirname(os.path.abspath(u.database))
    if not os.path.isdir(folder):
        raise StudyStorageError("cannot open the study storage %s: the folder %s does not "
                                "exist" % (masked, folder), url=masked)
    import sqlite3
    try:
        con = sqlite3.connect(u.database, timeout=60)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise StudyStorageError("cannot open the study storage %s: %s" % (masked, exc),
                                    url=masked) from None
    except sqlite3.Error:
        pass  # e.g. a read-only folder: SQLite's default journal still works


@contextlib.contextmanager
def storage_failures_named(url):
    """Inside, a database failure (:func:`database_errors`) becomes a one-line
    :class:`~fcgpu.errors.StudyStorageError`, ``lost the study storage URL: cause``."""
    try:
        yield
    except database_errors() as exc:
        raise StudyStorageError("lost the study storage %s: %s"
                                % (mask_url(url), short_error(exc, url)),
                                url=mask_url(url)) from None


def _cannot_open(url, exc):
    """The one-line error for a storage that cannot be opened, with a hint where one
    helps (a missing PostgreSQL driver, the ``postgres://`` spelling)."""
    hint = ""
    if "postgres" in str(url).split(":", 1)[0] and isinstance(exc, ImportError):
        hint = " (pip install psycopg2-binary, or fcgpu[search])"
    if str(url).startswith("postgres://"):
        hint = " (write postgresql://, not postgres://)"
    return StudyStorageError("cannot open the study storage %s: %s%s"
                             % (mask_url(url), short_error(exc, url), hint), url=mask_url(url))


@functools.lru_cache(maxsize=None)
def storage_class():
    """Optuna's :class:`~optuna.storages.RDBStorage` with a heartbeat that outlives a
    lost connection: Optuna's heartbeat thread ends, with a traceback on stderr, at the
    first beat it cannot write, so a trial whose worker lives on would later be taken for
    dead. Here a beat that fails is skipped and the next one tries again; the trial's
    own next write tells its worker that the storage went away."""
    import optuna

    class SearchStorage(optuna.storages.RDBStorage):
        def record_heartbeat(self, trial_id):
            try:
                super().record_heartbeat(trial_id)
            except database_errors():
                pass

    return SearchStorage


def stale_callback_kwarg():
    """The name RDBStorage gives the callback for trials whose heartbeat went stale:
    ``heartbeat_stale_trial_callback`` from Optuna 4.9, ``failed_trial_callback``
    before."""
    import inspect
    import optuna
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    return ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback")


def open_storage(url, heartbeat_interval=60, grace_period=None, stale_callback=None):
    """An :class:`optuna.storages.RDBStorage` (:func:`storage_class`) for ``url`` with
    the heartbeat on; ``stale_callback(study, trial)`` runs for each trial that a worker
    marks FAIL because its heartbeat went stale.

    Any problem (unparseable URL, unknown dialect, missing driver, unreachable or
    refusing server, missing folder) raises :class:`~fcgpu.errors.StudyStorageError` (a
    ``ValueError`` too) naming the URL with its password masked.
    """
    import optuna

    masked = mask_url(url)
    # what a bad URL, a missing driver, a refusing server or an old schema raise (Optuna
    # raises RuntimeError for a study database that needs `optuna storage upgrade`)
    failures = database_errors() + (ImportError, RuntimeError)
    try:
        kwargs = _engine_kwargs(url)
    except failures as exc:
        raise _cannot_open(url, exc) from None
    _prepare_sqlite(url, masked)
    for attempt in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return storage_class()(
                    url, engine_kwargs=kwargs, heartbeat_interval=int(heartbeat_interval),
                    grace_period=int(grace_period) if grace_period else None,
                    **{stale_callback_kwarg(): stale_callback})
            except failures as exc:
                if attempt < 5 and _creation_race(exc):
                    # another worker is creating the same tables right now
                    time.sleep(0.2 * (attempt + 1) + 0.3 * (os.getpid() % 7) / 7)
                    continue
                raise _cannot_open(url, exc) from None


def _creation_race(exc):
    """Whether ``exc`` is two processes initializing a fresh database at once."""
    import sqlalchemy.exc
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and (
        "already exists" in text or "duplicate key" in text or "database is locked" in text)


def make_sampler(name, seed=None):
    import optuna
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: running trials count as bad, so parallel workers spread out
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(name, warmup=0):
    """Optuna's pruner ``name``; a median pruner never stops a trial before it has
    reported ``warmup`` epochs (a one-cycle run's early epochs, at its highest rates,
    say little about where it ends)."""
    import optuna
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=int(warmup))


def open_study(storage, name, sampler=None, pruner=None, url=None):
    """Create the study (maximizing validation accuracy) or load the existing one.

    A storage that fails raises :class:`~fcgpu.errors.StudyStorageError`; a study of that
    name that minimizes, :class:`~fcgpu.errors.ConfigError`."""
    import optuna
    where = mask_url(url) if url else "the storage"
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    except database_errors() as exc:
        raise StudyStorageError("cannot open study %r in %s: %s"
                                % (name, where, short_error(exc, url)),
                                url=where) from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError("study %r in %s minimizes its objective; fcgpu search maximizes the "
                          "validation accuracy: pick another --study name" % (name, where))
    return study


def quiet_optuna(verbose):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
