"""Node analytics as PromQL: the fleet's node inventory and everything one node's page shows.

Every number is the answer to one PromQL query built here and sent, as that exact text, through
the :class:`~fleetscope.query.Engine` port; each section of a result carries the text of the
queries it ran (``# name`` comment lines between them) so the UI can show it and it can be pasted
into Grafana. XID events come from the :class:`~fleetscope.store.RecordStore` when one is given.

Semantics and units:

- Times are integer milliseconds since the Unix epoch; instant selectors read the newest sample
  within Prometheus' 5-minute lookback. A GPU belongs to the fleet while its ``fleet_gpu_up``
  reported within :data:`KNOWN` (as on the overview); it is *up* when that gauge is 1 now.
- Byte and operation rates are per second, ``rate(…[5m])`` (:data:`RATE`) — Prometheus'
  extrapolated per-second increase, so counter resets do not show as drops.
- Disk busy ratio is ``rate(fleet_disk_io_time_seconds_total[5m])``: the kernel's
  "time spent doing I/Os" (Documentation/admin-guide/iostats.rst field 10), as seconds per
  second — iostat's ``%util`` as 0–1. For devices serving requests in parallel (NVMe, RAID) it
  says only that the device was never idle, not that it is saturated.
- NIC and InfiniBand saturation is throughput ÷ link rate (``fleet_network_speed_bytes``,
  ``fleet_infiniband_port_rate_bytes``, bytes per second), per direction, 0–1; links reporting
  no rate (or 0) have none.
- NFS mean RTT is ``rate(fleet_nfs_rpc_rtt_seconds_total) / rate(fleet_nfs_rpc_operations_total)``
  over all operations of the mount (``/proc/self/mountstats``' cumulative RTT per op), seconds.
- Error counts (XIDs, InfiniBand link downs and symbol errors, dropped agent samples) are
  ``increase(…[window])`` over the page's window. Like every ``increase``, it misses the first
  increment of a counter born inside the window (no earlier sample to compare with); the XID
  events of the record store, when present, list each XID with the job that owned the GPU.

Unknown values are ``None`` (no sample, or NaN such as 0/0). Engine failures of one section
cost that section only: it comes back empty and a line is added to the result's ``warnings``
(as are an engine's partial-result warnings).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fleetscope.analyze.overview import KNOWN, with_comments
from fleetscope.query import Engine, QueryError
from fleetscope.store import RecordStore

RATE = "5m"  # the range of every rate()
MESH_MAX = 24  # nodes in a node page's mesh matrix: the node and its slowest peers

UP = "fleet_gpu_up"
UTILIZATION = "fleet_gpu_utilization_ratio"
ALLOCATION = "fleet_gpu_allocation"
PROCESS_MEMORY = "fleet_gpu_process_memory_bytes"
XID = "fleet_gpu_xid_errors_total"

R = TypeVar("R")


def quote(value: str) -> str:
    """A PromQL double-quoted string literal holding ``value``."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector(name: str, node: str | None = None, label: str = "node") -> str:
    """``name`` restricted to one node (``name{node="n1"}``); the bare name for ``None``."""
    return name if node is None else f"{name}{{{label}={quote(node)}}}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key that puts ``gpu2`` before ``gpu10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


# ------------------------------------------------------------------ running queries


@dataclass(frozen=True)
class Section(Generic[R]):
    """Rows of one part of a page and the PromQL that produced them (``# name`` per query)."""

    rows: list[R]
    promql: str


Vector = list[tuple[dict[str, str], float]]


