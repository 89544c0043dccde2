"""raysweep: hyperparameter sweeps from one YAML file.

Public surface for training functions::

    import raysweep
    raysweep.report({"val_acc": 0.93}, checkpoint=some_dir)
    raysweep.get_checkpoint()

Importing raysweep does not import ray, torch or optuna.
"""
from __future__ import annotations

from raysweep.errors import ConfigError, RaysweepError, UsageError
from raysweep.trial import get_checkpoint, report

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "RaysweepError",
    "UsageError",
    "__version__",
    "get_checkpoint",
    "report",
]
