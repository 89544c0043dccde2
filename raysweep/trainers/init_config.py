"""``raysweep init``: inspect ``data/<name>`` and write ``configs/<name>_config.yaml``.

Pure functions: :func:`inspect_dataset` reads the folder, :func:`suggest`
turns its size into defaults, :func:`build_config` assembles the mapping and
:func:`render` the commented YAML. Prompting lives in the CLI.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysweep.config import dump_yaml
from raysweep.errors import UsageError
from raysweep.trainers import split as splitmod

# The seed's default search space (hyperparameter-tuning-guide.md).
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "optimizer.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
    "training.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "optimizer.momentum": {"type": "uniform", "low": 0.8, "high": 0.99},
    "scheduler.step_size": {"type": "int", "low": 5, "high": 15},
    "scheduler.gamma": {"type": "uniform", "low": 0.05, "high": 0.5},
}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`inspect_dataset` found."""

    name: str
    data_dir: Path
    classes: tuple[str, ...]
    counts: dict[str, int]
    image_size: tuple[int, int]          # most common (width, height) among sampled images
    grayscale: bool
    n_folds: int                         # existing folds in splits/ (0: none)
    has_test: bool
    sizes_seen: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return sum(self.counts.values())

    @property
    def has_splits(self) -> bool:
        return self.n_folds > 0

    def describe(self) -> str:
        """One line: ``digits: 10 classes, 1797 images (174-183 per class), 8x8 grayscale, 5 folds``."""
        lo, hi = min(self.counts.values()), max(self.counts.values())
        per = f"{lo}" if lo == hi else f"{lo}-{hi}"
        w, h = self.image_size
        mixed = ", mixed sizes" if len(self.sizes_seen) > 1 else ""
        splits = f"{self.n_folds} folds" + (" + test" if self.has_test else "") if self.n_folds else "no splits"
        return (f"{self.name}: {len(self.classes)} classes, {self.n_images} images ({per} per class), "
                f"{w}x{h} {'grayscale' if self.grayscale else 'colour'}{mixed}, {splits}")


def dataset_root(path: str | Path) -> Path:
    """``data/<name>`` for ``data/<name>`` or ``data/<name>/raw``."""
    p = Path(path)
    if (p / "raw").is_dir():
        return p
    if p.name == "raw" and p.is_dir():
        return p.parent
    raise UsageError(f"{p} has no raw/ folder (expected {p}/raw/<class>/<image files>)")


