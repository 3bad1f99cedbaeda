"""Overview analytics on hand-made series with known answers (FakeMetricStore, DuckDB records)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fleetscope.analyze import overview as ov
from fleetscope.model import Job, JobState
from fleetscope.store import FakeMetricStore, SampleBatch, Series
from fleetscope.store.duckdb import DuckDBStore

T0 = 1_700_006_400_000  # a UTC midnight, so hour and day buckets start here
S = 1_000
M = 60_000
H = 3_600_000
STALE = float(np.array([ov.STALE_NAN_BITS], np.uint64).view(np.float64)[0])

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


def store_with(*parts: Iterable[Row]) -> FakeMetricStore:
    store = FakeMetricStore()
    store.append(SampleBatch.from_rows([row for part in parts for row in part]))
    return store


# ----------------------------------------------------------------------------- instant


@pytest.mark.parametrize(
    ("sample_at", "has"),
    [
        pytest.param(T0, True, id="at-t"),
        pytest.param(T0 - 5 * M, True, id="exactly-lookback-ago"),
        pytest.param(T0 - 5 * M - 1, False, id="just-outside-lookback"),
        pytest.param(T0 + 1, False, id="in-the-future"),
    ],
)
def test_instant_lookback_is_inclusive_like_prometheus_2_42(sample_at: int, has: bool) -> None:
    s = Series({}, np.asarray([sample_at], np.int64), np.asarray([0.5]))
    v, ok = ov.instant(s, np.asarray([T0], np.int64))
    assert bool(ok[0]) is has
    assert (v[0] == 0.5) if has else math.isnan(v[0])


def test_instant_hides_a_series_whose_newest_sample_is_a_staleness_marker() -> None:
    s = Series({}, np.asarray([T0, T0 + 15 * S], np.int64), np.asarray([1.0, STALE]))
    _, ok = ov.instant(s, np.asarray([T0, T0 + 15 * S], np.int64))
    assert ok.tolist() == [True, False]


# ----------------------------------------------------------------------------- utilization


def test_utilization_is_the_mean_over_reporting_gpus_at_each_step() -> None:
    store = store_with(
        every(metric(ov.UTILIZATION, "g1"), T0, 241, v=0.2),  # one hour, every 15 s
        every(metric(ov.UTILIZATION, "g2"), T0, 121, v=0.6),  # the first half hour only
    )
    times, values = ov.utilization(store, T0, T0 + 2 * H, 10 * M)
    # At 40m g2's newest sample (30m) is older than 5m; past 1h05m nothing reports.
    assert [(t - T0) // M for t in times] == [0, 10, 20, 30, 40, 50, 60]
    assert values == pytest.approx([0.4, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2])


def test_utilization_of_an_empty_store_is_empty() -> None:
    assert ov.utilization(FakeMetricStore(), T0, T0 + H, M) == ([], [])


# ----------------------------------------------------------------------------- states


def fleet_at(at: int) -> FakeMetricStore:
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
    return store_with(
        [(metric(ov.UP, u), t, v) for u, (t, v) in up.items()],
        [(metric(ov.UTILIZATION, u), at, v) for u, v in util.items()],
        [(alloc(u, team), at - 30 * S, 1.0) for u, team in held.items()],
    )  # fmt: skip


def test_gpu_states_partition_the_fleet() -> None:
    assert ov.gpu_states(fleet_at(T0), T0) == {
        "busy": 1,
        "allocated_idle": 1,
        "unallocated": 1,
        "down": 2,
        "unknown": 1,
    }


def test_gpu_states_threshold_is_configurable() -> None:
    states = ov.gpu_states(fleet_at(T0), T0, idle_threshold=0.9)
    assert (states["busy"], states["allocated_idle"]) == (0, 2)


@pytest.mark.parametrize(
    ("up_at", "state"),
    [
        pytest.param(T0 - 5 * M, "unallocated", id="up-exactly-5m-ago"),
        pytest.param(T0 - 5 * M - 1, "down", id="up-5m-and-1ms-ago"),
        pytest.param(T0 - 86_400_000 - 1, None, id="not-seen-for-a-day"),
    ],
)
def test_gpu_states_lookback_edges(up_at: int, state: str | None) -> None:
    states = ov.gpu_states(store_with([(metric(ov.UP, "g"), up_at, 1.0)]), T0)
    assert {k for k, n in states.items() if n} == ({state} if state else set())


def test_an_allocation_ended_by_a_staleness_marker_is_not_held() -> None:
    store = store_with(
        [(metric(ov.UP, "g"), T0, 1.0), (metric(ov.UTILIZATION, "g"), T0, 0.0)],
        [(alloc("g", "llm"), T0 - 30 * S, 1.0), (alloc("g", "llm"), T0 - 15 * S, STALE)],
    )
    assert ov.gpu_states(store, T0)["unallocated"] == 1
    assert ov.team_allocation(store, T0) == {}


def test_idle_allocated_share_over_a_window() -> None:
    store = store_with(
        every(metric(ov.UP, "a"), T0, 241),
        every(metric(ov.UP, "b"), T0, 241),
        every(metric(ov.UTILIZATION, "a"), T0, 241, v=0.01),
        every(metric(ov.UTILIZATION, "b"), T0, 241, v=0.9),
        every(alloc("a", "llm"), T0, 241),
        every(alloc("b", "llm"), T0, 121),  # b is freed after half an hour
    )
    share = ov.idle_allocated_share(store, T0, T0 + H, 5 * M)
    # 13 steps; a held and idle at all 13, b held and busy at 0..30m (7 steps) and 35m (lookback)
    assert share == pytest.approx(13 / (13 + 8))
    assert ov.idle_allocated_share(FakeMetricStore(), T0, T0 + H, 5 * M) is None


# ----------------------------------------------------------------------------- GPU-hours


def test_gpu_hours_are_count_times_interval() -> None:
    store = store_with(
        every(alloc("g1", "vision"), T0, 240),  # 240 × 15 s = 1 h
        every(alloc("g2", "llm", "j2"), T0, 120),  # two GPUs × 30 min
        every(alloc("g3", "llm", "j2"), T0, 120),
        every(alloc("g4", "speech", "j3"), T0 + H, 40),  # 10 min
    )
    hours = ov.gpu_hours_by(store, T0, T0 + 2 * H)
    assert hours == pytest.approx({"vision": 1.0, "llm": 1.0, "speech": 1 / 6})
    assert sum(ov.gpu_hours_by(store, T0, T0 + 2 * H, by="job").values()) == pytest.approx(13 / 6)


def test_an_outage_counts_one_interval_and_jitter_counts_whole() -> None:
    outage = [r for k, r in enumerate(every(alloc("g1", "a"), T0, 240)) if not 100 <= k < 160]
    jitter = [(alloc("g2", "b"), T0 + k * 15 * S + (k % 2) * 1_000, 1.0) for k in range(240)]
    hours = ov.gpu_hours_by(store_with(outage, jitter), T0, T0 + 2 * H)
    assert hours["a"] == pytest.approx(180 / 240)  # the 15-minute hole is not counted
    # gaps of 16 s and 14 s: time between the first and last sample, plus one interval
    assert hours["b"] == pytest.approx((240 * 15 * S + 1 * S) / H)


def test_a_lone_sample_counts_its_nodes_interval_or_the_fleets() -> None:
    store = store_with(
        every(alloc("g1", "a", node="n1"), T0, 240, step=60 * S),  # n1 samples every minute
        [(alloc("g2", "b", "j2", node="n1"), T0, 1.0)],
        [(alloc("g3", "c", "j3", node="n2"), T0, 1.0)],  # n2 has no gap: the fleet's median
    )
    hours = ov.gpu_hours_by(store, T0, T0 + 5 * H)
    assert hours == pytest.approx({"a": 4.0, "b": 1 / 60, "c": 1 / 60})
    assert ov.usage(store, T0, T0 + 5 * H).interval_ms == 60 * S


def test_gpu_hours_keep_to_the_window_and_skip_markers() -> None:
    rows = every(alloc("g1", "a"), T0, 480)
    rows[-1] = (rows[-1][0], rows[-1][1], STALE)
    store = store_with(rows, [(alloc("g2", "b"), T0 + 90 * M, 0.0)])
    hours = ov.gpu_hours_by(store, T0 + H, T0 + 3 * H)
    assert hours == pytest.approx({"a": 239 / 240, "b": 0.0})


def test_gpu_hours_of_nothing() -> None:
    assert ov.gpu_hours_by(FakeMetricStore(), T0, T0 + H) == {}
    assert ov.usage(FakeMetricStore(), T0, T0 + H).interval_ms is None


def test_gpu_hours_by_an_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="by must be one of"):
        ov.gpu_hours_by(FakeMetricStore(), T0, T0 + H, by="colour")


def test_gpu_hours_by_time_fills_aligned_buckets() -> None:
    store = store_with(
        every(alloc("g1", "a"), T0 + 30 * M, 480),  # 00:30 to 02:30
        every(alloc("g2", "b"), T0 + H, 240),  # 01:00 to 02:00
    )
    edges, by_team = ov.gpu_hours_by_time(store, T0 + 10 * M, T0 + 3 * H, H)
    assert edges == [T0, T0 + H, T0 + 2 * H]
    assert by_team["a"] == pytest.approx([0.5, 1.0, 0.5])
    assert by_team["b"] == pytest.approx([0.0, 1.0, 0.0])


# ----------------------------------------------------------------------------- teams and jobs


def test_team_allocation_counts_gpus_and_quota_sums_clusters() -> None:
    quota = {"__name__": ov.QUOTA, "team": "llm"}
    store = store_with(
        [(alloc("g1", "llm", "j1"), T0, 1.0), (alloc("g1", "llm", "j2"), T0, 1.0)],
        [(alloc("g2", "llm", "j2"), T0, 1.0), (alloc("g3", "vision", "j3"), T0, 1.0)],
        [({**quota, "cluster": "a"}, T0, 8.0), ({**quota, "cluster": "b"}, T0, 4.0)],
    )
    assert ov.team_allocation(store, T0) == {"llm": 2, "vision": 1}
    assert ov.team_quota(store, T0) == {"llm": 12.0}
    assert ov.quota_overruns({"llm": 13, "vision": 1}, {"llm": 12.0}) == ["llm"]


def test_running_and_pending_jobs_from_the_record_store() -> None:
    now = datetime.fromtimestamp(T0 / 1000, UTC)
    records = DuckDBStore(":memory:")

    def job(
        i: str, state: JobState, submit_ago_s: int, gpus: int, start_ago_s: int | None = None
    ) -> Job:
        start = None if start_ago_s is None else now - timedelta(seconds=start_ago_s)
        return Job(
            id=i, team="llm", user="ana", state=state, gpus=gpus,
            submit=now - timedelta(seconds=submit_ago_s), start=start,
        )  # fmt: skip

    records.upsert_jobs(
        [
            job("r1", JobState.RUNNING, 900, 1, 600),
            job("r2", JobState.RUNNING, 900, 8, 60),
            job("p1", JobState.PENDING, 30, 2),
            job("p2", JobState.PENDING, 3600, 4),
            job("done", JobState.COMPLETED, 9000, 4, 8000).model_copy(update={"end": now}),
        ]
    )
    running = ov.running_jobs(records, T0)
    pending = ov.pending_jobs(records, T0)
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
