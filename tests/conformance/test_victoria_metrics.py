"""The scale-out path: the corpus on a real VictoriaMetrics 1.79, asked through
:class:`~fleetscope.store.prometheus_api.PrometheusEngine`, must answer as Prometheus 2.42 does.

VictoriaMetrics speaks MetricsQL, which differs from PromQL on purpose in places. The queries it
answers differently are listed in :data:`EXCLUDED`, grouped by the reason (each reason observed
on this data, see the MetricsQL docs, "MetricsQL vs PromQL"); every other corpus query runs. It
runs with the flags that bring its data model closest to Prometheus' (``conftest.VM_FLAGS``: a
fixed 5 m staleness interval, like Prometheus' lookback delta; no latency offset, no response
cache) and is asked
only about the past: it answers no points after its clock's "now", so instant queries skip the
time after the data and range queries end at the last scrape cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest

from fleetscope.store.prometheus_api import PrometheusEngine

from .conftest import Loaded, wait_for_samples
from .corpus import QUERIES
from .harness import compare, is_ordered, outcome, seconds

_REASONS: dict[str, tuple[str, ...]] = {
    "MetricsQL's rate/irate/increase/delta/idelta/changes/resets/deriv take the last sample "
    "before the window into account and do not extrapolate to the window's edges": (
        "rate(fleet_gpu_energy_joules_total[5m] offset 10m)",
        "rate(fleet_gpu_energy_joules_total[10m] @ $end)",
        "rate(fleet_gpu_energy_joules_total[5m])",
        "rate(fleet_gpu_energy_joules_total[1m])",
        "rate(fleet_gpu_pcie_receive_bytes_total[5m])",
        "rate(fleet_gpu_pcie_receive_bytes_total[90s])",
        "rate(fleet_mesh_rtt_seconds[2m])",
        "irate(fleet_gpu_energy_joules_total[1m])",
        "increase(fleet_inference_requests_total[10m])",
        'increase(fleet_gpu_pcie_receive_bytes_total{node="gpu-node-2"}[15m])',
        "increase(fleet_inference_ttft_seconds_count[1h])",
        "delta(fleet_gpu_temperature_celsius[5m])",
        "delta(fleet_node_load1[2m])",
        "idelta(fleet_gpu_power_watts[1m])",
        "changes(fleet_gpu_up[30m])",
        "changes(fleet_sched_quota_gpus[1h])",
        "changes(fleet_gpu_temperature_celsius[5m])",
        "resets(fleet_gpu_energy_joules_total[30m])",
        "max_over_time(rate(fleet_gpu_energy_joules_total[1m])[10m:1m])",
        "rate(fleet_gpu_energy_joules_total[5m:30s])",
        "topk(3, rate(fleet_gpu_pcie_receive_bytes_total[5m]))",
        "sum by (le) (rate(fleet_inference_ttft_seconds_bucket[5m]))",
        "histogram_quantile(0.9, sum by (le) (rate(fleet_inference_ttft_seconds_bucket[5m])))",
        "histogram_quantile(0.5, sum by (endpoint, le) "
        "(rate(fleet_inference_ttft_seconds_bucket[5m])))",
        "histogram_quantile(0.99, rate(fleet_inference_ttft_seconds_bucket[10m]))",
        "histogram_quantile(0.9, sum by (le, team) "
        "(increase(fleet_inference_ttft_seconds_bucket[15m])))",
        "timestamp(rate(fleet_gpu_energy_joules_total[5m]))",
        "sort_desc(rate(fleet_inference_requests_total[5m]))",
        "changes(fleet_gpu_allocation[10m])",
        "rate(fleet_gpu_energy_joules_total[30s])",
        "rate(fleet_gpu_energy_joules_total[15s])",
        "rate(fleet_gpu_energy_joules_total[1m30s])",
        "rate(fleet_gpu_energy_joules_total[300000ms])",
        'increase(fleet_inference_ttft_seconds_bucket{endpoint="embed-prod"}[5m])',
        "deriv(fleet_gpu_up[2m])",
        "rate(fleet_inference_ttft_seconds_sum[5m]) / rate(fleet_inference_ttft_seconds_count[5m])",
        "sum(rate(fleet_gpu_energy_joules_total[5m])) by (gpu_model)",
        "increase(fleet_gpu_energy_joules_total[2h])",
        "rate(fleet_gpu_energy_joules_total[10s])",
        "rate(fleet_gpu_energy_joules_total[5m] @ start())",
        "rate(fleet_mesh_rtt_seconds[1m] offset -30s)",
        "rate(fleet_sched_jobs[1m])",
        "rate(sum(fleet_gpu_energy_joules_total)[10m:])",
        "rate(fleet_gpu_allocation[5m])",
        "min_over_time(rate(fleet_gpu_energy_joules_total[2m])[30m:45s] @ $mid)",
        "histogram_quantile(0.95, sum by (endpoint, le) "
        "(rate(fleet_inference_ttft_seconds_bucket[30m])))",
        "histogram_quantile(0.9, sum by (le) (rate(fleet_inference_ttft_seconds_bucket[5m])) * -1)",
    ),
    "MetricsQL keeps the metric name for functions that do not change what a value means "
    "(min/max/avg/quantile_over_time, ceil, round, clamp…, predict_linear, holt_winters); "
    "PromQL drops it": (
        "max_over_time(fleet_gpu_temperature_celsius[5m] @ $mid)",
        "avg_over_time(fleet_gpu_utilization_ratio[5m])",
        "avg_over_time(fleet_gpu_temperature_celsius[10m])",
        "min_over_time(fleet_gpu_power_watts[10m])",
        "max_over_time(fleet_gpu_power_watts[10m])",
        "quantile_over_time(0.9, fleet_gpu_power_watts[10m])",
        "quantile_over_time(0, fleet_gpu_utilization_ratio[5m])",
        "quantile_over_time(1.5, fleet_gpu_utilization_ratio[5m])",
        "avg_over_time(fleet_gpu_utilization_ratio[10m:])",
        "min_over_time(fleet_gpu_power_watts[5m:15s] offset 5m)",
        "max_over_time(fleet_gpu_up[20m:1m] @ $mid)",
        "ceil(fleet_gpu_power_watts)",
        "round(fleet_gpu_power_watts)",
        "round(fleet_gpu_power_watts, 5)",
        "round(fleet_gpu_utilization_ratio, 0.1)",
        "clamp(fleet_gpu_power_watts, 100, 400)",
        "clamp_min(fleet_gpu_utilization_ratio, 0.5)",
        "clamp_max(fleet_gpu_utilization_ratio, 0.5)",
        "predict_linear(fleet_gpu_memory_used_bytes[10m], 3600)",
        "predict_linear(fleet_node_load1[5m], 600)",
        "predict_linear(fleet_gpu_energy_joules_total[15m], 3600)",
        "predict_linear(fleet_gpu_up[5m], 60)",
        "holt_winters(fleet_node_load1[10m], 0.5, 0.5)",
        "holt_winters(fleet_node_load1[10m], 0.1, 0.9)",
        "avg_over_time(fleet_gpu_pcie_receive_bytes_total[10m])",
        "max_over_time(avg_over_time(fleet_node_load1[5m:30s])[20m:2m])",
        "holt_winters(fleet_gpu_memory_used_bytes[30m], 0.3, 0.7)",
        "predict_linear(fleet_gpu_energy_joules_total[1h], -3600)",
        "predict_linear(fleet_node_memory_used_bytes[30m], 86400) > fleet_node_memory_total_bytes",
        "quantile_over_time(0.5, fleet_gpu_allocation[10m])",
        "round(fleet_gpu_power_watts, -10)",
        "round(fleet_gpu_utilization_ratio, 0.333)",
        "max_over_time(fleet_gpu_up[5m:7s])",
        "max_over_time(fleet_gpu_up[10m:1m] @ $mid offset 5m)",
    ),
    "VictoriaMetrics drops NaN samples at ingestion; Prometheus stores a reported NaN and "
    "returns it (and NaN propagates through arithmetic and aggregation)": (
        'fleet_gpu_temperature_celsius{gpu_model=~".*H100.*"}',
        "avg(fleet_gpu_temperature_celsius)",
        "bottomk without (gpu, gpu_uuid) (1, fleet_gpu_temperature_celsius)",
        "fleet_gpu_temperature_celsius % 7",
        "fleet_gpu_temperature_celsius ^ 0.5",
        "fleet_gpu_temperature_celsius != bool fleet_gpu_temperature_celsius",
        "fleet_gpu_power_watts / on(node, gpu) fleet_gpu_temperature_celsius",
        "fleet_gpu_power_watts / ignoring(gpu_model) fleet_gpu_temperature_celsius",
        "exp(fleet_gpu_temperature_celsius * 10)",
        "sort(fleet_gpu_temperature_celsius)",
        "quantile_over_time(0.5, fleet_gpu_temperature_celsius[10m])",
        "sum_over_time(fleet_gpu_temperature_celsius[5m])",
        "min_over_time(fleet_gpu_temperature_celsius[5m])",
        "max_over_time(fleet_gpu_temperature_celsius[5m])",
        "stddev(fleet_gpu_temperature_celsius)",
        'count_values("t", fleet_gpu_temperature_celsius)',
        "sort_desc(fleet_gpu_temperature_celsius)",
        "rad(fleet_gpu_temperature_celsius)",
        "clamp_min(fleet_gpu_temperature_celsius, NaN)",
        "day_of_week(fleet_gpu_temperature_celsius)",
        "avg(fleet_gpu_temperature_celsius * 1e300)",
        "sum(fleet_gpu_temperature_celsius * 1e300)",
        "fleet_gpu_temperature_celsius != fleet_gpu_temperature_celsius",
    ),
    "VictoriaMetrics leaves NaN results out of its answers; PromQL returns them": (
        "fleet_gpu_utilization_ratio / 0",
        "ln(fleet_gpu_utilization_ratio - 0.5)",
        "sqrt(fleet_gpu_utilization_ratio - 0.5)",
        "histogram_quantile(0, sum by (le) (rate(fleet_inference_ttft_seconds_bucket[5m])))",
        "acos(fleet_gpu_utilization_ratio * 2)",
        "acosh(fleet_gpu_utilization_ratio + 0.5)",
        "quantile(NaN, fleet_gpu_power_watts)",
        "quantile_over_time(NaN, fleet_gpu_power_watts[5m])",
        "hour(vector(NaN))",
        "fleet_gpu_up * Inf",
        "fleet_gpu_power_watts % 0",
        'count_values("v", fleet_gpu_up / 0)',
        "histogram_quantile(0.5, rate(fleet_inference_ttft_seconds_bucket"
        '{endpoint="mistral-7b-exp"}[5m]))',
    ),
    "VictoriaMetrics' timestamp() and range vectors do not honour staleness markers (a series "
    "that went stale keeps its last timestamp for the lookback; the marker shows as a sample)": (
        "timestamp(fleet_gpu_allocation)",
        "timestamp(fleet_mesh_rtt_seconds)",
        "time() - timestamp(fleet_gpu_up)",
        'timestamp(fleet_gpu_allocation{node="gpu-node-4"})',
        "day_of_week(timestamp(fleet_gpu_up))",
        "fleet_gpu_up[5m]",
        "timestamp(fleet_gpu_up offset 5m)",
        "minute(timestamp(fleet_mesh_rtt_seconds))",
    ),
    "MetricsQL aligns subquery steps and windows differently from PromQL": (
        "sum_over_time(count(fleet_gpu_utilization_ratio < 0.05)[30m:5m])",
        "deriv(sum(fleet_gpu_memory_used_bytes)[15m:1m])",
        "quantile_over_time(0.5, avg(fleet_gpu_power_watts)[30m:2m])",
        "rate(fleet_gpu_energy_joules_total[5m])[10m:1m]",
        "count_over_time(fleet_gpu_allocation[1m:30s])",
        "max_over_time(sum(fleet_gpu_power_watts)[10m:1m] offset 3m)",
        "sum_over_time(fleet_gpu_up[10m:1m] @ end())",
        "sum_over_time(fleet_gpu_up[2m:13s])",
        "timestamp(max_over_time(fleet_gpu_up[5m:1m]))",
        'count_over_time(absent(fleet_gpu_up{node="gpu-node-4"})[1h:1m])',
        "sum_over_time(fleet_gpu_up[1m:5m])",
        "count_over_time(fleet_gpu_up[3m:2m])",
    ),
    "VictoriaMetrics has no scalar or string results: it answers them as a one-series vector "
    "(none for NaN or a string)": (
        "1 + 2 * 3",
        "2 ^ 3 ^ 2",
        "-2 ^ 2",
        "5 % 3",
        "1 / 0",
        "0 / 0",
        "1 < bool 2",
        "time()",
        "scalar(fleet_gpu_up)",
        "scalar(sum(fleet_gpu_power_watts))",
        'scalar(fleet_sched_quota_gpus{team="llm"})',
        "42",
        "-1.5e3",
        "0x1F",
        "Inf",
        "-Inf",
        "NaN",
        '"fleet"',
        "scalar(sum(fleet_gpu_up)) > bool 10",
        "pi()",
        "1e3",
        ".5",
        "0.5e-3",
        "+5",
        "-(-5)",
        "inf",
        "nan",
        "0 ^ 0",
        "(-8) ^ (1/3)",
        "Inf - Inf",
        "NaN == bool NaN",
        "NaN != bool NaN",
    ),
    "MetricsQL accepts queries PromQL refuses (range vectors in range queries, instant vectors "
    "where a range is due, strings where a number is, an all-empty selector, invalid label "
    "names, set operators on scalars, two @ modifiers, by and without together, holt_winters "
    "factors outside (0, 1), an unbalanced regex, a subquery of a scalar) and reports parse "
    "errors as execution errors (HTTP 422), not bad_data": (
        'fleet_gpu_up{node="gpu-node-4"}[3m]',
        'fleet_gpu_allocation{node="gpu-node-3", gpu="0"}[6m]',
        "sum(",
        "rate(fleet_gpu_up)",
        '{node=~".*"}',
        'fleet_gpu_up{node=~"("}',
        "fleet_gpu_up fleet_gpu_up",
        'histogram_quantile("a", fleet_gpu_up)',
        'topk("a", fleet_gpu_up)',
        'count_values("bad label", fleet_gpu_up)',
        '1 + "a"',
        "fleet_gpu_up offset 5m offset 5m",
        "fleet_gpu_up[5m:1m:1m]",
        'label_replace(fleet_gpu_up, "bad-name", "x", "node", ".*")',
        "1 and 1",
        "fleet_gpu_up @ $mid @ $end",
        "sum without(node) by(gpu) (fleet_gpu_up)",
        "fleet_gpu_up[1x]",
        'label_join(fleet_gpu_up, "x", ",", "not-a-label")',
        "holt_winters(fleet_node_load1[10m], 1.5, 0.5)",
        'fleet_gpu_up{node=~"gpu-node-(1|2"}',
        "sum_over_time(time()[10m:1m])",
    ),
    "MetricsQL functions that differ in detail: atan2 drops the metric name (PromQL keeps it), "
    "round() rounds halves away from zero (PromQL: up), clamp() with min > max returns its "
    "input (PromQL: nothing), label_replace() with a regex that does not match drops the "
    "metric name, histogram_quantile() without a +Inf bucket still answers (PromQL: NaN), a "
    "group_left whose one side has duplicates does not fail, range-query bottomk leaves "
    "some series out at some steps, sgn() and `or on()` return points while a series is stale, "
    "absent() of a selector with two matchers on one label answers nothing, VictoriaMetrics "
    "1.79 has no day_of_year(), count_values() writes -0 as 0, a regex with \\b misses series "
    "in range queries, absent_over_time() with an offset is stamped at t + offset, a bool "
    "comparison with group_left answers for left series without a match, its avg_over_time() "
    "overflows to +Inf where Prometheus' incremental mean does not, and its topk() breaks ties "
    "another way": (
        "fleet_gpu_power_watts atan2 fleet_gpu_temperature_celsius",
        "round(-fleet_gpu_temperature_celsius / 2)",
        "clamp(fleet_gpu_power_watts, 400, 100)",
        'label_replace(fleet_gpu_up, "x", "y", "node", "no-match")',
        'histogram_quantile(0.5, sum by (le) (rate(fleet_inference_ttft_seconds_bucket{le!="+Inf"}'
        "[5m])))",
        "fleet_gpu_utilization_ratio * on(gpu_uuid) group_left(team) fleet_gpu_allocation",
        "bottomk(2, fleet_node_load1)",
        "sgn(fleet_gpu_utilization_ratio - 0.5)",
        "fleet_gpu_up or on() vector(0)",
        'absent(fleet_gpu_xid_errors_total{xid="13", xid="14"})',
        "day_of_year()",
        'count_values("v", -fleet_gpu_up * 0)',
        r'fleet_gpu_up{node=~"gpu-node-1\\b"}',
        "absent_over_time(fleet_gpu_up[1m] offset 2h)",
        'fleet_gpu_up > bool on(gpu_uuid) group_left fleet_gpu_allocation{node!="gpu-node-3"}',
        "avg_over_time((fleet_gpu_power_watts * 1e306)[5m:])",
        "topk(3, fleet_gpu_utilization_ratio)",
    ),
}

EXCLUDED: dict[str, str] = {q: reason for reason, qs in _REASONS.items() for q in qs}
VM_QUERIES = [q for q in QUERIES if q not in EXCLUDED]
MODES = ("instant", "range")


@pytest.fixture(scope="module")
def vm(victoria: str, loaded: Loaded) -> Iterator[PrometheusEngine]:
    """VictoriaMetrics through Fleetscope's scale-out adapter, once it holds every sample."""
    engine = PrometheusEngine(victoria)
    wait_for_samples(engine, loaded.data, "VictoriaMetrics", nan=False)
    yield engine
    engine.close()


