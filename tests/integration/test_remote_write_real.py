"""Remote-write wire compatibility with real Prometheus 2.42 and VictoriaMetrics 1.79.

(a) What our encoder writes, VictoriaMetrics stores: the samples come back from its export API.
(b) What real Prometheus sends (scraping a prometheus_client endpoint and remote-writing to our
    router), our decoder accepts: the samples land in a DuckDB store, equal to what Prometheus
    itself stored, zeros (which Prometheus leaves out of the wire) and stale markers included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Gauge

from fleetscope.ingest.receiver import make_router
from fleetscope.remotewrite import HEADERS, encode
from fleetscope.store import Matcher, SampleBatch
from fleetscope.store.duckdb import DuckDBStore

STALE_NAN_BITS = 0x7FF0000000000002


def test_victoria_metrics_stores_what_we_encode(victoria_metrics: Any) -> None:
    t0 = (int(time.time()) - 600) * 1000
    rows = [
        (
            {
                "__name__": "fleet_gpu_power_watts",
                "node": "n1",
                "gpu": str(g),
                "gpu_uuid": f"GPU-{g:04d}",
                "gpu_model": "NVIDIA H100 80GB HBM3",
            },
            t0 + 15_000 * k,
            float(g * 100 + k) + 0.5 if k % 3 else 0.0,
        )
        for g in range(8)
        for k in range(20)
    ]
    rows.append(({"__name__": "fleet_gpu_up", "node": "nœud-ü"}, t0, 1.0))
    resp = httpx.post(
        victoria_metrics.url + "/api/v1/write",
        content=encode(SampleBatch.from_rows(rows)),
        headers=HEADERS,
    )
    assert resp.status_code == 204, resp.text
    httpx.get(victoria_metrics.url + "/internal/force_flush")

    expected: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    for labels, t, v in rows:
        expected.setdefault(tuple(sorted(labels.items())), []).append((t, v))
    got: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        export = httpx.get(
            victoria_metrics.url + "/api/v1/export",
            params={"match[]": '{__name__=~"fleet_.*"}', "start": str(t0 // 1000 - 60)},
        )
        assert export.status_code == 200, export.text
        got = {}
        for line in export.text.splitlines():
            item = json.loads(line)
            key = tuple(sorted(item["metric"].items()))
            got[key] = list(zip(item["timestamps"], item["values"], strict=True))
        if got == expected:
            break
        time.sleep(0.3)
    assert got == expected


def test_prometheus_remote_writes_into_our_receiver(
    prometheus: Callable[..., Any],
    asgi_server: Callable[[Any], str],
    metrics_endpoint: Callable[[CollectorRegistry], str],
) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("fleet_gpu_utilization_ratio", "util", ["gpu"], registry=registry)
    gauge.labels(gpu="0").set(0.75)
    gauge.labels(gpu="1").set(0.0)  # Prometheus leaves a zero value out of the wire format
    gauge.labels(gpu="2").set(0.5)
    target = metrics_endpoint(registry).removeprefix("http://").removesuffix("/metrics")

    store = DuckDBStore(":memory:")
    app = FastAPI()
    app.include_router(make_router(store, store))
    receiver = asgi_server(app)
    config = f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gpus
    static_configs:
      - targets: ["{target}"]
remote_write:
  - url: {receiver}/api/v1/write
    queue_config:
      batch_send_deadline: 500ms
      max_samples_per_send: 50
      min_backoff: 50ms
      max_backoff: 500ms
    metadata_config:
      send_interval: 2s
"""
    prom = prometheus(config)

    def ours(gpu: str) -> Any:
        found = store.select(
            [Matcher.equal("__name__", "fleet_gpu_utilization_ratio"), Matcher.equal("gpu", gpu)],
            0,
            2**62,
        )
        return found[0] if found else None

    def wait_for(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{prom.log()[-3000:]}")

    wait_for(lambda: all(ours(g) is not None and len(ours(g).t_ms) >= 3 for g in "012"), "data")
    s0 = ours("0")
    assert s0.labels == {
        "__name__": "fleet_gpu_utilization_ratio",
        "gpu": "0",
        "job": "gpus",
        "instance": target,
    }
    assert set(s0.values.tolist()) == {0.75}
    assert set(ours("1").values.tolist()) == {0.0}
    up = store.select([Matcher.equal("__name__", "up"), Matcher.equal("job", "gpus")], 0, 2**62)
    assert up and set(up[0].values.tolist()) == {1.0}

    # the samples we hold are the ones Prometheus holds, same times and values
    last_ms = int(s0.t_ms[-1])
    resp = httpx.get(
        prom.url + "/api/v1/query",
        params={"query": 'fleet_gpu_utilization_ratio{gpu="0"}[10m]', "time": last_ms / 1000},
    )
    (series,) = resp.json()["data"]["result"]
    theirs = [(round(float(t) * 1000), float(v)) for t, v in series["values"]]
    assert list(zip(s0.t_ms.tolist(), s0.values.tolist(), strict=True)) == theirs

    # a series that vanishes from the target gets Prometheus' stale marker, bit for bit
    gauge.remove("2")

    def stale() -> bool:
        bits = ours("2").values.view(np.int64)
        return bool(bits[-1] == STALE_NAN_BITS)

    wait_for(stale, "the stale marker of gpu 2")
    store.close()
