"""Search-space spec -> Optuna distributions; pure functions.

``search.search_space`` maps dotted config keys to ranges::

    optimizer.lr:        {type: loguniform, low: 1.0e-5, high: 1.0e-1}
    training.batch_size: {type: categorical, choices: [16, 32, 64]}
    optimizer.momentum:  {type: uniform, low: 0.8, high: 0.99}
    scheduler.step_size: {type: int, low: 5, high: 15}      # also log: true, step
    model.dropout:       {type: float, low: 0.0, high: 0.5, step: 0.1}
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from raysweep.config import ParamSpec, get_dotted

if TYPE_CHECKING:  # pragma: no cover
    from optuna.distributions import BaseDistribution


def to_distribution(p: ParamSpec) -> "BaseDistribution":
    """One ParamSpec -> the Optuna distribution with the same meaning."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "categorical":
        return CategoricalDistribution(list(p.choices))
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    if p.type == "loguniform":
        return FloatDistribution(float(p.low), float(p.high), log=True)
    if p.type == "uniform":
        return FloatDistribution(float(p.low), float(p.high))
    # "float": optional step or log
    return FloatDistribution(float(p.low), float(p.high), log=p.log,
                             step=None if p.step is None else float(p.step))


def to_distributions(space: Iterable[ParamSpec]) -> dict[str, "BaseDistribution"]:
    return {p.name: to_distribution(p) for p in space}


def contains(p: ParamSpec, value: Any) -> bool:
    """Whether ``value`` is a point of the parameter's range."""
    if p.type == "categorical":
        return any(value == c and type(value) is type(c) or _num_eq(value, c) for c in p.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    assert p.low is not None and p.high is not None
    if not (p.low <= value <= p.high):
        return False
    if p.type == "int" and value != int(value):
        return False
    if p.step is not None and not p.log:
        k = (value - p.low) / p.step
        return math.isclose(k, round(k), abs_tol=1e-9)
    return True


def _num_eq(a: Any, b: Any) -> bool:
    nums = (int, float)
    return (isinstance(a, nums) and isinstance(b, nums) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def baseline_params(config: Mapping[str, Any], space: Iterable[ParamSpec]) -> tuple[dict[str, Any] | None, str]:
    """The config's own values for the searched keys, if all lie inside the space.

    Returns ``(params, "")`` or ``(None, reason)`` naming the first key outside.
    """
    params: dict[str, Any] = {}
    for p in space:
        value = get_dotted(config, p.name, None)
        if value is None or not contains(p, value):
            return None, f"{p.name}={value!r} is outside the search space"
        if p.type == "int":
            value = int(value)
        elif p.type != "categorical":
            value = float(value)
        else:
            value = next(c for c in p.choices if c == value)
        params[p.name] = value
    return params, ""


def grid(space: Iterable[ParamSpec]) -> dict[str, list[Any]]:
    """Every point of each parameter, for GridSampler."""
    out: dict[str, list[Any]] = {}
    for p in space:
        if p.type == "categorical":
            out[p.name] = list(p.choices)
            continue
        assert p.low is not None and p.high is not None and p.step is not None
        n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
        values = [p.low + i * p.step for i in range(n)]
        out[p.name] = [int(v) for v in values] if p.type == "int" else [round(v, 12) for v in values]
    return out


def grid_size(space: Iterable[ParamSpec]) -> int:
    size = 1
    for values in grid(space).values():
        size *= len(values)
    return size
