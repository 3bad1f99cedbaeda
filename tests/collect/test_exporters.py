"""Exporter normalization from captured exposition texts and scrapes of a local HTTP server."""

from __future__ import annotations

import http.server
import socket
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetscope import catalog
from fleetscope.collect import Sample
from fleetscope.collect.exporters import ExporterCollector, normalize, parse

DATA = Path(__file__).resolve().parents[1] / "data" / "collect" / "exporters"
NODE = "gpu-node-07"
MIB = 1048576

Key = tuple[str, frozenset[tuple[str, str]]]


def key(name: str, **labels: str) -> Key:
    return (name, frozenset({"node": NODE, **labels}.items()))


def series(samples: Iterable[Sample]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for s in samples:
        k = (s.name, frozenset(s.labels.items()))
        assert k not in out, f"duplicate series {k}"
        out[k] = s.value
    return out


def hist(
    name: str, labels: Mapping[str, str], buckets: Mapping[str, float], count: float, total: float
) -> dict[Key, float]:
    out = {key(f"{name}_bucket", **labels, le=le): v for le, v in buckets.items()}
    out[key(f"{name}_count", **labels)] = count
    out[key(f"{name}_sum", **labels)] = total
    return out


def run(source: str, fixture: str, **extra: str) -> dict[Key, float]:
    families = parse((DATA / fixture).read_text())
    return series(normalize(source, families, node=NODE, extra_labels=extra))


# ------------------------------------------------------------------------------ dcgm-exporter

H100 = "NVIDIA H100 80GB HBM3"
G0 = {
    "gpu": "0",
    "gpu_uuid": "GPU-5fd4a9c2-6a4b-4c0e-9a51-1d2f3e4a5b6c",
    "gpu_model": H100,
    "pci_bus_id": "00000000:18:00.0",
    "container": "trainer",
    "namespace": "team-nlp",
    "pod": "llama-ft-0",
}
G1 = {
    "gpu": "1",
    "gpu_uuid": "GPU-0b8e7d31-92c4-4f7a-b1e6-7c3d2a9f8e10",
    "gpu_model": H100,
    "pci_bus_id": "00000000:2A:00.0",
}


def test_dcgm_exporter_default_counters() -> None:
    expected = {
        key("fleet_gpu_sm_clock_hertz", **G0): 1.98e9,
        key("fleet_gpu_sm_clock_hertz", **G1): 345e6,
        key("fleet_gpu_temperature_celsius", **G0): 67,
        key("fleet_gpu_power_watts", **G0): 612.345,
        key("fleet_gpu_power_watts", **G1): 71.2,
        key("fleet_gpu_energy_joules_total", **G0): 123_456_789.012,
        # GPU_UTIL wins over GR_ENGINE_ACTIVE (0.913452 / 0.0 in the fixture)
        key("fleet_gpu_utilization_ratio", **G0): 0.97,
        key("fleet_gpu_utilization_ratio", **G1): 0.0,
        key("fleet_gpu_memory_used_bytes", **G0): 72310 * MIB,
        key("fleet_gpu_memory_used_bytes", **G1): 0.0,
        # used + free + reserved = 81559 MiB, the H100's frame buffer
        key("fleet_gpu_memory_total_bytes", **G0): 81559 * MIB,
        key("fleet_gpu_memory_total_bytes", **G1): 81559 * MIB,
        key("fleet_gpu_ecc_errors_total", **G0, type="corrected"): 3,
        key("fleet_gpu_ecc_errors_total", **G0, type="uncorrected"): 0,
        key("fleet_gpu_ecc_errors_total", **G1, type="corrected"): 0,
        key("fleet_gpu_remapped_rows_total", **G0, type="correctable"): 1,
        key("fleet_gpu_remapped_rows_total", **G0, type="uncorrectable"): 0,
        key("fleet_gpu_remapped_rows_total", **G1, type="correctable"): 0,
        key("fleet_gpu_remapped_rows_total", **G1, type="uncorrectable"): 0,
        key("fleet_gpu_sm_active_ratio", **G0): 0.7812,
        key("fleet_gpu_tensor_active_ratio", **G0): 0.4105,
        key("fleet_gpu_tensor_active_ratio", **G1): 0.0,
        key("fleet_gpu_dram_active_ratio", **G0): 0.622,
        key("fleet_gpu_dram_active_ratio", **G1): 0.0,
    }
    assert run("dcgm", "dcgm.txt") == pytest.approx(expected)


def test_dcgm_fixture_has_both_label_spacings() -> None:
    text = (DATA / "dcgm.txt").read_text()
    assert '{gpu="0",UUID="' in text and '{gpu="1", UUID="' in text
    gpus = {dict(k[1])["gpu"] for k in run("dcgm", "dcgm.txt")}
    assert gpus == {"0", "1"}


def test_dcgm_blanks_of_the_fixture_are_dropped() -> None:
    got = run("dcgm", "dcgm.txt")
    # GPU 1: GPU_TEMP = INT64 not-supported, energy = INT64 blank, ECC DBE = INT32 blank,
    # SM_ACTIVE = FP64 blank (2**47)
    for name, extra in [
        ("fleet_gpu_temperature_celsius", {}),
        ("fleet_gpu_energy_joules_total", {}),
        ("fleet_gpu_ecc_errors_total", {"type": "uncorrected"}),
        ("fleet_gpu_sm_active_ratio", {}),
    ]:
        assert key(name, **G1, **extra) not in got
    assert max(got.values()) < 2**40


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param('DCGM_FI_DEV_GPU_TEMP{gpu="0"} 9223372036854775792', None, id="int64-blank"),
        pytest.param(
            'DCGM_FI_DEV_GPU_TEMP{gpu="0"} 9223372036854775795', None, id="int64-not-permissioned"
        ),
        pytest.param('DCGM_FI_DEV_GPU_TEMP{gpu="0"} 9.223372036854775e+18', None, id="int64-float"),
        pytest.param('DCGM_FI_DEV_SM_CLOCK{gpu="0"} 2147483633', None, id="int32-not-found"),
        pytest.param('DCGM_FI_DEV_POWER_USAGE{gpu="0"} 140737488355328', None, id="fp64-blank"),
        pytest.param('DCGM_FI_DEV_POWER_USAGE{gpu="0"} NaN', None, id="nan"),
        pytest.param(
            'DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{gpu="0"} 2147483634', None, id="int32-in-counter"
        ),
        pytest.param(
            'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 9223372036854775793',
            None,
            id="counter-int64-blank",
        ),
        pytest.param(
            'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 2147483700',
            2147483.7,
            id="counter-above-2^31-is-real",
        ),
        pytest.param('DCGM_FI_DEV_GPU_TEMP{gpu="0"} 81', 81.0, id="real-gauge"),
    ],
)
def test_dcgm_sentinels(line: str, expected: float | None) -> None:
    samples = normalize("dcgm", parse(line + "\n"), node=NODE)
    values = [s.value for s in samples]
    assert values == ([] if expected is None else [pytest.approx(expected)])


