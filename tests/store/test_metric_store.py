"""The MetricStore contract, run against the DuckDB adapter and the in-memory fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from fleetscope import remotewrite
from fleetscope.store import (
    AppendResult,
    FakeMetricStore,
    InvalidBatchError,
    Matcher,
    MetricStore,
    OutOfOrderError,
    SampleBatch,
    SelectHints,
)
from fleetscope.store.duckdb import SPAN_MS, DuckDBStore, _outside, _span, _within
from store.legacy import blocks_before_run_rows

STALE_NAN = float(np.array([0x7FF0000000000002], np.int64).view(np.float64)[0])


def gpu(i: int, name: str = "fleet_gpu_utilization_ratio", **extra: str) -> dict[str, str]:
    return {"__name__": name, "node": "n1", "gpu": str(i), **extra}


class CompactingStore(DuckDBStore):
    """A DuckDB store that compacts after every append, with 1-second blocks and no head margin:
    every stored sample but the newest second's is in ``blocks``, so each test of the port also
    runs on the union of the two tables."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, block_ms=1000, head_keep_ms=0)

    def append(self, batch: SampleBatch) -> AppendResult:
        result = super().append(batch)
        self.compact()
        return result


@pytest.fixture(params=["duckdb", "duckdb-compacting", "fake"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetricStore]:
    s: MetricStore
    if request.param == "duckdb":
        s = DuckDBStore(tmp_path / "m.duckdb")
    elif request.param == "duckdb-compacting":
        s = CompactingStore(tmp_path / "m.duckdb")
    else:
        s = FakeMetricStore()
    yield s
    s.close()


def rows(store: MetricStore) -> list[tuple[tuple[tuple[str, str], ...], int, int]]:
    """Every stored sample, values as bit patterns so NaNs compare equal."""
    out = []
    for s in store.select([Matcher("__name__", "=~", ".+")], 0, 2**62):
        bits = s.values.view(np.int64).tolist()
        out += [
            (tuple(sorted(s.labels.items())), t, b)
            for t, b in zip(s.t_ms.tolist(), bits, strict=True)
        ]
    return out


def test_append_then_select_returns_samples_in_order(store: MetricStore) -> None:
    batch = SampleBatch.from_rows(
        [(gpu(0), 3000, 0.3), (gpu(0), 1000, 0.1), (gpu(1), 1000, 0.5), (gpu(0), 2000, 0.2)]
    )
    result = store.append(batch)
    assert (result.samples, result.duplicates, result.series_created) == (4, 0, 2)
    got = store.select([Matcher.equal("gpu", "0")], 0, 10_000)
    assert len(got) == 1
    assert got[0].t_ms.tolist() == [1000, 2000, 3000]
    assert got[0].values.tolist() == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    ("matchers", "expected"),
    [
        pytest.param([Matcher.equal("gpu", "1")], ["1"], id="equal"),
        pytest.param([Matcher("gpu", "!=", "1")], ["0", "2"], id="not-equal"),
        pytest.param([Matcher("gpu", "=~", "[01]")], ["0", "1"], id="regex"),
        pytest.param([Matcher("gpu", "=~", "1|2")], ["1", "2"], id="regex-alternation"),
        pytest.param([Matcher("gpu", "=~", "")], [], id="regex-anchored-empty"),
        pytest.param([Matcher("gpu", "!~", "0|1")], ["2"], id="not-regex"),
        pytest.param([Matcher.equal("team", "")], ["0", "1"], id="missing-label-is-empty"),
        pytest.param([Matcher("team", "=~", "a.*")], ["2"], id="regex-on-present-label"),
    ],
)
def test_label_matchers(store: MetricStore, matchers: list[Matcher], expected: list[str]) -> None:
    store.append(
        SampleBatch.from_rows(
            [(gpu(0), 1000, 1.0), (gpu(1), 1000, 1.0), (gpu(2, team="alpha"), 1000, 1.0)]
        )
    )
    got = store.select(matchers, 0, 2000)
    assert [s.labels["gpu"] for s in got] == expected


