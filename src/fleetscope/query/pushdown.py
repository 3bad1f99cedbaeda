"""Range-function pushdown: ``count/sum/avg/min/max/last/present_over_time``, ``rate`` and
``increase`` from per-bucket aggregates that the store computes (in SQL), instead of from every
sample.

DESIGN.md: the store may push range functions down, the evaluator keeps the semantics. Here the
evaluator cuts time into equal buckets so that every window is a whole number of them, asks the
store (:class:`~fleetscope.store.SupportsBuckets`) for each bucket's count, sum, min, max, last
value and the value of a sample sitting exactly on its right end, and combines buckets into
Prometheus 2.42's windows ``[t - range, t]`` (closed at both ends: the buckets right of
``t - range``, plus the edge sample of the bucket that ends at ``t - range``).

For evaluation times ``t_k = t_0 + k·step`` and range ``R`` the bucket width is
``g = gcd(step, R)``; window ``k`` is buckets ``k·s + 1 … k·s + w`` (``s = step/g``,
``w = R/g``) plus the edge of bucket ``k·s``. An instant query is one window of one bucket.
Combining costs O(series × buckets): counts and sums through prefix sums (sums in extended
precision, so a difference of two prefixes keeps the window's digits), minima and maxima through
a sparse table of doubling windows, the last value through a running index of non-empty buckets.

``rate`` and ``increase`` need a window's oldest and newest sample and its increase corrected for
counter resets. The store gives each bucket its first and last sample and its own corrected
increase; what it cannot know is the step between buckets (the first sample of a bucket against
the last of the previous non-empty one, ``v - prev``, or ``v`` after a reset). Each bucket adds
that step to its own increase; a window's increase is then a difference of prefix sums (extended
precision) over its buckets after its first non-empty one, plus that first bucket's own increase
and the step from the edge sample. The final arithmetic (extrapolation to the window's ends) is
:func:`~fleetscope.query.rangefuncs.extrapolate`, the code the sample kernel runs. The corrected
increase is a sum of the steps instead of Prometheus' ``last - first + Σ(value before a reset)``:
the same number in exact arithmetic, apart by rounding in floats (Prometheus' form cancels digits
after a reset from a large value; a prefix difference carries ~1e-19 of the whole query range's
increase), far inside 1e-9 relative for counters that only count up between resets.

Where the answer could differ from evaluating samples, :func:`over_time` returns ``None`` and
the evaluator reads samples: a NaN that is not a staleness marker (the store says so), an
``avg_over_time`` window whose sum is not finite (Prometheus' incremental mean and Inf rules),
or too many buckets for the pushdown to pay (a range that is not a small multiple of the step).
For ``rate``/``increase`` also: a store without the ``counter`` aggregate (it answers ``None`` or
leaves the arrays out), and a non-finite value (±Inf, or an overflowing step) in any bucket or
step that a window reads: Inf arithmetic depends on the order of operations.
Sums are added in another order than Prometheus' sequential loop: results agree to ~1e-15
relative, well inside the conformance tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fleetscope.query.rangefuncs import extrapolate
from fleetscope.query.value import F64, I64, Bools
from fleetscope.store import COUNTER_AGGREGATE, Buckets, Matcher, SupportsBuckets

__all__ = ["PUSHED_DOWN", "BucketPlan", "over_time", "plan"]

PUSHED_DOWN = frozenset(
    {"count_over_time", "sum_over_time", "avg_over_time", "min_over_time", "max_over_time",
     "last_over_time", "present_over_time", "rate", "increase"}
)  # fmt: skip
_NEEDS: dict[str, tuple[str, ...]] = {  # the bucket aggregates each function reads
    "count_over_time": (),
    "present_over_time": (),
    "sum_over_time": ("sum",),
    "avg_over_time": ("sum",),
    "min_over_time": ("min",),
    "max_over_time": ("max",),
    "last_over_time": ("last",),
    "rate": ("last", COUNTER_AGGREGATE),
    "increase": ("last", COUNTER_AGGREGATE),
}
MAX_BUCKETS = 20_000  # per series: beyond this, reading samples is about as cheap
MAX_WINDOW_BUCKETS = 4_096


@dataclass(frozen=True)
class BucketPlan:
    """Buckets for windows ``[ref_k - range_ms, ref_k]``: ``n`` buckets of ``width_ms`` from
    ``base_ms``; window ``k`` is buckets ``k·stride + 1 … k·stride + per_window`` plus the edge
    of bucket ``k·stride``."""

    base_ms: int
    width_ms: int
    n: int
    stride: int
    per_window: int
    windows: int


def plan(ref: I64, range_ms: int) -> BucketPlan | None:
    """The bucket layout for evaluation times ``ref`` (ascending, evenly spaced), or ``None``
    when it would need too many buckets."""
    if range_ms <= 0 or len(ref) == 0:
        return None
    steps = np.diff(ref)
    if (steps <= 0).any() or len(set(steps.tolist())) > 1:
        return None
    step = int(steps[0]) if len(steps) else 0
    width = math.gcd(step, range_ms) if step else range_ms
    stride, per_window = step // width, range_ms // width
    n = stride * (len(ref) - 1) + per_window + 1
    if n > MAX_BUCKETS or per_window > MAX_WINDOW_BUCKETS:
        return None
    return BucketPlan(int(ref[0]) - range_ms, width, n, stride, per_window, len(ref))


def over_time(
    store: SupportsBuckets, matchers: Sequence[Matcher], func: str, p: BucketPlan
) -> tuple[list[dict[str, str]], F64, Bools] | None:
    """``func`` over every window of ``p``: the series' labels (names kept), values
    ``[series, windows]`` and where a value exists; ``None``: evaluate from samples instead."""
    b = store.select_buckets(matchers, p.base_ms, p.width_ms, p.n, _NEEDS[func])
    if b is None:
        return None
    with np.errstate(all="ignore"):  # overflow to ±Inf and Inf - Inf are Prometheus' results
        return _combine(b, func, p)


def _combine(
    b: Buckets, func: str, p: BucketPlan
) -> tuple[list[dict[str, str]], F64, Bools] | None:
    first = np.arange(p.windows, dtype=np.int64) * p.stride  # each window's edge bucket
    count = _window_counts(b, p, first)
    if func in ("rate", "increase"):
        found = _window_rates(b, p, first, count, per_second=func == "rate")
        return None if found is None else (b.labels, *found)
    present = count > 0
    if func in ("count_over_time", "present_over_time"):
        values = count.astype(np.float64) if func == "count_over_time" else np.ones(count.shape)
    elif func in ("sum_over_time", "avg_over_time"):
        values = _window_sums(b, p, first)
        if func == "avg_over_time":
            if not np.isfinite(values[present]).all():
                return None
            values = values / np.where(present, count, 1)
    elif func in ("min_over_time", "max_over_time"):
        ufunc = np.fmin if func == "min_over_time" else np.fmax
        source = b.min if func == "min_over_time" else b.max
        values = ufunc(_window_extreme(ufunc, source, p, first), b.edge[:, first])
    elif func == "last_over_time":
        values = _window_last(b, p, first)
    else:
        raise ValueError(f"{func} is not pushed down")
    return b.labels, np.where(present, values, np.nan), present


def _window_counts(b: Buckets, p: BucketPlan, first: I64) -> I64:
    prefix = np.zeros((len(b.labels), p.n + 1), np.int64)
    np.cumsum(b.count, axis=1, out=prefix[:, 1:])
    inside = prefix[:, first + p.per_window + 1] - prefix[:, first + 1]
    return np.asarray(inside + b.has_edge[:, first], np.int64)


def _window_sums(b: Buckets, p: BucketPlan, first: I64) -> F64:
    """Window sums: prefix sums of the finite bucket sums (extended precision), with infinite
    buckets counted apart so that ``inf - inf`` never appears (a window holding both signs of
    infinity sums to NaN, as adding its samples one by one does)."""
    sums = np.where(b.count > 0, b.sum, 0.0)
    pos, neg = sums == np.inf, (sums == -np.inf) | np.isnan(sums)
    pos |= np.isnan(sums)  # a bucket holding +Inf and -Inf: NaN either way
    finite = np.where(pos | neg, 0.0, sums)

    def window_sum(x: npt.NDArray[np.longdouble]) -> npt.NDArray[np.longdouble]:
        prefix = np.zeros((len(b.labels), p.n + 1), np.longdouble)
        np.cumsum(x, axis=1, out=prefix[:, 1:])
        return prefix[:, first + p.per_window + 1] - prefix[:, first + 1]

    if p.per_window == 1:  # one bucket: its own sum, no prefix arithmetic at all
        inside = finite[:, first + 1]
        n_pos, n_neg = pos[:, first + 1], neg[:, first + 1]
    else:
        inside = window_sum(finite.astype(np.longdouble)).astype(np.float64)
        n_pos = window_sum(pos.astype(np.longdouble)) > 0
        n_neg = window_sum(neg.astype(np.longdouble)) > 0
    inside = np.where(n_pos, np.inf, inside)
    inside = np.where(n_neg, -np.inf, inside)
    inside = np.where(n_pos & n_neg, np.nan, inside)
    edge = np.where(b.has_edge[:, first], b.edge[:, first], 0.0)
    return np.asarray(inside + edge, np.float64)


def _window_extreme(ufunc: np.ufunc, source: F64, p: BucketPlan, first: I64) -> F64:
    """``ufunc`` (fmin/fmax, NaN = empty) over buckets ``first+1 … first+per_window``: a sparse
    table of windows doubling in length, then two overlapping lookups per window."""
    level, span = source, 1
    while span * 2 <= p.per_window:
        shifted = level[:, span:]
        level = ufunc(level[:, : shifted.shape[1]], shifted)
        span *= 2
    start = first + 1
    out: F64 = ufunc(level[:, start], level[:, start + p.per_window - span])
    return out


def _window_last(b: Buckets, p: BucketPlan, first: I64) -> F64:
    positions = np.where(b.count > 0, np.arange(p.n, dtype=np.int64), -1)
    newest = np.maximum.accumulate(positions, axis=1)[:, first + p.per_window]
    inside = newest >= first + 1
    rows = np.arange(len(b.labels))[:, None]
    from_buckets = b.last[rows, np.maximum(newest, 0)]
    edge = np.where(b.has_edge[:, first], b.edge[:, first], np.nan)
    return np.asarray(np.where(inside, from_buckets, edge), np.float64)


def _step(prev: F64, v: F64) -> F64:
    """The increase of a counter from ``prev`` to ``v``: ``v`` after a reset (``v < prev``)."""
    return np.asarray(np.where(v < prev, v, v - prev), np.float64)


def _window_rates(
    b: Buckets, p: BucketPlan, first: I64, count: I64, *, per_second: bool
) -> tuple[F64, Bools] | None:
    """``rate`` (``per_second``) or ``increase`` of every window with the sample kernel's
    arithmetic, or ``None`` without the counter aggregates or with a non-finite value read."""
    if b.first is None or b.first_t is None or b.last_t is None or b.increase is None:
        return None
    if p.per_window == 1:  # rate(x[5m]) at 5 m steps: one bucket and an edge, no prefix sums
        return _one_bucket_rates(b, p, first, count, per_second=per_second)
    rows = np.arange(len(b.labels))[:, None]
    at = np.arange(p.n, dtype=np.int64)
    nonempty = b.count > 0
    newest = np.maximum.accumulate(np.where(nonempty, at, -1), axis=1)  # at or before
    oldest = np.minimum.accumulate(np.where(nonempty, at, p.n)[:, ::-1], axis=1)[:, ::-1]
    # Each bucket's increase plus the step from the previous non-empty bucket's last sample.
    before = np.concatenate((np.full((len(b.labels), 1), -1), newest[:, :-1]), axis=1)
    joined = nonempty & (before >= 0)
    steps = np.where(joined, _step(b.last[rows, np.maximum(before, 0)], b.first), 0.0)
    terms = np.where(nonempty, b.increase + steps, 0.0)
    bad = ~np.isfinite(terms)
    prefix = np.zeros((len(b.labels), p.n + 1), np.longdouble)
    np.cumsum(np.where(bad, 0.0, terms).astype(np.longdouble), axis=1, out=prefix[:, 1:])
    bad_before = np.zeros((len(b.labels), p.n + 1), np.int64)
    np.cumsum(bad, axis=1, out=bad_before[:, 1:])

    end = first + p.per_window  # each window's last bucket
    lo = oldest[:, first + 1]  # the window's first non-empty bucket (when <= end)
    hi = newest[:, end]  # its last non-empty bucket (when > first)
    inner = lo <= end[None, :]
    lo_safe = np.minimum(lo, p.n - 1)
    has_edge = b.has_edge[:, first]
    edge, edge_t = b.edge[:, first], (p.base_ms + first * p.width_ms).astype(np.float64)
    # Buckets lo+1 … end: their terms hold every step inside the window but the first ones.
    after_lo = (prefix[:, end + 1] - prefix[rows, lo_safe + 1]).astype(np.float64)
    increase = b.increase[rows, lo_safe] + np.where(inner, after_lo, 0.0)
    increase += np.where(has_edge, _step(edge, b.first[rows, lo_safe]), 0.0)

    first_v = np.where(has_edge, edge, b.first[rows, lo_safe])
    first_t = np.where(has_edge, edge_t[None, :], b.first_t[rows, lo_safe])
    last_v = np.where(inner, b.last[rows, np.maximum(hi, 0)], edge)
    last_t = np.where(inner, b.last_t[rows, np.maximum(hi, 0)], edge_t[None, :])
    used = count >= 2  # so ``inner``: the edge is one sample at most
    read = (
        bad_before[:, end + 1] - bad_before[rows, lo_safe + 1] > 0,
        ~np.isfinite(increase),
        ~np.isfinite(first_v),
        ~np.isfinite(last_v),
    )
    if any((used & r).any() for r in read):
        return None
    range_end = p.base_ms + end * p.width_ms
    return extrapolate(
        first_v, last_v, first_t.astype(np.float64), last_t.astype(np.float64), count,
        increase, range_end, p.per_window * p.width_ms, counter=True, per_second=per_second,
    )  # fmt: skip


def _one_bucket_rates(
    b: Buckets, p: BucketPlan, first: I64, count: I64, *, per_second: bool
) -> tuple[F64, Bools] | None:
    """:func:`_window_rates` for windows of one bucket (``first + 1``) and the edge sample:
    the same numbers wherever a window holds two samples (so its bucket is not empty)."""
    assert b.first is not None and b.first_t is not None and b.last_t is not None
    assert b.increase is not None
    j = first + 1
    has_edge = b.has_edge[:, first]
    edge, edge_t = b.edge[:, first], (p.base_ms + first * p.width_ms).astype(np.float64)
    first_j = b.first[:, j]
    increase = b.increase[:, j] + np.where(has_edge, _step(edge, first_j), 0.0)
    first_v = np.where(has_edge, edge, first_j)
    first_t = np.where(has_edge, edge_t[None, :], b.first_t[:, j])
    last_v, last_t = b.last[:, j], b.last_t[:, j]
    used = count >= 2
    if any((used & ~np.isfinite(x)).any() for x in (increase, first_v, last_v)):
        return None
    return extrapolate(
        first_v, last_v, first_t.astype(np.float64), last_t.astype(np.float64), count,
        increase, p.base_ms + j * p.width_ms, p.width_ms, counter=True, per_second=per_second,
    )  # fmt: skip
