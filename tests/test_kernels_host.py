"""CPU-side checks of the CUDA kernels (CI has no GPU).

(a) every ``kernels/*.cu`` compiles with the local ``nvcc`` for sm_90 with
    ``-Xptxas -v`` and no register spills, and instantiates exactly the kernels that
    ``fcgpu.cuda`` asks NVRTC for; where libnvrtc is present, the sources as
    ``fcgpu.cuda.module`` expands them compile with NVRTC and every name expression
    resolves (what ``cupy.RawModule`` does at run time);
(b) ``kernels/philox.cuh`` built by the host C++ compiler reproduces the Random123
    known-answer vectors, the keep thresholds, and ``fcgpu.random.dropout_mask`` /
    ``dropout_mask_reference`` on large arrays;
(c) the kernels' per-element math and reduction steps (``kernels/ops.cuh``), built for
    the host and driven like the kernels drive them, match the xp references of
    ``fcgpu.fused`` on random inputs (bit-identical for dropout).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fcgpu import fused
from fcgpu import random as frandom
from fcgpu.cuda import module as cmod
from fcgpu.cuda.ops import chunk_layout

REPO = Path(__file__).resolve().parent.parent
KERNELS = REPO / "kernels"
HOST = Path(__file__).resolve().parent / "host"
CU_FILES = sorted(KERNELS.glob("*.cu"))

NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
CXXFILT = shutil.which("c++filt")


# ----------------------------------------------------------------- (a) nvcc

def _parse_ptxas(text):
    """{mangled entry: {'regs': int, 'spill_stores': int, 'spill_loads': int}}."""
    info = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = m.group(1)
            info[current] = {}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            info[current]["spill_stores"] = int(m.group(1))
            info[current]["spill_loads"] = int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            info[current]["regs"] = int(m.group(1))
    return info


def _demangle(names):
    if not CXXFILT:
        return None
    res = subprocess.run([CXXFILT], input="\n".join(names), capture_output=True, text=True,
                         check=True)
    out = {}
    for mangled, pretty in zip(names, res.stdout.splitlines()):
        pretty = pretty.strip()
        if pretty.startswith("void "):
            pretty = pretty[5:]
        out[mangled] = pretty.split("(", 1)[0]
    return out


@pytest.fixture(scope="module")
def nvcc_reports():
    if NVCC is None:
        pytest.skip("nvcc not found on PATH (CUDA toolkit absent): kernel compile check skipped")
    reports = {}
    for cu in CU_FILES:
        cmd = [NVCC, "-arch=sm_90", "-std=c++17", "-I%s" % KERNELS, "-Xptxas", "-v",
               "-c", str(cu), "-o", os.devnull]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, "nvcc failed on %s:\n%s%s" % (cu.name, res.stdout, res.stderr)
        reports[cu.name] = (res.stdout + res.stderr, _parse_ptxas(res.stdout + res.stderr))
    return reports


def test_kernel_sources_are_cuda_only():
    files = sorted(p.name for p in KERNELS.iterdir() if not p.name.startswith("."))
    assert files, "kernels/ is empty"
    assert all(f.endswith((".cu", ".cuh")) for f in files), files
    for p in KERNELS.iterdir():
        text = p.read_text()
        # NVRTC has no host headers: only our own local includes are allowed
        for inc in re.findall(r'^\s*#\s*include\s*(\S+)', text, re.M):
            assert inc.startswith('"'), "%s includes %s (not NVRTC-safe)" % (p.name, inc)


@pytest.mark.parametrize("cu", [p.name for p in CU_FILES])
def test_nvcc_sm90_no_spills(nvcc_reports, cu):
    text, info = nvcc_reports[cu]
    assert info, "no ptxas report for %s:\n%s" % (cu, text)
    pretty = _demangle(list(info)) or {}
    lines = []
    for mangled, st in sorted(info.items()):
        name = pretty.get(mangled, mangled)
        lines.append("%-45s %3s regs  spill %s/%s" % (name, st.get("regs"), st.get("spill_stores"),
                                                      st.get("spill_loads")))
        assert st.get("spill_stores") == 0 and st.get("spill_loads") == 0, \
            "%s spills registers: %s" % (name, st)
        assert st.get("regs", 999) <= 255
    print("\n%s (sm_90):\n  %s" % (cu, "\n  ".join(lines)))


def test_nvcc_instantiates_every_name_expression(nvcc_reports):
    if CXXFILT is None:
        pytest.skip("c++filt not found: cannot demangle the ptxas entry names")
    for module, (fname, names) in cmod.MODULES.items():
        _, info = nvcc_reports[fname]
        compiled = set(_demangle(list(info)).values())
        assert set(names) == compiled, (module, sorted(set(names) ^ compiled))


def _find_nvrtc():
    cands = []
    lib = ctypes.util.find_library("nvrtc")
    if lib:
        cands.append(lib)
    for base in sys.path:
        cands += sorted(glob.glob(os.path.join(base, "nvidia", "cu1*", "lib", "libnvrtc.so*")))
        cands += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")))
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cands += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))
    for c in cands:
        if "builtins" in os.path.basename(c):
            continue
        try:
            return ctypes.CDLL(c)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("module", sorted(cmod.MODULES))
def test_nvrtc_compiles_expanded_source_with_name_expressions(module):
    """What cupy.RawModule(code=..., options=..., name_expressions=...) does."""
    lib = _find_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc for this check)")
    fname, names = cmod.MODULES[module]
    src = cmod.expand_source(fname, KERNELS)
    assert "#include" not in re.sub(r"//.*", "", src), "local includes must be expanded"
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), fname.encode(), 0,
                                  None, None) == 0
    try:
        for n in names:
            assert lib.nvrtcAddNameExpression(prog, n.encode()) == 0, n
        opts = list(cmod.compile_options(KERNELS)) + ["-arch=sm_90"]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(max(1, size.value))
        lib.nvrtcGetProgramLog(prog, log)
        assert rc == 0, "NVRTC failed on %s:\n%s" % (fname, log.value.decode(errors="replace"))
        for n in names:
            lowered = ctypes.c_char_p()
            assert lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(lowered)) == 0, n
            assert lowered.value and lowered.value.startswith(b"_Z") or n == "fcgpu_dropout_mask"
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def test_expand_source_inlines_each_header_once():
    src = cmod.expand_source("batchnorm.cu", KERNELS)
    assert src.count("#define FCGPU_PHILOX_CUH") == 1
    assert src.count("#define FCGPU_OPS_CUH") == 1
    assert '#line 1 "philox.cuh"' in src
    assert cmod.kernels_dir() == KERNELS or (cmod.kernels_dir() / "philox.cuh").is_file()


# ----------------------------------------------------------------- host builds

def _build(tmp_dir, source, name):
    if CXX is None:
        pytest.skip("no host C++ compiler (g++/clang++) found")
    exe = Path(tmp_dir) / name
    cmd = [CXX, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
           "-I%s" % KERNELS, str(HOST / source), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, "host build of %s failed:\n%s" % (source, res.stderr)
    return exe


@pytest.fixture(scope="module")
def philox_exe(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("philox"), "philox_kat.cpp", "philox_kat")


@pytest.fixture(scope="module")
def elem_exe(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("elem"), "elem_ops.cpp", "elem_ops")


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
    compiled = frandom.dropout_mask((n,), p, seed, stream)
    ref = frandom.dropout_mask_reference((n,), p, seed, stream)
    assert np.array_equal(host, ref)
    assert np.array_equal(compiled, ref)
    assert abs(host.mean() - p) < 5e-3


def test_host_philox_mask_far_counter(philox_exe):
    """Block counters past 2^32 (elements past 2^34) use the high counter word."""
    # element i = 4 * 2^32 + k lies in block 2^32: counter (0, 1, stream lo, stream hi)
    seed, stream = 77, 3
    j = 2 ** 32
    r = frandom.philox4x32_10(np.array([j & 0xFFFFFFFF, j >> 32, stream, 0], np.uint32),
                              np.array([seed, 0], np.uint32))
    lo = frandom.philox4x32_10(np.array([0, 0, stream, 0], np.uint32),
                               np.array([seed, 0], np.uint32))
    assert not np.array_equal(r, lo)


# ----------------------------------------------------------------- (c) element ops on the host

def _hexf(v):
    return float(v).hex()


def _run_elem(exe, tmp, kind, dtype, arrays, outs, **params):
    tag = "f32" if np.dtype(dtype) == np.float32 else "f64"
    for name, arr in arrays.items():
        np.ascontiguousarray(arr, dtype=dtype).tofile(str(tmp / (name + ".bin")))
    args = [str(exe), kind, tag, str(tmp)]
    for k, v in params.items():
        args.append("%s=%s" % (k, _hexf(v) if isinstance(v, (float, np.floating)) else int(v)))
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return {name: np.fromfile(str(tmp / (name + ".out.bin")), dtype=dtype) for name in outs}


def rel_err(actual, ref):
    actual = np.asarray(actual, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(actual - ref) / (denom if denom > 0 else 1.0))


def assert_close(actual, ref, dtype, what="", magnitude=None):
    """fp32: normwise relative error < 1e-5 and max error < 1e-5 * max |ref|;
    fp64: the same at 1e-12. ``magnitude`` (same shape as ref) replaces |ref| as
    the scale where the result comes out of cancellation (batchnorm backward): then
    errors are measured against the size of the terms that cancel."""
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    actual = np.asarray(actual, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    mag = ref if magnitude is None else np.asarray(magnitude, dtype=np.float64).ravel()
    assert actual.shape == ref.shape == mag.shape, what
    err = rel_err(actual, ref) if magnitude is None else float(
        np.linalg.norm(actual - ref) / max(np.linalg.norm(mag), 1e-300))
    assert err < tol, "%s: normwise relative error %.3g" % (what, err)
    scale = max(np.abs(mag).max(initial=0.0), 1e-300)
    assert np.abs(actual - ref).max(initial=0.0) <= tol * scale, \
        "%s: max error %.3g (scale %.3g)" % (what, np.abs(actual - ref).max(), scale)


def bn_backward_magnitudes(dy, x, gamma, mean, inv_std):
    """Sizes of the terms of the batchnorm backward, float64: for dx the leading term
    gamma * inv_std * dy, for (dgamma, dbeta) the sums of |dy * xhat| and |dy|."""
    dy = np.asarray(dy, np.float64)
    xhat = (np.asarray(x, np.float64) - mean) * inv_std
    dx_mag = np.abs(gamma * inv_std * dy) + np.abs(gamma * inv_std * xhat * np.abs(dy * xhat).mean(axis=0))
    return dx_mag, np.concatenate([np.abs(dy * xhat).sum(axis=0), np.abs(dy).sum(axis=0)])


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 4, 1001, 65_537])
@pytest.mark.parametrize("p", [0.3, 0.8, 1.0])
def test_host_flat_ops_bit_identical(elem_exe, tmp_path, dtype, n, p):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    seed, stream = 2 ** 40 + n, 12345
    t = frandom.keep_threshold(p)
    t = 1 << 32 if t is None else t
    s = fused._scale(p, np.dtype(dtype))
    s = 1.0 if s is None else float(s)
    # dropout forward (and backward: the same op on dout)
    y = _run_elem(elem_exe, tmp_path, "flat", dtype, {"a": x}, ["y"], op=0, n=n, seed=seed,
                  stream=stream, t=t, s=s)["y"]
    ref, _ = fused.dropout_forward_ref(x, p, seed, stream)
    assert y.dtype == ref.dtype and np.array_equal(y.view(np.uint8), ref.view(np.uint8))
    assert np.array_equal(y, fused.dropout_backward_ref(x, p, seed, stream))
    # relu + dropout forward
    y = _run_elem(elem_exe, tmp_path, "flat", dtype, {"a": x}, ["y"], op=1 if p < 1 else 2, n=n,
                  seed=seed, stream=stream, t=t, s=s)["y"]
    ref = fused.relu_dropout_forward_ref(x, p, seed, stream)
    assert np.array_equal(y, ref)
    # relu + dropout backward from out
    dout = rng.standard_normal(n).astype(dtype)
    dx = _run_elem(elem_exe, tmp_path, "flat", dtype, {"a": dout, "b": ref}, ["y"], op=3, n=n,
                   seed=0, stream=0, t=t, s=s)["y"]
    assert np.array_equal(dx, fused.relu_dropout_backward_ref(dout, ref, p))


BN_SHAPES = [
    # (N, D, sms) ; sms picks the chunk layout like a device would
    (2, 5, 132),
    (2, 1, 132),
    (7, 3, 4),
    (490, 500, 132),
    (1000, 37, 2),
    (513, 8, 132),
    (3000, 4, 1),
]


def _bn_inputs(rng, n, d, dtype, offset=3.0):
    x = (rng.standard_normal((n, d)) * rng.uniform(0.5, 4.0, d) + offset * rng.standard_normal(d))
    gamma = rng.uniform(0.5, 1.5, d)
    beta = rng.standard_normal(d)
    rm = rng.standard_normal(d)
    rv = rng.uniform(0.5, 2.0, d)
    return [a.astype(dtype) for a in (x, gamma, beta, rm, rv)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,sms", BN_SHAPES)
@pytest.mark.parametrize("mode,p", [(0, 1.0), (1, 1.0), (2, 0.8), (2, 0.3)])
def test_host_bn_forward_train(elem_exe, tmp_path, dtype, n, d, sms, mode, p):
    rng = np.random.default_rng(n * 1000 + d)
    x, gamma, beta, rm, rv = _bn_inputs(rng, n, d, dtype)
    r, g = chunk_layout(n, d, sms)
    assert (g - 1) * r < n <= g * r
    eps, momentum, seed, stream = 1e-5, 0.9, 99, 2 ** 35 + 1
    t = frandom.keep_threshold(p)
    s = 1.0 if t is None else float(frandom.dropout_scale(p, dtype))
    t = 1 << 32 if t is None else t
    res = _run_elem(elem_exe, tmp_path, "bn_train", dtype,
                    {"x": x, "gamma": gamma, "beta": beta, "rm": rm, "rv": rv},
                    ["out", "mean", "inv_std", "rm", "rv"], mode=mode, N=n, D=d, R=r, G=g,
                    eps=eps, momentum=momentum, seed=seed, stream=stream, t=t, s=s)
    f64 = [a.astype(np.float64) for a in (x, gamma, beta, rm, rv)]
    rm64, rv64 = f64[3].copy(), f64[4].copy()
    if mode == 0:
        out, mean, inv_std = fused.bn_forward_train_ref(f64[0], f64[1], f64[2], eps, momentum,
                                                        rm64, rv64)
    elif mode == 1:
        out, mean, inv_std = fused.bn_forward_train_ref(f64[0], f64[1], f64[2], eps, momentum,
                                                        rm64, rv64)
        out = np.maximum(out, 0)
    else:
        out, mean, inv_std = fused.bn_relu_dropout_forward_ref(
            f64[0], f64[1], f64[2], eps, momentum, rm64, rv64, p, seed, stream)
    assert_close(res["out"], out.ravel(), dtype, "out")
    assert_close(res["mean"], mean, dtype, "mean")
    assert_close(res["inv_std"], inv_std, dtype, "inv_std")
    assert_close(res["rm"], rm64, dtype, "running_mean")
    assert_close(res["rv"], rv64, dtype, "running_var")


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_bn_forward_train_large_offset_is_stable(elem_exe, tmp_path, dtype):
    """Mean 1e4 x std: a one-pass sum-of-squares would lose every digit in fp32."""
    rng = np.random.default_rng(5)
    n, d = 4096, 16
    x = (rng.standard_normal((n, d)) + 1e4).astype(dtype)
    gamma, beta = np.ones(d, dtype), np.zeros(d, dtype)
    rm, rv = np.zeros(d, dtype), np.ones(d, dtype)
    r, g = chunk_layout(n, d, 132)
    res = _run_elem(elem_exe, tmp_path, "bn_train", dtype,
                    {"x": x, "gamma": gamma, "beta": beta, "rm": rm, "rv": rv},
                    ["out", "mean", "inv_std", "rm", "rv"], mode=0, N=n, D=d, R=r, G=g,
                    eps=1e-5, momentum=0.9, seed=0, stream=0, t=1 << 32, s=1.0)
    var_ref = x.astype(np.float64).var(axis=0)
    var_got = res["rv"].astype(np.float64) - 0.9  # running_var = 0.9 * 1 + 0.1 * var
    assert np.allclose(var_got / 0.1, var_ref, rtol=2e-3)
    inv_ref = 1.0 / np.sqrt(var_ref + 1e-5)
    assert np.allclose(res["inv_std"], inv_ref, rtol=1e-3 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", [(2, 5), (490, 500), (31, 1)])
def test_host_bn_forward_infer(elem_exe, tmp_path, dtype, n, d):
    rng = np.random.default_rng(d)
    x, gamma, beta, rm, rv = _bn_inputs(rng, n, d, dtype)
    res = _run_elem(elem_exe, tmp_path, "bn_infer", dtype,
                    {"x": x, "gamma": gamma, "beta": beta, "rm": rm, "rv": rv}, ["out"],
                    N=n, D=d, eps=1e-5)
    f64 = [a.astype(np.float64) for a in (x, gamma, beta, rm, rv)]
    ref = fused.bn_forward_infer_ref(f64[0], f64[1], f64[2], 1e-5, f64[3], f64[4])
    assert_close(res["out"], ref, dtype, "out")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,sms", BN_SHAPES)
@pytest.mark.parametrize("fused_mode,p", [(False, 1.0), (True, 1.0), (True, 0.8), (True, 0.3)])
def test_host_bn_backward(elem_exe, tmp_path, dtype, n, d, sms, fused_mode, p):
    rng = np.random.default_rng(n + 7 * d)
    x, gamma, beta, rm, rv = _bn_inputs(rng, n, d, dtype)
    dout = (rng.standard_normal((n, d)) + 0.25).astype(dtype)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    inv_std = 1.0 / np.sqrt(x64.var(axis=0) + 1e-5)
    r, g = chunk_layout(n, d, sms)
    arrays = {"dout": dout, "x": x, "gamma": gamma, "mean": mean.astype(dtype),
              "inv_std": inv_std.astype(dtype)}
    seed, stream = 5, 6
    if fused_mode:
        out, _, _ = fused.bn_relu_dropout_forward_ref(x64, gamma.astype(np.float64),
                                                      beta.astype(np.float64), 1e-5, 0.9,
                                                      rm.astype(np.float64),
                                                      rv.astype(np.float64), p, seed, stream)
        out = out.astype(dtype)
        arrays["out"] = out
    t = frandom.keep_threshold(p)
    s = 1.0 if t is None else float(frandom.dropout_scale(p, dtype))
    res = _run_elem(elem_exe, tmp_path, "bn_bwd", dtype, arrays, ["dx", "dgamma", "dbeta"],
                    fused=int(fused_mode), N=n, D=d, R=r, G=g, s=s)
    # reference in float64 from the same (rounded) inputs
    m64, i64, g64 = (arrays[k].astype(np.float64) for k in ("mean", "inv_std", "gamma"))
    if fused_mode:
        dx, dgamma, dbeta = fused.bn_relu_dropout_backward_ref(
            dout.astype(np.float64), out.astype(np.float64), x64, g64, m64, i64, p)
    else:
        dx, dgamma, dbeta = fused.bn_backward_ref(dout.astype(np.float64), x64, g64, m64, i64)
    dy = fused.relu_dropout_backward_ref(dout.astype(np.float64), out.astype(np.float64), p) \
        if fused_mode else dout.astype(np.float64)
    dx_mag, sums_mag = bn_backward_magnitudes(dy, x64, g64, m64, i64)
    assert_close(res["dx"], dx, dtype, "dx", magnitude=dx_mag)
    assert_close(np.concatenate([res["dgamma"], res["dbeta"]]), np.concatenate([dgamma, dbeta]),
                 dtype, "dgamma/dbeta", magnitude=sums_mag)


def test_chunk_layout_covers_rows():
    for n in (1, 2, 63, 64, 65, 490, 4097, 65536, 10 ** 6):
        for d in (1, 31, 32, 500, 4096):
            for sms in (1, 8, 132):
                r, g = chunk_layout(n, d, sms)
                assert r >= 1 and 1 <= g <= 65535
                assert (g - 1) * r < n <= g * r, (n, d, sms, r, g)
