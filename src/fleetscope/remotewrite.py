"""Prometheus remote-write 1.0 codec: :class:`SampleBatch` ⇄ snappy-compressed ``WriteRequest``.

The wire format is Prometheus' ``prompb`` (``remote.proto``/``types.proto``): a protobuf
``WriteRequest`` compressed with snappy's *raw block* format (not the framed format). The message
classes are built at import time from a programmatic ``FileDescriptorProto`` (no ``protoc``, no
generated files). Native histograms and exemplars are not modelled; their fields are skipped by
the parser, and a series that carries only them decodes to no samples.

Decoding does Python work per *series*, not per sample: the protobuf runtime splits the request
into series, :mod:`fleetscope.wirescan` reads every sample with NumPy, and label sets are kept
by their wire bytes (series repeat from one request to the next) and numbered: the batch
carries the numbers (:class:`~fleetscope.store.LabelSetIds`) so that the validator and the store
know a label set again without looking at it. Requests in another layout (exemplars, native
histograms, unusual field order) take the plain protobuf path, which is also the reference for
error messages. Encoding writes the sample records with NumPy and uses the message classes for
labels only.
"""

from __future__ import annotations

import threading
from typing import Any, Final, cast

import cramjam
import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from fleetscope import wirescan
from fleetscope.store import METRIC_NAME, LabelSetIds, SampleBatch

__all__ = [
    "CONTENT_TYPE",
    "HEADERS",
    "MAX_DECOMPRESSED_BYTES",
    "RemoteWriteError",
    "decode",
    "encode",
]

CONTENT_TYPE: Final = "application/x-protobuf"
HEADERS: Final[dict[str, str]] = {
    "Content-Encoding": "snappy",
    "Content-Type": CONTENT_TYPE,
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "fleetscope/0.1.0",
}
MAX_DECOMPRESSED_BYTES: Final = 256 * 1024 * 1024
"""Largest uncompressed ``WriteRequest`` accepted (the snappy header states the size)."""


class RemoteWriteError(ValueError):
    """A remote-write body that cannot be decoded; the message says what is wrong."""


def _build_classes() -> tuple[type[Message], ...]:
    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="fleetscope/prompb.proto", package="prometheus", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            fd = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = type_name

    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    message("Label", ("name", 1, f.TYPE_STRING, opt, ""), ("value", 2, f.TYPE_STRING, opt, ""))
    message("Sample", ("value", 1, f.TYPE_DOUBLE, opt, ""), ("timestamp", 2, f.TYPE_INT64, opt, ""))
    message(
        "Exemplar",
        ("labels", 1, f.TYPE_MESSAGE, rep, ".prometheus.Label"),
        ("value", 2, f.TYPE_DOUBLE, opt, ""),
        ("timestamp", 3, f.TYPE_INT64, opt, ""),
    )
    message(
        "TimeSeries",
        ("labels", 1, f.TYPE_MESSAGE, rep, ".prometheus.Label"),
        ("samples", 2, f.TYPE_MESSAGE, rep, ".prometheus.Sample"),
        ("exemplars", 3, f.TYPE_MESSAGE, rep, ".prometheus.Exemplar"),
    )
    meta = fdp.message_type.add(name="MetricMetadata")
    kinds = ["UNKNOWN", "COUNTER", "GAUGE", "HISTOGRAM", "GAUGEHISTOGRAM", "SUMMARY", "INFO"]
    enum = meta.enum_type.add(name="MetricType")
    for i, kind in enumerate([*kinds, "STATESET"]):
        enum.value.add(name=kind, number=i)
    for fname, number, ftype in [
        ("metric_family_name", 2, f.TYPE_STRING),
        ("help", 4, f.TYPE_STRING),
        ("unit", 5, f.TYPE_STRING),
    ]:
        meta.field.add(name=fname, number=number, type=ftype, label=opt)
    meta.field.add(
        name="type",
        number=1,
        type=f.TYPE_ENUM,
        label=opt,
        type_name=".prometheus.MetricMetadata.MetricType",
    )
    message(
        "WriteRequest",
        ("timeseries", 1, f.TYPE_MESSAGE, rep, ".prometheus.TimeSeries"),
        ("metadata", 3, f.TYPE_MESSAGE, rep, ".prometheus.MetricMetadata"),
    )
    # the same wire format, with each TimeSeries kept as bytes (for the fast path)
    blobs = fdp.message_type.add(name="SeriesBlobs")
    blobs.field.add(name="timeseries", number=1, type=f.TYPE_BYTES, label=rep)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
        for name in ("WriteRequest", "TimeSeries", "SeriesBlobs")
    )


