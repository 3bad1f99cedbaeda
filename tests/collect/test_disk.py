"""Storage collectors on captured /proc trees: diskstats, filesystems (fake statvfs) and NFS."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from fleetscope.collect import Sample
from fleetscope.collect.disk import (
    DiskCollector,
    NFSCollector,
    StatVFS,
    parse_mounts,
    parse_mountstats,
    unescape,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "collect" / "disk"
NODE1 = DATA / "node1"
SECTOR = 512
MIB = 1 << 20

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def series(samples: list[Sample]) -> Series:
    """Samples keyed by (name, labels without node); a duplicate series fails the test."""
    out: Series = {}
    for s in samples:
        labels = dict(s.labels)
        assert labels.pop("node") == "node1"
        key = (s.name, tuple(sorted(labels.items())))
        assert key not in out, f"duplicate series {key}"
        out[key] = s.value
    return out


def by(samples: list[Sample], label: str) -> dict[str, dict[str, float]]:
    """``{label value: {metric name: value}}`` of the samples that carry ``label``."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        if label in s.labels:
            out.setdefault(s.labels[label], {})[s.name] = s.value
    return out


class FakeStat(NamedTuple):
    f_blocks: int
    f_frsize: int
    f_bavail: int


# statvfs answers of node1, by mount point (block counts × fragment size in bytes).
FILESYSTEMS = {
    "/": FakeStat(487652345, 4096, 312345678),
    "/run": FakeStat(52840989, 4096, 52838000),
    "/run/lock": FakeStat(1280, 4096, 1280),
    "/boot/efi": FakeStat(261372, 4096, 259560),
    "/raid": FakeStat(7500000000, 4096, 6000000000),
    "/scratch": FakeStat(24413696, 4096, 20000000),
    "/datasets": FakeStat(524288000, MIB, 104857600),
    "/home": FakeStat(10485760, MIB, 5242880),
    "/mnt/team a": FakeStat(1048576, MIB, 524288),
    "/run/user/1000": FakeStat(52840988, 4096, 52840900),
}


class FakeStatvfs:
    """statvfs over FILESYSTEMS for a tree at ``root``; /mnt/archive is a stale NFS handle."""

    def __init__(self, root: Path, table: Mapping[str, FakeStat] = FILESYSTEMS) -> None:
        self.root = str(root)
        self.table = table
        self.calls: list[str] = []

    def mount_of(self, path: str) -> str:
        assert path.startswith(self.root), path
        return "/" + path[len(self.root) :].strip("/")

    def __call__(self, path: str) -> FakeStat:
        mount = self.mount_of(path)
        self.calls.append(mount)
        if mount == "/mnt/archive":
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), path)
        if mount not in self.table:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return self.table[mount]


def disk(
    root: Path = NODE1, statvfs: Callable[[str], StatVFS] | None = None, **kwargs: Any
) -> DiskCollector:
    return DiskCollector("node1", root, statvfs or FakeStatvfs(root), **kwargs)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(NODE1, tmp_path / "root")
    return tmp_path / "root"


# --- /proc/diskstats ------------------------------------------------------------------------


def test_diskstats_in_base_units_with_node_exporter_default_exclusions() -> None:
    c = disk()
    devices = by([s for s in c.collect() if s.name.startswith("fleet_disk")], "device")
    # loop0-2 and the partitions nvme0n1p1, nvme0n1p2, sda1 are excluded by default.
    assert sorted(devices) == ["dm-0", "md127", "nvme0n1", "nvme1n1", "nvme2n1", "sda"]
    # nvme0n1: 345678 reads, 98765432 sectors read, 123456 ms reading, 2345678 writes,
    # 456789012 sectors written, 2345678 ms writing, 987654 ms doing I/O.
    assert devices["nvme0n1"] == {
        "fleet_disk_reads_completed_total": 345678,
        "fleet_disk_read_bytes_total": 98765432 * SECTOR,
        "fleet_disk_read_time_seconds_total": pytest.approx(123.456),
        "fleet_disk_writes_completed_total": 2345678,
        "fleet_disk_written_bytes_total": 456789012 * SECTOR,
        "fleet_disk_write_time_seconds_total": pytest.approx(2345.678),
        "fleet_disk_io_time_seconds_total": pytest.approx(987.654),
    }
    # md127 keeps no times (md does not account them): zeros, not missing.
    assert devices["md127"]["fleet_disk_read_bytes_total"] == 14024345600 * SECTOR
    assert devices["md127"]["fleet_disk_io_time_seconds_total"] == 0
    assert c.init_error is None


