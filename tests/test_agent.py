"""The agent: one stamped batch per cycle, /metrics exposition, and remote-write with retry."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetscope import remotewrite
from fleetscope.agent import Agent, default_collectors
from fleetscope.collect import Collector, Sample
from fleetscope.simulate.nvml import FakeDevice, FakeNVML
from fleetscope.store import SampleBatch

DATA = Path(__file__).resolve().parent / "data" / "collect" / "attribution" / "node1"
H100 = "NVIDIA H100 80GB HBM3"


class Broken:
    """A collector whose source is gone."""

    name = "broken"

    def collect(self) -> list[Sample]:
        raise RuntimeError("source vanished")


class Receiver(ThreadingHTTPServer):
    """A real remote-write endpoint: decodes every body, answers with ``statuses`` in turn."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.batches: list[SampleBatch] = []
        self.headers_seen: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.got = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1/write"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.server.statuses.pop(0) if self.server.statuses else 204
        if status < 300:
            self.server.batches.append(remotewrite.decode(body))
            self.server.headers_seen.append(dict(self.headers.items()))
            self.server.got.set()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


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
    assert agent.pushed_samples == len(sent) and not agent.queue


def test_a_failed_push_is_retried_next_cycle_in_order(node_root: Path, receiver: Receiver) -> None:
    receiver.statuses = [503]
    agent = node(node_root, push_url=receiver.url)
    try:
        first = agent.run_cycle(1_000)
        assert receiver.batches == [] and len(agent.queue) == 1 and agent.push_failures == 1
        second = agent.run_cycle(2_000)
    finally:
        agent.close()
    assert [b.t_ms[0] for b in receiver.batches] == [1_000, 2_000]
    assert rows(receiver.batches[0]) == rows(first)
    assert not agent.queue and agent.pushed_samples == len(first) + len(second)
    failures = value(second, __name__="fleet_agent_push_failures_total")
    assert failures == 1.0


def test_an_unreachable_endpoint_keeps_a_bounded_queue(node_root: Path) -> None:
    probe = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    url = f"http://127.0.0.1:{probe.server_address[1]}/api/v1/write"
    probe.server_close()  # nothing listens there any more
    agent = node(node_root, push_url=url, max_queued_batches=2)
    try:
        sizes = [len(agent.run_cycle(t)) for t in (1, 2, 3, 4)]
    finally:
        agent.close()
    assert [int(b.t_ms[0]) for b in agent.queue] == [3, 4]
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
    assert agent.dropped_samples == len(first) and not agent.queue


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
