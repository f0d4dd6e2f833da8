"""The stored study is readable by Optuna's own tools: optuna.load_study and the optuna-dashboard
server (started as a real process on the storage URL, queried over HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

import autoopt
from autoopt.spec import StudySpec
from local_cluster import free_port


def get_json(url: str, deadline_s: float = 60.0, server: subprocess.Popen | None = None):
    end = time.time() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if server is not None and server.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited with {server.returncode}")
            if time.time() > end:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_optuna_dashboard_shows_params_curves_and_pruned_states(ray_local, workdir):
    spec = StudySpec(name="dash", task="cv", task_options={"size": 0.25, "epochs": 6}, n_trials=10, workers=2,
                     tracking=False, pruner="hyperband",
                     space={"optimizers": ["adamw", "sgd", "lion"], "schedulers": ["constant"],
                            "params": {"sgd": {"lr": {"low": 1e-5, "high": 1e-4}}}})
    result = autoopt.run(spec)
    url = f"sqlite:///{workdir}/autoopt-studies.db"
    loaded = optuna.load_study(study_name="dash", storage=url)
    assert len(loaded.trials) == 10

    port = free_port()
    # the package has no __main__: its console script is the real client users run
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    log = open(workdir / "optuna-dashboard.log", "w")
    server = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        studies = get_json(f"http://127.0.0.1:{port}/api/studies", server=server)["study_summaries"]
        study = next(s for s in studies if s["study_name"] == "dash")
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0")
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    trials = detail["trials"]
    assert len(trials) == 10
    assert all(any(p["name"] == "optimizer" for p in t["params"]) for t in trials)
    assert sum(1 for t in trials if t["intermediate_values"]) >= 8
    states = {t["state"] for t in trials}
    assert "Complete" in states
    assert ("Pruned" in states) == (result.counts["pruned"] > 0)
    assert any(t["user_attrs"] for t in trials)
