"""GPUCollector against the fake NVML (and, once, the real pynvml of this machine)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pynvml
import pytest

from fleetscope import catalog
from fleetscope.collect import Sample
from fleetscope.collect.gpu import GPUCollector, GPUIdentity, GPUProcess, normalize_pci_bus_id
from fleetscope.simulate.nvml import FakeDevice, FakeNVML

UUID = "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
H100 = "NVIDIA H100 80GB HBM3"
LABELS = {"node": "n1", "gpu": "0", "gpu_uuid": UUID, "gpu_model": H100}


def h100(**kw: Any) -> FakeDevice:
    return FakeDevice(0, UUID, H100, **kw)


def values(samples: Iterable[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name + labels beyond the GPU labels → value."""
    out = {}
    for s in samples:
        extra = tuple(sorted((k, v) for k, v in s.labels.items() if k not in LABELS))
        out[(s.name, extra)] = s.value
    return out


def one(samples: Iterable[Sample], name: str, **extra: str) -> float | None:
    return values(samples).get((name, tuple(sorted(extra.items()))))


@pytest.mark.parametrize(
    ("fields", "name", "extra", "expected"),
    [
        pytest.param({"gpu_util_pct": 87}, "fleet_gpu_utilization_ratio", {}, 0.87, id="util-%"),
        pytest.param(
            {"memory_used_bytes": 3 * 2**30},
            "fleet_gpu_memory_used_bytes",
            {},
            3 * 2**30,
            id="mem-used",
        ),
        pytest.param(
            {"memory_total_bytes": 81_559_187_456},
            "fleet_gpu_memory_total_bytes",
            {},
            81_559_187_456,
            id="mem-total",
        ),
        pytest.param({"temperature_c": 71}, "fleet_gpu_temperature_celsius", {}, 71, id="temp"),
        pytest.param({"power_mw": 412_345}, "fleet_gpu_power_watts", {}, 412.345, id="power-mW"),
        pytest.param(
            {"power_limit_mw": 700_000}, "fleet_gpu_power_limit_watts", {}, 700.0, id="limit-mW"
        ),
        pytest.param(
            {"energy_mj": 123_456_789},
            "fleet_gpu_energy_joules_total",
            {},
            123_456.789,
            id="energy-mJ",
        ),
        pytest.param({"sm_clock_mhz": 1_755}, "fleet_gpu_sm_clock_hertz", {}, 1.755e9, id="MHz"),
        pytest.param(
            {"throttle_reasons": 0x4 | 0x20}, "fleet_gpu_throttle_reasons", {}, 0x24, id="mask"
        ),
        pytest.param(
            {"ecc_corrected": 17},
            "fleet_gpu_ecc_errors_total",
            {"type": "corrected"},
            17,
            id="ecc-corrected",
        ),
        pytest.param(
            {"ecc_uncorrected": 2},
            "fleet_gpu_ecc_errors_total",
            {"type": "uncorrected"},
            2,
            id="ecc-uncorrected",
        ),
        pytest.param({}, "fleet_gpu_up", {}, 1.0, id="up"),
        pytest.param({}, "fleet_gpu_pcie_receive_bytes_total", {}, 0.0, id="pcie-starts-at-0"),
    ],
)
def test_units(fields: dict[str, Any], name: str, extra: dict[str, str], expected: float) -> None:
    samples = GPUCollector("n1", FakeNVML([h100(**fields)])).collect()
    assert one(samples, name, **extra) == pytest.approx(expected)


def test_every_sample_is_a_catalog_metric_with_its_labels() -> None:
    nvml = FakeNVML([h100(processes=[(4242, 2**30)]), FakeDevice(1, "GPU-b", "NVIDIA L40S")])
    samples = GPUCollector("n1", nvml).collect()
    assert {s.labels["gpu"] for s in samples} == {"0", "1"}
    for s in samples:
        metric = catalog.get(s.name)
        assert metric is not None, s.name
        assert set(s.labels) == set(metric.labels), s


