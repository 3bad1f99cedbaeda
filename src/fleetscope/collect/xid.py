"""XID collector: NVIDIA driver Xid errors from the kernel log (or NVML events), per GPU and action.

An Xid is an error report that the NVIDIA kernel driver (NVRM) prints to the kernel log
(NVIDIA, "Xid Errors", docs.nvidia.com/deploy/xid-errors). Current drivers print::

    NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, name=python3, Row Remapper: New row marked …

older ones ``NVRM: Xid (0000:03:00): 14, Channel 00000001`` (no ``PCI:``, no pid or name), and a
pid the driver cannot tell is ``pid='<unknown>'`` (or ``N/A``). The PCI address is
``domain:bus:device`` in lowercase hex, the form :func:`fleetscope.collect.gpu.normalize_pci_bus_id`
gives the GPU collector's identities, so each line maps to its GPU.

Sources (one kernel-log source at most):

- ``log_path``: a text file, followed like ``tail -F``: appends are read each cycle; a rotation
  (another inode at the path) is noticed and the new file read from its start; a truncation
  (size below the read offset, as ``copytruncate`` does) restarts at 0. The first open starts at
  the end unless ``from_start=True``, so an agent restart does not count history again. Line
  formats: syslog (``Nov 28 10:00:00 host kernel: …``, local time, the year inferred),
  RFC 3339 syslog and ``journalctl -o short-iso`` (``2024-11-28T10:00:00+0000 host kernel: …``),
  ``dmesg`` (``[ 1234.567890] …``, seconds since boot, made absolute with ``btime`` from
  ``root/proc/stat``; ``dmesg -T``'s ``[Thu Nov 28 10:00:00 2024]``), ``journalctl -o export``
  (``__REALTIME_TIMESTAMP=`` µs since the epoch, then ``MESSAGE=``) and ``journalctl -o json``.
- ``kmsg=True``: ``root/dev/kmsg`` records ``prio,seq,usec,flags;message`` (kernel
  Documentation/ABI/testing/dev-kmsg; ``usec`` is µs since boot; continuation lines start with a
  space and are skipped). The device is read non-blocking, one record per read, and starts at
  the end (``SEEK_END``) unless ``from_start``; a regular file at that path (a fake node tree)
  is followed like ``log_path``.
- ``nvml``: an NVML module (pynvml or :class:`fleetscope.simulate.nvml.FakeNVML`). Each cycle
  drains ``nvmlEventSetWait_v2(set, 0)`` for ``nvmlEventTypeXidCriticalError`` events of every
  GPU registered with ``nvmlDeviceRegisterEvents``. NVML's event carries the Xid and the device
  but no pid, process or message, so the kernel log is preferred: NVML events are counted only
  while no kernel-log source is configured or readable, and one Xid is never counted twice.

A time that a line does not give (or a relative one without a readable boot time) is the
collection time.

What it emits, cumulative since the collector started (a counter reset at agent restart, which
``rate()`` handles)::

    fleet_gpu_xid_errors_total{node,gpu,gpu_uuid,gpu_model,xid,action}

``action`` is what NVIDIA's Xid catalog ("Analyzing Xid Errors with the Xid Catalog",
resolution buckets RESTART_APP, RESET_GPU, RESTART_BM …) says to do, as one of
:data:`ACTIONS`, from :data:`XID_ACTIONS` (unlisted Xids: ``investigate``); Xid 154 names its
recovery action in its message and is classified from it. An Xid whose PCI address matches no
known GPU is counted with ``gpu``, ``gpu_uuid`` and ``gpu_model`` ``"unknown"``: never dropped.

Every Xid also becomes a :class:`fleetscope.model.Event` (``kind="xid"``, ``subject`` the GPU
UUID, else the node) with ``attrs`` ``node, gpu, gpu_uuid, pci_bus_id, xid, action, pid,
process, job, user, team, message`` (``None`` where unknown); ``job``/``user``/``team`` come from
``owner_of_gpu(gpu index)`` when the Xid is read (normally
:meth:`fleetscope.collect.attribution.AllocationCollector.owner_of_gpu`). :meth:`drain_events`
returns the events since the last drain. Not thread-safe (the agent's collector thread).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from fleetscope.collect import Sample
from fleetscope.collect.attribution import UNKNOWN, JobOwner
from fleetscope.collect.gpu import GPUIdentity, normalize_pci_bus_id
from fleetscope.model import Event

__all__ = [
    "ACTIONS",
    "USED_FUNCTIONS",
    "XID_ACTIONS",
    "FileTail",
    "KmsgStream",
    "XIDCollector",
    "XidLine",
    "action_of",
    "parse_xid",
]

log = logging.getLogger(__name__)

ACTIONS: dict[str, str] = {
    "restart_app": "an application error: restart the job; the GPU is fine",
    "reset_gpu": "drain the GPU's jobs and reset the GPU (nvidia-smi -r)",
    "reboot_node": "drain the node and reboot it; the GPU cannot be reset in place",
    "check_nvlink": "check the NVLink (nvidia-smi nvlink -e) and reset the GPU",
    "rma": "reset the GPU and replace it (RMA) if it recurs: its memory is failing",
    "investigate": "not in the catalog table: read the message and NVIDIA's catalog",
}
"""The values of the ``action`` label, each with what it asks for."""

XID_ACTIONS: dict[int, tuple[str, str]] = {
    8: ("restart_app", "GPU stopped processing (channel idle timeout)"),
    13: ("restart_app", "graphics engine exception, usually the application's own fault"),
    31: ("restart_app", "GPU memory page fault, usually an illegal access by the application"),
    32: ("restart_app", "invalid or corrupted push buffer stream"),
    43: ("restart_app", "GPU stopped processing the application's channel; GPU is healthy"),
    45: ("restart_app", "preemptive cleanup after the application stopped or an earlier Xid"),
    48: ("reset_gpu", "double-bit (uncorrectable) ECC error; a reset remaps the row"),
    61: ("reset_gpu", "internal micro-controller breakpoint or warning"),
    62: ("reset_gpu", "internal micro-controller halted"),
    63: ("reset_gpu", "row remap (page retirement) pending: it takes effect at the next reset"),
    64: ("rma", "row remap (page retirement) failed: memory that cannot be protected"),
    74: ("check_nvlink", "NVLink error: a link or the GPU at one of its ends"),
    79: ("reboot_node", "GPU has fallen off the bus: only a node reboot brings it back"),
    92: ("reset_gpu", "high single-bit ECC error rate"),
    94: ("restart_app", "contained ECC error: only the application that used the memory"),
    95: ("reset_gpu", "uncontained ECC error: every application on the GPU is affected"),
    119: ("reset_gpu", "GSP firmware RPC timeout; reboot the node if the reset fails"),
    120: ("reset_gpu", "GSP firmware error; reboot the node if the reset fails"),
    140: ("reset_gpu", "unrecovered ECC error"),
    154: ("investigate", "GPU recovery action changed: the message names the action"),
}
"""Xid → (action, one-line reason), after NVIDIA's Xid catalog (docs.nvidia.com "XID Errors")."""

