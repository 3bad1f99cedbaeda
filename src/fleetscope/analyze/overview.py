"""Fleet overview analytics as PromQL: GPU utilization, GPU states, GPU-hours, jobs, two verdicts.

Every metric number is one PromQL expression, built by a ``promql_*`` function (or a ``PROMQL_*``
constant) and sent as that exact text through the :class:`~fleetscope.query.Engine` port, so the
text the UI shows is the query that ran and can be pasted into Grafana. Which backend answers
(the embedded evaluator or a Prometheus-compatible server) is the engine's business. Job tables
come from the :class:`~fleetscope.store.RecordStore`.

Times are integer milliseconds since the Unix epoch; ratios are 0–1; GPU-hours follow
DESIGN.md "Definitions" (Σ over allocated GPUs of allocated time). Instant selectors read the
newest sample within Prometheus' 5-minute lookback; a staleness marker ends a series (the agent
writes one when a series disappears, so an ended allocation stops counting at once). Engine
failures propagate as :class:`~fleetscope.query.QueryError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fleetscope.model import Job, JobState
from fleetscope.query import Engine, QueryResult
from fleetscope.store import RecordStore

Verdict = Literal["good", "watch", "act"]

UTILIZATION = "fleet_gpu_utilization_ratio"
UP = "fleet_gpu_up"
ALLOCATION = "fleet_gpu_allocation"
QUOTA = "fleet_sched_quota_gpus"

HOUR_MS = 3_600_000
IDLE_THRESHOLD = 0.05  # DESIGN.md: allocated time with utilization < 5 % is idle
KNOWN = "1d"  # a GPU whose fleet_gpu_up reported within a day is part of the fleet
INTERVAL_RANGE_MS = HOUR_MS  # the sampling interval is measured over the last hour

STATES = ("busy", "allocated_idle", "unallocated", "down")
UNKNOWN_STATE = "unknown"  # allocated and up, but no utilization sample
USAGE_LABELS = ("team", "user", "workload", "tier", "job", "node", "gpu_model")

_HELD = "on(gpu_uuid) fleet_gpu_allocation and on(gpu_uuid) (fleet_gpu_up == 1)"
PROMQL_UTILIZATION = "avg(fleet_gpu_utilization_ratio)"
PROMQL_STATES = {  # {thr}: the idle threshold
    "busy": f"count((fleet_gpu_utilization_ratio >= {{thr}}) and {_HELD})",
    "allocated_idle": f"count((fleet_gpu_utilization_ratio < {{thr}}) and {_HELD})",
    "unallocated": "count((fleet_gpu_up == 1) unless on(gpu_uuid) fleet_gpu_allocation)",
    "down": f"count(last_over_time(fleet_gpu_up[{KNOWN}]) unless on(gpu_uuid) (fleet_gpu_up == 1))",
    UNKNOWN_STATE: "count((fleet_gpu_up == 1) and on(gpu_uuid) fleet_gpu_allocation"
    " unless on(gpu_uuid) fleet_gpu_utilization_ratio)",
}
PROMQL_TEAM_ALLOCATION = "count by (team) (count by (team, gpu_uuid) (fleet_gpu_allocation))"
PROMQL_TEAM_QUOTA = "sum by (team) (fleet_sched_quota_gpus)"
# Per GPU, the mean gap between its fleet_gpu_up samples over the last hour: the time from the
# newest sample at or before ``t - 1h`` to the newest at or before ``t``, divided by the samples
# in ``(t - 1h, t]`` (the range is 1 ms short of an hour because Prometheus 2.42's windows are
# closed at both ends). The median over GPUs, in seconds.
PROMQL_INTERVAL = (
    "quantile(0.5, (timestamp(fleet_gpu_up) - timestamp(fleet_gpu_up offset 1h))"
    " / count_over_time(fleet_gpu_up[59m59s999ms]))"
)

_UNITS_MS = (("d", 86_400_000), ("h", HOUR_MS), ("m", 60_000), ("s", 1_000), ("ms", 1))


def promql_duration(ms: int) -> str:
    """A PromQL duration for ``ms`` milliseconds (``90 min`` → ``1h30m``, ``7 days`` → ``7d``)."""
    if ms <= 0:
        raise ValueError("a PromQL duration must be longer than zero")
    out = []
    for unit, size in _UNITS_MS:
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(out)


def promql_interval_s(interval_ms: float) -> str:
    """The sampling interval as the literal the GPU-hours queries multiply by (seconds)."""
    return f"{interval_ms / 1000:g}"


def promql_gpu_hours(by: str, range_: str, interval_ms: float | None) -> str:
    """GPU-hours per ``by`` over ``range_`` (a PromQL duration such as ``7d``).

    Each ``fleet_gpu_allocation`` sample stands for one sampling interval (``interval_ms``, see
    :func:`sampling_interval_ms`); staleness markers are not samples and do not count.
    """
    interval = promql_interval_s(interval_ms) if interval_ms else "<sampling interval s>"
    return f"sum by ({by}) (count_over_time(fleet_gpu_allocation[{range_}])) * {interval} / 3600"


def promql_states(idle_threshold: float = IDLE_THRESHOLD) -> str:
    """The query of :func:`gpu_states`: one count per state, labelled ``state``, so a Grafana
    panel draws them all (and the evaluator reads each metric once)."""
    thr = f"{idle_threshold:g}"
    parts = [
        f'label_replace({q.format(thr=thr)}, "state", "{state}", "", "")'
        for state, q in PROMQL_STATES.items()
    ]
    return "\n or ".join(parts)


def promql_idle_share(window: str, step: str, idle_threshold: float = IDLE_THRESHOLD) -> str:
    """The query of :func:`idle_allocated_share` (``window``, ``step``: PromQL durations)."""
    thr = f"{idle_threshold:g}"
    idle = f"count(({UTILIZATION} < {thr}) and on(gpu_uuid) {ALLOCATION})[{window}:{step}]"
    measured = f"count({UTILIZATION} and on(gpu_uuid) {ALLOCATION})[{window}:{step}]"
    return f"sum_over_time({idle}) / sum_over_time({measured})"


def with_comments(queries: dict[str, str]) -> str:
    """Several queries as one text, each under a ``# name`` comment line (PromQL comments)."""
    return "\n".join(f"# {name}\n{query}" for name, query in queries.items())


