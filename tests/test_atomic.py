"""fcgpu.atomic: a write the system refuses is one line naming the file and why
(:class:`fcgpu.errors.StorageError`, an OSError too), and leaves no temporary file."""
import errno

import pytest

from fcgpu.atomic import atomic_write_bytes
from fcgpu.errors import FcgpuError, StorageError


def test_a_write_that_works_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "m.json"
    atomic_write_bytes(b"one", target)
    atomic_write_bytes(b"two", target)
    assert target.read_bytes() == b"two" and [p.name for p in target.parent.iterdir()] == [
        "m.json"]


def test_a_refused_write_is_a_storage_error(tmp_path):
    """A folder in the way of the file, a file in the way of its folder: StorageError
    naming the path (and the part in the way), chained to the OSError, no temporary
    file left. Mutants: the OSError let through (the CLI would report a bug); the
    temporary file's name shown instead of its folder."""
    folder = tmp_path / "adir"
    (folder / "inside").mkdir(parents=True)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    cases = [(folder, "cannot write %s: Is a directory" % folder, errno.EISDIR),
             (blocker / "m.json", "cannot write %s: File exists (%s)"   # (os.makedirs)
              % (blocker / "m.json", blocker), errno.EEXIST)]
    for path, msg, code in cases:
        with pytest.raises(StorageError) as info:
            atomic_write_bytes(b"data", path)
        exc = info.value
        assert isinstance(exc, OSError) and isinstance(exc, FcgpuError)
        assert str(exc) == msg
        assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
    assert [p.name for p in folder.iterdir()] == ["inside"]


def test_a_write_cut_by_a_signal_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A second Ctrl-C lands mid-write (fcgpu train raises RunInterrupted, a
    KeyboardInterrupt, at once): the old file is whole, the temporary file is gone,
    and the interrupt goes on up. Mutant: the clean-up only for Exception (the
    temporary file stays)."""
    import os

    from fcgpu.errors import RunInterrupted
    target = tmp_path / "run.ckpt"
    atomic_write_bytes(b"epoch 1", target)

    def cut(fd):
        raise RunInterrupted(2)
    monkeypatch.setattr(os, "fsync", cut)
    with pytest.raises(RunInterrupted):
        atomic_write_bytes(b"epoch 2, half", target)
    assert target.read_bytes() == b"epoch 1"
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]


def test_check_writable_refuses_in_one_line_and_leaves_nothing(tmp_path):
    """check_writable (fcgpu train's check of its output paths before training): a
    folder in the file's place and a file in its folder's place are one line each; a
    writable path gets its folder made and nothing else. Mutants: the folder test left
    out (a folder passes), the probe's temporary file left behind."""
    from fcgpu.atomic import check_writable
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    with pytest.raises(StorageError) as info:
        check_writable(tmp_path / "adir")
    assert str(info.value) == "cannot write %s: Is a directory" % (tmp_path / "adir")
    with pytest.raises(StorageError) as info:
        check_writable(tmp_path / "afile" / "m.json")
    assert str(info.value) == "cannot write %s: File exists (%s)" % (
        tmp_path / "afile" / "m.json", tmp_path / "afile")
    check_writable(tmp_path / "new" / "m.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "new"]
    assert list((tmp_path / "new").iterdir()) == [] and list((tmp_path / "adir").iterdir()) == []
