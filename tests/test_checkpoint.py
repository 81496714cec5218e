"""Checkpoints (fcgpu.checkpoint): safetensors files that cannot run code.

A checkpoint that is truncated, damaged, foreign, an old pickle, or made for another
net ends in one CheckpointError line naming the file and the problem, and neither
the file nor the run is changed. Old pickles are converted only on request
(`fcgpu convert-checkpoint --trust`). The loader is fuzzed with byte mutations of a
valid file and with re-signed mutations of its stored state.
"""
import json
import os
import pickle
import shlex
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fcgpu import checkpoint
from fcgpu.checkpoint import CheckpointError
from fcgpu.cli import main
from fcgpu.fc_net import FullyConnectedNet
from fcgpu.solver import NonFiniteLossError, Solver
from fuzzing import FUZZ, Watchdog, mutate, mutations, record, tally_report

def blobs(seed, n=300, d=12, c=3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 3
    y = rng.integers(c, size=n)
    X = centers[y] + rng.standard_normal((n, d))
    return {"X_train": X[: n - 60], "y_train": y[: n - 60], "X_val": X[n - 60:],
            "y_val": y[n - 60:]}


def make_solver(hidden=(16, 8), dtype=np.float32, rule="adam", epochs=2, seed=0, **kw):
    model = FullyConnectedNet(list(hidden), input_dim=12, num_classes=3, weight_scale=1e-1,
                              use_batchnorm=True, dropout=0.8, dtype=dtype, seed=seed,
                              fresh_masks=True)
    return Solver(model, blobs(seed), update_rule=rule, optim_config={"learning_rate": 1e-2},
                  lr_decay=0.9, batch_size=40, num_epochs=epochs, verbose=False, seed=seed,
                  **kw)


@pytest.fixture(scope="module")
def trained():
    """A solver after 2 epochs and its checkpoint bytes."""
    s = make_solver()
    s.train()
    return s, checkpoint.encode(s.state_dict())


def one_line_error(excinfo, path, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith("checkpoint %s: " % path), msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def params_of(solver):
    return {k: v.copy() for k, v in solver.model.params.items()}


def assert_untouched(solver, before, epoch=0):
    assert solver.epoch == epoch and solver.loss_history == []
    for k, v in before.items():
        assert np.array_equal(solver.model.params[k], v), k


def resign(blob, edit):
    """``blob`` with its stored state JSON passed through ``edit`` and a valid digest:
    what a hand-made (not damaged) file looks like."""
    from safetensors.numpy import load, save
    n = struct.unpack("<Q", blob[:8])[0]
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    arrays = {k: np.array(v) for k, v in load(blob).items()}
    tree = edit(json.loads(meta["state"]), arrays)
    meta["state"] = json.dumps(tree)
    meta["sha256"] = checkpoint.digest(meta["state"], arrays)
    return save(arrays, metadata=meta)


# --------------------------------------------------------------------- round trip

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_everything(tmp_path, dtype):
    s = make_solver(dtype=dtype)
    s.train()
    state = s.state_dict()
    path = tmp_path / "a.safetensors"
    s.save_checkpoint(path)
    back = checkpoint.load(path)
    from test_solver import assert_same_state
    assert_same_state(back, state)  # epoch_seconds aside, which is checked here:
    assert back["epoch_seconds"] == state["epoch_seconds"]
    # the 128-bit generator state is exact, stored as decimal text in the JSON
    assert back["rng"] == s.rng.bit_generator.state
    assert back["rng"]["state"]["state"] > 2 ** 53
    assert back["model"]["bn_params"][0]["running_var"].dtype == dtype
    assert back["optim_configs"]["W1"]["t"] == 2 * (240 // 40)
    assert back["model"]["params"]["W1"].flags.writeable


def test_resume_on_the_backend(tmp_path, xp):
    """On CuPy the checkpoint holds host copies and loads back onto the device; the
    resumed run equals the uninterrupted one there too."""
    from test_solver import assert_same_state

    def solver(epochs, **kw):
        model = FullyConnectedNet([16, 8], input_dim=12, num_classes=3, weight_scale=1e-1,
                                  use_batchnorm=True, dropout=0.8, seed=0, fresh_masks=True,
                                  xp=xp)
        return Solver(model, blobs(0), update_rule="adam", batch_size=40, num_epochs=epochs,
                      verbose=False, seed=0, **kw)

    path = tmp_path / "ck.safetensors"
    full = solver(3)
    full.train()
    first = solver(1, epoch_callback=lambda s: s.save_checkpoint(path))
    first.train()
    resumed = solver(3)
    resumed.load_checkpoint(path)
    assert all(type(v) is type(full.model.params["W1"]) for v in resumed.model.params.values())
    assert type(resumed.optim_configs["W1"]["m"]) is type(full.model.params["W1"])
    resumed.train()
    assert resumed.loss_history == full.loss_history
    assert_same_state(resumed.state_dict(), full.state_dict())


def test_checkpoint_on_disk_is_safetensors_with_fcgpu_metadata(trained):
    from safetensors.numpy import load
    _, blob = trained
    n = struct.unpack("<Q", blob[:8])[0]
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    assert meta["format"] == "fcgpu-checkpoint" and meta["format_version"] == "1"
    assert len(meta["sha256"]) == 64
    names = set(load(blob))
    assert {"model/params/W1", "optim_configs/W1/m", "optim_configs/W1/v",
            "model/bn_params/0/running_mean", "best_params/W1"} <= names


def test_unsupported_values_are_refused_on_save(tmp_path):
    s = make_solver(epochs=0)
    state = s.state_dict()
    state["optim_configs"]["W1"]["hook"] = print
    with pytest.raises(CheckpointError, match="optim_configs/W1/hook.*builtin_function"):
        checkpoint.save(state, tmp_path / "x")
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------- bad files

class Evil:
    """A pickle that runs a shell command when loaded (as in the bug report)."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, ("echo pwned > %s" % shlex.quote(self.sentinel),))


def evil_file(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"format": "fcgpu-solver-1", "x": Evil(sentinel)},
                                  protocol=pickle.HIGHEST_PROTOCOL))
    return path, sentinel


def test_malicious_pickle_is_refused_unread_by_the_solver(tmp_path):
    path, sentinel = evil_file(tmp_path)
    blob = path.read_bytes()
    s = make_solver()
    before = params_of(s)
    with pytest.raises(CheckpointError) as e:
        s.load_checkpoint(path)
    one_line_error(e, path, "pickle", "convert-checkpoint --trust")
    assert not sentinel.exists()
    assert path.read_bytes() == blob
    assert_untouched(s, before)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_python3_pickle_protocol_is_recognized(tmp_path, protocol):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=protocol))
    with pytest.raises(CheckpointError, match="it is a pickle"):
        checkpoint.load(path)


def test_malicious_pickle_is_refused_by_fcgpu_train_resume(tmp_path, monkeypatch, capsys):
    """`fcgpu train --checkpoint evil.ckpt --resume`, the report's command (the data
    loader is replaced by small synthetic data)."""
    from fcgpu import train
    from test_train import fake_cifar
    path, sentinel = evil_file(tmp_path)
    blob = path.read_bytes()
    monkeypatch.setattr(train, "load_data",
                        lambda cfg, progress=True: fake_cifar(np.random.default_rng(0)))
    code = main(["train", "--backend", "numpy", "--epochs", "1", "--hidden", "16",
                 "--num-train", "400", "--checkpoint", str(path), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and "pickle" in err and "convert-checkpoint" in err
    assert not sentinel.exists()
    assert path.read_bytes() == blob


def test_truncated_files(tmp_path, trained):
    """A file cut short anywhere: one line naming the problem (the words are looked for
    in the problem itself, not in the message, which names the file: tmp_path holds
    "truncated" in its own name). Mutant caught: the header-truncation check removed
    (a file cut inside its JSON header then reads as invalid JSON instead)."""
    _, blob = trained
    s = make_solver()
    before = params_of(s)
    n = struct.unpack("<Q", blob[:8])[0]
    for cut, words in [(0, "the file is empty"),
                       (5, "it is not an fcgpu checkpoint: 5 bytes is too short"),
                       (8 + n // 2, "the file is truncated: its header claims"),
                       (8 + n + 100, "the file is truncated"),
                       (len(blob) - 1, "the file is truncated")]:
        path = tmp_path / ("cut%d.safetensors" % cut)
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError) as e:
            s.load_checkpoint(path)
        one_line_error(e, path)
        assert e.value.problem.startswith(words), e.value.problem
        assert path.read_bytes() == blob[:cut]
    assert_untouched(s, before)


def test_a_changed_byte_in_any_array_breaks_the_digest(tmp_path, trained):
    """One byte changed in the data of each array in turn (the first in the file, the
    best parameters, the best batchnorm statistics, ...): every one is reported as a
    digest mismatch. Mutants caught: a digest that skips the first array, or the
    arrays of best_bn."""
    from safetensors.numpy import load
    _, blob = trained
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    names = sorted(load(blob))
    assert any(k.startswith("best_bn/") for k in names) and len(names) > 10
    for name in names:
        start, stop = header[name]["data_offsets"]
        assert stop > start, name
        bad = bytearray(blob)
        bad[8 + n + start] ^= 0x01  # (the lowest mantissa bit of its first value)
        with pytest.raises(CheckpointError, match="do not match their SHA-256 digest"):
            checkpoint.decode(bytes(bad), name)


@pytest.mark.parametrize("rule", ["sgd_momentum", "rmsprop", "adam"])
def test_every_state_array_of_every_rule_is_checked_against_the_model(tmp_path, rule):
    """A checkpoint whose optimizer state array (Adam's m and v, the velocity, the
    RMSProp cache: each rule's state keys in optim.RULES) has another shape is refused.
    Mutant caught: a state key left out of the shape check (the RMSProp cache)."""
    from fcgpu.optim import RULES
    s = make_solver(rule=rule, epochs=1)
    s.train()
    blob = checkpoint.encode(s.state_dict())
    assert RULES[rule].state
    for key in RULES[rule].state:
        def edit(tree, arrays):
            name = "optim_configs/W1/" + key
            arrays[name] = np.zeros((3, 4), arrays[name].dtype)
            return tree
        path = tmp_path / ("%s-%s.safetensors" % (rule, key))
        path.write_bytes(resign(blob, edit))
        fresh = make_solver(rule=rule, epochs=1)
        with pytest.raises(CheckpointError) as e:
            fresh.load_checkpoint(path)
        one_line_error(e, path, "optimizer state W1[%r]" % key, "(3, 4)", "(12, 16)")


def test_integers_beyond_2_53_are_stored_as_text():
    """Integers that a double cannot hold exactly (the generator's 128-bit state, a
    64-bit dropout key) are stored as {"$int": "DIGITS"}, so that no JSON reader rounds
    them; 2**53 itself is a plain number. Mutant caught: big integers written as JSON
    numbers (Python reads those back exactly, so a round trip alone cannot tell)."""
    state = make_solver(epochs=0).state_dict()
    state["model"]["dropout_key"] = 2 ** 64 - 1
    state["model"]["dropout_step"] = 2 ** 53
    blob = checkpoint.encode(state)
    n = struct.unpack("<Q", blob[:8])[0]
    text = json.loads(blob[8:8 + n])["__metadata__"]["state"]
    seen = []
    tree = json.loads(text, parse_int=lambda digits: seen.append(int(digits)) or int(digits))
    assert max(map(abs, seen)) == 2 ** 53  # every bigger one is tagged
    assert tree["model"]["dropout_key"] == {"$int": str(2 ** 64 - 1)}
    assert tree["rng"]["state"]["state"] == {"$int": str(state["rng"]["state"]["state"])}
    assert tree["model"]["dropout_step"] == 2 ** 53
    back = checkpoint.decode(blob)
    assert back["model"]["dropout_key"] == 2 ** 64 - 1 and back["rng"] == state["rng"]


def test_bit_flips_anywhere_are_reported(tmp_path, trained):
    """A flipped bit in the header length, the array table, the stored state or
    the array data: each is caught (the last two by the digest)."""
    _, blob = trained
    n = struct.unpack("<Q", blob[:8])[0]
    state_at = blob.index(b'"state"', 8) + 20
    table_at = blob.index(b'"shape":[', 8) + 9
    rng = np.random.default_rng(0)
    data_at = [int(p) for p in rng.integers(8 + n, len(blob), size=4)]
    s = make_solver()
    before = params_of(s)
    for pos in [0, 3, 9, table_at, state_at, len(blob) - 1] + data_at:
        for bit in (0, 5):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            path = tmp_path / ("flip%d_%d.safetensors" % (pos, bit))
            path.write_bytes(bytes(bad))
            with pytest.raises(CheckpointError) as e:
                s.load_checkpoint(path)
            one_line_error(e, path)
            assert path.read_bytes() == bytes(bad)
    assert_untouched(s, before)
    # a damaged array byte, specifically, names the digest
    bad = bytearray(blob)
    bad[data_at[0]] ^= 0x10
    (tmp_path / "d").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="SHA-256 digest: the file is corrupt"):
        checkpoint.load(tmp_path / "d")


@pytest.mark.parametrize("kw,words", [
    (dict(hidden=(16, 9)), ["W2", "(16, 9)", "(16, 8)"]),
    (dict(hidden=(16,)), ["unexpected", "W3"]),
    (dict(dtype=np.float64), ["float32", "float64"]),
    (dict(rule="sgd_momentum"), ["update rule", "adam", "sgd_momentum"]),
])
def test_checkpoint_of_another_net_or_rule(tmp_path, trained, kw, words):
    _, blob = trained
    path = tmp_path / "other.safetensors"
    path.write_bytes(blob)
    s = make_solver(**kw)
    before = params_of(s)
    with pytest.raises(CheckpointError) as e:
        s.load_checkpoint(path)
    one_line_error(e, path, *words)
    assert_untouched(s, before)
    assert path.read_bytes() == blob


def test_foreign_and_newer_files(tmp_path, trained):
    from safetensors.numpy import save
    _, blob = trained
    cases = {
        "plain.safetensors": (save({"w": np.ones(3, np.float32)}), "without fcgpu's metadata"),
        "other.safetensors": (save({"w": np.ones(3)}, metadata={"format": "pt"}),
                              "another kind"),
        "newer.safetensors": (blob.replace(b'"format_version":"1"', b'"format_version":"2"'),
                              "newer fcgpu"),
        "model.pt": (b"PK\x03\x04" + bytes(100), "zip archive"),
        "text.json": (b'{"epoch": 3}', "not a safetensors file"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(tmp_path / name)
        one_line_error(e, tmp_path / name, words)


def _set(arrays, name, index, value):
    arrays[name][index] = value


HAND_MADE = [
    (lambda t, a: _set(a, "model/params/W2", (0, 0), np.nan), ["model parameter W2", "NaN"]),
    (lambda t, a: _set(a, "optim_configs/b1/v", 1, np.inf),
     ["optimizer state b1['v']", "NaN or inf"]),
    (lambda t, a: a.__setitem__("model/bn_params/0/running_var", np.ones(5, np.float32)),
     ["batchnorm layer[0] running_var", "(5,)", "(16,)"]),
    (lambda t, a: a.__setitem__("optim_configs/W1/m", np.ones((12, 16))),
     ["optimizer state W1['m']", "float64", "float32"]),
    (lambda t, a: t["optim_configs"]["W1"].update(t="3"), ["t (the step counter)"]),
    (lambda t, a: t["optim_configs"]["W1"].update(t=2 ** 64), ["t (the step counter)"]),
    (lambda t, a: t["optim_configs"]["W1"].update(learning_rate=None), ["learning_rate"]),
    (lambda t, a: t["optim_configs"]["W1"].update(beta1="0.9"), ["beta1"]),
    (lambda t, a: t["optim_configs"]["b2"].update(beta2=1.0), ["beta2 is 1.0; it must be in [0, 1)"]),
    (lambda t, a: t.update(epoch=-1), ["epoch is -1"]),
    (lambda t, a: t.update(epoch=True), ["epoch is True"]),
    (lambda t, a: t["rng"].update(bit_generator="MT19937"), ["PCG64"]),
    (lambda t, a: t["rng"]["state"].update(inc=-5), ["generator state"]),
    (lambda t, a: t.update(val_acc_history=t["val_acc_history"][:-1]), ["differ in length"]),
    (lambda t, a: t["train_acc_history"].append(1.5), ["outside [0, 1]"]),
    (lambda t, a: t.pop("loss_history"), ["lacks loss_history"]),
    (lambda t, a: t.update(extra=1), ["unknown entries extra"]),
    (lambda t, a: [t["model"]["bn_params"].pop(), a.pop("model/bn_params/1/running_mean"),
                   a.pop("model/bn_params/1/running_var")], ["batchnorm layer", "has 1"]),
    (lambda t, a: t["model"]["bn_params"][0].update(eps=-1.0), ["eps"]),
    (lambda t, a: t["model"].update(dropout_step=1.5), ["dropout_step"]),
    (lambda t, a: t["model"].update(dropout_key={"$int": str(2 ** 70)}), ["dropout_key"]),
    (lambda t, a: t["model"].update(dropout_step=2 ** 63), ["last 64-bit stream"]),
    (lambda t, a: t["model"]["params"].update(W1={"$array": "model/params/W2"}),
     ["refers to array"]),
    (lambda t, a: t["model"]["params"].pop("b3"), ["holds arrays the state does not use"]),
    (lambda t, a: t.update(format="something-else"), ["no fcgpu Solver state"]),
]


@pytest.mark.parametrize("edit,words", HAND_MADE, ids=[w[-1] for _, w in HAND_MADE])
def test_hand_made_states_are_checked(tmp_path, trained, edit, words):
    """Files with a valid digest whose contents are wrong (made by hand or by a
    buggy writer): every part of the state is checked, not just the arrays."""
    _, blob = trained

    def apply(tree, arrays):
        edit(tree, arrays)
        return tree

    path = tmp_path / "made.safetensors"
    path.write_bytes(resign(blob, apply))
    s = make_solver()
    before = params_of(s)
    with pytest.raises(CheckpointError) as e:
        s.load_checkpoint(path)
    one_line_error(e, path, *words)
    assert_untouched(s, before)


# --------------------------------------------------------------- kill mid-write

WRITER = textwrap.dedent("""
    import builtins, io, os, sys, time
    import numpy as np
    from fcgpu import checkpoint
    path = sys.argv[1]
    base = {"format": "fcgpu-solver-1", "optim_configs": {"W": {}}, "update_rule": None,
            "lr_decay": 1.0, "batch_size": 1, "num_train_samples": None,
            "num_val_samples": None, "rng": np.random.default_rng(0).bit_generator.state,
            "best_val_acc": 0.0, "best_params": {}, "best_bn": [], "loss_history": [],
            "train_acc_history": [], "val_acc_history": [], "epoch_seconds": []}
    W = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    saving = [0]

    class Paused:
        # a file opened for writing during the second save: its first write puts half
        # of its bytes on disk, says so, and waits for the kill
        def __init__(self, f):
            self._f = f
        def write(self, data):
            if saving[0] == 1:
                self._f.write(data[:max(1, len(data) // 2)])
                self._f.flush()
                os.fsync(self._f.fileno())
                print("writing", flush=True)
                time.sleep(600)
            return self._f.write(data)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self._f.__exit__(*exc)
        def __getattr__(self, name):
            return getattr(self._f, name)

    def paused(opener):
        def opened(file, mode="r", *args, **kw):
            f = opener(file, mode, *args, **kw)
            return Paused(f) if ("w" in mode or "a" in mode or "+" in mode) else f
        return opened

    builtins.open = io.open = paused(io.open)
    os.fdopen = paused(os.fdopen)
    for i in range(2):
        saving[0] = i
        W[0, 0] = i
        checkpoint.save(dict(base, epoch=i, model={"params": {"W": W}}), path)
        print("ready", flush=True)
""")


def test_kill_during_write_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process in the middle of writing its second checkpoint (half of the
    bytes on disk, the write paused until the kill: no timing involved); the file is
    the first checkpoint, complete. Mutant caught: a save that writes to the path
    itself (not a temporary file renamed over it), which leaves half a file there."""
    path = tmp_path / "ck.safetensors"
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(checkpoint.__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"     # the first save is done
        assert proc.stdout.readline().strip() == "writing"   # the second is half written
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    state = checkpoint.load(path)  # raises if the file were half written
    W = state["model"]["params"]["W"]
    assert state["epoch"] == 0 and W[0, 0] == 0 and W.shape == (256, 256)
    # (the killed write's temporary file may remain beside it; it is never read)
    assert all(p.name == path.name or p.name.startswith(".tmp-") for p in tmp_path.iterdir())


# --------------------------------------------------------------------- old pickles

def old_pickle(tmp_path, state, name="old.pkl"):
    """A checkpoint as earlier fcgpu versions wrote it: the state dict, pickled."""
    path = tmp_path / name
    path.write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def test_convert_checkpoint_needs_trust(tmp_path, capsys):
    old = old_pickle(tmp_path, make_solver(epochs=0).state_dict())
    new = tmp_path / "new.safetensors"
    assert main(["convert-checkpoint", str(old), str(new)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--trust" in err and str(old) in err
    assert not new.exists()


def test_convert_checkpoint_then_resume_is_exact(tmp_path, capsys):
    """An old pickle written after epoch 1 of a 3-epoch run (from the epoch
    callback, as `fcgpu train` did), converted, resumes to the same end."""
    snaps = {}
    full = make_solver(epochs=3, epoch_callback=lambda s: snaps.setdefault(s.epoch,
                                                                          s.state_dict()))
    full.train()
    state = snaps[1]
    state.pop("best_bn")  # (the first fcgpu checkpoints lacked these two)
    state.pop("epoch_seconds")
    path = old_pickle(tmp_path, state)
    blob = path.read_bytes()
    new = tmp_path / "new.safetensors"
    assert main(["convert-checkpoint", "--trust", str(path), str(new)]) == 0
    assert "epoch 1" in capsys.readouterr().out
    assert path.read_bytes() == blob
    resumed = make_solver(epochs=3)
    resumed.load_checkpoint(new)
    assert resumed.epoch == 1
    resumed.train()
    assert resumed.loss_history == full.loss_history
    assert resumed.val_acc_history == full.val_acc_history
    for k in full.model.params:
        assert np.array_equal(resumed.model.params[k], full.model.params[k]), k


def test_convert_checkpoint_still_refuses_code(tmp_path, capsys):
    path, sentinel = evil_file(tmp_path)
    new = tmp_path / "new.safetensors"
    assert main(["convert-checkpoint", "--trust", str(path), str(new)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refusing to load global" in err
    assert not sentinel.exists() and not new.exists()


def test_convert_checkpoint_bad_inputs(tmp_path, trained, capsys):
    _, blob = trained
    current = tmp_path / "current.safetensors"
    current.write_bytes(blob)
    old = old_pickle(tmp_path, make_solver(epochs=0).state_dict())
    notdict = old_pickle(tmp_path, [1, 2], "list.pkl")
    memo = tmp_path / "memo.pkl"  # LONG_BINPUT 2**31-1 (see test_data)
    memo.write_bytes(b"\x80\x02}r\xff\xff\xff\x7f.")
    for args, words in [
        ([str(current), str(tmp_path / "x")], "already a checkpoint in the current format"),
        ([str(old), str(old)], "same file"),
        ([str(notdict), str(tmp_path / "y")], "cannot convert it"),
        ([str(memo), str(tmp_path / "m")], "memo index 2147483647"),
        ([str(tmp_path / "nothing.pkl"), str(tmp_path / "z")], "No such file"),
    ]:
        assert main(["convert-checkpoint", "--trust"] + args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err
    assert current.read_bytes() == blob


def test_convert_checkpoint_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert-checkpoint", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--trust" in out and "OLD" in out and "NEW" in out and "pickle" in out


# --------------------------------------------------------------------- fuzzing

@pytest.fixture(scope="module", autouse=True)
def _fuzz_tally():
    yield from tally_report()


def load_or_refuse(blob, solver):
    """Decode ``blob`` and load it into ``solver``; returns the state if it loaded,
    None if it was refused with CheckpointError. Anything else fails the test. A
    state that loads must be usable: the solver trains one more epoch from it
    (a NaN loss from absurd but well-formed hyperparameters is a fair ending)
    and saves it again."""
    try:
        with Watchdog(30):
            state = checkpoint.decode(blob, "fuzzed")
            try:  # (as Solver.load_checkpoint does)
                solver.load_state_dict(state)
            except CheckpointError as e:
                raise CheckpointError(e.problem, "fuzzed") from e
    except CheckpointError as e:
        assert "\n" not in str(e) and str(e).startswith("checkpoint fuzzed: "), str(e)
        record("refused: " + e.problem)
        return None
    record("loaded")
    with Watchdog(60), np.errstate(all="ignore"):
        solver.num_epochs = solver.epoch + 1
        try:
            solver.train()
        except NonFiniteLossError:
            return state
        after = checkpoint.encode(solver.state_dict())
        finite = all(np.isfinite(v).all() for c in solver.optim_configs.values()
                     for v in c.values() if isinstance(v, np.ndarray))
        finite = finite and all(np.isfinite(v).all() for v in solver.model.params.values())
        if finite:
            checkpoint.decode(after)
        else:  # (a huge learning rate overflows without a NaN loss yet)
            with pytest.raises(CheckpointError, match="NaN or inf"):
                checkpoint.decode(after)
    return state


@FUZZ
@given(ops=mutations())
def test_fuzz_byte_mutations(trained, ops):
    solver, blob = trained
    n = struct.unpack("<Q", blob[:8])[0]
    bad = mutate(blob, ops, hot=[(0, 8 + n)])  # hot: the header and its JSON
    state = load_or_refuse(bad, make_solver(epochs=0))
    if state is not None:
        # the digest lets through only changes that leave the contents as they were
        from test_solver import assert_same_state
        assert_same_state(state, checkpoint.decode(blob))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats()
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids,
                                                              max_size=3),
    max_leaves=6)


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))


@FUZZ
@given(data=st.data())
def test_fuzz_hand_made_states(trained, data):
    """Replace any part of the stored state by any JSON value (and re-sign the
    file): it loads and is usable, or it is refused with CheckpointError."""
    _, blob = trained
    n = struct.unpack("<Q", blob[:8])[0]
    tree = json.loads(json.loads(blob[8:8 + n])["__metadata__"]["state"])
    paths = sorted(_paths(tree), key=repr)
    edits = data.draw(st.lists(st.tuples(st.sampled_from(paths), JSON_VALUES),
                               min_size=1, max_size=3))

    def edit(t, arrays):
        for path, value in edits:
            if not path:
                return value
            node = t
            try:
                for k in path[:-1]:
                    node = node[k]
                node[path[-1]] = value
            except (KeyError, IndexError, TypeError):
                pass  # an earlier edit removed this path
        return t

    load_or_refuse(resign(blob, edit), make_solver(epochs=0))


def test_fuzz_corpus_sanity(trained):
    """The fuzzers' starting point loads, so mutations are measured against a
    good file (and a hand-made copy with nothing changed loads too)."""
    _, blob = trained
    assert load_or_refuse(blob, make_solver(epochs=0)) is not None
    assert load_or_refuse(resign(blob, lambda t, a: t), make_solver(epochs=0)) is not None
    # and the mutator works: two equal flips cancel, a hot edit lands in the hot range
    assert mutate(blob, [("flip", False, 0.5, 0), ("flip", False, 0.5, 0)]) == blob
    hit = mutate(blob, [("set", True, 0.5, 0)], hot=[(100, 200)])
    assert hit[150] == 0 and hit[:150] == blob[:150] and hit[151:] == blob[151:]
