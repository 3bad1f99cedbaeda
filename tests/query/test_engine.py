"""The embedded evaluator through the Engine port: result shapes, errors, hints, metadata.

PromQL semantics are covered by the ``.test`` scripts (test_promql_scripts.py); these tests pin
what the scripts cannot see: result types and ordering as the HTTP API returns them, error
types and messages, the SelectHints the store receives, ``/api/v1/series``-style calls, and
that a range query equals instant queries at each of its steps (on a thinning DuckDB store and
on the non-thinning fake).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from fleetscope.query import Engine, QueryError
from fleetscope.query import aggregate as aggregate_module
from fleetscope.query.engine import Evaluator
from fleetscope.query.value import Vector
from fleetscope.store import (
    STALE_NAN,
    FakeMetricStore,
    Matcher,
    SampleBatch,
    SelectHints,
    Series,
)
from fleetscope.store.duckdb import DuckDBStore

MIN = 60_000


def _rows() -> list[tuple[dict[str, str], int, float]]:
    rows: list[tuple[dict[str, str], int, float]] = []
    rng = np.random.default_rng(7)
    for gpu in range(4):
        uuid = f"GPU-{gpu}"
        base = {"node": f"n{gpu // 2}", "gpu": str(gpu % 2), "gpu_uuid": uuid, "gpu_model": "H100"}
        team = "vision" if gpu < 2 else "nlp"
        energy = 0.0
        for k in range(0, 121):  # 15 s samples for 30 minutes
            t = k * 15_000
            if gpu == 3 and 40 <= k < 70:
                continue  # a gap longer than the lookback window
            util = float(np.round(rng.uniform(0, 1), 3))
            energy = 0.0 if (gpu == 1 and k == 70) else energy + 15 * 300 * util
            rows.append(({"__name__": "fleet_gpu_utilization_ratio", **base}, t, util))
            rows.append(({"__name__": "fleet_gpu_energy_joules_total", **base}, t, energy))
            if gpu != 2 or k < 80:
                alloc = {
                    **base,
                    "job": f"j{gpu}",
                    "team": team,
                    "user": "u",
                    "workload": "training",
                }
                rows.append(
                    ({"__name__": "fleet_gpu_allocation", **alloc, "tier": "production"}, t, 1.0)
                )
    return rows


@pytest.fixture(scope="module")
def duck() -> DuckDBStore:
    store = DuckDBStore(":memory:")
    store.append(SampleBatch.from_rows(_rows()))
    return store


@pytest.fixture(scope="module")
def fake() -> FakeMetricStore:
    store = FakeMetricStore()
    store.append(SampleBatch.from_rows(_rows()))
    return store


@dataclass
class RecordingStore(FakeMetricStore):
    """The fake store, remembering the hints of every select."""

    hints: list[SelectHints | None] = field(default_factory=list)

    def select(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> list[Series]:
        self.hints.append(hints)
        return super().select(matchers, mint_ms, maxt_ms, hints)


def test_evaluator_is_an_engine(duck: DuckDBStore) -> None:
    engine: Engine = Evaluator(duck)
    assert engine.instant("1", 0).result_type == "scalar"


@pytest.mark.parametrize(
    ("query", "result_type"),
    [
        pytest.param("fleet_gpu_utilization_ratio", "vector", id="selector"),
        pytest.param("sum(fleet_gpu_utilization_ratio)", "vector", id="aggregation"),
        pytest.param("1 + 2", "scalar", id="scalar"),
        pytest.param('"text"', "string", id="string"),
        pytest.param("fleet_gpu_utilization_ratio[1m]", "matrix", id="range-vector"),
        pytest.param("fleet_gpu_utilization_ratio[2m:30s]", "matrix", id="subquery"),
    ],
)
def test_instant_result_types(duck: DuckDBStore, query: str, result_type: str) -> None:
    assert Evaluator(duck).instant(query, 10 * MIN).result_type == result_type


def test_instant_vectors_are_sorted_by_labels_unless_ordered(duck: DuckDBStore) -> None:
    engine = Evaluator(duck)
    plain = engine.instant("fleet_gpu_utilization_ratio * 1", 10 * MIN).series
    keys = [sorted(s.labels.items()) for s in plain]
    assert keys == sorted(keys) and len(keys) == 4
    ordered = engine.instant("sort_desc(fleet_gpu_utilization_ratio)", 10 * MIN).series
    values = [float(s.values[0]) for s in ordered]
    assert values == sorted(values, reverse=True)


def test_raw_range_vector_returns_the_samples_in_the_window(duck: DuckDBStore) -> None:
    result = Evaluator(duck).instant('fleet_gpu_utilization_ratio{gpu_uuid="GPU-0"}[1m]', 10 * MIN)
    (series,) = result.series
    assert series.t_ms.tolist() == [9 * MIN, 9 * MIN + 15_000, 9 * MIN + 30_000, 9 * MIN + 45_000,
                                    10 * MIN]  # fmt: skip


def test_range_query_of_a_scalar_is_one_series(duck: DuckDBStore) -> None:
    result = Evaluator(duck).range("time()", 0, 2 * MIN, MIN)
    assert result.result_type == "matrix"
    (series,) = result.series
    assert series.labels == {}
    assert series.values.tolist() == [0.0, 60.0, 120.0]


def test_range_query_leaves_out_steps_without_samples(duck: DuckDBStore) -> None:
    result = Evaluator(duck).range(
        'fleet_gpu_utilization_ratio{gpu_uuid="GPU-3"}', 0, 30 * MIN, MIN
    )
    (series,) = result.series
    # samples stop at 9m45s and resume at 17m30s: the 5m lookback reaches to 14m45s
    steps = series.t_ms.tolist()
    assert 14 * MIN in steps
    assert not {15 * MIN, 16 * MIN, 17 * MIN} & set(steps)
    assert len(steps) == 28


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("sum(", "unclosed left parenthesis", id="parse"),
        pytest.param("{a=~'.*'}", "at least one non-empty matcher", id="empty-matchers"),
        pytest.param(
            'sort_by_label(fleet_gpu_up, "node")',
            "the function sort_by_label() is not supported by Fleetscope's embedded engine",
            id="function",
        ),
        pytest.param(
            "limitk(1, fleet_gpu_up)",
            "the aggregation limitk() is not supported by Fleetscope's embedded engine",
            id="aggregation",
        ),
        pytest.param(
            "mad_over_time(fleet_gpu_up[5m])",
            "the function mad_over_time() is not supported",
            id="range-function",
        ),
    ],
)
def test_bad_queries_are_bad_data(duck: DuckDBStore, query: str, message: str) -> None:
    with pytest.raises(QueryError) as err:
        Evaluator(duck).instant(query, 0)
    assert err.value.error_type == "bad_data"
    assert message in err.value.message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((0, MIN, 0), "zero or negative query resolution step", id="step"),
        pytest.param((MIN, 0, MIN), "end timestamp must not be before start time", id="order"),
        pytest.param((0, 11_000 * MIN, MIN), "exceeded maximum resolution of 11,000", id="points"),
    ],
)
def test_range_parameters_are_checked(
    duck: DuckDBStore, args: tuple[int, int, int], message: str
) -> None:
    with pytest.raises(QueryError, match=message) as err:
        Evaluator(duck).range("1", *args)
    assert err.value.error_type == "bad_data"


def test_range_query_of_a_range_vector_is_rejected(duck: DuckDBStore) -> None:
    with pytest.raises(QueryError, match='invalid expression type "range vector"'):
        Evaluator(duck).range("fleet_gpu_up[5m]", 0, MIN, MIN)


def test_many_to_many_matching_is_an_execution_error(duck: DuckDBStore) -> None:
    with pytest.raises(QueryError) as err:
        Evaluator(duck).instant(
            "fleet_gpu_utilization_ratio * on(node) group_left(team) fleet_gpu_allocation",
            10 * MIN,
        )
    assert err.value.error_type == "execution"
    assert 'found duplicate series for the match group {node="n0"} on the right hand-side' in (
        err.value.message
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("a + on(x) c", "many-to-one matching must be explicit (group_left/group_right)"),
        ("{__name__=~'a|b'} * on(x) group_left() c", "grouping labels must ensure unique matches"),
    ],
)
def test_matches_that_are_not_unique_are_execution_errors(query: str, message: str) -> None:
    store = FakeMetricStore()
    store.append(
        SampleBatch.from_rows(
            [({"__name__": n, "x": "1", "y": y}, 0, 1.0) for n, y in (("a", "1"), ("a", "2"))]
            + [({"__name__": "b", "x": "1", "y": "1"}, 0, 2.0)]
            + [({"__name__": "c", "x": "1"}, 0, 3.0)]
        )
    )
    with pytest.raises(QueryError) as err:
        Evaluator(store).instant(query, MIN)
    assert err.value.error_type == "execution"
    assert f"multiple matches for labels: {message}" in err.value.message
    fine = "a{y='1'} + on(x) c" if query.startswith("a") else "b * on(x) group_left() c"
    assert len(Evaluator(store).instant(fine, MIN).series) == 1  # one match each: no error


def _job_change() -> FakeMetricStore:
    """GPU-a busy at 0.5 for 20 minutes; job j1 until 9m (a staleness marker at 10m), then j2,
    both for team vision."""
    util = {"__name__": "fleet_gpu_utilization_ratio", "gpu_uuid": "GPU-a"}
    alloc = {"__name__": "fleet_gpu_allocation", "gpu_uuid": "GPU-a", "team": "vision"}
    rows = [(util, k * MIN, 0.5) for k in range(21)]
    rows += [({**alloc, "job": "j1"}, k * MIN, 1.0) for k in range(10)]
    rows += [({**alloc, "job": "j1"}, 10 * MIN, STALE_NAN)]
    rows += [({**alloc, "job": "j2"}, k * MIN, 1.0) for k in range(10, 21)]
    store = FakeMetricStore()
    store.append(SampleBatch.from_rows(rows))
    return store


def test_join_pairs_with_equal_output_labels_are_one_series() -> None:
    """A GPU's successive jobs for one team match as two pairs with one output label set: one
    series over the range, as Prometheus' range evaluation merges them."""
    engine = Evaluator(_job_change())
    join = "fleet_gpu_utilization_ratio * on(gpu_uuid) group_left(team{}) fleet_gpu_allocation"
    (team,) = engine.range(join.format(""), 0, 20 * MIN, MIN).series
    assert team.labels == {"gpu_uuid": "GPU-a", "team": "vision"}
    assert team.t_ms.tolist() == [k * MIN for k in range(21)]
    assert team.values.tolist() == [0.5] * 21
    by_job = engine.range(join.format(", job"), 0, 20 * MIN, MIN).series
    assert {s.labels["job"]: len(s.values) for s in by_job} == {"j1": 10, "j2": 11}
    week = engine.instant(f"sum_over_time(({join.format('')})[20m:1m])", 20 * MIN)
    assert week.series[0].values.tolist() == [0.5 * 21]


