"""Agent benchmark: the node agent's CPU and memory on an 8-GPU node vs node_exporter (not in CI).

Issue 4's targets for ``fleetscope agent``: at most 0.5 % of one core at the default 15 s
interval and at most 80 MiB resident memory. This script measures, on the machine it runs on:

- **agent, simulated 8-GPU node**: a one-node :class:`~fleetscope.simulate.sim.Simulation`
  (``FleetSpec(gpus=8)``) is advanced to now with a ``root_dir``, so its
  :class:`~fleetscope.simulate.roots.RootTree` writes the node's fake root: prolog files,
  ``/proc/<pid>`` of the GPU processes, ``proc/stat``, ``meminfo``, ``diskstats``, ``mounts``,
  ``mountstats``, ``net/dev``, ``net/snmp``, ``nf_conntrack``, ``sys/class/net`` and
  ``sys/class/infiniband`` and ``var/log/kern.log`` (when the tree lacks ``proc/diskstats``, an
  older simulator, the fixture trees of ``tests/data/collect/{disk,host,net,infiniband}/node1``
  are copied in instead; the table says which). The node's eight ``FakeDevice`` readings are
  handed to the agent process as JSON, so the simulator is not in its memory.
- **agent, real root**: the same agent on this machine's ``/`` (real ``/proc`` and ``/sys``,
  real ``pynvml``, which finds no GPU here and retries ``nvmlInit`` every cycle, as it would on
  a GPU-less node; real ``statvfs`` in its timeout threads).
- **node_exporter**: Debian's ``prometheus-node-exporter`` with its default collectors on a free
  loopback port, scraped like Prometheus does (keep-alive, ``Accept-Encoding: gzip``).

Each agent runs in its own process (this file with ``--child``, which first imports
``fleetscope.cli`` as the ``fleetscope agent`` process has), built as ``fleetscope agent``
builds it: ``default_collectors(node, nvml=…, root=…,
config=AgentConfig(kernel_log="/var/log/kern.log"), statvfs=…)`` and an :class:`Agent` with a
WAL in a temporary directory, ``/metrics`` on a free loopback port, pushing to a local sink:
the Fleetscope ingest router on a DuckDB store in another process (``--sink fleetscope``, the
default, so every pushed batch is also decoded and validated) or a server in this process that
answers 204 (``--sink null``). It cycles every ``--interval`` seconds (default 1 s, to get many
cycles quickly) through the real :meth:`Agent.run` loop, collection and its sender thread.
After ``--warmup`` cycles (imports, first reads and the WAL's first segment are excluded), this
script reads the child's CPU time (user + system, all threads, psutil) and does so again after
``--cycles`` more; their difference over ``--cycles`` is the CPU per cycle, and the cost at a
15 s interval is that ÷ 15 s, as a share of one core. The median and range per cycle come from
the child's own ``getrusage`` at the end of each cycle (microseconds; psutil counts 10 ms
ticks). Memory: resident set size (psutil) after every cycle (median = steady state) and the
kernel's high-water mark ``VmHWM`` (peak, startup included; the target is judged on it; not
``ru_maxrss``, which Linux carries over ``exec`` from the forking parent), and at the end its
split into anonymous and file-backed pages (shared libraries, counted in every process). Wall
time per cycle is the agent's own ``fleet_agent_cycle_seconds`` (collection only) and the time
of the whole ``enqueue_cycle`` (plus encoding and the fsynced WAL append); the table also shows
each collector's median ``fleet_agent_collector_seconds``. Then ``--idle`` seconds with no cycle
give the idle cost between cycles (the ``/metrics`` server thread polls twice a second).

node_exporter gets the same warm-up, count and spacing of scrapes; its CPU per scrape comes from
psutil the same way, its per-scrape median and range from the sum of ``/proc/<pid>/task/*/
schedstat`` run times (nanoseconds). Note what is compared: one agent cycle reads NVML and every
file of the node, encodes a remote-write request, appends it to the WAL with an fsync and POSTs
it; one scrape reads the node's files and serves gzipped text, and the Prometheus server's work
(parsing, storing) is not counted. node_exporter reads no GPU.

When the agent misses a target (or with ``--profile``), the resident memory each of its imports
adds is printed (a fresh interpreter importing them one by one), and ``--profile-cycles`` cycles
of the same agent on the simulated node are profiled in this process with cProfile (timer: the
thread's CPU time, so a slow fsync counts only its system call) and the 15 functions with the
most own time are printed.

Noise: the numbers are CPU time, not wall time, so a busy machine inflates them less than it does
latencies, but caches, frequency scaling and other processes still move them by tens of percent
on a shared machine: compare runs, and read the ranges. The load average is printed before and
after. The simulated node's readings are frozen at one tick (the files do not change between
cycles): the parsing work is the same as on a live node, but no staleness markers or kernel log
lines are produced. ``FakeNVML`` is Python; real NVML calls go to the driver and cost more or
less than that, so the real-root row (no GPU) and a run on a GPU node complete the picture.

    .venv/bin/python bench/agent.py                            # about 3 minutes
    .venv/bin/python bench/agent.py --cycles 100 --sink null   # longer, lighter sink
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import free_port, wait_http

TARGET_CORE_PCT = 0.5  # % of one core at a 15 s interval
TARGET_RSS_MIB = 80.0
PROD_INTERVAL_S = 15.0
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "collect"
KERNEL_LOG = "/var/log/kern.log"

SINK = textwrap.dedent(
    """
    import sys, uvicorn
    from pathlib import Path
    from fastapi import FastAPI
    from fleetscope.ingest.receiver import make_router
    from fleetscope.store.duckdb import DuckDBStore
    store = DuckDBStore(Path(sys.argv[1]))
    app = FastAPI()
    app.include_router(make_router(store, store))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    """
)


# ---------------------------------------------------------------------------- the child


def child(args: argparse.Namespace) -> None:
    """Run one agent for ``args.warmup + args.cycles`` cycles, one JSON line per cycle on
    stdout; then idle (no cycle) until SIGTERM, and print a final JSON line.

    Imports only what ``fleetscope agent`` imports (plus the fake NVML), so its memory is the
    agent's.
    """
    import logging
    import resource

    import fleetscope.cli  # noqa: F401 (loaded in a real ``fleetscope agent`` process too)
    from fleetscope.agent import Agent, default_collectors
    from fleetscope.config import AgentConfig
    from fleetscope.simulate.nvml import FakeDevice, FakeNVML
    from fleetscope.store import METRIC_NAME, SampleBatch

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    root = Path(args.root)
    nvml: Any
    statvfs: Callable[[str], Any] | None = None
    if args.devices:
        raw = json.loads(Path(args.devices).read_text())
        nvml = FakeNVML(
            [
                FakeDevice(
                    **{
                        **d,
                        "processes": [tuple(p) for p in d["processes"]],
                        "unsupported": set(d["unsupported"]),
                    }
                )
                for d in raw
            ]
        )

        def statvfs(_path: str) -> os.statvfs_result:
            return os.statvfs(root)  # a real syscall: the fake mount points do not exist

    else:
        import pynvml

        nvml = pynvml
    collectors = default_collectors(
        args.node,
        nvml=nvml,
        root=root,
        config=AgentConfig(kernel_log=KERNEL_LOG),
        statvfs=statvfs,
    )
    counted = args.warmup + args.cycles

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def value_of(batch: SampleBatch, name: str) -> dict[str, float]:
        """``collector`` label (or ``""``) → value of the series ``name`` in ``batch``."""
        out: dict[str, float] = {}
        for k in range(len(batch)):
            labels = batch.series[int(batch.series_index[k])]
            if labels[METRIC_NAME] == name:
                out[labels.get("collector", "")] = float(batch.values[k])
        return out

    class BenchAgent(Agent):
        cycle = 0
        last: SampleBatch | None = None

        def enqueue_cycle(self, now_ms: int | None = None) -> SampleBatch:
            started = time.perf_counter()
            batch = super().enqueue_cycle(now_ms)
            wall_s = time.perf_counter() - started
            self.cycle += 1
            self.last = batch
            line = {
                "cycle": self.cycle,
                "samples": len(batch),
                "wall_s": wall_s,
                "cycle_s": value_of(batch, "fleet_agent_cycle_seconds")[""],
                "collectors": value_of(batch, "fleet_agent_collector_seconds"),
                "cpu_s": cpu_s(),
            }
            print(json.dumps(line), flush=True)
            if self.cycle >= counted:
                self.interval_s = 1e6  # idle from now on, until SIGTERM
            return batch

    agent = BenchAgent(
        args.node,
        collectors,
        push_url=args.push_url,
        interval_s=args.interval,
        listen=("127.0.0.1", 0),
        wal_dir=args.wal_dir,
    )
    signal.signal(signal.SIGTERM, lambda _sig, _frame: agent.stop())
    agent.run()
    up = value_of(agent.last, "fleet_agent_collector_up") if agent.last is not None else {}
    final = {
        "final": True,
        "pushed": agent.pushed_samples,
        "dropped": agent.dropped_samples,
        "push_failures": agent.push_failures,
        "down": sorted(name for name, v in up.items() if v != 1.0),
    }
    print(json.dumps(final), flush=True)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One measured process: per-cycle (or per-scrape) figures after the warm-up."""

    name: str
    cpu_per_cycle_s: float  # psutil, (end − start) / cycles
    cpu_each_s: list[float]  # per cycle, fine-grained (getrusage or schedstat)
    rss_bytes: list[float]  # after each cycle
    hwm_bytes: float  # VmHWM: the peak, startup included
    wall_s: list[float] = field(default_factory=list)  # agent: whole enqueue_cycle
    cycle_s: list[float] = field(default_factory=list)  # agent: fleet_agent_cycle_seconds
    collectors: dict[str, list[float]] = field(default_factory=dict)
    samples: list[int] = field(default_factory=list)
    idle_core_pct: float = float("nan")  # % of one core while idle between cycles
    idle_s: float = float("nan")  # how long the idle cost was measured
    notes: list[str] = field(default_factory=list)

    @property
    def core_pct_at_15s(self) -> float:
        return 100 * self.cpu_per_cycle_s / PROD_INTERVAL_S


