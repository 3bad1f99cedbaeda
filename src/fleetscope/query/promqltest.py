"""Runner for Prometheus' PromQL test scripts (the ``.test`` files of ``promql/testdata``).

A script is a list of commands, one per line (``#`` starts a comment line, and blank or comment
lines end a command's block):

- ``load <interval>`` followed by series lines ``metric{label="value"} <values>``: sample ``k``
  of a series is at ``k * interval`` from time 0. Values use the expanding notation: ``a+bxN``
  (``a-bxN``) is ``N + 1`` values from ``a`` in steps of ``b``, ``axN`` is ``a`` ``N + 1`` times,
  ``_`` is a missing sample, ``_xN`` ``N`` missing ones, ``stale`` a staleness marker, and
  ``Inf``/``NaN`` the special floats. A series defined twice in one ``load`` keeps the last line.
- ``clear`` drops everything loaded.
- ``eval instant at <duration> <expr>`` followed by the expected result: series lines with one
  value (``{}`` for no labels) or one scalar line. ``eval_fail`` expects an error;
  ``eval_ordered`` also checks the order of the result.

Each ``eval`` is one :class:`EvalCase`. :func:`run_case` loads the data the case sees into a fresh
:class:`~fleetscope.store.duckdb.DuckDBStore` (``:memory:``; shared by the cases that see the same
loads), evaluates with :class:`~fleetscope.query.engine.Evaluator` and compares as Prometheus
2.42's ``promql/test.go`` does: values equal within a relative error of 1e-6 (NaN equals NaN), the
same label sets; then the same query as a range query from ``t - 1m`` to ``t + 1m`` by ``1m``
must give the same result at ``t`` (ordering is not checked there). A mismatch raises
:class:`CaseFailure`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import promql_parser as pp

from fleetscope.query import QueryError, QueryResult
from fleetscope.query.engine import AT_MODIFIER_UNSAFE, Evaluator
from fleetscope.query.functions import parse_go_float
from fleetscope.query.value import Labels, format_labels, make_labels
from fleetscope.store import STALE_NAN, SampleBatch, StoreError
from fleetscope.store.duckdb import DuckDBStore

EPSILON = 1e-6  # relative error allowed for sample values (promql/test.go)
MIN_NORMAL = 2.2250738585072014e-308  # smallest positive normal float64
STALE = STALE_NAN

_EVAL = re.compile(r"^eval(?:_(fail|ordered))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
_LOAD = re.compile(r"^load\s+(.+?)$")
_REPEAT = re.compile(r"^(.+?)x(\d+)$")
_UNIT_MS = {"y": 31_536_000_000, "w": 604_800_000, "d": 86_400_000, "h": 3_600_000,
            "m": 60_000, "s": 1000, "ms": 1}  # fmt: skip
_DURATION = re.compile(
    r"^(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?"
    r"(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?$"
)


class CaseFailure(AssertionError):
    """An eval case whose result differs from the script's expectation."""


class ScriptError(ValueError):
    """A script line that is not valid ``.test`` syntax."""


@dataclass(frozen=True, eq=False)
class Load:
    """One ``load`` command: series and their ``(t_ms, value)`` samples."""

    line: int
    series: tuple[tuple[Labels, tuple[tuple[int, float], ...]], ...]


@dataclass(frozen=True)
class Expected:
    """One expected result line: a series (``labels``) or the scalar (``labels`` None)."""

    labels: Labels | None
    value: float
    position: int


@dataclass(frozen=True)
class EvalCase:
    """One ``eval`` command with the loads in effect when it runs."""

    script: str  # e.g. "prometheus/functions.test"
    line: int  # 1-based line of the eval command
    expr: str
    at_ms: int
    fail: bool
    ordered: bool
    expected: tuple[Expected, ...]
    loads: tuple[Load, ...]

    @property
    def id(self) -> str:
        return f"{self.script}:{self.line}"


# ----------------------------------------------------------------------------- parsing


def collect(directory: Path, prefix: str) -> list[EvalCase]:
    """The eval cases of every ``*.test`` file in ``directory``, named ``prefix/file:line``."""
    cases: list[EvalCase] = []
    for path in sorted(directory.glob("*.test")):
        cases.extend(parse_script(path.read_text(), f"{prefix}/{path.name}"))
    return cases


