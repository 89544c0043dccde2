"""Plot data -> PNG files and one self-contained ``report.html``.

Optuna's matplotlib module draws the optimisation history, importances,
parallel coordinates, slices, learning curves and the contour; raysweep adds
the pruned-trial markers on the learning curves and draws the per-worker
timeline itself (Optuna's timeline has one row per trial, not per worker).
A plot that cannot be drawn yet (one finished trial, nothing varies) becomes a
PNG holding a one-line note, so the set of files is always the same.

matplotlib (Agg backend) and optuna are imported inside functions only.

Entry point for the CLI::

    result = visualise_study(find_study("digits_optimization"))
    result.paths      # PNGs + report.html
"""
from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import html
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from raysweep import reporting as report
from raysweep import constants
from raysweep.errors import StudyError
from raysweep.studies import (
    StudyInfo,
    TrialRecord,
    attach_curves,
    load_curves,
    needs_optuna,
    open_optuna_study,
    read_trials_parquet,
    records_from_optuna,
    study_from_records,
)

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from matplotlib.figure import Figure

STATE_COLORS: dict[str, str] = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "INTERRUPTED": "#7f7f7f",
    "RUNNING": "#2ca02c",
    "WAITING": "#c7c7c7",
}
DPI = 100
MAX_LEGEND_TRIALS = 15


@dataclass(frozen=True)
class PlotResult:
    """A written plot: its file, and the note drawn instead of it (or warnings met while drawing)."""

    key: str
    title: str
    path: Path
    note: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class VisualiseResult:
    """What :func:`visualise_study` wrote."""

    info: StudyInfo
    out_dir: Path
    plots: list[PlotResult]
    report: Path
    trials: list[TrialRecord]
    notes: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [p.path for p in self.plots] + [self.report]


# ---------------------------------------------------------------------------
# matplotlib plumbing
# ---------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def _drawing(caught: list[str]) -> Iterator[None]:
    """Keep Optuna's global style changes (plt.style.use) and log/warning noise local.

    Warnings raised while drawing are collected into ``caught`` (and shown next
    to the plot in the report) instead of going to stderr.
    """
    import matplotlib
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with matplotlib.rc_context(), warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            yield
        for w in ws:
            if issubclass(w.category, optuna.exceptions.ExperimentalWarning):
                continue
            msg = str(w.message)
            if msg not in caught:
                caught.append(msg)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _figure_of(ax: Any) -> "Figure":
    if hasattr(ax, "flat"):       # numpy array of Axes (slice, multi-panel)
        ax = next(iter(ax.flat))
    return ax.figure


