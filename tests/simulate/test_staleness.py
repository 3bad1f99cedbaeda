"""Staleness markers: the live agents and the backfill write the same ones, and joins need them.

The live side is the production path end to end: the simulator drives fake NVML devices and
fake root trees, the real collectors read them inside real :class:`~fleetscope.agent.Agent`\\ s
(:class:`~fleetscope.simulate.live.LiveFleet`), which remote-write to a real HTTP endpoint that
decodes the bodies into a DuckDB store. Queries go through the embedded evaluator.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import numpy as np
import pytest

from fleetscope import remotewrite
from fleetscope.query import QueryError
from fleetscope.query.engine import Evaluator
from fleetscope.query.value import stale_mask
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.live import LiveFleet
from fleetscope.simulate.sim import Simulation
from fleetscope.store import METRIC_NAME, Matcher, SampleBatch
from fleetscope.store.duckdb import DuckDBStore

from .capture import Capture

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
SPEC = FleetSpec(gpus=16, seed=8, node_failures_per_day=12)  # jobs change, a node fails
JOIN = "fleet_gpu_utilization_ratio * on(gpu_uuid) group_left(team, job) fleet_gpu_allocation"
Key = tuple[str, tuple[tuple[str, str], ...]]


class Endpoint(ThreadingHTTPServer):
    """A real remote-write endpoint that decodes every body into ``store``."""

    def __init__(self, store: DuckDBStore) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = store

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1/write"


class _Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.store.append(remotewrite.decode(body))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


def key(labels: dict[str, str]) -> Key:
    return labels[METRIC_NAME], tuple(sorted((k, v) for k, v in labels.items() if k != METRIC_NAME))


def samples(batches: list[SampleBatch], lo: int, hi: int) -> dict[tuple[Key, int], float | None]:
    """GPU and scheduler samples in ``[lo, hi)``: (series, time) → value (a marker: ``None``)."""
    out: dict[tuple[Key, int], float | None] = {}
    for b in batches:
        stale = stale_mask(b.values)
        for i, t, v, s in zip(b.series_index, b.t_ms, b.values, stale, strict=True):
            labels = b.series[int(i)]
            if lo <= t < hi and labels[METRIC_NAME].startswith(("fleet_gpu_", "fleet_sched_")):
                out[(key(labels), int(t))] = None if s else float(v)
    return out


def stored(store: DuckDBStore, lo: int, hi: int) -> SampleBatch:
    """The GPU and scheduler samples a store holds in ``[lo, hi)``, as one batch."""
    rows = []
    for s in store.select([Matcher(METRIC_NAME, "=~", "fleet_(gpu|sched)_.*")], lo, hi - 1):
        rows += [(s.labels, int(t), float(v)) for t, v in zip(s.t_ms, s.values, strict=True)]
    return SampleBatch.from_rows(rows)


@pytest.fixture(scope="module")
def window() -> tuple[int, int]:
    """An hour of live ticks that covers the start of the first long node outage after noon
    (jobs change hands on several GPUs then) and starts at a tick where some series stops (so
    the first live tick has a marker to write)."""
    probe = Simulation(SPEC)
    capture = Capture()
    probe.backfill(capture, START, START + 24 * HOUR)
    tick = SPEC.tick_ms
    d0 = min(d0 for node in probe.cluster.down for d0, d1 in node
             if d0 * tick > START + 12 * HOUR and d1 - d0 > 10)  # fmt: skip
    marked = np.concatenate([b.t_ms[stale_mask(b.values)] for b in capture.batches])
    first = int(marked[marked < d0 * tick - 10 * tick].max())
    return first, max(first + HOUR, d0 * tick + 20 * 60_000)


@pytest.fixture(scope="module")
def live(
    window: tuple[int, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DuckDBStore]:
    """Backfill up to the window, then run it live: agents remote-write into a DuckDB store."""
    first, end = window
    store = DuckDBStore(":memory:")
    sim = Simulation(SPEC, root_dir=tmp_path_factory.mktemp("roots"))
    sim.backfill(store, START, first)
    endpoint = Endpoint(store)
    thread = threading.Thread(target=endpoint.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fleet = LiveFleet(sim, endpoint.url)
    try:
        for t in range(first, end, SPEC.tick_ms):
            fleet.step(t)
        yield store
    finally:
        fleet.close()
        endpoint.shutdown()
        endpoint.server_close()
        thread.join()
        store.close()


@pytest.fixture(scope="module")
def backfilled(window: tuple[int, int]) -> Iterator[DuckDBStore]:
    store = DuckDBStore(":memory:")
    Simulation(SPEC).backfill(store, START, window[1])
    yield store
    store.close()


def test_live_agents_write_the_markers_the_backfill_writes(
    window: tuple[int, int], live: DuckDBStore
) -> None:
    first, end = window
    whole = Capture()
    Simulation(SPEC).backfill(whole, START, end)
    wrote = samples(whole.batches, first, end)
    read = samples([stored(live, first, end)], first, end)
    assert set(read) == set(wrote)
    restart = ("fleet_gpu_pcie_receive_bytes_total", "fleet_gpu_pcie_transmit_bytes_total")
    # the same values, markers included (PCIe counters restart with a new collector)
    differ = [k for k, v in wrote.items() if v != read[k]
              and not (k[0][0] in restart and None not in (v, read[k]))]  # fmt: skip
    assert differ == []
    markers = {k[0][0] for k, v in wrote.items() if v is None}
    # jobs ended, processes exited, a node's GPUs were lost, a pending reason went away
    assert {"fleet_gpu_allocation", "fleet_gpu_process_memory_bytes",
            "fleet_gpu_utilization_ratio"} <= markers  # fmt: skip
    # the first live tick marks what the last backfilled tick had and it has not
    assert any(t == first for (_, t), v in wrote.items() if v is None)


def test_every_series_that_stops_is_marked_once_at_the_next_tick(
    window: tuple[int, int], backfilled: DuckDBStore
) -> None:
    tick = SPEC.tick_ms
    for s in backfilled.select([Matcher(METRIC_NAME, "=~", "fleet_.*")], START, window[1]):
        stale = stale_mask(s.values)
        t = s.t_ms[~stale]
        gaps = np.flatnonzero(np.diff(t) > tick)
        ends = np.append(t[gaps], t[-1]) + tick
        expected = ends[ends < window[1]]  # the last series of the backfill are not over
        np.testing.assert_array_equal(s.t_ms[stale], expected, err_msg=str(s.labels))


@pytest.mark.parametrize("source", ["live", "backfilled"])
def test_the_allocation_join_has_one_series_per_gpu_right_after_job_changes(
    window: tuple[int, int], source: str, request: pytest.FixtureRequest
) -> None:
    store: DuckDBStore = request.getfixturevalue(source)
    first, end = window
    engine = Evaluator(store)
    # GPUs whose allocation changed hands within the window: one series ends, another starts
    # on the same GPU less than the 5-minute lookback later
    changes: list[tuple[str, int]] = []
    by_gpu: dict[str, list[tuple[int, int, str]]] = {}
    for s in store.select([Matcher.equal(METRIC_NAME, "fleet_gpu_allocation")], first, end):
        t = s.t_ms[~stale_mask(s.values)]
        if len(t):
            by_gpu.setdefault(s.labels["gpu_uuid"], []).append(
                (int(t[0]), int(t[-1]), s.labels["job"])
            )
    for uuid, runs in by_gpu.items():
        runs.sort()
        changes += [(uuid, b[0]) for a, b in pairwise(runs) if b[0] - a[1] < 300_000]
    assert changes, "the scenario should change jobs on some GPUs"
    for uuid, t in changes:
        result = engine.instant(JOIN, t)
        gpus = [s.labels["gpu_uuid"] for s in result.series]
        assert len(gpus) == len(set(gpus)) and uuid in gpus
        (held,) = [s.labels["job"] for s in result.series if s.labels["gpu_uuid"] == uuid]
        assert held == max(r for r in by_gpu[uuid] if r[0] <= t)[2]  # the new job
    # and at every tick of the hour (one range query): no many-to-many anywhere
    result = engine.range(JOIN, first, end - SPEC.tick_ms, SPEC.tick_ms)
    assert result.series


def test_without_markers_the_join_fails_after_a_job_change(
    window: tuple[int, int], backfilled: DuckDBStore
) -> None:
    """What the markers prevent: an ended job's series stays within the lookback."""
    first, end = window
    names = Matcher(METRIC_NAME, "=~", "fleet_gpu_(allocation|utilization_ratio)")
    rows = []
    for s in backfilled.select([names], first - HOUR, end):
        keep = ~stale_mask(s.values)
        rows += [
            (s.labels, int(t), float(v)) for t, v in zip(s.t_ms[keep], s.values[keep], strict=True)
        ]
    plain = DuckDBStore(":memory:")
    try:
        plain.append(SampleBatch.from_rows(rows))
        with pytest.raises(QueryError, match="found duplicate series for the match group"):
            Evaluator(plain).range(JOIN, first, end, SPEC.tick_ms)
    finally:
        plain.close()
