"""The ``.test`` script runner itself: notation, comparison, and that it catches mismatches."""

from __future__ import annotations

import math

import pytest

from fleetscope.query.promqltest import (
    STALE,
    CaseFailure,
    ScriptError,
    almost_equal,
    at_modifier_variants,
    parse_script,
    run_case,
)

SCRIPT = """
# a comment
load 30s
  m{a="x"} 1+2x3 _ 4-1x2 stale _x2 Inf -Inf NaN 0x1
  m{a="x"} 5 6
  other 2

eval instant at 0s m
  m{a="x"} 5

clear

load 1m
  n 1

eval_ordered instant at 1m n
  n 1

eval_fail instant at 1m n + on() group_left n n

eval instant at 1h30m 1 + 1
  2
"""


def test_parse_script_reads_commands() -> None:
    cases = parse_script(SCRIPT, "inline/x.test")
    assert [c.id for c in cases] == [
        "inline/x.test:8",
        "inline/x.test:16",
        "inline/x.test:19",
        "inline/x.test:21",
    ]
    first, ordered, failing, scalar = cases
    # a series defined twice in one load keeps the last definition
    (load,) = first.loads
    assert dict(load.series)[(("__name__", "m"), ("a", "x"))] == ((0, 5.0), (30_000, 6.0))
    assert ordered.ordered and not ordered.fail
    assert len(ordered.loads) == 1 and ordered.loads[0] is not load  # clear dropped the first
    assert failing.fail
    assert scalar.at_ms == 90 * 60_000
    assert scalar.expected[0].labels is None and scalar.expected[0].value == 2


def test_expanding_notation() -> None:
    (case,) = parse_script(
        "load 10s\n  m 1+2x3 _ 4-1x2 stale _x2 Inf -Inf NaN 0x1\n\neval instant at 0s m\n  m 1\n",
        "inline/y.test",
    )
    ((_, samples),) = case.loads[0].series
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    assert times == [0, 10_000, 20_000, 30_000, 50_000, 60_000, 70_000, 80_000, 110_000,
                     120_000, 130_000, 140_000, 150_000]  # fmt: skip
    assert values[:7] == [1, 3, 5, 7, 4, 3, 2]
    assert math.isnan(values[7]) and str(values[7]) == str(STALE)
    assert values[8:10] == [math.inf, -math.inf]
    assert math.isnan(values[10])
    assert values[11:] == [0, 0]


@pytest.mark.parametrize(
    "script",
    [
        "bogus command\n",
        "load 5x\n  m 1\n",
        "load 1m\n  m 1 zz\n",
        "eval instant at 1m m\n  m 1 2\n",
    ],
)
def test_invalid_scripts_are_rejected(script: str) -> None:
    with pytest.raises(ScriptError):
        parse_script(script, "inline/bad.test")


def test_almost_equal_is_prometheus_epsilon() -> None:
    assert almost_equal(math.nan, math.nan)
    assert almost_equal(1.0, 1.0 + 1e-9)
    assert not almost_equal(1.0, 1.0001)
    assert not almost_equal(0.0, 1e-300)  # zero is only equal to (almost) zero
    assert almost_equal(math.inf, math.inf) and not almost_equal(math.inf, -math.inf)


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        pytest.param("  m 2\n", "expected 2.0 for", id="value"),
        pytest.param("  m 1\n  n 1\n", "expected series not in the result", id="missing"),
        pytest.param("", "unexpected series", id="extra"),
        pytest.param("  1\n", "got a vector, expected scalar", id="type"),
    ],
)
def test_mismatches_fail(expectation: str, message: str) -> None:
    (case,) = parse_script(f"load 1m\n  m 1\n\neval instant at 0s m\n{expectation}", "i/z.test")
    with pytest.raises(CaseFailure, match=message):
        run_case(case)


def test_eval_fail_needs_an_error() -> None:
    (case,) = parse_script("load 1m\n  m 1\n\neval_fail instant at 0s m\n", "i/f.test")
    with pytest.raises(CaseFailure, match="expected an error"):
        run_case(case)


def test_at_modifier_variants_pin_selectors() -> None:
    variants = at_modifier_variants("sum(rate(m[5m])) + n offset 1m", 60_000)
    assert [t for _, t in variants] == [-600_000, 0, 12_000, 60_000, 600_000]
    assert variants[0][0] == "sum(rate(m{}[5m] @ 60.000)) + n{} @ 60.000 offset 1m"
    # inside a subquery only the subquery gets the @; the default step is made explicit
    (expr, _), *_ = at_modifier_variants("max_over_time(m[5m:])", 0)
    assert expr == "max_over_time((m{})[5m:1m] @ 0.000)"
    assert at_modifier_variants("time() + m", 60_000) == []
