"""plots.py (PNGs + report.html from a study dir) and tb_hparams.py (TensorBoard HParams event files)."""
from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest

from raysweep import reporting as report
from raysweep import constants, plots, studies, tb_hparams
from tests.study_fixtures import make_study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG; fails if it is not one."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_valid_plots(result: plots.VisualiseResult) -> None:
    assert [p.path.name for p in result.plots] == [f for _, f, _ in report.PLOTS]
    for p in result.plots:
        data = p.path.read_bytes()
        w, h = png_size(data)
        assert len(data) > 2000, p.path
        assert 300 <= w <= 3000 and 100 <= h <= 3000, (p.path.name, w, h)


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    make_study(root, "many", n_complete=10, n_pruned=3, n_fail=2)
    make_study(root, "one", n_complete=1, n_pruned=0, n_fail=0)
    make_study(root, "zero", n_complete=0, n_pruned=0, n_fail=0, finished=False)
    make_study(root, "live", n_complete=3, n_pruned=1, n_fail=1, n_running=2, finished=False,
               workers=("10.0.0.1:11", "10.0.0.2:22"))
    return root


@pytest.fixture(scope="module")
def many(root) -> plots.VisualiseResult:
    return plots.visualise_study(studies.find_study("many", root))


def test_every_plot_is_a_png_of_sensible_size(many, root):
    assert many.out_dir == root / "many" / constants.PLOTS_DIR
    assert_valid_plots(many)
    assert all(p.note is None and p.warnings == () for p in many.plots)
    assert many.notes == []


def test_report_embeds_every_plot_and_lists_every_trial(many):
    page = many.report.read_text(encoding="utf-8")
    assert many.report.name == constants.REPORT_FILE
    assert embedded_pngs(page) == [p.path.read_bytes() for p in many.plots]
    numbers = [int(n) for n in re.findall(r"data-trial='(\d+)'", page)]
    assert sorted(numbers) == list(range(15))
    best = report.best_trial(many.trials, "maximize")
    assert numbers[0] == best.number and "<tr class='best' data-trial" in page
    for state, n in (("COMPLETE", 10), ("PRUNED", 3), ("FAIL", 2)):
        assert f"{state}</th>" in page
    assert "15 trials (of 15): COMPLETE 10, PRUNED 3, FAIL 2" in page
    assert "# best trial" in page                     # best_config.yaml, as written by the sweep
    assert "sweep wall time" in page and "per trial: mean / median" in page
    assert "RuntimeError: CUDA out of memory" in page
    assert "<script" not in page and "http" not in page.split("<body>")[1]   # self-contained


def test_no_figures_left_open(many):
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_single_trial_gets_notes_not_empty_plots(root, tmp_path):
    result = plots.visualise_study(studies.find_study("one", root), output_dir=tmp_path / "out")
    assert result.out_dir == tmp_path / "out" and result.report.parent == tmp_path / "out"
    assert_valid_plots(result)
    noted = {p.key for p in result.plots if p.note}
    assert noted == {"importances", "parallel", "slice", "contour"}
    page = result.report.read_text()
    assert "This plot needs at least 2 completed trials; the study has 1 so far." in page
    assert len(embedded_pngs(page)) == len(report.PLOTS)


def test_zero_trials(root, tmp_path):
    result = plots.visualise_study(studies.find_study("zero", root), output_dir=tmp_path)
    assert_valid_plots(result)
    assert all(p.note for p in result.plots)
    assert "No completed trial yet" in result.report.read_text()


def test_running_sweep_is_read_live(root, tmp_path):
    info = studies.find_study("live", root)
    assert info.running and not info.trials_file.exists()
    result = plots.visualise_study(info, output_dir=tmp_path)
    assert_valid_plots(result)
    states = [t.state for t in result.trials]
    assert states.count("RUNNING") == 2 and len(states) == 7
    assert result.notes[0] == "the sweep is still running: this is a snapshot"
    tl = report.timeline(result.trials)
    assert [r.label for r in tl.rows] == ["10.0.0.1:11", "10.0.0.2:22"]    # one row per worker
    assert sum(len(r.bars) for r in tl.rows) == 7
    page = result.report.read_text()
    assert "RUNNING" in page and "read live from the Optuna storage" in page


