"""Each runnable example under examples/ run as a user would (``python examples/X.py`` in a fresh
directory): it finishes, prints its best value, and leaves the study in the embedded storage and
MLflow store with a nested run per trial."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from autoopt.core import record as R

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.slow  # end-to-end runs as a user's; make test-fast leaves them out

CASES = [("torch_loop.py", "torch-loop", None), ("lightning_module.py", "lightning-module", "lightning"),
         ("hf_trainer.py", "hf-trainer", "transformers")]


@pytest.mark.parametrize(("script", "study_name", "needs"), CASES, ids=[c[0] for c in CASES])
def test_example_runs_as_a_user_would(script, study_name, needs, tmp_path):
    if needs:
        pytest.importorskip(needs)
    env = {k: v for k, v in os.environ.items()
           if k not in ("AUTOOPT_STORAGE", "AUTOOPT_TRACKING_URI", "MLFLOW_TRACKING_URI", "AUTOOPT_RAY_ADDRESS",
                        "RAY_ADDRESS", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best " in proc.stdout
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{tmp_path}/autoopt-studies.db")
    trials = study.get_trials(deepcopy=False)
    assert trials and any(t.state.name == "COMPLETE" for t in trials)
    assert all(t.user_attrs.get(R.STATUS) in ("complete", "pruned") for t in trials), \
        [t.user_attrs.get(R.REASON) for t in trials]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(study.user_attrs[R.MLFLOW_PARENT_RUN_ID])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(trials)
