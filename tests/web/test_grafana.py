"""The exact requests Grafana's Prometheus data source sends, and the shapes it needs back.

Grafana ≥ 10 (``pkg/promlib``) sends queries from its backend with the data source's HTTP method
(POST with a form body by default, GET when configured), and the query editor's lookups as
"resource" calls: POST for ``labels``/``series`` (falling back to GET on 400/405), always GET for
``label/<name>/values``, ``metadata`` and ``status/*``. Older Grafana tested a data source from the
browser with ``GET /api/v1/query?query=1%2B1&time=<now>``. Times are unix seconds written with
Go's ``FormatFloat(t, 'f', -1, 64)``; range queries are aligned to the step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetscope.query import QueryResult
from fleetscope.store import FakeMetricStore, FakeRecordStore
from fleetscope.web.app import WebSettings, create_app

from .conftest import NOW_MS, TestClient
from .fakes import FakeEngine, series

NOW_S = 1_700_000_000
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GPU = {"__name__": "fleet_gpu_utilization_ratio", "node": "n1", "gpu": "0", "gpu_uuid": "g0"}
ALLOC = {"__name__": "fleet_gpu_allocation", "gpu_uuid": "g0", "job": "j1", "team": "vision"}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[TestClient]:
    """An app whose engine is the table-driven fake."""
    engine = FakeEngine(
        instant_results={
            "1+1": lambda t: QueryResult("scalar", scalar=(t, 2.0)),
            "fleet_gpu_utilization_ratio": lambda t: QueryResult(
                "vector", [series(GPU, [(t, 0.9)])]
            ),
        },
        range_results={
            "avg(fleet_gpu_utilization_ratio)": lambda start, end, step: QueryResult(
                "matrix", [series({}, [(t, 0.5) for t in range(start, end + 1, step)])]
            ),
        },
        label_sets=[GPU, ALLOC],
    )
    settings = WebSettings(data_dir=tmp_path / "data", clock=lambda: float(NOW_S))
    with TestClient(create_app(settings, FakeMetricStore(), FakeRecordStore(), engine)) as c:
        token = (settings.data_dir / "admin.token").read_text().strip()
        c.headers["Authorization"] = f"Bearer {token}"  # the data source's "Authorization" header
        yield c


def success(response: Any) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "success"
    return body["data"]


def check_sample(pair: Any) -> None:
    """Grafana reads ``[<number seconds>, "<float text>"]``."""
    t, value = pair
    assert isinstance(t, int | float) and isinstance(value, str)
    float(value)


def test_health_check_grafana_10(fake: TestClient) -> None:
    """promlib.CheckHealth: instant ``1+1`` over the range 1s–4s, POSTed as a form."""
    data = success(fake.post("/api/v1/query", content="query=1%2B1&time=4", headers=FORM))
    assert data == {"resultType": "scalar", "result": [4, "2"]}


def test_health_check_old_grafana_from_the_browser(fake: TestClient) -> None:
    data = success(fake.get("/api/v1/query", params={"query": "1+1", "time": "1700000000.123"}))
    assert data == {"resultType": "scalar", "result": [1700000000.123, "2"]}


def test_buildinfo_makes_grafana_see_plain_prometheus(fake: TestClient) -> None:
    """Heuristics: buildinfo without ``features`` is Prometheus; alerting then asks
    ``status/flags``, and any success there would make Grafana take the source for Thanos."""
    data = success(fake.get("/api/v1/status/buildinfo"))
    assert {"version", "revision", "branch", "buildUser", "buildDate", "goVersion"} <= set(data)
    assert data["version"] == "2.42.0" and "features" not in data
    assert fake.get("/api/v1/status/flags").status_code == 404


def test_editor_start_label_values_metadata_and_labels(fake: TestClient) -> None:
    """language_provider.start: ``__name__`` values, then metadata and label names."""
    params = {"start": "1699996400", "end": "1700000000"}
    names = success(fake.get("/api/v1/label/__name__/values", params=params))
    assert names == ["fleet_gpu_allocation", "fleet_gpu_utilization_ratio"]
    metadata = success(fake.get("/api/v1/metadata"))
    entry = metadata["fleet_gpu_utilization_ratio"][0]
    assert set(entry) == {"type", "help", "unit"} and entry["type"] == "gauge"
    labels = success(fake.post("/api/v1/labels", content="start=1699996400&end=1700000000",
                                 headers=FORM))  # fmt: skip
    assert labels == ["__name__", "gpu", "gpu_uuid", "job", "node", "team"]


def test_editor_series_and_values_with_match(fake: TestClient) -> None:
    """fetchSeriesLabels (``/series`` with Grafana 11's ``limit``), fetchSeriesValuesWithMatch,
    fetchSeriesLabelsMatch."""
    body = "start=1699996400&end=1700000000&match%5B%5D=fleet_gpu_allocation&limit=40000"
    assert success(fake.post("/api/v1/series", content=body, headers=FORM)) == [ALLOC]
    params = {"start": "1699996400", "end": "1700000000", "match[]": "fleet_gpu_allocation"}
    assert success(fake.get("/api/v1/label/team/values", params=params)) == ["vision"]
    body = "start=1699996400&end=1700000000&match%5B%5D=fleet_gpu_allocation"
    labels = success(fake.post("/api/v1/labels", content=body, headers=FORM))
    assert labels == ["__name__", "gpu_uuid", "job", "team"]


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_panel_range_query(fake: TestClient, method: str) -> None:
    """A time-series panel: aligned start/end, step in seconds, the data source's timeout."""
    form = {"query": "avg(fleet_gpu_utilization_ratio)", "start": "1699996380",
            "end": "1699999980", "step": "60", "timeout": "30s"}  # fmt: skip
    if method == "POST":
        r = fake.post("/api/v1/query_range", data=form, headers=FORM)
    else:
        r = fake.get("/api/v1/query_range", params=form)
    data = success(r)
    assert data["resultType"] == "matrix"
    (only,) = data["result"]
    assert only["metric"] == {} and len(only["values"]) == 61
    for pair in only["values"]:
        check_sample(pair)
    assert only["values"][0] == [1699996380, "0.5"]


def test_instant_query_and_exemplars(fake: TestClient) -> None:
    """A table panel (instant), and the exemplar request Grafana adds when exemplars are on."""
    form = "query=fleet_gpu_utilization_ratio&time=1700000000"
    data = success(fake.post("/api/v1/query", content=form, headers=FORM))
    assert data["resultType"] == "vector"
    assert data["result"] == [{"metric": GPU, "value": [1700000000, "0.9"]}]
    form = "query=fleet_gpu_utilization_ratio&start=1699996400&end=1700000000"
    assert success(fake.post("/api/v1/query_exemplars", content=form, headers=FORM)) == []


def test_a_bad_query_is_a_400_grafana_shows(fake: TestClient) -> None:
    r = fake.post("/api/v1/query", content="query=sum(&time=4", headers=FORM)
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "error" and body["errorType"] == "bad_data"
    assert body["error"].startswith('invalid parameter "query": ')


# ----------------------------------------------------------------------------- embedded engine

EMBEDDED_END_S = NOW_MS // 1000  # tests/web/conftest.py's fleet: two hours up to NOW_MS


def test_grafana_session_against_the_embedded_evaluator(authed: TestClient) -> None:
    """The same calls on the default app: the embedded evaluator over the DuckDB fleet."""
    end = str(EMBEDDED_END_S)
    start = str(EMBEDDED_END_S - 3600)
    health = success(authed.post("/api/v1/query", content="query=1%2B1&time=4", headers=FORM))
    assert health == {"resultType": "scalar", "result": [4, "2"]}
    assert "features" not in success(authed.get("/api/v1/status/buildinfo"))

    names = success(authed.get("/api/v1/label/__name__/values", params={"start": start,
                                                                         "end": end}))  # fmt: skip
    assert {"fleet_gpu_allocation", "fleet_gpu_utilization_ratio"} <= set(names)
    labels = success(authed.post("/api/v1/labels", content=f"start={start}&end={end}",
                                 headers=FORM))  # fmt: skip
    assert {"__name__", "gpu_uuid", "team", "job"} <= set(labels)
    body = f"start={start}&end={end}&match%5B%5D=fleet_gpu_allocation&limit=40000"
    found = success(authed.post("/api/v1/series", content=body, headers=FORM))
    assert sorted(s["job"] for s in found) == ["l1", "v1"]
    params = {"start": start, "end": end, "match[]": "fleet_gpu_allocation"}
    assert success(authed.get("/api/v1/label/team/values", params=params)) == ["llm", "vision"]
    assert "fleet_gpu_utilization_ratio" in success(authed.get("/api/v1/metadata"))

    step = 60
    aligned_end = EMBEDDED_END_S // step * step
    form = {"query": "sum by (team) (fleet_gpu_allocation)", "start": str(aligned_end - 3600),
            "end": str(aligned_end), "step": str(step)}  # fmt: skip
    data = success(authed.post("/api/v1/query_range", data=form, headers=FORM))
    assert data["resultType"] == "matrix"
    by_team = {s["metric"]["team"]: s["values"] for s in data["result"]}
    assert set(by_team) == {"llm", "vision"} and len(by_team["vision"]) == 61
    for pair in by_team["vision"]:
        check_sample(pair)
        assert pair[1] == "1"

    form = {"query": "fleet_gpu_utilization_ratio", "time": end}
    data = success(authed.post("/api/v1/query", data=form, headers=FORM))
    values = {s["metric"]["gpu_uuid"]: s["value"] for s in data["result"]}
    assert values == {"g0": [EMBEDDED_END_S, "0.9"], "g1": [EMBEDDED_END_S, "0.01"],
                      "g2": [EMBEDDED_END_S, "0"]}  # fmt: skip

    r = authed.post("/api/v1/query", content="query=sum(&time=4", headers=FORM)
    assert r.status_code == 400 and r.json()["errorType"] == "bad_data"
    assert r.json()["error"].startswith('invalid parameter "query": ')
