"""Record types: things with identity and lifecycle (DESIGN.md "Records").

Records are validated here, at intake, so a malformed record is refused with a message before it
reaches a store. Times are timezone-aware UTC datetimes; ``None`` means unknown (a pending job has
no ``start``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class JobState(StrEnum):
    """Slurm's job states (the union that Kubernetes phases are mapped onto)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


WORKLOADS = ("training", "fine_tuning", "inference", "notebook", "batch")
TIERS = ("production", "experimentation")


def _aware(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class Job(BaseModel):
    """A job or workload as a scheduler sees it. Queue time = start − submit."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    cluster: str = Field(default="default", min_length=1, max_length=128)
    name: str = ""
    team: str = Field(min_length=1, max_length=128)
    user: str = Field(min_length=1, max_length=128)
    workload: str = "batch"
    tier: str = "experimentation"
    state: JobState
    submit: datetime
    start: datetime | None = None
    end: datetime | None = None
    gpus: int = Field(default=0, ge=0, le=100_000)
    nodes: list[str] = Field(default_factory=list)
    gpu_uuids: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    pending_reason: str | None = None
    restarts: int = Field(default=0, ge=0)
    image: str | None = None
    source: str = "sim"

    @field_validator("submit", "start", "end")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return _aware(v)

    @field_validator("workload")
    @classmethod
    def _known_workload(cls, v: str) -> str:
        if v not in WORKLOADS:
            raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}")
        return v

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, v: str) -> str:
        if v not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}")
        return v

    @model_validator(mode="after")
    def _times_in_order(self) -> Job:
        if self.start is not None and self.start < self.submit:
            raise ValueError("start is before submit")
        if self.end is not None and self.start is not None and self.end < self.start:
            raise ValueError("end is before start")
        if self.state == JobState.RUNNING and self.start is None:
            raise ValueError("a RUNNING job needs a start time")
        return self

    @property
    def queue_seconds(self) -> float | None:
        """Seconds between submit and start; ``None`` while pending."""
        if self.start is None:
            return None
        return (self.start - self.submit).total_seconds()

    @property
    def run_seconds(self) -> float | None:
        """Seconds between start and end (or now, while running); ``None`` if never started."""
        if self.start is None:
            return None
        end = self.end or datetime.now(UTC)
        return max(0.0, (end - self.start).total_seconds())


class Event(BaseModel):
    """Something that happened at one time: an XID, a checkpoint, a deployment, an alert …"""

    model_config = ConfigDict(extra="forbid")

    time: datetime
    kind: str = Field(min_length=1, max_length=64)
    subject: str = Field(min_length=1, max_length=256)
    attrs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class Team(BaseModel):
    """A team that owns jobs and is given a GPU quota (``quota_gpus``; ``None`` = no quota)."""

    name: str
    quota_gpus: int | None = None
    accounts: list[str] = Field(default_factory=list)
