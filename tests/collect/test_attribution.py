"""Attribution from a captured node tree: prolog files under run/gpustat and a fake /proc."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest

from fleetscope.collect.attribution import (
    AllocationCollector,
    ProcessOwner,
    job_of_pid,
    passwd_name,
    read_gpustat,
)
from fleetscope.collect.gpu import GPUCollector, GPUIdentity
from fleetscope.simulate.nvml import FakeDevice, FakeNVML

ROOT = Path(__file__).resolve().parents[1] / "data" / "collect" / "attribution" / "node1"
H100 = "NVIDIA H100 80GB HBM3"
GPUS = {i: GPUIdentity(i, f"GPU-{i:04d}", H100) for i in range(4)}  # GPU 7 is unknown
PASSWD = {1000: "alice", 1001: "bob"}


def collector(root: Path = ROOT) -> AllocationCollector:
    return AllocationCollector(
        "node1", GPUS, root=root, team_map={"vision": "cv"}, user_of_uid=PASSWD.get
    )


def allocations(c: AllocationCollector) -> dict[str, dict[str, str]]:
    out = {}
    for s in c.collect():
        assert s.name == "fleet_gpu_allocation" and s.value == 1.0
        out[s.labels["gpu"]] = dict(s.labels)
    return out


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        pytest.param(
            "0",
            {
                "job": "1234",
                "user": "alice",
                "team": "nlp",
                "workload": "training",
                "tier": "production",
            },
            id="all-keys",
        ),
        pytest.param(
            "1",
            {
                "job": "1235",
                "user": "bob",
                "team": "cv",
                "workload": "batch",
                "tier": "experimentation",
            },
            id="uid-lookup-team-map-unknown-partition-and-qos",
        ),
        pytest.param(
            "2",
            {
                "job": "1236",
                "user": "4242",
                "team": "unknown",
                "workload": "unknown",
                "tier": "unknown",
            },
            id="jobstats-line-only",
        ),
    ],
)
def test_allocation_labels(gpu: str, expected: dict[str, str]) -> None:
    labels = allocations(collector())[gpu]
    assert labels == {
        "node": "node1",
        "gpu": gpu,
        "gpu_uuid": f"GPU-{int(gpu):04d}",
        "gpu_model": H100,
        **expected,
    }


def test_malformed_unknown_gpu_and_stray_files_are_skipped() -> None:
    # 3 is empty, 7 has no known identity, README is not a GPU index
    assert sorted(allocations(collector())) == ["0", "1", "2"]


def test_gpus_may_come_from_the_gpu_collector(tmp_path: Path) -> None:
    shutil.copytree(ROOT, tmp_path / "root")
    nvml = FakeNVML([FakeDevice(0, "GPU-aaa", H100), FakeDevice(1, "GPU-bbb", H100, lost=True)])
    gpu = GPUCollector("node1", nvml)
    c = AllocationCollector("node1", gpu.identities, root=tmp_path / "root")
    assert {g: a["gpu_uuid"] for g, a in allocations(c).items()} == {"0": "GPU-aaa"}


def test_no_prolog_directory_means_no_allocations(tmp_path: Path) -> None:
    assert collector(tmp_path).collect() == []


def test_the_epilog_removing_a_file_ends_the_allocation(tmp_path: Path) -> None:
    shutil.copytree(ROOT, tmp_path / "root")
    c = collector(tmp_path / "root")
    assert "0" in allocations(c)
    (tmp_path / "root" / "run" / "gpustat" / "0").unlink()
    assert "0" not in allocations(c)


def test_read_gpustat_jobstats_format(tmp_path: Path) -> None:
    path = tmp_path / "5"
    path.write_text("987654 1002\n")
    alloc = read_gpustat(path)
    assert alloc is not None
    assert (alloc.gpu, alloc.job, alloc.uid, alloc.user, alloc.account) == (
        5,
        "987654",
        1002,
        None,
        None,
    )
    assert read_gpustat(tmp_path / "6") is None  # vanished


def test_user_falls_back_to_passwd_of_this_host() -> None:
    assert passwd_name(0) == "root"
    assert passwd_name(2**31 - 7) is None


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        pytest.param(4242, ProcessOwner("1234", "alice"), id="cgroup-v2-and-environ"),
        pytest.param(4343, ProcessOwner("1235", "bob"), id="cgroup-v1-uid-no-environ"),
        pytest.param(4444, ProcessOwner("999", "carol"), id="environ-only"),
        pytest.param(4545, ProcessOwner("1234", "unknown"), id="environ-contradicts-cgroup"),
        pytest.param(9999, ProcessOwner("unknown", "unknown"), id="unknown-pid"),
    ],
)
def test_job_of_pid(pid: int, expected: ProcessOwner) -> None:
    assert job_of_pid(pid, ROOT, user_of_uid=PASSWD.get) == expected


def test_process_memory_series_get_job_and_user_and_unknown_pids_are_kept() -> None:
    nvml = FakeNVML([FakeDevice(0, "GPU-aaa", H100, processes=[(4242, 1 << 30), (9999, 4096)])])
    owner_of = functools.partial(job_of_pid, root=ROOT, user_of_uid=PASSWD.get)
    samples = GPUCollector("node1", nvml, owner_of=owner_of).collect()
    procs = {
        (s.labels["pid"], s.labels["job"], s.labels["user"]): s.value
        for s in samples
        if s.name == "fleet_gpu_process_memory_bytes"
    }
    assert procs == {("4242", "1234", "alice"): 1 << 30, ("9999", "unknown", "unknown"): 4096}
