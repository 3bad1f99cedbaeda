"""Settings: ``fleetscope.toml`` overlaid by ``FLEETSCOPE_*`` environment variables and CLI flags.

Precedence, lowest first: built-in defaults → the TOML file (``--config`` or ``./fleetscope.toml``
when present) → environment → command-line flags (applied by ``cli.py``). A setting that cannot be
parsed raises :class:`ConfigError` naming the key, never a silent default.

Example ``fleetscope.toml``::

    [server]
    data = "./fleetscope-data"
    host = "127.0.0.1"
    port = 8000

    [metrics]
    retention = "30d"          # samples older than this are dropped (embedded backend)
    # memory_limit = "40%"     # embedded store's DuckDB memory (or "4GB"); default 80 % of RAM
    backend = "embedded"       # or "prometheus": any Prometheus-compatible server (below)
    # url = "http://victoria-metrics:8428"      # its query API base (before /api/v1)
    # remote_write_url = "http://…/api/v1/write" # where agents push (default <url>/api/v1/write)
    # bearer_token = "…"                          # or env FLEETSCOPE_METRICS_BEARER_TOKEN

    [[scrape]]                 # existing exporters to scrape (dcgm-exporter, node_exporter, …)
    url = "http://gpu-01:9400/metrics"
    job = "dcgm"
    interval = "15s"

    [teams.accounts]           # Slurm account / K8s namespace → team
    llm = "llm-research"

    [agent]                    # `fleetscope agent` on each node
    kernel_log = "kmsg"        # XIDs from /dev/kmsg, or a log file path; "" turns it off
    kubelet_pods = "https://127.0.0.1:10250/pods"   # K8s nodes: pod UID → namespace/job
    kubelet_token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    [agent.mesh]               # peers probed by TCP connect (their agents' --listen port);
    gpu-02 = "10.0.0.2:9500"   # their addresses also name east-west traffic by node
    [agent.endpoints]          # inference endpoints whose HTTP latency the agent probes
    chat = "http://vllm-chat:8000/health"
    [[agent.exporters]]        # exporters on the node, normalised into the catalog
    source = "dcgm"            # dcgm | node | vllm | tgi | triton | sglang
    url = "http://127.0.0.1:9400/metrics"
    labels = { }               # e.g. endpoint/team/tier of an inference server
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_UNIT_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)


MEMORY_LIMIT = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|%)$", re.IGNORECASE)
"""A DuckDB memory limit: a size (``4GB``, ``512MiB``) or a share of RAM (``40%``)."""


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


def parse_duration_ms(text: str) -> int:
    """Milliseconds in a Prometheus duration (``90s``, ``15m``, ``1h30m``, ``7d``, ``2w``, ``1y``).

    Raises ``ValueError`` with a message for anything else, including zero.
    """
    m = _DURATION.match(text.strip())
    if not text.strip() or m is None:
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit (ms, s, m, h, d, w, y), "
            "e.g. 30s, 15m, 24h, 7d"
        )
    total = sum(int(g) * unit for g, unit in zip(m.groups(), _UNIT_MS, strict=True) if g)
    if total <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    return total


@dataclass(frozen=True)
class ScrapeConfig:
    """One exporter endpoint to scrape."""

    url: str
    job: str
    instance: str
    interval_s: float = 15.0


@dataclass(frozen=True)
class ExporterConfig:
    """An exporter on the agent's node, scraped and normalised by ``collect/exporters.py``."""

    source: str  # dcgm | node | vllm | tgi | triton | sglang
    url: str
    labels: dict[str, str] = field(default_factory=dict)


EXPORTER_SOURCES = ("dcgm", "node", "vllm", "tgi", "triton", "sglang")


@dataclass
class AgentConfig:
    """The ``[agent]`` section: what ``fleetscope agent`` collects besides NVML and /proc.

    ``kernel_log``: ``"kmsg"`` (``/dev/kmsg``), a log file path, or ``None`` (no XIDs from the
    kernel log; NVML's XID events are still read). ``mesh``: peer node → ``(host, port)`` to
    probe; the peers' hosts also name east-west traffic (IP → node).
    """

    kernel_log: str | None = "kmsg"
    kubelet_pods: str | None = None
    kubelet_token_file: str | None = None
    mesh: dict[str, tuple[str, int]] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    exporters: list[ExporterConfig] = field(default_factory=list)