class _Runner:
    """Runs instant queries at one time, keeps partial-result warnings and failed sections."""

    def __init__(self, engine: Engine, at_ms: int) -> None:
        self.engine = engine
        self.at_ms = at_ms
        self.warnings: list[str] = []

    def vector(self, query: str) -> Vector:
        result = self.engine.instant(query, self.at_ms)
        self.warnings.extend(f"{query}: {w}" for w in result.warnings)
        if result.scalar is not None:
            return [({}, result.scalar[1])]
        return [(s.labels, float(s.values[-1])) for s in result.series if len(s.values)]

    def keyed(self, query: str, keys: Sequence[str]) -> dict[tuple[str, ...], float | None]:
        """Values by the ``keys`` labels; the first series wins when two share a key."""
        out: dict[tuple[str, ...], float | None] = {}
        for labels, value in self.vector(query):
            out.setdefault(tuple(labels.get(k, "") for k in keys), _finite(value))
        return out

    def columns(
        self, queries: Mapping[str, str], keys: Sequence[str]
    ) -> tuple[list[tuple[str, ...]], dict[str, dict[tuple[str, ...], float | None]]]:
        """Every query keyed by ``keys``; the keys any of them has, in natural order."""
        found = {name: self.keyed(q, keys) for name, q in queries.items()}
        all_keys = {k for values in found.values() for k in values}
        return sorted(all_keys, key=lambda k: tuple(_natural(p) for p in k)), found

    def section(self, what: str, promql: str, build: Callable[[], list[R]]) -> Section[R]:
        """``build()``'s rows, or none and a warning when one of its queries fails."""
        try:
            return Section(build(), promql)
        except QueryError as exc:
            self.warnings.append(f"{what}: {exc.error_type}: {exc.message}")
            return Section([], promql)


# ------------------------------------------------------------------ inventory


@dataclass(frozen=True)
class JobOnNode:
    """A job holding GPUs of a node (from ``fleet_gpu_allocation``)."""

    job: str
    team: str
    user: str
    gpus: int


@dataclass(frozen=True)
class NodeSummary:
    """One line of the node table. GPU counts are GPUs known within :data:`KNOWN`."""

    node: str
    gpus: int
    gpus_up: int
    gpus_allocated: int
    utilization: float | None  # mean over the node's reporting GPUs, 0–1
    gpu_memory_used_bytes: float | None
    gpu_memory_total_bytes: float | None
    power_watts: float | None  # summed over the node's GPUs
    cpu_utilization: float | None  # 0–1, all cores
    memory_used_bytes: float | None  # host memory
    memory_total_bytes: float | None
    load1: float | None
    jobs: list[JobOnNode] = field(default_factory=list)

    @property
    def teams(self) -> list[str]:
        return sorted({j.team for j in self.jobs if j.team})

    @property
    def users(self) -> list[str]:
        return sorted({j.user for j in self.jobs if j.user})


def promql_inventory(node: str | None = None) -> dict[str, str]:
    """The queries of :func:`node_inventory` (one node's only, when ``node`` is given)."""

    def s(name: str) -> str:
        return selector(name, node)

    return {
        "gpus": f"count by (node) (last_over_time({s(UP)}[{KNOWN}]))",
        "gpus_up": f"count by (node) ({s(UP)} == 1)",
        "gpus_allocated": f"count by (node) (count by (node, gpu_uuid) ({s(ALLOCATION)}))",
        "utilization": f"avg by (node) ({s(UTILIZATION)})",
        "gpu_memory_used": f"sum by (node) ({s('fleet_gpu_memory_used_bytes')})",
        "gpu_memory_total": f"sum by (node) ({s('fleet_gpu_memory_total_bytes')})",
        "power": f"sum by (node) ({s('fleet_gpu_power_watts')})",
        "cpu": f"max by (node) ({s('fleet_node_cpu_utilization_ratio')})",
        "memory_used": f"max by (node) ({s('fleet_node_memory_used_bytes')})",
        "memory_total": f"max by (node) ({s('fleet_node_memory_total_bytes')})",
        "load1": f"max by (node) ({s('fleet_node_load1')})",
        "jobs": f"count by (node, job, team, user) ({s(ALLOCATION)})",
    }


def _count(value: float | None) -> int:
    return int(value) if value is not None else 0


