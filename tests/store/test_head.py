"""The head in memory (store/head.py), and the store's reads that take it: they answer as the
same samples do from the runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetscope.store import BUCKET_AGGREGATES, COUNTER_AGGREGATE, Matcher, SampleBatch, SelectHints
from fleetscope.store import head as head_module
from fleetscope.store.duckdb import DuckDBStore
from fleetscope.store.head import Head, HeadView
from query.reference_buckets import reference_buckets
from store.test_cells import LAYOUTS, MIN, THIN_SELECTS, W, _history, _read_at_steps

I64 = np.int64


def _brute(rows: list[tuple[int, int, float]], ids: list[int], mint: int, maxt: int) -> list:
    wanted = set(ids)
    return sorted((s, t, v) for s, t, v in rows if s in wanted and mint <= t <= maxt)


def _got(view: HeadView, ids: list[int], mint: int, maxt: int) -> list:
    sid, t, v = view.rows(np.asarray(ids, I64), mint, maxt)
    return list(zip(sid.tolist(), t.tolist(), v.tolist(), strict=True))


def test_rows_are_the_wanted_series_samples_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head_module, "_MIN_FOLD", 40)  # fold often
    rng = np.random.default_rng(3)
    head, kept = Head(), []
    folds = 0
    for tick in range(60):  # a scrape of series 0 … 9 (new ones appear), some late samples
        sid = np.arange(min(10, 3 + tick // 5), dtype=I64)
        t = np.full(len(sid), tick * 100, I64)
        if tick % 7 == 3:  # a late sample of series 1, older than what it has
            sid, t = np.append(sid, 1), np.append(t, tick * 100 - 250)
            order = np.lexsort((t, sid))
            sid, t = sid[order], t[order]
        v = rng.normal(size=len(sid))
        before = head.view()
        head.add(sid, t, v)
        folds += head.view().tail_n == 0
        kept += zip(sid.tolist(), t.tolist(), v.tolist(), strict=True)
        assert len(head) == len(kept)
        for ids in ([1], [0, 2, 9], list(range(12)), [11]):
            for mint, maxt in ((0, 10**6), (1234, 3456), (tick * 100, tick * 100)):
                assert _got(head.view(), ids, mint, maxt) == _brute(kept, ids, mint, maxt)
        assert len(before) == len(kept) - len(sid)  # a view taken before does not change
    assert folds > 3, "the tail was folded into the sorted rows"


def test_a_view_keeps_its_rows_through_adds_folds_and_drops() -> None:
    head = Head()
    head.load(np.array([2, 1, 1], I64), np.array([10, 20, 10], I64), np.array([1.0, 2.0, 3.0]))
    view = head.view()
    want = [(1, 10, 3.0), (1, 20, 2.0), (2, 10, 1.0)]
    assert _got(view, [1, 2], 0, 100) == want
    head.add(np.array([1, 2], I64), np.array([30, 30], I64), np.array([4.0, 5.0]))
    tail = head.view()
    head.drop(until=20)  # moved into runs
    assert _got(head.view(), [1, 2], 0, 100) == [(1, 30, 4.0), (2, 30, 5.0)]
    head.add(np.array([1], I64), np.array([40], I64), np.array([6.0]))
    head.drop(before=35)  # past retention
    assert _got(head.view(), [1, 2], 0, 100) == [(1, 40, 6.0)]
    assert _got(view, [1, 2], 0, 100) == want
    assert _got(tail, [1, 2], 0, 100) == sorted([*want, (1, 30, 4.0), (2, 30, 5.0)])
    assert _got(tail, [3], 0, 100) == [] and _got(tail, [], 0, 100) == []


def _stores(tmp_path: Path) -> tuple[DuckDBStore, DuckDBStore, DuckDBStore]:
    """The same six hours three times: all in the head, all in runs (with cells), and the
    last two hours in the head after cells and runs."""
    batch = SampleBatch.from_rows(_history(np.random.default_rng(11)))
    kinds = {"head": 10**12, "runs": 0, "both": 2 * 60 * MIN}
    out = []
    for name, keep in kinds.items():
        s = DuckDBStore(tmp_path / f"{name}.duckdb", block_ms=30 * MIN, head_keep_ms=keep)
        s.append(batch)
        s.compact()
        out.append(s)
    head, runs, both = out
    assert len(head._head_rows) == len(batch) and len(runs._head_rows) < len(batch) // 100
    assert 0 < len(both._head_rows) < len(batch)
    return head, runs, both


@pytest.mark.parametrize("metric", ["fleet_gpu_power_watts", "fleet_gpu_energy_joules_total"])
def test_reads_of_the_head_answer_as_the_runs_do(tmp_path: Path, metric: str) -> None:
    stores = _stores(tmp_path)
    matchers = [Matcher("__name__", "=", metric)]
    runs = stores[1]
    for base, width, n in LAYOUTS:
        series = runs.select(matchers, base, base + (n - 1) * width)
        ref = reference_buckets(series, base, width, n, {*BUCKET_AGGREGATES, COUNTER_AGGREGATE})
        for s in stores:
            got = s.select_buckets(matchers, base, width, n, BUCKET_AGGREGATES)
            assert got is not None
            assert got.labels == ref.labels
            np.testing.assert_array_equal(got.count, ref.count)
            for name in ("min", "max", "last", "edge"):
                np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), name)
            np.testing.assert_allclose(got.sum, ref.sum, rtol=1e-12, equal_nan=True)
        if metric.endswith("_total") and base % W == 0 and width % W == 0:  # head after cells
            got = stores[2].select_buckets(matchers, base, width, n, (COUNTER_AGGREGATE,))
            assert got is not None
            for name in ("first_t", "last_t", "first"):
                np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), name)
            np.testing.assert_allclose(got.increase, ref.increase, rtol=1e-12, equal_nan=True)
    everything = runs.select(matchers, 0, 6 * 60 * MIN)
    for s in stores:
        for a, b in zip(s.select(matchers, 0, 6 * 60 * MIN), everything, strict=True):
            assert a.labels == b.labels
            assert a.t_ms.tolist() == b.t_ms.tolist()
            assert a.values.view(I64).tolist() == b.values.view(I64).tolist()  # markers too
        for start, step, lookback in THIN_SELECTS:
            end = 6 * 60 * MIN
            hints = SelectHints(start_ms=start, end_ms=end, step_ms=step, lookback_ms=lookback)
            got = s.select(matchers, start - lookback, end, hints)
            want = runs.select(matchers, start - lookback, end)
            assert [x.labels for x in got] == [x.labels for x in want]
            for x, y in zip(got, want, strict=True):
                assert _read_at_steps(x, hints) == _read_at_steps(y, hints)
        for at in (4 * 60 * MIN, 4 * 60 * MIN + 7000):  # an instant, before the newest samples
            hints = SelectHints(start_ms=at, end_ms=at, step_ms=0, lookback_ms=W)
            got = s.select(matchers, at - W, at, hints)
            want = runs.select(matchers, at - W, at)
            assert [x.labels for x in got] == [x.labels for x in want]
            for x, y in zip(got, want, strict=True):
                assert (x.t_ms[-1], x.values[-1:].view(I64)[0]) == (
                    y.t_ms[-1],
                    y.values[-1:].view(I64)[0],
                )
    for s in stores:
        s.close()


def test_the_head_is_loaded_again_when_the_store_opens(tmp_path: Path) -> None:
    head = _stores(tmp_path)[2]
    before = head._head_rows.view()
    head.close()
    again = DuckDBStore(tmp_path / "both.duckdb", block_ms=30 * MIN, head_keep_ms=2 * 60 * MIN)
    after = again._head_rows.view()
    ids = np.arange(10, dtype=I64)
    (sid, t, v), (sid2, t2, v2) = before.rows(ids, 0, 10**12), after.rows(ids, 0, 10**12)
    assert len(t) > 0 and sid.tolist() == sid2.tolist() and t.tolist() == t2.tolist()
    assert v.view(I64).tolist() == v2.view(I64).tolist()
    again.close()


def test_a_head_past_its_limit_steps_aside_until_it_fits_again() -> None:
    head = Head(limit=5)
    head.add(np.array([1, 2, 3], I64), np.array([10, 10, 10], I64), np.array([1.0, 2.0, 3.0]))
    assert head.complete and len(head) == 3
    head.add(np.array([1, 2, 3], I64), np.array([20, 20, 20], I64), np.array([4.0, 5.0, 6.0]))
    assert not head.complete and len(head) == 0  # freed: readers read the table
    head.add(np.array([1], I64), np.array([30], I64), np.array([7.0]))
    head.drop(until=15)
    assert not head.complete and len(head) == 0  # stays aside until loaded again
    head.load(np.arange(6, dtype=I64), np.zeros(6, I64), np.zeros(6))
    assert not head.complete
    head.load(np.array([2, 1], I64), np.array([20, 20], I64), np.array([5.0, 4.0]))
    assert head.complete and _got(head.view(), [1, 2], 0, 100) == [(1, 20, 4.0), (2, 20, 5.0)]


def test_a_store_whose_head_outgrows_memory_reads_the_table(tmp_path: Path) -> None:
    """Too many head samples for memory (a backfill before a compaction): reads scan the head
    table, with the same answers; compaction shrinks it, and it is in memory again."""
    batch = SampleBatch.from_rows(_history(np.random.default_rng(11)))
    config = {"block_ms": 30 * MIN, "head_keep_ms": 10 * MIN}
    small = DuckDBStore(tmp_path / "small.duckdb", head_rows=2000, **config)
    plain = DuckDBStore(tmp_path / "plain.duckdb", **config)
    for s in (small, plain):
        s.append(batch)
    assert len(batch) > 2000 and not small._head_rows.complete
    assert plain._head_rows.complete

    def same_answers() -> None:
        for metric in ("fleet_gpu_power_watts", "fleet_gpu_energy_joules_total"):
            m = [Matcher("__name__", "=", metric)]
            for a, b in zip(small.select(m, 0, 10**9), plain.select(m, 0, 10**9), strict=True):
                assert a.t_ms.tolist() == b.t_ms.tolist()
                assert a.values.view(I64).tolist() == b.values.view(I64).tolist()
            hints = SelectHints(start_ms=60 * MIN, end_ms=6 * 60 * MIN, step_ms=W, lookback_ms=W)
            got = small.select(m, 55 * MIN, 6 * 60 * MIN, hints)
            want = plain.select(m, 55 * MIN, 6 * 60 * MIN, hints)
            for x, y in zip(got, want, strict=True):
                assert _read_at_steps(x, hints) == _read_at_steps(y, hints)
            for base, width, n in LAYOUTS:
                x = small.select_buckets(m, base, width, n, BUCKET_AGGREGATES)
                y = plain.select_buckets(m, base, width, n, BUCKET_AGGREGATES)
                assert x is not None and y is not None
                for name in ("count", "min", "max", "last", "edge"):
                    np.testing.assert_array_equal(getattr(x, name), getattr(y, name), name)
                np.testing.assert_allclose(x.sum, y.sum, rtol=1e-12, equal_nan=True)

    same_answers()
    small.close()
    small = DuckDBStore(tmp_path / "small.duckdb", head_rows=2000, **config)
    assert not small._head_rows.complete  # not copied at open either
    same_answers()
    for s in (small, plain):
        s.compact()  # the last half hour stays in the head: under half the limit
    assert 0 < len(plain._head_rows) <= 1000
    assert small._head_rows.complete and len(small._head_rows) == len(plain._head_rows)
    same_answers()
    small.close()
    plain.close()
