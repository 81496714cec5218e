"""The dispatch point's switches: :func:`fcgpu.fused.force_impl` (a context manager that
picks the implementation of the fused steps for a block) and
:func:`fcgpu.fused.use_compiled_cpu` (the process-wide default for NumPy arrays)."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from fcgpu import augment, fused, fused_optim
from fcgpu.cpu import ops as cpu_ops
from fcgpu.fused_ref import reference


@pytest.fixture
def default_compiled():
    old = fused.use_compiled_cpu()
    fused.use_compiled_cpu(True)
    yield
    fused.use_compiled_cpu(old)


def test_force_impl_picks_the_block_implementation(default_compiled):
    x = np.ones((2, 3), np.float32)
    assert fused.impl_for(x) is cpu_ops and fused.forced_impl() is None
    with fused.force_impl("reference") as name:
        assert name == "reference" and fused.forced_impl() == "reference"
        assert fused.impl_for(x) is reference
        assert not fused.use_compiled_cpu() and not fused.folds_bias(x)
        with fused.force_impl("numba"):  # the innermost block wins
            assert fused.impl_for(x) is cpu_ops and fused.use_compiled_cpu()
        assert fused.impl_for(x) is reference
    assert fused.impl_for(x) is cpu_ops and fused.forced_impl() is None


def test_force_impl_overrides_use_compiled_cpu_and_leaves_it_alone(default_compiled):
    x = np.ones(4, np.float32)
    fused.use_compiled_cpu(False)
    assert fused.impl_for(x) is reference
    with fused.force_impl("numba"):
        assert fused.impl_for(x) is cpu_ops
        # setting the default inside a block changes the default, not the block
        fused.use_compiled_cpu(False)
        assert fused.use_compiled_cpu() and fused.impl_for(x) is cpu_ops
    assert not fused.use_compiled_cpu() and fused.impl_for(x) is reference


def test_force_impl_is_undone_when_the_block_raises(default_compiled):
    with pytest.raises(KeyError):
        with fused.force_impl("reference"):
            raise KeyError("boom")
    assert fused.forced_impl() is None and fused.impl_for(np.ones(1)) is cpu_ops


def test_force_impl_refuses_unknown_names_and_arrays_it_cannot_take():
    with pytest.raises(ValueError, match="unknown implementation 'numpy'"):
        with fused.force_impl("numpy"):
            pass
    x = np.ones(3)
    with fused.force_impl("cuda"):
        with pytest.raises(TypeError, match="force_impl\\('cuda'\\) cannot take"):
            fused.relu_dropout_forward(x, 0.5, 1, 2)
        with pytest.raises(TypeError, match="cannot make a mask"):
            fused.dropout_mask((3,), 0.5, 1, 2)


def test_force_impl_takes_cupy_arrays(monkeypatch):
    """'reference' takes CuPy arrays too (the unfused GPU variant); 'numba' refuses them."""
    from cupy_standin import DeviceArray, fake_cupy
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(DeviceArray))
    x = np.ones(4, np.float32).view(DeviceArray)
    with fused.force_impl("reference"):
        assert fused.impl_for(x) is reference
    with fused.force_impl("numba"):
        with pytest.raises(TypeError, match="force_impl\\('numba'\\) cannot take"):
            fused.impl_for(x)
    from fcgpu.cuda import ops as cuda_ops
    with fused.force_impl("cuda"):
        assert fused.impl_for(x) is cuda_ops


def test_force_impl_is_local_to_its_thread(default_compiled):
    seen = []
    with fused.force_impl("reference"):
        t = threading.Thread(target=lambda: seen.append(fused.impl_for(np.ones(1))))
        t.start()
        t.join()
    assert seen == [cpu_ops]


def test_forced_steps_give_the_implementations_results(rng, default_compiled):
    """Under each block the public steps run that implementation (same bits here: ReLU
    and dropout are exact steps), the keep mask and Adam and the gather follow."""
    x = rng.standard_normal((37, 21)).astype(np.float32)
    outs = {}
    for name in ("reference", "numba"):
        with fused.force_impl(name):
            outs[name] = (fused.relu_dropout_forward(x, 0.7, 11, 3),
                          fused.dropout_mask(x.shape, 0.7, 11, 3))
            assert (augment.impl_for(np.zeros((2, 3), np.uint8)) is augment._reference) \
                == (name == "reference")
            calls = []
            real = cpu_ops.adam_step
            try:
                cpu_ops.adam_step = lambda *a: calls.append(1) or real(*a)
                w = rng.standard_normal(5).astype(np.float32)
                fused_optim.adam_step(w, w.copy(), np.zeros_like(w), np.zeros_like(w),
                                      1e-3, 0.9, 0.999, 1e-8, 1)
            finally:
                cpu_ops.adam_step = real
            assert bool(calls) == (name == "numba")
    for a, b in zip(outs["reference"], outs["numba"]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
