"""Images on disk -> uint8 arrays (cached once per node) -> in-memory batches.

Decoding uses Pillow only. The decoded array of *every* image under ``raw/``
is cached as one ``.npy`` file keyed by the raw folder's path, the image size,
the colour mode and each file's size and mtime; every fold and every trial on
the node reuses it. Several processes may build the cache at once: builders
take an exclusive file lock (``fcntl``), re-check, decode, write to a temp
file and ``os.replace`` it into place, so readers only ever see complete files
and the images are decoded once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from raysweep.errors import ConfigError
from raysweep.trainers import split as splitmod

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

CACHE_SUBDIR = ".cache"


def resolve_path(path: str | Path) -> Path:
    """An existing relative path from the cwd, else from the original working dir.

    Ray Tune moves a trial into its trial directory and records where it
    started in ``TUNE_ORIG_WORKING_DIR``; relative data paths in a config mean
    the directory ``raysweep run`` was started from.
    """
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    orig = os.environ.get("TUNE_ORIG_WORKING_DIR")
    if orig and (Path(orig) / p).exists():
        return Path(orig) / p
    return p


def dataset_dir(config: Mapping[str, Any]) -> Path:
    """``data.data_dir``, or ``data/<data.dataset_name>``; must hold ``raw/``."""
    data = config.get("data", {})
    d = data.get("data_dir")
    if not d:
        name = data.get("dataset_name")
        if not name:
            raise ConfigError("set data.data_dir (data/<name> with raw/ and splits/) or data.dataset_name",
                              key="data.data_dir")
        d = f"data/{name}"
    p = resolve_path(d)
    if not (p / "raw").is_dir():
        raise ConfigError(f"{d} has no raw/ folder (expected {d}/raw/<class>/<images>)", key="data.data_dir")
    return p


def dataset_name(config: Mapping[str, Any]) -> str:
    """``data.dataset_name`` or the data folder's name."""
    data = config.get("data", {})
    return str(data.get("dataset_name") or Path(str(data.get("data_dir") or "dataset")).name)


# ---------------------------------------------------------------------------
# Decoding and the cache
# ---------------------------------------------------------------------------


@dataclass
class ImageSet:
    """Every image under ``raw/``: ``images`` is uint8 ``(N, C, H, W)``."""

    images: "np.ndarray"
    labels: "np.ndarray"
    paths: list[str]
    classes: list[str]
    from_cache: bool = False
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {p: i for i, p in enumerate(self.paths)}


def decode(path: str | Path, image_size: int, grayscale: bool) -> "np.ndarray":
    """One image file -> uint8 ``(C, size, size)``."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if grayscale else "RGB")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None, :, :]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def cache_key(raw_dir: Path, paths: list[str], image_size: int, grayscale: bool) -> str:
    """A digest of the raw folder's path, every file's size and mtime, size and mode."""
    h = hashlib.sha1()
    h.update(json.dumps([str(raw_dir.resolve()), image_size, grayscale]).encode())
    for p in paths:
        st = (raw_dir / p).stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def default_cache_dir(data_dir: Path) -> Path:
    """``<data_dir>/.cache`` when writable, else a folder in the system temp dir."""
    d = data_dir / CACHE_SUBDIR
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "raysweep_cache"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic rename still keeps readers safe
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def load_images(raw_dir: str | Path, image_size: int, grayscale: bool = False, *,
                cache_dir: str | Path | None = None, use_cache: bool = True) -> ImageSet:
    """Decode (or load from the cache) every image under ``raw_dir``."""
    import numpy as np

    raw = Path(raw_dir)
    classes = splitmod.list_classes(raw)
    paths = splitmod.list_images(raw)
    if not paths:
        raise ConfigError(f"{raw} holds no images", key="data.data_dir")
    labels = np.array([classes.index(p.split("/", 1)[0]) for p in paths], dtype=np.int64)

    def build() -> "np.ndarray":
        out = np.empty((len(paths), 1 if grayscale else 3, image_size, image_size), dtype=np.uint8)
        for i, p in enumerate(paths):
            try:
                out[i] = decode(raw / p, image_size, grayscale)
            except OSError as exc:
                raise ConfigError(f"cannot decode image {raw / p}: {exc}", key="data.data_dir") from None
        return out

    if not use_cache:
        return ImageSet(build(), labels, paths, classes)

    cdir = Path(cache_dir) if cache_dir else default_cache_dir(raw.parent)
    cdir.mkdir(parents=True, exist_ok=True)
    key = cache_key(raw, paths, image_size, grayscale)
    target = cdir / f"{raw.parent.name}_{image_size}_{'L' if grayscale else 'RGB'}_{key}.npy"
    expected = (len(paths), 1 if grayscale else 3, image_size, image_size)

    images = _try_load(target, expected)
    if images is not None:
        return ImageSet(images, labels, paths, classes, from_cache=True)
    with _file_lock(target.with_suffix(".lock")):
        images = _try_load(target, expected)   # another process may have built it meanwhile
        if images is not None:
            return ImageSet(images, labels, paths, classes, from_cache=True)
        images = build()
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=cdir)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, images)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return ImageSet(images, labels, paths, classes, from_cache=False)


def _try_load(path: Path, shape: tuple[int, ...]) -> "np.ndarray | None":
    import numpy as np

    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


# ---------------------------------------------------------------------------
# Folds as tensors
# ---------------------------------------------------------------------------


@dataclass
class FoldData:
    """One fold's train/val/test tensors (uint8 images, int64 labels) and normalisation."""

    train_x: "torch.Tensor"
    train_y: "torch.Tensor"
    val_x: "torch.Tensor"
    val_y: "torch.Tensor"
    test_x: "torch.Tensor"
    test_y: "torch.Tensor"
    classes: list[str]
    mean: "torch.Tensor"
    std: "torch.Tensor"

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