def _cpu(p: Any) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _status_bytes(pid: int) -> dict[str, float]:
    """``VmHWM``, ``RssAnon``, ``RssFile`` … of ``/proc/<pid>/status``, in bytes."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[key] = float(value.split()[0]) * 1024
    return out


def _memory_note(pid: int, run: Run) -> None:
    status = _status_bytes(pid)
    run.hwm_bytes = status.get("VmHWM", float("nan"))
    run.notes.append(
        f"RSS at the end: {status.get('RssAnon', 0) / MIB:.1f} MiB anonymous + "
        f"{status.get('RssFile', 0) / MIB:.1f} MiB file-backed (code of the interpreter and "
        "its extension modules, shared with other processes mapping them)"
    )


def _schedstat_s(pid: int) -> float | None:
    """Seconds on CPU of all live threads of ``pid`` (``/proc/<pid>/task/*/schedstat``)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


@contextmanager
def sink(kind: str, tmp: Path) -> Iterator[str]:
    """A remote-write endpoint: its ``/api/v1/write`` URL while the context lasts."""
    if kind == "null":
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Answer204(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Answer204)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/write"
        finally:
            server.shutdown()
            server.server_close()
        return
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SINK, str(tmp / "sink.duckdb"), str(port)], env=env
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/docs", proc)
        yield f"http://127.0.0.1:{port}/api/v1/write"
    finally:
        proc.terminate()
        proc.wait(30)


def simulated_node(tmp: Path) -> tuple[str, Path, Path, str]:
    """Build the 8-GPU node: its name, root, devices JSON file and where the root's kernel files
    came from."""
    import dataclasses
    import shutil

    from fleetscope.simulate.fleet import FleetSpec
    from fleetscope.simulate.sim import Simulation

    sim = Simulation(FleetSpec(gpus=8), root_dir=tmp / "roots")
    sim.advance(int(time.time() * 1000) // sim.tick_ms * sim.tick_ms)
    (node,) = sim.nodes
    assert node.root is not None
    source = "simulator (RootTree)"
    if not (node.root / "proc" / "diskstats").exists():
        source = "fixtures (tests/data/collect/*/node1)"
        for tree in ("disk", "host", "net", "infiniband"):
            shutil.copytree(FIXTURES / tree / "node1", node.root, dirs_exist_ok=True)
        log = node.root / KERNEL_LOG.lstrip("/")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
    devices = [
        {**dataclasses.asdict(d), "unsupported": sorted(d.unsupported)} for d in node.devices
    ]
    path = tmp / "devices.json"
    path.write_text(json.dumps(devices))
    return node.name, node.root, path, source


