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
    # told by the one coordinator, so one clock; a trial's number says when it started, not when it
    # was pruned (trial 0 was once pruned after trials 1-3 had finished, which the old check misread)
    done_at = sorted(t.datetime_complete for t in trials if t.state.name == "COMPLETE")
    for t in trials:
        if t.state.name == "PRUNED":
            assert max(t.intermediate_values) >= 1  # never before its warm-up step
            assert t.datetime_complete >= done_at[2]  # never before n_startup_trials (3) have finished


# --- similar tasks' curves from the meta-dataset -------------------------------------------------
#: another task's finished curves: the same shape on a 10x larger scale (its metric's units)
OTHER_TASK = [[10 * v for v in GOOD], [10 * v + 0.3 for v in GOOD]]


def test_similar_tasks_curves_stand_in_for_the_study_s_first_trials():
    hopeless = [1.05, 1.04, 1.04, 1.03, 1.03]
    alone = LearningCurvePruner(n_startup_trials=3, n_warmup_steps=1, max_resource=10)
    assert not any(decisions(study_with_finished(alone, [GOOD]), hopeless))  # one finished trial: no verdict
    primed = LearningCurvePruner(n_startup_trials=3, n_warmup_steps=1, max_resource=10,
                                 prior_curves=[(list(range(1, 11)), c) for c in OTHER_TASK])
    study = study_with_finished(primed, [GOOD])
    assert decisions(study, hopeless)[0] is True  # the other task's curves say it cannot catch up
    assert not any(decisions(study, [v - 0.01 for v in GOOD]))  # a curve on course is kept


def test_similar_tasks_gains_count_relative_to_their_own_scale():
    """A prior curve that fell 85% after epoch 2 keeps a slow starter alive on a task whose
    values are ten times smaller: its gain is a fraction, not its units."""
    steep = [20.0, 20.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]  # from 20 at epoch 2 to 3 (-85%)
    pruner = LearningCurvePruner(n_startup_trials=1, n_warmup_steps=1, max_resource=10,
                                 prior_curves=[(list(range(1, 11)), steep)])
    study = study_with_finished(pruner, [GOOD])  # best 0.33
    slow = [1.0, 1.0]  # 1.0 at epoch 2: 85% less would be 0.15, better than the best
    assert decisions(study, slow) == [False, False]
    # the same trial with the prior's gain in its own units (17) would be kept by any rule, and a
    # flat prior curve (no gain) leaves only the extrapolation, which sees no progress: pruned
    flat = LearningCurvePruner(n_startup_trials=1, n_warmup_steps=1, max_resource=10,
                               prior_curves=[(list(range(1, 11)), [20.0] * 10)])
    assert decisions(study_with_finished(flat, [GOOD]), slow)[1] is True


def test_meta_dataset_keeps_curves_and_finds_the_nearest_similar_studies(tmp_path):
    from autoopt.core import record as R
    from autoopt.recommend import meta

    def study(name: str, domain: str, batch: int, metric: str = "val_loss") -> optuna.Study:
        s = optuna.create_study(study_name=name, direction="minimize")
        s.set_user_attr(R.TRAITS, {"domain": domain, "batch_size": batch, "n_params": 5000, "dataset_size": 2000})
        s.set_user_attr(R.METRIC, metric)
        cfg = {"optimizer": "adamw", "optimizer_params": {"lr": 1e-3}}
        s.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=min(GOOD), user_attrs={R.CONFIG: cfg},
            intermediate_values={e: v for e, v in enumerate(GOOD, 1)}))
        return s

    path = tmp_path / "studies.csv"
    for args in [("near", "tabular", 32), ("far", "tabular", 4096), ("cv", "cv", 32), ("other-metric", "tabular", 32, "acc")]:
        meta.add_study_results(study(*args), path)
    meta.add_study_results(study("near", "tabular", 32), path)  # re-added: its curve survives the rewrite
    rows = meta.read_studies(path)
    assert {r["instance"]: r["curve"] for r in rows}["near"] == (list(range(1, 11)), GOOD)

    traits = {"domain": "tabular", "batch_size": 64, "n_params": 5000, "dataset_size": 2000}
    nearest = meta.similar_curves(traits, "val_loss", "minimize", k=1, path=path)
    assert nearest == [(list(range(1, 11)), GOOD)]  # one study: "near" (batch 32), not "far"
    assert len(meta.similar_curves(traits, "val_loss", "minimize", k=5, path=path)) == 2  # not cv, not acc
    assert meta.similar_curves(traits, "val_loss", "minimize", k=5, path=path, exclude="near") == [
        (list(range(1, 11)), GOOD)]
    assert meta.similar_curves(traits, "val_loss", "maximize", path=path) == []
    assert meta.similar_curves(traits, "val_loss", "minimize", path=tmp_path / "none.csv") == []


