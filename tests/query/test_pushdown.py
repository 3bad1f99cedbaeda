"""Range-function pushdown gives the answers of evaluating samples, and is really used.

The same data goes into a DuckDB store (which aggregates buckets in SQL; compacted, so reads
cross both tables) and into the in-memory fake (which cannot: the evaluator reads samples).
Every query runs on both and the results must agree; a spy on the DuckDB store proves which
queries were answered from buckets.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetscope.query import QueryResult, engine
from fleetscope.query.aggregate import sum_by
from fleetscope.query.engine import Evaluator
from fleetscope.query.pushdown import plan
from fleetscope.store import (
    BUCKET_AGGREGATES,
    STALE_NAN,
    Buckets,
    FakeMetricStore,
    Matcher,
    SampleBatch,
)
from fleetscope.store.duckdb import DuckDBStore

S = 1000
MIN = 60 * S


class Spy(DuckDBStore):
    """Counts bucket reads that answered and sample reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, block_ms=10 * MIN, head_keep_ms=0)
        self.bucket_answers = 0
        self.sample_reads = 0

    def select_buckets(
        self,
        matchers: Sequence[Matcher],
        base_ms: int,
        width_ms: int,
        n: int,
        aggregates: Collection[str] = BUCKET_AGGREGATES,
    ) -> Buckets | None:
        found = super().select_buckets(matchers, base_ms, width_ms, n, aggregates)
        self.bucket_answers += found is not None
        return found

    def _select_runs(self, *args: Any, **kwargs: Any) -> Any:  # select and select_set read here
        self.sample_reads += 1
        return super()._select_runs(*args, **kwargs)


def _history() -> SampleBatch:
    """Four gauges over 2 h: on the 15 s grid (samples sit on window edges), jittered, with a
    gap, stale markers, infinities, and negative values."""
    rng = np.random.default_rng(11)
    rows: list[tuple[dict[str, str], int, float]] = []
    for g in range(4):
        labels = {"__name__": "fleet_gpu_power_watts", "node": "n1", "gpu": str(g)}
        t = 0
        while t <= 120 * MIN:
            jitter = 0 if g < 2 else int(rng.integers(-4000, 4000))
            value = float(np.round(rng.normal(200, 80), 2))
            if g == 1 and 30 * MIN <= t < 50 * MIN:
                value = STALE_NAN if t == 30 * MIN else np.nan  # marker, then a gap
            if g == 3 and t == 70 * MIN:
                value = float("inf")
            if not (np.isnan(value) and value is not STALE_NAN and g == 1 and t > 30 * MIN):
                rows.append((labels, t + jitter, value))
            t += 15 * S
    rows.sort(key=lambda r: r[1])
    return SampleBatch.from_rows(rows)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Spy, FakeMetricStore]:
    spy = Spy(tmp_path_factory.mktemp("push") / "m.duckdb")
    fake = FakeMetricStore()
    history = _history()
    spy.append(history)
    fake.append(history)
    assert spy.compact() > 0
    return spy, fake


def _same(a: QueryResult, b: QueryResult) -> None:
    assert [s.labels for s in a.series] == [s.labels for s in b.series]
    for x, y in zip(a.series, b.series, strict=True):
        assert x.t_ms.tolist() == y.t_ms.tolist()
        np.testing.assert_allclose(x.values, y.values, rtol=1e-12, equal_nan=True)


FUNCS = ["count", "sum", "avg", "min", "max", "last", "present"]
RANGES = ["15s", "1m", "5m", "7m30s", "1h"]


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("range_", RANGES)
def test_range_queries_match_sample_evaluation(
    stores: tuple[Spy, FakeMetricStore], func: str, range_: str
) -> None:
    spy, fake = stores
    query = f"{func}_over_time(fleet_gpu_power_watts[{range_}])"
    for start, end, step in [(0, 120 * MIN, 60 * S), (7 * MIN, 113 * MIN, 150 * S)]:
        before = spy.bucket_answers
        got = Evaluator(spy).range(query, start, end, step)
        want = Evaluator(fake).range(query, start, end, step)
        _same(got, want)
        if func != "avg" or range_ == "15s":  # avg over a window with +Inf reads samples
            assert spy.bucket_answers == before + 1, "answered from buckets"


@pytest.mark.parametrize("func", FUNCS)
def test_instant_queries_with_offset_and_at(stores: tuple[Spy, FakeMetricStore], func: str) -> None:
    spy, fake = stores
    for query, at in [
        (f"{func}_over_time(fleet_gpu_power_watts[30m])", 60 * MIN),
        (f"{func}_over_time(fleet_gpu_power_watts[30m] offset 10m)", 60 * MIN),
        (f"{func}_over_time(fleet_gpu_power_watts{{gpu=~'[02]'}}[2h])", 120 * MIN),
        (f"sum({func}_over_time(fleet_gpu_power_watts[10m] @ 3000))", 90 * MIN),
    ]:
        _same(Evaluator(spy).instant(query, at), Evaluator(fake).instant(query, at))
    query = f"{func}_over_time(fleet_gpu_power_watts[10m] @ 3000)"  # fixed in a range query
    _same(
        Evaluator(spy).range(query, 0, 30 * MIN, 5 * MIN),
        Evaluator(fake).range(query, 0, 30 * MIN, 5 * MIN),
    )


