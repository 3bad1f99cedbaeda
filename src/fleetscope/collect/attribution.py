"""Attribution: which job, user and team holds each GPU, and which job owns a GPU process.

Two sources under a node root directory ``root`` (``/`` on a real node, a fake tree in tests and
in the simulator):

- **Prolog files** (Jobstats mode, extended). ``root/run/gpustat/<gpu index>`` exists while a job
  holds that GPU. Line 1 is ``<jobid> <uid>`` (Jobstats' format); optional ``key=value`` lines
  follow, written by Fleetscope's Slurm prolog: ``user``, ``account``, ``partition``, ``qos``.
  :class:`AllocationCollector` emits one info series per held GPU::

      fleet_gpu_allocation{node,gpu,gpu_uuid,gpu_model,job,team,user,workload,tier} 1

  ``user``: the ``user=`` line, else the uid's passwd name, else the uid as a string.
  ``team``: ``account`` through ``team_map`` (identity for accounts not in it).
  ``workload``: ``partition`` when it is one of ``model.WORKLOADS``, else ``"batch"``.
  ``tier``: ``qos`` when it is one of ``model.TIERS``, else ``"experimentation"``.
  A key that is missing gives ``"unknown"``. A GPU whose identity (UUID, model) the GPU
  collector does not know is skipped (its series could not be joined on ``gpu_uuid``), as is a
  file whose first line is malformed; both are logged once.
- **The process tree**. :func:`job_of_pid` reads ``root/proc/<pid>/cgroup`` (a ``job_<id>``
  path component, cgroup v1 ``…/slurm/uid_<uid>/job_<id>/…`` or v2
  ``0::/system.slice/slurmstepd.scope/job_<id>/…``) and ``root/proc/<pid>/environ``
  (``SLURM_JOB_ID``, ``SLURM_JOB_USER``) so GPU process series get ``job`` and ``user``. The
  cgroup wins for the job (a process cannot rewrite it) and an environ naming another job is not
  trusted for the user either; anything unknown is ``"unknown"``, and a process is never dropped
  for it.

Kubernetes pods (pod → job through the kubelet's pod-resources API) come in a later issue.
"""

from __future__ import annotations

import logging
import pwd
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from fleetscope.collect import Sample
from fleetscope.collect.gpu import GPUIdentity
from fleetscope.model import TIERS, WORKLOADS

__all__ = [
    "UNKNOWN",
    "Allocation",
    "AllocationCollector",
    "ProcessOwner",
    "job_of_pid",
    "passwd_name",
    "read_gpustat",
]

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
_JOB_IN_CGROUP = re.compile(r"/job_(\d+)(?:/|$)")
_UID_IN_CGROUP = re.compile(r"/uid_(\d+)(?:/|$)")


class Allocation(NamedTuple):
    """One prolog file: a job holding one GPU. ``None``: the file does not say."""

    gpu: int
    job: str
    uid: int | None
    user: str | None
    account: str | None
    partition: str | None
    qos: str | None


class ProcessOwner(NamedTuple):
    """The job and user of a process (``"unknown"`` when they cannot be found)."""

    job: str
    user: str


