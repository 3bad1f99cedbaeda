"""The simulated workload: jobs as the scheduler sees them, and the stream that submits them.

A :class:`SimJob` carries what a user asked for (GPUs, time limit, team, workload, tier), what
the simulator decided up front (its run time and final state, drawn from the calibration — see
:mod:`fleetscope.simulate.calibration`; its GPU behaviour pattern) and what the scheduler did
(start, end, placement, pending reasons). Times are *ticks*: multiples of the sample interval
since the Unix epoch, so every start and end falls on a sample and the ledger is exact.

:class:`Workload` draws the arrivals of each UTC day from its own seeded generator
(``[seed, 1, day]``), so the stream does not depend on how the simulation is advanced: a
non-homogeneous Poisson process whose rate is the calibrated mean times a diurnal profile (busy
working hours) and a weekday factor (quiet weekends), both averaging 1. It also draws node
failures per day (``[seed, 3, day]``) and the long-running inference endpoints
(``[seed, 2, slot, n]``): production inference deployments that run for days and are redeployed
when they end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np

from fleetscope.model import WORKLOADS, Job, JobState
from fleetscope.simulate.calibration import Calibration
from fleetscope.simulate.fleet import Fleet

__all__ = ["Behaviour", "NodeFailure", "Pattern", "SimJob", "Workload"]

DAY_S = 86_400
JOB_ID_BASE = 100_000


class Pattern:
    """GPU behaviour patterns (see :mod:`fleetscope.simulate.behaviour`)."""

    STEADY = 0  # training at high utilization, memory high, power near the limit
    BURSTY = 1  # data-starved: utilization oscillates around ~35 %
    IDLE = 2  # a reservation doing nothing: 0 %, some memory, no process
    INFERENCE = 3  # diurnal load
    NOTEBOOK = 4  # mostly idle with short bursts
    PARTIAL = 5  # asked for several GPUs, uses the first only


_PATTERNS: dict[str, tuple[tuple[int, float], ...]] = {
    "training": ((Pattern.STEADY, 0.75), (Pattern.BURSTY, 0.15), (Pattern.IDLE, 0.05),
                 (Pattern.PARTIAL, 0.05)),
    "fine_tuning": ((Pattern.STEADY, 0.7), (Pattern.BURSTY, 0.2), (Pattern.IDLE, 0.05),
                    (Pattern.PARTIAL, 0.05)),
    "batch": ((Pattern.STEADY, 0.45), (Pattern.BURSTY, 0.4), (Pattern.IDLE, 0.1),
              (Pattern.PARTIAL, 0.05)),
    "notebook": ((Pattern.NOTEBOOK, 0.85), (Pattern.IDLE, 0.15)),
    "inference": ((Pattern.INFERENCE, 0.6), (Pattern.STEADY, 0.3), (Pattern.IDLE, 0.1)),
}  # fmt: skip
_PRODUCTION = {"training": 0.3, "fine_tuning": 0.4, "batch": 0.35, "notebook": 0.0,
               "inference": 0.8}  # fmt: skip
_NAMES = {
    "training": ("pretrain-7b", "resnet-sweep", "vit-large", "moe-ablation", "diffusion-base"),
    "fine_tuning": ("sft-chat", "lora-code", "dpo-align", "ft-detector"),
    "batch": ("embed-corpus", "eval-harness", "preprocess", "feature-extract"),
    "notebook": ("jupyter", "explore", "debug-session"),
    "inference": ("batch-infer", "offline-scoring", "vllm-bench"),
}
_ENDPOINT_MODELS = ("vllm-llama3-70b", "tgi-mistral-7b", "triton-embed", "sglang-qwen-32b")
# Arrivals per hour of the UTC day (relative; normalised to mean 1) and per weekday (Mon…Sun).
_HOURLY = np.array([0.45] * 7 + [0.7, 1.1] + [1.5] * 9 + [1.2, 0.9, 0.9, 0.9, 0.6, 0.6], np.float64)
_HOURLY = _HOURLY / _HOURLY.mean()
_WEEKDAY = (1.15, 1.15, 1.15, 1.15, 1.15, 0.625, 0.625)
_FAILED_EXIT_CODES = (1, 1, 1, 2, 139)


@dataclass(slots=True)
class SimJob:
    """One job: request, predetermined outcome, behaviour parameters and scheduling state."""

    seq: int
    name: str
    team: str
    user: str
    uid: int
    workload: str
    tier: str
    gpus: int
    submit: int  # tick
    run_ticks: int  # how long it runs once started (≥ 1)
    limit_ticks: int  # its time limit (≥ run_ticks)
    outcome: JobState  # final state if it runs to the end of run_ticks
    exit_code: int | None
    patience_ticks: int | None  # cancelled while pending if still queued after this
    pattern: int
    level: float  # pattern intensity (utilization or load scale)
    mem_frac: float  # share of GPU memory the job uses
    period: int  # ticks of the pattern's cycle
    phase: int
    pcie_kbps: int  # PCIe receive rate at full utilization
    endpoint: int | None = None  # endpoint slot of a long-running inference deployment
    state: JobState = JobState.PENDING
    start: int | None = None
    end: int | None = None
    gpu_ids: list[int] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    gpu_uuids: list[str] = field(default_factory=list)
    reasons: list[tuple[int, str]] = field(default_factory=list)  # (tick, pending reason)

    @property
    def id(self) -> str:
        return str(JOB_ID_BASE + self.seq)

    @property
    def pending_reason(self) -> str | None:
        return self.reasons[-1][1] if self.state == JobState.PENDING and self.reasons else None

    def record(self, cluster: str, tick_ms: int) -> Job:
        """The job as a :class:`~fleetscope.model.Job` record."""

        def when(tick: int | None) -> datetime | None:
            return None if tick is None else datetime.fromtimestamp(tick * tick_ms / 1000, UTC)

        submit = when(self.submit)
        assert submit is not None
        return Job(
            id=self.id,
            cluster=cluster,
            name=self.name,
            team=self.team,
            user=self.user,
            workload=self.workload,
            tier=self.tier,
            state=self.state,
            submit=submit,
            start=when(self.start),
            end=when(self.end),
            gpus=self.gpus,
            nodes=list(self.nodes),
            gpu_uuids=list(self.gpu_uuids),
            exit_code=self.exit_code if self.state.finished else None,
            pending_reason=self.pending_reason,
            source="sim",
        )


@dataclass(frozen=True)
class NodeFailure:
    node_id: int
    tick: int
    duration_ticks: int


class Behaviour(NamedTuple):
    """A job's behaviour parameters (see :mod:`fleetscope.simulate.behaviour`)."""

    pattern: int
    level: float  # pattern intensity (utilization or load scale)
    mem_frac: float  # share of GPU memory the job uses
    period: int  # ticks of the pattern's cycle
    phase: int
    pcie_kbps: int  # PCIe receive rate at full utilization


