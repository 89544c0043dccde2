"""raysweep split: stratified, deterministic folds and a shared test split."""
from __future__ import annotations

import collections
import json

import pytest
from click.testing import CliRunner

from raysweep.cli import cli
from raysweep.errors import UsageError
from raysweep.trainers import split as sp
from raysweep.trainers.demo import write_synthetic


def _read_all(sdir, folds):
    return {name: sp.read_list(sdir / name)
            for name in [sp.TEST_FILE] + [sp.fold_file(k, p) for k in range(folds) for p in ("train", "val")]}


@pytest.fixture
def raw(tmp_path):
    return write_synthetic(tmp_path / "ds", classes=3, per_class=20, size=4)


def test_split_is_deterministic_for_a_seed(raw):
    sp.make_splits(raw, folds=4, test_fraction=0.2, seed=7)
    first = _read_all(raw.parent / "splits", 4)
    sp.make_splits(raw, folds=4, test_fraction=0.2, seed=7, force=True)
    assert _read_all(raw.parent / "splits", 4) == first
    sp.make_splits(raw, folds=4, test_fraction=0.2, seed=8, force=True)
    assert _read_all(raw.parent / "splits", 4) != first


def test_split_is_stratified_and_partitions_the_data(raw):
    r = sp.make_splits(raw, folds=4, test_fraction=0.2, seed=1)
    files = _read_all(r.splits_dir, 4)
    everything = set(sp.list_images(raw))
    test = set(files[sp.TEST_FILE])
    vals = [set(files[sp.fold_file(k, "val")]) for k in range(4)]
    assert collections.Counter(p.split("/")[0] for p in test) == {"c0": 4, "c1": 4, "c2": 4}
    for k in range(4):
        train = set(files[sp.fold_file(k, "train")])
        assert not train & vals[k] and not train & test and not vals[k] & test
        assert train | vals[k] | test == everything
        per_class = collections.Counter(p.split("/")[0] for p in vals[k])
        assert set(per_class.values()) == {4}          # 16 train/val images per class / 4 folds
    assert set().union(*vals) == everything - test        # each image is validated exactly once
    info = json.loads((r.splits_dir / sp.INFO_FILE).read_text())
    assert info == {"seed": 1, "folds": 4, "test_fraction": 0.2, "classes": ["c0", "c1", "c2"]}


def test_split_refuses_to_overwrite_without_force(raw):
    sp.make_splits(raw, folds=2)
    with pytest.raises(UsageError, match="--force"):
        sp.make_splits(raw, folds=2)


def test_split_too_few_images_per_class(tmp_path):
    raw = write_synthetic(tmp_path / "tiny", classes=2, per_class=3, size=4)
    with pytest.raises(UsageError, match="needs at least 5 per class"):
        sp.make_splits(raw, folds=5, test_fraction=0.0)


def test_split_cli(raw):
    runner = CliRunner()
    res = runner.invoke(cli, ["split", "--raw-data", str(raw), "--folds", "3", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "Wrote 3 folds" in res.output
    assert (raw.parent / "splits" / "fold_2_val.txt").is_file()
    res = runner.invoke(cli, ["split", "--raw-data", str(raw), "--folds", "3"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("raysweep: error:")
    assert "--force" in res.output
    res = runner.invoke(cli, ["split", "--raw-data", str(raw), "--folds", "3", "--force"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["split", "--raw-data", str(raw), "--folds", "1"])
    assert res.exit_code == 2
