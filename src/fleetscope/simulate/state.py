"""What a data directory remembers about the simulation that filled it.

A simulation is deterministic for (fleet spec, calibration, origin), so ``DATA/simulation.json``
keeps only those and how far the data goes (``until_ms``, the last tick written). That is enough
to continue after a restart without a second backfill, and to recompute the simulator's own
ledger (ground truth) for ``fleetscope simulate ledger`` — from another process, while the
server holds the store's file lock. The file is replaced atomically on every save.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fleetscope.simulate.calibration import load as load_calibration
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.live import NullSink
from fleetscope.simulate.sim import Progress, Simulation

STATE_FILE = "simulation.json"


@dataclass
class SimState:
    """The simulation behind a data directory. Times in epoch milliseconds."""

    gpus: int
    seed: int
    origin_ms: int  # where the backfill started (the simulation's origin)
    until_ms: int  # the last tick whose samples were handed to the store
    calibration: str | None = None  # path of a custom calibration file; None = Helios

    def save(self, data_dir: Path) -> None:
        path = data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, data_dir: Path) -> SimState | None:
        """The state saved in ``data_dir``, ``None`` if there is none; ``ValueError`` if the
        file is damaged."""
        path = data_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path} is damaged ({exc}); remove it to start over") from exc

    def simulation(self, root_dir: Path | None) -> Simulation:
        """A fresh simulation with this spec (not started yet)."""
        calibration = load_calibration(Path(self.calibration) if self.calibration else None)
        return Simulation(FleetSpec(gpus=self.gpus, seed=self.seed), calibration, root_dir)

    def replay(self, sim: Simulation, progress: Progress | None = None) -> None:
        """Bring a fresh ``sim`` to ``until_ms`` exactly as it was, writing nothing."""
        sim.backfill(NullSink(), self.origin_ms, self.until_ms + sim.tick_ms, progress=progress)
