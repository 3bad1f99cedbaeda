"""`fleetscope server` with a Prometheus-compatible backend: PromQL goes to the real backend."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from fleetscope import remotewrite
from fleetscope.store import SampleBatch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_sends_promql_to_the_configured_prometheus(
    tmp_path: Path, prometheus: Callable[..., Any]
) -> None:
    backend = prometheus("global:\n  scrape_interval: 1s\nscrape_configs: []\n")
    now_ms = int(time.time() * 1000)
    only_there = {"__name__": "fleet_gpu_up", "node": "only-in-the-backend"}
    body = remotewrite.encode(SampleBatch.from_rows([(only_there, now_ms - 1000, 1.0)]))
    sent = httpx.post(f"{backend.url}/api/v1/write", content=body, headers=remotewrite.HEADERS)
    assert sent.status_code == 204, sent.text
    config = tmp_path / "fleetscope.toml"
    config.write_text(f'[metrics]\nbackend = "prometheus"\nurl = "{backend.url}"\n')
    port, log = _free_port(), tmp_path / "server.log"
    args = [sys.executable, "-m", "fleetscope.cli", "server", "--config", str(config),
            "--data", str(tmp_path / "data"), "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        # the series was written only into the backend, never into Fleetscope's own store
        ours = httpx.get(f"{base}/api/v1/query", params={"query": "fleet_gpu_up"},
                         headers=auth, timeout=30).json()  # fmt: skip
        assert ours["status"] == "success"
        assert [r["metric"] for r in ours["data"]["result"]] == [only_there]
        bad = httpx.get(f"{base}/api/v1/query", params={"query": "sum(("}, headers=auth)
        assert bad.status_code == 400 and bad.json()["errorType"] == "bad_data"
        assert "PromQL backend: " + backend.url in log.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