def test_processes_carry_pid_and_owner() -> None:
    nvml = FakeNVML([h100(processes=[(4242, 2**30), (5555, 512)])])
    owners = {4242: ("1234", "alice")}
    gpu = GPUCollector("n1", nvml, owner_of=lambda pid: owners.get(pid, ("unknown", "unknown")))
    samples = gpu.collect()
    name = "fleet_gpu_process_memory_bytes"
    assert one(samples, name, pid="4242", job="1234", user="alice") == 2**30
    assert one(samples, name, pid="5555", job="unknown", user="unknown") == 512


def test_a_failing_owner_lookup_costs_nothing() -> None:
    def broken(pid: int) -> tuple[str, str]:
        raise OSError("proc vanished")

    samples = GPUCollector("n1", FakeNVML([h100(processes=[(7, 9)])]), owner_of=broken).collect()
    assert one(samples, "fleet_gpu_process_memory_bytes", pid="7", job="unknown", user="unknown")


def test_not_supported_keeps_other_fields_and_is_not_asked_again() -> None:
    nvml = FakeNVML([h100(power_mw=300_000, unsupported={"nvmlDeviceGetTotalEccErrors"})])
    gpu = GPUCollector("n1", nvml)
    for _ in range(3):
        samples = gpu.collect()
        names = {s.name for s in samples}
        assert "fleet_gpu_ecc_errors_total" not in names
        assert one(samples, "fleet_gpu_power_watts") == 300.0
        assert one(samples, "fleet_gpu_up") == 1.0
    assert nvml.calls["nvmlDeviceGetTotalEccErrors"] == 1
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 3
    assert not gpu.failures  # a capability, not a failure


def test_throttle_reasons_fall_back_to_the_old_function() -> None:
    nvml = FakeNVML(
        [h100(throttle_reasons=0x8, unsupported={"nvmlDeviceGetCurrentClocksEventReasons"})]
    )
    gpu = GPUCollector("n1", nvml)
    gpu.collect()
    assert one(gpu.collect(), "fleet_gpu_throttle_reasons") == 0x8
    assert nvml.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 1
    assert nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 2


class FlakyNVML(FakeNVML):
    """A fake whose temperature read fails with NVML_ERROR_UNKNOWN while ``flaky`` is set."""

    flaky = True

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        if self.flaky:
            self.calls["nvmlDeviceGetTemperature"] += 1
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return super().nvmlDeviceGetTemperature(handle, sensor)


def test_a_transient_failure_is_counted_and_asked_again() -> None:
    nvml = FlakyNVML([h100(temperature_c=55)])
    gpu = GPUCollector("n1", nvml)
    first = gpu.collect()
    assert one(first, "fleet_gpu_temperature_celsius") is None
    assert one(first, "fleet_gpu_power_watts") is not None
    assert one(first, "fleet_gpu_up") == 1.0
    gpu.collect()
    assert gpu.failures["nvmlDeviceGetTemperature"] == 2
    nvml.flaky = False
    assert one(gpu.collect(), "fleet_gpu_temperature_celsius") == 55
    assert nvml.calls["nvmlDeviceGetTemperature"] == 3


def test_a_lost_gpu_yields_up_0_and_nothing_else() -> None:
    nvml = FakeNVML([h100(processes=[(1, 2)]), FakeDevice(1, "GPU-b", "NVIDIA L40S")])
    gpu = GPUCollector("n1", nvml)
    gpu.collect()
    nvml.devices[0].lost = True
    samples = gpu.collect()
    lost = [s for s in samples if s.labels["gpu"] == "0"]
    assert lost == [Sample("fleet_gpu_up", LABELS, 0.0)]  # the same series as before
    assert one([s for s in samples if s.labels["gpu"] == "1"], "fleet_gpu_power_watts") == 60.0
    nvml.devices[0].lost = False
    assert one(gpu.collect(), "fleet_gpu_up") == 1.0


