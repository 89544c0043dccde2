"""`raysweep submit / logs / stop`: pure helpers, CLI errors, and a real local head.

The slow tests start their own Ray head (`ray start --head`, dashboard on
127.0.0.1, token auth with a token of their own) on free ports and a short temp
dir, and stop exactly the processes it started: never a global `ray stop`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from click.testing import CliRunner

from raysweep import jobs
from raysweep.cli import cli
from raysweep.errors import ConfigError, UsageError
from tests.procs import free_port, kill

ROOT = Path(__file__).resolve().parents[1]

QUADRATIC = {
    "seed": 42,
    "training": {"entrypoint": "raysweep.examples.quadratic:train", "num_epochs": 2},
    "optimizer": {"lr": 0.01, "momentum": 0.9},
    "quadratic": {"sleep": 0.0},
    "search": {
        "study_name": "quadratic_submit",
        "n_trials": 3,
        "metric": "score",
        "direction": "maximize",
        "sampler": {"type": "RandomSampler", "seed": 1},
        "pruner": {"type": "none"},
        "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0}},
    },
    "ray": {"resources_per_trial": {"cpu": 1, "gpu": 0}, "max_failures": 0},
}


def _project(tmp_path: Path, **over: Any) -> Path:
    cfg = {**QUADRATIC, **over}
    (tmp_path / "configs").mkdir(exist_ok=True)
    path = tmp_path / "configs" / "quadratic.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("address, env, expected", [
    (None, {}, "http://127.0.0.1:8265"),
    (None, {"RAY_ADDRESS": "http://127.0.0.1:9999/"}, "http://127.0.0.1:9999"),
    (None, {"RAY_ADDRESS": "ray://127.0.0.1:10001"}, "http://127.0.0.1:8265"),
    (None, {"RAY_ADDRESS": "auto"}, "http://127.0.0.1:8265"),
    ("http://127.0.0.1:8266", {"RAY_ADDRESS": "http://127.0.0.1:9999"}, "http://127.0.0.1:8266"),
    ("https://ray.example.org/", {}, "https://ray.example.org"),
])
def test_resolve_address(address: str | None, env: dict[str, str], expected: str) -> None:
    assert jobs.resolve_address(address, env=env) == expected


@pytest.mark.parametrize("bad", ["127.0.0.1:8265", "ray://127.0.0.1:10001", "ftp://x", "http://"])
def test_resolve_address_rejects_non_http(bad: str) -> None:
    with pytest.raises(UsageError, match="http"):
        jobs.resolve_address(bad, env={})


def test_cluster_file_port(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("head_start_ray_commands:\n  - ray start --head --dashboard-host=127.0.0.1 --dashboard-port=8300\n")
    assert jobs.resolve_address(cluster=f, env={"RAY_ADDRESS": "http://127.0.0.1:1"}) == "http://127.0.0.1:8300"
    f.write_text("[not, a, mapping]\n")
    with pytest.raises(UsageError, match="--cluster"):
        jobs.dashboard_port_from_cluster(f)


def test_auth_headers(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.write_text("s3cret\n")
    env = {"RAY_AUTH_TOKEN_PATH": str(tok)}
    assert jobs.auth_headers("http://127.0.0.1:8265", env) == {"Authorization": "Bearer s3cret"}
    assert jobs.auth_headers("http://localhost:8265", {**env, "RAY_AUTH_MODE": "token"}) != {}
    assert jobs.auth_headers("https://ray.example.org", env) != {}
    # never in clear text across a network, never when auth is off
    assert jobs.auth_headers("http://10.0.0.5:8265", env) == {}
    assert jobs.auth_headers("http://127.0.0.1:8265", {**env, "RAY_AUTH_MODE": "disabled"}) == {}
    assert jobs.auth_headers("http://127.0.0.1:8265", {"RAY_AUTH_TOKEN": "t"}) == {"Authorization": "Bearer t"}
    with pytest.raises(UsageError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.auth_headers("http://127.0.0.1:8265", {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_build_job_pins_outputs_and_ships_the_working_dir(tmp_path: Path) -> None:
    cfg = _project(tmp_path)
    spec = jobs.build_job(cfg, ["--n-trials", "5", "--set", "training.num_epochs=3"],
                          working_dir=tmp_path, excludes=["big/"])
    assert spec.config_relpath == "configs/quadratic.yaml"
    assert spec.config.data["training"]["num_epochs"] == 3          # --set applied locally
    e = spec.entrypoint
    assert e.startswith("raysweep run --config configs/quadratic.yaml --address auto ")
    # what the head's shell makes of it: ~ expands there, not here
    argv = subprocess.run(["sh", "-c", "printf '%s\\n' " + e], env={"HOME": "/h", "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert "search.output_dir=/h/raysweep/runs/optuna_studies" in argv
    assert "ray.storage_path=/h/raysweep/runs/ray" in argv
    assert argv[-4:] == ["--n-trials", "5", "--set", "training.num_epochs=3"]
    assert spec.runtime_env["working_dir"] == str(tmp_path.resolve())
    assert {".git/", "/runs/", "big/"} <= set(spec.runtime_env["excludes"])
    assert any("ray.storage_path" in n for n in spec.notes)


def test_build_job_leaves_urls_absolute_paths_and_user_overrides(tmp_path: Path) -> None:
    cfg = _project(tmp_path, ray={"storage_path": "s3://bucket/prefix"},
                   training={**QUADRATIC["training"], "output_dir": "/abs/runs"})
    spec = jobs.build_job(cfg, ["--set", "search.output_dir=/mnt/x", "--address", "ray://h:1"],
                          working_dir=tmp_path, results_dir="/srv/r")
    assert "storage_path=" not in spec.entrypoint and "training.output_dir" not in spec.entrypoint
    assert spec.entrypoint.count("search.output_dir") == 1 and "--address auto" not in spec.entrypoint
    assert spec.notes == ()


def test_build_job_refuses_configs_that_would_not_travel(tmp_path: Path) -> None:
    inside = tmp_path / "proj"
    inside.mkdir()
    cfg = _project(tmp_path)
    with pytest.raises(UsageError, match="outside the working directory"):
        jobs.build_job(cfg, working_dir=inside)
    (inside / "runs").mkdir()
    hidden = inside / "runs" / "c.yaml"
    hidden.write_text(cfg.read_text())
    with pytest.raises(UsageError, match="excluded"):
        jobs.build_job(hidden, working_dir=inside)
    with pytest.raises(ConfigError, match="file not found"):
        jobs.build_job(inside / "nope.yaml", working_dir=inside)


# ---------------------------------------------------------------------------
# CLI: everything that fails before contacting a cluster
# ---------------------------------------------------------------------------


def _invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env)


def test_submit_bad_config_exits_2_without_contacting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _project(tmp_path)

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("contacted the cluster")

    monkeypatch.setattr(jobs, "connect", boom)
    r = _invoke("submit", "--config", str(cfg), "--", "--set", "search.n_trials=0")
    assert r.exit_code == 2 and "search.n_trials: must be >= 1" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = _invoke("submit", "--config", str(cfg), "--", "--n-trial", "3")
    assert r.exit_code == 2 and "--n-trials" in r.output


def test_submit_unreachable_says_ray_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _project(tmp_path)
    port = free_port()
    cluster = ROOT / "clusters" / "aws.yaml"
    r = _invoke("submit", "--config", str(cfg), "--address", f"http://127.0.0.1:{port}", "--cluster", str(cluster))
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"ray dashboard {cluster}" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    r = _invoke("logs", "raysubmit_x", "--address", f"http://127.0.0.1:{port}")
    assert r.exit_code == 1 and "ray dashboard clusters/aws.yaml" in r.output


# ---------------------------------------------------------------------------
# A real local head: dashboard on 127.0.0.1, token auth on
# ---------------------------------------------------------------------------


def _descendants(pids: set[int]) -> set[int]:
    """``pids`` plus every process below them (Ray workers get their own process group)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out = set(pids)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in out and pid not in out:
                out.add(pid)
                grew = True
    return out


