"""docs/cupy.md's list of CuPy entry points, and the installed CuPy they are checked
against (tests/test_cupy_contract.py; the static scan of fcgpu/ is tests/cupy_scan.py).

The doc's tables have one entry point a row: ``| `path` | arguments | source | why |``.
The arguments cell says how fcgpu uses the entry point:

* ``-``: read, never called (a class in ``isinstance``, a dtype, a property);
* ``()``: called with no arguments;
* ``a, b, kw=``: called with positional arguments bound to the parameters ``a`` and
  ``b`` of CuPy's signature (their names are checked where the parameter can be
  named; for positional-only parameters only their count) and the keyword ``kw``.

Signatures of the real package come from, in this order: ``inspect.signature``
(Python functions, Cython functions compiled with ``binding=True``, Python classes),
then the signature Cython embeds as the first docstring line (``embedsignature``:
builtin functions, methods of ``cdef`` classes, ufuncs: ``exp(x, /, out=None, \\*,
...)``); C types in it are dropped, defaults kept only as "has a default". Where
neither exists only the attribute's existence is checked, and the test says so.
"""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "cupy.md"

# Roots a contract path may start with, and the module each is imported from.
ROOTS = {"cupy": "cupy", "cupyx": "cupyx", "cupy_backends": "cupy_backends",
         "cuda": "cuda.pathfinder"}

# The first header cell of the table of entries the static scan cannot see.
BY_HAND_HEADER = "entry point (read by hand)"

# What a call returns, where CuPy's docstrings do not say: {path: class path}.
RETURNS_OVERRIDE = {}

# A source cell must cite a file and a line (or lines) of the package's source.
_CITATION = re.compile(r"[\w./-]+\.(?:pyx|pxd|pxi|py|h|cuh):\d+")


class ContractError(Exception):
    """docs/cupy.md is malformed, or an entry cannot be found in the real package."""


@dataclass(frozen=True)
class Args:
    """How an entry point is called: positional parameter names, then keywords."""
    positional: tuple
    keywords: frozenset

    def __str__(self):
        return ", ".join(list(self.positional) + ["%s=" % k for k in sorted(self.keywords)]) \
            or "()"


@dataclass(frozen=True)
class Entry:
    path: str
    args: Args | None  # None: read, never called
    source: str
    line: int
    by_hand: bool = False  # in the table of entries the static scan cannot see


def parse_args(cell):
    """The arguments cell as :class:`Args`, or None for ``-`` (read only)."""
    cell = cell.strip().strip("`").strip()
    if cell in ("-", "—"):
        return None
    if cell == "()":
        return Args((), frozenset())
    pos, kws = [], []
    for tok in (t.strip() for t in cell.split(",")):
        if re.fullmatch(r"\w+=", tok):
            kws.append(tok[:-1])
        elif re.fullmatch(r"\w+", tok) and not kws:
            pos.append(tok)
        else:
            raise ContractError("bad argument %r in %r: write 'name' for a positional "
                                "argument, 'name=' for a keyword, positional first" % (tok, cell))
    return Args(tuple(pos), frozenset(kws))


def read_doc(path=DOC):
    """{entry path: Entry} from the tables whose first header cell is 'entry point'
    (or BY_HAND_HEADER)."""
    entries = {}
    in_table = by_hand = False
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].lower() in ("entry point", BY_HAND_HEADER):
            in_table, by_hand = True, cells[0].lower() == BY_HAND_HEADER
            continue
        if not in_table or set(cells[0]) <= set("-: "):
            continue
        m = re.fullmatch(r"`([\w.]+)`", cells[0])
        if m is None or len(cells) != 4:
            raise ContractError("%s:%d: a row is | `path` | arguments | source | why |"
                                % (path, lineno))
        name = m.group(1)
        if name.split(".")[0] not in ROOTS:
            raise ContractError("%s:%d: %s starts with none of %s" % (path, lineno, name,
                                                                      sorted(ROOTS)))
        if name in entries:
            raise ContractError("%s:%d: %s is listed twice" % (path, lineno, name))
        if not _CITATION.search(cells[2]):
            raise ContractError("%s:%d: %s cites no file:line of the source" % (path, lineno, name))
        entries[name] = Entry(name, parse_args(cells[1]), cells[2], lineno, by_hand)
    if not entries:
        raise ContractError("%s has no entry-point table" % path)
    return entries


