"""The agent's outgoing queue: a bounded on-disk write-ahead log of segment files, or memory.

The agent appends one entry per cycle (an encoded remote-write batch, or a JSON list of events)
and a sender takes them oldest first: :meth:`WAL.peek` the oldest unacknowledged entry, send it,
:meth:`WAL.ack` it. Entries are opaque bytes with a ``kind`` (``"samples"`` for remote-write
batches) and a count of the items inside (samples, events), kept in the record header so that
pending and dropped items can be counted without decoding anything. The model is
VictoriaMetrics' ``lib/persistentqueue``: append-only chunk files, a small separate file with
the reader's position, whole files deleted once read past, oldest data dropped when full.

On disk (``directory``):

- ``<seq>.seg``: segments, numbered upwards, each a run of records. A record is a 21-byte
  little-endian header ``crc32 u32 | payload_bytes u32 | count u32 | appended_ms i64 |
  kind_bytes u8``, then the kind (UTF-8) and the payload. The CRC-32 (``zlib.crc32``) covers
  everything after itself, so a torn write, a zero-filled tail or a flipped bit all fail it.
  A new segment is started when the current one would exceed ``segment_bytes``.
- ``ack.json``: the position of the first unacknowledged byte (segment, offset) and the
  cumulative dropped counts per kind, replaced atomically (write a temporary file, then
  ``os.replace``). It is not fsynced: losing it (power loss) only moves the reader back to the
  start of the oldest segment, so acknowledged entries are sent again, which the receiver
  deduplicates (an exact resend of a stored sample is a duplicate, as in Prometheus' TSDB).
- ``lock``: held with ``flock`` while the log is open, so two agents cannot share a directory
  (the kernel releases it when the process dies, also on ``kill -9``).

Durability: every append is written and ``fsync``ed before :meth:`WAL.append` returns. The agent
appends one entry per interval (15 s by default), so an fsync each time costs nothing that
matters and an appended batch survives a crash of the machine, not only of the process. Acks
are not synced (see ``ack.json``): at-least-once delivery, exactly-once storage.

Recovery: opening the log scans every record after the acknowledged position. The first record
that is incomplete (a ``kill -9`` in the middle of a write) or fails its CRC ends the valid
data of that segment: the segment is truncated there with a warning, and appending continues
after the last good record. Nothing invalid is ever returned by :meth:`WAL.peek`.

Bound: the segment files together stay within ``max_bytes``. An append that would exceed it
first deletes the oldest segments, unacknowledged entries and all; their counts go into
:attr:`WAL.dropped` (persisted, so the total survives restarts). Segments are at most a quarter
of ``max_bytes``, so one drop loses at most that much. An entry larger than ``max_bytes`` on
its own is dropped at once.

:class:`MemoryQueue` has the same interface and bound without files (the agent uses it when it
has no WAL directory; its content is lost when the process exits).

Thread-safety: every method may be called from any thread (one lock); the agent's collection
thread appends while its sender thread peeks and acks. Lifecycle: open, use, :meth:`close`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "SAMPLES",
    "WAL",
    "Entry",
    "MemoryQueue",
    "Queue",
    "WALError",
    "default_directory",
    "parse_size",
]

log = logging.getLogger(__name__)

MiB: Final = 1 << 20
DEFAULT_MAX_BYTES: Final = 256 * MiB
DEFAULT_SEGMENT_BYTES: Final = 8 * MiB
SAMPLES: Final = "samples"
"""The kind of remote-write batches: their counts are samples (``pending_samples`` & co.)."""

MAX_PAYLOAD_BYTES: Final = 1 << 30
_HEADER: Final = struct.Struct("<IIIqB")  # crc32, payload bytes, count, appended ms, kind bytes
_SEGMENT = re.compile(r"^(\d{16})\.seg$")
_STATE = "ack.json"
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND


class WALError(OSError):
    """The log cannot be opened (another process holds it, or the directory is unusable)."""


@dataclass(frozen=True)
class Entry:
    """One queued entry, as :meth:`Queue.peek` returns it."""

    kind: str  # "samples" (a remote-write batch) or another kind, e.g. "events"
    payload: bytes
    count: int  # items inside: samples of a batch, events of an events list
    appended_ms: int  # wall-clock milliseconds since the epoch when it was appended
    position: tuple[int, int]  # (segment, byte offset) in a WAL; (0, sequence) in memory
    size_bytes: int  # bytes it occupies: header, kind and payload


@dataclass(frozen=True)
class _Slot:
    """An entry without its payload: what the pending index keeps in memory."""

    kind: str
    count: int
    appended_ms: int
    position: tuple[int, int]
    size_bytes: int


class Queue(Protocol):
    """The agent's outgoing queue: :class:`WAL` on disk or :class:`MemoryQueue`."""

    def append(self, payload: bytes, count: int, kind: str = SAMPLES) -> bool:
        """Queue ``payload`` (``count`` items of ``kind``); ``False`` when it was dropped."""
        ...

    def peek(self) -> Entry | None:
        """The oldest unacknowledged entry, or ``None`` when nothing is pending."""
        ...

    def ack(self, entry: Entry, *, delivered: bool = True) -> None:
        """Remove ``entry`` (a no-op when it was dropped meanwhile); ``delivered=False``
        counts its items as dropped (the receiver refused it)."""
        ...

    def __len__(self) -> int: ...

    @property
    def pending_bytes(self) -> int: ...

    @property
    def pending_samples(self) -> int: ...

    @property
    def oldest_age_s(self) -> float: ...

    @property
    def dropped_samples(self) -> int: ...

    def close(self) -> None: ...


