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
- ``fleet_agent_collector_errors_total{collector}`` (counter): cycles in which it raised (or its
  ``drain_events`` raised).
- ``fleet_agent_collector_up{collector}`` (gauge): 1 when it ran this cycle without raising and
  without an ``init_error`` (its source could be opened), else 0.
- ``fleet_agent_pushed_samples_total`` (counter): samples the remote-write endpoint accepted.
- ``fleet_agent_push_failures_total`` (counter): POSTs that failed, retried or not (remote-write
  and events alike).
- ``fleet_agent_dropped_samples_total`` (counter): samples given up on: queue full, unencodable,
  not writable to the WAL, or refused by the endpoint with a non-retryable 4xx. With a WAL, the
  queue's part of it is persisted, so the total carries on across restarts.
- With ``push_url`` only, the queue's state as of the start of the cycle:
  ``fleet_agent_wal_bytes`` (bytes of unacknowledged entries), ``fleet_agent_wal_pending_samples``
  and ``fleet_agent_wal_oldest_seconds`` (age of the oldest unacknowledged entry, 0 when empty).
  Without a WAL directory they describe the in-memory queue.

Delivery (``push_url`` set). Every batch is encoded (:func:`fleetscope.remotewrite.encode`) and
appended to the outgoing queue before anything is sent: a :class:`fleetscope.wal.WAL` in
``wal_dir`` (one fsynced record per cycle; it survives ``kill -9`` and restarts, bounded by
``wal_max_bytes``, oldest data dropped and counted when full), or without ``wal_dir`` a
:class:`fleetscope.wal.MemoryQueue` with the same bound that is lost when the process exits.
The queue is sent oldest first, one entry at a time, so the receiver sees batches in order.
Retries follow the Prometheus remote-write 1.0 specification ("Retries & Backoff"): a 5xx, a 429
or a network error/timeout keeps the entry and retries it with exponential backoff and jitter
(:class:`Backoff`: base 1 s, doubling, capped at the interval — at least 1 s, at most 30 s; a
``Retry-After`` header on a 429 or 503 is honoured as a minimum wait, as remote-write 2.0
allows); any other 4xx is never retried: it is logged, counted in
``fleet_agent_push_failures_total`` and ``fleet_agent_dropped_samples_total``, acknowledged, and
the next entry goes. Delivery is at least once: an entry whose response was lost (a crash
between the receiver's 2xx and the ack) is sent again, and the receiver stores an exact resend
once (same series and timestamp), so storage is exactly once.

Events. A collector with a ``drain_events() -> list[fleetscope.model.Event]`` method (the XID
collector) is drained after every cycle; a non-empty list becomes one queue entry of kind
``"events"`` (a JSON list of ``Event.model_dump(mode="json")``) that is POSTed as
``application/json`` to ``events_url`` — by default ``push_url`` with its trailing
``/api/v1/write`` replaced by ``/api/v1/records/events`` — in queue order with the same retry
rules. Without a push URL, drained events are discarded.

Threads. :meth:`Agent.run` collects on the calling thread every ``interval_s`` and sends on a
sender thread (:meth:`Agent.deliver`), so an endpoint that is down, slow (each POST may take
the whole ``push_timeout_s``) or asking to back off never delays collection: the cycles keep
going into the queue and the sender catches up, oldest first, when the endpoint is back. A
separate thread rather than a bounded number of attempts per cycle, because a single attempt
can already cost a timeout, and a backoff that sleeps belongs to the sender, not the collection
clock. :meth:`Agent.stop` may be called from any thread; it ends the cycle loop after the
current cycle and interrupts the sender's backoff (a POST in flight finishes or times out).
The simulator instead calls :meth:`Agent.collect_once` or :meth:`Agent.run_cycle` itself, one
agent per fake node; :meth:`Agent.run_cycle` sends synchronously (:meth:`Agent.flush`: oldest
first until the first retryable failure, never waiting).

``/metrics`` (any path of the listen address, via prometheus_client's server thread) exposes the
latest cycle's samples in the Prometheus text format, with HELP and TYPE from
:mod:`fleetscope.catalog` (info metrics are gauges there; names the catalog lacks are exposed as
untyped).
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, Literal
from wsgiref.simple_server import WSGIServer

import httpx
import pynvml
from prometheus_client.core import Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import CollectorRegistry

from fleetscope import catalog, remotewrite, wal
from fleetscope.collect import Collector, Sample
from fleetscope.collect.attribution import AllocationCollector, PodDirectory, owner_of_pid
from fleetscope.collect.disk import DiskCollector, NFSCollector
from fleetscope.collect.exporters import ExporterCollector
from fleetscope.collect.gpu import GPUCollector
from fleetscope.collect.host import HostCollector
from fleetscope.collect.infiniband import InfinibandCollector
from fleetscope.collect.mesh import EndpointProbe, MeshProbe
from fleetscope.collect.net import NetCollector
from fleetscope.collect.xid import XIDCollector
from fleetscope.config import AgentConfig
from fleetscope.store import METRIC_NAME, STALE_NAN, SampleBatch

__all__ = ["EVENTS", "Agent", "Backoff", "default_collectors", "events_url_for"]

log = logging.getLogger(__name__)


EVENTS = "events"
"""The queue-entry kind of event lists (JSON), next to :data:`fleetscope.wal.SAMPLES`."""

LabelKey = tuple[tuple[str, str], ...]  # a series' sorted label pairs, ``__name__`` included
Outcome = Literal["sent", "retry", "dropped"]


def default_collectors(
    node: str,
    *,
    nvml: Any = pynvml,
    root: Path | str = "/",
    team_map: Mapping[str, str] | None = None,
    config: AgentConfig | None = None,
    statvfs: Callable[[str], Any] | None = None,
    peers: Mapping[str, str] | None = None,
    local_addresses: Sequence[str] = (),
    log_tz: tzinfo | None = None,
) -> list[Collector]:
    """The collectors of one node, all reading under ``root`` (``/``, or a fake tree: the
    simulator passes a FakeNVML and its node's root).

    NVML GPUs, their processes attributed through ``root/proc`` (Slurm cgroups and environ, or
    Kubernetes pods through the kubelet when ``config.kubelet_pods`` is set), GPU allocations
    from ``root/run/gpustat`` (or from the GPUs' processes), XIDs (kernel log and NVML events),
    host, disks, NFS mounts, NICs (east-west traffic named by the mesh peers' addresses),
    InfiniBand ports; then the mesh and endpoint probes and the exporters ``config`` names.
    The GPU collector runs first: the others read the identities and processes it found.

    ``statvfs`` replaces :func:`os.statvfs` for filesystem sizes (called inline); ``peers``
    (address → node, added to the mesh peers' addresses) and ``local_addresses`` (default: read
    from ``root/proc``) name east-west traffic; ``log_tz`` is the zone of the kernel log's
    syslog times (default: the local zone).
    """
    config = config or AgentConfig()
    pods = None
    if config.kubelet_pods:
        pods = PodDirectory(config.kubelet_pods, token_file=config.kubelet_token_file)
    owner = functools.partial(owner_of_pid, root=root, pods=pods, team_map=team_map)
    gpu = GPUCollector(node, nvml, owner_of=owner)
    alloc = AllocationCollector(
        node, gpu.identities, root=root, team_map=team_map, processes=gpu.processes
    )
    kernel_log = config.kernel_log
    xid = XIDCollector(
        node,
        gpu.identities,
        kmsg=kernel_log == "kmsg",
        log_path=None if kernel_log in (None, "kmsg") else kernel_log,
        root=root,
        owner_of_gpu=alloc.owner_of_gpu,
        nvml=nvml,
        local_tz=log_tz,
    )
    peers = {**{host: peer for peer, (host, _port) in config.mesh.items()}, **(peers or {})}
    collectors: list[Collector] = [
        gpu,
        alloc,
        xid,
        HostCollector(node, root),
        DiskCollector(node, root)
        if statvfs is None
        else DiskCollector(node, root, statvfs=statvfs, statvfs_timeout_s=None),
        NFSCollector(node, root),
        NetCollector(node, root, local_addresses=local_addresses, peers=peers),
        InfinibandCollector(node, root),
    ]
    if config.mesh:
        collectors.append(MeshProbe(node, config.mesh))
    if config.endpoints:
        collectors.append(EndpointProbe(node, config.endpoints))
    for exporter in config.exporters:
        collectors.append(
            ExporterCollector(node, exporter.source, exporter.url, extra_labels=exporter.labels)
        )
    return collectors


def events_url_for(push_url: str) -> str | None:
    """The events intake next to a remote-write URL: its path's trailing ``/api/v1/write``
    replaced by ``/api/v1/records/events``; ``None`` when the path does not end so."""
    parts = urllib.parse.urlsplit(push_url)
    if not parts.path.endswith("/api/v1/write"):
        return None
    path = parts.path.removesuffix("/api/v1/write") + "/api/v1/records/events"
    return urllib.parse.urlunsplit(parts._replace(path=path))


@dataclass
class Backoff:
    """Waits between retries of one entry: exponential with jitter, capped.

    Attempt ``n`` (0 for the first retry) waits a uniform time in ``[c/2, c]`` with
    ``c = min(max_s, base_s * 2**n)`` ("equal jitter": never less than half the ceiling, so a
    fleet of agents spreads out without hammering a struggling receiver). A ``Retry-After``
    (seconds) raises the wait to at least that, up to ``max_retry_after_s``.
    """

    base_s: float = 1.0
    max_s: float = 30.0
    max_retry_after_s: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based)."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** min(attempt, 64))
        delay = ceiling / 2 + self.rng.uniform(0.0, ceiling / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay


class Agent:
    """Runs ``collectors`` every ``interval_s`` seconds (see the module docstring).

    Delivery options (with ``push_url``): ``wal_dir`` (``None``: an in-memory queue),
    ``wal_max_bytes`` and ``wal_segment_bytes`` (the queue's bound and segment size),
    ``events_url`` (default from ``push_url``, see :func:`events_url_for`), ``push_timeout_s``,
    ``client`` (an ``httpx.Client``, e.g. with an ``Authorization`` header; closed by the agent
    only when it made it), ``backoff`` (default: base 1 s, cap ``interval_s`` within 1–30 s) and
    ``sleep`` (how the sender waits out a backoff; default: interruptible by :meth:`stop`).
    Raises :class:`fleetscope.wal.WALError` when another process holds ``wal_dir``.
    """

    def __init__(
        self,
        node: str,
        collectors: Sequence[Collector],
        push_url: str | None = None,
        interval_s: float = 15.0,
        listen: tuple[str, int] | None = None,
        *,
        wal_dir: Path | str | None = None,
        wal_max_bytes: int = wal.DEFAULT_MAX_BYTES,
        wal_segment_bytes: int = wal.DEFAULT_SEGMENT_BYTES,
        events_url: str | None = None,
        push_timeout_s: float = 10.0,
        client: httpx.Client | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if wal_dir is not None and push_url is None:
            raise ValueError("a WAL directory needs a push URL")
        self.node = node
        self.collectors = list(collectors)
        self.push_url = push_url
        self.events_url = events_url or (events_url_for(push_url) if push_url else None)
        self.interval_s = interval_s
        self.listen = listen
        self.queue: wal.Queue | None = None
        if push_url is not None:
            self.queue = (
                wal.MemoryQueue(wal_max_bytes)
                if wal_dir is None
                else wal.WAL(wal_dir, wal_max_bytes, wal_segment_bytes)
            )
        self.backoff = backoff or Backoff(1.0, max(1.0, min(30.0, interval_s)))
        self.collector_errors = {c.name: 0 for c in self.collectors}
        self.pushed_samples = 0
        self.pushed_events = 0
        self.push_failures = 0
        self._dropped_here = 0  # samples dropped before reaching the queue
        self._failing = 0  # retryable failures since the last success (logging)
        self._latest: list[Sample] = []
        self._previous: dict[LabelKey, dict[str, str]] = {}  # series of the last cycle
        self._client = client
        self._own_client = client is None
        self._push_timeout_s = push_timeout_s
        self._stopping = threading.Event()
        self._wake = threading.Event()  # something was queued for the sender
        self._send_lock = threading.Lock()  # one POST at a time keeps the order
        self._sleep = sleep or self._stopping.wait
        self._server: WSGIServer | None = None
        self._logged: set[tuple[str, str]] = set()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_LatestCycle(self))

    @property
    def dropped_samples(self) -> int:
        """Samples given up on (``fleet_agent_dropped_samples_total``)."""
        queued = self.queue.dropped_samples if self.queue is not None else 0
        return self._dropped_here + queued

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

    def enqueue_cycle(self, now_ms: int | None = None) -> SampleBatch:
        """:meth:`collect_once`, then queue the batch and the collectors' drained events for
        sending (without sending; nothing is queued without ``push_url``)."""
        batch = self.collect_once(now_ms)
        events = self._drain_events()
        if self.queue is not None:
            self._enqueue(batch)
            if events:
                self._enqueue_events(events)
        return batch

    def run_cycle(self, now_ms: int | None = None) -> SampleBatch:
        """:meth:`enqueue_cycle`, then :meth:`flush` (the queue oldest first) when pushing."""
        batch = self.enqueue_cycle(now_ms)
        if self.queue is not None:
            self.flush()
        return batch

    def flush(self) -> bool:
        """Send queued entries oldest first until one must be retried, without waiting;
        ``True`` when the queue is empty afterwards."""
        while self.queue is not None:
            with self._send_lock:
                entry = self.queue.peek()
                if entry is None:
                    return True
                outcome, _ = self._send(entry)
                if outcome == "retry":
                    return False
                self.queue.ack(entry, delivered=outcome == "sent")
        return True

    def deliver(self) -> bool:
        """Send queued entries oldest first until the queue is empty, waiting out retryable
        failures with :attr:`backoff` (blocking; the sender thread's work). ``True`` when the
        queue is empty, ``False`` when :meth:`stop` ended it first."""
        attempt = 0
        while self.queue is not None and not self._stopping.is_set():
            with self._send_lock:
                entry = self.queue.peek()
                if entry is None:
                    return True
                outcome, retry_after_s = self._send(entry)
                if outcome != "retry":
                    self.queue.ack(entry, delivered=outcome == "sent")
            if outcome == "retry":
                delay = self.backoff.delay_s(attempt, retry_after_s)
                attempt += 1
                log.debug("retry %d of the oldest entry in %.2f s", attempt, delay)
                self._sleep(delay)
            else:
                attempt = 0
        return self.queue is None

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
        """Cycle every ``interval_s`` until :meth:`stop`, sending on a sender thread; then
        release everything (blocking)."""
        if self.listen is not None:
            host, port = self.start_server()
            log.info("agent %s serves /metrics on %s:%d", self.node, host, port)
        sender = None
        if self.queue is not None:
            sender = threading.Thread(target=self._send_loop, name=f"sender-{self.node}")
            sender.start()
        next_t = time.monotonic()
        try:
            while not self._stopping.is_set():
                self.enqueue_cycle()
                self._wake.set()
                next_t += self.interval_s
                now = time.monotonic()
                if next_t < now:  # a slow cycle: skip the slots it overran, keep the phase
                    next_t += (now - next_t) // self.interval_s * self.interval_s + self.interval_s
                self._stopping.wait(next_t - now)
        finally:
            self.stop()
            if sender is not None:
                sender.join()  # a POST in flight ends within push_timeout_s
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current cycle (safe from any thread)."""
        self._stopping.set()
        self._wake.set()

    def close(self) -> None:
        """Stop serving, close the HTTP client, the queue and the collectors that have
        ``close`` (the agent cannot be used afterwards)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._send_lock:
            if self._own_client and self._client is not None:
                self._client.close()
                self._client = None
            if self.queue is not None:
                self.queue.close()
        for collector in self.collectors:
            close = getattr(collector, "close", None)
            if callable(close):
                close()

    # -- internals ---------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.deliver()
            except Exception:  # a bug must not end delivery silently; the entry stays queued
                log.exception("sender failed; retrying in %.0f s", self.backoff.max_s)
                self._sleep(self.backoff.max_s)
            self._wake.wait()

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
        if self.queue is not None:
            yield Sample("fleet_agent_wal_bytes", node, float(self.queue.pending_bytes))
            yield Sample("fleet_agent_wal_pending_samples", node, float(self.queue.pending_samples))
            yield Sample("fleet_agent_wal_oldest_seconds", node, self.queue.oldest_age_s)

    def _drain_events(self) -> list[Any]:
        events: list[Any] = []
        for collector in self.collectors:
            drain = getattr(collector, "drain_events", None)
            if not callable(drain):
                continue
            try:
                events.extend(drain())
            except Exception as err:
                self._collector_failed(collector.name, err)
        return events

    def _enqueue(self, batch: SampleBatch) -> None:
        assert self.queue is not None
        t_ms = int(batch.t_ms[0]) if len(batch) else 0
        try:
            body = remotewrite.encode(batch)
        except Exception:  # a batch that cannot be encoded would block the queue forever
            self._dropped_here += len(batch)
            log.exception("cannot encode the batch of %d samples at %d; dropped", len(batch), t_ms)
            return
        try:
            self.queue.append(body, len(batch), wal.SAMPLES)
        except OSError as err:  # the WAL's disk: full, read-only … the agent keeps collecting
            self._dropped_here += len(batch)
            log.error("cannot queue the batch at %d (%s); dropped %d samples", t_ms, err,
                      len(batch))  # fmt: skip
            return
        log.debug("queued cycle %d: %d samples, %d bytes", t_ms, len(batch), len(body))

    def _enqueue_events(self, events: Sequence[Any]) -> None:
        assert self.queue is not None
        if self.events_url is None:
            log.warning("no events URL (push URL %s); %d events dropped", self.push_url,
                        len(events))  # fmt: skip
            return
        body = json.dumps([e.model_dump(mode="json") for e in events]).encode()
        try:
            self.queue.append(body, len(events), EVENTS)
        except OSError as err:
            log.error("cannot queue %d events (%s); dropped", len(events), err)

    def _send(self, entry: wal.Entry) -> tuple[Outcome, float | None]:
        """POST one entry: the outcome and the server's ``Retry-After`` (seconds), if any."""
        if entry.kind == wal.SAMPLES:
            url, headers = self.push_url, remotewrite.HEADERS
        else:
            url, headers = self.events_url, {"Content-Type": "application/json"}
        if url is None:
            return "dropped", None
        if self._client is None:
            self._client = httpx.Client(timeout=self._push_timeout_s)
        try:
            response = self._client.post(url, content=entry.payload, headers=headers)
        except httpx.HTTPError as err:
            self._failed(f"push to {url} failed: {type(err).__name__}: {err}; will retry")
            return "retry", None
        if response.is_success:
            if self._failing:
                log.info("push to %s works again after %d failed attempts", url, self._failing)
                self._failing = 0
            if entry.kind == wal.SAMPLES:
                self.pushed_samples += entry.count
            else:
                self.pushed_events += entry.count
            return "sent", None
        status, detail = response.status_code, response.text[:200]
        if status == 429 or status >= 500:
            self._failed(f"push to {url} got HTTP {status} ({detail}); will retry")
            retry_after = response.headers.get("retry-after") if status in (429, 503) else None
            return "retry", _retry_after_s(retry_after)
        self.push_failures += 1
        log.error("push to %s refused with HTTP %d (%s); dropped %d %s", url, status, detail,
                  entry.count, entry.kind)  # fmt: skip
        return "dropped", None

    def _failed(self, message: str) -> None:
        """Count a retryable failure; log the first of a run as a warning, the rest as debug."""
        self.push_failures += 1
        self._failing += 1
        log.log(logging.WARNING if self._failing == 1 else logging.DEBUG, message)


def _retry_after_s(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds in a ``Retry-After`` header (RFC 9110 §10.2.3: delay-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


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