def save_figure(fig: "Figure", path: Path, *, tight: bool = True) -> Path:
    """Save as PNG and close the figure (pyplot keeps figures alive otherwise)."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None, format="png")
    finally:
        plt.close(fig)
    return path


def note_figure(title: str, note: str) -> "Figure":
    """A small figure that says why a plot is not there, instead of an empty plot."""
    import textwrap

    plt = _pyplot()
    fig = plt.figure(figsize=(6.4, 2.4))
    fig.text(0.5, 0.72, title, ha="center", va="center", fontsize=13, weight="bold")
    fig.text(0.5, 0.38, textwrap.fill(note, 70), ha="center", va="center", fontsize=10, color="#444444")
    return fig


# ---------------------------------------------------------------------------
# The plots
# ---------------------------------------------------------------------------


def draw_timeline(tl: report.Timeline, title: str = "Timeline of trials per worker") -> "Figure":
    """Horizontal bars per worker over wall-clock time, coloured by state, with the busy share."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    n = max(1, len(tl.rows))
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.45 * n))
    states_seen: list[str] = []
    for i, row in enumerate(tl.rows):
        for bar in row.bars:
            width = max(bar.end - bar.start, tl.span * 0.002)
            ax.barh(i, width, left=bar.start, height=0.7, color=STATE_COLORS.get(bar.state, "#9467bd"),
                    edgecolor="white", linewidth=0.6)
            if bar.state not in states_seen:
                states_seen.append(bar.state)
            if width > tl.span * 0.04:
                ax.text(bar.start + width / 2, i, str(bar.number), ha="center", va="center",
                        fontsize=7, color="white")
    ax.set_yticks(range(len(tl.rows)), [r.label for r in tl.rows], fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first trial started"
                  + (f" ({tl.start.strftime('%Y-%m-%d %H:%M:%S UTC')})" if tl.start else ""))
    busy = tl.busy_fraction
    sub = f"{len(tl.rows)} worker{'s' if len(tl.rows) != 1 else ''} on {len(tl.nodes)} node" \
          f"{'s' if len(tl.nodes) != 1 else ''}"
    if busy is not None:
        sub += f", busy {busy:.0%} of the time"
    ax.set_title(f"{title}\n{sub}", fontsize=11)
    order = [s for s in STATE_COLORS if s in states_seen] + [s for s in states_seen if s not in STATE_COLORS]
    ax.legend(handles=[Patch(color=STATE_COLORS.get(s, "#9467bd"), label=s.lower()) for s in order],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _mark_pruned(ax: Any, trials: Sequence[TrialRecord], metric: str) -> None:
    points = report.pruned_points(trials)
    if points:
        ax.scatter([e for _, e, _ in points], [v for _, _, v in points], marker="x", s=60,
                   color=STATE_COLORS["PRUNED"], linewidths=2, zorder=5, label="pruned here")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"Learning curves: {metric} per epoch")
    handles, labels = ax.get_legend_handles_labels()
    n_lines = sum(1 for lab in labels if lab.startswith("Trial"))
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if n_lines > MAX_LEGEND_TRIALS:
        keep = [(h, lab) for h, lab in zip(handles, labels) if not lab.startswith("Trial")]
        handles, labels = [h for h, _ in keep], [lab for _, lab in keep]
    if handles:
        ax.legend(handles, labels, bbox_to_anchor=(1.02, 1), loc="upper left", borderaxespad=0.0,
                  fontsize=8)


def draw_plot(spec: report.PlotSpec, study: "optuna.Study", trials: Sequence[TrialRecord], metric: str,
              tl: report.Timeline) -> tuple["Figure", list[str]]:
    """Draw one planned plot with Optuna's matplotlib functions (timeline: ours)."""
    import optuna.visualization.matplotlib as om

    caught: list[str] = []
    params = list(spec.params)
    with _drawing(caught):
        if spec.note is not None:
            fig = note_figure(spec.title, spec.note)
        elif spec.key == "history":
            fig = _figure_of(om.plot_optimization_history(study, target_name=metric))
        elif spec.key == "importances":
            fig = _figure_of(om.plot_param_importances(study, params=params, target_name=metric))
        elif spec.key == "parallel":
            fig = _figure_of(om.plot_parallel_coordinate(study, params=params, target_name=metric))
        elif spec.key == "slice":
            fig = _figure_of(om.plot_slice(study, params=params, target_name=metric))
        elif spec.key == "intermediate":
            ax = om.plot_intermediate_values(study)
            _mark_pruned(ax, trials, metric)
            fig = ax.figure
        elif spec.key == "contour":
            fig = _figure_of(om.plot_contour(study, params=params, target_name=metric))
        elif spec.key == "timeline":
            fig = draw_timeline(tl, spec.title)
        else:  # pragma: no cover - PLOTS and this function change together
            raise ValueError(f"unknown plot {spec.key!r}")
    return fig, caught


def write_plots(study: "optuna.Study", trials: Sequence[TrialRecord], out_dir: Path, metric: str,
                params: Sequence[str], *, now: _dt.datetime | None = None) -> tuple[list[PlotResult], list[str]]:
    """Write every plot of :data:`raysweep.reporting.PLOTS` into ``out_dir``.

    Returns the plots and notes about the study (e.g. approximate importances).
    """
    notes: list[str] = []
    vary = report.varying_params(trials, params)
    importances: dict[str, float] = {}
    if len(report.completed(trials)) >= 2 and vary:
        importances, imp_notes = report.param_importances(study, vary)
        notes += [f"importances: {n}" for n in imp_notes]
    specs = report.plan_plots(trials, params, importances)
    tl = report.timeline(trials, now=now)
    results = []
    for spec in specs:
        fig, caught = draw_plot(spec, study, trials, metric, tl)
        path = save_figure(fig, out_dir / spec.filename, tight=spec.note is None)
        results.append(PlotResult(spec.key, spec.title, path, spec.note, tuple(caught)))
    return results, notes


