"""Tests of the scrape loop (fleetscope.ingest.scrape) against real prometheus_client servers."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from fleetscope.ingest.scrape import UP, Scraper, ScrapeTarget
from fleetscope.store import STALE_NAN_BITS, Matcher


def latest(store: Any, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    matchers = [Matcher.equal("__name__", name)] + [Matcher.equal(k, v) for k, v in labels.items()]
    return [(s.labels, float(s.values[-1])) for s in store.select(matchers, 0, 2**62)]


def registry_with_gauge() -> tuple[CollectorRegistry, Gauge]:
    registry = CollectorRegistry()
    g = Gauge("fleet_gpu_up", "GPU answered.", ["gpu", "job"], registry=registry)
    g.labels(gpu="0", job="inner").set(1)
    g.labels(gpu="1", job="inner").set(0)
    return registry, g


def test_scrape_stores_samples_and_up(
    metric_store: Any, serve_registry: Any, free_port: int
) -> None:
    registry, _ = registry_with_gauge()
    with serve_registry(registry) as url:
        target = ScrapeTarget(url, job="gpus", instance="node1:9400")
        dead = ScrapeTarget(f"http://127.0.0.1:{free_port}/metrics", job="gpus", instance="gone")
        scraper = Scraper([target, dead], metric_store, interval_s=1)
        asyncio.run(scraper.scrape_once())
    got = latest(metric_store, "fleet_gpu_up", gpu="0")
    assert got == [
        (
            {
                "__name__": "fleet_gpu_up",
                "gpu": "0",
                "job": "gpus",
                "exported_job": "inner",
                "instance": "node1:9400",
            },
            1.0,
        )
    ]
    assert latest(metric_store, UP, instance="node1:9400")[0][1] == 1.0
    assert latest(metric_store, UP, instance="gone")[0][1] == 0.0
    scraped = latest(metric_store, "scrape_samples_scraped", instance="node1:9400")[0][1]
    assert scraped >= 2
    assert scraper.health[target].up and scraper.health[target].failures == 0
    assert not scraper.health[dead].up and scraper.health[dead].failures == 1
    assert scraper.health[dead].last_error


def _bits(store: Any, name: str, **labels: str) -> list[int]:
    matchers = [Matcher.equal("__name__", name)] + [Matcher.equal(k, v) for k, v in labels.items()]
    (series,) = store.select(matchers, 0, 2**62)
    return [int(b) for b in series.values.view("int64")]


def test_vanished_series_get_stale_markers(metric_store: Any, serve_registry: Any) -> None:
    registry, gauge = registry_with_gauge()
    with serve_registry(registry) as url:
        target = ScrapeTarget(url, job="gpus")
        scraper = Scraper([target], metric_store, interval_s=1)
        asyncio.run(scraper.scrape_once())
        gauge.remove("1", "inner")
        asyncio.run(scraper.scrape_once())
    assert _bits(metric_store, "fleet_gpu_up", gpu="1")[-1] == STALE_NAN_BITS
    assert not math.isnan(latest(metric_store, "fleet_gpu_up", gpu="0")[0][1])
    # the target is now gone: every series it had goes stale and up is 0
    asyncio.run(scraper.scrape_once())
    assert _bits(metric_store, "fleet_gpu_up", gpu="0")[-1] == STALE_NAN_BITS
    assert latest(metric_store, UP)[0][1] == 0.0
    assert scraper.health[target].failures == 1


def test_run_scrapes_on_the_interval_until_stopped(metric_store: Any, serve_registry: Any) -> None:
    registry, _ = registry_with_gauge()

    async def main(url: str) -> Scraper:
        scraper = Scraper([ScrapeTarget(url, job="gpus")], metric_store, interval_s=0.05)
        task = asyncio.create_task(scraper.run())
        while next(iter(scraper.health.values())).scrapes < 3:
            await asyncio.sleep(0.01)
        scraper.stop()
        await asyncio.wait_for(task, 5)
        return scraper

    with serve_registry(registry) as url:
        scraper = asyncio.run(main(url))
    (health,) = scraper.health.values()
    assert health.scrapes >= 3 and health.failures == 0
    ((_, t_ms, _),) = [
        (s.labels, s.t_ms, s.values)
        for s in metric_store.select([Matcher.equal("__name__", UP)], 0, 2**62)
    ]
    assert len(t_ms) >= 3
