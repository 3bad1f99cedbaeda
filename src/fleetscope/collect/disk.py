"""Storage collectors: block-device I/O, filesystem space and NFS client traffic of a node.

Both read a node root directory ``root`` (``/`` on a real node, ``/host`` in a container that
mounts the host's root there, a fake tree in tests and in the simulator), as node_exporter's
``--path.procfs`` / ``--path.rootfs`` do. ``/proc/mounts`` and ``/proc/self/mountstats`` describe
the mount namespace of the process that reads them: an agent in a container sees the host's
mounts only when it runs in the host's mount namespace (or with the host's mounts propagated).

:class:`DiskCollector` (name ``disk``), labels ``{node, device}`` and ``{node, mount}``:

========================================  =====================================================
metric                                    source → unit conversion
========================================  =====================================================
``fleet_disk_reads_completed_total``      ``/proc/diskstats`` field 1, reads completed
``fleet_disk_read_bytes_total``           field 3, sectors read × 512
``fleet_disk_read_time_seconds_total``    field 4, ms spent reading ÷ 1000
``fleet_disk_writes_completed_total``     field 5, writes completed
``fleet_disk_written_bytes_total``        field 7, sectors written × 512
``fleet_disk_write_time_seconds_total``   field 8, ms spent writing ÷ 1000
``fleet_disk_io_time_seconds_total``      field 10, ms spent doing I/Os ÷ 1000
``fleet_filesystem_size_bytes``           ``statvfs(root + mount point)``: ``f_blocks × f_frsize``
``fleet_filesystem_avail_bytes``          ``f_bavail × f_frsize`` (space unprivileged users get)
========================================  =====================================================

``/proc/diskstats`` (kernel Documentation/admin-guide/iostats.rst) has one line per block device:
major, minor, name, then 11 fields (kernels before 4.18), 15 (4.18+: discards) or 17 (5.5+:
flushes), so 14, 18 or 20 columns; lines with more columns (a later kernel) are read by the same
positions, lines with fewer are malformed and skipped. The semantics are node_exporter's: a
"sector" is always 512 bytes whatever the device's sector size (the block layer counts in 512-byte
units), times are cumulative milliseconds (for reads and writes, summed over all requests, so they
can grow faster than wall time), and a device whose name matches ``ignore_devices`` is skipped;
the default is node_exporter's ``--collector.diskstats.device-exclude``, which drops partitions
(``sda1``, ``nvme0n1p2``: counted in their disk), ``loop``, ``ram``/``zram`` and ``fd`` devices.

Filesystems come from ``root/proc/mounts`` (proc(5), fstab format: device, mount point, type …;
the kernel writes space, tab, newline and backslash in names as octal escapes like ``\\040``,
which are decoded). Pseudo filesystems are skipped by type (``ignore_fs_types``, default
node_exporter's ``--collector.filesystem.fs-types-exclude``) and by mount point
(``ignore_mounts``, default node_exporter's ``--collector.filesystem.mount-points-exclude``:
``/dev``, ``/proc``, ``/sys``, container layers). A mount point listed twice is reported once, as
its last entry (the one on top). ``statvfs`` is injectable: tests and the simulator pass a
function returning fake numbers. A mount whose ``statvfs`` fails (``ESTALE`` from a stale NFS
handle, a vanished mount) is skipped, logged once. A ``statvfs`` that *hangs* (a hard NFS mount
whose server is gone) must not stall the agent: with ``statvfs_timeout_s`` set (default 5 s, as
node_exporter's ``--collector.filesystem.mount-timeout``), each call runs in a daemon thread;
after the timeout the mount is skipped and marked stuck, and later collects skip it without
calling ``statvfs`` until the stuck call returns (node_exporter's "stuck mounts").
``statvfs_timeout_s=None`` calls ``statvfs`` inline (for fakes that cannot hang).

:class:`NFSCollector` (name ``nfs``), from ``root/proc/self/mountstats`` (proc_pid_mountstats(5);
per-mount NFS statistics, include/linux/nfs_iostat.h). Each mount starts with a line
``device SERVER:/export mounted on /mnt with fstype nfs4 statvers=1.1`` (escaped like
/proc/mounts; ``no device mounted on …`` when there is no device name); mounts of types other
than ``nfs`` and ``nfs4`` are ignored. Labels ``{node, mount, export}`` (``export`` is the
device, ``SERVER:/path``), plus ``op`` for the per-operation series:

====================================  ========================================================
metric                                source → unit conversion
====================================  ========================================================
``fleet_nfs_read_bytes_total``        ``bytes:`` field 5, ``serverreadbytes``
``fleet_nfs_written_bytes_total``     ``bytes:`` field 6, ``serverwritebytes``
``fleet_nfs_rpc_operations_total``    per-op line ``OP: ops trans timeouts bytes_sent
                                      bytes_recv queue_ms rtt_ms execute_ms [errors]``: ``ops``
``fleet_nfs_rpc_rtt_seconds_total``   the same line's cumulative ``rtt_ms`` ÷ 1000
====================================  ========================================================

Which bytes: the ``bytes:`` line is ``normalreadbytes normalwritebytes directreadbytes
directwritebytes serverreadbytes serverwritebytes readpages writepages``. The normal and direct
counters count what applications asked of ``read``/``write`` (buffered and ``O_DIRECT``), page
cache hits included; the server counters count the payload of the READ and WRITE RPCs, i.e. the
data that crossed the network between the storage server and this compute node. Fleetscope
reports the server counters, because the question they answer is the storage-to-compute transfer
rate (RPC headers are not included). ``ops`` is the number of requests of that operation; the
mean RTT over an interval is ``rate(rtt) / rate(operations)``. Only the operations in ``ops``
(default READ and WRITE) are emitted, to keep cardinality small.

Every reader tolerates a missing file (no samples; ``init_error`` set when the collector's whole
source is absent: both files for ``disk``, mountstats for ``nfs``) and a malformed line (that
line is skipped, logged once).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleetscope.collect import Sample

__all__ = [
    "DEFAULT_IGNORED_DEVICES",
    "DEFAULT_IGNORED_FS_TYPES",
    "DEFAULT_IGNORED_MOUNTS",
    "DEFAULT_NFS_OPS",
    "SECTOR_BYTES",
    "DiskCollector",
    "DiskStats",
    "Mount",
    "NFSCollector",
    "NFSMount",
    "StatVFS",
    "parse_diskstats",
    "parse_mounts",
    "parse_mountstats",
    "unescape",
]

log = logging.getLogger(__name__)

DEFAULT_IGNORED_DEVICES = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"
DEFAULT_IGNORED_FS_TYPES = (
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs"
    r"|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs"
    r"|sysfs|tracefs)$"
)
DEFAULT_IGNORED_MOUNTS = (
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)
DEFAULT_NFS_OPS: tuple[str, ...] = ("READ", "WRITE")
SECTOR_BYTES = 512  # the block layer's unit in /proc/diskstats, whatever the device's sector size
NFS_TYPES = frozenset({"nfs", "nfs4"})

_ESCAPE = re.compile(rb"\\([0-7]{3})")
_MIN_DISKSTATS_COLUMNS = 14  # major, minor, name and the 11 fields every kernel since 2.6 has


class StatVFS(Protocol):
    """The fields of ``os.statvfs_result`` this module reads (block counts, fragment bytes)."""

    @property
    def f_frsize(self) -> int: ...
    @property
    def f_blocks(self) -> int: ...
    @property
    def f_bavail(self) -> int: ...


@dataclass(frozen=True)
class DiskStats:
    """One /proc/diskstats line in base units (bytes, seconds)."""

    device: str
    reads_completed: int
    read_bytes: int
    read_time_s: float
    writes_completed: int
    written_bytes: int
    write_time_s: float
    io_time_s: float


@dataclass(frozen=True)
class Mount:
    """One /proc/mounts line: the mount point decoded (``label`` for series, ``path`` for I/O)."""

    device: str
    label: str  # the mount point as text (invalid UTF-8 replaced)
    path: str  # the mount point as an OS path (invalid UTF-8 kept as surrogates)
    fs_type: str


@dataclass
class NFSMount:
    """One NFS mount of /proc/self/mountstats; ``None``: the file does not say.

    ``ops`` maps an operation name to ``(requests, cumulative rtt seconds)``.
    """

    export: str
    mount: str
    fs_type: str
    read_bytes: int | None = None  # serverreadbytes
    written_bytes: int | None = None  # serverwritebytes
    ops: dict[str, tuple[int, float]] | None = None


def unescape(raw: bytes) -> bytes:
    """Decode the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\134`` backslash)."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), raw)


