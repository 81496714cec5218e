"""Stand-ins for CuPy arrays that refuse what CuPy refuses (CuPy v14.2.0 source), for
tests of host-side helpers that must accept CuPy arrays, on machines without a GPU.

* :class:`NoImplicitHostArray`: ``__array__`` raises CuPy's TypeError
  (``cupy/_core/core.pyx:1803-1809``), so ``np.asarray(a)`` fails; ``a.get()`` is the
  explicit copy to the host. Not a NumPy subclass: NumPy never calls ``__array__`` on
  its own subclasses, so only a separate class can refuse ``np.asarray``.
* :class:`DeviceArray`: a NumPy subclass whose ufuncs refuse plain NumPy arrays as
  operands, 0-d ones included (``core.pyx:1580-1586`` sends ``cupy * numpy`` through
  ``numpy.multiply`` to ``__array_ufunc__``, ``core.pyx:2002-2024`` passes NumPy arrays
  on to CuPy's ufunc, whose argument wrapper accepts only CuPy arrays and scalars:
  ``_kernel.pyx:147-156``, ``_scalar.pyx:329-344`` raise
  ``TypeError: Unsupported type <class 'numpy.ndarray'>``). Python and NumPy scalars
  are accepted, as CuPy accepts them.

:func:`fake_cupy` makes a ``cupy`` module around either class; install it with
``monkeypatch.setitem(sys.modules, "cupy", ...)`` so that :mod:`fcgpu.backend` takes
these arrays for CuPy's.
"""
from __future__ import annotations

import types

import numpy as np

IMPLICIT_MESSAGE = ("Implicit conversion to a NumPy array is not allowed. "
                    "Please use `.get()` to construct a NumPy array explicitly.")


class NoImplicitHostArray:
    """A device array as far as ``np.asarray`` can tell: it refuses to convert."""

    def __init__(self, values):
        self._values = np.array(values)

    shape = property(lambda self: self._values.shape)
    ndim = property(lambda self: self._values.ndim)
    dtype = property(lambda self: self._values.dtype)
    size = property(lambda self: self._values.size)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_MESSAGE)

    def __len__(self):
        return len(self._values)

    def get(self, stream=None):
        return self._values.copy()


def _device(a):
    if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray):
        return a.view(DeviceArray)
    if isinstance(a, np.generic):  # a reduction to one value: CuPy gives a 0-d array
        return np.asarray(a).view(DeviceArray)
    return a


class DeviceArray(np.ndarray):
    """A NumPy array that takes part in ufuncs only with its own kind and scalars."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out", ())
        for x in inputs + tuple(out):
            if isinstance(x, np.ndarray) and not isinstance(x, DeviceArray):
                raise TypeError("Unsupported type %s" % type(x))
        host = [x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs]
        if out:
            kwargs["out"] = tuple(x.view(np.ndarray) for x in out)
        res = getattr(ufunc, method)(*host, **kwargs)
        if isinstance(res, tuple):
            return tuple(_device(r) for r in res)
        return _device(res)

    def get(self, stream=None):
        return np.array(self.view(np.ndarray))


def fake_cupy(array_class):
    """A ``cupy`` module whose ``ndarray`` is ``array_class``."""
    mod = types.ModuleType("cupy")
    mod.ndarray = array_class
    if array_class is DeviceArray:
        mod.asarray = lambda a, dtype=None: _device(np.array(a, dtype=dtype))
        mod.zeros_like = lambda a, dtype=None: _device(np.zeros_like(np.asarray(a), dtype=dtype))
    mod.asnumpy = lambda a: a.get() if isinstance(a, array_class) else np.asarray(a)
    return mod
