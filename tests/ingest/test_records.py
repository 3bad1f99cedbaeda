"""Tests of job intake (fleetscope.ingest.records)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fleetscope.ingest.records import (
    MAX_ERRORS_LISTED,
    IntakeError,
    accept_events,
    accept_jobs,
    parse_events,
)
from fleetscope.store.duckdb import DuckDBStore

JOB = {
    "id": "1",
    "cluster": "sim",
    "team": "nlp",
    "user": "bo",
    "state": "PENDING",
    "submit": "2024-05-01T10:00:00Z",
}


@pytest.fixture(params=["fake", "duckdb"])
def records(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return request.getfixturevalue("record_store")
    return DuckDBStore(":memory:")


def test_accepts_and_upserts(records: Any) -> None:
    assert accept_jobs(records, [JOB, {**JOB, "id": "2", "workload": "inference"}]) == 2
    assert accept_jobs(records, [{**JOB, "state": "RUNNING", "start": "2024-05-01T10:05:00Z"}]) == 1
    job = records.job("1", "sim")
    assert job is not None and job.state == "RUNNING"


def test_repeated_job_in_one_payload_keeps_the_later(records: Any) -> None:
    assert accept_jobs(records, [JOB, {**JOB, "name": "second"}]) == 1
    assert records.job("1", "sim").name == "second"


def test_all_or_nothing_with_index_and_field(records: Any) -> None:
    bad = [JOB, {**JOB, "id": "2", "tier": "gold"}, {**JOB, "id": "3", "submit": "yesterday"}]
    with pytest.raises(IntakeError) as err:
        accept_jobs(records, bad)
    text = str(err.value)
    assert "record 1: field tier" in text
    assert "record 2: field submit" in text
    assert "record 0" not in text
    assert records.jobs() == []


def test_missing_fields_and_model_rules_are_named(records: Any) -> None:
    payload = [{"id": "9"}, {**JOB, "state": "RUNNING"}]
    with pytest.raises(IntakeError) as err:
        accept_jobs(records, payload)
    text = str(err.value)
    for field in ("team", "user", "state", "submit"):
        assert f"record 0: field {field}" in text
    assert "record 1" in text and "RUNNING job needs a start" in text


def test_long_error_lists_are_cut(records: Any) -> None:
    with pytest.raises(IntakeError, match=r"and \d+ more"):
        accept_jobs(records, [{"id": str(i)} for i in range(MAX_ERRORS_LISTED)])


def test_empty_list_stores_nothing(records: Any) -> None:
    assert accept_jobs(records, []) == 0


EVENT = {
    "time": "2024-05-01T10:00:00Z",
    "kind": "xid",
    "subject": "GPU-8c5e0f3a-1b2c-4d5e-8f90-0a1b2c3d4e5f",
    "attrs": {"node": "n1", "xid": 79, "action": "reset_gpu", "job": "4242"},
}


def test_events_are_appended_with_attrs(records: Any) -> None:
    second = {**EVENT, "time": "2024-05-01T12:00:00+02:00", "kind": "checkpoint"}
    assert accept_events(records, [EVENT, second, EVENT]) == 3
    stored = records.events()
    assert len(stored) == 3
    xids = [e for e in stored if e.kind == "xid"]
    assert len(xids) == 2
    assert xids[0].attrs == EVENT["attrs"]
    assert xids[0].subject == EVENT["subject"]
    checkpoint = next(e for e in stored if e.kind == "checkpoint")
    assert checkpoint.time == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def test_event_without_zone_is_utc() -> None:
    (event,) = parse_events([{**EVENT, "time": "2024-05-01T10:00:00"}])
    assert event.time == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def test_bad_events_store_nothing_and_name_index_and_field(records: Any) -> None:
    bad = [
        EVENT,
        {**EVENT, "kind": ""},
        {**EVENT, "time": "soon", "extra": 1},
        "xid 79",
        {"kind": "xid"},
    ]
    with pytest.raises(IntakeError) as err:
        accept_events(records, bad)
    text = str(err.value)
    assert "record 0" not in text
    assert "record 1: field kind" in text
    assert "record 2: field time" in text
    assert "record 2: field extra" in text
    assert "record 3: expected an object, got str" in text
    assert "record 4: field time" in text and "record 4: field subject" in text
    assert records.events() == []


def test_events_payload_must_be_a_list(records: Any) -> None:
    with pytest.raises(IntakeError, match="expected a JSON list of events, got dict"):
        accept_events(records, EVENT)
    assert accept_events(records, []) == 0
    assert records.events() == []