def record_size(kind: str, payload: bytes) -> int:
    """Bytes one entry takes in a segment: header, kind and payload."""
    return _HEADER.size + len(kind.encode()) + len(payload)


class _Pending:
    """The index of pending entries and the counts both queue kinds keep."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: deque[_Slot] = deque()
        self._bytes = 0
        self._counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # items given up on, by kind (cumulative)

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the unacknowledged entries (headers included)."""
        return self._bytes

    @property
    def pending_samples(self) -> int:
        """Samples in the unacknowledged ``"samples"`` entries."""
        return self._counts[SAMPLES]

    def pending(self, kind: str) -> int:
        """Items of ``kind`` in the unacknowledged entries."""
        return self._counts[kind]

    @property
    def dropped_samples(self) -> int:
        """Samples given up on: dropped when full or acknowledged as not delivered."""
        return self.dropped[SAMPLES]

    @property
    def oldest_age_s(self) -> float:
        """Seconds since the oldest unacknowledged entry was appended (0 when empty)."""
        with self._lock:
            if not self._slots:
                return 0.0
            return max(0.0, self._clock() - self._slots[0].appended_ms / 1000)

    def _push(self, slot: _Slot) -> None:
        self._slots.append(slot)
        self._bytes += slot.size_bytes
        self._counts[slot.kind] += slot.count

    def _pop(self) -> _Slot:
        slot = self._slots.popleft()
        self._bytes -= slot.size_bytes
        self._counts[slot.kind] -= slot.count
        return slot

    def _head_is(self, entry: Entry) -> bool:
        return bool(self._slots) and self._slots[0].position == entry.position

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


