"""What the suite's fake CuPy modules provide, as the real CuPy paths they stand for
(tests/test_cupy_contract.py checks each against the installed package).

A fake is walked from its module object:

* the module's and every ``types.SimpleNamespace``'s attributes (``cupy.empty``,
  ``cupy.cuda.runtime.getDevice``); dunder names (the module's fallback
  ``__getattr__``, which hands out NumPy's functions) and ``_private`` names are
  skipped;
* classes defined in tests/ (``ndarray = FakeArray``): the members their own bodies
  define (methods, properties, class attributes, ``__dunder__`` methods other than
  the constructor) and the instance attributes their methods assign
  (``self.ptr = ...``);
* objects the fake hands out, checked against what CuPy says the same call returns
  (:func:`cupy_contract.returns`; ``cupy_scan.PROPERTY_TYPES`` for properties): a
  fake callable whose parameters all have defaults (no ``*args``/``**kwargs``
  forwarders) is called where CuPy says what the real one returns
  (``cuda.get_current_stream()``, ``cuda.MemoryPool()``), and the test classes its
  code names are walked
  (``cuda.Stream`` -> ``_FakeStream``, ``end_capture`` -> ``_FakeGraph``,
  ``FakeArray.data`` -> ``_Ptr`` as ``cupy.cuda.MemoryPointer``).

Paths in ``skip`` (the fakes' own bookkeeping, such as the canary allocator
``cupy.guards``) are left out with everything below them.
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# Names of a class body that are Python's machinery, not members.
_CLASS_MACHINERY = frozenset({
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__init__",
    "__new__", "__annotations__", "__slots__", "__firstlineno__", "__static_attributes__",
    "__orig_bases__", "__parameters__", "__init_subclass__", "__class_getitem__"})


@dataclass(frozen=True)
class FakeAttr:
    """``obj`` (None for an instance attribute) stands for CuPy's ``path``;
    ``in_class``: defined in a class body (a method takes ``self``); ``how``: the way
    the walk reached it, for messages; ``returns_unknown``: the fake hands out an
    object here but CuPy does not say what the real call returns."""
    path: str
    obj: object
    how: str
    in_class: bool = False
    returns_unknown: bool = False


def ours(obj):
    """Whether ``obj`` (a function, class or instance's class) is defined in tests/."""
    code = getattr(obj, "__code__", None)
    if code is not None:
        return Path(code.co_filename).resolve().parent == TESTS
    cls = obj if inspect.isclass(obj) else None
    if cls is None:
        return False
    mod = inspect.getmodule(cls)
    f = getattr(mod, "__file__", None)
    return f is not None and Path(f).resolve().parent == TESTS


def _classes_named(fn):
    """Test classes that ``fn``'s code (nested code included) names as globals."""
    out, stack = [], [getattr(fn, "__code__", None)]
    glb = getattr(fn, "__globals__", {})
    while stack:
        code = stack.pop()
        if code is None:
            continue
        for name in code.co_names:
            val = glb.get(name)
            if inspect.isclass(val) and ours(val) and val not in out:
                out.append(val)
        stack.extend(c for c in code.co_consts if inspect.iscode(c))
    return out


def _instance_attrs(cls):
    """Names the methods of ``cls`` assign as ``self.<name>``."""
    import ast
    import textwrap
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return []
    names = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id == "self"
                and node.attr not in names):
            names.append(node.attr)
    return names


class _Walk:
    def __init__(self, returns, property_types, skip):
        self.returns, self.property_types, self.skip = returns, property_types, skip
        self.out, self.seen, self.walked = [], set(), set()

    def add(self, fa):
        if fa.path in self.skip or (fa.path, id(fa.obj), fa.in_class) in self.seen:
            return False
        self.seen.add((fa.path, id(fa.obj), fa.in_class))
        self.out.append(fa)
        return True

    def namespace(self, ns, path, how):
        for name, val in sorted(vars(ns).items()):
            if name.startswith("_"):
                continue
            if self.add(FakeAttr("%s.%s" % (path, name), val, "%s.%s" % (how, name))):
                self.follow("%s.%s" % (path, name), val, "%s.%s" % (how, name))

    def follow(self, path, val, how):
        if isinstance(val, (types.SimpleNamespace, types.ModuleType)):
            self.namespace(val, path, how)
        elif inspect.isclass(val) and ours(val):
            self.klass(val, path, how)
        elif callable(val) and ours(val):
            self.handed_out(val, path, how, self.returns(path))

    def handed_out(self, fn, path, how, real):
        objs = list(_classes_named(fn))
        if real is not None:
            # called only where CuPy's counterpart returns something to compare with, and
            # only a fake of named parameters that all have defaults: never a forwarder
            # (``*args, **kwargs``) into NumPy, whose functions may do anything
            try:
                params = inspect.signature(fn).parameters.values()
                if all(p.default is not p.empty and p.kind not in (p.VAR_POSITIONAL,
                                                                   p.VAR_KEYWORD)
                       for p in params):
                    objs.append(fn())
            except Exception:  # a fake that needs its context: the named classes still count
                pass
        for o in objs:
            kind = o if inspect.isclass(o) else type(o)
            if not (isinstance(o, types.SimpleNamespace) or ours(kind)):
                continue
            if real is None and id(kind) in self.walked:
                continue  # (a fake class handing out its own kind, as ndarray methods do)
            if real is None:
                self.add(FakeAttr(path, fn, how, returns_unknown=True))
                return
            key = ("handed", real, id(o) if isinstance(o, types.SimpleNamespace) else id(kind))
            if key in self.seen:
                continue
            self.seen.add(key)
            where = "%s() -> %s" % (how, getattr(kind, "__name__", "?"))
            if isinstance(o, types.SimpleNamespace):
                self.namespace(o, real, where)
            else:
                self.klass(kind, real, where)

    def klass(self, cls, path, how):
        key = ("class", id(cls), path)
        if key in self.seen:
            return
        self.seen.add(key)
        self.walked.add(id(cls))
        for k in cls.__mro__:
            if not ours(k):
                continue
            for name, val in sorted(vars(k).items()):
                if name in _CLASS_MACHINERY or (name.startswith("_") and not name.endswith("__")):
                    continue
                sub, where = "%s.%s" % (path, name), "%s.%s.%s" % (how, k.__name__, name)
                if not self.add(FakeAttr(sub, val, where, in_class=True)):
                    continue
                if isinstance(val, property) and val.fget is not None:
                    self.handed_out(val.fget, sub, where, self.property_types.get(sub))
                elif inspect.isfunction(val):
                    self.handed_out(val, sub, where, self.returns(sub))
            for name in _instance_attrs(k):
                if not name.startswith("_") and name not in vars(k):
                    self.add(FakeAttr("%s.%s" % (path, name), None,
                                      "%s.%s: self.%s" % (how, k.__name__, name)))


def surface(fake, returns, property_types, skip=(), root="cupy"):
    """[FakeAttr] for everything ``fake`` (a module object) provides."""
    w = _Walk(returns, property_types, frozenset(skip))
    w.namespace(fake, root, root)
    return w.out
