"""The CuPy contract (docs/cupy.md) against the real ``cupy-cuda12x`` package, which
installs and imports without a GPU.

(1) every entry point docs/cupy.md lists exists in the installed CuPy and the arguments
    it lists bind to CuPy's signature. What is compared depends on what CuPy exposes:
    Python functions and classes (``cupy.empty``, ``cupy.cuda.Stream``) and Cython
    functions compiled with ``binding=True`` (``Stream.begin_capture``) give
    ``inspect.signature``: parameter names, kinds and which have defaults; builtin
    Cython functions, methods of ``cdef`` classes and ufuncs give only the signature
    Cython embeds as their docstring's first line (``get(self, stream=None, ...)``,
    ``exp(x, /, out=None, *, ...)``): the same, with C types dropped; a value with
    neither (NumPy's scalar types, ``cupy.uint64(x)``) is checked for existence only;
    attributes (``-``) for existence, instance attributes by the class's docstring
    (``~Stream.ptr``) or annotations (a dataclass's fields).
(2) every attribute the suite's fake CuPy modules provide (walked as described in
    tests/cupy_fakes.py, so what the fakes' authors add is picked up) exists in CuPy,
    with compatible arguments: the fake takes no more positional arguments than CuPy's,
    each keyword or optional parameter of the fake is one of CuPy's, and the fake
    requires at least what CuPy requires (a fake must not be looser than CuPy).
    Required positional parameters are compared by position, not name: fcgpu passes
    them by position, and (3) checks every keyword it passes against CuPy's names.
(3) a static scan of fcgpu/ (tests/cupy_scan.py) finds the CuPy entry points the code
    uses; each must be listed, called as listed (positional count, keywords), and every
    listed entry must still be used (except the hand-read table).

Without CuPy installed these tests skip; with ``FCGPU_REQUIRE_CUPY=1`` (CI sets it) they
fail instead. The mutant tests below show each check failing on a planted drift.
"""
from __future__ import annotations

import collections
import importlib
import inspect
import shutil
import sys
import types

import pytest

import cupy_contract as cc
import cupy_fakes as cf
import cupy_scan as cs
import toolchain

REQUIRE_CUPY = "FCGPU_REQUIRE_CUPY"

