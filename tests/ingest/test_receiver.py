"""Tests of the HTTP ingest edge (fleetscope.ingest.receiver) against the fake and DuckDB stores.

Every refusal must be a 4xx whose body says what is wrong, and must leave the store unchanged.
"""

from __future__ import annotations

import gzip
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cramjam
import pytest
from fastapi.testclient import TestClient

from fleetscope.remotewrite import HEADERS, WriteRequest, encode
from fleetscope.store import SampleBatch

T0 = 1_700_000_000_000
GPU = {"__name__": "fleet_gpu_utilization_ratio", "node": "n1", "gpu": "0", "gpu_uuid": "GPU-0"}


def request(*series: tuple[list[tuple[str, str]], list[tuple[float, int]]]) -> bytes:
    """A remote-write body written field by field (any order, any labels)."""
    req: Any = WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        for v, t in samples:
            ts.samples.add(value=v, timestamp=t)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def good_body(t0: int = T0, n: int = 5) -> bytes:
    return encode(SampleBatch.from_rows([(GPU, t0 + 15_000 * k, 0.25 * k) for k in range(n)]))


def post_write(client: TestClient, body: bytes, **headers: str) -> Any:
    return client.post("/api/v1/write", content=body, headers={**HEADERS, **headers})


NAME = ("__name__", "m")

MALFORMED = [
    pytest.param(b"definitely not snappy", {}, 400, "bad snappy", id="bad-snappy"),
    pytest.param(
        bytes(cramjam.snappy.compress_raw(os.urandom(4096))), {}, 400, "bad protobuf", id="bad-pb"
    ),
    pytest.param(b"", {}, 400, "empty body", id="empty-body"),
    pytest.param(
        request(([NAME], [(1.0, -1000)])), {}, 400, "negative timestamp", id="negative-time"
    ),
    pytest.param(
        request(([NAME], [(1.0, T0 + 1), (2.0, T0)])), {}, 400, "out of order", id="backwards"
    ),
    pytest.param(
        request(([NAME], [(1.0, T0), (2.0, T0)])), {}, 400, "duplicate timestamp", id="same-ts"
    ),
    pytest.param(
        request(([("job", "x")], [(1.0, T0)])), {}, 400, "without a metric name", id="no-name"
    ),
    pytest.param(
        request(([NAME, ("a", "1"), ("a", "2")], [(1.0, T0)])),
        {},
        400,
        "duplicate label name",
        id="dup-label",
    ),
    pytest.param(
        request(([NAME, ("bad-name", "1")], [(1.0, T0)])),
        {},
        400,
        "invalid label name",
        id="bad-label-name",
    ),
    pytest.param(
        request(([NAME], [(1.0, T0)]), ([("job", "x")], [(1.0, T0)])),
        {},
        400,
        "without a metric name",
        id="one-bad-series-refuses-all",
    ),
    pytest.param(os.urandom(20 * 1024 * 1024), {}, 400, "snappy", id="20MB-random-garbage"),
    pytest.param(b"x" * (32 * 1024 * 1024 + 1), {}, 413, "over the", id="over-32MiB"),
    pytest.param(
        good_body(), {"Content-Type": "application/json"}, 415, "Content-Type", id="json-type"
    ),
    pytest.param(
        good_body(),
        {"Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"},
        415,
        "only 1.0",
        id="remote-write-2",
    ),
    pytest.param(good_body(), {"Content-Encoding": "gzip"}, 415, "Content-Encoding", id="gzip"),
]


