"""`fleetscope up` end to end, as a user runs it: a real process, a real port, real agents.

Acceptance of the spine: the usage API computed from stored metrics agrees with the simulator's
own ledger within 1 % for every team; stopping and starting again keeps the history and does not
backfill a second time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "fleetscope.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    args = [*CLI, "up", "--data", str(data), "--port", str(port), "--gpus", "16", "--history", "2d"]
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"fleetscope up exited early:\n{log.read_text()}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"fleetscope up never became healthy:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def _ledger(data: Path, window: str) -> dict[str, float]:
    out = subprocess.run(
        [*CLI, "simulate", "ledger", "--data", str(data), "--window", window, "--by", "team"],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def test_up_serves_usage_that_matches_the_ledger_and_restarts_without_backfill(
    tmp_path: Path,
) -> None:
    data, log, port = tmp_path / "data", tmp_path / "up.log", free_port()
    proc = _start(data, port, log)
    try:
        _wait_healthy(port, proc, log)
        token = (data / "admin.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        # the live loop pushes through the real remote-write path: wait for its first tick
        state = json.loads((data / "simulation.json").read_text())
        first_live = state["until_ms"]
        deadline = time.monotonic() + 60
        while json.loads((data / "simulation.json").read_text())["until_ms"] == first_live:
            assert time.monotonic() < deadline, "no live tick within 60 s"
            time.sleep(0.5)
        usage = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/fleet/usage",
            params={"window": "1d", "by": "team"}, headers=auth, timeout=30,
        ).json()  # fmt: skip
        truth = _ledger(data, "1d")
        assert set(usage) == set(truth)
        assert sum(truth.values()) > 10  # the fleet did run work
        for team, hours in truth.items():
            assert abs(usage[team] - hours) <= 0.01 * max(hours, 1.0), (team, usage, truth)
        page = httpx.get(f"http://127.0.0.1:{port}/", headers=auth, timeout=30)
        assert page.status_code == 200 and "Fleet GPU utilization" in page.text
    finally:
        _stop(proc)
    assert "backfilling 2d of 16 GPUs" in log.read_text()

    log.write_text("")
    proc = _start(data, port, log)
    try:
        _wait_healthy(port, proc, log)
        text = log.read_text()
        assert "backfilling" not in text
        assert "reusing the stored history" in text or "filling the" in text
        token_again = (data / "admin.token").read_text().strip()
        assert token_again == token
        usage = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/fleet/usage",
            params={"window": "2d"}, headers={"Authorization": f"Bearer {token}"}, timeout=30,
        ).json()  # fmt: skip
        assert sum(usage.values()) > 10  # the history from the first run is still there
    finally:
        _stop(proc)


def test_up_refuses_a_different_fleet_on_the_same_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    state = {"gpus": 64, "seed": 0, "origin_ms": 0, "until_ms": 0, "calibration": None}
    (data / "simulation.json").write_text(json.dumps(state))
    out = subprocess.run(
        [*CLI, "up", "--data", str(data), "--gpus", "8", "--port", str(free_port())],
        capture_output=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 2
    assert b"holds a simulation of 64 GPUs" in out.stderr
