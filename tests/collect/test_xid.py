"""XIDCollector on captured kernel logs (syslog, dmesg, /dev/kmsg, journal) and the fake NVML."""

from __future__ import annotations

import inspect
import os
import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pynvml
import pytest

from fleetscope import catalog
from fleetscope.collect import Sample
from fleetscope.collect.attribution import AllocationCollector, JobOwner
from fleetscope.collect.gpu import GPUCollector, GPUIdentity
from fleetscope.collect.xid import (
    ACTIONS,
    USED_FUNCTIONS,
    XID_ACTIONS,
    KmsgStream,
    XIDCollector,
    XidLine,
    action_of,
    parse_xid,
)
from fleetscope.simulate.nvml import FakeDevice, FakeNVML

DATA = Path(__file__).resolve().parents[1] / "data" / "collect" / "xid"
NODE = "gpu-node-1"
H100 = "NVIDIA H100 80GB HBM3"
UUID0 = "GPU-8c5e0f3a-1b2c-4d5e-8f90-0a1b2c3d4e5f"
UUID1 = "GPU-1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5"
UUID2 = "GPU-3b4c5d6e-7f80-4192-a3b4-c5d6e7f80912"
GPUS = {
    0: GPUIdentity(0, UUID0, H100, "0000:10:1c"),
    1: GPUIdentity(1, UUID1, H100, "0000:a1:00"),
    2: GPUIdentity(2, UUID2, H100, "0000:3b:00"),
}
OWNERS = {0: JobOwner("1234", "alice", "nlp"), 2: JobOwner("77", "unknown", "unknown")}
NOW = datetime(2024, 11, 28, 12, 0, tzinfo=UTC)
BTIME = datetime(2024, 11, 28, 9, 10, tzinfo=UTC)  # btime 1732785000 in node/proc/stat


def xid_collector(**kw: Any) -> XIDCollector:
    kw.setdefault("owner_of_gpu", OWNERS.get)
    kw.setdefault("clock", lambda: NOW)
    kw.setdefault("local_tz", UTC)
    return XIDCollector(NODE, GPUS, **kw)


def counts(samples: list[Sample]) -> dict[tuple[str, str, str, str], float]:
    """(gpu, gpu_uuid, xid, action) → value, checking every sample against the catalog."""
    metric = catalog.get("fleet_gpu_xid_errors_total")
    assert metric is not None
    out = {}
    for s in samples:
        assert s.name == "fleet_gpu_xid_errors_total"
        assert set(s.labels) == set(metric.labels)
        assert s.labels["node"] == NODE
        key = (s.labels["gpu"], s.labels["gpu_uuid"], s.labels["xid"], s.labels["action"])
        assert key not in out
        out[key] = s.value
    return out


# -- parsing and classification ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, name=python3, Row Remapper: New row "
            "marked for remapping, reset gpu to activate.",
            XidLine(
                63,
                "0000:10:1c",
                1896,
                "python3",
                "Row Remapper: New row marked for remapping, reset gpu to activate.",
            ),
            id="current",
        ),
        pytest.param(
            "NVRM: Xid (0000:03:00): 14, Channel 00000001",
            XidLine(14, "0000:03:00", None, None, "Channel 00000001"),
            id="old-no-pci-prefix-no-pid",
        ),
        pytest.param(
            "NVRM: Xid (PCI:0000:A1:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen "
            "off the bus.",
            XidLine(79, "0000:a1:00", None, None, "GPU has fallen off the bus."),
            id="unknown-pid-uppercase-pci",
        ),
        pytest.param(
            "NVRM: Xid (PCI:0000:65:00): 64, pid='N/A', Row Remapper: Failed to remap row",
            XidLine(64, "0000:65:00", None, None, "Row Remapper: Failed to remap row"),
            id="pid-na-no-name",
        ),
        pytest.param(
            "NVRM: Xid (PCI:0000:01:00): 45, pid=12542, name=VLLM::Worker, channel 0x00000002",
            XidLine(45, "0000:01:00", 12542, "VLLM::Worker", "channel 0x00000002"),
            id="name-with-colons",
        ),
        pytest.param("NVRM: GPU at PCI:0000:10:1c: GPU-8c5e0f3a", None, id="not-an-xid"),
    ],
)
def test_parse_xid(line: str, expected: XidLine | None) -> None:
    assert parse_xid(line) == expected


