"""MLflow outages lose nothing: a real `mlflow server` is down when the study starts, comes up
mid-study, goes down again while trials run, and `autoopt sync` brings MLflow up to date from
the Optuna storage (runs, curves, states, best config), without duplicates when run again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from local_cluster import free_port
from mlflow import MlflowClient

import autoopt
from autoopt.spec import StudySpec
from autoopt.storage import open_storage
from autoopt.sync import sync_study
from autoopt.tracking import StudyTracker, TrackingConfig, default_tracking_uri
from autoopt.ui import start_ui, stop_ui



def _wait_for(what: str, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _let_through(gate, n: int, start: int) -> None:
    for i in range(start, start + n):
        (gate / f"token-{i:03d}").touch()


@pytest.mark.slow
def test_mlflow_down_at_start_and_mid_study_loses_nothing(ray_local, workdir, monkeypatch):
    monkeypatch.setenv("AUTOOPT_TRACKING_COOLDOWN_S", "1")
    store = default_tracking_uri(workdir)
    StudyTracker(TrackingConfig(tracking_uri=store, experiment_name="init")).start("init", {}, "tpe", "none", {})
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    gate = workdir / "gate"
    gate.mkdir()
    spec = StudySpec(name="outage", task="helper_tasks:GatedTask",
                     task_options={"gate": str(gate), "size": 0.25, "epochs": 2}, n_trials=6, workers=2,
                     pruner="none", tracking_uri=uri, space={"optimizers": ["adam"], "schedulers": ["constant"]})
    url = f"sqlite:///{workdir}/autoopt-studies.db"

    def study() -> optuna.Study:
        return optuna.load_study(study_name="outage", storage=open_storage(url))  # kept: it is polled

    def states() -> list[str]:
        try:
            return [t.state.name for t in study().trials]
        except KeyError:
            return []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = autoopt.submit(spec)
        _let_through(gate, 2, 0)  # trials 0-1 run while MLflow is down: untracked, and 2-3 start untracked
        _wait_for("two untracked trials", lambda: states().count("COMPLETE") == 2)
        server = start_ui(store, port=port, log_path=workdir / "server.log")
        try:
            # the driver notices the server is back: trials 4 and 5 start with live MLflow runs
            _wait_for("the parent run", lambda: study().user_attrs.get("autoopt.mlflow_parent_run_id"))
            _let_through(gate, 2, 2)
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name("outage")
            # two RUNNING ones (trials 4 and 5, held at the gate). Trial 2 or 3 may also have got a
            # run, if its creation was retried after the server came back; that one ends FINISHED.
            _wait_for("two live trial runs", lambda: len(client.search_runs(
                [experiment.experiment_id], "tags.`autoopt.role` = 'trial' and attributes.status = 'RUNNING'")) == 2)
        finally:
            stop_ui(server)  # down again while those two run
        (gate / "open").touch()
        handle.wait(timeout=240)
    assert states() == ["COMPLETE"] * 6

    server = start_ui(store, port=port, log_path=workdir / "server.log")
    try:
        tracked_before = {x.data.tags["autoopt.trial_number"]: x.info.status for x in client.search_runs(
            [experiment.experiment_id], "tags.`autoopt.role` = 'trial'")}
        r = subprocess.run([sys.executable, "-m", "autoopt.cli", "sync", "outage", "--json"], cwd=workdir,
                           capture_output=True, text=True, timeout=180, env={**os.environ, "AUTOOPT_STORAGE": url})
        assert r.returncode == 0, r.stderr[-3000:]
        report = json.loads(r.stdout.strip().splitlines()[-1])
        tracked = len(tracked_before)  # trial runs made while the server was up (4 and 5, perhaps 2 or 3)
        assert 2 <= tracked <= 4, tracked_before
        assert report["reachable"] and report["created"] == 6 - tracked, report
        assert report["completed"] == 2 and report["unchanged"] == tracked - 2, report
        runs = client.search_runs([experiment.experiment_id], "tags.`autoopt.study` = 'outage'")
        trial_runs = {int(x.data.tags["autoopt.trial_number"]): x for x in runs if x.data.tags["autoopt.role"] == "trial"}
        assert sorted(trial_runs) == list(range(6))
        for t in study().trials:
            run = trial_runs[t.number]
            assert run.info.status == "FINISHED"
            assert run.data.params["optimizer"] == "adam"
            curve = client.get_metric_history(run.info.run_id, "val_mse")
            assert sorted(p.step for p in curve) == [1, 2]
            assert [p.value for p in sorted(curve, key=lambda p: p.step)] == [h["val_metric"] for h in t.user_attrs["autoopt.history"]]
        parent = next(x for x in runs if x.data.tags["autoopt.role"] == "study")
        parent = client.get_run(parent.info.run_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["best_value"] == pytest.approx(study().best_value)
        assert parent.data.tags["autoopt.best.optimizer"] == "adam"
        assert "best_config.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        # again: nothing twice
        again = sync_study(study())
        assert (again["created"], again["completed"], again["unchanged"]) == (0, 0, 6)
        assert len(client.search_runs([experiment.experiment_id], "tags.`autoopt.study` = 'outage'")) == 7
    finally:
        stop_ui(server)


def test_check_trials_false_ends_the_parent_without_reading_back_the_trial_runs(tmp_path):
    """What the study's end does when every trial's run was written and confirmed: only the
    parent run is brought up to date (reading back a thousand runs costs seconds)."""
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="quiet", storage=url, direction="maximize")
    study.set_user_attr("autoopt.metric", "val_accuracy")
    for v in (0.5, 0.7):
        t = study.ask()
        t.suggest_categorical("optimizer", ["adam"])
        t.set_user_attr("autoopt.config", {"optimizer": "adam", "optimizer_params": {"lr": 1e-3}})
        study.tell(t, v)
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="quiet"))
    report = sync_study(study, tracker=tracker, finish_parent=True, check_trials=False)
    assert report["reachable"] and (report["created"], report["completed"]) == (0, 0)
    client = MlflowClient(uri)
    runs = client.search_runs([tracker.experiment_id], "tags.`autoopt.study` = 'quiet'")
    assert [r.data.tags["autoopt.role"] for r in runs] == ["study"]  # the trials' runs were not written
    assert runs[0].info.status == "FINISHED" and runs[0].data.metrics["best_value"] == pytest.approx(0.7)
    assert sync_study(study, tracker=tracker, finish_parent=False)["created"] == 2  # the default checks them


def test_a_trial_run_without_its_params_is_completed_not_left_alone(tmp_path):
    """The store can go down between a trial run's creation and its params' write (what CI once
    caught: the server stopped while two trials had just started). Such a run, even FINISHED with
    its whole curve, is not up to date: sync writes the params from the storage."""
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="bare", storage=url, direction="maximize")
    study.set_user_attr("autoopt.metric", "val_accuracy")
    t = study.ask()
    t.suggest_categorical("optimizer", ["adam"])
    t.set_user_attr("autoopt.config", {"optimizer": "adam", "optimizer_params": {"lr": 1e-3}})
    t.set_user_attr("autoopt.history", [{"epoch": 1, "train_loss": 1.0, "val_metric": 0.5, "lr": 1e-3,
                                         "seconds": 0.1}])
    study.tell(t, 0.5)
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="bare"))
    assert sync_study(study, tracker=tracker)["created"] == 1
    client = MlflowClient(uri)
    [run] = client.search_runs([tracker.experiment_id], "tags.`autoopt.role` = 'trial'")
    assert run.data.params["optimizer"] == "adam" and run.data.params["trial_number"] == "0"
    # the same run as an outage leaves it: created, curve and end written, params not
    bare = client.create_run(tracker.experiment_id, tags={k: v for k, v in run.data.tags.items()
                                                          if k.startswith("autoopt.") or k.startswith("mlflow.parent")})
    client.delete_run(run.info.run_id)
    client.log_metric(bare.info.run_id, "val_accuracy", 0.5, step=1)
    client.set_terminated(bare.info.run_id, "FINISHED")
    report = sync_study(study, tracker=tracker)
    assert (report["created"], report["completed"], report["unchanged"]) == (0, 1, 0), report
    params = client.get_run(bare.info.run_id).data.params
    assert params["optimizer"] == "adam" and params["optimizer.lr"] == "0.001", params
    assert sync_study(study, tracker=tracker)["unchanged"] == 1  # and now it is left alone
