"""The static scan of fcgpu/ for the CuPy entry points its code uses (AST only; the
package is not imported). tests/test_cupy_contract.py requires each one found to be
listed in docs/cupy.md.

What the scan takes for CuPy:

* module roots: the names ``cp``, ``cupy``, ``_cupy`` and ``xp`` (unless imported, or
  assigned only other things in their scope, like ``cp = subprocess.run(...)``; ``xp`` is
  the array module of the arrays a function got: CuPy's whenever they are CuPy
  arrays, so every ``xp.<name>`` must exist in CuPy too), any attribute named ``cp``
  or ``xp`` (``self.cp``, ``model.xp``), names bound by ``import cupy...`` /
  ``from cupy... import`` / ``cuda.pathfinder`` imports, and whatever a name, a
  ``self.`` attribute or a function's return value is assigned from one of these
  (``cp = require_cupy()``, ``self.cp = self.xp = cp``, ``Event = self.cp.cuda.Event``,
  ``_cp()`` and ``get_array_module()`` through their ``return``). An attribute chain
  from a root is one entry point (``cp.cuda.runtime.getDevice`` ->
  ``cupy.cuda.runtime.getDevice``).
* typed objects: a call of an entry point returns what CuPy says it returns
  (``cupy_contract.returns``: the class for a constructor, else the docstring's type:
  ``cp.empty`` -> ``cupy.ndarray``, ``cp.cuda.get_current_stream`` ->
  ``cupy.cuda.Stream``, ``Stream.end_capture`` -> ``cupy.cuda.Graph``); names and
  ``self.`` attributes assigned such objects, and ``PROPERTY_TYPES`` below, carry the
  type on, so ``stream.synchronize()``, ``self._graph.launch(stream=...)`` and
  ``a.data.ptr`` are entry points (``cupy.cuda.Stream.synchronize``, ...), with
  their arguments. Using one as a context manager uses ``__enter__``/``__exit__``,
  calling it ``__call__``. Flow-insensitive: a name has the first type assigned to
  it anywhere in its function.
* ndarray members by name: the arrays layer code gets are not typed (they are
  parameters), so any attribute whose name is a public member of ``numpy.ndarray``
  or ``cupy.ndarray`` (``astype``, ``reshape``, ``get``, ``set``, ``flags``, ...),
  read on anything but an imported module or ``super()``, counts as
  ``cupy.ndarray.<name>``, by name only (its arguments are not checked: the receiver
  may be a dict or a list). fcgpu/cpu/ is left out of this: the fused dispatch
  (fcgpu/fused.py) sends it NumPy arrays only.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "fcgpu"

MODULE_NAMES = frozenset({"cp", "cupy", "_cupy", "xp"})
MODULE_ATTRS = frozenset({"cp", "xp"})
IMPORT_ROOTS = ("cupy", "cupyx", "cupy_backends", "cuda")
HOST_ONLY = ("fcgpu/cpu/",)

# Types of attributes CuPy's docstrings do not give (getset descriptors).
PROPERTY_TYPES = {
    "cupy.ndarray.data": "cupy.cuda.MemoryPointer",
    "cupy.ndarray.device": "cupy.cuda.Device",
    "cupy.ndarray.flags": "cupy._core.flags.Flags",
    "cupy.ndarray.T": "cupy.ndarray",
    "cupy.RawKernel.kernel": "cupy.cuda.Function",
}


@dataclass(frozen=True)
class Use:
    """One use of an entry point: ``npos`` None when unknown (``*args``);
    ``precise`` False for ndarray members found by name only."""
    path: str
    where: str
    called: bool
    npos: int | None = None
    keywords: frozenset = frozenset()
    precise: bool = True


class _Scope:
    def __init__(self, parent=None):
        self.parent = parent
        self.names = {}
        self.imports = set()
        self.globals = set()
        self.others = set()  # names assigned something that is not CuPy's

    def shadowed(self, name):
        """Whether ``name`` is assigned only non-CuPy values in its nearest scope (then
        a ``cp`` or ``xp`` there is not CuPy: ``cp = subprocess.run(...)``)."""
        s = self
        while s is not None:
            if name in s.names:
                return False
            if name in s.others:
                return True
            s = s.parent
        return False

    def get(self, name):
        s = self
        while s is not None:
            if name in s.names:
                return s.names[name]
            s = s.parent
        return None

    def imported(self, name):
        s = self
        while s is not None:
            if name in s.imports:
                return True
            s = s.parent
        return False

    def bind(self, name, t):
        s = self
        if name in self.globals:
            while s.parent is not None:
                s = s.parent
        if t is not None and name not in s.names:
            s.names[name] = t


def _static(path):
    return ("static", path)


def _inst(cls):
    return None if cls is None else ("inst", cls)


class Scanner:
    """Walks every module of the package a few rounds (to carry types through
    assignments and returns), then records the uses."""

    ROUNDS = 4

    def __init__(self, returns, ndarray_names, package=PACKAGE):
        self.returns_of = returns  # cupy_contract.returns: path -> class path or None
        self.ndarray_names = frozenset(ndarray_names)
        self.package = Path(package)
        self.trees = {p: ast.parse(p.read_text(), str(p))
                      for p in sorted(self.package.rglob("*.py"))}
        self.scopes = {}
        self.class_attrs = {}
        self.func_returns = {}
        self.uses = None
        self._returns_cache = {}

    def scan(self):
        for _ in range(self.ROUNDS):
            for path, tree in self.trees.items():
                self._module(path, tree, record=False)
        self.uses = []
        for path, tree in self.trees.items():
            self._module(path, tree, record=True)
        return self.uses

    # ------------------------------------------------------------- walking

    def _module(self, path, tree, record):
        self.rel = path.relative_to(self.package.parent).as_posix()
        self.host_only = self.rel.startswith(HOST_ONLY)
        self.record = record
        scope = self.scopes.setdefault(id(tree), _Scope())
        self._visit(tree, scope, None, None, None)

    def _visit(self, node, scope, cls, func, parent):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner = self.scopes.setdefault(id(node), _Scope(scope))
            body = node.body if isinstance(node.body, list) else [node.body]
            for child in ast.iter_child_nodes(node):
                in_body = any(child is b for b in body)
                self._visit(child, inner if in_body else scope, cls,
                            getattr(node, "name", func) if in_body else func, node)
            return
        if isinstance(node, ast.ClassDef):
            for child in ast.iter_child_nodes(node):
                self._visit(child, scope, node.name, func, node)
            return
        self._bindings(node, scope, cls, func)
        if self.record:
            self._record(node, scope, cls, parent)
        for child in ast.iter_child_nodes(node):
            self._visit(child, scope, cls, func, node)

    def _bindings(self, node, scope, cls, func):
        if isinstance(node, ast.Global):
            scope.globals.update(node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            self._imports(node, scope)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            t = self._type(node.value, scope, cls)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for tgt in targets:
                if isinstance(tgt, ast.Name):
                    scope.bind(tgt.id, t)
                    if t is None and not isinstance(node.value, ast.Constant):
                        scope.others.add(tgt.id)
                elif (isinstance(tgt, ast.Attribute) and isinstance(tgt.value, ast.Name)
                      and tgt.value.id == "self" and cls is not None and t is not None):
                    self.class_attrs.setdefault((self.rel, cls), {}).setdefault(tgt.attr, t)
        elif isinstance(node, ast.Return) and func is not None and node.value is not None:
            t = self._type(node.value, scope, cls)
            if t is not None:
                old = self.func_returns.setdefault(func, t)
                if old != t:
                    self.func_returns[func] = ("ambiguous",)

    def _imports(self, node, scope):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                bound = a.asname or top
                scope.imports.add(bound)
                if top in IMPORT_ROOTS:
                    scope.bind(bound, _static(a.name if a.asname else top))
            return
        mod = node.module or ""
        for a in node.names:
            bound = a.asname or a.name
            scope.imports.add(bound)
            if node.level == 0 and mod.split(".")[0] in IMPORT_ROOTS:
                scope.bind(bound, _static("%s.%s" % (mod, a.name)))

    # ------------------------------------------------------------- typing

    def _returns(self, path):
        if path not in self._returns_cache:
            self._returns_cache[path] = self.returns_of(path)
        return self._returns_cache[path]

    def _type(self, node, scope, cls):
        """("static", path) | ("inst", class path) | ("member", path, precise) | None."""
        if isinstance(node, ast.Name):
            t = scope.get(node.id)
            if (t is None and node.id in MODULE_NAMES and not scope.imported(node.id)
                    and not scope.shadowed(node.id)):
                t = _static("cupy")
            return t
        if isinstance(node, ast.Attribute):
            return self._attr_type(node, scope, cls)
        if isinstance(node, ast.Call):
            return self._call_type(node, scope, cls)
        if isinstance(node, ast.BoolOp):
            return next((t for t in (self._type(v, scope, cls) for v in node.values) if t), None)
        if isinstance(node, ast.IfExp):
            return self._type(node.body, scope, cls) or self._type(node.orelse, scope, cls)
        if isinstance(node, ast.Subscript):
            t = self._type(node.value, scope, cls)
            return t if t == ("inst", "cupy.ndarray") else None
        return None

    def _attr_type(self, node, scope, cls):
        base = node.value
        if (isinstance(base, ast.Name) and base.id == "self" and cls is not None
                and node.attr in self.class_attrs.get((self.rel, cls), {})):
            return self.class_attrs[(self.rel, cls)][node.attr]
        t = self._type(base, scope, cls)
        if t is None:
            if node.attr in MODULE_ATTRS:
                return _static("cupy")
            if node.attr in self.ndarray_names and self._ndarray_receiver(base, scope):
                return ("member", "cupy.ndarray." + node.attr, False)
            return None
        if t[0] == "static":
            return _static("%s.%s" % (t[1], node.attr))
        if t[0] == "inst":
            return ("member", "%s.%s" % (t[1], node.attr), True)
        if t[0] == "member" and t[1] in PROPERTY_TYPES:
            return ("member", "%s.%s" % (PROPERTY_TYPES[t[1]], node.attr), t[2])
        return None

    def _ndarray_receiver(self, base, scope):
        return not (self.host_only
                    or (isinstance(base, ast.Name) and scope.imported(base.id))
                    or isinstance(base, ast.Constant)
                    or (isinstance(base, ast.Call) and isinstance(base.func, ast.Name)
                        and base.func.id == "super"))

    def _call_type(self, node, scope, cls):
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "get" and _is_sys_modules(f.value)
                and node.args and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "cupy"):
            return _static("cupy")
        t = self._type(f, scope, cls)
        if t is not None:
            if t[0] == "static":
                return _inst(self._returns(t[1]))
            if t[0] == "member" and t[2]:
                if t[1] in PROPERTY_TYPES:
                    return None
                return _inst(self._returns(t[1]))
            return None
        name = f.id if isinstance(f, ast.Name) else (
            f.attr if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
            and scope.imported(f.value.id) else None)
        r = self.func_returns.get(name)
        return None if r is None or r[0] == "ambiguous" else r

    # ------------------------------------------------------------- recording

    def _record(self, node, scope, cls, parent):
        where = "%s:%d" % (self.rel, getattr(node, "lineno", getattr(parent, "lineno", 0)))
        if isinstance(node, ast.Attribute):
            t = self._type(node, scope, cls)
            if t is None or t[0] == "inst" or "." not in t[1]:
                return  # (an object, or a bare module root: not an entry point)
            if isinstance(parent, ast.Call) and parent.func is node:
                return
            if t[0] == "static" and isinstance(parent, ast.Attribute):
                return
            self.uses.append(Use(t[1], where, False, precise=t[0] == "static" or t[2]))
        elif isinstance(node, ast.Call):
            t = self._type(node.func, scope, cls)
            if t is None:
                return
            path = t[1] + ".__call__" if t[0] == "inst" else t[1]
            precise = t[0] != "member" or t[2]
            unknown = any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords)
            self.uses.append(Use(path, where, True, None if unknown else len(node.args),
                                 frozenset(k.arg for k in node.keywords if k.arg), precise))
        elif isinstance(node, ast.withitem):
            t = self._type(node.context_expr, scope, cls)
            if t is not None and t[0] == "member" and t[1] in PROPERTY_TYPES:
                t = _inst(PROPERTY_TYPES[t[1]])  # (with a.device: the device's)
            if t is not None and t[0] == "inst":
                for m in ("__enter__", "__exit__"):
                    self.uses.append(Use("%s.%s" % (t[1], m), where, False))


def _is_sys_modules(node):
    return (isinstance(node, ast.Attribute) and node.attr == "modules"
            and isinstance(node.value, ast.Name) and node.value.id == "sys")


def scan(returns, ndarray_names, package=PACKAGE):
    """Every use of a CuPy entry point in ``package``, as :class:`Use` records."""
    return Scanner(returns, ndarray_names, package).scan()
