"""Group commit in the DuckDB store: appends from several threads that queue up during a commit
are written in one transaction, each checked on its own (a rejected batch fails alone).

The tests use real threads. To make a group deterministic they hold the store's write lock (as a
commit in progress would) while the appends queue up, one thread at a time so the queue order is
known, then let the group go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetscope import remotewrite
from fleetscope.store import (
    AppendResult,
    InvalidBatchError,
    LabelSetIds,
    Matcher,
    OutOfOrderError,
    SampleBatch,
)
from fleetscope.store.duckdb import DuckDBStore

Outcome = AppendResult | BaseException


def gpu(i: int, **extra: str) -> dict[str, str]:
    return {"__name__": "fleet_gpu_utilization_ratio", "node": "n1", "gpu": str(i), **extra}


def batch(*rows: tuple[dict[str, str], int, float]) -> SampleBatch:
    return SampleBatch.from_rows(rows)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "m.duckdb")
    yield s
    s.close()


@pytest.fixture
def writes(store: DuckDBStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Number of appends answered by each write to DuckDB (one entry per transaction)."""
    seen: list[int] = []
    write = store._write

    def counting(stage: Any) -> None:
        write(stage)
        if stage.ids or stage.new_series:
            seen.append(len(stage.pending))

    monkeypatch.setattr(store, "_write", counting)
    return seen


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "appends did not queue up"
        time.sleep(0.001)


def append_grouped(store: DuckDBStore, batches: list[SampleBatch]) -> list[Outcome]:
    """Append each batch from its own thread, queued in list order behind a held write lock."""
    outcomes: list[Outcome | None] = [None] * len(batches)

    def run(i: int) -> None:
        try:
            outcomes[i] = store.append(batches[i])
        except BaseException as e:
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    with store._lock:
        for i, t in enumerate(threads):
            t.start()
            _wait_for(lambda i=i: len(store._queue) == i + 1)  # type: ignore[misc]
        assert not any(outcomes), "an append returned before its group was committed"
    for t in threads:
        t.join(30)
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def rows(store: DuckDBStore) -> list[tuple[str, int, float]]:
    return [
        (s.labels["gpu"], t, v)
        for s in store.select([Matcher("__name__", "=~", ".+")], 0, 2**62)
        for t, v in zip(s.t_ms.tolist(), s.values.tolist(), strict=True)
    ]


def counts(outcome: Outcome) -> tuple[int, int, int]:
    assert isinstance(outcome, AppendResult), outcome
    return outcome.samples, outcome.duplicates, outcome.series_created


def test_one_transaction_for_the_group_and_a_bad_batch_fails_alone(
    store: DuckDBStore, writes: list[int]
) -> None:
    store.append(batch((gpu(0), 1000, 1.0), (gpu(0), 2000, 2.0)))
    writes.clear()
    outcomes = append_grouped(
        store,
        [
            batch((gpu(1), 1000, 1.0)),
            batch((gpu(2), 1000, 2.0), (gpu(0), 1500, 9.0)),  # gpu 0 at 1500: out of order
            batch((gpu(0), 3000, 3.0), (gpu(3), 1000, 4.0)),
            batch(({"gpu": "9"}, 1000, 1.0)),  # no metric name
        ],
    )
    assert counts(outcomes[0]) == (1, 0, 1)
    assert isinstance(outcomes[1], OutOfOrderError)
    assert 'gpu="0"' in str(outcomes[1])
    assert counts(outcomes[2]) == (2, 0, 1)
    assert isinstance(outcomes[3], InvalidBatchError)
    assert writes == [2]
    assert rows(store) == [
        ("0", 1000, 1.0),
        ("0", 2000, 2.0),
        ("0", 3000, 3.0),
        ("1", 1000, 1.0),
        ("3", 1000, 4.0),
    ]
    assert store.stats().series == 3  # gpu 2 came only with the refused batch


