"""The learned recommender: regret normalisation, the regret model and its numpy twin, the best-lr
search, the portfolio, extrapolation, data overriding a rule, and the leave-one-family-out
evaluation (which must never see the held-out family).

Real parts: real scikit-learn fits on a generated meta-dataset with a known answer
(tests/helper_zoo.py), the shipped rule table and catalog, the shipped model where it is named.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import helper_zoo
from autoopt.core.traits import TaskTraits
from autoopt.recommend import evaluate, meta
from autoopt.recommend.portfolio import greedy, prior_scenarios
from autoopt.recommend.recommender import CompiledModel, Recommender
from autoopt.recommend.regret import CAP, task_grids, training_rows


@pytest.fixture(scope="module")
def world():
    """(grids, fitted RegretModel, its CompiledModel) of the generated meta-dataset."""
    grids = helper_zoo.grids()
    est, _ = meta.fit_estimator(grids, select=False, n_estimators=30)
    return grids, est, CompiledModel.from_estimator(est)


def test_regret_is_normalised_per_task_and_looked_up_in_log_lr():
    runs = [{"instance": "t", "family": "f", "domain": "other", "direction": "minimize", "optimizer": o, "lr": lr,
             "seed": s, "status": st, "value": v}
            for o, lr, st, v in [("a", 1e-3, "ok", 1.0), ("a", 1e-2, "ok", 2.0), ("a", 1e-1, "diverged", math.nan),
                                 ("b", 1e-3, "ok", 3.0), ("b", 1e-2, "ok", 5.0)]
            for s in (0, 1)]
    g = task_grids(pd.DataFrame(runs))["t"]
    # best 1.0 (minimised); median of the grid (diverged counts as worst) 3.0 -> span 2
    assert g.best_value == 1.0 and g.median_value == 3.0
    assert g.lookup("a", 1e-3)[0] == 0.0 and g.lookup("a", 1e-2)[0] == pytest.approx(0.5)
    assert g.lookup("b", 1e-2)[0] == pytest.approx(2.0) and g.lookup("a", 1e-1)[0] == CAP
    assert g.lookup("a", 10 ** -2.5)[0] == pytest.approx(0.25)  # halfway in log lr
    assert g.lookup("a", 10 ** -3.4)[0] == 0.0  # within half a decade outside: the edge's value
    assert g.lookup("a", 1e-5)[0] == CAP  # far outside the grid: a miss
    assert g.lookup("a", 1e-3)[1] == 0.0 and g.lookup("b", 1e-2)[1] == pytest.approx(4.0)  # raw, metric units
    assert g.best_optimizer == "a" and g.tuned("b") == (1.0, 2.0)


def test_a_fixed_baseline_is_judged_on_the_grid_but_stays_out_of_it():
    """Prodigy at lr 1.0 (a baseline, sweep.BASELINES) is looked up in the task's normalised
    units, but moves neither the grid's best nor its median, and is nobody's training data."""
    grid = [("a", 1e-3, 1.0), ("a", 1e-2, 2.0), ("b", 1e-3, 3.0), ("b", 1e-2, 5.0)]
    runs = [{"instance": "t", "family": "f", "domain": "other", "direction": "minimize", "optimizer": o, "lr": lr,
             "seed": s, "status": "ok", "value": v}
            for o, lr, v in [*grid, ("prodigy", 1.0, 0.5)] for s in (0, 1)]
    g = task_grids(pd.DataFrame(runs))["t"]
    alone = task_grids(pd.DataFrame([r for r in runs if r["optimizer"] != "prodigy"]))["t"]
    assert (g.best_value, g.median_value) == (alone.best_value, alone.median_value) == (1.0, 2.5)
    assert set(g.curves) == {"a", "b"} and set(g.baselines) == {"prodigy"}
    assert g.lookup("prodigy", 1.0) == (0.0, 0.0)  # better than the grid's best: regret 0
    runs[-2:] = [dict(r, value=4.0) for r in runs[-2:]]
    g = task_grids(pd.DataFrame(runs))["t"]
    assert g.lookup("prodigy", 1.0) == (pytest.approx(2.0), pytest.approx(3.0))
    assert g.best_optimizer == "a" and {r["optimizer"] for r in training_rows({"t": g})} == {"a", "b"}


def test_model_follows_scikit_learn_conventions_and_compiles_exactly(world, tmp_path):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils._param_validation import InvalidParameterError

    from autoopt.recommend.model import RegretModel

    grids, est, compiled = world
    rows = training_rows(grids)
    y = [r["regret"] for r in rows]
    m = RegretModel(n_estimators=5)
    assert clone(m).get_params() == m.get_params()
    with pytest.raises(NotFittedError):
        m.predict(rows)
    with pytest.raises(InvalidParameterError):
        RegretModel(estimator="svm").fit(rows, y)
    with pytest.raises(ValueError, match="y has"):
        m.fit(rows, y[:-1])
    with pytest.raises(ValueError, match="lr"):
        m.fit([{**r, "lr": None} for r in rows], y)
    assert est.score(rows, y) > 0.8
    per_tree = est.predict_per_tree(rows[:300])
    X = np.vstack([compiled.design(r, [r["optimizer"]], [r["lr"]]) for r in rows[:300]])
    np.testing.assert_allclose(compiled.per_tree(X), per_tree, rtol=1e-6, atol=1e-6)
    np.savez_compressed(tmp_path / "m.npz", **est.to_arrays())  # what the CLI loads: no pickle
    again = CompiledModel.load(tmp_path / "m.npz")
    q = helper_zoo.grids()["cv_a-01"].traits
    assert {o: a.lr for o, a in again.best_lrs(q, ["sgd", "adamw"]).items()} == \
        {o: a.lr for o, a in compiled.best_lrs(q, ["sgd", "adamw"]).items()}


def test_best_lr_moves_with_batch_size_in_the_direction_the_data_says(world):
    grids, _, compiled = world
    # the data: SGD's best grid lr grows with the batch, AdamW's does not move
    for opt, grows in (("sgd", True), ("adamw", False)):
        by_batch = {}
        for g in grids.values():
            by_batch.setdefault(g.traits["batch_size"], []).append(math.log10(g.curves[opt].best[0]))
        slope = np.polyfit(np.log2(list(by_batch)), [np.mean(v) for v in by_batch.values()], 1)[0]
        assert (slope > 0.15) if grows else (abs(slope) < 0.1), (opt, slope)
    # the model, for a family it has never seen, at three batch sizes
    lrs = {opt: [compiled.best_lrs({"domain": "speech", "batch_size": b, "n_params": 6000, "dataset_size": 4000,
                                    "grad_sparsity": 0.1}, [opt])[opt].lr for b in (16, 64, 256)]
           for opt in ("sgd", "adamw")}
    assert lrs["sgd"][0] < lrs["sgd"][1] < lrs["sgd"][2], lrs
    assert lrs["sgd"][2] / lrs["sgd"][0] > 2
    assert max(lrs["adamw"]) / min(lrs["adamw"]) < 2.5, lrs
    a = compiled.best_lrs({"domain": "cv", "batch_size": 64}, ["sgd"])["sgd"]
    assert a.lr_low <= a.lr <= a.lr_high and a.regret_std >= 0 and len(a.per_tree) == compiled.n_trees


def test_evaluation_never_sees_the_held_out_family(world):
    grids, *_ = world
    seen: list[set[str]] = []

    def recording_fit(train):
        seen.append({g.family for g in train.values()})
        return meta.fit_estimator(train, select=False, n_estimators=10)[0]

    res = evaluate.evaluate(grids, fit=recording_fit)
    families = sorted({g.family for g in grids.values()})
    assert len(seen) == len(families)
    for fam, fit_families in zip(families, seen):
        assert fam not in fit_families and fit_families == set(families) - {fam}
        # the fold's model holds no task of the held-out family, and it judged all of them
        assert not {i for i in res["folds"][fam] if grids[i].family == fam}
        assert res["families"][fam]["tasks"] == sum(g.family == fam for g in grids.values())
    assert res["overall"]["tasks"] == len(grids)
    assert res["missing"] == {"schedulefree_adamw_2.5e-3": "schedulefree_adamw is not in the sweep",
                              "prodigy_1.0": "prodigy is not in the sweep"}
    rec, trio, single = (res["overall"][k] for k in ("recommender", "hindsight_trio", "hindsight_single"))
    assert 0 <= trio["top3"] <= single["top1"]  # a trio in hindsight is at least as good as one config
    assert set(res["targets"]) == {"top1_at_most_half_of_hindsight_single", "top3_at_most_hindsight_trio",
                                   "tuned_top1_at_most_tuned_adamw"}
    # in this world the lr is the whole game and the model learns it: as suggested beats AdamW at
    # 1e-3 (the model alone everywhere; the recommender where the held-out family's domain has
    # another family to learn from: a fold without any task of the domain is an extrapolation,
    # where the rules decide)
    assert res["overall"]["model_only"]["top1"] < res["overall"]["adamw_1e-3"]["top1"]
    for fam in ("tab_a", "tab_b"):
        assert res["families"][fam]["recommender"]["top1"] < res["families"][fam]["adamw_1e-3"]["top1"], fam
    # every optimizer at the lr suggested for it, never better than at its best grid lr
    swept = {o for g in grids.values() for o in g.curves}
    assert set(res["lr_as_suggested"]) == swept
    for o, v in res["lr_as_suggested"].items():
        assert v["tuned"] - 1e-9 <= v["as_suggested"] <= CAP and set(v["per_family"]) == set(families), o


def test_meta_evaluate_cli_writes_results(tmp_path):
    from autoopt.recommend.cli import app

    zoo = helper_zoo.write_zoo(tmp_path / "zoo", families=3)
    out = tmp_path / "res"
    r = CliRunner().invoke(app, ["meta", "evaluate", "--zoo", "--data", str(zoo), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "results.json").is_file() and "held-out family" in (out / "summary.md").read_text()
    bad = CliRunner().invoke(app, ["meta", "evaluate", "--zoo", "--data", str(tmp_path)])
    assert bad.exit_code == 2 and "MANIFEST" in bad.output


def test_portfolio_greedy_best_of_and_family_spread():
    # two candidates agree with each other, a third is good exactly where they are bad
    scen = np.array([[0.1, 0.12, 1.0], [1.0, 1.05, 0.1]] * 5)
    picks, best_of = greedy(np.array([0.55, 0.58, 0.56]), scen, 3)
    assert picks[:2] == [0, 2] and best_of[1] == pytest.approx(0.1) and best_of == sorted(best_of, reverse=True)
    # a best-of gain the scenarios cannot tell from another's is a tie: the lower expected regret wins
    rng = np.random.default_rng(0)
    first = rng.uniform(0.2, 0.4, 64)
    near_copy = first * 1.5  # never lowers the best-of, but a good configuration on its own
    far = np.full(64, 2.0)
    far[0] = first[0] - 0.01  # lowers the best-of once by 0.01: noise, not a hedge
    picks, _ = greedy(np.array([0.3, 0.45, 2.0]), np.stack([first, near_copy, far], axis=1), 2)
    assert picks == [0, 1]
    far[:32] = first[:32] - 0.1  # half the time much better: a real hedge, taken
    picks, _ = greedy(np.array([0.3, 0.45, 2.0]), np.stack([first, near_copy, far], axis=1), 2)
    assert picks == [0, 2]
    # prior scenarios: same family moves together, others independently; the mean is kept
    s = prior_scenarios(np.array([0.5, 0.5, 0.5]), ["adam", "adam", "sgd"], 4000)
    assert np.corrcoef(np.log(s[:, 0]), np.log(s[:, 1]))[0, 1] > 0.7
    assert abs(np.corrcoef(np.log(s[:, 0]), np.log(s[:, 2]))[0, 1]) < 0.1
    np.testing.assert_allclose(s.mean(axis=0), 0.5, rtol=0.05)


def test_uncertain_evidence_spreads_the_top_3_over_families(world):
    _, _, compiled = world
    rec = Recommender(model=compiled)
    for q in (TaskTraits(domain="speech", batch_size=64), TaskTraits(domain="tabular", batch_size=32)):
        top = rec.rank(q, top=3)
        assert len({r.family for r in top}) >= 2, [(r.optimizer, r.family) for r in top]
        assert [r.portfolio_best_of for r in top] == sorted((r.portfolio_best_of for r in top), reverse=True)


def test_outside_the_zoo_the_answer_says_it_extrapolates_and_the_rules_decide(world):
    _, _, compiled = world
    rec, rules = Recommender(model=compiled), Recommender(model=None)
    q = TaskTraits(domain="nlp", batch_size=65536, n_params=100_000_000)
    ans = rec.rank(q, top=3)
    assert {e["trait"] for e in ans.extrapolating} == {"batch", "params"}
    assert ans.notes[0]["rule"] == "extrapolation" and "Extrapolating" in ans.notes[0]["text"]
    assert all(r.learned_weight < 0.2 for r in ans)
    assert ans.optimizers[0] == rules.rank(q, top=1).optimizers[0]
    inside = rec.rank(TaskTraits(domain="tabular", batch_size=64, n_params=6000, dataset_size=4000), top=3)
    assert inside.extrapolating == [] and inside.to_dict()["extrapolating"] == []


def test_strong_nearby_evidence_overrides_a_rule_and_says_so(world):
    """The generated world says AdamW wins on small tabular tasks; 'goal: generalization'
    (SGD + momentum) puts momentum first in the rules alone. With the tasks right there, the data
    wins and names the rule it overrides."""
    _, _, compiled = world
    q = TaskTraits(domain="tabular", batch_size=64, n_params=6000, dataset_size=4000, grad_sparsity=0.1,
                   goal="generalization")
    rules_first = Recommender(model=None).rank(q, top=1).optimizers[0]
    assert rules_first == "momentum"
    ans = Recommender(model=compiled).rank(q, top=3, candidates=helper_zoo.OPTIMIZERS)
    assert ans.optimizers[0] == "adamw"
    over = {o["rule"]: o for o in ans.overrides}
    assert "goal-generalization-sgdm" in over and over["goal-generalization-sgdm"]["favours"] == "momentum"
    reason = ans[0].reasons[0]
    assert reason["rule"] == "data-override" and "goal-generalization-sgdm" in reason["overrides"]
    assert ans[0].learned_weight > 0.5 and "zoo" in reason["sources"][0]
    # and the lr comes from the data (AdamW's best is 2e-3 at every batch size here)
    assert 10 ** -3.1 < ans[0].hyperparameters["lr"] < 10 ** -2.3
    assert "learned model" in ans[0].hparam_sources["lr"]


def test_shipped_model_moves_the_lr_with_batch_size_the_way_the_zoo_does():
    """On the shipped zoo data, per doubling of the batch the best grid lr of SGD and momentum
    rises and AdamW's falls slightly; the shipped model never moves an lr against the data, and
    SGD's rises with the batch."""
    from autoopt.recommend.recommender import DATA_DIR

    grids, _ = meta.grids_from(studies=[])
    model = CompiledModel.load(DATA_DIR / "model.npz")
    batches = sorted({g.traits["batch_size"] for g in grids.values()})
    assert len(batches) >= 3
    moved = {}
    for opt in ("sgd", "momentum", "adamw"):
        xs = [math.log2(g.traits["batch_size"]) for g in grids.values()]
        ys = [math.log10(g.curves[opt].best[0]) for g in grids.values()]
        slope = np.polyfit(xs, ys, 1)[0]
        q = {"domain": "tabular", "n_params": 10_000, "dataset_size": 3000, "grad_sparsity": 0.05}
        lo, hi = (model.best_lrs({**q, "batch_size": b}, [opt])[opt].lr for b in (batches[0] // 2, batches[-1]))
        moved[opt] = (slope, lo, hi)
        if abs(slope) > 0.1:
            assert (hi >= lo) if slope > 0 else (hi <= lo), moved
    assert moved["sgd"][0] > 0.1 and moved["sgd"][2] > moved["sgd"][1], moved


def test_similar_tasks_are_drawn_by_trait_similarity_and_shared_across_optimizers(world):
    """The measured curves behind the answer: near tasks drawn more often, every family weighing as
    one task, and draw s the same task for every optimizer (so the portfolio sees joint failures)."""
    grids, est, compiled = world
    assert compiled.curves.shape == (len(compiled.instances), len(compiled.optimizers), len(compiled.curve_log_lr))
    g = next(iter(grids.values()))
    fine = {o: np.arange(-4.0, 0.01, 0.05) for o in ("sgd", "adamw")}
    drawn = compiled.similar_curves(g.traits, ["sgd", "adamw"], fine, 400)
    assert drawn["sgd"].shape == (400, len(fine["sgd"]))
    # with the scaling laws off, each draw is one task's measured curve: find which, per optimizer
    saved, compiled.lr_slope = compiled.lr_slope, None
    try:
        plain = compiled.similar_curves(g.traits, ["sgd", "adamw"], fine, 400)
    finally:
        compiled.lr_slope = saved
    j = {o: compiled.o_index[o] for o in ("sgd", "adamw")}

    def which(o: str) -> np.ndarray:
        tasks = np.stack([np.interp(fine[o], compiled.curve_log_lr, compiled.curves[i, j[o]])
                          for i in range(len(compiled.instances))])
        return np.array([int(np.argmin(np.abs(tasks - row).sum(axis=1))) for row in plain[o]])

    sgd_tasks, adamw_tasks = which("sgd"), which("adamw")
    assert (sgd_tasks == adamw_tasks).all()
    home = compiled.instances.index(g.instance)
    share = np.mean(sgd_tasks == home)
    assert share > 1 / len(compiled.instances)  # the query's own task is drawn more than a uniform share
    # a far-away query (another domain, 100x the data) draws its own task less often
    far = {**g.traits, "domain": "speech" if g.traits["domain"] != "speech" else "cv",
           "dataset_size": (g.traits.get("dataset_size") or 1000) * 100}
    saved, compiled.lr_slope = compiled.lr_slope, None
    try:
        far_curves = compiled.similar_curves(far, ["sgd"], fine, 400)["sgd"]
    finally:
        compiled.lr_slope = saved
    tasks = np.stack([np.interp(fine["sgd"], compiled.curve_log_lr, compiled.curves[i, j["sgd"]])
                      for i in range(len(compiled.instances))])
    far_home = np.mean([int(np.argmin(np.abs(tasks - row).sum(axis=1))) == home for row in far_curves])
    assert far_home < share


def test_lr_scaling_law_is_kept_only_where_left_out_families_confirm_it():
    from autoopt.recommend.model import _lr_slopes

    rng = np.random.default_rng(0)
    n_fam, per = 8, 3
    families = np.repeat([f"f{i}" for i in range(n_fam)], per)
    z = rng.standard_normal((n_fam * per, 5))
    law = 10 ** (-2 + 0.5 * z[:, 0] + 0.02 * rng.standard_normal(len(z)))  # lr grows with (standardised) batch
    noise = 10 ** (-2 + 0.4 * rng.standard_normal(len(z)))  # best lrs that no trait explains
    slopes = _lr_slopes(z, np.stack([law, noise], axis=1), families)
    assert slopes[0, 0] > 0.3 and np.abs(slopes[0, 1:]).max() < 0.1
    assert np.all(slopes[1] == 0)


def test_a_domain_leans_on_its_own_families_only_where_they_agree():
    """The population a query is judged against: every family alike, or more its domain's own
    families, but only where leaving one of them out shows the others predict it."""
    from autoopt.recommend.model import _domain_weights, family_balanced, population_mean, population_weights

    # curves (tasks, optimizers, lrs): "good" = regret 0 at one (optimizer, lr), 1 elsewhere
    def task(o: int, x: int) -> np.ndarray:
        c = np.ones((2, 3))
        c[o, x] = 0.0
        return c

    rows = [  # (family, domain, best optimizer, best lr)
        ("a1", "agree", 0, 0), ("a1", "agree", 0, 0), ("a2", "agree", 0, 0), ("a3", "agree", 0, 0),
        ("d1", "disagree", 1, 0), ("d2", "disagree", 0, 1),
        ("o1", "other", 1, 2), ("o2", "other", 1, 2), ("o3", "other", 1, 2), ("o4", "other", 1, 2),
        ("o5", "other", 1, 2), ("s1", "single", 0, 0),
    ]
    families = np.array([r[0] for r in rows])
    domains = np.array([r[1] for r in rows])
    curves = np.stack([task(r[2], r[3]) for r in rows])
    w = _domain_weights(curves, families, domains)
    assert w["agree"] > 0  # its families agree with each other, not with the population
    assert w["disagree"] == 0.0 and w["single"] == 0.0  # noise; one family cannot be checked
    # family-balanced: a1's two tasks weigh as one family
    fb = family_balanced(families, np.ones(len(rows), dtype=bool))
    assert fb[0] == pytest.approx(fb[2] / 2) and fb.sum() == pytest.approx(1.0)
    pop = population_mean(curves, population_weights(families, domains, "agree", w["agree"]))
    assert np.unravel_index(np.argmin(pop), pop.shape) == (0, 0)
    everyone = population_mean(curves, population_weights(families, domains, "agree", 0.0))
    assert np.unravel_index(np.argmin(everyone), everyone.shape) == (1, 2)


def test_far_from_the_meta_dataset_the_answer_shrinks_to_the_population(world):
    """With tasks near the query the model's own curves count (as much as 1 - shrinkage); far from
    every task the answer is the population's: the best fixed configuration of the meta-dataset."""
    from autoopt.recommend.model import population_mean

    _, _, compiled = world
    saved = compiled.shrinkage
    try:
        compiled.shrinkage = 0.0
        near = dict(helper_zoo.grids()["tab_a-01"].traits)
        far = {"domain": "speech", "batch_size": 64, "n_params": 10**9, "dataset_size": 10**9, "grad_sparsity": 0.9}
        assert compiled.shrink_weight(near) < 0.5 < 0.95 < compiled.shrink_weight(far) <= 1.0
        compiled.shrinkage = 1.0
        assert compiled.shrink_weight(near) == pytest.approx(1.0)
        # far away, each optimizer's curve is the population's mean curve (moved by the lr scaling law)
        compiled.shrinkage = 0.0
        saved_slope, compiled.lr_slope = compiled.lr_slope, None
        try:
            curves = compiled.lr_curves(far, ["adamw", "sgd"])
            pop = population_mean(compiled.curves, compiled.population_weights(far))
            for o, (grid, c) in curves.items():
                expected = np.interp(grid, compiled.curve_log_lr, pop[compiled.o_index[o]])
                assert np.abs(c.mean(axis=0) - expected).max() < 0.05, o
            answers = compiled.best_lrs(far, ["adamw", "sgd"])
            j = {o: compiled.o_index[o] for o in answers}
            best = min(answers, key=lambda o: answers[o].regret)
            assert best == min(j, key=lambda o: np.nanmin(pop[j[o]]))
        finally:
            compiled.lr_slope = saved_slope
    finally:
        compiled.shrinkage = saved