# ------------------------------------------------------------------ reading results


def _number(result: QueryResult) -> float | None:
    """The value of a one-element vector or a scalar; ``None`` when empty or NaN."""
    if result.scalar is not None:
        value = result.scalar[1]
    elif result.series and len(result.series[0].values):
        value = float(result.series[0].values[-1])
    else:
        return None
    return None if math.isnan(value) else value


def _by_label(result: QueryResult, label: str) -> dict[str, float]:
    """A vector's values keyed by one label (``""`` where it is missing), summed on clashes."""
    out: dict[str, float] = {}
    for s in result.series:
        if len(s.values):
            key = s.labels.get(label, "")
            out[key] = out.get(key, 0.0) + float(s.values[-1])
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ utilization and states


def utilization(
    engine: Engine, start_ms: int, end_ms: int, step_ms: int
) -> tuple[list[int], list[float]]:
    """Mean GPU utilization (0–1) across reporting GPUs at each step.

    :data:`PROMQL_UTILIZATION` as a range query from ``start_ms`` to ``end_ms`` by ``step_ms``;
    steps at which no GPU has a sample are left out, as in a ``query_range`` result.
    """
    result = engine.range(PROMQL_UTILIZATION, start_ms, end_ms, step_ms)
    if not result.series:
        return [], []
    s = result.series[0]
    return s.t_ms.tolist(), s.values.tolist()


def gpu_states(
    engine: Engine, at_ms: int, *, idle_threshold: float = IDLE_THRESHOLD
) -> dict[str, int]:
    """GPUs per state at ``at_ms``: :func:`promql_states` as an instant query.

    GPUs are those whose ``fleet_gpu_up`` reported within :data:`KNOWN` (one series per GPU).
    ``down``: ``fleet_gpu_up`` is not 1 or has no sample within the lookback; ``unallocated``:
    up without ``fleet_gpu_allocation``; ``busy`` / ``allocated_idle``: up, allocated and
    utilization ≥ / < ``idle_threshold``; ``unknown``: up and allocated without a utilization
    sample (e.g. NVML does not report it). Always has the four :data:`STATES`; ``unknown`` only
    when some GPU is in it.
    """
    counts = _by_label(engine.instant(promql_states(idle_threshold), at_ms), "state")
    out = {state: int(counts.get(state, 0)) for state in STATES}
    if counts.get(UNKNOWN_STATE):
        out[UNKNOWN_STATE] = int(counts[UNKNOWN_STATE])
    return out


