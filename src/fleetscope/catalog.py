"""The metric catalog: every canonical metric Fleetscope knows, in one place.

Exposition (HELP/TYPE lines), the Prometheus ``/api/v1/metadata`` answer, exporter normalization,
docs, default alert rules and UI labels all read this table. Every ``fleet_…`` name the code uses,
also inside PromQL strings, must be defined here; ``tests/test_catalog.py`` scans the source.

Conventions (DESIGN.md "Canonical metrics"): prefix ``fleet_``; base units (seconds, bytes, ratios
0–1, watts, celsius, joules, hertz); counters end in ``_total``; GPU series carry
``node, gpu, gpu_uuid, gpu_model``. ``type`` is one of ``gauge``, ``counter``, ``histogram`` or
``info`` (an info series has the value 1 while the relation it names holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter", "histogram", "info"]

GPU_LABELS = ("node", "gpu", "gpu_uuid", "gpu_model")
NODE_LABELS = ("node",)
TRAIN_LABELS = ("job", "team", "rank")
INFERENCE_LABELS = ("endpoint", "model", "team", "tier")
PROBE_LABELS = ("endpoint", "model")
SCHED_LABELS = ("cluster",)


@dataclass(frozen=True)
class Metric:
    """One canonical metric: its name, type, base unit, labels, area, owning team and help text."""

    name: str
    type: MetricType
    unit: str
    labels: tuple[str, ...]
    area: str
    owner: str
    help: str

    @property
    def prometheus_type(self) -> str:
        """The TYPE word in the text exposition format (info series are gauges there)."""
        return "gauge" if self.type == "info" else self.type


def _m(
    name: str,
    type_: MetricType,
    unit: str,
    labels: tuple[str, ...],
    area: str,
    help_: str,
    owner: str = "platform",
) -> Metric:
    return Metric(name, type_, unit, labels, area, owner, help_)


_G = GPU_LABELS
_N = NODE_LABELS

# fmt: off
_ALL: tuple[Metric, ...] = (
    # --- GPU (NVML / dcgm-exporter) ---
    _m("fleet_gpu_utilization_ratio", "gauge", "ratio", _G, "gpu",
       "Fraction of the sample period during which a kernel ran on the GPU (NVML utilization.gpu)."),
    _m("fleet_gpu_sm_active_ratio", "gauge", "ratio", _G, "gpu",
       "Fraction of time at least one warp was active on an SM, averaged over SMs (DCGM SM_ACTIVE)."),
    _m("fleet_gpu_tensor_active_ratio", "gauge", "ratio", _G, "gpu",
       "Fraction of cycles the tensor pipes were active (DCGM PIPE_TENSOR_ACTIVE)."),
    _m("fleet_gpu_dram_active_ratio", "gauge", "ratio", _G, "gpu",
       "Fraction of cycles the device memory interface was active (DCGM PROF_DRAM_ACTIVE)."),
    _m("fleet_gpu_memory_used_bytes", "gauge", "bytes", _G, "gpu",
       "Frame-buffer memory in use (as nvidia-smi shows it: the driver's reserved part left out)."),
    _m("fleet_gpu_memory_total_bytes", "gauge", "bytes", _G, "gpu",
       "Frame-buffer memory installed."),
    _m("fleet_gpu_temperature_celsius", "gauge", "celsius", _G, "gpu",
       "GPU core temperature."),
    _m("fleet_gpu_power_watts", "gauge", "watts", _G, "gpu",
       "Power drawn by the GPU board."),
    _m("fleet_gpu_power_limit_watts", "gauge", "watts", _G, "gpu",
       "Enforced power limit."),
    _m("fleet_gpu_energy_joules_total", "counter", "joules", _G, "gpu",
       "Energy consumed since the driver was loaded."),
    _m("fleet_gpu_sm_clock_hertz", "gauge", "hertz", _G, "gpu",
       "Current SM clock."),
    _m("fleet_gpu_throttle_reasons", "gauge", "bitmask", _G, "gpu",
       "NVML clocks-event (throttle) reasons bitmask; 0 means not throttled."),
    _m("fleet_gpu_ecc_errors_total", "counter", "errors", (*_G, "type"), "gpu",
       "ECC memory errors since the driver was loaded, by type (corrected|uncorrected)."),
    _m("fleet_gpu_remapped_rows_total", "counter", "rows", (*_G, "type"), "gpu",
       "Rows remapped by the GPU memory, by type (correctable|uncorrectable)."),
    _m("fleet_gpu_xid_errors_total", "counter", "errors", (*_G, "xid", "action"), "gpu",
       "XID errors reported by the driver, by XID code and recommended action."),
    _m("fleet_gpu_pcie_receive_bytes_total", "counter", "bytes", _G, "gpu",
       "Bytes received over PCIe by the GPU."),
    _m("fleet_gpu_pcie_transmit_bytes_total", "counter", "bytes", _G, "gpu",
       "Bytes transmitted over PCIe by the GPU."),
    _m("fleet_gpu_nvlink_receive_bytes_total", "counter", "bytes", _G, "gpu",
       "Bytes received over NVLink by the GPU."),
    _m("fleet_gpu_nvlink_transmit_bytes_total", "counter", "bytes", _G, "gpu",
       "Bytes transmitted over NVLink by the GPU."),
    _m("fleet_gpu_up", "gauge", "bool", _G, "gpu",
       "1 when the GPU answered the collector this cycle, 0 when it is lost or failed."),
    # --- attribution ---
    _m("fleet_gpu_allocation", "info", "info", (*_G, "job", "team", "user", "workload", "tier"), "attribution",
       "1 while a job holds the GPU; join on gpu_uuid to attribute GPU series to jobs and teams."),
    _m("fleet_gpu_process_memory_bytes", "gauge", "bytes", (*_G, "pid", "job", "user"), "attribution",
       "GPU memory used by one process, attributed to its job and user."),
    # --- host ---
    _m("fleet_node_cpu_utilization_ratio", "gauge", "ratio", _N, "host",
       "Fraction of CPU time not idle, over all cores."),
    _m("fleet_node_memory_used_bytes", "gauge", "bytes", _N, "host",
       "Host memory in use."),
    _m("fleet_node_memory_total_bytes", "gauge", "bytes", _N, "host",
       "Host memory installed."),
    _m("fleet_node_load1", "gauge", "load", _N, "host",
       "One-minute load average."),
    # --- storage ---
    _m("fleet_disk_read_bytes_total", "counter", "bytes", (*_N, "device"), "storage",
       "Bytes read from the block device."),
    _m("fleet_disk_written_bytes_total", "counter", "bytes", (*_N, "device"), "storage",
       "Bytes written to the block device."),
    _m("fleet_disk_reads_completed_total", "counter", "operations", (*_N, "device"), "storage",
       "Reads completed by the block device."),
    _m("fleet_disk_writes_completed_total", "counter", "operations", (*_N, "device"), "storage",
       "Writes completed by the block device."),
    _m("fleet_disk_read_time_seconds_total", "counter", "seconds", (*_N, "device"), "storage",
       "Time spent on reads (node_exporter semantics)."),
    _m("fleet_disk_write_time_seconds_total", "counter", "seconds", (*_N, "device"), "storage",
       "Time spent on writes (node_exporter semantics)."),
    _m("fleet_disk_io_time_seconds_total", "counter", "seconds", (*_N, "device"), "storage",
       "Time the device had I/O in progress."),
    _m("fleet_filesystem_size_bytes", "gauge", "bytes", (*_N, "mount"), "storage",
       "Filesystem size."),
    _m("fleet_filesystem_avail_bytes", "gauge", "bytes", (*_N, "mount"), "storage",
       "Filesystem space available to unprivileged users."),
    # --- network ---
    _m("fleet_network_receive_bytes_total", "counter", "bytes", (*_N, "interface"), "network",
       "Bytes received on the interface."),
    _m("fleet_network_transmit_bytes_total", "counter", "bytes", (*_N, "interface"), "network",
       "Bytes transmitted on the interface."),
    _m("fleet_network_receive_drop_total", "counter", "packets", (*_N, "interface"), "network",
       "Received packets dropped."),
    _m("fleet_network_transmit_drop_total", "counter", "packets", (*_N, "interface"), "network",
       "Transmitted packets dropped."),
    _m("fleet_network_receive_errs_total", "counter", "packets", (*_N, "interface"), "network",
       "Receive errors."),
    _m("fleet_network_transmit_errs_total", "counter", "packets", (*_N, "interface"), "network",
       "Transmit errors."),
    _m("fleet_infiniband_port_receive_bytes_total", "counter", "bytes", (*_N, "device", "port"), "network",
       "Bytes received on the InfiniBand port."),
    _m("fleet_infiniband_port_transmit_bytes_total", "counter", "bytes", (*_N, "device", "port"), "network",
       "Bytes transmitted on the InfiniBand port."),
    _m("fleet_infiniband_link_downed_total", "counter", "events", (*_N, "device", "port"), "network",
       "Times the InfiniBand link went down."),
    _m("fleet_infiniband_symbol_errors_total", "counter", "errors", (*_N, "device", "port"), "network",
       "InfiniBand symbol errors."),
    _m("fleet_infiniband_port_receive_errors_total", "counter", "packets", (*_N, "device", "port"), "network",
       "Packets with errors received on the InfiniBand port (port_rcv_errors)."),
    _m("fleet_infiniband_port_rate_bytes", "gauge", "bytes_per_second", (*_N, "device", "port"), "network",
       "Link rate of the InfiniBand port (sysfs ``rate``), for saturation = throughput / rate."),
    _m("fleet_network_speed_bytes", "gauge", "bytes_per_second", (*_N, "interface"), "network",
       "Link speed of the interface (sysfs ``speed`` in Mb/s, here in bytes per second)."),
    _m("fleet_network_tcp_retransmits_total", "counter", "segments", _N, "network",
       "TCP segments retransmitted (/proc/net/snmp Tcp RetransSegs)."),
    _m("fleet_network_peer_bytes_total", "counter", "bytes", (*_N, "peer", "direction"), "network",
       "Bytes exchanged with one peer (a fleet node's name, or ``external``), by direction "
       "(transmit|receive), from conntrack accounting or flow records: east-west vs north-south."),
    _m("fleet_mesh_rtt_seconds", "gauge", "seconds", ("src", "dst"), "network",
       "TCP connect round-trip time from one fleet node to another."),
    _m("fleet_mesh_probe_loss_ratio", "gauge", "ratio", ("src", "dst"), "network",
       "Fraction of mesh probes from src to dst that failed."),
    _m("fleet_probe_endpoint_latency_seconds", "gauge", "seconds", (*_N, "endpoint"), "network",
       "Time from an agent's HTTP request to an inference endpoint's response headers."),
    _m("fleet_probe_endpoint_up", "gauge", "bool", (*_N, "endpoint"), "network",
       "1 when the agent's last latency probe of the endpoint got an HTTP response below 500."),
    # --- NFS client (storage to compute) ---
    _m("fleet_nfs_read_bytes_total", "counter", "bytes", (*_N, "mount", "export"), "storage",
       "Bytes read by the NFS client from the mount (/proc/self/mountstats)."),
    _m("fleet_nfs_written_bytes_total", "counter", "bytes", (*_N, "mount", "export"), "storage",
       "Bytes written by the NFS client to the mount (/proc/self/mountstats)."),
    _m("fleet_nfs_rpc_operations_total", "counter", "operations", (*_N, "mount", "export", "op"), "storage",
       "NFS RPC operations completed on the mount, by operation (READ, WRITE …)."),
    _m("fleet_nfs_rpc_rtt_seconds_total", "counter", "seconds", (*_N, "mount", "export", "op"), "storage",
       "Cumulative RPC round-trip time of the operation; ÷ operations is the mean RTT."),
    # --- training ---
    _m("fleet_train_steps_total", "counter", "steps", TRAIN_LABELS, "training",
       "Optimizer steps completed."),
    _m("fleet_train_samples_total", "counter", "samples", TRAIN_LABELS, "training",
       "Training samples processed."),
    _m("fleet_train_step_seconds", "histogram", "seconds", TRAIN_LABELS, "training",
       "Wall time of one training step."),
    _m("fleet_train_dataloader_wait_seconds_total", "counter", "seconds", TRAIN_LABELS, "training",
       "Time the training loop waited for the data loader."),
    _m("fleet_train_checkpoint_write_seconds", "histogram", "seconds", TRAIN_LABELS, "training",
       "Time to write one checkpoint."),
    _m("fleet_train_checkpoints_total", "counter", "checkpoints", (*TRAIN_LABELS, "outcome"), "training",
       "Checkpoints attempted, by outcome."),
    _m("fleet_train_restarts_total", "counter", "restarts", TRAIN_LABELS, "training",
       "Times the training run restarted."),
    # --- inference and active probes ---
    _m("fleet_inference_ttft_seconds", "histogram", "seconds", INFERENCE_LABELS, "inference",
       "Time to first token: request sent to first streamed chunk with content."),
    _m("fleet_inference_inter_token_latency_seconds", "histogram", "seconds", INFERENCE_LABELS, "inference",
       "Gap between consecutive output tokens."),
    _m("fleet_inference_request_latency_seconds", "histogram", "seconds", INFERENCE_LABELS, "inference",
       "End-to-end request latency."),
    _m("fleet_inference_requests_total", "counter", "requests", (*INFERENCE_LABELS, "outcome"), "inference",
       "Requests finished, by outcome."),
    _m("fleet_inference_prompt_tokens_total", "counter", "tokens", INFERENCE_LABELS, "inference",
       "Prompt tokens processed."),
    _m("fleet_inference_generated_tokens_total", "counter", "tokens", INFERENCE_LABELS, "inference",
       "Tokens generated."),
    _m("fleet_inference_requests_running", "gauge", "requests", INFERENCE_LABELS, "inference",
       "Requests being processed now."),
    _m("fleet_inference_requests_waiting", "gauge", "requests", INFERENCE_LABELS, "inference",
       "Requests queued, not yet scheduled."),
    _m("fleet_inference_kv_cache_usage_ratio", "gauge", "ratio", INFERENCE_LABELS, "inference",
       "Fraction of the KV cache in use."),
    _m("fleet_inference_request_seconds_total", "counter", "seconds", INFERENCE_LABELS, "inference",
       "Cumulative request time (sources that export sums, not histograms: Triton's µs counters)."),
    _m("fleet_inference_queue_seconds_total", "counter", "seconds", INFERENCE_LABELS, "inference",
       "Cumulative time requests spent queued (Triton's queue µs counter)."),
    _m("fleet_probe_ttft_seconds", "histogram", "seconds", PROBE_LABELS, "inference",
       "Probe-measured time to first token."),
    _m("fleet_probe_inter_token_latency_seconds", "histogram", "seconds", PROBE_LABELS, "inference",
       "Probe-measured gap between output tokens."),
    _m("fleet_probe_request_latency_seconds", "histogram", "seconds", PROBE_LABELS, "inference",
       "Probe-measured end-to-end latency."),
    _m("fleet_probe_requests_total", "counter", "requests", (*PROBE_LABELS, "outcome"), "inference",
       "Probe requests, by outcome."),
    _m("fleet_probe_up", "gauge", "bool", PROBE_LABELS, "inference",
       "1 when the last probe of the endpoint succeeded."),
    # --- scheduler ---
    _m("fleet_sched_gpus_total", "gauge", "gpus", SCHED_LABELS, "scheduler",
       "GPUs the scheduler manages."),
    _m("fleet_sched_gpus_allocated", "gauge", "gpus", (*SCHED_LABELS, "team", "tier"), "scheduler",
       "GPUs allocated to running jobs."),
    _m("fleet_sched_jobs", "gauge", "jobs", (*SCHED_LABELS, "state", "team", "workload"), "scheduler",
       "Jobs known to the scheduler, by state."),
    _m("fleet_sched_pending_jobs", "gauge", "jobs", (*SCHED_LABELS, "reason", "team", "workload"), "scheduler",
       "Pending jobs, by Slurm pending reason."),
    _m("fleet_sched_pending_gpus", "gauge", "gpus", (*SCHED_LABELS, "reason", "team", "workload"), "scheduler",
       "GPUs requested by pending jobs, by Slurm pending reason."),
    _m("fleet_sched_quota_gpus", "gauge", "gpus", (*SCHED_LABELS, "team"), "scheduler",
       "GPU quota of the team."),
    _m("fleet_sched_queue_wait_seconds", "histogram", "seconds", (*SCHED_LABELS, "team"), "scheduler",
       "Time jobs waited between submit and start."),
    # --- the agent's own health ---
    _m("fleet_agent_cycle_seconds", "gauge", "seconds", _N, "agent",
       "Wall time of the agent's last collection cycle."),
    _m("fleet_agent_collector_seconds", "gauge", "seconds", (*_N, "collector"), "agent",
       "Wall time of each collector in the agent's last cycle."),
    _m("fleet_agent_collector_up", "gauge", "bool", (*_N, "collector"), "agent",
       "1 when the collector ran this cycle and its source could be opened (e.g. NVML loaded)."),
    _m("fleet_agent_collector_errors_total", "counter", "errors", (*_N, "collector"), "agent",
       "Collection cycles in which a collector failed."),
    _m("fleet_agent_pushed_samples_total", "counter", "samples", _N, "agent",
       "Samples accepted by the remote-write endpoint."),
    _m("fleet_agent_push_failures_total", "counter", "failures", _N, "agent",
       "Remote-write pushes that failed, whether the batch was kept for retry or dropped."),
    _m("fleet_agent_dropped_samples_total", "counter", "samples", _N, "agent",
       "Samples dropped: send queue full, batch unencodable, or refused with a non-retryable 4xx."),
    _m("fleet_agent_wal_bytes", "gauge", "bytes", _N, "agent",
       "Bytes of not-yet-acknowledged batches in the agent's on-disk write-ahead log."),
    _m("fleet_agent_wal_pending_samples", "gauge", "samples", _N, "agent",
       "Samples in the agent's write-ahead log waiting for the remote-write endpoint."),
    _m("fleet_agent_wal_oldest_seconds", "gauge", "seconds", _N, "agent",
       "Age of the oldest batch waiting in the write-ahead log (0 when it is empty)."),
    _m("fleet_agent_scrape_up", "gauge", "bool", (*_N, "source", "target"), "agent",
       "1 when the agent's last scrape of an existing exporter (dcgm-exporter, vLLM …) succeeded."),
)
# fmt: on

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

# Series names a histogram expands into (Prometheus' classic histogram layout).
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def get(name: str) -> Metric | None:
    """The catalog entry for a metric or one of its histogram series names; ``None`` if unknown."""
    metric = METRICS.get(name)
    if metric is not None:
        return metric
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = METRICS.get(name[: -len(suffix)])
            if base is not None and base.type == "histogram":
                return base
    return None


def by_area(area: str) -> list[Metric]:
    """Catalog entries of one area (``gpu``, ``storage`` …) in catalog order."""
    return [m for m in _ALL if m.area == area]
