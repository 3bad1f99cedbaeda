"""MeshProbe between real agents on loopback; EndpointProbe against a real local HTTP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from fleetscope import catalog
from fleetscope.agent import Agent
from fleetscope.collect import Sample
from fleetscope.collect.mesh import EndpointProbe, MeshProbe, connect_times


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def series(samples: Iterable[Sample]) -> dict[tuple[str, str], float]:
    """(metric, the label that varies: dst or endpoint) → value."""
    out: dict[tuple[str, str], float] = {}
    for s in samples:
        key = (s.name, s.labels.get("dst") or s.labels["endpoint"])
        assert key not in out
        out[key] = s.value
        metric = catalog.get(s.name)
        assert metric is not None and set(s.labels) == set(metric.labels)
    return out


@pytest.fixture
def agents() -> Iterator[dict[str, tuple[str, int]]]:
    """Three live agents serving /metrics on loopback: node name → (host, port)."""
    started = [Agent(name, [], listen=("127.0.0.1", 0)) for name in ("a", "b", "c")]
    try:
        yield {agent.node: agent.start_server() for agent in started}
    finally:
        for agent in started:
            agent.close()


def test_mesh_between_live_agents_and_a_dead_peer(agents: dict[str, tuple[str, int]]) -> None:
    peers = {**agents, "dead": ("127.0.0.1", closed_port())}
    for src in agents:
        got = series(MeshProbe(src, peers, attempts=3, timeout_s=2.0).collect())
        live = [dst for dst in agents if dst != src]  # a node does not probe itself
        for dst in live:
            assert got[("fleet_mesh_rtt_seconds", dst)] > 0
            assert got[("fleet_mesh_probe_loss_ratio", dst)] == 0
        assert got[("fleet_mesh_probe_loss_ratio", "dead")] == 1
        assert ("fleet_mesh_rtt_seconds", "dead") not in got
        assert set(got) == {
            *(("fleet_mesh_rtt_seconds", d) for d in live),
            *(("fleet_mesh_probe_loss_ratio", d) for d in [*live, "dead"]),
        }


def test_mesh_labels_and_partial_loss() -> None:
    def one_of_four_fails(
        host: str, port: int, attempts: int, timeout_s: float
    ) -> list[float | None]:
        assert (host, port, attempts) == ("10.0.0.2", 9400, 4)
        return [0.003, None, 0.001, 0.002]

    probe = MeshProbe("n1", {"n2": ("10.0.0.2", 9400)}, attempts=4, connect=one_of_four_fails)
    samples = probe.collect()
    assert {(s.name, tuple(sorted(s.labels.items())), s.value) for s in samples} == {
        ("fleet_mesh_rtt_seconds", (("dst", "n2"), ("src", "n1")), 0.002),  # median of 3 ok
        ("fleet_mesh_probe_loss_ratio", (("dst", "n2"), ("src", "n1")), 0.25),
    }


def test_mesh_uses_the_given_connect() -> None:
    """The injected measurement replaces the socket one: its answers per peer become the
    median RTT and the loss, and it gets the probe's attempts and timeout."""
    answers: dict[str, list[float | None]] = {
        "10.0.0.2": [0.0004, 0.0001, 0.0002],  # median 0.0002
        "10.0.0.3": [None, 0.0005, 0.0003],  # median of two: their mean
        "10.0.0.4": [None, None, None],  # no RTT, loss 1
    }
    calls: list[tuple[str, int, int, float]] = []

    def model(host: str, port: int, attempts: int, timeout_s: float) -> list[float | None]:
        calls.append((host, port, attempts, timeout_s))
        return answers[host]

    peers = {"n1": ("10.0.0.1", 9500), **{f"n{h[-1]}": (h, 9500) for h in answers}}
    got = series(MeshProbe("n1", peers, timeout_s=0.5, connect=model).collect())
    assert sorted(calls) == [(h, 9500, 3, 0.5) for h in sorted(answers)]  # not itself
    assert got == {
        ("fleet_mesh_rtt_seconds", "n2"): 0.0002,
        ("fleet_mesh_probe_loss_ratio", "n2"): 0.0,
        ("fleet_mesh_rtt_seconds", "n3"): (0.0005 + 0.0003) / 2,
        ("fleet_mesh_probe_loss_ratio", "n3"): 1 / 3,
        ("fleet_mesh_probe_loss_ratio", "n4"): 1.0,
    }
    assert MeshProbe("n1", peers).connect is connect_times  # the socket measurement by default


