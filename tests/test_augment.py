"""The augmenting minibatch gather (fcgpu.augment): the reference against a plain
per-sample loop, the Numba pass and the CUDA kernel against the reference (bit for
bit), the statistics of the draws, the stream layout and the argument checks.

The CUDA kernel also runs on the CPU (tests/test_augment_kernels.py, through the
kernel emulation of tests/host/).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fcgpu import augment, augment_spec, fused
from fcgpu import random as frandom
from fcgpu.cpu import augment as cpu_augment
from gpu_util import bits_equal, cupy, requires_gpu

MODES = ("none", "flip", "crop")
SHAPES = [(3, 7, 5), (2, 6, 9)]     # H != W, so a swapped axis shows
MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------- an independent loop

def _draw(seed, epoch, q, mode, pad):
    """One position's (flip, dx, dy), Python integers, from the Philox reference."""
    stream = 2 ** 63 + epoch
    counter = np.array([q & MASK32, q >> 32, stream & MASK32, stream >> 32], dtype=np.uint32)
    key = np.array([seed & MASK32, seed >> 32], dtype=np.uint32)
    r0, r1, r2, _ = (int(v) for v in frandom.philox4x32_10(counter, key))
    if mode == "none":
        return 0, pad, pad
    flip = r0 >> 31
    if mode == "flip":
        return flip, pad, pad
    return flip, (r1 * (2 * pad + 1)) >> 32, (r2 * (2 * pad + 1)) >> 32


def naive_gather(X, y, perm, b, B, shape, mode, pad, seed, epoch, mean, out_dtype):
    """The spec written the long way: np.pad, a slice, a mirror, per sample."""
    C, H, W = shape
    T = np.dtype(out_dtype)
    imgs = X.reshape(len(X), C, H, W)
    m = None if mean is None else np.asarray(mean).reshape(C, H, W).astype(T)
    out = np.empty((B, C * H * W), dtype=T)
    for r in range(B):
        q = b * B + r
        flip, dx, dy = _draw(seed, epoch, q, mode, pad)
        img = imgs[perm[q]]
        padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
        real = np.pad(np.ones((H, W), bool), pad, constant_values=False)
        crop, inside = padded[:, dy:dy + H, dx:dx + W], real[dy:dy + H, dx:dx + W]
        if flip:
            crop, inside = crop[:, :, ::-1], inside[:, ::-1]
        val = crop.astype(T)
        if m is not None:
            val = val - m
        out[r] = np.where(inside, val, T.type(0)).reshape(-1)
    yb = None if y is None else y[perm[b * B:(b + 1) * B]].astype(np.int64)
    return out, yb


def _images(rng, n, shape, dtype, specials=False):
    d = math.prod(shape)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, (n, d)).astype(np.uint8)
    X = (rng.standard_normal((n, d)) * 60).astype(dtype)
    if specials:  # signed zeros, subnormals, huge values, infinities: rounded the same way
        tiny = np.finfo(dtype).tiny
        vals = np.array([0.0, -0.0, tiny / 3, -tiny / 7, 3e38, -np.inf, np.inf], dtype=dtype)
        X.reshape(-1)[rng.choice(X.size, 3 * vals.size, replace=False)] = np.tile(vals, 3)
    return X


def _mean(rng, shape, kind):
    if kind == "none":
        return None
    m = rng.uniform(0, 255, math.prod(shape))
    if kind == "image":
        return m.reshape(shape)
    return m.astype(np.float32)   # (D,), float32: converted to the output dtype


# ----------------------------------------------------------------- the reference

