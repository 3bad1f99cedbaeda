"""The overview's content for one window: the five questions, the charts and the job tables.

Built once per request by :func:`build`: metric numbers from PromQL through the query
:class:`~fleetscope.query.Engine` (each chart carries the exact text of the queries it ran),
jobs from the :class:`~fleetscope.store.RecordStore`. A query that fails costs only its own
number or chart, which shows no data, and adds a line to ``warnings``; so do the partial-result
warnings an engine returns. The page embeds the charts' plotly figures as JSON (one request, no
client-side fetch, works offline); ``GET /api/v1/fleet/overview`` returns the same
:class:`Overview` as JSON for scripts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from fleetscope.analyze import overview as ov
from fleetscope.query import Engine, QueryError, QueryResult
from fleetscope.store import RecordStore
from fleetscope.web.params import bucket_for, step_for

log = logging.getLogger(__name__)

QUERY_THREADS = 4  # overview queries in flight at once

STATE_LABELS = {
    "busy": "busy",
    "allocated_idle": "allocated, idle",
    "unallocated": "unallocated",
    "down": "down",
    ov.UNKNOWN_STATE: "allocated, no utilization",
}
TEAM_COLORS = (
    "#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#9e9d24", "#4e342e",
)  # fmt: skip
STATE_COLORS = {
    "busy": "#2e7d32",
    "allocated_idle": "#f29900",
    "unallocated": "#90a4ae",
    "down": "#c62828",
    ov.UNKNOWN_STATE: "#cfd8dc",
}


@dataclass(frozen=True)
class Question:
    """One of DESIGN.md's five questions with its verdict, number and evidence link."""

    number: int
    title: str
    verdict: ov.Verdict | None  # None: no data, or not measured yet (then capability is set)
    value: str
    detail: str
    evidence: str  # link to the chart or table that proves it
    evidence_label: str
    capability: str | None = None  # what brings the measurement, while it is missing
    promql: str = ""  # the query behind ``value``, when one is


@dataclass(frozen=True)
class Chart:
    """A plotly figure, the PromQL it corresponds to, and whether it holds any data."""

    id: str
    title: str
    promql: str
    figure: dict[str, Any]
    has_data: bool

    def __post_init__(self) -> None:
        if not self.has_data:  # say so inside the plot instead of drawing empty axes
            layout = self.figure["layout"]
            layout["xaxis"] = {**layout.get("xaxis", {}), "visible": False}
            layout["yaxis"] = {**layout.get("yaxis", {}), "visible": False}
            layout["annotations"] = [
                {"text": "No data in this window", "xref": "paper", "yref": "paper", "x": 0.5,
                 "y": 0.5, "showarrow": False, "font": {"size": 14, "color": "#66788a"}}
            ]  # fmt: skip


@dataclass(frozen=True)
class Overview:
    window: str
    start_ms: int
    end_ms: int
    step_ms: int
    bucket_ms: int
    questions: list[Question]
    charts: list[Chart]
    states: dict[str, int]
    gpu_hours: dict[str, float]
    team_allocation: dict[str, int]
    team_quota: dict[str, float]
    running: list[ov.JobRow]
    pending: list[ov.JobRow]
    interval_ms: float | None = None  # the measured sampling interval (ov.PROMQL_INTERVAL)
    warnings: list[str] = field(default_factory=list)  # queries that failed or were partial

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def utc(ms: int) -> str:
    """A plotly date string (UTC) for epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def humanize(seconds: float) -> str:
    """A short duration: ``45s``, ``12m``, ``3h 05m``, ``2d 4h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86_400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86_400}d {s % 86_400 // 3600}h"


def _layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "height": 280,
        "margin": {"l": 56, "r": 16, "t": 8, "b": 40},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        "hovermode": "closest",
    }
    layout.update(extra)
    return layout


def team_colors(teams: list[str]) -> dict[str, str]:
    """A stable colour per team (sorted order), the same in every chart."""
    return {t: TEAM_COLORS[i % len(TEAM_COLORS)] for i, t in enumerate(sorted(teams))}


def _time_axis(start_ms: int, end_ms: int) -> dict[str, Any]:
    return {"type": "date", "range": [utc(start_ms), utc(end_ms)]}


