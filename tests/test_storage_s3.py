"""ray.storage_path in a bucket: a real S3-compatible server (moto) on 127.0.0.1.

The sweep writes checkpoints, experiment state and the study mirror into the
bucket; a killed driver is resumed on a "fresh machine" (no local runs/, no Ray
temp dir) from the bucket and the config alone; and no file the sweep wrote,
locally or in the bucket, holds the secret access key.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from raysweep import storage
from raysweep.config import load_config
from tests.procs import count_trials, free_port, kill_group

ROOT = Path(__file__).resolve().parents[1]
TS = optuna.trial.TrialState
BUCKET = "raysweep-test"

# moto 5.2 answers CompleteMultipartUpload with a <CompleteMultipartUploadResponse> root;
# S3 (and MinIO, Ceph) say <CompleteMultipartUploadResult>, and the AWS SDK inside
# pyarrow treats a 200 without it as an embedded error. The launcher renames the root.
_MOTO_LAUNCHER = """
import sys
from moto.core import responses as core
_orig = core.BaseResponse.serialized
def serialized(self, action_result):
    status, headers, body = _orig(self, action_result)
    if isinstance(body, (bytes, str)):
        raw = body.encode() if isinstance(body, str) else body
        if b"<CompleteMultipartUploadResponse" in raw:
            raw = raw.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
            body = raw if isinstance(body, bytes) else raw.decode()
            for k in [k for k in headers if k.lower() == "content-length"]:
                headers.pop(k)
    return status, headers, body
