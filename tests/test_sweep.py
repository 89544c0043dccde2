"""End-to-end sweeps on a real local Ray (2 CPUs), with tiny trials."""
from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from raysweep.cli import cli
from raysweep.config import load_config
from raysweep.errors import ConfigError, StudyError
from raysweep.tuner import run_sweep, with_overrides
from tests.trainables import read_probes

pytestmark = pytest.mark.ray

TS = optuna.trial.TrialState


def make_config(tmp: Path, *, fn="timed", n_trials=6, epochs=3, sleep=0.05, space=None, sampler=None,
                pruner=None, extra=None, name="t") -> Path:
    probe = tmp / f"probe_{name}"
    probe.mkdir(exist_ok=True)
    data = {
        "seed": 7,
        "training": {"entrypoint": f"tests.trainables:{fn}", "num_epochs": epochs},
        "model": {"dropout": 0.5},
        "probe": {"dir": str(probe), "sleep": sleep},
        "search": {
            "study_name": name, "n_trials": n_trials, "metric": "score", "direction": "maximize",
            "sampler": sampler or {"type": "TPESampler", "n_startup_trials": 3, "seed": 7},
            "pruner": pruner or {"type": "none"},
            "search_space": space or {"model.dropout": {"type": "uniform", "low": 0.0, "high": 1.0}},
        },
        "ray": {"resources_per_trial": {"cpu": 1}, "max_failures": 0},
    }
    for k, v in (extra or {}).items():
        data[k] = v
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def study_of(outcome) -> optuna.Study:
    return optuna.load_study(study_name=outcome.study_name,
                             storage=f"sqlite:///{outcome.study_dir / 'study.db'}")


def test_two_trials_overlap_on_two_slots(ray_local, in_tmp):
    # also after the startup gate held a slot idle: a reused worker must not
    # cancel the other slot's starting worker (that would run the rest serially)
    path = make_config(in_tmp, n_trials=10, epochs=3, sleep=0.15, name="overlap")
    run_sweep(load_config(path))
    probes = read_probes(str(in_tmp / "probe_overlap"))
    spans = sorted((p["start"]["t"], p["end"]["t"], p["start"]["pid"], n) for n, p in probes.items())
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]
    assert overlaps, f"trials ran one after another: {spans}"
    assert any(a[2] != b[2] for a, b in overlaps)   # on two different worker processes
    late = [(a, b) for a, b in overlaps if min(a[3], b[3]) >= 3]   # n_startup_trials = 3
    assert late, f"trials after the startup phase ran one after another: {spans}"


def test_demo_end_to_end_with_few_trials(ray_local, in_tmp):
    result = CliRunner().invoke(cli, ["demo", "--n-trials", "3"])
    assert result.exit_code == 0, result.output
    assert (in_tmp / "data/digits/raw").is_dir() and (in_tmp / "configs/digits_demo.yaml").exists()
    study_dir = in_tmp / "runs/optuna_studies/digits_demo"
    assert (study_dir / "best_config.yaml").exists()
    assert len(pq.read_table(study_dir / "trials.parquet")) == 3
    assert "raysweep train --config" in result.output
    again = CliRunner().invoke(cli, ["demo", "--n-trials", "3"])   # idempotent: shows the same study
    assert again.exit_code == 0, again.output
    assert len(pq.read_table(study_dir / "trials.parquet")) == 3


def test_tpe_startup_gate_under_two_concurrent_trials(ray_local, in_tmp):
    path = make_config(in_tmp, n_trials=7, epochs=2, sleep=0.05, name="startup",
                       extra={"search": None})
    data = yaml.safe_load(path.read_text())
    data["search"] = {"study_name": "startup", "n_trials": 7, "metric": "score",
                      "sampler": {"type": "TPESampler", "n_startup_trials": 3, "seed": 3},
                      "pruner": "none", "include_baseline": False,
                      "search_space": {"model.dropout": {"type": "uniform", "low": 0.0, "high": 1.0}}}
    path.write_text(yaml.safe_dump(data))
    out = run_sweep(load_config(path))
    probes = read_probes(str(in_tmp / "probe_startup"))
    assert len(probes) == 7
    ends = sorted(p["end"]["t"] for p in probes.values())
    # a trial was sampled at random iff fewer than n_startup trials had finished when it started
    random_trials = [n for n, p in probes.items() if sum(e <= p["start"]["t"] for e in ends) < 3]
    assert len(random_trials) == 3, probes
    assert sorted(random_trials) == [0, 1, 2]
    assert len(study_of(out).get_trials(states=(TS.COMPLETE,))) == 7