def _utilization_chart(times: list[int], values: list[float], start: int, end: int) -> Chart:
    trace = {
        "type": "scatter",
        "mode": "lines",
        "name": "mean utilization",
        "x": [utc(t) for t in times],
        "y": values,
        "line": {"color": "#1565c0", "width": 2},
        "fill": "tozeroy",
        "fillcolor": "rgba(21,101,192,0.08)",
        "hovertemplate": "%{x}<br>%{y:.1%}<extra></extra>",
    }
    layout = _layout(
        yaxis={"tickformat": ".0%", "range": [0, 1.02], "title": {"text": "utilization"}},
        xaxis=_time_axis(start, end),
        showlegend=False,
    )
    return Chart(
        "chart-utilization",
        "Fleet GPU utilization",
        ov.PROMQL_UTILIZATION,
        {"data": [trace], "layout": layout},
        bool(times),
    )


def _states_chart(states: dict[str, int], promql: str) -> Chart:
    keys = list(states)
    trace = {
        "type": "bar",
        "x": [STATE_LABELS[k] for k in keys],
        "y": [states[k] for k in keys],
        "text": [str(states[k]) for k in keys],
        "textposition": "auto",
        "marker": {"color": [STATE_COLORS[k] for k in keys]},
        "hovertemplate": "%{x}: %{y} GPUs<extra></extra>",
    }
    layout = _layout(yaxis={"title": {"text": "GPUs"}, "rangemode": "tozero"}, showlegend=False)
    return Chart(
        "chart-states",
        "GPUs by state, now",
        promql,
        {"data": [trace], "layout": layout},
        sum(states.values()) > 0,
    )


def _team_hours_chart(hours: dict[str, float], window: str, promql: str) -> Chart:
    teams = sorted(hours, key=lambda t: -hours[t])
    colors = team_colors(teams)
    trace = {
        "type": "bar",
        "x": teams,
        "y": [hours[t] for t in teams],
        "text": [f"{hours[t]:,.0f}" for t in teams],
        "textposition": "auto",
        "marker": {"color": [colors[t] for t in teams]},
        "hovertemplate": "%{x}: %{y:,.1f} GPU-hours<extra></extra>",
    }
    layout = _layout(
        yaxis={"title": {"text": "GPU-hours"}, "rangemode": "tozero"}, showlegend=False
    )
    return Chart(
        "chart-team-hours",
        f"GPU-hours by team, last {window}",
        promql,
        {"data": [trace], "layout": layout},
        bool(teams),
    )


def _team_hours_over_time_chart(
    edges: list[int],
    by_team: dict[str, list[float]],
    bucket_ms: int,
    promql: str,
    window: tuple[int, int],
) -> Chart:
    bucket = ov.promql_duration(bucket_ms)
    x = [utc(t + bucket_ms // 2) for t in edges]
    colors = team_colors(list(by_team))
    traces = [
        {
            "type": "bar",
            "name": team,
            "x": x,
            "y": values,
            "width": bucket_ms * 0.9,
            "marker": {"color": colors[team]},
            "hovertemplate": f"{team}: %{{y:,.1f}} GPU-hours<extra></extra>",
        }
        for team, values in sorted(by_team.items())
    ]
    layout = _layout(
        barmode="stack",
        yaxis={"title": {"text": f"GPU-hours per {bucket}"}, "rangemode": "tozero"},
        xaxis=_time_axis(*window),
    )
    return Chart(
        "chart-team-hours-time",
        f"GPU-hours by team per {bucket}",
        promql,
        {"data": traces, "layout": layout},
        any(any(v) for v in by_team.values()),
    )


def _quota_chart(allocated: dict[str, int], quota: dict[str, float], promql: str) -> Chart:
    teams = sorted(set(allocated) | set(quota))
    traces: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": "allocated",
            "x": teams,
            "y": [allocated.get(t, 0) for t in teams],
            "marker": {"color": "#455a64"},
        }
    ]
    if quota:
        traces.append(
            {
                "type": "bar",
                "name": "quota",
                "x": teams,
                "y": [quota.get(t) for t in teams],
                "marker": {"color": "#cfd8dc"},
            }
        )
    layout = _layout(barmode="group", yaxis={"title": {"text": "GPUs"}, "rangemode": "tozero"})
    return Chart(
        "chart-quota",
        "GPUs allocated vs quota, now",
        promql,
        {"data": traces, "layout": layout},
        bool(teams),
    )


