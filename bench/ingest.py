"""Ingest benchmark: remote-write throughput of Fleetscope vs VictoriaMetrics 1.79 (not run in CI).

Builds remote-write payloads (``--gpus`` GPUs × ``--metrics`` metrics, ``--samples`` samples per
series per request, ``--requests`` requests), then pushes the same payloads over HTTP with
``--clients`` concurrent clients to

- a Fleetscope server (uvicorn in a subprocess running ``fleetscope.web.app.create_app`` on a
  DuckDB file, or a minimal app with the ingest router when the web app is not there), and
- a VictoriaMetrics single node started on loopback by this script,

and prints samples/s for each and their ratio. Each client owns a slice of the GPUs and sends
its requests in time order (the store refuses out-of-order samples; VictoriaMetrics does not).
It also times, in process, ``remotewrite.decode`` alone, ``validate`` alone and
``DuckDBStore.append`` alone, so it is clear where the time goes.

Note the two 204s differ: Fleetscope answers after its append committed (durable);
VictoriaMetrics after buffering in memory. Samples stored by VictoriaMetrics are counted after
a flush to check nothing was dropped.

    .venv/bin/python bench/ingest.py --requests 300 --clients 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from common import free_port, wait_http
from fleetscope import remotewrite
from fleetscope.ingest.validate import validate
from fleetscope.store import SampleBatch
from fleetscope.store.duckdb import DuckDBStore

STEP_MS = 15_000
MODELS = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S"]

SERVER = textwrap.dedent(
    """
    import sys, uvicorn
    from pathlib import Path
    from fleetscope.store.duckdb import DuckDBStore
    data, port = Path(sys.argv[1]), int(sys.argv[2])
    store = DuckDBStore(data / "fleetscope.duckdb")
    try:
        from fleetscope.web.app import WebSettings, create_app
        app = create_app(WebSettings(data_dir=data), store, store)
    except ImportError:
        from fastapi import FastAPI
        from fleetscope.ingest.receiver import make_router
        app = FastAPI()
        app.include_router(make_router(store, store))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    """
)


@dataclass
class Workload:
    """Per client, its payloads in time order (bytes) and their decoded size in samples."""

    payloads: list[list[bytes]]
    samples_per_payload: list[list[int]]

    @property
    def total_samples(self) -> int:
        return sum(sum(c) for c in self.samples_per_payload)

    def flat(self) -> list[bytes]:
        return [p for client in self.payloads for p in client]


def build(gpus: int, metrics: int, samples: int, requests: int, clients: int) -> Workload:
    """Payloads with realistic label sets; client ``c`` owns the GPUs ``g % clients == c``."""
    per_client = max(1, requests // clients)
    t0 = int(time.time() * 1000) - per_client * samples * STEP_MS - 3_600_000
    rng = np.random.default_rng(1)
    payloads: list[list[bytes]] = []
    sizes: list[list[int]] = []
    for c in range(clients):
        series = [
            {
                "__name__": f"fleet_gpu_bench_metric_{m:02d}",
                "node": f"node-{g // 8:03d}",
                "gpu": str(g % 8),
                "gpu_uuid": f"GPU-{g:08x}-0000-0000-0000-000000000000",
                "gpu_model": MODELS[g % len(MODELS)],
            }
            for g in range(c, gpus, clients)
            for m in range(metrics)
        ]
        n = len(series) * samples
        index = np.repeat(np.arange(len(series), dtype=np.int32), samples)
        mine: list[bytes] = []
        for r in range(per_client):
            start = t0 + r * samples * STEP_MS
            times = np.tile(start + np.arange(samples, dtype=np.int64) * STEP_MS, len(series))
            values = np.round(rng.random(n) * 100, 1)
            mine.append(remotewrite.encode(SampleBatch(series, index, times, values)))
        payloads.append(mine)
        sizes.append([n] * per_client)
    return Workload(payloads, sizes)


def push(url: str, work: Workload, headers: dict[str, str]) -> float:
    """Send every client's payloads (clients in parallel); seconds taken. Fails on non-204."""
    errors: list[str] = []

    def client(payloads: list[bytes]) -> None:
        with httpx.Client(timeout=120) as http:
            for body in payloads:
                resp = http.post(url, content=body, headers=headers)
                if resp.status_code != 204:
                    errors.append(f"{resp.status_code}: {resp.text[:300]}")
                    return

    threads = [threading.Thread(target=client, args=(p,)) for p in work.payloads]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{url}: {errors[0]}")
    return elapsed


