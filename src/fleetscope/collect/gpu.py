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
``fleet_gpu_memory_used_bytes``             ``MemoryInfo_v2.used`` bytes (the driver's reserved
                                            memory left out, as nvidia-smi shows it; the v1
                                            ``used``, reserved included, where v2 is missing)
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
- PCIe: NVML reports a throughput in KB/s (read as KiB/s, 1 KB = 1024 bytes, as nvitop
  does) that it samples over ~20 ms *while the call blocks*: the two directions cost a GPU
  ~41 ms a cycle (H200, driver 580). The collector keeps a byte counter per GPU and direction
  and adds the trapezoid ``(previous + current)/2 × 1024 × Δt`` between successful reads. It is
  an estimate; it starts at 0 when the collector starts (a counter reset, which ``rate()``
  handles), and a failed read restarts the integration rather than guessing across the gap.
  NVML's field values ``NVML_FI_DEV_PCIE_COUNT_{TX,RX}_BYTES`` would be exact and fast, but they
  are 32-bit (``valueType`` unsigned int on that H200): at PCIe 5 speed they wrap several
  times a second, so no scrape interval can unwrap them.
- Process ``pid`` is as NVML reports it (the host PID namespace). ``job``/``user`` come from
  ``owner_of(pid)``, normally :func:`fleetscope.collect.attribution.owner_of_pid` (or the older
  :func:`~fleetscope.collect.attribution.job_of_pid`); without one both are ``"unknown"``. A
  process is never dropped for an unknown owner. :meth:`GPUCollector.processes` keeps the last
  cycle's processes per GPU (pid, used bytes, owner) so the allocation collector can attribute
  GPUs that no prolog file covers (Kubernetes nodes).
- Identity includes the GPU's PCI address (``nvmlDeviceGetPciInfo().busId``, e.g.
  ``00000000:10:1C.0``), kept normalised as the kernel prints it in Xid lines: lowercase
  ``domain:bus:device`` with the function dropped (``0000:10:1c``, see
  :func:`normalize_pci_bus_id`), so the XID collector can map a kernel log line to its GPU.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pynvml

from fleetscope.collect import Sample

__all__ = [
    "USED_FUNCTIONS",
    "GPUCollector",
    "GPUIdentity",
    "GPULost",
    "GPUProcess",
    "NVMLCaller",
    "OwnerOf",
    "normalize_pci_bus_id",
]

log = logging.getLogger(__name__)

OwnerOf = Callable[[int], tuple[str, ...]]
"""``pid → (job, user)`` or ``(job, user, team)``; unknown parts are ``"unknown"``.

A lookup that raises costs only the owner (the process is then ``unknown``), never a sample."""

USED_FUNCTIONS: tuple[str, ...] = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetPciInfo",
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


_PCI_BUS_ID = re.compile(
    r"(?:PCI:)?(?P<domain>[0-9a-fA-F]{1,8}):(?P<bus>[0-9a-fA-F]{1,2}):(?P<device>[0-9a-fA-F]{1,2})"
    r"(?:\.[0-7])?"
)


def normalize_pci_bus_id(raw: str | bytes | None) -> str | None:
    """A PCI address as the kernel's NVRM lines print it: ``0000:10:1c`` (lowercase
    ``domain:bus:device``, domain at least 4 hex digits, the function dropped).

    Accepts NVML's ``busId`` (``00000000:10:1C.0``, bytes or str), its ``busIdLegacy``
    (``0000:10:1C.0``), sysfs names (``0000:10:1c.0``) and kernel ones (``PCI:0000:10:1c``);
    ``None`` for anything else.
    """
    if raw is None:
        return None
    text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else raw
    found = _PCI_BUS_ID.fullmatch(text.strip().rstrip("\0"))
    if found is None:
        return None
    domain, bus, device = (int(found.group(k), 16) for k in ("domain", "bus", "device"))
    return f"{domain:04x}:{bus:02x}:{device:02x}"


@dataclass(frozen=True)
class GPUIdentity:
    """Who a GPU is: its NVML index, UUID and NVML name (the ``gpu_model`` label).

    ``pci_bus_id`` is the normalised PCI address (:func:`normalize_pci_bus_id`), ``None`` when
    NVML did not tell it.
    """

    index: int
    uuid: str
    model: str
    pci_bus_id: str | None = None

    def labels(self, node: str) -> dict[str, str]:
        """The label set that every GPU series of this GPU carries."""
        return {
            "node": node,
            "gpu": str(self.index),
            "gpu_uuid": self.uuid,
            "gpu_model": self.model,
        }


@dataclass(frozen=True)
class GPUProcess:
    """One compute process on a GPU in the last cycle, with its owner.

    ``used_memory_bytes`` is NVML's ``usedGpuMemory`` (``None`` where NVML cannot tell, e.g.
    Windows WDDM); ``job``/``user`` are ``"unknown"`` when the owner lookup does not know them;
    ``team`` is ``None`` when the lookup does not say (a 2-tuple ``owner_of``).
    """

    pid: int
    used_memory_bytes: int | None
    job: str
    user: str
    team: str | None = None


class GPULost(Exception):
    """NVML says the GPU is gone (``GpuIsLost``/``ResetRequired``) for the rest of this cycle."""


def _call_key(device: int, fn: str, variant: str) -> tuple[int, str]:
    """How :class:`NVMLCaller` names a call in ``unsupported``: ``fn``, or ``fn.variant``."""
    return device, f"{fn}.{variant}" if variant else fn


