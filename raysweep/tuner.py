"""Builds and runs the Ray Tune sweep; turns what it did into raysweep's results.

``run_sweep(config)`` is the whole of ``raysweep run``: pre-flight checks
(before Ray starts, so a typo costs a second), the Optuna study, Ray, the
Tuner (fresh or restored), and the outputs in the study directory.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from raysweep import constants
from raysweep.config import Config, mask_url
from raysweep.errors import StudyError, UsageError
from raysweep.space import baseline_params
from raysweep.trial import load_entrypoint, make_trainable

log = logging.getLogger("raysweep")

Echo = Callable[[str], None]


@dataclass
class SweepOutcome:
    """What ``run_sweep`` leaves behind, for the CLI to print."""

    study_name: str
    study_dir: Path
    storage: str                       # masked
    experiment_path: str
    counts: dict[str, int] = field(default_factory=dict)
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_config_path: Path | None = None
    interrupted: bool = False
    elapsed: float = 0.0
    repaired: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Paths and storage
# ---------------------------------------------------------------------------


def study_dir(cfg: Config) -> Path:
    return Path(cfg.search.output_dir).resolve() / cfg.search.study_name


def storage_url(cfg: Config) -> str:
    if cfg.search.storage:
        return cfg.search.storage
    return f"sqlite:///{study_dir(cfg) / constants.STUDY_DB_FILE}"


def ray_storage_path(cfg: Config) -> str:
    p = cfg.ray.storage_path
    if "://" in p:
        return p
    return str(Path(p).resolve())


def experiment_path(cfg: Config) -> str:
    base = ray_storage_path(cfg)
    if "://" in base:
        scheme, _, rest = base.partition("://")
        path, _, query = rest.partition("?")
        joined = f"{scheme}://{path.rstrip('/')}/{cfg.search.study_name}"
        return f"{joined}?{query}" if query else joined
    return str(Path(base) / cfg.search.study_name)


def open_storage(url: str, *, config_path: str | None = None) -> Any:
    """An Optuna storage for ``url``; unreachable databases are StudyErrors."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif url.startswith(("postgresql", "mysql")):
        kwargs["engine_kwargs"] = {"pool_pre_ping": True, "pool_recycle": 300}
    try:
        if url.startswith(("sqlite", "postgresql", "mysql")):
            return optuna.storages.RDBStorage(url, **kwargs)
        return optuna.storages.get_storage(url)
    except Exception as exc:  # sqlalchemy/driver errors: one line, password masked
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StudyError(f"{config_path + ': ' if config_path else ''}search.storage: cannot open "
                         f"{mask_url(url)}: {mask_url(reason)}") from None


def study_exists(storage: Any, name: str) -> bool:
    import optuna

    return name in optuna.study.get_all_study_names(storage)


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


def preflight(cfg: Config, *, resume: bool) -> None:
    """Everything that can fail on bad input, before anything is written."""
    load_entrypoint(cfg.entrypoint, config_path=cfg.path)
    sd = study_dir(cfg)
    url = storage_url(cfg)
    default_sqlite = not cfg.search.storage
    name = cfg.search.study_name
    if default_sqlite:
        exists = (sd / constants.STUDY_DB_FILE).exists() and study_exists(open_storage(url), name)
    else:
        exists = study_exists(open_storage(url, config_path=cfg.path), name)
    if exists and not resume:
        raise StudyError(
            f"{cfg.path}: search.study_name: a study named {name!r} already exists "
            f"({mask_url(url)}); continue it with --resume or start a new one with --study-name NAME")
    if resume and not exists:
        raise StudyError(f"{cfg.path}: search.study_name: there is no study {name!r} to resume "
                         f"in {mask_url(url)}; run without --resume to start it")


def _slots(cfg: Config, started_locally: bool) -> int:
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    slots = math.inf
    if cfg.ray.cpu > 0:
        slots = min(slots, math.floor(cpus / cfg.ray.cpu + 1e-9))
    if cfg.ray.gpu > 0:
        slots = min(slots, math.floor(gpus / cfg.ray.gpu + 1e-9))
    if slots == 0 or slots is math.inf:
        need = f"cpu: {cfg.ray.cpu:g}, gpu: {cfg.ray.gpu:g}"
        have = f"{cpus:g} CPUs and {gpus:g} GPUs"
        if started_locally:
            raise UsageError(f"{cfg.path}: ray.resources_per_trial: a trial needs {need} but this "
                             f"machine offers {have}; lower the request or pass --address of a cluster")
        log.warning("no node can fit a trial (%s, cluster has %s) yet; waiting for the autoscaler", need, have)
        return 1
    return int(slots)


def _init_ray(cfg: Config, address: str | None, verbose: bool) -> bool:
    """Connect to (or start) Ray. Returns True when a local instance was started."""
    import ray

    if ray.is_initialized():
        return False
    address = address or cfg.ray.address or os.environ.get(constants.ENV_RAY_ADDRESS) or None
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR,
                              "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
        return False
    pythonpath = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **kwargs)
    return True


def _quiet_ray(verbose: bool) -> None:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # raysweep checks the metric itself and says which keys the function did report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        for name in ("ray", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Trial failures are shown by the live view and kept in each trial's error.txt.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)


def _patch_generator_state(exp_path: str, fs: Any, fs_path: str) -> None:
    """Let a restored experiment ask for more trials (a larger --n-trials).

    Tune remembers that its search generator finished; the study decides that.
    """
    import pyarrow.fs as pafs
    from ray import cloudpickle

    selector = pafs.FileSelector(fs_path, recursive=False)
    for info in fs.get_file_info(selector):
        name = info.base_name
        if name.startswith("search_gen_state-") and info.type == pafs.FileType.File:  # a pickle
            with fs.open_input_file(info.path) as f:
                state = cloudpickle.loads(f.readall())
            state["finished"] = False
            state["total_samples"] = sys.maxsize
            with fs.open_output_stream(info.path) as f:
                f.write(cloudpickle.dumps(state))


