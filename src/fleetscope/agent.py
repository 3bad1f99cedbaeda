"""The node agent: runs collectors on an interval, serves ``/metrics`` and remote-writes.

Each cycle (:meth:`Agent.collect_once`) runs every collector in order, times each, and stamps
all their samples with one timestamp (integer milliseconds since the epoch). A collector that
raises costs only its own samples: it is counted in ``fleet_agent_collector_errors_total`` and
logged (with a traceback the first time), and the others still run. The cycle's samples plus the
agent's own health series become one :class:`~fleetscope.store.SampleBatch`.

Staleness, as Prometheus writes it for a scrape: every series the previous cycle produced and
this one does not (a job's ``fleet_gpu_allocation`` when it released the GPU, a lost GPU's
gauges, an exited process) gets one :data:`STALE_NAN` sample at this cycle's timestamp, so
queries stop seeing it at once instead of for the 5-minute lookback. The markers are pushed and
stored like any sample; ``/metrics`` shows only the readings.

Self metrics (all labelled ``node``; catalog area ``agent``):

- ``fleet_agent_cycle_seconds`` (gauge): wall time of the last cycle.
- ``fleet_agent_collector_seconds{collector}`` (gauge): wall time of each collector last cycle.
- ``fleet_agent_collector_errors_total{collector}`` (counter): cycles in which it raised.
- ``fleet_agent_collector_up{collector}`` (gauge): 1 when it ran this cycle without raising and
  without an ``init_error`` (its source could be opened), else 0.
- ``fleet_agent_pushed_samples_total`` (counter): samples the remote-write endpoint accepted.
- ``fleet_agent_push_failures_total`` (counter): pushes that failed (kept or dropped).
- ``fleet_agent_dropped_samples_total`` (counter): samples given up on (queue full, unencodable,
  or refused by the endpoint with a non-retryable 4xx).

Push: with ``push_url`` set, :meth:`Agent.run_cycle` sends the batch with
:func:`fleetscope.remotewrite.encode` and its ``HEADERS`` (HTTP POST through httpx). Following the
remote-write spec, a 5xx, a 429 or a network error keeps the batch in a small bounded in-memory
queue and every later cycle retries the queue oldest first (stopping at the first failure, so
order is kept); another 4xx drops it. When the queue is full the oldest batch is dropped. The
queue is lost when the process exits: the on-disk WAL is a later issue.

``/metrics`` (any path of the listen address, via prometheus_client's server thread) exposes the
latest cycle's samples in the Prometheus text format, with HELP and TYPE from
:mod:`fleetscope.catalog` (info metrics are gauges there; names the catalog lacks are exposed as
untyped).

Concurrency: :meth:`Agent.run` is a blocking loop on the calling thread (collectors do blocking
NVML and file I/O, so threads, not asyncio); :meth:`Agent.stop` may be called from any thread and
ends it after the current cycle. The simulator instead calls :meth:`Agent.collect_once` or
:meth:`Agent.run_cycle` itself, one agent per fake node, each with its own collectors.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import httpx
import pynvml
from prometheus_client.core import Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import CollectorRegistry

from fleetscope import catalog, remotewrite
from fleetscope.collect import Collector, Sample
from fleetscope.collect.attribution import AllocationCollector, job_of_pid
from fleetscope.collect.gpu import GPUCollector
from fleetscope.store import METRIC_NAME, STALE_NAN, SampleBatch

__all__ = ["Agent", "default_collectors"]

log = logging.getLogger(__name__)


LabelKey = tuple[tuple[str, str], ...]  # a series' sorted label pairs, ``__name__`` included


def default_collectors(
    node: str,
    *,
    nvml: Any = pynvml,
    root: Path | str = "/",
    team_map: Mapping[str, str] | None = None,
) -> list[Collector]:
    """The collectors of one node: NVML GPUs (processes attributed through ``root/proc``) and
    GPU allocations from ``root/run/gpustat``. The simulator passes a FakeNVML and a fake root."""
    gpu = GPUCollector(node, nvml, owner_of=functools.partial(job_of_pid, root=root))
    alloc = AllocationCollector(node, gpu.identities, root=root, team_map=team_map)
    return [gpu, alloc]


class Agent:
    """Runs ``collectors`` every ``interval_s`` seconds (see the module docstring)."""

    def __init__(
        self,
        node: str,
        collectors: Sequence[Collector],
        push_url: str | None = None,
        interval_s: float = 15.0,
        listen: tuple[str, int] | None = None,
        *,
        max_queued_batches: int = 32,
        push_timeout_s: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.node = node
        self.collectors = list(collectors)
        self.push_url = push_url
        self.interval_s = interval_s
        self.listen = listen
        self.queue: deque[SampleBatch] = deque()
        self.max_queued_batches = max_queued_batches
        self.collector_errors = {c.name: 0 for c in self.collectors}
        self.pushed_samples = 0
        self.push_failures = 0
        self.dropped_samples = 0
        self._latest: list[Sample] = []
        self._previous: dict[LabelKey, dict[str, str]] = {}  # series of the last cycle
        self._client = client
        self._own_client = client is None
        self._push_timeout_s = push_timeout_s
        self._stopping = threading.Event()
        self._server: WSGIServer | None = None
        self._logged: set[tuple[str, str]] = set()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_LatestCycle(self))

    # -- one cycle ---------------------------------------------------------------------------

    def collect_once(self, now_ms: int | None = None) -> SampleBatch:
        """Run every collector once; the samples (with self metrics) stamped ``now_ms``, and a
        staleness marker for each series of the previous cycle that is gone.

        Does not push; the readings are also what ``/metrics`` shows until the next cycle.
        """
        t_ms = int(time.time() * 1000) if now_ms is None else now_ms
        started = time.perf_counter()
        samples: list[Sample] = []
        timings: dict[str, float] = {}
        up: dict[str, bool] = {}
        for collector in self.collectors:
            t0 = time.perf_counter()
            try:
                samples.extend(collector.collect())
                up[collector.name] = getattr(collector, "init_error", None) is None
            except Exception as err:
                self._collector_failed(collector.name, err)
                up[collector.name] = False
            timings[collector.name] = time.perf_counter() - t0
        samples.extend(self._self_samples(time.perf_counter() - started, timings, up))
        self._latest = samples
        rows = _rows(samples)
        gone = [labels for key, labels in self._previous.items() if key not in rows]
        self._previous = {key: labels for key, (labels, _) in rows.items()}
        return SampleBatch.from_rows(
            [(labels, t_ms, value) for labels, value in rows.values()]
            + [(labels, t_ms, STALE_NAN) for labels in gone]
        )

    def run_cycle(self, now_ms: int | None = None) -> SampleBatch:
        """:meth:`collect_once`, then push (the queue first) when ``push_url`` is set."""
        batch = self.collect_once(now_ms)
        if self.push_url is not None:
            self._enqueue(batch)
            self.flush()
        return batch

    def flush(self) -> bool:
        """Send queued batches oldest first; ``True`` when the queue is empty afterwards."""
        while self.queue:
            outcome = self._push(self.queue[0])
            if outcome == "retry":
                return False
            self.queue.popleft()
        return True

    # -- lifecycle ---------------------------------------------------------------------------

    def start_server(self) -> tuple[str, int]:
        """Serve ``/metrics`` on ``listen`` (port 0 picks a free one); the bound address."""
        if self.listen is None:
            raise ValueError("the agent has no listen address")
        if self._server is None:
            host, port = self.listen
            self._server, _thread = start_http_server(port, host, registry=self.registry)
        bound = self._server.server_address
        return str(bound[0]), int(bound[1])

    def run(self) -> None:
        """Cycle every ``interval_s`` until :meth:`stop`; then release everything (blocking)."""
        if self.listen is not None:
            host, port = self.start_server()
            log.info("agent %s serves /metrics on %s:%d", self.node, host, port)
        next_t = time.monotonic()
        try:
            while not self._stopping.is_set():
                self.run_cycle()
                next_t += self.interval_s
                now = time.monotonic()
                if next_t < now:  # a slow cycle: skip the slots it overran, keep the phase
                    next_t += (now - next_t) // self.interval_s * self.interval_s + self.interval_s
                self._stopping.wait(next_t - now)
        finally:
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current cycle (safe from any thread)."""
        self._stopping.set()

    def close(self) -> None:
        """Stop serving, close the HTTP client and the collectors that have ``close``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None
        for collector in self.collectors:
            close = getattr(collector, "close", None)
            if callable(close):
                close()

    # -- internals ---------------------------------------------------------------------------

    def _collector_failed(self, name: str, err: Exception) -> None:
        self.collector_errors[name] = self.collector_errors.get(name, 0) + 1
        key = (name, type(err).__name__)
        if key in self._logged:
            log.warning("collector %s failed: %s: %s", name, type(err).__name__, err)
        else:
            self._logged.add(key)
            log.exception("collector %s failed", name)

    def _self_samples(
        self, cycle_s: float, timings: Mapping[str, float], up: Mapping[str, bool]
    ) -> Iterator[Sample]:
        node = {"node": self.node}
        yield Sample("fleet_agent_cycle_seconds", node, cycle_s)
        for name, seconds in timings.items():
            yield Sample("fleet_agent_collector_seconds", {**node, "collector": name}, seconds)
        for name, ok in up.items():
            yield Sample("fleet_agent_collector_up", {**node, "collector": name}, float(ok))
        for name, errors in self.collector_errors.items():
            labels = {**node, "collector": name}
            yield Sample("fleet_agent_collector_errors_total", labels, float(errors))
        yield Sample("fleet_agent_pushed_samples_total", node, float(self.pushed_samples))
        yield Sample("fleet_agent_push_failures_total", node, float(self.push_failures))
        yield Sample("fleet_agent_dropped_samples_total", node, float(self.dropped_samples))

    def _enqueue(self, batch: SampleBatch) -> None:
        self.queue.append(batch)
        while len(self.queue) > self.max_queued_batches:
            dropped = self.queue.popleft()
            self.dropped_samples += len(dropped)
            log.warning("push queue full: dropped a batch of %d samples", len(dropped))

    def _push(self, batch: SampleBatch) -> str:
        """POST one batch: ``"sent"``, ``"retry"`` (keep it) or ``"dropped"`` (give it up)."""
        assert self.push_url is not None
        if self._client is None:
            self._client = httpx.Client(timeout=self._push_timeout_s)
        try:
            body = remotewrite.encode(batch)
        except Exception:  # a batch that cannot be encoded would block the queue forever
            self.push_failures += 1
            self.dropped_samples += len(batch)
            log.exception("cannot encode a batch of %d samples; dropped", len(batch))
            return "dropped"
        try:
            response = self._client.post(self.push_url, content=body, headers=remotewrite.HEADERS)
        except httpx.HTTPError as err:
            self.push_failures += 1
            log.warning("push to %s failed: %s; will retry", self.push_url, err)
            return "retry"
        if response.is_success:
            self.pushed_samples += len(batch)
            return "sent"
        self.push_failures += 1
        detail = response.text[:200]
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("push got HTTP %d (%s); will retry", response.status_code, detail)
            return "retry"
        self.dropped_samples += len(batch)
        log.error("push refused with HTTP %d (%s); dropped", response.status_code, detail)
        return "dropped"


def _rows(samples: Iterable[Sample]) -> dict[LabelKey, tuple[dict[str, str], float]]:
    """One row per distinct label set (a repeated series keeps its last value)."""
    rows: dict[LabelKey, tuple[dict[str, str], float]] = {}
    for s in samples:
        labels = {**s.labels, METRIC_NAME: s.name}
        rows[tuple(sorted(labels.items()))] = (labels, s.value)
    return rows


class _LatestCycle:
    """A prometheus_client collector over the agent's latest cycle (HELP/TYPE from the catalog)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for s in self._agent._latest:
            family = families.get(s.name)
            if family is None:
                family = families[s.name] = _family(s.name)
            family.add_sample(s.name, dict(s.labels), s.value)
        yield from families.values()


def _family(name: str) -> Metric:
    """An empty family for the sample name ``name``: counters drop ``_total`` (the text format
    adds it back); names the catalog lacks are untyped."""
    meta = catalog.get(name)
    if meta is None:
        return Metric(name, f"{name} (not in the Fleetscope catalog)", "unknown")
    if meta.name != name or meta.prometheus_type not in ("gauge", "counter"):
        return Metric(name, meta.help, "unknown")  # a histogram's series, exposed one by one
    if meta.prometheus_type == "counter":
        if not name.endswith("_total"):
            return Metric(name, meta.help, "unknown")
        return Metric(name.removesuffix("_total"), meta.help, "counter")
    return Metric(name, meta.help, "gauge")
