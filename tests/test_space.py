"""The conditional space: each optimizer samples only its own hyperparameters, restrictions hold,
and a study resumes with a changed optimizer list (which plain Optuna rejects, optuna#2328)."""

from __future__ import annotations

import optuna
import pytest

from autoopt.core.catalog import CATALOG
from autoopt.coordinator import StudyCoordinator, TaskFacts
from autoopt.sampling import ChoiceRestrictingSampler, make_sampler
from autoopt.space import SearchSpace, TrialConfig
from autoopt.spec import ExecutionSpec, PlacesSpec, SearchSpec, SpaceSpec, SpecError
from autoopt.core.traits import TaskTraits

DENSE = TaskTraits("cv", 32, 0.0, 1000, 1000, "val_accuracy", "maximize")
SPARSE = TaskTraits("nlp", 32, 0.95, 1000, 1000, "val_accuracy", "maximize", sparse_gradients=True)


#: the Optuna whose TPESampler._sample autoopt.sampling repeats (its source digest is checked)
WRAPPED_OPTUNA = "5.1.0"


def sample_many(space: SearchSpace, n: int, sampler: str = "random", storage=None, name="s"):
    study = optuna.create_study(
        sampler=ChoiceRestrictingSampler(make_sampler(sampler, seed=0), space.restrictions),
        storage=storage, study_name=name, load_if_exists=True, direction="maximize",
    )
    configs = []
    for _ in range(n):
        t = study.ask()
        cfg = space.sample(t)
        configs.append((t, cfg))
        study.tell(t, hash(cfg.optimizer) % 7 / 7.0)
    return study, configs


def test_a_snapshot_sampler_splits_the_trials_once_per_trial_and_draws_the_same(tmp_path):
    """TPE splits the finished trials into good and bad again for every parameter it samples: at
    1000 trials that pass was the largest part of the coordinator's per-trial cost that grew with
    the study (docs/benchmarks.md). From the coordinator's snapshot it is computed once per trial
    (per list of trials: a restricted choice's own is another), and TPE draws exactly what it
    draws without the snapshot, on a real study whose objective rewards one lr region."""
    import math

    space = SearchSpace(SpaceSpec(optimizers=["adamw", "sgd", "lion", "adagrad"]), DENSE)

    def run(snapshot: bool):
        sampler = ChoiceRestrictingSampler(make_sampler("tpe", seed=0), space.restrictions, snapshot=snapshot)
        study = optuna.create_study(sampler=sampler, direction="maximize",
                                    storage=f"sqlite:///{tmp_path}/{snapshot}.db")
        draws, splits = [], []
        for _ in range(30):
            trial = study.ask()
            cfg = space.sample(trial)
            draws.append(dict(trial.params))
            if snapshot and sampler._snapshot is not None:
                snap = sampler._snapshot  # Optuna's own split memoized, or the index's (Optuna 5.1)
                splits.append((len(trial.params), len(snap.splits) + sum(len(s._splits) for s in snap.sampling.values())))
            study.tell(trial, -abs(math.log10(cfg.optimizer_params["lr"]) + 2.5))
        return draws, splits

    plain, _ = run(False)
    snapped, splits = run(True)
    assert snapped == plain
    sampled_by_tpe = splits[10:]  # after TPE's 10 random start-up trials
    assert sampled_by_tpe and all(n_params >= 4 for n_params, _ in sampled_by_tpe)
    # one split per list of trials the trial's parameters were drawn from, not one per parameter
    assert all(1 <= n_splits <= 2 for _, n_splits in sampled_by_tpe), sampled_by_tpe