BackendKind = Literal["embedded", "prometheus"]
BACKENDS: tuple[BackendKind, ...] = ("embedded", "prometheus")


@dataclass(frozen=True)
class MetricsBackend:
    """Where metrics live and PromQL is answered (DESIGN.md "Shape of the system").

    ``embedded``: the DuckDB store and Fleetscope's evaluator. ``prometheus``: a
    Prometheus-compatible server whose query API is at ``url`` (the part before ``/api/v1``:
    ``http://prometheus:9090``, ``http://vm:8428``, ``http://vmselect:8481/select/0/prometheus``,
    ``http://mimir/prometheus``); agents remote-write to ``remote_write_url`` (default
    ``<url>/api/v1/write``; Mimir wants ``/api/v1/push``, VictoriaMetrics cluster
    ``http://vminsert:8480/insert/0/prometheus/api/v1/write``). ``bearer_token`` is sent as
    ``Authorization: Bearer`` on both.
    """

    kind: BackendKind = "embedded"
    url: str | None = None
    remote_write_url: str | None = None
    bearer_token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers for the backend (the bearer token, when set)."""
        return {"Authorization": f"Bearer {self.bearer_token}"} if self.bearer_token else {}


@dataclass
class Settings:
    """Everything the server, the agent and the simulator read from configuration."""

    data_dir: Path = Path("fleetscope-data")
    host: str = "127.0.0.1"
    port: int = 8000
    retention_ms: int = 30 * 86_400_000
    memory_limit: str | None = None  # the embedded store's DuckDB memory limit; None: DuckDB's
    idle_threshold: float = 0.05  # utilization below this counts as idle (DESIGN "Definitions")
    scrape: list[ScrapeConfig] = field(default_factory=list)
    team_accounts: dict[str, str] = field(default_factory=dict)  # account/namespace → team
    backend: MetricsBackend = field(default_factory=MetricsBackend)
    agent: AgentConfig = field(default_factory=AgentConfig)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fleetscope.duckdb"


def _get(section: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = section[key]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} must be a {kind.__name__}, got {value!r}")
    return value


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from a TOML file (if any) and the environment."""
    env = os.environ if env is None else env
    settings = Settings()
    backend: dict[str, str] = {}
    if path is None and Path("fleetscope.toml").exists():
        path = Path("fleetscope.toml")
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        _apply_toml(settings, doc)
        metrics = doc.get("metrics", {})
        backend = {k: _get(metrics, k, str, "metrics") for k in _BACKEND_KEYS if k in metrics}
    if "FLEETSCOPE_DATA" in env:
        settings.data_dir = Path(env["FLEETSCOPE_DATA"])
    if "FLEETSCOPE_HOST" in env:
        settings.host = env["FLEETSCOPE_HOST"]
    if "FLEETSCOPE_PORT" in env:
        try:
            settings.port = int(env["FLEETSCOPE_PORT"])
        except ValueError as exc:
            raise ConfigError(f"FLEETSCOPE_PORT must be an integer: {exc}") from exc
    settings.backend = _backend(backend, env)
    return settings


