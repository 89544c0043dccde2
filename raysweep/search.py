"""The Optuna study behind a Ray Tune sweep, with Optuna's semantics intact.

Ray's stock ``OptunaSearch`` loses the seed's guarantees under parallelism.
:class:`SweepController` owns the study in the driver and keeps them:

* exactly ``n_startup_trials`` trials are sampled before TPE takes over: a
  trial beyond them waits until the startup trials have finished;
* ``MedianPruner`` decides with Optuna's own pruner over the study (only
  completed trials count, ``n_warmup_steps`` honoured, ``direction`` honoured);
  ASHA decides with Ray's ``ASHAScheduler``;
* pruned trials are told PRUNED, failed ones FAIL, each with its last values;
* the study, not Tune's periodic snapshot, is the truth on resume: trials
  Tune restores that the study already finished are stopped at once, and
  trials the study holds RUNNING that no driver owns are marked FAIL
  (interrupted) and rerun with the same parameters.

Tune pickles its searcher, scheduler and stopper into the experiment
directory; the thin adapters here pickle to nothing and find the live
controller of this driver process at run time, so a restored experiment
always talks to the current study.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from raysweep import constants
from raysweep.config import Config
from raysweep.errors import ConfigError, RaysweepError
from raysweep.space import to_distributions
from raysweep.strategy import build_asha, startup_trials, trial_budget

if TYPE_CHECKING:  # pragma: no cover
    import optuna

log = logging.getLogger("raysweep")

try:  # Ray is imported lazily by the driver before this module is used.
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher
    from ray.tune.stopper import Stopper
except ImportError:  # pragma: no cover - ray is a dependency
    raise


@dataclass
class LiveTrial:
    """A trial the driver owns: its Optuna trial and what it has reported."""

    number: int
    tune_id: str
    trial: "optuna.trial.Trial"
    params: dict[str, Any]
    steps: set[int] = field(default_factory=set)
    last: float | None = None
    best: float | None = None
    epochs: int = 0
    pruned: bool = False
    error: str | None = None          # a failure raysweep decided (e.g. NaN metric)
    last_error: str | None = None     # the last error Tune saw (the trial may be retried)
    node: str | None = None
    worker: str | None = None
    started: float = field(default_factory=time.time)


CurveSink = Callable[[dict[str, Any]], None]


class SweepController:
    """Owns the study, decides what runs next and what gets pruned."""

    def __init__(self, cfg: Config, study: "optuna.Study", *, n_trials: int, max_concurrent: int,
                 timeout: float | None = None, curve_sink: CurveSink | None = None) -> None:
        """``study`` is the durable study; decisions use an in-memory mirror of it."""
        import optuna

        from raysweep.mirror import StudyMirror

        self._optuna = optuna
        self.cfg = cfg
        s = cfg.search.sampler
        # plain TPE: its asks can be computed ahead in a helper process (raysweep.presampler)
        self._presample_kwargs: dict[str, Any] | None = None
        self._fill: Any = None
        sampler = study.sampler
        if s.type == "TPESampler" and not s.multivariate:
            from raysweep.presampler import filled_sampler

            self._presample_kwargs = {"n_startup_trials": s.n_startup_trials, "constant_liar": s.constant_liar,
                                      "seed": None if s.seed is None else s.seed + 7919}
            sampler = self._fill = filled_sampler(study.sampler)
        self.presample_after = constants.PRESAMPLE_AFTER
        self.presampler: Any = None
        self.mirror = StudyMirror(study, sampler=sampler, pruner=study.pruner)
        self.study = self.mirror.memory
        self.metric = cfg.search.metric
        self.maximize = cfg.search.direction == "maximize"
        self.n_trials = trial_budget(cfg, n_trials)
        self.max_concurrent = max(1, max_concurrent)
        self.timeout = timeout
        self.deadline = None if timeout is None else time.time() + timeout
        self.n_startup = startup_trials(cfg)
        self.distributions = to_distributions(cfg.search.space)
        self.curve_sink = curve_sink
        self.asha = build_asha(cfg)
        self.median = cfg.search.pruner.type == "MedianPruner"
        self.fatal: RaysweepError | None = None
        self.live: dict[str, LiveTrial] = {}
        self.stop_requested = False
        self._reconciled = False
        self._unowned: set[int] = set()
        self._finished_ok = 0      # COMPLETE + PRUNED (what TPE counts for startup)
        self._finished = 0         # ... + FAIL (not interrupted): counts toward n_trials
        self.observers: list[Callable[[str, LiveTrial | None], None]] = []
        TS = optuna.trial.TrialState
        for t in study.get_trials(deepcopy=False):
            if t.state in (TS.COMPLETE, TS.PRUNED):
                self._finished_ok += 1
                self._finished += 1
            elif t.state == TS.FAIL and not t.user_attrs.get(constants.ATTR_INTERRUPTED):
                self._finished += 1
            elif t.state == TS.RUNNING:
                self._unowned.add(t.number)

    # -- counts ------------------------------------------------------------
    @property
    def n_finished(self) -> int:
        """Finished trials that count toward ``n_trials`` (interrupted ones do not)."""
        return self._finished

    @property
    def n_finished_ok(self) -> int:
        return self._finished_ok

    def _done_asking(self) -> bool:
        if self.fatal is not None or self.stop_requested:
            return True
        if self.deadline is not None and time.time() >= self.deadline:
            return True
        return self._finished + len(self.live) >= self.n_trials

    def all_done(self) -> bool:
        """True once nothing more will be asked and nothing owned is running."""
        return self._done_asking() and not self.live

    # -- resume --------------------------------------------------------------
    def claim(self, tune_id: str, config: dict[str, Any]) -> bool:
        """A trial Tune restored from its snapshot: continue it if the study agrees."""
        number = config.get(constants.TRIAL_NUMBER_KEY)
        if number is None or number not in self._unowned or tune_id in self.live:
            return False
        self._unowned.discard(number)
        frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state != self._optuna.trial.TrialState.RUNNING:
            return False
        rec = LiveTrial(number=number, tune_id=tune_id,
                        trial=self._optuna.trial.Trial(self.study, frozen._trial_id),
                        params=dict(config.get(constants.TRIAL_PARAMS_KEY, {})))
        for step, value in sorted(frozen.intermediate_values.items()):
            self._note_value(rec, step, value)
        self.live[tune_id] = rec
        return True

    def reconcile(self) -> list[int]:
        """Mark RUNNING trials nobody continues as FAIL (interrupted) and requeue them.

        Called once, after Tune re-added its restored trials. Returns the numbers.
        """
        if self._reconciled:
            return []
        self._reconciled = True
        TS = self._optuna.trial.TrialState
        repaired = sorted(self._unowned)
        trials = self.study.get_trials(deepcopy=False)
        for number in repaired:
            t = trials[number]
            if t.state != TS.RUNNING:
                continue
            self.mirror.user_attr(t._trial_id, constants.ATTR_INTERRUPTED, True)
            self.study.tell(number, state=TS.FAIL)
            self.mirror.finished(t._trial_id)
            self.study.enqueue_trial(t.params, user_attrs={"raysweep:rerun_of": number},
                                     skip_if_exists=False)
            log.warning("trial %d was left RUNNING by a previous driver; marked FAIL and queued again", number)
        self._unowned.clear()
        return repaired

    # -- asking ------------------------------------------------------------
    def suggest(self, tune_id: str) -> dict[str, Any] | None | str:
        """Parameters for a new trial, None to wait, or Searcher.FINISHED."""
        if not self._reconciled:
            self.reconcile()
        if self._done_asking():
            return Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        # Startup gate: the (n_startup+1)-th trial waits until n_startup finished.
        if self._finished_ok < self.n_startup <= self._finished_ok + len(self.live):
            return None
        taken = self._presampled()
        if taken is not None:
            self._fill.next = taken[1]
        try:
            trial = self.study.ask(self.distributions)
        finally:
            if self._fill is not None:
                self._fill.next = None
        if self.presampler is not None:
            if taken is not None and trial.params == taken[1]:
                self.presampler.started(trial.number, trial.params, taken[0])
            else:  # not taken, or a queued trial (a rerun, the baseline) ran with its own values
                if taken is not None:
                    self.presampler.drop(taken[0])
                self.presampler.started(trial.number, trial.params)
        self.mirror.trial_created(trial._trial_id)
        self.mirror.system_attr(trial._trial_id, constants.ATTR_RAY_TRIAL_ID, tune_id)
        rec = LiveTrial(number=trial.number, tune_id=tune_id, trial=trial, params=dict(trial.params))
        self.live[tune_id] = rec
        self._notify("start", rec)
        return {constants.TRIAL_PARAMS_KEY: rec.params, constants.TRIAL_NUMBER_KEY: rec.number}

    def _presampled(self) -> tuple[int, dict[str, Any]] | None:
        """A TPE suggestion the helper process computed ahead, when one is ready and fresh."""
        if self._presample_kwargs is None or self._finished_ok < self.presample_after:
            return None
        if self.presampler is None:
            from raysweep.presampler import Presampler

            TS = self._optuna.trial.TrialState
            trials = self.study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED, TS.RUNNING))
            kwargs = dict(self._presample_kwargs)
            if kwargs["seed"] is not None:
                kwargs["seed"] += len(trials)      # another stream after each resume
            self.presampler = Presampler(kwargs, self.distributions, self.cfg.search.direction, trials,
                                         depth=self.max_concurrent)
            return None
        # a random startup suggestion never replaces TPE's once startup is over
        min_basis = self.n_startup if self._finished_ok >= self.n_startup else 0
        return self.presampler.take(self._finished_ok, max_lag=self.max_concurrent, min_basis=min_basis)

    # -- results -----------------------------------------------------------
    def _note_value(self, rec: LiveTrial, step: int, value: float) -> None:
        rec.steps.add(step)
        rec.last = value
        rec.epochs = max(rec.epochs, step + 1)
        if rec.best is None or (value > rec.best if self.maximize else value < rec.best):
            rec.best = value

    def on_result(self, tune_trial: Any, result: dict[str, Any], tune_controller: Any = None) -> str:
        """One reported epoch: record it and decide CONTINUE or STOP."""
        rec = self.live.get(tune_trial.trial_id)
        if rec is None:
            # Restored by Tune, but the study already finished it: never run it again.
            return TrialScheduler.STOP
        if rec.node is None:
            rec.node = str(result.get("node_ip") or result.get("hostname") or "")
            rec.worker = f"{rec.node}:{result.get('pid')}"
        if self.metric not in result:
            reported = sorted(k for k in result if not k.startswith(_TUNE_AUTO_PREFIXES) and k not in _TUNE_AUTO)
            self.fatal = ConfigError(
                f"the training function never reported the metric {self.metric!r}; "
                f"it reported: {', '.join(reported) or 'nothing'}",
                path=self.cfg.path, key="search.metric")
            return TrialScheduler.STOP
        try:
            value = float(result[self.metric])
        except (TypeError, ValueError):
            self.fatal = ConfigError(f"the metric {self.metric!r} must be a number, got {result[self.metric]!r}",
                                     path=self.cfg.path, key="search.metric")
            return TrialScheduler.STOP
        step = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        fresh = step not in rec.steps
        if math.isfinite(value):
            if fresh:
                rec.trial.report(value, step)
                self.mirror.intermediate(rec.trial._trial_id, step, value)
            self._note_value(rec, step, value)
        if self.curve_sink is not None:
            row = {"number": rec.number, "epoch": step, "time": result.get("timestamp", time.time()),
                   "node": rec.node}
            for k, v in result.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _TUNE_AUTO:
                    row[k] = v
            self.curve_sink(row)
        decision = TrialScheduler.CONTINUE
        if self.asha is not None:
            decision = self.asha.on_trial_result(tune_controller, tune_trial, result)
            if decision == TrialScheduler.STOP and result.get("training_iteration", 0) < self.cfg.num_epochs:
                rec.pruned = True
        elif self.median and fresh and math.isfinite(value) and rec.trial.should_prune():
            rec.pruned = True
            decision = TrialScheduler.STOP
        elif not math.isfinite(value):
            # NaN/inf: Optuna cannot compare it; the trial cannot recover either.
            rec.error = f"{self.metric} became {value} at epoch {step}"
            decision = TrialScheduler.STOP
        self._notify("result", rec)
        return decision

    def on_error(self, tune_trial: Any) -> None:
        rec = self.live.get(tune_trial.trial_id)
        if rec is not None:
            rec.last_error = _short_error(_error_text(tune_trial))

    def on_complete(self, tune_id: str, result: dict[str, Any] | None, error: bool) -> None:
        """Tell the study how the trial ended; never twice, never a finished one."""
        rec = self.live.pop(tune_id, None)
        if rec is None:
            return
        TS = self._optuna.trial.TrialState
        current = self.study._storage.get_trial(rec.trial._trial_id).state
        if current.is_finished():
            return
        if result and rec.node is None:
            rec.node = str(result.get("node_ip") or "")
            rec.worker = f"{rec.node}:{result.get('pid')}"
        attrs = {constants.ATTR_EPOCHS: rec.epochs, constants.ATTR_NODE: rec.node,
                 constants.ATTR_WORKER: rec.worker}
        if rec.last is not None:
            attrs[constants.ATTR_FINAL] = rec.last
            attrs[constants.ATTR_BEST] = rec.best
        if error or rec.error:
            state = TS.FAIL
            rec.error = rec.error or rec.last_error or "trial failed"
            attrs[constants.ATTR_ERROR] = rec.error
        elif rec.pruned:
            state = TS.PRUNED
        elif rec.last is None:
            state = TS.FAIL
            attrs[constants.ATTR_ERROR] = f"finished without reporting {self.metric!r}"
            if self.fatal is None:
                self.fatal = ConfigError(
                    f"the training function returned without ever reporting the metric {self.metric!r}",
                    path=self.cfg.path, key="search.metric")
        else:
            state = TS.COMPLETE
        for k, v in attrs.items():
            if v is not None:
                self.mirror.user_attr(rec.trial._trial_id, k, v)
        if state == TS.COMPLETE:
            value = rec.best if self.cfg.search.objective == "best" else rec.last
            self.study.tell(rec.trial, value)
            self._finished_ok += 1
        elif state == TS.PRUNED:
            self.study.tell(rec.trial, state=TS.PRUNED)
            self._finished_ok += 1
        else:
            self.study.tell(rec.trial, state=TS.FAIL)
        self.mirror.finished(rec.trial._trial_id)
        if self.presampler is not None:
            self.presampler.ended(rec.number, self.study._storage.get_trial(rec.trial._trial_id))
        self._finished += 1
        self._notify({TS.COMPLETE: "complete", TS.PRUNED: "pruned"}.get(state, "fail"), rec)

    def close(self) -> None:
        """Wait until every change is in the durable study; stop the TPE helper."""
        if self.presampler is not None:
            self.presampler.close()
            log.debug("TPE helper: %d suggestions used, %d dropped as too old",
                      self.presampler.used, self.presampler.dropped)
        self.mirror.close()
        for err in self.mirror.errors:
            log.warning("study storage: %s", err)

    def _notify(self, event: str, rec: LiveTrial | None) -> None:
        for fn in self.observers:
            try:
                fn(event, rec)
            except Exception as exc:  # a broken display must not cost a trial's result
                log.debug("observer failed: %s", exc)


_TUNE_AUTO = {
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
    "iterations_since_restore", "pid", "node_ip", "hostname", "date", "done", "trial_id",
    "experiment_tag", "checkpoint_dir_name", "should_checkpoint", "timesteps_total",
    "episodes_total", "timesteps_since_restore", "config", "epoch",
}
_TUNE_AUTO_PREFIXES = ("config/",)


def _error_text(tune_trial: Any) -> str | None:
    """The trial's error trace: the driver's local copy first, then storage."""
    try:
        path = tune_trial.error_file
        if path and os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        return tune_trial.get_error()
    except Exception:  # pragma: no cover - best effort
        return None


def _short_error(text: Any) -> str:
    """The last ``SomeError: message`` line of a traceback, capped."""
    if not text:
        return "trial failed"
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "OutOfMemory", "Interrupt")) and " " not in head:
            msg = line
            break
    else:
        msg = lines[-1] if lines else "trial failed"
    msg = msg.replace("raysweep.errors.", "")
    return msg if len(msg) <= 500 else msg[:497] + "..."


# ---------------------------------------------------------------------------
# Thin adapters Tune calls; state lives in the active controller.
# ---------------------------------------------------------------------------

_ACTIVE: SweepController | None = None


def activate(controller: SweepController | None) -> None:
    global _ACTIVE
    _ACTIVE = controller


def active() -> SweepController:
    if _ACTIVE is None:
        raise RuntimeError("no raysweep sweep is active in this process")
    return _ACTIVE


class _Stateless:
    """Pickles to nothing: Tune saves these into the experiment directory."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k in ("_metric", "_mode", "metric", "mode")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class StudySearcher(_Stateless, Searcher):
    """Ray Tune searcher asking the study through the active controller."""

    def __init__(self, metric: str, mode: str) -> None:
        Searcher.__init__(self, metric=metric, mode=mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return active().suggest(trial_id)  # type: ignore[return-value]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the scheduler sees results first and records them

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        active().on_complete(trial_id, result, error)

    # The study is the searcher's state; Tune's snapshot of it would be stale.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass


class StudyScheduler(_Stateless, FIFOScheduler):
    """Ray Tune scheduler: pruning decisions through the active controller."""

    def __init__(self, metric: str, mode: str) -> None:
        FIFOScheduler.__init__(self)
        self._metric = metric
        self._mode = mode

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        c = active()
        _keep_workers(tune_controller, trial, c.max_concurrent)
        if trial.status != "TERMINATED":
            c.claim(trial.trial_id, trial.config)
        if c.asha is not None:
            c.asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return active().on_result(trial, result, tune_controller)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        # Also called before a retry from the last checkpoint: only note the error.
        active().on_error(trial)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        c = active()
        if c.asha is not None:
            c.asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        c = active()
        if c.asha is not None:
            c.asha.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """The newest pending trial that has no actor starting for it yet.

        Tune hands a finished trial's (reusable) actor to the trial chosen here.
        FIFO would choose the oldest pending trial, whose own actor is usually
        half-started; that actor is then cancelled and the sweep falls back to
        one actor, i.e. runs serially. Choosing the newest trial keeps every
        started actor, so all slots stay busy.
        """
        with_actor = getattr(tune_controller, "_trial_to_actor", {})
        # Tune's own lists of pending and paused trials, where it keeps them: scanning
        # every trial of a 2,000-trial sweep on each call costs the driver's loop
        pending = getattr(tune_controller, "_pending_trials_list", None)
        for trial in reversed(tune_controller.get_trials() if pending is None else pending):
            if trial.status == "PENDING" and trial not in with_actor:
                return trial
        if not getattr(tune_controller, "_paused_trials", True):
            return None
        for trial in tune_controller.get_trials():
            if trial.status == "PAUSED":
                return trial
        return None

    def debug_string(self) -> str:
        return "raysweep scheduler"


def _keep_workers(tune_controller: Any, trial: Any, slots: int) -> None:
    """Let Tune keep up to ``slots`` idle workers for reuse.

    Tune caches a finished trial's actor only while another trial is staged.
    When the startup gate holds the next trial back, the actor is shut down,
    and the next trial waits ~1.5 s for a fresh one while the other slot is
    the only one working. Reserving cache room per resource shape keeps the
    workers; Tune still shuts them all down at the end of the experiment.
    Private Tune state: skipped silently where it does not exist.
    """
    cache = getattr(tune_controller, "_actor_cache", None)
    pgf = getattr(trial, "placement_group_factory", None)
    if cache is None or pgf is None or not hasattr(cache, "increase_max"):
        return
    reserved: set[Any] = cache.__dict__.setdefault("_raysweep_reserved", set())
    if pgf in reserved:
        return
    reserved.add(pgf)
    cache.increase_max(pgf, by=slots)


class SweepStopper(_Stateless, Stopper):
    """Stops the whole experiment on a fatal error or a user stop."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        c = _ACTIVE
        return c is not None and (c.fatal is not None or c.all_done())


def trial_name(trial: Any) -> str:
    """Ray trial names and directories carry the Optuna trial number."""
    number = (trial.config or {}).get(constants.TRIAL_NUMBER_KEY)
    return f"trial_{number:05d}_{trial.trial_id}" if number is not None else f"trial_{trial.trial_id}"
