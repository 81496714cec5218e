"""Backend selection: no eager CuPy import, clear errors, CPU training without CuPy."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fcgpu import backend
from fcgpu.errors import ConfigError

# Makes `import cupy` fail in a child process, as on a machine without CuPy.
BLOCK_CUPY = textwrap.dedent("""
    import sys
    class _NoCupy:
        def find_spec(self, name, path=None, target=None):
            if name == "cupy" or name.startswith("cupy."):
                raise ImportError("No module named 'cupy' (blocked by the test)")
    sys.meta_path.insert(0, _NoCupy())
""")


def run_py(code, env=None, block_cupy=True):
    full_env = dict(os.environ)
    full_env.pop("FCGPU_BACKEND", None)
    full_env.update(env or {})
    src = (BLOCK_CUPY if block_cupy else "") + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_import_does_not_import_cupy():
    r = run_py("""
        import sys, fcgpu, fcgpu.layers, fcgpu.fc_net, fcgpu.solver, fcgpu.optim
        import fcgpu.gradient_check, fcgpu.data, fcgpu.train, fcgpu.cli
        print("cupy" in sys.modules)
    """, block_cupy=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_import_and_train_with_cupy_absent():
    r = run_py("""
        import numpy as np, fcgpu
        from fcgpu.fc_net import FullyConnectedNet
        from fcgpu.solver import Solver
        print(fcgpu.get_backend())
        rng = np.random.default_rng(0)
        X = rng.standard_normal((300, 8)); y = (X[:, 0] > 0).astype(int)
        data = dict(X_train=X[:200], y_train=y[:200], X_val=X[200:], y_val=y[200:])
        model = FullyConnectedNet([16], input_dim=8, num_classes=2, dropout=0.8,
                                  use_batchnorm=True, weight_scale=0.1)
        s = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
                   num_epochs=3, batch_size=20, verbose=False)
        s.train()
        print(type(model.params["W1"]).__module__, s.best_val_acc > 0.8)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numpy", "numpy", "True"]


def test_asking_for_cupy_without_it_names_the_cause():
    r = run_py("""
        import fcgpu
        try:
            fcgpu.set_backend("cupy")
        except fcgpu.BackendUnavailable as e:
            print("ERR", e)
        print(fcgpu.cupy_status())
    """)
    assert r.returncode == 0, r.stderr
    assert "ERR backend 'cupy' is unavailable: CuPy is not installed" in r.stdout
    assert "(False," in r.stdout


def test_env_var_cupy_without_it_fails_loudly_not_silently():
    r = run_py("""
        import fcgpu
        from fcgpu.fc_net import FullyConnectedNet
        FullyConnectedNet([4])
    """, env={"FCGPU_BACKEND": "cupy"})
    assert r.returncode != 0
    assert "CuPy is not installed" in r.stderr


def test_cli_reports_missing_gpu_in_one_line():
    r = run_py("""
        import sys
        from fcgpu.cli import main
        sys.exit(main(["train", "--backend", "cupy", "--epochs", "1"]))
    """)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fcgpu train: error: backend 'cupy' is unavailable")
    assert "Traceback" not in r.stderr


def test_unknown_backend_name():
    """Mutant: a plain ValueError again (the CLI would report a bug)."""
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        backend.set_backend("tpu")
    with pytest.raises(ConfigError, match="unknown matmul precision 'low'"):
        backend.set_matmul_precision("low")


def test_bad_backend_variables_are_one_line_from_the_command(monkeypatch, capsys, tmp_path):
    """FCGPU_BACKEND or FCGPU_MATMUL_PRECISION set to a name that does not exist: one line
    naming the variable, exit 2. Mutants: _resolve or _check_precision raising a plain
    ValueError (a bug's traceback, exit 1); get_backend re-raising without the
    variable's name."""
    from fcgpu.cli import main
    monkeypatch.setattr(backend, "_backend", None)
    monkeypatch.setattr(backend, "_precision", None)
    monkeypatch.delenv("FCGPU_DEBUG", raising=False)
    monkeypatch.setenv("FCGPU_BACKEND", "tpu")
    monkeypatch.setenv("FCGPU_MATMUL_PRECISION", "low")
    with pytest.raises(ConfigError, match="^FCGPU_BACKEND: unknown backend 'tpu'"):
        backend.get_backend()
    with pytest.raises(ConfigError, match="^FCGPU_MATMUL_PRECISION: unknown matmul"):
        backend.get_matmul_precision()
    assert main(["evaluate", str(tmp_path / "x.ckpt")]) == 2
    assert capsys.readouterr().err == ("fcgpu evaluate: error: unknown backend 'tpu': "
                                       "choose one of numpy, cupy, auto\n")


def test_get_array_module_and_asnumpy():
    a = np.ones(3)
    assert backend.get_array_module(a, 1.0) is np
    assert backend.asnumpy([1, 2]).tolist() == [1, 2]
    assert not backend.is_cupy_array(a)
    assert backend.to_backend([1, 2], np, np.float32).dtype == np.float32


def test_numpy_backend_selection_roundtrip():
    old = backend.get_backend()
    try:
        assert backend.set_backend("numpy") is np
        assert backend.get_backend() == "numpy"
        assert backend.get_xp() is np
    finally:
        backend.set_backend(old)


def test_blas_summary_names_the_library_and_warns_on_one_thread():
    from threadpoolctl import threadpool_limits
    from fcgpu.cpu.blas import blas_summary, usable_cores
    line, _ = blas_summary()
    assert line.startswith("BLAS: ") and "threads" in line
    if usable_cores() > 1:
        with threadpool_limits(limits=1, user_api="blas"):
            _, warning = blas_summary()
        assert warning and "1 thread(s)" in warning
