"""MLflow tracking against a real local store: nested trial runs, curves, states, study results.

The study is a real (tiny) Optuna optimize loop that trains a small torch model the way the
runner does: trial.report / should_prune per epoch, the autoopt.* user_attrs contract, and a
TrialLogger per trial. One trial is pruned (MedianPruner) and one fails (diverging loss).
"""

from __future__ import annotations

import logging
import math
import pickle
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient

from autoopt.core import record as R
from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.report import PLOT_NAMES
from autoopt.tracking import (
    EXPERIMENT_KIND,
    StudyTracker,
    TrackingConfig,
    TrackingUnavailableWarning,
    TrialLogger,
    default_tracking_uri,
    log_report,
    resolve_tracking_uri,
)
from autoopt.ui import start_ui, stop_ui
from bench.tracking_cost import measure_overhead
from local_cluster import free_port

MAX_EPOCHS = 4
TRAITS = {"domain": "tabular", "batch_size": 32, "grad_sparsity": 0.0, "n_params": 50,
          "dataset_size": 256, "metric": "val_accuracy", "direction": "maximize"}
# Trials 0-1 complete (startup trials of the pruner), 2 is pruned (lr too small to learn),
# 3 fails (lr so large the loss overflows).
ENQUEUED = [
    {"optimizer": "adamw", "adamw.lr": 0.05, "scheduler": "cosine"},
    {"optimizer": "momentum", "momentum.lr": 0.5, "scheduler": "step", "step.step_fraction": 0.25},
    {"optimizer": "momentum", "momentum.lr": 1e-6, "scheduler": "cosine"},
    {"optimizer": "momentum", "momentum.lr": 1e38, "scheduler": "cosine", "warmup_fraction": 0.0},
]


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return (x[:256], y[:256]), (x[256:], y[256:])


def _objective(tracker: StudyTracker):
    (xt, yt), (xv, yv) = _data()

    def objective(trial: optuna.Trial) -> float:
        opt = trial.suggest_categorical("optimizer", ["adamw", "momentum"])
        lr = trial.suggest_float(f"{opt}.lr", 1e-7, 1e38, log=True)
        opt_params = {"lr": lr}
        if opt == "adamw":
            opt_params["beta1"] = trial.suggest_float("adamw.beta1", 0.8, 0.95)
            opt_params["beta2"] = 0.999
            opt_params["weight_decay"] = trial.suggest_float("adamw.weight_decay", 1e-4, 1e-1, log=True)
        else:
            opt_params["momentum"] = trial.suggest_float("momentum.momentum", 0.0, 0.9)
        sched = trial.suggest_categorical("scheduler", ["cosine", "step"])
        sched_params = {"step_fraction": trial.suggest_float("step.step_fraction", 0.1, 0.5)} if sched == "step" else {}
        config = {"optimizer": opt, "optimizer_params": opt_params, "scheduler": sched,
                  "scheduler_params": sched_params,
                  "warmup_fraction": trial.suggest_float("warmup_fraction", 0.0, 0.2),
                  "grad_clip": None, "batch_size": trial.suggest_categorical("batch_size", [32, 64])}
        trial.set_user_attr(R.CONFIG, config)
        trial.set_user_attr(R.MAX_EPOCHS, MAX_EPOCHS)
        logger = tracker.trial_logger(trial.number, trial.params, config)
        run_id = logger.start(host="test-host", device="cpu")
        trial.set_user_attr(R.MLFLOW_RUN_ID, run_id)

        torch.manual_seed(trial.number)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        kwargs = dict(opt_params)
        if opt == "adamw":
            kwargs["betas"] = (kwargs.pop("beta1"), kwargs.pop("beta2"))
        optimizer = (torch.optim.AdamW if opt == "adamw" else torch.optim.SGD)(model.parameters(), **kwargs)
        history: list[EpochRecord] = []
        start = time.perf_counter()

        def end(status: str, reason: str | None = None, stopped: int | None = None) -> TrialOutcome:
            best = max((h.val_metric for h in history), default=None)
            state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                              for t in s.values() if torch.is_tensor(t))
            outcome = TrialOutcome(status, best, history, reason, stopped, state_bytes, "cpu", "test-host",
                                   time.perf_counter() - start)
            for key, value in {"history": [h.to_dict() for h in history], "status": status, "reason": reason,
                               "epochs_run": outcome.epochs_run, "stopped_at_epoch": stopped, "device": "cpu",
                               "host": "test-host", "optimizer_state_bytes": state_bytes,
                               "seconds": outcome.seconds}.items():
                trial.set_user_attr(R.PREFIX + key, value)
            logger.finish(outcome)
            return outcome

        for epoch in range(1, MAX_EPOCHS + 1):
            t0 = time.perf_counter()
            losses = []
            for i in range(0, len(xt), config["batch_size"]):
                loss = torch.nn.functional.cross_entropy(model(xt[i:i + 32]), yt[i:i + 32])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                if not math.isfinite(losses[-1]):
                    break
            train_loss = sum(losses) / len(losses)
            if not math.isfinite(train_loss):
                end("failed", f"train loss is {train_loss} at epoch {epoch}", epoch)
                raise FloatingPointError(f"train loss is {train_loss}")
            with torch.no_grad():
                acc = (model(xv).argmax(-1) == yv).float().mean().item()
            record = EpochRecord(epoch, train_loss, acc, optimizer.param_groups[0]["lr"], time.perf_counter() - t0)
            history.append(record)
            logger.log_epoch(record)
            trial.report(acc, epoch)
            if trial.should_prune():
                end("pruned", f"MedianPruner at epoch {epoch}", epoch)
                raise optuna.TrialPruned()
        return end("complete").value

    return objective