def _text(raw: bytes) -> str:
    return unescape(raw).decode("utf-8", errors="replace")


def parse_diskstats(text: str, bad: list[str] | None = None) -> Iterator[DiskStats]:
    """The devices of a /proc/diskstats text; malformed lines are skipped (appended to ``bad``)."""
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) < _MIN_DISKSTATS_COLUMNS:
                raise ValueError("too few fields")
            f = [int(x) for x in parts[3:_MIN_DISKSTATS_COLUMNS]]  # f[0] is the doc's field 1
            if min(f) < 0:
                raise ValueError("negative counter")
        except ValueError:
            if bad is not None:
                bad.append(line)
            continue
        yield DiskStats(
            device=parts[2],
            reads_completed=f[0],
            read_bytes=f[2] * SECTOR_BYTES,
            read_time_s=f[3] / 1000,
            writes_completed=f[4],
            written_bytes=f[6] * SECTOR_BYTES,
            write_time_s=f[7] / 1000,
            io_time_s=f[9] / 1000,
        )


def parse_mounts(raw: bytes, bad: list[str] | None = None) -> Iterator[Mount]:
    """The entries of a /proc/mounts text (bytes: names need not be UTF-8), escapes decoded."""
    for line in raw.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or not parts[1].startswith(b"/"):
            if bad is not None:
                bad.append(line.decode("utf-8", errors="replace"))
            continue
        point = unescape(parts[1])
        yield Mount(
            device=_text(parts[0]),
            label=point.decode("utf-8", errors="replace"),
            path=os.fsdecode(point),
            fs_type=_text(parts[2]),
        )


