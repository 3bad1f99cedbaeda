"""Fixtures that start real services for integration tests (DESIGN.md "Real components").

Each service runs as a subprocess on a free loopback port with its data in the test's tmp dir,
is waited on until it answers its readiness endpoint, and is terminated at teardown (its log is
printed when it fails to start). Reusable fixtures:

- ``victoria_metrics``: a VictoriaMetrics single node (``Service``).
- ``prometheus``: a factory ``prometheus(config_yaml) -> Service`` for Prometheus with the
  remote-write receiver enabled; several may run in one test.
- ``asgi_server``: a factory ``asgi_server(app) -> base URL`` serving an ASGI app with uvicorn
  in a thread (for example a router under test, as a remote-write target for Prometheus).
- ``metrics_endpoint``: a factory ``metrics_endpoint(registry) -> URL of /metrics`` serving a
  prometheus_client registry (a scrape target).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

VICTORIA_METRICS = "/usr/bin/victoria-metrics"
PROMETHEUS = "/usr/bin/prometheus"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A started service: its base URL, process, data directory and log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_ready(service: Service, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            break
        try:
            if httpx.get(service.url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    _stop(service)
    raise RuntimeError(f"{service.name} did not become ready:\n{service.log()[-4000:]}")


def _stop(service: Service) -> None:
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(5)


@contextmanager
def run_service(
    name: str, argv: list[str], data_dir: Path, port: int, ready_path: str
) -> Iterator[Service]:
    """Start ``argv`` (listening on ``port``), wait for ``ready_path``, stop it afterwards."""
    if not shutil.which(argv[0]):
        raise RuntimeError(f"{argv[0]} is missing: install the Debian package (see DESIGN.md)")
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir)
    service = Service(name, f"http://127.0.0.1:{port}", proc, data_dir, log_path)
    try:
        _wait_ready(service, ready_path)
        yield service
    finally:
        _stop(service)


@contextmanager
def start_victoria_metrics(data_dir: Path, *extra_args: str) -> Iterator[Service]:
    """VictoriaMetrics single node on a free port (``-storageDataPath`` under ``data_dir``)."""
    port = free_port()
    argv = [
        VICTORIA_METRICS,
        f"-storageDataPath={data_dir / 'storage'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-loggerLevel=WARN",
        *extra_args,
    ]
    with run_service("victoria-metrics", argv, data_dir, port, "/health") as service:
        yield service


@contextmanager
def start_prometheus(data_dir: Path, config_yaml: str, *extra_args: str) -> Iterator[Service]:
    """Prometheus with ``config_yaml``, a tmp TSDB and the remote-write receiver enabled."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "prometheus.yml"
    config.write_text(config_yaml)
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-remote-write-receiver",
        "--log.level=warn",
        *extra_args,
    ]
    with run_service("prometheus", argv, data_dir, port, "/-/ready") as service:
        yield service


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free port; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[Service]:
    """A running VictoriaMetrics single node, stopped after the test."""
    with start_victoria_metrics(tmp_path / "vm") as service:
        yield service


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], Service]]:
    """Factory: ``prometheus(config_yaml)`` starts a Prometheus, stopped after the test."""
    with ExitStack() as stack:
        count = iter(range(1_000))

        def start(config_yaml: str, *extra_args: str) -> Service:
            data_dir = tmp_path / f"prometheus-{next(count)}"
            return stack.enter_context(start_prometheus(data_dir, config_yaml, *extra_args))

        yield start


@pytest.fixture
def asgi_server() -> Iterator[Callable[[Any], str]]:
    """Factory: ``asgi_server(app)`` serves an ASGI app, stopped after the test."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_asgi(app))


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
