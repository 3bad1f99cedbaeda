"""Real-time mode of the simulator: the production agent path over simulated nodes.

Every tick (the simulator's sample interval) :class:`LiveFleet` advances the
:class:`~fleetscope.simulate.sim.Simulation` to that tick, hands the job records that changed to
a records sink (the record intake, in process or over HTTP), then runs one real
:class:`~fleetscope.agent.Agent` per simulated node — the real collectors of
:func:`node_collectors` on that node's :class:`~fleetscope.simulate.nvml.FakeNVML` and fake
root tree (NVML, attribution, XIDs from the fake kernel log, host, disk, NFS, network with the
fleet's address map, InfiniBand) and the mesh probe, whose TCP connects :class:`SimMesh` answers
from the simulator's network model — and one agent for the simulated scheduler's series; each
agent remote-writes its batch to ``push_url``.

Samples are stamped with the tick's time, not the wall clock, so live data lines up with the
backfill and with the simulator's ledger. When the loop falls behind (a slow machine, a paused
process) it catches up one tick at a time, so no tick of the schedule is missing from the store.

When the simulation already ran (a backfill), each agent first reads the last simulated tick
without sending it: it then knows that tick's series, and its first cycle writes the staleness
markers of those that end there, as the backfill would have.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from fleetscope.agent import Agent, default_collectors
from fleetscope.collect import Collector, Sample
from fleetscope.collect.mesh import Connect, MeshProbe
from fleetscope.config import AgentConfig
from fleetscope.model import Job
from fleetscope.simulate import io
from fleetscope.simulate.io import Hardware
from fleetscope.simulate.nvml import FakeNVML
from fleetscope.simulate.sim import SimNode, Simulation
from fleetscope.store import METRIC_NAME

log = logging.getLogger(__name__)

RecordsSink = Callable[[list[Job]], object]

SCHEDULER_NODE = "scheduler"  # the ``node`` label of the scheduler agent's own health series
MESH_PORT = 9500  # the simulated agents' /metrics port: what the mesh probe connects to


@dataclass(frozen=True)
class FakeStatVFS:
    """The ``os.statvfs_result`` fields the disk collector reads (4 KiB fragments)."""

    f_frsize: int
    f_blocks: int
    f_bavail: int
    f_bsize: int = 4096


def fake_statvfs(root: Path, hardware: Hardware) -> Callable[[str], FakeStatVFS]:
    """A ``statvfs`` for a fake root: stable sizes of the node's filesystems (``OSError``
    ``ENOENT`` for other paths). The disk collector calls it with ``root`` + mount point."""
    sizes = {m: FakeStatVFS(4096, size // 4096, avail // 4096)
             for m, (size, avail) in hardware.filesystems.items()}  # fmt: skip

    def statvfs(path: str) -> FakeStatVFS:
        rel = os.path.relpath(path, root)
        mount = "/" if rel == "." else "/" + rel
        if mount not in sizes:
            raise FileNotFoundError(2, "No such file or directory", path)
        return sizes[mount]

    return statvfs


class SimMesh:
    """The mesh probe's network in a simulation: TCP connects answered by its model.

    :meth:`probe` is a real :class:`~fleetscope.collect.mesh.MeshProbe` of one node, its peers
    those of :func:`fleetscope.simulate.io.mesh_pairs` at ``(address, MESH_PORT)``; its
    ``connect`` returns :func:`fleetscope.simulate.io.mesh_attempts` of the pair at the
    simulation's current tick (the last one rendered), so it reads what the backfill writes
    for that tick. A connect to an address outside the fleet or another port fails, as does
    one slower than ``timeout_s`` and every one before the simulation started. Thread-safe
    (the probe calls ``connect`` from its threads): each tick's attempts are computed once,
    for every pair, under a lock.
    """

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self._node = {hw.address: n for n, hw in enumerate(sim.hardware)}
        src, dst = io.mesh_pairs(len(sim.hardware))
        self._src, self._dst = src, dst
        pairs = zip(src.tolist(), dst.tolist(), strict=True)
        self._row = {pair: i for i, pair in enumerate(pairs)}
        self._lock = threading.Lock()
        self._at: tuple[int, int] | None = None  # (tick, attempts) of ``_times``
        self._times: npt.NDArray[np.float64] = np.empty((0, 0))

    def probe(self, node: str) -> MeshProbe:
        """The mesh probe of fleet node ``node``."""
        n = next(i for i, hw in enumerate(self.sim.hardware) if hw.node == node)
        peers = {
            self.sim.hardware[d].node: (self.sim.hardware[d].address, MESH_PORT)
            for d in self._dst[self._src == n].tolist()
        }
        return MeshProbe(node, peers, attempts=io.MESH_ATTEMPTS, connect=self.connect_from(n))

    def connect_from(self, src: int) -> Connect:
        """The measurement of node ``src`` (fleet node id) as a ``MeshProbe`` calls it."""

        def connect(host: str, port: int, attempts: int, timeout_s: float) -> list[float | None]:
            return self.attempts(src, host, port, attempts, timeout_s)

        return connect

    def attempts(
        self, src: int, host: str, port: int, attempts: int, timeout_s: float
    ) -> list[float | None]:
        """Seconds each connect from node ``src`` to ``host:port`` took now; ``None``: failed."""
        dst = self._node.get(host)
        row = None if dst is None or port != MESH_PORT else self._row.get((src, dst))
        times = self._now(attempts)
        if row is None or times is None:
            return [None] * attempts
        return [None if math.isnan(t) or t > timeout_s else t for t in times[row].tolist()]

    def _now(self, attempts: int) -> npt.NDArray[np.float64] | None:
        """``(pairs, attempts)`` connect times at the current tick (``None`` before the start)."""
        frame = self.sim.io_frame  # the block the current tick ends
        if self.sim.now_ms is None or frame is None:
            return None
        tick = self.sim.now_ms // self.sim.tick_ms
        with self._lock:
            if self._at != (tick, attempts):
                c = slice(len(frame.ticks) - 1, None)  # the current tick's column
                assert int(frame.ticks[c][0]) == tick
                times = io.mesh_attempts(
                    self.sim.spec.seed, self._src, self._dst, frame.ticks[c], frame.up[:, c],
                    frame.eth_load[:, c], frame.ib_load[:, c], frame.syn_loss[:, c], attempts,
                )  # fmt: skip
                self._times, self._at = times[:, :, 0], (tick, attempts)
            return self._times


def node_collectors(
    node: SimNode,
    hardware: Hardware,
    peers: Mapping[str, str],
    *,
    team_map: Mapping[str, str] | None = None,
    mesh: SimMesh | None = None,
) -> list[Collector]:
    """The real collectors of one simulated node (:func:`fleetscope.agent.default_collectors`,
    as a real agent runs them) over the node's :class:`FakeNVML` and fake root: fake
    ``statvfs`` sizes, the node's own address and ``peers`` (address → node name) for
    east-west bytes, and the XIDs the simulator appends to ``var/log/kern.log`` (UTC times);
    with ``mesh``, then the node's mesh probe (:meth:`SimMesh.probe`)."""
    if node.root is None:
        raise ValueError("the node collectors need a fake root tree")
    collectors = default_collectors(
        node.name,
        nvml=FakeNVML(node.devices),
        root=node.root,
        team_map=team_map,
        config=AgentConfig(kernel_log="/var/log/kern.log"),
        statvfs=fake_statvfs(node.root, hardware),
        peers=peers,
        local_addresses=[hardware.address],
        log_tz=UTC,
    )
    if mesh is not None:
        collectors.append(mesh.probe(node.name))
    return collectors


