"""Small test helpers shared by the test modules."""
import numpy as np

from fcgpu.backend import asnumpy
from fcgpu.cuda import train_ops


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


def grad_error(a, b, floor=1e-3):
    """Elementwise relative error with each denominator floored at ``floor`` times the
    largest ``|a| + |b|``: a central difference of a linear function carries rounding
    of about eps * |f| / h in every entry, which an entry 1000x below the largest
    turns into a relative error the check would blame on the gradient."""
    a = asnumpy(a).astype(np.float64)
    b = asnumpy(b).astype(np.float64)
    mag = np.abs(a) + np.abs(b)
    return float(np.max(np.abs(a - b) / np.maximum(floor * mag.max(), np.maximum(1e-8, mag))))


def edge_floats(dtype, rng, n=4099):
    """``n`` shuffled values of ``dtype`` on which flush-to-zero and sign handling
    show: about a quarter subnormals of both signs (random ones and the extremes),
    values just above the smallest normal, +0.0, -0.0, NaN, +-inf, and standard
    normal values for the rest."""
    dtype = np.dtype(dtype)
    fi = np.finfo(dtype)
    uint = np.uint32 if dtype == np.float32 else np.uint64
    k = n // 4
    sub = rng.integers(1, 1 << (fi.nmant), k, dtype=np.uint64).astype(uint).view(dtype)
    sub = np.where(rng.random(k) < 0.5, -sub, sub)
    near = (fi.tiny * rng.uniform(1.0, 4.0, k // 2)).astype(dtype)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, fi.tiny, -fi.tiny,
                        fi.smallest_subnormal, -fi.smallest_subnormal,
                        np.nextafter(fi.tiny, 0, dtype=dtype)], dtype=dtype)
    rest = rng.standard_normal(max(0, n - sub.size - near.size - special.size)).astype(dtype)
    out = np.concatenate([sub, near, -near[: near.size // 2], special, rest])[:n]
    rng.shuffle(out)
    return out


def is_subnormal(a):
    a = np.asarray(a)
    return (a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)


def bits_equal_nan(a, b):
    """Same dtype, shape and bytes, except that a NaN matches any NaN (GPUs return a
    canonical NaN where x86 propagates the input's payload)."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb)) and np.array_equal(a[~na].view(np.uint8),
                                                           b[~nb].view(np.uint8))


def check_exact_steps_on_edge_values(ops, dev, host, dtype, seed=0):
    """The CUDA steps that promise NumPy's results bit for bit (fcgpu.cuda.ops:
    dropout forward and backward, ReLU + dropout forward and backward, Adam, the
    device-lr SGD / momentum / RMSProp updates, and the plain SGD / momentum /
    RMSProp steps of fcgpu.optim on device arrays) against the xp references on
    :func:`edge_floats`, contiguous (vector path) and misaligned (scalar path). A NaN
    only has to stay a NaN. ``dev``/``host`` move arrays to and from the device."""
    from fcgpu import fused, fused_optim, optim

    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    assert is_subnormal(np.array([np.finfo(dtype).tiny], dtype) / dtype.type(4)).all(), \
        "NumPy itself flushes subnormals here (FTZ/DAZ set in this process)"
    sd, st = 2 ** 40 + 7, 2 ** 33 + 1

    def views(*hosts):
        """Contiguous device copies, then views starting one element in."""
        yield [dev(h) for h in hosts], list(hosts)
        yield ([dev(np.concatenate([h[:1], h]))[1:] for h in hosts], list(hosts))

    x = edge_floats(dtype, rng)
    dout = edge_floats(dtype, rng)
    with np.errstate(all="ignore"):
        for p in (0.8, 0.3, 1.0):
            for (xd, dd), (xh, dh) in views(x, dout):
                tag = "%s p=%g %s" % (dtype.name, p, "aligned" if xd.data.ptr % 16 == 0
                                      else "misaligned")
                ref, _ = fused.dropout_forward_ref(xh, p, sd, st)
                if p < 1:
                    assert is_subnormal(ref).any(), tag
                out, _ = ops.dropout_forward(xd, p, sd, st)
                assert bits_equal_nan(host(out), ref), "dropout_forward " + tag
                assert bits_equal_nan(host(ops.dropout_backward(dd, p, sd, st, None)),
                                      fused.dropout_backward_ref(dh, p, sd, st)), \
                    "dropout_backward " + tag
                yref = fused.relu_dropout_forward_ref(xh, p, sd, st)
                y = ops.relu_dropout_forward(xd, p, sd, st)
                assert bits_equal_nan(host(y), yref), "relu_dropout_forward " + tag
                assert bits_equal_nan(host(ops.relu_dropout_backward(dd, dev(yref), p)),
                                      fused.relu_dropout_backward_ref(dh, yref, p)), \
                    "relu_dropout_backward " + tag

        def finite(v):
            return np.where(np.isfinite(v), v, dtype.type(0.5)).astype(dtype)

        w = rng.standard_normal(x.size).astype(dtype)
        g, m0, v0 = finite(x), finite(dout), np.abs(finite(edge_floats(dtype, rng)))
        for (wd, gd, md, vd), (wh, gh, mh, vh) in views(w, g, m0, v0):
            mh, vh = mh.copy(), vh.copy()
            ref = fused_optim.adam_step_ref(wh, gh, mh, vh, 1e-3, 0.9, 0.999, 1e-8, 3)
            assert is_subnormal(mh).any() and is_subnormal(vh).any()
            out = train_ops.adam_step(wd, gd, md, vd, 1e-3, 0.9, 0.999, 1e-8, 3)
            assert bits_equal_nan(host(out), ref), "adam next_w"
            assert bits_equal_nan(host(md), mh) and bits_equal_nan(host(vd), vh), "adam m, v"
            for code, rule, key in ((train_ops.RULE_SGD, "sgd", None),
                                    (train_ops.RULE_SGD_MOMENTUM, "sgd_momentum", "velocity"),
                                    (train_ops.RULE_SGD_NESTEROV, "sgd_nesterov", "velocity"),
                                    (train_ops.RULE_RMSPROP, "rmsprop", "cache")):
                wd2, sd2 = dev(wh.copy()), dev(vh.copy())
                cfg = {"learning_rate": 1e-3, "momentum": 0.9, "decay_rate": 0.9,
                       "epsilon": 1e-8}
                if key:
                    cfg[key] = vh.copy()
                ref, cfg = optim.RULES[rule](wh, gh, cfg)
                train_ops.rule_step_device(code, wd2, gd, sd2 if key else None,
                                     dev(np.array([1e-3])), h=0.9, eps=1e-8)
                assert bits_equal_nan(host(wd2), ref), rule
                if key:
                    assert bits_equal_nan(host(sd2), cfg[key]), rule + " state"
                # the plain step: fcgpu.optim's rule itself on device arrays
                dcfg = {"learning_rate": 1e-3, "momentum": 0.9, "decay_rate": 0.9,
                        "epsilon": 1e-8}
                if key:
                    dcfg[key] = dev(vh.copy())
                out, dcfg = optim.RULES[rule](wd, gd, dcfg)
                assert bits_equal_nan(host(out), ref), rule + " (optim, plain step)"
                if key:
                    assert bits_equal_nan(host(dcfg[key]), cfg[key]), rule + " state (optim)"


def stopped_and_resumed(make, data, path, kw, epochs=4, stop_at=2):
    """A run of ``epochs`` stopped after epoch ``stop_at`` (its checkpoint written at
    ``path`` from the epoch callback, as ``fcgpu train`` does), then resumed by a fresh
    Solver given another ``augment_seed`` (the state's must win) and trained to the
    end; returns that Solver. ``make(data, epochs=..., **kw)`` builds a Solver."""
    import pytest

    class Stop(Exception):
        pass

    def stop(solver):
        if solver.epoch == stop_at:
            solver.save_checkpoint(str(path))
            raise Stop

    first = make(data, epochs=epochs, epoch_callback=stop, **kw)
    with pytest.raises(Stop):
        first.train()
    rest = make(data, epochs=epochs, **dict(kw, augment_seed=1))
    rest.load_checkpoint(str(path))
    rest.train()
    return rest
