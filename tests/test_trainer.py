"""The built-in trainer: models, `raysweep train` run directory, resume, seeds, OOM, sweeps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from raysweep.cli import cli
from raysweep.config import load_config
from raysweep.errors import ConfigError, TrainerError
from raysweep.trainers import engine
from raysweep.trainers.demo import write_synthetic
from raysweep.trainers.models import BUILTIN_MODELS, build_model, torchvision_available
from raysweep.trainers.split import make_splits
from raysweep.trial import LocalSession, session


@pytest.fixture
def project(in_tmp):
    """A tiny data set (3 classes x 12 images, 8x8) and configs/tiny.yaml, cwd = project."""
    raw = write_synthetic(in_tmp / "data" / "tiny", classes=3, per_class=12, size=8)
    make_splits(raw, folds=2, test_fraction=0.25, seed=0)
    cfg = {
        "seed": 3,
        "data": {"dataset_name": "tiny", "data_dir": "data/tiny", "image_size": 8, "augment": True},
        "model": {"name": "tiny_net", "dropout": 0.1},
        "training": {"batch_size": 8, "num_epochs": 2, "device": "cpu"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5},
    }
    (in_tmp / "configs").mkdir()
    (in_tmp / "configs" / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return in_tmp


def _config(*overrides: str) -> dict:
    return load_config("configs/tiny.yaml", list(overrides), require_search=False).to_dict()


def _train(*args: str):
    res = CliRunner().invoke(cli, ["train", "--config", "configs/tiny.yaml", *args])
    return res


# -- models -------------------------------------------------------------------

@pytest.mark.parametrize("name", BUILTIN_MODELS)
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 16)])
def test_model_forward_shape(name, channels, size):
    import torch

    model = build_model(name, num_classes=5, dropout=0.2, in_channels=channels, image_size=size)
    assert model(torch.zeros(4, channels, size, size)).shape == (4, 5)


@pytest.mark.skipif(torchvision_available(), reason="torchvision is installed")
def test_torchvision_model_without_torchvision_is_a_clear_error():
    with pytest.raises(ConfigError, match="torchvision.*not importable"):
        build_model("resnet18", 3)


def test_bad_dropout_is_a_config_error():
    with pytest.raises(ConfigError, match="model.dropout"):
        build_model("mlp", 3, dropout=1.5)


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("sched,lrs", [("step", [0.1, 0.1, 0.05]), ("cosine", None), ("none", [0.1, 0.1, 0.1])])
def test_optimizers_and_schedulers(opt, sched, lrs):
    import torch

    p = [torch.nn.Parameter(torch.zeros(1))]
    o = engine.build_optimizer(iter(p), {"name": opt, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01})
    s = engine.build_scheduler(o, {"name": sched, "step_size": 2, "gamma": 0.5, "T_max": None}, 3)
    seen = []
    for _ in range(3):
        seen.append(o.param_groups[0]["lr"])
        o.step()
        if s is not None:
            s.step()
    if lrs is not None:
        assert seen == pytest.approx(lrs)
    else:
        assert seen[0] > seen[1] > seen[2]


@pytest.mark.parametrize("spec,ok", [("auto", True), ("cpu", True), ("cuda", False), ("gpu", False)])
def test_pick_device(spec, ok):
    import torch

    if ok:
        assert engine.pick_device(spec).type in ("cpu", "cuda")
    elif spec == "cuda" and torch.cuda.is_available():
        pytest.skip("has CUDA")
    else:
        with pytest.raises(ConfigError, match="training.device"):
            engine.pick_device(spec)


# -- raysweep train -------------------------------------------------------------

def test_train_writes_the_full_run_dir(project):
    res = _train("--lr", "0.01", "--batch_size", "8")
    assert res.exit_code == 0, res.output
    run = project / "runs" / "tiny_batch_8_lr_0.01_fold_0"
    assert f"Run directory: runs/tiny_batch_8_lr_0.01_fold_0" in res.output
    assert "epoch 1: train_loss" in res.output                         # plain lines when not a terminal
    for f in ("weights/best.pt", "weights/last.pt", "train.log", "summary.txt", "metadata.json", "config.yaml"):
        assert (run / f).is_file(), f
    assert list(run.glob("events.out.tfevents.*"))

    last = engine.load_state(run / "weights" / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "history"} <= set(last)
    assert last["epoch"] == 1 and [h["epoch"] for h in last["history"]] == [0, 1]
    assert last["history"][1]["lr"] == pytest.approx(0.005)             # step scheduler, gamma 0.5

    summary = dict(line.split(":", 1) for line in (run / "summary.txt").read_text().splitlines())
    for key in ("best_epoch", "best_val_acc", "final_val_acc", "final_val_loss", "test_acc"):
        assert key in summary
    assert 0.0 <= float(summary["test_acc"]) <= 1.0

    meta = json.loads((run / "metadata.json").read_text())
    assert meta["seed"] == 3 and meta["device"] == "cpu" and meta["host"]
    assert set(meta["versions"]) >= {"python", "torch", "ray", "optuna"}
    assert "command" in meta and "git" in meta
    log = (run / "train.log").read_text()
    assert "epoch 0:" in log and "epoch 1:" in log and "test_acc" in log

    scalars = _read_scalars(next(run.glob("events.out.tfevents.*")))
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "accuracy/test"} <= set(scalars)
    assert [step for step, _ in scalars["accuracy/val"]] == [0, 1]


def _read_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Parse a TensorBoard event file (TFRecord framing) with tensorboardX's protobufs."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_train_resume_continues_at_the_next_epoch(project):
    assert _train("--num_epochs", "3").exit_code == 0
    full = engine.load_state(project / "runs" / "tiny_batch_8_lr_0.05_epochs_3_fold_0" / "weights" / "last.pt")
    res = _train()
    assert res.exit_code == 0, res.output
    run = project / "runs" / "tiny_batch_8_lr_0.05_fold_0"
    res = CliRunner().invoke(cli, ["train", "--resume", str(run), "--num_epochs", "3"])
    assert res.exit_code == 0, res.output
    assert "from epoch 2" in res.output and "epoch 2: train_loss" in res.output
    assert "epoch 0: train_loss" not in res.output
    last = engine.load_state(run / "weights" / "last.pt")
    assert last["epoch"] == 2 and len(last["history"]) == 3
    # resuming restores RNG state too: the same as three uninterrupted epochs
    assert [h["val_loss"] for h in last["history"]] == pytest.approx([h["val_loss"] for h in full["history"]])
    assert json.loads((run / "metadata.json").read_text())["resumed_from_epoch"] == 2
    res = CliRunner().invoke(cli, ["train", "--resume", str(run), "--num_epochs", "3"])
    assert res.exit_code == 2 and "already has 3 of 3 epochs" in res.output


def test_same_seed_same_metrics(project):
    def history(*ov):
        with session(LocalSession(quiet=True)):
            from raysweep.trainers.standalone import run_standalone
            r = run_standalone(_config(*ov))
        return [(h["train_loss"], h["val_acc"]) for h in engine.load_state(r.run_dir / "weights/last.pt")["history"]]

    a, b = history(), history()
    assert a == b
    assert history("seed=4") != a


def test_mixed_precision_on_cpu_uses_bf16(project):
    tr = engine.FoldTrainer(_config("training.mixed_precision=true", "training.num_epochs=1"))
    import torch

    assert tr.amp and tr.amp_dtype == torch.bfloat16 and tr.scaler is None
    m = tr.run_epoch()
    assert m["epoch"] == 0 and m["train_loss"] == m["train_loss"]


@pytest.mark.parametrize("args,match", [
    (["--set", "training.device=tpu"], "training.device"),
    (["--set", "data.data_dir=data/missing"], "has no raw/ folder"),
    (["--fold", "5"], "has no fold 5"),
    (["--set", "model.name=resnet_18"], "model.name"),
    (["--set", "optimizer.nme=sgd"], "did you mean 'name'"),
])
def test_train_bad_input_is_one_line_exit_2(project, args, match):
    res = _train(*args)
    assert res.exit_code == 2, res.output
    assert match in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_train_needs_config_or_resume(project):
    res = CliRunner().invoke(cli, ["train"])
    assert res.exit_code == 2 and "--config is required" in res.output


# -- CUDA OOM -----------------------------------------------------------------

def _oom_builder(real):
    """``engine.build_model``, except that the model's forward runs out of CUDA memory."""
    import torch

    def build(*a, **kw):
        model = real(*a, **kw)

        def forward(*_a, **_kw):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        model.forward = forward
        return model

    return build