def test_a_gpu_lost_before_it_was_ever_seen_has_only_node_and_gpu_labels() -> None:
    samples = GPUCollector("n1", FakeNVML([h100(lost=True)])).collect()
    assert samples == [Sample("fleet_gpu_up", {"node": "n1", "gpu": "0"}, 0.0)]


def test_failed_init_yields_nothing_records_why_and_retries() -> None:
    nvml = FakeNVML([h100()], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    gpu = GPUCollector("n1", nvml)
    assert gpu.collect() == []
    assert gpu.identities() == {}
    assert gpu.init_error is not None and "DriverNotLoaded" in gpu.init_error
    nvml.init_error = None
    assert one(gpu.collect(), "fleet_gpu_up") == 1.0
    assert gpu.init_error is None
    assert gpu.driver_version == "550.54.15"
    assert nvml.calls["nvmlInit"] == 3  # twice failed (collect, identities), once ok
    gpu.collect()
    assert nvml.calls["nvmlInit"] == 3


def test_close_shuts_nvml_down() -> None:
    nvml = FakeNVML([h100()])
    gpu = GPUCollector("n1", nvml)
    gpu.collect()
    gpu.close()
    assert nvml.calls["nvmlShutdown"] == 1
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()


def test_identities() -> None:
    nvml = FakeNVML([h100(), FakeDevice(1, "GPU-b", "NVIDIA L40S", lost=True)])
    assert GPUCollector("n1", nvml).identities() == {0: GPUIdentity(0, UUID, H100, "0000:18:00")}


def test_pcie_throughput_is_integrated_into_byte_counters() -> None:
    now = [100.0]
    nvml = FakeNVML([h100(pcie_rx_kbps=100, pcie_tx_kbps=40)])
    gpu = GPUCollector("n1", nvml, clock=lambda: now[0])
    assert one(gpu.collect(), "fleet_gpu_pcie_receive_bytes_total") == 0.0
    now[0] = 110.0
    nvml.devices[0].pcie_rx_kbps = 300
    samples = gpu.collect()
    assert one(samples, "fleet_gpu_pcie_receive_bytes_total") == (100 + 300) / 2 * 1024 * 10
    assert one(samples, "fleet_gpu_pcie_transmit_bytes_total") == 40 * 1024 * 10
    # a failed read is not bridged: integration restarts from the next good read
    nvml.devices[0].unsupported.clear()
    nvml.devices[0].lost = True
    now[0] = 1000.0
    gpu.collect()
    nvml.devices[0].lost = False
    now[0] = 1010.0
    total = one(gpu.collect(), "fleet_gpu_pcie_receive_bytes_total")
    assert total == (100 + 300) / 2 * 1024 * 10
    now[0] = 1011.0
    assert one(gpu.collect(), "fleet_gpu_pcie_receive_bytes_total") == total + 300 * 1024


def test_memory_used_leaves_the_drivers_reserved_memory_out_as_nvidia_smi_does() -> None:
    dev = h100(memory_used_bytes=2**30, memory_reserved_bytes=645 * 2**20)
    nvml = FakeNVML([dev])
    samples = GPUCollector("n1", nvml).collect()
    assert one(samples, "fleet_gpu_memory_used_bytes") == 2**30
    assert one(samples, "fleet_gpu_memory_total_bytes") == dev.memory_total_bytes
    # a driver without nvmlDeviceGetMemoryInfo_v2: v1, reserved included; v2 asked once
    old = FakeNVML([h100(memory_used_bytes=2**30, memory_reserved_bytes=2**20)])
    old.devices[0].unsupported.add("nvmlDeviceGetMemoryInfo_v2")
    gpu = GPUCollector("n1", old)
    for _ in range(3):
        assert one(gpu.collect(), "fleet_gpu_memory_used_bytes") == 2**30 + 2**20
    assert old.calls["nvmlDeviceGetMemoryInfo"] == 4
    assert (0, "nvmlDeviceGetMemoryInfo.v2") in gpu.caller.unsupported


def test_a_struct_version_the_driver_lacks_is_a_capability_not_a_failure() -> None:
    nvml = FakeNVML([h100(memory_used_bytes=5)])

    def mismatch(handle: Any, version: int | None = None) -> Any:
        if version:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return pynvml.c_nvmlMemory_t(total=10, free=5, used=5)

    nvml.nvmlDeviceGetMemoryInfo = mismatch  # type: ignore[method-assign]
    gpu = GPUCollector("n1", nvml)
    assert one(gpu.collect(), "fleet_gpu_memory_used_bytes") == 5
    assert gpu.failures == {} and (0, "nvmlDeviceGetMemoryInfo.v2") in gpu.caller.unsupported


def test_real_pynvml_never_raises() -> None:
    """On a machine without a driver this records the failure; with GPUs it reads them."""
    gpu = GPUCollector("here")
    try:
        samples = gpu.collect()
        identities = gpu.identities()
    finally:
        gpu.close()
    if gpu.init_error is not None:
        assert samples == [] and identities == {}
    else:
        ups = {s.labels["gpu"] for s in samples if s.name == "fleet_gpu_up"}
        assert ups >= {str(i) for i in identities}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"00000000:10:1C.0", "0000:10:1c", id="nvml-busId-bytes"),
        pytest.param("00000000:10:1C.0", "0000:10:1c", id="nvml-busId-str"),
        pytest.param("0000:3B:00.0", "0000:3b:00", id="busIdLegacy"),
        pytest.param("PCI:0000:10:1c", "0000:10:1c", id="kernel-xid"),
        pytest.param("0001:a1:00.1", "0001:a1:00", id="sysfs-domain-1"),
        pytest.param("GPU-0b1c", None, id="not-pci"),
        pytest.param(None, None, id="none"),
    ],
)
def test_pci_bus_ids_are_normalised_as_the_kernel_prints_them(
    raw: str | bytes | None, expected: str | None
) -> None:
    assert normalize_pci_bus_id(raw) == expected


