"""PrometheusEngine's reading of answers and failures, with canned HTTP answers.

The canned bodies are what Prometheus 2.42 and VictoriaMetrics 1.79 answer (probed against the
Debian binaries); tests/integration/test_prometheus_api_real.py runs the adapter against both.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import numpy as np
import pytest

from fleetscope.query import QueryError
from fleetscope.store.prometheus_api import PrometheusEngine

Handler = Callable[[httpx.Request], httpx.Response]


def engine_answering(handler: Handler, **kwargs: Any) -> PrometheusEngine:
    return PrometheusEngine("http://prom:9090/", transport=httpx.MockTransport(handler), **kwargs)


def answer(body: Any, status: int = 200) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return handle


def form_of(request: httpx.Request) -> dict[str, list[str]]:
    text = request.content.decode() if request.content else request.url.query.decode()
    return parse_qs(text)


def test_instant_query_sends_a_form_and_reads_a_vector() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "warnings": ["partial"], "data": {
            "resultType": "vector", "result": [
                {"metric": {"__name__": "up", "job": "a"}, "value": [1435781451.781, "1"]},
                {"metric": {"job": "b"}, "value": [1435781451.781, "NaN"]},
            ]}})  # fmt: skip

    result = engine_answering(handle, headers={"Authorization": "Bearer t"}).instant(
        "up", 1_435_781_451_781
    )
    (request,) = seen
    assert request.method == "POST" and request.url == "http://prom:9090/api/v1/query"
    assert request.headers["authorization"] == "Bearer t"
    assert form_of(request) == {"query": ["up"], "time": ["1435781451.781"]}
    assert result.result_type == "vector" and result.warnings == ["partial"]
    assert [s.labels for s in result.series] == [{"__name__": "up", "job": "a"}, {"job": "b"}]
    assert result.series[0].t_ms.tolist() == [1_435_781_451_781]
    assert result.series[0].values.tolist() == [1.0] and np.isnan(result.series[1].values[0])


def test_range_query_reads_a_matrix_with_special_values() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "data": {
            "resultType": "matrix", "result": [{"metric": {}, "values": [
                [0.001, "0.30000000000000004"], [1.001, "+Inf"], [2.001, "-Inf"],
                [3.001, "100000000000000000000"]]}]}})  # fmt: skip

    result = engine_answering(handle).range("x", 1, 3_001, 1_000)
    assert form_of(seen[0]) == {
        "query": ["x"], "start": ["0.001"], "end": ["3.001"], "step": ["1.000"]
    }  # fmt: skip
    (s,) = result.series
    assert s.t_ms.tolist() == [1, 1_001, 2_001, 3_001]
    assert s.values.tolist() == [0.1 + 0.2, float("inf"), float("-inf"), 1e20]


def test_scalar_and_string_results() -> None:
    scalar = answer({"status": "success", "data": {"resultType": "scalar", "result": [4, "2"]}})
    assert engine_answering(scalar).instant("1+1", 4_000).scalar == (4_000, 2.0)
    string = answer({"status": "success", "data": {"resultType": "string", "result": [1.5, "a"]}})
    assert engine_answering(string).instant('"a"', 1_500).string == (1_500, "a")


def test_native_histograms_are_skipped_with_a_warning() -> None:
    body = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"job": "h"}, "histogram": [1, {"count": "2", "sum": "3", "buckets": []}]},
        {"metric": {"job": "f"}, "value": [1, "7"]}]}}  # fmt: skip
    result = engine_answering(answer(body)).instant("x", 1_000)
    assert [s.labels for s in result.series] == [{"job": "f"}]
    assert len(result.warnings) == 1 and "native histogram" in result.warnings[0]


def test_series_labels_and_values_calls() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        data: Any = [{"__name__": "up", "job": "a"}] if "series" in request.url.path else ["a"]
        return httpx.Response(200, json={"status": "success", "data": data})

    engine = engine_answering(handle)
    assert engine.series(["up", '{job="a"}'], 1_000, None) == [{"__name__": "up", "job": "a"}]
    assert engine.label_names([], None, None) == ["a"]
    assert engine.label_values("job", ["up"], 1_000, 2_500) == ["a"]
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", "/api/v1/series"), ("POST", "/api/v1/labels"),
        ("GET", "/api/v1/label/job/values"),
    ]  # fmt: skip
    assert form_of(seen[0]) == {"match[]": ["up", '{job="a"}'], "start": ["1.000"]}
    assert form_of(seen[1]) == {}
    assert form_of(seen[2]) == {"match[]": ["up"], "start": ["1.000"], "end": ["2.500"]}


PROMETHEUS_PARSE_ERROR = {
    "status": "error",
    "errorType": "bad_data",
    "error": 'invalid parameter "query": 1:5: parse error: unclosed left parenthesis',
}
VM_PARSE_ERROR = {"status": "error", "errorType": "422", "error": "cannot parse query"}


@pytest.mark.parametrize(
    ("handler", "error_type", "message"),
    [
        pytest.param(answer(PROMETHEUS_PARSE_ERROR, 400), "bad_data",
                     "1:5: parse error: unclosed left parenthesis", id="prometheus-bad-data"),
        pytest.param(answer({"status": "error", "errorType": "execution", "error": "boom"}, 422),
                     "execution", "boom", id="prometheus-execution"),
        pytest.param(answer({"status": "error", "errorType": "timeout", "error": "slow"}, 503),
                     "timeout", "slow", id="prometheus-timeout"),
        pytest.param(answer(VM_PARSE_ERROR, 422), "execution", "cannot parse query",
                     id="victoria-metrics-status-as-type"),
        pytest.param(answer({"status": "error", "errorType": "not_found", "error": "?"}, 404),
                     "internal", "?", id="unknown-type"),
        pytest.param(lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"),
                     "unavailable", "HTTP 502 from http://prom:9090/api/v1/query", id="proxy-502"),
        pytest.param(lambda r: httpx.Response(401, text="Unauthorized"), "unavailable",
                     "HTTP 401", id="unauthorized"),
        pytest.param(lambda r: httpx.Response(400, text="bad"), "bad_data", "HTTP 400",
                     id="plain-400"),
        pytest.param(lambda r: httpx.Response(200, text="not json"), "internal",
                     "is not a Prometheus API answer", id="not-json"),
        pytest.param(answer({"status": "success", "data": {"resultType": "vector"}}), "internal",
                     "unexpected query answer", id="malformed"),
    ],
)  # fmt: skip
def test_failures_become_query_errors(handler: Handler, error_type: str, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        engine_answering(handler).instant("x", 0)
    assert caught.value.error_type == error_type
    assert message in caught.value.message


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = PrometheusEngine(f"http://127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(QueryError) as caught:
        engine.label_names([], None, None)
    assert caught.value.error_type == "unavailable"
    assert f"cannot reach http://127.0.0.1:{port}/api/v1/labels" in caught.value.message


def test_no_answer_in_time_is_a_timeout() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(QueryError) as caught:
        engine_answering(slow).range("x", 0, 1_000, 1_000)
    assert caught.value.error_type == "timeout"


def test_label_names_must_be_a_list() -> None:
    engine = engine_answering(answer({"status": "success", "data": {"a": 1}}))
    with pytest.raises(QueryError, match="unexpected /api/v1/labels answer"):
        engine.label_names([], None, None)
