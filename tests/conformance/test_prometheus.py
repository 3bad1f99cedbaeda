"""PromQL conformance: every corpus query, on Fleetscope's embedded evaluator and on a real
Prometheus 2.42 holding the same remote-written data, must give the same answer.

One case per (query, instant|range): the instant case asks at each of ``Window.instant_ms``,
the range case over each of ``Window.ranges_ms``; ``harness.compare`` judges (with
prometheus/compliance's rules). Queries Fleetscope is known not to match are listed in
:data:`KNOWN_MISMATCHES` with the reason; they run like the others and must still differ (a
strict expected failure: a query that starts matching fails until it is taken off the list).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from fleetscope.query import Engine, QueryResult
from fleetscope.query.engine import Evaluator

from .conftest import Loaded
from .corpus import QUERIES
from .harness import Querier, compare, is_ordered, outcome, seconds

MODES = ("instant", "range")

_TIES = (
    "ties: which of several series of equal value topk keeps is Prometheus' heap order over "
    "the selector's series (sorted by label set); Fleetscope keeps another one at some steps"
)

# (mode, query as in the corpus) -> why Fleetscope's answer differs from Prometheus 2.42's
KNOWN_MISMATCHES: dict[tuple[str, str], str] = {
    ("range", "topk(3, fleet_gpu_utilization_ratio)"): _TIES,
}


@pytest.fixture(scope="module")
def engine(loaded: Loaded) -> Engine:
    """The engine under test."""
    return Evaluator(loaded.store)


def differences(loaded: Loaded, engine: Querier, mode: str, query: str) -> list[str]:
    """How ``engine`` differs from Prometheus on ``query`` (empty: it agrees)."""
    q = loaded.window.render(query)
    ref = loaded.prometheus
    diffs: list[str] = []
    if mode == "instant":
        for t in loaded.window.instant_ms:
            expected = outcome(partial(ref.instant, q, t))
            got = outcome(partial(engine.instant, q, t))
            found = compare(expected, got, ordered=is_ordered(query))
            diffs += [f"instant at {seconds(t)}: {d}" for d in found]
    else:
        for start, end, step in loaded.window.ranges_ms:
            expected = outcome(partial(ref.range, q, start, end, step))
            got = outcome(partial(engine.range, q, start, end, step))
            where = f"range {seconds(start)}..{seconds(end)} step {step / 1000:g}s"
            diffs += [f"{where}: {d}" for d in compare(expected, got)]
    return diffs


CASES = [pytest.param(mode, q, id=f"{mode}:{q}") for q in QUERIES for mode in MODES]


@pytest.mark.parametrize(("mode", "query"), CASES)
def test_matches_prometheus(loaded: Loaded, engine: Engine, mode: str, query: str) -> None:
    diffs = differences(loaded, engine, mode, query)
    reason = KNOWN_MISMATCHES.get((mode, query))
    if reason is None:
        assert not diffs, f"{mode} query {query!r} differs from Prometheus:\n" + "\n".join(diffs)
    else:
        assert diffs, (
            f"{mode} query {query!r} now matches Prometheus: take it off KNOWN_MISMATCHES "
            f"(listed because: {reason})"
        )


def test_known_mismatches_are_in_the_corpus() -> None:
    unknown = [k for k in KNOWN_MISMATCHES if k[0] not in MODES or k[1] not in QUERIES]
    assert not unknown, f"KNOWN_MISMATCHES entries not in the corpus: {unknown}"


class _Wrong:
    """The evaluator with one deliberate mistake in what it returns (checks the harness)."""

    def __init__(self, inner: Engine, mistake: Callable[[QueryResult], None]) -> None:
        self.inner = inner
        self.mistake = mistake

    def instant(self, query: str, t_ms: int) -> QueryResult:
        result = self.inner.instant(query, t_ms)
        self.mistake(result)
        return result

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult:
        result = self.inner.range(query, start_ms, end_ms, step_ms)
        self.mistake(result)
        return result


def _nudge(r: QueryResult) -> None:
    r.series[-1].values = r.series[-1].values * (1 + 1e-5)


def _drop_series(r: QueryResult) -> None:
    r.series.pop()


def _shift_time(r: QueryResult) -> None:
    r.series[0].t_ms = r.series[0].t_ms + 1


def _drop_name(r: QueryResult) -> None:
    for s in r.series:
        s.labels.pop("__name__", None)


def _swap_order(r: QueryResult) -> None:
    r.series[0], r.series[-1] = r.series[-1], r.series[0]


@pytest.mark.parametrize(
    ("mistake", "query", "modes"),
    [
        pytest.param(_nudge, "sum by (node) (fleet_gpu_power_watts)", MODES, id="value"),
        pytest.param(_drop_series, "fleet_gpu_up", MODES, id="missing-series"),
        pytest.param(_shift_time, "rate(fleet_gpu_energy_joules_total[5m])", MODES, id="time"),
        pytest.param(_drop_name, "fleet_gpu_power_watts", MODES, id="metric-name"),
        pytest.param(_swap_order, "sort(fleet_gpu_power_watts)", ("instant",), id="order"),
    ],
)
def test_the_harness_sees_a_wrong_answer(
    loaded: Loaded,
    engine: Engine,
    mistake: Callable[[QueryResult], None],
    query: str,
    modes: tuple[str, ...],
) -> None:
    wrong = _Wrong(engine, mistake)
    for mode in modes:
        assert not differences(loaded, engine, mode, query)
        assert differences(loaded, wrong, mode, query), f"{mode}: the mistake went unseen"
