"""Record intake: validate job and event records and store them in a :class:`RecordStore`.

All or nothing: every record is checked against its model (:class:`fleetscope.model.Job`,
:class:`fleetscope.model.Event`) first, and if any is bad nothing is stored and
:class:`IntakeError` lists each bad record by index and field. A job that appears twice in one
payload is stored as its later version (upsert order); events are append-only, so every event of
a payload is stored, repeats included.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from fleetscope.model import Event, Job
from fleetscope.store import RecordStore

__all__ = [
    "MAX_ERRORS_LISTED",
    "IntakeError",
    "accept_events",
    "accept_jobs",
    "parse_events",
    "parse_jobs",
]

MAX_ERRORS_LISTED = 20

_Record = TypeVar("_Record", bound=BaseModel)


class IntakeError(ValueError):
    """Records refused at intake; the message lists what is wrong with each."""


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(record)"


def _parse(payload: object, model: type[_Record], what: str) -> list[_Record]:
    """Every item of a JSON list validated as ``model``; :class:`IntakeError` if any is bad."""
    if not isinstance(payload, list):
        raise IntakeError(f"expected a JSON list of {what}, got {type(payload).__name__}")
    records: list[_Record] = []
    problems: list[str] = []
    for i, item in enumerate(payload):
        if not isinstance(item, dict):
            problems.append(f"record {i}: expected an object, got {type(item).__name__}")
            continue
        try:
            record = model.model_validate(item)
        except ValidationError as e:
            problems += [
                f"record {i}: field {_field(err['loc'])}: {err['msg']}" for err in e.errors()
            ]
            continue
        records.append(record)
    if problems:
        more = len(problems) - MAX_ERRORS_LISTED
        listed = problems[:MAX_ERRORS_LISTED] + ([f"… and {more} more"] if more > 0 else [])
        raise IntakeError(f"{len(problems)} problem(s), nothing stored: " + "; ".join(listed))
    return records


def parse_jobs(payload: object) -> list[Job]:
    """Jobs from a decoded JSON payload (a list of objects); :class:`IntakeError` if any is bad."""
    return _parse(payload, Job, "jobs")


def accept_jobs(records: RecordStore, payload: object) -> int:
    """Validate a JSON list of jobs and upsert them all; returns how many were stored."""
    jobs = parse_jobs(payload)
    if not jobs:
        return 0
    return records.upsert_jobs(jobs)


def parse_events(payload: object) -> list[Event]:
    """Events from a decoded JSON payload (a list of objects); :class:`IntakeError` if any is
    bad. Times without a zone are read as UTC (:class:`fleetscope.model.Event`)."""
    return _parse(payload, Event, "events")


def accept_events(records: RecordStore, payload: object) -> int:
    """Validate a JSON list of events and append them all; returns how many were stored."""
    events = parse_events(payload)
    if not events:
        return 0
    return records.add_events(events)
