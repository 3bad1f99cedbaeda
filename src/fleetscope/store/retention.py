"""Retention: a background thread that drops samples older than the configured age.

The same pass also compacts the store when it can (:meth:`DuckDBStore.compact
<fleetscope.store.duckdb.DuckDBStore.compact>`: closed blocks of the head into sorted runs), so
one thread does the embedded store's housekeeping, as Prometheus' head compaction and retention
run together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fleetscope.store import MetricStore

log = logging.getLogger(__name__)


class Retention:
    """Every ``interval_s`` seconds, delete samples older than ``now - retention_ms`` and
    compact closed blocks (stores without ``compact`` are only swept).

    ``run()`` blocks until ``stop()`` (call it on a thread); ``sweep()`` does one pass.
    """

    def __init__(
        self,
        store: MetricStore,
        retention_ms: int,
        interval_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.retention_ms = retention_ms
        self.interval_s = interval_s
        self.clock = clock
        self._stop = threading.Event()

    def sweep(self) -> int:
        cutoff = int(self.clock() * 1000) - self.retention_ms
        dropped = self.store.delete_before(cutoff)
        if dropped:
            log.info("retention dropped %d samples older than %d", dropped, cutoff)
        compact = getattr(self.store, "compact", None)
        if callable(compact):
            moved = compact()
            if moved:
                log.info("compacted %d samples into sorted blocks", moved)
        return dropped

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:
                log.exception("retention sweep failed; will retry")
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
