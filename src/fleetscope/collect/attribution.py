"""Attribution: which job, user and team holds each GPU, and which job owns a GPU process.

Three sources under a node root directory ``root`` (``/`` on a real node, a fake tree in tests
and in the simulator), plus the kubelet's pod list on Kubernetes nodes:

- **Prolog files** (Jobstats mode, extended). ``root/run/gpustat/<gpu>`` exists while a job
  holds that GPU; ``<gpu>`` is the NVML index (Jobstats) or the GPU's UUID (``GPU-…``, as
  written by prologs that name GPUs by UUID). Line 1 is ``<jobid> <uid>`` (Jobstats' format);
  optional ``key=value`` lines follow, written by Fleetscope's Slurm prolog: ``user``,
  ``account``, ``partition``, ``qos``. :class:`AllocationCollector` emits one info series per
  held GPU::

      fleet_gpu_allocation{node,gpu,gpu_uuid,gpu_model,job,team,user,workload,tier} 1

  ``user``: the ``user=`` line, else the uid's passwd name, else the uid as a string.
  ``team``: ``account`` through ``team_map`` (identity for accounts not in it).
  ``workload``: ``partition`` when it is one of ``model.WORKLOADS``, else ``"batch"``.
  ``tier``: ``qos`` when it is one of ``model.TIERS``, else ``"experimentation"``.
  A key that is missing gives ``"unknown"``. A GPU whose identity (UUID, model) the GPU
  collector does not know is skipped (its series could not be joined on ``gpu_uuid``), as is a
  file whose first line is malformed; both are logged once.
- **GPU processes**, for GPUs that no prolog file covers (a Kubernetes node, or a node whose
  scheduler writes no prolog files). The GPU collector's last cycle of
  ``nvmlDeviceGetComputeRunningProcesses`` (:meth:`fleetscope.collect.gpu.GPUCollector.processes`)
  gives one ``fleet_gpu_allocation`` series per (GPU, job) with the owners' ``job``, ``user`` and
  ``team``; ``workload`` and ``tier`` are ``"unknown"`` there. A process whose owner is not
  known is attributed to job, user and team ``"unknown"``: never dropped.
- **The process tree**. :func:`owner_of_pid` (and :func:`job_of_pid`, its older two-field form)
  reads ``root/proc/<pid>/cgroup`` and ``root/proc/<pid>/environ``:

  - Slurm: a ``job_<id>`` path component, cgroup v1 ``…/slurm/uid_<uid>/job_<id>/…`` or v2
    ``0::/system.slice/slurmstepd.scope/job_<id>/…``; the environ's ``SLURM_JOB_ID``,
    ``SLURM_JOB_USER`` and ``SLURM_JOB_ACCOUNT`` (the team, through ``team_map``). The cgroup
    wins for the job (a process cannot rewrite it) and an environ naming another job is not
    trusted for the user or account either.
  - Kubernetes: the pod UID in the kubelet's cgroup path (:func:`pod_uid_of_cgroup`), cgroupfs
    driver ``…/kubepods/burstable/pod<uid>/<container>`` (``besteffort``, or no QoS level for
    guaranteed pods) or systemd driver
    ``…/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/
    cri-containerd-<id>.scope`` (also ``docker-…``/``crio-…`` scopes), v1 or v2. A
    :class:`PodDirectory` (the kubelet's ``/pods`` PodList) maps the UID to namespace, pod,
    job and user: job from the label ``batch.kubernetes.io/job-name``, else ``job-name``,
    else the controlling ownerReference (a ReplicaSet's ``pod-template-hash`` suffix removed,
    so a Deployment's pods share its name), else the pod name; user from an annotation
    (default ``fleetscope.io/user``); team is the namespace through ``team_map``.

  Anything unknown is ``"unknown"``, and a process is never dropped for it.
"""

from __future__ import annotations

import json
import logging
import pwd
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from fleetscope.collect import Sample
from fleetscope.collect.gpu import GPUIdentity, GPUProcess
from fleetscope.model import TIERS, WORKLOADS

__all__ = [
    "DEFAULT_USER_ANNOTATION",
    "UNKNOWN",
    "Allocation",
    "AllocationCollector",
    "JobOwner",
    "PodDirectory",
    "PodInfo",
    "ProcessOwner",
    "job_of_pid",
    "owner_of_pid",
    "parse_pod_list",
    "passwd_name",
    "pod_uid_of_cgroup",
    "read_gpustat",
]

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
DEFAULT_USER_ANNOTATION = "fleetscope.io/user"
"""The pod annotation that names the user a pod runs for (configurable per directory)."""