@pytest.mark.parametrize("gr_engine_first", [True, False], ids=["gr-first", "util-first"])
def test_gpu_util_wins_over_gr_engine_in_any_order(gr_engine_first: bool) -> None:
    lines = ['DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0"} 0.5', 'DCGM_FI_DEV_GPU_UTIL{gpu="0"} 90']
    text = "\n".join(lines if gr_engine_first else lines[::-1]) + "\n"
    got = series(normalize("dcgm", parse(text), node=NODE))
    assert got == {key("fleet_gpu_utilization_ratio", gpu="0"): 0.9}


def test_dcgm_dcp_counters_fb_total_and_mig_utilization() -> None:
    a100 = {
        "gpu": "0",
        "gpu_uuid": "GPU-3e2d1c0b-a987-4654-b321-0fedcba98765",
        "gpu_model": "NVIDIA A100-SXM4-40GB",
        "pci_bus_id": "00000000:07:00.0",
    }
    mig = {**a100, "mig_instance": "1", "mig_profile": "3g.20gb"}
    expected = {
        # FB_TOTAL (40960 MiB) wins over used + free (39024 MiB)
        key("fleet_gpu_memory_total_bytes", **a100): 40960 * MIB,
        key("fleet_gpu_memory_used_bytes", **a100): 1024 * MIB,
        # no GPU_UTIL in this counters file: GR_ENGINE_ACTIVE fills in, per GPU and per MIG
        # instance; NVLink rates are not counters and are not mapped
        key("fleet_gpu_utilization_ratio", **a100): 0.4521,
        key("fleet_gpu_utilization_ratio", **mig): 0.88,
        key("fleet_gpu_sm_active_ratio", **mig): 0.701,
    }
    assert run("dcgm", "dcgm_dcp.txt") == pytest.approx(expected)