class SchedulerCollector:
    """The simulated scheduler's series (``fleet_sched_jobs`` …) as a collector, now."""

    name = "scheduler"

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def collect(self) -> Iterable[Sample]:
        now_ms = self.sim.now_ms
        if now_ms is None:
            return []
        batch = self.sim.scheduler_samples(now_ms)
        out = []
        for k in range(len(batch)):
            labels = dict(batch.series[int(batch.series_index[k])])
            name = labels.pop(METRIC_NAME)
            out.append(Sample(name, labels, float(batch.values[k])))
        return out


class LiveFleet:
    """Runs the simulation in real time behind real agents (see the module docstring).

    ``run()`` blocks until ``stop()``; ``step(t_ms)`` runs one tick (tests call it directly).
    ``on_tick(t_ms)`` is called after each tick's data was handed to the agents.
    """

    def __init__(
        self,
        sim: Simulation,
        push_url: str,
        *,
        token: str | None = None,
        records_sink: RecordsSink | None = None,
        on_tick: Callable[[int], object] | None = None,
        team_map: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sim = sim
        self.push_url = push_url
        self.records_sink = records_sink
        self.on_tick = on_tick
        self.clock = clock
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(headers=headers, timeout=10.0)
        self.agents: list[Agent] = []
        peers = {hw.address: hw.node for hw in sim.hardware}
        mesh = SimMesh(sim)
        for node, hw in zip(sim.nodes, sim.hardware, strict=True):
            if node.root is None:
                raise ValueError("live mode needs a simulation with a root_dir (fake /proc, /run)")
            collectors = node_collectors(node, hw, peers, team_map=team_map, mesh=mesh)
            self.agents.append(Agent(node.name, collectors, push_url, client=self._client))
        self.agents.append(
            Agent(SCHEDULER_NODE, [SchedulerCollector(sim)], push_url, client=self._client)
        )
        if sim.now_ms is not None:
            for agent in self.agents:
                agent.collect_once(sim.now_ms)  # the last simulated tick's series, not sent
        self._stop = threading.Event()

    def step(self, t_ms: int) -> int:
        """Advance to ``t_ms``, pass changed records on, collect and push; samples pushed."""
        changed = self.sim.advance(t_ms)
        if changed and self.records_sink is not None:
            self.records_sink(changed)
        pushed = 0
        for agent in self.agents:
            pushed += len(agent.run_cycle(t_ms))
        if self.on_tick is not None:
            self.on_tick(t_ms)
        return pushed

    def wait_for_server(self, health_url: str, timeout_s: float = 60.0) -> bool:
        """Poll ``health_url`` until it answers 200 (the server starts beside this loop)."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if self._client.get(health_url).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            self._stop.wait(0.2)
        return False

    def run(self) -> None:
        tick = self.sim.tick_ms
        while not self._stop.is_set():
            last = self.sim.now_ms
            next_t = (int(self.clock() * 1000) // tick) * tick if last is None else last + tick
            wait_s = next_t / 1000 - self.clock()
            if wait_s > 0 and self._stop.wait(wait_s):
                break
            try:
                self.step(next_t)
            except Exception:
                log.exception("simulated tick at %d failed; continuing", next_t)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        self._client.close()


class NullSink:
    """A sample sink that keeps nothing: replays a simulation's state without writing."""

    def append(self, batch: Any) -> None:
        return None