def _oom_model(monkeypatch):
    monkeypatch.setattr(engine, "build_model", _oom_builder(engine.build_model))


def test_cuda_oom_becomes_a_trainer_error(project, monkeypatch):
    _oom_model(monkeypatch)
    from raysweep.trainers.builtin import train_in_sweep

    with session(LocalSession(quiet=True)), pytest.raises(TrainerError) as info:
        train_in_sweep(_config("training.batch_size=16"))
    msg = str(info.value)
    assert msg.startswith("CUDA out of memory at batch_size=16")
    assert "batch size" in msg and "mixed_precision" in msg
    res = _train("--batch_size", "4")
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("raysweep: error: CUDA out of memory at batch_size=4")
    assert "failed: CUDA out of memory" in (project / "runs" / "tiny_batch_4_lr_0.05_fold_0" / "train.log").read_text()


# -- inside a sweep -----------------------------------------------------------

class FakeRaySession(LocalSession):
    """Like Ray's session: in_ray, and the checkpoint directory is copied on report."""

    def __init__(self, root: Path, resume: str | None = None) -> None:
        super().__init__(checkpoint_dir=resume, quiet=True)
        self.root = root
        self.copies: list[str] = []

    @property
    def in_ray(self) -> bool:
        return True

    def report(self, metrics, checkpoint):
        import shutil

        self.history.append(metrics)
        assert checkpoint is not None
        dst = self.root / f"ckpt_{len(self.copies)}"
        shutil.copytree(checkpoint, dst)
        self.copies.append(str(dst))