@pytest.mark.parametrize(
    ("xid", "message", "action"),
    [
        pytest.param(13, "", "restart_app", id="13-app"),
        pytest.param(31, "", "restart_app", id="31-page-fault"),
        pytest.param(43, "", "restart_app", id="43-app"),
        pytest.param(45, "", "restart_app", id="45-cleanup"),
        pytest.param(94, "", "restart_app", id="94-contained-ecc"),
        pytest.param(48, "", "reset_gpu", id="48-dbe"),
        pytest.param(63, "", "reset_gpu", id="63-remap-pending"),
        pytest.param(64, "", "rma", id="64-remap-failed"),
        pytest.param(74, "", "check_nvlink", id="74-nvlink"),
        pytest.param(79, "", "reboot_node", id="79-off-the-bus"),
        pytest.param(92, "", "reset_gpu", id="92-sbe-rate"),
        pytest.param(95, "", "reset_gpu", id="95-uncontained-ecc"),
        pytest.param(119, "", "reset_gpu", id="119-gsp-timeout"),
        pytest.param(120, "", "reset_gpu", id="120-gsp-error"),
        pytest.param(109, "", "investigate", id="not-in-table"),
        pytest.param(
            154,
            "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
            "reset_gpu",
            id="154-reset",
        ),
        pytest.param(
            154,
            "GPU recovery action changed from 0x1 (GPU Reset Required) to 0x2 (Node Reboot "
            "Required)",
            "reboot_node",
            id="154-reboot-not-the-from-part",
        ),
        pytest.param(154, "GPU recovery action changed", "investigate", id="154-unreadable"),
    ],
)
def test_action_of(xid: int, message: str, action: str) -> None:
    assert action_of(xid, message) == action


def test_every_table_action_is_a_known_action_with_a_reason() -> None:
    for xid, (action, reason) in XID_ACTIONS.items():
        assert action in ACTIONS, xid
        assert reason and "\n" not in reason, xid


# -- syslog file, from the start ---------------------------------------------------------------


def test_syslog_counts_labels_and_unknown_gpus() -> None:
    c = xid_collector(log_path=DATA / "kern.log", from_start=True)
    assert counts(c.collect()) == {
        ("0", UUID0, "63", "reset_gpu"): 1,
        ("0", UUID0, "13", "restart_app"): 2,
        ("0", UUID0, "43", "restart_app"): 1,
        ("1", UUID1, "79", "reboot_node"): 1,
        ("unknown", "unknown", "74", "check_nvlink"): 1,  # PCI 0000:db:00 is no known GPU
    }
    unknown = next(s for s in c.collect() if s.labels["gpu"] == "unknown")
    assert unknown.labels["gpu_model"] == "unknown"
    assert c.init_error is None


