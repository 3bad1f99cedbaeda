"""Checks on a :class:`SampleBatch` before it reaches a store (Prometheus' ingest rules).

:func:`validate` refuses a batch, with an :class:`IngestError` naming the series and the
problem, when a series has no valid metric name, a label name is not a Prometheus label name
(``[a-zA-Z_][a-zA-Z0-9_]*``, and not starting with ``__`` other than ``__name__``), a timestamp
is negative or not an integer, or a series' timestamps go backwards in the order the rows were
sent. A row that repeats its series' previous timestamp with the same value (bit for bit, so a
resent stale marker counts) is dropped; with another value it is refused. Labels with empty
values are dropped, as Prometheus does (an empty label is the same as an absent one).

Order is checked per entry of ``batch.series``; two entries with the same label set are merged
by the store, which applies the same duplicate rule across them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from fleetscope.store import METRIC_NAME, SampleBatch

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_CACHE_MAX = 100_000
_good_label_names: set[str] = {METRIC_NAME}
_good_metric_names: set[str] = set()


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


def validate(batch: SampleBatch) -> SampleBatch:
    """The batch, cleaned (empty labels and exact repeats dropped), or :class:`IngestError`."""
    n = len(batch)
    if not (batch.series_index.shape[0] == n == batch.values.shape[0]):
        raise IngestError("batch columns have different lengths")
    if batch.t_ms.dtype.kind not in "iu":
        raise IngestError(f"timestamps must be integers (got {batch.t_ms.dtype})")
    series = _clean_series(batch.series)
    if n == 0:
        return SampleBatch(series, batch.series_index, batch.t_ms, batch.values)
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
    grouped = bool((si[1:] >= si[:-1]).all())
    order = np.arange(n) if grouped else np.argsort(si, kind="stable")
    s, ts = si[order], t[order]
    bits = batch.values.view(np.int64)[order]
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
        return SampleBatch(series, batch.series_index, batch.t_ms, batch.values)
    clash = repeat & (bits[1:] != bits[:-1])
    if clash.any():
        k = int(np.argmax(clash))
        raise IngestError(
            f"duplicate timestamp {int(ts[k])} with different values for series "
            f"{describe(series[int(s[k])])}"
        )
    keep = np.ones(n, bool)
    keep[order[1:][repeat]] = False
    return SampleBatch(series, batch.series_index[keep], batch.t_ms[keep], batch.values[keep])
