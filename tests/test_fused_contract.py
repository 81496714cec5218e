"""One contract per fused step, run over every implementation (as CuPy's
``numpy_cupy_allclose`` runs one test body on NumPy and CuPy):

* ``reference``: the plain array code of :mod:`fcgpu.fused_ref` (and
  :func:`fcgpu.fused_optim.adam_step_ref`), in the array dtype;
* ``numba``: the compiled CPU passes of :mod:`fcgpu.cpu.ops`;
* ``emulated``: our CUDA kernels built for the host (tests/host/kernel_emu.cpp) behind
  the NumPy stand-in for CuPy of tests/test_kernels_host.py (launch arguments, block
  sizes and the arrays' canaries checked on every launch);
* ``gpu``: the kernels on a GPU through CuPy (skips with the reason where there is
  none; ``FCGPU_REQUIRE_GPU=1`` makes that a failure).

Each test calls the public steps of :mod:`fcgpu.fused` (and ``fused_optim.adam_step``)
inside ``fused.force_impl(...)``, so the dispatch point is part of the contract, on
fresh random inputs (the seed is printed; ``FCGPU_TEST_SEED`` replays it) in several
memory layouts (contiguous, misaligned by one element, transposed or Fortran order,
strided).

One tolerance policy (docs/numerics.md):

* **exact** (same dtype, shape and bits) for the steps numerics.md promises bit for
  bit: dropout forward and backward, ReLU + dropout forward and backward, the keep
  masks, and Adam, against the reference computed in the array dtype; and for the
  dropout inside the fused batchnorm pass: every dropped unit is exactly +0.0;
* **within 1e-5 (float32) / 1e-12 (float64)** of a float64 reference for batchnorm
  and the fused batchnorm-ReLU-dropout pass, normwise and in the largest element,
  relative to the size of the terms each result adds up (tests/gpu_util.py:
  ``bn_*_terms``), which is about |result| where nothing cancels; and for Adam, too,
  relative to |result|.
"""
from __future__ import annotations

import numpy as np
import pytest

from fcgpu import fused, fused_optim
from fcgpu import fused_ref as ref
from fcgpu import random as frandom
from gpu_util import (CUPY_OK, CUPY_WHY, assert_close, bits_equal, bn_backward_terms,
                      bn_forward_terms, bn_infer_terms, bn_running_terms)

DTYPES = [np.float32, np.float64]
EPS, MOMENTUM = 1e-5, 0.9

# (shape, layout); the "big" ones do not run on the emulator (one thread at a time)
FLAT_CASES = [((1,), "contiguous"), ((3,), "contiguous"), ((4,), "contiguous"),
              ((5,), "contiguous"), ((1001,), "contiguous"), ((37, 11), "contiguous"),
              ((64, 16), "contiguous"), ((130, 257), "contiguous"), ((3, 5, 7), "contiguous"),
              ((257,), "misaligned"), ((9, 12), "misaligned"), ((7, 12), "fortran"),
              ((13,), "strided"), ((6, 5), "strided")]
FLAT_BIG = [(((1 << 20) + 3,), "contiguous"), ((490, 500), "misaligned")]
BN_SHAPES = [(2, 5), (2, 1), (2, 4), (7, 3), (64, 8), (130, 37), (490, 100), (300, 4)]
BN_BIG = [(31, 1), (490, 500), (1000, 100), (4097, 12), (65, 4096)]
BN_LAYOUTS = ["contiguous", "misaligned", "fortran"]
MASK_SHAPES = [(0,), (1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,), (9,), (1023,), (4099,),
               (7, 13), (0, 3)]
MASK_BIG = [(1000003,), (64, 4096)]


class Impl:
    """One implementation: the name ``force_impl`` takes, its array module, how to
    make its arrays from host values in a layout, and how to read them back."""

    def __init__(self, name, forced, xp, empty, host, big=True):
        self.name, self.forced, self.xp = name, forced, xp
        self._empty, self._host, self.big = empty, host, big

    def force(self):
        return fused.force_impl(self.forced)

    def host(self, a):
        return None if a is None else np.ascontiguousarray(self._host(a))

    def put(self, h, layout="contiguous"):
        """An array of this implementation holding ``h`` in ``layout``."""
        h = np.asarray(h)
        if layout == "contiguous":
            a = self._empty(h.shape, h.dtype)
        elif layout == "misaligned":  # one element past a 16-byte boundary
            a = self._empty((h.size + 1,), h.dtype)[1:].reshape(h.shape)
        elif layout == "fortran":
            a = self._empty(h.shape[::-1], h.dtype).T
        elif layout == "strided":
            a = self._empty(h.shape[:-1] + (2 * h.shape[-1],), h.dtype)[..., ::2]
        else:
            raise ValueError(layout)
        a[...] = self.xp.asarray(h) if self.forced == "cuda" else h
        return a

    def cases(self, common, big):
        return list(common) + (list(big) if self.big else [])