class MemoryQueue(_Pending):
    """The same queue in memory, bounded by ``max_bytes`` (oldest entries dropped first)."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock)
        self.max_bytes = max_bytes
        self._payloads: dict[tuple[int, int], bytes] = {}
        self._seq = 0

    def append(self, payload: bytes, count: int, kind: str = SAMPLES) -> bool:
        size = record_size(kind, payload)
        with self._lock:
            if size > self.max_bytes:
                self.dropped[kind] += count
                log.warning("an entry of %d bytes exceeds the queue (%d); dropped", size,
                            self.max_bytes)  # fmt: skip
                return False
            while self._bytes + size > self.max_bytes:
                lost = self._pop()
                del self._payloads[lost.position]
                self.dropped[lost.kind] += lost.count
                log.warning("queue full: dropped the oldest %s entry (%d)", lost.kind, lost.count)
            slot = _Slot(kind, count, self._now_ms(), (0, self._seq), size)
            self._seq += 1
            self._payloads[slot.position] = payload
            self._push(slot)
        return True

    def peek(self) -> Entry | None:
        with self._lock:
            if not self._slots:
                return None
            s = self._slots[0]
            payload = self._payloads[s.position]
            return Entry(s.kind, payload, s.count, s.appended_ms, s.position, s.size_bytes)

    def ack(self, entry: Entry, *, delivered: bool = True) -> None:
        with self._lock:
            if not self._head_is(entry):
                return
            slot = self._pop()
            del self._payloads[slot.position]
            if not delivered:
                self.dropped[slot.kind] += slot.count

    def close(self) -> None:
        return None


class WAL(_Pending):
    """A bounded on-disk queue in ``directory`` (see the module docstring).

    ``max_bytes`` bounds the segment files together; ``segment_bytes`` is where a segment is
    rotated (at most ``max_bytes // 4``). ``clock`` gives wall-clock seconds (appended times,
    :attr:`oldest_age_s`). Raises :class:`WALError` when another process holds the directory.
    """

    def __init__(
        self,
        directory: Path | str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        if max_bytes <= _HEADER.size:
            raise ValueError(f"max_bytes must exceed {_HEADER.size}, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.directory / "lock")
        self._segments: dict[int, int] = {}  # segment number → bytes in the file, oldest first
        self._fd = -1
        self._current = 0  # the segment being appended to
        self._position: tuple[int, int] | None = None  # first unacknowledged byte, persisted
        self._cached: Entry | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- public --------------------------------------------------------------------------

    @property
    def disk_bytes(self) -> int:
        """Bytes of all segment files (acknowledged parts of live segments included)."""
        return sum(self._segments.values())

    def append(self, payload: bytes, count: int, kind: str = SAMPLES) -> bool:
        """Write one entry and fsync it; ``False`` when it alone exceeds ``max_bytes`` (dropped).

        Raises ``OSError`` when the write fails (disk full …); the segment is then truncated
        back to its last whole record, so the log stays valid.
        """
        appended_ms = self._now_ms()
        record = _encode(kind, payload, count, appended_ms)
        size = len(record)
        with self._lock:
            if size > self.max_bytes:
                self.dropped[kind] += count
                self._save_state()
                log.warning("an entry of %d bytes exceeds the WAL bound (%d); dropped", size,
                            self.max_bytes)  # fmt: skip
                return False
            if self._segments[self._current] > 0 and (
                self._segments[self._current] + size > self.segment_bytes
            ):
                self._rotate()
            while self.disk_bytes + size > self.max_bytes:
                self._drop_oldest_segment()
            offset = self._segments[self._current]
            self._write(record)
            self._segments[self._current] = offset + size
            self._push(_Slot(kind, count, appended_ms, (self._current, offset), size))
        return True

    def peek(self) -> Entry | None:
        """The oldest unacknowledged entry read back from its segment (CRC checked again)."""
        with self._lock:
            while self._slots:
                s = self._slots[0]
                if self._cached is not None and self._cached.position == s.position:
                    return self._cached
                decoded = self._read(s)
                if decoded is not None:
                    self._cached = Entry(
                        s.kind, decoded, s.count, s.appended_ms, s.position, s.size_bytes
                    )
                    return self._cached
                log.error("WAL record at %s no longer reads back; dropped", s.position)
                self._pop()
                self.dropped[s.kind] += s.count
                self._advance()
            return None

    def ack(self, entry: Entry, *, delivered: bool = True) -> None:
        """Acknowledge the oldest entry: persist the new position, delete segments behind it."""
        with self._lock:
            if not self._head_is(entry):
                return  # dropped while it was being sent
            slot = self._pop()
            self._cached = None
            if not delivered:
                self.dropped[slot.kind] += slot.count
            self._advance()

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the files and release the directory (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        ack_segment, ack_offset, dropped = self._load_state()
        self.dropped.update(dropped)
        (self.directory / (_STATE + ".tmp")).unlink(missing_ok=True)
        numbers = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT.match(p.name))
        )
        for n in numbers:
            if n < ack_segment:  # fully acknowledged; the delete did not happen before a crash
                self._path(n).unlink()
                continue
            start = ack_offset if n == ack_segment else 0
            self._segments[n] = self._scan(n, start)
        if self._segments:
            self._current = max(self._segments)
        else:
            self._current = max(ack_segment + 1, 0)
            self._segments[self._current] = 0
        self._fd = os.open(self._path(self._current), _APPEND, 0o644)
        _fsync_dir(self.directory)  # the new file's directory entry is durable too
        self._advance(force=True)
        if self._slots:
            log.info("WAL %s: %d entries pending (%d bytes)", self.directory, len(self._slots),
                     self._bytes)  # fmt: skip

    def _scan(self, n: int, start: int) -> int:
        """Index the valid records of segment ``n`` from ``start``; truncate what follows them.
        The segment's size afterwards."""
        path = self._path(n)
        data = path.read_bytes()
        pos = min(start, len(data))
        while pos < len(data):
            record = _decode(data, pos)
            if record is None:
                break
            kind, count, t_ms, _payload, end = record
            self._push(_Slot(kind, count, t_ms, (n, pos), end - pos))
            pos = end
        if pos < len(data):
            log.warning("WAL segment %s: %d bytes after offset %d are torn or corrupt; "
                        "truncated", path, len(data) - pos, pos)  # fmt: skip
            os.truncate(path, pos)
        return pos

    def _load_state(self) -> tuple[int, int, Mapping[str, int]]:
        path = self.directory / _STATE
        try:
            state = json.loads(path.read_text())
            segment, offset = int(state["segment"]), int(state["offset"])
            dropped = {str(k): int(v) for k, v in dict(state.get("dropped", {})).items()}
        except FileNotFoundError:
            return -1, 0, {}
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("WAL position %s unreadable (%s): resending from the oldest segment",
                        path, err)  # fmt: skip
            return -1, 0, {}
        return segment, offset, dropped

    # -- writing -------------------------------------------------------------------------

    def _path(self, n: int) -> Path:
        return self.directory / f"{n:016d}.seg"

    def _write(self, record: bytes) -> None:
        before = self._segments[self._current]
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, before)
            except OSError:
                log.exception("cannot truncate %s after a failed write", self._path(self._current))
            raise

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self._current += 1
        self._segments[self._current] = 0
        self._fd = os.open(self._path(self._current), _APPEND, 0o644)
        _fsync_dir(self.directory)  # the new file's directory entry is durable too
        self._advance()

    def _drop_oldest_segment(self) -> None:
        oldest = next(iter(self._segments))
        if oldest == self._current:
            self._rotate()
            if oldest not in self._segments:  # it held nothing pending: rotation deleted it
                return
        lost: Counter[str] = Counter()
        while self._slots and self._slots[0].position[0] == oldest:
            slot = self._pop()
            lost[slot.kind] += slot.count
        self._cached = None
        self.dropped.update(lost)
        del self._segments[oldest]
        self._advance(force=True)
        self._path(oldest).unlink(missing_ok=True)
        log.warning("WAL full (%d bytes): dropped segment %d with %s", self.max_bytes, oldest,
                    dict(lost) or "nothing pending")  # fmt: skip

    def _advance(self, *, force: bool = False) -> None:
        """Move the acknowledged position to the oldest pending entry (or the end of the log),
        persist it, and delete the segments wholly behind it."""
        if self._slots:
            position = self._slots[0].position
        else:
            position = (self._current, self._segments[self._current])
        if force or position != self._position:
            self._position = position
            self._save_state()
        for n in [n for n in self._segments if n < position[0]]:
            del self._segments[n]
            self._path(n).unlink(missing_ok=True)

    def _save_state(self) -> None:
        segment, offset = self._position or (-1, 0)
        tmp = self.directory / (_STATE + ".tmp")
        state = {"segment": segment, "offset": offset, "dropped": dict(self.dropped)}
        tmp.write_text(json.dumps(state, sort_keys=True))
        os.replace(tmp, self.directory / _STATE)

    def _read(self, slot: _Slot) -> bytes | None:
        segment, offset = slot.position
        try:
            with self._path(segment).open("rb") as f:
                f.seek(offset)
                data = f.read(slot.size_bytes)
        except OSError:
            return None
        record = _decode(data, 0)
        return None if record is None else record[3]


