"""The kernels as the CUDA compilers see them (no GPU needed).

* every ``kernels/*.cu`` compiles with the local ``nvcc`` (``-Xptxas -v``) for each
  architecture of ``ARCHS`` with no register spills and no warning, and instantiates
  exactly the kernels that ``fcgpu.cuda`` asks NVRTC for;
* built the way CuPy builds them (it appends ``-ftz=true`` to every NVRTC compile),
  the modules whose float32 results must equal NumPy's bit for bit contain no
  ``.ftz`` instruction: float32 subnormals are kept (kernels/ops.cuh);
* where libnvrtc is present, the sources as ``fcgpu.cuda.module`` expands them
  compile with NVRTC and every name expression resolves (what ``cupy.RawModule``
  does at run time), with the same ``.ftz`` check on NVRTC's PTX.

The ptxas reports are compiled once per session (tests/test_kernels_host.py and
tests/test_cuda_graph.py read the kernels' parameter lists from them).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import toolchain as tc

from fcgpu.cuda import module as cmod

REPO = Path(__file__).resolve().parent.parent
KERNELS = REPO / "kernels"
CU_FILES = sorted(KERNELS.glob("*.cu"))

NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
CXXFILT = shutil.which("c++filt")

# Turing, Ampere (A100, consumer), Ada, Hopper, Blackwell (data centre, consumer)
ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
# the architecture whose report gives the kernels' names and parameter lists
REF_ARCH = "sm_90"
# modules that promise NumPy's float32 results bit for bit (dropout family, updates)
EXACT_MODULES = ("dropout.cu", "optim.cu", "graph.cu", "augment.cu")


def _parse_ptxas(text):
    """{arch: {mangled entry: {'regs': int, 'spill_stores': int, 'spill_loads': int}}}."""
    info = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            current = info.setdefault(m.group(2), {}).setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_stores"] = int(m.group(1))
            current["spill_loads"] = int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
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


@functools.lru_cache(maxsize=None)
def nvcc_archs():
    """The architectures of ARCHS this nvcc can build."""
    if NVCC is None:
        return ()
    res = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    have = set(re.findall(r"compute_(\d+)", res.stdout))
    return tuple(a for a in ARCHS if a[3:] in have)


_REPORTS = {}  # tuple of archs -> {cu name: (ptxas text, {arch: {entry: stats}})}


def ptxas_reports(archs):
    """Compile every ``.cu`` for ``archs`` (one nvcc call per file, the files in
    parallel) and parse the ptxas reports; memoized for the session."""
    archs = tuple(archs)
    if archs in _REPORTS:
        return _REPORTS[archs]
    gencode = []
    for a in archs:
        gencode += ["-gencode", "arch=compute_%s,code=%s" % (a[3:], a)]

    def build(cu):
        cmd = [NVCC, *gencode, "-std=c++17", "-I%s" % KERNELS, "-Xptxas", "-v",
               "-c", str(cu), "-o", os.devnull]
        return cu, subprocess.run(cmd, capture_output=True, text=True, timeout=900)

    reports = {}
    with ThreadPoolExecutor(max_workers=max(1, min(len(CU_FILES), os.cpu_count() or 1))) as ex:
        for cu, res in ex.map(build, CU_FILES):
            text = res.stdout + res.stderr
            assert res.returncode == 0, "nvcc failed on %s:\n%s" % (cu.name, text)
            reports[cu.name] = (text, _parse_ptxas(text))
    _REPORTS[archs] = reports
    return reports


@pytest.fixture(scope="module")
def nvcc_matrix():
    if NVCC is None:
        tc.unavailable("nvcc not found on PATH (CUDA toolkit absent): kernel compile check skipped")
    archs = nvcc_archs()
    if not archs:
        tc.unavailable("this nvcc builds none of %s" % ", ".join(ARCHS))
    return archs, ptxas_reports(archs)


@pytest.fixture(scope="module")
def nvcc_reports():
    """{cu name: (ptxas text, {entry: stats})} for REF_ARCH: from the matrix build when
    it already ran in this session, else a build for REF_ARCH alone."""
    if NVCC is None:
        tc.unavailable("nvcc not found on PATH (CUDA toolkit absent): kernel compile check skipped")
    full = _REPORTS.get(nvcc_archs())
    reports = full if full is not None and REF_ARCH in nvcc_archs() else \
        ptxas_reports((REF_ARCH,))
    return {cu: (text, info.get(REF_ARCH, {})) for cu, (text, info) in reports.items()}


def test_kernel_sources_are_cuda_only():
    files = sorted(p.name for p in KERNELS.iterdir() if not p.name.startswith("."))
    assert files, "kernels/ is empty"
    assert all(f.endswith((".cu", ".cuh")) for f in files), files
    for p in KERNELS.iterdir():
        text = p.read_text()
        # NVRTC has no host headers: only our own local includes are allowed
        for inc in re.findall(r'^\s*#\s*include\s*(\S+)', text, re.M):
            assert inc.startswith('"'), "%s includes %s (not NVRTC-safe)" % (p.name, inc)


def test_parse_ptxas_reads_every_architecture():
    text = "\n".join([
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'",
        "ptxas info    : Function properties for _Z1kv",
        "    8 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads",
        "ptxas info    : Used 40 registers, used 0 barriers, 380 bytes cmem[0]",
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'",
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
        "ptxas info    : Used 38 registers, used 0 barriers, 380 bytes cmem[0]",
    ])
    assert _parse_ptxas(text) == {
        "sm_80": {"_Z1kv": {"spill_stores": 4, "spill_loads": 8, "regs": 40}},
        "sm_90": {"_Z1kv": {"spill_stores": 0, "spill_loads": 0, "regs": 38}}}


@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_no_spills(nvcc_matrix, arch):
    archs, reports = nvcc_matrix
    if arch not in archs:
        tc.unavailable("this nvcc (%s) cannot build %s" % (NVCC, arch))
    lines, bad = [], []
    for cu in sorted(reports):
        text, by_arch = reports[cu]
        info = by_arch.get(arch)
        assert info, "no ptxas report for %s on %s:\n%s" % (cu, arch, text[-2000:])
        pretty = _demangle(list(info)) or {}
        for mangled, st in sorted(info.items()):
            name = pretty.get(mangled, mangled)
            lines.append("%-45s %3s regs  spill %s/%s" % (name, st.get("regs"),
                                                          st.get("spill_stores"),
                                                          st.get("spill_loads")))
            if st.get("spill_stores") != 0 or st.get("spill_loads") != 0 \
                    or st.get("regs", 999) > 255:
                bad.append("%s: %s" % (name, st))
    print("\n%s:\n  %s" % (arch, "\n  ".join(lines)))
    assert not bad, "%s: kernels spill registers:\n  %s" % (arch, "\n  ".join(bad))


def test_nvcc_matrix_builds_without_warnings(nvcc_matrix):
    """No compiler or ptxas warning on any architecture (e.g. launch bounds asking an
    SM for more resident threads than it has, which ptxas then ignores)."""
    _, reports = nvcc_matrix
    for cu, (text, _) in sorted(reports.items()):
        warnings = sorted({ln.strip() for ln in text.splitlines() if "warning" in ln.lower()})
        assert not warnings, "%s:\n  %s" % (cu, "\n  ".join(warnings[:10]))


def test_nvcc_instantiates_every_name_expression(nvcc_reports):
    if CXXFILT is None:
        tc.unavailable("c++filt not found: cannot demangle the ptxas entry names")
    for module, (fname, names) in cmod.MODULES.items():
        _, info = nvcc_reports[fname]
        compiled = set(_demangle(list(info)).values())
        assert set(names) == compiled, (module, sorted(set(names) ^ compiled))


def _ftz_lines(ptx):
    return [ln.strip() for ln in ptx.splitlines() if ".ftz" in ln]


def test_nvcc_ftz_true_keeps_float32_subnormals():
    """CuPy compiles with -ftz=true appended; the modules promising NumPy's float32
    results bit for bit must not flush: no .ftz instruction in their PTX, and the
    dropout multiply and the ReLU comparisons are the plain IEEE instructions."""
    if NVCC is None:
        tc.unavailable("nvcc not found on PATH (CUDA toolkit absent)")

    @functools.lru_cache(maxsize=None)
    def ptx(cu):
        res = subprocess.run([NVCC, "-arch=%s" % REF_ARCH, "-std=c++17", "-I%s" % KERNELS,
                              "-ftz=true", "-ptx", str(KERNELS / cu), "-o", "-"],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        return res.stdout

    for cu in EXACT_MODULES:
        text = ptx(cu)
        assert not _ftz_lines(text), "%s flushes float32 subnormals under -ftz=true:\n  %s" \
            % (cu, "\n  ".join(_ftz_lines(text)[:10]))
    drop = ptx("dropout.cu")
    for insn in ("mul.rn.f32", "setp.gtu.f32", "setp.gt.f32"):
        assert insn in drop, insn
    assert "div.rn.f32" in ptx("optim.cu") and "sqrt.rn.f32" in ptx("optim.cu")
    # the flag does reach the compiler: plain float code (batchnorm's) does flush
    assert _ftz_lines(ptx("batchnorm.cu"))


@pytest.mark.parametrize("module", sorted(cmod.MODULES))
def test_nvrtc_compiles_expanded_source_with_name_expressions(module):
    """What cupy.RawModule(code=..., options=..., name_expressions=...) does, with the
    -ftz=true CuPy appends."""
    ptx, lowered = tc.nvrtc_compile(module, extra=("-ftz=true",))
    fname, names = cmod.MODULES[module]
    assert set(lowered) == set(names)
    for n in names:
        assert lowered[n].startswith("_Z") or n == "fcgpu_dropout_mask", n
        assert ".entry %s(" % lowered[n] in ptx, n
    if fname in EXACT_MODULES:
        assert not _ftz_lines(ptx), "%s: %s" % (fname, _ftz_lines(ptx)[:10])
    else:
        assert _ftz_lines(ptx), "-ftz=true had no effect on %s" % fname


def test_expand_source_inlines_each_header_once():
    src = cmod.expand_source("batchnorm.cu", KERNELS)
    assert src.count("#define FCGPU_PHILOX_CUH") == 1
    assert src.count("#define FCGPU_OPS_CUH") == 1
    assert '#line 1 "philox.cuh"' in src
    assert cmod.kernels_dir() == KERNELS or (cmod.kernels_dir() / "philox.cuh").is_file()
