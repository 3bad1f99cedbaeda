"""Fixtures shared by every test folder.

- ``serve_registry``: serve a prometheus_client registry (a real scrape target).
- ``serve_handler``: serve an ``http.server`` request handler class (a real HTTP server).
- ``run_prometheus`` / ``run_victoria_metrics``: context managers that start a real Prometheus
  2.42 (remote-write receiver on) or VictoriaMetrics 1.79 on a free loopback port with its data
  in a given directory, wait until it is ready, and stop it on exit (DESIGN.md "Real
  components"). Session-scoped so session fixtures (tests/conformance) can use them too;
  tests/integration wraps them in per-test fixtures.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, start_http_server

VICTORIA_METRICS = "/usr/bin/victoria-metrics"
PROMETHEUS = "/usr/bin/prometheus"
START_TIMEOUT_S = 60.0


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


@contextmanager
def _serve_handler(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def serve_handler() -> Callable[[type[BaseHTTPRequestHandler]], AbstractContextManager[str]]:
    """Serve a request handler class on a free loopback port (threaded):
    ``with serve_handler(Handler) as base: …`` where ``base`` is ``http://127.0.0.1:PORT``."""
    return _serve_handler


# ------------------------------------------------------------------ real services


ASGI_START_TIMEOUT_S = 60.0


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


@pytest.fixture(scope="session")
def run_prometheus() -> Callable[..., AbstractContextManager[Service]]:
    """``with run_prometheus(data_dir, config_yaml, *extra_args) as service: …``"""
    return start_prometheus


@pytest.fixture(scope="session")
def run_victoria_metrics() -> Callable[..., AbstractContextManager[Service]]:
    """``with run_victoria_metrics(data_dir, *extra_args) as service: …``"""
    return start_victoria_metrics


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free port; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + ASGI_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="session")
def serve_app() -> Callable[[Any], AbstractContextManager[str]]:
    """``serve_app(app)``: a context manager serving an ASGI app (uvicorn, in a thread, on a
    free loopback port); yields its base URL. Session-scoped, so module fixtures can use it."""
    return serve_asgi