def test_syslog_events_carry_the_job_holding_the_gpu() -> None:
    c = xid_collector(log_path=DATA / "kern.log", from_start=True)
    c.collect()
    events = c.drain_events()
    assert [(e.kind, e.subject, e.attrs["xid"]) for e in events] == [
        ("xid", UUID0, 63),
        ("xid", UUID0, 13),
        ("xid", UUID0, 13),
        ("xid", UUID0, 43),
        ("xid", UUID1, 79),
        ("xid", NODE, 74),
    ]
    assert events[0].time == datetime(2024, 11, 28, 10, 0, tzinfo=UTC)
    assert events[0].attrs == {
        "node": NODE,
        "gpu": "0",
        "gpu_uuid": UUID0,
        "pci_bus_id": "0000:10:1c",
        "xid": 63,
        "action": "reset_gpu",
        "pid": 1896,
        "process": "python3",
        "job": "1234",
        "user": "alice",
        "team": "nlp",
        "message": "Row Remapper: New row marked for remapping, reset gpu to activate.",
    }
    off_the_bus = events[4]
    assert off_the_bus.time == datetime(2024, 11, 28, 10, 15, 40, tzinfo=UTC)
    assert (off_the_bus.attrs["pid"], off_the_bus.attrs["process"]) == (None, None)
    assert (off_the_bus.attrs["job"], off_the_bus.attrs["user"]) == (None, None)  # GPU 1 is free
    assert events[5].attrs == {
        "node": NODE,
        "gpu": None,
        "gpu_uuid": None,
        "pci_bus_id": "0000:db:00",
        "xid": 74,
        "action": "check_nvlink",
        "pid": None,
        "process": None,
        "job": None,
        "user": None,
        "team": None,
        "message": "NVLink: fatal error detected on link 4(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)",
    }
    assert c.drain_events() == []  # drained
    c.collect()
    assert c.drain_events() == []  # nothing new in the file


def test_syslog_year_is_inferred_and_the_local_zone_applies() -> None:
    cet = timezone(timedelta(hours=1))
    january = datetime(2025, 1, 2, tzinfo=UTC)  # last November's lines read in January
    c = xid_collector(
        log_path=DATA / "kern.log", from_start=True, local_tz=cet, clock=lambda: january
    )
    c.collect()
    first = c.drain_events()[0]
    assert first.time == datetime(2024, 11, 28, 9, 0, tzinfo=UTC)


def test_rfc3339_syslog_and_short_iso_times() -> None:
    c = xid_collector(log_path=DATA / "syslog-rfc3339.log", from_start=True)
    assert counts(c.collect()) == {
        ("0", UUID0, "45", "restart_app"): 1,
        ("0", UUID0, "92", "reset_gpu"): 1,
    }
    first, second = c.drain_events()
    assert first.time == datetime(2024, 11, 28, 9, 1, 0, 123456, tzinfo=UTC)
    assert second.time == datetime(2024, 11, 28, 10, 1, 30, tzinfo=UTC)
    assert (second.attrs["pid"], second.attrs["message"]) == (
        None,
        "High single-bit ECC error rate",
    )


# -- dmesg, kmsg, journal ----------------------------------------------------------------------


def test_dmesg_seconds_since_boot_use_btime(tmp_path: Path) -> None:
    shutil.copytree(DATA / "node" / "proc", tmp_path / "proc")
    shutil.copy(DATA / "dmesg.txt", tmp_path / "dmesg.txt")
    c = xid_collector(log_path="/dmesg.txt", root=tmp_path, from_start=True)  # under root
    assert counts(c.collect()) == {
        ("2", UUID2, "48", "reset_gpu"): 1,  # old line format: (0000:3b:00), no pid
        ("2", UUID2, "94", "restart_app"): 1,
        ("2", UUID2, "154", "reset_gpu"): 1,  # recovery action from the message
        ("2", UUID2, "109", "investigate"): 1,
    }
    events = c.drain_events()
    assert [e.time for e in events] == [
        BTIME + timedelta(seconds=1236.000002),
        BTIME + timedelta(seconds=1240.5),
        BTIME + timedelta(seconds=1241.25),
        BTIME + timedelta(seconds=1302),
    ]
    assert events[1].attrs["process"] == "pt_main_thread"
    assert events[1].attrs["job"] == "77" and events[1].attrs["user"] is None


