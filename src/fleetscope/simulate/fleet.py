"""The simulated fleet's static shape: nodes of GPUs, GPU models, teams with quotas and users.

:func:`build` turns a :class:`FleetSpec` into a :class:`Fleet`: ``gpus / gpus_per_node`` nodes
(H100 / A100 / L40S by ``model_mix``, named ``gpu-h100-01`` …), GPU UUIDs derived from the seed
(``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``), and teams whose GPU quotas split the fleet by
share (largest remainder, so they sum to the fleet size). Each team's Slurm account is its name,
as the prolog files write it (``account=`` → team by identity). Everything here is a pure
function of the spec: same spec, same fleet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "GPU_MODELS",
    "Fleet",
    "FleetSpec",
    "GpuInfo",
    "GpuModel",
    "NodeInfo",
    "TeamInfo",
    "TeamSpec",
    "build",
]

MIB = 1024**2


@dataclass(frozen=True)
class GpuModel:
    """One GPU model as NVML reports it (name, memory) and its power and clock envelope."""

    key: str
    nvml_name: str
    memory_total_bytes: int
    power_limit_mw: int
    idle_power_mw: int
    max_sm_mhz: int
    idle_sm_mhz: int


GPU_MODELS: dict[str, GpuModel] = {
    m.key: m
    for m in (
        GpuModel("h100", "NVIDIA H100 80GB HBM3", 81_559 * MIB, 700_000, 70_000, 1_980, 345),
        GpuModel("a100", "NVIDIA A100-SXM4-80GB", 81_920 * MIB, 400_000, 55_000, 1_410, 210),
        GpuModel("l40s", "NVIDIA L40S", 46_068 * MIB, 350_000, 35_000, 2_520, 210),
    )
}


@dataclass(frozen=True)
class TeamSpec:
    """A team: its share of the fleet (→ quota), users and workload mix (weights)."""

    name: str
    share: float
    users: tuple[str, ...]
    workloads: Mapping[str, float]


DEFAULT_TEAMS: tuple[TeamSpec, ...] = (
    TeamSpec(
        "llm-research",
        0.5,
        ("ada", "bruno", "chen", "dmitri", "elena"),
        {"training": 0.45, "fine_tuning": 0.3, "inference": 0.05, "notebook": 0.1, "batch": 0.1},
    ),
    TeamSpec(
        "vision",
        0.2,
        ("farah", "gabriel", "hana", "ivan"),
        {"training": 0.45, "fine_tuning": 0.15, "notebook": 0.15, "batch": 0.25},
    ),
    TeamSpec(
        "inference-platform",
        0.17,
        ("jun", "kofi", "lena"),
        {"inference": 0.45, "batch": 0.3, "fine_tuning": 0.1, "notebook": 0.15},
    ),
    TeamSpec(
        "data-science",
        0.13,
        ("maya", "nils", "omar", "priya"),
        {"notebook": 0.45, "batch": 0.35, "training": 0.2},
    ),
)


@dataclass(frozen=True)
class FleetSpec:
    """What to simulate. Durations in seconds; ``None`` fields are derived from ``gpus``.

    ``endpoints``: long-running production inference deployments (default one per 16 GPUs).
    ``max_job_gpus``: the largest job (default half the fleet: a job needing every GPU would
    wait for every endpoint to end). ``borrow_spare_ratio``: a team over its quota may start a
    job only on idle GPUs, and only if at least this share of the fleet stays idle afterwards.
    """

    gpus: int = 64
    seed: int = 0
    gpus_per_node: int = 8
    model_mix: tuple[tuple[str, float], ...] = (("h100", 0.5), ("a100", 0.25), ("l40s", 0.25))
    teams: tuple[TeamSpec, ...] = DEFAULT_TEAMS
    tick_s: int = 15
    endpoints: int | None = None
    max_job_gpus: int | None = None
    borrow_spare_ratio: float = 0.0
    node_failures_per_day: float = 0.25
    warmup_s: int = 2 * 86_400
    cluster: str = "sim"

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.gpus_per_node < 1 or self.tick_s < 1:
            raise ValueError("gpus, gpus_per_node and tick_s must be positive")
        unknown = [k for k, _ in self.model_mix if k not in GPU_MODELS]
        if unknown:
            raise ValueError(f"unknown GPU models {unknown}; known: {sorted(GPU_MODELS)}")
        if not self.teams:
            raise ValueError("a fleet needs at least one team")

    @property
    def tick_ms(self) -> int:
        return self.tick_s * 1000

    @property
    def endpoint_count(self) -> int:
        return self.endpoints if self.endpoints is not None else max(1, self.gpus // 16)

    @property
    def job_gpu_cap(self) -> int:
        return self.max_job_gpus if self.max_job_gpus is not None else max(1, self.gpus // 2)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU: ``id`` is its position in the fleet, ``index`` its NVML index on the node."""

    id: int
    node: str
    node_id: int
    index: int
    uuid: str
    model: GpuModel

    def labels(self) -> dict[str, str]:
        """The label set of its GPU series (the collector's ``GPUIdentity.labels``)."""
        return {
            "node": self.node,
            "gpu": str(self.index),
            "gpu_uuid": self.uuid,
            "gpu_model": self.model.nvml_name,
        }


