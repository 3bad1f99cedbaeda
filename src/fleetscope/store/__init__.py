"""Store ports: the only way any other stage reaches stored metrics and records.

Two ports, as in DESIGN.md:

- :class:`MetricStore` holds Prometheus-model time series (a label set including ``__name__``,
  and float samples at integer millisecond timestamps).
- :class:`RecordStore` holds things with identity and lifecycle (jobs, events).

Conventions every adapter keeps:

- Time is integer milliseconds since the Unix epoch; every ``[mint_ms, maxt_ms]`` range is
  inclusive at both ends, as in Prometheus' ``Querier``.
- A series' samples are strictly increasing in time. Appending a sample whose timestamp is at or
  before the series' newest stored sample is *out of order* unless it is an exact duplicate
  (same series, time and value), which is accepted and stored once (so a resent batch does not
  double-count).
- Unknown values are not stored: ``None`` never reaches a store, NaN is a legal float sample
  (Prometheus' staleness marker is a NaN with a special bit pattern and is kept as is).
- Adapters are safe to call from several threads; they serialize writes internally (the DuckDB
  adapter commits appends that arrive together as one group, each batch still accepted or
  refused on its own).
- A :class:`SampleBatch` may carry ``label_set_ids`` (optional; see :class:`LabelSetIds`):
  numbers that let an adapter know a label set again without reading it. Adapters may use them
  or ignore them; what is stored is the same either way.
- Adapters never change a batch they are given, its arrays or its label sets: the label sets
  may be shared with other batches (the remote-write receiver passes the decoder's own). An
  adapter that keeps a label set keeps a copy.

No SQL outside this package (DESIGN.md). Adapters: ``duckdb`` (embedded).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from fleetscope.model import Event, Job

MatchOp = Literal["=", "!=", "=~", "!~"]
METRIC_NAME = "__name__"

STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN: float = float(np.array([STALE_NAN_BITS], np.int64).view(np.float64)[0])
"""Prometheus' staleness marker (``value.StaleNaN``): a NaN with this exact bit pattern, written
when a series disappears; queries treat the series as absent from then on."""


class StoreError(Exception):
    """Base class of store errors that the API edge turns into 4xx answers."""


class OutOfOrderError(StoreError):
    """A sample is at or before its series' newest stored sample and is not an exact duplicate."""


class InvalidBatchError(StoreError):
    """A batch breaks the port's preconditions (bad label set, non-increasing times, …)."""


@dataclass(frozen=True)
class Matcher:
    """One label matcher, with Prometheus semantics.

    Regular expressions are fully anchored (``=~"a.*"`` matches ``abc`` not ``xabc``). A label
    that a series does not have has the value ``""``, so ``{team=""}`` selects series without
    ``team``.
    """

    name: str
    op: MatchOp
    value: str

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        return re.compile(f"^(?:{self.value})$", re.DOTALL)

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = self._regex.match(value) is not None
        return hit if self.op == "=~" else not hit

    @classmethod
    def equal(cls, name: str, value: str) -> Matcher:
        return cls(name, "=", value)


def matches_all(labels: Mapping[str, str], matchers: Sequence[Matcher]) -> bool:
    """True when a label set satisfies every matcher (missing labels read as ``""``)."""
    return all(m.matches(labels.get(m.name, "")) for m in matchers)


@dataclass(frozen=True, eq=False)
class LabelSetIds:
    """Numbers for the label sets of a batch, from one numbering: a cheap way to know them again.

    ``ids[i]`` numbers ``series[i]`` of the batch that carries it. Numbers are small
    non-negative integers handed out in order of first sight (0, 1, 2 …), so a consumer can
    keep what it learnt about a label set (checked, stored as series 17 …) in an array indexed
    by its number. Within one ``numbering`` (compared by identity) an equal number means an
    equal label set (the same pairs in the same order), in any batch, for the life of the
    process. A producer may start a new numbering (the remote-write decoder does so past a size
    limit); a consumer then forgets what it kept for the old one.
    """

    numbering: object
    ids: npt.NDArray[np.int64]