def _emulated(request):
    import test_kernels_host as tkh
    _, _, fake = tkh._install_fake_cuda(request.getfixturevalue("kernel_signatures"),
                                        request.getfixturevalue("launch_bounds"),
                                        request.getfixturevalue("monkeypatch"),
                                        request.getfixturevalue("emu_lib"))
    return Impl("emulated", "cuda", fake, fake.guards.empty,
                lambda a: np.array(a).view(np.ndarray), big=False)


@pytest.fixture(params=["reference", "numba", "emulated",
                        pytest.param("gpu", marks=pytest.mark.gpu)])
def impl(request):
    if request.param == "reference":
        return Impl("reference", "reference", np, np.empty, np.asarray)
    if request.param == "numba":
        return Impl("numba", "numba", np, np.empty, np.asarray)
    if request.param == "emulated":
        return _emulated(request)
    if not CUPY_OK:
        pytest.skip("needs CuPy and a CUDA device: %s" % (CUPY_WHY,))
    from gpu_util import cupy
    cp = cupy()
    return Impl("gpu", "cuda", cp, cp.empty, cp.asnumpy)


def _seed_stream(rng):
    return (int(rng.integers(2 ** 64, dtype=np.uint64)),
            int(rng.integers(2 ** 64, dtype=np.uint64)))


def assert_exact(got, want, what):
    assert bits_equal(got, want), "%s: not bit-identical to the reference" % what


# ----------------------------------------------------------------- dropout family

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.3, 0.8, 1.0])
def test_dropout(impl, rng, dtype, p):
    """Forward, and backward both from a stored mask and regenerating it: NumPy's bits."""
    seed, stream = _seed_stream(rng)
    for shape, layout in impl.cases(FLAT_CASES, FLAT_BIG):
        tag = "%s %s %s" % (impl.name, shape, layout)
        xh = rng.standard_normal(shape).astype(dtype)
        dh = rng.standard_normal(shape).astype(dtype)
        want, want_mask = ref.dropout_forward_ref(xh, p, seed, stream)
        dwant = ref.dropout_backward_ref(dh, p, seed, stream)
        with impl.force():
            out, mask = fused.dropout_forward(impl.put(xh, layout), p, seed, stream)
            d = impl.put(dh, layout)
            dx = fused.dropout_backward(d, p, seed, stream, mask)
            dx_regen = fused.dropout_backward(d, p, seed, stream, None)
        assert_exact(impl.host(out), want, "dropout_forward " + tag)
        if mask is not None:
            assert np.array_equal(impl.host(mask), want_mask), tag
        assert_exact(impl.host(dx), dwant, "dropout_backward " + tag)
        assert_exact(impl.host(dx_regen), dwant, "dropout_backward (regenerated) " + tag)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.5, 1.0])
def test_relu_dropout(impl, rng, dtype, p):
    """dropout(relu(x)) and its backward through ``out > 0``: NumPy's bits."""
    seed, stream = _seed_stream(rng)
    for shape, layout in impl.cases(FLAT_CASES, FLAT_BIG):
        tag = "%s %s %s" % (impl.name, shape, layout)
        xh = rng.standard_normal(shape).astype(dtype)
        dh = rng.standard_normal(shape).astype(dtype)
        want = ref.relu_dropout_forward_ref(xh, p, seed, stream)
        with impl.force():
            out = fused.relu_dropout_forward(impl.put(xh, layout), p, seed, stream)
            dx = fused.relu_dropout_backward(impl.put(dh, layout), out, p)
        assert_exact(impl.host(out), want, "relu_dropout_forward " + tag)
        assert_exact(impl.host(dx), ref.relu_dropout_backward_ref(dh, want, p),
                     "relu_dropout_backward " + tag)


