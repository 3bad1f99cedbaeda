"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from prometheus_client import CollectorRegistry, start_http_server


@contextmanager
def _serve_registry(registry: CollectorRegistry) -> Iterator[str]:
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/metrics"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def serve_registry() -> Callable[[CollectorRegistry], AbstractContextManager[str]]:
    """Serve a prometheus_client registry on a free loopback port (a real scrape target):
    ``with serve_registry(registry) as url: …`` where ``url`` ends in ``/metrics``."""
    return _serve_registry
