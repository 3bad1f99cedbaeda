"""Query benchmark: Fleetscope's embedded store vs Prometheus 2.42 and VictoriaMetrics 1.79.

Loads the same simulated fleet (``--gpus`` GPUs × ``--days`` days at the simulator's 15 s tick,
plus a synthetic classic histogram ``fleet_inference_ttft_seconds`` of ``--endpoints`` endpoints
× 12 buckets) into

- Fleetscope's embedded store (``DuckDBStore``, in process),
- a real Prometheus 2.42 and a real VictoriaMetrics 1.79, each started by this script on a
  free loopback port with its data under ``--workdir``,

checks that the three hold the same number of samples for a few metrics, then times the
overview page's queries and three analytics-shaped queries on all three (warm: one unmeasured
run, then ``--repeat`` runs, interleaved across systems so that noise from other processes hits
all of them alike) and prints medians, ranges and the ratios Fleetscope / Prometheus and
Fleetscope / VictoriaMetrics. Fleetscope is timed twice: in process through
``query.engine.Evaluator`` and over HTTP through ``fleetscope server`` on the same DuckDB file
(after the in-process store is closed: a DuckDB file has one writer process). The whole
overview page (``web.view.build`` for a 7 d window, its own 4 query threads) is timed on every
backend too. Last, bytes per sample on disk: overall and, with ``--gauge-bytes``, for three GPU
gauges each loaded alone into fresh instances. Fleetscope is loaded compacting as it goes (as
the server's housekeeping thread does live: 2 h runs, merged per day and per week; the layout
is printed; each moved block also writes its five-minute cells, store/cells.py), and its size is
given twice: the file, and the blocks in use (the file keeps the blocks compaction freed, for
later writes; cells included). The store is compacted once when opened, as the server does
(data loaded by an older version gets its cells then; timed and printed). Use ``--days 9`` or
more for a closed week.

Range queries end at a multiple of their step, as the overview page and Grafana send them (both
align ``end``); instant queries run at the last tick.

Loading. Prometheus takes remote-written samples only at or after its head's newest time minus
half a block range (1 h), so history is written in time order: each simulator block is sorted
by time and sent in requests of ``--request-samples``; the head then moves forward with the data
and Prometheus cuts and compacts blocks behind it as it would live. This keeps the simulator's
staleness markers (a stale NaN has a bit pattern that OpenMetrics text, hence ``promtool tsdb
create-blocks-from openmetrics``, cannot carry; a plain NaN there would keep ended allocations
alive for 5 minutes and break ``group_left`` joins). VictoriaMetrics gets the same requests;
then ``/internal/force_flush`` and a wait for its merges. Prometheus is waited on until its
block set stops changing (compaction). Both keep their data for reruns: a second run with the
same size reuses ``--workdir`` (``--reload`` starts over; ``--clean`` deletes it at the end).

    .venv/bin/python bench/query.py --gpus 256 --days 7
    .venv/bin/python bench/query.py --gpus 32 --days 2 --repeat 3     # a quick look

Not run in CI. Needs ``prometheus`` and ``victoria-metrics`` on PATH (Debian packages).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import numpy.typing as npt

from common import free_port
from fleetscope.analyze import overview as ov
from fleetscope.query import Engine, QueryError, QueryResult
from fleetscope.query.engine import Evaluator
from fleetscope.remotewrite import HEADERS, encode
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.sim import Simulation
from fleetscope.store import FakeRecordStore, Matcher, SampleBatch, SelectHints
from fleetscope.store.duckdb import DuckDBStore, Runs
from fleetscope.store.prometheus_api import PrometheusEngine

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
TICK_MS = 15_000
START_MS = 1_700_006_400_000 // DAY_MS * DAY_MS  # a fixed day (2023-11-15), so reruns agree
HIST = "fleet_inference_ttft_seconds"
LE = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, math.inf)
GPU_GAUGES = (
    "fleet_gpu_utilization_ratio",
    "fleet_gpu_power_watts",
    "fleet_gpu_temperature_celsius",
)
CHECKED = ("fleet_gpu_utilization_ratio", "fleet_gpu_allocation", "fleet_gpu_up", f"{HIST}_bucket")
SYSTEMS = ("fleetscope", "prometheus", "vm")
PROMETHEUS_FLAGS = (
    "--storage.tsdb.retention.time=100y",  # time retention counts from the newest block
    "--query.timeout=10m",
    "--query.max-samples=1000000000",
    "--log.level=warn",
)
# As in tests/conformance: Prometheus' 5 m lookback, no cache of range results (Fleetscope and
# Prometheus have none), and long enough limits for week-long queries.
VM_FLAGS = (
    "-retentionPeriod=100y",  # the data is from 2023: the default (1 month) would drop it
    "-search.latencyOffset=0s",
    "-search.disableCache",
    "-search.minStalenessInterval=5m",
    "-search.maxStalenessInterval=5m",
    "-search.maxQueryDuration=10m",
    "-loggerLevel=WARN",
)
FLEETSCOPE_CONFIG = '[metrics]\nretention = "100y"\n'  # the server's retention counts from now
SETTLE_TIMEOUT_S = 900.0
I64 = npt.NDArray[np.int64]


# ---------------------------------------------------------------------------- the data


class Histogram:
    """A synthetic classic histogram: per endpoint, 12 ``_bucket`` counters, ``_sum``, ``_count``.

    Each endpoint serves a Poisson number of requests per tick (0.5–20 req/s, ±50 % over the
    day) whose TTFTs are log-normal (median 80–800 ms); the counters are cumulative from the
    first tick. Values depend only on the seed and the tick, so reruns give the same samples.
    """

    def __init__(self, endpoints: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.rate = rng.uniform(0.5, 20.0, endpoints)  # requests per second
        self.mu = np.log(rng.uniform(0.08, 0.8, endpoints))  # log of the median TTFT (s)
        self.sigma = rng.uniform(0.4, 0.9, endpoints)
        edges = np.log(np.array(LE[:-1]))
        cdf = np.array(
            [[0.5 * (1 + math.erf((e - m) / (s * math.sqrt(2)))) for e in edges]
             for m, s in zip(self.mu, self.sigma, strict=True)]
        )  # fmt: skip
        self.p = np.diff(np.concatenate([np.zeros((endpoints, 1)), cdf, np.ones((endpoints, 1))],
                                        axis=1), axis=1)  # fmt: skip
        self.counts = np.zeros((endpoints, len(LE)), np.int64)  # per bucket (not cumulative in le)
        self.total_s = np.zeros(endpoints)
        models = ("llama-3.1-70b", "llama-3.1-8b", "mixtral-8x7b", "qwen2.5-32b")
        teams = ("llm-research", "applied-ml", "platform", "search")
        self.series: list[dict[str, str]] = []
        for e in range(endpoints):
            base = {"endpoint": f"llm-{e:02d}", "model": models[e % len(models)],
                    "team": teams[e % len(teams)],
                    "tier": "production" if e % 3 else "experimentation"}  # fmt: skip
            for le in LE:
                self.series.append({"__name__": f"{HIST}_bucket", **base, "le": _le(le)})
            self.series.append({"__name__": f"{HIST}_sum", **base})
            self.series.append({"__name__": f"{HIST}_count", **base})

    def batch(self, ticks_ms: I64) -> SampleBatch:
        """The samples at ``ticks_ms`` (consecutive ticks, after those of the previous call)."""
        endpoints, n_le = self.counts.shape
        rng = np.random.default_rng((self.seed, int(ticks_ms[0])))
        day = (ticks_ms % DAY_MS) / DAY_MS
        load = 1.0 + 0.5 * np.sin(2 * np.pi * day)
        requests = rng.poisson(self.rate[:, None] * (TICK_MS / 1000) * load[None, :])
        per_series: list[npt.NDArray[np.float64]] = []
        for e in range(endpoints):
            per_tick = rng.multinomial(requests[e], self.p[e])  # [tick, bucket]
            running = self.counts[e] + np.cumsum(per_tick, axis=0)
            self.counts[e] = running[-1]
            cumulative = np.cumsum(running, axis=1)  # le buckets are cumulative
            mean = np.exp(self.mu[e] + self.sigma[e] ** 2 / 2)
            noise = 1 + 0.1 * rng.standard_normal(len(ticks_ms)) / np.sqrt(requests[e] + 1)
            total = self.total_s[e] + np.cumsum(requests[e] * mean * noise)
            self.total_s[e] = total[-1]
            per_series += [cumulative[:, b].astype(np.float64) for b in range(n_le)]
            per_series += [total, cumulative[:, -1].astype(np.float64)]
        n = len(ticks_ms)
        return SampleBatch(
            self.series,
            np.repeat(np.arange(len(self.series), dtype=np.int32), n),
            np.tile(ticks_ms.astype(np.int64), len(self.series)),
            np.concatenate(per_series),
        )


def _le(le: float) -> str:
    return "+Inf" if math.isinf(le) else f"{le:g}"


@dataclass
class Counts:
    """Samples written per metric name: all rows, and those that are not NaN."""

    rows: dict[str, int] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)

    def add(self, batch: SampleBatch) -> None:
        names = np.array([s["__name__"] for s in batch.series])
        per = names[batch.series_index]
        nan = np.isnan(batch.values)
        for name, n in zip(*np.unique(per, return_counts=True), strict=True):
            self.rows[str(name)] = self.rows.get(str(name), 0) + int(n)
        for name, n in zip(*np.unique(per[~nan], return_counts=True), strict=True):
            self.numbers[str(name)] = self.numbers.get(str(name), 0) + int(n)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


class Sink(Protocol):
    def append(self, batch: SampleBatch) -> object: ...


class _Feed:
    """What ``Simulation.backfill`` writes to: adds the histogram, keeps the ``only`` metrics,
    counts, passes each block to every sink (timing each) and, given ``cache``, saves the
    block there (before filtering) so that the next load reads it instead of simulating."""

    def __init__(
        self, sinks: Sequence[Sink], endpoints: int, only: Sequence[str], cache: Path | None
    ) -> None:
        self.sinks = sinks
        self.histogram = Histogram(endpoints) if endpoints else None
        self.only = set(only)
        self.cache = cache
        self.blocks = 0
        self.counts = Counts()
        self.sink_s = [0.0] * len(sinks)

    def append(self, batch: SampleBatch) -> None:
        if self.histogram is not None:
            ticks = np.arange(int(batch.t_ms.min()), int(batch.t_ms.max()) + 1, TICK_MS)
            batch = SampleBatch.concat([batch, self.histogram.batch(ticks)])
        if self.cache is not None:
            np.savez(
                self.cache / f"{self.blocks:05d}.npz",
                series=np.array(json.dumps(batch.series)),
                series_index=batch.series_index,
                t_ms=batch.t_ms,
                values=batch.values,
            )
        self.blocks += 1
        self.deliver(batch)

    def deliver(self, batch: SampleBatch) -> None:
        if self.only:
            keep_series = np.array([s["__name__"] in self.only for s in batch.series])
            rows = keep_series[batch.series_index]
            batch = SampleBatch(
                batch.series, batch.series_index[rows], batch.t_ms[rows], batch.values[rows]
            )
        if len(batch) == 0:
            return
        self.counts.add(batch)
        for i, sink in enumerate(self.sinks):
            started = time.perf_counter()
            sink.append(batch)
            self.sink_s[i] += time.perf_counter() - started


def feed(
    sinks: Sequence[Sink],
    gpus: int,
    end_ms: int,
    endpoints: int,
    cache: Path,
    only: Sequence[str] = (),
) -> tuple[Counts, list[float], float]:
    """The fleet's ``[START_MS, end_ms)`` into every sink, simulated (and saved in ``cache``)
    or read from ``cache``; counts, seconds in each sink, seconds in all."""
    started = time.perf_counter()
    done = cache / "complete"
    if done.exists():
        target = _Feed(sinks, 0, only, None)
        for path in sorted(cache.glob("*.npz")):
            with np.load(path) as z:
                batch = SampleBatch(
                    json.loads(str(z["series"])), z["series_index"], z["t_ms"], z["values"]
                )
            target.deliver(batch)
    else:
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        target = _Feed(sinks, endpoints, only, cache)
        Simulation(FleetSpec(gpus=gpus)).backfill(target, START_MS, end_ms)
        done.touch()
    return target.counts, target.sink_s, time.perf_counter() - started


# ---------------------------------------------------------------------------- services


@dataclass
class Service:
    """A server this script started: its base URL, process and log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def running(name: str, argv: list[str], port: int, ready: str, log: Path,
            env: dict[str, str] | None = None) -> Iterator[Service]:  # fmt: skip
    """Start ``argv``, wait until ``ready`` answers 200, stop it (SIGTERM, then SIGKILL)."""
    if shutil.which(argv[0]) is None:
        raise SystemExit(f"{argv[0]} is not installed (see DESIGN.md 'Real components')")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    service = Service(name, f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: see {log}")
            try:
                if httpx.get(service.url + ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become ready: see {log}")
            time.sleep(0.2)
        yield service
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prometheus(data: Path) -> AbstractContextManager[Service]:
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    config = data / "prometheus.yml"
    config.write_text("global:\n  evaluation_interval: 1m\n")  # no scrape jobs: only our data
    argv = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver",
            *PROMETHEUS_FLAGS]  # fmt: skip
    return running("prometheus", argv, port, "/-/ready", data / "prometheus.log")


def victoria_metrics(data: Path) -> AbstractContextManager[Service]:
    port = free_port()
    argv = ["victoria-metrics", f"-storageDataPath={data / 'storage'}",
            f"-httpListenAddr=127.0.0.1:{port}", *VM_FLAGS]  # fmt: skip
    return running("vm", argv, port, "/health", data / "vm.log")


def fleetscope_server(data: Path) -> AbstractContextManager[Service]:
    port = free_port()
    config = data / "fleetscope.toml"
    config.write_text(FLEETSCOPE_CONFIG)
    exe = Path(sys.executable).with_name("fleetscope")
    argv = [str(exe), "server", "--data", str(data), "--port", str(port), "--config", str(config)]
    return running("fleetscope-http", argv, port, "/healthz", data / "server.log")


class RemoteWriter:
    """Remote-writes blocks in time order, ``request_samples`` per request; encodes the next
    request while the previous one is in flight (one request at a time, so order holds)."""

    def __init__(self, url: str, request_samples: int) -> None:
        self.url = url + "/api/v1/write"
        self.request_samples = request_samples
        self._client = httpx.Client(timeout=600)
        self._pool = ThreadPoolExecutor(1)
        self._inflight: Future[None] | None = None

    def append(self, batch: SampleBatch) -> None:
        order = np.argsort(batch.t_ms, kind="stable")
        for a in range(0, len(order), self.request_samples):
            rows = order[a : a + self.request_samples]
            body = encode(
                SampleBatch(
                    batch.series, batch.series_index[rows], batch.t_ms[rows], batch.values[rows]
                )
            )
            self.wait()
            self._inflight = self._pool.submit(self._post, body)

    def _post(self, body: bytes) -> None:
        resp = self._client.post(self.url, content=body, headers=HEADERS)
        if resp.status_code not in (200, 204):
            raise RuntimeError(f"{self.url}: HTTP {resp.status_code}: {resp.text[:300]}")

    def wait(self) -> None:
        if self._inflight is not None:
            self._inflight.result()
            self._inflight = None

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()
        self._client.close()


def metrics_of(url: str) -> dict[str, float]:
    """A server's ``/metrics`` as ``{'name{labels}': value}``."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def summed(metrics: dict[str, float], name: str, match: str = "") -> float:
    return sum(v for k, v in metrics.items() if k.split("{")[0] == name and match in k)


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (apparent sizes)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class PromBlocks:
    blocks: int
    samples: int
    bytes: int  # block directories: chunks, index, meta, tombstones
    chunk_bytes: int
    total_bytes: int  # the whole TSDB directory: blocks, head chunks, WAL


def prometheus_blocks(tsdb: Path) -> PromBlocks:
    blocks = samples = size = chunks = 0
    for meta in tsdb.glob("*/meta.json"):
        if meta.parent.name.endswith((".tmp-for-creation", ".tmp-for-deletion")):
            continue
        blocks += 1
        samples += int(json.loads(meta.read_text())["stats"]["numSamples"])
        size += du(meta.parent)
        chunks += du(meta.parent / "chunks")
    return PromBlocks(blocks, samples, size, chunks, du(tsdb))


def settle_prometheus(tsdb: Path, quiet_s: float = 30.0) -> PromBlocks:
    """Wait until Prometheus' blocks stop changing (head cut and compactions done)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last = sorted(p.name for p in tsdb.iterdir())
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(2)
        now = sorted(p.name for p in tsdb.iterdir())
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            break
    return prometheus_blocks(tsdb)


@dataclass
class VMSize:
    rows: int
    data_bytes: int  # vm_data_size_bytes of the storage parts (samples)
    index_bytes: int  # vm_data_size_bytes of indexdb
    total_bytes: int  # the whole data directory


def settle_vm(url: str, data: Path, quiet_s: float = 10.0) -> VMSize:
    """Flush VictoriaMetrics' in-memory parts and wait until no merge runs and sizes are stable."""
    httpx.get(url + "/internal/force_flush", timeout=600)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last: tuple[float, ...] = ()
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        m = metrics_of(url)
        now = (summed(m, "vm_active_merges"), summed(m, "vm_data_size_bytes"))
        if now != last or now[0] > 0:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            break
        time.sleep(1)
    m = metrics_of(url)
    rows = summed(m, "vm_rows", 'type="storage/')
    return VMSize(
        int(rows),
        int(summed(m, "vm_data_size_bytes", 'type="storage/')),
        int(summed(m, "vm_data_size_bytes", 'type="indexdb')),
        du(data / "storage"),
    )


def duckdb_bytes(path: Path) -> int:
    return du(path) + (du(Path(f"{path}.wal")) if Path(f"{path}.wal").exists() else 0)


# ---------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Query:
    """One measured request: instant at ``at_ms``, or a range query over ``[start, end]``."""

    name: str
    group: str  # "overview" or "analytics"
    text: str
    at_ms: int
    start_ms: int = 0
    step_ms: int = 0  # 0: an instant query

    def run(self, engine: Engine) -> QueryResult:
        if self.step_ms:
            return engine.range(self.text, self.start_ms, self.at_ms, self.step_ms)
        return engine.instant(self.text, self.at_ms)


@dataclass(frozen=True)
class Measured:
    """A named piece of work: one or more queries, or the whole overview page."""

    name: str
    group: str
    queries: tuple[Query, ...] = ()
    page: bool = False

    def run(self, engine: Engine, now_ms: int) -> str:
        """Run it; a short digest of the answer (to see that the backends agree)."""
        if self.page:
            from fleetscope.web import view

            built = view.build(engine, FakeRecordStore(), window="7d", window_ms=7 * DAY_MS,
                               now_ms=now_ms)  # fmt: skip
            hours = sum(built.gpu_hours.values())
            warned = f", {len(built.warnings)} warnings" if built.warnings else ""
            return f"{hours:.5g} GPU-h, states {sorted(built.states.values())}{warned}"
        return "; ".join(_digest(q.run(engine)) for q in self.queries)


def _digest(result: QueryResult) -> str:
    if result.scalar is not None:
        return f"{result.scalar[1]:.6g}"
    values = [float(v) for s in result.series for v in s.values if not math.isnan(v)]
    total = sum(values)
    return f"{len(result.series)}s/{len(values)}p Σ{total:.6g}"


def workload(now_ms: int, subquery_step: str) -> list[Measured]:
    """The overview page's queries for a 7 d window at ``now_ms`` and the analytics queries."""
    week, day = 7 * DAY_MS, DAY_MS
    # the page asks for the GPU states in one query (older versions: one query per state)
    states: str | dict[str, str] = ov.promql_states()
    state_queries = (states,) if isinstance(states, str) else tuple(states.values())
    allocated_idle = ov.PROMQL_STATES["allocated_idle"].format(thr=f"{ov.IDLE_THRESHOLD:g}")
    hours = ov.promql_gpu_hours("team", "7d", TICK_MS)
    daily = ov.promql_gpu_hours("team", "1d", TICK_MS)
    edges = ov.bucket_edges(now_ms - week, now_ms, day)
    first, last = edges[0] + day - 1, edges[-1] + day - 1
    join = "fleet_gpu_utilization_ratio * on(gpu_uuid) group_left(team) fleet_gpu_allocation"
    idle = f"(fleet_gpu_utilization_ratio < {ov.IDLE_THRESHOLD:g})" + join[27:]
    per_hour = {"15s": 240, "30s": 120, "1m": 60, "5m": 12}[subquery_step]

    def aligned(step_ms: int) -> int:
        """A range query's end as the page and Grafana send it: a multiple of its step."""
        return now_ms - now_ms % step_ms

    def one(name: str, group: str, query: Query) -> Measured:
        return Measured(name, group, (query,))

    return [
        one("utilization 7d, range 1h step", "overview",
            Query("u7", "overview", ov.PROMQL_UTILIZATION, aligned(HOUR_MS),
                  aligned(HOUR_MS) - week, HOUR_MS)),
        one("utilization 24h, range 10m step", "overview",
            Query("u1", "overview", ov.PROMQL_UTILIZATION, aligned(600_000),
                  aligned(600_000) - day, 600_000)),
        one("GPUs up now: count(fleet_gpu_up == 1)", "overview",
            Query("up", "overview", "count(fleet_gpu_up == 1)", now_ms)),
        one("allocated idle now (join)", "overview",
            Query("ai", "overview", allocated_idle, now_ms)),
        Measured("GPU states now (as the page asks)", "overview",
                 tuple(Query("st", "overview", q, now_ms) for q in state_queries)),
        one("GPU-hours by team 7d (count_over_time)", "overview",
            Query("gh", "overview", hours, now_ms)),
        one("GPU-hours by team per day, range 1d step", "overview",
            Query("gd", "overview", daily, last, first, day)),
        one("idle allocated share 7d (subquery 1h)", "overview",
            Query("is", "overview", ov.promql_idle_share("7d", "1h"), now_ms)),
        one("sampling interval (median over GPUs)", "overview",
            Query("si", "overview", ov.PROMQL_INTERVAL, now_ms)),
        one("GPUs allocated per team now", "overview",
            Query("ta", "overview", ov.PROMQL_TEAM_ALLOCATION, now_ms)),
        Measured("whole overview page 7d (view.build)", "overview", page=True),
        one(f"util-weighted GPU-hours by team 7d (join, [7d:{subquery_step}])", "analytics",
            Query("uw", "analytics",
                  f"sum by (team) (sum_over_time(({join})[7d:{subquery_step}])) / {per_hour}",
                  now_ms)),
        one(f"idle allocated GPU-hours by team 7d (join, [7d:{subquery_step}])", "analytics",
            Query("ih", "analytics",
                  f"sum by (team) (count_over_time(({idle})[7d:{subquery_step}])) / {per_hour}",
                  now_ms)),
        one("TTFT p99 7d, range 5m step (histogram_quantile)", "analytics",
            Query("p99", "analytics",
                  f"histogram_quantile(0.99, sum by (le) (rate({HIST}_bucket[5m])))",
                  aligned(300_000), aligned(300_000) - week, 300_000)),
    ]  # fmt: skip


class TimedStore(DuckDBStore):
    """The DuckDB store, adding up the time spent in sample reads (``select`` and the
    evaluator's ``select_set``; thread-safe enough: summed)."""

    select_s = 0.0

    def _select_runs(
        self,
        matchers: Sequence[Matcher],
        mint_ms: int,
        maxt_ms: int,
        hints: SelectHints | None,
    ) -> Runs:
        started = time.perf_counter()
        try:
            return super()._select_runs(matchers, mint_ms, maxt_ms, hints)
        finally:
            self.select_s += time.perf_counter() - started


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    digest: str = ""
    error: str = ""
    select_s: list[float] = field(default_factory=list)  # in-process Fleetscope only

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan

    def cell(self) -> str:
        if self.error:
            return "error"
        if not self.seconds:
            return "-"
        lo, hi = min(self.seconds), max(self.seconds)
        return f"{_fmt(self.median)} [{_fmt(lo)}–{_fmt(hi)}]"


def _fmt(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def measure(
    work: Sequence[Measured],
    engines: dict[str, Engine],
    now_ms: int,
    repeat: int,
    budget_s: float,
    store: TimedStore | None = None,
) -> dict[str, dict[str, Timing]]:
    """Time every piece of work on every engine: a warm-up run, then ``repeat`` rounds that run
    it once per engine in turn. A piece whose warm-up took longer than ``budget_s`` on some
    engine gets fewer rounds (at least two)."""
    out: dict[str, dict[str, Timing]] = {}
    for item in work:
        timings = {name: Timing() for name in engines}
        out[item.name] = timings
        slowest = 0.0
        for name, engine in engines.items():
            started = time.perf_counter()
            try:
                timings[name].digest = item.run(engine, now_ms)
            except QueryError as exc:
                timings[name].error = f"{exc.error_type}: {exc.message[:200]}"
            slowest = max(slowest, time.perf_counter() - started)
        rounds = repeat if slowest * repeat <= budget_s else max(2, int(budget_s / slowest))
        for _ in range(rounds):
            for name, engine in engines.items():
                if timings[name].error:
                    continue
                if store is not None and isinstance(engine, Evaluator):
                    store.select_s = 0.0
                started = time.perf_counter()
                item.run(engine, now_ms)
                timings[name].seconds.append(time.perf_counter() - started)
                if store is not None and isinstance(engine, Evaluator):
                    timings[name].select_s.append(store.select_s)
        print(f"  {item.name}: " + ", ".join(f"{n} {t.cell()}" for n, t in timings.items()),
              flush=True)  # fmt: skip
    return out


def verify(engines: dict[str, Engine], counts: Counts, end_ms: int, days: int) -> bool:
    """Every backend holds every non-NaN sample of the :data:`CHECKED` metrics."""
    ok = True
    window = f"{days + 1}d"
    for name in CHECKED:
        want = counts.numbers.get(name, 0)
        have = {}
        for system, engine in engines.items():
            try:
                res = engine.instant(f"sum(count_over_time({name}[{window}]))", end_ms)
                have[system] = int(res.series[0].values[0]) if res.series else 0
            except QueryError as exc:
                have[system] = -1
                print(f"  {system}: {exc.message[:200]}")
        same = all(v == want for v in have.values())
        ok = ok and same
        print(f"  {name}: written {want:,}; " + ", ".join(f"{k} {v:,}" for k, v in have.items())
              + ("" if same else "  <-- MISMATCH"))  # fmt: skip
    return ok


# ---------------------------------------------------------------------------- reporting


def _short(system: str) -> str:
    return system.replace("fleetscope", "fs").replace("prometheus", "prom")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if a > 0 and b > 0 and math.isfinite(a / b) else "-"


def report(results: dict[str, dict[str, Timing]], fs: str) -> None:
    """The latency table (median [min–max] per backend), Fleetscope's ratios to Prometheus and
    VictoriaMetrics (in process, and over HTTP when measured), the answers' digests and the
    share of in-process time spent in ``DuckDBStore.select``."""
    systems = list(next(iter(results.values())))
    fs_http = f"{fs}-http"
    pairs = [(a, b) for a in (fs, fs_http) if a in systems for b in ("prometheus", "vm")]
    width = max(len(n) for n in results) + 2
    cells = {n: {s: t.cell() for s, t in timings.items()} for n, timings in results.items()}
    col = max(len(c) for row in cells.values() for c in row.values()) + 3
    print("\n" + "query".ljust(width) + "".join(s.rjust(col) for s in systems)
          + "".join(f"{_short(a)}/{_short(b)}".rjust(16) for a, b in pairs))  # fmt: skip
    for name, timings in results.items():
        line = name.ljust(width) + "".join(cells[name][s].rjust(col) for s in systems)
        line += "".join(_ratio(timings[a].median, timings[b].median).rjust(16) for a, b in pairs)
        print(line)
    print("\nanswers (series/points Σvalues) per backend:")
    for name, timings in results.items():
        digests = {s: t.error or t.digest for s, t in timings.items()}
        if len(set(digests.values())) == 1:
            print(f"  {name}: all agree: {next(iter(digests.values()))}")
        else:
            print(f"  {name}: " + " | ".join(f"{s}: {d}" for s, d in digests.items()))
    print("\nin-process Fleetscope: median time in DuckDBStore.select / in all (the page's "
          "select time adds up its 4 query threads):")  # fmt: skip
    for name, timings in results.items():
        t = timings[fs]
        if t.select_s:
            print(f"  {name}: {_fmt(statistics.median(t.select_s))} / {_fmt(t.median)}")


def bytes_table(rows: list[tuple[str, str, int, int]]) -> None:
    print(f"\n{'what':<44}{'system':<14}{'samples':>14}{'bytes':>16}{'B/sample':>10}")
    for what, system, samples, size in rows:
        per = size / samples if samples else math.nan
        print(f"{what:<44}{system:<14}{samples:>14,}{size:>16,}{per:>10.3f}")


# ---------------------------------------------------------------------------- main


@dataclass
class Manifest:
    """What ``--workdir`` holds, so that a rerun of the same size reuses it."""

    gpus: int
    days: int
    endpoints: int
    rows: dict[str, int]
    numbers: dict[str, int]
    load_s: dict[str, float]  # seconds in the store's append (and flush), per system
    simulate_s: float  # seconds to simulate the fleet (and keep its blocks)

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # none, or an older script's: load again
            return None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=1))


