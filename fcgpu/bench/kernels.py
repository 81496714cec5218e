"""Kernel-level cases: what each variant runs for each op, and the bytes it must move.

Ops (``p`` = keep probability 0.8, fp32 unless asked otherwise):

=============  ==========  ==========================================================
op             shape       call
=============  ==========  ==========================================================
copy           (n,)        a plain copy of n elements (the bandwidth reference)
dropout_fwd    (n,)        ``dropout_forward(x, p, seed, stream)``
dropout_bwd    (n,)        ``dropout_backward(dout, p, seed, stream, mask)``
bn_fwd         (N, D)      ``bn_forward_train(x, gamma, beta, eps, momentum, rm, rv)``
bn_bwd         (N, D)      ``bn_backward(dout, x, gamma, mean, inv_std)``
fused_fwd      (N, D)      ``bn_relu_dropout_forward(...)``: batchnorm-ReLU-dropout
fused_bwd      (N, D)      ``bn_relu_dropout_backward(dout, out, x, gamma, mean, inv_std, p)``
augment        (B,)        ``augment_gather(X, y, perm, b, B, (3, 32, 32), 'crop', 4, ...)``
gather         (B,)        the same minibatch, not augmented (its floor)
=============  ==========  ==========================================================

The two minibatch-gather ops (B images of 3 x 32 x 32 from a uint8 pool, as float32
minus the mean image) live in :mod:`fcgpu.bench.gather`, with their variants and bytes.

Bytes that must move (:func:`op_bytes`): each input read once and each output written
once, by the op's contract; masks that an implementation chooses to store are not
counted (storing them is its cost).

Variants (:mod:`fcgpu.bench.variants`; the builders read a row's ``impl``): impl
``reference`` runs the ``*_ref`` xp code (``numpy_ref`` on NumPy; ``cupy_unfused`` on
CuPy arrays: separate CuPy ops, and fcgpu's Philox mask emulated in array code, bit
for bit), ``numba`` fcgpu's compiled CPU path through the :mod:`fcgpu.fused` dispatch,
``user`` what a CuPy user writes (``cupy_curand``: the course's layers in CuPy,
:func:`user_batchnorm_train`, ``cupy.maximum`` and :func:`user_dropout` with a
``cupy.random`` mask drawn each call; the summary's baseline for the fused pass), and
none the :mod:`fcgpu.fused` dispatch on CuPy arrays (``fcgpu``: our CUDA kernels);
the torch family (``torch_cpu``, ``torch_cuda``) runs :func:`build_torch_case`.
"""
from __future__ import annotations

import math

import numpy as np

from . import gather as _gather
from . import variants as _variants
from .cases import TILE, Case, SkipCase, tiled

KEEP_P = 0.8
SEED = 1234
STREAM = 7
EPS = 1e-5
MOMENTUM = 0.9

FLAT_OPS = ("copy", "dropout_fwd", "dropout_bwd")
ROW_OPS = ("bn_fwd", "bn_bwd", "fused_fwd", "fused_bwd")
GATHER_OPS = _gather.OPS
OPS = FLAT_OPS + ROW_OPS + GATHER_OPS
# ops whose variants run op-specific code, labelled per op (not by the table's labels)
OWN_LABEL_OPS = ("copy",) + GATHER_OPS

OP_TITLES = {
    "copy": "copy (bandwidth reference)",
    "dropout_fwd": "dropout forward",
    "dropout_bwd": "dropout backward",
    "bn_fwd": "batchnorm training forward",
    "bn_bwd": "batchnorm backward",
    "fused_fwd": "fused batchnorm-ReLU-dropout forward",
    "fused_bwd": "fused batchnorm-ReLU-dropout backward",
    **_gather.TITLES,
}

COPY_LABELS = {
    "numpy_ref": "np.copyto (1 thread)",
    "numba": "Numba parallel copy",
    "torch_cpu": "torch copy_ (CPU)",
    "cupy_unfused": "cudaMemcpy D2D (CuPy)",
    "torch_cuda": "torch copy_ (CUDA)",
}

