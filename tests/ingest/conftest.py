"""Fixtures for ingest tests: a fake RecordStore, the stores to run tables against, a test
client on the ingest router, store snapshots and a real prometheus_client /metrics server."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from fleetscope.ingest.receiver import make_router
from fleetscope.store import FakeMetricStore, FakeRecordStore, Matcher
from fleetscope.store.duckdb import DuckDBStore

with warnings.catch_warnings():
    # starlette warns that TestClient wants `httpx2` (not installed); httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


Snapshot = list[tuple[tuple[tuple[str, str], ...], list[int], list[int]]]


def _snapshot(store: Any) -> Snapshot:
    """Everything a metric store holds: label set, times and value bits of every series."""
    return [
        (tuple(sorted(s.labels.items())), s.t_ms.tolist(), s.values.view("int64").tolist())
        for s in store.select([Matcher("__name__", "=~", ".+")], -(2**62), 2**62)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def snapshot() -> Callable[[Any], Snapshot]:
    """Everything a metric store holds (compare before and after a refused request)."""
    return _snapshot


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
