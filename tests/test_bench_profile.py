"""The CPU step profiler (fcgpu.bench.profile) and ``fcgpu bench --profile``: what it
measures and how it attributes time, on a tiny net. Nothing here checks a time: only
which phases and products are there, and the arithmetic on a fake clock."""
import json

import numpy as np
import pytest

from fcgpu import layer_utils, layers
from fcgpu.bench import models, profile

TINY = {"hidden": [24, 16, 12], "batch": 20}


def test_recorder_times_each_call_less_the_calls_it_wraps():
    ticks = iter(range(0, 1000, 1))  # the clock advances by 1 at every reading
    rec = profile._Recorder(clock=lambda: float(next(ticks)))

    def inner(a):
        return a

    def outer(a):
        return w_inner(a) + w_inner(a)

    w_inner = rec.wrap(inner, "inner", "gemm")
    w_outer = rec.wrap(outer, "outer", "glue")
    assert w_outer(np.ones(3)).shape == (3,)  # inactive: no record
    assert rec.calls == []
    rec.active = True
    w_outer(np.ones((2, 3)))
    # readings: outer t0=0; inner 1->2; inner 3->4; outer t1=5: inner 1 each, outer 5-2
    assert [(c[0], c[2], c[3]) for c in rec.calls] == [
        ("inner", [(2, 3)], 1.0), ("inner", [(2, 3)], 1.0), ("outer", [(2, 3)], 3.0)]


def test_phase_rows_name_layers_and_aggregate():
    calls = [("GEMM forward", "gemm", [(4, 8), (8, 6)], 1.0),
             ("GEMM forward", "gemm", [(4, 6), (6, 2)], 2.0),
             ("Adam", "optim", [(8, 6)], 0.5), ("Adam", "optim", [(6,)], 0.25),
             ("GEMM dW", "gemm", [(6, 4), (4, 2)], 3.0),
             ("GEMM dX", "gemm", [(4, 2), (2, 6)], 4.0),
             ("GEMM dW", "gemm", [(8, 4), (4, 6)], 5.0),
             ("fused x_backward", "fused", [(4, 6)], 6.0)]
    rows = {r["label"]: r for r in profile._phase_rows([calls, calls], layers=2)}
    assert rows["GEMM forward, layer 1"]["mkn"] == [4, 8, 6]
    assert rows["GEMM forward, layer 2"]["mkn"] == [4, 6, 2]
    assert rows["GEMM dW, layer 2"]["mkn"] == [6, 4, 2]
    assert rows["GEMM dW, layer 1"]["min_s"] == 5.0 and rows["GEMM dW, layer 1"]["mkn"] == [8, 4, 6]
    assert rows["GEMM dX, layer 2"]["mkn"] == [4, 2, 6]
    assert rows["fused x_backward, layer 1"]["median_s"] == 6.0
    assert rows["Adam"]["calls"] == 2 and rows["Adam"]["min_s"] == 0.75


@pytest.fixture(scope="module")
def tiny_profile():
    return profile.profile_step(TINY, rounds=3, warmup=1, layouts=True)


def test_profile_has_every_product_and_phase(tiny_profile):
    p = tiny_profile
    L = len(TINY["hidden"]) + 1
    dims = [3072] + TINY["hidden"] + [10]
    n = TINY["batch"]
    # the floor: forward and dW for every layer, dX for all but the first
    assert [g["label"] for g in p["gemms"]] == (
        ["h%d @ W%d" % (i, i + 1) for i in range(L)] + ["dW%d" % (i + 1) for i in range(L)]
        + ["dX%d" % i for i in range(L, 1, -1)])
    assert p["gemm_flops"] == sum(2 * np.prod(g["mkn"]) for g in p["gemms"])
    fw = {g["layer"]: g["mkn"] for g in p["gemms"] if g["op"] == "forward"}
    assert fw == {i + 1: [n, dims[i], dims[i + 1]] for i in range(L)}
    # each product was found inside the step, with the same shape
    assert all("in_step_min_s" in g for g in p["gemms"])
    labels = [ph["label"] for ph in p["phases"]]
    for i in range(1, L + 1):
        assert "GEMM forward, layer %d" % i in labels
        assert "GEMM dW, layer %d" % i in labels
    for i in range(1, L):
        assert "fused bias_bn_relu_dropout_forward, layer %d" % i in labels
        assert "fused bias_bn_relu_dropout_backward, layer %d" % i in labels
    for label in ("minibatch gather", "softmax loss", "Adam", "sandwich glue",
                  "affine forward (bias add)", "affine backward (db sum)"):
        assert label in labels
    adam = next(ph for ph in p["phases"] if ph["label"] == "Adam")
    assert adam["calls"] == 2 * L + 2 * (L - 1)  # W, b, gamma, beta
    # the numbers that the report and the ratio use are all there
    assert p["rounds"] == 3 and p["step_s"]["n"] == p["floor_s"]["n"] == 3
    assert p["ratio"]["min"] == p["step_s"]["min"] / p["floor_s"]["min"]
    assert p["floor_sum_of_minima_s"] == sum(g["min_s"] for g in p["gemms"])
    assert set(p["kinds"]) >= {"gemm", "fused", "optim", "loss", "data", "glue", "other"}
    assert [g["label"] for g in p["layouts"]["W.T"]["gemms"]] == [g["label"] for g in p["gemms"]]
    json.dumps(p)  # serializable as it is


