"""Node pages and the node JSON API over the web app's test fleet (conftest) plus a second node.

Node n1 holds the conftest's three GPUs (g0 busy on job v1 of team vision, g1 idle on l1 of llm
for the last hour, g2 free); this module adds a disk, mesh probes between n1 and n2, an XID
counter and an XID event on n1, and host metrics for n2 (a node without GPUs).
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleetscope.model import Event
from fleetscope.query import QueryError
from fleetscope.store import FakeMetricStore, FakeRecordStore, SampleBatch
from fleetscope.store.duckdb import DuckDBStore
from fleetscope.web.app import WebSettings, create_app

from .conftest import NOW_MS, TestClient
from .fakes import FakeEngine

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
MIN = 60_000
G1 = {"node": "n1", "gpu": "1", "gpu_uuid": "g1", "gpu_model": "NVIDIA H100 80GB HBM3"}


@pytest.fixture(autouse=True)
def more_nodes(store: DuckDBStore) -> None:
    rows: list[tuple[dict[str, str], int, float]] = []
    disk = {"node": "n1", "device": "nvme0n1"}
    for k in range(120):
        t = NOW_MS - 30_000 - k * MIN
        elapsed_s = (119 - k) * 60
        rows += [
            ({"__name__": "fleet_disk_read_bytes_total", **disk}, t, 2e6 * elapsed_s),
            ({"__name__": "fleet_mesh_rtt_seconds", "src": "n1", "dst": "n2"}, t, 0.00025),
            ({"__name__": "fleet_mesh_rtt_seconds", "src": "n2", "dst": "n1"}, t, 0.0031),
            ({"__name__": "fleet_mesh_probe_loss_ratio", "src": "n2", "dst": "n1"}, t, 0.2),
            ({"__name__": "fleet_node_load1", "node": "n2"}, t, 3.0),
            ({"__name__": "fleet_gpu_xid_errors_total", **G1, "xid": "79", "action": "reset"},
             t, 0.0 if k > 10 else 1.0),
        ]  # fmt: skip
    store.append(SampleBatch.from_rows(rows))
    event_time = datetime.fromtimestamp((NOW_MS - 5 * MIN) / 1000, UTC)
    attrs = {"node": "n1", "gpu": "1", "gpu_uuid": "g1", "xid": 79, "job": "l1", "team": "llm",
             "user": "li", "message": "GPU has fallen off the bus"}  # fmt: skip
    store.add_events([Event(time=event_time, kind="xid", subject="n1", attrs=attrs)])


def test_the_node_list_links_every_node(authed: TestClient) -> None:
    r = authed.get("/nodes?window=6h", headers=HTML)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'href="/nodes/n1?window=6h"' in r.text and 'href="/nodes/n2?window=6h"' in r.text
    assert "3 / 3" in r.text  # n1: GPUs up / known
    assert "30%" in r.text  # n1: mean of 0.9, 0.01, 0.0 → 30 %
    assert "llm, vision" in r.text
    assert "count by (node) (fleet_gpu_up == 1)" in html.unescape(r.text)


def test_the_node_page_shows_gpus_jobs_disks_mesh_and_xids(authed: TestClient) -> None:
    r = authed.get("/nodes/n1?window=1h&refresh=30s", headers=HTML)
    assert r.status_code == 200
    text = html.unescape(r.text)
    assert 'id="gpu-table"' in text and 'id="mesh-matrix"' in text
    gpu_table = text[text.index('id="gpu-table"') : text.index("</table>", text.index("gpu-table"))]
    for word in ("v1", "vision", "ana", "l1", "llm", "li", "unallocated", "90%"):
        assert word in gpu_table, word
    assert "nvme0n1" in text and "2.0 MB/s" in text  # rate(read bytes) = 2e6 B/s
    assert "250 µs" in text and "3.1 ms" in text and "20% loss" in text
    assert "GPU has fallen off the bus" in text
    assert 'rate(fleet_disk_read_bytes_total{node="n1"}[5m])' in text
    assert 'fleet_mesh_rtt_seconds{src="n1"} or fleet_mesh_rtt_seconds{dst="n1"}' in text
    assert 'increase(fleet_gpu_xid_errors_total{node="n1"}[1h])' in text
    assert '<meta http-equiv="refresh" content="30">' in r.text
    assert 'href="/nodes/n1?window=6h&amp;refresh=30s"' in r.text  # the picker keeps the state


def test_an_unknown_node_is_a_404_page_and_404_json(authed: TestClient) -> None:
    r = authed.get("/nodes/n9", headers=HTML)
    assert r.status_code == 404 and "No node named “n9”" in r.text
    assert 'href="/nodes"' in r.text
    r = authed.get("/api/v1/fleet/nodes/n9")
    assert r.status_code == 404 and "n9" in r.json()["detail"]


@pytest.mark.parametrize(
    "path",
    ["/nodes", "/nodes/n1", "/api/v1/fleet/nodes", "/api/v1/fleet/nodes/n1"],
)
def test_node_views_need_the_token(client: TestClient, path: str) -> None:
    assert client.get(path, headers={"Accept": "*/*"}).status_code == 401
    assert client.get(path, headers=HTML).status_code == 401


def test_the_nodes_api(authed: TestClient) -> None:
    body = authed.get("/api/v1/fleet/nodes").json()
    n1, n2 = body["nodes"]
    assert (n1["node"], n1["gpus"], n1["gpus_up"], n1["gpus_allocated"]) == ("n1", 3, 3, 2)
    assert n1["utilization"] == pytest.approx(0.91 / 3)
    assert [(j["job"], j["team"], j["user"], j["gpus"]) for j in n1["jobs"]] == [
        ("l1", "llm", "li", 1), ("v1", "vision", "ana", 1),
    ]  # fmt: skip
    assert (n2["node"], n2["gpus"], n2["load1"]) == ("n2", 0, 3.0)
    assert "fleet_gpu_allocation" in body["promql"]


def test_the_node_api(authed: TestClient) -> None:
    body = authed.get("/api/v1/fleet/nodes/n1?window=1h").json()
    assert body["node"] == "n1" and body["window"] == "1h"
    g0 = body["gpus"]["rows"][0]
    assert (g0["uuid"], g0["up"], g0["utilization"]) == ("g0", True, 0.9)
    assert g0["allocations"] == [
        {"job": "v1", "team": "vision", "user": "ana", "workload": "training",
         "tier": "production"}
    ]  # fmt: skip
    assert body["disks"]["rows"][0]["read_bytes_per_s"] == pytest.approx(2e6)
    assert body["mesh"]["rtt_seconds"] == {"n1": {"n2": 0.00025}, "n2": {"n1": 0.0031}}
    # one XID; increase() extrapolates to the window's end, 30 s past the newest sample
    assert body["xids"]["rows"] == [
        {"gpu": "1", "gpu_uuid": "g1", "xid": "79", "action": "reset",
         "count": pytest.approx(1 * (3540 + 30) / 3540)}
    ]  # fmt: skip
    assert [(e["xid"], e["job"], e["team"]) for e in body["xid_events"]] == [("79", "l1", "llm")]


@pytest.mark.parametrize(
    "path", ["/nodes?window=nope", "/nodes/n1?refresh=5s", "/api/v1/fleet/nodes/n1?window=0s"]
)
def test_bad_view_parameters_are_400(authed: TestClient, path: str) -> None:
    assert authed.get(path, headers=HTML).status_code == 400


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[TestClient]:
    """A server whose query backend is down."""
    down = QueryError("unavailable", "connection refused")
    engine = FakeEngine(instant_results={})
    engine.instant = lambda query, t_ms: (_ for _ in ()).throw(down)  # type: ignore[method-assign]
    settings = WebSettings(data_dir=tmp_path / "data", clock=lambda: NOW_MS / 1000)
    app = create_app(settings, FakeMetricStore(), FakeRecordStore(), engine)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {app.state.admin_token.value}"
        yield c


def test_a_backend_that_is_down_is_503(broken: TestClient) -> None:
    r = broken.get("/api/v1/fleet/nodes")
    assert r.status_code == 503 and "connection refused" in r.json()["detail"]
    assert broken.get("/api/v1/fleet/nodes/n1").status_code == 503
    page = broken.get("/nodes/n1", headers=HTML)
    assert page.status_code == 503 and "connection refused" in page.text
