"""`raysweep status`: a best-first table of a study's trials, finished or running."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from raysweep import constants
from raysweep.cli import cli
from tests.study_fixtures import make_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    make_study(root, "done", n_complete=4, n_pruned=2, n_fail=1)
    make_study(root, "live", n_complete=2, n_pruned=1, n_fail=0, n_running=2, finished=False)
    make_study(root, "empty", n_complete=0, n_pruned=0, n_fail=0, finished=False)
    return root


def status(*args: str) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(cli, ["status", *args], catch_exceptions=False)


def test_finished_study_table_best_first(sdir):
    res = status("done", "--studies-dir", str(sdir))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "study done: finished, val_acc (maximize), 7 trials (of 7): COMPLETE 4, PRUNED 2, FAIL 1"
    assert lines[1].split() == ["#", "state", "lr", "batch_size", "name", "val_acc", "epochs", "seconds", "node"]
    rows = [line.split() for line in lines[2:9]]
    values = [float(r[5]) for r in rows if r[1] == "COMPLETE"]
    assert values == sorted(values, reverse=True) and len(values) == 4
    assert [r[1] for r in rows] == ["COMPLETE"] * 4 + ["PRUNED"] * 2 + ["FAIL"]
    assert rows[0][6:] == ["5", "5m00s", rows[0][8]] and rows[0][8].startswith("10.0.0.")
    assert lines[9].startswith(f"best: trial {rows[0][0]}, val_acc = {rows[0][5]}; wall time ")
    assert lines[-1] == "* no final value: the best epoch so far"


def test_running_study_reads_the_storage(sdir):
    res = status("live", "--studies-dir", str(sdir))
    assert res.exit_code == 0, res.output
    assert "study live: running, val_acc (maximize), 5 trials (of 5): COMPLETE 2, PRUNED 1, RUNNING 2" in res.output
    rows = [line.split() for line in res.output.splitlines()[2:]]
    assert [r[1] for r in rows if len(r) > 1].count("RUNNING") == 2


def test_limit_and_params(sdir):
    res = status("done", "--studies-dir", str(sdir), "--limit", "2", "--params", "lr")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].split() == ["#", "state", "lr", "val_acc", "epochs", "seconds", "node"]
    assert lines[4] == "... 5 more (--limit 0 shows all)"


def test_no_trials_yet(sdir):
    res = status("empty", "--studies-dir", str(sdir))
    assert res.exit_code == 0
    assert res.output == "study empty: running, val_acc (maximize), 0 trials\nno trials yet\n"


def test_without_name_lists_studies(sdir, tmp_path):
    res = status("--studies-dir", str(sdir))
    assert res.output.splitlines() == ["done  (finished, val_acc maximize, 7 trials)",
                                       "empty  (running, val_acc maximize)",
                                       "live  (running, val_acc maximize, 5 trials)"]
    assert status("--studies-dir", str(tmp_path)).output == f"no studies in {tmp_path}\n"


def test_unknown_study_exit_2_lists_existing(sdir):
    res = status("nope", "--studies-dir", str(sdir))
    assert res.exit_code == 2
    assert res.output == f"raysweep: error: no study named 'nope' in {sdir}; existing studies: done, empty, live\n"


def test_masked_storage_of_a_running_sweep(sdir, tmp_path, monkeypatch):
    monkeypatch.delenv("RAYSWEEP_STORAGE", raising=False)
    shutil.copytree(sdir / "live", tmp_path / "live")
    sweep = tmp_path / "live" / constants.SWEEP_FILE
    data = json.loads(sweep.read_text())
    real, data["storage"] = data["storage"], "postgresql://u:***@db/optuna"
    sweep.write_text(json.dumps(data))
    res = status("live", "--studies-dir", str(tmp_path))
    assert res.exit_code == 2
    assert "is masked (postgresql://u:***@db/optuna); pass --storage URL or set RAYSWEEP_STORAGE" in res.output
    assert status("live", "--studies-dir", str(tmp_path), "--storage", real).exit_code == 0
    monkeypatch.setenv("RAYSWEEP_STORAGE", real)
    assert status("live", "--studies-dir", str(tmp_path)).exit_code == 0


def _fresh(args: list[str], cwd: Path) -> tuple[float, str]:
    code = ("import sys, time; t = time.perf_counter(); from raysweep.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('SECONDS', time.perf_counter() - t)\n"
            "print('LOADED', sorted(m for m in ('optuna', 'matplotlib', 'pandas', 'pyarrow', 'ray', 'torch')"
            " if m in sys.modules))")
    env_path = {"PYTHONPATH": str(ROOT)}
    import os

    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True,
                         env={**os.environ, **env_path}).stdout
    seconds = float(out.split("SECONDS ")[1].split()[0])
    return seconds, out.split("LOADED ")[1].strip()


def test_status_stays_light(sdir):
    seconds, loaded = _fresh(["status", "--help"], ROOT)
    assert loaded == "[]"
    assert seconds < 1.0          # ~0.1 s here; the bound only catches a heavy import creeping in
    _, loaded = _fresh(["status", "done", "--studies-dir", str(sdir)], ROOT)
    assert loaded == "['pyarrow']"            # a finished sweep: trials.parquet, no optuna
    _, loaded = _fresh(["status", "live", "--studies-dir", str(sdir)], ROOT)
    assert "optuna" in loaded and "matplotlib" not in loaded
