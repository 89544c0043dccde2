"""The ``raysweep`` command line: thin Click commands.

Commands live in the modules of this package, one module per area; this module
holds the group, the error ladder and the ``ml-*`` aliases. The library raises
:class:`~raysweep.errors.RaysweepError`; here, and only here, it becomes one
line on stderr and an exit code (2 for bad input, 1 for failures, 130 for
Ctrl-C). ``--debug`` or ``RAYSWEEP_DEBUG=1`` shows the traceback instead.

Nothing imported at start-up imports ray, torch or optuna: ``raysweep --help``
stays instant.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from raysweep import __version__, constants
from raysweep.errors import RaysweepError


class RaysweepClickError(click.ClickException):
    """A RaysweepError on its way out of Click, with its exit code."""

    def __init__(self, exc: RaysweepError) -> None:
        super().__init__(str(exc))
        self.exit_code = exc.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"raysweep: error: {self.format_message()}", err=True)


def debug_enabled(ctx: click.Context | None = None) -> bool:
    if os.environ.get(constants.ENV_DEBUG, "") not in ("", "0"):
        return True
    root = ctx.find_root() if ctx is not None else None
    return bool(root and root.obj and root.obj.get("debug"))


# ml-* script name -> the raysweep subcommand it runs (console scripts in pyproject.toml)
ALIASES: dict[str, str] = {
    "ml-search": "run",
    "ml-train": "train",
    "ml-init-config": "init",
    "ml-visualise": "visualise",
    "ml-split": "split",
}


class RaysweepGroup(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and not ctx.info_name and cmd_name in ALIASES:   # started by an ml-* script
            command = super().get_command(ctx, ALIASES[cmd_name])
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RaysweepError as exc:
            if debug_enabled(ctx):
                raise
            raise RaysweepClickError(exc) from None


@click.group(cls=RaysweepGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="raysweep")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Hyperparameter sweeps from one YAML file, on a laptop or a Ray cluster.

    \b
    Typical workflow:
      raysweep demo                                   # try it: digits data, ~20 trials
      raysweep init data/<name> --optuna --yes        # write configs/<name>_config.yaml
      raysweep run --config configs/<name>_config.yaml --n-trials 50
      raysweep visualise --mode search --study-name <name>_optimization
      raysweep train --config runs/optuna_studies/<study>/best_config.yaml
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    from raysweep.cli import cluster, run, train, visualise

    for module in (run, train, visualise, cluster):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``raysweep`` script."""
    cli.main(args=argv, prog_name="raysweep")


def _alias(prog: str) -> None:
    # The group runs nameless and the subcommand under the script's name, so
    # usage and error lines read "ml-split [OPTIONS]", not "ml-split split".
    cli.main(args=[prog, *sys.argv[1:]], prog_name="")


def ml_search() -> None:
    """``ml-search`` = ``raysweep run``."""
    _alias("ml-search")


def ml_train() -> None:
    """``ml-train`` = ``raysweep train``."""
    _alias("ml-train")


def ml_init_config() -> None:
    """``ml-init-config`` = ``raysweep init``."""
    _alias("ml-init-config")


def ml_visualise() -> None:
    """``ml-visualise`` = ``raysweep visualise``."""
    _alias("ml-visualise")


def ml_split() -> None:
    """``ml-split`` = ``raysweep split``."""
    _alias("ml-split")
