"""Record intake: validate job records and upsert them into a :class:`RecordStore`.

All or nothing: every record is checked against :class:`fleetscope.model.Job` first, and if any
is bad nothing is stored and :class:`IntakeError` lists each bad record by index and field.
A job that appears twice in one payload is stored as its later version (upsert order).
"""

from __future__ import annotations

from pydantic import ValidationError

from fleetscope.model import Job
from fleetscope.store import RecordStore

MAX_ERRORS_LISTED = 20


class IntakeError(ValueError):
    """Records refused at intake; the message lists what is wrong with each."""


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(record)"


def parse_jobs(payload: object) -> list[Job]:
    """Jobs from a decoded JSON payload (a list of objects); :class:`IntakeError` if any is bad."""
    if not isinstance(payload, list):
        raise IntakeError(f"expected a JSON list of jobs, got {type(payload).__name__}")
    jobs: list[Job] = []
    problems: list[str] = []
    for i, item in enumerate(payload):
        if not isinstance(item, dict):
            problems.append(f"record {i}: expected an object, got {type(item).__name__}")
            continue
        try:
            job = Job.model_validate(item)
        except ValidationError as e:
            problems += [
                f"record {i}: field {_field(err['loc'])}: {err['msg']}" for err in e.errors()
            ]
            continue
        jobs.append(job)
    if problems:
        more = len(problems) - MAX_ERRORS_LISTED
        listed = problems[:MAX_ERRORS_LISTED] + ([f"… and {more} more"] if more > 0 else [])
        raise IntakeError(f"{len(problems)} problem(s), nothing stored: " + "; ".join(listed))
    return jobs


def accept_jobs(records: RecordStore, payload: object) -> int:
    """Validate a JSON list of jobs and upsert them all; returns how many were stored."""
    jobs = parse_jobs(payload)
    if not jobs:
        return 0
    return records.upsert_jobs(jobs)