def test_dcgm_exporter_1x_names() -> None:
    v100 = {"gpu": "0", "gpu_uuid": "GPU-8c1f4e2a-77d0-4b59-a0c3-5e6f7a8b9c0d"}
    expected = {
        key("fleet_gpu_sm_clock_hertz", **v100): 1.38e9,
        key("fleet_gpu_temperature_celsius", **v100): 54,
        key("fleet_gpu_power_watts", **v100): 251.87,
        key("fleet_gpu_energy_joules_total", **v100): 9_876_543.21,
        key("fleet_gpu_utilization_ratio", **v100): 0.64,
        key("fleet_gpu_memory_used_bytes", **v100): 15001 * MIB,
        key("fleet_gpu_memory_total_bytes", **v100): 16160 * MIB,  # used + free, no reserved
        key("fleet_gpu_ecc_errors_total", **v100, type="corrected"): 12,
        key("fleet_gpu_ecc_errors_total", **v100, type="uncorrected"): 0,
    }
    assert run("dcgm", "dcgm_legacy.txt") == pytest.approx(expected)


def test_fb_total_is_not_derived_when_a_part_is_blank() -> None:
    text = (
        'DCGM_FI_DEV_FB_USED{gpu="0"} 100\n'
        'DCGM_FI_DEV_FB_FREE{gpu="0"} 900\n'
        'DCGM_FI_DEV_FB_RESERVED{gpu="0"} 9223372036854775794\n'
    )
    got = series(normalize("dcgm", parse(text), node=NODE))
    assert got == {key("fleet_gpu_memory_used_bytes", gpu="0"): 100 * MIB}


# ------------------------------------------------------------------------------ node_exporter


def test_node_exporter() -> None:
    nvme, ib = {"device": "nvme0n1"}, {"device": "mlx5_0", "port": "1"}
    eth = {"interface": "eth0"}
    expected = {
        key("fleet_disk_read_bytes_total", **nvme): 12_345_678_848,
        key("fleet_disk_read_bytes_total", device="nvme1n1"): 4_194_304,
        key("fleet_disk_written_bytes_total", **nvme): 88_072_994_816,
        key("fleet_disk_reads_completed_total", **nvme): 2_931_551,
        key("fleet_disk_writes_completed_total", **nvme): 10_277_000,
        key("fleet_disk_read_time_seconds_total", **nvme): 812.552,
        key("fleet_disk_write_time_seconds_total", **nvme): 4410.017,
        key("fleet_disk_io_time_seconds_total", **nvme): 5231.884,
        key("fleet_filesystem_size_bytes", mount="/"): 469_025_542_144,
        key("fleet_filesystem_avail_bytes", mount="/"): 317_055_467_520,
        key("fleet_filesystem_size_bytes", mount="/mnt/datasets"): 54_975_581_388_800,
        key("fleet_filesystem_avail_bytes", mount="/mnt/datasets"): 12_094_627_905_536,
        key("fleet_network_receive_bytes_total", **eth): 981_234_567_000,
        key("fleet_network_transmit_bytes_total", **eth): 456_789_012_340,
        key("fleet_network_receive_drop_total", **eth): 120,
        key("fleet_network_transmit_drop_total", **eth): 0,
        key("fleet_network_receive_errs_total", **eth): 0,
        key("fleet_network_transmit_errs_total", **eth): 3,
        key("fleet_network_speed_bytes", **eth): 3.125e9,
        key("fleet_infiniband_port_receive_bytes_total", **ib): 7_389_040_691_200,
        key("fleet_infiniband_port_transmit_bytes_total", **ib): 7_012_311_859_200,
        key("fleet_infiniband_link_downed_total", **ib): 2,
        key("fleet_infiniband_port_receive_errors_total", **ib): 5,
        key("fleet_infiniband_symbol_errors_total", **ib): 17,
        key("fleet_infiniband_port_rate_bytes", **ib): 5e10,
    }
    assert run("node", "node.txt") == pytest.approx(expected)


