"""The kernel table (:class:`fcgpu.cuda.module.Kernel`): each kernel's name is spelled
once, in the Kernel object beside its launcher; NVRTC's name expressions
(``module.MODULES``), the host emulator's registry (tests/toolchain.py) and the nvcc
checks derive from it, and the ``.cu`` files' explicit instantiations must match it
(tests/test_kernels_nvcc.py)."""
from __future__ import annotations

import types

import numpy as np
import pytest

import toolchain as tc
from fcgpu.cuda import module as cmod


@pytest.fixture
def scratch_table(monkeypatch):
    """The registry, restored after the test (so throwaway kernels leave no trace)."""
    saved = {k: list(v) for k, v in cmod._REGISTRY.items()}
    yield cmod._REGISTRY
    cmod._REGISTRY.clear()
    cmod._REGISTRY.update(saved)


def test_every_cu_file_has_its_kernels_declared():
    assert {f.name for f in tc.CU_FILES} == {fname for fname, _ in cmod.MODULES.values()}
    for module, (fname, names) in cmod.MODULES.items():
        assert fname == module + ".cu" and names and len(set(names)) == len(names)


def test_kernel_names_are_built_once_and_checked(scratch_table):
    k = cmod.Kernel("demo.cu", "fcgpu_demo", cmod.FLOAT_DTYPES, (0, 1), (True, False))
    assert len(k.names) == 8 and k.names[0] == "fcgpu_demo<float, 0, true>"
    name = k.name(np.float32, 1, False)
    assert name == "fcgpu_demo<float, 1, false>"
    assert k.name(np.float32, 1, False) is name  # cached per argument tuple
    assert k.name(np.dtype(np.float64), np.int64(0), np.bool_(True)) == \
        "fcgpu_demo<double, 0, true>"
    with pytest.raises(KeyError, match="not among the instantiations"):
        k.name(np.float32, 2, True)
    with pytest.raises(ValueError, match="no kernel takes arrays of dtype"):
        k.name(np.int32, 0, True)
    with pytest.raises(TypeError, match="takes 3 template arguments"):
        k.name(np.float32, 0)
    plain = cmod.Kernel("demo.cu", "fcgpu_plain")
    assert plain.names == ("fcgpu_plain",) and plain.name() == "fcgpu_plain"
    assert cmod.MODULES["demo"] == ("demo.cu", k.names + plain.names)
    with pytest.raises(ValueError, match="declared twice"):
        cmod.Kernel("demo.cu", "fcgpu_plain")
    with pytest.raises(ValueError, match="kernels/\\*.cu"):
        cmod.Kernel("demo.cuh", "fcgpu_x")


def test_emulator_registry_derives_from_the_table(scratch_table):
    """A kernel declared in Python shows up in the emulator's generated registry, with
    __syncthreads read from its body; a kernel without a definition fails the build's
    generation instead of being left out."""
    sources, registry = tc.emulator_tables()
    assert '{"fcgpu_bn_stats<float>", Entry{&Invoker<&fcgpu_bn_stats<float>>::run, true}},' \
        in registry
    assert '{"fcgpu_dropout_mask", Entry{&Invoker<&fcgpu_dropout_mask>::run, false}},' \
        in registry
    assert registry.count("Entry{") == sum(len(n) for _, n in cmod.MODULES.values())
    assert sources.count("#include") == len(cmod.MODULES)
    cmod.Kernel("graph.cu", "fcgpu_not_written", cmod.FLOAT_DTYPES)
    with pytest.raises(AssertionError, match="no definition of kernel fcgpu_not_written"):
        tc.emulator_tables()


def test_kernel_body_reader():
    src = """
    template <typename T> __global__ void k(const T* a) { if (a) { __syncthreads(); } }
    template __global__ void k<float>(const float*);
    __global__ void k2(int n) { }
    """
    assert "__syncthreads" in tc.kernel_body(src, "k")
    assert tc.kernel_body(src, "k2").strip() == "{ }"


def test_a_kernel_declared_after_its_module_was_built_rebuilds_it(scratch_table, monkeypatch):
    """get_kernel compiles a module with the names declared so far; a name declared
    later makes the next fetch compile the module again with it."""
    builds = []

    class RawModule:
        def __init__(self, code, options, name_expressions):
            builds.append(tuple(name_expressions))

        def get_function(self, name):
            assert name in builds[-1]
            return name

    fake = types.SimpleNamespace(RawModule=RawModule, cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0)))
    monkeypatch.setattr(cmod, "require_cupy", lambda: fake)
    monkeypatch.setattr(cmod, "_kernels", {})
    monkeypatch.setattr(cmod, "_modules", {})
    monkeypatch.setattr(cmod, "_sources", {})
    a = cmod.Kernel("demo.cu", "fcgpu_a")
    monkeypatch.setattr(cmod, "expand_source", lambda fname, kdir=None: "// " + fname)
    assert cmod.get_kernel(a.name()) == "fcgpu_a" and builds == [("fcgpu_a",)]
    assert cmod.get_kernel(a.name()) == "fcgpu_a" and len(builds) == 1  # cached
    b = cmod.Kernel("demo.cu", "fcgpu_b")
    assert cmod.get_kernel(b.name()) == "fcgpu_b" and builds[-1] == ("fcgpu_a", "fcgpu_b")
    assert cmod.loaded_kernels(0) == {"fcgpu_a", "fcgpu_b"}
