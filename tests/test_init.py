"""raysweep init: inspect a data set and write a config that loads."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from raysweep.cli import cli
from raysweep.config import load_config
from raysweep.trainers.demo import write_synthetic
from raysweep.trainers.init_config import DEFAULT_SEARCH_SPACE, inspect_dataset


@pytest.fixture
def ds(in_tmp):
    write_synthetic(in_tmp / "data" / "shapes", classes=3, per_class=10, size=12, grayscale=True)
    return in_tmp / "data" / "shapes"


def _init(*args, input=None):
    return CliRunner().invoke(cli, ["init", *args], input=input)


def test_inspect_dataset(ds):
    info = inspect_dataset(ds)
    assert info.classes == ("c0", "c1", "c2") and info.counts == {"c0": 10, "c1": 10, "c2": 10}
    assert info.image_size == (12, 12) and info.grayscale and not info.has_splits
    assert "3 classes, 30 images (10 per class), 12x12 grayscale, no splits" in info.describe()
    assert inspect_dataset(ds / "raw").name == "shapes"


def test_init_yes_writes_a_loadable_config_and_creates_splits(ds, in_tmp):
    res = _init("data/shapes", "--yes")
    assert res.exit_code == 0, res.output
    out = in_tmp / "configs" / "shapes_config.yaml"
    assert "Wrote configs/shapes_config.yaml" in res.output
    assert (ds / "splits" / "fold_4_val.txt").is_file()          # --yes accepts the offer to split
    cfg = load_config(out, require_search=False)
    assert not cfg.has_search
    d = cfg.data
    assert d["data"]["data_dir"] == "data/shapes" and d["data"]["grayscale"] is True
    # sized for 12x12 grayscale images: their own size, a tiny model, no flips
    assert d["data"]["image_size"] == 12 and d["model"]["num_classes"] == 3
    assert d["model"]["name"] == "tiny_net" and d["data"]["augment"] is False
    assert d["training"]["num_epochs"] == 30 and d["training"]["batch_size"] == 32
    assert out.read_text().startswith("# raysweep config for shapes:")
    # running the same command again is fine: the file already says that
    res = _init("data/shapes", "--yes")
    assert res.exit_code == 0, res.output
    assert "configs/shapes_config.yaml is up to date" in res.output
    # a different config never overwrites silently, and --yes never prompts
    res = _init("data/shapes", "--optuna", "--yes")
    assert res.exit_code == 2 and "--force" in res.output
    assert "search" not in yaml.safe_load(out.read_text())
    res = _init("data/shapes", "--optuna", "--yes", "--force")
    assert res.exit_code == 0 and "Wrote configs/shapes_config.yaml" in res.output
    assert "search" in yaml.safe_load(out.read_text())


def test_init_yes_refusing_to_overwrite_writes_nothing(ds, in_tmp):
    (in_tmp / "configs").mkdir()
    (in_tmp / "configs" / "shapes_config.yaml").write_text("# mine\n")
    res = _init("data/shapes", "--optuna", "--yes")
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1] == (
        "raysweep: error: configs/shapes_config.yaml exists; pass --force to overwrite it")
    assert not (ds / "splits").exists()                            # no splits created either
    assert (in_tmp / "configs" / "shapes_config.yaml").read_text() == "# mine\n"


@pytest.mark.parametrize("size,gray,model,image_size,augment", [
    ((8, 8), True, "tiny_net", 8, False),          # the demo's digits
    ((4, 4), True, "tiny_net", 8, False),
    ((28, 28), True, "simple_cnn", 28, False),     # MNIST-like
    ((32, 32), False, "simple_cnn", 32, True),     # CIFAR-like
    ((16, 16), False, "tiny_net", 16, True),
    ((224, 180), False, "simple_cnn", 64, True),
])
def test_suggest_sizes_the_model_to_the_images(size, gray, model, image_size, augment):
    from pathlib import Path

    from raysweep.trainers.init_config import DatasetInfo, suggest

    info = DatasetInfo(name="x", data_dir=Path("data/x"), classes=("a", "b"), counts={"a": 900, "b": 900},
                       image_size=size, grayscale=gray, n_folds=5, has_test=True)
    s = suggest(info)
    assert (s["model"], s["image_size"], s["augment"]) == (model, image_size, augment)
    assert (s["batch_size"], s["num_epochs"], s["n_trials"]) == (32, 30, 50)


def test_init_optuna_has_the_seed_search_block(ds, in_tmp):
    res = _init("data/shapes", "--optuna", "--yes", "--output", "my.yaml")
    assert res.exit_code == 0, res.output
    cfg = load_config(in_tmp / "my.yaml")
    s = cfg.search
    assert s.study_name == "shapes_optimization"
    assert s.sampler.type == "TPESampler" and s.pruner.type == "MedianPruner"
    assert not s.cross_validation.enabled
    raw = yaml.safe_load((in_tmp / "my.yaml").read_text())
    assert raw["search"]["search_space"] == DEFAULT_SEARCH_SPACE
    spec = {p.name: p for p in s.space}
    assert spec["optimizer.lr"].type == "loguniform" and spec["optimizer.lr"].low == 1e-5
    assert spec["training.batch_size"].choices == (16, 32, 64)
    assert spec["scheduler.step_size"].type == "int" and (spec["scheduler.step_size"].low, spec["scheduler.step_size"].high) == (5, 15)


def test_init_prompts(ds, in_tmp):
    # splits? yes, 3 folds; model; image size; batch size; epochs; trials
    res = _init("data/shapes", "--optuna", input="y\n3\nmlp\n12\n8\n4\n7\n")
    assert res.exit_code == 0, res.output
    assert "Create stratified folds" in res.output and "Model" in res.output
    assert (ds / "splits" / "fold_2_val.txt").is_file() and not (ds / "splits" / "fold_3_val.txt").exists()
    cfg = load_config(in_tmp / "configs" / "shapes_config.yaml")
    d = cfg.data
    assert (d["model"]["name"], d["data"]["image_size"], d["training"]["batch_size"],
            d["training"]["num_epochs"]) == ("mlp", 12, 8, 4)
    assert cfg.search.n_trials == 7 and cfg.search.cross_validation.n_folds == 3
    # declining to overwrite is asked first and leaves the file alone
    before = (in_tmp / "configs" / "shapes_config.yaml").read_text()
    res = _init("data/shapes", input="n\n")
    assert res.exit_code == 2 and "not overwritten" in res.output
    assert "Overwrite?" in res.output and "Model" not in res.output
    assert (in_tmp / "configs" / "shapes_config.yaml").read_text() == before
    # accepting goes on to the questions and rewrites it
    res = _init("data/shapes", input="y\nsimple_cnn\n\n\n\n")
    assert res.exit_code == 0, res.output
    assert load_config(in_tmp / "configs" / "shapes_config.yaml", require_search=False).data["model"]["name"] == "simple_cnn"


def test_init_declining_splits(ds):
    res = _init("data/shapes", input="n\n\n\n\n\n")
    assert res.exit_code == 0, res.output
    assert "raysweep split --raw-data" in res.output and not (ds / "splits").exists()


def test_init_bad_dataset(in_tmp):
    (in_tmp / "empty").mkdir()
    res = _init("empty", "--yes")
    assert res.exit_code == 2 and "has no raw/ folder" in res.output
    assert _init("missing", "--yes").exit_code == 2