def test_same_mountpoint_twice_keeps_the_first_gauge() -> None:
    text = (
        "# TYPE node_filesystem_size_bytes gauge\n"
        'node_filesystem_size_bytes{device="/dev/sda1",fstype="ext4",mountpoint="/data"} 100\n'
        'node_filesystem_size_bytes{device="/dev/sdb1",fstype="xfs",mountpoint="/data"} 200\n'
    )
    got = series(normalize("node", parse(text), node=NODE))
    assert got == {key("fleet_filesystem_size_bytes", mount="/data"): 100}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "# TYPE node_disk_read_bytes_total counter\n"
            'node_disk_read_bytes_total{device="sda"} 42\n',
            id="typed-counter",
        ),
        pytest.param('node_disk_read_bytes_total{device="sda"} 42\n', id="untyped-with-total"),
        pytest.param(
            '# TYPE node_disk_read_bytes counter\nnode_disk_read_bytes{device="sda"} 42\n',
            id="typed-counter-without-total",
        ),
    ],
)
def test_counters_match_with_or_without_total(text: str) -> None:
    got = series(normalize("node", parse(text), node=NODE))
    assert got == {key("fleet_disk_read_bytes_total", device="sda"): 42}


# ------------------------------------------------------------------------------ inference servers

LLAMA = {"model": "meta-llama/Llama-3.1-8B-Instruct", "engine": "0"}


def test_vllm_prefers_current_names() -> None:
    m = LLAMA
    expected = {
        key("fleet_inference_requests_running", **m): 12,
        key("fleet_inference_requests_waiting", **m): 3,
        key("fleet_inference_kv_cache_usage_ratio", **m): 0.42,  # not gpu_cache_usage_perc's 0.4
        key("fleet_inference_prompt_tokens_total", **m): 8_128_902,
        key("fleet_inference_generated_tokens_total", **m): 7_557_572,
        key("fleet_inference_requests_total", **m, outcome="stop"): 10234,
        key("fleet_inference_requests_total", **m, outcome="length"): 871,
        key("fleet_inference_requests_total", **m, outcome="abort"): 19,
        **hist(
            "fleet_inference_ttft_seconds",
            m,
            {"0.04": 3210, "0.1": 9120, "0.25": 10890, "1.0": 11110, "+Inf": 11124},
            11124,
            1334.88,
        ),
        # inter_token_latency_seconds, not the deprecated time_per_output_token_seconds
        **hist(
            "fleet_inference_inter_token_latency_seconds",
            m,
            {"0.01": 5_120_000, "0.025": 7_400_000, "0.05": 7_540_000, "+Inf": 7_546_448},
            7_546_448,
            113196.7,
        ),
        **hist(
            "fleet_inference_request_latency_seconds",
            m,
            {"1.0": 2100, "5.0": 8800, "20.0": 11050, "+Inf": 11124},
            11124,
            52311.4,
        ),
    }
    assert run("vllm", "vllm.txt") == pytest.approx(expected)


def test_vllm_v0_falls_back_to_the_old_names() -> None:
    m = {"model": "mistralai/Mistral-7B-Instruct-v0.3"}
    expected = {
        key("fleet_inference_requests_running", **m): 4,
        key("fleet_inference_requests_waiting", **m): 0,
        key("fleet_inference_kv_cache_usage_ratio", **m): 0.137,
        **hist(
            "fleet_inference_inter_token_latency_seconds",
            m,
            {"0.01": 700, "0.025": 950, "+Inf": 1000},
            1000,
            14.2,
        ),
    }
    assert run("vllm", "vllm_v0.txt") == pytest.approx(expected)


def test_tgi() -> None:
    m = {"model": "bigcode/starcoder2-15b", "endpoint": "code-assist"}
    expected = {
        key("fleet_inference_requests_total", **m, outcome="success"): 1203,
        key("fleet_inference_requests_total", **m, outcome="validation"): 40,
        key("fleet_inference_requests_total", **m, outcome="overloaded"): 7,
        key("fleet_inference_requests_waiting", **m): 4,
        key("fleet_inference_requests_running", **m): 16,
        key("fleet_inference_queue_seconds_total", **m): 41.75,
        key("fleet_inference_prompt_tokens_total", **m): 612_345,
        key("fleet_inference_generated_tokens_total", **m): 298_765,
        **hist(
            "fleet_inference_request_latency_seconds",
            m,
            {"0.5": 15, "1.0": 220, "5.0": 1101, "+Inf": 1203},
            1203,
            2871.25,
        ),
    }
    assert run("tgi", "tgi.txt", **m) == pytest.approx(expected)


