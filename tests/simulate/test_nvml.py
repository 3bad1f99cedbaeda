"""The fake NVML offers pynvml's names, signatures, return shapes and exceptions."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pynvml
import pytest

from fleetscope.collect.gpu import USED_FUNCTIONS
from fleetscope.simulate.nvml import FakeDevice, FakeNVML


def device(**kw: Any) -> FakeDevice:
    return FakeDevice(0, "GPU-11111111-2222-3333-4444-555555555555", "NVIDIA H100 80GB HBM3", **kw)


@pytest.fixture
def nvml() -> FakeNVML:
    fake = FakeNVML([device(memory_used_bytes=5 * 2**30, processes=[(4242, 2**30)])])
    fake.nvmlInit()
    return fake


@pytest.mark.parametrize("name", USED_FUNCTIONS)
def test_every_function_the_collector_calls_has_pynvml_signature(name: str) -> None:
    real = inspect.signature(getattr(pynvml, name))
    fake = inspect.signature(getattr(FakeNVML([]), name))
    assert list(fake.parameters) == list(real.parameters)
    defaults = {n: p.default for n, p in real.parameters.items()}
    assert {n: p.default for n, p in fake.parameters.items()} == defaults


def test_structs_are_pynvml_structs_with_pynvml_fields(nvml: FakeNVML) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    util = nvml.nvmlDeviceGetUtilizationRates(h)
    assert isinstance(util, pynvml.c_nvmlUtilization_t)
    assert [f[0] for f in util._fields_] == ["gpu", "memory"]
    mem = nvml.nvmlDeviceGetMemoryInfo(h)
    assert isinstance(mem, pynvml.c_nvmlMemory_t)
    assert (mem.total, mem.used, mem.free) == (80 * 2**30, 5 * 2**30, 75 * 2**30)
    mem2 = nvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert isinstance(mem2, pynvml.c_nvmlMemory_v2_t) and mem2.used == 5 * 2**30
    (proc,) = nvml.nvmlDeviceGetComputeRunningProcesses(h)
    # real pynvml turns c_nvmlProcessInfo_t into a friendly object with the struct's fields
    assert isinstance(proc, pynvml.nvmlFriendlyObject)
    assert sorted(vars(proc)) == sorted(f[0] for f in pynvml.c_nvmlProcessInfo_t._fields_)
    assert (proc.pid, proc.usedGpuMemory) == (4242, 2**30)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(lambda n, h: n.nvmlDeviceGetUUID(h), str, id="uuid-str"),
        pytest.param(lambda n, h: n.nvmlDeviceGetName(h), str, id="name-str"),
        pytest.param(lambda n, h: n.nvmlSystemGetDriverVersion(), str, id="driver-str"),
        pytest.param(lambda n, h: n.nvmlDeviceGetIndex(h), int, id="index-int"),
        pytest.param(lambda n, h: n.nvmlDeviceGetPowerUsage(h), int, id="power-mw-int"),
        pytest.param(
            lambda n, h: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU), int, id="temp"
        ),
        pytest.param(lambda n, h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM), int, id="clock"),
        pytest.param(
            lambda n, h: n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES), int, id="pcie"
        ),
        pytest.param(
            lambda n, h: n.nvmlDeviceGetTotalEccErrors(
                h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_AGGREGATE_ECC
            ),
            int,
            id="ecc",
        ),
    ],
)
def test_scalar_return_types(
    nvml: FakeNVML, call: Callable[[Any, Any], object], expected: type
) -> None:
    assert type(call(nvml, nvml.nvmlDeviceGetHandleByIndex(0))) is expected


def test_exceptions_and_constants_are_pynvml_objects() -> None:
    fake = FakeNVML([])
    assert fake.NVMLError is pynvml.NVMLError
    assert fake.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    assert fake.NVMLError_NoPermission is pynvml.NVMLError_NoPermission  # via __getattr__
    assert fake.NVML_ERROR_GPU_IS_LOST == pynvml.NVML_ERROR_GPU_IS_LOST
    assert fake.NVML_PCIE_UTIL_TX_BYTES == pynvml.NVML_PCIE_UTIL_TX_BYTES
    with pytest.raises(AttributeError):
        _ = fake.nvmlDeviceGetFanSpeed  # only what is implemented, no silent stand-ins


def _lose(n: FakeNVML) -> None:
    n.devices[0].lost = True


@pytest.mark.parametrize(
    ("setup", "call", "cls", "code"),
    [
        pytest.param(
            _lose,
            lambda n, h: n.nvmlDeviceGetHandleByIndex(0),
            pynvml.NVMLError_GpuIsLost,
            pynvml.NVML_ERROR_GPU_IS_LOST,
            id="lost-new-handle",
        ),
        pytest.param(
            _lose,
            lambda n, h: n.nvmlDeviceGetUUID(h),
            pynvml.NVMLError_GpuIsLost,
            pynvml.NVML_ERROR_GPU_IS_LOST,
            id="lost-old-handle",
        ),
        pytest.param(
            lambda n: n.devices[0].unsupported.add("nvmlDeviceGetPowerUsage"),
            lambda n, h: n.nvmlDeviceGetPowerUsage(h),
            pynvml.NVMLError_NotSupported,
            pynvml.NVML_ERROR_NOT_SUPPORTED,
            id="not-supported",
        ),
        pytest.param(
            lambda n: n.nvmlShutdown(),
            lambda n, h: n.nvmlDeviceGetCount(),
            pynvml.NVMLError_Uninitialized,
            pynvml.NVML_ERROR_UNINITIALIZED,
            id="after-shutdown",
        ),
        pytest.param(
            lambda n: None,
            lambda n, h: n.nvmlDeviceGetHandleByIndex(5),
            pynvml.NVMLError_InvalidArgument,
            pynvml.NVML_ERROR_INVALID_ARGUMENT,
            id="bad-index",
        ),
    ],
)
def test_errors_are_pynvml_exceptions(
    nvml: FakeNVML,
    setup: Callable[[FakeNVML], object],
    call: Callable[[FakeNVML, object], object],
    cls: type[Exception],
    code: int,
) -> None:
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    setup(nvml)
    with pytest.raises(cls) as caught:
        call(nvml, handle)
    assert isinstance(caught.value, pynvml.NVMLError)
    assert caught.value.value == code


def test_calls_before_init_raise_uninitialized() -> None:
    fake = FakeNVML([device()])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_init_error_raises_the_mapped_class() -> None:
    fake = FakeNVML([device()], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        fake.nvmlInit()


def test_devices_are_read_live_and_calls_counted(nvml: FakeNVML) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.devices[0].power_mw = 312_500
    assert nvml.nvmlDeviceGetPowerUsage(h) == 312_500
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 1
