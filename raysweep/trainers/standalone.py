"""``raysweep train``: one fold, the full run directory, test accuracy at the end."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from raysweep.errors import UsageError
from raysweep.trainers import rundir as rd
from raysweep.trainers.data import dataset_name
from raysweep.trainers.engine import BatchCallback, FoldTrainer, load_state
from raysweep.trial import report

EpochCallback = Callable[[Mapping[str, float], float], None]   # (metrics, seconds)


@dataclass(frozen=True)
class RunResult:
    """Where a standalone run wrote its files and what it scored."""

    run_dir: Path
    epochs: int
    best_epoch: int | None
    best_value: float | None
    metric: str
    test_loss: float
    test_acc: float
    final: Mapping[str, float]


def run_standalone(config: dict[str, Any], *, config_path: str | None = None,
                   name_overrides: Sequence[tuple[str, Any]] = (), resume_dir: str | Path | None = None,
                   argv: Sequence[str] | None = None, on_batch: BatchCallback | None = None,
                   on_epoch: EpochCallback | None = None, on_start: Callable[[Path, int], None] | None = None,
                   ) -> RunResult:
    """Train ``config`` outside Ray, writing ``runs/<dataset>_<overrides>_fold_<k>/``.

    ``resume_dir`` continues a run from its ``weights/last.pt`` in the same
    directory. ``name_overrides`` are the command-line overrides that name the
    run (``[("training.batch_size", 32), ("optimizer.lr", 0.01)]``).
    """
    state = None
    if resume_dir is not None:
        from raysweep.trainers.builtin import find_state

        state = load_state(find_state(resume_dir))
        path = Path(resume_dir)
    else:
        fold = int(config["data"].get("fold", 0))
        name = rd.run_name(dataset_name(config), name_overrides, fold)
        path = rd.unique_dir(Path(config["training"].get("output_dir") or "runs"), name)

    trainer = FoldTrainer(config, on_batch=on_batch)
    if state is not None:
        trainer.load_state(state)
        if trainer.epoch >= trainer.num_epochs:
            raise UsageError(f"{path} already has {trainer.epoch} of {trainer.num_epochs} epochs; "
                             "pass a larger --num_epochs to continue it")
    run = rd.RunDir(path)
    try:
        meta = rd.metadata(argv=argv, seed=trainer.seed, device=str(trainer.device), config_path=config_path,
                           extra={"fold": trainer.fold, "dataset": dataset_name(config),
                                  "resumed_from_epoch": trainer.epoch if state is not None else None})
        run.write_json(rd.METADATA_FILE, meta)
        run.write_config(config)
        run.log(f"{'resume at' if state else 'start'} epoch {trainer.epoch}/{trainer.num_epochs}: "
                f"{meta['command']} (seed {trainer.seed}, device {trainer.device})")
        if on_start is not None:
            on_start(path, trainer.epoch)
        t0 = time.monotonic()
        while trainer.epoch < trainer.num_epochs:
            t = time.monotonic()
            metrics = trainer.run_epoch()
            seconds = time.monotonic() - t
            run.epoch(metrics, trainer.state(), best=trainer.last_was_best, seconds=seconds)
            report(metrics)
            if on_epoch is not None:
                on_epoch(metrics, seconds)
        best = load_state(run.best_weights) if run.best_weights.is_file() else None
        if best is not None:
            trainer.model.load_state_dict(best["model"])
        test_loss, test_acc = trainer.test()
        if test_acc == test_acc:  # not NaN: there is a test split
            run.writer.add_scalar("accuracy/test", test_acc, trainer.best_epoch or 0)
            run.writer.add_scalar("loss/test", test_loss, trainer.best_epoch or 0)
        final = trainer.history[-1]
        best_m = trainer.history[trainer.best_epoch] if trainer.best_epoch is not None else final
        run.write_summary({
            "run": path.name,
            "epochs": trainer.epoch,
            "best_epoch": trainer.best_epoch,
            "metric": trainer.metric,
            "best_val_acc": best_m["val_acc"],
            "best_val_loss": best_m["val_loss"],
            "final_train_loss": final["train_loss"],
            "final_train_acc": final["train_acc"],
            "final_val_loss": final["val_loss"],
            "final_val_acc": final["val_acc"],
            "test_loss": test_loss,
            "test_acc": test_acc,
            "test_weights": "best" if best is not None else "last",
            "seconds": f"{time.monotonic() - t0:.1f}",
            "seed": trainer.seed,
        })
        run.log(f"done: best epoch {trainer.best_epoch} ({trainer.metric} {trainer.best_value:.4f}), "
                f"test_acc {test_acc:.4f}")
    except Exception as exc:
        run.log(f"failed: {exc}")
        raise
    finally:
        run.close()
    return RunResult(path, trainer.epoch, trainer.best_epoch, trainer.best_value, trainer.metric,
                     test_loss, test_acc, dict(trainer.history[-1]))


def train_command(config_path: str | None, *, lr: float | None = None, batch_size: int | None = None,
                  num_epochs: int | None = None, fold: int | None = None, sets: Sequence[str] = (),
                  resume: str | None = None, argv: Sequence[str] | None = None,
                  on_batch: BatchCallback | None = None, on_epoch: EpochCallback | None = None,
                  on_start: Callable[[Path, int], None] | None = None) -> RunResult | None:
    """What ``raysweep train`` does: load and override the config, then train.

    With ``resume`` and no ``config_path`` the run's own ``config.yaml`` is
    used. A config with ``training.entrypoint`` runs that function instead
    (returning None).
    """
    from raysweep.config import load_config, parse_override
    from raysweep.trial import LocalSession, load_entrypoint, run_function, session

    if config_path is None:
        if resume is None:
            raise UsageError("--config is required (or --resume RUN_DIR to continue a run)")
        config_path = str(Path(resume) / rd.CONFIG_FILE)
        if not Path(config_path).is_file():
            raise UsageError(f"{resume} has no {rd.CONFIG_FILE}; pass --config")
    named: list[tuple[str, Any]] = []
    overrides: list[str] = []
    for key, value in (("optimizer.lr", lr), ("training.batch_size", batch_size),
                       ("training.num_epochs", num_epochs), ("data.fold", fold)):
        if value is not None:
            overrides.append(f"{key}={value}")
            named.append((key, value))
    for item in sets:
        named.append(parse_override(item))
    overrides.extend(sets)
    cfg = load_config(config_path, overrides, require_search=False)
    config = cfg.to_dict()
    if cfg.entrypoint:
        fn = load_entrypoint(cfg.entrypoint, config_path=config_path)
        with session(LocalSession(checkpoint_dir=resume)):
            run_function(fn, config)
        return None
    # the run's name always shows batch size and lr, then any other override
    name_parts = [("training.batch_size", config["training"]["batch_size"]),
                  ("optimizer.lr", config["optimizer"]["lr"])]
    name_parts += [(k, v) for k, v in named
                   if k not in ("training.batch_size", "optimizer.lr", "data.fold")]
    with session(LocalSession(quiet=True)):
        return run_standalone(config, config_path=config_path, name_overrides=name_parts, resume_dir=resume,
                              argv=argv, on_batch=on_batch, on_epoch=on_epoch, on_start=on_start)
