"""GPU collector: NVML readings through nvidia-ml-py (``import pynvml``), in base units.

:class:`GPUCollector` takes the NVML module as a parameter (default: the real ``pynvml``); the
simulator passes a :class:`fleetscope.simulate.nvml.FakeNVML`, so one process can run several fake
nodes through this same code.

What it emits per GPU, with labels ``{node, gpu, gpu_uuid, gpu_model}`` (``gpu`` is the NVML index
as a decimal string, ``gpu_model`` the NVML name):

==========================================  ============================================
metric                                      NVML source → unit conversion
==========================================  ============================================
``fleet_gpu_utilization_ratio``             ``UtilizationRates.gpu`` % → ÷100
``fleet_gpu_memory_used_bytes``             ``MemoryInfo.used`` bytes
``fleet_gpu_memory_total_bytes``            ``MemoryInfo.total`` bytes
``fleet_gpu_temperature_celsius``           ``Temperature(GPU)`` °C
``fleet_gpu_power_watts``                   ``PowerUsage`` mW → ÷1000
``fleet_gpu_power_limit_watts``             ``EnforcedPowerLimit`` mW → ÷1000
``fleet_gpu_energy_joules_total``           ``TotalEnergyConsumption`` mJ → ÷1000
``fleet_gpu_sm_clock_hertz``                ``ClockInfo(SM)`` MHz → ×10⁶
``fleet_gpu_throttle_reasons``              ``CurrentClocksEventReasons`` (or the older
                                            ``…ThrottleReasons``) bitmask, as a number
``fleet_gpu_ecc_errors_total{type}``        ``TotalEccErrors(…, VOLATILE)`` (since driver
                                            load), ``type`` = corrected | uncorrected
``fleet_gpu_pcie_receive_bytes_total``      ``PcieThroughput(RX)`` KB/s, *integrated* by this
                                            collector (see below)
``fleet_gpu_pcie_transmit_bytes_total``     ``PcieThroughput(TX)`` KB/s, integrated likewise
``fleet_gpu_process_memory_bytes``          ``ComputeRunningProcesses`` ``usedGpuMemory``
                                            bytes, plus ``pid, job, user`` labels
``fleet_gpu_up``                            1 when NVML answered for the GPU this cycle, else 0
==========================================  ============================================

Conventions:

- **One wrapper** (:class:`NVMLCaller`) makes every NVML call and sorts errors the nvitop way:
  ``NotSupported`` / ``FunctionNotFound`` / a function the bindings lack is a *capability*: cached
  per (device, function) and never asked again; any other error *failed this time*: counted in
  ``failures`` per function and logged once; ``GpuIsLost`` / ``ResetRequired`` mark the whole GPU
  lost for this cycle.
- An unknown reading is ``None`` and is not emitted; one failing field never loses the others.
- A lost GPU yields ``fleet_gpu_up 0`` and nothing else. A GPU whose UUID or name cannot be read
  yet yields only ``fleet_gpu_up 0`` with labels ``{node, gpu}`` (identity is cached once read).
- If ``nvmlInit`` fails (no driver, no library), ``collect`` yields nothing and ``init_error``
  says why; the next ``collect`` tries again (the failure is logged once).
- PCIe: NVML only reports a throughput in KB/s (read as KiB/s, 1 KB = 1024 bytes, as
  nvitop does) sampled over ~20 ms. The collector keeps a byte counter per GPU and direction
  and adds the trapezoid ``(previous + current)/2 × 1024 × Δt`` between successful reads. It is an
  estimate; it starts at 0 when the collector starts (a counter reset, which ``rate()`` handles),
  and a failed read restarts the integration rather than guessing across the gap.
- Process ``pid`` is as NVML reports it (the host PID namespace). ``job``/``user`` come from
  ``owner_of(pid)``, normally :func:`fleetscope.collect.attribution.job_of_pid`; without one both
  are ``"unknown"``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pynvml

from fleetscope.collect import Sample

__all__ = ["USED_FUNCTIONS", "GPUCollector", "GPUIdentity", "GPULost", "NVMLCaller", "OwnerOf"]

log = logging.getLogger(__name__)

OwnerOf = Callable[[int], tuple[str, str]]
"""``pid → (job, user)``; must not raise (unknown is ``("unknown", "unknown")``)."""

USED_FUNCTIONS: tuple[str, ...] = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetComputeRunningProcesses",
)
"""Every NVML function this collector calls (a fake NVML must offer all of them)."""

KIB = 1024
_NO_DEVICE = -1  # the "device" of library-wide calls in the wrapper's bookkeeping


@dataclass(frozen=True)
class GPUIdentity:
    """Who a GPU is: its NVML index, UUID and NVML name (the ``gpu_model`` label)."""

    index: int
    uuid: str
    model: str

    def labels(self, node: str) -> dict[str, str]:
        """The label set that every GPU series of this GPU carries."""
        return {
            "node": node,
            "gpu": str(self.index),
            "gpu_uuid": self.uuid,
            "gpu_model": self.model,
        }


class GPULost(Exception):
    """NVML says the GPU is gone (``GpuIsLost``/``ResetRequired``) for the rest of this cycle."""


class NVMLCaller:
    """The one wrapper every NVML call goes through (nvitop's pattern).

    ``call(device, fn, *args)`` returns the result or ``None``. ``unsupported`` holds the
    (device, function) pairs known not to work (never asked again); ``failures`` counts transient
    failures per function. ``ok``/``failed`` count outcomes since :meth:`reset_outcomes`.
    """

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.unsupported: set[tuple[int, str]] = set()
        self.failures: Counter[str] = Counter()
        self.ok = 0
        self.failed = 0
        self._logged: set[tuple[str, str]] = set()
        self._capability_codes = {
            nvml.NVML_ERROR_NOT_SUPPORTED,
            nvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        }
        self._lost_codes = {nvml.NVML_ERROR_GPU_IS_LOST, nvml.NVML_ERROR_RESET_REQUIRED}

    def reset_outcomes(self) -> None:
        self.ok = self.failed = 0

    def call(self, device: int, fn: str, *args: Any) -> Any | None:
        """``nvml.<fn>(*args)``, or ``None`` when unsupported or failed; raises :class:`GPULost`."""
        key = (device, fn)
        if key in self.unsupported:
            return None
        func = getattr(self.nvml, fn, None)
        if func is None:  # bindings older than the function
            self.unsupported.add(key)
            return None
        try:
            result = func(*args)
        except self.nvml.NVMLError as err:
            code = getattr(err, "value", None)
            if code in self._lost_codes:
                raise GPULost(f"GPU {device}: {err}") from err
            if code in self._capability_codes:
                self.unsupported.add(key)
                log.debug("NVML %s not supported on GPU %d: %s", fn, device, err)
                return None
            self._fail(device, fn, err)
            return None
        except Exception as err:  # e.g. pynvml.NVMLLibraryMismatchError, ctypes errors
            if type(err).__name__ == "NVMLLibraryMismatchError":
                self.unsupported.add(key)
                return None
            self._fail(device, fn, err)
            return None
        self.ok += 1
        return result

    def _fail(self, device: int, fn: str, err: Exception) -> None:
        self.failures[fn] += 1
        self.failed += 1
        what = (fn, f"{type(err).__name__}: {err}")
        if what not in self._logged:
            self._logged.add(what)
            log.warning("NVML %s failed on GPU %d: %s (logged once)", fn, device, what[1])


@dataclass
class _Integrator:
    """A byte counter integrated from a KB/s throughput (trapezoid between successful reads)."""

    total_bytes: float = 0.0
    last_kbps: float | None = None
    last_t: float | None = None

    def add(self, kbps: float | None, now: float) -> float | None:
        if kbps is None:
            self.last_kbps = self.last_t = None
            return None
        if self.last_kbps is not None and self.last_t is not None:
            self.total_bytes += (self.last_kbps + kbps) / 2 * KIB * max(0.0, now - self.last_t)
        self.last_kbps, self.last_t = kbps, now
        return self.total_bytes


def _unknown_owner(pid: int) -> tuple[str, str]:
    return ("unknown", "unknown")


class GPUCollector:
    """Reads every GPU of one node through NVML (see the module docstring)."""

    name = "gpu"

    def __init__(
        self,
        node: str,
        nvml: Any = pynvml,
        *,
        owner_of: OwnerOf | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.nvml = nvml
        self.caller = NVMLCaller(nvml)
        self.owner_of = owner_of or _unknown_owner
        self.clock = clock
        self.initialized = False
        self.init_error: str | None = None
        self.driver_version: str | None = None
        self._count = 0
        self._handles: dict[int, Any] = {}
        self._identities: dict[int, GPUIdentity] = {}
        self._pcie: dict[tuple[int, str], _Integrator] = {}
        self._init_logged: set[str] = set()

    @property
    def failures(self) -> Counter[str]:
        """Transient NVML failures per function name since the collector started."""
        return self.caller.failures

    # -- lifecycle -------------------------------------------------------------------------

    def _ensure_init(self) -> bool:
        if self.initialized:
            return True
        try:
            self.nvml.nvmlInit()
        except Exception as err:
            self._init_failed(err)
            return False
        try:
            count = int(self.nvml.nvmlDeviceGetCount())
        except Exception as err:
            self._init_failed(err)
            self._shutdown()
            return False
        self.initialized, self.init_error, self._count = True, None, count
        try:
            self.driver_version = self.caller.call(_NO_DEVICE, "nvmlSystemGetDriverVersion")
        except GPULost:
            self.driver_version = None
        log.info("NVML ready on %s: %d GPU(s), driver %s", self.node, count, self.driver_version)
        return True

    def _init_failed(self, err: Exception) -> None:
        self.init_error = f"{type(err).__name__}: {err}"
        if self.init_error not in self._init_logged:
            self._init_logged.add(self.init_error)
            log.warning("NVML unavailable on %s: %s (logged once)", self.node, self.init_error)

    def _shutdown(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception as err:
            log.debug("nvmlShutdown failed: %s", err)

    def close(self) -> None:
        """Shut NVML down (once per successful init); ``collect`` would initialize again."""
        if self.initialized:
            self._shutdown()
        self.initialized = False
        self._handles.clear()

    # -- identity --------------------------------------------------------------------------

    def identities(self) -> dict[int, GPUIdentity]:
        """NVML index → identity of every GPU whose identity could be read (initializes NVML)."""
        if not self._ensure_init():
            return {}
        for index in range(self._count):
            try:
                self._identity(index)
            except GPULost:
                continue
        return dict(self._identities)

    def _handle(self, index: int) -> Any | None:
        handle = self._handles.get(index)
        if handle is None:
            handle = self.caller.call(index, "nvmlDeviceGetHandleByIndex", index)
            if handle is not None:
                self._handles[index] = handle
        return handle

    def _identity(self, index: int) -> GPUIdentity | None:
        ident = self._identities.get(index)
        if ident is not None:
            return ident
        handle = self._handle(index)
        if handle is None:
            return None
        uuid = self.caller.call(index, "nvmlDeviceGetUUID", handle)
        model = self.caller.call(index, "nvmlDeviceGetName", handle)
        if uuid is None or model is None:
            return None
        ident = self._identities[index] = GPUIdentity(index, str(uuid), str(model))
        return ident

    # -- collection ------------------------------------------------------------------------

    def collect(self) -> list[Sample]:
        if not self._ensure_init():
            return []
        out: list[Sample] = []
        for index in range(self._count):
            out.extend(self._collect_gpu(index))
        return out

    def _collect_gpu(self, index: int) -> list[Sample]:
        self.caller.reset_outcomes()
        known = self._identities.get(index)
        labels = known.labels(self.node) if known else {"node": self.node, "gpu": str(index)}
        try:
            handle = self._handle(index)
            ident = None if handle is None else self._identity(index)
            if ident is None:
                return [Sample("fleet_gpu_up", labels, 0.0)]
            labels = ident.labels(self.node)
            samples = list(self._read(index, handle, labels))
        except GPULost as err:
            self._forget_pcie(index)
            log.debug("%s", err)
            return [Sample("fleet_gpu_up", labels, 0.0)]
        answered = self.caller.ok > 0 or self.caller.failed == 0
        return [Sample("fleet_gpu_up", labels, 1.0 if answered else 0.0), *samples]

    def _read(self, i: int, h: Any, labels: dict[str, str]) -> Iterator[Sample]:
        call, nv = self.caller.call, self.nvml

        def sample(name: str, value: float | None, **extra: str) -> Iterator[Sample]:
            if value is not None:
                yield Sample(name, {**labels, **extra} if extra else labels, float(value))

        util = call(i, "nvmlDeviceGetUtilizationRates", h)
        yield from sample("fleet_gpu_utilization_ratio", None if util is None else util.gpu / 100)
        mem = call(i, "nvmlDeviceGetMemoryInfo", h)
        yield from sample("fleet_gpu_memory_used_bytes", None if mem is None else mem.used)
        yield from sample("fleet_gpu_memory_total_bytes", None if mem is None else mem.total)
        temp = call(i, "nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU)
        yield from sample("fleet_gpu_temperature_celsius", temp)
        yield from sample("fleet_gpu_power_watts", _scaled(call(i, "nvmlDeviceGetPowerUsage", h)))
        limit = call(i, "nvmlDeviceGetEnforcedPowerLimit", h)
        yield from sample("fleet_gpu_power_limit_watts", _scaled(limit))
        energy = call(i, "nvmlDeviceGetTotalEnergyConsumption", h)
        yield from sample("fleet_gpu_energy_joules_total", _scaled(energy))
        clock = call(i, "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM)
        yield from sample("fleet_gpu_sm_clock_hertz", None if clock is None else clock * 1e6)
        yield from sample("fleet_gpu_throttle_reasons", self._throttle_reasons(i, h))
        for kind, code in (
            ("corrected", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            ecc = call(i, "nvmlDeviceGetTotalEccErrors", h, code, nv.NVML_VOLATILE_ECC)
            yield from sample("fleet_gpu_ecc_errors_total", ecc, type=kind)
        now = self.clock()
        for name, code in (
            ("fleet_gpu_pcie_receive_bytes_total", nv.NVML_PCIE_UTIL_RX_BYTES),
            ("fleet_gpu_pcie_transmit_bytes_total", nv.NVML_PCIE_UTIL_TX_BYTES),
        ):
            kbps = call(i, "nvmlDeviceGetPcieThroughput", h, code)
            yield from sample(name, self._pcie.setdefault((i, name), _Integrator()).add(kbps, now))
        for proc in call(i, "nvmlDeviceGetComputeRunningProcesses", h) or ():
            used = getattr(proc, "usedGpuMemory", None)  # None on Windows WDDM
            if used is None:
                continue
            job, user = self._owner(int(proc.pid))
            yield from sample(
                "fleet_gpu_process_memory_bytes", used, pid=str(proc.pid), job=job, user=user
            )

    def _throttle_reasons(self, i: int, h: Any) -> int | None:
        """Clocks-event reasons, falling back to the pre-12.535 name when that is unsupported."""
        new = "nvmlDeviceGetCurrentClocksEventReasons"
        value = self.caller.call(i, new, h)
        if value is None and (i, new) in self.caller.unsupported:
            value = self.caller.call(i, "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        return None if value is None else int(value)

    def _owner(self, pid: int) -> tuple[str, str]:
        try:
            return self.owner_of(pid)
        except Exception as err:  # an owner lookup must not cost the GPU its samples
            log.debug("owner of pid %d: %s", pid, err)
            return ("unknown", "unknown")

    def _forget_pcie(self, index: int) -> None:
        for (gpu, _name), integ in self._pcie.items():
            if gpu == index:
                integ.last_kbps = integ.last_t = None


def _scaled(milli: float | None) -> float | None:
    """A milli-unit NVML reading (mW, mJ) in base units."""
    return None if milli is None else milli / 1000