def test_profiling_leaves_nothing_wrapped(tiny_profile):
    """After profiling no seam is wrapped and no product is observed any more."""
    from fcgpu import linalg
    for mod, attr in ((layers, "softmax_loss"), (layers, "affine_forward"),
                      (layer_utils, "affine_bn_relu_dropout_forward"), (models, "gather")):
        assert not hasattr(getattr(mod, attr), "__fcgpu_profiled__"), attr
    seen = []
    linalg.matmul(np.ones((2, 3)), np.ones((3, 1)), "forward")
    with linalg.observe(lambda product, a, b, role: seen.append(role) or product(a, b)):
        linalg.forward(np.ones((2, 3)), np.ones((3, 1)))
    assert seen == ["forward"]


def test_floor_products_transposed_give_the_same_values():
    parts = models.fcgpu_parts("numpy", TINY)
    model = parts["model"]
    plain = profile.floor_products(model, TINY["batch"])
    trans = profile.floor_products(model, TINY["batch"], transposed=True)
    for (lab, op, layer, mkn, f), (lab2, _, _, mkn2, g) in zip(plain, trans):
        assert (lab, mkn) == (lab2, mkn2)
        a, b = f(), g()
        if op == "dW":  # stored transposed, the gradient comes out transposed
            b = b.T
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cli_profile_json_and_results(tmp_path, capsys, monkeypatch):
    from fcgpu.cli import main
    monkeypatch.setitem(models.NETS, "default", TINY)
    out = tmp_path / "prof"
    assert main(["bench", "--profile", "--rounds", "3", "--json", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    p = json.loads(cap.out)
    assert p["format"] == profile.PROFILE_FORMAT and p["hidden"] == TINY["hidden"]
    assert "Step against its GEMM floor" in cap.err
    res = json.loads((out / "results.json").read_text())
    assert res["profile"]["rounds"] == 3 and res["settings"]["only"] == "profile"


def test_cli_bench_needs_out_unless_profiling(capsys):
    from fcgpu.cli import main
    assert main(["bench", "--only", "train"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["bench", "--profile", "--rounds", "2"]) == 2
    assert "--rounds must be at least 3" in capsys.readouterr().err


def test_augmented_step_gathers_what_the_solver_gathers():
    """--augment crop: the profiled step's minibatch is fcgpu.augment's for the same
    permutation, batch index and epoch (from uint8 images), and the profile says so."""
    from fcgpu.augment import augment_gather
    from fcgpu.bench.report.profile import augment_share, profile_text
    parts = models.fcgpu_parts("numpy", TINY, augment="crop", pad=2)
    X, y, n = parts["X"], parts["y"], TINY["batch"]
    assert X.dtype == np.uint8
    seen = []
    real = models.augmented_gather

    def spy(*args):
        seen.append(args)
        return real(*args)
    models.augmented_gather = spy
    try:
        parts["step"]()
        parts["step"]()
    finally:
        models.augmented_gather = real
    (_, _, perm, b0, *_), (_, _, _, b1, batch, mode, pad, epoch, mean) = seen
    assert (b0, b1, batch, mode, pad, epoch) == (0, 1, n, "crop", 2, 0)
    Xb, yb = real(X, y, perm, 1, n, "crop", 2, 0, mean)
    want, ywant = augment_gather(X, y, perm, 1, n, (3, 32, 32), "crop", 2, 0, 0, mean)
    np.testing.assert_array_equal(Xb, want)
    np.testing.assert_array_equal(yb, ywant)
    # crops moved pixels: not just the centred images
    plain = X[perm[n:2 * n]].astype(np.float32) - mean
    assert not np.array_equal(Xb, plain)

    p = profile.profile_step(TINY, rounds=3, warmup=1, augment="crop", pad=2)
    labels = [ph["label"] for ph in p["phases"]]
    assert "augmenting minibatch gather" in labels and "minibatch gather" not in labels
    assert (p["augment"], p["pad"]) == ("crop", 2)
    mn, med, share = augment_share(p)
    assert share == med / p["step_s"]["median"] and 0 < mn <= med
    text = profile_text(p)
    assert "Augmenting gather (crop" in text and "pad 2, from uint8 images" in text
    assert augment_share(profile.profile_step(TINY, rounds=3, warmup=1)) is None


def test_cli_profile_net_and_augment_options(capsys):
    from fcgpu.cli import main
    assert main(["bench", "--profile", "--rounds", "3", "--profile-net", "12,8",
                 "--augment", "flip", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["hidden"] == [12, 8] and p["augment"] == "flip" and p["pad"] is None
    assert main(["bench", "--profile", "--profile-net", "wide-ish"]) == 2
    assert "--profile-net 'wide-ish'" in capsys.readouterr().err
