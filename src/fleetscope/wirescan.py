"""Vectorized scan of encoded remote-write ``TimeSeries`` messages (the codec's fast path).

:func:`scan` takes the encoded bytes of each ``prometheus.TimeSeries`` of a request and finds,
with NumPy over all series at once, where each series' labels end and every ``Sample``'s value
and timestamp. It accepts only the layout that Prometheus and Fleetscope encoders write: label
fields first, then sample fields, every sample record of one series the same length (always so
for one sample per series), each record ``value`` then ``timestamp`` with zero fields omitted or
not. Anything else (exemplars, histograms, other field orders, malformed bytes) returns ``None``,
and the caller decodes the request with the protobuf runtime, which also words the errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_TAG_LABEL = 0x0A  # field 1, length-delimited
_TAG_SAMPLE = 0x12  # field 2, length-delimited
_TAG_VALUE = 0x09  # Sample field 1, 64-bit
_TAG_TIMESTAMP = 0x10  # Sample field 2, varint
_PAD = 32  # bytes of zero padding so that fixed-width gathers never index past the end

I64 = npt.NDArray[np.int64]


@dataclass
class Scan:
    """Where things are in ``data`` (the series' bytes joined), per series and per sample."""

    data: bytes
    starts: I64  # first byte of each series with samples
    label_ends: I64  # end of its label fields (labels are data[starts[i]:label_ends[i]])
    counts: I64  # samples per kept series
    t_ms: I64
    values: npt.NDArray[np.float64]


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


def scan(blobs: list[bytes]) -> Scan | None:
    """Locate labels and decode samples of encoded ``TimeSeries``; ``None``: use the slow path.

    Series without samples are left out of the result.
    """
    n = len(blobs)
    lens = np.fromiter(map(len, blobs), np.int64, n)
    data = b"".join(blobs)
    buf = np.frombuffer(data + bytes(_PAD), np.uint8)
    ends = np.cumsum(lens)
    starts = ends - lens
    label_ends = _label_ends(buf, starts, ends)
    if label_ends is None:
        return None
    has = label_ends < ends
    starts, label_ends, ends = starts[has], label_ends[has], ends[has]
    # every sample record of a series: 0x12 <len> <Sample>, all of the series' first length
    first_len = buf[label_ends + 1].astype(np.int64)
    if (buf[label_ends] != _TAG_SAMPLE).any() or (first_len >= 0x80).any():
        return None
    rec = first_len + 2
    section = ends - label_ends
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
    body = at + 2
    has_value = (size >= 9) & (buf[body] == _TAG_VALUE)
    values = np.zeros(total, np.float64)
    if has_value.any():
        vb = buf[body[has_value, None] + 1 + np.arange(8)]
        values[has_value] = np.ascontiguousarray(vb).view("<f8")[:, 0]
    t_at = body + np.where(has_value, 9, 0)
    t_room = size - np.where(has_value, 9, 0)
    has_t = t_room > 0
    t_ms = np.zeros(total, np.int64)
    if has_t.any():
        t_at, t_room = t_at[has_t], t_room[has_t]
        if (buf[t_at] != _TAG_TIMESTAMP).any() or (t_room > 11).any():
            return None
        width = int(t_room.max()) - 1
        dec = _varints(buf, t_at + 1, max(width, 1))
        if dec is None or (dec[1] != t_room - 1).any():
            return None
        t_ms[has_t] = dec[0].view(np.int64)
    return Scan(data, starts, label_ends, counts, t_ms, values)