def test_selects_pass_prometheus_hints() -> None:
    store = RecordingStore()
    store.append(SampleBatch.from_rows(_rows()[:50]))
    engine = Evaluator(store)
    engine.range("rate(fleet_gpu_energy_joules_total[5m]) + fleet_gpu_up", 10 * MIN, 20 * MIN, MIN)
    rate_hints, up_hints = store.hints
    assert rate_hints == SelectHints(
        start_ms=10 * MIN, end_ms=20 * MIN, step_ms=MIN, func="rate", range_ms=5 * MIN
    )
    # an instant selector leaves func unset, so the store may thin to one sample per step
    assert up_hints == SelectHints(start_ms=10 * MIN, end_ms=20 * MIN, step_ms=MIN)
    store.hints.clear()
    engine.range("fleet_gpu_up offset 1m", 10 * MIN, 20 * MIN, MIN)
    assert store.hints == [SelectHints(start_ms=9 * MIN, end_ms=19 * MIN, step_ms=MIN)]


def test_a_selector_read_twice_in_one_query_is_selected_once() -> None:
    store = RecordingStore()
    store.append(SampleBatch.from_rows(_rows()))
    engine = Evaluator(store)
    u, a = "fleet_gpu_utilization_ratio", "fleet_gpu_allocation"
    idle = f"sum_over_time(count(({u} < 0.5) and on(gpu_uuid) {a})[30m:1m])"
    held = f"sum_over_time(count({u} and on(gpu_uuid) {a})[30m:1m])"
    share = engine.instant(f"{idle} / {held}", 30 * MIN)
    assert len(store.hints) == 2  # u and a, once each, for both subqueries
    apart = [engine.instant(q, 30 * MIN).series[0].values[0] for q in (idle, held)]
    assert len(store.hints) == 6
    assert share.series[0].values[0] == pytest.approx(apart[0] / apart[1])
    # the same selector under another grid or range is another select
    store.hints.clear()
    engine.range(f"{u} - {u} offset 1m + count_over_time({u}[1m])", 0, 10 * MIN, MIN)
    assert len(store.hints) == 3


