"""The wheel and the sdist ship kernels/, and an installed (non-editable) fcgpu finds
them. Builds with pip (and the ``build`` frontend for the sdist), which fetch the
build backend (hatchling) from the index or the local cache: the tests skip, with the
reason, only when that backend cannot be had here; any other failed build fails."""
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL_FILES = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))

# what pip says when the isolated build environment cannot get the backend
_NO_BACKEND = ("No matching distribution found for hatchling",
               "Could not find a version that satisfies the requirement hatchling",
               "pip subprocess to install build dependencies did not run successfully")


def _output(r):
    return (r.stdout + r.stderr).strip()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "fcgpu"
    # build from a clean copy of the tracked sources, not the working folder's caches
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", ".benchmarks", "dist",
        "build", "*.egg-info", ".hypothesis"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out),
                        str(src)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        text = _output(r)
        if any(msg in text for msg in _NO_BACKEND):
            pytest.skip("the build backend (hatchling) cannot be installed here: "
                        + text.splitlines()[-1])
        pytest.fail("pip wheel failed:\n" + text, pytrace=False)
    wheels = list(out.glob("fcgpu-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    sdist = None
    try:
        import build  # noqa: F401
    except ImportError:
        pass
    else:
        # (the wheel build just got the backend: a failure here is the sdist's own)
        r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out),
                            str(src)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, "python -m build --sdist failed:\n" + _output(r)
        sdist = next(out.glob("fcgpu-*.tar.gz"))
    return wheels[0], sdist


def test_kernels_exist_in_the_checkout():
    assert "philox.cuh" in KERNEL_FILES and any(n.endswith(".cu") for n in KERNEL_FILES)


def test_wheel_ships_every_kernel_source(built):
    wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    for name in KERNEL_FILES:
        assert "fcgpu/kernels/" + name in names, name


def test_sdist_ships_kernels(built):
    _, sdist = built
    if sdist is None:
        pytest.skip("the 'build' frontend is not installed (pip install 'fcgpu[test]'): "
                    "sdist not built")
    with tarfile.open(sdist) as tf:
        names = tf.getnames()
    for name in KERNEL_FILES:
        assert any(n.endswith("/kernels/" + name) for n in names), name


def test_installed_wheel_finds_its_kernels(built, tmp_path):
    wheel, _ = built
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                        "--target", str(target), str(wheel)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    code = ("import fcgpu.cuda.module as m, fcgpu; "
            "print(m.kernels_dir()); print(fcgpu.__file__)")
    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("FCGPU_KERNELS_DIR", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    kdir, pkg_file = r.stdout.split()
    assert Path(pkg_file).is_relative_to(target)
    assert Path(kdir) == target / "fcgpu" / "kernels"
    assert sorted(p.name for p in Path(kdir).iterdir()) == KERNEL_FILES