def test_identity_carries_the_pci_bus_id_and_retries_a_failed_read() -> None:
    dev = h100(pci_bus_id="00000000:10:1C.0", unsupported={"nvmlDeviceGetPciInfo"})
    nvml = FakeNVML([dev])
    gpu = GPUCollector("n1", nvml)
    assert gpu.identities()[0].pci_bus_id is None  # unsupported: final, asked once
    gpu.collect()
    assert nvml.calls["nvmlDeviceGetPciInfo"] == 1
    flaky = FakeNVML([h100(pci_bus_id="00000000:10:1C.0")])
    gpu = GPUCollector("n1", flaky)
    working = flaky.nvmlDeviceGetPciInfo

    def fails(handle: Any) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    flaky.nvmlDeviceGetPciInfo = fails  # type: ignore[method-assign]
    first = gpu.identities()[0]
    assert (first.uuid, first.pci_bus_id) == (UUID, None)
    flaky.nvmlDeviceGetPciInfo = working  # type: ignore[method-assign]
    assert gpu.identities()[0].pci_bus_id == "0000:10:1c"
    assert one(gpu.collect(), "fleet_gpu_up") == 1.0


def test_last_cycle_processes_with_owners_are_kept_per_gpu() -> None:
    devices = [h100(processes=[(4242, 2**30), (5555, 512)]), FakeDevice(1, "GPU-b", H100)]
    nvml = FakeNVML(devices)
    owners: dict[int, tuple[str, ...]] = {4242: ("1234", "alice", "nlp"), 5555: ("77", "bo")}
    gpu = GPUCollector("n1", nvml, owner_of=lambda pid: owners[pid])
    assert gpu.processes() == {}
    gpu.collect()
    assert gpu.processes() == {
        0: [
            GPUProcess(4242, 2**30, "1234", "alice", "nlp"),
            GPUProcess(5555, 512, "77", "bo", None),
        ],
        1: [],
    }
    devices[0].processes = [(9, 1)]
    devices[1].lost = True
    gpu.collect()
    assert gpu.processes() == {0: [GPUProcess(9, 1, "unknown", "unknown", None)]}
