"""A sample sink for simulator tests: keeps every batch the simulation appends (a fake of the
store's ``append``); each test reads the batches its own way."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fleetscope.store import AppendResult, SampleBatch


class Capture:
    """Every batch appended, in order."""

    def __init__(self) -> None:
        self.batches: list[SampleBatch] = []

    def append(self, batch: SampleBatch) -> AppendResult:
        self.batches.append(batch)
        return AppendResult(len(batch), 0, 0)

    def stamped(self, t_ms: int) -> Iterator[tuple[dict[str, str], float]]:
        """The labels and value of every sample stamped ``t_ms``."""
        for b in self.batches:
            for k in np.flatnonzero(b.t_ms == t_ms):
                yield b.series[int(b.series_index[k])], float(b.values[k])
