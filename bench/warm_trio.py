"""Which three configurations a warm start runs first (issue #11; docs/benchmarks.md section 5,
"which three configurations a warm start runs first", rule written before the run).

Offline: each task's answers from the shipped leave-family-out evaluation
(``bench/results/recommender-zoo/results.json``: its warm start and its ranking's first three at
their lrs, from the fold that never saw its family) are looked up on the task's own grid for four
trio policies, and the policy is chosen per held-out family on the other families' tasks only.

    python -m bench.warm_trio [RESULTS_JSON] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from autoopt.recommend.meta import grids_from
from autoopt.recommend.recommender import LR_BRACKET, CatalogView, _lr_bounds

POLICIES = {
    "T0": ("p1", "p1-", "p1+"),  # today: the first pick at its lr and half a decade either side
    "T1": ("p1", "p1-", "p2"),
    "T2": ("p1", "p1+", "p2"),
    "T3": ("p1", "p2", "p3"),  # the ranking's first three (top3_ranked)
}
#: where a clipped bracket's place goes: the next configurations, in this order
FALLBACK = ("p1", "p1-", "p1+", "p2", "p3")
SHIP_BAR = 0.0855  # the hindsight trio's best of 3
MIN_GAIN = 0.002


def _configs(picks: list[list[Any]], bounds: dict[str, tuple[float, float] | None]) -> dict[str, tuple[str, float]]:
    """The named candidate configurations of one task: p1..p3 and p1's brackets, clipped as
    RecommendationSet.warm_start clips them (to 3 significant digits)."""
    out: dict[str, tuple[str, float]] = {f"p{i + 1}": (o, float(lr)) for i, (o, lr) in enumerate(picks[:3])}
    o, lr = picks[0]
    low, high = bounds.get(o) or (0.0, math.inf)
    for name, x in (("p1-", lr / LR_BRACKET), ("p1+", lr * LR_BRACKET)):
        out[name] = (o, float(f"{min(max(x, low), high):.3g}"))
    return out


def trio(policy: tuple[str, ...], configs: dict[str, tuple[str, float]]) -> list[tuple[str, float]]:
    """The policy's three configurations; a repeat (a bracket clipped onto another) gives its place
    to the next configuration of FALLBACK not yet in the trio."""
    chosen: list[tuple[str, float]] = []
    for name in (*policy, *FALLBACK):
        c = configs.get(name)
        if c is not None and c not in chosen:
            chosen.append(c)
        if len(chosen) == 3:
            break
    return chosen


def run(results_path: Path) -> dict[str, Any]:
    res = json.loads(results_path.read_text())
    grids, _ = grids_from()
    catalog = CatalogView.current()
    per_task: dict[str, dict[str, float]] = {}
    family: dict[str, str] = {}
    checked = 0
    for name, t in res["tasks"].items():
        rec = t["recommender"]
        g = grids[name]
        family[name] = t["family"]
        bounds = {o: _lr_bounds(catalog.hyperparam(o, "lr")) for o, _ in rec["picks"]}
        configs = _configs(rec["picks"], bounds)
        per_task[name] = {}
        for p, names in POLICIES.items():
            per_task[name][p] = min(g.lookup(o, lr)[0] for o, lr in trio(names, configs))
        # T0 must reproduce the shipped evaluation's warm start and its best of 3
        assert [list(c) for c in trio(POLICIES["T0"], configs)] == [[o, float(lr)] for o, lr in rec["warm_start"]], name
        assert abs(per_task[name]["T0"] - rec["top3"]) < 1e-9, (name, per_task[name]["T0"], rec["top3"])
        checked += 1
    fams = sorted(set(family.values()))

    def mean(names: list[str], p: str) -> float:
        return sum(per_task[n][p] for n in names) / len(names)

    everyone = list(per_task)
    overall = {p: mean(everyone, p) for p in POLICIES}
    nested: dict[str, Any] = {}
    scores: list[float] = []
    for f in fams:
        others = [n for n in everyone if family[n] != f]
        mine = [n for n in everyone if family[n] == f]
        choice = min(POLICIES, key=lambda p: (mean(others, p), p))
        nested[f] = {"policy": choice, "score": mean(mine, choice), **{p: mean(mine, p) for p in POLICIES}}
        scores += [per_task[n][choice] for n in mine]
    nested_overall = sum(scores) / len(scores)
    shipped = min(POLICIES, key=lambda p: (overall[p], p))
    ships = nested_overall <= SHIP_BAR and nested_overall <= overall["T0"] - MIN_GAIN
    return {"tasks": checked, "families": len(fams), "overall": overall, "nested_overall": nested_overall,
            "by_family": nested, "policy_on_all_families": shipped, "ships": ships,
            "rule": {"ship_bar": SHIP_BAR, "min_gain": MIN_GAIN}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default="bench/results/recommender-zoo/results.json")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = run(Path(a.results))
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "warm_trio.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
