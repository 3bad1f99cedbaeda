"""Range-vector functions (``rate``, ``*_over_time`` …) over every series and step at once.

Input is a :class:`~fleetscope.query.value.Matrix`: flat sample arrays and, per series and step,
the window ``lo:hi``. Each kernel returns ``(values, present)`` of shape ``[series, steps]``;
``present`` is False where Prometheus returns no sample (an empty window, or fewer than two
samples for the rate family). Sums over windows use ``ufunc.reduceat`` on the flat arrays
(sequential additions, as Prometheus' loops do); counts use integer cumulative sums; the few
kernels whose result depends on the exact order of floating-point operations (``deriv``,
``holt_winters``, the overflow-safe mean) walk the window positions, vectorised over all windows.

Semantics follow Prometheus 2.42's ``promql/functions.go``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fleetscope.query import QueryError
from fleetscope.query.value import F64, I64, Bools, Matrix

Result = tuple[F64, Bools]
_CHUNK_ELEMS = 4_000_000  # padded-window elements handled at once (quantile_over_time)


# ----------------------------------------------------------------------------- helpers


def _segment_reduce(ufunc: np.ufunc, values: F64, lo: I64, hi: I64) -> F64:
    """``ufunc`` reduced over ``values[lo:hi]`` for each window (undefined where lo >= hi)."""
    if lo.size == 0:
        return np.empty(lo.shape, np.float64)
    padded = np.append(values, 0.0)
    idx = np.empty(lo.size * 2, np.int64)
    idx[0::2] = lo.ravel()
    idx[1::2] = hi.ravel()
    with np.errstate(all="ignore"):
        reduced = ufunc.reduceat(padded, idx)[0::2]
    return np.asarray(reduced, np.float64).reshape(lo.shape)


def _prefix_count(flags: Bools) -> I64:
    """``out[j]`` = number of true flags in ``flags[:j]`` (length ``len(flags) + 1``)."""
    out = np.zeros(flags.size + 1, np.int64)
    np.cumsum(flags, out=out[1:])
    return out


def _window_count(flags: Bools, lo: I64, hi: I64) -> I64:
    prefix = _prefix_count(flags)
    return np.asarray(prefix[hi] - prefix[lo], np.int64)


def _gather(arr: F64 | I64, idx: I64, valid: Bools) -> F64:
    """``arr[idx]`` where ``valid``; zero elsewhere (so invalid indexes are never read)."""
    safe = np.where(valid, idx, 0)
    if arr.size == 0:
        return np.zeros(idx.shape, np.float64)
    return np.where(valid, arr[safe], 0.0).astype(np.float64)


def kahan_inc(inc: F64, total: F64, comp: F64) -> tuple[F64, F64]:
    """Prometheus' ``kahanSumInc`` (Neumaier), element-wise."""
    t = total + inc
    big = np.abs(total) >= np.abs(inc)
    comp = comp + np.where(big, (total - t) + inc, (inc - t) + total)
    return t, comp


# ----------------------------------------------------------------------------- kernels


def count_over_time(m: Matrix) -> Result:
    n = m.counts
    return n.astype(np.float64), n > 0


def present_over_time(m: Matrix) -> Result:
    n = m.counts
    return np.ones(n.shape, np.float64), n > 0


def last_over_time(m: Matrix) -> Result:
    n = m.counts
    ok = n > 0
    return _gather(m.v, m.hi - 1, ok), ok


def sum_over_time(m: Matrix) -> Result:
    n = m.counts
    return _segment_reduce(np.add, m.v, m.lo, m.hi), n > 0


def max_over_time(m: Matrix) -> Result:
    # Prometheus replaces a NaN maximum by any later value: fmax's NaN rule.
    return _segment_reduce(np.fmax, m.v, m.lo, m.hi), m.counts > 0


def min_over_time(m: Matrix) -> Result:
    return _segment_reduce(np.fmin, m.v, m.lo, m.hi), m.counts > 0


def avg_over_time(m: Matrix) -> Result:
    """Prometheus' overflow-safe incremental mean (its Inf rules included)."""
    n = m.counts
    ok = n > 0
    with np.errstate(all="ignore"):
        total = _segment_reduce(np.add, m.v, m.lo, m.hi)
        out = total / np.where(ok, n, 1)
        nan = _window_count(np.isnan(m.v), m.lo, m.hi) > 0
        pos = _window_count(m.v == np.inf, m.lo, m.hi) > 0
        neg = _window_count(m.v == -np.inf, m.lo, m.hi) > 0
        out = np.where(pos, np.inf, out)
        out = np.where(neg, -np.inf, out)
        out = np.where(nan | (pos & neg), np.nan, out)
        # Finite inputs whose plain sum overflows: redo those windows the way Prometheus does.
        redo = ok & ~(nan | pos | neg) & ~np.isfinite(total)
        if redo.any():
            out[redo] = _incremental_mean(m.v, m.lo[redo], n[redo])
    return out, ok


