"""Node analytics on a two-node fleet with known answers, through the embedded evaluator.

Samples go into a :class:`FakeMetricStore` every 15 s for the ten minutes before ``AT``; counters
grow linearly, so every ``rate(…[5m])`` is exactly their slope and every ``increase(…[10m])``
their whole growth. XID events come from a :class:`FakeRecordStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple
from datetime import UTC, datetime

import pytest

from fleetscope.analyze import nodes as an
from fleetscope.model import Event
from fleetscope.query import Engine, QueryError, QueryResult
from fleetscope.query.engine import Evaluator, parse
from fleetscope.store import FakeMetricStore, FakeRecordStore, SampleBatch

T0 = 1_700_006_400_000
S = 1_000
M = 60_000
AT = T0 + 10 * M
WINDOW, WINDOW_MS = "10m", 10 * M
MODEL = "NVIDIA H100 80GB HBM3"

Row = tuple[Mapping[str, str], int, float]


def times() -> range:
    return range(T0, AT + 1, 15 * S)


def gauge(name: str, labels: Mapping[str, str], value: float) -> list[Row]:
    return [({"__name__": name, **labels}, t, value) for t in times()]


def counter(name: str, labels: Mapping[str, str], per_s: float, base: float = 0.0) -> list[Row]:
    return [({"__name__": name, **labels}, t, base + per_s * (t - T0) / S) for t in times()]


def step(name: str, labels: Mapping[str, str], before: float, after: float) -> list[Row]:
    """A counter that jumps from ``before`` to ``after`` halfway through."""
    mid = T0 + 5 * M
    return [({"__name__": name, **labels}, t, before if t < mid else after) for t in times()]


def gpu(node: str, index: str, uuid: str) -> dict[str, str]:
    return {"node": node, "gpu": index, "gpu_uuid": uuid, "gpu_model": MODEL}


G0, G1, G2 = gpu("n1", "0", "GPU-0"), gpu("n1", "1", "GPU-1"), gpu("n2", "0", "GPU-2")


def alloc(g: Mapping[str, str], job: str, team: str, user: str) -> list[Row]:
    labels = {**g, "job": job, "team": team, "user": user, "workload": "training",
              "tier": "production"}  # fmt: skip
    return gauge(an.ALLOCATION, labels, 1.0)


def proc(g: Mapping[str, str], pid: str, job: str, user: str, memory: float) -> list[Row]:
    return gauge(an.PROCESS_MEMORY, {**g, "pid": pid, "job": job, "user": user}, memory)


def fleet_rows() -> list[Row]:
    n1, n2 = {"node": "n1"}, {"node": "n2"}
    disk = {"node": "n1", "device": "nvme0n1"}
    eth = {"node": "n1", "interface": "eth0"}
    ib = {"node": "n1", "device": "mlx5_0", "port": "1"}
    nfs = {"node": "n1", "mount": "/data", "export": "nas:/data"}
    rows: list[Row] = [
        *gauge("fleet_gpu_up", G0, 1), *gauge("fleet_gpu_up", G1, 1),
        *gauge("fleet_gpu_up", G2, 0),
        *gauge("fleet_gpu_utilization_ratio", G0, 0.9),
        *gauge("fleet_gpu_utilization_ratio", G1, 0.1),
        *gauge("fleet_gpu_memory_used_bytes", G0, 40e9),
        *gauge("fleet_gpu_memory_used_bytes", G1, 10e9),
        *gauge("fleet_gpu_memory_total_bytes", G0, 80e9),
        *gauge("fleet_gpu_memory_total_bytes", G1, 80e9),
        *gauge("fleet_gpu_temperature_celsius", G0, 61),
        *gauge("fleet_gpu_temperature_celsius", G1, 45),
        *gauge("fleet_gpu_power_watts", G0, 500),
        *gauge("fleet_gpu_power_watts", G1, 100),
        *alloc(G0, "j1", "vision", "ana"), *alloc(G1, "j2", "llm", "li"),
        *proc(G0, "101", "j1", "ana", 30e9), *proc(G0, "102", "j1", "ana", 10e9),
        *proc(G1, "201", "j2", "li", 8e9), *proc(G1, "7", "", "root", 1e9),
        *gauge("fleet_node_cpu_utilization_ratio", n1, 0.25),
        *gauge("fleet_node_cpu_utilization_ratio", n2, 0.05),
        *gauge("fleet_node_memory_used_bytes", n1, 100e9),
        *gauge("fleet_node_memory_total_bytes", n1, 512e9),
        *gauge("fleet_node_load1", n1, 12.5),
        *counter("fleet_disk_read_bytes_total", disk, 1e6),
        *counter("fleet_disk_written_bytes_total", disk, 2e6),
        *counter("fleet_disk_reads_completed_total", disk, 100),
        *counter("fleet_disk_writes_completed_total", disk, 50),
        *counter("fleet_disk_io_time_seconds_total", disk, 0.25),
        *gauge("fleet_filesystem_size_bytes", {"node": "n1", "mount": "/"}, 1000),
        *gauge("fleet_filesystem_avail_bytes", {"node": "n1", "mount": "/"}, 250),
        *counter("fleet_network_receive_bytes_total", eth, 125e6),
        *counter("fleet_network_transmit_bytes_total", eth, 12.5e6),
        *gauge("fleet_network_speed_bytes", eth, 1.25e9),
        *counter("fleet_network_receive_drop_total", eth, 2),
        *counter("fleet_network_transmit_drop_total", eth, 0),
        *counter("fleet_network_receive_errs_total", eth, 0),
        *counter("fleet_network_transmit_errs_total", eth, 0.5),
        *counter("fleet_infiniband_port_receive_bytes_total", ib, 5e9),
        *counter("fleet_infiniband_port_transmit_bytes_total", ib, 2.5e9),
        *gauge("fleet_infiniband_port_rate_bytes", ib, 25e9),
        *step("fleet_infiniband_link_downed_total", ib, 0, 1),
        *step("fleet_infiniband_symbol_errors_total", ib, 3, 10),
        *counter("fleet_nfs_read_bytes_total", nfs, 50e6),
        *counter("fleet_nfs_written_bytes_total", nfs, 10e6),
        *counter("fleet_nfs_rpc_operations_total", {**nfs, "op": "READ"}, 40),
        *counter("fleet_nfs_rpc_operations_total", {**nfs, "op": "WRITE"}, 10),
        *counter("fleet_nfs_rpc_rtt_seconds_total", {**nfs, "op": "READ"}, 0.4),
        *counter("fleet_nfs_rpc_rtt_seconds_total", {**nfs, "op": "WRITE"}, 0.6),
        *gauge("fleet_mesh_rtt_seconds", {"src": "n1", "dst": "n2"}, 0.0002),
        *gauge("fleet_mesh_rtt_seconds", {"src": "n2", "dst": "n1"}, 0.0003),
        *gauge("fleet_mesh_probe_loss_ratio", {"src": "n1", "dst": "n2"}, 0.0),
        *gauge("fleet_mesh_probe_loss_ratio", {"src": "n2", "dst": "n1"}, 0.1),
        *step(an.XID, {**G1, "xid": "79", "action": "reset"}, 0, 2),
        *gauge(an.XID, {**G0, "xid": "13", "action": "none"}, 1),  # no new XID in the window
        *gauge("fleet_agent_collector_up", {"node": "n1", "collector": "gpu"}, 1),
        *gauge("fleet_agent_collector_up", {"node": "n1", "collector": "infiniband"}, 0),
        *gauge("fleet_agent_wal_pending_samples", n1, 1500),
        *step("fleet_agent_dropped_samples_total", n1, 0, 30),
    ]  # fmt: skip
    return rows


def numbers(row: object) -> list[object]:
    """The fields of a row that are not labels (numbers or None), in order."""
    return [v for v in astuple(row) if not isinstance(v, str)]  # type: ignore[call-overload]


def engine_over(rows: list[Row]) -> Evaluator:
    store = FakeMetricStore()
    store.append(SampleBatch.from_rows(rows))
    return Evaluator(store)


@pytest.fixture(scope="module")
def engine() -> Evaluator:
    return engine_over(fleet_rows())


def xid_event(node: str, t_ms: int, **attrs: object) -> Event:
    return Event(
        time=datetime.fromtimestamp(t_ms / 1000, UTC), kind="xid", subject=node,
        attrs={"node": node, **attrs},
    )  # fmt: skip


@pytest.fixture
def records() -> FakeRecordStore:
    r = FakeRecordStore()
    r.add_events(
        [
            xid_event("n1", AT - 2 * M, gpu="1", gpu_uuid="GPU-1", xid=79, action="reset",
                      job="j2", team="llm", user="li", message="GPU has fallen off the bus",
                      pid=4242, process="python"),
            xid_event("n1", AT - 1 * M, gpu="1", gpu_uuid="GPU-1", xid=79, job="j2"),
            xid_event("n2", AT - 1 * M, gpu="0", xid=48),  # another node
            xid_event("n1", AT - 20 * M, gpu="0", xid=13),  # before the window
            Event(time=datetime.fromtimestamp(AT / 1000 - 30, UTC), kind="checkpoint",
                  subject="n1", attrs={"node": "n1"}),
        ]
    )  # fmt: skip
    return r


# ----------------------------------------------------------------------------- PromQL text


def test_every_query_parses_and_names_the_node() -> None:
    queries = [
        *an.promql_inventory().values(),
        *an.promql_inventory('we"ird').values(),
        *an.promql_gpus("n1").values(),
        *an.promql_gpus().values(),
        *an.promql_disks("n1").values(),
        *an.promql_filesystems("n1").values(),
        *an.promql_nics("n1").values(),
        *an.promql_ib("n1", "1h").values(),
        *an.promql_nfs("n1").values(),
        *an.promql_mesh(["n1", "gpu-node.2"]).values(),
        an.promql_mesh_peers("n1"),
        an.promql_xids("n1", "1h"),
        *an.promql_agent("n1", "1h").values(),
        an.promql_utilization_history("n1"),
    ]
    for query in queries:
        parse(query)
    assert an.selector("fleet_gpu_up", 'a"b\\c') == 'fleet_gpu_up{node="a\\"b\\\\c"}'
    assert an.promql_xids("n1", "1h") == (
        'sum by (gpu, gpu_uuid, xid, action) (increase(fleet_gpu_xid_errors_total{node="n1"}[1h]))'
        " > 0"
    )
    assert an.promql_mesh(["n1", "a.b"])["rtt"] == (
        'fleet_mesh_rtt_seconds{src=~"n1|a\\\\.b", dst=~"n1|a\\\\.b"}'
    )


# ----------------------------------------------------------------------------- inventory


def test_inventory_summarises_each_node(engine: Evaluator) -> None:
    inventory = an.node_inventory(engine, AT)
    n1, n2 = inventory.rows
    assert n1 == an.NodeSummary(
        "n1", gpus=2, gpus_up=2, gpus_allocated=2, utilization=0.5,
        gpu_memory_used_bytes=50e9, gpu_memory_total_bytes=160e9, power_watts=600,
        cpu_utilization=0.25, memory_used_bytes=100e9, memory_total_bytes=512e9, load1=12.5,
        jobs=[an.JobOnNode("j1", "vision", "ana", 1), an.JobOnNode("j2", "llm", "li", 1)],
    )  # fmt: skip
    assert (n1.teams, n1.users) == (["llm", "vision"], ["ana", "li"])
    assert (n2.node, n2.gpus, n2.gpus_up, n2.gpus_allocated) == ("n2", 1, 0, 0)
    assert (n2.utilization, n2.cpu_utilization, n2.load1, n2.jobs) == (None, 0.05, None, [])
    assert "# gpus_up\ncount by (node) (fleet_gpu_up == 1)" in inventory.promql


def test_nodes_sort_naturally() -> None:
    rows = [r for n in ("node10", "node2", "node1") for r in gauge("fleet_node_load1",
            {"node": n}, 1)]  # fmt: skip
    assert [s.node for s in an.node_inventory(engine_over(rows), AT).rows] == [
        "node1", "node2", "node10",
    ]  # fmt: skip


# ----------------------------------------------------------------------------- GPUs


def test_gpus_of_a_node_carry_processes_jobs_users_and_teams(engine: Evaluator) -> None:
    section = an.gpus(engine, AT, "n1")
    g0, g1 = section.rows
    assert g0 == an.GpuRow(
        "n1", "0", "GPU-0", MODEL, True, 0.9, 40e9, 80e9, 61, 500,
        [an.GpuProcess("101", "j1", "ana", "vision", 30e9),
         an.GpuProcess("102", "j1", "ana", "vision", 10e9)],
        [an.GpuAllocation("j1", "vision", "ana", "training", "production")],
    )  # fmt: skip
    assert g0.memory_ratio == 0.5 and g0.teams == ["vision"]
    assert [(p.pid, p.job, p.team) for p in g1.processes] == [("7", "", ""), ("201", "j2", "llm")]
    assert 'fleet_gpu_process_memory_bytes{node="n1"}' in section.promql


def test_fleet_gpus_include_a_lost_gpu_as_down(engine: Evaluator) -> None:
    rows = an.gpus(engine, AT).rows
    assert [(r.node, r.index, r.up) for r in rows] == [("n1", "0", True), ("n1", "1", True),
                                                      ("n2", "0", False)]  # fmt: skip
    assert rows[2].utilization is None and rows[2].allocations == []


def test_a_gpu_silent_for_minutes_is_down_and_one_never_seen_by_up_is_unknown() -> None:
    g3 = gpu("n3", "0", "GPU-3")
    engine = engine_over(
        [({"__name__": "fleet_gpu_up", **G0}, AT - 20 * M, 1.0),
         *gauge("fleet_gpu_utilization_ratio", g3, 0.3)]
    )  # fmt: skip
    assert [(r.uuid, r.up) for r in an.gpus(engine, AT).rows] == [("GPU-0", False), ("GPU-3", None)]


# ----------------------------------------------------------------------------- one node


def test_node_detail_has_every_section_with_exact_numbers(
    engine: Evaluator, records: FakeRecordStore
) -> None:
    d = an.node_detail(engine, "n1", AT, WINDOW, WINDOW_MS, records)
    assert d is not None and d.warnings == []
    assert d.summary.gpus == 2 and len(d.gpus.rows) == 2
    (disk,) = d.disks.rows
    assert disk.device == "nvme0n1" and numbers(disk) == pytest.approx([1e6, 2e6, 100, 50, 0.25])
    assert d.filesystems.rows == [an.FilesystemRow("/", 1000, 250, 0.75)]
    (nic,) = d.nics.rows
    assert nic.interface == "eth0"
    assert numbers(nic) == pytest.approx([125e6, 12.5e6, 1.25e9, 0.1, 0.01, 2, 0, 0, 0.5])
    (port,) = d.ib_ports.rows
    assert (port.device, port.port) == ("mlx5_0", "1")
    assert numbers(port) == pytest.approx([5e9, 2.5e9, 25e9, 0.2, 0.1, 1, 7, None])
    (mount,) = d.nfs.rows
    assert (mount.mount, mount.export) == ("/data", "nas:/data")
    assert numbers(mount) == pytest.approx([50e6, 10e6, 50, 0.02])
    assert d.mesh.nodes == ["n1", "n2"]
    assert d.mesh.rtt_seconds == {"n1": {"n2": 0.0002}, "n2": {"n1": 0.0003}}
    assert d.mesh.loss_ratio == {"n1": {"n2": 0.0}, "n2": {"n1": 0.1}}
    assert d.mesh.peers("n1") == [("n2", 0.0002, 0.0003)]
    assert d.xids.rows == [an.XidRow("1", "GPU-1", "79", "reset", 2)]
    assert [(e.time_ms, e.xid, e.job, e.team, e.action, e.pid) for e in d.xid_events] == [
        (AT - M, "79", "j2", "", "", ""),
        (AT - 2 * M, "79", "j2", "llm", "reset", "4242"),
    ]
    assert d.agent.collectors == {"gpu": True, "infiniband": False}
    assert (d.agent.wal_pending_samples, d.agent.dropped_samples) == (1500, 30)


def test_every_section_shows_the_queries_it_ran(engine: Evaluator) -> None:
    d = an.node_detail(engine, "n1", AT, WINDOW, WINDOW_MS)
    assert d is not None
    assert d.disks.promql.startswith('# read\nrate(fleet_disk_read_bytes_total{node="n1"}[5m])')
    assert (
        'rate(fleet_network_receive_bytes_total{node="n1"}[5m]) / on(node, interface) '
        '(fleet_network_speed_bytes{node="n1"} > 0)'
    ) in d.nics.promql
    assert 'increase(fleet_infiniband_link_downed_total{node="n1"}[10m])' in d.ib_ports.promql
    assert "fleet_nfs_rpc_rtt_seconds_total" in d.nfs.promql
    assert 'fleet_mesh_rtt_seconds{src="n1"} or fleet_mesh_rtt_seconds{dst="n1"}' in d.mesh.promql
    assert d.xids.promql == an.promql_xids("n1", "10m")
    assert "fleet_agent_wal_pending_samples" in d.agent.promql


def test_a_node_without_network_storage_or_mesh_has_empty_sections(engine: Evaluator) -> None:
    d = an.node_detail(engine, "n2", AT, WINDOW, WINDOW_MS, FakeRecordStore())
    assert d is not None
    assert (d.disks.rows, d.nics.rows, d.ib_ports.rows, d.nfs.rows, d.xids.rows) == ([],) * 5
    assert d.mesh.peers("n2") == [("n1", 0.0003, 0.0002)]
    assert d.agent == an.AgentHealth({}, None, None, d.agent.promql)


def test_an_unknown_node_is_none(engine: Evaluator) -> None:
    assert an.node_detail(engine, "n9", AT, WINDOW, WINDOW_MS) is None


class Failing:
    """An engine that fails every query mentioning ``word`` and passes the rest on."""

    def __init__(self, engine: Evaluator, word: str) -> None:
        self.engine, self.word = engine, word

    def instant(self, query: str, t_ms: int) -> QueryResult:
        if self.word in query:
            raise QueryError("unavailable", "backend down")
        return self.engine.instant(query, t_ms)

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)


def test_a_failing_section_costs_only_itself(engine: Evaluator) -> None:
    failing: Engine = Failing(engine, "fleet_disk_io_time_seconds_total")  # type: ignore[assignment]
    d = an.node_detail(failing, "n1", AT, WINDOW, WINDOW_MS)
    assert d is not None
    assert d.disks.rows == [] and len(d.nics.rows) == 1
    assert d.warnings == ["disks: unavailable: backend down"]


def test_the_mesh_keeps_the_slowest_peers() -> None:
    rtt = {("n1", "n2"): 0.001, ("n1", "n3"): 0.009, ("n4", "n1"): 0.005, ("n3", "n4"): 0.002,
           ("n2", "n3"): 0.003}  # fmt: skip
    rows = [r for (s, d), v in rtt.items() for r in gauge(an.RTT, {"src": s, "dst": d}, v)]
    m = an.mesh(engine_over(rows), AT, "n1", max_nodes=3)
    assert m.nodes == ["n1", "n3", "n4"]
    assert m.rtt_seconds == {"n1": {"n3": 0.009}, "n4": {"n1": 0.005}, "n3": {"n4": 0.002}}
    assert m.loss_ratio == {}


def test_utilization_history_per_gpu(engine: Evaluator) -> None:
    history = an.utilization_history(engine, "n1", AT - 2 * M, AT, M)
    assert list(history) == ["0", "1"]
    assert history["0"] == ([AT - 2 * M, AT - M, AT], [0.9, 0.9, 0.9])
