"""Your own data for ``fcgpu train --data FILE.npz``: load, check, split, normalize.

The file is a NumPy ``.npz`` archive (``np.savez`` / ``np.savez_compressed``) with

* ``X_train`` ``(N, ...)`` numeric features (any count: ``(N, D)``, or images such
  as ``(N, 3, 32, 32)``), and ``y_train`` ``(N,)`` integer labels ``0..C-1``; C is
  read from the data (every class must occur in ``y_train``);
* optionally ``X_val``/``y_val`` and ``X_test``/``y_test`` (each pair or neither),
  with the features of ``X_train``;
* optionally ``image_shape``, e.g. ``[3, 32, 32]``: the shape of one example, whose
  product is the feature count. It is recorded in the training config; as
  ``[C, H, W]`` it lets ``fcgpu train --augment flip|crop`` treat rows as images.

Without ``X_val``, the validation split is the last ``min(1000, N // 10)`` rows of
``X_train`` (like CIFAR-10, where it is the last 1000 of the 50000 training images);
rows are not shuffled, so save them in random order. The mean example of the
training split (after that split-off, computed in float64) is subtracted from every
split, as for CIFAR-10; features become float32.

The file is read with ``allow_pickle=False``: it can hold arrays only, never code.
Every problem raises :class:`fcgpu.data.DataError` (a ``ValueError``) in one line
that names the file, the entry and what is wrong.
"""
from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from .data_checks import check_finite
from .errors import DataError

__all__ = ["is_npz", "load_npz", "KEYS", "VAL_ROWS"]

KEYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "image_shape")
VAL_ROWS = 1000  # at most this many rows split off for validation (and at most N // 10)


def is_npz(path) -> bool:
    """True when ``path`` names an ``.npz`` file (by its suffix)."""
    return path is not None and os.fspath(path).lower().endswith(".npz")


def load_npz(path, batch_size=1, subtract_mean=True):
    """Load and check ``path``; return the splits as :func:`get_CIFAR10_data` does.

    Returns a dict with ``X_train, y_train, X_val, y_val`` (and ``X_test, y_test``
    when the file has them): features float32 with the training mean subtracted,
    labels int64; plus ``num_classes`` (int) and ``image_shape`` (tuple or None).
    ``batch_size``: the training split must hold at least one batch.
    """
    name = os.fspath(path)
    raw = _read(name)
    where = "%s:" % name
    features = _check_entries(raw, where)
    image_shape = None
    if "image_shape" in raw:
        image_shape = _check_image_shape(raw["image_shape"], features, where)
    splits = _split(raw, where)
    num_classes = _check_classes(splits, where)
    if len(splits["train"][0]) < batch_size:
        raise DataError("%s the training split has %d rows, fewer than one batch of %d; "
                        "use a smaller --batch-size or more data"
                        % (where, len(splits["train"][0]), batch_size))
    X_train = splits["train"][0]
    mean = (X_train.mean(axis=0, dtype=np.float64).astype(np.float32)
            if subtract_mean else np.float32(0))
    data = {}
    for split, (X, y) in splits.items():
        out = np.empty(X.shape, np.float32)
        np.subtract(X, mean, out=out, dtype=np.float32)
        data["X_" + split] = out
        data["y_" + split] = y.astype(np.int64)
    data["num_classes"] = num_classes
    data["image_shape"] = image_shape
    return data


def _check_entries(raw, where):
    """The entries present, in pairs, each X and y checked; returns the feature count
    (the same for every X: X_train's)."""
    for k in ("X_train", "y_train"):
        if k not in raw:
            raise DataError("%s no %s entry (an fcgpu .npz needs X_train and y_train; "
                            "it has %s)" % (where, k, ", ".join(sorted(raw)) or "nothing"))
    for split in ("val", "test"):
        has = ["X_" + split in raw, "y_" + split in raw]
        if any(has) and not all(has):
            missing = "y_" + split if has[0] else "X_" + split
            raise DataError("%s %s is missing (X_%s and y_%s come together or not at all)"
                            % (where, missing, split, split))
    features = None
    for split in ("train", "val", "test"):
        k = "X_" + split
        if k not in raw:
            continue
        f = _check_X(raw[k], k, where)
        if features is None:
            features = f
        elif f != features:
            raise DataError("%s %s has %d features per example but X_train has %d"
                            % (where, k, f, features))
        _check_y(raw["y_" + split], "y_" + split, len(raw[k]), where)
    return features


