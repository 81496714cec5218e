"""`fcgpu train` when the disk fills or refuses (issue 25, "A disk that fills or
refuses"): a checkpoint, the metrics or the plot cannot be written.

Each case runs twice: on a real small filesystem (a tmpfs mounted for the test, made
full or read-only at a chosen point of the run; skipped, with the reason, where this
machine refuses the mount: CI runs as root and mounts it) and with a fault-injecting
writer (``os.fsync`` and ``os.open`` refusing files in one folder with the errors the
kernel gives: ENOSPC, EROFS), which runs everywhere. Each checks the one-line message,
the exit code, and that nothing is lost: the previous checkpoint loads and holds its
epoch, the result is printed, the metrics are in the file or where the line says,
and the run resumed once the fault is gone ends where an uninterrupted run ends.
"""
import errno
import json
import os
import shlex
import shutil
import subprocess
import tempfile

import pytest

import fcgpu.checkpoint
import fcgpu.train
from fcgpu.checkpoint import load as load_checkpoint
from fcgpu.cli import main
from test_train_signals import assert_same_state, outcome, synthetic_npz

ARGS = ["--hidden", "24", "--epochs", "3", "--batch-size", "50", "--seed", "3",
        "--backend", "numpy", "--quiet"]


class Tmpfs:
    """A tmpfs mounted at ``path`` (16 MiB): ``fill()`` writes a file until the kernel
    says ENOSPC, ``read_only()`` remounts it read-only, ``heal()`` undoes both."""

    def __init__(self, path):
        self.path = path
        path.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "fcgpu-test",
                                   str(path)], capture_output=True, text=True)
            why = done.stderr.strip() or "mount exited %d" % done.returncode
        except OSError as exc:  # (no mount command)
            done, why = None, str(exc)
        if done is None or done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (%s); the injected-writer variant of "
                        "this case runs instead" % why)

    def fill(self):
        """Write until not one more byte fits (unbuffered, in ever smaller pieces)."""
        with open(self.path / "filler", "ab", buffering=0) as f:
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

    def read_only(self):
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def heal(self):
        subprocess.run(["mount", "-o", "remount,rw", str(self.path)], check=True)
        if (self.path / "filler").exists():
            (self.path / "filler").unlink()

    def close(self):
        subprocess.run(["umount", str(self.path)], check=True)


class InjectedFaults:
    """The same faults, injected: while ``fill()`` holds, ``os.fsync`` of a file in
    ``path`` raises ENOSPC (the kernel's answer to a write on a full disk); while
    ``read_only()`` holds, ``os.open`` creating a file there raises EROFS."""

    def __init__(self, path, monkeypatch):
        self.path, self.mode = path, None
        path.mkdir()
        fsync, open_ = os.fsync, os.open

        def inside(name):
            return os.path.abspath(name).startswith(str(path) + os.sep)

        def faulty_fsync(fd):
            if self.mode == "full" and inside(os.readlink("/proc/self/fd/%d" % fd)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return fsync(fd)

        def faulty_open(name, flags, *args, **kwargs):
            if self.mode == "ro" and flags & os.O_CREAT and inside(os.fspath(name)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)
            return open_(name, flags, *args, **kwargs)
        monkeypatch.setattr(os, "fsync", faulty_fsync)
        monkeypatch.setattr(os, "open", faulty_open)

    def fill(self):
        self.mode = "full"

    def read_only(self):
        self.mode = "ro"

    def heal(self):
        self.mode = None

    def close(self):
        pass


CAUSES = {"fill": os.strerror(errno.ENOSPC), "read_only": os.strerror(errno.EROFS)}


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path, monkeypatch):
    d = (Tmpfs(tmp_path / "disk") if request.param == "tmpfs"
         else InjectedFaults(tmp_path / "disk", monkeypatch))
    yield d
    d.heal()
    d.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data, and an uninterrupted run's metrics and checkpoint."""
    d = tmp_path_factory.mktemp("storage")
    npz = str(synthetic_npz(d / "data.npz"))
    assert main(["train", "--data", npz, *ARGS, "--checkpoint", str(d / "ref.ckpt"),
                 "--metrics", str(d / "ref.json")]) == 0
    return npz, d