def test_a_snapshot_sampler_reads_each_finished_trial_once_and_draws_the_same(monkeypatch):
    """What TPE derives from the past trials for each parameter it samples (the trials it samples
    from, their split, each one's values converted) grew with the study: at 1000 trials, most of
    the coordinator's cost still growing (docs/benchmarks.md, issue #13). From the coordinator's
    snapshot a finished trial's values are converted once per search space. TPE draws exactly
    what it draws without the snapshot, here with the states a real study has: two trials running
    at once (TPE's constant liar), pruned trials with their curves, failed ones, restricted choices."""
    import math

    from optuna.distributions import FloatDistribution
    from optuna.samplers import TPESampler
    from optuna.trial import TrialState

    space = SearchSpace(SpaceSpec(optimizers=["adamw", "sgd", "lion", "adagrad"]), DENSE)
    n_trials = 80
    conversions: list[int] = [0]
    convert = FloatDistribution.to_internal_repr

    def counted(self, value):
        conversions[-1] += 1
        return convert(self, value)

    monkeypatch.setattr(FloatDistribution, "to_internal_repr", counted)

    def run(snapshot: bool):
        sampler = ChoiceRestrictingSampler(make_sampler("tpe", seed=0), space.restrictions, snapshot=snapshot)
        study = optuna.create_study(sampler=sampler, direction="maximize")
        draws, costs = [], []
        running = study.ask()
        space.sample(running)
        for i in range(n_trials):
            conversions.append(0)
            trial = study.ask()  # sampled while `running` runs
            cfg = space.sample(trial)
            costs.append(conversions[-1])
            draws.append(dict(trial.params))
            score = -abs(math.log10(cfg.optimizer_params["lr"]) + 2.5)
            if i % 7 == 3:
                study.tell(running, state=TrialState.FAIL)
            elif i % 4 == 1:
                running.report(score - 1.0, 1)
                study.tell(running, state=TrialState.PRUNED)
            else:
                study.tell(running, score)
            running = trial
        return draws, costs

    plain, plain_costs = run(False)
    snapped, snapped_costs = run(True)
    assert snapped == plain
    if optuna.__version__ == WRAPPED_OPTUNA:  # another Optuna samples through its own _sample: slower, the same
        assert hasattr(TPESampler._sample, "__wrapped__"), "autoopt.sampling's _sample wrapper was not installed"
    # without the snapshot each trial converts every earlier trial's values: growing with the study;
    # with it, only the new and the running trials'
    assert sum(plain_costs[-10:]) > 2 * sum(plain_costs[20:30])
    assert sum(snapped_costs[-10:]) <= 1.5 * sum(snapped_costs[20:30]) + 10
    assert sum(snapped_costs[-10:]) < sum(plain_costs[-10:]) / 4


def _compare_with_optunas_split(snapshot, study) -> int:
    """Check each split the snapshot's index made for the trial sampled against Optuna's own split
    of the trials Optuna's ``_sample`` would take (the snapshot's in the states, the choice filter's, less
    the trial sampled); the number of splits checked."""
    from optuna.samplers._tpe import sampler as tpe

    checked = 0
    for (states, left_out, _), sampling in snapshot.sampling.items():
        keep = sampling.index.keep
        expected = [t for t in snapshot.trials
                    if t.state in states and (keep is None or keep(t)) and t.number != left_out]
        assert sampling.n == sum(t.state != optuna.trial.TrialState.RUNNING for t in expected)
        for n_below, (below, above) in sampling._splits.items():
            want_below, want_above = getattr(tpe._split_trials, "__wrapped__", tpe._split_trials)(study, expected, n_below)
            assert [t.number for t in below] == [t.number for t in want_below]
            assert [t.number for t in above] == [t.number for t in want_above]
            checked += 1
    return checked