# -- record codec and helpers ------------------------------------------------------------------


def _encode(kind: str, payload: bytes, count: int, appended_ms: int) -> bytes:
    kind_bytes = kind.encode()
    if not 0 < len(kind_bytes) < 256:
        raise ValueError(f"kind must be 1-255 UTF-8 bytes, got {kind!r}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    body = _HEADER.pack(0, len(payload), count, appended_ms, len(kind_bytes))[4:]
    crc = zlib.crc32(payload, zlib.crc32(kind_bytes, zlib.crc32(body)))
    return struct.pack("<I", crc) + body + kind_bytes + payload


def _decode(data: bytes, pos: int) -> tuple[str, int, int, bytes, int] | None:
    """The record at ``pos``: (kind, count, appended_ms, payload, end), or ``None`` when it is
    incomplete or fails its CRC."""
    if len(data) - pos < _HEADER.size:
        return None
    crc, length, count, t_ms, kind_len = _HEADER.unpack_from(data, pos)
    end = pos + _HEADER.size + kind_len + length
    if kind_len == 0 or length > MAX_PAYLOAD_BYTES or end > len(data):
        return None
    if zlib.crc32(memoryview(data)[pos + 4 : end]) != crc:
        return None
    start = pos + _HEADER.size
    try:
        kind = data[start : start + kind_len].decode()
    except UnicodeDecodeError:
        return None
    return kind, count, t_ms, data[start + kind_len : end], end


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WALError(f"{path.parent} is in use by another process") from None
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes in a size such as ``512MiB``, ``1GiB``, ``300MB`` or ``1048576`` (IEC units are
    powers of 1024, SI units of 1000). Raises ``ValueError`` for anything else or zero."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size: use e.g. 256MiB, 1GiB, 500MB or bytes")
    size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"size {text!r} must be larger than zero")
    return size


SYSTEM_WAL_ROOT: Final = Path("/var/lib/fleetscope/wal")


def default_directory(
    node: str, environ: Mapping[str, str] = os.environ, system_root: Path = SYSTEM_WAL_ROOT
) -> Path:
    """Where an agent for ``node`` keeps its WAL when not told: ``/var/lib/fleetscope/wal/NODE``
    when that can be written (an agent run as a system service), else the XDG state directory,
    ``$XDG_STATE_HOME/fleetscope/wal/NODE`` (``~/.local/state/…`` when the variable is unset,
    per the XDG Base Directory specification)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node) or "node"
    if _writable(system_root):
        return system_root / safe
    state = environ.get("XDG_STATE_HOME") or ""
    base = Path(state) if os.path.isabs(state) else Path(environ.get("HOME", "~")) / ".local/state"
    return base.expanduser() / "fleetscope" / "wal" / safe


def _writable(path: Path) -> bool:
    """Whether ``path`` exists and is writable, or could be created (its nearest existing
    ancestor is writable)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False
