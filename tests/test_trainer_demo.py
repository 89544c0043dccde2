"""The digits demo data and its config."""
from __future__ import annotations

from raysweep.config import load_config
from raysweep.trainers.demo import prepare_demo
from raysweep.trainers.split import existing_folds, list_images


def test_prepare_demo_writes_images_splits_and_config(in_tmp):
    p = prepare_demo()
    assert p.n_images == 1797 and p.wrote_images and p.wrote_splits and p.wrote_config
    raw = in_tmp / "data" / "digits" / "raw"
    assert len(list_images(raw)) == 1797 and sorted(d.name for d in raw.iterdir()) == [str(i) for i in range(10)]
    assert existing_folds(in_tmp / "data" / "digits" / "splits") == 5
    cfg = load_config(in_tmp / "configs" / "digits_config.yaml")
    assert cfg.search.study_name == "digits_optimization" and cfg.search.n_trials == 20
    assert cfg.search.pruner.type == "MedianPruner"
    assert cfg.num_epochs <= 10
    again = prepare_demo()
    assert not (again.wrote_images or again.wrote_splits or again.wrote_config)
