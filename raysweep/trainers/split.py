"""Stratified train/val folds and a shared test split for ``data/<name>/raw``.

Layout written (the seed's)::

    data/<name>/splits/fold_<k>_train.txt   # one path per line, relative to raw/
    data/<name>/splits/fold_<k>_val.txt
    data/<name>/splits/test.txt
    data/<name>/splits/split_info.json      # seed, folds, test_fraction, classes

Pure Python (``random.Random(seed)``): the same files and seed always give the
same splits, on every platform and library version.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from raysweep.errors import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLITS_DIR = "splits"
TEST_FILE = "test.txt"
INFO_FILE = "split_info.json"


def fold_file(fold: int, part: str) -> str:
    """``fold_file(0, "train")`` -> ``"fold_0_train.txt"``."""
    return f"fold_{fold}_{part}.txt"


def list_classes(raw_dir: str | Path) -> list[str]:
    """Sorted names of the class folders of ``raw_dir`` that hold images."""
    raw = Path(raw_dir)
    return sorted(d.name for d in raw.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and any(_is_image(f) for f in d.iterdir()))


def list_images(raw_dir: str | Path) -> list[str]:
    """Sorted ``"<class>/<file>"`` paths of every image under ``raw_dir``."""
    raw = Path(raw_dir)
    out: list[str] = []
    for cls in list_classes(raw):
        out.extend(f"{cls}/{f.name}" for f in sorted((raw / cls).iterdir()) if _is_image(f))
    return out


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@dataclass(frozen=True)
class SplitResult:
    """What :func:`make_splits` wrote."""

    splits_dir: Path
    folds: int
    classes: tuple[str, ...]
    n_test: int
    n_trainval: int


def splits_dir_for(raw_dir: str | Path) -> Path:
    """``data/<name>/raw`` -> ``data/<name>/splits``."""
    return Path(raw_dir).parent / SPLITS_DIR


def existing_folds(splits_dir: str | Path) -> int:
    """How many consecutive folds (fold_0.., with train and val files) exist."""
    d = Path(splits_dir)
    k = 0
    while (d / fold_file(k, "train")).is_file() and (d / fold_file(k, "val")).is_file():
        k += 1
    return k


def assign_folds(paths_by_class: dict[str, list[str]], folds: int, test_fraction: float,
                 seed: int) -> tuple[list[str], list[list[str]]]:
    """Pure stratified assignment: returns ``(test, [fold_0_val, fold_1_val, ...])``.

    Each class is shuffled with one ``random.Random(seed)``; ``round(n *
    test_fraction)`` of its images go to test, the rest are dealt round-robin
    to the folds (starting where the previous class stopped, so fold sizes stay
    within one image of each other).
    """
    rng = random.Random(seed)
    test: list[str] = []
    val: list[list[str]] = [[] for _ in range(folds)]
    offset = 0
    for cls in sorted(paths_by_class):
        files = sorted(paths_by_class[cls])
        rng.shuffle(files)
        n_test = int(round(len(files) * test_fraction))
        if test_fraction > 0 and n_test == 0 and len(files) > folds:
            n_test = 1
        test.extend(files[:n_test])
        rest = files[n_test:]
        if len(rest) < folds:
            raise UsageError(f"class {cls!r} has {len(rest)} images outside the test split; "
                             f"--folds {folds} needs at least {folds} per class")
        for i, f in enumerate(rest):
            val[(offset + i) % folds].append(f)
        offset = (offset + len(rest)) % folds
    return sorted(test), [sorted(v) for v in val]


def make_splits(raw_dir: str | Path, folds: int = 5, test_fraction: float = 0.15, seed: int = 42,
                *, force: bool = False) -> SplitResult:
    """Write stratified folds and a test split for ``raw_dir`` (``data/<name>/raw``).

    Refuses (UsageError) to overwrite existing split files unless ``force``.
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise UsageError(f"{raw} is not a directory (expected data/<name>/raw/<class>/<images>)")
    if folds < 2:
        raise UsageError(f"--folds must be >= 2, got {folds}")
    if not 0.0 <= test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    classes = list_classes(raw)
    if not classes:
        raise UsageError(f"{raw} has no class folders with images (expected {raw}/<class>/<images>)")
    out = splits_dir_for(raw)
    if out.is_dir() and any(out.glob("*.txt")) and not force:
        raise UsageError(f"{out} already holds splits; pass --force to overwrite them")

    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for p in list_images(raw):
        by_class[p.split("/", 1)[0]].append(p)
    test, val = assign_folds(by_class, folds, test_fraction, seed)

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("fold_*_*.txt"):
        old.unlink()
    for k in range(folds):
        train = sorted(p for j, v in enumerate(val) if j != k for p in v)
        _write_list(out / fold_file(k, "train"), train)
        _write_list(out / fold_file(k, "val"), val[k])
    _write_list(out / TEST_FILE, test)
    info = {"seed": seed, "folds": folds, "test_fraction": test_fraction, "classes": classes}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return SplitResult(out, folds, tuple(classes), len(test), sum(len(v) for v in val))


def read_list(path: str | Path) -> list[str]:
    """Lines of a split file, blank lines skipped."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_list(path: Path, items: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{i}\n" for i in items), encoding="utf-8")
    tmp.replace(path)
