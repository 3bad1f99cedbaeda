"""A deterministic hour of fleet metrics: the data every conformance query runs on.

:func:`generate` builds one :class:`~fleetscope.store.SampleBatch` from a seeded NumPy generator,
ending at a given time (Prometheus 2.42 takes remote-written samples only inside its head block,
so the hour must end a little before now). Only the timestamps depend on ``end_ms``; every value
and label depends on the seed alone.

What it holds, chosen to reach the edges of PromQL's semantics (cycle ``k`` is the scrape at
``start_ms + phase + k * interval``; four 15 s cycles make a minute):

- GPU gauges and counters for 4 nodes × 4 GPUs (``node, gpu, gpu_uuid, gpu_model``), two GPU
  models, each node scraped at its own phase, ``gpu-node-3`` with ±0.2 s scrape jitter:
  utilization (exact 0 and 1 included), memory used/total, power, temperature (normal NaN
  samples on one GPU), ``fleet_gpu_up`` (0 for six minutes on one GPU, whose other gauges are
  absent then), energy and PCIe byte counters with resets (two on one series).
- Gaps: ``gpu-node-2`` GPU 2 misses 10 % of its scrapes and three whole minutes, without
  staleness markers (an agent that did not push); ``gpu-node-1`` GPU 2's utilization is absent
  for six minutes (longer than the 5 m lookback).
- Staleness: ``gpu-node-4`` goes away at minute 40 and comes back at minute 48; all its series
  get Prometheus' stale NaN at the first missed scrape, as Prometheus writes when a target
  disappears. Allocation series of jobs that end get one too, except one job whose agent died
  (its series just stops and overlaps its successor on the same GPU for four minutes, so
  ``group_left`` joins on ``gpu_uuid`` meet duplicate series then).
- ``fleet_gpu_allocation`` info series (value 1) of eight jobs that start and stop; two of them
  run one after the other on the same GPUs for the same team (a join keeping only ``team``
  gives one series per GPU through both).
- A classic histogram ``fleet_inference_ttft_seconds`` (``_bucket{le}``, ``_sum``, ``_count``)
  for three endpoints: one steady, one without traffic for 20 minutes, one restarting at
  minute 37 (every counter resets), with request counters and gauges beside it.
- Scheduler gauges every 30 s (quota changes at minute 30), host gauges every 15 s, mesh RTT
  every 60 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fleetscope.store import SampleBatch

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

SEED = 20_240_607
DURATION_MS = 3_600_000
STALE_NAN = float(np.array([0x7FF0000000000002], np.int64).view(np.float64)[0])
STALE_NAN_BITS = 0x7FF0000000000002

# per-cycle codes of a series
SAMPLE, MISSING, STALE = 0, 1, 2

MIB = 1024 * 1024
MODELS = {
    "gpu-node-1": ("NVIDIA H100 80GB HBM3", 81_559 * MIB, 700.0),
    "gpu-node-2": ("NVIDIA H100 80GB HBM3", 81_559 * MIB, 700.0),
    "gpu-node-3": ("NVIDIA A100-SXM4-40GB", 40_960 * MIB, 400.0),
    "gpu-node-4": ("NVIDIA A100-SXM4-40GB", 40_960 * MIB, 400.0),
}
NODES = tuple(MODELS)
GPUS_PER_NODE = 4
NODE_DOWN = (160, 192)  # gpu-node-4 is gone for these cycles (minutes 40-48)
LE = ("0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")


@dataclass(frozen=True)
class Job:
    """A job holding GPUs from cycle ``start`` up to (not including) ``end``."""

    job: str
    team: str
    user: str
    workload: str
    tier: str
    gpus: tuple[tuple[str, int], ...]
    start: int
    end: int | None  # None: still running at the end of the data
    stale_at_end: bool = True  # False: the agent died, the series just stops
    busy: tuple[float, float] = (0.85, 1.0)  # utilization range while it runs
    own_draws: bool = False  # its walk from a generator of its own: added later, it left the
    # random values of every other series as they were


JOBS = (
    Job("train-llama-0412", "llm", "alice", "training", "production",
        (("gpu-node-1", 0), ("gpu-node-1", 1)), 0, None),
    Job("train-vit-77", "vision", "bob", "training", "production",
        tuple(("gpu-node-2", g) for g in range(4)), 20, 200),
    Job("ft-mistral-9", "llm", "carol", "fine_tuning", "experimentation",
        (("gpu-node-3", 0), ("gpu-node-3", 1)), 0, 200, stale_at_end=False, busy=(0.4, 0.9)),
    Job("nb-dave-1", "research", "dave", "notebook", "experimentation",
        (("gpu-node-3", 0),), 204, None, busy=(0.0, 0.04)),
    Job("serve-llama-70b", "llm", "svc-llm", "inference", "production",
        tuple(("gpu-node-4", g) for g in range(4)), 0, None, busy=(0.3, 0.7)),
    Job("batch-etl-5", "research", "erin", "batch", "experimentation",
        (("gpu-node-1", 2), ("gpu-node-1", 3)), 60, 90, busy=(0.45, 0.55)),
    Job("batch-etl-6", "research", "erin", "batch", "experimentation",
        (("gpu-node-1", 2), ("gpu-node-1", 3)), 110, 150, busy=(0.45, 0.55), own_draws=True),
    Job("nb-frank-2", "vision", "frank", "notebook", "experimentation",
        (("gpu-node-3", 2),), 10, 230, busy=(0.0, 0.03)),
)  # fmt: skip

ENDPOINTS = (
    # endpoint, model, team, tier, requests per 15 s, zero-traffic cycles, restart cycle
    ("llama-70b-prod", "llama-3-70b", "llm", "production", 40.0, None, None),
    ("mistral-7b-exp", "mistral-7b", "research", "experimentation", 5.0, (60, 140), None),
    ("embed-prod", "bge-large", "vision", "production", 20.0, None, 150),
)
QUOTA = {"llm": 8.0, "vision": 6.0, "research": 4.0}
QUOTA_CHANGE = (120, "research", 6.0)  # at this 15 s cycle research's quota becomes 6


@dataclass
class FleetData:
    """The generated samples and the window they cover (inclusive milliseconds)."""

    batch: SampleBatch
    start_ms: int
    end_ms: int

    @property
    def samples(self) -> int:
        """Samples that are not staleness markers (what ``count_over_time`` counts)."""
        return int(np.count_nonzero(self.batch.values.view(np.int64) != STALE_NAN_BITS))

    def samples_by_name(self, *, nan: bool = True) -> dict[str, int]:
        """:attr:`samples` per metric name (without NaN samples when ``nan`` is false:
        VictoriaMetrics drops them)."""
        live = self.batch.values.view(np.int64) != STALE_NAN_BITS
        if not nan:
            live &= ~np.isnan(self.batch.values)
        per_series = np.bincount(self.batch.series_index[live], minlength=len(self.batch.series))
        out: dict[str, int] = {}
        for labels, count in zip(self.batch.series, per_series.tolist(), strict=True):
            out[labels["__name__"]] = out.get(labels["__name__"], 0) + count
        return out

    def chunks(self, span_ms: int) -> Iterator[SampleBatch]:
        """The batch cut into consecutive time spans, oldest first: the order a remote-write
        receiver that refuses out-of-order samples (Prometheus 2.42) needs."""
        t = self.batch.t_ms
        lo = int(t.min())
        while lo <= int(t.max()):
            keep = (t >= lo) & (t < lo + span_ms)
            yield SampleBatch(
                self.batch.series,
                self.batch.series_index[keep],
                t[keep],
                self.batch.values[keep],
            )
            lo += span_ms


@dataclass
class _Builder:
    series: list[dict[str, str]] = field(default_factory=list)
    index: list[Ints] = field(default_factory=list)
    t_ms: list[Ints] = field(default_factory=list)
    values: list[Floats] = field(default_factory=list)

    def add(self, labels: dict[str, str], t_ms: Ints, values: Floats, codes: Ints) -> None:
        """Add a series: ``codes[k]`` says whether cycle ``k`` has a sample, nothing or a
        staleness marker."""
        keep = codes != MISSING
        v = np.where(codes == STALE, STALE_NAN, values)[keep]
        # np.where may quiet the signalling stale NaN: write its exact bits back
        v.view(np.int64)[codes[keep] == STALE] = STALE_NAN_BITS
        self.index.append(np.full(int(keep.sum()), len(self.series), np.int64))
        self.series.append(labels)
        self.t_ms.append(t_ms[keep])
        self.values.append(v)

    def batch(self) -> SampleBatch:
        return SampleBatch(
            self.series,
            np.concatenate(self.index).astype(np.int32),
            np.concatenate(self.t_ms),
            np.concatenate(self.values),
        )


def _times(start_ms: int, end_ms: int, interval_ms: int, phase_ms: int) -> Ints:
    return np.arange(start_ms + phase_ms, end_ms + 1, interval_ms, dtype=np.int64)


def _mark_gone(codes: Ints, first: int, last: int, *, stale: bool = True) -> Ints:
    """Cycles ``[first, last)`` have no sample; the first one has a stale marker when asked."""
    out = codes.copy()
    out[first:last] = MISSING
    if stale and first < len(out):
        out[first] = STALE
    return out


def _uuid(rng: np.random.Generator) -> str:
    h = "".join(f"{b:02x}" for b in rng.integers(0, 256, 16).tolist())
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _walk(rng: np.random.Generator, n: int, lo: float, hi: float, step: float) -> Floats:
    """A random walk kept inside ``[lo, hi]`` (reflected at the bounds)."""
    x = np.empty(n)
    x[0] = rng.uniform(lo, hi)
    for k in range(1, n):
        y = x[k - 1] + rng.normal(0.0, step)
        if y > hi:
            y = 2 * hi - y
        if y < lo:
            y = 2 * lo - y
        x[k] = min(max(y, lo), hi)
    return x


def _counter(increments: Floats, start: float, resets: tuple[int, ...] = ()) -> Floats:
    """Cumulative sum of ``increments`` from ``start``, starting over from 0 at each reset."""
    out = np.empty(len(increments))
    total = start
    for k, inc in enumerate(increments.tolist()):
        total = inc if k in resets else total + inc
        out[k] = total
    return out


def generate(end_ms: int, seed: int = SEED) -> FleetData:
    """One hour of fleet data ending at ``end_ms`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    start_ms = end_ms - DURATION_MS
    out = _Builder()
    n = len(_times(start_ms, end_ms, 15_000, 0)) - 1  # cycles whose phase-shifted time fits
    alloc_util: dict[tuple[str, int], Floats] = {}
    for k, job in enumerate(JOBS):
        end = n if job.end is None else job.end
        draws = np.random.default_rng((seed, k)) if job.own_draws else rng
        for held in job.gpus:
            walk = _walk(draws, n, *job.busy, step=(job.busy[1] - job.busy[0]) / 6)
            base = alloc_util.setdefault(held, np.zeros(n))
            base[job.start : end] = np.maximum(base[job.start : end], walk[job.start : end])

    for i, node in enumerate(NODES):
        model, total_bytes, tdp = MODELS[node]
        times = _times(start_ms, end_ms, 15_000, 1_170 * i + 230)[:n]
        if node == "gpu-node-3":
            times = times + rng.integers(-200, 201, n)
        node_codes = np.zeros(n, np.int64)
        if node == "gpu-node-4":
            node_codes = _mark_gone(node_codes, *NODE_DOWN)
        host = {"node": node}
        cpu = np.round(_walk(rng, n, 0.05, 0.9, 0.05), 4)
        out.add({"__name__": "fleet_node_cpu_utilization_ratio", **host}, times, cpu, node_codes)
        load = np.round(_walk(rng, n, 0.5, 64.0, 2.0), 2)
        out.add({"__name__": "fleet_node_load1", **host}, times, load, node_codes)
        mem_total = float(2**40)
        out.add(
            {"__name__": "fleet_node_memory_total_bytes", **host},
            times,
            np.full(n, mem_total),
            node_codes,
        )
        out.add(
            {"__name__": "fleet_node_memory_used_bytes", **host},
            times,
            np.round(_walk(rng, n, 0.1, 0.8, 0.02) * mem_total / MIB) * MIB,
            node_codes,
        )
        for g in range(GPUS_PER_NODE):
            gpu = {"node": node, "gpu": str(g), "gpu_uuid": _uuid(rng), "gpu_model": model}
            codes = node_codes.copy()
            if (node, g) == ("gpu-node-2", 2):
                codes[rng.random(n) < 0.1] = MISSING
                codes[100:112] = MISSING
            util = alloc_util.get((node, g), np.zeros(n))
            noise = rng.normal(0.0, 0.01, n)
            util = np.clip(np.round(util + np.where(util > 0.05, noise, 0.0), 2), 0.0, 1.0)
            up = np.ones(n)
            util_codes = codes.copy()
            if (node, g) == ("gpu-node-1", 2):
                up[100:124] = 0.0
                util_codes[100:124] = MISSING
            power = np.round(tdp * (0.1 + 0.85 * util) + rng.normal(0, 3.0, n), 3)
            temp = np.round(35 + 45 * util + rng.normal(0, 1.0, n))
            if (node, g) == ("gpu-node-1", 3):
                temp[50:54] = np.nan
            mem = np.round(total_bytes * np.clip(util * 0.9 + 0.02, 0, 1) / MIB) * MIB
            energy = _counter(
                power * 15.0,
                float(rng.integers(10**7, 10**9)),
                (80,) if (node, g) == ("gpu-node-1", 0) else (),
            )
            rx_resets = (130, 170) if (node, g) == ("gpu-node-2", 1) else ()
            pcie_rx = _counter(
                np.floor(rng.uniform(1e8, 6e9, n) * (0.1 + util)), 1e12 * (g + 1), rx_resets
            )
            pcie_tx = _counter(np.floor(rng.uniform(5e7, 2e9, n) * (0.1 + util)), 5e11 * (g + 1))
            for name, values, c in (
                ("fleet_gpu_utilization_ratio", util, util_codes),
                ("fleet_gpu_memory_used_bytes", mem, util_codes),
                ("fleet_gpu_memory_total_bytes", np.full(n, float(total_bytes)), codes),
                ("fleet_gpu_power_watts", power, util_codes),
                ("fleet_gpu_temperature_celsius", temp, util_codes),
                ("fleet_gpu_up", up, codes),
                ("fleet_gpu_energy_joules_total", energy, util_codes),
                ("fleet_gpu_pcie_receive_bytes_total", pcie_rx, util_codes),
                ("fleet_gpu_pcie_transmit_bytes_total", pcie_tx, util_codes),
            ):
                out.add({"__name__": name, **gpu}, times, values, c)
            for job in JOBS:
                if (node, g) not in job.gpus:
                    continue
                jc = np.full(n, MISSING, np.int64)
                end = n if job.end is None else job.end
                jc[job.start : end] = SAMPLE
                if job.end is not None and job.stale_at_end:
                    jc[job.end] = STALE
                jc = np.where(node_codes == SAMPLE, jc, node_codes)
                labels = {
                    "__name__": "fleet_gpu_allocation",
                    **gpu,
                    "job": job.job,
                    "team": job.team,
                    "user": job.user,
                    "workload": job.workload,
                    "tier": job.tier,
                }
                out.add(labels, times, np.ones(n), jc)

    _inference(out, rng, start_ms, end_ms, n)
    _scheduler(out, rng, start_ms, end_ms)
    _mesh(out, rng, start_ms, end_ms)
    return FleetData(out.batch(), start_ms, end_ms)


def _inference(out: _Builder, rng: np.random.Generator, start_ms: int, end_ms: int, n: int) -> None:
    times = _times(start_ms, end_ms, 15_000, 7_310)[:n]
    bounds = np.array([float(le) for le in LE])
    for endpoint, model, team, tier, rate, quiet, restart in ENDPOINTS:
        labels = {"endpoint": endpoint, "model": model, "team": team, "tier": tier}
        requests = rng.poisson(rate, n).astype(np.float64)
        if quiet is not None:
            requests[quiet[0] : quiet[1]] = 0.0
        resets = (restart,) if restart is not None else ()
        # per-cycle latency distribution: log-normal around a drifting median
        median = _walk(rng, n, 0.08, 1.5, 0.05)
        per_bucket = np.zeros((n, len(LE)))
        sums = np.zeros(n)
        for k in range(n):
            lat = rng.lognormal(np.log(median[k]), 0.6, int(requests[k]))
            per_bucket[k] = (lat[:, None] <= bounds[None, :]).sum(axis=0)
            sums[k] = lat.sum()
        codes = np.zeros(n, np.int64)
        for j, le in enumerate(LE):
            cum = _counter(per_bucket[:, j], 1000.0 * j, resets)
            name = "fleet_inference_ttft_seconds_bucket"
            out.add({"__name__": name, **labels, "le": le}, times, cum, codes)
        total = _counter(requests, 1000.0 * (len(LE) - 1), resets)
        out.add({"__name__": "fleet_inference_ttft_seconds_count", **labels}, times, total, codes)
        out.add(
            {"__name__": "fleet_inference_ttft_seconds_sum", **labels},
            times,
            _counter(np.round(sums, 6), 400.0, resets),
            codes,
        )
        errors = rng.binomial(requests.astype(np.int64), 0.03).astype(np.float64)
        for outcome, inc in (("success", requests - errors), ("error", errors)):
            out.add(
                {"__name__": "fleet_inference_requests_total", **labels, "outcome": outcome},
                times,
                _counter(inc, 0.0, resets),
                codes,
            )
        out.add(
            {"__name__": "fleet_inference_requests_running", **labels},
            times,
            np.minimum(requests, 32.0),
            codes,
        )
        kv = np.round(_walk(rng, n, 0.0, 0.98, 0.05), 4)
        out.add({"__name__": "fleet_inference_kv_cache_usage_ratio", **labels}, times, kv, codes)


def _scheduler(out: _Builder, rng: np.random.Generator, start_ms: int, end_ms: int) -> None:
    times = _times(start_ms, end_ms, 30_000, 12_500)
    m = len(times)
    codes = np.zeros(m, np.int64)
    cluster = {"cluster": "main"}
    for team, quota in QUOTA.items():
        values = np.full(m, quota)
        if team == QUOTA_CHANGE[1]:
            values[QUOTA_CHANGE[0] // 2 :] = QUOTA_CHANGE[2]
        out.add(
            {"__name__": "fleet_sched_quota_gpus", **cluster, "team": team}, times, values, codes
        )
    for team in QUOTA:
        for workload in ("training", "inference", "notebook"):
            for state in ("RUNNING", "PENDING"):
                jobs = np.floor(_walk(rng, m, 0.0, 6.0, 0.7))
                labels = {"state": state, "team": team, "workload": workload}
                out.add({"__name__": "fleet_sched_jobs", **cluster, **labels}, times, jobs, codes)
    for team, reason in (("llm", "Resources"), ("research", "QOSMaxGRESPerUser")):
        gpus = np.floor(_walk(rng, m, 0.0, 16.0, 1.5))
        labels = {"reason": reason, "team": team, "workload": "training"}
        out.add({"__name__": "fleet_sched_pending_gpus", **cluster, **labels}, times, gpus, codes)


def _mesh(out: _Builder, rng: np.random.Generator, start_ms: int, end_ms: int) -> None:
    times = _times(start_ms, end_ms, 60_000, 41_000)
    m = len(times)
    for src in NODES:
        for dst in NODES:
            if src == dst:
                continue
            codes = np.zeros(m, np.int64)
            if "gpu-node-4" in (src, dst):
                codes = _mark_gone(codes, NODE_DOWN[0] // 4, NODE_DOWN[1] // 4)
            rtt = np.round(_walk(rng, m, 20e-6, 400e-6, 20e-6), 9)
            labels = {"__name__": "fleet_mesh_rtt_seconds", "src": src, "dst": dst}
            out.add(labels, times, rtt, codes)