def _group(pgid: int) -> set[int]:
    out: set[int] = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    out.add(int(d.name))
            except OSError:
                continue
    return out


@pytest.fixture(scope="module")
def local_head() -> Iterator[dict[str, Any]]:
    """A Ray head of this test's own; yields its dashboard address and env."""
    ray_bin = shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the ray CLI is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))     # short: unix socket paths
    token = tmp / "auth_token"
    token.write_text("raysweep-test-token-" + os.urandom(8).hex())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    dash = free_port()
    ports = {p: free_port() for p in ("--port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                                       "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                       "--metrics-export-port", "--node-manager-port", "--object-manager-port")}
    cmd = [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={tmp / 't'}",
           "--include-dashboard=true", "--disable-usage-stats",
           *(f"{flag}={port}" for flag, port in ports.items())]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = "timed out"
    started = _descendants(_group(proc.pid))
    try:
        if proc.returncode != 0:
            pytest.fail(f"ray start failed: {out[-2000:]}")
        yield {"address": f"http://127.0.0.1:{dash}", "env": env, "token": token, "tmp": tmp}
    finally:
        kill(_descendants(started | _group(proc.pid)), term_wait=5.0)
        shutil.rmtree(tmp, ignore_errors=True)


def _cli_env(head: dict[str, Any]) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(head["token"]), "RAY_ADDRESS": head["address"]}


