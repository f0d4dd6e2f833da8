"""The learning-curve pruner on real Optuna studies, its spec validation, and one real autoopt study with it."""

from __future__ import annotations

import optuna
import pytest

import autoopt
from autoopt.pruners import LearningCurvePruner, extrapolate
from autoopt.sampling import make_pruner
from autoopt.spec import SpecError, StudySpec

#: finished curves that converge near 0.30 (a validation loss, minimised) over 10 epochs
GOOD = [1.0 / (1 + 0.5 * e) + 0.25 for e in range(1, 11)]


def study_with_finished(pruner, curves, direction="minimize") -> optuna.Study:
    study = optuna.create_study(direction=direction, pruner=pruner)
    for curve in curves:
        t = study.ask()
        for step, v in enumerate(curve, 1):
            t.report(v, step)
        study.tell(t, min(curve) if direction == "minimize" else max(curve))
    return study


def decisions(study: optuna.Study, curve: list[float]) -> list[bool]:
    """should_prune() after each report of ``curve`` (a new trial; never stopped, to see them all)."""
    t = study.ask()
    out = []
    for step, v in enumerate(curve, 1):
        t.report(v, step)
        out.append(t.should_prune())
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    return out


def test_prunes_a_hopeless_curve_after_warmup_only():
    pruner = LearningCurvePruner(n_startup_trials=3, n_warmup_steps=2, max_resource=10)
    study = study_with_finished(pruner, [GOOD, [v + 0.02 for v in GOOD], [v + 0.05 for v in GOOD]])
    hopeless = [1.05, 1.04, 1.04, 1.03, 1.03]  # flat near chance while the best reached 0.33
    d = decisions(study, hopeless)
    assert d[:1] == [False]  # step 1 < n_warmup_steps: never pruned, however bad
    assert d[1] is True  # first step past the warm-up


def test_keeps_a_promising_curve():
    pruner = LearningCurvePruner(n_startup_trials=3, n_warmup_steps=1, max_resource=10)
    study = study_with_finished(pruner, [GOOD, [v + 0.02 for v in GOOD], [v + 0.05 for v in GOOD]])
    promising = [v - 0.01 for v in GOOD]  # slightly ahead of the best curve at every epoch
    assert not any(decisions(study, promising))
    # ahead at first, then improving more slowly than the best curve, but still on course to reach it
    slower = [0.9, 0.72, 0.6, 0.52, 0.46]
    assert not any(decisions(study, slower))


def test_never_prunes_before_startup_trials_or_on_the_last_epoch():
    pruner = LearningCurvePruner(n_startup_trials=3, n_warmup_steps=1, max_resource=10)
    study = study_with_finished(pruner, [GOOD, GOOD])  # only 2 complete: no verdict yet
    assert not any(decisions(study, [2.0] * 10))
    study = study_with_finished(LearningCurvePruner(n_startup_trials=1, max_resource=3), [GOOD[:3]])
    t = study.ask()
    t.report(5.0, 3)  # the last epoch: nothing left to save
    assert not t.should_prune()


def test_maximize_direction():
    acc = [0.5, 0.7, 0.8, 0.85, 0.88, 0.9, 0.91, 0.92, 0.925, 0.93]
    pruner = LearningCurvePruner(n_startup_trials=2, n_warmup_steps=1, max_resource=10)
    study = study_with_finished(pruner, [acc, [a - 0.01 for a in acc]], direction="maximize")
    assert decisions(study, [0.1, 0.1, 0.1])[1] is True  # at chance level
    assert not any(decisions(study, acc[:4]))


def test_extrapolation_is_optimistic_but_bounded():
    steps, curve = [1, 2, 3, 4], [1.0, 0.6, 0.47, 0.4]  # about 0.2 + 0.8/t
    pred = extrapolate(steps, curve, 20, minimize=True)
    assert pred is not None and pred < 0.4  # still improving
    assert pred > -0.5  # not absurd
    assert extrapolate([1], [1.0], 10, minimize=True) is None


def test_spec_validates_learning_curve_options():
    spec = StudySpec(name="lc", task="tabular", pruner="learning_curve", pruner_options={"n_warmup_steps": 2})
    assert spec.pruner == "learning_curve"
    with pytest.raises(ValueError, match="quantile"):
        StudySpec(name="lc", task="tabular", pruner="learning_curve", pruner_options={"quantile": 2.0})
    with pytest.raises(ValueError, match="patience"):
        StudySpec(name="lc", task="tabular", pruner="learning_curve", pruner_options={"patience": 2})
    p = make_pruner("learning_curve", 12, n_startup_trials=2)
    assert isinstance(p, LearningCurvePruner) and p.max_resource == 12 and p.n_startup_trials == 2
    with pytest.raises(SpecError):
        make_pruner("learning_curve", 12, margin=-1)


@pytest.mark.slow
def test_real_study_with_the_learning_curve_pruner(ray_local, workdir):
    spec = StudySpec.from_dict(dict(
        name="lc", task="tabular", task_options={"epochs": 8}, n_trials=14, workers=2, seed=0, tracking=False,
        pruner="learning_curve", pruner_options={"n_startup_trials": 3},
        space={"optimizers": ["adamw", "sgd"], "schedulers": ["constant"],
               "params": {"sgd": {"lr": {"low": 1e-5, "high": 1e-4}}}},  # slow SGD: hopeless curves
    ))
    result = autoopt.run(spec)
    trials = result.study.get_trials(deepcopy=False)
    assert len(trials) == 14
    assert result.counts["pruned"] >= 1, result.counts
    assert result.epochs_run < result.epochs_budget
    first_done = sorted(t.number for t in trials if t.state.name == "COMPLETE")[:3]
    for t in trials:
        if t.state.name == "PRUNED":
            assert max(t.intermediate_values) >= 1  # never before its warm-up step
            assert t.number > min(first_done)  # never before any trial has finished
