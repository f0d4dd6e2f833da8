"""The objective API: a user's own training loop as a study (Ray workers, storage, pruning, MLflow),
the Trial it gets, the spec's ``objective:``, trust of a read-back objective path, and ``best --format``."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

import autoopt
from autoopt.cli import app
from autoopt.core import record as R
from autoopt.schedulers import build_schedule
from autoopt.spec import SpecError, StudySpec
from autoopt.storage import open_storage
from autoopt.trial import ObjectiveError, Trial, TrialPruned, load_objective
from helper_objectives import PRUNE_BELOW, SPACE, mlp

CONFIG = {"optimizer": "adamw", "optimizer_params": {"lr": 0.01, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99,
                                                      "eps": 1e-8},
          "scheduler": "cosine", "scheduler_params": {}, "warmup_fraction": 0.25, "grad_clip": 1.0, "batch_size": 16}


def check_like_a_task_study(result, metric: str, *, user_metric: str | None = None, pruned_at: int = 1) -> optuna.Study:
    """Storage and MLflow hold an objective study exactly as they hold a Task study: trial attributes,
    curves, nested child runs per trial with the metric's curve, pruned trials KILLED."""
    study = result.study
    trials = study.get_trials(deepcopy=False)
    states = {t.state.name for t in trials}
    assert {"COMPLETE", "PRUNED"} <= states, states
    assert study.metric_names == [metric]  # optuna-dashboard labels the value with it
    assert study.user_attrs[R.METRIC] == metric
    for t in trials:
        assert t.user_attrs[R.STATUS] in ("complete", "pruned")
        assert t.user_attrs[R.HISTORY] and t.user_attrs[R.MLFLOW_RUN_ID]
        if t.state.name == "PRUNED":
            assert t.user_attrs[R.REASON].startswith(f"pruned by the pruner at step {pruned_at}")
            assert t.user_attrs[R.EPOCHS_RUN] == pruned_at
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.mlflow_parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(trials)
    expected = {"complete": "FINISHED", "pruned": "KILLED"}
    for run in children:
        number = int(run.data.tags["autoopt.trial_number"])
        trial = next(t for t in trials if t.number == number)
        assert run.info.status == expected[trial.user_attrs[R.STATUS]]
        curve = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in curve] == [h["epoch"] for h in trial.user_attrs[R.HISTORY]]
        assert run.data.params["optimizer"] == trial.params["optimizer"]
        if user_metric:
            assert client.get_metric_history(run.info.run_id, user_metric)
    assert parent.data.metrics["n_pruned"] >= 1 and parent.data.metrics["n_complete"] >= 1
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert any(p.endswith(".html") for p in plots) and any(p.endswith(".png") for p in plots), plots
    return study


def test_objective_study_runs_on_ray_with_pruning_and_nested_runs(ray_local, workdir):
    spec = StudySpec(name="mine", metric="val_acc", direction="maximize", n_trials=3, workers=2,
                     pruner="threshold", pruner_options=PRUNE_BELOW, space=SPACE, seed=5)
    result = autoopt.run(spec, objective="helper_objectives:objective")
    study = check_like_a_task_study(result, "val_acc", user_metric="val_loss")
    assert result.best_value > 0.75 and result.best_config["optimizer"] == "adamw"
    # trial.traits measured the user's model on the worker: the recommender learns about it
    traits = study.user_attrs[R.TRAITS]
    assert traits["n_params"] == sum(p.numel() for p in mlp().parameters())
    assert traits["domain"] == "tabular" and traits["dataset_size"] == 512 and traits["grad_rms"] > 0
    assert study.user_attrs[R.SPEC]["objective"] == "helper_objectives:objective"
    assert study.user_attrs[R.SPEC]["task"] is None
    # resume reads the objective path back from storage: with the user's trust it runs on, and
    # the driver starts from the traits the workers measured (the recommender's warm start reads them)
    from autoopt.runner import StudyRunner

    assert StudyRunner(spec.replace(objective="helper_objectives:objective")).traits.n_params == traits["n_params"]
    out = CliRunner().invoke(app, ["resume", "mine", "--trials", "4", "--json"],
                             env={"AUTOOPT_TRUSTED_TASKS": "helper_objectives"})
    assert out.exit_code == 0, out.output
    assert len(result.study.trials) == 4


