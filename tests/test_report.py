"""Study report from Optuna storage alone: five plots (HTML + PNG), summary and best config."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from autoopt.core import record as R
from autoopt.report import PLOT_NAMES, best_config_python, write_report

MAX_EPOCHS = 6
DISTRIBUTIONS = {
    "optimizer": CategoricalDistribution(["adamw", "momentum"]),
    "adamw.lr": FloatDistribution(1e-5, 1.0, log=True),
    "adamw.beta1": FloatDistribution(0.8, 0.99),
    "momentum.lr": FloatDistribution(1e-4, 1.0, log=True),
    "momentum.momentum": FloatDistribution(0.0, 0.99),
    "scheduler": CategoricalDistribution(["cosine", "step", "constant"]),
    "step.step_fraction": FloatDistribution(0.1, 0.5),
    "warmup_fraction": FloatDistribution(0.0, 0.2),
    "batch_size": CategoricalDistribution([32, 64]),
}


def _config(params: dict) -> dict:
    opt, sched = params["optimizer"], params["scheduler"]
    return {
        "optimizer": opt,
        "optimizer_params": {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(opt + ".")},
        "scheduler": sched,
        "scheduler_params": {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(sched + ".")},
        "warmup_fraction": params["warmup_fraction"],
        "grad_clip": None,
        "batch_size": params["batch_size"],
    }


def _add_trial(study: optuna.Study, rng: random.Random, status: str, stop: int | None = None) -> None:
    """A trial as the runner stores it: namespaced params + the autoopt.* user_attrs contract."""
    opt = rng.choice(["adamw", "momentum"])
    sched = rng.choice(["cosine", "step", "constant"])
    params = {"optimizer": opt, f"{opt}.lr": 10 ** rng.uniform(-4, -1), "scheduler": sched,
              "warmup_fraction": rng.uniform(0, 0.2), "batch_size": rng.choice([32, 64])}
    params["adamw.beta1" if opt == "adamw" else "momentum.momentum"] = rng.uniform(0.8, 0.95)
    if sched == "step":
        params["step.step_fraction"] = rng.uniform(0.1, 0.5)
    quality = rng.uniform(0.5, 0.95)
    epochs = MAX_EPOCHS if status == "complete" else stop
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "val_metric": quality * (1 - 0.5 ** e), "lr": params[f"{opt}.lr"],
         "seconds": 0.1}
        for e in range(1, epochs + 1)
    ]
    if status == "failed":
        history[-1]["train_loss"] = float("nan")
    attrs = {
        R.CONFIG: _config(params),
        R.HISTORY: history,
        R.STATUS: status,
        R.REASON: {"complete": None, "pruned": "median pruner at epoch %s" % stop,
                           "failed": "loss is nan"}[status],
        R.EPOCHS_RUN: epochs,
        R.MAX_EPOCHS: MAX_EPOCHS,
        R.STOPPED_AT_EPOCH: None if status == "complete" else stop,
        R.DEVICE: "cpu",
        R.HOST: "test-host",
        R.OPTIMIZER_STATE_BYTES: 1024,
        R.SECONDS: 0.1 * epochs,
    }
    state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}[status]
    study.add_trial(create_trial(
        state=state,
        value=max(h["val_metric"] for h in history) if status == "complete" else None,
        params=params,
        distributions={k: DISTRIBUTIONS[k] for k in params},
        user_attrs=attrs,
        intermediate_values={h["epoch"]: h["val_metric"] for h in history},
    ))


def _study(tmp_path: Path, statuses: list[tuple[str, int | None]], name: str = "report-study") -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                direction="maximize")
    study.set_user_attr(R.METRIC, "val_accuracy")
    study.set_user_attr(R.TRAITS, {"domain": "cv", "metric": "val_accuracy", "direction": "maximize"})
    rng = random.Random(7)
    for status, stop in statuses:
        _add_trial(study, rng, status, stop)
    return study


MIXED = [("complete", None)] * 6 + [("pruned", 2), ("pruned", 3), ("failed", 1)]


def _assert_plots(paths: list[Path]) -> None:
    """All five plots drawn: files present and valid, and none of them a "Plot failed" placeholder."""
    summary = json.loads(next(p for p in paths if p.name == "summary.json").read_text())
    assert summary["plot_errors"] == {}, summary["plot_errors"]
    names = {p.name for p in paths}
    for stem in PLOT_NAMES:
        assert f"{stem}.html" in names and f"{stem}.png" in names, stem
    for p in paths:
        assert p.exists() and p.stat().st_size > 0, p
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
        if p.suffix == ".html":
            assert "plotly" in p.read_text().lower(), p


def test_report_of_mixed_study(tmp_path):
    study = _study(tmp_path, MIXED)
    paths = write_report(study, tmp_path / "report")
    _assert_plots(paths)

    curves = (tmp_path / "report" / "learning_curves.html").read_text()
    assert "pruned here" in curves and "failed here" in curves
    assert "median pruner at epoch 2" in curves  # the pruning reason is on the marker

    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert (summary["n_complete"], summary["n_pruned"], summary["n_failed"]) == (6, 2, 1)
    assert summary["epochs_run"] == 6 * MAX_EPOCHS + 2 + 3 + 1
    assert summary["epochs_budget"] == 9 * MAX_EPOCHS
    assert summary["epochs_saved"] == summary["epochs_budget"] - summary["epochs_run"]
    assert summary["best_value"] == pytest.approx(study.best_value)
    assert summary["best_trial"] == study.best_trial.number
    assert summary["best_from_warm_start"] is False  # sampled by the search, not suggested by the recommender
    failed = [t.number for t in study.trials if t.state == TrialState.FAIL]
    assert summary["failures"] == {"loss is nan": {"count": 1, "trials": failed, "example": "loss is nan"}}

    best = json.loads((tmp_path / "report" / "best_config.json").read_text())
    assert best["config"] == study.best_trial.user_attrs[R.CONFIG]
    namespace: dict = {}
    exec(compile((tmp_path / "report" / "best_config.py").read_text(), "best_config.py", "exec"), namespace)
    model = torch.nn.Linear(3, 2)
    optimizer = namespace["build_optimizer"](model)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(best["config"]["optimizer_params"]["lr"])
    schedule = namespace["build_lr_schedule"](optimizer, epochs=2, steps_per_epoch=4)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    schedule.step_batch()
    assert schedule.steps_taken == 1 and math.isfinite(schedule.lr)


def test_matplotlib_png_fallback(tmp_path):
    study = _study(tmp_path, MIXED)
    paths = write_report(study, tmp_path / "report", png="matplotlib")
    _assert_plots(paths)


def test_a_kaleido_that_does_not_finish_in_time_is_stopped_and_matplotlib_draws(tmp_path, monkeypatch):
    """kaleido's Chromium sometimes never returns (an `autoopt report` hung in CI): it runs in a
    process of its own under a time limit; past it that process group is killed and the report
    still gets every PNG, drawn by matplotlib."""
    from autoopt import report_png

    monkeypatch.setattr(report_png, "_kaleido_broken", None)
    monkeypatch.delenv(report_png.PNG_ENGINE_ENV)  # conftest: matplotlib for the other tests
    monkeypatch.setenv(report_png.KALEIDO_TIMEOUT_ENV, "0.05")  # no kaleido start is that quick
    study = _study(tmp_path, MIXED)
    paths = write_report(study, tmp_path / "report", png="auto")
    _assert_plots(paths)
    assert report_png._kaleido_broken == "TimeoutError: kaleido wrote no PNG within 0.05 s (stopped)"


@pytest.mark.browser
def test_kaleido_draws_the_pngs_in_its_own_process_when_chromium_is_there(tmp_path, monkeypatch):
    """The kaleido path itself (a report otherwise falls back to matplotlib without a word)."""
    import shutil

    from autoopt import report_png

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium for kaleido (install the Debian package `chromium`)")
    study = _study(tmp_path, MIXED)
    monkeypatch.delenv(report_png.PNG_ENGINE_ENV)  # conftest: matplotlib for the other tests
    paths = write_report(study, tmp_path / "report", png="kaleido")  # raises if kaleido fails
    _assert_plots(paths)


def test_a_failing_plot_degrades_to_a_placeholder_and_is_reported(tmp_path, monkeypatch):
    """Users still get the report when one plot breaks; summary.json says which and why."""
    from autoopt import report

    def broken(study):
        raise RuntimeError("no importances for you")

    monkeypatch.setitem(report._BUILDERS, "param_importances", broken)
    study = _study(tmp_path, MIXED)
    paths = write_report(study, tmp_path / "report", png="matplotlib")
    assert {f"{stem}.{ext}" for stem in PLOT_NAMES for ext in ("html", "png")} <= {p.name for p in paths}
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["plot_errors"] == {"param_importances": "RuntimeError: no importances for you"}
    assert "Plot failed: RuntimeError: no importances for you" in (tmp_path / "report" / "param_importances.html").read_text()


@pytest.mark.parametrize("statuses", [[], [("pruned", 2), ("failed", 1), ("pruned", 4)]], ids=["empty", "no-complete"])
def test_report_without_completed_trials(tmp_path, statuses):
    study = _study(tmp_path, statuses)
    paths = write_report(study, tmp_path / "report", png="matplotlib")
    _assert_plots(paths)
    assert not (tmp_path / "report" / "best_config.py").exists()
    summary = R.summarize(study).as_dict()
    assert summary["best_value"] is None and summary["n_complete"] == 0 and summary["best_from_warm_start"] is None
    assert summary["n_pruned"] == sum(s == "pruned" for s, _ in statuses)


PAIRS = [("adamw", "cosine"), ("nesterov", "step"), ("adam", "plateau"), ("radam", "one_cycle"),
         ("lion", "linear"), ("rmsprop", "constant"), ("lookahead", "cosine_restarts"), ("schedulefree_adamw", "constant")]


def sampled_config(optimizer: str, scheduler: str) -> dict:
    """A configuration drawn from the real search space, as a trial would run it.

    Categorical params are suggested against the full catalog (the universe stored with a study);
    like the coordinator, the sampler is wrapped in ChoiceRestrictingSampler so only the allowed
    optimizer / scheduler is drawn.
    """
    from autoopt.sampling import ChoiceRestrictingSampler
    from autoopt.space import SearchSpace
    from autoopt.spec import SpaceSpec

    space = SearchSpace(SpaceSpec(optimizers=[optimizer], schedulers=[scheduler], warmup={"low": 0.01, "high": 0.1}))
    sampler = ChoiceRestrictingSampler(optuna.samplers.RandomSampler(seed=3), space.restrictions)
    config = space.sample(optuna.create_study(sampler=sampler).ask()).to_dict()
    assert (config["optimizer"], config["scheduler"]) == (optimizer, scheduler)
    return config


@pytest.mark.parametrize("optimizer, scheduler", PAIRS, ids=[f"{o}-{s}" for o, s in PAIRS])
def test_best_config_python_rebuilds_what_the_trial_ran(optimizer, scheduler):
    from autoopt.optimizers import build_optimizer
    from autoopt.report import plain_torch_line
    from autoopt.schedulers import build_schedule

    config = sampled_config(optimizer, scheduler)
    source = best_config_python(config, study_name="s", metric="val_accuracy", value=0.9, trial_number=3)
    namespace: dict = {"__name__": "best_config"}
    exec(compile(source, "best_config.py", "exec"), namespace)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    ref_model = copy.deepcopy(model)  # the trial's run, side by side with the pasted snippet's
    optimizer_ = namespace["build_optimizer"](model)
    reference = build_optimizer(optimizer, ref_model, config["optimizer_params"])
    assert type(optimizer_) is type(reference)
    strip = lambda g: {k: v for k, v in g.items() if k != "params"}  # noqa: E731
    assert [strip(g) for g in optimizer_.param_groups] == [strip(g) for g in reference.param_groups]
    assert [len(g["params"]) for g in optimizer_.param_groups] == [len(g["params"]) for g in reference.param_groups]
    schedule = namespace["build_lr_schedule"](optimizer_, epochs=3, steps_per_epoch=4)
    ref_schedule = build_schedule(reference, config["scheduler"], config["scheduler_params"],
                                  warmup_fraction=config["warmup_fraction"], total_steps=12, steps_per_epoch=4)
    # Building a schedule starts the warmup and adds initial_lr / max_lr: the same on both sides.
    assert [strip(g) for g in optimizer_.param_groups] == [strip(g) for g in reference.param_groups]
    lrs, ref_lrs = [], []
    for _ in range(12):
        x = torch.randn(8, 4)
        for net, opt, sched, out in ((model, optimizer_, schedule, lrs), (ref_model, reference, ref_schedule, ref_lrs)):
            out.append(sched.lr)  # the lr this step trains with
            loss = net(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step_batch()
    assert lrs == ref_lrs
    if ref_schedule.warmup_steps:  # the warmup is in the rebuilt schedule too
        assert lrs[0] < max(lrs)
    assert all(math.isfinite(p.abs().sum().item()) for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref_model.parameters()))
    plain = plain_torch_line(config)
    if plain is not None:  # the paste-without-autoopt line builds the same hyperparameters
        import pytorch_optimizer

        built = eval(plain, {"torch": torch, "pytorch_optimizer": pytorch_optimizer, "model": model})
        # Against a fresh, unscheduled build: the schedule above has moved the reference's lr.
        fresh = build_optimizer(optimizer, ref_model, config["optimizer_params"])
        assert type(built) is type(fresh)
        decayed = max(fresh.param_groups, key=lambda g: g.get("weight_decay", 0) or 0)
        for key, value in strip(built.param_groups[0]).items():
            if key in decayed and not isinstance(value, torch.Tensor):
                as_tuple = isinstance(value, (list, tuple)) and tuple(decayed[key]) == tuple(value)
                assert decayed[key] == value or as_tuple, (key, decayed[key], value)
    else:
        assert "Lookahead" in type(reference).__name__ or optimizer == "lookahead"


def test_best_config_py_uses_the_line_the_trials_worker_recorded(tmp_path):
    """The report does not build the optimizer again (that imports torch._dynamo in the driver)
    when the best trial's worker recorded the plain line; an older trial without one gets it built."""
    from autoopt.report import plain_torch_line, write_best_config

    config = sampled_config("adamw", "cosine")
    study = optuna.create_study(direction="maximize")
    for value, line in ((0.5, None), (0.9, "torch.optim.AdamW(model.parameters(), lr=0.123)")):
        attrs = {R.CONFIG: config, **({R.TORCH_LINE: line} if line is not None else {})}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    write_best_config(study, tmp_path / "a")
    assert "AdamW(model.parameters(), lr=0.123)" in (tmp_path / "a" / "best_config.py").read_text()
    older = optuna.create_study(direction="maximize")
    older.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={R.CONFIG: config}))
    write_best_config(older, tmp_path / "b")
    assert plain_torch_line(config) in (tmp_path / "b" / "best_config.py").read_text()