def cache_dir(args: argparse.Namespace) -> Path:
    """Where the simulated blocks of this size are kept between loads."""
    return Path(args.workdir) / f"cache-{args.gpus}x{args.days}dx{args.endpoints}"


def load_all(args: argparse.Namespace, work: Path, end_ms: int) -> Manifest:
    """Load the data into each system in turn, each timed alone: the first load simulates the
    fleet (and keeps its blocks), the others read the kept blocks."""
    cache = cache_dir(args)
    if work.exists():
        for path in work.iterdir():
            if path != cache:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    (work / "fleetscope").mkdir(parents=True)
    load_s: dict[str, float] = {}
    simulate_s = 0.0
    counts = Counts()
    for system in args.systems:
        print(f"loading {system} …", flush=True)
        simulated = not (cache / "complete").exists()
        if system == "fleetscope":
            store = DuckDBStore(work / "fleetscope" / "fleetscope.duckdb")
            counts, sink_s, total_s = feed(
                [_Compacting(store)], args.gpus, end_ms, args.endpoints, cache
            )
            started = time.perf_counter()
            store.checkpoint()
            print("  " + runs_summary(store), flush=True)
            store.close()
            load_s[system] = sink_s[0] + time.perf_counter() - started
        else:
            starter = prometheus if system == "prometheus" else victoria_metrics
            with starter(work / system) as service:
                writer = RemoteWriter(service.url, args.request_samples)
                counts, sink_s, total_s = feed([writer], args.gpus, end_ms, args.endpoints, cache)
                started = time.perf_counter()
                writer.close()
                load_s[system] = sink_s[0] + time.perf_counter() - started
                started = time.perf_counter()
                if system == "prometheus":
                    settled = settle_prometheus(work / system / "tsdb")
                    print(f"  compaction settled after {time.perf_counter() - started:.0f} s: "
                          f"{settled.blocks} blocks, {settled.samples:,} samples")  # fmt: skip
                else:
                    size = settle_vm(service.url, work / system)
                    print(f"  merges settled after {time.perf_counter() - started:.0f} s: "
                          f"{size.rows:,} rows")  # fmt: skip
        if simulated:
            simulate_s = total_s - sink_s[0]
        print(f"  {counts.total:,} samples: {load_s[system]:.1f} s in the store "
              f"({counts.total / load_s[system]:,.0f} samples/s); {total_s:.1f} s in all "
              f"({'simulating' if simulated else 'reading the kept blocks'})",
              flush=True)  # fmt: skip
    manifest = Manifest(args.gpus, args.days, args.endpoints, counts.rows, counts.numbers,
                        load_s, simulate_s)  # fmt: skip
    manifest.write(work / "manifest.json")
    return manifest


