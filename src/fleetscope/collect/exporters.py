"""Exporter collector: scrapes an existing exporter's ``/metrics`` and maps it onto the catalog.

A fleet often runs exporters already: dcgm-exporter, node_exporter, and the inference servers'
own endpoints (vLLM, TGI, Triton, SGLang). :class:`ExporterCollector` GETs one such target with
httpx, parses the Prometheus text format with ``prometheus_client.parser`` and hands the families
to :func:`normalize`, a pure function driven by the tables below (source name → canonical name,
unit conversion, label renames). Metrics without a rule are ignored, never passed through; labels
a rule does not name are dropped.

Every sample gets ``node`` (the agent's node, always; dcgm-exporter's ``Hostname`` is dropped
because in Kubernetes it is the exporter pod's name, not the node's) and then ``extra_labels``
from the configuration (``endpoint``, ``team``, ``tier`` of an inference server …), which win over
labels taken from the exporter. Each scrape also yields
``fleet_agent_scrape_up{node, source, target} 1|0`` (``target`` = the URL). A failed scrape
(network error, non-2xx, unparsable text) yields only ``fleet_agent_scrape_up 0``, sets
``init_error`` and never raises.

**dcgm** (dcgm-exporter ``etc/default-counters.csv`` names, and the 1.x names of
``etc/1.x-compatibility-metrics.csv``). Labels: ``gpu`` → ``gpu``, ``UUID``/``uuid`` →
``gpu_uuid``, ``modelName`` → ``gpu_model``; kept as they are: ``pci_bus_id``, ``container``,
``namespace``, ``pod``; MIG ``GPU_I_ID`` → ``mig_instance``, ``GPU_I_PROFILE`` → ``mig_profile``;
dropped: ``device``, ``Hostname``, ``DCGM_FI_DRIVER_VERSION``, ``hpc_job`` (job ownership is the
``fleet_gpu_allocation`` join, DESIGN.md).

- ``DCGM_FI_DEV_GPU_UTIL`` (1.x ``dcgm_gpu_utilization``) % → ``fleet_gpu_utilization_ratio``
  (÷100); ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (``dcgm_fi_prof_gr_engine_active``), a ratio, fills it
  only for a series without GPU_UTIL (a MIG instance, a DCP-only counters file);
- ``DCGM_FI_PROF_SM_ACTIVE``, ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE``, ``DCGM_FI_PROF_DRAM_ACTIVE``
  (``dcgm_fi_prof_…``), ratios → ``fleet_gpu_sm_active_ratio``, ``fleet_gpu_tensor_active_ratio``,
  ``fleet_gpu_dram_active_ratio``;
- ``DCGM_FI_DEV_FB_USED`` (``dcgm_fb_used``) MiB → ``fleet_gpu_memory_used_bytes`` (×2²⁰);
  ``DCGM_FI_DEV_FB_TOTAL`` if exported, else ``FB_USED + FB_FREE (+ FB_RESERVED)`` per GPU, MiB →
  ``fleet_gpu_memory_total_bytes``;
- ``DCGM_FI_DEV_GPU_TEMP`` (``dcgm_gpu_temp``) °C → ``fleet_gpu_temperature_celsius``;
  ``DCGM_FI_DEV_POWER_USAGE`` (``dcgm_power_usage``) W → ``fleet_gpu_power_watts``;
  ``DCGM_FI_DEV_SM_CLOCK`` (``dcgm_sm_clock``) MHz → ``fleet_gpu_sm_clock_hertz`` (×10⁶);
- ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (``dcgm_total_energy_consumption``) mJ since boot →
  ``fleet_gpu_energy_joules_total`` (÷1000);
- ``DCGM_FI_DEV_ECC_SBE_VOL_TOTAL`` / ``DCGM_FI_DEV_ECC_DBE_VOL_TOTAL`` (volatile: since the driver
  loaded; ``dcgm_ecc_{sbe,dbe}_volatile_total``) → ``fleet_gpu_ecc_errors_total{type=corrected}``
  / ``{type=uncorrected}``;
- ``DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS`` / ``DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS`` →
  ``fleet_gpu_remapped_rows_total{type=correctable}`` / ``{type=uncorrectable}``.

The compatibility CSV calls the ``dcgm_fi_prof_*`` values "%" but only renames the DCGM fields,
whose values are ratios 0–1; they are read as ratios. Frame-buffer total: DCGM's ``FB_USED``
excludes the driver-reserved memory where ``FB_RESERVED`` exists (NVML memory v2: total =
reserved + free + used); without ``FB_RESERVED`` (older DCGM, the 1.x exporter) used + free is
the total. If any part of a GPU is blank, no total is derived for it.

Not mapped, on purpose: ``DCGM_FI_PROF_PCIE_{TX,RX}_BYTES`` and
``DCGM_FI_PROF_NVLINK_{TX,RX}_BYTES`` are *rates* in bytes per second averaged over DCGM's
sample interval (DCGM profiling metrics), not byte counters, so they cannot become the PCIe or
NVLink byte counters of the catalog;
``DCGM_FI_DEV_PCIE_{TX,RX}_THROUGHPUT`` (the "KB" fields the CSV calls counters) are NVML's
``nvmlDeviceGetPcieThroughput`` KB/s readings over a 20 ms window, a rate as well;
``DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`` sums all lanes and both directions (dcgm_fields.h gives no
unit), so it is neither the receive nor the transmit counter; ``DCGM_FI_DEV_XID_ERRORS`` is the
value of the *last* XID (e.g. 79), not a count of errors. The GPU collector (NVML) covers those.

DCGM blanks (dcgm_structs.h): ``DCGM_INT64_BLANK`` = 0x7ffffffffffffff0 and the values above it
(not found, not supported, not permissioned), ``DCGM_INT32_BLANK`` = 0x7ffffff0 (+0…3) and
``DCGM_FP64_BLANK`` = 2⁴⁷ mean "no value" and are dropped, never numbers. For gauges every value
≥ 0x7ffffff0 is a blank (no temperature, clock, MiB, watt or ratio reaches 2³¹); for counters
(energy in mJ does pass 2³¹) only values ≥ 9.223372036854775e18 and the four exact int32
sentinels are.

**node** (node_exporter; base units already, so values pass unchanged):

- ``node_disk_read_bytes_total``, ``node_disk_written_bytes_total``,
  ``node_disk_reads_completed_total``, ``node_disk_writes_completed_total``,
  ``node_disk_read_time_seconds_total``, ``node_disk_write_time_seconds_total``,
  ``node_disk_io_time_seconds_total`` ``{device}`` → ``fleet_disk_read_bytes_total``,
  ``fleet_disk_written_bytes_total``, ``fleet_disk_reads_completed_total``,
  ``fleet_disk_writes_completed_total``, ``fleet_disk_read_time_seconds_total``,
  ``fleet_disk_write_time_seconds_total``, ``fleet_disk_io_time_seconds_total`` ``{device}``;
- ``node_filesystem_size_bytes`` / ``node_filesystem_avail_bytes`` ``{mountpoint}`` →
  ``fleet_filesystem_size_bytes`` / ``fleet_filesystem_avail_bytes`` ``{mount}``;
- ``node_network_{receive,transmit}_{bytes,drop,errs}_total`` and ``node_network_speed_bytes``
  ``{device}`` → ``fleet_network_receive_bytes_total``, ``fleet_network_transmit_bytes_total``,
  ``fleet_network_receive_drop_total``, ``fleet_network_transmit_drop_total``,
  ``fleet_network_receive_errs_total``, ``fleet_network_transmit_errs_total``,
  ``fleet_network_speed_bytes`` ``{interface}``;
- ``node_infiniband_port_data_{received,transmitted}_bytes_total`` (octets: procfs multiplies the
  sysfs 4-byte words by 4) → ``fleet_infiniband_port_receive_bytes_total`` /
  ``fleet_infiniband_port_transmit_bytes_total``; ``node_infiniband_link_downed_total``,
  ``node_infiniband_port_errors_received_total``, ``node_infiniband_symbol_error_total``,
  ``node_infiniband_rate_bytes_per_second`` → ``fleet_infiniband_link_downed_total``,
  ``fleet_infiniband_port_receive_errors_total``, ``fleet_infiniband_symbol_errors_total``,
  ``fleet_infiniband_port_rate_bytes`` ``{device, port}``.

**Inference servers.** ``model_name`` (vLLM, SGLang) and ``model`` (Triton) → ``model``; TGI has no
model label, so ``model`` comes from ``extra_labels``. Histograms keep their buckets (``_bucket``
with ``le`` rewritten in the canonical unit, ``_sum``, ``_count``). ``outcome`` of
``fleet_inference_requests_total`` is the server's own word for how a request ended, lower-cased.

- vLLM: ``vllm:time_to_first_token_seconds`` → ``fleet_inference_ttft_seconds``;
  ``vllm:inter_token_latency_seconds`` (older ``vllm:time_per_output_token_seconds``, the same
  per-step gap under its old name) → ``fleet_inference_inter_token_latency_seconds``;
  ``vllm:e2e_request_latency_seconds`` → ``fleet_inference_request_latency_seconds``;
  ``vllm:num_requests_running`` / ``_waiting``; ``vllm:kv_cache_usage_perc`` (older
  ``vllm:gpu_cache_usage_perc``; both already 0–1, "1 means 100 percent usage") →
  ``fleet_inference_kv_cache_usage_ratio``; ``vllm:prompt_tokens_total`` /
  ``vllm:generation_tokens_total``; ``vllm:request_success_total{finished_reason}`` →
  ``fleet_inference_requests_total{outcome=<finished_reason>}``. ``engine`` is kept.
- TGI: ``tgi_request_duration`` → request latency; ``tgi_request_success`` → outcome
  ``success``; ``tgi_request_failure{err}`` → outcome = ``err``; ``tgi_request_input_length`` /
  ``tgi_request_generated_tokens`` histograms' ``_sum`` → prompt / generated token counters;
  ``tgi_request_queue_duration_sum`` → ``fleet_inference_queue_seconds_total``; ``tgi_queue_size``
  → waiting; ``tgi_batch_current_size`` → running. Not mapped: ``tgi_request_count`` (success +
  failure again; summing outcomes would count twice) and
  ``tgi_request_mean_time_per_token_duration`` (inference time ÷ generated tokens, prefill
  included: neither ITL nor TPOT as DESIGN.md defines them).
- Triton: ``nv_inference_request_success`` → outcome ``success``;
  ``nv_inference_request_failure{reason}`` → outcome = ``reason`` (``rejected``, ``canceled``,
  ``backend``, ``other``; ``failure`` where the version has no reason label);
  ``nv_inference_request_duration_us`` / ``nv_inference_queue_duration_us`` (cumulative µs) →
  ``fleet_inference_request_seconds_total`` / ``fleet_inference_queue_seconds_total`` (÷10⁶);
  ``nv_inference_pending_request_count`` → waiting; the opt-in
  ``nv_inference_first_response_histogram_ms`` (time to the first response of a decoupled,
  streaming model) → TTFT with ``le`` and ``_sum`` ÷1000. ``version`` → ``model_version``,
  ``gpu_uuid`` is kept. ``nv_inference_count`` counts inferences (a batch of 8 is 8), not
  requests: no catalog metric, not mapped.
- SGLang: ``sglang:time_to_first_token_seconds``, ``sglang:inter_token_latency_seconds`` (older
  ``sglang:time_per_output_token_seconds``), ``sglang:e2e_request_latency_seconds``,
  ``sglang:num_running_reqs`` → running, ``sglang:num_queue_reqs`` → waiting,
  ``sglang:token_usage`` (fraction of the KV token pool in use) → KV-cache ratio,
  ``sglang:prompt_tokens_total`` / ``sglang:generation_tokens_total``. Kept: ``engine_type``,
  ``tp_rank``, ``pp_rank``, ``dp_rank``, ``moe_ep_rank``.

Preference: where two rules give the same canonical series (same name and labels, ``le`` aside),
only the lower ``rank`` is used, so a current name wins over its deprecated one and
``DCGM_FI_DEV_GPU_UTIL`` over ``GR_ENGINE_ACTIVE`` — per series, so a MIG instance that only has
``GR_ENGINE_ACTIVE`` still gets a utilization. Where dropped labels make two samples of one rule
collide, counters and histogram series are summed and the first gauge wins. NaN values are
dropped. Counters: prometheus_client's parser names a counter family without ``_total`` and its
sample with it (adding it when the text lacks it, as TGI's does); rules match either.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from fleetscope import catalog
from fleetscope.collect import Sample

__all__ = ["SCRAPE_UP", "SOURCES", "ExporterCollector", "Rule", "normalize", "parse"]

log = logging.getLogger(__name__)

SCRAPE_UP = "fleet_agent_scrape_up"
ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"  # the classic text format, not OpenMetrics

MIB = 1024 * 1024
DCGM_INT32_BLANK = 0x7FFFFFF0
DCGM_INT64_BLANK = 9.223372036854775e18  # 0x7ffffffffffffff0 as text rounds to 2**63 or just below
_INT32_SENTINELS = frozenset(float(DCGM_INT32_BLANK + i) for i in range(4))
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_NO_LABELS: Mapping[str, str] = MappingProxyType({})

Shape = Literal["value", "histogram", "sum", "part"]
Blank = Literal["none", "gauge", "counter"]


@dataclass(frozen=True)
class Rule:
    """How one source metric becomes a canonical one.

    ``labels`` maps source label → canonical label (others are dropped); the value (and a
    histogram's ``le`` and ``_sum``) becomes ``value × mul ÷ div``. ``shape``: ``value`` (gauge or
    counter), ``histogram`` (all three series), ``sum`` (only the source histogram's ``_sum``, as
    a counter), ``part`` (a frame-buffer component, see :func:`normalize`). ``rank`` 0 is
    preferred over 1 for the same canonical series. ``const`` labels are added (``type``, a
    default ``outcome``); ``outcome_from`` names the source label whose lower-cased value is
    ``outcome``. ``blank`` says which DCGM sentinels mean "no value".
    """

    target: str
    labels: Mapping[str, str]
    mul: float = 1.0
    div: float = 1.0
    shape: Shape = "value"
    rank: int = 0
    const: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)
    outcome_from: str | None = None
    blank: Blank = "none"


def _strip_total(name: str) -> str:
    return name.removesuffix("_total")


def _table(entries: Iterable[tuple[str, Rule]]) -> Mapping[str, tuple[Rule, ...]]:
    """Rules by source name (counters' ``_total`` stripped, so either spelling matches)."""
    table: dict[str, tuple[Rule, ...]] = {}
    for name, rule in entries:
        key = name if rule.shape in ("histogram", "sum") else _strip_total(name)
        table[key] = (*table.get(key, ()), rule)
    return MappingProxyType(table)


# ------------------------------------------------------------------------------ dcgm-exporter

_GPU = MappingProxyType(
    {
        "gpu": "gpu",
        "UUID": "gpu_uuid",
        "uuid": "gpu_uuid",
        "modelName": "gpu_model",
        "pci_bus_id": "pci_bus_id",
        "GPU_I_ID": "mig_instance",
        "GPU_I_PROFILE": "mig_profile",
        "container": "container",
        "namespace": "namespace",
        "pod": "pod",
    }
)


def _gauge(target: str, *, mul: float = 1.0, div: float = 1.0, rank: int = 0) -> Rule:
    return Rule(target, _GPU, mul=mul, div=div, rank=rank, blank="gauge")


def _counter(target: str, *, div: float = 1.0, **const: str) -> Rule:
    return Rule(target, _GPU, div=div, const=MappingProxyType(const), blank="counter")


def _part(which: str) -> Rule:
    const = MappingProxyType({"part": which})
    return Rule(
        "fleet_gpu_memory_total_bytes", _GPU, shape="part", rank=1, const=const, blank="gauge"
    )


_UTIL = "fleet_gpu_utilization_ratio"
_SM = "fleet_gpu_sm_active_ratio"
_TENSOR = "fleet_gpu_tensor_active_ratio"
_DRAM = "fleet_gpu_dram_active_ratio"
_USED = "fleet_gpu_memory_used_bytes"
_ECC = "fleet_gpu_ecc_errors_total"
_ROWS = "fleet_gpu_remapped_rows_total"
_ENERGY = "fleet_gpu_energy_joules_total"

_DCGM = _table(
    [
        ("DCGM_FI_DEV_GPU_UTIL", _gauge(_UTIL, div=100)),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", _gauge(_UTIL, rank=1)),
        ("DCGM_FI_PROF_SM_ACTIVE", _gauge(_SM)),
        ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", _gauge(_TENSOR)),
        ("DCGM_FI_PROF_DRAM_ACTIVE", _gauge(_DRAM)),
        ("DCGM_FI_DEV_FB_USED", _gauge(_USED, mul=MIB)),
        ("DCGM_FI_DEV_FB_USED", _part("used")),
        ("DCGM_FI_DEV_FB_FREE", _part("free")),
        ("DCGM_FI_DEV_FB_RESERVED", _part("reserved")),
        ("DCGM_FI_DEV_FB_TOTAL", _gauge("fleet_gpu_memory_total_bytes", mul=MIB)),
        ("DCGM_FI_DEV_GPU_TEMP", _gauge("fleet_gpu_temperature_celsius")),
        ("DCGM_FI_DEV_POWER_USAGE", _gauge("fleet_gpu_power_watts")),
        ("DCGM_FI_DEV_SM_CLOCK", _gauge("fleet_gpu_sm_clock_hertz", mul=1e6)),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", _counter(_ENERGY, div=1000)),
        ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", _counter(_ECC, type="corrected")),
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", _counter(_ECC, type="uncorrected")),
        ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", _counter(_ROWS, type="correctable")),
        ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", _counter(_ROWS, type="uncorrectable")),
        # dcgm-exporter 1.x names (etc/1.x-compatibility-metrics.csv)
        ("dcgm_gpu_utilization", _gauge(_UTIL, div=100)),
        ("dcgm_fi_prof_gr_engine_active", _gauge(_UTIL, rank=1)),
        ("dcgm_fi_prof_sm_active", _gauge(_SM)),
        ("dcgm_fi_prof_pipe_tensor_active", _gauge(_TENSOR)),
        ("dcgm_fi_prof_dram_active", _gauge(_DRAM)),
        ("dcgm_fb_used", _gauge(_USED, mul=MIB)),
        ("dcgm_fb_used", _part("used")),
        ("dcgm_fb_free", _part("free")),
        ("dcgm_gpu_temp", _gauge("fleet_gpu_temperature_celsius")),
        ("dcgm_power_usage", _gauge("fleet_gpu_power_watts")),
        ("dcgm_sm_clock", _gauge("fleet_gpu_sm_clock_hertz", mul=1e6)),
        ("dcgm_total_energy_consumption", _counter(_ENERGY, div=1000)),
        ("dcgm_ecc_sbe_volatile_total", _counter(_ECC, type="corrected")),
        ("dcgm_ecc_dbe_volatile_total", _counter(_ECC, type="uncorrected")),
    ]
)

# ------------------------------------------------------------------------------ node_exporter

_DISK = MappingProxyType({"device": "device"})
_NET = MappingProxyType({"device": "interface"})
_FS = MappingProxyType({"mountpoint": "mount"})
_IB = MappingProxyType({"device": "device", "port": "port"})

_NODE = _table(
    (source, Rule(target, labels))
    for source, target, labels in [
        ("node_disk_read_bytes_total", "fleet_disk_read_bytes_total", _DISK),
        ("node_disk_written_bytes_total", "fleet_disk_written_bytes_total", _DISK),
        ("node_disk_reads_completed_total", "fleet_disk_reads_completed_total", _DISK),
        ("node_disk_writes_completed_total", "fleet_disk_writes_completed_total", _DISK),
        ("node_disk_read_time_seconds_total", "fleet_disk_read_time_seconds_total", _DISK),
        ("node_disk_write_time_seconds_total", "fleet_disk_write_time_seconds_total", _DISK),
        ("node_disk_io_time_seconds_total", "fleet_disk_io_time_seconds_total", _DISK),
        ("node_filesystem_size_bytes", "fleet_filesystem_size_bytes", _FS),
        ("node_filesystem_avail_bytes", "fleet_filesystem_avail_bytes", _FS),
        ("node_network_receive_bytes_total", "fleet_network_receive_bytes_total", _NET),
        ("node_network_transmit_bytes_total", "fleet_network_transmit_bytes_total", _NET),
        ("node_network_receive_drop_total", "fleet_network_receive_drop_total", _NET),
        ("node_network_transmit_drop_total", "fleet_network_transmit_drop_total", _NET),
        ("node_network_receive_errs_total", "fleet_network_receive_errs_total", _NET),
        ("node_network_transmit_errs_total", "fleet_network_transmit_errs_total", _NET),
        ("node_network_speed_bytes", "fleet_network_speed_bytes", _NET),
        (
            "node_infiniband_port_data_received_bytes_total",
            "fleet_infiniband_port_receive_bytes_total",
            _IB,
        ),
        (
            "node_infiniband_port_data_transmitted_bytes_total",
            "fleet_infiniband_port_transmit_bytes_total",
            _IB,
        ),
        ("node_infiniband_link_downed_total", "fleet_infiniband_link_downed_total", _IB),
        (
            "node_infiniband_port_errors_received_total",
            "fleet_infiniband_port_receive_errors_total",
            _IB,
        ),
        ("node_infiniband_symbol_error_total", "fleet_infiniband_symbol_errors_total", _IB),
        ("node_infiniband_rate_bytes_per_second", "fleet_infiniband_port_rate_bytes", _IB),
    ]
)

# ------------------------------------------------------------------------------ inference servers

_TTFT = "fleet_inference_ttft_seconds"
_ITL = "fleet_inference_inter_token_latency_seconds"
_LATENCY = "fleet_inference_request_latency_seconds"
_REQUESTS = "fleet_inference_requests_total"
_PROMPT = "fleet_inference_prompt_tokens_total"
_GENERATED = "fleet_inference_generated_tokens_total"
_RUNNING = "fleet_inference_requests_running"
_WAITING = "fleet_inference_requests_waiting"
_KV = "fleet_inference_kv_cache_usage_ratio"
_QUEUE_S = "fleet_inference_queue_seconds_total"


def _outcome(default: str) -> Mapping[str, str]:
    return MappingProxyType({"outcome": default})


_VLLM_LABELS = MappingProxyType({"model_name": "model", "engine": "engine"})
_V = _VLLM_LABELS
_VLLM = _table(
    [
        ("vllm:time_to_first_token_seconds", Rule(_TTFT, _V, shape="histogram")),
        ("vllm:inter_token_latency_seconds", Rule(_ITL, _V, shape="histogram")),
        ("vllm:time_per_output_token_seconds", Rule(_ITL, _V, shape="histogram", rank=1)),
        ("vllm:e2e_request_latency_seconds", Rule(_LATENCY, _V, shape="histogram")),
        ("vllm:num_requests_running", Rule(_RUNNING, _V)),
        ("vllm:num_requests_waiting", Rule(_WAITING, _V)),
        ("vllm:kv_cache_usage_perc", Rule(_KV, _V)),
        ("vllm:gpu_cache_usage_perc", Rule(_KV, _V, rank=1)),
        ("vllm:prompt_tokens_total", Rule(_PROMPT, _V)),
        ("vllm:generation_tokens_total", Rule(_GENERATED, _V)),
        (
            "vllm:request_success_total",
            Rule(_REQUESTS, _V, const=_outcome("unknown"), outcome_from="finished_reason"),
        ),
    ]
)

_T = _NO_LABELS  # TGI's request metrics carry no model or instance labels
_TGI = _table(
    [
        ("tgi_request_duration", Rule(_LATENCY, _T, shape="histogram")),
        ("tgi_request_queue_duration", Rule(_QUEUE_S, _T, shape="sum")),
        ("tgi_request_input_length", Rule(_PROMPT, _T, shape="sum")),
        ("tgi_request_generated_tokens", Rule(_GENERATED, _T, shape="sum")),
        ("tgi_request_success", Rule(_REQUESTS, _T, const=_outcome("success"))),
        (
            "tgi_request_failure",
            Rule(_REQUESTS, _T, const=_outcome("failure"), outcome_from="err"),
        ),
        ("tgi_queue_size", Rule(_WAITING, _T)),
        ("tgi_batch_current_size", Rule(_RUNNING, _T)),
    ]
)

_TR = MappingProxyType({"model": "model", "version": "model_version", "gpu_uuid": "gpu_uuid"})
_TRITON = _table(
    [
        ("nv_inference_request_success", Rule(_REQUESTS, _TR, const=_outcome("success"))),
        (
            "nv_inference_request_failure",
            Rule(_REQUESTS, _TR, const=_outcome("failure"), outcome_from="reason"),
        ),
        (
            "nv_inference_request_duration_us",
            Rule("fleet_inference_request_seconds_total", _TR, div=1e6),
        ),
        ("nv_inference_queue_duration_us", Rule(_QUEUE_S, _TR, div=1e6)),
        ("nv_inference_pending_request_count", Rule(_WAITING, _TR)),
        (
            "nv_inference_first_response_histogram_ms",
            Rule(_TTFT, _TR, div=1000, shape="histogram"),
        ),
    ]
)

_S = MappingProxyType(
    {
        "model_name": "model",
        **{k: k for k in ("engine_type", "tp_rank", "pp_rank", "dp_rank", "moe_ep_rank")},
    }
)
_SGLANG = _table(
    [
        ("sglang:time_to_first_token_seconds", Rule(_TTFT, _S, shape="histogram")),
        ("sglang:inter_token_latency_seconds", Rule(_ITL, _S, shape="histogram")),
        ("sglang:time_per_output_token_seconds", Rule(_ITL, _S, shape="histogram", rank=1)),
        ("sglang:e2e_request_latency_seconds", Rule(_LATENCY, _S, shape="histogram")),
        ("sglang:num_running_reqs", Rule(_RUNNING, _S)),
        ("sglang:num_queue_reqs", Rule(_WAITING, _S)),
        ("sglang:token_usage", Rule(_KV, _S)),
        ("sglang:prompt_tokens_total", Rule(_PROMPT, _S)),
        ("sglang:generation_tokens_total", Rule(_GENERATED, _S)),
    ]
)

SOURCES: Mapping[str, Mapping[str, tuple[Rule, ...]]] = MappingProxyType(
    {
        "dcgm": _DCGM,
        "node": _NODE,
        "vllm": _VLLM,
        "tgi": _TGI,
        "triton": _TRITON,
        "sglang": _SGLANG,
    }
)
"""The mapping tables, by source kind: source metric name → rules."""


# ------------------------------------------------------------------------------ normalization


def parse(text: str) -> list[Metric]:
    """The metric families of a Prometheus text exposition; raises ``ValueError`` if malformed."""
    return list(text_string_to_metric_families(text))


def _is_blank(kind: Blank, value: float) -> bool:
    if kind == "gauge":
        return value >= DCGM_INT32_BLANK
    if kind == "counter":
        return value >= DCGM_INT64_BLANK or value in _INT32_SENTINELS
    return False


def _format_le(bound: float) -> str:
    """A bucket bound as Prometheus clients write it (``0.25``, ``1.0``, ``+Inf``)."""
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    return repr(bound)


def _matches(table: Mapping[str, tuple[Rule, ...]], name: str) -> list[tuple[Rule, str]]:
    """The rules for a sample name, each with the histogram suffix it matched (or "")."""
    found = [(r, "") for r in table.get(_strip_total(name), ()) if r.shape in ("value", "part")]
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            for rule in table.get(name.removesuffix(suffix), ()):
                if rule.shape == "histogram" or (rule.shape == "sum" and suffix == "_sum"):
                    found.append((rule, suffix))
    return found


@dataclass
class _Candidate:
    rank: int
    group: tuple[str, frozenset[tuple[str, str]]]  # canonical series, ``le`` aside
    sample: Sample


def _label_key(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset((k, v) for k, v in labels.items() if k != "le")


def normalize(
    source: str,
    families: Iterable[Metric],
    *,
    node: str,
    extra_labels: Mapping[str, str] = _NO_LABELS,
) -> list[Sample]:
    """The canonical samples for one scrape of a ``source`` exporter (see the module docstring).

    Pure: no I/O, no state. Raises ``ValueError`` for an unknown ``source`` (one of
    :data:`SOURCES`). Unmapped metrics, DCGM blanks and NaN values yield nothing.
    """
    table = SOURCES.get(source)
    if table is None:
        raise ValueError(f"unknown exporter source {source!r}; known: {sorted(SOURCES)}")
    candidates: list[_Candidate] = []
    parts: dict[frozenset[tuple[str, str]], dict[str, float | None]] = {}
    for family in families:
        for raw in family.samples:
            for rule, suffix in _matches(table, raw.name):
                value = float(raw.value)
                if math.isnan(value):
                    continue
                blank = _is_blank(rule.blank, value)
                labels = _labels(rule, raw.labels, node, extra_labels)
                if rule.shape == "part":
                    part = labels.pop("part")
                    gpu_parts = parts.setdefault(frozenset(labels.items()), {})
                    gpu_parts[part] = None if blank else value  # a blank part spoils the total
                    continue
                if blank:
                    continue
                name = rule.target + suffix
                if suffix == "_bucket":
                    le = raw.labels.get("le")
                    if le is None:
                        continue
                    labels["le"] = _format_le(float(le) * rule.mul / rule.div)
                elif suffix != "_count":  # counts of observations are not converted
                    value = value * rule.mul / rule.div
                if rule.shape == "sum":
                    name = rule.target
                group = (rule.target, _label_key(labels))
                candidates.append(_Candidate(rule.rank, group, Sample(name, labels, value)))
    candidates.extend(_fb_totals(parts))
    return _merge(_preferred(candidates))


def _labels(
    rule: Rule, source: Mapping[str, str], node: str, extra: Mapping[str, str]
) -> dict[str, str]:
    labels = {canon: source[src] for src, canon in rule.labels.items() if source.get(src)}
    labels.update(rule.const)
    if rule.outcome_from is not None and source.get(rule.outcome_from):
        labels["outcome"] = source[rule.outcome_from].lower()
    labels.update(extra)
    labels["node"] = node
    return labels


def _fb_totals(
    parts: Mapping[frozenset[tuple[str, str]], Mapping[str, float | None]],
) -> list[_Candidate]:
    """Derived frame-buffer totals (rank 1: ``FB_TOTAL`` wins): used + free (+ reserved)."""
    out = []
    target = "fleet_gpu_memory_total_bytes"
    for key, mib in parts.items():
        if "used" not in mib or "free" not in mib or any(v is None for v in mib.values()):
            continue
        total = sum(v for v in mib.values() if v is not None) * MIB
        sample = Sample(target, dict(key), total)
        out.append(_Candidate(1, (target, key), sample))
    return out


def _preferred(candidates: list[_Candidate]) -> list[Sample]:
    best: dict[tuple[str, frozenset[tuple[str, str]]], int] = {}
    for c in candidates:
        best[c.group] = min(c.rank, best.get(c.group, c.rank))
    return [c.sample for c in candidates if c.rank == best[c.group]]


def _merge(samples: list[Sample]) -> list[Sample]:
    """One sample per series: counters and histogram series summed, the first gauge kept."""
    merged: dict[tuple[str, frozenset[tuple[str, str]]], Sample] = {}
    for s in samples:
        key = (s.name, frozenset(s.labels.items()))
        previous = merged.get(key)
        if previous is None:
            merged[key] = s
            continue
        metric = catalog.get(s.name)
        if metric is not None and metric.type in ("counter", "histogram"):
            merged[key] = Sample(s.name, s.labels, previous.value + s.value)
    return list(merged.values())


# ------------------------------------------------------------------------------ the collector


class ExporterCollector:
    """Scrapes one exporter target and yields its canonical samples plus the scrape's ``up``.

    ``source`` is a key of :data:`SOURCES`; ``url`` the full ``/metrics`` URL. ``client`` (an
    ``httpx.Client``) is used as given and not closed; without one the collector makes its own
    (closed by :meth:`close`). ``init_error`` is ``None`` after a good scrape and the reason after
    a failed one.
    """

    def __init__(
        self,
        node: str,
        source: str,
        url: str,
        *,
        extra_labels: Mapping[str, str] = _NO_LABELS,
        client: httpx.Client | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown exporter source {source!r}; known: {sorted(SOURCES)}")
        self.name = f"exporter:{source}"
        self.node = node
        self.source = source
        self.url = url
        self.extra_labels = dict(extra_labels)
        self.timeout_s = timeout_s
        self.init_error: str | None = None
        self._client = client
        self._own_client = client is None
        self._logged: set[str] = set()

    def collect(self) -> list[Sample]:
        """This scrape's samples and ``fleet_agent_scrape_up``; never raises."""
        try:
            families = parse(self._fetch())
            samples = normalize(
                self.source, families, node=self.node, extra_labels=self.extra_labels
            )
        except Exception as err:
            self._failed(err)
            return [self._up(0.0)]
        self.init_error = None
        samples.append(self._up(1.0))
        return samples

    def close(self) -> None:
        """Close the HTTP client if this collector made it."""
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    def _fetch(self) -> str:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s)
        response = self._client.get(self.url, headers={"Accept": ACCEPT}, timeout=self.timeout_s)
        response.raise_for_status()
        return response.text

    def _up(self, value: float) -> Sample:
        labels = {"node": self.node, "source": self.source, "target": self.url}
        return Sample(SCRAPE_UP, labels, value)

    def _failed(self, err: Exception) -> None:
        reason = f"{type(err).__name__}: {err}"
        self.init_error = f"scrape of {self.url} failed: {reason}"
        kind = type(err).__name__
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("%s (logged once per error kind)", self.init_error)