@pytest.mark.parametrize("p", [0.25, 0.8, 1.0])
def test_dropout_mask(impl, rng, p):
    seed, stream = _seed_stream(rng)
    for shape in impl.cases(MASK_SHAPES, MASK_BIG):
        with impl.force():
            m = fused.dropout_mask(shape, p, seed, stream, xp=impl.xp)
        got = impl.host(m)
        assert got.dtype == np.bool_ and got.shape == shape, (impl.name, shape)
        assert np.array_equal(got, frandom.dropout_mask_reference(shape, p, seed, stream)), \
            (impl.name, shape)


# ----------------------------------------------------------------- batchnorm

def _bn_case(rng, shape, dtype):
    """x with per-column scales and offsets (so x - mean cancels in some columns),
    gamma and beta of both signs, running statistics."""
    n, d = shape
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, d)
         + 2.0 * rng.standard_normal(d)).astype(dtype)
    gamma, beta, rm = (rng.standard_normal(d).astype(dtype) for _ in range(3))
    rv = rng.uniform(0.5, 2.0, d).astype(dtype)
    return x, gamma, beta, rm, rv


def _bn_cases(impl):
    return [(s, lay) for s in BN_SHAPES for lay in BN_LAYOUTS] + \
        ([(s, "contiguous") for s in BN_BIG] if impl.big else [])


def _f64(*arrays):
    """float64 copies (never the arrays themselves: the references update some in place)."""
    return [np.array(a, dtype=np.float64) for a in arrays]


