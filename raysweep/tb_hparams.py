"""TensorBoard HParams for a sweep: one run per trial, comparable in the HParams tab.

:func:`write_hparams` writes, under ``<study dir>/tensorboard/``:

* the root run: the experiment (every parameter with its domain, the metrics);
* ``trial_<number>/``: the trial's parameter values (session start), its outcome
  (session end: success for complete and pruned trials, failure for failed ones,
  running) and the metric
  scalars the HParams tab shows (``<metric>``, ``<metric>/final``,
  ``<metric>/best``, ``epochs``), plus ``<metric>/epoch`` per epoch when the
  trial dict carries ``intermediate`` ({epoch: value}). A pruned trial has no
  ``<metric>`` value (it has no objective), only final and best.

This is the layout TensorFlow's ``hparams_config`` + ``hparams`` API writes, built
with the protobufs shipped in tensorboardX, so ``tensorboard --logdir
runs/optuna_studies/<name>/tensorboard`` compares all trials. tensorboardX is
imported inside functions.
"""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

TB_DIR = "tensorboard"
PLUGIN_NAME = "hparams"
PLUGIN_DATA_VERSION = 0
EXPERIMENT_TAG = "_hparams_/experiment"
SESSION_START_INFO_TAG = "_hparams_/session_start_info"
SESSION_END_INFO_TAG = "_hparams_/session_end_info"

_STATUS = {"COMPLETE": "STATUS_SUCCESS", "FAIL": "STATUS_FAILURE", "PRUNED": "STATUS_SUCCESS",
           "RUNNING": "STATUS_RUNNING"}


def metric_tags(metric: str) -> tuple[str, str, str, str]:
    """The scalar tags written per trial: objective, final, best, epochs."""
    return metric, f"{metric}/final", f"{metric}/best", "epochs"


