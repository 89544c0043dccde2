"""The built-in trainer: ``raysweep.trainers.builtin:train(config)``.

It is the default trainable of ``raysweep run`` and the engine of ``raysweep
train``. Inside a sweep it reports once per epoch with a checkpoint and
resumes from :func:`raysweep.get_checkpoint`; with
``search.cross_validation.enabled`` it trains every fold (see
:mod:`raysweep.trainers.cv`). Outside Ray it writes the full run directory
(:mod:`raysweep.trainers.standalone`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from raysweep.errors import TrainerError
from raysweep.trainers.engine import STATE_FILE, FoldTrainer, load_state
from raysweep.trial import current_session, get_checkpoint, report


def train(config: dict[str, Any]) -> None:
    """Train the config's model; one :func:`raysweep.report` per epoch.

    ``config`` is the full validated config dict (``raysweep.config.load_config(...).data``
    with the trial's parameters applied).
    """
    search = config.get("search") or {}
    in_sweep = current_session().in_ray or search.get("trial_number") is not None
    if in_sweep and (search.get("cross_validation") or {}).get("enabled"):
        from raysweep.trainers.cv import train_cv

        train_cv(config)
        return
    if current_session().in_ray:
        train_in_sweep(config)
        return
    from raysweep.trainers.standalone import run_standalone

    run_standalone(config)


def find_state(directory: str | Path) -> Path:
    """The state file inside a sweep checkpoint or a run directory."""
    d = Path(directory)
    for candidate in (d / STATE_FILE, d / "weights" / "last.pt", d / "last.pt"):
        if candidate.is_file():
            return candidate
    raise TrainerError(f"no checkpoint found in {d} (expected {STATE_FILE} or weights/last.pt)")


def train_in_sweep(config: dict[str, Any]) -> None:
    """One trial on one fold: report and checkpoint every epoch, no run directory."""
    trainer = FoldTrainer(config)
    ckpt = get_checkpoint()
    if ckpt:
        trainer.load_state(load_state(find_state(ckpt)))
    for _ in range(trainer.epoch, trainer.num_epochs):
        metrics = trainer.run_epoch()
        with tempfile.TemporaryDirectory(prefix="raysweep_ckpt_") as d:
            trainer.save(Path(d) / STATE_FILE)
            report(metrics, checkpoint=d)
