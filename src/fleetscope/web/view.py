"""The overview's content for one window: the five questions, the charts and the job tables.

Built once per request from the stores by :func:`build`. The page embeds the charts' plotly
figures as JSON (one request, no client-side fetch, works offline); ``GET /api/v1/fleet/overview``
returns the same :class:`Overview` as JSON for scripts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleetscope.analyze import overview as ov
from fleetscope.store import MetricStore, RecordStore
from fleetscope.web.params import bucket_for, step_for

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


def _states_chart(states: dict[str, int], idle_threshold: float) -> Chart:
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
        ov.promql_states(idle_threshold),
        {"data": [trace], "layout": layout},
        sum(states.values()) > 0,
    )


def _team_hours_chart(hours: dict[str, float], window: str, interval_ms: float | None) -> Chart:
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
        ov.promql_gpu_hours("team", window, interval_ms),
        {"data": [trace], "layout": layout},
        bool(teams),
    )


def _team_hours_over_time_chart(
    edges: list[int],
    by_team: dict[str, list[float]],
    bucket_ms: int,
    interval_ms: float | None,
    window: tuple[int, int],
) -> Chart:
    bucket = f"{bucket_ms // 3_600_000}h" if bucket_ms >= 3_600_000 else f"{bucket_ms // 60_000}m"
    if bucket_ms >= 86_400_000:
        bucket = f"{bucket_ms // 86_400_000}d"
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
        ov.promql_gpu_hours("team", bucket, interval_ms) + f"  # range query, step {bucket}",
        {"data": traces, "layout": layout},
        any(any(v) for v in by_team.values()),
    )


def _quota_chart(allocated: dict[str, int], quota: dict[str, float]) -> Chart:
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
        "count by (team) (count by (team, gpu_uuid) (fleet_gpu_allocation))\n"
        "sum by (team) (fleet_sched_quota_gpus)",
        {"data": traces, "layout": layout},
        bool(teams),
    )


def _q1(share: float | None, window: str, idle_threshold: float) -> Question:
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
        )
    return Question(
        1,
        title,
        ov.effectiveness_verdict(share),
        f"{share:.0%} idle",
        f"of allocated GPU time was below {idle_threshold:.0%} utilization in the last {window}",
        "#chart-states",
        "GPUs by state",
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


def build(
    metrics: MetricStore,
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
    times, values = ov.utilization(metrics, start, end, step)
    states = ov.gpu_states(metrics, now_ms, idle_threshold=idle_threshold)
    share = ov.idle_allocated_share(metrics, start, end, step, idle_threshold=idle_threshold)
    usage = ov.usage(metrics, now_ms - window_ms, now_ms)
    hours = ov.sum_gpu_hours(usage, "team")
    edges, by_team = ov.bucket_gpu_hours(usage, now_ms - window_ms, now_ms, bucket, "team")
    allocated = ov.team_allocation(metrics, now_ms)
    quota = ov.team_quota(metrics, now_ms)
    running = ov.running_jobs(records, now_ms)
    pending = ov.pending_jobs(records, now_ms)
    questions = [
        _q1(share, window, idle_threshold),
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
    charts = [
        _utilization_chart(times, values, start, end),
        _states_chart(states, idle_threshold),
        _team_hours_chart(hours, window, usage.interval_ms),
        _team_hours_over_time_chart(
            edges, by_team, bucket, usage.interval_ms, (now_ms - window_ms, now_ms)
        ),
        _quota_chart(allocated, quota),
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
    )
