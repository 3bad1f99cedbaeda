"""InfinibandCollector on a captured /sys/class/infiniband tree (mlx5 HDR/NDR/EDR, mlx4 QDR)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from fleetscope import catalog
from fleetscope.collect import Sample
from fleetscope.collect.infiniband import InfinibandCollector, parse_rate

ROOT = Path(__file__).resolve().parents[1] / "data" / "collect" / "infiniband" / "node1"

TX = "fleet_infiniband_port_transmit_bytes_total"
RX = "fleet_infiniband_port_receive_bytes_total"
DOWNED = "fleet_infiniband_link_downed_total"
SYMBOL = "fleet_infiniband_symbol_errors_total"
RCV_ERR = "fleet_infiniband_port_receive_errors_total"
RATE = "fleet_infiniband_port_rate_bytes"


def by_port(samples: Iterable[Sample]) -> dict[tuple[str, str], dict[str, float]]:
    """(device, port) → metric → value."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for s in samples:
        assert s.labels["node"] == "node1"
        port = out.setdefault((s.labels["device"], s.labels["port"]), {})
        assert s.name not in port
        port[s.name] = s.value
    return out


# data counters are 4-byte words (×4); rate is Gb/s × 10^9 / 8
EXPECTED = {
    ("mlx5_0", "1"): {
        TX: 123456789012 * 4,
        RX: 98765432109 * 4,
        DOWNED: 2,
        SYMBOL: 17,
        RCV_ERR: 3,
        RATE: 25_000_000_000,  # 200 Gb/sec (4X HDR)
    },
    ("mlx5_1", "1"): {  # symbol_error reads "N/A (no PMA)"; port_rcv_errors is missing
        TX: 4000,
        RX: 10000,
        DOWNED: 0,
        RATE: 50_000_000_000,  # 400 Gb/sec (4X NDR)
    },
    ("mlx5_2", "1"): {
        TX: 28,
        RX: 0,
        DOWNED: 1,
        SYMBOL: 0,
        RCV_ERR: 0,
        RATE: 12_500_000_000,  # 100 Gb/sec (4X EDR)
    },
    ("mlx4_0", "1"): {  # no plain data counters: the 64-bit counters_ext ones
        TX: 5_000_000_000 * 4,
        RX: 4_000_000_000 * 4,
        DOWNED: 5,
        SYMBOL: 9,
        RCV_ERR: 11,
        RATE: 5_000_000_000,  # 40 Gb/sec (4X QDR)
    },
    ("mlx4_0", "2"): {  # plain port_xmit_data (10) wins over counters_ext (99)
        TX: 40,
        RX: 80,
        RATE: 312_500_000,  # 2.5 Gb/sec (1X SDR)
    },
}


def test_ports_from_fixture_tree() -> None:
    c = InfinibandCollector("node1", root=ROOT)
    assert by_port(c.collect()) == EXPECTED  # broken0 (no ports directory) yields nothing
    assert c.init_error is None


def test_every_name_is_in_the_catalog() -> None:
    for s in InfinibandCollector("node1", root=ROOT).collect():
        metric = catalog.get(s.name)
        assert metric is not None and metric.area == "network"
        assert set(s.labels) == set(metric.labels)


def test_no_infiniband_stack_sets_init_error(tmp_path: Path) -> None:
    c = InfinibandCollector("node1", root=tmp_path)
    assert c.collect() == []
    assert c.init_error is not None and "infiniband" in c.init_error
    (tmp_path / "sys" / "class" / "infiniband").mkdir(parents=True)
    assert c.collect() == []  # the stack is there, with no devices: not an error
    assert c.init_error is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("200 Gb/sec (4X HDR)\n", 25e9, id="hdr"),
        pytest.param("100 Gb/sec (4X EDR)", 12.5e9, id="edr"),
        pytest.param("400 Gb/sec (4X NDR)", 50e9, id="ndr"),
        pytest.param("56 Gb/sec (4X FDR)", 7e9, id="fdr"),
        pytest.param("2.5 Gb/sec (1X SDR)", 312.5e6, id="fractional"),
        pytest.param("N/A", None, id="not-a-rate"),
        pytest.param("", None, id="empty"),
    ],
)
def test_parse_rate(text: str, expected: float | None) -> None:
    assert parse_rate(text) == expected