@pytest.mark.parametrize(
    ("mode", "query"), [pytest.param(m, q, id=f"{m}:{q}") for q in VM_QUERIES for m in MODES]
)
def test_matches_prometheus(loaded: Loaded, vm: PrometheusEngine, mode: str, query: str) -> None:
    q = loaded.window.render(query)
    ref = loaded.prometheus
    diffs: list[str] = []
    if mode == "instant":
        for t in loaded.window.instant_ms[:3]:  # not after the data: in VM's future
            found = compare(
                outcome(partial(ref.instant, q, t)),
                outcome(partial(vm.instant, q, t)),
                ordered=is_ordered(query),
            )
            diffs += [f"instant at {seconds(t)}: {d}" for d in found]
    else:
        start, _, step = loaded.window.ranges_ms[0]  # VictoriaMetrics aligns steps to the minute
        end = loaded.window.end_ms
        found = compare(
            outcome(partial(ref.range, q, start, end, step)),
            outcome(partial(vm.range, q, start, end, step)),
        )
        diffs += [f"range: {d}" for d in found]
    assert not diffs, f"VictoriaMetrics differs from Prometheus on {query!r}:\n" + "\n".join(diffs)


def test_exclusions_are_in_the_corpus() -> None:
    unknown = sorted(q for q in EXCLUDED if q not in QUERIES)
    assert not unknown, f"EXCLUDED queries not in the corpus: {unknown}"
    assert len(VM_QUERIES) >= 150, "the VictoriaMetrics subset shrank: check EXCLUDED"
