"""Tests of the ingest batch checks (fleetscope.ingest.validate)."""

from __future__ import annotations

import numpy as np
import pytest

from fleetscope import remotewrite
from fleetscope.ingest.validate import IngestError, validate
from fleetscope.store import LabelSetIds, SampleBatch

T0 = 1_700_000_000_000
M = {"__name__": "fleet_gpu_up", "node": "n1"}


def batch(*rows: tuple[dict[str, str], int, float]) -> SampleBatch:
    """A batch whose rows stay in the given order (from_rows keeps it)."""
    return SampleBatch.from_rows(rows)


@pytest.mark.parametrize(
    ("b", "message"),
    [
        pytest.param(batch(({"node": "n1"}, T0, 1.0)), "without a metric name", id="no-name"),
        pytest.param(
            batch(({"__name__": "", "node": "n1"}, T0, 1.0)), "without a metric name", id="empty"
        ),
        pytest.param(
            batch(({"__name__": "1abc"}, T0, 1.0)), "invalid metric name '1abc'", id="bad-name"
        ),
        pytest.param(
            batch(({**M, "gpu-id": "0"}, T0, 1.0)), "invalid label name 'gpu-id'", id="dash"
        ),
        pytest.param(
            batch(({**M, "0gpu": "0"}, T0, 1.0)), "invalid label name '0gpu'", id="digit-first"
        ),
        pytest.param(batch(({**M, "__meta_x": "0"}, T0, 1.0)), "reserved", id="double-underscore"),
        pytest.param(batch((M, -1, 1.0)), "negative timestamp -1", id="negative-time"),
        pytest.param(batch((M, T0 + 1, 1.0), (M, T0, 2.0)), "out of order sample", id="backwards"),
        pytest.param(
            batch((M, T0, 1.0), (M, T0, 2.0)), "duplicate timestamp", id="same-time-other-value"
        ),
        pytest.param(
            SampleBatch(
                [M],
                np.zeros(1, np.int32),
                np.array([1.5]),
                np.ones(1),
            ),
            "must be integers",
            id="float-times",
        ),
        pytest.param(
            SampleBatch([M], np.array([1], np.int32), np.array([T0]), np.ones(1)),
            "does not contain",
            id="bad-series-index",
        ),
    ],
)
def test_refuses_with_the_series_and_the_problem(b: SampleBatch, message: str) -> None:
    with pytest.raises(IngestError, match=message):
        validate(b)


def test_message_names_the_series() -> None:
    with pytest.raises(IngestError, match=r'fleet_gpu_up\{node="n1"\}'):
        validate(batch((M, -5, 1.0)))


def test_empty_label_values_are_dropped() -> None:
    given = batch(({**M, "job": ""}, T0, 1.0))
    got = validate(given)
    assert got.series == [M]
    assert given.series == [{**M, "job": ""}]  # a new label set, the given one unchanged


def test_exact_repeat_is_kept_once_including_nan() -> None:
    nan = float("nan")
    got = validate(batch((M, T0, 1.0), (M, T0, 1.0), (M, T0 + 1, nan), (M, T0 + 1, nan)))
    assert got.t_ms.tolist() == [T0, T0 + 1]


def test_order_is_per_series_and_rows_may_interleave() -> None:
    other = {**M, "node": "n2"}
    got = validate(
        batch((M, T0 + 5, 1.0), (other, T0, 1.0), (M, T0 + 6, 1.0), (other, T0 + 1, 1.0))
    )
    assert len(got) == 4


def test_interleaved_backwards_is_refused() -> None:
    other = {**M, "node": "n2"}
    with pytest.raises(IngestError, match='node="n2"'):
        validate(batch((other, T0 + 5, 1.0), (M, T0, 1.0), (other, T0, 1.0)))


def test_valid_batch_passes_unchanged() -> None:
    b = batch((M, 0, 1.0), (M, T0, 2.0), ({"__name__": "a:b_c", "_x": "y"}, T0, 3.0))
    got = validate(b)
    assert got.series == b.series
    assert got.t_ms.tolist() == b.t_ms.tolist()


def numbered(*rows: tuple[dict[str, str], int, float]) -> SampleBatch:
    """A batch as the remote-write decoder hands it over: with label set numbers."""
    return remotewrite.decode(remotewrite.encode(batch(*rows)))


def test_label_set_numbers_are_passed_on_and_checks_still_refuse() -> None:
    good = numbered((M, T0, 1.0), ({**M, "gpu": "0"}, T0, 1.0))
    bad = numbered(({**M, "gpu-id": "0"}, T0, 1.0))
    for _ in range(2):  # the second time the good label sets are known to have passed
        got = validate(good)
        assert got.label_set_ids is good.label_set_ids
        assert got.series == good.series
        with pytest.raises(IngestError, match="invalid label name 'gpu-id'"):
            validate(bad)


def test_label_set_numbers_are_dropped_with_cleaned_labels() -> None:
    got = validate(numbered(({**M, "job": ""}, T0, 1.0)))
    assert got.series == [M]
    assert got.label_set_ids is None


@pytest.mark.parametrize("ids", [[0, 1], [-1]], ids=["too-many", "negative"])
def test_label_set_numbers_must_match_the_series(ids: list[int]) -> None:
    b = numbered((M, T0, 1.0))
    assert b.label_set_ids is not None
    wrong = LabelSetIds(b.label_set_ids.numbering, np.array(ids, np.int64))
    with pytest.raises(IngestError, match="do not match"):
        validate(SampleBatch(b.series, b.series_index, b.t_ms, b.values, wrong))


def test_label_sets_are_checked_again_in_a_new_numbering() -> None:
    b = numbered((M, T0, 1.0))
    assert b.label_set_ids is not None
    validate(b)
    renumbered = LabelSetIds(object(), b.label_set_ids.ids)
    bad = SampleBatch([{**M, "gpu-id": "0"}], b.series_index, b.t_ms, b.values, renumbered)
    with pytest.raises(IngestError, match="invalid label name"):
        validate(bad)