@pytest.mark.parametrize("direction,mostly_pruned", [("minimize", False), ("maximize", False), ("maximize", True)])
def test_a_snapshot_sampler_draws_the_same_when_trials_finish_out_of_order_tie_and_break_constraints(
        direction, mostly_pruned):
    """The snapshot sampler keeps the study's finished trials indexed across trials, in the orders
    TPE's split sorts them by (value, last pruned step and value, constraint violation), so no
    trial is read again for the next one. Its split must be Optuna's own in every case a study
    meets: four trials in flight finishing out of order (one of them running for 40 trials),
    equal values (ties go by trial number), pruned trials with a NaN last value, failed trials,
    an enqueued trial waiting, and trials breaking a constraint; and a study whose trials are
    mostly pruned at different epochs, so that pruned trials make up TPE's good group too. Each
    pruned trial's score is then computed once, not once per trial sampled after it."""
    import math

    from optuna.samplers._tpe import sampler as tpe
    from optuna.trial import TrialState

    from autoopt.sampling import _install_tpe_memos

    _install_tpe_memos()  # before the count below wraps one of the functions whose source it checks
    space = SearchSpace(SpaceSpec(optimizers=["adamw", "sgd", "lion", "adagrad"]), DENSE)
    n_trials = 70
    scored: list[int] = [0]
    pruned_score = tpe._get_pruned_trial_score

    def run(snapshot: bool, monkeypatch):
        def counted(trial, study):
            scored[-1] += 1
            return pruned_score(trial, study)

        monkeypatch.setattr(tpe, "_get_pruned_trial_score", counted)
        base = make_sampler("tpe", seed=1, constraints_func=lambda t: [t.user_attrs.get("violation", 0.0)])
        sampler = ChoiceRestrictingSampler(base, space.restrictions, snapshot=snapshot)
        study = optuna.create_study(sampler=sampler, direction=direction)
        draws, costs, flight = [], [], []
        long_runner = None
        compared: list[int] = []
        for i in range(n_trials):
            if i == 30:
                study.enqueue_trial({"optimizer": "sgd"})
            scored.append(0)
            trial = study.ask()
            cfg = space.sample(trial)
            costs.append(scored[-1])
            draws.append(dict(trial.params))
            if snapshot and sampler._snapshot is not None:
                compared.append(_compare_with_optunas_split(sampler._snapshot, study))
            if i == 12:
                long_runner = trial  # runs while 40 others finish
                continue
            flight.append((trial, cfg))
            if len(flight) < 3 and i < n_trials - 1:
                continue
            # finish one of the three in flight, not always the oldest
            done, cfg = flight.pop((i * 5) % len(flight))
            score = round(-abs(math.log10(cfg.optimizer_params["lr"]) + 2.5), 1)  # ties
            done.set_user_attr("violation", 1.0 if i % 11 == 0 else 0.0)
            if i % 13 == 6:
                study.tell(done, state=TrialState.FAIL)
            elif (i % 12 != 0) if mostly_pruned else (i % 5 == 2):
                for epoch in range(1, 2 + i % 3):
                    done.report(float("nan") if i % 7 == 0 else score - 1.0 / epoch, epoch)
                study.tell(done, state=TrialState.PRUNED)
            else:
                study.tell(done, score)
            if i == 52:
                study.tell(long_runner, -3.0)
        return draws, costs, compared

    with pytest.MonkeyPatch.context() as mp:
        plain, plain_costs, _ = run(False, mp)
    with pytest.MonkeyPatch.context() as mp:
        snapped, snapped_costs, compared = run(True, mp)
    assert snapped == plain
    if optuna.__version__ == WRAPPED_OPTUNA:
        assert sum(compared) >= n_trials, compared  # each trial's splits were the index's, and Optuna's own
        assert hasattr(tpe.TPESampler._sample, "__wrapped__"), "autoopt.sampling's _sample wrapper was not installed"
        # Optuna scores every pruned trial again at each split: growing with the study; the index
        # scores each once (once per list of trials it keeps: a restricted choice's is another)
        assert sum(plain_costs[-10:]) > 2 * sum(plain_costs[20:30])
        assert sum(snapped_costs[-10:]) <= 1.5 * sum(snapped_costs[20:30]) + 10
        assert sum(snapped_costs[-10:]) < sum(plain_costs[-10:]) / 4


