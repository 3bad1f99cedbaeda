"""Loss-free delivery end to end: real `fleetscope agent` and `fleetscope server` processes,
killed with SIGKILL at awkward moments, with the agent's on-disk WAL in between.

The agent runs on a fixture node root (no NVML here, so its samples are the attribution
collector's and its own health series, ``fleet_agent_cycle_seconds`` among them: one sample per
cycle, stamped with the cycle's time). With ``-v`` it logs ``queued cycle <t_ms>`` after each
batch is in the WAL: every logged cycle must arrive, once, in order. A cycle can be in the WAL
and not yet logged when the process dies, so up to one unlogged cycle per stopped process may
arrive too.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetscope import remotewrite
from fleetscope.wal import WAL

CLI = [sys.executable, "-m", "fleetscope.cli"]
NODE_ROOT = Path(__file__).resolve().parents[1] / "data" / "collect" / "attribution" / "node1"
QUEUED = re.compile(r"queued cycle (\d+): ")
PENDING = re.compile(r"WAL \S+: (\d+) entries pending")
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], object], what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{what}: the process exited\n{proc.log()[-3000:]}")
        if time.monotonic() > deadline:
            detail = proc.log()[-3000:] if proc else ""
            raise AssertionError(f"timed out waiting for {what}\n{detail}")
        time.sleep(0.05)


@dataclass
class Proc:
    """A started CLI process and its log file."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def queued(self) -> list[int]:
        """The cycles it reported in its WAL, in order."""
        return [int(t) for t in QUEUED.findall(self.log())]

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def interrupt(self) -> None:
        """Ctrl-C, as a user or systemd (KillSignal=SIGINT) stops it."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            self.popen.wait(30)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLEETSCOPE_")}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Factory: ``spawn(name, *args)`` runs ``fleetscope *args`` in ``tmp_path``, logging to
    ``name.log``; whatever is still running at the end is killed."""
    procs: list[Proc] = []

    def start(name: str, *args: str) -> Proc:
        log_path = tmp_path / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [*CLI, *args], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=_env()
            )
        procs.append(Proc(popen, log_path))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.popen.poll() is None:
            proc.kill9()


def agent_args(url: str, wal_dir: Path, *extra: str) -> list[str]:
    return ["agent", "--node", "e2e", "--root", str(NODE_ROOT), "--push", url,
            "--wal-dir", str(wal_dir), "--interval", "200ms", "-v", *extra]  # fmt: skip


