"""GPU behaviour patterns: what each kind of job looks like on its GPUs over a day."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from fleetscope.model import JobState
from fleetscope.simulate.behaviour import GPU_IDLE, SW_POWER_CAP, Counters, Frame, noise, render
from fleetscope.simulate.fleet import FleetSpec, build
from fleetscope.simulate.jobs import Pattern, SimJob

DAY = 5760  # ticks of 15 s
K0 = 1_767_225_600_000 // 15_000  # 2026-01-01T00:00Z, a Thursday
FLEET = build(FleetSpec(gpus=8, model_mix=(("h100", 1.0),)))
H100 = FLEET.gpus[0].model


def holding(seq: int, gpus: list[int], pattern: int, level: float, mem: float, period: int = 200,
            start: int = K0, end: int = K0 + DAY) -> SimJob:  # fmt: skip
    return SimJob(
        seq=seq, name="t", team="vision", user="u", uid=1, workload="training", tier="production",
        gpus=len(gpus), submit=start, run_ticks=end - start, limit_ticks=end - start,
        outcome=JobState.COMPLETED, exit_code=0, patience_ticks=None, pattern=pattern,
        level=level, mem_frac=mem, period=period, phase=0, pcie_kbps=1_000_000,
        state=JobState.RUNNING, start=start, end=end, gpu_ids=gpus,
    )  # fmt: skip


JOBS = [
    holding(0, [0], Pattern.STEADY, 0.92, 0.8),
    holding(1, [1], Pattern.BURSTY, 0.35, 0.5, period=12),
    holding(2, [2], Pattern.IDLE, 0.0, 0.02),
    holding(3, [3], Pattern.INFERENCE, 0.8, 0.9),
    holding(4, [4], Pattern.NOTEBOOK, 0.1, 0.2),
    holding(5, [5, 6], Pattern.PARTIAL, 0.92, 0.8),
]  # GPU 7 is free


@pytest.fixture(scope="module")
def day() -> Frame:
    return render(FLEET, K0, K0 + DAY, JOBS, [[] for _ in FLEET.nodes])


def util(frame: Frame, gpu: int) -> npt.NDArray[np.float64]:
    return np.asarray(frame.util_pct[gpu] / 100, np.float64)


def test_steady_training_is_busy_and_power_capped(day: Frame) -> None:
    assert util(day, 0).mean() == pytest.approx(0.9, abs=0.04)
    assert (day.memory_used_bytes[0] > 0.75 * H100.memory_total_bytes).all()
    assert day.power_mw[0].mean() > 0.85 * H100.power_limit_mw
    assert (day.throttle_reasons[0] & SW_POWER_CAP).mean() > 0.3
    assert day.process[0].all()


def test_bursty_oscillates_around_a_third(day: Frame) -> None:
    u = util(day, 1)
    assert u.mean() == pytest.approx(0.35, abs=0.05)
    assert u.std() > 0.1


def test_idle_reservation_holds_memory_without_a_process(day: Frame) -> None:
    assert (day.util_pct[2] == 0).all()
    assert (day.memory_used_bytes[2] > 0).all() and not day.process[2].any()
    assert (day.throttle_reasons[2] & GPU_IDLE).all()


def test_inference_follows_the_day(day: Frame) -> None:
    hours = (day.ticks * 15 % 86_400) // 3600
    u = util(day, 3)
    assert u[hours == 15].mean() > u[hours == 3].mean() + 0.4
    assert (day.memory_used_bytes[3] >= 0.89 * H100.memory_total_bytes).all()


def test_notebook_is_mostly_idle(day: Frame) -> None:
    u = util(day, 4)
    assert 0.5 < (u == 0).mean() < 0.98 and u.max() > 0.3


def test_partial_job_leaves_its_second_gpu_idle(day: Frame) -> None:
    assert util(day, 5).mean() > 0.8
    assert (day.util_pct[6] == 0).all() and not day.process[6].any()


def test_free_gpu_idles_at_idle_power(day: Frame) -> None:
    assert (day.holder[7] == -1).all() and (day.util_pct[7] == 0).all()
    assert day.power_mw[7].mean() == pytest.approx(H100.idle_power_mw, rel=0.05)
    assert (day.memory_used_bytes[7] == 0).all()


def test_temperature_follows_power(day: Frame) -> None:
    assert day.temperature_c[0].mean() > day.temperature_c[7].mean() + 25
    r = np.corrcoef(day.power_mw[3].astype(float), day.temperature_c[3].astype(float))[0, 1]
    assert r > 0.9  # the inference GPU's power moves slowly with the day


def test_energy_integrates_power() -> None:
    counters = Counters.initial(FLEET)
    before = counters.energy_mj.copy()
    frame = render(FLEET, K0, K0 + 100, JOBS, [[] for _ in FLEET.nodes])
    cum = counters.integrate(FLEET, frame)
    np.testing.assert_array_equal(cum["energy_mj"][:, -1], before + frame.power_mw.sum(axis=1) * 15)
    np.testing.assert_array_equal(counters.energy_mj, cum["energy_mj"][:, -1])


def test_down_node_reads_nothing_and_uses_no_energy() -> None:
    down = [[(K0 + 10, K0 + 20)]]
    frame = render(FLEET, K0, K0 + 30, [], down)
    assert not frame.up[:, 10:20].any() and frame.up[:, :10].all() and frame.up[:, 20:].all()
    assert (frame.power_mw[:, 10:20] == 0).all()
    cum = Counters.initial(FLEET).integrate(FLEET, frame)
    rx = np.asarray(cum["pcie_rx_bytes"])
    assert (rx[:, 20] == rx[:, 9]).all()  # integration restarts after the gap


def test_blocks_render_the_same_values_however_cut() -> None:
    whole = render(FLEET, K0, K0 + 300, JOBS, [[] for _ in FLEET.nodes])
    parts = [
        render(FLEET, a, a + 100, JOBS, [[] for _ in FLEET.nodes]) for a in (K0, K0 + 100, K0 + 200)
    ]
    for name in ("util_pct", "power_mw", "temperature_c", "memory_used_bytes", "pcie_rx_kbps"):
        joined = np.concatenate([getattr(p, name) for p in parts], axis=1)
        np.testing.assert_array_equal(joined, getattr(whole, name))


def test_noise_is_uniform_and_deterministic() -> None:
    x = noise(1, np.arange(1000)[:, None], np.arange(1000)[None, :], 5)
    assert x.shape == (1000, 1000) and x.min() >= 0 and x.max() < 1
    assert x.mean() == pytest.approx(0.5, abs=0.01)
    np.testing.assert_array_equal(
        x, noise(1, np.arange(1000)[:, None], np.arange(1000)[None, :], 5)
    )
    assert not np.array_equal(x, noise(2, np.arange(1000)[:, None], np.arange(1000)[None, :], 5))
