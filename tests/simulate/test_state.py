"""The simulation state file: enough to rebuild the exact schedule after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetscope.simulate.state import STATE_FILE, SimState
from fleetscope.store import FakeMetricStore

DAY_MS = 86_400_000
ORIGIN = 1_790_000_000_000 // 15_000 * 15_000


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    state = SimState(gpus=16, seed=3, origin_ms=ORIGIN, until_ms=ORIGIN + DAY_MS)
    state.save(tmp_path)
    assert SimState.load(tmp_path) == state
    assert SimState.load(tmp_path / "elsewhere") is None


def test_a_damaged_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        SimState.load(tmp_path)


def test_replay_restores_the_schedule_and_the_ledger(tmp_path: Path) -> None:
    state = SimState(gpus=16, seed=1, origin_ms=ORIGIN, until_ms=ORIGIN)
    first = state.simulation(tmp_path / "a")
    first.backfill(FakeMetricStore(), ORIGIN, ORIGIN + DAY_MS // 4)
    assert first.now_ms is not None
    state.until_ms = first.now_ms

    again = state.simulation(None)
    state.replay(again)
    assert again.now_ms == first.now_ms
    window = (ORIGIN, ORIGIN + DAY_MS // 4)
    assert again.ledger(*window) == first.ledger(*window)
    assert sum(first.ledger(*window).values()) > 0
    assert [j.id for j in again.jobs()] == [j.id for j in first.jobs()]
