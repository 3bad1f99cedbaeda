"""Attribution from a captured node tree: prolog files under run/gpustat and a fake /proc."""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from fleetscope.collect.attribution import (
    AllocationCollector,
    JobOwner,
    PodDirectory,
    PodInfo,
    ProcessOwner,
    job_of_pid,
    owner_of_pid,
    parse_pod_list,
    passwd_name,
    pod_uid_of_cgroup,
    read_gpustat,
)
from fleetscope.collect.gpu import GPUCollector, GPUIdentity, GPUProcess
from fleetscope.simulate.nvml import FakeDevice, FakeNVML

DATA = Path(__file__).resolve().parents[1] / "data" / "collect" / "attribution"
ROOT = DATA / "node1"  # Slurm node: prolog files by index, cgroup v1/v2 slurm processes
NODE2 = DATA / "node2"  # prolog files named by GPU UUID
K8S = DATA / "k8s-node"  # kubelet PodList + cgroup v1/v2 pod processes, no prolog files
PODS = K8S / "kubelet-pods.json"
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


# -- Slurm team, Kubernetes pods ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        pytest.param(4242, JobOwner("1234", "alice", "language"), id="account-through-team-map"),
        pytest.param(4343, JobOwner("1235", "bob", "unknown"), id="no-environ-no-account"),
        pytest.param(4545, JobOwner("1234", "unknown", "unknown"), id="contradicting-environ"),
        pytest.param(9999, JobOwner("unknown", "unknown", "unknown"), id="unknown-pid"),
    ],
)
def test_owner_of_pid_on_slurm(pid: int, expected: JobOwner) -> None:
    owner = owner_of_pid(pid, ROOT, user_of_uid=PASSWD.get, team_map={"nlp": "language"})
    assert owner == expected


def pods(**kw: Any) -> PodDirectory:
    return PodDirectory(PODS, **kw)


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        pytest.param(
            5001, JobOwner("bert-ft", "alice", "nlp"), id="v2-systemd-burstable-containerd-job"
        ),
        pytest.param(
            5002, JobOwner("resnet-sweep-lr3", "unknown", "cv"), id="v1-cgroupfs-legacy-job-label"
        ),
        pytest.param(
            5003,
            JobOwner("vllm-llama", "svc-inference", "inference"),
            id="v2-guaranteed-crio-deployment",
        ),
        pytest.param(
            5004, JobOwner("llama-ft", "bob", "nlp"), id="v1-systemd-besteffort-docker-pytorchjob"
        ),
        pytest.param(
            5005, JobOwner("scratch-notebook", "unknown", "default"), id="v2-bare-pod-name"
        ),
        pytest.param(5006, JobOwner("unknown", "unknown", "unknown"), id="pod-not-in-list"),
        pytest.param(5007, JobOwner("unknown", "unknown", "unknown"), id="host-daemon"),
    ],
)
def test_owner_of_pid_on_kubernetes(pid: int, expected: JobOwner) -> None:
    team_map = {"nlp-research": "nlp", "vision": "cv"}
    assert owner_of_pid(pid, K8S, pods=pods(), team_map=team_map) == expected


def test_job_of_pid_reads_pods_too() -> None:
    assert job_of_pid(5001, K8S, pods=pods()) == ProcessOwner("bert-ft", "alice")
    assert job_of_pid(5001, K8S) == ProcessOwner("unknown", "unknown")  # no directory given


@pytest.mark.parametrize(
    ("cgroup", "uid"),
    [
        pytest.param(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            "3f1c2b7e_9a4d_4c5e_8f60_1a2b3c4d5e6f.slice/cri-containerd-4d3e.scope\n",
            "3f1c2b7e-9a4d-4c5e-8f60-1a2b3c4d5e6f",
            id="systemd-underscores",
        ),
        pytest.param(
            "4:memory:/kubepods/besteffort/pod8E7D6C5B-4A39-4281-9706-F5E4D3C2B1A0/abc\n",
            "8e7d6c5b-4a39-4281-9706-f5e4d3c2b1a0",
            id="cgroupfs-uppercase",
        ),
        pytest.param(
            "0::/kubepods/burstable/pod6f1b9ad1c2c6e5b2f8b4a3b2f7d3c1e9/0123\n",
            "6f1b9ad1c2c6e5b2f8b4a3b2f7d3c1e9",
            id="static-pod-hash-uid",
        ),
        pytest.param(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            "kubelet-kubepods-besteffort-poda1b2c3d4_e5f6_4a7b_8c9d_0e1f2a3b4c5d.slice/x.scope",
            "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
            id="kind-nested-kubelet-slice",
        ),
        pytest.param("0::/system.slice/slurmstepd.scope/job_1234/step_0\n", None, id="slurm"),
        pytest.param("0::/user.slice/pod1234/podman.scope\n", None, id="not-kubepods"),
    ],
)
def test_pod_uid_of_cgroup(cgroup: str, uid: str | None) -> None:
    assert pod_uid_of_cgroup(cgroup) == uid


