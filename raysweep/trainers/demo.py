"""The demo data set: scikit-learn's bundled 8x8 digits written in the seed layout.

``prepare_demo()`` writes ``data/digits/raw/<0-9>/<nnnn>.png`` (1,797 images,
no network), creates 5 stratified folds plus a test split and writes
``configs/digits_demo.yaml``: a tiny CNN, few epochs and a search block sized
for a ~20-trial sweep with pruning that takes a few minutes on 2 cores.
Every step is skipped when its output already exists (unless ``force``).

The demo's config and study are named ``digits_demo``, not
``digits_config.yaml`` / ``digits_optimization``: those are what ``raysweep
init data/digits --optuna`` and the sweep it sets up use, so the seed's
workflow runs unchanged on the demo's data after the demo.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysweep.config import dump_yaml
from raysweep.trainers import split as splitmod

DEMO_NAME = "digits"
DEMO_STUDY = "digits_demo"
DEMO_CONFIG = Path("configs") / f"{DEMO_STUDY}.yaml"


@dataclass(frozen=True)
class DemoPaths:
    """What :func:`prepare_demo` produced (or found)."""

    data_dir: Path
    config_path: Path
    n_images: int
    wrote_images: bool
    wrote_splits: bool
    wrote_config: bool


def write_digits(raw: str | Path) -> int:
    """Write the 1,797 digits as 8x8 grayscale PNGs under ``raw/<digit>/``; returns the count."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    raw = Path(raw)
    digits = load_digits()
    counts: dict[int, int] = {}
    for img, label in zip(digits.images, digits.target):
        k = int(label)
        counts[k] = counts.get(k, 0) + 1
        out = raw / str(k)
        out.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.rint(img * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / f"{counts[k] - 1:04d}.png")
    return int(len(digits.target))


def demo_config(data_dir: str | Path, n_trials: int = 20) -> dict[str, Any]:
    """The demo's config: a small CNN on 16x16 digits, 10 epochs, ~20 trials with pruning."""
    return {
        "seed": 42,
        "data": {"dataset_name": DEMO_NAME, "data_dir": str(data_dir), "fold": 0, "image_size": 16,
                 "grayscale": True, "augment": False},
        "model": {"name": "simple_cnn", "num_classes": 10, "dropout": 0.1},
        "training": {"batch_size": 32, "num_epochs": 10, "device": "auto", "mixed_precision": False},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
        "scheduler": {"name": "step", "step_size": 5, "gamma": 0.3},
        "search": {
            "study_name": DEMO_STUDY,
            "n_trials": n_trials,
            "metric": "val_acc",
            "direction": "maximize",
            "sampler": {"type": "TPESampler", "n_startup_trials": 6},
            "pruner": {"type": "MedianPruner", "n_startup_trials": 4, "n_warmup_steps": 2},
            "cross_validation": {"enabled": False, "n_folds": 5, "aggregation": "mean"},
            "search_space": {
                "optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.3},
                "training.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
                "optimizer.momentum": {"type": "uniform", "low": 0.8, "high": 0.99},
                "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.4},
                "scheduler.gamma": {"type": "uniform", "low": 0.05, "high": 0.5},
            },
        },
        "ray": {"resources_per_trial": {"cpu": 1, "gpu": 0}},
    }


def demo_config_text(data_dir: str | Path = "data/digits", n_trials: int = 20,
                     config_path: str | Path = DEMO_CONFIG) -> str:
    """:func:`demo_config` as the commented YAML file ``prepare_demo`` writes."""
    header = ("# raysweep demo: 8x8 scikit-learn digits upscaled to 16x16, a small CNN, 10 epochs.\n"
              f"# raysweep run --config {Path(config_path).as_posix()}   "
              "(~20 trials with pruning: a minute or two on 2 cores)\n"
              "# Your own sweep of the same data: raysweep init data/digits --optuna --yes\n")
    return header + dump_yaml(demo_config(data_dir, n_trials))


def prepare_demo(root: str | Path = "data/digits", *, config_path: str | Path | None = None,
                 force: bool = False, n_trials: int = 20) -> DemoPaths:
    """Write the digits images, splits and ``configs/digits_demo.yaml`` (each only if missing).

    ``config_path`` defaults to ``configs/digits_demo.yaml`` relative to the
    current directory. ``force`` rewrites all three.
    """
    root = Path(root)
    raw = root / "raw"
    cfg_path = Path(config_path) if config_path else DEMO_CONFIG
    wrote_images = wrote_splits = wrote_config = False
    existing = splitmod.list_images(raw) if raw.is_dir() else []
    if force or len(existing) < 1797:
        n = write_digits(raw)
        wrote_images = True
    else:
        n = len(existing)
    sdir = splitmod.splits_dir_for(raw)
    if force or splitmod.existing_folds(sdir) < 5 or not (sdir / splitmod.TEST_FILE).is_file():
        splitmod.make_splits(raw, folds=5, test_fraction=0.15, seed=42, force=True)
        wrote_splits = True
    if force or not cfg_path.is_file():
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(demo_config_text(root, n_trials, cfg_path), encoding="utf-8")
        wrote_config = True
    return DemoPaths(root, cfg_path, n, wrote_images, wrote_splits, wrote_config)


def write_synthetic(root: str | Path, *, classes: int = 3, per_class: int = 12, size: int = 10,
                    grayscale: bool = False, seed: int = 0) -> Path:
    """A tiny learnable image set in the seed layout (``root/raw/c<k>/<nnn>.png``), for tests and smoke runs.

    Class ``k`` is a noisy image whose brightness pattern depends on ``k``.
    Returns the raw folder.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    raw = Path(root) / "raw"
    ch = 1 if grayscale else 3
    for k in range(classes):
        d = raw / f"c{k}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.zeros((size, size, ch))
        base[:, : max(1, size * (k + 1) // (classes + 1))] = 200.0
        base = np.roll(base, k, axis=0)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img[:, :, 0] if grayscale else img).save(d / f"{i:03d}.png")
    return raw
