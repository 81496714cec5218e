"""fcgpu's own errors: the problems a user can fix, each told in one line.

Everything fcgpu raises for bad input, a missing resource or a run that cannot go on
derives from :class:`FcgpuError`. The ``fcgpu`` command prints those as one line on
stderr and exits with status 2; any other exception is a bug in fcgpu (or in what it
calls) and keeps its traceback (exit status 1, with a line asking for a report).

Each class also derives from the built-in type that callers caught before it existed
(``ValueError``, ``RuntimeError``, ``OSError``, ``FloatingPointError``), so code written
against those keeps working.

This module imports nothing of fcgpu: every layer may raise these.
"""
from __future__ import annotations

import os
import signal

__all__ = ["FcgpuError", "ConfigError", "DataError", "CheckpointError", "CheckpointUnreadable",
           "BackendUnavailable", "NonFiniteLossError", "StorageError", "StudyStorageError",
           "TrainingStopped", "DeviceOutOfMemory", "RunInterrupted", "one_line"]


def one_line(text):
    """``text`` with its white space folded: messages are one line whatever they quote."""
    return " ".join(str(text).split())


class FcgpuError(Exception):
    """A problem the user can fix; ``str()`` names it in one line."""

    def __init__(self, message=""):
        super().__init__(one_line(message))


class ConfigError(FcgpuError, ValueError):
    """A setting, flag or argument that is out of its range or of the wrong kind."""


class DataError(FcgpuError, ValueError):
    """Data that cannot be used: missing or unreadable files, shapes, dtypes, labels
    out of range, NaN or inf."""


class CheckpointError(FcgpuError, ValueError):
    """A checkpoint is unreadable, corrupt, foreign, or does not fit the run.

    ``problem`` says what is wrong, ``path`` (when known) which file; ``str()`` is
    one line naming both.
    """

    def __init__(self, problem, path=None):
        self.problem = one_line(problem)
        self.path = None if path is None else os.fspath(path)
        super().__init__(self.problem if self.path is None
                         else "checkpoint %s: %s" % (self.path, self.problem))


class CheckpointUnreadable(CheckpointError, OSError):
    """The checkpoint file cannot be opened or read at all (missing, a folder, no
    permission). Also an ``OSError``, which ``open`` raised before."""


class BackendUnavailable(FcgpuError, RuntimeError):
    """The requested backend cannot run here; the message names the cause (not
    installed, no driver, no device)."""


class NonFiniteLossError(FcgpuError, FloatingPointError):
    """The training loss became NaN or infinite."""


class StorageError(FcgpuError, OSError):
    """A file or database that a run writes to could not be written or reached (a full
    disk, a read-only folder, a server that went away); the message names which and
    why."""


class StudyStorageError(StorageError, ValueError):
    """The search's study storage (an Optuna database: SQLite, PostgreSQL, MySQL)
    cannot be opened, or went away during the search. The message is one line naming
    the storage URL with its password masked, and the cause; ``url`` holds that masked
    URL. Also a ``ValueError``, which the search raised before."""

    def __init__(self, message, url=None):
        self.url = url
        super().__init__(message)


class TrainingStopped(StorageError):
    """A training run stopped at an epoch's end because its checkpoint could not be
    written (the message names the file and the cause). ``metrics`` holds the result
    so far (the run's metrics with ``stopped`` set), ``saved_epoch`` the epoch the
    checkpoint file still holds (None when this run saved none and resumed from none)."""

    def __init__(self, message, metrics=None, saved_epoch=None):
        self.metrics = metrics
        self.saved_epoch = saved_epoch
        super().__init__(message)

    def __reduce__(self):
        return type(self), (str(self), self.metrics, self.saved_epoch)


class DeviceOutOfMemory(FcgpuError, MemoryError):
    """The GPU ran out of memory; the message gives the size asked for, the device's
    free and total memory, and what to make smaller."""


class RunInterrupted(KeyboardInterrupt):
    """A signal (SIGINT: Ctrl-C, or SIGTERM) stopped a run. Not an :class:`FcgpuError`:
    the command exits with ``128 + signum`` (130, 143), as a shell reports a process the
    signal ended. A ``KeyboardInterrupt``, so code that catches Ctrl-C catches it too.

    ``signum`` is the signal; the run that stops fills in ``epoch`` (the epochs it had
    completed), ``epochs`` (the run's total) and ``saved_epoch`` (the epoch its
    checkpoint holds; None when there is none)."""

    def __init__(self, signum, epoch=None, epochs=None, saved_epoch=None):
        self.signum = int(signum)
        self.epoch, self.epochs, self.saved_epoch = epoch, epochs, saved_epoch
        super().__init__("interrupted by %s" % self.signal_name)

    def __reduce__(self):
        return type(self), (self.signum, self.epoch, self.epochs, self.saved_epoch)

    @property
    def signal_name(self):
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return "signal %d" % self.signum

    @property
    def exit_code(self):
        return 128 + self.signum