def test_mesh_probes_peers_concurrently() -> None:
    """Every peer's probe must be in flight at once: a barrier only they together can pass."""
    peers = {f"n{i}": (f"10.0.0.{i}", 9400) for i in range(2, 7)}
    barrier = threading.Barrier(len(peers), timeout=10)

    def waits_for_the_others(
        host: str, port: int, attempts: int, timeout_s: float
    ) -> list[float | None]:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return [None] * attempts
        return [0.001] * attempts

    got = series(MeshProbe("n1", peers, connect=waits_for_the_others).collect())
    assert all(got[("fleet_mesh_probe_loss_ratio", dst)] == 0 for dst in peers)


def test_connect_times_counts_each_attempt(agents: dict[str, tuple[str, int]]) -> None:
    host, port = agents["a"]
    live = connect_times(host, port, attempts=5, timeout_s=2.0)
    assert len(live) == 5 and all(t is not None and t > 0 for t in live)
    assert connect_times("127.0.0.1", closed_port(), attempts=2, timeout_s=2.0) == [None, None]


def test_mesh_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError):
        MeshProbe("n1", {}, attempts=0)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = {"/health": 200, "/broken": 503, "/missing": 404}.get(self.path, 500)
        body = b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def http_base(serve_handler: Any) -> Iterator[str]:
    with serve_handler(_Handler) as base:
        yield base


def test_endpoint_probe_up_down_and_unreachable(http_base: str) -> None:
    endpoints = {
        "llama-prod": f"{http_base}/health",
        "mistral-dev": f"{http_base}/broken",
        "qwen-test": f"{http_base}/missing",
        "gone": f"http://127.0.0.1:{closed_port()}/health",
    }
    probe = EndpointProbe("node1", endpoints, timeout_s=5.0)
    try:
        samples = probe.collect()
    finally:
        probe.close()
    got = series(samples)
    assert all(s.labels["node"] == "node1" for s in samples)
    up = {name: got[("fleet_probe_endpoint_up", name)] for name in endpoints}
    assert up == {"llama-prod": 1, "mistral-dev": 0, "qwen-test": 1, "gone": 0}
    latency = {n: v for (metric, n), v in got.items() if metric.endswith("latency_seconds")}
    assert set(latency) == {"llama-prod", "mistral-dev", "qwen-test"}  # none without a response
    assert all(v > 0 for v in latency.values())


def test_endpoint_probe_uses_and_keeps_a_given_client(http_base: str) -> None:
    with httpx.Client() as client:
        probe = EndpointProbe("node1", {"llama-prod": f"{http_base}/health"}, client=client)
        first = series(probe.collect())
        probe.close()
        assert not client.is_closed
        assert first[("fleet_probe_endpoint_up", "llama-prod")] == 1
        assert series(probe.collect())[("fleet_probe_endpoint_up", "llama-prod")] == 1


def test_endpoint_probe_closes_its_own_client(http_base: str) -> None:
    probe = EndpointProbe("node1", {"e": f"{http_base}/health"})
    probe.collect()
    probe.close()
    assert series(probe.collect())[("fleet_probe_endpoint_up", "e")] == 1  # reopens after close
    probe.close()


def test_endpoint_probe_bad_url_is_down_not_an_exception() -> None:
    probe = EndpointProbe("node1", {"typo": "htp://nowhere"})
    try:
        assert series(probe.collect()) == {("fleet_probe_endpoint_up", "typo"): 0}
    finally:
        probe.close()
