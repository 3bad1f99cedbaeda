"""A tick-based priority + FIFO + quota scheduler with EASY backfill, in Slurm's vocabulary.

Policy, applied in one pass at every tick where something happened (a submit, an end, a
cancel, a node going down or up); nothing else changes the outcome of a pass, so ticks without
events are skipped exactly:

- **Order**: production tier before experimentation, FIFO (submit tick, then job id) within.
- **Quota** (Slurm ``GrpTRES=gres/gpu``-like, with borrowing): a job that would take its team
  over its GPU quota is *over quota*. It may still start on idle GPUs (it borrows them), but
  only if at least ``spare_gpus`` GPUs stay idle afterwards (``FleetSpec.borrow_spare_ratio``
  of the fleet, default 0) and without delaying a reservation; otherwise it waits with reason
  ``QOSGrpGpuLimit``. An over-quota job never holds a reservation, so it never holds up teams
  within their quota. There is no preemption: borrowed GPUs are returned when the job ends.
- **Reservation** (Slurm's EASY backfill): the first in-quota job that does not fit waits with
  reason ``Resources`` and gets a reservation at its *shadow time*, the earliest tick at which
  enough GPUs free up if running jobs end at their time limits. Later jobs may start ahead of it
  only if they end (by their limit) before the shadow time or fit in the GPUs it will not need;
  otherwise they wait with reason ``Priority``.
- **Placement** packs: a job that fits on one node goes to the node with the fewest free GPUs
  that still fits it (best fit); otherwise it spans nodes, taking the emptiest nodes first (so
  jobs over 8 GPUs take whole nodes). Any GPU model will do. A GPU belongs to one job at a time.
- **Outcomes** were drawn at submit (:mod:`fleetscope.simulate.jobs`): a job ends at
  ``start + run_ticks`` in its drawn state; a job drawn as CANCELLED that is still pending after
  its patience is cancelled while pending; jobs on a node that goes down end ``NODE_FAIL`` and
  the node takes no work until it is back.

Ticks are absolute (multiples of the sample interval since the epoch). Allocation holds over
``[start, end)``: at tick ``end`` the GPU is free again (DESIGN.md "Definitions": GPU-hours are
allocated time, so ``gpus × (end − start)`` ticks per job).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable

import numpy as np

from fleetscope.model import JobState
from fleetscope.simulate.fleet import Fleet
from fleetscope.simulate.jobs import SimJob

__all__ = ["PRIORITY", "QUOTA", "RESOURCES", "Scheduler"]

RESOURCES = "Resources"
PRIORITY = "Priority"
QUOTA = "QOSGrpGpuLimit"
REASONS = (PRIORITY, QUOTA, RESOURCES)
_TIER_RANK = {"production": 0, "experimentation": 1}


def _order(job: SimJob) -> tuple[int, int, int]:
    return (_TIER_RANK.get(job.tier, 1), job.submit, job.seq)


class Scheduler:
    """The cluster's scheduling state; drive it with :meth:`submit` and :meth:`process`."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        spare_gpus: int | None = None,
        on_end: Callable[[SimJob, int], None] | None = None,
    ) -> None:
        self.fleet = fleet
        n = len(fleet.gpus)
        self.spare_gpus = (
            math.ceil(fleet.spec.borrow_spare_ratio * n) if spare_gpus is None else spare_gpus
        )
        self.on_end = on_end
        self.owner = np.full(n, -1, np.int64)  # job seq holding each GPU, -1 when free
        self.node_of = np.array([g.node_id for g in fleet.gpus], np.int64)
        self.node_up = np.ones(len(fleet.nodes), bool)
        self.quota = {t.name: t.quota_gpus for t in fleet.teams}
        self.used = {t.name: 0 for t in fleet.teams}
        self.pending: list[SimJob] = []
        self.running: dict[int, SimJob] = {}
        self.changed: dict[int, SimJob] = {}
        self._ends: list[tuple[int, int]] = []  # (tick, seq) of running jobs
        self._cancels: list[tuple[int, int]] = []  # (tick, seq) of pending jobs with patience
        self._by_seq: dict[int, SimJob] = {}

    # -- inputs --------------------------------------------------------------------------

    def submit(self, job: SimJob) -> None:
        """Queue a job (its ``submit`` tick is the current tick)."""
        self.pending.append(job)
        self._by_seq[job.seq] = job
        self.changed[job.seq] = job
        if job.patience_ticks is not None:
            heapq.heappush(self._cancels, (job.submit + job.patience_ticks, job.seq))

    def node_down(self, node_id: int, tick: int) -> None:
        """The node fails: its jobs end ``NODE_FAIL``, its GPUs take no work."""
        self.node_up[node_id] = False
        seqs = {int(s) for s in self.owner[(self.node_of == node_id) & (self.owner >= 0)]}
        for seq in sorted(seqs):
            self._finish(self.running[seq], tick, JobState.NODE_FAIL, None)

    def node_back(self, node_id: int) -> None:
        self.node_up[node_id] = True

    # -- the pass ------------------------------------------------------------------------

    def next_event(self) -> int | None:
        """The next tick at which a running job ends or a pending job is cancelled."""
        self._drop_stale()
        ticks = [h[0][0] for h in (self._ends, self._cancels) if h]
        return min(ticks) if ticks else None

    def process(self, tick: int) -> None:
        """Ends and cancels due at ``tick``, then one scheduling pass."""
        self.expire(tick)
        self.schedule(tick)

    def expire(self, tick: int) -> None:
        """End the running jobs due at ``tick`` and cancel the pending jobs out of patience."""
        while self._ends and self._ends[0][0] <= tick:
            _, seq = heapq.heappop(self._ends)
            job = self.running.get(seq)
            if job is not None and job.end is None and job.start is not None:
                self._finish(job, job.start + job.run_ticks, job.outcome, job.exit_code)
        while self._cancels and self._cancels[0][0] <= tick:
            _, seq = heapq.heappop(self._cancels)
            job = self._by_seq.get(seq)
            if job is not None and job.state == JobState.PENDING:
                self.pending.remove(job)
                job.state, job.end, job.exit_code = JobState.CANCELLED, tick, None
                self.changed[seq] = job
                self._forget(job)

    def schedule(self, tick: int) -> None:
        """One pass over the pending jobs (see the module docstring for the policy)."""
        self.pending.sort(key=_order)
        free = self._free_count()
        shadow: float | None = None  # reservation's shadow tick, once a job holds one
        extra = 0  # GPUs free at the shadow time beyond what the reserved job needs
        for job in list(self.pending):
            over = self.used[job.team] + job.gpus > self.quota[job.team]
            fits = job.gpus <= free
            in_time = shadow is None or tick + job.limit_ticks <= shadow
            if fits and not in_time:
                fits = job.gpus <= extra
            if fits and over:
                fits = free - job.gpus >= self.spare_gpus
            if fits:
                self._start(job, tick)
                free -= job.gpus
                if not in_time:
                    extra -= job.gpus
                continue
            if over:
                reason = QUOTA
            elif shadow is None:
                reason = RESOURCES
                shadow, extra = self._shadow(job.gpus, free)
            else:
                reason = PRIORITY
            self._set_reason(job, tick, reason)

    # -- internals -----------------------------------------------------------------------

    def _free_count(self) -> int:
        return int(((self.owner < 0) & self.node_up[self.node_of]).sum())

    def _shadow(self, need: int, free: int) -> tuple[float, int]:
        """When ``need`` GPUs are free if running jobs end at their limits, and the surplus."""
        ends = sorted(
            (j.start + j.limit_ticks, j.gpus) for j in self.running.values() if j.start is not None
        )
        have = free
        for end, released in ends:
            have += released
            if have >= need:
                return float(end), have - need
        return math.inf, 0

    def _set_reason(self, job: SimJob, tick: int, reason: str) -> None:
        if not job.reasons or job.reasons[-1][1] != reason:
            job.reasons.append((tick, reason))
            self.changed[job.seq] = job

    def _place(self, gpus: int) -> list[int]:
        """GPU ids for a job (see "Placement" in the module docstring)."""
        free = (self.owner < 0) & self.node_up[self.node_of]
        per_node = np.bincount(self.node_of[free], minlength=len(self.fleet.nodes))
        fitting = [n for n in range(len(per_node)) if per_node[n] >= gpus]
        if fitting:
            order: Iterable[int] = [min(fitting, key=lambda n: (per_node[n], n))]
        else:
            order = sorted(range(len(per_node)), key=lambda n: (-per_node[n], n))
        chosen: list[int] = []
        for n in order:
            for g in self.fleet.nodes[n].gpus:
                if len(chosen) < gpus and free[g.id]:
                    chosen.append(g.id)
        if len(chosen) < gpus:
            raise RuntimeError(f"placement of {gpus} GPUs failed with {int(free.sum())} free")
        return chosen

    def _start(self, job: SimJob, tick: int) -> None:
        ids = self._place(job.gpus)
        self.pending.remove(job)
        self.owner[ids] = job.seq
        self.used[job.team] += job.gpus
        job.state, job.start, job.gpu_ids = JobState.RUNNING, tick, ids
        gpus = [self.fleet.gpus[i] for i in ids]
        job.nodes = sorted({g.node for g in gpus})
        job.gpu_uuids = [g.uuid for g in gpus]
        self.running[job.seq] = job
        self.changed[job.seq] = job
        heapq.heappush(self._ends, (tick + job.run_ticks, job.seq))

    def _finish(self, job: SimJob, tick: int, state: JobState, exit_code: int | None) -> None:
        self.owner[job.gpu_ids] = -1
        self.used[job.team] -= job.gpus
        del self.running[job.seq]
        job.state, job.end, job.exit_code = state, tick, exit_code
        self.changed[job.seq] = job
        self._forget(job)
        if self.on_end is not None:
            self.on_end(job, tick)

    def _forget(self, job: SimJob) -> None:
        self._by_seq.pop(job.seq, None)

    def _drop_stale(self) -> None:
        while self._ends and self._ends[0][1] not in self.running:
            heapq.heappop(self._ends)
        while self._cancels:
            job = self._by_seq.get(self._cancels[0][1])
            if job is not None and job.state == JobState.PENDING:
                break
            heapq.heappop(self._cancels)
