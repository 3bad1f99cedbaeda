"""Embedded store: metrics and records in one DuckDB file (the default, one-machine backend).

Layout. ``series(id, metric, labels)`` holds one row per label set (``labels`` is the canonical
JSON of the sorted label pairs, ``__name__`` included). Samples live in two tables, as in
Prometheus' head and blocks: appends go to ``samples(series_id, t, v)`` in arrival order (the
head), and :meth:`DuckDBStore.compact` moves every closed two-hour block out of it into one *run*
of ``run_rows``, sorted by ``(metric_key, series_id, t)``, which the view ``blocks(run,
metric_key, series_id, k, t, v)`` reads back. ``metric_key`` is the smallest series id of the
series' metric, so a metric's rows of a run are contiguous and DuckDB's min/max zone maps skip
the row groups of other metrics; ``k`` (a sample's two-hour span) skips those of other times. A
run stores each series' times as ``u = t + o``, one offset ``o`` per series, chosen so that
``u`` runs on from one series to the next by one step (see :func:`_insert_run`): DuckDB's delta
bit-packing packs 2,048 values at the width of their widest delta, so times stored as they are
paid ~23 bits each in every group where one series ends and the next begins. Measured on the
query bench's 310 M samples (GPUs at 15 s, jobs and inference at 15–60 s): times take 0.07
bytes per sample (``u``, ``o`` and ``k`` together) instead of 0.81. Like Prometheus' compactor,
closed days and then closed weeks (spans aligned to the epoch) of runs are merged into one run
each, so a read meets few runs. Every read is a union of the runs and the head, whose rows
it takes from a copy in memory sorted by series (store/head.py) rather than from the table;
which table or run holds a sample never changes an answer. Blocks are closed on the right,
``(k·2h, (k+1)·2h]``, so that each is a whole number of the five-minute *cells* that
compaction writes beside it (``cells``, see store/cells.py): per series and cell, the
aggregates that bucket reads and aligned instant selectors take instead of the samples.

Series are few (thousands) and samples many (hundreds of millions), so the series index lives in
memory — label matching runs over it in Python, as a postings lookup would — and only
sample scans go to SQL. ``head`` keeps each series' newest timestamp in memory so the usual
append (all new samples newer than the head) needs no read; an append that reaches back in time
is checked against stored rows, where an exact resend is a duplicate and anything else is out of
order (Prometheus' rule, with no out-of-order window).

Writes are serialized by a lock. Appends are *group committed*: an append queues its batch and
takes the write lock; whoever gets it first writes every batch queued by then in one transaction,
so appends from several threads that arrive during a commit share the next one (one DuckDB
statement and commit instead of one each). Each batch is still checked on its own, in queue
order, against the series as the batches before it left them: a rejected batch (out of order,
invalid) fails alone, stores nothing, and the others commit. Should the transaction itself fail,
its batches are retried one transaction each, so only a batch that cannot be written fails.
:meth:`append` returns only after DuckDB has committed its batch (durable in its WAL).

Series ids are found by label set; batches numbered by the remote-write decoder
(``label_set_ids``) find them in an array indexed by label-set number, all at once.

Reads use their own cursor so they can run beside a write. Bulk inserts go through Arrow tables.
A select comes back as flat runs in label order (:meth:`DuckDBStore.select_set`, what the
evaluator reads; :meth:`~DuckDBStore.select` cuts the same runs into :class:`Series`).
Records (jobs, events) are kept in ``jobs`` and ``events`` with times as integer milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from bisect import insort
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from fleetscope.config import MEMORY_LIMIT
from fleetscope.model import Event, Job, JobState
from fleetscope.store import (
    BUCKET_AGGREGATES,
    COUNTER_AGGREGATE,
    METRIC_NAME,
    STALE_NAN,
    STALE_NAN_BITS,
    Appender,
    AppendResult,
    Buckets,
    InvalidBatchError,
    Matcher,
    OutOfOrderError,
    SampleBatch,
    SelectHints,
    Series,
    SeriesSet,
    StoreStats,
    cells,
    check_bucket_aggregates,
    matches_all,
)
from fleetscope.store.head import HEAD_ROWS, Head, no_rows, put_before, sort_order
from fleetscope.store.head import Rows as HeadRows

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (id INTEGER NOT NULL, metric VARCHAR NOT NULL,
                                   labels VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS samples (series_id INTEGER NOT NULL, t BIGINT NOT NULL,
                                    v DOUBLE NOT NULL);
CREATE TABLE IF NOT EXISTS run_rows (run INTEGER NOT NULL, metric_key INTEGER NOT NULL,
                                     series_id INTEGER NOT NULL, k INTEGER NOT NULL,
                                     o BIGINT NOT NULL, u BIGINT NOT NULL, v DOUBLE NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    cluster VARCHAR NOT NULL, id VARCHAR NOT NULL, name VARCHAR, team VARCHAR, "user" VARCHAR,
    workload VARCHAR, tier VARCHAR, state VARCHAR, submit_ms BIGINT, start_ms BIGINT,
    end_ms BIGINT, gpus INTEGER, nodes VARCHAR[], gpu_uuids VARCHAR[], exit_code INTEGER,
    pending_reason VARCHAR, restarts INTEGER, image VARCHAR, source VARCHAR);
CREATE TABLE IF NOT EXISTS events (time_ms BIGINT NOT NULL, kind VARCHAR NOT NULL,
                                   subject VARCHAR NOT NULL, attrs VARCHAR);
CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR NOT NULL, value BIGINT NOT NULL);
"""

_SAMPLES_SCHEMA = pa.schema([("series_id", pa.int32()), ("t", pa.int64()), ("v", pa.float64())])
_SERIES_SCHEMA = pa.schema([("id", pa.int32()), ("metric", pa.string()), ("labels", pa.string())])
_JOB_SCHEMA = pa.schema(
    [
        ("cluster", pa.string()), ("id", pa.string()), ("name", pa.string()),
        ("team", pa.string()), ("user", pa.string()), ("workload", pa.string()),
        ("tier", pa.string()), ("state", pa.string()), ("submit_ms", pa.int64()),
        ("start_ms", pa.int64()), ("end_ms", pa.int64()), ("gpus", pa.int32()),
        ("nodes", pa.list_(pa.string())), ("gpu_uuids", pa.list_(pa.string())),
        ("exit_code", pa.int32()), ("pending_reason", pa.string()), ("restarts", pa.int32()),
        ("image", pa.string()), ("source", pa.string()),
    ]
)  # fmt: skip
_EVENT_SCHEMA = pa.schema(
    [("time_ms", pa.int64()), ("kind", pa.string()), ("subject", pa.string()),
     ("attrs", pa.string())]
)  # fmt: skip
_NO_HEAD = np.iinfo(np.int64).min
_NO_ROWS = "(SELECT series_id, t, v FROM blocks WHERE false)"  # a subquery of no samples
_Key = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.int64]]  # times → keys (_newest)
_T = TypeVar("_T")
log = logging.getLogger(__name__)
BLOCK_MS = 2 * 3_600_000  # compaction moves samples out of the head in aligned blocks of 2 h
HEAD_KEEP_MS = 3_600_000  # … once the newest sample is this far past the block's end
MERGE_SPANS_MS = (86_400_000, 7 * 86_400_000)  # closed days, then weeks, become one run each
SPAN_MS = 7_200_000  # ``run_rows.k``: a sample's two-hour span, ``t // SPAN_MS`` (fixed)
_K_MIN, _K_MAX = -(2**31), 2**31 - 1  # k is an INTEGER: spans beyond (±490,000 years) clamp
# The runs' samples as ``blocks(run, metric_key, series_id, k, t, v)``: ``t = u - o``
_BLOCKS_VIEW = (
    "CREATE VIEW IF NOT EXISTS blocks AS "
    "SELECT run, metric_key, series_id, k, u - o AS t, v FROM run_rows"
)
# Every stored sample, from both tables (see the module docstring); {where} filters each side.
_ALL_SAMPLES = (
    "(SELECT series_id, t, v FROM blocks WHERE {where_blocks} "
    "UNION ALL SELECT series_id, t, v FROM samples WHERE {where})"
)


def _insert_run(con: duckdb.DuckDBPyConnection, run: int, source: str) -> None:
    """Write the samples of ``source`` (a subquery of ``metric_key, series_id, t, v``) as run
    ``run`` of ``run_rows``, sorted by ``(metric_key, series_id, t)``.

    Each series gets its own offset ``o`` and is stored as ``u = t + o``, where ``o`` makes
    the series' first ``u`` follow the previous series' last ``u`` by the series' mean step:
    ``u`` reads as one long regular series through the whole run, so DuckDB's delta
    bit-packing, which packs 2,048 values at the width of their widest delta, stores a regular
    series' times in a few bits per run instead of ~23 bits a value in every group where one
    series ends and the next begins. ``t`` itself is computed, so DuckDB can neither skip row
    groups on it nor filter it while scanning; ``k`` (the two-hour span of :data:`SPAN_MS`
    that holds ``t``, run-length encoded: ~0.02 bytes a sample) lets it do both for every read
    with a time range (see :func:`_within`, :func:`_outside`).
    """
    step = "CASE WHEN n > 1 THEN (l - f) // (n - 1) ELSE 0 END"
    con.execute(
        f"INSERT INTO run_rows WITH src AS {source}, "
        "per AS (SELECT metric_key, series_id, min(t) AS f, max(t) AS l, count(*) AS n "
        "FROM src GROUP BY metric_key, series_id), "
        f"off AS (SELECT metric_key, series_id, sum(l - f + {step}) OVER ("
        "ORDER BY metric_key, series_id ROWS UNBOUNDED PRECEDING) - (l - f) - f AS o "
        "FROM per) "
        f"SELECT {int(run)}, s.metric_key, s.series_id, "
        f"least(greatest(s.t // {SPAN_MS}, {_K_MIN}), {_K_MAX}), x.o, s.t + x.o, s.v "
        "FROM src s JOIN off x ON s.metric_key = x.metric_key AND s.series_id = x.series_id "
        "ORDER BY s.metric_key, s.series_id, s.t"
    )


def _span(t: int) -> int:
    """``run_rows.k`` of time ``t``: ``t // SPAN_MS`` as DuckDB divides (toward zero),
    clamped to an INTEGER's range."""
    k = abs(int(t)) // SPAN_MS * (1 if t >= 0 else -1)
    return min(max(k, _K_MIN), _K_MAX)


def _within(mint: int, maxt: int) -> str:
    """A ``blocks`` filter for ``t`` in ``[mint, maxt]`` that DuckDB can push into its scans
    (on ``k``); the caller still filters on ``t``."""
    return f"k BETWEEN {_span(mint)} AND {_span(maxt)}"


