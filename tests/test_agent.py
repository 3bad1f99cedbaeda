"""The agent: one stamped batch per cycle, /metrics exposition, remote-write and events with
retry and backoff, through an in-memory queue or the on-disk WAL."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetscope import remotewrite
from fleetscope.agent import Agent, Backoff, _retry_after_s, default_collectors, events_url_for
from fleetscope.collect import Collector, Sample
from fleetscope.model import Event
from fleetscope.simulate.nvml import FakeDevice, FakeNVML
from fleetscope.store import SampleBatch

DATA = Path(__file__).resolve().parent / "data" / "collect" / "attribution" / "node1"
H100 = "NVIDIA H100 80GB HBM3"


class Broken:
    """A collector whose source is gone."""

    name = "broken"

    def collect(self) -> list[Sample]:
        raise RuntimeError("source vanished")


Status = int | tuple[int, dict[str, str]]  # an HTTP status, optionally with headers


class Receiver(ThreadingHTTPServer):
    """A real remote-write endpoint (``/api/v1/write``: decodes every body) and events intake
    (``/api/v1/records/events``: a JSON list); answers with ``statuses`` in turn, then 2xx.
    ``arrivals`` lists what was accepted, in order: a batch's timestamp or ``"events"``."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.batches: list[SampleBatch] = []
        self.events: list[list[dict[str, Any]]] = []
        self.arrivals: list[int | str] = []
        self.headers_seen: list[dict[str, str]] = []
        self.event_headers: list[dict[str, str]] = []
        self.statuses: list[Status] = []
        self.requests = 0
        self.got = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1/write"

    def times(self) -> list[int]:
        """The timestamp of every accepted batch, in arrival order."""
        return [int(b.t_ms[0]) for b in self.batches]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        planned = self.server.statuses.pop(0) if self.server.statuses else None
        status, extra = planned if isinstance(planned, tuple) else (planned, {})
        reply = b""
        if self.path == "/api/v1/records/events":
            status = status or 200
            if status < 300:
                events = json.loads(body)
                self.server.events.append(events)
                self.server.event_headers.append(dict(self.headers.items()))
                self.server.arrivals.append("events")
                reply = json.dumps({"accepted": len(events)}).encode()
        else:
            status = status or 204
            if status < 300:
                batch = remotewrite.decode(body)
                self.server.batches.append(batch)
                self.server.headers_seen.append(dict(self.headers.items()))
                self.server.arrivals.append(int(batch.t_ms[0]))
        if status < 300:
            self.server.got.set()
        self.send_response(status)
        for name, text in extra.items():
            self.send_header(name, text)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        return None


def serve(server: Receiver) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


def shut(server: Receiver, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = serve(server)
    yield server
    shut(server, thread)


def unused_url() -> str:
    """A remote-write URL on a loopback port that nothing listens on (connection refused)."""
    probe = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = probe.server_address[1]
    probe.server_close()
    return f"http://127.0.0.1:{port}/api/v1/write"


@pytest.fixture
def node_root(tmp_path: Path) -> Path:
    shutil.copytree(DATA, tmp_path / "root")
    return tmp_path / "root"


def node(root: Path, *extra: Collector, push_url: str | None = None, **kw: Any) -> Agent:
    nvml = FakeNVML(
        [
            FakeDevice(0, "GPU-aaa", H100, gpu_util_pct=50, processes=[(4242, 1 << 30)]),
            FakeDevice(1, "GPU-bbb", H100, power_mw=250_000),
        ]
    )
    collectors = [*default_collectors("node1", nvml=nvml, root=root), *extra]
    return Agent("node1", collectors, push_url=push_url, **kw)


def pending(agent: Agent) -> int:
    """Entries in the agent's outgoing queue."""
    assert agent.queue is not None
    return len(agent.queue)


def rows(batch: SampleBatch) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(batch.series[int(i)].items())): float(v)
        for i, v in zip(batch.series_index, batch.values, strict=True)
    }


