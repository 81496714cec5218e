"""What the kernels built for the host (tests/host/cuda_emu.h, behind the stand-in for
CuPy of tests/test_kernels_host.py) show beyond the contract of
tests/test_fused_contract.py: the exact steps on subnormals, signed zeros and NaN, the
default dispatch, running statistics through copies, a large offset, the two-stage
reductions on the chunk layouts of other device sizes, empty shapes, and
``fcgpu_col_flat`` past 2^32 elements in windows. (sm_count is 3 here: small grids,
many strides.)"""
from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pytest

from fcgpu import fused
from fcgpu import random as frandom
from fcgpu.cuda.ops import chunk_layout
from gpu_util import (assert_close, bits_equal, bn_backward_terms, bn_forward_terms,
                      bn_running_terms, mask_window)
from helpers import check_exact_steps_on_edge_values
import test_kernels_host as tkh
from test_kernels_host import DTYPES, FakeArray, _fake, _misaligned


@pytest.fixture
def emu_cuda(kernel_signatures, launch_bounds, monkeypatch, emu_lib):
    """fcgpu.cuda.ops behind the stand-in, each launch running the host build of its
    kernel: ``(ops, launch log)``."""
    return tkh._install_fake_cuda(kernel_signatures, launch_bounds, monkeypatch, emu_lib)[:2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_exact_steps_on_edge_values(emu_cuda, dtype, monkeypatch):
    """Subnormals, signed zeros, NaN and infinities through the host build of the
    kernels: relu is numpy.maximum(x, 0) exactly (-0.0 gives +0.0). The stand-in's own
    elementwise operations flush float32 subnormals here, as CuPy's do, so a step that
    left our kernels for CuPy's operations (the plain SGD of fcgpu.optim did) fails.
    (On the GPU the same check, tests/test_kernels_gpu.py, meets CuPy's -ftz=true.)"""
    monkeypatch.setattr(FakeArray, "flush_subnormals", True)
    ops, _ = emu_cuda
    check_exact_steps_on_edge_values(ops, _fake, lambda a: np.asarray(a).view(np.ndarray),
                                     dtype)


def test_emulated_dispatch_through_fused(emu_cuda):
    """fcgpu.fused picks fcgpu.cuda.ops for (stand-in) CuPy arrays."""
    rng = np.random.default_rng(3)
    x = _fake(rng.standard_normal((6, 10)).astype(np.float32))
    out, mask = fused.dropout_forward(x, 0.5, 1, 2)
    assert mask is None and isinstance(out, FakeArray)
    ref, _ = fused.dropout_forward_ref(np.asarray(x).view(np.ndarray), 0.5, 1, 2)
    assert bits_equal(np.asarray(out).view(np.ndarray), ref)


def _bn_case(dtype, shape, rng, layout):
    n, d = shape
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, d) + 2.0 * rng.standard_normal(d))
    if layout == "misaligned":
        xf = _misaligned(shape, dtype, rng)
        xf[...] = x.astype(dtype)
    elif layout == "fortran":
        xf = _fake(np.asfortranarray(x.astype(dtype)))
    else:
        xf = _fake(x.astype(dtype))
    gamma = _fake(rng.uniform(0.5, 1.5, d).astype(dtype))
    beta = _fake(rng.standard_normal(d).astype(dtype))
    return xf, gamma, beta


