"""The package's shape, read from its source.

* Imports point one way: no circles, and down the layers of :data:`LAYERS` (the table
  the README's Layout section describes), with the one exception of
  :data:`LAYER_EXCEPTIONS`. A module the table does not place fails, and so does a
  table entry that matches no module.
* No private name (a leading underscore, not a dunder) is imported from another module;
  a private module is imported only from inside its own package.
* No module over :data:`MAX_MODULE_LINES` lines, no function over
  :data:`MAX_FUNCTION_LINES` (its ``def`` line to its last line, docstring included).
* CuPy is imported in ``fcgpu/backend.py`` only.

Every rule names every offender, as ``path:line``. Imports are read with :mod:`ast`,
so the lazy ones inside functions count as much as those at the top of a file: a
circle that only closes at run time is still a circle.
An import of ``a.b`` is an arrow to the module ``a.b`` (not to the package ``a``,
whose ``__init__`` Python runs first: counting that would make every package face
that re-exports its own modules a circle). ``from pkg import name`` is an arrow to
``pkg.name`` when that is a module of ours, else to ``pkg`` itself.

The tests at the end plant an offender of each rule in a package of their own and
see the rule name it.
"""
from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fcgpu"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# The layers, top to bottom: a module may import from its own layer and the layers
# below it, never from one above. Patterns are fnmatch patterns of dotted module names;
# the longest pattern that matches a module places it. Drawn from what the modules
# import; the README's Layout section describes it.
# - drivers: what runs something (a training run and its Solver, its settings and saved
#   state, evaluation, the search, the benchmarks);
# - layers: the course's layer library (and the update rules and schedules it steps);
# - dispatch: one entry point per fused step, picking an implementation per array;
# - implementations: CUDA glue, the Numba CPU path, the plain-xp references;
# - spec and backend: what everything may use (the Philox and augmentation specs, the
#   backend, errors, atomic writes, data formats), importing nothing above.
LAYERS = [
    ("command", ["fcgpu.cli", "fcgpu.cli.*"]),
    ("drivers", ["fcgpu.train", "fcgpu.solver", "fcgpu.solver_*", "fcgpu.settings",
                 "fcgpu.checkpoint", "fcgpu.checkpoint.*", "fcgpu.evaluate",
                 "fcgpu.search", "fcgpu.search.*", "fcgpu.bench", "fcgpu.bench.*"]),
    ("layers", ["fcgpu.layers", "fcgpu.layer_utils", "fcgpu.fc_net", "fcgpu.optim",
                "fcgpu.schedules", "fcgpu.gradient_check"]),
    ("dispatch", ["fcgpu.fused", "fcgpu.fused_optim", "fcgpu.linalg", "fcgpu.augment"]),
    ("implementations", ["fcgpu.cuda", "fcgpu.cuda.*", "fcgpu.cpu", "fcgpu.cpu.*",
                         "fcgpu.fused_ref"]),
    ("spec and backend", ["fcgpu", "fcgpu.random", "fcgpu.augment_spec", "fcgpu.mix_spec",
                          "fcgpu.beta_table", "fcgpu.backend",
                          "fcgpu.errors", "fcgpu.atomic", "fcgpu.safepickle", "fcgpu.data",
                          "fcgpu.setting_spec", "fcgpu.data_npz", "fcgpu.data_checks"]),
]

# The one module that works a floor higher than its package, and why (the README says
# the same). test_the_layer_exception_is_needed fails once it no longer is.
LAYER_EXCEPTIONS = {
    "fcgpu.cuda.graph": ("layers", "it captures the Solver's whole training step on the "
                                   "GPU, so it reads the net (fc_net) and the update "
                                   "rules (optim)"),
}


def _modules(package=PACKAGE):
    """``{dotted name: path}`` of every Python module in the package."""
    mods = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _rel(path, package):
    return path.relative_to(package.parent).as_posix()