def value(batch: SampleBatch, **labels: str) -> float | None:
    hits = [v for k, v in rows(batch).items() if labels.items() <= dict(k).items()]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def test_a_cycle_is_one_stamped_batch_and_a_broken_collector_costs_only_itself(
    node_root: Path,
) -> None:
    agent = node(node_root, Broken())
    try:
        batch = agent.collect_once(1_700_000_000_000)
        assert len(batch) > 0 and set(batch.t_ms.tolist()) == {1_700_000_000_000}
        assert value(batch, __name__="fleet_gpu_utilization_ratio", gpu="0") == 0.5
        assert value(batch, __name__="fleet_gpu_power_watts", gpu="1") == 250.0
        alloc = value(batch, __name__="fleet_gpu_allocation", gpu="0", job="1234", team="nlp")
        assert alloc == 1.0
        proc = value(batch, __name__="fleet_gpu_process_memory_bytes", pid="4242", job="1234")
        assert proc == 1 << 30
        errors = "fleet_agent_collector_errors_total"
        assert value(batch, __name__=errors, collector="broken", node="node1") == 1.0
        assert value(batch, __name__=errors, collector="gpu", node="node1") == 0.0
        assert value(batch, __name__="fleet_agent_cycle_seconds", node="node1") is not None
        assert value(batch, __name__="fleet_agent_collector_seconds", collector="gpu") is not None
        up = "fleet_agent_collector_up"
        assert value(batch, __name__=up, collector="broken") == 0.0
        assert value(batch, __name__=up, collector="gpu") == 1.0
        batch = agent.collect_once(1_700_000_015_000)
        assert value(batch, __name__=errors, collector="broken") == 2.0
    finally:
        agent.close()


def test_a_node_without_nvml_reports_its_gpu_collector_down(node_root: Path) -> None:
    import pynvml

    nvml = FakeNVML([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    agent = Agent("node1", default_collectors("node1", nvml=nvml, root=node_root))
    try:
        batch = agent.collect_once(1_700_000_000_000)
        assert value(batch, __name__="fleet_agent_collector_up", collector="gpu") == 0.0
        assert value(batch, __name__="fleet_agent_collector_up", collector="attribution") == 1.0
        assert value(batch, __name__="fleet_gpu_up") is None
    finally:
        agent.close()


def test_a_series_repeated_in_one_cycle_becomes_one_row(node_root: Path) -> None:
    class Twice:
        name = "twice"

        def collect(self) -> list[Sample]:
            return [Sample("fleet_node_load1", {"node": "node1"}, v) for v in (1.0, 2.0)]

    agent = Agent("node1", [Twice()])
    try:
        batch = agent.collect_once(5)
        assert value(batch, __name__="fleet_node_load1") == 2.0
        assert len(batch) == len(batch.series)
    finally:
        agent.close()


def test_metrics_endpoint_parses_and_has_help_and_type(node_root: Path) -> None:
    agent = node(node_root, Broken(), listen=("127.0.0.1", 0))
    try:
        host, port = agent.start_server()
        agent.collect_once()
        text = httpx.get(f"http://{host}:{port}/metrics").text
    finally:
        agent.close()
    assert "# HELP fleet_gpu_utilization_ratio " in text
    assert "# TYPE fleet_gpu_utilization_ratio gauge" in text
    assert "# TYPE fleet_gpu_energy_joules_total counter" in text
    assert "# TYPE fleet_gpu_allocation gauge" in text  # info series are gauges in text format
    families = {f.name: f for f in text_string_to_metric_families(text)}
    util = families["fleet_gpu_utilization_ratio"]
    assert util.type == "gauge" and util.documentation
    assert {s.labels["gpu"]: s.value for s in util.samples} == {"0": 0.5, "1": 0.0}
    energy = families["fleet_gpu_energy_joules"]  # the parser strips a counter's _total
    assert energy.type == "counter" and energy.samples[0].name == "fleet_gpu_energy_joules_total"
    errors = families["fleet_agent_collector_errors"]
    assert {s.labels["collector"]: s.value for s in errors.samples}["broken"] == 1.0
    for family in families.values():
        assert family.documentation, family.name


def test_push_delivers_the_samples(node_root: Path, receiver: Receiver) -> None:
    agent = node(node_root, push_url=receiver.url)
    try:
        sent = agent.run_cycle(1_700_000_000_000)
    finally:
        agent.close()
    (got,) = receiver.batches
    assert rows(got) == rows(sent) and set(got.t_ms.tolist()) == {1_700_000_000_000}
    assert receiver.headers_seen[0]["Content-Encoding"] == "snappy"
    assert receiver.headers_seen[0]["X-Prometheus-Remote-Write-Version"].startswith("0.1")
    assert agent.pushed_samples == len(sent) and pending(agent) == 0


def test_a_failed_push_is_retried_next_cycle_in_order(node_root: Path, receiver: Receiver) -> None:
    receiver.statuses = [503]
    agent = node(node_root, push_url=receiver.url)
    try:
        first = agent.run_cycle(1_000)
        assert receiver.batches == [] and pending(agent) == 1 and agent.push_failures == 1
        second = agent.run_cycle(2_000)
    finally:
        agent.close()
    assert [b.t_ms[0] for b in receiver.batches] == [1_000, 2_000]
    assert rows(receiver.batches[0]) == rows(first)
    assert pending(agent) == 0 and agent.pushed_samples == len(first) + len(second)
    failures = value(second, __name__="fleet_agent_push_failures_total")
    assert failures == 1.0


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "wal"])
def test_an_unreachable_endpoint_keeps_a_bounded_queue(
    node_root: Path, tmp_path: Path, on_disk: bool
) -> None:
    wal_dir = tmp_path / "wal" if on_disk else None
    agent = node(node_root, push_url=unused_url(), wal_dir=wal_dir)
    assert agent.queue is not None
    try:
        sizes = [len(agent.run_cycle(1))]
        one = agent.queue.pending_bytes
        agent.queue.max_bytes = int(2.5 * one)  # type: ignore[attr-defined]
        if on_disk:
            agent.queue.segment_bytes = one  # type: ignore[attr-defined]
        sizes += [len(agent.run_cycle(t)) for t in (2, 3, 4)]
        pending = []
        while (entry := agent.queue.peek()) is not None:
            pending.append(int(remotewrite.decode(entry.payload).t_ms[0]))
            agent.queue.ack(entry)
    finally:
        agent.close()
    assert pending == [3, 4]
    assert agent.dropped_samples == sizes[0] + sizes[1]
    assert agent.push_failures == 4