# the plain-NumPy Philox costs ~70 ns and ~100 bytes of temporaries per element
NUMPY_REF_PHILOX_MAX = 1 << 22


def applicable(variant, op):
    """Whether ``variant`` has code for ``op`` (its row's ``ops``)."""
    return _variants.applicable(variant, op)


def label(variant, op):
    """What ``variant`` runs for ``op``: the op's own label where it has one, else the
    table's."""
    if op == "copy":
        return COPY_LABELS.get(variant) or _variants.label(variant)
    if op in GATHER_OPS:
        return _gather.LABELS[op].get(variant) or _variants.label(variant)
    return _variants.label(variant)


def numel(shape):
    return int(math.prod(shape))


def elements(op, shape):
    """Values one call writes: ``numel(shape)``, or B * 3072 for a batch of images."""
    return _gather.elements(shape) if op in GATHER_OPS else numel(shape)


def op_dtype(op):
    return "uint8 -> float32" if op in GATHER_OPS else "float32"


def op_bytes(op, shape, itemsize=4):
    """Bytes the op must move: inputs read once, outputs written once."""
    s = itemsize
    if op in GATHER_OPS:
        return _gather.op_bytes(op, shape)
    if op in FLAT_OPS:
        return 2 * numel(shape) * s
    n, d = shape
    nd = n * d
    if op in ("bn_fwd", "fused_fwd"):
        # x in, out out; gamma, beta in; mean, inv_std out; running mean/var in and out
        return 2 * nd * s + 8 * d * s
    if op == "bn_bwd":
        # dout, x in; dx out; gamma, mean, inv_std in; dgamma, dbeta out
        return 3 * nd * s + 5 * d * s
    if op == "fused_bwd":
        # dout, out, x in; dx out; gamma, mean, inv_std in; dgamma, dbeta out
        return 4 * nd * s + 5 * d * s
    raise ValueError("unknown op %r" % op)


def input_bytes(op, shape, itemsize=4):
    """Bytes of the large inputs of one call (what the rotation must cover)."""
    if op in GATHER_OPS:
        return _gather.input_bytes(op, shape)
    n = numel(shape) * itemsize
    return {"copy": 1, "dropout_fwd": 1, "dropout_bwd": 1, "bn_fwd": 1, "fused_fwd": 1,
            "bn_bwd": 2, "fused_bwd": 3}[op] * n


def shape_label(shape):
    if len(shape) == 1:
        n = shape[0]
        k = int(round(math.log2(n))) if n > 0 else 0
        return "2^%d" % k if (1 << k) == n else str(n)
    return "x".join(str(s) for s in shape)


