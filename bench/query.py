"""Query benchmark: the embedded PromQL evaluator on a simulated fleet (not run in CI).

Backfills ``--gpus`` GPUs × ``--days`` days at the simulator's 15 s tick into a DuckDB file
(reused when it exists), then times range queries over the last ``--range-days`` days at
``--step`` seconds, separating the store's ``select`` from the evaluation:

    .venv/bin/python bench/query.py --db /tmp/fleet-bench.duckdb

Default queries are the overview page's: fleet utilization and GPU-hours per team.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from fleetscope.query.engine import Evaluator
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.sim import Simulation
from fleetscope.store import Matcher, SelectHints, Series
from fleetscope.store.duckdb import DuckDBStore

DAY_MS = 86_400_000
START_MS = 1_700_006_400_000 // DAY_MS * DAY_MS  # a fixed day, so reruns reuse the file
QUERIES = (
    "avg(fleet_gpu_utilization_ratio)",
    "sum by (team) (count_over_time(fleet_gpu_allocation[1h]))",
)


class TimedStore(DuckDBStore):
    """The DuckDB store, adding up the time spent in ``select``."""

    select_s = 0.0

    def select(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None = None,
    ) -> list[Series]:
        t0 = time.perf_counter()
        try:
            return super().select(matchers, mint_ms, maxt_ms, hints)
        finally:
            self.select_s += time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="/tmp/fleetscope-query-bench.duckdb")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--range-days", type=int, default=7)
    parser.add_argument("--step", type=int, default=300, help="seconds")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("query", nargs="*", default=list(QUERIES))
    args = parser.parse_args()

    end_ms = START_MS + args.days * DAY_MS
    if not Path(args.db).exists():
        store = DuckDBStore(args.db)
        t0 = time.perf_counter()
        stats = Simulation(FleetSpec(gpus=args.gpus)).backfill(store, START_MS, end_ms)
        store.checkpoint()
        store.close()
        print(f"backfill: {stats.samples:,} samples in {time.perf_counter() - t0:.1f} s")
    store = TimedStore(args.db)
    engine = Evaluator(store)
    start_ms = end_ms - args.range_days * DAY_MS
    for query in args.query:
        for _ in range(args.repeat):
            store.select_s = 0.0
            t0 = time.perf_counter()
            result = engine.range(query, start_ms, end_ms, args.step * 1000)
            total = time.perf_counter() - t0
            points = sum(len(s.t_ms) for s in result.series)
            print(
                f"{total:6.3f} s (select {store.select_s:.3f} s, evaluation "
                f"{total - store.select_s:.3f} s), {len(result.series)} series, "
                f"{points} points: {query}"
            )
    store.close()


if __name__ == "__main__":
    main()