def _check_bn_forward(impl, got, want, x, gamma, beta, rm_old, rv_old, p, dtype, tag):
    """The training forward's outputs and running statistics (on the device: ``got``
    is (out, mean, inv_std, running_mean, running_var)) against the float64 reference
    ``want`` of the same, within the terms."""
    out, mean, inv_std, rm, rv = (impl.host(a) for a in got)
    assert out.dtype == mean.dtype == inv_std.dtype == dtype, tag
    terms = bn_forward_terms(x, gamma, beta, want[1], want[2], p)
    rm_terms, rv_terms = bn_running_terms(rm_old, rv_old, MOMENTUM, terms)
    for what, a, w, t in (("out", out, want[0], terms["out"]),
                          ("mean", mean, want[1], terms["mean"]),
                          ("inv_std", inv_std, want[2], terms["inv_std"]),
                          ("running_mean", rm, want[3], rm_terms),
                          ("running_var", rv, want[4], rv_terms)):
        assert_close(a, w, dtype, "%s %s" % (what, tag), magnitude=np.broadcast_to(t, w.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bn_forward_train_and_infer(impl, rng, dtype):
    """Statistics, output and running statistics (updated in place, in the arrays
    given), then the inference pass on those running statistics."""
    for shape, layout in _bn_cases(impl):
        tag = "%s %s %s" % (impl.name, shape, layout)
        x, g, b, rm, rv = _bn_case(rng, shape, dtype)
        x64, g64, b64, rm64, rv64 = _f64(x, g, b, rm, rv)
        want = ref.bn_forward_train_ref(x64, g64, b64, EPS, MOMENTUM, rm64, rv64)
        rmd, rvd = impl.put(rm), impl.put(rv)
        with impl.force():
            got = fused.bn_forward_train(impl.put(x, layout), impl.put(g), impl.put(b), EPS,
                                         MOMENTUM, rmd, rvd)
        _check_bn_forward(impl, got + (rmd, rvd), want + (rm64, rv64), x, g, b, rm, rv, 1.0,
                          dtype, tag)
        rm2, rv2 = impl.host(rmd), impl.host(rvd)
        with impl.force():
            out = fused.bn_forward_infer(impl.put(x, layout), impl.put(g), impl.put(b), EPS,
                                         impl.put(rm2), impl.put(rv2))
        w = ref.bn_forward_infer_ref(x64, g64, b64, EPS, *_f64(rm2, rv2))
        assert_close(impl.host(out), w, dtype, "infer " + tag,
                     magnitude=bn_infer_terms(x, g, b, rm2, rv2, EPS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.8, 0.3, 1.0])
def test_bn_relu_dropout_forward(impl, rng, dtype, p):
    """The fused pass: within the terms, and its dropout exact (every unit the mask
    drops is +0.0)."""
    seed, stream = _seed_stream(rng)
    for shape, layout in _bn_cases(impl):
        tag = "%s %s %s p=%g" % (impl.name, shape, layout, p)
        x, g, b, rm, rv = _bn_case(rng, shape, dtype)
        x64, g64, b64, rm64, rv64 = _f64(x, g, b, rm, rv)
        want = ref.bn_relu_dropout_forward_ref(x64, g64, b64, EPS, MOMENTUM, rm64, rv64, p,
                                               seed, stream)
        rmd, rvd = impl.put(rm), impl.put(rv)
        with impl.force():
            got = fused.bn_relu_dropout_forward(impl.put(x, layout), impl.put(g), impl.put(b),
                                                EPS, MOMENTUM, rmd, rvd, p, seed, stream)
        _check_bn_forward(impl, got + (rmd, rvd), want + (rm64, rv64), x, g, b, rm, rv, p,
                          dtype, tag)
        dropped = ~frandom.dropout_mask_reference(shape, p, seed, stream)
        uint = np.uint32 if dtype == np.float32 else np.uint64
        assert not np.any(impl.host(got[0])[dropped].view(uint)), "a dropped unit " + tag


def _bn_backward_inputs(rng, shape, dtype, p=None):
    """dout, x, gamma, mean, inv_std (and the fused pass's out) in ``dtype``: the
    statistics and out those of the reference forward, rounded to ``dtype``."""
    x, g, b, rm, rv = _bn_case(rng, shape, dtype)
    seed, stream = _seed_stream(rng)
    if p is None:
        fwd = ref.bn_forward_train_ref(*_f64(x, g, b), EPS, MOMENTUM, *_f64(rm, rv))
    else:
        fwd = ref.bn_relu_dropout_forward_ref(*_f64(x, g, b), EPS, MOMENTUM, *_f64(rm, rv),
                                              p, seed, stream)
    out, mean, inv_std = (a.astype(dtype) for a in fwd)
    dout = (rng.standard_normal(shape) + 0.3).astype(dtype)
    return dout, out, x, g, mean, inv_std


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [None, 0.7, 1.0])
def test_bn_backward(impl, rng, dtype, p):
    """dx, dgamma, dbeta of batchnorm (p None) and of the fused pass (through
    ``out > 0``, the ReLU gate and the keep mask at once), within the terms."""
    for shape, layout in _bn_cases(impl):
        tag = "%s %s %s p=%s" % (impl.name, shape, layout, p)
        dout, out, x, g, mean, inv_std = _bn_backward_inputs(rng, shape, dtype, p)
        d64, o64, x64, g64, m64, i64 = _f64(dout, out, x, g, mean, inv_std)
        args = (impl.put(x, layout), impl.put(g), impl.put(mean), impl.put(inv_std))
        with impl.force():
            if p is None:
                got = fused.bn_backward(impl.put(dout, layout), *args)
            else:
                got = fused.bn_relu_dropout_backward(impl.put(dout, layout),
                                                     impl.put(out, layout), *args, p)
        if p is None:
            want, dy = ref.bn_backward_ref(d64, x64, g64, m64, i64), d64
        else:
            want = ref.bn_relu_dropout_backward_ref(d64, o64, x64, g64, m64, i64, p)
            dy = ref.relu_dropout_backward_ref(d64, o64, p)
        terms = bn_backward_terms(dy, x64, g64, m64, i64, want[1])
        for what, a, w, t in zip(("dx", "dgamma", "dbeta"), got, want, terms):
            a = impl.host(a)
            assert a.dtype == dtype, (what, tag)
            assert_close(a, w, dtype, "%s %s" % (what, tag), magnitude=t)


# ----------------------------------------------------------------- the bias-folded passes

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1.0, 0.8])
def test_bias_folded_passes(impl, rng, dtype, p):
    """Where an implementation folds an affine layer's bias into the next pass
    (``fused.folds_bias``), the ``bias_*`` steps are the plain steps on ``x + b`` and
    ``db`` is the column sum of ``dx``: exact for ReLU + dropout, within the terms for
    the batchnorm pass."""
    seed, stream = _seed_stream(rng)
    with impl.force():
        if not fused.folds_bias(impl.put(np.zeros((1, 1), dtype))):
            pytest.skip("%s does not fold the bias (fused.folds_bias is False)" % impl.name)
    for shape in [(490, 500), (130, 257), (7, 13), (2, 1)]:
        x, g, beta, rm, rv = _bn_case(rng, shape, dtype)
        b = (rng.standard_normal(shape[1]) * 4).astype(dtype)
        xb = x + b  # the bias is added in the input's precision
        dout = rng.standard_normal(shape).astype(dtype)
        with impl.force():
            out = fused.bias_relu_dropout_forward(x, b, p, seed, stream)
            dx, db = fused.bias_relu_dropout_backward(dout, out, p)
        want = ref.relu_dropout_forward_ref(xb, p, seed, stream)
        assert_exact(out, want, "bias_relu_dropout_forward %s" % (shape,))
        want_dx = ref.relu_dropout_backward_ref(dout, want, p)
        assert_exact(dx, want_dx, "bias_relu_dropout_backward %s" % (shape,))
        assert_close(db, want_dx.astype(np.float64).sum(axis=0), dtype, "db",
                     magnitude=np.abs(want_dx.astype(np.float64)).sum(axis=0))
        with impl.force():
            out, mean, inv_std = fused.bias_bn_relu_dropout_forward(
                x, b, g, beta, EPS, MOMENTUM, rm.copy(), rv.copy(), p, seed, stream)
        fwd = ref.bn_relu_dropout_forward_ref(*_f64(xb, g, beta), EPS, MOMENTUM,
                                              *_f64(rm, rv), p, seed, stream)
        terms = bn_forward_terms(xb, g, beta, fwd[1], fwd[2], p)
        for what, a, w in zip(("out", "mean", "inv_std"), (out, mean, inv_std), fwd):
            assert_close(a, w, dtype, what, magnitude=np.broadcast_to(terms[what], w.shape))
        with impl.force():
            got = fused.bias_bn_relu_dropout_backward(dout, out, x, b, g, mean, inv_std, p)
        d64, o64, m64, i64 = _f64(dout, out, mean, inv_std)
        want = ref.bn_relu_dropout_backward_ref(d64, o64, *_f64(xb, g), m64, i64, p)
        dy = ref.relu_dropout_backward_ref(d64, o64, p)
        terms = bn_backward_terms(dy, *_f64(xb, g), m64, i64, want[1])
        for what, a, w, t in zip(("dx", "dgamma", "dbeta"), got, want, terms):
            assert_close(a, w, dtype, what, magnitude=t)
        # db: the column sum of the dx returned (after batchnorm it is 0 up to rounding)
        assert_close(got[3], got[0].astype(np.float64).sum(axis=0), dtype, "db",
                     magnitude=np.abs(got[0].astype(np.float64)).sum(axis=0))


