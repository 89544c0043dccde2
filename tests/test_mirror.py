"""The in-memory study the driver decides with ends up identical in the durable storage."""
from __future__ import annotations

import optuna
import pytest

from raysweep.mirror import StudyMirror

TS = optuna.trial.TrialState
D = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}


def _snapshot(study: optuna.Study):
    return [(t.number, t.state, t.values, t.params, t.intermediate_values,
             {k: v for k, v in t.user_attrs.items()}) for t in study.get_trials()]


@pytest.mark.parametrize("existing", [0, 3])
def test_mirror_writes_everything_in_order(tmp_path, existing):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    durable = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for i in range(existing):                       # a resumed study: finished + running trials
        t = durable.ask(D)
        t.report(0.1, 0)
        if i < existing - 1:
            durable.tell(t, 0.1 * i)
    durable.enqueue_trial({"x": 0.25}, user_attrs={"baseline": True})
    mirror = StudyMirror(durable, sampler=optuna.samplers.RandomSampler(seed=0),
                         pruner=optuna.pruners.NopPruner())
    memory = mirror.memory
    assert _snapshot(memory) == _snapshot(durable)
    for i in range(6):
        trial = memory.ask(D)
        mirror.trial_created(trial._trial_id)
        for step in range(3):
            trial.report(trial.params["x"] + step, step)
            mirror.intermediate(trial._trial_id, step, trial.params["x"] + step)
        mirror.user_attr(trial._trial_id, "epochs", 3)
        if i % 3 == 2:
            memory.tell(trial, state=TS.PRUNED)
        elif i % 3 == 1:
            memory.tell(trial, state=TS.FAIL)
        else:
            memory.tell(trial, trial.params["x"])
        mirror.finished(trial._trial_id)
    mirror.close()
    assert not mirror.errors
    reread = optuna.load_study(study_name="s", storage=url)
    assert _snapshot(reread) == _snapshot(memory)
    assert reread.trials[existing].params == {"x": 0.25}       # the enqueued trial ran first
    assert reread.trials[existing].user_attrs["baseline"] is True