def _inventory(run: _Runner, node: str | None) -> list[NodeSummary]:
    queries = promql_inventory(node)
    jobs_query = queries.pop("jobs")
    keys, c = run.columns(queries, ("node",))
    jobs: dict[str, list[JobOnNode]] = {}
    for labels, value in run.vector(jobs_query):
        jobs.setdefault(labels.get("node", ""), []).append(
            JobOnNode(labels.get("job", ""), labels.get("team", ""), labels.get("user", ""),
                      int(value))
        )  # fmt: skip
    names = sorted({k[0] for k in keys} | set(jobs), key=_natural)
    out = []
    for name in names:
        k = (name,)
        out.append(
            NodeSummary(
                name,
                _count(c["gpus"].get(k)),
                _count(c["gpus_up"].get(k)),
                _count(c["gpus_allocated"].get(k)),
                c["utilization"].get(k),
                c["gpu_memory_used"].get(k),
                c["gpu_memory_total"].get(k),
                c["power"].get(k),
                c["cpu"].get(k),
                c["memory_used"].get(k),
                c["memory_total"].get(k),
                c["load1"].get(k),
                sorted(jobs.get(name, []), key=lambda j: (-j.gpus, j.job)),
            )
        )
    return out


def node_inventory(engine: Engine, at_ms: int) -> Section[NodeSummary]:
    """Every node with GPUs known within :data:`KNOWN` or host metrics now, in natural order.

    Per node: GPUs known / up / allocated, mean GPU utilization, GPU memory and power summed
    over its GPUs, the jobs holding its GPUs (with team, user and GPU count), host CPU
    utilization, memory and load. Raises :class:`~fleetscope.query.QueryError` when a query
    fails (an inventory with holes would mislead).
    """
    run = _Runner(engine, at_ms)
    return Section(_inventory(run, None), with_comments(promql_inventory()))


# ------------------------------------------------------------------ GPUs


@dataclass(frozen=True)
class GpuProcess:
    """A process using GPU memory, with the job and user it is attributed to and their team."""

    pid: str
    job: str
    user: str
    team: str  # from the job's fleet_gpu_allocation; "" when the job holds no allocation
    memory_bytes: float | None


@dataclass(frozen=True)
class GpuAllocation:
    """A job holding the GPU (one ``fleet_gpu_allocation`` series)."""

    job: str
    team: str
    user: str
    workload: str
    tier: str


@dataclass(frozen=True)
class GpuRow:
    """One GPU now. ``up``: ``None`` when the GPU has never reported ``fleet_gpu_up``."""

    node: str
    index: str
    uuid: str
    model: str
    up: bool | None
    utilization: float | None  # 0–1
    memory_used_bytes: float | None
    memory_total_bytes: float | None
    temperature_celsius: float | None
    power_watts: float | None
    processes: list[GpuProcess] = field(default_factory=list)
    allocations: list[GpuAllocation] = field(default_factory=list)

    @property
    def memory_ratio(self) -> float | None:
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return self.memory_used_bytes / self.memory_total_bytes

    @property
    def teams(self) -> list[str]:
        return sorted({a.team for a in self.allocations if a.team})


def promql_gpus(node: str | None = None) -> dict[str, str]:
    """The queries of :func:`gpus`: the node's GPUs, or every GPU of the fleet for ``None``."""

    def s(name: str) -> str:
        return selector(name, node)

    return {
        "known": f"last_over_time({s(UP)}[{KNOWN}])",
        "up": s(UP),
        "utilization": s(UTILIZATION),
        "memory_used": s("fleet_gpu_memory_used_bytes"),
        "memory_total": s("fleet_gpu_memory_total_bytes"),
        "temperature": s("fleet_gpu_temperature_celsius"),
        "power": s("fleet_gpu_power_watts"),
        "processes": s(PROCESS_MEMORY),
        "allocations": s(ALLOCATION),
    }