@pytest.mark.parametrize("in_dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
def test_reference_matches_per_sample_loop(rng, in_dtype, out_dtype):
    for shape, mode, pad, mean_kind in itertools.product(SHAPES, MODES, (0, 1, 4),
                                                         ("none", "flat", "image")):
        n, B = 23, 5
        X = _images(rng, n, shape, in_dtype)
        y = rng.integers(0, 10, n)
        perm = rng.permutation(n)
        b, seed, epoch = int(rng.integers(0, 4)), int(rng.integers(0, 2 ** 64, dtype=np.uint64)), \
            int(rng.integers(0, 50))
        mean = _mean(rng, shape, mean_kind)
        got, yb = augment_spec.augment_gather_reference(X, y, perm, b, B, shape, mode, pad, seed,
                                                        epoch, mean, out_dtype)
        want, ywant = naive_gather(X, y, perm, b, B, shape, mode, pad, seed, epoch, mean,
                                   out_dtype)
        assert bits_equal(got, want), (shape, mode, pad, mean_kind)
        assert np.array_equal(yb, ywant) and yb.dtype == np.int64


def test_reference_images_4d_and_no_labels(rng):
    shape = (3, 8, 8)
    X = _images(rng, 10, shape, np.uint8)
    perm = rng.permutation(10)
    a, ya = augment_spec.augment_gather_reference(X.reshape(10, *shape), None, perm, 1, 4, shape,
                                                  "crop", 2, 7, 1)
    b, _ = augment_spec.augment_gather_reference(X, np.zeros(10, int), perm, 1, 4, shape,
                                                 "crop", 2, 7, 1)
    assert ya is None and bits_equal(a, b) and a.dtype == np.float32


def test_padding_is_zero_after_the_mean_and_pad0_crop_is_flip(rng):
    shape = (3, 6, 6)
    X = _images(rng, 64, shape, np.uint8) | np.uint8(1)   # no pixel equals 0 ...
    mean = np.full(math.prod(shape), 0.5)                 # ... nor the mean
    perm = np.arange(64)
    out, _ = augment.augment_gather(X, None, perm, 0, 64, shape, "crop", 3, 11, 0, mean)
    flip, dx, dy = augment_spec.draws_reference(np.arange(64, dtype=np.uint64), 11, 0, "crop", 3)
    imgs = out.reshape(64, *shape)
    j = np.arange(6)
    for r in range(64):
        jj = 5 - j if flip[r] else j
        inside = ((np.arange(6) + dy[r] - 3) % 100 < 6)[:, None] & ((jj + dx[r] - 3) % 100 < 6)
        assert np.array_equal(imgs[r] != 0, np.broadcast_to(inside, shape)), r
    assert np.any(dx != 3) and np.any(flip == 1)
    a, _ = augment.augment_gather(X, None, perm, 0, 64, shape, "crop", 0, 5, 2, mean)
    b, _ = augment.augment_gather(X, None, perm, 0, 64, shape, "flip", 0, 5, 2, mean)
    assert bits_equal(a, b)


def test_none_is_the_plain_gather(rng):
    shape = (3, 4, 5)
    X = _images(rng, 30, shape, np.float64)
    perm = rng.permutation(30)
    mean = rng.standard_normal(60)
    out, _ = augment.augment_gather(X, None, perm, 2, 9, shape, "none", 4, 1, 1, mean,
                                    np.float64)
    assert bits_equal(out, X[perm[18:27]] - mean)
    out, _ = augment.augment_gather(X, None, perm, 2, 9, shape, "none", 4, 1, 1, None,
                                    np.float32)
    assert bits_equal(out, X[perm[18:27]].astype(np.float32))


def test_a_draw_belongs_to_the_position(rng):
    """(seed, epoch, position) fixes the crop, whatever the batch size splitting."""
    shape = (3, 8, 8)
    X = _images(rng, 40, shape, np.uint8)
    perm = rng.permutation(40)
    whole, _ = augment.augment_gather(X, None, perm, 0, 14, shape, "crop", 4, 9, 3)
    second, _ = augment.augment_gather(X, None, perm, 1, 7, shape, "crop", 4, 9, 3)
    assert bits_equal(whole[7:], second)
    other_epoch, _ = augment.augment_gather(X, None, perm, 1, 7, shape, "crop", 4, 9, 4)
    other_seed, _ = augment.augment_gather(X, None, perm, 1, 7, shape, "crop", 4, 10, 3)
    assert not np.array_equal(second, other_epoch) and not np.array_equal(second, other_seed)


# ----------------------------------------------------------------- the Numba pass

@pytest.mark.parametrize("in_dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
def test_compiled_cpu_bit_identical_to_reference(rng, in_dtype, out_dtype):
    """Odd batch sizes, every pad and mode, mean or none: the same bits. Float inputs
    carry signed zeros, subnormals and infinities: one conversion and one subtraction
    per pixel are exact IEEE operations on both sides, so equality is the right test."""
    for shape in SHAPES + [(3, 32, 32)]:
        n = 80
        X = _images(rng, n, shape, in_dtype, specials=True)
        y = rng.integers(0, 10, n).astype(np.int32)
        perm = rng.permutation(n)
        for B, pad, mode, mean_kind in itertools.product((1, 7, 33), (0, 1, 4), MODES,
                                                         ("none", "flat")):
            b = int(rng.integers(0, n // B))
            seed, epoch = int(rng.integers(0, 2 ** 63)), int(rng.integers(0, 1000))
            mean = _mean(rng, shape, mean_kind)
            args = (X, y, perm, b, B, shape, mode, pad, seed, epoch, mean, out_dtype)
            got, yb = cpu_augment.augment_gather(*args)
            want, ywant = augment_spec.augment_gather_reference(*args)
            assert bits_equal(got, want), (shape, B, pad, mode, mean_kind)
            assert np.array_equal(yb, ywant) and yb.dtype == np.int64


@pytest.mark.parametrize("shape", [(2, 40, 32), (1, 33, 32)])
def test_compiled_cpu_width_32_images_of_other_heights(rng, shape):
    """The Numba pass specializes images 32 wide (CIFAR's width as a constant): images
    32 wide but not 32 high give the reference's bits. Mutant that fails here and
    nowhere else: the W == 32 branch of ``_augment_rows`` passing H = 32 (every
    shape the other tests use is either 32 x 32 or not 32 wide)."""
    n = 12
    X = _images(rng, n, shape, np.uint8)
    perm = rng.permutation(n)
    for mode, pad in (("crop", 4), ("flip", 0), ("none", 0)):
        seed, epoch = int(rng.integers(0, 2 ** 63)), int(rng.integers(0, 1000))
        mean = _mean(rng, shape, "flat")
        args = (X, None, perm, 1, 5, shape, mode, pad, seed, epoch, mean, np.float32)
        got, _ = cpu_augment.augment_gather(*args)
        want, _ = augment_spec.augment_gather_reference(*args)
        assert bits_equal(got, want), (shape, mode)


def test_compiled_cpu_writes_given_buffers(rng):
    shape = (3, 7, 5)
    X = _images(rng, 20, shape, np.uint8)
    y = rng.integers(0, 10, 20)
    perm = rng.permutation(20)
    out = np.full((6, 105), np.nan, np.float32)
    y_out = np.full(6, -1, np.int64)
    Xb, yb = augment.augment_gather(X, y, perm, 1, 6, shape, "crop", 2, 3, 4, None,
                                    np.float32, out, y_out)
    assert Xb is out and yb is y_out
    want, ywant = augment_spec.augment_gather_reference(X, y, perm, 1, 6, shape, "crop", 2, 3, 4)
    assert bits_equal(out, want) and np.array_equal(y_out, ywant)
    with pytest.raises(ValueError, match="out must be"):
        augment.augment_gather(X, y, perm, 1, 6, shape, out=np.empty((6, 105), np.float64))
    with pytest.raises(ValueError, match="y_out must be"):
        augment.augment_gather(X, y, perm, 1, 6, shape, y_out=np.empty(6, np.int32))


def test_dispatch_picks_by_array_and_switch(rng, monkeypatch):
    X = np.zeros((4, 12), np.uint8)
    assert augment.impl_for(X) is cpu_augment.augment_gather
    prev = fused.use_compiled_cpu()
    try:
        fused.use_compiled_cpu(False)
        assert augment.impl_for(X) is augment._reference
        out = np.empty((2, 12), np.float32)
        Xb, yb = augment.augment_gather(X + 3, None, np.arange(4), 1, 2, (3, 2, 2), "none",
                                        out=out)
        assert Xb is out and yb is None and np.all(out == 3)
    finally:
        fused.use_compiled_cpu(prev)


# ----------------------------------------------------------------- the draws

def _chi2(counts):
    counts = np.asarray(counts, np.float64)
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


# upper 0.1% points of chi-square (df: value), so each check fails by chance 1 in 1000;
# the seeds are fixed, so a pass is a pass every time
CHI2_999 = {4: 18.47, 8: 26.12, 24: 51.18, 80: 124.84}


@pytest.mark.parametrize("pad", [2, 4])
@pytest.mark.parametrize("seed", [0, 12345, 2 ** 64 - 1])
def test_draws_are_uniform_and_independent(pad, seed):
    n = 40000
    q = np.arange(n, dtype=np.uint64) + np.uint64(n * 3)
    flip, dx, dy = augment_spec.draws_reference(q, seed, 7, "crop", pad)
    k = 2 * pad + 1
    # flip rate 1/2: within 4 standard deviations
    assert abs(int(flip.sum()) - n / 2) < 4 * math.sqrt(n / 4)
    assert set(np.unique(dx)) == set(range(k)) and set(np.unique(dy)) == set(range(k))
    assert _chi2(np.bincount(dx, minlength=k)) < CHI2_999[k - 1]
    assert _chi2(np.bincount(dy, minlength=k)) < CHI2_999[k - 1]
    joint = np.bincount(dx * k + dy, minlength=k * k)
    assert _chi2(joint) < CHI2_999[k * k - 1]
    # flips independent of the shift
    tab = np.bincount(flip * k + dx, minlength=2 * k).reshape(2, k)
    assert _chi2(tab[0]) < CHI2_999[k - 1] and _chi2(tab[1]) < CHI2_999[k - 1]


def test_chi2_check_can_fail():
    """The uniformity check rejects a biased draw (the top bits of r1 alone, mod k)."""
    n, k = 40000, 9
    q = np.arange(n, dtype=np.uint64)
    counter = np.stack([q, q * 0, q * 0, q * 0 + (1 << 31)], axis=-1)
    r1 = frandom.philox4x32_10(counter, np.zeros(2, np.uint64))[:, 1].astype(np.int64)
    biased = (r1 >> 28) % k      # 16 values folded onto 9 bins
    assert _chi2(np.bincount(biased, minlength=k)) > CHI2_999[k - 1]


def test_stream_namespace():
    assert augment_spec.augment_stream(0) == 2 ** 63
    assert augment_spec.augment_stream(41) == 2 ** 63 + 41
    with pytest.raises(ValueError, match="below 2\\*\\*63"):
        augment_spec.augment_stream(2 ** 63)


# ----------------------------------------------------------------- argument checks

def test_argument_errors(rng):
    X = np.zeros((10, 48), np.uint8)
    perm = np.arange(10)
    g = augment.augment_gather
    cases = [
        (dict(image_shape=(3, 4, 5)), "has 60 values but rows of X have 48"),
        (dict(image_shape=(3, 16)), "image_shape must be"),
        (dict(image_shape=(3, 4, 0)), "positive"),
        (dict(pad=-1), "pad must be >= 0"),
        (dict(pad=4), "smaller than the image's height and width"),
        (dict(mode="jitter"), "augment mode must be one of none, flip, crop"),
        (dict(out_dtype=np.float16), "out_dtype must be float32 or float64"),
        (dict(X=X.astype(np.int16)), "X must be uint8, float32 or float64"),
        (dict(X=np.zeros(10, np.uint8)), "X must be"),
        (dict(b=3), "batch 3 of 3 rows needs positions up to 12 but perm has 10"),
        (dict(b=-1), "batch -1"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(perm=np.arange(10.0)), "perm must be a 1-D integer array"),
        (dict(perm=np.arange(10) + 8), "outside \\[0, 10\\)"),
        (dict(y=np.zeros(9, int)), "y must have shape \\(10,\\)"),
        (dict(mean=np.zeros(47)), "mean must have 48 values"),
        (dict(epoch=2 ** 63), "epoch must be below"),
        (dict(seed=-1), "seed must be in"),
    ]
    for impl in (g, augment_spec.augment_gather_reference):
        for kw, msg in cases:
            args = dict(X=X, y=None, perm=perm, b=0, batch_size=3, image_shape=(3, 4, 4),
                        mode="crop", pad=1, seed=0, epoch=0)
            args.update(kw)
            with pytest.raises(ValueError, match=msg):
                impl(**args)
    with pytest.raises(TypeError, match="pad must be an integer"):
        g(X, None, perm, 0, 3, (3, 4, 4), pad=1.5)
    # pad is only bounded by the image for 'crop'
    g(X, None, perm, 0, 3, (3, 4, 4), mode="flip", pad=4)


# ----------------------------------------------------------------- the GPU

@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("in_dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
def test_cuda_bit_identical_to_reference(rng, in_dtype, out_dtype):
    cp = cupy()
    for shape in [(3, 7, 5), (3, 32, 32)]:
        n = 600
        X = _images(rng, n, shape, in_dtype, specials=True)
        y = rng.integers(0, 10, n)
        perm = rng.permutation(n)
        Xd, yd, pd = cp.asarray(X), cp.asarray(y), cp.asarray(perm)
        for B, pad, mode, mean_kind in itertools.product((1, 7, 33, 490), (0, 1, 4), MODES,
                                                         ("none", "flat")):
            b = int(rng.integers(0, n // B))
            seed, epoch = int(rng.integers(0, 2 ** 63)), int(rng.integers(0, 1000))
            mean = _mean(rng, shape, mean_kind)
            want, ywant = augment_spec.augment_gather_reference(
                X, y, perm, b, B, shape, mode, pad, seed, epoch, mean, out_dtype)
            md = None if mean is None else cp.asarray(mean)
            got, yb = augment.augment_gather(Xd, yd, pd, b, B, shape, mode, pad, seed, epoch, md,
                                             out_dtype)
            assert bits_equal(got.get(), want), (shape, B, pad, mode, mean_kind)
            assert np.array_equal(yb.get(), ywant)
            # b and epoch read from device memory (the CUDA-graph step)
            out, y_out = cp.empty_like(got), cp.empty_like(yb)
            got2, _ = augment.augment_gather(
                Xd, yd, pd, cp.asarray([b], dtype=np.uint64), B, shape, mode, pad, seed,
                cp.asarray([epoch], dtype=np.uint64), md, out_dtype, out, y_out)
            assert got2 is out and bits_equal(out.get(), want)
            assert np.array_equal(y_out.get(), ywant)
