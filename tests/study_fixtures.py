"""Build study directories the way a sweep leaves them, with optuna + pandas only (no Ray).

Used by test_report.py, test_plots.py, test_visualise_cli.py and test_status.py.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from raysweep import constants

T0 = dt.datetime(2026, 1, 5, 12, 0, 0)   # naive local time, as Optuna stores it
SPACE = ("optimizer.lr", "training.batch_size", "optimizer.name")


def _params(i: int) -> dict[str, Any]:
    return {
        "optimizer.lr": 10 ** (-4 + 3 * ((i * 37) % 11) / 10),
        "training.batch_size": [16, 32, 64, 128][i % 4],
        "optimizer.name": ["sgd", "adam"][(i // 2) % 2],
    }


def _curve(i: int, epochs: int) -> list[float]:
    p = _params(i)
    top = 0.6 + 0.3 * (1 - abs(math.log10(p["optimizer.lr"]) + 2.5) / 2.5) + (0.03 if p["optimizer.name"] == "adam" else 0)
    return [round(top * (1 - 0.5 ** (e + 1)), 4) for e in range(epochs)]


def make_study(
    studies_dir: Path,
    name: str = "demo_optimization",
    *,
    n_complete: int = 6,
    n_pruned: int = 2,
    n_fail: int = 1,
    n_running: int = 0,
    workers: tuple[str, ...] = ("10.0.0.1:101", "10.0.0.1:102", "10.0.0.2:201"),
    epochs: int = 5,
    finished: bool = True,
    metric: str = "val_acc",
    direction: str = "maximize",
) -> Path:
    """A study dir with study.db, sweep.json, curves.jsonl and (when finished) the parquet files.

    Trials run back to back on each worker in turn, 60 s per epoch; pruned trials
    stop after epoch 2, failed ones after epoch 1; running trials are asked from
    the live study (real RUNNING state, started now).
    """
    import optuna
    import pandas as pd
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir = Path(studies_dir) / name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(study_dir / constants.STUDY_DB_FILE).resolve()}"
    study = optuna.create_study(study_name=name, storage=url, direction=direction, load_if_exists=True)
    dists = {
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "training.batch_size": IntDistribution(16, 128),
        "optimizer.name": CategoricalDistribution(["sgd", "adam"]),
    }
    # mix the states over time: two completes, a pruned, a failed, repeat
    left = {"COMPLETE": n_complete, "PRUNED": n_pruned, "FAIL": n_fail}
    order: list[str] = []
    while any(left.values()):
        for kind in ("COMPLETE", "COMPLETE", "PRUNED", "FAIL"):
            if left[kind]:
                order.append(kind)
                left[kind] -= 1
    rows, curves = [], []
    t0 = T0 if finished else dt.datetime.now() - dt.timedelta(hours=1)
    free_at = {w: t0 for w in workers}
    for i, kind in enumerate(order):
        worker = min(workers, key=lambda w: (free_at[w], w))
        node = worker.rsplit(":", 1)[0]
        n_ep = {"COMPLETE": epochs, "PRUNED": 2, "FAIL": 1}[kind]
        vals = _curve(i, epochs)[:n_ep]
        start = free_at[worker] + dt.timedelta(seconds=5)
        end = start + dt.timedelta(seconds=60 * n_ep)
        free_at[worker] = end
        value = max(vals) if direction == "maximize" else min(vals)
        attrs: dict[str, Any] = {constants.ATTR_NODE: node, constants.ATTR_WORKER: worker,
                                 constants.ATTR_EPOCHS: n_ep, constants.ATTR_FINAL: vals[-1],
                                 constants.ATTR_BEST: value, constants.ATTR_RAY_TRIAL_ID: f"t{i:05d}"}
        if kind == "FAIL":
            attrs[constants.ATTR_ERROR] = "RuntimeError: CUDA out of memory"
        if i == 0:
            attrs[constants.ATTR_BASELINE] = True
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState[kind], value=value if kind == "COMPLETE" else None,
            params=_params(i), distributions=dists,
            intermediate_values={e: v for e, v in enumerate(vals)}, user_attrs=attrs)
        trial.datetime_start, trial.datetime_complete = start, end
        study.add_trial(trial)
        for e, v in enumerate(vals):
            curves.append({"number": i, "epoch": e, "time": (start + dt.timedelta(seconds=60 * (e + 1))).timestamp(),
                           "node": node, metric: v, "train_loss": round(1.5 - v, 4), "lr": _params(i)["optimizer.lr"]})
        rows.append({
            "number": i, "state": kind, "value": value if kind == "COMPLETE" else None,
            "final_metric": vals[-1], "best_metric": value, "epochs": n_ep, "seconds": 60.0 * n_ep,
            "start_time": start.astimezone(dt.timezone.utc).replace(tzinfo=None),
            "end_time": end.astimezone(dt.timezone.utc).replace(tzinfo=None),
            "node": node, "worker": worker, "ray_trial_id": f"t{i:05d}",
            "error": attrs.get(constants.ATTR_ERROR),
            **{constants.PARAM_PREFIX + k: v for k, v in _params(i).items()},
        })
    for j in range(n_running):
        i = len(order) + j
        trial = study.ask({k: d for k, d in dists.items()})
        worker = workers[j % len(workers)]
        trial.set_user_attr(constants.ATTR_NODE, worker.rsplit(":", 1)[0])
        trial.set_user_attr(constants.ATTR_WORKER, worker)
        for e, v in enumerate(_curve(i, 2)):
            trial.report(v, e)
            curves.append({"number": trial.number, "epoch": e, "time": 0.0, "node": worker.rsplit(":", 1)[0],
                           metric: v})
    # a duplicated line, as a retried report can leave
    if curves:
        curves.append(dict(curves[-1]))
    with open(study_dir / constants.CURVES_LOG_FILE, "a", encoding="utf-8") as fh:
        for row in curves:
            fh.write(json.dumps(row) + "\n")
    if finished:
        pd.DataFrame(rows, columns=[*constants.TRIAL_COLUMNS, *(constants.PARAM_PREFIX + s for s in SPACE)]
                     ).to_parquet(study_dir / constants.TRIALS_FILE, index=False)
        pd.DataFrame(curves).drop_duplicates(["number", "epoch"], keep="last").to_parquet(
            study_dir / constants.CURVES_FILE, index=False)
        best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["value"] or 0, default=None)
        if best is not None:
            (study_dir / constants.BEST_CONFIG_FILE).write_text(
                f"# best trial {best['number']}\noptimizer:\n  lr: {best['param.optimizer.lr']}\n", encoding="utf-8")
    (study_dir / constants.SWEEP_FILE).write_text(json.dumps({
        "study_name": name, "storage": url, "metric": metric, "direction": direction,
        "config_path": "configs/demo.yaml", "search_space": list(SPACE),
        "state": "finished" if finished else "running", "started": t0.isoformat(),
        "n_trials": len(order) + n_running,
    }), encoding="utf-8")
    return study_dir