def _incremental_mean(v: F64, lo: I64, n: I64) -> F64:
    mean = np.zeros(lo.shape, np.float64)
    comp = np.zeros(lo.shape, np.float64)
    with np.errstate(all="ignore"):
        for k in range(int(n.max(initial=0))):
            live = k < n
            x = _gather(v, lo + k, live)
            count = float(k + 1)
            new_mean, new_comp = kahan_inc(x / count - mean / count, mean, comp)
            mean = np.where(live, new_mean, mean)
            comp = np.where(live, new_comp, comp)
    return np.where(np.isinf(mean), mean, mean + comp)


def stdvar_over_time(m: Matrix) -> Result:
    """Population variance; exactly 0 for a constant window, NaN with any NaN or Inf."""
    n = m.counts
    ok = n > 0
    lo, hi = m.lo, m.hi
    with np.errstate(all="ignore"):
        # Shift each series by its first finite value so the sums do not cancel.
        sizes = np.diff(m.bounds)
        firsts = np.zeros(len(sizes), np.float64)
        for i, (a, b) in enumerate(zip(m.bounds[:-1], m.bounds[1:], strict=True)):
            finite = m.v[a:b][np.isfinite(m.v[a:b])]
            firsts[i] = finite[0] if finite.size else 0.0
        d = m.v - np.repeat(firsts, sizes)
        s1 = _segment_reduce(np.add, d, lo, hi)
        s2 = _segment_reduce(np.add, d * d, lo, hi)
        cnt = np.where(ok, n, 1).astype(np.float64)
        var = np.maximum((s2 - s1 * s1 / cnt) / cnt, 0.0)
        bad = _window_count(~np.isfinite(m.v), lo, hi) > 0
        const = _segment_reduce(np.fmax, m.v, lo, hi) == _segment_reduce(np.fmin, m.v, lo, hi)
        var = np.where(const, 0.0, var)
        var = np.where(bad, np.nan, var)
    return var, ok


def stddev_over_time(m: Matrix) -> Result:
    var, ok = stdvar_over_time(m)
    with np.errstate(all="ignore"):
        return np.sqrt(var), ok


