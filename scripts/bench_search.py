#!/usr/bin/env python
"""Search efficiency on the digits demo task, and where a trainer epoch's time goes.

1. TPE + median pruning vs random search without pruning, same trial count,
   several seeds each: epochs spent and best val_acc reached (target: the same
   best val_acc within 0.5 points at <= 1/3 of the epochs).
2. The built-in trainer on the demo data: data loading (first decode, cached
   load) and one epoch split into batch preparation and compute.

    python scripts/bench_search.py                       # 3 seeds x 20 trials each
    python scripts/bench_search.py --seeds 1 --trials 10 # a quick look
    python scripts/bench_search.py --tpe-set search.pruner.n_warmup_steps=1
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    # pruning from the first epoch on, once 2 trials have finished: the demo's easy task
    # shows early which trials lag (the demo config itself waits 2 epochs after 4 trials)
    "tpe+median": ["search.sampler.type=TPESampler", "search.pruner.type=MedianPruner",
                   "search.pruner.n_startup_trials=2", "search.pruner.n_warmup_steps=0"],
    "random, no pruning": ["search.sampler.type=RandomSampler", "search.pruner=none"],
}


def sweep(workdir: Path, config: Path, study: str, seed: int, trials: int, sets: list[str]) -> dict:
    import pyarrow.parquet as pq

    args = [sys.executable, "-m", "raysweep", "run", "--config", str(config), "--study-name", study,
            "--n-trials", str(trials), "--set", f"search.sampler.seed={seed}", "--set", f"seed={seed}"]
    for s in sets:
        args += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed:\n{proc.stderr[-3000:]}")
    rows = pq.read_table(workdir / "runs/optuna_studies" / study / "trials.parquet").to_pylist()
    values = [r["best_metric"] for r in rows if r["best_metric"] is not None]
    return {"epochs": sum(int(r["epochs"] or 0) for r in rows), "best": max(values), "seconds": time.time() - t0,
            "pruned": sum(r["state"] == "PRUNED" for r in rows)}


def trainer_split(workdir: Path, config: Path) -> None:
    import shutil

    import torch

    from raysweep.config import load_config
    from raysweep.trainers import data as datamod
    from raysweep.trainers.engine import FoldTrainer

    cfg = load_config(config).to_dict()
    cfg["data"]["data_dir"] = str(workdir / "data/digits")
    cache = datamod.default_cache_dir(Path(cfg["data"]["data_dir"]))
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    datamod.load_fold(cfg, 0)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    datamod.load_fold(cfg, 0)
    warm = time.perf_counter() - t0
    trainer = FoldTrainer(cfg, 0)
    d = trainer.data
    preps = []
    for _ in range(3):
        t0 = time.perf_counter()
        n = 0
        for xb, _ in datamod.batches(d.train_x, d.train_y, trainer.batch_size, mean=d.mean, std=d.std,
                                     device=trainer.device, shuffle=True, flip=trainer.augment,
                                     generator=torch.Generator().manual_seed(0)):
            n += len(xb)
        preps.append(time.perf_counter() - t0)
    prep = statistics.median(preps)
    epochs = []
    for _ in range(3):
        t0 = time.perf_counter()
        trainer.run_epoch()
        epochs.append(time.perf_counter() - t0)
    epoch = statistics.median(epochs)
    print(f"\ntrainer on the demo data ({n} training images, batch {trainer.batch_size}, "
          f"{torch.get_num_threads()} threads):")
    print(f"  first load (decode PNGs, write cache): {cold:.2f} s")
    print(f"  later loads (from the cache):          {warm:.2f} s")
    print(f"  one epoch (median of 3):               {epoch * 1000:.0f} ms")
    print(f"    batch preparation (median of 3):     {prep * 1000:.0f} ms ({prep / epoch:.0%})")
    print(f"    compute (forward, backward, val):    {(epoch - prep) * 1000:.0f} ms ({(epoch - prep) / epoch:.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--tpe-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra --set for the TPE + median variant, e.g. search.pruner.n_warmup_steps=1")
    args = ap.parse_args()
    from raysweep.trainers.demo import prepare_demo

    with tempfile.TemporaryDirectory(prefix="rssearch_") as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)
        paths = prepare_demo(workdir / "data/digits", config_path=workdir / "configs/digits.yaml")
        if not args.skip_search:
            print(f"{'variant':20} {'seed':>4} {'epochs':>7} {'pruned':>6} {'best val_acc':>12} {'seconds':>8}")
            results: dict[str, list[dict]] = {}
            for name, sets in VARIANTS.items():
                for seed in range(1, args.seeds + 1):
                    study = f"{name.split(',')[0].replace('+', '_').replace(' ', '_')}_{seed}"
                    extra = args.tpe_set if name == "tpe+median" else []
                    r = sweep(workdir, paths.config_path, study, seed, args.trials, sets + extra)
                    results.setdefault(name, []).append(r)
                    print(f"{name:20} {seed:4d} {r['epochs']:7d} {r['pruned']:6d} {r['best']:12.4f} "
                          f"{r['seconds']:8.1f}", flush=True)
            a, b = results["tpe+median"], results["random, no pruning"]
            ea, eb = statistics.median(r["epochs"] for r in a), statistics.median(r["epochs"] for r in b)
            ba, bb = statistics.median(r["best"] for r in a), statistics.median(r["best"] for r in b)
            print(f"\nmedians: tpe+median {ea:.0f} epochs, best {ba:.4f}; random {eb:.0f} epochs, best {bb:.4f}")
            print(f"epochs ratio (tpe+median / random): {ea / eb:.2f}   "
                  f"best val_acc difference: {(ba - bb) * 100:+.2f} points")
        trainer_split(workdir, paths.config_path)


if __name__ == "__main__":
    main()
