#!/usr/bin/env python
"""Scale: one sweep of 2,000 trials x 0.01 s, then --resume of the finished study.

Prints, from one run of each (driver in a fresh process):
  - per-trial orchestration overhead in the first and last 200 trials
    (time between consecutive trial starts on the same worker, minus the trial's
    own work) and their ratio (target: last/first <= 1.5);
  - the driver's peak RSS (target < 1.5 GB);
  - the time `raysweep run --resume` takes on the finished study to be ready
    (study loaded, Ray experiment restored, Tune's loop running; target < 15 s),
    and to finish (outputs rewritten);
  - the time from `raysweep run` to the first trial running.

    python scripts/bench_scale.py                 # 2,000 trials
    python scripts/bench_scale.py --trials 300    # a quick look
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

FN_MODULE = '''
import os, time, raysweep

def train(config):
    b = config["bench"]
    start = time.time()
    time.sleep(b["seconds"])
    raysweep.report({"score": -abs(config["optimizer"]["lr"] - 0.01), "epoch": 0})
    with open(b["log"], "a") as f:
        f.write(f"{start} {time.time()} {os.getpid()}\\n")
'''

DRIVER = '''
import json, resource, sys, time
t0 = time.time()
from raysweep.config import load_config
from raysweep import progress
from raysweep.tuner import run_sweep
ready = []
step = progress.ViewCallback.on_step_end
def first_step(self, *a, **k):          # Tune's loop is running: the sweep is ready
    if not ready:
        ready.append(time.time() - t0)
    return step(self, *a, **k)
progress.ViewCallback.on_step_end = first_step
out = run_sweep(load_config("bench.yaml"), resume={resume}, echo=lambda s: None)
print(json.dumps({{"seconds": time.time() - t0, "t0": t0, "ready": ready[0] if ready else None,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "counts": out.counts}}))
'''


def _driver(d: str, resume: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([d, str(ROOT), env.get("PYTHONPATH", "")])
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(resume=resume)], cwd=d, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"driver failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall"] = time.time() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=0.01)
    ap.add_argument("--window", type=int, default=200)
    args = ap.parse_args()
    import yaml

    with tempfile.TemporaryDirectory(prefix="rsscale_") as d:
        log = str(Path(d, "trials.log"))
        Path(d, "scale_fn.py").write_text(FN_MODULE)
        cfg = {
            "seed": 1,
            "training": {"entrypoint": "scale_fn:train", "num_epochs": 1},
            "optimizer": {"lr": 0.01},
            "bench": {"seconds": args.seconds, "log": log},
            "search": {"study_name": "scale", "n_trials": args.trials, "metric": "score",
                       "sampler": {"type": "TPESampler", "n_startup_trials": 10, "seed": 1},
                       "pruner": "none", "include_baseline": False,
                       "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1e-5, "high": 1.0}}},
            "ray": {"resources_per_trial": {"cpu": 1}, "max_failures": 0},
        }
        Path(d, "bench.yaml").write_text(yaml.safe_dump(cfg))
        first = _driver(d, resume=False)
        rows = sorted(tuple(map(float, line.split())) for line in Path(log).read_text().splitlines() if line)
        by_worker: dict[float, list[tuple[float, float]]] = {}
        for s, e, pid in rows:
            by_worker.setdefault(pid, []).append((s, e))
        # overhead of a trial = its start minus the end of the previous trial on the same worker
        gaps: list[tuple[float, float]] = []           # (start, gap)
        for spans in by_worker.values():
            for (s0, e0), (s1, _) in zip(spans, spans[1:]):
                gaps.append((s1, s1 - e0))
        gaps.sort()
        w = min(args.window, len(gaps) // 2)
        head = statistics.median(g for _, g in gaps[:w]) * 1000
        tail = statistics.median(g for _, g in gaps[-w:]) * 1000
        mean_head = statistics.fmean(g for _, g in gaps[:w]) * 1000
        mean_tail = statistics.fmean(g for _, g in gaps[-w:]) * 1000
        resumed = _driver(d, resume=True)
        ideal = args.trials * args.seconds / 2
        span = rows[-1][1] - rows[0][0]
        print(f"trials:                 {len(rows)} x {args.seconds} s on {len(by_worker)} workers")
        print(f"sweep wall:             {first['seconds']:.1f} s (span of trials {span:.1f} s, ideal {ideal:.1f} s)")
        print(f"first trial running:    {rows[0][0] - first['t0']:.1f} s after the driver started")
        print(f"overhead first {w}:      median {head:.1f} ms, mean {mean_head:.1f} ms per trial")
        print(f"overhead last {w}:       median {tail:.1f} ms, mean {mean_tail:.1f} ms per trial")
        print(f"last/first ratio:       {tail / head:.2f} (median), {mean_tail / mean_head:.2f} (mean)")
        print(f"driver peak RSS:        {first['maxrss_mb']:.0f} MB")
        print(f"resume of finished:     ready (study loaded, experiment restored, Tune's loop running) "
              f"after {resumed['ready']:.1f} s; done, outputs rewritten, after {resumed['seconds']:.1f} s "
              f"(driver RSS {resumed['maxrss_mb']:.0f} MB); counts {resumed['counts']}")


if __name__ == "__main__":
    main()
