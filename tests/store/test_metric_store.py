"""The MetricStore contract, run against the DuckDB adapter and the in-memory fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fleetscope import remotewrite
from fleetscope.store import (
    FakeMetricStore,
    InvalidBatchError,
    Matcher,
    MetricStore,
    OutOfOrderError,
    SampleBatch,
    SelectHints,
)
from fleetscope.store.duckdb import DuckDBStore

STALE_NAN = np.array([0x7FF0000000000002], np.int64).view(np.float64)[0]


def gpu(i: int, name: str = "fleet_gpu_utilization_ratio", **extra: str) -> dict[str, str]:
    return {"__name__": name, "node": "n1", "gpu": str(i), **extra}


@pytest.fixture(params=["duckdb", "fake"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetricStore]:
    s: MetricStore = (
        DuckDBStore(tmp_path / "m.duckdb") if request.param == "duckdb" else (FakeMetricStore())
    )
    yield s
    s.close()


def rows(store: MetricStore) -> list[tuple[tuple[tuple[str, str], ...], int, int]]:
    """Every stored sample, values as bit patterns so NaNs compare equal."""
    out = []
    for s in store.select([Matcher("__name__", "=~", ".+")], 0, 2**62):
        bits = s.values.view(np.int64).tolist()
        out += [
            (tuple(sorted(s.labels.items())), t, b)
            for t, b in zip(s.t_ms.tolist(), bits, strict=True)
        ]
    return out


def test_append_then_select_returns_samples_in_order(store: MetricStore) -> None:
    batch = SampleBatch.from_rows(
        [(gpu(0), 3000, 0.3), (gpu(0), 1000, 0.1), (gpu(1), 1000, 0.5), (gpu(0), 2000, 0.2)]
    )
    result = store.append(batch)
    assert (result.samples, result.duplicates, result.series_created) == (4, 0, 2)
    got = store.select([Matcher.equal("gpu", "0")], 0, 10_000)
    assert len(got) == 1
    assert got[0].t_ms.tolist() == [1000, 2000, 3000]
    assert got[0].values.tolist() == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    ("matchers", "expected"),
    [
        pytest.param([Matcher.equal("gpu", "1")], ["1"], id="equal"),
        pytest.param([Matcher("gpu", "!=", "1")], ["0", "2"], id="not-equal"),
        pytest.param([Matcher("gpu", "=~", "[01]")], ["0", "1"], id="regex"),
        pytest.param([Matcher("gpu", "=~", "1|2")], ["1", "2"], id="regex-alternation"),
        pytest.param([Matcher("gpu", "=~", "")], [], id="regex-anchored-empty"),
        pytest.param([Matcher("gpu", "!~", "0|1")], ["2"], id="not-regex"),
        pytest.param([Matcher.equal("team", "")], ["0", "1"], id="missing-label-is-empty"),
        pytest.param([Matcher("team", "=~", "a.*")], ["2"], id="regex-on-present-label"),
    ],
)
def test_label_matchers(store: MetricStore, matchers: list[Matcher], expected: list[str]) -> None:
    store.append(
        SampleBatch.from_rows(
            [(gpu(0), 1000, 1.0), (gpu(1), 1000, 1.0), (gpu(2, team="alpha"), 1000, 1.0)]
        )
    )
    got = store.select(matchers, 0, 2000)
    assert [s.labels["gpu"] for s in got] == expected


def test_time_range_is_inclusive(store: MetricStore) -> None:
    store.append(SampleBatch.from_rows([(gpu(0), t, float(t)) for t in (1000, 2000, 3000)]))
    got = store.select([Matcher.equal("gpu", "0")], 1000, 2000)
    assert got[0].t_ms.tolist() == [1000, 2000]
    assert store.select([Matcher.equal("gpu", "0")], 3001, 9000) == []


def test_resending_a_batch_does_not_double_count(store: MetricStore) -> None:
    batch = SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(0), 2000, STALE_NAN)])
    store.append(batch)
    before = rows(store)
    again = store.append(batch)
    assert (again.samples, again.duplicates) == (0, 2)
    assert rows(store) == before


@pytest.mark.parametrize(
    "late",
    [
        pytest.param((1500, 1.0), id="between-stored-samples"),
        pytest.param((2000, 9.0), id="same-time-other-value"),
        pytest.param((500, 1.0), id="before-first"),
    ],
)
def test_out_of_order_rejects_the_whole_batch(store: MetricStore, late: tuple[int, float]) -> None:
    store.append(SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(0), 2000, 1.0)]))
    before = rows(store)
    bad = SampleBatch.from_rows([(gpu(1), 5000, 1.0), (gpu(0), late[0], late[1])])
    with pytest.raises(OutOfOrderError, match="fleet_gpu_utilization_ratio"):
        store.append(bad)
    assert rows(store) == before
    assert store.series([Matcher.equal("gpu", "1")]) == []


def test_duckdb_rejects_conflicting_values_inside_one_batch(tmp_path: Path) -> None:
    s = DuckDBStore(":memory:")
    with pytest.raises(OutOfOrderError, match="two different values"):
        s.append(SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(0), 1000, 2.0)]))
    assert s.stats().samples == 0
    result = s.append(SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(0), 1000, 1.0)]))
    assert (result.samples, result.duplicates) == (1, 1)


def test_duckdb_rejects_a_series_without_a_name() -> None:
    s = DuckDBStore(":memory:")
    with pytest.raises(InvalidBatchError, match="no metric name"):
        s.append(SampleBatch.from_rows([({"gpu": "0"}, 1000, 1.0)]))
    assert s.stats().series == 0


def test_data_and_order_checks_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    s = DuckDBStore(path)
    s.append(SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(1), 2000, 2.0)]))
    s.close()
    s = DuckDBStore(path)
    assert s.stats().samples == 2
    assert s.stats().series == 2
    with pytest.raises(OutOfOrderError):
        s.append(SampleBatch.from_rows([(gpu(1), 1500, 1.0)]))
    assert s.append(SampleBatch.from_rows([(gpu(1), 2000, 2.0)])).duplicates == 1
    r = s.append(SampleBatch.from_rows([(gpu(2), 1000, 1.0), (gpu(0), 3000, 3.0)]))
    assert (r.samples, r.series_created) == (2, 1)
    assert s.label_values("gpu") == ["0", "1", "2"]
    s.close()


def test_thinned_select_keeps_what_instant_queries_read() -> None:
    s = DuckDBStore(":memory:")
    t = np.arange(0, 600_000, 15_000, dtype=np.int64)  # 10 minutes at 15 s
    s.append(SampleBatch([gpu(0)], np.zeros(len(t), np.int32), t, t / 1000.0))
    hints = SelectHints(start_ms=120_000, end_ms=600_000, step_ms=60_000)
    got = s.select([Matcher.equal("gpu", "0")], 120_000 - 300_000, 600_000, hints)[0]
    steps = np.arange(120_000, 600_001, 60_000)
    # the newest sample at or before each step is kept, nothing else
    newest = [int(t[t <= step].max()) for step in steps]
    assert sorted(set(newest)) == got.t_ms.tolist()
    assert got.values.tolist() == [x / 1000.0 for x in got.t_ms.tolist()]


def test_retention_drops_old_samples(store: MetricStore) -> None:
    store.append(SampleBatch.from_rows([(gpu(0), t, 1.0) for t in (1000, 2000, 3000)]))
    assert store.delete_before(2500) == 2
    assert [r[1] for r in rows(store)] == [3000]


def test_labels_and_series_listing(store: MetricStore) -> None:
    store.append(
        SampleBatch.from_rows([(gpu(0), 1000, 1.0), (gpu(1, "fleet_gpu_up", team="a"), 5000, 1.0)])
    )
    assert store.label_names() == ["__name__", "gpu", "node", "team"]
    assert store.label_values("__name__") == ["fleet_gpu_up", "fleet_gpu_utilization_ratio"]
    assert store.series([Matcher.equal("__name__", "fleet_gpu_up")], 0, 2000) == []
    assert len(store.series([Matcher.equal("__name__", "fleet_gpu_up")], 4000, 6000)) == 1


def test_appender_commits_once(tmp_path: Path) -> None:
    s = DuckDBStore(":memory:")
    app = s.appender()
    app.append(gpu(0), 1000, 1.0)
    app.append_batch(SampleBatch.from_rows([(gpu(1), 1000, 2.0)]))
    assert app.commit().samples == 2
    with pytest.raises(InvalidBatchError):
        app.append(gpu(0), 2000, 1.0)
    rolled = s.appender()
    rolled.append(gpu(0), 3000, 1.0)
    rolled.rollback()
    assert s.stats().samples == 2


def test_numbered_batches(store: MetricStore) -> None:
    """Decoded remote-write batches carry label set numbers; every store takes them as any."""
    first = remotewrite.decode(remotewrite.encode(SampleBatch.from_rows([(gpu(0), 1000, 1.0)])))
    assert first.label_set_ids is not None
    assert store.append(first).series_created == 1
    later = SampleBatch.from_rows([(gpu(0), 2000, 2.0), (gpu(1), 2000, 3.0)])
    numbered = remotewrite.decode(remotewrite.encode(later))
    assert (store.append(numbered).samples, store.append(numbered).duplicates) == (2, 2)
    assert [(r[0][1], r[1]) for r in rows(store)] == [
        (("gpu", "0"), 1000),
        (("gpu", "0"), 2000),
        (("gpu", "1"), 2000),
    ]
    joined = SampleBatch.concat([first, numbered]).label_set_ids
    assert joined is not None and numbered.label_set_ids is not None
    assert joined.ids.tolist() == [
        *first.label_set_ids.ids.tolist(),
        *numbered.label_set_ids.ids.tolist(),
    ]
    assert SampleBatch.concat([first, later]).label_set_ids is None


def test_append_leaves_the_batch_as_it_was(store: MetricStore) -> None:
    """Label sets of a batch may be shared with other batches: a store must not change them."""
    batch = SampleBatch.from_rows(
        [(gpu(1), 3000, 1.0), (gpu(0), 1000, 2.0), (gpu(1), 1000, 3.0), (gpu(1), 1000, 3.0)]
    )
    series = [dict(labels) for labels in batch.series]
    columns = [a.copy() for a in (batch.series_index, batch.t_ms, batch.values)]
    store.append(batch)
    store.append(batch)
    assert batch.series == series
    for before, after in zip(columns, (batch.series_index, batch.t_ms, batch.values), strict=True):
        assert after.tolist() == before.tolist()
