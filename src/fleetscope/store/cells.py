"""Cells: per-series aggregates of each five minutes of compacted samples, kept beside them.

Prometheus and VictoriaMetrics answer a week-long query by decoding every sample of the week.
The embedded store also keeps, for every series and every *cell* ``((c-1)·W, c·W]`` (``W`` =
:data:`CELL_MS`, aligned to the epoch, closed on the right like the evaluator's buckets) of
compacted data, one row of what queries read from a stretch of samples: the count and sum of the
values; the newest value and its time; the newest sample when that is a NaN (a staleness
marker); and, for counters, the oldest value and its time and the reset-corrected increase.
Minima and maxima are left out: ``min/max_over_time`` are rare on fleet dashboards and two more
values per cell cost ~0.5 bytes per sample (measured: a cell column of values takes ~5 bytes per
row where raw samples take 1–4 per sample).

Twenty samples at 15 s become one row, so a query whose windows are made of whole cells reads
cells (and raw samples only at its ragged edges and in the head) and gives the same
answer, bit for bit where Prometheus adds in order, ~1e-15 relative for sums. A cell's sum is
compensated (``fsum``): the correctly rounded sum of values with a few decimals has as few
decimals itself, which DuckDB's ALP stores in ~12 bits where a plain sum's rounding noise takes
~40 (measured on GPU utilization: 0.18 bytes per sample less).

Why five minutes: it is Prometheus' default lookback, so an instant selector evaluated at a cell's
end sees exactly that cell's newest sample; subqueries and Grafana align their evaluation times
to their step, which is a multiple of five minutes on any range longer than a few hours.

Cells are written in the transaction that moves a block out of the head (a block is whole cells:
``W`` divides the block length), so they are never ahead of or behind the blocks; a straggler
(an old sample compacted later) rebuilds the cells it falls into; retention drops every cell
that lost a sample. ``bad`` counts NaNs that are not staleness markers: a query meeting one reads
samples, where Prometheus' NaN rules apply.

Columns (times are offsets from the cell's start ``(c-1)·W``, to keep them narrow)::

    metric_key, series_id, c    the series (as in ``blocks``) and the cell number
    n, s                        count and sum of the values that are not NaN
    last_dt, last_v             the newest of those
    top_dt, top_real            the newest sample's time when it is a NaN (NULL otherwise), and
                                whether that NaN is not a staleness marker (DuckDB keeps a
                                NaN's bits in a column of values, not in a column of NULLs)
    first_dt, first_v, inc      counters only (NULL for other metrics): the oldest not-NaN
                                sample and Σ (v - previous, or v after a reset)
    bad                         NaNs that are not staleness markers
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from fleetscope.store import STALE_NAN_BITS

__all__ = [
    "CELL_MS", "COUNTER_SUFFIXES", "INCREASE", "SCHEMA", "VERSION", "build", "is_counter",
    "with_steps",
]  # fmt: skip

CELL_MS = 300_000
VERSION = 1  # of the table's layout: a store finding another one builds its cells again
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (metric_key INTEGER NOT NULL, series_id INTEGER NOT NULL,
    c INTEGER NOT NULL, n INTEGER NOT NULL, s DOUBLE, last_dt INTEGER,
    last_v DOUBLE, top_dt INTEGER, top_real BOOLEAN NOT NULL, first_dt INTEGER, first_v DOUBLE,
    inc DOUBLE, bad INTEGER NOT NULL);
"""

_OK = "FILTER (WHERE NOT isnan(v))"
INCREASE = f"CASE WHEN count(v) {_OK} > 0 THEN coalesce(sum(d), 0) END"
"""The reset-corrected increase of a group of :func:`with_steps` rows (NULL when empty)."""


