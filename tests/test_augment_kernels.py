"""kernels/augment.cu without a GPU: the launcher (fcgpu.cuda.augment) against the
CuPy stand-in of tests/test_kernels_host.py, first checking only its launches (the
parameter list as nvcc compiled it, grid, block, null pointers), then running the
kernel itself compiled for the host (tests/host/kernel_emu.cpp) and comparing with
the reference bit for bit. The nvcc/NVRTC builds and the spill check (every
architecture) are in tests/test_kernels_nvcc.py, the emulator's kernel list in
tests/test_kernels_host.py, for every kernels/*.cu.
"""
from __future__ import annotations

import itertools
import mmap
import subprocess
import sys

import numpy as np
import pytest

import test_kernels_host as tkh
import toolchain as tc
from fcgpu import augment, augment_spec
from fcgpu.cuda import augment as cuda_augment
from gpu_util import bits_equal

# pointer arguments kernels/augment.cu's kernels accept as null, by name prefix: the
# gather's y, b_ptr, epoch_ptr, mean, yb; the mix's y, y2, b_ptr, epoch_ptr
NULLABLE = {"fcgpu_augment_gather<": {1, 3, 4, 5, 18}, "fcgpu_mix_pairs<": {1, 2, 5, 6}}


def allow_null_pointers(monkeypatch):
    """The CuPy stand-in's launch check (test_kernels_host) takes :data:`NULLABLE`'s
    null pointers for augment.cu's kernels."""
    allowed = tkh._null_allowed
    monkeypatch.setattr(tkh, "_null_allowed", lambda name, k, sig: allowed(name, k, sig) or any(
        name.startswith(prefix) and k in ks for prefix, ks in NULLABLE.items()))


@pytest.fixture
def augment_sigs(kernel_signatures, launch_bounds):
    """(parameter lists from the emulator's symbols, __launch_bounds__ from the PTX)."""
    return kernel_signatures, launch_bounds


def install_launcher(monkeypatch, sigs, bounds, emu=None):
    """fcgpu.cuda.augment on the CuPy stand-in: its launches checked against ``sigs``
    (and ``bounds``), and run by ``emu`` (the host-built kernels) when given. Returns
    ``(launch log, the stand-in)``."""
    log = []
    fake = tkh._make_fake_cupy()
    monkeypatch.setitem(__import__("sys").modules, "cupy", fake)
    monkeypatch.setattr(cuda_augment, "_cp", lambda: fake)
    monkeypatch.setattr(cuda_augment, "_TABLES", {})  # (no Beta table of another stand-in)
    allow_null_pointers(monkeypatch)

    def get_kernel(name):
        assert name in sigs, "no compiled kernel named %r" % name
        return tkh.FakeKernel(name, sigs[name], log, emu, fake.guards,
                              None if bounds is None else bounds[name])
    monkeypatch.setattr(cuda_augment, "get_kernel", get_kernel)
    return log, fake


@pytest.fixture
def fake_launch(augment_sigs, monkeypatch):
    return install_launcher(monkeypatch, *augment_sigs)


@pytest.fixture
def emu_augment(augment_sigs, monkeypatch, emu_lib):  # noqa: F811
    return install_launcher(monkeypatch, *augment_sigs, emu_lib)


def _dev(fake, a):
    out = fake.guards.empty(a.shape, a.dtype)
    out[...] = a
    return out


def test_launch_arguments(fake_launch):
    log, fake = fake_launch
    rng = np.random.default_rng(1)
    for in_dtype, out_dtype in itertools.product((np.uint8, np.float32, np.float64),
                                                 (np.float32, np.float64)):
        X = _dev(fake, rng.integers(0, 255, (12, 3 * 32 * 32)).astype(in_dtype))
        perm = _dev(fake, rng.permutation(12))
        y = _dev(fake, rng.integers(0, 10, 12))
        mean = _dev(fake, rng.random(3072).astype(out_dtype))
        log.clear()
        augment.augment_gather(X, y, perm, 1, 5, (3, 32, 32), "crop", 4, 3, 2, mean, out_dtype)
        augment.augment_gather(X, None, perm, _dev(fake, np.array([0], np.uint64)), 5,
                               (3, 32, 32), "flip", 4, 3, _dev(fake, np.array([7], np.uint64)))
        names = [entry[0] for entry in log]
        assert names == [cuda_augment.kernel_name(in_dtype, out_dtype),
                         cuda_augment.kernel_name(in_dtype, np.float32)]
        for _, grid, block in log:
            assert block == (256,) and grid == (3, 5)


def test_launch_errors(fake_launch):
    _, fake = fake_launch
    X = _dev(fake, np.zeros((6, 12), np.uint8))
    perm = _dev(fake, np.arange(6))
    with pytest.raises(ValueError, match="batch index b must be an integer or a contiguous uint64"):
        augment.augment_gather(X, None, perm, _dev(fake, np.zeros(1, np.int64)), 2, (3, 2, 2),
                               "none")
    with pytest.raises(ValueError, match="epoch must be an integer or"):
        augment.augment_gather(X, None, perm, 0, 2, (3, 2, 2), "none",
                               epoch=_dev(fake, np.zeros(1, np.float64)))
    with pytest.raises(ValueError, match="perm must be a CuPy array"):
        augment.augment_gather(X, None, np.arange(6), 0, 2, (3, 2, 2), "none")
    with pytest.raises(ValueError, match="out must be a C-contiguous"):
        augment.augment_gather(X, None, perm, 0, 2, (3, 2, 2), "none",
                               out=_dev(fake, np.zeros((2, 12), np.float64)))


