"""Calibration: the fitted distributions reproduce the published Helios figures."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fleetscope.model import JobState
from fleetscope.simulate.calibration import (
    Calibration,
    CalibrationError,
    GpuSizes,
    LogNormal,
    load,
)
from fleetscope.simulate.fleet import FleetSpec, build
from fleetscope.simulate.jobs import Workload

HELIOS = load()


def test_default_is_the_helios_row() -> None:
    c = HELIOS
    assert (c.gpus_median, c.gpus_mean) == (1, 3.7)
    assert (c.run_median_s, c.run_mean_s) == (206, 6652)
    assert (c.queue_median_s, c.queue_mean_s) == (0, 862)
    assert (c.failed, c.cancelled) == (0.155, 0.221)


def test_unclipped_lognormal_uses_the_closed_form() -> None:
    d = LogNormal.fit(206, 6652)
    assert d.sigma == pytest.approx(math.sqrt(2 * math.log(6652 / 206)))
    assert d.median == pytest.approx(206) and d.mean == pytest.approx(6652)


def test_run_seconds_sample_matches_median_and_mean() -> None:
    d = HELIOS.run_seconds()
    assert d.cap == 7 * 86_400
    assert d.median == pytest.approx(206) and d.mean == pytest.approx(6652)
    x = d.sample(np.random.default_rng(1), 2_000_000)
    assert np.median(x) == pytest.approx(206, rel=0.02)
    assert x.mean() == pytest.approx(6652, rel=0.03)
    assert x.max() <= 7 * 86_400
    assert x.mean() / np.median(x) > 10  # heavy-tailed, as DESIGN.md says


@pytest.mark.parametrize(
    "cap",
    [
        pytest.param(None, id="trace-support"),
        pytest.param(64, id="fleet-64"),
        pytest.param(32, id="half-of-64"),
        pytest.param(16, id="fleet-16"),
    ],
)
def test_gpu_sizes_keep_median_one_and_mean(cap: int | None) -> None:
    sizes = HELIOS.gpus(cap)
    assert sizes.median == 1
    assert sizes.mean == pytest.approx(3.7)
    assert all(s & (s - 1) == 0 for s in sizes.sizes)
    if cap is not None:
        assert max(sizes.sizes) <= cap
    x = sizes.sample(np.random.default_rng(2), 1_000_000)
    assert np.median(x) == 1
    assert x.mean() == pytest.approx(3.7, rel=0.02)


def test_gpu_sizes_are_heavy_tailed() -> None:
    p = dict(zip(HELIOS.gpus(32).sizes, HELIOS.gpus(32).probs, strict=True))
    assert p[1] > 0.5
    assert p[2] > p[4] > p[8] > p[16] > p[32] > 0


def test_capping_that_cannot_keep_the_mean_stays_a_distribution() -> None:
    sizes = GpuSizes.power_law(3.7, 1024).capped(2, 3.7)
    assert sizes.sizes == (1, 2)
    assert sum(sizes.probs) == pytest.approx(1)
    assert sizes.mean < 3.7


def test_workload_outcomes_and_runs_match_the_calibration() -> None:
    workload = Workload(build(FleetSpec(seed=5)), HELIOS)
    draws = [d for day in range(20_454, 20_514) for d in workload.day_arrivals(day)]
    n = len(draws)
    assert n > 7_000
    states = Counter(d.outcome for d in draws)
    failed = states[JobState.FAILED] + states[JobState.TIMEOUT] + states[JobState.OUT_OF_MEMORY]
    assert failed / n == pytest.approx(0.155, abs=0.015)
    assert states[JobState.CANCELLED] / n == pytest.approx(0.221, abs=0.015)
    assert states[JobState.TIMEOUT] / failed == pytest.approx(0.1, abs=0.03)
    runs = np.array([d.run_ticks for d in draws]) * 15
    assert abs(np.median(runs) - 206) <= 15  # one tick: runs fall on ticks
    assert runs.mean() == pytest.approx(6652, rel=0.15)
    gpus = np.array([d.gpus for d in draws])
    assert np.median(gpus) == 1
    assert gpus.mean() == pytest.approx(3.7, rel=0.1)


def test_arrival_rate_targets_the_allocation() -> None:
    c = HELIOS
    rate = c.arrival_rate_per_s(64, 6, 32)
    assert rate * c.typical_gpu_seconds(32) == pytest.approx(0.7 * 64 - 6)
    assert c.typical_gpu_seconds(32) < c.gpus(32).mean * c.run_seconds().mean
    assert c.arrival_rate_per_s(64, 64, 32) == 0


def test_load_any_file(tmp_path: Path) -> None:
    path = tmp_path / "philly.toml"
    path.write_text(
        'name = "other"\n[gpus]\nmedian = 1\nmean = 1.9\nmax = 128\n'
        "[run_seconds]\nmedian = 600\nmean = 20000\n"
        "[queue_seconds]\nmedian = 30\nmean = 4000\n"
        "[outcomes]\nfailed = 0.3\ncancelled = 0.1\n"
    )
    c = load(path)
    assert isinstance(c, Calibration)
    assert c.name == "other" and c.run_max_s is None and c.target_allocation == 0.7
    assert c.gpus().mean == pytest.approx(1.9)
    assert c.run_seconds().mean == pytest.approx(20000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("name = 'x'\n", r"\[gpus\]", id="missing-table"),
        pytest.param(
            "[gpus]\nmedian = 1\nmean = 'many'\n[run_seconds]\n[queue_seconds]\n[outcomes]\n",
            "gpus.mean",
            id="not-a-number",
        ),
        pytest.param(
            "[gpus]\nmedian = 1\nmean = 3\n[run_seconds]\nmedian = 10\nmean = 100\n"
            "[queue_seconds]\nmedian = 0\nmean = 1\n[outcomes]\nfailed = 0.8\ncancelled = 0.5\n",
            "fractions",
            id="fractions-over-one",
        ),
        pytest.param(
            "[gpus]\nmedian = 1\nmean = 3\n[run_seconds]\nmedian = 100\nmean = 10\n"
            "[queue_seconds]\nmedian = 0\nmean = 1\n[outcomes]\nfailed = 0.1\ncancelled = 0.1\n",
            "median ≤ mean",
            id="median-above-mean",
        ),
        pytest.param("[gpus\n", "cannot read", id="bad-toml"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=message):
        load(path)
