"""Every file in clusters/ is a valid `ray up` config that exposes nothing.

Each file goes through the same steps as `ray up` before it touches a cloud:
``prepare_config`` (merge with the provider's defaults; no cloud SDK or
credentials needed) and ``validate_config`` (Ray's JSON schema). Then the
merged config is checked for anything that would open Ray beyond the cluster:
a dashboard bound beyond localhost, ``0.0.0.0/0`` ingress, a security group or
network Ray would create with SSH open to the world, missing token auth.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from raysweep import jobs

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((ROOT / "clusters").glob("*.yaml"))
OPEN_RANGES = ("0.0.0.0/0", "::/0")
LOOPBACK = ("127.0.0.1", "localhost")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` validates: the file merged with the provider's defaults."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def _strings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(node, str):
        yield where, node


def _commands(config: dict[str, Any], key: str) -> list[str]:
    return [str(c) for c in config.get(key) or []]


def exposure_problems(config: dict[str, Any]) -> list[str]:
    """Why a (prepared) cluster config would expose Ray; [] when it does not."""
    problems: list[str] = []
    for where, text in _strings(config):
        for rng in OPEN_RANGES:
            if rng in text:
                problems.append(f"{where} opens {rng}")
    all_commands = [c for key in ("head_start_ray_commands", "worker_start_ray_commands",
                                  "setup_commands", "head_setup_commands", "worker_setup_commands",
                                  "initialization_commands") for c in _commands(config, key)]
    for command in all_commands:
        for host in re.findall(r"--dashboard-host[= ](\S+)", command):
            if host.strip("'\"") not in LOOPBACK:
                problems.append(f"dashboard bound to {host}: {command}")
        if "--ray-debugger-external" in command:
            problems.append(f"external debugger: {command}")
        if re.search(r"--node-ip-address[= ]['\"]?0\.0\.0\.0", command):
            problems.append(f"node bound to 0.0.0.0: {command}")
        if re.search(r"--ray-client-server-host|--dashboard-agent-host", command):
            problems.append(f"a Ray server bound explicitly: {command}")
    heads = [c for c in _commands(config, "head_start_ray_commands") if "ray start" in c and "--head" in c]
    if not heads:
        problems.append("no `ray start --head` in head_start_ray_commands")
    for command in heads:
        if not re.search(r"--dashboard-host[= ]['\"]?(127\.0\.0\.1|localhost)\b", command):
            problems.append(f"head start command does not pin --dashboard-host=127.0.0.1: {command}")
        if "--include-dashboard=false" in command.replace(" ", "="):
            problems.append("the dashboard (and with it the Jobs API) is disabled")
    provider = config.get("provider", {})
    node_types = config.get("available_node_types", {})
    if provider.get("type") == "aws":
        # Ray's auto-created security group lets SSH in from 0.0.0.0/0.
        for name, node_type in node_types.items():
            if not node_type.get("node_config", {}).get("SecurityGroupIds"):
                problems.append(f"available_node_types.{name}: no SecurityGroupIds, so `ray up` "
                                f"creates a group with SSH open to 0.0.0.0/0")
        for perm in provider.get("security_group", {}).get("IpPermissions", []):
            for r in perm.get("IpRanges", []):
                if r.get("CidrIp") in OPEN_RANGES:
                    problems.append(f"provider.security_group opens {r.get('CidrIp')}")
    if provider.get("type") == "gcp":
        # Without networkInterfaces Ray picks the first subnet, typically the
        # "default" network whose default-allow-ssh rule is open to 0.0.0.0/0.
        for name, node_type in node_types.items():
            nics = node_type.get("node_config", {}).get("networkInterfaces")
            if not nics:
                problems.append(f"available_node_types.{name}: no networkInterfaces (default network)")
            for nic in nics or []:
                if "/networks/default" in str(nic.get("network", "")) or \
                        str(nic.get("subnetwork", "")).endswith("/subnetworks/default"):
                    problems.append(f"available_node_types.{name}: uses the default network")
    return problems


def token_auth_problems(config: dict[str, Any]) -> list[str]:
    """Token auth must be on for every `ray start`, with the token mounted on every node."""
    problems: list[str] = []
    mounts = config.get("file_mounts") or {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in _commands(config, key):
            if "ray start" not in command:
                continue
            if "RAY_AUTH_MODE=token" not in command:
                problems.append(f"{key}: RAY_AUTH_MODE=token not set: {command}")
            m = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", command)
            if not m:
                problems.append(f"{key}: RAY_AUTH_TOKEN_PATH not set: {command}")
                continue
            remote = m.group(1).rstrip(";").replace("$HOME", "~")
            if remote not in mounts:
                problems.append(f"{key}: token {remote} is not in file_mounts")
    return problems


def test_there_are_cluster_files() -> None:
    assert {p.name for p in CLUSTER_FILES} >= {"aws.yaml", "gcp.yaml", "onprem.yaml"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_passes_rays_schema(path: Path) -> None:
    config = prepared(load(path))
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_exposes_nothing(path: Path) -> None:
    raw = load(path)
    assert exposure_problems(raw) == []
    assert exposure_problems(prepared(raw)) == []


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_turns_on_token_auth(path: Path) -> None:
    assert token_auth_problems(prepared(load(path))) == []


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_pins_the_local_ray(path: Path) -> None:
    import ray

    setup = " ".join(_commands(load(path), "setup_commands"))
    pins = re.findall(r"ray\[[^\]]*\]==([\w.]+)", setup)
    assert pins == [ray.__version__], f"setup_commands must pin ray=={ray.__version__}, found {pins}"
    assert "raysweep" in setup


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_submit_finds_the_dashboard_port(path: Path) -> None:
    assert jobs.dashboard_port_from_cluster(path) == jobs.DEFAULT_DASHBOARD_PORT
    assert jobs.resolve_address(cluster=path, env={}) == "http://127.0.0.1:8265"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_workers_are_gpu_spot_and_head_runs_no_trials(name: str) -> None:
    config = load(ROOT / "clusters" / name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    workers = [t for key, t in types.items() if key != config["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 and t.get("min_workers", 0) == 0 for t in workers)
    for t in workers:
        nc = t["node_config"]
        spot = nc.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or \
            nc.get("scheduling", {}).get("preemptible") is True
        assert spot, f"{name}: worker is neither spot nor preemptible"


# The checker itself: each bad config must be caught.
_GOOD_HEAD = ("export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token; "
              "ray start --head --port=6379 --dashboard-host=127.0.0.1")


def _minimal(**over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "provider": {"type": "local"},
        "file_mounts": {"~/.ray/auth_token": "~/.ray/auth_token"},
        "head_start_ray_commands": ["ray stop", _GOOD_HEAD],
        "worker_start_ray_commands": ["export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token; "
                                      "ray start --address=$RAY_HEAD_IP:6379"],
    }
    config.update(over)
    return config


@pytest.mark.parametrize("config, expected", [
    (_minimal(), None),
    (_minimal(head_start_ray_commands=["ray start --head --dashboard-host=0.0.0.0"]), "dashboard bound"),
    (_minimal(head_start_ray_commands=["ray start --head --port=6379"]), "does not pin --dashboard-host"),
    (_minimal(head_start_ray_commands=[_GOOD_HEAD + " --ray-debugger-external"]), "external debugger"),
    (_minimal(provider={"type": "aws", "security_group": {"IpPermissions": [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}},
        available_node_types={}), "opens 0.0.0.0/0"),
    (_minimal(provider={"type": "aws"}, available_node_types={"head": {"node_config": {}}}),
     "no SecurityGroupIds"),
    (_minimal(provider={"type": "gcp"}, available_node_types={"head": {"node_config": {}}}),
     "no networkInterfaces"),
    (_minimal(firewall={"sourceRanges": ["0.0.0.0/0"]}), "opens 0.0.0.0/0"),
], ids=["ok", "dashboard-0.0.0.0", "dashboard-unpinned", "debugger", "aws-open-range", "aws-auto-sg",
        "gcp-default-net", "source-ranges"])
def test_exposure_checker_catches(config: dict[str, Any], expected: str | None) -> None:
    problems = exposure_problems(config)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_token_checker_catches_a_missing_mount() -> None:
    assert token_auth_problems(_minimal()) == []
    assert token_auth_problems(_minimal(file_mounts={})) != []
    assert token_auth_problems(_minimal(head_start_ray_commands=["ray start --head"])) != []


def test_prepared_defaults_would_be_caught() -> None:
    """Dropping head_start_ray_commands brings back Ray's default 0.0.0.0 dashboard."""
    raw = load(ROOT / "clusters" / "aws.yaml")
    del raw["head_start_ray_commands"]
    assert any("dashboard bound to 0.0.0.0" in p for p in exposure_problems(prepared(raw)))
