#!/usr/bin/env python
"""Regenerate the images of docs/visualise.md from a study.

    python scripts/make_docs_plots.py digits_optimization
    python scripts/make_docs_plots.py my_study --studies-dir runs/optuna_studies --images-dir docs/images

Runs ``raysweep visualise --mode search`` on the study, then copies the plots
the page shows into ``docs/images/visualise_<plot>.png``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysweep import constants  # noqa: E402

#: plot files docs/visualise.md embeds (names as raysweep.reporting.PLOTS writes them)
DOC_PLOTS = (
    "optimization_history.png",
    "param_importances.png",
    "parallel_coordinate.png",
    "slice.png",
    "intermediate_values.png",
    "contour.png",
    "timeline.png",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_name")
    parser.add_argument("--studies-dir", default=constants.DEFAULT_STUDIES_DIR)
    parser.add_argument("--images-dir", default=str(ROOT / "docs" / "images"))
    args = parser.parse_args(argv)

    from raysweep.cli import cli

    out_dir = Path(args.studies_dir) / args.study_name / constants.PLOTS_DIR
    try:
        cli.main(args=["visualise", "--mode", "search", "--study-name", args.study_name,
                       "--studies-dir", args.studies_dir, "--output-dir", str(out_dir)],
                 prog_name="raysweep", standalone_mode=False)
    except Exception as exc:  # click raises our one-line error as ClickException here
        show = getattr(exc, "show", None)
        if show:
            show()
        else:
            print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1) or 1)
    images = Path(args.images_dir)
    images.mkdir(parents=True, exist_ok=True)
    for name in DOC_PLOTS:
        dst = images / f"visualise_{name}"
        shutil.copyfile(out_dir / name, dst)
        print(f"copied {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