def test_triton() -> None:
    ens = {"model": "ensemble", "model_version": "1"}
    trt = {"model": "tensorrt_llm", "model_version": "1"}
    expected = {
        key("fleet_inference_requests_total", **ens, outcome="success"): 4210,
        key("fleet_inference_requests_total", **trt, outcome="success"): 4210,
        **{
            key("fleet_inference_requests_total", **labels, outcome=reason): count
            for labels, counts in ((ens, (3, 0, 1, 0)), (trt, (0, 0, 1, 0)))
            for reason, count in zip(
                ("rejected", "canceled", "backend", "other"), counts, strict=True
            )
        },
        key("fleet_inference_requests_waiting", **ens): 0,
        key("fleet_inference_requests_waiting", **trt): 2,
        key("fleet_inference_request_seconds_total", **ens): 9876.54321,
        key("fleet_inference_request_seconds_total", **trt): 9712.345678,
        key("fleet_inference_queue_seconds_total", **ens): 0.00152,
        key("fleet_inference_queue_seconds_total", **trt): 45.123456,
        # milliseconds → seconds, bucket bounds included; counts unchanged
        **hist(
            "fleet_inference_ttft_seconds",
            trt,
            {"0.1": 1904, "0.5": 4020, "2.0": 4201, "+Inf": 4210},
            4210,
            842.0,
        ),
    }
    assert run("triton", "triton.txt") == pytest.approx(expected)


def test_sglang() -> None:
    m = {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "engine_type": "unified",
        "tp_rank": "0",
        "pp_rank": "0",
    }
    expected = {
        key("fleet_inference_prompt_tokens_total", **m): 8_128_902,
        key("fleet_inference_generated_tokens_total", **m): 7_557_572,
        key("fleet_inference_kv_cache_usage_ratio", **m): 0.28,
        key("fleet_inference_requests_running", **m): 38,
        key("fleet_inference_requests_waiting", **m): 5,
        **hist(
            "fleet_inference_ttft_seconds",
            m,
            {"0.1": 210, "0.5": 1702, "2.0": 2270, "+Inf": 2290},
            2290,
            961.2,
        ),
        # inter_token_latency_seconds wins over time_per_output_token_seconds (count 3)
        **hist(
            "fleet_inference_inter_token_latency_seconds",
            m,
            {"0.01": 180_000, "0.05": 420_000, "+Inf": 431_500},
            431_500,
            8630.5,
        ),
        **hist(
            "fleet_inference_request_latency_seconds",
            m,
            {"1.0": 120, "10.0": 2100, "+Inf": 2290},
            2290,
            9312.6,
        ),
    }
    assert run("sglang", "sglang.txt") == pytest.approx(expected)


def test_colliding_counters_are_summed() -> None:
    text = (
        "# TYPE sglang:prompt_tokens_total counter\n"
        'sglang:prompt_tokens_total{model_name="m",priority="high"} 10\n'
        'sglang:prompt_tokens_total{model_name="m",priority="low"} 32\n'
    )
    got = series(normalize("sglang", parse(text), node=NODE))
    assert got == {key("fleet_inference_prompt_tokens_total", model="m"): 42}


# ------------------------------------------------------------------------------ all sources

FIXTURES = [
    ("dcgm", "dcgm.txt"),
    ("dcgm", "dcgm_dcp.txt"),
    ("dcgm", "dcgm_legacy.txt"),
    ("node", "node.txt"),
    ("vllm", "vllm.txt"),
    ("vllm", "vllm_v0.txt"),
    ("tgi", "tgi.txt"),
    ("triton", "triton.txt"),
    ("sglang", "sglang.txt"),
]


@pytest.mark.parametrize(("source", "fixture"), FIXTURES, ids=[f for _, f in FIXTURES])
def test_every_sample_is_a_catalog_metric(source: str, fixture: str) -> None:
    extra = {"endpoint": "chat", "team": "nlp", "tier": "production"}
    samples = normalize(source, parse((DATA / fixture).read_text()), node=NODE, extra_labels=extra)
    assert samples
    for s in samples:
        metric = catalog.get(s.name)
        assert metric is not None, s.name
        assert s.labels["node"] == NODE
        assert {k: s.labels[k] for k in extra} == extra