@dataclass(frozen=True)
class NodeInfo:
    id: int
    name: str
    model: GpuModel
    gpus: tuple[GpuInfo, ...]


@dataclass(frozen=True)
class TeamInfo:
    """A team with its quota, Slurm account, users and their uids, and workload weights."""

    name: str
    quota_gpus: int
    account: str
    users: tuple[str, ...]
    uids: tuple[int, ...]
    workloads: Mapping[str, float]


@dataclass(frozen=True)
class Fleet:
    spec: FleetSpec
    nodes: tuple[NodeInfo, ...]
    gpus: tuple[GpuInfo, ...]
    teams: tuple[TeamInfo, ...]
    team_index: dict[str, int] = field(default_factory=dict)

    def team(self, name: str) -> TeamInfo:
        return self.teams[self.team_index[name]]


def _largest_remainder(total: int, shares: Sequence[float]) -> list[int]:
    """Integers proportional to ``shares`` that sum to ``total``."""
    s = sum(shares)
    raw = [total * x / s for x in shares]
    out = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))[: total - sum(out)]:
        out[i] += 1
    return out


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def build(spec: FleetSpec) -> Fleet:
    """The fleet described by ``spec`` (deterministic)."""
    n_nodes = math.ceil(spec.gpus / spec.gpus_per_node)
    per_model = _largest_remainder(n_nodes, [share for _, share in spec.model_mix])
    rng = np.random.default_rng([spec.seed, 0x6A7])
    nodes: list[NodeInfo] = []
    gpus: list[GpuInfo] = []
    for (key, _), count in zip(spec.model_mix, per_model, strict=True):
        model = GPU_MODELS[key]
        for n in range(count):
            node_id = len(nodes)
            name = f"gpu-{key}-{n + 1:02d}"
            size = min(spec.gpus_per_node, spec.gpus - len(gpus))
            devs = tuple(
                GpuInfo(len(gpus) + i, name, node_id, i, _uuid(rng.bytes(16)), model)
                for i in range(size)
            )
            gpus.extend(devs)
            nodes.append(NodeInfo(node_id, name, model, devs))
    quotas = _largest_remainder(spec.gpus, [t.share for t in spec.teams])
    teams: list[TeamInfo] = []
    uid = 20_001
    for t, quota in zip(spec.teams, quotas, strict=True):
        uids = tuple(range(uid, uid + len(t.users)))
        uid += len(t.users)
        teams.append(TeamInfo(t.name, quota, t.name, t.users, uids, dict(t.workloads)))
    index = {t.name: i for i, t in enumerate(teams)}
    return Fleet(spec, tuple(nodes), tuple(gpus), tuple(teams), index)
