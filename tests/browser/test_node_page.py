"""The node pages in Debian's Chromium (Playwright): the node list links to a node whose page
shows its GPU table, the utilization chart and the mesh RTT matrix.

A real uvicorn server runs in a thread on a free loopback port over a DuckDB store holding three
nodes (four GPUs each, mesh probes between all of them) written through the store ports.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page

from fleetscope.store import SampleBatch
from fleetscope.store.duckdb import DuckDBStore
from fleetscope.web.auth import login_url

pytestmark = pytest.mark.browser

NODES = ("node-0", "node-1", "node-2")
SCREENSHOT = Path("/tmp/node-page.png")


def fill(store: DuckDBStore, now_ms: int) -> None:
    """Three nodes, four GPUs each, one hour at one-minute samples; node-0's GPUs 0–1 run a job."""
    minute = 60_000
    newest = now_ms - now_ms % minute
    rows: list[tuple[dict[str, str], int, float]] = []
    for k in range(60):
        t = newest - k * minute
        for n, node in enumerate(NODES):
            rows.append(({"__name__": "fleet_node_load1", "node": node}, t, 4.0 + n))
            for dst_n, dst in enumerate(NODES):
                if dst != node:
                    rtt = 0.0001 * (1 + n + dst_n)
                    rows.append(({"__name__": "fleet_mesh_rtt_seconds", "src": node,
                                  "dst": dst}, t, rtt))  # fmt: skip
            for g in range(4):
                gpu = {"node": node, "gpu": str(g), "gpu_uuid": f"GPU-{n}{g}",
                       "gpu_model": "NVIDIA H100 80GB HBM3"}  # fmt: skip
                rows.append(({"__name__": "fleet_gpu_up", **gpu}, t, 1.0))
                rows.append(({"__name__": "fleet_gpu_utilization_ratio", **gpu}, t,
                              0.2 * g + 0.01 * (k % 5)))  # fmt: skip
                if n == 0 and g < 2:
                    rows.append(({"__name__": "fleet_gpu_allocation", **gpu, "job": "train-1",
                                  "team": "vision", "user": "ana", "workload": "training",
                                  "tier": "production"}, t, 1.0))  # fmt: skip
                    rows.append(({"__name__": "fleet_gpu_process_memory_bytes", **gpu,
                                  "pid": str(4000 + g), "job": "train-1", "user": "ana"},
                                 t, 30e9))  # fmt: skip
    store.append(SampleBatch.from_rows(rows))


def test_node_page_shows_the_gpu_table_and_the_mesh_matrix(
    server: tuple[str, str], page: Page
) -> None:
    base, token = server
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )

    page.goto(f"{login_url(base, token)}&{urlencode({'next': '/nodes?window=1h'})}")
    assert page.url == f"{base}/nodes?window=1h"
    assert page.locator("#node-table tbody tr").count() == 3
    page.get_by_role("link", name="node-0", exact=True).click()
    page.wait_for_url(f"{base}/nodes/node-0?window=1h")

    gpu_rows = page.locator("#gpu-table tr.gpurow")
    assert gpu_rows.count() == 4
    assert "train-1" in gpu_rows.nth(0).inner_text() and "vision" in gpu_rows.nth(0).inner_text()
    assert page.locator("#gpu-table tr.proc").count() == 2  # the job's two processes

    matrix = page.locator("#mesh-matrix")
    assert matrix.locator("thead th").all_inner_texts() == ["from \\ to", *NODES]
    assert matrix.locator("tbody tr").count() == 3
    # node-0 → node-2: 0.0001 × (1 + 0 + 2) s
    assert matrix.locator("tbody tr").nth(0).locator("td").nth(2).inner_text() == "300 µs"

    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length === 1")
    traces = page.evaluate("document.getElementById('chart-node-utilization').data.length")
    assert traces == 4
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert problems == []
