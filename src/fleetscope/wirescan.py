"""Vectorized scan of encoded remote-write ``TimeSeries`` messages (the codec's fast path).

:func:`scan` takes the encoded bytes of each ``prometheus.TimeSeries`` of a request and finds,
with NumPy over all series at once, where each series' labels end and every ``Sample``'s value
and timestamp. It accepts only the layout that Prometheus and Fleetscope encoders write: label
fields first, then sample fields, every sample record of one series the same length (always so
for one sample per series), each record ``value`` then ``timestamp`` with zero fields omitted or
not. Anything else (exemplars, histograms, other field orders, malformed bytes) returns ``None``,
and the caller decodes the request with the protobuf runtime, which also words the errors.

Prometheus' own requests (one sample per series, label sets seen before) take a shorter way:
each series is taken to end in one sample record of the usual size, the bytes before it are
looked up among label fields the caller already knows, and only when every one is found are the
records decoded as such; walking the label fields is left for what is new.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

_TAG_LABEL = 0x0A  # field 1, length-delimited
_TAG_SAMPLE = 0x12  # field 2, length-delimited
_TAG_VALUE = 0x09  # Sample field 1, 64-bit
_TAG_TIMESTAMP = 0x10  # Sample field 2, varint
_PAD = 32  # bytes of zero padding so that fixed-width gathers never index past the end

I64 = npt.NDArray[np.int64]
V = TypeVar("V")


@dataclass
class Scan(Generic[V]):
    """Where things are in ``data`` (the series' bytes joined), per series and per sample."""

    data: bytes
    starts: I64  # first byte of each series with samples
    label_ends: I64  # end of its label fields (labels are data[starts[i]:label_ends[i]])
    counts: I64  # samples per kept series
    t_ms: I64
    values: npt.NDArray[np.float64]
    keys: list[bytes]  # the label fields of each kept series: data[starts[i]:label_ends[i]]
    known: list[V | None]  # what the caller's ``known`` mapping holds for each key, or None


_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], np.uint64)
_MSB = np.uint64(0x8080808080808080)
# One sample record of Prometheus' usual shape: 0x12 <16> 0x09 <double> 0x10 <6-byte varint>,
# or 0x12 <7> 0x10 <6-byte varint> when the value is zero (left out). Timestamps from 1971 to
# 2109 take six varint bytes.
_USUAL_VALUE_RECORD = 2 + 16
_USUAL_ZERO_RECORD = 2 + 7
_USUAL_TIME_BYTES = 6


def _varints(
    buf: npt.NDArray[np.uint8], at: I64, width: int
) -> tuple[npt.NDArray[np.uint64], I64] | None:
    """Decode one varint at each offset: values and byte counts; ``None`` if one is longer."""
    grid = buf[at[:, None] + np.arange(width)]
    more = grid >= 0x80
    nbytes = np.argmin(more, axis=1) + 1
    if more.all(axis=1).any():
        return None
    keep = np.arange(width) < nbytes[:, None]
    groups = (grid & 0x7F).astype(np.uint64) * keep
    shifts = (np.arange(width, dtype=np.uint64) * np.uint64(7))[None, :]
    return np.bitwise_or.reduce(groups << shifts, axis=1), nbytes.astype(np.int64)


def _short_varints(
    words: npt.NDArray[np.uint64], at: I64, nbytes: I64 | int
) -> npt.NDArray[np.uint64] | None:
    """Decode varints of exactly ``nbytes`` (1 to 8) bytes at each offset, in registers.

    ``words[i]`` is the 8 bytes at offset ``i``. ``None`` when a varint is not exactly that
    long. The 7-bit groups are packed by three shift-and-mask steps (7→14→28→56 bits).
    """
    x = words[at]
    low = _LOW_BYTES[nbytes]
    if ((x & low & _MSB) != (_LOW_BYTES[nbytes - 1] & _MSB)).any():
        return None  # every byte but the last must say "more"
    x &= low & np.uint64(0x7F7F7F7F7F7F7F7F)
    for mask, shift in ((0x7F007F007F007F00, 1), (0x3FFF00003FFF0000, 2), (0x0FFFFFFF00000000, 4)):
        x = ((x & np.uint64(mask)) >> np.uint64(shift)) | (x & ~np.uint64(mask))
    return x


def _label_ends(buf: npt.NDArray[np.uint8], starts: I64, ends: I64) -> I64 | None:
    """Walk the leading label fields of every series in lockstep; where each run ends."""
    out = starts.copy()
    active = np.arange(starts.shape[0])
    pos = starts.copy()
    while active.size:
        p, e = pos[active], ends[active]
        is_label = (p < e) & (buf[p] == _TAG_LABEL)
        active, p, e = active[is_label], p[is_label], e[is_label]
        if not active.size:
            break
        length = buf[p + 1].astype(np.int64)
        if (length < 0x80).all():  # the usual one-byte length: no varint work
            nxt = p + 2 + length
        else:
            dec = _varints(buf, p + 1, 5)
            if dec is None:
                return None
            nxt = p + 1 + dec[1] + dec[0].astype(np.int64)
        if (nxt > e).any():
            return None
        pos[active] = nxt
        out[active] = nxt
    return out


def _usual_records(
    buf: npt.NDArray[np.uint8], starts: I64, ends: I64
) -> tuple[I64, npt.NDArray[np.bool_]] | None:
    """Where each series' one sample record starts and whether it has a value, if every series
    ends in a record of the usual shape; ``None`` otherwise. Only a guess until the bytes before
    each record prove to be label fields."""
    at = ends - _USUAL_VALUE_RECORD
    with_value = (at > starts) & (buf[at] == _TAG_SAMPLE) & (buf[at + 1] == 16)
    if with_value.all():
        return at, with_value
    zero_at = ends - _USUAL_ZERO_RECORD
    zero = (zero_at > starts) & (buf[zero_at] == _TAG_SAMPLE) & (buf[zero_at + 1] == 7)
    if not (with_value | zero).all():
        return None
    return np.where(with_value, at, zero_at), with_value