def test_time_range_is_inclusive(store: MetricStore) -> None:
    store.append(SampleBatch.from_rows([(gpu(0), t, float(t)) for t in (1000, 2000, 3000)]))
    got = store.select([Matcher.equal("gpu", "0")], 1000, 2000)
    assert got[0].t_ms.tolist() == [1000, 2000]
    assert store.select([Matcher.equal("gpu", "0")], 3001, 9000) == []


def test_resending_a_batch_does_not_double_count(store: MetricStore) -> None:
    batch = SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(0), 2000, STALE_NAN)])
    store.append(batch)
    before = rows(store)
    again = store.append(batch)
    assert (again.samples, again.duplicates) == (0, 2)
    assert rows(store) == before


@pytest.mark.parametrize(
    "late",
    [
        pytest.param((1500, 1.0), id="between-stored-samples"),
        pytest.param((2000, 9.0), id="same-time-other-value"),
        pytest.param((500, 1.0), id="before-first"),
    ],
)
def test_out_of_order_rejects_the_whole_batch(store: MetricStore, late: tuple[int, float]) -> None:
    store.append(SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(0), 2000, 1.0)]))
    before = rows(store)
    bad = SampleBatch.from_rows([(gpu(1), 5000, 1.0), (gpu(0), late[0], late[1])])
    with pytest.raises(OutOfOrderError, match="fleet_gpu_utilization_ratio"):
        store.append(bad)
    assert rows(store) == before
    assert store.series([Matcher.equal("gpu", "1")]) == []


def test_duckdb_rejects_conflicting_values_inside_one_batch(tmp_path: Path) -> None:
    s = DuckDBStore(":memory:")
    with pytest.raises(OutOfOrderError, match="two different values"):
        s.append(SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(0), 1000, 2.0)]))
    assert s.stats().samples == 0
    result = s.append(SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(0), 1000, 1.0)]))
    assert (result.samples, result.duplicates) == (1, 1)


def test_duckdb_rejects_a_series_without_a_name() -> None:
    s = DuckDBStore(":memory:")
    with pytest.raises(InvalidBatchError, match="no metric name"):
        s.append(SampleBatch.from_rows([({"gpu": "0"}, 1000, 1.0)]))
    assert s.stats().series == 0


def test_data_and_order_checks_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    s = DuckDBStore(path)
    s.append(SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(1), 2000, 2.0)]))
    s.close()
    s = DuckDBStore(path)
    assert s.stats().samples == 2
    assert s.stats().series == 2
    with pytest.raises(OutOfOrderError):
        s.append(SampleBatch.from_rows([(gpu(1), 1500, 1.0)]))
    assert s.append(SampleBatch.from_rows([(gpu(1), 2000, 2.0)])).duplicates == 1
    r = s.append(SampleBatch.from_rows([(gpu(2), 1000, 1.0), (gpu(0), 3000, 3.0)]))
    assert (r.samples, r.series_created) == (2, 1)
    assert s.label_values("gpu") == ["0", "1", "2"]
    s.close()


def test_thinned_select_keeps_what_instant_queries_read() -> None:
    s = DuckDBStore(":memory:")
    t = np.arange(0, 600_000, 15_000, dtype=np.int64)  # 10 minutes at 15 s
    s.append(SampleBatch([gpu(0)], np.zeros(len(t), np.int32), t, t / 1000.0))
    hints = SelectHints(start_ms=120_000, end_ms=600_000, step_ms=60_000)
    got = s.select([Matcher.equal("gpu", "0")], 120_000 - 300_000, 600_000, hints)[0]
    steps = np.arange(120_000, 600_001, 60_000)
    # the newest sample at or before each step is kept, nothing else
    newest = [int(t[t <= step].max()) for step in steps]
    assert sorted(set(newest)) == got.t_ms.tolist()
    assert got.values.tolist() == [x / 1000.0 for x in got.t_ms.tolist()]


def test_retention_drops_old_samples(store: MetricStore) -> None:
    store.append(SampleBatch.from_rows([(gpu(0), t, 1.0) for t in (1000, 2000, 3000)]))
    assert store.delete_before(2500) == 2
    assert [r[1] for r in rows(store)] == [3000]


