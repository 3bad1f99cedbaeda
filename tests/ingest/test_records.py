"""Tests of job intake (fleetscope.ingest.records)."""

from __future__ import annotations

from typing import Any

import pytest

from fleetscope.ingest.records import MAX_ERRORS_LISTED, IntakeError, accept_jobs
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