def test_builtin_train_in_a_sweep_reports_checkpoints_and_resumes(project):
    from raysweep.trainers.builtin import train

    cfg = _config("training.num_epochs=3")
    cfg["search"]["trial_number"] = 0
    s = FakeRaySession(project / "ckpts")
    with session(s):
        train(cfg)
    assert [m["epoch"] for m in s.history] == [0, 1, 2]
    assert set(s.history[0]) == {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch"}
    assert not (project / "runs").exists()                          # Ray keeps the checkpoints
    assert all((Path(c) / engine.STATE_FILE).is_file() for c in s.copies)

    retry = FakeRaySession(project / "ckpts2", resume=s.copies[0])   # retried after epoch 0
    with session(retry):
        train(cfg)
    assert [m["epoch"] for m in retry.history] == [1, 2]
    assert [m["val_loss"] for m in retry.history] == pytest.approx([m["val_loss"] for m in s.history[1:]])


def oom_in_trial_0(config: dict) -> None:
    """The built-in trainer, except that trial 0 runs out of CUDA memory (an entrypoint for Ray workers)."""
    from raysweep.trainers.builtin import train

    if config["search"]["trial_number"] != 0:
        train(config)
        return
    real = engine.build_model
    engine.build_model = _oom_builder(real)   # this worker process only, and only for this trial
    try:
        train(config)
    finally:
        engine.build_model = real


@pytest.mark.ray
def test_cuda_oom_fails_the_trial_and_the_sweep_continues(ray_local, project):
    import optuna
    import pyarrow.parquet as pq

    from raysweep.tuner import run_sweep

    cfg = yaml.safe_load((project / "configs" / "tiny.yaml").read_text())
    cfg["data"]["data_dir"] = str(project / "data" / "tiny")
    cfg["training"].update(entrypoint="tests.test_trainer:oom_in_trial_0", batch_size=64)
    cfg["search"] = {"study_name": "oom", "n_trials": 3, "metric": "val_acc", "direction": "maximize",
                     "sampler": {"type": "RandomSampler", "seed": 0}, "pruner": "none", "include_baseline": False,
                     "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}}
    cfg["ray"] = {"resources_per_trial": {"cpu": 1}, "max_failures": 1}   # the retry runs out of memory too
    (project / "configs" / "oom.yaml").write_text(yaml.safe_dump(cfg))
    out = run_sweep(load_config(project / "configs" / "oom.yaml"))
    assert out.counts == {"COMPLETE": 2, "FAIL": 1}
    study = optuna.load_study(study_name="oom", storage=f"sqlite:///{out.study_dir / 'study.db'}")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    rows = pq.read_table(out.study_dir / "trials.parquet").to_pylist()
    error = next(r["error"] for r in rows if r["number"] == 0)
    assert "CUDA out of memory at batch_size=64" in error and "mixed_precision" in error, error


def test_progress_bar_on_a_terminal_plain_lines_otherwise(capsys):
    from raysweep.cli.train import _Progress

    m = {"epoch": 0, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6, "lr": 0.01}
    plain = _Progress()
    plain.tty = False
    plain.batch(1, 4)
    plain.end_epoch(m, 0.5)
    out = capsys.readouterr()
    assert out.out == "epoch 0: train_loss 1.0000 train_acc 0.5000 val_loss 0.9000 val_acc 0.6000 lr 0.01 (0.5s)\n"
    assert out.err == ""
    bar = _Progress()
    bar.tty = True
    for i in range(1, 5):
        bar.batch(i, 4)
    assert bar.bar is not None and bar.bar.n == 4
    bar.end_epoch(m, 0.5)
    out = capsys.readouterr()
    assert "epoch 0:" in out.err and "/4 [" in out.err and "batch/s" in out.err   # the bar, on stderr
    assert out.out.startswith("epoch 0: train_loss") and bar.bar is None and bar.epoch == 1