def test_labels_and_series_listing(store: MetricStore) -> None:
    store.append(
        SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(1, "fleet_gpu_up", team="a"), 5000, 1.0)])
    )
    assert store.label_names() == ["__name__", "gpu", "node", "team"]
    assert store.label_values("__name__") == ["fleet_gpu_up", "fleet_gpu_utilization_ratio"]
    assert store.series([Matcher.equal("__name__", "fleet_gpu_up")], 0, 2000) == []
    assert len(store.series([Matcher.equal("__name__", "fleet_gpu_up")], 4000, 6000)) == 1


def test_appender_commits_once(tmp_path: Path) -> None:
    s = DuckDBStore(":memory:")
    app = s.appender()
    app.append(gpu(0), 1000, 1.0)
    app.append_batch(SampleBatch.from_rows([(gpu(1), 1000, 2.0)]))
    assert app.commit().samples == 2
    with pytest.raises(InvalidBatchError):
        app.append(gpu(0), 2000, 1.0)
    rolled = s.appender()
    rolled.append(gpu(0), 3000, 1.0)
    rolled.rollback()
    assert s.stats().samples == 2


def test_numbered_batches(store: MetricStore) -> None:
    """Decoded remote-write batches carry label set numbers; every store takes them as any."""
    first = remotewrite.decode(remotewrite.encode(SampleBatch.from_rows([(gpu(0), 1000, 1.0)])))
    assert first.label_set_ids is not None
    assert store.append(first).series_created == 1
    later = SampleBatch.from_rows([(gpu(0), 2000, 2.0), (gpu(1), 2000, 3.0)])
    numbered = remotewrite.decode(remotewrite.encode(later))
    assert (store.append(numbered).samples, store.append(numbered).duplicates) == (2, 2)
    assert [(r[0][1], r[1]) for r in rows(store)] == [
        (("gpu", "0"), 1000),
        (("gpu", "0"), 2000),
        (("gpu", "1"), 2000),
    ]
    joined = SampleBatch.concat([first, numbered]).label_set_ids
    assert joined is not None and numbered.label_set_ids is not None
    assert joined.ids.tolist() == [
        *first.label_set_ids.ids.tolist(),
        *numbered.label_set_ids.ids.tolist(),
    ]
    assert SampleBatch.concat([first, later]).label_set_ids is None


def test_append_leaves_the_batch_as_it_was(store: MetricStore) -> None:
    """Label sets of a batch may be shared with other batches: a store must not change them."""
    batch = SampleBatch.from_rows(
        [(gpu(1), 3000, 1.0), (gpu(0), 1000, 2.0), (gpu(1), 1000, 3.0), (gpu(1), 1000, 3.0)]
    )
    series = [dict(labels) for labels in batch.series]
    columns = [a.copy() for a in (batch.series_index, batch.t_ms, batch.values)]
    store.append(batch)
    store.append(batch)
    assert batch.series == series
    for before, after in zip(columns, (batch.series_index, batch.t_ms, batch.values), strict=True):
        assert after.tolist() == before.tolist()


def _random_history(rng: np.random.Generator, series: int, points: int) -> SampleBatch:
    """Samples of ``series`` series at irregular times over ~10 s, with NaNs and stale markers."""
    rows_: list[tuple[dict[str, str], int, float]] = []
    for i in range(series):
        name = "fleet_gpu_power_watts" if i % 3 else "fleet_gpu_utilization_ratio"
        times = np.cumsum(rng.integers(1, 400, points))
        for t in times.tolist():
            value = float(rng.normal())
            if rng.random() < 0.05:
                value = STALE_NAN if rng.random() < 0.5 else float("nan")
            rows_.append((gpu(i, name), int(t), value))
    rows_.sort(key=lambda r: r[1])
    return SampleBatch.from_rows(rows_)


