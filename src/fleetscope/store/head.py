"""The embedded store's head in memory: the samples of its ``samples`` table, by series.

The head table holds the last hours of samples in arrival order: every scrape appends one row
per series, so a read of one metric's recent samples scans the whole table (three million rows
for 256 GPUs) for the few it wants, and DuckDB then groups them again. Prometheus and
VictoriaMetrics serve recent data from memory; so does this: :class:`Head` keeps the same rows
sorted by ``(series, time)`` with each series' first position, so a read takes the wanted
series' rows by position (~1 ms for 100 k rows) and the store reduces them with NumPy.

The table stays the durable copy (and what compaction moves into runs); the store loads this
copy from it when it opens and follows each committed append, compaction move and retention
deletion with :meth:`Head.add` and :meth:`Head.drop`. Memory: 24 bytes a sample (~70 MB for
the bench's 256 GPUs' three hours), up to ``limit`` rows: a head that grows past it (a backfill
of days written before a compaction) is *incomplete*: the copy is freed and readers read the
table, as they did before this copy existed, until the store, once compaction has shrunk the
table, loads it again.

New rows go to a *tail* in arrival order and are folded into the sorted part once the tail
reaches an eighth of it, so an append costs a copy of its own rows and a read masks at most
that eighth. One writer (the store holds its write lock); readers take a :class:`HeadView`, an
immutable snapshot (each change publishes a new state; the tail's buffers only grow past what
published states show), without a lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HEAD_ROWS", "Head", "HeadView", "Rows", "no_rows", "put_before", "sort_order"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Rows = tuple[I64, I64, F64]
"""Series ids, times and values, sorted by ``(series id, time)``."""

_MIN_FOLD = 65_536  # tail rows before a fold, at least
HEAD_ROWS = 24_000_000  # rows kept at most (~580 MB): three hours of ~33 k series at 15 s


def sort_order(sid: I64, t: I64) -> I64:
    """The order that sorts rows by ``(sid, t)``. Rows of one series usually come oldest
    first, so a stable sort by series alone is that order; a check finds when it is not."""
    order = np.argsort(sid, kind="stable")
    s, x = sid[order], t[order]
    if len(s) > 1 and ((s[1:] == s[:-1]) & (x[1:] < x[:-1])).any():
        order = np.lexsort((t, sid))
    return order


def no_rows() -> Rows:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)


def put_before(a: Rows, b: Rows, at: I64) -> Rows:
    """The rows of ``a`` with each row of ``b`` put before ``a``'s row ``at[i]`` (``at``
    ascending, as for ``b`` sorted like ``a``): ``np.insert`` without its own sort of ``at``."""
    placed = at + np.arange(len(at))  # where b's rows land
    old = np.ones(len(a[0]) + len(at), np.bool_)
    old[placed] = False

    def merged(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out = np.empty(len(old), x.dtype)
        out[old], out[placed] = x, y
        return out

    return merged(a[0], b[0]), merged(a[1], b[1]), merged(a[2], b[2])


def _nothing(*, complete: bool = True) -> HeadView:
    return HeadView(*no_rows(), np.zeros(1, np.int64), *no_rows(), 0, complete=complete)


@dataclass(frozen=True)
class HeadView:
    """A snapshot of the head: sorted rows with each series' first position, and the tail."""

    sid: I64
    t: I64
    v: F64
    starts: I64  # series i: rows starts[i] … starts[i + 1] (series beyond: none)
    tail_sid: I64  # buffers: only the first ``tail_n`` rows belong to this snapshot
    tail_t: I64
    tail_v: F64
    tail_n: int
    complete: bool = True  # False: the head outgrew the limit; read the table instead

    def __len__(self) -> int:
        return len(self.t) + self.tail_n

    def rows(self, ids: I64, mint: int, maxt: int) -> Rows:
        """The samples of series ``ids`` (sorted, distinct) in ``[mint, maxt]``."""
        ids = np.asarray(ids, np.int64)
        known = ids[ids < len(self.starts) - 1]
        first, end = self.starts[known], self.starts[known + 1]
        sizes = end - first
        total = int(sizes.sum())
        if total:
            at = np.repeat(first - np.cumsum(sizes) + sizes, sizes) + np.arange(total)
            at = at[(self.t[at] >= mint) & (self.t[at] <= maxt)]
            sid, t, v = self.sid[at], self.t[at], self.v[at]
        else:
            sid, t, v = no_rows()
        if not self.tail_n:
            return sid, t, v
        tail_sid, tail_t = self.tail_sid[: self.tail_n], self.tail_t[: self.tail_n]
        wanted = np.zeros(max(int(ids[-1]) if len(ids) else 0, int(tail_sid.max())) + 1, bool)
        wanted[ids] = True
        keep = np.flatnonzero(wanted[tail_sid] & (tail_t >= mint) & (tail_t <= maxt))
        if not len(keep):
            return sid, t, v
        sid = np.concatenate([sid, tail_sid[keep]])
        t = np.concatenate([t, tail_t[keep]])
        v = np.concatenate([v, self.tail_v[keep]])
        order = sort_order(sid, t)
        return sid[order], t[order], v[order]