def gauge_bytes(
    args: argparse.Namespace, work: Path, end_ms: int
) -> list[tuple[str, str, int, int]]:
    """Each GPU gauge alone in fresh Fleetscope, Prometheus and VictoriaMetrics instances (one
    simulation feeding all nine); bytes per sample of each."""
    rows: list[tuple[str, str, int, int]] = []
    base = work / "gauges"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir()
    with ExitStack() as stack:
        sinks: list[Sink] = []
        services: list[tuple[str, str, Any, Path]] = []
        for metric in GPU_GAUGES:
            store = DuckDBStore(base / f"{metric}.duckdb")
            sinks.append(_Only(_Compacting(store), metric))
            services.append((metric, "fleetscope", store, base / f"{metric}.duckdb"))
            for system, starter in (("prometheus", prometheus), ("vm", victoria_metrics)):
                service = stack.enter_context(starter(base / f"{system}-{metric}"))
                writer = RemoteWriter(service.url, args.request_samples)
                sinks.append(_Only(writer, metric))
                services.append((metric, system, (service, writer), base / f"{system}-{metric}"))
        counts, _, took = feed(
            sinks, args.gpus, end_ms, args.endpoints, cache_dir(args), GPU_GAUGES
        )
        print(f"  fed {counts.total:,} samples to 9 instances in {took:.0f} s", flush=True)
        for metric, system, handle, path in services:
            written = counts.rows[metric]
            if system == "fleetscope":
                handle.checkpoint()
                print(f"  {metric}: {runs_summary(handle)}", flush=True)
                used = handle.stats().used_bytes
                handle.close()
                rows.append((metric, system, written, duckdb_bytes(path)))
                rows.append((metric, "fs used blocks", written, used or 0))
                continue
            service, writer = handle
            writer.close()
            if system == "prometheus":
                blocks = settle_prometheus(path / "tsdb")
                rows.append((metric, "prometheus", blocks.samples, blocks.bytes))
                rows.append((metric, "prom chunks", blocks.samples, blocks.chunk_bytes))
            else:
                size = settle_vm(service.url, path)
                rows.append((metric, "vm", size.rows, size.data_bytes + size.index_bytes))
                rows.append((metric, "vm data", size.rows, size.data_bytes))
    if not args.keep_gauges:
        shutil.rmtree(base)
    return rows