def test_compaction_moves_closed_blocks_and_changes_no_answer(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    history = _random_history(rng, series=12, points=40)
    plain = DuckDBStore(tmp_path / "plain.duckdb")
    compacted = DuckDBStore(tmp_path / "c.duckdb", block_ms=1000, head_keep_ms=500)
    for s in (plain, compacted):
        s.append(history)
    newest = int(history.t_ms.max())
    moved = compacted.compact(max_blocks=2)
    assert moved > 0
    moved += compacted.compact()
    # Everything in blocks ending at least 500 ms before the newest sample left the head.
    closed_end = ((newest - 500) // 1000) * 1000
    assert moved == int((history.t_ms < closed_end).sum())
    assert compacted.compact() == 0  # nothing left to do
    assert compacted.stats().samples == plain.stats().samples == len(history)
    assert rows(compacted) == rows(plain)
    everything = [Matcher("__name__", "=~", ".+")]
    for mint, maxt, step in [(0, newest, 0), (2500, 7100, 0), (1000, newest, 700)]:
        hints = SelectHints(start_ms=mint + 300, end_ms=maxt, step_ms=step, lookback_ms=300)
        for matchers in (everything, [Matcher("__name__", "=", "fleet_gpu_power_watts")]):
            a = plain.select(matchers, mint, maxt, hints if step else None)
            b = compacted.select(matchers, mint, maxt, hints if step else None)
            assert [x.labels for x in a] == [x.labels for x in b]
            for x, y in zip(a, b, strict=True):
                assert x.t_ms.tolist() == y.t_ms.tolist()
                assert x.values.view(np.int64).tolist() == y.values.view(np.int64).tolist()
    assert plain.series(everything, 5000, 6000) == compacted.series(everything, 5000, 6000)
    plain.close()
    compacted.close()


def test_compacted_samples_keep_resend_and_order_checks_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    s = DuckDBStore(path, block_ms=1000, head_keep_ms=0)
    first = SampleBatch.from_rows([(gpu(0), t, float(t)) for t in range(0, 5000, 250)])
    s.append(first)
    assert s.compact() == 17  # blocks (…, 0], (0, 1000] … (3000, 4000]; the newest stays
    s.close()
    s = DuckDBStore(path, block_ms=1000, head_keep_ms=0)  # heads come back from both tables
    assert s.append(first) == AppendResult(0, len(first), 0)  # a resend, found in the blocks
    with pytest.raises(OutOfOrderError):
        s.append(SampleBatch.from_rows([(gpu(0), 1000, 7.0)]))  # conflicts with a block row
    with pytest.raises(OutOfOrderError):
        s.append(SampleBatch.from_rows([(gpu(0), 4500, 1.0)]))  # behind the head
    # A new series may still arrive with old timestamps: it lands in the head, reads see it,
    # and the next compaction puts it into a run (with gpu 0's block (4000, 5000], closed now).
    s.append(SampleBatch.from_rows([(gpu(1), 100, 1.0), (gpu(1), 5100, 2.0)]))
    assert [x.t_ms.tolist() for x in s.select([Matcher("gpu", "=", "1")], 0, 10_000)] == [
        [100, 5100]
    ]
    assert s.compact() == 1 + 3
    assert s.delete_before(2000) == 8 + 1  # 8 of gpu 0 and one of gpu 1, from the blocks
    assert s.stats().samples == 20 - 8 + 1
    s.close()


def test_closed_spans_are_merged_into_one_run_each(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    history = _random_history(rng, series=6, points=150)  # ~30 s of samples
    plain = DuckDBStore(tmp_path / "plain.duckdb")
    leveled = DuckDBStore(
        tmp_path / "l.duckdb", block_ms=1000, head_keep_ms=500, merge_spans_ms=(4000, 16_000)
    )
    for s in (plain, leveled):
        s.append(history)
    leveled.compact(max_blocks=5)  # 1-second runs only
    assert len(leveled.runs()) == 5
    leveled.compact()
    runs = leveled.runs()
    t = history.t_ms
    week = [r for r in runs if r[2] < 16_000]  # the closed 16-second span: one run
    assert len(week) == 1 and week[0][1] == int((t < 16_000).sum())
    head_min = int(t[t >= ((int(t.max()) - 500) // 1000) * 1000].min())
    for start in range(16_000, head_min // 4000 * 4000, 4000):  # closed 4-second spans
        inside = [r for r in runs if start <= r[2] < start + 4000]
        assert len(inside) == 1 and inside[0][3] < start + 4000
    assert leveled.merge_runs() == 0  # idempotent
    assert rows(leveled) == rows(plain)
    hints = SelectHints(start_ms=3000, end_ms=29_000, step_ms=1300, lookback_ms=900)
    everything = [Matcher("__name__", "=~", ".+")]
    for a, b in zip(
        plain.select(everything, 2000, 29_000, hints),
        leveled.select(everything, 2000, 29_000, hints),
        strict=True,
    ):
        assert a.labels == b.labels and a.t_ms.tolist() == b.t_ms.tolist()
    plain.close()
    leveled.close()
    reopened = DuckDBStore(tmp_path / "l.duckdb")  # run numbers continue after a restart
    assert reopened._next_run == max(r[0] for r in runs) + 1
    reopened.close()


def test_merging_takes_in_a_straggler_and_resumes_after_a_restart(tmp_path: Path) -> None:
    """A new series sent with old timestamps sends merging back to its span, and merge
    progress is kept in the file (a restart does not look at every run again)."""
    history = _random_history(np.random.default_rng(3), series=6, points=150)
    late = SampleBatch.from_rows([(gpu(9), 5_000 + 100 * i, float(i)) for i in range(5)])
    path, spans = tmp_path / "m.duckdb", (4000, 16_000)
    s = DuckDBStore(path, block_ms=1000, head_keep_ms=500, merge_spans_ms=spans)
    s.append(history)
    s.compact()
    marks = dict(s._merged_until)
    assert sorted(marks) == [4000, 16_000] and marks[16_000] >= 16_000
    s.append(late)  # into spans merged already
    s.compact()
    holding = [r for r in s.runs() if r[2] < 16_000]
    assert len(holding) == 1 and holding[0][3] < 16_000  # the week's span: one run again
    assert s._merged_until == marks  # the watermarks back where they were
    plain = DuckDBStore(tmp_path / "plain.duckdb")
    plain.append(history)
    plain.append(late)
    assert rows(s) == rows(plain)
    s.close()
    s = DuckDBStore(path, block_ms=1000, head_keep_ms=500, merge_spans_ms=spans)
    assert s._merged_until == marks  # a restart goes on from there
    assert s.merge_runs() == 0
    s.close()
    plain.close()


def test_a_store_written_before_run_rows_is_rewritten_once_and_answers_the_same(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    history = _random_history(rng, series=9, points=120)
    plain = DuckDBStore(tmp_path / "plain.duckdb")
    plain.append(history)
    path = tmp_path / "old.duckdb"
    old = DuckDBStore(path, block_ms=1000, head_keep_ms=500, merge_spans_ms=(4000,))
    old.append(history)
    old.compact()
    runs = old.runs()
    old.close()
    blocks_before_run_rows(path)
    upgraded = DuckDBStore(path, block_ms=1000, head_keep_ms=500, merge_spans_ms=(4000,))
    kinds = upgraded._con.execute(
        "SELECT table_name, table_type FROM information_schema.tables "
        "WHERE table_name IN ('blocks', 'run_rows') ORDER BY 1"
    ).fetchall()
    assert kinds == [("blocks", "VIEW"), ("run_rows", "BASE TABLE")]
    assert upgraded.runs() == runs
    assert rows(upgraded) == rows(plain)
    newest = int(history.t_ms.max())
    hints = SelectHints(start_ms=1500, end_ms=newest, step_ms=900, lookback_ms=700)
    everything = [Matcher("__name__", "=~", ".+")]
    for a, b in zip(
        plain.select(everything, 800, newest, hints),
        upgraded.select(everything, 800, newest, hints),
        strict=True,
    ):
        assert a.labels == b.labels and a.t_ms.tolist() == b.t_ms.tolist()
        assert a.values.view(np.int64).tolist() == b.values.view(np.int64).tolist()
    assert upgraded.delete_before(3000) == plain.delete_before(3000) > 0
    assert rows(upgraded) == rows(plain)
    upgraded.close()
    plain.close()


def test_a_runs_times_read_as_one_regular_series_through_it(tmp_path: Path) -> None:
    # Series with their own phase, step and stretch: u = t + o steps by each series' own step
    # inside it, and by the next series' step from one series to the next.
    stretches = [(0, 15, 0, 7200), (1, 15, 3, 7200), (2, 30, 7, 3600), (3, 15, 1, 7200)]
    rows_ = [
        (gpu(g), t * 1000, float(t % 97))
        for g, step, phase, end in stretches
        for t in range(phase + step, end + 1, step)
    ]
    batch = SampleBatch.from_rows(sorted(rows_, key=lambda r: r[1]))
    s = DuckDBStore(tmp_path / "r.duckdb", head_keep_ms=0)
    s.append(batch)
    s.append(SampleBatch.from_rows([(gpu(0), 9_000_000, 1.0)]))  # closes the block
    assert s.compact() == len(batch)
    stored = s._con.execute(
        "SELECT series_id, u, u - o AS t FROM run_rows ORDER BY run, metric_key, series_id, t"
    ).fetchnumpy()
    steps = np.diff(stored["u"])
    series = stored["series_id"]
    expected = np.diff(stored["t"])
    ends = np.flatnonzero(np.diff(series))  # the last row of each series but the last
    expected[ends] = expected[ends + 1]  # the next series' first step
    assert steps.tolist() == expected.tolist()
    assert set(steps.tolist()) == {15_000, 30_000}
    s.close()


@pytest.mark.parametrize("t", [0, 1, -1, SPAN_MS - 1, SPAN_MS, -SPAN_MS, -SPAN_MS - 1, 10**15])
def test_a_samples_span_is_computed_as_duckdb_divides(t: int) -> None:
    (row,) = duckdb.sql(f"SELECT {t}::BIGINT // {SPAN_MS}").fetchall()
    assert _span(t) == row[0]


def test_the_span_filters_keep_every_time_outside_the_spans() -> None:
    rng = np.random.default_rng(11)
    t = np.unique(rng.integers(-4 * SPAN_MS, 30 * SPAN_MS, 20_000))
    con = duckdb.connect()
    con.execute("CREATE TABLE times (t BIGINT)")
    con.execute("INSERT INTO times SELECT unnest($t)", {"t": t.tolist()})
    con.execute("ALTER TABLE times ADD COLUMN k BIGINT DEFAULT 0")
    con.execute(f"UPDATE times SET k = t // {SPAN_MS}")
    for _ in range(40):
        spans = []
        for _ in range(int(rng.integers(1, 6))):
            a = int(rng.integers(-4 * SPAN_MS, 30 * SPAN_MS))
            spans.append((a, a + int(rng.choice([0, 1, SPAN_MS, 3 * SPAN_MS, 9 * SPAN_MS]))))
        want = [x for x in t.tolist() if not any(a <= x <= z for a, z in spans)]
        got = con.execute(f"SELECT t FROM times WHERE {_outside(spans)} ORDER BY t").fetchall()
        assert [r[0] for r in got] == want, spans
        mint, maxt = sorted(int(x) for x in rng.integers(-4 * SPAN_MS, 30 * SPAN_MS, 2))
        within = con.execute(f"SELECT t FROM times WHERE {_within(mint, maxt)}").fetchall()
        assert {x for x in t.tolist() if mint <= x <= maxt} <= {r[0] for r in within}
    con.close()


def test_reads_of_runs_around_negative_and_span_edge_times(tmp_path: Path) -> None:
    # Time ranges start and end on either side of the two-hour spans that reads filter on.
    history = SampleBatch.from_rows(
        [
            (gpu(g), t, float(t % 1000 + g))
            for t in range(-5 * SPAN_MS, SPAN_MS, 60_000)
            for g in range(3)
        ]
    )
    plain = DuckDBStore(tmp_path / "plain.duckdb")
    runs = DuckDBStore(tmp_path / "runs.duckdb", head_keep_ms=0, cell_ms=0)
    for s in (plain, runs):
        s.append(history)
    assert runs.compact() == int((history.t_ms <= 0).sum())  # blocks up to 0: the rest is open
    everything = [Matcher("__name__", "=~", ".+")]
    edges = [-3 * SPAN_MS, -SPAN_MS - 1, -SPAN_MS, -1, 0, 1, SPAN_MS - 60_000]
    for mint in edges:
        for maxt in edges:
            if maxt >= mint:
                a, b = plain.select(everything, mint, maxt), runs.select(everything, mint, maxt)
                assert [x.t_ms.tolist() for x in a] == [x.t_ms.tolist() for x in b], (mint, maxt)
    assert runs.delete_before(-SPAN_MS - 1) == plain.delete_before(-SPAN_MS - 1)
    assert rows(runs) == rows(plain)
    plain.close()
    runs.close()


def test_the_memory_limit_reaches_duckdb_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    s = DuckDBStore(tmp_path / "m.duckdb", memory_limit="256MiB")
    row = s._con.execute("SELECT current_setting('memory_limit')").fetchone()
    assert row is not None and row[0] == "256.0 MiB"
    s.close()
    with pytest.raises(ValueError, match="memory limit 'lots'"):
        DuckDBStore(tmp_path / "n.duckdb", memory_limit="lots")


class CompactsDuringARead(DuckDBStore):
    """Compacts after a read took the head's rows from memory and before it reads the runs, as
    another thread could."""

    armed = False
    reads = 0

    def _rows(
        self, ids: list[int], mint: int, maxt: int, blocks_also: str, *, head_table: bool
    ) -> str | None:
        self.reads += 1
        if self.armed:
            self.armed = False
            assert self.compact() > 0
        return super()._rows(ids, mint, maxt, blocks_also, head_table=head_table)


def test_a_read_that_overlaps_a_compaction_reads_again(tmp_path: Path) -> None:
    s = CompactsDuringARead(tmp_path / "c.duckdb", block_ms=1000, head_keep_ms=0)
    s.append(SampleBatch.from_rows([(gpu(0), t, float(t)) for t in range(0, 5000, 250)]))
    assert s.compact() == 17  # blocks end at 4000: 4250 … 4750 stay in the head
    for mint, maxt in ((4100, 6000), (3100, 7000)):  # the head alone, then both
        new = range(maxt - 1000, maxt + 1, 250)
        s.append(SampleBatch.from_rows([(gpu(0), t, float(t)) for t in new if t > 4750]))
        s.armed, s.reads = True, 0
        # the head's rows are taken, then the move: the runs now hold them too
        (found,) = s.select([Matcher("gpu", "=", "0")], mint, maxt)
        assert not s.armed, "the compaction ran in the middle of the read"
        assert s.reads == 2, "the read overlapping the move ran again"
        want = [t for t in range(0, maxt + 1, 250) if t >= mint]
        assert found.t_ms.tolist() == want
        assert found.values.tolist() == [float(t) for t in want]
        (again,) = s.select([Matcher("gpu", "=", "0")], mint, maxt)
        assert again.t_ms.tolist() == want
    s.close()


class CountsReads(DuckDBStore):
    """Counts the selects that went to SQL."""

    sql_reads = 0

    def _read(self, *args: Any, **kwargs: Any) -> Any:
        self.sql_reads += 1
        return super()._read(*args, **kwargs)


def test_an_instant_select_at_the_newest_time_is_answered_without_sql(tmp_path: Path) -> None:
    path = tmp_path / "l.duckdb"
    s = CountsReads(path)
    rows_ = [(gpu(0), t, float(t)) for t in range(0, 600_001, 15_000)]
    rows_ += [(gpu(1), t, 1.0) for t in range(0, 300_001, 15_000)] + [(gpu(1), 315_000, STALE_NAN)]
    rows_ += [(gpu(2), 0, 5.0)]  # older than the lookback at the end
    s.append(SampleBatch.from_rows(rows_))
    everything = [Matcher("__name__", "=~", ".+")]

    def instant(store: DuckDBStore, t: int) -> list[tuple[str, list[int], list[int]]]:
        hints = SelectHints(start_ms=t, end_ms=t, step_ms=0, lookback_ms=300_000)
        return [
            (x.labels["gpu"], x.t_ms.tolist(), x.values.view(np.int64).tolist())
            for x in store.select(everything, t - 300_000, t, hints)
        ]

    def newest_by_sql(store: DuckDBStore, t: int) -> list[tuple[str, list[int], list[int]]]:
        return [
            (x.labels["gpu"], x.t_ms[-1:].tolist(), x.values[-1:].view(np.int64).tolist())
            for x in store.select(everything, t - 300_000, t)
        ]

    at_end = instant(s, 600_000)
    assert s.sql_reads == 0
    assert at_end == newest_by_sql(s, 600_000)
    assert [g for g, _, _ in at_end] == ["0", "1"]  # gpu 2 has nothing in the window
    assert at_end[1][2] == [int(np.array([STALE_NAN]).view(np.int64)[0])]  # the marker itself
    # A later sample exists: the rows are read, the newest of the window kept.
    reads = s.sql_reads
    assert instant(s, 400_000) == newest_by_sql(s, 400_000)
    assert s.sql_reads == reads + 2
    s.close()
    s = CountsReads(path)  # the newest samples come back from the tables
    assert instant(s, 600_000) == at_end and s.sql_reads == 0
    s.delete_before(700_000)  # retention of everything: nothing is left to answer with
    assert instant(s, 600_000) == []
    s.close()


def test_reads_come_back_in_label_order_before_and_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.duckdb"
    names = ["b", "a", "c10", "c2", "a"]
    s = DuckDBStore(path)
    for n, name in enumerate(names[:3]):  # registered out of order
        s.append(SampleBatch.from_rows([(gpu(0, node=name, k=str(n)), 1000, 1.0)]))
    s.close()
    s = DuckDBStore(path)
    for n, name in enumerate(names[3:], start=3):  # and more after the restart
        s.append(SampleBatch.from_rows([(gpu(0, node=name, k=str(n)), 1000, 1.0)]))
    want = sorted(
        (gpu(0, node=name, k=str(n)) for n, name in enumerate(names)),
        key=lambda lab: sorted(lab.items()),
    )
    everything = [Matcher("__name__", "=~", ".+")]
    assert [x.labels for x in s.select(everything, 0, 2000)] == want
    assert s.series(everything) == want
    s.close()


@pytest.mark.parametrize("compacting", [False, True])
def test_select_set_holds_what_select_returns_as_flat_runs(
    tmp_path: Path, compacting: bool
) -> None:
    """Series registered against label order, with runs of different lengths: the flat form
    the evaluator reads is ``select``'s series, in its order, concatenated."""
    s = (CompactingStore if compacting else DuckDBStore)(tmp_path / "f.duckdb")
    rows = [
        (gpu(0, node=node), t * 1000, float(10 * i + t))
        for i, node in enumerate(["n3", "n1", "n2"])
        for t in range(0, 30, 1 + i)  # 30, 15 and 10 samples
    ]
    s.append(SampleBatch.from_rows(rows))
    everything = [Matcher("__name__", "=~", ".+")]
    reads = [
        (0, 29_000, None),  # raw samples
        (0, 29_000, SelectHints(start_ms=5_000, end_ms=29_000, step_ms=4_000)),  # thinned
        (29_000 - 300_000, 29_000, SelectHints(start_ms=29_000, end_ms=29_000)),  # newest
        (40_000, 50_000, None),  # nothing
    ]
    for mint, maxt, hints in reads:
        found = s.select(everything, mint, maxt, hints)
        flat = s.select_set(everything, mint, maxt, hints)
        assert [x.labels["node"] for x in found] == ["n1", "n2", "n3"][: len(found)]
        for x in found:  # each series' own samples
            own = [(t, v) for lab, t, v in rows if lab == x.labels and mint <= t <= maxt]
            assert set(zip(x.t_ms.tolist(), x.values.tolist(), strict=True)) <= set(own)
        assert flat.pairs == [x.pairs for x in found]
        assert flat.bounds.tolist() == np.cumsum([0] + [len(x.t_ms) for x in found]).tolist()
        if found:
            np.testing.assert_array_equal(flat.t_ms, np.concatenate([x.t_ms for x in found]))
            np.testing.assert_array_equal(flat.values, np.concatenate([x.values for x in found]))
        else:
            assert len(flat.t_ms) == len(flat.values) == 0
    s.close()