def _bare(cls):
    """An instance of ``cls`` with None for each required argument (the fake's state
    object: the walk only builds the fake and calls its argument-free factories)."""
    P = inspect.Parameter
    need = [p for p in inspect.signature(cls).parameters.values()
            if p.default is p.empty and p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    return cls(*[None] * len(need))


# The fake CuPy modules of the suite: (module, how to build one).
FAKES = {
    "test_kernels_host._make_fake_cupy": ("test_kernels_host", lambda m: m._make_fake_cupy()),
    "test_cuda_graph._make_cupy": ("test_cuda_graph", lambda m: m._make_cupy(_bare(m._State))),
}

# What the fakes keep for their own use, not CuPy's API: {CuPy path: what it is}.
FAKE_BOOKKEEPING = {
    "cupy.guards": "the canary allocator of test_kernels_host's stand-in",
    "cupy.ndarray.library_guard": "FakeArray's switch: raise where CuPy's library wrappers would",
    "cupy.ndarray.flush_subnormals": "FakeArray's switch: flush fp32 subnormals as CuPy does",
    "cupy.cuda.Stream.state": "the capture state the fake streams share",
    "cupy.cuda.Stream.capturing": "whether the fake stream captures",
    "cupy.cuda.Graph.products": "the cuBLAS calls the fake graph recorded",
    "cupy.cuda.Graph.state": "the capture state",
    "cupy.cuda.Graph.launches": "the launches the fake graph recorded",
    "cupy.cuda.Graph.owner": "the object whose step a fake replay reruns",
    "cupy.cuda.Graph.static": "the static buffers a fake replay checks",
}


# Drift the check finds in a fake today, owned by the fake's author: {CuPy path: why}.
# The test requires each still to be found, so an entry goes when its fake is fixed.
KNOWN_FAKE_DRIFT = {}


def cupy_or_skip():
    """The real cupy module; skip without it, or fail under FCGPU_REQUIRE_CUPY=1."""
    try:
        import cupy
    except Exception as exc:  # not installed, or a broken install
        reason = ("the cupy package is not installed (%s: %s): pip install "
                  "'cupy-cuda12x>=14.2' (no GPU needed) for the CuPy contract checks"
                  % (type(exc).__name__, exc))
        if toolchain.required(REQUIRE_CUPY):
            pytest.fail("%s=1 but %s" % (REQUIRE_CUPY, reason), pytrace=False)
        pytest.skip(reason)
    if getattr(cupy, "__file__", None) is None:  # (a stand-in module left in sys.modules)
        pytest.fail("sys.modules['cupy'] is not the real package: %r" % cupy, pytrace=False)
    return cupy


def ndarray_names(cupy):
    import numpy
    return {n for k in (numpy.ndarray, cupy.ndarray) for n in dir(k) if not n.startswith("_")}


@pytest.fixture(scope="module")
def real_cupy():
    return cupy_or_skip()


@pytest.fixture(scope="module")
def entries():
    return cc.read_doc()


@pytest.fixture(scope="module")
def uses(real_cupy):
    return cs.scan(cc.returns, ndarray_names(real_cupy))


# ----------------------------------------------------------------- the checks

def entry_problems(entries):
    """``(problems, {how each entry was checked: count})`` for check (1)."""
    problems, how = [], collections.Counter()
    for e in entries.values():
        at = "docs/cupy.md:%d: %s" % (e.line, e.path)
        try:
            found = cc.lookup(e.path)
        except cc.ContractError as exc:
            problems.append("%s: not in the installed package (%s)" % (at, exc))
            continue
        if e.args is None:
            how["read: existence" + (" (documented instance attribute)"
                                     if found.documented else "")] += 1
            continue
        if found.documented or not callable(found.obj):
            problems.append("%s: listed as called (%s) but CuPy's is not callable" % (at, e.args))
            continue
        sig, source = cc.signature(found)
        how["called: " + source] += 1
        if sig is not None:
            problems += ["%s(%s): %s" % (at, e.args, p)
                         for p in cc.bind_problems(sig, e.args, cc.is_method(found))]
    return problems, how


def _drop_self(sig):
    params = list(sig.parameters.values())
    return sig.replace(parameters=params[1:]) if params else sig


def signature_compat(fake, real):
    """Why the fake's signature is not compatible with CuPy's ([] when it is)."""
    P = inspect.Parameter
    POS = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    fps, rps = list(fake.parameters.values()), list(real.parameters.values())
    f_pos, r_pos = [p for p in fps if p.kind in POS], [p for p in rps if p.kind in POS]
    f_var = {p.kind for p in fps} & {P.VAR_POSITIONAL, P.VAR_KEYWORD}
    r_var = {p.kind for p in rps} & {P.VAR_POSITIONAL, P.VAR_KEYWORD}
    r_named = {p.name for p in rps if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    out = []
    fps = [p for p in fps if not p.name.startswith("_")]  # (values a fake binds for itself)
    if P.VAR_POSITIONAL not in f_var | r_var and len(f_pos) > len(r_pos):
        out.append("takes %d positional arguments, CuPy's at most %d" % (len(f_pos), len(r_pos)))
    for p in fps:
        optional = p.kind is P.KEYWORD_ONLY or (p.kind in POS and p.default is not p.empty)
        if optional and p.name not in r_named and P.VAR_KEYWORD not in r_var:
            out.append("has %s=, which CuPy's has not" % p.name)
    need = [p for p in r_pos if p.default is p.empty]
    have = [p for p in f_pos if p.default is p.empty]
    if P.VAR_POSITIONAL not in f_var and len(have) < len(need):
        out.append("requires %d positional arguments, CuPy's %d (looser than CuPy)"
                   % (len(have), len(need)))
    f_names = {p.name for p in fps}
    for p in rps:
        if p.kind is P.KEYWORD_ONLY and p.default is p.empty and p.name not in f_names \
                and P.VAR_KEYWORD not in f_var:
            out.append("lacks CuPy's required keyword %s=" % p.name)
    return out


def _fake_kind_problems(fa, found):
    """A fake method where CuPy has an attribute, or the other way round."""
    real_callable = not found.documented and callable(found.obj)
    if isinstance(fa.obj, property) and cc.is_method(found):
        return ["a property in the fake, a method in CuPy"]
    if inspect.isfunction(fa.obj) and not real_callable:
        return ["callable in the fake, an attribute in CuPy"]
    if inspect.isclass(fa.obj) and not cf.ours(fa.obj) and fa.obj is not found.obj:
        return ["%r in the fake, %r in CuPy" % (fa.obj, found.obj)]
    return []


def fake_problems(attrs):
    """Problems of check (2) for the walked attributes of a fake module."""
    problems = []
    for fa in attrs:
        at = "%s (fake: %s)" % (fa.path, fa.how)
        if fa.returns_unknown:
            problems.append("%s: the fake hands out an object here, but CuPy does not say "
                            "what this returns: add it to cupy_contract.RETURNS_OVERRIDE" % at)
            continue
        try:
            found = cc.lookup(fa.path)
        except cc.ContractError as exc:
            problems.append("%s: not in CuPy (%s); if it is the fake's own bookkeeping, add it "
                            "to FAKE_BOOKKEEPING in tests/test_cupy_contract.py" % (at, exc))
            continue
        kind = _fake_kind_problems(fa, found)
        if kind or not inspect.isfunction(fa.obj):
            problems += ["%s: %s" % (at, p) for p in kind]
            continue
        real, _ = cc.signature(found)
        if real is None:
            continue
        if cc.is_method(found) and not fa.in_class:
            real = _drop_self(real)  # (a namespace's function stands for a bound method)
        problems += ["%s%s vs CuPy's %s: %s" % (at, inspect.signature(fa.obj), real, p)
                     for p in signature_compat(inspect.signature(fa.obj), real)]
    return problems


def use_problems(uses, entries):
    """Problems of check (3): uses not listed, or called otherwise than listed."""
    found = collections.OrderedDict()
    for u in uses:
        e = entries.get(u.path)
        if e is None:
            found.setdefault("%s is not listed in docs/cupy.md" % u.path, []).append(u.where)
            continue
        if not (u.called and u.precise):
            continue
        if e.args is None:
            msg = "%s is called, but docs/cupy.md lists it as read only (-)" % u.path
            found.setdefault(msg, []).append(u.where)
            continue
        if u.npos is not None and u.npos > len(e.args.positional):
            msg = "%s is called with %d positional arguments, docs/cupy.md lists %d" % (
                u.path, u.npos, len(e.args.positional))
            found.setdefault(msg, []).append(u.where)
        for kw in sorted(u.keywords - e.args.keywords - set(e.args.positional)):
            msg = "%s is called with %s=, which docs/cupy.md does not list" % (u.path, kw)
            found.setdefault(msg, []).append(u.where)
    return ["%s (%s%s)" % (m, w[0], " and %d more" % (len(w) - 1) if len(w) > 1 else "")
            for m, w in found.items()]


def stale_entries(uses, entries):
    used = {u.path for u in uses}
    return ["docs/cupy.md:%d: %s is listed but the scan finds no use of it (remove it, or "
            "move it to the hand-read table if the scan cannot see its use)" % (e.line, e.path)
            for e in entries.values() if e.path not in used and not e.by_hand]


# ----------------------------------------------------------------- the contract

def test_listed_entry_points_exist_in_cupy_with_our_arguments(real_cupy, entries):
    """Check (1). Mutants that fail here: test_entry_check_fails_on_planted_drift."""
    problems, how = entry_problems(entries)
    print("checked against CuPy %s: %s" % (real_cupy.__version__, dict(how)))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(FAKES))
def test_fake_cupy_provides_only_what_cupy_has(real_cupy, name):
    """Check (2) on each fake CuPy of the suite, as its factory builds it today.
    Mutants that fail here: test_fake_check_fails_on_planted_drift."""
    modname, build = FAKES[name]
    fake = build(importlib.import_module(modname))
    attrs = cf.surface(fake, cc.returns, cs.PROPERTY_TYPES, skip=FAKE_BOOKKEEPING)
    print("%s: %d attributes checked" % (name, len(attrs)))
    assert len(attrs) >= 5, "the walk found almost nothing: %s" % [a.path for a in attrs]
    problems = fake_problems(attrs)
    known = [p for p in problems if p.split(" ", 1)[0] in KNOWN_FAKE_DRIFT]
    for p in known:
        print("known drift, left to the fake's owner: %s" % p)
    problems = [p for p in problems if p not in known]
    assert not problems, "\n".join(problems)
    if modname == "test_cuda_graph":
        still = {p.split(" ", 1)[0] for p in known}
        gone = sorted(set(KNOWN_FAKE_DRIFT) - still)
        assert not gone, "fixed in the fake: remove from KNOWN_FAKE_DRIFT: %s" % gone


def test_code_uses_only_listed_entry_points(uses, entries):
    """Check (3). Mutants that fail here: test_scan_fails_on_a_planted_call."""
    problems = use_problems(uses, entries)
    assert not problems, "\n".join(problems)


def test_every_listed_entry_point_is_still_used(uses, entries):
    """The list does not keep entries the code dropped. Mutant: a listed entry nothing
    uses (test_entry_check_fails_on_planted_drift plants one)."""
    problems = stale_entries(uses, entries)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------- the checks can fail

PLANTS = [
    # (module, code appended, the problem the check must report)
    ("fcgpu/cuda/ops.py",
     "\n\ndef _planted():\n    return _cp().cuda.runtime.deviceGetPCIBusId(0)\n",
     "cupy.cuda.runtime.deviceGetPCIBusId is not listed"),
    ("fcgpu/layers.py", "\n\ndef _planted(x):\n    xp = get_array_module(x)\n"
     "    return xp.tanh(x)\n", "cupy.tanh is not listed"),
    ("fcgpu/cuda/graph.py", "\n\ndef _planted():\n    cp = require_cupy()\n"
     "    return cp.empty((2, 3), order='F')\n",
     "cupy.empty is called with order=, which docs/cupy.md does not list"),
    ("fcgpu/backend.py", "\n\ndef _planted():\n    cp = require_cupy()\n"
     "    return cp.cuda.get_current_stream().done()\n",
     "cupy.cuda.Stream.done is not listed"),
    # not CuPy: a local ``cp`` that holds something else is no alarm
    ("fcgpu/gradient_check.py", "\n\ndef _planted():\n    import subprocess\n"
     "    cp = subprocess.run(['true'])\n    return cp.returncode\n", None),
]


@pytest.fixture(scope="module")
def package_copy(real_cupy, entries, tmp_path_factory):
    """A copy of fcgpu/ that passes check (3), as the tree does."""
    pkg = tmp_path_factory.mktemp("scan") / "fcgpu"
    shutil.copytree(cs.PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert use_problems(cs.scan(cc.returns, ndarray_names(real_cupy), pkg), entries) == []
    return pkg


@pytest.mark.parametrize("module,code,expect", PLANTS,
                         ids=[(p[2] or "shadowed cp").split()[0] for p in PLANTS])
def test_scan_fails_on_a_planted_call(real_cupy, entries, package_copy, module, code, expect):
    """The mutant of check (3): the copy of fcgpu/ that passes it (package_copy) with
    one CuPy call the list lacks (a module function, an ``xp`` function, an unlisted
    keyword, a method of an object a CuPy call returned) fails it, naming the call;
    a local ``cp`` holding something else does not."""
    path = package_copy / module.split("/", 1)[1]
    original = path.read_text()
    path.write_text(original + code)
    try:
        problems = use_problems(cs.scan(cc.returns, ndarray_names(real_cupy), package_copy),
                                entries)
    finally:
        path.write_text(original)
    if expect is None:
        assert problems == []
        return
    assert len(problems) == 1 and expect in problems[0], problems
    assert module in problems[0], problems


BAD_DOC = """\
| entry point | arguments | source | why |
| --- | --- | --- | --- |
| `cupy.cuda.runtime.notAFunction` | `()` | cupy_backends/cuda/api/runtime.pyx:1 | absent |
| `cupy.empty` | `shape, colour=` | cupy/_creation/basic.py:15 | a keyword CuPy lacks |
| `cupy.where` | `cond, x, y` | cupy/_sorting/search.py:175 | a misnamed positional |
| `cupy.cuda.Stream.synchronize` | `timeout` | cupy/cuda/stream.pyx:270 | too many arguments |
| `cupy.RawModule.get_function` | `()` | cupy/_core/raw.pyx:439 | a required argument left out |
| `cupy.ndarray.shape` | `()` | cupy/_core/core.pyx:507 | an attribute called |
| `cupy.cuda.Stream.ptr` | - | cupy/cuda/stream.pyx:199 | fine: a documented attribute |
"""


def test_entry_check_fails_on_planted_drift(real_cupy, tmp_path, uses):
    """Mutants of check (1): a doc listing an entry CuPy lacks, a keyword it lacks, a
    positional under another name, too many arguments, a required one left out, and an
    attribute called: each is one problem, and the documented attribute is none. The
    entry nothing in fcgpu/ uses is the one stale entry."""
    doc = tmp_path / "cupy.md"
    doc.write_text(BAD_DOC)
    entries = cc.read_doc(doc)
    problems, _ = entry_problems(entries)
    expect = ["notAFunction: not in the installed package", "has no keyword colour=",
              "positional argument 1 is 'condition', not 'cond'",
              "takes at most 0 positional arguments", "requires name, which we do not pass",
              "ndarray.shape: listed as called"]
    assert len(problems) == len(expect), problems
    for p, e in zip(problems, expect):
        assert e in p, (p, e)
    stale = stale_entries(uses, entries)
    assert len(stale) == 1 and "cupy.cuda.runtime.notAFunction is listed" in stale[0], stale


class _FakeArrayDrift:
    def no_such_method(self):
        pass

    def astype(self, dtype, colour=None):
        pass

    @property
    def get(self):
        return None


def test_fake_check_fails_on_planted_drift(real_cupy):
    """Mutants of check (2): a fake with a runtime function CuPy lacks, a keyword
    CuPy's ``empty`` lacks, a factory looser than CuPy's (``RawModule.get_function``
    without its name), an array method CuPy lacks, a method keyword CuPy's lacks, a
    property where CuPy has a method, and a value that is not CuPy's: one problem each,
    and the correct attributes none."""
    fake = types.ModuleType("cupy")
    fake.empty = lambda shape, dtype=float, colour=None: None
    fake.zeros = lambda shape, dtype=float: None  # fine
    fake.float32 = int
    fake.ndarray = _FakeArrayDrift
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDevice=lambda: 0, notAFunction=lambda: 0))
    fake.RawModule = lambda *, code=None, options=(), name_expressions=None: \
        types.SimpleNamespace(get_function=lambda: None)
    attrs = cf.surface(fake, cc.returns, cs.PROPERTY_TYPES)
    problems = fake_problems(attrs)
    expect = ["cupy.RawModule.get_function", "cupy.cuda.runtime.notAFunction", "cupy.empty",
              "cupy.float32", "cupy.ndarray.astype", "cupy.ndarray.get",
              "cupy.ndarray.no_such_method"]
    assert sorted(p.split(" ", 1)[0] for p in problems) == expect, "\n".join(problems)
    assert "has colour=" in " ".join(problems) and "looser than CuPy" in " ".join(problems)