def measure_agent(
    name: str,
    node: str,
    root: Path,
    devices: Path | None,
    push_url: str,
    tmp: Path,
    args: argparse.Namespace,
) -> Run:
    """Run the agent in a child process and measure it (see the module docstring)."""
    import psutil

    wal_dir = tmp / f"wal-{node}"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--node", node,
        "--root", str(root), "--push-url", push_url, "--wal-dir", str(wal_dir),
        "--interval", str(args.interval), "--warmup", str(args.warmup),
        "--cycles", str(args.cycles),
    ]  # fmt: skip
    if devices is not None:
        command += ["--devices", str(devices)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    stderr_path = tmp / f"agent-{node}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    p = psutil.Process(proc.pid)
    run = Run(name, float("nan"), [], [], float("nan"))
    try:
        cpu0 = prev = 0.0
        for raw in proc.stdout:
            cpu = _cpu(p)
            rss = float(p.memory_info().rss)
            line = json.loads(raw)
            k = int(line["cycle"])
            if k == args.warmup:
                cpu0 = cpu
            elif k > args.warmup:
                run.cpu_each_s.append(line["cpu_s"] - prev)
                run.rss_bytes.append(rss)
                run.wall_s.append(line["wall_s"])
                run.cycle_s.append(line["cycle_s"])
                run.samples.append(line["samples"])
                for collector, secs in line["collectors"].items():
                    run.collectors.setdefault(collector, []).append(secs)
            prev = line["cpu_s"]
            if k == args.warmup + args.cycles:
                run.cpu_per_cycle_s = (cpu - cpu0) / args.cycles
                break
        else:
            raise RuntimeError(f"agent {node} ended early:\n{_tail(stderr_path)}")
        time.sleep(0.5)  # the sender's last POST
        idle0, started = _cpu(p), time.monotonic()
        time.sleep(args.idle)
        run.idle_s = time.monotonic() - started
        run.idle_core_pct = 100 * (_cpu(p) - idle0) / run.idle_s
        _memory_note(proc.pid, run)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        final = json.loads(rest.strip().splitlines()[-1])
        produced = sum(run.samples)
        run.notes.append(
            f"pushed {final['pushed']:,} samples (≥ {produced:,} produced after the warm-up), "
            f"dropped {final['dropped']}, push failures {final['push_failures']}"
        )
        if final["down"]:
            run.notes.append("collectors down (source missing here): " + ", ".join(final["down"]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return run


def measure_node_exporter(args: argparse.Namespace) -> Run:
    """Scrape node_exporter ``--warmup + --cycles`` times, every ``--interval`` seconds."""
    import shutil

    import httpx
    import psutil

    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if binary is None:
        raise RuntimeError("prometheus-node-exporter is not installed (Debian package)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    run = Run("node_exporter", float("nan"), [], [], float("nan"))
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        p = psutil.Process(proc.pid)
        headers = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"}
        with httpx.Client(timeout=30, headers=headers) as http:
            next_t = time.monotonic()
            cpu0 = 0.0
            prev = _schedstat_s(proc.pid)
            for k in range(1, args.warmup + args.cycles + 1):
                time.sleep(max(0.0, next_t - time.monotonic()))
                next_t += args.interval
                started = time.perf_counter()
                resp = http.get(url)
                wall = time.perf_counter() - started
                resp.raise_for_status()
                cpu, now = _cpu(p), _schedstat_s(proc.pid)
                if k == args.warmup:
                    cpu0 = cpu
                elif k > args.warmup:
                    each = now - prev if now is not None and prev is not None else None
                    run.cpu_each_s.append(each if each is not None and each >= 0 else float("nan"))
                    run.rss_bytes.append(float(p.memory_info().rss))
                    run.wall_s.append(wall)
                    lines = resp.text.splitlines()
                    run.samples.append(sum(1 for s in lines if s and not s.startswith("#")))
                prev = now
            run.cpu_per_cycle_s = (_cpu(p) - cpu0) / args.cycles
            run.notes.append(
                f"last scrape: {len(resp.content):,} bytes of text, "
                f"{resp.num_bytes_downloaded:,} gzipped; {binary}"
            )
        idle0, started = _cpu(p), time.monotonic()
        time.sleep(args.idle)
        run.idle_s = time.monotonic() - started
        run.idle_core_pct = 100 * (_cpu(p) - idle0) / run.idle_s
        _memory_note(proc.pid, run)
    finally:
        proc.terminate()
        proc.wait(30)
    return run


def profile(node: str, root: Path, devices: Path, push_url: str, tmp: Path, cycles: int) -> None:
    """cProfile ``cycles`` cycles (after 3 unmeasured) of the simulated node's agent, in this
    process; print the 15 functions with the most own time."""
    import cProfile
    import logging
    import pstats

    from fleetscope.agent import Agent, default_collectors
    from fleetscope.config import AgentConfig
    from fleetscope.simulate.nvml import FakeDevice, FakeNVML

    logging.getLogger("fleetscope").setLevel(logging.ERROR)  # once-only notes, seen above
    raw = json.loads(devices.read_text())
    nvml = FakeNVML(
        [
            FakeDevice(**{**d, "processes": [tuple(p) for p in d["processes"]],
                          "unsupported": set(d["unsupported"])})
            for d in raw
        ]
    )  # fmt: skip
    collectors = default_collectors(
        node,
        nvml=nvml,
        root=root,
        config=AgentConfig(kernel_log=KERNEL_LOG),
        statvfs=lambda _path: os.statvfs(root),
    )
    agent = Agent(node, collectors, push_url=push_url, wal_dir=tmp / "wal-profile")
    try:
        for _ in range(3):
            agent.run_cycle()
        profiler = cProfile.Profile(time.thread_time)  # CPU of this thread, not wall time
        started = time.thread_time()
        profiler.enable()
        for _ in range(cycles):
            agent.run_cycle()
        profiler.disable()
        took = time.thread_time() - started
    finally:
        agent.close()
    print(
        f"\ncProfile (timer: this thread's CPU time) of {cycles} cycles in process (run_cycle: "
        f"collect, encode, WAL append, POST), {1000 * took / cycles:.1f} ms CPU per cycle under "
        "the profiler; top 15 by own time:"
    )
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(15)


IMPORTS = (
    "numpy", "pydantic", "httpx", "prometheus_client", "pynvml", "cramjam", "google.protobuf",
    "fleetscope.store", "fleetscope.remotewrite", "fleetscope.agent", "fleetscope.cli",
)  # fmt: skip
BREAKDOWN = textwrap.dedent(
    """
    import importlib, json, sys
    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    rows = [["python", rss(), []]]
    for name in sys.argv[1:]:
        before, start = {m.split(".")[0] for m in sys.modules}, rss()
        importlib.import_module(name)
        tops = {m.split(".")[0] for m in sys.modules} - before - {name.split(".")[0]}
        new = sorted(m for m in tops if not m.startswith("_"))
        rows.append([name, rss() - start, new])
    print(json.dumps(rows))
    """
)


def memory_breakdown() -> None:
    """Print the resident memory each of the agent's imports adds, in a fresh interpreter (in
    this order: a module's share includes what it is first to import)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", BREAKDOWN, *IMPORTS], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    print("\nresident memory added by each import of the agent (MiB, fresh interpreter):")
    total = 0.0
    for name, mib, new in json.loads(out):
        total += mib
        also = f"  (also loads {', '.join(new[:12])}{' …' if len(new) > 12 else ''})" if new else ""
        print(f"  {name:<26}{mib:>6.1f}{total:>8.1f}{also}")


# ---------------------------------------------------------------------------- reporting


def _mrange(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median [min–max]`` of ``values`` × ``scale``."""
    clean = [v * scale for v in values if v == v]
    if not clean:
        return "n/a"
    med = statistics.median(clean)
    return f"{med:.{digits}f} [{min(clean):.{digits}f}–{max(clean):.{digits}f}]"


def _idle(run: Run) -> str:
    """The idle cost, or ``<`` one psutil tick over the window when none was counted."""
    if run.idle_core_pct == 0:
        return f"<{100 / os.sysconf('SC_CLK_TCK') / run.idle_s:.2f}"
    return f"{run.idle_core_pct:.2f}"


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def report(runs: Sequence[Run], args: argparse.Namespace) -> bool:
    """Print the table and the verdicts; ``True`` when every agent met both targets."""
    print(
        f"\n{args.cycles} cycles/scrapes every {args.interval:g} s after {args.warmup} warm-up; "
        "CPU = user + system, all threads; cost at 15 s = CPU per cycle / 15 s"
    )
    header = (
        f"{'':<30}{'CPU ms/cycle':>13}{'ms/cycle med [range]':>24}{'% core @15s':>12}"
        f"{'idle %core':>11}{'RSS MiB med [range]':>24}{'peak MiB':>9}{'samples':>9}"
        f"{'wall ms med [range]':>22}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        print(
            f"{r.name:<30}{1000 * r.cpu_per_cycle_s:>13.1f}{_mrange(r.cpu_each_s, 1000):>24}"
            f"{r.core_pct_at_15s:>12.3f}{_idle(r):>11}"
            f"{_mrange(r.rss_bytes, 1 / MIB):>24}{r.hwm_bytes / MIB:>9.1f}"
            f"{statistics.median(r.samples) if r.samples else 0:>9.0f}"
            f"{_mrange(r.wall_s, 1000):>22}"
        )
    for r in runs:
        if r.cycle_s:
            print(f"\n{r.name}: fleet_agent_cycle_seconds {_mrange(r.cycle_s, 1000, 2)} ms; "
                  "per collector (median [range] ms): " + ", ".join(
                      f"{c} {_mrange(v, 1000, 2)}" for c, v in r.collectors.items()))  # fmt: skip
        for note in r.notes:
            print(f"  {r.name}: {note}")
    ok = True
    exporter = next((r for r in runs if r.name == "node_exporter"), None)
    print(f"\ntargets: ≤ {TARGET_CORE_PCT} % of one core at 15 s, ≤ {TARGET_RSS_MIB:.0f} MiB RSS "
          "(peak)")  # fmt: skip
    for r in runs:
        if r is exporter:
            continue
        cpu_ok = r.core_pct_at_15s <= TARGET_CORE_PCT
        rss_ok = r.hwm_bytes / MIB <= TARGET_RSS_MIB
        ok = ok and cpu_ok and rss_ok
        line = (
            f"  {r.name}: CPU {'PASS' if cpu_ok else 'FAIL'} ({r.core_pct_at_15s:.3f} %), "
            f"RSS {'PASS' if rss_ok else 'FAIL'} (peak {r.hwm_bytes / MIB:.1f} MiB, "
            f"steady {statistics.median(r.rss_bytes) / MIB:.1f} MiB)"
        )
        if exporter is not None:
            line += (
                f"; agent / node_exporter: CPU per cycle/scrape "
                f"{r.cpu_per_cycle_s / exporter.cpu_per_cycle_s:.2f}×, steady RSS "
                f"{statistics.median(r.rss_bytes) / statistics.median(exporter.rss_bytes):.2f}×"
            )
        print(line)
    return ok


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=40, help="measured cycles/scrapes each")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured cycles/scrapes first")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between cycles")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured")
    parser.add_argument(
        "--sink",
        choices=["fleetscope", "null"],
        default="fleetscope",
        help="remote-write receiver: Fleetscope's ingest on DuckDB, or a bare 204",
    )
    parser.add_argument(
        "--skip", choices=["sim", "real", "node_exporter"], action="append", help="leave a row out"
    )
    parser.add_argument("--profile", action="store_true", help="profile even when targets pass")
    parser.add_argument("--profile-cycles", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--devices", help=argparse.SUPPRESS)
    parser.add_argument("--push-url", help=argparse.SUPPRESS)
    parser.add_argument("--wal-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.cycles < 1 or args.warmup < 1:
        parser.error("--cycles and --warmup must be at least 1")
    skip = set(args.skip or [])

    print(f"before: {load_average()}", flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="fleetscope-bench-agent-") as name:
        tmp = Path(name)
        node, root, devices, source = simulated_node(tmp)
        print(f"simulated node {node}: 8 GPUs, root files from {source}", flush=True)
        with sink(args.sink, tmp) as push_url:
            print(f"sink: {args.sink} at {push_url}", flush=True)
            if "sim" not in skip:
                print("agent on the simulated node …", flush=True)
                run = measure_agent(f"agent, sim {node}", node, root, devices, push_url, tmp, args)
                run.notes.insert(0, f"root files from {source}")
                runs.append(run)
            if "real" not in skip:
                print("agent on / …", flush=True)
                host = f"bench-{socket.gethostname()}"
                runs.append(measure_agent("agent, real / (no GPU)", host, Path("/"), None,
                                          push_url, tmp, args))  # fmt: skip
            if "node_exporter" not in skip:
                print("node_exporter …", flush=True)
                runs.append(measure_node_exporter(args))
            print(f"after: {load_average()}")
            ok = report(runs, args)
            if not ok or args.profile:
                memory_breakdown()
                profile(node, root, devices, push_url, tmp, args.profile_cycles)


if __name__ == "__main__":
    main()