# ----------------------------------------------------------------- the row-size limit
# kernels/augment.cu walks a row with `for (u32 e = e0; e < d; e += estride)`.

ROW_LIMIT = 2 ** 32 - 16384


def _row_loop_ends(d):
    """Whether every thread's row loop of the kernel ends for rows of ``d`` values,
    computed in uint32 as the kernel does: each thread's last index below ``d`` plus
    the stride must land at or past ``d``, not wrap below it."""
    estride = cuda_augment.grid_x(d) * cuda_augment.THREADS
    e0 = np.arange(min(estride, d), dtype=np.uint64)
    last = e0 + (np.uint64(d - 1) - e0) // np.uint64(estride) * np.uint64(estride)
    with np.errstate(over="ignore"):
        nxt = last.astype(np.uint32) + np.uint32(estride)  # wraps like the kernel's u32
    return bool(np.all(nxt.astype(np.uint64) >= d))


def _untouched(shape, dtype):
    """A contiguous stand-in device array whose pages are never touched (an anonymous
    mapping: a row of 2^32 values costs no memory until written)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, n * dtype.itemsize), dtype=dtype).reshape(shape) \
        .view(tkh.FakeArray)


def test_row_size_guard_is_the_kernels_loop_bound():
    """check_row_size accepts a row size exactly when the kernel's u32 row loop ends
    (modelled in uint32 above), at the boundary 2^32 - 16384 and around it. Mutants
    that fail here: the old guard ``d >= 2**32`` (accepts 2^32 - 16383, whose loop
    wraps), and ``>=`` for ``>`` in check_row_size (refuses the limit itself)."""
    assert cuda_augment.MAX_ROW_VALUES == ROW_LIMIT
    sizes = [1, 1023, 1024, 65536, 2 ** 24 + 1, 2 ** 31, ROW_LIMIT - 1, ROW_LIMIT,
             ROW_LIMIT + 1, ROW_LIMIT + 4096, 2 ** 32 - 1, 2 ** 32]
    for d in sizes:
        ends = _row_loop_ends(d)
        assert ends == (d <= ROW_LIMIT), d
        if ends:
            cuda_augment.check_row_size(d)
        else:
            with pytest.raises(ValueError):
                cuda_augment.check_row_size(d)


def test_row_size_limit_through_the_launcher(monkeypatch):
    """augment_gather launches a row of exactly 2^32 - 16384 values, with a grid whose
    last index plus stride is 2^32 - 1 (the largest u32), and refuses one value more
    with a one-line error before touching the arrays. Mutants: the old guard
    (``d >= 2**32``) launches the second; ``>=`` in check_row_size refuses the first."""
    fake = tkh._make_fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda_augment, "_cp", lambda: fake)
    launches = []
    monkeypatch.setattr(cuda_augment, "get_kernel",
                        lambda name: lambda grid, block, args: launches.append((grid, block)))
    perm = tkh._fake(np.zeros(1, np.int64))
    X = _untouched((1, ROW_LIMIT), np.uint8)
    out = _untouched((1, ROW_LIMIT), np.float32)
    augment.augment_gather(X, None, perm, 0, 1, (262143, 128, 128), "none", out=out)
    [(grid, block)] = launches
    assert ROW_LIMIT - 1 + grid[0] * block[0] == 2 ** 32 - 1
    X = tkh._fake(np.zeros((1, 1), np.uint8))
    X = np.lib.stride_tricks.as_strided(X, (1, ROW_LIMIT + 1), (0, 0)).view(tkh.FakeArray)
    with pytest.raises(ValueError) as err:
        augment.augment_gather(X, None, perm, 0, 1, (11, 5923, 65921), "none")
    msg = str(err.value)
    assert msg == ("augment: images of 4294950913 values are too large: the kernel walks a "
                   "row with a 32-bit index, so at most 4294950912 values (2^32 - 16384)")
    assert len(launches) == 1


@pytest.mark.parametrize("in_dtype", [np.uint8, np.float32, np.float64])
def test_emulated_kernel_bit_identical_to_reference(emu_augment, in_dtype):
    log, fake = emu_augment
    rng = np.random.default_rng(17)
    for shape in [(3, 7, 5), (2, 6, 9)]:
        n = 40
        d = int(np.prod(shape))
        if in_dtype == np.uint8:
            X = rng.integers(0, 256, (n, d)).astype(np.uint8)
        else:
            X = (rng.standard_normal((n, d)) * 50).astype(in_dtype)
            X[0, :4] = [-0.0, np.finfo(in_dtype).tiny / 5, np.inf, 1e30]
        y = rng.integers(0, 10, n)
        perm = rng.permutation(n)
        Xd, yd, pd = _dev(fake, X), _dev(fake, y), _dev(fake, perm)
        for out_dtype, B, pad, mode, with_mean in itertools.product(
                (np.float32, np.float64), (1, 7, 33), (0, 1, 4), ("none", "flip", "crop"),
                (False, True)):
            b = int(rng.integers(0, n // B))
            seed, epoch = int(rng.integers(0, 2 ** 64, dtype=np.uint64)), int(rng.integers(0, 99))
            mean = rng.uniform(0, 255, d) if with_mean else None
            want, ywant = augment_spec.augment_gather_reference(
                X, y, perm, b, B, shape, mode, pad, seed, epoch, mean, out_dtype)
            md = None if mean is None else _dev(fake, mean.astype(out_dtype))
            got, yb = augment.augment_gather(Xd, yd, pd, b, B, shape, mode, pad, seed, epoch, md,
                                             out_dtype)
            assert bits_equal(np.asarray(got).view(np.ndarray), want), (shape, B, pad, mode)
            assert np.array_equal(np.asarray(yb), ywant)
            # b and epoch from "device memory", into given buffers
            out = fake.guards.empty(want.shape, want.dtype)
            y_out = fake.guards.empty((B,), np.int64)
            augment.augment_gather(Xd, yd, pd, _dev(fake, np.array([b], np.uint64)), B, shape,
                                   mode, pad, seed, _dev(fake, np.array([epoch], np.uint64)),
                                   md, out_dtype, out, y_out)
            assert bits_equal(np.asarray(out).view(np.ndarray), want)
            assert np.array_equal(np.asarray(y_out), ywant)


def test_emulated_kernel_skips_rows_past_the_permutation(emu_augment):
    """A device batch index past the permutation leaves those rows untouched (as
    fcgpu_gather_rows does), and rows whose source is out of range too."""
    _, fake = emu_augment
    X = _dev(fake, np.full((4, 12), 7, np.uint8))
    perm = _dev(fake, np.array([0, 1, 2, 9]))
    out = fake.guards.empty((2, 12), np.float32)
    out[...] = -1
    augment.augment_gather(X, None, perm, _dev(fake, np.array([1], np.uint64)), 2, (3, 2, 2),
                           "none", out=out)
    assert np.all(np.asarray(out)[0] == 7) and np.all(np.asarray(out)[1] == -1)
    out[...] = -1
    augment.augment_gather(X, None, perm, _dev(fake, np.array([2], np.uint64)), 2, (3, 2, 2),
                           "none", out=out)
    assert np.all(np.asarray(out) == -1)


def test_emulated_kernel_stops_at_the_end_of_the_permutation(emu_augment):
    """A row whose position b*B + r is exactly the permutation's length is skipped:
    the kernel reads no perm[nperm]. Here perm is the first 4 entries of a longer
    device array whose fifth is a valid row (3), so a kernel that read one past the end
    would gather that row. Mutant that fails here: ``pos >= nperm`` moved by one
    (``pos > nperm``) in kernels/augment.cu (the test above cannot see it: the stand-in's
    canary after perm is no valid row, so the stray read is skipped as out of range)."""
    _, fake = emu_augment
    X = _dev(fake, np.arange(4 * 12, dtype=np.uint8).reshape(4, 12))
    backing = _dev(fake, np.array([2, 0, 1, 2, 3, 3], np.int64))
    perm = backing[:4]
    assert perm.flags.c_contiguous and perm.size == 4
    Xh = np.asarray(X).view(np.ndarray).astype(np.float32)
    untouched = np.full((2, 12), -1, np.float32)
    # batch 1: positions 2 and 3, rows perm[2] = 1 and perm[3] = 2; batch 2: positions
    # 4 (= nperm) and 5, none
    for b, want in ((1, Xh[[1, 2]]), (2, untouched)):
        out = fake.guards.empty((2, 12), np.float32)
        out[...] = -1
        augment.augment_gather(X, None, perm, _dev(fake, np.array([b], np.uint64)), 2,
                               (3, 2, 2), "none", out=out)
        assert np.array_equal(np.asarray(out).view(np.ndarray), want), b


def test_ptx_keeps_subnormals_under_ftz():
    """CuPy compiles with -ftz=true; the kernel's float arithmetic must not flush
    (its conversions and subtraction are written in PTX without .ftz)."""
    if tc.NVCC is None:
        tc.unavailable("nvcc not found on PATH (CUDA toolkit absent)")
    res = subprocess.run([tc.NVCC, "-arch=sm_90", "-std=c++17", "-I%s" % tc.KERNELS,
                          "-ftz=true", "--ptx", str(tc.KERNELS / "augment.cu"), "-o", "-"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    float_ops = [line.split()[0] for line in res.stdout.splitlines()
                 if line.strip().startswith(("sub.", "cvt.", "add.", "mul.", "fma."))
                 and ".f32" in line]
    assert float_ops, "no float instructions found in the PTX"
    assert not [op for op in float_ops if ".ftz" in op], float_ops
