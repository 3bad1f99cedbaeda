"""The ``fleetscope`` command: wires stages together, starts them in order, stops them in reverse.

Commands: ``up`` (server + simulated fleet), ``server``, ``agent``, ``simulate`` and
``simulate ledger``. Nothing here computes; each stage owns its work and its threads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from fleetscope import __version__
from fleetscope.config import ConfigError, Settings, load, parse_duration_ms

log = logging.getLogger("fleetscope")
console = Console(stderr=True)

app = typer.Typer(
    help="Fleetscope: monitoring for multi-team GPU fleets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
simulate_app = typer.Typer(
    help="Run a simulated fleet (fake NVML, fake scheduler) whose agents remote-write to a "
    "server; `simulate ledger` prints the simulator's ground truth."
)
app.add_typer(simulate_app, name="simulate")

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Data directory (default ./fleetscope-data).")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Settings file (default ./fleetscope.toml).")
]
PortOpt = Annotated[int | None, typer.Option("--port", help="HTTP port (default 8000).")]
HostOpt = Annotated[
    str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")
]


def _duration(text: str, option: str) -> int:
    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def _settings(
    config: Path | None, data: Path | None, host: str | None, port: int | None
) -> Settings:
    try:
        settings = load(config)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if data is not None:
        settings.data_dir = data
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    return settings


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # one line per HTTP request (every agent push) drowns what matters
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


@dataclass
class _Stage:
    """A background stage: ``run`` blocks on its own thread until ``stop`` is called."""

    name: str
    run: Callable[[], None]
    stop: Callable[[], None]
    thread: threading.Thread | None = None


def _serve(settings: Settings, web_app: object, stages: list[_Stage]) -> None:
    """Run uvicorn on the main thread, ``stages`` on threads; stop them in reverse order."""
    import uvicorn  # only the server commands need it (the agent's memory stays lower)

    config = uvicorn.Config(
        web_app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    for stage in stages:
        started = time.monotonic()
        stage.thread = threading.Thread(target=stage.run, name=stage.name, daemon=True)
        stage.thread.start()
        log.info("started %s in %.2fs", stage.name, time.monotonic() - started)
    try:
        server.run()
    finally:
        for stage in reversed(stages):
            started = time.monotonic()
            stage.stop()
            if stage.thread is not None:
                stage.thread.join(timeout=30)
            log.info("stopped %s in %.2fs", stage.name, time.monotonic() - started)


def _open_stores(settings: Settings) -> object:
    from fleetscope.store.duckdb import DuckDBStore

    try:
        return DuckDBStore(settings.db_path, memory_limit=settings.memory_limit)
    except Exception as exc:  # duckdb raises its own IOException when the file is locked
        console.print(f"[red]cannot open the store at {settings.db_path}:[/red] {exc}")
        raise typer.Exit(1) from exc


def _engine(settings: Settings) -> Any | None:
    """The configured backend's PromQL engine; ``None`` means the embedded evaluator."""
    if settings.backend.kind != "prometheus":
        return None
    from fleetscope.store.prometheus_api import PrometheusEngine

    return PrometheusEngine(settings.backend.url or "", headers=settings.backend.headers)


def _web_app(settings: Settings, store: object, engine: Any | None = None) -> tuple[object, str]:
    from fleetscope.web.app import create_app
    from fleetscope.web.auth import AdminToken
    from fleetscope.web.settings import WebSettings

    web_settings = WebSettings(data_dir=settings.data_dir, idle_threshold=settings.idle_threshold)
    web_app = create_app(web_settings, store, store, engine)  # type: ignore[arg-type]
    token = AdminToken.load_or_create(settings.data_dir)
    return web_app, token.value


def _print_login(settings: Settings, token: str) -> None:
    from fleetscope.web.auth import login_url

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    console.print(f"[bold green]Fleetscope {__version__}[/bold green] serving on {base}")
    console.print(f"  log in:      [link]{login_url(base, token)}[/link]")
    console.print(f"  admin token: {settings.data_dir / 'admin.token'}")


def _server_stages(settings: Settings, store: object) -> list[_Stage]:
    from fleetscope.store.retention import Retention

    stages = []
    if settings.backend.kind == "embedded":  # an external backend keeps its own retention
        retention = Retention(store, settings.retention_ms)  # type: ignore[arg-type]
        stages.append(_Stage("retention", retention.run, retention.stop))
    if settings.scrape:
        import asyncio

        from fleetscope.ingest.scrape import Scraper, ScrapeTarget

        targets = [ScrapeTarget(s.url, s.job, s.instance) for s in settings.scrape]
        scraper = Scraper(targets, store, min(s.interval_s for s in settings.scrape))  # type: ignore[arg-type]
        loop = asyncio.new_event_loop()

        def stop_scraper() -> None:
            loop.call_soon_threadsafe(scraper.stop)

        stages.append(
            _Stage("scrape", lambda: loop.run_until_complete(scraper.run()), stop_scraper)
        )
    return stages