def parse_mountstats(
    text: str, ops: Collection[str] = DEFAULT_NFS_OPS, bad: list[str] | None = None
) -> Iterator[NFSMount]:
    """The NFS mounts of a /proc/self/mountstats text, with the per-op counters of ``ops``."""
    current: NFSMount | None = None
    in_ops = False
    for line in text.splitlines():
        if line.startswith(("device ", "no device ")):
            if current is not None:
                yield current
            current, well_formed = _mount_line(line)
            in_ops = False
            if not well_formed and bad is not None:
                bad.append(line)
            continue
        if current is None:
            continue
        stripped = line.strip()
        key, sep, rest = stripped.partition(":")
        if stripped == "per-op statistics":
            in_ops = True
        elif not sep:
            continue
        elif key == "bytes" and not in_ops:
            try:
                values = [int(x) for x in rest.split()]
                current.read_bytes, current.written_bytes = values[4], values[5]
            except (ValueError, IndexError):
                if bad is not None:
                    bad.append(line)
        elif in_ops and key in ops:
            try:
                values = [int(x) for x in rest.split()]
                requests, rtt_ms = values[0], values[6]
            except (ValueError, IndexError):
                if bad is not None:
                    bad.append(line)
                continue
            if current.ops is None:
                current.ops = {}
            current.ops[key] = (requests, rtt_ms / 1000)
    if current is not None:
        yield current


def _mount_line(line: str) -> tuple[NFSMount | None, bool]:
    """``device DEV mounted on MP with fstype T …`` → (an empty NFSMount or ``None`` when the
    mount is not NFS, whether the line is well formed)."""
    parts = line.split()
    if parts[:2] == ["no", "device"]:  # "no device mounted on …": no device name, not NFS
        return None, len(parts) >= 7
    if len(parts) < 8 or parts[2:4] != ["mounted", "on"] or parts[5:7] != ["with", "fstype"]:
        return None, False
    if parts[7] not in NFS_TYPES:
        return None, True
    export = _text(parts[1].encode("utf-8", errors="surrogateescape"))
    mount = _text(parts[4].encode("utf-8", errors="surrogateescape"))
    return NFSMount(export=export, mount=mount, fs_type=parts[7]), True