def test_pod_list_fields() -> None:
    listed = parse_pod_list(json.loads(PODS.read_text()))
    assert len(listed) == 5  # the pod without a uid is skipped
    assert listed["c0ffee00-1d2e-4f3a-8b9c-0d1e2f3a4b5c"] == PodInfo(
        uid="c0ffee00-1d2e-4f3a-8b9c-0d1e2f3a4b5c",
        namespace="inference",
        name="vllm-llama-7d4b9c8f6-x2x9q",
        job="vllm-llama",
        user="svc-inference",
    )
    custom = parse_pod_list(json.loads(PODS.read_text()), "prometheus.io/scrape")
    assert custom["c0ffee00-1d2e-4f3a-8b9c-0d1e2f3a4b5c"].user == "true"
    assert custom["3f1c2b7e-9a4d-4c5e-8f60-1a2b3c4d5e6f"].user is None
    with pytest.raises(ValueError, match="not a PodList"):
        parse_pod_list({"kind": "Pod", "metadata": {}})


def test_pod_directory_refreshes_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "pods.json"
    doc = json.loads(PODS.read_text())
    late = doc["items"].pop(0)  # bert-ft's pod is not running yet
    path.write_text(json.dumps(doc))
    now = [0.0]
    directory = PodDirectory(path, refresh_seconds=30, clock=lambda: now[0])
    uid = "3f1c2b7e-9a4d-4c5e-8f60-1a2b3c4d5e6f"
    assert directory.get(uid) is None and directory.loads == 1
    doc["items"].append(late)
    path.write_text(json.dumps(doc))
    now[0] = 29.0
    assert directory.get(uid) is None and directory.loads == 1  # a miss within the interval
    assert directory.get("8e7d6c5b-4a39-4281-9706-f5e4d3c2b1a0") is not None  # hits never load
    now[0] = 30.0
    pod = directory.get(uid.replace("-", "_").upper())
    assert pod is not None and pod.job == "bert-ft" and directory.loads == 2
    path.write_text("{broken")
    now[0] = 100.0
    assert directory.get("0d9c8b7a-6f5e-4d3c-9b2a-190817263544") is None
    assert directory.loads == 2 and directory.get(uid) == pod  # a failed load keeps the list
    path.unlink()
    assert directory.refresh() is False and directory.get(uid) == pod


class _Kubelet(BaseHTTPRequestHandler):
    body = PODS.read_bytes()

    def do_GET(self) -> None:
        if self.path != "/pods" or self.headers.get("Authorization") != "Bearer t0ken":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def kubelet(serve_handler: Any) -> Iterator[str]:
    with serve_handler(_Kubelet) as base:
        yield base