def load_fold(config: Mapping[str, Any], fold: int | None = None) -> FoldData:
    """Tensors for ``fold`` (default ``data.fold``) of the config's dataset."""
    import numpy as np
    import torch

    data = config.get("data", {})
    fold = int(data.get("fold", 0) if fold is None else fold)
    ddir = dataset_dir(config)
    sdir = ddir / splitmod.SPLITS_DIR
    train_file = sdir / splitmod.fold_file(fold, "train")
    if not train_file.is_file():
        n = splitmod.existing_folds(sdir)
        hint = f"it has folds 0..{n - 1}" if n else f"run: raysweep split --raw-data {ddir / 'raw'} --folds 5"
        raise ConfigError(f"{sdir} has no fold {fold} ({hint})", key="data.fold")
    cache_dir = data.get("cache_dir")
    imgs = load_images(ddir / "raw", int(data.get("image_size", 32)), bool(data.get("grayscale", False)),
                       cache_dir=resolve_path(cache_dir) if cache_dir else None,
                       use_cache=bool(data.get("cache", True)))

    def take(name: str, required: bool = True) -> tuple["torch.Tensor", "torch.Tensor"]:
        f = sdir / name
        if not f.is_file():
            if required:
                raise ConfigError(f"split file {f} is missing", key="data.data_dir")
            rel: list[str] = []
        else:
            rel = splitmod.read_list(f)
        missing = [p for p in rel if p not in imgs.index]
        if missing:
            raise ConfigError(f"{f} names {len(missing)} file(s) not under {ddir / 'raw'}, e.g. {missing[0]!r}; "
                              "re-create the splits (raysweep split --force)", key="data.data_dir")
        idx = np.array([imgs.index[p] for p in rel], dtype=np.int64)
        return torch.from_numpy(imgs.images[idx]), torch.from_numpy(imgs.labels[idx])

    train_x, train_y = take(splitmod.fold_file(fold, "train"))
    val_x, val_y = take(splitmod.fold_file(fold, "val"))
    test_x, test_y = take(splitmod.TEST_FILE, required=False)
    if len(train_x) == 0:
        raise ConfigError(f"{train_file} is empty", key="data.data_dir")
    flat = train_x.transpose(0, 1).reshape(train_x.shape[1], -1).double() / 255.0
    mean = flat.mean(dim=1).float()
    std = flat.std(dim=1).clamp_min(1e-3).float()
    return FoldData(train_x, train_y, val_x, val_y, test_x, test_y, imgs.classes, mean, std)


def batches(x: "torch.Tensor", y: "torch.Tensor", batch_size: int, *, mean: "torch.Tensor",
            std: "torch.Tensor", device: "torch.device", shuffle: bool = False, flip: bool = False,
            generator: "torch.Generator | None" = None) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
    """Normalised float batches from uint8 tensors held in memory (no per-batch decoding)."""
    import torch

    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    m = mean.view(1, -1, 1, 1).to(device)
    s = std.view(1, -1, 1, 1).to(device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        if flip:
            mask = torch.rand(len(idx), generator=generator) < 0.5
            if bool(mask.any()):
                xb[mask] = xb[mask].flip(-1)
        xb = xb.to(device, non_blocking=True).float().div_(255.0).sub_(m).div_(s)
        yield xb, y[idx].to(device, non_blocking=True)
