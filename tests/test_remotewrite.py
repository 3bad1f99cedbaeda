"""Tests of the remote-write 1.0 codec (fleetscope.remotewrite)."""

from __future__ import annotations

import struct
from typing import Any

import cramjam
import numpy as np
import pytest

from fleetscope import remotewrite
from fleetscope.remotewrite import (
    HEADERS,
    RemoteWriteError,
    TimeSeries,
    WriteRequest,
    decode,
    encode,
)
from fleetscope.store import SampleBatch

STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN = struct.unpack("<d", STALE_NAN_BITS.to_bytes(8, "little"))[0]
T0 = 1_700_000_000_000


def rows_of(batch: SampleBatch) -> list[tuple[tuple[tuple[str, str], ...], int, int]]:
    """Rows as (sorted labels, t_ms, value bits), sorted: NaN payloads compare exactly."""
    bits = batch.values.view(np.int64)
    return sorted(
        (
            tuple(sorted(batch.series[int(batch.series_index[k])].items())),
            int(batch.t_ms[k]),
            int(bits[k]),
        )
        for k in range(len(batch))
    )


def gpu(name: str, g: int, **extra: str) -> dict[str, str]:
    return {"__name__": name, "node": "n1", "gpu": str(g), "gpu_uuid": f"GPU-{g}", **extra}


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param([(gpu("fleet_gpu_up", 0), T0, 1.0)], id="one-sample"),
        pytest.param(
            [
                (gpu("fleet_gpu_power_watts", g), T0 + 15_000 * k, 100.0 + k)
                for g in range(4)
                for k in range(50)
            ],
            id="many-samples-per-series",
        ),
        pytest.param(
            [
                (gpu("fleet_gpu_power_watts", 0), T0, float("nan")),
                (gpu("fleet_gpu_power_watts", 0), T0 + 1, STALE_NAN),
                (gpu("fleet_gpu_power_watts", 1), T0, float("inf")),
                (gpu("fleet_gpu_power_watts", 2), T0, float("-inf")),
            ],
            id="nan-stale-nan-inf",
        ),
        pytest.param(
            [
                (gpu("fleet_gpu_utilization_ratio", 0), T0, 0.0),
                (gpu("fleet_gpu_utilization_ratio", 0), T0 + 1, 0.5),
                (gpu("fleet_gpu_utilization_ratio", 1), 0, 0.0),
                (gpu("fleet_gpu_utilization_ratio", 2), 0, -0.0),
            ],
            id="zeros",
        ),
        pytest.param(
            [
                ({"__name__": "m"}, -1, 1.0),
                ({"__name__": "m"}, 5, 2.0),
                ({"__name__": "m", "x": "y"}, 2**62, 3.0),
                ({"__name__": "m", "x": "z"}, 127, 4.0),
                ({"__name__": "m", "x": "w"}, 128, 5.0),
            ],
            id="extreme-timestamps",
        ),
        pytest.param(
            [({"__name__": "m", "model": "NVIDIA H100 80GB HBM3", "u": "ü✓" * 100}, T0, 1.0)],
            id="unicode-long-label",
        ),
        pytest.param([], id="empty"),
    ],
)
def test_round_trip(rows: list[tuple[dict[str, str], int, float]]) -> None:
    batch = SampleBatch.from_rows(rows)
    assert rows_of(decode(encode(batch))) == rows_of(batch)


def test_stale_nan_bit_pattern_survives() -> None:
    batch = SampleBatch.from_rows([({"__name__": "m"}, T0, STALE_NAN)])
    got = decode(encode(batch))
    assert int(got.values.view(np.int64)[0]) == STALE_NAN_BITS


@pytest.mark.parametrize(
    ("t_low", "t_high", "fast_applies"),
    [
        pytest.param(T0, T0 + 10**9, True, id="realistic-times"),
        pytest.param(-(2**40), 2**45, False, id="mixed-varint-widths"),
    ],
)
def test_fast_and_slow_paths_agree(t_low: int, t_high: int, fast_applies: bool) -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        n_series = int(rng.integers(1, 50))
        series = [{"__name__": f"m{i % 5}", "i": str(i)} for i in range(n_series)]
        n = int(rng.integers(1, 500))
        idx = rng.integers(0, n_series, n).astype(np.int32)
        t = rng.integers(t_low, t_high, n).astype(np.int64)
        v = rng.choice([0.0, 1.5, float("nan"), -3.0], n)
        raw = bytes(cramjam.snappy.decompress_raw(encode(SampleBatch(series, idx, t, v))))
        fast = remotewrite._decode_fast(raw)
        slow = remotewrite._decode_slow(raw)
        if fast_applies:
            assert fast is not None
        if fast is not None:
            assert rows_of(fast) == rows_of(slow)


