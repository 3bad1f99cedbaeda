"""Cells (store/cells.py) change no answer: bucket reads and thin selects over cells equal
the same reads over samples, through stragglers, retention, restarts and an upgrade."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetscope.query.value import make_labels
from fleetscope.store import (
    BUCKET_AGGREGATES,
    COUNTER_AGGREGATE,
    STALE_NAN,
    Buckets,
    Matcher,
    SampleBatch,
    SelectHints,
    Series,
)
from fleetscope.store.duckdb import DuckDBStore
from query.reference_buckets import reference_buckets
from store.legacy import blocks_before_run_rows, cells_before_cell_rows

S = 1000
MIN = 60 * S
W = 5 * MIN
EVERYTHING = [Matcher("__name__", "=~", ".+")]


def _history(rng: np.random.Generator, hours: int = 6) -> list[tuple[dict[str, str], int, float]]:
    """Gauges and counters at 15 s: on the grid (samples on cell edges) and jittered, with
    resets, gaps, staleness markers and infinities."""
    rows: list[tuple[dict[str, str], int, float]] = []
    for g in range(6):
        counter = g >= 3
        name = "fleet_gpu_energy_joules_total" if counter else "fleet_gpu_power_watts"
        labels = {"__name__": name, "gpu": str(g)}
        value = 0.0
        for t in range(0, hours * 60 * MIN + 1, 15 * S):
            jitter = 0 if g % 3 == 0 else int(rng.integers(-5000, 5000))
            if g % 3 == 1 and 50 * MIN <= t < 80 * MIN:
                if t == 50 * MIN:
                    rows.append((labels, t + jitter, STALE_NAN))
                continue  # a gap after a marker
            if counter:
                value = 0.0 if rng.random() < 0.01 else value + float(rng.integers(0, 500))
            else:
                value = float(np.round(rng.normal(200, 80), 2))
                if g == 2 and t == 100 * MIN:
                    value = float("inf")
            rows.append((labels, t + jitter, value))
    # on the grid, silent in (175 min, 185 min): at 180 min a 5-minute lookback reads the
    # sample at exactly 175 min, the newest of the cell before the one ending at 180 min
    quiet = {"__name__": "fleet_gpu_power_watts", "gpu": "6"}
    end = hours * 60 * MIN
    rows += [
        (quiet, t, float(t % 7)) for t in range(0, end + 1, 15 * S) if not 175 * MIN < t < 185 * MIN
    ]
    rows.sort(key=lambda r: r[1])
    return rows


class Cells(DuckDBStore):
    """Counts the reads (selects and bucket reads) that used cells."""

    cell_reads = 0
    _used = False

    def _cells_where(self, ids: Sequence[int], span: tuple[int, int], also: str = "") -> str:
        self._used = True
        return super()._cells_where(ids, span, also)

    def _select_runs(self, *args: Any, **kwargs: Any) -> Any:  # select and select_set read here
        return self._counted(super()._select_runs, *args, **kwargs)

    def select_buckets(self, *args: Any, **kwargs: Any) -> Any:
        return self._counted(super().select_buckets, *args, **kwargs)

    def _counted(self, read: Any, *args: Any, **kwargs: Any) -> Any:
        self._used = False
        try:
            return read(*args, **kwargs)
        finally:
            self.cell_reads += self._used


def _pair(tmp_path: Path, name: str) -> tuple[Cells, DuckDBStore]:
    """The same store twice: with cells, and without (every read from samples)."""
    return (
        Cells(tmp_path / f"{name}-cells.duckdb", block_ms=30 * MIN, head_keep_ms=0),
        DuckDBStore(
            tmp_path / f"{name}-plain.duckdb", block_ms=30 * MIN, head_keep_ms=0, cell_ms=0
        ),
    )


def _check(got: Buckets, want: Buckets, ref: Buckets, *, counter: bool) -> None:
    assert got.labels == want.labels
    np.testing.assert_array_equal(got.count, want.count)
    np.testing.assert_array_equal(got.has_edge, want.has_edge)
    for name in ("last", "edge"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_allclose(got.sum, want.sum, rtol=1e-12, equal_nan=True)
    if counter:
        for name in ("first_t", "last_t", "first"):
            np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
        np.testing.assert_allclose(got.increase, ref.increase, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(got.count, ref.count)


LAYOUTS = [  # base, width, n
    (0, W, 73),  # cell by cell
    (30 * MIN, 60 * MIN, 6),  # hours, aligned
    (7 * MIN + 13 * S, 20 * MIN, 15),  # ragged: cells inside buckets, samples at the ends
    (7 * S, 10 * MIN, 70),  # ragged, many buckets (found by arithmetic on c and t)
    (2 * MIN + 30 * S, 6 * 60 * MIN - 2 * MIN, 2),  # an instant query over almost all of it
]


def _compare(cells: DuckDBStore, plain: DuckDBStore, metric: str) -> int:
    """Every layout and the thin selects: cells and samples agree. The counter reads."""
    matchers = [Matcher("__name__", "=", metric)]
    used = 0
    for base, width, n in LAYOUTS:
        counter = base % W == 0 and width % W == 0 and metric.endswith("_total")
        aggs = ("sum", "last", COUNTER_AGGREGATE) if counter else ("sum", "last")
        got = cells.select_buckets(matchers, base, width, n, aggs)
        want = plain.select_buckets(matchers, base, width, n)
        assert got is not None and want is not None
        series = plain.select(matchers, base, base + (n - 1) * width)
        ref = reference_buckets(series, base, width, n, {COUNTER_AGGREGATE})
        _check(got, want, ref, counter=counter)
        used += counter
        # minima and maxima are not in cells: the samples give them
        extremes = cells.select_buckets(matchers, base, width, n, BUCKET_AGGREGATES)
        assert extremes is not None
        np.testing.assert_array_equal(extremes.min, want.min)
        np.testing.assert_array_equal(extremes.max, want.max)
    for start, step, lookback in THIN_SELECTS:
        end = 6 * 60 * MIN
        hints = SelectHints(start_ms=start, end_ms=end, step_ms=step, lookback_ms=lookback)
        a = cells.select(matchers, start - lookback, end, hints)
        b = plain.select(matchers, start - lookback, end, hints)
        assert [x.labels for x in a] == [x.labels for x in b]
        for x, y in zip(a, b, strict=True):
            assert x.pairs == make_labels(x.labels)  # the evaluator's form, ready made
            assert _read_at_steps(x, hints) == _read_at_steps(y, hints)
    return used


THIN_SELECTS = [  # start, step, lookback
    (0, W, W),  # a cell per step
    (60 * MIN, W, W),
    (60 * MIN, 60 * MIN, W),  # 2 cells in 12 can hold what a step reads
    (10 * MIN, 15 * MIN, W),
    (60 * MIN, 60 * MIN, 7 * MIN + 30 * S),  # a lookback that ends inside a cell
    (60 * MIN, 30 * MIN, 30 * MIN),  # a lookback as long as the step: every cell
]


def _read_at_steps(series: Series, hints: SelectHints) -> list[tuple[int, int] | None]:
    """What instant selectors read from a thin select (SelectHints): at each evaluation time
    ``t``, the newest sample in ``[t - lookback, t]`` (time, value bits), or nothing."""
    read: list[tuple[int, int] | None] = []
    for t in range(hints.start_ms, hints.end_ms + 1, hints.step_ms):
        i = int(np.searchsorted(series.t_ms, t, side="right")) - 1
        inside = i >= 0 and series.t_ms[i] >= t - hints.lookback_ms
        read.append(
            (int(series.t_ms[i]), int(series.values[i : i + 1].view(np.int64)[0]))
            if inside
            else None
        )
    return read


@pytest.mark.parametrize("metric", ["fleet_gpu_power_watts", "fleet_gpu_energy_joules_total"])
def test_cells_answer_as_samples_do(tmp_path: Path, metric: str) -> None:
    cells, plain = _pair(tmp_path, "a")
    batch = SampleBatch.from_rows(_history(np.random.default_rng(5)))
    for s in (cells, plain):
        s.append(batch)
        s.compact()
    n_cells = cells._con.execute("SELECT count(*) FROM cells").fetchone()
    assert n_cells is not None and 0 < n_cells[0] < len(batch) // 10  # ~20 samples a cell
    assert _compare(cells, plain, metric) == (2 if metric.endswith("_total") else 0)
    assert cells.cell_reads == len(LAYOUTS) + len(THIN_SELECTS)  # every bucket read, thin select


def test_the_counter_aggregate_needs_whole_cells(tmp_path: Path) -> None:
    cells, _ = _pair(tmp_path, "b")
    cells.append(SampleBatch.from_rows(_history(np.random.default_rng(1), hours=2)))
    cells.compact()
    energy = [Matcher("__name__", "=", "fleet_gpu_energy_joules_total")]
    assert cells.select_buckets(energy, 0, W, 20, ("last", COUNTER_AGGREGATE)) is not None
    assert cells.select_buckets(energy, 7 * S, W, 20, ("last", COUNTER_AGGREGATE)) is None
    assert cells.select_buckets(energy, 0, 7 * MIN, 10, ("last", COUNTER_AGGREGATE)) is None


def test_stragglers_retention_and_restart_keep_cells_true(tmp_path: Path) -> None:
    cells, plain = _pair(tmp_path, "c")
    rng = np.random.default_rng(9)
    batch = SampleBatch.from_rows(_history(rng))
    for s in (cells, plain):
        s.append(batch)
        s.compact()
    # a new series with old samples: the head holds them, cells step aside until compaction
    late = SampleBatch.from_rows(
        [({"__name__": "fleet_gpu_power_watts", "gpu": "9"}, t, 1.5) for t in (61 * S, 3 * MIN)]
        + [({"__name__": "fleet_gpu_power_watts", "gpu": "9"}, 7 * 60 * MIN, 2.0)]
    )
    for s in (cells, plain):
        s.append(late)
    assert cells._late
    _compare(cells, plain, "fleet_gpu_power_watts")
    for s in (cells, plain):
        s.compact()
    assert not cells._late
    _compare(cells, plain, "fleet_gpu_power_watts")
    # retention in the middle of a cell: that cell goes, the next ones stay
    for s in (cells, plain):
        s.delete_before(47 * MIN + 3 * S)
    _compare(cells, plain, "fleet_gpu_energy_joules_total")
    cells.close()
    reopened = DuckDBStore(tmp_path / "c-cells.duckdb", block_ms=30 * MIN, head_keep_ms=0)
    assert reopened._cells_ready
    _compare(reopened, plain, "fleet_gpu_power_watts")


def test_a_store_without_cells_gets_them_on_compaction(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old = DuckDBStore(path, block_ms=30 * MIN, head_keep_ms=0, cell_ms=0)  # as before cells
    batch = SampleBatch.from_rows(_history(np.random.default_rng(2)))
    old.append(batch)
    old.compact()
    old.close()
    upgraded = DuckDBStore(path, block_ms=30 * MIN, head_keep_ms=0)
    assert not upgraded._cells_ready
    assert upgraded.select_buckets(EVERYTHING, 0, W, 10, ("last", COUNTER_AGGREGATE)) is None
    upgraded.compact()
    assert upgraded._cells_ready
    _, plain = _pair(tmp_path, "d")
    plain.append(batch)
    plain.compact()
    assert _compare(upgraded, plain, "fleet_gpu_energy_joules_total") == 2


def test_cells_of_the_first_layout_are_built_again(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    old = DuckDBStore(path, block_ms=30 * MIN, head_keep_ms=0)
    batch = SampleBatch.from_rows(_history(np.random.default_rng(8)))
    old.append(batch)
    old.compact()
    old.close()
    cells_before_cell_rows(path)
    upgraded = Cells(path, block_ms=30 * MIN, head_keep_ms=0)
    assert not upgraded._cells_ready  # layout 1: dropped, built again by the next compaction
    upgraded.compact()
    kinds = upgraded._con.execute(
        "SELECT table_name, table_type FROM information_schema.tables "
        "WHERE table_name IN ('cells', 'cell_rows') ORDER BY 1"
    ).fetchall()
    assert kinds == [("cell_rows", "BASE TABLE"), ("cells", "VIEW")]
    _, plain = _pair(tmp_path, "g")
    plain.append(batch)
    plain.compact()
    assert _compare(upgraded, plain, "fleet_gpu_energy_joules_total") == 2
    assert upgraded.cell_reads > 0


def test_a_batchs_cell_numbers_count_up_through_its_series(tmp_path: Path) -> None:
    # Regular series: cu steps by one through each block's cells, series after series.
    rows = [
        ({"__name__": "fleet_gpu_power_watts", "gpu": str(g)}, t, float(g))
        for t in range(15 * S, 4 * 60 * MIN + 1, 15 * S)
        for g in range(5)
    ]
    store = DuckDBStore(tmp_path / "g.duckdb", head_keep_ms=0)
    store.append(SampleBatch.from_rows(rows))
    store.append(SampleBatch.from_rows([(rows[0][0], 5 * 60 * MIN, 0.0)]))  # closes 2 h–4 h
    store.compact()
    stored = store._con.execute(
        "SELECT r.c0, r.c1, r.cu, c.c FROM cell_rows r POSITIONAL JOIN cells c"
    ).fetchnumpy()
    c0, c1 = np.asarray(stored["c0"]), np.asarray(stored["c1"])
    assert sorted(set(zip(c0.tolist(), c1.tolist(), strict=True))) == [(1, 24), (25, 48)]
    for first in (1, 25):
        cu = np.asarray(stored["cu"])[c0 == first]
        assert len(cu) == 5 * 24 and (np.diff(cu) == 1).all()
    assert sorted(np.asarray(stored["c"]).tolist()) == sorted(list(range(1, 49)) * 5)
    store.close()


def test_merged_spans_get_their_cells_sorted_by_series(tmp_path: Path) -> None:
    batch = SampleBatch.from_rows(_history(np.random.default_rng(9)))
    merged = Cells(
        tmp_path / "m.duckdb", block_ms=30 * MIN, head_keep_ms=0, merge_spans_ms=(120 * MIN,)
    )
    merged.append(batch)
    merged.compact()
    stored = merged._con.execute(
        "SELECT r.c0, r.metric_key, r.series_id, c.c FROM cell_rows r POSITIONAL JOIN cells c"
    ).fetchnumpy()
    c0, key, sid, c = (
        np.asarray(stored[name], np.int64) for name in ("c0", "metric_key", "series_id", "c")
    )
    for first in (1, 25):  # the closed two-hour spans: merged; their blocks' cells were apart
        inside = c0 == first
        order = np.lexsort((c[inside], sid[inside], key[inside]))
        assert (order == np.arange(inside.sum())).all()
        assert len(np.unique(sid[inside])) == 7  # every series of _history
        assert set(c[inside].tolist()) == set(range(first, first + 24))
    _, plain = _pair(tmp_path, "h")
    plain.append(batch)
    plain.compact()
    assert _compare(merged, plain, "fleet_gpu_energy_joules_total") == 2
    assert _compare(merged, plain, "fleet_gpu_power_watts") == 0
    assert merged.cell_reads > 0


def test_a_real_nan_in_a_cell_sends_the_caller_to_samples(tmp_path: Path) -> None:
    cells, _ = _pair(tmp_path, "e")
    labels = {"__name__": "fleet_gpu_power_watts", "gpu": "0"}
    rows = [
        (labels, t, float("nan") if t == 20 * MIN else 1.0) for t in range(0, 3_600_001, 15 * S)
    ]
    cells.append(SampleBatch.from_rows(rows))
    cells.compact()
    bad = cells._con.execute("SELECT sum(bad) FROM cells").fetchone()
    assert bad is not None and bad[0] == 1
    gauge = [Matcher("__name__", "=", "fleet_gpu_power_watts")]
    assert cells.select_buckets(gauge, 0, 60 * MIN, 2) is None
    assert cells.select_buckets(gauge, 30 * MIN, W, 5) is not None  # after it


def test_samples_an_older_version_left_at_a_block_edge_join_their_cells(tmp_path: Path) -> None:
    # Before cells, blocks were [k·block, (k+1)·block): the sample exactly at a block's end
    # stayed in the head while the cell ending there went to the blocks.
    path = tmp_path / "legacy.duckdb"
    legacy = DuckDBStore(path, block_ms=30 * MIN, head_keep_ms=0, cell_ms=0)
    batch = SampleBatch.from_rows(_history(np.random.default_rng(4), hours=3))
    legacy.append(batch)
    legacy._con.execute(  # … and the blocks as they were stored then
        "CREATE TABLE old_blocks AS SELECT 0 AS run, 0 AS metric_key, series_id, t, v "
        "FROM samples WHERE t < ?",
        [120 * MIN],
    )
    legacy._con.execute("DELETE FROM samples WHERE t < ?", [120 * MIN])
    legacy.close()
    blocks_before_run_rows(path, "old_blocks")
    upgraded = Cells(path, block_ms=30 * MIN, head_keep_ms=0)
    assert upgraded._late  # the head holds the sample at exactly 2 h
    assert upgraded.build_cells()  # cells of the blocks first (the cell ending at 2 h lacks it)
    upgraded.compact()  # … then the head's blocks move, the sample at 2 h with them
    _, plain = _pair(tmp_path, "f")
    plain.append(batch)
    plain.compact()
    assert _compare(upgraded, plain, "fleet_gpu_energy_joules_total") == 2
    assert upgraded.cell_reads > 0