def test_params_option_limits_the_parameter_plots(root, tmp_path):
    result = plots.visualise_study(studies.find_study("many", root), output_dir=tmp_path, params="lr,name")
    assert_valid_plots(result)
    with pytest.raises(Exception, match="'nope' is not a parameter"):
        plots.visualise_study(studies.find_study("many", root), output_dir=tmp_path, params="nope")


def test_finished_study_with_unreachable_storage_plots_from_trials_parquet(root, tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv(studies.ENV_STORAGE, raising=False)
    shutil.copytree(root / "many", tmp_path / "many", ignore=shutil.ignore_patterns("study.db", "plots"))
    sweep = tmp_path / "many" / constants.SWEEP_FILE
    data = json.loads(sweep.read_text())
    data["storage"] = "postgresql://me:***@db.example:5432/optuna"
    sweep.write_text(json.dumps(data))
    result = plots.visualise_study(studies.find_study("many", tmp_path))
    assert_valid_plots(result)
    assert all(p.note is None for p in result.plots)
    page = result.report.read_text()
    assert "storage unreachable: plots from the file" in page
    assert "me:***@db.example" in page and len(re.findall(r"data-trial=", page)) == 15


def test_timeline_figure_alone(tmp_path):
    import datetime as dt

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    trials = [studies.TrialRecord(number=i, state=s, worker=f"n{i % 3}:1", node=f"n{i % 3}",
                                  start_time=t0 + dt.timedelta(seconds=10 * i),
                                  end_time=t0 + dt.timedelta(seconds=10 * i + 25))
              for i, s in enumerate(["COMPLETE", "PRUNED", "FAIL", "COMPLETE", "RUNNING", "COMPLETE"])]
    path = plots.save_figure(plots.draw_timeline(report.timeline(trials)), tmp_path / "t.png")
    w, h = png_size(path.read_bytes())
    assert w > h > 100


# --- TensorBoard HParams ---------------------------------------------------------

def read_events(path: Path) -> list:
    """Events of a TFRecord event file (length, crc, data, crc per record)."""
    from tensorboardX.proto.event_pb2 import Event

    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event()
        event.ParseFromString(data[pos + 12:pos + 12 + length])
        out.append(event)
        pos += 12 + length + 4
    return out


def summaries(run_dir: Path) -> list:
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    return [(e.step, v) for e in read_events(files[0]) if e.HasField("summary") for v in e.summary.value]


def hparams_data(value):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    assert value.metadata.plugin_data.plugin_name == "hparams"
    data = HParamsPluginData()
    data.ParseFromString(value.metadata.plugin_data.content)
    return data


TRIALS = [
    {"number": 0, "state": "COMPLETE", "params": {"optimizer.lr": 0.01, "training.batch_size": 32,
                                                  "optimizer.name": "sgd", "model.pretrained": False},
     "value": 0.9, "final_metric": 0.88, "best_metric": 0.9, "epochs": 5,
     "intermediate": {0: 0.5, 1: 0.7, 2: 0.8, 3: 0.88, 4: 0.9}},
    {"number": 3, "state": "PRUNED", "params": {"optimizer.lr": 0.1, "training.batch_size": 64,
                                                "optimizer.name": "adam", "model.pretrained": True},
     "value": None, "final_metric": 0.4, "best_metric": 0.45, "epochs": 2},
    {"number": 4, "state": "FAIL", "params": {"optimizer.lr": 0.001, "optimizer.name": None},
     "value": None, "final_metric": None, "best_metric": None, "epochs": None},
]


def test_write_hparams_round_trip(tmp_path):
    logdir = tb_hparams.write_hparams(tmp_path, TRIALS, "val_acc")
    assert logdir == tmp_path / "tensorboard"
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == ["trial_0", "trial_3", "trial_4"]

    (root_value,) = [v for _, v in summaries(logdir)]
    exp = hparams_data(root_value).experiment
    assert root_value.tag == tb_hparams.EXPERIMENT_TAG
    infos = {h.name: h for h in exp.hparam_infos}
    assert sorted(infos) == ["model.pretrained", "optimizer.lr", "optimizer.name", "training.batch_size"]
    assert (infos["optimizer.lr"].domain_interval.min_value, infos["optimizer.lr"].domain_interval.max_value) \
        == (0.001, 0.1)
    assert list(infos["optimizer.name"].domain_discrete.values[i].string_value for i in range(2)) == ["adam", "sgd"]
    assert [m.name.tag for m in exp.metric_infos] == ["val_acc", "val_acc/final", "val_acc/best", "epochs"]

    got = summaries(logdir / "trial_0")
    start = hparams_data(got[0][1]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.01
    assert start.hparams["training.batch_size"].number_value == 32
    assert start.hparams["optimizer.name"].string_value == "sgd"
    assert start.hparams["model.pretrained"].bool_value is False
    scalars = {(v.tag, step): v.simple_value for step, v in got if v.HasField("simple_value")}
    assert scalars[("val_acc", 5)] == pytest.approx(0.9)
    assert scalars[("val_acc/final", 5)] == pytest.approx(0.88)
    assert scalars[("val_acc/best", 5)] == pytest.approx(0.9)
    assert scalars[("epochs", 5)] == 5
    assert [scalars[("val_acc/epoch", e)] for e in range(5)] == pytest.approx([0.5, 0.7, 0.8, 0.88, 0.9])
    from tensorboardX.proto.api_pb2 import Status

    assert hparams_data(got[-1][1]).session_end_info.status == Status.Value("STATUS_SUCCESS")

    pruned = summaries(logdir / "trial_3")
    assert "val_acc" not in {v.tag for _, v in pruned}          # no objective for a pruned trial
    failed = summaries(logdir / "trial_4")
    assert hparams_data(failed[-1][1]).session_end_info.status == Status.Value("STATUS_FAILURE")
    assert "optimizer.name" not in hparams_data(failed[0][1]).session_start_info.hparams


def test_write_hparams_keeps_torch_out_of_the_driver(tmp_path):
    """The sweep's driver writes HParams at the end; importing torch there costs seconds."""
    import subprocess
    import sys

    code = ("import json, sys; from pathlib import Path; from raysweep import tb_hparams; "
            f"tb_hparams.write_hparams(Path({str(tmp_path)!r}), json.loads(sys.argv[1]), 'val_acc'); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "import torch; print(torch.tensor([1.0]).sum().item())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(TRIALS)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1.0"                      # torch still imports afterwards
    assert summaries(tmp_path / "tensorboard" / "trial_0")


def _event_files(run_dir):
    return sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))


def test_write_hparams_again_writes_only_what_changed(tmp_path):
    logdir = tb_hparams.write_hparams(tmp_path, TRIALS, "val_acc")
    before = {n: _event_files(logdir / f"trial_{n}") for n in (0, 3, 4)}
    assert all(len(files) == 1 for files in before.values())
    # a resumed sweep: trial 0 is unchanged, trial 3 ended differently, trial 4 is gone
    changed = dict(TRIALS[1], state="COMPLETE", value=0.5)
    logdir = tb_hparams.write_hparams(tmp_path, [TRIALS[0], changed], "val_acc")
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == ["trial_0", "trial_3"]
    assert _event_files(logdir / "trial_0") == before[0]            # not rewritten
    assert len(_event_files(logdir / "trial_3")) == 1               # rewritten, one session only
    from tensorboardX.proto.api_pb2 import Status

    got = summaries(logdir / "trial_3")
    assert hparams_data(got[-1][1]).session_end_info.status == Status.Value("STATUS_SUCCESS")


def test_write_hparams_from_a_studys_records(root, tmp_path):
    info = studies.find_study("many", root)
    trials = [t.to_dict() for t in studies.load_trials(info)]
    logdir = tb_hparams.write_hparams(tmp_path, trials, info.metric)
    assert len([p for p in logdir.iterdir() if p.is_dir()]) == 15