QUERIES = [
    "fleet_gpu_utilization_ratio",
    "avg(fleet_gpu_utilization_ratio)",
    "sum by (team) (count_over_time(fleet_gpu_allocation[5m]))",
    "fleet_gpu_utilization_ratio * on(gpu_uuid) group_left(team) fleet_gpu_allocation",
    "avg by (team) (fleet_gpu_utilization_ratio * on(gpu_uuid) group_left(team)"
    " fleet_gpu_allocation)",
    "rate(fleet_gpu_energy_joules_total[2m])",
    "irate(fleet_gpu_energy_joules_total[2m]) > 1000",
    "topk(2, fleet_gpu_utilization_ratio)",
    "quantile(0.9, fleet_gpu_utilization_ratio)",
    "stddev by (node) (fleet_gpu_utilization_ratio)",
    'count_values("u", round(fleet_gpu_utilization_ratio, 0.25))',
    "max_over_time(avg(fleet_gpu_utilization_ratio)[5m:1m])",
    "fleet_gpu_utilization_ratio offset 3m and on(gpu_uuid) fleet_gpu_allocation",
    "fleet_gpu_utilization_ratio @ 600 - fleet_gpu_utilization_ratio",
    'absent(fleet_gpu_allocation{gpu_uuid="GPU-2"})',
    "deriv(fleet_gpu_energy_joules_total[3m])",
    "quantile_over_time(0.5, fleet_gpu_utilization_ratio[3m])",
    "stddev_over_time(fleet_gpu_utilization_ratio[3m])",
    "changes(fleet_gpu_allocation[10m]) or resets(fleet_gpu_energy_joules_total[10m])",
]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("store_name", ["duck", "fake"])
def test_range_query_equals_instant_queries_at_each_step(
    query: str, store_name: str, request: pytest.FixtureRequest
) -> None:
    engine = Evaluator(request.getfixturevalue(store_name))
    start, end, step = 2 * MIN, 30 * MIN, 150_000
    ranged = {
        tuple(sorted(s.labels.items())): dict(zip(s.t_ms.tolist(), s.values.tolist(), strict=True))
        for s in engine.range(query, start, end, step).series
    }
    for t in range(start, end + 1, step):
        instant = engine.instant(query, t)
        got = {tuple(sorted(s.labels.items())): float(s.values[0]) for s in instant.series}
        want = {k: v[t] for k, v in ranged.items() if t in v}
        assert got.keys() == want.keys(), (query, t)
        for k, v in got.items():
            assert v == pytest.approx(want[k], rel=1e-9, nan_ok=True), (query, t, k)