def _compile(pattern: str | re.Pattern[str] | None) -> re.Pattern[str] | None:
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    return re.compile(pattern) if pattern else None


class _LogOnce:
    def __init__(self, node: str) -> None:
        self.node = node
        self._logged: set[str] = set()

    def __call__(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s on %s (logged once)", message, self.node)


class DiskCollector:
    """Emits block-device and filesystem metrics of one node (see the module docstring).

    ``ignore_devices``, ``ignore_fs_types``, ``ignore_mounts``: regular expressions matched with
    ``re.search`` (``None`` or ``""``: ignore nothing). ``statvfs`` is called with
    ``root + mount point``; only its ``f_frsize``, ``f_blocks`` and ``f_bavail`` are read.
    """

    name = "disk"

    def __init__(
        self,
        node: str,
        root: Path | str = "/",
        statvfs: Callable[[str], StatVFS] = os.statvfs,
        ignore_devices: str | re.Pattern[str] | None = DEFAULT_IGNORED_DEVICES,
        *,
        ignore_fs_types: str | re.Pattern[str] | None = DEFAULT_IGNORED_FS_TYPES,
        ignore_mounts: str | re.Pattern[str] | None = DEFAULT_IGNORED_MOUNTS,
        statvfs_timeout_s: float | None = 5.0,
    ) -> None:
        self.node = node
        self.root = Path(root)
        self.statvfs = statvfs
        self.ignore_devices = _compile(ignore_devices)
        self.ignore_fs_types = _compile(ignore_fs_types)
        self.ignore_mounts = _compile(ignore_mounts)
        self.statvfs_timeout_s = statvfs_timeout_s
        self.init_error: str | None = None
        self._log_once = _LogOnce(node)
        self._stuck: set[str] = set()  # OS paths whose statvfs call has not returned yet
        self._stuck_lock = threading.Lock()

    @property
    def stuck_mounts(self) -> frozenset[str]:
        """OS paths (``root`` + mount point) whose ``statvfs`` timed out and has not returned."""
        with self._stuck_lock:
            return frozenset(self._stuck)

    def collect(self) -> list[Sample]:
        out: list[Sample] = []
        errors: list[str] = []
        disks = self._read_text(self.root / "proc" / "diskstats", errors)
        if disks is not None:
            out.extend(self._disk_samples(disks))
        mounts = self._read_bytes(self.root / "proc" / "mounts", errors)
        if mounts is not None:
            out.extend(self._filesystem_samples(mounts))
        self.init_error = "; ".join(errors) if len(errors) == 2 else None
        return out

    def _disk_samples(self, text: str) -> Iterator[Sample]:
        bad: list[str] = []
        seen: set[str] = set()
        for d in parse_diskstats(text, bad):
            if d.device in seen or (self.ignore_devices and self.ignore_devices.search(d.device)):
                continue
            seen.add(d.device)
            labels = {"node": self.node, "device": d.device}
            yield Sample("fleet_disk_reads_completed_total", labels, float(d.reads_completed))
            yield Sample("fleet_disk_read_bytes_total", labels, float(d.read_bytes))
            yield Sample("fleet_disk_read_time_seconds_total", labels, d.read_time_s)
            yield Sample("fleet_disk_writes_completed_total", labels, float(d.writes_completed))
            yield Sample("fleet_disk_written_bytes_total", labels, float(d.written_bytes))
            yield Sample("fleet_disk_write_time_seconds_total", labels, d.write_time_s)
            yield Sample("fleet_disk_io_time_seconds_total", labels, d.io_time_s)
        for line in bad:
            self._log_once(f"malformed /proc/diskstats line {line!r}")

    def _filesystem_samples(self, raw: bytes) -> Iterator[Sample]:
        bad: list[str] = []
        mounts: dict[str, Mount] = {}
        for m in parse_mounts(raw, bad):
            mounts.pop(m.label, None)  # the last entry of a mount point is the one on top
            mounts[m.label] = m
        for line in bad:
            self._log_once(f"malformed /proc/mounts line {line!r}")
        for m in mounts.values():
            if self.ignore_fs_types and self.ignore_fs_types.search(m.fs_type):
                continue
            if self.ignore_mounts and self.ignore_mounts.search(m.label):
                continue
            st = self._statvfs(os.path.join(self.root, m.path.lstrip("/")))
            if st is None:
                continue
            try:
                size = st.f_blocks * st.f_frsize
                avail = st.f_bavail * st.f_frsize
            except (TypeError, AttributeError):
                self._log_once(f"statvfs of {m.label} returned {st!r}")
                continue
            labels = {"node": self.node, "mount": m.label}
            yield Sample("fleet_filesystem_size_bytes", labels, float(size))
            yield Sample("fleet_filesystem_avail_bytes", labels, float(avail))

    def _statvfs(self, path: str) -> StatVFS | None:
        """``statvfs(path)``; ``None`` when it fails, times out or is still stuck from before."""
        if self.statvfs_timeout_s is None:
            try:
                return self.statvfs(path)
            except Exception as err:  # an OSError from the OS; anything from a fake
                self._log_once(f"statvfs({path}) failed: {type(err).__name__}: {err}")
                return None
        with self._stuck_lock:
            if path in self._stuck:
                return None
        result: list[StatVFS] = []
        failure: list[BaseException] = []
        done = threading.Event()

        def call() -> None:
            try:
                result.append(self.statvfs(path))
            except Exception as err:
                failure.append(err)
            finally:
                with self._stuck_lock:
                    done.set()
                    self._stuck.discard(path)

        threading.Thread(target=call, name=f"statvfs {path}", daemon=True).start()
        if not done.wait(self.statvfs_timeout_s):
            with self._stuck_lock:
                if not done.is_set():
                    self._stuck.add(path)
                    self._log_once(
                        f"statvfs({path}) did not return within {self.statvfs_timeout_s} s"
                        " (stale NFS mount?); skipped until it does"
                    )
                    return None
        if failure:
            error = failure[0]
            self._log_once(f"statvfs({path}) failed: {type(error).__name__}: {error}")
            return None
        return result[0] if result else None

    def _read_text(self, path: Path, errors: list[str]) -> str | None:
        raw = self._read_bytes(path, errors)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def _read_bytes(self, path: Path, errors: list[str]) -> bytes | None:
        try:
            return path.read_bytes()
        except OSError as err:
            errors.append(f"cannot read {path}: {err.strerror or err}")
            self._log_once(errors[-1])
            return None


class NFSCollector:
    """Emits NFS client traffic and RPC counters of one node (see the module docstring).

    ``ops``: the per-op statistics to emit as ``op`` series (names as the kernel writes them).
    """

    name = "nfs"

    def __init__(
        self, node: str, root: Path | str = "/", ops: Collection[str] = DEFAULT_NFS_OPS
    ) -> None:
        self.node = node
        self.root = Path(root)
        self.ops = frozenset(ops)
        self.init_error: str | None = None
        self._log_once = _LogOnce(node)

    def collect(self) -> list[Sample]:
        path = self.root / "proc" / "self" / "mountstats"
        try:
            text = path.read_bytes().decode("utf-8", errors="surrogateescape")
        except OSError as err:
            self.init_error = f"cannot read {path}: {err.strerror or err}"
            self._log_once(self.init_error)
            return []
        self.init_error = None
        bad: list[str] = []
        mounts: dict[tuple[str, str], NFSMount] = {}
        for m in parse_mountstats(text, self.ops, bad):
            mounts.pop((m.mount, m.export), None)  # listed twice: the last one is on top
            mounts[(m.mount, m.export)] = m
        for line in bad:
            self._log_once(f"malformed mountstats line {line!r}")
        out: list[Sample] = []
        for m in mounts.values():
            labels = {"node": self.node, "mount": m.mount, "export": m.export}
            if m.read_bytes is not None and m.written_bytes is not None:
                out.append(Sample("fleet_nfs_read_bytes_total", labels, float(m.read_bytes)))
                out.append(Sample("fleet_nfs_written_bytes_total", labels, float(m.written_bytes)))
            for op, (requests, rtt_s) in sorted((m.ops or {}).items()):
                op_labels = {**labels, "op": op}
                out.append(Sample("fleet_nfs_rpc_operations_total", op_labels, float(requests)))
                out.append(Sample("fleet_nfs_rpc_rtt_seconds_total", op_labels, rtt_s))
        return out
