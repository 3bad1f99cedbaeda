"""A fake NVML: the subset of nvidia-ml-py's ``pynvml`` API that Fleetscope's collector uses.

:class:`FakeNVML` is handed to :class:`fleetscope.collect.gpu.GPUCollector` in place of the
``pynvml`` module, so the real collector runs unchanged in tests and in the simulator; each fake
node gets its own instance, so several run in one process.

Faithfulness, decided once:

- **Exceptions and constants are pynvml's own.** ``FakeNVML.NVMLError``,
  ``FakeNVML.NVMLError_NotSupported``, ``FakeNVML.NVML_TEMPERATURE_GPU`` … *are* the objects of
  the installed ``pynvml`` (every ``NVMLError*`` class and ``NVML_*`` constant is reachable as an
  attribute), so ``except nvml.NVMLError_NotSupported`` and ``except pynvml.NVMLError_NotSupported``
  catch the same thing, ``err.value`` equals pynvml's ``NVML_ERROR_*`` code, and
  ``NVMLError(code)`` maps to the right subclass, exactly as with the real library.
- **Return shapes are pynvml's own structs.** Utilization and memory info are pynvml's ctypes
  structs (``c_nvmlUtilization_t``, ``c_nvmlMemory_t``/``_v2_t``); running processes are
  ``pynvml.nvmlFriendlyObject`` with ``pid``, ``usedGpuMemory``, ``gpuInstanceId``,
  ``computeInstanceId``; strings are ``str``; scalar readings are ``int``.
- **Units are NVML's**: percent, bytes, milli-watts, milli-joules, MHz, KB/s, °C.
- **Memory** as an H200 with driver 580 answers: ``nvmlDeviceGetMemoryInfo`` v1 counts the
  driver's reserved memory in ``used``; with ``version=nvmlMemory_v2`` it is in ``reserved``
  and out of ``used`` (name ``"nvmlDeviceGetMemoryInfo_v2"`` in ``unsupported`` for a driver
  without that symbol: ``FunctionNotFound``).
- **Behaviour**: every call before :meth:`FakeNVML.nvmlInit` (or after the matching
  :meth:`~FakeNVML.nvmlShutdown`) raises ``NVMLError_Uninitialized``; a device with ``lost=True``
  raises ``NVMLError_GpuIsLost`` from every per-device call, including
  ``nvmlDeviceGetHandleByIndex``; a function name in ``FakeDevice.unsupported`` raises
  ``NVMLError_NotSupported`` for that device; a bad index raises ``NVMLError_InvalidArgument``.
  Volatile and aggregate ECC counters read the same fake counter.

XID events: :meth:`FakeNVML.inject_xid` raises an Xid on a device the way the driver does:
every event set with that device registered for ``nvmlEventTypeXidCriticalError``
(``nvmlEventSetCreate`` + ``nvmlDeviceRegisterEvents``) queues one event, which
``nvmlEventSetWait_v2`` returns in order (``eventType``, ``eventData`` = the Xid, ``device`` = the
handle) and, once the queue is empty, raises ``NVMLError_Timeout`` at once instead of waiting
(the fake never blocks). The event is a :class:`FakeEventData` with the fields of pynvml's
``c_nvmlEventData_t`` (a ctypes struct cannot hold a fake handle). The fake does not also write
the Xid to a kernel log; the simulator does that where it keeps one. PCI addresses
(``nvmlDeviceGetPciInfo``) are pynvml's ``nvmlPciInfo_t`` with NVML's ``busId`` form
(``00000000:18:00.0``); a device given none gets ``00000000:<0x18 + index>:00.0``.

The simulator drives a :class:`FakeDevice` by mutating its fields in place; :class:`FakeNVML`
keeps the list it was given (no copy) and looks devices up by position on every call.
``FakeNVML.calls`` counts calls per function name (tests use it to prove that a collector stops
asking for an unsupported field).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pynvml

__all__ = ["FakeDevice", "FakeEventData", "FakeEventSet", "FakeHandle", "FakeNVML"]

GIB = 1024**3


@dataclass
class FakeDevice:
    """One fake GPU; every field is in the unit NVML reports."""

    index: int
    uuid: str
    name: str  # NVML name, e.g. "NVIDIA H100 80GB HBM3"
    memory_total_bytes: int = 80 * GIB
    memory_used_bytes: int = 0
    gpu_util_pct: int = 0  # 0–100
    mem_util_pct: int = 0  # 0–100
    temperature_c: int = 30
    power_mw: int = 60_000
    power_limit_mw: int = 700_000
    energy_mj: int = 0  # monotonic since driver load
    sm_clock_mhz: int = 1_980
    throttle_reasons: int = 0  # NVML clocks event reasons bitmask
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    pcie_tx_kbps: int = 0  # KB/s
    pcie_rx_kbps: int = 0  # KB/s
    memory_reserved_bytes: int = 0  # the driver's own; v1 MemoryInfo counts it in used, v2 not
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, used bytes)
    unsupported: set[str] = field(default_factory=set)  # NVML function names
    lost: bool = False
    pci_bus_id: str = ""  # NVML busId, e.g. "00000000:18:00.0"; "" = derived from the index

    def __post_init__(self) -> None:
        if not self.pci_bus_id:
            self.pci_bus_id = f"00000000:{(0x18 + self.index) % 256:02X}:00.0"


@dataclass(frozen=True)
class FakeHandle:
    """An opaque device handle (NVML's is a ctypes pointer); holds the device's position."""

    index: int


@dataclass(frozen=True)
class FakeEventData:
    """One NVML event, with the fields of pynvml's ``c_nvmlEventData_t``."""

    device: FakeHandle
    eventType: int  # nvmlEventType* bit
    eventData: int  # the Xid for nvmlEventTypeXidCriticalError
    gpuInstanceId: int
    computeInstanceId: int


@dataclass(eq=False)
class FakeEventSet:
    """An NVML event set: registered (device position → event-type mask) and queued events
    (compared by identity, like the handle NVML returns)."""

    registered: dict[int, int] = field(default_factory=dict)
    queue: list[FakeEventData] = field(default_factory=list)
    freed: bool = False


def _error(code: int) -> Exception:
    """pynvml's exception for ``code`` (``NVMLError`` maps it to its subclass)."""
    err: Exception = pynvml.NVMLError(code)
    return err


class FakeNVML:
    """An in-memory stand-in for the ``pynvml`` module (see the module docstring)."""

    # The exceptions and constants the collector names; every other ``NVMLError*`` class and
    # ``NVML_*`` constant of pynvml is served by ``__getattr__``.
    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVMLError_InvalidArgument = pynvml.NVMLError_InvalidArgument
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_MEMORY_ERROR_TYPE_CORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    NVML_AGGREGATE_ECC = pynvml.NVML_AGGREGATE_ECC
    NVML_PCIE_UTIL_TX_BYTES = pynvml.NVML_PCIE_UTIL_TX_BYTES
    NVML_PCIE_UTIL_RX_BYTES = pynvml.NVML_PCIE_UTIL_RX_BYTES
    NVMLError_Timeout = pynvml.NVMLError_Timeout
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError

    def __init__(
        self,
        devices: list[FakeDevice],
        *,
        driver_version: str = "550.54.15",
        init_error: int | None = None,
    ) -> None:
        """``init_error``: an ``NVML_ERROR_*`` code that ``nvmlInit`` raises (no driver …)."""
        self.devices = devices
        self.driver_version = driver_version
        self.init_error = init_error
        self.calls: Counter[str] = Counter()
        self.event_sets: list[FakeEventSet] = []
        self._refcount = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML_", "NVMLError", "nvmlMemory_v")) and hasattr(pynvml, name):
            return getattr(pynvml, name)
        raise AttributeError(f"FakeNVML has no attribute {name!r}")

    # -- library ---------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise _error(self.init_error)
        self._refcount += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self._refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.devices):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.devices[index].lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return FakeHandle(index)

    # -- identity --------------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetIndex", handle).index

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._device("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._device("nvmlDeviceGetName", handle).name

    # -- readings --------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> Any:
        d = self._device("nvmlDeviceGetUtilizationRates", handle)
        return pynvml.c_nvmlUtilization_t(gpu=d.gpu_util_pct, memory=d.mem_util_pct)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> Any:
        d = self._device("nvmlDeviceGetMemoryInfo", handle)
        total, used, reserved = d.memory_total_bytes, d.memory_used_bytes, d.memory_reserved_bytes
        free = total - used - reserved
        if not version:
            return pynvml.c_nvmlMemory_t(total=total, free=free, used=used + reserved)
        if f"nvmlDeviceGetMemoryInfo_v{version >> 24}" in d.unsupported:
            raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)  # a driver without the v2 symbol
        return pynvml.c_nvmlMemory_v2_t(
            version=version, total=total, reserved=reserved, free=free, used=used
        )

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        d = self._device("nvmlDeviceGetTemperature", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return d.temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, type: int) -> int:
        d = self._device("nvmlDeviceGetClockInfo", handle)
        if type != pynvml.NVML_CLOCK_SM:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return d.sm_clock_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetCurrentClocksEventReasons", handle).throttle_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetCurrentClocksThrottleReasons", handle).throttle_reasons

    def nvmlDeviceGetTotalEccErrors(
        self, handle: FakeHandle, errorType: int, counterType: int
    ) -> int:
        d = self._device("nvmlDeviceGetTotalEccErrors", handle)
        if counterType not in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if errorType == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return d.ecc_corrected
        if errorType == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return d.ecc_uncorrected
        raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetPcieThroughput(self, device: FakeHandle, counter: int) -> int:
        d = self._device("nvmlDeviceGetPcieThroughput", device)
        if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES:
            return d.pcie_tx_kbps
        if counter == pynvml.NVML_PCIE_UTIL_RX_BYTES:
            return d.pcie_rx_kbps
        raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        d = self._device("nvmlDeviceGetComputeRunningProcesses", handle)
        na = pynvml.NVML_VALUE_NOT_AVAILABLE_uint.value  # not a MIG instance
        return [
            pynvml.nvmlFriendlyObject(
                {"pid": pid, "usedGpuMemory": used, "gpuInstanceId": na, "computeInstanceId": na}
            )
            for pid, used in d.processes
        ]

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> Any:
        d = self._device("nvmlDeviceGetPciInfo", handle)
        domain, bus, rest = d.pci_bus_id.split(":")
        dev = rest.split(".")[0]
        return pynvml.nvmlPciInfo_t(
            busIdLegacy=f"{int(domain, 16):04X}:{bus}:{rest}".encode(),
            domain=int(domain, 16),
            bus=int(bus, 16),
            device=int(dev, 16),
            pciDeviceId=0x233010DE,  # device 0x2330 (H100 SXM5), vendor 0x10DE (NVIDIA)
            pciSubSystemId=0x16C110DE,
            busId=d.pci_bus_id.encode(),
        )

    # -- events ----------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._check("nvmlEventSetCreate")
        event_set = FakeEventSet()
        self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(
        self, handle: FakeHandle, eventTypes: int, eventSet: FakeEventSet
    ) -> None:
        self._device("nvmlDeviceRegisterEvents", handle)
        if eventSet.freed or eventSet not in self.event_sets:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        eventSet.registered[handle.index] = eventSet.registered.get(handle.index, 0) | eventTypes

    def nvmlEventSetWait_v2(self, eventSet: FakeEventSet, timeoutms: int) -> FakeEventData:
        self._check("nvmlEventSetWait_v2")
        if eventSet.freed:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not eventSet.queue:
            raise _error(pynvml.NVML_ERROR_TIMEOUT)
        return eventSet.queue.pop(0)

    def nvmlEventSetFree(self, eventSet: FakeEventSet) -> None:
        self._check("nvmlEventSetFree")
        eventSet.freed = True
        eventSet.queue.clear()

    def inject_xid(self, index: int, xid: int) -> int:
        """Raise Xid ``xid`` on the device at ``index``; returns how many event sets got it."""
        na = pynvml.NVML_VALUE_NOT_AVAILABLE_uint.value
        delivered = 0
        for event_set in self.event_sets:
            mask = event_set.registered.get(index, 0)
            if event_set.freed or not mask & pynvml.nvmlEventTypeXidCriticalError:
                continue
            event = FakeEventData(
                FakeHandle(index), pynvml.nvmlEventTypeXidCriticalError, xid, na, na
            )
            event_set.queue.append(event)
            delivered += 1
        return delivered

    # -- internals -------------------------------------------------------------------------

    def _check(self, fn: str) -> None:
        self.calls[fn] += 1
        if self._refcount <= 0:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)

    def _device(self, fn: str, handle: FakeHandle) -> FakeDevice:
        self._check(fn)
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.devices):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        d = self.devices[handle.index]
        if d.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        if fn in d.unsupported:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return d