def test_dmesg_without_boot_time_uses_now_and_dmesg_t_is_local(tmp_path: Path) -> None:
    shutil.copy(DATA / "dmesg.txt", tmp_path / "dmesg.txt")
    shutil.copy(DATA / "dmesg-T.txt", tmp_path / "dmesg-T.txt")
    c = xid_collector(log_path="dmesg.txt", root=tmp_path, from_start=True)
    c.collect()
    assert {e.time for e in c.drain_events()} == {NOW}  # no proc/stat under this root
    c = xid_collector(log_path="dmesg-T.txt", root=tmp_path, from_start=True)
    assert counts(c.collect()) == {("2", UUID2, "119", "reset_gpu"): 1}
    (event,) = c.drain_events()
    assert event.time == datetime(2024, 11, 28, 10, 15, 40, tzinfo=UTC)


def test_kmsg_records_as_a_plain_file() -> None:
    c = xid_collector(kmsg=True, root=DATA / "node", from_start=True)
    assert counts(c.collect()) == {
        ("0", UUID0, "95", "reset_gpu"): 1,
        ("0", UUID0, "64", "rma"): 1,
    }
    uncontained, remap_failed = c.drain_events()
    assert uncontained.time == BTIME + timedelta(seconds=1236.000002)
    assert (uncontained.attrs["pid"], uncontained.attrs["process"]) == (3001, "python")
    assert remap_failed.time == BTIME + timedelta(seconds=1300)
    assert remap_failed.attrs["message"] == "Row Remapper: Failed to remap row"