@pytest.mark.slow
@pytest.mark.ray
def test_submit_runs_a_sweep_on_the_head(local_head: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    _project(project)
    (project / "runs").mkdir()
    (project / "runs" / "junk.bin").write_bytes(b"x" * 1024)
    results = tmp_path / "results"
    monkeypatch.chdir(project)
    for k, v in _cli_env(local_head).items():
        monkeypatch.setenv(k, v)
    r = _invoke("submit", "--config", "configs/quadratic.yaml", "--results-dir", str(results), "--follow",
                "--", "--n-trials", "3")
    assert r.exit_code == 0, r.output
    assert "submitted job raysubmit_" in r.output and "raysweep logs raysubmit_" in r.output
    study = results / "runs" / "optuna_studies" / "quadratic_submit"
    assert (study / "best_config.yaml").is_file(), r.output
    best = yaml.safe_load((study / "best_config.yaml").read_text())
    assert best["training"]["entrypoint"] == "raysweep.examples.quadratic:train"
    job_id = next(w for w in r.output.split() if w.startswith("raysubmit_"))
    r2 = _invoke("logs", job_id)
    assert r2.exit_code == 0 and "best config:" in r2.output and "SUCCEEDED" in r2.output


@pytest.mark.slow
@pytest.mark.ray
def test_stop_and_logs_of_a_running_job(local_head: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in _cli_env(local_head).items():
        monkeypatch.setenv(k, v)
    client = jobs.connect(local_head["address"])
    job_id = client.submit_job(entrypoint="echo started-$RAY_AUTH_MODE; sleep 120")
    deadline = time.monotonic() + 30
    while "started" not in client.get_job_logs(job_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    r = _invoke("logs", job_id)
    assert r.exit_code == 0 and "started-token" in r.output
    r = _invoke("stop", job_id)
    assert r.exit_code == 0 and f"stopping job {job_id}" in r.output
    r = _invoke("logs", job_id, "--follow")
    assert r.exit_code == 1 and "STOPPED" in r.output
    r = _invoke("stop", "raysubmit_doesnotexist")
    assert r.exit_code == 2 and "no job" in r.output


@pytest.mark.slow
@pytest.mark.ray
def test_wrong_token_is_one_line(local_head: dict[str, Any], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(wrong))
    r = _invoke("logs", "raysubmit_x", "--address", local_head["address"])
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1 and "token" in r.output