def _np(a):
    return np.array(a).view(np.ndarray)


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_running_stats_through_copies(emu_cuda, dtype):
    """Running statistics that are strided views or of another dtype are updated in
    place through a temporary."""
    ops, _ = emu_cuda
    rng = np.random.default_rng(9)
    x, gamma, beta = _bn_case(dtype, (50, 6), rng, "contiguous")
    other = np.float64 if dtype == np.float32 else np.float32
    big = _fake(np.zeros(12, dtype))
    rm = big[::2]
    rv = _fake(np.ones(6, other))
    ops.bn_forward_train(x, gamma, beta, 1e-5, 0.8, rm, rv)
    x64 = _np(x).astype(np.float64)
    assert np.allclose(_np(rm), 0.2 * x64.mean(axis=0), rtol=1e-5)
    assert np.allclose(_np(big)[1::2], 0)
    assert np.allclose(_np(rv), 0.8 + 0.2 * x64.var(axis=0), rtol=1e-5)
    assert _np(rv).dtype == other


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_bn_large_offset_is_stable(emu_cuda, dtype):
    """Mean 1e4 x std: a one-pass sum of squares (over a chunk, or inside the 8-row
    batches) would lose every digit in fp32."""
    ops, _ = emu_cuda
    rng = np.random.default_rng(5)
    n, d = 4096, 16
    x = _fake((rng.standard_normal((n, d)) + 1e4).astype(dtype))
    gamma, beta = _fake(np.ones(d, dtype)), _fake(np.zeros(d, dtype))
    rm, rv = _fake(np.zeros(d, dtype)), _fake(np.ones(d, dtype))
    _, _, inv_std = ops.bn_forward_train(x, gamma, beta, 1e-5, 0.9, rm, rv)
    var_ref = _np(x).astype(np.float64).var(axis=0)
    var_got = (_np(rv).astype(np.float64) - 0.9) / 0.1  # running_var = 0.9 + 0.1 * var
    assert np.allclose(var_got, var_ref, rtol=2e-3)
    assert np.allclose(_np(inv_std), 1.0 / np.sqrt(var_ref + 1e-5),
                       rtol=1e-3 if dtype == np.float32 else 1e-10)


