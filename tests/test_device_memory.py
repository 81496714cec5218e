"""The GPU's memory running out (issue 25, "The GPU's memory"): CuPy's out-of-memory
error, raised during `fcgpu train` and `fcgpu evaluate`, ends in one line with the size
asked for, the device's free and total memory and what to make smaller; exit 2, no
traceback (fcgpu.errors.DeviceOutOfMemory, made by backend.device_out_of_memory).

No GPU is needed: a stand-in ``cupy`` module (below) carries CuPy's two error types as
CuPy v14.2.0 defines them, and its pools and ``memGetInfo`` keep the books of a device
whose cached blocks are freed on request. The runs themselves are on the NumPy backend;
the error is raised inside a training step (the net's loss) or inside the evaluation's
forward pass, where CuPy would raise it while allocating. One test also takes the
installed CuPy's own class, where CuPy is installed.
"""
import sys
import types

import pytest

from fcgpu import backend
from fcgpu.cli import main
from fcgpu.errors import DeviceOutOfMemory
from fcgpu.fc_net import FullyConnectedNet
from test_train_signals import synthetic_npz

GiB = 1 << 30
ARGS = ["--hidden", "24", "--epochs", "2", "--batch-size", "50", "--seed", "3",
        "--backend", "numpy", "--quiet"]


class OutOfMemoryError(MemoryError):
    """cupy/cuda/memory.pyx:55-78 (v14.2.0), the constructor and message as there."""

    def __init__(self, size, total, limit=0):
        self._size, self._total, self._limit = size, total, limit
        if limit == 0:
            msg = 'Out of memory allocating {:,} bytes'.format(size)
            if total != -1:
                msg += ' (allocated so far: {:,} bytes).'.format(total)
        else:
            msg = ('Out of memory allocating {:,} bytes (allocated so far: {:,} bytes, '
                   'limit set to: {:,} bytes).'.format(size, total, limit))
        super().__init__(msg)


OutOfMemoryError.__module__ = "cupy.cuda.memory"


class CUDARuntimeError(RuntimeError):
    """cupy_backends/cuda/api/runtime.pyx:128-135 (v14.2.0): ``'%s: %s' % (name, msg)``
    of the status, from cudaGetErrorName and cudaGetErrorString."""

    NAMES = {2: ("cudaErrorMemoryAllocation", "out of memory"),
             700: ("cudaErrorIllegalAddress", "an illegal memory access was encountered")}

    def __init__(self, status):
        self.status = status
        super().__init__("%s: %s" % self.NAMES[status])


CUDARuntimeError.__module__ = "cupy_backends.cuda.api.runtime"


