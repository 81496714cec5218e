"""fcgpu.bench.machine on a CPU: the GPU's nvidia-smi line is found by PCI bus id."""
from __future__ import annotations

import subprocess
import types

import pytest

from fcgpu.bench import machine

# two GPUs in nvidia-smi's (PCI) order, with different drivers so a wrong match shows
SMI = ("00000000:17:00.0, 550.54.15\n"
       "00000000:CA:00.0, 570.86.10\n")


@pytest.mark.parametrize("bus_id,driver", [
    ("0000:17:00.0", "550.54.15"),      # CUDA's 4-digit domain
    ("0000:ca:00.0", "570.86.10"),      # lower-case hex
    ("00000000:CA:00.0", "570.86.10"),  # nvidia-smi's own spelling
    ("CA:00.0", "570.86.10"),           # no domain: 0
    ("0000:ca:00.1", None),             # another function
    ("0001:ca:00.0", None),             # another domain
    ("garbage", None),
    (None, None),
])
def test_smi_driver_for_matches_the_bus_id(bus_id, driver):
    assert machine.smi_driver_for(bus_id, SMI) == driver


def test_smi_driver_for_skips_odd_lines():
    text = "No devices were found\n\n00000000:17:00.0, \n00000000:17:00.0, 535.1\n"
    assert machine.smi_driver_for("0000:17:00.0", text) == "535.1"


def _fake_cupy(dev_id, bus_id):
    props = {"name": b"Fake GPU", "major": 9, "minor": 0, "totalGlobalMem": 1 << 30,
             "multiProcessorCount": 4, "l2CacheSize": 1 << 20}
    runtime = types.SimpleNamespace(getDeviceProperties=lambda i: props,
                                    driverGetVersion=lambda: 13000,
                                    runtimeGetVersion=lambda: 13000,
                                    getDeviceCount=lambda: 1)
    dev = types.SimpleNamespace(id=dev_id, pci_bus_id=bus_id)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda *a: dev,
                                                            runtime=runtime))


def test_gpu_info_reports_the_driver_of_the_device_in_use(monkeypatch):
    """CUDA_VISIBLE_DEVICES=1: CUDA's device 0 is nvidia-smi's second GPU."""
    from fcgpu import backend
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=SMI, stderr="")

    monkeypatch.setattr(backend, "cupy_status", lambda: (True, ""))
    monkeypatch.setattr(backend, "require_cupy", lambda: _fake_cupy(0, "0000:CA:00.0"))
    monkeypatch.setattr(machine.subprocess, "run", run)
    info = machine.gpu_info()
    assert info["driver"] == "570.86.10" and info["pci_bus_id"] == "0000:CA:00.0"
    assert calls and "-i" not in calls[0]  # no nvidia-smi index: it is not CUDA's
    assert any(c.startswith("--query-gpu=pci.bus_id") for c in calls[0])


def test_gpu_info_without_nvidia_smi(monkeypatch):
    from fcgpu import backend

    def run(cmd, **kw):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(backend, "cupy_status", lambda: (True, ""))
    monkeypatch.setattr(backend, "require_cupy", lambda: _fake_cupy(0, "0000:17:00.0"))
    monkeypatch.setattr(machine.subprocess, "run", run)
    info = machine.gpu_info()
    assert info["available"] and info["driver"] is None
