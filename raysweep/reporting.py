"""Trials -> plot and table data: plain numbers, tuples and strings, no drawing.

Everything :mod:`raysweep.plots` draws and ``raysweep status`` prints is computed
here from :class:`~raysweep.studies.TrialRecord` lists, so it can be tested with
numbers: which plots a study can have (and the note shown instead when it
cannot), the per-worker timeline, best-first tables, counts and times.

Only :func:`param_importances` imports optuna (inside the function).
"""
from __future__ import annotations

import datetime as _dt
import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from raysweep.errors import UsageError
from raysweep.studies import STATE_ORDER, TrialRecord

if TYPE_CHECKING:  # pragma: no cover
    import optuna

#: the plots ``raysweep visualise`` writes, in report order: (key, file name, title)
PLOTS: tuple[tuple[str, str, str], ...] = (
    ("history", "optimization_history.png", "Optimisation history"),
    ("importances", "param_importances.png", "Parameter importances"),
    ("parallel", "parallel_coordinate.png", "Parallel coordinates"),
    ("slice", "slice.png", "Slice plots"),
    ("intermediate", "intermediate_values.png", "Learning curves (intermediate values)"),
    ("contour", "contour.png", "Contour of the two most important parameters"),
    ("timeline", "timeline.png", "Timeline of trials per worker"),
)
PLOT_FILES: dict[str, str] = {key: fname for key, fname, _ in PLOTS}


# ---------------------------------------------------------------------------
# Basics
# ---------------------------------------------------------------------------


def completed(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """COMPLETE trials that have a value."""
    return [t for t in trials if t.state == "COMPLETE" and t.value is not None]


def best_trial(trials: Iterable[TrialRecord], direction: str) -> TrialRecord | None:
    """The COMPLETE trial with the best value (lowest number on ties), or None."""
    done = completed(trials)
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]


