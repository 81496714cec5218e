"""examples/dropout.ipynb: committed without outputs, and executed end to end.

The notebook runs in a real Jupyter kernel through nbclient (what nbmake and nbconvert
use underneath), driven from this test rather than by ``pytest --nbmake`` so that it
runs under the plain ``python -m pytest`` of CI and the README, skips with a reason
where CIFAR-10 or the Jupyter packages are missing, gets its parameters the papermill
way (a cell injected after the one tagged "parameters"), and has its printed results
checked, not just its lack of errors. CI runs it small: ``FCGPU_NB_SMALL=1``
(subsets, one or two epochs) on the NumPy backend.
"""
import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "dropout.ipynb"


def _load():
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def test_notebook_is_committed_without_outputs():
    nb = _load()
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "no code cells"
    for i, cell in enumerate(nb["cells"]):
        where = "cell %d (%s...)" % (i, "".join(cell["source"])[:40])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], where + " has outputs: clear them before committing"
            assert cell["execution_count"] is None, where + " has an execution count"
        assert "attachments" not in cell, where + " has attachments"
        assert set(cell["metadata"]) <= {"tags"}, where + " has metadata " + str(
            sorted(cell["metadata"]))
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def _python_kernel(tmp_path, monkeypatch):
    """A 'python3' kernelspec that runs this interpreter (and this checkout of fcgpu),
    placed first on the Jupyter path so that no other installed python3 kernel wins."""
    import fcgpu
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (this test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    root = str(Path(fcgpu.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def _cifar_or_skip():
    from fcgpu.data import DataError, resolve_cifar10
    try:
        resolve_cifar10(download=False)
    except DataError:
        pytest.skip("CIFAR-10 not available: set FCGPU_DATA to the archive (CI does) or put "
                    "it in the cache folder; this test does not download it")


def _text(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_notebook_runs_small_on_numpy(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    _cifar_or_skip()
    _python_kernel(tmp_path, monkeypatch)
    monkeypatch.setenv("FCGPU_NB_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell('backend = "numpy"\n',
                                         metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, injected)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    out = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    # the setup cell says which backend it got, and why
    assert re.search(r"^fcgpu \S+: backend numpy on ", out, re.M), out[:500]
    assert "why: backend 'numpy' was asked for" in out
    # dropout forward: about 1 - p zeroed at train time, nothing at test time
    for p, zero in re.findall(r"p =  (\S+)\n(?:.*\n){2}.*\nFraction of train-time output "
                              r"set to zero:  (\S+)", out):
        assert abs(float(zero) - (1 - float(p))) < 0.01, (p, zero)
    assert out.count("Fraction of test-time output set to zero:  0.0\n") == 3
    assert float(re.search(r"dx relative error:  (\S+)", out).group(1)) < 1e-8
    errors = [float(e) for e in re.findall(r"relative error: (\S+)\n", out)]
    assert len(errors) == 3 * 6, errors  # W1..3, b1..3 for each of three dropout values
    assert max(errors) < 1e-4, errors
    # the small run trains: the final net (4900 images, 2 epochs) beats chance (0.1) on
    # the test images; measured 0.35-0.36 in three runs
    test_acc = float(re.search(r"^Test set accuracy:  (\S+)", out, re.M).group(1))
    assert test_acc > 0.25, test_acc
    assert re.search(r"^accuracy (\S+) \(1000 examples, 10 classes\)", out, re.M)
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2, "expected the two figures"


def _install_source():
    """The setup cell's install_source function, compiled on its own."""
    cell = next(c for c in _load()["cells"] if c["cell_type"] == "code"
                and "def install_source" in "".join(c["source"]))
    tree = ast.parse("".join(cell["source"]))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name == "install_source")
    ns = {"Path": Path}
    exec(compile(ast.Module([fn], []), "setup cell", "exec"), ns)
    return ns["install_source"]


def test_notebook_installs_only_what_it_is_told(tmp_path):
    """The setup cell installs fcgpu from `install` (a wheel, or a git address), else
    from the repository address in the pyproject.toml of the clone it sits in; with
    neither it stops with a message, and it never asks the package index for the
    unpublished name 'fcgpu'. Mutant caught: a fallback to 'fcgpu[cuda12]'."""
    install_source = _install_source()
    wheel = str(tmp_path / "fcgpu-0.1.0-py3-none-any.whl")
    assert install_source(wheel) == wheel
    clone = tmp_path / "clone"
    (clone / "examples").mkdir(parents=True)
    (clone / "pyproject.toml").write_text(
        '[project]\nname = "fcgpu"\n[project.urls]\nRepository = "https://example.org/me/fcgpu"\n')
    assert install_source("", clone / "examples") == \
        "fcgpu[cuda12] @ git+https://example.org/me/fcgpu"
    (clone / "pyproject.toml").write_text('[project]\nname = "fcgpu"\n')
    with pytest.raises(RuntimeError, match="set `install` in the parameters cell .* not "
                                           "published on the package index"):
        install_source("", clone / "examples")
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text(
        '[project]\nname = "fcgpu-impostor"\n[project.urls]\nRepository = "https://x/y"\n')
    with pytest.raises(RuntimeError, match="nothing says where to get it"):
        install_source("", other)
    # this checkout: whatever its pyproject.toml holds, never the bare index name
    try:
        got = install_source("", NOTEBOOK.parent)
    except RuntimeError:
        got = None
    assert got is None or "@ git+" in got
