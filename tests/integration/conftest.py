"""Fixtures that start real services for integration tests (DESIGN.md "Real components").

Each service runs as a subprocess on a free loopback port with its data in the test's tmp dir,
is waited on until it answers its readiness endpoint, and is terminated at teardown (its log is
printed when it fails to start). The starters live in tests/conftest.py (``run_prometheus``,
``run_victoria_metrics``), shared with tests/conformance. Reusable fixtures:

- ``victoria_metrics``: a VictoriaMetrics single node (``Service``).
- ``prometheus``: a factory ``prometheus(config_yaml) -> Service`` for Prometheus with the
  remote-write receiver enabled; several may run in one test.
- ``asgi_server``: a factory ``asgi_server(app) -> base URL`` serving an ASGI app with uvicorn
  in a thread (for example a router under test, as a remote-write target for Prometheus).
- ``metrics_endpoint``: a factory ``metrics_endpoint(registry) -> URL of /metrics`` serving a
  prometheus_client registry (a scrape target).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry


@pytest.fixture
def victoria_metrics(
    tmp_path: Path, run_victoria_metrics: Callable[..., AbstractContextManager[Any]]
) -> Iterator[Any]:
    """A running VictoriaMetrics single node (a ``Service``), stopped after the test."""
    with run_victoria_metrics(tmp_path / "vm") as service:
        yield service


@pytest.fixture
def prometheus(
    tmp_path: Path, run_prometheus: Callable[..., AbstractContextManager[Any]]
) -> Iterator[Callable[..., Any]]:
    """Factory: ``prometheus(config_yaml)`` starts a Prometheus, stopped after the test."""
    with ExitStack() as stack:
        count = iter(range(1_000))

        def start(config_yaml: str, *extra_args: str) -> Any:
            data_dir = tmp_path / f"prometheus-{next(count)}"
            return stack.enter_context(run_prometheus(data_dir, config_yaml, *extra_args))

        yield start


@pytest.fixture
def asgi_server(
    serve_app: Callable[[Any], AbstractContextManager[str]],
) -> Iterator[Callable[[Any], str]]:
    """Factory: ``asgi_server(app)`` serves an ASGI app, stopped after the test."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_app(app))


@pytest.fixture
def metrics_endpoint(
    serve_registry: Callable[[CollectorRegistry], AbstractContextManager[str]],
) -> Iterator[Callable[[CollectorRegistry], str]]:
    """Factory: ``metrics_endpoint(registry)`` serves it and returns the /metrics URL."""
    with ExitStack() as stack:
        yield lambda registry: stack.enter_context(serve_registry(registry))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration uses real services: mark it ``integration``."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