def test_pod_directory_from_the_kubelet_with_a_bearer_token(kubelet: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    directory = PodDirectory(f"{kubelet}/pods", token_file=token)
    pod = directory.get("5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e")
    assert pod is not None and (pod.namespace, pod.job, pod.user) == (
        "nlp-research",
        "llama-ft",
        "bob",
    )
    refused = PodDirectory(f"{kubelet}/pods")  # no token: 401, nothing known, no exception
    assert refused.refresh() is False and refused.pods == {}


# -- allocations from prolog files by UUID and from GPU processes ------------------------------


K8S_GPUS = {i: GPUIdentity(i, f"GPU-{i:04d}", H100) for i in range(4)}


def test_prolog_files_named_by_uuid() -> None:
    alloc = read_gpustat(NODE2 / "run" / "gpustat" / "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
    assert alloc is not None
    assert (alloc.gpu, alloc.gpu_uuid, alloc.job) == (
        None,
        "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        "2001",
    )
    gpus = {
        0: GPUIdentity(0, "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", H100),
        1: GPUIdentity(1, "GPU-1111", H100),
    }
    c = AllocationCollector("node2", gpus, root=NODE2, user_of_uid=PASSWD.get)
    got = {
        a["gpu"]: (a["job"], a["user"], a["team"], a["workload"]) for a in allocations(c).values()
    }
    # the MIG file names no GPU that the collector knows; README is no GPU file
    assert got == {
        "0": ("2001", "alice", "vision", "inference"),
        "1": ("2002", "bob", "nlp", "unknown"),
    }


def k8s_gpu_collector() -> GPUCollector:
    devices = [
        FakeDevice(0, "GPU-0000", H100, processes=[(5001, 30 << 30), (5008, 1 << 20)]),
        FakeDevice(1, "GPU-0001", H100, processes=[(5003, 70 << 30), (5007, 500 << 20)]),
        FakeDevice(2, "GPU-0002", H100, processes=[(5006, 2 << 30), (5004, 10 << 30)]),
        FakeDevice(3, "GPU-0003", H100),
    ]
    team_map = {"nlp-research": "nlp"}
    owner_of = functools.partial(owner_of_pid, root=K8S, pods=pods(), team_map=team_map)
    return GPUCollector("k8s1", FakeNVML(devices), owner_of=owner_of)


def allocation_rows(c: AllocationCollector) -> set[tuple[str, str, str, str, str, str]]:
    rows = set()
    for s in c.collect():
        assert s.name == "fleet_gpu_allocation" and s.value == 1.0
        labels = s.labels
        assert labels["node"] == "k8s1" and labels["gpu_uuid"] == f"GPU-{int(labels['gpu']):04d}"
        rows.add(
            (
                labels["gpu"],
                labels["job"],
                labels["user"],
                labels["team"],
                labels["workload"],
                labels["tier"],
            )
        )
    return rows


def test_allocations_from_gpu_processes_on_a_kubernetes_node() -> None:
    gpu = k8s_gpu_collector()
    c = AllocationCollector("k8s1", gpu.identities, root=K8S, processes=gpu.processes)
    assert c.collect() == []  # no cycle of the GPU collector yet
    samples = gpu.collect()
    unk = "unknown"
    assert allocation_rows(c) == {
        ("0", "bert-ft", "alice", "nlp", unk, unk),  # two processes of one pod: one series
        ("1", "vllm-llama", "svc-inference", "inference", unk, unk),
        ("1", unk, unk, unk, unk, unk),  # a host daemon's process is kept, as unknown
        ("2", unk, unk, unk, unk, unk),  # a pod that the kubelet does not list
        ("2", "llama-ft", "bob", "nlp", unk, unk),
    }
    procs = {
        (s.labels["gpu"], s.labels["pid"], s.labels["job"], s.labels["user"])
        for s in samples
        if s.name == "fleet_gpu_process_memory_bytes"
    }
    assert ("1", "5007", unk, unk) in procs and ("2", "5006", unk, unk) in procs
    assert len(procs) == 6 and ("0", "5008", "bert-ft", "alice") in procs


def test_a_prolog_file_wins_over_processes_for_its_gpu(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "root")
    (tmp_path / "root" / "run" / "gpustat").mkdir(parents=True)
    (tmp_path / "root" / "run" / "gpustat" / "1").write_text("777 1000\naccount=vision\n")
    gpu = k8s_gpu_collector()
    gpu.collect()
    c = AllocationCollector(
        "k8s1",
        gpu.identities,
        root=tmp_path / "root",
        processes=gpu.processes,
        user_of_uid=PASSWD.get,
    )
    rows = allocation_rows(c)
    assert {r for r in rows if r[0] == "1"} == {
        ("1", "777", "alice", "vision", "unknown", "unknown")
    }
    assert {r[0] for r in rows} == {"0", "1", "2"}


def test_owner_of_gpu() -> None:
    gpu = k8s_gpu_collector()
    gpu.collect()
    c = AllocationCollector("k8s1", gpu.identities, root=K8S, processes=gpu.processes)
    assert c.owner_of_gpu(0) == JobOwner("bert-ft", "alice", "nlp")
    assert c.owner_of_gpu(1) == JobOwner("vllm-llama", "svc-inference", "inference")
    # a known job wins over a bigger unknown process
    assert c.owner_of_gpu(2) == JobOwner("llama-ft", "bob", "nlp")
    assert c.owner_of_gpu(3) is None
    assert c.owner_of_gpu(9) is None
    slurm = collector()
    assert slurm.owner_of_gpu(0) == JobOwner("1234", "alice", "nlp")
    assert slurm.owner_of_gpu(1) == JobOwner("1235", "bob", "cv")
    assert slurm.owner_of_gpu(3) is None  # an empty (malformed) file
    by_uuid = AllocationCollector(
        "node2", {0: GPUIdentity(0, "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", H100)}, root=NODE2
    )
    assert by_uuid.owner_of_gpu(0) == JobOwner("2001", "alice", "vision")


def test_a_failing_process_view_costs_only_itself() -> None:
    def broken() -> dict[int, list[GPUProcess]]:
        raise RuntimeError("GPU collector not ready")

    c = AllocationCollector("node1", GPUS, root=ROOT, user_of_uid=PASSWD.get, processes=broken)
    assert sorted(allocations(c)) == ["0", "1", "2"]
