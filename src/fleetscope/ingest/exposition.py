"""Prometheus text exposition (format 0.0.4) and OpenMetrics 1.0 → :class:`SampleBatch`.

Parsing is prometheus_client's parser. Samples without a timestamp get ``now_ms``; explicit
timestamps are kept (milliseconds in the text format, seconds in OpenMetrics). Extra labels are
added to every sample: by default they replace a scraped label of the same name (as
VictoriaMetrics' ``extra_label`` does); with ``rename_conflicts`` the scraped one is kept as
``exported_<name>`` (Prometheus' ``honor_labels: false``). Errors raise
:class:`~fleetscope.ingest.IngestError` with the line number when one line is to blame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from fleetscope.ingest.validate import IngestError
from fleetscope.store import METRIC_NAME, SampleBatch

OPENMETRICS_TYPE = "application/openmetrics-text"

Families = Callable[[str], Iterable[Any]]


def is_openmetrics(content_type: str | None) -> bool:
    """True when a Content-Type header names OpenMetrics."""
    return bool(content_type) and OPENMETRICS_TYPE in (content_type or "").lower()


def _locate(text: str, families: Families, openmetrics: bool) -> str:
    """Line number and text of the first line that fails to parse alone ('' if none does)."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            list(families(line + ("\n# EOF\n" if openmetrics else "\n")))
        except ValueError:
            return f" at line {number}: {line[:200]!r}"
    return ""


def parse(
    text: str,
    now_ms: int,
    extra_labels: Mapping[str, str] | None = None,
    *,
    openmetrics: bool = False,
    rename_conflicts: bool = False,
) -> SampleBatch:
    """Parse an exposition into a batch (see the module docstring for timestamps and labels)."""
    families = openmetrics_families if openmetrics else text_families
    extra = dict(extra_labels or {})
    rows: list[tuple[dict[str, str], int, float]] = []
    try:
        for family in families(text):
            for sample in family.samples:
                labels = dict(sample.labels)
                for name, value in extra.items():
                    if rename_conflicts and name in labels:
                        labels[f"exported_{name}"] = labels[name]
                    labels[name] = value
                labels[METRIC_NAME] = sample.name
                ts = sample.timestamp
                t_ms = now_ms if ts is None else round(float(ts) * 1000)
                rows.append((labels, t_ms, float(sample.value)))
    except ValueError as e:
        where = _locate(text, families, openmetrics)
        kind = "OpenMetrics" if openmetrics else "text exposition"
        raise IngestError(f"cannot parse {kind}{where}: {e}") from None
    return SampleBatch.from_rows(rows)