_RECOVERY_ACTIONS = (  # Xid 154: "… changed from 0x0 (None) to 0x1 (GPU Reset Required)"
    ("node reboot required", "reboot_node"),
    ("gpu reset required", "reset_gpu"),
    ("drain and reset", "reset_gpu"),
)

USED_FUNCTIONS: tuple[str, ...] = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetIndex",
    "nvmlEventSetCreate",
    "nvmlDeviceRegisterEvents",
    "nvmlEventSetWait_v2",
    "nvmlEventSetFree",
)
"""Every NVML function the NVML path calls (a fake NVML must offer all of them)."""

MAX_BYTES_PER_CYCLE = 64 * 1024 * 1024
"""At most this much log is read per ``collect``; the rest waits for the next cycle."""
MAX_NVML_EVENTS_PER_CYCLE = 10_000
_CHUNK = 1 << 16

_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?)\)"
    r":\s*(?P<xid>\d+)(?:,\s*(?P<rest>.*))?$"
)
_PID = re.compile(r"pid=(?P<pid>'[^']*'|[^,\s]*),\s*")
_NAME = re.compile(r"name=(?P<name>[^,]*),?\s*")
_KMSG = re.compile(r"(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),(?P<flags>[^;]*);(?P<msg>.*)")
_ISO = re.compile(
    r"(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s+\S+\s+(?P<msg>.*)"
)
_BSD = re.compile(
    r"(?P<mon>[A-Z][a-z]{2})\s+(?P<day>\d{1,2}) (?P<hms>\d{2}:\d{2}:\d{2})\s+\S+\s+(?P<msg>.*)"
)
_DMESG_T = re.compile(
    r"\[(?P<ts>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4})\]\s*(?P<msg>.*)"
)
_DMESG = re.compile(r"\[\s*(?P<mono>\d+\.\d+)\]\s*(?P<msg>.*)")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


