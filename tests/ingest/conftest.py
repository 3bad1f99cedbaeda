"""Fixtures for ingest tests: a fake RecordStore, the stores to run tables against, a test
client on the ingest router, store snapshots and a real prometheus_client /metrics server."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, start_http_server

from fleetscope.ingest.receiver import make_router
from fleetscope.model import Event, Job
from fleetscope.store import FakeMetricStore, Matcher
from fleetscope.store.duckdb import DuckDBStore

with warnings.catch_warnings():
    # starlette warns that TestClient wants `httpx2` (not installed); httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@dataclass
class FakeRecordStore:
    """In-memory RecordStore: jobs keyed by (cluster, id), events appended."""

    stored: dict[tuple[str, str], Job] = field(default_factory=dict)
    stored_events: list[Event] = field(default_factory=list)

    def upsert_jobs(self, jobs: Sequence[Job]) -> int:
        latest = {(j.cluster, j.id): j for j in jobs}
        self.stored.update(latest)
        return len(latest)

    def jobs(
        self,
        *,
        states: Sequence[str] = (),
        team: str | None = None,
        active_between: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        out = [
            j
            for j in self.stored.values()
            if (not states or j.state in states) and (team is None or j.team == team)
        ]
        out.sort(key=lambda j: j.submit, reverse=True)
        return out[:limit] if limit is not None else out

    def job(self, job_id: str, cluster: str = "default") -> Job | None:
        return self.stored.get((cluster, job_id))

    def add_events(self, events: Sequence[Event]) -> int:
        self.stored_events.extend(events)
        return len(events)

    def events(
        self, *, kinds: Sequence[str] = (), since_ms: int | None = None, limit: int | None = None
    ) -> list[Event]:
        return [e for e in self.stored_events if not kinds or e.kind in kinds][:limit]

    def close(self) -> None:
        return None


Snapshot = list[tuple[tuple[tuple[str, str], ...], list[int], list[int]]]


def _snapshot(store: Any) -> Snapshot:
    """Everything a metric store holds: label set, times and value bits of every series."""
    return [
        (tuple(sorted(s.labels.items())), s.t_ms.tolist(), s.values.view("int64").tolist())
        for s in store.select([Matcher("__name__", "=~", ".+")], -(2**62), 2**62)
    ]


@contextmanager
def _serve_registry(registry: CollectorRegistry) -> Iterator[str]:
    """Serve a prometheus_client registry over HTTP on a free loopback port; yields its URL."""
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/metrics"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def snapshot() -> Callable[[Any], Snapshot]:
    """Everything a metric store holds (compare before and after a refused request)."""
    return _snapshot


@pytest.fixture
def serve_registry() -> Callable[[CollectorRegistry], AbstractContextManager[str]]:
    """Serve a registry on a free loopback port: ``with serve_registry(reg) as url: …``."""
    return _serve_registry


@pytest.fixture
def free_port() -> int:
    """A loopback port that nothing listens on."""
    return _free_port()


@pytest.fixture(params=["fake", "duckdb"])
def metric_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Each test runs against the in-memory fake and the real DuckDB store."""
    store: Any = FakeMetricStore() if request.param == "fake" else DuckDBStore(":memory:")
    yield store
    store.close()


@pytest.fixture
def record_store() -> FakeRecordStore:
    return FakeRecordStore()


@pytest.fixture
def client(metric_store: Any, record_store: FakeRecordStore) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(make_router(metric_store, record_store))
    with TestClient(app) as c:
        yield c
