"""The simulated scheduler: priority, FIFO, quotas, backfill, placement, outcomes."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from fleetscope.model import JobState
from fleetscope.simulate.calibration import load
from fleetscope.simulate.cluster import OPEN, Cluster
from fleetscope.simulate.fleet import FleetSpec, TeamSpec, build
from fleetscope.simulate.jobs import SimJob
from fleetscope.simulate.scheduler import PRIORITY, QUOTA, RESOURCES, Scheduler

TWO_TEAMS = (
    TeamSpec("a", 0.5, ("ann",), {"training": 1.0}),
    TeamSpec("b", 0.5, ("bob",), {"training": 1.0}),
)


def scheduler(gpus: int = 16, spare: int = 0, quota: int | None = None) -> Scheduler:
    """Two 8-GPU nodes (by default), teams ``a`` and ``b`` with quota gpus/2 (or ``quota``)."""
    s = Scheduler(build(FleetSpec(gpus=gpus, teams=TWO_TEAMS)), spare_gpus=spare)
    if quota is not None:
        s.quota = {"a": quota, "b": quota}
    return s


_seq = iter(range(10**6))


def job(
    team: str,
    gpus: int,
    *,
    submit: int = 0,
    run: int = 10,
    limit: int | None = None,
    tier: str = "experimentation",
    patience: int | None = None,
    outcome: JobState = JobState.COMPLETED,
) -> SimJob:
    return SimJob(
        seq=next(_seq), name="t", team=team, user="u", uid=1, workload="training", tier=tier,
        gpus=gpus, submit=submit, run_ticks=run, limit_ticks=limit or run, outcome=outcome,
        exit_code=0 if outcome == JobState.COMPLETED else 1, patience_ticks=patience, pattern=0,
        level=0.9, mem_frac=0.5, period=100, phase=0, pcie_kbps=1000,
    )  # fmt: skip


def submit(s: Scheduler, tick: int, *jobs: SimJob) -> None:
    for j in jobs:
        j.submit = tick
        s.submit(j)
    s.process(tick)


def test_production_goes_before_experimentation_and_fifo_within() -> None:
    s = scheduler(quota=16)
    exp1, exp2 = job("a", 8), job("a", 8)
    prod = job("b", 16, tier="production")
    submit(s, 0, job("a", 16, run=5))  # fleet full until tick 5
    submit(s, 1, exp1, exp2, prod)
    assert prod.reasons[-1][1] == RESOURCES
    s.process(5)
    assert prod.state == JobState.RUNNING and prod.start == 5
    assert exp1.state == exp2.state == JobState.PENDING
    s.process(15)
    assert exp1.start == 15 and exp2.start == 15  # both fit once prod ended


def test_fifo_within_a_tier() -> None:
    s = scheduler(quota=16)
    submit(s, 0, job("a", 16, run=5))
    first, second = job("b", 16), job("a", 16)
    submit(s, 1, first)
    submit(s, 2, second)
    s.process(5)
    assert first.state == JobState.RUNNING and second.state == JobState.PENDING
    assert second.pending_reason == RESOURCES  # top of the queue now


def test_over_quota_borrows_idle_gpus_and_waits_without_spare() -> None:
    s = scheduler(spare=0)
    own, borrowed = job("a", 8, run=100), job("a", 8, run=100)
    submit(s, 0, own, borrowed)  # quota 8: the second is over quota, borrows idle GPUs
    assert own.state == borrowed.state == JobState.RUNNING
    strict = scheduler(spare=4)
    own, waiting = job("a", 8, run=100), job("a", 6, run=100)
    submit(strict, 0, own, waiting)
    assert waiting.state == JobState.PENDING and waiting.pending_reason == QUOTA
    other = job("b", 8)
    submit(strict, 1, other)  # b is within quota: the waiting over-quota job never blocks it
    assert other.state == JobState.RUNNING


def test_over_quota_job_does_not_hold_a_reservation() -> None:
    s = scheduler()
    submit(s, 0, job("a", 8, run=100))
    big = job("a", 16)  # over a's quota: waits, but reserves nothing
    small = job("b", 4, run=1000)
    submit(s, 1, big, small)
    assert big.pending_reason == QUOTA
    assert small.state == JobState.RUNNING


def test_backfill_respects_the_reservation() -> None:
    s = scheduler(quota=16)
    submit(s, 0, job("a", 8, run=50, limit=100))  # ends by its limit at tick 100
    head = job("b", 16, tier="production")
    short, long = job("a", 4, run=10, limit=50), job("a", 4, run=10, limit=500)
    submit(s, 1, head, short, long)
    assert head.pending_reason == RESOURCES
    assert short.state == JobState.RUNNING  # ends before the shadow time
    assert long.pending_reason == PRIORITY  # would delay the reserved job
    s.process(50)
    assert head.state == JobState.RUNNING and head.start == 50


def test_placement_packs_and_spans() -> None:
    s = scheduler(gpus=24, quota=24)
    two, six, four, eight = job("a", 2), job("a", 6), job("a", 4), job("a", 8)
    submit(s, 0, two)
    submit(s, 1, six)  # best fit: the node with 6 free, not an empty one
    assert {s.fleet.gpus[g].node for g in two.gpu_ids} == {
        s.fleet.gpus[g].node for g in six.gpu_ids
    }
    submit(s, 2, four, eight)
    assert len(four.nodes) == 1 and len(eight.nodes) == 1
    s2 = scheduler(gpus=24, quota=24)
    wide = job("a", 16)
    submit(s2, 0, wide)
    assert len(wide.nodes) == 2  # two whole nodes


def test_outcomes_and_cancellations() -> None:
    s = scheduler()
    big = job("b", 16, run=100)  # borrows the whole fleet
    failed = job("a", 2, run=5, outcome=JobState.FAILED)
    submit(s, 0, big, failed)
    impatient = job("a", 1, patience=10, outcome=JobState.CANCELLED)
    submit(s, 1, impatient)
    s.process(11)
    assert impatient.state == JobState.CANCELLED and impatient.start is None
    assert impatient.end == 11
    s.process(100)
    s.process(105)
    assert failed.state == JobState.FAILED and failed.end == 105 and failed.exit_code == 1


def test_node_failure_ends_jobs_and_drains_the_node() -> None:
    s = scheduler()
    on_both = job("a", 16, run=1000)
    submit(s, 0, on_both)
    s.node_down(0, 10)
    assert on_both.state == JobState.NODE_FAIL and on_both.end == 10
    again = job("a", 16)
    submit(s, 11, again)
    assert again.state == JobState.PENDING  # only 8 GPUs are up
    s.node_back(0)
    s.process(20)
    assert again.start == 20


@pytest.fixture(scope="module")
def week() -> Cluster:
    fleet = build(FleetSpec(seed=11, node_failures_per_day=2.0))
    origin = 1_767_225_600_000 // fleet.spec.tick_ms
    cluster = Cluster(fleet, load(), origin)
    cluster.run_until(origin + 7 * 5760)
    return cluster


def test_no_gpu_is_ever_double_allocated_or_used_while_down(week: Cluster) -> None:
    held: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for j in week.jobs:
        if j.start is not None:
            assert len(j.gpu_ids) == len(set(j.gpu_ids)) == j.gpus
            for g in j.gpu_ids:
                held[g].append((j.start, j.end if j.end is not None else OPEN))
    assert len(held) == 64
    for g, spans in held.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"GPU {g} double-allocated at {start}"
        node = week.fleet.gpus[g].node_id
        for d0, d1 in week.down[node]:
            assert all(e <= d0 or s >= d1 for s, e in spans), f"GPU {g} used while down"
    assert any(week.down), "the scenario should include node failures"


def test_a_week_of_jobs_is_plausible(week: Cluster) -> None:
    states = {j.state for j in week.jobs}
    assert {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED} <= states
    assert JobState.NODE_FAIL in states
    endpoints = [j for j in week.jobs if j.endpoint is not None]
    assert endpoints and all(j.workload == "inference" for j in endpoints)
    assert all(j.tier == "production" for j in endpoints)
    reasons = {r for j in week.jobs for _, r in j.reasons}
    assert reasons <= {PRIORITY, QUOTA, RESOURCES} and reasons
    for j in week.jobs:
        if j.start is not None:
            assert j.start >= j.submit
            if j.end is not None and j.state != JobState.NODE_FAIL:
                assert j.end - j.start == j.run_ticks <= j.limit_ticks