def test_conditional_params_are_the_optimizers_own():
    space = SearchSpace(SpaceSpec(), DENSE)
    _, configs = sample_many(space, 60)
    seen = set()
    for trial, cfg in configs:
        seen.add(cfg.optimizer)
        own = {h.name for h in CATALOG[cfg.optimizer].active_hyperparams(cfg.optimizer_params)}
        assert set(cfg.optimizer_params) == own
        opt_params = {k.split(".")[0] for k in trial.params if "." in k}
        assert opt_params <= {cfg.optimizer, cfg.scheduler}
        assert 0.0 <= cfg.warmup_fraction <= 0.1
    assert len(seen) >= 10


def test_mini_batch_space_excludes_full_batch_and_sparse_only_with_reasons():
    space = SearchSpace(SpaceSpec(), DENSE)
    assert "lbfgs" not in space.optimizers and "full-batch" in space.excluded["lbfgs"]
    assert "rprop" in space.excluded
    assert "sparse_adam" in space.excluded and "sparse" in space.excluded["sparse_adam"]
    sparse = SearchSpace(SpaceSpec(), SPARSE)
    assert "sparse_adam" in sparse.optimizers


def test_restrictions_and_fixed_values_hold():
    space = SearchSpace(
        SpaceSpec(optimizers=["adamw", "nesterov"], schedulers=["cosine", "linear"],
                  params={"adamw": {"lr": {"low": 1e-4, "high": 1e-3}, "beta2": 0.999}}, warmup=0.05,
                  grad_clip=[1.0, 5.0], batch_size=[16, 64]),
        DENSE,
    )
    _, configs = sample_many(space, 40, sampler="tpe")
    for _, cfg in configs:
        assert cfg.optimizer in {"adamw", "nesterov"}
        assert cfg.scheduler in {"cosine", "linear"}
        assert cfg.warmup_fraction == 0.05
        assert cfg.grad_clip in {1.0, 5.0} and cfg.batch_size in {16, 64}
        if cfg.optimizer == "adamw":
            assert 1e-4 <= cfg.optimizer_params["lr"] <= 1e-3
            assert cfg.optimizer_params["beta2"] == 0.999
    assert {c.optimizer for _, c in configs} == {"adamw", "nesterov"}


def test_weight_decay_has_an_explicit_zero_option():
    space = SearchSpace(SpaceSpec(optimizers=["adamw"]), DENSE)
    _, configs = sample_many(space, 40)
    wds = [c.optimizer_params["weight_decay"] for _, c in configs]
    assert any(w == 0 for w in wds) and any(w > 0 for w in wds)


def test_resume_with_changed_optimizer_list(tmp_path):
    """Add, drop and narrow: the same stored study keeps sampling, TPE learns from old trials."""
    url = f"sqlite:///{tmp_path}/s.db"
    first = SearchSpace(SpaceSpec(optimizers=["adamw", "nesterov", "lion"]), DENSE)
    sample_many(first, 12, sampler="tpe", storage=url)
    added = SearchSpace(SpaceSpec(optimizers=["adamw", "nesterov", "lion", "radam"]), DENSE)
    sample_many(added, 12, sampler="tpe", storage=url)
    dropped = SearchSpace(SpaceSpec(optimizers=["adamw"], params={"adamw": {"lr": {"low": 1e-4, "high": 1e-3}}}), DENSE)
    study, configs = sample_many(dropped, 6, sampler="tpe", storage=url)
    assert all(c.optimizer == "adamw" and 1e-4 <= c.optimizer_params["lr"] <= 1e-3 for _, c in configs)
    assert len(study.trials) == 30
    assert {t.params["optimizer"] for t in study.trials} == {"adamw", "nesterov", "lion", "radam"}
    # plain Optuna would have refused this:
    plain = optuna.load_study(study_name="s", storage=url)
    t = plain.ask()
    with pytest.raises(ValueError):
        t.suggest_categorical("optimizer", ["adamw", "radam"])