def run_sweep(cfg: Config, *, resume: bool = False, address: str | None = None, verbose: bool = False,
              echo: Echo | None = None) -> SweepOutcome:
    """Run (or resume) the sweep a config describes; returns what it produced."""
    preflight(cfg, resume=resume)

    import optuna

    from raysweep import progress, results, search

    echo = echo or (lambda s: print(s, file=sys.stderr))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sd = study_dir(cfg)
    sd.mkdir(parents=True, exist_ok=True)
    url = storage_url(cfg)
    storage = open_storage(url, config_path=cfg.path)
    from raysweep.strategy import build_pruner, build_sampler

    n_existing = 0
    if resume:
        n_existing = len(optuna.load_study(study_name=cfg.search.study_name, storage=storage).trials)
    study = optuna.create_study(
        study_name=cfg.search.study_name, storage=storage, load_if_exists=resume,
        direction=cfg.search.direction, sampler=build_sampler(cfg, reseed=n_existing),
        pruner=build_pruner(cfg))
    if not resume:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([cfg.search.metric])
        if cfg.search.include_baseline:
            params, why = baseline_params(cfg.data, cfg.search.space)
            if params is None:
                echo(f"raysweep: warning: baseline trial skipped: {why}")
            else:
                study.enqueue_trial(params, user_attrs={constants.ATTR_BASELINE: True})

    results.write_sweep_info(sd, cfg, url, state="running")
    curves = results.CurveLog(sd / constants.CURVES_LOG_FILE)

    _quiet_ray(verbose)
    started_locally = _init_ray(cfg, address, verbose)
    max_concurrent = cfg.ray.max_concurrent_trials or _slots(cfg, started_locally)
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max_concurrent)

    controller = search.SweepController(cfg, study, n_trials=cfg.search.n_trials, max_concurrent=max_concurrent,
                                        timeout=cfg.search.timeout, curve_sink=curves.append)
    view = progress.LiveView(controller, echo=echo, verbose=verbose)
    search.activate(controller)
    progress.activate(view)

    from ray import tune

    metric, mode = cfg.search.metric, ("max" if cfg.search.direction == "maximize" else "min")
    base = dict(cfg.data)
    data_dir = (base.get("data") or {}).get("data_dir")
    if cfg.entrypoint is None and data_dir and "://" not in str(data_dir):
        # trials may run in another working directory: hand them an absolute path
        base["data"] = dict(base["data"], data_dir=str(Path(data_dir).resolve()))
    trainable = tune.with_resources(make_trainable(base, cfg.entrypoint),
                                    {"cpu": cfg.ray.cpu, "gpu": cfg.ray.gpu})
    exp_path = experiment_path(cfg)
    fs, fs_path = results.filesystem(exp_path, cfg)
    t0 = time.time()
    try:
        if resume and tune.Tuner.can_restore(exp_path, storage_filesystem=fs if cfg.ray.storage_endpoint else None):
            _patch_generator_state(exp_path, fs, fs_path)
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False,
                                       storage_filesystem=fs if cfg.ray.storage_endpoint else None)
        else:
            storage_path = ray_storage_path(cfg)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search.StudySearcher(metric, mode),
                    scheduler=search.StudyScheduler(metric, mode),
                    num_samples=-1, reuse_actors=cfg.ray.reuse_actors,
                    trial_name_creator=search.trial_name, trial_dirname_creator=search.trial_name),
                run_config=tune.RunConfig(
                    name=cfg.search.study_name,
                    storage_path=storage_path if not cfg.ray.storage_endpoint else fs_path.rsplit("/", 1)[0],
                    storage_filesystem=fs if cfg.ray.storage_endpoint else None,
                    stop=search.SweepStopper(),
                    callbacks=[progress.ViewCallback()],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=max(cfg.ray.keep_checkpoints, 2)),
                    failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
                    verbose=1 if verbose else 0,
                    log_to_file=True,
                ),
            )
        view.begin()
        grid = tuner.fit()
    finally:
        controller.close()
        view.end()
        curves.close()
        search.activate(None)
        progress.activate(None)

    interrupted = controller.fatal is None and not controller.all_done()
    if controller.fatal is not None:
        results.write_sweep_info(sd, cfg, url, state="failed")
        raise controller.fatal
    outcome = results.finish(cfg, study, grid, study_dir=sd, storage=url, experiment=exp_path,
                             interrupted=interrupted, fs=fs)
    outcome.elapsed = time.time() - t0
    return outcome


def with_overrides(cfg: Config, *, n_trials: int | None = None, timeout: float | None = None,
                   study_name: str | None = None) -> Config:
    """The config with CLI flags applied to its search section."""
    s = cfg.search
    if n_trials is not None:
        if n_trials < 1:
            raise UsageError(f"--n-trials must be >= 1, got {n_trials}")
        s = replace(s, n_trials=n_trials)
    if timeout is not None:
        if timeout <= 0:
            raise UsageError(f"--timeout must be > 0, got {timeout}")
        s = replace(s, timeout=timeout)
    if study_name is not None:
        s = replace(s, study_name=study_name)
    data = dict(cfg.data)
    data["search"] = dict(data["search"], n_trials=s.n_trials, timeout=s.timeout, study_name=s.study_name)
    return replace(cfg, search=s, data=data)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

