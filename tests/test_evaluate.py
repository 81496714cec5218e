"""predict_proba, fcgpu.evaluate (confusion matrix, per-class accuracy, checkpoints)
and fcgpu evaluate, against float64 references computed here."""
import json
import pickle
import re
import sys

import numpy as np
import pytest

from fcgpu import checkpoint
from fcgpu.backend import asnumpy
from fcgpu.cli import main
from fcgpu.errors import CheckpointUnreadable, ConfigError, DataError, FcgpuError
from fcgpu.evaluate import (confusion_matrix, evaluate, format_report,
                            load_model_from_checkpoint, plot_confusion)
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.solver import Solver
from cupy_standin import NoImplicitHostArray, fake_cupy


def reference_proba(model, X):
    """The net's test-mode forward pass and softmax in float64, written out."""
    p = {k: asnumpy(v).astype(np.float64) for k, v in model.params.items()}
    h = np.asarray(X, np.float64).reshape(len(X), -1)
    for i in range(1, model.num_layers):
        h = h @ p["W%d" % i] + p["b%d" % i]
        if model.use_batchnorm:
            bn = model.bn_params[i - 1]
            mean = asnumpy(bn["running_mean"]).astype(np.float64)
            var = asnumpy(bn["running_var"]).astype(np.float64)
            h = (h - mean) / np.sqrt(var + 1e-5) * p["gamma%d" % i] + p["beta%d" % i]
        h = np.maximum(h, 0)
    s = h @ p["W%d" % model.num_layers] + p["b%d" % model.num_layers]
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_net(rng, xp, batchnorm=True, dtype=np.float32, d=13, c=6):
    model = FullyConnectedNet([17, 11], input_dim=d, num_classes=c, dropout=0.7,
                              use_batchnorm=batchnorm, weight_scale=0.5, dtype=dtype,
                              seed=int(rng.integers(1 << 30)), xp=xp)
    for k in model.params:  # no zero biases, gamma != 1: every parameter matters
        model.params[k] = xp.asarray(rng.standard_normal(model.params[k].shape), dtype)
    if batchnorm:
        for bp, h in zip(model.bn_params, [17, 11]):
            bp["running_mean"] = xp.asarray(rng.standard_normal(h), dtype)
            bp["running_var"] = xp.asarray(rng.uniform(0.5, 2.0, h), dtype)
    return model