def _gpu_rows(run: _Runner, node: str | None) -> list[GpuRow]:
    queries = promql_gpus(node)
    identity: dict[str, dict[str, str]] = {}  # gpu_uuid → node, gpu, gpu_model
    values: dict[str, dict[str, float | None]] = {}
    for name in ("known", "up", "utilization", "memory_used", "memory_total", "temperature",
                 "power"):  # fmt: skip
        col: dict[str, float | None] = {}
        for labels, value in run.vector(queries[name]):
            uuid = labels.get("gpu_uuid", "")
            identity.setdefault(uuid, labels)
            col.setdefault(uuid, _finite(value))
        values[name] = col
    allocations: dict[str, list[GpuAllocation]] = {}
    team_of_job: dict[str, str] = {}
    for labels, _ in run.vector(queries["allocations"]):
        uuid = labels.get("gpu_uuid", "")
        identity.setdefault(uuid, labels)
        a = GpuAllocation(*(labels.get(k, "") for k in ("job", "team", "user", "workload", "tier")))
        allocations.setdefault(uuid, []).append(a)
        team_of_job.setdefault(a.job, a.team)
    processes: dict[str, list[GpuProcess]] = {}
    for labels, value in run.vector(queries["processes"]):
        uuid = labels.get("gpu_uuid", "")
        identity.setdefault(uuid, labels)
        job = labels.get("job", "")
        processes.setdefault(uuid, []).append(
            GpuProcess(labels.get("pid", ""), job, labels.get("user", ""),
                       team_of_job.get(job, ""), _finite(value))
        )  # fmt: skip
    rows = []
    for uuid, labels in identity.items():
        up_value = values["up"].get(uuid)
        if uuid in values["up"]:
            up: bool | None = up_value == 1
        else:
            up = False if uuid in values["known"] else None
        rows.append(
            GpuRow(
                labels.get("node", ""),
                labels.get("gpu", ""),
                uuid,
                labels.get("gpu_model", ""),
                up,
                values["utilization"].get(uuid),
                values["memory_used"].get(uuid),
                values["memory_total"].get(uuid),
                values["temperature"].get(uuid),
                values["power"].get(uuid),
                sorted(processes.get(uuid, []), key=lambda p: _natural(p.pid)),
                sorted(allocations.get(uuid, []), key=lambda a: a.job),
            )
        )
    return sorted(rows, key=lambda r: (_natural(r.node), _natural(r.index), r.uuid))


def gpus(engine: Engine, at_ms: int, node: str | None = None) -> Section[GpuRow]:
    """The GPUs of ``node`` (of the whole fleet for ``None``) at ``at_ms``, with their
    processes (``fleet_gpu_process_memory_bytes``: pid, job, user) and allocations
    (``fleet_gpu_allocation``: job, team, user, workload, tier), by node and GPU index.

    A process's team is the team of the allocation of its job. Raises
    :class:`~fleetscope.query.QueryError` when a query fails.
    """
    return Section(_gpu_rows(_Runner(engine, at_ms), node), with_comments(promql_gpus(node)))


# ------------------------------------------------------------------ storage


@dataclass(frozen=True)
class DiskRow:
    """One block device: throughput and operations per second, busy ratio (0–1)."""

    device: str
    read_bytes_per_s: float | None
    written_bytes_per_s: float | None
    reads_per_s: float | None
    writes_per_s: float | None
    busy_ratio: float | None


@dataclass(frozen=True)
class FilesystemRow:
    """One mounted filesystem: size, space available to unprivileged users, used share."""

    mount: str
    size_bytes: float | None
    avail_bytes: float | None
    used_ratio: float | None  # 1 - avail / size, as node_exporter dashboards compute it


def promql_disks(node: str) -> dict[str, str]:
    def r(name: str) -> str:
        return f"rate({selector(name, node)}[{RATE}])"

    return {
        "read": r("fleet_disk_read_bytes_total"),
        "written": r("fleet_disk_written_bytes_total"),
        "reads": r("fleet_disk_reads_completed_total"),
        "writes": r("fleet_disk_writes_completed_total"),
        "busy": r("fleet_disk_io_time_seconds_total"),
    }


def promql_filesystems(node: str) -> dict[str, str]:
    size = selector("fleet_filesystem_size_bytes", node)
    avail = selector("fleet_filesystem_avail_bytes", node)
    return {"size": size, "avail": avail, "used": f"1 - {avail} / {size}"}


