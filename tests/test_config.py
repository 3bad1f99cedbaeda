"""Settings: TOML, environment, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetscope.config import ConfigError, MetricsBackend, load, parse_duration_ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        pytest.param("15s", 15_000, id="seconds"),
        pytest.param("1h30m", 5_400_000, id="compound"),
        pytest.param("7d", 604_800_000, id="days"),
        pytest.param("2w", 1_209_600_000, id="weeks"),
        pytest.param("250ms", 250, id="millis"),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "7", "7x", "-1d", "0s", "d7"])
def test_bad_durations_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ms(text)


def test_toml_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "fleetscope.toml"
    cfg.write_text(
        '[server]\ndata = "/srv/fs"\nport = 9000\n[metrics]\nretention = "14d"\n'
        'memory_limit = "40%"\n'
        '[[scrape]]\nurl = "http://gpu-01:9400/metrics"\njob = "dcgm"\n'
        '[teams.accounts]\nllm = "llm-research"\n'
    )
    s = load(cfg, env={"FLEETSCOPE_PORT": "9100"})
    assert s.data_dir == Path("/srv/fs")
    assert s.port == 9100
    assert s.retention_ms == 14 * 86_400_000
    assert s.memory_limit == "40%"
    assert load(None, env={}).memory_limit is None  # DuckDB's default
    assert s.scrape[0].instance == "gpu-01:9400"
    assert s.team_accounts == {"llm": "llm-research"}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param('[server]\nport = "x"\n', "server.port must be a int", id="port-type"),
        pytest.param('[metrics]\nretention = "forever"\n', "metrics.retention", id="retention"),
        pytest.param(
            '[metrics]\nmemory_limit = "lots"\n', "metrics.memory_limit must be a size", id="memory"
        ),
        pytest.param(
            "[metrics]\nmemory_limit = 4\n", "metrics.memory_limit must be a str", id="memory-type"
        ),
        pytest.param('[[scrape]]\njob = "a"\n', r"scrape\[0\] needs a url", id="scrape-url"),
        pytest.param("[server\n", "cannot read", id="bad-toml"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "fleetscope.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load(cfg, env={})


# ----------------------------------------------------------------------------- metrics backend


def test_embedded_backend_is_the_default(tmp_path: Path) -> None:
    backend = load(None, env={}).backend
    assert backend.kind == "embedded" and backend.url is None and backend.headers == {}


def test_prometheus_backend_defaults_its_remote_write_url(tmp_path: Path) -> None:
    cfg = tmp_path / "fleetscope.toml"
    cfg.write_text('[metrics]\nbackend = "prometheus"\nurl = "http://vm:8428/"\n')
    backend = load(cfg, env={}).backend
    assert backend == MetricsBackend("prometheus", "http://vm:8428", "http://vm:8428/api/v1/write")


def test_prometheus_backend_from_toml_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "fleetscope.toml"
    cfg.write_text(
        '[metrics]\nbackend = "prometheus"\nurl = "http://mimir/prometheus"\n'
        'remote_write_url = "http://mimir/api/v1/push"\nbearer_token = "from-toml"\n'
    )
    backend = load(cfg, env={"FLEETSCOPE_METRICS_BEARER_TOKEN": "from-env"}).backend
    assert backend.url == "http://mimir/prometheus"
    assert backend.remote_write_url == "http://mimir/api/v1/push"
    assert backend.headers == {"Authorization": "Bearer from-env"}
    env = {"FLEETSCOPE_METRICS_BACKEND": "prometheus", "FLEETSCOPE_METRICS_URL": "https://p:9090"}
    assert load(None, env=env).backend.remote_write_url == "https://p:9090/api/v1/write"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param('backend = "thanos"\n', r'metrics.backend must be "embedded" or "prometheus"',
                     id="unknown-backend"),
        pytest.param('backend = "prometheus"\n', "metrics.url is required", id="no-url"),
        pytest.param('backend = "prometheus"\nurl = "prometheus:9090"\n',
                     "metrics.url must be an http:// or https:// URL", id="url-scheme"),
        pytest.param('backend = "prometheus"\nurl = "http://p:9090"\nremote_write_url = "p/w"\n',
                     "metrics.remote_write_url must be an http", id="write-url"),
        pytest.param('backend = "prometheus"\nurl = "http://p:9090"\nbearer_token = " "\n',
                     "metrics.bearer_token is empty", id="empty-token"),
        pytest.param('url = "http://p:9090"\n',
                     r'metrics.url is set but metrics.backend is "embedded"', id="url-no-backend"),
        pytest.param("backend = 1\n", "metrics.backend must be a str", id="backend-type"),
    ],
)  # fmt: skip
def test_bad_backend_settings_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "fleetscope.toml"
    cfg.write_text("[metrics]\n" + toml)
    with pytest.raises(ConfigError, match=message):
        load(cfg, env={})


def test_agent_section(tmp_path: Path) -> None:
    path = tmp_path / "fleetscope.toml"
    path.write_text(
        """
[agent]
kernel_log = "/var/log/kern.log"
kubelet_pods = "https://127.0.0.1:10250/pods"
[agent.mesh]
gpu-02 = "10.0.0.2:9500"
gpu-03 = "[fd00::3]:9500"
[agent.endpoints]
chat = "http://vllm-chat:8000/health"
[[agent.exporters]]
source = "vllm"
url = "http://127.0.0.1:8000/metrics"
labels = { endpoint = "chat", team = "nlp" }
""",
        encoding="utf-8",
    )
    agent = load(path, env={}).agent
    assert agent.kernel_log == "/var/log/kern.log"
    assert agent.kubelet_pods == "https://127.0.0.1:10250/pods"
    assert agent.mesh == {"gpu-02": ("10.0.0.2", 9500), "gpu-03": ("fd00::3", 9500)}
    assert agent.endpoints == {"chat": "http://vllm-chat:8000/health"}
    (exporter,) = agent.exporters
    assert (exporter.source, exporter.labels) == ("vllm", {"endpoint": "chat", "team": "nlp"})
    assert load(None, env={}).agent.kernel_log == "kmsg"  # the default: /dev/kmsg


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[agent.mesh]\ngpu-02 = "10.0.0.2"', "agent.mesh.gpu-02 must be HOST:PORT"),
        ('[agent.endpoints]\nchat = "vllm:8000"', "agent.endpoints.chat must be an http"),
        ('[[agent.exporters]]\nsource = "nvml"\nurl = "http://x/metrics"', "source must be one"),
        ('[[agent.exporters]]\nsource = "dcgm"', "agent.exporters[0] needs a source and a url"),
    ],
)
def test_bad_agent_settings_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "fleetscope.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(path, env={})
