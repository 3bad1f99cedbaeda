"""A whole node: ``default_collectors`` over one root tree (GPUs, prolog files, /proc, sysfs,
a kernel log), an agent pushing to a real ingest edge, samples and an XID event stored.

The root merges the fixture trees of every reader's own tests, so this checks the wiring (each
collector constructed, run, and delivered through remote-write and the events intake), not the
parsing, which the readers' tests pin value by value.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fleetscope.agent import Agent, default_collectors
from fleetscope.config import AgentConfig
from fleetscope.ingest.receiver import make_router
from fleetscope.simulate.nvml import FakeDevice, FakeNVML
from fleetscope.store import Matcher
from fleetscope.store.duckdb import DuckDBStore

DATA = Path(__file__).resolve().parents[1] / "data" / "collect"
H100 = "NVIDIA H100 80GB HBM3"
XID_79 = (
    "Nov 28 10:00:05 node1 kernel: [ 1241.000000] NVRM: Xid (PCI:0000:18:00): 79, pid=4242, "
    "name=python3, GPU has fallen off the bus.\n"
)


def merged_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for tree in ("attribution/node1", "disk/node1", "host/node1", "net/node1", "infiniband/node1"):
        shutil.copytree(DATA / tree, root, dirs_exist_ok=True)
    (root / "var" / "log").mkdir(parents=True)
    (root / "var" / "log" / "kern.log").write_text("Nov 28 09:59:00 node1 kernel: booted\n")
    return root


class StatVFS:
    f_frsize, f_blocks, f_bavail = 4096, 1_000_000, 250_000


def test_every_collector_of_a_node_reaches_the_store(
    tmp_path: Path, asgi_server: Callable[[Any], str]
) -> None:
    store = DuckDBStore(tmp_path / "m.duckdb")
    app = FastAPI()
    app.include_router(make_router(store, store))
    base = asgi_server(app)
    root = merged_root(tmp_path)
    nvml = FakeNVML(
        [
            FakeDevice(0, "GPU-aaa", H100, gpu_util_pct=50, processes=[(4242, 1 << 30)]),
            FakeDevice(1, "GPU-bbb", H100),
        ]
    )
    config = AgentConfig(kernel_log="/var/log/kern.log")
    collectors = default_collectors(
        "node1", nvml=nvml, root=root, config=config, statvfs=lambda _path: StatVFS()
    )
    agent = Agent("node1", collectors, push_url=f"{base}/api/v1/write")
    try:
        agent.run_cycle(1_700_000_000_000)
        with (root / "var" / "log" / "kern.log").open("a") as log:
            log.write(XID_79)  # after the first cycle: the collector tails from the end
        agent.run_cycle(1_700_000_015_000)
        assert agent.queue is not None and len(agent.queue) == 0, "everything acknowledged"
    finally:
        agent.close()

    up = {
        s.labels["collector"]: float(s.values[-1])
        for s in store.select([Matcher("__name__", "=", "fleet_agent_collector_up")], 0, 2**62)
    }
    assert up == {c: 1.0 for c in ("gpu", "attribution", "xid", "host", "disk", "nfs", "net",
                                   "infiniband")}  # fmt: skip
    stored = {labels["__name__"] for labels in store.series([Matcher("node", "=", "node1")])}
    for metric in (
        "fleet_gpu_utilization_ratio",
        "fleet_gpu_allocation",
        "fleet_gpu_process_memory_bytes",
        "fleet_node_load1",
        "fleet_node_memory_total_bytes",
        "fleet_disk_read_bytes_total",
        "fleet_filesystem_avail_bytes",
        "fleet_network_receive_bytes_total",
        "fleet_network_speed_bytes",
        "fleet_infiniband_port_receive_bytes_total",
        "fleet_infiniband_port_rate_bytes",
        "fleet_gpu_xid_errors_total",
    ):
        assert metric in stored, metric
    (xid,) = store.select([Matcher("__name__", "=", "fleet_gpu_xid_errors_total")], 0, 2**62)
    assert xid.labels["gpu_uuid"] == "GPU-aaa" and xid.labels["xid"] == "79"
    assert xid.values.tolist() == [1.0]
    (event,) = store.events(kinds=["xid"])
    assert event.attrs["gpu_uuid"] == "GPU-aaa" and event.attrs["xid"] == 79
    # The job holding GPU 0 by its prolog file, with its user and team.
    assert (event.attrs["job"], event.attrs["user"], event.attrs["team"]) == (
        "1234",
        "alice",
        "nlp",
    )
    store.close()
