"""Fake per-node root trees: the files the live attribution, host, disk, NFS, network,
InfiniBand and XID collectors read.

Layout (the contract's "Allocation source: prolog files"), under each node's root ``ROOT``:

- ``ROOT/run/gpustat/<gpu index>`` exists while a job holds that GPU. First line
  ``<jobid> <uid>`` (Jobstats' format), then ``user=…``, ``account=…`` (the team),
  ``partition=…`` (the workload) and ``qos=…`` (the tier), as Fleetscope's prolog writes them.
- ``ROOT/proc/<pid>/cgroup``: the cgroup v2 line of a Slurm task,
  ``0::/system.slice/slurmstepd.scope/job_<id>/step_0/user/task_0``, and
  ``ROOT/proc/<pid>/environ``: NUL-separated ``SLURM_JOB_ID``, ``SLURM_JOB_USER``,
  ``SLURM_JOB_ACCOUNT``, for every process the fake NVML lists.

:meth:`RootTree.sync` rewrites only what changed since the previous call.

:meth:`RootTree.sync_io` writes a node's kernel view (:class:`fleetscope.simulate.io.NodeState`)
in the kernel's formats: ``proc/stat`` (proc(5): the ``cpu`` line in USER_HZ jiffies, ``btime``),
``proc/meminfo`` (kB), ``proc/loadavg``, ``proc/diskstats`` (Documentation/admin-guide/iostats.rst,
17 fields: ``loop0``, ``nvme0n1`` and its partitions ``p1`` = ``/`` and ``p2`` = ``/scratch``),
``proc/mounts``, ``proc/self/mountstats`` (proc_pid_mountstats(5), the NFS v4.2 mount with its
``bytes:`` line and per-op statistics), ``proc/net/dev``, ``proc/net/snmp``,
``proc/net/nf_conntrack`` (accounting on), ``sys/class/net/eth0/speed`` (Mb/s) and
``sys/class/infiniband/mlx5_<n>/ports/1/{rate,state,phys_state,counters/…}`` (the data counters
in 4-byte words), and appends new kernel log lines to ``var/log/kern.log`` (syslog format, UTC;
emptied when the tree is created). Files are replaced atomically (a temporary file renamed over
the old one), so a collector never reads half a file, and only when their text changed. While
the node is down, the kernel files are removed (the collectors read nothing) and the log stays.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from fleetscope.simulate.io import DISK, LOOP, NFS_EXPORT, NFS_MOUNT, NFS_SERVER_ADDRESS, NodeState
from fleetscope.simulate.jobs import SimJob

__all__ = ["KERNEL_FILES", "RootTree", "cgroup_text", "environ_bytes", "io_files", "prolog_text"]

KERNEL_FILES = (
    "proc/stat", "proc/meminfo", "proc/loadavg", "proc/diskstats", "proc/mounts",
    "proc/self/mountstats", "proc/net/dev", "proc/net/snmp", "proc/net/nf_conntrack",
    "sys/class/net/eth0/speed", "sys/class/net/eth0/operstate",
)  # fmt: skip
KERN_LOG = "var/log/kern.log"


def prolog_text(job: SimJob) -> str:
    return (
        f"{job.id} {job.uid}\nuser={job.user}\naccount={job.team}\n"
        f"partition={job.workload}\nqos={job.tier}\n"
    )


def cgroup_text(job: SimJob) -> str:
    return f"0::/system.slice/slurmstepd.scope/job_{job.id}/step_0/user/task_0\n"


def environ_bytes(job: SimJob) -> bytes:
    env = {
        "SLURM_JOB_ID": job.id,
        "SLURM_JOB_USER": job.user,
        "SLURM_JOB_ACCOUNT": job.team,
        "CUDA_VISIBLE_DEVICES": "0",
    }
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())


class RootTree:
    """One node's fake root directory, kept in step with the simulation."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gpustat = root / "run" / "gpustat"
        self.proc = root / "proc"
        self.gpustat.mkdir(parents=True, exist_ok=True)
        self.proc.mkdir(parents=True, exist_ok=True)
        self._files: dict[int, str] = {}
        self._pids: dict[int, str] = {}
        self._written: dict[str, str] = {}  # relative path → text last written
        log = root / KERN_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")

    def sync(self, holders: Mapping[int, SimJob], processes: Mapping[int, SimJob]) -> None:
        """Make the tree say: GPU index → holding job; pid → job of the process."""
        for index in set(self._files) - set(holders):
            (self.gpustat / str(index)).unlink(missing_ok=True)
            del self._files[index]
        for index, job in holders.items():
            text = prolog_text(job)
            if self._files.get(index) != text:
                (self.gpustat / str(index)).write_text(text)
                self._files[index] = text
        for pid in set(self._pids) - set(processes):
            shutil.rmtree(self.proc / str(pid), ignore_errors=True)
            del self._pids[pid]
        for pid, job in processes.items():
            if self._pids.get(pid) != job.id:
                d = self.proc / str(pid)
                d.mkdir(exist_ok=True)
                (d / "cgroup").write_text(cgroup_text(job))
                (d / "environ").write_bytes(environ_bytes(job))
                self._pids[pid] = job.id

    def sync_io(self, state: NodeState) -> None:
        """Make the kernel files say ``state`` (see the module docstring)."""
        if state.log_lines:
            with (self.root / KERN_LOG).open("a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in state.log_lines))
        if not state.up:
            for rel in [r for r in self._written if r != KERN_LOG]:
                (self.root / rel).unlink(missing_ok=True)
                del self._written[rel]
            for sysfs in ("infiniband", "net"):
                shutil.rmtree(self.root / "sys" / "class" / sysfs, ignore_errors=True)
            return
        for rel, text in io_files(state).items():
            self._put(rel, text)

    def _put(self, rel: str, text: str) -> None:
        if self._written.get(rel) == text:
            return
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        self._written[rel] = text


def io_files(state: NodeState) -> dict[str, str]:
    """Relative path → text of every kernel file of ``state``."""
    out = {
        "proc/stat": _stat(state),
        "proc/meminfo": _meminfo(state),
        "proc/loadavg": _loadavg(state),
        "proc/diskstats": _diskstats(state),
        "proc/mounts": _mounts(state),
        "proc/self/mountstats": _mountstats(state),
        "proc/net/dev": _net_dev(state),
        "proc/net/snmp": _snmp(state),
        "proc/net/nf_conntrack": _conntrack(state),
        "sys/class/net/eth0/speed": f"{state.hw.eth_mbps}\n",
        "sys/class/net/eth0/operstate": "up\n",
    }
    base = "sys/class/infiniband"
    for i, (hca, counters) in enumerate(state.ports.items()):
        port = f"{base}/{hca}/ports/1"
        out[f"{port}/rate"] = state.hw.ib_rate_text + "\n"
        out[f"{port}/state"] = "4: ACTIVE\n"
        out[f"{port}/phys_state"] = "5: LinkUp\n"
        out[f"{port}/lid"] = f"0x{0x100 + 16 * int(state.hw.address.rsplit('.', 1)[1]) + i:x}\n"
        for name, value in counters.items():
            out[f"{port}/counters/{name}"] = f"{value}\n"
        for name in (
            "excessive_buffer_overrun_errors",
            "local_link_integrity_errors",
            "port_rcv_remote_physical_errors",
            "port_rcv_switch_relay_errors",
            "port_xmit_constraint_errors",
            "port_rcv_constraint_errors",
            "VL15_dropped",
        ):
            out[f"{port}/counters/{name}"] = "0\n"  # fmt: skip
    return out


def _stat(s: NodeState) -> str:
    c = s.counters
    cpu = " ".join(str(c[f"cpu_{k}"]) for k in ("user", "nice", "system", "idle", "iowait",
                                                "irq", "softirq", "steal"))  # fmt: skip
    return (
        f"cpu  {cpu} 0 0\nintr {c['ctxt'] // 3} 0\nctxt {c['ctxt']}\nbtime {s.boot_s}\n"
        f"processes {c['forks'] + 2_000}\nprocs_running {s.running}\nprocs_blocked 0\n"
        "softirq 0 0 0 0 0 0 0 0 0 0 0\n"
    )


def _meminfo(s: NodeState) -> str:
    total = s.hw.mem_total_kb
    avail = total - s.mem_used_kb
    cached = avail * 2 // 5
    buffers = avail // 100
    free = avail - cached - buffers
    rows = (
        ("MemTotal", total), ("MemFree", free), ("MemAvailable", avail), ("Buffers", buffers),
        ("Cached", cached), ("SwapCached", 0), ("Active", s.mem_used_kb * 3 // 4 + cached // 3),
        ("Inactive", cached * 2 // 3), ("SwapTotal", 0), ("SwapFree", 0), ("Dirty", 1024),
        ("AnonPages", s.mem_used_kb * 3 // 4), ("Shmem", s.mem_used_kb // 20),
        ("SReclaimable", buffers * 4), ("SUnreclaim", buffers), ("HugePages_Total", 0),
    )  # fmt: skip
    return "".join(
        f"{k + ':':<16}{v:>10}\n" if k.startswith("Huge") else f"{k + ':':<16}{v:>10} kB\n"
        for k, v in rows
    )


def _loadavg(s: NodeState) -> str:
    def centi(v: int) -> str:
        return f"{v // 100}.{v % 100:02d}"

    l1 = s.load_centi
    return (
        f"{centi(l1)} {centi(l1 * 98 // 100)} {centi(l1 * 95 // 100)} "
        f"{s.running}/{1_500 + s.running} {s.counters['forks'] % 4_000_000 + 1_000}\n"
    )


def _diskstats(s: NodeState) -> str:
    c = s.counters
    disk = [c["disk_reads"], c["disk_reads_merged"], c["disk_sectors_read"], c["disk_read_ms"],
            c["disk_writes"], c["disk_writes_merged"], c["disk_sectors_written"],
            c["disk_write_ms"], 0, c["disk_io_ms"], c["disk_weighted_ms"], 0, 0, 0, 0,
            c["disk_writes"] // 50, c["disk_writes"] // 100]  # fmt: skip
    root = [v // 8 for v in disk]  # "/" gets a small share, "/scratch" the rest
    scratch = [a - b for a, b in zip(disk, root, strict=True)]
    for part in (root, scratch):
        part[15] = part[16] = 0  # flushes are counted on the whole disk
    loop = [52, 0, 2112, 13, 0, 0, 0, 0, 0, 24, 13, 0, 0, 0, 0, 0, 0]

    def line(major: int, minor: int, name: str, fields: list[int]) -> str:
        return f"{major:4d} {minor:7d} {name} " + " ".join(map(str, fields)) + "\n"

    return (
        line(7, 0, LOOP, loop) + line(259, 0, DISK, disk) + line(259, 1, f"{DISK}p1", root)
        + line(259, 2, f"{DISK}p2", scratch)
    )  # fmt: skip


def _nfs_opts(s: NodeState) -> str:
    return (
        "rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,"
        f"retrans=2,sec=sys,clientaddr={s.hw.address},local_lock=none"
    )


def _mounts(s: NodeState) -> str:
    return (
        "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
        "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
        "udev /dev devtmpfs rw,nosuid,relatime,mode=755,inode64 0 0\n"
        f"/dev/{DISK}p1 / ext4 rw,relatime 0 0\n"
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"
        f"/dev/{LOOP} /snap/core22/1380 squashfs ro,nodev,relatime,errors=continue 0 0\n"
        f"/dev/{DISK}p2 /scratch xfs rw,noatime,attr2,inode64,logbufs=8,logbsize=32k,noquota 0 0\n"
        f"{NFS_EXPORT} {NFS_MOUNT} nfs4 {_nfs_opts(s)},addr={NFS_SERVER_ADDRESS} 0 0\n"
    )


def _mountstats(s: NodeState) -> str:
    c = s.counters
    rb, wb, ro, wo = (c["nfs_read_bytes"], c["nfs_write_bytes"], c["nfs_read_ops"],
                      c["nfs_write_ops"])  # fmt: skip
    ga = c["nfs_getattr_ops"]
    age = max(0, s.t_s - s.boot_s)
    events = [ga * 3, ga * 40, 0, 0, ga // 2, ga // 10, ga * 10, wo * 4, 0, ro * 128, wo * 64]
    events += [0] * 16
    ops = (
        ("NULL", 1, 1, 0, 44, 24, 0, 0, 0),
        ("READ", ro, ro, 0, ro * 160, rb + ro * 120, ro // 100, c["nfs_read_rtt_ms"],
         c["nfs_read_exe_ms"]),
        ("WRITE", wo, wo, 0, wb + wo * 200, wo * 140, wo // 100, c["nfs_write_rtt_ms"],
         c["nfs_write_exe_ms"]),
        ("COMMIT", wo // 8, wo // 8, 0, wo * 20, wo * 15, 0, wo // 4, wo // 4),
        ("OPEN", ga // 20, ga // 20, 0, ga * 15, ga * 20, 0, ga // 40, ga // 38),
        ("CLOSE", ga // 20, ga // 20, 0, ga * 10, ga * 8, 0, ga // 50, ga // 48),
        ("GETATTR", ga, ga, 0, ga * 200, ga * 240, ga // 200, ga // 2, ga // 2 + ga // 20),
        ("LOOKUP", ga // 4, ga // 4, 0, ga * 55, ga * 60, 0, ga // 8, ga // 7),
        ("ACCESS", ga // 3, ga // 3, 0, ga * 60, ga * 40, 0, ga // 6, ga // 5),
    )  # fmt: skip
    per_op = "".join(
        f"\t{name:>12}: " + " ".join(str(v) for v in (*vals, 0)) + "\n" for name, *vals in ops
    )
    sends = ro + wo + ga * 2
    return (
        "device sysfs mounted on /sys with fstype sysfs\n"
        "device proc mounted on /proc with fstype proc\n"
        f"device /dev/{DISK}p1 mounted on / with fstype ext4\n"
        f"device /dev/{DISK}p2 mounted on /scratch with fstype xfs\n"
        f"device {NFS_EXPORT} mounted on {NFS_MOUNT} with fstype nfs4 statvers=1.1\n"
        f"\topts:\t{_nfs_opts(s)}\n"
        f"\tage:\t{age}\n"
        "\timpl_id:\tname='',domain='',date='0,0'\n"
        "\tcaps:\tcaps=0x3ffbffff,wtmult=512,dtsize=1048576,bsize=0,namlen=255\n"
        "\tnfsv4:\tbm0=0xfdffbfff,bm1=0x40f9be3e,bm2=0x60800,acl=0x3,sessions,"
        "pnfs=not configured,lease_time=90,lease_expired=0\n"
        "\tsec:\tflavor=1,pseudoflavor=1\n"
        f"\tevents:\t{' '.join(map(str, events))}\n"
        f"\tbytes:\t{rb + rb // 20} {wb} 0 0 {rb} {wb} {rb // 4096} {wb // 4096}\n"
        "\tRPC iostats version: 1.1  p/v: 100003/4 (nfs)\n"
        f"\txprt:\ttcp 832 0 1 0 11 {sends} {sends} 0 {sends * 3} 0 64 {sends // 50} "
        f"{sends // 20}\n"
        "\tper-op statistics\n" + per_op + "\n"
    )


def _net_dev(s: NodeState) -> str:
    c = s.counters
    head = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|"
        "bytes    packets errs drop fifo colls carrier compressed\n"
    )

    def row(name: str, rx: list[int], tx: list[int]) -> str:
        values = [
            rx[0],
            rx[1],
            rx[2],
            rx[3],
            0,
            0,
            0,
            rx[4],
            tx[0],
            tx[1],
            tx[2],
            tx[3],
            0,
            0,
            0,
            0,
        ]
        return f"{name:>6}: " + " ".join(f"{v:>8}" for v in values) + "\n"

    lo = [c["lo_bytes"], c["lo_packets"], 0, 0, 0]
    out = head + row("lo", lo, lo[:4])
    eth_rx = [c["eth_rx_bytes"], c["eth_rx_packets"], c["eth_rx_errs"], c["eth_rx_drop"],
              c["eth_rx_multicast"]]  # fmt: skip
    eth_tx = [c["eth_tx_bytes"], c["eth_tx_packets"], c["eth_tx_errs"], c["eth_tx_drop"]]
    out += row("eth0", eth_rx, eth_tx)
    if s.hw.hcas:
        out += row("ib0", [c["ib0_rx_bytes"], c["ib0_rx_packets"], c["ib0_rx_errs"],
                           c["ib0_rx_drop"], 0],
                   [c["ib0_tx_bytes"], c["ib0_tx_packets"], c["ib0_tx_errs"],
                    c["ib0_tx_drop"]])  # fmt: skip
    return out


def _snmp(s: NodeState) -> str:
    c = s.counters
    ins, outs = c["tcp_in_segs"], c["tcp_out_segs"]
    udp_in, udp_out = c["forks"] * 40, c["forks"] * 38
    sections = (
        ("Ip", "Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams "
         "InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout "
         "ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits",
         [2, 64, ins + udp_in, 0, 0, 0, 0, 0, ins + udp_in, outs + udp_out, 0, 0, 0, 0, 0, 0, 0,
          0, 0, outs + udp_out]),
        ("Icmp", "InMsgs InErrors InCsumErrors InDestUnreachs InEchos InEchoReps OutMsgs "
         "OutErrors OutDestUnreachs OutEchos OutEchoReps",
         [120, 0, 0, 20, 50, 50, 100, 0, 0, 50, 50]),
        ("Tcp", "RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails "
         "EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors",
         [1, 200, 120000, -1, c["tcp_active_opens"], c["tcp_passive_opens"],
          c["tcp_active_opens"] // 300, c["tcp_active_opens"] // 1000, 40 + len(s.connections),
          ins, outs, c["tcp_retrans"], 0, c["tcp_active_opens"] // 100, 0]),
        ("Udp", "InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors "
         "InCsumErrors IgnoredMulti MemErrors",
         [udp_in, udp_in // 1000, 0, udp_out, 0, 0, 0, 0, 0]),
    )  # fmt: skip
    return "".join(
        f"{name}: {header}\n{name}: {' '.join(map(str, values))}\n"
        for name, header, values in sections
    )


def _conntrack(s: NodeState) -> str:
    lines = []
    for c in s.connections:
        packets_o, packets_r = c.orig_bytes // 1400 + 1, c.reply_bytes // 1400 + 1
        lines.append(
            f"ipv4     2 tcp      6 431999 ESTABLISHED src={c.src} dst={c.dst} sport={c.sport} "
            f"dport=29500 packets={packets_o} bytes={c.orig_bytes} src={c.dst} dst={c.src} "
            f"sport=29500 dport={c.sport} packets={packets_r} bytes={c.reply_bytes} [ASSURED] "
            "mark=0 zone=0 use=2\n"
        )
    return "".join(lines)
