"""Cross-validation trials: aggregation, and folds running concurrently as Ray actors."""
from __future__ import annotations

import pytest
import yaml

from raysweep.config import load_config
from raysweep.errors import ConfigError
from raysweep.trainers import cv
from raysweep.trainers.demo import write_synthetic
from raysweep.trainers.split import make_splits
from raysweep.trial import LocalSession, session


@pytest.mark.parametrize("how,maximize,expected", [
    ("mean", True, 0.6), ("median", True, 0.7), ("worst", True, 0.3), ("worst", False, 0.8),
])
def test_aggregate(how, maximize, expected):
    assert cv.aggregate([0.3, 0.7, 0.8], how, maximize=maximize) == pytest.approx(expected)


def test_combine_names_fold_columns():
    folds = [{"train_loss": 1.0, "train_acc": 0.5, "val_loss": 2.0, "val_acc": 0.4, "lr": 0.1, "epoch": 3},
             {"train_loss": 3.0, "train_acc": 0.7, "val_loss": 1.0, "val_acc": 0.6, "lr": 0.1, "epoch": 3}]
    out = cv.combine(folds, "worst", {"search": {"metric": "val_acc", "direction": "maximize"}})
    assert out["val_acc"] == 0.4 and out["val_loss"] == 2.0 and out["epoch"] == 3
    assert out["val_acc.fold_1"] == 0.6 and out["train_loss.fold_0"] == 1.0


@pytest.fixture
def cv_config(tmp_path):
    raw = write_synthetic(tmp_path / "data" / "tiny", classes=3, per_class=40, size=12)
    make_splits(raw, folds=2, test_fraction=0.1, seed=0)
    cfg = {
        "seed": 1,
        "data": {"dataset_name": "tiny", "data_dir": str(raw.parent), "image_size": 12},
        "model": {"name": "simple_cnn"},
        "training": {"batch_size": 4, "num_epochs": 2, "device": "cpu"},
        "search": {"cross_validation": {"enabled": True, "n_folds": 2, "aggregation": "mean"},
                   "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}},
        "ray": {"resources_per_trial": {"cpu": 1}},
    }
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path).to_dict()


def test_cv_without_ray_runs_folds_in_turn(cv_config, monkeypatch):
    monkeypatch.setattr(cv, "_ray_ready", lambda: False)
    with session(LocalSession(quiet=True)) as s:
        r = cv.train_cv(cv_config)
    assert not r.parallel and [m["epoch"] for m in s.history] == [0, 1]
    assert "val_acc.fold_1" in s.history[-1]
    assert s.history[-1]["val_acc"] == pytest.approx((s.history[-1]["val_acc.fold_0"] + s.history[-1]["val_acc.fold_1"]) / 2)


def test_cv_needs_enough_folds(cv_config):
    cv_config["search"]["cross_validation"]["n_folds"] = 3
    with pytest.raises(ConfigError, match="has 2 fold"):
        cv.train_cv(cv_config)


@pytest.mark.ray
def test_cv_folds_run_concurrently_as_ray_actors(ray_local, cv_config):
    with session(LocalSession(quiet=True)) as s:
        r = cv.train_cv(cv_config)
    assert r.parallel and len(s.history) == 2
    first, last = r.timings[0], r.timings[-1]
    assert {pid for _, _, _, pid in first} and len({pid for _, _, _, pid in first}) == 2
    # each fold's span (first epoch start .. last epoch end) overlaps the other's
    spans = [(first[k][1], last[k][2]) for k in range(2)]
    assert max(s for s, _ in spans) < min(e for _, e in spans)
    # and within an epoch, both folds were running at the same moment
    assert any(max(t[1] for t in ep) < min(t[2] for t in ep) for ep in r.timings)
    assert {"val_acc.fold_0", "val_acc.fold_1", "train_loss.fold_1"} <= set(s.history[0])


@pytest.mark.ray
def test_cv_trial_inside_tune_does_not_deadlock(ray_local, cv_config, tmp_path):
    """A 1-CPU trial on a 2-CPU Ray starts its 2 fold actors (they ask for 0 CPUs)."""
    from ray import tune

    from raysweep import constants
    from raysweep.trial import make_trainable

    cv_config["training"]["num_epochs"] = 2
    tuner = tune.Tuner(
        tune.with_resources(make_trainable(cv_config, None), {"cpu": 1}),
        param_space={constants.TRIAL_PARAMS_KEY: {"optimizer.lr": 0.02}, constants.TRIAL_NUMBER_KEY: 0},
        tune_config=tune.TuneConfig(num_samples=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="cv", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    for res in results:
        assert res.metrics["epoch"] == 1
        assert "val_acc.fold_1" in res.metrics
        assert res.checkpoint is not None


@pytest.mark.ray
def test_cv_sweep_keeps_per_fold_curves_and_the_aggregate_objective(ray_local, cv_config, tmp_path, monkeypatch):
    """A real sweep with 2-fold CV: curves.parquet holds every fold; each trial's value is the folds' worst."""
    import optuna
    import pyarrow.parquet as pq

    from raysweep.tuner import run_sweep

    monkeypatch.chdir(tmp_path)
    data = {k: v for k, v in cv_config.items() if k in ("seed", "data", "model", "training", "optimizer", "scheduler")}
    data["search"] = {"study_name": "cv", "n_trials": 2, "metric": "val_acc", "direction": "maximize",
                      "sampler": {"type": "RandomSampler", "seed": 0}, "pruner": "none", "include_baseline": False,
                      "cross_validation": {"enabled": True, "n_folds": 2, "aggregation": "worst"},
                      "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}}
    data["ray"] = {"resources_per_trial": {"cpu": 1}, "max_failures": 0}
    (tmp_path / "cv_sweep.yaml").write_text(yaml.safe_dump(data))
    out = run_sweep(load_config(tmp_path / "cv_sweep.yaml"))
    assert out.counts == {"COMPLETE": 2}
    curves = pq.read_table(out.study_dir / "curves.parquet").to_pylist()
    assert len(curves) == 4                                      # 2 trials x 2 epochs
    for row in curves:
        assert row["val_acc"] == pytest.approx(min(row["val_acc.fold_0"], row["val_acc.fold_1"]))
        assert {"val_loss.fold_1", "train_acc.fold_0"} <= set(row)
    study = optuna.load_study(study_name="cv", storage=f"sqlite:///{out.study_dir / 'study.db'}")
    for t in study.trials:
        rows = [r for r in curves if r["number"] == t.number]
        assert t.value == pytest.approx(max(r["val_acc"] for r in rows))   # objective: best epoch of the aggregate