def test_coordinator_resume_with_changed_space(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    def coordinator(optimizers: list[str]) -> StudyCoordinator:
        search = SearchSpec(task="cv", space=SpaceSpec(optimizers=optimizers), n_trials=None)
        return StudyCoordinator("c", search, ExecutionSpec(), PlacesSpec(storage=url), TaskFacts("maximize", DENSE, 3))

    c1 = coordinator(["sgd", "adam"])
    for _ in range(3):
        item = c1.ask()
        c1.tell(item["number"], {"status": "complete", "value": 0.5, "history": []})
    c2 = coordinator(["lion", "adam"])
    for _ in range(3):
        item = c2.ask()
        assert item["config"]["optimizer"] in {"lion", "adam"}
        c2.tell(item["number"], {"status": "complete", "value": 0.6, "history": []})
    assert c2.summary()["counts"]["complete"] == 6


def test_enqueue_round_trip_and_out_of_space():
    space = SearchSpace(SpaceSpec(optimizers=["adamw", "momentum"]), DENSE)
    cfg = TrialConfig("adamw", {"lr": 3e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
                      "cosine", {}, 0.05, None, None)
    params = space.to_optuna_params(cfg)
    study = optuna.create_study(sampler=ChoiceRestrictingSampler(make_sampler("tpe", seed=0), space.restrictions))
    study.enqueue_trial(params)
    got = space.sample(study.ask())
    assert got.optimizer == "adamw" and got.optimizer_params["lr"] == pytest.approx(3e-3)
    assert got.optimizer_params["weight_decay"] == 0.0 and got.scheduler == "cosine"
    with pytest.raises(SpecError, match="not in this space"):
        space.to_optuna_params(TrialConfig("lion"))


def test_no_applicable_optimizer_is_a_clear_error():
    with pytest.raises(SpecError, match="no optimizer can run on this task"):
        SearchSpace(SpaceSpec(optimizers=["sparse_adam"]), DENSE)


def test_schedule_free_gets_only_a_constant_schedule():
    space = SearchSpace(SpaceSpec(optimizers=["schedulefree_adamw", "adamw"], schedulers=["cosine", "linear"]), DENSE)
    _, configs = sample_many(space, 30)
    for _, cfg in configs:
        if cfg.optimizer == "schedulefree_adamw":
            assert cfg.scheduler == "constant"
        else:
            assert cfg.scheduler in {"cosine", "linear"}
    assert {c.optimizer for _, c in configs} == {"schedulefree_adamw", "adamw"}


def test_a_coordinators_tpe_samples_from_its_index_of_finished_trials(tmp_path):
    """The study's coordinator samples with TPE through the snapshot sampler's index of finished
    trials (docs/benchmarks.md, issue #13), not through its fallback, which is as correct but
    passes over every trial per trial: the storage it reads gives the trials numbered in order,
    with a trial prepared ahead (WAITING) and two running while others finish."""
    from optuna.samplers._tpe import sampler as tpe

    url = f"sqlite:///{tmp_path}/c.db"
    search = SearchSpec(task="cv", space=SpaceSpec(optimizers=["adamw", "sgd", "lion"]), n_trials=None)
    c = StudyCoordinator("indexed", search, ExecutionSpec(), PlacesSpec(storage=url), TaskFacts("maximize", DENSE, 3))
    running = [c.ask(), c.ask()]
    for i in range(30):
        c.prepare()  # as the driver does after each dispatch
        done = running.pop(0)
        c.tell(done["number"], {"status": "complete", "value": float(i % 7), "history": []})
        running.append(c.ask())
    memo = c.study.sampler._memo
    if optuna.__version__ == WRAPPED_OPTUNA:
        assert hasattr(tpe.TPESampler._sample, "__wrapped__")
        assert memo is not None and memo.indexes, "the coordinator's TPE never used the index"
        finished = sum(t.state.is_finished() for t in c.study.get_trials(deepcopy=False))
        assert max(len(index.trials) for index in memo.indexes.values()) >= finished - 2
