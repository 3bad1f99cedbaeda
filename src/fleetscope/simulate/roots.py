"""Fake per-node root trees: the files the live attribution collector reads.

Layout (the contract's "Allocation source: prolog files"), under each node's root ``ROOT``:

- ``ROOT/run/gpustat/<gpu index>`` exists while a job holds that GPU. First line
  ``<jobid> <uid>`` (Jobstats' format), then ``user=…``, ``account=…`` (the team),
  ``partition=…`` (the workload) and ``qos=…`` (the tier), as Fleetscope's prolog writes them.
- ``ROOT/proc/<pid>/cgroup``: the cgroup v2 line of a Slurm task,
  ``0::/system.slice/slurmstepd.scope/job_<id>/step_0/user/task_0``, and
  ``ROOT/proc/<pid>/environ``: NUL-separated ``SLURM_JOB_ID``, ``SLURM_JOB_USER``,
  ``SLURM_JOB_ACCOUNT``, for every process the fake NVML lists.

:meth:`RootTree.sync` rewrites only what changed since the previous call.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from fleetscope.simulate.jobs import SimJob

__all__ = ["RootTree", "cgroup_text", "environ_bytes", "prolog_text"]


def prolog_text(job: SimJob) -> str:
    return (
        f"{job.id} {job.uid}\nuser={job.user}\naccount={job.team}\n"
        f"partition={job.workload}\nqos={job.tier}\n"
    )


def cgroup_text(job: SimJob) -> str:
    return f"0::/system.slice/slurmstepd.scope/job_{job.id}/step_0/user/task_0\n"


def environ_bytes(job: SimJob) -> bytes:
    env = {
        "SLURM_JOB_ID": job.id,
        "SLURM_JOB_USER": job.user,
        "SLURM_JOB_ACCOUNT": job.team,
        "CUDA_VISIBLE_DEVICES": "0",
    }
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())


class RootTree:
    """One node's fake root directory, kept in step with the simulation."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gpustat = root / "run" / "gpustat"
        self.proc = root / "proc"
        self.gpustat.mkdir(parents=True, exist_ok=True)
        self.proc.mkdir(parents=True, exist_ok=True)
        self._files: dict[int, str] = {}
        self._pids: dict[int, str] = {}

    def sync(self, holders: Mapping[int, SimJob], processes: Mapping[int, SimJob]) -> None:
        """Make the tree say: GPU index → holding job; pid → job of the process."""
        for index in set(self._files) - set(holders):
            (self.gpustat / str(index)).unlink(missing_ok=True)
            del self._files[index]
        for index, job in holders.items():
            text = prolog_text(job)
            if self._files.get(index) != text:
                (self.gpustat / str(index)).write_text(text)
                self._files[index] = text
        for pid in set(self._pids) - set(processes):
            shutil.rmtree(self.proc / str(pid), ignore_errors=True)
            del self._pids[pid]
        for pid, job in processes.items():
            if self._pids.get(pid) != job.id:
                d = self.proc / str(pid)
                d.mkdir(exist_ok=True)
                (d / "cgroup").write_text(cgroup_text(job))
                (d / "environ").write_bytes(environ_bytes(job))
                self._pids[pid] = job.id