def _run_study(tmp_path: Path, tracker: StudyTracker, name: str = "tiny") -> optuna.Study:
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )
    spec = {"name": name, "task": "tabular", "n_trials": len(ENQUEUED), "epochs": MAX_EPOCHS,
            "sampler": "random", "pruner": "median", "seed": 0, "task_options": {"size": 0.1},
            "space": {"optimizers": ["adamw", "momentum"]}}
    parent = tracker.start(name, spec, "RandomSampler", "MedianPruner", TRAITS)
    for key, value in {"spec": spec, "task": "tabular", "traits": TRAITS, "metric": "val_accuracy",
                       "direction": "maximize", "mlflow_parent_run_id": parent,
                       "mlflow_experiment_id": tracker.experiment_id,
                       "tracking_uri": tracker.config.tracking_uri}.items():
        study.set_user_attr(R.PREFIX + key, value)
    for params in ENQUEUED:
        study.enqueue_trial(params)
    study.optimize(_objective(tracker), n_trials=len(ENQUEUED), catch=(FloatingPointError,))
    tracker.finish(study)
    return study


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tracked")
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="tiny", flush_every=3))
    study = _run_study(tmp_path, tracker)
    return study, tracker, MlflowClient(uri), tmp_path


def test_trial_states_are_the_intended_ones(tracked):
    study, *_ = tracked
    assert [t.user_attrs[R.STATUS] for t in study.trials] == ["complete", "complete", "pruned", "failed"]