def test_duckdb_thinning_does_not_change_results(duck: DuckDBStore, fake: FakeMetricStore) -> None:
    for query in QUERIES:
        a = Evaluator(duck).range(query, 0, 30 * MIN, 45_000).series
        b = Evaluator(fake).range(query, 0, 30 * MIN, 45_000).series
        assert [s.labels for s in a] == [s.labels for s in b], query
        for x, y in zip(a, b, strict=True):
            assert x.t_ms.tolist() == y.t_ms.tolist(), query
            np.testing.assert_allclose(x.values, y.values, rtol=1e-12, err_msg=query)


def test_series_and_labels_take_match_selectors(duck: DuckDBStore) -> None:
    engine = Evaluator(duck)
    found = engine.series(['fleet_gpu_allocation{team="nlp"}', "fleet_gpu_up"], None, None)
    assert [s["gpu_uuid"] for s in found] == ["GPU-2", "GPU-3"]
    assert (
        engine.series(['{__name__=~"fleet_gpu_alloc.*", gpu_uuid="GPU-0"}'], 0, MIN)[0]["job"]
        == "j0"
    )
    names = engine.label_names(["fleet_gpu_allocation"], None, None)
    assert {"team", "job", "tier", "__name__"} <= set(names)
    assert "team" not in engine.label_names(["fleet_gpu_utilization_ratio"], None, None)
    assert engine.label_values("team", [], None, None) == ["nlp", "vision"]
    assert engine.label_values("gpu_uuid", ['fleet_gpu_allocation{team="vision"}'], None, None) == [
        "GPU-0",
        "GPU-1",
    ]
    # GPU-2's allocation ends at 20m: a range after that leaves it out
    assert engine.label_values("job", ["fleet_gpu_allocation"], 25 * MIN, 30 * MIN) == [
        "j0",
        "j1",
        "j3",
    ]


def test_match_must_be_a_series_selector(duck: DuckDBStore) -> None:
    with pytest.raises(QueryError, match="not a series selector") as err:
        Evaluator(duck).series(["sum(fleet_gpu_up)"], None, None)
    assert err.value.error_type == "bad_data"


def test_go_regex_syntax_in_matchers(duck: DuckDBStore) -> None:
    engine = Evaluator(duck)
    found = engine.instant('fleet_gpu_allocation{team=~"((?i)NLP)"}', 10 * MIN).series
    assert {s.labels["team"] for s in found} == {"nlp"}