def _request(series: list[tuple[list[tuple[str, str]], list[tuple[float, int]]]]) -> bytes:
    req: Any = WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        for v, t in samples:
            ts.samples.add(value=v, timestamp=t)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def test_decodes_what_the_protobuf_runtime_writes() -> None:
    # the runtime omits zero fields (as Prometheus does), so records have different lengths
    body = _request(
        [
            ([("__name__", "a"), ("x", "1")], [(0.0, T0), (2.0, T0 + 1), (0.0, 0), (3.0, 0)]),
            ([("__name__", "b")], [(0.0, 0)]),
            ([("__name__", "c")], []),
        ]
    )
    got = decode(body)
    assert rows_of(got) == rows_of(
        SampleBatch.from_rows(
            [
                ({"__name__": "a", "x": "1"}, T0, 0.0),
                ({"__name__": "a", "x": "1"}, T0 + 1, 2.0),
                ({"__name__": "a", "x": "1"}, 0, 0.0),
                ({"__name__": "a", "x": "1"}, 0, 3.0),
                ({"__name__": "b"}, 0, 0.0),
            ]
        )
    )
    assert [s["__name__"] for s in got.series] == ["a", "b"]


def test_series_with_only_exemplars_is_skipped() -> None:
    req: Any = WriteRequest()
    ts = req.timeseries.add()
    ts.labels.add(name="__name__", value="h")
    ex = ts.exemplars.add(value=1.0, timestamp=T0)
    ex.labels.add(name="trace_id", value="abc")
    ts2 = req.timeseries.add()
    ts2.labels.add(name="__name__", value="g")
    ts2.samples.add(value=1.0, timestamp=T0)
    ts2.exemplars.add(value=1.0, timestamp=T0)
    got = decode(bytes(cramjam.snappy.compress_raw(req.SerializeToString())))
    assert got.series == [{"__name__": "g"}]
    assert got.t_ms.tolist() == [T0]


def test_decoded_label_sets_are_private_copies() -> None:
    body = encode(SampleBatch.from_rows([({"__name__": "m", "a": "b"}, T0, 1.0)]))
    decode(body).series[0]["a"] = "changed"
    assert decode(body).series[0] == {"__name__": "m", "a": "b"}


def test_shared_label_sets_are_the_decoders_own() -> None:
    body = encode(SampleBatch.from_rows([({"__name__": "m", "a": "c"}, T0, 1.0)]))
    first = decode(body, shared_labels=True).series[0]
    assert decode(body, shared_labels=True).series[0] is first
    assert decode(body).series[0] is not first
    assert first == {"__name__": "m", "a": "c"}


def test_label_sets_are_numbered_by_their_wire_bytes() -> None:
    one = [("__name__", "m"), ("a", "1")]
    other = [("z", "2"), ("__name__", "m")]
    first = decode(_request([(one, [(1.0, T0)]), (other, [(1.0, T0), (2.0, T0 + 1)])]))
    again = decode(_request([(other, [(3.0, T0 + 2)]), (one, [(4.0, T0 + 1)])]))
    reordered = decode(_request([(list(reversed(one)), [(5.0, T0 + 2)])]))
    assert first.label_set_ids is not None and again.label_set_ids is not None
    assert again.label_set_ids.numbering is first.label_set_ids.numbering
    a, b = first.label_set_ids.ids.tolist()
    assert a != b
    assert again.label_set_ids.ids.tolist() == [b, a]
    assert again.series == [dict(other), dict(one)]
    # the same label set sent in another order is numbered apart: a number stands for one order
    assert reordered.label_set_ids is not None
    assert reordered.label_set_ids.ids.tolist()[0] not in (a, b)
    assert list(reordered.series[0]) == ["a", "__name__"]


TRICKY = ["", "a", "\x12", "\x12\x10", "\x12\x07", "\x0a\x12", "x\x12\x10abcdefghijklmnop", "ü"]


def test_known_label_sets_are_found_from_the_end_exactly() -> None:
    """A request whose label sets were seen before is decoded from the end of each series
    (one usual sample record after known label fields), and must agree with the protobuf
    runtime, also for label values made of the bytes that the shortcut looks for."""
    rng = np.random.default_rng(5)
    times = [T0, T0 + 15_000, 0, 5, 2**40, 2**50]
    for _ in range(200):
        series = []
        for i in range(int(rng.integers(1, 6))):
            labels = [("__name__", f"m{i}")]
            labels += [(f"l{j}", str(rng.choice(TRICKY))) for j in range(int(rng.integers(0, 3)))]
            k = 1 if rng.random() < 0.8 else int(rng.integers(0, 3))
            samples = [
                (float(rng.choice([0.0, 1.5])), int(rng.choice(times)) + s) for s in range(k)
            ]
            series.append((labels, samples))
        raw = bytes(cramjam.snappy.decompress_raw(_request(series)))
        slow = remotewrite._decode_slow(raw)
        for _ in range(2):  # the second time every label set is known
            fast = remotewrite._decode_fast(raw)
            if fast is not None:
                assert rows_of(fast) == rows_of(slow)