def test_a_failing_objective_is_a_failed_trial_with_its_reason(ray_local, workdir):
    from helper_objectives import failing_objective

    result = autoopt.run(name="broken", metric="loss", direction="minimize", n_trials=2, workers=1,
                         tracking=False, space=SPACE, objective=failing_objective)
    trials = result.study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert trials[0].user_attrs[R.REASON] == "error in the objective: RuntimeError: the user's loop broke"


def test_trial_builds_what_the_config_says():
    trial = Trial.fixed(CONFIG, max_reports=4)
    model = mlp()
    opt = trial.optimizer(model)
    assert type(opt).__name__ == "AdamW" and opt.param_groups[0]["lr"] == pytest.approx(0.01)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.1]  # biases get none, as in a Task's trials
    sched = trial.scheduler(opt, total_steps=40)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.01)  # the warmup starts at 1% of the peak
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    # the same lrs as the schedule a Task trains with
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.01)
    ref = build_schedule(ref_opt, "cosine", {}, warmup_fraction=0.25, total_steps=40, steps_per_epoch=10)
    for _ in range(40):
        opt.step()
        sched.step()
        ref_opt.step()
        ref.step_batch()
        assert sched.get_last_lr()[0] == pytest.approx(ref.lr)
    assert sched.state_dict()["steps_taken"] == 40
    assert trial.batch_size == 16 and trial.grad_clip == 1.0
    params_opt = Trial.fixed(CONFIG).optimizer(model.parameters())
    assert sum(len(g["params"]) for g in params_opt.param_groups) == 4


def test_trial_report_prunes_and_run_records_outcomes():
    calls = []

    def pruner(step: int, value: float) -> bool:
        calls.append((step, value))
        return step >= 2

    def objective(trial):
        trial.report(0.5)
        trial.report(0.6, train_loss=1.0)
        return 1.0

    outcome = Trial(CONFIG, pruner=pruner, metric="acc").run(objective)
    assert outcome.status == "pruned" and outcome.stopped_at_epoch == 2 and outcome.value == 0.6
    assert calls == [(1, 0.5), (2, 0.6)] and outcome.history[1].train_loss == 1.0
    assert outcome.history[0].train_loss is None
    done = Trial.fixed(CONFIG).run(objective)
    assert done.status == "complete" and done.value == 1.0 and len(done.history) == 2
    nan = Trial.fixed(CONFIG).run(lambda t: t.report(float("nan")))
    assert nan.status == "failed" and "not finite" in nan.reason
    assert Trial.fixed(CONFIG).run(lambda t: "high").status == "failed"
    with pytest.raises(TrialPruned):
        Trial(CONFIG, pruner=lambda s, v: True).report(0.1)


