"""Every fcgpu CUDA kernel once, on small inputs with tails and misaligned views.

Meant to run under ``compute-sanitizer`` (memcheck, racecheck) from
``bench/gpu_check.sh``; also fine on its own: ``PYTHONPATH=. python3 bench/gpu_smoke.py``.
CuPy's memory pool is switched off so that every array is its own cudaMalloc and an
access past its end is an error the sanitizer sees. Results are compared with the
xp references (bit for bit for dropout, 1e-5 / 1e-12 relative otherwise); the
script exits 1 on a mismatch and 2 if some kernel was never launched.

``--load-times`` first times the first load of each kernel module in two fresh
processes sharing a new, empty CuPy cache directory: cold (NVRTC compiles), then warm
(CuPy's on-disk cache, when this CuPy keeps modules built with name expressions).
``--warm-up`` ends with a small training on CuPy and on NumPy (float32 and float64,
batchnorm, dropout, every update rule, a CUDA-graph step), so that CuPy's own
kernels and the Numba CPU path are compiled into their caches before the tests run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fcgpu import fused, fused_optim, optim  # noqa: E402
from fcgpu.augment_spec import augment_gather_reference  # noqa: E402
from fcgpu.mix_spec import mix_batch_reference  # noqa: E402
from fcgpu.cuda import augment as caugment  # noqa: E402
from fcgpu import random as frandom  # noqa: E402
from fcgpu.backend import require_cupy  # noqa: E402
from fcgpu.cuda import module as cmod  # noqa: E402
from fcgpu.cuda import ops, train_ops  # noqa: E402

FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def rel(a, b, mag=None):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    m = b if mag is None else np.asarray(mag, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(m), 1e-300))


def tol(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def flat_cases(cp, dtype, rng):
    """(label, device array, host values): tails of 1..3 elements, misaligned views."""
    out = []
    for n in (1, 2, 3, 4, 5, 4097, 4098, 4099):
        h = rng.standard_normal(n).astype(dtype)
        out.append(("n%d" % n, cp.asarray(h), h))
    for n in (6, 4098):  # misaligned: the view ends where its allocation ends
        h = rng.standard_normal(n).astype(dtype)
        d = cp.asarray(h)
        out.append(("misaligned%d" % (n - 1), d[1:], h[1:]))
    h = rng.standard_normal((9, 7)).astype(dtype)
    out.append(("transposed", cp.asarray(h).T, h.T))
    return out


def run_flat(cp, dtype, rng):
    seed, stream = 2 ** 40 + 1, 2 ** 33 + 5
    for label, x, xh in flat_cases(cp, dtype, rng):
        xh = np.ascontiguousarray(xh)
        for p in (0.6, 1.0):
            tag = "%s %s p=%g" % (np.dtype(dtype).name, label, p)
            out, _ = ops.dropout_forward(x, p, seed, stream)
            ref, _ = fused.dropout_forward_ref(xh, p, seed, stream)
            check(np.array_equal(out.get().view(np.uint8), ref.view(np.uint8)),
                  "dropout_forward " + tag)
            dx = ops.dropout_backward(x, p, seed, stream, None)
            check(np.array_equal(dx.get(), fused.dropout_backward_ref(xh, p, seed, stream)),
                  "dropout_backward " + tag)
            y = ops.relu_dropout_forward(x, p, seed, stream)
            yref = fused.relu_dropout_forward_ref(xh, p, seed, stream)
            check(np.array_equal(y.get(), yref), "relu_dropout_forward " + tag)
            douth = rng.standard_normal(xh.shape).astype(dtype)
            dout = cp.asarray(douth)
            if label.startswith("misaligned"):  # the scalar path of the backward too
                dout = cp.asarray(np.concatenate([[0], douth.ravel()]).astype(dtype))[1:]
                dout = dout.reshape(douth.shape)
            dx = ops.relu_dropout_backward(dout, y, p)
            check(np.array_equal(dx.get(), fused.relu_dropout_backward_ref(douth, yref, p)),
                  "relu_dropout_backward " + tag)
    for n in (1, 2, 3, 4, 5, 4099):
        m = ops.dropout_mask((n,), 0.5, 3, 4)
        check(np.array_equal(m.get(), frandom.dropout_mask_reference((n,), 0.5, 3, 4)),
              "dropout_mask n=%d" % n)


def bn_case(cp, dtype, shape, rng, misaligned):
    n, d = shape
    xh = (rng.standard_normal(shape) * 2 + rng.standard_normal(d)).astype(dtype)
    if misaligned:
        base = cp.empty(n * d + 1, dtype=dtype)
        x = base[1:].reshape(shape)
        x[...] = cp.asarray(xh)
    else:
        x = cp.asarray(xh)
    gh = rng.uniform(0.5, 1.5, d).astype(dtype)
    bh = rng.standard_normal(d).astype(dtype)
    return x, xh, gh, bh


def run_bn(cp, dtype, rng):
    for shape in [(2, 5), (2, 4), (7, 3), (33, 8), (65, 12), (130, 37), (600, 64)]:
        for misaligned in (False, True):
            n, d = shape
            tag = "%s %dx%d%s" % (np.dtype(dtype).name, n, d, " misaligned" if misaligned else "")
            x, xh, gh, bh = bn_case(cp, dtype, shape, rng, misaligned)
            g, b = cp.asarray(gh), cp.asarray(bh)
            x64, g64, b64 = xh.astype(np.float64), gh.astype(np.float64), bh.astype(np.float64)
            rm, rv = cp.zeros(d, dtype), cp.ones(d, dtype)
            rm64, rv64 = np.zeros(d), np.ones(d)
            out, mean, inv_std = ops.bn_forward_train(x, g, b, 1e-5, 0.9, rm, rv)
            r_out, r_mean, r_inv = fused.bn_forward_train_ref(x64, g64, b64, 1e-5, 0.9, rm64, rv64)
            check(rel(out.get(), r_out) < tol(dtype) and rel(mean.get(), r_mean) < tol(dtype)
                  and rel(rv.get(), rv64) < tol(dtype), "bn_forward_train " + tag)
            out = ops.bn_forward_infer(x, g, b, 1e-5, rm, rv)
            check(rel(out.get(), fused.bn_forward_infer_ref(x64, g64, b64, 1e-5, rm64, rv64))
                  < tol(dtype), "bn_forward_infer " + tag)
            douth = (rng.standard_normal(shape) + 0.2).astype(dtype)
            d64 = douth.astype(np.float64)
            m64, i64 = mean.get().astype(np.float64), inv_std.get().astype(np.float64)
            dx, dg, db = ops.bn_backward(cp.asarray(douth), x, g, mean, inv_std)
            rdx, rdg, rdb = fused.bn_backward_ref(d64, x64, g64, m64, i64)
            mag = np.abs(g64 * i64 * d64) + np.abs(rdx)
            check(rel(dx.get(), rdx, mag) < tol(dtype), "bn_backward " + tag)
            for p in (0.7, 1.0):
                rm2, rv2 = cp.zeros(d, dtype), cp.ones(d, dtype)
                out, mean, inv_std = ops.bn_relu_dropout_forward(x, g, b, 1e-5, 0.9, rm2, rv2, p,
                                                                 11, 12)
                r_out, _, _ = fused.bn_relu_dropout_forward_ref(x64, g64, b64, 1e-5, 0.9,
                                                                np.zeros(d), np.ones(d), p, 11, 12)
                check(rel(out.get(), r_out) < tol(dtype), "bn_relu_dropout_forward p=%g %s"
                      % (p, tag))
                outh = out.get().astype(np.float64)
                m64, i64 = mean.get().astype(np.float64), inv_std.get().astype(np.float64)
                dx, dg, db = ops.bn_relu_dropout_backward(cp.asarray(douth), out, x, g, mean,
                                                          inv_std, p)
                rdx, _, _ = fused.bn_relu_dropout_backward_ref(d64, outh, x64, g64, m64, i64, p)
                mag = np.abs(g64 * i64 * d64) / p + np.abs(rdx)
                check(rel(dx.get(), rdx, mag) < tol(dtype), "bn_relu_dropout_backward p=%g %s"
                      % (p, tag))


def _views(cp, hosts, n, misaligned):
    """Device views of n elements of each host array (n + 1 long): misaligned ones
    start one element in and end where their allocation ends."""
    sl = slice(1, n + 1) if misaligned else slice(0, n)
    return [cp.asarray(h)[sl] for h in hosts], [h[sl].copy() for h in hosts]


def run_optim(cp, dtype, rng):
    for n in (1, 3, 4, 5, 4097):
        for misaligned in (False, True):
            tag = "%s n=%d%s" % (np.dtype(dtype).name, n, " misaligned" if misaligned else "")
            hosts = [rng.standard_normal(n + 1).astype(dtype) for _ in range(3)]
            hosts.append(rng.random(n + 1).astype(dtype))
            d, h = _views(cp, hosts, n, misaligned)
            out = train_ops.adam_step(d[0], d[1], d[2], d[3], 1e-3, 0.9, 0.999, 1e-8, 3)
            ref = fused_optim.adam_step_ref(h[0], h[1], h[2], h[3], 1e-3, 0.9, 0.999, 1e-8, 3)
            check(rel(out.get(), ref) < tol(dtype) and rel(d[2].get(), h[2]) < tol(dtype)
                  and rel(d[3].get(), h[3]) < tol(dtype), "adam_step " + tag)
            d, h = _views(cp, hosts, n, misaligned)
            train_ops.adam_step_device(d[0], d[1], d[2], d[3], cp.asarray([1e-3]),
                                 cp.asarray(train_ops.bias_corrections(0.9, 0.999, 1, 4)),
                                 cp.asarray(np.array([2], np.uint64)), 0.9, 0.999, 1e-8)
            ref = fused_optim.adam_step_ref(h[0], h[1], h[2], h[3], 1e-3, 0.9, 0.999, 1e-8, 3)
            check(rel(d[0].get(), ref) < tol(dtype), "adam_step_device " + tag)
            for rule in (r for r, e in optim.RULES.items() if e.device == optim.DEVICE_RULE):
                code = optim.RULES[rule].device_id
                key = (optim.RULES[rule].state or (None,))[0]
                d, h = _views(cp, hosts, n, misaligned)
                cfg = {"learning_rate": 1e-2, "momentum": 0.9, "decay_rate": 0.9,
                       "epsilon": 1e-8}
                if key:
                    cfg[key] = h[3]
                ref, _ = optim.RULES[rule](h[0], h[1], cfg)
                train_ops.rule_step_device(code, d[0], d[1], d[3] if key else None,
                                     cp.asarray([1e-2]), h=0.9, eps=1e-8)
                check(rel(d[0].get(), ref) < tol(dtype), "rule_step_device %s %s" % (rule, tag))
                d, h = _views(cp, hosts, n, misaligned)
                out = train_ops.rule_step(code, d[0], d[1], d[3] if key else None, 1e-2,
                                          h=0.9, eps=1e-8)
                check(rel(out.get(), ref) < tol(dtype), "rule_step %s %s" % (rule, tag))


def run_blas(cp, dtype, rng):
    """fcgpu.cuda.blas (cuBLAS through ctypes): the layers' three product layouts
    against float64, then one product captured in a CUDA graph and replayed against
    the same product uncaptured, bit for bit (the CUDA-graph step's guarantee)."""
    from fcgpu.cuda import blas
    for m, k, n in ((7, 5, 3), (1, 9, 4), (49, 300, 17)):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        at = np.ascontiguousarray(a.T)
        bt = np.ascontiguousarray(b.T)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        tag = "%s %dx%dx%d" % (np.dtype(dtype).name, m, k, n)
        for what, x, y in (("a @ b", cp.asarray(a), cp.asarray(b)),
                           ("a.T-view @ b", cp.asarray(at).T, cp.asarray(b)),
                           ("a @ b.T-view", cp.asarray(a), cp.asarray(bt).T)):
            check(rel(blas.matmul(x, y).get(), ref) < tol(dtype), "blas.matmul %s %s" % (what, tag))
    a = cp.asarray(rng.standard_normal((64, 96)).astype(dtype))
    b = cp.asarray(rng.standard_normal((96, 32)).astype(dtype))
    side = cp.cuda.Stream(non_blocking=True)
    out = cp.zeros((64, 32), dtype)
    with side:
        plain = blas.matmul(a, b)
        side.begin_capture()
        try:
            blas.matmul(a, b, out=out)
        finally:
            graph = side.end_capture()
    graph.launch(stream=side)
    side.synchronize()
    check(np.array_equal(out.get().view(np.uint8), plain.get().view(np.uint8)),
          "blas.matmul captured and replayed == uncaptured, bit for bit (%s)"
          % np.dtype(dtype).name)


def run_graph(cp, dtype, rng):
    for dcols in (12, 7):
        n, b = 37, 5
        Xh = rng.standard_normal((n, dcols)).astype(dtype)
        yh = rng.integers(0, 10, n).astype(np.int64)
        order = rng.permutation(n)
        X, y, perm = cp.asarray(Xh), cp.asarray(yh), cp.asarray(order.astype(np.int64))
        ctr = cp.zeros(4, np.uint64)
        Xb, yb = cp.empty((b, dcols), dtype), cp.empty(b, np.int64)
        loss_buf = cp.zeros(n // b, dtype)
        ok = True
        for step in range(n // b + 1):
            batch = step % (n // b)
            train_ops.gather_rows(X, y, perm, ctr[0:1], Xb, yb)
            rows = order[batch * b:(batch + 1) * b]
            ok &= np.array_equal(Xb.get(), Xh[rows]) and np.array_equal(yb.get(), yh[rows])
            train_ops.graph_advance(ctr, cp.asarray(np.array(step, dtype)), loss_buf, n // b, 2)
        check(ok, "gather_rows %s D=%d" % (np.dtype(dtype).name, dcols))
        check(list(ctr.get()) == [1, 2 * (n // b + 1), n // b + 1, n // b + 1],
              "graph_advance %s" % np.dtype(dtype).name)
    # dropout with its stream read from device memory (a captured step's)
    xh = rng.standard_normal(4099).astype(dtype)
    ctr = cp.asarray(np.array([0, 40, 0, 0], np.uint64))
    out, _ = ops.dropout_forward(cp.asarray(xh), 0.6, 7, frandom.DeviceStream(ctr[1:2], 3))
    ref, _ = fused.dropout_forward_ref(xh, 0.6, 7, 43)
    check(np.array_equal(out.get().view(np.uint8), ref.view(np.uint8)),
          "dropout_forward DeviceStream %s" % np.dtype(dtype).name)


def run_augment(cp, dtype, rng):
    """The augmenting gather (kernels/augment.cu) for every input type with ``dtype``
    output: each mode, pad 0 and 4, odd batch sizes, the permutation's last rows, the
    batch index and epoch from host values and from device memory; then MixUp and
    CutMix of a batch (odd and even sizes); bit for bit against the specs' references."""
    shape, n = (3, 5, 7), 23
    X8 = rng.integers(0, 256, (n,) + shape).astype(np.uint8)
    for in_dtype in (np.uint8, np.float32, np.float64):
        Xh = X8 if in_dtype == np.uint8 else rng.standard_normal((n,) + shape).astype(in_dtype)
        yh = rng.integers(0, 10, n).astype(np.int64)
        perm = rng.permutation(n).astype(np.int64)
        mean = rng.standard_normal(int(np.prod(shape))).astype(dtype)
        X, y, pd, md = cp.asarray(Xh), cp.asarray(yh), cp.asarray(perm), cp.asarray(mean)
        ok, cases = True, 0
        for mode, pad, batch, b, on_device in (
                ("none", 0, 5, 2, False), ("flip", 4, 7, 1, True), ("crop", 4, 5, 3, False),
                ("crop", 0, 3, 6, True), ("crop", 4, 9, 1, True), ("crop", 2, 23, 0, False)):
            bb = cp.asarray(np.array([b], np.uint64)) if on_device else b
            ee = cp.asarray(np.array([3], np.uint64)) if on_device else 3
            Xb, yb = caugment.augment_gather(X, y, pd, bb, batch, shape, mode, pad, 11, ee, md,
                                             dtype)
            rX, ry = augment_gather_reference(Xh, yh, perm, b, batch, shape, mode, pad, 11, 3,
                                              mean, dtype)
            ok &= (np.array_equal(Xb.get().view(np.uint8), rX.view(np.uint8))
                   and np.array_equal(yb.get(), ry))
            cases += 1
        check(ok, "augment_gather %s -> %s (%d cases)" % (np.dtype(in_dtype).name,
                                                         np.dtype(dtype).name, cases))
    # MixUp and CutMix of a gathered batch, in place (fcgpu_mix_pairs)
    ok, cases = True, 0
    for mode, batch, alpha, on_device in (("mixup", 7, 0.4, False), ("cutmix", 8, 1.0, True),
                                          ("mixup", 1, 2.0, True), ("cutmix", 33, 0.2, False)):
        Xh = rng.standard_normal((batch, int(np.prod(shape)))).astype(dtype)
        yh = rng.integers(0, 10, batch).astype(np.int64)
        bb = cp.asarray(np.array([5], np.uint64)) if on_device else 5
        ee = cp.asarray(np.array([3], np.uint64)) if on_device else 3
        X = cp.asarray(Xh)
        _, y2, lam = caugment.mix_batch(X, cp.asarray(yh), bb, shape, mode, alpha, 11, ee)
        rX, ry2, rlam = mix_batch_reference(Xh, yh, 5, shape, mode, alpha, 11, 3)
        ok &= (np.array_equal(X.get().view(np.uint8), rX.view(np.uint8))
               and np.array_equal(y2.get(), ry2)
               and np.array_equal(lam.get().view(np.uint8), rlam.view(np.uint8)))
        cases += 1
    check(ok, "mix_batch %s (%d cases)" % (np.dtype(dtype).name, cases))


def time_module_loads():
    """``{module: seconds}``: the first ``get_kernel`` of each module in this process
    (after the CUDA context exists), i.e. an NVRTC build or a cache load, plus the
    module load."""
    cp = require_cupy()
    cp.zeros(1).sum()  # the context, and CuPy's own first kernel, outside the timing
    cp.cuda.runtime.deviceSynchronize()
    times = {}
    for module, (_, names) in cmod.MODULES.items():
        t0 = time.perf_counter()
        cmod.get_kernel(names[0])
        times[module] = time.perf_counter() - t0
    return times


def module_load_times():
    """Print the cold and the warm load time of every module, each measured in a
    fresh process, both with one new CuPy cache directory."""
    version = require_cupy().__version__
    with tempfile.TemporaryDirectory(prefix="fcgpu-cupy-cache-") as cache:
        env = dict(os.environ, CUPY_CACHE_DIR=cache)
        runs = {}
        for mode in ("cold", "warm"):
            res = subprocess.run([sys.executable, os.path.abspath(__file__), "--time-loads"],
                                 env=env, capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                print("module load timing (%s) failed:\n%s%s" % (mode, res.stdout, res.stderr))
                FAILURES.append("module load timing")
                return
            runs[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        shared = os.environ.get("CUPY_CACHE_DIR")
        if shared:  # the binaries just built serve the smoke and the tests too
            shutil.copytree(cache, shared, dirs_exist_ok=True)
    print("kernel module first load in a fresh process (CuPy %s; cold: empty cache, "
          "warm: the cache the cold run filled):" % version)
    for module in cmod.MODULES:
        cold, warm = runs["cold"][module], runs["warm"][module]
        print("  %-10s cold %7.3f s   warm %7.3f s" % (module, cold, warm))
    cold, warm = sum(runs["cold"].values()), sum(runs["warm"].values())
    print("  %-10s cold %7.3f s   warm %7.3f s   (%s)" % (
        "all", cold, warm, "the on-disk cache is used" if warm < cold / 3
        else "NOT cached: every process recompiles (CuPy < 14.1, or 14.1 with a driver < 12.4)"))


def warm_up(cp):
    """Train tiny nets on CuPy and NumPy: CuPy's elementwise and reduction kernels,
    cuBLAS, and the Numba CPU path get compiled and cached before the tests."""
    from fcgpu.fc_net import FullyConnectedNet
    from fcgpu.solver import Solver
    cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)
    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    data = {"X_train": rng.standard_normal((120, 12)), "y_train": rng.integers(3, size=120),
            "X_val": rng.standard_normal((40, 12)), "y_val": rng.integers(3, size=40)}
    runs = 0
    for xp in (cp, np):
        for dtype in (np.float32, np.float64):
            for rule in ("adam", "sgd", "sgd_momentum", "rmsprop"):
                for graph in ((False, True) if xp is cp else (False,)):
                    model = FullyConnectedNet([16, 7], input_dim=12, num_classes=3, dropout=0.7,
                                              use_batchnorm=True, weight_scale=0.1, dtype=dtype,
                                              seed=3, fresh_masks=True, xp=xp)
                    Solver(model, data, update_rule=rule, batch_size=20, num_epochs=1,
                           verbose=False, out=io.StringIO(), seed=1, cuda_graph=graph).train()
                    model.loss(xp.asarray(data["X_val"], dtype=dtype))
                    runs += 1
    cp.cuda.runtime.deviceSynchronize()
    print("warm-up: %d small trainings (CuPy, NumPy) in %.1f s" % (runs, time.perf_counter() - t0))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--load-times", action="store_true",
                    help="first time each module's cold and warm load (two fresh processes)")
    ap.add_argument("--warm-up", action="store_true",
                    help="end with small trainings that compile CuPy's and Numba's kernels")
    ap.add_argument("--time-loads", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_loads:  # (the child of --load-times)
        print(json.dumps(time_module_loads()))
        return 0
    if args.load_times:
        module_load_times()
    cp = require_cupy()
    cp.cuda.set_allocator(None)  # every array its own cudaMalloc: the sanitizer sees overruns
    dev = cp.cuda.Device()
    name = cp.cuda.runtime.getDeviceProperties(dev.id)["name"]
    print("device %d: %s" % (dev.id, name.decode() if isinstance(name, bytes) else name))
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        run_flat(cp, dtype, rng)
        run_bn(cp, dtype, rng)
        run_optim(cp, dtype, rng)
        run_blas(cp, dtype, rng)
        run_graph(cp, dtype, rng)
        run_augment(cp, dtype, rng)
    cp.cuda.runtime.deviceSynchronize()
    launched = cmod.loaded_kernels(dev.id)
    missing = sorted(set().union(*[set(n) for _, n in cmod.MODULES.values()]) - launched)
    print("kernels launched: %d, never launched: %s" % (len(launched), missing or "none"))
    if args.warm_up:
        warm_up(cp)
    if FAILURES:
        print("%d check(s) FAILED" % len(FAILURES))
        return 1
    if missing:
        return 2
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
