"""``kernels/philox.cuh`` built by the host C++ compiler (tests/host/philox_kat.cpp)
reproduces the Random123 known-answer vectors, the keep thresholds, and
``fcgpu.random.dropout_mask`` / ``dropout_mask_reference`` on large arrays and at
elements far past 2^32."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import toolchain as tc
from fcgpu import fused
from fcgpu import random as frandom
from gpu_util import mask_window

KERNELS = tc.KERNELS
HOST = tc.HOST


def _build(tmp_dir, source, name):
    exe = Path(tmp_dir) / name
    cmd = [tc.host_compiler(), "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror",
           "-ffp-contract=off", "-I%s" % KERNELS, str(HOST / source), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, "host build of %s failed:\n%s" % (source, res.stderr)
    return exe


@pytest.fixture(scope="module")
def philox_exe(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("philox"), "philox_kat.cpp", "philox_kat")


# ----------------------------------------------------------------- (b) Philox on the host

KAT = [
    ("00000000 00000000 00000000 00000000 00000000 00000000",
     "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff",
     "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0",
     "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def test_host_philox_known_answers(philox_exe):
    out = subprocess.run([str(philox_exe)], capture_output=True, text=True, check=True).stdout
    lines = [ln.split(" -> ") for ln in out.strip().splitlines()]
    assert [(a.strip(), b.strip()) for a, b in lines] == KAT
    # and the xp reference agrees on the same vectors
    for inp, exp in KAT:
        words = [int(w, 16) for w in inp.split()]
        r = frandom.philox4x32_10(np.array(words[:4], np.uint32), np.array(words[4:], np.uint32))
        assert " ".join("%08x" % v for v in r) == exp


def test_host_keep_threshold_matches_python(philox_exe):
    ps = [1e-9, 0.1, 0.25, 0.3, 0.5, 0.8, 0.9, 1.0 - 2 ** -40, 1.0 - 2 ** -53, 1.0]
    out = subprocess.run([str(philox_exe), "threshold"] + [repr(p) for p in ps],
                         capture_output=True, text=True, check=True).stdout.split()
    for p, t in zip(ps, out):
        expect = frandom.keep_threshold(p)
        assert int(t) == (1 << 32 if expect is None else expect), p


MASK_CASES = [
    # (n, seed, stream, p)
    (1_000_003, 0, 0, 0.5),
    (1_000_000, 123, 7, 0.8),
    (999_999, 2 ** 32 + 5, 2 ** 33 + 1, 0.3),
    (1_000_001, 2 ** 64 - 1, 2 ** 64 - 2, 0.9),
]


@pytest.mark.parametrize("n,seed,stream,p", MASK_CASES)
def test_host_philox_mask_matches_python(philox_exe, n, seed, stream, p):
    t = frandom.keep_threshold(p)
    res = subprocess.run([str(philox_exe), "mask", str(n), str(seed), str(stream), str(t)],
                         capture_output=True, check=True)
    host = np.frombuffer(res.stdout, dtype=np.uint8)
    assert host.size == n
    host = host.astype(bool)
    compiled = fused.dropout_mask((n,), p, seed, stream)
    ref = frandom.dropout_mask_reference((n,), p, seed, stream)
    assert np.array_equal(host, ref)
    assert np.array_equal(compiled, ref)
    assert abs(host.mean() - p) < 5e-3


@pytest.mark.parametrize("start", [0, 5, 2 ** 31 - 6, 2 ** 32 - 3, 2 ** 34 - 7, 2 ** 40 + 1])
def test_host_philox_window_far_elements(philox_exe, start):
    """Elements past 2^31, 2^32 and 2^34 (block counters past 2^32 use the high
    counter word): the host header equals the xp window helper of the GPU tests."""
    n, seed, stream, p = 4099, 2 ** 33 + 9, 2 ** 32 + 4, 0.6
    t = frandom.keep_threshold(p)
    res = subprocess.run([str(philox_exe), "window", str(start), str(n), str(seed), str(stream),
                          str(t)], capture_output=True, check=True)
    host = np.frombuffer(res.stdout, dtype=np.uint8).astype(bool)
    assert np.array_equal(host, mask_window(start, start + n, p, seed, stream))


def test_mask_window_matches_reference():
    ref = frandom.dropout_mask_reference((10_007,), 0.45, 2 ** 50, 3)
    for a, b in [(0, 10_007), (1, 2), (3, 9), (4, 8), (4097, 10_007), (10_006, 10_007)]:
        assert np.array_equal(mask_window(a, b, 0.45, 2 ** 50, 3), ref[a:b]), (a, b)
