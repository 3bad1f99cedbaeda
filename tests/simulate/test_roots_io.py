"""The real host, disk, NFS, network and InfiniBand collectors on the simulator's fake roots."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from fleetscope.collect import Collector
from fleetscope.collect.gpu import normalize_pci_bus_id
from fleetscope.simulate import io
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.live import fake_statvfs, node_collectors
from fleetscope.simulate.roots import KERNEL_FILES, RootTree
from fleetscope.simulate.sim import Simulation
from fleetscope.store import METRIC_NAME

from . import capture

START = 1_767_225_600_000 + 9 * 3_600_000  # 2026-01-01T09:00:00Z
HOUR = 3_600_000
SPEC = FleetSpec(gpus=8, gpus_per_node=2, seed=4, node_failures_per_day=0)
NODE_SERIES = ("fleet_node_", "fleet_disk_", "fleet_filesystem_", "fleet_network_",
               "fleet_infiniband_", "fleet_nfs_")  # fmt: skip
PEER = "fleet_network_peer_bytes_total"  # integrated by the collector since it started
Key = tuple[str, tuple[tuple[str, str], ...]]
# the documented kernel log line (io.kern_line)
KERN = re.compile(
    r"^(?P<mon>[A-Z][a-z]{2}) (?P<day>[ \d]\d) (?P<hms>\d{2}:\d{2}:\d{2}) (?P<node>\S+) kernel: "
    r"\[\s*(?P<up>\d+\.\d{6})\] NVRM: Xid \(PCI:(?P<pci>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2})\): "
    r"(?P<xid>\d+), pid=(?P<pid>\d+|'<unknown>'), name=(?P<name>[^,]+), (?P<msg>.+)$"
)


class Capture(capture.Capture):
    def at(self, t_ms: int) -> dict[Key, float]:
        """The node series' samples stamped ``t_ms``."""
        return {
            key(labels): v
            for labels, v in self.stamped(t_ms)
            if labels[METRIC_NAME].startswith(NODE_SERIES)
        }


def key(labels: dict[str, str]) -> Key:
    rest = tuple(sorted((k, v) for k, v in labels.items() if k != METRIC_NAME))
    return labels[METRIC_NAME], rest


def read(collectors: list[list[Collector]]) -> dict[Key, float]:
    """One cycle of every node's host, disk, NFS, network and InfiniBand collectors."""
    out: dict[Key, float] = {}
    for per_node in collectors:
        for c in per_node:
            for s in c.collect():
                assert getattr(c, "init_error", None) is None
                out[key({METRIC_NAME: s.name, **s.labels})] = s.value
    return out


NODE_FILES = ("host", "disk", "nfs", "net", "infiniband")  # the readers of the node's files


def live_collectors(sim: Simulation) -> list[list[Collector]]:
    """Per node, the collectors of its node files (InfiniBand only where it has HCAs: on the
    others the real collector says its source is missing, as on a node without IB cards)."""
    peers = {hw.address: hw.node for hw in sim.hardware}
    return [
        [c for c in node_collectors(n, hw, peers) if c.name in NODE_FILES[: 4 + bool(hw.hcas)]]
        for n, hw in zip(sim.nodes, sim.hardware, strict=True)
    ]


def test_collectors_read_the_backfill_and_continue_it(tmp_path: Path) -> None:
    """Live readings equal an uninterrupted backfill's samples at the same ticks, from the last
    backfilled tick (the first live reading's base) on: the counters do not restart."""
    tick = SPEC.tick_ms
    switch = START + 2 * HOUR
    live = Simulation(SPEC, root_dir=tmp_path)
    live.backfill(Capture(), START, switch)
    whole = Capture()
    Simulation(SPEC).backfill(whole, START, switch + 4 * tick)

    collectors = live_collectors(live)
    base = read(collectors)  # as LiveFleet primes its agents: the last backfilled tick
    wrote = whole.at(switch - tick)
    cpu = "fleet_node_cpu_utilization_ratio"
    assert {k for k in wrote if k[0] != cpu} == {k for k in base if k[0] != PEER}
    assert {k: v for k, v in wrote.items() if k[0] != cpu} == {
        k: v for k, v in base.items() if k[0] != PEER
    }
    for step in range(4):
        t = switch + step * tick
        live.advance(t)
        now = read(collectors)
        expected = whole.at(t)
        assert {k: v for k, v in now.items() if k[0] != PEER} == expected
        assert sum(1 for k in expected if k[0] == cpu) == len(live.nodes)
        for k, v in base.items():
            if k[0].endswith("_total") and k[0] != PEER:
                assert now[k] >= v, k
    names = {k[0] for k in now}
    assert names >= {
        "fleet_node_load1", "fleet_disk_written_bytes_total", PEER, "fleet_filesystem_avail_bytes",
        "fleet_network_speed_bytes", "fleet_infiniband_port_rate_bytes",
        "fleet_nfs_rpc_rtt_seconds_total",
    }  # fmt: skip
    # east-west: the rendezvous connections of multi-node jobs name fleet nodes as peers
    peers = {dict(k[1])["peer"] for k in now if k[0] == PEER}
    assert peers and peers <= {n.name for n in live.nodes} | {"external"}
    assert peers & {n.name for n in live.nodes}


