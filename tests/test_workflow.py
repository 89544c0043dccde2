"""The seed's workflow, verbatim, on the demo's digits after the demo set them up.

    ml-init-config data/digits --optuna --yes
    ml-search --config configs/digits_config.yaml --n-trials 50
    ml-visualise --mode search --study-name digits_optimization
    ml-train --config runs/optuna_studies/digits_optimization/best_config.yaml

Each step runs in-process exactly as its ``ml-*`` console script does
(``cli.main(args=["ml-...", *argv], prog_name="")``), with fewer trials and
epochs so the whole chain takes well under a minute.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from raysweep import constants
from raysweep.cli import ALIASES, cli
from raysweep.config import load_config
from raysweep.trainers.demo import prepare_demo
from raysweep.trainers.init_config import DEFAULT_SEARCH_SPACE

STUDY = "digits_optimization"


def _ml(*argv: str):
    """Run ``ml-<name> ARGS`` the way the console script does; fails the test on a non-zero exit."""
    res = CliRunner().invoke(cli, list(argv), prog_name="")
    assert res.exit_code == 0, f"{' '.join(argv)} exited {res.exit_code}:\n{res.output}"
    return res


def test_the_ml_scripts_are_installed_and_name_themselves():
    scripts = {ep.name: ep.value for ep in importlib.metadata.distribution("raysweep").entry_points
               if ep.group == "console_scripts"}
    assert {name for name in scripts if name.startswith("ml-")} == set(ALIASES)
    for name, command in ALIASES.items():
        assert scripts[name] == f"raysweep.cli:{name.replace('-', '_')}"
        assert command in cli.commands
        path = shutil.which(name)
        assert path, f"{name} is not on PATH (pip install -e .)"
    # one real script: the usage line names the script, not "ml-split split"
    out = subprocess.run([shutil.which("ml-split"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("Usage: ml-split [OPTIONS]\n"), out.stdout + out.stderr
    res = CliRunner().invoke(cli, ["ml-init-config", "--nope"], prog_name="")
    assert res.exit_code == 2 and "Try 'ml-init-config --help' for help." in res.output
    # the aliases are not raysweep subcommands
    assert CliRunner().invoke(cli, ["ml-split", "--help"], prog_name="raysweep").exit_code == 2


@pytest.mark.ray
@pytest.mark.slow
def test_seed_workflow_on_the_demo_data(ray_local, in_tmp):
    demo = prepare_demo()               # what `raysweep demo` leaves behind, less its sweep
    assert demo.config_path == Path("configs/digits_demo.yaml")

    # 1. ml-init-config data/digits --optuna --yes
    res = _ml("ml-init-config", "data/digits", "--optuna", "--yes")
    assert "digits: 10 classes, 1797 images" in res.output and "5 folds + test" in res.output
    assert "Wrote configs/digits_config.yaml" in res.output
    config_path = in_tmp / "configs" / "digits_config.yaml"
    cfg = load_config(config_path)
    assert cfg.search.study_name == STUDY != load_config(demo.config_path).search.study_name
    assert yaml.safe_load(config_path.read_text())["search"]["search_space"] == DEFAULT_SEARCH_SPACE
    d = cfg.data
    assert (d["model"]["name"], d["data"]["image_size"], d["data"]["augment"]) == ("tiny_net", 8, False)
    assert (d["data"]["data_dir"], d["model"]["num_classes"]) == ("data/digits", 10)
    # the same command again is fine (nothing to change)
    assert "is up to date" in _ml("ml-init-config", "data/digits", "--optuna", "--yes").output

    # 2. ml-search --config configs/digits_config.yaml --n-trials 50   (4 trials of 2 epochs here)
    res = _ml("ml-search", "--config", "configs/digits_config.yaml", "--n-trials", "4",
              "--set", "training.num_epochs=2")
    study_dir = in_tmp / constants.DEFAULT_STUDIES_DIR / STUDY
    assert f"study {STUDY}: complete 4" in res.output
    assert f"best config: {study_dir / constants.BEST_CONFIG_FILE}" in res.output
    for name in (constants.BEST_CONFIG_FILE, constants.TRIALS_FILE, constants.CURVES_FILE, "summary.txt", "study.db"):
        assert (study_dir / name).is_file(), name
    import pyarrow.parquet as pq

    trials = pq.read_table(study_dir / constants.TRIALS_FILE).to_pylist()
    assert len(trials) == 4 and all(t["state"] == "COMPLETE" for t in trials)
    assert max(t["value"] for t in trials) > 0.3            # 2 epochs of tiny_net learn something
    best = yaml.safe_load((study_dir / constants.BEST_CONFIG_FILE).read_text())
    assert best["training"]["num_epochs"] == 2 and best["search"]["study_name"] == STUDY

    # 3. ml-visualise --mode search --study-name digits_optimization
    res = _ml("ml-visualise", "--mode", "search", "--study-name", STUDY)
    plots = sorted(p.name for p in (study_dir / constants.PLOTS_DIR).glob("*.png"))
    assert "optimization_history.png" in plots and len(plots) >= 3, plots
    assert (study_dir / constants.PLOTS_DIR / constants.REPORT_FILE).is_file()

    # 4. ml-train --config runs/optuna_studies/digits_optimization/best_config.yaml
    res = _ml("ml-train", "--config", f"{constants.DEFAULT_STUDIES_DIR}/{STUDY}/{constants.BEST_CONFIG_FILE}")
    lr, batch = best["optimizer"]["lr"], best["training"]["batch_size"]
    run = in_tmp / "runs" / f"digits_batch_{batch}_lr_{lr:g}_fold_0"
    assert f"Run directory: runs/{run.name}" in res.output
    for name in ("weights/best.pt", "weights/last.pt", "summary.txt", "train.log", "metadata.json", "config.yaml"):
        assert (run / name).is_file(), name
    summary = dict(line.split(":", 1) for line in (run / "summary.txt").read_text().splitlines())
    assert summary["epochs"].strip() == "2" and 0.0 <= float(summary["test_acc"]) <= 1.0