def test_config_labels_win_and_node_is_the_agents() -> None:
    families = parse((DATA / "vllm.txt").read_text() + (DATA / "dcgm.txt").read_text())
    extra = {"model": "llama-8b", "endpoint": "chat"}
    inference = normalize("vllm", families, node=NODE, extra_labels=extra)
    assert {s.labels["model"] for s in inference} == {"llama-8b"}
    gpu = normalize("dcgm", parse((DATA / "dcgm.txt").read_text()), node=NODE)
    assert {s.labels["node"] for s in gpu} == {NODE}  # not Hostname="dcgm-exporter-7xk2p"
    assert not {"Hostname", "device", "DCGM_FI_DRIVER_VERSION"} & {k for s in gpu for k in s.labels}


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown exporter source"):
        normalize("ganglia", [], node=NODE)
    with pytest.raises(ValueError, match="unknown exporter source"):
        ExporterCollector(NODE, "ganglia", "http://127.0.0.1:1/metrics")


# ------------------------------------------------------------------------------ the collector


class _Exporter(http.server.BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def exporter(serve_handler: Any) -> Iterator[tuple[str, type[_Exporter]]]:
    """A real HTTP server on a free loopback port; the test sets ``body`` and ``status``."""
    handler = type("Handler", (_Exporter,), {})
    with serve_handler(handler) as base:
        yield f"{base}/metrics", handler


def up(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if s.name == "fleet_agent_scrape_up"]


def test_scrape_of_a_live_exporter(exporter: tuple[str, type[_Exporter]]) -> None:
    url, handler = exporter
    text = (DATA / "vllm.txt").read_text()
    handler.body = text.encode()
    extra = {"endpoint": "chat", "team": "nlp"}
    collector = ExporterCollector(NODE, "vllm", url, extra_labels=extra)
    try:
        samples = list(collector.collect())
    finally:
        collector.close()
    assert collector.name == "exporter:vllm"
    assert collector.init_error is None
    assert up(samples) == [
        Sample("fleet_agent_scrape_up", {"node": NODE, "source": "vllm", "target": url}, 1.0)
    ]
    rest = [s for s in samples if s.name != "fleet_agent_scrape_up"]
    assert series(rest) == series(normalize("vllm", parse(text), node=NODE, extra_labels=extra))
    assert len(rest) == 27


def test_scrape_with_a_given_client(exporter: tuple[str, type[_Exporter]]) -> None:
    url, handler = exporter
    handler.body = (DATA / "node.txt").read_bytes()
    with httpx.Client() as client:
        collector = ExporterCollector(NODE, "node", url, client=client)
        samples = collector.collect()
        collector.close()  # not ours: the client stays open
        assert not client.is_closed
    assert up(samples)[0].value == 1.0
    assert series(samples)[key("fleet_network_speed_bytes", interface="eth0")] == 3.125e9


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_target_yields_only_scrape_up_0() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/metrics"
    collector = ExporterCollector(NODE, "dcgm", url, timeout_s=2.0)
    samples = collector.collect()
    collector.close()
    assert samples == [
        Sample("fleet_agent_scrape_up", {"node": NODE, "source": "dcgm", "target": url}, 0.0)
    ]
    assert collector.init_error is not None and url in collector.init_error


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(500, b"internal error", id="http-500"),
        pytest.param(200, b'node_disk_read_bytes_total{device="sda" 1\n', id="unparsable"),
    ],
)
def test_bad_answers_yield_only_scrape_up_0(
    exporter: tuple[str, type[_Exporter]], status: int, body: bytes
) -> None:
    url, handler = exporter
    collector = ExporterCollector(NODE, "node", url)
    handler.body = (DATA / "node.txt").read_bytes()
    assert up(collector.collect())[0].value == 1.0
    handler.status, handler.body = status, body
    samples = collector.collect()
    assert [s.value for s in samples] == [0.0] and samples[0].name == "fleet_agent_scrape_up"
    assert collector.init_error is not None
    handler.status, handler.body = 200, (DATA / "node.txt").read_bytes()
    assert up(collector.collect())[0].value == 1.0 and collector.init_error is None
    collector.close()