def test_spec_accepts_similar_tasks_and_rejects_bad_values():
    StudySpec.from_dict(dict(name="x", task="tabular", pruner="learning_curve",
                             pruner_options={"similar_tasks": True, "similar_studies": 2}))
    with pytest.raises(SpecError, match="similar_studies"):
        StudySpec.from_dict(dict(name="x", task="tabular", pruner="learning_curve",
                                 pruner_options={"similar_tasks": True, "similar_studies": 0}))


def test_real_study_matches_the_curves_of_a_similar_earlier_study(ray_local, workdir, monkeypatch):
    """A first study fills the meta-dataset with its curves; the second, with ``similar_tasks``,
    starts its pruner from them (and says how many in its study attrs) and prunes."""
    from autoopt.core import record as R
    from autoopt.recommend import meta
    from autoopt.task import load_task

    monkeypatch.setenv("AUTOOPT_RECOMMEND_DIR", str(workdir / "recommend"))
    space = {"optimizers": ["adamw", "sgd"], "schedulers": ["constant"],
             "params": {"sgd": {"lr": {"low": 1e-5, "high": 1e-4}}}}  # slow SGD: hopeless curves
    base = dict(task="tabular", task_options={"epochs": 8}, workers=2, tracking=False, space=space)
    autoopt.run(StudySpec.from_dict(dict(base, name="first", n_trials=6, seed=1, pruner="none")))
    curves = meta.similar_curves(load_task("tabular", epochs=8).traits(), "val_mse", "minimize")
    assert len(curves) == 6 and all(len(s) == 8 for s, _ in curves)

    result = autoopt.run(StudySpec.from_dict(dict(
        base, name="second", n_trials=10, seed=0, pruner="learning_curve",
        pruner_options={"similar_tasks": True})))
    assert result.study.user_attrs[R.PRUNER_PRIOR_CURVES] == 6
    assert result.counts["pruned"] >= 1, result.counts
    # without the option the meta-dataset is not read, and nothing says it was
    plain = autoopt.run(StudySpec.from_dict(dict(base, name="third", n_trials=2, seed=0, pruner="learning_curve")))
    assert R.PRUNER_PRIOR_CURVES not in plain.study.user_attrs


# --- successive halving with ASHA's rung rule -----------------------------------------------------
def rung_decisions(pruner, firsts: list[float], direction: str = "maximize") -> list[bool]:
    """Trials reaching the first rung (epoch 1) one after another with these values: pruned?"""
    study = optuna.create_study(direction=direction, pruner=pruner)
    out = []
    for v in firsts:
        t = study.ask()
        t.report(v, 1)
        out.append(t.should_prune())
        study.tell(t, state=optuna.trial.TrialState.PRUNED) if out[-1] else study.tell(t, v)
    return out


def test_asha_keeps_a_trial_above_the_quantile_of_those_before_it_as_tune_does():
    from types import SimpleNamespace

    from ray.tune.schedulers.async_hyperband import _Bracket

    from autoopt.pruners import AshaPruner

    values = [0.5, 0.9, 0.8, 0.6, 0.85, 0.95, 0.7, 0.88]
    asha = rung_decisions(AshaPruner(min_resource=1, reduction_factor=3), values)
    assert asha == [False, False, False, True, False, False, True, False]
    # Ray Tune's own bracket (grace period 1, reduction factor 3), on the same values at epoch 1
    bracket = _Bracket(min_t=1, max_t=9, reduction_factor=3, s=0)
    tune = [bracket.on_result(SimpleNamespace(trial_id=str(i)), 1, v) == "STOP" for i, v in enumerate(values)]
    assert asha == tune
    # Optuna's rule: the 3rd trial must beat both before it (0.8 < 0.9), the 5th all four before it
    sh = rung_decisions(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3), values)
    assert sh == [False, False, True, True, True, False, True, True]  # the 8th: the best 8 // 3 = 2 only
    # minimizing mirrors it: the 1/3 quantile of the values before
    assert rung_decisions(AshaPruner(min_resource=1, reduction_factor=3), [-v for v in values], "minimize") == asha
    assert make_pruner("asha", 16)._reduction_factor == 4 and isinstance(make_pruner("asha", 16), AshaPruner)