SDA = {
    # 2048 sectors are 1048576 bytes, 4096 sectors 2 MiB, whatever the device's sector size.
    "fleet_disk_reads_completed_total": 2048,
    "fleet_disk_read_bytes_total": 1048576,
    "fleet_disk_read_time_seconds_total": 1.5,
    "fleet_disk_writes_completed_total": 512,
    "fleet_disk_written_bytes_total": 2 * MIB,
    "fleet_disk_write_time_seconds_total": 2.5,
    "fleet_disk_io_time_seconds_total": 3.0,
}


@pytest.mark.parametrize(
    ("tree_name", "devices"),
    [
        pytest.param("kernel-3.10", ["dm-0", "sda"], id="14-columns"),
        pytest.param("kernel-5.4", ["dm-0", "sda"], id="18-columns-discards"),
        pytest.param("node1", None, id="20-columns-discards-and-flushes"),
    ],
)
def test_every_kernel_layout_reads_the_same_fields(
    tree_name: str, devices: list[str] | None
) -> None:
    got = by(disk(DATA / tree_name).collect(), "device")
    assert got["sda"] == SDA
    if devices is not None:
        assert sorted(got) == devices


def test_ignore_nothing_keeps_loop_devices_and_partitions() -> None:
    got = by(disk(ignore_devices=None).collect(), "device")
    assert {"loop0", "loop1", "loop2", "nvme0n1p1", "nvme0n1p2", "sda1"} <= set(got)
    assert got["loop1"]["fleet_disk_read_bytes_total"] == 4098 * SECTOR
    only_nvme = by(disk(ignore_devices=r"^(?!nvme\d+n\d+$)").collect(), "device")
    assert sorted(d for d in only_nvme if "fleet_disk_reads_completed_total" in only_nvme[d]) == [
        "nvme0n1",
        "nvme1n1",
        "nvme2n1",
    ]


def test_malformed_diskstats_lines_cost_only_themselves(tree: Path) -> None:
    path = tree / "proc" / "diskstats"
    lines = path.read_text().splitlines()
    lines = [
        " 259       3 nvme1n1 8765432 0 7012345600" if " nvme1n1 " in line else line
        for line in lines
    ]
    lines.insert(0, " 259       9 nvme9n1 x y z 1 2 3 4 5 6 7 8 9 10 11 12 13 14")
    lines.append("")
    path.write_text("\n".join(lines))
    got = by(disk(tree).collect(), "device")
    assert sorted(d for d in got if d.startswith(("nvme", "sd", "md", "dm"))) == [
        "dm-0",
        "md127",
        "nvme0n1",
        "nvme2n1",
        "sda",
    ]
    assert got["sda"] == SDA


# --- /proc/mounts and statvfs -------------------------------------------------------------


def filesystems(c: DiskCollector) -> dict[str, dict[str, float]]:
    return by([s for s in c.collect() if s.name.startswith("fleet_filesystem")], "mount")


def expected_fs(mount: str) -> dict[str, float]:
    st = FILESYSTEMS[mount]
    return {
        "fleet_filesystem_size_bytes": st.f_blocks * st.f_frsize,
        "fleet_filesystem_avail_bytes": st.f_bavail * st.f_frsize,
    }


@pytest.mark.parametrize(
    "timeout", [pytest.param(5.0, id="threaded"), pytest.param(None, id="inline")]
)
def test_filesystems_skip_pseudo_filesystems_and_stale_mounts(timeout: float | None) -> None:
    fake = FakeStatvfs(NODE1)
    got = filesystems(disk(statvfs=fake, statvfs_timeout_s=timeout))
    # Not here: sysfs, proc, devtmpfs, cgroup2, bpf, autofs … (types), /dev/shm and efivarfs
    # (mount points under /dev and /sys), squashfs snaps, rpc_pipefs, docker's overlay and nsfs,
    # and /mnt/archive, whose statvfs fails with ESTALE.
    assert sorted(got) == sorted(FILESYSTEMS)
    for mount in FILESYSTEMS:
        assert got[mount] == expected_fs(mount), mount
    assert got["/"] == {
        "fleet_filesystem_size_bytes": 487652345 * 4096,
        "fleet_filesystem_avail_bytes": 312345678 * 4096,
    }
    # statvfs was tried once per remaining mount point (/scratch, mounted twice, once).
    assert sorted(fake.calls) == sorted([*FILESYSTEMS, "/mnt/archive"])


def test_mount_point_escapes_are_decoded() -> None:
    got = filesystems(disk())
    assert got["/mnt/team a"] == {
        "fleet_filesystem_size_bytes": 1048576 * MIB,
        "fleet_filesystem_avail_bytes": 524288 * MIB,
    }
    assert unescape(rb"/mnt/a\040b\011c\134d\012e") == b"/mnt/a b\tc\\d\ne"


