"""Leave one task FAMILY out: how the recommender does on kinds of task it has never seen.

For each family F of the meta-dataset, a model is fitted (estimator selection included) on the
tasks of the *other* families only, and a recommender built on that model alone (never the
shipped or the user's model) answers for every task of F with the task's measured traits. Its
answers are looked up on F's dense grids (:meth:`autoopt.recommend.regret.TaskGrid.lookup`:
linear interpolation of normalised regret in log10 lr). Strategies compared:

* ``recommender``: rules + fold model; ``model_only``: the fold model's ranking alone;
  ``rules_only``: the rule prior alone, lrs from the rules;
* fixed configurations: AdamW at lr 1e-3 and 3e-4, Schedule-Free AdamW at 2.5e-3, Prodigy at
  1.0 (only if the sweep ran it);
* the best single (optimizer, lr) and the best trio (exhaustive over the grid lrs), chosen on the
  *other* families of each fold (zero-shot, like the recommender: ``others_*``) and in hindsight
  on the evaluated tasks themselves (optimistic: ``hindsight_*``, the issue's targets).

Metrics per task: ``top1`` the first suggestion at its suggested lr (normalised and ``top1_raw``
in the metric's units), ``top3`` the best of the first three as suggested (the recommender's:
the three configurations a warm-started study runs first, :meth:`RecommendationSet.warm_start`;
``top3_ranked``: its ranking's first three optimizers at their lrs), ``tuned`` the first
suggestion's optimizer at its best grid lr, ``best_in_top3`` whether the task's best optimizer
(tuned) is among the first three.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from autoopt.core.traits import TaskTraits
from autoopt.recommend.regret import CAP, TaskGrid

#: Fixed configurations a practitioner would use instead of a recommender.
FIXED: dict[str, tuple[str, float]] = {
    "adamw_1e-3": ("adamw", 1e-3),
    "adamw_3e-4": ("adamw", 3e-4),
    "schedulefree_adamw_2.5e-3": ("schedulefree_adamw", 2.5e-3),
    "prodigy_1.0": ("prodigy", 1.0),
}
RANKERS = ("recommender", "model_only", "rules_only")
METRICS = ("top1", "top1_raw", "top3", "top3_ranked", "tuned", "best_in_top3")


def traits_of(grid: TaskGrid) -> TaskTraits:
    t = grid.traits
    return TaskTraits(domain=t["domain"], batch_size=t.get("batch_size"), grad_sparsity=t.get("grad_sparsity"),
                      n_params=t.get("n_params"), dataset_size=t.get("dataset_size"),
                      sparse_gradients=bool(t.get("sparse_gradients")), grad_rms=t.get("grad_rms"))


def default_fit(train: Mapping[str, TaskGrid]) -> Any:
    """The shipped model's recipe on the training families only: CV selection, then the fit."""
    from autoopt.recommend.meta import fit_estimator

    return fit_estimator(train, select=True)[0]


