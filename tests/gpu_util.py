"""Helpers for the kernel tests: tolerances, Philox mask windows, GPU guards.

Imported by the kernel tests (tests/test_fused_contract.py, test_kernels_*.py), on the
CPU and on a GPU. Nothing here imports CuPy unless a GPU helper is called.
"""
from __future__ import annotations

import numpy as np
import pytest

from fcgpu import random as frandom
from fcgpu.backend import cupy_status

# ----------------------------------------------------------------- tolerances


def rel_err(actual, ref):
    """Normwise relative error ||actual - ref|| / ||ref|| in float64."""
    actual = np.asarray(actual, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(actual - ref) / (denom if denom > 0 else 1.0))


def tolerance(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def assert_close(actual, ref, dtype, what="", magnitude=None):
    """fp32: normwise relative error < 1e-5 and max error < 1e-5 * max |ref|;
    fp64: the same at 1e-12. ``magnitude`` (same shape as ref) replaces |ref| as
    the scale where the result comes out of cancellation (batchnorm backward): then
    errors are measured against the size of the terms that cancel."""
    tol = tolerance(dtype)
    actual = np.asarray(actual, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    mag = ref if magnitude is None else np.asarray(magnitude, dtype=np.float64).ravel()
    assert actual.shape == ref.shape == mag.shape, what
    assert np.isfinite(actual).all(), "%s: non-finite values" % what
    err = rel_err(actual, ref) if magnitude is None else float(
        np.linalg.norm(actual - ref) / max(np.linalg.norm(mag), 1e-300))
    assert err < tol, "%s: normwise relative error %.3g" % (what, err)
    scale = max(np.abs(mag).max(initial=0.0), 1e-300)
    assert np.abs(actual - ref).max(initial=0.0) <= tol * scale, \
        "%s: max error %.3g (scale %.3g)" % (what, np.abs(actual - ref).max(), scale)


# The tolerance policy for batchnorm (docs/numerics.md: "within a relative error of
# 1e-5 in float32 and 1e-12 in float64 ... against the size of the terms that
# cancel"): each result is held, with assert_close(..., magnitude=terms), to the
# magnitudes of what its computation adds up, in float64. Where nothing cancels these
# are within a small factor of |result|; where x - mean cancels (two rows, or a column
# whose values sit close together), or a sum of signed terms does, they are the size
# that rounding works on, and an error relative to |result| would measure noise.

def _f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def bn_forward_terms(x, gamma, beta, mean, inv_std, p=1.0):
    """``{"out", "mean", "inv_std", "var"}``: the terms behind batchnorm's training
    forward on float64 ``x`` (``mean``, ``inv_std``: the float64 reference's).
    ``mean`` sums signed values: the terms are mean(|x|). The variance sums squares,
    and the rounding of the mean drops out of it to first order (the deviations sum to
    zero), so inv_std and var are held to themselves. ``out`` = (x - mean) * inv_std *
    gamma + beta (scaled by 1/p where kept) carries the rounding of x - mean, which is
    that of |x| + |mean| however close x and mean are."""
    x, gamma, beta, mean, inv_std = _f64(x, gamma, beta, mean, inv_std)
    out = (np.abs(gamma) * inv_std * (np.abs(x) + np.abs(mean)) + np.abs(beta)) / p
    return {"out": out, "mean": np.mean(np.abs(x), axis=0), "inv_std": inv_std,
            "var": 1.0 / inv_std ** 2}


def bn_running_terms(old_mean, old_var, momentum, terms):
    """Terms of ``running = momentum * running + (1 - momentum) * batch statistic``."""
    old_mean, old_var = _f64(old_mean, old_var)
    return (momentum * np.abs(old_mean) + (1 - momentum) * terms["mean"],
            momentum * np.abs(old_var) + (1 - momentum) * terms["var"])


def bn_infer_terms(x, gamma, beta, running_mean, running_var, eps):
    """Terms of (x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    x, gamma, beta, rm, rv = _f64(x, gamma, beta, running_mean, running_var)
    return np.abs(gamma) * (np.abs(x) + np.abs(rm)) / np.sqrt(rv + eps) + np.abs(beta)


def bn_backward_terms(dy, x, gamma, mean, inv_std, dgamma):
    """``(dx terms, dgamma terms, dbeta terms)`` of batchnorm's backward on the
    upstream gradient ``dy`` (after ReLU and dropout for the fused pass): dgamma =
    sum(dy * xhat) and dbeta = sum(dy) are sums that can cancel, and
    dx = gamma * inv_std / N * (N * dy - dbeta - xhat * dgamma) cancels by design."""
    dy, x, gamma, mean, inv_std, dgamma = _f64(dy, x, gamma, mean, inv_std, dgamma)
    n = x.shape[0]
    xterm = (np.abs(x) + np.abs(mean)) * inv_std   # |xhat| with the rounding of x - mean
    sdy = np.sum(np.abs(dy), axis=0)
    sxy = np.sum(np.abs(dy) * xterm, axis=0)
    dx = np.abs(gamma) * inv_std * (np.abs(dy) + (sdy + xterm * (np.abs(dgamma) + sxy)) / n)
    return dx, sxy, sdy


def bits_equal(a, b):
    """Same dtype, shape and bytes (so -0.0 != 0.0 and NaN payloads count)."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


# ----------------------------------------------------------------- Philox windows

def mask_window(start, stop, p, seed, stream):
    """Keep mask of flat elements [start, stop) of any tensor (NumPy, from the xp
    reference generator): for checking huge arrays at a few places."""
    t = frandom.keep_threshold(p)
    if t is None:
        return np.ones(stop - start, dtype=bool)
    j0, j1 = start // 4, (stop + 3) // 4
    j = np.arange(j0, j1, dtype=np.uint64)
    m = np.uint64(0xFFFFFFFF)
    counter = np.stack([j & m, j >> np.uint64(32),
                        np.full(j.size, stream & 0xFFFFFFFF, np.uint64),
                        np.full(j.size, stream >> 32, np.uint64)], axis=-1)
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint64)
    r = frandom.philox4x32_10(counter, key).reshape(-1)
    off = start - 4 * j0
    return r[off:off + (stop - start)] < np.uint32(t)


# ----------------------------------------------------------------- GPU guards

CUPY_OK, CUPY_WHY = cupy_status()
requires_gpu = pytest.mark.skipif(not CUPY_OK, reason="needs CuPy and a CUDA device: %s"
                                  % (CUPY_WHY,))


def cupy():
    from fcgpu.backend import require_cupy
    return require_cupy()


def free_device_bytes():
    cp = cupy()
    cp.get_default_memory_pool().free_all_blocks()
    return int(cp.cuda.Device().mem_info[0])


def need_device_bytes(nbytes, what):
    free = free_device_bytes()
    if free < nbytes:
        pytest.skip("%s needs %.1f GiB of free GPU memory, %.1f GiB free"
                    % (what, nbytes / 2 ** 30, free / 2 ** 30))
