"""Comparison 5: the recommender. Offline: regret of its top-1 optimizer and top-3 hit rate from
``autoopt meta evaluate`` (leave one task out and leave one study out) against rules only and AdamW
at its defaults. Online: trials and seconds to the time-to-target target with warm start on
(the recommender's top configurations enqueued first) and off, same seeds (time-to-target's
studies, reused).

Quick mode evaluates without ``--measure`` (training each strategy's top-1 configuration adds
about a minute per holdout on 2 cores); the full mode measures.
"""

from __future__ import annotations

from typing import Any

from bench.common import REPO, Context, censored_median, fmt, plt, ratio, table, write_json
from bench.reference import TOLERANCES, run_studies, runs_of, setup, target, tasks
from bench.systems import LABELS

DATA = REPO / "autoopt" / "recommend" / "data" / "meta_dataset.csv"
STRATEGIES = ("recommender", "rules_only", "model_only", "adamw_default")


def command(holdout: str, measure: bool) -> str:
    return (f"autoopt meta evaluate --data {DATA.relative_to(REPO)} --holdout {holdout}"
            + (" --measure" if measure else ""))


def run(ctx: Context) -> dict[str, Any]:
    from autoopt.recommend import meta

    measure = not ctx.quick
    offline = {}
    for holdout in ("task", "study"):
        ev = meta.evaluate([DATA], holdout=holdout, measure=measure)
        offline[holdout] = {"command": command(holdout, measure), "overall": ev["overall"], "tasks": ev["tasks"],
                            "rows": ev["rows"], "method": ev["method"]}
        o = ev["overall"]
        ctx.note(f"  meta evaluate --holdout {holdout}: recommender regret {fmt(o['recommender']['regret'])}, "
                 f"top3 {fmt(o['recommender']['top3'])}; rules only {fmt(o['rules_only']['regret'])}; "
                 f"AdamW defaults {fmt(o['adamw_default']['regret'])}")
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
    out = {"offline": offline, "online": online, "errors": errors, "measured": measure}
    write_json(ctx.out / "recommender.json", out)
    _plot(ctx, out)
    out["markdown"] = markdown(out)
    return out


def markdown(res: dict[str, Any]) -> str:
    parts = []
    for holdout, ev in res["offline"].items():
        rows = []
        for s in STRATEGIES:
            o = ev["overall"][s]
            rows.append([s, o.get("n"), o.get("regret"), o.get("regret_at_defaults"), o.get("top3"), o.get("top1"),
                         o.get("measured_regret")])
        parts += [f"`{ev['command']}` ({ev['rows']} rows, {ev['overall']['studies']} studies)\n",
                  table(["strategy", "studies", "top-1 regret", "regret at defaults", "top-3 hit rate", "top-1 hit rate",
                         "measured regret (trained top-1)"], rows), ""]
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
    width = 0.2
    for i, s in enumerate(STRATEGIES):
        for j, holdout in enumerate(res["offline"]):
            o = res["offline"][holdout]["overall"][s]
            ax.bar(j + i * width, o.get("regret") or 0, width, color=f"C{i}", label=s if j == 0 else None)
            if o.get("top3") is not None:
                ax.scatter(j + i * width, o["top3"], marker="^", color="k", zorder=3)
    ax.set_xticks([j + 1.5 * width for j in range(len(res["offline"]))],
                  [f"leave one {h} out" for h in res["offline"]])
    ax.set_ylabel("top-1 regret (bars), top-3 hit rate (triangles)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
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
