"""search.storage: postgresql://... on a real PostgreSQL server.

The server comes from ``.ci/run`` (Debian's postgresql, 127.0.0.1 only); its URL,
with a user that may create databases, is in ``$RAYSWEEP_TEST_POSTGRES``. Each
test gets a database of its own. Without the variable the tests that need the server are
skipped (``RAYSWEEP_REQUIRE_POSTGRES=1``, set by CI, turns the skip into a failure).
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest

from raysweep import storage
from tests.procs import kill_group, quadratic_config
from raysweep.errors import StudyError

ROOT = Path(__file__).resolve().parents[1]
TS = optuna.trial.TrialState
ADMIN_URL = os.environ.get("RAYSWEEP_TEST_POSTGRES")

NO_SERVER = ("no PostgreSQL: set RAYSWEEP_TEST_POSTGRES=postgresql://user:pw@127.0.0.1:PORT/db "
             "(a user that may CREATE DATABASE; .ci/run starts one)")


def _password(url: str) -> str:
    return urlsplit(url).password or ""


@pytest.fixture
def pg_url():
    """A fresh database on the test server; dropped afterwards. Yields its postgresql:// URL.

    Skipped (with the reason) when RAYSWEEP_TEST_POSTGRES is unset.
    """
    if not ADMIN_URL:
        if os.environ.get("RAYSWEEP_REQUIRE_POSTGRES"):
            pytest.fail("RAYSWEEP_REQUIRE_POSTGRES is set but RAYSWEEP_TEST_POSTGRES is not (see .ci/run)")
        pytest.skip(NO_SERVER)
    import psycopg2

    parts = urlsplit(ADMIN_URL)
    name = "rs_test_" + secrets.token_hex(4)
    admin = psycopg2.connect(storage.db_url(ADMIN_URL).replace("postgresql+psycopg2://", "postgresql://"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield parts._replace(path="/" + name).geturl()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAYSWEEP_STORAGE", None)
    env.update(extra)
    return env


def _start(cwd: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raysweep", *args], cwd=cwd, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _run(cwd: Path, *args: str, timeout: float = 240, **env: str) -> tuple[int, str]:
    proc = _start(cwd, *args, **env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, out


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage.db_url(url))


def _states(url: str, name: str) -> dict[str, int]:
    try:
        trials = _study(url, name).get_trials(deepcopy=False)
    except KeyError:       # the driver has not created the study yet
        return {}
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _files_holding(root: Path, text: str) -> list[str]:
    out = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if text.encode() in p.read_bytes():
                    out.append(str(p))
            except OSError:   # sockets and the like
                pass
    return out


@pytest.mark.slow
def test_sweep_on_postgres_then_status_and_visualise_read_it(pg_url, in_tmp):
    password = _password(pg_url)
    assert password
    cfg = quadratic_config(in_tmp, "pgsweep", n_trials=4, sleep=0.02, seed=11, storage=pg_url)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rsp", dir="/tmp"))   # short: Ray's socket paths
    try:
        rc, out = _run(in_tmp, "run", "--config", str(cfg), RAY_TMPDIR=str(ray_tmp))
        ray_leaks = _files_holding(ray_tmp, password)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not ray_leaks, f"the database password was written to {ray_leaks}"
    assert rc == 0, out
    outputs = [out]
    assert _states(pg_url, "pgsweep") == {"COMPLETE": 4}

    sd = in_tmp / "runs/optuna_studies/pgsweep"
    for name in ("best_config.yaml", "summary.txt", "sweep.json", "trials.parquet"):
        assert (sd / name).is_file(), name
    assert not (sd / "study.db").exists()
    import json

    assert json.loads((sd / "sweep.json").read_text())["storage"].startswith("postgresql://raysweep:***@")
    # readers go to the database when there is no trials.parquet (as while a sweep runs)
    (sd / "trials.parquet").unlink()
    (sd / "curves.parquet").unlink()
    rc, out = _run(in_tmp, "status", "pgsweep")
    outputs.append(out)
    assert rc == 2 and "RAYSWEEP_STORAGE" in out and "***" in out, out
    rc, out = _run(in_tmp, "status", "pgsweep", RAYSWEEP_STORAGE=storage.db_url(pg_url))
    outputs.append(out)
    assert rc == 0, out
    assert "COMPLETE" in out.upper() and out.count("\n") >= 4, out
    rc, out = _run(in_tmp, "visualise", "--mode", "search", "--study-name", "pgsweep",
                   RAYSWEEP_STORAGE=storage.db_url(pg_url))
    outputs.append(out)
    assert rc == 0, out
    assert (sd / "report.html").is_file() or list((sd / "plots").glob("*")), out

    # the password is in the config only: not in any output, nor in any file the sweep wrote
    assert not [o for o in outputs if password in o]
    leaks = [f for f in _files_holding(in_tmp, password) if not f.endswith("pgsweep.yaml")]
    assert not leaks, f"the database password was written to {leaks}"


@pytest.mark.slow
def test_sigkill_then_resume_repairs_running_trials_on_postgres(pg_url, in_tmp):
    cfg = quadratic_config(in_tmp, "pgcrash", n_trials=6, sleep=0.25, seed=11, storage=pg_url)
    proc = _start(in_tmp, "run", "--config", str(cfg))
    try:
        end = time.time() + 120
        while True:
            s = _states(pg_url, "pgcrash")
            if s.get("COMPLETE", 0) >= 2 and s.get("RUNNING", 0) >= 1:
                break
            assert proc.poll() is None, f"driver exited early:\n{proc.stdout.read()}"
            assert time.time() < end, f"timed out waiting for the sweep: {s}"
            time.sleep(0.2)
        kill_group(proc)
        proc.wait(30)
    finally:
        kill_group(proc)
    study = _study(pg_url, "pgcrash")
    left_running = {t.number: t.params for t in study.trials if t.state == TS.RUNNING}
    assert left_running
    done_before = {t.number: t.params for t in study.trials if t.state == TS.COMPLETE}

    rc, out = _run(in_tmp, "run", "--config", str(cfg), "--resume", timeout=300)
    assert rc == 0, out
    study = _study(pg_url, "pgcrash")
    assert not [t for t in study.trials if t.state == TS.RUNNING]
    counted = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("raysweep:interrupted")]
    assert len(counted) == 6, [(t.number, t.state.name) for t in study.trials]
    for number, params in done_before.items():
        assert study.trials[number].state == TS.COMPLETE and study.trials[number].params == params
    # a trial left RUNNING either continued from its checkpoint, or was marked FAIL and rerun
    for number, params in left_running.items():
        t = study.trials[number]
        if t.state == TS.FAIL:
            assert t.user_attrs.get("raysweep:interrupted")
            assert any(r.params == params and r.state == TS.COMPLETE for r in study.trials[number + 1:])
        else:
            assert t.state == TS.COMPLETE
    assert _password(pg_url) not in out


def test_a_dropped_connection_is_replaced(pg_url):
    import psycopg2

    from raysweep.tuner import open_storage

    db = open_storage(pg_url)
    optuna.create_study(study_name="drop", storage=db)
    admin = psycopg2.connect(storage.db_url(ADMIN_URL).replace("postgresql+psycopg2://", "postgresql://"))
    admin.autocommit = True
    with admin.cursor() as cur:   # the server drops every connection the storage holds
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (urlsplit(pg_url).path[1:],))
    admin.close()
    assert optuna.get_all_study_names(db) == ["drop"]   # pool_pre_ping reconnected


def test_an_unreachable_server_is_retried_then_one_masked_line(monkeypatch, caplog):
    from raysweep import tuner

    monkeypatch.setattr(tuner, "DB_RETRY_WAIT_S", 0.01)
    with socket_bound() as port:   # a port where nothing answers
        url = f"postgresql://someone:hunter2secret@127.0.0.1:{port}/nope"
        with caplog.at_level(logging.WARNING, logger="raysweep"), pytest.raises(StudyError) as err:
            tuner.open_storage(url, config_path="c.yaml")
    msg = str(err.value)
    assert msg.startswith("c.yaml: search.storage: cannot open postgresql://someone:***@127.0.0.1")
    assert "hunter2secret" not in msg and "hunter2secret" not in caplog.text
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == tuner.DB_RETRIES - 1


class socket_bound:
    """A local port that is bound but not listening: connections are refused."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
