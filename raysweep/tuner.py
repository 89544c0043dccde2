"""Builds and runs the Ray Tune sweep; turns what it did into raysweep's results.

``run_sweep(config)`` is the whole of ``raysweep run``: pre-flight checks
(before Ray starts, so a typo costs a second), the Optuna study, Ray, the
Tuner (fresh or restored), and the outputs in the study directory.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from raysweep import constants, storage
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
    """``ray.storage_path`` for Ray: an absolute path, or a bucket URI with its endpoint (no keys)."""
    return storage.ray_storage_path(cfg)


def experiment_path(cfg: Config) -> str:
    """Ray's experiment directory, ``<storage_path>/<study_name>``."""
    return storage.experiment_path(cfg)


#: connection attempts when opening a database study storage, and the first wait (doubles)
DB_RETRIES = 5
DB_RETRY_WAIT_S = 0.5


def _is_server_db(url: str) -> bool:
    return url.startswith(("postgresql", "mysql"))


def open_storage(url: str, *, config_path: str | None = None) -> Any:
    """An Optuna storage for ``url``; unreachable databases are StudyErrors.

    A database server (PostgreSQL, MySQL) gets ``pool_pre_ping`` (a dropped
    connection is replaced before use), ``pool_recycle`` and a few attempts with
    backoff before giving up; the password is masked in every message.
    """
    import optuna

    shown, url = url, storage.db_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif _is_server_db(url):
        kwargs["engine_kwargs"] = {"pool_pre_ping": True, "pool_recycle": 300}
        if url.startswith("postgresql"):
            kwargs["engine_kwargs"]["connect_args"] = {"connect_timeout": 10}
    attempts = DB_RETRIES if _is_server_db(url) else 1
    for attempt in range(attempts):
        try:
            if url.startswith(("sqlite", "postgresql", "mysql")):
                return optuna.storages.RDBStorage(url, **kwargs)
            return optuna.storages.get_storage(url)
        except Exception as exc:  # sqlalchemy/driver errors: one line, password masked
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if attempt + 1 < attempts and _transient(exc):
                wait = DB_RETRY_WAIT_S * 2 ** attempt
                log.warning("cannot reach %s (%s); retrying in %.1f s", mask_url(shown), mask_url(reason), wait)
                time.sleep(wait)
                continue
            raise StudyError(f"{config_path + ': ' if config_path else ''}search.storage: cannot open "
                             f"{mask_url(shown)}: {mask_url(reason)}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _transient(exc: BaseException) -> bool:
    """A connection problem worth another try (not a bad URL, password or driver)."""
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError
    except ImportError:  # pragma: no cover - optuna depends on sqlalchemy
        return False
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        text = str(exc).lower()
        return not any(s in text for s in ("password authentication failed", "does not exist",
                                           "no password supplied", "role "))
    return False


def with_db_retries(what: str, url: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, retried with backoff while a database server drops or refuses connections."""
    attempts = DB_RETRIES if _is_server_db(url) else 1
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not _transient(exc):
                raise
            wait = DB_RETRY_WAIT_S * 2 ** attempt
            log.warning("%s: lost the connection to %s; retrying in %.1f s", what, mask_url(url), wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def study_exists(storage: Any, name: str) -> bool:
    import optuna

    return name in optuna.study.get_all_study_names(storage)


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


def preflight(cfg: Config, *, resume: bool) -> None:
    """Everything that can fail on bad input, before anything is written."""
    load_entrypoint(cfg.entrypoint, config_path=cfg.path)
    storage.check_storage_path(cfg)
    sd = study_dir(cfg)
    url = storage_url(cfg)
    default_sqlite = not cfg.search.storage
    name = cfg.search.study_name
    bucket = storage.bucket_path(cfg)
    if bucket is not None:
        _check_bucket(cfg, sd, bucket, resume=resume, default_sqlite=default_sqlite)
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


def _check_bucket(cfg: Config, sd: Path, bucket_copy: str, *, resume: bool, default_sqlite: bool) -> None:
    """A bucket's experiment: refuse to start over it; on --resume, fetch the study files missing here."""
    import pyarrow.fs as pafs

    exp = experiment_path(cfg)
    where = f"{cfg.path}: ray.storage_path"
    try:
        fs, exp_fs_path = storage.filesystem(exp)
        bucket = exp_fs_path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StudyError(f"{where}: the bucket {bucket!r} does not exist at {mask_url(exp)}; "
                             f"create it first (raysweep does not create buckets)")
        in_bucket = fs.get_file_info(f"{exp_fs_path}/tuner.pkl").type == pafs.FileType.File
        if resume and in_bucket and not (sd / constants.STUDY_DB_FILE).exists():
            fetched = storage.download_study(bucket_copy, sd)
            if fetched:
                log.info("fetched %s from %s", ", ".join(fetched), mask_url(bucket_copy))
    except (OSError, ValueError) as exc:  # pyarrow: bad bucket, no credentials, unreachable endpoint
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StudyError(f"{where}: cannot use {mask_url(exp)}: {mask_url(reason)}") from None
    if in_bucket and not resume:
        raise StudyError(
            f"{where}: the experiment {mask_url(exp)} already exists; continue it with --resume "
            f"or start a new one with --study-name NAME")
    if resume and default_sqlite and not in_bucket and not (sd / constants.STUDY_DB_FILE).exists():
        raise StudyError(f"{where}: there is no experiment {mask_url(exp)} and no local "
                         f"{sd / constants.STUDY_DB_FILE} to resume; run without --resume to start it")


def _slots(cfg: Config, started_locally: bool) -> int:
    """Trials to run at once on the connected Ray; a UsageError when none could ever run.

    Per node (a trial's resources must fit on one node), plus what the
    cluster's autoscaler can add; see :mod:`raysweep.resources`.
    """
    from raysweep import resources

    cpu, gpu = cfg.ray.cpu, cfg.ray.gpu
    facts = resources.read_cluster(autoscaling=not started_locally, cpu=cpu, gpu=gpu)
    plan = resources.plan_slots(cpu, gpu, facts)
    if not plan.fits:
        need = f"cpu: {cpu:g}, gpu: {gpu:g}"
        if started_locally:
            res = facts.nodes[0] if facts.nodes else {}
            have = f"{res.get('CPU', 0.0):g} CPUs and {res.get('GPU', 0.0):g} GPUs"
            raise UsageError(f"{cfg.path}: ray.resources_per_trial: a trial needs {need} but this "
                             f"machine offers {have}; lower the request or pass --address of a cluster")
        scaling = ("its autoscaler cannot add a node that fits" if facts.autoscaler
                   else "it does not autoscale")
        raise UsageError(f"{cfg.path}: ray.resources_per_trial: a trial needs {need} on one node but no node "
                         f"of the cluster can fit it ({resources.describe(facts)}) and {scaling}; "
                         f"lower the request or add a node that fits")
    if plan.warning:
        log.warning("%s", plan.warning)
    return plan.slots


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
    # Trials run in the worker processes Ray starts with the instance: they inherit
    # this process's environment (and its sys.path and working directory), and
    # they import Ray Tune before any trial arrives (0.6 s per worker otherwise).
    # A job-wide runtime_env would make Ray start a fresh process per trial
    # actor instead (about 1.4 s each), so there is none.
    os.environ.setdefault("PL_DISABLE_FORK", "1")   # what Tune would put in each actor's runtime_env
    os.environ.setdefault(constants.ENV_RAY_PRELOAD, constants.WORKER_PRELOAD_MODULES)
    ray.init(include_dashboard=False, **kwargs)
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


#: what Ray Tune would copy from the driver's environment into every trial actor's runtime_env
_CREDENTIAL_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def _keep_credentials_out_of_ray() -> None:
    """Stop Tune from putting the driver's AWS keys into the trials' runtime_env.

    Ray's runtime-env agent logs every runtime_env it creates, so the secret key
    would land in clear in ``session_*/logs/runtime_env_agent.log`` on each node.
    Trials find credentials the way the driver does: a local Ray inherits the
    driver's environment; cluster nodes use their own (an instance role).
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # pragma: no cover - Tune moved it; nothing to undo then
        return
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, (set, frozenset)):
        class_cache.ENV_VARS_TO_PROPAGATE = set(propagated) - _CREDENTIAL_ENV


@contextlib.contextmanager
def _pooled_trial_workers(started_locally: bool) -> Any:
    """Let trial actors take Ray's pre-started workers on a local instance.

    Ray Tune gives every trial actor a runtime_env holding ``PL_DISABLE_FORK``;
    an actor whose runtime_env differs from the job's cannot use the worker
    processes Ray started with the instance and waits for a new one. The local
    instance already has the variable in its environment (:func:`_init_ray`).
    On a cluster Tune's default stays. Private Tune state: nothing is changed
    where it does not exist.
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # pragma: no cover
        yield
        return
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if not started_locally or not isinstance(defaults, dict) or os.environ.get("PL_DISABLE_FORK") is None:
        yield
        return
    saved = dict(defaults)
    defaults.clear()
    try:
        yield
    finally:
        defaults.update(saved)


@contextlib.contextmanager
def _cached_trainable_lookups() -> Any:
    """Memoise Tune's trainable-class registry lookups in the driver for one sweep.

    For every trial Tune checks twice and fetches once the trainable class from
    the GCS key-value store (a round trip each, and an unpickling of the
    class); the class does not change during a sweep. Private Tune state:
    nothing is cached where it does not exist.
    """
    try:
        from ray.tune import registry
    except ImportError:  # pragma: no cover
        yield
        return
    reg = getattr(registry, "_global_registry", None)
    category = getattr(registry, "TRAINABLE_CLASS", None)
    if reg is None or category is None or not hasattr(reg, "get") or not hasattr(reg, "contains"):
        yield
        return
    get, contains = reg.get, reg.contains
    found: dict[str, Any] = {}

    def cached_get(cat: str, key: str) -> Any:
        if cat != category:
            return get(cat, key)
        if key not in found:
            found[key] = get(cat, key)
        return found[key]

    def cached_contains(cat: str, key: str) -> bool:
        if cat == category and key in found:
            return True
        return contains(cat, key)

    reg.get, reg.contains = cached_get, cached_contains
    try:
        yield
    finally:
        reg.get, reg.contains = get, contains


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
    # Ray first: a cluster that cannot run the trials fails before a study exists.
    _quiet_ray(verbose)
    _keep_credentials_out_of_ray()
    started_locally = _init_ray(cfg, address, verbose)
    max_concurrent = cfg.ray.max_concurrent_trials or _slots(cfg, started_locally)
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max_concurrent)
    sd = study_dir(cfg)
    sd.mkdir(parents=True, exist_ok=True)
    url = storage_url(cfg)
    db = open_storage(url, config_path=cfg.path)
    from raysweep.strategy import build_pruner, build_sampler

    study = with_db_retries("opening the study", url, lambda: optuna.create_study(
        study_name=cfg.search.study_name, storage=db, load_if_exists=resume,
        direction=cfg.search.direction, sampler=build_sampler(cfg), pruner=build_pruner(cfg)))
    if resume:  # another seed stream, so a resumed study does not repeat its parameter sets
        study.sampler = build_sampler(cfg, reseed=len(study.get_trials(deepcopy=False)))
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

    controller = search.SweepController(cfg, study, n_trials=cfg.search.n_trials, max_concurrent=max_concurrent,
                                        timeout=cfg.search.timeout, curve_sink=curves.append)
    view = progress.LiveView(controller, echo=echo, verbose=verbose)
    search.activate(controller)
    progress.activate(view)

    from ray import tune

    metric, mode = cfg.search.metric, ("max" if cfg.search.direction == "maximize" else "min")
    base = dict(cfg.data)
    if isinstance(base.get("search"), dict) and base["search"].get("storage"):
        # trials never open the study; its password stays out of Ray (trial configs, logs)
        base["search"] = dict(base["search"], storage=mask_url(base["search"]["storage"]))
    data_dir = (base.get("data") or {}).get("data_dir")
    if cfg.entrypoint is None and data_dir and "://" not in str(data_dir):
        # trials may run in another working directory: hand them an absolute path
        base["data"] = dict(base["data"], data_dir=str(Path(data_dir).resolve()))
    trainable = tune.with_resources(make_trainable(base, cfg.entrypoint),
                                    {"cpu": cfg.ray.cpu, "gpu": cfg.ray.gpu})
    # Ray gets URIs only, never a filesystem object: one built with keys would be pickled,
    # keys in clear, into tuner.pkl. pyarrow reads credentials from the environment.
    exp_path = experiment_path(cfg)
    fs, fs_path = storage.filesystem(exp_path)
    bucket_uri = storage.bucket_path(cfg)
    bucket = storage.BucketSync(sd, bucket_uri) if bucket_uri else None
    storage.activate(bucket)
    t0 = time.time()
    try:
        if resume and tune.Tuner.can_restore(exp_path):
            _patch_generator_state(exp_path, fs, fs_path)
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search.StudySearcher(metric, mode),
                    scheduler=search.StudyScheduler(metric, mode),
                    num_samples=-1, reuse_actors=cfg.ray.reuse_actors,
                    trial_name_creator=search.trial_name, trial_dirname_creator=search.trial_name),
                run_config=tune.RunConfig(
                    name=cfg.search.study_name,
                    storage_path=ray_storage_path(cfg),
                    stop=search.SweepStopper(),
                    callbacks=[progress.ViewCallback(), storage.sync_callback()],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=max(cfg.ray.keep_checkpoints, 2)),
                    failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
                    verbose=1 if verbose else 0,
                    log_to_file=True,
                ),
            )
        view.begin()
        with _cached_trainable_lookups(), _pooled_trial_workers(started_locally):
            grid = tuner.fit()
    finally:
        controller.close()
        view.end()
        curves.close()
        search.activate(None)
        progress.activate(None)
        storage.activate(None)

    interrupted = controller.fatal is None and not controller.all_done()
    if controller.fatal is not None:
        results.write_sweep_info(sd, cfg, url, state="failed")
        if bucket is not None:
            bucket.sync(force=True)
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

