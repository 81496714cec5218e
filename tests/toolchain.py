"""The CPU-side kernel toolchain of the tests: nvcc, NVRTC and the host C++ compiler.

conftest.py turns each build here into a session fixture (built once per run, shared
by tests/test_kernels_host.py and tests/test_cuda_graph.py):

* :func:`nvcc_reports`: every ``kernels/*.cu`` through ``nvcc -Xptxas -v`` (registers,
  spills, the entry points nvcc instantiated);
* :func:`nvrtc_compile`: a module's source as :mod:`fcgpu.cuda.module` expands it,
  through NVRTC with the name expressions CuPy asks for: the PTX and the lowered names;
* :func:`launch_bounds`: each kernel's largest block (``.maxntid`` of that PTX,
  i.e. its ``__launch_bounds__``), which every emulated launch must fit;
* :func:`build_emulator`: ``kernels/*.cu`` built for the host
  (``tests/host/kernel_emu.cpp``), loaded with ctypes;
* :func:`emulator_signatures`: every kernel's parameter list, read from the
  emulator library's symbols (``nm -C``), so the launch checks need only g++.

A missing tool makes the tests that need it skip with the reason, unless
``FCGPU_REQUIRE_NVCC=1`` (CI sets it): then every one of these checks must run, and a
missing tool (nvcc, NVRTC, c++filt, the host compiler, nm) fails the tests instead.
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

import pytest

from fcgpu.cuda import module as cmod

REPO = Path(__file__).resolve().parent.parent
KERNELS = REPO / "kernels"
HOST = Path(__file__).resolve().parent / "host"
CU_FILES = sorted(KERNELS.glob("*.cu"))

NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
CXXFILT = shutil.which("c++filt")
NM = shutil.which("nm")

REQUIRE_NVCC = "FCGPU_REQUIRE_NVCC"


def required(var):
    """True when environment variable ``var`` asks for checks that must not skip."""
    return os.environ.get(var, "").strip() not in ("", "0")


def unavailable(reason):
    """Skip the calling test for ``reason``, or fail it under FCGPU_REQUIRE_NVCC=1."""
    if required(REQUIRE_NVCC):
        pytest.fail("%s=1 but %s" % (REQUIRE_NVCC, reason), pytrace=False)
    pytest.skip(reason)


def all_kernel_names():
    names = set()
    for _, nms in cmod.MODULES.values():
        names |= set(nms)
    return names


# ----------------------------------------------------------------- nvcc

def parse_ptxas(text):
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


def split_signature(pretty):
    """``(name, [parameter types])`` of a demangled ``[void ]name<...>(params)``."""
    pretty = pretty.strip()
    if pretty.startswith("void "):
        pretty = pretty[5:]
    name, params = pretty.split("(", 1)
    return name, [p.strip() for p in params.rstrip(")").split(",")]


def demangle(names):
    """{mangled: demangled} through c++filt."""
    if CXXFILT is None:
        unavailable("c++filt not found: cannot demangle the kernels' names")
    res = subprocess.run([CXXFILT], input="\n".join(names), capture_output=True, text=True,
                         check=True)
    return dict(zip(names, (ln.strip() for ln in res.stdout.splitlines())))


def nvcc_reports():
    """{file name: (ptxas output, parse_ptxas of it)} for every kernels/*.cu (sm_90)."""
    if NVCC is None:
        unavailable("nvcc not found on PATH (CUDA toolkit absent): kernel compile check "
                    "skipped")
    reports = {}
    for cu in CU_FILES:
        cmd = [NVCC, "-arch=sm_90", "-std=c++17", "-I%s" % KERNELS, "-Xptxas", "-v",
               "-c", str(cu), "-o", os.devnull]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, "nvcc failed on %s:\n%s%s" % (cu.name, res.stdout, res.stderr)
        reports[cu.name] = (res.stdout + res.stderr, parse_ptxas(res.stdout + res.stderr))
    return reports


# ----------------------------------------------------------------- NVRTC

def find_nvrtc():
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


def nvrtc_compile(module, arch="sm_90", extra=()):
    """What ``cupy.RawModule(code=..., options=..., name_expressions=...)`` does for
    ``module`` of fcgpu.cuda.module.MODULES: ``(ptx, {name expression: lowered name})``;
    ``extra`` options go last, where CuPy puts its ``-ftz=true``.
    A failed compile is an AssertionError with NVRTC's log."""
    fname, names = cmod.MODULES[module]
    return nvrtc_compile_source(cmod.expand_source(fname, KERNELS), fname, names,
                                cmod.compile_options(KERNELS), arch, extra)


def nvrtc_compile_source(src, fname, names, options, arch="sm_90", extra=()):
    """:func:`nvrtc_compile` of a source text as ``fcgpu.cuda.module`` expanded it (for
    instance by an installed copy of fcgpu), with its name expressions and options."""
    lib = find_nvrtc()
    if lib is None:
        unavailable("libnvrtc not found (pip install nvidia-cuda-nvrtc for this check)")
    assert "#include" not in re.sub(r"//.*", "", src), "local includes must be expanded"
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), fname.encode(), 0,
                                  None, None) == 0
    try:
        for n in names:
            assert lib.nvrtcAddNameExpression(prog, n.encode()) == 0, n
        opts = list(options) + ["-arch=%s" % arch] + list(extra)
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(max(1, size.value))
        lib.nvrtcGetProgramLog(prog, log)
        assert rc == 0, "NVRTC failed on %s:\n%s" % (fname, log.value.decode(errors="replace"))
        lowered = {}
        for n in names:
            low = ctypes.c_char_p()
            assert lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(low)) == 0, n
            lowered[n] = low.value.decode()
        assert lib.nvrtcGetPTXSize(prog, ctypes.byref(size)) == 0
        ptx = ctypes.create_string_buffer(size.value)
        assert lib.nvrtcGetPTX(prog, ptx) == 0
        return ptx.value.decode(), lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


_ENTRY_RE = re.compile(r"\.entry\s+([\w$.]+)\s*\(")
_MAXNTID_RE = re.compile(r"\.maxntid\s+(\d+)\s*(?:,\s*(\d+))?\s*(?:,\s*(\d+))?")


def ptx_maxntid(ptx):
    """{entry (lowered name): .maxntid thread count, or None without one}: the
    directives between an entry's parameter list and its body."""
    out = {}
    for m in _ENTRY_RE.finditer(ptx):
        close = ptx.index(")", m.end())
        body = ptx.index("{", close)
        d = _MAXNTID_RE.search(ptx, close, body)
        out[m.group(1)] = None if d is None else \
            int(d.group(1)) * int(d.group(2) or 1) * int(d.group(3) or 1)
    return out


def launch_bounds():
    """{name expression: most threads per block it may be launched with}, read from
    the PTX NVRTC makes of each module (``.maxntid`` = ``__launch_bounds__``; None
    for a kernel without one: the hardware's 1024). A launch with a bigger block
    fails on a GPU (too many resources requested for launch)."""
    bounds = {}
    for module in cmod.MODULES:
        ptx, lowered = nvrtc_compile(module)
        maxntid = ptx_maxntid(ptx)
        for name, low in lowered.items():
            assert low in maxntid, "%s (%s) is not an entry of the PTX" % (name, low)
            bounds[name] = maxntid[low]
    return bounds


# ----------------------------------------------------------------- the host emulator

def host_compiler():
    if CXX is None:
        unavailable("no host C++ compiler (g++/clang++) found")
    return CXX


def kernel_body(source, template):
    """The body (``{...}``) of ``__global__`` function ``template`` in C++ ``source``:
    the definition, not the explicit instantiations (which end in ``;``)."""
    for m in re.finditer(r"\b%s\s*\(" % re.escape(template), source):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        rest = source[i:].lstrip()
        if rest.startswith("{"):
            start = i + source[i:].index("{")
            depth, j = 1, start + 1
            while depth:
                depth += {"{": 1, "}": -1}.get(source[j], 0)
                j += 1
            return source[start:j]
    raise AssertionError("no definition of kernel %s found" % template)


def emulator_tables(kernels_dir=KERNELS):
    """``(sources, registry)``: the text of tests/host/kernel_emu.cpp's two generated
    includes, from the launchers' table (:data:`fcgpu.cuda.module.MODULES`): an
    ``#include`` of every kernels/*.cu it names, and one registry entry per name
    expression, flagged to run its blocks' threads concurrently when the kernel's body
    calls ``__syncthreads`` (a kernel that syncs without the flag aborts the emulator:
    ``emu: __syncthreads in a kernel launched without threads``)."""
    head = "// generated by tests/toolchain.py from fcgpu.cuda.module.MODULES\n"
    includes, entries = [head], [head]
    for fname, names in cmod.MODULES.values():
        includes.append('#include "%s"\n' % fname)
        text = (Path(kernels_dir) / fname).read_text(encoding="utf-8")
        for name in names:
            syncs = "__syncthreads" in kernel_body(text, name.split("<")[0])
            entries.append('{"%s", Entry{&Invoker<&%s>::run, %s}},\n'
                           % (name, name, "true" if syncs else "false"))
    return "".join(includes), "".join(entries)


def build_emulator(out_dir):
    """kernels/*.cu compiled for the host with tests/host/cuda_emu.h, as a ctypes
    library (``emu_launch``, ``emu_count``, ``emu_name``; ``.path`` is its file). Its
    kernel list comes from :func:`emulator_tables`."""
    cxx = host_compiler()
    out_dir = Path(out_dir)
    out = out_dir / "libfcgpu_emu.so"
    sources, registry = emulator_tables()
    (out_dir / "emu_sources.inc").write_text(sources, encoding="utf-8")
    (out_dir / "emu_registry.inc").write_text(registry, encoding="utf-8")
    cmd = [cxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
           "-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
           "-I%s" % out_dir, "-I%s" % KERNELS, "-I%s" % HOST, str(HOST / "kernel_emu.cpp"),
           "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "barrier" in res.stderr:
        unavailable("host C++ compiler lacks C++20 <barrier>: kernel emulation skipped")
    assert res.returncode == 0, "emulator build failed:\n%s" % res.stderr
    lib = ctypes.CDLL(str(out))
    lib.emu_launch.restype = ctypes.c_int
    lib.emu_launch_blocks.restype = ctypes.c_int
    lib.emu_name.restype = ctypes.c_char_p
    lib.path = out
    return lib


def emulator_signatures(lib_path):
    """{name expression: [parameter types]} of every kernel the emulator library
    defines, from its symbol table (the explicit instantiations of kernels/*.cu are
    the same C++ functions nvcc compiles; test_kernels_host.py compares the two where
    nvcc is present)."""
    if NM is None:
        unavailable("nm (binutils) not found: cannot read the emulator's symbols")
    res = subprocess.run([NM, "-C", "--defined-only", str(lib_path)], capture_output=True,
                         text=True, check=True)
    sigs = {}
    for line in res.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) != 3 or parts[1] not in ("T", "W"):
            continue
        pretty = parts[2]
        if not pretty.startswith(("fcgpu_", "void fcgpu_")):
            continue
        name, params = split_signature(pretty)
        sigs[name] = params
    return sigs
