"""``raysweep run`` (alias ``ml-search``): run or resume a sweep."""
from __future__ import annotations

import click

from raysweep.config import load_config
from raysweep.errors import StudyError


def _echo(line: str) -> None:
    click.echo(line, err=True)


@click.command("run")
@click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The YAML config with a search block.")
@click.option("--n-trials", type=int, default=None, help="Trials in the study (overrides search.n_trials). "
              "With --resume, a larger number extends a finished study.")
@click.option("--timeout", type=float, default=None, help="Seconds after which no new trial starts.")
@click.option("--study-name", default=None, help="Study name (overrides search.study_name).")
@click.option("--resume", is_flag=True, help="Continue the study and its Ray experiment where they stopped.")
@click.option("--address", default=None, help='Ray cluster to use: "auto", "ray://host:10001" '
              "(default: ray.address, RAY_ADDRESS, else a local Ray).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set training.num_epochs=5 (repeatable).")
@click.option("-v", "--verbose", is_flag=True, help="Show Ray's own logs and trial tables.")
def run(config_path: str, n_trials: int | None, timeout: float | None, study_name: str | None, resume: bool,
        address: str | None, overrides: tuple[str, ...], verbose: bool) -> None:
    """Run a hyperparameter sweep described by a YAML config.

    Trials run in parallel on a local Ray instance (or the cluster at
    --address), sampled by Optuna and pruned by the configured pruner.
    Results land in runs/optuna_studies/<study_name>/: best_config.yaml,
    trials.parquet, curves.parquet, summary.txt and the study database.

    \b
    Examples:
      raysweep run --config configs/quadratic.yaml
      raysweep run --config configs/digits_config.yaml --n-trials 50 --set training.num_epochs=5
      raysweep run --config configs/digits_config.yaml --resume
    """
    from raysweep.tuner import run_sweep, with_overrides

    cfg = with_overrides(load_config(config_path, overrides), n_trials=n_trials, timeout=timeout,
                         study_name=study_name)
    outcome = run_sweep(cfg, resume=resume, address=address, verbose=verbose, echo=_echo)
    resume_cmd = f"raysweep run --config {config_path} --resume" + (
        f" --study-name {study_name}" if study_name else "")
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(outcome.counts.items()))
    click.echo(f"study {outcome.study_name}: {counts} in {outcome.elapsed:.1f} s")
    if outcome.best_number is not None:
        params = ", ".join(f"{k}={v}" for k, v in outcome.best_params.items())
        click.echo(f"best trial #{outcome.best_number}: {cfg.search.metric}={outcome.best_value:.6g} ({params})")
        click.echo(f"best config: {outcome.best_config_path}")
    else:
        click.echo("no trial completed; nothing to write to best_config.yaml")
    click.echo(f"results:     {outcome.study_dir}")
    if outcome.interrupted:
        click.echo(f"interrupted: resume with `{resume_cmd}`", err=True)
        raise SystemExit(130)
    click.echo(f"next:        raysweep visualise --mode search --study-name {outcome.study_name}")


@click.command("demo")
@click.option("--n-trials", type=int, default=20, show_default=True, help="Trials in the demo sweep.")
@click.option("--data-dir", default="data/digits", show_default=True, help="Where the digits images go.")
@click.option("-v", "--verbose", is_flag=True, help="Show Ray's own logs and trial tables.")
def demo(n_trials: int, data_dir: str, verbose: bool) -> None:
    """Try raysweep: digits data, splits, a config, and a ~20-trial sweep.

    Writes scikit-learn's bundled 8x8 handwritten digits (1,797 images) as PNG
    files to data/digits (no network), creates stratified splits and
    configs/digits_demo.yaml, and runs the sweep (study digits_demo) with
    pruning on this machine. Running it again continues (or just shows) the
    same study. The data then suits the usual workflow too:
    raysweep init data/digits --optuna --yes writes configs/digits_config.yaml.
    """
    from raysweep.trainers.demo import prepare_demo
    from raysweep.tuner import preflight, run_sweep, with_overrides

    paths = prepare_demo(data_dir, n_trials=n_trials)
    click.echo(f"data:   {paths.data_dir} ({paths.n_images} images)", err=True)
    click.echo(f"config: {paths.config_path}", err=True)
    cfg = with_overrides(load_config(str(paths.config_path)), n_trials=n_trials)
    try:
        preflight(cfg, resume=False)
        resume = False
    except StudyError:
        resume = True
        click.echo("the demo study exists: continuing it", err=True)
    outcome = run_sweep(cfg, resume=resume, verbose=verbose, echo=_echo)
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(outcome.counts.items()))
    click.echo(f"study {outcome.study_name}: {counts} in {outcome.elapsed:.1f} s")
    if outcome.best_number is not None:
        click.echo(f"best trial #{outcome.best_number}: {cfg.search.metric}={outcome.best_value:.4f}")
        click.echo(f"best config: {outcome.best_config_path}")
    click.echo("next:")
    click.echo(f"  raysweep status {outcome.study_name}")
    click.echo(f"  raysweep visualise --mode search --study-name {outcome.study_name}")
    if outcome.best_config_path is not None:
        click.echo(f"  raysweep train --config {outcome.best_config_path}")
    click.echo(f"  raysweep init {paths.data_dir} --optuna --yes    # your own config and sweep of this data")


COMMANDS: list[click.Command] = [run, demo]