def test_trial_traits_from_one_backward_pass():
    model = torch.nn.Sequential(torch.nn.Embedding(50, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    batch = (torch.randint(0, 50, (8, 3)), torch.randint(0, 2, (8,)))
    traits = Trial.fixed(CONFIG, metric="acc").traits(model, batch, torch.nn.functional.cross_entropy, domain="nlp")
    assert traits.batch_size == 8 and traits.n_params == 50 * 4 + 12 * 2 + 2
    unused_rows = 50 - len(set(batch[0].flatten().tolist()))  # only looked-up embedding rows get gradients
    assert unused_rows * 4 / traits.n_params <= traits.grad_sparsity < 1.0
    # the RMS gradient entry over every parameter, by hand from the same backward pass
    torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert traits.grad_rms == pytest.approx(float(g.double().pow(2).mean().sqrt()), rel=1e-3)
    model.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="no loss"):
        Trial.fixed(CONFIG).traits(model, batch[0])


def test_spec_names_an_objective_by_import_path(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: y\nobjective: helper_objectives:objective\nmetric: val_acc\ndirection: maximize\n"
                    "max_reports: 3\nn_trials: 2\n")
    spec = StudySpec.from_yaml(path)
    assert spec.objective == "helper_objectives:objective" and spec.max_reports == 3
    assert spec.to_dict()["objective"] == "helper_objectives:objective"
    assert "objective" not in StudySpec(name="t", task="cv").to_dict()  # task studies store what they did
    with pytest.raises(SpecError, match="either task or objective"):
        StudySpec.from_dict({"name": "x", "task": "cv", "objective": "a.b:c"})
    with pytest.raises(SpecError, match="import path"):
        StudySpec.from_dict({"name": "x", "objective": "not a path"})
    with pytest.raises(SpecError, match="come from the task"):
        StudySpec.from_dict({"name": "x", "task": "cv", "metric": "acc"})
    with pytest.raises(ObjectiveError, match="no attribute"):
        load_objective("helper_objectives:nope")


def test_objective_needs_a_direction_and_a_target(workdir):
    from autoopt.runner import StudyRunner

    with pytest.raises(SpecError, match="needs direction"):
        StudyRunner(StudySpec(name="d", objective="helper_objectives:objective", tracking=False))
    with pytest.raises(SpecError, match="neither a task nor an objective"):
        StudyRunner(StudySpec(name="d", tracking=False))


def test_read_back_objective_path_needs_trust(monkeypatch, workdir):
    monkeypatch.delenv("AUTOOPT_TRUSTED_TASKS", raising=False)
    # the CLI's resume refuses an untrusted stored objective before importing it (exit 2, nothing run)
    url = f"sqlite:///{workdir}/o.db"
    study = optuna.create_study(study_name="stored", storage=open_storage(url))
    study.set_user_attr(R.SPEC, {"name": "stored", "objective": "evil_module_never_imported:run", "task": None,
                                 "direction": "maximize", "n_trials": 1})
    out = CliRunner().invoke(app, ["resume", "stored", "--storage", url])
    assert out.exit_code == 2 and "names the objective 'evil_module_never_imported:run'" in out.output
    assert "only if you trust it" in out.output
    assert "evil_module_never_imported" not in sys.modules
    # trusted (--trust-task, as for task paths): it is imported, and its absence is a clear error
    out = CliRunner().invoke(app, ["resume", "stored", "--storage", url, "--trust-task", "evil_module_never_imported"])
    assert out.exit_code == 2 and "cannot import the objective's module 'evil_module_never_imported'" in out.output


def test_best_as_code_for_torch_lightning_and_hf(workdir):
    url = f"sqlite:///{workdir}/b.db"
    study = optuna.create_study(study_name="b", storage=open_storage(url), direction="maximize")
    study.set_user_attr(R.METRIC, "val_acc")
    trial = study.ask()
    trial.set_user_attr(R.CONFIG, CONFIG)
    study.tell(trial, 0.9)
    model = mlp()
    for fmt in ("torch", "lightning", "hf"):
        out = CliRunner().invoke(app, ["best", "b", "--storage", url, "--format", fmt])
        assert out.exit_code == 0, out.output
        assert "val_acc=0.9" in out.output
        code = {}
        exec(compile(out.output, f"best_{fmt}.py", "exec"), code)  # noqa: S102 - the generated snippet
        if fmt == "torch":
            opt, sched = code["optimizer_and_scheduler"](model, 40)
        elif fmt == "lightning":
            built = code["BestOptimizer"].configure_optimizers(model_with_steps(model, 40))
            opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
            assert built["lr_scheduler"]["interval"] == "step" and code["GRADIENT_CLIP_VAL"] == 1.0
        else:
            opt, sched = code["optimizers"](model, 40)
        assert type(opt).__name__ == "AdamW" and sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.1]
        for _ in range(10):
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # warmup (25% of 40 steps) done: the peak
    bad = CliRunner().invoke(app, ["best", "b", "--storage", url, "--format", "keras"])
    assert bad.exit_code == 2 and "allowed: torch, lightning, hf" in bad.output