def bench_fleetscope(work: Workload, tmp: Path) -> float:
    port = free_port()
    data = tmp / "fleetscope"
    data.mkdir()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(data), str(port)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", proc)
        headers = dict(remotewrite.HEADERS)
        token = data / "admin.token"
        if token.exists():
            headers["Authorization"] = f"Bearer {token.read_text().strip()}"
        return push(base + "/api/v1/write", work, headers)
    finally:
        proc.terminate()
        proc.wait(30)


def bench_victoria_metrics(work: Workload, tmp: Path) -> tuple[float, int]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        raise RuntimeError("victoria-metrics is not installed (Debian package victoria-metrics)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"-storageDataPath={tmp / 'vm'}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-loggerLevel=ERROR",
        ]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health", proc)
        elapsed = push(base + "/api/v1/write", work, remotewrite.HEADERS)
        httpx.get(base + "/internal/force_flush")
        time.sleep(2)
        resp = httpx.get(
            base + "/api/v1/query",
            params={"query": "sum(count_over_time({__name__=~'fleet_gpu_bench.*'}[10y]))"},
            timeout=120,
        )
        result = resp.json()["data"]["result"]
        stored = int(float(result[0]["value"][1])) if result else 0
        return elapsed, stored
    finally:
        proc.terminate()
        proc.wait(30)


def in_process(work: Workload, tmp: Path) -> dict[str, float]:
    """Seconds for decode alone, validate alone and DuckDBStore.append alone (same batches)."""
    bodies = work.flat()
    started = time.perf_counter()
    batches = [remotewrite.decode(b) for b in bodies]
    decode_s = time.perf_counter() - started
    started = time.perf_counter()
    batches = [validate(b) for b in batches]
    validate_s = time.perf_counter() - started
    store = DuckDBStore(tmp / "append-only.duckdb")
    started = time.perf_counter()
    for client in range(len(work.payloads)):
        per = len(work.payloads[client])
        for b in batches[client * per : (client + 1) * per]:
            store.append(b)
    append_s = time.perf_counter() - started
    store.close()
    return {"decode": decode_s, "validate": validate_s, "append": append_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--samples", type=int, default=100, help="per series per request")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--skip", choices=["fleetscope", "vm", "inprocess"], action="append")
    args = parser.parse_args()
    skip = set(args.skip or [])

    started = time.perf_counter()
    work = build(args.gpus, args.metrics, args.samples, args.requests, args.clients)
    total = work.total_samples
    size = sum(len(p) for p in work.flat())
    print(
        f"built {len(work.flat())} payloads, {total:,} samples, {size / 1e6:.1f} MB snappy "
        f"in {time.perf_counter() - started:.1f}s"
    )
    with tempfile.TemporaryDirectory(prefix="fleetscope-bench-") as name:
        tmp = Path(name)
        if "inprocess" not in skip:
            for stage, secs in in_process(work, tmp).items():
                print(f"  {stage:<10} alone: {total / secs:>12,.0f} samples/s  ({secs:.2f}s)")
        rates: dict[str, float] = {}
        if "fleetscope" not in skip:
            secs = bench_fleetscope(work, tmp)
            rates["fleetscope"] = total / secs
            print(
                f"fleetscope over HTTP:       {rates['fleetscope']:>12,.0f} samples/s ({secs:.1f}s)"
            )
        if "vm" not in skip:
            secs, stored = bench_victoria_metrics(work, tmp)
            rates["vm"] = total / secs
            print(
                f"victoria-metrics over HTTP: {rates['vm']:>12,.0f} samples/s ({secs:.1f}s); "
                f"stored {stored:,} of {total:,}"
            )
        if len(rates) == 2:
            print(f"ratio fleetscope / victoria-metrics: {rates['fleetscope'] / rates['vm']:.2f}")


if __name__ == "__main__":
    main()
