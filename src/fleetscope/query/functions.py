"""Instant-vector functions of PromQL, each over every series and step at once.

Math functions (``abs``, ``ln``, trigonometry …), ``clamp*``, ``round``, date functions
(``hour``, ``day_of_week`` …), label functions (``label_replace``, ``label_join``),
``histogram_quantile``, ``sort``/``sort_desc``, ``scalar``. Range-vector functions live in
:mod:`fleetscope.query.rangefuncs`; the engine dispatches to both.

Semantics follow Prometheus 2.42's ``promql/functions.go``: functions that compute a new value
drop the metric name; ``label_*`` and ``sort*`` keep it. Scalar arguments are per step.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from fleetscope.query import QueryError
from fleetscope.query.goregex import compile_anchored, expand
from fleetscope.query.value import (
    F64,
    I64,
    NAME,
    Bools,
    Labels,
    Scalar,
    Vector,
    drop_name,
    label_value,
    merge_same_labels,
    set_label,
)

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DECIMAL = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_HEX = re.compile(r"^([+-]?)0[xX]((?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?\d+)$")


def _sgn(v: F64) -> F64:
    return np.where(v < 0, -1.0, np.where(v > 0, 1.0, v))


MATH: dict[str, Callable[[F64], F64]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "ln": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "sgn": _sgn,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "atanh": np.arctanh,
    "rad": lambda v: v * np.pi / 180,
    "deg": lambda v: v * 180 / np.pi,
}


def parse_go_float(text: str) -> float | None:
    """Go's ``strconv.ParseFloat(text, 64)``; None where Go returns an error."""
    body = text[1:] if text[:1] in "+-" else text
    lower = body.lower()
    if lower in ("inf", "infinity"):
        return float("-inf") if text.startswith("-") else float("inf")
    if lower == "nan" and body == text:
        return float("nan")
    if _DECIMAL.match(text):
        return float(text)
    m = _HEX.match(text)
    if m:
        value = float.fromhex(m.group(2).replace("_", ""))
        return -value if m.group(1) == "-" else value
    return None


# ----------------------------------------------------------------------------- value functions


def math_function(name: str, vec: Vector) -> Vector:
    with np.errstate(all="ignore"):
        values = MATH[name](vec.values)
    return _renamed(vec, values, vec.present)


def _renamed(vec: Vector, values: F64, present: Bools) -> Vector:
    """A vector with new values and the metric name dropped (duplicates are an error)."""
    out = Vector([drop_name(lab) for lab in vec.labels], np.asarray(values, np.float64), present)
    return merge_same_labels(out)


def clamp(vec: Vector, low: F64 | None, high: F64 | None) -> Vector:
    """``clamp``, ``clamp_min`` (``high`` None) and ``clamp_max`` (``low`` None)."""
    values = vec.values
    present = vec.present
    with np.errstate(all="ignore"):
        if high is not None:
            values = np.minimum(high[None, :], values)
        if low is not None:
            values = np.maximum(low[None, :], values)
    if low is not None and high is not None:
        present = present & ~(high < low)[None, :]
    return _renamed(vec, values, present)


def round_to(vec: Vector, to_nearest: F64) -> Vector:
    with np.errstate(all="ignore"):
        inverse = 1.0 / to_nearest[None, :]
        values = np.floor(vec.values * inverse + 0.5) / inverse
    return _renamed(vec, values, vec.present)


def scalar_of(vec: Vector) -> Scalar:
    """``scalar(v)``: the only sample's value, NaN unless exactly one series is present."""
    count = vec.present.sum(axis=0)
    picked = np.where(vec.present, vec.values, 0.0).sum(axis=0) if len(vec.labels) else 0.0
    return Scalar(np.where(count == 1, picked, np.nan).astype(np.float64))


def sort_by_value(vec: Vector, *, descending: bool) -> Vector:
    """``sort``/``sort_desc`` of a one-step vector; range results are not ordered.

    As Prometheus' ``sort.Sort(sort.Reverse(…))`` orders vectors of up to 12 samples (an
    insertion sort): equal values keep their order, NaNs go last in reverse order.
    """
    if vec.steps != 1:
        return vec
    v = vec.values[:, 0]
    rows = np.flatnonzero(vec.present[:, 0])
    nan = np.isnan(v[rows])
    numbers = rows[~nan]
    key = -v[numbers] if descending else v[numbers]
    order = np.concatenate([numbers[np.argsort(key, kind="stable")], rows[nan][::-1]])
    out = vec.take(order)
    out.ordered = True
    return out


# ----------------------------------------------------------------------------- labels


