"""Search-space translation: each type maps to the Optuna distribution it means."""
from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from raysweep.config import ParamSpec, validate
from raysweep.space import baseline_params, contains, grid, grid_size, to_distribution

TABLE = [
    ({"type": "uniform", "low": 0.8, "high": 0.99}, FloatDistribution(0.8, 0.99)),
    ({"type": "loguniform", "low": 1e-5, "high": 1e-1}, FloatDistribution(1e-5, 1e-1, log=True)),
    ({"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}, FloatDistribution(0.0, 0.5, step=0.1)),
    ({"type": "float", "low": 1e-3, "high": 1.0, "log": True}, FloatDistribution(1e-3, 1.0, log=True)),
    ({"type": "int", "low": 5, "high": 15}, IntDistribution(5, 15)),
    ({"type": "int", "low": 16, "high": 256, "log": True}, IntDistribution(16, 256, log=True)),
    ({"type": "int", "low": 0, "high": 10, "step": 2}, IntDistribution(0, 10, step=2)),
    ({"type": "categorical", "choices": [16, 32, 64]}, CategoricalDistribution([16, 32, 64])),
    ({"type": "categorical", "choices": ["sgd", "adam"]}, CategoricalDistribution(["sgd", "adam"])),
]


def _space(spec):
    cfg = validate({"training": {"entrypoint": "m:f"}, "x": {"p": 1},
                    "search": {"search_space": {"x.p": spec}}})
    return cfg.search.space[0]


@pytest.mark.parametrize("spec,expected", TABLE, ids=[f"{t[0]['type']}-{i}" for i, t in enumerate(TABLE)])
def test_translation_table(spec, expected):
    assert to_distribution(_space(spec)) == expected


def test_contains_and_baseline():
    lr = ParamSpec("optimizer.lr", "loguniform", 1e-5, 1e-1, log=True)
    bs = ParamSpec("training.batch_size", "categorical", choices=(16, 32, 64))
    step = ParamSpec("scheduler.step_size", "int", 5, 15, step=1)
    assert contains(lr, 0.01) and not contains(lr, 0.5)
    assert contains(bs, 32) and not contains(bs, 48)
    assert contains(step, 7) and not contains(step, 7.5)
    cfg = {"optimizer": {"lr": 0.01}, "training": {"batch_size": 32}, "scheduler": {"step_size": 10}}
    assert baseline_params(cfg, [lr, bs, step]) == (
        {"optimizer.lr": 0.01, "training.batch_size": 32, "scheduler.step_size": 10}, "")
    params, why = baseline_params({**cfg, "training": {"batch_size": 48}}, [lr, bs, step])
    assert params is None and "training.batch_size=48" in why


def test_grid():
    space = [ParamSpec("a", "int", 1, 5, step=2), ParamSpec("b", "categorical", choices=("x", "y"))]
    assert grid(space) == {"a": [1, 3, 5], "b": ["x", "y"]}
    assert grid_size(space) == 6
