"""Measured and not kept (issue 11, best of 3): a warm start's three configurations chosen as an
(optimizer, lr) portfolio over the fold model's scenarios, against the shipped bracket (the first
pick at lr, lr / sqrt(10) and lr * sqrt(10); ``RecommendationSet.warm_start``).

Leave one family out exactly as ``autoopt meta evaluate --zoo`` (its ``_judge`` extended): the first
pick is the recommender's; picks 2 and 3 are chosen greedily (:func:`autoopt.recommend.portfolio.greedy`)
over every (optimizer, grid lr) of the fold model's scenario curves (``lrpf``), or over the first
pick's optimizer's lrs only (``lrpf_same``). No parameter is chosen on the held-out folds.

    python -m bench.recommender_warm_portfolio bench/results/recommender-warm-portfolio
"""
import json, sys, time
from pathlib import Path
import numpy as np
from autoopt.recommend import evaluate as ev, meta
from autoopt.recommend.cli import _data_options
from autoopt.recommend.portfolio import greedy

orig = ev._judge
def judge(g, rec, rules_only, model):
    out = orig(g, rec, rules_only, model)
    t = ev.traits_of(g)
    ranked = rec.rank(t, top=None, candidates=list(g.curves))
    first = ranked.warm_start(1)[0]
    o1, lr1 = first["optimizer"], first["optimizer_params"]["lr"]
    swept = [o for o in g.curves if o in rec.model.o_index]
    curves = rec.model.lr_curves(t, swept)
    res = {}
    for variant, opts in (("lrpf", list(curves)), ("lrpf_same", [o1])):
        cols, cands = [], []
        for o in opts:
            if o not in curves:
                continue
            grid, c = curves[o]
            for j, x in enumerate(grid):
                cands.append((o, float(10 ** x))); cols.append(c[:, j])
        if o1 not in curves or not cols:
            continue
        grid, c = curves[o1]
        f = np.array([np.interp(np.log10(lr1), grid, row) for row in c])
        S = np.concatenate([f[:, None], np.stack(cols, axis=1)], axis=1)
        picks, _ = greedy(S.mean(axis=0), S, 3, first=0)
        configs = [(o1, lr1)] + [cands[i - 1] for i in picks[1:]]
        out["recommender"][f"top3_{variant}"] = min(g.lookup(o, lr)[0] for o, lr in configs)
        res[variant] = [[o, float(f"{lr:.3g}")] for o, lr in configs]
    out["recommender"]["exp"] = res
    return out

ev._judge = judge
ev.METRICS = (*ev.METRICS, "top3_lrpf", "top3_lrpf_same")
data, _ = _data_options(None, None)
grids, summary = meta.grids_from(data, journals=False, studies=[])
t0 = time.time()
result = ev.evaluate(grids, log=lambda m: print(m, file=sys.stderr, flush=True))
print("seconds", time.time() - t0)
ov = result["overall"]["recommender"]; fm = result["overall_family_mean"]["recommender"]
print("overall", {k: round(v, 4) for k, v in ov.items() if isinstance(v, float)})
print("family mean", {k: round(v, 4) for k, v in fm.items() if isinstance(v, float)})
print("hindsight trio", result["overall"]["hindsight_trio"])
for fam, d in result["families"].items():
    r = d["recommender"]; print(fam, {k: round(r[k], 3) for k in ("top1", "top3", "top3_lrpf", "top3_lrpf_same") if k in r})
out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/recommender-warm-portfolio")
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(meta.dumps({k: result[k] for k in ("overall", "overall_family_mean", "families", "tasks")}) + "\n")
