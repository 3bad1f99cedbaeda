"""``fleetscope top`` rendered into a recording Rich console, from the embedded evaluator and
from a real Fleetscope server over HTTP (PromQL to ``/api/v1/query`` with the bearer token)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fleetscope import top
from fleetscope.analyze import nodes as an
from fleetscope.query import QueryError, QueryResult
from fleetscope.query.engine import Evaluator
from fleetscope.store import FakeMetricStore, FakeRecordStore, SampleBatch
from fleetscope.web.app import WebSettings, create_app

T0 = 1_700_006_400_000
AT = T0 + 5 * 60_000
GIB = 2**30

Row = tuple[Mapping[str, str], int, float]


def gauge(name: str, labels: Mapping[str, str], value: float) -> list[Row]:
    return [({"__name__": name, **labels}, t, value) for t in range(T0, AT + 1, 15_000)]


def gpu(node: str, index: str) -> dict[str, str]:
    return {"node": node, "gpu": index, "gpu_uuid": f"GPU-{node}-{index}",
            "gpu_model": "NVIDIA A100-SXM4-80GB"}  # fmt: skip


def alloc(g: Mapping[str, str], job: str, team: str, user: str) -> list[Row]:
    labels = {**g, "job": job, "team": team, "user": user, "workload": "training",
              "tier": "production"}  # fmt: skip
    return gauge("fleet_gpu_allocation", labels, 1)


def fleet() -> list[Row]:
    """n1: GPU 0 busy (vision), GPU 1 idle (llm); n2: GPU 0 lost, GPU 1 free."""
    a0, a1, b0, b1 = gpu("n1", "0"), gpu("n1", "1"), gpu("n2", "0"), gpu("n2", "1")
    return [
        *gauge("fleet_gpu_up", a0, 1), *gauge("fleet_gpu_up", a1, 1),
        *gauge("fleet_gpu_up", b0, 0), *gauge("fleet_gpu_up", b1, 1),
        *gauge("fleet_gpu_utilization_ratio", a0, 0.9),
        *gauge("fleet_gpu_utilization_ratio", a1, 0.02),
        *gauge("fleet_gpu_utilization_ratio", b1, 0.0),
        *gauge("fleet_gpu_memory_used_bytes", a0, 72 * GIB),
        *gauge("fleet_gpu_memory_used_bytes", a1, 8 * GIB),
        *gauge("fleet_gpu_memory_used_bytes", b1, 0),
        *gauge("fleet_gpu_memory_total_bytes", a0, 80 * GIB),
        *gauge("fleet_gpu_memory_total_bytes", a1, 80 * GIB),
        *gauge("fleet_gpu_memory_total_bytes", b1, 80 * GIB),
        *gauge("fleet_gpu_temperature_celsius", a0, 71),
        *gauge("fleet_gpu_temperature_celsius", a1, 40),
        *gauge("fleet_gpu_power_watts", a0, 390),
        *gauge("fleet_gpu_power_watts", a1, 80),
        *gauge("fleet_gpu_power_watts", b1, 60),
        *alloc(a0, "train-7", "vision", "ana"), *alloc(a1, "ft-3", "llm", "li"),
        *gauge("fleet_node_cpu_utilization_ratio", {"node": "n1"}, 0.42),
        *gauge("fleet_node_memory_used_bytes", {"node": "n1"}, 128 * GIB),
        *gauge("fleet_node_memory_total_bytes", {"node": "n1"}, 512 * GIB),
        *gauge("fleet_node_load1", {"node": "n1"}, 17.25),
        *gauge("fleet_node_cpu_utilization_ratio", {"node": "n2"}, 0.03),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def engine() -> Evaluator:
    store = FakeMetricStore()
    store.append(SampleBatch.from_rows(fleet()))
    return Evaluator(store)


def console(terminal: bool = False) -> Console:
    return Console(record=True, width=120, color_system=None, force_terminal=terminal)


def lines(c: Console) -> list[str]:
    return [line.rstrip() for line in c.export_text(clear=False).splitlines()]


def test_one_frame_groups_gpus_under_their_nodes_with_totals(engine: Evaluator) -> None:
    c = console()
    assert top.run("http://unused", None, once=True, console=c, engine=engine,
                   clock=lambda: AT / 1000) == 0  # fmt: skip
    out = lines(c)
    assert out[0] == "fleetscope top  2023-11-15 00:05:00 UTC"
    assert out[1].split() == ["GPU", "util", "memory", "GiB", "temp", "power", "job", "user",
                              "team"]  # fmt: skip
    assert out[2:9] == [
        "n1  CPU 42%  mem 128.0/512.0 GiB  load 17.2  GPUs 2/2 up, 2 allocated",
        "0      █████████░  90%  █████████░  90%    72.0/80.0    71C    390W  train-7         ana"
        "         vision",
        "1      ░░░░░░░░░░   2%  █░░░░░░░░░  10%     8.0/80.0    40C     80W  ft-3            li"
        "          llm",
        "n2  CPU 3%  mem –/– GiB  load –  GPUs 1/2 up, 0 allocated",
        "0      down",
        "1      ░░░░░░░░░░   0%  ░░░░░░░░░░   0%     0.0/80.0      –     60W  free",
        "4 GPUs on 2 nodes: 3 up, 2 allocated, mean util 31%, memory 80.0/240.0 GiB, power 0.5 kW",
    ]
    assert out[9] == "top teams: llm 1 GPUs (2%)  vision 1 GPUs (90%)"


def test_the_team_filter_keeps_its_gpus_and_their_nodes(engine: Evaluator) -> None:
    c = console()
    top.run("http://unused", None, team="vision", once=True, console=c, engine=engine,
            clock=lambda: AT / 1000)  # fmt: skip
    text = "\n".join(lines(c))
    assert "team vision" in lines(c)[0]
    assert "train-7" in text and "ft-3" not in text and "n2" not in text
    assert "1 GPUs on 1 nodes: 1 up, 1 allocated, mean util 90%" in text
    assert "top teams: vision 1 GPUs (90%)" in text


def test_json_prints_the_frame_data(engine: Evaluator) -> None:
    c = console()
    assert top.run("http://unused", None, as_json=True, console=c, engine=engine,
                   clock=lambda: AT / 1000) == 0  # fmt: skip
    data = json.loads(c.export_text())
    assert [n["node"] for n in data["nodes"]] == ["n1", "n2"]
    assert [(g["node"], g["index"], g["up"]) for g in data["gpus"]] == [
        ("n1", "0", True), ("n1", "1", True), ("n2", "0", False), ("n2", "1", True),
    ]  # fmt: skip
    assert data["gpus"][0]["allocations"][0]["team"] == "vision"
    assert (data["gpus_up"], data["gpus_allocated"]) == (3, 2)
    assert data["teams"] == [
        {"team": "llm", "gpus": 1, "utilization": 0.02},
        {"team": "vision", "gpus": 1, "utilization": 0.9},
    ]
    assert "# gpus\n" in data["promql"] and "fleet_gpu_allocation" in data["promql"]


class Flaky:
    """Answers from ``engine``; fails the queries of frame ``fail_frame`` and stops the loop
    with Ctrl-C when frame ``stop_frame`` starts (a frame begins with the inventory's first
    query)."""

    def __init__(self, engine: Evaluator, fail_frame: int, stop_frame: int) -> None:
        self.engine, self.fail_frame, self.stop_frame = engine, fail_frame, stop_frame
        self.frames = 0
        self.first = next(iter(an.promql_inventory().values()))

    def instant(self, query: str, t_ms: int) -> QueryResult:
        if query == self.first:
            self.frames += 1
        if self.frames == self.stop_frame:
            raise KeyboardInterrupt
        if self.frames == self.fail_frame:
            raise QueryError("unavailable", "server went away")
        return self.engine.instant(query, t_ms)


def test_a_failing_query_is_exit_status_1(engine: Evaluator) -> None:
    c = console()
    flaky = Flaky(engine, fail_frame=1, stop_frame=99)
    assert top.run("http://unused", None, once=True, console=c, engine=flaky) == 1  # type: ignore[arg-type]
    assert lines(c) == ["fleetscope top: unavailable: server went away"]


def test_live_mode_redraws_until_ctrl_c_and_survives_a_failure(engine: Evaluator) -> None:
    c = console(terminal=True)  # so that Live draws every frame, not only the last
    flaky = Flaky(engine, fail_frame=2, stop_frame=4)
    status = top.run("http://unused", None, refresh_s=0, console=c, engine=flaky,  # type: ignore[arg-type]
                     clock=lambda: AT / 1000)  # fmt: skip
    assert status == 0 and flaky.frames == 4
    text = c.export_text()
    assert "server went away" in text and text.count("top teams:") >= 2


def test_bar() -> None:
    assert top.bar(0.3).plain == "███░░░░░░░  30%"
    assert top.bar(1.7).plain == "██████████ 100%"
    assert top.bar(None).plain == "··········    –"


# ----------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    serve_app: Callable[[Any], AbstractContextManager[str]],
) -> Iterator[tuple[str, str]]:
    """A Fleetscope server over the same fleet: (base URL, admin token)."""
    store = FakeMetricStore()
    store.append(SampleBatch.from_rows(fleet()))
    data: Path = tmp_path_factory.mktemp("data")
    app = create_app(WebSettings(data_dir=data), store, FakeRecordStore())
    with serve_app(app) as url:
        yield url, app.state.admin_token.value


def test_top_reads_a_fleetscope_server_with_the_token(server: tuple[str, str]) -> None:
    url, token = server
    c = console()
    assert top.run(url, token, once=True, console=c, clock=lambda: AT / 1000) == 0
    text = "\n".join(lines(c))
    assert "n1  CPU 42%" in text and "train-7" in text
    assert "4 GPUs on 2 nodes: 3 up, 2 allocated" in text


def test_without_the_token_the_server_refuses(server: tuple[str, str]) -> None:
    url, _ = server
    c = console()
    assert top.run(url, "wrong", once=True, console=c, clock=lambda: AT / 1000) == 1
    assert lines(c)[0].startswith("fleetscope top: ")


def test_the_cli_command_reads_the_token_file_of_the_data_directory(
    server: tuple[str, str], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from fleetscope.cli import app

    url, token = server
    (tmp_path / "admin.token").write_text(token + "\n", encoding="utf-8")
    runner = CliRunner()
    args = ["top", "--url", url, "--data", str(tmp_path)]
    ok = runner.invoke(app, [*args, "--json"], env={"FLEETSCOPE_TOKEN": None})
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["team"] is None  # one frame's data (now: older than the fleet)
    (tmp_path / "admin.token").write_text("wrong\n", encoding="utf-8")
    refused = runner.invoke(app, [*args, "--once"], env={"FLEETSCOPE_TOKEN": None})
    assert refused.exit_code == 1
    assert "fleetscope top: " in refused.output
