"""Checks of training data, shared by the Solver and the ``.npz`` loader: each problem
is one line (:class:`fcgpu.errors.DataError`) naming the split and what is wrong.

Works on NumPy and CuPy arrays alike (large arrays are scanned in chunks, to bound the
memory a check uses).
"""
from __future__ import annotations

import numpy as np

from .backend import asnumpy, get_array_module
from .errors import DataError

__all__ = ["first_nonfinite_row", "check_finite", "check_split"]

_CHUNK = 1 << 22  # values per chunk of a scan


def first_nonfinite_row(X):
    """The index of the first row of ``X`` (N, ...) that holds NaN or inf, or None
    (always None for integer data)."""
    xp = get_array_module(X)
    if X.dtype.kind not in "fc":
        return None
    n = X.shape[0]
    rows = max(1, _CHUNK // max(1, int(np.prod(X.shape[1:]))))
    for start in range(0, n, rows):
        chunk = X[start:start + rows].reshape(min(rows, n - start), -1)
        ok = xp.isfinite(chunk).all(axis=1)
        if not bool(ok.all()):
            return start + int(asnumpy(xp.argmin(ok)))
    return None


def check_finite(X, name):
    """Raise :class:`DataError` ``NAME contains NaN or inf (first at row R)``."""
    bad = first_nonfinite_row(X)
    if bad is not None:
        raise DataError("%s contains NaN or inf (first at row %d)" % (name, bad))


def check_split(X, y, name, input_dim=None, num_classes=None, who="Solver"):
    """One split's ``X`` (N, ...) and ``y`` (N,) integer labels, checked for a model
    of ``input_dim`` features and ``num_classes`` classes (None: not checked).
    Returns ``y``, as int64 when it held whole floats."""
    if X is None or y is None:
        raise DataError("%s: data needs X_%s and y_%s" % (who, name, name))
    if X.ndim < 2:
        raise DataError("%s: X_%s must have a batch dimension and features, got shape %s"
                        % (who, name, X.shape))
    if y.ndim != 1:
        raise DataError("%s: y_%s must be 1-D labels, got shape %s" % (who, name, y.shape))
    if X.shape[0] != y.shape[0]:
        raise DataError("%s: X_%s has %d rows but y_%s has %d labels"
                        % (who, name, X.shape[0], name, y.shape[0]))
    if X.shape[0] == 0:
        raise DataError("%s: X_%s is empty" % (who, name))
    feat = int(np.prod(X.shape[1:]))
    if input_dim is not None and feat != input_dim:
        raise DataError("%s: X_%s has %d features per example (shape %s) but the model's "
                        "input_dim is %d" % (who, name, feat, X.shape, input_dim))
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and bool((y == np.floor(y)).all()):
            y = y.astype(np.int64)
        else:
            raise DataError("%s: y_%s must hold integer class labels, got dtype %s"
                            % (who, name, y.dtype))
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        raise DataError("%s: y_%s has labels in [%d, %d]; they must be in [0, %s)"
                        % (who, name, lo, hi, num_classes if num_classes is not None else "C"))
    check_finite(X, "%s: X_%s" % (who, name))
    return y
