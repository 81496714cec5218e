"""Numerical gradients by centered differences, for NumPy or CuPy arrays."""
from __future__ import annotations

from .backend import get_array_module, to_backend

__all__ = ["eval_numerical_gradient", "eval_numerical_gradient_array",
           "grad_check_sparse", "rel_error"]


def _indices(shape):
    import numpy as np
    return np.ndindex(*shape)


def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Gradient of the scalar function ``f`` at ``x`` (modified in place, restored)."""
    xp = get_array_module(x)
    grad = xp.zeros_like(x)
    for ix in _indices(x.shape):
        old = x[ix].copy() if hasattr(x[ix], "copy") else x[ix]
        x[ix] = old + h
        fxph = float(f(x))
        x[ix] = old - h
        fxmh = float(f(x))
        x[ix] = old
        grad[ix] = (fxph - fxmh) / (2 * h)
        if verbose:
            print(ix, float(grad[ix]))
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Numerical ``sum(f(x) * df)`` gradient for an array-valued ``f``. ``df`` is
    moved to ``x``'s array module first: CuPy refuses NumPy operands, even 0-d ones."""
    xp = get_array_module(x)
    # (a NumPy array in a CuPy ufunc raises TypeError 'Unsupported type': CuPy's
    # __array_ufunc__ passes it on, cupy/_core/core.pyx:2002-2024, and the kernel's
    # argument wrapper takes only CuPy arrays and scalars, _kernel.pyx:147-156 and
    # _scalar.pyx:329-344, in CuPy v14.2.0)
    df = to_backend(df, xp)
    grad = xp.zeros_like(x)
    for ix in _indices(x.shape):
        old = x[ix].copy() if hasattr(x[ix], "copy") else x[ix]
        x[ix] = old + h
        pos = f(x).copy()
        x[ix] = old - h
        neg = f(x).copy()
        x[ix] = old
        grad[ix] = ((pos - neg) * df).sum() / (2 * h)
    return grad


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5, seed=None):
    """Compare ``analytic_grad`` with centered differences at random entries; returns
    the relative errors."""
    import numpy as np
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(num_checks):
        ix = tuple(int(rng.integers(m)) for m in x.shape)
        old = float(x[ix])
        x[ix] = old + h
        fxph = float(f(x))
        x[ix] = old - h
        fxmh = float(f(x))
        x[ix] = old
        num = (fxph - fxmh) / (2 * h)
        ana = float(analytic_grad[ix])
        err = abs(num - ana) / max(abs(num) + abs(ana), 1e-300)
        errors.append(err)
        print("numerical: %f analytic: %f, relative error: %e" % (num, ana, err))
    return errors


def rel_error(x, y):
    """Max of ``|x - y| / max(1e-8, |x| + |y|)``, as a float."""
    xp = get_array_module(x, y)
    x = xp.asarray(x)
    y = xp.asarray(y)
    return float(xp.max(xp.abs(x - y) / xp.maximum(1e-8, xp.abs(x) + xp.abs(y))))