@dataclass
class SampleBatch:
    """A columnar batch of samples: the unit of bulk appends.

    ``series[i]`` is a label set (with ``__name__``); row ``k`` is the sample
    ``(series[series_index[k]], t_ms[k], values[k])``. Rows need not be sorted.

    ``label_set_ids`` is optional (``None``: not numbered): numbers for ``series`` (see
    :class:`LabelSetIds`), as the remote-write decoder hands them out, so that per-label-set
    work is done once per label set, not once per batch (the validator remembers which label
    sets passed its checks, the DuckDB store their series ids). Whoever changes a label set of
    a numbered batch must drop the numbers; stores may ignore them.
    """

    series: list[dict[str, str]]
    series_index: npt.NDArray[np.int32]
    t_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    label_set_ids: LabelSetIds | None = None

    def __len__(self) -> int:
        return int(self.t_ms.shape[0])

    @classmethod
    def empty(cls) -> SampleBatch:
        return cls([], np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64))

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Mapping[str, str], int, float]]) -> SampleBatch:
        """Build a batch from ``(labels, t_ms, value)`` rows; equal label sets share a series."""
        index: dict[tuple[tuple[str, str], ...], int] = {}
        series: list[dict[str, str]] = []
        idx: list[int] = []
        ts: list[int] = []
        vs: list[float] = []
        for labels, t, v in rows:
            key = tuple(sorted(labels.items()))
            i = index.get(key)
            if i is None:
                i = index[key] = len(series)
                series.append(dict(key))
            idx.append(i)
            ts.append(t)
            vs.append(v)
        return cls(
            series,
            np.asarray(idx, np.int32),
            np.asarray(ts, np.int64),
            np.asarray(vs, np.float64),
        )

    @classmethod
    def concat(cls, batches: Sequence[SampleBatch]) -> SampleBatch:
        """Join batches into one (series are not merged; the store merges equal label sets).

        The result is numbered only when every batch is, in the same numbering.
        """
        series: list[dict[str, str]] = []
        idx: list[npt.NDArray[np.int32]] = []
        for b in batches:
            idx.append((b.series_index + len(series)).astype(np.int32))
            series.extend(b.series)
        if not batches:
            return cls.empty()
        numbered = [b.label_set_ids for b in batches]
        first = numbered[0]
        ids = None
        if first is not None and all(
            n is not None and n.numbering is first.numbering for n in numbered
        ):
            ids = LabelSetIds(
                first.numbering, np.concatenate([n.ids for n in numbered if n is not None])
            )
        return cls(
            series,
            np.concatenate(idx),
            np.concatenate([b.t_ms for b in batches]),
            np.concatenate([b.values for b in batches]),
            ids,
        )


@dataclass
class Series:
    """One series returned by a select: labels and its samples in time order."""

    labels: dict[str, str]
    t_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    pairs: tuple[tuple[str, str], ...] | None = None
    """The labels as sorted ``(name, value)`` pairs without empty values, when the store keeps
    them at hand (the evaluator's form of a label set; it builds it from ``labels`` else)."""


@dataclass
class SeriesSet:
    """The series of a select in flat arrays: series ``i`` has label pairs ``pairs[i]`` (sorted
    ``(name, value)`` pairs without empty values, as :attr:`Series.pairs`) and the samples
    ``t_ms[bounds[i]:bounds[i + 1]]``, in :meth:`MetricStore.select`'s order.

    What a :class:`SupportsSeriesSet` store hands the evaluator instead of one :class:`Series`
    per series: a selector over a week of short-lived allocations is tens of thousands of
    series, whose objects and label dicts would cost more than reading their samples.
    """

    pairs: list[tuple[tuple[str, str], ...]]
    t_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    bounds: npt.NDArray[np.int64]