def _http_url(value: str, key: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value) or any(c.isspace() for c in value):
        raise ConfigError(f"{key} must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


_BACKEND_KEYS = ("backend", "url", "remote_write_url", "bearer_token")


def _backend(toml: Mapping[str, str], env: Mapping[str, str]) -> MetricsBackend:
    """The backend from ``[metrics]`` values overlaid by ``FLEETSCOPE_METRICS_*``, checked."""
    kind = env.get("FLEETSCOPE_METRICS_BACKEND", toml.get("backend", "embedded"))
    url = env.get("FLEETSCOPE_METRICS_URL", toml.get("url"))
    write = toml.get("remote_write_url")
    token = env.get("FLEETSCOPE_METRICS_BEARER_TOKEN", toml.get("bearer_token"))
    if kind not in BACKENDS:
        raise ConfigError(f'metrics.backend must be "embedded" or "prometheus", got {kind!r}')
    if kind == "embedded":
        for key, value in (("url", url), ("remote_write_url", write), ("bearer_token", token)):
            if value is not None:
                raise ConfigError(
                    f'metrics.{key} is set but metrics.backend is "embedded": set '
                    'backend = "prometheus" to use a Prometheus-compatible server'
                )
        return MetricsBackend()
    if not url:
        raise ConfigError(
            'metrics.url is required with metrics.backend = "prometheus" '
            '(the query API base, e.g. "http://prometheus:9090")'
        )
    url = _http_url(url, "metrics.url")
    write = _http_url(write, "metrics.remote_write_url") if write else f"{url}/api/v1/write"
    if token is not None and not token.strip():
        raise ConfigError("metrics.bearer_token is empty: remove it or give the token")
    return MetricsBackend("prometheus", url, write, token.strip() if token else None)


def _apply_toml(settings: Settings, doc: Mapping[str, Any]) -> None:
    server = doc.get("server", {})
    if "data" in server:
        settings.data_dir = Path(_get(server, "data", str, "server"))
    if "host" in server:
        settings.host = _get(server, "host", str, "server")
    if "port" in server:
        settings.port = _get(server, "port", int, "server")
    metrics = doc.get("metrics", {})
    if "retention" in metrics:
        try:
            settings.retention_ms = parse_duration_ms(_get(metrics, "retention", str, "metrics"))
        except ValueError as exc:
            raise ConfigError(f"metrics.retention: {exc}") from exc
    if "idle_threshold" in metrics:
        settings.idle_threshold = _get(metrics, "idle_threshold", float, "metrics")
    if "memory_limit" in metrics:
        limit = _get(metrics, "memory_limit", str, "metrics")
        if not MEMORY_LIMIT.match(limit):
            raise ConfigError(
                f'metrics.memory_limit must be a size or a share of RAM, e.g. "4GB", "512MiB" '
                f'or "40%", got {limit!r}'
            )
        settings.memory_limit = limit
    for i, target in enumerate(doc.get("scrape", [])):
        where = f"scrape[{i}]"
        if "url" not in target:
            raise ConfigError(f"{where} needs a url")
        url = _get(target, "url", str, where)
        interval = 15.0
        if "interval" in target:
            try:
                interval = parse_duration_ms(_get(target, "interval", str, where)) / 1000
            except ValueError as exc:
                raise ConfigError(f"{where}.interval: {exc}") from exc
        instance = target.get("instance") or re.sub(r"^\w+://([^/]+).*$", r"\1", url)
        settings.scrape.append(
            ScrapeConfig(url, str(target.get("job", "scrape")), str(instance), interval)
        )
    if "agent" in doc:
        settings.agent = _agent(doc["agent"])
    accounts = doc.get("teams", {}).get("accounts", {})
    for account, team in accounts.items():
        if not isinstance(team, str):
            raise ConfigError(f"teams.accounts.{account} must be a team name")
        settings.team_accounts[str(account)] = team


def _agent(section: Mapping[str, Any]) -> AgentConfig:
    """The ``[agent]`` section, checked."""
    config = AgentConfig()
    if "kernel_log" in section:
        config.kernel_log = _get(section, "kernel_log", str, "agent") or None
    for key in ("kubelet_pods", "kubelet_token_file"):
        if key in section:
            setattr(config, key, _get(section, key, str, "agent") or None)
    for peer, address in section.get("mesh", {}).items():
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"agent.mesh.{peer} must be HOST:PORT, got {address!r}")
        config.mesh[str(peer)] = (host.strip("[]"), int(port))
    for name, url in section.get("endpoints", {}).items():
        config.endpoints[str(name)] = _http_url(str(url), f"agent.endpoints.{name}")
    for i, exporter in enumerate(section.get("exporters", [])):
        where = f"agent.exporters[{i}]"
        if "source" not in exporter or "url" not in exporter:
            raise ConfigError(f"{where} needs a source and a url")
        source = _get(exporter, "source", str, where)
        if source not in EXPORTER_SOURCES:
            raise ConfigError(f"{where}.source must be one of {', '.join(EXPORTER_SOURCES)}")
        labels = exporter.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ConfigError(f"{where}.labels must be a table of strings")
        url = _http_url(_get(exporter, "url", str, where), f"{where}.url")
        config.exporters.append(ExporterConfig(source, url, dict(labels)))
    return config