@pytest.fixture
def spare_dir(tmp_path, monkeypatch):
    """The temp folder the fallback files go to."""
    spare = tmp_path / "spare"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    return spare


def error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def after_checkpoint(monkeypatch, n, fault):
    """Run ``fault()`` right after the n-th checkpoint write of the run."""
    save, count = fcgpu.checkpoint.save, [0]

    def counting_save(state, path):
        save(state, path)
        count[0] += 1
        if count[0] == n:
            fault()
    monkeypatch.setattr(fcgpu.checkpoint, "save", counting_save)


def after_training(monkeypatch, fault):
    """Run ``fault()`` when training is over, before the results are written."""
    run = fcgpu.train.run_training

    def then_fault(*args, **kwargs):
        metrics = run(*args, **kwargs)
        fault()
        return metrics
    monkeypatch.setattr(fcgpu.train, "run_training", then_fault)


def same_result(metrics_path, checkpoint_path, ref_dir):
    """The metrics and checkpoint of the uninterrupted run (the BLAS line aside: in
    this process it also names the libraries other tests loaded)."""
    m, state = outcome(metrics_path, checkpoint_path)
    ref_m, ref_state = outcome(ref_dir / "ref.json", ref_dir / "ref.ckpt")
    m.pop("blas")
    ref_m.pop("blas")
    assert m == ref_m
    assert_same_state(state, ref_state)


@pytest.mark.parametrize("fault", ["fill", "read_only"])
def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_loses_nothing(
        reference, disk, fault, tmp_path, monkeypatch, capsys):
    """Epoch 2's checkpoint meets a full (or read-only) disk: exit 2 after the result
    so far (epoch 2's val and test accuracy, printed, and in --metrics with `stopped`);
    one line names the file, the cause and the epoch the file still holds, and the
    command that resumes; the file still holds epoch 1, whole, with no temporary file
    beside it. Once the fault is gone, that command ends the run as an uninterrupted
    run ends. Mutants: the run going on after the failed write (exit 0, epoch 3 in the
    metrics), the StorageError let through without the metrics (no result printed),
    atomic writes that leave their temporary file (.tmp-* beside the checkpoint on the
    full tmpfs), a message without the epoch held."""
    npz, ref_dir = reference
    ck, metrics = disk.path / "run.ckpt", tmp_path / "m.json"
    after_checkpoint(monkeypatch, 1, getattr(disk, fault))
    code = main(["train", "--data", npz, *ARGS, "--checkpoint", str(ck), "--metrics",
                 str(metrics)])
    out, err = capsys.readouterr()
    assert code == 2
    line = error_line(err)
    resume = ["fcgpu", "train", "--data", npz, *ARGS, "--checkpoint", str(ck), "--metrics",
              str(metrics), "--resume"]
    assert line == ("fcgpu train: error: cannot write %s: %s; training stopped after epoch "
                    "2/3, whose checkpoint could not be saved (%s still holds epoch 1); once "
                    "it can be written, resume with: %s"
                    % (ck, CAUSES[fault], ck, shlex.join(resume)))
    partial = json.loads(metrics.read_text())
    assert partial["epochs"] == 2 and partial["stopped"].startswith("cannot write %s" % ck)
    assert out.strip() == "val_acc %.4f test_acc %.4f" % (partial["val_acc"],
                                                          partial["test_acc"])
    assert load_checkpoint(ck)["epoch"] == 1
    assert sorted(p.name for p in disk.path.iterdir()) in (["run.ckpt"],
                                                           ["filler", "run.ckpt"])
    disk.heal()
    monkeypatch.undo()  # (the counting save too)
    assert main(resume[1:]) == 0
    assert json.loads(metrics.read_text())["resumed_from_epoch"] == 1
    same_result(metrics, ck, ref_dir)


