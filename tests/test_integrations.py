"""PyTorch Lightning and Hugging Face Trainer objectives as real studies on Ray: each trains a tiny
model built from code, is pruned by the study's pruner through the integration's callback, and
lands in storage and MLflow exactly like a Task study."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import autoopt
from autoopt.core import record as R
from autoopt.spec import StudySpec
from autoopt.trial import Trial
from helper_objectives import PRUNE_BELOW, SPACE
from test_objective import CONFIG, check_like_a_task_study

# found, not imported: importing Lightning takes about 3 s, and every pytest process collects this
# file while only the one that runs it needs Lightning
_MISSING = [name for name in ("lightning", "transformers") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"not installed: {', '.join(_MISSING)}")


def test_lightning_study_prunes_through_the_callback(ray_local, workdir):
    spec = StudySpec(name="lit", metric="val_acc", direction="maximize", max_reports=3, n_trials=3, workers=2,
                     pruner="threshold", pruner_options=PRUNE_BELOW, space=SPACE, seed=5)
    result = autoopt.run(spec, objective="helper_integrations:lightning_objective")
    check_like_a_task_study(result, "val_acc")
    assert result.best_value > 0.75
    complete = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    # the callback also carried Lightning's epoch train loss onto the curve
    assert all(h["train_loss"] is not None for t in complete for h in t.user_attrs[R.HISTORY])


def test_hf_trainer_study_prunes_through_the_callback(ray_local, workdir):
    # the pruner looks from the second report on (the tiny BERT may need two epochs to learn)
    space = {**SPACE, "params": {"adamw": {"lr": 3e-3}, "sgd": {"lr": 1e-6}}, "schedulers": ["constant"]}
    spec = StudySpec(name="hf", metric="eval_accuracy", direction="maximize", max_reports=3, n_trials=3, workers=2,
                     pruner="threshold", pruner_options={"lower": 0.7, "n_warmup_steps": 2}, space=space, seed=5)
    result = autoopt.run(spec, objective="helper_integrations:hf_objective")
    study = check_like_a_task_study(result, "eval_accuracy", pruned_at=2)
    assert result.best_value > 0.7
    assert study.user_attrs[R.TRAITS]["domain"] == "nlp" and study.user_attrs[R.TRAITS]["n_params"] > 1000


def test_lightning_callback_stops_fit_with_trial_pruned():
    from helper_integrations import lightning_objective

    steps = []
    trial = Trial(CONFIG, pruner=lambda step, value: steps.append(step) or step >= 2, metric="val_acc")
    outcome = trial.run(lightning_objective)
    assert outcome.status == "pruned" and steps == [1, 2] and outcome.stopped_at_epoch == 2
    assert isinstance(trial._schedulers[0], torch.optim.lr_scheduler.LRScheduler)
    schedule = trial._schedulers[0].schedule  # stepped per optimizer step by Lightning, sized by its estimate
    assert schedule.steps_taken == 2 * 512 // 16 and schedule.total_steps == 3 * 512 // 16


def test_hf_scheduler_is_stepped_by_the_trainer():
    from helper_integrations import hf_objective

    trial = Trial.fixed({**CONFIG, "scheduler": "linear", "batch_size": None})
    value = Trial.run(trial, hf_objective)
    assert value.status == "complete" and [h.epoch for h in value.history] == [1, 2, 3]
    (sched,) = trial._schedulers
    assert sched.schedule.steps_taken == 3 * 256 // 32  # one step per optimizer step: warmup and decay ran
    assert sched.get_last_lr()[0] < 0.01 and isinstance(sched, torch.optim.lr_scheduler.LRScheduler)


def test_lightning_validates_a_schedule_free_optimizer_at_its_averaged_weights():
    """Lightning never calls a schedule-free optimizer's eval(): the callback does, around each
    validation, and training goes on in train mode."""
    from helper_integrations import MODES, lightning_objective
    from test_objective import SCHEDULE_FREE

    MODES.clear()
    outcome = Trial.fixed({**SCHEDULE_FREE, "batch_size": None}).run(lightning_objective)
    assert outcome.status == "complete" and len(outcome.history) == 3
    seen = {stage: {mode for s, mode in MODES if s == stage} for stage in ("train", "val")}
    assert seen["train"] == {True}
    assert False in seen["val"] and True not in seen["val"]  # None: the sanity check before any optimizer
