"""Fleet overview analytics: GPU utilization, GPU states, GPU-hours, jobs, and two verdicts.

Every function reads only the :class:`~fleetscope.store.MetricStore` and
:class:`~fleetscope.store.RecordStore` ports and is one small computation whose PromQL equivalent
is in its docstring (issue 3 moves them onto the PromQL evaluator). Until then they keep
Prometheus 2.42's instant-selector semantics: the value of a series at ``t`` is its newest sample
in ``[t - lookback, t]`` (lookback 5 minutes), and none when that sample is a staleness marker.

Times are integer milliseconds since the Unix epoch; ratios are 0–1; GPU-hours follow
DESIGN.md "Definitions" (Σ over allocated GPUs of allocated time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from fleetscope.model import Job, JobState
from fleetscope.store import METRIC_NAME, Matcher, MetricStore, RecordStore, SelectHints, Series

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Verdict = Literal["good", "watch", "act"]

UTILIZATION = "fleet_gpu_utilization_ratio"
UP = "fleet_gpu_up"
ALLOCATION = "fleet_gpu_allocation"
QUOTA = "fleet_sched_quota_gpus"

LOOKBACK_MS = 300_000  # Prometheus' default lookback delta
KNOWN_MS = 86_400_000  # a GPU whose fleet_gpu_up reported within a day is part of the fleet
HOUR_MS = 3_600_000
IDLE_THRESHOLD = 0.05  # DESIGN.md: allocated time with utilization < 5 % is idle
JITTER = 1.5  # gaps up to 1.5 sampling intervals are late samples, longer ones are outages
STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus' staleness marker (value.StaleNaN)

STATES = ("busy", "allocated_idle", "unallocated", "down")
UNKNOWN_STATE = "unknown"  # allocated and up, but no utilization sample
USAGE_LABELS = ("team", "user", "workload", "tier", "job", "node", "gpu_model")

_T = "on(gpu_uuid) fleet_gpu_allocation and on(gpu_uuid) (fleet_gpu_up == 1))"
PROMQL_UTILIZATION = "avg(fleet_gpu_utilization_ratio)"
PROMQL_STATES = {
    "busy": f"count((fleet_gpu_utilization_ratio >= {{thr}}) and {_T}",
    "allocated_idle": f"count((fleet_gpu_utilization_ratio < {{thr}}) and {_T}",
    "unallocated": "count((fleet_gpu_up == 1) unless on(gpu_uuid) fleet_gpu_allocation)",
    "down": "count(last_over_time(fleet_gpu_up[1d]) unless on(gpu_uuid) (fleet_gpu_up == 1))",
}


def promql_gpu_hours(by: str, range_: str, interval_ms: float | None) -> str:
    """The PromQL of :func:`gpu_hours_by` (``range_`` a duration such as ``7d``)."""
    interval_s = f"{interval_ms / 1000:g}" if interval_ms else "<sampling interval s>"
    return f"sum by ({by}) (count_over_time(fleet_gpu_allocation[{range_}])) * {interval_s} / 3600"


def promql_states(idle_threshold: float = IDLE_THRESHOLD) -> str:
    """The PromQL of :func:`gpu_states`, one expression per state."""
    return "\n".join(
        f"# {state}\n{q.format(thr=f'{idle_threshold:g}')}" for state, q in PROMQL_STATES.items()
    )


# ------------------------------------------------------------------ instant selection


def steps(start_ms: int, end_ms: int, step_ms: int) -> Ints:
    """Evaluation times of a range query: ``start, start + step, …`` up to ``end`` inclusive."""
    if step_ms <= 0 or end_ms < start_ms:
        raise ValueError("need step_ms > 0 and end_ms >= start_ms")
    return np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)


def is_stale(values: Floats) -> Bools:
    """True where a value is Prometheus' staleness marker (a NaN with one fixed bit pattern)."""
    bits: npt.NDArray[np.uint64] = np.ascontiguousarray(values, np.float64).view(np.uint64)
    return np.equal(bits, np.uint64(STALE_NAN_BITS))


def instant(series: Series, times: Ints, lookback_ms: int = LOOKBACK_MS) -> tuple[Floats, Bools]:
    """A series' value at each of ``times`` as an instant selector reads it, and where it has one.

    The value at ``t`` is the newest sample in ``[t - lookback_ms, t]`` (both ends inclusive, as
    Prometheus 2.42); there is none when no sample is there or the newest is a staleness marker.
    """
    if len(series.t_ms) == 0:
        return np.full(len(times), np.nan), np.zeros(len(times), np.bool_)
    idx = np.searchsorted(series.t_ms, times, side="right") - 1
    has = idx >= 0
    idx = np.maximum(idx, 0)
    t = series.t_ms[idx]
    v = series.values[idx]
    has &= (t >= times - lookback_ms) & ~is_stale(v)
    return np.where(has, v, np.nan), has


