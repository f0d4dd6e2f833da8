"""Browser test: the MLflow UI started by `autoopt ui` shows the study's parent run and nested trials.

Starts the real MLflow server on a real store, loads the (React) UI in headless Chromium with
enough virtual time for its API calls, and checks the rendered DOM; the REST API is queried as
well. Screenshots are kept under tests/artifacts/.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from autoopt.core import record as R
from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.tracking import StudyTracker, TrackingConfig, default_tracking_uri
from autoopt.ui import experiment_url, run_url, start_ui, stop_ui, ui_url
from local_cluster import free_port

ARTIFACTS = Path(__file__).parent / "artifacts"
STUDY = "ui-study"
OUTCOMES = [("complete", None, None), ("pruned", 2, "HyperbandPruner at epoch 2"),
            ("failed", 1, "loss is nan at epoch 1")]


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROME_BIN"), "chromium", "chromium-browser", "google-chrome",
                      "google-chrome-stable"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _browse(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM text after the SPA has rendered (virtual time lets its timers and fetches run)."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=20000",
           "--dump-dom"]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    result = subprocess.run(cmd + [url], capture_output=True, timeout=120)
    dom = result.stdout.decode(errors="replace")
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def _api(base: str, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _tracked_store(tmp_path: Path) -> tuple[str, StudyTracker, dict[str, str]]:
    """A real store holding one study: parent run + one nested run per trial outcome."""
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name=STUDY, log_plots=False))
    traits = {"domain": "cv", "metric": "val_accuracy", "direction": "maximize"}
    tracker.start(STUDY, {"n_trials": 3, "task": "cv"}, "TPESampler", "HyperbandPruner", traits)
    study = optuna.create_study(study_name=STUDY, direction="maximize")
    study.set_user_attr(R.METRIC, "val_accuracy")
    run_ids = {}
    for number, (status, stop, reason) in enumerate(OUTCOMES):
        config = {"optimizer": "adamw", "optimizer_params": {"lr": 10 ** -(number + 2)}, "scheduler": "cosine",
                  "scheduler_params": {}, "warmup_fraction": 0.05, "grad_clip": None, "batch_size": 32}
        logger = tracker.trial_logger(number, {"optimizer": "adamw", "adamw.lr": config["optimizer_params"]["lr"]},
                                      config)
        run_ids[status] = logger.start("ui-host", "cpu")
        history = [EpochRecord(e, 1 / e, 0.5 + e / 10, 1e-3, 0.05) for e in range(1, (stop or 3) + 1)]
        for record in history:
            logger.log_epoch(record)
        logger.finish(TrialOutcome(status, history[-1].val_metric, history, reason, stop))
        study.add_trial(create_trial(
            state={"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}[status],
            value=history[-1].val_metric if status == "complete" else None,
            params={"optimizer": "adamw", "adamw.lr": config["optimizer_params"]["lr"]},
            distributions={"optimizer": CategoricalDistribution(["adamw"]),
                           "adamw.lr": FloatDistribution(1e-6, 1.0, log=True)},
            user_attrs={R.CONFIG: config, R.HISTORY: [h.to_dict() for h in history],
                        R.STATUS: status, R.REASON: reason, R.EPOCHS_RUN: len(history),
                        R.MAX_EPOCHS: 3, R.STOPPED_AT_EPOCH: stop},
        ))
    tracker.finish(study)
    return uri, tracker, run_ids


@pytest.mark.browser
@pytest.mark.slow
def test_mlflow_ui_shows_study_and_nested_trials(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium not found (install the Debian package `chromium`)")
    uri, tracker, run_ids = _tracked_store(tmp_path)
    port = free_port()
    server = start_ui(uri, port=port, log_path=tmp_path / "mlflow-server.log")
    try:
        base = ui_url("127.0.0.1", port)
        # REST: the server sees the parent and its three nested runs.
        runs = _api(base, "runs/search", {"experiment_ids": [tracker.experiment_id]})["runs"]
        tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
        assert len(runs) == 1 + len(OUTCOMES)
        children = [rid for rid, t in tags.items() if t.get("mlflow.parentRunId") == tracker.parent_run_id]
        assert sorted(children) == sorted(run_ids.values())

        ARTIFACTS.mkdir(exist_ok=True)
        # The experiment opens on its training runs: the study's parent run, nesting all trials.
        runs_png = ARTIFACTS / "mlflow_ui_runs.png"
        text = _browse(chromium, experiment_url(base, tracker.experiment_id), tmp_path / "profile-runs", runs_png)
        print(f"\nMLflow UI screenshot: {runs_png}")
        assert "Runs" in text and STUDY in text, text[:2000]
        assert f"{1 + len(OUTCOMES)} matching runs" in text, text[:2000]

        # A pruned trial's page: named trial run, linked to its parent, state and reason shown.
        trial_png = ARTIFACTS / "mlflow_ui_pruned_trial.png"
        text = _browse(chromium, run_url(base, tracker.experiment_id, run_ids["pruned"]),
                       tmp_path / "profile-trial", trial_png)
        print(f"MLflow UI screenshot: {trial_png}")
        assert "trial-0001" in text, text[:2000]
        assert re.search(rf"Parent run\s+{STUDY}", text), text[:3000]
        assert "Killed" in text and "HyperbandPruner at epoch 2" in text, text[:3000]
        assert "val_accuracy" in text and "optimizer.lr" in text, text[:3000]
        assert runs_png.stat().st_size > 10_000 and trial_png.stat().st_size > 10_000
    finally:
        stop_ui(server)
    assert server.poll() is not None
