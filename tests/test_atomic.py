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
