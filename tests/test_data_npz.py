"""Your own data as .npz (fcgpu.data_npz, fcgpu train --data FILE.npz): loading,
splitting, normalizing, one-line errors, and the digits example of docs/data.md
trained end to end through the CLI."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fcgpu.cli import main
from fcgpu.data import DataError
from fcgpu.data_npz import load_npz

DOCS = Path(__file__).resolve().parent.parent / "docs" / "data.md"


def dataset(rng, n=200, d=7, c=4, **extra):
    """A random training set with every class present."""
    X = rng.standard_normal((n, d)) * 3 + 1
    y = rng.permutation(np.arange(n) % c)
    return dict(X_train=X, y_train=y, **extra)


def save(tmp_path, arrays, name="d.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


# every remainder mod 10 (n // 10 rows split off), and the 1000-row cap on both sides
VAL_SPLIT_SIZES = list(range(150, 160)) + [10009, 10010, 10011]


@pytest.mark.parametrize("n", VAL_SPLIT_SIZES)
def test_split_off_validation_and_subtract_the_training_mean(tmp_path, n):
    """The last min(1000, N // 10) rows become the validation split, for N of every
    remainder mod 10 and around the cap. Mutant caught: a rounding that differs from
    N // 10 for one remainder in ten (the test used one random N per run before)."""
    rng = np.random.default_rng(n)
    arrays = dataset(rng, n=n, d=5, c=3)
    arrays["X_train"] = arrays["X_train"].reshape(n, 5, 1)  # any shape per row
    arrays["X_test"] = rng.standard_normal((30, 5, 1))
    arrays["y_test"] = rng.integers(3, size=30)
    data = load_npz(save(tmp_path, arrays))

    n_val = min(1000, n // 10)
    X = arrays["X_train"].astype(np.float64)
    mean = X[:n - n_val].mean(axis=0)  # float64 reference
    for split, ref_X, ref_y in [("train", X[:n - n_val], arrays["y_train"][:n - n_val]),
                                ("val", X[n - n_val:], arrays["y_train"][n - n_val:]),
                                ("test", arrays["X_test"], arrays["y_test"])]:
        got = data["X_" + split]
        assert got.dtype == np.float32 and got.shape == ref_X.shape
        np.testing.assert_allclose(got, ref_X - mean, rtol=1e-5, atol=1e-5)
        assert data["y_" + split].dtype == np.int64
        np.testing.assert_array_equal(data["y_" + split], ref_y)
    assert data["num_classes"] == 3 and data["image_shape"] is None


def test_given_validation_split_is_used_as_is_and_classes_counted(tmp_path, rng):
    arrays = dataset(rng, n=120, d=6, c=7)
    arrays["X_val"] = rng.integers(0, 255, size=(25, 6)).astype(np.uint8)
    arrays["y_val"] = rng.integers(7, size=25).astype(np.int32)
    arrays["image_shape"] = np.array([2, 3])
    data = load_npz(save(tmp_path, arrays))
    assert len(data["X_train"]) == 120 and len(data["X_val"]) == 25
    assert "X_test" not in data
    mean = arrays["X_train"].mean(axis=0)
    np.testing.assert_allclose(data["X_val"], arrays["X_val"] - mean, rtol=1e-5, atol=1e-4)
    assert data["num_classes"] == 7 and data["image_shape"] == (2, 3)


def _case(rng, change):
    arrays = dataset(rng, n=100, d=4, c=3)
    change(arrays)
    return arrays


def _ragged(a):
    a["X_train"] = np.array([np.zeros(3), np.zeros(2)] * 50, dtype=object)


def _with(**kw):
    def change(a):
        a.update(kw)
    return change


def _drop(key):
    def change(a):
        del a[key]
    return change


def _set_row(key, row, value):
    def change(a):
        a[key] = a[key].astype(np.float64)
        a[key][row, 1] = value
    return change


BAD = [
    ("missing X_train", _drop("X_train"), ["no X_train entry"]),
    ("missing y_train", _drop("y_train"), ["no y_train entry"]),
    ("X_val without y_val", _with(X_val=np.zeros((5, 4))), ["y_val is missing"]),
    ("typo in a key", _with(x_test=np.zeros((5, 4))), ["unexpected entry x_test"]),
    ("ragged rows", _ragged, ["X_train is an object array"]),
    ("strings", _with(X_train=np.array([["a"] * 4] * 100)), ["dtype <U1", "numbers"]),
    ("NaN", _set_row("X_train", 37, np.nan), ["NaN or inf", "row 37"]),
    ("inf", _set_row("X_train", 5, -np.inf), ["NaN or inf", "row 5"]),
    ("one-dimensional X", _with(X_train=np.zeros(100)), ["shape (100,)"]),
    ("float labels", lambda a: a.update(y_train=a["y_train"] + 0.5), ["labels must be integers"]),
    ("negative label", lambda a: a["y_train"].__setitem__(3, -1), ["label -1", "out of range"]),
    ("one-based labels", lambda a: a.update(y_train=a["y_train"] + 1),
     ["class 0 never occurs"]),
    ("test label beyond training labels",
     _with(X_test=np.zeros((6, 4)), y_test=np.array([0, 1, 2, 3, 0, 0])),
     ["y_test has label 3", "0..2"]),
    ("length mismatch", lambda a: a.update(y_train=a["y_train"][:-2]),
     ["y_train has 98 labels but X_train has 100 rows"]),
    ("2-D labels", lambda a: a.update(y_train=a["y_train"][:, None]), ["labels must be 1-D"]),
    ("feature mismatch", _with(X_val=np.zeros((5, 3)), y_val=np.zeros(5, np.int64)),
     ["X_val has 3 features", "X_train has 4"]),
    ("image_shape mismatch", _with(image_shape=np.array([3, 3])),
     ["image_shape [3, 3] holds 9 values", "4 features"]),
    ("empty split", _with(X_test=np.zeros((0, 4)), y_test=np.zeros(0, np.int64)),
     ["X_test has no rows"]),
    # the test split is checked like the others (mutants: y_test and X_test unchecked)
    ("test feature mismatch", _with(X_test=np.zeros((6, 5)), y_test=np.zeros(6, np.int64)),
     ["X_test has 5 features", "X_train has 4"]),
    ("negative test label", _with(X_test=np.zeros((6, 4)), y_test=np.array([0, 1, -1, 0, 0, 0])),
     ["y_test has label -1", "out of range"]),
    ("test label count", _with(X_test=np.zeros((6, 4)), y_test=np.zeros(5, np.int64)),
     ["y_test has 5 labels but X_test has 6 rows"]),
    ("float test labels", _with(X_test=np.zeros((6, 4)), y_test=np.zeros(6) + 0.5),
     ["y_test has dtype float64", "labels must be integers"]),
    ("NaN in the test split", _with(X_test=np.full((6, 4), np.nan), y_test=np.zeros(6, int)),
     ["X_test contains NaN or inf", "row 0"]),
]


@pytest.mark.parametrize("what,change,words", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_one_clear_line(tmp_path, rng, what, change, words):
    path = save(tmp_path, _case(rng, change))
    with pytest.raises(DataError) as exc:
        load_npz(path)
    msg = str(exc.value)
    assert "\n" not in msg and path in msg
    for w in words:
        assert w in msg, msg


def test_training_split_smaller_than_a_batch(tmp_path, rng):
    path = save(tmp_path, dataset(rng, n=100))
    load_npz(path, batch_size=90)  # 90 training rows after the split-off: one batch
    with pytest.raises(DataError, match="training split has 90 rows, fewer than one batch "
                                        "of 91"):
        load_npz(path, batch_size=91)


def test_files_that_are_not_npz_archives(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "nothing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 but not really a zip file")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load_npz(garbage)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros((3, 3)))
    with pytest.raises(DataError, match="single .npy array"):
        load_npz(single)
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(b"\x80\x04\x95")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load_npz(pickled)


def test_cli_reports_bad_npz_in_one_line(tmp_path, rng, capsys):
    path = save(tmp_path, _case(rng, lambda a: a.update(y_train=a["y_train"] + 1)))
    assert main(["train", "--data", path, "--backend", "numpy", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcgpu train: error:") and "\n" not in err
    assert "class 0 never occurs" in err


def test_cli_trains_on_npz_with_classes_and_features_from_the_data(tmp_path):
    # 5 classes, 12 features: one learnable pattern per class (seeded data and run: the
    # accuracy threshold below)
    rng = np.random.default_rng(3)
    n, d, c = 600, 12, 5
    patterns = rng.standard_normal((c, d)) * 2
    y = rng.permutation(np.arange(n) % c)
    X = rng.standard_normal((n, d)) + patterns[y]
    path = save(tmp_path, dict(X_train=X[:500], y_train=y[:500], X_test=X[500:],
                               y_test=y[500:], image_shape=np.array([3, 4])))
    m = tmp_path / "m.json"
    assert main(["train", "--data", path, "--hidden", "32", "--batch-size", "50",
                 "--epochs", "3", "--backend", "numpy", "--quiet", "--metrics", str(m),
                 "--seed", "3"]) == 0
    metrics = json.loads(m.read_text())
    assert metrics["config"]["image_shape"] == [3, 4]
    assert metrics["config"]["num_train"] is None
    assert metrics["test_acc"] > 0.8  # chance is 0.2


def test_cli_quiet_without_a_test_split(tmp_path, rng, capsys):
    path = save(tmp_path, dataset(rng, n=300, d=6, c=3))
    assert main(["train", "--data", path, "--hidden", "16", "--batch-size", "30",
                 "--epochs", "1", "--backend", "numpy", "--quiet"]) == 0
    assert re.fullmatch(r"val_acc \d\.\d{4} test_acc n/a", capsys.readouterr().out.strip())


def _docs_example():
    text = DOCS.read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)
    cmds = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert code and cmds, "docs/data.md lost its example"
    return code[0], [line.split()[1:] for line in cmds[0].strip().splitlines()]


def test_digits_example_of_the_docs_end_to_end(tmp_path, monkeypatch, capsys):
    """docs/data.md's code and commands, verbatim: build digits.npz from scikit-learn's
    bundled copy, train, evaluate. Measured test accuracy 0.975-0.983 (five seeds; the
    run here is seeded, so the threshold cannot pass or fail by luck)."""
    pytest.importorskip("sklearn")
    code, (train, evaluate) = _docs_example()
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    seed = "0"
    assert train[0] == "train" and evaluate[0] == "evaluate"
    assert main(train + ["--backend", "numpy", "--quiet", "--seed", seed,
                         "--metrics", "m.json"]) == 0
    metrics = json.loads(Path("m.json").read_text())
    assert metrics["test_acc"] >= 0.95, metrics["test_acc"]
    capsys.readouterr()
    pytest.importorskip("matplotlib")
    assert main(evaluate + ["--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    acc = float(re.search(r"^accuracy (\S+) \(360 examples, 10 classes\)", out, re.M).group(1))
    assert acc == pytest.approx(metrics["test_acc"], abs=1e-4)
    png = Path(evaluate[evaluate.index("--plot") + 1])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