def runs_summary(store: DuckDBStore) -> str:
    """How the store holds its samples: sorted runs by the span they cover, and the head."""
    spans: dict[str, list[int]] = {}
    for _run, samples, mint, maxt in store.runs():
        length = maxt - mint
        kind = "week" if length > DAY_MS else "day" if length > 2 * 3_600_000 else "2 h"
        spans.setdefault(kind, []).append(samples)
    stats = store.stats()
    held = sum(sum(v) for v in spans.values())
    parts = [f"{len(v)} {k} runs ({sum(v):,} samples)" for k, v in sorted(spans.items())]
    return f"layout: {', '.join(parts) or 'no runs'}; head {stats.samples - held:,} samples"


class _Compacting:
    """Appends to a DuckDB store and compacts the blocks that closed, as the server's
    housekeeping thread does live (the freed head blocks are reused by later appends)."""

    def __init__(self, store: DuckDBStore) -> None:
        self.store = store

    def append(self, batch: SampleBatch) -> None:
        self.store.append(batch)
        self.store.compact()


class _Only:
    """Passes on only the rows of one metric."""

    def __init__(self, sink: Sink, metric: str) -> None:
        self.sink, self.metric = sink, metric

    def append(self, batch: SampleBatch) -> None:
        mine = np.array([s["__name__"] == self.metric for s in batch.series])[batch.series_index]
        self.sink.append(SampleBatch(batch.series, batch.series_index[mine], batch.t_ms[mine],
                                     batch.values[mine]))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("\n".join(__doc__.splitlines()[1:])),
    )
    parser.add_argument("--gpus", type=int, default=256)
    parser.add_argument("--days", type=int, default=7, help="at least 7 (the queries' window)")
    parser.add_argument("--endpoints", type=int, default=20, help="histogram endpoints")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fleetscope-query-bench"))
    parser.add_argument("--reload", action="store_true", help="load again even if cached")
    parser.add_argument("--clean", action="store_true", help="delete --workdir at the end")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per query")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds of measured runs per query and backend, roughly",
    )
    parser.add_argument("--subquery-step", default="5m", choices=("15s", "30s", "1m", "5m"))
    parser.add_argument("--request-samples", type=int, default=200_000)
    parser.add_argument("--no-http", action="store_true", help="skip Fleetscope over HTTP")
    parser.add_argument(
        "--gauge-bytes",
        action="store_true",
        help="also load each GPU gauge alone and report its bytes/sample",
    )
    parser.add_argument("--keep-gauges", action="store_true")
    parser.add_argument(
        "--keep-blocks", action="store_true", help="keep the simulated blocks (≈20 B/sample)"
    )
    parser.add_argument("--only", default="", help="regex: run only the matching queries")
    args = parser.parse_args()
    args.systems = SYSTEMS
    work: Path = args.workdir
    end_ms = START_MS + args.days * DAY_MS
    now_ms = end_ms - TICK_MS  # the last tick: "now" for the overview
    print(f"{args.gpus} GPUs × {args.days} d at 15 s + {args.endpoints} endpoints × "
          f"{len(LE) + 2} histogram series; data in {work}", flush=True)  # fmt: skip

    manifest = Manifest.read(work / "manifest.json")
    if (
        args.reload
        or manifest is None
        or (manifest.gpus, manifest.days, manifest.endpoints)
        != (args.gpus, args.days, args.endpoints)
    ):
        manifest = load_all(args, work, end_ms)
    counts = Counts(manifest.rows, manifest.numbers)
    print(f"\n{counts.total:,} samples ({sum(counts.numbers.values()):,} not NaN); load seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in manifest.load_s.items())
          + f" (simulation {manifest.simulate_s:.0f})")  # fmt: skip

    work_items = workload(now_ms, args.subquery_step)
    if args.only:
        work_items = [w for w in work_items if re.search(args.only, w.name)]
    results, sizes = run_all(args, work, counts, work_items, now_ms, end_ms)
    report(results, "fleetscope")
    if args.gauge_bytes:
        print("\nGPU gauges, each loaded alone:", flush=True)
        sizes += gauge_bytes(args, work, end_ms)
    bytes_table(sizes)
    if not args.keep_blocks and cache_dir(args).exists():
        shutil.rmtree(cache_dir(args))
    if args.clean:
        shutil.rmtree(work)


