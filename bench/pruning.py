"""Comparison 3: epochs trained and best value with pruning vs without, per task.

autoopt with its default Hyperband pruner against the same study (same space, TPE, seed, trial
budget, workers) with pruning off. The Hyperband studies are time-to-target's, reused seed for
seed. Ray Tune + ASHA and plain Optuna (no pruning) from time-to-target are listed alongside.
Target: at least 3x fewer epochs with pruning at the same best value (within 0.5%).
"""

from __future__ import annotations

from typing import Any

from bench.common import Context, fmt, fmt_spread, plt, spread, table, write_json
from bench.reference import run_studies, runs_of, setup, tasks
from bench.systems import LABELS, task_info

SYSTEMS = ["autoopt", "autoopt_noprune"]
ALONGSIDE = ["tune", "optuna"]
SAME_VALUE = 0.005  # "same best value": within 0.5% (relative)


def shortfall(pruned: float, full: float, direction: str) -> float:
    """How much worse (relative, > 0 = worse) the pruned study's best is than the unpruned one's."""
    return ((full - pruned) if direction == "maximize" else (pruned - full)) / abs(full)


def run(ctx: Context) -> dict[str, Any]:
    errors = run_studies(ctx, SYSTEMS)
    out: dict[str, Any] = {"tasks": {}, "errors": errors, "same_value_tolerance": SAME_VALUE}
    for task in tasks(ctx):
        per = {}
        for s in SYSTEMS + ALONGSIDE:
            rs = [r for r in runs_of(ctx, s, task) if r is not None]
            if rs:
                per[s] = {"epochs": [r.epochs for r in rs], "best": [r.best() for r in rs],
                          "wall_s": [r.wall_s for r in rs], "trials": [len(r.events) for r in rs],
                          "pruned": [sum(e.state == "pruned" for e in r.events) for r in rs]}
        pairs = [(a, b) for a, b in zip(runs_of(ctx, "autoopt", task), runs_of(ctx, "autoopt_noprune", task))
                 if a is not None and b is not None and a.epochs and a.best() is not None and b.best() is not None]
        ratios = [b.epochs / a.epochs for a, b in pairs]
        gaps = [shortfall(a.best(), b.best(), a.direction) for a, b in pairs]  # type: ignore[arg-type]
        wall = [b.wall_s / a.wall_s for a, b in pairs]
        med_ratio, med_gap = spread(ratios)["median"], spread(gaps)["median"]
        out["tasks"][task] = {
            "systems": per, "epoch_ratio": ratios, "best_shortfall": gaps, "wall_ratio": wall,
            "epoch_ratio_median": med_ratio, "best_shortfall_median": med_gap,
            "epochs_budget": setup(ctx, task)["n_trials"] * task_info(task, setup(ctx, task)["task_options"])["epochs"],
            "met": None if med_ratio is None else bool(med_ratio >= 3 and med_gap <= SAME_VALUE),
        }
    write_json(ctx.out / "pruning.json", out)
    _plot(ctx, out)
    out["markdown"] = markdown(out)
    return out


def markdown(res: dict[str, Any]) -> str:
    rows, heads = [], []
    for task, t in res["tasks"].items():
        for s, p in t["systems"].items():
            rows.append([task, LABELS.get(s, s), fmt_spread(spread(p["epochs"])), fmt_spread(spread(p["best"]), 4),
                         fmt_spread(spread(p["pruned"])), fmt_spread(spread(p["wall_s"]))])
        verdict = "met" if t["met"] else ("not met" if t["met"] is not None else "-")
        heads.append([task, fmt(t["epoch_ratio_median"], 3), fmt(t["best_shortfall_median"], 3),
                      fmt(spread(t["wall_ratio"])["median"], 3), verdict])
    return "\n".join([
        table(["task", "system", "epochs trained", "best value", "trials pruned", "study wall s"], rows), "",
        "Target: ≥ 3x fewer epochs with pruning at the same best value (shortfall ≤ 0.5%).\n",
        table(["task", "epochs without / with pruning", "best-value shortfall with pruning (relative)",
               "wall without / with", "target"], heads),
        *(["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items())] if res["errors"] else []),
    ])


def _plot(ctx: Context, res: dict[str, Any]) -> None:
    pyplot = plt()
    names = list(res["tasks"])
    if not names:
        return
    fig, axes = pyplot.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, task in zip(axes[0], names):
        t = res["tasks"][task]
        for i, (s, p) in enumerate(t["systems"].items()):
            ax.scatter(p["epochs"], p["best"], label=LABELS.get(s, s), color=f"C{i}")
        ax.set_xlabel("epochs trained (whole study)")
        ax.set_ylabel("best validation value")
        ax.set_title(f"{task}: without/with pruning = {fmt(t['epoch_ratio_median'], 2)}x epochs", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(ctx.out / "pruning.png")
    pyplot.close(fig)