def test_a_refused_batch_is_dropped_not_retried(node_root: Path, receiver: Receiver) -> None:
    receiver.statuses = [400]
    agent = node(node_root, push_url=receiver.url)
    try:
        first = agent.run_cycle(1)
        agent.run_cycle(2)
    finally:
        agent.close()
    assert [int(b.t_ms[0]) for b in receiver.batches] == [2]
    assert agent.dropped_samples == len(first) and pending(agent) == 0


def test_run_cycles_until_stopped(node_root: Path, receiver: Receiver) -> None:
    agent = node(node_root, push_url=receiver.url, interval_s=0.05, listen=("127.0.0.1", 0))
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        for _ in range(3):
            assert receiver.got.wait(10)
            receiver.got.clear()
    finally:
        agent.stop()
        thread.join(10)
    assert not thread.is_alive()
    times = [int(b.t_ms[0]) for b in receiver.batches]
    assert len(times) >= 3 and times == sorted(times)
    assert np.all(np.diff(times) > 0)


class Jobs:
    """GPU-aaa's allocation series: one cycle after another, the jobs in ``plan`` hold it
    (``None``: the collector raises that cycle)."""

    name = "jobs"

    def __init__(self, plan: list[list[str] | None]) -> None:
        self.plan = plan

    def collect(self) -> list[Sample]:
        jobs = self.plan.pop(0)
        if jobs is None:
            raise RuntimeError("prolog directory unreadable")
        labels = {"node": "node1", "gpu_uuid": "GPU-aaa", "team": "nlp"}
        return [Sample("fleet_gpu_allocation", {**labels, "job": j}, 1.0) for j in jobs]


