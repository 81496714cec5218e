"""Small test helpers shared by the test modules."""
import numpy as np

from fcgpu.backend import asnumpy


def rel_error(a, b):
    a = asnumpy(a).astype(np.float64)
    b = asnumpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def assert_close_to_ref(actual, ref, rtol=1e-5):
    """Norm-wise relative error of ``actual`` against a float64 reference."""
    a = asnumpy(actual).astype(np.float64)
    r = asnumpy(ref).astype(np.float64)
    assert a.shape == r.shape, (a.shape, r.shape)
    denom = max(np.linalg.norm(r), 1e-30)
    err = np.linalg.norm(a - r) / denom
    assert err < rtol, "relative error %.3g >= %.3g" % (err, rtol)
    # and elementwise, scaled by the data's magnitude
    scale = np.max(np.abs(r)) + 1e-30
    assert np.max(np.abs(a - r)) <= 10 * rtol * scale


def num_grad(f, x, df, h=1e-6):
    """Numerical gradient of sum(f(x) * df) for arrays of any module (float64)."""
    from fcgpu.gradient_check import eval_numerical_gradient_array
    return eval_numerical_gradient_array(f, x, df, h=h)


def max_rel_error(a, b):
    """Max abs difference over the max magnitude: for gradients with entries that are
    zero up to rounding (batchnorm with N=2), where elementwise ratios are noise."""
    a = asnumpy(a).astype(np.float64)
    b = asnumpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300))
