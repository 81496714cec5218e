"""fcgpu.gradient_check on CuPy arrays without a GPU: a stand-in for CuPy's arrays
(tests/cupy_standin.py) that refuses NumPy operands as CuPy does."""
import sys

import numpy as np
import pytest

from cupy_standin import DeviceArray, fake_cupy
from fcgpu.gradient_check import eval_numerical_gradient_array


def _f(a):
    return a * a * 3.0


def test_array_gradient_moves_df_to_the_module_of_x(monkeypatch):
    """A CuPy ``x`` with a NumPy ``df`` (full, 0-d, or a Python scalar), and a NumPy
    ``x`` with a CuPy ``df``: the gradient of ``sum(f(x) * df)`` comes back in ``x``'s
    module, equal to the analytic one, and ``x`` is left as it was. Mutant: without
    ``df = to_backend(df, xp)`` (the code before) the stand-in raises CuPy's
    ``TypeError: Unsupported type <class 'numpy.ndarray'>`` for every NumPy ``df``,
    the 0-d one included, and for the NumPy ``x`` with the CuPy ``df``."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(DeviceArray))
    rng = np.random.default_rng(21)
    x_host = rng.standard_normal((3, 4))
    df_full = rng.standard_normal((3, 4))
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        x_host.view(DeviceArray) * np.asarray(2.0)  # the stand-in refuses as CuPy does
    for df in (df_full, np.asarray(2.5), 2.5):
        x = x_host.copy().view(DeviceArray)
        grad = eval_numerical_gradient_array(_f, x, df)
        assert isinstance(grad, DeviceArray)
        np.testing.assert_allclose(grad.get(), 6 * x_host * df, rtol=1e-6)
        np.testing.assert_array_equal(x.get(), x_host)
    x = x_host.copy()
    grad = eval_numerical_gradient_array(_f, x, df_full.copy().view(DeviceArray))
    assert type(grad) is np.ndarray
    np.testing.assert_allclose(grad, 6 * x_host * df_full, rtol=1e-6)