def _imported(name, path, tree):
    """The absolute names of everything ``tree`` (module ``name`` at ``path``) imports,
    with the line of each: ``[(line, module, [imported names])]``."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_pkg:
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return sorted(out, key=lambda t: t[0])


def _parsed(package):
    """``[(name, path, text, tree)]`` for every module of the package."""
    out = []
    for name, path in _modules(package).items():
        text = path.read_text(encoding="utf-8")
        out.append((name, path, text, ast.parse(text, str(path))))
    return out


def import_lines(package=PACKAGE):
    """Every import of a module of ours: ``[(module, path, line, imported module)]``."""
    mods = _modules(package)
    out = []
    for name, path, _, tree in _parsed(package):
        for line, mod, names in _imported(name, path, tree):
            targets = [mod + "." + n for n in names if mod + "." + n in mods]
            if len(targets) < len(names) or not names:
                # names that are not modules come from ``mod`` itself (or its nearest
                # package of ours, for ``import a.b.c`` of a non-module path)
                m = mod
                while m and m not in mods:
                    m = m.rpartition(".")[0]
                if m:
                    targets.append(m)
            out += [(name, path, line, t) for t in targets if t != name]
    return out


def import_graph(package=PACKAGE):
    """``{module: {imported module of ours: first line}}`` and ``{module: lines}``."""
    graph = {name: {} for name in _modules(package)}
    for name, _, line, target in import_lines(package):
        graph[name].setdefault(target, line)
    sizes = {name: len(text.splitlines()) for name, _, text, _ in _parsed(package)}
    return graph, sizes


def find_circles(graph):
    """Every strongly connected set of two or more modules (Tarjan), sorted: modules
    each of which reaches all the others through imports."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(sccs)


def _cycle_in(graph, scc, start):
    """A shortest closed path from ``start`` back to itself inside ``scc``."""
    members = set(scc)
    prev, frontier = {}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("no way back to %s in %s" % (start, scc))


def _describe(graph, scc):
    """The circle's modules, then a shortest way round from each, as ``a:12 -> b:3 ->
    a`` (line 12 of a imports b, line 3 of b imports a); ways already shown are not
    repeated."""
    lines, seen = ["circle of %s:" % ", ".join(scc)], []
    for start in scc:
        cycle = _cycle_in(graph, scc, start)
        if set(cycle) not in seen:
            seen.append(set(cycle))
            lines.append("  " + " -> ".join("%s:%d" % (a, graph[a][b])
                                            for a, b in zip(cycle, cycle[1:])) + " -> " + start)
    return "\n".join(lines)


def test_imports_point_one_way():
    graph, _ = import_graph()
    assert "fcgpu.fused" in graph and "fcgpu.random" in graph  # it read the package
    circles = find_circles(graph)
    assert not circles, "import circles (module:line of the import -> ...):\n" + "\n".join(
        _describe(graph, c) for c in circles)


# ------------------------------------------------------------------------ the layers

def _place(name, layers, exceptions):
    """The index in ``layers`` (0: the top) of module ``name``, or None: an exception's
    layer, else the layer of the longest pattern that matches."""
    names = [layer for layer, _ in layers]
    if name in exceptions:
        return names.index(exceptions[name][0])
    best = None
    for i, (_, patterns) in enumerate(layers):
        for pat in patterns:
            if fnmatch.fnmatchcase(name, pat) and (best is None or len(pat) > best[1]):
                best = (i, len(pat))
    return None if best is None else best[0]


def unplaced(package=PACKAGE, layers=LAYERS, exceptions=LAYER_EXCEPTIONS):
    """Modules the table does not place, and table entries (patterns, exceptions) that
    match no module: ``['path: ...']``."""
    mods = _modules(package)
    out = ["%s: %s is in no layer of the table" % (_rel(path, package), name)
           for name, path in mods.items() if _place(name, layers, exceptions) is None]
    for layer, patterns in layers:
        out += ["the table's %s layer: %s matches no module" % (layer, pat)
                for pat in patterns if not fnmatch.filter(mods, pat)]
    out += ["the exception %s is no module" % name for name in exceptions if name not in mods]
    return out


def upward_imports(package=PACKAGE, layers=LAYERS, exceptions=LAYER_EXCEPTIONS):
    """Every import of a module in a higher layer than the importer's, as
    ``path:line: module (layer) imports module (higher layer)``."""
    names = [layer for layer, _ in layers]
    out = []
    for name, path, line, target in import_lines(package):
        a, b = _place(name, layers, exceptions), _place(target, layers, exceptions)
        if a is not None and b is not None and b < a:
            out.append("%s:%d: %s (%s) imports %s (%s)" % (_rel(path, package), line, name,
                                                         names[a], target, names[b]))
    return out


