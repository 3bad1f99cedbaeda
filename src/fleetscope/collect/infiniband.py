"""InfiniBand collector: per-port traffic, error counters and link rate from sysfs.

Reads ``root/sys/class/infiniband/<device>/ports/<port>/`` (kernel ABI
``Documentation/ABI/stable/sysfs-class-infiniband``; ``root`` is ``/`` on a real node, a fake
tree in tests and in the simulator):

- ``counters/port_xmit_data``, ``counters/port_rcv_data``: "total number of data octets,
  divided by 4 (lanes)" — the PMA PortCounters data counters count 4-byte words, so bytes =
  value × 4. Where the plain files are absent, the 64-bit extended counters
  ``counters_ext/port_xmit_data_64`` / ``counters_ext/port_rcv_data_64`` (also in 4-byte words;
  older drivers expose the 64-bit PortCountersExtended only there, since the 32-bit plain
  counters stop at 2^32 − 1 words, about 17 GB) are used instead. Current mlx5 drivers put
  64-bit values in the plain files. → ``fleet_infiniband_port_transmit_bytes_total``,
  ``fleet_infiniband_port_receive_bytes_total``.
- ``counters/link_downed`` (times the link error recovery process failed and the link went
  down) → ``fleet_infiniband_link_downed_total``; ``counters/symbol_error`` (minor link errors
  detected on physical lanes) → ``fleet_infiniband_symbol_errors_total``;
  ``counters/port_rcv_errors`` (received packets containing an error) →
  ``fleet_infiniband_port_receive_errors_total``.
- ``rate``, e.g. ``200 Gb/sec (4X HDR)``: the active link rate in Gb/s (10^9 bit/s) →
  ``fleet_infiniband_port_rate_bytes`` in bytes per second (Gb/s × 125 000 000).

All series carry {node, device, port}. Link saturation per direction is throughput over rate::

    rate(fleet_infiniband_port_transmit_bytes_total[5m]) / fleet_infiniband_port_rate_bytes
    rate(fleet_infiniband_port_receive_bytes_total[5m]) / fleet_infiniband_port_rate_bytes

A counter file that is missing, unreadable or not a number (some drivers write ``N/A (no
PMA)``) costs only its own series. ``init_error`` is set when ``root/sys/class/infiniband``
cannot be listed (no InfiniBand stack on the node).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from fleetscope.collect import Sample

__all__ = ["InfinibandCollector", "parse_rate"]

log = logging.getLogger(__name__)

WORD_BYTES = 4  # the data counters count 4-byte words
GBIT_BYTES = 1_000_000_000 / 8  # bytes per second in one Gb/s

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*Gb/sec")

# counter file → metric; the data counters are scaled by WORD_BYTES
_DATA = {
    "port_xmit_data": "fleet_infiniband_port_transmit_bytes_total",
    "port_rcv_data": "fleet_infiniband_port_receive_bytes_total",
}
_ERRORS = {
    "link_downed": "fleet_infiniband_link_downed_total",
    "symbol_error": "fleet_infiniband_symbol_errors_total",
    "port_rcv_errors": "fleet_infiniband_port_receive_errors_total",
}


def parse_rate(text: str) -> float | None:
    """A sysfs ``rate`` (``100 Gb/sec (4X EDR)``) in bytes per second; ``None`` if malformed."""
    found = _RATE.match(text)
    return None if found is None else float(found.group(1)) * GBIT_BYTES


class InfinibandCollector:
    """InfiniBand port series from ``root/sys/class/infiniband`` (see the module docstring)."""

    name = "infiniband"

    def __init__(self, node: str, root: Path | str = "/") -> None:
        self.node = node
        self.root = Path(root)
        self.init_error: str | None = None
        self._logged: set[str] = set()

    def collect(self) -> list[Sample]:
        base = self.root / "sys" / "class" / "infiniband"
        try:
            devices = sorted(p for p in base.iterdir() if p.is_dir())
        except OSError as err:
            self.init_error = f"cannot list {base}: {err.strerror or err}"
            if self.init_error not in self._logged:
                self._logged.add(self.init_error)
                log.warning("%s on %s (logged once)", self.init_error, self.node)
            return []
        self.init_error = None
        out: list[Sample] = []
        for device in devices:
            try:
                ports = sorted((p for p in (device / "ports").iterdir()), key=_port_order)
            except OSError:
                continue
            for port in ports:
                out.extend(self._port(device.name, port))
        return out

    def _port(self, device: str, port: Path) -> Iterator[Sample]:
        labels = {"node": self.node, "device": device, "port": port.name}
        counters = port / "counters"
        for counter, name in _DATA.items():
            words = _read_int(counters / counter)
            if words is None:
                words = _read_int(port / "counters_ext" / f"{counter}_64")
            if words is not None:
                yield Sample(name, labels, float(words * WORD_BYTES))
        for counter, name in _ERRORS.items():
            value = _read_int(counters / counter)
            if value is not None:
                yield Sample(name, labels, float(value))
        try:
            rate = parse_rate((port / "rate").read_text(encoding="utf-8", errors="replace"))
        except OSError:
            rate = None
        if rate is not None:
            yield Sample("fleet_infiniband_port_rate_bytes", labels, rate)


def _read_int(path: Path) -> int | None:
    """A non-negative integer file; ``None`` when missing, unreadable or not a number."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None


def _port_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)
