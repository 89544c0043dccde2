"""Results <-> files: sweep.json, curves, trials.parquet, best_config.yaml, summary.

The study directory (``runs/optuna_studies/<study>/``) is the one place a user
looks; column names come from :mod:`raysweep.constants`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysweep import constants
from raysweep import storage as bucket
from raysweep.config import Config, dump_yaml, mask_url, masked_dict
from raysweep.trial import apply_params

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from raysweep.tuner import SweepOutcome

log = logging.getLogger("raysweep")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_sweep_info(study_dir: Path, cfg: Config, storage: str, *, state: str) -> None:
    path = study_dir / constants.SWEEP_FILE
    info: dict[str, Any] = {}
    if path.exists():
        try:
            info = json.loads(path.read_text())
        except ValueError:
            info = {}
    info.update({
        "study_name": cfg.search.study_name,
        "storage": mask_url(storage),
        "metric": cfg.search.metric,
        "direction": cfg.search.direction,
        "config_path": str(Path(cfg.path).resolve()) if cfg.path and os.path.exists(cfg.path) else cfg.path,
        "search_space": [p.name for p in cfg.search.space],
        "n_trials": cfg.search.n_trials,
        "experiment": mask_url(bucket.experiment_path(cfg)),
        "state": state,
        "updated": _now(),
    })
    info.setdefault("started", _now())
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")


def read_sweep_info(study_dir: Path) -> dict[str, Any]:
    return json.loads((study_dir / constants.SWEEP_FILE).read_text())


class CurveLog:
    """Append-only JSON lines, one per reported epoch; survives a killed driver."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8", buffering=1)

    def append(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, default=_json_default) + "\n")

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_curves(path: str | Path) -> list[dict[str, Any]]:
    """Rows of curves.jsonl, last report per (trial, epoch) kept, sorted.

    A line cut short (a killed driver, or a writer mid-line) is skipped.
    """
    rows: dict[tuple[Any, Any], dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows[(row.get("number"), row.get("epoch"))] = row
    except FileNotFoundError:
        return []
    return sorted(rows.values(), key=lambda r: (_as_int(r.get("number")), _as_int(r.get("epoch"))))


def _as_int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def trial_rows(study: "optuna.Study") -> list[dict[str, Any]]:
    """One dict per Optuna trial with the trials.parquet columns."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        start, end = t.datetime_start, t.datetime_complete
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.values else None,
            "final_metric": ua.get(constants.ATTR_FINAL),
            "best_metric": ua.get(constants.ATTR_BEST),
            "epochs": ua.get(constants.ATTR_EPOCHS, len(t.intermediate_values)),
            "seconds": (end - start).total_seconds() if start and end else None,
            "start_time": start,
            "end_time": end,
            "node": ua.get(constants.ATTR_NODE),
            "worker": ua.get(constants.ATTR_WORKER),
            "ray_trial_id": t.system_attrs.get(constants.ATTR_RAY_TRIAL_ID),
            "error": ua.get(constants.ATTR_ERROR),
        }
        for k, v in t.params.items():
            row[constants.PARAM_PREFIX + k] = v
        rows.append(row)
    return rows


def write_parquet(rows: list[dict[str, Any]], path: Path, columns: tuple[str, ...]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(columns)
    for row in rows:
        for k in row:
            if k not in names:
                names.append(k)
    data = {n: [r.get(n) for r in rows] for n in names}
    table = pa.table(data) if rows else pa.table({n: pa.array([], pa.null()) for n in names})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def best_trial(study: "optuna.Study") -> "optuna.trial.FrozenTrial | None":
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    return study.best_trial


def best_config(cfg: Config, params: dict[str, Any]) -> dict[str, Any]:
    """The full config with the best values applied; secrets masked."""
    out = apply_params(cfg.data, params)
    return masked_dict(out)


def _cleanup_checkpoints(cfg: Config, study: "optuna.Study", grid: Any) -> int:
    """Delete checkpoints of pruned/failed trials and of all but the best K complete ones."""
    import optuna

    TS = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TS.COMPLETE]
    complete.sort(key=lambda t: t.value, reverse=cfg.search.direction == "maximize")
    keep = {t.number for t in complete[: cfg.ray.keep_best_trials]}
    by_number = {t.number: t for t in trials}
    removed = 0
    for result in grid or []:
        number = (result.config or {}).get(constants.TRIAL_NUMBER_KEY)
        t = by_number.get(number)
        if t is None or not t.state.is_finished() or number in keep:
            continue
        fs = result.filesystem
        try:
            import pyarrow.fs as pafs

            for info in fs.get_file_info(pafs.FileSelector(result.path, allow_not_found=True)):
                if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                    fs.delete_dir(info.path)
                    removed += 1
        except OSError as exc:  # never fail a finished sweep over housekeeping
            log.warning("could not delete checkpoints of trial %s: %s", number, exc)
    return removed


def finish(cfg: Config, study: "optuna.Study", grid: Any, *, study_dir: Path, storage: str, experiment: str,
           interrupted: bool, fs: Any = None) -> "SweepOutcome":
    """Write every output of a sweep (also an interrupted one) and summarise it."""
    from raysweep.tuner import SweepOutcome

    rows = trial_rows(study)
    write_parquet(rows, study_dir / constants.TRIALS_FILE, constants.TRIAL_COLUMNS)
    curves = read_curves(study_dir / constants.CURVES_LOG_FILE)
    write_parquet(curves, study_dir / constants.CURVES_FILE, constants.CURVE_COLUMNS)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    outcome = SweepOutcome(study_name=cfg.search.study_name, study_dir=study_dir, storage=mask_url(storage) or "",
                           experiment_path=experiment, counts=counts, interrupted=interrupted)
    best = best_trial(study)
    if best is not None:
        outcome.best_number = best.number
        outcome.best_value = best.value
        outcome.best_params = dict(best.params)
        path = study_dir / constants.BEST_CONFIG_FILE
        header = (f"# best trial #{best.number} of study {cfg.search.study_name}: "
                  f"{cfg.search.metric}={best.value:.6g}\n# train it: raysweep train --config {path}\n")
        atomic_write_text(path, header + dump_yaml(best_config(cfg, best.params)))
        outcome.best_config_path = path
    if not interrupted:
        _cleanup_checkpoints(cfg, study, grid)
    try:
        from raysweep.tb_hparams import write_hparams
    except ImportError:  # pragma: no cover - optional until the module exists
        write_hparams = None  # type: ignore[assignment]
    if write_hparams is not None:
        try:
            write_hparams(study_dir, [
                {"number": r["number"], "state": r["state"], "value": r["value"],
                 "final_metric": r["final_metric"], "best_metric": r["best_metric"], "epochs": r["epochs"],
                 "params": {k[len(constants.PARAM_PREFIX):]: v for k, v in r.items()
                            if k.startswith(constants.PARAM_PREFIX)}}
                for r in rows if r["state"] in ("COMPLETE", "PRUNED")], cfg.search.metric)
        except Exception as exc:  # TensorBoard extras must not cost the results
            log.warning("could not write TensorBoard HParams: %s", exc)
    atomic_write_text(study_dir / constants.SUMMARY_FILE, summary_text(cfg, outcome, rows))
    write_sweep_info(study_dir, cfg, storage, state="interrupted" if interrupted else "finished")
    _mirror_up(cfg, study_dir)
    return outcome


def _mirror_up(cfg: Config, study_dir: Path) -> None:
    """With a bucket as ray.storage_path: the whole study directory to ``<experiment>/study/``."""
    remote = bucket.bucket_path(cfg)
    if remote is not None:
        bucket.BucketSync(study_dir, remote).sync(force=True, everything=True)


def summary_text(cfg: Config, outcome: "SweepOutcome", rows: list[dict[str, Any]]) -> str:
    lines = [
        f"study:       {cfg.search.study_name}",
        f"storage:     {outcome.storage}",
        f"experiment:  {outcome.experiment_path}",
        f"config:      {cfg.path}",
        f"metric:      {cfg.search.metric} ({cfg.search.direction}, objective: {cfg.search.objective})",
        f"sampler:     {cfg.search.sampler.type}   pruner: {cfg.search.pruner.type}",
        f"state:       {'interrupted' if outcome.interrupted else 'finished'}",
        "trials:      " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(outcome.counts.items())),
    ]
    secs = [r["seconds"] for r in rows if r["seconds"] is not None]
    if secs:
        lines.append(f"trial time:  total {sum(secs):.1f} s, median {sorted(secs)[len(secs) // 2]:.1f} s")
    if outcome.best_number is not None:
        lines.append(f"best trial:  #{outcome.best_number}  {cfg.search.metric}={outcome.best_value:.6g}")
        for k, v in outcome.best_params.items():
            lines.append(f"  {k}: {v}")
        lines.append(f"best config: {outcome.best_config_path}")
    else:
        lines.append("best trial:  none completed")
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)
