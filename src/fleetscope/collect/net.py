"""Host network collector: interface counters, link speed, TCP retransmits and per-peer traffic.

All sources are read under a node root directory ``root`` (``/`` on a real node, a fake tree in
tests and in the simulator):

- ``root/proc/net/dev`` (proc(5)): one line per interface, ``<name>: `` then 8 receive fields
  (bytes packets errs drop fifo frame compressed multicast) and 8 transmit fields (bytes packets
  errs drop fifo colls carrier compressed), all cumulative since the interface was created.
  → ``fleet_network_receive_bytes_total``, ``fleet_network_transmit_bytes_total``,
  ``fleet_network_receive_drop_total``, ``fleet_network_transmit_drop_total``,
  ``fleet_network_receive_errs_total``, ``fleet_network_transmit_errs_total`` {node, interface}
  (node_exporter's ``node_network_*`` semantics).
- ``root/sys/class/net/<interface>/speed`` (sysfs ABI ``sysfs-class-net``): the negotiated link
  speed in Mb/s (10^6 bit/s). It reads ``-1`` (SPEED_UNKNOWN) or fails with EINVAL while the link
  is down or on virtual devices; then nothing is emitted. → ``fleet_network_speed_bytes``
  {node, interface} in bytes per second (Mb/s × 125 000), so interface utilization is
  ``rate(fleet_network_transmit_bytes_total[5m]) / fleet_network_speed_bytes``.
- ``root/proc/net/snmp`` (RFC 1213 MIB counters): the ``Tcp:`` header/value line pair's
  ``RetransSegs`` → ``fleet_network_tcp_retransmits_total`` {node}.
- ``root/proc/net/nf_conntrack`` with connection accounting on (sysctl
  ``net.netfilter.nf_conntrack_acct=1``): each connection shows its original-direction tuple
  ``src= dst= sport= dport= packets= bytes=`` then its reply-direction tuple, each with the
  packets and bytes seen in that direction so far. → ``fleet_network_peer_bytes_total``
  {node, peer, direction}: bytes this node sent to (``direction="transmit"``) or received from
  (``"receive"``) each peer, where ``peer`` is the fleet node name of the remote address (from
  ``peers``, IP → node name) or ``external`` — east-west versus north-south traffic.

Per-peer accounting. This node opened a connection when its original source is a local address
or its reply destination is (a container's connection masqueraded — SNAT'd — to this node's
address): original bytes were sent, reply bytes received, and the peer is the reply source (the
real responder after any DNAT). The peer opened it when the original destination or the reply
source is local: original bytes were received, reply bytes sent, and the peer is the original
source. Connections where neither side is local (routed traffic, pod-to-pod traffic without
NAT) and those where both sides are local (loopback) are skipped; a local container's own
address is not a local address, so its connections to this node count as ``external``. Local
addresses are ``local_addresses`` when given, else read every cycle from
``root/proc/net/fib_trie`` (``/32 host LOCAL`` entries) and ``root/proc/net/if_inet6``; loopback
addresses are always local.

Conntrack entries vanish when a connection ends, so the counter is integrated here: the
collector remembers each live connection's last (original, reply) byte counts, keyed by its
original tuple (protocol, addresses, ports or ICMP ids, zone), and adds the growth since the last
cycle to a running total per (peer, direction). A connection seen for the first time contributes
all its bytes (also one that was open before the agent started); a byte count that went down
means a new connection reused the tuple, which contributes all its bytes. **What is lost:** the
bytes a connection carried after its last observation (between the last cycle that saw it and
its end), and all of a connection that opened and closed between two cycles. Short connections
are therefore under-counted; long-lived east-west flows (NCCL over TCP, storage, checkpoints)
are counted almost fully. The totals are cumulative since the collector was created. Reading
``nf_conntrack`` needs CAP_NET_ADMIN and costs time proportional to the table size. When the
entries carry no ``bytes=`` fields (accounting off), no peer series are emitted and that is
logged once.

Missing files cost only their own series; ``init_error`` is set only when none of the sources
exists. Malformed lines are skipped.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fleetscope.collect import Sample

__all__ = [
    "EXTERNAL",
    "Connection",
    "NetCollector",
    "PeerBytes",
    "parse_conntrack",
    "parse_local_addresses",
    "parse_net_dev",
    "parse_snmp",
]

log = logging.getLogger(__name__)

EXTERNAL = "external"  # peer label of addresses that are not fleet nodes
MBIT_BYTES = 1_000_000 / 8  # bytes per second in one Mb/s

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# /proc/net/dev field index (after the interface name) → metric name
_DEV_FIELDS = {
    0: "fleet_network_receive_bytes_total",
    2: "fleet_network_receive_errs_total",
    3: "fleet_network_receive_drop_total",
    8: "fleet_network_transmit_bytes_total",
    10: "fleet_network_transmit_errs_total",
    11: "fleet_network_transmit_drop_total",
}


def parse_net_dev(text: str) -> dict[str, list[int]]:
    """``/proc/net/dev`` → interface → its 16 counters; header and malformed lines are skipped."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or not name or "|" in rest:
            continue
        fields = rest.split()
        if len(fields) < 16 or not all(f.isascii() and f.isdigit() for f in fields[:16]):
            continue
        out[name] = [int(f) for f in fields[:16]]
    return out


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/snmp`` → section (``Tcp``, ``Ip`` …) → field → value.

    Each section is a header line of field names followed by a value line with the same prefix.
    """
    out: dict[str, dict[str, int]] = {}
    header: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        section, sep, rest = line.partition(":")
        if not sep:
            continue
        words = rest.split()
        if header is not None and header[0] == section and len(words) == len(header[1]):
            values: dict[str, int] = {}
            for key, word in zip(header[1], words, strict=True):
                try:
                    values[key] = int(word)
                except ValueError:
                    continue
            out[section] = values
            header = None
        else:
            header = (section, words)
    return out


def parse_local_addresses(fib_trie: str, if_inet6: str) -> set[IPAddress]:
    """This host's addresses from ``/proc/net/fib_trie`` and ``/proc/net/if_inet6``.

    In ``fib_trie`` an address line ``|-- 10.0.0.1`` followed by ``/32 host LOCAL`` is one of
    this host's IPv4 addresses; each ``if_inet6`` line starts with 32 hex digits of an IPv6 one.
    """
    out: set[IPAddress] = set()
    last: str | None = None
    for line in fib_trie.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped.startswith("/32 host LOCAL") and last is not None:
            address = _address(last)
            if address is not None:
                out.add(address)
    for line in if_inet6.splitlines():
        words = line.split()
        if words and len(words[0]) == 32:
            try:
                out.add(ipaddress.IPv6Address(bytes.fromhex(words[0])))
            except ValueError:
                continue
    return out


@dataclass(frozen=True)
class Connection:
    """One conntrack entry: its original tuple (as a key) and the bytes seen each way.

    ``orig_bytes``: bytes sent from ``orig_src`` to ``orig_dst``; ``reply_bytes``: bytes sent
    back from ``reply_src`` to ``reply_dst`` (which differ from the original destination and
    source under DNAT and SNAT). ``None``: the entry has no accounting fields.
    """

    key: tuple[str, ...]
    orig_src: IPAddress
    orig_dst: IPAddress
    reply_src: IPAddress
    reply_dst: IPAddress
    orig_bytes: int | None
    reply_bytes: int | None


def parse_conntrack(text: str) -> Iterator[Connection]:
    """The entries of ``/proc/net/nf_conntrack``; malformed lines are skipped.

    A line is ``<l3> <l3num> <proto> <protonum> [<timeout> [<state>]] src=… dst=… [sport=…
    dport=… | type=… code=… id=…] [packets=… bytes=…] [[UNREPLIED]] src=… dst=… … [packets=…
    bytes=…] [[ASSURED]] mark=… [zone=…] use=…``; IPv6 addresses are written uncompressed.
    """
    for line in text.splitlines():
        words = line.split()
        starts = [i for i, w in enumerate(words) if w.startswith("src=")]
        if len(words) < 4 or len(starts) < 2:
            continue
        orig = _fields(words[starts[0] : starts[1]])
        reply = _fields(words[starts[1] :])
        orig_src, orig_dst = _address(orig.get("src")), _address(orig.get("dst"))
        reply_src, reply_dst = _address(reply.get("src")), _address(reply.get("dst"))
        if orig_src is None or orig_dst is None or reply_src is None or reply_dst is None:
            continue
        tuple_fields = [f"{k}={v}" for k, v in orig.items() if k not in ("packets", "bytes")]
        key = (words[0], words[2], *tuple_fields, f"zone={reply.get('zone', '')}")
        yield Connection(
            key=key,
            orig_src=orig_src,
            orig_dst=orig_dst,
            reply_src=reply_src,
            reply_dst=reply_dst,
            orig_bytes=_int(orig.get("bytes")),
            reply_bytes=_int(reply.get("bytes")),
        )


class PeerBytes:
    """Running totals of bytes exchanged with each peer, integrated from conntrack snapshots.

    ``peers``: fleet node addresses → node names. See the module docstring for what is counted
    and what is lost.
    """

    def __init__(self, peers: Mapping[str, str]) -> None:
        self.peers: dict[IPAddress, str] = {}
        for address, name in peers.items():
            parsed = _address(address)
            if parsed is not None:
                self.peers[parsed] = name
        self.totals: dict[tuple[str, str], int] = {}  # (peer, direction) → bytes
        self._last: dict[tuple[str, ...], tuple[int, int]] = {}  # connection → (orig, reply)

    def update(self, connections: Iterable[Connection], local: set[IPAddress]) -> bool:
        """Add one snapshot's growth (``local``: this host's addresses); ``False`` when the
        entries carry no byte counts."""
        seen: dict[tuple[str, ...], tuple[int, int]] = {}
        entries = accounted = 0
        for conn in connections:
            entries += 1
            if conn.orig_bytes is None or conn.reply_bytes is None:
                continue
            accounted += 1
            side = _side(conn, local)
            if side is None:
                continue
            peer_address, outgoing = side
            now = (conn.orig_bytes, conn.reply_bytes)
            before = self._last.get(conn.key, (0, 0))
            if now[0] < before[0] or now[1] < before[1]:  # a new connection reused the tuple
                before = (0, 0)
            seen[conn.key] = now
            sent, received = now[0] - before[0], now[1] - before[1]
            if not outgoing:
                sent, received = received, sent
            peer = self.peers.get(peer_address, EXTERNAL)
            self._add(peer, "transmit", sent)
            self._add(peer, "receive", received)
        self._last = seen
        return accounted > 0 or entries == 0

    def _add(self, peer: str, direction: str, count: int) -> None:
        key = (peer, direction)
        self.totals[key] = self.totals.get(key, 0) + count


class NetCollector:
    """Host network series from ``root`` (see the module docstring).

    ``local_addresses``: this node's IP addresses (empty: read them from ``root/proc/net``);
    ``peers``: IP address → fleet node name; ``ignore_interfaces``: a regular expression of
    interface names to leave out (loopback by default).
    """

    name = "net"

    def __init__(
        self,
        node: str,
        root: Path | str = "/",
        local_addresses: Iterable[str] = (),
        peers: Mapping[str, str] | None = None,
        ignore_interfaces: str = r"^lo$",
    ) -> None:
        self.node = node
        self.root = Path(root)
        self.local_addresses = {a for a in map(_address, local_addresses) if a is not None}
        self.ignore = re.compile(ignore_interfaces)
        self.peer_bytes = PeerBytes(peers or {})
        self.init_error: str | None = None
        self._logged: set[str] = set()

    def collect(self) -> list[Sample]:
        found: list[bool] = []
        out: list[Sample] = []
        out.extend(self._interfaces(found))
        out.extend(self._speeds(found))
        out.extend(self._retransmits(found))
        out.extend(self._peers(found))
        if any(found):
            self.init_error = None
        else:
            self.init_error = f"no network sources under {self.root}"
            self._log_once(self.init_error)
        return out

    def _read(self, *parts: str) -> str | None:
        try:
            return self.root.joinpath(*parts).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def _interfaces(self, found: list[bool]) -> Iterator[Sample]:
        text = self._read("proc", "net", "dev")
        found.append(text is not None)
        for interface, counters in parse_net_dev(text or "").items():
            if self.ignore.search(interface):
                continue
            labels = {"node": self.node, "interface": interface}
            for index, name in _DEV_FIELDS.items():
                yield Sample(name, labels, float(counters[index]))

    def _speeds(self, found: list[bool]) -> Iterator[Sample]:
        try:
            interfaces = sorted(p.name for p in (self.root / "sys" / "class" / "net").iterdir())
        except OSError:
            found.append(False)
            return
        found.append(True)
        for interface in interfaces:
            if self.ignore.search(interface):
                continue
            text = self._read("sys", "class", "net", interface, "speed")
            speed = _int(text.strip()) if text is not None else None
            if speed is not None and speed > 0:
                labels = {"node": self.node, "interface": interface}
                yield Sample("fleet_network_speed_bytes", labels, speed * MBIT_BYTES)

    def _retransmits(self, found: list[bool]) -> Iterator[Sample]:
        text = self._read("proc", "net", "snmp")
        found.append(text is not None)
        retrans = parse_snmp(text or "").get("Tcp", {}).get("RetransSegs")
        if retrans is not None and retrans >= 0:
            yield Sample("fleet_network_tcp_retransmits_total", {"node": self.node}, float(retrans))

    def _peers(self, found: list[bool]) -> Iterator[Sample]:
        text = self._read("proc", "net", "nf_conntrack")
        found.append(text is not None)
        if text is None:
            return
        local = self.local_addresses or self._discover_local()
        if not local:
            self._log_once("no local addresses known: peer bytes count nothing")
        if not self.peer_bytes.update(parse_conntrack(text), local):
            self._log_once("conntrack has no byte counts (set net.netfilter.nf_conntrack_acct=1)")
            return
        for (peer, direction), count in sorted(self.peer_bytes.totals.items()):
            labels = {"node": self.node, "peer": peer, "direction": direction}
            yield Sample("fleet_network_peer_bytes_total", labels, float(count))

    def _discover_local(self) -> set[IPAddress]:
        fib = self._read("proc", "net", "fib_trie") or ""
        inet6 = self._read("proc", "net", "if_inet6") or ""
        return parse_local_addresses(fib, inet6)

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s on %s (logged once)", message, self.node)


def _side(conn: Connection, local: set[IPAddress]) -> tuple[IPAddress, bool] | None:
    """(peer address, whether this node opened the connection), or ``None`` if not local."""

    def is_local(address: IPAddress) -> bool:
        return address.is_loopback or address in local

    opened = is_local(conn.orig_src) or is_local(conn.reply_dst)  # the latter: SNAT here
    answered = is_local(conn.reply_src) or is_local(conn.orig_dst)
    if opened == answered:  # forwarded traffic (neither side) or a loopback connection (both)
        return None
    return (conn.reply_src, True) if opened else (conn.orig_src, False)


def _fields(words: list[str]) -> dict[str, str]:
    """``key=value`` words → a dict (the first of a repeated key wins; ``[FLAGS]`` skipped)."""
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def _address(text: str | None) -> IPAddress | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