def quantile_over_time(m: Matrix, q: F64) -> Result:
    """Prometheus' ``quantile`` over each window (NaN samples sort first)."""
    n = m.counts
    ok = n > 0
    out = np.full(n.shape, np.nan)
    flat_lo, flat_n = m.lo.ravel(), n.ravel()
    qs = np.broadcast_to(q, n.shape).ravel()
    res = out.ravel()
    width = int(flat_n.max(initial=0))
    if width == 0:
        return out, ok
    chunk = max(1, _CHUNK_ELEMS // width)
    for a in range(0, flat_n.size, chunk):
        lo_c, n_c, q_c = flat_lo[a : a + chunk], flat_n[a : a + chunk], qs[a : a + chunk]
        pos = np.arange(width)[None, :]
        live = pos < n_c[:, None]
        vals = _gather(m.v, lo_c[:, None] + pos, live)
        res[a : a + chunk] = quantile_rows(vals, live, q_c)
    return res.reshape(n.shape), ok


def quantile_rows(vals: F64, live: Bools, q: F64) -> F64:
    """Quantile ``q[r]`` of the live entries of each row of ``vals`` (Prometheus' ``quantile``:
    NaN sorts first, linear interpolation, ``q`` outside [0, 1] gives ∓Inf)."""
    cls = np.where(live, np.where(np.isnan(vals), 0, 1), 2)
    order = np.lexsort((np.where(np.isnan(vals), 0.0, vals), cls), axis=1)
    srt = np.take_along_axis(vals, order, axis=1)
    n = live.sum(axis=1).astype(np.float64)
    with np.errstate(all="ignore"):
        rank = q * (n - 1)
        lower = np.maximum(0.0, np.floor(rank))
        upper = np.minimum(n - 1, lower + 1)
        weight = rank - np.floor(rank)
        li = np.clip(np.nan_to_num(lower), 0, max(srt.shape[1] - 1, 0)).astype(np.int64)
        ui = np.clip(np.nan_to_num(upper), 0, max(srt.shape[1] - 1, 0)).astype(np.int64)
        lv = np.take_along_axis(srt, li[:, None], axis=1)[:, 0]
        uv = np.take_along_axis(srt, ui[:, None], axis=1)[:, 0]
        out = lv * (1 - weight) + uv * weight
    out = np.where(q < 0, -np.inf, out)
    out = np.where(q > 1, np.inf, out)
    out = np.where(np.isnan(q) | (n == 0), np.nan, out)
    return np.asarray(out, np.float64)


def changes(m: Matrix) -> Result:
    v = m.v
    flags = np.zeros(v.size, np.bool_)
    if v.size > 1:
        cur, prev = v[1:], v[:-1]
        flags[1:] = (cur != prev) & ~(np.isnan(cur) & np.isnan(prev))
    return _pair_count(flags, m)


def resets(m: Matrix) -> Result:
    v = m.v
    flags = np.zeros(v.size, np.bool_)
    if v.size > 1:
        flags[1:] = v[1:] < v[:-1]
    return _pair_count(flags, m)


def _pair_count(flags: Bools, m: Matrix) -> Result:
    """Count the flags of consecutive pairs ``(j-1, j)`` inside each window (``lo < j < hi``)."""
    n = m.counts
    ok = n > 0
    prefix = _prefix_count(flags)
    counted = prefix[m.hi] - prefix[np.minimum(m.lo + 1, m.hi)]
    return np.where(ok, counted, 0).astype(np.float64), ok


def extrapolated_rate(m: Matrix, *, counter: bool, per_second: bool) -> Result:
    """``rate``, ``increase`` and ``delta`` (Prometheus' ``extrapolatedRate``)."""
    n = m.counts
    ok = n >= 2
    first = _gather(m.v, m.lo, ok)
    last = _gather(m.v, m.hi - 1, ok)
    t_first = _gather(m.t, m.lo, ok)
    t_last = _gather(m.t, m.hi - 1, ok)
    with np.errstate(all="ignore"):
        result = last - first
        if counter and m.v.size > 1:
            corr = np.zeros(m.v.size, np.float64)
            drop = m.v[1:] < m.v[:-1]
            corr[1:] = np.where(drop, m.v[:-1], 0.0)
            inner_lo = np.where(ok, m.lo + 1, m.lo)
            inner_hi = np.where(ok, m.hi, m.lo)
            result = result + np.where(ok, _segment_reduce(np.add, corr, inner_lo, inner_hi), 0.0)
    return extrapolate(
        first, last, t_first, t_last, n, result, m.range_end, m.range_ms,
        counter=counter, per_second=per_second,
    )  # fmt: skip


def extrapolate(
    first: F64,
    last: F64,
    t_first: F64,
    t_last: F64,
    n: I64,
    result: F64,
    range_end: I64,
    range_ms: int,
    *,
    counter: bool,
    per_second: bool,
) -> Result:
    """The end of Prometheus 2.42's ``extrapolatedRate``: ``result`` (``last - first``, for a
    counter corrected for resets) of windows ``[range_end - range_ms, range_end]`` extrapolated
    to the window's ends, per second with ``per_second``.

    Arrays are ``[series, steps]`` except ``range_end`` (``[steps]``, ms); ``first``/``last`` are
    the values of a window's oldest and newest sample, ``t_first``/``t_last`` their times (ms),
    ``n`` its sample count. Windows with fewer than two samples have no value (``present``
    False, value 0); whatever their other inputs hold is not looked at. Shared by the sample
    kernel above and the bucket pushdown (query/pushdown.py), so both do the same arithmetic.
    """
    ok = n >= 2
    with np.errstate(all="ignore"):  # fresh arrays only: updated in place where that is cheaper
        start = (range_end - range_ms).astype(np.float64)[None, :]
        end = range_end.astype(np.float64)[None, :]
        to_start = (t_first - start) / 1000
        to_end = (end - t_last) / 1000
        sampled = (t_last - t_first) / 1000
        average = sampled / np.maximum(n - 1, 1)
        if counter:
            to_zero = sampled * (first / result)
            np.copyto(to_start, to_zero, where=(result > 0) & (first >= 0) & (to_zero < to_start))
        threshold = average * 1.1
        half = average / 2
        interval = sampled + np.where(to_start < threshold, to_start, half)
        interval += np.where(to_end < threshold, to_end, half)
        result = result * (interval / sampled)
        if per_second:
            result /= range_ms / 1000
        result[~ok] = 0.0
    return result, ok


def instant_value(m: Matrix, *, per_second: bool) -> Result:
    """``irate`` and ``idelta``: the last two samples of each window."""
    n = m.counts
    ok = n >= 2
    last = _gather(m.v, m.hi - 1, ok)
    prev = _gather(m.v, m.hi - 2, ok)
    t_last = _gather(m.t, m.hi - 1, ok)
    t_prev = _gather(m.t, m.hi - 2, ok)
    with np.errstate(all="ignore"):
        if per_second:
            result = np.where(last < prev, last, last - prev)
            result = result / ((t_last - t_prev) / 1000)
        else:
            result = last - prev
    return np.where(ok, result, 0.0), ok


def _linear_regression(m: Matrix, intercept_ms: I64 | None) -> tuple[F64, F64, Bools]:
    """Prometheus' ``linearRegression`` (Kahan sums; a constant series has slope 0).

    ``intercept_ms`` is ``[steps]`` (``predict_linear``: the evaluation times) or None for the
    first sample of each window (``deriv``).
    """
    n = m.counts
    ok = n >= 2
    lo = m.lo
    t0 = _gather(m.t, lo, ok) if intercept_ms is None else intercept_ms[None, :] * ok
    init_y = _gather(m.v, lo, ok)
    const_y = np.ones(n.shape, np.bool_)
    sums = [np.zeros(n.shape, np.float64) for _ in range(4)]  # x, y, xy, x²
    comps = [np.zeros(n.shape, np.float64) for _ in range(4)]
    with np.errstate(all="ignore"):
        for k in range(int(n.max(initial=0))):
            live = ok & (k < n)
            y = _gather(m.v, lo + k, live)
            x = (_gather(m.t, lo + k, live) - t0) / 1e3
            if k > 0:
                const_y &= ~live | (y == init_y)
            for j, inc in enumerate((x, y, x * y, x * x)):
                total, comp = kahan_inc(inc, sums[j], comps[j])
                sums[j] = np.where(live, total, sums[j])
                comps[j] = np.where(live, comp, comps[j])
        cnt = n.astype(np.float64)
        sx, sy, sxy, sx2 = (s + c for s, c in zip(sums, comps, strict=True))
        cov = sxy - sx * sy / cnt
        var = sx2 - sx * sx / cnt
        slope = cov / var
        intercept = sy / cnt - slope * sx / cnt
        inf_const = const_y & np.isinf(init_y)
        slope = np.where(const_y, np.where(inf_const, np.nan, 0.0), slope)
        intercept = np.where(const_y, np.where(inf_const, np.nan, init_y), intercept)
    return slope, intercept, ok


def deriv(m: Matrix) -> Result:
    slope, _, ok = _linear_regression(m, None)
    return np.where(ok, slope, 0.0), ok


def predict_linear(m: Matrix, duration_s: F64, eval_ms: I64) -> Result:
    slope, intercept, ok = _linear_regression(m, eval_ms)
    with np.errstate(all="ignore"):
        out = slope * duration_s[None, :] + intercept
    return np.where(ok, out, 0.0), ok


def holt_winters(m: Matrix, sf: F64, tf: F64) -> Result:
    """Double exponential smoothing, as Prometheus 2.42's ``holt_winters``."""
    n = m.counts
    used = (n > 0).any(axis=0)
    for k in np.flatnonzero(used):
        if not 0 < sf[k] < 1:
            raise QueryError(
                "execution", f"invalid smoothing factor. Expected: 0 < sf < 1, got: {sf[k]:f}"
            )
        if not 0 < tf[k] < 1:
            raise QueryError(
                "execution", f"invalid trend factor. Expected: 0 < tf < 1, got: {tf[k]:f}"
            )
    ok = n >= 2
    lo = m.lo
    sfs, tfs = sf[None, :], tf[None, :]
    with np.errstate(all="ignore"):
        s1 = _gather(m.v, lo, ok)
        b = _gather(m.v, lo + 1, ok) - s1
        s0 = np.zeros(n.shape, np.float64)
        for i in range(1, int(n.max(initial=0))):
            live = ok & (i < n)
            x = sfs * _gather(m.v, lo + i, live)
            if i > 1:
                b = np.where(live, tfs * (s1 - s0) + (1 - tfs) * b, b)
            y = (1 - sfs) * (s1 + b)
            s0, s1 = np.where(live, s1, s0), np.where(live, x + y, s1)
    return np.where(ok, s1, 0.0), ok


RANGE_KERNELS: dict[str, Callable[[Matrix], Result]] = {
    "avg_over_time": avg_over_time,
    "changes": changes,
    "count_over_time": count_over_time,
    "deriv": deriv,
    "delta": lambda m: extrapolated_rate(m, counter=False, per_second=False),
    "idelta": lambda m: instant_value(m, per_second=False),
    "increase": lambda m: extrapolated_rate(m, counter=True, per_second=False),
    "irate": lambda m: instant_value(m, per_second=True),
    "last_over_time": last_over_time,
    "max_over_time": max_over_time,
    "min_over_time": min_over_time,
    "present_over_time": present_over_time,
    "rate": lambda m: extrapolated_rate(m, counter=True, per_second=True),
    "resets": resets,
    "stddev_over_time": stddev_over_time,
    "stdvar_over_time": stdvar_over_time,
    "sum_over_time": sum_over_time,
}