def action_of(xid: int, message: str = "") -> str:
    """The action for an Xid (:data:`XID_ACTIONS`; Xid 154 read from its message)."""
    if xid == 154:
        target = message.lower().rpartition(" to ")[2]
        for words, action in _RECOVERY_ACTIONS:
            if words in target:
                return action
    return XID_ACTIONS.get(xid, ("investigate", ""))[0]


class XidLine(NamedTuple):
    """One Xid as the kernel printed it; ``None``: the line does not say."""

    xid: int
    pci_bus_id: str | None  # normalised, 0000:10:1c
    pid: int | None
    process: str | None
    message: str  # the text after xid, pid and name


def parse_xid(message: str) -> XidLine | None:
    """The Xid in a kernel message (any prefix before ``NVRM:``), ``None`` if there is none."""
    found = _XID.search(message)
    if found is None:
        return None
    rest = (found.group("rest") or "").strip()
    pid: int | None = None
    process: str | None = None
    m = _PID.match(rest)
    if m:
        value = m.group("pid").strip("'")
        pid = int(value) if value.isdigit() else None
        rest = rest[m.end() :]
        n = _NAME.match(rest)
        if n:
            name = n.group("name").strip()
            process = None if not name or name.startswith("<") else name
            rest = rest[n.end() :]
    return XidLine(
        int(found.group("xid")), normalize_pci_bus_id(found.group("pci")), pid, process, rest
    )


# -- following files ---------------------------------------------------------------------------


class FileTail:
    """Follows a text file like ``tail -F`` (see the module docstring); yields complete lines.

    ``error`` says why the file cannot be read now (``None`` when it can). A line still being
    written (no newline yet) waits for its end; at a rotation the old file's last partial line
    is taken as complete.
    """

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = path
        self.error: str | None = None
        self._file: BinaryIO | None = None
        self._ident: tuple[int, int] | None = None
        self._partial = b""
        self._skip_to_end = not from_start  # only the very first attempt starts at the end

    def lines(self, max_bytes: int = MAX_BYTES_PER_CYCLE) -> Iterator[str]:
        budget = [max_bytes]
        if self._file is not None:
            yield from self._drain(budget)  # the rest of the file we have, rotated or not
        try:
            st = os.stat(self.path)
        except OSError as err:
            self._skip_to_end = False
            self.error = f"{self.path}: {err.strerror or err}"
            return
        ident = (st.st_dev, st.st_ino)
        if self._file is None or ident != self._ident:
            if self._partial:
                yield self._flush()
            self.close()
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 (kept open between cycles)
            except OSError as err:
                self._skip_to_end = False
                self.error = f"{self.path}: {err.strerror or err}"
                return
            self._ident = ident
            if self._skip_to_end:
                self._file.seek(0, os.SEEK_END)
            self._skip_to_end = False
        elif st.st_size < self._file.tell():  # truncated in place
            self._file.seek(0)
            self._partial = b""
        self.error = None
        yield from self._drain(budget)

    def _drain(self, budget: list[int]) -> Iterator[str]:
        assert self._file is not None
        while budget[0] > 0:
            chunk = self._file.read(min(_CHUNK, budget[0]))
            if not chunk:
                return
            budget[0] -= len(chunk)
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            for raw in complete:
                yield raw.decode("utf-8", errors="replace")

    def _flush(self) -> str:
        line, self._partial = self._partial, b""
        return line.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None


class KmsgStream:
    """Reads ``/dev/kmsg`` (or a FIFO) non-blocking; yields its records' lines.

    ``/dev/kmsg`` returns one record per ``read`` and ``EPIPE`` when records were overwritten
    before they were read (the next read goes on with the oldest one still there).
    """

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = path
        self.error: str | None = None
        self.from_start = from_start
        self.lost = 0  # EPIPE answers: records overwritten before they were read
        self._fd: int | None = None
        self._partial = b""

    def lines(self, max_bytes: int = MAX_BYTES_PER_CYCLE) -> Iterator[str]:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as err:
                self.error = f"{self.path}: {err.strerror or err}"
                return
            if not self.from_start:
                # a FIFO cannot seek: it holds only what comes next anyway
                with contextlib.suppress(OSError):
                    os.lseek(self._fd, 0, os.SEEK_END)
        self.error = None
        read = 0
        while read < max_bytes:
            try:
                chunk = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except BrokenPipeError:
                self.lost += 1
                continue
            except OSError as err:
                self.error = f"{self.path}: {err.strerror or err}"
                self.close()
                return
            if not chunk:
                return
            read += len(chunk)
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            for raw in complete:
                yield raw.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None