def test_one_nested_child_run_per_trial(tracked):
    study, tracker, client, _ = tracked
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.name == "tiny" and exp.tags["mlflow.experimentKind"] == EXPERIMENT_KIND
    runs = client.search_runs([tracker.experiment_id])
    parents = [r for r in runs if r.data.tags.get("autoopt.role") == "study"]
    assert [p.info.run_id for p in parents] == [tracker.parent_run_id]
    children = client.search_runs([tracker.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'")
    assert sorted(int(c.data.tags["autoopt.trial_number"]) for c in children) == [0, 1, 2, 3]
    assert len(runs) == 1 + len(study.trials)
    by_number = {int(c.data.tags["autoopt.trial_number"]): c for c in children}
    for trial in study.trials:
        assert by_number[trial.number].info.run_id == trial.user_attrs[R.MLFLOW_RUN_ID]


def test_child_runs_hold_params_curves_and_state(tracked):
    study, tracker, client, _ = tracked
    children = client.search_runs([tracker.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'")
    expected_status = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
    for run in children:
        trial = study.trials[int(run.data.tags["autoopt.trial_number"])]
        config = trial.user_attrs[R.CONFIG]
        status = trial.user_attrs[R.STATUS]
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        # Sampled config, flattened.
        assert params["optimizer"] == trial.params["optimizer"] == config["optimizer"]
        assert float(params["optimizer.lr"]) == pytest.approx(config["optimizer_params"]["lr"])
        assert params["scheduler"] == config["scheduler"]
        assert float(params["warmup_fraction"]) == pytest.approx(config["warmup_fraction"])
        assert params["batch_size"] == str(config["batch_size"])
        if config["optimizer"] == "adamw":
            assert params["optimizer.beta1"] == str(config["optimizer_params"]["beta1"])
            assert params["optimizer.beta2"] == "0.999"
            assert "optimizer.betas" not in params
        else:
            assert float(params["optimizer.momentum"]) == pytest.approx(config["optimizer_params"]["momentum"])
        if config["scheduler"] == "step":
            assert params["scheduler.step_fraction"] == str(config["scheduler_params"]["step_fraction"])
        # Traits, host, device, state.
        assert tags["autoopt.trait.domain"] == "tabular" and tags["autoopt.trait.metric"] == "val_accuracy"
        assert tags["autoopt.host"] == "test-host" and tags["autoopt.device"] == "cpu"
        assert tags["autoopt.state"] == status
        assert run.info.status == expected_status[status]
        assert metrics["optimizer_state_bytes"] == trial.user_attrs[R.OPTIMIZER_STATE_BYTES]
        assert metrics["epochs_run"] == trial.user_attrs[R.EPOCHS_RUN]
        # Per-epoch curves with steps, exactly as recorded.
        history = trial.user_attrs[R.HISTORY]
        for key, field in (("val_accuracy", "val_metric"), ("train_loss", "train_loss"), ("lr", "lr"),
                           ("epoch_seconds", "seconds")):
            points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.step for m in points] == [h["epoch"] for h in history], key
            assert [m.value for m in points] == pytest.approx([h[field] for h in history]), key
        if status == "complete":
            assert metrics["best_val_accuracy"] == pytest.approx(trial.value)
            assert "autoopt.reason" not in tags
        else:
            assert tags["autoopt.stopped_at_epoch"] == str(trial.user_attrs[R.STOPPED_AT_EPOCH])
            assert tags["autoopt.reason"] == trial.user_attrs[R.REASON]
    pruned = next(r for r in children if r.data.tags["autoopt.state"] == "pruned")
    assert pruned.data.tags["autoopt.reason"] == "MedianPruner at epoch 2"
    failed = next(r for r in children if r.data.tags["autoopt.state"] == "failed")
    assert "nan" in failed.data.tags["autoopt.reason"] or "inf" in failed.data.tags["autoopt.reason"]


def test_parent_run_holds_study_results(tracked):
    study, tracker, client, tmp_path = tracked
    parent = client.get_run(tracker.parent_run_id)
    params, metrics, tags = parent.data.params, parent.data.metrics, parent.data.tags
    assert parent.info.status == "FINISHED" and tags["autoopt.state"] == "finished"
    assert params["sampler"] == "RandomSampler" and params["pruner"] == "MedianPruner"
    assert params["n_trials"] == str(len(ENQUEUED)) and params["task_options.size"] == "0.1"
    assert metrics["best_value"] == pytest.approx(study.best_value)
    assert metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    assert metrics["best_trial"] == study.best_trial.number
    best_config = study.best_trial.user_attrs[R.CONFIG]
    assert tags["autoopt.best.optimizer"] == best_config["optimizer"]
    assert float(tags["autoopt.best.optimizer.lr"]) == pytest.approx(best_config["optimizer_params"]["lr"])
    assert (metrics["n_complete"], metrics["n_pruned"], metrics["n_failed"]) == (2, 1, 1)
    epochs_run = sum(t.user_attrs[R.EPOCHS_RUN] for t in study.trials)
    assert metrics["epochs_run"] == epochs_run == MAX_EPOCHS * 2 + 2  # the failed trial died in epoch 1
    assert metrics["epochs_budget"] == MAX_EPOCHS * len(ENQUEUED)
    assert metrics["pruning_saved_fraction"] == pytest.approx(1 - epochs_run / (MAX_EPOCHS * len(ENQUEUED)))

    artifacts = {a.path for a in client.list_artifacts(tracker.parent_run_id)}
    assert {"best_config.py", "best_config.json", "spec.yaml", "summary.json", "plots"} <= artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(tracker.parent_run_id, "plots")}
    assert {f"{n}.{ext}" for n in PLOT_NAMES for ext in ("html", "png")} <= plots

    # best_config.py is runnable python that builds the best optimizer and schedule.
    local = Path(client.download_artifacts(tracker.parent_run_id, "best_config.py", str(tmp_path)))
    namespace: dict = {}
    exec(compile(local.read_text(), str(local), "exec"), namespace)
    assert namespace["CONFIG"] == best_config
    model = torch.nn.Linear(4, 2)
    optimizer = namespace["build_optimizer"](model)
    assert type(optimizer) is {"adamw": torch.optim.AdamW, "momentum": torch.optim.SGD}[best_config["optimizer"]]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(best_config["optimizer_params"]["lr"])
    if best_config["optimizer"] == "momentum":
        assert optimizer.param_groups[0]["momentum"] == pytest.approx(best_config["optimizer_params"]["momentum"])
    schedule = namespace["build_lr_schedule"](optimizer, epochs=2, steps_per_epoch=3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    schedule.step_batch()
    assert schedule.steps_taken == 1 and math.isfinite(schedule.lr)


def test_metrics_are_batched(tmp_path):
    """start = 2 requests, one write per flush_every epochs, finish = the last epochs with the
    outcome + end."""
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="batched", flush_every=5))
    tracker.start("batched", {}, "tpe", "none", TRAITS)
    logger = tracker.trial_logger(0, {"optimizer": "sgd"}, {"optimizer": "sgd", "optimizer_params": {"lr": 0.1}})
    logger.start("h", "cpu")
    history = [EpochRecord(e, 1 / e, e / 12, 0.1, 0.01) for e in range(1, 13)]
    for rec in history:
        logger.log_epoch(rec)
    assert len(logger._pending) == 1 + 2  # params, two flushes after epochs 5 and 10: in the background
    logger.finish(TrialOutcome("complete", history[-1].val_metric, history))
    assert logger.requests == 2 + 2 + 2
    points = MlflowClient(uri).get_metric_history(logger.run_id, "val_accuracy")
    assert sorted(m.step for m in points) == list(range(1, 13))
    assert logger.overhead_seconds > 0


def test_finish_logs_epochs_that_bypassed_log_epoch(tmp_path):
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="bypass"))
    tracker.start("bypass", {}, "tpe", "none", {"metric": "val_mse", "direction": "minimize"})
    logger = tracker.trial_logger(0, {}, {"optimizer": "adam", "optimizer_params": {"lr": 1e-3}})
    logger.start("h", "cpu")
    history = [EpochRecord(e, 1 / e, 1 / e, 1e-3, 0.01) for e in range(1, 4)]
    logger.log_epoch(history[0])
    logger.finish(TrialOutcome("pruned", 1 / 3, history, reason="hyperband", stopped_at_epoch=3))
    client = MlflowClient(uri)
    assert sorted(m.step for m in client.get_metric_history(logger.run_id, "val_mse")) == [1, 2, 3]
    run = client.get_run(logger.run_id)
    assert run.info.status == "KILLED" and run.data.tags["autoopt.state"] == "pruned"


