"""Settings: TOML, environment, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetscope.config import ConfigError, load, parse_duration_ms


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
        '[[scrape]]\nurl = "http://gpu-01:9400/metrics"\njob = "dcgm"\n'
        '[teams.accounts]\nllm = "llm-research"\n'
    )
    s = load(cfg, env={"FLEETSCOPE_PORT": "9100"})
    assert s.data_dir == Path("/srv/fs")
    assert s.port == 9100
    assert s.retention_ms == 14 * 86_400_000
    assert s.scrape[0].instance == "gpu-01:9400"
    assert s.team_accounts == {"llm": "llm-research"}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param('[server]\nport = "x"\n', "server.port must be a int", id="port-type"),
        pytest.param('[metrics]\nretention = "forever"\n', "metrics.retention", id="retention"),
        pytest.param('[[scrape]]\njob = "a"\n', r"scrape\[0\] needs a url", id="scrape-url"),
        pytest.param("[server\n", "cannot read", id="bad-toml"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "fleetscope.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load(cfg, env={})
