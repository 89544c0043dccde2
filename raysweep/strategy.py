"""Sampler and pruner specs -> Optuna samplers/pruners and Ray schedulers.

Each builder is found by name in a table, so adding a sampler is one entry.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from raysweep.config import Config, SamplerConfig
from raysweep.space import grid, grid_size

if TYPE_CHECKING:  # pragma: no cover
    import optuna


def _tpe(s: SamplerConfig, cfg: Config, seed: int | None) -> "optuna.samplers.BaseSampler":
    import optuna

    return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, seed=seed,
                                      constant_liar=s.constant_liar, multivariate=s.multivariate)


def _random(s: SamplerConfig, cfg: Config, seed: int | None) -> "optuna.samplers.BaseSampler":
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(s: SamplerConfig, cfg: Config, seed: int | None) -> "optuna.samplers.BaseSampler":
    import optuna

    return optuna.samplers.CmaEsSampler(n_startup_trials=s.n_startup_trials, seed=seed,
                                        warn_independent_sampling=False)


def _grid(s: SamplerConfig, cfg: Config, seed: int | None) -> "optuna.samplers.BaseSampler":
    import optuna

    class SweepGridSampler(optuna.samplers.GridSampler):
        """GridSampler that leaves stopping to the sweep.

        Optuna's calls ``study.stop()`` once the grid is used up, which only
        works inside ``study.optimize``; the sweep caps ``n_trials`` at the
        grid's size instead (see :func:`trial_budget`).
        """

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return SweepGridSampler(grid(cfg.search.space), seed=seed)


SAMPLER_BUILDERS: dict[str, Callable[[SamplerConfig, Config, int | None], Any]] = {
    "TPESampler": _tpe,
    "RandomSampler": _random,
    "CmaEsSampler": _cmaes,
    "GridSampler": _grid,
}


def trial_budget(cfg: Config, n_trials: int) -> int:
    """``n_trials``, capped at the grid's size for GridSampler (plus a baseline trial)."""
    if cfg.search.sampler.type == "GridSampler":
        return min(n_trials, grid_size(cfg.search.space) + (1 if cfg.search.include_baseline else 0))
    return n_trials


def startup_trials(cfg: Config) -> int:
    """How many trials run before the model-based sampler takes over (0 if none)."""
    if cfg.search.sampler.type in ("TPESampler", "CmaEsSampler"):
        return cfg.search.sampler.n_startup_trials
    return 0


def build_sampler(cfg: Config, *, reseed: int = 0) -> "optuna.samplers.BaseSampler":
    """The study's sampler; ``reseed`` shifts the seed on resume so no set repeats."""
    s = cfg.search.sampler
    seed = None if s.seed is None else s.seed + reseed
    return SAMPLER_BUILDERS[s.type](s, cfg, seed)


def build_pruner(cfg: Config) -> "optuna.pruners.BasePruner":
    """The Optuna pruner (MedianPruner) or NopPruner; ASHA prunes in Ray's scheduler."""
    import optuna

    p = cfg.search.pruner
    if p.type == "MedianPruner":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials,
                                           n_warmup_steps=p.n_warmup_steps,
                                           interval_steps=p.interval_steps)
    return optuna.pruners.NopPruner()


def build_asha(cfg: Config) -> Any:
    """Ray's ASHAScheduler with ``max_t = training.num_epochs`` (None unless pruner is ASHA)."""
    if cfg.search.pruner.type != "ASHA":
        return None
    from ray.tune.schedulers import ASHAScheduler

    p = cfg.search.pruner
    mode = "max" if cfg.search.direction == "maximize" else "min"
    return ASHAScheduler(time_attr="training_iteration", metric=cfg.search.metric, mode=mode,
                         max_t=max(cfg.num_epochs, p.grace_period), grace_period=p.grace_period,
                         reduction_factor=p.reduction_factor)
