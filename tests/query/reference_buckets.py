"""The :class:`~fleetscope.store.Buckets` contract computed sample by sample: the reference that
the pushdown tests (a bucketing fake store) and the DuckDB store's cell tests compare with."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fleetscope.store import COUNTER_AGGREGATE, STALE_NAN_BITS, Buckets, Series


def is_stale(v: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    return np.asarray(v.view(np.int64) == STALE_NAN_BITS)


def reference_buckets(
    found: list[Series], base_ms: int, width_ms: int, n: int, wanted: set[str]
) -> Buckets:
    """The contract of :class:`Buckets` from each series' samples: group the samples by bucket
    (``base + (b-1)·width < t <= base + b·width``), reduce each group."""
    shape = (len(found), n)
    count = np.zeros(shape, np.int64)
    out = {k: np.full(shape, np.nan) for k in ("sum", "min", "max", "last", "edge", "first", "inc")}
    first_t, last_t = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    has_edge = np.zeros(shape, np.bool_)
    for i, s in enumerate(found):
        keep = ~is_stale(s.values)
        t, v = s.t_ms[keep], s.values[keep]
        if len(t) == 0:
            continue
        bucket = -((base_ms - t) // width_ms)  # ceil((t - base) / width)
        starts = np.flatnonzero(np.diff(bucket, prepend=-1))  # each group's first sample
        ends = np.append(starts[1:], len(t)) - 1  # and its last
        b = bucket[starts]
        count[i, b] = ends - starts + 1
        out["sum"][i, b] = np.add.reduceat(v, starts)
        out["min"][i, b] = np.minimum.reduceat(v, starts)
        out["max"][i, b] = np.maximum.reduceat(v, starts)
        out["last"][i, b] = v[ends]
        on_edge = t[ends] == base_ms + b * width_ms
        out["edge"][i, b[on_edge]] = v[ends[on_edge]]
        has_edge[i, b[on_edge]] = True
        out["first"][i, b] = v[starts]
        step = np.zeros(len(v))  # from the sample before, in the same bucket
        step[1:] = np.where(v[1:] < v[:-1], v[1:], v[1:] - v[:-1])
        step[starts] = 0.0
        out["inc"][i, b] = np.add.reduceat(step, starts)
        first_t[i, b], last_t[i, b] = t[starts], t[ends]
    for name in ("sum", "min", "max", "last"):
        if name not in wanted:
            out[name][:] = np.nan
    counter = COUNTER_AGGREGATE in wanted
    return Buckets(
        [s.labels for s in found],
        count,
        out["sum"],
        out["min"],
        out["max"],
        out["last"],
        out["edge"],
        has_edge,
        first_t=first_t if counter else None,
        first=out["first"] if counter else None,
        last_t=last_t if counter else None,
        increase=out["inc"] if counter else None,
    )
