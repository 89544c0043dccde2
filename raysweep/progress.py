"""The live view of a running sweep.

On a terminal one status line is refreshed in place; otherwise a plain line is
printed whenever a trial ends. Ray's own tables stay off unless ``-v``.
"""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from ray.tune import Callback

if TYPE_CHECKING:  # pragma: no cover
    from raysweep.search import LiveTrial, SweepController


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _fmt_params(params: dict[str, Any], limit: int = 4) -> str:
    items = []
    for k, v in list(params.items())[:limit]:
        short = k.rsplit(".", 1)[-1]
        items.append(f"{short}={v:.3g}" if isinstance(v, float) else f"{short}={v}")
    return ", ".join(items)


class LiveView:
    """Counts, best so far, elapsed and ETA, driven by controller events."""

    def __init__(self, controller: "SweepController", *, echo: Callable[[str], None], verbose: bool = False,
                 tty: bool | None = None, refresh: float = 0.5) -> None:
        self.c = controller
        self.echo = echo
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.verbose = verbose
        self.refresh = refresh
        self.counts = {"complete": 0, "pruned": 0, "fail": 0}
        self.best: tuple[float, int, dict[str, Any]] | None = None
        self.t0 = time.time()
        self._last_draw = 0.0
        self._done_durations: list[float] = []
        self._initial = controller.n_finished
        import optuna

        TS = optuna.trial.TrialState
        for t in controller.study.get_trials(deepcopy=False):
            key = {TS.COMPLETE: "complete", TS.PRUNED: "pruned", TS.FAIL: "fail"}.get(t.state)
            if key:
                self.counts[key] += 1
            if t.state == TS.COMPLETE and t.value is not None:
                self._consider_best(t.value, t.number, t.params)
        controller.observers.append(self.on_event)

    def _consider_best(self, value: float, number: int, params: dict[str, Any]) -> None:
        if self.best is None or (value > self.best[0] if self.c.maximize else value < self.best[0]):
            self.best = (value, number, dict(params))

    def on_event(self, event: str, rec: "LiveTrial | None") -> None:
        if rec is None or event in ("start", "result"):
            if event == "start" and not self.tty and self.verbose:
                self.echo(f"trial {rec.number} started: {_fmt_params(rec.params)}" if rec else "")
            return
        key = event if event in self.counts else "fail"
        self.counts[key] += 1
        self._done_durations.append(time.time() - rec.started)
        if event == "complete":
            value = rec.best if self.c.cfg.search.objective == "best" else rec.last
            if value is not None:
                self._consider_best(value, rec.number, rec.params)
        if not self.tty:
            metric = self.c.metric
            shown = "" if rec.last is None else f" {metric}={rec.best if rec.best is not None else rec.last:.4g}"
            extra = f" ({rec.error})" if rec.error and event == "fail" else ""
            word = {"complete": "done", "pruned": f"pruned at epoch {rec.epochs - 1}", "fail": "failed"}[key]
            self.echo(f"trial {rec.number} {word}{shown} after {rec.epochs} epochs{extra} | {self.line()}")
        else:
            self.draw(force=True)

    def line(self) -> str:
        c = self.counts
        elapsed = time.time() - self.t0
        parts = [f"running {len(self.c.live)}", f"done {c['complete']}", f"pruned {c['pruned']}",
                 f"failed {c['fail']}", f"of {self.c.n_trials}"]
        if self.best is not None:
            value, number, params = self.best
            parts.append(f"best {self.c.metric}={value:.4g} (#{number}: {_fmt_params(params)})")
        parts.append(f"elapsed {_fmt_time(elapsed)}")
        finished_now = self.c.n_finished - self._initial
        remaining = self.c.n_trials - self.c.n_finished
        if finished_now > 0 and remaining > 0:
            parts.append(f"ETA {_fmt_time(elapsed / finished_now * remaining)}")
        return " | ".join(parts)

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.time()
        if not force and now - self._last_draw < self.refresh:
            return
        self._last_draw = now
        sys.stderr.write("\r\033[K" + self.line()[: 200])
        sys.stderr.flush()

    def begin(self) -> None:
        self.t0 = time.time()
        self.echo(f"sweep {self.c.cfg.search.study_name}: {self.c.n_trials} trials, up to "
                  f"{self.c.max_concurrent} at a time ({self.c.cfg.search.sampler.type}, "
                  f"pruner {self.c.cfg.search.pruner.type})")

    def end(self) -> None:
        if self.tty:
            self.draw(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


_VIEW: LiveView | None = None


def activate(view: LiveView | None) -> None:
    global _VIEW
    _VIEW = view


class ViewCallback(Callback):
    """Tune callback that refreshes the active view; pickles to nothing."""

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        pass

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if _VIEW is not None:
            _VIEW.draw()
