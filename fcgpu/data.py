"""CIFAR-10 for fcgpu: find it, check it, decode it once, split it.

``get_CIFAR10_data`` mirrors the course framework's helper (a dict of
``X_train, y_train, X_val, y_val, X_test, y_test`` with images as
``(N, 3, 32, 32)`` float32 and the training mean image subtracted);
``load_CIFAR10`` returns the raw uint8 images and int64 labels.

Where the data comes from (``resolve_cifar10``), first match wins:

1. the ``path`` argument (the CLI's ``--data``);
2. the ``FCGPU_DATA`` environment variable;
3. the cache folder ``$XDG_CACHE_HOME/fcgpu`` (default ``~/.cache/fcgpu``);
4. a download of the official archive into that cache folder (MD5-checked).

A path may be a ``.tar.gz`` archive, an extracted ``cifar-10-batches-py``
folder, or a folder holding either. Archives other than the official one are
accepted when their structure is right (``data_batch_1..5`` and ``test_batch``,
each a pickled dict with ``b'data'`` uint8 (10000, 3072) and ``b'labels'``,
10000 ints in 0..9). Pickles are read straight from the tar stream with a
restricted unpickler that only rebuilds NumPy arrays.

After the first decode the arrays are saved as ``.npy`` files under
``<cache folder>/cifar10-<key>/`` (key: the source's absolute path, size and
mtime) and later loads memory-map them. If the cache folder cannot be
written, caching is skipped silently.

Every problem with the data raises :class:`DataError` (a ``ValueError``) whose
message names the path, the problem and what to do; split sizes out of range raise
:class:`~fcgpu.errors.ConfigError` (a ``ValueError`` too), a download that cannot be
saved :class:`~fcgpu.errors.StorageError` (an ``OSError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import lzma
import operator
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import ConfigError, DataError, StorageError
from .safepickle import load_numpy_pickle

__all__ = [
    "DataError",
    "cache_dir",
    "get_CIFAR10_data",
    "load_CIFAR10", "cifar10_arrays",
    "resolve_cifar10",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
ROWS_PER_BATCH = 10000  # images per batch file (tests shrink it)
NUM_CLASSES = 10
_CACHE_FORMAT = 1  # bump to invalidate old array caches
_ARRAY_NAMES = ("X_train", "y_train", "X_test", "y_test")

_HINT = (
    f"Pass --data PATH (path=...) or set FCGPU_DATA to the CIFAR-10 python "
    f"archive {ARCHIVE_NAME} or its extracted {FOLDER_NAME}/ folder."
)


def cache_dir() -> Path:
    """The fcgpu cache folder: ``$XDG_CACHE_HOME/fcgpu`` or ``~/.cache/fcgpu``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "fcgpu"


# --------------------------------------------------------------------------
# Finding the data
# --------------------------------------------------------------------------

def _find_in(p: Path) -> Path | None:
    """The archive or batch folder that ``p`` is or directly holds, else None."""
    if p.is_file():
        return p
    if p.is_dir():
        if any((p / n).exists() for n in (*TRAIN_BATCHES, TEST_BATCH)):
            return p
        if (p / FOLDER_NAME).is_dir():
            return p / FOLDER_NAME
        if (p / ARCHIVE_NAME).is_file():
            return p / ARCHIVE_NAME
    return None


def _locate(p: os.PathLike | str, origin: str) -> Path:
    p = Path(p).expanduser()
    if not p.exists():
        raise DataError(f"{p} (from {origin}) does not exist. {_HINT}")
    found = _find_in(p)
    if found is None:
        raise DataError(
            f"{p} (from {origin}) holds neither {ARCHIVE_NAME}, a {FOLDER_NAME}/ "
            f"folder nor the batch files data_batch_1..5 and test_batch. {_HINT}"
        )
    return found.resolve()


def resolve_cifar10(path=None, download=True, progress=True) -> Path:
    """Return the CIFAR-10 source to read: an archive file or a batch folder.

    Looks at ``path``, then ``$FCGPU_DATA``, then the cache folder; when none
    of them has the data and ``download`` is true, downloads the official
    archive into the cache folder (with a progress bar if ``progress``).
    """
    if path is not None:
        return _locate(path, "the path argument")
    env = os.environ.get("FCGPU_DATA")
    if env:
        return _locate(env, "FCGPU_DATA")
    cache = cache_dir()
    found = _find_in(cache)
    if found is not None:
        return found.resolve()
    if not download:
        raise DataError(
            f"CIFAR-10 not found: no path given, FCGPU_DATA is not set and the "
            f"cache folder {cache} has no {ARCHIVE_NAME}. {_HINT}"
        )
    return _download(cache, progress)


