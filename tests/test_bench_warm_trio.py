"""bench/warm_trio.py judges trio policies offline; its T0 must stay the product's warm start,
or its comparison says nothing about what users get."""

from __future__ import annotations

from autoopt.core.traits import TaskTraits
from autoopt.recommend.recommender import Recommender
from bench.warm_trio import POLICIES, _configs, trio


def _mirror(ranked) -> list[tuple[str, float]]:
    picks = [[r.optimizer, r.trial_config["optimizer_params"]["lr"]] for r in ranked.recommendations[:3]]
    bounds = {r.optimizer: r.lr_bounds for r in ranked.recommendations[:3]}
    return trio(POLICIES["T0"], _configs(picks, bounds))


def _product(ranked) -> list[tuple[str, float]]:
    return [(c["optimizer"], c["optimizer_params"]["lr"]) for c in ranked.warm_start(3)]


def test_the_benchs_t0_is_the_products_warm_start_clipped_or_not():
    ranked = Recommender.default().rank(TaskTraits(domain="cv", batch_size=128, n_params=2_000_000,
                                                   dataset_size=50_000), top=None)
    assert _mirror(ranked) == _product(ranked)
    first = ranked[0]
    low, high = first.lr_bounds
    first.trial_config["optimizer_params"]["lr"] = high  # the upper bracket clips onto the lr itself
    assert _mirror(ranked) == _product(ranked)
    assert _product(ranked)[2][0] == ranked[1].optimizer  # its place went to the second pick


def test_other_policies_hedge_the_optimizer():
    configs = {"p1": ("a", 0.01), "p1-": ("a", 0.00316), "p1+": ("a", 0.0316), "p2": ("b", 0.1), "p3": ("c", 1.0)}
    assert trio(POLICIES["T1"], configs) == [("a", 0.01), ("a", 0.00316), ("b", 0.1)]
    assert trio(POLICIES["T3"], configs) == [("a", 0.01), ("b", 0.1), ("c", 1.0)]
