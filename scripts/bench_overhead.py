#!/usr/bin/env python
"""Orchestration overhead: raysweep vs plain Ray Tune + OptunaSearch vs plain Optuna.

The same sleeping trials (a model of GPU-bound work) run through

  (a) raysweep run with a user function,
  (b) Ray Tune's Tuner + OptunaSearch with default settings,
  (c) plain Optuna with 2 worker processes on one journal file,

each in a fresh process. ideal = trials x seconds-per-trial / slots. Printed:
wall time over ideal, counted from the first trial's start to the last trial's
end ("span"), for raysweep also from the first trial's submission (when it was
asked and handed to Ray, "submit"), and from the process start ("total", Ray's
start-up included); "1st trial s" is the time from the command to the first
trial running; plus raysweep's speed-up over (b). Medians over --repeat runs.

    python scripts/bench_overhead.py              # all workloads, 1 repeat
    python scripts/bench_overhead.py --repeat 3 --workloads 50x0.2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOTS = 2
WORKLOADS = {
    "50x0.2": dict(trials=50, epochs=1, seconds=0.2, prune=False),
    "20x1": dict(trials=20, epochs=1, seconds=1.0, prune=False),
    "20x10x0.1-prune": dict(trials=20, epochs=10, seconds=0.1, prune=True),
}


# --------------------------------------------------------------------------
# Trial bodies (run inside the variants); each appends "start end" to a file.
# --------------------------------------------------------------------------

def _objective_value(lr: float, epoch: int) -> float:
    import math

    return -abs(math.log10(lr) + 2) + 0.01 * epoch


def _work(seconds: float, log: str, key: str) -> None:
    """One epoch of "work": a sleep, logged as `start end trial` (one line, appended)."""
    start = time.time()
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"{start} {time.time()} {key}\n")


def _variant_raysweep(w: dict, log: str, workdir: str) -> None:
    import yaml

    cfg = {
        "seed": 1,
        "training": {"entrypoint": "bench_overhead_fn:train", "num_epochs": w["epochs"]},
        "optimizer": {"lr": 0.01},
        "bench": {"seconds": w["seconds"], "log": log},
        "search": {"study_name": "bench", "n_trials": w["trials"], "metric": "score",
                   "sampler": {"type": "TPESampler", "n_startup_trials": 10, "seed": 1},
                   "pruner": {"type": "MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 3}
                   if w["prune"] else "none",
                   "include_baseline": False,
                   "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1e-5, "high": 1.0}}},
        "ray": {"resources_per_trial": {"cpu": 1}, "max_failures": 0},
    }
    Path(workdir, "bench.yaml").write_text(yaml.safe_dump(cfg))
    from raysweep.config import load_config
    from raysweep.tuner import run_sweep

    run_sweep(load_config(str(Path(workdir, "bench.yaml"))), echo=lambda s: None)


def _variant_tune(w: dict, log: str, workdir: str) -> None:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    ray.init(num_cpus=SLOTS, include_dashboard=False, log_to_driver=False)
    fn = _tune_trainable(w, log)
    tuner = tune.Tuner(
        fn,
        param_space={"lr": tune.loguniform(1e-5, 1.0)},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(seed=1), metric="score", mode="max", num_samples=w["trials"],
            scheduler=ASHAScheduler(max_t=w["epochs"], grace_period=1) if w["prune"] else None),
        run_config=tune.RunConfig(storage_path=str(Path(workdir, "tune")), verbose=0),
    )
    tuner.fit()


def _tune_trainable(w: dict, log: str):
    def trainable(config):
        from ray import tune

        key = f"{config['lr']!r}"
        for epoch in range(w["epochs"]):
            _work(w["seconds"], log, key)
            tune.report({"score": _objective_value(config["lr"], epoch)})
    return trainable


def _optuna_worker(w: dict, log: str, journal: str, n: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    pruner = optuna.pruners.MedianPruner(5, 3) if w["prune"] else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name="bench", storage=storage, load_if_exists=True,
                                direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.TPESampler(n_startup_trials=10))

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
        value = 0.0
        for epoch in range(w["epochs"]):
            _work(w["seconds"], log, f"{lr!r}")
            value = _objective_value(lr, epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=n)


def _variant_optuna(w: dict, log: str, workdir: str) -> None:
    import multiprocessing as mp

    journal = str(Path(workdir, "journal.log"))
    per = [w["trials"] // SLOTS + (1 if i < w["trials"] % SLOTS else 0) for i in range(SLOTS)]
    procs = [mp.get_context("spawn").Process(target=_optuna_worker, args=(w, log, journal, n)) for n in per]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


VARIANTS = {"raysweep": _variant_raysweep, "tune-default": _variant_tune, "optuna-2proc": _variant_optuna}

FN_MODULE = '''
import raysweep
from bench_overhead import _objective_value, _work

def train(config):
    b = config["bench"]
    lr = config["optimizer"]["lr"]
    for epoch in range(config["training"]["num_epochs"]):
        _work(b["seconds"], b["log"], repr(lr))
        raysweep.report({"score": _objective_value(lr, epoch), "epoch": epoch})
'''


def run_one(variant: str, workload: str) -> dict:
    """Run one (variant, workload) in a fresh process; return span/total seconds."""
    with tempfile.TemporaryDirectory(prefix="rsbench_") as d:
        log = str(Path(d, "trials.log"))
        Path(d, "bench_overhead_fn.py").write_text(FN_MODULE)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([d, str(ROOT / "scripts"), str(ROOT), env.get("PYTHONPATH", "")])
        t0 = time.time()
        code = (f"import sys; sys.path[:0] = [{d!r}, {str(ROOT / 'scripts')!r}]; import bench_overhead as b; "
                f"b.VARIANTS[{variant!r}](b.WORKLOADS[{workload!r}], {log!r}, {d!r})")
        subprocess.run([sys.executable, "-c", code], cwd=d, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = time.time() - t0
        rows = [line.split() for line in Path(log).read_text().split("\n") if line.strip()]
        submitted = None
        db = Path(d, "runs/optuna_studies/bench/study.db")
        if variant == "raysweep" and db.exists():
            import sqlite3

            with sqlite3.connect(db) as con:   # when the first trial was asked and handed to Ray
                first = con.execute("select min(datetime_start) from trials").fetchone()[0]
            from datetime import datetime

            submitted = datetime.fromisoformat(first).timestamp()
    starts, ends = [float(r[0]) for r in rows], [float(r[1]) for r in rows]
    busy = sum(float(e) - float(s) for s, e, _ in rows)
    return {"span": max(ends) - min(starts), "total": total, "trials": len({r[2] for r in rows}),
            "epochs": len(rows),
            "first_trial_after": min(starts) - t0, "busy": busy,
            "from_submission": None if submitted is None else max(ends) - submitted}


def startup_times(repeat: int = 7) -> None:
    """`raysweep --help` and `raysweep status` wall times (target < 0.3 s each)."""
    import shutil

    exe = shutil.which("raysweep")
    base = [exe] if exe else [sys.executable, "-m", "raysweep"]
    with tempfile.TemporaryDirectory(prefix="rsstart_") as d:
        study = Path(d, "runs/optuna_studies/s")     # a finished study with a few trials
        code = ("import optuna, pyarrow as pa, pyarrow.parquet as pq, json, pathlib; "
                "optuna.logging.set_verbosity(optuna.logging.WARNING); "
                f"p = pathlib.Path({str(study)!r}); p.mkdir(parents=True); "
                "s = optuna.create_study(study_name='s', storage=f'sqlite:///{p}/study.db'); "
                "s.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=5); "
                "from raysweep.results import trial_rows, write_parquet; from raysweep import constants; "
                "write_parquet(trial_rows(s), p / constants.TRIALS_FILE, constants.TRIAL_COLUMNS); "
                "(p / 'sweep.json').write_text(json.dumps({'study_name': 's', 'storage': f'sqlite:///{p}/study.db', "
                "'metric': 'value', 'direction': 'minimize', 'state': 'finished', 'search_space': ['x']}))")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=d)
        for label, args in (("raysweep --help", ["--help"]), ("raysweep status s", ["status", "s"])):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                subprocess.run(base + args, cwd=d, check=True, stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - t0)
            print(f"{label:20} median {statistics.median(times) * 1000:.0f} ms over {repeat} runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--startup", action="store_true", help="only time CLI start-up")
    args = ap.parse_args()
    startup_times()
    if args.startup:
        return
    raw: dict = {}
    print(f"{'workload':18} {'variant':14} {'span/ideal':>10} {'submit/ideal':>10} {'total/ideal':>11} "
          f"{'1st trial s':>11} {'trials':>6} {'epochs':>6}")
    for wname in args.workloads.split(","):
        w = WORKLOADS[wname]
        for vname in args.variants.split(","):
            runs = [run_one(vname, wname) for _ in range(args.repeat)]
            # with pruning the work done differs per variant: ideal = its own busy time / slots
            ideal = [(r["busy"] if w["prune"] else w["trials"] * w["epochs"] * w["seconds"]) / SLOTS for r in runs]
            span = statistics.median(r["span"] / i for r, i in zip(runs, ideal))
            total = statistics.median(r["total"] / i for r, i in zip(runs, ideal))
            first = statistics.median(r["first_trial_after"] for r in runs)
            subm = [r["from_submission"] / i for r, i in zip(runs, ideal) if r["from_submission"]]
            raw[(wname, vname)] = {"span_ratio": span, "total_ratio": total, "first_trial_s": first,
                                   "total_s": statistics.median(r["total"] for r in runs), "runs": runs}
            sub = f"{statistics.median(subm):9.2f}x" if subm else f"{'-':>10}"
            print(f"{wname:18} {vname:14} {span:10.2f}x {sub} {total:10.2f}x {first:11.1f} {runs[0]['trials']:6d} {runs[0]['epochs']:6d}",
                  flush=True)
        if ("raysweep" in args.variants and "tune-default" in args.variants):
            a, b = raw[(wname, "raysweep")], raw[(wname, "tune-default")]
            print(f"{wname:18} raysweep vs tune-default: {b['total_s'] / a['total_s']:.1f}x faster in total wall "
                  f"({a['total_s']:.1f} s vs {b['total_s']:.1f} s, Ray's start-up included), "
                  f"{b['span_ratio'] / a['span_ratio']:.1f}x from first trial to last", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in raw.items()}, indent=2))


if __name__ == "__main__":
    main()