def rotation_count(op, shape, cache_bytes, itemsize=4, factor=4, cap_bytes=1 << 30,
                   max_sets=1024):
    """How many input sets to cycle through so that the inputs of consecutive calls
    span ``factor`` times the last-level cache (L2 on a GPU, L3 on a CPU)."""
    per = input_bytes(op, shape, itemsize)
    want = int(math.ceil(factor * cache_bytes / max(per, 1)))
    if op in GATHER_OPS:
        want = max(want, _gather.POOL_MIN)  # a pool of several batches, as in training
    fit = max(1, cap_bytes // max(per, 1))
    return int(max(1, min(want, fit, max_sets)))


# ----------------------------------------------------------------- what a CuPy user writes

def user_dropout(x, p, rand):
    """Inverted dropout as the course writes it (``mask = (np.random.rand(*x.shape) <
    p) / p; out = x * mask``), kept in x's dtype: a fresh uniform draw ``rand(shape)``
    each call, then separate elementwise ops (compare, multiply by the mask, scale).
    On CuPy ``rand`` is ``cupy.random.random(shape, dtype=cupy.float32)``:
    cupy/random/_sample.py ``random_sample`` (aliased ``random`` in
    cupy/random/__init__.py), cuRAND ``generateUniform`` for float32 in
    cupy/random/_generator.py ``_random_sample_raw`` (v14.2.0)."""
    keep = rand(x.shape) < p
    return x * keep * x.dtype.type(1.0 / p)


def user_batchnorm_train(xp, x, gamma, beta, eps, momentum, running):
    """Batchnorm's training forward as the course writes it, on ``xp`` arrays: batch
    mean and (biased) variance, ``xhat = (x - mu) / sqrt(var + eps)``, ``gamma * xhat +
    beta``, each a separate op; ``running`` ({'mean', 'var'}) is updated as the course's
    ``bn_param`` is. Returns ``(out, mu, 1 / sqrt(var + eps))``. CuPy:
    ``ndarray.mean``/``var(axis)`` (cupy/_core/core.pyx), Python scalars weakly typed
    so float32 stays float32 (cupy/_core/_kernel.pyx ``_check_should_use_weak_scalar``,
    v14.2.0)."""
    mu = x.mean(axis=0)
    var = x.var(axis=0)
    std = xp.sqrt(var + eps)
    out = gamma * ((x - mu) / std) + beta
    running["mean"] = momentum * running["mean"] + (1 - momentum) * mu
    running["var"] = momentum * running["var"] + (1 - momentum) * var
    return out, mu, 1 / std


def user_bn_relu_dropout(xp, x, gamma, beta, eps, momentum, running, p, rand):
    """The sandwich batchnorm -> ReLU -> dropout as a CuPy user writes it: the two
    functions above around ``xp.maximum(y, 0)`` (``cupy.maximum``, a ufunc:
    cupy/_math/misc.py, v14.2.0; so is ``cupy.sqrt`` above)."""
    y, mu, inv_std = user_batchnorm_train(xp, x, gamma, beta, eps, momentum, running)
    return user_dropout(xp.maximum(y, 0), p, rand), mu, inv_std


def user_rand(xp, seed=SEED):
    """``rand(shape)`` of :func:`user_dropout` on ``xp`` (CuPy): ``cupy.random``'s
    global generator, seeded once here (``cupy.random.seed``, cupy/random/_generator.py)."""
    xp.random.seed(seed)
    return lambda shape: xp.random.random(shape, dtype=xp.float32)


# ----------------------------------------------------------------- builders

def host_randn(shape, seed):
    """Standard-normal fp32 of ``shape``; beyond 2^22 elements a random block is tiled
    (values do not change the timings, and 2^28 normals take seconds to draw)."""
    rng = np.random.default_rng(seed)
    n = numel(shape)
    if n <= TILE:
        return rng.standard_normal(shape, dtype=np.float32)
    return tiled(rng.standard_normal(TILE, dtype=np.float32), n).reshape(shape)


def _host_inputs(op, shape, seed=0):
    x = host_randn(shape, seed)
    dout = host_randn(shape, seed + 1) if op not in ("copy", "dropout_fwd", "bn_fwd",
                                                     "fused_fwd") else None
    return x, dout


def build_xp_case(variant, op, shape, xp, k):
    """Cases for the numpy and cupy families (by the row's ``impl``: the reference, the
    Numba passes, what a user writes, or fcgpu's dispatch) on array module ``xp``."""
    from .. import fused

    if op in GATHER_OPS:
        return _gather.build_xp_case(variant, op, shape, xp, k)
    how = _variants.get(variant).impl
    if how == "reference" and xp is np and numel(shape) > NUMPY_REF_PHILOX_MAX:
        if op in ("dropout_fwd", "fused_fwd"):
            raise SkipCase("the plain-NumPy Philox mask (~70 ns and ~100 B of temporaries "
                           "per element) is capped at 2^22 elements")
        if op == "fused_bwd":
            raise SkipCase("its inputs come from the reference forward, capped at 2^22 "
                           "elements (plain-NumPy Philox)")
    impl = fused.reference if how in ("reference", "user") else fused
    if how == "numba":
        fused.use_compiled_cpu(True)

    hx, hd = _host_inputs(op, shape) if xp is np else (None, None)

    def arr(host, seed):
        if xp is np:
            return host.copy()
        rs = xp.random.RandomState(seed)
        return rs.standard_normal(shape, dtype=xp.float32)

    def sets(host, seed):
        base = arr(host, seed)
        return [base] + [base.copy() for _ in range(k - 1)]

    if op in ROW_OPS:
        return _row_case(variant, op, shape, xp, k, impl, sets, hx, hd, how == "user")
    p, seed, stream = KEEP_P, SEED, STREAM
    if op == "copy":
        src = sets(hx, 1)
        dst = [xp.empty_like(a) for a in src]
        if xp is np:
            if how == "numba":
                pcopy = _numba_copy()
                pcopy(src[0].reshape(-1), dst[0].reshape(-1))  # compile
                return Case(lambda i: pcopy(src[i], dst[i]), k, label(variant, op))
            return Case(lambda i: np.copyto(dst[i], src[i]), k, label(variant, op))
        nbytes = src[0].nbytes
        return Case(lambda i: dst[i].data.copy_from_device_async(src[i].data, nbytes), k,
                    label(variant, op))

    if op in FLAT_OPS:
        xs = sets(hx, 1)
        if op == "dropout_fwd":
            if how == "user":
                rand = user_rand(xp)
                return Case(lambda i: user_dropout(xs[i], p, rand), k, label(variant, op))
            return Case(lambda i: impl.dropout_forward(xs[i], p, seed, stream), k,
                        label(variant, op))
        # dropout_bwd: the mask is whatever this variant's forward keeps (None on the GPU)
        _, mask = impl.dropout_forward(xs[0], p, seed, stream)
        ds = sets(hd, 2)
        del xs
        return Case(lambda i: impl.dropout_backward(ds[i], p, seed, stream, mask), k,
                    label(variant, op))
    raise ValueError("unknown op %r" % op)


def _row_case(variant, op, shape, xp, k, impl, sets, hx, hd, user=False):
    """The (N, D) ops of :func:`build_xp_case`: batchnorm and the fused pass."""
    p, seed, stream = KEEP_P, SEED, STREAM
    n, d = shape
    gamma = xp.asarray(np.linspace(0.5, 1.5, d, dtype=np.float32))
    beta = xp.asarray(np.linspace(-0.2, 0.2, d, dtype=np.float32))
    rm = xp.zeros(d, dtype=xp.float32)
    rv = xp.ones(d, dtype=xp.float32)
    xs = sets(hx, 1)
    if op == "bn_fwd":
        return Case(lambda i: impl.bn_forward_train(xs[i], gamma, beta, EPS, MOMENTUM, rm, rv),
                    k, label(variant, op))
    if op == "fused_fwd":
        if user:
            rand, running = user_rand(xp), {"mean": rm, "var": rv}
            return Case(lambda i: user_bn_relu_dropout(xp, xs[i], gamma, beta, EPS, MOMENTUM,
                                                       running, p, rand),
                        k, label(variant, op))
        return Case(lambda i: impl.bn_relu_dropout_forward(xs[i], gamma, beta, EPS, MOMENTUM,
                                                           rm, rv, p, seed, stream),
                    k, label(variant, op))
    ds = sets(hd, 2)
    if op == "bn_bwd":
        _, mean, inv_std = impl.bn_forward_train(xs[0], gamma, beta, EPS, MOMENTUM, rm, rv)
        return Case(lambda i: impl.bn_backward(ds[i], xs[i], gamma, mean, inv_std), k,
                    label(variant, op))
    if op == "fused_bwd":
        out, mean, inv_std = impl.bn_relu_dropout_forward(xs[0], gamma, beta, EPS, MOMENTUM,
                                                          rm, rv, p, seed, stream)
        outs = [out] + [out.copy() for _ in range(k - 1)]
        return Case(lambda i: impl.bn_relu_dropout_backward(ds[i], outs[i], xs[i], gamma, mean,
                                                            inv_std, p),
                    k, label(variant, op))
    raise ValueError("unknown op %r" % op)


_PCOPY = None


def _numba_copy():
    global _PCOPY
    if _PCOPY is None:
        from .. import cpu  # noqa: F401  (picks Numba's threading layer)
        from numba import njit, prange

        @njit(parallel=True)
        def pcopy(src, dst):
            a = src.reshape(-1)
            b = dst.reshape(-1)
            for i in prange(a.size):
                b[i] = a[i]
        _PCOPY = pcopy
    return _PCOPY


def build_torch_case(variant, op, shape, torch, device, k):
    """Cases for PyTorch on ``device`` ('cpu' or 'cuda')."""
    import torch.nn.functional as F

    if op in GATHER_OPS:
        return _gather.build_torch_case(variant, op, shape, torch, device, k)
    g = torch.Generator(device=device)
    g.manual_seed(0)
    n = numel(shape)

    def randn():
        if n <= TILE:
            return torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        block = torch.randn(TILE, generator=g, device=device, dtype=torch.float32)
        return block.repeat(-(-n // TILE))[:n].reshape(shape).contiguous()

    def sets(base):
        return [base] + [base.clone() for _ in range(k - 1)]

    drop = 1.0 - KEEP_P
    scale = 1.0 / KEEP_P
    aten = torch.ops.aten
    if op == "copy":
        src = sets(randn())
        dst = [torch.empty_like(a) for a in src]
        return Case(lambda i: dst[i].copy_(src[i]), k, label(variant, op))
    if op == "dropout_fwd":
        xs = sets(randn())
        return Case(lambda i: F.dropout(xs[i], p=drop, training=True), k, label(variant, op))
    if op == "dropout_bwd":
        _, mask = aten.native_dropout(randn(), drop, True)
        ds = sets(randn())
        return Case(lambda i: aten.native_dropout_backward(ds[i], mask, scale), k,
                    label(variant, op))
    n, d = shape
    w = torch.linspace(0.5, 1.5, d, device=device)
    b = torch.linspace(-0.2, 0.2, d, device=device)
    rm = torch.zeros(d, device=device)
    rv = torch.ones(d, device=device)
    tmom = 1.0 - MOMENTUM  # PyTorch's momentum is the weight of the new statistic
    xs = sets(randn())
    if op == "bn_fwd":
        return Case(lambda i: F.batch_norm(xs[i], rm, rv, w, b, True, tmom, EPS), k,
                    label(variant, op))
    if op == "fused_fwd":
        return Case(lambda i: F.dropout(F.relu(F.batch_norm(xs[i], rm, rv, w, b, True, tmom,
                                                            EPS)), p=drop, training=True),
                    k, label(variant, op))
    ds = sets(randn())
    y, smean, sinv = aten.native_batch_norm(xs[0], w, b, rm, rv, True, tmom, EPS)
    if op == "bn_bwd":
        return Case(lambda i: aten.native_batch_norm_backward(ds[i], xs[i], w, rm, rv, smean,
                                                              sinv, True, EPS,
                                                              [True, True, True]),
                    k, label(variant, op))
    if op == "fused_bwd":
        r = torch.relu(y)
        _, mask = aten.native_dropout(r, drop, True)

        def bwd(i):
            g1 = aten.native_dropout_backward(ds[i], mask, scale)
            g2 = aten.threshold_backward(g1, r, 0.0)
            return aten.native_batch_norm_backward(g2, xs[i], w, rm, rv, smean, sinv, True,
                                                   EPS, [True, True, True])
        return Case(bwd, k, label(variant, op))
    raise ValueError("unknown op %r" % op)
