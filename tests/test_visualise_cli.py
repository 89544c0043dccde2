"""`raysweep visualise` (search and launch modes) through the CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from raysweep import reporting as report
from raysweep import constants
from raysweep.cli import cli
from tests.study_fixtures import make_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project dir with studies in the default place, runs/optuna_studies/."""
    proj = tmp_path_factory.mktemp("proj")
    make_study(proj / constants.DEFAULT_STUDIES_DIR, "digits_optimization", n_complete=5, n_pruned=2, n_fail=1)
    make_study(proj / constants.DEFAULT_STUDIES_DIR, "live_optimization", n_complete=2, n_pruned=0, n_fail=0,
               n_running=1, finished=False)
    return proj


def run(args: list[str], cwd: Path) -> "click.testing.Result":  # noqa: F821
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args, catch_exceptions=False)
    finally:
        os.chdir(old)


def test_search_writes_plots_into_the_study_dir_and_prints_paths(project):
    res = run(["visualise", "--mode", "search", "--study-name", "digits_optimization"], project)
    assert res.exit_code == 0, res.output
    plots_dir = Path(constants.DEFAULT_STUDIES_DIR) / "digits_optimization" / constants.PLOTS_DIR
    for _, fname, _ in report.PLOTS:
        assert f"  {plots_dir / fname}\n" in res.output
        assert (project / plots_dir / fname).stat().st_size > 2000
    assert f"report: {plots_dir / constants.REPORT_FILE}" in res.output
    assert res.output.startswith("study digits_optimization: 8 trials (of 8): COMPLETE 5, PRUNED 2, FAIL 1\n")


def test_search_on_a_running_sweep(project, tmp_path):
    res = run(["visualise", "--study_name", "live_optimization", "--output-dir", str(tmp_path)], project)
    assert res.exit_code == 0, res.output
    assert "(still running)" in res.output and "note: the sweep is still running" in res.output
    assert (tmp_path / constants.REPORT_FILE).is_file()


def test_studies_dir_option(project, tmp_path):
    res = run(["visualise", "--study-name", "digits_optimization", "--studies-dir",
               str(project / constants.DEFAULT_STUDIES_DIR), "--output-dir", str(tmp_path / "o"),
               "--params", "lr,batch_size"], tmp_path)
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o").glob("*.png"))) == len(report.PLOTS)


@pytest.mark.parametrize("args, message", [
    (["--study-name", "nope"],
     "raysweep: error: no study named 'nope' in runs/optuna_studies; "
     "existing studies: digits_optimization, live_optimization\n"),
    ([], "raysweep: error: --mode search needs --study-name NAME; studies in runs/optuna_studies: "
         "digits_optimization, live_optimization\n"),
    (["--study-name", "digits_optimization", "--params", "nope"],
     "raysweep: error: --params: 'nope' is not a parameter of this study; "
     "the study has: optimizer.lr, training.batch_size, optimizer.name\n"),
    (["--mode", "launch"], "raysweep: error: --mode launch needs --run_dir DIR (or --study-name NAME for its "
                           "tensorboard/ dir)\n"),
])
def test_usage_errors_exit_2_with_one_line(project, args, message):
    res = run(["visualise", *args], project)
    assert res.exit_code == 2
    assert res.output == message


def test_unknown_study_when_there_are_none(tmp_path):
    res = run(["visualise", "--study-name", "x"], tmp_path)
    assert res.exit_code == 2
    assert "there are no studies there yet" in res.output


def test_launch_without_tensorboard_prints_the_commands(project, monkeypatch):
    monkeypatch.setattr("raysweep.tb_hparams.tensorboard_command", lambda logdir, port=6006: None)
    res = run(["visualise", "--mode", "launch", "--run_dir", str(project)], project)
    assert res.exit_code == 1
    assert res.output == (f"raysweep: error: TensorBoard is not installed; install and start it with: "
                          f"pip install tensorboard && tensorboard --logdir {project} --port 6006\n")


def test_launch_starts_tensorboard_on_the_run_dir(project, monkeypatch):
    calls = []
    monkeypatch.setattr("raysweep.tb_hparams.tensorboard_command",
                        lambda logdir, port=6006: ["tensorboard", "--logdir", str(logdir), "--port", str(port)])
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    tb = project / constants.DEFAULT_STUDIES_DIR / "digits_optimization" / "tensorboard"
    tb.mkdir(exist_ok=True)
    res = run(["visualise", "--mode", "launch", "--study-name", "digits_optimization", "--port", "6010"], project)
    assert res.exit_code == 0, res.output
    assert calls == [["tensorboard", "--logdir", str(Path(constants.DEFAULT_STUDIES_DIR) / "digits_optimization"
                                                     / "tensorboard"), "--port", "6010"]]
    assert "http://localhost:6010/" in res.output


def test_tensorboard_command_detection(monkeypatch, tmp_path):
    from raysweep import tb_hparams

    monkeypatch.setattr("shutil.which", lambda name: "/opt/bin/tensorboard" if name == "tensorboard" else None)
    assert tb_hparams.tensorboard_command(tmp_path, 7000) == ["/opt/bin/tensorboard", "--logdir", str(tmp_path),
                                                              "--port", "7000"]
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert tb_hparams.tensorboard_command(tmp_path) is None


def test_help_lists_the_commands_and_stays_light():
    res = CliRunner().invoke(cli, ["--help"])
    assert "visualise" in res.output and "status" in res.output
    code = ("import sys; from raysweep.cli import main\n"
            "try:\n    main(['visualise', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('optuna', 'matplotlib', 'pandas', 'pyarrow', 'ray', 'torch', 'tensorboardX')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--studies-dir" in out and "--run_dir" in out
    assert "HEAVY []" in out


def test_ml_visualise_alias(project, monkeypatch):
    from raysweep.cli import ml_visualise

    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["ml-visualise", "--study-name", "nope"])
    with pytest.raises(SystemExit) as exc:
        ml_visualise()
    assert exc.value.code == 2
