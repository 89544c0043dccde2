"""Find a study by name and read its trials, finished or still running.

A sweep leaves a study directory ``<studies_dir>/<study_name>/`` (see
:mod:`raysweep.constants`): ``sweep.json`` says how it was started and where its
Optuna storage is; ``trials.parquet`` and ``curves.parquet`` appear when it ends;
``curves.jsonl`` grows while it runs. Readers here take whichever is current:

* a finished sweep: ``trials.parquet`` (pyarrow only, no Optuna import);
* a running sweep, or one whose ``trials.parquet`` is missing: the Optuna storage
  named in ``sweep.json`` (a masked password is taken from ``RAYSWEEP_STORAGE``
  or an explicit ``storage`` argument).

Everything returns plain :class:`TrialRecord` objects, so status tables, plots
and reports do not care where the trials came from. optuna, pyarrow and pandas
are imported inside functions only.

Example::

    info = find_study("digits_optimization")          # StudyError if unknown
    trials = load_trials(info)                        # list[TrialRecord]
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from raysweep import constants
from raysweep.errors import StudyError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

#: env var holding the real storage URL when sweep.json has it masked (``***``).
ENV_STORAGE: str = getattr(constants, "ENV_STORAGE", "RAYSWEEP_STORAGE")

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "INTERRUPTED", "RUNNING", "WAITING")


@dataclass(frozen=True)
class StudyInfo:
    """What ``sweep.json`` says about a study, plus where its directory is."""

    name: str
    path: Path
    storage: str | None = None          # as written (a password masked as ***)
    metric: str = "value"
    direction: str = "maximize"
    state: str = "unknown"              # running | finished | interrupted | unknown
    search_space: tuple[str, ...] = ()
    config_path: str | None = None
    started: str | None = None
    n_trials: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def plots_dir(self) -> Path:
        return self.path / constants.PLOTS_DIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def trials_file(self) -> Path:
        return self.path / constants.TRIALS_FILE


@dataclass
class TrialRecord:
    """One trial, whatever it was read from (trials.parquet or the Optuna storage).

    ``intermediate`` maps 0-based epoch -> the metric, when known.
    ``seconds`` of a running trial is the time it has run so far.
    """

    number: int
    state: str
    value: float | None = None
    final_metric: float | None = None
    best_metric: float | None = None
    epochs: int | None = None
    seconds: float | None = None
    start_time: _dt.datetime | None = None
    end_time: _dt.datetime | None = None
    node: str | None = None
    worker: str | None = None
    ray_trial_id: str | None = None
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    baseline: bool = False
    interrupted: bool = False

    @property
    def display_state(self) -> str:
        """The state to show: ``INTERRUPTED`` for FAIL trials a resume marked as such."""
        return "INTERRUPTED" if self.interrupted and self.state == "FAIL" else self.state

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (the shape :func:`raysweep.tb_hparams.write_hparams` takes)."""
        return {
            "number": self.number, "state": self.state, "value": self.value,
            "final_metric": self.final_metric, "best_metric": self.best_metric,
            "epochs": self.epochs, "seconds": self.seconds, "node": self.node,
            "worker": self.worker, "params": dict(self.params),
        }


# ---------------------------------------------------------------------------
# Finding studies
# ---------------------------------------------------------------------------


def list_studies(studies_dir: str | Path = constants.DEFAULT_STUDIES_DIR) -> list[str]:
    """Names of the studies under ``studies_dir`` (dirs with sweep.json or study.db), sorted."""
    root = Path(studies_dir)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and ((p / constants.SWEEP_FILE).is_file() or (p / constants.STUDY_DB_FILE).is_file())
    )


def _unknown_study_message(name: str, studies_dir: Path) -> str:
    existing = list_studies(studies_dir)
    if existing:
        shown = ", ".join(existing[:20]) + (f" (and {len(existing) - 20} more)" if len(existing) > 20 else "")
        return f"no study named {name!r} in {studies_dir}; existing studies: {shown}"
    return (f"no study named {name!r} in {studies_dir}: there are no studies there yet "
            f"(start one with `raysweep run`, or pass --studies-dir)")


