"""Tests of the exposition parser (fleetscope.ingest.exposition)."""

from __future__ import annotations

import math

import pytest

from fleetscope.ingest import IngestError
from fleetscope.ingest.exposition import is_openmetrics, parse

NOW = 1_700_000_000_000

TEXT = """# HELP fleet_gpu_power_watts Board power.
# TYPE fleet_gpu_power_watts gauge
fleet_gpu_power_watts{gpu="0",node="n1"} 301.5
fleet_gpu_power_watts{gpu="1",node="n1"} NaN 1699999999000
# TYPE req_seconds histogram
req_seconds_bucket{le="0.1"} 3
req_seconds_bucket{le="+Inf"} 5
req_seconds_sum 0.9
req_seconds_count 5
"""


def rows(text: str, **kwargs: object) -> dict[str, tuple[dict[str, str], int, float]]:
    b = parse(text, NOW, **kwargs)  # type: ignore[arg-type,unused-ignore]
    out = {}
    for k in range(len(b)):
        labels = b.series[int(b.series_index[k])]
        key = labels["__name__"] + "/" + labels.get("gpu", labels.get("le", ""))
        out[key] = (labels, int(b.t_ms[k]), float(b.values[k]))
    return out


def test_text_format_times_and_values() -> None:
    got = rows(TEXT)
    assert got["fleet_gpu_power_watts/0"] == (
        {"__name__": "fleet_gpu_power_watts", "gpu": "0", "node": "n1"},
        NOW,
        301.5,
    )
    _, t, v = got["fleet_gpu_power_watts/1"]
    assert t == 1_699_999_999_000
    assert math.isnan(v)
    assert got["req_seconds_bucket/+Inf"][2] == 5.0
    assert len(got) == 6


def test_extra_labels_replace_or_rename() -> None:
    text = 'm{job="inner",x="1"} 1\n'
    replaced = rows(text, extra_labels={"job": "outer"})["m/"][0]
    assert replaced == {"__name__": "m", "job": "outer", "x": "1"}
    renamed = rows(text, extra_labels={"job": "outer"}, rename_conflicts=True)["m/"][0]
    assert renamed == {"__name__": "m", "job": "outer", "exported_job": "inner", "x": "1"}


def test_openmetrics_seconds_timestamps() -> None:
    text = "# TYPE a counter\na_total 3 1700000000.25\n# EOF\n"
    assert rows(text, openmetrics=True)["a_total/"][1:] == (NOW + 250, 3.0)


@pytest.mark.parametrize(
    ("text", "openmetrics", "message"),
    [
        pytest.param('ok 1\nbad{x="y} 2\n', False, "line 2", id="unterminated-label"),
        pytest.param("ok 1\nok2 one\n", False, "line 2: 'ok2 one'", id="bad-value"),
        pytest.param("a 1\n", True, "OpenMetrics", id="openmetrics-without-eof"),
    ],
)
def test_parse_errors_say_where(text: str, openmetrics: bool, message: str) -> None:
    with pytest.raises(IngestError, match=message):
        parse(text, NOW, openmetrics=openmetrics)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        pytest.param("application/openmetrics-text; version=1.0.0", True, id="openmetrics"),
        pytest.param("text/plain; version=0.0.4", False, id="text"),
        pytest.param(None, False, id="none"),
    ],
)
def test_is_openmetrics(content_type: str | None, expected: bool) -> None:
    assert is_openmetrics(content_type) is expected
