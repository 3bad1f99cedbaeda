"""Live stepping: fake devices, fake root trees and changed job records."""

from __future__ import annotations

from pathlib import Path

from fleetscope.collect.attribution import job_of_pid, read_gpustat
from fleetscope.model import Job, JobState
from fleetscope.simulate.behaviour import GPU_IDLE
from fleetscope.simulate.fleet import FleetSpec
from fleetscope.simulate.sim import Simulation

START = 1_767_225_600_000 + 10 * 3_600_000  # 2026-01-01T10:00:00Z, working hours
TICK = 15_000


def test_advance_drives_devices_and_root_trees(tmp_path: Path) -> None:
    sim = Simulation(FleetSpec(gpus=16, seed=8, node_failures_per_day=0), root_dir=tmp_path)
    first = sim.advance(START)
    assert first and all(isinstance(j, Job) for j in first)  # the warm-up's jobs
    assert sum(1 for j in first if j.state == JobState.RUNNING) > 0
    for node in sim.nodes:
        assert node.root == tmp_path / node.name
        files = {int(p.name): read_gpustat(p) for p in (node.root / "run" / "gpustat").iterdir()}
        for dev in node.devices:
            alloc = files.get(dev.index)
            if alloc is None:
                assert dev.processes == [] and dev.gpu_util_pct == 0
                assert dev.throttle_reasons & GPU_IDLE
                continue
            job = sim.cluster.jobs[int(alloc.job) - 100_000]
            assert dev.uuid in job.gpu_uuids and job.state == JobState.RUNNING
            assert (alloc.user, alloc.account, alloc.partition, alloc.qos) == (
                job.user, job.team, job.workload, job.tier,
            )  # fmt: skip
            assert alloc.uid == job.uid
            for pid, used in dev.processes:
                assert job_of_pid(pid, node.root) == (job.id, job.user)
                assert used == dev.memory_used_bytes
    assert any(d.gpu_util_pct > 0 for d in sim.devices)


def test_files_follow_jobs_as_they_end(tmp_path: Path) -> None:
    sim = Simulation(FleetSpec(gpus=8, seed=1, node_failures_per_day=0), root_dir=tmp_path)
    sim.advance(START)
    ended: list[Job] = []
    t = START
    while not ended:
        t += TICK
        ended = [j for j in sim.advance(t) if j.state.finished and j.gpus and j.start]
    node = sim.nodes[0]
    assert node.root is not None
    held = {p.name for p in (node.root / "run" / "gpustat").iterdir()}
    owners = {read_gpustat(node.root / "run" / "gpustat" / n).job for n in held}  # type: ignore[union-attr]
    assert not owners & {j.id for j in ended}
    pids = {int(p.name) for p in (node.root / "proc").iterdir() if p.name.isdigit()}
    assert pids == {pid for d in node.devices for pid, _ in d.processes}


def test_advance_is_idempotent_for_past_times() -> None:
    sim = Simulation(FleetSpec(gpus=8, seed=1))
    sim.advance(START)
    assert sim.advance(START) == []
    assert sim.advance(START - 60_000) == []
    assert sim.now_ms == START


def test_a_down_node_loses_its_devices() -> None:
    sim = Simulation(FleetSpec(gpus=16, seed=3, node_failures_per_day=24))
    t = START
    sim.advance(t)
    seen_lost = False
    for _ in range(2_000):
        t += 4 * TICK
        sim.advance(t)
        for node in sim.nodes:
            lost = [d.lost for d in node.devices]
            assert all(lost) or not any(lost)  # a whole node goes down
            seen_lost |= all(lost)
        if seen_lost:
            break
    assert seen_lost
    down = [n for n in sim.nodes if n.devices[0].lost]
    assert all(d.processes == [] for n in down for d in n.devices)