def test_a_node_outage_reads_the_same_live_and_backfilled(tmp_path: Path) -> None:
    """While a node is down its collectors read nothing; after it comes back its counters
    restart from the reboot and the CPU ratio skips the reboot tick, as in the backfill."""
    spec = FleetSpec(gpus=8, gpus_per_node=2, seed=12, node_failures_per_day=12)
    tick = spec.tick_ms
    probe = Simulation(spec)
    probe.backfill(Capture(), START, START + 12 * HOUR)
    n, d0, d1 = min(
        ((n, d0, d1) for n, iv in enumerate(probe.cluster.down) for d0, d1 in iv
         if d0 * tick > START + HOUR and d1 * tick < START + 12 * HOUR),
        key=lambda o: o[2] - o[1],
    )  # fmt: skip
    whole = Capture()
    Simulation(spec).backfill(whole, START, (d1 + 3) * tick)
    live = Simulation(spec, root_dir=tmp_path)
    live.backfill(Capture(), START, (d0 - 2) * tick)
    collectors = live_collectors(live)
    read(collectors)
    name = live.nodes[n].name
    for k in range(d0 - 2, d1 + 3):
        live.advance(k * tick)
        now = {}
        for c in collectors[n]:
            now.update({key({METRIC_NAME: s.name, **s.labels}): s.value for s in c.collect()})
            up = getattr(c, "init_error", None) is None
            assert up == (k < d0 or k >= d1), (c.name, k)
        expected = {
            key_: v for key_, v in whole.at(k * tick).items()
            if ("node", name) in key_[1] and not np.isnan(v)
        }  # fmt: skip
        assert {k_: v for k_, v in now.items() if k_[0] != PEER} == expected, k
        cpu = ("fleet_node_cpu_utilization_ratio", (("node", name),))
        assert (cpu in expected) == (k < d0 or k > d1)


def test_infiniband_files_count_four_byte_words(tmp_path: Path) -> None:
    sim = Simulation(SPEC, root_dir=tmp_path)
    sim.advance(START)
    node = next(n for n, hw in zip(sim.nodes, sim.hardware, strict=True) if hw.hcas)
    assert node.root is not None
    port = node.root / "sys/class/infiniband/mlx5_0/ports/1"
    words = int((port / "counters" / "port_xmit_data").read_text())
    assert (port / "rate").read_text() in ("400 Gb/sec (4X NDR)\n", "200 Gb/sec (4X HDR)\n")
    samples = {
        (s.name, s.labels["device"]): s.value
        for c in live_collectors(sim)[sim.nodes.index(node)]
        if c.name == "infiniband"
        for s in c.collect()
    }
    assert samples[("fleet_infiniband_port_transmit_bytes_total", "mlx5_0")] == 4 * words
    l40s = next(n for n, hw in zip(sim.nodes, sim.hardware, strict=True) if not hw.hcas)
    assert l40s.root is not None and not (l40s.root / "sys/class/infiniband").exists()
    assert "infiniband" not in {c.name for c in live_collectors(sim)[sim.nodes.index(l40s)]}


def test_files_are_replaced_atomically_and_only_when_changed(tmp_path: Path) -> None:
    sim = Simulation(SPEC, root_dir=tmp_path)
    sim.advance(START)
    root = sim.nodes[0].root
    assert root is not None
    for rel in KERNEL_FILES:
        assert (root / rel).is_file(), rel
    speed, stat = root / "sys/class/net/eth0/speed", root / "proc/stat"
    before = {p: os.stat(p).st_ino for p in (speed, stat)}
    sim.advance(START + SPEC.tick_ms)
    assert os.stat(speed).st_ino == before[speed]  # unchanged: not rewritten
    assert os.stat(stat).st_ino != before[stat]  # a new file renamed over the old one
    assert not list(root.rglob("*.tmp"))


def test_a_down_node_shows_no_kernel_files(tmp_path: Path) -> None:
    tree = RootTree(tmp_path / "n")
    sim = Simulation(SPEC)
    sim.advance(START)
    state = sim._node_state(0, START // SPEC.tick_ms, [], [])
    tree.sync_io(state)
    assert (tmp_path / "n/proc/diskstats").exists()
    state.up = False
    tree.sync_io(state)
    assert not (tmp_path / "n/proc/diskstats").exists()
    assert not (tmp_path / "n/sys/class/infiniband").exists()
    assert (tmp_path / "n/var/log/kern.log").exists()
    state.up = True
    tree.sync_io(state)
    assert (tmp_path / "n/proc/diskstats").exists()


def test_xids_are_appended_to_the_kernel_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io, "XID_RATE", 1e-2)
    sim = Simulation(SPEC, root_dir=tmp_path)
    t = START
    sim.advance(t)
    for _ in range(80):
        t += SPEC.tick_ms
        sim.advance(t)
    lines = []
    for node in sim.nodes:
        assert node.root is not None
        for line in (node.root / "var/log/kern.log").read_text().splitlines():
            m = KERN.match(line)
            assert m is not None, line
            assert m["node"] == node.name
            pci = {normalize_pci_bus_id(d.pci_bus_id): d for d in node.devices}
            assert m["pci"] in pci  # the fake NVML's busId of one of its GPUs
            if m["pid"] != "'<unknown>'":
                assert m["name"] == "python3" and int(m["pid"]) > 0
            lines.append(m)
    assert len(lines) >= 3
    assert {int(m["xid"]) for m in lines} <= {13, 31, 43, 48, 63, 79, 94}


def test_fake_statvfs_gives_the_node_sizes(tmp_path: Path) -> None:
    sim = Simulation(SPEC)
    hw = sim.hardware[0]
    statvfs = fake_statvfs(tmp_path, hw)
    for mount, (size, avail) in hw.filesystems.items():
        st = statvfs(os.path.join(tmp_path, mount.lstrip("/")))
        assert (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize) == (size, avail)
    with pytest.raises(FileNotFoundError):
        statvfs(str(tmp_path / "home"))
