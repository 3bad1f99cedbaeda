"""Rendered blocks → sample batches: the series a live agent would have sent, built in bulk.

Metric names, label sets and unit conversions are exactly those of the live path:
:class:`fleetscope.collect.gpu.GPUCollector` on a :class:`~fleetscope.simulate.nvml.FakeNVML`
(the GPU series with ``{node, gpu, gpu_uuid, gpu_model}``, ``fleet_gpu_up`` at every tick and
nothing else for a lost GPU, ``fleet_gpu_process_memory_bytes{…, pid, job, user}``), the
prolog-file attribution (``fleet_gpu_allocation{…, job, team, user, workload, tier} 1`` while a
job holds the GPU, DESIGN.md "Attribution rule") and the simulated scheduler's series
(``fleet_sched_gpus_total`` and the others of the contract). Within a batch, each series' rows
are in time order. Everything is numpy over ``[row, tick]`` grids; Python loops run only over
series (GPUs, allocations, label combinations).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from fleetscope.model import WORKLOADS
from fleetscope.simulate.behaviour import Frame
from fleetscope.simulate.cluster import OPEN
from fleetscope.simulate.fleet import Fleet
from fleetscope.simulate.jobs import SimJob
from fleetscope.simulate.scheduler import REASONS
from fleetscope.store import METRIC_NAME, SampleBatch

__all__ = ["Builder", "gpu_batch", "sched_batch"]

F64 = npt.NDArray[np.float64]
TIERS_ORDER = ("production", "experimentation")


class Builder:
    """Accumulates series and their rows; :meth:`build` makes one :class:`SampleBatch`."""

    def __init__(self) -> None:
        self.series: list[dict[str, str]] = []
        self._idx: list[npt.NDArray[np.int32]] = []
        self._t: list[npt.NDArray[np.int64]] = []
        self._v: list[F64] = []

    def grid(
        self,
        name: str,
        rows: Sequence[Mapping[str, str]],
        t_ms: npt.NDArray[np.int64],
        values: npt.ArrayLike,
        mask: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """One series per row label set; ``values[row, k]`` at ``t_ms[k]`` where ``mask``."""
        vals = np.broadcast_to(np.asarray(values, np.float64), (len(rows), len(t_ms)))
        base = len(self.series)
        self.series.extend({METRIC_NAME: name, **r} for r in rows)
        idx = np.broadcast_to(np.arange(base, base + len(rows), dtype=np.int32)[:, None],
                              vals.shape)  # fmt: skip
        t = np.broadcast_to(t_ms[None, :], vals.shape)
        if mask is None:
            self._idx.append(idx.ravel())
            self._t.append(t.ravel())
            self._v.append(vals.ravel())
        else:
            self._idx.append(idx[mask])
            self._t.append(t[mask])
            self._v.append(vals[mask])

    def run(self, name: str, labels: Mapping[str, str], t_ms: npt.NDArray[np.int64],
            values: npt.ArrayLike) -> None:  # fmt: skip
        """One series with the given rows."""
        self.series.append({METRIC_NAME: name, **labels})
        self._idx.append(np.full(len(t_ms), len(self.series) - 1, np.int32))
        self._t.append(np.asarray(t_ms, np.int64))
        self._v.append(np.broadcast_to(np.asarray(values, np.float64), t_ms.shape).copy())

    def build(self) -> SampleBatch:
        if not self._t:
            return SampleBatch(self.series, np.empty(0, np.int32), np.empty(0, np.int64),
                               np.empty(0, np.float64))  # fmt: skip
        return SampleBatch(self.series, np.concatenate(self._idx), np.concatenate(self._t),
                           np.concatenate(self._v))  # fmt: skip


def gpu_batch(
    fleet: Fleet,
    frame: Frame,
    cumulative: Mapping[str, npt.NDArray[np.generic]],
    jobs: Mapping[int, SimJob],
    out: Builder,
) -> None:
    """The GPU, allocation and process series of one rendered block."""
    t_ms = frame.ticks * fleet.spec.tick_ms
    rows = [g.labels() for g in fleet.gpus]
    up = frame.up
    total = np.array([g.model.memory_total_bytes for g in fleet.gpus], np.float64)[:, None]
    limit = np.array([g.model.power_limit_mw for g in fleet.gpus], np.float64)[:, None]
    out.grid("fleet_gpu_up", rows, t_ms, up.astype(np.float64))
    gauges: Iterable[tuple[str, npt.ArrayLike]] = (
        ("fleet_gpu_utilization_ratio", frame.util_pct / 100),
        ("fleet_gpu_memory_used_bytes", frame.memory_used_bytes),
        ("fleet_gpu_memory_total_bytes", total),
        ("fleet_gpu_temperature_celsius", frame.temperature_c),
        ("fleet_gpu_power_watts", frame.power_mw / 1000),
        ("fleet_gpu_power_limit_watts", limit / 1000),
        ("fleet_gpu_energy_joules_total", np.asarray(cumulative["energy_mj"]) / 1000),
        ("fleet_gpu_sm_clock_hertz", frame.sm_clock_mhz * 1e6),
        ("fleet_gpu_throttle_reasons", frame.throttle_reasons),
    )
    for name, values in gauges:
        out.grid(name, rows, t_ms, values, up)
    for kind, key in (("corrected", "ecc_corrected"), ("uncorrected", "ecc_uncorrected")):
        ecc_rows = [{**r, "type": kind} for r in rows]
        out.grid("fleet_gpu_ecc_errors_total", ecc_rows, t_ms, cumulative[key], up)
    out.grid("fleet_gpu_pcie_receive_bytes_total", rows, t_ms, cumulative["pcie_rx_bytes"], up)
    out.grid("fleet_gpu_pcie_transmit_bytes_total", rows, t_ms, cumulative["pcie_tx_bytes"], up)
    _holder_runs(fleet, frame, jobs, t_ms, out)


def allocation_labels(fleet: Fleet, gpu: int, job: SimJob) -> dict[str, str]:
    """``fleet_gpu_allocation`` labels, as attribution reads them from the prolog file."""
    return {
        **fleet.gpus[gpu].labels(),
        "job": job.id,
        "team": job.team,
        "user": job.user,
        "workload": job.workload,
        "tier": job.tier,
    }


def _holder_runs(
    fleet: Fleet,
    frame: Frame,
    jobs: Mapping[int, SimJob],
    t_ms: npt.NDArray[np.int64],
    out: Builder,
) -> None:
    """``fleet_gpu_allocation`` and ``fleet_gpu_process_memory_bytes`` per (GPU, job) run."""
    holder = frame.holder
    for g in range(holder.shape[0]):
        row = holder[g]
        edges = np.flatnonzero(np.diff(row)) + 1
        for a, b in zip(np.r_[0, edges], np.r_[edges, len(row)], strict=True):
            seq = int(row[a])
            if seq < 0:
                continue
            job = jobs[seq]
            labels = allocation_labels(fleet, g, job)
            out.run("fleet_gpu_allocation", labels, t_ms[a:b], 1.0)
            proc = frame.process[g, a:b] & frame.up[g, a:b]
            if proc.any():
                pid = int(frame.pid[g, a:b][proc][0])
                plabels = {**fleet.gpus[g].labels(), "pid": str(pid), "job": job.id,
                           "user": job.user}  # fmt: skip
                out.run("fleet_gpu_process_memory_bytes", plabels, t_ms[a:b][proc],
                        frame.memory_used_bytes[g, a:b][proc])  # fmt: skip


def sched_batch(
    fleet: Fleet,
    jobs: Iterable[SimJob],
    k0: int,
    k1: int,
    out: Builder,
    t_ms: npt.NDArray[np.int64] | None = None,
) -> None:
    """The scheduler series at every tick of ``[k0, k1)`` (state after each tick).

    ``t_ms`` overrides the timestamps (one per tick). Always present: ``gpus_total``,
    ``quota_gpus`` per team, ``gpus_allocated`` per (team, tier) and ``jobs`` per
    (PENDING|RUNNING, team, workload); ``pending_jobs``/``pending_gpus`` per (reason, team,
    workload) only where some job waits for that reason, as a Slurm exporter reports them.
    """
    n = k1 - k0
    cluster = fleet.spec.cluster
    times = np.arange(k0, k1, dtype=np.int64) * fleet.spec.tick_ms if t_ms is None else t_ms
    teams = [t.name for t in fleet.teams]
    ti = {t: i for i, t in enumerate(teams)}
    wi = {w: i for i, w in enumerate(WORKLOADS)}
    ri = {r: i for i, r in enumerate(REASONS)}
    n_t, n_w, n_r = len(teams), len(WORKLOADS), len(REASONS)
    alloc = np.zeros((n_t * 2, n + 1), np.int64)
    state = np.zeros((2 * n_t * n_w, n + 1), np.int64)  # PENDING block, then RUNNING
    pend = np.zeros((2, n_r * n_t * n_w, n + 1), np.int64)  # jobs, gpus

    def add(arr: npt.NDArray[np.int64], row: int, a: int, b: int, value: int) -> None:
        a, b = max(a, k0) - k0, min(b, k1) - k0
        if b > a:
            arr[row, a] += value
            arr[row, b] -= value

    for job in jobs:
        t, w = ti[job.team], wi[job.workload]
        combo = t * n_w + w
        pend_end = (
            job.start if job.start is not None else (job.end if job.end is not None else OPEN)
        )
        add(state, combo, job.submit, pend_end, 1)
        marks = [*job.reasons, (pend_end, "")]
        for (a, reason), (b, _) in pairwise(marks):
            row = ri[reason] * n_t * n_w + combo
            add(pend[0], row, a, b, 1)
            add(pend[1], row, a, b, job.gpus)
        if job.start is not None:
            end = job.end if job.end is not None else OPEN
            add(state, n_t * n_w + combo, job.start, end, 1)
            add(alloc, t * 2 + (0 if job.tier == "production" else 1), job.start, end, job.gpus)

    def level(arr: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.cumsum(arr, axis=-1)[..., :n]

    c = {"cluster": cluster}
    out.grid("fleet_sched_gpus_total", [c], times, np.full((1, n), len(fleet.gpus)))
    quotas = np.array([[tm.quota_gpus] for tm in fleet.teams], np.float64)
    out.grid("fleet_sched_quota_gpus", [{**c, "team": tm} for tm in teams], times, quotas)
    rows = [{**c, "team": tm, "tier": tier} for tm in teams for tier in TIERS_ORDER]
    out.grid("fleet_sched_gpus_allocated", rows, times, level(alloc))
    rows = [{**c, "state": s, "team": tm, "workload": w}
            for s in ("PENDING", "RUNNING") for tm in teams for w in WORKLOADS]  # fmt: skip
    out.grid("fleet_sched_jobs", rows, times, level(state))
    counts, gpus = level(pend[0]), level(pend[1])
    live = np.flatnonzero(counts.any(axis=1))
    rows = [{**c, "reason": r, "team": tm, "workload": w}
            for r in REASONS for tm in teams for w in WORKLOADS]  # fmt: skip
    sel = [rows[i] for i in live]
    out.grid("fleet_sched_pending_jobs", sel, times, counts[live], counts[live] > 0)
    out.grid("fleet_sched_pending_gpus", sel, times, gpus[live], counts[live] > 0)
