"""The package's shape, read from its source: imports point one way (no circles), no
module is over 600 lines, and CuPy is imported in ``fcgpu/backend.py`` only.

Imports are read with :mod:`ast`, so the lazy ones inside functions count as much as
those at the top of a file: a circle that only closes at run time is still a circle.
An import of ``a.b`` is an arrow to the module ``a.b`` (not to the package ``a``,
whose ``__init__`` Python runs first: counting that would make every package face
that re-exports its own modules a circle). ``from pkg import name`` is an arrow to
``pkg.name`` when that is a module of ours, else to ``pkg`` itself.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fcgpu"
MAX_LINES = 600


def _modules(package=PACKAGE):
    """``{dotted name: path}`` of every Python module in the package."""
    mods = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


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
    return out


def import_graph(package=PACKAGE):
    """``{module: {imported module of ours: first line}}`` and ``{module: lines}``."""
    mods = _modules(package)
    graph, sizes = {}, {}
    for name, path in mods.items():
        text = path.read_text(encoding="utf-8")
        sizes[name] = len(text.splitlines())
        edges = {}
        for line, mod, names in _imported(name, path, ast.parse(text, str(path))):
            targets = [mod + "." + n for n in names if mod + "." + n in mods]
            if len(targets) < len(names) or not names:
                # names that are not modules come from ``mod`` itself (or its nearest
                # package of ours, for ``import a.b.c`` of a non-module path)
                m = mod
                while m and m not in mods:
                    m = m.rpartition(".")[0]
                if m:
                    targets.append(m)
            for t in targets:
                if t != name:
                    edges.setdefault(t, line)
        graph[name] = edges
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


def test_no_module_over_600_lines():
    _, sizes = import_graph()
    big = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not big, "modules over %d lines: %s" % (MAX_LINES, ", ".join(
        "%s (%d)" % kv for kv in sorted(big.items())))


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