def find_study(name: str, studies_dir: str | Path = constants.DEFAULT_STUDIES_DIR) -> StudyInfo:
    """Open the study directory ``<studies_dir>/<name>`` and read its ``sweep.json``.

    Raises :class:`~raysweep.errors.StudyError` (exit 2) naming the studies that
    do exist when there is no such study.
    """
    root = Path(studies_dir)
    if not name or "/" in name or name in (".", ".."):
        raise StudyError(f"invalid study name {name!r}")
    path = root / name
    sweep_file = path / constants.SWEEP_FILE
    if not sweep_file.is_file() and not (path / constants.STUDY_DB_FILE).is_file():
        raise StudyError(_unknown_study_message(name, root))
    data: dict[str, Any] = {}
    if sweep_file.is_file():
        try:
            data = json.loads(sweep_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StudyError(f"{sweep_file}: cannot read it ({exc})") from None
        if not isinstance(data, dict):
            raise StudyError(f"{sweep_file}: expected a JSON object")
    n_trials = data.get("n_trials")
    return StudyInfo(
        name=str(data.get("study_name") or name),
        path=path,
        storage=data.get("storage"),
        metric=str(data.get("metric") or "value"),
        direction=str(data.get("direction") or "maximize"),
        state=str(data.get("state") or "unknown"),
        search_space=tuple(str(p) for p in data.get("search_space") or ()),
        config_path=data.get("config_path"),
        started=data.get("started"),
        n_trials=int(n_trials) if isinstance(n_trials, (int, float)) else None,
    )


def resolve_storage(info: StudyInfo, storage: str | None = None) -> str:
    """The real Optuna storage URL of a study.

    Order: ``storage`` if given; the URL in ``sweep.json`` (a masked password is
    replaced by ``$RAYSWEEP_STORAGE``); the default ``study.db`` in the study
    directory. A SQLite URL whose file has moved falls back to ``study.db`` next
    to ``sweep.json``, so a copied study directory stays readable.
    """
    if storage:
        return storage
    local_db = info.path / constants.STUDY_DB_FILE
    url = info.storage
    if url and "***" in url:
        env = os.environ.get(ENV_STORAGE)
        if not env:
            raise StudyError(
                f"the storage URL of study {info.name!r} is masked ({url}); "
                f"pass --storage URL or set {ENV_STORAGE}")
        return env
    if url:
        if url.startswith("sqlite:///"):
            db = Path(url[len("sqlite:///"):])
            if not db.exists() and local_db.is_file():
                return f"sqlite:///{local_db.resolve()}"
        return url
    if local_db.is_file():
        return f"sqlite:///{local_db.resolve()}"
    raise StudyError(f"study {info.name!r} has no storage URL in {constants.SWEEP_FILE} "
                     f"and no {constants.STUDY_DB_FILE}; pass --storage URL")


def open_optuna_study(info: StudyInfo, storage: str | None = None) -> "optuna.Study":
    """Load the live Optuna study (imports optuna). StudyError if unreachable or missing."""
    import optuna

    from raysweep.storage import db_url

    url = resolve_storage(info, storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=info.name, storage=db_url(url))
    except KeyError:
        names = _storage_study_names(url)
        hint = f"; studies in that storage: {', '.join(names)}" if names else ""
        from raysweep.config import mask_url
        raise StudyError(f"study {info.name!r} is not in storage {mask_url(url)}{hint}") from None
    except Exception as exc:  # storage drivers raise many types: report one line
        from raysweep.config import mask_url
        raise StudyError(f"cannot open the storage of study {info.name!r} "
                         f"({mask_url(url)}): {type(exc).__name__}: {mask_url(str(exc))}") from None


def _storage_study_names(url: str) -> list[str]:
    import optuna

    from raysweep.storage import db_url

    try:
        return sorted(s.study_name for s in optuna.get_all_study_summaries(storage=db_url(url)))
    except Exception:  # only a hint for an error message
        return []


# ---------------------------------------------------------------------------
# Reading trials
# ---------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None if x is None else float(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _int(x: Any) -> int | None:
    f = _num(x)
    return None if f is None else int(f)


def _str(x: Any) -> str | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return str(x)


def _utc(x: Any, naive_is_utc: bool = False) -> _dt.datetime | None:
    if x is None:
        return None
    if isinstance(x, str):
        try:
            x = _dt.datetime.fromisoformat(x)
        except ValueError:
            return None
    if hasattr(x, "to_pydatetime"):
        x = x.to_pydatetime()
    if not isinstance(x, _dt.datetime):
        return None
    if x.tzinfo is None:
        # trials.parquet holds UTC; Optuna stores naive local times (datetime.now()).
        x = x.replace(tzinfo=_dt.timezone.utc) if naive_is_utc else x.astimezone()
    return x.astimezone(_dt.timezone.utc)


def _plain(x: Any) -> Any:
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def read_trials_parquet(path: str | Path) -> list[TrialRecord]:
    """Read ``trials.parquet`` (columns :data:`constants.TRIAL_COLUMNS` + ``param.*``)."""
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(str(path)).read().to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError variants
        raise StudyError(f"{path}: cannot read it ({exc})") from None
    out = []
    for row in rows:
        params = {k[len(constants.PARAM_PREFIX):]: _plain(v) for k, v in row.items()
                  if k.startswith(constants.PARAM_PREFIX) and _plain(v) is not None}
        out.append(TrialRecord(
            number=int(row["number"]),
            state=str(row.get("state") or "COMPLETE"),
            value=_num(row.get("value")),
            final_metric=_num(row.get("final_metric")),
            best_metric=_num(row.get("best_metric")),
            epochs=_int(row.get("epochs")),
            seconds=_num(row.get("seconds")),
            start_time=_utc(row.get("start_time"), naive_is_utc=True),
            end_time=_utc(row.get("end_time"), naive_is_utc=True),
            node=_str(row.get("node")),
            worker=_str(row.get("worker")),
            ray_trial_id=_str(row.get("ray_trial_id")),
            error=_str(row.get("error")),
            params=params,
        ))
    return sorted(out, key=lambda t: t.number)


def records_from_optuna(study: "optuna.Study", direction: str | None = None,
                        now: _dt.datetime | None = None) -> list[TrialRecord]:
    """Turn an Optuna study's trials into :class:`TrialRecord` s (raysweep user attrs read)."""
    direction = direction or ("minimize" if study.direction.name == "MINIMIZE" else "maximize")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    out = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        inter = {int(k): float(v) for k, v in sorted(t.intermediate_values.items())
                 if v is not None and not math.isnan(v)}
        values = list(inter.values())
        best = _num(ua.get(constants.ATTR_BEST))
        if best is None and values:
            best = max(values) if direction == "maximize" else min(values)
        final = _num(ua.get(constants.ATTR_FINAL))
        if final is None and values:
            final = values[-1]
        start = _utc(t.datetime_start)
        end = _utc(t.datetime_complete)
        seconds = None
        if start is not None:
            seconds = ((end or now) - start).total_seconds()
        node = _str(ua.get(constants.ATTR_NODE))
        worker = _str(ua.get(constants.ATTR_WORKER))
        epochs = _int(ua.get(constants.ATTR_EPOCHS))
        out.append(TrialRecord(
            number=t.number,
            state=t.state.name,
            value=_num(t.value) if t.values is not None and len(t.values) == 1 else None,
            final_metric=final,
            best_metric=best,
            epochs=epochs if epochs is not None else (max(inter) + 1 if inter else None),
            seconds=seconds,
            start_time=start,
            end_time=end,
            node=node or (worker.rsplit(":", 1)[0] if worker else None),
            worker=worker,
            ray_trial_id=_str(ua.get(constants.ATTR_RAY_TRIAL_ID) or t.system_attrs.get(constants.ATTR_RAY_TRIAL_ID)),
            error=_str(ua.get(constants.ATTR_ERROR)),
            params={k: _plain(v) for k, v in t.params.items()},
            intermediate=inter,
            baseline=bool(ua.get(constants.ATTR_BASELINE)),
            interrupted=bool(ua.get(constants.ATTR_INTERRUPTED)),
        ))
    return out


def needs_optuna(info: StudyInfo) -> bool:
    """True when trials must come from the Optuna storage (running, or no trials.parquet)."""
    return info.running or not info.trials_file.is_file()


def load_trials(info: StudyInfo, storage: str | None = None) -> list[TrialRecord]:
    """The study's trials: ``trials.parquet`` when the sweep has ended, else the live storage.

    For the parquet source the per-epoch metric (``intermediate``) is filled in
    from ``curves.parquet``/``curves.jsonl`` when those exist.
    """
    if needs_optuna(info):
        study = open_optuna_study(info, storage)
        return records_from_optuna(study, info.direction)
    trials = read_trials_parquet(info.trials_file)
    attach_curves(trials, load_curves(info), info.metric)
    return trials


def attach_curves(trials: list[TrialRecord], curves: list[dict[str, Any]], metric: str) -> None:
    """Fill each trial's missing ``intermediate`` from curve rows holding ``metric``."""
    by_number: dict[int, dict[int, float]] = {}
    for row in curves:
        v = _num(row.get(metric))
        n, e = _int(row.get("number")), _int(row.get("epoch"))
        if v is None or n is None or e is None:
            continue
        by_number.setdefault(n, {})[e] = v
    for t in trials:
        if not t.intermediate and t.number in by_number:
            t.intermediate = dict(sorted(by_number[t.number].items()))


def read_curves_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read ``curves.jsonl`` (see :func:`raysweep.results.read_curves`)."""
    from raysweep.results import read_curves

    return read_curves(path)


def load_curves(info: StudyInfo) -> list[dict[str, Any]]:
    """Per-epoch rows: ``curves.parquet`` once the sweep ended, else ``curves.jsonl``; [] if neither."""
    pq_file = info.path / constants.CURVES_FILE
    if pq_file.is_file() and not info.running:
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(str(pq_file)).read().to_pylist()
        except Exception as exc:  # pyarrow error types vary
            raise StudyError(f"{pq_file}: cannot read it ({exc})") from None
        seen: dict[tuple[Any, Any], dict[str, Any]] = {}
        for r in rows:
            seen[(r.get("number"), r.get("epoch"))] = {k: _plain(v) for k, v in r.items()}
        return list(seen.values())
    return read_curves_jsonl(info.path / constants.CURVES_LOG_FILE)


# ---------------------------------------------------------------------------
# An in-memory Optuna study from records (when the storage is out of reach)
# ---------------------------------------------------------------------------


def _infer_distribution(values: list[Any]) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if all(isinstance(v, bool) for v in values) or not all(isinstance(v, (int, float)) for v in values):
        return CategoricalDistribution(sorted({v if isinstance(v, (bool, int, float, str)) else str(v)
                                               for v in values}, key=str))
    lo, hi = min(values), max(values)
    if all(isinstance(v, int) for v in values):
        return IntDistribution(int(lo), int(hi))
    log = lo > 0 and hi / lo >= 100
    return FloatDistribution(float(lo), float(hi), log=log)


def study_from_records(trials: Iterable[TrialRecord], direction: str) -> "optuna.Study":
    """An in-memory Optuna study rebuilt from records, so Optuna's plots can draw it.

    Distributions are inferred from the values seen (ints, floats - log scale when
    they span two decades or more - and categoricals). Running trials are left out.
    """
    import optuna

    trials = [t for t in trials if t.state in FINISHED_STATES]
    names = sorted({k for t in trials for k in t.params})
    dists = {k: _infer_distribution([t.params[k] for t in trials if k in t.params]) for k in names}
    study = optuna.create_study(direction=direction)
    for t in sorted(trials, key=lambda t: t.number):
        state = optuna.trial.TrialState[t.state]
        value = t.value if state == optuna.trial.TrialState.COMPLETE else None
        if state == optuna.trial.TrialState.COMPLETE and value is None:
            state, value = optuna.trial.TrialState.FAIL, None
        params = {k: v for k, v in t.params.items() if k in dists}
        frozen = optuna.trial.create_trial(
            state=state, value=value, params=params,
            distributions={k: dists[k] for k in params},
            intermediate_values=dict(t.intermediate),
            user_attrs={constants.ATTR_NODE: t.node or "", constants.ATTR_WORKER: t.worker or ""},
        )
        frozen.datetime_start = t.start_time
        frozen.datetime_complete = t.end_time
        study.add_trial(frozen)
    return study