def _disks(run: _Runner, node: str) -> list[DiskRow]:
    keys, c = run.columns(promql_disks(node), ("device",))
    return [
        DiskRow(k[0], c["read"].get(k), c["written"].get(k), c["reads"].get(k),
                c["writes"].get(k), c["busy"].get(k))
        for k in keys
    ]  # fmt: skip


def _filesystems(run: _Runner, node: str) -> list[FilesystemRow]:
    keys, c = run.columns(promql_filesystems(node), ("mount",))
    return [
        FilesystemRow(k[0], c["size"].get(k), c["avail"].get(k), c["used"].get(k)) for k in keys
    ]


# ------------------------------------------------------------------ network


@dataclass(frozen=True)
class NicRow:
    """One network interface: bytes and packets per second, link speed, saturation (0–1)."""

    interface: str
    receive_bytes_per_s: float | None
    transmit_bytes_per_s: float | None
    speed_bytes_per_s: float | None
    receive_saturation: float | None
    transmit_saturation: float | None
    receive_drops_per_s: float | None
    transmit_drops_per_s: float | None
    receive_errs_per_s: float | None
    transmit_errs_per_s: float | None


@dataclass(frozen=True)
class IbPortRow:
    """One InfiniBand port: throughput, link rate, saturation (0–1), errors in the window."""

    device: str
    port: str
    receive_bytes_per_s: float | None
    transmit_bytes_per_s: float | None
    rate_bytes_per_s: float | None
    receive_saturation: float | None
    transmit_saturation: float | None
    link_downed: float | None  # increase over the window
    symbol_errors: float | None
    receive_errors: float | None


@dataclass(frozen=True)
class NfsRow:
    """One NFS mount: bytes and RPC operations per second, mean RPC round-trip time (s)."""

    mount: str
    export: str
    read_bytes_per_s: float | None
    written_bytes_per_s: float | None
    operations_per_s: float | None
    rtt_seconds: float | None


def promql_nics(node: str) -> dict[str, str]:
    def r(name: str) -> str:
        return f"rate({selector(name, node)}[{RATE}])"

    speed = f"({selector('fleet_network_speed_bytes', node)} > 0)"
    rx, tx = r("fleet_network_receive_bytes_total"), r("fleet_network_transmit_bytes_total")
    return {
        "receive": rx,
        "transmit": tx,
        "speed": selector("fleet_network_speed_bytes", node),
        "receive_saturation": f"{rx} / on(node, interface) {speed}",
        "transmit_saturation": f"{tx} / on(node, interface) {speed}",
        "receive_drops": r("fleet_network_receive_drop_total"),
        "transmit_drops": r("fleet_network_transmit_drop_total"),
        "receive_errs": r("fleet_network_receive_errs_total"),
        "transmit_errs": r("fleet_network_transmit_errs_total"),
    }


def promql_ib(node: str, window: str) -> dict[str, str]:
    def r(name: str) -> str:
        return f"rate({selector(name, node)}[{RATE}])"

    def inc(name: str) -> str:
        return f"increase({selector(name, node)}[{window}])"

    port_rate = selector("fleet_infiniband_port_rate_bytes", node)
    rx = r("fleet_infiniband_port_receive_bytes_total")
    tx = r("fleet_infiniband_port_transmit_bytes_total")
    on = "on(node, device, port)"
    return {
        "receive": rx,
        "transmit": tx,
        "rate": port_rate,
        "receive_saturation": f"{rx} / {on} ({port_rate} > 0)",
        "transmit_saturation": f"{tx} / {on} ({port_rate} > 0)",
        "link_downed": inc("fleet_infiniband_link_downed_total"),
        "symbol_errors": inc("fleet_infiniband_symbol_errors_total"),
        "receive_errors": inc("fleet_infiniband_port_receive_errors_total"),
    }