def parse_script(text: str, name: str) -> list[EvalCase]:
    """The eval cases of one script (``name`` identifies it in case ids)."""
    lines = [_clean(raw) for raw in text.split("\n")]
    cases: list[EvalCase] = []
    loads: list[Load] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        command = line.split(None, 1)[0].lower()
        if command == "clear":
            loads = []
            i += 1
        elif command == "load":
            load, i = _parse_load(lines, i, name)
            loads.append(load)
        elif command.startswith("eval"):
            case, i = _parse_eval(lines, i, name, tuple(loads))
            cases.append(case)
        else:
            raise ScriptError(f"{name}:{i + 1}: invalid command {line!r}")
    return cases


def _clean(raw: str) -> str:
    line = raw.strip()
    return "" if line.startswith("#") else line


def _block(lines: list[str], i: int) -> tuple[list[tuple[int, str]], int]:
    """The non-empty lines after command line ``i``, and the index after them."""
    out = []
    j = i + 1
    while j < len(lines) and lines[j]:
        out.append((j, lines[j]))
        j += 1
    return out, j


def _parse_load(lines: list[str], i: int, name: str) -> tuple[Load, int]:
    m = _LOAD.match(lines[i])
    if m is None:
        raise ScriptError(f"{name}:{i + 1}: invalid load command")
    interval_ms = _duration_ms(m.group(1), f"{name}:{i + 1}")
    defined: dict[Labels, tuple[tuple[int, float], ...]] = {}
    block, end = _block(lines, i)
    for j, text in block:
        labels, values = _parse_series(text, f"{name}:{j + 1}")
        samples = tuple((k * interval_ms, v) for k, v in enumerate(values) if v is not None)
        defined[labels] = samples  # a later definition replaces an earlier one
    return Load(i + 1, tuple(defined.items())), end


def _parse_eval(
    lines: list[str], i: int, name: str, loads: tuple[Load, ...]
) -> tuple[EvalCase, int]:
    where = f"{name}:{i + 1}"
    m = _EVAL.match(lines[i])
    if m is None:
        raise ScriptError(f"{where}: invalid evaluation command")
    mod, at, expr = m.group(1), m.group(2), m.group(3)
    at_ms = _duration_ms(at, where) if at else 0
    expected: list[Expected] = []
    block, end = _block(lines, i)
    for pos, (j, text) in enumerate(block, start=1):
        number = _parse_number(text)
        if number is not None:
            expected.append(Expected(None, number, pos))
            end = j + 1
            break
        labels, values = _parse_series(text, f"{name}:{j + 1}")
        if len(values) != 1 or values[0] is None:
            raise ScriptError(f"{name}:{j + 1}: expected exactly one value")
        expected.append(Expected(labels, values[0], pos))
    case = EvalCase(
        name, i + 1, expr, at_ms, mod == "fail", mod == "ordered", tuple(expected), loads
    )
    return case, end


def _duration_ms(text: str, where: str) -> int:
    """Prometheus' ``model.ParseDuration`` (``1h30m``, ``0``, ``500ms`` …) in milliseconds."""
    text = text.strip()
    m = _DURATION.match(text)
    if text == "0":
        return 0
    if m is None or not text:
        raise ScriptError(f"{where}: invalid duration {text!r}")
    return sum(int(g) * _UNIT_MS[u] for u, g in m.groupdict().items() if g is not None)


def _parse_number(text: str) -> float | None:
    """promql/test.go's ``parseNumber``: an integer (any base) or a Go float."""
    try:
        return float(int(text, 0))
    except ValueError:
        return parse_go_float(text)


def _parse_series(text: str, where: str) -> tuple[Labels, list[float | None]]:
    """A series description: labels and expanded values (None for a missing sample)."""
    metric, rest = _split_metric(text, where)
    labels = _parse_metric(metric, where)
    values: list[float | None] = []
    for token in rest.split():
        values.extend(_expand(token, where))
    return labels, values


def _split_metric(text: str, where: str) -> tuple[str, str]:
    brace = text.find("{")
    space = re.search(r"\s", text)
    if brace < 0 or (space is not None and space.start() < brace):
        parts = text.split(None, 1)
        return parts[0], parts[1] if len(parts) > 1 else ""
    quote: str | None = None
    k = brace + 1
    while k < len(text):
        ch = text[k]
        if quote:
            if ch == "\\":
                k += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch == "}":
            return text[: k + 1], text[k + 1 :]
        k += 1
    raise ScriptError(f"{where}: unclosed {{ in {text!r}")