# ----------------------------------------------------------------- Adam

@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_step(impl, rng, dtype):
    """next_w, and m and v in place: NumPy's bits in the array dtype (the bias
    corrections are the same float64 numbers everywhere), and within 1e-5 / 1e-12 of
    the float64 reference."""
    sizes = [(1,), (3,), (4,), (5,), (1001,), (37, 11), (10007,)] + \
        ([(1 << 20,)] if impl.big else [])
    for shape in sizes:
        for layout in ("contiguous", "misaligned"):
            w, dw, m = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
            v = rng.random(shape).astype(dtype)
            t = int(rng.integers(1, 2000))
            tag = "%s %s %s t=%d" % (impl.name, shape, layout, t)
            md, vd = impl.put(m, layout), impl.put(v, layout)
            with impl.force():
                out = fused_optim.adam_step(impl.put(w, layout), impl.put(dw, layout), md, vd,
                                            3e-3, 0.9, 0.999, 1e-8, t)
            m1, v1 = m.copy(), v.copy()
            assert_exact(impl.host(out),
                         fused_optim.adam_step_ref(w, dw, m1, v1, 3e-3, 0.9, 0.999, 1e-8, t),
                         "adam next_w " + tag)
            assert_exact(impl.host(md), m1, "adam m " + tag)
            assert_exact(impl.host(vd), v1, "adam v " + tag)
            w64, dw64, m64, v64 = _f64(w, dw, m, v)
            m64, v64 = m64.copy(), v64.copy()
            want = fused_optim.adam_step_ref(w64, dw64, m64, v64, 3e-3, 0.9, 0.999, 1e-8, t)
            for what, a, r in (("next_w", out, want), ("m", md, m64), ("v", vd, v64)):
                assert_close(impl.host(a), r, dtype, "adam %s %s" % (what, tag))