WriteRequest, TimeSeries, _SeriesBlobs = _build_classes()


# ---------------------------------------------------------------------------------------------
# decode


def _decompressed_len(body: bytes) -> int:
    """The uncompressed length that a snappy raw block declares in its varint header."""
    n = shift = 0
    for i, byte in enumerate(body[:10]):
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n
        shift += 7
        if i == 4:
            break
    raise RemoteWriteError("bad snappy: body does not start with a valid length header")


def decode(body: bytes, *, shared_labels: bool = False) -> SampleBatch:
    """Decode a remote-write 1.0 body (snappy raw block of a protobuf ``WriteRequest``).

    Rows come out grouped by series, in the order they were sent. Series without float samples
    (only histograms or exemplars) are left out. Raises :class:`RemoteWriteError` for bad snappy,
    bad protobuf, a series without ``__name__`` or with the same label name twice.

    The batch's label sets are its own, unless ``shared_labels``: then those of series seen
    before may be the decoder's own dicts, shared with every batch that names them, and must
    not be changed. That is for callers that only read them (the HTTP receiver hands the batch
    to the validator and a store, neither of which changes a batch), and saves a copy of every
    label set of every request.
    """
    if not body:
        raise RemoteWriteError("empty body: expected a snappy-compressed WriteRequest")
    size = _decompressed_len(body)
    if size > MAX_DECOMPRESSED_BYTES:
        raise RemoteWriteError(
            f"bad snappy: header declares {size} decompressed bytes, "
            f"over the {MAX_DECOMPRESSED_BYTES} byte limit"
        )
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:  # cramjam raises its own DecompressionError
        raise RemoteWriteError(f"bad snappy: {e}") from None
    batch = _decode_fast(raw, shared_labels)
    return batch if batch is not None else _decode_slow(raw)


class _LabelTable:
    """Label sets read off the wire, numbered in order of first sight (one numbering).

    ``numbers`` maps the wire bytes of a series' label fields to its number, ``label_sets[n]``
    is the label set numbered ``n``. The table only grows; past :data:`_LABEL_TABLE_MAX` a new
    table (a new numbering) takes its place, so numbers already handed out stay true.
    """

    def __init__(self) -> None:
        self.numbers: dict[bytes, int] = {}
        self.label_sets: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def add(self, key: bytes) -> int:
        """Number of the label set whose label fields are ``key``, parsed and checked if new."""
        ts: Any = TimeSeries()
        try:
            ts.ParseFromString(key)
        except DecodeError as e:
            raise RemoteWriteError(f"bad protobuf: cannot parse series labels: {e}") from None
        labels = _labels_of([(lab.name, lab.value) for lab in ts.labels])
        with self._lock:
            number = self.numbers.get(key)
            if number is None:
                number = len(self.label_sets)
                self.label_sets.append(labels)  # before the number is visible in `numbers`
                self.numbers[key] = number
        return number


_LABEL_TABLE_MAX = 200_000
_table = _LabelTable()


def _label_table() -> _LabelTable:
    """The current numbering (a new one once the current is full)."""
    global _table
    if len(_table.label_sets) >= _LABEL_TABLE_MAX:
        _table = _LabelTable()
    return _table


def _decode_fast(raw: bytes, shared_labels: bool = False) -> SampleBatch | None:
    """The vectorized path (:mod:`fleetscope.wirescan`); ``None`` when it does not apply."""
    req: Any = _SeriesBlobs()
    try:
        req.ParseFromString(raw)
    except DecodeError:
        return None
    table = _label_table()
    found = wirescan.scan(list(req.timeseries), table.numbers)
    if found is None:
        return None
    if not found.counts.size:
        return SampleBatch.empty()
    numbers = found.known
    if None in numbers:
        pairs = zip(numbers, found.keys, strict=True)
        numbers = [table.add(k) if n is None else n for n, k in pairs]
    # map() keeps the per-series loops in C: they are much of the Python work per request
    known = cast(list[int], numbers)
    label_sets = map(table.label_sets.__getitem__, known)
    series = list(label_sets) if shared_labels else list(map(dict.copy, label_sets))
    if found.counts.size == found.t_ms.size:  # one sample per series: Prometheus' usual
        index = np.arange(len(series), dtype=np.int32)
    else:
        index = np.repeat(np.arange(len(series), dtype=np.int32), found.counts)
    ids = LabelSetIds(table, np.array(known, np.int64))
    return SampleBatch(series, index, found.t_ms, found.values, ids)


