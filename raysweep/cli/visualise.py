"""``raysweep visualise`` (plots + HTML report, or TensorBoard) and ``raysweep status``.

Both find a study by name in the studies directory; neither needs the storage
URL repeated. Imports stay light: optuna and matplotlib load only when a
command needs them (``status`` of a finished sweep reads trials.parquet only).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import click

from raysweep import constants
from raysweep.errors import RaysweepError, UsageError

_STUDIES_DIR_HELP = "Directory holding one folder per study (search.output_dir)."
_STORAGE_HELP = ("Optuna storage URL, when sweep.json has it masked (a password) or it moved; "
                 "default: from sweep.json, or $RAYSWEEP_STORAGE.")


def _studies_dir_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--studies-dir", "--studies_dir", "studies_dir", default=constants.DEFAULT_STUDIES_DIR,
                        show_default=True, type=click.Path(file_okay=False), help=_STUDIES_DIR_HELP)(f)


@click.command("visualise")
@click.option("--mode", type=click.Choice(["search", "launch"]), default="search", show_default=True,
              help="search: write plots and report.html for a study; launch: start TensorBoard.")
@click.option("--study-name", "--study_name", "study_name", metavar="NAME",
              help="The study (folder name under --studies-dir).")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False),
              help="Where to write the plots and report.html  [default: <study dir>/plots]")
@click.option("--params", metavar="A,B",
              help="Parameters for the importance, parallel, slice and contour plots "
                   "(full or unique short names, e.g. lr,batch_size)  [default: all]")
@_studies_dir_option
@click.option("--storage", metavar="URL", help=_STORAGE_HELP)
@click.option("--run-dir", "--run_dir", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="launch: the log directory for TensorBoard  [default: the study's tensorboard/]")
@click.option("--port", type=click.IntRange(1, 65535), default=6006, show_default=True,
              help="launch: TensorBoard's port.")
def visualise(mode: str, study_name: str | None, output_dir: str | None, params: str | None,
              studies_dir: str, storage: str | None, run_dir: str | None, port: int) -> None:
    """Plot a study (running or finished) or open TensorBoard on a run.

    \b
    raysweep visualise --mode search --study-name digits_optimization
        writes runs/optuna_studies/digits_optimization/plots/*.png and report.html
    raysweep visualise --mode launch --run_dir runs/optuna_studies/digits_optimization/tensorboard
        starts TensorBoard (HParams tab: all trials of the sweep)
    """
    if mode == "launch":
        _launch(run_dir, study_name, studies_dir, port)
        return
    if not study_name:
        from raysweep.studies import list_studies

        names = list_studies(studies_dir)
        hint = f"; studies in {studies_dir}: {', '.join(names)}" if names else ""
        raise UsageError(f"--mode search needs --study-name NAME{hint}")
    from raysweep.plots import visualise_study
    from raysweep.studies import find_study

    info = find_study(study_name, studies_dir)
    result = visualise_study(info, storage=storage, output_dir=output_dir, params=params)
    from raysweep import reporting as report

    click.echo(f"study {info.name}: {report.counts_line(result.trials, info.n_trials)}"
               + (" (still running)" if info.running else ""))
    for note in result.notes:
        click.echo(f"note: {note}")
    for p in result.plots:
        click.echo(f"  {p.path}" + (f"   (note: {p.note})" if p.note else ""))
    click.echo(f"report: {result.report}")


def _launch(run_dir: str | None, study_name: str | None, studies_dir: str, port: int) -> None:
    from raysweep.tb_hparams import TB_DIR, tensorboard_command

    if run_dir is None:
        if not study_name:
            raise UsageError("--mode launch needs --run_dir DIR (or --study-name NAME for its tensorboard/ dir)")
        from raysweep.studies import find_study

        info = find_study(study_name, studies_dir)
        logdir = info.path / TB_DIR
        if not logdir.is_dir():
            raise UsageError(f"{logdir} does not exist yet (it is written when the sweep ends); "
                             f"pass --run_dir DIR")
    else:
        logdir = Path(run_dir)
    cmd = tensorboard_command(logdir, port)
    if cmd is None:
        raise RaysweepError(
            f"TensorBoard is not installed; install and start it with: "
            f"pip install tensorboard && tensorboard --logdir {logdir} --port {port}")
    click.echo(f"starting TensorBoard on {logdir}: http://localhost:{port}/  (Ctrl-C to stop)")
    click.echo("  " + " ".join(cmd))
    try:
        rc = subprocess.call(cmd)
    except KeyboardInterrupt:
        rc = 0
    if rc:
        raise RaysweepError(f"tensorboard exited with code {rc}")


@click.command("status")
@click.argument("name", required=False, metavar="[NAME]")
@_studies_dir_option
@click.option("--storage", metavar="URL", help=_STORAGE_HELP)
@click.option("--limit", type=click.IntRange(0), default=0, help="Show the best N trials only (0: all).")
@click.option("--params", metavar="A,B", help="Parameters to show  [default: the search space]")
def status(name: str | None, studies_dir: str, storage: str | None, limit: int, params: str | None) -> None:
    """Trials of a study, best first, with counts; works while the sweep runs.

    Without NAME, lists the studies in --studies-dir.
    """
    from raysweep import studies

    if not name:
        names = studies.list_studies(studies_dir)
        if not names:
            click.echo(f"no studies in {studies_dir}")
            return
        for n in names:
            try:
                info = studies.find_study(n, studies_dir)
                click.echo(f"{n}  ({info.state}, {info.metric} {info.direction}"
                           + (f", {info.n_trials} trials" if info.n_trials else "") + ")")
            except RaysweepError as exc:
                click.echo(f"{n}  (unreadable: {exc})")
        return
    from raysweep import reporting as report

    info = studies.find_study(name, studies_dir)
    trials = studies.load_trials(info, storage)
    available = report.param_names(trials, info.search_space)
    shown = report.select_params(params, available)
    table = report.trials_table(trials, info.metric, info.direction, shown, limit=limit or None)
    click.echo(f"study {info.name}: {info.state}, {info.metric} ({info.direction}), "
               f"{report.counts_line(trials, info.n_trials)}")
    if not trials:
        click.echo("no trials yet")
        return
    click.echo(table.render())
    if limit and len(trials) > limit:
        click.echo(f"... {len(trials) - limit} more (--limit 0 shows all)")
    best = report.best_trial(trials, info.direction)
    times = report.time_summary(trials)
    line = f"best: trial {best.number}, {info.metric} = {report.fmt_number(best.value, 6)}" if best \
        else "best: none completed yet"
    click.echo(f"{line}; wall time {report.fmt_seconds(times.wall_seconds)}, "
               f"trial time {report.fmt_seconds(times.total_trial_seconds)} in total, "
               f"median {report.fmt_seconds(times.median_seconds)} per trial")
    if any(t.value is None and t.best_metric is not None for t in trials):
        click.echo("* no final value: the best epoch so far")


COMMANDS: list[click.Command] = [visualise, status]