def _hparam_value(v: Any) -> bool | float | str | None:
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return None if isinstance(v, float) and math.isnan(v) else float(v)
    return str(v)


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _import_tensorboardx() -> None:
    """Import tensorboardX without torch where torch is not loaded yet.

    Its writer imports torch when it can (1.2 s and ~200 MB in the sweep's
    driver, measured here) only for a type annotation; the event files written
    here hold plain numbers. A later ``import torch`` works as usual.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import tensorboardX  # noqa: F401
    finally:
        del sys.modules["torch"]


def _summary(field: str, message: Any) -> Any:
    _import_tensorboardx()
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    tag = {"experiment": EXPERIMENT_TAG, "session_start_info": SESSION_START_INFO_TAG,
           "session_end_info": SESSION_END_INFO_TAG}[field]
    data = HParamsPluginData(version=PLUGIN_DATA_VERSION, **{field: message})
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=PLUGIN_NAME, content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def experiment_summary(trials: Sequence[Mapping[str, Any]], metric: str) -> Any:
    """The experiment: each parameter with its type and the domain seen, and the metric tags."""
    _import_tensorboardx()
    from google.protobuf.struct_pb2 import ListValue
    from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, Interval, MetricInfo, MetricName

    values: dict[str, list[Any]] = {}
    for t in trials:
        for k, v in (t.get("params") or {}).items():
            hv = _hparam_value(v)
            if hv is not None:
                values.setdefault(k, []).append(hv)
    infos = []
    for name in sorted(values):
        vs = values[name]
        if all(isinstance(v, bool) for v in vs):
            dom = ListValue()
            dom.extend(sorted(set(vs)))
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_BOOL"), domain_discrete=dom))
        elif all(isinstance(v, float) for v in vs):
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_FLOAT64"),
                                    domain_interval=Interval(min_value=min(vs), max_value=max(vs))))
        else:
            dom = ListValue()
            dom.extend(sorted({str(v) for v in vs}))
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_STRING"), domain_discrete=dom))
    metrics = [MetricInfo(name=MetricName(tag=tag)) for tag in metric_tags(metric)]
    return _summary("experiment", Experiment(hparam_infos=infos, metric_infos=metrics))


def _session_start(trial: Mapping[str, Any]) -> Any:
    _import_tensorboardx()
    from tensorboardX.proto.plugin_hparams_pb2 import SessionStartInfo

    ssi = SessionStartInfo(group_name=f"trial_{trial['number']}")
    for k, v in (trial.get("params") or {}).items():
        hv = _hparam_value(v)
        if hv is None:
            continue
        if isinstance(hv, bool):
            ssi.hparams[k].bool_value = hv
        elif isinstance(hv, float):
            ssi.hparams[k].number_value = hv
        else:
            ssi.hparams[k].string_value = hv
    return _summary("session_start_info", ssi)


def _session_end(state: str) -> Any:
    _import_tensorboardx()
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import SessionEndInfo

    return _summary("session_end_info",
                    SessionEndInfo(status=Status.Value(_STATUS.get(state, "STATUS_UNKNOWN"))))


def _clear_events(run_dir: Path) -> None:
    """Drop event files a previous call wrote, so a rerun does not duplicate sessions."""
    if run_dir.is_dir():
        for f in run_dir.glob("events.out.tfevents.*"):
            f.unlink()


def write_hparams(study_dir: Path, trials: list[dict[str, Any]], metric: str) -> Path:
    """Write HParams event files for every trial; return ``<study_dir>/tensorboard``.

    Each trial dict has ``number``, ``state``, ``params`` (dict), ``value``,
    ``final_metric``, ``best_metric``, ``epochs`` and optionally ``intermediate``
    ({epoch: metric}). Values that are None are left out. Calling it again
    rewrites the experiment summary and writes the runs of trials it has not
    written in that state yet (a finished trial does not change), so the end of
    a resumed 2,000-trial sweep costs only its new trials.

    Example::

        write_hparams(Path("runs/optuna_studies/digits_optimization"),
                      [{"number": 0, "state": "COMPLETE", "params": {"optimizer.lr": 0.01},
                        "value": 0.93, "final_metric": 0.92, "best_metric": 0.93, "epochs": 10}],
                      "val_acc")
    """
    _import_tensorboardx()
    from tensorboardX import SummaryWriter

    logdir = Path(study_dir) / TB_DIR
    logdir.mkdir(parents=True, exist_ok=True)
    _clear_events(logdir)
    wanted = {f"trial_{t['number']}" for t in trials}
    for old in logdir.glob("trial_*"):
        if old.is_dir() and old.name not in wanted:
            shutil.rmtree(old)

    with SummaryWriter(logdir=str(logdir), flush_secs=3600) as root:
        root.file_writer.add_summary(experiment_summary(trials, metric))

    tag_value, tag_final, tag_best, tag_epochs = metric_tags(metric)
    for t in sorted(trials, key=lambda t: t["number"]):
        run_dir = logdir / f"trial_{t['number']}"
        marker = run_dir / f".written-{t.get('state')}"
        if marker.exists() and any(run_dir.glob("events.out.tfevents.*")):
            continue  # a finished trial does not change: a resumed sweep writes only the new ones
        _clear_events(run_dir)
        epochs = t.get("epochs")
        step = int(epochs) if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) else 0
        with SummaryWriter(logdir=str(run_dir), flush_secs=3600) as w:
            w.file_writer.add_summary(_session_start(t))
            for e, v in sorted((t.get("intermediate") or {}).items()):
                fv = _finite(v)
                if fv is not None:
                    w.add_scalar(f"{metric}/epoch", fv, int(e))
            for tag, key in ((tag_value, "value"), (tag_final, "final_metric"), (tag_best, "best_metric")):
                fv = _finite(t.get(key))
                if fv is not None:
                    w.add_scalar(tag, fv, step)
            if step:
                w.add_scalar(tag_epochs, float(step), step)
            w.file_writer.add_summary(_session_end(str(t.get("state") or "")))
        for old_marker in run_dir.glob(".written-*"):
            old_marker.unlink()
        marker.touch()
    return logdir


def tensorboard_command(logdir: str | Path, port: int = 6006) -> list[str] | None:
    """The command that starts TensorBoard on ``logdir``, or None when it is not installed."""
    import importlib.util
    import shutil as _shutil
    import sys

    exe = _shutil.which("tensorboard")
    if exe:
        return [exe, "--logdir", str(logdir), "--port", str(port)]
    if importlib.util.find_spec("tensorboard") is not None:
        return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
    return None