def test_parse_mounts_keeps_non_utf8_paths_usable() -> None:
    raw = b"/dev/sdb1 /data/caf\xe9\\040bar ext4 rw 0 0\ngarbage\n"
    bad: list[str] = []
    (m,) = parse_mounts(raw, bad)
    assert m.label == "/data/caf\ufffd bar"
    assert os.fsencode(m.path) == b"/data/caf\xe9 bar"
    assert (m.device, m.fs_type) == ("/dev/sdb1", "ext4")
    assert bad == ["garbage"]


def test_overmounted_mount_point_reports_the_top_filesystem(tree: Path) -> None:
    # /scratch is listed as ext4 then xfs; ignore xfs to prove the last entry is the one used.
    got = filesystems(disk(tree, ignore_fs_types=r"^(xfs|proc|sysfs)$"))
    assert "/scratch" not in got and "/raid" not in got
    assert "/" in got


def test_a_hung_statvfs_is_skipped_without_blocking_the_others() -> None:
    release = threading.Event()
    inner = FakeStatvfs(NODE1)

    def hanging(path: str) -> FakeStat:
        if inner.mount_of(path) == "/home":
            release.wait()
        return inner(path)

    c = disk(statvfs=hanging, statvfs_timeout_s=0.05)
    try:
        first = filesystems(c)
        assert sorted(first) == sorted(m for m in FILESYSTEMS if m != "/home")
        assert c.stuck_mounts == {str(NODE1 / "home")}
        # Still stuck: skipped without another call (which would hang a second thread).
        calls = inner.calls.count("/home")
        assert "/home" not in filesystems(c)
        assert inner.calls.count("/home") == calls
    finally:
        release.set()
    deadline = 1000
    while c.stuck_mounts and deadline:
        time.sleep(0.01)
        deadline -= 1
    assert not c.stuck_mounts
    assert filesystems(c)["/home"] == expected_fs("/home")


def test_a_statvfs_raising_anything_costs_only_its_mount() -> None:
    inner = FakeStatvfs(NODE1)

    def broken(path: str) -> FakeStat:
        if inner.mount_of(path) == "/raid":
            raise RuntimeError("fake failure")
        return inner(path)

    for timeout in (None, 5.0):
        got = filesystems(disk(statvfs=broken, statvfs_timeout_s=timeout))
        assert sorted(got) == sorted(m for m in FILESYSTEMS if m != "/raid")


def test_real_statvfs_on_a_real_directory(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "mounts").write_text("/dev/vda1 / ext4 rw,relatime 0 0\n")
    c = DiskCollector("node1", tmp_path)  # os.statvfs of tmp_path itself
    st = os.statvfs(tmp_path)
    got = filesystems(c)
    assert got["/"]["fleet_filesystem_size_bytes"] == st.f_blocks * st.f_frsize
    assert c.init_error is None  # diskstats is missing, mounts is not


@pytest.mark.parametrize(
    ("missing", "left", "init_error"),
    [
        pytest.param(["diskstats"], "fleet_filesystem", False, id="no-diskstats"),
        pytest.param(["mounts"], "fleet_disk", False, id="no-mounts"),
        pytest.param(["diskstats", "mounts"], None, True, id="nothing"),
    ],
)
def test_missing_files(tree: Path, missing: list[str], left: str | None, init_error: bool) -> None:
    for name in missing:
        (tree / "proc" / name).unlink()
    c = disk(tree)
    names = {s.name for s in c.collect()}
    if left is None:
        assert names == set()
    else:
        assert names and all(n.startswith(left) for n in names)
    assert (c.init_error is not None) == init_error
    if init_error:
        shutil.copy(NODE1 / "proc" / "mounts", tree / "proc" / "mounts")
        c.collect()
        assert c.init_error is None


# --- /proc/self/mountstats ----------------------------------------------------------------


def nfs(root: Path = NODE1, ops: tuple[str, ...] | None = None) -> tuple[NFSCollector, Series]:
    c = NFSCollector("node1", root) if ops is None else NFSCollector("node1", root, ops=ops)
    return c, series(c.collect())


def key(
    name: str, mount: str, export: str, op: str | None = None
) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"mount": mount, "export": export} | ({"op": op} if op else {})
    return (name, tuple(sorted(labels.items())))


def nfs_series(
    mount: str,
    export: str,
    read: int,
    written: int,
    ops: Mapping[str, tuple[int, float]],
) -> Series:
    out = {
        key("fleet_nfs_read_bytes_total", mount, export): float(read),
        key("fleet_nfs_written_bytes_total", mount, export): float(written),
    }
    for op, (count, rtt_s) in ops.items():
        out[key("fleet_nfs_rpc_operations_total", mount, export, op)] = float(count)
        out[key("fleet_nfs_rpc_rtt_seconds_total", mount, export, op)] = rtt_s
    return out