class Device:
    """A device of ``total`` bytes with ``free`` free, of which the pool caches
    ``cached`` more; ``events`` records the calls, in order."""

    def __init__(self, total=80 * GiB, free=GiB // 2, cached=2 * GiB):
        self.total, self.free, self.cached, self.events = total, free, cached, []

    def free_all_blocks(self):
        self.events.append("free_all_blocks")
        self.free, self.cached = self.free + self.cached, 0

    def mem_get_info(self):
        self.events.append("memGetInfo")
        return self.free, self.total


def standin_cupy(device):
    cupy = types.ModuleType("cupy")
    cupy.ndarray = type("ndarray", (), {})
    pool = types.SimpleNamespace(free_all_blocks=device.free_all_blocks)
    pinned = types.SimpleNamespace(free_all_blocks=lambda: None)
    cupy.get_default_memory_pool = lambda: pool
    cupy.get_default_pinned_memory_pool = lambda: pinned
    cupy.cuda = types.SimpleNamespace(
        memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
        runtime=types.SimpleNamespace(CUDARuntimeError=CUDARuntimeError,
                                      memGetInfo=device.mem_get_info))
    return cupy


@pytest.fixture
def device(monkeypatch):
    d = Device()
    monkeypatch.setitem(sys.modules, "cupy", standin_cupy(d))
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("oom")
    npz = str(synthetic_npz(d / "data.npz"))
    assert main(["train", "--data", npz, *ARGS, "--checkpoint", str(d / "run.ckpt")]) == 0
    return npz, str(d / "run.ckpt")


def raise_in_loss(monkeypatch, error, at_step=None):
    """The net's loss raises ``error``: at training step ``at_step``, or on every
    scoring call (no labels) when ``at_step`` is None."""
    loss, steps = FullyConnectedNet.loss, [0]

    def failing_loss(self, X, y=None):
        if at_step is None and y is None:
            raise error
        if at_step is not None and y is not None:
            steps[0] += 1
            if steps[0] == at_step:
                raise error
        return loss(self, X, y)
    monkeypatch.setattr(FullyConnectedNet, "loss", failing_loss)


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_out_of_memory_in_a_training_step_is_one_line_with_sizes_and_a_hint(
        trained, device, monkeypatch, capsys):
    """CuPy's pool error in step 4 of `fcgpu train`: exit 2 and one line with the size
    asked for (from CuPy's message), the free memory after the cached blocks were
    freed (2.5 GiB, not the 0.5 GiB before), the total, and the flags to make smaller
    with their values. Mutants: no conversion in run_training (a bug's traceback, exit
    1), memGetInfo read before the cached blocks are freed (0.5 GiB), the size taken
    from 'allocated so far'."""
    npz, _ = trained
    raise_in_loss(monkeypatch, OutOfMemoryError(512 * (1 << 20), 3 * GiB), at_step=4)
    code = main(["train", "--data", npz, *ARGS])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert one_line(err) == (
        "fcgpu train: error: out of GPU memory: asked for 512.0 MiB (536,870,912 bytes); the "
        "device has 2.5 GiB free of 80.0 GiB (after freeing CuPy's cached blocks); try a "
        "smaller --batch-size (now 50) or --num-train (now all), or narrower --hidden "
        "layers (now 24)")
    assert device.events == ["free_all_blocks", "memGetInfo"]


def test_out_of_memory_in_fcgpu_evaluate_is_one_line(trained, device, monkeypatch, capsys):
    """The same error in `fcgpu evaluate`'s forward pass: one line naming its
    --batch-size. Mutant: no conversion in the evaluate command (exit 1, traceback)."""
    _, ck = trained
    raise_in_loss(monkeypatch, OutOfMemoryError(3 * GiB, 70 * GiB, 75 * GiB))
    code = main(["evaluate", ck, "--backend", "numpy", "--batch-size", "64"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert one_line(err) == (
        "fcgpu evaluate: error: out of GPU memory: asked for 3.0 GiB (3,221,225,472 bytes); "
        "the device has 2.5 GiB free of 80.0 GiB (after freeing CuPy's cached blocks); try "
        "a smaller --batch-size (now 64)")


def test_an_allocation_outside_the_pool_and_a_device_that_cannot_answer(device):
    """cudaMalloc outside CuPy's pool fails as CUDARuntimeError (status 2): the size is
    not known, and the line says so; when memGetInfo itself fails, the line says that
    instead of numbers. Mutants: only the pool's error converted (None here), the
    memGetInfo failure let through (the OOM would become a bug's traceback)."""
    oom = backend.device_out_of_memory(CUDARuntimeError(2), "hint")
    assert str(oom) == ("out of GPU memory: asked for an allocation outside CuPy's pool (size "
                        "not reported); the device has 2.5 GiB free of 80.0 GiB (after "
                        "freeing CuPy's cached blocks); hint")

    def refuse():
        raise CUDARuntimeError(700)
    sys.modules["cupy"].cuda.runtime.memGetInfo = refuse
    oom = backend.device_out_of_memory(OutOfMemoryError(1000, 0), "hint")
    assert str(oom) == ("out of GPU memory: asked for 1000 bytes; the device's free and "
                        "total memory could not be read (cudaErrorIllegalAddress: an illegal "
                        "memory access was encountered); hint")


@pytest.mark.parametrize("exc", [MemoryError("host memory"), CUDARuntimeError(700),
                                 RuntimeError("Out of memory allocating 1,000 bytes"),
                                 DeviceOutOfMemory("already one line")])
def test_other_errors_are_not_taken_for_the_gpus(device, exc):
    """The host's MemoryError, another CUDA error, a look-alike message and our own
    error pass through unchanged, and nothing is freed. Mutants: any MemoryError
    taken for CuPy's (the host's would read as the GPU's), any CUDARuntimeError."""
    assert backend.device_out_of_memory(exc, "hint") is None
    assert device.events == []


def test_the_installed_cupys_own_error_is_recognised():
    """CuPy's real class (installed without a GPU: the `contract` extra) and message;
    memGetInfo then fails for want of a device, or answers on a GPU machine. Mutant:
    the class looked up where CuPy does not export it (cupy.cuda.OutOfMemoryError)."""
    cupy = pytest.importorskip("cupy")
    error = cupy.cuda.memory.OutOfMemoryError(1 << 30, 5 << 30)
    assert str(error) == ("Out of memory allocating 1,073,741,824 bytes (allocated so far: "
                          "5,368,709,120 bytes).")
    oom = backend.device_out_of_memory(error, "hint")
    assert isinstance(oom, DeviceOutOfMemory)
    assert str(oom).startswith("out of GPU memory: asked for 1.0 GiB (1,073,741,824 bytes); "
                               "the device")
    assert str(oom).endswith("; hint") and "\n" not in str(oom)


def test_bench_workers_name_the_memory_that_ran_out(device):
    """A benchmark case that runs out of memory is skipped with what ran out: CuPy's
    error in fcgpu's one line (its size, free and total memory), not as "out of host
    memory" (CuPy's error is a MemoryError too: the worker's old order called it the
    host's), PyTorch's by its name, the host's as such, and anything else re-raised.
    Mutants caught: the host check first; CuPy's error passed through unworded."""
    from fcgpu.bench.worker import _out_of_memory
    why = _out_of_memory(OutOfMemoryError(3 * GiB, 70 * GiB))
    assert why.startswith("out of device memory: ") and "3.0 GiB" in why and "80.0 GiB" in why
    torch_oom = type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried ...")
    assert _out_of_memory(torch_oom) == "out of device memory: CUDA out of memory. Tried ..."
    assert _out_of_memory(MemoryError("no host")) == "out of host memory (no host)"
    assert _out_of_memory(ValueError("a bug")) is None