def idle_allocated_share(
    engine: Engine,
    at_ms: int,
    window_ms: int,
    step_ms: int,
    *,
    idle_threshold: float = IDLE_THRESHOLD,
) -> float | None:
    """Share of allocated GPU time spent below ``idle_threshold`` utilization (``None``: none).

    DESIGN.md "Definitions": idle GPU-hours = allocated time with utilization < 5 %. Sampled
    every ``step_ms`` over the ``window_ms`` before ``at_ms`` (a subquery, so the steps are
    multiples of ``step_ms``); one instant query, :func:`promql_idle_share`.
    """
    query = promql_idle_share(promql_duration(window_ms), promql_duration(step_ms), idle_threshold)
    return _number(engine.instant(query, at_ms))


# ------------------------------------------------------------------ GPU-hours


def sampling_interval_ms(engine: Engine, at_ms: int, window_ms: int | None = None) -> float | None:
    """How often GPUs are sampled, in ms: :data:`PROMQL_INTERVAL` at ``at_ms``.

    When no GPU reported over that last hour and ``window_ms`` is given, the same query as a
    range query at hourly steps over the window, and the median of its points. ``None`` when
    neither finds two samples of one GPU.
    """
    seconds = _number(engine.instant(PROMQL_INTERVAL, at_ms))
    if seconds is None and window_ms is not None and window_ms > INTERVAL_RANGE_MS:
        result = engine.range(PROMQL_INTERVAL, at_ms - window_ms, at_ms, INTERVAL_RANGE_MS)
        points = sorted(float(v) for s in result.series for v in s.values if not math.isnan(v))
        if points:
            mid = len(points) // 2
            seconds = points[mid] if len(points) % 2 else (points[mid - 1] + points[mid]) / 2
    return None if seconds is None or seconds <= 0 else seconds * 1000


def _check_by(by: str) -> None:
    if by not in USAGE_LABELS:
        raise ValueError(f"by must be one of {', '.join(USAGE_LABELS)}, not {by!r}")


def gpu_hours_by(
    engine: Engine, at_ms: int, window_ms: int, interval_ms: float | None, by: str = "team"
) -> dict[str, float]:
    """GPU-hours allocated in ``[at_ms - window_ms, at_ms]`` per value of the allocation label
    ``by``: :func:`promql_gpu_hours` as an instant query at ``at_ms``.

    ``interval_ms`` is the sampling interval (:func:`sampling_interval_ms`); without one there
    is nothing to multiply by and the answer is empty. Raises ``ValueError`` when ``by`` is not
    one of :data:`USAGE_LABELS`.
    """
    _check_by(by)
    if not interval_ms:
        return {}
    query = promql_gpu_hours(by, promql_duration(window_ms), interval_ms)
    return _by_label(engine.instant(query, at_ms), by)


def bucket_edges(start_ms: int, end_ms: int, bucket_ms: int) -> list[int]:
    """Starts of the buckets, aligned to multiples of ``bucket_ms`` (UTC), that overlap
    ``[start_ms, end_ms)`` (at least one)."""
    first = start_ms - start_ms % bucket_ms
    return list(range(first, max(end_ms, first + 1), bucket_ms))


