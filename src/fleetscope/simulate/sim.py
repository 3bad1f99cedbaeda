"""The whole fake fleet behind the real interfaces: live stepping, fast backfill, ground truth.

A :class:`Simulation` couples the cluster (workload + scheduler, :mod:`.cluster`), the GPU
behaviour (:mod:`.behaviour`) and the fake node state the real collectors read:

- **Live**: :meth:`Simulation.advance` moves to a time, sets every node's
  :class:`~fleetscope.simulate.nvml.FakeDevice` fields and rewrites its fake root tree (prolog
  files, ``/proc``, ``/sys``, the kernel log), so the real
  :class:`~fleetscope.collect.gpu.GPUCollector` on ``FakeNVML(node.devices)`` and the
  attribution, host, disk, NFS, network and InfiniBand collectors on ``node.root`` read the
  fleet. It returns the job records that changed, for the record intake.
- **Backfill**: :meth:`Simulation.backfill` writes a period of history straight into a
  :class:`~fleetscope.store.MetricStore`: the same series, label sets and unit conversions the
  live path produces (:mod:`.series`), built with numpy one block (a day) at a time, staleness
  markers included: a series that stops gets one at the next tick, as the agents write them
  (also across blocks and backfill calls). Live stepping then continues from its end with the
  same scheduler state and counters. The node I/O model (:mod:`.io`) feeds both paths, so the
  host, storage, network and InfiniBand counters continue across the switch; its Xid errors
  become ``fleet_gpu_xid_errors_total`` series and, through ``events_sink``,
  :class:`~fleetscope.model.Event` records (``kind="xid"``).
- **Ground truth**: :meth:`Simulation.ledger` is each team's allocated GPU-hours per the
  simulator's own schedule (DESIGN.md "Definitions": Σ over its allocated GPUs of allocated
  time), clipped to a window. Allocation is sample-and-hold per tick: a job holds its GPUs over
  ``[start, end)``, so the ledger over ``[a, b)`` equals Σ ``fleet_gpu_allocation`` samples in
  ``[a, b)`` × the sample interval when ``a`` and ``b`` fall on ticks.

Time is integer milliseconds since the epoch, quantized to ticks of ``spec.tick_s``; the
simulation starts (its *origin*) at the first :meth:`~Simulation.backfill` start or
:meth:`~Simulation.advance` time, with the workload already running for ``spec.warmup_s``.
Same spec, calibration and origin → same jobs and samples, however the time is stepped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fleetscope.model import Event, Job
from fleetscope.simulate import io
from fleetscope.simulate.behaviour import SMOOTH_TICKS, Counters, Frame, render
from fleetscope.simulate.calibration import Calibration
from fleetscope.simulate.calibration import load as load_calibration
from fleetscope.simulate.cluster import Cluster
from fleetscope.simulate.fleet import Fleet, FleetSpec, NodeInfo, build
from fleetscope.simulate.jobs import DAY_S, SimJob
from fleetscope.simulate.nvml import FakeDevice
from fleetscope.simulate.roots import RootTree
from fleetscope.simulate.series import (
    CUMULATIVE,
    Builder,
    Present,
    gpu_batch,
    node_batch,
    sched_batch,
)
from fleetscope.store import SampleBatch

__all__ = ["BackfillStats", "SampleSink", "SimNode", "Simulation"]

LEDGER_KEYS = ("team", "user", "workload", "tier", "id")
RecordsSink = Callable[[list[Job]], object]
EventsSink = Callable[[list[Event]], object]
Progress = Callable[[int, int], object]


class SampleSink(Protocol):
    """Where a backfill writes: any :class:`~fleetscope.store.MetricStore` (only ``append``)."""

    def append(self, batch: SampleBatch) -> object: ...


@dataclass
class SimNode:
    """One fake node: its name, NVML devices (index order) and root directory (or ``None``)."""

    name: str
    devices: list[FakeDevice]
    root: Path | None
    info: NodeInfo


@dataclass(frozen=True)
class BackfillStats:
    """What a backfill wrote and how long it took (``generate_s`` excludes store writes)."""

    samples: int
    chunks: int
    records: int
    generate_s: float
    store_s: float
    events: int = 0


class Simulation:
    """A simulated fleet (see the module docstring)."""

    def __init__(
        self,
        spec: FleetSpec | None = None,
        calibration: Calibration | None = None,
        root_dir: Path | str | None = None,
    ) -> None:
        self.spec = spec or FleetSpec()
        self.fleet: Fleet = build(self.spec)
        self.calibration = calibration or load_calibration()
        self.nodes: list[SimNode] = []
        self._trees: list[RootTree | None] = []
        for node in self.fleet.nodes:
            root = Path(root_dir) / node.name if root_dir is not None else None
            devices = [
                FakeDevice(
                    index=g.index,
                    uuid=g.uuid,
                    name=g.model.nvml_name,
                    memory_total_bytes=g.model.memory_total_bytes,
                    power_mw=g.model.idle_power_mw,
                    power_limit_mw=g.model.power_limit_mw,
                    sm_clock_mhz=g.model.idle_sm_mhz,
                )
                for g in node.gpus
            ]
            self.nodes.append(SimNode(node.name, devices, root, node))
            self._trees.append(RootTree(root) if root is not None else None)
        self._devices = [d for n in self.nodes for d in n.devices]
        self._counters = Counters.initial(self.fleet)
        self.hardware: list[io.Hardware] = io.hardware(self.fleet)
        self._io = io.IOCounters(self.fleet, self.hardware)
        self._io_last: io.IOFrame | None = None  # the last rendered block's I/O
        self._cluster: Cluster | None = None
        self._rendered: int | None = None  # the last tick whose readings were rendered

    # -- time --------------------------------------------------------------------------

    @property
    def tick_ms(self) -> int:
        return self.spec.tick_ms

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            raise RuntimeError("the simulation has not started: call advance() or backfill()")
        return self._cluster

    @property
    def now_ms(self) -> int | None:
        """Time of the last simulated tick (``None`` before the start)."""
        return None if self._rendered is None else self._rendered * self.tick_ms

    def _begin(self, origin_tick: int) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster(self.fleet, self.calibration, origin_tick)
        return self._cluster

    def _render(self, k0: int, k1: int) -> tuple[Frame, io.IOFrame, list[SimJob]]:
        """The GPU readings and node I/O of ticks ``[k0, k1)``, and the jobs behind them."""
        cluster = self.cluster
        jobs = list(cluster.jobs_active(k0 - SMOOTH_TICKS + 1, k1))
        frame = render(self.fleet, k0, k1, jobs, cluster.down)
        return frame, io.render(self.fleet, self.hardware, frame, jobs, cluster.down), jobs

    # -- live --------------------------------------------------------------------------

    def advance(self, to_ms: int) -> list[Job]:
        """Simulate up to ``to_ms``; the job records that changed (submitted, started, ended,
        or pending for a new reason) since the previous call, in job-id order."""
        k = to_ms // self.tick_ms
        cluster = self._begin(k)
        if self._rendered is not None and k <= self._rendered:
            return []
        changed = cluster.run_until(k)
        first = k if self._rendered is None else self._rendered + 1
        frame: Frame | None = None
        xids: list[io.Xid] = []
        for k0 in range(first, k + 1, DAY_S // self.spec.tick_s):
            k1 = min(k0 + DAY_S // self.spec.tick_s, k + 1)
            frame, node_io, _ = self._render(k0, k1)
            self._counters.integrate(self.fleet, frame)
            self._io.integrate(self.fleet, node_io)
            self._io_last = node_io
            xids.extend(node_io.xids)
        assert frame is not None
        self._rendered = k
        self._apply(frame, xids)
        return [j.record(self.spec.cluster, self.tick_ms) for j in changed]

    def _apply(self, frame: Frame, xids: Sequence[io.Xid] = ()) -> None:
        """Set devices and root trees to the last tick of ``frame``; ``xids``: the Xids since
        the previous call, for the kernel logs."""
        c = self._counters
        k = int(frame.ticks[-1])
        active = list(self.cluster.jobs_active(k, k + 1))
        jobs = {j.seq: j for j in active}
        for g, dev in enumerate(self._devices):
            dev.lost = not bool(frame.up[g, -1])
            dev.gpu_util_pct = int(frame.util_pct[g, -1])
            dev.mem_util_pct = int(frame.mem_util_pct[g, -1])
            dev.memory_used_bytes = int(frame.memory_used_bytes[g, -1])
            dev.power_mw = int(frame.power_mw[g, -1])
            dev.temperature_c = int(frame.temperature_c[g, -1])
            dev.sm_clock_mhz = int(frame.sm_clock_mhz[g, -1])
            dev.throttle_reasons = int(frame.throttle_reasons[g, -1])
            dev.pcie_rx_kbps = int(frame.pcie_rx_kbps[g, -1])
            dev.pcie_tx_kbps = int(frame.pcie_tx_kbps[g, -1])
            dev.energy_mj = int(c.energy_mj[g])
            dev.ecc_corrected = int(c.ecc_corrected[g])
            dev.ecc_uncorrected = int(c.ecc_uncorrected[g])
            proc = bool(frame.process[g, -1]) and not dev.lost
            dev.processes = [(int(frame.pid[g, -1]), dev.memory_used_bytes)] if proc else []
        for node, tree in zip(self.nodes, self._trees, strict=True):
            if tree is None:
                continue
            holders: dict[int, SimJob] = {}
            procs: dict[int, SimJob] = {}
            for info, dev in zip(node.info.gpus, node.devices, strict=True):
                seq = int(frame.holder[info.id, -1])
                if seq >= 0:
                    holders[info.index] = jobs[seq]
                    for pid, _ in dev.processes:
                        procs[pid] = jobs[seq]
            tree.sync(holders, procs)
            tree.sync_io(self._node_state(node.info.id, k, xids, active))

    def _node_state(
        self, n: int, k: int, xids: Sequence[io.Xid], active: Sequence[SimJob]
    ) -> io.NodeState:
        """Node ``n``'s kernel view at tick ``k`` (the last rendered one)."""
        last = self._io_last
        assert last is not None and self._io.boot_s is not None
        hw = self.hardware[n]
        boot_s = int(self._io.boot_s[n])
        ports = io.saturated(self._io.port)
        rows = [int(p) for p in range(len(self._io.ports)) if self._io.ports[p] == n]
        name = self.fleet.nodes[n].name
        return io.NodeState(
            hw=hw,
            up=bool(last.up[n, -1]),
            t_s=k * self.spec.tick_s,
            boot_s=boot_s,
            counters={f: int(self._io.node[i, n]) for i, f in enumerate(io.FIELDS)},
            ports={
                hca: {f: int(ports[i, r]) for i, f in enumerate(io.PORT_FIELDS)}
                for hca, r in zip(hw.hcas, rows, strict=True)
            },
            mem_used_kb=int(last.mem_used_kb[n, -1]),
            load_centi=int(last.load_centi[n, -1]),
            running=int(last.running[n, -1]),
            connections=io.connections(self.fleet, active, n, k),
            log_lines=[
                io.kern_line(self.fleet, x, boot_s, name)
                for x in xids
                if self.fleet.gpus[x.gpu].node_id == n
            ],
        )

    def scheduler_samples(self, now_ms: int) -> SampleBatch:
        """The scheduler series (``fleet_sched_jobs`` …) of the current state, at ``now_ms``."""
        cluster = self.cluster
        sched = cluster.scheduler
        out = Builder()
        jobs = [*sched.pending, *sched.running.values()]
        sched_batch(self.fleet, jobs, cluster.now, cluster.now + 1, out, np.array([now_ms]))
        return out.build()

    # -- backfill ----------------------------------------------------------------------

    @property
    def io_frame(self) -> io.IOFrame | None:
        """The node I/O of the last rendered block (what the fake files and the mesh show)."""
        return self._io_last

    def backfill(
        self,
        store: SampleSink,
        start_ms: int,
        end_ms: int,
        records_sink: RecordsSink | None = None,
        progress: Progress | None = None,
        *,
        chunk_s: int | None = None,
        events_sink: EventsSink | None = None,
    ) -> BackfillStats:
        """Write every series for the ticks in ``[start_ms, end_ms)`` into ``store``.

        Runs the scheduler a block (``chunk_s``) ahead, renders the block, appends one batch per
        block, then passes the block's changed job records to ``records_sink``, its Xid events
        to ``events_sink`` and reports ``progress(done_ms, total_ms)``. Blocks are a day for
        fleets up to 64 GPUs and proportionally shorter for bigger ones (≈ 6 M samples per
        batch), unless ``chunk_s`` says otherwise. The first backfill of a simulation starts it
        at ``start_ms``; a later one must start right after the last simulated tick.
        """
        tick = self.tick_ms
        k_start, k_end = -(-start_ms // tick), -(-end_ms // tick)
        cluster = self._begin(k_start)
        if self._rendered is not None and k_start != self._rendered + 1:
            raise ValueError(
                f"backfill must continue at {(self._rendered + 1) * tick} ms, not {start_ms}"
            )
        if chunk_s is None:
            chunk_s = max(3600, DAY_S * 64 // max(64, len(self.fleet.gpus)))
        step = max(1, chunk_s // self.spec.tick_s)
        gen_s = store_s = 0.0
        samples = chunks = records = events = 0
        frame: Frame | None = None
        before = self._series_at(k_start - 1) if k_start > cluster.origin else {}
        for k0 in range(k_start, k_end, step):
            k1 = min(k0 + step, k_end)
            t0 = time.perf_counter()
            changed = cluster.run_until(k1 - 1)
            frame, node_io, jobs = self._render(k0, k1)
            cumulative = self._counters.integrate(self.fleet, frame)
            xid_before = dict(self._io.xid_counts)
            node_cum, port_cum = self._io.integrate(self.fleet, node_io)
            self._io_last = node_io
            out = Builder()
            holders = {j.seq: j for j in cluster.jobs_active(k0, k1)}
            gpu_batch(self.fleet, frame, cumulative, holders, out)
            node_batch(self.fleet, self.hardware, node_io, node_cum, port_cum, xid_before, out)
            sched_batch(self.fleet, self._sched_jobs(k0, k1), k0, k1, out)
            batch, before = out.build_with_markers(before, k0 * tick, (k1 - 1) * tick, tick)
            t1 = time.perf_counter()
            store.append(batch)
            t2 = time.perf_counter()
            if records_sink is not None and changed:
                records_sink([j.record(self.spec.cluster, tick) for j in changed])
                records += len(changed)
            if events_sink is not None and node_io.xids:
                by_seq: dict[int | None, SimJob] = {j.seq: j for j in jobs}
                events_sink([
                    io.xid_event(self.fleet, x, by_seq.get(x.job_seq))
                    for x in node_io.xids
                ])  # fmt: skip
                events += len(node_io.xids)
            gen_s += t1 - t0
            store_s += t2 - t1
            samples += len(batch)
            chunks += 1
            self._rendered = k1 - 1
            if progress is not None:
                progress((k1 - k_start) * tick, (k_end - k_start) * tick)
        if frame is not None:
            self._apply(frame)
        return BackfillStats(samples, chunks, records, gen_s, store_s, events)

    def _series_at(self, k: int) -> Present:
        """The series (label key → labels) the agents produced at tick ``k`` (simulated)."""
        frame, node_io, _ = self._render(k, k + 1)
        zeros = np.zeros(frame.up.shape)
        out = Builder()
        holders = {j.seq: j for j in self.cluster.jobs_active(k, k + 1)}
        gpu_batch(self.fleet, frame, dict.fromkeys(CUMULATIVE, zeros), holders, out)
        # presence only: a reading that grew since the tick before (none at a reboot)
        grown = node_io.inc * ~node_io.boot[None]
        node_cum = np.concatenate([np.zeros_like(grown), grown], axis=2)
        port_cum = np.zeros((len(io.PORT_FIELDS), len(self._io.ports), 2), np.int64)
        node_io.xids = []
        node_batch(self.fleet, self.hardware, node_io, node_cum, port_cum,
                   dict(self._io.xid_counts), out)  # fmt: skip
        sched_batch(self.fleet, self._sched_jobs(k, k + 1), k, k + 1, out)
        return out.present_at(k * self.tick_ms)

    def _sched_jobs(self, k0: int, k1: int) -> list[SimJob]:
        return [j for j in self.cluster.jobs if j.submit < k1 and (j.end is None or j.end > k0)]

    # -- ground truth ------------------------------------------------------------------

    def ledger(self, start_ms: int, end_ms: int, by: str = "team") -> dict[str, float]:
        """Allocated GPU-hours per ``by`` (team, user, workload, tier or id) in
        ``[start_ms, end_ms)``, per the simulator's schedule up to the last simulated tick."""
        if by not in LEDGER_KEYS:
            raise ValueError(f"by must be one of {', '.join(LEDGER_KEYS)}")
        out: dict[str, float] = {t.name: 0.0 for t in self.fleet.teams} if by == "team" else {}
        if self._cluster is None or self._rendered is None:
            return out
        tick = self.tick_ms
        held_until = (self._rendered + 1) * tick
        for job in self._cluster.jobs:
            if job.start is None:
                continue
            a = job.start * tick
            b = job.end * tick if job.end is not None else held_until
            overlap = min(b, end_ms, held_until) - max(a, start_ms)
            if overlap > 0:
                key = str(getattr(job, by))
                out[key] = out.get(key, 0.0) + job.gpus * overlap / 3_600_000
        return out

    def jobs(self) -> list[Job]:
        """Every job submitted so far, as records."""
        if self._cluster is None:
            return []
        return [j.record(self.spec.cluster, self.tick_ms) for j in self._cluster.jobs]

    def node(self, name: str) -> SimNode:
        return next(n for n in self.nodes if n.name == name)

    @property
    def devices(self) -> Sequence[FakeDevice]:
        return self._devices