def with_steps(columns: str, source: str, partition: str) -> str:
    """``columns`` of ``source`` (a subquery with ``t`` and ``v`` among them) and ``d``: each
    not-NaN sample's step from the previous not-NaN one of its ``partition`` (``v - previous``,
    or ``v`` after a counter reset; NULL for the first). Their sum is the group's increase."""
    return (
        f"SELECT {columns}, CASE WHEN p IS NULL OR isnan(v) THEN NULL WHEN v >= p THEN v - p "
        f"ELSE v END AS d FROM (SELECT {columns}, lag(CASE WHEN isnan(v) THEN NULL ELSE v END "
        f"IGNORE NULLS) OVER (PARTITION BY {partition} ORDER BY t) AS p FROM {source})"
    )


def is_counter(metric: str) -> bool:
    """Whether cells of ``metric`` keep the counter columns (by the naming convention that
    Prometheus' exposition format and the catalog follow)."""
    return metric.endswith(COUNTER_SUFFIXES)


def _insert_sql(width: int, source: str, *, counter: bool) -> str:
    """``INSERT`` the cells of the rows of ``source`` (a subquery of ``metric_key, series_id,
    t, v``)."""
    w = int(width)
    cell = f"(t + {w - 1}) // {w}"
    start = f"(c::BIGINT - 1) * {w}"
    inner = f"SELECT metric_key, series_id, t, v, {cell} AS c FROM {source}"
    first = "NULL, NULL, NULL"
    if counter:  # the increase over consecutive not-NaN samples of the cell
        inner = with_steps("metric_key, series_id, t, v, c", f"({inner})", "series_id, c")
        first = f"(min(t) {_OK} - {start})::INTEGER, arg_min(v, t) {_OK}, {INCREASE}"
    newest_is_nan = "isnan(arg_max(v, t))"
    return (
        f"INSERT INTO cells SELECT metric_key, series_id, c, count(v) {_OK}, fsum(v) {_OK}, "
        f"(max(t) {_OK} - {start})::INTEGER, arg_max(v, t) {_OK}, "
        f"CASE WHEN {newest_is_nan} THEN (max(t) - {start})::INTEGER END, "
        f"false, {first}, 0 "
        f"FROM ({inner}) GROUP BY metric_key, series_id, c ORDER BY metric_key, series_id, c"
    )


def build(cur: duckdb.DuckDBPyConnection, width: int, source: str, counter_keys: list[int]) -> None:
    """Insert the cells of ``source``'s rows (whole cells, none of them in ``cells`` yet), in
    the caller's transaction. ``counter_keys``: the metric keys whose cells keep counter
    columns."""
    keys = ",".join(str(int(k)) for k in counter_keys) or "-1"  # no metric key is -1
    cur.execute(
        _insert_sql(width, f"(SELECT * FROM {source} WHERE metric_key IN ({keys}))", counter=True)
    )
    cur.execute(
        _insert_sql(
            width,
            f"(SELECT * FROM {source} WHERE metric_key NOT IN ({keys}))",
            counter=False,
        )
    )
    nans = cur.execute(f"SELECT series_id, t, v FROM {source} WHERE isnan(v)").fetchnumpy()
    v = np.asarray(nans["v"], np.float64)
    real = v.view(np.int64) != STALE_NAN_BITS
    if not real.any():
        return
    t = np.asarray(nans["t"], np.int64)[real]
    sid = np.asarray(nans["series_id"], np.int64)[real]
    table = pa.table(
        {"sid": pa.array(sid, pa.int32()), "c": pa.array((t + width - 1) // width, pa.int32()),
         "t": pa.array(t)}
    )  # fmt: skip
    cur.register("real_nans", table)
    try:
        cur.execute(
            "UPDATE cells SET bad = cells.bad + r.k, top_real = cells.top_real OR "
            f"coalesce((cells.c::BIGINT - 1) * {int(width)} + cells.top_dt = r.newest, false) "
            "FROM (SELECT sid, c, count(*) AS k, max(t) AS newest FROM real_nans GROUP BY ALL) r "
            "WHERE cells.series_id = r.sid AND cells.c = r.c"
        )
    finally:
        cur.unregister("real_nans")