# Prometheus 2.42's own behaviour where it is surprising, checked against a real Prometheus 2.42
# (the conformance suite runs the same queries); pinned here so the quirks stay deliberate.


def test_range_argument_with_at_slides_in_calls_evaluated_per_step(duck: DuckDBStore) -> None:
    """predict_linear is evaluated per step, so ``x[5m] @ T`` moves with the steps from T,
    over data loaded up to T only: results while the window still reaches it."""
    q = "predict_linear(fleet_gpu_energy_joules_total{gpu_uuid='GPU-0'}[5m] @ 600, 60)"
    (series,) = Evaluator(duck).range(q, 10 * MIN, 30 * MIN, MIN).series
    assert series.t_ms.tolist() == [t * MIN for t in range(10, 15)]
    # a call evaluated once keeps the window at T
    (once,) = Evaluator(duck).range(q.replace("predict_linear", "deriv").replace(", 60)", ")"),
                                    10 * MIN, 30 * MIN, MIN).series  # fmt: skip
    assert len(once.t_ms) == 21 and len(set(once.values.tolist())) == 1


def test_step_invariant_aggregation_takes_its_parameter_at_the_first_step(
    duck: DuckDBStore,
) -> None:
    # k would grow from 1 at 10m to 2 at 20m; Prometheus reads it once, at 10m
    q = "topk(time() / 600, fleet_gpu_utilization_ratio @ 600)"
    (series,) = Evaluator(duck).range(q, 10 * MIN, 20 * MIN, MIN).series
    assert len(series.t_ms) == 11


def test_dates_of_nan_are_gos() -> None:
    engine = Evaluator(FakeMetricStore())
    answers = {
        name: engine.instant(f"{name}(vector(NaN))", 0).series[0].values[0]
        for name in ("year", "month", "day_of_month", "hour", "minute", "day_of_week")
    }
    assert answers == {
        "year": 292277026596,
        "month": 12,
        "day_of_month": 4,
        "hour": 15,
        "minute": 30,
        "day_of_week": 0,
    }


def test_topk_ties_follow_prometheus_heap() -> None:
    store = FakeMetricStore()
    store.append(
        SampleBatch.from_rows(
            [({"__name__": "m", "i": str(i)}, 0, v) for i, v in enumerate([5, 5, 5, 7])]
        )
    )
    result = Evaluator(store).instant("topk(3, m)", 0)
    # the heap's root (the first 5) makes way for 7, the later 5s stay (a sort by value and
    # input order would keep the first two 5s)
    assert [s.labels["i"] for s in result.series] == ["3", "1", "2"]


def _avg_walking_every_member(
    vec: Vector, gid: np.ndarray, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """``avg`` by the member-by-member walk with Prometheus' guards (no shortcut)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aggregate_module, "_running_mean", lambda *args: None)
        return aggregate_module._incremental("avg", vec, gid, groups)


def test_avg_takes_its_shortcut_bit_for_bit() -> None:
    """The shortcut for finite values gives avg's walk bit for bit (and steps aside where the
    walk's guards for infinite means, or -0, would matter: the walk then answers)."""
    rng = np.random.default_rng(7)
    took = 0
    for trial in range(600):
        n, steps = int(rng.integers(1, 30)), int(rng.integers(1, 20))
        first_seen: dict[int, int] = {}
        gid = np.array(
            [first_seen.setdefault(int(g), len(first_seen)) for g in rng.integers(0, n, n)]
        )
        values = rng.normal(size=(n, steps)) * 10.0 ** float(rng.integers(-5, 300))
        if trial % 4 == 0:
            values = np.round(values)
        special = [np.inf, np.nan, -0.0, 1.7e308][trial % 5] if trial % 5 < 4 else None
        if special is not None:
            values[rng.random(values.shape) < 0.2] = special
        vec = Vector([()] * n, values, rng.random((n, steps)) < 0.8)
        order, starts, ids = aggregate_module._sorted_groups(gid)
        took += aggregate_module._running_mean(vec, order, starts, ids, len(first_seen)) is not None
        got = aggregate_module._incremental("avg", vec, gid, len(first_seen))
        want = _avg_walking_every_member(vec, gid, len(first_seen))
        np.testing.assert_array_equal(got[1], want[1])
        assert got[0][want[1]].view(np.int64).tolist() == want[0][want[1]].view(np.int64).tolist()
    assert 200 < took < 600  # both ways were taken
