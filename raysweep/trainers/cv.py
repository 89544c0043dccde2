"""Cross-validation trials: one trial trains every fold, folds in parallel as Ray actors.

With ``search.cross_validation.enabled`` a trial creates one actor per fold
(:class:`FoldWorker`). Each epoch the trial calls ``step()`` on all of them at
once, gathers the folds' metrics and reports their aggregate (``mean``,
``median`` or ``worst``) under the plain names (``val_acc``, ...) so the
pruner and the objective see it, plus each fold's value as
``<metric>.fold_<k>`` (:data:`raysweep.constants.FOLD_COLUMN_TEMPLATE`).
The trial's checkpoint holds ``fold_<k>.pt`` for every fold; a retried trial
restarts every fold where it stopped.

How folds share the trial's resources (the rule):

* fold actors ask Ray for **0 CPUs and 0 GPUs**: the trial's own reservation
  (``ray.resources_per_trial``) pays for them, so starting them can never
  wait on resources another trial holds (no deadlock, even with 2 CPUs and 2
  concurrent trials);
* they are pinned to the trial's node (hard node affinity), so they really use
  what the trial reserved;
* each fold runs ``max(1, floor(cpu / n_folds))`` torch threads, and the
  trial's GPUs are dealt round-robin to the folds (``CUDA_VISIBLE_DEVICES``);
  with ``cpu < n_folds`` the folds time-share the trial's CPUs.

Outside Ray (``ray`` not initialised) the folds run one after another in
this process, with the same reports.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from raysweep import constants
from raysweep.errors import ConfigError, RaysweepError, TrainerError
from raysweep.trainers import split as splitmod
from raysweep.trainers.data import dataset_dir
from raysweep.trainers.engine import METRICS, FoldTrainer, higher_is_better, load_state
from raysweep.trial import get_checkpoint, report

CV_STATE_TEMPLATE = "fold_{fold}.pt"


class FoldWorker:
    """One fold of a cross-validation trial (run as a Ray actor, or in-process)."""

    def __init__(self, config: dict[str, Any], fold: int, state: bytes | None = None,
                 threads: int | None = None) -> None:
        self.trainer = FoldTrainer(config, fold, threads=threads)
        if state is not None:
            self.trainer.load_state(load_state(state))

    def next_epoch(self) -> int:
        return self.trainer.epoch

    def step(self) -> dict[str, Any]:
        """Run one epoch; the metrics plus ``_start``/``_end`` wall times and ``_pid``."""
        start = time.time()
        metrics = self.trainer.run_epoch()
        return {**metrics, "_start": start, "_end": time.time(), "_pid": os.getpid()}

    def state_bytes(self) -> bytes:
        return self.trainer.to_bytes()


@dataclass
class CVResult:
    """What :func:`train_cv` reported, and when each fold ran each epoch."""

    reports: list[dict[str, float]] = field(default_factory=list)
    # timings[i] = [(fold, start, end, pid), ...] for the i-th epoch run
    timings: list[list[tuple[int, float, float, int]]] = field(default_factory=list)
    parallel: bool = False


def aggregate(values: Sequence[float], how: str, *, maximize: bool) -> float:
    """``mean``, ``median`` or ``worst`` (min when higher is better, else max)."""
    if how == "mean":
        return float(statistics.fmean(values))
    if how == "median":
        return float(statistics.median(values))
    if how == "worst":
        return float(min(values) if maximize else max(values))
    raise ConfigError(f"must be mean, median or worst, got {how!r}", key="search.cross_validation.aggregation")


def combine(fold_metrics: Sequence[Mapping[str, Any]], how: str, config: Mapping[str, Any]) -> dict[str, float]:
    """Aggregate per-fold epoch metrics into one report (plus ``<metric>.fold_<k>``)."""
    out: dict[str, float] = {}
    for m in METRICS:
        vals = [float(f[m]) for f in fold_metrics]
        out[m] = aggregate(vals, how, maximize=higher_is_better(m, config))
    out["lr"] = float(fold_metrics[0]["lr"])
    out["epoch"] = int(fold_metrics[0]["epoch"])
    for k, f in enumerate(fold_metrics):
        for m in METRICS:
            out[constants.FOLD_COLUMN_TEMPLATE.format(metric=m, fold=k)] = float(f[m])
    return out


def _ray_ready() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return bool(ray.is_initialized())


class _LocalFolds:
    def __init__(self, config: dict[str, Any], n: int, states: list[bytes | None]) -> None:
        self.workers = [FoldWorker(config, k, states[k]) for k in range(n)]

    def next_epoch(self) -> int:
        return min(w.next_epoch() for w in self.workers)

    def step(self) -> list[dict[str, Any]]:
        return [w.step() for w in self.workers]

    def states(self) -> list[bytes]:
        return [w.state_bytes() for w in self.workers]

    def close(self) -> None:
        self.workers = []


class _RayFolds:
    def __init__(self, config: dict[str, Any], n: int, states: list[bytes | None]) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cpu = float(((config.get("ray") or {}).get("resources_per_trial") or {}).get("cpu") or 1)
        threads = max(1, int(cpu // n))
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        node = ray.get_runtime_context().get_node_id()
        remote_cls = ray.remote(FoldWorker)
        self.actors = []
        for k in range(n):
            opts: dict[str, Any] = {
                "num_cpus": 0, "num_gpus": 0, "max_restarts": 0,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False),
            }
            if gpu_ids:
                opts["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": gpu_ids[k % len(gpu_ids)]}}
            self.actors.append(remote_cls.options(**opts).remote(config, k, states[k], threads))

    def _get(self, refs: list[Any]) -> list[Any]:
        import ray

        try:
            return list(ray.get(refs))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RaysweepError):
                raise cause from None
            raise TrainerError(f"a cross-validation fold failed: {cause or exc}") from None
        except ray.exceptions.RayActorError as exc:
            raise TrainerError(f"a cross-validation fold's worker died: {exc}") from None

    def next_epoch(self) -> int:
        return min(self._get([a.next_epoch.remote() for a in self.actors]))

    def step(self) -> list[dict[str, Any]]:
        return self._get([a.step.remote() for a in self.actors])

    def states(self) -> list[bytes]:
        return self._get([a.state_bytes.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []


def check_folds(config: Mapping[str, Any], n_folds: int) -> None:
    """ConfigError unless the dataset has splits for ``n_folds`` folds."""
    sdir = dataset_dir(config) / splitmod.SPLITS_DIR
    have = splitmod.existing_folds(sdir)
    if have < n_folds:
        raise ConfigError(f"is {n_folds} but {sdir} has {have} fold(s); run: raysweep split --raw-data "
                          f"{sdir.parent / 'raw'} --folds {n_folds} --force", key="search.cross_validation.n_folds")


def train_cv(config: dict[str, Any]) -> CVResult:
    """Train every fold of one trial; one aggregated :func:`raysweep.report` per epoch."""
    cv = config["search"]["cross_validation"]
    n, how = int(cv.get("n_folds", 5)), str(cv.get("aggregation", "mean"))
    check_folds(config, n)
    num_epochs = int(config["training"]["num_epochs"])
    states: list[bytes | None] = [None] * n
    ckpt = get_checkpoint()
    if ckpt:
        for k in range(n):
            f = Path(ckpt) / CV_STATE_TEMPLATE.format(fold=k)
            if not f.is_file():
                raise TrainerError(f"checkpoint {ckpt} lacks {f.name}; cannot resume fold {k}")
            states[k] = f.read_bytes()
    parallel = _ray_ready()
    folds: _LocalFolds | _RayFolds = _RayFolds(config, n, states) if parallel else _LocalFolds(config, n, states)
    result = CVResult(parallel=parallel)
    try:
        for _ in range(folds.next_epoch(), num_epochs):
            per_fold = folds.step()
            result.timings.append([(k, m["_start"], m["_end"], m["_pid"]) for k, m in enumerate(per_fold)])
            metrics = combine(per_fold, how, config)
            result.reports.append(metrics)
            with tempfile.TemporaryDirectory(prefix="raysweep_cv_ckpt_") as d:
                for k, blob in enumerate(folds.states()):
                    (Path(d) / CV_STATE_TEMPLATE.format(fold=k)).write_bytes(blob)
                report(metrics, checkpoint=d)
    finally:
        folds.close()
    return result