def sort_best_first(trials: Iterable[TrialRecord], direction: str) -> list[TrialRecord]:
    """COMPLETE trials best first; then the others (pruned, running, failed) by value or best epoch; then the rest."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(t: TrialRecord) -> tuple[int, float, int]:
        if t.value is not None and t.state == "COMPLETE":
            return (0, sign * t.value, t.number)
        score = t.value if t.value is not None else t.best_metric
        if score is not None:
            return (1, sign * score, t.number)
        return (2, 0.0, t.number)

    return sorted(trials, key=key)


def state_counts(trials: Iterable[TrialRecord]) -> dict[str, int]:
    """Counts by displayed state, in a fixed order (COMPLETE, PRUNED, FAIL, ...); zero counts left out."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.display_state] = counts.get(t.display_state, 0) + 1
    order = {s: i for i, s in enumerate(STATE_ORDER)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


@dataclass(frozen=True)
class TimeSummary:
    """Wall time of the sweep and time per trial, in seconds."""

    wall_seconds: float | None      # first trial start -> last trial end (or now)
    total_trial_seconds: float      # sum over trials
    mean_seconds: float | None
    median_seconds: float | None
    min_seconds: float | None
    max_seconds: float | None
    n_timed: int


def time_summary(trials: Sequence[TrialRecord], now: _dt.datetime | None = None) -> TimeSummary:
    """Total and per-trial times; running trials count up to ``now``."""
    secs = [t.seconds for t in trials if t.seconds is not None]
    starts = [t.start_time for t in trials if t.start_time is not None]
    wall = None
    if starts:
        now = now or _dt.datetime.now(_dt.timezone.utc)
        ends = [t.end_time or (now if t.state == "RUNNING" else t.start_time + _dt.timedelta(seconds=t.seconds or 0))
                for t in trials if t.start_time is not None]
        wall = max(0.0, (max(ends) - min(starts)).total_seconds())
    return TimeSummary(
        wall_seconds=wall,
        total_trial_seconds=float(sum(secs)),
        mean_seconds=statistics.fmean(secs) if secs else None,
        median_seconds=statistics.median(secs) if secs else None,
        min_seconds=min(secs) if secs else None,
        max_seconds=max(secs) if secs else None,
        n_timed=len(secs),
    )


# ---------------------------------------------------------------------------
# Timeline: one row per worker, bars coloured by state
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineBar:
    number: int
    state: str
    start: float        # seconds after the first trial started
    end: float


@dataclass(frozen=True)
class TimelineRow:
    label: str          # the worker ("<node>:<pid>"), else the node, else "unknown"
    node: str | None
    bars: tuple[TimelineBar, ...]

    @property
    def busy_seconds(self) -> float:
        """Time this worker ran at least one trial (overlaps counted once)."""
        total, cur_s, cur_e = 0.0, None, None
        for b in sorted(self.bars, key=lambda b: b.start):
            if cur_e is None or b.start > cur_e:
                if cur_e is not None:
                    total += cur_e - cur_s  # type: ignore[operator]
                cur_s, cur_e = b.start, b.end
            else:
                cur_e = max(cur_e, b.end)
        if cur_e is not None:
            total += cur_e - cur_s  # type: ignore[operator]
        return total


@dataclass(frozen=True)
class Timeline:
    start: _dt.datetime | None     # time 0
    span: float                    # seconds from the first start to the last end
    rows: tuple[TimelineRow, ...]

    @property
    def busy_fraction(self) -> float | None:
        """Share of worker-time spent running trials (1.0 = every worker busy all along)."""
        if not self.rows or self.span <= 0:
            return None
        return sum(r.busy_seconds for r in self.rows) / (self.span * len(self.rows))

    @property
    def nodes(self) -> list[str]:
        return sorted({r.node or "unknown" for r in self.rows})


def timeline(trials: Iterable[TrialRecord], now: _dt.datetime | None = None) -> Timeline:
    """Group trials with a start time by worker (then node); running trials end at ``now``.

    Rows are sorted by node, then worker; bars by start.
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    timed = [t for t in trials if t.start_time is not None]
    if not timed:
        return Timeline(start=None, span=0.0, rows=())
    t0 = min(t.start_time for t in timed)  # type: ignore[type-var]
    groups: dict[str, list[TimelineBar]] = {}
    nodes: dict[str, str | None] = {}
    for t in timed:
        label = t.worker or t.node or "unknown"
        nodes.setdefault(label, t.node)
        if t.end_time is not None:
            end_dt = t.end_time
        elif t.state == "RUNNING":
            end_dt = now
        else:
            end_dt = t.start_time + _dt.timedelta(seconds=t.seconds or 0.0)  # type: ignore[operator]
        start = (t.start_time - t0).total_seconds()  # type: ignore[operator]
        end = max(start, (end_dt - t0).total_seconds())
        groups.setdefault(label, []).append(TimelineBar(t.number, t.display_state, start, end))
    rows = tuple(
        TimelineRow(label=label, node=nodes[label], bars=tuple(sorted(bars, key=lambda b: (b.start, b.number))))
        for label, bars in sorted(groups.items(), key=lambda kv: (nodes[kv[0]] or "", kv[0]))
    )
    span = max(b.end for r in rows for b in r.bars)
    return Timeline(start=t0, span=span, rows=rows)


# ---------------------------------------------------------------------------
# Parameters and which plots are possible
# ---------------------------------------------------------------------------


def param_names(trials: Iterable[TrialRecord], search_space: Sequence[str] = ()) -> list[str]:
    """Parameter names: the search-space order first, then any others seen, sorted."""
    seen = {k for t in trials for k in t.params}
    names = [p for p in search_space if p in seen]
    return names + sorted(seen - set(names))


def varying_params(trials: Iterable[TrialRecord], names: Sequence[str]) -> list[str]:
    """Those of ``names`` that take two or more values among COMPLETE trials."""
    done = completed(trials)
    out = []
    for name in names:
        values = {repr(t.params[name]) for t in done if name in t.params}
        if len(values) >= 2:
            out.append(name)
    return out


def select_params(requested: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Resolve ``--params a,b``: exact names or unique dotted suffixes (``lr`` -> ``optimizer.lr``).

    Raises :class:`~raysweep.errors.UsageError` for a name that matches none or several.
    """
    if requested is None:
        return list(available)
    items = [p.strip() for p in (requested.split(",") if isinstance(requested, str) else requested)]
    items = [p for p in items if p]
    out: list[str] = []
    for item in items:
        if item in available:
            match = [item]
        else:
            match = [a for a in available if a.endswith("." + item)]
        if len(match) != 1:
            what = "matches several parameters" if match else "is not a parameter of this study"
            raise UsageError(f"--params: {item!r} {what}; the study has: {', '.join(available) or 'none'}")
        if match[0] not in out:
            out.append(match[0])
    return out


def short_name(name: str, others: Sequence[str] = ()) -> str:
    """``optimizer.lr`` -> ``lr`` unless another name ends the same way."""
    tail = name.rsplit(".", 1)[-1]
    clash = [o for o in others if o != name and o.rsplit(".", 1)[-1] == tail]
    return name if clash else tail


@dataclass(frozen=True)
class PlotSpec:
    """One plot to draw: its key and file, the params it shows, or a note instead of a plot."""

    key: str
    filename: str
    title: str
    params: tuple[str, ...] = ()
    note: str | None = None          # set: draw this sentence instead of the plot


def plan_plots(trials: Sequence[TrialRecord], params: Sequence[str],
               importances: dict[str, float] | None = None) -> list[PlotSpec]:
    """Decide, for each plot in :data:`PLOTS`, what it shows or why it cannot be drawn.

    ``params`` are the parameters asked for (all by default); only those that
    vary among COMPLETE trials are plotted. ``importances`` (name -> weight)
    picks the contour's two parameters; without it, the first two varying ones.
    """
    done = completed(trials)
    n_done = len(done)
    vary = varying_params(trials, params)
    few = (f"This plot needs at least 2 completed trials; the study has {n_done} so far"
           + (f" (and {len(trials) - n_done} not completed)" if len(trials) > n_done else "") + ".")
    specs: list[PlotSpec] = []
    for key, fname, title in PLOTS:
        note: str | None = None
        shown: tuple[str, ...] = ()
        if key == "history":
            if n_done == 0:
                note = "No completed trial yet: nothing to plot."
        elif key in ("importances", "parallel", "slice"):
            if n_done < 2:
                note = few
            elif not vary:
                note = "No parameter took two different values among the completed trials."
            else:
                shown = tuple(vary)
        elif key == "intermediate":
            if not any(t.intermediate for t in trials):
                note = "No trial has reported a per-epoch value yet."
        elif key == "contour":
            if n_done < 2:
                note = few
            elif len(vary) < 2:
                note = ("A contour plot needs two parameters that vary among the completed trials; "
                        f"the study has {len(vary)}.")
            else:
                ranked = vary
                if importances:
                    ranked = sorted(vary, key=lambda p: (-importances.get(p, 0.0), vary.index(p)))
                shown = tuple(ranked[:2])
        elif key == "timeline":
            if not any(t.start_time is not None for t in trials):
                note = "No trial has started yet."
        specs.append(PlotSpec(key=key, filename=fname, title=title, params=shown, note=note))
    return specs


def pruned_points(trials: Iterable[TrialRecord]) -> list[tuple[int, int, float]]:
    """(trial number, epoch, value) where each PRUNED trial stopped: its last reported epoch."""
    out = []
    for t in trials:
        if t.state == "PRUNED" and t.intermediate:
            epoch = max(t.intermediate)
            out.append((t.number, epoch, t.intermediate[epoch]))
    return sorted(out)


def param_importances(study: "optuna.Study", params: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """Optuna's parameter importances for ``params`` (default evaluator) and any warnings as notes.

    Returns ``({}, [reason])`` when they cannot be computed.
    """
    import optuna

    if len([t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]) < 2 \
            or not params:
        return {}, ["importances need at least 2 completed trials and one varying parameter"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            imp = optuna.importance.get_param_importances(study, params=list(params))
        except (RuntimeError, ValueError) as exc:
            return {}, [f"importances could not be computed: {exc}"]
    notes = [str(w.message) for w in caught if not issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    return {k: float(v) for k, v in imp.items()}, notes


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def fmt_number(x: Any, digits: int = 4) -> str:
    """Compact number text: ``0.9312``, ``1.2e-05``, ``64``; ``-`` for None."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:.{digits}g}"
    return str(x)


def fmt_seconds(x: float | None) -> str:
    """``42.1s``, ``12m03s``, ``2h05m``; ``-`` for None."""
    if x is None:
        return "-"
    if x < 60:
        return f"{x:.1f}s"
    m, s = divmod(int(round(x)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numbers: tuple[int, ...] = field(default=())   # trial number of each row

    def render(self) -> str:
        """Plain-text table with aligned columns; all-numeric columns right-aligned."""
        cols = list(zip(self.header, *self.rows)) if self.rows else [(h,) for h in self.header]
        widths = [max(len(c) for c in col) for col in cols]
        numeric = [bool(self.rows) and all(_looks_numeric(c) for c in col[1:]) for col in cols]
        lines = []
        for row in (self.header, *self.rows):
            cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


def _looks_numeric(cell: str) -> bool:
    if cell == "-":
        return True
    try:
        float(cell.rstrip("smh*").replace("m", "").replace("h", ""))
        return True
    except ValueError:
        return False


def trials_table(trials: Sequence[TrialRecord], metric: str, direction: str,
                 params: Sequence[str] = (), *, limit: int | None = None,
                 extra: bool = False) -> Table:
    """Best-first table: number, state, params, metric, epochs, seconds, node.

    ``extra`` adds final/best metric, worker and error columns (the HTML report).
    The metric column is the trial's value, or its best epoch so far for
    trials without one (running, pruned), marked with ``*``.
    """
    names = [short_name(p, params) for p in params]
    header = ["#", "state", *names, metric]
    if extra:
        header += ["final", "best"]
    header += ["epochs", "seconds", "node"]
    if extra:
        header += ["worker", "error"]
    rows = []
    ordered = sort_best_first(trials, direction)
    if limit is not None and limit > 0:
        ordered = ordered[:limit]
    for t in ordered:
        number = f"{t.number}" + (" (baseline)" if t.baseline else "")
        if t.value is not None:
            metric_cell = fmt_number(t.value)
        elif t.best_metric is not None:
            metric_cell = fmt_number(t.best_metric) + "*"
        else:
            metric_cell = "-"
        row = [number, t.display_state, *(fmt_number(t.params.get(p)) for p in params), metric_cell]
        if extra:
            row += [fmt_number(t.final_metric), fmt_number(t.best_metric)]
        row += [fmt_number(t.epochs), fmt_seconds(t.seconds), t.node or "-"]
        if extra:
            row += [t.worker or "-", (t.error or "").splitlines()[0][:120] if t.error else ""]
        rows.append(tuple(row))
    return Table(header=tuple(header), rows=tuple(rows), numbers=tuple(t.number for t in ordered))


def counts_line(trials: Sequence[TrialRecord], n_planned: int | None = None) -> str:
    """``12 trials (of 20): COMPLETE 8, PRUNED 3, RUNNING 1``."""
    counts = state_counts(trials)
    of = f" (of {n_planned})" if n_planned else ""
    parts = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"{len(trials)} trial{'s' if len(trials) != 1 else ''}{of}" + (f": {parts}" if parts else "")