def label_replace(vec: Vector, dst: str, replacement: str, src: str, regex: str) -> Vector:
    try:
        pattern = compile_anchored(regex)
    except (re.error, ValueError):
        raise QueryError(
            "execution", f"invalid regular expression in label_replace(): {regex}"
        ) from None
    if not LABEL_NAME.match(dst):
        raise QueryError("execution", f"invalid destination label name in label_replace(): {dst}")
    labels: list[Labels] = []
    for lab in vec.labels:
        m = pattern.match(label_value(lab, src))
        labels.append(lab if m is None else set_label(lab, dst, expand(replacement, m)))
    return merge_same_labels(Vector(labels, vec.values, vec.present))


def label_join(vec: Vector, dst: str, separator: str, sources: list[str]) -> Vector:
    for src in sources:
        if not LABEL_NAME.match(src):
            raise QueryError("execution", f"invalid source label name in label_join(): {src}")
    if not LABEL_NAME.match(dst):
        raise QueryError("execution", f"invalid destination label name in label_join(): {dst}")
    labels = [
        set_label(lab, dst, separator.join(label_value(lab, s) for s in sources))
        for lab in vec.labels
    ]
    return merge_same_labels(Vector(labels, vec.values, vec.present))


# ----------------------------------------------------------------------------- dates

# Go's time package, whose arithmetic Prometheus' date functions inherit (time.Unix(sec, 0).UTC()
# and its absDate): computed the same way, with uint64 wrap-around, so even absurd inputs give
# Go's answers. A NaN or out-of-range value converts to int64 as Go on amd64 does: MinInt64.
_DAY_S = 86_400
_UNIX_TO_ABSOLUTE = 9_223_372_028_715_321_600  # unixToInternal + internalToAbsolute
_ABSOLUTE_ZERO_YEAR = -292_277_022_399
_DAYS_400Y = 365 * 400 + 97
_DAYS_100Y = 365 * 100 + 24
_DAYS_4Y = 365 * 4 + 1
_DAYS_BEFORE = np.array([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365], np.int64)


def _go_int64(seconds: F64) -> I64:
    """``int64(v)`` on amd64: truncation, and MinInt64 for NaN, ±Inf and out-of-range values."""
    ok = np.isfinite(seconds) & (seconds >= -(2.0**63)) & (seconds < 2.0**63)
    return np.where(ok, np.trunc(np.where(ok, seconds, 0.0)), 0).astype(np.int64) + np.where(
        ok, 0, np.iinfo(np.int64).min
    ).astype(np.int64)


def _go_date(seconds: F64) -> tuple[I64, I64, I64, I64, I64, I64, I64]:
    """(year, month, day, yday 0-based, hour, minute, weekday) as Go computes them."""
    with np.errstate(over="ignore"):
        absolute = (_go_int64(seconds) + np.int64(_UNIX_TO_ABSOLUTE)).view(np.uint64)
    d = absolute // np.uint64(_DAY_S)
    n = d // np.uint64(_DAYS_400Y)
    y = np.uint64(400) * n
    d -= np.uint64(_DAYS_400Y) * n
    n = d // np.uint64(_DAYS_100Y)
    n -= n >> np.uint64(2)
    y += np.uint64(100) * n
    d -= np.uint64(_DAYS_100Y) * n
    n = d // np.uint64(_DAYS_4Y)
    y += np.uint64(4) * n
    d -= np.uint64(_DAYS_4Y) * n
    n = d // np.uint64(365)
    n -= n >> np.uint64(2)
    y += n
    d -= np.uint64(365) * n
    year = y.view(np.int64) + np.int64(_ABSOLUTE_ZERO_YEAR)
    yday = d.astype(np.int64)
    leap = _leap(year)
    day = np.where(leap & (yday > 31 + 29 - 1), yday - 1, yday)
    month = day // 31
    end = _DAYS_BEFORE[np.minimum(month + 1, 12)]
    after = day >= end
    begin = np.where(after, end, _DAYS_BEFORE[np.minimum(month, 12)])
    month = month + after + 1
    day = day - begin + 1
    leap_day = leap & (yday == 31 + 29 - 1)
    month = np.where(leap_day, 2, month)
    day = np.where(leap_day, 29, day)
    in_day = (absolute % np.uint64(_DAY_S)).astype(np.int64)
    weekday = ((absolute + np.uint64(_DAY_S)) % np.uint64(7 * _DAY_S)).astype(np.int64) // _DAY_S
    return year, month, day, yday, in_day // 3600, (in_day % 3600) // 60, weekday


