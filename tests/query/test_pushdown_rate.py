"""``rate`` and ``increase`` pushed down to buckets give the answers of evaluating samples.

:class:`BucketingFake` is a second, independent implementation of the
:class:`~fleetscope.store.SupportsBuckets` contract (the DuckDB store's is the first): plain
NumPy over the fake's own samples, one bucket at a time. The same random counters (resets,
jittered times, samples on window edges, gaps, staleness markers, short-lived and sparse
series) go into it and into :class:`~fleetscope.store.FakeMetricStore`, whose evaluator reads
samples; every query runs on both and the results must agree to 1e-9 relative (the pushdown
adds the counter's steps in another order). Counters on the fake prove which path answered.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from fleetscope.query import QueryResult
from fleetscope.query.engine import Evaluator
from fleetscope.store import (
    BUCKET_AGGREGATES,
    COUNTER_AGGREGATE,
    STALE_NAN,
    Buckets,
    FakeMetricStore,
    Matcher,
    SampleBatch,
    SelectHints,
    Series,
    check_bucket_aggregates,
)

from .reference_buckets import is_stale, reference_buckets

S = 1000
MIN = 60 * S
HOUR = 60 * MIN
END = 4 * HOUR  # the history's length
LE = ["0.1", "0.5", "1", "+Inf"]


@dataclass
class BucketingFake(FakeMetricStore):
    """A :class:`FakeMetricStore` that also aggregates buckets (``SupportsBuckets``), counting
    bucket reads and sample reads. ``answer``: ``"buckets"``, ``"none"`` (it declines) or
    ``"no-counter"`` (it leaves the counter arrays out)."""

    answer: str = "buckets"
    bucket_calls: int = 0
    bucket_answers: int = 0
    sample_reads: int = 0
    asked: tuple[str, ...] = ()  # the aggregates of the last bucket read

    def select(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> list[Series]:
        self.sample_reads += 1
        return super().select(matchers, mint_ms, maxt_ms, hints)

    def select_buckets(
        self,
        matchers: Sequence[Matcher],
        base_ms: int,
        width_ms: int,
        n: int,
        aggregates: Collection[str] = BUCKET_AGGREGATES,
    ) -> Buckets | None:
        self.bucket_calls += 1
        self.asked = tuple(sorted(aggregates))
        check_bucket_aggregates(aggregates)
        if self.answer == "none":
            return None
        found = FakeMetricStore.select(self, matchers, base_ms, base_ms + (n - 1) * width_ms)
        if any((np.isnan(s.values) & ~is_stale(s.values)).any() for s in found):
            return None  # a real NaN: Prometheus' NaN rules need the samples
        wanted = set(aggregates)
        if self.answer == "no-counter":
            wanted.discard(COUNTER_AGGREGATE)
        self.bucket_answers += 1
        return reference_buckets(found, base_ms, width_ms, n, wanted)


# ----------------------------------------------------------------------------- data


Row = tuple[dict[str, str], int, float]


def _counter(
    rng: np.random.Generator,
    labels: dict[str, str],
    times: npt.NDArray[np.int64],
    rate: float = 3.0,
    *,
    integers: bool = False,
) -> list[Row]:
    """A counter at ``times``: random increments, a reset now and then (to 0 or to a part of
    the value), values rounded to 3 decimals (or integers)."""
    value = float(rng.uniform(0, 50))
    rows: list[Row] = []
    for t in times.tolist():
        if rng.random() < 0.03:
            value = 0.0 if rng.random() < 0.5 else value * float(rng.uniform(0, 0.5))
        else:
            value += float(rng.exponential(rate))
        value = float(np.round(value)) if integers else float(np.round(value, 3))
        rows.append((labels, t, value))
    return rows


def _grid(start: int, end: int, every: int) -> npt.NDArray[np.int64]:
    return np.arange(start, end + 1, every, dtype=np.int64)


def _history() -> SampleBatch:
    """Counters over 4 h: see each series' comment."""
    rng = np.random.default_rng(7)
    rows: list[Row] = []

    def name(kind: str) -> dict[str, str]:
        return {"__name__": "requests_total", "kind": kind}

    # On the 15 s grid: samples sit exactly on window edges.
    rows += _counter(rng, name("grid"), _grid(0, END, 15 * S))
    # Jittered around the 15 s grid, integer counts.
    jittered = _grid(15 * S, END, 15 * S) + rng.integers(-6 * S, 6 * S, END // (15 * S))
    rows += _counter(rng, name("jitter"), jittered, integers=True)
    # A staleness marker, then a gap longer than the longest range, then on again.
    gappy = _counter(rng, name("gap"), _grid(0, END, 30 * S))
    rows += [r for r in gappy if not HOUR < r[1] < HOUR + 75 * MIN]
    rows.append((name("gap"), HOUR + 7 * S, STALE_NAN))
    # Starts and ends inside windows, a marker after its last sample.
    late = _counter(rng, name("late"), _grid(67 * MIN + 13 * S, 151 * MIN, 10 * S), 50.0)
    rows += [*late, (name("late"), 151 * MIN + 1, STALE_NAN)]
    # Sparse: one-sample (and empty) windows for the short ranges.
    rows += _counter(rng, name("sparse"), _grid(2 * MIN, END, 7 * MIN) + 1234, 100.0)
    # Classic histogram buckets (cumulative), two instances.
    for instance in ("a", "b"):
        times = _grid(5 * S, END, 15 * S) + (0 if instance == "a" else 3 * S)
        total = np.zeros(len(LE))
        for t in times.tolist():
            if rng.random() < 0.01:
                total[:] = 0.0  # the process restarted: every bucket resets
            total += np.cumsum(rng.poisson([2.0, 5.0, 3.0, 1.0]))
            for le, v in zip(LE, total.tolist(), strict=True):
                rows.append(({"__name__": "x_bucket", "instance": instance, "le": le}, t, v))
    rows.sort(key=lambda r: r[1])
    return SampleBatch.from_rows(rows)


@pytest.fixture(scope="module")
def history() -> SampleBatch:
    return _history()


def _stores(batch: SampleBatch, answer: str = "buckets") -> tuple[BucketingFake, FakeMetricStore]:
    pushed, plain = BucketingFake(answer=answer), FakeMetricStore()
    pushed.append(batch)
    plain.append(batch)
    return pushed, plain


def _same(a: QueryResult, b: QueryResult) -> None:
    assert [s.labels for s in a.series] == [s.labels for s in b.series]
    for x, y in zip(a.series, b.series, strict=True):
        assert x.t_ms.tolist() == y.t_ms.tolist()
        np.testing.assert_allclose(x.values, y.values, rtol=1e-9, atol=0, equal_nan=True)


def _pushed(store: BucketingFake, run: Callable[[Evaluator], QueryResult]) -> QueryResult:
    """``run`` on ``store``, asserting it was answered from buckets without reading samples."""
    calls, answers, reads = store.bucket_calls, store.bucket_answers, store.sample_reads
    got = run(Evaluator(store))
    assert store.bucket_answers > answers, "answered from buckets"
    assert store.bucket_calls - calls == store.bucket_answers - answers
    assert store.sample_reads == reads, "no samples read"
    assert store.asked == ("counter", "last")
    return got


# ----------------------------------------------------------------------------- tests


RANGES = {"15s": 15 * S, "1m": MIN, "5m": 5 * MIN, "7m30s": 450 * S, "1h": HOUR}


@pytest.mark.parametrize("func", ["rate", "increase"])
@pytest.mark.parametrize("range_", list(RANGES))
def test_range_queries_match_sample_evaluation(
    history: SampleBatch, func: str, range_: str
) -> None:
    pushed, plain = _stores(history)
    query = f"{func}(requests_total[{range_}])"
    steps = {RANGES[range_], MIN, 150 * S, 7 * MIN}  # step == range, and both sides of it
    answered = 0
    for step in sorted(steps):
        for start, end in [(0, END + 10 * MIN), (197 * S, END - 31 * S)]:
            got = _pushed(pushed, lambda e: e.range(query, start, end, step))  # noqa: B023
            want = Evaluator(plain).range(query, start, end, step)
            _same(got, want)
            answered += sum(int(np.isfinite(s.values).sum()) for s in got.series)
    assert answered > 1000  # the comparison compared values


@pytest.mark.parametrize("func", ["rate", "increase"])
def test_instant_queries_with_offset_and_at(history: SampleBatch, func: str) -> None:
    pushed, plain = _stores(history)
    queries = [
        f"{func}(requests_total[5m])",
        f"{func}(requests_total[15s])",
        f"{func}(requests_total[7m30s] offset 10m)",
        f"{func}(requests_total[1m] offset 1m30s)",
        f"{func}(requests_total[1h] @ 7200)",
        f"{func}(requests_total[5m] @ 4037.5 offset 5m)",
        f"sum by (le) ({func}(x_bucket[5m]))",
        f"histogram_quantile(0.99, sum by (le) ({func}(x_bucket[5m])))",
    ]
    at = [0, 37 * S, HOUR, 67 * MIN + 13 * S, 67 * MIN + 28 * S, 151 * MIN, END, END + 10 * MIN]
    for query in queries:
        for t in at:
            got = _pushed(pushed, lambda e: e.instant(query, t))  # noqa: B023
            _same(got, Evaluator(plain).instant(query, t))


@pytest.mark.parametrize(
    "query",
    [
        "sum by (le) (rate(x_bucket[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))",
        "histogram_quantile(0.5, sum by (le, instance) (increase(x_bucket[7m30s])))",
        "rate(requests_total[10m] @ 5400)",  # fixed windows, one per query
    ],
)
def test_histogram_and_at_range_queries(history: SampleBatch, query: str) -> None:
    pushed, plain = _stores(history)
    for start, end, step in [(0, END, MIN), (10 * MIN, 3 * HOUR, 5 * MIN), (0, END, 10 * MIN)]:
        got = _pushed(pushed, lambda e: e.range(query, start, end, step))  # noqa: B023
        want = Evaluator(plain).range(query, start, end, step)
        _same(got, want)
        assert any(np.isfinite(s.values).any() for s in got.series)


def test_a_worked_example() -> None:
    """0, 10, 4 (a reset), 14, 24 every 15 s: ``increase`` over [0, 60 s] is 10 + 4 + 10 + 10,
    the first sample on the window's left edge (the edge sample of the bucket before)."""
    labels = {"__name__": "requests_total", "kind": "w"}
    batch = SampleBatch.from_rows(
        [(labels, k * 15 * S, v) for k, v in enumerate([0.0, 10.0, 4.0, 14.0, 24.0])]
    )
    pushed, plain = _stores(batch)
    for query, want in [
        ("increase(requests_total[1m])", 34.0),
        ("rate(requests_total[1m])", 34 / 60),
    ]:
        got = _pushed(pushed, lambda e: e.instant(query, MIN))  # noqa: B023
        assert got.series[0].labels == {"kind": "w"}  # the metric name is dropped
        assert got.series[0].values.tolist() == pytest.approx([want], rel=1e-15)
        _same(got, Evaluator(plain).instant(query, MIN))
    # One sample in the window (the edge one only): no value.
    got = _pushed(pushed, lambda e: e.instant("rate(requests_total[15s])", 75 * S))
    assert got.series == []


@pytest.mark.parametrize("answer", ["none", "no-counter"])
def test_a_store_that_cannot_makes_the_evaluator_read_samples(
    history: SampleBatch, answer: str
) -> None:
    pushed, plain = _stores(history, answer)
    query = "sum by (kind) (rate(requests_total[5m]))"
    got = Evaluator(pushed).range(query, 0, END, MIN)
    assert pushed.bucket_calls == 1 and pushed.bucket_answers == (answer == "no-counter")
    assert pushed.sample_reads == 1
    _same(got, Evaluator(plain).range(query, 0, END, MIN))
    assert len(got.series) == 4  # "sparse" has no two samples 5 m apart


def test_a_real_nan_makes_the_evaluator_read_samples() -> None:
    labels = {"__name__": "requests_total", "kind": "nan"}
    batch = SampleBatch.from_rows(
        [(labels, k * 15 * S, float("nan") if k == 9 else float(k)) for k in range(80)]
    )
    pushed, plain = _stores(batch)
    for func in ("rate", "increase"):
        query = f"{func}(requests_total[3m])"
        reads = pushed.sample_reads
        got = Evaluator(pushed).range(query, 0, 20 * MIN, 30 * S)
        assert pushed.sample_reads == reads + 1
        _same(got, Evaluator(plain).range(query, 0, 20 * MIN, 30 * S))
    assert pushed.bucket_calls == 2 and pushed.bucket_answers == 0


def test_infinity_in_a_window_reads_samples_and_elsewhere_does_not() -> None:
    """An infinite counter value: windows reading it are computed from samples (Inf arithmetic
    depends on the order of operations); windows that skip it stay pushed down."""
    labels = {"__name__": "requests_total", "kind": "inf"}
    values = [float(k) for k in range(160)]
    values[42] = float("inf")  # at 10 m 30 s
    batch = SampleBatch.from_rows([(labels, k * 15 * S, v) for k, v in enumerate(values)])
    pushed, plain = _stores(batch)
    for func in ("rate", "increase"):
        # Windows [t - 1m, t] for t on 5 m: none holds 10 m 30 s.
        query = f"{func}(requests_total[1m])"
        got = _pushed(pushed, lambda e: e.range(query, 0, 35 * MIN, 5 * MIN))  # noqa: B023
        _same(got, Evaluator(plain).range(query, 0, 35 * MIN, 5 * MIN))
        # Windows [t - 5m, t]: the one ending at 15 m holds it.
        query = f"{func}(requests_total[5m])"
        reads, answers = pushed.sample_reads, pushed.bucket_answers
        got = Evaluator(pushed).range(query, 0, 35 * MIN, 5 * MIN)
        assert pushed.bucket_answers == answers + 1 and pushed.sample_reads == reads + 1
        want = Evaluator(plain).range(query, 0, 35 * MIN, 5 * MIN)
        _same(got, want)
        assert not np.isfinite(got.series[0].values).all()  # the Inf (or NaN) came through


def test_the_reference_buckets_follow_the_contract() -> None:
    """The fake's buckets on a small hand-made series (so the comparisons above compare with
    a store that keeps the contract): bounds ``(left, right]``, edges, markers left out."""
    labels = {"__name__": "requests_total", "kind": "c"}
    rows: list[Row] = [
        (labels, 0, 5.0),  # bucket 0 (only t == base), its edge
        (labels, 1, 7.0),  # bucket 1
        (labels, 10 * S, 2.0),  # bucket 1, its right end: a reset
        (labels, 12 * S, STALE_NAN),  # left out
        (labels, 25 * S, 4.0),  # bucket 3
    ]
    store = BucketingFake()
    store.append(SampleBatch.from_rows(rows))
    b = store.select_buckets([Matcher.equal("kind", "c")], 0, 10 * S, 4, ("last", "counter"))
    assert b is not None and b.first is not None and b.increase is not None
    assert b.first_t is not None and b.last_t is not None
    assert b.count.tolist() == [[1, 2, 0, 1]]
    assert b.has_edge.tolist() == [[True, True, False, False]]
    assert b.edge[0, :2].tolist() == [5.0, 2.0]
    assert b.first[0].tolist()[:2] == [5.0, 7.0] and b.first[0, 3] == 4.0
    assert b.increase[0, [0, 1, 3]].tolist() == [0.0, 2.0, 0.0]  # 7 -> 2: a reset, +2
    assert b.first_t[0].tolist() == [0, 1, 0, 25 * S]
    assert b.last_t[0].tolist() == [0, 10 * S, 0, 25 * S]
    assert np.isnan(b.sum).all() and np.isnan(b.increase[0, 2])
