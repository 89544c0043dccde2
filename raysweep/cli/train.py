"""``raysweep train`` / ``split`` / ``init``: the built-in trainer's commands.

Thin commands: parse, call one library function in :mod:`raysweep.trainers`,
print. Only click is imported at start-up.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import click

from raysweep.errors import UsageError


class _Progress:
    """A per-epoch progress bar on a terminal, one plain line per epoch otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.epoch = 0
        self.total = 0

    def start(self, run_dir: Path, epoch: int, total: int = 0) -> None:
        self.epoch = epoch
        verb = "Resuming" if epoch else "Training"
        click.echo(f"{verb} in {run_dir} from epoch {epoch}")

    def batch(self, done: int, total: int) -> None:
        if not self.tty:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"epoch {self.epoch}", unit="batch", leave=False,
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def end_epoch(self, metrics: Mapping[str, float], seconds: float) -> None:
        from raysweep.trainers.rundir import format_epoch

        if self.bar is not None:
            self.bar.close()
            self.bar = None
        click.echo(format_epoch(metrics, seconds))
        self.epoch = int(metrics["epoch"]) + 1


@click.command("train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Config YAML (optional with --resume: the run's config.yaml).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override optimizer.lr.")
@click.option("--batch_size", "--batch-size", "batch_size", type=click.IntRange(min=1),
              help="Override training.batch_size.")
@click.option("--num_epochs", "--num-epochs", "num_epochs", type=click.IntRange(min=1),
              help="Override training.num_epochs.")
@click.option("--fold", type=click.IntRange(min=0), help="Override data.fold.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable).")
@click.option("--resume", "resume", type=click.Path(exists=True, file_okay=False),
              help="Continue RUN_DIR from its weights/last.pt, in the same directory.")
def train_cmd(config_path: str | None, lr: float | None, batch_size: int | None, num_epochs: int | None,
              fold: int | None, sets: tuple[str, ...], resume: str | None) -> None:
    """Train one fold with the built-in trainer; writes runs/<dataset>_<overrides>_fold_<k>/.

    The run directory is named after the data set, batch size, lr, any other
    override and the fold (runs/digits_batch_32_lr_0.01_fold_0). It holds
    weights/best.pt and weights/last.pt, TensorBoard events, train.log,
    summary.txt (best epoch, val metrics, test accuracy of the best weights),
    metadata.json (command, git commit, seed, versions, host, device) and the
    resolved config.yaml. A config with training.entrypoint runs that function.

    \b
    Examples:
      raysweep train --config configs/digits_config.yaml --lr 0.005
      raysweep train --config runs/optuna_studies/digits_optimization/best_config.yaml
      raysweep train --config configs/digits_config.yaml --fold 2 --set training.mixed_precision=true
      raysweep train --resume runs/digits_batch_32_lr_0.01_fold_0 --num_epochs 20
    """
    from raysweep.trainers.standalone import train_command

    progress = _Progress()
    result = train_command(config_path, lr=lr, batch_size=batch_size, num_epochs=num_epochs, fold=fold,
                           sets=list(sets), resume=resume, argv=sys.argv, on_batch=progress.batch,
                           on_epoch=progress.end_epoch, on_start=progress.start)
    if result is None:
        return
    click.echo(f"Best epoch {result.best_epoch} ({result.metric} {result.best_value:.4f}); "
               f"test_acc {result.test_acc:.4f}")
    click.echo(f"Run directory: {result.run_dir}")


@click.command("split")
@click.option("--raw-data", "raw_data", required=True, type=click.Path(exists=True, file_okay=False),
              help="data/<name>/raw with one folder of images per class.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Train/val folds (each image outside the test split is validated once).")
@click.option("--test-fraction", "test_fraction", type=click.FloatRange(0, 1, max_open=True), default=0.15,
              show_default=True, help="Share of each class held out in test.txt, shared by all folds.")