def _leap(year: I64) -> Bools:
    return np.asarray(((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0))


def date_part(name: str, seconds: F64) -> F64:
    """``name`` (``hour``, ``month`` …) of Unix times in seconds, in UTC, as Prometheus."""
    year, month, day, yday, hour, minute, weekday = _go_date(np.asarray(seconds, np.float64))
    if name == "hour":
        out = hour
    elif name == "minute":
        out = minute
    elif name == "day_of_week":
        out = weekday
    elif name == "year":
        out = year
    elif name == "month":
        out = month
    elif name == "day_of_month":
        out = day
    elif name == "day_of_year":
        out = yday + 1
    else:  # days_in_month
        out = _DAYS_BEFORE[month] - _DAYS_BEFORE[month - 1] + ((month == 2) & _leap(year))
    return out.astype(np.float64)


DATE_FUNCTIONS = frozenset(
    {"day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour", "minute", "month",
     "year"}
)  # fmt: skip


def date_function(name: str, vec: Vector) -> Vector:
    return _renamed(vec, date_part(name, vec.values), vec.present)


# ----------------------------------------------------------------------------- histograms


def histogram_quantile(q: F64, vec: Vector) -> Vector:
    """``histogram_quantile`` over classic ``le`` buckets, per step.

    Buckets are grouped by all labels but ``le`` (the metric name included, so two histograms
    of different names never merge); the result drops ``le`` and the name.
    """
    groups: dict[Labels, list[tuple[int, float]]] = {}
    for i, lab in enumerate(vec.labels):
        bound = parse_go_float(label_value(lab, "le"))
        if bound is None:
            continue
        key = tuple(p for p in lab if p[0] != "le")
        groups.setdefault(key, []).append((i, bound))
    steps = vec.steps
    out_labels: list[Labels] = []
    values = np.full((len(groups), steps), np.nan)
    present = np.zeros((len(groups), steps), np.bool_)
    for g, (key, members) in enumerate(groups.items()):
        out_labels.append(tuple(p for p in key if p[0] != NAME))
        rows = np.array([i for i, _ in members], np.int64)
        bounds = np.array([b for _, b in members], np.float64)
        order = np.argsort(bounds, kind="stable")
        rows, bounds = rows[order], bounds[order]
        p = vec.present[rows]
        present[g] = p.any(axis=0)
        # Steps with the same set of buckets present are computed together.
        patterns, inverse = np.unique(p.T, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        for k, pattern in enumerate(patterns):
            if not pattern.any():
                continue
            cols = np.flatnonzero(inverse == k)
            sel = np.flatnonzero(pattern)
            values[g, cols] = _bucket_quantile(q[cols], bounds[sel], vec.values[rows[sel]][:, cols])
    return merge_same_labels(Vector(out_labels, values, present))


def _bucket_quantile(q: F64, bounds: F64, counts: F64) -> F64:
    """Prometheus' ``bucketQuantile`` for sorted ``bounds`` and ``counts[bucket, step]``."""
    # Coalesce buckets with the same upper bound.
    uniq, starts = np.unique(bounds, return_index=True)
    if len(uniq) < len(bounds):
        counts = np.add.reduceat(counts, starts, axis=0)
        bounds = uniq
    nb, steps = counts.shape
    out = np.full(steps, np.nan)
    if not np.isposinf(bounds[-1]) or nb < 2:
        with np.errstate(invalid="ignore"):
            return _q_edges(q, out)
    # Make counts monotonic (Prometheus' ensureMonotonic; a NaN count stays NaN).
    running = np.fmax.accumulate(np.where(np.isnan(counts), -np.inf, counts), axis=0)
    counts = np.where(np.isnan(counts), np.nan, running)
    observations = counts[-1]
    with np.errstate(all="ignore"):
        rank = q * observations
        reached = counts[:-1] >= rank[None, :]
        b = np.where(reached.any(axis=0), np.argmax(reached, axis=0), nb - 1)
        cols = np.arange(steps)
        end = bounds[np.minimum(b, nb - 1)]
        start = np.where(b > 0, bounds[np.maximum(b - 1, 0)], 0.0)
        below = np.where(b > 0, counts[np.maximum(b - 1, 0), cols], 0.0)
        count = counts[b, cols] - below
        interpolated = start + (end - start) * ((rank - below) / count)
        out = np.where(b == nb - 1, bounds[nb - 2], interpolated)
        out = np.where((b == 0) & (bounds[0] <= 0), bounds[0], out)
        out = np.where(observations == 0, np.nan, out)
        return _q_edges(q, out)


def _q_edges(q: F64, out: F64) -> F64:
    out = np.where(q < 0, -np.inf, out)
    out = np.where(q > 1, np.inf, out)
    return np.where(np.isnan(q), np.nan, out)
