"""Host collector on captured /proc trees: CPU utilization from two readings, memory, load."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psutil
import pytest

from fleetscope.collect import Sample
from fleetscope.collect.host import (
    CPUTimes,
    HostCollector,
    cpu_busy_ratio,
    procfs,
    read_loadavg,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "collect" / "host"
NODE1 = DATA / "node1"
LATER = DATA / "node1-15s-later"
KIB = 1024


def values(samples: list[Sample]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        assert dict(s.labels) == {"node": "node1"}
        assert s.name not in out
        out[s.name] = s.value
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(NODE1, tmp_path / "root")
    return tmp_path / "root"


def test_first_collect_has_memory_and_load_but_no_cpu() -> None:
    c = HostCollector("node1", root=NODE1)
    got = values(c.collect())
    # meminfo: MemTotal 2113639556 kB, MemAvailable 1987654321 kB
    assert got == {
        "fleet_node_memory_used_bytes": (2113639556 - 1987654321) * KIB,
        "fleet_node_memory_total_bytes": 2113639556 * KIB,
        "fleet_node_load1": 12.34,
    }
    assert c.init_error is None


def test_two_collects_on_changing_files_give_cpu_utilization(root: Path) -> None:
    c = HostCollector("node1", root=root)
    c.collect()
    shutil.copy(LATER / "proc" / "stat", root / "proc" / "stat")
    got = values(c.collect())
    # 15 s on 8 CPUs at 100 Hz = 12000 ticks; the deltas of the "cpu" line are
    # user +6000, nice 0, system +1200, idle +4000, iowait +300, irq +100, softirq +200,
    # steal +200, guest +5000 (already inside user, so not counted again), guest_nice 0.
    total = 6000 + 0 + 1200 + 4000 + 300 + 100 + 200 + 200
    assert total == 12000
    idle = 4000 + 300
    assert got["fleet_node_cpu_utilization_ratio"] == pytest.approx((total - idle) / total)
    assert got["fleet_node_cpu_utilization_ratio"] == pytest.approx(7700 / 12000)

    # No CPU time elapsed since: no sample rather than a made-up 0.
    assert "fleet_node_cpu_utilization_ratio" not in values(c.collect())


def test_cpu_sample_covers_the_gap_over_a_failed_read(root: Path) -> None:
    c = HostCollector("node1", root=root)
    c.collect()
    (root / "proc" / "stat").write_text("garbage\n")
    assert "fleet_node_cpu_utilization_ratio" not in values(c.collect())
    shutil.copy(LATER / "proc" / "stat", root / "proc" / "stat")
    got = values(c.collect())
    assert got["fleet_node_cpu_utilization_ratio"] == pytest.approx(7700 / 12000)


def test_cpu_busy_ratio_clamps_fields_that_go_backwards() -> None:
    fields = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest")

    class Times:
        _fields = fields

        def __init__(self, *v: float) -> None:
            for name, value in zip(fields, v, strict=True):
                setattr(self, name, value)

    before = CPUTimes(Times(100, 0, 50, 1000, 40, 0, 0, 0, 0))
    after = CPUTimes(Times(160, 0, 70, 1100, 30, 0, 0, 0, 0))  # iowait went down by 10
    # deltas: user 60, system 20, idle 100, iowait clamped to 0 → busy 80 of 180
    assert cpu_busy_ratio(before, after) == pytest.approx(80 / 180)
    assert cpu_busy_ratio(after, after) is None


def test_psutil_procfs_path_is_restored_and_the_real_proc_still_answers() -> None:
    before = psutil.PROCFS_PATH
    HostCollector("node1", root=NODE1).collect()
    assert before == psutil.PROCFS_PATH
    with pytest.raises(RuntimeError), procfs(NODE1):
        assert str(NODE1 / "proc") == psutil.PROCFS_PATH
        raise RuntimeError("boom")
    assert before == psutil.PROCFS_PATH
    # The real node: the collector works on "/" too (values not checked, they are live).
    got = values_of_live_node()
    assert {"fleet_node_memory_total_bytes", "fleet_node_load1"} <= set(got)


def values_of_live_node() -> dict[str, float]:
    return {s.name: s.value for s in HostCollector("node1").collect()}


def test_several_fake_nodes_in_threads_read_their_own_proc(tmp_path: Path) -> None:
    # psutil's PROCFS_PATH is one global: each collector must see its own meminfo.
    roots = []
    for i in range(4):
        shutil.copytree(NODE1, tmp_path / f"n{i}")
        (tmp_path / f"n{i}" / "proc" / "meminfo").write_text(
            f"MemTotal: {(i + 1) * 1000} kB\nMemFree: 100 kB\nMemAvailable: {i * 1000 + 500} kB\n"
        )
        roots.append(tmp_path / f"n{i}")
    results: dict[int, set[tuple[float, float]]] = {}

    def run(i: int) -> None:
        c = HostCollector("node1", root=roots[i])
        seen = set()
        for _ in range(50):
            got = values(c.collect())
            seen.add((got["fleet_node_memory_total_bytes"], got["fleet_node_memory_used_bytes"]))
        results[i] = seen

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: {((i + 1) * 1000 * KIB, 500 * KIB)} for i in range(4)}


@pytest.mark.parametrize(
    ("broken", "content", "lost"),
    [
        pytest.param("loadavg", "not a number\n", {"fleet_node_load1"}, id="malformed-loadavg"),
        pytest.param("loadavg", None, {"fleet_node_load1"}, id="missing-loadavg"),
        pytest.param(
            "meminfo",
            "MemFree: 1234 kB\n",
            {"fleet_node_memory_used_bytes", "fleet_node_memory_total_bytes"},
            id="meminfo-without-memtotal",
        ),
        pytest.param(
            "meminfo",
            None,
            {"fleet_node_memory_used_bytes", "fleet_node_memory_total_bytes"},
            id="missing-meminfo",
        ),
    ],
)
def test_one_bad_file_costs_only_its_own_samples(
    root: Path, broken: str, content: str | None, lost: set[str]
) -> None:
    path = root / "proc" / broken
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    c = HostCollector("node1", root=root)
    expected = {
        "fleet_node_memory_used_bytes",
        "fleet_node_memory_total_bytes",
        "fleet_node_load1",
    }
    assert set(values(c.collect())) == expected - lost
    assert c.init_error is None


def test_meminfo_without_optional_fields_does_not_warn(root: Path) -> None:
    # A minimal meminfo (no Buffers/Cached/Shmem …): psutil warns about those, which pytest turns
    # into errors; the collector needs only MemTotal and MemAvailable.
    (root / "proc" / "meminfo").write_text(
        "MemTotal:       16384000 kB\nMemFree:         8192000 kB\nMemAvailable:   12288000 kB\n"
    )
    got = values(HostCollector("node1", root=root).collect())
    assert got["fleet_node_memory_used_bytes"] == (16384000 - 12288000) * KIB


def test_missing_proc_sets_init_error_and_yields_nothing(tmp_path: Path) -> None:
    c = HostCollector("node1", root=tmp_path)
    assert c.collect() == []
    assert c.init_error is not None and "proc" in c.init_error
    shutil.copytree(NODE1 / "proc", tmp_path / "proc")
    assert c.collect() != []
    assert c.init_error is None


def test_read_loadavg() -> None:
    assert read_loadavg(NODE1) == 12.34
    with pytest.raises(OSError):
        read_loadavg(LATER)  # this tree has only stat
