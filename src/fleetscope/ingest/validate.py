"""Checks on a :class:`SampleBatch` before it reaches a store (Prometheus' ingest rules).

:func:`validate` refuses a batch, with an :class:`IngestError` naming the series and the
problem, when a series has no valid metric name, a label name is not a Prometheus label name
(``[a-zA-Z_][a-zA-Z0-9_]*``, and not starting with ``__`` other than ``__name__``), a timestamp
is negative or not an integer, or a series' timestamps go backwards in the order the rows were
sent. A row that repeats its series' previous timestamp with the same value (bit for bit, so a
resent stale marker counts) is dropped; with another value it is refused. Labels with empty
values are dropped, as Prometheus does (an empty label is the same as an absent one). The batch
given is never changed (its label sets may be shared with other batches): what is cleaned is a
new batch with new label sets.

Order is checked per entry of ``batch.series``; two entries with the same label set are merged
by the store, which applies the same duplicate rule across them.

Label checks are done once per label set: a batch numbered by the remote-write decoder
(``label_set_ids``) whose label sets have all passed before skips them, found in an array
indexed by number. A batch in which labels were dropped loses its numbers (its label sets are no
longer the ones numbered).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from fleetscope.store import METRIC_NAME, LabelSetIds, SampleBatch

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_CACHE_MAX = 100_000
_good_label_names: set[str] = {METRIC_NAME}
_good_metric_names: set[str] = set()
# (numbering, passed): passed[n] says label set n of that numbering passed, needing no cleaning
_passed: tuple[object, npt.NDArray[np.bool_]] = (None, np.zeros(0, bool))


class IngestError(ValueError):
    """Input refused at ingest; the message names the series and says what is wrong."""


def describe(labels: Mapping[str, str]) -> str:
    """A series in PromQL notation: ``name{a="1",b="2"}``."""
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != METRIC_NAME)
    return f"{labels.get(METRIC_NAME, '')}{{{rest}}}"


def _check_label_names(labels: Mapping[str, str]) -> None:
    for name in labels:
        if name in _good_label_names:
            continue
        if not LABEL_NAME.match(name):
            raise IngestError(f"invalid label name {name!r} in series {describe(labels)}")
        if name.startswith("__"):
            raise IngestError(
                f"label name {name!r} is reserved (starts with __) in series {describe(labels)}"
            )
        if len(_good_label_names) < _CACHE_MAX:
            _good_label_names.add(name)


def _check_metric_name(labels: Mapping[str, str]) -> None:
    name = labels.get(METRIC_NAME)
    if not name:
        raise IngestError(f"series without a metric name (__name__): {describe(labels)}")
    if not METRIC_NAME_RE.match(name):
        raise IngestError(f"invalid metric name {name!r} in series {describe(labels)}")
    if len(_good_metric_names) < _CACHE_MAX:
        _good_metric_names.add(name)


def _clean_series(series: list[dict[str, str]]) -> list[dict[str, str]]:
    out = series
    for i, labels in enumerate(series):
        if "" in labels.values():
            if out is series:
                out = list(series)
            labels = out[i] = {k: v for k, v in labels.items() if v != ""}
        if not _good_label_names.issuperset(labels):
            _check_label_names(labels)
        if labels.get(METRIC_NAME) not in _good_metric_names:
            _check_metric_name(labels)
    return out


def _checked_series(batch: SampleBatch) -> tuple[list[dict[str, str]], LabelSetIds | None]:
    """The batch's label sets, checked and cleaned, and the numbers that still describe them."""
    numbered = batch.label_set_ids
    if numbered is None:
        return _clean_series(batch.series), None
    ids = numbered.ids
    if ids.shape != (len(batch.series),) or (ids.size and int(ids.min()) < 0):
        raise IngestError("batch has label set numbers that do not match its series")
    numbering, passed = _passed
    if numbering is numbered.numbering and (
        not ids.size or (int(ids.max()) < len(passed) and passed[ids].all())
    ):
        return batch.series, numbered
    series = _clean_series(batch.series)
    if series is not batch.series:
        return series, None
    _remember_passed(numbered)
    return series, numbered


def _remember_passed(numbered: LabelSetIds) -> None:
    global _passed
    numbering, passed = _passed
    if numbering is not numbered.numbering:
        passed = np.zeros(0, bool)
    ids = numbered.ids
    if ids.size and int(ids.max()) >= len(passed):
        grown = np.zeros(max(int(ids.max()) + 1, 2 * len(passed)), bool)
        grown[: len(passed)] = passed
        passed = grown
    passed[ids] = True
    _passed = (numbered.numbering, passed)


def validate(batch: SampleBatch) -> SampleBatch:
    """The batch, cleaned (empty labels and exact repeats dropped), or :class:`IngestError`."""
    n = len(batch)
    if not (batch.series_index.shape[0] == n == batch.values.shape[0]):
        raise IngestError("batch columns have different lengths")
    if batch.t_ms.dtype.kind not in "iu":
        raise IngestError(f"timestamps must be integers (got {batch.t_ms.dtype})")
    series, ids = _checked_series(batch)
    if n == 0:
        return SampleBatch(series, batch.series_index, batch.t_ms, batch.values, ids)
    si = batch.series_index.astype(np.int64, copy=False)
    if si.min() < 0 or si.max() >= len(series):
        raise IngestError("batch refers to a series it does not contain")
    t = batch.t_ms.astype(np.int64, copy=False)
    negative = t < 0
    if negative.any():
        k = int(np.argmax(negative))
        raise IngestError(
            f"negative timestamp {int(t[k])} for series {describe(series[int(si[k])])}"
        )
    step = si[1:] - si[:-1]
    if (step > 0).all():  # every series once, in order (one sample per series): nothing to check
        return SampleBatch(series, batch.series_index, batch.t_ms, batch.values, ids)
    if (step >= 0).all():  # grouped by series already
        order = None
        s, ts, bits = si, t, batch.values.view(np.int64)
    else:
        order = np.argsort(si, kind="stable")
        s, ts, bits = si[order], t[order], batch.values.view(np.int64)[order]
    same = s[1:] == s[:-1]
    dt = ts[1:] - ts[:-1]
    back = same & (dt < 0)
    if back.any():
        k = int(np.argmax(back))
        raise IngestError(
            f"out of order sample for series {describe(series[int(s[k])])}: timestamp "
            f"{int(ts[k + 1])} comes after {int(ts[k])} in the batch"
        )
    repeat = same & (dt == 0)
    if not repeat.any():
        return SampleBatch(series, batch.series_index, batch.t_ms, batch.values, ids)
    clash = repeat & (bits[1:] != bits[:-1])
    if clash.any():
        k = int(np.argmax(clash))
        raise IngestError(
            f"duplicate timestamp {int(ts[k])} with different values for series "
            f"{describe(series[int(s[k])])}"
        )
    keep = np.ones(n, bool)
    dropped = np.flatnonzero(repeat) + 1
    keep[dropped if order is None else order[dropped]] = False
    return SampleBatch(series, batch.series_index[keep], batch.t_ms[keep], batch.values[keep], ids)
