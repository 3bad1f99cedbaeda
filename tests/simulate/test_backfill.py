"""Backfill: same series as the live collectors, deterministic, and consistent with the ledger."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from fleetscope import catalog
from fleetscope.collect import Sample
from fleetscope.collect.attribution import AllocationCollector, job_of_pid
from fleetscope.collect.gpu import GPUCollector
from fleetscope.ingest.records import accept_jobs
from fleetscope.model import Job
from fleetscope.query.value import stale_mask
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.nvml import FakeNVML
from fleetscope.simulate.sim import Simulation
from fleetscope.store import METRIC_NAME, Matcher
from fleetscope.store.duckdb import DuckDBStore

from . import capture

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
Key = tuple[str, tuple[tuple[str, str], ...]]


class CaptureStore(capture.Capture):
    def at(self, t_ms: int) -> dict[Key, float]:
        """Every sample stamped ``t_ms``: (name, other labels) → value."""
        return {key(labels): v for labels, v in self.stamped(t_ms)}

    def canonical(self) -> tuple[list[Key], np.ndarray, np.ndarray, np.ndarray]:
        """All rows as (series keys, key ids, times, values), sorted by series then time."""
        keys: dict[Key, int] = {}
        ids, ts, vs = [], [], []
        for b in self.batches:
            local = np.array([keys.setdefault(key(s), len(keys)) for s in b.series], np.int64)
            ids.append(local[b.series_index])
            ts.append(b.t_ms)
            vs.append(b.values)
        order_keys = sorted(keys)
        rank = np.empty(len(keys), np.int64)
        for r, k in enumerate(order_keys):
            rank[keys[k]] = r
        i, t, v = rank[np.concatenate(ids)], np.concatenate(ts), np.concatenate(vs)
        o = np.lexsort((t, i))
        return order_keys, i[o], t[o], v[o]


def key(labels: dict[str, str]) -> Key:
    return labels[METRIC_NAME], tuple(sorted((k, v) for k, v in labels.items() if k != METRIC_NAME))


def live_samples(sim: Simulation) -> dict[Key, float]:
    """What the real collectors read from every fake node right now."""
    out: dict[Key, float] = {}
    for node in sim.nodes:
        assert node.root is not None
        gpu = GPUCollector(
            node.name,
            FakeNVML(node.devices),
            owner_of=functools.partial(job_of_pid, root=node.root),
        )
        alloc = AllocationCollector(node.name, gpu.identities, root=node.root)
        samples: Iterable[Sample] = [*gpu.collect(), *alloc.collect()]
        for s in samples:
            out[key({METRIC_NAME: s.name, **s.labels})] = s.value
    return out


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Simulation, CaptureStore]:
    root = tmp_path_factory.mktemp("roots")
    sim = Simulation(FleetSpec(gpus=32, seed=3, node_failures_per_day=0), root_dir=root)
    store = CaptureStore()
    sim.backfill(store, START, START + 30 * HOUR)
    return sim, store


def test_backfill_equals_the_live_collectors_at_the_same_moment(
    backfilled: tuple[Simulation, CaptureStore],
) -> None:
    sim, store = backfilled
    last = START + 30 * HOUR - sim.tick_ms
    # XID counters are an agent's own (they start at 0 with it, from the kernel log it tails),
    # so the backfill's cannot equal a fresh collector's; test_roots_io.py checks the log.
    xid = "fleet_gpu_xid_errors_total"
    wrote = {
        k: v for k, v in store.at(last).items() if k[0].startswith("fleet_gpu_") and k[0] != xid
    }
    read = live_samples(sim)

    # the same metrics, and per metric the same label-name tuples
    def shapes(d: dict[Key, float]) -> set[tuple[str, tuple[str, ...]]]:
        return {(name, tuple(k for k, _ in labels)) for name, labels in d}

    assert shapes(wrote) == shapes(read)
    # the very same series, and the same values (PCIe counters restart with a new collector)
    assert set(wrote) == set(read)
    restart = ("fleet_gpu_pcie_receive_bytes_total", "fleet_gpu_pcie_transmit_bytes_total")
    differ = {k for k in wrote if k[0] not in restart and wrote[k] != read[k]}
    assert not differ
    assert any(k[0] == "fleet_gpu_allocation" for k in wrote)
    assert any(k[0] == "fleet_gpu_process_memory_bytes" for k in wrote)
    assert all(catalog.get(name) is not None for name, _ in wrote)


def test_a_lost_node_reads_the_same_live_and_backfilled(tmp_path: Path) -> None:
    spec = FleetSpec(gpus=16, seed=12, node_failures_per_day=12)
    probe = Simulation(spec)
    probe.backfill(CaptureStore(), START, START + 24 * HOUR)
    tick = spec.tick_ms
    outages = sorted(
        (d0, d1)
        for node in probe.cluster.down
        for d0, d1 in node
        if d0 * tick > START + HOUR and d1 - d0 > 10
    )
    assert outages, "the scenario should include a node outage"
    d0 = outages[0][0]
    live = Simulation(spec, root_dir=tmp_path)
    live.backfill(CaptureStore(), START, (d0 - 5) * tick)
    collectors = []
    for node in live.nodes:
        assert node.root is not None
        gpu = GPUCollector(
            node.name,
            FakeNVML(node.devices),
            owner_of=functools.partial(job_of_pid, root=node.root),
        )
        collectors.append((gpu, AllocationCollector(node.name, gpu.identities, root=node.root)))
        gpu.collect()  # identities are known from here on
    live.advance((d0 + 5) * tick)
    read: dict[Key, float] = {}
    for gpu, alloc in collectors:
        for s in [*gpu.collect(), *alloc.collect()]:
            read[key({METRIC_NAME: s.name, **s.labels})] = s.value
    whole = CaptureStore()
    Simulation(spec).backfill(whole, START, (d0 + 6) * tick)
    wrote = {
        k: v
        for k, v in whole.at((d0 + 5) * tick).items()
        if k[0].startswith("fleet_gpu_") and k[0] != "fleet_gpu_xid_errors_total"
    }
    assert set(wrote) == set(read)
    assert sum(1 for (n, _), v in wrote.items() if n == "fleet_gpu_up" and v == 0) >= 8
    restart = ("fleet_gpu_pcie_receive_bytes_total", "fleet_gpu_pcie_transmit_bytes_total")
    assert {k for k in wrote if k[0] not in restart and wrote[k] != read[k]} == set()


def test_scheduler_samples_equal_the_backfilled_ones(
    backfilled: tuple[Simulation, CaptureStore],
) -> None:
    sim, store = backfilled
    last = START + 30 * HOUR - sim.tick_ms
    wrote = {k: v for k, v in store.at(last).items() if k[0].startswith("fleet_sched_")}
    live = sim.scheduler_samples(last)
    read = {
        key(live.series[int(i)]): float(v)
        for i, v in zip(live.series_index, live.values, strict=False)
    }
    assert read == wrote
    assert all(catalog.get(name) is not None for name, _ in read)
    total = read[("fleet_sched_gpus_total", (("cluster", "sim"),))]
    allocated = sum(v for (n, _), v in read.items() if n == "fleet_sched_gpus_allocated")
    held = sum(1 for (n, _) in store.at(last) if n == "fleet_gpu_allocation")
    assert total == 32 and allocated == held


def test_series_are_time_ordered_within_each_batch(
    backfilled: tuple[Simulation, CaptureStore],
) -> None:
    _, store = backfilled
    for b in store.batches:
        o = np.argsort(b.series_index, kind="stable")
        idx, t = b.series_index[o], b.t_ms[o]
        same = idx[1:] == idx[:-1]
        assert (t[1:][same] > t[:-1][same]).all()


def test_counters_never_decrease(backfilled: tuple[Simulation, CaptureStore]) -> None:
    _, store = backfilled
    keys, ids, _t, v = store.canonical()
    counters = np.array([k[0].endswith("_total") and "sched" not in k[0] for k in keys])
    same = ids[1:] == ids[:-1]
    rising = v[1:] >= v[:-1]
    assert rising[same & counters[ids[1:]]].all()


def test_chunking_and_stepping_do_not_change_the_samples() -> None:
    spec = FleetSpec(gpus=16, seed=9, node_failures_per_day=6)
    a, b = CaptureStore(), CaptureStore()
    Simulation(spec).backfill(a, START, START + 14 * HOUR)
    sim_b = Simulation(spec)
    sim_b.backfill(b, START, START + 5 * HOUR, chunk_s=1800)
    sim_b.backfill(b, START + 5 * HOUR, START + 14 * HOUR, chunk_s=7 * 3600)
    ka, ia, ta, va = a.canonical()
    kb, ib, tb, vb = b.canonical()
    assert ka == kb
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(va, vb)
    assert any(k[0] == "fleet_gpu_up" for k in ka)
    up = np.array([k[0] == "fleet_gpu_up" for k in ka])[ia]
    assert (va[up] == 0).any(), "the scenario should include a node down"


def test_live_stepping_continues_the_backfill_exactly() -> None:
    spec = FleetSpec(gpus=16, seed=2)
    tick = spec.tick_ms
    stepped = Simulation(spec)
    stepped.backfill(CaptureStore(), START, START + 2 * HOUR)
    for k in range(1, 41):
        stepped.advance(START + 2 * HOUR + k * tick)
    whole = Simulation(spec)
    whole.backfill(CaptureStore(), START, START + 2 * HOUR + 41 * tick)
    assert stepped.now_ms == whole.now_ms
    assert stepped.devices == whole.devices
    assert stepped.jobs() == whole.jobs()


def test_same_seed_same_jobs_other_seed_other_jobs() -> None:
    def jobs(seed: int) -> list[Job]:
        sim = Simulation(FleetSpec(gpus=16, seed=seed))
        sim.backfill(CaptureStore(), START, START + 6 * HOUR)
        return sim.jobs()

    assert jobs(4) == jobs(4)
    assert jobs(4) != jobs(5)


def test_ledger_equals_the_allocation_samples(tmp_path: Path) -> None:
    sim = Simulation(FleetSpec(gpus=16, seed=6))
    store = DuckDBStore(":memory:")
    try:
        sim.backfill(
            store,
            START,
            START + 26 * HOUR,
            records_sink=lambda jobs: accept_jobs(store, [j.model_dump(mode="json") for j in jobs]),
        )
        lo, hi = START + 2 * HOUR + 7 * 1000, START + 25 * HOUR  # a window not on ticks
        ledger = sim.ledger(lo, hi)
        got: dict[str, float] = defaultdict(float)
        markers = 0
        for s in store.select([Matcher.equal(METRIC_NAME, "fleet_gpu_allocation")], lo, hi - 1):
            stale = stale_mask(s.values)  # a marker is no sample: it does not count
            got[s.labels["team"]] += int((~stale).sum()) * sim.tick_ms / HOUR
            markers += int(stale.sum())
        assert markers > 0
        assert set(ledger) == {t.name for t in sim.fleet.teams}
        assert sum(ledger.values()) > 0
        for team, hours in ledger.items():
            assert got[team] == pytest.approx(hours, rel=0.01, abs=0.01)
        by_job = sim.ledger(lo, hi, by="id")
        assert sum(by_job.values()) == pytest.approx(sum(ledger.values()))
        stored = {j.id: j for j in store.jobs(limit=None)}
        assert set(by_job) <= set(stored)
        assert all(j.cluster == "sim" and j.source == "sim" for j in stored.values())
    finally:
        store.close()


def test_ledger_refuses_unknown_keys() -> None:
    with pytest.raises(ValueError, match="by must be one of"):
        Simulation(FleetSpec(gpus=8)).ledger(0, 1, by="colour")