def _split(raw, where):
    """``{split: (X, y)}``: train, val (given, or the last rows of X_train) and test."""
    X_train, y_train = raw["X_train"], raw["y_train"]
    if "X_val" in raw:
        X_val, y_val = raw["X_val"], raw["y_val"]
    else:
        n_val = min(VAL_ROWS, len(X_train) // 10)
        if n_val < 1:
            raise DataError("%s X_train has %d rows: too few to split off a validation set "
                            "(the last N // 10 rows); add X_val/y_val" % (where, len(X_train)))
        X_train, X_val = X_train[:-n_val], X_train[-n_val:]
        y_train, y_val = y_train[:-n_val], y_train[-n_val:]
    splits = {"train": (X_train, y_train), "val": (X_val, y_val)}
    if "X_test" in raw:
        splits["test"] = (raw["X_test"], raw["y_test"])
    return splits


def _check_classes(splits, where):
    """C from the training labels (0..C-1, every class present); the other splits'
    labels within it. Returns C."""
    y_train = splits["train"][1]
    num_classes = int(y_train.max()) + 1
    absent = np.flatnonzero(np.bincount(y_train, minlength=num_classes) == 0)
    if absent.size:
        raise DataError("%s the training labels are 0..%d but class %s never occurs in "
                        "them (labels must be 0..C-1 with every class present; shift 1-based "
                        "labels down by one)"
                        % (where, num_classes - 1, ", ".join(map(str, absent[:5]))))
    for split, (_, y) in splits.items():
        hi = int(y.max())
        if split != "train" and hi >= num_classes:
            raise DataError("%s y_%s has label %d, out of range: the training labels are "
                            "0..%d" % (where, split, hi, num_classes - 1))
    return num_classes


def _read(name):
    """Every entry of the archive as an ndarray, or a DataError."""
    if not os.path.exists(name):
        raise DataError("%s does not exist" % name)
    if os.path.isdir(name):
        raise DataError("%s is a folder, not an .npz file" % name)
    try:
        f = np.load(name, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError("%s is not a readable .npz archive (%s: %s)"
                        % (name, type(exc).__name__, exc)) from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError("%s holds a single .npy array, not an .npz archive of named arrays "
                        "(save one with np.savez(path, X_train=..., y_train=...))" % name)
    with f:
        unknown = sorted(set(f.files) - set(KEYS))
        if unknown:
            raise DataError("%s: unexpected entr%s %s (an fcgpu .npz holds only %s)"
                            % (name, "y" if len(unknown) == 1 else "ies",
                               ", ".join(unknown), ", ".join(KEYS)))
        raw = {}
        for k in f.files:
            try:
                raw[k] = f[k]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise DataError("%s: %s is an object array (ragged rows or Python "
                                    "objects); store a numeric array" % (name, k)) from None
                raise DataError("%s: %s cannot be read (%s)" % (name, k, exc)) from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise DataError("%s: %s cannot be read (%s: %s)"
                                % (name, k, type(exc).__name__, exc)) from None
    return raw


def _check_X(X, k, where):
    if X.dtype.kind not in "biuf":
        raise DataError("%s %s has dtype %s; features must be numbers (bool, int or float)"
                        % (where, k, X.dtype))
    if X.ndim < 2:
        raise DataError("%s %s has shape %s; it must be (N, features) or (N, ...) with one "
                        "row per example" % (where, k, X.shape))
    if X.shape[0] == 0:
        raise DataError("%s %s has no rows" % (where, k))
    features = int(np.prod(X.shape[1:]))
    if features == 0:
        raise DataError("%s %s has shape %s: no features" % (where, k, X.shape))
    check_finite(X, "%s %s" % (where, k))
    return features


def _check_y(y, k, n, where):
    if y.ndim != 1:
        raise DataError("%s %s has shape %s; labels must be 1-D, one per row"
                        % (where, k, y.shape))
    if len(y) != n:
        raise DataError("%s %s has %d labels but X_%s has %d rows"
                        % (where, k, len(y), k[2:], n))
    if y.dtype.kind not in "iu":
        raise DataError("%s %s has dtype %s; labels must be integers 0..C-1 (save "
                        "y.astype(np.int64))" % (where, k, y.dtype))
    lo = int(y.min())
    if lo < 0:
        raise DataError("%s %s has label %d, out of range: labels must be 0..C-1"
                        % (where, k, lo))


def _check_image_shape(s, features, where):
    if s.ndim != 1 or s.size == 0 or s.dtype.kind not in "iu" or (s < 1).any():
        raise DataError("%s image_shape must be a short list of positive integers such as "
                        "[3, 32, 32], got %r" % (where, s.tolist()))
    shape = tuple(int(v) for v in s)
    if int(np.prod(shape)) != features:
        raise DataError("%s image_shape %s holds %d values but each example has %d features"
                        % (where, list(shape), int(np.prod(shape)), features))
    return shape