def model_with_steps(model, steps):
    """A module as Lightning hands it to configure_optimizers: attached to a trainer that knows its steps."""

    class Trainer:
        estimated_stepping_batches = steps

    model._trainer = Trainer()
    return model


def test_help_first_line_has_no_markup():
    out = subprocess.run([sys.executable, "-m", "autoopt.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "``" not in out.stdout
    first = [line for line in out.stdout.split("Usage:")[1].splitlines()[1:] if line.strip()][0]
    assert first.strip().startswith("autoopt: search the optimizer")


def test_submit_refuses_what_the_cluster_cannot_use(workdir, monkeypatch, pg_url):
    from local_cluster import free_port

    for key in ("AUTOOPT_JOBS_ADDRESS", "AUTOOPT_RAY_ADDRESS", "RAY_ADDRESS", "AUTOOPT_JOB_STORAGE"):
        monkeypatch.delenv(key, raising=False)
    (workdir / "s.yaml").write_text("name: s\nobjective: helper_objectives:objective\ndirection: maximize\n")
    local = CliRunner().invoke(app, ["run", "s.yaml", "--submit"])
    assert local.exit_code == 2 and "not a local file" in local.output
    nowhere = CliRunner().invoke(app, ["run", "s.yaml", "--submit", "--storage", pg_url])
    assert nowhere.exit_code == 2 and "no cluster to submit to" in nowhere.output
    closed = f"http://127.0.0.1:{free_port()}"
    down = CliRunner().invoke(app, ["run", "s.yaml", "--submit", "--storage", pg_url, "--jobs-address", closed])
    assert down.exit_code == 2 and f"the Ray job API at {closed} did not answer" in down.output
    (workdir / "sub").mkdir()
    monkeypatch.chdir(workdir / "sub")  # the spec must travel with the shipped directory
    outside = CliRunner().invoke(app, ["run", str(workdir / "s.yaml"), "--submit", "--storage", pg_url])
    assert outside.exit_code == 2 and "must be inside it" in outside.output


SCHEDULE_FREE = {**CONFIG, "optimizer": "schedulefree_adamw", "scheduler": "constant", "warmup_fraction": 0.0,
                 "optimizer_params": {"lr": 0.05, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8}}


@pytest.mark.parametrize("config", [SCHEDULE_FREE, CONFIG], ids=["schedulefree_adamw", "adamw"])
def test_evaluating_holds_a_schedule_free_optimizers_averaged_weights(config):
    """A user's own loop evaluates inside ``with trial.evaluating():``. Schedule-Free AdamW trains at
    interpolated weights; without the switch a study would score it at those, below its averaged
    ones. Every other optimizer is left as it is."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    trial = Trial.fixed(config)
    opt = trial.optimizer(model)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    training = [p.detach().clone() for p in model.parameters()]
    with trial.evaluating():
        evaluated = [p.detach().clone() for p in model.parameters()]
        mode = opt.param_groups[0].get("train_mode")
    after = [p.detach().clone() for p in model.parameters()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(after, training))  # back to training
    if config is SCHEDULE_FREE:
        assert mode is False and opt.param_groups[0]["train_mode"] is True
        assert not all(torch.allclose(a, b) for a, b in zip(evaluated, training))
        # the averaged weights are what the optimizer's own eval() gives
        opt.eval()
        assert all(torch.allclose(a, p) for a, p in zip(evaluated, model.parameters()))
        opt.train()
    else:
        assert all(torch.equal(a, b) for a, b in zip(evaluated, training))