def _select(store: MetricStore, name: str, times: Ints, lookback_ms: int) -> list[Series]:
    """Series of ``name`` with enough samples to read them at every one of ``times``."""
    start, end = int(times[0]), int(times[-1])
    step = int(times[1] - times[0]) if len(times) > 1 else lookback_ms
    hints = SelectHints(start_ms=start, end_ms=end, step_ms=step, lookback_ms=lookback_ms)
    return store.select([Matcher.equal(METRIC_NAME, name)], start - lookback_ms, end, hints)


# ------------------------------------------------------------------ utilization and states


def utilization(
    store: MetricStore, start_ms: int, end_ms: int, step_ms: int, lookback_ms: int = LOOKBACK_MS
) -> tuple[list[int], list[float]]:
    """Mean GPU utilization (0–1) across reporting GPUs at each step.

    PromQL, as a range query from ``start_ms`` to ``end_ms`` by ``step_ms``:
    ``avg(fleet_gpu_utilization_ratio)``. Steps at which no GPU has a sample are left out, as in
    a ``query_range`` result.
    """
    times = steps(start_ms, end_ms, step_ms)
    total = np.zeros(len(times))
    count = np.zeros(len(times), np.int64)
    for s in _select(store, UTILIZATION, times, lookback_ms):
        v, has = instant(s, times, lookback_ms)
        total += np.where(has, v, 0.0)
        count += has
    keep = count > 0
    return times[keep].tolist(), (total[keep] / count[keep]).tolist()


def _by_gpu(series: list[Series], times: Ints, lookback_ms: int) -> dict[str, tuple[Floats, Bools]]:
    """Instant values per ``gpu_uuid`` (the largest where one GPU has several series)."""
    out: dict[str, tuple[Floats, Bools]] = {}
    for s in series:
        v, has = instant(s, times, lookback_ms)
        uuid = s.labels.get("gpu_uuid", "")
        if uuid in out:
            v0, has0 = out[uuid]
            v, has = np.fmax(v0, v), has0 | has
        out[uuid] = (v, has)
    return out


def gpu_state_counts(
    store: MetricStore,
    times: Ints,
    *,
    idle_threshold: float = IDLE_THRESHOLD,
    lookback_ms: int = LOOKBACK_MS,
    known_ms: int = KNOWN_MS,
) -> dict[str, Ints]:
    """How many GPUs are in each state at each of ``times``.

    GPUs are the ``gpu_uuid`` values of ``fleet_gpu_up`` series that reported within
    ``known_ms``. ``down``: ``fleet_gpu_up`` is not 1 or has no sample within the lookback;
    ``unallocated``: up and no ``fleet_gpu_allocation``; ``busy`` / ``allocated_idle``: up,
    allocated and utilization ≥ / < ``idle_threshold``; ``unknown``: up and allocated without a
    utilization sample (e.g. NVML does not report it). PromQL: :func:`promql_states`.
    """
    up_series = _select(store, UP, times, known_ms)
    known = {u: has for u, (_, has) in _by_gpu(up_series, times, known_ms).items()}
    up = {u: has & (v == 1) for u, (v, has) in _by_gpu(up_series, times, lookback_ms).items()}
    alloc = {
        u: has & (v > 0)
        for u, (v, has) in _by_gpu(
            _select(store, ALLOCATION, times, lookback_ms), times, lookback_ms
        ).items()
    }
    util = _by_gpu(_select(store, UTILIZATION, times, lookback_ms), times, lookback_ms)
    none = np.zeros(len(times), np.bool_)
    counts = {state: np.zeros(len(times), np.int64) for state in (*STATES, UNKNOWN_STATE)}
    for uuid, seen in known.items():
        is_up = up.get(uuid, none)
        held = is_up & alloc.get(uuid, none)
        v, measured = util.get(uuid, (np.full(len(times), np.nan), none))
        counts["down"] += seen & ~is_up
        counts["unallocated"] += is_up & ~held
        counts["busy"] += held & measured & (v >= idle_threshold)
        counts["allocated_idle"] += held & measured & (v < idle_threshold)
        counts[UNKNOWN_STATE] += held & ~measured
    return counts