def test_report_regenerates_plots_into_the_parent_run(tmp_path):
    """`autoopt report NAME`: plots rebuilt from Optuna storage alone, logged to the parent run."""
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="later", log_plots=False))
    parent = tracker.start("later", {"n_trials": 3}, "tpe", "median", TRAITS)
    study = optuna.create_study(study_name="later", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                direction="maximize")
    for key, value in {"metric": "val_accuracy", "mlflow_parent_run_id": parent, "tracking_uri": uri}.items():
        study.set_user_attr(R.PREFIX + key, value)
    dist = {"optimizer": optuna.distributions.CategoricalDistribution(["adamw", "sgd"]),
            "adamw.lr": optuna.distributions.FloatDistribution(1e-5, 1, log=True),
            "sgd.lr": optuna.distributions.FloatDistribution(1e-5, 1, log=True)}
    for number, (opt, lr, status) in enumerate([("adamw", 1e-3, "complete"), ("sgd", 0.1, "complete"),
                                                 ("sgd", 1e-4, "pruned")]):
        epochs = 3 if status == "complete" else 1
        history = [{"epoch": e, "train_loss": 1 / e, "val_metric": lr * e, "lr": lr, "seconds": 0.1}
                   for e in range(1, epochs + 1)]
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if status == "complete" else optuna.trial.TrialState.PRUNED,
            value=history[-1]["val_metric"] if status == "complete" else None,
            params={"optimizer": opt, f"{opt}.lr": lr}, distributions={k: dist[k] for k in ("optimizer", f"{opt}.lr")},
            intermediate_values={h["epoch"]: h["val_metric"] for h in history},
            user_attrs={R.CONFIG: {"optimizer": opt, "optimizer_params": {"lr": lr}, "scheduler": "cosine",
                                           "scheduler_params": {}, "warmup_fraction": 0.0, "grad_clip": None,
                                           "batch_size": 32},
                        R.HISTORY: history, R.STATUS: status, R.EPOCHS_RUN: epochs,
                        R.MAX_EPOCHS: 3, R.STOPPED_AT_EPOCH: None if status == "complete" else 1},
        ))
    tracker.finish(study)
    client = MlflowClient(uri)
    assert "plots" not in {a.path for a in client.list_artifacts(parent)}
    paths = log_report(study, tmp_path / "report")
    assert {p.name for p in paths} >= {f"{n}.{ext}" for n in PLOT_NAMES for ext in ("html", "png")}
    plots = {Path(a.path).name for a in client.list_artifacts(parent, "plots")}
    assert plots == {f"{n}.{ext}" for n in PLOT_NAMES for ext in ("html", "png")}
    # Already written reports (e.g. by the CLI) are logged as they are.
    extra = tmp_path / "again" / "learning_curves.html"
    extra.parent.mkdir()
    extra.write_text("<html>plotly</html>")
    assert log_report(study, [extra]) == [extra]
    logged = Path(client.download_artifacts(parent, "plots/learning_curves.html", str(tmp_path / "dl")))
    assert logged.read_text() == "<html>plotly</html>"