def evaluate(
    grids: Mapping[str, TaskGrid],
    *,
    fit: Callable[[Mapping[str, TaskGrid]], Any] = default_fit,
    families: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Leave-one-family-out results (see the module docstring).

    ``fit``: fitted RegretModel from the training tasks (a fold's ``grids`` minus one family).
    ``families``: hold out only these (default every family; all are still used for training).
    """
    from autoopt.recommend.recommender import CatalogView, CompiledModel, Recommender
    from autoopt.recommend.rules import RuleBook

    swept = set().union(*(set(g.curves) for g in grids.values())) if grids else set()
    complete = {k for k, g in grids.items() if set(g.curves) >= swept}  # a chunk in progress may lack some
    all_families = sorted({g.family for k, g in grids.items() if k in complete})
    if len(all_families) < 2:
        raise ValueError(f"leave-one-family-out needs tasks of at least 2 families, the meta-dataset has {len(all_families)}")
    held_out = list(families) if families else all_families
    rules, catalog = RuleBook.load(), CatalogView.current()
    rules_only = Recommender(rules=rules, model=None, catalog=catalog)
    per_task: dict[str, dict[str, Any]] = {}
    folds: dict[str, list[str]] = {}
    for fam in held_out:
        train = {k: g for k, g in grids.items() if g.family != fam}
        test = {k: g for k, g in grids.items() if g.family == fam and k in complete}
        if not test:
            raise ValueError(f"no task of family {fam!r} with every optimizer swept in the meta-dataset")
        model = CompiledModel.from_estimator(fit(train))
        folds[fam] = list(model.instances)
        rec = Recommender(rules=rules, model=model, catalog=catalog)
        chosen = _hindsight({k: g for k, g in train.items() if k in complete})  # zero-shot: the other families only
        for name, g in sorted(test.items()):
            per_task[name] = _judge(g, rec, rules_only, model)
            per_task[name].update(_fixed_pair(g, chosen, "others"))
        if log:
            log(f"held out {fam}: {len(test)} tasks, model on {len(train)} tasks of {len({g.family for g in train.values()})} families")
    evaluated = {k: grids[k] for k in per_task}
    hindsight = _hindsight(evaluated)
    for name, g in evaluated.items():
        per_task[name].update(_fixed(g, hindsight))
    strategies = [*RANKERS, *(f for f in FIXED if FIXED[f][0] in _swept(evaluated)), "tuned_adamw",
                  "others_single", "others_trio", "hindsight_single", "hindsight_trio"]
    by_family: dict[str, Any] = {}
    for fam in held_out:
        names = [k for k, g in evaluated.items() if g.family == fam]
        by_family[fam] = {"tasks": len(names), **{s: _mean([per_task[n][s] for n in names if s in per_task[n]]) for s in strategies}}
    overall = {"tasks": len(per_task), **{s: _mean([per_task[n][s] for n in per_task if s in per_task[n]]) for s in strategies}}
    overall_by_family = {s: _mean_of_means([by_family[f][s] for f in held_out]) for s in strategies}
    missing = {f: f"{FIXED[f][0]} is not in the sweep" for f in FIXED if FIXED[f][0] not in _swept(evaluated)}
    return {
        "lr_as_suggested": _by_optimizer(per_task, held_out),
        "families": by_family,
        "overall": overall,
        "overall_family_mean": overall_by_family,
        "hindsight": {"single": list(hindsight["single"]), "trio": [list(c) for c in hindsight["trio"]]},
        "missing": missing,
        "targets": _targets(overall),
        "data": {"families": len(all_families), "held_out": len(held_out), "tasks": len(per_task),
                 "training_tasks": len(grids), "incomplete_tasks_used_for_training_only": len(grids) - len(complete),
                 "training_tasks_per_fold": {f: len(v) for f, v in folds.items()}},
        "folds": folds,
        "tasks": per_task,
        "method": __doc__.split("\n\n", 1)[1].strip(),
    }


def _swept(grids: Mapping[str, TaskGrid]) -> set[str]:
    """Optimizers with runs on these tasks: the grid's and the fixed baselines'."""
    return {o for g in grids.values() for o in (*g.curves, *g.baselines)}


def _judge(g: TaskGrid, rec: Any, rules_only: Any, model: Any) -> dict[str, Any]:
    """Every ranker's metrics on one held-out task."""
    t = traits_of(g)
    swept = list(g.curves)
    out: dict[str, Any] = {"family": g.family}
    ranked = rec.rank(t, top=None, candidates=swept)
    warm = [(c["optimizer"], c["optimizer_params"]["lr"]) for c in ranked.warm_start(3)]
    picks = {
        "recommender": [(r.optimizer, r.hyperparameters["lr"]) for r in ranked[:3]],
        "rules_only": [(r.optimizer, r.hyperparameters["lr"]) for r in rules_only.rank(t, top=3, candidates=swept)],
    }
    answers = model.best_lrs(t, [o for o in swept if o in model.optimizers])
    by_regret = sorted(answers, key=lambda o: (answers[o].regret, o))[:3]
    picks["model_only"] = [(o, answers[o].lr) for o in by_regret]
    best = g.best_optimizer
    for name, top in picks.items():
        looked = [g.lookup(o, lr) for o, lr in top]
        out[name] = {
            "top1": looked[0][0], "top1_raw": looked[0][1], "top3": min(x[0] for x in looked[:3]),
            "tuned": g.tuned(top[0][0])[0], "best_in_top3": float(best in [o for o, _ in top[:3]]),
            "picks": [[o, float(f"{lr:.3g}")] for o, lr in top],
        }
    # what a warm-started study runs first (the first pick with its lr bracket), against the
    # ranking's first three optimizers at their own lrs
    out["recommender"]["top3_ranked"] = out["recommender"]["top3"]
    out["recommender"]["top3"] = min(g.lookup(o, lr)[0] for o, lr in warm)
    out["recommender"]["warm_start"] = [[o, float(f"{lr:.3g}")] for o, lr in warm]
    # every optimizer at the lr the recommender suggests for it (what a user who picks it gets)
    out["recommender"]["by_optimizer"] = {
        r.optimizer: [g.lookup(r.optimizer, r.hyperparameters["lr"])[0], g.tuned(r.optimizer)[0]] for r in ranked}
    return out


def _fixed(g: TaskGrid, hindsight: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (opt, lr) in FIXED.items():
        if opt in g.curves or opt in g.baselines:
            norm, raw = g.lookup(opt, lr)
            out[name] = {"top1": norm, "top1_raw": raw, "tuned": g.tuned(opt)[0]}
    if "adamw" in g.curves:
        norm, raw = g.tuned("adamw")
        out["tuned_adamw"] = {"top1": norm, "top1_raw": raw, "tuned": norm}
    out.update(_fixed_pair(g, hindsight, "hindsight"))
    return out


def _fixed_pair(g: TaskGrid, chosen: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The chosen single configuration and trio, looked up on one task."""
    o, lr = chosen["single"]
    norm, raw = g.lookup(o, lr)
    trio = [g.lookup(o, lr) for o, lr in chosen["trio"]]
    return {f"{prefix}_single": {"top1": norm, "top1_raw": raw, "tuned": g.tuned(o)[0],
                                 "picks": [[o, lr]]},
            f"{prefix}_trio": {"top1": trio[0][0], "top1_raw": trio[0][1], "top3": min(x[0] for x in trio),
                               "picks": [list(c) for c in chosen["trio"]]}}


def _hindsight(grids: Mapping[str, TaskGrid]) -> dict[str, Any]:
    """The best single (optimizer, lr) and the best trio over the evaluated tasks (exhaustive)."""
    configs = sorted({(o, round(float(x), 6)) for g in grids.values() for o, c in g.curves.items() for x in c.log_lr})
    configs = [(o, 10**x) for o, x in configs if all(o in g.curves for g in grids.values())]
    names = list(grids)
    M = np.array([[grids[n].lookup(o, lr)[0] for n in names] for o, lr in configs])  # (configs, tasks)
    single = int(np.argmin(M.mean(axis=1)))
    best, trio = math.inf, (single, single, single)
    pairs = list(itertools.combinations(range(len(configs)), 2))
    pair_min = np.minimum(M[[i for i, _ in pairs]], M[[j for _, j in pairs]])
    for c in range(len(configs)):
        scores = np.minimum(pair_min, M[c][None, :]).mean(axis=1)
        p = int(np.argmin(scores))
        if scores[p] < best - 1e-12:
            best, trio = float(scores[p]), (*pairs[p], c)
    ordered = sorted(set(trio), key=lambda i: M[i].mean())
    return {"single": (configs[single][0], float(f"{configs[single][1]:.3g}")),
            "trio": [(configs[i][0], float(f"{configs[i][1]:.3g}")) for i in ordered]}


def _mean(items: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in METRICS:
        vals = [float(i[k]) for i in items if k in i and i[k] is not None and not math.isnan(float(i[k]))]
        if vals:
            out[k] = round(float(np.mean(vals)), 4)
    return out


def _by_optimizer(per_task: Mapping[str, Mapping[str, Any]], families: Sequence[str]) -> dict[str, Any]:
    """Per optimizer: mean normalised regret at the recommender's lr for it, over the held-out
    tasks and per held-out family, and its mean tuned regret (the lr's share is the difference)."""
    out: dict[str, Any] = {}
    names = sorted({o for r in per_task.values() for o in r["recommender"].get("by_optimizer", {})})
    for o in names:
        got = [(r["family"], r["recommender"]["by_optimizer"][o]) for r in per_task.values()
               if o in r["recommender"].get("by_optimizer", {})]
        out[o] = {"as_suggested": round(float(np.mean([v[0] for _, v in got])), 4),
                  "tuned": round(float(np.mean([v[1] for _, v in got])), 4),
                  "per_family": {f: round(float(np.mean([v[0] for g, v in got if g == f])), 4)
                                 for f in families if any(g == f for g, _ in got)}}
    return out


def _mean_of_means(items: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in METRICS:
        vals = [i[k] for i in items if k in i]
        if vals:
            out[k] = round(float(np.mean(vals)), 4)
    return out


def _targets(overall: Mapping[str, Any]) -> dict[str, Any]:
    rec, single, trio, adamw = (overall.get(k, {}) for k in ("recommender", "hindsight_single", "hindsight_trio", "tuned_adamw"))
    rows = {
        "top1_at_most_half_of_hindsight_single": (rec.get("top1"), 0.5 * single.get("top1", math.nan)),
        "top3_at_most_hindsight_trio": (rec.get("top3"), trio.get("top3")),
        "tuned_top1_at_most_tuned_adamw": (rec.get("tuned"), adamw.get("top1")),
    }
    return {k: {"value": v, "target": None if t is None else round(t, 4),
                "met": bool(v is not None and t is not None and v <= t + 1e-12)} for k, (v, t) in rows.items()}


LABELS = {
    "recommender": "recommender", "model_only": "model only", "rules_only": "rules only",
    "adamw_1e-3": "AdamW 1e-3", "adamw_3e-4": "AdamW 3e-4", "schedulefree_adamw_2.5e-3": "SF-AdamW 2.5e-3",
    "prodigy_1.0": "Prodigy 1.0", "tuned_adamw": "AdamW tuned",
    "others_single": "best fixed (other families)", "others_trio": "best trio (other families)",
    "hindsight_single": "best fixed (hindsight)", "hindsight_trio": "best trio (hindsight)",
}


def markdown(result: Mapping[str, Any]) -> str:
    """The results as markdown tables (one per metric; rows: held-out families, then overall)."""
    rows = [*result["families"].items(), ("**overall** (mean over tasks)", result["overall"]),
            ("overall (mean over families)", {"tasks": result["overall"]["tasks"], **result["overall_family_mean"]})]
    strategies = [s for s in LABELS if s in result["overall"]]
    out = []
    d = result["data"]
    out.append(f"{d['tasks']} held-out tasks of {d['families']} families ({d.get('runs', '?')} runs; "
               f"{d['training_tasks']} tasks in the meta-dataset). Hindsight single: "
               f"{result['hindsight']['single'][0]} lr {result['hindsight']['single'][1]:g}; trio: "
               + ", ".join(f"{o} lr {lr:g}" for o, lr in result["hindsight"]["trio"])
               + "." + "".join(f" Missing: {k} ({v})." for k, v in result["missing"].items()))
    for metric, title, cols in (
        ("top1", "Top-1 as suggested: mean normalised regret (0 = task's best grid config, 1 = grid median; lower is better)", strategies),
        ("top3", "Best of the top 3 as suggested (the recommender: the three configurations a warm start runs "
                 "first, the first pick at its lr and half a decade either side): mean normalised regret",
         [s for s in strategies if "top3" in result["overall"][s]]),
        ("top3_ranked", "Best of the ranking's first three optimizers, each at its suggested lr: mean normalised regret",
         [s for s in strategies if "top3_ranked" in result["overall"][s]]),
        ("tuned", "Tuned top-1 (the first pick's optimizer at its best grid lr): mean normalised regret",
         [s for s in ("recommender", "model_only", "rules_only", "tuned_adamw") if s in strategies]),
        ("best_in_top3", "How often the task's best optimizer (tuned) is in the top 3", [s for s in RANKERS if s in strategies]),
        ("top1_raw", "Top-1 as suggested: mean raw regret (best value - value, the family's metric units)", strategies),
    ):
        out.append(f"\n**{title}**\n")
        out.append("| held-out family | tasks | " + " | ".join(LABELS[s] for s in cols) + " |")
        out.append("|---|---:|" + "---:|" * len(cols))
        for name, r in rows:
            cells = [f"{r[s][metric]:.3f}" if s in r and metric in r[s] else "-" for s in cols]
            out.append(f"| {name} | {r['tasks']} | " + " | ".join(cells) + " |")
    if result.get("lr_as_suggested"):
        out.append("\n**Each optimizer at the lr the recommender suggests for it: mean normalised regret over the "
                   "held-out tasks** (what a user who picks that optimizer gets)\n")
        out.append("| optimizer | as suggested | tuned (its best grid lr) |")
        out.append("|---|---:|---:|")
        for o, v in result["lr_as_suggested"].items():
            out.append(f"| {o} | {v['as_suggested']:.3f} | {v['tuned']:.3f} |")
    out.append("\n**Targets**\n")
    for k, v in result["targets"].items():
        out.append(f"- {k}: {v['value']} vs {v['target']} -> {'met' if v['met'] else 'MISSED'}")
    return "\n".join(out)


__all__ = ["CAP", "FIXED", "evaluate", "markdown", "traits_of"]
