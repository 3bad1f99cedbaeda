"""Fleetscope's Prometheus HTTP API over a fake engine: shapes, parameters, errors, auth.

Expected texts are what Prometheus 2.42 answers to the same requests (probed against the Debian
binary, value formatting included); tests/integration/test_prometheus_api_real.py compares with a
live one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetscope.query import QueryError, QueryResult
from fleetscope.store import FakeMetricStore, FakeRecordStore
from fleetscope.web.app import WebSettings, create_app
from fleetscope.web.prometheus import (
    MAX_TIME_TEXT,
    MIN_TIME_TEXT,
    format_scalar,
    format_time,
    format_value,
    parse_duration_ns,
    parse_time_ms,
)

from .conftest import TestClient
from .fakes import FakeEngine, series

NOW_MS = 1_700_000_000_000
UP = {"__name__": "up", "job": "node", "instance": "n1:9100"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(
        instant_results={
            "up": lambda t: QueryResult("vector", [series(UP, [(t, 1.0)])]),
            "1+1": lambda t: QueryResult("scalar", scalar=(t, 2.0)),
            '"foo"': lambda t: QueryResult("string", string=(t, "foo")),
            "none": lambda t: QueryResult("vector"),
            "partial": lambda t: QueryResult("vector", warnings=["store answered partially"]),
        },
        range_results={
            "up": lambda start, end, step: QueryResult(
                "matrix",
                [series(UP, [(t, float(t % 7)) for t in range(start, end + 1, step)])],
            ),
        },
        label_sets=[
            UP,
            {"__name__": "up", "job": "node", "instance": "n2:9100"},
            {"__name__": "fleet_gpu_up", "node": "n1", "gpu": "0"},
        ],
    )


@pytest.fixture
def api(tmp_path: Path, engine: FakeEngine) -> Iterator[TestClient]:
    settings = WebSettings(data_dir=tmp_path / "data", clock=lambda: NOW_MS / 1000)
    app = create_app(settings, FakeMetricStore(), FakeRecordStore(), engine=engine)
    with TestClient(app) as c:
        token = (settings.data_dir / "admin.token").read_text().strip()
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


def error_of(response: Any) -> tuple[int, str, str]:
    body = response.json()
    assert body["status"] == "error" and set(body) == {"status", "errorType", "error"}
    return response.status_code, body["errorType"], body["error"]


# ----------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(1.0, "1", id="integer"),
        pytest.param(-3.0, "-3", id="negative"),
        pytest.param(0.1 + 0.2, "0.30000000000000004", id="shortest-repr"),
        pytest.param(1e20, "100000000000000000000", id="no-exponent-large"),
        pytest.param(1e-6, "0.000001", id="no-exponent-small"),
        pytest.param(1e-7, "1e-07", id="exponent-below-1e-6"),
        pytest.param(-9.80174847492582e-24, "-9.80174847492582e-24", id="tiny"),
        pytest.param(1.5e21, "1.5e+21", id="exponent-from-1e21"),
        pytest.param(1.5e16, "15000000000000000", id="large-integer"),
        pytest.param(123456789.125, "123456789.125", id="fraction"),
        pytest.param(float("nan"), "NaN", id="nan"),
        pytest.param(float("inf"), "+Inf", id="inf"),
        pytest.param(float("-inf"), "-Inf", id="minus-inf"),
        pytest.param(-0.0, "-0", id="negative-zero"),
        pytest.param(0.0, "0", id="zero"),
    ],
)
def test_sample_values_are_formatted_like_prometheus(value: float, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(1e-7, "0.0000001"), (1e21, "1000000000000000000000"), (2.0, "2"), (-0.0, "-0"),
     (float("nan"), "NaN")],
)  # fmt: skip
def test_scalars_are_formatted_without_exponent(value: float, text: str) -> None:
    assert format_scalar(value) == text


@pytest.mark.parametrize(
    ("t_ms", "text"),
    [(1_435_781_451_781, "1435781451.781"), (1_500, "1.500"), (4_000, "4"), (1, "0.001"),
     (-1_500, "-1.500"), (0, "0")],
)  # fmt: skip
def test_times_are_formatted_like_prometheus(t_ms: int, text: str) -> None:
    assert format_time(t_ms) == text


@pytest.mark.parametrize(
    ("text", "t_ms"),
    [
        pytest.param("4", 4_000, id="seconds"),
        pytest.param("1.5", 1_500, id="fraction"),
        pytest.param("0.0005", 1, id="rounds-half-up"),
        pytest.param("1.0005", 1_000, id="float-rounding-like-go"),
        pytest.param("-1.5", -1_500, id="negative"),
        pytest.param("1e9", 1_000_000_000_000, id="exponent"),
        pytest.param("2015-07-01T20:10:51.781Z", 1_435_781_451_781, id="rfc3339"),
        pytest.param("2015-07-01T22:10:51.7819Z", 1_435_788_651_781, id="rfc3339-truncates"),
        pytest.param("2015-07-01T22:10:51+02:00", 1_435_781_451_000, id="rfc3339-offset"),
    ],
)
def test_times_are_parsed_like_prometheus(text: str, t_ms: int) -> None:
    assert parse_time_ms(text) == t_ms


@pytest.mark.parametrize(
    "text", ["", "abc", "2015-07-01", "1e400", "NaN", "inf", " 4", "1_000", "2015-07-01T25:00:00Z"]
)
def test_bad_times_are_refused_with_prometheus_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"^cannot parse .* to a valid timestamp$"):
        parse_time_ms(text)


@pytest.mark.parametrize(
    ("text", "ns"),
    [("15", 15 * 10**9), ("0.5", 5 * 10**8), ("15s", 15 * 10**9), ("1m30s", 90 * 10**9),
     ("2h", 7200 * 10**9), ("250ms", 250 * 10**6), ("0", 0), ("0s", 0), ("-1", -(10**9))],
)  # fmt: skip
def test_durations_are_parsed_like_prometheus(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "abc", "1x", "s", "1.5s", "nan"])
def test_bad_durations_are_refused_with_prometheus_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"^cannot parse .* to a valid duration$"):
        parse_duration_ns(text)


# ----------------------------------------------------------------------------- query shapes


def test_instant_vector_has_prometheus_shape(api: TestClient, engine: FakeEngine) -> None:
    r = api.get("/api/v1/query", params={"query": "up", "time": "1.5"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.text == (
        '{"status":"success","data":{"resultType":"vector","result":[{"metric":'
        '{"__name__":"up","job":"node","instance":"n1:9100"},"value":[1.500,"1"]}]}}'
    )
    assert engine.calls == [("instant", "up", 1_500)]


@pytest.mark.parametrize(
    ("query", "result"),
    [
        pytest.param("1+1", '[4,"2"]', id="scalar"),
        pytest.param('"foo"', '[4,"foo"]', id="string"),
        pytest.param("none", "[]", id="empty-vector"),
    ],
)
def test_scalar_string_and_empty_results(api: TestClient, query: str, result: str) -> None:
    r = api.get("/api/v1/query", params={"query": query, "time": "4"})
    kind = json.loads(r.text)["data"]["resultType"]
    assert r.text == f'{{"status":"success","data":{{"resultType":"{kind}","result":{result}}}}}'


def test_time_defaults_to_now_and_takes_rfc3339(api: TestClient, engine: FakeEngine) -> None:
    api.get("/api/v1/query", params={"query": "up"})
    api.get("/api/v1/query", params={"query": "up", "time": "2015-07-01T20:10:51.781Z"})
    assert [c[2] for c in engine.calls] == [NOW_MS, 1_435_781_451_781]


def test_post_form_values_come_before_url_values(api: TestClient, engine: FakeEngine) -> None:
    r = api.post("/api/v1/query?query=none&time=9", content="query=up&time=2", headers=FORM)
    assert r.status_code == 200
    assert engine.calls == [("instant", "up", 2_000)]


def test_warnings_are_passed_on(api: TestClient) -> None:
    body = api.get("/api/v1/query", params={"query": "partial"}).json()
    assert body["warnings"] == ["store answered partially"]
    assert "warnings" not in api.get("/api/v1/query", params={"query": "up"}).json()


def test_range_matrix_has_prometheus_shape(api: TestClient, engine: FakeEngine) -> None:
    form = "query=up&start=2015-07-01T20:10:51.781Z&end=1435781453.781&step=1s"
    r = api.post("/api/v1/query_range", content=form, headers=FORM)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {
                    "metric": UP,
                    "values": [[1435781451.781, "5"], [1435781452.781, "4"], [1435781453.781, "3"]],
                }
            ],
        },
    }
    assert engine.calls == [("range", "up", 1_435_781_451_781, 1_435_781_453_781, 1_000)]


def test_nan_and_infinities_are_strings(api: TestClient, engine: FakeEngine) -> None:
    engine.instant_results["odd"] = lambda t: QueryResult(
        "vector",
        [series({"k": v}, [(t, float(v))]) for v in ("nan", "inf", "-inf")],
    )
    values = [s["value"][1] for s in api.get("/api/v1/query?query=odd").json()["data"]["result"]]
    assert values == ["NaN", "+Inf", "-Inf"]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        pytest.param(QueryError("bad_data", "1:5: parse error: unclosed left parenthesis"), 400,
                     'invalid parameter "query": 1:5: parse error: unclosed left parenthesis',
                     id="bad_data-names-the-parameter"),
        pytest.param(QueryError("execution", "many-to-many matching not allowed"), 422,
                     "many-to-many matching not allowed", id="execution"),
        pytest.param(QueryError("timeout", "query timed out"), 503, "query timed out",
                     id="timeout"),
        pytest.param(QueryError("canceled", "query was canceled"), 503, "query was canceled",
                     id="canceled"),
        pytest.param(QueryError("unavailable", "cannot reach http://p"), 503,
                     "cannot reach http://p", id="unavailable"),
        pytest.param(QueryError("internal", "disk on fire"), 500, "disk on fire", id="internal"),
        pytest.param(RuntimeError("bug"), 500, "RuntimeError: bug", id="unexpected"),
    ],
)  # fmt: skip
def test_engine_errors_map_to_prometheus_statuses(
    api: TestClient, engine: FakeEngine, error: Exception, status: int, message: str
) -> None:
    engine.instant_results["q"] = error
    r = api.get("/api/v1/query", params={"query": "q"})
    kind = error.error_type if isinstance(error, QueryError) else "internal"
    assert error_of(r) == (status, kind, message)


QUERY_RANGE_ERRORS = [
    pytest.param({"start": "0", "end": "10"}, 'invalid parameter "step": cannot parse "" to a '
                 "valid duration", id="missing-step"),
    pytest.param({"end": "10", "step": "1"}, 'invalid parameter "start": cannot parse "" to a '
                 "valid timestamp", id="missing-start"),
    pytest.param({"start": "x", "end": "10", "step": "1"}, 'invalid parameter "start": cannot '
                 'parse "x" to a valid timestamp', id="bad-start"),
    pytest.param({"start": "10", "end": "0", "step": "1"}, 'invalid parameter "end": end timestamp '
                 "must not be before start time", id="end-before-start"),
    pytest.param({"start": "0", "end": "10", "step": "0"}, 'invalid parameter "step": zero or '
                 "negative query resolution step widths are not accepted. Try a positive integer",
                 id="zero-step"),
    pytest.param({"start": "0", "end": "10", "step": "-1"}, 'invalid parameter "step": zero or '
                 "negative query resolution step widths are not accepted. Try a positive integer",
                 id="negative-step"),
    pytest.param({"start": "0", "end": "10", "step": "0.0001"}, 'invalid parameter "step": zero '
                 "or negative query resolution step widths are not accepted. Try a positive "
                 "integer", id="sub-millisecond-step"),
    pytest.param({"start": "0", "end": "10", "step": "abc"}, 'invalid parameter "step": cannot '
                 'parse "abc" to a valid duration', id="bad-step"),
    pytest.param({"start": "0", "end": "110010", "step": "10"}, "exceeded maximum resolution of "
                 "11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
                 id="too-many-points"),
    pytest.param({"start": "0", "end": "10", "step": "1", "timeout": "soon"}, 'invalid parameter '
                 '"timeout": cannot parse "soon" to a valid duration', id="bad-timeout"),
    pytest.param({"start": "0", "end": "10", "step": "1", "query": ""}, 'invalid parameter '
                 '"query": 1:1: parse error: no expression found in input', id="empty-query"),
]  # fmt: skip


@pytest.mark.parametrize(("params", "message"), QUERY_RANGE_ERRORS)
def test_query_range_parameters_are_checked_like_prometheus(
    api: TestClient, engine: FakeEngine, params: dict[str, str], message: str
) -> None:
    r = api.get("/api/v1/query_range", params={"query": "up", **params})
    assert error_of(r) == (400, "bad_data", message)
    assert engine.calls == []


def test_eleven_thousand_points_are_allowed(api: TestClient, engine: FakeEngine) -> None:
    r = api.get("/api/v1/query_range", params={"query": "up", "start": "0",
                                                   "end": "110009.999", "step": "10"})  # fmt: skip
    assert r.status_code == 200
    assert len(r.json()["data"]["result"][0]["values"]) == 11_001


def test_bad_instant_parameters(api: TestClient) -> None:
    assert error_of(api.get("/api/v1/query", params={"query": "up", "time": "abc"})) == (
        400,
        "bad_data",
        'invalid parameter "time": Invalid time value for \'time\': cannot parse "abc" to a '
        "valid timestamp",
    )
    assert error_of(api.get("/api/v1/query")) == (
        400, "bad_data", 'invalid parameter "query": 1:1: parse error: no expression found in input'
    )  # fmt: skip


def test_timeout_answers_503_without_waiting_for_the_engine(
    api: TestClient, engine: FakeEngine
) -> None:
    engine.gate = threading.Event()
    try:
        r = api.get("/api/v1/query", params={"query": "up", "timeout": "50ms"})
        assert error_of(r) == (503, "timeout", "query timed out in expression evaluation")
    finally:
        engine.gate.set()


# ----------------------------------------------------------------------------- series, labels


def test_series_needs_match(api: TestClient) -> None:
    assert error_of(api.get("/api/v1/series")) == (
        400, "bad_data", "no match[] parameter provided"
    )  # fmt: skip


def test_series_by_get_and_post(api: TestClient, engine: FakeEngine) -> None:
    r = api.get("/api/v1/series", params=[("match[]", "up"), ("match[]", "fleet_gpu_up")])
    assert r.json() == {"status": "success", "data": engine.label_sets}
    body = "match[]=fleet_gpu_up&start=10&end=2015-07-01T20:10:51.781Z"
    assert api.post("/api/v1/series", content=body, headers=FORM).json()["data"] == [
        engine.label_sets[2]
    ]
    assert engine.calls == [
        ("series", ["up", "fleet_gpu_up"], None, None),
        ("series", ["fleet_gpu_up"], 10_000, 1_435_781_451_781),
    ]


def test_prometheus_unbounded_time_sentinels_mean_no_bound(
    api: TestClient, engine: FakeEngine
) -> None:
    params = {"match[]": "up", "start": MIN_TIME_TEXT, "end": MAX_TIME_TEXT}
    assert api.get("/api/v1/series", params=params).status_code == 200
    assert api.get("/api/v1/labels", params=params).status_code == 200
    assert [c[-2:] for c in engine.calls] == [(None, None), (None, None)]


def test_limit_truncates_with_a_warning(api: TestClient) -> None:
    body = api.get("/api/v1/series", params={"match[]": "up", "limit": "1"}).json()
    assert len(body["data"]) == 1 and body["warnings"] == ["results truncated due to limit"]
    body = api.get("/api/v1/label/__name__/values", params={"limit": "5"}).json()
    assert body == {"status": "success", "data": ["fleet_gpu_up", "up"]}


def test_bad_selector_names_match(api: TestClient) -> None:
    status, kind, message = error_of(api.get("/api/v1/series", params={"match[]": "sum("}))
    assert (status, kind) == (400, "bad_data") and message.startswith('invalid parameter "match[]"')


def test_labels_by_get_and_post(api: TestClient) -> None:
    everything = ["__name__", "gpu", "instance", "job", "node"]
    assert api.get("/api/v1/labels").json() == {"status": "success", "data": everything}
    r = api.post("/api/v1/labels", content="match[]=up&start=1&end=2", headers=FORM)
    assert r.json()["data"] == ["__name__", "instance", "job"]


def test_label_values(api: TestClient, engine: FakeEngine) -> None:
    r = api.get("/api/v1/label/instance/values", params={"match[]": "up", "start": "5"})
    assert r.json() == {"status": "success", "data": ["n1:9100", "n2:9100"]}
    assert engine.calls == [("label_values", "instance", ["up"], 5_000, None)]
    assert error_of(api.get("/api/v1/label/1bad/values")) == (
        400, "bad_data", 'invalid label name: "1bad"'
    )  # fmt: skip


# ----------------------------------------------------------------------------- metadata, build


def test_metadata_comes_from_the_catalog(api: TestClient) -> None:
    data = api.get("/api/v1/metadata").json()["data"]
    assert data["fleet_gpu_utilization_ratio"] == [
        {
            "type": "gauge",
            "help": "Fraction of the sample period during which a kernel ran on the GPU "
            "(NVML utilization.gpu).",
            "unit": "ratio",
        }
    ]
    assert data["fleet_gpu_allocation"][0]["type"] == "gauge"  # info series are gauges
    assert data["fleet_train_step_seconds"][0]["type"] == "histogram"
    assert len(api.get("/api/v1/metadata", params={"limit": "2"}).json()["data"]) == 2
    one = api.get("/api/v1/metadata", params={"metric": "fleet_gpu_up"}).json()["data"]
    assert list(one) == ["fleet_gpu_up"]
    assert api.get("/api/v1/metadata", params={"metric": "nope"}).json()["data"] == {}
    assert error_of(api.get("/api/v1/metadata", params={"limit": "x"})) == (
        400, "bad_data", "limit must be a number"
    )  # fmt: skip


def test_buildinfo_reads_as_plain_prometheus(api: TestClient) -> None:
    data = api.get("/api/v1/status/buildinfo").json()["data"]
    assert data["version"] == "2.42.0" and data["fleetscopeVersion"] == "0.1.0"
    assert "features" not in data  # with features, Grafana would take Fleetscope for Mimir


def test_exemplars_are_empty(api: TestClient) -> None:
    r = api.get("/api/v1/query_exemplars", params={"query": "up", "start": "1", "end": "2"})
    assert r.json() == {"status": "success", "data": []}


# ----------------------------------------------------------------------------- robustness


def test_routes_need_the_token(api: TestClient) -> None:
    del api.headers["Authorization"]
    for path in ("/api/v1/query?query=up", "/api/v1/labels", "/api/v1/status/buildinfo"):
        assert api.get(path).status_code == 401


def test_existing_api_v1_routes_still_answer(api: TestClient) -> None:
    assert api.post("/api/v1/write", content=b"junk").status_code not in (404, 405)
    assert api.post("/api/v1/records/jobs", json=[]).status_code not in (404, 405)
    # the fake engine knows none of the usage queries: an engine error, not a missing route
    assert api.get("/api/v1/fleet/usage").status_code == 500


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/query?query=up&time=%00", None),
        ("GET", "/api/v1/query?query=up&time=1e999999", None),
        ("GET", "/api/v1/query?query=%ff%fe", None),
        ("GET", "/api/v1/query_range?query=up&start=-9e20&end=9e20&step=1", None),
        ("GET", "/api/v1/query_range?query=up&start=0&end=1&step=1e999", None),
        ("GET", "/api/v1/query_range?query=up&start=0&end=1&step=9223372036.9", None),
        ("GET", "/api/v1/query_range?query=up&start=0&end=1&step=99999999999999999999y", None),
        ("GET", "/api/v1/series?match[]=&start=0", None),
        ("GET", "/api/v1/series?match[]=up&limit=-1", None),
        ("GET", "/api/v1/labels?limit=many", None),
        ("GET", "/api/v1/label/a-b/values", None),
        ("GET", "/api/v1/label/%C3%A9/values", None),
        ("GET", "/api/v1/query_exemplars?query=up&start=2&end=1", None),
        ("POST", "/api/v1/query", b"query=up&time=yesterday"),
        ("POST", "/api/v1/query_range", b"\xff\xfe=\x00"),
    ],
)
def test_bad_input_is_never_a_500(
    api: TestClient, method: str, path: str, body: bytes | None
) -> None:
    r = api.request(method, path, content=body, headers=FORM if body is not None else {})
    assert r.status_code == 400, r.text
    assert r.json()["errorType"] == "bad_data"
