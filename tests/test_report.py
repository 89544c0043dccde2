"""report.py (plot data, tables) and studies.py (finding and reading studies): numbers only, no drawing."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

import raysweep
from raysweep import reporting as report
from raysweep import constants, studies
from raysweep.errors import StudyError, UsageError
from raysweep.studies import TrialRecord
from tests.study_fixtures import make_study

UTC = dt.timezone.utc
T = dt.datetime(2026, 1, 1, tzinfo=UTC)


def rec(number: int, state: str = "COMPLETE", value: float | None = 0.5, *, start: float | None = 0.0,
        end: float | None = 10.0, worker: str | None = "n1:1", node: str | None = "n1", **kw) -> TrialRecord:
    return TrialRecord(
        number=number, state=state, value=value if state == "COMPLETE" else kw.pop("v", None),
        start_time=None if start is None else T + dt.timedelta(seconds=start),
        end_time=None if end is None else T + dt.timedelta(seconds=end),
        seconds=None if start is None or end is None else end - start,
        worker=worker, node=node, **kw)


# --- basics -----------------------------------------------------------------

def test_best_and_sort_maximize_and_minimize():
    ts = [rec(0, value=0.5), rec(1, value=0.9), rec(2, "PRUNED", best_metric=0.95), rec(3, value=0.7),
          rec(4, "RUNNING", end=None), rec(5, value=0.9), rec(6, "PRUNED", v=0.99)]
    assert report.best_trial(ts, "maximize").number == 1          # ties: lowest number
    assert report.best_trial(ts, "minimize").number == 0
    assert [t.number for t in report.sort_best_first(ts, "maximize")] == [1, 5, 3, 0, 6, 2, 4]
    assert [t.number for t in report.sort_best_first(ts, "minimize")] == [0, 3, 1, 5, 2, 6, 4]
    assert report.best_trial([rec(0, "PRUNED")], "maximize") is None


def test_state_counts_fixed_order_and_interrupted():
    ts = [rec(0, "RUNNING"), rec(1, "FAIL"), rec(2), rec(3, "FAIL", interrupted=True), rec(4, "PRUNED"), rec(5)]
    assert list(report.state_counts(ts).items()) == [
        ("COMPLETE", 2), ("PRUNED", 1), ("FAIL", 1), ("INTERRUPTED", 1), ("RUNNING", 1)]
    assert report.counts_line(ts, 10) == "6 trials (of 10): COMPLETE 2, PRUNED 1, FAIL 1, INTERRUPTED 1, RUNNING 1"
    assert report.counts_line([]) == "0 trials"


def test_time_summary():
    ts = [rec(0, start=0, end=100), rec(1, start=50, end=80), rec(2, "RUNNING", start=90, end=None)]
    ts[2].seconds = 30.0
    s = report.time_summary(ts, now=T + dt.timedelta(seconds=120))
    assert s.wall_seconds == 120.0                   # the running trial counts up to now
    assert s.total_trial_seconds == 160.0
    assert (s.min_seconds, s.max_seconds, s.median_seconds, s.n_timed) == (30.0, 100.0, 30.0, 3)
    assert report.time_summary([]).wall_seconds is None


# --- timeline ---------------------------------------------------------------

def test_timeline_one_row_per_worker_sorted_by_node():
    ts = [rec(0, start=0, end=10, worker="b:1", node="b"), rec(1, start=0, end=5, worker="a:2", node="a"),
          rec(2, "PRUNED", start=10, end=20, worker="b:1", node="b"), rec(3, start=5, end=20, worker="a:1", node="a"),
          rec(4, start=None, end=None, worker="c:1", node="c")]            # never started: no row
    tl = report.timeline(ts)
    assert [r.label for r in tl.rows] == ["a:1", "a:2", "b:1"]
    assert tl.nodes == ["a", "b"]
    assert [[b.number for b in r.bars] for r in tl.rows] == [[3], [1], [0, 2]]
    assert [(b.start, b.end, b.state) for b in tl.rows[2].bars] == [(0.0, 10.0, "COMPLETE"), (10.0, 20.0, "PRUNED")]
    assert tl.span == 20.0
    # busy: a:1 15 s, a:2 5 s, b:1 20 s over 3 workers x 20 s
    assert tl.busy_fraction == pytest.approx(40 / 60)


def test_timeline_running_trial_ends_now_and_missing_worker_falls_back():
    ts = [rec(0, "RUNNING", start=0, end=None, worker=None, node="n9"),
          rec(1, start=0, end=4, worker=None, node=None)]
    tl = report.timeline(ts, now=T + dt.timedelta(seconds=30))
    assert {r.label: [(b.start, b.end) for b in r.bars] for r in tl.rows} == {
        "n9": [(0.0, 30.0)], "unknown": [(0.0, 4.0)]}
    assert report.timeline([]).rows == () and report.timeline([]).busy_fraction is None


def test_busy_seconds_merges_overlaps():
    row = report.TimelineRow("w", "n", (report.TimelineBar(0, "COMPLETE", 0, 10),
                                        report.TimelineBar(1, "COMPLETE", 5, 12),
                                        report.TimelineBar(2, "COMPLETE", 20, 21)))
    assert row.busy_seconds == 13.0


# --- params and plot planning ---------------------------------------------------

def test_select_params_full_and_short_names():
    avail = ["optimizer.lr", "training.batch_size", "model.lr"]
    assert report.select_params(None, avail) == avail
    assert report.select_params("training.batch_size, optimizer.lr", avail) == ["training.batch_size", "optimizer.lr"]
    assert report.select_params("batch_size", avail) == ["training.batch_size"]
    with pytest.raises(UsageError, match="'lr' matches several"):
        report.select_params("lr", avail)
    with pytest.raises(UsageError, match="'foo' is not a parameter.*has: optimizer.lr"):
        report.select_params(["foo"], avail)


def test_short_name_keeps_full_name_on_clash():
    assert report.short_name("optimizer.lr", ["optimizer.lr", "training.batch_size"]) == "lr"
    assert report.short_name("optimizer.lr", ["optimizer.lr", "model.lr"]) == "optimizer.lr"


def _p(i: int, **params) -> TrialRecord:
    t = rec(i, value=i / 10)
    t.params = params
    return t


@pytest.mark.parametrize("trials, expect_notes", [
    ([], {"history", "importances", "parallel", "slice", "intermediate", "contour", "timeline"}),
    ([_p(0, a=1, b=2)], {"importances", "parallel", "slice", "intermediate", "contour"}),
    ([_p(0, a=1, b=2), _p(1, a=1, b=2)], {"importances", "parallel", "slice", "intermediate", "contour"}),
    ([_p(0, a=1, b=2), _p(1, a=2, b=2)], {"intermediate", "contour"}),
    ([_p(0, a=1, b=2), _p(1, a=2, b=3)], {"intermediate"}),
])
def test_plan_plots_notes_instead_of_empty_plots(trials, expect_notes):
    specs = report.plan_plots(trials, ["a", "b"])
    assert [s.key for s in specs] == [k for k, _, _ in report.PLOTS]
    assert {s.key for s in specs if s.note} == expect_notes
    for s in specs:
        assert bool(s.note) != bool(s.params) or s.key in ("history", "intermediate", "timeline")


def test_plan_plots_single_trial_note_is_clear():
    specs = {s.key: s for s in report.plan_plots([_p(0, a=1)], ["a"])}
    assert specs["slice"].note == "This plot needs at least 2 completed trials; the study has 1 so far."


def test_contour_takes_the_two_most_important_params():
    ts = [_p(0, a=1, b=1, c=1), _p(1, a=2, b=2, c=2)]
    specs = {s.key: s for s in report.plan_plots(ts, ["a", "b", "c"], {"a": 0.1, "b": 0.3, "c": 0.6})}
    assert specs["contour"].params == ("c", "b")
    assert {s.key: s for s in report.plan_plots(ts, ["a", "b", "c"])}["contour"].params == ("a", "b")


def test_pruned_points_where_each_pruned_trial_stopped():
    ts = [rec(0, intermediate={0: 0.1, 1: 0.2, 2: 0.3}), rec(1, "PRUNED", intermediate={0: 0.1, 1: 0.15}),
          rec(2, "PRUNED")]
    assert report.pruned_points(ts) == [(1, 1, 0.15)]


# --- tables --------------------------------------------------------------------

@pytest.mark.parametrize("x, text", [(None, "-"), (3, "3"), (True, "True"), (0.93124, "0.9312"),
                                     (1.5e-5, "1.5e-05"), (0.0, "0"), (float("nan"), "-"), ("adam", "adam")])
def test_fmt_number(x, text):
    assert report.fmt_number(x) == text


@pytest.mark.parametrize("x, text", [(None, "-"), (4.25, "4.2s"), (61, "1m01s"), (3725, "1h02m")])
def test_fmt_seconds(x, text):
    assert report.fmt_seconds(x) == text


def test_trials_table_best_first_with_params_and_marks():
    ts = [_p(0, **{"optimizer.lr": 0.1}), _p(1, **{"optimizer.lr": 0.01}), rec(2, "RUNNING", end=None, best_metric=0.7)]
    ts[0].baseline = True
    tab = report.trials_table(ts, "val_acc", "maximize", ["optimizer.lr"])
    assert tab.header == ("#", "state", "lr", "val_acc", "epochs", "seconds", "node")
    assert tab.numbers == (1, 0, 2)
    assert tab.rows[1][0] == "0 (baseline)"
    assert tab.rows[2][3] == "0.7*"
    text = tab.render().splitlines()
    assert text[0].startswith("#") and "val_acc" in text[0] and len(text) == 4
    assert report.trials_table(ts, "val_acc", "maximize", limit=1).numbers == (1,)


# --- the name clash with raysweep.report() ----------------------------------------

def test_public_report_function_is_not_shadowed_by_the_reporting_module():
    import raysweep.trial

    assert raysweep.report is raysweep.trial.report


# --- studies.py -------------------------------------------------------------------

@pytest.fixture(scope="module")
def studies_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    make_study(root, "done", n_complete=4, n_pruned=1, n_fail=1)
    make_study(root, "live", n_complete=2, n_pruned=1, n_fail=0, n_running=2, finished=False)
    (root / "not_a_study").mkdir()
    return root


def test_list_and_find_studies(studies_dir):
    assert studies.list_studies(studies_dir) == ["done", "live"]
    info = studies.find_study("done", studies_dir)
    assert (info.metric, info.direction, info.state, info.n_trials) == ("val_acc", "maximize", "finished", 6)
    assert info.search_space == ("optimizer.lr", "training.batch_size", "optimizer.name")
    assert not studies.needs_optuna(info)
    assert studies.needs_optuna(studies.find_study("live", studies_dir))


def test_unknown_study_lists_existing(studies_dir, tmp_path):
    with pytest.raises(StudyError, match=r"no study named 'nope' in .*; existing studies: done, live$"):
        studies.find_study("nope", studies_dir)
    with pytest.raises(StudyError, match="there are no studies there yet"):
        studies.find_study("nope", tmp_path / "empty")
    assert issubclass(StudyError, UsageError) and StudyError.exit_code == 2


def test_parquet_and_optuna_give_the_same_trials(studies_dir):
    info = studies.find_study("done", studies_dir)
    from_file = studies.load_trials(info)
    from_db = studies.records_from_optuna(studies.open_optuna_study(info), info.direction)
    assert [t.number for t in from_file] == [t.number for t in from_db] == list(range(6))
    for a, b in zip(from_file, from_db):
        assert (a.state, a.value, a.epochs, a.node, a.worker, a.params) == (b.state, b.value, b.epochs, b.node,
                                                                           b.worker, b.params)
        assert a.start_time == b.start_time and a.end_time == b.end_time      # UTC in parquet, local in Optuna
        assert a.intermediate == b.intermediate                               # curves.parquet filled it in
    assert from_file[0].start_time.tzinfo is not None


def test_running_study_reads_the_live_storage(studies_dir):
    info = studies.find_study("live", studies_dir)
    assert not info.trials_file.exists()
    trials = studies.load_trials(info)
    assert [t.state for t in trials].count("RUNNING") == 2
    running = [t for t in trials if t.state == "RUNNING"]
    assert all(t.seconds is not None and t.seconds >= 0 and t.end_time is None for t in running)
    assert all(t.intermediate and t.worker for t in running)


def test_curves_jsonl_keeps_the_last_duplicate_and_skips_a_torn_line(tmp_path):
    path = tmp_path / constants.CURVES_LOG_FILE
    path.write_text("\n".join([json.dumps({"number": 0, "epoch": 0, "val_acc": 0.1}),
                               json.dumps({"number": 0, "epoch": 1, "val_acc": 0.2}),
                               json.dumps({"number": 0, "epoch": 0, "val_acc": 0.15}),
                               '{"number": 1, "epo']), encoding="utf-8")
    rows = studies.read_curves_jsonl(path)
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [(0, 0.15), (1, 0.2)]
    assert studies.read_curves_jsonl(tmp_path / "missing.jsonl") == []


def _with_storage(studies_dir: Path, name: str, url: str, tmp: Path) -> studies.StudyInfo:
    import shutil

    dst = tmp / name
    shutil.copytree(studies_dir / name, dst)
    data = json.loads((dst / constants.SWEEP_FILE).read_text())
    data["storage"] = url
    (dst / constants.SWEEP_FILE).write_text(json.dumps(data))
    return studies.find_study(name, tmp)


def test_masked_storage_needs_env_or_option(studies_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(studies.ENV_STORAGE, raising=False)
    info = _with_storage(studies_dir, "live", "postgresql://user:***@db:5432/optuna", tmp_path)
    with pytest.raises(StudyError, match="masked.*--storage URL or set RAYSWEEP_STORAGE"):
        studies.resolve_storage(info)
    assert studies.resolve_storage(info, "sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setenv(studies.ENV_STORAGE, "postgresql://user:pw@db/optuna")
    assert studies.resolve_storage(info) == "postgresql://user:pw@db/optuna"


def test_moved_study_dir_falls_back_to_its_study_db(studies_dir, tmp_path):
    info = _with_storage(studies_dir, "live", "sqlite:////nonexistent/place/study.db", tmp_path)
    assert studies.resolve_storage(info) == f"sqlite:///{(tmp_path / 'live' / 'study.db').resolve()}"
    assert len(studies.load_trials(info)) == 5


def test_unreachable_storage_is_a_study_error(studies_dir, tmp_path):
    import optuna

    url = "sqlite:///" + str(tmp_path / "other.db")
    optuna.create_study(study_name="someone_else", storage=url)
    info = _with_storage(studies_dir, "live", url, tmp_path / "copy")
    with pytest.raises(StudyError, match="study 'live' is not in storage .*; studies in that storage: someone_else"):
        studies.open_optuna_study(info)


def test_study_from_records_rebuilds_distributions():
    import optuna

    ts = [_p(0, lr=1e-4, bs=16, opt="sgd"), _p(1, lr=1e-1, bs=64, opt="adam"), rec(2, "PRUNED", intermediate={0: 0.3})]
    ts[2].params = {"lr": 1e-3, "bs": 32, "opt": "sgd"}
    study = studies.study_from_records(ts, "maximize")
    frozen = study.get_trials()
    assert [t.state.name for t in frozen] == ["COMPLETE", "COMPLETE", "PRUNED"]
    d = frozen[0].distributions
    assert isinstance(d["lr"], optuna.distributions.FloatDistribution) and d["lr"].log
    assert isinstance(d["bs"], optuna.distributions.IntDistribution)
    assert isinstance(d["opt"], optuna.distributions.CategoricalDistribution)
    assert frozen[2].intermediate_values == {0: 0.3}
    assert frozen[1].datetime_start == ts[1].start_time
