"""Sweeps on real multi-node Ray clusters on this machine (127.0.0.1): spread, lost nodes, GPU shares.

Each cluster is started here with `ray start` (short temp dirs, free ports,
token auth with a token of its own on every node) and torn down by the PIDs
these tests started: never a global `ray stop`. The driver is a subprocess
(`python -m raysweep run --address ...`), as a user would run it.

GPUs are declared (`--num-gpus 1`), not present: Ray's GPU accounting,
fractional shares and CUDA_VISIBLE_DEVICES work the same without one. The one
test that needs a CUDA device skips without it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
import yaml

from tests.procs import free_port, kill

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
TS = optuna.trial.TrialState


# ---------------------------------------------------------------------------
# Processes: what `ray start` launched, found by process group, parentage and temp dir
# ---------------------------------------------------------------------------


def _table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, command line)."""
    out: dict[int, tuple[int, int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(d.name)] = (int(fields[1]), int(fields[2]), cmd)
    return out


def _owned(pgid: int, marker: str, known: set[int]) -> set[int]:
    """``known``, the group ``pgid``, processes naming ``marker`` (a temp dir) and all below them."""
    table = _table()
    me = os.getpid()
    out = set(known) | {p for p, (_, g, cmd) in table.items()
                        if p != me and (g == pgid or marker in cmd)}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if ppid in out and pid not in out:
                out.add(pid)
                grew = True
    return out


class RayNode:
    """One `ray start` node: its temp dir, its processes, its node id."""

    def __init__(self, name: str, tmp: Path, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.temp_dir = tmp / name
        self.pids: set[int] = set()
        ports = {flag: free_port() for flag in (
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")}
        cmd = [shutil.which("ray") or "ray", "start", *args, "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               *(f"{flag}={port}" for flag, port in ports.items())]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.pgid = proc.pid
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        self.pids = _owned(self.pgid, str(self.temp_dir), set())
        if proc.returncode != 0:
            self.stop()
            pytest.fail(f"ray start ({name}) failed: {out[-3000:]}")
        self.node_id = self._read_node_id()

    def _raylet(self) -> tuple[int, str]:
        for pid, (_, _, cmd) in _table().items():
            if pid in self.pids and "/raylet/raylet " in cmd:
                return pid, cmd
        raise AssertionError(f"no raylet among the processes of node {self.name}")

    def _read_node_id(self) -> str:
        _, cmd = self._raylet()
        found = re.search(r"--node_id=([0-9a-f]+)", cmd)
        assert found, cmd[:500]
        return found.group(1)

    def kill_raylet(self) -> None:
        """SIGKILL this node's raylet, as when the machine is lost."""
        self.pids = _owned(self.pgid, str(self.temp_dir), self.pids)
        pid, _ = self._raylet()
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        kill(_owned(self.pgid, str(self.temp_dir), self.pids))


class Cluster:
    def __init__(self, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None, **head: Any) -> None:
        if shutil.which("ray") is None:
            pytest.skip("the ray CLI is not installed")
        self.tmp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))      # short: unix socket paths
        token = self.tmp / "auth_token"
        token.write_text("raysweep-cluster-test-" + os.urandom(8).hex())
        env_ = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
        env_.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
                    RAY_DEDUP_LOGS="0",
                    # workers import tests.trainables; a lost node is noticed in ~3 s, not ~15 s
                    PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env_.get("PYTHONPATH")) if p),
                    RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
                    RAY_health_check_timeout_ms="1000", **(env or {}))
        self.env = env_
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[RayNode] = []
        # the client server port is a free ephemeral one: outside Ray's worker port range
        head_args = ["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
                     "--include-dashboard=false", f"--num-cpus={head.get('cpus', 1)}",
                     f"--num-gpus={head.get('gpus', 0)}", *args]
        try:
            self.nodes.append(RayNode("head", self.tmp, head_args, env_))
        except BaseException:
            self.stop()
            raise

    def add_node(self, name: str, cpus: int = 1) -> RayNode:
        node = RayNode(name, self.tmp, [f"--address={self.address}", f"--num-cpus={cpus}", "--num-gpus=0"],
                       self.env)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- a sweep on it --------------------------------------------------------
    def run(self, project: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        proc = self.start(project, *args)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            _kill_group(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")

    def start(self, project: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "raysweep", "run", *args, "--address", self.address],
                                cwd=project, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    """A head and a second node, 1 CPU each, no GPU, no autoscaler."""
    cluster = Cluster(cpus=1, gpus=0)
    try:
        cluster.add_node("worker")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def gpu_head() -> Iterator[Cluster]:
    """One node declaring 1 GPU (none needs to exist) and 1 CPU."""
    cluster = Cluster(cpus=1, gpus=1)
    try:
        yield cluster
    finally:
        cluster.stop()


def _config(project: Path, name: str, *, fn: str, n_trials: int, epochs: int, resources: dict[str, float],
            probe: dict[str, Any], max_failures: int = 0) -> Path:
    probe_dir = project / f"probe_{name}"
    probe_dir.mkdir(parents=True)
    data = {
        "seed": 1,
        "training": {"entrypoint": f"tests.trainables:{fn}", "num_epochs": epochs},
        "model": {"dropout": 0.5},
        "probe": {"dir": str(probe_dir), **probe},
        "search": {"study_name": name, "n_trials": n_trials, "metric": "score", "direction": "maximize",
                   "sampler": {"type": "RandomSampler", "seed": 1}, "pruner": "none",
                   "search_space": {"model.dropout": {"type": "uniform", "low": 0.0, "high": 1.0}}},
        "ray": {"resources_per_trial": resources, "max_failures": max_failures},
    }
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _study(project: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project}/runs/optuna_studies/{name}/study.db")


def _attempts(probes_dir: Path) -> list[dict[str, Any]]:
    """Every probe event, in time order."""
    events = []
    for name in os.listdir(probes_dir):
        if name.endswith(".json"):
            with open(probes_dir / name) as f:
                events.append(json.load(f))
    return sorted(events, key=lambda e: e["t"])


# ---------------------------------------------------------------------------
# Two nodes
# ---------------------------------------------------------------------------


def test_sweep_spreads_trials_over_both_nodes(two_nodes: Cluster, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "spread", fn="on_node", n_trials=6, epochs=2, resources={"cpu": 1},
                  probe={"sleep": 0.3})
    r = two_nodes.run(tmp_path, "--config", str(cfg))
    assert r.returncode == 0, r.stdout[-4000:]
    events = _attempts(tmp_path / "probe_spread")
    used = {e["node_id"] for e in events if e["kind"].startswith("attempt")}
    assert used == {n.node_id for n in two_nodes.nodes[:2]}, used     # head and worker (not a lost node)
    study = _study(tmp_path, "spread")
    assert [t.state for t in study.trials] == [TS.COMPLETE] * 6


@pytest.mark.parametrize("resources, why", [
    ({"cpu": 1, "gpu": 1}, "cpu: 1, gpu: 1"),     # a CPU-only cluster
    ({"cpu": 2}, "cpu: 2, gpu: 0"),               # 2 CPUs in all, but no node has 2
])
def test_request_no_node_fits_is_a_usage_error_within_seconds(two_nodes: Cluster, tmp_path: Path,
                                                              resources: dict[str, float], why: str) -> None:
    cfg = _config(tmp_path, "unfit", fn="on_node", n_trials=2, epochs=1, resources=resources, probe={})
    t0 = time.monotonic()
    r = two_nodes.run(tmp_path, "--config", str(cfg), timeout=90)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stdout[-4000:]
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.startswith("raysweep: error:")]
    assert len(lines) == 1, r.stdout[-4000:]
    assert "ray.resources_per_trial" in lines[0] and why in lines[0] and "does not autoscale" in lines[0]
    assert "2 nodes, the largest with 1 CPU and 0 GPUs" in lines[0]
    assert elapsed < 45, f"took {elapsed:.0f}s"
    assert not os.listdir(tmp_path / "probe_unfit")          # no trial ever started


def test_lost_node_trials_resume_from_their_checkpoints(two_nodes: Cluster, tmp_path: Path) -> None:
    victim = two_nodes.add_node("victim")                      # a third node, lost mid-sweep
    try:
        _lost_node(two_nodes, victim, tmp_path)
    finally:
        victim.stop()


def _lost_node(cluster: Cluster, victim: Any, tmp_path: Path) -> None:
    epochs, n_trials = 8, 5
    cfg = _config(tmp_path, "lost", fn="on_node", n_trials=n_trials, epochs=epochs, resources={"cpu": 1},
                  probe={"sleep": 1.0}, max_failures=2)
    probes = tmp_path / "probe_lost"
    proc = cluster.start(tmp_path, "--config", str(cfg))
    try:
        deadline = time.monotonic() + 120
        on_victim: dict[int, int] = {}
        while time.monotonic() < deadline:
            on_victim = {}
            for e in _attempts(probes):
                if e.get("node_id") == victim.node_id and e["kind"].startswith("epoch"):
                    on_victim[e["number"]] = max(on_victim.get(e["number"], -1), int(e["kind"][5:]))
            if any(last >= 2 for last in on_victim.values()):
                break
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            time.sleep(0.2)
        else:
            raise AssertionError(f"no trial reached epoch 2 on the victim node: {_attempts(probes)}")
        victim.kill_raylet()
        killed_at = time.time()
        out, _ = proc.communicate(timeout=180)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, out[-4000:]

    study = _study(tmp_path, "lost")
    assert [t.state for t in study.trials] == [TS.COMPLETE] * n_trials, out[-4000:]
    for t in study.trials:
        assert sorted(t.intermediate_values) == list(range(epochs))
    events = _attempts(probes)
    for number in on_victim:
        # the worker may outlive its raylet for a moment: its last epoch there is known only now
        last = max(int(e["kind"][5:]) for e in events
                   if e["number"] == number and e["kind"].startswith("epoch") and e["node_id"] == victim.node_id)
        later = [e for e in events if e["number"] == number and e["kind"].startswith("attempt")
                 and e["t"] > killed_at]
        assert later, f"trial {number} was on the lost node and never ran again: {events}"
        resumed = later[0]
        assert resumed["node_id"] != victim.node_id
        # from its last checkpoint: the epoch in flight when the node died may not have been saved
        assert max(1, last) <= resumed["first_epoch"] <= last + 1, (number, last, resumed)


# ---------------------------------------------------------------------------
# Fractional GPUs on a node that declares one
# ---------------------------------------------------------------------------


def _max_overlap(events: list[dict[str, Any]]) -> int:
    spans = {}
    for e in events:
        spans.setdefault(e["number"], {})[e["kind"]] = e["t"]
    edges = sorted([(s["start"], 1) for s in spans.values()] + [(s["end"], -1) for s in spans.values()])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@pytest.mark.parametrize("share, together", [(0.25, 4), (0.5, 2)])
def test_fractional_gpu_trials_share_the_gpu(gpu_head: Cluster, tmp_path: Path, share: float,
                                             together: int) -> None:
    name = f"gpu{int(share * 100)}"
    cfg = _config(tmp_path, name, fn="gpu_share", n_trials=4, epochs=1, resources={"cpu": 0.25, "gpu": share},
                  probe={"expect": together, "hold": 60, "sleep": 0.5})
    r = gpu_head.run(tmp_path, "--config", str(cfg))
    assert r.returncode == 0, r.stdout[-4000:]
    events = _attempts(tmp_path / f"probe_{name}")
    starts = [e for e in events if e["kind"] == "start"]
    assert len(starts) == 4
    for e in starts:
        assert e["gpu_ids"] == ["0"] and e["cuda_visible_devices"] == "0", e
    assert _max_overlap(events) == together, events
    assert [t.state for t in _study(tmp_path, name).trials] == [TS.COMPLETE] * 4


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(not shutil.which("nvidia-smi"), reason="needs a CUDA device")
def test_quarter_gpu_trials_see_one_cuda_device(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if _cuda_devices() < 1:
        pytest.skip("needs a CUDA device (torch sees none)")
    cluster: Cluster = request.getfixturevalue("gpu_head")
    cfg = _config(tmp_path, "cuda", fn="gpu_share", n_trials=4, epochs=1, resources={"cpu": 0.25, "gpu": 0.25},
                  probe={"expect": 4, "hold": 60, "sleep": 0.5, "cuda": True})
    r = cluster.run(tmp_path, "--config", str(cfg))
    assert r.returncode == 0, r.stdout[-4000:]
    starts = [e for e in _attempts(tmp_path / "probe_cuda") if e["kind"] == "start"]
    assert len(starts) == 4
    assert all(e["cuda_devices"] == 1 and e["cuda_ok"] for e in starts), starts


# ---------------------------------------------------------------------------
# An autoscaling cluster: a CPU: 0 head, GPU workers the autoscaler may add
# ---------------------------------------------------------------------------

# Ray's fake multi-node provider (RAY_FAKE_CLUSTER=1): a real autoscaler that
# would start worker nodes as local processes; no trial asks it to here.
FAKE_AUTOSCALING = {
    "cluster_name": "fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
    "provider": {"type": "fake_multinode", "disable_launch_config_check": True, "disable_node_updaters": True},
    "auth": {"ssh_user": "nobody"}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    "head_node_type": "ray.head.default",
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
    },
}
FAKE_HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"   # the provider's own


def test_autoscaling_cluster_with_cpu_zero_head_is_not_one_slot(tmp_path: Path) -> None:
    config = tmp_path / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(FAKE_AUTOSCALING))
    cluster = Cluster(cpus=0, gpus=0, args=(f"--autoscaling-config={config}",),
                      env={"RAY_FAKE_CLUSTER": "1", "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_ID})
    try:
        cfg = _config(tmp_path, "scale", fn="on_node", n_trials=2, epochs=1, resources={"cpu": 1, "gpu": 1},
                      probe={})
        snippet = ("import ray, sys; from raysweep.config import load_config; from raysweep.tuner import _slots; "
                   f"ray.init(address={cluster.address!r}, log_to_driver=False, logging_level='ERROR'); "
                   f"print('slots', _slots(load_config({str(cfg)!r}), False))")
        r = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=cluster.env, capture_output=True,
                           text=True, timeout=90)
    finally:
        cluster.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    # not an error, not 1 trial at a time: the default, and one line saying so
    assert "slots 8" in r.stdout, r.stdout + r.stderr
    warning = [ln for ln in r.stderr.splitlines() if ln.startswith("raysweep: warning:")]
    assert len(warning) == 1 and "autoscales" in warning[0] and "ray.max_concurrent_trials" in warning[0]
