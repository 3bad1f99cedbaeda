"""The simulated mesh probe: the model's shape, the backfill's series, and the live agents'
real :class:`~fleetscope.collect.mesh.MeshProbe` reading the same values at the same ticks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetscope import catalog
from fleetscope.analyze import nodes
from fleetscope.collect.mesh import MeshProbe
from fleetscope.query.engine import Evaluator
from fleetscope.simulate import io
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.live import MESH_PORT, LiveFleet, SimMesh
from fleetscope.simulate.sim import Simulation
from fleetscope.store import METRIC_NAME, STALE_NAN, SampleBatch
from fleetscope.store.duckdb import DuckDBStore

from . import capture

HOUR = 3_600_000
DAY = 24 * HOUR
START = 1_767_225_600_000 + 3 * DAY  # 2026-01-04T00:00:00Z: a flaky link, then slow NFS twice
RTT, LOSS = "fleet_mesh_rtt_seconds", "fleet_mesh_probe_loss_ratio"
# 4 nodes of 2 GPUs (h100, h100, a100, l40s): 12 probed pairs; nodes fail now and then
SPEC = FleetSpec(gpus=8, gpus_per_node=2, seed=4, node_failures_per_day=2)
Key = tuple[str, str, str]  # metric, src, dst


class Capture(capture.Capture):
    """The simulation's samples; the mesh samples at one tick."""

    def at(self, t_ms: int) -> dict[Key, float | None]:
        return mesh_samples(self.batches, t_ms)


def mesh_samples(batches: list[SampleBatch], t_ms: int) -> dict[Key, float | None]:
    """(metric, src, dst) → value of the mesh samples at ``t_ms`` (a staleness marker: None)."""
    out: dict[Key, float | None] = {}
    for b in batches:
        for k in np.flatnonzero(b.t_ms == t_ms):
            labels = b.series[int(b.series_index[k])]
            if labels[METRIC_NAME] not in (RTT, LOSS):
                continue
            key = (labels[METRIC_NAME], labels["src"], labels["dst"])
            assert key not in out
            marker = b.values[k].tobytes() == np.float64(STALE_NAN).tobytes()
            out[key] = None if marker else float(b.values[k])
    return out


@pytest.fixture(scope="module")
def backfilled() -> tuple[Simulation, Capture]:
    """Two days in one block: the simulation's last I/O frame covers the whole of it."""
    sim = Simulation(SPEC)
    store = Capture()
    sim.backfill(store, START, START + 2 * DAY, chunk_s=2 * 86_400)
    return sim, store


def grid(store: Capture, name: str, sim: Simulation, ticks: np.ndarray) -> np.ndarray:
    """``(src, dst, K)`` values of ``name`` at ``ticks`` (node ids; NaN: no sample)."""
    tick_ms = SPEC.tick_ms
    n_nodes = len(sim.nodes)
    out = np.full((n_nodes, n_nodes, len(ticks)), np.nan)
    nodes = {n.name: i for i, n in enumerate(sim.nodes)}
    for b in store.batches:
        for i, labels in enumerate(b.series):
            if labels[METRIC_NAME] != name:
                continue
            rows = (b.series_index == i) & ~np.isnan(b.values)
            cols = b.t_ms[rows] // tick_ms - int(ticks[0])
            out[nodes[labels["src"]], nodes[labels["dst"]], cols] = b.values[rows]
    return out


