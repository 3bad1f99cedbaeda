"""``fleetscope top``: a live terminal view of every GPU of the fleet, grouped by node.

Like nvitop, but across nodes: one line per GPU (utilization and memory bars, temperature, power,
the job holding it, its user and team) under a header line per node (host CPU, memory, load), and
a footer with fleet totals and the teams holding the most GPUs. The numbers are those of the
node pages (:mod:`fleetscope.analyze.nodes`), sent as PromQL instant queries to
``/api/v1/query`` of a Fleetscope server — or of any Prometheus-compatible server holding the
canonical metrics — through :class:`~fleetscope.store.prometheus_api.PrometheusEngine` with the
bearer token. ``--team`` keeps the GPUs allocated to one team (and their nodes); ``--once``
prints one frame, ``--json`` the data of one frame, and both exit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleetscope.analyze import nodes as an
from fleetscope.analyze.overview import with_comments
from fleetscope.query import Engine, QueryError

BAR_WIDTH = 10
TOP_TEAMS = 5
IDLE = 0.05  # utilization below which an allocated GPU shows as idle (DESIGN.md)


@dataclass(frozen=True)
class TeamUse:
    """GPUs a team holds in the frame and their mean utilization (0–1, ``None``: unmeasured)."""

    team: str
    gpus: int
    utilization: float | None


@dataclass(frozen=True)
class Frame:
    """One refresh of the view: the nodes and GPUs shown at ``at_ms``, and the totals."""

    at_ms: int
    team: str | None
    nodes: list[an.NodeSummary]
    gpus: list[an.GpuRow]
    gpus_up: int
    gpus_allocated: int
    utilization: float | None  # mean over the GPUs shown that report it
    memory_used_bytes: float
    memory_total_bytes: float
    power_watts: float
    teams: list[TeamUse]
    promql: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def frame(engine: Engine, at_ms: int, team: str | None = None) -> Frame:
    """The view at ``at_ms``: :func:`~fleetscope.analyze.nodes.node_inventory` and every GPU
    (:func:`~fleetscope.analyze.nodes.gpus`), kept to ``team``'s GPUs and nodes when given.

    Raises :class:`~fleetscope.query.QueryError` when a query fails.
    """
    inventory = an.node_inventory(engine, at_ms)
    gpu_section = an.gpus(engine, at_ms)
    rows = gpu_section.rows
    if team is not None:
        rows = [g for g in rows if team in g.teams]
    shown = {g.node for g in rows}
    nodes = [n for n in inventory.rows if team is None or n.node in shown]
    held: dict[str, list[an.GpuRow]] = {}
    for g in rows:
        for t in g.teams:
            held.setdefault(t, []).append(g)
    teams = [
        TeamUse(t, len(gs), _mean([g.utilization for g in gs if g.utilization is not None]))
        for t, gs in held.items()
    ]
    teams.sort(key=lambda u: (-u.gpus, u.team))
    return Frame(
        at_ms,
        team,
        nodes,
        rows,
        sum(1 for g in rows if g.up),
        sum(1 for g in rows if g.allocations),
        _mean([g.utilization for g in rows if g.utilization is not None]),
        sum(g.memory_used_bytes or 0.0 for g in rows),
        sum(g.memory_total_bytes or 0.0 for g in rows),
        sum(g.power_watts or 0.0 for g in rows),
        teams[:TOP_TEAMS],
        with_comments({"nodes": inventory.promql, "gpus": gpu_section.promql}),
    )


# ------------------------------------------------------------------ rendering


def bar(ratio: float | None, width: int = BAR_WIDTH, style: str = "green") -> Text:
    """``███░░░░░░░  30%``; dots when unknown."""
    if ratio is None:
        return Text("·" * width + "    –", style="dim")
    r = max(0.0, min(1.0, ratio))
    filled = round(r * width)
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {r * 100:3.0f}%")
    return text


def _gib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**30:.1f}"


def _util_style(g: an.GpuRow) -> str:
    if g.utilization is None:
        return "dim"
    if g.allocations and g.utilization < IDLE:
        return "yellow"
    return "green"


def _mem_style(ratio: float | None) -> str:
    return "red" if ratio is not None and ratio >= 0.9 else "cyan"


def _columns(table: Table) -> None:
    table.add_column("GPU", width=5, no_wrap=True)
    table.add_column("util", width=BAR_WIDTH + 5, no_wrap=True)
    table.add_column("memory", width=BAR_WIDTH + 5, no_wrap=True)
    table.add_column("GiB", width=11, justify="right", no_wrap=True)
    table.add_column("temp", width=5, justify="right", no_wrap=True)
    table.add_column("power", width=6, justify="right", no_wrap=True)
    table.add_column("job", width=14, no_wrap=True, overflow="ellipsis")
    table.add_column("user", width=10, no_wrap=True, overflow="ellipsis")
    table.add_column("team", width=10, no_wrap=True, overflow="ellipsis")


def _gpu_line(table: Table, g: an.GpuRow) -> None:
    index = Text(g.index or "?", style="red" if g.up is False else "")
    if g.up is False:
        cells: list[Text | str] = [Text("down", style="bold red"), "", "", "", ""]
    else:
        cells = [
            bar(g.utilization, style=_util_style(g)),
            bar(g.memory_ratio, style=_mem_style(g.memory_ratio)),
            f"{_gib(g.memory_used_bytes)}/{_gib(g.memory_total_bytes)}",
            "–" if g.temperature_celsius is None else f"{g.temperature_celsius:.0f}C",
            "–" if g.power_watts is None else f"{g.power_watts:.0f}W",
        ]
    jobs = ", ".join(a.job for a in g.allocations) or Text(
        "" if g.up is False else "free", style="dim"
    )
    users = ", ".join(sorted({a.user for a in g.allocations if a.user}))
    table.add_row(index, *cells, jobs, users, ", ".join(g.teams))


def _node_header(n: an.NodeSummary) -> Text:
    text = Text(n.node, style="bold")
    host = [
        f"CPU {'–' if n.cpu_utilization is None else f'{n.cpu_utilization * 100:.0f}%'}",
        f"mem {_gib(n.memory_used_bytes)}/{_gib(n.memory_total_bytes)} GiB",
        f"load {'–' if n.load1 is None else f'{n.load1:.1f}'}",
        f"GPUs {n.gpus_up}/{n.gpus} up, {n.gpus_allocated} allocated",
    ]
    text.append("  " + "  ".join(host), style="dim" if n.gpus_up == n.gpus else "yellow")
    return text


def _when(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at_ms / 1000))


def render(f: Frame) -> RenderableType:
    """The frame as Rich renderables: title, a block per node, the totals footer."""
    title = Text("fleetscope top", style="bold")
    title.append(f"  {_when(f.at_ms)}" + (f"  team {f.team}" if f.team else ""), style="dim")
    parts: list[RenderableType] = [title]
    by_node: dict[str, list[an.GpuRow]] = {}
    for g in f.gpus:
        by_node.setdefault(g.node, []).append(g)
    for n in f.nodes:
        parts.append(_node_header(n))
        gpus = by_node.get(n.node, [])
        if gpus:
            table = Table(box=None, pad_edge=False, show_header=False, padding=(0, 1))
            _columns(table)
            for g in gpus:
                _gpu_line(table, g)
            parts.append(table)
    if not f.nodes:
        parts.append(Text("no GPU" + (f" of team {f.team}" if f.team else "") + " reported"))
    header = Table(box=None, pad_edge=False, show_header=True, padding=(0, 1))
    _columns(header)
    parts.insert(1, header)
    util = "–" if f.utilization is None else f"{f.utilization * 100:.0f}%"
    footer = Text(
        f"{len(f.gpus)} GPUs on {len(f.nodes)} nodes: {f.gpus_up} up, {f.gpus_allocated} "
        f"allocated, mean util {util}, memory {_gib(f.memory_used_bytes)}/"
        f"{_gib(f.memory_total_bytes)} GiB, power {f.power_watts / 1000:.1f} kW",
        style="bold",
    )
    parts.append(footer)
    if f.teams:
        teams = "  ".join(
            f"{t.team} {t.gpus} GPUs"
            + ("" if t.utilization is None else f" ({t.utilization * 100:.0f}%)")
            for t in f.teams
        )
        parts.append(Text(f"top teams: {teams}"))
    return Group(*parts)


# ------------------------------------------------------------------ the command


def _error(message: str) -> RenderableType:
    return Text(f"fleetscope top: {message}", style="bold red")


def run(
    url: str,
    token: str | None,
    *,
    team: str | None = None,
    refresh_s: float = 2.0,
    once: bool = False,
    as_json: bool = False,
    console: Console | None = None,
    engine: Engine | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run ``fleetscope top`` against the server at ``url``; returns the exit status.

    ``url`` is the base before ``/api/v1`` (a Fleetscope server, Prometheus, VictoriaMetrics …);
    ``token`` goes as ``Authorization: Bearer``. Every ``refresh_s`` seconds a new frame
    replaces the last (``rich.live``) until Ctrl-C; ``once`` prints one frame and returns,
    ``as_json`` prints one frame's data as JSON and returns. A failing query is exit status 1
    with one frame, or a red line that the next good frame replaces. ``engine`` replaces the
    HTTP engine (tests); ``clock`` gives seconds since the epoch.
    """
    out = console or Console()
    own = engine is None
    if engine is None:
        from fleetscope.store.prometheus_api import PrometheusEngine

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        engine = PrometheusEngine(url, headers=headers, timeout_s=max(5.0, refresh_s * 5))
    try:

        def current() -> Frame:
            return frame(engine, int(clock() * 1000), team)

        if once or as_json:
            try:
                f = current()
            except QueryError as exc:
                out.print(_error(f"{exc.error_type}: {exc.message}"))
                return 1
            if as_json:
                out.print_json(json.dumps(f.to_json()))
            else:
                out.print(render(f))
            return 0
        with Live(console=out, auto_refresh=False, screen=False) as live:
            try:
                while True:
                    try:
                        live.update(render(current()), refresh=True)
                    except QueryError as exc:
                        live.update(_error(f"{exc.error_type}: {exc.message}"), refresh=True)
                    time.sleep(refresh_s)
            except KeyboardInterrupt:
                return 0
    finally:
        if own:
            close = getattr(engine, "close", None)
            if close is not None:
                close()