def gpu_hours_by_time(
    engine: Engine,
    start_ms: int,
    end_ms: int,
    bucket_ms: int,
    interval_ms: float | None,
    by: str = "team",
) -> tuple[list[int], dict[str, list[float]]]:
    """GPU-hours per ``by`` value in each bucket (an hour, a day …), for a stacked chart.

    :func:`promql_gpu_hours` with range ``bucket_ms`` as a range query with step ``bucket_ms``,
    evaluated 1 ms before each bucket's end: Prometheus 2.42's range windows are closed, so the
    point at ``edge + bucket - 1 ms`` covers ``[edge - 1 ms, edge + bucket - 1 ms]``, and a
    sample on a bucket edge counts once, in the bucket it starts. Buckets are those of
    :func:`bucket_edges`, whole (the first may reach back before ``start_ms``). Returns the
    bucket starts and, per value, one number per bucket (0 where it has none).
    """
    _check_by(by)
    edges = bucket_edges(start_ms, end_ms, bucket_ms)
    if not interval_ms:
        return edges, {}
    query = promql_gpu_hours(by, promql_duration(bucket_ms), interval_ms)
    first, last = edges[0] + bucket_ms - 1, edges[-1] + bucket_ms - 1
    result = engine.range(query, first, last, bucket_ms)
    out: dict[str, list[float]] = {}
    for s in result.series:
        row = out.setdefault(s.labels.get(by, ""), [0.0] * len(edges))
        for t, v in zip(s.t_ms.tolist(), s.values.tolist(), strict=True):
            row[(t - first) // bucket_ms] += v
    return edges, dict(sorted(out.items()))


# ------------------------------------------------------------------ teams and jobs


def team_allocation(engine: Engine, at_ms: int) -> dict[str, int]:
    """GPUs allocated to each team at ``at_ms``: :data:`PROMQL_TEAM_ALLOCATION`."""
    found = _by_label(engine.instant(PROMQL_TEAM_ALLOCATION, at_ms), "team")
    return {team: int(n) for team, n in found.items()}


def team_quota(engine: Engine, at_ms: int) -> dict[str, float]:
    """GPU quota of each team at ``at_ms`` (summed over clusters): :data:`PROMQL_TEAM_QUOTA`."""
    return _by_label(engine.instant(PROMQL_TEAM_QUOTA, at_ms), "team")


@dataclass(frozen=True)
class JobRow:
    """One line of the running or pending jobs table."""

    id: str
    cluster: str
    team: str
    user: str
    workload: str
    tier: str
    gpus: int
    since_s: float  # running: seconds since start; pending: seconds since submit


def _row(job: Job, since_ms: int, now_ms: int) -> JobRow:
    return JobRow(
        job.id,
        job.cluster,
        job.team,
        job.user,
        job.workload,
        job.tier,
        job.gpus,
        max(0.0, (now_ms - since_ms) / 1000),
    )


def running_jobs(records: RecordStore, now_ms: int) -> list[JobRow]:
    """Running jobs, largest GPU count first, then longest running.

    From the record store (``records.jobs(states=["RUNNING"])``); PromQL for the count only:
    ``sum(fleet_sched_jobs{state="RUNNING"})``.
    """
    rows = [
        _row(j, int(j.start.timestamp() * 1000), now_ms)
        for j in records.jobs(states=[JobState.RUNNING])
        if j.start is not None
    ]
    return sorted(rows, key=lambda r: (-r.gpus, -r.since_s, r.id))


def pending_jobs(records: RecordStore, now_ms: int) -> list[JobRow]:
    """Pending jobs, longest waiting first (``records.jobs(states=["PENDING"])``).

    PromQL for the GPUs they ask for: ``sum(fleet_sched_pending_gpus)``.
    """
    rows = [
        _row(j, int(j.submit.timestamp() * 1000), now_ms)
        for j in records.jobs(states=[JobState.PENDING])
    ]
    return sorted(rows, key=lambda r: (-r.since_s, r.id))


# ------------------------------------------------------------------ verdicts

IDLE_SHARE_WATCH = 0.10
IDLE_SHARE_ACT = 0.25
ALLOCATED_WATCH = 0.80
ALLOCATED_ACT = 0.90


def effectiveness_verdict(idle_share: float | None) -> Verdict | None:
    """Question 1: good below 10 % idle allocated GPU time, act from 25 %; ``None`` without data."""
    if idle_share is None:
        return None
    if idle_share >= IDLE_SHARE_ACT:
        return "act"
    return "watch" if idle_share >= IDLE_SHARE_WATCH else "good"


def capacity_verdict(allocated_ratio: float | None, pending_gpus: int) -> Verdict | None:
    """Question 5: act when GPUs are pending and ≥ 90 % of healthy GPUs are allocated; watch when
    GPUs are pending or ≥ 80 % are allocated; good otherwise; ``None`` without healthy GPUs."""
    if allocated_ratio is None:
        return None
    if pending_gpus > 0 and allocated_ratio >= ALLOCATED_ACT:
        return "act"
    if pending_gpus > 0 or allocated_ratio >= ALLOCATED_WATCH:
        return "watch"
    return "good"


def allocated_ratio(states: dict[str, int]) -> float | None:
    """Allocated share of the GPUs that are up (``None`` when none is up)."""
    held = states.get("busy", 0) + states.get("allocated_idle", 0) + states.get(UNKNOWN_STATE, 0)
    healthy = held + states.get("unallocated", 0)
    return held / healthy if healthy else None


def quota_overruns(allocated: dict[str, int], quota: dict[str, float]) -> Sequence[str]:
    """Teams holding more GPUs than their quota."""
    return [t for t, n in allocated.items() if t in quota and n > quota[t]]