def stale(batch: SampleBatch) -> dict[str, int]:
    """The jobs whose allocation series got a staleness marker, with its time."""
    bits = batch.values.view(np.uint64) == np.uint64(0x7FF0000000000002)
    return {batch.series[int(i)]["job"]: int(t)
            for i, t in zip(batch.series_index[bits], batch.t_ms[bits], strict=True)}  # fmt: skip


def test_a_series_gone_since_the_last_cycle_gets_one_staleness_marker(receiver: Receiver) -> None:
    plan: list[list[str] | None] = [["a"], ["a"], ["b"], ["b", "c"], None, ["b"], []]
    agent = Agent("node1", [Jobs(plan)], push_url=receiver.url, listen=("127.0.0.1", 0))
    try:
        host, port = agent.start_server()
        sent = [agent.run_cycle(1_000 * k) for k in range(7)]
        text = httpx.get(f"http://{host}:{port}/metrics").text
    finally:
        agent.close()
    # a at 0-1, b at 2-3 and 5, c at 3; the failed cycle 4 loses all, the last one b
    assert [stale(b) for b in sent] == [{}, {}, {"a": 2_000}, {}, {"b": 4_000, "c": 4_000}, {},
                                        {"b": 6_000}]  # fmt: skip
    assert [stale(b) for b in receiver.batches] == [stale(b) for b in sent]  # bits survive
    up = [value(b, __name__="fleet_agent_collector_up", collector="jobs") for b in sent]
    assert up == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]  # the agent's own series never go stale
    assert "NaN" not in text and "fleet_gpu_allocation{" not in text  # /metrics: readings only


# -- delivery: WAL, backoff, events ----------------------------------------------------------


class Ticks:
    """A deterministic collector: one load sample per cycle, counting up; optionally events."""

    name = "ticks"

    def __init__(self, events_every: int = 0) -> None:
        self.n = 0
        self.events_every = events_every
        self.pending: list[Event] = []

    def collect(self) -> list[Sample]:
        self.n += 1
        if self.events_every and self.n % self.events_every == 0:
            at = datetime.fromtimestamp(self.n, UTC)
            self.pending.append(Event(time=at, kind="xid", subject="GPU-aaa", attrs={"n": self.n}))
        return [Sample("fleet_node_load1", {"node": "node1"}, float(self.n))]

    def drain_events(self) -> list[Event]:
        out, self.pending = self.pending, []
        return out