def gpu_states(
    store: MetricStore,
    at_ms: int,
    *,
    idle_threshold: float = IDLE_THRESHOLD,
    lookback_ms: int = LOOKBACK_MS,
    known_ms: int = KNOWN_MS,
) -> dict[str, int]:
    """GPUs per state at ``at_ms`` (see :func:`gpu_state_counts`); PromQL: :func:`promql_states`.

    Always has the four :data:`STATES`; ``unknown`` only when some GPU is in it.
    """
    counts = gpu_state_counts(
        store,
        np.asarray([at_ms], np.int64),
        idle_threshold=idle_threshold,
        lookback_ms=lookback_ms,
        known_ms=known_ms,
    )
    out = {state: int(counts[state][0]) for state in STATES}
    if counts[UNKNOWN_STATE][0]:
        out[UNKNOWN_STATE] = int(counts[UNKNOWN_STATE][0])
    return out


def idle_allocated_share(
    store: MetricStore,
    start_ms: int,
    end_ms: int,
    step_ms: int,
    *,
    idle_threshold: float = IDLE_THRESHOLD,
) -> float | None:
    """Share of allocated GPU time spent below ``idle_threshold`` utilization (``None``: none).

    DESIGN.md "Definitions": idle GPU-hours = allocated time with utilization < 5 %. Sampled at
    each step; PromQL (``W`` the window, ``S`` the step)::

        sum_over_time(count((fleet_gpu_utilization_ratio < 0.05)
            and on(gpu_uuid) fleet_gpu_allocation)[W:S])
        / sum_over_time(count(fleet_gpu_utilization_ratio
            and on(gpu_uuid) fleet_gpu_allocation)[W:S])
    """
    counts = gpu_state_counts(
        store, steps(start_ms, end_ms, step_ms), idle_threshold=idle_threshold
    )
    idle = int(counts["allocated_idle"].sum())
    measured = idle + int(counts["busy"].sum())
    return idle / measured if measured else None


# ------------------------------------------------------------------ GPU-hours


@dataclass(frozen=True)
class Usage:
    """``fleet_gpu_allocation`` samples in a window and the GPU-hours each one stands for.

    A sample stands for the time until the next sample of its series, capped at the sampling
    interval (the median gap between samples of the node's allocation series; the fleet's
    median for a node with no gap in the window): a gap longer than :data:`JITTER` × interval
    (an outage, or the series ended) counts one interval, so does the last sample of a series;
    shorter gaps count whole, so timing jitter neither loses nor adds time. On regular sampling
    that is count × interval, unbiased for jobs that start and end between samples.
    """

    labels: list[dict[str, str]]  # per series
    series_index: Ints  # per sample: index into labels
    t_ms: Ints
    gpu_hours: Floats
    interval_ms: float | None  # the fleet's median sampling interval; None without any gap


def usage(store: MetricStore, start_ms: int, end_ms: int) -> Usage:
    """Allocation samples in ``[start_ms, end_ms]`` with their GPU-hours (see :class:`Usage`)."""
    series = store.select([Matcher.equal(METRIC_NAME, ALLOCATION)], start_ms, end_ms)
    if not series:
        empty = np.empty(0, np.int64)
        return Usage([], empty, empty, np.empty(0), None)
    sid = np.concatenate([np.full(len(s.t_ms), i, np.int64) for i, s in enumerate(series)])
    t = np.concatenate([s.t_ms for s in series]).astype(np.int64)
    v = np.concatenate([s.values for s in series]).astype(np.float64)
    same = sid[1:] == sid[:-1]
    gaps = np.diff(t)
    nodes = {name: i for i, name in enumerate(sorted({s.labels.get("node", "") for s in series}))}
    node_of_series = np.asarray([nodes[s.labels.get("node", "")] for s in series], np.int64)
    node_of_gap = node_of_series[sid[:-1][same]]
    inner = gaps[same]
    fleet = float(np.median(inner)) if len(inner) else None
    per_node = np.full(len(nodes), np.nan if fleet is None else fleet)
    order = np.argsort(node_of_gap, kind="stable")
    cuts = np.flatnonzero(np.diff(node_of_gap[order])) + 1
    for part in np.split(order, cuts):
        if len(part):
            per_node[node_of_gap[part[0]]] = np.median(inner[part])
    interval = per_node[node_of_series[sid]]
    nxt = np.append(np.where(same, gaps, np.iinfo(np.int64).max), np.iinfo(np.int64).max)
    held = (v > 0) & ~is_stale(v)
    stands = np.where(nxt <= JITTER * interval, nxt, interval)
    hours = np.where(held & ~np.isnan(interval), stands, 0.0) / HOUR_MS
    return Usage([dict(s.labels) for s in series], sid, t, hours, fleet)


