"""The Prometheus-compatible backend against real Prometheus 2.42 and VictoriaMetrics 1.79.

A small fleet is remote-written (Fleetscope's encoder) into each server. Then:

(a) :class:`PrometheusEngine` reads back exactly what was written (instant, range, series, label
    names and values), and its other answers equal the server's own JSON;
(b) Fleetscope's Prometheus API, served by uvicorn with ``PrometheusEngine`` behind it, answers
    the same JSON as the server itself, Grafana's calls included: Fleetscope is a transparent
    PromQL front end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetscope.query import QueryError
from fleetscope.remotewrite import HEADERS, encode
from fleetscope.store import FakeMetricStore, FakeRecordStore, SampleBatch
from fleetscope.store.prometheus_api import PrometheusEngine
from fleetscope.web.app import WebSettings, create_app
from fleetscope.web.prometheus import format_time

STEP_MS = 15_000
SAMPLES = 120  # 30 minutes every 15 s, ending ten minutes ago
MODEL = "NVIDIA H100 80GB HBM3"
TEAMS = {"g0": ("j1", "vision"), "g1": ("j2", "llm")}


@dataclass(frozen=True)
class Fleet:
    """The data written: its rows and the times the tests query at (all on a minute)."""

    rows: list[tuple[dict[str, str], int, float]]
    t0_ms: int

    @property
    def at_ms(self) -> int:
        return self.t0_ms + 20 * 60_000

    @property
    def start_ms(self) -> int:
        return self.t0_ms + 5 * 60_000

    @property
    def end_ms(self) -> int:
        return self.t0_ms + 25 * 60_000

    def value(self, labels: dict[str, str], t_ms: int) -> float:
        return next(v for ls, t, v in self.rows if ls == labels and t == t_ms)


def gpu(uuid: str, node: str = "n1") -> dict[str, str]:
    return {"node": node, "gpu": uuid[1:], "gpu_uuid": uuid, "gpu_model": MODEL}


def make_fleet() -> Fleet:
    t0_ms = (int(time.time()) // 60 - 40) * 60_000
    rows: list[tuple[dict[str, str], int, float]] = []
    for k in range(SAMPLES):
        t = t0_ms + k * STEP_MS
        for g, uuid in enumerate(("g0", "g1", "g2")):
            labels = gpu(uuid, "nœud-ü" if uuid == "g2" else "n1")
            util = {"__name__": "fleet_gpu_utilization_ratio", **labels}
            rows.append((util, t, ((k * 7 + g * 3) % 10) / 3))
            energy = {"__name__": "fleet_gpu_energy_joules_total", **labels}
            rows.append((energy, t, 1000.0 + k * 250.5 * (g + 1)))
        for uuid, (job, team) in TEAMS.items():
            alloc = {"__name__": "fleet_gpu_allocation", **gpu(uuid), "job": job, "team": team}
            rows.append((alloc, t, 1.0))
    return Fleet(rows, t0_ms)


def load(url: str, fleet: Fleet, victoria: bool) -> None:
    """Remote-write the fleet and wait until the server answers with all of it."""
    body = encode(SampleBatch.from_rows(fleet.rows))
    r = httpx.post(url + "/api/v1/write", content=body, headers=HEADERS, timeout=30)
    assert r.status_code == 204, r.text
    names = sorted({labels["__name__"] for labels, _, _ in fleet.rows})
    at = format_time(fleet.t0_ms + 40 * 60_000)
    deadline = time.monotonic() + 30
    while True:
        if victoria:
            httpx.get(url + "/internal/force_flush")
        counts = []
        for name in names:
            params = {"query": f"count_over_time({name}[1h])", "time": at}
            r = httpx.get(url + "/api/v1/query", params=params)
            counts += [s["value"][1] for s in r.json()["data"]["result"]]
        if counts == [str(SAMPLES)] * 8:
            return
        assert time.monotonic() < deadline, f"{url} did not take the data: {counts}"
        time.sleep(0.3)


@dataclass
class Backend:
    name: str
    url: str
    fleet: Fleet


@pytest.fixture(params=["prometheus", "victoria-metrics"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """A real server holding the fleet."""
    fleet = make_fleet()
    if request.param == "prometheus":
        service = request.getfixturevalue("prometheus")("global:\n  scrape_interval: 15s\n")
    else:
        service = request.getfixturevalue("victoria_metrics")
    load(service.url, fleet, victoria=request.param == "victoria-metrics")
    return Backend(request.param, service.url, fleet)


@pytest.fixture
def engine(backend: Backend) -> Iterator[PrometheusEngine]:
    e = PrometheusEngine(backend.url, timeout_s=30)
    yield e
    e.close()


# ----------------------------------------------------------------------------- (a) the engine


def test_engine_reads_back_what_was_written(backend: Backend, engine: PrometheusEngine) -> None:
    fleet = backend.fleet

    def stored(values: list[float]) -> Any:
        """Prometheus keeps floats exactly; VictoriaMetrics to about 12 significant digits."""
        return values if backend.name == "prometheus" else pytest.approx(values, rel=1e-11)

    result = engine.instant("fleet_gpu_utilization_ratio", fleet.at_ms)
    assert result.result_type == "vector" and len(result.series) == 3
    for s in result.series:
        assert s.t_ms.tolist() == [fleet.at_ms]
        assert s.values.tolist() == stored([fleet.value(s.labels, fleet.at_ms)])
    assert {s.labels["node"] for s in result.series} == {"n1", "nœud-ü"}

    result = engine.range('fleet_gpu_utilization_ratio{gpu="1"}', fleet.start_ms, fleet.end_ms,
                          60_000)  # fmt: skip
    (s,) = result.series
    times = list(range(fleet.start_ms, fleet.end_ms + 1, 60_000))
    assert result.result_type == "matrix" and s.t_ms.tolist() == times
    assert s.values.tolist() == stored([fleet.value(s.labels, t) for t in times])

    allocations = [labels for labels, t, _ in fleet.rows if t == fleet.t0_ms
                   and labels["__name__"] == "fleet_gpu_allocation"]  # fmt: skip
    found = engine.series(["fleet_gpu_allocation"], fleet.start_ms, fleet.end_ms)
    assert sorted(found, key=str) == sorted(allocations, key=str)
    names = engine.label_names(["fleet_gpu_allocation"], fleet.start_ms, fleet.end_ms)
    assert {"__name__", "gpu_uuid", "job", "team"} <= set(names)
    assert engine.label_values("team", ["fleet_gpu_allocation"], None, None) == ["llm", "vision"]
    metrics = engine.label_values("__name__", [], fleet.start_ms, fleet.end_ms)
    assert {"fleet_gpu_allocation", "fleet_gpu_energy_joules_total"} <= set(metrics)


def test_engine_answers_equal_the_servers_json(backend: Backend, engine: PrometheusEngine) -> None:
    fleet = backend.fleet
    query = "sum by (node) (rate(fleet_gpu_energy_joules_total[5m]))"
    form = {"query": query, "start": format_time(fleet.start_ms), "end": format_time(fleet.end_ms),
            "step": "60"}  # fmt: skip
    raw = httpx.post(backend.url + "/api/v1/query_range", data=form).json()["data"]["result"]
    result = engine.range(query, fleet.start_ms, fleet.end_ms, 60_000)
    assert [s.labels for s in result.series] == [item["metric"] for item in raw]
    for s, item in zip(result.series, raw, strict=True):
        assert s.t_ms.tolist() == [round(t * 1000) for t, _ in item["values"]]
        assert s.values.tolist() == [float(v) for _, v in item["values"]]


def test_engine_errors(backend: Backend, engine: PrometheusEngine) -> None:
    with pytest.raises(QueryError) as caught:
        engine.instant("sum(", backend.fleet.at_ms)
    expected = "bad_data" if backend.name == "prometheus" else "execution"  # VM answers 422
    assert caught.value.error_type == expected
    assert not caught.value.message.startswith("invalid parameter")


def test_prometheus_scalars_and_strings(backend: Backend, engine: PrometheusEngine) -> None:
    if backend.name != "prometheus":  # VictoriaMetrics answers scalars as one-series vectors
        result = engine.instant("1+1", 4_000)
        assert result.result_type == "vector" and result.series[0].values.tolist() == [2.0]
        return
    assert engine.instant("1+1", 4_000).scalar == (4_000, 2.0)
    assert engine.instant('"fleet"', 1_500).string == (1_500, "fleet")
    at = backend.fleet.at_ms
    assert engine.instant("scalar(sum(fleet_gpu_allocation))", at).scalar == (at, 2.0)


# ----------------------------------------------------------------------------- (b) the front end


def requests_for(fleet: Fleet, prometheus: bool) -> list[tuple[str, str, dict[str, Any]]]:
    at, start, end = (format_time(t) for t in (fleet.at_ms, fleet.start_ms, fleet.end_ms))
    window = {"start": start, "end": end}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/v1/query", {"query": "1+1", "time": "4"}),  # Grafana's health check
        ("GET", "/api/v1/query", {"query": "fleet_gpu_utilization_ratio", "time": at}),
        ("POST", "/api/v1/query", {"query": "sum by (team) (fleet_gpu_allocation)", "time": at}),
        ("POST", "/api/v1/query", {"query": "fleet_gpu_utilization_ratio / 7", "time": at}),
        ("POST", "/api/v1/query_range", {"query": "rate(fleet_gpu_energy_joules_total[5m])",
                                         **window, "step": "60"}),
        ("GET", "/api/v1/query_range", {"query": 'fleet_gpu_utilization_ratio{gpu="1"} * 1e20',
                                        **window, "step": "2m"}),
        ("POST", "/api/v1/series", {"match[]": ["fleet_gpu_allocation", "fleet_gpu_up"],
                                    **window}),
        ("POST", "/api/v1/labels", {"match[]": "fleet_gpu_utilization_ratio", **window}),
        ("GET", "/api/v1/label/__name__/values", window),
        ("GET", "/api/v1/label/team/values", {"match[]": "fleet_gpu_allocation", **window}),
    ]  # fmt: skip
    if prometheus:
        calls += [
            ("GET", "/api/v1/query", {"query": "sum(", "time": at}),
            ("GET", "/api/v1/query", {"query": '"fleet"', "time": "1.5"}),
            ("GET", "/api/v1/query", {"query": "scalar(sum(fleet_gpu_allocation))", "time": at}),
            ("GET", "/api/v1/query", {"query": "1e-7 * 3", "time": at}),
            ("POST", "/api/v1/query_range", {"query": "fleet_gpu_utilization_ratio * 1e-9",
                                             **window, "step": "5m"}),
            ("POST", "/api/v1/query_range", {"query": "fleet_gpu_energy_joules_total * 1e19",
                                             **window, "step": "5m"}),
            ("GET", "/api/v1/query_range", {"query": "up", "start": end, "end": start,
                                            "step": "60"}),
            ("GET", "/api/v1/query_range", {"query": "up", "start": "0", "end": "110010",
                                            "step": "10"}),
            ("GET", "/api/v1/query_range", {"query": "up", **window}),
            ("GET", "/api/v1/series", window),
            ("GET", "/api/v1/label/1bad/values", {}),
        ]  # fmt: skip
    return calls


def test_fleetscope_is_a_transparent_front_end(
    backend: Backend, engine: PrometheusEngine, asgi_server: Callable[[Any], str], tmp_path: Path
) -> None:
    settings = WebSettings(data_dir=tmp_path / "fleetscope")
    app = create_app(settings, FakeMetricStore(), FakeRecordStore(), engine=engine)
    token = (settings.data_dir / "admin.token").read_text().strip()
    front = asgi_server(app)
    ours = httpx.Client(base_url=front, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    theirs = httpx.Client(base_url=backend.url, timeout=30)
    answered = []
    for method, path, params in requests_for(backend.fleet, backend.name == "prometheus"):
        if method == "GET":
            want, got = theirs.get(path, params=params), ours.get(path, params=params)
        else:
            want, got = theirs.post(path, data=params), ours.post(path, data=params)
        where = f"{method} {path} {params}"
        assert (got.status_code, got.json()) == (want.status_code, want.json()), where
        assert got.headers["content-type"] == "application/json", where
        answered.append((want.status_code, want.json().get("data") not in (None, [], {})))
    assert answered.count((200, True)) >= 10  # most of the calls are answers with data
    ours.close()
    theirs.close()


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """An answer with an instant vector's series in label order (Prometheus leaves them in
    evaluation order, an aggregation's groups as first seen; the embedded evaluator sorts) and
    sample values to 12 significant digits (the two engines may round differently in the last
    bit: that is the conformance suite's business, not the API's)."""
    data = body.get("data")
    if not isinstance(data, dict) or "resultType" not in data:
        return body

    def point(pair: list[Any]) -> list[Any]:
        return [pair[0], f"{float(pair[1]):.12g}"]

    result = data["result"]
    if data["resultType"] == "vector":
        result = sorted(
            ({"metric": s["metric"], "value": point(s["value"])} for s in result),
            key=lambda s: sorted(s["metric"].items()),
        )
    elif data["resultType"] == "matrix":
        result = [{"metric": s["metric"], "values": [point(p) for p in s["values"]]}
                  for s in result]  # fmt: skip
    elif data["resultType"] == "scalar":
        result = point(result)
    return {**body, "data": {**data, "result": result}}


def test_embedded_front_end_answers_like_prometheus(
    prometheus: Callable[[str], Any], asgi_server: Callable[[Any], str], tmp_path: Path
) -> None:
    """The whole embedded path — our remote-write receiver, DuckDB, the evaluator, this API —
    against Prometheus on the same data: equal JSON for answers, equal status and errorType
    for errors (parse error texts differ between the two PromQL parsers)."""
    from fleetscope.store.duckdb import DuckDBStore

    fleet = make_fleet()
    reference = prometheus("global:\n  scrape_interval: 15s\n")
    load(reference.url, fleet, victoria=False)
    store = DuckDBStore(tmp_path / "fleetscope.duckdb")
    settings = WebSettings(data_dir=tmp_path / "fleetscope")
    front = asgi_server(create_app(settings, store, store))  # the default, embedded engine
    token = (settings.data_dir / "admin.token").read_text().strip()
    ours = httpx.Client(base_url=front, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    body = encode(SampleBatch.from_rows(fleet.rows))
    assert ours.post("/api/v1/write", content=body, headers=HEADERS).status_code == 204
    theirs = httpx.Client(base_url=reference.url, timeout=30)
    for method, path, params in requests_for(fleet, prometheus=True):
        if method == "GET":
            want, got = theirs.get(path, params=params), ours.get(path, params=params)
        else:
            want, got = theirs.post(path, data=params), ours.post(path, data=params)
        where = f"{method} {path} {params}"
        assert got.status_code == want.status_code, f"{where}: {got.text[:300]}"
        if want.status_code == 200:
            assert comparable(got.json()) == comparable(want.json()), where
        else:
            assert got.json()["errorType"] == want.json()["errorType"], where
    ours.close()
    theirs.close()
    store.close()
