"""The simulated cluster over time: workload stream + scheduler + node failures, tick by tick.

:class:`Cluster` owns the event loop. :meth:`Cluster.run_until` processes, in order, every tick
at which something happens (arrivals, job ends, pending cancellations, nodes going down or
coming back) up to a tick, and skips the rest: between events the schedule cannot change
(see :mod:`fleetscope.simulate.scheduler`). Within a tick the order is fixed: nodes down/up,
job ends (an ended endpoint is redeployed at once), cancellations, arrivals, then one scheduling
pass. The workload starts ``warmup_s`` before the origin so the fleet is already busy there.

It also keeps what the renderers and the ledger need: every job (by ``seq``), and each node's
down intervals ``[down, up)`` in ticks.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

from fleetscope.simulate.calibration import Calibration
from fleetscope.simulate.fleet import Fleet
from fleetscope.simulate.jobs import DAY_S, SimJob, Workload
from fleetscope.simulate.scheduler import Scheduler

__all__ = ["OPEN", "Cluster"]

OPEN = 2**62  # the end tick of an interval that has not ended yet


class Cluster:
    """Event-driven cluster state from ``origin - warmup`` on (see the module docstring)."""

    def __init__(self, fleet: Fleet, calibration: Calibration, origin_tick: int) -> None:
        spec = fleet.spec
        self.fleet = fleet
        self.workload = Workload(fleet, calibration)
        self.scheduler = Scheduler(fleet, on_end=self._ended)
        self.origin = origin_tick
        self.begin = origin_tick - spec.warmup_s // spec.tick_s
        self.now = self.begin - 1  # the last processed tick
        self.jobs: list[SimJob] = []
        self.down: list[list[tuple[int, int]]] = [[] for _ in fleet.nodes]  # per node [down, up)
        self._arrivals: deque[SimJob] = deque()
        # (tick, kind 0=up 1=down, node, failure id); a failure of a down node is ignored
        self._node_events: list[tuple[int, int, int, tuple[int, int]]] = []
        self._failure: list[tuple[int, int] | None] = [None] * len(fleet.nodes)
        self._next_day = self._day(self.begin)
        self._endpoint_n = [0] * spec.endpoint_count
        self._redeploy: list[int] = []
        for slot in range(spec.endpoint_count):
            self._submit(self.workload.endpoint(slot, 0, self.begin))

    def _day(self, tick: int) -> int:
        return tick * self.fleet.spec.tick_s // DAY_S

    def _load_days(self, upto_tick: int) -> None:
        """Draw arrivals and failures of every day up to the one holding ``upto_tick``."""
        while self._next_day <= self._day(upto_tick):
            day = self._next_day
            self._arrivals.extend(
                d for d in self.workload.day_arrivals(day) if d.submit >= self.begin
            )
            for n, f in enumerate(self.workload.day_failures(day)):
                if f.tick >= self.begin:
                    fid = (day, n)
                    heapq.heappush(self._node_events, (f.tick, 1, f.node_id, fid))
                    heapq.heappush(
                        self._node_events, (f.tick + f.duration_ticks, 0, f.node_id, fid)
                    )
            self._next_day += 1

    def _submit(self, job: SimJob) -> SimJob:
        job.seq = len(self.jobs)
        self.jobs.append(job)
        self.scheduler.submit(job)
        return job

    def _ended(self, job: SimJob, tick: int) -> None:
        if job.endpoint is not None:
            self._redeploy.append(job.endpoint)

    def run_until(self, tick: int) -> list[SimJob]:
        """Process every event tick ``≤ tick``; the jobs whose record changed, by seq."""
        self._load_days(tick)
        while True:
            cands = [t for t in (self.scheduler.next_event(),) if t is not None]
            if self._arrivals:
                cands.append(self._arrivals[0].submit)
            if self._node_events:
                cands.append(self._node_events[0][0])
            if not cands or min(cands) > tick:
                break
            self._process(max(min(cands), self.now + 1))
        self.now = max(self.now, tick)
        changed = self.scheduler.changed
        self.scheduler.changed = {}
        return [changed[s] for s in sorted(changed)]

    def _process(self, k: int) -> None:
        sched = self.scheduler
        while self._node_events and self._node_events[0][0] <= k:
            _, kind, node, fid = heapq.heappop(self._node_events)
            if kind == 1 and sched.node_up[node]:
                sched.node_down(node, k)
                self.down[node].append((k, OPEN))
                self._failure[node] = fid
            elif kind == 0 and not sched.node_up[node] and self._failure[node] == fid:
                sched.node_back(node)
                self.down[node][-1] = (self.down[node][-1][0], k)
        sched.expire(k)
        for slot in self._redeploy:
            self._endpoint_n[slot] += 1
            self._submit(self.workload.endpoint(slot, self._endpoint_n[slot], k))
        self._redeploy.clear()
        while self._arrivals and self._arrivals[0].submit <= k:
            self._submit(self._arrivals.popleft())
        sched.schedule(k)
        self.now = k

    def jobs_active(self, lo: int, hi: int) -> Iterable[SimJob]:
        """Jobs that held GPUs at some tick in ``[lo, hi)``."""
        for job in self.jobs:
            if job.start is not None and job.start < hi and (job.end is None or job.end > lo):
                yield job