# ----------------------------------------------------------------- the real package

@dataclass(frozen=True)
class Found:
    """An entry found in the real package: ``obj`` is ``owner``'s attribute ``name``
    (None with ``documented``: an instance attribute its class documents)."""
    owner: object
    name: str
    obj: object
    documented: bool = False


def _documents(cls, name):
    """Whether ``cls`` or a base declares instance attribute ``name``: in its
    docstring (``~Stream.ptr (intptr_t): ...`` or ``ptr (int): ...``, as CuPy's
    Python classes do) or as an annotated field (a dataclass's)."""
    pat = re.compile(r"(~\w+\.%s\b|^\s*%s\s*\()" % (name, name), re.M)
    return any(pat.search(k.__doc__ or "") or name in getattr(k, "__annotations__", {})
               for k in getattr(cls, "__mro__", ()))


def lookup(path):
    """:class:`Found` for ``path`` in the installed package; ContractError if absent."""
    parts = path.split(".")
    modname = ROOTS.get(parts[0])
    if modname is None:
        raise ContractError("%s: unknown root %r" % (path, parts[0]))
    n = len(modname.split("."))
    try:
        obj = importlib.import_module(modname)
    except ImportError as exc:
        raise ContractError("%s: cannot import %s (%s)" % (path, modname, exc)) from None
    owner, name = None, modname
    for k, part in enumerate(parts[n:], n):
        owner, name = obj, part
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if inspect.ismodule(obj):
            try:
                obj = importlib.import_module(".".join(parts[:k + 1]))
                continue
            except ImportError:
                pass
        if inspect.isclass(obj) and k == len(parts) - 1 and _documents(obj, part):
            return Found(obj, part, None, documented=True)
        raise ContractError("%s: %s has no attribute %r" % (path, ".".join(parts[:k]), part))
    return Found(owner, name, obj)


def is_method(found):
    """True when the entry is a function defined on a class (called with ``self``)."""
    if not inspect.isclass(found.owner):
        return False
    raw = inspect.getattr_static(found.owner, found.name, None)
    if isinstance(raw, (staticmethod, classmethod)) or inspect.isclass(raw):
        return False
    return callable(raw) and not isinstance(raw, property)


_EMBEDDED = re.compile(r"^\s*([\w.]+)\((.*)\)\s*(?:->\s*(\S.*?))?\s*$")