def _decode_slow(raw: bytes) -> SampleBatch:
    """Decode with the protobuf runtime alone: any valid encoding; the reference for errors."""
    req: Any = WriteRequest()
    try:
        req.ParseFromString(raw)
    except DecodeError as e:
        raise RemoteWriteError(f"bad protobuf: cannot parse WriteRequest: {e}") from None
    series: list[dict[str, str]] = []
    counts: list[int] = []
    values: list[float] = []
    times: list[int] = []
    for ts in req.timeseries:
        samples = ts.samples
        if not samples:
            continue
        series.append(_labels_of([(lab.name, lab.value) for lab in ts.labels]))
        counts.append(len(samples))
        values += [s.value for s in samples]
        times += [s.timestamp for s in samples]
    if not series:
        return SampleBatch.empty()
    index = np.repeat(np.arange(len(series), dtype=np.int32), counts)
    return SampleBatch(series, index, np.asarray(times, np.int64), np.asarray(values, np.float64))


def _labels_of(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The label set of one series, checked for a metric name and unique label names."""
    labels = dict(pairs)
    if len(labels) != len(pairs):
        names = [n for n, _ in pairs]
        dup = next(n for n in names if names.count(n) > 1)
        raise RemoteWriteError(f"duplicate label name {dup!r} in series {pairs}")
    if not labels.get(METRIC_NAME):
        raise RemoteWriteError(f"series without a metric name (__name__): {labels}")
    return labels


# ---------------------------------------------------------------------------------------------
# encode

# Sample record on the wire: 0x12 <len> 0x09 <8-byte LE double> 0x10 <varint timestamp>.
_MAX_RECORD = 2 + 1 + 8 + 1 + 10


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _sample_records(
    t_ms: npt.NDArray[np.int64], values: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Wire bytes of ``Sample`` fields (field 2 of TimeSeries) for every row, concatenated.

    Returns the bytes and each record's length. Negative timestamps take ten varint bytes, as
    protobuf encodes negative int64 values.
    """
    n = t_ms.shape[0]
    u = t_ms.astype(np.int64).view(np.uint64)
    # varint length: number of 7-bit groups, at least one
    nbits = np.zeros(n, np.int64)
    rest = u.copy()
    while True:
        nz = rest != 0
        if not nz.any():
            break
        nbits += nz
        rest >>= np.uint64(7)
    vlen = np.maximum(nbits, 1)
    rec = np.zeros((n, _MAX_RECORD), np.uint8)
    rec[:, 0] = 0x12
    rec[:, 1] = 10 + vlen  # 0x09 + 8 + 0x10 + varint
    rec[:, 2] = 0x09
    rec[:, 3:11] = values.astype("<f8").view(np.uint8).reshape(n, 8)
    rec[:, 11] = 0x10
    rest = u.copy()
    for k in range(10):
        byte = (rest & np.uint64(0x7F)).astype(np.uint8)
        more = k + 1 < vlen
        rec[:, 12 + k] = np.where(more, byte | 0x80, byte)
        rest >>= np.uint64(7)
    lengths = 12 + vlen
    mask = np.arange(_MAX_RECORD) < lengths[:, None]
    return rec[mask], lengths


def encode(batch: SampleBatch) -> bytes:
    """Encode a batch as a snappy-compressed remote-write 1.0 ``WriteRequest``.

    Each series is sent once with its samples sorted by time and its labels sorted by name (as
    the spec asks). Equal label sets in the batch are sent as separate series.
    """
    n = len(batch)
    order = np.lexsort((batch.t_ms, batch.series_index))
    sidx = batch.series_index[order]
    data, lengths = _sample_records(batch.t_ms[order], batch.values[order])
    ends = np.cumsum(lengths)
    blob = data.tobytes()
    present = np.unique(sidx)
    # first/last row of each present series in the sorted order
    starts_row = np.searchsorted(sidx, present, side="left")
    ends_row = np.searchsorted(sidx, present, side="right")
    parts: list[bytes] = []
    ts: Any = TimeSeries()
    for s, r0, r1 in zip(present.tolist(), starts_row.tolist(), ends_row.tolist(), strict=True):
        ts.Clear()
        for name, value in sorted(batch.series[s].items()):
            ts.labels.add(name=name, value=value)
        b0 = int(ends[r0 - 1]) if r0 > 0 else 0
        b1 = int(ends[r1 - 1]) if n else 0
        body = ts.SerializeToString() + blob[b0:b1]
        parts.append(b"\x0a" + _varint(len(body)) + body)
    return bytes(cramjam.snappy.compress_raw(b"".join(parts)))
