"""GPUCollector on a real H200's NVML answers, checked against that machine's nvidia-smi.

``data/nvml_h200_driver580.json`` was recorded by ``bench/nvml_check.py --record`` on an NVIDIA
H200 (driver 580.159.04, nvidia-ml-py 13): every NVML call the collector made in one idle cycle
and five cycles under a bf16 matrix-product load, with nvidia-smi's readings taken right after
each cycle. Replaying it proves the collector reads the real driver's structs the way nvidia-smi
does (memory without the driver's reserved 615 MiB, the PCI address form, process objects),
with no GPU here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collect.nvml_replay import ReplayNVML
from fleetscope.collect import Sample
from fleetscope.collect.gpu import GPUCollector, normalize_pci_bus_id

RECORDING = Path(__file__).parent / "data" / "nvml_h200_driver580.json"
MIB = 2**20
# nvidia-smi field → (metric, its value in the metric's unit, tolerance). nvidia-smi rounds
# memory to MiB and reads the sensors a few ms after the collector did.
SMI: dict[str, tuple[str, float, float]] = {
    "memory.total": ("fleet_gpu_memory_total_bytes", MIB, MIB),
    "memory.used": ("fleet_gpu_memory_used_bytes", MIB, MIB),
    "temperature.gpu": ("fleet_gpu_temperature_celsius", 1.0, 2.0),
    "power.draw": ("fleet_gpu_power_watts", 1.0, 0.01 * 700),
    "enforced.power.limit": ("fleet_gpu_power_limit_watts", 1.0, 0.01),
    "clocks.sm": ("fleet_gpu_sm_clock_hertz", 1e6, 15e6),
    "utilization.gpu": ("fleet_gpu_utilization_ratio", 0.01, 0.011),
}


@pytest.fixture(scope="module")
def recording() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDING.read_text())
    return data


def by_name(samples: list[Sample]) -> dict[str, Sample]:
    return {s.name: s for s in samples if s.name != "fleet_gpu_process_memory_bytes"}


def test_every_cycle_agrees_with_nvidia_smi(recording: dict[str, Any]) -> None:
    nvml = ReplayNVML(recording)
    gpu = GPUCollector("devbox", nvml)
    checked = 0
    for cycle in recording["nvidia_smi"]:
        samples = gpu.collect()
        (smi,) = cycle["gpus"]
        got = by_name(samples)
        assert got["fleet_gpu_up"].value == 1.0
        labels = got["fleet_gpu_up"].labels
        assert (labels["gpu"], labels["gpu_uuid"], labels["gpu_model"]) == (
            smi["index"],
            smi["uuid"],
            smi["name"],
        )
        for field, (metric, unit, tolerance) in SMI.items():
            want = float(smi[field]) * unit
            assert got[metric].value == pytest.approx(want, abs=tolerance), (cycle["cycle"], field)
            checked += 1
        procs = {p.pid: p.used_memory_bytes for p in gpu.processes()[0]}
        assert procs.keys() == {int(a["pid"]) for a in cycle["apps"]}
        for app in cycle["apps"]:
            assert procs[int(app["pid"])] == pytest.approx(int(app["used_memory"]) * MIB, abs=MIB)
    assert checked == len(SMI) * 6
    assert gpu.identities()[0].pci_bus_id == normalize_pci_bus_id(smi["pci.bus_id"])
    assert nvml.unrecorded == []  # the collector asked nothing the real driver was not asked


def test_memory_used_excludes_the_reserved_memory_that_v1_would_count(
    recording: dict[str, Any],
) -> None:
    idle = by_name(GPUCollector("devbox", ReplayNVML(recording)).collect())
    (smi,) = recording["nvidia_smi"][0]["gpus"]
    assert idle["fleet_gpu_memory_used_bytes"].value == float(smi["memory.used"]) * MIB == 0.0
    v2 = next(c["result"] for c in recording["calls"] if c["fn"] == "nvmlDeviceGetMemoryInfo")
    assert v2["struct"] == "c_nvmlMemory_v2_t" and v2["fields"]["reserved"] > 600 * MIB


def test_the_collector_works_unchanged_when_a_recorded_call_fails(
    recording: dict[str, Any],
) -> None:
    """A call the recording lacks fails like a driver error: costs that reading, not the GPU."""
    trimmed = {
        **recording,
        "calls": [c for c in recording["calls"] if c["fn"] != "nvmlDeviceGetPowerUsage"],
    }
    nvml = ReplayNVML(trimmed)
    got = by_name(GPUCollector("devbox", nvml).collect())
    assert "fleet_gpu_power_watts" not in got
    assert got["fleet_gpu_up"].value == 1.0 and "fleet_gpu_temperature_celsius" in got
    assert nvml.unrecorded == ["nvmlDeviceGetPowerUsage device=0 args=[]"]