@pytest.mark.parametrize("batchnorm", [False, True])
def test_predict_proba_matches_float64_reference(xp, rng, batchnorm):
    model = random_net(rng, xp, batchnorm)
    X = rng.standard_normal((53, 13))
    ref = reference_proba(model, X)
    for batch_size in (1, 7, 1000):
        probs = model.predict_proba(X, batch_size=batch_size)
        assert type(probs) is type(model.params["W1"]) and probs.dtype == np.float32
        np.testing.assert_allclose(asnumpy(probs), ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(asnumpy(probs).sum(axis=1), 1, rtol=1e-5)
    # images (N, 1, 13) work as the training data did; CuPy input too
    probs = model.predict_proba(xp.asarray(X.reshape(53, 1, 13)))
    np.testing.assert_allclose(asnumpy(probs), ref, rtol=1e-4, atol=1e-6)


def test_predict_proba_rejects_wrong_shapes(rng):
    model = random_net(rng, np)
    with pytest.raises(ValueError, match="13 features per row, got shape \\(4, 12\\)"):
        model.predict_proba(np.zeros((4, 12)))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.predict_proba(np.zeros((4, 13)), batch_size=0)


def test_confusion_matrix_counts(rng):
    c = int(rng.integers(2, 12))
    t, p = rng.integers(c, size=500), rng.integers(c, size=500)
    ref = np.zeros((c, c), np.int64)
    for i, j in zip(t, p):
        ref[i, j] += 1
    np.testing.assert_array_equal(confusion_matrix(t, p, c), ref)
    with pytest.raises(ValueError, match="y_pred has labels in \\[0, %d\\]" % c):
        confusion_matrix(t, np.append(p[:-1], c), c)
    with pytest.raises(ValueError, match="500 labels but y_pred has 499"):
        confusion_matrix(t, p[:-1], c)


def test_confusion_matrix_takes_cupy_labels(rng, monkeypatch):
    """Labels held as CuPy arrays (a stand-in whose ``__array__`` raises CuPy's
    TypeError, cupy/_core/core.pyx:1803-1809) give the counts of their host copies,
    alone or beside NumPy labels, and bad labels still fail with the one-line error.
    Mutant: ``np.asarray`` in ``_labels`` (the code before) raises CuPy's TypeError."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(NoImplicitHostArray))
    c = int(rng.integers(2, 12))
    t, p = rng.integers(c, size=300), rng.integers(c, size=300)
    dt, dp = NoImplicitHostArray(t), NoImplicitHostArray(p)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(dt)  # the stand-in refuses as CuPy does
    want = confusion_matrix(t, p, c)
    np.testing.assert_array_equal(confusion_matrix(dt, dp, c), want)
    np.testing.assert_array_equal(confusion_matrix(t, dp, c), want)
    np.testing.assert_array_equal(confusion_matrix(dt, p, c), want)
    with pytest.raises(ValueError, match="y_pred has labels in \\[0, %d\\]" % c):
        confusion_matrix(dt, NoImplicitHostArray(np.append(p[:-1], c)), c)


def test_evaluate_against_reference_predictions(xp, rng):
    model = random_net(rng, xp, dtype=np.float64, c=5)
    X = rng.standard_normal((300, 13))
    y = rng.integers(5, size=300)
    y[y == 4] = 3  # class 4 has no examples
    pred = reference_proba(model, X).argmax(axis=1)
    r = evaluate(model, X, y, batch_size=64)
    assert r["accuracy"] == pytest.approx(np.mean(pred == y))
    assert r["num_examples"] == 300 and r["num_classes"] == 5
    for k in range(4):
        assert r["per_class_count"][k] == np.sum(y == k)
        assert r["per_class_accuracy"][k] == pytest.approx(np.mean(pred[y == k] == k))
    assert r["per_class_accuracy"][4] is None and r["per_class_count"][4] == 0
    np.testing.assert_array_equal(r["confusion"], confusion_matrix(y, pred, 5))
    text = format_report(r, class_names="abcde")
    assert text.splitlines()[0] == "accuracy %.4f (300 examples, 5 classes)" % r["accuracy"]
    row = next(line for line in text.splitlines() if line.startswith("e ")).split()
    assert row == ["e", "0", "-"]
    with pytest.raises(ValueError, match="labels in \\[0, 5\\]"):
        evaluate(model, X, np.append(y[:-1], 5))


def test_bad_input_raises_fcgpus_own_errors(rng):
    """Labels and arrays that do not fit are DataError, arguments out of range
    ConfigError (the CLI tells both in one line; both still ValueError). Mutant: any of
    them back to a plain ValueError (the CLI would report it as a bug)."""
    model = random_net(rng, np, c=5)
    X, y = rng.standard_normal((40, 13)), rng.integers(5, size=40)
    r = evaluate(model, X, y)
    cases = [
        (DataError, "must be 1-D", lambda: confusion_matrix(y.reshape(8, 5), y.reshape(8, 5), 5)),
        (DataError, "integer class labels", lambda: confusion_matrix(y + 0.5, y, 5)),
        (DataError, r"labels in \[0, 5\]", lambda: confusion_matrix(y, np.append(y[:-1], 5), 5)),
        (ConfigError, "num_classes must be >= 1", lambda: confusion_matrix(y, y, 0)),
        (DataError, "40 labels but y_pred has 39", lambda: confusion_matrix(y, y[:-1], 5)),
        (DataError, "X has 40 rows but y has 39", lambda: evaluate(model, X, y[:-1])),
        (DataError, "nothing to evaluate", lambda: evaluate(model, X[:0], y[:0])),
        (ConfigError, "5 outputs but num_classes is 6", lambda: evaluate(model, X, y, 6)),
        (ConfigError, "2 class names for 5 classes", lambda: format_report(r, ["a", "b"])),
    ]
    for cls, msg, call in cases:
        with pytest.raises(cls, match=msg) as info:
            call()
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_plot_confusion_writes_a_png(tmp_path, rng):
    pytest.importorskip("matplotlib")
    t, p = rng.integers(3, size=50), rng.integers(3, size=50)
    r = {"confusion": confusion_matrix(t, p, 3), "accuracy": 0.5, "num_examples": 50}
    plot_confusion(r, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in tmp_path.iterdir()] == ["cm.png"]  # no temp file left


def _trained_solver(rng, tmp_path, epochs=2):
    c, d = 4, 10
    patterns = rng.standard_normal((c, d)) * 2

    def split(n):
        y = rng.integers(c, size=n)
        return rng.standard_normal((n, d)) + patterns[y], y
    (Xtr, ytr), (Xv, yv) = split(300), split(60)
    model = FullyConnectedNet([20, 20], input_dim=d, num_classes=c, dropout=0.8,
                              use_batchnorm=True, seed=int(rng.integers(1 << 30)),
                              fresh_masks=True, xp=np)
    solver = Solver(model, dict(X_train=Xtr, y_train=ytr, X_val=Xv, y_val=yv),
                    update_rule="adam", optim_config={"learning_rate": 5e-3},
                    num_epochs=epochs, batch_size=50, verbose=False, seed=1)
    solver.train()  # leaves the best-validation parameters in the model
    path = tmp_path / "run.ckpt"
    solver.save_checkpoint(path)
    return solver, path, Xv


def test_checkpoint_gives_back_the_best_net(tmp_path, rng):
    solver, path, Xv = _trained_solver(rng, tmp_path)
    model, info = load_model_from_checkpoint(path, xp=np)
    assert info["epoch"] == 2 and info["train_config"] is None
    assert model.hidden_dims == [20, 20] and model.use_batchnorm
    best = solver.model.predict_proba(Xv)
    np.testing.assert_array_equal(model.predict_proba(Xv), best)

    # a checkpoint written after an epoch that was not the best: the last epoch's
    # parameters and running statistics differ from the best ones, which must win
    state = solver.state_dict()
    m = state["model"]
    m["params"] = {k: v + rng.standard_normal(v.shape).astype(v.dtype)
                   for k, v in m["params"].items()}
    for bp in m["bn_params"]:
        bp["running_mean"] = bp["running_mean"] + 1
    checkpoint.save(state, tmp_path / "last.ckpt")
    model, _ = load_model_from_checkpoint(tmp_path / "last.ckpt", xp=np)
    np.testing.assert_array_equal(model.predict_proba(Xv), best)


UNREADABLE = [("missing.ckpt", "No such file or directory"), ("", "Is a directory")]


def test_checkpoint_files_that_are_not_checkpoints(tmp_path):
    """A file that is not there, or a folder, is a CheckpointError naming it and why.
    Mutant (run on a copy of the tree: checkpoint/codec.py is another owner's): load's
    OSError let through (the CLI would report a bug)."""
    for name, why in UNREADABLE:
        path = tmp_path / name if name else tmp_path
        with pytest.raises(checkpoint.CheckpointError) as info:
            load_model_from_checkpoint(path)
        assert isinstance(info.value, FcgpuError)
        assert str(info.value) == "checkpoint %s: cannot read it (%s)" % (path, why)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(checkpoint.CheckpointError, match="junk.ckpt"):
        load_model_from_checkpoint(junk)
    other = tmp_path / "other.ckpt"
    other.write_bytes(pickle.dumps({"format": "something else"}))
    with pytest.raises(checkpoint.CheckpointError, match="other.ckpt.*pickle"):
        load_model_from_checkpoint(other)


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def test_a_checkpoint_that_cannot_be_read_is_still_an_oserror(tmp_path):
    """Callers caught the OSError that opening a missing checkpoint raised before
    fcgpu had its own errors (this test asserted ``pytest.raises(OSError)``), so the
    error for a file that cannot be read is also an OSError: CheckpointUnreadable.
    Fails while checkpoint.load raises a plain CheckpointError for it (a ValueError
    only); passes once it raises fcgpu.errors.CheckpointUnreadable (tried on a copy)."""
    for name, _ in UNREADABLE:
        with pytest.raises(OSError) as info:
            load_model_from_checkpoint(tmp_path / name if name else tmp_path)
        assert isinstance(info.value, CheckpointUnreadable)


def test_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    code = "open(%r, 'w').write('ran')" % str(marker)
    evil.write_bytes(pickle.dumps({"format": "fcgpu-solver-1", "x": _Exec(code)}))
    with pytest.raises(checkpoint.CheckpointError, match="evil.ckpt.*pickle"):
        load_model_from_checkpoint(evil)
    assert not marker.exists()


def _npz(tmp_path, rng, with_test=True):
    n, d, c = 700, 12, 3
    patterns = rng.standard_normal((c, d)) * 2
    y = rng.permutation(np.arange(n) % c)
    X = rng.standard_normal((n, d)) + patterns[y]
    arrays = dict(X_train=X[:600], y_train=y[:600])
    if with_test:
        arrays.update(X_test=X[600:], y_test=y[600:])
    path = tmp_path / ("d.npz" if with_test else "d-notest.npz")
    np.savez(path, **arrays)
    return str(path)


def test_cli_train_then_evaluate(tmp_path, rng, capsys):
    data = _npz(tmp_path, rng)
    ck, m = str(tmp_path / "run.ckpt"), tmp_path / "m.json"
    assert main(["train", "--data", data, "--hidden", "24", "--batch-size", "60",
                 "--epochs", "2", "--backend", "numpy", "--quiet", "--checkpoint", ck,
                 "--metrics", str(m)]) == 0
    metrics = json.loads(m.read_text())
    capsys.readouterr()
    png = tmp_path / "cm.png"
    pytest.importorskip("matplotlib")
    assert main(["evaluate", ck, "--backend", "numpy", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    acc = float(re.search(r"^accuracy (\S+) \(100 examples, 3 classes\)", out, re.M).group(1))
    assert acc == pytest.approx(metrics["test_acc"], abs=1e-4)
    assert "confusion matrix (rows: true class, columns: predicted class)" in out
    rows = [line.split() for line in out.splitlines()[-4:-1]]  # before "wrote cm.png"
    assert sum(int(v) for r in rows for v in r[1:]) == 100
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", ck, "--backend", "numpy", "--split", "val"]) == 0
    val = float(re.search(r"^accuracy (\S+) \(60 examples", capsys.readouterr().out,
                          re.M).group(1))
    assert val == pytest.approx(metrics["val_acc"], abs=1e-4)

    # data without a test split: one clear line
    assert main(["evaluate", ck, "--backend", "numpy", "--data",
                 _npz(tmp_path, rng, with_test=False)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no test split" in err


def test_cli_evaluate_bad_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    assert main(["evaluate", str(bad), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcgpu evaluate: error:") and "\n" not in err
