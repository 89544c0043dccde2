"""TPE's next suggestions, computed ahead of time in a helper process.

A TPE ask reads every finished trial of the study: about 1 ms at 100 trials
and 8 ms at 2,000 (measured here, in memory). In the sweep's driver it runs on
the thread that also hands finished trials' workers their next trial, so with
short trials the gap between two trials on a worker grew with the study. Past
:data:`raysweep.constants.PRESAMPLE_AFTER` finished trials, the driver starts
one helper process holding its own in-memory copy of the finished trials and a
TPE sampler built from the same settings; the helper keeps a few suggestions
ready and the driver takes one when Tune asks for a trial.

Semantics: the helper holds the driver's finished *and* running trials (so
TPE's ``constant_liar`` sees the same running trials), and a waiting
suggestion is itself a running trial there. A suggestion is used only while
at most ``max_lag`` trials have finished since it was computed, the same
amount of history a parallel sweep's trials lack anyway, and a random startup
suggestion is never used once TPE has taken over. When no usable suggestion
is ready the driver asks TPE itself, as without the helper. Only plain TPE
(not ``multivariate``) is handed over; other samplers are cheap or keep
state of their own.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import optuna

log = logging.getLogger("raysweep")


class Presampler:
    """The driver's side: report trials starting and ending, take ready suggestions."""

    def __init__(self, sampler_kwargs: dict[str, Any], distributions: dict[str, Any], direction: str,
                 trials: list["optuna.trial.FrozenTrial"], *, depth: int = 2) -> None:
        """``trials``: the driver study's finished and running trials, in order."""
        ctx = multiprocessing.get_context("spawn")   # no fork of a driver holding Ray's threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, name="raysweep-presampler", daemon=True,
                                 args=(child, sampler_kwargs, distributions, direction, trials, depth))
        self._proc.start()
        child.close()
        self._ready: collections.deque[tuple[int, int, dict[str, Any]]] = collections.deque()
        self.used = 0           # suggestions the sweep ran
        self.dropped = 0        # suggestions too old when taken, or not run
        self.closed = False

    def take(self, finished: int, *, max_lag: int, min_basis: int = 0) -> tuple[int, dict[str, Any]] | None:
        """``(draft, params)`` computed from >= ``finished - max_lag`` (and >= ``min_basis``) trials.

        Pass ``draft`` to :meth:`started` once the trial is created.
        """
        if self.closed:
            return None
        try:
            while self._conn.poll():
                self._ready.append(self._conn.recv())
        except (EOFError, OSError):
            self._dead()
            return None
        while self._ready:
            draft, basis, params = self._ready.popleft()
            if basis >= max(finished - max_lag, min_basis):
                return draft, params
            self.drop(draft)
        return None

    def drop(self, draft: int) -> None:
        """A taken or stale suggestion that will not run."""
        self.dropped += 1
        self._send(("drop", draft, None))

    def started(self, number: int, params: dict[str, Any], draft: int | None = None) -> None:
        """Trial ``number`` runs, with a taken suggestion (``draft``) or parameters asked elsewhere."""
        if draft is not None:
            self.used += 1
        self._send(("use", draft, number) if draft is not None else ("run", number, params))

    def ended(self, number: int, frozen: "optuna.trial.FrozenTrial") -> None:
        """Trial ``number`` finished (any state) in the driver's study."""
        self._send(("end", number, frozen))

    def close(self) -> None:
        if self.closed:
            return
        self._send(("stop", None, None))
        self.closed = True
        self._proc.join(timeout=5)
        if self._proc.is_alive():  # pragma: no cover - a stuck helper
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._conn.close()

    def _send(self, msg: tuple[str, Any, Any]) -> None:
        if self.closed:
            return
        try:
            self._conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            self._dead()

    def _dead(self) -> None:
        # The driver asks TPE itself from now on; nothing is lost.
        log.warning("the TPE helper process stopped (exit code %s); the driver samples itself",
                    self._proc.exitcode)
        self.closed = True


def _serve(conn: Any, sampler_kwargs: dict[str, Any], distributions: dict[str, Any], direction: str,
           trials: list["optuna.trial.FrozenTrial"], depth: int) -> None:
    """The helper: a copy of the driver's study (finished and running trials) and ``depth`` drafts.

    A draft is a suggestion asked here and left RUNNING, so that TPE's constant
    liar sees it while it waits; the driver then uses it (it becomes that
    trial) or drops it (it is failed here). Each draft is sent with the number
    of finished trials it was computed from.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    TS = optuna.trial.TrialState
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction=direction,
                                sampler=optuna.samplers.TPESampler(**sampler_kwargs))
    running: dict[int, Any] = {}        # driver trial number -> trial here
    drafts: dict[int, Any] = {}         # draft id -> trial here
    basis = 0

    def run_fixed(number: int, params: dict[str, Any]) -> None:
        study.enqueue_trial(params)
        running[number] = study.ask(distributions)

    def end(number: int, frozen: Any) -> None:
        nonlocal basis
        trial = running.pop(number, None)
        if trial is None:
            if frozen.state in (TS.COMPLETE, TS.PRUNED):
                study.add_trial(frozen)
                basis += 1
            return
        for step, value in sorted(frozen.intermediate_values.items()):
            trial.report(value, step)
        if frozen.state == TS.COMPLETE:
            study.tell(trial, frozen.values)
            basis += 1
        elif frozen.state == TS.PRUNED:
            study.tell(trial, state=TS.PRUNED)
            basis += 1
        else:
            study.tell(trial, state=TS.FAIL)

    for t in trials:
        if t.state == TS.RUNNING:
            run_fixed(t.number, t.params)
        elif t.state in (TS.COMPLETE, TS.PRUNED):
            study.add_trial(t)
            basis += 1
    try:
        while True:
            # block only when enough drafts are waiting to be taken
            while len(drafts) >= depth or conn.poll():
                kind, a, b = conn.recv()
                if kind == "stop":
                    return
                if kind == "use":
                    running[b] = drafts.pop(a)
                elif kind == "drop":
                    study.tell(drafts.pop(a), state=TS.FAIL)
                elif kind == "run":
                    run_fixed(a, b)
                elif kind == "end":
                    end(a, b)
            trial = study.ask(distributions)
            drafts[trial.number] = trial
            conn.send((trial.number, basis, dict(trial.params)))
    except (EOFError, OSError, KeyboardInterrupt):
        return


def filled_sampler(base: "optuna.samplers.BaseSampler") -> "optuna.samplers.BaseSampler":
    """``base``, except that parameters placed in ``.next`` are returned for the trial being asked."""
    import optuna

    class FilledSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.base = base
            self.next: dict[str, Any] | None = None

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return self.base.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            return self.base.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            if self.next is not None and name in self.next:
                return self.next[name]
            return self.base.sample_independent(study, trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self.base.before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.base.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.base.reseed_rng()

    return FilledSampler()