_JOB_IN_CGROUP = re.compile(r"/job_(\d+)(?:/|$)")
_UID_IN_CGROUP = re.compile(r"/uid_(\d+)(?:/|$)")
_UUID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
# pod<uid> as a kubepods path component (cgroupfs) or slice name suffix (systemd); static pods'
# UIDs are a 32-hex-digit hash without dashes
_POD_IN_CGROUP = re.compile(
    rf"kubepods\S*?[/-]pod(?P<uid>{_UUID}|[0-9a-fA-F]{{32}})(?:\.slice)?(?:/|$)"
)
_GPU_UUID_NAME = re.compile(r"(?:GPU|MIG)-[0-9A-Za-z-]+")


class Allocation(NamedTuple):
    """One prolog file: a job holding one GPU. ``None``: the file does not say.

    ``gpu`` is the NVML index of a file named by index; a file named by UUID has ``gpu`` ``None``
    and ``gpu_uuid`` set.
    """

    gpu: int | None
    job: str
    uid: int | None
    user: str | None
    account: str | None
    partition: str | None
    qos: str | None
    gpu_uuid: str | None = None


class ProcessOwner(NamedTuple):
    """The job and user of a process (``"unknown"`` when they cannot be found)."""

    job: str
    user: str


class JobOwner(NamedTuple):
    """The job, user and team that own a process or hold a GPU (``"unknown"`` parts)."""

    job: str
    user: str
    team: str


def passwd_name(uid: int) -> str | None:
    """The passwd name of ``uid`` on this host, ``None`` when there is none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _gpu_of_name(name: str) -> tuple[int | None, str | None] | None:
    """``(index, None)`` or ``(None, uuid)`` for a prolog file name; ``None`` for other files."""
    if name.isdigit():
        return int(name), None
    if _GPU_UUID_NAME.fullmatch(name):
        return None, name
    return None


def read_gpustat(path: Path) -> Allocation | None:
    """Parse one prolog file; ``None`` when it vanished, is unreadable or malformed, or its name
    is neither a GPU index nor a GPU UUID."""
    gpu = _gpu_of_name(path.name)
    if gpu is None:
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
        gpu=gpu[0],
        job=head[0],
        uid=uid,
        user=keys.get("user"),
        account=keys.get("account"),
        partition=keys.get("partition"),
        qos=keys.get("qos"),
        gpu_uuid=gpu[1],
    )


# -- Kubernetes pods ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PodInfo:
    """A pod as attribution needs it; ``user`` is ``None`` when the pod is not annotated."""

    uid: str
    namespace: str
    name: str
    job: str
    user: str | None


def pod_uid_of_cgroup(text: str) -> str | None:
    """The pod UID (lowercase, dashed) in a ``/proc/<pid>/cgroup`` text, ``None`` if none."""
    for line in text.splitlines():
        found = _POD_IN_CGROUP.search(line.split(":", 2)[-1])
        if found:
            return found.group("uid").replace("_", "-").lower()
    return None


def _job_of_pod(meta: Mapping[str, Any]) -> str:
    labels = meta.get("labels") or {}
    for key in ("batch.kubernetes.io/job-name", "job-name"):
        value = labels.get(key)
        if isinstance(value, str) and value:
            return value
    owners = [o for o in meta.get("ownerReferences") or () if isinstance(o, dict) and o.get("name")]
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner is not None:
        name = str(owner["name"])
        template_hash = labels.get("pod-template-hash")
        if (
            owner.get("kind") == "ReplicaSet"
            and template_hash
            and name.endswith(f"-{template_hash}")
        ):
            return name[: -len(template_hash) - 1]  # the Deployment's name
        return name
    return str(meta.get("name") or UNKNOWN)


def parse_pod_list(
    payload: object, user_annotation: str = DEFAULT_USER_ANNOTATION
) -> dict[str, PodInfo]:
    """Pod UID → :class:`PodInfo` from a decoded ``v1.PodList`` (``items[].metadata``).

    Items without a ``uid`` are skipped; a payload that is not a PodList raises ``ValueError``.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
        raise ValueError("not a PodList: expected an object with an items list")
    pods: dict[str, PodInfo] = {}
    for item in payload["items"]:
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict) or not meta.get("uid"):
            continue
        uid = str(meta["uid"]).lower()
        user = (meta.get("annotations") or {}).get(user_annotation)
        pods[uid] = PodInfo(
            uid=uid,
            namespace=str(meta.get("namespace") or UNKNOWN),
            name=str(meta.get("name") or UNKNOWN),
            job=_job_of_pod(meta),
            user=str(user) if user else None,
        )
    return pods


