"""Chromium through Playwright for the page tests (DESIGN.md: Debian's ``chromium``, never
``playwright install``): one browser per module, a fresh context per test; and ``server``, a
real server over a DuckDB store that the test module's ``fill(store, now_ms)`` writes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from fleetscope.store.duckdb import DuckDBStore
from fleetscope.web.app import WebSettings, create_app

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(30_000)
    yield p
    context.close()


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    serve_app: Callable[[Any], AbstractContextManager[str]],
) -> Iterator[tuple[str, str]]:
    """A running server: (base URL, admin token)."""
    store = DuckDBStore(":memory:")
    request.module.fill(store, int(time.time() * 1000))
    settings = WebSettings(data_dir=tmp_path_factory.mktemp("data"))
    app = create_app(settings, store, store)
    with serve_app(app) as url:
        yield url, app.state.admin_token.value
    store.close()
