"""What a training function sees: ``report()`` and ``get_checkpoint()``.

A training function takes the trial's config dict and calls
:func:`report` once per epoch, optionally with a directory holding a
checkpoint, and :func:`get_checkpoint` at start to resume::

    import raysweep

    def train(config):
        start = 0
        ckpt = raysweep.get_checkpoint()          # a local directory or None
        if ckpt:
            start = load(ckpt) + 1
        for epoch in range(start, config["training"]["num_epochs"]):
            ...
            with tempfile.TemporaryDirectory() as d:
                save(d, epoch)
                raysweep.report({"val_acc": acc, "epoch": epoch}, checkpoint=d)

The same function runs inside a Ray trial (``raysweep run``), under
``raysweep train`` and from plain Python; outside Ray, ``report`` logs locally.

This module also builds the function Ray runs for each trial. It imports ray
only inside functions.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from raysweep import constants
from raysweep.errors import ConfigError

log = logging.getLogger("raysweep")

BUILTIN_ENTRYPOINT = "raysweep.trainers.builtin:train"

TrainFn = Callable[[dict[str, Any]], Any]


def _to_number(key: str, value: Any) -> Any:
    """Turn numpy/torch scalars into Python numbers; keep strings and bools."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"raysweep.report: metric {key!r} must be a number, got {type(value).__name__}") from None


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"raysweep.report expects a dict of metrics, got {type(metrics).__name__}")
    return {str(k): _to_number(str(k), v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------
# Sessions: where report() goes
# ---------------------------------------------------------------------------


@dataclass
class LocalSession:
    """Outside Ray: keep the history, log one line per report.

    ``checkpoint_dir`` is what :func:`get_checkpoint` returns (``raysweep
    train --resume`` sets it); ``on_report`` lets a caller persist reports.
    """

    checkpoint_dir: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    on_report: Callable[[dict[str, Any], str | None], None] | None = None
    quiet: bool = False

    def report(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        self.history.append(metrics)
        if checkpoint is not None:
            self.checkpoint_dir = str(checkpoint)
        if self.on_report is not None:
            self.on_report(metrics, checkpoint)
        elif not self.quiet:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            log.info("report %d: %s", len(self.history), shown)

    def get_checkpoint(self) -> str | None:
        return self.checkpoint_dir

    @property
    def in_ray(self) -> bool:
        return False


class RaySession:
    """Inside a Ray Tune trial: forward to ``ray.tune``."""

    def __init__(self) -> None:
        self._restored: Any = None
        self.history: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        from ray import tune

        self.history.append(metrics)
        if checkpoint is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))

    def get_checkpoint(self) -> str | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        if self._restored is None:
            # Local directories are returned as they are; remote ones are downloaded once.
            path = ckpt.path
            fs = ckpt.filesystem
            import pyarrow.fs as pafs

            if isinstance(fs, pafs.LocalFileSystem) and os.path.isdir(path):
                self._restored = path
            else:
                self._restored = ckpt.to_directory()
        return str(self._restored)

    @property
    def in_ray(self) -> bool:
        return True


_session: LocalSession | RaySession | None = None


def current_session() -> LocalSession | RaySession:
    global _session
    if _session is None:
        _session = LocalSession()
    return _session


@contextlib.contextmanager
def session(s: LocalSession | RaySession) -> Iterator[LocalSession | RaySession]:
    """Make ``s`` the target of :func:`report` for the duration of the block."""
    global _session
    previous = _session
    _session = s
    try:
        yield s
    finally:
        _session = previous


def report(metrics: Mapping[str, Any], checkpoint: str | os.PathLike[str] | None = None) -> None:
    """Report one epoch's metrics (and optionally a checkpoint directory).

    Inside a sweep the metrics drive the search (the configured
    ``search.metric``), pruning and the live view; the directory's contents are
    stored as the trial's checkpoint, so write each epoch's checkpoint into a
    fresh directory (e.g. a ``tempfile.TemporaryDirectory``).
    """
    ckpt = None if checkpoint is None else os.fspath(checkpoint)
    if ckpt is not None and not os.path.isdir(ckpt):
        raise FileNotFoundError(f"raysweep.report: checkpoint directory {ckpt!r} does not exist")
    current_session().report(clean_metrics(metrics), ckpt)


def get_checkpoint() -> str | None:
    """The directory of the latest checkpoint to resume from, or None."""
    return current_session().get_checkpoint()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------------
# Entrypoints
# ---------------------------------------------------------------------------


def load_entrypoint(spec: str | None, *, config_path: str | None = None) -> TrainFn:
    """Import ``"package.module:function"`` (the built-in trainer when None).

    The current directory is importable, like ``python -m``. Errors are
    ConfigErrors naming ``training.entrypoint``.
    """
    target = spec or BUILTIN_ENTRYPOINT
    module_name, _, fn_name = target.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if spec is None:
            raise
        raise ConfigError(f"cannot import {module_name!r} ({exc})", path=config_path,
                          key="training.entrypoint") from None
    except Exception as exc:  # the user's module raised at import
        raise ConfigError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}",
                          path=config_path, key="training.entrypoint") from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{module_name!r} has no function {fn_name!r}", path=config_path,
                          key="training.entrypoint")
    return fn


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each dotted key in ``params`` set."""
    from raysweep.config import set_dotted

    out = copy.deepcopy(dict(base))
    for key, value in params.items():
        set_dotted(out, key, value)
    return out


def run_function(fn: TrainFn, config: dict[str, Any]) -> None:
    """Call a training function; a returned dict of metrics counts as a final report."""
    s = current_session()
    before = len(s.history)
    out = fn(config)
    if isinstance(out, Mapping) and len(s.history) == before:
        report(out)
    elif out is not None and not isinstance(out, Mapping) and len(s.history) == before:
        if isinstance(out, (int, float)) and not isinstance(out, bool) and math.isfinite(float(out)):
            metric = config.get("search", {}).get("metric", "value")
            report({metric: float(out)})


def make_trainable(base: Mapping[str, Any], entrypoint: str | None) -> Callable[[dict[str, Any]], None]:
    """The function Ray Tune runs for each trial.

    Tune passes ``{TRIAL_PARAMS_KEY: {...}, TRIAL_NUMBER_KEY: n}``; the trial
    runs the training function on ``base`` with those parameters applied. A
    reused actor gets a fresh deep copy of the config for each trial.
    """
    base = copy.deepcopy(dict(base))
    cwd = os.getcwd()

    def raysweep_trial(tune_config: dict[str, Any]) -> None:
        if cwd not in sys.path and os.path.isdir(cwd):
            sys.path.insert(0, cwd)
        params = tune_config.get(constants.TRIAL_PARAMS_KEY, {})
        config = apply_params(base, params)
        config.setdefault("search", {})
        config["search"] = dict(config["search"])
        config["search"]["trial_number"] = tune_config.get(constants.TRIAL_NUMBER_KEY)
        fn = load_entrypoint(entrypoint)
        with session(RaySession()):
            run_function(fn, config)

    raysweep_trial.__name__ = "raysweep_trial"
    raysweep_trial.__qualname__ = "raysweep_trial"
    return raysweep_trial