def _q1(share: float | None, window: str, idle_threshold: float, promql: str) -> Question:
    title = "Are GPUs being used effectively?"
    if share is None:
        return Question(
            1,
            title,
            None,
            "no data",
            f"no allocated GPU reported utilization in the last {window}",
            "#chart-states",
            "GPUs by state",
            promql=promql,
        )
    return Question(
        1,
        title,
        ov.effectiveness_verdict(share),
        f"{share:.0%} idle",
        f"of allocated GPU time was below {idle_threshold:.0%} utilization in the last {window}",
        "#chart-states",
        "GPUs by state",
        promql=promql,
    )


def _q5(
    states: dict[str, int],
    pending: list[ov.JobRow],
    allocated: dict[str, int],
    quota: dict[str, float],
) -> Question:
    title = "Is capacity aligned with demand?"
    ratio = ov.allocated_ratio(states)
    pending_gpus = sum(r.gpus for r in pending)
    if ratio is None:
        return Question(
            5,
            title,
            None,
            "no data",
            "no healthy GPU reported in the last 5 minutes",
            "#pending",
            "pending jobs",
        )
    held = states["busy"] + states["allocated_idle"] + states.get(ov.UNKNOWN_STATE, 0)
    healthy = held + states["unallocated"]
    over = ov.quota_overruns(allocated, quota)
    verdict = ov.capacity_verdict(ratio, pending_gpus)
    if over and verdict == "good":
        verdict = "watch"
    detail = (
        f"{held} of {healthy} healthy GPUs allocated; {pending_gpus} GPUs requested by "
        f"{len(pending)} pending jobs"
    )
    if over:
        detail += f"; over quota: {', '.join(over)}"
    return Question(5, title, verdict, f"{ratio:.0%} allocated", detail, "#pending", "pending jobs")


def _not_yet(number: int, title: str, capability: str, evidence: str) -> Question:
    return Question(
        number,
        title,
        None,
        "not measured yet",
        f"arrives with {capability}",
        evidence,
        "",
        capability,
    )


T = TypeVar("T")


class _Queries:
    """Runs the overview's analytics on a few threads (engines are thread-safe; the queries are
    independent); a failed one leaves its default and a warning, in the order they were started.
    """

    def __init__(self, engine: Engine, pool: ThreadPoolExecutor) -> None:
        self._engine = engine
        self._pool = pool
        self._warnings: list[list[str]] = []

    def start(self, what: str, compute: Callable[[Engine], T], default: T) -> Future[T]:
        engine = _Warnings(self._engine)
        self._warnings.append(engine.warnings)

        def run() -> T:
            try:
                return compute(engine)
            except QueryError as exc:
                log.warning("overview: %s failed: %s", what, exc.message)
                engine.warnings.append(f"{what}: {exc.error_type}: {exc.message}")
                return default

        return self._pool.submit(run)

    @property
    def warnings(self) -> list[str]:
        return [w for task in self._warnings for w in task]


