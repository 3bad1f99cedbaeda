"""Overview analytics on hand-made series with known answers, through the embedded evaluator.

Every test stores samples in a DuckDB store and asks an ``Evaluator`` over it, so the PromQL the
overview runs is what is tested; job tables come from the DuckDB record store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fleetscope.agent import STALE_NAN
from fleetscope.analyze import overview as ov
from fleetscope.model import Job, JobState
from fleetscope.query.engine import Evaluator, parse
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.sim import Simulation
from fleetscope.store import SampleBatch
from fleetscope.store.duckdb import DuckDBStore

T0 = 1_700_006_400_000  # a UTC midnight, so hour and day buckets start here
S = 1_000
M = 60_000
H = 3_600_000

Row = tuple[Mapping[str, str], int, float]


def gpu(uuid: str, node: str = "n1", index: str = "0") -> dict[str, str]:
    return {"node": node, "gpu": index, "gpu_uuid": uuid, "gpu_model": "NVIDIA H100 80GB HBM3"}


def alloc(
    uuid: str, team: str, job: str = "j1", node: str = "n1", user: str = "ana"
) -> dict[str, str]:
    return {
        "__name__": ov.ALLOCATION, **gpu(uuid, node), "job": job, "team": team, "user": user,
        "workload": "training", "tier": "production",
    }  # fmt: skip


def metric(name: str, uuid: str, node: str = "n1") -> dict[str, str]:
    return {"__name__": name, **gpu(uuid, node)}


def every(
    labels: Mapping[str, str], start: int, n: int, step: int = 15 * S, v: float = 1.0
) -> list[Row]:
    return [(labels, start + k * step, v) for k in range(n)]


@pytest.fixture
def store() -> Iterator[DuckDBStore]:
    s = DuckDBStore(":memory:")
    yield s
    s.close()


def engine_with(store: DuckDBStore, *parts: Iterable[Row]) -> Evaluator:
    rows = [row for part in parts for row in part]
    if rows:
        store.append(SampleBatch.from_rows(rows))
    return Evaluator(store)


# ----------------------------------------------------------------------------- PromQL text


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        pytest.param(7 * 86_400_000, "7d", id="days"),
        pytest.param(90 * M, "1h30m", id="compound"),
        pytest.param(H - 1, "59m59s999ms", id="milliseconds"),
        pytest.param(15 * S, "15s", id="seconds"),
    ],
)
def test_promql_duration(ms: int, text: str) -> None:
    assert ov.promql_duration(ms) == text


def test_every_query_parses() -> None:
    queries = [
        ov.PROMQL_UTILIZATION,
        ov.promql_states(0.05),
        ov.promql_idle_share("7d", "1h"),
        ov.PROMQL_INTERVAL,
        ov.promql_gpu_hours("team", "7d", 15_000),
        ov.PROMQL_TEAM_ALLOCATION,
        ov.PROMQL_TEAM_QUOTA,
        ov.with_comments({"a": ov.PROMQL_TEAM_QUOTA}) + "  # a trailing comment",
    ]
    for query in queries:
        parse(query)
    assert ov.promql_gpu_hours("team", "7d", 15_000) == (
        "sum by (team) (count_over_time(fleet_gpu_allocation[7d])) * 15 / 3600"
    )


# ----------------------------------------------------------------------------- utilization


def test_utilization_is_the_mean_over_reporting_gpus_at_each_step(store: DuckDBStore) -> None:
    engine = engine_with(
        store,
        every(metric(ov.UTILIZATION, "g1"), T0, 241, v=0.2),  # one hour, every 15 s
        every(metric(ov.UTILIZATION, "g2"), T0, 121, v=0.6),  # the first half hour only
    )
    times, values = ov.utilization(engine, T0, T0 + 2 * H, 10 * M)
    # At 40m g2's newest sample (30m) is older than 5m; past 1h05m nothing reports.
    assert [(t - T0) // M for t in times] == [0, 10, 20, 30, 40, 50, 60]
    assert values == pytest.approx([0.4, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2])


def test_utilization_of_an_empty_store_is_empty(store: DuckDBStore) -> None:
    assert ov.utilization(Evaluator(store), T0, T0 + H, M) == ([], [])


# ----------------------------------------------------------------------------- states


def fleet_at(store: DuckDBStore, at: int) -> Evaluator:
    """Seven GPUs, one per case, seen at ``at``."""
    held = {"busy": "vision", "idle": "llm", "unmeasured": "llm"}  # GPU → team holding it
    util = {"busy": 0.8, "idle": 0.01, "free": 0.0}
    up = {
        "busy": (at, 1.0),
        "idle": (at, 1.0),
        "free": (at, 1.0),
        "unmeasured": (at, 1.0),
        "lost": (at, 0.0),
        "silent": (at - 10 * M, 1.0),  # last reported 10 minutes ago
        "retired": (at - 2 * 86_400_000, 1.0),
    }  # gone for two days: no longer in the fleet
    return engine_with(
        store,
        [(metric(ov.UP, u), t, v) for u, (t, v) in up.items()],
        [(metric(ov.UTILIZATION, u), at, v) for u, v in util.items()],
        [(alloc(u, team), at - 30 * S, 1.0) for u, team in held.items()],
    )  # fmt: skip


def test_gpu_states_partition_the_fleet(store: DuckDBStore) -> None:
    assert ov.gpu_states(fleet_at(store, T0), T0) == {
        "busy": 1,
        "allocated_idle": 1,
        "unallocated": 1,
        "down": 2,
        "unknown": 1,
    }


def test_gpu_states_threshold_is_configurable(store: DuckDBStore) -> None:
    states = ov.gpu_states(fleet_at(store, T0), T0, idle_threshold=0.9)
    assert (states["busy"], states["allocated_idle"]) == (0, 2)


@pytest.mark.parametrize(
    ("up_at", "state"),
    [
        pytest.param(T0 - 5 * M, "unallocated", id="up-exactly-5m-ago"),
        pytest.param(T0 - 5 * M - 1, "down", id="up-5m-and-1ms-ago"),
        pytest.param(T0 - 86_400_000 - 1, None, id="not-seen-for-a-day"),
    ],
)
def test_gpu_states_lookback_edges(store: DuckDBStore, up_at: int, state: str | None) -> None:
    states = ov.gpu_states(engine_with(store, [(metric(ov.UP, "g"), up_at, 1.0)]), T0)
    assert {k for k, n in states.items() if n} == ({state} if state else set())
    assert set(states) == set(ov.STATES)  # "unknown" only when some GPU is


def test_an_allocation_ended_by_a_staleness_marker_is_not_held(store: DuckDBStore) -> None:
    engine = engine_with(
        store,
        [(metric(ov.UP, "g"), T0, 1.0), (metric(ov.UTILIZATION, "g"), T0, 0.0)],
        [(alloc("g", "llm"), T0 - 30 * S, 1.0), (alloc("g", "llm"), T0 - 15 * S, STALE_NAN)],
    )
    assert ov.gpu_states(engine, T0)["unallocated"] == 1
    assert ov.team_allocation(engine, T0) == {}


def test_idle_allocated_share_over_a_window(store: DuckDBStore) -> None:
    engine = engine_with(
        store,
        every(metric(ov.UP, "a"), T0, 241),
        every(metric(ov.UP, "b"), T0, 241),
        every(metric(ov.UTILIZATION, "a"), T0, 241, v=0.01),
        every(metric(ov.UTILIZATION, "b"), T0, 241, v=0.9),
        every(alloc("a", "llm"), T0, 241),
        every(alloc("b", "llm"), T0, 121),  # b is freed after half an hour
    )
    share = ov.idle_allocated_share(engine, T0 + H, H, 5 * M)
    # 13 steps; a held and idle at all 13, b held and busy at 0..30m (7 steps) and 35m (lookback)
    assert share == pytest.approx(13 / (13 + 8))
    assert ov.idle_allocated_share(Evaluator(DuckDBStore(":memory:")), T0, H, 5 * M) is None


# ----------------------------------------------------------------------------- the interval


@pytest.mark.parametrize(
    "at", [pytest.param(T0 + 2 * H, id="on-a-sample"), pytest.param(T0 + 2 * H + 7 * S, id="off")]
)
def test_the_sampling_interval_is_the_median_gpus_mean_gap(store: DuckDBStore, at: int) -> None:
    engine = engine_with(
        store,
        every(metric(ov.UP, "a"), T0, 481),
        every(metric(ov.UP, "b", "n2"), T0 + 1_000, 481),
        # c jitters: gaps of 14 and 16 s, 15 s on average
        [(metric(ov.UP, "c", "n3"), T0 + k * 15 * S + (k % 2) * S, 1.0) for k in range(481)],
        # d was away for 10 minutes: its mean gap is longer, the median ignores it
        [r for k, r in enumerate(every(metric(ov.UP, "d", "n4"), T0, 481)) if not 400 < k < 440],
    )
    assert ov.sampling_interval_ms(engine, at) == pytest.approx(15 * S, rel=1e-3)


def test_the_interval_falls_back_to_the_window_when_the_last_hour_is_silent(
    store: DuckDBStore,
) -> None:
    engine = engine_with(store, every(metric(ov.UP, "a"), T0, 240, step=30 * S))  # 2 h
    at = T0 + 6 * H
    assert ov.sampling_interval_ms(engine, at) is None
    assert ov.sampling_interval_ms(engine, at, 7 * H) == pytest.approx(30 * S)
    assert ov.sampling_interval_ms(Evaluator(DuckDBStore(":memory:")), at, 7 * H) is None


# ----------------------------------------------------------------------------- GPU-hours


def test_gpu_hours_are_count_times_interval(store: DuckDBStore) -> None:
    engine = engine_with(
        store,
        every(alloc("g1", "vision"), T0, 240),  # 240 × 15 s = 1 h
        every(alloc("g2", "llm", "j2"), T0, 120),  # two GPUs × 30 min
        every(alloc("g3", "llm", "j2"), T0, 120),
        every(alloc("g4", "speech", "j3"), T0 + H, 40),  # 10 min
    )
    hours = ov.gpu_hours_by(engine, T0 + 2 * H, 2 * H, 15 * S)
    assert hours == pytest.approx({"vision": 1.0, "llm": 1.0, "speech": 1 / 6})
    by_job = ov.gpu_hours_by(engine, T0 + 2 * H, 2 * H, 15 * S, by="job")
    assert sum(by_job.values()) == pytest.approx(13 / 6)


def test_an_outage_is_not_counted(store: DuckDBStore) -> None:
    outage = [r for k, r in enumerate(every(alloc("g1", "a"), T0, 240)) if not 100 <= k < 160]
    engine = engine_with(store, outage)
    assert ov.gpu_hours_by(engine, T0 + 2 * H, 2 * H, 15 * S) == pytest.approx({"a": 0.75})


def test_gpu_hours_keep_to_the_window_and_skip_markers(store: DuckDBStore) -> None:
    rows = every(alloc("g1", "a"), T0, 480)  # 00:00 to 01:59:45
    rows[-1] = (rows[-1][0], rows[-1][1], STALE_NAN)  # ended a tick early
    engine = engine_with(store, rows, every(alloc("g2", "b", "j2"), T0 + 3 * H, 10))
    # the window [01:00, 03:00] holds 239 samples of a (both ends count) and one of b
    hours = ov.gpu_hours_by(engine, T0 + 3 * H, 2 * H, 15 * S)
    assert hours == pytest.approx({"a": 239 / 240, "b": 1 / 240})


def test_gpu_hours_of_nothing(store: DuckDBStore) -> None:
    assert ov.gpu_hours_by(Evaluator(store), T0 + H, H, 15 * S) == {}
    engine = engine_with(store, every(alloc("g1", "a"), T0, 10))
    assert ov.gpu_hours_by(engine, T0 + H, H, None) == {}  # no interval, no hours


def test_gpu_hours_by_an_unknown_label_is_refused(store: DuckDBStore) -> None:
    with pytest.raises(ValueError, match="by must be one of"):
        ov.gpu_hours_by(Evaluator(store), T0 + H, H, 15 * S, by="colour")


def test_gpu_hours_by_time_fills_aligned_buckets(store: DuckDBStore) -> None:
    engine = engine_with(
        store,
        every(alloc("g1", "a"), T0 + 30 * M, 480),  # 00:30 to 02:30
        every(alloc("g2", "b", "j2"), T0 + H, 240),  # 01:00 to 02:00
    )
    edges, by_team = ov.gpu_hours_by_time(engine, T0 + 10 * M, T0 + 3 * H, H, 15 * S)
    assert edges == [T0, T0 + H, T0 + 2 * H]
    # a sample on a bucket edge (01:00, 02:00) counts once, in the bucket it starts
    assert by_team["a"] == pytest.approx([0.5, 1.0, 0.5])
    assert by_team["b"] == pytest.approx([0.0, 1.0, 0.0])


def test_gpu_hours_agree_with_the_simulators_ledger_markers_and_all(store: DuckDBStore) -> None:
    sim = Simulation(FleetSpec(gpus=16, seed=6))
    sim.backfill(store, T0, T0 + 26 * H)
    engine = Evaluator(store)
    now = T0 + 26 * H - sim.tick_ms + 7 * S  # between two ticks, as a user's clock is
    interval = ov.sampling_interval_ms(engine, now)
    assert interval == sim.tick_ms
    hours = ov.gpu_hours_by(engine, now, 24 * H, interval)
    ledger = sim.ledger(now - 24 * H, now)
    assert set(hours) <= set(ledger) and sum(ledger.values()) > 10
    for team, truth in ledger.items():
        assert hours.get(team, 0.0) == pytest.approx(truth, rel=0.01, abs=0.01)


# ----------------------------------------------------------------------------- teams and jobs


def test_team_allocation_counts_gpus_and_quota_sums_clusters(store: DuckDBStore) -> None:
    quota = {"__name__": ov.QUOTA, "team": "llm"}
    engine = engine_with(
        store,
        [(alloc("g1", "llm", "j1"), T0, 1.0), (alloc("g1", "llm", "j2"), T0, 1.0)],
        [(alloc("g2", "llm", "j2"), T0, 1.0), (alloc("g3", "vision", "j3"), T0, 1.0)],
        [({**quota, "cluster": "a"}, T0, 8.0), ({**quota, "cluster": "b"}, T0, 4.0)],
    )
    assert ov.team_allocation(engine, T0) == {"llm": 2, "vision": 1}
    assert ov.team_quota(engine, T0) == {"llm": 12.0}
    assert ov.quota_overruns({"llm": 13, "vision": 1}, {"llm": 12.0}) == ["llm"]


def test_running_and_pending_jobs_from_the_record_store(store: DuckDBStore) -> None:
    now = datetime.fromtimestamp(T0 / 1000, UTC)

    def job(
        i: str, state: JobState, submit_ago_s: int, gpus: int, start_ago_s: int | None = None
    ) -> Job:
        start = None if start_ago_s is None else now - timedelta(seconds=start_ago_s)
        return Job(
            id=i, team="llm", user="ana", state=state, gpus=gpus,
            submit=now - timedelta(seconds=submit_ago_s), start=start,
        )  # fmt: skip

    store.upsert_jobs(
        [
            job("r1", JobState.RUNNING, 900, 1, 600),
            job("r2", JobState.RUNNING, 900, 8, 60),
            job("p1", JobState.PENDING, 30, 2),
            job("p2", JobState.PENDING, 3600, 4),
            job("done", JobState.COMPLETED, 9000, 4, 8000).model_copy(update={"end": now}),
        ]
    )
    running = ov.running_jobs(store, T0)
    pending = ov.pending_jobs(store, T0)
    assert [(r.id, r.gpus, r.since_s) for r in running] == [("r2", 8, 60.0), ("r1", 1, 600.0)]
    assert [(r.id, r.since_s) for r in pending] == [("p2", 3600.0), ("p1", 30.0)]


# ----------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("share", "verdict"),
    [
        pytest.param(None, None, id="no-data"),
        pytest.param(0.05, "good", id="low"),
        pytest.param(0.10, "watch", id="watch-edge"),
        pytest.param(0.25, "act", id="act-edge"),
    ],
)
def test_effectiveness_verdict(share: float | None, verdict: str | None) -> None:
    assert ov.effectiveness_verdict(share) == verdict


@pytest.mark.parametrize(
    ("ratio", "pending", "verdict"),
    [
        pytest.param(None, 3, None, id="no-healthy-gpu"),
        pytest.param(0.5, 0, "good", id="room-no-demand"),
        pytest.param(0.85, 0, "watch", id="filling-up"),
        pytest.param(0.5, 4, "watch", id="pending-despite-room"),
        pytest.param(0.95, 4, "act", id="full-and-waiting"),
    ],
)
def test_capacity_verdict(ratio: float | None, pending: int, verdict: str | None) -> None:
    assert ov.capacity_verdict(ratio, pending) == verdict


def test_allocated_ratio_ignores_down_gpus() -> None:
    states = {"busy": 3, "allocated_idle": 1, "unallocated": 4, "down": 8}
    assert ov.allocated_ratio(states) == 0.5
    assert ov.allocated_ratio({"busy": 0, "allocated_idle": 0, "unallocated": 0, "down": 2}) is None
    assert np.isclose(ov.allocated_ratio({"busy": 1, "unknown": 1, "unallocated": 2}) or 0, 0.5)
