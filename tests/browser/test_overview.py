"""The overview in Debian's Chromium (Playwright): log in, load, charts hold data, tables fill.

A real uvicorn server runs in a thread on a free loopback port over a DuckDB store holding a
small deterministic fleet written through the store ports.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from fleetscope.model import Job, JobState
from fleetscope.store import SampleBatch
from fleetscope.store.duckdb import DuckDBStore
from fleetscope.web.auth import login_url

pytestmark = pytest.mark.browser

CHARTS = [
    "chart-utilization", "chart-states", "chart-team-hours", "chart-team-hours-time",
    "chart-quota",
]  # fmt: skip
TEAMS = ("vision", "llm", "speech")
SCREENSHOT = Path("/tmp/overview.png")


def fill(store: DuckDBStore, now_ms: int) -> None:
    """Eight GPUs over the last six hours at one-minute samples; jobs running and pending."""
    minute = 60_000
    newest = now_ms - now_ms % minute
    rows: list[tuple[dict[str, str], int, float]] = []
    for g in range(8):
        gpu = {"node": f"node-{g // 4}", "gpu": str(g % 4), "gpu_uuid": f"GPU-{g:04d}",
               "gpu_model": "NVIDIA H100 80GB HBM3"}  # fmt: skip
        team = TEAMS[g % 3]
        for k in range(360):
            t = newest - k * minute
            lost = g == 7 and k < 20  # GPU 7 has been lost for 20 minutes
            rows.append(({"__name__": "fleet_gpu_up", **gpu}, t, 0.0 if lost else 1.0))
            held = g < 6 and (k + 40 * g) % 300 < 240  # jobs come and go
            util = (0.3 + 0.6 * ((k * (g + 3)) % 17) / 17) if held and g != 5 else 0.01
            if not lost:
                rows.append(({"__name__": "fleet_gpu_utilization_ratio", **gpu}, t, util))
            if held:
                labels = {"__name__": "fleet_gpu_allocation", **gpu, "job": f"{team}-{g}",
                          "team": team, "user": f"user{g}", "workload": "training",
                          "tier": "production"}  # fmt: skip
                rows.append((labels, t, 1.0))
        if g < 3:
            quota = {"__name__": "fleet_sched_quota_gpus", "cluster": "sim", "team": TEAMS[g]}
            rows += [(quota, newest - k * minute, 2.0) for k in range(360)]
    store.append(SampleBatch.from_rows(rows))
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    jobs = [
        Job(id=f"{TEAMS[g % 3]}-{g}", cluster="sim", team=TEAMS[g % 3], user=f"user{g}",
            state=JobState.RUNNING, submit=now - timedelta(hours=7), gpus=1,
            start=now - timedelta(minutes=30 + 37 * g), workload="training")
        for g in range(6)
    ] + [
        Job(id=f"pend-{i}", cluster="sim", team=TEAMS[i % 3], user=f"user{i}",
            state=JobState.PENDING, submit=now - timedelta(minutes=5 + 11 * i), gpus=2 ** i,
            pending_reason="Resources", workload="fine_tuning")
        for i in range(4)
    ]  # fmt: skip
    store.upsert_jobs(jobs)


def test_overview_charts_hold_data_after_login(server: tuple[str, str], page: Page) -> None:
    base, token = server
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )

    page.goto(login_url(base, token))
    assert page.url == f"{base}/"
    page.wait_for_function(
        "n => document.querySelectorAll('.js-plotly-plot').length === n", arg=len(CHARTS)
    )
    for chart in CHARTS:
        sizes = page.evaluate(
            "id => document.getElementById(id).data.map(t => [t.x.length, t.y.length])", chart
        )
        assert sizes and all(x > 0 and y > 0 for x, y in sizes), (chart, sizes)
    running = page.locator("#running tbody tr")
    assert running.count() == 6
    assert page.locator("#pending tbody tr").count() == 4
    assert page.locator(".question").count() == 5
    assert page.locator(".question.pending").count() == 3
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert problems == []


def test_time_range_picker_and_refresh_live_in_the_url(server: tuple[str, str], page: Page) -> None:
    base, token = server
    page.goto(login_url(base, token))
    page.get_by_role("link", name="6h", exact=True).click()
    page.wait_for_url(f"{base}/?window=6h")
    page.get_by_role("link", name="30s", exact=True).click()
    page.wait_for_url(f"{base}/?window=6h&refresh=30s")
    assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "30"
    assert page.locator(".seg a.on").all_inner_texts() == ["6h", "30s"]


def test_copy_query_puts_the_promql_on_the_clipboard(server: tuple[str, str], page: Page) -> None:
    base, token = server
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.goto(login_url(base, token))
    button = page.locator("#chart-utilization").locator("xpath=..").locator("button.copy")
    button.click()
    expect(button).to_have_text("copied")  # once the clipboard's promise has resolved
    assert page.evaluate("navigator.clipboard.readText()") == "avg(fleet_gpu_utilization_ratio)"


def test_without_token_the_browser_sees_how_to_log_in(server: tuple[str, str], page: Page) -> None:
    base, token = server
    response = page.goto(f"{base}/?window=7d")
    assert response is not None and response.status == 401
    assert "admin.token" in page.inner_text("body")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/?window=7d")
    assert page.locator(".question").count() == 5