@app.command()
def server(
    data: DataOpt = None,
    port: PortOpt = None,
    host: HostOpt = None,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Serve the UI, the APIs and the remote-write receiver on a store (no simulator).

    With `[metrics] backend = "prometheus"` in the settings, PromQL (/api/v1/query …) goes to
    that Prometheus-compatible server; records stay in the local store.
    """
    _logging(verbose)
    settings = _settings(config, data, host, port)
    store = _open_stores(settings)
    engine = _engine(settings)
    web_app, token = _web_app(settings, store, engine)
    _print_login(settings, token)
    if engine is not None:
        console.print(f"  PromQL backend: {settings.backend.url}")
    try:
        _serve(settings, web_app, _server_stages(settings, store))
    finally:
        if engine is not None:
            engine.close()
        store.close()  # type: ignore[attr-defined]


@app.command()
def agent(
    node: Annotated[
        str | None, typer.Option(help="Node name in the series (default: this host's name).")
    ] = None,
    push: Annotated[
        str | None,
        typer.Option(help="Remote-write URL, e.g. http://fleetscope:8000/api/v1/write."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSCOPE_TOKEN", help="Bearer token for --push (env FLEETSCOPE_TOKEN)."
        ),
    ] = None,
    interval: Annotated[str, typer.Option(help="Collection interval.")] = "15s",
    listen: Annotated[
        str | None, typer.Option(help="Serve /metrics on HOST:PORT (e.g. :9500).")
    ] = None,
    root: Annotated[
        Path, typer.Option(help="Root of /proc and /run (a fixture tree in tests).")
    ] = Path("/"),
    wal_dir: Annotated[
        str | None,
        typer.Option(
            help="Write-ahead log directory for --push: every batch is stored there (fsynced) "
            "before it is sent, so outages and restarts lose nothing. Default: "
            "/var/lib/fleetscope/wal/NODE when writable (a system service), else "
            "$XDG_STATE_HOME/fleetscope/wal/NODE (~/.local/state/...); 'none' queues in "
            "memory only.",
        ),
    ] = None,
    wal_max_bytes: Annotated[
        str,
        typer.Option(
            help="Size bound of the write-ahead log (e.g. 256MiB, 1GiB); when full, the oldest "
            "unsent batches are dropped and counted in fleet_agent_dropped_samples_total."
        ),
    ] = "256MiB",
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Collect this node's GPUs (NVML), GPU processes → jobs → teams, XIDs, host, disks, NFS,
    NICs, InfiniBand, mesh and endpoint probes and local exporters (the config's agent
    section); serve and/or push them."""
    import socket

    from fleetscope import wal
    from fleetscope.agent import Agent, default_collectors

    _logging(verbose)
    settings = _settings(config, None, None, None)
    interval_s = _duration(interval, "--interval") / 1000
    if push is None and listen is None:
        raise typer.BadParameter(
            "give --push URL, --listen HOST:PORT, or both", param_hint="--push"
        )
    try:
        max_bytes = wal.parse_size(wal_max_bytes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--wal-max-bytes") from exc
    address = None
    if listen is not None:
        host_part, _, port_part = listen.rpartition(":")
        if not port_part.isdigit():
            raise typer.BadParameter(f"expected HOST:PORT, got {listen!r}", param_hint="--listen")
        address = (host_part or "0.0.0.0", int(port_part))
    name = node or socket.gethostname()
    directory: Path | None = None
    if push is not None and wal_dir != "none":
        directory = Path(wal_dir) if wal_dir else wal.default_directory(name)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        the_agent = Agent(
            name,
            default_collectors(
                name, root=root, team_map=settings.team_accounts, config=settings.agent
            ),
            push_url=push,
            interval_s=interval_s,
            listen=address,
            wal_dir=directory,
            wal_max_bytes=max_bytes,
            client=httpx.Client(headers=headers, timeout=10.0),
        )
    except OSError as exc:  # the WAL directory: held by another agent, not writable …
        console.print(f"[red]cannot open the write-ahead log:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(
        f"agent on node [bold]{name}[/bold], every {interval}"
        + (f", pushing to {push}" if push else "")
        + (f" (write-ahead log {directory})" if directory else "")
        + (f", /metrics on {listen}" if listen else "")
    )
    try:
        the_agent.run()
    except KeyboardInterrupt:
        pass
    finally:
        the_agent.close()


def _records_into(store: object) -> Callable[[list[Any]], object]:
    """A records sink that hands jobs to the record intake (the path adapters use over HTTP)."""
    from fleetscope.ingest.records import accept_jobs

    def sink(jobs: list[Any]) -> object:
        return accept_jobs(store, [j.model_dump(mode="json") for j in jobs])  # type: ignore[arg-type]

    return sink


def _backfill(
    store: object, sim: Any, start_ms: int, end_ms: int, sink: Callable[..., object], label: str
) -> None:
    """Write simulated history ``[start_ms, end_ms)`` into the store with a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    percent = TextColumn("{task.percentage:>3.0f}%")
    columns = (TextColumn("{task.description}"), BarColumn(), percent, TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=max(1, end_ms - start_ms))
        stats = sim.backfill(
            store,
            start_ms,
            end_ms,
            sink,
            progress=lambda done, _: bar.update(task, completed=done),
            events_sink=store.add_events,  # type: ignore[attr-defined]
        )
    console.print(
        f"  wrote {stats.samples:,} samples, {stats.records:,} job updates and "
        f"{stats.events:,} XID events "
        f"(generate {stats.generate_s:.1f}s, store {stats.store_s:.1f}s)"
    )


def _replay(state: Any, sim: Any, label: str) -> None:
    """Bring a fresh simulation back to ``state.until_ms`` with a progress bar."""
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(label, total=max(1, state.until_ms - state.origin_ms))
        state.replay(sim, progress=lambda done, _: bar.update(task, completed=done))


@app.command()
def up(
    data: DataOpt = None,
    gpus: Annotated[
        int | None, typer.Option(min=1, max=65_536, help="Simulated GPUs (default 64).")
    ] = None,
    history: Annotated[
        str, typer.Option(help="History to backfill on the first run (e.g. 14d, 36h).")
    ] = "14d",
    port: PortOpt = None,
    host: HostOpt = None,
    seed: Annotated[int | None, typer.Option(help="Simulation seed (default 0).")] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Trace calibration file (default Helios)."),
    ] = None,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the server and a simulated fleet on the embedded store (the demo, one command).

    The first run backfills --history of the simulated fleet; later runs on the same --data
    reuse it, fill only the gap since the last run, then continue in real time: the simulator
    drives fake NVML devices and fake /proc trees, real agents collect them and remote-write to
    the server.
    """
    from fleetscope.simulate.live import LiveFleet
    from fleetscope.simulate.state import SimState
    from fleetscope.store.retention import Retention

    _logging(verbose)
    settings = _settings(config, data, host, port)
    if settings.backend.kind != "embedded":
        console.print(
            "[red]fleetscope up runs on the embedded store.[/red] With a Prometheus-compatible "
            "backend run `fleetscope server` and point `fleetscope simulate --push` at "
            f"{settings.backend.remote_write_url}."
        )
        raise typer.Exit(2)
    history_ms = _duration(history, "--history")
    store = _open_stores(settings)
    web_app, token = _web_app(settings, store)
    sink = _records_into(store)
    root = settings.data_dir / "sim"
    try:
        state = SimState.load(settings.data_dir)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    now_ms = int(time.time() * 1000)
    if state is None:
        tick_ms = 15_000
        origin = (now_ms - history_ms) // tick_ms * tick_ms
        state = SimState(gpus or 64, seed or 0, origin, origin - tick_ms,
                         str(calibration.resolve()) if calibration else None)  # fmt: skip
        sim = state.simulation(root)
        _backfill(store, sim, origin, now_ms, sink,
                  f"backfilling {history} of {state.gpus} GPUs")  # fmt: skip
    else:
        asked = (gpus or state.gpus, state.seed if seed is None else seed)
        if asked != (state.gpus, state.seed):
            console.print(
                f"[red]{settings.data_dir} holds a simulation of {state.gpus} GPUs (seed "
                f"{state.seed}).[/red] Use another --data for a different fleet."
            )
            raise typer.Exit(2)
        sim = state.simulation(root)
        _replay(state, sim, "restoring the simulation")
        if now_ms - state.until_ms > 2 * sim.tick_ms:
            gap = f"{(now_ms - state.until_ms) / 60_000:.0f} min"
            _backfill(store, sim, state.until_ms + sim.tick_ms, now_ms, sink,
                      f"filling the {gap} since the last run")  # fmt: skip
        else:
            console.print("  reusing the stored history")
    state.until_ms = sim.now_ms if sim.now_ms is not None else state.until_ms
    state.save(settings.data_dir)
    store.checkpoint()  # type: ignore[attr-defined]

    def saved(t_ms: int) -> None:
        state.until_ms = t_ms
        state.save(settings.data_dir)

    local = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{local}:{settings.port}"
    live = LiveFleet(sim, f"{base}/api/v1/write", token=token, records_sink=sink,
                     on_tick=saved, team_map=settings.team_accounts)  # fmt: skip

    def run_live() -> None:
        if live.wait_for_server(f"{base}/healthz"):
            live.run()

    retention = Retention(store, settings.retention_ms)  # type: ignore[arg-type]
    _print_login(settings, token)
    try:
        _serve(settings, web_app, [_Stage("retention", retention.run, retention.stop),
                                   _Stage("simulated fleet", run_live, live.stop)])  # fmt: skip
    finally:
        live.close()
        store.close()  # type: ignore[attr-defined]


@simulate_app.callback(invoke_without_command=True)
def simulate(
    ctx: typer.Context,
    push: Annotated[
        str | None,
        typer.Option(help="Remote-write URL of a server, e.g. http://127.0.0.1:8000/api/v1/write."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="FLEETSCOPE_TOKEN", help="Bearer token (env FLEETSCOPE_TOKEN)."),
    ] = None,
    gpus: Annotated[int, typer.Option(min=1, max=65_536, help="Simulated GPUs.")] = 64,
    seed: Annotated[int, typer.Option(help="Simulation seed.")] = 0,
    root: Annotated[
        Path | None, typer.Option(help="Where the fake node trees live (default: a temp dir).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run a simulated fleet in real time; its agents remote-write to --push and its job
    records go to the same server's /api/v1/records/jobs."""
    import tempfile

    from fleetscope.simulate.fleet import FleetSpec
    from fleetscope.simulate.live import LiveFleet
    from fleetscope.simulate.sim import Simulation

    if ctx.invoked_subcommand is not None:
        return
    if push is None:
        raise typer.BadParameter("give the server's remote-write URL", param_hint="--push")
    _logging(verbose)
    records_url = push.rsplit("/api/v1/write", 1)[0] + "/api/v1/records/jobs"
    client = httpx.Client(headers={"Authorization": f"Bearer {token}"} if token else {})

    def post_records(jobs: list[Any]) -> object:
        body = [j.model_dump(mode="json") for j in jobs]
        response = client.post(records_url, json=body, timeout=10.0)
        if response.status_code >= 400:
            log.warning("records refused (%d): %s", response.status_code, response.text[:300])
        return response.status_code

    with tempfile.TemporaryDirectory(prefix="fleetscope-sim-") as tmp:
        sim = Simulation(FleetSpec(gpus=gpus, seed=seed), root_dir=root or Path(tmp))
        live = LiveFleet(sim, push, token=token, records_sink=post_records)
        console.print(f"simulating {gpus} GPUs, pushing to {push} (Ctrl-C to stop)")
        try:
            live.run()
        except KeyboardInterrupt:
            pass
        finally:
            live.close()
            client.close()


@simulate_app.command("ledger")
def ledger(
    data: Annotated[Path, typer.Option(help="Data directory of a `fleetscope up` run.")] = Path(
        "fleetscope-data"
    ),
    window: Annotated[str, typer.Option(help="Window ending at the newest simulated tick.")] = "7d",
    by: Annotated[str, typer.Option(help="team, user, workload, tier or id.")] = "team",
) -> None:
    """Print, as JSON, the GPU-hours each team was allocated according to the simulator's own
    schedule (ground truth to check /api/v1/fleet/usage against)."""
    from fleetscope.simulate.state import SimState

    window_ms = _duration(window, "--window")
    try:
        state = SimState.load(data)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if state is None:
        console.print(
            f"[red]no simulation in {data}[/red]: run `fleetscope up --data {data}` first"
        )
        raise typer.Exit(1)
    sim = state.simulation(None)
    _replay(state, sim, "replaying the simulation")
    end = state.until_ms + sim.tick_ms
    try:
        hours = sim.ledger(end - window_ms, end, by=by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from exc
    typer.echo(json.dumps({k: round(v, 3) for k, v in sorted(hours.items())}, indent=2))


@app.command()
def top(
    url: Annotated[
        str, typer.Option(help="Fleetscope server (or any Prometheus-compatible API) base URL.")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSCOPE_TOKEN",
            help="Bearer token (env FLEETSCOPE_TOKEN; default: DATA/admin.token if readable).",
        ),
    ] = None,
    data: Annotated[
        Path, typer.Option(help="Data directory whose admin.token to use when no --token.")
    ] = Path("fleetscope-data"),
    team: Annotated[str | None, typer.Option(help="Show only this team's GPUs.")] = None,
    interval: Annotated[str, typer.Option(help="Refresh interval.")] = "2s",
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one frame as JSON, exit.")] = False,
) -> None:
    """Live fleet-wide GPU view in the terminal (nvitop-like, across nodes): utilization and
    memory bars, temperature, power, job, user and team of every GPU, grouped by node."""
    from fleetscope.top import run

    if token is None:
        token_file = data / "admin.token"
        if token_file.is_file():
            token = token_file.read_text(encoding="utf-8").strip()
    refresh_s = _duration(interval, "--interval") / 1000
    code = run(url, token, team=team, refresh_s=refresh_s, once=once, as_json=as_json)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