def test_doc_rows_are_checked_for_form(tmp_path):
    """A row that is not | `path` | arguments | source | why |, an entry listed twice,
    a source without file:line, and an argument cell out of order are refused."""
    head = "| entry point | arguments | source | why |\n| --- | --- | --- | --- |\n"
    bad = ["| cupy.empty | - | cupy/x.py:1 | no backticks |\n",
           "| `cupy.empty` | - | cupy/x.py:1 | a |\n| `cupy.empty` | - | cupy/x.py:2 | b |\n",
           "| `cupy.empty` | - | somewhere | no line |\n",
           "| `cupy.empty` | `dtype=, shape` | cupy/x.py:1 | keyword first |\n",
           "| `numpy.empty` | - | numpy/x.py:1 | not CuPy |\n"]
    for k, rows in enumerate(bad):
        doc = tmp_path / ("d%d.md" % k)
        doc.write_text(head + rows)
        with pytest.raises(cc.ContractError):
            cc.read_doc(doc)


def test_without_cupy_the_contract_skips_or_fails(monkeypatch):
    """Without the package the contract skips with the reason, and fails under
    FCGPU_REQUIRE_CUPY=1 (CI). Mutant: a cupy_or_skip that ignores the switch."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    monkeypatch.delenv(REQUIRE_CUPY, raising=False)
    with pytest.raises(pytest.skip.Exception, match="the cupy package is not installed"):
        cupy_or_skip()
    monkeypatch.setenv(REQUIRE_CUPY, "1")
    outcome = None
    try:
        cupy_or_skip()
    except pytest.skip.Exception as exc:  # (caught, or the mutant would read as a skip)
        outcome = "skipped: %s" % exc
    except pytest.fail.Exception as exc:
        outcome = str(exc)
    assert outcome is not None and outcome.startswith(
        "FCGPU_REQUIRE_CUPY=1 but the cupy package is not installed"), outcome
