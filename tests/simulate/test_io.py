"""The node I/O model: rates within its bounds, counters from boot, faults, Xids, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fleetscope.collect.xid import ACTIONS
from fleetscope.model import Event
from fleetscope.simulate import io
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.sim import Simulation
from fleetscope.store import METRIC_NAME

from . import capture

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
# 4 nodes of 2 GPUs (h100, h100, a100, l40s): jobs over 2 GPUs span nodes
SPEC = FleetSpec(gpus=8, gpus_per_node=2, seed=5, node_failures_per_day=0)


class Capture(capture.Capture):
    """The simulation's samples; series → (times, values)."""

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], tuple[np.ndarray, np.ndarray]]:
        parts: dict[tuple[tuple[str, str], ...], list[tuple[np.ndarray, np.ndarray]]] = {}
        for b in self.batches:
            for i, labels in enumerate(b.series):
                if labels[METRIC_NAME] != name:
                    continue
                rows = b.series_index == i
                key = tuple(sorted((k, v) for k, v in labels.items() if k != METRIC_NAME))
                parts.setdefault(key, []).append((b.t_ms[rows], b.values[rows]))
        out = {}
        for key, chunks in parts.items():
            t = np.concatenate([c[0] for c in chunks])
            v = np.concatenate([c[1] for c in chunks])
            o = np.argsort(t, kind="stable")
            out[key] = (t[o], v[o])
        return out


@pytest.fixture(scope="module")
def six_hours() -> tuple[Simulation, Capture]:
    sim = Simulation(SPEC)
    store = Capture()
    sim.backfill(store, START, START + 6 * HOUR)
    return sim, store


def rtt_per_op(rtt: np.ndarray, ops: np.ndarray, window: int = 40) -> np.ndarray:
    """Mean RTT per operation (seconds) over windows of ``window`` ticks with 20 ops or more."""
    n = np.diff(ops[::window])
    return np.diff(rtt[::window])[n >= 20] / n[n >= 20]