@pytest.mark.parametrize(("body", "headers", "status", "message"), MALFORMED)
def test_malformed_write_is_refused_and_stores_nothing(
    client: TestClient,
    snapshot: Any,
    metric_store: Any,
    body: bytes,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    assert post_write(client, good_body(T0 - 10**6)).status_code == 204
    before, stats = snapshot(metric_store), metric_store.stats()
    resp = post_write(client, body, **headers)
    assert resp.status_code == status, resp.text
    assert message in resp.text
    assert snapshot(metric_store) == before
    assert metric_store.stats() == stats


def test_missing_content_type_is_refused(
    client: TestClient, snapshot: Any, metric_store: Any
) -> None:
    resp = client.post("/api/v1/write", content=good_body(), headers={"Content-Encoding": "snappy"})
    assert resp.status_code == 415
    assert snapshot(metric_store) == []


def test_good_write_is_stored(client: TestClient, snapshot: Any, metric_store: Any) -> None:
    resp = post_write(client, good_body())
    assert resp.status_code == 204, resp.text
    ((labels, times, _),) = snapshot(metric_store)
    assert dict(labels) == GPU
    assert times == [T0 + 15_000 * k for k in range(5)]


def test_resend_is_accepted_and_not_double_counted(
    client: TestClient, snapshot: Any, metric_store: Any
) -> None:
    assert post_write(client, good_body()).status_code == 204
    before = snapshot(metric_store)
    assert post_write(client, good_body()).status_code == 204
    assert snapshot(metric_store) == before
    assert metric_store.stats().samples == 5


def test_out_of_order_against_stored_is_refused(
    client: TestClient, snapshot: Any, metric_store: Any
) -> None:
    assert post_write(client, good_body()).status_code == 204
    before = snapshot(metric_store)
    late = encode(SampleBatch.from_rows([(GPU, T0 + 1, 9.0), (GPU, T0 + 10**9, 1.0)]))
    resp = post_write(client, late)
    assert resp.status_code == 400
    assert "out of order" in resp.text
    assert snapshot(metric_store) == before


def test_empty_label_values_are_dropped(
    client: TestClient, snapshot: Any, metric_store: Any
) -> None:
    body = request(([NAME, ("team", "")], [(1.0, T0)]))
    assert post_write(client, body).status_code == 204
    assert [dict(labels) for labels, _, _ in snapshot(metric_store)] == [{"__name__": "m"}]


def test_concurrent_writes_each_get_their_own_answer(
    client: TestClient, snapshot: Any, metric_store: Any
) -> None:
    """Writes sent at once (decoded one at a time, appended together when the store groups
    them): an out-of-order one is refused alone, the others are stored."""
    assert post_write(client, good_body()).status_code == 204
    late = encode(SampleBatch.from_rows([(GPU, T0 + 1, 9.0)]))
    bodies = [
        encode(SampleBatch.from_rows([({**GPU, "gpu": str(g)}, T0, float(g))])) for g in range(1, 9)
    ]
    bodies.insert(4, late)
    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(lambda b: post_write(client, b).status_code, bodies))
    assert statuses == [204] * 4 + [400] + [204] * 4
    stored = {dict(labels)["gpu"]: times for labels, times, _ in snapshot(metric_store)}
    assert stored == {"0": [T0 + 15_000 * k for k in range(5)]} | {
        str(g): [T0] for g in range(1, 9)
    }


EXPOSITION = """# HELP fleet_gpu_up GPU answered.
# TYPE fleet_gpu_up gauge
fleet_gpu_up{node="n1",gpu="0"} 1
fleet_gpu_up{node="n1",gpu="1"} 0 1700000000000
"""


def test_import_exposition_with_extra_labels(
    client: TestClient, snapshot: Any, metric_store: Any
) -> None:
    resp = client.post(
        "/api/v1/import/prometheus?extra_label=job=import&extra_label=node=n9",
        content=EXPOSITION,
        headers={"Content-Type": "text/plain"},
    )
    assert resp.status_code == 204, resp.text
    got = {
        dict(labels)["gpu"]: (dict(labels), times) for labels, times, _ in snapshot(metric_store)
    }
    assert got["0"][0] == {"__name__": "fleet_gpu_up", "node": "n9", "gpu": "0", "job": "import"}
    assert got["1"][1] == [T0]
    assert got["0"][1][0] > T0


