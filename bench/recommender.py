"""Comparison 5: the recommender. Offline: ``autoopt meta evaluate --zoo`` (leave one zoo task
family out; the recommender against fixed configurations, hindsight baselines and rules only, on
the zoo's dense grids). Online: trials and seconds to the time-to-target target with warm start on
(the recommender's top configurations enqueued first) and off, same seeds (time-to-target's
studies, reused).
"""

from __future__ import annotations

from typing import Any

from bench.common import Context, censored_median, fmt, plt, ratio, table, write_json
from bench.reference import TOLERANCES, run_studies, runs_of, setup, target, tasks
from bench.systems import LABELS

COMMAND = "autoopt meta evaluate --zoo"
STRATEGIES = ("recommender", "rules_only", "model_only", "adamw_1e-3", "hindsight_single")


def run(ctx: Context) -> dict[str, Any]:
    from autoopt.recommend import evaluate, meta

    grids, summary = meta.grids_from(studies=[])
    ev = evaluate.evaluate(grids)
    ev["data"].update(runs=summary["runs"])
    offline = {"zoo": {"command": COMMAND, "result": ev, "markdown": evaluate.markdown(ev)}}
    o = ev["overall"]
    ctx.note(f"  {COMMAND}: recommender top-1 {fmt(o['recommender']['top1'])}, best of 3 {fmt(o['recommender']['top3'])}; "
             f"rules only {fmt(o['rules_only']['top1'])}; AdamW 1e-3 {fmt(o['adamw_1e-3']['top1'])}; "
             f"best fixed (hindsight) {fmt(o['hindsight_single']['top1'])}")
    errors = run_studies(ctx, ["autoopt", "autoopt_ws"])
    online: dict[str, Any] = {}
    for task, tol in [(t, tol) for t in tasks(ctx) for tol in TOLERANCES]:
        tg = target(ctx, task, tol)
        if tg is None:
            continue
        per: dict[str, Any] = {}
        for s in ("autoopt", "autoopt_ws"):
            rs = [r for r in runs_of(ctx, s, task) if r is not None]
            reach = [r.reach(tg["target"]) for r in rs]
            first = [min(r.events, key=lambda e: e.number).value if r.events else None for r in rs]
            per[s] = {"trials": [x[1] for x in reach], "time_s": [x[0] for x in reach], "first_trial": first,
                      "best": [r.best() for r in rs], "warm_started": [r.extra.get("warm_started") for r in rs],
                      "trials_median": censored_median([x[1] for x in reach]),
                      "time_median": censored_median([x[0] for x in reach])}
        online[f"{task} @ {100 * tol:g}%"] = {**tg, "systems": per, "n_trials": setup(ctx, task)["n_trials"],
                        "trials_ratio_cold_warm": ratio(per["autoopt"]["trials_median"], per["autoopt_ws"]["trials_median"]),
                        "time_ratio_cold_warm": ratio(per["autoopt"]["time_median"], per["autoopt_ws"]["time_median"])}
    out = {"offline": offline, "online": online, "errors": errors}
    write_json(ctx.out / "recommender.json", out)
    _plot(ctx, out)
    out["markdown"] = markdown(out)
    return out


def markdown(res: dict[str, Any]) -> str:
    parts = []
    for ev in res["offline"].values():
        parts += [f"`{ev['command']}`\n", ev["markdown"], ""]
    rows = []
    for task, t in res["online"].items():
        for s, p in t["systems"].items():
            rows.append([task, LABELS.get(s, s), fmt(p["trials_median"]), fmt(p["time_median"]),
                         ", ".join(fmt(x, 4) for x in p["first_trial"]), ", ".join(fmt(x, 4) for x in p["best"])])
    parts += ["Warm start vs cold (target: within 1% / 5% of the best known value, as in time to target):\n",
              table(["task", "system", "trials to target (median)", "seconds to target (median)",
                     "first trial's value", "best value"], rows)]
    ratios = []
    for task, t in res["online"].items():
        cold, warm = t["systems"]["autoopt"], t["systems"]["autoopt_ws"]
        if cold["trials_median"] is None and warm["trials_median"] is not None:  # cold never got there
            ratios.append(f"{task}: cold did not reach the target in {t['n_trials']} trials, warm in "
                          f"{fmt(warm['trials_median'])} (trials ≥ {fmt(t['n_trials'] / warm['trials_median'], 2)}x)")
        else:
            ratios.append(f"{task}: trials {fmt(t['trials_ratio_cold_warm'], 2)}x, time {fmt(t['time_ratio_cold_warm'], 2)}x")
    if ratios:
        parts.append("\nCold / warm: " + "; ".join(ratios))
    return "\n".join(parts)


def _plot(ctx: Context, res: dict[str, Any]) -> None:
    pyplot = plt()
    fig, (ax, ax2) = pyplot.subplots(1, 2, figsize=(9, 3.2))
    overall = res["offline"]["zoo"]["result"]["overall"]
    for i, s in enumerate(STRATEGIES):
        ax.bar(i, overall[s].get("top1") or 0, color=f"C{i}")
        if overall[s].get("top3") is not None:
            ax.scatter(i, overall[s]["top3"], marker="^", color="k", zorder=3)
    ax.set_xticks(range(len(STRATEGIES)), STRATEGIES, rotation=30, fontsize=7)
    ax.set_ylabel("top-1 regret as suggested (bars), best of 3 (triangles)")
    names = list(res["online"])
    for k, s in enumerate(("autoopt", "autoopt_ws")):
        ys = [res["online"][t]["systems"][s]["trials_median"] for t in names]
        ax2.bar([j + 0.35 * k for j in range(len(names))], [y if y is not None else 0 for y in ys], 0.35,
                label=LABELS.get(s, s) + " (0 = not reached)")
    ax2.set_xticks([j + 0.17 for j in range(len(names))], names)
    ax2.set_ylabel("trials to target (median)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.out / "recommender.png")
    pyplot.close(fig)