@pytest.mark.parametrize(
    "query",
    [
        "sum by (gpu) (count_over_time(fleet_gpu_power_watts[30m]))",
        "sum by (node) (sum_over_time(fleet_gpu_power_watts[1h]))",
        "sum(count_over_time(fleet_gpu_power_watts{gpu=~'[12]'}[7m30s]))",
        "sum by (__name__, nothere) (count_over_time(fleet_gpu_power_watts[5m]))",
        "sum by (gpu) (count_over_time(fleet_gpu_power_watts[10m] @ 3000))",
    ],
)
def test_sums_of_counts_and_sums_are_grouped_from_the_buckets(
    stores: tuple[Spy, FakeMetricStore], query: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, fake = stores
    grouped: list[int] = []

    def counted(*args: Any) -> Any:
        grouped.append(1)
        return sum_by(*args)

    monkeypatch.setattr(engine, "sum_by", counted)
    for start, end, step in [(0, 120 * MIN, 60 * S), (7 * MIN, 113 * MIN, 150 * S)]:
        _same(
            Evaluator(spy).range(query, start, end, step),
            Evaluator(fake).range(query, start, end, step),
        )
    _same(Evaluator(spy).instant(query, 80 * MIN), Evaluator(fake).instant(query, 80 * MIN))
    assert len(grouped) == 3, "grouped from the buckets"


def test_stale_markers_do_not_count_and_samples_are_not_read(
    stores: tuple[Spy, FakeMetricStore],
) -> None:
    spy, _ = stores
    reads = spy.sample_reads
    got = Evaluator(spy).instant('count_over_time(fleet_gpu_power_watts{gpu="1"}[20m])', 45 * MIN)
    assert spy.sample_reads == reads
    # gpu 1: its marker at 30m and nothing until 50m; [25m, 45m] holds the 20 samples from
    # 25m (windows are closed at both ends) to 29m45s.
    assert got.series[0].values.tolist() == [20.0]


def test_a_real_nan_makes_the_evaluator_read_samples(tmp_path: Path) -> None:
    spy, fake = Spy(tmp_path / "n.duckdb"), FakeMetricStore()
    labels = {"__name__": "fleet_gpu_power_watts", "gpu": "0"}
    batch = SampleBatch.from_rows(
        [(labels, t * 15 * S, float("nan") if t == 5 else float(t)) for t in range(40)]
    )
    spy.append(batch)
    fake.append(batch)
    for func in FUNCS:
        query = f"{func}_over_time(fleet_gpu_power_watts[3m])"
        reads = spy.sample_reads
        _same(
            Evaluator(spy).range(query, 0, 10 * MIN, 30 * S),
            Evaluator(fake).range(query, 0, 10 * MIN, 30 * S),
        )
        assert spy.sample_reads == reads + 1  # buckets declined: NaN rules need the samples
    assert spy.bucket_answers == 0


def test_bucket_plans() -> None:
    ref = np.arange(0, 10 * MIN + 1, MIN, dtype=np.int64)
    p = plan(ref, 5 * MIN)
    assert p is not None
    assert (p.base_ms, p.width_ms, p.stride, p.per_window) == (-5 * MIN, MIN, 1, 5)
    assert p.n == 10 + 5 + 1
    p = plan(ref, 90 * S)  # gcd(60 s, 90 s) = 30 s
    assert p is not None and (p.width_ms, p.stride, p.per_window) == (30 * S, 2, 3)
    single = plan(np.array([7 * MIN], np.int64), 7 * 86_400_000)
    assert single is not None and (single.n, single.per_window) == (2, 1)
    # A range that shares no useful divisor with the step: too many buckets, read samples.
    assert plan(np.arange(0, 86_400_000, 7 * S + 1, dtype=np.int64), 86_400_000) is None


def test_only_the_aggregates_asked_for_are_computed(stores: tuple[Spy, FakeMetricStore]) -> None:
    spy, _ = stores
    matchers = [Matcher("__name__", "=", "fleet_gpu_power_watts")]
    full = spy.select_buckets(matchers, 0, MIN, 30)
    only_max = spy.select_buckets(matchers, 0, MIN, 30, ("max",))
    assert full is not None and only_max is not None
    assert np.array_equal(full.max, only_max.max, equal_nan=True)
    assert np.array_equal(full.count, only_max.count)
    assert np.isnan(only_max.sum).all() and np.isnan(only_max.last).all()
    with pytest.raises(ValueError, match="unknown bucket aggregates"):
        spy.select_buckets(matchers, 0, MIN, 30, ("median",))
