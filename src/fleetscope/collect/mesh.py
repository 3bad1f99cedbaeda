"""Active network probes run by the agent: a TCP connect mesh between nodes, and endpoint latency.

:class:`MeshProbe` measures node-to-node reachability and round-trip time the way a TCP client
sees it. Every cycle it opens ``attempts`` TCP connections to each peer and closes them; the
time ``connect()`` takes is one SYN → SYN-ACK round trip plus the two kernels' handling (the
three-way handshake completes on the client when the SYN-ACK arrives), measured with
:func:`time.perf_counter`. The target on a peer is any TCP listener, normally that node's agent
``/metrics`` port, so the mesh needs no extra daemon. Each peer's address is resolved once per
cycle, outside the timing. Series, labelled with the probing node ``src`` and the peer ``dst``:

- ``fleet_mesh_rtt_seconds{src, dst}``: the median connect time of the cycle's successful
  attempts; omitted when every attempt failed (a dead peer has no RTT, not an RTT of 0).
- ``fleet_mesh_probe_loss_ratio{src, dst}``: failed attempts / attempts (refused, timed out
  after ``timeout_s``, unreachable, or the name did not resolve).

The measurement is injectable: ``connect`` (default :func:`connect_times`) is called as
``connect(host, port, attempts, timeout_s)`` and returns each attempt's seconds or ``None``; the
simulator passes one that answers from its network model.

Peers are probed concurrently on a small thread pool (attempts to one peer run one after
another), so a peer that swallows SYNs costs the cycle about ``attempts × timeout_s`` once, not
once per peer. A peer named like the probing node itself is skipped. Each probe leaves a
TIME_WAIT socket on the prober for the usual 60 s (attempts × peers per cycle).

:class:`EndpointProbe` measures how long an inference endpoint takes to answer an HTTP ``GET``
(to its health or models URL, say) from this node: the time from sending the request to
receiving the response headers (the body is not read):

- ``fleet_probe_endpoint_latency_seconds{node, endpoint}``: omitted when no response came
  (connection refused, timeout, TLS or protocol error).
- ``fleet_probe_endpoint_up{node, endpoint}``: 1 when the response status is below 500 (the
  server is up, even when it says 4xx), else 0 (a 5xx or no response).

Both are collectors (``collect`` returns samples and never raises for one peer or endpoint);
``collect`` blocks for at most about ``attempts × timeout_s`` (mesh) or ``timeout_s`` (endpoints).
"""

from __future__ import annotations

import logging
import socket
import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import httpx

from fleetscope.collect import Sample

__all__ = ["Connect", "EndpointProbe", "MeshProbe", "connect_times"]

log = logging.getLogger(__name__)

Connect = Callable[[str, int, int, float], list[float | None]]
"""``(host, port, attempts, timeout_s)`` → seconds each connect took, ``None`` for a failure."""


def connect_times(host: str, port: int, attempts: int, timeout_s: float) -> list[float | None]:
    """Seconds each of ``attempts`` TCP connects to ``host:port`` took; ``None`` for a failure.

    The address is resolved once, before timing; a name that does not resolve fails every
    attempt.
    """
    try:
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return [None] * attempts
    if not resolved:
        return [None] * attempts
    family, type_, proto, _, address = resolved[0]
    out: list[float | None] = []
    for _ in range(attempts):
        with socket.socket(family, type_, proto) as sock:
            sock.settimeout(timeout_s)
            started = time.perf_counter()
            try:
                sock.connect(address)
            except OSError:
                out.append(None)
                continue
            out.append(time.perf_counter() - started)
    return out


class MeshProbe:
    """TCP connect RTT and loss from ``node`` to each peer (see the module docstring).

    ``peers``: fleet node name → (host, port) of a TCP listener on it (its agent's ``/metrics``).
    ``connect``: the measurement (:data:`Connect`, default :func:`connect_times`); it is called
    from the probe's threads, one call per peer and cycle, several at once.
    """

    name = "mesh"

    def __init__(
        self,
        node: str,
        peers: Mapping[str, tuple[str, int]],
        attempts: int = 3,
        timeout_s: float = 1.0,
        *,
        max_workers: int = 16,
        connect: Connect = connect_times,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.node = node
        self.peers = dict(peers)
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self.connect = connect

    def collect(self) -> list[Sample]:
        targets = {dst: addr for dst, addr in self.peers.items() if dst != self.node}
        if not targets:
            return []
        workers = max(1, min(self.max_workers, len(targets)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mesh-probe") as pool:
            futures = {
                dst: pool.submit(self.connect, host, port, self.attempts, self.timeout_s)
                for dst, (host, port) in targets.items()
            }
            results = {dst: future.result() for dst, future in futures.items()}
        out: list[Sample] = []
        for dst, times in results.items():
            labels = {"src": self.node, "dst": dst}
            ok = [t for t in times if t is not None]
            if ok:
                out.append(Sample("fleet_mesh_rtt_seconds", labels, statistics.median(ok)))
            loss = (self.attempts - len(ok)) / self.attempts
            out.append(Sample("fleet_mesh_probe_loss_ratio", labels, loss))
        return out


class EndpointProbe:
    """HTTP GET latency and availability of inference endpoints (see the module docstring).

    ``endpoints``: endpoint name → URL. ``client``: an httpx client to use (not closed by
    :meth:`close`); by default the probe makes its own.
    """

    name = "endpoint_probe"

    def __init__(
        self,
        node: str,
        endpoints: Mapping[str, str],
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
        *,
        max_workers: int = 8,
    ) -> None:
        self.node = node
        self.endpoints = dict(endpoints)
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self._client = client
        self._own_client = client is None
        self._logged: set[str] = set()

    def collect(self) -> list[Sample]:
        if not self.endpoints:
            return []
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s)
        client = self._client
        workers = max(1, min(self.max_workers, len(self.endpoints)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="endpoint-probe") as pool:
            futures = {
                name: pool.submit(self._probe, client, name, url)
                for name, url in self.endpoints.items()
            }
            results = {name: future.result() for name, future in futures.items()}
        out: list[Sample] = []
        for name, (latency, up) in results.items():
            labels = {"node": self.node, "endpoint": name}
            if latency is not None:
                out.append(Sample("fleet_probe_endpoint_latency_seconds", labels, latency))
            out.append(Sample("fleet_probe_endpoint_up", labels, float(up)))
        return out

    def close(self) -> None:
        """Close the HTTP client the probe made (a client passed in stays open)."""
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    def _probe(self, client: httpx.Client, name: str, url: str) -> tuple[float | None, bool]:
        """(seconds to the response headers or ``None``, whether the status is below 500)."""
        started = time.perf_counter()
        try:
            with client.stream("GET", url, timeout=self.timeout_s) as response:
                latency = time.perf_counter() - started
                status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            key = f"{name}:{type(err).__name__}"
            if key not in self._logged:
                self._logged.add(key)
                log.warning("probe of endpoint %s (%s) failed: %s (logged once)", name, url, err)
            return None, False
        return latency, status < 500
