"""The train loop on every reference task: real training beats chance; divergence is a recorded failure."""

from __future__ import annotations

import math

import pytest
import torch

from autoopt.space import TrialConfig
from autoopt.task import load_task
from autoopt.train import train

torch.set_num_threads(1)


def cfg(opt, sched="constant", warmup=0.0, **params):
    return TrialConfig(optimizer=opt, optimizer_params=params, scheduler=sched, scheduler_params={}, warmup_fraction=warmup)


def beats_chance(task, value, margin):
    if task.direction == "maximize":
        return value >= task.chance_level + margin
    return value <= task.chance_level - margin


CASES = [
    ("cv", cfg("adamw", "cosine", 0.05, lr=3e-3), 0.5),
    ("cv", cfg("nesterov", "one_cycle", 0.0, lr=0.05, momentum=0.9), 0.5),
    ("cv", cfg("radam", "linear", 0.0, lr=3e-3), 0.5),
    ("tabular", cfg("adam", "cosine", 0.1, lr=3e-3), 0.2),
    ("tabular", cfg("momentum", "step", 0.0, lr=0.01, momentum=0.9), 0.2),
    ("nlp", cfg("adamw", "constant", 0.0, lr=1e-2), 0.2),
    ("nlp", cfg("adagrad", "cosine", 0.0, lr=0.1), 0.2),
    ("nlp", cfg("sparse_adam", "linear", 0.0, lr=1e-2), 0.2),
    ("recsys", cfg("adam", "cosine", 0.0, lr=1e-2), 0.1),
    ("recsys", cfg("rmsprop", "plateau", 0.0, lr=3e-3), 0.1),
]


@pytest.mark.parametrize("task_name, config, margin", CASES, ids=[f"{t}-{c.optimizer}-{c.scheduler}" for t, c, _ in CASES])
def test_reference_tasks_train_well_above_chance(task_name, config, margin):
    task = load_task(task_name, size=0.5)
    epochs_seen = []
    out = train(task, config, on_epoch=epochs_seen.append, seed=1)
    assert out.status == "complete", out.reason
    assert beats_chance(task, out.value, margin), (out.value, task.chance_level)
    assert [r.epoch for r in out.history] == list(range(1, task.epochs + 1)) == [r.epoch for r in epochs_seen]
    assert all(r.seconds > 0 and r.lr >= 0 and math.isfinite(r.train_loss) for r in out.history)
    assert out.optimizer_state_bytes >= 0 and out.device == "cpu"


def test_diverging_configuration_is_failed_with_reason():
    task = load_task("tabular", size=0.5)
    out = train(task, cfg("sgd", lr=100.0), seed=0)
    assert out.status == "failed"
    assert out.reason.startswith("diverged:") and ("non-finite" in out.reason or "exploded" in out.reason)
    assert out.stopped_at_epoch is not None


def test_pruning_stops_the_loop():
    task = load_task("cv", size=0.25)
    calls = []

    def report(epoch, value):
        calls.append((epoch, value))
        return epoch >= 2

    out = train(task, cfg("adamw", lr=1e-3), report=report)
    assert out.status == "pruned" and out.stopped_at_epoch == 2 and len(out.history) == 2 and len(calls) == 2


def test_seeded_and_deterministic_on_cpu():
    task = load_task("cv", size=0.25, epochs=2)
    a = train(task, cfg("adam", lr=1e-3), seed=7)
    b = train(task, cfg("adam", lr=1e-3), seed=7)
    c = train(task, cfg("adam", lr=1e-3), seed=8)
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert [r.train_loss for r in a.history] != [r.train_loss for r in c.history]


def test_optimizer_state_memory_is_recorded():
    task = load_task("tabular", size=0.25, epochs=1)
    n_bytes = sum(p.numel() * 4 for p in task.build_model().parameters())
    adam = train(task, cfg("adam", lr=1e-3))
    sgd = train(task, cfg("sgd", lr=1e-3))
    assert adam.optimizer_state_bytes >= 2 * n_bytes
    assert sgd.optimizer_state_bytes < n_bytes


def test_unbuildable_config_is_a_failed_trial_not_a_crash():
    task = load_task("tabular", size=0.25, epochs=1)
    out = train(task, TrialConfig("adam", {"lr": -1.0}, "constant", {}, 0.0))
    assert out.status == "failed" and "setup failed" in out.reason


def test_evaluate_every_n_steps_reports_each_evaluation():
    task = load_task("cv", size=0.25, epochs=2)
    steps_per_epoch = len(task.loaders()[0])
    seen = []
    out = train(task, cfg("adam", lr=1e-3), report=lambda i, v: seen.append(i) or False, eval_every_steps=5)
    assert out.status == "complete"
    assert seen == list(range(1, 2 * steps_per_epoch // 5 + 1))
    assert [r.step for r in out.history] == [5 * i for i in seen]
    pruned = train(task, cfg("adam", lr=1e-3), report=lambda i, v: i >= 3, eval_every_steps=5)
    assert pruned.status == "pruned" and len(pruned.history) == 3 and "evaluation 3" in pruned.reason


def test_full_batch_lbfgs_gets_its_closure():
    """L-BFGS re-evaluates the batch inside step(): the loop hands it a closure, so a full-batch
    configuration trains instead of failing with 'step() missing closure'."""
    task = load_task("tabular", size=0.25)
    n_train = len(task.loaders()[0].dataset)
    config = TrialConfig(optimizer="lbfgs", optimizer_params={"lr": 1.0, "max_iter": 5}, scheduler="constant",
                         scheduler_params={}, warmup_fraction=0.0, batch_size=n_train)
    out = train(task, config, seed=0, epochs=3)
    assert out.status == "complete", out.reason
    assert len(out.history) == 3 and out.history[-1].train_loss < out.history[0].train_loss
    assert beats_chance(task, out.value, 0.1), (out.value, task.chance_level)