class Recording(Agent):
    """An agent that remembers the timestamp of every batch it queued."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cycles: list[int] = []
        self.cycled = threading.Event()

    def enqueue_cycle(self, now_ms: int | None = None) -> SampleBatch:
        batch = super().enqueue_cycle(now_ms)
        self.cycles.append(int(batch.t_ms[0]))
        self.cycled.set()
        return batch


def wait_for(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_wal_keeps_the_queue_across_a_restart_and_sends_each_batch_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    down = Agent("node1", [Ticks()], push_url=unused_url(), wal_dir=tmp_path / "wal")
    try:
        sent = [down.run_cycle(1_000 * k) for k in range(1, 6)]
    finally:
        down.close()
    assert down.push_failures == 5
    up = Agent("node1", [Ticks()], push_url=receiver.url, wal_dir=tmp_path / "wal")
    try:
        assert up.queue is not None and up.queue.pending_samples == sum(len(b) for b in sent)
        last = up.run_cycle(6_000)
    finally:
        up.close()
    assert receiver.times() == [1_000, 2_000, 3_000, 4_000, 5_000, 6_000]
    assert [rows(b) for b in receiver.batches] == [rows(b) for b in [*sent, last]]
    assert up.pushed_samples == sum(len(b) for b in [*sent, last])
    assert value(last, __name__="fleet_agent_wal_pending_samples") == sum(len(b) for b in sent)


def test_run_keeps_collecting_through_an_outage_then_delivers_every_batch_once_in_order(
    tmp_path: Path,
) -> None:
    url = unused_url()
    port = int(urllib.parse.urlsplit(url).port or 0)
    agent = Recording("node1", [Ticks()], push_url=url, interval_s=0.02,
                      wal_dir=tmp_path / "wal", backoff=Backoff(0.01, 0.05))  # fmt: skip
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        wait_for(lambda: len(agent.cycles) >= 8 and agent.push_failures >= 1,
                 "cycles and tries while connections are refused")  # fmt: skip
        assert agent.pushed_samples == 0
        server = Receiver(port)
        server.statuses = [503, 503, (429, {"Retry-After": "0"}), 500, (503, {"Retry-After": "0"})]
        server_thread = serve(server)
        try:
            wait_for(lambda: len(server.batches) >= 12, "delivery after the endpoint recovered")
        finally:
            agent.stop()
            thread.join(20)
            shut(server, server_thread)
    finally:
        agent.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert server.requests >= len(server.batches) + 5  # the five refusals were retried
    assert agent.pushed_samples == sum(len(b) for b in server.batches)
    first = server.times()
    # what run() had not sent when it stopped stays in the WAL; a restarted agent sends it
    again = Agent("node1", [Ticks()], push_url=url, wal_dir=tmp_path / "wal")
    server = Receiver(port)
    server_thread = serve(server)
    try:
        assert again.flush()
    finally:
        again.close()
        shut(server, server_thread)
    assert first + server.times() == agent.cycles  # every cycle exactly once, in order
    assert len(agent.cycles) >= 12 and agent.cycles == sorted(set(agent.cycles))
    assert again.pushed_samples == sum(len(b) for b in server.batches)


def test_a_long_outage_backs_off_exponentially_with_jitter_and_honours_retry_after(
    tmp_path: Path, receiver: Receiver
) -> None:
    delays: list[float] = []
    agent = Agent("node1", [Ticks()], push_url=receiver.url, wal_dir=tmp_path / "wal",
                  backoff=Backoff(1.0, 30.0), sleep=delays.append)  # fmt: skip
    try:
        queued = [agent.enqueue_cycle(15_000 * k) for k in range(1, 5)]
        # over an hour of failures in the sender's time; then one Retry-After; then a success,
        # after which a new failure starts the backoff from the beginning again
        receiver.statuses = [*[503] * 250, (429, {"Retry-After": "120"}), 204, 502]
        assert agent.deliver()
    finally:
        agent.close()
    assert receiver.times() == [15_000, 30_000, 45_000, 60_000]
    assert [rows(b) for b in receiver.batches] == [rows(b) for b in queued]
    assert len(delays) == 252 and agent.push_failures == 252
    for attempt, delay in enumerate(delays[:250]):
        ceiling = min(30.0, 2.0**attempt)
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    assert len(set(delays[10:250])) > 200  # jittered, not one fixed wait
    assert sum(delays[:250]) > 3600  # a long outage (each wait ≥ 15 s once capped), fast here
    assert delays[250] == 120.0  # Retry-After outweighs the 30 s cap
    assert 0.5 <= delays[251] <= 1.0  # the success reset the backoff


def test_the_sender_drops_a_refused_batch_counts_it_and_the_count_survives_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    agent = Agent("node1", [Ticks()], push_url=receiver.url, wal_dir=tmp_path / "wal",
                  sleep=lambda s: None)  # fmt: skip
    try:
        refused = agent.enqueue_cycle(1_000)
        agent.enqueue_cycle(2_000)
        receiver.statuses = [400, 503]
        assert agent.deliver()
        assert receiver.requests == 3  # 400 once (never retried), 503 then 204 for the second
    finally:
        agent.close()
    assert receiver.times() == [2_000]
    assert agent.dropped_samples == len(refused) and agent.push_failures == 2
    later = Agent("node1", [Ticks()], push_url=receiver.url, wal_dir=tmp_path / "wal")
    try:
        batch = later.run_cycle(3_000)
    finally:
        later.close()
    assert value(batch, __name__="fleet_agent_dropped_samples_total") == len(refused)
    assert receiver.times() == [2_000, 3_000]


def test_self_metrics_describe_the_queue(tmp_path: Path) -> None:
    agent = Agent("node1", [Ticks()], push_url=unused_url(), wal_dir=tmp_path / "wal")
    try:
        first = agent.run_cycle(1_000)
        assert agent.queue is not None
        pending_bytes = agent.queue.pending_bytes
        second = agent.run_cycle(2_000)
    finally:
        agent.close()
    assert value(first, __name__="fleet_agent_wal_pending_samples", node="node1") == 0.0
    assert value(first, __name__="fleet_agent_wal_bytes") == 0.0
    assert value(first, __name__="fleet_agent_wal_oldest_seconds") == 0.0
    assert value(second, __name__="fleet_agent_wal_pending_samples") == len(first)
    assert value(second, __name__="fleet_agent_wal_bytes") == pending_bytes > len(first)
    oldest = value(second, __name__="fleet_agent_wal_oldest_seconds")
    assert oldest is not None and oldest >= 0.0
    assert value(second, __name__="fleet_agent_push_failures_total") == 1.0
    bare = Agent("node1", [Ticks()])  # no push: no queue, no queue metrics
    try:
        assert value(bare.collect_once(1), __name__="fleet_agent_wal_bytes") is None
    finally:
        bare.close()


def test_events_are_posted_as_json_in_queue_order_with_the_same_retry_rules(
    tmp_path: Path, receiver: Receiver
) -> None:
    ticks = Ticks(events_every=2)
    agent = Agent("node1", [ticks], push_url=receiver.url, wal_dir=tmp_path / "wal",
                  sleep=lambda s: None)  # fmt: skip
    try:
        for k in range(1, 7):
            agent.enqueue_cycle(1_000 * k)
        # write 1 ok, write 2 ok, events(2) 503 then ok, write 3, write 4, events(4) 422: dropped
        receiver.statuses = [204, 204, 503, 200, 204, 204, 422]
        assert agent.deliver()
    finally:
        agent.close()
    assert receiver.arrivals == [1_000, 2_000, "events", 3_000, 4_000, 5_000, 6_000, "events"]
    assert receiver.events == [
        [{"time": "1970-01-01T00:00:02Z", "kind": "xid", "subject": "GPU-aaa", "attrs": {"n": 2}}],
        [{"time": "1970-01-01T00:00:06Z", "kind": "xid", "subject": "GPU-aaa", "attrs": {"n": 6}}],
    ]
    assert all(h["Content-Type"] == "application/json" for h in receiver.event_headers)
    assert agent.pushed_events == 2 and agent.dropped_samples == 0  # events are not samples
    assert agent.push_failures == 2


def test_events_without_a_push_url_are_drained_and_discarded() -> None:
    ticks = Ticks(events_every=1)
    agent = Agent("node1", [ticks])
    try:
        agent.run_cycle(1)
        agent.run_cycle(2)
    finally:
        agent.close()
    assert ticks.pending == [] and agent.queue is None


@pytest.mark.parametrize(
    ("push_url", "events_url"),
    [
        pytest.param("http://fs:8000/api/v1/write", "http://fs:8000/api/v1/records/events",
                     id="plain"),
        pytest.param("https://x/prefix/api/v1/write?tenant=a",
                     "https://x/prefix/api/v1/records/events?tenant=a", id="prefix-and-query"),
        pytest.param("http://vm:8428/api/v1/import/prometheus", None, id="other-path"),
    ],
)  # fmt: skip
def test_events_url_for(push_url: str, events_url: str | None) -> None:
    assert events_url_for(push_url) == events_url


def test_an_explicit_events_url_wins(receiver: Receiver) -> None:
    other = Receiver()
    thread = serve(other)
    events_url = f"http://127.0.0.1:{other.server_address[1]}/api/v1/records/events"
    agent = Agent("node1", [Ticks(events_every=1)], push_url=receiver.url, events_url=events_url)
    try:
        agent.run_cycle(1_000)
    finally:
        agent.close()
        shut(other, thread)
    assert receiver.arrivals == [1_000] and other.arrivals == ["events"]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        pytest.param("120", 120.0, id="delay-seconds"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 60.0, id="http-date"),
        pytest.param("Wed, 21 Oct 2015 07:26:00 GMT", 0.0, id="past-date"),
        pytest.param("soon", None, id="garbage"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 27, tzinfo=UTC).timestamp()
    assert _retry_after_s(header, lambda: now) == seconds
