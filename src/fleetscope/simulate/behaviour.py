"""Per-GPU behaviour: what each GPU reads on every tick, for a whole block of ticks at once.

:func:`render` computes, vectorised over ``[GPU, tick]`` grids, the NVML readings of every GPU
(the :class:`~fleetscope.simulate.nvml.FakeDevice` fields) from who holds it and the holder's
behaviour pattern (:class:`~fleetscope.simulate.jobs.Pattern`):

- *steady* training: utilization ~85–97 % with a short checkpoint dip every 30–60 min, memory
  55–95 % used, power near the limit (software power cap engaged);
- *bursty*, data-starved: utilization oscillates around ~35 %;
- *idle* reservation: 0 %, a little memory, no process (DESIGN.md "Definitions": allocated time
  with utilization < 5 % counts as idle GPU-hours);
- *inference*: diurnal load (trough 03:00 UTC, peak 15:00, weekends at 60 %), memory 90 %
  (the KV cache is pre-allocated);
- *notebook*: idle but for 5-minute bursts; *partial*: a multi-GPU job that only uses its first.

Unallocated GPUs idle at their model's idle power. Power follows utilization; temperature
follows the power of the last 2 minutes. Readings are a pure function of (seed, GPU, tick,
holder): noise comes from a counter-based hash, not a sequential generator, so any block of
ticks renders the same values however the timeline is cut. The counters that integrate readings
(energy, ECC, PCIe bytes) are carried across blocks by :class:`Counters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fleetscope.simulate.fleet import Fleet
from fleetscope.simulate.jobs import Pattern, SimJob

__all__ = ["SMOOTH_TICKS", "Counters", "Frame", "Pattern", "render"]


I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

SMOOTH_TICKS = 8  # temperature follows the mean power of this many ticks
NONE = 6  # pattern of an unallocated GPU
GPU_IDLE = 0x1  # NVML clocks-event reasons
SW_POWER_CAP = 0x4
CONTEXT_BYTES = 512 * 1024**2
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def noise(seed: int, rows: npt.ArrayLike, ticks: npt.ArrayLike, channel: int) -> F64:
    """Uniform [0, 1) values hashed from (seed, row, tick, channel) (splitmix64), broadcast."""
    r = np.asarray(rows, np.int64).astype(np.uint64)
    t = np.asarray(ticks, np.int64).astype(np.uint64)
    salt = np.uint64(
        (seed * 0x2545F4914F6CDD1D + channel * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    )
    x = (r * np.uint64(0x9E3779B97F4A7C15)) ^ (t * np.uint64(0xD1B54A32D192ED03)) ^ salt
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return np.asarray((x >> np.uint64(11)).astype(np.float64) * 2.0**-53)


@dataclass
class Frame:
    """Readings of every GPU (rows, fleet order) at every tick of a block (columns)."""

    ticks: I64  # (K,)
    up: B  # NVML answers (the node is not down)
    util_pct: I64
    mem_util_pct: I64
    memory_used_bytes: I64
    power_mw: I64
    temperature_c: I64
    sm_clock_mhz: I64
    throttle_reasons: I64
    pcie_tx_kbps: I64
    pcie_rx_kbps: I64
    holder: I64  # job seq holding the GPU, -1 when free
    rank: I64  # the GPU's rank within its job
    process: B  # the holder runs a process on it
    pid: I64  # that process' pid (0 when none)


def pid_of(seq: int | I64, rank: int | I64) -> I64:
    """The pid of a job's process on its ``rank``-th GPU (unique per node)."""
    return np.asarray(100_000 + (np.asarray(seq) * 64 + np.asarray(rank)) % 4_000_000, np.int64)