def passwd_name(uid: int) -> str | None:
    """The passwd name of ``uid`` on this host, ``None`` when there is none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def read_gpustat(path: Path) -> Allocation | None:
    """Parse one prolog file; ``None`` when it vanished, is unreadable or malformed."""
    if not path.name.isdigit():
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # the epilog removed it between listing and reading, or no permission
        return None
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if not head or not re.fullmatch(r"[\w.+-]+", head[0]):
        return None
    uid = int(head[1]) if len(head) > 1 and head[1].isdigit() else None
    keys: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition("=")
        if sep and key.strip() and value.strip():
            keys[key.strip()] = value.strip()
    return Allocation(
        gpu=int(path.name),
        job=head[0],
        uid=uid,
        user=keys.get("user"),
        account=keys.get("account"),
        partition=keys.get("partition"),
        qos=keys.get("qos"),
    )


class AllocationCollector:
    """Emits ``fleet_gpu_allocation`` from the prolog files (see the module docstring).

    ``gpus`` is a mapping NVML index → identity, or a callable returning one (normally
    :meth:`fleetscope.collect.gpu.GPUCollector.identities`, read at every ``collect``).
    """

    name = "attribution"

    def __init__(
        self,
        node: str,
        gpus: Mapping[int, GPUIdentity] | Callable[[], Mapping[int, GPUIdentity]],
        *,
        root: Path | str = "/",
        team_map: Mapping[str, str] | None = None,
        user_of_uid: Callable[[int], str | None] = passwd_name,
    ) -> None:
        self.node = node
        self.gpus = gpus
        self.root = Path(root)
        self.team_map: Mapping[str, str] = team_map or {}
        self.user_of_uid = user_of_uid
        self._logged: set[str] = set()

    def collect(self) -> list[Sample]:
        directory = self.root / "run" / "gpustat"
        try:
            paths = sorted(directory.iterdir())
        except OSError:  # no prolog directory: no job holds a GPU here
            return []
        gpus = self.gpus() if callable(self.gpus) else self.gpus
        out: list[Sample] = []
        for path in paths:
            if not path.name.isdigit():  # not a GPU file (a README, an editor's swap file)
                continue
            alloc = read_gpustat(path)
            if alloc is None:
                if path.exists():
                    self._log_once(f"unreadable or malformed prolog file {path}")
                continue
            ident = gpus.get(alloc.gpu)
            if ident is None:
                self._log_once(f"job {alloc.job} holds GPU {alloc.gpu}, whose identity is unknown")
                continue
            out.append(Sample("fleet_gpu_allocation", self._labels(alloc, ident), 1.0))
        return out

    def _labels(self, alloc: Allocation, ident: GPUIdentity) -> dict[str, str]:
        user = alloc.user
        if user is None and alloc.uid is not None:
            user = self.user_of_uid(alloc.uid) or str(alloc.uid)
        team = None if alloc.account is None else self.team_map.get(alloc.account, alloc.account)
        workload = alloc.partition
        if workload is not None and workload not in WORKLOADS:
            workload = "batch"
        tier = alloc.qos
        if tier is not None and tier not in TIERS:
            tier = "experimentation"
        return {
            **ident.labels(self.node),
            "job": alloc.job,
            "team": team or UNKNOWN,
            "user": user or UNKNOWN,
            "workload": workload or UNKNOWN,
            "tier": tier or UNKNOWN,
        }

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s on %s (logged once)", message, self.node)


def job_of_pid(
    pid: int,
    root: Path | str = "/",
    user_of_uid: Callable[[int], str | None] = passwd_name,
) -> ProcessOwner:
    """The Slurm job and user of ``pid`` from ``root/proc`` (see the module docstring)."""
    proc = Path(root) / "proc" / str(pid)
    job: str | None = None
    user: str | None = None
    try:
        cgroup = (proc / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        cgroup = ""
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        found = _JOB_IN_CGROUP.search(path)
        if found:
            job = found.group(1)
            uid = _UID_IN_CGROUP.search(path)  # cgroup v1: /slurm/uid_<uid>/job_<id>/…
            if uid:
                user = user_of_uid(int(uid.group(1))) or uid.group(1)
            break
    env = _environ(proc / "environ")
    env_job = env.get("SLURM_JOB_ID") or None
    if job is None:
        job = env_job
    if env_job == job:  # an environ that contradicts the cgroup is not trusted for the user
        user = env.get("SLURM_JOB_USER") or user
    return ProcessOwner(job or UNKNOWN, user or UNKNOWN)


def _environ(path: Path) -> dict[str, str]:
    """A NUL-separated ``/proc/<pid>/environ``; empty when unreadable (other users' processes)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", errors="replace").partition("=")
        if sep:
            env[key] = value
    return env