def test_labels_ending_like_a_sample_record_are_not_mistaken_for_one() -> None:
    # a zero value leaves a 9-byte record; the label value holds 0x12 0x10 nine bytes before
    # it, as if it were an 18-byte record: the shortcut must not take those bytes as a sample
    labels = [("__name__", "m"), ("z", "a\x12\x10" + "1234567")]
    body = _request([(labels, [(0.0, T0)])])
    for _ in range(3):
        got = decode(body)
        assert got.series == [dict(labels)]
        assert got.t_ms.tolist() == [T0]
        assert got.values.tolist() == [0.0]


def _garbage_series() -> bytes:
    ts: Any = TimeSeries()
    ts.labels.add(name="__name__", value="m")
    return bytes(cramjam.snappy.compress_raw(b"\x0a\x05" + ts.SerializeToString()[:3]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "empty body", id="empty"),
        pytest.param(b"\x10garbage-not-snappy", "bad snappy", id="bad-snappy"),
        pytest.param(b"\xff\xff\xff\xff\x0f", "over the", id="huge-declared-size"),
        pytest.param(
            bytes(cramjam.snappy.compress_raw(b"\xff\x01garbage")),
            "bad protobuf",
            id="bad-protobuf",
        ),
        pytest.param(_garbage_series(), "bad protobuf", id="truncated-series"),
        pytest.param(
            _request([([("job", "x")], [(1.0, T0)])]), "without a metric name", id="missing-name"
        ),
        pytest.param(
            _request([([("__name__", "")], [(1.0, T0)])]), "without a metric name", id="empty-name"
        ),
        pytest.param(
            _request([([("__name__", "m"), ("a", "1"), ("a", "2")], [(1.0, T0)])]),
            "duplicate label name 'a'",
            id="duplicate-label",
        ),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(RemoteWriteError, match=message):
        decode(body)


def test_unsorted_label_names_are_accepted() -> None:
    got = decode(_request([([("z", "1"), ("__name__", "m"), ("a", "2")], [(1.0, T0)])]))
    assert got.series == [{"z": "1", "__name__": "m", "a": "2"}]


def test_encode_sorts_labels_and_samples() -> None:
    batch = SampleBatch.from_rows(
        [({"z": "1", "__name__": "m"}, T0 + 5, 2.0), ({"z": "1", "__name__": "m"}, T0, 1.0)]
    )
    req: Any = WriteRequest()
    req.ParseFromString(bytes(cramjam.snappy.decompress_raw(encode(batch))))
    (ts,) = req.timeseries
    assert [lab.name for lab in ts.labels] == ["__name__", "z"]
    assert [s.timestamp for s in ts.samples] == [T0, T0 + 5]


def test_headers_are_the_spec_headers() -> None:
    assert HEADERS["Content-Encoding"] == "snappy"
    assert HEADERS["Content-Type"] == "application/x-protobuf"
    assert HEADERS["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert HEADERS["User-Agent"].startswith("fleetscope/")


def test_mutated_bodies_decode_or_raise_remote_write_error() -> None:
    """Corrupt protobuf bytes never crash the decoder with anything but RemoteWriteError."""
    rng = np.random.default_rng(3)
    rows = [(gpu("fleet_gpu_power_watts", g), T0 + k, float(k)) for g in range(3) for k in range(4)]
    raw = bytearray(cramjam.snappy.decompress_raw(encode(SampleBatch.from_rows(rows))))
    for _ in range(3000):
        mutated = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(mutated)))
            mutated[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            mutated = mutated[: int(rng.integers(1, len(mutated)))]
        outcomes: list[Any] = []
        for path in (remotewrite._decode_fast, remotewrite._decode_slow):
            try:
                outcomes.append(path(bytes(mutated)))
            except RemoteWriteError:
                outcomes.append("refused")
        fast, slow = outcomes
        if fast is None:  # the fast path stepped aside
            continue
        if isinstance(fast, SampleBatch):
            assert isinstance(slow, SampleBatch)
            assert rows_of(fast) == rows_of(slow)
        else:
            assert slow == "refused"