def _parse_metric(metric: str, where: str) -> Labels:
    if metric.replace(" ", "") == "{}":
        return ()
    try:
        node = pp.parse(metric)
    except Exception as e:
        raise ScriptError(f"{where}: invalid series {metric!r}: {e}") from None
    if not isinstance(node, pp.VectorSelector):
        raise ScriptError(f"{where}: invalid series {metric!r}")
    pairs = {"__name__": node.name} if node.name else {}
    for m in node.matchers.matchers:
        pairs[m.name] = m.value
    return make_labels(pairs)


def _expand(token: str, where: str) -> list[float | None]:
    if token == "_":
        return [None]
    if token == "stale":
        return [STALE]
    m = _REPEAT.match(token)
    if m is None:
        return [_value(token, where)]
    head, times = m.group(1), int(m.group(2))
    if head == "_":
        return [None] * times
    split = next(
        (k for k in range(1, len(head)) if head[k] in "+-" and head[k - 1] not in "eE"), None
    )
    if split is None:
        return [_value(head, where)] * (times + 1)
    current = _value(head[:split], where)
    step = _value(head[split:], where)
    out: list[float | None] = [current]
    for _ in range(times):
        current += step  # sequential additions, as Prometheus' lexer does
        out.append(current)
    return out


def _value(token: str, where: str) -> float:
    value = parse_go_float(token)
    if value is None:
        raise ScriptError(f"{where}: invalid value {token!r}")
    return value


# ----------------------------------------------------------------------------- running


@functools.lru_cache(maxsize=8)
def _store(loads: tuple[Load, ...]) -> DuckDBStore:
    store = DuckDBStore(":memory:")
    for load in loads:
        rows = [
            (dict(labels), t_ms, value)
            for labels, samples in load.series
            for t_ms, value in samples
        ]
        if rows:
            store.append(SampleBatch.from_rows(rows))
    return store


def run_case(case: EvalCase, *, at_variants: bool = True) -> None:
    """Run one eval case; raise :class:`CaseFailure` when it does not hold.

    With ``at_variants`` the case is also run as Prometheus' test does with ``@ t`` added to
    its selectors and subqueries, at other evaluation times (:func:`at_modifier_variants`).
    """
    try:
        store = _store(case.loads)
    except StoreError as e:
        raise CaseFailure(f"{case.id}: loading the data failed: {e}") from None
    engine = Evaluator(store)
    runs = [(case.expr, case.at_ms)]
    if at_variants:
        runs += at_modifier_variants(case.expr, case.at_ms)
    for expr, t_ms in runs:
        _run_once(case, engine, expr, t_ms)


def _run_once(case: EvalCase, engine: Evaluator, expr: str, t_ms: int) -> None:
    where = f"{case.id}: {expr} at {t_ms}ms"
    try:
        result = engine.instant(expr, t_ms)
    except QueryError as e:
        if case.fail:
            return
        raise CaseFailure(f"{where}: {e.error_type}: {e.message}") from None
    if case.fail:
        raise CaseFailure(f"{where}: expected an error, got {_show(result)}")
    _compare(case, result, where)
    try:
        ranged = engine.range(expr, t_ms - 60_000, t_ms + 60_000, 60_000)
    except QueryError as e:
        raise CaseFailure(f"{where} in range mode: {e.error_type}: {e.message}") from None
    if case.ordered:
        return  # ordering is not defined for range queries
    at_t: list[tuple[dict[str, str], float]] = []
    for s in ranged.series:
        hits = np.flatnonzero(s.t_ms == t_ms)
        if len(hits):
            at_t.append((s.labels, float(s.values[hits[0]])))
    if result.result_type == "scalar":
        if not at_t:
            raise CaseFailure(f"{where} in range mode: no scalar")
        mode = QueryResult("scalar", scalar=(t_ms, at_t[0][1]))
    else:
        mode = _vector_result(at_t, t_ms)
    _compare(case, mode, f"{where} in range mode")


def _subquery_text(node: pp.SubqueryExpr, at: str) -> str:
    """PromQL of a subquery with an explicit step (the parser prints ``[5m:]`` as ``[5m]``)
    and ``at`` (``" @ <seconds>"``) appended; the default step is Prometheus' 1m."""
    step = node.step or timedelta(minutes=1)
    assert node.range is not None
    text = f"({node.expr})[{pp.display_duration(node.range)}:{pp.display_duration(step)}]"
    if node.offset:
        offset = node.offset // timedelta(milliseconds=1)
        text += f" offset {'-' if offset < 0 else ''}{abs(offset)}ms"
    if node.at is not None:
        text += " @ " + str(node).rsplit(" @ ", 1)[1].split(" offset ")[0]
    return text + at