@pytest.mark.parametrize("fault", ["fill", "read_only"])
def test_metrics_and_plot_that_cannot_be_written_go_to_the_temp_folder(
        reference, disk, fault, tmp_path, spare_dir, monkeypatch, capsys):
    """The disk fills (or turns read-only) after training: the accuracies are printed,
    exit 2, and one line names each file, the cause, and the file in the temp folder
    that holds it instead; those files hold the run's metrics and its plot; the
    checkpoint (elsewhere) is whole. Mutant: no fallback (the StorageError of the
    metrics ends the command: no plot line, nothing in the temp folder)."""
    pytest.importorskip("matplotlib")
    npz, ref_dir = reference
    metrics, plot, ck = disk.path / "m.json", disk.path / "p.png", tmp_path / "run.ckpt"
    after_training(monkeypatch, getattr(disk, fault))
    code = main(["train", "--data", npz, *ARGS, "--checkpoint", str(ck), "--metrics",
                 str(metrics), "--plot", str(plot)])
    out, err = capsys.readouterr()
    assert code == 2
    spare_metrics, = spare_dir.glob("fcgpu-m-*.json")
    spare_plot, = spare_dir.glob("fcgpu-p-*.png")
    assert error_line(err) == (
        "fcgpu train: error: cannot write %s: %s; the metrics went to %s instead; cannot "
        "write %s: %s; the plot went to %s instead"
        % (metrics, CAUSES[fault], spare_metrics, plot, CAUSES[fault], spare_plot))
    saved = json.loads(spare_metrics.read_text())
    assert out.strip() == "val_acc %.4f test_acc %.4f" % (saved["val_acc"], saved["test_acc"])
    assert spare_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not metrics.exists() and not plot.exists()
    shutil.copy(spare_metrics, tmp_path / "m.json")
    same_result(tmp_path / "m.json", ck, ref_dir)


def test_when_the_temp_folder_refuses_too_the_metrics_are_printed(
        reference, disk, tmp_path, monkeypatch, capsys):
    """The metrics' folder and the temp folder on one full disk: the line says so and
    the metrics are on stdout, whole. Mutant: the last resort left out (the metrics
    nowhere)."""
    npz, ref_dir = reference
    spare = disk.path / "spare"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    metrics, ck = disk.path / "m.json", tmp_path / "run.ckpt"
    after_training(monkeypatch, disk.fill)
    code = main(["train", "--data", npz, *ARGS, "--checkpoint", str(ck), "--metrics",
                 str(metrics)])
    out, err = capsys.readouterr()
    assert code == 2
    line = error_line(err)
    assert line.startswith("fcgpu train: error: cannot write %s: %s; the temp folder refused "
                           "them too (cannot write %s" % (metrics, CAUSES["fill"], spare))
    assert line.endswith("): the metrics are printed on stdout")
    quiet, printed = out.strip().splitlines()
    (tmp_path / "m.json").write_text(printed)
    same_result(tmp_path / "m.json", ck, ref_dir)
    assert list(spare.iterdir()) == []


def test_a_folder_that_refuses_from_the_start_stops_before_training(
        reference, disk, tmp_path, capsys):
    """--metrics in a read-only folder: one line and exit 2 before anything is trained
    or written (no checkpoint). Mutant: no check before training (the run trains, then
    the metrics go to the temp folder)."""
    npz, _ = reference
    disk.read_only()
    metrics, ck = disk.path / "m.json", tmp_path / "run.ckpt"
    code = main(["train", "--data", npz, *ARGS, "--checkpoint", str(ck), "--metrics",
                 str(metrics)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert error_line(err) == "fcgpu train: error: cannot write %s: %s" % (
        metrics, CAUSES["read_only"])
    assert not ck.exists()


def test_folders_that_vanish_during_the_run_are_made_again(reference, tmp_path,
                                                           monkeypatch, capsys):
    """The checkpoint's folder deleted after epoch 1's checkpoint, the metrics' folder
    after training: both are made again, the run ends normally (exit 0, nothing on
    stderr) with the uninterrupted run's result. Mutant: atomic writes that do not make
    the folder (a one-line error for the checkpoint, exit 2)."""
    npz, ref_dir = reference
    ck, metrics = tmp_path / "ck" / "run.ckpt", tmp_path / "out" / "m.json"
    after_checkpoint(monkeypatch, 1, lambda: shutil.rmtree(ck.parent))
    after_training(monkeypatch, lambda: shutil.rmtree(metrics.parent))
    code = main(["train", "--data", npz, *ARGS, "--checkpoint", str(ck), "--metrics",
                 str(metrics)])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    same_result(metrics, ck, ref_dir)