def rates(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-second increase between consecutive samples (NaN markers dropped)."""
    ok = ~np.isnan(v)
    t, v = t[ok], v[ok]
    return np.diff(v) / (np.diff(t) / 1000)


def test_hardware_follows_the_gpu_model(six_hours: tuple[Simulation, Capture]) -> None:
    sim, _ = six_hours
    by_model = {n.model.key: hw for n, hw in zip(sim.fleet.nodes, sim.hardware, strict=True)}
    assert by_model["h100"].hcas == ("mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3")
    assert by_model["h100"].ib_rate_text == "400 Gb/sec (4X NDR)"
    assert by_model["a100"].ib_rate_text == "200 Gb/sec (4X HDR)"
    assert by_model["l40s"].hcas == ()
    assert len({hw.address for hw in sim.hardware}) == len(sim.hardware)
    for hw in sim.hardware:
        assert set(hw.filesystems) == {"/", "/scratch", "/datasets"}
        assert all(0 < avail < size for size, avail in hw.filesystems.values())


def test_infiniband_traffic_stays_within_the_links(six_hours: tuple[Simulation, Capture]) -> None:
    sim, store = six_hours
    tx = store.series("fleet_infiniband_port_transmit_bytes_total")
    rate_of = {k: v[1][0] for k, v in store.series("fleet_infiniband_port_rate_bytes").items()}
    assert {dict(k)["node"] for k in tx} == {hw.node for hw in sim.hardware if hw.hcas}
    peak = 0.0
    for key, (t, v) in tx.items():
        r = rates(t, v)
        assert (r >= 0).all()
        # all-reduce is at most a quarter of the node's fabric (+ jitter) per port
        assert r.max() <= 0.27 * rate_of[key]
        peak = max(peak, float(r.max() / rate_of[key]))
    assert peak > 0.05, "a multi-node job should push gradients over InfiniBand"


def test_storage_and_host_readings_within_the_model(six_hours: tuple[Simulation, Capture]) -> None:
    _, store = six_hours
    for _, (t, v) in store.series("fleet_disk_written_bytes_total").items():
        r = rates(t, v)
        assert r.min() >= 0.5 * 25 * 16 * 1024  # the system's own writes
        assert r.max() <= 3.5e9  # an NVMe Gen4 drive
    for _, (_, v) in store.series("fleet_node_cpu_utilization_ratio").items():
        assert ((v >= 0) & (v <= 1)).all()
    used = store.series("fleet_node_memory_used_bytes")
    total = store.series("fleet_node_memory_total_bytes")
    for key, (_, v) in used.items():
        assert (v > 0).all() and (v <= 0.85 * total[key][1]).all()
    ops = store.series("fleet_nfs_rpc_operations_total")
    rtt = store.series("fleet_nfs_rpc_rtt_seconds_total")
    for key, (_, v) in ops.items():
        if dict(key)["op"] == "READ":  # WRITEs are too few on an idle node for a mean
            per_op = rtt_per_op(rtt[key][1], v)
            assert per_op.min() >= 0.0004 and per_op.max() <= 0.3
    assert all(dict(k)["export"] == "nas01:/export/datasets" for k in ops)


def test_counters_restart_when_a_node_reboots() -> None:
    spec = FleetSpec(gpus=8, gpus_per_node=2, seed=12, node_failures_per_day=12)
    sim = Simulation(spec)
    store = Capture()
    sim.backfill(store, START, START + 12 * HOUR)
    lo, hi = START // spec.tick_ms, (START + 12 * HOUR) // spec.tick_ms
    outages = [(n, d0, d1) for n, iv in enumerate(sim.cluster.down) for d0, d1 in iv
               if lo < d0 and d1 < hi]  # fmt: skip
    assert outages, "the scenario should include a node outage"
    n, d0, d1 = outages[0]
    key = (("device", "nvme0n1"), ("node", sim.fleet.nodes[n].name))
    t, v = store.series("fleet_disk_written_bytes_total")[key]
    tick = spec.tick_ms
    before = v[t == (d0 - 1) * tick][0]
    during = v[(t >= d0 * tick) & (t < d1 * tick)]
    assert np.isnan(during).all()  # only the staleness marker: the node reads nothing
    after = v[t == d1 * tick][0]
    assert 0 < after < before  # counted from the reboot
    ok = ~np.isnan(v)
    boots = [b * tick for _, b in sim.cluster.down[n]]
    segment = np.searchsorted(boots, t[ok], side="right")  # readings between two reboots
    rising = np.diff(v[ok]) >= 0
    assert rising[segment[1:] == segment[:-1]].all()
    assert not rising[segment[1:] != segment[:-1]].any()  # and every reboot restarts them
    cpu = store.series("fleet_node_cpu_utilization_ratio")[(("node", key[1][1]),)]
    assert d1 * tick not in set(cpu[0][~np.isnan(cpu[1])])  # no CPU delta across the reboot


def test_io_is_deterministic_and_depends_on_the_seed() -> None:
    def frames(seed: int) -> list[io.IOFrame]:
        sim = Simulation(FleetSpec(gpus=8, gpus_per_node=2, seed=seed))
        sim.backfill(Capture(), START, START + HOUR)
        k = START // sim.tick_ms + 100
        return [sim._render(k, k + 40)[1] for _ in range(2)]

    a1, a2 = frames(3)
    b, _ = frames(4)
    np.testing.assert_array_equal(a1.inc, a2.inc)
    np.testing.assert_array_equal(a1.port_inc, a2.port_inc)
    assert (a1.inc != b.inc).any()
    c1, c2 = (Simulation(FleetSpec(seed=s)) for s in (7, 7))
    assert c1._io.node.tolist() == c2._io.node.tolist()  # values since boot at the origin


def test_flaky_links_and_slow_nfs_show_in_the_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "FLAKY_LINKS_PER_NODE_DAY", 4.0)
    monkeypatch.setattr(io, "SLOW_NFS_PER_DAY", 6.0)
    sim = Simulation(SPEC)
    store = Capture()
    sim.backfill(store, START, START + 24 * HOUR)
    symbols = store.series("fleet_infiniband_symbol_errors_total")
    downs = store.series("fleet_infiniband_link_downed_total")
    worst = max(rates(t, v).max() for t, v in symbols.values())
    assert worst >= 0.5  # a flaky port: many symbol errors per second
    assert max(v[~np.isnan(v)].max() - v[0] for _, v in downs.values()) >= 1
    ops = store.series("fleet_nfs_rpc_operations_total")
    rtt = store.series("fleet_nfs_rpc_rtt_seconds_total")
    key = next(k for k in ops if dict(k)["op"] == "READ")
    per_op = rtt_per_op(rtt[key][1], ops[key][1])
    assert per_op.max() >= 0.08  # a slow NFS server: RTT of 80 ms and more
    assert np.median(per_op) < 0.002


def test_xids_become_counters_and_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "XID_RATE", 5e-3)
    sim = Simulation(SPEC)
    store = Capture()
    events: list[Event] = []
    stats = sim.backfill(store, START, START + 2 * HOUR, events_sink=events.extend)
    assert len({e.attrs["xid"] for e in events}) >= 3
    assert stats.events == len(events) > 5
    counters = store.series("fleet_gpu_xid_errors_total")
    final = {k: v[-1] for k, (_, v) in counters.items()}
    assert sum(final.values()) == len(events)
    uuids = {g.uuid: g for g in sim.fleet.gpus}
    jobs = {j.id: j for j in sim.cluster.jobs}
    for e in events:
        assert e.kind == "xid" and e.subject in uuids
        a = e.attrs
        gpu = uuids[e.subject]
        assert a["pci_bus_id"] == f"0000:{0x18 + gpu.index:02x}:00"
        assert a["action"] in ACTIONS
        if a["xid"] in (13, 31, 43, 94):  # application errors: the job on the GPU
            assert a["pid"] is not None and a["job"] in jobs
            assert gpu.id in jobs[a["job"]].gpu_ids and a["team"] == jobs[a["job"]].team
        labels = {**gpu.labels(), "xid": str(a["xid"]), "action": a["action"]}
        assert tuple(sorted(labels.items())) in final
    for _, (_, v) in counters.items():
        assert (np.diff(v) >= 0).all()