def test_batches_of_a_group_are_checked_against_the_ones_before_them(
    store: DuckDBStore, writes: list[int]
) -> None:
    outcomes = append_grouped(
        store,
        [
            batch((gpu(0), 3000, 1.0)),
            batch((gpu(0), 3000, 1.0)),  # a resend of the batch before: duplicate
            batch((gpu(0), 2500, 1.0)),  # before what the first batch wrote: out of order
            batch((gpu(0), 3000, 7.0)),  # same time, other value: out of order
            batch((gpu(0), 4000, 2.0)),
        ],
    )
    assert counts(outcomes[0]) == (1, 0, 1)
    assert counts(outcomes[1]) == (0, 1, 0)
    assert isinstance(outcomes[2], OutOfOrderError)
    assert isinstance(outcomes[3], OutOfOrderError)
    assert counts(outcomes[4]) == (1, 0, 0)
    assert rows(store) == [("0", 3000, 1.0), ("0", 4000, 2.0)]
    # the resend had to be compared with rows the first batch wrote: they were committed first
    assert writes == [1, 2]


def test_a_series_new_in_a_refused_batch_is_created_by_the_next(store: DuckDBStore) -> None:
    outcomes = append_grouped(
        store,
        [
            batch((gpu(5), 1000, 1.0), (gpu(5), 1000, 2.0)),  # two values at one time
            batch((gpu(5), 1000, 1.0), (gpu(6), 1000, 1.0)),
            batch((gpu(6), 2000, 1.0), (gpu(5), 900, 1.0)),  # gpu 5 at 900: out of order
            batch((gpu(6), 2000, 2.0)),
        ],
    )
    assert isinstance(outcomes[0], OutOfOrderError)
    assert "two different values" in str(outcomes[0])
    assert counts(outcomes[1]) == (2, 0, 2)
    assert isinstance(outcomes[2], OutOfOrderError)
    assert counts(outcomes[3]) == (1, 0, 0)
    assert rows(store) == [("5", 1000, 1.0), ("6", 1000, 1.0), ("6", 2000, 2.0)]
    assert store.label_values("gpu") == ["5", "6"]