core.BaseResponse.serialized = serialized
from moto.server import main
main(sys.argv[1:])
"""


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A moto S3 server on 127.0.0.1 with an empty bucket; credentials in the environment only."""
    secret = "rs-secret-" + secrets.token_hex(12)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIARAYSWEEPTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    log = open(tmp_path.parent / f"moto-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", _MOTO_LAUNCHER, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > end or proc.poll() is not None:
                    raise AssertionError("moto server did not start")
                time.sleep(0.2)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield {"endpoint": f"http://127.0.0.1:{port}", "secret": secret}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


def _config(tmp: Path, name: str, endpoint: str, n_trials: int = 6) -> Path:
    data = {
        "seed": 5,
        "training": {"entrypoint": "raysweep.examples.quadratic:train", "num_epochs": 6},
        "optimizer": {"lr": 0.01, "momentum": 0.9},
        "quadratic": {"sleep": 0.3},
        "search": {"study_name": name, "n_trials": n_trials, "metric": "score",
                   "sampler": {"type": "TPESampler", "n_startup_trials": 3, "seed": 5},
                   "pruner": "none",
                   "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1.0}}},
        "ray": {"storage_path": f"s3://{BUCKET}/sweeps", "storage_endpoint": endpoint,
                "resources_per_trial": {"cpu": 1}, "max_failures": 1},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start(cwd: Path, ray_tmp: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["RAY_TMPDIR"] = ray_tmp          # Ray's session files land where the test can grep them
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "raysweep", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _bucket(endpoint: str):
    return storage.filesystem(storage.with_endpoint(f"s3://{BUCKET}", endpoint))


def _objects(endpoint: str) -> dict[str, bytes]:
    import pyarrow.fs as pafs

    fs, base = _bucket(endpoint)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path] = f.readall()
    return out


def _local_files(*roots: Path) -> dict[str, bytes]:
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink() and not p.name.startswith("moto-"):
                try:
                    out[str(p)] = p.read_bytes()
                except OSError:   # sockets and the like
                    pass
    return out


@pytest.mark.slow
def test_sigkill_then_resume_from_the_bucket_on_a_fresh_machine(s3, tmp_path):
    work, ray_a, ray_b = (Path(tempfile.mkdtemp(prefix=p, dir="/tmp")) for p in ("rsw", "rsa", "rsb"))
    try:
        _run_kill_resume(s3, work, ray_a, ray_b)
    finally:
        for d in (work, ray_a, ray_b):
            shutil.rmtree(d, ignore_errors=True)


def _run_kill_resume(s3, work: Path, ray_a: Path, ray_b: Path) -> None:
    endpoint, secret = s3["endpoint"], s3["secret"]
    cfg = _config(work, "bkt", endpoint, n_trials=6)
    db = work / "runs/optuna_studies/bkt/study.db"
    fs, base = _bucket(endpoint)
    mirror_db = f"{base}/sweeps/bkt/study/study.db"
    import pyarrow.fs as pafs

    proc = _start(work, str(ray_a), "run", "--config", str(cfg))
    outputs = []
    try:
        end = time.time() + 150
        while not (count_trials(db, "COMPLETE") >= 2 and count_trials(db, "RUNNING") >= 1
                   and fs.get_file_info(mirror_db).type == pafs.FileType.File
                   and fs.get_file_info(f"{base}/sweeps/bkt/tuner.pkl").type == pafs.FileType.File):
            assert proc.poll() is None, f"driver exited early:\n{proc.stdout.read()}"
            assert time.time() < end, "timed out waiting for the sweep to write into the bucket"
            time.sleep(0.2)
        kill_group(proc)
        outputs.append(proc.communicate(timeout=30)[0])
    finally:
        kill_group(proc)

    # a fresh machine: the config and the bucket, nothing else
    shutil.rmtree(work / "runs")
    assert not list(work.glob("runs"))
    resumed = _start(work, str(ray_b), "run", "--config", str(cfg), "--resume")
    try:
        out, _ = resumed.communicate(timeout=240)
    finally:
        kill_group(resumed)
    outputs.append(out)
    assert resumed.returncode == 0, out

    study = optuna.load_study(study_name="bkt", storage=f"sqlite:///{db}")
    assert not [t for t in study.trials if t.state == TS.RUNNING]
    counted = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("raysweep:interrupted")]
    assert len(counted) == 6, [(t.number, t.state.name) for t in study.trials]

    objects = _objects(endpoint)
    names = {k[len(f"{BUCKET}/sweeps/bkt/"):] for k in objects}
    for f in ("best_config.yaml", "trials.parquet", "curves.parquet", "summary.txt", "sweep.json", "study.db"):
        assert f"study/{f}" in names, sorted(names)
    assert "tuner.pkl" in names and any("/checkpoint_" in n for n in names), sorted(names)
    # the mirrored study is the finished one
    snap = work / "mirror.db"
    snap.write_bytes(objects[f"{BUCKET}/sweeps/bkt/study/study.db"])
    assert count_trials(snap, "COMPLETE") == sum(t.state == TS.COMPLETE for t in study.trials)
    assert count_trials(snap, "RUNNING") == 0

    # the secret key is nowhere: not in the bucket, not in any local file, not in the output
    leaks = [name for name, data in {**objects, **_local_files(work, ray_a, ray_b)}.items()
             if secret.encode() in data]
    assert not leaks, f"the secret access key was written to {leaks}"
    assert not any(secret in o for o in outputs)


def test_credentials_in_the_storage_path_are_refused(tmp_path):
    cfg = _config(tmp_path, "cred", "http://127.0.0.1:9")
    data = yaml.safe_load(cfg.read_text())
    data["ray"]["storage_path"] = "s3://AKIAX:topsecretvalue@bucket/p"
    cfg.write_text(yaml.safe_dump(data))
    from click.testing import CliRunner

    from raysweep.cli import cli

    result = CliRunner().invoke(cli, ["run", "--config", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "credentials must not be in the config" in result.output
    assert "topsecretvalue" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path, endpoint, expected", [
    ("s3://b/p", "http://127.0.0.1:9000", "s3://b/p?endpoint_override=127.0.0.1%3A9000&scheme=http"),
    ("s3://b/p", "minio.example.com", "s3://b/p?endpoint_override=minio.example.com&scheme=https"),
    ("s3://b/p?scheme=http", "https://h:1", "s3://b/p?scheme=http&endpoint_override=h%3A1"),
    ("gs://b/p", None, "gs://b/p"),
    ("runs/ray", "http://127.0.0.1:9000", "runs/ray"),
])
def test_with_endpoint(path, endpoint, expected):
    assert storage.with_endpoint(path, endpoint) == expected


def test_experiment_and_mirror_paths_keep_the_endpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    cfg = load_config(str(_config(tmp_path, "paths", "http://127.0.0.1:9000")))
    cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, storage_endpoint=None))
    q = "?endpoint_override=127.0.0.1%3A9000&scheme=http"
    assert storage.experiment_path(cfg) == f"s3://{BUCKET}/sweeps/paths{q}"
    assert storage.bucket_path(cfg) == f"s3://{BUCKET}/sweeps/paths/study{q}"
