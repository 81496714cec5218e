"""The numbers the kernels and their launchers must agree on, read from the CUDA
sources and compared with the Python constants that copy them: the op codes of
kernels/ops.cuh (``FlatOp``, ``ColOp``) and fcgpu.cuda.ops' ``FLAT_*``/``COL_*``, the
update rules of kernels/optim.cuh (``UpdateRule``) and fcgpu.cuda.train_ops'
``RULE_*``, the counter slots of kernels/graph.cu (``GraphCounter``) and
fcgpu.cuda.graph's ``CTR_*``, the augmentation modes of kernels/augment.cu
(``AugmentMode``) and fcgpu.augment_spec's ``MODE_CODES``, and the reduction block shape
and stream base. A constant off by one launches another kernel's op (or reads another
counter): nothing else would say so until a result came out wrong on a GPU."""
from __future__ import annotations

import re

import pytest

import toolchain as tc
from fcgpu import augment_spec
from fcgpu.cuda import graph, ops, train_ops


def _strip_comments(text):
    return re.sub(r"/\*.*?\*/", "", re.sub(r"//[^\n]*", "", text), flags=re.S)


def read_enum(text, name):
    """``{enumerator: value}`` of C++ ``enum name { ... }`` in ``text`` (values given or
    implied, as C++ numbers them)."""
    m = re.search(r"\benum\s+(?:class\s+)?%s\s*\{(.*?)\}" % re.escape(name),
                  _strip_comments(text), re.S)
    assert m, "enum %s not found" % name
    out, nxt = {}, 0
    for item in (i.strip() for i in m.group(1).split(",")):
        if not item:
            continue
        key, _, value = (p.strip() for p in item.partition("="))
        nxt = int(value, 0) if value else nxt
        out[key] = nxt
        nxt += 1
    return out


def read_define(text, name):
    m = re.search(r"^\s*#\s*define\s+%s\s+(\S+)" % re.escape(name), text, re.M)
    assert m, "#define %s not found" % name
    return int(m.group(1), 0)


def _source(fname):
    return (tc.KERNELS / fname).read_text(encoding="utf-8")


def python_constants(module, prefix):
    """``{name: value}`` of the module's integer constants named ``prefix*``."""
    return {k: v for k, v in vars(module).items()
            if k.startswith(prefix) and type(v) is int}


# (source file, enum, Python module, prefix of its copies)
ENUMS = [
    ("ops.cuh", "FlatOp", ops, "FLAT_"),
    ("ops.cuh", "ColOp", ops, "COL_"),
    ("optim.cuh", "UpdateRule", train_ops, "RULE_"),
    ("graph.cu", "GraphCounter", graph, "CTR_"),
]


@pytest.mark.parametrize("fname,enum,module,prefix", ENUMS,
                         ids=[e[1] for e in ENUMS])
def test_python_constants_equal_the_cuda_enums(fname, enum, module, prefix):
    cuda = read_enum(_source(fname), enum)
    assert cuda and all(k.startswith(prefix) for k in cuda), cuda
    assert python_constants(module, prefix) == cuda, \
        "%s.%s* differ from %s's enum %s" % (module.__name__, prefix, fname, enum)


def test_augment_modes_equal_the_kernels():
    cuda = read_enum(_source("augment.cu"), "AugmentMode")
    assert {"AUG_" + k.upper(): v for k, v in augment_spec.MODE_CODES.items()} == cuda
    m = re.search(r"AUGMENT_STREAM_BASE\s*=\s*(0x[0-9a-fA-F]+)ull", _source("augment.cu"))
    assert m and int(m.group(1), 16) == augment_spec.AUGMENT_STREAM_BASE


def test_reduction_block_shape_equals_the_kernels():
    text = _source("batchnorm.cu")
    assert (read_define(text, "FCGPU_RED_X"), read_define(text, "FCGPU_RED_Y")) \
        == (ops.RED_X, ops.RED_Y)


def test_the_launchers_tables_use_the_constants():
    """The op and rule codes the Kernel table instantiates are exactly the enums'."""
    assert ops.FLAT_OPS == tuple(sorted(read_enum(_source("ops.cuh"), "FlatOp").values()))
    assert ops.COL_OPS == tuple(sorted(read_enum(_source("ops.cuh"), "ColOp").values()))
    assert train_ops.RULES == tuple(sorted(read_enum(_source("optim.cuh"),
                                                     "UpdateRule").values()))


def test_enum_reader():
    text = """enum E {  // leading comment
      A = 0,   // y = a
      B,       /* implied 1 */
      C = 0x10,
      D,
    };"""
    assert read_enum(text, "E") == {"A": 0, "B": 1, "C": 16, "D": 17}
    with pytest.raises(AssertionError):
        read_enum(text, "F")
