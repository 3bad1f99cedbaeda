"""The fleet's static shape: nodes, GPU identities, teams and quotas."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from fleetscope.simulate.fleet import FleetSpec, build

UUID = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_default_fleet_shape() -> None:
    fleet = build(FleetSpec(seed=1))
    assert len(fleet.gpus) == 64 and len(fleet.nodes) == 8
    assert Counter(n.model.key for n in fleet.nodes) == {"h100": 4, "a100": 2, "l40s": 2}
    assert [n.name for n in fleet.nodes][:2] == ["gpu-h100-01", "gpu-h100-02"]
    assert all(UUID.match(g.uuid) for g in fleet.gpus)
    assert len({g.uuid for g in fleet.gpus}) == 64
    assert [g.index for g in fleet.nodes[0].gpus] == list(range(8))
    assert fleet.gpus[0].labels() == {
        "node": "gpu-h100-01",
        "gpu": "0",
        "gpu_uuid": fleet.gpus[0].uuid,
        "gpu_model": "NVIDIA H100 80GB HBM3",
    }


def test_teams_have_quotas_summing_to_the_fleet() -> None:
    fleet = build(FleetSpec(gpus=64))
    names = [t.name for t in fleet.teams]
    assert names == ["llm-research", "vision", "inference-platform", "data-science"]
    assert sum(t.quota_gpus for t in fleet.teams) == 64
    assert all(t.account == t.name and t.users for t in fleet.teams)
    uids = [u for t in fleet.teams for u in t.uids]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize(
    ("gpus", "nodes"),
    [pytest.param(8, 1, id="one-node"), pytest.param(20, 3, id="partial-last-node")],
)
def test_other_sizes(gpus: int, nodes: int) -> None:
    fleet = build(FleetSpec(gpus=gpus))
    assert len(fleet.gpus) == gpus and len(fleet.nodes) == nodes
    assert sum(t.quota_gpus for t in fleet.teams) == gpus


def test_identities_are_deterministic_per_seed() -> None:
    a, b, c = (build(FleetSpec(seed=s)) for s in (4, 4, 5))
    assert [g.uuid for g in a.gpus] == [g.uuid for g in b.gpus]
    assert [g.uuid for g in a.gpus] != [g.uuid for g in c.gpus]


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown GPU models"):
        FleetSpec(model_mix=(("b200", 1.0),))
    with pytest.raises(ValueError, match="positive"):
        FleetSpec(gpus=0)
