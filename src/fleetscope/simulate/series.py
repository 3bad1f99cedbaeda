"""Rendered blocks → sample batches: the series a live agent would have sent, built in bulk.

Metric names, label sets and unit conversions are exactly those of the live path:
:class:`fleetscope.collect.gpu.GPUCollector` on a :class:`~fleetscope.simulate.nvml.FakeNVML`
(the GPU series with ``{node, gpu, gpu_uuid, gpu_model}``, ``fleet_gpu_up`` at every tick and
nothing else for a lost GPU, ``fleet_gpu_process_memory_bytes{…, pid, job, user}``), the
prolog-file attribution (``fleet_gpu_allocation{…, job, team, user, workload, tier} 1`` while a
job holds the GPU, DESIGN.md "Attribution rule"), the node series of the host, disk, NFS,
network and InfiniBand collectors reading the fake root trees of :mod:`.roots` (the same
conversions: jiffies ÷ USER_HZ, sectors × 512, milliseconds ÷ 1000, 4-byte words × 4; only while
the node is up; CPU utilization from the change since the tick before, as the host collector
computes it), ``fleet_gpu_xid_errors_total`` (from each (GPU, Xid)'s first occurrence on), the
mesh probe's ``fleet_mesh_rtt_seconds{src, dst}`` (the median of the tick's successful
attempts, omitted when none succeeded) and ``fleet_mesh_probe_loss_ratio{src, dst}``, as
:class:`fleetscope.collect.mesh.MeshProbe` computes them from :func:`.io.mesh_attempts`, and
the simulated scheduler's series (``fleet_sched_gpus_total`` and the others of the contract).
Within a batch, each series' rows are in time order. Everything is numpy over ``[row, tick]``
grids; Python loops run only over series (GPUs, allocations, label combinations).

Staleness markers, as the live agents write them (:mod:`fleetscope.agent`): a series present
at one tick and absent at the next (an allocation or process that ended, a lost GPU's gauges, a
pending reason nobody waits for any more) gets one :data:`~fleetscope.store.STALE_NAN` sample
at that next tick (:meth:`Builder.build_with_markers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from fleetscope.agent import LabelKey
from fleetscope.collect.xid import action_of
from fleetscope.model import WORKLOADS
from fleetscope.simulate import io
from fleetscope.simulate.behaviour import Frame
from fleetscope.simulate.cluster import OPEN
from fleetscope.simulate.fleet import Fleet
from fleetscope.simulate.jobs import SimJob
from fleetscope.simulate.scheduler import REASONS
from fleetscope.store import METRIC_NAME, STALE_NAN, SampleBatch

__all__ = ["CUMULATIVE", "Builder", "Present", "gpu_batch", "node_batch", "sched_batch"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
TIERS_ORDER = ("production", "experimentation")
CUMULATIVE = ("energy_mj", "ecc_corrected", "ecc_uncorrected", "pcie_rx_bytes", "pcie_tx_bytes")
Present = dict[LabelKey, dict[str, str]]  # the series present at one tick, by label key
MESH_CHUNK = 1 << 21  # mesh attempts computed at a time (pairs × attempts × ticks)


class Builder:
    """Accumulates series and their rows; :meth:`build` makes one :class:`SampleBatch`.

    Rows are kept in chunks (one per :meth:`grid` or :meth:`run` call), grouped by series in
    the order the series were added, and in time order within a series (callers add each
    series' times ascending).
    """

    def __init__(self) -> None:
        self.series: list[dict[str, str]] = []
        self._idx: list[npt.NDArray[np.int32]] = []
        self._t: list[npt.NDArray[np.int64]] = []
        self._v: list[F64] = []
        # per series: rows, chunk, offset of its first row in the chunk, first and last time
        self._counts: list[I64] = []
        self._chunk: list[I64] = []
        self._offset: list[I64] = []
        self._first_ms: list[I64] = []
        self._last_ms: list[I64] = []

    def grid(
        self,
        name: str,
        rows: Sequence[Mapping[str, str]],
        t_ms: npt.NDArray[np.int64],
        values: npt.ArrayLike,
        mask: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """One series per row label set; ``values[row, k]`` at ``t_ms[k]`` where ``mask``."""
        vals = np.broadcast_to(np.asarray(values, np.float64), (len(rows), len(t_ms)))
        if mask is not None and mask.all():
            mask = None  # the same rows, without indexing
        base = len(self.series)
        self.series.extend({METRIC_NAME: name, **r} for r in rows)
        idx = np.broadcast_to(np.arange(base, base + len(rows), dtype=np.int32)[:, None],
                              vals.shape)  # fmt: skip
        t = np.broadcast_to(t_ms[None, :], vals.shape)
        if mask is None:
            every = np.full(len(rows), len(t_ms))
            self._add(idx.ravel(), t.ravel(), vals.ravel(), every, every * 0, every - 1, t_ms)
        else:
            first = np.argmax(mask, axis=1)
            last = len(t_ms) - 1 - np.argmax(mask[:, ::-1], axis=1)
            self._add(idx[mask], t[mask], vals[mask], mask.sum(axis=1), first, last, t_ms)

    def run(self, name: str, labels: Mapping[str, str], t_ms: npt.NDArray[np.int64],
            values: npt.ArrayLike) -> None:  # fmt: skip
        """One series with the given rows."""
        self.series.append({METRIC_NAME: name, **labels})
        t = np.asarray(t_ms, np.int64)
        ends = np.array([0]), np.array([max(len(t) - 1, 0)])
        self._add(np.full(len(t), len(self.series) - 1, np.int32), t,
                  np.broadcast_to(np.asarray(values, np.float64), t.shape).copy(),
                  np.array([len(t)]), *ends, t if len(t) else np.zeros(1, np.int64))  # fmt: skip

    def _add(self, idx: npt.NDArray[np.int32], t: I64, v: F64, counts: npt.ArrayLike,
             first: npt.ArrayLike, last: npt.ArrayLike, t_ms: I64) -> None:  # fmt: skip
        """One chunk of rows; per series its row count and the indices into ``t_ms`` of its
        first and last row."""
        n = np.asarray(counts, np.int64)
        self._counts.append(n)
        self._chunk.append(np.full(len(n), len(self._t), np.int64))
        self._offset.append(np.cumsum(n) - n)
        self._first_ms.append(t_ms[np.asarray(first, np.int64)])
        self._last_ms.append(t_ms[np.asarray(last, np.int64)])
        self._idx.append(idx)
        self._t.append(t)
        self._v.append(v)

    def build(self) -> SampleBatch:
        if not self._t:
            return SampleBatch(self.series, np.empty(0, np.int32), np.empty(0, np.int64),
                               np.empty(0, np.float64))  # fmt: skip
        return SampleBatch(self.series, np.concatenate(self._idx), np.concatenate(self._t),
                           np.concatenate(self._v))  # fmt: skip

    def present_at(self, t_ms: int) -> Present:
        """The series with a row at ``t_ms``."""
        batch = self.build()
        at = np.unique(batch.series_index[batch.t_ms == t_ms])
        return {_key(self.series[i]): self.series[i] for i in at.tolist()}

    def build_with_markers(
        self, before: Present, first_ms: int, last_ms: int, tick_ms: int
    ) -> tuple[SampleBatch, Present]:
        """The batch of the ticks ``first_ms … last_ms`` (every row on one of them) with the
        staleness markers of those ticks, and the series present at ``last_ms``.

        ``before``: the series present at the tick before ``first_ms``. A series (a label set,
        however many :meth:`grid` rows or :meth:`run` calls it came in) gets a marker at each
        tick where it is absent after being present at the previous tick; markers go into their
        series' time order. Work is per series, and per row only for series with gaps.
        """
        counts, chunk, offset = _cat(self._counts), _cat(self._chunk), _cat(self._offset)
        has = counts > 0
        last = (last_ms - first_ms) // tick_ms
        first_k = (_cat(self._first_ms) - first_ms) // tick_ms
        last_k = (_cat(self._last_ms) - first_ms) // tick_ms
        keys = [_key(labels) for labels in self.series]
        kid_of: dict[LabelKey, int] = {}
        kid = np.array([kid_of.setdefault(k, len(kid_of)) for k in keys], np.int64)
        shared = np.bincount(kid[has], minlength=len(kid_of))[kid] > 1  # a key in two series
        # markers as (series, tick, chunk, position in the chunk)
        m_series: list[I64] = []
        m_tick: list[I64] = []
        m_pos: list[I64] = []
        whole = has & ~shared & (last_k - first_k + 1 == counts)  # no gap inside
        done = np.flatnonzero(whole & (last_k < last))  # ends inside the block
        m_series.append(done)
        m_tick.append(last_k[done] + 1)
        m_pos.append(offset[done] + counts[done])
        # series with gaps, and keys split over several series: row by row
        rest = np.flatnonzero(has & ~whole).tolist()
        if rest:
            pos = np.concatenate([np.arange(offset[s], offset[s] + counts[s]) for s in rest])
            r_series = np.repeat(rest, counts[rest])
            r_time = np.concatenate(
                [self._t[chunk[s]][offset[s] : offset[s] + counts[s]] for s in rest]
            )
            r_kid, r_tick = kid[r_series], (r_time - first_ms) // tick_ms
            order = np.lexsort((r_tick, r_kid))
            k_s, t_s = r_kid[order], r_tick[order]
            run_end = np.append((k_s[1:] != k_s[:-1]) | (t_s[1:] > t_s[:-1] + 1), True)
            run_end &= t_s < last
            m_series.append(r_series[order][run_end])
            m_tick.append(t_s[run_end] + 1)
            m_pos.append(pos[order][run_end] + 1)
        # series present just before the first tick and absent at it
        at_first = {int(kid[s]) for s in np.flatnonzero(has & (first_k == 0)).tolist()}
        first_series: dict[int, int] = {}
        for s in np.flatnonzero(has).tolist():
            first_series.setdefault(int(kid[s]), s)
        new: list[dict[str, str]] = []
        gone: list[int] = []
        for k, labels in before.items():
            kk = kid_of.get(k)
            if kk is None:  # not in this batch at all
                new.append(labels)
            elif kk not in at_first:
                gone.append(first_series[kk])
        m_series.append(np.array(gone, np.int64))
        m_tick.append(np.zeros(len(gone), np.int64))
        m_pos.append(offset[gone])
        ms, mt, mp = (np.concatenate(a) for a in (m_series, m_tick, m_pos))
        mc = chunk[ms]
        order = np.lexsort((mt, ms, mp, mc))
        ms, mt, mp, mc = ms[order], mt[order], mp[order], mc[order]
        # every chunk with markers is cut at them; the rest pass through untouched
        idx, t, v = list(self._idx), list(self._t), list(self._v)
        cuts = np.flatnonzero(np.append(True, mc[1:] != mc[:-1])).tolist() if len(mc) else []
        for a, b in pairwise([*cuts, len(mc)]):
            c = int(mc[a])
            at = mp[a:b] + np.arange(b - a)  # where the markers land in the chunk
            keep = np.ones(len(self._t[c]) + b - a, np.bool_)
            keep[at] = False
            for parts, markers in ((idx, ms[a:b]), (t, first_ms + mt[a:b] * tick_ms),
                                   (v, STALE_NAN)):  # fmt: skip
                out = np.empty(len(keep), parts[c].dtype)
                out[keep] = parts[c]
                out[at] = markers
                parts[c] = out
        base, n_new = len(self.series), len(new)
        idx.append(np.arange(base, base + n_new, dtype=np.int32))
        t.append(np.full(n_new, first_ms, np.int64))
        v.append(np.full(n_new, STALE_NAN))
        marked = SampleBatch([*self.series, *new], np.concatenate(idx), np.concatenate(t),
                             np.concatenate(v))  # fmt: skip
        now = np.flatnonzero(has & (last_k == last))
        return marked, {keys[s]: self.series[s] for s in now.tolist()}


def _cat(parts: list[I64]) -> I64:
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def gpu_batch(
    fleet: Fleet,
    frame: Frame,
    cumulative: Mapping[str, npt.NDArray[np.generic]],
    jobs: Mapping[int, SimJob],
    out: Builder,
) -> None:
    """The GPU, allocation and process series of one rendered block."""
    t_ms = frame.ticks * fleet.spec.tick_ms
    rows = [g.labels() for g in fleet.gpus]
    up = frame.up
    total = np.array([g.model.memory_total_bytes for g in fleet.gpus], np.float64)[:, None]
    limit = np.array([g.model.power_limit_mw for g in fleet.gpus], np.float64)[:, None]
    out.grid("fleet_gpu_up", rows, t_ms, up.astype(np.float64))
    gauges: Iterable[tuple[str, npt.ArrayLike]] = (
        ("fleet_gpu_utilization_ratio", frame.util_pct / 100),
        ("fleet_gpu_memory_used_bytes", frame.memory_used_bytes),
        ("fleet_gpu_memory_total_bytes", total),
        ("fleet_gpu_temperature_celsius", frame.temperature_c),
        ("fleet_gpu_power_watts", frame.power_mw / 1000),
        ("fleet_gpu_power_limit_watts", limit / 1000),
        ("fleet_gpu_energy_joules_total", np.asarray(cumulative["energy_mj"]) / 1000),
        ("fleet_gpu_sm_clock_hertz", frame.sm_clock_mhz * 1e6),
        ("fleet_gpu_throttle_reasons", frame.throttle_reasons),
    )
    for name, values in gauges:
        out.grid(name, rows, t_ms, values, up)
    for kind, key in (("corrected", "ecc_corrected"), ("uncorrected", "ecc_uncorrected")):
        ecc_rows = [{**r, "type": kind} for r in rows]
        out.grid("fleet_gpu_ecc_errors_total", ecc_rows, t_ms, cumulative[key], up)
    out.grid("fleet_gpu_pcie_receive_bytes_total", rows, t_ms, cumulative["pcie_rx_bytes"], up)
    out.grid("fleet_gpu_pcie_transmit_bytes_total", rows, t_ms, cumulative["pcie_tx_bytes"], up)
    _holder_runs(fleet, frame, jobs, t_ms, out)


_CPU_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_DISK = (  # metric, field, scale (the disk collector's conversions)
    ("fleet_disk_reads_completed_total", "disk_reads", 1),
    ("fleet_disk_read_bytes_total", "disk_sectors_read", 512),
    ("fleet_disk_read_time_seconds_total", "disk_read_ms", 1000),
    ("fleet_disk_writes_completed_total", "disk_writes", 1),
    ("fleet_disk_written_bytes_total", "disk_sectors_written", 512),
    ("fleet_disk_write_time_seconds_total", "disk_write_ms", 1000),
    ("fleet_disk_io_time_seconds_total", "disk_io_ms", 1000),
)
_NET = (  # metric, field suffix
    ("fleet_network_receive_bytes_total", "rx_bytes"),
    ("fleet_network_receive_errs_total", "rx_errs"),
    ("fleet_network_receive_drop_total", "rx_drop"),
    ("fleet_network_transmit_bytes_total", "tx_bytes"),
    ("fleet_network_transmit_errs_total", "tx_errs"),
    ("fleet_network_transmit_drop_total", "tx_drop"),
)


def node_batch(
    fleet: Fleet,
    hw: Sequence[io.Hardware],
    node_io: io.IOFrame,
    node_cum: npt.NDArray[np.int64],
    port_cum: npt.NDArray[np.int64],
    xid_before: Mapping[tuple[int, int], int],
    out: Builder,
) -> None:
    """The node series of one block: ``node_cum``/``port_cum`` from
    :meth:`~fleetscope.simulate.io.IOCounters.integrate` (column 0: the tick before),
    ``xid_before``: the Xid counts before the block."""
    t_ms = node_io.ticks * fleet.spec.tick_ms
    up = node_io.up
    cur, prev = node_cum[:, :, 1:], node_cum[:, :, :-1]

    def c(name: str) -> npt.NDArray[np.int64]:
        return np.asarray(cur[io.F[name]], np.int64)

    rows = [{"node": h.node} for h in hw]
    # CPU: HostCollector's cpu_busy_ratio over psutil's seconds (jiffies / USER_HZ)
    d = [np.maximum(0.0, cur[io.F[f"cpu_{s}"]] / io.USER_HZ - prev[io.F[f"cpu_{s}"]] / io.USER_HZ)
         for s in _CPU_STATES]  # fmt: skip
    total = np.zeros(up.shape) + d[0]
    for x in d[1:]:
        total = total + x
    total = total + 0.0 + 0.0  # guest, guest_nice
    idle = d[3] + d[4]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.minimum(1.0, np.maximum(0.0, (total - idle) / total))
    out.grid("fleet_node_cpu_utilization_ratio", rows, t_ms, ratio, up & (total > 0))
    mem_total = np.array([h.mem_total_kb for h in hw], np.float64)[:, None] * 1024
    used = mem_total - (mem_total - node_io.mem_used_kb * 1024.0)
    out.grid("fleet_node_memory_used_bytes", rows, t_ms, used, up)
    out.grid("fleet_node_memory_total_bytes", rows, t_ms, mem_total, up)
    out.grid("fleet_node_load1", rows, t_ms, node_io.load_centi / 100, up)
    disk_rows = [{**r, "device": io.DISK} for r in rows]
    for name, fld, scale in _DISK:
        values = c(fld) / scale if scale == 1000 else c(fld) * scale
        out.grid(name, disk_rows, t_ms, values, up)
    for mount in io.MOUNTS:
        fs_rows = [{**r, "mount": mount} for r in rows]
        size = np.array([h.filesystems[mount][0] for h in hw], np.float64)[:, None]
        avail = np.array([h.filesystems[mount][1] for h in hw], np.float64)[:, None]
        out.grid("fleet_filesystem_size_bytes", fs_rows, t_ms, size, up)
        out.grid("fleet_filesystem_avail_bytes", fs_rows, t_ms, avail, up)
    ib = np.array([bool(h.hcas) for h in hw])
    for interface, nodes in (("eth0", np.arange(len(hw))), ("ib0", np.flatnonzero(ib))):
        if not len(nodes):
            continue
        if_rows = [{**rows[n], "interface": interface} for n in nodes]
        for name, suffix in _NET:
            prefix = "eth" if interface == "eth0" else interface
            out.grid(name, if_rows, t_ms, c(f"{prefix}_{suffix}")[nodes], up[nodes])
    speed = np.array([h.eth_mbps * 125_000 for h in hw], np.float64)[:, None]
    eth_rows = [{**r, "interface": "eth0"} for r in rows]
    out.grid("fleet_network_speed_bytes", eth_rows, t_ms, speed, up)
    out.grid("fleet_network_tcp_retransmits_total", rows, t_ms, c("tcp_retrans"), up)
    nfs = [{**r, "mount": io.NFS_MOUNT, "export": io.NFS_EXPORT} for r in rows]
    out.grid("fleet_nfs_read_bytes_total", nfs, t_ms, c("nfs_read_bytes"), up)
    out.grid("fleet_nfs_written_bytes_total", nfs, t_ms, c("nfs_write_bytes"), up)
    for op, ops, rtt in (("READ", "nfs_read_ops", "nfs_read_rtt_ms"),
                         ("WRITE", "nfs_write_ops", "nfs_write_rtt_ms")):  # fmt: skip
        op_rows = [{**r, "op": op} for r in nfs]
        out.grid("fleet_nfs_rpc_operations_total", op_rows, t_ms, c(ops), up)
        out.grid("fleet_nfs_rpc_rtt_seconds_total", op_rows, t_ms, c(rtt) / 1000, up)
    ports = io.port_nodes(hw)
    if len(ports):
        pcur = io.saturated(port_cum[:, :, 1:])
        pup = up[ports]
        hca_rows = [{"node": h.node, "device": hca, "port": "1"} for h in hw for hca in h.hcas]

        def p(name: str) -> npt.NDArray[np.int64]:
            return np.asarray(pcur[io.PF[name]], np.int64)

        out.grid("fleet_infiniband_port_transmit_bytes_total", hca_rows, t_ms,
                 p("port_xmit_data") * 4, pup)  # fmt: skip
        out.grid("fleet_infiniband_port_receive_bytes_total", hca_rows, t_ms,
                 p("port_rcv_data") * 4, pup)  # fmt: skip
        out.grid("fleet_infiniband_link_downed_total", hca_rows, t_ms, p("link_downed"), pup)
        out.grid("fleet_infiniband_symbol_errors_total", hca_rows, t_ms, p("symbol_error"), pup)
        out.grid("fleet_infiniband_port_receive_errors_total", hca_rows, t_ms,
                 p("port_rcv_errors"), pup)  # fmt: skip
        rate = np.array([hw[int(n)].ib_gbps * 125_000_000.0 for n in ports])[:, None]
        out.grid("fleet_infiniband_port_rate_bytes", hca_rows, t_ms, rate, pup)
    _xid_series(fleet, node_io, xid_before, t_ms, out)
    _mesh_series(fleet, node_io, t_ms, out)


def _mesh_series(
    fleet: Fleet, node_io: io.IOFrame, t_ms: npt.NDArray[np.int64], out: Builder
) -> None:
    """``fleet_mesh_rtt_seconds`` and ``fleet_mesh_probe_loss_ratio`` of every probed pair."""
    src, dst = io.mesh_pairs(len(fleet.nodes))
    if not len(src):
        return
    k = len(t_ms)
    rtt, loss = np.empty((len(src), k)), np.empty((len(src), k))
    step = max(1, MESH_CHUNK // (len(src) * io.MESH_ATTEMPTS))
    for a in range(0, k, step):
        b = min(a + step, k)
        cols = slice(a, b)
        times = io.mesh_attempts(
            fleet.spec.seed, src, dst, node_io.ticks[cols], node_io.up[:, cols],
            node_io.eth_load[:, cols], node_io.ib_load[:, cols], node_io.syn_loss[:, cols],
        )  # fmt: skip
        rtt[:, cols], loss[:, cols] = _median_and_loss(times)
    names = [n.name for n in fleet.nodes]
    rows = [
        {"src": names[s], "dst": names[d]} for s, d in zip(src.tolist(), dst.tolist(), strict=True)
    ]
    out.grid("fleet_mesh_rtt_seconds", rows, t_ms, rtt, ~np.isnan(rtt))
    out.grid("fleet_mesh_probe_loss_ratio", rows, t_ms, loss)


def _median_and_loss(times: F64) -> tuple[F64, F64]:
    """Per (pair, tick) of ``(pairs, attempts, K)`` connect times (NaN: failed): the median of
    the successful ones as :func:`statistics.median` takes it (the middle one, or the mean of
    the two middle ones; NaN when none) and the failed share."""
    attempts = times.shape[1]
    ok = np.count_nonzero(~np.isnan(times), axis=1)
    ordered = np.sort(times, axis=1)  # NaN last
    lo = np.take_along_axis(ordered, np.maximum(ok - 1, 0)[:, None] // 2, axis=1)[:, 0]
    hi = np.take_along_axis(ordered, (ok // 2)[:, None], axis=1)[:, 0]
    return (lo + hi) / 2, (attempts - ok) / attempts


def _xid_series(
    fleet: Fleet,
    node_io: io.IOFrame,
    before: Mapping[tuple[int, int], int],
    t_ms: npt.NDArray[np.int64],
    out: Builder,
) -> None:
    """``fleet_gpu_xid_errors_total`` per (GPU, Xid), every tick from its first occurrence."""
    k0 = int(node_io.ticks[0])
    steps: dict[tuple[int, int], list[int]] = {key: [] for key in before}
    for x in node_io.xids:
        steps.setdefault((x.gpu, x.xid), []).append(x.tick - k0)
    for (gpu, xid), at in sorted(steps.items()):
        bumps = np.zeros(len(t_ms), np.int64)
        np.add.at(bumps, np.asarray(at, np.int64), 1)
        counts = before.get((gpu, xid), 0) + np.cumsum(bumps)
        first = 0 if (gpu, xid) in before else min(at)
        labels = {**fleet.gpus[gpu].labels(), "xid": str(xid),
                  "action": action_of(xid, io.xid_message(xid))}  # fmt: skip
        out.run("fleet_gpu_xid_errors_total", labels, t_ms[first:], counts[first:])


def allocation_labels(fleet: Fleet, gpu: int, job: SimJob) -> dict[str, str]:
    """``fleet_gpu_allocation`` labels, as attribution reads them from the prolog file."""
    return {
        **fleet.gpus[gpu].labels(),
        "job": job.id,
        "team": job.team,
        "user": job.user,
        "workload": job.workload,
        "tier": job.tier,
    }


def _holder_runs(
    fleet: Fleet,
    frame: Frame,
    jobs: Mapping[int, SimJob],
    t_ms: npt.NDArray[np.int64],
    out: Builder,
) -> None:
    """``fleet_gpu_allocation`` and ``fleet_gpu_process_memory_bytes`` per (GPU, job) run."""
    holder = frame.holder
    for g in range(holder.shape[0]):
        row = holder[g]
        edges = np.flatnonzero(np.diff(row)) + 1
        for a, b in zip(np.r_[0, edges], np.r_[edges, len(row)], strict=True):
            seq = int(row[a])
            if seq < 0:
                continue
            job = jobs[seq]
            labels = allocation_labels(fleet, g, job)
            out.run("fleet_gpu_allocation", labels, t_ms[a:b], 1.0)
            proc = frame.process[g, a:b] & frame.up[g, a:b]
            if proc.any():
                pid = int(frame.pid[g, a:b][proc][0])
                plabels = {**fleet.gpus[g].labels(), "pid": str(pid), "job": job.id,
                           "user": job.user}  # fmt: skip
                out.run("fleet_gpu_process_memory_bytes", plabels, t_ms[a:b][proc],
                        frame.memory_used_bytes[g, a:b][proc])  # fmt: skip


def sched_batch(
    fleet: Fleet,
    jobs: Iterable[SimJob],
    k0: int,
    k1: int,
    out: Builder,
    t_ms: npt.NDArray[np.int64] | None = None,
) -> None:
    """The scheduler series at every tick of ``[k0, k1)`` (state after each tick).

    ``t_ms`` overrides the timestamps (one per tick). Always present: ``gpus_total``,
    ``quota_gpus`` per team, ``gpus_allocated`` per (team, tier) and ``jobs`` per
    (PENDING|RUNNING, team, workload); ``pending_jobs``/``pending_gpus`` per (reason, team,
    workload) only where some job waits for that reason, as a Slurm exporter reports them.
    """
    n = k1 - k0
    cluster = fleet.spec.cluster
    times = np.arange(k0, k1, dtype=np.int64) * fleet.spec.tick_ms if t_ms is None else t_ms
    teams = [t.name for t in fleet.teams]
    ti = {t: i for i, t in enumerate(teams)}
    wi = {w: i for i, w in enumerate(WORKLOADS)}
    ri = {r: i for i, r in enumerate(REASONS)}
    n_t, n_w, n_r = len(teams), len(WORKLOADS), len(REASONS)
    alloc = np.zeros((n_t * 2, n + 1), np.int64)
    state = np.zeros((2 * n_t * n_w, n + 1), np.int64)  # PENDING block, then RUNNING
    pend = np.zeros((2, n_r * n_t * n_w, n + 1), np.int64)  # jobs, gpus

    def add(arr: npt.NDArray[np.int64], row: int, a: int, b: int, value: int) -> None:
        a, b = max(a, k0) - k0, min(b, k1) - k0
        if b > a:
            arr[row, a] += value
            arr[row, b] -= value

    for job in jobs:
        t, w = ti[job.team], wi[job.workload]
        combo = t * n_w + w
        pend_end = (
            job.start if job.start is not None else (job.end if job.end is not None else OPEN)
        )
        add(state, combo, job.submit, pend_end, 1)
        marks = [*job.reasons, (pend_end, "")]
        for (a, reason), (b, _) in pairwise(marks):
            row = ri[reason] * n_t * n_w + combo
            add(pend[0], row, a, b, 1)
            add(pend[1], row, a, b, job.gpus)
        if job.start is not None:
            end = job.end if job.end is not None else OPEN
            add(state, n_t * n_w + combo, job.start, end, 1)
            add(alloc, t * 2 + (0 if job.tier == "production" else 1), job.start, end, job.gpus)

    def level(arr: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.cumsum(arr, axis=-1)[..., :n]

    c = {"cluster": cluster}
    out.grid("fleet_sched_gpus_total", [c], times, np.full((1, n), len(fleet.gpus)))
    quotas = np.array([[tm.quota_gpus] for tm in fleet.teams], np.float64)
    out.grid("fleet_sched_quota_gpus", [{**c, "team": tm} for tm in teams], times, quotas)
    rows = [{**c, "team": tm, "tier": tier} for tm in teams for tier in TIERS_ORDER]
    out.grid("fleet_sched_gpus_allocated", rows, times, level(alloc))
    rows = [{**c, "state": s, "team": tm, "workload": w}
            for s in ("PENDING", "RUNNING") for tm in teams for w in WORKLOADS]  # fmt: skip
    out.grid("fleet_sched_jobs", rows, times, level(state))
    counts, gpus = level(pend[0]), level(pend[1])
    live = np.flatnonzero(counts.any(axis=1))
    rows = [{**c, "reason": r, "team": tm, "workload": w}
            for r in REASONS for tm in teams for w in WORKLOADS]  # fmt: skip
    sel = [rows[i] for i in live]
    out.grid("fleet_sched_pending_jobs", sel, times, counts[live], counts[live] > 0)
    out.grid("fleet_sched_pending_gpus", sel, times, gpus[live], counts[live] > 0)