BN_LAYOUTS = [
    # (N, D, multiprocessors, reduction blocks per SM): chunks of the column
    # reductions from 1 (all rows in one) to 47 (64 rows each), odd leftovers
    (1000, 37, 132, 8), (3000, 4, 132, 8), (513, 8, 4, 8), (490, 500, 2, 1), (3000, 4, 1, 1),
    (7, 3, 132, 8),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,sms,bps", BN_LAYOUTS)
def test_emulated_bn_chunk_layouts(emu_cuda, monkeypatch, dtype, n, d, sms, bps):
    """The two-stage reductions on the chunk layouts of other device sizes."""
    ops, log = emu_cuda
    monkeypatch.setattr(ops, "sm_count", lambda: sms)
    monkeypatch.setattr(ops, "blocks_per_sm", lambda name, threads: bps)
    r, g = chunk_layout(n, d, sms, bps)
    rng = np.random.default_rng(n * 1000 + d)
    x, gamma, beta = _bn_case(dtype, (n, d), rng, "contiguous")
    x64, g64, b64 = (_np(a).astype(np.float64) for a in (x, gamma, beta))
    rm = _fake(rng.standard_normal(d).astype(dtype))
    rv = _fake(rng.uniform(0.5, 2, d).astype(dtype))
    rm_ref, rv_ref = _np(rm).astype(np.float64), _np(rv).astype(np.float64)
    p, seed, stream = 0.8, 99, 2 ** 35 + 1
    log.clear()
    out, mean, inv_std = ops.bn_relu_dropout_forward(x, gamma, beta, 1e-5, 0.9, rm, rv, p,
                                                     seed, stream)
    assert log[0][0].startswith("fcgpu_bn_stats<") and log[0][1] == ((d + 31) // 32, g), \
        (log[0], r, g)
    rm_old, rv_old = rm_ref.copy(), rv_ref.copy()
    want = fused.bn_relu_dropout_forward_ref(x64, g64, b64, 1e-5, 0.9, rm_ref, rv_ref, p, seed,
                                             stream)
    # the tolerance policy of tests/test_fused_contract.py (gpu_util: bn_*_terms)
    terms = bn_forward_terms(x64, g64, b64, want[1], want[2], p)
    rm_terms, rv_terms = bn_running_terms(rm_old, rv_old, 0.9, terms)
    for what, a, w, t in (("out", out, want[0], terms["out"]),
                          ("mean", mean, want[1], terms["mean"]),
                          ("inv_std", inv_std, want[2], terms["inv_std"]),
                          ("running_mean", rm, rm_ref, rm_terms),
                          ("running_var", rv, rv_ref, rv_terms)):
        assert_close(_np(a), w, dtype, what, magnitude=np.broadcast_to(t, w.shape))
    for fused_pass in (False, True):
        dout = _fake((rng.standard_normal((n, d)) + 0.25).astype(dtype))
        d64 = _np(dout).astype(np.float64)
        m64, i64 = _np(mean).astype(np.float64), _np(inv_std).astype(np.float64)
        if fused_pass:
            o64 = _np(out).astype(np.float64)
            got = ops.bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p)
            want = fused.bn_relu_dropout_backward_ref(d64, o64, x64, g64, m64, i64, p)
            dy = fused.relu_dropout_backward_ref(d64, o64, p)
        else:
            got = ops.bn_backward(dout, x, gamma, mean, inv_std)
            want = fused.bn_backward_ref(d64, x64, g64, m64, i64)
            dy = d64
        for what, a, w, t in zip(("dx", "dgamma", "dbeta"), got, want,
                                 bn_backward_terms(dy, x64, g64, m64, i64, want[1])):
            assert_close(_np(a), w, dtype, what, magnitude=t)


def test_emulated_empty_shapes(emu_cuda):
    ops, log = emu_cuda
    for dtype in DTYPES:
        x = _fake(np.ones((0,), dtype))
        assert ops.dropout_forward(x, 0.5, 1, 2)[0].shape == (0,)
        assert ops.relu_dropout_forward(x, 0.5, 1, 2).shape == (0,)
        assert ops.dropout_mask((0, 3), 0.5, 1, 2).shape == (0, 3)
        x = _fake(np.ones((4, 0), dtype))
        e = _fake(np.ones(0, dtype))
        out, mean, inv_std = ops.bn_forward_train(x, e, e, 1e-5, 0.9, _fake(np.ones(0, dtype)),
                                                  _fake(np.ones(0, dtype)))
        assert out.shape == (4, 0) and mean.shape == (0,)
        assert ops.bn_forward_infer(x, e, e, 1e-5, e, e).shape == (4, 0)
        dx, dg, db = ops.bn_backward(x, x, e, e, e)
        assert dx.shape == (4, 0) and dg.shape == (0,)
        out, _, _ = ops.bn_relu_dropout_forward(x, e, e, 1e-5, 0.9, _fake(np.ones(0, dtype)),
                                                _fake(np.ones(0, dtype)), 0.5, 1, 2)
        assert out.shape == (4, 0)


# ----------------------------------------------------------------- (f) past 2^32 elements
# fcgpu_col_flat takes the column of a Philox block's first element with a 32-bit
# remainder while n = N*D fits in 32 bits, and a 64-bit one past that. A whole
# (N, D) array past 2^32 elements is far too big to emulate, so the kernel runs here
# on a grid of one Philox block per thread (a valid launch of a grid-stride kernel)
# of which only a few blocks execute: those around flat index 2^32 and at the end.
# Its array arguments point at small host buffers offset by the window's start, so
# the kernel's own 64-bit index arithmetic reaches them (and canaries around them).
# The launch runs in a forked child: a kernel that strays far outside the window
# fails the test (a segfault there) instead of ending the whole run.

_COL_PARAMS = ["{T} const*", "{T} const*", "{T} const*", "{T}*", "unsigned long long",
               "unsigned long long", "{T} const*", "{T} const*", "{T} const*", "{T} const*",
               "unsigned long long", "unsigned long long", "unsigned long long", "{T}",
               "unsigned long long const*"]


def _window_buffer(values, guard=64):
    """``values`` with NaN canaries on both sides, in memory shared with forked
    children: (array, canaries)."""
    size = (values.size + 2 * guard) * values.itemsize
    buf = np.frombuffer(mmap.mmap(-1, size), dtype=values.dtype)
    buf[...] = np.nan
    buf[guard:guard + values.size] = values
    return buf, guard


def _in_child(fn):
    """fn() in a forked child; its exit status (a signal: a crash) is asserted."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            code = int(fn())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), \
        "the kernel crashed (signal %d): it reached memory outside its window" \
        % os.WTERMSIG(status)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


@pytest.mark.parametrize("dtype,op", [(np.float32, 2), (np.float64, 2), (np.float32, 4),
                                      (np.float64, 4)])
@pytest.mark.parametrize("past_2_32", [False, True])
def test_emulated_col_flat_windows_near_2_32_elements(emu_lib, kernel_signatures, launch_bounds,
                                                       dtype, op, past_2_32):
    T = "float" if dtype == np.float32 else "double"
    name = "fcgpu_col_flat<%s, %d>" % (T, op)
    assert kernel_signatures[name] == [p.format(T=T) for p in _COL_PARAMS]
    threads = 256
    assert launch_bounds is None or threads <= launch_bounds[name]
    D = 5  # odd: the flat path, and columns wrap inside Philox blocks
    N = (2 ** 32 + 4099) // D + 2 if past_2_32 else (2 ** 32 - 1) // D
    n = N * D
    assert (n > 2 ** 32) == past_2_32 and n % 4 != 0  # (a tail block too)
    nblk = (n + 3) // 4
    grid = (nblk + threads - 1) // threads
    per_cta = 4 * threads  # elements one block of the launch covers
    rng = np.random.default_rng(op * 2 + past_2_32)
    p0, p1, p2, p3 = (rng.standard_normal(D).astype(dtype) for _ in range(4))
    seed, stream, p = 2 ** 35 + 3, 2 ** 33 + 7, 0.6
    t = frandom.keep_threshold(p)
    s = frandom.dropout_scale(p, dtype)
    first_ctas = [2 ** 32 // per_cta - 1, grid - 2] if past_2_32 else [grid - 2]
    for cta in first_ctas:
        e0 = cta * per_cta
        e1 = min(n, (cta + 2) * per_cta)  # two blocks of the launch
        m = e1 - e0
        a, b, c = (rng.standard_normal(m).astype(dtype) for _ in range(3))
        b[rng.random(m) < 0.3] = 0  # (op 4: out == 0 is a dropped or dead unit)
        ins = [_window_buffer(v) for v in (a, b, c)]
        ybuf, guard = _window_buffer(np.full(m, np.nan, dtype))
        item = np.dtype(dtype).itemsize

        def at(buf, g):  # a pointer that makes buf[g] element e0 of a huge array
            return ctypes.c_void_p(buf.ctypes.data + (g - e0) * item)
        vals = [at(*ins[0]), at(*ins[1]), at(*ins[2]), at(ybuf, guard),
                ctypes.c_uint64(N), ctypes.c_uint64(D)]
        vals += [ctypes.c_void_p(v.ctypes.data) for v in (p0, p1, p2, p3)]
        vals += [ctypes.c_uint64(seed), ctypes.c_uint64(stream), ctypes.c_uint64(t),
                 (ctypes.c_float if dtype == np.float32 else ctypes.c_double)(float(s)),
                 ctypes.c_uint64(0)]
        params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        _in_child(lambda: emu_lib.emu_launch_blocks(name.encode(), grid, 1, 1, threads, 1, 1,
                                                    params, ctypes.c_uint64(cta),
                                                    ctypes.c_uint64(2)))
        for buf, g in ins + [(ybuf, guard)]:
            assert np.isnan(buf[:g]).all() and np.isnan(buf[g + m:]).all(), \
                "%s wrote outside elements [%d, %d)" % (name, e0, e1)
        y = ybuf[guard:guard + m]
        # the reference, element by element in the array dtype (the host build does
        # not contract a*b+c into an FMA, so it rounds the same)
        col = np.arange(e0, e1, dtype=np.uint64) % np.uint64(D)
        q0, q1, q2, q3 = p0[col], p1[col], p2[col], p3[col]
        if op == 2:
            keep = mask_window(e0, e1, p, seed, stream)
            ref = np.where(keep, np.maximum((a - q0) * q1 + q2, dtype(0)) * s, dtype(0))
        else:
            dy = np.where(b > 0, a * s, dtype(0))
            ref = q1 * dy + (q2 * (c - q0) + q3)
        assert bits_equal(y, ref.astype(dtype)), \
            "%s: elements [%d, %d) of n = %d differ" % (name, e0, e1, n)
