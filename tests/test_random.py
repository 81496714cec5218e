"""Philox4x32-10 and dropout masks: known answers, compiled path == reference."""
import numpy as np
import pytest

from fcgpu.fused import dropout_mask
from fcgpu.random import (dropout_mask_reference, dropout_scale, fresh_stream, keep_threshold,
                          philox4x32_10)

KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([0xffffffff] * 4, [0xffffffff] * 2, [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0],
     [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answer_vectors(counter, key, expected):
    out = philox4x32_10(np.array(counter, np.uint32), np.array(key, np.uint32))
    assert out.dtype == np.uint32
    assert out.tolist() == expected


def test_philox_broadcasts_counters_against_one_key():
    counters = np.array([k[0] for k in KAT], np.uint32)
    out = philox4x32_10(counters, np.zeros(2, np.uint32))
    assert out.shape == (3, 4)
    assert out[0].tolist() == KAT[0][2]
    single = philox4x32_10(counters[2], np.zeros(2, np.uint32))
    assert out[2].tolist() == single.tolist()


def test_philox_rejects_bad_shapes():
    with pytest.raises(ValueError, match="counter"):
        philox4x32_10(np.zeros(3, np.uint32), np.zeros(2, np.uint32))


def test_mask_layout_follows_the_spec():
    """Element i uses block i//4, lane i%4, counter (j lo, j hi, stream lo, stream hi)."""
    seed, stream, p = 0x1234567890ABCDEF, 2**33 + 7, 0.5
    n = 11
    mask = dropout_mask_reference((n,), p, seed, stream)
    t = keep_threshold(p)
    for i in range(n):
        j = i // 4
        c = np.array([j & 0xffffffff, j >> 32, stream & 0xffffffff, stream >> 32], np.uint32)
        k = np.array([seed & 0xffffffff, seed >> 32], np.uint32)
        assert mask[i] == (philox4x32_10(c, k)[i % 4] < t)


@pytest.mark.parametrize("seed,stream", [(0, 0), (2**64 - 1, 2**64 - 1), (123, 2**32 + 5),
                                         (2**40 + 3, 17)])
@pytest.mark.parametrize("p", [0.3, 0.8, 0.999])
def test_compiled_mask_equals_reference_on_millions(seed, stream, p):
    shape = (1001, 2003)  # 2,005,003 elements: not a multiple of 4
    a = dropout_mask(shape, p, seed, stream)
    b = dropout_mask_reference(shape, p, seed, stream)
    assert a.shape == shape and a.dtype == bool
    assert np.array_equal(a, b)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 9])
def test_compiled_mask_small_sizes(n):
    assert np.array_equal(dropout_mask((n,), 0.5, 9, 9), dropout_mask_reference((n,), 0.5, 9, 9))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.75, 0.9])
def test_keep_fraction_within_one_percent(p, rng):
    mask = dropout_mask((1000, 1000), p, int(rng.integers(2**63)), int(rng.integers(2**63)))
    assert abs(mask.mean() - p) < 0.01 * p


def test_p_one_keeps_everything_and_threshold_edges():
    assert dropout_mask((5, 5), 1.0, 1, 2).all()
    assert keep_threshold(1.0) is None
    assert keep_threshold(0.5) == 2**31
    assert keep_threshold(1 - 2**-53) == 2**32 - 1


@pytest.mark.parametrize("p", [0, -0.1, 1.5, float("nan"), "x"])
def test_invalid_p_is_rejected(p):
    with pytest.raises(ValueError, match="keep probability"):
        dropout_mask((4,), p, 1, 1)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5])
def test_invalid_seed_is_rejected(seed):
    with pytest.raises((ValueError, TypeError), match="seed"):
        dropout_mask((4,), 0.5, seed, 0)


def test_streams_and_seeds_give_different_masks():
    a = dropout_mask((4096,), 0.5, 1, 0)
    assert not np.array_equal(a, dropout_mask((4096,), 0.5, 1, 1))
    assert not np.array_equal(a, dropout_mask((4096,), 0.5, 2, 0))
    assert not np.array_equal(a, dropout_mask((4096,), 0.5, 1 + 2**32, 0))


def test_fresh_stream_never_repeats():
    seen = {fresh_stream() for _ in range(1000)}
    assert len(seen) == 1000


def test_scale_is_float64_reciprocal_cast():
    assert dropout_scale(0.3, np.float32) == np.float32(1 / 0.3)
    assert dropout_scale(0.3, np.float32).dtype == np.float32
    assert dropout_scale(0.3, np.float64) == 1 / 0.3