def test_median_pruning_semantics(ray_local, in_tmp):
    # score is a constant per trial: below-median trials must be pruned at the first
    # step allowed (after warm-up and after 2 completed trials), never before.
    space = {"model.dropout": {"type": "categorical", "choices": [0.1, 0.2, 0.8, 0.9]}}
    path = make_config(in_tmp, n_trials=10, epochs=6, sleep=0.08, name="median", space=space,
                       sampler={"type": "RandomSampler", "seed": 11},
                       pruner={"type": "MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 2})
    out = run_sweep(load_config(path))
    study = study_of(out)
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TS.PRUNED]
    complete = [t for t in trials if t.state == TS.COMPLETE]
    assert len(pruned) + len(complete) == 10 and pruned
    for t in pruned:
        step = max(t.intermediate_values)
        assert step >= 2, f"trial {t.number} pruned at {step}, before warm-up"
        done_before = [c for c in complete if c.datetime_complete < t.datetime_complete]
        assert len(done_before) >= 2
        at_step = sorted(c.intermediate_values[step] for c in done_before)
        median = (at_step[(len(at_step) - 1) // 2] + at_step[len(at_step) // 2]) / 2
        assert t.intermediate_values[step] < median
        assert t.value == t.intermediate_values[step]      # recorded with its last value
    for t in complete:
        assert len(t.intermediate_values) == 6
    # the trials table says the same
    table = pq.read_table(out.study_dir / "trials.parquet").to_pylist()
    assert {r["number"]: r["state"] for r in table} == {t.number: t.state.name for t in trials}
    assert all(r["epochs"] == max(t.intermediate_values) + 1 for r, t in zip(table, trials))


def test_asha_end_to_end(ray_local, in_tmp):
    space = {"model.dropout": {"type": "categorical", "choices": [0.1, 0.9]}}
    path = make_config(in_tmp, n_trials=8, epochs=9, sleep=0.02, name="asha", space=space,
                       sampler={"type": "RandomSampler", "seed": 5},
                       pruner={"type": "ASHA", "grace_period": 1, "reduction_factor": 3})
    out = run_sweep(load_config(path))
    trials = study_of(out).get_trials()
    assert len(trials) == 8
    states = {t.state for t in trials}
    assert states <= {TS.COMPLETE, TS.PRUNED} and TS.PRUNED in states
    for t in trials:
        if t.state == TS.PRUNED:
            assert len(t.intermediate_values) < 9
        else:
            assert len(t.intermediate_values) == 9


def test_best_config_is_base_plus_best_params_and_outputs(ray_local, in_tmp):
    space = {"model.dropout": {"type": "uniform", "low": 0.0, "high": 1.0},
             "optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 1.0}}
    path = make_config(in_tmp, n_trials=5, epochs=2, name="best", space=space,
                       extra={"optimizer": {"lr": 0.01}})
    cfg = load_config(path)
    out = run_sweep(cfg)
    study = study_of(out)
    best = study.best_trial
    assert out.best_number == best.number
    written = yaml.safe_load((out.study_dir / "best_config.yaml").read_text())
    expected = copy.deepcopy(cfg.data)
    expected["model"]["dropout"] = best.params["model.dropout"]
    expected["optimizer"]["lr"] = best.params["optimizer.lr"]
    assert written == expected
    # baseline ran first with the config's own values
    first = study.trials[0]
    assert first.params == {"model.dropout": 0.5, "optimizer.lr": 0.01}
    assert first.user_attrs.get("raysweep:baseline") is True
    # results files
    trials = pq.read_table(out.study_dir / "trials.parquet").to_pylist()
    assert [r["number"] for r in trials] == list(range(5))
    assert all(r["node"] and r["seconds"] > 0 and r["epochs"] == 2 for r in trials)
    curves = pq.read_table(out.study_dir / "curves.parquet").to_pylist()
    assert len(curves) == 10 and {"number", "epoch", "score"} <= set(curves[0])
    summary = (out.study_dir / "summary.txt").read_text()
    assert f"#{best.number}" in summary and "complete 5" in summary
    # a config written by raysweep loads again
    load_config(out.study_dir / "best_config.yaml")


def test_raising_trial_is_recorded_and_sweep_goes_on(ray_local, in_tmp):
    path = make_config(in_tmp, n_trials=4, epochs=2, name="raise",
                       extra={"probe": {"dir": str(in_tmp), "raise_on": 1, "sleep": 0.01}})
    out = run_sweep(load_config(path))
    trials = study_of(out).get_trials()
    assert [t.state for t in trials].count(TS.FAIL) == 1
    failed = trials[1]
    assert failed.state == TS.FAIL
    assert "ValueError: boom from the training function" in failed.user_attrs["raysweep:error"]
    assert out.counts == {"COMPLETE": 3, "FAIL": 1}
    rows = pq.read_table(out.study_dir / "trials.parquet").to_pylist()
    assert "boom" in rows[1]["error"]


def test_metric_never_reported_is_a_clear_error(ray_local, in_tmp):
    path = make_config(in_tmp, fn="no_metric", name="nometric")
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "search.metric" in result.output and "never reported the metric 'score'" in result.output
    assert "accuracy" in result.output


def test_existing_study_needs_resume_and_resume_extends(ray_local, in_tmp):
    path = make_config(in_tmp, n_trials=2, epochs=1, name="again")
    run_sweep(load_config(path))
    with pytest.raises(StudyError, match="--resume"):
        run_sweep(load_config(path))
    with pytest.raises(StudyError, match="no study 'other'"):
        run_sweep(with_overrides(load_config(path), study_name="other"), resume=True)
    out = run_sweep(with_overrides(load_config(path), n_trials=4), resume=True)
    trials = study_of(out).get_trials()
    assert len(trials) == 4 and all(t.state == TS.COMPLETE for t in trials)
    # finished trials were never rerun
    assert len({tuple(t.params.items()) for t in trials}) == 4


def test_reused_worker_starts_each_trial_fresh(ray_local, in_tmp):
    path = make_config(in_tmp, fn="leaky", n_trials=6, epochs=1, name="leaky")
    out = run_sweep(load_config(path))
    trials = study_of(out).get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE] * 6
    probes = read_probes(str(in_tmp / "probe_leaky"))
    assert any(p["start"]["reused"] for p in probes.values()), "no worker was reused; the test proves nothing"
    curves = {r["number"]: r for r in pq.read_table(out.study_dir / "curves.parquet").to_pylist()}
    for t in trials:
        assert t.value == t.number                          # its own trial number, not a neighbour's
        assert curves[t.number]["stale_checkpoint"] == 0    # no checkpoint of the previous trial
        assert curves[t.number]["stale_history"] == 0       # report() history starts empty
    # the function mutated its config; the next trial still got the sampled value
    assert all(0.0 <= t.params["model.dropout"] <= 1.0 for t in trials)


def test_bad_metric_config_errors_before_ray(in_tmp):
    path = make_config(in_tmp, name="pre")
    data = yaml.safe_load(path.read_text())
    data["training"]["entrypoint"] = "tests.trainables:missing"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="training.entrypoint"):
        run_sweep(load_config(path))
    assert not (in_tmp / "runs").exists()


def test_failed_trial_is_retried_from_its_last_checkpoint(ray_local, in_tmp):
    path = make_config(in_tmp, fn="flaky", n_trials=2, epochs=4, name="retry")
    data = yaml.safe_load(path.read_text())
    data["ray"]["max_failures"] = 1
    path.write_text(yaml.safe_dump(data))
    out = run_sweep(load_config(path))
    trials = study_of(out).get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE, TS.COMPLETE]
    for t in trials:
        assert sorted(t.intermediate_values) == [0, 1, 2, 3]
    probes = read_probes(str(in_tmp / "probe_retry"))
    for number, events in probes.items():
        # the retry started at epoch 2, from the checkpoint of epoch 1, not from 0
        assert set(events) == {"attempt0", "attempt2"}, events


def test_unreachable_storage_is_a_usage_error(in_tmp):
    path = make_config(in_tmp, name="store")
    data = yaml.safe_load(path.read_text())
    data["search"]["storage"] = "postgresql://alice:s3cret@127.0.0.1:1/studies"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "search.storage" in result.output and "alice:***@127.0.0.1:1" in result.output
    assert "s3cret" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (in_tmp / "runs").exists()


def test_grid_sampler_runs_the_whole_grid_once(ray_local, in_tmp):
    space = {"model.dropout": {"type": "categorical", "choices": [0.1, 0.2, 0.3]},
             "training.num_epochs": {"type": "int", "low": 1, "high": 2}}
    path = make_config(in_tmp, n_trials=50, epochs=1, sleep=0.01, name="grid", space=space,
                       sampler={"type": "GridSampler", "seed": 1})
    data = yaml.safe_load(path.read_text())
    data["search"]["include_baseline"] = False
    path.write_text(yaml.safe_dump(data))
    out = run_sweep(load_config(path))
    trials = study_of(out).get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE] * 6          # capped at the grid's size
    points = {(t.params["model.dropout"], t.params["training.num_epochs"]) for t in trials}
    assert points == {(d, e) for d in (0.1, 0.2, 0.3) for e in (1, 2)}