# -- a test receiver -------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """A remote-write endpoint on ``port`` that records each accepted batch's timestamp.

    With ``hang`` it records the first request and never answers it (until ``release``): the
    sender is left mid-send."""

    daemon_threads = True

    def __init__(self, port: int, *, hang: bool = False) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.hang = hang
        self.times: list[int] = []
        self.caught = threading.Event()
        self.release = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        batch = remotewrite.decode(body)
        self.server.times.append(int(batch.t_ms[0]))
        if self.server.hang:
            self.server.caught.set()
            self.server.release.wait(30)
            self.close_connection = True
            return
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_an_agent_killed_mid_send_during_an_outage_loses_nothing(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    port, wal_dir = free_port(), tmp_path / "wal"
    url = f"http://127.0.0.1:{port}/api/v1/write"
    first = spawn("agent-1", *agent_args(url, wal_dir))
    wait_until(lambda: len(first.queued()) >= 4, "cycles queued while nothing listens", first)
    hanging = Receiver(port, hang=True)
    try:
        assert hanging.caught.wait(WAIT_S), first.log()[-3000:]  # a POST is in flight …
        first.kill9()  # … and the agent dies before it hears back
    finally:
        hanging.close()
    run1 = first.queued()
    assert hanging.times == [run1[0]]  # the oldest batch, unacknowledged

    second = spawn("agent-2", *agent_args(url, wal_dir))
    wait_until(lambda: len(second.queued()) >= 2, "cycles queued after the restart", second)
    assert "entries pending" in second.log()
    receiver = Receiver(port)  # the endpoint is back
    try:
        expected = set(run1) | set(second.queued())
        wait_until(lambda: expected <= set(receiver.times), "every queued cycle", second)
        second.interrupt()
    finally:
        receiver.close()
    run2 = second.queued()
    got = receiver.times
    assert got == sorted(set(got))  # in order, each once
    assert set(run1) <= set(got) and set(run2[:2]) <= set(got)
    unlogged = set(got) - set(run1) - set(run2)
    assert len(unlogged) <= 1 and all(run1[-1] < t < run2[0] for t in unlogged)
    assert first.popen.returncode == -signal.SIGKILL


# -- against a real fleetscope server ------------------------------------------------------------


def start_server(spawn: Callable[..., Proc], name: str, data: Path, port: int) -> Proc:
    server = spawn(name, "server", "--data", str(data), "--port", str(port))

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, f"{name} to answer /healthz", server)
    return server


def stored(port: int, token: str) -> list[int]:
    """Timestamps of every stored ``fleet_agent_cycle_seconds`` sample of the test node."""
    result = query(port, token, 'fleet_agent_cycle_seconds{node="e2e"}[10m]')
    if not result:
        return []
    (series,) = result
    return [round(float(t) * 1000) for t, _ in series["values"]]


def query(port: int, token: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql},
        headers={"Authorization": f"Bearer {token}"}, timeout=10,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_a_server_killed_mid_push_keeps_what_it_acknowledged_and_stores_resends_once(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    data, wal_dir, port = tmp_path / "data", tmp_path / "wal", free_port()
    url = f"http://127.0.0.1:{port}/api/v1/write"
    server = start_server(spawn, "server-1", data, port)
    token = (data / "admin.token").read_text().strip()
    agent = spawn("agent-1", *agent_args(url, wal_dir, "--token", token))
    wait_until(lambda: len(stored(port, token)) >= 5, "samples stored", agent)
    server.kill9()  # the agent pushes every 200 ms: this lands mid-push or between pushes
    during = len(agent.queued())
    wait_until(lambda: len(agent.queued()) >= during + 3, "cycles queued while down", agent)
    start_server(spawn, "server-2", data, port)  # same data directory, same port
    seen = agent.queued()
    wait_until(lambda: set(seen) <= set(stored(port, token)), "the outage's cycles", agent)
    agent.interrupt()
    run1 = agent.queued()

    # lose the WAL's position file, as a power cut may (it is not fsynced): the restarted agent
    # sends every batch still in its segment again, all of them already stored
    (wal_dir / "ack.json").unlink()
    again = spawn("agent-2", *agent_args(url, wal_dir, "--token", token))
    wait_until(lambda: len(again.queued()) >= 3, "cycles of the restarted agent", again)
    resent = int(PENDING.findall(again.log())[0])
    assert resent >= len(run1)
    seen = again.queued()
    wait_until(lambda: set(seen) <= set(stored(port, token)), "the restarted agent's cycles", again)
    again.interrupt()

    times = stored(port, token)
    assert times == sorted(set(times))  # no sample stored twice
    (count,) = query(port, token, 'count_over_time(fleet_agent_cycle_seconds{node="e2e"}[10m])')
    assert float(count["value"][1]) == len(times)
    run2 = again.queued()
    assert set(run1) | set(seen) <= set(times)
    assert len(set(times) - set(run1) - set(run2)) <= 2  # at most one unlogged cycle per stop


def test_the_agent_command_refuses_a_bad_size_and_a_wal_held_by_another_agent(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1/write"
    bad = spawn("bad-size", *agent_args(url, tmp_path / "wal", "--wal-max-bytes", "lots"))
    assert bad.popen.wait(60) == 2
    assert "is not a size" in bad.log()
    with WAL(tmp_path / "wal"):
        held = spawn("held", *agent_args(url, tmp_path / "wal"))
        assert held.popen.wait(60) == 2
    assert "cannot open the write-ahead log" in held.log() and "in use" in held.log()
