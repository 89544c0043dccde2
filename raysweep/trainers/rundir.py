"""The standalone run directory ``runs/<dataset>_<overrides>_fold_<k>/``.

::

    weights/best.pt  weights/last.pt     FoldTrainer.state() at the best / last epoch
    events.out.tfevents.*                TensorBoard (tensorboardX): losses, accuracies, lr
    train.log                            one line per epoch, plus start/end lines
    summary.txt                          best epoch, final and best val metrics, test accuracy
    metadata.json                        command, git commit, seed, versions, host, device
    config.yaml                          the resolved config (``--resume`` reads it)
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import platform
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from raysweep.config import dump_yaml, masked_dict
from raysweep.trainers.engine import save_state

WEIGHTS_DIR = "weights"
BEST_WEIGHTS = "best.pt"
LAST_WEIGHTS = "last.pt"
LOG_FILE = "train.log"
SUMMARY_FILE = "summary.txt"
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.yaml"


def _short(key: str) -> str:
    leaf = key.split(".")[-1]
    return {"batch_size": "batch", "num_epochs": "epochs", "learning_rate": "lr"}.get(leaf, leaf)


def run_name(dataset: str, overrides: Sequence[tuple[str, Any]], fold: int) -> str:
    """``run_name("digits", [("training.batch_size", 32), ("optimizer.lr", 0.01)], 0)``
    -> ``"digits_batch_32_lr_0.01_fold_0"``."""
    parts = [dataset]
    for key, value in overrides:
        if key.split(".")[-1] == "fold":
            continue
        parts += [_short(key), _fmt_value(value)]
    parts += ["fold", str(fold)]
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", "_".join(parts))


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def unique_dir(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3``... when it exists."""
    p = parent / name
    n = 2
    while p.exists():
        p = parent / f"{name}-{n}"
        n += 1
    return p


def git_info(cwd: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` inside a git work tree, else None."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def versions() -> dict[str, str | None]:
    """Python, torch, ray and optuna versions (ray is not imported)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "ray", "optuna", "raysweep"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def metadata(*, argv: Sequence[str] | None, seed: int, device: str, config_path: str | None,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The contents of ``metadata.json``."""
    args = list(sys.argv if argv is None else argv)
    return {
        "command": shlex.join(args),
        "argv": args,
        "config": config_path,
        "seed": seed,
        "git": git_info(),
        "versions": versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }


class RunDir:
    """Writes one standalone run's files; :meth:`close` flushes TensorBoard."""

    def __init__(self, path: str | Path) -> None:
        from tensorboardX import SummaryWriter

        self.path = Path(path)
        (self.path / WEIGHTS_DIR).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(logdir=str(self.path))
        self._log = open(self.path / LOG_FILE, "a", encoding="utf-8")

    @property
    def last_weights(self) -> Path:
        return self.path / WEIGHTS_DIR / LAST_WEIGHTS

    @property
    def best_weights(self) -> Path:
        return self.path / WEIGHTS_DIR / BEST_WEIGHTS

    def log(self, line: str) -> None:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"{stamp} {line}\n")
        self._log.flush()

    def epoch(self, metrics: Mapping[str, float], state: Mapping[str, Any], *, best: bool, seconds: float) -> None:
        """Log, plot and save one finished epoch."""
        e = int(metrics["epoch"])
        w = self.writer
        w.add_scalar("loss/train", metrics["train_loss"], e)
        w.add_scalar("loss/val", metrics["val_loss"], e)
        w.add_scalar("accuracy/train", metrics["train_acc"], e)
        w.add_scalar("accuracy/val", metrics["val_acc"], e)
        w.add_scalar("lr", metrics["lr"], e)
        w.flush()
        self.log(format_epoch(metrics, seconds) + ("  *best*" if best else ""))
        save_state(state, self.last_weights)
        if best:
            save_state(state, self.best_weights)

    def write_json(self, name: str, data: Mapping[str, Any]) -> None:
        (self.path / name).write_text(json.dumps(dict(data), indent=2, default=str) + "\n", encoding="utf-8")

    def write_config(self, config: Mapping[str, Any]) -> None:
        (self.path / CONFIG_FILE).write_text(dump_yaml(masked_dict(dict(config))), encoding="utf-8")

    def write_summary(self, lines: Mapping[str, Any]) -> None:
        width = max(len(k) for k in lines)
        text = "".join(f"{k + ':':<{width + 1}} {_fmt_summary(v)}\n" for k, v in lines.items())
        (self.path / SUMMARY_FILE).write_text(text, encoding="utf-8")

    def close(self) -> None:
        self.writer.close()
        self._log.close()


def format_epoch(m: Mapping[str, float], seconds: float | None = None) -> str:
    """``epoch 3: train_loss 0.41 train_acc 0.872 val_loss 0.38 val_acc 0.889 lr 0.01 (1.2s)``."""
    text = (f"epoch {int(m['epoch'])}: train_loss {m['train_loss']:.4f} train_acc {m['train_acc']:.4f} "
            f"val_loss {m['val_loss']:.4f} val_acc {m['val_acc']:.4f} lr {m['lr']:.3g}")
    return text + (f" ({seconds:.1f}s)" if seconds is not None else "")


def _fmt_summary(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return "n/a" if v is None else str(v)
