"""The embedded PromQL evaluator: :class:`Evaluator` answers the :class:`~fleetscope.query.Engine`
port from a :class:`~fleetscope.store.MetricStore`.

Queries are parsed by ``promql_parser`` and evaluated vectorised: every node of the syntax tree
is evaluated once over the whole step grid (one step for an instant query), producing the
values of :mod:`fleetscope.query.value` (``[series, steps]`` arrays). Selectors ask the store
for their series once per query, passing Prometheus' ``SelectHints`` (step, range, function) so
the store may send less; the evaluator keeps the semantics.

Semantics are Prometheus 2.42's: a 5-minute lookback window ``[t - 5m, t]`` closed at both
ends, staleness markers end a series, range windows ``[t - range, t]`` closed, ``offset`` and
``@`` (``start()``/``end()`` are the query's start and end), subqueries aligned to multiples of
their step, results of instant queries in evaluation order for ``sort``/``topk``… and sorted by
label set otherwise.

The file reads top-down: errors, the public :class:`Evaluator`, parsing, then the evaluation
with its one dispatch on node type (:meth:`_Evaluation.eval`) and a method per node kind.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn

import numpy as np
import promql_parser as pp

from fleetscope.query import MAX_POINTS_PER_SERIES, QueryError, QueryResult
from fleetscope.query.aggregate import Grouping, aggregate, sum_by
from fleetscope.query.binary import (
    MANY_TO_MANY,
    MANY_TO_ONE,
    ONE_TO_MANY,
    ONE_TO_ONE,
    SET_OPERATORS,
    Matching,
    binary,
)
from fleetscope.query.functions import (
    DATE_FUNCTIONS,
    MATH,
    clamp,
    date_function,
    date_part,
    histogram_quantile,
    label_join,
    label_replace,
    math_function,
    round_to,
    scalar_of,
    sort_by_value,
)
from fleetscope.query.goregex import translate
from fleetscope.query.pushdown import PUSHED_DOWN, over_time, plan
from fleetscope.query.rangefuncs import (
    RANGE_KERNELS,
    holt_winters,
    predict_linear,
    quantile_over_time,
)
from fleetscope.query.value import (
    F64,
    I64,
    NAME,
    Labels,
    Matrix,
    Scalar,
    String,
    Value,
    Vector,
    broadcast_steps,
    drop_name,
    make_labels,
    merge_same_labels,
    stale_mask,
)
from fleetscope.store import Matcher, MetricStore, SelectHints, Series, SeriesSet, StoreError

# ----------------------------------------------------------------------------- errors

SUPPORTED_AGGREGATIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "quantile", "topk", "bottomk",
     "count_values", "group"}
)  # fmt: skip
_MATRIX_FUNCTIONS = frozenset(
    {*RANGE_KERNELS, "quantile_over_time", "predict_linear", "holt_winters", "absent_over_time"}
)
MAX_SAMPLES = 50_000_000  # Prometheus' --query.max-samples: points one node may hold
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _bad_data(message: str) -> QueryError:
    return QueryError("bad_data", message)


def _unsupported(what: str) -> QueryError:
    return QueryError("bad_data", f"{what} is not supported by Fleetscope's embedded engine")


def _check_size(series: int, steps: int) -> None:
    if series * steps > MAX_SAMPLES:
        raise QueryError(
            "execution",
            "query processing would load too many samples into memory in query execution",
        )


# ----------------------------------------------------------------------------- public interface


class Evaluator:
    """:class:`~fleetscope.query.Engine` over a :class:`~fleetscope.store.MetricStore`.

    ``lookback_ms`` is Prometheus' ``--query.lookback-delta``; ``subquery_step_ms`` the step of
    subqueries that give none (Prometheus' default evaluation interval). Stateless between
    queries, so safe to share between threads when the store is.
    """

    def __init__(
        self, store: MetricStore, lookback_ms: int = 300_000, subquery_step_ms: int = 60_000
    ) -> None:
        self.store = store
        self.lookback_ms = lookback_ms
        self.subquery_step_ms = subquery_step_ms

    def instant(self, query: str, t_ms: int) -> QueryResult:
        expr = parse(query)
        run = _Evaluation(self, t_ms, t_ms)
        value = run.eval(expr, _Grid(np.array([t_ms], np.int64), 0))
        return _instant_result(value, t_ms)

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult:
        if step_ms <= 0:
            raise _bad_data(
                "zero or negative query resolution step widths are not accepted. "
                "Try a positive integer"
            )
        if end_ms < start_ms:
            raise _bad_data("end timestamp must not be before start time")
        if (end_ms - start_ms) // step_ms + 1 > MAX_POINTS_PER_SERIES:
            raise _bad_data(
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        expr = parse(query)
        times = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)
        value = _Evaluation(self, start_ms, end_ms).eval(expr, _Grid(times, step_ms))
        return _range_result(value, times)

    def series(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[dict[str, str]]:
        if not match:
            raise _bad_data("no match[] parameter provided")
        found: dict[Labels, dict[str, str]] = {}
        for text in match:
            for labels in self._store_series(selector_matchers_of(text), start_ms, end_ms):
                found.setdefault(make_labels(labels), labels)
        return [found[k] for k in sorted(found)]

    def label_names(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        if not match and start_ms is None and end_ms is None:
            return list(self.store.label_names())
        sets = self.series(match, start_ms, end_ms) if match else self._all(start_ms, end_ms)
        return sorted({name for labels in sets for name in labels})

    def label_values(
        self, name: str, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        if not match and start_ms is None and end_ms is None:
            return list(self.store.label_values(name))
        sets = self.series(match, start_ms, end_ms) if match else self._all(start_ms, end_ms)
        return sorted({labels[name] for labels in sets if labels.get(name)})

    def _all(self, start_ms: int | None, end_ms: int | None) -> list[dict[str, str]]:
        return self._store_series([], start_ms, end_ms)

    def _store_series(
        self, matchers: list[Matcher], start_ms: int | None, end_ms: int | None
    ) -> list[dict[str, str]]:
        try:
            return self.store.series(matchers, start_ms, end_ms)
        except StoreError as e:
            raise QueryError("execution", str(e)) from None


# ----------------------------------------------------------------------------- parsing


def _register_functions() -> None:
    """Teach the parser Prometheus 2.42's ``holt_winters`` (renamed in later versions)."""
    with contextlib.suppress(ValueError):  # already known
        pp.register_extra_functions(
            [
                pp.Function(
                    "holt_winters",
                    [pp.ValueType.Matrix, pp.ValueType.Scalar, pp.ValueType.Scalar],
                    pp.ValueType.Vector,
                )
            ]
        )


_register_functions()


def parse(query: str) -> Any:
    """The syntax tree of ``query``; a parse error is ``bad_data`` with the parser's message."""
    text = _requote_raw_strings(query)
    try:
        return pp.parse(text)
    except Exception as e:
        error = e
    if "illegal regex" in str(error) and "\\\\Q" in text:
        with contextlib.suppress(Exception):
            return pp.parse(_QUOTED_REGEX.sub(_escape_quoted, text))
    raise _bad_data(str(error)) from None


# RE2's \Q…\E (a literal) as written inside a PromQL string: the parser's regex check lacks it.
_QUOTED_REGEX = re.compile(r"\\\\Q([^\"'`]*?)\\\\E")


def _escape_quoted(m: re.Match[str]) -> str:
    """A ``\\Q…\\E`` literal as escaped regex text, in PromQL string syntax."""
    literal = m.group(1).replace("\\\\", "\\")
    return re.escape(literal).replace("\\", "\\\\")


def _requote_raw_strings(query: str) -> str:
    """PromQL's raw strings (```…```, no escapes) as double-quoted strings.

    The parser reads backslash escapes inside raw strings (``\\d`` is "unknown escape
    sequence"); in PromQL a raw string holds every character as written.
    """
    if "`" not in query:
        return query
    out: list[str] = []
    i = 0
    while i < len(query):
        ch = query[i]
        if ch in "\"'":  # copy a quoted string, escapes and all
            j = i + 1
            while j < len(query) and query[j] != ch:
                j += 2 if query[j] == "\\" else 1
            out.append(query[i : j + 1])
            i = j + 1
        elif ch == "#":  # a comment runs to the end of the line
            j = query.find("\n", i)
            j = len(query) if j < 0 else j
            out.append(query[i:j])
            i = j
        elif ch == "`":
            j = query.find("`", i + 1)
            if j < 0:
                out.append(query[i:])
                break
            body = query[i + 1 : j].replace("\\", "\\\\").replace('"', '\\"')
            out.append('"' + body.replace("\n", "\\n") + '"')
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def selector_matchers_of(text: str) -> list[Matcher]:
    """Store matchers of a series selector such as ``up{job="x"}`` (a ``match[]`` parameter)."""
    expr = parse(text)
    if not isinstance(expr, pp.VectorSelector):
        raise _bad_data(f"invalid parameter 'match[]': {text!r} is not a series selector")
    return selector_matchers(expr)


_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def _enum_name(member: Any) -> str:
    """The member name of one of the parser's enums (``MatchOp.Re`` → ``"Re"``)."""
    return str(member).rsplit(".", 1)[-1]


def selector_matchers(vs: Any) -> list[Matcher]:
    """The store matchers of a vector selector (regexes rewritten from RE2 to Python)."""
    if vs.matchers.or_matchers:
        raise _unsupported("'or' inside a selector")
    out: list[Matcher] = []
    if vs.name:
        out.append(Matcher(NAME, "=", vs.name))
    for m in vs.matchers.matchers:
        op = _OPS[_enum_name(m.op)]
        value = m.value
        if op in ("=~", "!~"):
            try:
                value = translate(value)
            except ValueError as e:
                raise _bad_data(f"invalid regular expression {value!r}: {e}") from None
        out.append(Matcher(m.name, op, value))  # type: ignore[arg-type]
    return out


def _absent_labels(vs: Any) -> Labels:
    """Prometheus' ``createLabelsForAbsentFunction``: labels matched exactly once by ``=``."""
    found: dict[str, str] = {}
    dropped: set[str] = set()
    for m in vs.matchers.matchers:
        if m.name == NAME:
            continue
        if _OPS[_enum_name(m.op)] == "=" and m.name not in found:
            found[m.name] = m.value
        else:
            dropped.add(m.name)
    return make_labels({k: v for k, v in found.items() if k not in dropped})


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Grid:
    """Evaluation times (ms) of a node, and their step (0 for a single time)."""

    times: I64
    step_ms: int

    @property
    def steps(self) -> int:
        return len(self.times)


@dataclass
class _Samples:
    """Series from the store, flattened: series ``i`` is ``t[bounds[i]:bounds[i + 1]]``."""

    labels: list[Labels]
    t: I64
    v: F64
    bounds: I64


class _Evaluation:
    """One query's evaluation; ``start_ms``/``end_ms`` resolve ``@ start()``/``@ end()``."""

    def __init__(self, evaluator: Evaluator, start_ms: int, end_ms: int) -> None:
        self.store = evaluator.store
        self.lookback_ms = evaluator.lookback_ms
        self.subquery_step_ms = evaluator.subquery_step_ms
        self.start_ms = start_ms
        self.end_ms = end_ms
        # Inside a subquery with @, Prometheus loads selectors' data only up to that time (less
        # offsets); that matters where its windows slide past it (see _ref_times).
        self.data_end_ms: int | None = None
        # What the store returned, per (matchers, mint, maxt, hints): a selector that appears
        # twice with the same grid (e.g. in both halves of a ratio) is read once per query.
        self._selected: dict[tuple[Any, ...], _Samples] = {}

    # -- the dispatch ------------------------------------------------------------------

    def eval(self, node: Any, grid: _Grid) -> Value:
        """Evaluate ``node`` at every time of ``grid``."""
        if (
            grid.steps > 1
            and isinstance(node, pp.Call | pp.AggregateExpr | pp.BinaryExpr | pp.UnaryExpr)
            and step_invariant(node)
        ):
            # Prometheus evaluates a step-invariant expression once, at the first step.
            return _repeat(self.eval(node, _Grid(grid.times[:1], 0)), grid.steps)
        if isinstance(node, pp.NumberLiteral):
            return Scalar(np.full(grid.steps, node.val, np.float64))
        if isinstance(node, pp.StringLiteral):
            return String(node.val)
        if isinstance(node, pp.ParenExpr):
            return self.eval(node.expr, grid)
        if isinstance(node, pp.UnaryExpr):
            return self._negate(self.eval(node.expr, grid))
        if isinstance(node, pp.VectorSelector):
            return self._vector_selector(node, grid, times=False)[0]
        if isinstance(node, pp.MatrixSelector):
            return self._matrix_selector(node, grid, "")
        if isinstance(node, pp.SubqueryExpr):
            return self._subquery(node, grid)
        if isinstance(node, pp.Call):
            return self._call(node, grid)
        if isinstance(node, pp.AggregateExpr):
            summed = self._summed_over_time(node, grid)
            if summed is not None:
                return summed
            return self._aggregate(node, grid)
        if isinstance(node, pp.BinaryExpr):
            return self._binary(node, grid)
        raise _unsupported(f"the expression {type(node).__name__}")

    def _vector(self, node: Any, grid: _Grid) -> Vector:
        value = self.eval(node, grid)
        if not isinstance(value, Vector):
            raise _bad_data(f"expected an instant vector, got {type(value).__name__.lower()}")
        return value

    def _scalar(self, node: Any, grid: _Grid) -> F64:
        value = self.eval(node, grid)
        if not isinstance(value, Scalar):
            raise _bad_data(f"expected a scalar, got {type(value).__name__.lower()}")
        return value.values

    def _string(self, node: Any, grid: _Grid) -> str:
        value = self.eval(node, grid)
        if not isinstance(value, String):
            raise _bad_data(f"expected a string, got {type(value).__name__.lower()}")
        return value.text

    # -- modifiers ---------------------------------------------------------------------

    def _at_ms(self, node: Any) -> int | None:
        """The ``@`` time of a selector or subquery (None without ``@``)."""
        try:
            at = node.at
            if at is None:
                return None
            if at.type == pp.AtModifierType.Start:
                return self.start_ms
            if at.type == pp.AtModifierType.End:
                return self.end_ms
            when = at.at
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # the parser's bindings panic on times before 1970
            raise _unsupported("an @ time before 1970") from None
        return int((when - _EPOCH) // _MS)

    @staticmethod
    def _ms(delta: timedelta | None) -> int:
        return 0 if delta is None else int(delta // _MS)

    def _ref_times(self, node: Any, grid: _Grid, *, sliding: bool = False) -> tuple[I64, bool]:
        """Times a selector or subquery reads at (``@`` and ``offset`` applied), and whether
        they are one fixed time (``@``).

        ``sliding``: a range argument with ``@`` of a call Prometheus does not evaluate once
        (``predict_linear``, or one with a varying argument) moves with the steps in Prometheus
        2.42, ``@`` giving the time of the first step only.
        """
        at = self._at_ms(node)
        offset = self._ms(node.offset)
        if at is not None and sliding:
            return at - offset + (grid.times - grid.times[0]), False
        if at is not None:
            return np.array([at - offset], np.int64), True
        return grid.times - offset, False

    # -- selectors ---------------------------------------------------------------------

    def _data_end(self, vs: Any, maxt_ms: int) -> int:
        """``maxt_ms``, capped inside a subquery with ``@`` (unless the selector has its own)."""
        if self.data_end_ms is None or self._at_ms(vs) is not None:
            return maxt_ms
        return min(maxt_ms, self.data_end_ms - self._ms(vs.offset))

    def _select(self, vs: Any, mint_ms: int, maxt_ms: int, hints: SelectHints) -> _Samples:
        """The selector's series in ``[mint_ms, maxt_ms]``, flattened (shared, never modified)."""
        matchers = selector_matchers(vs)
        key = (tuple(matchers), mint_ms, maxt_ms, hints)
        samples = self._selected.get(key)
        if samples is None:
            select_set = getattr(self.store, "select_set", None)  # SupportsSeriesSet
            try:
                if select_set is not None:
                    found: SeriesSet = select_set(matchers, mint_ms, maxt_ms, hints)
                    samples = _Samples(found.pairs, found.t_ms, found.values, found.bounds)
                else:
                    samples = _flatten(self.store.select(matchers, mint_ms, maxt_ms, hints))
            except StoreError as e:
                raise QueryError("execution", str(e)) from None
            self._selected[key] = samples
            for array in (samples.t, samples.v, samples.bounds):
                array.flags.writeable = False  # shared by every reader of the selector
        return samples

    def _vector_selector(
        self, vs: Any, grid: _Grid, *, at_ignores_offset: bool = False, times: bool = True
    ) -> tuple[Vector, I64]:
        """An instant vector selector and the timestamps of the samples it read (an empty
        array unless ``times``: on many series and steps they would be a large array)."""
        ref, fixed = self._ref_times(vs, grid)
        if fixed and at_ignores_offset:
            ref = np.array([self._at_ms(vs)], np.int64)
        hints = SelectHints(
            start_ms=int(ref[0]),
            end_ms=int(ref[-1]),
            step_ms=0 if fixed else grid.step_ms,
            lookback_ms=self.lookback_ms,
        )
        maxt = self._data_end(vs, int(ref.max()))
        samples = self._select(vs, int(ref.min()) - self.lookback_ms, maxt, hints)
        n = len(samples.labels)
        _check_size(n, grid.steps)
        # Only (series, step) pairs within the lookback of one of the series' samples are read.
        rows, cols = _active_pairs(*_active_steps(samples, ref, self.lookback_ms))
        search = _FlatSearch(samples, ref, self.lookback_ms)
        idx = search.find(rows, ref[cols], side="right") - 1
        found = idx >= samples.bounds[rows]
        safe = np.where(found, idx, 0)
        pair_t, pair_v = samples.t[safe], samples.v[safe]
        ok = found & (pair_t >= ref[cols] - self.lookback_ms) & ~stale_mask(pair_v)
        present = np.zeros((n, len(ref)), np.bool_)
        v = np.zeros((n, len(ref)))  # not NaN-filled: lazily zeroed pages are free
        present[rows, cols] = ok
        v[rows[ok], cols[ok]] = pair_v[ok]
        vec = Vector(samples.labels, v, present, known_cells=(rows[ok], cols[ok]))
        t = np.zeros((n, len(ref)) if times else (0, 0), np.int64)
        if times:
            t[rows[ok], cols[ok]] = pair_t[ok]
        if fixed:
            t = np.repeat(t, grid.steps, axis=1) if times else t
            vec = broadcast_steps(vec, grid.steps)
        return vec, t

    def _matrix_selector(self, ms: Any, grid: _Grid, func: str, *, sliding: bool = False) -> Matrix:
        vs = ms.vector_selector
        range_ms = self._ms(ms.range)
        ref, fixed = self._ref_times(vs, grid, sliding=sliding)
        hints = SelectHints(
            start_ms=int(ref[0]),
            end_ms=int(ref[-1]),
            step_ms=0 if fixed else grid.step_ms,
            lookback_ms=self.lookback_ms,
            func=func,
            range_ms=range_ms,
        )
        mint, maxt = int(ref.min()) - range_ms, self._data_end(vs, int(ref.max()))
        if sliding and fixed is False and self._at_ms(vs) is not None:
            # Prometheus loads the data of the @ time only; the windows slide over it.
            maxt = min(maxt, int(ref[0]))
            mint = maxt - range_ms
        samples = self._select(vs, mint, maxt, hints)
        keep = ~stale_mask(samples.v)
        if not keep.all():
            kept_before = np.concatenate(([0], np.cumsum(keep))).astype(np.int64)
            samples = _Samples(
                samples.labels, samples.t[keep], samples.v[keep], kept_before[samples.bounds]
            )
        return _windows(samples, ref, range_ms, grid.steps, fixed, _absent_labels(vs))

    def _subquery(self, sq: Any, grid: _Grid, *, sliding: bool = False) -> Matrix:
        ref, fixed = self._ref_times(sq, grid, sliding=sliding)
        range_ms = self._ms(sq.range)
        step = self._ms(sq.step) or self.subquery_step_ms
        first = int(ref.min()) - range_ms
        start = -(-first // step) * step  # the first multiple of the step in the range
        _check_size(1, (int(ref.max()) - start) // step + 1)
        inner = _Grid(np.arange(start, int(ref.max()) + 1, step, dtype=np.int64), step)
        outer_end = self.data_end_ms
        at = self._at_ms(sq)
        if at is not None:
            self.data_end_ms = at - self._ms(sq.offset)
        elif outer_end is not None:
            self.data_end_ms = outer_end - self._ms(sq.offset)
        try:
            value = self.eval(sq.expr, inner) if inner.steps else Vector.empty(0)
        finally:
            self.data_end_ms = outer_end
        if isinstance(value, Scalar):
            value = Vector([()], value.values[None, :], np.ones((1, inner.steps), np.bool_))
        if not isinstance(value, Vector):
            raise _bad_data("subqueries need an instant vector or a scalar expression")
        rows, cols = value.cells()  # row-major: each series' points in time order
        counts = np.bincount(rows, minlength=len(value.labels))
        keep = np.flatnonzero(counts)
        samples = _Samples(
            [value.labels[i] for i in keep],
            inner.times[cols],
            value.values[rows, cols],
            np.concatenate(([0], np.cumsum(counts[keep]))).astype(np.int64),
        )
        return _windows(samples, ref, range_ms, grid.steps, fixed, ())

    def _range_argument(self, node: Any, grid: _Grid, func: str, *, sliding: bool) -> Matrix:
        while isinstance(node, pp.ParenExpr):
            node = node.expr
        if isinstance(node, pp.MatrixSelector):
            return self._matrix_selector(node, grid, func, sliding=sliding)
        if isinstance(node, pp.SubqueryExpr):
            return self._subquery(node, grid, sliding=sliding)
        raise _bad_data(f"expected a range vector in call to function {func!r}")

    # -- operators ---------------------------------------------------------------------

    def _negate(self, value: Value) -> Value:
        if isinstance(value, Scalar):
            return Scalar(-value.values)
        if isinstance(value, Vector):
            out = Vector([drop_name(lab) for lab in value.labels], -value.values, value.present)
            return merge_same_labels(_nonempty(out), whole=True)
        raise _bad_data("unary minus needs a scalar or an instant vector")

    def _binary(self, node: Any, grid: _Grid) -> Value:
        op = str(node.op)
        lhs = self.eval(node.lhs, grid)
        rhs = self.eval(node.rhs, grid)
        return binary(op, lhs, rhs, _matching(op, node.modifier))

    def _aggregate(self, node: Any, grid: _Grid) -> Vector:
        op = str(node.op)
        if op not in SUPPORTED_AGGREGATIONS:
            raise _unsupported(f"the aggregation {op}()")
        vec = self._vector(node.expr, grid)
        param = None if node.param is None else self.eval(node.param, grid)
        if param is not None and not isinstance(param, Scalar | String):
            raise _bad_data(f"invalid parameter of {op}()")
        mod = node.modifier
        without = mod is not None and mod.type == pp.AggModifierType.Without
        grouping = Grouping(list(mod.labels) if mod is not None else [], without=without)
        return aggregate(op, vec, grouping, param)

    def _summed_over_time(self, node: Any, grid: _Grid) -> Vector | None:
        """``sum [by (…)] (count_over_time|sum_over_time(m[r]))`` of one metric, grouped
        straight from the store's buckets (:func:`sum_by`), or ``None``: evaluate as usual."""
        mod = node.modifier
        if str(node.op) != "sum" or node.param is not None:
            return None
        if mod is not None and mod.type == pp.AggModifierType.Without:
            return None
        call = node.expr
        while isinstance(call, pp.ParenExpr):
            call = call.expr
        if not isinstance(call, pp.Call) or call.func.name not in _SUMMABLE or not call.args:
            return None
        arg = call.args[0]
        while isinstance(arg, pp.ParenExpr):
            arg = arg.expr
        if not isinstance(arg, pp.MatrixSelector):
            return None
        matchers = selector_matchers(arg.vector_selector)
        if not any(m.name == "__name__" and m.op == "=" for m in matchers):
            return None  # one metric: no two series share a label set once the name is gone
        names = list(mod.labels) if mod is not None else []
        return self._pushed_down(
            call.func.name, arg, grid, sliding=not step_invariant(call), sum_by_names=names
        )

    # -- functions ---------------------------------------------------------------------

    def _call(self, node: Any, grid: _Grid) -> Value:
        name = node.func.name
        args = list(node.args)
        if name in _MATRIX_FUNCTIONS:
            return self._range_function(name, node, grid)
        if name == "time":
            return Scalar(grid.times / 1000)
        if name == "pi":
            return Scalar(np.full(grid.steps, math.pi))
        if name == "vector":
            values = self._scalar(args[0], grid)
            return Vector([()], values[None, :].copy(), np.ones((1, grid.steps), np.bool_))
        if name in DATE_FUNCTIONS and not args:
            values = date_part(name, grid.times / 1000)
            return Vector([()], values[None, :], np.ones((1, grid.steps), np.bool_))
        if name == "timestamp":
            return self._timestamp(args[0], grid)
        if name == "absent":
            vec = self._vector(args[0], grid)
            labels = _absent_labels(args[0]) if isinstance(args[0], pp.VectorSelector) else ()
            missing = np.asarray(~vec.present.any(axis=0))
            return _nonempty(Vector([labels], np.ones((1, grid.steps)), missing[None, :]))
        if name == "histogram_quantile":
            return histogram_quantile(self._scalar(args[0], grid), self._vector(args[1], grid))
        if name not in _INSTANT_FUNCTIONS:
            raise _unsupported(f"the function {name}()")
        vec = self._vector(args[0], grid)
        if name in MATH:
            return math_function(name, vec)
        if name in DATE_FUNCTIONS:
            return date_function(name, vec)
        if name == "clamp":
            return clamp(vec, self._scalar(args[1], grid), self._scalar(args[2], grid))
        if name == "clamp_min":
            return clamp(vec, self._scalar(args[1], grid), None)
        if name == "clamp_max":
            return clamp(vec, None, self._scalar(args[1], grid))
        if name == "round":
            nearest = self._scalar(args[1], grid) if len(args) > 1 else np.ones(grid.steps)
            return round_to(vec, nearest)
        if name == "scalar":
            return scalar_of(vec)
        if name in ("sort", "sort_desc"):
            return sort_by_value(vec, descending=name == "sort_desc")
        if name == "label_replace":
            dst, repl, src, regex = (self._string(a, grid) for a in args[1:5])
            return label_replace(vec, dst, repl, src, regex)
        if name == "label_join":
            dst, sep, *sources = (self._string(a, grid) for a in args[1:])
            return label_join(vec, dst, sep, sources)
        raise _unsupported(f"the function {name}()")

    def _timestamp(self, arg: Any, grid: _Grid) -> Vector:
        """``timestamp(v)``: a selector's sample times, else the evaluation times."""
        inner = arg
        while isinstance(inner, pp.ParenExpr):
            inner = inner.expr
        if isinstance(inner, pp.VectorSelector):
            # Prometheus 2.42 reads a selector with @ at exactly that time (offset ignored).
            vec, times = self._vector_selector(inner, grid, at_ignores_offset=True)
            values = times / 1000
        else:
            vec = self._vector(arg, grid)
            values = np.broadcast_to(grid.times / 1000, vec.values.shape)
        out = Vector([drop_name(lab) for lab in vec.labels], values.astype(np.float64), vec.present)
        return merge_same_labels(out)

    def _range_function(self, name: str, call: Any, grid: _Grid) -> Vector:
        args = list(call.args)
        arg = args[1 if name == "quantile_over_time" else 0]
        if name in PUSHED_DOWN:
            pushed = self._pushed_down(name, arg, grid, sliding=not step_invariant(call))
            if pushed is not None:
                return pushed
        m = self._range_argument(arg, grid, name, sliding=not step_invariant(call))
        if name == "absent_over_time":
            missing = np.asarray(~(m.counts > 0).any(axis=0))
            out = Vector([m.absent_labels], np.ones((1, grid.steps)), missing[None, :])
            return _nonempty(out)
        if name == "quantile_over_time":
            values, present = quantile_over_time(m, self._scalar(args[0], grid))
        elif name == "predict_linear":
            values, present = predict_linear(m, self._scalar(args[1], grid), grid.times)
        elif name == "holt_winters":
            sf, tf = self._scalar(args[1], grid), self._scalar(args[2], grid)
            values, present = holt_winters(m, sf, tf)
        else:
            values, present = RANGE_KERNELS[name](m)
        labels = m.labels if name == "last_over_time" else [drop_name(lab) for lab in m.labels]
        out = _nonempty(Vector(labels, np.where(present, values, np.nan), present))
        return merge_same_labels(out, whole=True)

    def _pushed_down(
        self,
        name: str,
        arg: Any,
        grid: _Grid,
        *,
        sliding: bool,
        sum_by_names: list[str] | None = None,
    ) -> Vector | None:
        """``name(selector[range])`` from the store's per-bucket aggregates (query/pushdown.py),
        or ``None`` when the store cannot or the samples must be read. With ``sum_by_names``,
        its ``sum by (…)`` (:meth:`_summed_over_time`)."""
        select_buckets = getattr(self.store, "select_buckets", None)
        while isinstance(arg, pp.ParenExpr):
            arg = arg.expr
        if select_buckets is None or not isinstance(arg, pp.MatrixSelector):
            return None
        vs = arg.vector_selector
        ref, fixed = self._ref_times(vs, grid, sliding=sliding)
        if sliding and not fixed and self._at_ms(vs) is not None:
            return None  # windows sliding over the data of the @ time only
        if self._data_end(vs, int(ref.max())) < int(ref.max()):
            return None  # inside a subquery with @: the data ends before some windows do
        layout = plan(ref, self._ms(arg.range))
        if layout is None:
            return None
        _check_size(1, grid.steps)
        try:
            found = over_time(self.store, selector_matchers(vs), name, layout)  # type: ignore[arg-type]
        except StoreError as e:
            raise QueryError("execution", str(e)) from None
        if found is None:
            return None
        found_labels, values, present = found
        _check_size(len(found_labels), grid.steps)
        if sum_by_names is not None:
            summed = sum_by(found_labels, values, present, sum_by_names)
            return broadcast_steps(summed, grid.steps) if fixed else summed
        labels = [make_labels(lab) for lab in found_labels]
        if name != "last_over_time":
            labels = [drop_name(lab) for lab in labels]
        vec = Vector(labels, values, present)
        if fixed:
            vec = broadcast_steps(vec, grid.steps)
        return merge_same_labels(_nonempty(vec), whole=True)


_SUMMABLE = frozenset({"count_over_time", "sum_over_time"})  # sum by (…) of them: bucket sums
_INSTANT_FUNCTIONS = frozenset(
    {*MATH, *DATE_FUNCTIONS, "clamp", "clamp_min", "clamp_max", "round", "scalar", "sort",
     "sort_desc", "label_replace", "label_join", "histogram_quantile"}
)  # fmt: skip


# Functions whose value depends on the evaluation time even when their arguments do not.
AT_MODIFIER_UNSAFE = frozenset(
    {"days_in_month", "day_of_month", "day_of_week", "day_of_year", "hour", "minute", "month",
     "year", "predict_linear", "time", "timestamp"}
)  # fmt: skip


def step_invariant(node: Any) -> bool:
    """Whether Prometheus 2.42 evaluates ``node`` once for all steps (its ``PreprocessExpr``):
    selectors and subqueries with ``@``, literals, and what is built only from those (an
    aggregation's parameter is not looked at, calls of time-dependent functions never are)."""
    if isinstance(node, pp.NumberLiteral | pp.StringLiteral):
        return True
    if isinstance(node, pp.VectorSelector | pp.SubqueryExpr):
        return _has_at(node)
    if isinstance(node, pp.MatrixSelector):
        return _has_at(node.vector_selector)
    if isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.AggregateExpr):
        return step_invariant(node.expr)
    if isinstance(node, pp.BinaryExpr):
        return step_invariant(node.lhs) and step_invariant(node.rhs)
    if isinstance(node, pp.Call):
        return node.func.name not in AT_MODIFIER_UNSAFE and all(
            step_invariant(a) for a in node.args
        )
    return False


def _has_at(node: Any) -> bool:
    try:
        return node.at is not None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # a time before 1970 (the bindings panic); refused later
        return True


def _repeat(value: Value, steps: int) -> Value:
    """A value computed for one step, for ``steps`` steps."""
    if isinstance(value, Vector):
        return broadcast_steps(value, steps)
    if isinstance(value, Scalar):
        return Scalar(np.repeat(value.values, steps))
    return value


def _matching(op: str, mod: Any) -> Matching:
    if mod is None:
        return Matching(card=MANY_TO_MANY if op in SET_OPERATORS else ONE_TO_ONE)
    card = {
        "OneToOne": ONE_TO_ONE,
        "ManyToOne": MANY_TO_ONE,
        "OneToMany": ONE_TO_MANY,
        "ManyToMany": MANY_TO_MANY,
    }[_enum_name(mod.card)]
    on = mod.matching is not None and mod.matching.type == pp.LabelModifierType.Include
    names = tuple(mod.matching.labels) if mod.matching is not None else ()
    return Matching(card, on, names, tuple(mod.group_labels or ()), bool(mod.return_bool))


# ----------------------------------------------------------------------------- helpers


def _flatten(found: list[Series]) -> _Samples:
    labels = [make_labels(s.labels) if s.pairs is None else s.pairs for s in found]
    sizes = np.array([len(s.t_ms) for s in found], np.int64)
    return _Samples(
        labels,
        np.concatenate([s.t_ms for s in found]).astype(np.int64)
        if found
        else np.empty(0, np.int64),
        np.concatenate([s.values for s in found]).astype(np.float64)
        if found
        else np.empty(0, np.float64),
        np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
    )


def _windows(
    samples: _Samples, ref: I64, range_ms: int, steps: int, fixed: bool, absent: Labels
) -> Matrix:
    """The range vector of ``samples`` with windows ``[ref - range_ms, ref]`` per step."""
    n = len(samples.labels)
    _check_size(n, steps)
    lo = np.repeat(samples.bounds[:-1, None], len(ref), axis=1)  # empty windows …
    hi = lo.copy()
    # … except where a window can reach one of the series' samples
    rows, cols = _active_pairs(*_active_steps(samples, ref, range_ms))
    search = _FlatSearch(samples, ref, range_ms)
    lo[rows, cols] = search.find(rows, ref[cols] - range_ms, side="left")
    hi[rows, cols] = search.find(rows, ref[cols], side="right")
    if fixed:
        lo, hi = np.repeat(lo, steps, axis=1), np.repeat(hi, steps, axis=1)
        ref = np.repeat(ref, steps)
    return Matrix(
        samples.labels, samples.t, samples.v, samples.bounds, lo, hi, ref, range_ms, absent
    )


def _active_steps(samples: _Samples, ref: I64, reach_ms: int) -> tuple[I64, I64]:
    """Per series, the steps ``k0 <= k < k1`` whose window ``[ref - reach_ms, ref]`` can hold
    one of its samples (``ref`` ascending); short-lived series skip most steps."""
    sizes = np.diff(samples.bounds)
    if len(samples.t) == 0:
        return np.zeros(len(sizes), np.int64), np.zeros(len(sizes), np.int64)
    starts = samples.bounds[:-1]
    first = samples.t[np.minimum(starts, max(len(samples.t) - 1, 0))]
    last = samples.t[np.maximum(samples.bounds[1:] - 1, 0)]
    k0 = np.searchsorted(ref, first, side="left")
    k1 = np.searchsorted(ref, last + reach_ms, side="right")
    return k0.astype(np.int64), np.where(sizes > 0, k1, k0).astype(np.int64)


def _active_pairs(k0: I64, k1: I64) -> tuple[I64, I64]:
    """All ``(row, step)`` with ``k0[row] <= step < k1[row]``, as two flat arrays."""
    spans = np.maximum(k1 - k0, 0)
    rows = np.repeat(np.arange(len(spans), dtype=np.int64), spans)
    first = np.cumsum(spans) - spans  # position of each row's first pair
    cols = np.arange(int(spans.sum()), dtype=np.int64) - np.repeat(first - k0, spans)
    return rows, cols


class _FlatSearch:
    """``searchsorted`` within each series' run of the flat sample times, for many
    ``(series, time)`` queries at once: series ``i``'s times are shifted into a band of their
    own (``i * span``), so one sorted array serves every series."""

    def __init__(self, samples: _Samples, ref: I64, reach_ms: int) -> None:
        t = samples.t
        lows = [int(ref.min()) - reach_ms - 1] + ([int(t.min())] if len(t) else [])
        highs = [int(ref.max()) + 1] + ([int(t.max())] if len(t) else [])
        self.base = min(lows)
        self.span = max(highs) - self.base + 2
        sizes = np.diff(samples.bounds)
        if len(sizes) * self.span >= 2**62:
            raise QueryError("execution", "the query's time range is too long")
        band = np.repeat(np.arange(len(sizes), dtype=np.int64) * self.span, sizes)
        self.keys = band + (t - self.base)
        self.bounds = samples.bounds

    def find(self, rows: I64, times: I64, side: Literal["left", "right"]) -> I64:
        """Flat index where ``times[j]`` would go among series ``rows[j]``'s samples."""
        queries = rows * self.span + (times - self.base)
        return np.asarray(np.searchsorted(self.keys, queries, side=side), np.int64)


def _nonempty(vec: Vector) -> Vector:
    """``vec`` without the series that have no sample at any step."""
    keep = np.flatnonzero(vec.present.any(axis=1))
    if len(keep) == len(vec.labels):
        return vec
    out = vec.take(keep)
    out.ordered = vec.ordered
    return out


def _fail_type(kind: str) -> NoReturn:
    raise _bad_data(
        f'invalid expression type "{kind}" for range query, must be Scalar or instant Vector'
    )


def _instant_result(value: Value, t_ms: int) -> QueryResult:
    if isinstance(value, Scalar):
        return QueryResult("scalar", scalar=(t_ms, float(value.values[0])))
    if isinstance(value, String):
        return QueryResult("string", string=(t_ms, value.text))
    if isinstance(value, Matrix):
        out = []
        for i, lab in enumerate(value.labels):
            a, b = int(value.lo[i, 0]), int(value.hi[i, 0])
            if b > a:
                out.append(Series(dict(lab), value.t[a:b].copy(), value.v[a:b].copy()))
        out.sort(key=lambda s: sorted(s.labels.items()))
        return QueryResult("matrix", out)
    rows = [i for i in range(len(value.labels)) if value.present[i, 0]]
    if not value.ordered:
        rows.sort(key=lambda i: value.labels[i])
    series = [
        Series(
            dict(value.labels[i]),
            np.array([t_ms], np.int64),
            np.array([value.values[i, 0]], np.float64),
        )
        for i in rows
    ]
    return QueryResult("vector", series)


def _range_result(value: Value, times: I64) -> QueryResult:
    if isinstance(value, Matrix):
        _fail_type("range vector")
    if isinstance(value, String):
        _fail_type("string")
    if isinstance(value, Scalar):
        return QueryResult("matrix", [Series({}, times.copy(), value.values.copy())])
    order = sorted(range(len(value.labels)), key=lambda i: value.labels[i])
    series = []
    for i in order:
        p = value.present[i]
        if p.any():
            series.append(Series(dict(value.labels[i]), times[p], value.values[i][p]))
    return QueryResult("matrix", series)