# -- the collector -----------------------------------------------------------------------------


class _Read(NamedTuple):
    """An Xid read this cycle: its time (``None``: the source gave none) and where it is from.

    Kernel-log Xids map to a GPU by PCI address; NVML's by ``gpu_index`` (``None``: not told).
    """

    time: datetime | None
    xid: XidLine
    from_nvml: bool = False
    gpu_index: int | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class XIDCollector:
    """Counts Xid errors per GPU and action and records each as an event (module docstring).

    ``gpus`` is a mapping NVML index → identity or a callable returning one (normally
    :meth:`fleetscope.collect.gpu.GPUCollector.identities`); identities need ``pci_bus_id`` for
    kernel-log Xids to map to their GPU. ``log_path`` (a file) and ``kmsg`` (``root/dev/kmsg``)
    are read under ``root``; at most one of them. ``local_tz`` is the zone of syslog and
    ``dmesg -T`` times (default: this host's).
    """

    name = "xid"

    def __init__(
        self,
        node: str,
        gpus: Mapping[int, GPUIdentity] | Callable[[], Mapping[int, GPUIdentity]],
        *,
        log_path: str | Path | None = None,
        kmsg: bool = False,
        root: str | Path = "/",
        owner_of_gpu: Callable[[int], JobOwner | None] | None = None,
        from_start: bool = False,
        nvml: Any = None,
        clock: Callable[[], datetime] = _now,
        local_tz: tzinfo | None = None,
    ) -> None:
        if log_path is not None and kmsg:
            raise ValueError("XIDCollector reads one kernel log: log_path or kmsg, not both")
        if log_path is None and not kmsg and nvml is None:
            raise ValueError("XIDCollector needs a source: log_path, kmsg=True or nvml")
        self.node = node
        self.gpus = gpus
        self.root = Path(root)
        self.owner_of_gpu = owner_of_gpu
        self.nvml = nvml
        self.clock = clock
        self.local_tz = local_tz
        self.init_error: str | None = None
        self.counts: Counter[tuple[tuple[str, str], ...]] = Counter()
        self._events: list[Event] = []
        self._log: FileTail | KmsgStream | None = None
        self._kmsg = kmsg
        if log_path is not None:
            self._log = FileTail(self._under_root(log_path), from_start=from_start)
        elif kmsg:
            path = self.root / "dev" / "kmsg"
            is_file = path.is_file()  # a fake node tree: a plain file of records
            self._log = (FileTail if is_file else KmsgStream)(path, from_start=from_start)
        self._boot_time: float | None = None
        self._boot_time_read = False
        self._journal_usec: int | None = None  # __REALTIME_TIMESTAMP of the current export entry
        self._event_set: Any = None
        self._nvml_ready = False
        self._nvml_off: str | None = None  # why the NVML path is not used
        self._logged: set[str] = set()

    def _under_root(self, path: str | Path) -> Path:
        return self.root / str(path).lstrip("/")

    # -- collection ------------------------------------------------------------------------

    def collect(self) -> list[Sample]:
        xids: list[_Read] = []
        if self._log is not None:
            for line in self._log.lines():
                found = self._parse_line(line)
                if found is not None:
                    xids.append(_Read(*found))
            if self._log.error is not None:
                self._log_once(f"kernel log unreadable: {self._log.error}")
        log_ok = self._log is not None and self._log.error is None
        nvml_xids = self._poll_nvml()
        if not log_ok:
            xids.extend(nvml_xids)
        nvml_ok = self.nvml is not None and self._nvml_off is None
        if log_ok or nvml_ok:
            self.init_error = None
        else:
            reasons = [r for r in (self._log and self._log.error, self._nvml_off) if r]
            self.init_error = "; ".join(reasons) or "no Xid source"
        if xids:
            self._record(xids)
        return [
            Sample("fleet_gpu_xid_errors_total", dict(labels), float(n))
            for labels, n in sorted(self.counts.items())
        ]

    def drain_events(self) -> list[Event]:
        """The Xid events read since the last drain, oldest first."""
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        """Close the log and free the NVML event set."""
        if self._log is not None:
            self._log.close()
        if self._event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(self._event_set)
                self.nvml.nvmlShutdown()
            except Exception as err:
                log.debug("freeing the NVML event set: %s", err)
            self._event_set = None
            self._nvml_ready = False

    def _record(self, xids: list[_Read]) -> None:
        gpus = self._gpus()
        by_pci = {g.pci_bus_id: g for g in gpus.values() if g.pci_bus_id}
        now = self.clock()
        for when, x, from_nvml, index in xids:
            ident: GPUIdentity | None
            if from_nvml:
                ident = gpus.get(index) if index is not None else None
            else:
                ident = by_pci.get(x.pci_bus_id) if x.pci_bus_id else None
            action = action_of(x.xid, x.message)
            if ident is not None:
                labels = ident.labels(self.node)
            else:
                labels = {"node": self.node, "gpu": UNKNOWN, "gpu_uuid": UNKNOWN}
                labels["gpu_model"] = UNKNOWN
            labels = {**labels, "xid": str(x.xid), "action": action}
            self.counts[tuple(sorted(labels.items()))] += 1
            owner = self._owner(ident.index) if ident is not None else None
            self._events.append(
                Event(
                    kind="xid",
                    subject=ident.uuid if ident is not None else self.node,
                    time=when or now,
                    attrs={
                        "node": self.node,
                        "gpu": None if ident is None else str(ident.index),
                        "gpu_uuid": None if ident is None else ident.uuid,
                        "pci_bus_id": x.pci_bus_id,
                        "xid": x.xid,
                        "action": action,
                        "pid": x.pid,
                        "process": x.process,
                        "job": _known(owner.job) if owner else None,
                        "user": _known(owner.user) if owner else None,
                        "team": _known(owner.team) if owner else None,
                        "message": x.message or None,
                    },
                )
            )

    def _gpus(self) -> Mapping[int, GPUIdentity]:
        try:
            return self.gpus() if callable(self.gpus) else self.gpus
        except Exception as err:  # no identities: the Xids are still counted, as unknown GPUs
            self._log_once(f"GPU identities unavailable ({type(err).__name__}: {err})")
            return {}

    def _owner(self, index: int) -> JobOwner | None:
        if self.owner_of_gpu is None:
            return None
        try:
            return self.owner_of_gpu(index)
        except Exception as err:  # an owner lookup must not cost the Xid
            self._log_once(f"owner of GPU lookup failed ({type(err).__name__}: {err})")
            return None

    # -- kernel log lines ------------------------------------------------------------------

    def _parse_line(self, line: str) -> tuple[datetime | None, XidLine] | None:
        """``(time or None, xid)`` of one log line, ``None`` when it holds no Xid."""
        if line.startswith("__REALTIME_TIMESTAMP="):  # journalctl -o export: before MESSAGE=
            value = line.partition("=")[2]
            self._journal_usec = int(value) if value.isdigit() else None
            return None
        if not line.strip():
            self._journal_usec = None  # an export entry ends with an empty line
            return None
        if "Xid" not in line:
            return None
        if line.startswith("MESSAGE="):
            x = parse_xid(line[len("MESSAGE=") :])
            usec = self._journal_usec
            return None if x is None else (_from_epoch(usec / 1e6) if usec else None, x)
        if line.startswith("{"):
            return self._parse_json(line)
        if self._kmsg:
            m = _KMSG.fullmatch(line)
            if m is None:
                return None  # a continuation line ( KEY=value) or not a record
            x = parse_xid(m.group("msg"))
            return None if x is None else (self._since_boot(int(m.group("usec")) / 1e6), x)
        x = parse_xid(line)
        return None if x is None else (self._time_of(line), x)

    def _parse_json(self, line: str) -> tuple[datetime | None, XidLine] | None:
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        message = entry.get("MESSAGE") if isinstance(entry, dict) else None
        if isinstance(message, list):  # non-UTF-8 messages are arrays of bytes
            message = bytes(b & 0xFF for b in message if isinstance(b, int)).decode(
                "utf-8", errors="replace"
            )
        x = parse_xid(message) if isinstance(message, str) else None
        if x is None:
            return None
        usec = str(entry.get("__REALTIME_TIMESTAMP", ""))
        return (_from_epoch(int(usec) / 1e6) if usec.isdigit() else None), x

    def _time_of(self, line: str) -> datetime | None:
        """The time a syslog/journal/dmesg line gives, ``None`` when it gives none."""
        if m := _ISO.match(line):
            try:
                t = datetime.fromisoformat(m.group("ts").replace(",", "."))
            except ValueError:
                return None
            return t if t.tzinfo else self._local(t)
        if m := _BSD.match(line):
            month = _MONTHS.get(m.group("mon"))
            if month is None:
                return None
            hh, mm, ss = (int(v) for v in m.group("hms").split(":"))
            now = self.clock()
            try:
                t = self._local(datetime(now.year, month, int(m.group("day")), hh, mm, ss))
                if t > now + timedelta(days=1):  # December's lines read in January
                    t = self._local(datetime(now.year - 1, month, int(m.group("day")), hh, mm, ss))
            except ValueError:
                return None
            return t
        if m := _DMESG_T.match(line):
            try:
                return self._local(datetime.strptime(m.group("ts"), "%a %b %d %H:%M:%S %Y"))
            except ValueError:
                return None
        if m := _DMESG.match(line):
            return self._since_boot(float(m.group("mono")))
        return None

    def _local(self, naive: datetime) -> datetime:
        if self.local_tz is not None:
            return naive.replace(tzinfo=self.local_tz)
        return naive.astimezone()  # this host's zone

    def _since_boot(self, seconds: float) -> datetime | None:
        """Seconds since boot as a time, from ``btime`` in ``root/proc/stat``."""
        if not self._boot_time_read:
            self._boot_time_read = True
            try:
                text = (self.root / "proc" / "stat").read_text(encoding="ascii", errors="replace")
            except OSError:
                text = ""
            for row in text.splitlines():
                key, _, value = row.partition(" ")
                if key == "btime" and value.strip().isdigit():
                    self._boot_time = float(value)
        return None if self._boot_time is None else _from_epoch(self._boot_time + seconds)

    # -- NVML events -----------------------------------------------------------------------

    def _poll_nvml(self) -> list[_Read]:
        if self.nvml is None or not self._nvml_setup():
            return []
        nv = self.nvml
        out: list[_Read] = []
        for _ in range(MAX_NVML_EVENTS_PER_CYCLE):
            try:
                data = nv.nvmlEventSetWait_v2(self._event_set, 0)
            except nv.NVMLError_Timeout:
                break
            except Exception as err:
                self._log_once(f"NVML event wait failed ({type(err).__name__}: {err})")
                break
            if not int(data.eventType) & nv.nvmlEventTypeXidCriticalError:
                continue
            try:
                index: int | None = int(nv.nvmlDeviceGetIndex(data.device))
            except Exception:
                index = None
            pci = None if index is None else getattr(self._gpus().get(index), "pci_bus_id", None)
            xid = XidLine(int(data.eventData), pci, None, None, "")
            out.append(_Read(None, xid, from_nvml=True, gpu_index=index))
        return out

    def _nvml_setup(self) -> bool:
        if self._nvml_ready:
            return True
        nv = self.nvml
        missing = [f for f in USED_FUNCTIONS if not hasattr(nv, f)]
        if missing or not hasattr(nv, "nvmlEventTypeXidCriticalError"):
            self._nvml_off = f"NVML events unsupported (no {', '.join(missing) or 'event type'})"
            return False
        indices = sorted(self._gpus())
        if not indices:
            self._nvml_off = "NVML events: no GPU identities yet"
            return False
        try:
            nv.nvmlInit()
        except Exception as err:
            self._nvml_off = f"NVML events: {type(err).__name__}: {err}"
            return False
        try:
            event_set = nv.nvmlEventSetCreate()
        except Exception as err:
            self._nvml_off = f"NVML events: {type(err).__name__}: {err}"
            self._shutdown_nvml()
            return False
        registered = 0
        for index in indices:
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, event_set)
                registered += 1
            except Exception as err:  # not supported on this GPU, or it is lost
                self._log_once(f"no NVML Xid events for GPU {index} ({type(err).__name__})")
        if not registered:
            self._nvml_off = "NVML events: no GPU accepts Xid event registration"
            try:
                nv.nvmlEventSetFree(event_set)
            except Exception as err:
                log.debug("nvmlEventSetFree: %s", err)
            self._shutdown_nvml()
            return False
        self._event_set, self._nvml_ready, self._nvml_off = event_set, True, None
        return True

    def _shutdown_nvml(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception as err:
            log.debug("nvmlShutdown: %s", err)

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s on %s (logged once)", message, self.node)


def _known(value: str) -> str | None:
    return None if value in ("", UNKNOWN) else value


def _from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