def promql_nfs(node: str) -> dict[str, str]:
    def r(name: str) -> str:
        return f"sum by (mount, export) (rate({selector(name, node)}[{RATE}]))"

    ops = r("fleet_nfs_rpc_operations_total")
    return {
        "read": r("fleet_nfs_read_bytes_total"),
        "written": r("fleet_nfs_written_bytes_total"),
        "operations": ops,
        "rtt": f"{r('fleet_nfs_rpc_rtt_seconds_total')} / {ops}",
    }


def _nics(run: _Runner, node: str) -> list[NicRow]:
    keys, c = run.columns(promql_nics(node), ("interface",))
    names = ("receive", "transmit", "speed", "receive_saturation", "transmit_saturation",
             "receive_drops", "transmit_drops", "receive_errs", "transmit_errs")  # fmt: skip
    return [NicRow(k[0], *(c[n].get(k) for n in names)) for k in keys]


def _ib(run: _Runner, node: str, window: str) -> list[IbPortRow]:
    keys, c = run.columns(promql_ib(node, window), ("device", "port"))
    names = ("receive", "transmit", "rate", "receive_saturation", "transmit_saturation",
             "link_downed", "symbol_errors", "receive_errors")  # fmt: skip
    return [IbPortRow(k[0], k[1], *(c[n].get(k) for n in names)) for k in keys]


def _nfs(run: _Runner, node: str) -> list[NfsRow]:
    keys, c = run.columns(promql_nfs(node), ("mount", "export"))
    names = ("read", "written", "operations", "rtt")
    return [NfsRow(k[0], k[1], *(c[n].get(k) for n in names)) for k in keys]


# ------------------------------------------------------------------ mesh


@dataclass(frozen=True)
class Mesh:
    """Round-trip times and probe loss between nodes: ``rtt_seconds[src][dst]``, loss 0–1.

    ``nodes`` are the matrix's rows and columns (the page's node first); pairs without a probe
    are missing from the inner dicts.
    """

    nodes: list[str]
    rtt_seconds: dict[str, dict[str, float]]
    loss_ratio: dict[str, dict[str, float]]
    promql: str

    def peers(self, node: str) -> list[tuple[str, float | None, float | None]]:
        """``(peer, rtt from node, rtt to node)`` for every other node of the matrix."""
        return [
            (p, self.rtt_seconds.get(node, {}).get(p), self.rtt_seconds.get(p, {}).get(node))
            for p in self.nodes
            if p != node
        ]


RTT = "fleet_mesh_rtt_seconds"
LOSS = "fleet_mesh_probe_loss_ratio"


def promql_mesh_peers(node: str) -> str:
    """The probes from and to ``node``: the first query of :func:`mesh`."""
    return f"{selector(RTT, node, 'src')} or {selector(RTT, node, 'dst')}"


def promql_mesh(nodes: Sequence[str]) -> dict[str, str]:
    """The matrix among ``nodes`` (an RE2 alternation of the escaped names)."""
    names = quote("|".join(re.escape(n) for n in nodes))
    return {
        "rtt": f"{RTT}{{src=~{names}, dst=~{names}}}",
        "loss": f"{LOSS}{{src=~{names}, dst=~{names}}}",
    }


def _pairs(vector: Vector) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for labels, value in vector:
        v = _finite(value)
        if v is not None:
            out.setdefault(labels.get("src", ""), {})[labels.get("dst", "")] = v
    return out


def mesh(engine: Engine, at_ms: int, node: str, max_nodes: int = MESH_MAX) -> Mesh:
    """The RTT and loss matrix among ``node`` and its peers (``fleet_mesh_rtt_seconds``,
    ``fleet_mesh_probe_loss_ratio``, both ``{src, dst}``).

    First the probes from and to ``node`` (:func:`promql_mesh_peers`) name its peers; with more
    than ``max_nodes - 1`` the slowest are kept (largest RTT either way). Then the full matrix
    among those nodes. Raises :class:`~fleetscope.query.QueryError` when a query fails.
    """
    run = _Runner(engine, at_ms)
    first = promql_mesh_peers(node)
    worst: dict[str, float] = {}
    for labels, value in run.vector(first):
        peer = labels.get("dst", "") if labels.get("src") == node else labels.get("src", "")
        if peer and peer != node:
            worst[peer] = max(worst.get(peer, -math.inf), value if math.isfinite(value) else 0)
    peers = sorted(worst, key=lambda p: (-worst[p], _natural(p)))[: max_nodes - 1]
    if not peers:
        return Mesh([], {}, {}, first)
    nodes = [node, *sorted(peers, key=_natural)]
    queries = promql_mesh(nodes)
    rtt, loss = _pairs(run.vector(queries["rtt"])), _pairs(run.vector(queries["loss"]))
    return Mesh(nodes, rtt, loss, with_comments({"peers": first, **queries}))