class Head:
    """The head's samples in memory (see the module docstring). Changes come from one writer
    at a time; :meth:`view` may be called from any thread."""

    def __init__(self, limit: int = HEAD_ROWS) -> None:
        self.limit = limit
        self._view = _nothing()

    def view(self) -> HeadView:
        return self._view

    def __len__(self) -> int:
        return len(self._view)

    @property
    def complete(self) -> bool:
        """Whether this holds every row of the table (else readers read the table)."""
        return self._view.complete

    def load(self, sid: I64, t: I64, v: F64) -> None:
        """Start over with these rows (any order)."""
        if len(sid) > self.limit:
            self.give_up()
        else:
            self._publish(np.asarray(sid, np.int64), np.asarray(t, np.int64), np.asarray(v))

    def add(self, sid: I64, t: I64, v: F64) -> None:
        """Take in committed rows."""
        k = len(sid)
        h = self._view
        if not k or not h.complete:
            return
        if len(h) + k > self.limit:
            self.give_up()
            return
        n = h.tail_n
        tail = h.tail_sid, h.tail_t, h.tail_v
        if n + k > len(tail[0]):  # new buffers; the old ones stay as published views see them
            size = max(2 * len(tail[0]), n + k, 4096)
            tail = (
                np.concatenate([tail[0][:n], np.empty(size - n, np.int64)]),
                np.concatenate([tail[1][:n], np.empty(size - n, np.int64)]),
                np.concatenate([tail[2][:n], np.empty(size - n)]),
            )
        tail[0][n : n + k], tail[1][n : n + k], tail[2][n : n + k] = sid, t, v
        if n + k < max(_MIN_FOLD, len(h.t) // 8):
            self._view = HeadView(h.sid, h.t, h.v, h.starts, *tail, n + k)
        else:
            self._fold(tail[0][: n + k], tail[1][: n + k], tail[2][: n + k])

    def drop(self, *, until: int | None = None, before: int | None = None) -> None:
        """Forget the rows at or before ``until`` (moved into runs), or before ``before``
        (past retention). What is left stays in order: no sort."""
        h = self._view
        if not h.complete:
            return
        tail_t = h.tail_t[: h.tail_n]
        if until is not None:
            keep, keep_tail = h.t > until, tail_t > until
        else:
            assert before is not None
            keep, keep_tail = h.t >= before, tail_t >= before
        if keep.all() and keep_tail.all():
            return
        sid = h.sid[keep]
        starts = np.searchsorted(sid, np.arange(len(h.starts)))
        tail = h.tail_sid[: h.tail_n][keep_tail], tail_t[keep_tail], h.tail_v[: h.tail_n][keep_tail]
        self._view = HeadView(sid, h.t[keep], h.v[keep], starts, *tail, len(tail[0]))

    def _fold(self, sid: I64, t: I64, v: F64) -> None:
        """Put the tail's rows (``sid``, ``t``, ``v``) into the sorted ones: sorted themselves
        (few), then each series' after its sorted rows, which they follow in time; should one
        not (a series' rows out of order), everything is sorted again."""
        h = self._view
        order = sort_order(sid, t)
        sid, t, v = sid[order], t[order], v[order]
        size = max(len(h.starts) - 1, int(sid[-1]) + 1)
        starts = np.concatenate([h.starts, np.full(size + 1 - len(h.starts), len(h.t))])
        at = starts[sid + 1]  # after the series' sorted rows
        held = at > starts[sid]  # series with sorted rows: are their tail rows all newer?
        if (h.t[at[held] - 1] >= t[held]).any():
            self._publish(np.concatenate([h.sid, sid]), np.concatenate([h.t, t]),
                          np.concatenate([h.v, v]))  # fmt: skip
            return
        starts = starts + np.searchsorted(sid, np.arange(size + 1))  # tail rows before each
        rows = put_before((h.sid, h.t, h.v), (sid, t, v), at)
        self._view = HeadView(*rows, starts, *no_rows(), 0)

    def give_up(self) -> None:
        """Past the limit: free the rows; readers read the table until :meth:`load`."""
        self._view = _nothing(complete=False)

    def _publish(self, sid: I64, t: I64, v: F64) -> None:
        order = sort_order(sid, t)
        sid, t, v = sid[order], t[order], v[order]
        size = int(sid[-1]) + 1 if len(sid) else 0
        starts = np.searchsorted(sid, np.arange(size + 1)).astype(np.int64)
        self._view = HeadView(sid, t, v, starts, *no_rows(), 0)
