"""NetCollector on a captured node tree: /proc/net/dev, sysfs speed, snmp and conntrack."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

from fleetscope import catalog
from fleetscope.collect import Sample
from fleetscope.collect.net import (
    NetCollector,
    parse_conntrack,
    parse_local_addresses,
    parse_net_dev,
    parse_snmp,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "collect" / "net"
ROOT = DATA / "node1"
PEERS = {"10.0.0.2": "node2", "fd00::2": "node2", "10.0.0.3": "node3", "10.0.0.4": "node4"}

Key = tuple[str, tuple[tuple[str, str], ...]]


def values(samples: Iterable[Sample]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for s in samples:
        assert s.labels["node"] == "node1"
        key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "node")))
        assert key not in out, f"duplicate series {key}"
        out[key] = s.value
    return out


def interface(name: str, value: str) -> Key:
    return (name, (("interface", value),))


def peer_totals(samples: Iterable[Sample]) -> dict[tuple[str, str], float]:
    return {
        (s.labels["peer"], s.labels["direction"]): s.value
        for s in samples
        if s.name == "fleet_network_peer_bytes_total"
    }


def tree(tmp_path: Path, conntrack: str | None = "node1") -> Path:
    """A copy of node1 whose nf_conntrack is one of the fixture snapshots (None: removed)."""
    root = tmp_path / "node1"
    shutil.copytree(ROOT, root)
    target = root / "proc" / "net" / "nf_conntrack"
    if conntrack is None:
        target.unlink()
    elif conntrack != "node1":
        shutil.copyfile(DATA / f"nf_conntrack.{conntrack}", target)
    return root


def test_interface_counters_from_proc_net_dev() -> None:
    got = values(NetCollector("node1", root=ROOT, peers=PEERS).collect())
    # receive: bytes packets errs drop …; transmit: bytes packets errs drop … (proc(5))
    assert got[interface("fleet_network_receive_bytes_total", "eth0")] == 48213345678
    assert got[interface("fleet_network_receive_errs_total", "eth0")] == 3
    assert got[interface("fleet_network_receive_drop_total", "eth0")] == 17
    assert got[interface("fleet_network_transmit_bytes_total", "eth0")] == 21345678901
    assert got[interface("fleet_network_transmit_errs_total", "eth0")] == 1
    assert got[interface("fleet_network_transmit_drop_total", "eth0")] == 5
    assert got[interface("fleet_network_transmit_drop_total", "ib0")] == 4
    assert got[interface("fleet_network_receive_bytes_total", "docker0")] == 5310042
    assert got[interface("fleet_network_transmit_drop_total", "veth1a2b3c")] == 9
    interfaces = {
        dict(labels)["interface"] for (name, labels) in got if "interface" in dict(labels)
    }
    assert interfaces == {"eth0", "eth1", "ib0", "docker0", "veth1a2b3c"}  # lo ignored, bad0 bad


def test_link_speed_in_bytes_per_second() -> None:
    got = values(NetCollector("node1", root=ROOT).collect())
    speeds = {
        dict(labels)["interface"]: v
        for (name, labels), v in got.items()
        if name == "fleet_network_speed_bytes"
    }
    # Mb/s × 10^6 / 8; eth1 reads -1 (link down), docker0 has no speed file, lo is ignored
    assert speeds == {"eth0": 3_125_000_000, "ib0": 25_000_000_000, "veth1a2b3c": 1_250_000_000}


def test_tcp_retransmits_from_snmp() -> None:
    got = values(NetCollector("node1", root=ROOT).collect())
    assert got[("fleet_network_tcp_retransmits_total", ())] == 48213


def test_ignore_interfaces_pattern() -> None:
    c = NetCollector("node1", root=ROOT, ignore_interfaces=r"^(lo|veth.*|docker\d+)$")
    names = {s.labels.get("interface") for s in c.collect()} - {None}
    assert names == {"eth0", "eth1", "ib0"}


def test_every_name_is_in_the_catalog() -> None:
    samples = NetCollector("node1", root=ROOT, peers=PEERS).collect()
    for s in samples:
        metric = catalog.get(s.name)
        assert metric is not None and metric.area == "network"
        assert set(s.labels) == set(metric.labels)


# Snapshot 1 (node1's nf_conntrack), by connection, this node being 10.0.0.1 / fd00::1:
#   10.0.0.1 → node2:9100       orig 1200 (sent), reply 900 (received)
#   node3 → 10.0.0.1:22         orig 5000 (received), reply 70000 (sent)
#   10.0.0.1 → 8.8.8.8:53 udp   orig 60, reply 120 → external
#   container 172.17.0.2 → 93.184.216.34, SNAT'd to 10.0.0.1: orig 2000, reply 150000 → external
#   10.0.0.1 → node3 ICMP echo  840 / 840
#   loopback, a forwarded 10.0.1.5 → 10.0.2.7 and a malformed line: not counted
#   fd00::1 → node2 (IPv6)      orig 3000, reply 4000
SNAPSHOT_1 = {
    ("node2", "transmit"): 1200 + 3000,
    ("node2", "receive"): 900 + 4000,
    ("node3", "transmit"): 70000 + 840,
    ("node3", "receive"): 5000 + 840,
    ("external", "transmit"): 60 + 2000,
    ("external", "receive"): 120 + 150000,
}
# Snapshot 2 (nf_conntrack.later): node2 TCP grew to 2200/1500 (+1000/+600); the ssh and DNS
# connections ended (their bytes after snapshot 1 are lost); the IPv6 tuple went down to
# 500/100, a new connection (+500/+100); ICMP unchanged; the container flow grew to
# 2500/250000 (+500/+100000); a new connection to node4 300/700.
SNAPSHOT_2 = {
    ("node2", "transmit"): 4200 + 1000 + 500,
    ("node2", "receive"): 4900 + 600 + 100,
    ("node3", "transmit"): 70840,
    ("node3", "receive"): 5840,
    ("external", "transmit"): 2060 + 500,
    ("external", "receive"): 150120 + 100000,
    ("node4", "transmit"): 300,
    ("node4", "receive"): 700,
}
# Snapshot 3 is snapshot 1 again: node2 TCP went down 2200 → 1200 (a new connection: +1200/+900),
# the ssh and DNS tuples reappear (new: +70000/+5000, +60/+120), IPv6 grew 500 → 3000 and
# 100 → 4000 (+2500/+3900), the container flow went down (new: +2000/+150000), node4 ended.
SNAPSHOT_3 = {
    ("node2", "transmit"): 5700 + 1200 + 2500,
    ("node2", "receive"): 5600 + 900 + 3900,
    ("node3", "transmit"): 70840 + 70000,
    ("node3", "receive"): 5840 + 5000,
    ("external", "transmit"): 2560 + 60 + 2000,
    ("external", "receive"): 250120 + 120 + 150000,
    ("node4", "transmit"): 300,
    ("node4", "receive"): 700,
}


def test_peer_bytes_first_snapshot_counts_every_connection_in_full() -> None:
    c = NetCollector("node1", root=ROOT, peers=PEERS)
    assert peer_totals(c.collect()) == SNAPSHOT_1


def test_peer_bytes_accumulate_across_vanishing_and_reused_connections(tmp_path: Path) -> None:
    root = tree(tmp_path)
    c = NetCollector("node1", root=root, peers=PEERS)
    assert peer_totals(c.collect()) == SNAPSHOT_1
    shutil.copyfile(DATA / "nf_conntrack.later", root / "proc" / "net" / "nf_conntrack")
    assert peer_totals(c.collect()) == SNAPSHOT_2
    shutil.copyfile(ROOT / "proc" / "net" / "nf_conntrack", root / "proc" / "net" / "nf_conntrack")
    assert peer_totals(c.collect()) == SNAPSHOT_3
    assert peer_totals(c.collect()) == SNAPSHOT_3  # nothing moved: counters stay put


def test_explicit_local_addresses_replace_discovery(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "proc" / "net" / "fib_trie").unlink()
    (root / "proc" / "net" / "if_inet6").unlink()
    assert peer_totals(NetCollector("node1", root=root, peers=PEERS).collect()) == {}
    c = NetCollector("node1", root=root, local_addresses=("10.0.0.1", "fd00::1"), peers=PEERS)
    assert peer_totals(c.collect()) == SNAPSHOT_1


def test_only_ipv4_local_address_leaves_ipv6_traffic_uncounted() -> None:
    c = NetCollector("node1", root=ROOT, local_addresses=("10.0.0.1",), peers=PEERS)
    expected = dict(SNAPSHOT_1)
    expected[("node2", "transmit")] -= 3000
    expected[("node2", "receive")] -= 4000
    assert peer_totals(c.collect()) == expected


def test_without_peers_map_everything_is_external() -> None:
    totals = peer_totals(NetCollector("node1", root=ROOT).collect())
    assert totals == {
        ("external", "transmit"): sum(v for (_, d), v in SNAPSHOT_1.items() if d == "transmit"),
        ("external", "receive"): sum(v for (_, d), v in SNAPSHOT_1.items() if d == "receive"),
    }


def test_conntrack_without_accounting_omits_peer_bytes_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = NetCollector("node1", root=tree(tmp_path, "noacct"), peers=PEERS)
    with caplog.at_level(logging.WARNING, logger="fleetscope.collect.net"):
        first = c.collect()
        second = c.collect()
    assert peer_totals(first) == {} and peer_totals(second) == {}
    assert interface("fleet_network_receive_bytes_total", "eth0") in values(first)
    assert sum("nf_conntrack_acct" in r.getMessage() for r in caplog.records) == 1
    assert c.init_error is None


def test_missing_conntrack_costs_only_peer_bytes(tmp_path: Path) -> None:
    c = NetCollector("node1", root=tree(tmp_path, None), peers=PEERS)
    got = values(c.collect())
    assert peer_totals(c.collect()) == {}
    assert got[("fleet_network_tcp_retransmits_total", ())] == 48213
    assert c.init_error is None


def test_partial_tree_is_not_an_init_error(tmp_path: Path) -> None:
    (tmp_path / "proc" / "net").mkdir(parents=True)
    shutil.copyfile(ROOT / "proc" / "net" / "snmp", tmp_path / "proc" / "net" / "snmp")
    c = NetCollector("node1", root=tmp_path)
    assert values(c.collect()) == {("fleet_network_tcp_retransmits_total", ()): 48213}
    assert c.init_error is None


def test_nothing_readable_sets_init_error(tmp_path: Path) -> None:
    c = NetCollector("node1", root=tmp_path)
    assert c.collect() == []
    assert c.init_error is not None and str(tmp_path) in c.init_error


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            "  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
            {"eth0": list(range(1, 17))},
            id="spaced",
        ),
        pytest.param(
            "enp65s0f0np0:123456789012 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
            {"enp65s0f0np0": [123456789012, *range(2, 17)]},
            id="counter-abuts-colon",
        ),
        pytest.param("  eth0: 1 2 3", {}, id="too-few-fields"),
        pytest.param("  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 x", {}, id="not-a-number"),
        pytest.param(" face |bytes    packets errs drop|bytes", {}, id="header"),
    ],
)
def test_parse_net_dev_lines(line: str, expected: dict[str, list[int]]) -> None:
    assert parse_net_dev(line) == expected


def test_parse_snmp_pairs_header_and_values() -> None:
    text = "Tcp: RtoMin RetransSegs\nTcp: 200 77\nUdp: InDatagrams\nUdp: 5\nIp: Forwarding\n"
    assert parse_snmp(text) == {
        "Tcp": {"RtoMin": 200, "RetransSegs": 77},
        "Udp": {"InDatagrams": 5},
    }


def test_parse_local_addresses_from_fixture() -> None:
    net = ROOT / "proc" / "net"
    got = parse_local_addresses((net / "fib_trie").read_text(), (net / "if_inet6").read_text())
    assert {str(a) for a in got} == {
        "10.0.0.1",
        "127.0.0.1",
        "172.17.0.1",
        "::1",
        "fd00::1",
        "fe80::215:5dff:fe3a:4b01",
    }


def test_parse_conntrack_keys_and_directions() -> None:
    conns = list(parse_conntrack((ROOT / "proc" / "net" / "nf_conntrack").read_text()))
    assert len(conns) == 8  # the malformed line is skipped
    icmp = conns[4]
    assert icmp.key[:2] == ("ipv4", "icmp") and "id=7" in icmp.key
    snat = conns[3]
    assert (str(snat.orig_src), str(snat.reply_src)) == ("172.17.0.2", "93.184.216.34")
    assert (snat.orig_bytes, snat.reply_bytes) == (2000, 150000)
    v6 = conns[7]
    assert str(v6.orig_dst) == "fd00::2"
    noacct = list(parse_conntrack((DATA / "nf_conntrack.noacct").read_text()))
    assert len(noacct) == 2 and all(c.orig_bytes is None for c in noacct)
