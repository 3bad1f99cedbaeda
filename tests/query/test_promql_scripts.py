"""PromQL behaviour as scripts in Prometheus' ``.test`` format, run by one parametrized test.

Two sets: Prometheus v2.42.0's own engine scripts (``../shared/promql-testdata``, read in place,
not copied: Apache-2.0 data of the reference implementation) and Fleetscope's own scripts under
``testdata/``. Each ``eval`` is a case, run by :func:`fleetscope.query.promqltest.run_case` as
Prometheus' test does (instant, range mode and ``@`` variants). Cases listed in
:mod:`known_failures` must still fail (an expected failure checked by hand, strict: a listed
case that passes fails the test).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetscope.query.promqltest import CaseFailure, EvalCase, collect, parse_script, run_case

from .known_failures import KNOWN_FAILURES

REFERENCE_DIR = Path(__file__).resolve().parents[3] / "shared" / "promql-testdata"
OWN_DIR = Path(__file__).resolve().parent / "testdata"
REFERENCE_CASES = collect(REFERENCE_DIR, "prometheus") if REFERENCE_DIR.is_dir() else []
OWN_CASES = collect(OWN_DIR, "fleetscope")
CASES = REFERENCE_CASES + OWN_CASES


def check(case: EvalCase, known_failure: str | None) -> None:
    """Run ``case``; a known failure must fail with :class:`CaseFailure`."""
    if known_failure is None:
        run_case(case)
        return
    try:
        run_case(case)
    except CaseFailure:
        return
    pytest.fail(
        f"{case.id} passes but is listed in known_failures.py ({known_failure}); "
        "remove it from the list"
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_script_case(case: EvalCase) -> None:
    check(case, KNOWN_FAILURES.get(case.id))


def test_reference_scripts_are_there() -> None:
    """The reference corpus is read from the shared checkout; all eleven scripts count."""
    assert REFERENCE_DIR.is_dir(), f"missing {REFERENCE_DIR}"
    files = {c.script.split("/")[1].split(":")[0] for c in REFERENCE_CASES}
    assert len(files) == 11
    assert len(REFERENCE_CASES) == 566


def test_known_failures_name_real_cases() -> None:
    ids = {c.id for c in CASES}
    assert not set(KNOWN_FAILURES) - ids, "known_failures.py lists cases that do not exist"


_PASSING = """
load 1m
  m{a="x"} 1+1x3

eval instant at 2m m
  m{a="x"} 3
"""


def test_a_known_failure_that_passes_fails_the_test() -> None:
    (case,) = parse_script(_PASSING, "inline/passing.test")
    with pytest.raises(pytest.fail.Exception, match="remove it from the list"):
        check(case, "listed by mistake")


def test_a_known_failure_that_fails_is_accepted() -> None:
    (case,) = parse_script(_PASSING.replace("} 3", "} 4"), "inline/failing.test")
    with pytest.raises(CaseFailure):
        run_case(case)
    check(case, "expected 4 on purpose")