def test_every_module_has_a_layer():
    """Mutants: a new module left out of LAYERS; a table entry for a module that is gone."""
    offenders = unplaced()
    assert not offenders, "the layer table does not fit the package (tests/test_layout.py " \
        "LAYERS):\n" + "\n".join(offenders)


def test_imports_point_down_the_layers():
    offenders = upward_imports()
    assert not offenders, "imports from a higher layer (%s, top to bottom):\n%s" % (
        " -> ".join(layer for layer, _ in LAYERS), "\n".join(offenders))


def test_the_layer_exception_is_needed():
    """Each exception lifts a module above its package because it imports from that
    higher layer; once it no longer does, the exception must go."""
    without = upward_imports(exceptions={})
    for name in LAYER_EXCEPTIONS:
        assert any(" %s (" % name in o for o in without), \
            "%s no longer imports from above its package: drop it from LAYER_EXCEPTIONS " \
            "and the README" % name


def test_the_readme_describes_the_layers_in_order():
    """The README's Layout paragraph names the layers top to bottom and the exception."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    para = text.split("## Layout", 1)[1].split("\n\n", 2)[1]
    para = " ".join(para.split())
    at = 0
    for layer, _ in LAYERS:
        at = para.find("the " + layer, at)
        assert at >= 0, ("README's Layout paragraph should name the layers %s in this "
                         "order: %s" % (", ".join("the " + name for name, _ in LAYERS), para))
    for name in LAYER_EXCEPTIONS:
        assert name.replace(".", "/") + ".py" in para, para


# ------------------------------------------------------------------- private names

def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(package=PACKAGE):
    """Every import of a private name from another module (``from m import _x``), and
    of a private module from outside its package (``from pkg import _mod``, ``import
    pkg._mod``, ``from pkg._mod import x``), as ``path:line: imports ...``. A package's
    private module may be imported anywhere inside that package."""
    mods = _modules(package)
    out = []
    for name, path, _, tree in _parsed(package):
        here = (name if path.name == "__init__.py" else name.rpartition(".")[0]) + "."

        def outside(owner):
            return not here.startswith(owner + ".")
        for line, mod, names in _imported(name, path, tree):
            where = "%s:%d: imports " % (_rel(path, package), line)
            parts = mod.split(".")
            for i, part in enumerate(parts):
                if _private(part) and outside(".".join(parts[:i])):
                    out.append(where + "the private module " + ".".join(parts[:i + 1]))
                    break
            for n in names:
                if _private(n) and (mod + "." + n not in mods or outside(mod)):
                    out.append(where + "%s from %s" % (n, mod))
    return out


def test_no_private_names_imported_across_modules():
    offenders = private_imports()
    assert not offenders, "private names imported from other modules (make them public, " \
        "or move the code that needs them):\n" + "\n".join(offenders)


# -------------------------------------------------------------------------- sizes

def big_modules(package=PACKAGE, limit=MAX_MODULE_LINES):
    return ["%s: %d lines" % (_rel(path, package), len(text.splitlines()))
            for _, path, text, _ in _parsed(package) if len(text.splitlines()) > limit]


def long_functions(package=PACKAGE, limit=MAX_FUNCTION_LINES):
    """Every function (methods and nested ones too) over ``limit`` lines, from its
    ``def`` line to its last, as ``path:line: qualified.name() is N lines``."""
    out = []

    def visit(node, prefix, path):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    n = child.end_lineno - child.lineno + 1
                    if n > limit:
                        out.append((path, child.lineno, "%s() is %d lines" % (qual, n)))
                visit(child, qual + ".", path)
            else:
                visit(child, prefix, path)

    for _, path, _, tree in _parsed(package):
        visit(tree, "", path)
    return ["%s:%d: %s" % (_rel(p, package), line, what) for p, line, what in sorted(out)]


def test_no_module_over_500_lines():
    offenders = big_modules()
    assert not offenders, "modules over %d lines:\n%s" % (MAX_MODULE_LINES,
                                                          "\n".join(offenders))


def test_no_function_over_80_lines():
    offenders = long_functions()
    assert not offenders, "functions over %d lines:\n%s" % (MAX_FUNCTION_LINES,
                                                            "\n".join(offenders))


def cupy_importers(package=PACKAGE, allowed="backend.py"):
    """``path:line imports cupy...`` for every import of CuPy outside ``allowed``."""
    found = []
    for name, path in _modules(package).items():
        if path.relative_to(package).as_posix() == allowed:
            continue
        for line, mod, _ in _imported(name, path, ast.parse(path.read_text(encoding="utf-8"))):
            if mod and mod.split(".")[0] in ("cupy", "cupyx"):
                found.append("%s:%d imports %s" % (path.relative_to(package.parent).as_posix(),
                                                   line, mod))
    return found


def test_only_backend_imports_cupy():
    offenders = cupy_importers()
    assert not offenders, "CuPy is imported outside fcgpu/backend.py: " + "; ".join(offenders)


# ----------------------------------------------------------- the checker checks itself

def _write(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .low import f\n",
        "pkg/low.py": "def f():\n    from .sub import impl\n    return impl\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/impl.py": "from .. import low\n",
        "pkg/top.py": "import pkg.low\nfrom pkg import sub\n",
    })
    graph, sizes = import_graph(pkg)
    assert graph["pkg"] == {"pkg.low": 1}
    assert graph["pkg.low"] == {"pkg.sub.impl": 2}     # the lazy import, resolved
    assert graph["pkg.sub.impl"] == {"pkg.low": 1}
    assert set(graph["pkg.top"]) == {"pkg.low", "pkg.sub"}
    assert sizes["pkg.low"] == 3
    assert find_circles(graph) == [["pkg.low", "pkg.sub.impl"]]
    # a name taken from a package face is an arrow to the face
    pkg = _write(tmp_path / "b", {
        "pkg/__init__.py": "from .a import X\nY = 1\n",
        "pkg/a.py": "X = 0\ndef g():\n    from . import Y\n",
    })
    graph, _ = import_graph(pkg)
    assert find_circles(graph) == [["pkg", "pkg.a"]]
    assert _describe(graph, ["pkg", "pkg.a"]).splitlines() == [
        "circle of pkg, pkg.a:", "  pkg:1 -> pkg.a:3 -> pkg"]
    # three modules, two ways round
    pkg = _write(tmp_path / "d", {"pkg/__init__.py": "", "pkg/a.py": "from . import b, c\n",
                                  "pkg/b.py": "from . import a\n",
                                  "pkg/c.py": "from . import a\n"})
    graph, _ = import_graph(pkg)
    assert find_circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert _describe(graph, find_circles(graph)[0]).splitlines()[1:] == [
        "  pkg.a:1 -> pkg.b:1 -> pkg.a", "  pkg.c:1 -> pkg.a:1 -> pkg.c"]
    # one way: no circle
    pkg = _write(tmp_path / "c", {"pkg/__init__.py": "", "pkg/a.py": "from . import b\n",
                                  "pkg/b.py": "import os\n"})
    graph, _ = import_graph(pkg)
    assert find_circles(graph) == []


def test_the_cupy_check_sees_lazy_imports(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/backend.py": "def f():\n    import cupy\n",
        "pkg/ok.py": "import numpy\nfrom .backend import f\n",
        "pkg/sub/k.py": "def g():\n    from cupyx.scipy import sparse\n    import cupy as cp\n",
    })
    assert cupy_importers(pkg) == ["pkg/sub/k.py:2 imports cupyx.scipy",
                                   "pkg/sub/k.py:3 imports cupy"]


def test_the_layer_rule_names_every_upward_import(tmp_path):
    """Mutants: ``b <= a`` (same-layer imports flagged: drive -> mid); the first line per
    target only (import_graph: low.py:4 missed); lazy imports skipped (ast top level
    only: both of low.py missed); exceptions ignored (lifted.py flagged); shortest
    pattern winning (pkg.sub.impl placed in the bottom layer)."""
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/cli.py": "from . import drive\nfrom .sub import impl\n",
        "pkg/drive.py": "from .low import f\nfrom . import mid\n",
        "pkg/mid.py": "import pkg.low\nfrom .sub.impl import g\n",
        "pkg/low.py": "def f():\n    from . import drive\n    from .mid import h\n"
                      "    import pkg.mid\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/impl.py": "from ..drive import x\n",
        "pkg/sub/lifted.py": "from ..mid import g\n",
        "pkg/stray.py": "",
    })
    layers = [("top", ["pkg.cli"]), ("middle", ["pkg.drive", "pkg.mid", "pkg.sub.impl"]),
              ("bottom", ["pkg", "pkg.low", "pkg.sub", "pkg.sub.*", "pkg.gone"])]
    exceptions = {"pkg.sub.lifted": ("middle", "it must")}
    assert upward_imports(pkg, layers, exceptions) == [
        "pkg/low.py:2: pkg.low (bottom) imports pkg.drive (middle)",
        "pkg/low.py:3: pkg.low (bottom) imports pkg.mid (middle)",
        "pkg/low.py:4: pkg.low (bottom) imports pkg.mid (middle)"]
    assert "pkg/sub/lifted.py:1: pkg.sub.lifted (bottom) imports pkg.mid (middle)" in \
        upward_imports(pkg, layers, {})
    assert unplaced(pkg, layers, exceptions) == [
        "pkg/stray.py: pkg.stray is in no layer of the table",
        "the table's bottom layer: pkg.gone matches no module"]
    assert unplaced(pkg, layers, {"pkg.nowhere": ("top", "")})[-1] == \
        "the exception pkg.nowhere is no module"


def test_the_private_rule_names_every_private_import(tmp_path):
    """Mutants: only the first name of an import read (_z missed); lazy imports skipped
    (d.py missed); dunders counted as private (__version__ flagged); the alias read
    instead of the name (``as _os`` flagged, ``_hidden as hidden`` missed); a package's
    own private module refused (pkg/__init__.py, sub/c.py flagged)."""
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from ._impl import run\n__version__ = '1'\n",
        "pkg/_impl.py": "_SECRET = 1\ndef run():\n    pass\n",
        "pkg/a.py": "from ._impl import _SECRET, run\nfrom . import _impl as impl\n",
        "pkg/b.py": "from .a import (x,\n    _y, _z)\nfrom . import __version__\n"
                    "import os as _os\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/_hidden.py": "X = 1\n",
        "pkg/sub/c.py": "from . import _hidden\nfrom ._hidden import X\nfrom .. import _impl\n",
        "pkg/d.py": "def f():\n    from .sub import _hidden as hidden\n"
                    "    import pkg.sub._hidden\n    from .sub._hidden import X\n"
                    "    from numpy import _private_thing\n",
    })
    assert private_imports(pkg) == [
        "pkg/a.py:1: imports _SECRET from pkg._impl",
        "pkg/b.py:1: imports _y from pkg.a",
        "pkg/b.py:1: imports _z from pkg.a",
        "pkg/d.py:2: imports _hidden from pkg.sub",
        "pkg/d.py:3: imports the private module pkg.sub._hidden",
        "pkg/d.py:4: imports the private module pkg.sub._hidden",
        "pkg/d.py:5: imports _private_thing from numpy"]


def test_the_size_rules_name_every_long_module_and_function(tmp_path):
    """The limits are inclusive: 500 lines and 80 lines pass, one more fails. Mutants:
    ``>=`` for ``>``; the length counted without the ``def`` line; methods or nested
    functions not visited; only the first offender named."""
    body, deeper = "    x = 1\n", "        x = 1\n"
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/ok.py": "x = 1\n" * MAX_MODULE_LINES,
        "pkg/big.py": "x = 1\n" * (MAX_MODULE_LINES + 1),
        "pkg/f.py": ("def fits():\n" + body * (MAX_FUNCTION_LINES - 1)
                     + "def long():\n" + body * MAX_FUNCTION_LINES
                     + "class K:\n    def method(self):\n" + deeper * MAX_FUNCTION_LINES
                     + "def outer():\n    def inner():\n" + deeper * MAX_FUNCTION_LINES
                     + "    return inner\n"),
    })
    assert big_modules(pkg) == ["pkg/big.py: %d lines" % (MAX_MODULE_LINES + 1)]
    first = MAX_FUNCTION_LINES + 1          # where long() starts
    assert long_functions(pkg) == [
        "pkg/f.py:%d: long() is 81 lines" % first,
        "pkg/f.py:%d: K.method() is 81 lines" % (first + 82),
        "pkg/f.py:%d: outer() is 83 lines" % (first + 163),
        "pkg/f.py:%d: outer.inner() is 81 lines" % (first + 164)]
