"""kernels/augment.cu's fcgpu_mix_pairs (MixUp, CutMix) without a GPU: the launcher
(fcgpu.cuda.augment.mix_batch) against the CuPy stand-in of tests/test_kernels_host.py,
its launches checked against the parameter list nvcc compiled, then the kernel itself
built for the host (tests/host/kernel_emu.cpp) against the reference bit for bit, the
batch index and epoch given by value and from "device memory". nvcc's builds and the
spill check of every architecture: tests/test_kernels_nvcc.py (every kernels/*.cu).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fcgpu import augment, mix_spec
from fcgpu.cuda import augment as cuda_augment
from gpu_util import bits_equal
from test_augment_kernels import install_launcher


@pytest.fixture
def emu_mix(kernel_signatures, launch_bounds, emu_lib, monkeypatch):
    return install_launcher(monkeypatch, kernel_signatures, launch_bounds, emu_lib)


def _dev(fake, a):
    out = fake.guards.empty(a.shape, a.dtype)
    out[...] = a
    return out


def _batch(rng, B, d, dtype):
    X = (rng.standard_normal((B, d)) * 50).astype(dtype)
    tiny = np.finfo(dtype).tiny
    X.reshape(-1)[:4] = [-0.0, tiny / 5, -tiny / 3, 3e38]   # (subnormals kept: no .ftz)
    return X


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_kernel_bit_identical_to_reference(emu_mix, rng, dtype):
    """Odd and even batches (1: a row that is its own partner; 33 pairs across more
    than one block row), both modes, alphas from 0.05 to 100: the kernel's batch, partner
    labels and weights equal the reference's bits, by value and with b and epoch read
    from device memory into given buffers. Mutants that fail here: the kernel's second
    row mixed as w1p * a + w2p * v; CutMix's in_box with i <= y2; lam without the
    interpolation's step (table[k] - lo for table[k + 1] - lo); y2[p] = y[p]."""
    log, fake = emu_mix
    for shape, B, mode, alpha in itertools.product([(3, 7, 5), (2, 6, 9)], (1, 2, 7, 33),
                                                   ("mixup", "cutmix"), (0.05, 0.7, 100.0)):
        d = int(np.prod(shape))
        X = _batch(rng, B, d, dtype)
        y = rng.integers(0, 10, B)
        b, seed, epoch = int(rng.integers(0, 99)), int(rng.integers(0, 2 ** 64, dtype=np.uint64)), \
            int(rng.integers(0, 99))
        want, y2w, lamw = mix_spec.mix_batch_reference(X, y, b, shape, mode, alpha, seed, epoch)
        Xd, yd = _dev(fake, X), _dev(fake, y)
        got, y2, lam = augment.mix_batch(Xd, yd, b, shape, mode, alpha, seed, epoch)
        assert got is Xd and bits_equal(np.asarray(Xd).view(np.ndarray), want), \
            (shape, B, mode, alpha)
        assert np.array_equal(np.asarray(y2), y2w) and bits_equal(np.asarray(lam).view(
            np.ndarray), lamw)
        Xd = _dev(fake, X)
        y2_out, lam_out = fake.guards.empty((B,), np.int64), fake.guards.empty((B,), dtype)
        augment.mix_batch(Xd, yd, _dev(fake, np.array([b], np.uint64)), shape, mode, alpha,
                          seed, _dev(fake, np.array([epoch], np.uint64)), y2_out, lam_out)
        assert bits_equal(np.asarray(Xd).view(np.ndarray), want)
        assert np.array_equal(np.asarray(y2_out), y2w)
        assert bits_equal(np.asarray(lam_out).view(np.ndarray), lamw)
    names = {entry[0] for entry in log}
    assert names == {cuda_augment.mix_kernel_name(dtype)}


def test_emulated_kernel_without_labels(emu_mix, rng):
    """No labels: y and y2 null; the batch and the weights are still the reference's."""
    _, fake = emu_mix
    X = _batch(rng, 6, 60, np.float32)
    want, _, lamw = mix_spec.mix_batch_reference(X, None, 2, (3, 4, 5), "cutmix", 1.0, 4, 5)
    Xd = _dev(fake, X)
    got, y2, lam = augment.mix_batch(Xd, None, 2, (3, 4, 5), "cutmix", 1.0, 4, 5)
    assert y2 is None and bits_equal(np.asarray(Xd).view(np.ndarray), want)
    assert bits_equal(np.asarray(lam).view(np.ndarray), lamw)


def test_launch_shape_and_table_upload(kernel_signatures, monkeypatch):
    """One launch per mix: 256 threads, grid (row blocks, pairs); the Beta table goes to
    the device once per alpha (device_table) and is reused; mode 'none' launches nothing;
    a NumPy batch is refused on the CUDA path."""
    log, fake = install_launcher(monkeypatch, kernel_signatures, None)
    X = _dev(fake, np.zeros((7, 3 * 32 * 32), np.float32))
    augment.mix_batch(X, None, 0, (3, 32, 32), "mixup", 0.4)
    augment.mix_batch(X, None, 1, (3, 32, 32), "cutmix", 0.4)
    augment.mix_batch(X, None, 1, (3, 32, 32), "none", 0.4)
    assert [(g, b) for _, g, b in log] == [((3, 4), (256,)), ((3, 4), (256,))]
    assert list(cuda_augment._TABLES) == [(0.4, 0)]
    table = cuda_augment.device_table(0.4)
    assert table is cuda_augment._TABLES[(0.4, 0)]
    assert bits_equal(np.asarray(table).view(np.ndarray), mix_spec.mix_table(0.4))
    with pytest.raises(ValueError, match="C-contiguous CuPy array"):
        cuda_augment.mix_batch(np.zeros((2, 12), np.float32), None, 0, (3, 2, 2))


def test_mix_constants_equal_the_kernels():
    """MixMode, the mixing blocks' top bit and the table's fraction bits are the same
    numbers in kernels/augment.cu and in fcgpu.mix_spec / fcgpu.beta_table."""
    import re
    from pathlib import Path

    from fcgpu import beta_table
    from test_kernel_enums import read_enum
    text = (Path(__file__).resolve().parent.parent / "kernels" / "augment.cu").read_text()
    assert read_enum(text, "MixMode") == {"MIX_" + k.upper(): v
                                          for k, v in mix_spec.MIX_CODES.items()}
    m = re.search(r"MIX_BLOCK_BASE\s*=\s*(0x[0-9a-fA-F]+)ull", text)
    assert m and int(m.group(1), 16) == mix_spec.MIX_BLOCK_BASE
    m = re.search(r"MIX_FRAC_BITS\s*=\s*(\d+);", text)
    assert m and int(m.group(1)) == 32 - beta_table.TABLE_BITS
