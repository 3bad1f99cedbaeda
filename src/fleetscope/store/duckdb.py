"""Embedded store: metrics and records in one DuckDB file (the default, one-machine backend).

Layout. ``series(id, metric, labels)`` holds one row per label set (``labels`` is the canonical
JSON of the sorted label pairs, ``__name__`` included); ``samples(series_id, t, v)`` holds the
samples. Series are few (thousands) and samples many (hundreds of millions), so the series index
lives in memory — label matching runs over it in Python, as a postings lookup would — and only
sample scans go to SQL. ``head`` keeps each series' newest timestamp in memory so the usual
append (all new samples newer than the head) needs no read; an append that reaches back in time
is checked against stored rows, where an exact resend is a duplicate and anything else is out of
order (Prometheus' rule, with no out-of-order window).

Writes are serialized by a lock and each append is one transaction: nothing of a rejected batch
is stored, and :meth:`append` returns only after DuckDB has committed (durable in its WAL).
Reads use their own cursor so they can run beside a write. Bulk inserts go through Arrow tables.
Records (jobs, events) are kept in ``jobs`` and ``events`` with times as integer milliseconds.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from fleetscope.model import Event, Job, JobState
from fleetscope.store import (
    METRIC_NAME,
    Appender,
    AppendResult,
    InvalidBatchError,
    Matcher,
    OutOfOrderError,
    SampleBatch,
    SelectHints,
    Series,
    StoreStats,
    matches_all,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (id INTEGER NOT NULL, metric VARCHAR NOT NULL,
                                   labels VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS samples (series_id INTEGER NOT NULL, t BIGINT NOT NULL,
                                    v DOUBLE NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    cluster VARCHAR NOT NULL, id VARCHAR NOT NULL, name VARCHAR, team VARCHAR, "user" VARCHAR,
    workload VARCHAR, tier VARCHAR, state VARCHAR, submit_ms BIGINT, start_ms BIGINT,
    end_ms BIGINT, gpus INTEGER, nodes VARCHAR[], gpu_uuids VARCHAR[], exit_code INTEGER,
    pending_reason VARCHAR, restarts INTEGER, image VARCHAR, source VARCHAR);
CREATE TABLE IF NOT EXISTS events (time_ms BIGINT NOT NULL, kind VARCHAR NOT NULL,
                                   subject VARCHAR NOT NULL, attrs VARCHAR);
"""

_SAMPLES_SCHEMA = pa.schema([("series_id", pa.int32()), ("t", pa.int64()), ("v", pa.float64())])
_SERIES_SCHEMA = pa.schema([("id", pa.int32()), ("metric", pa.string()), ("labels", pa.string())])
_JOB_SCHEMA = pa.schema(
    [
        ("cluster", pa.string()), ("id", pa.string()), ("name", pa.string()),
        ("team", pa.string()), ("user", pa.string()), ("workload", pa.string()),
        ("tier", pa.string()), ("state", pa.string()), ("submit_ms", pa.int64()),
        ("start_ms", pa.int64()), ("end_ms", pa.int64()), ("gpus", pa.int32()),
        ("nodes", pa.list_(pa.string())), ("gpu_uuids", pa.list_(pa.string())),
        ("exit_code", pa.int32()), ("pending_reason", pa.string()), ("restarts", pa.int32()),
        ("image", pa.string()), ("source", pa.string()),
    ]
)  # fmt: skip
_EVENT_SCHEMA = pa.schema(
    [("time_ms", pa.int64()), ("kind", pa.string()), ("subject", pa.string()),
     ("attrs", pa.string())]
)  # fmt: skip
_NO_HEAD = np.iinfo(np.int64).min


def _key(labels: Mapping[str, str]) -> str:
    return json.dumps(sorted(labels.items()), separators=(",", ":"))


def _ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else _utc(ms)


