"""Scrape loop: pull Prometheus ``/metrics`` endpoints on an interval into a :class:`MetricStore`.

Each scrape of a target stamps samples that carry no timestamp with the scrape's start time,
adds the target's ``job`` and ``instance`` labels (a scraped label of the same name is kept as
``exported_<name>``, Prometheus' ``honor_labels: false``) and appends them. As Prometheus does,
it then appends the target's report series with ``{job, instance}``: ``up`` (1 scraped, 0
failed), ``scrape_duration_seconds`` and ``scrape_samples_scraped``, and marks series that
vanished since the previous scrape (all of them when the scrape failed) with the staleness
marker (series that carry their own timestamps excepted). A failing target is logged and
counted in :attr:`Scraper.health`; it never stops the loop.

Lifecycle: ``run()`` (an asyncio task) scrapes every ``interval_s`` until ``stop()``;
``scrape_once()`` scrapes every target once (tests, one-shot use).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np

from fleetscope.ingest import exposition
from fleetscope.ingest.validate import IngestError, validate
from fleetscope.store import METRIC_NAME, STALE_NAN, MetricStore, SampleBatch, StoreError

log = logging.getLogger(__name__)

UP = "up"
"""Prometheus' target health series: 1 when the scrape succeeded, 0 when it failed."""
SCRAPE_DURATION = "scrape_duration_seconds"
SCRAPE_SAMPLES = "scrape_samples_scraped"
"""Prometheus' staleness marker: a NaN with this exact bit pattern."""
ACCEPT = "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"

LabelKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ScrapeTarget:
    """An endpoint to scrape; ``instance`` defaults to the URL's ``host:port``."""

    url: str
    job: str
    instance: str = ""

    @property
    def labels(self) -> dict[str, str]:
        return {"job": self.job, "instance": self.instance or urlsplit(self.url).netloc}


@dataclass
class TargetHealth:
    """What the loop knows about one target (times in Unix milliseconds)."""

    scrapes: int = 0
    failures: int = 0
    last_scrape_ms: int | None = None
    last_error: str | None = None
    up: bool = False


@dataclass
class _State:
    health: TargetHealth = field(default_factory=TargetHealth)
    seen: set[LabelKey] = field(default_factory=set)


class Scraper:
    """Scrapes ``targets`` every ``interval_s`` seconds into ``store``."""

    def __init__(
        self,
        targets: list[ScrapeTarget],
        store: MetricStore,
        interval_s: float = 15.0,
        timeout_s: float | None = None,
    ) -> None:
        self.targets = list(targets)
        self.store = store
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else min(10.0, interval_s)
        self._states = {t: _State() for t in self.targets}
        self._stopping = asyncio.Event()

    @property
    def health(self) -> dict[ScrapeTarget, TargetHealth]:
        return {t: s.health for t, s in self._states.items()}

    async def run(self) -> None:
        """Scrape on the interval until :meth:`stop` (each round starts on the interval grid)."""
        self._stopping.clear()
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while not self._stopping.is_set():
                started = time.monotonic()
                await self._round(client)
                wait = max(0.0, self.interval_s - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the scrape in progress."""
        self._stopping.set()

    async def scrape_once(self) -> None:
        """Scrape every target once, concurrently."""
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            await self._round(client)

    async def _round(self, client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self._scrape(client, t) for t in self.targets))

    async def _scrape(self, client: httpx.AsyncClient, target: ScrapeTarget) -> None:
        state = self._states[target]
        health = state.health
        start_ms = int(time.time() * 1000)
        started = time.monotonic()
        batch: SampleBatch | None = None
        error: str | None = None
        try:
            resp = await client.get(target.url, headers={"Accept": ACCEPT})
            if resp.status_code != 200:
                error = f"HTTP {resp.status_code}"
            else:
                om = exposition.is_openmetrics(resp.headers.get("content-type"))
                batch = exposition.parse(
                    resp.text, start_ms, target.labels, openmetrics=om, rename_conflicts=True
                )
                batch = validate(batch)
        except (httpx.HTTPError, IngestError) as e:
            error = f"{type(e).__name__}: {e}"
        duration_s = time.monotonic() - started
        seen: set[LabelKey] = set()
        if batch is not None:
            # series stamped by us; those with their own timestamps get no stale markers
            ours = np.unique(batch.series_index[batch.t_ms == start_ms])
            seen = {tuple(sorted(batch.series[i].items())) for i in ours.tolist()}
            try:
                await asyncio.to_thread(self.store.append, batch)
            except StoreError as e:
                error = f"{type(e).__name__}: {e}"
        health.scrapes += 1
        health.last_scrape_ms = start_ms
        health.up = error is None
        if error is not None:
            if health.last_error != error:
                log.warning("scrape of %s (%s) failed: %s", target.url, target.job, error)
            health.failures += 1
            seen = set()
        health.last_error = error
        report = self._report(target, state, seen, start_ms, duration_s, batch)
        state.seen = seen
        try:
            await asyncio.to_thread(self.store.append, report)
        except StoreError as e:
            log.warning("cannot store the scrape report of %s: %s", target.url, e)

    def _report(
        self,
        target: ScrapeTarget,
        state: _State,
        seen: set[LabelKey],
        t_ms: int,
        duration_s: float,
        batch: SampleBatch | None,
    ) -> SampleBatch:
        """``up``, duration and sample count of this scrape, and stale markers for gone series."""
        base = target.labels
        samples = len(batch) if batch is not None and state.health.up else 0
        rows: list[tuple[dict[str, str], int, float]] = [
            ({**base, METRIC_NAME: UP}, t_ms, 1.0 if state.health.up else 0.0),
            ({**base, METRIC_NAME: SCRAPE_DURATION}, t_ms, duration_s),
            ({**base, METRIC_NAME: SCRAPE_SAMPLES}, t_ms, float(samples)),
        ]
        rows += [(dict(key), t_ms, STALE_NAN) for key in sorted(state.seen - seen)]
        return SampleBatch.from_rows(rows)