def _group(u: Usage, by: str) -> tuple[list[str], Ints]:
    if by not in USAGE_LABELS:
        raise ValueError(f"by must be one of {', '.join(USAGE_LABELS)}, not {by!r}")
    keys = [lab.get(by, "") for lab in u.labels]
    names = sorted(set(keys))
    index = {k: i for i, k in enumerate(names)}
    return names, np.asarray([index[k] for k in keys], np.int64)


def sum_gpu_hours(u: Usage, by: str = "team") -> dict[str, float]:
    """GPU-hours per value of the allocation label ``by`` (see :func:`gpu_hours_by`)."""
    names, group = _group(u, by)
    totals = np.bincount(group[u.series_index], weights=u.gpu_hours, minlength=len(names))
    return {name: float(totals[i]) for i, name in enumerate(names)}


def gpu_hours_by(
    store: MetricStore, start_ms: int, end_ms: int, by: str = "team"
) -> dict[str, float]:
    """GPU-hours allocated in ``[start_ms, end_ms]`` per value of the allocation label ``by``.

    PromQL (``W`` the window, ``I`` the sampling interval in seconds):
    ``sum by (team) (count_over_time(fleet_gpu_allocation[W])) * I / 3600``. Raises
    ``ValueError`` when ``by`` is not one of :data:`USAGE_LABELS`.
    """
    return sum_gpu_hours(usage(store, start_ms, end_ms), by)


def bucket_gpu_hours(
    u: Usage, start_ms: int, end_ms: int, bucket_ms: int, by: str = "team"
) -> tuple[list[int], dict[str, list[float]]]:
    """GPU-hours per ``by`` value in buckets aligned to multiples of ``bucket_ms`` (UTC).

    Returns the bucket start times and, per value, one number per bucket; a sample counts in the
    bucket holding its timestamp.
    """
    names, group = _group(u, by)
    first = start_ms - start_ms % bucket_ms
    edges = np.arange(first, end_ms, bucket_ms, dtype=np.int64)
    nb = max(len(edges), 1)
    bucket = np.clip((u.t_ms - first) // bucket_ms, 0, nb - 1)
    cells = np.bincount(
        group[u.series_index] * nb + bucket, weights=u.gpu_hours, minlength=len(names) * nb
    ).reshape(len(names), nb)
    return edges[:nb].tolist(), {name: cells[i].tolist() for i, name in enumerate(names)}


def gpu_hours_by_time(
    store: MetricStore, start_ms: int, end_ms: int, bucket_ms: int, by: str = "team"
) -> tuple[list[int], dict[str, list[float]]]:
    """GPU-hours per ``by`` value per bucket (an hour, a day …), for a stacked chart.

    PromQL, as a range query with step ``B`` = ``bucket_ms`` (each point covers the bucket that
    ends at it): ``sum by (team) (count_over_time(fleet_gpu_allocation[B])) * I / 3600``.
    """
    return bucket_gpu_hours(usage(store, start_ms, end_ms), start_ms, end_ms, bucket_ms, by)


# ------------------------------------------------------------------ teams and jobs


def team_allocation(
    store: MetricStore, at_ms: int, lookback_ms: int = LOOKBACK_MS
) -> dict[str, int]:
    """GPUs allocated to each team at ``at_ms``.

    PromQL: ``count by (team) (count by (team, gpu_uuid) (fleet_gpu_allocation))``.
    """
    times = np.asarray([at_ms], np.int64)
    held: dict[str, set[str]] = {}
    for s in _select(store, ALLOCATION, times, lookback_ms):
        v, has = instant(s, times, lookback_ms)
        if has[0] and v[0] > 0:
            held.setdefault(s.labels.get("team", ""), set()).add(s.labels.get("gpu_uuid", ""))
    return {team: len(gpus) for team, gpus in sorted(held.items())}


def team_quota(store: MetricStore, at_ms: int, lookback_ms: int = LOOKBACK_MS) -> dict[str, float]:
    """GPU quota of each team at ``at_ms``. PromQL: ``sum by (team) (fleet_sched_quota_gpus)``."""
    times = np.asarray([at_ms], np.int64)
    out: dict[str, float] = {}
    for s in _select(store, QUOTA, times, lookback_ms):
        v, has = instant(s, times, lookback_ms)
        if has[0]:
            team = s.labels.get("team", "")
            out[team] = out.get(team, 0.0) + float(v[0])
    return dict(sorted(out.items()))


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
