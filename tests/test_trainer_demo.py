"""The digits demo data and its config."""
from __future__ import annotations

from pathlib import Path

from raysweep.config import load_config
from raysweep.trainers.demo import demo_config_text, prepare_demo
from raysweep.trainers.split import existing_folds, list_images

ROOT = Path(__file__).resolve().parents[1]


def test_prepare_demo_writes_images_splits_and_config(in_tmp):
    p = prepare_demo()
    assert p.n_images == 1797 and p.wrote_images and p.wrote_splits and p.wrote_config
    raw = in_tmp / "data" / "digits" / "raw"
    assert len(list_images(raw)) == 1797 and sorted(d.name for d in raw.iterdir()) == [str(i) for i in range(10)]
    assert existing_folds(in_tmp / "data" / "digits" / "splits") == 5
    assert p.config_path == Path("configs/digits_demo.yaml")
    cfg = load_config(in_tmp / "configs" / "digits_demo.yaml")
    # not digits_config.yaml / digits_optimization: `raysweep init data/digits --optuna` owns those
    assert not (in_tmp / "configs" / "digits_config.yaml").exists()
    assert cfg.search.study_name == "digits_demo" and cfg.search.n_trials == 20
    assert cfg.search.pruner.type == "MedianPruner"
    assert cfg.num_epochs <= 10
    again = prepare_demo()
    assert not (again.wrote_images or again.wrote_splits or again.wrote_config)


def test_the_shipped_demo_config_is_what_the_demo_writes():
    assert (ROOT / "configs" / "digits_demo.yaml").read_text() == demo_config_text()
