"""Concurrent trial slots from cluster resources (pure; the real clusters are in test_cluster_runtime.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raysweep.resources import (DEFAULT_AUTOSCALING_SLOTS, ClusterFacts, NodeType, describe, node_slots,
                                node_types_from_config, plan_slots)

ROOT = Path(__file__).resolve().parents[1]
HEAD = "node:__internal_head__"


@pytest.mark.parametrize("resources, cpu, gpu, expected", [
    ({"CPU": 2}, 1, 0, 2),
    ({"CPU": 2, "GPU": 1}, 0.25, 0.25, 4),
    ({"CPU": 2, "GPU": 1}, 0.25, 0.5, 2),
    ({"CPU": 1, "GPU": 1}, 0.25, 0.25, 4),
    ({"CPU": 1, "GPU": 1}, 0.5, 0.25, 2),      # CPUs bind first
    ({"CPU": 8, "GPU": 1}, 1, 0.1, 8),          # 1 / 0.1 is 9.999...: still 10 GPU shares, 8 CPUs
    ({"CPU": 8, "GPU": 3}, 1, 1 / 3, 8),
    ({"CPU": 4}, 1, 1, 0),                      # no GPU on the node
    ({"CPU": 0, "GPU": 4}, 0, 1, 4),
    ({}, 1, 0, 0),
])
def test_node_slots(resources, cpu, gpu, expected):
    assert node_slots(resources, cpu, gpu) == expected


def _facts(*nodes, autoscaler=False, types=(), cap=None):
    return ClusterFacts(nodes=tuple(nodes), autoscaler=autoscaler, node_types=tuple(types), max_workers=cap)


GPU_WORKER = NodeType("gpu", {"CPU": 4, "GPU": 1}, 4)


@pytest.mark.parametrize("facts, cpu, gpu, slots, fits, warns", [
    # a fixed cluster: per node, summed
    (_facts({"CPU": 1, HEAD: 1}, {"CPU": 1}), 1, 0, 2, True, False),
    (_facts({"CPU": 3, HEAD: 1}, {"CPU": 2}), 2, 0, 2, True, False),
    # 2 CPUs in all, but no node has 2: a trial never starts
    (_facts({"CPU": 1, HEAD: 1}, {"CPU": 1}), 2, 0, 0, False, False),
    (_facts({"CPU": 2, HEAD: 1}), 1, 1, 0, False, False),
    (_facts({"CPU": 2, "GPU": 1, HEAD: 1}, {"CPU": 1}), 0.25, 0.25, 4, True, False),
    # autoscaling GPU workers behind a CPU: 0 head: capacity from the config, not 1
    (_facts({"CPU": 0, HEAD: 1}, autoscaler=True, types=[GPU_WORKER], cap=4), 1, 0.25, 16, True, False),
    (_facts({"CPU": 0, HEAD: 1}, autoscaler=True, types=[GPU_WORKER], cap=2), 1, 1, 2, True, False),
    (_facts({"CPU": 0, HEAD: 1}, {"CPU": 4, "GPU": 1}, autoscaler=True, types=[GPU_WORKER], cap=4),
     1, 1, 4, True, False),
    # the biggest node types are taken first under the global cap
    (_facts({"CPU": 0, HEAD: 1}, autoscaler=True, cap=3,
            types=[NodeType("small", {"CPU": 1, "GPU": 1}, 5), NodeType("big", {"CPU": 8, "GPU": 4}, 2)]),
     1, 1, 9, True, False),
    # no node type the autoscaler may add fits either
    (_facts({"CPU": 0, HEAD: 1}, autoscaler=True, types=[GPU_WORKER], cap=4), 1, 2, 0, False, False),
    (_facts({"CPU": 0, HEAD: 1}, autoscaler=True, types=[NodeType("gpu", {"CPU": 4, "GPU": 1}, 0)], cap=0),
     1, 1, 0, False, False),
    # an autoscaler of unknown size: the default, with a warning; never below what runs now
    (_facts({"CPU": 0, HEAD: 1}, autoscaler=True), 1, 1, DEFAULT_AUTOSCALING_SLOTS, True, True),
    (_facts({"CPU": 0, HEAD: 1}, autoscaler=True, types=[NodeType("gpu", None, 4)]), 1, 1,
     DEFAULT_AUTOSCALING_SLOTS, True, True),
    (_facts({"CPU": 64, HEAD: 1}, autoscaler=True), 1, 0, 64, True, True),
    # cannot tell: what fits now, else wait with the default and a warning
    (_facts({"CPU": 2, HEAD: 1}, autoscaler=None), 1, 0, 2, True, False),
    (_facts({"CPU": 2, HEAD: 1}, autoscaler=None), 1, 1, DEFAULT_AUTOSCALING_SLOTS, True, True),
])
def test_plan_slots(facts, cpu, gpu, slots, fits, warns):
    plan = plan_slots(cpu, gpu, facts)
    assert (plan.slots, plan.fits, plan.warning is not None) == (slots, fits, warns)
    if warns:
        assert plan.warning.startswith("raysweep: warning: ") and "ray.max_concurrent_trials" in plan.warning
        assert "\n" not in plan.warning


@pytest.mark.parametrize("name, slots", [("aws", 16), ("gcp", 16), ("onprem", DEFAULT_AUTOSCALING_SLOTS)])
def test_capacity_of_the_shipped_cluster_configs(name, slots):
    # the head is CPU: 0; gpu: 0.25 puts four trials on each of the (up to 4) GPU workers
    config = yaml.safe_load((ROOT / "clusters" / f"{name}.yaml").read_text())
    types, cap = node_types_from_config(config)
    head_type = (config.get("available_node_types") or {}).get(config.get("head_node_type"), {})
    head = head_type.get("resources") or {"CPU": 0}   # onprem: the head starts with --num-cpus=0
    facts = ClusterFacts(nodes=({**head, HEAD: 1},), autoscaler=True, node_types=types, max_workers=cap)
    assert plan_slots(1, 0.25, facts).slots == slots


def test_node_types_from_config():
    types, cap = node_types_from_config({
        "max_workers": 6, "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 4},
            "auto": {"node_config": {}},                     # resources detected at launch
        }})
    assert cap == 6
    assert types == (NodeType("gpu", {"CPU": 4.0, "GPU": 1.0}, 4), NodeType("auto", None, 6))


def test_describe():
    assert describe(_facts({"CPU": 1, HEAD: 1}, {"CPU": 1})) == "2 nodes, the largest with 1 CPU and 0 GPUs"
    assert describe(_facts({"CPU": 4, "GPU": 2})) == "1 node, the largest with 4 CPUs and 2 GPUs"
    assert describe(_facts()) == "no alive node"