def test_import_gzip_and_openmetrics(client: TestClient, snapshot: Any, metric_store: Any) -> None:
    text = "# TYPE a counter\na_total 3 1700000000.5\n# EOF\n"
    resp = client.post(
        "/api/v1/import/prometheus",
        content=gzip.compress(text.encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/openmetrics-text"},
    )
    assert resp.status_code == 204, resp.text
    assert snapshot(metric_store)[0][1] == [T0 + 500]


@pytest.mark.parametrize(
    ("url", "body", "headers", "message"),
    [
        pytest.param("", 'a 1\nb{x="y} 2\n', {}, "line 2", id="bad-line"),
        pytest.param("", "a 1 -5\n", {}, "negative timestamp", id="negative-time"),
        pytest.param("", "a 1\na 2\n", {}, "duplicate timestamp", id="same-series-twice"),
        pytest.param("?extra_label=job", "a 1\n", {}, "bad extra_label", id="bad-extra-label"),
        pytest.param("", b"\xff\xfe", {}, "not UTF-8", id="not-utf8"),
        pytest.param("", b"xx", {"Content-Encoding": "gzip"}, "bad gzip", id="bad-gzip"),
    ],
)
def test_bad_import_is_refused(
    client: TestClient,
    snapshot: Any,
    metric_store: Any,
    url: str,
    body: str | bytes,
    headers: dict[str, str],
    message: str,
) -> None:
    resp = client.post("/api/v1/import/prometheus" + url, content=body, headers=headers)
    assert resp.status_code == 400, resp.text
    assert message in resp.text
    assert snapshot(metric_store) == []


JOB = {
    "id": "42",
    "team": "vision",
    "user": "ana",
    "state": "RUNNING",
    "submit": "2024-01-01T00:00:00Z",
    "start": "2024-01-01T00:01:00Z",
    "gpus": 8,
}


def test_jobs_intake(client: TestClient, record_store: Any) -> None:
    resp = client.post("/api/v1/records/jobs", json=[JOB, {**JOB, "id": "43"}])
    assert resp.status_code == 200
    assert resp.json() == {"accepted": 2}
    assert sorted(k[1] for k in record_store.stored) == ["42", "43"]


@pytest.mark.parametrize(
    ("payload", "status", "messages"),
    [
        pytest.param(b"{not json", 400, ["not JSON"], id="not-json"),
        pytest.param(b'{"id": "1"}', 422, ["expected a JSON list"], id="not-a-list"),
        pytest.param(
            [JOB, {**JOB, "state": "SLEEPING"}, {**JOB, "gpus": -1, "team": ""}],
            422,
            ["record 1: field state", "record 2: field gpus", "record 2: field team"],
            id="bad-fields",
        ),
        pytest.param([JOB, 7], 422, ["record 1: expected an object"], id="not-an-object"),
    ],
)
def test_bad_jobs_are_refused_and_nothing_stored(
    client: TestClient,
    record_store: Any,
    payload: Any,
    status: int,
    messages: list[str],
) -> None:
    if isinstance(payload, bytes):
        resp = client.post("/api/v1/records/jobs", content=payload)
    else:
        resp = client.post("/api/v1/records/jobs", json=payload)
    assert resp.status_code == status, resp.text
    for m in messages:
        assert m in resp.text
    assert record_store.stored == {}


EVENT = {
    "time": "2024-01-01T00:02:00Z",
    "kind": "xid",
    "subject": "GPU-0",
    "attrs": {"node": "n1", "gpu": "0", "xid": 79, "action": "reset_gpu"},
}


def test_events_intake(client: TestClient, record_store: Any) -> None:
    resp = client.post("/api/v1/records/events", json=[EVENT, {**EVENT, "subject": "GPU-1"}])
    assert resp.status_code == 200
    assert resp.json() == {"accepted": 2}
    assert [e.subject for e in record_store.stored_events] == ["GPU-0", "GPU-1"]
    assert record_store.stored_events[0].attrs == EVENT["attrs"]


@pytest.mark.parametrize(
    ("payload", "status", "messages"),
    [
        pytest.param(b"[{oops", 400, ["not JSON"], id="not-json"),
        pytest.param(EVENT, 422, ["expected a JSON list of events"], id="not-a-list"),
        pytest.param(
            [EVENT, {**EVENT, "kind": ""}, {**EVENT, "time": "later"}, None],
            422,
            ["record 1: field kind", "record 2: field time", "record 3: expected an object"],
            id="bad-fields",
        ),
    ],
)
def test_bad_events_are_refused_and_nothing_stored(
    client: TestClient,
    record_store: Any,
    payload: Any,
    status: int,
    messages: list[str],
) -> None:
    if isinstance(payload, bytes):
        resp = client.post("/api/v1/records/events", content=payload)
    else:
        resp = client.post("/api/v1/records/events", json=payload)
    assert resp.status_code == status, resp.text
    for m in messages:
        assert m in resp.text
    assert "record 0" not in resp.text
    assert record_store.stored_events == []
