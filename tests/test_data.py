"""Image decoding, the per-node cache (one build under concurrent builders) and folds."""
from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

from raysweep.errors import ConfigError
from raysweep.trainers import data as dm
from raysweep.trainers.demo import write_synthetic
from raysweep.trainers.split import make_splits


@pytest.fixture
def dataset(tmp_path):
    raw = write_synthetic(tmp_path / "ds", classes=3, per_class=10, size=6)
    make_splits(raw, folds=2, test_fraction=0.2, seed=0)
    return raw.parent


def _config(ddir, **data):
    return {"data": {"data_dir": str(ddir), "image_size": 8, "grayscale": False, "cache": True,
                     "cache_dir": None, "fold": 0, **data}}


def test_decode_resizes_and_orders_channels(dataset):
    arr = dm.decode(dataset / "raw" / "c0" / "000.png", 8, grayscale=False)
    assert arr.shape == (3, 8, 8) and arr.dtype == np.uint8
    assert dm.decode(dataset / "raw" / "c0" / "000.png", 5, grayscale=True).shape == (1, 5, 5)


def test_cache_is_built_once_and_reused(dataset, tmp_path):
    cache = tmp_path / "cache"
    a = dm.load_images(dataset / "raw", 8, cache_dir=cache)
    b = dm.load_images(dataset / "raw", 8, cache_dir=cache)
    assert not a.from_cache and b.from_cache
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (30, 3, 8, 8)
    assert len(list(cache.glob("*.npy"))) == 1
    assert not list(cache.glob("*.tmp"))
    # another size or mode is another cache entry
    assert not dm.load_images(dataset / "raw", 4, cache_dir=cache).from_cache
    assert not dm.load_images(dataset / "raw", 8, True, cache_dir=cache).from_cache
    # a changed file (mtime) invalidates the cache
    f = dataset / "raw" / "c1" / "003.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    assert not dm.load_images(dataset / "raw", 8, cache_dir=cache).from_cache


def _build(args):
    raw, cache, start_at = args
    while time.time() < start_at:
        time.sleep(0.001)
    s = dm.load_images(raw, 16, cache_dir=cache)
    return s.from_cache, int(s.images.sum())


def test_cache_concurrent_builders_decode_once(dataset, tmp_path):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        start_at = time.time() + 1.5     # all four start together, after spawning
        out = pool.map(_build, [(dataset / "raw", cache, start_at)] * 4)
    assert sorted(f for f, _ in out) == [False, True, True, True]   # exactly one decoded
    assert len({s for _, s in out}) == 1
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob("*.tmp"))


def test_default_cache_dir_is_next_to_the_data(dataset):
    dm.load_images(dataset / "raw", 8)
    assert len(list((dataset / ".cache").glob("*.npy"))) == 1


def test_load_fold_tensors_and_normalisation(dataset):
    import torch

    fd = dm.load_fold(_config(dataset))
    assert fd.classes == ["c0", "c1", "c2"]
    assert fd.train_x.dtype == torch.uint8 and fd.train_x.shape[1:] == (3, 8, 8)
    assert len(fd.train_x) + len(fd.val_x) + len(fd.test_x) == 30
    assert len(fd.test_x) == 6
    xb, yb = next(dm.batches(fd.train_x, fd.train_y, 100, mean=fd.mean, std=fd.std, device=torch.device("cpu")))
    assert xb.dtype == torch.float32 and abs(float(xb.mean())) < 1e-4
    assert torch.allclose(xb.transpose(0, 1).reshape(3, -1).std(dim=1), torch.ones(3), atol=0.05)


def test_flip_augmentation_flips_some_images(dataset):
    import torch

    fd = dm.load_fold(_config(dataset))
    g = torch.Generator().manual_seed(0)
    kw = dict(mean=fd.mean, std=fd.std, device=torch.device("cpu"))
    plain, _ = next(dm.batches(fd.train_x, fd.train_y, 100, **kw))
    flipped, _ = next(dm.batches(fd.train_x, fd.train_y, 100, flip=True, generator=g, **kw))
    same = [torch.equal(a, b) for a, b in zip(plain, flipped)]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(plain, flipped)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and not all(mirrored)
    assert fd.train_x.sum() == dm.load_fold(_config(dataset)).train_x.sum()   # the stored data is untouched


@pytest.mark.parametrize("data,match", [
    ({"data_dir": "nowhere"}, "has no raw/ folder"),
    ({"data_dir": None, "dataset_name": None}, "set data.data_dir"),
    ({"fold": 7}, "has no fold 7"),
])
def test_bad_data_config(dataset, data, match):
    with pytest.raises(ConfigError, match=match):
        dm.load_fold(_config(dataset, **data))