def inspect_dataset(path: str | Path, *, sample: int = 200) -> DatasetInfo:
    """Classes, counts, the common image size and mode, and existing splits of ``data/<name>``."""
    from PIL import Image

    root = dataset_root(path)
    raw = root / "raw"
    images = splitmod.list_images(raw)
    if not images:
        raise UsageError(f"{raw} has no class folders with images (expected {raw}/<class>/<image files>)")
    counts = collections.Counter(p.split("/", 1)[0] for p in images)
    step = max(1, len(images) // sample)
    sizes: collections.Counter[tuple[int, int]] = collections.Counter()
    gray = True
    for rel in images[::step][:sample]:
        try:
            with Image.open(raw / rel) as im:
                sizes[im.size] += 1
                gray = gray and im.mode in _GRAY_MODES
        except OSError as exc:
            raise UsageError(f"cannot read image {raw / rel}: {exc}") from None
    sdir = splitmod.splits_dir_for(raw)
    return DatasetInfo(
        name=root.resolve().name, data_dir=root, classes=tuple(sorted(counts)), counts=dict(sorted(counts.items())),
        image_size=sizes.most_common(1)[0][0], grayscale=gray, n_folds=splitmod.existing_folds(sdir),
        has_test=(sdir / splitmod.TEST_FILE).is_file(), sizes_seen=dict(sizes),
    )


def suggest(info: DatasetInfo) -> dict[str, Any]:
    """Defaults for the data set's size: model, image_size, augment, batch_size, num_epochs, lr, n_trials.

    Images are trained at their own size, clamped to 8..64 px (the built-in
    models pool twice, then adaptively). Images of 16 px or less get
    ``tiny_net``, larger ones ``simple_cnn``. Small grayscale images (32 px or
    less: digits, characters) are not flipped, since a mirrored character is
    another character; other images get random horizontal flips. Small data
    sets get more epochs and smaller batches.

    >>> suggest(inspect_dataset("data/digits"))["model"]   # 8x8 digits  # doctest: +SKIP
    'tiny_net'
    """
    n = info.n_images
    side = max(info.image_size)
    image_size = int(min(64, max(8, side)))
    return {
        "model": "tiny_net" if image_size <= 16 else "simple_cnn",
        "image_size": image_size,
        "augment": not (info.grayscale and side <= 32),
        "batch_size": 32 if n < 20000 else 64,
        "num_epochs": 30 if n < 2000 else 20 if n < 20000 else 10,
        "lr": 0.01,
        "n_trials": 50,
    }


def build_config(info: DatasetInfo, *, optuna: bool = False, model: str | None = None,
                 image_size: int | None = None, batch_size: int | None = None,
                 num_epochs: int | None = None, n_trials: int | None = None) -> dict[str, Any]:
    """The config mapping for ``info`` (choices left None take :func:`suggest`'s values)."""
    s = suggest(info)
    epochs = int(num_epochs or s["num_epochs"])
    cfg: dict[str, Any] = {
        "seed": 42,
        "data": {
            "dataset_name": info.name,
            "data_dir": info.data_dir.as_posix(),
            "fold": 0,
            "image_size": int(image_size or s["image_size"]),
            "grayscale": info.grayscale,
            "augment": bool(s["augment"]),
            "cache": True,
        },
        "model": {"name": model or s["model"], "num_classes": len(info.classes), "dropout": 0.2,
                  "pretrained": False},
        "training": {"batch_size": int(batch_size or s["batch_size"]), "num_epochs": epochs, "device": "auto",
                     "mixed_precision": False, "output_dir": "runs"},
        "optimizer": {"name": "sgd", "lr": s["lr"], "momentum": 0.9, "weight_decay": 0.0},
        "scheduler": {"name": "step", "step_size": max(1, epochs // 3), "gamma": 0.1},
    }
    if optuna:
        cfg["search"] = {
            "study_name": f"{info.name}_optimization",
            "n_trials": int(n_trials or s["n_trials"]),
            "metric": "val_acc",
            "direction": "maximize",
            "sampler": {"type": "TPESampler", "n_startup_trials": 10},
            "pruner": {"type": "MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 5},
            "cross_validation": {"enabled": False, "n_folds": max(2, info.n_folds or 5), "aggregation": "mean"},
            "search_space": {k: dict(v) for k, v in DEFAULT_SEARCH_SPACE.items()},
        }
        cfg["ray"] = {"resources_per_trial": {"cpu": 1, "gpu": 0}}
    return cfg


def render(cfg: dict[str, Any], info: DatasetInfo) -> str:
    """Commented YAML: a header naming the data set, one block per section."""
    lines = [f"# raysweep config for {info.describe()}",
             "# Generated by `raysweep init`; every key is documented in raysweep.config.TRAINER_SCHEMA.",
             f"#   raysweep train --config <this file>" + ("\n#   raysweep run --config <this file>"
                                                          if "search" in cfg else ""),
             ""]
    for key, value in cfg.items():
        lines.append(dump_yaml({key: value}).rstrip("\n"))
        lines.append("")
    return "\n".join(lines)


def default_output(info: DatasetInfo) -> Path:
    """``configs/<name>_config.yaml``."""
    return Path("configs") / f"{info.name}_config.yaml"


def same_content(path: str | Path, text: str) -> bool:
    """Whether ``path`` is a file holding exactly ``text``."""
    p = Path(path)
    try:
        return p.is_file() and p.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def write_config(path: str | Path, text: str, *, force: bool = False) -> Path:
    """Write ``text``; an existing file is a UsageError unless ``force`` or it already holds ``text``."""
    p = Path(path)
    if p.exists() and not force and not same_content(p, text):
        raise UsageError(f"{p} exists; pass --force to overwrite it")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p
