"""The RecordStore side of the DuckDB adapter: jobs and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetscope.model import Event, Job, JobState
from fleetscope.store.duckdb import DuckDBStore

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def job(i: int, state: JobState = JobState.RUNNING, team: str = "vision", **kw: object) -> Job:
    fields: dict[str, object] = {
        "id": str(i), "team": team, "user": "ana", "state": state,
        "submit": T0 + timedelta(minutes=i), "gpus": 2,
    }  # fmt: skip
    if state != JobState.PENDING:
        fields["start"] = T0 + timedelta(minutes=i + 1)
    if state.finished:
        fields["end"] = T0 + timedelta(minutes=i + 30)
    fields.update(kw)
    return Job.model_validate(fields)


def test_upsert_replaces_the_whole_record(tmp_path: Path) -> None:
    s = DuckDBStore(tmp_path / "r.duckdb")
    s.upsert_jobs([job(1, JobState.PENDING, pending_reason="Resources")])
    s.upsert_jobs([job(1, JobState.RUNNING, nodes=["n1"], gpu_uuids=["GPU-a", "GPU-b"])])
    got = s.jobs()
    assert len(got) == 1
    assert got[0].state == JobState.RUNNING
    assert got[0].pending_reason is None
    assert got[0].gpu_uuids == ["GPU-a", "GPU-b"]
    assert got[0].start == T0 + timedelta(minutes=2)
    s.close()
    again = DuckDBStore(tmp_path / "r.duckdb").job("1")
    assert again is not None and again.nodes == ["n1"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({"states": ["RUNNING"]}, ["2", "1"], id="by-state"),
        pytest.param({"team": "llm"}, ["3"], id="by-team"),
        pytest.param({"limit": 1}, ["4"], id="newest-first"),
        pytest.param(
            {"active_between": (int((T0 + timedelta(minutes=40)).timestamp() * 1000),) * 2},
            ["4", "2", "1"],
            id="active-between",
        ),
    ],
)
def test_job_queries(query: dict[str, object], expected: list[str]) -> None:
    s = DuckDBStore(":memory:")
    s.upsert_jobs(
        [job(1), job(2), job(3, JobState.COMPLETED, team="llm"), job(4, JobState.PENDING)]
    )
    assert [j.id for j in s.jobs(**query)] == expected  # type: ignore[arg-type]


def test_events_round_trip() -> None:
    s = DuckDBStore(":memory:")
    s.add_events(
        [
            Event(time=T0, kind="xid", subject="GPU-a", attrs={"xid": 79}),
            Event(time=T0 + timedelta(hours=1), kind="deployment", subject="llama"),
        ]
    )
    assert [e.kind for e in s.events()] == ["deployment", "xid"]
    xid = s.events(kinds=["xid"])[0]
    assert xid.attrs == {"xid": 79}
    assert xid.time == T0
    since = int((T0 + timedelta(minutes=1)).timestamp() * 1000)
    assert [e.subject for e in s.events(since_ms=since)] == ["llama"]
