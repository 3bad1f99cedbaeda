"""A web app over DuckDB stores holding a small fleet with known GPU-hours and jobs."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetscope.model import Job, JobState
from fleetscope.store import SampleBatch
from fleetscope.store.duckdb import DuckDBStore
from fleetscope.web.app import WebSettings, create_app

with warnings.catch_warnings():
    # starlette warns that its TestClient would rather have `httpx2`; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

__all__ = ["GPU_HOURS", "NOW_MS", "TestClient", "fill"]

NOW_MS = 1_700_006_400_000 + 30_000  # 30 s after the newest sample
MIN = 60_000
GPU_HOURS = {"vision": 2.0, "llm": 1.0}  # what the data below holds, over any window ≥ 2h


def _gpu(uuid: str, index: str) -> dict[str, str]:
    return {"node": "n1", "gpu": index, "gpu_uuid": uuid, "gpu_model": "NVIDIA H100 80GB HBM3"}


def fill(metrics: DuckDBStore, records: DuckDBStore) -> None:
    """Three GPUs sampled every minute for the last two hours (newest 30 s before NOW_MS).

    g0 runs job v1 (vision, busy) for two hours, g1 runs job l1 (llm, idle) for the last hour,
    g2 is free; job p1 (llm, 4 GPUs) has been pending for 20 minutes.
    """
    rows: list[tuple[dict[str, str], int, float]] = []
    for k in range(120):
        t = NOW_MS - 30_000 - k * MIN
        for uuid, index in (("g0", "0"), ("g1", "1"), ("g2", "2")):
            rows.append(({"__name__": "fleet_gpu_up", **_gpu(uuid, index)}, t, 1.0))
        util = {"g0": 0.9, "g1": 0.01, "g2": 0.0}
        for uuid, v in util.items():
            rows.append(({"__name__": "fleet_gpu_utilization_ratio", **_gpu(uuid, uuid[1])}, t, v))
        jobs = [("g0", "v1", "vision", "ana")] + ([("g1", "l1", "llm", "li")] if k < 60 else [])
        for uuid, job, team, user in jobs:
            labels = {
                "__name__": "fleet_gpu_allocation", **_gpu(uuid, uuid[1]), "job": job,
                "team": team, "user": user, "workload": "training", "tier": "production",
            }  # fmt: skip
            rows.append((labels, t, 1.0))
        for team, quota in (("vision", 2.0), ("llm", 1.0)):
            rows.append(({"__name__": "fleet_sched_quota_gpus", "cluster": "sim", "team": team},
                         t, quota))  # fmt: skip
    metrics.append(SampleBatch.from_rows(rows))
    now = datetime.fromtimestamp(NOW_MS / 1000, UTC)
    records.upsert_jobs(
        [
            Job(id="v1", cluster="sim", team="vision", user="ana", state=JobState.RUNNING,
                submit=now - timedelta(hours=3), start=now - timedelta(hours=2), gpus=1,
                workload="training", tier="production"),
            Job(id="l1", cluster="sim", team="llm", user="li", state=JobState.RUNNING,
                submit=now - timedelta(hours=1), start=now - timedelta(hours=1), gpus=1,
                workload="fine_tuning"),
            Job(id="p1", cluster="sim", team="llm", user="li", state=JobState.PENDING,
                submit=now - timedelta(minutes=20), gpus=4, pending_reason="Resources"),
        ]
    )  # fmt: skip


@pytest.fixture
def store() -> Iterator[DuckDBStore]:
    s = DuckDBStore(":memory:")
    fill(s, s)
    yield s
    s.close()


@pytest.fixture
def settings(tmp_path: Path) -> WebSettings:
    return WebSettings(data_dir=tmp_path / "data", clock=lambda: NOW_MS / 1000)


@pytest.fixture
def client(settings: WebSettings, store: DuckDBStore) -> Iterator[TestClient]:
    with TestClient(create_app(settings, store, store)) as c:
        yield c


@pytest.fixture
def token(settings: WebSettings, client: TestClient) -> str:
    return (settings.data_dir / "admin.token").read_text().strip()


@pytest.fixture
def authed(client: TestClient, token: str) -> TestClient:
    client.headers["Authorization"] = f"Bearer {token}"
    return client