class PodDirectory:
    """Pod UID → pod, from the kubelet's ``/pods`` endpoint or a file holding its PodList JSON.

    ``source`` is a URL (``https://127.0.0.1:10250/pods``, with a bearer token from
    ``token_file`` — normally the service account's — and ``ca_file`` or ``verify=False`` for the
    kubelet's self-signed certificate) or a file path. The list is loaded on first use and again
    on a miss once ``refresh_seconds`` have passed since the last attempt, so an unknown UID
    costs at most one request per interval. A failed load keeps the previous list (logged once
    per reason). Not thread-safe (the agent's collector thread uses it).
    """

    def __init__(
        self,
        source: str | Path,
        *,
        user_annotation: str = DEFAULT_USER_ANNOTATION,
        refresh_seconds: float = 30.0,
        token_file: str | Path | None = None,
        ca_file: str | Path | None = None,
        verify: bool = True,
        timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.user_annotation = user_annotation
        self.refresh_seconds = refresh_seconds
        self.token_file = token_file
        self.ca_file = ca_file
        self.verify = verify
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.pods: dict[str, PodInfo] = {}
        self.loads = 0  # successful loads
        self._last_attempt: float | None = None
        self._logged: set[str] = set()

    def get(self, uid: str) -> PodInfo | None:
        """The pod with this UID (any case, ``_`` or ``-``), ``None`` when the kubelet has none."""
        key = uid.replace("_", "-").lower()
        pod = self.pods.get(key)
        if pod is None and self._stale():
            self.refresh()
            pod = self.pods.get(key)
        return pod

    def refresh(self) -> bool:
        """Load the pod list now; ``False`` (previous list kept) when it cannot be read."""
        self._last_attempt = self.clock()
        try:
            self.pods = parse_pod_list(json.loads(self._fetch()), self.user_annotation)
        except (OSError, ValueError, httpx.HTTPError) as err:
            reason = f"{type(err).__name__}: {err}"
            if reason not in self._logged:
                self._logged.add(reason)
                log.warning("pod list %s unavailable: %s (logged once)", self.source, reason)
            return False
        self.loads += 1
        return True

    def _stale(self) -> bool:
        last = self._last_attempt
        return last is None or self.clock() - last >= self.refresh_seconds

    def _fetch(self) -> bytes:
        source = str(self.source)
        if not source.startswith(("http://", "https://")):
            return Path(source).read_bytes()
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
            headers["Authorization"] = f"Bearer {token}"
        verify: ssl.SSLContext | bool = self.verify
        if self.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.ca_file))
        resp = httpx.get(source, headers=headers, verify=verify, timeout=self.timeout_seconds)
        resp.raise_for_status()
        return resp.content


# -- allocations -------------------------------------------------------------------------------


