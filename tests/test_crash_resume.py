"""A driver killed with SIGKILL, or stopped with Ctrl-C, resumes without losing or repeating work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.procs import count_trials, kill_group, quadratic_config

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TS = optuna.trial.TrialState


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("RAY_ADDRESS", None)
    return env


def _start(tmp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raysweep", *args], cwd=tmp, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the sweep")


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("raysweep:interrupted")]


def test_sigkill_then_resume_finishes_exactly_n_trials(in_tmp):
    cfg = quadratic_config(in_tmp, "crash", n_trials=8, sleep=0.25)
    db = in_tmp / "runs/optuna_studies/crash/study.db"
    proc = _start(in_tmp, "run", "--config", str(cfg))
    try:
        # kill the driver (and the Ray it started) while trials run, after some finished
        _wait_for(lambda: count_trials(db, "COMPLETE") >= 3 and count_trials(db, "RUNNING") >= 1, 120, proc)
        kill_group(proc, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc, signal.SIGKILL)
    study = optuna.load_study(study_name="crash", storage=f"sqlite:///{db}")
    assert any(t.state == TS.RUNNING for t in study.trials)
    done_before = {t.number: t.params for t in study.trials if t.state == TS.COMPLETE}

    resumed = _start(in_tmp, "run", "--config", str(cfg), "--resume")
    out, _ = resumed.communicate(timeout=300)
    kill_group(resumed, signal.SIGKILL)
    assert resumed.returncode == 0, out

    study = optuna.load_study(study_name="crash", storage=f"sqlite:///{db}")
    assert not [t for t in study.trials if t.state == TS.RUNNING]
    counted = _counted(study)
    assert len(counted) == 8, [(t.number, t.state) for t in study.trials]
    params = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(params)) == len(params), "a parameter set ran twice"
    for number, p in done_before.items():   # finished trials were not touched
        assert study.trials[number].state == TS.COMPLETE and study.trials[number].params == p
    assert (in_tmp / "runs/optuna_studies/crash/best_config.yaml").exists()


def test_ctrl_c_stops_cleanly_and_resume_completes(in_tmp):
    cfg = quadratic_config(in_tmp, "intr", n_trials=8, sleep=0.25)
    db = in_tmp / "runs/optuna_studies/intr/study.db"
    proc = _start(in_tmp, "run", "--config", str(cfg))
    try:
        _wait_for(lambda: count_trials(db, "COMPLETE") >= 2 and count_trials(db, "RUNNING") >= 1, 120, proc)
        os.kill(proc.pid, signal.SIGINT)          # what Ctrl-C sends to the driver
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_group(proc, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert f"raysweep run --config {cfg} --resume" in out
    study_dir = in_tmp / "runs/optuna_studies/intr"
    assert (study_dir / "best_config.yaml").exists()
    assert "interrupted" in (study_dir / "summary.txt").read_text()

    resumed = _start(in_tmp, "run", "--config", str(cfg), "--resume")
    out, _ = resumed.communicate(timeout=300)
    kill_group(resumed, signal.SIGKILL)
    assert resumed.returncode == 0, out
    study = optuna.load_study(study_name="intr", storage=f"sqlite:///{db}")
    assert len(_counted(study)) == 8 and not [t for t in study.trials if t.state == TS.RUNNING]
    # a trial cut short by Ctrl-C continued from its checkpoint: some trial's epochs were
    # reported across the two drivers, and every complete trial has all 6 epochs
    for t in study.trials:
        if t.state == TS.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(6))