def test_resume_reopens_the_parent_run(tracked, tmp_path):
    study, tracker, client, _ = tracked
    again = StudyTracker(replace(tracker.config, log_plots=False))
    run_id = again.start("tiny", study.user_attrs[R.SPEC], "RandomSampler", "MedianPruner", TRAITS,
                         resume_run_id=tracker.parent_run_id)
    assert run_id == tracker.parent_run_id and again.experiment_id == tracker.experiment_id
    assert client.get_run(run_id).info.status == "RUNNING"
    again.finish(study)
    assert client.get_run(run_id).info.status == "FINISHED"


# A worker process: gets a pickled TrialLogger (as a Ray worker does) and logs one trial.
_WORKER = """
import pickle, socket, sys
from autoopt.core.record import EpochRecord, TrialOutcome
logger = pickle.loads(sys.stdin.buffer.read())
logger.start(host=socket.gethostname(), device="cpu")
history = []
for e in range(1, 16):
    history.append(EpochRecord(e, 1 / e, e / 15, 0.01, 0.001))
    logger.log_epoch(history[-1])
logger.finish(TrialOutcome("complete", 1.0, history))
print(logger.run_id)
"""


def test_concurrent_worker_processes_write_to_the_local_store(tmp_path):
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="parallel", flush_every=1))
    tracker.start("parallel", {}, "tpe", "none", TRAITS)
    procs = []
    for i in range(3):
        logger = tracker.trial_logger(i, {}, {"optimizer": "sgd", "optimizer_params": {"lr": 0.01}})
        proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(pickle.dumps(logger))
        proc.stdin.close()
        procs.append(proc)
    run_ids = []
    for proc in procs:
        proc.wait(timeout=120)
        out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        assert proc.returncode == 0, err
        assert "Warning" not in err, err
        run_ids.append(out.strip().splitlines()[-1])
    client = MlflowClient(uri)
    assert len(set(run_ids)) == 3
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
        assert sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy")) == list(range(1, 16))