def test_kmsg_stream_reads_a_fifo_non_blocking(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    shutil.copytree(DATA / "node" / "proc", tmp_path / "proc")
    fifo = tmp_path / "dev" / "kmsg"
    os.mkfifo(fifo)
    c = xid_collector(kmsg=True, root=tmp_path)
    assert isinstance(c._log, KmsgStream)
    assert c.collect() == []  # nothing written yet; the read does not block
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        records = (DATA / "node" / "dev" / "kmsg").read_bytes()
        os.write(writer, records[:100])  # a record cut in two
        assert c.collect() == []
        os.write(writer, records[100:])
        assert counts(c.collect()) == {
            ("0", UUID0, "95", "reset_gpu"): 1,
            ("0", UUID0, "64", "rma"): 1,
        }
    finally:
        os.close(writer)
        c.close()


def test_missing_kmsg_sets_init_error(tmp_path: Path) -> None:
    c = xid_collector(kmsg=True, root=tmp_path)
    assert c.collect() == []
    assert c.init_error is not None and "kmsg" in c.init_error


def test_journal_export_and_json() -> None:
    c = xid_collector(log_path=DATA / "journal.export", from_start=True)
    assert counts(c.collect()) == {("0", UUID0, "31", "restart_app"): 1}
    (event,) = c.drain_events()
    assert event.time == datetime(2024, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
    assert event.attrs["pid"] == 4242
    c = xid_collector(log_path=DATA / "journal.json", from_start=True)
    assert counts(c.collect()) == {("0", UUID0, "45", "restart_app"): 1}
    (event,) = c.drain_events()
    assert event.time == datetime(2024, 11, 28, 10, 1, tzinfo=UTC)


# -- tailing -----------------------------------------------------------------------------------


XID_A = "Nov 28 11:00:00 gpu-node-1 kernel: NVRM: Xid (PCI:0000:10:1c): 31, pid=7, name=a, x\n"
XID_B = "Nov 28 11:00:01 gpu-node-1 kernel: NVRM: Xid (PCI:0000:a1:00): 48, DBE\n"


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def test_history_is_not_recounted_and_appends_are_followed(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    shutil.copy(DATA / "kern.log", log)
    c = xid_collector(log_path=log)
    assert c.collect() == []  # the first open starts at the end: an agent restart
    assert c.drain_events() == []
    append(log, XID_A)
    assert counts(c.collect()) == {("0", UUID0, "31", "restart_app"): 1}
    half = XID_B.index("48")
    append(log, XID_B[:half])  # the writer is mid-line
    assert counts(c.collect()) == {("0", UUID0, "31", "restart_app"): 1}
    append(log, XID_B[half:] + XID_A)
    assert counts(c.collect()) == {
        ("0", UUID0, "31", "restart_app"): 2,
        ("1", UUID1, "48", "reset_gpu"): 1,
    }
    assert [e.attrs["xid"] for e in c.drain_events()] == [31, 48, 31]


def test_truncation_restarts_at_the_beginning(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    shutil.copy(DATA / "kern.log", log)
    c = xid_collector(log_path=log)
    c.collect()
    append(log, XID_A)
    c.collect()
    with log.open("w", encoding="utf-8") as f:  # logrotate copytruncate
        f.truncate(0)
    assert counts(c.collect()) == {("0", UUID0, "31", "restart_app"): 1}
    append(log, XID_B)
    assert counts(c.collect()) == {
        ("0", UUID0, "31", "restart_app"): 1,
        ("1", UUID1, "48", "reset_gpu"): 1,
    }


def test_rotation_reads_the_old_file_to_its_end_then_the_new_from_its_start(
    tmp_path: Path,
) -> None:
    log = tmp_path / "kern.log"
    log.write_text("")
    c = xid_collector(log_path=log)
    c.collect()
    append(log, XID_A)  # written just before the rotation, not yet read
    log.rename(tmp_path / "kern.log.1")
    log.write_text(XID_B + XID_B)
    assert counts(c.collect()) == {
        ("0", UUID0, "31", "restart_app"): 1,
        ("1", UUID1, "48", "reset_gpu"): 2,
    }
    assert c.init_error is None


def test_a_log_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    c = xid_collector(log_path=log)
    assert c.collect() == []
    assert c.init_error is not None and "kern.log" in c.init_error
    log.write_text(XID_A)
    assert counts(c.collect()) == {("0", UUID0, "31", "restart_app"): 1}
    assert c.init_error is None


def test_a_failing_owner_lookup_and_identities_cost_nothing(tmp_path: Path) -> None:
    def broken_owner(index: int) -> JobOwner | None:
        raise RuntimeError("no prolog view")

    def broken_gpus() -> dict[int, GPUIdentity]:
        raise RuntimeError("NVML gone")

    log = tmp_path / "kern.log"
    log.write_text(XID_A)
    c = xid_collector(log_path=log, from_start=True, owner_of_gpu=broken_owner)
    assert counts(c.collect()) == {("0", UUID0, "31", "restart_app"): 1}
    assert c.drain_events()[0].attrs["job"] is None
    c = XIDCollector(NODE, broken_gpus, log_path=log, from_start=True, clock=lambda: NOW)
    assert counts(c.collect()) == {("unknown", "unknown", "31", "restart_app"): 1}


def test_one_source_is_required() -> None:
    with pytest.raises(ValueError, match="not both"):
        XIDCollector(NODE, GPUS, log_path="/var/log/kern.log", kmsg=True)
    with pytest.raises(ValueError, match="needs a source"):
        XIDCollector(NODE, GPUS)


# -- wiring with the GPU and allocation collectors ---------------------------------------------


def test_gpu_identities_and_prolog_owners_wire_in(tmp_path: Path) -> None:
    (tmp_path / "run" / "gpustat").mkdir(parents=True)
    (tmp_path / "run" / "gpustat" / "0").write_text("4321 1000\nuser=dana\naccount=vision\n")
    (tmp_path / "var" / "log").mkdir(parents=True)
    log = tmp_path / "var" / "log" / "kern.log"
    log.write_text("")
    nvml = FakeNVML(
        [
            FakeDevice(0, UUID0, H100, pci_bus_id="00000000:10:1C.0"),
            FakeDevice(1, UUID1, H100, pci_bus_id="00000000:A1:00.0"),
        ]
    )
    gpu = GPUCollector(NODE, nvml)
    alloc = AllocationCollector(
        NODE, gpu.identities, root=tmp_path, processes=gpu.processes, team_map={"vision": "cv"}
    )
    c = XIDCollector(
        NODE,
        gpu.identities,
        log_path="/var/log/kern.log",
        root=tmp_path,
        owner_of_gpu=alloc.owner_of_gpu,
        clock=lambda: NOW,
        local_tz=UTC,
    )
    c.collect()
    append(log, XID_A + XID_B)
    assert counts(c.collect()) == {
        ("0", UUID0, "31", "restart_app"): 1,
        ("1", UUID1, "48", "reset_gpu"): 1,
    }
    first, second = c.drain_events()
    assert (first.attrs["job"], first.attrs["user"], first.attrs["team"]) == ("4321", "dana", "cv")
    assert second.attrs["job"] is None


# -- the NVML event path -----------------------------------------------------------------------


@pytest.mark.parametrize("name", USED_FUNCTIONS)
def test_nvml_functions_have_pynvml_signatures(name: str) -> None:
    real = inspect.signature(getattr(pynvml, name))
    fake = inspect.signature(getattr(FakeNVML([]), name))
    assert list(fake.parameters) == list(real.parameters)


def fake_nvml(**kw: Any) -> FakeNVML:
    return FakeNVML(
        [
            FakeDevice(0, UUID0, H100, pci_bus_id="00000000:10:1C.0", **kw),
            FakeDevice(1, UUID1, H100, pci_bus_id="00000000:A1:00.0"),
        ]
    )


def test_nvml_events_are_counted_without_a_kernel_log() -> None:
    nvml = fake_nvml()
    gpu = GPUCollector(NODE, nvml)
    c = XIDCollector(NODE, gpu.identities, nvml=nvml, owner_of_gpu=OWNERS.get, clock=lambda: NOW)
    assert c.collect() == [] and c.init_error is None
    assert nvml.inject_xid(0, 79) == 1
    nvml.inject_xid(1, 13)
    nvml.inject_xid(0, 79)
    assert counts(c.collect()) == {
        ("0", UUID0, "79", "reboot_node"): 2,
        ("1", UUID1, "13", "restart_app"): 1,
    }
    events = c.drain_events()
    assert [(e.subject, e.time) for e in events] == [(UUID0, NOW), (UUID1, NOW), (UUID0, NOW)]
    assert events[0].attrs == {
        "node": NODE,
        "gpu": "0",
        "gpu_uuid": UUID0,
        "pci_bus_id": "0000:10:1c",
        "xid": 79,
        "action": "reboot_node",
        "pid": None,
        "process": None,
        "job": "1234",
        "user": "alice",
        "team": "nlp",
        "message": None,
    }
    assert counts(c.collect())[("0", UUID0, "79", "reboot_node")] == 2  # drained, not recounted
    c.close()
    assert nvml.event_sets[0].freed


def test_the_kernel_log_wins_over_nvml_events(tmp_path: Path) -> None:
    nvml = fake_nvml()
    log = tmp_path / "kern.log"
    log.write_text("")
    c = xid_collector(log_path=log, nvml=nvml)
    c.collect()
    nvml.inject_xid(0, 31)  # the driver reports it both ways
    append(log, XID_A)
    assert counts(c.collect()) == {("0", UUID0, "31", "restart_app"): 1}
    log.unlink()  # the log is gone: NVML carries on
    nvml.inject_xid(1, 48)
    assert counts(c.collect()) == {
        ("0", UUID0, "31", "restart_app"): 1,
        ("1", UUID1, "48", "reset_gpu"): 1,
    }
    assert c.init_error is None


def test_nvml_without_event_support_sets_init_error() -> None:
    nvml = fake_nvml(unsupported={"nvmlDeviceRegisterEvents"})
    nvml.devices[1].unsupported.add("nvmlDeviceRegisterEvents")
    c = XIDCollector(NODE, GPUS, nvml=nvml)
    assert c.collect() == []
    assert c.init_error is not None and "registration" in c.init_error
    assert nvml.inject_xid(0, 79) == 0
