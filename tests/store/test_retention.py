"""Retention drops only what is older than the configured age."""

from __future__ import annotations

import threading

from fleetscope.store import Matcher, SampleBatch
from fleetscope.store.duckdb import DuckDBStore
from fleetscope.store.retention import Retention

DAY = 86_400_000


def test_sweep_keeps_the_retention_window() -> None:
    store = DuckDBStore(":memory:")
    now_ms = 40 * DAY
    labels = {"__name__": "fleet_gpu_up", "gpu": "0"}
    store.append(SampleBatch.from_rows([(labels, t * DAY, 1.0) for t in range(41)]))
    retention = Retention(store, 30 * DAY, clock=lambda: now_ms / 1000)
    assert retention.sweep() == 10
    kept = store.select([Matcher.equal("gpu", "0")], 0, now_ms)[0].t_ms
    assert kept[0] == 10 * DAY and len(kept) == 31


def test_run_sweeps_until_stopped() -> None:
    store = DuckDBStore(":memory:")
    store.append(SampleBatch.from_rows([({"__name__": "fleet_gpu_up"}, 0, 1.0)]))
    retention = Retention(store, DAY, interval_s=0.01, clock=lambda: 2 * DAY / 1000)
    thread = threading.Thread(target=retention.run)
    thread.start()
    retention.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert store.stats().samples == 0


def test_sweep_also_compacts_closed_blocks() -> None:
    hour = DAY // 24
    labels = {"__name__": "fleet_gpu_up", "gpu": "0"}
    batch = SampleBatch.from_rows([(labels, t * hour // 4, 1.0) for t in range(4 * 8)])
    swept, untouched = DuckDBStore(":memory:"), DuckDBStore(":memory:")
    swept.append(batch)
    untouched.append(batch)
    retention = Retention(swept, 30 * DAY, clock=lambda: 8 * hour / 1000)
    assert retention.sweep() == 0
    # Newest sample at 7:45: blocks (…, 0], (0, 2h], (2h, 4h], (4h, 6h] end an hour or more
    # before it.
    assert untouched.compact() == 25
    assert swept.compact() == 0  # the sweep did it
    assert swept.stats().samples == 32