def test_unreachable_server_warns_once_and_never_raises():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = TrackingConfig(tracking_uri=uri, experiment_name="down")
    # As if the server went away after the study started: the worker gets a live-looking logger.
    logger = TrialLogger(config, experiment_id="1", parent_run_id="0" * 32, study_name="down",
                         trial_number=0, params={"optimizer": "sgd"},
                         trial_config={"optimizer": "sgd", "optimizer_params": {"lr": 0.1}},
                         metric_name="val_accuracy")
    history = [EpochRecord(e, 1 / e, e / 20, 0.1, 0.01) for e in range(1, 21)]
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert logger.start("h", "cpu") is None
        for rec in history:
            logger.log_epoch(rec)
        logger.finish(TrialOutcome("complete", 1.0, history))
        # The driver side degrades the same way, without a second warning for this process.
        tracker = StudyTracker(config)
        assert tracker.start("down", {"n_trials": 1}, "tpe", "none", TRAITS) is None
        tracker.trial_logger(1, {}, {}).start("h", "cpu")
        tracker.finish(optuna.create_study())
    elapsed = time.perf_counter() - start
    ours = [w for w in caught if issubclass(w.category, TrackingUnavailableWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert uri in str(ours[0].message)
    assert elapsed < 10, elapsed


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("AUTOOPT_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://mlflow.example:5000"
    monkeypatch.setenv("AUTOOPT_TRACKING_URI", "http://autoopt.example:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://autoopt.example:5000"
    assert resolve_tracking_uri("sqlite:///rel/x.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/rel/x.db"
    config = TrackingConfig.resolve("my-study", workdir=tmp_path)
    assert config.experiment_name == "my-study" and config.tracking_uri == "http://autoopt.example:5000"
    assert TrackingConfig.resolve("s", experiment_name="project-x").experiment_name == "project-x"


def test_tracking_cost_bench_logs_what_it_times(tmp_path):
    """bench/tracking_cost.py times real logging (its numbers go to docs/benchmarks.md, not here):
    each of its trials must be a finished child run with every epoch's metric in the store."""
    uri = default_tracking_uri(tmp_path)
    result = measure_overhead(uri, n_trials=3, n_epochs=10, experiment_name="cost")
    assert result["seconds_per_epoch"] == pytest.approx(result["seconds_per_trial"] / 10)
    assert result["max_seconds_per_trial"] >= result["seconds_per_trial"] > 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cost").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == list(range(1, 11))


@pytest.mark.slow
def test_worker_logs_to_a_tracking_server_and_survives_losing_it(tmp_path):
    """Remote mode: the trial logs over HTTP; when the server dies mid-trial training goes on."""
    store = default_tracking_uri(tmp_path)
    StudyTracker(TrackingConfig(tracking_uri=store, experiment_name="init")).start("init", {}, "tpe", "none", {})
    port = free_port()
    server = start_ui(store, port=port, log_path=tmp_path / "server.log")
    try:
        uri = f"http://127.0.0.1:{port}"
        tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="remote", flush_every=1))
        assert tracker.start("remote", {"n_trials": 1}, "tpe", "none", TRAITS) is not None
        logger = pickle.loads(pickle.dumps(tracker.trial_logger(0, {"optimizer": "sgd"},
                                                                {"optimizer": "sgd", "optimizer_params": {"lr": 0.1}})))
        assert logger.start("h", "cpu") is not None
        history = [EpochRecord(e, 1 / e, e / 10, 0.1, 0.01) for e in range(1, 11)]
        for rec in history[:3]:
            logger.log_epoch(rec)
    finally:
        stop_ui(server)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rec in history[3:]:
            logger.log_epoch(rec)
        logger.finish(TrialOutcome("complete", 1.0, history))
    assert time.perf_counter() - start < 10
    assert len([w for w in caught if issubclass(w.category, TrackingUnavailableWarning)]) == 1
    # What reached the server before it died is in its store.
    points = MlflowClient(store).get_metric_history(logger.run_id, "val_accuracy")
    assert sorted(m.step for m in points) == [1, 2, 3]


def test_a_new_local_store_is_a_copy_of_an_empty_one_that_mlflow_accepts(tmp_path, monkeypatch, caplog):
    """A store copied from the cached empty store holds what MLflow's own migrations create (the
    same schema, revision and rows, the Default experiment's folder set for this one), never
    replaces an existing store, and MLflow uses it as its own."""
    import sqlite3

    from autoopt.local_store import ensure_local_store
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    native = tmp_path / "native.db"
    SqlAlchemyStore(f"sqlite:///{native}", "./mlruns").engine.dispose()  # what MLflow makes by itself
    copied = tmp_path / "project" / "mlflow.db"
    caplog.clear()  # the native store above logged them
    with caplog.at_level(logging.INFO, logger="mlflow"):
        assert ensure_local_store(copied) and any((tmp_path / "cache").iterdir())
    # the cache's build is not the user's store: a first study prints no "Creating initial MLflow
    # database tables..." (MLflow's INFO lines reach the terminal of `autoopt run`)
    assert not [r for r in caplog.records if r.name.startswith("mlflow.store")], caplog.text
    assert not ensure_local_store(copied)  # exists: left alone

    def contents(path):  # the structure (tables, their columns, indexes) and rows; not the DDL text, whose
        # quoting depends on whether a table was created directly or rebuilt by a migration
        with sqlite3.connect(path) as db:
            objects = sorted(db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
            tables = [t for kind, t in objects if kind == "table"]
            columns = {t: sorted(c[1] for c in db.execute(f'PRAGMA table_info("{t}")')) for t in tables}
            schema = (objects, columns)
            rows = {t: db.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
        rows["experiments"] = [(e[0], e[1], e[2], e[3], e[6]) for e in rows["experiments"]]  # not the times
        return schema, rows

    assert contents(copied) == contents(native)
    client = MlflowClient(tracking_uri=f"sqlite:///{copied}")
    exp = client.create_experiment("x")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert client.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")
