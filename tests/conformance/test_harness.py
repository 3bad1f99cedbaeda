"""The conformance harness itself: the comparer's rules, query ordering, and the data generator
(no services needed)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fleetscope.query import QueryError, QueryResult
from fleetscope.store import Series

from .corpus import QUERIES
from .fleetdata import STALE_NAN_BITS, generate
from .harness import Outcome, compare, is_ordered, parse_data, seconds

T = 1_700_000_000_000


def vec(*items: tuple[dict[str, str], float], t_ms: int = T) -> QueryResult:
    return QueryResult(
        "vector",
        series=[Series(labels, np.array([t_ms]), np.array([v])) for labels, v in items],
    )


def mat(labels: dict[str, str], points: list[tuple[int, float]]) -> QueryResult:
    t, v = zip(*points, strict=True)
    return QueryResult("matrix", series=[Series(labels, np.array(t), np.array(v))])


A, B = {"gpu": "0"}, {"gpu": "1"}


@pytest.mark.parametrize(
    ("expected", "got"),
    [
        pytest.param(vec((A, 1.0), (B, 2.0)), vec((B, 2.0), (A, 1.0)), id="series-order"),
        pytest.param(vec((A, 1.0)), vec((A, 1.0 + 1e-9)), id="within-relative-tolerance"),
        pytest.param(vec((A, 0.0)), vec((A, 1e-12)), id="near-zero-absolute"),
        pytest.param(vec((A, math.nan)), vec((A, math.nan)), id="nan-equals-nan"),
        pytest.param(vec((A, math.inf)), vec((A, math.inf)), id="inf"),
        pytest.param(vec(), vec(), id="both-empty"),
        pytest.param(QueryResult("scalar", scalar=(T, 3.0)), QueryResult("scalar", scalar=(T, 3.0)),
                     id="scalar"),
        pytest.param(
            QueryError("bad_data", "parse error at 1:5"),
            QueryError("bad_data", "unexpected end of input"),
            id="same-error-type",
        ),
        pytest.param(mat(A, [(T, 1.0), (T + 60_000, 2.0)]), mat(A, [(T, 1.0), (T + 60_000, 2.0)]),
                     id="matrix"),
    ],
)  # fmt: skip
def test_agreement(expected: Outcome, got: Outcome) -> None:
    assert compare(expected, got) == []


@pytest.mark.parametrize(
    ("expected", "got", "says"),
    [
        pytest.param(vec((A, 1.0)), vec((A, 1.0 + 1e-5)), "wrong values", id="value"),
        pytest.param(vec((A, 1.0)), vec((A, math.nan)), "wrong values", id="nan-vs-number"),
        pytest.param(vec((A, math.inf)), vec((A, -math.inf)), "wrong values", id="inf-sign"),
        pytest.param(vec((A, 1.0), (B, 1.0)), vec((A, 1.0)), "missing series", id="missing"),
        pytest.param(vec((A, 1.0)), vec((A, 1.0), (B, 1.0)), "unexpected series", id="extra"),
        pytest.param(vec((A, 1.0)), vec(({**A, "__name__": "x"}, 1.0)), "series", id="name"),
        pytest.param(vec((A, 1.0)), vec((A, 1.0), (A, 1.0)), "duplicate series", id="duplicate"),
        pytest.param(vec((A, 1.0)), vec((A, 1.0), t_ms=T + 1), "timestamps", id="timestamp"),
        pytest.param(mat(A, [(T, 1.0), (T + 60_000, 2.0)]), mat(A, [(T, 1.0)]), "timestamps",
                     id="matrix-points"),
        pytest.param(vec((A, 1.0)), mat(A, [(T, 1.0)]), "expected vector", id="result-type"),
        pytest.param(QueryResult("scalar", scalar=(T, 1.0)), QueryResult("scalar", scalar=(T, 2.0)),
                     "scalar", id="scalar"),
        pytest.param(QueryResult("string", string=(T, "a")), QueryResult("string", string=(T, "b")),
                     "string", id="string"),
        pytest.param(QueryError("bad_data", "x"), QueryError("execution", "x"), "error",
                     id="error-type"),
        pytest.param(QueryError("execution", "x"), vec(), "expected error", id="one-side-error"),
        pytest.param(vec(), QueryError("bad_data", "x"), "got error", id="other-side-error"),
    ],
)  # fmt: skip
def test_difference(expected: Outcome, got: Outcome, says: str) -> None:
    diffs = compare(expected, got)
    assert diffs and says in "\n".join(diffs)


def test_ordered_results_compare_their_order_but_not_ties() -> None:
    c = {"gpu": "2"}
    expected = vec((A, 1.0), (B, 2.0), (c, 2.0))
    assert compare(expected, vec((B, 2.0), (A, 1.0), (c, 2.0)), ordered=True)
    assert compare(expected, vec((B, 2.0), (A, 1.0), (c, 2.0))) == []
    assert compare(expected, vec((A, 1.0), (c, 2.0), (B, 2.0)), ordered=True) == []


@pytest.mark.parametrize(
    ("query", "ordered"),
    [
        ("sort(x)", True),
        ("sort_desc(sum by (a) (x))", True),
        ("(sort(x))", True),
        ("topk(3, x)", True),
        ("bottomk(1, rate(x[5m]))", True),
        ("topk by (node) (1, x)", False),
        ("topk(1, x) by (node)", False),
        ("sum(topk(3, x))", False),
        ("sort(x) + sort(y)", False),
        ("x", False),
        ('sort(label_replace(x, "a", ")", "b", "\\\\"))', True),
        ('sort(label_replace(x, "a", "\\")", "b", "c")) + 1', False),
    ],
)
def test_is_ordered(query: str, ordered: bool) -> None:
    assert is_ordered(query) is ordered


def test_seconds_are_exact() -> None:
    assert seconds(1_700_000_000_123) == "1700000000.123"
    assert seconds(5) == "0.005"
    assert seconds(-1_500) == "-1.500"


def test_parse_data_reads_prometheus_json() -> None:
    vector = parse_data(
        {
            "resultType": "vector",
            "result": [{"metric": {"a": "1"}, "value": [1700000000.123, "NaN"]}],
        }
    )
    assert vector.series[0].t_ms.tolist() == [1_700_000_000_123]
    assert math.isnan(vector.series[0].values[0])
    matrix = parse_data(
        {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "+Inf"], [2, "-1"]]}]}
    )
    assert matrix.series[0].values.tolist() == [math.inf, -1.0]
    assert parse_data({"resultType": "scalar", "result": [1, "2"]}).scalar == (1000, 2.0)
    assert parse_data({"resultType": "string", "result": [1, "x"]}).string == (1000, "x")


def test_corpus_is_large_and_without_repeats() -> None:
    assert len(QUERIES) >= 150
    assert len(set(QUERIES)) == len(QUERIES)


def test_generator_is_deterministic_and_well_formed() -> None:
    end = 1_700_000_040_000
    one, two = generate(end), generate(end)
    later = generate(end + 3_600_000)
    assert one.batch.series == two.batch.series
    assert np.array_equal(one.batch.values.view(np.int64), two.batch.values.view(np.int64))
    # only the timestamps follow the end
    assert np.array_equal(later.batch.t_ms - 3_600_000, one.batch.t_ms)
    assert np.array_equal(later.batch.values.view(np.int64), one.batch.values.view(np.int64))
    b = one.batch
    assert one.start_ms <= b.t_ms.min() and b.t_ms.max() <= one.end_ms
    for i in range(len(b.series)):
        t = b.t_ms[b.series_index == i]
        assert len(t) and (np.diff(t) > 0).all(), b.series[i]
    bits = b.values.view(np.int64)
    assert (bits == STALE_NAN_BITS).sum() > 20  # stale markers, exact bit pattern
    assert np.isnan(b.values[bits != STALE_NAN_BITS]).sum() == 4  # reported NaN samples
    names = {s["__name__"] for s in b.series}
    assert {"fleet_gpu_allocation", "fleet_inference_ttft_seconds_bucket"} <= names
    chunks = list(one.chunks(600_000))
    assert sum(len(c) for c in chunks) == len(b)
    assert all(c.t_ms.max() < d.t_ms.min() for c, d in itertools.pairwise(chunks))