# ------------------------------------------------------------------ XIDs and the agent


@dataclass(frozen=True)
class XidRow:
    """XID errors of one GPU, code and action in the window (``increase`` of the counter)."""

    gpu: str
    gpu_uuid: str
    xid: str
    action: str
    count: float


@dataclass(frozen=True)
class XidEvent:
    """One XID event from the record store, with the job that owned the GPU then."""

    time_ms: int
    gpu: str
    gpu_uuid: str
    xid: str
    action: str
    job: str
    team: str
    user: str
    message: str
    pid: str = ""
    process: str = ""


@dataclass(frozen=True)
class AgentHealth:
    """The node agent: collectors up now, samples waiting in its WAL, samples it dropped."""

    collectors: dict[str, bool]
    wal_pending_samples: float | None
    dropped_samples: float | None  # increase over the window
    promql: str


def promql_xids(node: str, window: str) -> str:
    return f"sum by (gpu, gpu_uuid, xid, action) (increase({selector(XID, node)}[{window}])) > 0"


def promql_agent(node: str, window: str) -> dict[str, str]:
    dropped = selector("fleet_agent_dropped_samples_total", node)
    return {
        "collectors": selector("fleet_agent_collector_up", node),
        "wal_pending": f"sum({selector('fleet_agent_wal_pending_samples', node)})",
        "dropped": f"sum(increase({dropped}[{window}]))",
    }


def _xids(run: _Runner, node: str, window: str) -> list[XidRow]:
    rows = [
        XidRow(
            labels.get("gpu", ""),
            labels.get("gpu_uuid", ""),
            labels.get("xid", ""),
            labels.get("action", ""),
            value,
        )
        for labels, value in run.vector(promql_xids(node, window))
    ]
    return sorted(rows, key=lambda r: (_natural(r.gpu), _natural(r.xid), r.action))


def _text(attrs: Mapping[str, Any], key: str) -> str:
    value = attrs.get(key)
    return "" if value is None else str(value)


def xid_events(records: RecordStore, node: str, since_ms: int, until_ms: int) -> list[XidEvent]:
    """XID events of ``node`` in ``[since_ms, until_ms]``, newest first.

    Events of kind ``xid`` whose ``attrs["node"]`` (or, without one, ``subject``) is the node;
    ``attrs`` may hold ``gpu``, ``gpu_uuid``, ``xid``, ``action``, ``job``, ``team``, ``user``,
    ``message``, ``pid`` and ``process`` (missing or ``None`` ones read as ``""``), as
    :mod:`fleetscope.collect.xid` writes them.
    """
    out = []
    for e in records.events(kinds=["xid"], since_ms=since_ms):
        t_ms = int(e.time.timestamp() * 1000)
        where = _text(e.attrs, "node") or e.subject
        if where != node or not since_ms <= t_ms <= until_ms:
            continue
        fields = ("gpu", "gpu_uuid", "xid", "action", "job", "team", "user", "message", "pid",
                  "process")  # fmt: skip
        out.append(XidEvent(t_ms, *(_text(e.attrs, k) for k in fields)))
    return sorted(out, key=lambda x: -x.time_ms)


def _agent(run: _Runner, node: str, window: str) -> AgentHealth:
    queries = promql_agent(node, window)
    collectors = {
        labels.get("collector", ""): value == 1
        for labels, value in run.vector(queries["collectors"])
    }
    wal = run.vector(queries["wal_pending"])
    dropped = run.vector(queries["dropped"])
    return AgentHealth(
        dict(sorted(collectors.items())),
        _finite(wal[0][1]) if wal else None,
        _finite(dropped[0][1]) if dropped else None,
        with_comments(queries),
    )