def test_every_node_probes_every_other_with_the_probes_labels(
    backfilled: tuple[Simulation, Capture],
) -> None:
    sim, store = backfilled
    names = {n.name for n in sim.nodes}
    series = {
        (s[METRIC_NAME], s["src"], s["dst"])
        for b in store.batches
        for s in b.series
        if s[METRIC_NAME] in (RTT, LOSS)
    }
    pairs = {(a, b) for a in names for b in names if a != b}
    assert {(s, d) for m, s, d in series if m == LOSS} == pairs
    for b in store.batches:
        for s in b.series:
            if s[METRIC_NAME] in (RTT, LOSS):
                metric = catalog.get(s[METRIC_NAME])
                assert metric is not None and set(s) - {METRIC_NAME} == set(metric.labels)
    ticks = np.arange(START // SPEC.tick_ms, (START + 2 * DAY) // SPEC.tick_ms)
    rtt, loss = grid(store, RTT, sim, ticks), grid(store, LOSS, sim, ticks)
    off = ~np.eye(4, dtype=bool)
    assert not np.isnan(loss[off]).any()  # a loss sample for every pair at every tick
    assert set(np.unique(loss[off]).tolist()) == {0.0, 1 / 3, 2 / 3, 1.0}
    np.testing.assert_array_equal(np.isnan(rtt[off]), loss[off] == 1)  # RTT iff one got through
    ok = rtt[off][~np.isnan(rtt[off])]
    assert 40e-6 < np.median(ok) < 250e-6  # same-switch TCP connects: tens to hundreds of µs


def test_rtt_follows_load_loss_follows_faults_and_down_nodes_answer_none(
    backfilled: tuple[Simulation, Capture],
) -> None:
    sim, store = backfilled
    frame = sim._io_last  # the one block of the backfill
    assert frame is not None
    ticks = frame.ticks
    rtt, loss = grid(store, RTT, sim, ticks), grid(store, LOSS, sim, ticks)
    src, dst = io.mesh_pairs(4)
    up = frame.up[src] & frame.up[dst]  # (pairs, K)
    faulty = (frame.syn_loss[src] > 0) | (frame.syn_loss[dst] > 0)
    pl, pr = loss[src, dst], rtt[src, dst]
    link, congestion = frame.syn_loss >= 0.3, (frame.syn_loss > 0) & (frame.syn_loss < 0.3)
    assert (~up).any() and link.any() and congestion.any()  # the scenario has each
    # a down end: every attempt fails, no RTT
    assert (pl[~up] == 1).all() and np.isnan(pr[~up]).all()
    # without a fault no attempt is lost; with one, about the fault's loss chance of them
    assert (pl[up & ~faulty] == 0).all()
    p = 1 - (1 - frame.syn_loss[src]) * (1 - frame.syn_loss[dst])
    assert abs(pl[up & faulty].mean() - p[up & faulty].mean()) < 0.05
    # and the attempts that get through wait longer
    assert np.nanmedian(pr[up & faulty]) > 5 * np.nanmedian(pr[up & ~faulty])
    # each pair is slower while its ends run all-reduce than while both are idle
    ib = frame.ib_load[src] + frame.ib_load[dst]
    compared = 0
    for i in range(len(src)):
        busy, idle = up[i] & ~faulty[i] & (ib[i] > 0.2), up[i] & ~faulty[i] & (ib[i] == 0)
        if busy.sum() > 100 and idle.sum() > 100:
            assert np.median(pr[i][busy]) > np.median(pr[i][idle]) + 30e-6
            compared += 1
    assert compared >= 6


def test_rtt_rises_with_network_load_and_loss_with_faults() -> None:
    """The model alone: two nodes, many ticks, one input changed at a time."""
    src, dst = io.mesh_pairs(2)
    ticks = np.arange(10_000, 14_000, dtype=np.int64)
    zeros = np.zeros((2, len(ticks)))
    up = np.ones((2, len(ticks)), bool)

    def attempts(eth: float = 0.0, ib: float = 0.0, syn: float = 0.0) -> np.ndarray:
        loaded = zeros.copy()
        loaded[1] = eth
        ib_a, syn_a = zeros.copy(), zeros.copy()
        ib_a[1], syn_a[1] = ib, syn
        return io.mesh_attempts(7, src, dst, ticks, up, loaded, ib_a, syn_a)

    quiet = attempts()
    assert quiet.shape == (2, io.MESH_ATTEMPTS, len(ticks)) and not np.isnan(quiet).any()
    assert ((quiet > 40e-6) & (quiet < 250e-6)).mean() > 0.98  # hiccups aside
    # the same path both ways: the pair's base differs by its direction's ±5 % only
    assert abs(np.median(quiet[0]) / np.median(quiet[1]) - 1) < 0.12
    eth = attempts(eth=0.9)  # M/M/1: 100 µs × 0.9 / 0.1 more on the loaded end, ±10 %
    assert (eth - quiet).min() > 805e-6 and (eth - quiet).max() < 995e-6
    ib = attempts(ib=0.25) - quiet  # a node busy with all-reduce: 200 µs × 0.25, ±10 %
    assert ib.min() > 44.5e-6 and ib.max() < 55.5e-6
    lossy = attempts(syn=0.5)
    assert 0.45 < np.isnan(lossy).mean() < 0.55
    assert np.nanmedian(lossy) > 2e-3  # the survivors of a fault spike
    down = up.copy()
    down[1, ::2] = False
    gone = io.mesh_attempts(7, src, dst, ticks, down, zeros, zeros, zeros)
    assert np.isnan(gone[:, :, ::2]).all() and not np.isnan(gone[:, :, 1::2]).any()


def test_any_slice_of_pairs_and_ticks_gives_the_same_values(
    backfilled: tuple[Simulation, Capture],
) -> None:
    """What live relies on: one pair at one tick computes what the whole block did."""
    sim, _ = backfilled
    f = sim._io_last
    assert f is not None
    src, dst = io.mesh_pairs(4)
    whole = io.mesh_attempts(SPEC.seed, src, dst, f.ticks, f.up, f.eth_load, f.ib_load, f.syn_loss)
    for p, c in ((0, 0), (5, 1234), (11, len(f.ticks) - 1)):
        cols = slice(c, c + 1)
        one = io.mesh_attempts(
            SPEC.seed, src[p : p + 1], dst[p : p + 1], f.ticks[cols], f.up[:, cols],
            f.eth_load[:, cols], f.ib_load[:, cols], f.syn_loss[:, cols],
        )  # fmt: skip
        assert one.tobytes() == whole[p : p + 1, :, cols].tobytes()
    assert io.mesh_attempts(SPEC.seed + 1, src, dst, f.ticks, f.up, f.eth_load, f.ib_load,
                            f.syn_loss).tobytes() != whole.tobytes()  # fmt: skip  # the seed


def test_large_fleets_probe_a_bounded_number_of_peers() -> None:
    for n in (1, 2, 8, io.MESH_PEERS + 1, 300):
        src, dst = io.mesh_pairs(n)
        peers = min(n - 1, io.MESH_PEERS)
        assert len(src) == n * peers and not (src == dst).any()
        assert len(set(zip(src.tolist(), dst.tolist(), strict=True))) == len(src)
        assert (np.bincount(dst, minlength=n) == peers).all()  # each node is probed as often


def read(live: LiveFleet, t_ms: int) -> dict[Key, float | None]:
    """One cycle of every node agent (all its collectors), its mesh samples."""
    return mesh_samples([agent.collect_once(t_ms) for agent in live.agents], t_ms)


@pytest.mark.parametrize("case", ["link", "congestion", "down"])
def test_live_probes_read_what_the_backfill_wrote(
    case: str, backfilled: tuple[Simulation, Capture], tmp_path: Path
) -> None:
    """The live agents' MeshProbes, after a backfill up to a tick with a fault or a down node
    and for a few ticks on, read what one uninterrupted backfill wrote at those ticks."""
    sim0, whole = backfilled
    f = sim0._io_last
    assert f is not None
    src, dst = io.mesh_pairs(4)
    up = f.up[src] & f.up[dst]
    worst = np.maximum(f.syn_loss[src], f.syn_loss[dst])
    want = {"link": up & (worst >= 0.3), "congestion": up & (worst > 0) & (worst < 0.3),
            "down": ~up}[case]  # fmt: skip
    at = int(np.flatnonzero(want.any(axis=0))[0])
    assert 1 < at < len(f.ticks) - 5
    tick = SPEC.tick_ms
    switch = int(f.ticks[at]) * tick
    sim = Simulation(SPEC, root_dir=tmp_path)
    sim.backfill(Capture(), START, switch - tick)
    live = LiveFleet(sim, "http://127.0.0.1:9/api/v1/write")
    try:
        mesh = [c for a in live.agents for c in a.collectors if isinstance(c, MeshProbe)]
        assert [m.node for m in mesh] == [n.name for n in sim.nodes]
        assert all(addr[1] == MESH_PORT for m in mesh for addr in m.peers.values())
        assert read(live, switch - 2 * tick) == whole.at(switch - 2 * tick)  # the last backfilled
        seen: set[float | None] = set()
        for t in range(switch - tick, switch + 3 * tick, tick):
            sim.advance(t)
            got = read(live, t)
            assert got == whole.at(t)  # markers included
            seen |= {v for (m, _, _), v in got.items() if m == LOSS}
        assert seen - {0.0}  # lost probes among them
        if case == "down":  # the RTT of the pairs of the node that went down ends
            assert None in whole.at(switch).values()
    finally:
        live.close()


def test_sim_mesh_fails_unknown_targets_and_waits_for_the_start() -> None:
    sim = Simulation(SPEC)
    mesh = SimMesh(sim)
    names = [n.name for n in sim.nodes]
    probe = mesh.probe(names[0])
    assert set(probe.peers) == set(names[1:])
    address = sim.hardware[1].address
    assert mesh.attempts(0, address, MESH_PORT, 3, 1.0) == [None] * 3  # not started yet
    sim.advance(START)
    now = mesh.attempts(0, address, MESH_PORT, 3, 1.0)
    assert len(now) == 3 and all(t is None or 40e-6 < t < 30e-3 for t in now)
    assert mesh.attempts(0, address, MESH_PORT, 3, 1.0) == now  # the same tick, the same answer
    assert mesh.attempts(0, address, MESH_PORT + 1, 3, 1.0) == [None] * 3  # nothing listens
    assert mesh.attempts(0, "192.0.2.1", MESH_PORT, 3, 1.0) == [None] * 3  # not in the fleet
    assert mesh.attempts(0, address, MESH_PORT, 3, 1e-9) == [None] * 3  # all past the timeout


def test_the_node_page_has_the_simulated_mesh_matrix() -> None:
    """What ``fleetscope up`` shows on /nodes/<node>: the backfill's probes in the store make a
    full RTT and loss matrix among the fleet's nodes."""
    sim = Simulation(FleetSpec(gpus=8, gpus_per_node=2, seed=4, node_failures_per_day=0))
    store = DuckDBStore(":memory:")
    try:
        sim.backfill(store, START, START + HOUR)
        names = [n.name for n in sim.nodes]
        at = START + HOUR - SPEC.tick_ms
        m = nodes.mesh(Evaluator(store), at, names[2])
    finally:
        store.close()
    assert m.nodes[0] == names[2] and sorted(m.nodes) == sorted(names)
    for src in names:
        others = [d for d in names if d != src]
        assert sorted(m.rtt_seconds[src]) == sorted(others)
        assert all(40e-6 < v < 30e-3 for v in m.rtt_seconds[src].values())
        assert sorted(m.loss_ratio[src]) == sorted(others)