class NVMLCaller:
    """The one wrapper every NVML call goes through (nvitop's pattern).

    ``call(device, fn, *args)`` returns the result or ``None``. ``unsupported`` holds the
    (device, function) pairs known not to work (never asked again; a call's ``variant`` is part
    of the function's name there, e.g. ``nvmlDeviceGetMemoryInfo.v2``); ``failures`` counts
    transient failures per function. ``ok``/``failed`` count outcomes since
    :meth:`reset_outcomes`.
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
            # a struct version the driver lacks (25 in NVML's enum; older bindings lack the name)
            getattr(nvml, "NVML_ERROR_ARGUMENT_VERSION_MISMATCH", 25),
        }
        self._lost_codes = {nvml.NVML_ERROR_GPU_IS_LOST, nvml.NVML_ERROR_RESET_REQUIRED}

    def reset_outcomes(self) -> None:
        self.ok = self.failed = 0

    def call(self, device: int, fn: str, *args: Any, variant: str = "") -> Any | None:
        """``nvml.<fn>(*args)``, or ``None`` when unsupported or failed; raises :class:`GPULost`.

        ``variant`` names a form of the call that is supported or not on its own (e.g. ``"v2"``
        of a versioned struct): it is remembered as ``fn + "." + variant``.
        """
        key = _call_key(device, fn, variant)
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
                log.debug("NVML %s not supported on GPU %d: %s", key[1], device, err)
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

    def is_unsupported(self, device: int, fn: str, variant: str = "") -> bool:
        """Whether ``fn`` (in form ``variant``) is known not to work on ``device``."""
        return _call_key(device, fn, variant) in self.unsupported

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


def _unknown_owner(pid: int) -> tuple[str, ...]:
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
        self._processes: dict[int, list[GPUProcess]] = {}
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
        if ident is not None and (
            ident.pci_bus_id is not None
            or self.caller.is_unsupported(index, "nvmlDeviceGetPciInfo")
        ):
            return ident
        handle = self._handle(index)
        if handle is None:
            return ident
        if ident is None:
            uuid = self.caller.call(index, "nvmlDeviceGetUUID", handle)
            model = self.caller.call(index, "nvmlDeviceGetName", handle)
            if uuid is None or model is None:
                return None
            ident = GPUIdentity(index, str(uuid), str(model))
        # a PCI address that failed this time is asked again next time; unsupported is final
        pci = self.caller.call(index, "nvmlDeviceGetPciInfo", handle)
        bus_id = None if pci is None else normalize_pci_bus_id(getattr(pci, "busId", None))
        if bus_id is not None:
            ident = replace(ident, pci_bus_id=bus_id)
        self._identities[index] = ident
        return ident

    def processes(self) -> dict[int, list[GPUProcess]]:
        """NVML index → the compute processes seen on that GPU in the last ``collect``.

        Only GPUs that answered in that cycle are keys (a GPU with no process maps to ``[]``).
        """
        return {index: list(procs) for index, procs in self._processes.items()}

    # -- collection ------------------------------------------------------------------------

    def collect(self) -> list[Sample]:
        if not self._ensure_init():
            return []
        out: list[Sample] = []
        self._processes = {}
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
        mem = self._memory(i, h)
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
        procs = call(i, "nvmlDeviceGetComputeRunningProcesses", h)
        if procs is None:  # unknown this cycle: the GPU gets no entry in processes()
            return
        seen = self._processes[i] = []
        for proc in procs:
            pid = int(proc.pid)
            used = getattr(proc, "usedGpuMemory", None)  # None on Windows WDDM
            owner = self._owner(pid)
            job, user, team = owner[0], owner[1], owner[2] if len(owner) > 2 else None
            seen.append(GPUProcess(pid, None if used is None else int(used), job, user, team))
            yield from sample(
                "fleet_gpu_process_memory_bytes", used, pid=str(pid), job=job, user=user
            )

    def _memory(self, i: int, h: Any) -> Any | None:
        """``MemoryInfo_v2`` (``used`` without the driver's reserved memory), else v1."""
        fn, v2 = "nvmlDeviceGetMemoryInfo", getattr(self.nvml, "nvmlMemory_v2", None)
        if v2 is not None:
            mem = self.caller.call(i, fn, h, v2, variant="v2")
            if mem is not None or not self.caller.is_unsupported(i, fn, "v2"):
                return mem
        return self.caller.call(i, fn, h)

    def _throttle_reasons(self, i: int, h: Any) -> int | None:
        """Clocks-event reasons, falling back to the pre-12.535 name when that is unsupported."""
        new = "nvmlDeviceGetCurrentClocksEventReasons"
        value = self.caller.call(i, new, h)
        if value is None and self.caller.is_unsupported(i, new):
            value = self.caller.call(i, "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        return None if value is None else int(value)

    def _owner(self, pid: int) -> tuple[str, ...]:
        try:
            owner = tuple(self.owner_of(pid))
        except Exception as err:  # an owner lookup must not cost the GPU its samples
            log.debug("owner of pid %d: %s", pid, err)
            return ("unknown", "unknown")
        if len(owner) < 2:
            return ("unknown", "unknown")
        return owner

    def _forget_pcie(self, index: int) -> None:
        for (gpu, _name), integ in self._pcie.items():
            if gpu == index:
                integ.last_kbps = integ.last_t = None


def _scaled(milli: float | None) -> float | None:
    """A milli-unit NVML reading (mW, mJ) in base units."""
    return None if milli is None else milli / 1000