class Workload:
    """Draws arrivals, endpoint deployments and node failures (see the module docstring)."""

    def __init__(self, fleet: Fleet, calibration: Calibration) -> None:
        self.fleet = fleet
        self.cal = calibration
        spec = fleet.spec
        self.tick_s = spec.tick_s
        self.cap = min(spec.job_gpu_cap, spec.gpus)
        self.sizes = calibration.gpus(self.cap)
        self.runs = calibration.run_seconds()
        self.patience = calibration.cancel_patience()
        self.states, self.state_probs = calibration.outcomes()
        self.endpoint_gpus = [self.endpoint_size(s) for s in range(spec.endpoint_count)]
        self.rate_per_s = calibration.arrival_rate_per_s(
            spec.gpus, float(sum(self.endpoint_gpus)), self.cap
        )
        quotas = np.array([t.quota_gpus for t in fleet.teams], np.float64)
        self.team_p = quotas / quotas.sum() if quotas.sum() > 0 else None

    # -- arrivals ------------------------------------------------------------------------

    def day_arrivals(self, day: int) -> list[SimJob]:
        """Jobs submitted during UTC day ``day`` (days since the epoch), in submit order.

        Their ``seq`` is ``-1`` until the cluster submits them."""
        rng = np.random.default_rng([self.fleet.spec.seed, 1, day])
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        n = int(rng.poisson(self.rate_per_s * DAY_S * _WEEKDAY[weekday]))
        hours = rng.choice(24, n, p=_HOURLY / _HOURLY.sum())
        secs = np.sort(day * DAY_S + hours * 3600 + rng.uniform(0, 3600, n))
        ticks = (secs // self.tick_s).astype(np.int64)
        sizes = self.sizes.sample(rng, n)
        runs = self.runs.sample(rng, n)
        return [
            self._draw(rng, int(t), int(g), float(r))
            for t, g, r in zip(ticks, sizes, runs, strict=True)
        ]

    def _draw(self, rng: np.random.Generator, tick: int, gpus: int, run_s: float) -> SimJob:
        fleet = self.fleet
        team = fleet.teams[int(rng.choice(len(fleet.teams), p=self.team_p))]
        if gpus > team.quota_gpus:  # big jobs come from the team with the biggest quota
            team = max(fleet.teams, key=lambda t: t.quota_gpus)
        names = [w for w in WORKLOADS if team.workloads.get(w, 0) > 0]
        if gpus > 2:
            names = [w for w in names if w in ("training", "fine_tuning", "batch")] or ["training"]
        weights = np.array([team.workloads.get(w, 1.0) for w in names], np.float64)
        workload = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        u = int(rng.integers(len(team.users)))
        state = self.states[int(rng.choice(len(self.states), p=self.state_probs))]
        tier = "production" if rng.random() < _PRODUCTION[workload] else "experimentation"
        run_ticks = max(1, round(run_s / self.tick_s))
        if state == JobState.TIMEOUT:
            limit_ticks = run_ticks
        else:
            limit_s = max(3600.0, math.ceil(run_s * rng.uniform(1.5, 4.0) / 3600) * 3600)
            limit_ticks = max(run_ticks, math.ceil(limit_s / self.tick_s))
        patience: int | None = None
        if state == JobState.CANCELLED:
            patience = max(1, round(self.patience.sample(rng, 1)[0] / self.tick_s))
        pats, probs = zip(*_PATTERNS[workload], strict=True)
        pattern = int(pats[int(rng.choice(len(pats), p=np.array(probs) / sum(probs)))])
        if pattern == Pattern.PARTIAL and gpus == 1:
            pattern = Pattern.STEADY
        exit_code = {
            JobState.COMPLETED: 0,
            JobState.FAILED: int(rng.choice(_FAILED_EXIT_CODES)),
            JobState.TIMEOUT: 143,
            JobState.OUT_OF_MEMORY: 137,
            JobState.CANCELLED: 143,
        }[state]
        job_names = _NAMES[workload]
        return SimJob(
            seq=-1,
            name=job_names[int(rng.integers(len(job_names)))],
            team=team.name,
            user=team.users[u],
            uid=team.uids[u],
            workload=workload,
            tier=tier,
            gpus=gpus,
            submit=tick,
            run_ticks=run_ticks,
            limit_ticks=limit_ticks,
            outcome=state,
            exit_code=exit_code,
            patience_ticks=patience,
            **self._behaviour(rng, pattern)._asdict(),
        )

    @staticmethod
    def _behaviour(rng: np.random.Generator, pattern: int) -> Behaviour:
        level, mem = {
            Pattern.STEADY: (rng.uniform(0.85, 0.97), rng.uniform(0.55, 0.95)),
            Pattern.BURSTY: (rng.uniform(0.3, 0.4), rng.uniform(0.25, 0.7)),
            Pattern.IDLE: (0.0, rng.uniform(0.01, 0.04)),
            Pattern.INFERENCE: (rng.uniform(0.6, 0.85), 0.9),
            Pattern.NOTEBOOK: (rng.uniform(0.08, 0.2), rng.uniform(0.05, 0.4)),
            Pattern.PARTIAL: (rng.uniform(0.85, 0.97), rng.uniform(0.55, 0.95)),
        }[pattern]
        slow = pattern in (Pattern.STEADY, Pattern.PARTIAL)  # checkpoint every 30–60 min
        period = int(rng.integers(120, 240)) if slow else int(rng.integers(4, 24))
        return Behaviour(
            pattern=pattern,
            level=float(level),
            mem_frac=float(mem),
            period=period,
            phase=int(rng.integers(0, 1 << 20)),
            pcie_kbps=int(rng.integers(50_000, 2_000_000)),
        )

    # -- endpoints -----------------------------------------------------------------------

    @staticmethod
    def endpoint_size(slot: int) -> int:
        return (2, 1)[slot % 2]

    def endpoint(self, slot: int, n: int, tick: int) -> SimJob:
        """The ``n``-th deployment of endpoint ``slot``, submitted at ``tick``: 3–20 days."""
        rng = np.random.default_rng([self.fleet.spec.seed, 2, slot, n])
        teams = [t.name for t in self.fleet.teams]
        team = self.fleet.team(
            "inference-platform" if "inference-platform" in teams and slot % 4 != 2 else teams[0]
        )
        run_s = math.exp(rng.uniform(math.log(3 * DAY_S), math.log(20 * DAY_S)))
        run_ticks = max(1, round(run_s / self.tick_s))
        u = int(rng.integers(len(team.users)))
        return SimJob(
            seq=-1,
            name=_ENDPOINT_MODELS[slot % len(_ENDPOINT_MODELS)],
            team=team.name,
            user=team.users[u],
            uid=team.uids[u],
            workload="inference",
            tier="production",
            gpus=min(self.endpoint_size(slot), self.fleet.spec.gpus),
            submit=tick,
            run_ticks=run_ticks,
            limit_ticks=run_ticks,
            outcome=JobState.COMPLETED,
            exit_code=0,
            patience_ticks=None,
            endpoint=slot,
            **self._behaviour(rng, Pattern.INFERENCE)._asdict(),
        )

    # -- failures ------------------------------------------------------------------------

    def day_failures(self, day: int) -> list[NodeFailure]:
        """Nodes that go down during UTC day ``day``, for 15 minutes to 6 hours."""
        rng = np.random.default_rng([self.fleet.spec.seed, 3, day])
        n = int(rng.poisson(self.fleet.spec.node_failures_per_day))
        out = []
        for _ in range(n):
            node = int(rng.integers(len(self.fleet.nodes)))
            tick = (day * DAY_S + int(rng.integers(DAY_S))) // self.tick_s
            dur_s = math.exp(rng.uniform(math.log(900), math.log(6 * 3600)))
            out.append(NodeFailure(node, tick, max(1, round(dur_s / self.tick_s))))
        return sorted(out, key=lambda f: (f.tick, f.node_id))
