"""Config loading: every bad input is one line naming file and key, exit 2, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from raysweep.cli import cli
from raysweep.config import load_config, mask_url, masked_dict
from raysweep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "seed": 1,
    "training": {"entrypoint": "raysweep.examples.quadratic:train", "num_epochs": 2},
    "optimizer": {"lr": 0.01, "momentum": 0.9},
    "search": {
        "n_trials": 2, "metric": "score",
        "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1.0}},
    },
}


def _write(tmp_path: Path, data, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _with(path: str, value):
    import copy

    data = copy.deepcopy(BASE)
    node = data
    keys = path.split("/")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


BAD = [
    ("not a mapping", "- a\n- b\n", "top level must be a mapping"),
    ("broken yaml", "search: [unclosed\n", "invalid YAML"),
    ("unknown type", _with("search/search_space/optimizer.lr", {"type": "gaussian", "low": 0, "high": 1}),
     "search.search_space.optimizer.lr.type"),
    ("low >= high", _with("search/search_space/optimizer.lr", {"type": "uniform", "low": 1, "high": 1}),
     "search.search_space.optimizer.lr.low"),
    ("loguniform low 0", _with("search/search_space/optimizer.lr", {"type": "loguniform", "low": 0, "high": 1}),
     "search.search_space.optimizer.lr.low: must be > 0"),
    ("int log low 0", _with("search/search_space/optimizer.lr", {"type": "int", "low": 0, "high": 4, "log": True}),
     "search.search_space.optimizer.lr.low"),
    ("empty choices", _with("search/search_space/optimizer.lr", {"type": "categorical", "choices": []}),
     "search.search_space.optimizer.lr.choices"),
    ("typo in space key", _with("search/search_space", {"optimizer.lrr": {"type": "uniform", "low": 0, "high": 1}}),
     "did you mean 'optimizer.lr'"),
    ("n_trials 0", _with("search/n_trials", 0), "search.n_trials"),
    ("unknown sampler", _with("search/sampler", {"type": "TPE"}), "search.sampler.type"),
    ("unknown pruner", _with("search/pruner", {"type": "Hyperband"}), "search.pruner.type"),
    ("unknown search key", _with("search/n_trails", 3), "did you mean 'n_trials'"),
    ("unknown ray key", _with("ray/adress", "auto"), "ray.adress"),
    ("bad entrypoint", _with("training/entrypoint", "no_such_module_xyz:train"), "training.entrypoint"),
    ("entrypoint fn missing", _with("training/entrypoint", "raysweep.examples.quadratic:nope"),
     "training.entrypoint"),
    ("negative cpu", _with("ray/resources_per_trial", {"cpu": -1}), "ray.resources_per_trial.cpu"),
]


@pytest.mark.parametrize("label,data,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(in_tmp, label, data, needle):
    path = _write(in_tmp, data)
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert len(out.splitlines()) == 1, out
    assert "Traceback" not in out
    assert str(path) in out and needle in out, out
    assert sorted(p.name for p in in_tmp.iterdir()) == ["c.yaml"]


def test_unknown_key_with_builtin_trainer_suggests(tmp_path):
    p = _write(tmp_path, {"optimizer": {"lrate": 0.1}, "search": {
        "search_space": {"optimizer.lr": {"type": "uniform", "low": 0.01, "high": 0.1}}}})
    with pytest.raises(ConfigError, match=r"optimizer.lrate: unknown key 'lrate' \(did you mean 'lr'\?\)"):
        load_config(p)


def test_user_entrypoint_passes_unknown_sections_through(tmp_path):
    data = _with("mystuff", {"anything": [1, 2]})
    data["optimizer"]["custom"] = "kept"
    cfg = load_config(_write(tmp_path, data))
    assert cfg.data["mystuff"] == {"anything": [1, 2]}
    assert cfg.data["optimizer"]["custom"] == "kept"
    # raysweep's own keys are still checked
    with pytest.raises(ConfigError, match="optimizer.lr"):
        load_config(_write(tmp_path, _with("optimizer/lr", "fast")))


def test_set_overrides_and_yaml_number_strings(tmp_path):
    data = _with("optimizer/lr", "1e-3")   # YAML 1.1 reads this as a string
    cfg = load_config(_write(tmp_path, data), ["training.num_epochs=7", "search.n_trials=5"])
    assert cfg.data["optimizer"]["lr"] == pytest.approx(1e-3)
    assert cfg.num_epochs == 7 and cfg.search.n_trials == 5
    with pytest.raises(ConfigError, match="key=value"):
        load_config(_write(tmp_path, BASE), ["oops"])


def test_defaults_and_study_name(tmp_path):
    cfg = load_config(_write(tmp_path, BASE, "my_exp.yaml"))
    assert cfg.search.study_name == "my_exp_optimization"
    assert cfg.search.sampler.type == "TPESampler" and cfg.search.sampler.seed == 1
    assert cfg.search.pruner.type == "MedianPruner"
    assert cfg.ray.max_failures == 2 and cfg.ray.cpu == 1.0
    data = _with("data", {"dataset_name": "digits"})
    data["search"]["pruner"] = {"type": "asha", "grace_period": 2}
    cfg = load_config(_write(tmp_path, data))
    assert cfg.search.study_name == "digits_optimization"
    assert cfg.search.pruner.type == "ASHA" and cfg.search.pruner.grace_period == 2


def test_password_is_masked():
    url = "postgresql://alice:s3cret@db.example:5432/studies"
    assert mask_url(url) == "postgresql://alice:***@db.example:5432/studies"
    assert "s3cret" not in str(masked_dict({"search": {"storage": url}}))


def test_every_example_config_loads():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)