# ------------------------------------------------------------------ one node


@dataclass(frozen=True)
class NodeDetail:
    """Everything the node page shows at ``at_ms``; counts of errors cover ``window``."""

    node: str
    at_ms: int
    window: str
    summary: NodeSummary
    summary_promql: str
    gpus: Section[GpuRow]
    disks: Section[DiskRow]
    filesystems: Section[FilesystemRow]
    nics: Section[NicRow]
    ib_ports: Section[IbPortRow]
    nfs: Section[NfsRow]
    mesh: Mesh
    xids: Section[XidRow]
    xid_events: list[XidEvent]
    agent: AgentHealth
    warnings: list[str] = field(default_factory=list)


def node_detail(
    engine: Engine,
    node: str,
    at_ms: int,
    window: str,
    window_ms: int,
    records: RecordStore | None = None,
) -> NodeDetail | None:
    """The node's page content at ``at_ms``; ``None`` when the fleet does not know the node.

    A node is known when :func:`promql_inventory` restricted to it finds anything (a GPU within
    :data:`KNOWN`, host metrics or allocations now); that query failing raises
    :class:`~fleetscope.query.QueryError`. ``window`` (a PromQL duration, ``window_ms`` long)
    bounds the error counts and the XID events read from ``records``. Every other section that
    fails comes back empty with a line in ``warnings``.
    """
    run = _Runner(engine, at_ms)
    found = [s for s in _inventory(run, node) if s.node == node]
    if not found:
        return None
    gpu_q = with_comments(promql_gpus(node))
    empty_mesh = Mesh([], {}, {}, promql_mesh_peers(node))
    try:
        mesh_part = mesh(engine, at_ms, node)
    except QueryError as exc:
        run.warnings.append(f"mesh: {exc.error_type}: {exc.message}")
        mesh_part = empty_mesh
    try:
        agent = _agent(run, node, window)
    except QueryError as exc:
        run.warnings.append(f"agent: {exc.error_type}: {exc.message}")
        agent = AgentHealth({}, None, None, with_comments(promql_agent(node, window)))
    events = xid_events(records, node, at_ms - window_ms, at_ms) if records is not None else []
    return NodeDetail(
        node,
        at_ms,
        window,
        found[0],
        with_comments(promql_inventory(node)),
        run.section("GPUs", gpu_q, lambda: _gpu_rows(run, node)),
        run.section("disks", with_comments(promql_disks(node)), lambda: _disks(run, node)),
        run.section(
            "filesystems", with_comments(promql_filesystems(node)), lambda: _filesystems(run, node)
        ),
        run.section("NICs", with_comments(promql_nics(node)), lambda: _nics(run, node)),
        run.section(
            "InfiniBand", with_comments(promql_ib(node, window)), lambda: _ib(run, node, window)
        ),
        run.section("NFS", with_comments(promql_nfs(node)), lambda: _nfs(run, node)),
        mesh_part,
        run.section("XIDs", promql_xids(node, window), lambda: _xids(run, node, window)),
        events,
        agent,
        run.warnings,
    )


# ------------------------------------------------------------------ history


def promql_utilization_history(node: str) -> str:
    return selector(UTILIZATION, node)


def utilization_history(
    engine: Engine, node: str, start_ms: int, end_ms: int, step_ms: int
) -> dict[str, tuple[list[int], list[float]]]:
    """Each GPU's utilization (0–1) of ``node`` at every step, keyed by GPU index."""
    result = engine.range(promql_utilization_history(node), start_ms, end_ms, step_ms)
    out: dict[str, tuple[list[int], list[float]]] = {}
    for s in result.series:
        out[s.labels.get("gpu", s.labels.get("gpu_uuid", ""))] = (
            s.t_ms.tolist(),
            s.values.tolist(),
        )
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))
