"""Session fixtures of the PromQL conformance suite: one hour of fleet data, written once into an
embedded DuckDB store and, by remote-write, into a real Prometheus 2.42 (and, for the
VictoriaMetrics test, a real VictoriaMetrics 1.79), waited on until every sample is queryable.

Tests that use them are marked ``integration``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetscope.query import QueryError
from fleetscope.remotewrite import HEADERS, encode
from fleetscope.store.duckdb import DuckDBStore

from .fleetdata import FleetData, generate
from .harness import PrometheusHTTP, Querier, seconds

MINUTE_MS = 60_000
CHUNK_MS = 10 * MINUTE_MS  # remote-write request span: oldest first, as Prometheus needs
WAIT_S = 60.0
PROMETHEUS_CONFIG = "global:\n  evaluation_interval: 1m\n"  # no scrape jobs: only our data
# VictoriaMetrics as close to Prometheus' data model as it goes: a 5 m staleness interval (its
# lookback), data visible at once, no cache of range results
VM_FLAGS = (
    "-search.latencyOffset=0s",
    "-search.disableCache",
    "-search.minStalenessInterval=5m",
    "-search.maxStalenessInterval=5m",
)


@dataclass(frozen=True)
class Window:
    """Where the data is and when queries look at it (milliseconds since the epoch).

    ``instant_ms``: the times of instant queries: mid-window (unaligned, while gaps and an
    outage are open), while ``gpu-node-4`` is gone, at the last scrape cycle, four minutes
    after it (inside the lookback), and while one GPU reports NaN temperatures. Range queries
    run from two minutes after the start to two minutes past the end (so ``@ start()`` and
    ``@ end()`` find samples), see :attr:`ranges_ms`.
    """

    start_ms: int
    end_ms: int

    @property
    def mid_ms(self) -> int:
        return self.start_ms + 27 * MINUTE_MS + 7_500

    @property
    def down_ms(self) -> int:
        return self.start_ms + 44 * MINUTE_MS + 1_000

    @property
    def instant_ms(self) -> tuple[int, ...]:
        nan_ms = self.start_ms + 13 * MINUTE_MS + 10_000
        return (self.mid_ms, self.down_ms, self.end_ms, self.end_ms + 4 * MINUTE_MS, nan_ms)

    @property
    def ranges_ms(self) -> tuple[tuple[int, int, int], ...]:
        """``(start, end, step)`` of range queries: every minute on the minute, and every 45 s
        from an unaligned start (steps that fall between samples and subquery steps)."""
        first, last = self.start_ms + 2 * MINUTE_MS, self.end_ms + 2 * MINUTE_MS
        return ((first, last, MINUTE_MS), (first + 7_500, last, 45_000))

    def render(self, query: str) -> str:
        """``query`` with the corpus' time placeholders filled in (seconds)."""
        for name, t in (
            ("$start", self.start_ms),
            ("$mid", self.mid_ms),
            ("$down", self.down_ms),
            ("$end", self.end_ms),
        ):
            query = query.replace(name, seconds(t))
        return query


@dataclass
class Loaded:
    """The data, a DuckDB store holding it, and a reference Prometheus holding it too."""

    data: FleetData
    window: Window
    store: DuckDBStore
    prometheus: PrometheusHTTP


@pytest.fixture(scope="session")
def fleet() -> FleetData:
    """One hour of fleet data ending at the last whole minute at least 30 s ago."""
    now_ms = time.time_ns() // 1_000_000
    return generate((now_ms - 30_000) // MINUTE_MS * MINUTE_MS)


def _held(engine: Querier, name: str, at_ms: int) -> int:
    """Samples of metric ``name`` that ``engine`` holds in the two hours before ``at_ms``."""
    try:
        res = engine.instant(f"sum(count_over_time({name}[2h]))", at_ms)
    except QueryError:
        return -1
    return int(res.series[0].values[0]) if res.series else 0


def wait_for_samples(engine: Querier, fleet: FleetData, what: str, *, nan: bool = True) -> None:
    """Wait until ``engine`` answers with every sample of ``fleet`` (counted per metric; NaN
    samples left out unless ``nan``)."""
    deadline = time.monotonic() + WAIT_S
    want = fleet.samples_by_name(nan=nan)
    while True:
        have = {name: _held(engine, name, fleet.end_ms + MINUTE_MS) for name in want}
        if have == want:
            return
        if time.monotonic() > deadline:
            wrong = {n: f"{have[n]} of {want[n]}" for n in want if have[n] != want[n]}
            raise RuntimeError(f"{what} does not hold every sample written: {wrong}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def loaded(
    fleet: FleetData,
    tmp_path_factory: pytest.TempPathFactory,
    run_prometheus: Callable[..., AbstractContextManager[Any]],
) -> Iterator[Loaded]:
    """The fleet data in a DuckDB store and, remote-written, in a real Prometheus 2.42."""
    store = DuckDBStore(":memory:")
    store.append(fleet.batch)
    data_dir: Path = tmp_path_factory.mktemp("conformance-prometheus")
    with run_prometheus(data_dir, PROMETHEUS_CONFIG) as service, httpx.Client() as client:
        for chunk in fleet.chunks(CHUNK_MS):
            resp = client.post(
                service.url + "/api/v1/write", content=encode(chunk), headers=HEADERS
            )
            assert resp.status_code == 204, f"Prometheus refused a write: {resp.text}"
        reference = PrometheusHTTP(service.url)
        wait_for_samples(reference, fleet, "Prometheus")
        yield Loaded(fleet, Window(fleet.start_ms, fleet.end_ms), store, reference)
        reference.close()
    store.close()


@pytest.fixture(scope="session")
def victoria(
    fleet: FleetData,
    tmp_path_factory: pytest.TempPathFactory,
    run_victoria_metrics: Callable[..., AbstractContextManager[Any]],
) -> Iterator[str]:
    """The base URL of a real VictoriaMetrics 1.79 holding the fleet data."""
    data_dir: Path = tmp_path_factory.mktemp("conformance-victoria-metrics")
    with run_victoria_metrics(data_dir, *VM_FLAGS) as service:
        resp = httpx.post(
            service.url + "/api/v1/write", content=encode(fleet.batch), headers=HEADERS
        )
        assert resp.status_code == 204, f"VictoriaMetrics refused a write: {resp.text}"
        httpx.get(service.url + "/internal/force_flush")
        yield service.url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests here that use the loaded services are marked ``integration``."""
    here = Path(__file__).parent
    for item in items:
        uses = getattr(item, "fixturenames", ())
        if here in Path(str(item.fspath)).parents and {"loaded", "victoria"} & set(uses):
            item.add_marker(pytest.mark.integration)
