"""The simulator's node I/O model: host load, storage, Ethernet, InfiniBand and Xid errors.

Per node and tick, from the jobs running on its GPUs (their rendered
:class:`~fleetscope.simulate.behaviour.Frame`), :func:`render` computes what the node's kernel
counters grow by; :class:`IOCounters` integrates them from node boot (counters restart when a
down node comes back: it rebooted). The backfill turns the cumulative values into series
(:func:`fleetscope.simulate.series.node_batch`) and the live path writes them into each node's
fake ``/proc`` and ``/sys`` (:meth:`fleetscope.simulate.roots.RootTree.sync_io`), so both read
the same numbers. Everything is a pure function of (seed, node, tick, holders): noise comes from
:func:`~fleetscope.simulate.behaviour.noise`, faults from per-day seeded generators
(``[seed, 0x10 + kind, day]``), so any cut of the timeline gives the same values.

Hardware (:func:`hardware`): H100 nodes have 4 ConnectX HCAs at 400 Gb/s (4X NDR), A100 nodes 4
at 200 Gb/s (4X HDR) — one HCA per two GPUs, as in DGX-class servers; L40S nodes are PCIe
inference servers with Ethernet only. Every node has a 100 GbE ``eth0`` (storage and service
network), one NVMe disk ``nvme0n1`` (``p1`` = ``/``, ``p2`` = ``/scratch``), a squashfs
``loop0`` and the NFS v4.2 mount ``nas01:/export/datasets`` on ``/datasets``.

Traffic, per GPU whose job runs a process on it (``u`` = its utilization, 0–1):

- *Training, fine-tuning, batch* read input at ``pcie_kbps × 1024 / 10`` bytes/s × ``u``
  (5–200 MB/s per GPU: a tenth of the host→GPU PCIe rate, decoded samples being ~10× their
  compressed size; ImageNet-style vision training reads ~100–300 MB/s per A100, LLM token
  streams far less). A third of the jobs staged their data on ``/scratch`` (85 % local reads);
  the rest read 90 % from NFS. Batch jobs write 5 % of what they read to NFS; training writes
  0.2 MB/s of logs to NFS per GPU.
- *Checkpoints*: steady training writes a fifth of its GPU memory (its shard of weights and
  optimizer state) to ``/scratch`` during each checkpoint dip (3 ticks every 30–60 min, the dip
  of :mod:`~fleetscope.simulate.behaviour`): 9–15 GB per 80 GB GPU, up to ~2.7 GB/s for 8 GPUs,
  within an NVMe Gen4 drive's ~3.5 GB/s sequential write.
- *Multi-node jobs* all-reduce gradients: per GPU ``0.25 × node fabric / GPUs per node × u``,
  both directions (ring all-reduce sends and receives ~2(n−1)/n of the gradient per step),
  spread over the node's HCAs: ~45 GB/s per busy H100 node on 4×NDR, ~22 GB/s on 4×HDR. An
  Ethernet-only node uses 60 % of its 100 GbE as its fabric (~1.9 GB/s of all-reduce on
  ``eth0`` at full load). Every multi-node job also keeps one TCP connection per non-first node
  to its first node (the c10d rendezvous store, port 29500) carrying 120 kB/s out and 80 kB/s
  back — the east-west flows ``nf_conntrack`` shows.
- *Inference* serves 1.5 MB/s in and 4 MB/s out per GPU at full load (requests and streamed
  tokens); *notebooks* read 20 MB/s from NFS while busy.
- Every node up: 250 kB/s in and 180 kB/s out on ``eth0`` (agents, ssh, logs), 3 reads/s and
  25 writes/s of 16 KiB on ``/``, 20 kB/s of NFS reads and 2 kB/s of writes, 30 kB/s of IPoIB
  (``ib0``, on nodes with HCAs: RDMA traffic bypasses it).

Derived counters: NFS READ ops = bytes / 512 KiB, WRITE ops = bytes / 256 KiB, RTT 0.6 ms per
READ (+ up to 1.2 ms under load), 1.3× that per WRITE; disk reads of 128 KiB at 0.15 ms, writes
of 256 KiB at 0.05–0.5 ms (queueing grows with the write rate), busy time = read rate / 6.5 GB/s
+ write rate / 3.5 GB/s;
Ethernet packets of 4000 bytes (jumbo and small frames mixed), TCP segments of 1448 bytes with
2·10⁻⁵ retransmitted, IB packets of 4096 bytes. CPU: 1 core of system work plus, per GPU, 3 cores
× ``u`` (+0.5) for training data loaders, 4 for batch, 1.5 for inference, 2 for notebooks, and 6
for a data-starved (bursty) job; user 85 %, system 12 %, irq+softirq 3 %. Host memory in use: 3 %
of RAM plus half of the job's GPU memory (pinned buffers, prefetch, CPU-side model copy).

Faults (rare, drawn per UTC day):

- a *flaky InfiniBand link* (``0.3 × nodes / 8`` per day fleet-wide, 30 min–6 h): one port runs
  at 30 % of its throughput, ``symbol_error`` grows by ~15 per tick, ``port_rcv_errors`` by ~1,
  ``link_downed`` steps at its start and about every 2 h (a healthy port gains one symbol error
  a day). ``symbol_error`` and ``port_rcv_errors`` saturate at 65535, ``link_downed`` at 255
  (the 16- and 8-bit fields of the PMA PortCounters attribute, which stop at their maximum);
- a *slow NFS server* (0.15 per day, fleet-wide, 20 min–3 h): RTT 80–250 ms per op, NFS
  throughput down to 30 %, Ethernet drops and TCP retransmits up 100×;
- *Xid errors*: 1.2·10⁻⁶ per GPU and tick (≈ 3 a week on 64 GPUs at 15 s ticks: rare enough
  to be news on the fleet page, frequent enough that two weeks of history hold a few).
  On a GPU running a process: 13, 31, 43 (application errors, tied to its job), 94 (contained
  ECC), 63 (row remap pending), 48 (double-bit ECC), 79 (fallen off the bus); on an idle GPU
  only 63, 48 and 79. They are observations only: the GPU and its job carry on.

Mesh probe (:func:`mesh_attempts`): every node's agent TCP-connects ``MESH_ATTEMPTS`` times per
tick to every other node (:func:`mesh_pairs`; with more than ``MESH_PEERS + 1`` nodes, to the
next ``MESH_PEERS`` in fleet order), as :class:`~fleetscope.collect.mesh.MeshProbe` does. A
connect takes one SYN → SYN-ACK round trip: a base of 50–200 µs per node pair (same switch;
fixed per unordered pair, ±5 % per direction) plus each end's queueing, ``100 µs × ρ/(1 − ρ)``
with ``ρ`` its Ethernet load (bytes/s over ``eth0``'s speed, an M/M/1 wait, ``ρ`` ≤ 0.95), plus
``200 µs × ρ_ib`` for its InfiniBand load (0–0.25: all-reduce keeps the host's cores and PCIe
busy, so the kernel answers the SYN later; up to +50 µs per end), ±10 % jitter per attempt and
a rare (1 %) 0.2–2 ms scheduling hiccup. A lost SYN or SYN-ACK is retransmitted only after
Linux's initial 1 s RTO (RFC 6298), past the probe's 1 s timeout, so it fails the attempt.
While a flaky InfiniBand link is active on either end (a bad cable or transceiver on that node:
its link retraining stalls the host's traffic) an attempt fails with probability 0.3–0.8 (by
the episode's severity), and during a slow-NFS episode (the Ethernet congestion that drops
frames fleet-wide) with 0.05–0.2; the attempts that get through then wait ``p × (1–16 ms)``
more (``p`` the pair's loss probability). A down node's probes and the probes to it all fail.
Only ``+ − × ÷`` on :func:`noise` values, so the value of one pair and tick does not depend on
which block or slice computes it.

Units are the kernel's: jiffies at ``USER_HZ`` = 100 for CPU time, 512-byte sectors and
milliseconds in ``/proc/diskstats``, 4-byte words for the IB data counters, kB in
``/proc/meminfo``. Values at the origin are "since boot" with an uptime of 3–40 days.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from fleetscope.collect.xid import action_of
from fleetscope.model import Event
from fleetscope.simulate.behaviour import Frame, noise
from fleetscope.simulate.cluster import OPEN
from fleetscope.simulate.fleet import Fleet
from fleetscope.simulate.jobs import DAY_S, Pattern, SimJob

__all__ = [
    "DISK",
    "FIELDS",
    "LOOP",
    "MESH_ATTEMPTS",
    "MESH_PEERS",
    "MOUNTS",
    "NFS_EXPORT",
    "NFS_MOUNT",
    "NFS_SERVER_ADDRESS",
    "PF",
    "PORT_FIELDS",
    "SATURATE",
    "USER_HZ",
    "Connection",
    "F",
    "Hardware",
    "IOCounters",
    "IOFrame",
    "NodeState",
    "Xid",
    "connections",
    "hardware",
    "kern_line",
    "kernel_pci_bus_id",
    "mesh_attempts",
    "mesh_pairs",
    "node_address",
    "port_nodes",
    "render",
    "saturated",
    "xid_event",
    "xid_message",
]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

USER_HZ = 100  # jiffies per second in /proc/stat (sysconf(_SC_CLK_TCK))
KIB = 1024
DISK = "nvme0n1"
LOOP = "loop0"
NFS_EXPORT = "nas01:/export/datasets"
NFS_MOUNT = "/datasets"
NFS_SERVER_ADDRESS = "10.20.0.5"
MOUNTS = ("/", "/scratch", NFS_MOUNT)
RENDEZVOUS_PORT = 29500

# Node counters (cumulative since boot), in the kernel's units.
FIELDS: tuple[str, ...] = (
    "cpu_user", "cpu_nice", "cpu_system", "cpu_idle", "cpu_iowait", "cpu_irq", "cpu_softirq",
    "cpu_steal", "ctxt", "forks",
    "disk_reads", "disk_reads_merged", "disk_sectors_read", "disk_read_ms",
    "disk_writes", "disk_writes_merged", "disk_sectors_written", "disk_write_ms",
    "disk_io_ms", "disk_weighted_ms",
    "nfs_read_bytes", "nfs_write_bytes", "nfs_read_ops", "nfs_write_ops",
    "nfs_read_rtt_ms", "nfs_write_rtt_ms", "nfs_read_exe_ms", "nfs_write_exe_ms",
    "nfs_getattr_ops",
    "eth_rx_bytes", "eth_rx_packets", "eth_rx_errs", "eth_rx_drop", "eth_rx_multicast",
    "eth_tx_bytes", "eth_tx_packets", "eth_tx_errs", "eth_tx_drop",
    "ib0_rx_bytes", "ib0_rx_packets", "ib0_rx_errs", "ib0_rx_drop",
    "ib0_tx_bytes", "ib0_tx_packets", "ib0_tx_errs", "ib0_tx_drop",
    "lo_bytes", "lo_packets",
    "tcp_active_opens", "tcp_passive_opens", "tcp_in_segs", "tcp_out_segs", "tcp_retrans",
)  # fmt: skip
# InfiniBand port counters (sysfs counters/<name>), cumulative since boot.
PORT_FIELDS: tuple[str, ...] = (
    "port_xmit_data", "port_rcv_data", "port_xmit_packets", "port_rcv_packets",
    "symbol_error", "link_downed", "port_rcv_errors", "link_error_recovery", "port_xmit_wait",
    "port_xmit_discards",
)  # fmt: skip
SATURATE = {"symbol_error": 0xFFFF, "port_rcv_errors": 0xFFFF, "link_downed": 0xFF,
            "link_error_recovery": 0xFF, "port_xmit_discards": 0xFFFF}  # fmt: skip
F = {name: i for i, name in enumerate(FIELDS)}
_SMALL = [i for i, name in enumerate(FIELDS) if name.startswith(("nfs_", "tcp_", "disk_"))
          or name.endswith(("_errs", "_drop", "_multicast")) or name == "forks"]  # fmt: skip
PF = {name: i for i, name in enumerate(PORT_FIELDS)}

_TRAIN, _BATCH, _INFER, _NOTEBOOK = 0, 1, 2, 3
_CLASS = {"training": _TRAIN, "fine_tuning": _TRAIN, "batch": _BATCH, "inference": _INFER,
          "notebook": _NOTEBOOK}  # fmt: skip
XID_RATE = 1.2e-6  # per GPU and tick
FLAKY_LINKS_PER_NODE_DAY = 0.3 / 8  # flaky InfiniBand link episodes
SLOW_NFS_PER_DAY = 0.15  # slow NFS server episodes, fleet-wide
MESH_ATTEMPTS = 3  # TCP connects per peer and tick (MeshProbe's default)
MESH_PEERS = 63  # peers each node probes at most (every other node in fleets up to 64 nodes)
_XIDS_BUSY = ((13, 0.2), (31, 0.25), (43, 0.1), (94, 0.15), (63, 0.15), (48, 0.08), (79, 0.07))
_XIDS_IDLE = ((63, 0.5), (48, 0.3), (79, 0.2))
_XID_TEXT = {
    13: "Graphics SM Warp Exception on (GPC 1, TPC 0, SM 1): Out Of Range Address",
    31: "Ch 00000010, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_3 faulted @ "
    "0x7f3a_8c200000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ",
    43: "Ch 00000018",
    48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer "
    "at partition 6, subpartition 0.",
    63: "Row Remapper: New row marked for remapping, reset gpu to activate.",
    79: "GPU has fallen off the bus.",
    94: "Contained: SM (0x1). RST: No, D-RST: No",
}


def kernel_pci_bus_id(index: int) -> str:
    """The PCI address the NVRM lines print for GPU ``index``: ``0000:18:00`` …

    The fake NVML's ``busId`` is ``00000000:<0x18 + index>:00.0``
    (:class:`~fleetscope.simulate.nvml.FakeDevice`); this is its kernel form."""
    return f"0000:{(0x18 + index) % 256:02x}:00"


def xid_message(xid: int) -> str:
    return _XID_TEXT.get(xid, "")


@dataclass(frozen=True)
class Hardware:
    """One node's fixed hardware. Sizes in bytes; ``ib_gbps`` per port (0: no InfiniBand)."""

    node: str
    cpus: int
    mem_total_kb: int
    hcas: tuple[str, ...]
    ib_gbps: int
    ib_rate_text: str  # sysfs ``rate``
    eth_mbps: int  # sysfs ``speed`` of eth0
    address: str  # eth0's IPv4 address
    filesystems: dict[str, tuple[int, int]]  # mount → (size, available) bytes
    disk_sectors: int  # size of nvme0n1 in 512-byte sectors