NODE1_NFS: Series = {
    # v3: "bytes: 2199023255552 0 0 0 1649267441664 0 …": server bytes, not application bytes.
    **nfs_series(
        "/datasets",
        "nas01:/export/datasets",
        1649267441664,
        0,
        {"READ": (1572864, 7654.321), "WRITE": (0, 0.0)},
    ),
    # v4.2: READ 83612 ops, 4181234 ms RTT; WRITE 4711 ops, 98765 ms RTT.
    **nfs_series(
        "/home",
        "10.20.0.5:/home",
        87654321000,
        1234567000,
        {"READ": (83612, 4181.234), "WRITE": (4711, 98.765)},
    ),
    # Escaped mount point and export (\040); O_DIRECT writes reach the server too.
    **nfs_series(
        "/mnt/team a",
        "10.20.0.5:/projects/team a",
        4294967296,
        12884901888,
        {"READ": (4096, 20.48), "WRITE": (12288, 184.32)},
    ),
    **nfs_series("/mnt/archive", "10.20.0.9:/archive", 0, 0, {"READ": (0, 0.0), "WRITE": (0, 0.0)}),
}


def test_nfs_v3_and_v4_mounts_and_nothing_else() -> None:
    c, got = nfs()
    assert got == pytest.approx(NODE1_NFS)
    assert c.init_error is None


def test_nfs_op_list_is_a_parameter() -> None:
    _, got = nfs(ops=("READ", "WRITE", "GETATTR"))
    getattr_ops = {
        k[1]: v
        for k, v in got.items()
        if ("op", "GETATTR") in k[1] and k[0] == "fleet_nfs_rpc_operations_total"
    }
    assert sorted(getattr_ops.values()) == [380, 12345, 345678, 456789]
    assert got[key("fleet_nfs_rpc_rtt_seconds_total", "/home", "10.20.0.5:/home", "GETATTR")] == (
        pytest.approx(234.567)
    )
    _, reads_only = nfs(ops=("READ",))
    assert not any(("op", "WRITE") in k[1] for k in reads_only)


def test_nfs_statvers_1_0_per_op_lines_without_errors_field() -> None:
    _, got = nfs(DATA / "kernel-3.10")
    assert got == pytest.approx(
        nfs_series(
            "/home",
            "fs01:/vol/home",
            17179869184,
            8589934592,
            {"READ": (262144, 1310.72), "WRITE": (131072, 917.504)},
        )
    )


def test_nfs_malformed_lines_cost_only_themselves(tree: Path) -> None:
    path = tree / "proc" / "self" / "mountstats"
    text = path.read_text()
    home = text.index("device 10.20.0.5:/home ")
    head, tail = text[:home], text[home:]
    tail = tail.replace("READ: 83612 83612 0", "READ: 83612 x 0", 1)
    tail = tail.replace(
        "bytes:\t5368709120 10737418240 0 2147483648 4294967296 12884901888",
        "bytes:\t5368709120 10737418240",
        1,
    )
    assert text.index("device 10.20.0.5:/projects/team") > home
    path.write_text(head + "device garbage\n\tbytes:\t1 2 3 4 5 6 7 8\n" + tail)
    _, got = nfs(tree)
    expected = dict(NODE1_NFS)
    del expected[key("fleet_nfs_rpc_operations_total", "/home", "10.20.0.5:/home", "READ")]
    del expected[key("fleet_nfs_rpc_rtt_seconds_total", "/home", "10.20.0.5:/home", "READ")]
    export = "10.20.0.5:/projects/team a"
    del expected[key("fleet_nfs_read_bytes_total", "/mnt/team a", export)]
    del expected[key("fleet_nfs_written_bytes_total", "/mnt/team a", export)]
    assert got == pytest.approx(expected)


def test_parse_mountstats_ends_a_mount_at_any_mount_line() -> None:
    text = (
        "device srv:/a mounted on /a with fstype nfs statvers=1.1\n"
        "\tbytes:\t1 2 3 4 5 6 7 8\n"
        "\tper-op statistics\n"
        "\t        READ: 1 1 0 0 0 0 1000 0 0\n"
        "no device mounted on /b with fstype tmpfs\n"
        "\t        WRITE: 9 9 0 0 0 0 9000 0 0\n"
    )
    bad: list[str] = []
    (m,) = parse_mountstats(text, ("READ", "WRITE"), bad)
    assert (m.export, m.mount, m.read_bytes, m.written_bytes) == ("srv:/a", "/a", 5, 6)
    assert m.ops == {"READ": (1, 1.0)}
    assert bad == []


def test_missing_mountstats_sets_init_error(tmp_path: Path) -> None:
    c, got = nfs(tmp_path)
    assert got == {}
    assert c.init_error is not None and "mountstats" in c.init_error


def test_collectors_have_their_agent_names() -> None:
    assert (DiskCollector.name, NFSCollector.name) == ("disk", "nfs")