def _decode_usual(
    buf: npt.NDArray[np.uint8],
    words: npt.NDArray[np.uint64],
    at: I64,
    with_value: npt.NDArray[np.bool_],
) -> tuple[I64, npt.NDArray[np.float64]] | None:
    """Timestamps and values of usual records at ``at``; ``None`` if their insides are not."""
    t_tag = at + np.where(with_value, 11, 2)
    if (buf[t_tag] != _TAG_TIMESTAMP).any():
        return None
    values = words[at + 3].view("<f8")
    if with_value.all():
        if (buf[at + 2] != _TAG_VALUE).any():
            return None
    else:
        if (buf[at[with_value] + 2] != _TAG_VALUE).any():
            return None
        values = np.where(with_value, values, 0.0)
    t_ms = _short_varints(words, t_tag + 1, _USUAL_TIME_BYTES)
    return None if t_ms is None else (t_ms.view(np.int64), values)


def scan(blobs: list[bytes], known: Mapping[bytes, V] | None = None) -> Scan[V] | None:
    """Locate labels and decode samples of encoded ``TimeSeries``; ``None``: use the slow path.

    Series without samples are left out of the result. ``known`` maps label fields seen in
    earlier scans (``Scan.keys``) to whatever the caller keeps for them; ``Scan.known`` is the
    lookup of every key in it. When every series is one usual sample record after a known run
    of label fields, the labels are found from the end, without walking them. (That split is
    the only one: label fields parsed from the start end where a sample field begins.)
    """
    n = len(blobs)
    lens = np.fromiter(map(len, blobs), np.int64, n)
    data = b"".join(blobs)
    padded = data + bytes(_PAD)
    buf = np.frombuffer(padded, np.uint8)
    # the 8 bytes at every offset as one little-endian word (unaligned, no copy)
    words: npt.NDArray[np.uint64] = np.ndarray(
        (len(padded) - 7,), "<u8", buffer=padded, strides=(1,)
    )
    ends = np.cumsum(lens)
    starts = ends - lens
    label_ends: I64 | None = None
    keys: list[bytes] | None = None
    found: list[V | None] | None = None
    usual = _usual_records(buf, starts, ends) if known is not None and n else None
    if usual is not None and known is not None:
        at, with_value = usual
        keys = [data[a:b] for a, b in zip(starts.tolist(), at.tolist(), strict=True)]
        found = list(map(known.get, keys))
        if None in found:
            keys = found = None
        else:
            label_ends = at  # proven: the bytes before every record are known label fields
            samples = _decode_usual(buf, words, at, with_value)
            if samples is not None:
                ones = np.ones(n, np.int64)
                return Scan(data, starts, at, ones, *samples, keys, found)
    if label_ends is None:
        label_ends = _label_ends(buf, starts, ends)
        if label_ends is None:
            return None
    has = label_ends < ends
    if not has.all():
        starts, label_ends, ends = starts[has], label_ends[has], ends[has]
    # every sample record of a series: 0x12 <len> <Sample>, all of the series' first length
    first_len = buf[label_ends + 1].astype(np.int64)
    if (buf[label_ends] != _TAG_SAMPLE).any() or (first_len >= 0x80).any():
        return None
    rec = first_len + 2
    section = ends - label_ends
    if (section == rec).all():  # one sample per series (checked above)
        counts = np.ones(section.shape[0], np.int64)
        at, size = label_ends, first_len
    else:
        if (section % rec).any():
            return None
        counts = section // rec
        total = int(counts.sum())
        first_row = np.cumsum(counts) - counts
        k = np.arange(total, dtype=np.int64) - np.repeat(first_row, counts)
        at = np.repeat(label_ends, counts) + k * np.repeat(rec, counts)
        size = np.repeat(first_len, counts)
        if (buf[at] != _TAG_SAMPLE).any() or (buf[at + 1] != size).any():
            return None
    total = at.shape[0]
    body = at + 2
    has_value = (size >= 9) & (buf[body] == _TAG_VALUE)
    if has_value.all():
        values = words[body + 1].view("<f8")
    else:
        values = np.zeros(total, np.float64)
        values[has_value] = words[body[has_value] + 1].view("<f8")
    t_at = body + np.where(has_value, 9, 0)
    t_room = size - np.where(has_value, 9, 0)
    has_t = t_room > 0
    t_ms = np.zeros(total, np.int64)
    if has_t.any():
        t_at, t_room = t_at[has_t], t_room[has_t]
        if (buf[t_at] != _TAG_TIMESTAMP).any() or (t_room > 11).any() or (t_room < 2).any():
            return None
        nbytes = t_room - 1
        if int(nbytes.max()) <= 8:
            decoded = _short_varints(words, t_at + 1, nbytes)
        else:  # negative or far-future timestamps
            dec = _varints(buf, t_at + 1, int(nbytes.max()))
            decoded = None if dec is None or (dec[1] != nbytes).any() else dec[0]
        if decoded is None:
            return None
        t_ms[has_t] = decoded.view(np.int64)
    if keys is None:
        keys = [data[a:b] for a, b in zip(starts.tolist(), label_ends.tolist(), strict=True)]
    if found is None:
        found = list(map(known.get, keys)) if known is not None else [None] * len(keys)
    return Scan(data, starts, label_ends, counts, t_ms, values, keys, found)