# ---------------------------------------------------------------------------
# HTML report
# ---------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.best{background:#eaf6ea}
.meta td{text-align:left}.note{color:#8a5a00;font-style:italic}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:.8em;overflow:auto}
.state-COMPLETE{color:#1f77b4}.state-PRUNED{color:#c25e00}.state-FAIL{color:#d62728}
.state-RUNNING{color:#2ca02c}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def best_config_text(info: StudyInfo, best: TrialRecord | None) -> str:
    """``best_config.yaml`` when the sweep wrote it, else the best trial's params as YAML."""
    path = info.path / constants.BEST_CONFIG_FILE
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except OSError:
            pass
    if best is None:
        return ""
    import yaml

    return "# best trial's parameters (best_config.yaml is written when the sweep ends)\n" + \
        yaml.safe_dump(dict(best.params), sort_keys=False, default_flow_style=False)


def render_html(info: StudyInfo, trials: Sequence[TrialRecord], plots: Sequence[PlotResult],
                notes: Sequence[str] = (), *, now: _dt.datetime | None = None, source: str = "") -> str:
    """The report page: summary, counts, times, best config, plots (base64) and the trials table."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    direction = info.direction
    best = report.best_trial(trials, direction)
    params = report.param_names(trials, info.search_space)
    table = report.trials_table(trials, info.metric, direction, params, extra=True)
    times = report.time_summary(trials, now=now)
    counts = report.state_counts(trials)
    from raysweep.config import mask_url

    out: list[str] = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>raysweep report: {_e(info.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Study <code>{_e(info.name)}</code></h1>",
        "<table class='meta'>",
    ]
    meta = [
        ("metric", f"{info.metric} ({direction})"),
        ("sweep state", info.state + (" (read live from the Optuna storage)" if info.running else "")),
        ("trials", report.counts_line(trials, info.n_trials)),
        ("started", info.started or "-"),
        ("config", info.config_path or "-"),
        ("storage", mask_url(info.storage) or "-"),
        ("read from", source or "-"),
        ("report written", now.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    out += [f"<tr><th class='l'>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta]
    out.append("</table>")

    out.append("<h2>Counts by state</h2><table><tr>")
    out += [f"<th class='l state-{_e(s)}'>{_e(s)}</th>" for s in counts]
    out.append("<th>total</th></tr><tr>")
    out += [f"<td>{c}</td>" for c in counts.values()]
    out.append(f"<td>{len(trials)}</td></tr></table>")

    out.append("<h2>Times</h2><table class='meta'>")
    for k, v in (("sweep wall time (first start to last end)", report.fmt_seconds(times.wall_seconds)),
                 ("trial time, total", report.fmt_seconds(times.total_trial_seconds)),
                 ("per trial: mean / median", f"{report.fmt_seconds(times.mean_seconds)} / "
                                              f"{report.fmt_seconds(times.median_seconds)}"),
                 ("per trial: min / max", f"{report.fmt_seconds(times.min_seconds)} / "
                                          f"{report.fmt_seconds(times.max_seconds)}")):
        out.append(f"<tr><th class='l'>{_e(k)}</th><td>{_e(v)}</td></tr>")
    out.append("</table>")

    out.append("<h2>Best trial</h2>")
    if best is None:
        out.append("<p class='note'>No completed trial yet.</p>")
    else:
        out.append(f"<p>Trial {best.number}: {_e(info.metric)} = <b>{_e(report.fmt_number(best.value, 6))}</b>"
                   f" after {_e(report.fmt_number(best.epochs))} epochs, {_e(report.fmt_seconds(best.seconds))}"
                   f" on {_e(best.node or '-')}.</p>")
    text = best_config_text(info, best)
    if text:
        out.append(f"<pre>{_e(text)}</pre>")

    out.append("<h2>Plots</h2>")
    if notes:
        out.append("<ul>" + "".join(f"<li class='note'>{_e(n)}</li>" for n in notes) + "</ul>")
    for p in plots:
        out.append(f"<figure id='{_e(p.key)}'><figcaption><b>{_e(p.title)}</b></figcaption>")
        if p.note:
            out.append(f"<p class='note'>{_e(p.note)}</p>")
        out.append(f"<img alt='{_e(p.title)}' src='{_png_data_uri(p.path)}'>")
        for w in p.warnings:
            out.append(f"<p class='note'>{_e(w)}</p>")
        out.append("</figure>")

    out.append(f"<h2>Trials ({len(trials)}, best first)</h2>")
    out.append("<table id='trials'><tr>")
    left = {"state", "node", "worker", "error"}
    out += [f"<th class='{'l' if h in left else ''}'>{_e(h)}</th>" for h in table.header]
    out.append("</tr>")
    for number, row in zip(table.numbers, table.rows):
        cls = " class='best'" if best is not None and number == best.number else ""
        out.append(f"<tr{cls} data-trial='{number}'>")
        for h, cell in zip(table.header, row):
            c = "l" + (f" state-{cell}" if h == "state" else "") if h in left else ""
            out.append(f"<td class='{c}'>{_e(cell)}</td>")
        out.append("</tr>")
    out.append("</table>")
    out.append("<p class='note'>* no final value yet: the best epoch so far.</p>")
    out.append("</body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------


def gather(info: StudyInfo, storage: str | None = None) -> tuple[list[TrialRecord], "optuna.Study", str]:
    """Trials, an Optuna study to draw from, and a line saying where they came from.

    A running sweep (or one without ``trials.parquet``) is read from its storage.
    A finished one is read from ``trials.parquet``; its storage is still used for
    Optuna's plots when reachable, else an in-memory study is rebuilt from the file.
    """
    if needs_optuna(info):
        study = open_optuna_study(info, storage)
        return records_from_optuna(study, info.direction), study, "Optuna storage (live)"
    trials = read_trials_parquet(info.trials_file)
    attach_curves(trials, load_curves(info), info.metric)
    try:
        study = open_optuna_study(info, storage)
        source = f"{constants.TRIALS_FILE} + Optuna storage"
        if not any(t.intermediate for t in trials):
            live = {t.number: t for t in records_from_optuna(study, info.direction)}
            for t in trials:
                if t.number in live:
                    t.intermediate = live[t.number].intermediate
    except StudyError:
        study = study_from_records(trials, info.direction)
        source = f"{constants.TRIALS_FILE} (storage unreachable: plots from the file)"
    return trials, study, source


def visualise_study(info: StudyInfo, *, storage: str | None = None, output_dir: str | Path | None = None,
                    params: str | Sequence[str] | None = None,
                    now: _dt.datetime | None = None) -> VisualiseResult:
    """Write all plots and ``report.html`` for a study, finished or running.

    ``output_dir`` defaults to ``<study dir>/plots``; ``params`` (``"a,b"`` or a
    list; unique suffixes like ``lr`` work) limits the per-parameter plots.
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    trials, study, source = gather(info, storage)
    available = report.param_names(trials, info.search_space)
    chosen = report.select_params(params, available)
    out_dir = Path(output_dir) if output_dir else info.plots_dir
    plots, notes = write_plots(study, trials, out_dir, info.metric, chosen, now=now)
    if info.running:
        notes.insert(0, "the sweep is still running: this is a snapshot")
    page = render_html(info, trials, plots, notes, now=now, source=source)
    report_path = out_dir / constants.REPORT_FILE
    report_path.write_text(page, encoding="utf-8")
    return VisualiseResult(info=info, out_dir=out_dir, plots=plots, report=report_path, trials=trials,
                           notes=notes)
