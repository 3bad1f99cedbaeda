"""Tests of the ingest batch checks (fleetscope.ingest.validate)."""

from __future__ import annotations

import numpy as np
import pytest

from fleetscope.ingest.validate import IngestError, validate
from fleetscope.store import SampleBatch

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
    got = validate(batch(({**M, "job": ""}, T0, 1.0)))
    assert got.series == [M]


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