def _split_params(text):
    """Split a parameter list at its top-level commas."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


_HAS_DEFAULT = object()  # the default of a parameter read from an embedded signature


def _param(text, kind):
    """``(name, kind, has default)`` of one embedded parameter, C types dropped."""
    left, eq, _ = text.partition("=")
    toks = left.split()
    if len(toks) == 1 and toks[0].startswith("**"):
        return toks[0][2:], inspect.Parameter.VAR_KEYWORD, False
    if len(toks) == 1 and toks[0].startswith("*"):
        return toks[0][1:], inspect.Parameter.VAR_POSITIONAL, False
    return toks[-1].lstrip("*&"), kind, bool(eq)


def embedded_signature(obj):
    """The signature Cython embedded in ``obj``'s docstring, as inspect.Signature;
    None if the docstring has none."""
    first = (getattr(obj, "__doc__", None) or "").lstrip().split("\n", 1)[0]
    m = _EMBEDDED.match(first.replace("\\*", "*"))
    if m is None:
        return None
    P = inspect.Parameter
    params, kind = [], P.POSITIONAL_OR_KEYWORD
    for text in _split_params(m.group(2)):
        if text == "/":
            params = [p.replace(kind=P.POSITIONAL_ONLY) for p in params]
            continue
        if text == "*":
            kind = P.KEYWORD_ONLY
            continue
        name, pkind, default = _param(text, kind)
        if pkind is P.VAR_POSITIONAL:
            kind = P.KEYWORD_ONLY
        params.append(P(name, pkind, default=_HAS_DEFAULT if default else P.empty))
    try:
        return inspect.Signature(params)
    except ValueError:
        return None


def signature(found):
    """``(inspect.Signature or None, where it came from)`` for a found entry."""
    if found.documented or not callable(found.obj):
        return None, "not callable"
    try:
        return inspect.signature(found.obj), "inspect.signature"
    except (ValueError, TypeError):
        pass
    sig = embedded_signature(found.obj)
    if sig is not None:
        return sig, "embedded signature (first docstring line)"
    return None, "no signature: existence only"


def bind_problems(sig, args, method):
    """Why a call with ``args`` (and ``self`` first when ``method``) would not bind
    to ``sig`` with the listed parameter names; [] when it would."""
    P = inspect.Parameter
    params = list(sig.parameters.values())
    if method and params and params[0].kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
        params = params[1:]
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind is P.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind is P.VAR_KEYWORD for p in params)
    problems = []
    for i, name in enumerate(args.positional):
        if i >= len(positional):
            if not var_pos:
                problems.append("takes at most %d positional arguments, we pass %d"
                                % (len(positional), len(args.positional)))
                break
        elif positional[i].kind is not P.POSITIONAL_ONLY and positional[i].name != name:
            problems.append("positional argument %d is %r, not %r"
                            % (i + 1, positional[i].name, name))
    named = {p.name: p for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    taken = {p.name for p in positional[:len(args.positional)]}
    for kw in sorted(args.keywords):
        if kw in taken:
            problems.append("%s= is also passed by position" % kw)
        elif kw not in named and not var_kw:
            problems.append("has no keyword %s=" % kw)
    given = taken | set(args.keywords)
    for p in positional[len(args.positional):] + [p for p in params if p.kind is P.KEYWORD_ONLY]:
        if p.default is P.empty and p.name not in given:
            problems.append("requires %s, which we do not pass" % p.name)
    return problems


# ----------------------------------------------------------------- types of results

# Names CuPy's docstrings and annotations give for its array type.
_TYPE_ALIASES = {"_ndarray_base": "cupy.ndarray", "ndarray": "cupy.ndarray",
                 "NDArray": "cupy.ndarray", "cupy.ndarray": "cupy.ndarray"}


def _type_path(name, near):
    """A dotted class path for a type named in a docstring or an annotation of the
    entry ``near``: as written, under cupy, cupy.cuda, or ``near``'s module. None
    when it names no class there."""
    name = name.strip().strip("`~:").split("[")[0]
    if name.startswith(":class:"):
        name = name[len(":class:"):].strip("`~")
    if name in _TYPE_ALIASES:
        return _TYPE_ALIASES[name]
    module = ROOTS.get(near.split(".")[0], "cupy")
    for cand in (name, "cupy." + name, "cupy.cuda." + name, module + "." + name):
        if cand.split(".")[0] not in ROOTS:
            continue
        try:
            found = lookup(cand)
        except ContractError:
            continue
        if inspect.isclass(found.obj):
            return cand
    return None


def returns(path):
    """The class path of what calling ``path`` returns, where CuPy says: the class
    itself for a class, else the docstring's ``-> T`` or ``Returns:`` type, or the
    return annotation. None when unknown."""
    if path in RETURNS_OVERRIDE:
        return RETURNS_OVERRIDE[path]
    try:
        found = lookup(path)
    except ContractError:
        return None
    obj = found.obj
    if inspect.isclass(obj):
        return path
    if type(obj).__name__ == "ufunc" and type(obj).__module__.startswith("cupy"):
        return "cupy.ndarray"
    doc = getattr(obj, "__doc__", None) or ""
    first = doc.lstrip().split("\n", 1)[0]
    m = _EMBEDDED.match(first.replace("\\*", "*"))
    if m and m.group(3):
        return _type_path(m.group(3), path)
    m = re.search(r"Returns:\s*\n\s*([\w.~`:]+)\s*:", doc)
    if m:
        return _type_path(m.group(1), path)
    try:
        ann = inspect.signature(obj).return_annotation
    except (ValueError, TypeError):
        return None
    if isinstance(ann, str) and ann:
        return _type_path(ann, path)
    return None