def at_modifier_variants(expr: str, t_ms: int) -> list[tuple[str, int]]:
    """promql/test.go's ``atModifierTestCases``: ``expr`` with ``@ t`` on every selector and
    subquery that has none (not inside subqueries), to run at other times with the same
    expected result; none when ``expr`` uses a time-dependent function or ``t`` is negative."""
    try:
        tree = pp.parse(expr)
    except Exception:
        return []
    unsafe = False

    def find_unsafe(node: pp.Expr) -> None:
        nonlocal unsafe
        if isinstance(node, pp.Call) and node.func.name in AT_MODIFIER_UNSAFE:
            unsafe = True

    pp.walk(tree, pre_visit=find_unsafe)
    if unsafe or t_ms < 0:
        return []
    at = f" @ {t_ms / 1000:.3f}"
    depth = 0

    def enter(node: pp.Expr) -> None:
        nonlocal depth
        if isinstance(node, pp.SubqueryExpr):
            depth += 1

    def leave(node: pp.Expr) -> pp.Expr | None:
        nonlocal depth
        if isinstance(node, pp.SubqueryExpr):
            depth -= 1
            add = at if depth == 0 and node.at is None else ""
            if node.step is None or add:
                return pp.parse(_subquery_text(node, add))
        if depth == 0 and isinstance(node, pp.VectorSelector) and node.at is None:
            return pp.parse(str(node) + at)
        return None

    rewritten = str(pp.transform(tree, pre_visit=enter, post_visit=leave))
    times = [-10 * t_ms, 0, t_ms // 5, t_ms, 10 * t_ms] if t_ms else [-1000, 0, 1000]
    return [(rewritten, t) for t in times]


def _vector_result(points: Iterable[tuple[dict[str, str], float]], t_ms: int) -> QueryResult:
    from fleetscope.store import Series

    return QueryResult(
        "vector",
        [Series(lab, np.array([t_ms], np.int64), np.array([v], np.float64)) for lab, v in points],
    )


def _compare(case: EvalCase, result: QueryResult, where: str) -> None:
    ranged = where.endswith("range mode")
    if result.result_type == "scalar":
        assert result.scalar is not None
        want = [e for e in case.expected if e.labels is None]
        if not want:
            raise CaseFailure(f"{where}: got scalar {result.scalar[1]}, expected a vector")
        if not almost_equal(want[0].value, result.scalar[1]):
            raise CaseFailure(f"{where}: expected scalar {want[0].value}, got {result.scalar[1]}")
        return
    if result.result_type != "vector":
        raise CaseFailure(f"{where}: expected an instant vector, got a {result.result_type}")
    expected = {e.labels: e for e in case.expected if e.labels is not None}
    if len(expected) != len(case.expected):
        raise CaseFailure(f"{where}: got a vector, expected scalar {case.expected[0].value}")
    seen: set[Labels] = set()
    for pos, s in enumerate(result.series, start=1):
        labels = make_labels(s.labels)
        value = float(s.values[0])
        exp = expected.get(labels)
        if exp is None:
            raise CaseFailure(f"{where}: unexpected series {format_labels(labels)} {value}")
        if case.ordered and not ranged and exp.position != pos:
            raise CaseFailure(
                f"{where}: expected {format_labels(labels)} at position {exp.position}, "
                f"got it at {pos}"
            )
        if not almost_equal(exp.value, value):
            raise CaseFailure(
                f"{where}: expected {exp.value} for {format_labels(labels)}, got {value}"
            )
        seen.add(labels)
    missing = [format_labels(k) for k in expected if k not in seen]
    if missing:
        raise CaseFailure(f"{where}: expected series not in the result: {', '.join(missing)}; "
                          f"got {_show(result)}")  # fmt: skip


def _show(result: QueryResult) -> str:
    if result.result_type == "scalar" and result.scalar is not None:
        return f"scalar {result.scalar[1]}"
    shown = [f"{format_labels(make_labels(s.labels))} {list(s.values)}" for s in result.series]
    return f"{result.result_type} [{'; '.join(shown[:8])}{' …' if len(shown) > 8 else ''}]"


def almost_equal(a: float, b: float) -> bool:
    """promql/test.go's ``almostEqual``: NaN equals NaN; relative error below 1e-6."""
    if math.isnan(a) and math.isnan(b):
        return True
    if a == b:
        return True
    diff = abs(a - b)
    if a == 0 or b == 0 or diff < MIN_NORMAL:
        return diff < EPSILON * MIN_NORMAL
    return diff / (abs(a) + abs(b)) < EPSILON