def render(
    fleet: Fleet,
    k0: int,
    k1: int,
    jobs: Sequence[SimJob],
    down: Sequence[Sequence[tuple[int, int]]],
) -> Frame:
    """Readings for ticks ``[k0, k1)``; ``jobs`` must include every job holding a GPU then
    (and in the :data:`SMOOTH_TICKS` before), ``down`` each node's ``[down, up)`` intervals."""
    spec = fleet.spec
    lo = k0 - (SMOOTH_TICKS - 1)
    n_gpu, n_tick = len(fleet.gpus), k1 - lo
    ticks = np.arange(lo, k1, dtype=np.int64)
    holder = np.full((n_gpu, n_tick), -1, np.int64)
    local = np.full((n_gpu, n_tick), len(jobs), np.int64)  # index into per-job arrays
    rank = np.zeros((n_gpu, n_tick), np.int64)
    for i, job in enumerate(jobs):
        if job.start is None:
            continue
        a = max(job.start, lo) - lo
        b = min(job.end if job.end is not None else k1, k1) - lo
        if b <= a:
            continue
        for r, g in enumerate(job.gpu_ids):
            holder[g, a:b] = job.seq
            local[g, a:b] = i
            rank[g, a:b] = r
    up = np.ones((n_gpu, n_tick), bool)
    node_of = np.array([g.node_id for g in fleet.gpus], np.int64)
    for node, intervals in enumerate(down):
        for d0, d1 in intervals:
            a, b = max(d0, lo) - lo, min(d1, k1) - lo
            if b > a:
                up[node_of == node, a:b] = False

    def per_job(values: Sequence[float], fill: float) -> F64:
        return np.asarray([*values, fill], np.float64)[local]

    pattern = per_job([j.pattern for j in jobs], NONE).astype(np.int64)
    level = per_job([j.level for j in jobs], 0.0)
    mem_frac = per_job([j.mem_frac for j in jobs], 0.0)
    period = per_job([j.period for j in jobs], 1.0).astype(np.int64)
    phase = per_job([j.phase for j in jobs], 0.0).astype(np.int64)
    pcie = per_job([j.pcie_kbps for j in jobs], 0.0)

    gid = np.arange(n_gpu, dtype=np.int64)[:, None]
    seed = spec.seed
    n_gpu_t = noise(seed, gid, ticks[None, :], 1)
    n_job_t = noise(seed, holder, ticks[None, :], 2)
    steady = (pattern == Pattern.STEADY) | ((pattern == Pattern.PARTIAL) & (rank == 0))
    u = np.zeros((n_gpu, n_tick), np.float64)
    dip = ((ticks[None, :] + phase) % period) < 3
    u = np.where(steady, np.where(dip, 0.03 + 0.07 * n_gpu_t, level + 0.06 * (n_gpu_t - 0.5)), u)
    wave = np.sin(2 * np.pi * ((ticks[None, :] + phase) % period) / period)
    bursty = np.clip(level + 0.3 * (2 * n_job_t - 1) + 0.15 * wave, 0.0, 1.0)
    u = np.where(pattern == Pattern.BURSTY, bursty, u)
    secs = ticks * spec.tick_s
    day_frac = (secs % 86_400) / 86_400
    diurnal = 0.5 - 0.5 * np.cos(2 * np.pi * (day_frac - 3 / 24))
    weekend = np.where((secs // 86_400 + 3) % 7 >= 5, 0.6, 1.0)
    load = 0.05 + level * (diurnal * weekend)[None, :] + 0.04 * (n_gpu_t - 0.5)
    u = np.where(pattern == Pattern.INFERENCE, np.clip(load, 0.0, 1.0), u)
    active = noise(seed, holder, (ticks // 20)[None, :], 3) < 0.15
    u = np.where((pattern == Pattern.NOTEBOOK) & active, 0.3 + 0.6 * n_job_t, u)
    util = np.clip(np.rint(u * 100), 0, 100).astype(np.int64)

    allocated = holder >= 0
    process = allocated & (pattern != Pattern.IDLE) & ~((pattern == Pattern.PARTIAL) & (rank > 0))
    total = np.array([g.model.memory_total_bytes for g in fleet.gpus], np.int64)[:, None]
    mib = 1024**2
    jitter = np.where(pattern == Pattern.INFERENCE, 1.0, 1.0 + 0.02 * (n_job_t - 0.5))
    used = (total * np.minimum(mem_frac * jitter, 0.97)) // mib * mib
    used = np.where(process | (allocated & (pattern == Pattern.IDLE)), used, 0).astype(np.int64)
    used = np.where(process, np.maximum(used, CONTEXT_BYTES), used)

    limit = np.array([g.model.power_limit_mw for g in fleet.gpus], np.float64)[:, None]
    idle = np.array([g.model.idle_power_mw for g in fleet.gpus], np.float64)[:, None]
    busy = idle + (limit - idle) * u**0.6 + 0.02 * limit * (n_gpu_t - 0.5)
    resting = idle * (1.0 + 0.06 * (n_gpu_t - 0.5) + np.where(used > 0, 0.15, 0.0))
    power = np.clip(np.where(util > 0, busy, resting), 0.5 * idle, limit)
    power = np.where(up, np.rint(power), 0).astype(np.int64)

    kernel = np.ones(SMOOTH_TICKS) / SMOOTH_TICKS
    csum = np.cumsum(np.pad(power.astype(np.float64), ((0, 0), (SMOOTH_TICKS, 0))), axis=1)
    smooth = (csum[:, SMOOTH_TICKS:] - csum[:, :-SMOOTH_TICKS]) * kernel[0]
    temp = np.rint(27 + 48 * smooth / limit + 1.5 * (n_gpu_t - 0.5)).astype(np.int64)

    capped = power >= 0.95 * limit
    throttle = np.where(util == 0, GPU_IDLE, 0) | np.where(capped, SW_POWER_CAP, 0)
    max_mhz = np.array([g.model.max_sm_mhz for g in fleet.gpus], np.int64)[:, None]
    idle_mhz = np.array([g.model.idle_sm_mhz for g in fleet.gpus], np.int64)[:, None]
    clock = np.where(util == 0, idle_mhz, max_mhz - np.where(capped, np.rint(90 * n_gpu_t), 0))
    mem_util = np.clip(np.rint(u * 100 * (0.45 + 0.3 * n_gpu_t)), 0, 100).astype(np.int64)
    rx = np.where(process, np.rint(pcie * u * (0.7 + 0.6 * n_job_t)), np.rint(20 + 30 * n_gpu_t))
    tx = np.rint(rx * 0.25 + 10 * n_gpu_t)

    s = slice(SMOOTH_TICKS - 1, None)
    i64 = np.int64
    return Frame(
        ticks=ticks[s],
        up=up[:, s],
        util_pct=util[:, s],
        mem_util_pct=mem_util[:, s],
        memory_used_bytes=used[:, s],
        power_mw=power[:, s],
        temperature_c=temp[:, s],
        sm_clock_mhz=clock[:, s].astype(i64),
        throttle_reasons=throttle[:, s].astype(i64),
        pcie_tx_kbps=tx[:, s].astype(i64),
        pcie_rx_kbps=rx[:, s].astype(i64),
        holder=holder[:, s],
        rank=rank[:, s],
        process=process[:, s],
        pid=np.where(process, pid_of(holder, rank), 0)[:, s],
    )


@dataclass
class Counters:
    """NVML's cumulative counters per GPU, carried from one rendered block to the next.

    ``pcie_*`` mirror :class:`fleetscope.collect.gpu.GPUCollector`'s integration (trapezoid of
    KB/s readings between successive answered reads, KiB = 1024 bytes, restarted after a gap),
    as a collector started at the first rendered tick would compute it.
    """

    energy_mj: I64
    ecc_corrected: I64
    ecc_uncorrected: I64
    pcie_rx_bytes: F64
    pcie_tx_bytes: F64
    last_rx_kbps: I64  # -1: no previous answered read
    last_tx_kbps: I64

    @classmethod
    def initial(cls, fleet: Fleet) -> Counters:
        """Counters at the origin: energy since a driver load some days earlier."""
        n = len(fleet.gpus)
        rng = np.random.default_rng([fleet.spec.seed, 0xE4])
        energy = rng.integers(10**9, 10**11, n).astype(np.int64)
        zeros = np.zeros(n, np.int64)
        return cls(energy, zeros.copy(), zeros.copy(), np.zeros(n), np.zeros(n),
                   np.full(n, -1, np.int64), np.full(n, -1, np.int64))  # fmt: skip

    def integrate(self, fleet: Fleet, frame: Frame) -> dict[str, npt.NDArray[np.generic]]:
        """Cumulative values at every tick of ``frame`` (rows = GPUs); advances the carry."""
        tick_s = fleet.spec.tick_s
        up = frame.up
        energy = self.energy_mj[:, None] + np.cumsum(frame.power_mw * tick_s * up, axis=1)
        bump = (noise(fleet.spec.seed, np.arange(len(fleet.gpus))[:, None], frame.ticks, 9)
                < 2e-5) & up  # fmt: skip
        ecc = self.ecc_corrected[:, None] + np.cumsum(bump, axis=1)
        out: dict[str, npt.NDArray[np.generic]] = {
            "energy_mj": energy,
            "ecc_corrected": ecc,
            "ecc_uncorrected": np.broadcast_to(self.ecc_uncorrected[:, None], up.shape),
        }
        for name, kbps, last, total in (
            ("pcie_rx_bytes", frame.pcie_rx_kbps, self.last_rx_kbps, self.pcie_rx_bytes),
            ("pcie_tx_bytes", frame.pcie_tx_kbps, self.last_tx_kbps, self.pcie_tx_bytes),
        ):
            prev = np.concatenate([last[:, None], kbps[:, :-1]], axis=1)
            prev_ok = np.concatenate([(last >= 0)[:, None], up[:, :-1]], axis=1)
            inc = np.where(up & prev_ok, (prev + kbps) * (512 * tick_s), 0).astype(np.float64)
            cum = total[:, None] + np.cumsum(inc, axis=1)
            out[name] = cum
            total[:] = cum[:, -1]
            last[:] = np.where(up[:, -1], kbps[:, -1], -1)
        self.energy_mj = energy[:, -1].copy()
        self.ecc_corrected = ecc[:, -1].copy()
        return out
