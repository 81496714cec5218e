"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A reader sees the old file or the new one, never a partial write, even if the
process is killed mid-way. A write that the system refuses (a full disk, a read-only
folder, a path through a file) raises :class:`fcgpu.errors.StorageError`, one line
naming the file and the reason (an ``OSError`` too, chained to the original).
"""
from __future__ import annotations

import errno
import os
import tempfile

from .errors import StorageError

__all__ = ["atomic_write_bytes", "atomic_save_figure", "check_writable"]


def atomic_write_bytes(data, path):
    """Write ``data`` (bytes) to ``path`` atomically, creating its folder. A folder that
    vanished is made again."""
    path = os.fspath(path)
    try:
        _write(data, path)
    except StorageError:
        raise
    except OSError as exc:
        raise _refused(exc, path) from exc


def check_writable(path):
    """Raise :class:`StorageError` now if ``path`` could not be written (its folder
    cannot be made, is read-only, or the path is a folder): a temporary file is made
    beside it and removed. Nothing is left behind; a full disk shows only later."""
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        fd, tmp = _temporary(path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise _refused(exc, path) from exc


def _refused(exc, path):
    """The one-line StorageError for the OSError ``exc`` met writing ``path``."""
    why = exc.strerror or str(exc) or type(exc).__name__
    # the part in the way, when it is not the file itself or our temporary file
    others = [os.fspath(n) for n in (exc.filename, exc.filename2) if n]
    others = [n for n in others if n != path and not os.path.basename(n).startswith(
        ".tmp-")]
    if others:
        why += " (%s)" % others[0]
    return StorageError("cannot write %s: %s" % (path, why))


def _temporary(path):
    """A new temporary file in ``path``'s folder (made if need be): ``(fd, name)``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return tempfile.mkstemp(prefix=".tmp-", dir=folder)


def _write(data, path):
    fd, tmp = _temporary(path)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the mode of a new file, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_figure(fig, path, **savefig_kwargs):
    """Render a matplotlib figure as PNG in memory, close it, then write it atomically
    (``savefig_kwargs`` go to ``fig.savefig``: ``dpi``, ``bbox_inches``...)."""
    import io
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", **savefig_kwargs)
    finally:
        plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)