def _read_meta(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """What the file notes of itself in ``store_meta`` (cell layout, merge watermarks)."""
    return {str(k): int(v) for k, v in con.execute("SELECT key, value FROM store_meta").fetchall()}


def _write_meta(con: duckdb.DuckDBPyConnection, values: Mapping[str, int]) -> None:
    """Set ``store_meta`` keys (in the caller's transaction)."""
    for key, value in values.items():
        con.execute("DELETE FROM store_meta WHERE key = ?", [key])
        con.execute("INSERT INTO store_meta VALUES (?, ?)", [key, int(value)])


def _merged_key(span_ms: int) -> str:
    """The ``store_meta`` key of :meth:`DuckDBStore.merge_runs`' watermark for a span length."""
    return f"merged_until:{int(span_ms)}"


def _near_steps(first_cell: int, hints: SelectHints, w: int) -> str:
    """A further condition on the cells of a thin select (steps a multiple ``k`` of the cell
    width ``w``, aligned to it): only the cells that can hold a sample within the lookback
    ``[t - L, t]`` of an evaluation time ``t``, ``""`` when that is every cell.

    Cell ``c`` ends ``d`` cells before the next evaluation time; it can matter when
    ``d·w <= L``: fully for ``d·w < L``, and for ``d·w = L`` only through a sample at its very
    end (its newest one). Any other cell holds only samples older than every lookback that
    reaches it, which the thin select would hand the evaluator only to be dropped there: a
    1-hour step reads 2 cells in 12. ``first_cell`` is the lowest cell number read."""
    k, m = hints.step_ms // w, hints.lookback_ms // w
    if hints.lookback_ms <= 0 or m >= k - 1:
        return ""
    step_cell = hints.start_ms // w
    origin = step_cell - k * ((step_cell - first_cell) // k + 1)  # a step cell below them all
    q = f"((c - {origin} + {m}) % {k})"  # m - d, for d <= m
    if hints.lookback_ms % w:
        return f" AND {q} <= {m}"
    return f" AND ({q} BETWEEN 1 AND {m} OR ({q} = 0 AND coalesce(top_dt, last_dt) = {w}))"


def _outside(spans: Sequence[tuple[int, int]]) -> str:
    """A ``blocks`` filter for ``t`` outside every one of the closed ``spans``: on ``t``, and
    on ``k`` (the spans that do not lie wholly inside one of them, as closed ranges: DuckDB
    filters an ``OR`` of ``BETWEEN``s while it scans, but not an ``AND`` of ``OR``s nor
    open-ended comparisons)."""
    if not spans:
        return "true"
    holes: list[list[int]] = []  # the k wholly inside a span, merged
    for a, z in sorted((_span(a) + 1, _span(z) - 1) for a, z in spans):
        if a > z:
            continue
        if holes and a <= holes[-1][1] + 1:
            holes[-1][1] = max(holes[-1][1], z)
        else:
            holes.append([a, z])
    ts = " OR ".join(f"t BETWEEN {int(a)} AND {int(z)}" for a, z in spans)
    if not holes:
        return f"NOT ({ts})"
    ends = [_K_MIN, *(e for hole in holes for e in (hole[0] - 1, hole[1] + 1)), _K_MAX]
    ks = " OR ".join(f"k BETWEEN {a} AND {z}" for a, z in zip(ends[::2], ends[1::2], strict=True))
    return f"({ks}) AND NOT ({ts})"


def _empty_buckets(
    series: int, n: int
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.bool_],
]:
    """The arrays of :class:`Buckets` for ``series`` × ``n`` empty buckets."""

    def nan() -> npt.NDArray[np.float64]:
        return np.full((series, n), np.nan)

    return (
        np.zeros((series, n), np.int64),
        nan(),
        nan(),
        nan(),
        nan(),
        nan(),
        np.zeros((series, n), np.bool_),
    )


def _inside_cells(
    base: int, width: int, n: int, w: int, span: tuple[int, int]
) -> list[tuple[int, int]]:
    """Per bucket ``(base + (b-1)·width, base + b·width]`` (``b >= 1``), the cells ``c1 … c2``
    of ``span`` lying inside it (buckets holding none are left out)."""
    out = []
    for b in range(1, n):
        lo, hi = base + (b - 1) * width, base + b * width
        c1 = max(-(-lo // w) + 1, span[0])  # (c1 - 1)·W >= lo
        c2 = min(hi // w, span[1])  # c2·W <= hi
        if c1 <= c2:
            out.append((c1, c2))
    return out


# A bucket read's flags column: NaNs among the raw rows (stale markers, or real NaNs the
# caller must see), and a real NaN inside a cell.
_NANS, _REAL_NAN = 1, 2
_FLAGS = f"((nans > 0)::INTEGER * {_NANS} + (bad > 0)::INTEGER * {_REAL_NAN})"


def _fold_parts(parts: dict[str, Any]) -> dict[str, Any]:
    """Combine the parts of each (series, bucket) (raw samples before, cells, raw after:
    never overlapping in time; sorted by series, bucket, non-empty, time) into one row: counts
    and sums add, the oldest part gives ``first``, the newest ``last``, and the increase adds
    each part's own plus the step from one part's last value to the next one's first (``v -
    previous``, or ``v`` after a reset).
    Empty parts (only NaNs) count for ``nans``/``bad`` alone."""

    def floats(name: str) -> npt.NDArray[np.float64]:
        column = parts[name]
        out = np.ma.getdata(column).astype(np.float64)
        out[np.ma.getmaskarray(column)] = np.nan
        return out

    n = np.asarray(parts["n"], np.int64)
    full = n > 0
    first_t = np.where(full, np.ma.getdata(parts["first_t"]), 0).astype(np.int64)
    last_t = np.where(full, np.ma.getdata(parts["last_t"]), 0).astype(np.int64)
    sid, b = np.asarray(parts["series_id"], np.int64), np.asarray(parts["b"], np.int64)
    f = {name: floats(name) for name in ("s", "lo", "hi", "last", "edge", "first", "inc")}
    if len(sid) == 0:
        return (
            {k: np.empty(0, np.int64) for k in ("series_id", "b", "n", "flags")}
            | {k: np.empty(0) for k in ("s", "lo", "hi", "last", "edge", "first", "inc")}
            | {"first_t": np.empty(0, np.int64), "last_t": np.empty(0, np.int64)}
        )
    starts = np.flatnonzero(np.concatenate(([True], (sid[1:] != sid[:-1]) | (b[1:] != b[:-1]))))
    ends = np.append(starts[1:], len(sid)) - 1
    empties = np.add.reduceat((~full).astype(np.int64), starts)
    head = np.minimum(starts + empties, ends)  # the group's oldest non-empty part
    prev_full = np.concatenate(([False], full[:-1])) & full
    prev_full[starts] = False
    prev_last = np.concatenate(([0.0], f["last"][:-1]))
    with np.errstate(all="ignore"):
        step = np.where(f["first"] >= prev_last, f["first"] - prev_last, f["first"])
        step = np.where(prev_full, step, 0.0)
        inc = np.add.reduceat(np.where(full, f["inc"] + step, 0.0), starts)
        total = np.add.reduceat(np.where(full, f["s"], 0.0), starts)
    count = np.add.reduceat(n, starts)
    some = count > 0

    def masked(x: npt.NDArray[np.float64], keep: npt.NDArray[np.bool_]) -> Any:
        return np.ma.masked_array(x, mask=~keep)

    return {
        "series_id": sid[starts],
        "b": b[starts],
        "n": count,
        "s": masked(total, some),
        "lo": masked(np.fmin.reduceat(f["lo"], starts), some),
        "hi": masked(np.fmax.reduceat(f["hi"], starts), some),
        "last": masked(f["last"][ends], some),
        "edge": np.ma.masked_invalid(np.fmax.reduceat(f["edge"], starts)),
        "first": masked(f["first"][head], some),
        "inc": masked(inc, some),
        "first_t": np.where(some, first_t[head], 0),
        "last_t": np.where(some, last_t[ends], 0),
        # per part, not per bucket: only ever asked whether any is set
        "flags": np.where(np.asarray(parts["nans"]) > 0, _NANS, 0)
        | np.where(np.asarray(parts["bad"]) > 0, _REAL_NAN, 0),
    }


def _head_parts(
    head: HeadRows,
    base: int,
    width: int,
    kept: Collection[str],
    *,
    counter: bool,
) -> dict[str, Any]:
    """The parts of a bucket read (as its SQL computes them from raw rows: one per series,
    bucket and side; NULL masked) from the head's rows, sorted by ``(series, t)``, in NumPy:
    the head is in memory, and DuckDB took longer to group its rows than to scan them.
    ``kept``: the value aggregates asked for. Not for no rows. Each is a part of its own
    (side 1: SQL groups no other rows with it)."""
    sid, t, v = head
    b = (t - base + width - 1) // width
    new = np.ones(len(sid), np.bool_)
    new[1:] = (sid[1:] != sid[:-1]) | (b[1:] != b[:-1])
    starts = np.flatnonzero(new)
    ok = ~np.isnan(v)
    n = np.add.reduceat(ok.astype(np.int64), starts)
    empty = n == 0
    at = np.arange(len(sid))
    newest = np.maximum(np.maximum.reduceat(np.where(ok, at, -1), starts), 0)
    oldest = np.minimum(np.minimum.reduceat(np.where(ok, at, len(sid)), starts), len(sid) - 1)
    on_edge = np.maximum.reduceat(np.where(ok & (t == base + b * width), at, -1), starts)
    none = np.ones(len(starts), np.bool_)

    def values(name: str, reduce: np.ufunc, neutral: float) -> Any:
        with np.errstate(all="ignore"):  # Inf - Inf: NaN, as in SQL; overflow: Inf
            x = reduce.reduceat(np.where(ok, v, neutral), starts) if name in kept else none * 0.0
        return np.ma.masked_array(x, mask=empty | (name not in kept))

    parts = {
        "series_id": sid[starts],
        "b": b[starts],
        "side": np.ones(len(starts), np.int32),
        "n": n,
        "s": values("s", np.add, 0.0),
        "lo": values("lo", np.minimum, np.inf),
        "hi": values("hi", np.maximum, -np.inf),
        "last": np.ma.masked_array(v[newest], mask=empty | ("last" not in kept)),
        "last_t": np.ma.masked_array(t[newest], mask=empty),
        "edge": np.ma.masked_array(v[np.maximum(on_edge, 0)], mask=on_edge < 0),
        "nans": np.add.reduceat((~ok).astype(np.int64), starts),
        "bad": n * 0,
    }
    if counter:  # each not-NaN sample's step from the previous one of its part, summed
        rows = np.flatnonzero(ok)
        x, g = v[rows], (np.cumsum(new) - 1)[rows]
        with np.errstate(all="ignore"):
            step = np.where(x[1:] >= x[:-1], x[1:] - x[:-1], x[1:])
        step = np.where(g[1:] == g[:-1], step, 0.0)
        inc = np.bincount(g[1:], weights=step, minlength=len(starts))
        parts |= {
            "first_t": np.ma.masked_array(t[oldest], mask=empty),
            "first": np.ma.masked_array(v[oldest], mask=empty),
            "inc": np.ma.masked_array(inc, mask=empty),
        }
    return parts


def _head_buckets(parts: dict[str, Any], head: HeadRows) -> dict[str, Any] | None:
    """A bucket read's rows from the head's parts alone (one per series and bucket: nothing
    to combine), as its SQL gives them; ``None`` for a NaN that is not a staleness marker."""
    nans = head[2][np.isnan(head[2])]
    if (nans.view(np.int64) != STALE_NAN_BITS).any():
        return None
    return parts | {"flags": np.where(parts["nans"] > 0, _NANS, 0)}


def _arrow(columns: Mapping[str, Any]) -> pa.Table:
    """An Arrow table of NumPy columns, masked ones with NULLs."""
    return pa.table(
        {
            name: pa.array(np.ma.getdata(x), mask=np.ma.getmaskarray(x) if np.ma.isMA(x) else None)
            for name, x in columns.items()
        }
    )


def _key(labels: Mapping[str, str]) -> str:
    return json.dumps(sorted(labels.items()), separators=(",", ":"))


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Insert an Arrow table into ``table``.

    DuckDB finds ``rows`` by its Python name (a replacement scan): cheaper than registering a
    view and dropping it, which are two catalog changes of their own.
    """
    con.execute(f"INSERT INTO {table} SELECT * FROM rows")


def _ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else _utc(ms)


def _same(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Equal values, NaNs compared by bit pattern (a resent stale marker is a duplicate)."""
    return np.asarray(a.view(np.int64) == b.view(np.int64))


Runs = tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]
]
"""A read's series ids, their samples' times and values as flat runs, and the runs' bounds."""


class DuckDBStore:
    """:class:`~fleetscope.store.MetricStore` and :class:`~fleetscope.store.RecordStore` on a
    DuckDB file (``":memory:"`` for a throw-away store)."""

    def __init__(
        self,
        path: str | Path,
        *,
        block_ms: int = BLOCK_MS,
        head_keep_ms: int = HEAD_KEEP_MS,
        merge_spans_ms: Sequence[int] = MERGE_SPANS_MS,
        cell_ms: int = cells.CELL_MS,
        memory_limit: str | None = None,
        head_rows: int = HEAD_ROWS,
    ) -> None:
        """``memory_limit``: DuckDB's (``"4GB"``, ``"40%"`` of RAM…; ``None``: DuckDB's
        default, 80 %), which upgrades, merges and cell builds of large stores reach (they
        spill to disk beyond it). ``head_rows``: the most head samples kept in memory
        (store/head.py; 24 bytes each); beyond, reads scan the head table."""
        if memory_limit is not None and not MEMORY_LIMIT.match(memory_limit):
            raise ValueError(f"memory limit {memory_limit!r}: expected e.g. 4GB, 512MiB or 40%")
        self.path = str(path)
        self.block_ms = block_ms
        self.head_keep_ms = head_keep_ms
        self.merge_spans_ms = tuple(merge_spans_ms)
        # cells (store/cells.py) need whole cells in every block; 0: no cells
        self.cell_ms = cell_ms if cell_ms > 0 and block_ms % cell_ms == 0 else 0
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(self.path)
        self._con.execute("SET enable_progress_bar = false")  # long builds: no bar in logs
        if memory_limit is not None:
            self._con.execute(f"SET memory_limit = '{memory_limit}'")
        self._con.execute(_SCHEMA)
        self._upgrade_blocks()
        cells.create(self._con)
        self._lock = threading.Lock()
        self._labels: list[dict[str, str]] = []
        # each series' sorted label pairs without empty values (the evaluator's label sets)
        self._pairs: list[tuple[tuple[str, str], ...]] = []
        self._ranked: list[tuple[tuple[tuple[str, str], ...], int]] = []  # (sort key, id), sorted
        self._ranked_live = False  # at load, sorted once at the end; then kept sorted
        self._rank = np.empty(0, np.int64)  # series id → position in _ranked (lazily)
        self._rank_lock = threading.Lock()
        self._ids: dict[str, int] = {}
        # label pairs in the order a client sent them → id; skips building the canonical key
        # for series seen before (the common case: every scrape repeats the same label sets)
        self._seen: dict[tuple[tuple[str, str], ...], int] = {}
        # label-set number (SampleBatch.label_set_ids) → series id, -1 unknown, in one numbering
        self._numbering: object = None
        self._id_of_number = np.empty(0, np.int64)
        self._queue: list[_Pending] = []  # appends waiting for the next group commit
        self._queue_lock = threading.Lock()
        self._by_name: dict[str, list[int]] = {}
        self._keys = np.empty(0, np.int64)  # series id → metric key
        self._head = np.empty(0, np.int64)
        # the head table's rows in memory, sorted by series (store/head.py): what reads take
        self._head_rows = Head(head_rows)
        # odd while a compaction move or a retention deletion changes the head and the runs:
        # a read that saw it change reads again (see _read)
        self._moves = 0
        self._load_index()

    def _upgrade_blocks(self) -> None:
        """Rewrite the ``blocks`` table of a store written before ``run_rows`` (which stored
        ``t`` as is) as runs of ``run_rows``, once, in one transaction; then ``blocks`` is the
        view over them."""
        con = self._con
        row = con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'blocks' "
            "AND table_schema = 'main' AND table_catalog = current_database()"
        ).fetchone()
        if row is not None and row[0] == "BASE TABLE":
            runs = [int(r[0]) for r in con.execute("SELECT DISTINCT run FROM blocks").fetchall()]
            log.warning(
                "rewriting %d runs of %s in the current layout (once)", len(runs), self.path
            )
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("ALTER TABLE blocks RENAME TO blocks_before_run_rows")
                for run in sorted(runs):
                    _insert_run(
                        con,
                        run,
                        "(SELECT metric_key, series_id, t, v FROM blocks_before_run_rows "
                        f"WHERE run = {run})",
                    )
                con.execute("DROP TABLE blocks_before_run_rows")
                con.execute(_BLOCKS_VIEW)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        con.execute(_BLOCKS_VIEW)

    # ----------------------------------------------------------------- series index

    def _load_index(self) -> None:
        rows = self._con.execute("SELECT id, labels FROM series ORDER BY id").fetchall()
        for sid, text in rows:
            if sid != len(self._labels):
                raise RuntimeError(f"series table is corrupt near id {sid}")
            self._register(dict(json.loads(text)), text)
        self._ranked.sort()
        self._ranked_live = True
        self._head = np.full(len(self._labels), _NO_HEAD, np.int64)
        # span → end of the spans already merged, kept in store_meta so that a restart does
        # not look at every run again (merge_runs)
        recorded = _read_meta(self._con)
        self._merged_until: dict[int, int] = {
            span: int(recorded[_merged_key(span)])
            for span in self.merge_spans_ms
            if _merged_key(span) in recorded
        }
        self._merge_epoch = 0  # counts the times a straggler moved a watermark back
        row = self._con.execute(
            "SELECT max(t) FROM blocks WHERE k = (SELECT max(k) FROM run_rows)"
        ).fetchone()
        # No block row is newer than this (an upper bound): selects after it skip the blocks.
        # Compaction moves whole blocks (k·block_ms, (k+1)·block_ms], so the end of the newest
        # one; a head sample not newer (another block length, an older version) is "late".
        self._blocks_max_t = (
            _NO_HEAD
            if row is None or row[0] is None
            else -(-int(row[0]) // self.block_ms) * self.block_ms
        )
        row = self._con.execute("SELECT max(run) FROM blocks").fetchone()
        self._next_run = 0 if row is None or row[0] is None else int(row[0]) + 1
        self._load_cells(recorded)
        self._load_head(self._head_rows.limit)
        heads = self._con.execute(
            "SELECT series_id, max(t) AS t, arg_max(v, t) AS v FROM "
            + _ALL_SAMPLES.format(where_blocks="true", where="true")
            + " GROUP BY series_id"
        ).fetchnumpy()
        self._latest = _Latest(len(self._labels))
        if len(heads["series_id"]):
            ids = heads["series_id"].astype(np.int64)
            self._head[ids] = heads["t"]
            self._latest.update(len(self._labels), ids, heads["t"], heads["v"])

    def _load_head(self, most: int) -> None:
        """Copy the head table into memory when it holds at most ``most`` rows (at open: the
        limit; after a compaction move: half of it, so that a head hovering at the limit is
        not copied and freed over and over)."""
        row = self._con.execute("SELECT count(*) FROM samples").fetchone()
        if row is not None and int(row[0]) > most:
            self._head_rows.give_up()
            return
        stored = self._con.execute("SELECT series_id, t, v FROM samples").fetchnumpy()
        self._head_rows.load(stored["series_id"], stored["t"], stored["v"])

    def _load_cells(self, recorded: Mapping[str, int]) -> None:
        """Whether the cells are complete for :attr:`cell_ms` (else :meth:`compact` builds
        them: a store written before cells existed, or with another width), the oldest time
        they may cover, and whether the head holds samples older than the blocks' end.
        ``recorded``: the file's ``store_meta``."""
        con = self._con
        wanted = {"cell_ms": self.cell_ms, "cells_version": cells.VERSION}
        row = con.execute("SELECT min(t) FROM blocks").fetchone()
        oldest = None if row is None or row[0] is None else int(row[0])
        ready = all(recorded.get(k) == v for k, v in wanted.items())
        if not ready:  # another width or layout: start over (an empty table is complete)
            con.execute("BEGIN TRANSACTION")
            cells.drop(con)
            cells.create(con)
            if oldest is None or not self.cell_ms:
                self._record_cells(con)
                ready = True
            con.execute("COMMIT")
        self._cells_ready = bool(self.cell_ms) and ready
        # every sample after this is still stored (retention deletes older ones only)
        self._cells_lo = _NO_HEAD if oldest is None else oldest
        row = con.execute(
            "SELECT count(*) FROM samples WHERE t <= ?", [self._blocks_max_t]
        ).fetchone()
        self._late = bool(row and row[0])  # samples in the head that cells cannot know of

    def _counter_keys(self) -> list[int]:
        """Metric keys of the metrics whose cells keep counter columns."""
        return [ids[0] for name, ids in self._by_name.items() if cells.is_counter(name)]

    def _cell_span(self, mint: int, maxt: int) -> tuple[int, int] | None:
        """The cells ``c_lo … c_hi`` that hold every sample of their ``((c-1)·W, c·W]`` and
        lie inside ``[mint, maxt]``; ``None`` when none can be used now."""
        w = self.cell_ms
        if not w or not self._cells_ready or self._late:
            return None
        lo = max(self._cells_lo, mint)
        c_lo = -(-(lo - 1) // w) + 1  # (c-1)·W + 1 >= lo
        c_hi = min(self._blocks_max_t, maxt) // w
        return (c_lo, c_hi) if c_lo <= c_hi else None

    def _as_buckets(self, cols: dict[str, Any], n: int, *, counter: bool) -> Buckets:
        """:class:`Buckets` from one row per (series, bucket): series in label order, NULLs
        (nothing there, or not asked for) as NaN."""
        sids = np.asarray(cols["series_id"], np.int64)
        # series ids are small and dense: a count per id finds them without np.unique's sort
        present = np.flatnonzero(np.bincount(sids)) if len(sids) else sids
        order = self._in_label_order(present)
        row_of = np.empty(int(present.max()) + 1 if len(present) else 0, np.int64)
        row_of[present[order]] = np.arange(len(order))
        flat = row_of[sids] * n + np.asarray(cols["b"], np.int64)  # row-major [series, n]
        out = _empty_buckets(len(present), n)
        count, total, lo, hi, last, edge, has_edge = out
        count.reshape(-1)[flat] = np.asarray(cols["n"], np.int64)
        named = [(total, "s"), (lo, "lo"), (hi, "hi"), (last, "last"), (edge, "edge")]
        extra: dict[str, Any] = {}
        if counter:
            extra = {
                "first_t": np.zeros((len(present), n), np.int64),
                "last_t": np.zeros((len(present), n), np.int64),
                "first": np.full((len(present), n), np.nan),
                "increase": np.full((len(present), n), np.nan),
            }
            extra["first_t"].reshape(-1)[flat] = np.ma.getdata(cols["first_t"])
            extra["last_t"].reshape(-1)[flat] = np.ma.getdata(cols["last_t"])
            named += [(extra["first"], "first"), (extra["increase"], "inc")]
        for array, name in named:
            if name not in cols:  # not asked for: stays NaN
                continue
            column = cols[name]
            if not np.ma.is_masked(column):  # no NULL in it
                array.reshape(-1)[flat] = np.ma.getdata(column)
            elif not (missing := np.ma.getmaskarray(column)).all():
                array.reshape(-1)[flat] = np.where(missing, np.nan, np.ma.getdata(column))
        has_edge.reshape(-1)[flat] = ~np.ma.getmaskarray(cols["edge"])
        labels = [dict(self._labels[int(present[i])]) for i in order]
        return Buckets(labels, count, total, lo, hi, last, edge, has_edge, **extra)

    def _bucket_cells(
        self,
        ids: list[int],
        base: int,
        width: int,
        n: int,
        span: tuple[int, int],
        *,
        counter: bool,
    ) -> tuple[str, str, int]:
        """For a bucket read: the cells' parts (``UNION ALL`` branches), the condition that
        leaves the samples they stand for out of ``blocks``, and the oldest time still to read
        sample by sample. Cells inside one bucket count; with every cell aligned to the
        buckets that is all of them (and bucket 0 comes from the cell ending at ``base``), with
        few ragged buckets the cells inside each, else arithmetic on ``c`` and ``t`` decides."""
        w = self.cell_ms
        aligned = base % w == 0 and width % w == 0
        blocks_also, cells_part, raw_mint = "", "", base
        cell_b = f"(c::BIGINT * {w} - {base} + {width - 1}) // {width}"
        cell_start = f"(c::BIGINT - 1) * {w}"
        if aligned:  # every cell lies inside one bucket
            inside = "true"
            blocks_also = _outside([((span[0] - 1) * w + 1, span[1] * w)])
            zero = self._edge_cell(base) if (span[0] - 1) * w == base else None
            if zero is not None:  # bucket 0 (the sample at base) from the cell ending there
                cells_part = self._bucket_zero(ids, zero, base, counter=counter)
                blocks_also, raw_mint = "", span[1] * w + 1
        elif n <= 64:  # few buckets: the cells inside each, as ranges of cells and times
            spans = _inside_cells(base, width, n, w, span)
            cell_ranges = " OR ".join(f"c BETWEEN {a} AND {z}" for a, z in spans)
            inside = f"({cell_ranges or 'false'})"
            blocks_also = _outside([((a - 1) * w + 1, z * w) for a, z in spans])
        else:  # the cells inside a bucket stand for their samples; the others are read
            inside = f"{cell_start} >= {base} + ({cell_b} - 1) * {width}"
            rc = f"((t + {w - 1}) // {w})"
            rb = f"(({rc} * {w} - {base} + {width - 1}) // {width})"
            blocks_also = (
                f"NOT ({rc} BETWEEN {span[0]} AND {span[1]} "
                f"AND ({rc} - 1) * {w} >= {base} + ({rb} - 1) * {width})"
            )
        counter_cols = (
            f", {cell_start} + first_dt AS first_t, first_v AS first, inc" if counter else ""
        )
        cells_part += (
            f" UNION ALL SELECT series_id, {cell_b} AS b, 0 AS side, n, s, NULL::DOUBLE AS lo, "
            "NULL::DOUBLE AS hi, "
            f"last_v AS last, {cell_start} + last_dt AS last_t, CASE WHEN {cell_start} + "
            f"last_dt = {base} + {cell_b} * {width} THEN last_v END AS edge, 0 AS nans, "
            f"bad{counter_cols} FROM cells WHERE {self._cells_where(ids, span)} AND {inside}"
        )
        return cells_part, blocks_also, raw_mint

    def _bucket_zero(self, ids: Sequence[int], cell: int, base: int, *, counter: bool) -> str:
        """Bucket 0 of a bucket read (the sample exactly at ``base``) as a part from the cell
        ending at ``base``: its newest sample when that sits at the cell's end."""
        w = self.cell_ms
        on_end = f"coalesce(last_dt = {w}, false)"
        value, at = f"CASE WHEN {on_end} THEN last_v END", f"CASE WHEN {on_end} THEN {base} END"
        counter_cols = (
            f", {at} AS first_t, {value} AS first, CASE WHEN {on_end} THEN 0.0 END AS inc"
            if counter
            else ""
        )
        where = self._cells_where(ids, (cell, cell))
        return (
            f" UNION ALL SELECT series_id, 0 AS b, 0 AS side, {on_end}::INTEGER AS n, {value} AS "
            f"s, NULL::DOUBLE AS lo, NULL::DOUBLE AS hi, {value} AS last, {at} AS last_t, "
            f"{value} AS edge, 0 AS nans, coalesce(top_dt = {w} AND top_real, false)::INTEGER "
            f"AS bad{counter_cols} FROM cells WHERE {where} AND (last_dt = {w} OR top_dt = {w})"
        )

    def _edge_cell(self, at_ms: int) -> int | None:
        """The cell ending at ``at_ms`` when cells can answer for it (its sample exactly at
        ``at_ms`` is then its newest one), else ``None``."""
        w = self.cell_ms
        if not w or not self._cells_ready or self._late or at_ms % w:
            return None
        c = at_ms // w
        return c if (c - 1) * w + 1 >= self._cells_lo and at_ms <= self._blocks_max_t else None

    def _register(self, labels: dict[str, str], key: str) -> int:
        sid = len(self._labels)
        pairs = tuple(sorted(labels.items()))
        self._pairs.append(pairs if all(v for _, v in pairs) else tuple(p for p in pairs if p[1]))
        if self._ranked_live:
            with self._rank_lock:
                insort(self._ranked, (pairs, sid))
        else:  # loading: sorted once at the end
            self._ranked.append((pairs, sid))
        self._labels.append(labels)  # last: a reader that finds the series finds it ranked
        self._ids[key] = sid
        same_metric = self._by_name.setdefault(labels.get(METRIC_NAME, ""), [])
        same_metric.append(sid)
        if sid >= len(self._keys):
            self._keys = np.concatenate([self._keys, np.zeros(max(1024, sid), np.int64)])
        self._keys[sid] = same_metric[0]
        return sid

    def _metric_keys(self, ids: Sequence[int]) -> list[int]:
        """The ``blocks.metric_key`` of the series (the smallest series id of each one's
        metric; it never changes), sorted and distinct."""
        return [int(k) for k in np.unique(self._keys[np.asarray(ids, np.int64)])]

    def _read(
        self,
        ids: list[int],
        mint: int,
        maxt: int,
        run: Callable[[duckdb.DuckDBPyConnection, str | None, HeadRows], _T],
        blocks_also: str = "",
    ) -> _T:
        """``run(cursor, rows, head)``: ``head`` the head's samples of ``ids`` (sorted) in
        ``[mint, maxt]``, from memory (:class:`~fleetscope.store.head.Head`), and ``rows`` a
        subquery of the runs' ones, ``None`` when no run can hold one (most instant queries).
        While the head is too large for memory, ``head`` is empty and ``rows`` has the head
        table's samples too.

        A compaction move or a retention deletion changes the runs (DuckDB's commit) and the
        head in memory one after the other, with :attr:`_moves` odd meanwhile: a read that
        overlaps one reads again, so it never sees a sample twice or not at all.
        """
        cur = self._con.cursor()
        wanted = np.asarray(ids, np.int64)
        try:
            cur.register("wanted", pa.table({"id": pa.array(ids, pa.int32())}))
            while True:
                seq = self._moves
                if seq % 2:
                    with self._lock:  # held by the move: wait for it to end
                        continue
                view = self._head_rows.view()
                in_table = not view.complete
                head = no_rows() if in_table else view.rows(wanted, mint, maxt)
                rows = self._rows(ids, mint, maxt, blocks_also, head_table=in_table)
                result = run(cur, rows, head)
                if self._moves == seq:
                    return result
        finally:
            cur.close()

    def _rows(
        self, ids: list[int], mint: int, maxt: int, blocks_also: str, *, head_table: bool
    ) -> str | None:
        """The runs' rows of ``ids`` in ``[mint, maxt]`` (and the head table's, with
        ``head_table``); ``blocks_also``: one more condition on the runs' (leaving out the
        samples that cells stand for)."""
        where_blocks, where = self._where(ids)
        within = f"t BETWEEN {int(mint)} AND {int(maxt)} AND series_id IN (SELECT id FROM wanted)"
        parts = []
        if head_table:
            parts.append(f"SELECT series_id, t, v FROM samples WHERE {where} AND {within}")
        if mint <= self._blocks_max_t:
            also = f" AND {blocks_also}" if blocks_also else ""
            parts.append(
                f"SELECT series_id, t, v FROM blocks WHERE {_within(mint, maxt)} AND "
                f"{where_blocks} AND {within}{also}"
            )
        return f"({' UNION ALL '.join(parts)})" if parts else None

    def _where(self, ids: Sequence[int]) -> tuple[str, str]:
        """Constant filters for :data:`_ALL_SAMPLES` that let zone maps skip row groups: the
        series id range and, in ``blocks``, the metric keys of ``ids`` (sorted, non-empty)."""
        span = f"series_id BETWEEN {int(ids[0])} AND {int(ids[-1])}"
        keys = self._metric_keys(ids)
        if len(keys) <= 16:
            return f"metric_key IN ({','.join(map(str, keys))}) AND {span}", span
        return span, span

    def _in_label_order(self, ids: Sequence[int] | npt.NDArray[np.int64]) -> list[int]:
        """Positions of ``ids`` ordered by their series' sorted label pairs (through every
        series' rank in that order, kept sorted as series come: no tuple sort per read)."""
        with self._rank_lock:
            if len(self._rank) != len(self._ranked):
                self._rank = np.empty(len(self._ranked), np.int64)
                self._rank[np.fromiter((i for _, i in self._ranked), np.int64)] = np.arange(
                    len(self._ranked)
                )
            rank = self._rank
        order: list[int] = np.argsort(rank[np.asarray(ids, np.int64)], kind="stable").tolist()
        return order

    def _cells_where(self, ids: Sequence[int], span: tuple[int, int], also: str = "") -> str:
        """The cells of ``ids`` (sorted, registered as ``wanted``) numbered ``span``, and those
        that meet condition ``also``."""
        keys, _ = self._where(ids)
        groups = cells.span_filter(span[0] - 1, span[1])  # also: the cell before
        numbered = f"c BETWEEN {int(span[0])} AND {int(span[1])}"
        return f"{keys} AND {groups} AND series_id IN (SELECT id FROM wanted) AND ({numbered}" + (
            f" OR {also})" if also else ")"
        )

    def _match(self, matchers: Sequence[Matcher]) -> list[int]:
        """Ids of series matching every matcher (a ``__name__ =`` matcher narrows first)."""
        names = [m for m in matchers if m.name == METRIC_NAME and m.op == "="]
        if names:
            candidates: Iterable[int] = self._by_name.get(names[0].value, [])
            rest = [m for m in matchers if m is not names[0]]
            if not rest:  # the metric name alone: its series, nothing more to check
                return list(candidates)
        else:
            candidates = range(len(self._labels))
        return [i for i in candidates if matches_all(self._labels[i], matchers)]

    # ----------------------------------------------------------------- appends

    def appender(self) -> Appender:
        return _Appender(self)

    def append(self, batch: SampleBatch) -> AppendResult:
        if len(batch) == 0:
            return AppendResult(0, 0, 0)
        mine = _Pending(batch)
        with self._queue_lock:
            self._queue.append(mine)
        with self._lock:
            if mine.result is None and mine.error is None:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _commit_group(self, group: list[_Pending]) -> None:
        """Check every queued batch in order and write the accepted ones (holding the lock)."""
        stage = _Stage()
        try:
            for pending in group:
                self._stage(stage, pending)
            self._flush(stage)
        except BaseException:  # a bug or an interrupt: heads must not count unwritten rows
            stage.undo(self)
            raise
        finally:  # never leave a waiter without an answer
            for pending in group:
                if pending.result is None and pending.error is None:
                    pending.error = RuntimeError("append abandoned by a failed group commit")

    def _stage(self, stage: _Stage, pending: _Pending) -> None:
        """Add one batch to the stage, or fail it alone."""
        try:
            try:
                plan = self._plan(pending.batch, stage)
            except _NeedsFlush:
                self._flush(stage)
                plan = self._plan(pending.batch, stage)
        except Exception as e:  # the batch's own fault (a StoreError, or a malformed batch)
            pending.error = e
            return
        stage.add(self, plan, pending)

    def _plan(self, batch: SampleBatch, stage: _Stage) -> _Plan:
        """Check a batch against the stored and staged series; what writing it would add."""
        if not (len(batch.series_index) == len(batch.t_ms) == len(batch.values)):
            raise InvalidBatchError("batch columns have different lengths")
        plan = _Plan(first_id=len(self._labels) + len(stage.new_series))
        ids = self._series_ids(batch, stage, plan)[batch.series_index]
        t = batch.t_ms.astype(np.int64, copy=False)
        v = batch.values.astype(np.float64, copy=False)
        if not (ids[1:] > ids[:-1]).all():  # sort by (series, time) unless each series is once
            order = np.argsort(ids)
            if not (ids[order][1:] > ids[order][:-1]).all():
                order = np.lexsort((t, ids))
            ids, t, v = ids[order], t[order], v[order]

            # Repeats inside the batch: an exact repeat is one sample, anything else an error.
            same_point = (ids[1:] == ids[:-1]) & (t[1:] == t[:-1])
            if same_point.any():
                clash = same_point & ~_same(v[1:], v[:-1])
                if clash.any():
                    k = int(np.argmax(clash))
                    raise OutOfOrderError(
                        f"two different values for "
                        f"{self._describe(int(ids[k]), stage.new_series, plan.new_series)} "
                        f"at {int(t[k])}"
                    )
                keep = np.concatenate(([True], ~same_point))
                ids, t, v = ids[keep], t[keep], v[keep]
                plan.duplicates = int(same_point.sum())

        head = self._head
        if int(ids[-1]) < len(head):  # ids are sorted: all of them known
            heads = head[ids]
        else:
            heads = np.full(len(ids), _NO_HEAD, np.int64)
            known = ids < len(head)
            heads[known] = head[ids[known]]
        old = t <= heads
        if old.any():
            if stage.touches(ids[old]):  # rows to compare with may still be in the stage
                raise _NeedsFlush
            self._check_resend(ids[old], t[old], v[old])
            plan.duplicates += int(old.sum())
            ids, t, v = ids[~old], t[~old], v[~old]
        plan.ids, plan.t, plan.v = ids, t, v
        return plan

    def _series_ids(self, batch: SampleBatch, stage: _Stage, plan: _Plan) -> npt.NDArray[np.int64]:
        """Id of each label set of the batch; series new to the store are added to ``plan``."""
        n = len(batch.series)
        numbered = batch.label_set_ids
        todo: Iterable[int] = range(n)
        if numbered is not None:
            if len(numbered.ids) != n:
                raise InvalidBatchError("batch has label set numbers that do not match its series")
            if numbered.numbering is not self._numbering:
                self._numbering = numbered.numbering
                self._id_of_number = np.empty(0, np.int64)
            numbers = numbered.ids
            if n and int(numbers.max()) >= len(self._id_of_number):
                grow = max(
                    int(numbers.max()) + 1 - len(self._id_of_number), len(self._id_of_number)
                )
                self._id_of_number = np.append(self._id_of_number, np.full(grow, -1, np.int64))
            local = self._id_of_number[numbers]
            missing = local < 0
            if not missing.any():
                return local
            todo = np.flatnonzero(missing).tolist()
        else:
            local = np.empty(n, np.int64)
        seen = self._seen
        for i in todo:
            labels = batch.series[i]
            pairs = tuple(labels.items())
            sid = seen.get(pairs)
            if sid is None:
                if not labels.get(METRIC_NAME):
                    raise InvalidBatchError(f"series {labels} has no metric name")
                key = _key(labels)
                sid = self._ids.get(key)
                if sid is None:
                    sid = stage.staged.get(key)
                if sid is None:
                    sid = plan.staged.get(key)
                if sid is None:
                    sid = plan.staged[key] = plan.first_id + len(plan.new_series)
                    plan.new_series.append((sid, dict(labels), key))
                elif sid < len(self._labels):
                    seen[pairs] = sid
            if numbered is not None:
                if sid < len(self._labels):
                    self._id_of_number[numbered.ids[i]] = sid
                else:  # known once committed
                    plan.numbered.append((numbered.numbering, int(numbered.ids[i]), sid))
            local[i] = sid
        return local

    def _check_resend(
        self,
        ids: npt.NDArray[np.int64],
        t: npt.NDArray[np.int64],
        v: npt.NDArray[np.float64],
    ) -> None:
        """Raise :class:`OutOfOrderError` unless every old sample is already stored as is."""
        probe = pa.table({"series_id": ids.astype(np.int32), "t": t, "v": v})
        cur = self._con.cursor()
        try:
            cur.register("probe", probe)
            found = cur.execute(
                "SELECT p.series_id, p.t, p.v, s.v AS stored FROM probe p LEFT JOIN "
                + _ALL_SAMPLES.format(where_blocks=_within(t.min(), t.max()), where="true")
                + " s ON s.series_id = p.series_id AND s.t = p.t ORDER BY p.series_id, p.t"
            ).fetchnumpy()
        finally:
            cur.close()
        stored = found["stored"]
        missing = np.ma.getmaskarray(stored)
        stored_v = np.ma.getdata(stored).astype(np.float64)
        bad = missing | ~_same(np.asarray(found["v"], np.float64), stored_v)
        if bad.any():
            k = int(np.argmax(bad))
            sid = int(found["series_id"][k])
            raise OutOfOrderError(
                f"out of order sample for {self._describe(sid)}: "
                f"timestamp {int(found['t'][k])} is not after the newest stored sample "
                f"({int(self._head[sid])})"
            )

    def _describe(self, sid: int, *new: list[tuple[int, dict[str, str], str]]) -> str:
        """A series in PromQL notation, by id: stored, or new in one of the ``new`` lists."""
        labels = self._labels[sid] if sid < len(self._labels) else None
        if labels is None:
            labels = next(lab for added in new for i, lab, _ in added if i == sid)
        name = labels.get(METRIC_NAME, "")
        rest = ",".join(f'{k}="{val}"' for k, val in sorted(labels.items()) if k != METRIC_NAME)
        return f"{name}{{{rest}}}"

    def _flush(self, stage: _Stage) -> None:
        """Write the stage in one transaction and answer its appends; leaves the stage empty.

        When the transaction fails, the heads are put back and each batch is retried in a
        transaction of its own, so that only a batch that cannot be written gets the error.
        """
        if not stage.pending:
            return
        pending, results = list(stage.pending), list(stage.results)
        if any(len(t) and int(t.min()) <= self._blocks_max_t for t in stage.t):
            self._late = True  # before the commit: no read may use cells that miss these
        try:
            self._write(stage)
        except BaseException as e:
            stage.undo(self)
            stage.clear()
            if not isinstance(e, Exception):
                raise
            if len(pending) == 1:
                pending[0].error = e
                return
            for p in pending:
                self._stage(stage, p)
                self._flush(stage)
            return
        for _sid, labels, key in stage.new_series:
            self._register(labels, key)
        for numbering, number, sid in stage.numbered:
            if numbering is self._numbering and number < len(self._id_of_number):
                self._id_of_number[number] = sid
        for ids, t, v in zip(stage.ids, stage.t, stage.v, strict=True):  # committed: in order
            last = np.append(ids[1:] != ids[:-1], True)  # rows are sorted by (id, t)
            self._latest.update(len(self._labels), ids[last], t[last], v[last])
        if stage.ids:
            self._head_rows.add(
                np.concatenate(stage.ids), np.concatenate(stage.t), np.concatenate(stage.v)
            )
        stage.clear()
        for p, result in zip(pending, results, strict=True):
            p.result = result

    def _write(self, stage: _Stage) -> None:
        """Insert the stage's new series and samples: one statement, or one transaction."""
        con = self._con
        new_series = stage.new_series
        if not new_series and not stage.ids:  # nothing new: exact resends only
            return
        if stage.ids:
            samples = pa.Table.from_arrays(
                [
                    pa.array(np.concatenate(stage.ids).astype(np.int32)),
                    pa.array(np.concatenate(stage.t)),
                    pa.array(np.concatenate(stage.v)),
                ],
                schema=_SAMPLES_SCHEMA,
            )
            if not new_series:  # one statement is atomic on its own
                _insert(con, "samples", samples)
                return
        series = pa.Table.from_pydict(
            {
                "id": [sid for sid, _, _ in new_series],
                "metric": [lab[METRIC_NAME] for _, lab, _ in new_series],
                "labels": [key for _, _, key in new_series],
            },
            schema=_SERIES_SCHEMA,
        )
        con.execute("BEGIN TRANSACTION")
        try:
            _insert(con, "series", series)
            if stage.ids:
                _insert(con, "samples", samples)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------- reads

    def select(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> list[Series]:
        sids, t, v, bounds = self._select_runs(matchers, mint_ms, maxt_ms, hints)
        return [  # views of one array each: disjoint slices, never shared
            Series(dict(self._labels[sid]), t[a:b], v[a:b], self._pairs[sid])
            for sid, a, b in zip(
                sids.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True
            )
        ]

    def select_set(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> SeriesSet:
        sids, t, v, bounds = self._select_runs(matchers, mint_ms, maxt_ms, hints)
        return SeriesSet([self._pairs[sid] for sid in sids.tolist()], t, v, bounds)

    def _select_runs(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None,
    ) -> Runs:
        """A select's series ids in label order, their samples as flat runs and the runs'
        bounds: series ``sids[i]`` has ``t[bounds[i]:bounds[i + 1]]``."""
        ids = sorted(self._match(matchers))
        if not ids:
            return _no_runs()
        one_instant = (
            hints is not None
            and hints.func is None
            and hints.step_ms == 0
            and hints.start_ms == hints.end_ms == maxt_ms
            and mint_ms == maxt_ms - hints.lookback_ms
        )
        if one_instant:  # the newest committed samples answer it when nothing is newer
            now = self._latest.select(ids, mint_ms, maxt_ms)
            if now is not None:
                sids, ts, vs = now
                order = np.asarray(self._in_label_order(sids), np.int64)
                return sids[order], ts[order], vs[order], np.arange(len(order) + 1)
        thin = hints is not None and hints.step_ms > 0 and hints.func is None
        w = self.cell_ms
        span = None
        if thin and hints is not None and w and hints.start_ms % w == hints.step_ms % w == 0:
            span = self._cell_span(mint_ms, maxt_ms)  # each cell inside one step bucket
        blocks_also, raw_mint, edge_cell = "", mint_ms, ""
        if span is not None:  # cells stand for their samples: each gives its newest one
            blocks_also = _outside([((span[0] - 1) * w + 1, span[1] * w)])
            edge = self._edge_cell(mint_ms) if (span[0] - 1) * w == mint_ms else None
            if edge is not None:  # the sample exactly at mint too: no block row to read
                edge_cell = f"(c = {edge} AND coalesce(top_dt, last_dt) = {w})"
                blocks_also, raw_mint = "", span[1] * w + 1

        key: _Key | None = None  # rows of equal series and key: the newest one only
        if thin and hints is not None:  # the newest sample of each step bucket
            start, step = hints.start_ms, hints.step_ms

            def key(t: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
                return np.maximum(-((start - t) // step), 0)  # ceil((t - start) / step)

        elif one_instant:  # the newest of each series
            key = np.zeros_like

        def run(cur: duckdb.DuckDBPyConnection, rows: str | None, head: HeadRows) -> HeadRows:
            sql = (
                None
                if rows is None and span is None
                else self._select_sql(
                    ids, rows, hints, span, edge_cell, thin=thin, one_instant=one_instant
                )
            )
            if sql is None:
                return _newest(head, key)
            cols = cur.execute(*sql).fetchnumpy()
            found: HeadRows = (
                np.asarray(cols["series_id"], np.int64),
                np.asarray(cols["t"], np.int64),
                np.asarray(cols["v"], np.float64),
            )
            if "marker" in cols:
                marked = np.asarray(cols["marker"], np.bool_)
                found = found[0], found[1], np.where(marked, STALE_NAN, found[2])
            if not len(head[0]):
                return found
            return _merge_rows(found, _newest(head, key), key)

        sids, ts, vs = self._read(ids, raw_mint, maxt_ms, run, blocks_also)
        if len(sids) == 0:
            return _no_runs()
        starts = np.flatnonzero(np.concatenate(([True], sids[1:] != sids[:-1])))
        sizes = np.diff(np.append(starts, len(sids)))
        order = np.asarray(self._in_label_order(sids[starts]), np.int64)
        bounds = np.concatenate(([0], np.cumsum(sizes[order])))
        if (order != np.arange(len(order))).any():  # the runs, moved into label order
            at = np.repeat(starts[order] - bounds[:-1], sizes[order]) + np.arange(len(sids))
            ts, vs = ts[at], vs[at]
        return sids[starts[order]], ts, vs, bounds

    def _select_sql(
        self,
        ids: list[int],
        rows: str | None,
        hints: SelectHints | None,
        span: tuple[int, int] | None,
        edge_cell: str,
        *,
        thin: bool,
        one_instant: bool,
    ) -> tuple[str, list[int]]:
        """A select's SQL over the runs' ``rows`` and cells ``span`` (with its parameters):
        rows sorted by ``(series_id, t)``, each series' newest (``one_instant``) or each step
        bucket's (``thin``), and a marker column where cells say a newest sample is a
        staleness marker (whose bits do not survive SQL's NaN constants)."""
        w = self.cell_ms
        rows = rows or _NO_ROWS
        if span is not None and hints is not None:
            tops = (
                f"SELECT series_id, (c::BIGINT - 1) * {w} + coalesce(top_dt, last_dt) AS t, "
                "CASE WHEN top_dt IS NULL THEN last_v ELSE 'NaN'::DOUBLE END AS v, "
                "top_dt IS NOT NULL AND NOT top_real AS marker FROM cells WHERE "
            )
            if hints.step_ms == w:  # a cell is a step bucket: its top is the newest
                first = self._cells_where(ids, (span[0], span[0]), edge_cell)
                rest = self._cells_where(ids, (span[0] + 1, span[1]))
                sql = (
                    "SELECT series_id, max(t) AS t, arg_max(v, t) AS v, "
                    "arg_max(marker, t) AS marker FROM (SELECT *, false AS marker FROM "
                    f"{rows} UNION ALL {tops}{first}) GROUP BY series_id, "
                    f"greatest(ceil((t - ?) / ?), 0) UNION ALL {tops}{rest} ORDER BY 1, 2"
                )
                return sql, [hints.start_ms, hints.step_ms]
            every = self._cells_where(ids, span, edge_cell) + _near_steps(span[0] - 1, hints, w)
            rows = f"(SELECT *, false AS marker FROM {rows} UNION ALL {tops}{every})"
        if one_instant:  # the newest sample of each series in the window
            sql = f"SELECT series_id, max(t) AS t, arg_max(v, t) AS v FROM {rows} GROUP BY 1"
            return sql + " ORDER BY 1", []
        if thin and hints is not None:
            # Keep the newest sample per step bucket: exactly what instant selectors
            # read (SelectHints). Bucket k > 0 holds the samples in
            # (start + (k-1)*step, start + k*step]; bucket 0 those at or before start.
            marker = ", arg_max(marker, t) AS marker" if span is not None else ""
            sql = (
                f"SELECT series_id, max(t) AS t, arg_max(v, t) AS v{marker} FROM {rows} "
                "GROUP BY series_id, greatest(ceil((t - ?) / ?), 0) ORDER BY 1, 2"
            )
            return sql, [hints.start_ms, hints.step_ms]
        return f"SELECT series_id, t, v FROM {rows} ORDER BY 1, 2", []

    def select_buckets(
        self,
        matchers: Sequence[Matcher],
        base_ms: int,
        width_ms: int,
        n: int,
        aggregates: Collection[str] = BUCKET_AGGREGATES,
    ) -> Buckets | None:
        """Per-bucket aggregates in SQL (:class:`~fleetscope.store.SupportsBuckets`): one
        ``GROUP BY (series, bucket)`` over the rows of the range instead of every sample, and
        over the cells (store/cells.py) of the compacted part wherever a cell lies inside one
        bucket: then only the ragged ends of buckets and the head are read sample by sample.

        The counter aggregate needs buckets made of whole cells (``base_ms`` and ``width_ms``
        multiples of :attr:`cell_ms`): else ``None``, the caller reads samples."""
        ids = sorted(self._match(matchers))
        if not ids or n <= 0 or width_ms <= 0:
            return Buckets([], *_empty_buckets(0, max(n, 0)))
        maxt = base_ms + (n - 1) * width_ms
        check_bucket_aggregates(aggregates)
        counter = COUNTER_AGGREGATE in aggregates
        w, base, width = self.cell_ms, int(base_ms), int(width_ms)
        aligned = bool(w) and base % w == 0 and width % w == 0
        # cells keep no minima and maxima (store/cells.py)
        wide = bool(w) and width >= w and not {"min", "max"} & set(aggregates)
        span = self._cell_span(base, maxt) if wide else None
        if counter and (span is None or not aligned):
            return None
        wanted = {"sum": "s", "min": "lo", "max": "hi", "last": "last"}
        aggregates_sql = {wanted[a] for a in aggregates if a in wanted} | (
            {"last"} if counter else set()
        )
        ok = "FILTER (WHERE NOT isnan(v))"
        bucket = f"(t - {base} + {width - 1}) // {width}"
        cells_part, blocks_also, raw_mint = "", "", base
        if span is not None:
            cells_part, blocks_also, raw_mint = self._bucket_cells(
                ids, base, width, n, span, counter=counter
            )
        computed = "".join(
            f"{expr if name in aggregates_sql else 'NULL::DOUBLE'} AS {name}, "
            for name, expr in {
                "s": f"sum(v) {ok}",
                "lo": f"min(v) {ok}",
                "hi": f"max(v) {ok}",
                "last": f"arg_max(v, t) {ok}",
            }.items()
        )
        at_edge = f"t = {base} + b * {width} AND NOT isnan(v)"
        # raw rows on either side of the cells are parts of their own (side), so that the
        # parts of a bucket never overlap in time (the counter fold below needs that)
        side = f"(t > {span[1] * w})::INTEGER" if span is not None else "0"

        # Only the columns _as_buckets reads leave DuckDB: turning a column of half a million
        # rows into NumPy costs about as much as computing it.
        kept: list[str] = [n for n in ("s", "lo", "hi", "last") if n in aggregates_sql]
        kept += ["edge"] + (["last_t", "first_t", "first", "inc"] if counter else [])

        def slim(sql: str) -> str:
            return (
                f"SELECT series_id, b::INTEGER AS b, n::INTEGER AS n, {', '.join(kept)}, "
                f"{_FLAGS} AS flags FROM ({sql})"
            )

        def run(
            cur: duckdb.DuckDBPyConnection, rows: str | None, head: HeadRows
        ) -> dict[str, Any] | None:
            head_part = ""
            if len(head[0]):
                in_head = _head_parts(head, base, width, kept, counter=counter)
                if rows is None and not cells_part:  # the head alone (no counter): no SQL
                    return _head_buckets(in_head, head)
                cur.register("head_parts", _arrow(in_head))
                head_part = " UNION ALL SELECT * FROM head_parts"
            rows = rows or _NO_ROWS
            raw = f"SELECT series_id, t, v, {bucket} AS b, {side} AS side FROM {rows}"
            counter_cols = ""
            if counter:
                raw = cells.with_steps("series_id, t, v, b, side", f"({raw})", "series_id, b, side")
                counter_cols = (
                    f", min(t) {ok} AS first_t, arg_min(v, t) {ok} AS first, "
                    f"{cells.INCREASE} AS inc"
                )
            parts = (
                f"SELECT series_id, b, side, count(v) {ok} AS n, {computed}"
                f"max(t) {ok} AS last_t, max(v) FILTER (WHERE {at_edge}) AS edge, "
                f"count(*) FILTER (WHERE isnan(v)) AS nans, 0 AS bad{counter_cols} "
                f"FROM ({raw}) GROUP BY series_id, b, side{cells_part}{head_part}"
            )
            if counter and width == w:  # one part per (series, bucket): nothing to fold
                cols: dict[str, Any] = cur.execute(slim(parts)).fetchnumpy()
            elif counter:  # each group's empty parts first, then the others oldest first
                cols = _fold_parts(
                    cur.execute(
                        f"SELECT * FROM ({parts}) ORDER BY series_id, b, n > 0, first_t"
                    ).fetchnumpy()
                )
            else:
                cols = cur.execute(
                    slim(
                        "SELECT series_id, b, sum(n) AS n, sum(s) AS s, min(lo) AS lo, "
                        "max(hi) AS hi, arg_max(last, last_t) AS last, max(edge) AS edge, "
                        f"sum(nans) AS nans, sum(bad) AS bad FROM ({parts}) "
                        "GROUP BY series_id, b"
                    )
                ).fetchnumpy()
            flags = np.asarray(cols["flags"])
            if (flags & _REAL_NAN).any():
                return None  # a real NaN in a cell
            if (flags & _NANS).any():
                nans = cur.execute(f"SELECT v FROM {rows} WHERE isnan(v)").fetchnumpy()["v"]
                nans = np.concatenate([np.asarray(nans, np.float64), head[2][np.isnan(head[2])]])
                if (nans.view(np.int64) != STALE_NAN_BITS).any():
                    return None  # a real NaN: the caller applies Prometheus' rules to samples
            return cols

        found = self._read(ids, raw_mint, maxt, run, blocks_also)
        if found is None:
            return None
        if counter and self._late:
            return None  # a straggler arrived during the read: its parts may overlap cells
        return self._as_buckets(found, n, counter=counter)

    def series(
        self, matchers: Sequence[Matcher], mint_ms: int | None = None, maxt_ms: int | None = None
    ) -> list[dict[str, str]]:
        ids = self._match(matchers)
        if ids and (mint_ms is not None or maxt_ms is not None):
            lo = mint_ms if mint_ms is not None else np.iinfo(np.int64).min
            hi = maxt_ms if maxt_ms is not None else np.iinfo(np.int64).max
            cur = self._con.cursor()
            try:
                cur.register("wanted", pa.table({"id": pa.array(ids, pa.int32())}))
                rows = cur.execute(
                    "SELECT DISTINCT w.id FROM wanted w JOIN "
                    + _ALL_SAMPLES.format(where_blocks=_within(lo, hi), where="true")
                    + " s ON s.series_id = w.id WHERE s.t BETWEEN ? AND ?",
                    [int(lo), int(hi)],
                ).fetchall()
            finally:
                cur.close()
            ids = [r[0] for r in rows]
        return [dict(self._labels[ids[k]]) for k in self._in_label_order(ids)]

    def label_names(self, matchers: Sequence[Matcher] = ()) -> list[str]:
        return sorted({n for i in self._match(matchers) for n in self._labels[i]})

    def label_values(self, name: str, matchers: Sequence[Matcher] = ()) -> list[str]:
        return sorted(
            {self._labels[i][name] for i in self._match(matchers) if name in self._labels[i]}
        )

    def delete_before(self, t_ms: int) -> int:
        with self._lock:
            self._latest.forget_before(t_ms)
            deleted = 0
            self._moves += 1  # reads overlapping this read again (_read)
            try:
                for sql in (
                    f"DELETE FROM run_rows WHERE k <= {_span(t_ms)} AND u - o < $t",
                    "DELETE FROM samples WHERE t < $t",
                ):
                    row = self._con.execute(sql, {"t": t_ms}).fetchone()
                    deleted += int(row[0]) if row else 0
                self._head_rows.drop(before=t_ms)
                if not self._head_rows.complete:
                    self._load_head(self._head_rows.limit // 2)
                if self.cell_ms:  # every cell that may have lost a sample
                    c = cells.cell_number()
                    self._con.execute(
                        f"DELETE FROM cell_rows WHERE ({c} - 1) * {self.cell_ms} + 1 < ?", [t_ms]
                    )
                    self._cells_lo = max(self._cells_lo, t_ms)
            finally:
                self._moves += 1
        return deleted

    def compact(self, max_blocks: int | None = None) -> int:
        """Move closed blocks from the head table into sorted runs; the samples moved.

        A block ``(k·block_ms, (k+1)·block_ms]`` (default :data:`BLOCK_MS`; closed on the right,
        like the cells and the evaluator's buckets) is closed once the newest stored sample is
        ``head_keep_ms`` (:data:`HEAD_KEEP_MS`) past its end. Each block is one transaction
        under the write lock (appends wait for it, about a second per million samples here),
        oldest first, so a large backlog (a backfill) is moved a block at a time while appends
        go on in between; the block's cells are written in the same transaction. Samples older
        than the block (a new series sent with old timestamps) join its run. Then the cells of
        a store that has none yet (:meth:`build_cells`) and :meth:`merge_runs` (unless
        ``max_blocks`` bounds the work of this call). Safe to call at any time and from any
        thread.
        """
        moved = 0
        done = 0
        with self._lock:
            row = self._con.execute("SELECT min(t) FROM samples").fetchone()
            if row is not None and row[0] is not None:
                self._merge_again_from(int(row[0]))
        if row is not None and row[0] is not None:
            end = -(-int(row[0]) // self.block_ms) * self.block_ms
            while max_blocks is None or done < max_blocks:
                with self._lock:
                    newest = int(self._head.max()) if len(self._head) else _NO_HEAD
                    if end + self.head_keep_ms > newest:
                        break
                    moved += self._move_block(end)  # everything older: stragglers join it
                end += self.block_ms
                done += 1
        if max_blocks is None:
            self.build_cells()
            self.merge_runs()
        return moved

    def build_cells(self) -> bool:
        """Write the cells of every stored block when the store has none for :attr:`cell_ms`
        (its data predates cells, or the width changed): one day of samples per transaction,
        holding the write lock throughout (appends wait; about a minute per hundred million
        samples here). Whether it built them."""
        if not self.cell_ms or self._cells_ready:
            return False
        w, day = self.cell_ms, 86_400_000 // self.cell_ms * self.cell_ms
        with self._lock:
            con = self._con
            con.execute("DELETE FROM cell_rows")
            row = con.execute("SELECT min(t), max(t) FROM blocks").fetchone()
            if row is not None and row[0] is not None:
                lo = (int(row[0]) - 1) // w * w  # slices ((k-1)·day, k·day] of whole cells
                while lo < int(row[1]):
                    hi = lo + day
                    con.execute("BEGIN TRANSACTION")
                    try:
                        source = (
                            "(SELECT metric_key, series_id, t, v FROM blocks "
                            f"WHERE {_within(lo + 1, hi)} AND t > {lo} AND t <= {hi})"
                        )
                        cells.build(con, w, source, self._counter_keys())
                        con.execute("COMMIT")
                    except BaseException:
                        con.execute("ROLLBACK")
                        raise
                    lo = hi
            self._record_cells(con)
            self._cells_ready = True
        return True

    def _record_cells(self, con: duckdb.DuckDBPyConnection) -> None:
        """Note in the file that ``cells`` is complete for this width and layout."""
        _write_meta(con, {"cell_ms": self.cell_ms, "cells_version": cells.VERSION})

    def merge_runs(self) -> int:
        """Merge the runs of every closed span of :attr:`merge_spans_ms` (days, then weeks)
        into one sorted run per span; the spans merged.

        A span is closed when the head holds nothing older than its end (compaction moved all
        of it). Each span is looked at once: a watermark per span length, kept in the file,
        says up to where every closed span is one run, and later calls scan only newer rows.
        A straggler (a new series sent with old timestamps) moves the watermark back to its
        span when compaction meets it in the head, so the next call merges that span again.
        Merges run on their own cursor, outside the write lock: appends go on meanwhile (they
        write only the head); rows a concurrent compaction adds to a span being merged stay in
        their own run and are merged by a later call.
        """
        merged = 0
        for span in self.merge_spans_ms:
            with self._lock:
                epoch = self._merge_epoch
            cur = self._con.cursor()
            try:
                row = cur.execute("SELECT min(t) FROM samples").fetchone()
                head_min = int(row[0]) if row and row[0] is not None else None
                newest = int(self._head.max()) if len(self._head) else _NO_HEAD
                frontier = newest - self.head_keep_ms if head_min is None else head_min
                frontier = frontier // span * span  # the end of the last closed span
                since = self._merged_until.get(span, np.iinfo(np.int64).min)
                spans = cur.execute(
                    f"SELECT t // {int(span)} AS part FROM blocks WHERE "
                    f"{_within(since, frontier - 1)} AND t >= {int(since)} "
                    f"AND t < {int(frontier)} GROUP BY part HAVING count(DISTINCT run) > 1 "
                    "ORDER BY part"
                ).fetchall()
                for (k,) in spans:
                    self._merge(cur, int(k) * span, (int(k) + 1) * span)
                    merged += 1
            finally:
                cur.close()
            with self._lock:
                if self._merge_epoch == epoch and frontier > since:  # no straggler meanwhile
                    self._merged_until[span] = frontier
                    self._save_merged({span: frontier})
        return merged

    def _merge_again_from(self, t_ms: int) -> None:
        """The head holds a sample at ``t_ms``, about to join the runs: every merged span from
        there on is to be looked at again (holding the lock)."""
        back = {
            span: t_ms // span * span for span, until in self._merged_until.items() if t_ms < until
        }
        if back:
            self._merge_epoch += 1
            self._merged_until.update(back)
            self._save_merged(back)

    def _save_merged(self, watermarks: Mapping[int, int]) -> None:
        """Keep merge watermarks in ``store_meta`` (holding the lock)."""
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            _write_meta(con, {_merged_key(span): until for span, until in watermarks.items()})
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _merge(self, cur: duckdb.DuckDBPyConnection, start_ms: int, end_ms: int) -> None:
        """Rewrite the block rows in ``[start_ms, end_ms)`` as one new sorted run, and sort
        the span's cells by series (:func:`cells.reorder`)."""
        with self._lock:
            run = self._next_run
            self._next_run += 1
        cur.execute("BEGIN TRANSACTION")
        try:
            runs = _within(start_ms, end_ms - 1)
            _insert_run(
                cur,
                run,
                f"(SELECT metric_key, series_id, t, v FROM blocks WHERE {runs} "
                f"AND t >= {int(start_ms)} AND t < {int(end_ms)})",
            )
            cur.execute(
                f"DELETE FROM run_rows WHERE {runs} AND u - o >= {int(start_ms)} "
                f"AND u - o < {int(end_ms)} AND run <> {run}"
            )
            if self.cell_ms:  # and its cells, series by series too
                w = self.cell_ms
                cells.reorder(cur, start_ms // w + 1, end_ms // w)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def runs(self) -> list[tuple[int, int, int, int]]:
        """The sorted runs in ``blocks``: ``(run, samples, min t, max t)``, oldest first."""
        cur = self._con.cursor()
        try:
            rows = cur.execute(
                "SELECT run, count(*), min(t), max(t) FROM blocks GROUP BY run ORDER BY 3, 1"
            ).fetchall()
        finally:
            cur.close()
        return [(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def _move_block(self, end_ms: int) -> int:
        """Move every head sample up to ``end_ms`` into one sorted run, and write its cells
        (holding the lock)."""
        keys = self._keys[: len(self._labels)].astype(np.int32)
        metric_keys = pa.table(
            {"id": pa.array(np.arange(len(keys), dtype=np.int32)), "key": pa.array(keys)}
        )
        run = self._next_run
        self._moves += 1  # reads overlapping the move read again (_read)
        try:
            row = self._move_rows(run, end_ms, metric_keys)
            self._head_rows.drop(until=end_ms)
            if not self._head_rows.complete:
                self._load_head(self._head_rows.limit // 2)
        finally:
            self._moves += 1
        return int(row[0]) if row else 0

    def _move_rows(self, run: int, end_ms: int, metric_keys: pa.Table) -> tuple[Any, ...] | None:
        """The move of :meth:`_move_block` in DuckDB: one transaction; the rows deleted."""
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            con.register("metric_keys", metric_keys)
            _insert_run(
                con,
                run,
                "(SELECT k.key AS metric_key, s.series_id, s.t, s.v FROM samples s "
                f"JOIN metric_keys k ON s.series_id = k.id WHERE s.t <= {int(end_ms)})",
            )
            self._next_run += 1
            if self._cells_ready:
                self._build_block_cells(run, end_ms)
            row = con.execute("DELETE FROM samples WHERE t <= ?", [end_ms]).fetchone()
            self._blocks_max_t = max(self._blocks_max_t, end_ms)
            self._late = False  # every head sample up to the bound was just moved
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("metric_keys")
        return row

    def _build_block_cells(self, run: int, end_ms: int) -> None:
        """The cells of block ``run`` ending at ``end_ms`` (in the caller's transaction). The
        block's own span is whole new cells; an older sample in it (a straggler, or a sample
        an older version left in the head at a block's edge) falls into a cell that may exist
        already: those cells are built again from every run."""
        con, w, keys = self._con, self.cell_ms, self._counter_keys()
        # cells up to the blocks' previous end may exist (a whole number of cells: W divides it)
        start = max(end_ms - self.block_ms, self._blocks_max_t // w * w)
        row = con.execute(f"SELECT min(t) FROM blocks WHERE run = {run}").fetchone()
        if row is not None and row[0] is not None and int(row[0]) <= start:
            con.execute(
                "CREATE OR REPLACE TEMP TABLE straggler_cells AS SELECT DISTINCT series_id, "
                f"(t + {w - 1}) // {w} AS c FROM blocks WHERE run = {run} AND t <= {start}"
            )
            con.execute(
                "DELETE FROM cell_rows USING straggler_cells s WHERE cell_rows.series_id = "
                f"s.series_id AND {cells.cell_number('cell_rows')} = s.c"
            )
            cells.build(
                con,
                w,
                "(SELECT b.metric_key, b.series_id, b.t, b.v FROM blocks b JOIN straggler_cells "
                f"s ON b.series_id = s.series_id AND (b.t + {w - 1}) // {w} = s.c)",
                keys,
            )
            con.execute("DROP TABLE straggler_cells")
        source = (
            f"(SELECT metric_key, series_id, t, v FROM blocks WHERE run = {run} AND t > {start})"
        )
        cells.build(con, w, source, keys)

    def stats(self) -> StoreStats:
        cur = self._con.cursor()
        try:
            row = cur.execute(
                "SELECT count(*), min(t), max(t) FROM "
                + _ALL_SAMPLES.format(where_blocks="true", where="true")
            ).fetchone()
            blocks = cur.execute(
                "SELECT block_size, used_blocks FROM pragma_database_size() "
                "WHERE database_name = current_database()"
            ).fetchone()
        finally:
            cur.close()
        assert row is not None
        size = 0
        wal = 0
        if self.path != ":memory:":
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            wal = os.path.getsize(self.path + ".wal") if os.path.exists(self.path + ".wal") else 0
        used = int(blocks[0]) * int(blocks[1]) + wal if blocks and self.path != ":memory:" else None
        return StoreStats(len(self._labels), int(row[0]), row[1], row[2], size + wal, used)

    # ----------------------------------------------------------------- records

    def upsert_jobs(self, jobs: Sequence[Job]) -> int:
        if not jobs:
            return 0
        latest = {(j.cluster, j.id): j for j in jobs}
        table = pa.Table.from_pylist([_job_row(j) for j in latest.values()], schema=_JOB_SCHEMA)
        with self._lock:
            con = self._con
            con.execute("BEGIN TRANSACTION")
            try:
                con.register("incoming", table)
                con.execute(
                    "DELETE FROM jobs WHERE (cluster, id) IN (SELECT (cluster, id) FROM incoming)"
                )
                con.execute("INSERT INTO jobs SELECT * FROM incoming")
                con.unregister("incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return len(latest)

    def jobs(
        self,
        *,
        states: Sequence[str] = (),
        team: str | None = None,
        active_between: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append("state IN (SELECT unnest(?))")
            params.append([str(s) for s in states])
        if team is not None:
            where.append("team = ?")
            params.append(team)
        if active_between is not None:
            where.append("submit_ms <= ? AND (end_ms IS NULL OR end_ms >= ?)")
            params.extend([active_between[1], active_between[0]])
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submit_ms DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._fetch_jobs(sql, params)

    def job(self, job_id: str, cluster: str = "default") -> Job | None:
        found = self._fetch_jobs(
            "SELECT * FROM jobs WHERE cluster = ? AND id = ?", [cluster, job_id]
        )
        return found[0] if found else None

    def _fetch_jobs(self, sql: str, params: list[Any]) -> list[Job]:
        cur = self._con.cursor()
        try:
            result = cur.execute(sql, params)
            names = [d[0] for d in result.description]
            rows = result.fetchall()
        finally:
            cur.close()
        return [_job_from_row(dict(zip(names, r, strict=True))) for r in rows]

    def add_events(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        table = pa.Table.from_pylist(
            [
                {
                    "time_ms": _ms(e.time),
                    "kind": e.kind,
                    "subject": e.subject,
                    "attrs": json.dumps(e.attrs, sort_keys=True, default=str),
                }
                for e in events
            ],
            schema=_EVENT_SCHEMA,
        )
        with self._lock:
            self._con.register("incoming_events", table)
            self._con.execute("INSERT INTO events SELECT * FROM incoming_events")
            self._con.unregister("incoming_events")
        return len(events)

    def events(
        self, *, kinds: Sequence[str] = (), since_ms: int | None = None, limit: int | None = None
    ) -> list[Event]:
        where: list[str] = []
        params: list[Any] = []
        if kinds:
            where.append("kind IN (SELECT unnest(?))")
            params.append(list(kinds))
        if since_ms is not None:
            where.append("time_ms >= ?")
            params.append(since_ms)
        sql = "SELECT time_ms, kind, subject, attrs FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time_ms DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cur = self._con.cursor()
        try:
            rows = cur.execute(sql, params).fetchall()
        finally:
            cur.close()
        return [
            Event(time=_utc(r[0]), kind=r[1], subject=r[2], attrs=json.loads(r[3] or "{}"))
            for r in rows
        ]

    # ----------------------------------------------------------------- lifecycle

    def checkpoint(self) -> None:
        """Fold the WAL into the database file (compresses freshly appended row groups)."""
        with self._lock:
            self._con.execute("CHECKPOINT")

    def close(self) -> None:
        with self._lock:
            self._con.close()


def _newest(rows: HeadRows, key: _Key | None) -> HeadRows:
    """Rows sorted by ``(series, t)``, reduced to the newest of each series and ``key(t)`` (a
    step bucket, or one key for all: each series' newest); all of them for no ``key``."""
    sid, t, v = rows
    if key is None or len(sid) < 2:
        return rows
    k = key(t)
    last = np.ones(len(sid), np.bool_)
    last[:-1] = (sid[1:] != sid[:-1]) | (k[1:] != k[:-1])
    return sid[last], t[last], v[last]


def _merge_rows(a: HeadRows, b: HeadRows, key: _Key | None) -> HeadRows:
    """The rows of ``a`` (the runs') and ``b`` (the head's), each sorted by ``(series, t)`` and
    reduced by :func:`_newest`: sorted, and reduced again. The head's rows of a series follow
    its runs' ones, so they are put in after them, and only a series' last row of ``a`` and
    first of ``b`` can share a key: no sort of ``a``."""
    a_sid, a_t, a_v = a
    b_sid, b_t, b_v = b
    if not len(a_sid):
        return b
    at = np.searchsorted(a_sid, b_sid, side="right")  # after the series' rows in a
    before = np.maximum(at - 1, 0)
    same = (at > 0) & (a_sid[before] == b_sid)
    # Appends are in order per series and moves take a series' oldest rows, so its head rows
    # are newer than its runs' ones; should that ever not hold, sort them together.
    if (same & (a_t[before] >= b_t)).any():
        sid, t = np.concatenate([a_sid, b_sid]), np.concatenate([a_t, b_t])
        order = sort_order(sid, t)
        return _newest((sid[order], t[order], np.concatenate([a_v, b_v])[order]), key)
    if key is not None:  # a's last row of a series loses to b's first one with its key
        first = np.ones(len(b_sid), np.bool_)
        first[1:] = b_sid[1:] != b_sid[:-1]
        clash = first & same
        clash[clash] = key(a_t[before[clash]]) == key(b_t[clash])
        if clash.any():
            gone = before[clash]  # sorted: b is
            keep = np.ones(len(a_sid), np.bool_)
            keep[gone] = False
            a_sid, a_t, a_v = a_sid[keep], a_t[keep], a_v[keep]
            at = at - np.searchsorted(gone, at, side="left")
    return put_before((a_sid, a_t, a_v), b, at)


def _no_runs() -> Runs:
    empty = np.empty(0, np.int64)
    return empty, empty, np.empty(0, np.float64), np.zeros(1, np.int64)


class _Latest:
    """The newest *committed* sample of every series (Prometheus' head keeps it too), so an
    instant selector at or after it needs no SQL. Updated after each commit, read by any
    thread: one lock keeps a time and its value together."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._t = np.full(n, _NO_HEAD, np.int64)
        self._v = np.full(n, np.nan)

    def update(
        self, n: int, ids: npt.NDArray[np.int64], t: npt.NDArray[np.int64], v: npt.NDArray[Any]
    ) -> None:
        """Series ``ids`` (distinct) now end at ``(t, v)``; ``n`` series exist."""
        with self._lock:
            if n > len(self._t):
                grow = max(n - len(self._t), len(self._t))
                self._t = np.concatenate([self._t, np.full(grow, _NO_HEAD, np.int64)])
                self._v = np.concatenate([self._v, np.full(grow, np.nan)])
            self._t[ids] = t
            self._v[ids] = np.asarray(v, np.float64)

    def forget_before(self, t_ms: int) -> None:
        """Retention deleted every sample older than ``t_ms``."""
        with self._lock:
            gone = self._t < t_ms
            self._t[gone] = _NO_HEAD
            self._v[gone] = np.nan

    def select(
        self, ids: list[int], mint: int, maxt: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]] | None:
        """``(ids, t, v)`` of the series whose newest sample is in ``[mint, maxt]``; ``None``
        when one of them has a sample after ``maxt`` (its newest one up to ``maxt`` is not
        kept here: the caller reads the stored rows)."""
        wanted = np.asarray(ids, np.int64)
        with self._lock:
            inside = wanted < len(self._t)
            t = np.full(len(wanted), _NO_HEAD, np.int64)
            v = np.full(len(wanted), np.nan)
            t[inside] = self._t[wanted[inside]]
            v[inside] = self._v[wanted[inside]]
        if (t > maxt).any():
            return None
        keep = t >= mint
        return wanted[keep], t[keep], v[keep]


class _NeedsFlush(Exception):
    """A batch must be checked against stored rows that are still in the stage."""


@dataclass(eq=False)
class _Pending:
    """One append waiting for a group commit: its batch, then its result or its error."""

    batch: SampleBatch
    result: AppendResult | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Plan:
    """What one checked batch adds: new series (and their label-set numbers), sorted rows."""

    first_id: int  # id of the plan's first new series
    new_series: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    staged: dict[str, int] = field(default_factory=dict)  # canonical key → id, new series
    numbered: list[tuple[object, int, int]] = field(default_factory=list)  # numbering, n, id
    ids: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    t: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    v: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0, np.float64))
    duplicates: int = 0


@dataclass(eq=False)
class _Stage:
    """The accepted batches of one transaction, not written yet.

    Adding a plan moves the store's heads forward at once (so the next batch in the group is
    checked against them); ``saved`` holds the heads it replaced, for :meth:`undo`.
    """

    pending: list[_Pending] = field(default_factory=list)
    results: list[AppendResult] = field(default_factory=list)
    new_series: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    staged: dict[str, int] = field(default_factory=dict)
    numbered: list[tuple[object, int, int]] = field(default_factory=list)
    ids: list[npt.NDArray[np.int64]] = field(default_factory=list)
    t: list[npt.NDArray[np.int64]] = field(default_factory=list)
    v: list[npt.NDArray[np.float64]] = field(default_factory=list)
    saved: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = field(default_factory=list)

    def add(self, store: DuckDBStore, plan: _Plan, pending: _Pending) -> None:
        self.pending.append(pending)
        self.results.append(AppendResult(len(plan.t), plan.duplicates, len(plan.new_series)))
        self.new_series += plan.new_series
        self.staged.update(plan.staged)
        self.numbered += plan.numbered
        if plan.new_series:
            grow = np.full(len(plan.new_series), _NO_HEAD, np.int64)
            store._head = np.concatenate([store._head, grow])
        if len(plan.t):
            ids, t = plan.ids, plan.t
            last = np.append(ids[1:] != ids[:-1], True)  # rows are sorted by (id, t)
            top = ids[last]
            self.saved.append((top, store._head[top]))
            store._head[top] = t[last]
            self.ids.append(ids)
            self.t.append(t)
            self.v.append(plan.v)

    def touches(self, ids: npt.NDArray[np.int64]) -> bool:
        """Whether the stage holds samples of any of these series."""
        return any(np.isin(ids, top).any() for top, _ in self.saved)

    def undo(self, store: DuckDBStore) -> None:
        """Put the heads back as they were before this stage."""
        for top, before in reversed(self.saved):
            store._head[top] = before
        store._head = store._head[: len(store._labels)].copy()

    def clear(self) -> None:
        self.pending, self.results, self.new_series, self.numbered = [], [], [], []
        self.staged, self.ids, self.t, self.v, self.saved = {}, [], [], [], []


class _Appender:
    """Buffers rows and batches; :meth:`commit` appends them as one batch."""

    def __init__(self, store: DuckDBStore) -> None:
        self._store = store
        self._parts: list[SampleBatch] = []
        self._rows: list[tuple[Mapping[str, str], int, float]] = []
        self._done = False

    def _check_open(self) -> None:
        if self._done:
            raise InvalidBatchError("appender already committed or rolled back")

    def append(self, labels: Mapping[str, str], t_ms: int, value: float) -> None:
        self._check_open()
        self._rows.append((labels, t_ms, value))

    def append_batch(self, batch: SampleBatch) -> None:
        self._check_open()
        self._parts.append(batch)

    def commit(self) -> AppendResult:
        self._check_open()
        self._done = True
        parts = list(self._parts)
        if self._rows:
            parts.append(SampleBatch.from_rows(self._rows))
        return self._store.append(SampleBatch.concat(parts))

    def rollback(self) -> None:
        self._done = True
        self._parts.clear()
        self._rows.clear()


def _job_row(j: Job) -> dict[str, Any]:
    return {
        "cluster": j.cluster, "id": j.id, "name": j.name, "team": j.team, "user": j.user,
        "workload": j.workload, "tier": j.tier, "state": j.state.value,
        "submit_ms": _ms(j.submit), "start_ms": _ms(j.start), "end_ms": _ms(j.end),
        "gpus": j.gpus, "nodes": j.nodes, "gpu_uuids": j.gpu_uuids, "exit_code": j.exit_code,
        "pending_reason": j.pending_reason, "restarts": j.restarts, "image": j.image,
        "source": j.source,
    }  # fmt: skip


def _job_from_row(r: dict[str, Any]) -> Job:
    return Job(
        id=r["id"], cluster=r["cluster"], name=r["name"] or "", team=r["team"], user=r["user"],
        workload=r["workload"], tier=r["tier"], state=JobState(r["state"]),
        submit=_utc(r["submit_ms"]), start=_dt(r["start_ms"]), end=_dt(r["end_ms"]),
        gpus=r["gpus"], nodes=list(r["nodes"] or []), gpu_uuids=list(r["gpu_uuids"] or []),
        exit_code=r["exit_code"], pending_reason=r["pending_reason"], restarts=r["restarts"],
        image=r["image"], source=r["source"],
    )  # fmt: skip
