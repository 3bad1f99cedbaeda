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
~40 (measured on GPU utilization: 0.14 bytes per sample less).

Why five minutes: it is Prometheus' default lookback, so an instant selector evaluated at a cell's
end sees exactly that cell's newest sample; subqueries and Grafana align their evaluation times
to their step, which is a multiple of five minutes on any range longer than a few hours.

Cells are written in the transaction that moves a block out of the head (a block is whole cells:
``W`` divides the block length), so they are never ahead of or behind the blocks; a straggler
(an old sample compacted later) rebuilds the cells it falls into; retention drops every cell
that lost a sample. ``bad`` counts NaNs that are not staleness markers: a query meeting one reads
samples, where Prometheus' NaN rules apply.

Columns (times are offsets from the cell's start ``(c-1)·W``, to keep them narrow)::

    metric_key, series_id, c    the series (as in ``blocks``) and the cell number, kept as
                                ``c0``, ``c1`` (the first and last cell of the batch the row
                                was written in: a block's, a day's, a merged span's) and
                                ``cu = series_id·(c1 - c0 + 1) + c - c0``. A batch is sorted
                                by ``(metric_key, series_id, c)``, so ``cu`` counts up by one
                                through it (series after series, each with all its cells),
                                which DuckDB's delta bit-packing stores in almost nothing
                                where ``c`` itself, starting over at every series, took ~2
                                bytes a row (~0.1 a sample); ``c0``/``c1`` change once a
                                batch. The view ``cells`` gives ``c`` back; ``c0``/``c1`` let
                                DuckDB skip and filter while it scans (:func:`span_filter`).
                                Merging runs sorts their span's cells into one batch
                                (:func:`reorder`), so a read of a metric over days meets its
                                cells together.
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
    "CELL_MS", "COUNTER_SUFFIXES", "INCREASE", "VERSION", "build", "cell_number", "create",
    "drop", "is_counter", "reorder", "span_filter", "with_steps",
]  # fmt: skip

CELL_MS = 300_000
VERSION = 3  # of the table's layout: a store finding another one builds its cells again
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")

_TABLE = """
CREATE TABLE IF NOT EXISTS cell_rows (metric_key INTEGER NOT NULL, series_id INTEGER NOT NULL,
    c0 INTEGER NOT NULL, c1 INTEGER NOT NULL, cu BIGINT NOT NULL, n INTEGER NOT NULL, s DOUBLE,
    last_dt INTEGER, last_v DOUBLE, top_dt INTEGER, top_real BOOLEAN NOT NULL, first_dt INTEGER,
    first_v DOUBLE, inc DOUBLE, bad INTEGER NOT NULL);
"""


def cell_number(table: str = "") -> str:
    """SQL for ``c`` of a row of ``cell_rows`` (named ``table`` in the query, if given)."""
    at = f"{table}." if table else ""
    return f"({at}cu - {at}series_id::BIGINT * ({at}c1 - {at}c0 + 1) + {at}c0)"


def _packed(c: str, c0: str, c1: str) -> str:
    """SQL for ``cu`` of cell ``c`` in a batch of cells ``c0 … c1``."""
    return f"series_id::BIGINT * ({c1} - {c0} + 1) + {c} - {c0}"


def span_filter(lo: int, hi: int) -> str:
    """A ``cells`` filter for cells ``lo … hi`` that DuckDB pushes into its scans (on ``c0``
    and ``c1``; the caller still filters on ``c``)."""
    return f"c0 <= {int(hi)} AND c1 >= {int(lo)}"


_COLUMNS = "n, s, last_dt, last_v, top_dt, top_real, first_dt, first_v, inc, bad"


def create(cur: duckdb.DuckDBPyConnection) -> None:
    """Create the ``cell_rows`` table and the ``cells`` view over it (if missing)."""
    cur.execute(_TABLE)
    cur.execute(
        "CREATE VIEW IF NOT EXISTS cells AS SELECT metric_key, series_id, c0, c1, "
        f"{cell_number()}::INTEGER AS c, {_COLUMNS} FROM cell_rows"
    )


def reorder(cur: duckdb.DuckDBPyConnection, lo: int, hi: int) -> None:
    """Write the cells ``lo … hi`` (a merged run's span) again as one batch sorted by
    ``(metric_key, series_id, c)``, in the caller's transaction: a read of one metric over days
    then meets its cells together instead of a slice of every block's."""
    lo, hi = int(lo), int(hi)
    within = f"{span_filter(lo, hi)} AND {cell_number()} BETWEEN {lo} AND {hi}"
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE cells_reordered AS SELECT metric_key, series_id, "
        f"{lo} AS c0, {hi} AS c1, {_packed(cell_number(), str(lo), str(hi))} AS cu, {_COLUMNS} "
        f"FROM cell_rows WHERE {within} ORDER BY metric_key, series_id, cu"
    )
    cur.execute(f"DELETE FROM cell_rows WHERE {within}")
    cur.execute("INSERT INTO cell_rows SELECT * FROM cells_reordered")
    cur.execute("DROP TABLE cells_reordered")


def drop(cur: duckdb.DuckDBPyConnection) -> None:
    """Drop the cells, in this layout or an older one (a ``cells`` table)."""
    kinds = dict(
        cur.execute(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_name IN "
            "('cells', 'cell_rows') AND table_schema = 'main' "
            "AND table_catalog = current_database()"
        ).fetchall()
    )
    if kinds.get("cells") == "VIEW":
        cur.execute("DROP VIEW cells")
    elif "cells" in kinds:
        cur.execute("DROP TABLE cells")
    if "cell_rows" in kinds:
        cur.execute("DROP TABLE cell_rows")


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
    c0, c1 = "min(c) OVER ()", "max(c) OVER ()"  # the batch's cells
    inner = f"SELECT metric_key, series_id, t, v, {cell} AS c FROM {source}"
    first = "NULL, NULL, NULL"
    if counter:  # the increase over consecutive not-NaN samples of the cell
        inner = with_steps("metric_key, series_id, t, v, c", f"({inner})", "series_id, c")
        first = f"(min(t) {_OK} - {start})::INTEGER, arg_min(v, t) {_OK}, {INCREASE}"
    newest_is_nan = "isnan(arg_max(v, t))"
    return (
        f"INSERT INTO cell_rows SELECT metric_key, series_id, {c0}, {c1}, "
        f"{_packed('c', c0, c1)}, count(v) {_OK}, fsum(v) {_OK}, "
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
        c = cell_number("cell_rows")
        cur.execute(
            "UPDATE cell_rows SET bad = cell_rows.bad + r.nans, top_real = cell_rows.top_real "
            f"OR coalesce(({c} - 1) * {int(width)} + cell_rows.top_dt = r.newest, false) "
            "FROM (SELECT sid, c, count(*) AS nans, max(t) AS newest FROM real_nans GROUP BY ALL) "
            f"r WHERE cell_rows.series_id = r.sid AND {c} = r.c"
        )
    finally:
        cur.unregister("real_nans")