class AllocationCollector:
    """Emits ``fleet_gpu_allocation`` from prolog files and GPU processes (module docstring).

    ``gpus`` is a mapping NVML index → identity, or a callable returning one (normally
    :meth:`fleetscope.collect.gpu.GPUCollector.identities`, read at every ``collect``).
    ``processes`` is a callable returning NVML index → the GPU's processes with their owners
    (normally :meth:`fleetscope.collect.gpu.GPUCollector.processes`); without it only prolog
    files count. :meth:`owner_of_gpu` tells who holds one GPU now (the XID collector's
    ``owner_of_gpu``).
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
        processes: Callable[[], Mapping[int, Sequence[GPUProcess]]] | None = None,
    ) -> None:
        self.node = node
        self.gpus = gpus
        self.root = Path(root)
        self.team_map: Mapping[str, str] = team_map or {}
        self.user_of_uid = user_of_uid
        self.processes = processes
        self._logged: set[str] = set()

    @property
    def directory(self) -> Path:
        """The prolog files' directory, ``root/run/gpustat``."""
        return self.root / "run" / "gpustat"

    def collect(self) -> list[Sample]:
        gpus = self._gpus()
        by_uuid = {ident.uuid: ident for ident in gpus.values()}
        out: dict[tuple[tuple[str, str], ...], Sample] = {}
        covered: set[int] = set()
        try:
            paths = sorted(self.directory.iterdir())
        except OSError:  # no prolog directory: no prolog-file allocations here
            paths = []
        for path in paths:
            if _gpu_of_name(path.name) is None:  # not a GPU file (a README, a swap file)
                continue
            alloc = read_gpustat(path)
            if alloc is None:
                if path.exists():
                    self._log_once(f"unreadable or malformed prolog file {path}")
                continue
            ident = (
                gpus.get(alloc.gpu) if alloc.gpu is not None else by_uuid.get(alloc.gpu_uuid or "")
            )
            if ident is None:
                which = alloc.gpu if alloc.gpu is not None else alloc.gpu_uuid
                self._log_once(f"job {alloc.job} holds GPU {which}, whose identity is unknown")
                continue
            covered.add(ident.index)
            self._add(out, self._labels(alloc, ident))
        for index, procs in sorted(self._processes().items()):
            if index in covered or not procs:
                continue
            ident = gpus.get(index)
            if ident is None:
                self._log_once(f"processes run on GPU {index}, whose identity is unknown")
                continue
            for owner in sorted({_process_owner(p) for p in procs}):
                labels = {**ident.labels(self.node), **owner._asdict()}
                self._add(out, {**labels, "workload": UNKNOWN, "tier": UNKNOWN})
        return list(out.values())

    def owner_of_gpu(self, index: int) -> JobOwner | None:
        """The job holding GPU ``index`` now: its prolog file (by index, then by UUID), else the
        owner of its process using the most memory in the GPU collector's last cycle (a known
        job before an unknown one); ``None`` when nothing holds it."""
        ident = self._gpus().get(index)
        for name in (str(index), ident.uuid if ident else None):
            alloc = read_gpustat(self.directory / name) if name else None
            if alloc is not None:
                _user, team, _workload, _tier = self._attributes(alloc)
                return JobOwner(alloc.job, _user, team)
        procs = self._processes().get(index) or ()
        if not procs:
            return None
        top = max(procs, key=lambda p: (p.job != UNKNOWN, p.used_memory_bytes or 0, -p.pid))
        return _process_owner(top)

    def _gpus(self) -> Mapping[int, GPUIdentity]:
        return self.gpus() if callable(self.gpus) else self.gpus

    def _processes(self) -> Mapping[int, Sequence[GPUProcess]]:
        if self.processes is None:
            return {}
        try:
            return self.processes()
        except Exception as err:  # the GPU collector's view must not cost the prolog series
            self._log_once(f"GPU processes unavailable ({type(err).__name__}: {err})")
            return {}

    @staticmethod
    def _add(out: dict[tuple[tuple[str, str], ...], Sample], labels: dict[str, str]) -> None:
        out.setdefault(tuple(sorted(labels.items())), Sample("fleet_gpu_allocation", labels, 1.0))

    def _attributes(self, alloc: Allocation) -> tuple[str, str, str, str]:
        """``(user, team, workload, tier)`` of a prolog file (module docstring)."""
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
        return user or UNKNOWN, team or UNKNOWN, workload or UNKNOWN, tier or UNKNOWN

    def _labels(self, alloc: Allocation, ident: GPUIdentity) -> dict[str, str]:
        user, team, workload, tier = self._attributes(alloc)
        return {
            **ident.labels(self.node),
            "job": alloc.job,
            "team": team,
            "user": user,
            "workload": workload,
            "tier": tier,
        }

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s on %s (logged once)", message, self.node)


def _process_owner(proc: GPUProcess) -> JobOwner:
    return JobOwner(proc.job or UNKNOWN, proc.user or UNKNOWN, proc.team or UNKNOWN)


# -- process owners ----------------------------------------------------------------------------


def owner_of_pid(
    pid: int,
    root: Path | str = "/",
    *,
    user_of_uid: Callable[[int], str | None] = passwd_name,
    pods: PodDirectory | None = None,
    team_map: Mapping[str, str] | None = None,
) -> JobOwner:
    """The Slurm job or Kubernetes pod's job, user and team of ``pid`` (module docstring).

    ``team`` is the Slurm account or the pod's namespace through ``team_map`` (identity for
    names not in it). Never raises; unknown parts are ``"unknown"``.
    """
    teams = team_map or {}
    proc = Path(root) / "proc" / str(pid)
    job: str | None = None
    user: str | None = None
    team: str | None = None
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
    if job is None:
        pod_uid = pod_uid_of_cgroup(cgroup)
        if pod_uid is not None:
            pod = pods.get(pod_uid) if pods is not None else None
            if pod is None:
                return JobOwner(UNKNOWN, UNKNOWN, UNKNOWN)
            return JobOwner(pod.job, pod.user or UNKNOWN, teams.get(pod.namespace, pod.namespace))
    env = _environ(proc / "environ")
    env_job = env.get("SLURM_JOB_ID") or None
    if job is None:
        job = env_job
    if env_job == job:  # an environ that contradicts the cgroup is not trusted for the user
        user = env.get("SLURM_JOB_USER") or user
        account = env.get("SLURM_JOB_ACCOUNT") or None
        team = None if account is None else teams.get(account, account)
    return JobOwner(job or UNKNOWN, user or UNKNOWN, team or UNKNOWN)


def job_of_pid(
    pid: int,
    root: Path | str = "/",
    user_of_uid: Callable[[int], str | None] = passwd_name,
    *,
    pods: PodDirectory | None = None,
) -> ProcessOwner:
    """The job and user of ``pid``: :func:`owner_of_pid` without the team."""
    owner = owner_of_pid(pid, root, user_of_uid=user_of_uid, pods=pods)
    return ProcessOwner(owner.job, owner.user)


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