_IB = {"h100": (4, 400, "400 Gb/sec (4X NDR)"), "a100": (4, 200, "200 Gb/sec (4X HDR)")}
_CPUS = {"h100": 112, "a100": 128, "l40s": 64}
_MEM_GIB = {"h100": 2048, "a100": 1024, "l40s": 512}


def node_address(node_id: int) -> str:
    return f"10.20.{1 + node_id // 200}.{10 + node_id % 200}"


def hardware(fleet: Fleet) -> list[Hardware]:
    """The hardware of every node, in fleet order (deterministic from the seed)."""
    rng = np.random.default_rng([fleet.spec.seed, 0x10])
    out = []
    tib = 1024**4
    for node in fleet.nodes:
        key = node.model.key
        hcas, gbps, text = _IB.get(key, (0, 0, ""))
        root_size = 200 * 1024**3
        scratch_size = int(3.3 * tib) // 4096 * 4096
        nfs_size = 500 * tib
        used = rng.uniform([0.3, 0.2, 0.6], [0.6, 0.8, 0.75])
        sizes = (root_size, scratch_size, nfs_size)
        fs = {
            m: (s, int(s * (1 - f)) // 4096 * 4096)
            for m, s, f in zip(MOUNTS, sizes, used, strict=True)
        }
        out.append(
            Hardware(
                node=node.name,
                cpus=_CPUS.get(key, 64),
                mem_total_kb=_MEM_GIB.get(key, 512) * 1024**2 - 6_553_600,  # kernel reserved
                hcas=tuple(f"mlx5_{i}" for i in range(hcas)),
                ib_gbps=gbps,
                ib_rate_text=text,
                eth_mbps=100_000,
                address=node_address(node.id),
                filesystems=fs,
                disk_sectors=7_501_476_528,  # a 3.84 TB NVMe drive
            )
        )
    return out


@dataclass(frozen=True)
class Xid:
    """One Xid the driver reports: fleet GPU id, tick, code, and the process it hit."""

    tick: int
    gpu: int
    xid: int
    pid: int | None
    job_seq: int | None


@dataclass
class IOFrame:
    """What every node's counters grow by at each tick of a block (rows: nodes or ports)."""

    ticks: I64  # (K,)
    up: B  # (N, K) the node is up
    boot: B  # (N, K) the node came back (rebooted) at this tick
    inc: I64  # (len(FIELDS), N, K)
    port_inc: I64  # (len(PORT_FIELDS), P, K), ports in (node, HCA) order
    mem_used_kb: I64  # (N, K)
    load_centi: I64  # (N, K) one-minute load average × 100
    running: I64  # (N, K) runnable tasks
    eth_load: F64  # (N, K) eth0 bytes/s over its speed, the larger direction, 0–0.95
    ib_load: F64  # (N, K) all-reduce bytes/s over the node's InfiniBand speed (0: no HCA)
    syn_loss: F64  # (N, K) chance a fault on the node loses a mesh probe's SYN or SYN-ACK
    xids: list[Xid] = field(default_factory=list)


def port_nodes(hw: Sequence[Hardware]) -> I64:
    """The node id of every InfiniBand port row."""
    return np.array([n for n, h in enumerate(hw) for _ in h.hcas], np.int64)


def _episodes(seed: int, kind: int, days: range, rate: float, lo_s: float, hi_s: float,
              tick_s: int, n_targets: int) -> list[tuple[int, int, int, float]]:  # fmt: skip
    """Fault episodes (target, start tick, end tick, severity 0–1) starting on ``days``."""
    out = []
    for day in days:
        rng = np.random.default_rng([seed, 0x10 + kind, day])
        for _ in range(int(rng.poisson(rate))):
            target = int(rng.integers(max(1, n_targets)))
            start = (day * DAY_S + int(rng.integers(DAY_S))) // tick_s
            dur = math.exp(rng.uniform(math.log(lo_s), math.log(hi_s)))
            out.append((target, start, start + max(1, round(dur / tick_s)), float(rng.random())))
    return out


def _interval_mask(rows: int, ticks: I64, spans: Sequence[tuple[int, int, int]]) -> B:
    """(rows, K) mask of ``[start, end)`` spans per row."""
    m = np.zeros((rows, len(ticks)), bool)
    k0 = int(ticks[0])
    for row, a, b in spans:
        a, b = max(a, k0) - k0, min(b, k0 + len(ticks)) - k0
        if b > a:
            m[row, a:b] = True
    return m


def render(
    fleet: Fleet,
    hw: Sequence[Hardware],
    frame: Frame,
    jobs: Sequence[SimJob],
    down: Sequence[Sequence[tuple[int, int]]],
) -> IOFrame:
    """The I/O of ticks ``frame.ticks`` (see the module docstring); ``jobs`` must include every
    job holding a GPU then, ``down`` each node's ``[down, up)`` intervals."""
    spec = fleet.spec
    seed, tick_s = spec.seed, spec.tick_s
    ticks = frame.ticks
    n_nodes, k = len(fleet.nodes), len(ticks)
    starts = np.array([n.gpus[0].id for n in fleet.nodes], np.int64)
    node_of = np.array([g.node_id for g in fleet.gpus], np.int64)
    per_node = np.array([len(n.gpus) for n in fleet.nodes], np.float64)[:, None]
    nrow = np.arange(n_nodes, dtype=np.int64)[:, None]

    def node_sum(x: F64) -> F64:
        return np.add.reduceat(x, starts, axis=0)

    def jit(ch: int, spread: float = 0.4) -> F64:
        return 1.0 - spread / 2 + spread * noise(seed, nrow, ticks[None, :], 0x100 + ch)

    # per-job attributes looked up through the holder grid
    seqs = np.array(sorted(j.seq for j in jobs), np.int64)
    by_seq = {j.seq: j for j in jobs}
    ordered = [by_seq[int(s)] for s in seqs]
    pos = np.clip(np.searchsorted(seqs, frame.holder), 0, max(len(seqs) - 1, 0))
    held = (
        (frame.holder >= 0) & (seqs[pos] == frame.holder)
        if len(seqs)
        else np.zeros(frame.holder.shape, bool)
    )
    local = np.where(held, pos, len(seqs))

    def attr(values: Sequence[float], fill: float = 0.0) -> F64:
        return np.asarray([*values, fill], np.float64)[local]

    cls = attr([_CLASS.get(j.workload, _BATCH) for j in ordered], -1)
    multi = attr([len(j.nodes) > 1 for j in ordered]) > 0
    in_rate = attr([j.pcie_kbps * KIB / 10 for j in ordered])
    staged = attr([(j.seq * 0x9E3779B1 >> 7) % 3 == 0 for j in ordered]) > 0
    pattern = attr([j.pattern for j in ordered], -1)
    period = attr([j.period for j in ordered], 1).astype(np.int64)
    phase = attr([j.phase for j in ordered]).astype(np.int64)

    active = frame.process & frame.up
    u = np.where(active, frame.util_pct / 100.0, 0.0)
    loads = (cls == _TRAIN) | (cls == _BATCH)
    read = np.where(loads, in_rate * u, 0.0)
    local_share = np.where(staged, 0.85, 0.1)
    nfs_read_g = read * (1 - local_share) + np.where(cls == _NOTEBOOK, 20e6 * u, 0.0)
    disk_read_g = read * local_share
    nfs_write_g = np.where(cls == _BATCH, 0.05 * read, 0.0) + np.where(
        (cls == _TRAIN) & active, 0.2e6, 0.0
    )
    steady = (pattern == Pattern.STEADY) | ((pattern == Pattern.PARTIAL) & (frame.rank == 0))
    dip = steady & active & (((ticks[None, :] + phase) % period) < 3)
    ckpt_g = np.where(dip, 0.2 * frame.memory_used_bytes / (3 * tick_s), 0.0)
    inf_rx_g = np.where(cls == _INFER, 1.5e6 * u, 0.0)
    inf_tx_g = np.where(cls == _INFER, 4e6 * u, 0.0)
    ib_cap = np.array([len(h.hcas) * h.ib_gbps * 125e6 for h in hw], np.float64)
    eth_cap = np.array([h.eth_mbps * 125e3 for h in hw], np.float64)
    fabric = np.where(ib_cap > 0, ib_cap, 0.6 * eth_cap)[node_of][:, None]
    ar_g = np.where(multi & active, 0.25 * fabric / per_node[node_of] * u, 0.0)
    cores_g = np.where(active, 0.5, 0.0) + u * np.select(
        [cls == _TRAIN, cls == _BATCH, cls == _INFER, cls == _NOTEBOOK], [3.0, 4.0, 1.5, 2.0], 0.0
    )
    cores_g = np.where(active & (pattern == Pattern.BURSTY), 6.0, cores_g)
    pinned_g = np.where(active, 0.5 * frame.memory_used_bytes, 0.0)

    # node up / boot from the down intervals
    up = np.ones((n_nodes, k), bool)
    boot = np.zeros((n_nodes, k), bool)
    k0, k1 = int(ticks[0]), int(ticks[-1]) + 1
    for n, intervals in enumerate(down):
        for d0, d1 in intervals:
            a, b = max(d0, k0) - k0, min(d1, k1) - k0
            if b > a:
                up[n, a:b] = False
            if d1 != OPEN and k0 <= d1 < k1:
                boot[n, d1 - k0] = True
    upf = up.astype(np.float64)

    # faults
    days = range(k0 * tick_s // DAY_S - 1, (k1 - 1) * tick_s // DAY_S + 1)
    ports = port_nodes(hw)
    n_ports = len(ports)
    flaky_rate = FLAKY_LINKS_PER_NODE_DAY * n_nodes
    flaky = _episodes(seed, 0, days, flaky_rate, 1800, 6 * 3600, tick_s, n_ports)
    if not n_ports:
        flaky = []
    port_fault = _interval_mask(n_ports, ticks, [(p, a, b) for p, a, b, _ in flaky])
    slow_eps = _episodes(seed, 1, days, SLOW_NFS_PER_DAY, 1200, 3 * 3600, tick_s, 1)
    slow = _interval_mask(1, ticks, [(0, a, b) for _, a, b, _ in slow_eps])[0]
    slow_rtt = np.zeros(k)
    for _, a, b, sev in slow_eps:
        lo, hi = max(a, k0) - k0, min(b, k1) - k0
        if hi > lo:
            slow_rtt[lo:hi] = 80 + 170 * sev

    inc = np.zeros((len(FIELDS), n_nodes, k), np.float64)

    def put(name: str, values: npt.ArrayLike) -> None:
        inc[F[name]] = np.asarray(values, np.float64) * upf

    # storage
    nfs_slow = np.where(slow, 0.3, 1.0)[None, :]
    nfs_read = (node_sum(nfs_read_g) * nfs_slow + 20e3) * jit(1) * tick_s
    nfs_write = (node_sum(nfs_write_g) * nfs_slow + 2e3) * jit(2) * tick_s
    read_ops = nfs_read / (512 * KIB)
    write_ops = nfs_write / (256 * KIB)
    load = (nfs_read + nfs_write) / tick_s / 2e9
    rtt = np.where(slow, slow_rtt, 0.0)[None, :] + 0.6 + 1.2 * np.minimum(load, 1.0)
    put("nfs_read_bytes", nfs_read)
    put("nfs_write_bytes", nfs_write)
    put("nfs_read_ops", read_ops)
    put("nfs_write_ops", write_ops)
    put("nfs_getattr_ops", 3.0 * tick_s * jit(3))
    d_read = (node_sum(disk_read_g) * jit(4) + 3 * 16 * KIB) * tick_s
    d_write = (node_sum(ckpt_g) * jit(5, 0.1) + 25 * 16 * KIB) * tick_s
    reads = d_read / (128 * KIB)
    writes = d_write / (256 * KIB)
    w_lat = 0.05 + 0.45 * np.minimum(d_write / tick_s / 3.5e9, 1.0)
    busy = np.minimum(d_read / 6.5e9 + d_write / 3.5e9, tick_s) * 1000
    put("disk_reads", reads)
    put("disk_reads_merged", reads * 0.05)
    put("disk_sectors_read", d_read / 512)
    put("disk_read_ms", reads * 0.15)
    put("disk_writes", writes)
    put("disk_writes_merged", writes * 0.2)
    put("disk_sectors_written", d_write / 512)
    put("disk_write_ms", writes * w_lat)
    put("disk_io_ms", busy)
    put("disk_weighted_ms", reads * 0.15 + writes * w_lat)

    # network
    ar = node_sum(ar_g)
    ib_node = ib_cap[:, None] > 0
    eth_ar = np.where(ib_node, 0.0, ar)
    ew_conns = _rendezvous_counts(fleet, jobs, ticks)  # (2, N, K): opened, accepted
    ew_tx = ew_conns[0] * 120e3 + ew_conns[1] * 80e3
    ew_rx = ew_conns[0] * 80e3 + ew_conns[1] * 120e3
    rx = (nfs_read / tick_s + node_sum(inf_rx_g) + eth_ar + ew_rx + 250e3) * tick_s
    tx = (nfs_write / tick_s + node_sum(inf_tx_g) + eth_ar + ew_tx + 180e3) * tick_s
    rx, tx = rx * jit(6, 0.04), tx * jit(7, 0.04)
    put("eth_rx_bytes", rx)
    put("eth_tx_bytes", tx)
    put("eth_rx_packets", rx / 4000)
    put("eth_tx_packets", tx / 4000)
    put("eth_rx_multicast", 0.2 * tick_s)
    drop_p = np.where(slow, 0.3, 0.003)[None, :]
    put("eth_rx_drop", drop_p)
    put("eth_tx_drop", drop_p / 3)
    put("eth_rx_errs", 1e-5)
    put("eth_tx_errs", 2e-6)
    ipoib = np.where(ib_node, 30e3 * tick_s * jit(8), 0.0)
    put("ib0_rx_bytes", ipoib)
    put("ib0_tx_bytes", ipoib * 0.9)
    put("ib0_rx_packets", ipoib / 2044)
    put("ib0_tx_packets", ipoib * 0.9 / 2044)
    put("lo_bytes", 60e3 * tick_s * jit(9))
    put("lo_packets", 60e3 * tick_s / 600)
    in_segs, out_segs = rx / 1448, tx / 1448
    put("tcp_in_segs", in_segs)
    put("tcp_out_segs", out_segs)
    put("tcp_retrans", out_segs * np.where(slow, 2e-3, 2e-5)[None, :])
    put("tcp_active_opens", 0.4 * tick_s)
    put("tcp_passive_opens", 0.2 * tick_s)

    # CPU (jiffies): busy cores split user / system / irq; iowait from the disk's busy time
    cpus = np.array([h.cpus for h in hw], np.float64)[:, None]
    cores = np.minimum((1.0 + node_sum(cores_g)) * jit(10, 0.1), 0.97 * cpus)
    jiffies = cpus * tick_s * USER_HZ
    busy_j = np.rint(cores * tick_s * USER_HZ)
    iowait = np.rint(np.minimum(busy / 1000 * 0.5, tick_s) * USER_HZ)
    user = np.rint(busy_j * 0.85)
    system = np.rint(busy_j * 0.12)
    irq = np.rint(busy_j * 0.01)
    softirq = busy_j - user - system - irq
    put("cpu_user", user)
    put("cpu_system", system)
    put("cpu_irq", irq)
    put("cpu_softirq", softirq)
    put("cpu_iowait", iowait)
    put("cpu_idle", np.maximum(jiffies - busy_j - iowait, 0))
    put("ctxt", cores * tick_s * 2500)
    put("forks", 2.0 * tick_s * jit(11))

    # to integers: large increments rounded, small ones (events, operations) rounded
    # stochastically to keep their expected value: one uniform per node and tick, shifted by a
    # golden-ratio step per field (still uniform), so it stays deterministic per tick
    inc_i = np.rint(inc).astype(np.int64)
    golden = (np.arange(len(_SMALL)) * 0.6180339887498949)[:, None, None]
    frac = (noise(seed, nrow, ticks[None, :], 0x180)[None] + golden) % 1.0
    small = inc[_SMALL]
    inc_i[_SMALL] = np.floor(small + frac * (small > 0)).astype(np.int64)
    # NFS times from the whole operations: rtt per READ, 1.3 × rtt per WRITE
    frac2 = noise(seed, nrow, ticks[None, :], 0x181)
    for ops, timed, per_op in (
        ("nfs_read_ops", "nfs_read_rtt_ms", rtt),
        ("nfs_read_ops", "nfs_read_exe_ms", rtt + 0.05),
        ("nfs_write_ops", "nfs_write_rtt_ms", rtt * 1.3),
        ("nfs_write_ops", "nfs_write_exe_ms", rtt * 1.3 + 0.05),
    ):
        inc_i[F[timed]] = np.floor(inc_i[F[ops]] * per_op + frac2).astype(np.int64)

    # InfiniBand ports: the node's all-reduce spread over its HCAs
    port_inc = np.zeros((len(PORT_FIELDS), n_ports, k), np.int64)
    if n_ports:
        hcas = np.array([len(hw[int(n)].hcas) for n in ports], np.float64)[:, None]
        prow = np.arange(n_ports, dtype=np.int64)[:, None]
        pj = 0.95 + 0.1 * noise(seed, prow, ticks[None, :], 0x1A0)
        share = ar[ports] / hcas * pj * np.where(port_fault, 0.3, 1.0) * upf[ports]
        tx_b = share * tick_s
        rx_b = share * tick_s * (0.98 + 0.04 * noise(seed, prow, ticks[None, :], 0x1A1))
        pup = up[ports]
        n1 = noise(seed, prow, ticks[None, :], 0x1A2)
        n2 = noise(seed, prow, ticks[None, :], 0x1A3)
        starts_at = np.zeros((n_ports, k), bool)
        for p, a, _, _ in flaky:
            if k0 <= a < k1:
                starts_at[p, a - k0] = True
        downed = pup & (starts_at | (port_fault & (n2 < 1 / 480)))
        values = {
            "port_xmit_data": np.floor(tx_b / 4),
            "port_rcv_data": np.floor(rx_b / 4),
            "port_xmit_packets": np.floor(tx_b / 4096),
            "port_rcv_packets": np.floor(rx_b / 4096),
            "symbol_error": np.where(port_fault, np.floor(30 * n1), n1 < 1 / 5760) * pup,
            "link_downed": downed,
            "port_rcv_errors": np.where(port_fault, np.floor(3 * n2), 0) * pup,
            "link_error_recovery": downed,
            "port_xmit_wait": np.floor(tx_b / 4e4 * np.where(port_fault, 50, 1)),
            "port_xmit_discards": np.where(port_fault, n1 < 0.05, False) * pup,
        }
        for name, v in values.items():
            port_inc[PF[name]] = np.asarray(v, np.int64)

    # gauges
    mem_total = np.array([h.mem_total_kb for h in hw], np.float64)[:, None]
    pinned_kb = node_sum(pinned_g) / KIB
    mem_used = np.minimum(mem_total * (0.03 + 0.004 * jit(12)) + pinned_kb, 0.85 * mem_total)
    load = np.rint((cores + busy / 1000 / tick_s * 2) * 100)
    running = np.rint(np.maximum(cores, 1.0))

    # mesh probe inputs: each end's network load, and the SYN loss of its active faults
    eth_load = np.minimum(np.maximum(rx, tx) / (eth_cap[:, None] * tick_s), 0.95)
    ib_load = np.where(ib_node, ar / np.maximum(ib_cap, 1.0)[:, None], 0.0)
    link = np.zeros((n_nodes, k))
    for p, a, b, sev in flaky:
        lo, hi = max(a, k0) - k0, min(b, k1) - k0
        if hi > lo:
            n = int(ports[p])
            link[n, lo:hi] = np.maximum(link[n, lo:hi], 0.3 + 0.5 * sev)
    congestion = np.zeros(k)
    for _, a, b, sev in slow_eps:
        lo, hi = max(a, k0) - k0, min(b, k1) - k0
        if hi > lo:
            congestion[lo:hi] = 0.05 + 0.15 * sev
    syn_loss = 1.0 - (1.0 - link) * (1.0 - congestion)[None, :]

    xids = _xids(fleet, frame, jobs, by_seq)
    return IOFrame(ticks, up, boot, inc_i, port_inc, mem_used.astype(np.int64),
                   load.astype(np.int64), running.astype(np.int64), eth_load, ib_load,
                   syn_loss, xids)  # fmt: skip


def mesh_pairs(n_nodes: int) -> tuple[I64, I64]:
    """(src, dst) node ids of the mesh probes, src-major: every other node, or with more than
    ``MESH_PEERS + 1`` nodes the next ``MESH_PEERS`` in fleet order (wrapping)."""
    peers = min(MESH_PEERS, n_nodes - 1)
    src = np.repeat(np.arange(n_nodes, dtype=np.int64), peers)
    step = np.tile(np.arange(1, peers + 1, dtype=np.int64), n_nodes)
    dst = (src + step) % max(n_nodes, 1)
    if n_nodes <= MESH_PEERS + 1:  # the full mesh, dst in fleet order
        order = np.lexsort((dst, src))
        src, dst = src[order], dst[order]
    return src, dst


def mesh_attempts(
    seed: int,
    src: I64,
    dst: I64,
    ticks: I64,
    up: B,
    eth_load: F64,
    ib_load: F64,
    syn_loss: F64,
    attempts: int = MESH_ATTEMPTS,
) -> F64:
    """Seconds each TCP connect from ``src[i]`` to ``dst[i]`` took at ``ticks[k]``, shape
    ``(pairs, attempts, K)``; NaN for a failed attempt (see the module docstring).

    ``up``, ``eth_load``, ``ib_load`` and ``syn_loss`` are :class:`IOFrame`'s ``(N, K)`` arrays
    (or their columns of ``ticks``). Element-wise only: any slice of pairs or ticks gives the
    same values as the whole.
    """
    s, d = src[:, None, None], dst[:, None, None]
    t = ticks[None, None, :]
    a = np.arange(attempts, dtype=np.int64)[None, :, None]
    pair = np.minimum(s, d) * 0x10000 + np.maximum(s, d)  # the same path both ways
    directed = (s * 0x10000 + d) * 0x100 + a  # one noise row per direction and attempt
    base = (50e-6 + 150e-6 * noise(seed, pair, 0, 0x1C0)) * (
        0.95 + 0.1 * noise(seed, s * 0x10000 + d, 0, 0x1C1)
    )
    rho_s, rho_d = eth_load[src][:, None, :], eth_load[dst][:, None, :]
    queue = 100e-6 * (rho_s / (1.0 - rho_s) + rho_d / (1.0 - rho_d))
    host = 200e-6 * (ib_load[src] + ib_load[dst])[:, None, :]
    # two uniforms per attempt: u for its delay, v for its fate (lost below the loss chance,
    # a hiccup in its top 1 %)
    u = noise(seed, directed, t, 0x1C2)
    v = noise(seed, directed, t, 0x1C3)
    loss = (1.0 - (1.0 - syn_loss[src]) * (1.0 - syn_loss[dst]))[:, None, :]
    hiccup = np.where(v >= 0.99, 0.2e-3 + 180e-3 * (v - 0.99), 0.0)  # 0.2–2 ms
    spike = loss * (1e-3 + 15e-3 * u * u)
    rtt = (base + queue + host) * (0.9 + 0.2 * u) + hiccup + spike
    ok = (v >= loss) & (up[src] & up[dst])[:, None, :]
    return np.where(ok, rtt, np.nan)


def _rendezvous_counts(fleet: Fleet, jobs: Sequence[SimJob], ticks: I64) -> F64:
    """(opened, accepted) rendezvous connections per node and tick (multi-node jobs)."""
    out = np.zeros((2, len(fleet.nodes), len(ticks)))
    k0, k1 = int(ticks[0]), int(ticks[-1]) + 1
    for job in jobs:
        if len(job.nodes) < 2 or job.start is None:
            continue
        a = max(job.start, k0) - k0
        b = min(job.end if job.end is not None else k1, k1) - k0
        if b <= a:
            continue
        ids = sorted({fleet.gpus[g].node_id for g in job.gpu_ids})
        out[1, ids[0], a:b] += len(ids) - 1
        for n in ids[1:]:
            out[0, n, a:b] += 1
    return out


def _xids(fleet: Fleet, frame: Frame, jobs: Sequence[SimJob],
          by_seq: dict[int, SimJob]) -> list[Xid]:  # fmt: skip
    seed = fleet.spec.seed
    gid = np.arange(len(fleet.gpus), dtype=np.int64)[:, None]
    hit = (noise(seed, gid, frame.ticks[None, :], 0x151) < XID_RATE) & frame.up
    out = []
    for g, c in zip(*np.nonzero(hit), strict=True):
        tick = int(frame.ticks[c])
        busy = bool(frame.process[g, c])
        table = _XIDS_BUSY if busy else _XIDS_IDLE
        pick = _noise1(seed, int(g), tick, 0x152)
        acc = 0.0
        xid = table[-1][0]
        for code, p in table:
            acc += p
            if pick < acc:
                xid = code
                break
        seq = int(frame.holder[g, c])
        out.append(Xid(tick, int(g), xid, int(frame.pid[g, c]) if busy else None,
                       seq if seq >= 0 and seq in by_seq else None))  # fmt: skip
    return sorted(out, key=lambda x: (x.tick, x.gpu))


def _noise1(seed: int, row: int, tick: int, channel: int) -> float:
    """One :func:`noise` value (arrays: numpy scalars would warn about the intended overflow)."""
    return float(noise(seed, np.array([row]), np.array([tick]), channel)[0])


@dataclass(frozen=True)
class Connection:
    """One rendezvous TCP connection: opened by ``src`` to ``dst``; bytes since it opened."""

    src: str
    sport: int
    dst: str
    orig_bytes: int
    reply_bytes: int


def connections(fleet: Fleet, jobs: Sequence[SimJob], node_id: int, tick: int) -> list[Connection]:
    """The rendezvous connections of node ``node_id`` at ``tick`` (``nf_conntrack``'s view:
    bytes are 120 kB/s out of the opener and 80 kB/s back, since the job started)."""
    tick_s = fleet.spec.tick_s
    out = []
    for job in jobs:
        if len(job.nodes) < 2 or job.start is None or job.start > tick:
            continue
        if job.end is not None and job.end <= tick:
            continue
        ids = sorted({fleet.gpus[g].node_id for g in job.gpu_ids})
        if node_id not in ids:
            continue
        age_s = (tick - job.start + 1) * tick_s
        for n in ids[1:]:
            if node_id in (n, ids[0]):
                sport = 40_000 + (job.seq * 7 + n) % 20_000
                src, dst = node_address(n), node_address(ids[0])
                out.append(Connection(src, sport, dst, 120_000 * age_s, 80_000 * age_s))
    return out


class IOCounters:
    """Node and port counters since boot, carried from one rendered block to the next."""

    def __init__(self, fleet: Fleet, hw: Sequence[Hardware]) -> None:
        rng = np.random.default_rng([fleet.spec.seed, 0x11])
        n = len(fleet.nodes)
        self.uptime_s = rng.uniform(3 * DAY_S, 40 * DAY_S, n).round().astype(np.int64)
        typical = _typical_rates(hw)
        scale = rng.uniform(0.5, 1.5, (len(FIELDS), n))
        self.node = np.floor(typical * scale * self.uptime_s[None, :]).astype(np.int64)
        ports = port_nodes(hw)
        gbps = np.array([hw[int(p)].ib_gbps for p in ports], np.float64)
        byte_s = gbps * 125e6 * 0.1 * rng.uniform(0.5, 1.5, len(ports))
        up_p = self.uptime_s[ports].astype(np.float64)
        self.port = np.zeros((len(PORT_FIELDS), len(ports)), np.int64)
        self.port[PF["port_xmit_data"]] = byte_s * up_p / 4
        self.port[PF["port_rcv_data"]] = byte_s * up_p / 4 * 0.99
        self.port[PF["port_xmit_packets"]] = byte_s * up_p / 4096
        self.port[PF["port_rcv_packets"]] = byte_s * up_p / 4096
        self.port[PF["symbol_error"]] = rng.integers(0, 5, len(ports))
        self.port[PF["port_xmit_wait"]] = byte_s * up_p / 4e4
        self.ports = ports
        self.boot_s: I64 | None = None  # per node, epoch seconds (set at the first block)
        self.xid_counts: dict[tuple[int, int], int] = {}  # (GPU id, xid) → count

    def integrate(self, fleet: Fleet, io: IOFrame) -> tuple[I64, I64]:
        """Cumulative values at the tick before ``io`` and every tick of it: (node counters
        ``(F, N, K + 1)``, port counters ``(PF, P, K + 1)``); advances the carry."""
        tick_s = fleet.spec.tick_s
        if self.boot_s is None:
            self.boot_s = int(io.ticks[0]) * tick_s - self.uptime_s
        node = _accumulate(self.node, io.inc, io.boot)
        port = _accumulate(self.port, io.port_inc, io.boot[self.ports])
        for n, c in zip(*np.nonzero(io.boot), strict=True):
            self.boot_s[n] = int(io.ticks[c]) * tick_s
        self.node = node[:, :, -1].copy()
        self.port = port[:, :, -1].copy()
        for x in io.xids:
            key = (x.gpu, x.xid)
            self.xid_counts[key] = self.xid_counts.get(key, 0) + 1
        return node, port


def saturated(port: I64) -> I64:
    """Port counters as sysfs shows them: the narrow PMA counters stop at their maximum."""
    out = port.copy()
    for name, cap in SATURATE.items():
        out[PF[name]] = np.minimum(out[PF[name]], cap)
    return out


def _accumulate(carry: I64, inc: I64, boot: B) -> I64:
    """``carry`` + running sums of ``inc`` over the last axis, restarting at 0 where ``boot``;
    column 0 is ``carry`` itself (the value before the block)."""
    out = np.empty((*inc.shape[:2], inc.shape[2] + 1), np.int64)
    out[:, :, 0] = carry
    c = out[:, :, 1:]
    np.cumsum(inc, axis=2, out=c)
    if boot.any():
        k = np.arange(inc.shape[2])
        last = np.maximum.accumulate(np.where(boot, k, -1), axis=1)
        excl = c - inc
        idx = np.broadcast_to(np.maximum(last, 0)[None], inc.shape)
        c[...] = np.where(
            last[None] >= 0, c - np.take_along_axis(excl, idx, axis=2), c + carry[:, :, None]
        )
    else:
        c += carry[:, :, None]
    return out


def _typical_rates(hw: Sequence[Hardware]) -> F64:
    """Rough per-second growth of each node counter over a node's life (initial values)."""
    cpus = np.array([h.cpus for h in hw], np.float64)
    rates = {
        "cpu_user": 0.25 * cpus * USER_HZ, "cpu_system": 0.04 * cpus * USER_HZ,
        "cpu_idle": 0.7 * cpus * USER_HZ, "cpu_iowait": 0.002 * cpus * USER_HZ,
        "cpu_irq": 0.003 * cpus * USER_HZ, "cpu_softirq": 0.007 * cpus * USER_HZ,
        "ctxt": 40_000.0, "forks": 2.0,
        "disk_reads": 150.0, "disk_reads_merged": 8.0, "disk_sectors_read": 40e6 / 512,
        "disk_read_ms": 22.0, "disk_writes": 120.0, "disk_writes_merged": 24.0,
        "disk_sectors_written": 60e6 / 512, "disk_write_ms": 10.0, "disk_io_ms": 25.0,
        "disk_weighted_ms": 32.0,
        "nfs_read_bytes": 150e6, "nfs_write_bytes": 3e6, "nfs_read_ops": 280.0,
        "nfs_write_ops": 12.0, "nfs_read_rtt_ms": 250.0, "nfs_write_rtt_ms": 12.0,
        "nfs_read_exe_ms": 265.0, "nfs_write_exe_ms": 13.0, "nfs_getattr_ops": 3.0,
        "eth_rx_bytes": 160e6, "eth_rx_packets": 40e3, "eth_rx_drop": 0.003,
        "eth_rx_multicast": 0.2, "eth_tx_bytes": 10e6, "eth_tx_packets": 2.5e3,
        "eth_tx_drop": 0.001, "ib0_rx_bytes": 30e3, "ib0_rx_packets": 15.0,
        "ib0_tx_bytes": 27e3, "ib0_tx_packets": 13.0, "lo_bytes": 60e3, "lo_packets": 100.0,
        "tcp_active_opens": 0.4, "tcp_passive_opens": 0.2, "tcp_in_segs": 110e3,
        "tcp_out_segs": 7e3, "tcp_retrans": 0.15,
    }  # fmt: skip
    out = np.zeros((len(FIELDS), len(hw)))
    for name, rate in rates.items():
        out[F[name], :] = np.asarray(rate, np.float64)
    return out


@dataclass
class NodeState:
    """One node's kernel view at one tick: what its fake root tree shows.

    ``counters``: :data:`FIELDS` → value; ``ports``: HCA → :data:`PORT_FIELDS` → value (as
    sysfs shows them, saturated); ``log_lines``: kernel log lines new since the last state.
    """

    hw: Hardware
    up: bool
    t_s: int  # epoch seconds of the tick
    boot_s: int  # epoch seconds of the last boot
    counters: dict[str, int]
    ports: dict[str, dict[str, int]]
    mem_used_kb: int
    load_centi: int
    running: int
    connections: list[Connection]
    log_lines: list[str]


def kern_line(fleet: Fleet, x: Xid, boot_s: int, node: str) -> str:
    """The syslog line (UTC times) the NVIDIA driver's report of ``x`` becomes in kern.log::

    Nov 28 10:00:00 gpu-h100-01 kernel: [ 1234.567890] NVRM: Xid (PCI:0000:18:00): 79,
    pid=2345, name=python3, GPU has fallen off the bus.
    """
    t_s = x.tick * fleet.spec.tick_s
    when = datetime.fromtimestamp(t_s, UTC)
    micros = int(_noise1(fleet.spec.seed, x.gpu, x.tick, 0x153) * 1e6)
    since_boot = max(0, t_s - boot_s)
    gpu = fleet.gpus[x.gpu]
    who = f"pid={x.pid}, name=python3" if x.pid is not None else "pid='<unknown>', name=<unknown>"
    return (
        f"{when:%b} {when.day:2d} {when:%H:%M:%S} {node} kernel: [{since_boot:5d}.{micros:06d}] "
        f"NVRM: Xid (PCI:{kernel_pci_bus_id(gpu.index)}): {x.xid}, {who}, {xid_message(x.xid)}"
    )


def xid_event(fleet: Fleet, x: Xid, job: SimJob | None) -> Event:
    """``x`` as the XID collector records it (:class:`fleetscope.model.Event`, ``kind="xid"``)."""
    gpu = fleet.gpus[x.gpu]
    return Event(
        time=datetime.fromtimestamp(x.tick * fleet.spec.tick_s, UTC),
        kind="xid",
        subject=gpu.uuid,
        attrs={
            "node": gpu.node,
            "gpu": str(gpu.index),
            "gpu_uuid": gpu.uuid,
            "pci_bus_id": kernel_pci_bus_id(gpu.index),
            "xid": x.xid,
            "action": action_of(x.xid, xid_message(x.xid)),
            "pid": x.pid,
            "process": "python3" if x.pid is not None else None,
            "job": job.id if job is not None else None,
            "user": job.user if job is not None else None,
            "team": job.team if job is not None else None,
            "message": xid_message(x.xid) or None,
        },
    )
