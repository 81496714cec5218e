"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A reader sees the old file or the new one, never a partial write, even if the
process is killed mid-way.
"""
from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write_bytes", "atomic_save_figure"]


def atomic_write_bytes(data, path):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
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