def test_a_failed_transaction_is_retried_batch_by_batch(
    store: DuckDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append(batch((gpu(0), 1000, 1.0)))
    write = store._write
    tries: list[int] = []

    def fails_with_poison(stage: Any) -> None:
        tries.append(len(stage.pending))
        if any((v == 666.0).any() for v in stage.v):
            raise OSError("disk full")
        write(stage)

    monkeypatch.setattr(store, "_write", fails_with_poison)
    third = batch((gpu(0), 4000, 3.0), (gpu(3), 1000, 1.0))
    outcomes = append_grouped(
        store,
        [
            batch((gpu(0), 2000, 2.0), (gpu(1), 1000, 1.0)),
            batch((gpu(0), 3000, 666.0), (gpu(2), 1000, 1.0)),
            third,
        ],
    )
    assert counts(outcomes[0]) == (2, 0, 1)
    assert isinstance(outcomes[1], OSError)
    assert counts(outcomes[2]) == (2, 0, 1)
    assert tries == [3, 1, 1, 1]
    assert rows(store) == [
        ("0", 1000, 1.0),
        ("0", 2000, 2.0),
        ("0", 4000, 3.0),
        ("1", 1000, 1.0),
        ("3", 1000, 1.0),
    ]
    # what the failed transaction staged was undone: heads, ids and new series
    assert counts(store.append(third)) == (0, 2, 0)
    assert counts(store.append(batch((gpu(2), 1000, 1.0)))) == (1, 0, 1)
    assert store.stats().series == 4


def test_heads_moved_by_a_failed_transaction_are_put_back(
    store: DuckDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append(batch((gpu(0), 1000, 1.0)))
    write = store._write

    def fails_once(stage: Any) -> None:
        monkeypatch.setattr(store, "_write", write)
        raise OSError("disk full")

    monkeypatch.setattr(store, "_write", fails_once)
    with pytest.raises(OSError):
        store.append(batch((gpu(0), 3000, 9.0), (gpu(1), 1000, 1.0)))
    assert counts(store.append(batch((gpu(0), 2000, 2.0), (gpu(1), 1000, 1.0)))) == (2, 0, 1)
    assert rows(store) == [("0", 1000, 1.0), ("0", 2000, 2.0), ("1", 1000, 1.0)]


def test_grouped_appends_store_what_appending_one_by_one_stores(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    batches = []
    for _ in range(12):
        n = int(rng.integers(1, 8))
        batches.append(
            batch(
                *[
                    (gpu(int(rng.integers(0, 4))), int(rng.integers(0, 6)) * 1000, float(v))
                    for v in rng.integers(0, 2, n)
                ]
            )
        )
    one_by_one = DuckDBStore(tmp_path / "a.duckdb")
    grouped = DuckDBStore(tmp_path / "b.duckdb")
    expected: list[Outcome] = []
    for b in batches:
        try:
            expected.append(one_by_one.append(b))
        except Exception as e:
            expected.append(e)
    got = append_grouped(grouped, batches)
    assert [type(o) for o in got] == [type(o) for o in expected]
    assert [o for o in got if isinstance(o, AppendResult)] == [
        o for o in expected if isinstance(o, AppendResult)
    ]
    assert rows(grouped) == rows(one_by_one)
    assert grouped.stats().series == one_by_one.stats().series
    one_by_one.close()
    grouped.close()


def test_many_threads_appending_at_once(store: DuckDBStore, writes: list[int]) -> None:
    per_thread, threads = 30, 8
    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            for k in range(per_thread):
                store.append(
                    batch(*[(gpu(c, slot=str(i)), 1000 * (k + 1), float(k)) for i in range(5)])
                )
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=client, args=(c,)) for c in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert errors == []
    assert sum(writes) == per_thread * threads
    assert store.stats().samples == per_thread * threads * 5
    assert store.stats().series == threads * 5


def test_label_set_numbers_find_the_series_and_survive_refusals(store: DuckDBStore) -> None:
    def decoded(t: int, v: float, *labels: dict[str, str]) -> SampleBatch:
        b = remotewrite.decode(remotewrite.encode(batch(*[(lab, t, v) for lab in labels])))
        assert b.label_set_ids is not None
        return b

    one = decoded(1000, 1.0, gpu(0))
    clash = SampleBatch(
        one.series, np.zeros(2, np.int32), np.array([1000, 1000]), np.array([1.0, 2.0]),
        one.label_set_ids,
    )  # fmt: skip
    with pytest.raises(OutOfOrderError, match="two different values"):
        store.append(clash)
    assert store.stats().series == 0
    first = store.append(decoded(1000, 1.0, gpu(0), gpu(1)))
    again = store.append(decoded(2000, 2.0, gpu(1), gpu(0)))
    assert counts(first) == (2, 0, 2)
    assert counts(again) == (2, 0, 0)
    assert store.series([Matcher.equal("gpu", "1")]) == [gpu(1)]
    assert rows(store) == [("0", 1000, 1.0), ("0", 2000, 2.0), ("1", 1000, 1.0), ("1", 2000, 2.0)]


def test_label_set_numbers_of_a_new_numbering_are_learnt_again(store: DuckDBStore) -> None:
    def numbered(numbering: object, ids: list[int], *rows: tuple[dict[str, str], int, float]):
        b = batch(*rows)
        return SampleBatch(
            b.series, b.series_index, b.t_ms, b.values,
            LabelSetIds(numbering, np.array(ids, np.int64)),
        )  # fmt: skip

    old, new = object(), object()
    store.append(numbered(old, [0, 1], (gpu(0), 1000, 1.0), (gpu(1), 1000, 1.0)))
    # in the new numbering 0 is gpu 1 and 1 is gpu 0: the store must not use what it knew
    store.append(numbered(new, [0, 1], (gpu(1), 2000, 2.0), (gpu(0), 2000, 3.0)))
    # a group mixing numberings: series created under the old one are not filed under the new
    outcomes = append_grouped(
        store,
        [
            numbered(old, [2], (gpu(2), 3000, 4.0)),
            numbered(new, [2], (gpu(3), 3000, 5.0)),
        ],
    )
    assert [counts(o) for o in outcomes] == [(1, 0, 1), (1, 0, 1)]
    store.append(
        numbered(new, [2, 0, 1], (gpu(3), 4000, 6.0), (gpu(1), 4000, 7.0), (gpu(0), 4000, 8.0))
    )
    assert rows(store) == [
        ("0", 1000, 1.0), ("0", 2000, 3.0), ("0", 4000, 8.0),
        ("1", 1000, 1.0), ("1", 2000, 2.0), ("1", 4000, 7.0),
        ("2", 3000, 4.0),
        ("3", 3000, 5.0), ("3", 4000, 6.0),
    ]  # fmt: skip
