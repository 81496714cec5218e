"""MixUp and CutMix of the gathered minibatch (fcgpu.mix_spec, fcgpu.augment.mix_batch):
the Beta(alpha, alpha) quantile table against SciPy's float64 inverse, its bits fixed
on every machine, the draws' distribution, the reference against a plain per-sample
loop, the Numba pass against the reference bit for bit, and the argument checks.

The CUDA kernel runs on the CPU in tests/test_mix_kernels.py (the host build of
kernels/augment.cu) and on a GPU below.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fcgpu import augment, beta_table, fused, mix_spec
from fcgpu import random as frandom
from fcgpu.cpu import augment as cpu_augment
from fcgpu.errors import ConfigError
from gpu_util import bits_equal, cupy, requires_gpu

SHAPES = [(3, 7, 5), (2, 6, 9), (3, 32, 32)]
ALPHAS = [0.05, 0.2, 1.0, 2.5, 100.0]
MASK32 = 0xFFFFFFFF


def _special():
    return pytest.importorskip("scipy.special")


# ----------------------------------------------------------------- the quantile table

@pytest.mark.parametrize("alpha", ALPHAS)
def test_table_is_the_beta_quantile_function(alpha):
    """Q[k] = F^-1(k/K) of Beta(alpha, alpha) against SciPy's betaincinv (float64),
    relative error under 1e-12 (the smallest quantiles of alpha = 0.05 are about
    1e-67: relative, not absolute); increasing (strictly in the lower half: above it small
    alphas' quantiles round to 1); symmetric to the bit. Mutants that fail
    here: the series ratio (2a+n)/(a+n) for (2a+n)/(a+1+n); the norm H(1/2) left out of
    the 2 in F's denominator."""
    special = _special()
    q = beta_table.beta_quantile_table(alpha)
    k = beta_table.TABLE_SIZE
    assert q.shape == (k + 1,) and q.dtype == np.float64 and not q.flags.writeable
    p = np.arange(k + 1) / k
    ref = special.betaincinv(alpha, alpha, p)
    inner = slice(1, k // 2)   # (the upper half: by the symmetry checked below)
    rel = np.abs(q[inner] - ref[inner]) / ref[inner]
    assert rel.max() < 1e-12, (alpha, rel.max(), int(rel.argmax()) + 1)
    assert q[0] == 0.0 and q[k] == 1.0 and q[k // 2] == 0.5
    assert np.all(np.diff(q[:k // 2 + 1]) > 0) and np.all(np.diff(q) >= 0)
    assert bits_equal(q[k // 2 + 1:k], 1.0 - q[1:k // 2][::-1])


# Entries of the tables as float.hex: the same on every machine, since the table uses
# only correctly rounded float64 arithmetic (the test below checks that no math
# library function runs while it is computed).
KNOWN_ENTRIES = {
    0.2: {1: "0x1.8c7d2f0cd5f4bp-56", 100: "0x1.cd92e9af8f79dp-23",
          1000: "0x1.5b2b2d02d75c3p-6", 2047: "0x1.ff376739c64cdp-2"},
    1.0: {1: "0x1.fffffffffffffp-13", 1000: "0x1.f400000000000p-3",
          2047: "0x1.ffc0000000002p-2"},
    2.5: {1: "0x1.2d3ecc8dfa7cdp-6", 700: "0x1.266096890c0edp-2",
          2047: "0x1.ffda4d06e7707p-2"},
}


@pytest.mark.parametrize("alpha", sorted(KNOWN_ENTRIES))
def test_table_known_answers(alpha):
    """Known bits of the table (computed once, kept here): a change of the method, the
    series lengths or the constants shows as a change of bits. Mutants that fail
    here: numpy.log in place of _log, numpy.exp in place of _exp."""
    q = beta_table.beta_quantile_table(alpha)
    got = {k: float(q[k]).hex() for k in KNOWN_ENTRIES[alpha]}
    want = {k: float.fromhex(v).hex() for k, v in KNOWN_ENTRIES[alpha].items()}
    assert got == want


def test_table_calls_no_math_library(monkeypatch):
    """While a table is computed, NumPy's and the math module's log, exp, pow and
    friends raise: the table is made of +, -, *, / and exact steps only. Mutant that
    fails here: numpy.log (or exp, or power) anywhere in fcgpu.beta_table."""
    import math as pymath

    def refuse(*args, **kwargs):
        raise AssertionError("a math-library function ran while the table was computed")
    for name in ("log", "exp", "power", "log1p", "expm1", "log2", "exp2", "float_power",
                 "sqrt", "cbrt"):
        monkeypatch.setattr(np, name, refuse)
    for name in ("log", "exp", "pow", "log1p", "expm1", "lgamma", "gamma", "sqrt"):
        monkeypatch.setattr(pymath, name, refuse)
    q = np.frombuffer(beta_table._table.__wrapped__(0.7), np.float64)  # uncached
    monkeypatch.undo()
    assert bits_equal(q, beta_table.beta_quantile_table(0.7))


def test_log_and_exp_are_accurate(rng):
    """The table's own ln and exp against NumPy's (float64) within 6 units in the last
    place (seen: 3 for ln, where -ln 2 + ln m cancels, 1 for exp), over the ranges the
    table uses (ln of (0, 1], exp of [-745, 0]). Mutants that fail here: _log's series
    cut to 8 terms, _exp's to 9."""
    x = np.concatenate([rng.uniform(0, 1, 20000), np.exp(rng.uniform(-700, 0, 20000))])
    x = x[x > 0]
    ref = np.log(x)
    assert np.all(np.abs(beta_table._log(x) - ref) <= 6 * np.spacing(np.abs(ref)))
    y = rng.uniform(-700, 0, 40000)
    ref = np.exp(y)
    assert np.all(np.abs(beta_table._exp(y) - ref) <= 6 * np.spacing(ref))
    assert beta_table._exp(np.array([-800.0]))[0] == 0.0


# ----------------------------------------------------------------- the draws

def _ks(sample, cdf):
    """Kolmogorov-Smirnov statistic of ``sample`` against ``cdf``."""
    x = np.sort(sample)
    f = cdf(x)
    n = x.size
    return max(float(np.max(np.arange(1, n + 1) / n - f)), float(np.max(f - np.arange(n) / n)))


def _ks_limit(n):
    """The KS statistic's upper 0.1% point (1.95 / sqrt(n)), plus the table's own
    distance from Beta (at most 1/K)."""
    return 1.95 / math.sqrt(n) + 1.0 / beta_table.TABLE_SIZE


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
@pytest.mark.parametrize("seed", [0, 2 ** 64 - 1])
def test_mixup_lam_follows_beta(alpha, seed):
    """lam over 40000 positions against Beta(alpha, alpha)'s CDF (SciPy): the KS
    statistic under its 0.1% point. The seeds are fixed, so a pass is a pass every
    time. Mutant that fails here: lam read from r0 >> 21 (half the table)."""
    special = _special()
    n = 40000
    q = np.arange(n, dtype=np.uint64) + np.uint64(123456)
    lam, *box = mix_spec.mix_draws_reference(q, seed, 5, "mixup", alpha, (3, 8, 8))
    assert lam.dtype == np.float64 and all(np.all(b == 0) for b in box)
    assert _ks(lam, lambda x: special.betainc(alpha, alpha, x)) < _ks_limit(n)


def test_ks_check_can_fail():
    """The KS check rejects lam drawn for alpha 0.5 when Beta(0.7, 0.7) is expected."""
    special = _special()
    n = 40000
    lam = mix_spec.mix_draws_reference(np.arange(n, dtype=np.uint64), 3, 0, "mixup", 0.5,
                                       (1, 2, 2))[0]
    assert _ks(lam, lambda x: special.betainc(0.7, 0.7, x)) > _ks_limit(n)


def test_cutmix_boxes_follow_lam():
    """CutMix boxes over many draws: inside the image; lam the exact uncovered share;
    never more covered than the drawn 1 - lam; and a box the border does not clip is
    exactly 2*floor(floor(W*sqrt(1-lam))/2) wide and the same in H high (many are).
    Mutant that fails here: the box's height from W (the image is not square)."""
    n, H, W = 40000, 12, 10
    q = np.arange(n, dtype=np.uint64)
    lam0 = mix_spec.mix_draws_reference(q, 9, 2, "mixup", 1.0, (3, H, W))[0]
    lam, x1, x2, y1, y2 = mix_spec.mix_draws_reference(q, 9, 2, "cutmix", 1.0, (3, H, W))
    assert np.all((0 <= x1) & (x1 <= x2) & (x2 <= W) & (0 <= y1) & (y1 <= y2) & (y2 <= H))
    area = (x2 - x1) * (y2 - y1)
    assert bits_equal(lam, (H * W - area) / float(H * W))
    assert np.all(lam >= lam0)
    cut = np.sqrt(1 - lam0)
    w_full = (np.floor(W * cut).astype(int) // 2) * 2
    h_full = (np.floor(H * cut).astype(int) // 2) * 2
    assert np.all((x2 - x1 <= w_full) & (y2 - y1 <= h_full))
    assert ((x2 - x1 == w_full) & (y2 - y1 == h_full) & (w_full > 0)).mean() > 0.2


# ----------------------------------------------------------------- the reference

def _draw(seed, epoch, q, mode, alpha, H, W):
    """One position's (lam, box) with Python scalars: floats, ints, math.sqrt."""
    stream = 2 ** 63 + epoch
    j = 2 ** 63 + q
    counter = np.array([j & MASK32, j >> 32, stream & MASK32, stream >> 32], dtype=np.uint32)
    key = np.array([seed & MASK32, seed >> 32], dtype=np.uint32)
    r0, _, r2, r3 = (int(v) for v in frandom.philox4x32_10(counter, key))
    table = [float(v) for v in beta_table.beta_quantile_table(alpha)]
    k, f = r0 >> 20, (r0 & (2 ** 20 - 1)) / 2 ** 20
    lam = table[k] + f * (table[k + 1] - table[k])
    if mode == "mixup":
        return lam, None
    cut = math.sqrt(1 - lam)
    hw, hh = int(W * cut) // 2, int(H * cut) // 2
    cx, cy = (r2 * W) >> 32, (r3 * H) >> 32
    box = (max(cx - hw, 0), min(cx + hw, W), max(cy - hh, 0), min(cy + hh, H))
    area = (box[1] - box[0]) * (box[3] - box[2])
    return (H * W - area) / (H * W), box


def naive_mix(X, y, b, shape, mode, alpha, seed, epoch):
    """The spec written the long way: one row at a time, Python scalars for the draws."""
    C, H, W = shape
    B = X.shape[0]
    T = X.dtype.type
    out = np.empty_like(X)
    lams = np.empty(B, dtype=X.dtype)
    imgs = X.reshape(B, C, H, W)
    for r in range(B):
        lam, box = _draw(seed, epoch, b * B + r, mode, alpha, H, W)
        lams[r] = T(lam)
        own, other = imgs[r], imgs[B - 1 - r]
        if mode == "mixup":
            out[r] = (T(lam) * own + T(1 - lam) * other).reshape(-1)
        else:
            img = own.copy()
            x1, x2, y1, y2 = box
            img[:, y1:y2, x1:x2] = other[:, y1:y2, x1:x2]
            out[r] = img.reshape(-1)
    y2 = None if y is None else y[::-1].astype(np.int64)
    return out, y2, lams


def _batch(rng, B, shape, dtype, specials=False):
    X = (rng.standard_normal((B, math.prod(shape))) * 60).astype(dtype)
    if specials:  # signed zeros, subnormals, huge values: products and sums round alike
        tiny = np.finfo(dtype).tiny
        vals = np.array([0.0, -0.0, tiny / 3, -tiny / 7, 3e38, -3e38], dtype=dtype)
        flat = X.reshape(-1)
        flat[rng.choice(flat.size, min(flat.size, 3 * vals.size), replace=False)] = \
            np.resize(vals, min(flat.size, 3 * vals.size))
    return X


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_matches_per_sample_loop(rng, mode, dtype):
    """Mutants that fail here: the partner row r instead of B-1-r; lam not adjusted to
    the box (CutMix); the box's x and y swapped."""
    for shape, B, alpha in itertools.product(SHAPES[:2], (1, 4, 7), (0.3, 1.0)):
        X = _batch(rng, B, shape, dtype)
        y = rng.integers(0, 10, B)
        b, seed, epoch = int(rng.integers(0, 50)), int(rng.integers(0, 2 ** 64, dtype=np.uint64)), \
            int(rng.integers(0, 50))
        got, y2, lam = mix_spec.mix_batch_reference(X, y, b, shape, mode, alpha, seed, epoch)
        want, y2w, lamw = naive_mix(X, y, b, shape, mode, alpha, seed, epoch)
        assert bits_equal(got, want), (shape, B, alpha)
        assert np.array_equal(y2, y2w) and y2.dtype == np.int64 and bits_equal(lam, lamw)


def test_mixup_is_the_convex_combination_in_float64(rng):
    """MixUp rows against lam * x_i + (1 - lam) * x_j computed in float64 from the drawn
    lam (float32 batches: within the float32 rounding of three operations)."""
    shape, B = (3, 6, 6), 9
    X = _batch(rng, B, shape, np.float32)
    seed, epoch = int(rng.integers(0, 2 ** 63)), 4
    got, y2, lam = mix_spec.mix_batch_reference(X, None, 3, shape, "mixup", 0.4, seed, epoch)
    lam64 = mix_spec.mix_draws_reference(mix_spec.batch_positions(3, B), seed, epoch, "mixup",
                                         0.4, shape)[0]
    X64 = X.astype(np.float64)
    want = lam64[:, None] * X64 + (1 - lam64[:, None]) * X64[::-1]
    scale = np.abs(X64).max()
    assert np.max(np.abs(got - want)) <= 4 * np.finfo(np.float32).eps * scale
    assert y2 is None and lam.dtype == np.float32


def test_lam_belongs_to_the_position():
    """The draw of a position is the same whatever batch contains it (the partner is
    not: it depends on the batch size); other epochs and seeds draw otherwise."""
    shape = (3, 8, 8)
    whole = mix_spec.mix_draws_reference(np.arange(14, dtype=np.uint64), 9, 3, "cutmix", 1.0,
                                         shape)
    second = mix_spec.mix_draws_reference(mix_spec.batch_positions(1, 7), 9, 3, "cutmix", 1.0,
                                          shape)
    for a, b in zip(whole, second):
        assert bits_equal(a[7:], b)
    other = mix_spec.mix_draws_reference(mix_spec.batch_positions(1, 7), 9, 4, "cutmix", 1.0,
                                         shape)
    assert not np.array_equal(second[0], other[0])


def test_mix_draws_leave_the_flip_and_crop_draws_alone(rng):
    """The mixing blocks are 2**63 + q: a gather's flips and crops are the same with
    and without mixing afterwards (mixing is a pass over the gathered batch)."""
    shape = (3, 8, 8)
    X = rng.integers(0, 256, (20, 192)).astype(np.uint8)
    perm = rng.permutation(20)
    Xb, yb = augment.augment_gather(X, np.arange(20), perm, 1, 6, shape, "crop", 2, 7, 3)
    again, _ = augment.augment_gather(X, np.arange(20), perm, 1, 6, shape, "crop", 2, 7, 3)
    mixed, y2, lam = augment.mix_batch(again, yb, 1, shape, "cutmix", 1.0, 7, 3)
    assert mixed is again
    want, y2w, lamw = mix_spec.mix_batch_reference(Xb, yb, 1, shape, "cutmix", 1.0, 7, 3)
    assert bits_equal(mixed, want) and np.array_equal(y2, y2w) and bits_equal(lam, lamw)


# ----------------------------------------------------------------- the Numba pass

@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_cpu_bit_identical_to_reference(rng, mode, dtype):
    """Every shape, odd and even batches (1 has a row that is its own partner), alphas
    from 0.05 to 100, signed zeros, subnormals and huge values in the batch: the same
    bits, partner labels and weights. Mutants that fail here: the two products of
    MixUp's second row swapped (w1p * a + w2p * b); CutMix's box test i < y2 as
    i <= y2; the mixing block without its top bit (the flips' block)."""
    for shape, B, alpha in itertools.product(SHAPES, (1, 2, 7, 33), ALPHAS):
        X = _batch(rng, B, shape, dtype, specials=True)
        y = rng.integers(0, 10, B).astype(np.int32)
        b, seed, epoch = int(rng.integers(0, 99)), int(rng.integers(0, 2 ** 64, dtype=np.uint64)), \
            int(rng.integers(0, 1000))
        want, y2w, lamw = mix_spec.mix_batch_reference(X, y, b, shape, mode, alpha, seed, epoch)
        got, y2, lam = cpu_augment.mix_batch(X.copy(), y, b, shape, mode, alpha, seed, epoch)
        assert bits_equal(got, want), (shape, B, alpha)
        assert np.array_equal(y2, y2w) and y2.dtype == np.int64 and bits_equal(lam, lamw)


def test_compiled_cpu_writes_given_buffers(rng):
    shape = (2, 5, 6)
    X = _batch(rng, 5, shape, np.float32)
    y = rng.integers(0, 10, 5)
    y2_out, lam_out = np.full(5, -1, np.int64), np.full(5, np.nan, np.float32)
    want = mix_spec.mix_batch_reference(X, y, 2, shape, "mixup", 0.5, 1, 2)
    Xc = X.copy()
    got = augment.mix_batch(Xc, y, 2, shape, "mixup", 0.5, 1, 2, y2_out, lam_out)
    assert got[0] is Xc and got[1] is y2_out and got[2] is lam_out
    assert bits_equal(Xc, want[0]) and np.array_equal(y2_out, want[1])
    assert bits_equal(lam_out, want[2])
    with pytest.raises(ValueError, match="lam_out must be"):
        augment.mix_batch(Xc, y, 2, shape, lam_out=np.empty(5, np.float64))
    with pytest.raises(ValueError, match="y2_out must be"):
        augment.mix_batch(Xc, y, 2, shape, y2_out=np.empty(5, np.int32))
    with pytest.raises(ValueError, match="the batch must be"):
        augment.mix_batch(np.asfortranarray(np.ones((4, 60), np.float32)), None, 0, shape)


def test_dispatch_and_mode_none(rng):
    X = np.ones((4, 12), np.float32)
    assert augment.mix_impl_for(X) is cpu_augment.mix_batch
    prev = fused.use_compiled_cpu()
    try:
        fused.use_compiled_cpu(False)
        assert augment.mix_impl_for(X) is augment._mix_reference
        Xb = _batch(rng, 6, (3, 2, 2), np.float64)
        want = mix_spec.mix_batch_reference(Xb, None, 1, (3, 2, 2), "cutmix", 2.0, 5, 6)
        got = augment.mix_batch(Xb, None, 1, (3, 2, 2), "cutmix", 2.0, 5, 6)
        assert got[0] is Xb and bits_equal(Xb, want[0]) and got[1] is None
    finally:
        fused.use_compiled_cpu(prev)
    for impl in (cpu_augment.mix_batch, augment._mix_reference):
        Xc = X.copy()
        assert impl(Xc, np.zeros(4, int), 0, (3, 2, 2), "none") == (Xc, None, None)
        assert np.all(Xc == 1)


def test_argument_errors():
    X = np.zeros((4, 12), np.float32)
    cases = [
        (dict(mode="mixer"), ConfigError, "mix must be one of none, mixup, cutmix, got 'mixer'"),
        (dict(alpha=0.0), ConfigError, "mix_alpha must be in \\[0.05, 100\\], got 0.0"),
        (dict(alpha=float("nan")), ConfigError, "mix_alpha must be"),
        (dict(alpha=101), ConfigError, "mix_alpha must be in"),
        (dict(image_shape=(3, 2, 3)), ValueError, "has 18 values but rows of X have 12"),
        (dict(X=np.zeros((4, 12), np.int64)), ValueError, "2-D float32 or float64"),
        (dict(X=np.zeros(12, np.float32)), ValueError, "2-D float32 or float64"),
        (dict(y=np.zeros(3, int)), ValueError, "labels must be integers of shape \\(4,\\)"),
        (dict(y=np.zeros(4)), ValueError, "labels must be integers"),
        (dict(b=-1), ValueError, "batch index b must be >= 0"),
        (dict(b=1.0), TypeError, "batch index b must be an integer"),
        (dict(epoch=2 ** 63), ValueError, "epoch must be below"),
        (dict(seed=-1), ValueError, "seed must be in"),
    ]
    for impl in (augment.mix_batch, mix_spec.mix_batch_reference):
        for kw, error, msg in cases:
            args = dict(X=X, y=None, b=0, image_shape=(3, 2, 2), mode="cutmix", alpha=1.0,
                        seed=0, epoch=0)
            args.update(kw)
            with pytest.raises(error, match=msg) as info:
                impl(**args)
            assert "\n" not in str(info.value)


# ----------------------------------------------------------------- the GPU

@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_bit_identical_to_reference(rng, mode, dtype):
    cp = cupy()
    for shape, B, alpha in itertools.product(SHAPES, (1, 7, 33, 490), (0.2, 1.0, 4.0)):
        X = _batch(rng, B, shape, dtype, specials=True)
        y = rng.integers(0, 10, B)
        b, seed, epoch = int(rng.integers(0, 99)), int(rng.integers(0, 2 ** 63)), \
            int(rng.integers(0, 1000))
        want, y2w, lamw = mix_spec.mix_batch_reference(X, y, b, shape, mode, alpha, seed, epoch)
        Xd = cp.asarray(X)
        got, y2, lam = augment.mix_batch(Xd, cp.asarray(y), b, shape, mode, alpha, seed, epoch)
        assert got is Xd and bits_equal(got.get(), want), (shape, B, alpha)
        assert np.array_equal(y2.get(), y2w) and bits_equal(lam.get(), lamw)
        # b and epoch read from device memory, into given buffers (the CUDA-graph step)
        Xd = cp.asarray(X)
        y2_out, lam_out = cp.empty_like(y2), cp.empty_like(lam)
        augment.mix_batch(Xd, cp.asarray(y), cp.asarray([b], dtype=np.uint64), shape, mode,
                          alpha, seed, cp.asarray([epoch], dtype=np.uint64), y2_out, lam_out)
        assert bits_equal(Xd.get(), want) and np.array_equal(y2_out.get(), y2w)
        assert bits_equal(lam_out.get(), lamw)
