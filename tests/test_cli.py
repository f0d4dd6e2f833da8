"""The CLI as a user runs it (subprocesses): exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from polling import trial_states

from autoopt.core import record as R

SPEC = """
name: clidemo
task: tabular
task_options: {size: 0.25, epochs: 4}
n_trials: 5
workers: 2
pruner: hyperband
space:
  optimizers: [adam, momentum]
  schedulers: [constant, cosine]
"""


def autoopt(*args, cwd, env=None, timeout=300):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "autoopt.cli", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def spec_file(workdir):
    p = workdir / "clidemo.yaml"
    p.write_text(SPEC)
    return p


@pytest.mark.slow
def test_run_json_then_status_best_list_resume(workdir, spec_file):
    from mlflow import MlflowClient

    from autoopt.report import PLOT_NAMES

    # as a user runs it: the report is drawn after the result is printed, on the driver's own
    # thread (the suite draws it before run() returns elsewhere), and the command waits for it
    r = autoopt("run", str(spec_file), "--json", "--workers", "2", cwd=workdir, env={"AUTOOPT_REPORT_IN_BACKGROUND": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["study_name"] == "clidemo"
    assert sum(summary["counts"][k] for k in ("complete", "pruned", "failed")) == 5
    assert summary["best_value"] is not None and "optimizer" in summary["best_params"]
    assert summary["storage_url"].endswith("autoopt-studies.db")
    assert summary["mlflow_parent_run_id"]
    import optuna

    trials = optuna.load_study(study_name="clidemo", storage=f"sqlite:///{workdir}/autoopt-studies.db").trials
    warm = [t.number for t in trials if t.user_attrs.get(R.WARM_START)]
    assert warm == [0, 1, 2]  # a task's study starts from the recommender's suggestions by default
    assert summary["best_from_warm_start"] is (summary["best_trial"] in warm)
    # the study fed the recommender's meta-dataset, which the model learns from at the next `meta fit`
    assert summary["meta_dataset"] == {"path": os.path.join(os.environ["AUTOOPT_RECOMMEND_DIR"], "studies.csv"),
                                       "added": True, "learned": False}, summary["meta_dataset"]
    client = MlflowClient(summary["tracking_uri"])
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED", r.stderr[-3000:]
    runs = client.search_runs([parent.info.experiment_id], "tags.`autoopt.role` = 'trial'")
    tagged = sorted(int(r.data.tags["autoopt.trial_number"]) for r in runs if r.data.tags.get("autoopt.warm_start") == "true")
    assert tagged == warm, tagged  # the MLflow UI can tell the recommender's suggestions from the search's
    plots = {a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {f"{n}.html" for n in PLOT_NAMES} <= plots

    st = json.loads(autoopt("status", "clidemo", "--json", cwd=workdir).stdout)
    assert st["counts"] == summary["counts"]
    best = json.loads(autoopt("best", "clidemo", "--json", cwd=workdir).stdout)
    assert best["best_value"] == summary["best_value"] and best["best_config"]["optimizer"] in ("adam", "momentum")
    listed = json.loads(autoopt("list", "--json", cwd=workdir).stdout)
    assert [s["name"] for s in listed] == ["clidemo"] and listed[0]["trials"] == 5
    # the same name with another objective: one line naming what differs, exit 2, nothing added
    spec_file.write_text(SPEC.replace("size: 0.25", "size: 0.2").replace("n_trials: 5", "n_trials: 7"))
    r = autoopt("run", str(spec_file), cwd=workdir)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip() == ("error: study 'clidemo' exists in this storage with task_options {'size': 0.25, "
                                "'epochs': 4} (this run: {'size': 0.2, 'epochs': 4}): its trials measured another "
                                "objective; give this run another name (or use another storage)"), r.stderr
    assert json.loads(autoopt("status", "clidemo", "--json", cwd=workdir).stdout)["counts"] == summary["counts"]
    # `autoopt resume` (with a new budget) runs in test_killed_driver_is_resumed


@pytest.mark.parametrize(
    "content, needle",
    [
        (SPEC.replace("task: tabular", "task: vision"), "unknown task 'vision'"),
        (SPEC.replace("[adam, momentum]", "[adam, adamz]"), "unknown optimizer 'adamz'"),
        # found when the spec is read, not by the coordinator once Ray has started
        (SPEC + "pruner: successive_halving\npruner_options: {min_resourc: 2}\n",
         "pruner_options: SuccessiveHalvingPruner.__init__() got an unexpected keyword argument 'min_resourc'"),
        (SPEC + "storage: postgresql://me:hunter2@127.0.0.1:1/x\n", "me:***@127.0.0.1:1"),
        ("name: [oops\n", "not valid YAML"),
    ],
)
def test_usage_errors_exit_2_with_one_line(workdir, content, needle):
    p = workdir / "bad.yaml"
    p.write_text(content)
    r = autoopt("run", str(p), cwd=workdir, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert needle in r.stderr and "hunter2" not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # a CLI process that starts its own Ray
@pytest.mark.parametrize("line, bad_line, needle", [
    ("task: tabular", "task: helper_tasks:not_a_factory", "helper_tasks:not_a_factory"),
    # options the task does not take: once a Rich traceback and exit code 1
    ("task_options: {size: 0.25, epochs: 4}", "task_options: {sizee: 0.25}",
     "task_options for task 'tabular': got an unexpected keyword argument 'sizee'; it takes: size"),
])
def test_a_task_error_found_while_ray_starts_exits_2_and_leaves_no_ray(workdir, line, bad_line, needle):
    """A task path whose module defines the name is loaded while Ray starts (the two overlap);
    when the name then turns out not to be a task, or not to take the spec's task_options, the
    run still ends with one line and exit code 2, and the Ray it started does not outlive it."""
    from local_cluster import session_pids

    from autoopt.core.tasks import resolvable

    bad = SPEC.replace(line, bad_line)
    assert resolvable(bad.split("task: ", 1)[1].split()[0])  # so Ray starts before the refusal below
    (workdir / "bad.yaml").write_text(bad)
    proc = subprocess.Popen([sys.executable, "-m", "autoopt.cli", "run", "bad.yaml"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err[-2000:]
    assert needle in err and "Traceback" not in err, err[-2000:]
    left = session_pids(proc.pid)
    for _ in range(50):  # Ray's processes end with the process that started them
        if not left:
            break
        time.sleep(0.2)
        left = session_pids(proc.pid)
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left if Path(f"/proc/{p}").exists()]


@pytest.mark.parametrize("ref, early", [
    ("tabular", True), ("helper_tasks:GatedTask", True), ("helper_tasks:make_slow_task", True),
    ("helper_tasks:NoSuchTask", False), ("no_such_module:Task", False), ("vision", False), ("os:system", False),
])
def test_ray_starts_beside_the_task_load_only_for_a_name_that_exists(ref, early):
    """A misspelt task name or module fails before Ray starts (read from the module's source, not
    run); ``os:system`` is bound by a star import, which reading cannot see: no early start."""
    from autoopt.core.tasks import resolvable

    assert resolvable(ref) is early


@pytest.mark.slow  # a CLI process that starts its own Ray
def test_the_progress_table_ends_its_line_in_a_log(workdir):
    """Written to a file or a pipe (CI, ``| tee``), the progress table's last line ends: what is
    printed next (the best configuration, an error on stderr in a combined log) starts a line of
    its own. Rich ends a live display with a newline only on a terminal."""
    (workdir / "gpu.yaml").write_text(SPEC)
    r = autoopt("run", "gpu.yaml", "--gpus-per-trial", "1", cwd=workdir, timeout=180)  # no GPU here: exits at once
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no node of the Ray cluster can run a trial" in r.stderr
    assert "complete" in r.stdout and r.stdout.endswith("\n"), r.stdout[-300:]


def test_reading_a_study_does_not_load_the_recommender(workdir):
    """`status`, `best` and `list` only read the storage: the CLI registers `recommend` without
    loading it (its model and rule book: about 0.2 CPU-s a command, measured 2026-12-07)."""
    import optuna

    url = f"sqlite:///{workdir}/read.db"
    optuna.create_study(study_name="read", storage=url)
    probe = ("import sys; from typer.testing import CliRunner; from autoopt.cli import app; "
             f"r = CliRunner().invoke(app, ['status', 'read', '--storage', {url!r}]); assert r.exit_code == 0, r.output; "
             "print(sorted(m for m in ('autoopt.recommend.recommender', 'sklearn', 'torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=workdir, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_missing_file_unknown_study_and_bad_flags(workdir):
    assert autoopt("run", "nope.yaml", cwd=workdir).returncode == 2
    r = autoopt("status", "nosuch", cwd=workdir)
    assert r.returncode == 2 and "no study named 'nosuch'" in r.stderr
    assert autoopt("run", "x.yaml", "--workers", "0", cwd=workdir).returncode == 2


def test_ui_on_a_port_another_server_holds_is_one_line_exit_2(workdir):
    import socket

    (workdir / "mlflow.db").touch()  # a store to serve: the port is what is wrong
    with socket.socket() as holder:  # e.g. an earlier `autoopt ui`, whose /health would answer
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = autoopt("ui", "--port", str(port), "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", cwd=workdir,
                    timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "MLflow UI on" not in r.stdout
    r = autoopt("ui", "--port", "70000", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", cwd=workdir, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: --port 70000 is not a TCP port (1-65535)", r.stderr


def test_status_and_best_say_why_trials_failed(workdir):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    url = f"sqlite:///{workdir}/failing.db"
    study = optuna.create_study(study_name="failing", storage=url, direction="minimize")
    reasons = ["diverged: training loss exploded to 1e+22 at epoch 1, step 3", "worker lost: NodeDiedError: gone",
               "diverged: loss is nan at epoch 2, step 1", None,
               "error during training: RuntimeError: connecting to postgresql://me:hunter2@db/x failed [input [batch, 10], [/x]]"]
    for reason in reasons:
        study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.5},
                                     distributions={"x": FloatDistribution(0, 1)},
                                     user_attrs={R.REASON: reason} if reason else {}))
    config = {"optimizer": "adamw", "optimizer_params": {"lr": 0.003}, "scheduler": "cosine", "scheduler_params": {},
              "warmup_fraction": 0.0, "grad_clip": None, "batch_size": None}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.25, params={"x": 0.5},
                                 distributions={"x": FloatDistribution(0, 1)},
                                 user_attrs={R.CONFIG: config, R.WARM_START: True}))
    r = autoopt("status", "failing", "--storage", url, cwd=workdir, env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[1:] == [  # the most frequent kind first, then in the order they first failed
        "  2 failed: diverged (trials 0, 2), e.g. training loss exploded to 1e+22 at epoch 1, step 3",
        "  1 failed: worker lost (trial 1), e.g. NodeDiedError: gone",
        "  1 failed: no reason recorded (trial 3)",
        # a reason is printed as it is: rich markup used to drop "[batch, 10]" and raise on "[/x]"
        "  1 failed: error during training (trial 4), e.g. RuntimeError: connecting to postgresql://me:***@db/x failed "
        "[input [batch, 10], [/x]]",
    ], r.stdout
    data = json.loads(autoopt("status", "failing", "--storage", url, "--json", cwd=workdir).stdout)
    assert data["failures"]["diverged"] == {"count": 2, "trials": [0, 2], "example": reasons[0]}
    assert "hunter2" not in json.dumps(data)
    r = autoopt("best", "failing", "--storage", url, cwd=workdir, env={"COLUMNS": "250"})
    assert "  2 failed: diverged (trials 0, 2)" in r.stdout and "hunter2" not in r.stdout, r.stdout
    assert "= 0.25 (minimize, trial 5, the recommender's suggestion)\n" in r.stdout, r.stdout  # where the best came from
    r = autoopt("status", "[/x]", "--storage", url, cwd=workdir)  # an error naming the input, not a MarkupError
    assert r.returncode == 2 and r.stderr.startswith("error: no study named '[/x]'"), r.stderr


def test_catalog_and_tasks_listings(workdir):
    opts = json.loads(autoopt("optimizers", "--json", cwd=workdir).stdout)
    assert len(opts) >= 25
    names = {o["name"] for o in opts}
    assert {"sgd", "adamw", "lion", "ranger", "lookahead", "muon", "sparse_adam", "lbfgs"} <= names
    for o in opts:
        assert {"hyperparams", "state_per_param", "source"} <= set(o)
    tasks = json.loads(autoopt("tasks", "--json", cwd=workdir).stdout)
    assert {t["task"] for t in tasks} == {"cv", "tabular", "nlp", "recsys"}
    by = {t["task"]: t for t in tasks}
    assert by["nlp"]["grad_sparsity"] > by["cv"]["grad_sparsity"]
    r = autoopt("optimizers", cwd=workdir)
    assert r.returncode == 0 and "adamw" in r.stdout


@pytest.mark.slow
def test_killed_driver_is_resumed(workdir):
    """SIGKILL the driver mid-study; `autoopt resume` fails its abandoned trials with a reason,
    re-runs them, and the study ends with its full budget (raised to 6 by `resume --trials`), no duplicate."""
    import signal
    import time

    import optuna

    (workdir / "slow.yaml").write_text(
        "name: slow\ntask: helper_tasks:SlowTask\ntask_options: {sleep_s: 1.0, size: 0.25, epochs: 3}\n"
        "n_trials: 5\nworkers: 2\npruner: none\ntracking: false\nspace: {optimizers: [adam], schedulers: [constant]}\n"
    )
    env = {**os.environ, "AUTOOPT_HEARTBEAT_S": "1", "AUTOOPT_STALE_AFTER_S": "4"}
    driver = subprocess.Popen([sys.executable, "-m", "autoopt.cli", "run", "slow.yaml"], cwd=workdir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"sqlite:///{workdir}/autoopt-studies.db"
    deadline = time.time() + 180
    while time.time() < deadline:
        states = trial_states(url, "slow")
        if "COMPLETE" in states and "RUNNING" in states:
            break
        time.sleep(0.3)
    else:
        driver.kill()
        pytest.fail("driver never had a running trial")
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    # resume with a larger budget: the abandoned trials re-run and one more trial is added
    # the stored spec names a task by import path: resuming imports it only if the user trusts it
    r = autoopt("resume", "slow", "--trials", "6", "--json", cwd=workdir,
                env={"AUTOOPT_HEARTBEAT_S": "1", "AUTOOPT_STALE_AFTER_S": "4", "AUTOOPT_TRUSTED_TASKS": "helper_tasks"})
    assert r.returncode == 0, r.stderr[-3000:]
    trials = optuna.load_study(study_name="slow", storage=url).trials
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    abandoned = [t for t in trials if (t.user_attrs.get(R.REASON) or "").startswith("abandoned")]
    assert abandoned and all(t.state.name == "FAIL" and t.user_attrs[R.RETRIED] for t in abandoned)
    counted = [t for t in trials if not t.user_attrs.get(R.RETRIED)]
    assert len(counted) == 6 and all(t.state.name == "COMPLETE" for t in counted)
    assert json.loads(r.stdout.strip().splitlines()[-1])["counts"]["complete"] == 6
    assert len({t.number for t in trials}) == len(trials)


def test_reading_a_study_back_needs_no_heavy_imports(workdir):
    """`status`, `best` and `list` only read the storage: torch, Ray, MLflow and pandas stay out, so
    they answer at once (their wall time is measured in bench/cli_latency.py)."""
    import optuna

    url = f"sqlite:///{workdir / 'autoopt-studies.db'}"
    study = optuna.create_study(study_name="readback", storage=url, direction="maximize")
    study.set_user_attr(R.METRIC, "val_accuracy")
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr(R.CONFIG, {"optimizer": "adam"})
    study.tell(trial, 0.9)
    probe = (
        "import sys, json; from typer.testing import CliRunner; from autoopt.cli import app; "
        "outs = [CliRunner().invoke(app, a) for a in (['status', 'readback', '--json'], ['best', 'readback', '--json'], "
        "['list', '--json'], ['status', 'nosuch'])]; "
        "assert [o.exit_code for o in outs] == [0, 0, 0, 2], [(o.exit_code, o.output) for o in outs]; "
        "assert json.loads(outs[1].output)['best_config'] == {'optimizer': 'adam'}, outs[1].output; "
        "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'pandas', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=workdir, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "AUTOOPT_STORAGE"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", f"heavy modules imported to read a study: {out.stdout}"
