"""The agent's write-ahead log: order, restart, rotation, torn and corrupt records, the bound."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetscope import wal
from fleetscope.wal import WAL, MemoryQueue, WALError, parse_size, record_size


class Clock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drain(q: wal.Queue) -> list[bytes]:
    """Every pending payload, oldest first, acknowledging each."""
    out = []
    while (entry := q.peek()) is not None:
        out.append(entry.payload)
        q.ack(entry)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


@pytest.fixture
def opened() -> Iterator[Callable[..., WAL]]:
    """Factory for WALs that are closed after the test (reopening the same directory works)."""
    logs: list[WAL] = []

    def open_(directory: Path, *args: int, **kw: object) -> WAL:
        log = WAL(directory, *args, **kw)  # type: ignore[arg-type]
        logs.append(log)
        return log

    yield open_
    for log in logs:
        log.close()


QUEUES = [
    pytest.param(lambda d, clock, cap: WAL(d, cap, clock=clock), id="wal"),
    pytest.param(lambda d, clock, cap: MemoryQueue(cap, clock=clock), id="memory"),
]


@pytest.mark.parametrize("make", QUEUES)
def test_entries_come_out_oldest_first_with_their_counts(
    tmp_path: Path, make: Callable[[Path, Clock, int], wal.Queue]
) -> None:
    clock = Clock()
    q = make(tmp_path / "wal", clock, 1 << 20)
    try:
        assert q.peek() is None and len(q) == 0 and q.oldest_age_s == 0.0
        q.append(b"one", 10)
        clock.now += 15
        q.append(b"two", 20)
        q.append(b'[{"kind": "xid"}]', 1, "events")
        clock.now += 5
        assert len(q) == 3 and q.pending_samples == 30  # events are not samples
        assert q.pending_bytes == sum(
            record_size(k, p) for k, p in [("samples", b"one"), ("samples", b"two"),
                                           ("events", b'[{"kind": "xid"}]')]
        )  # fmt: skip
        assert q.oldest_age_s == 20.0
        first = q.peek()
        assert first is not None and (first.payload, first.count, first.kind) == (
            b"one", 10, "samples"
        )  # fmt: skip
        assert q.peek() == first  # peeking does not consume
        q.ack(first)
        q.ack(first)  # acknowledging twice is a no-op
        assert q.oldest_age_s == 5.0 and q.pending_samples == 20
        second = q.peek()
        assert second is not None and second.payload == b"two"
        q.ack(second, delivered=False)  # refused by the receiver: counted as dropped
        assert q.dropped_samples == 20
        events = q.peek()
        assert events is not None and events.kind == "events" and events.count == 1
        q.ack(events)
        assert q.peek() is None and q.pending_bytes == 0 and q.oldest_age_s == 0.0
    finally:
        q.close()


@pytest.mark.parametrize("make", QUEUES)
def test_a_full_queue_drops_the_oldest_and_counts_their_samples(
    tmp_path: Path, make: Callable[[Path, Clock, int], wal.Queue]
) -> None:
    size = record_size("samples", b"x" * 100)
    q = make(tmp_path / "wal", Clock(), 8 * size)
    try:
        for k in range(40):
            assert q.append(bytes([k]) * 100, k)
            if isinstance(q, WAL):
                assert q.disk_bytes <= 8 * size
        kept = drain(q)
        # the newest entries survive, contiguous and in order; everything older is counted
        firsts = [p[0] for p in kept]
        assert firsts == list(range(40 - len(firsts), 40)) and len(firsts) >= 4
        assert q.dropped_samples == sum(range(40 - len(firsts)))
        assert not q.append(b"y" * (9 * size), 7)  # larger than the whole bound: dropped at once
        assert q.dropped_samples == sum(range(40 - len(firsts))) + 7 and q.peek() is None
    finally:
        q.close()


def test_a_restart_resumes_after_the_last_acknowledged_entry(
    tmp_path: Path, opened: Callable[..., WAL]
) -> None:
    clock = Clock()
    log = opened(tmp_path, clock=clock)
    for k in range(5):
        log.append(f"batch {k}".encode(), k + 1)
        clock.now += 1
    for _ in range(2):
        entry = log.peek()
        assert entry is not None
        log.ack(entry, delivered=entry.count != 2)  # the second was refused
    log.close()
    again = opened(tmp_path, clock=clock)
    assert len(again) == 3 and again.pending_samples == 3 + 4 + 5
    assert again.oldest_age_s == 3.0  # appended times survive the restart
    assert again.dropped_samples == 2  # so does the dropped total
    again.append(b"batch 5", 6)
    assert drain(again) == [b"batch 2", b"batch 3", b"batch 4", b"batch 5"]
    again.close()
    assert len(opened(tmp_path)) == 0


def test_segments_rotate_and_acknowledged_ones_are_deleted(
    tmp_path: Path, opened: Callable[..., WAL]
) -> None:
    log = opened(tmp_path, 1 << 20, 300)
    payloads = [bytes([k]) * 100 for k in range(6)]
    for p in payloads:
        log.append(p, 1)
    files = segments(tmp_path)
    assert len(files) == 3  # two 128-byte records per 300-byte segment
    assert all(f.stat().st_size == 2 * record_size("samples", payloads[0]) for f in files)
    assert log.disk_bytes == sum(f.stat().st_size for f in files)
    entry = log.peek()
    assert entry is not None
    log.ack(entry)
    assert segments(tmp_path) == files  # the first segment still holds a pending entry
    entry = log.peek()
    assert entry is not None
    log.ack(entry)
    assert segments(tmp_path) == files[1:]
    log.close()
    assert drain(opened(tmp_path, 1 << 20, 300)) == payloads[2:]


def test_a_torn_tail_is_truncated_and_appending_continues(
    tmp_path: Path, opened: Callable[..., WAL]
) -> None:
    log = opened(tmp_path)
    log.append(b"first", 1)
    log.append(b"second", 2)
    log.close()
    (seg,) = segments(tmp_path)
    good = seg.stat().st_size
    whole = wal._encode("samples", b"third, cut by kill -9", 3, 1)
    with seg.open("ab") as f:
        f.write(whole[: len(whole) // 2])
    log = opened(tmp_path)
    assert seg.stat().st_size == good and log.pending_samples == 3
    log.append(b"fourth", 4)
    log.close()
    assert drain(opened(tmp_path)) == [b"first", b"second", b"fourth"]


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda size: size - 1, id="payload"),
        pytest.param(lambda size: 9, id="header-count"),
        pytest.param(lambda size: 5, id="header-length"),
    ],
)
def test_a_record_failing_its_crc_is_never_replayed(
    tmp_path: Path, opened: Callable[..., WAL], where: Callable[[int], int]
) -> None:
    log = opened(tmp_path)
    log.append(b"good", 1)
    log.append(b"flipped", 2)
    log.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    second = record_size("samples", b"good")
    data[second + where(len(data) - second)] ^= 0x40
    seg.write_bytes(bytes(data))
    log = opened(tmp_path)
    assert len(log) == 1 and log.pending_samples == 1
    assert seg.stat().st_size == second
    assert drain(log) == [b"good"]


def test_corruption_in_an_older_segment_costs_only_the_rest_of_that_segment(
    tmp_path: Path, opened: Callable[..., WAL]
) -> None:
    log = opened(tmp_path, 1 << 20, 300)
    for k in range(6):
        log.append(bytes([k]) * 100, 1)
    log.close()
    first = segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # the second record of the first segment
    first.write_bytes(bytes(data))
    assert [p[0] for p in drain(opened(tmp_path, 1 << 20, 300))] == [0, 2, 3, 4, 5]


def test_an_unreadable_position_file_resends_rather_than_loses(
    tmp_path: Path, opened: Callable[..., WAL]
) -> None:
    log = opened(tmp_path)
    for k in range(3):
        log.append(bytes([k]), 1)
    entry = log.peek()
    assert entry is not None
    log.ack(entry)
    log.close()
    position = json.loads((tmp_path / "ack.json").read_text())
    assert position["offset"] == record_size("samples", b"\0")
    (tmp_path / "ack.json").write_text('{"segm')  # a torn write of the position
    assert drain(opened(tmp_path)) == [b"\0", b"\1", b"\2"]


def test_a_failed_write_leaves_the_log_valid(
    tmp_path: Path, opened: Callable[..., WAL], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = opened(tmp_path)
    log.append(b"kept", 1)
    real_write = os.write

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        log.append(b"lost to a full disk", 5)
    monkeypatch.undo()
    log.append(b"after", 2)
    assert log.pending_samples == 3
    log.close()
    assert drain(opened(tmp_path)) == [b"kept", b"after"]


def test_a_wal_directory_is_held_by_one_process(tmp_path: Path, opened: Callable[..., WAL]) -> None:
    opened(tmp_path)
    with pytest.raises(WALError, match="in use"):
        WAL(tmp_path)


def test_an_entry_dropped_while_in_flight_is_not_acknowledged_twice(
    tmp_path: Path, opened: Callable[..., WAL]
) -> None:
    size = record_size("samples", b"x" * 100)
    log = opened(tmp_path, 8 * size)
    log.append(b"a" * 100, 1)
    in_flight = log.peek()
    assert in_flight is not None
    for _ in range(12):  # the WAL fills while the oldest is being sent
        log.append(b"b" * 100, 1)
    assert log.dropped_samples >= 1
    pending = len(log)
    log.ack(in_flight)  # a no-op: it was dropped meanwhile
    assert len(log) == pending


@pytest.mark.parametrize(
    ("text", "size"),
    [
        pytest.param("512MiB", 512 << 20, id="MiB"),
        pytest.param("1GiB", 1 << 30, id="GiB"),
        pytest.param("1.5 KiB", 1536, id="fraction"),
        pytest.param("300MB", 300_000_000, id="SI"),
        pytest.param("4096", 4096, id="bytes"),
        pytest.param("64mib", 64 << 20, id="lower-case"),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-1MiB", "0", "12 parsecs"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_the_default_directory_is_per_node_under_var_lib_or_xdg_state(tmp_path: Path) -> None:
    system = tmp_path / "var" / "lib" / "fleetscope" / "wal"
    assert wal.default_directory("gpu-01", {}, system) == system / "gpu-01"
    unusable = tmp_path / "a-file"  # cannot hold directories (mode bits do not stop root)
    unusable.write_text("")
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": "/home/x"}
    got = wal.default_directory("a/b", env, unusable / "wal")
    assert got == tmp_path / "state" / "fleetscope" / "wal" / "a_b"
    got = wal.default_directory("n", {"HOME": "/home/x", "XDG_STATE_HOME": "rel"}, unusable)
    assert got == Path("/home/x/.local/state/fleetscope/wal/n")
