"""TPE suggestions computed ahead in a helper process (raysweep.presampler), and a sweep using them."""
from __future__ import annotations

import multiprocessing
import statistics
import time

import optuna
import pytest

from raysweep import constants
from raysweep.config import load_config
from raysweep.presampler import Presampler
from raysweep.tuner import run_sweep
from tests.test_sweep import make_config, study_of

TS = optuna.trial.TrialState
DISTS = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}


def _finished(x: float, number: int = 0) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(params={"x": x}, distributions=DISTS, value=-abs(x - 0.9))


def _take(p: Presampler, finished: int, max_lag: int = 2, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = p.take(finished, max_lag=max_lag)
        if got is not None:
            return got
        time.sleep(0.01)
    raise AssertionError("no suggestion from the helper")


@pytest.fixture
def presampler():
    made = []

    def make(trials, **kw):
        p = Presampler({"n_startup_trials": 5, "seed": 3, "constant_liar": True}, DISTS, "maximize", trials, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_suggestions_follow_the_history_it_is_told(presampler):
    # 30 random trials, then trials told one by one: TPE must home in on x = 0.9
    rng = [i / 29 for i in range(30)]
    p = presampler([_finished(x) for x in rng])
    xs = []
    for number in range(30, 50):
        draft, params = _take(p, finished=number)
        assert 0.0 <= params["x"] <= 1.0
        p.started(number, params, draft)
        p.ended(number, _finished(params["x"]))
        xs.append(params["x"])
    assert p.used == 20
    # random search would give a median distance of about 0.4
    assert statistics.median(abs(x - 0.9) for x in xs[-10:]) < 0.1


def test_stale_suggestions_are_dropped_and_fresh_ones_follow(presampler):
    p = presampler([_finished(i / 9) for i in range(10)], depth=2)
    draft, params = _take(p, finished=10)
    p.started(10, params, draft)
    # six trials finish elsewhere (asked by the driver itself) while drafts wait
    for number in range(11, 17):
        p.started(number, {"x": 0.5})
        p.ended(number, _finished(0.5))
    p.ended(10, _finished(params["x"]))
    before = p.dropped
    _take(p, finished=17, max_lag=0)                 # only a draft computed from all 17 trials
    assert p.dropped > before


def test_failed_and_pruned_trials_are_accepted(presampler):
    p = presampler([_finished(i / 9) for i in range(10)])
    draft, params = _take(p, finished=10)
    p.started(10, params, draft)
    failed = optuna.trial.create_trial(params=params, distributions=DISTS, state=TS.FAIL)
    p.ended(10, failed)
    draft, params = _take(p, finished=10)
    p.started(11, params, draft)
    pruned = optuna.trial.create_trial(params=params, distributions=DISTS, state=TS.PRUNED,
                                       intermediate_values={0: 0.1, 1: 0.2})
    p.ended(11, pruned)
    _take(p, finished=11, max_lag=0)   # the helper counted the pruned trial, not the failed one
    assert not p.closed


def test_close_stops_the_helper(presampler):
    p = presampler([_finished(0.1)])
    _take(p, finished=1)
    p.close()
    assert not any(c.name == "raysweep-presampler" for c in multiprocessing.active_children())
    assert p.take(1, max_lag=2) is None


@pytest.mark.ray
def test_sweep_runs_trials_from_the_helper(ray_local, in_tmp, monkeypatch):
    monkeypatch.setattr(constants, "PRESAMPLE_AFTER", 3)
    started: list[tuple[int, dict, int | None]] = []
    real = Presampler.started

    def spy(self, number, params, draft=None):
        started.append((number, dict(params), draft))
        return real(self, number, params, draft)

    monkeypatch.setattr(Presampler, "started", spy)
    path = make_config(in_tmp, n_trials=16, epochs=1, sleep=0.1, name="ahead")
    outcome = run_sweep(load_config(path))

    trials = study_of(outcome).get_trials()
    assert [t.number for t in trials] == list(range(16))
    assert all(t.state == TS.COMPLETE for t in trials)
    from_helper = [(n, params) for n, params, draft in started if draft is not None]
    assert from_helper, "no trial ran a suggestion computed ahead"
    for number, params in from_helper:        # the suggestion is what the trial ran
        assert trials[number].params == params
        assert trials[number].value == pytest.approx(params["model.dropout"])
    assert not any(c.name == "raysweep-presampler" for c in multiprocessing.active_children())