@click.option("--seed", type=int, default=42, show_default=True, help="The same seed gives the same splits.")
@click.option("--force", is_flag=True, help="Overwrite existing splits.")
def split_cmd(raw_data: str, folds: int, test_fraction: float, seed: int, force: bool) -> None:
    """Write stratified folds and a test split to data/<name>/splits/.

    Writes fold_<k>_train.txt, fold_<k>_val.txt, test.txt (paths relative to
    raw/) and split_info.json. Every class keeps its share in each file.

    \b
    Example:
      raysweep split --raw-data data/digits/raw --folds 5
    """
    from raysweep.trainers.split import make_splits

    r = make_splits(raw_data, folds, test_fraction, seed, force=force)
    click.echo(f"Wrote {r.folds} folds ({r.n_trainval} train/val images) and a test split "
               f"({r.n_test} images) over {len(r.classes)} classes to {r.splits_dir}")


@click.command("init")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--optuna", is_flag=True,
              help="Add a search block (the default search space, TPE sampler, median pruner) and a ray block.")
@click.option("--yes", "-y", is_flag=True, help="Accept every default, creating missing splits; never prompt.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Where to write the config.  [default: configs/<name>_config.yaml]")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def init_cmd(data_dir: str, optuna: bool, yes: bool, output: str | None, force: bool) -> None:
    """Inspect a data set and write a config for it.

    DATA_DIR is data/<name> (or its raw/ folder) with one folder of images per
    class. init reports the classes, counts and image size, offers to create
    stratified splits when there are none, asks for the model, image size,
    batch size and epochs (defaults sized for the data) and writes
    configs/<name>_config.yaml. With --optuna the config gets a search block
    (lr, batch size, momentum, step size and gamma; study <name>_optimization).
    An existing file is kept unless --force (or you confirm); one that already
    holds exactly what init would write is fine.

    \b
    Examples:
      raysweep init data/digits --optuna --yes
      raysweep init data/flowers --output configs/flowers_small.yaml
    """
    from raysweep.trainers import init_config as ic
    from raysweep.trainers.models import BUILTIN_MODELS, torchvision_available
    from raysweep.trainers.split import make_splits

    info = ic.inspect_dataset(data_dir)
    click.echo(info.describe())
    out = Path(output) if output else ic.default_output(info)
    # decided before anything is written: a refused config leaves no new splits behind
    if out.exists() and not force:
        if yes:
            default_text = ic.render(ic.build_config(info, optuna=optuna), info)
            if not (info.has_splits and ic.same_content(out, default_text)):
                raise UsageError(f"{out} exists; pass --force to overwrite it")
        elif click.confirm(f"{out} exists. Overwrite?", default=False):
            force = True
        else:
            raise UsageError(f"{out} exists; not overwritten")
    if not info.has_splits:
        if yes or click.confirm("No splits yet. Create stratified folds and a test split now?", default=True):
            folds = 5 if yes else click.prompt("Folds", default=5, type=click.IntRange(min=2))
            r = make_splits(info.data_dir / "raw", folds, 0.15, 42)
            click.echo(f"Wrote {r.folds} folds and a test split to {r.splits_dir}")
            info = ic.inspect_dataset(data_dir)
        else:
            click.echo(f"Create them later: raysweep split --raw-data {info.data_dir / 'raw'} --folds 5")
    s = ic.suggest(info)
    choices: dict[str, Any] = {}
    if not yes:
        models = list(BUILTIN_MODELS) + (["resnet18"] if torchvision_available() else [])
        choices["model"] = click.prompt("Model", default=s["model"], type=click.Choice(models))
        choices["image_size"] = click.prompt("Image size (pixels)", default=s["image_size"],
                                             type=click.IntRange(min=1))
        choices["batch_size"] = click.prompt("Batch size", default=s["batch_size"], type=click.IntRange(min=1))
        choices["num_epochs"] = click.prompt("Epochs", default=s["num_epochs"], type=click.IntRange(min=1))
        if optuna:
            choices["n_trials"] = click.prompt("Trials", default=s["n_trials"], type=click.IntRange(min=1))
    text = ic.render(ic.build_config(info, optuna=optuna, **choices), info)
    if ic.same_content(out, text):
        click.echo(f"{out} is up to date")
    else:
        ic.write_config(out, text, force=force)
        click.echo(f"Wrote {out}")
    click.echo(f"Next: raysweep {'run' if optuna else 'train'} --config {out}")


COMMANDS: list[click.Command] = [train_cmd, split_cmd, init_cmd]