class SupportsSeriesSet(Protocol):
    """A :class:`MetricStore` that can answer a select as one :class:`SeriesSet`."""

    def select_set(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> SeriesSet:
        """What :meth:`MetricStore.select` returns, as flat arrays."""
        ...


@dataclass
class Buckets:
    """Per series, aggregates of its samples in equal time buckets: what a store that can push
    range functions down (:class:`SupportsBuckets`) returns instead of the samples.

    Bucket ``b`` (``0 <= b < n``) holds the samples with ``base + (b-1)·width < t <= base +
    b·width`` (bucket 0: only a sample at exactly ``base``). Staleness markers are left out of
    every aggregate. Arrays are ``[series, n]``; ``count`` is 0 for an empty bucket and the
    float aggregates are then NaN. ``last`` is the value of the newest sample of the bucket,
    ``edge`` the value of a sample at exactly the bucket's right end ``base + b·width`` (NaN when
    there is none, ``has_edge`` False): a window ``[t - range, t]`` closed at both ends is the
    buckets right of ``t - range`` plus that edge sample of the bucket ending at ``t - range``.
    Series are sorted by label set, as :meth:`MetricStore.select` sorts them.

    The ``counter`` aggregate (what ``rate`` and ``increase`` read) adds ``first_t`` and
    ``first`` (time and value of the oldest sample of the bucket), ``last_t`` (time of the newest,
    whose value is ``last``) and ``increase``: the sum over consecutive samples of the bucket of
    ``v - previous``, or ``v`` where ``v < previous`` (a counter reset), 0 for one sample.
    Empty buckets hold 0 in ``first_t``/``last_t`` and NaN in the floats; without ``counter``
    the four are ``None``.
    """

    labels: list[dict[str, str]]
    count: npt.NDArray[np.int64]
    sum: npt.NDArray[np.float64]
    min: npt.NDArray[np.float64]
    max: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    edge: npt.NDArray[np.float64]
    has_edge: npt.NDArray[np.bool_]
    first_t: npt.NDArray[np.int64] | None = None
    first: npt.NDArray[np.float64] | None = None
    last_t: npt.NDArray[np.int64] | None = None
    increase: npt.NDArray[np.float64] | None = None


BUCKET_AGGREGATES = ("sum", "min", "max", "last")
"""The optional aggregates of :class:`Buckets` computed by default (``count``, ``edge`` and
``has_edge`` always)."""
COUNTER_AGGREGATE = "counter"
"""The aggregate of :class:`Buckets` that ``rate``/``increase`` read (with ``last``); only on
request, and a store may answer ``None`` when it cannot compute it cheaply."""


def check_bucket_aggregates(aggregates: Collection[str]) -> None:
    """Raise ``ValueError`` naming the aggregates that :class:`Buckets` does not have."""
    unknown = set(aggregates) - {*BUCKET_AGGREGATES, COUNTER_AGGREGATE}
    if unknown:
        raise ValueError(f"unknown bucket aggregates {sorted(unknown)}")


class SupportsBuckets(Protocol):
    """A :class:`MetricStore` that aggregates samples per time bucket itself (in SQL)."""

    def select_buckets(
        self,
        matchers: Sequence[Matcher],
        base_ms: int,
        width_ms: int,
        n: int,
        aggregates: Collection[str] = BUCKET_AGGREGATES,
    ) -> Buckets | None:
        """:class:`Buckets` of the matching series over ``[base_ms, base_ms + (n-1)·width_ms]``,
        or ``None`` when a series there holds a NaN that is not a staleness marker (the
        aggregates could not follow Prometheus' NaN rules: the caller reads the samples), or
        when :data:`COUNTER_AGGREGATE` is asked for and the store cannot compute it cheaply.
        Only the ``aggregates`` named are computed; the other float arrays are all NaN."""
        ...


@dataclass(frozen=True)
class SelectHints:
    """What the caller will do with a select (Prometheus' ``SelectHints``).

    Hints only allow an adapter to send back less; they never change what a correct caller
    computes. With ``step_ms`` set and ``func`` unset, an adapter may return, per series, only
    the newest sample in ``[t - lookback_ms, t]`` (Prometheus 2.x's closed lookback window) for
    each evaluation time ``t = start_ms + k * step_ms`` (``t <= end_ms``): exactly what instant
    selectors read. With ``step_ms`` 0, ``func`` unset and ``start_ms == end_ms`` (one
    evaluation time, the select's ``maxt``), the same holds for that one time.
    """

    start_ms: int
    end_ms: int
    step_ms: int = 0
    lookback_ms: int = 300_000
    func: str | None = None
    range_ms: int = 0
    grouping: tuple[str, ...] = ()
    by: bool = False


@dataclass(frozen=True)
class AppendResult:
    """What an append stored: ``samples`` new rows, ``duplicates`` exact resends ignored."""

    samples: int
    duplicates: int
    series_created: int


@dataclass(frozen=True)
class StoreStats:
    """Sizes of a store. ``bytes_on_disk``: its files; ``used_bytes``: the part holding data
    (a DuckDB file keeps blocks freed by compaction for later writes), ``None`` if unknown."""

    series: int
    samples: int
    min_t_ms: int | None
    max_t_ms: int | None
    bytes_on_disk: int
    used_bytes: int | None = None


class Appender(Protocol):
    """Buffers samples and writes them atomically.

    An appender must end with :meth:`commit` or :meth:`rollback` and cannot be reused after.
    ``commit`` returns once the data is durable; it raises :class:`OutOfOrderError` or
    :class:`InvalidBatchError` and stores nothing when any sample is rejected.
    """

    def append(self, labels: Mapping[str, str], t_ms: int, value: float) -> None: ...

    def append_batch(self, batch: SampleBatch) -> None: ...

    def commit(self) -> AppendResult: ...

    def rollback(self) -> None: ...


class MetricStore(Protocol):
    """Time series storage (see the module docstring for units and bounds)."""

    def appender(self) -> Appender: ...

    def append(self, batch: SampleBatch) -> AppendResult:
        """Append one batch atomically and durably (a one-batch appender)."""
        ...

    def select(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> list[Series]:
        """Series matching every matcher with their samples in ``[mint_ms, maxt_ms]``.

        Series without samples in the range are left out. Results are sorted by label set.
        """
        ...

    def series(
        self, matchers: Sequence[Matcher], mint_ms: int | None = None, maxt_ms: int | None = None
    ) -> list[dict[str, str]]:
        """Label sets of matching series (with samples in the range when one is given)."""
        ...

    def label_names(self, matchers: Sequence[Matcher] = ()) -> list[str]: ...

    def label_values(self, name: str, matchers: Sequence[Matcher] = ()) -> list[str]: ...

    def delete_before(self, t_ms: int) -> int:
        """Retention: drop samples older than ``t_ms``; returns how many were dropped."""
        ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...


class RecordStore(Protocol):
    """Records with identity (jobs) and append-only events.

    Jobs are keyed by ``(cluster, id)``; upserting a job replaces the stored version whole.
    Times are timezone-aware datetimes (UTC).
    """

    def upsert_jobs(self, jobs: Sequence[Job]) -> int: ...

    def jobs(
        self,
        *,
        states: Sequence[str] = (),
        team: str | None = None,
        active_between: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs filtered by state and team; ``active_between=(mint_ms, maxt_ms)`` keeps jobs
        that were pending or running at some time in that range. Newest submit first."""
        ...

    def job(self, job_id: str, cluster: str = "default") -> Job | None: ...

    def add_events(self, events: Sequence[Event]) -> int: ...

    def events(
        self, *, kinds: Sequence[str] = (), since_ms: int | None = None, limit: int | None = None
    ) -> list[Event]: ...

    def close(self) -> None: ...


@dataclass
class FakeMetricStore:
    """In-memory :class:`MetricStore` for tests of other stages (a fake, not a mock)."""

    rows: dict[tuple[tuple[str, str], ...], dict[int, float]] = field(default_factory=dict)

    def appender(self) -> Appender:
        return _BufferAppender(self)

    def append(self, batch: SampleBatch) -> AppendResult:
        app = self.appender()
        app.append_batch(batch)
        return app.commit()

    def _commit(self, batch: SampleBatch) -> AppendResult:
        staged: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
        dups = 0
        created = 0
        for k in range(len(batch)):
            key = tuple(sorted(batch.series[int(batch.series_index[k])].items()))
            t, v = int(batch.t_ms[k]), float(batch.values[k])
            have = self.rows.get(key, {})
            newest = max(have) if have else None
            if t in have and (have[t] == v or (np.isnan(have[t]) and np.isnan(v))):
                dups += 1
                continue
            if newest is not None and t <= newest:
                raise OutOfOrderError(f"out of order sample for {dict(key)} at {t}")
            staged.setdefault(key, {})[t] = v
        for key, samples in staged.items():
            if key not in self.rows:
                created += 1
            self.rows.setdefault(key, {}).update(samples)
        return AppendResult(len(batch) - dups, dups, created)

    def select(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> list[Series]:
        out = []
        for key in sorted(self.rows):
            labels = dict(key)
            if not matches_all(labels, matchers):
                continue
            ts = sorted(t for t in self.rows[key] if mint_ms <= t <= maxt_ms)
            if ts:
                out.append(
                    Series(
                        labels,
                        np.asarray(ts, np.int64),
                        np.asarray([self.rows[key][t] for t in ts], np.float64),
                    )
                )
        return out

    def series(
        self, matchers: Sequence[Matcher], mint_ms: int | None = None, maxt_ms: int | None = None
    ) -> list[dict[str, str]]:
        lo = mint_ms if mint_ms is not None else -(2**62)
        hi = maxt_ms if maxt_ms is not None else 2**62
        return [s.labels for s in self.select(matchers, lo, hi)]

    def label_names(self, matchers: Sequence[Matcher] = ()) -> list[str]:
        return sorted({n for labels in self.series(matchers) for n in labels})

    def label_values(self, name: str, matchers: Sequence[Matcher] = ()) -> list[str]:
        return sorted({lab[name] for lab in self.series(matchers) if name in lab})

    def delete_before(self, t_ms: int) -> int:
        dropped = 0
        for samples in self.rows.values():
            old = [t for t in samples if t < t_ms]
            dropped += len(old)
            for t in old:
                del samples[t]
        return dropped

    def stats(self) -> StoreStats:
        ts = [t for s in self.rows.values() for t in s]
        return StoreStats(
            len(self.rows), len(ts), min(ts) if ts else None, max(ts) if ts else None, 0
        )

    def close(self) -> None:
        return None


@dataclass
class FakeRecordStore:
    """In-memory :class:`RecordStore` for tests of other stages: jobs keyed by (cluster, id)."""

    stored: dict[tuple[str, str], Job] = field(default_factory=dict)
    stored_events: list[Event] = field(default_factory=list)

    def upsert_jobs(self, jobs: Sequence[Job]) -> int:
        latest = {(j.cluster, j.id): j for j in jobs}
        self.stored.update(latest)
        return len(latest)

    def jobs(
        self,
        *,
        states: Sequence[str] = (),
        team: str | None = None,
        active_between: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        out = [
            j
            for j in self.stored.values()
            if (not states or j.state in states) and (team is None or j.team == team)
        ]
        out.sort(key=lambda j: j.submit, reverse=True)
        return out[:limit] if limit is not None else out

    def job(self, job_id: str, cluster: str = "default") -> Job | None:
        return self.stored.get((cluster, job_id))

    def add_events(self, events: Sequence[Event]) -> int:
        self.stored_events.extend(events)
        return len(events)

    def events(
        self, *, kinds: Sequence[str] = (), since_ms: int | None = None, limit: int | None = None
    ) -> list[Event]:
        return [e for e in self.stored_events if not kinds or e.kind in kinds][:limit]

    def close(self) -> None:
        return None


class _BufferAppender:
    def __init__(self, store: FakeMetricStore) -> None:
        self._store = store
        self._parts: list[SampleBatch] = []
        self._rows: list[tuple[Mapping[str, str], int, float]] = []

    def append(self, labels: Mapping[str, str], t_ms: int, value: float) -> None:
        self._rows.append((labels, t_ms, value))

    def append_batch(self, batch: SampleBatch) -> None:
        self._parts.append(batch)

    def commit(self) -> AppendResult:
        batch = SampleBatch.concat([*self._parts, SampleBatch.from_rows(self._rows)])
        return self._store._commit(batch)

    def rollback(self) -> None:
        self._parts.clear()
        self._rows.clear()