class _Warnings:
    """An :class:`Engine` that passes queries on and keeps the partial-result warnings."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.warnings: list[str] = []

    def _keep(self, query: str, result: QueryResult) -> QueryResult:
        self.warnings.extend(f"{query}: {w}" for w in result.warnings)
        return result

    def instant(self, query: str, t_ms: int) -> QueryResult:
        return self._keep(query, self._engine.instant(query, t_ms))

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult:
        return self._keep(query, self._engine.range(query, start_ms, end_ms, step_ms))

    def series(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[dict[str, str]]:
        return self._engine.series(match, start_ms, end_ms)

    def label_names(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        return self._engine.label_names(match, start_ms, end_ms)

    def label_values(
        self, name: str, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        return self._engine.label_values(name, match, start_ms, end_ms)


def gpu_hours_promql(by: str, range_: str, interval_ms: float | None) -> str:
    """The GPU-hours query as shown: the query, then how its interval was measured (comments)."""
    query = ov.promql_gpu_hours(by, range_, interval_ms)
    if not interval_ms:
        return f"{query}\n# no sampling interval: no GPU reported twice; measured by\n" + (
            f"# {ov.PROMQL_INTERVAL}"
        )
    return (
        f"{query}\n# {ov.promql_interval_s(interval_ms)}: the sampling interval in seconds, "
        f"measured by\n# {ov.PROMQL_INTERVAL}"
    )


def build(
    engine: Engine,
    records: RecordStore,
    *,
    window: str,
    window_ms: int,
    now_ms: int,
    idle_threshold: float = ov.IDLE_THRESHOLD,
) -> Overview:
    """Compute everything the overview shows for the window ending now."""
    step = step_for(window_ms)
    bucket = bucket_for(window_ms)
    end = now_ms - now_ms % step
    start = end - window_ms
    with ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="overview") as pool:
        q = _Queries(engine, pool)
        # the sampling interval first: the GPU-hours queries multiply by it
        interval: float | None = q.start(
            "sampling interval", lambda e: ov.sampling_interval_ms(e, now_ms, window_ms), None
        ).result()
        no_points: tuple[list[int], list[float]] = ([], [])
        no_buckets: tuple[list[int], dict[str, list[float]]] = (
            ov.bucket_edges(now_ms - window_ms, now_ms, bucket),
            {},
        )
        hours_f: Future[dict[str, float]] = q.start(
            "GPU-hours", lambda e: ov.gpu_hours_by(e, now_ms, window_ms, interval), {}
        )
        buckets_f = q.start(
            "GPU-hours per bucket",
            lambda e: ov.gpu_hours_by_time(e, now_ms - window_ms, now_ms, bucket, interval),
            no_buckets,
        )
        share_f: Future[float | None] = q.start(
            "idle share",
            lambda e: ov.idle_allocated_share(
                e, end, window_ms, step, idle_threshold=idle_threshold
            ),
            None,
        )
        util_f = q.start("utilization", lambda e: ov.utilization(e, start, end, step), no_points)
        states_f: Future[dict[str, int]] = q.start(
            "GPU states",
            lambda e: ov.gpu_states(e, now_ms, idle_threshold=idle_threshold),
            {s: 0 for s in ov.STATES},
        )
        allocated_f: Future[dict[str, int]] = q.start(
            "team allocation", lambda e: ov.team_allocation(e, now_ms), {}
        )
        quota_f: Future[dict[str, float]] = q.start(
            "team quota", lambda e: ov.team_quota(e, now_ms), {}
        )
        running = ov.running_jobs(records, now_ms)
        pending = ov.pending_jobs(records, now_ms)
        hours, (edges, by_team), share = hours_f.result(), buckets_f.result(), share_f.result()
        times, values = util_f.result()
        states, allocated, quota = states_f.result(), allocated_f.result(), quota_f.result()
    share_promql = ov.promql_idle_share(
        ov.promql_duration(window_ms), ov.promql_duration(step), idle_threshold
    )
    questions = [
        _q1(share, window, idle_threshold, share_promql),
        _not_yet(
            2,
            "Are workloads completing reliably?",
            "job outcome analytics (failures, restarts, checkpoints)",
            "#running",
        ),
        _not_yet(
            3,
            "Is inference meeting latency targets?",
            "inference endpoint metrics and probes (TTFT, ITL)",
            "#running",
        ),
        _not_yet(
            4,
            "Are storage and networking limiting performance?",
            "the storage, network and InfiniBand collectors",
            "#chart-utilization",
        ),
        _q5(states, pending, allocated, quota),
    ]
    bucket_text = ov.promql_duration(bucket)
    charts = [
        _utilization_chart(times, values, start, end),
        _states_chart(states, ov.promql_states(idle_threshold)),
        _team_hours_chart(
            hours, window, gpu_hours_promql("team", ov.promql_duration(window_ms), interval)
        ),
        _team_hours_over_time_chart(
            edges,
            by_team,
            bucket,
            gpu_hours_promql("team", bucket_text, interval)
            + f"\n# range query, step {bucket_text}, each point 1 ms before its bucket's end",
            (now_ms - window_ms, now_ms),
        ),
        _quota_chart(
            allocated,
            quota,
            ov.with_comments(
                {"allocated": ov.PROMQL_TEAM_ALLOCATION, "quota": ov.PROMQL_TEAM_QUOTA}
            ),
        ),
    ]
    return Overview(
        window,
        start,
        end,
        step,
        bucket,
        questions,
        charts,
        states,
        hours,
        allocated,
        quota,
        running,
        pending,
        interval,
        q.warnings,
    )