def _download(cache: Path, progress: bool) -> Path:
    """Download the official archive into ``cache`` atomically, MD5-checked."""
    final = cache / ARCHIVE_NAME
    nothing_here = (
        f"CIFAR-10 not found locally (no path given, FCGPU_DATA not set, no "
        f"{ARCHIVE_NAME} in {cache})"
    )
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(
            dir=cache, prefix=f".{ARCHIVE_NAME}.", suffix=".part", delete=False
        )
    except OSError as e:
        raise DataError(
            f"{nothing_here} and it cannot be downloaded there: the cache folder "
            f"is not writable ({e}). {_HINT}"
        ) from e
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with tmp:
            try:
                with urllib.request.urlopen(CIFAR10_URL, timeout=60) as r:
                    total = int(r.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True,
                              unit_divisor=1024, desc=f"Downloading {ARCHIVE_NAME}",
                              disable=not progress) as bar:
                        got = 0
                        while chunk := r.read(1 << 20):
                            tmp.write(chunk)
                            md5.update(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
                    if total is not None and got != total:
                        # http.client returns b"" on an early close: check here.
                        raise http.client.IncompleteRead(b"", total - got)
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise DataError(
                    f"{nothing_here}, and downloading {CIFAR10_URL} failed "
                    f"({type(e).__name__}: {e}). {_HINT}"
                ) from e
            try:
                tmp.flush()
                os.fsync(tmp.fileno())
            except OSError as e:   # a full disk, say
                raise StorageError(f"cannot write the download to {cache}: {e}") from e
        digest = md5.hexdigest()
        if digest != CIFAR10_MD5:
            raise DataError(
                f"The download of {CIFAR10_URL} has MD5 {digest}, expected "
                f"{CIFAR10_MD5} (corrupt or incomplete transfer); nothing was "
                f"saved as {final}. Try again, or fetch the archive yourself. {_HINT}"
            )
        try:
            os.replace(tmp.name, final)
        except OSError as e:
            raise StorageError(f"cannot save the download as {final}: {e}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise
    return final.resolve()


# --------------------------------------------------------------------------
# Decoding and checking the batches
# --------------------------------------------------------------------------

def _corrupt(where: str, what: str, e: BaseException) -> DataError:
    detail = " ".join(str(e).split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return DataError(
        f"{where}: {what} ({type(e).__name__}: {detail}). The file is truncated or "
        f"corrupt: delete it and download it again, or point --data / FCGPU_DATA "
        f"at a good copy of {ARCHIVE_NAME}."
    )


def _bad(where: str, problem: str) -> DataError:
    return DataError(
        f"{where}: {problem}. This is not a CIFAR-10 python batch; use the "
        f"official {ARCHIVE_NAME} (or a copy with its layout). {_HINT}"
    )


def _unpickle(f, where: str):
    blob = f.read()  # (a damaged stream raises here, for the caller to report)
    try:
        return load_numpy_pickle(blob, encoding="bytes")
    except Exception as e:  # pickle can raise nearly anything on bad input
        raise _corrupt(where, "cannot unpickle the batch", e) from e


def _check_batch(d, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch; return (data uint8 (R, 3072), labels int64)."""
    rows = ROWS_PER_BATCH
    if not isinstance(d, dict):
        raise _bad(where, f"holds a {type(d).__name__}, expected a dict with "
                          "b'data' and b'labels'")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if not isinstance(data, np.ndarray):
        raise _bad(where, f"b'data' is {type(data).__name__}, expected a uint8 "
                          f"array of shape ({rows}, 3072)")
    if data.dtype != np.uint8 or data.shape != (rows, 3072):
        raise _bad(where, f"b'data' has dtype {data.dtype} and shape {data.shape}, "
                          f"expected uint8 and ({rows}, 3072)")
    if labels is None:
        raise _bad(where, "no b'labels' entry")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError, OverflowError) as e:  # e.g. ragged nested lists
        raise _bad(where, f"b'labels' is not a list of {rows} integers "
                          f"({type(e).__name__})") from e
    if y.shape != (rows,) or y.dtype.kind not in "iu":
        raise _bad(where, f"b'labels' has shape {y.shape} and dtype {y.dtype}, "
                          f"expected {rows} integers")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= NUM_CLASSES:
        raise _bad(where, f"labels out of range: found {lo}..{hi}, expected "
                          f"0..{NUM_CLASSES - 1}")
    return data, y.astype(np.int64)


def _read_archive(src: Path) -> dict:
    wanted = {*TRAIN_BATCHES, TEST_BATCH}
    found = {}
    try:
        with tarfile.open(src, "r:*") as tf:
            for m in tf:
                name = posixpath.basename(m.name)
                if m.isfile() and name in wanted and name not in found:
                    where = f"{src}: member {m.name}"
                    found[name] = _check_batch(_unpickle(tf.extractfile(m), where), where)
            # Read to the end so that gzip checks its CRC and length trailer.
            while tf.fileobj.read(1 << 20):
                pass
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        # (tarfile's "r:*" also opens .tar.xz, whose errors are not OSErrors)
        raise _corrupt(str(src), "cannot read the archive", e) from e
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in found]
    if missing:
        raise _bad(str(src), f"archive lacks {', '.join(missing)} (expected "
                             f"{FOLDER_NAME}/data_batch_1..5 and test_batch)")
    return found


def _read_folder(src: Path) -> dict:
    names = (*TRAIN_BATCHES, TEST_BATCH)
    missing = [n for n in names if not (src / n).is_file()]
    if missing:
        raise _bad(str(src), f"folder lacks {', '.join(missing)} (expected "
                             "data_batch_1..5 and test_batch)")
    found = {}
    for n in names:
        where = str(src / n)
        try:
            with open(src / n, "rb") as f:
                found[n] = _check_batch(_unpickle(f, where), where)
        except OSError as e:
            raise _corrupt(where, "cannot read the batch file", e) from e
    return found


def _decode(src: Path) -> tuple[np.ndarray, ...]:
    """Decode a source into (X_train, y_train, X_test, y_test), images (N,3,32,32)."""
    found = _read_archive(src) if src.is_file() else _read_folder(src)
    X_train = np.concatenate([found[n][0] for n in TRAIN_BATCHES]).reshape(-1, 3, 32, 32)
    y_train = np.concatenate([found[n][1] for n in TRAIN_BATCHES])
    X_test = found[TEST_BATCH][0].reshape(-1, 3, 32, 32)
    return X_train, y_train, X_test, found[TEST_BATCH][1]


# --------------------------------------------------------------------------
# The decoded-array cache
# --------------------------------------------------------------------------

def _cache_entry(src: Path) -> Path:
    """``cifar10-<hash of path>-<hash of sizes and mtimes>`` in the cache folder."""
    src = src.resolve()
    files = [src] if src.is_file() else [src / n for n in (*TRAIN_BATCHES, TEST_BATCH)]
    stamp = [str(_CACHE_FORMAT), str(ROWS_PER_BATCH)]
    for f in files:
        st = f.stat()
        stamp.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return cache_dir() / f"cifar10-{_short_hash(str(src))}-{_short_hash('|'.join(stamp))}"


def _short_hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:12]


def _read_cache(entry: Path):
    """The cached arrays (memory-mapped), or None if absent or not right."""
    n_train, n_test = len(TRAIN_BATCHES) * ROWS_PER_BATCH, ROWS_PER_BATCH
    expect = {"X_train": ((n_train, 3, 32, 32), np.uint8),
              "y_train": ((n_train,), np.int64),
              "X_test": ((n_test, 3, 32, 32), np.uint8),
              "y_test": ((n_test,), np.int64)}
    if not entry.is_dir():
        return None
    try:
        arrays = tuple(np.load(entry / f"{k}.npy", mmap_mode="r", allow_pickle=False)
                       for k in _ARRAY_NAMES)
    except (OSError, ValueError, EOFError):
        return None
    for a, k in zip(arrays, _ARRAY_NAMES):
        if (a.shape, a.dtype) != expect[k]:
            return None
    return arrays


def _write_cache(entry: Path, arrays) -> None:
    """Save arrays under ``entry`` atomically; drop stale entries of the same
    source. Any OSError (read-only or full disk) just skips caching."""
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.",
                                    suffix=".part"))
        for k, a in zip(_ARRAY_NAMES, arrays):
            np.save(tmp / f"{k}.npy", a, allow_pickle=False)
        os.rename(tmp, entry)  # atomic; fails if another process won the race
        tmp = None
        prefix = entry.name.rsplit("-", 1)[0] + "-"
        for old in entry.parent.glob(prefix + "*"):
            if old != entry and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_arrays(src: Path):
    """(X_train, y_train, X_test, y_test) for a resolved source, via the cache."""
    try:
        entry = _cache_entry(src)
    except OSError as e:
        raise _corrupt(str(src), "cannot stat the data", e) from e
    arrays = _read_cache(entry)
    if arrays is None:
        arrays = _decode(src)
        _write_cache(entry, arrays)
    return arrays


# --------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------

def cifar10_arrays(path=None, download=True):
    """``(X_train, y_train, X_test, y_test)`` of the CIFAR-10 found as
    :func:`resolve_cifar10` finds it: uint8 images ``(50000, 3, 32, 32)`` and
    ``(10000, 3, 32, 32)``, int64 labels, straight from the decoded cache (read-only
    arrays; :func:`load_CIFAR10` gives writable copies)."""
    return _load_arrays(resolve_cifar10(path, download=download))


def load_CIFAR10(root):
    """Load all of CIFAR-10 from ``root`` (archive, batch folder, or a folder
    holding either), as in the course helper.

    Returns ``(Xtr, Ytr, Xte, Yte)``: uint8 images ``(50000, 3, 32, 32)`` and
    ``(10000, 3, 32, 32)`` (R, G, B planes), int64 labels; training batches
    in the order data_batch_1..5. The arrays are ordinary writable copies.
    """
    arrays = _load_arrays(_locate(root, "the root argument"))
    return tuple(np.array(a) for a in arrays)


def _count(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if n < 0:
        raise ConfigError(f"{name} must be >= 0, got {n}")
    return n


def get_CIFAR10_data(num_training=49000, num_validation=1000, num_test=1000,
                     subtract_mean=True, path=None):
    """Load CIFAR-10 split and normalized as in the course framework.

    Returns a dict with ``X_train, X_val, X_test`` float32 ``(N, 3, 32, 32)``
    and ``y_train, y_val, y_test`` int64, where train is the first
    ``num_training`` training images, val the next ``num_validation`` (by
    default train[49000:50000]) and test the first ``num_test`` test images.
    With ``subtract_mean`` the mean image of the training split (computed in
    float64, cast to float32) is subtracted from all three splits. ``path``
    selects the data as described in :func:`resolve_cifar10`.
    """
    n_tr = _count("num_training", num_training)
    n_val = _count("num_validation", num_validation)
    n_te = _count("num_test", num_test)
    total = len(TRAIN_BATCHES) * ROWS_PER_BATCH
    if n_tr + n_val > total:
        raise ConfigError(f"num_training + num_validation = {n_tr} + {n_val} exceeds "
                         f"the {total} CIFAR-10 training images")
    if n_te > ROWS_PER_BATCH:
        raise ConfigError(f"num_test = {n_te} exceeds the {ROWS_PER_BATCH} CIFAR-10 "
                         "test images")
    if subtract_mean and n_tr == 0:
        raise ConfigError("num_training must be >= 1 when subtract_mean=True "
                         "(the mean image comes from the training split)")

    X_all, y_all, X_te, y_te = _load_arrays(resolve_cifar10(path))
    raw = {"X_train": X_all[:n_tr], "X_val": X_all[n_tr:n_tr + n_val],
           "X_test": X_te[:n_te]}
    mean = (raw["X_train"].mean(axis=0, dtype=np.float64).astype(np.float32)
            if subtract_mean else np.float32(0))
    data = {}
    for k, x in raw.items():
        out = np.empty(x.shape, np.float32)
        np.subtract(x, mean, out=out, dtype=np.float32)  # cast + subtract, one pass
        data[k] = out
    data["y_train"] = np.array(y_all[:n_tr], dtype=np.int64)
    data["y_val"] = np.array(y_all[n_tr:n_tr + n_val], dtype=np.int64)
    data["y_test"] = np.array(y_te[:n_te], dtype=np.int64)
    return {k: data[k] for k in ("X_train", "y_train", "X_val", "y_val",
                                 "X_test", "y_test")}
