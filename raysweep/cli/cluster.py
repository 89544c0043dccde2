"""``raysweep submit``, ``raysweep logs`` and ``raysweep stop``: sweeps as Ray jobs.

Thin commands over :mod:`raysweep.jobs`. The cluster's Jobs API is reached at
http://127.0.0.1:8265 through ``ray dashboard clusters/<cloud>.yaml`` (an SSH
port-forward); see docs/cluster.md.
"""
from __future__ import annotations

import click

from raysweep.jobs import DEFAULT_RESULTS_DIR

_ADDRESS_HELP = ("Ray dashboard / Jobs API URL (default: RAY_ADDRESS if it is http(s)://, "
                 "else http://127.0.0.1:8265, the local end of `ray dashboard FILE`).")
_CLUSTER_HELP = ("The `ray up` cluster file: submit to 127.0.0.1 at its dashboard port and, when "
                 "that is unreachable, say which `ray dashboard FILE` to start.")


def _target_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--cluster", "cluster", type=click.Path(exists=True, dir_okay=False),
                     default=None, help=_CLUSTER_HELP)(f)
    f = click.option("--address", default=None, metavar="URL", help=_ADDRESS_HELP)(f)
    return f


@click.command("submit")
@click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The sweep config; validated here before anything is submitted.")
@_target_options
@click.option("--working-dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory shipped with the job (your code and the config); runs/, .git and "
                   "data caches stay behind, as do .gitignore/.rayignore entries.")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Another gitignore-style pattern to leave out of the upload (repeatable).")
@click.option("--results-dir", default=DEFAULT_RESULTS_DIR, show_default=True,
              help="Where relative output paths of the config land on the head "
                   "(e.g. runs/optuna_studies -> ~/raysweep/runs/optuna_studies).")
@click.option("--follow", "-f", is_flag=True, help="Stream the job's logs until it ends.")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- RUN OPTIONS]")
def submit(config_path: str, address: str | None, cluster: str | None, working_dir: str,
           excludes: tuple[str, ...], results_dir: str, follow: bool, run_args: tuple[str, ...]) -> None:
    """Run a sweep on a Ray cluster as a Ray job.

    The job runs `raysweep run --config FILE [RUN OPTIONS]` on the head node,
    so the laptop can disconnect once it is submitted.

    \b
    Examples:
      ray dashboard clusters/aws.yaml        # in another terminal: the SSH tunnel
      raysweep submit --config configs/digits_config.yaml --cluster clusters/aws.yaml
      raysweep submit --config configs/digits_config.yaml -- --n-trials 100 --set training.num_epochs=5
      raysweep logs raysubmit_XXXX --follow
    """
    from raysweep import jobs

    if run_args and run_args[0] == "--":
        run_args = run_args[1:]
    _check_run_options(config_path, run_args)
    done = jobs.submit(config_path, run_args, address=address, cluster=cluster, working_dir=working_dir,
                       excludes=excludes, results_dir=results_dir)
    for note in done.spec.notes:
        click.echo(f"raysweep: note: {note}", err=True)
    target = f" --cluster {cluster}" if cluster else (f" --address {done.address}" if address else "")
    click.echo(f"submitted job {done.job_id} to {done.address}")
    click.echo(f"runs:     {done.spec.entrypoint}")
    click.echo(f"results:  {done.spec.results_dir} on the head (ray.storage_path for checkpoints)")
    click.echo(f"follow:   raysweep logs {done.job_id} --follow{target}")
    click.echo(f"stop:     raysweep stop {done.job_id}{target}")
    if follow:
        _follow(done.job_id, address=done.address, cluster=cluster)


def _check_run_options(config_path: str, run_args: tuple[str, ...]) -> None:
    """Parse the options meant for `raysweep run` here, so a typo fails before submitting."""
    from raysweep.cli.run import run

    try:
        run.make_context("raysweep run", ["--config", config_path, *run_args])
    except click.exceptions.Exit:  # --help among the run options
        raise click.UsageError("`raysweep run --help` lists the run options") from None
    except click.UsageError as exc:
        raise click.UsageError(f"run options after --: {exc.format_message()}") from None


def _follow(job_id: str, *, address: str | None, cluster: str | None) -> None:
    from raysweep import jobs

    try:
        state = jobs.logs(job_id, follow=True, address=address, cluster=cluster,
                          echo=lambda text: click.echo(text, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the job keeps running (raysweep stop {job_id} stops it)", err=True)
        raise SystemExit(130) from None
    click.echo(f"job {job_id}: {state}", err=True)
    if state != "SUCCEEDED":
        raise SystemExit(1)


@click.command("logs")
@click.argument("job_id")
@_target_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends (Ctrl-C stops "
                                                   "following, not the job).")
def logs(job_id: str, address: str | None, cluster: str | None, follow: bool) -> None:
    """Print the logs of a submitted sweep (a Ray job id such as raysubmit_XXXX)."""
    from raysweep import jobs

    if follow:
        _follow(job_id, address=address, cluster=cluster)
        return
    state = jobs.logs(job_id, address=address, cluster=cluster, echo=lambda text: click.echo(text, nl=False))
    click.echo(f"job {job_id}: {state}", err=True)


@click.command("stop")
@click.argument("job_id")
@_target_options
def stop(job_id: str, address: str | None, cluster: str | None) -> None:
    """Stop a submitted sweep; finished trials stay in the study (resume with --resume)."""
    from raysweep import jobs

    if jobs.stop(job_id, address=address, cluster=cluster):
        click.echo(f"stopping job {job_id}")
    else:
        click.echo(f"job {job_id} had already finished: {jobs.job_status(job_id, address=address, cluster=cluster)}")


COMMANDS: list[click.Command] = [submit, logs, stop]