def run_all(
    args: argparse.Namespace,
    work: Path,
    counts: Counts,
    work_items: list[Measured],
    now_ms: int,
    end_ms: int,
) -> tuple[dict[str, dict[str, Timing]], list[tuple[str, str, int, int]]]:
    """Start Prometheus and VictoriaMetrics on the loaded data, note their sizes, check the
    samples, time the work in process and then over Fleetscope's HTTP API."""
    timeout_s = 900.0
    with ExitStack() as stack:
        prom = stack.enter_context(prometheus(work / "prometheus"))
        vm = stack.enter_context(victoria_metrics(work / "vm"))
        blocks = settle_prometheus(work / "prometheus" / "tsdb", quiet_s=5)
        vm_size = settle_vm(vm.url, work / "vm", quiet_s=3)
        db = work / "fleetscope" / "fleetscope.duckdb"
        sizes = [
            ("all samples", "fleetscope", counts.total, duckdb_bytes(db)),
            ("all samples (blocks only)", "prometheus", blocks.samples, blocks.bytes),
            ("all samples (block chunks only)", "prometheus", blocks.samples, blocks.chunk_bytes),
            ("all samples (whole tsdb dir / written)", "prometheus", counts.total,
             blocks.total_bytes),
            ("all samples (data + indexdb)", "vm", vm_size.rows,
             vm_size.data_bytes + vm_size.index_bytes),
            ("all samples (data parts only)", "vm", vm_size.rows, vm_size.data_bytes),
            ("all samples (whole dir / written)", "vm", counts.total, vm_size.total_bytes),
        ]  # fmt: skip
        store = TimedStore(db)
        started = time.perf_counter()
        store.compact()  # as the server does at start: closed blocks, cells of older data
        print(f"compacted on open in {time.perf_counter() - started:.0f} s", flush=True)
        sizes.insert(
            1,
            (
                "all samples (used blocks)",
                "fleetscope",
                counts.total,
                store.stats().used_bytes or 0,
            ),
        )
        remote = {
            "prometheus": PrometheusEngine(prom.url, timeout_s=timeout_s),
            "vm": PrometheusEngine(vm.url, timeout_s=timeout_s),
        }
        for engine in remote.values():
            stack.callback(engine.close)
        engines: dict[str, Engine] = {"fleetscope": Evaluator(store), **remote}
        print("\nsamples held (sum(count_over_time(m[…])) at the end):", flush=True)
        verify(engines, counts, end_ms, args.days)
        print(f"\ntiming ({args.repeat} runs after a warm-up, interleaved):", flush=True)
        results = measure(work_items, engines, now_ms, args.repeat, args.budget, store)
        store.close()  # the server below needs the file: one process at a time
        if not args.no_http:
            with fleetscope_server(work / "fleetscope") as server:
                token = (work / "fleetscope" / "admin.token").read_text().strip()
                http = PrometheusEngine(server.url, timeout_s=timeout_s,
                                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
                print("\nFleetscope over HTTP (fleetscope server on the same file):", flush=True)
                verify({"fleetscope-http": http}, counts, end_ms, args.days)
                over_http = measure(work_items, {"fleetscope-http": http}, now_ms, args.repeat,
                                    args.budget)  # fmt: skip
                http.close()
                for name, timing in over_http.items():
                    results[name]["fleetscope-http"] = timing["fleetscope-http"]
    return results, sizes


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