def test_best_config_code_tells_a_schedule_free_optimizer_to_evaluate_at_its_averaged_weights():
    from autoopt.export import best_config_code

    base = {"optimizer_params": {"lr": 0.01}, "scheduler": "constant", "scheduler_params": {}, "warmup_fraction": 0.0,
            "grad_clip": None, "batch_size": None}
    free = {**base, "optimizer": "schedulefree_adamw"}
    torch_code, lightning_code = best_config_code(free, "torch"), best_config_code(free, "lightning")
    assert "optimizer.eval() before evaluating" in torch_code and "optimizer.train()" in torch_code
    assert "def on_validation_start(self):" in lightning_code and "set_optimizer_mode" in lightning_code
    for fmt in ("torch", "lightning", "hf"):
        compile(best_config_code(free, fmt), fmt, "exec")
        plain = best_config_code({**base, "optimizer": "adamw"}, fmt)
        assert "eval()" not in plain and "on_validation_start" not in plain


def test_the_optimizer_scheduler_map_says_how_far_pruned_only_cells_got(tmp_path):
    """With pruning on, most cells hold pruned trials only (the quickstart: 28 of 30). Such a cell
    shows its trials' best reported value and epoch, uncoloured (not comparable with a finished
    trial's); the colour scale spans the finished values (one value was centred in a range of 1,
    so an accuracy scale ran to 1.5)."""
    from autoopt.report import plot_optimizer_scheduler

    study = _study(tmp_path, [("complete", None), ("pruned", 2), ("pruned", 3), ("pruned", 1), ("failed", 2)])
    trials = study.get_trials(deepcopy=False)
    fig = plot_optimizer_scheduler(study)
    heat = fig.data[0]
    cell = {(o, s): (heat.z[i][j], heat.text[i][j]) for i, o in enumerate(heat.y) for j, s in enumerate(heat.x)}
    complete = trials[0]
    cfg = complete.user_attrs[R.CONFIG]
    value, text = cell[(cfg["optimizer"], cfg["scheduler"])]
    assert value == pytest.approx(complete.value) and text.startswith(f"{complete.value:.4g}<br>")
    assert heat.zmin < complete.value < heat.zmax and heat.zmax - heat.zmin < 0.01
    checked = 0
    for key, (z, text) in cell.items():
        mine = [t for t in trials if (t.user_attrs[R.CONFIG]["optimizer"], t.user_attrs[R.CONFIG]["scheduler"]) == key]
        if mine and all(t.state == TrialState.PRUNED for t in mine):
            best = max((h["val_metric"], h["epoch"]) for t in mine for h in t.user_attrs[R.HISTORY])
            assert z is None and text.startswith(f"({best[0]:.4g} at epoch {best[1]}, pruned)<br>0 done"), text
            checked += 1
    assert checked >= 1, cell


def test_the_importance_plot_says_how_many_completed_trials_it_comes_from(tmp_path):
    """Importances come from completed trials only; with pruning on a study may complete 2 of 30,
    and a forest fitted to 2 points ranked five parameters at 0.19-0.20 each (the quickstart)."""
    from autoopt.report import IMPORTANCE_ROUGH_BELOW, plot_param_importances

    few = _study(tmp_path, [("complete", None)] * 3 + [("pruned", 2)] * 5, name="few")
    assert plot_param_importances(few).layout.title.text.endswith(
        f"(from 3 completed trials; fewer than {IMPORTANCE_ROUGH_BELOW}: too few to rank them, pruned trials do not count)")
    many = _study(tmp_path, [("complete", None)] * IMPORTANCE_ROUGH_BELOW, name="many")
    assert plot_param_importances(many).layout.title.text.endswith(f"(from {IMPORTANCE_ROUGH_BELOW} completed trials)")
