"""The catalog is the single source of metric names: the code may use no other ``fleet_…`` name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetscope import catalog

SRC = Path(__file__).resolve().parents[1] / "src" / "fleetscope"
NAME = re.compile(r"\bfleet_[a-z0-9_]+")


def _used_names() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*")):
        if path.suffix not in {".py", ".html", ".js", ".toml", ".yml", ".yaml"}:
            continue
        if path.name == "catalog.py":
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for name in NAME.findall(line):
                used.setdefault(name, []).append(f"{path.relative_to(SRC)}:{lineno}")
    return used


def test_source_uses_only_catalog_names() -> None:
    used = _used_names()
    assert used, "the scan found no metric names at all: the scanner is broken"
    unknown = {n: where for n, where in used.items() if catalog.get(n) is None}
    assert not unknown, f"metric names not in catalog.py: {unknown}"


def test_scan_catches_a_name_missing_from_the_catalog() -> None:
    assert NAME.findall('q = "rate(fleet_gpu_bogus_total[5m])"') == ["fleet_gpu_bogus_total"]
    assert catalog.get("fleet_gpu_bogus_total") is None


@pytest.mark.parametrize("metric", list(catalog.METRICS.values()), ids=lambda m: m.name)
def test_catalog_entries_follow_the_conventions(metric: catalog.Metric) -> None:
    assert metric.name.startswith("fleet_")
    assert metric.help and (metric.help[0].isupper() or metric.help[0].isdigit())
    if metric.type == "counter":
        assert metric.name.endswith("_total")
    elif metric.name.endswith("_total"):
        # DESIGN.md names one gauge this way: the number of GPUs a scheduler manages.
        assert metric.name == "fleet_sched_gpus_total"
    if metric.area == "gpu":
        assert metric.labels[:4] == catalog.GPU_LABELS
    assert len(set(metric.labels)) == len(metric.labels)


def test_design_metrics_are_all_present() -> None:
    design = (Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md").read_text()
    table = design.split("## Canonical metrics")[1].split("Exporter normalization")[0]
    names: set[str] = set()
    for token in re.findall(r"`(fleet_[a-z0-9_{},*]+)", table):
        # drop a trailing label list (`{type}`, `{…`), then expand name alternatives
        # such as `fleet_disk_{read,written}_bytes_total`
        token = re.sub(r"\{[a-z_,]*\}?$", "", token)
        parts = re.split(r"\{([a-z_,]+)\}", token)
        variants = [""]
        for i, part in enumerate(parts):
            options = part.split(",") if i % 2 else [part]
            variants = [v + o for v in variants for o in options]
        names.update(v for v in variants if "*" not in v)
    assert len(names) > 60
    missing = sorted(n for n in names if n not in catalog.METRICS)
    assert not missing, f"DESIGN.md metrics missing from the catalog: {missing}"


def test_histogram_series_resolve_to_their_metric() -> None:
    metric = catalog.get("fleet_inference_ttft_seconds_bucket")
    assert metric is not None and metric.type == "histogram"
    assert catalog.get("fleet_gpu_power_watts_bucket") is None
