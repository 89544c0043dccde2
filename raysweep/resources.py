"""How many trials a Ray cluster runs at once, and whether it can ever run one.

:func:`plan_slots` is pure: from the alive nodes' resources, what the
cluster's autoscaler can add and one trial's request, it says how many trials
to run at once, or that no node (and no node the autoscaler could add) fits a
trial, which would otherwise leave the sweep waiting for ever.
:func:`read_cluster` gathers those facts from a connected Ray.

A trial's resources are one placement-group bundle, so they must fit on a
single node: two nodes with 1 CPU each never run a trial asking for 2.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger("raysweep")

# With an autoscaler whose size raysweep cannot read: trials asked at once.
DEFAULT_AUTOSCALING_SLOTS = 8
# Where `ray up` leaves the cluster config on the head (Ray Tune checks the same file).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
# Without an autoscaling config, Ray's monitor runs a read-only provider that
# names each node's type after its node id: such a cluster never adds nodes.
_READONLY_TYPE = re.compile(r"node_[0-9a-f]{16,}")
_HEAD_RESOURCE = "node:__internal_head__"


@dataclass(frozen=True)
class NodeType:
    """A worker node type the autoscaler may launch."""

    name: str
    resources: dict[str, float] | None     # None: filled in by the provider at launch
    max_workers: int


@dataclass(frozen=True)
class ClusterFacts:
    nodes: tuple[dict[str, float], ...]    # total resources of each alive node
    autoscaler: bool | None                # None: could not tell
    node_types: tuple[NodeType, ...] = ()  # from the autoscaling config, when readable
    max_workers: int | None = None         # the config's cap on worker nodes


@dataclass(frozen=True)
class Plan:
    slots: int
    fits: bool                             # some node, now or after scaling, runs a trial
    warning: str | None = None


def node_slots(resources: Mapping[str, float], cpu: float, gpu: float) -> int:
    """How many trials asking for ``cpu`` and ``gpu`` fit on one node."""
    n = math.inf
    if cpu > 0:
        n = min(n, math.floor(float(resources.get("CPU", 0.0)) / cpu + 1e-9))
    if gpu > 0:
        n = min(n, math.floor(float(resources.get("GPU", 0.0)) / gpu + 1e-9))
    return 0 if n == math.inf else int(n)


def plan_slots(cpu: float, gpu: float, facts: ClusterFacts) -> Plan:
    """Trials to run at once on the cluster ``facts`` describes.

    >>> plan_slots(0.25, 0.25, ClusterFacts(nodes=({"CPU": 2, "GPU": 1},), autoscaler=False))
    Plan(slots=4, fits=True, warning=None)
    """
    now = sum(node_slots(n, cpu, gpu) for n in facts.nodes)
    if facts.autoscaler is False:
        return Plan(now, fits=now > 0)
    types = facts.node_types
    if facts.autoscaler and types and all(t.resources is not None for t in types):
        head = sum(node_slots(n, cpu, gpu) for n in facts.nodes if _HEAD_RESOURCE in n)
        per_type = sorted(((node_slots(t.resources or {}, cpu, gpu), t.max_workers) for t in types),
                          reverse=True)
        room = facts.max_workers if facts.max_workers is not None else sum(m for _, m in per_type)
        added = 0
        for slots, most in per_type:
            take = max(0, min(most, room))
            added += slots * take
            room -= take
        capacity = max(now, head + added)
        return Plan(capacity, fits=capacity > 0)
    if facts.autoscaler:
        why = "the cluster autoscales but its largest size is not known here"
    elif now > 0:
        return Plan(now, fits=True)
    else:
        why = "no node fits a trial yet and raysweep cannot tell whether the cluster autoscales"
    slots = max(now, DEFAULT_AUTOSCALING_SLOTS)
    return Plan(slots, fits=True, warning=f"raysweep: warning: {why}; running up to {slots} trials at once "
                                          f"(set ray.max_concurrent_trials to change it)")


def describe(facts: ClusterFacts) -> str:
    """``2 nodes, the largest with 1 CPU and 0 GPUs`` (for error messages)."""
    if not facts.nodes:
        return "no alive node"
    cpus = max(float(n.get("CPU", 0.0)) for n in facts.nodes)
    gpus = max(float(n.get("GPU", 0.0)) for n in facts.nodes)
    count = f"{len(facts.nodes)} node{'s' if len(facts.nodes) != 1 else ''}"
    return f"{count}, the largest with {cpus:g} CPU{'s' if cpus != 1 else ''} and {gpus:g} GPU{'s' if gpus != 1 else ''}"


# ---------------------------------------------------------------------------
# Reading a connected cluster
# ---------------------------------------------------------------------------


def node_types_from_config(config: Mapping[str, Any]) -> tuple[tuple[NodeType, ...], int | None]:
    """Worker node types and the worker cap of a `ray up` cluster config."""
    head = config.get("head_node_type")
    cap = config.get("max_workers")
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head or not isinstance(spec, Mapping):
            continue
        res = spec.get("resources")
        resources = {str(k): float(v) for k, v in res.items()} if isinstance(res, Mapping) else None
        if resources is not None and "CPU" not in resources:
            resources = None                   # detected at launch: unknown here
        most = spec.get("max_workers", cap if cap is not None else 0)
        out.append(NodeType(str(name), resources, int(most)))
    return tuple(out), (int(cap) if cap is not None else None)


def _type_names_v1(wait_s: float) -> list[str] | None:
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + wait_s
    while True:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
        names = list(report.get("active_nodes") or {}) + list((report.get("node_type_mapping") or {}).values())
        names += list(report.get("pending_launches") or {})
        if names or time.monotonic() >= deadline:
            return names or None
        time.sleep(0.5)


def _type_names_v2() -> list[str] | None:
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    names = [n.ray_node_type_name for n in (*status.active_nodes, *status.idle_nodes, *status.pending_nodes)]
    names += [launch.ray_node_type_name for launch in status.pending_launches]
    return names or None


def detect_autoscaler(wait_s: float = 6.0) -> bool | None:
    """True when the cluster's autoscaler can add nodes, False when it cannot, None if unknown.

    Ray's monitor (autoscaler v1, or v2 where enabled) reports node types; a
    cluster started without an autoscaling config reports one read-only type
    per node. ``wait_s`` covers a monitor that has not reported yet.
    """
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        names = _type_names_v2() if is_autoscaler_v2(fetch_from_server=True) else _type_names_v1(wait_s)
    except Exception as exc:  # ray:// clients, older servers: fall back below
        log.debug("cannot read the autoscaler status: %s", exc)
        names = None
    if names is None:
        return True if Path(BOOTSTRAP_CONFIG).expanduser().is_file() else None
    return not all(_READONLY_TYPE.fullmatch(n) for n in names)


def read_cluster(*, autoscaling: bool = True, cpu: float = 0.0, gpu: float = 0.0) -> ClusterFacts:
    """The facts :func:`plan_slots` needs, from the Ray this process is connected to.

    ``autoscaling=False`` (a Ray this process started) skips the autoscaler.
    The monitor's first report is awaited only when no alive node fits a
    trial of ``cpu``/``gpu``, where the answer decides between an error and a wait.
    """
    import ray

    nodes = tuple({str(k): float(v) for k, v in n.get("Resources", {}).items()}
                  for n in ray.nodes() if n.get("Alive"))
    if not autoscaling:
        return ClusterFacts(nodes=nodes, autoscaler=False)
    fits_now = any(node_slots(n, cpu, gpu) > 0 for n in nodes) if (cpu or gpu) else True
    autoscaler = detect_autoscaler(wait_s=0.0 if fits_now else 6.0)
    types: tuple[NodeType, ...] = ()
    cap = None
    path = Path(BOOTSTRAP_CONFIG).expanduser()
    if autoscaler and path.is_file():
        try:
            import yaml

            types, cap = node_types_from_config(yaml.safe_load(path.read_text()) or {})
        except Exception as exc:  # unreadable: the capacity stays unknown
            log.debug("cannot read %s: %s", path, exc)
    return ClusterFacts(nodes=nodes, autoscaler=autoscaler, node_types=types, max_workers=cap)