def _same(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Equal values, NaNs compared by bit pattern (a resent stale marker is a duplicate)."""
    return np.asarray(a.view(np.int64) == b.view(np.int64))


class DuckDBStore:
    """:class:`~fleetscope.store.MetricStore` and :class:`~fleetscope.store.RecordStore` on a
    DuckDB file (``":memory:"`` for a throw-away store)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(self.path)
        self._con.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._labels: list[dict[str, str]] = []
        self._ids: dict[str, int] = {}
        # label pairs in the order a client sent them → id; skips building the canonical key
        # for series seen before (the common case: every scrape repeats the same label sets)
        self._seen: dict[tuple[tuple[str, str], ...], int] = {}
        self._by_name: dict[str, list[int]] = {}
        self._head = np.empty(0, np.int64)
        self._load_index()

    # ----------------------------------------------------------------- series index

    def _load_index(self) -> None:
        rows = self._con.execute("SELECT id, labels FROM series ORDER BY id").fetchall()
        for sid, text in rows:
            if sid != len(self._labels):
                raise RuntimeError(f"series table is corrupt near id {sid}")
            self._register(dict(json.loads(text)), text)
        self._head = np.full(len(self._labels), _NO_HEAD, np.int64)
        heads = self._con.execute(
            "SELECT series_id, max(t) FROM samples GROUP BY series_id"
        ).fetchnumpy()
        if len(heads["series_id"]):
            self._head[heads["series_id"].astype(np.int64)] = heads["max(t)"]

    def _register(self, labels: dict[str, str], key: str) -> int:
        sid = len(self._labels)
        self._labels.append(labels)
        self._ids[key] = sid
        self._by_name.setdefault(labels.get(METRIC_NAME, ""), []).append(sid)
        return sid

    def _match(self, matchers: Sequence[Matcher]) -> list[int]:
        """Ids of series matching every matcher (a ``__name__ =`` matcher narrows first)."""
        names = [m.value for m in matchers if m.name == METRIC_NAME and m.op == "="]
        if names:
            candidates: Iterable[int] = self._by_name.get(names[0], [])
        else:
            candidates = range(len(self._labels))
        return [i for i in candidates if matches_all(self._labels[i], matchers)]

    # ----------------------------------------------------------------- appends

    def appender(self) -> Appender:
        return _Appender(self)

    def append(self, batch: SampleBatch) -> AppendResult:
        if len(batch) == 0:
            return AppendResult(0, 0, 0)
        with self._lock:
            return self._append_locked(batch)

    def _append_locked(self, batch: SampleBatch) -> AppendResult:
        if not (len(batch.series_index) == len(batch.t_ms) == len(batch.values)):
            raise InvalidBatchError("batch columns have different lengths")
        # Map the batch's label sets onto ids, staging the series this batch creates.
        local = np.empty(len(batch.series), np.int64)
        new_series: list[tuple[int, dict[str, str], str]] = []
        staged: dict[str, int] = {}
        next_id = len(self._labels)
        seen = self._seen
        for i, labels in enumerate(batch.series):
            pairs = tuple(labels.items())
            sid = seen.get(pairs)
            if sid is None:
                if not labels.get(METRIC_NAME):
                    raise InvalidBatchError(f"series {labels} has no metric name")
                key = _key(labels)
                sid = self._ids.get(key, staged.get(key))
                if sid is None:
                    sid = staged[key] = next_id + len(new_series)
                    new_series.append((sid, dict(labels), key))
                elif sid < next_id:
                    seen[pairs] = sid
            local[i] = sid
        ids = local[batch.series_index]
        t = batch.t_ms.astype(np.int64, copy=False)
        v = batch.values.astype(np.float64, copy=False)
        order = np.lexsort((t, ids))
        ids, t, v = ids[order], t[order], v[order]

        # Repeats inside the batch: an exact repeat is one sample, anything else is an error.
        same_point = (ids[1:] == ids[:-1]) & (t[1:] == t[:-1])
        if same_point.any():
            clash = same_point & ~_same(v[1:], v[:-1])
            if clash.any():
                k = int(np.argmax(clash))
                raise OutOfOrderError(
                    f"two different values for {self._describe(int(ids[k]), new_series)} "
                    f"at {int(t[k])}"
                )
            keep = np.concatenate(([True], ~same_point))
            ids, t, v = ids[keep], t[keep], v[keep]
        inner_dups = int(same_point.sum())

        heads = np.full(len(ids), _NO_HEAD, np.int64)
        known = ids < len(self._head)
        heads[known] = self._head[ids[known]]
        old = t <= heads
        dups = 0
        if old.any():
            self._check_resend(ids[old], t[old], v[old], new_series)
            dups = int(old.sum())
            ids, t, v = ids[~old], t[~old], v[~old]

        self._write(new_series, ids, t, v)
        return AppendResult(len(t), dups + inner_dups, len(new_series))

    def _check_resend(
        self,
        ids: npt.NDArray[np.int64],
        t: npt.NDArray[np.int64],
        v: npt.NDArray[np.float64],
        new_series: list[tuple[int, dict[str, str], str]],
    ) -> None:
        """Raise :class:`OutOfOrderError` unless every old sample is already stored as is."""
        probe = pa.table({"series_id": ids.astype(np.int32), "t": t, "v": v})
        cur = self._con.cursor()
        try:
            cur.register("probe", probe)
            found = cur.execute(
                "SELECT p.series_id, p.t, p.v, s.v AS stored FROM probe p LEFT JOIN samples s "
                "ON s.series_id = p.series_id AND s.t = p.t ORDER BY p.series_id, p.t"
            ).fetchnumpy()
        finally:
            cur.close()
        stored = found["stored"]
        missing = np.ma.getmaskarray(stored)
        stored_v = np.ma.getdata(stored).astype(np.float64)
        bad = missing | ~_same(np.asarray(found["v"], np.float64), stored_v)
        if bad.any():
            k = int(np.argmax(bad))
            sid = int(found["series_id"][k])
            raise OutOfOrderError(
                f"out of order sample for {self._describe(sid, new_series)}: "
                f"timestamp {int(found['t'][k])} is not after the newest stored sample "
                f"({int(self._head[sid])})"
            )

    def _describe(self, sid: int, new_series: list[tuple[int, dict[str, str], str]]) -> str:
        labels = self._labels[sid] if sid < len(self._labels) else None
        if labels is None:
            labels = next(lab for i, lab, _ in new_series if i == sid)
        name = labels.get(METRIC_NAME, "")
        rest = ",".join(f'{k}="{val}"' for k, val in sorted(labels.items()) if k != METRIC_NAME)
        return f"{name}{{{rest}}}"

    def _write(
        self,
        new_series: list[tuple[int, dict[str, str], str]],
        ids: npt.NDArray[np.int64],
        t: npt.NDArray[np.int64],
        v: npt.NDArray[np.float64],
    ) -> None:
        if not new_series and len(t) == 0:
            return
        samples = pa.Table.from_arrays(
            [pa.array(ids.astype(np.int32)), pa.array(t), pa.array(v)], schema=_SAMPLES_SCHEMA
        )
        series = pa.Table.from_pydict(
            {
                "id": [sid for sid, _, _ in new_series],
                "metric": [lab[METRIC_NAME] for _, lab, _ in new_series],
                "labels": [key for _, _, key in new_series],
            },
            schema=_SERIES_SCHEMA,
        )
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            if new_series:
                con.register("new_series", series)
                con.execute("INSERT INTO series SELECT * FROM new_series")
                con.unregister("new_series")
            if len(t):
                con.register("new_samples", samples)
                con.execute("INSERT INTO samples SELECT * FROM new_samples")
                con.unregister("new_samples")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        for _sid, labels, key in new_series:
            self._register(labels, key)
        if new_series:
            grow = np.full(len(self._labels) - len(self._head), _NO_HEAD, np.int64)
            self._head = np.concatenate([self._head, grow])
        if len(t):
            np.maximum.at(self._head, ids, t)

    # ----------------------------------------------------------------- reads

    def select(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> list[Series]:
        ids = self._match(matchers)
        if not ids:
            return []
        thin = hints is not None and hints.step_ms > 0 and hints.func is None
        cur = self._con.cursor()
        try:
            cur.register("wanted", pa.table({"id": pa.array(ids, pa.int32())}))
            if thin and hints is not None:
                # Keep the newest sample per step bucket: exactly what instant selectors
                # read (SelectHints). Bucket k > 0 holds the samples in
                # (start + (k-1)*step, start + k*step]; bucket 0 those at or before start.
                sql = (
                    "SELECT s.series_id, max(s.t) AS t, arg_max(s.v, s.t) AS v FROM samples s "
                    "JOIN wanted w ON s.series_id = w.id WHERE s.t BETWEEN ? AND ? "
                    "GROUP BY s.series_id, greatest(ceil((s.t - ?) / ?), 0) ORDER BY 1, 2"
                )
                params: list[int] = [mint_ms, maxt_ms, hints.start_ms, hints.step_ms]
            else:
                sql = (
                    "SELECT s.series_id, s.t, s.v FROM samples s JOIN wanted w "
                    "ON s.series_id = w.id WHERE s.t BETWEEN ? AND ? ORDER BY 1, 2"
                )
                params = [mint_ms, maxt_ms]
            cols = cur.execute(sql, params).fetchnumpy()
        finally:
            cur.close()
        sids = np.asarray(cols["series_id"], np.int64)
        ts = np.asarray(cols["t"], np.int64)
        vs = np.asarray(cols["v"], np.float64)
        if len(sids) == 0:
            return []
        starts = np.flatnonzero(np.concatenate(([True], sids[1:] != sids[:-1])))
        ends = np.append(starts[1:], len(sids))
        out = [
            Series(dict(self._labels[int(sids[a])]), ts[a:b].copy(), vs[a:b].copy())
            for a, b in zip(starts, ends, strict=True)
        ]
        out.sort(key=lambda s: sorted(s.labels.items()))
        return out

    def series(
        self, matchers: Sequence[Matcher], mint_ms: int | None = None, maxt_ms: int | None = None
    ) -> list[dict[str, str]]:
        ids = self._match(matchers)
        if ids and (mint_ms is not None or maxt_ms is not None):
            lo = mint_ms if mint_ms is not None else np.iinfo(np.int64).min
            hi = maxt_ms if maxt_ms is not None else np.iinfo(np.int64).max
            cur = self._con.cursor()
            try:
                cur.register("wanted", pa.table({"id": pa.array(ids, pa.int32())}))
                rows = cur.execute(
                    "SELECT DISTINCT w.id FROM wanted w JOIN samples s ON s.series_id = w.id "
                    "WHERE s.t BETWEEN ? AND ?",
                    [int(lo), int(hi)],
                ).fetchall()
            finally:
                cur.close()
            ids = [r[0] for r in rows]
        out = [dict(self._labels[i]) for i in ids]
        out.sort(key=lambda lab: sorted(lab.items()))
        return out

    def label_names(self, matchers: Sequence[Matcher] = ()) -> list[str]:
        return sorted({n for i in self._match(matchers) for n in self._labels[i]})

    def label_values(self, name: str, matchers: Sequence[Matcher] = ()) -> list[str]:
        return sorted(
            {self._labels[i][name] for i in self._match(matchers) if name in self._labels[i]}
        )

    def delete_before(self, t_ms: int) -> int:
        with self._lock:
            row = self._con.execute("DELETE FROM samples WHERE t < ?", [t_ms]).fetchone()
        return int(row[0]) if row else 0

    def stats(self) -> StoreStats:
        cur = self._con.cursor()
        try:
            row = cur.execute("SELECT count(*), min(t), max(t) FROM samples").fetchone()
        finally:
            cur.close()
        assert row is not None
        size = 0
        if self.path != ":memory:":
            for suffix in ("", ".wal"):
                p = self.path + suffix
                size += os.path.getsize(p) if os.path.exists(p) else 0
        return StoreStats(len(self._labels), int(row[0]), row[1], row[2], size)

    # ----------------------------------------------------------------- records

    def upsert_jobs(self, jobs: Sequence[Job]) -> int:
        if not jobs:
            return 0
        latest = {(j.cluster, j.id): j for j in jobs}
        table = pa.Table.from_pylist([_job_row(j) for j in latest.values()], schema=_JOB_SCHEMA)
        with self._lock:
            con = self._con
            con.execute("BEGIN TRANSACTION")
            try:
                con.register("incoming", table)
                con.execute(
                    "DELETE FROM jobs WHERE (cluster, id) IN (SELECT (cluster, id) FROM incoming)"
                )
                con.execute("INSERT INTO jobs SELECT * FROM incoming")
                con.unregister("incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return len(latest)

    def jobs(
        self,
        *,
        states: Sequence[str] = (),
        team: str | None = None,
        active_between: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append("state IN (SELECT unnest(?))")
            params.append([str(s) for s in states])
        if team is not None:
            where.append("team = ?")
            params.append(team)
        if active_between is not None:
            where.append("submit_ms <= ? AND (end_ms IS NULL OR end_ms >= ?)")
            params.extend([active_between[1], active_between[0]])
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submit_ms DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._fetch_jobs(sql, params)

    def job(self, job_id: str, cluster: str = "default") -> Job | None:
        found = self._fetch_jobs(
            "SELECT * FROM jobs WHERE cluster = ? AND id = ?", [cluster, job_id]
        )
        return found[0] if found else None

    def _fetch_jobs(self, sql: str, params: list[Any]) -> list[Job]:
        cur = self._con.cursor()
        try:
            result = cur.execute(sql, params)
            names = [d[0] for d in result.description]
            rows = result.fetchall()
        finally:
            cur.close()
        return [_job_from_row(dict(zip(names, r, strict=True))) for r in rows]

    def add_events(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        table = pa.Table.from_pylist(
            [
                {
                    "time_ms": _ms(e.time),
                    "kind": e.kind,
                    "subject": e.subject,
                    "attrs": json.dumps(e.attrs, sort_keys=True, default=str),
                }
                for e in events
            ],
            schema=_EVENT_SCHEMA,
        )
        with self._lock:
            self._con.register("incoming_events", table)
            self._con.execute("INSERT INTO events SELECT * FROM incoming_events")
            self._con.unregister("incoming_events")
        return len(events)

    def events(
        self, *, kinds: Sequence[str] = (), since_ms: int | None = None, limit: int | None = None
    ) -> list[Event]:
        where: list[str] = []
        params: list[Any] = []
        if kinds:
            where.append("kind IN (SELECT unnest(?))")
            params.append(list(kinds))
        if since_ms is not None:
            where.append("time_ms >= ?")
            params.append(since_ms)
        sql = "SELECT time_ms, kind, subject, attrs FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time_ms DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cur = self._con.cursor()
        try:
            rows = cur.execute(sql, params).fetchall()
        finally:
            cur.close()
        return [
            Event(time=_utc(r[0]), kind=r[1], subject=r[2], attrs=json.loads(r[3] or "{}"))
            for r in rows
        ]

    # ----------------------------------------------------------------- lifecycle

    def checkpoint(self) -> None:
        """Fold the WAL into the database file (compresses freshly appended row groups)."""
        with self._lock:
            self._con.execute("CHECKPOINT")

    def close(self) -> None:
        with self._lock:
            self._con.close()


class _Appender:
    """Buffers rows and batches; :meth:`commit` appends them as one batch."""

    def __init__(self, store: DuckDBStore) -> None:
        self._store = store
        self._parts: list[SampleBatch] = []
        self._rows: list[tuple[Mapping[str, str], int, float]] = []
        self._done = False

    def _check_open(self) -> None:
        if self._done:
            raise InvalidBatchError("appender already committed or rolled back")

    def append(self, labels: Mapping[str, str], t_ms: int, value: float) -> None:
        self._check_open()
        self._rows.append((labels, t_ms, value))

    def append_batch(self, batch: SampleBatch) -> None:
        self._check_open()
        self._parts.append(batch)

    def commit(self) -> AppendResult:
        self._check_open()
        self._done = True
        parts = list(self._parts)
        if self._rows:
            parts.append(SampleBatch.from_rows(self._rows))
        return self._store.append(SampleBatch.concat(parts))

    def rollback(self) -> None:
        self._done = True
        self._parts.clear()
        self._rows.clear()


def _job_row(j: Job) -> dict[str, Any]:
    return {
        "cluster": j.cluster, "id": j.id, "name": j.name, "team": j.team, "user": j.user,
        "workload": j.workload, "tier": j.tier, "state": j.state.value,
        "submit_ms": _ms(j.submit), "start_ms": _ms(j.start), "end_ms": _ms(j.end),
        "gpus": j.gpus, "nodes": j.nodes, "gpu_uuids": j.gpu_uuids, "exit_code": j.exit_code,
        "pending_reason": j.pending_reason, "restarts": j.restarts, "image": j.image,
        "source": j.source,
    }  # fmt: skip


def _job_from_row(r: dict[str, Any]) -> Job:
    return Job(
        id=r["id"], cluster=r["cluster"], name=r["name"] or "", team=r["team"], user=r["user"],
        workload=r["workload"], tier=r["tier"], state=JobState(r["state"]),
        submit=_utc(r["submit_ms"]), start=_dt(r["start_ms"]), end=_dt(r["end_ms"]),
        gpus=r["gpus"], nodes=list(r["nodes"] or []), gpu_uuids=list(r["gpu_uuids"] or []),
        exit_code=r["exit_code"], pending_reason=r["pending_reason"], restarts=r["restarts"],
        image=r["image"], source=r["source"],
    )  # fmt: skip
