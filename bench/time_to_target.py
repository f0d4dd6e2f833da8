"""Comparison 1: wall time and trials until each system first reaches a target validation metric.

Target per task: within 1% (and, reported too, 5%) of the best value any system found on that task
in this run ("best known"; ``bench.reference.TOLERANCES``). All systems: same task code (autoopt.train.train), same search space
(the reference spec's, sampled by the same SearchSpace and TPE settings), same trial budget, same
worker count, same seeds. The clock starts at each system's entry call (autoopt.run,
Tuner.fit, the Optuna processes' start) with Ray already running, and stops when the first trial
reaching the target finishes. Systems run interleaved (the order rotates per task and seed).
"""

from __future__ import annotations

import math
from typing import Any

from bench.common import Context, censored_median, fmt, fmt_spread, plt, ratio, spread, table, write_json
from bench.reference import TARGET_SYSTEMS as SYSTEMS
from bench.reference import TOLERANCES, run_studies, runs_of, setup, target, tasks
from bench.systems import LABELS


def run(ctx: Context) -> dict[str, Any]:
    errors = run_studies(ctx, SYSTEMS)
    result = analyze(ctx, errors)
    write_json(ctx.out / "time_to_target.json", result)
    _plot(ctx, result)
    result["markdown"] = markdown(result)
    return result


def reach_stats(runs: list, tgt: float) -> dict[str, Any] | None:
    """Time, trials and epochs to ``tgt`` per seed (None: not reached), medians and spreads."""
    times, trials, epochs, walls, values = [], [], [], [], []
    for r in runs:
        if r is None:
            continue
        t, n, e = r.reach(tgt)
        times.append(t)
        trials.append(n)
        epochs.append(e)
        walls.append(r.wall_s)
        values.append(r.best())
    if not walls:
        return None
    return {
        "time_s": times, "trials": trials, "epochs": epochs, "wall_s": walls, "best": values,
        "reached": sum(t is not None for t in times), "runs": len(walls),
        "time_median": censored_median(times), "trials_median": censored_median(trials),
        "epochs_median": censored_median(epochs),
        "time_spread": spread(times), "trials_spread": spread(trials), "wall_spread": spread(walls),
        "best_spread": spread(values), "epochs_total": spread([r.epochs for r in runs if r]),
        "curves": [_curve(r) for r in runs if r],
    }


def analyze(ctx: Context, errors: dict[str, str]) -> dict[str, Any]:
    """One entry per task and tolerance (keys ``task`` for the first tolerance, ``task @ 5%`` ...)."""
    out: dict[str, Any] = {"tolerances": list(TOLERANCES), "workers": ctx.workers, "seeds": ctx.seeds,
                           "tasks": {}, "errors": errors}
    for task in tasks(ctx):
        for i, tol in enumerate(TOLERANCES):
            tg = target(ctx, task, tol)
            if tg is None:
                continue
            per = {s: st for s in SYSTEMS if (st := reach_stats(runs_of(ctx, s, task), tg["target"])) is not None}
            ratios = {}
            for other in ("tune", "optuna", "random", "autoopt_ws"):
                if other in per and "autoopt" in per:
                    ratios[other] = _paired(per[other], per["autoopt"])
            key = task if i == 0 else f"{task} @ {100 * tol:g}%"
            out["tasks"][key] = {**tg, "n_trials": setup(ctx, task)["n_trials"], "systems": per,
                                 "ratios_vs_autoopt": ratios}
    return out


def _paired(other: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """Per-seed ratio other/autoopt of time to target. A system that never reached the target
    counts with its whole wall time, and the ratio is then a lower bound (flagged)."""
    rs, lower = [], []
    for t_o, w_o, t_m in zip(other["time_s"], other["wall_s"], mine["time_s"]):
        if t_m is None:
            rs.append(None)
            lower.append(False)
            continue
        rs.append((t_o if t_o is not None else w_o) / t_m)
        lower.append(t_o is None)
    med = ratio(other["time_median"], mine["time_median"])
    return {"per_seed": rs, "lower_bound": lower, "median_of_ratios": spread(rs)["median"], "ratio_of_medians": med}


def _curve(r) -> list[tuple[float, float]]:
    best, pts = None, []
    for e in sorted(r.events, key=lambda e: e.t_end):
        if e.value is None or not math.isfinite(e.value):
            continue
        if best is None or (e.value > best if r.direction == "maximize" else e.value < best):
            best = e.value
            pts.append((e.t_end, best))
    return pts


def markdown(res: dict[str, Any]) -> str:
    parts = []
    for task, t in res["tasks"].items():
        rows = []
        for s, p in t["systems"].items():
            rows.append([LABELS.get(s, s), f"{p['reached']}/{p['runs']}", fmt(p["time_median"]),
                         fmt_spread(p["time_spread"]), fmt(p["trials_median"]), fmt(p["epochs_median"]),
                         fmt_spread(p["wall_spread"]), fmt_spread(p["best_spread"], 4)])
        parts.append(f"**{task}** ({t['direction']}, best known {fmt(t['best_known'], 4)}, target "
                     f"{fmt(t['target'], 4)} = within {100 * t.get('tolerance', 0.01):g}%, "
                     f"{t['n_trials']} trials per study)\n")
        parts.append(table(["system", "reached", "time to target s (median)", "time s (min-max of reached)",
                            "trials to target", "epochs to target", "study wall s", "best value"], rows))
        rt = t["ratios_vs_autoopt"]
        if rt:
            bits = []
            for k, v in rt.items():
                per = ", ".join(("≥" if lb else "") + fmt(x, 2) for x, lb in zip(v["per_seed"], v["lower_bound"])
                                if x is not None)
                bits.append(f"{LABELS.get(k, k)} / autoopt: {fmt(v['ratio_of_medians'], 2)} (per seed: {per or '-'})")
            parts.append("\nTime-to-target ratio, " + "; ".join(bits) + "\n")
    if res["errors"]:
        parts.append("Errors: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items()))
    return "\n".join(parts)


def _plot(ctx: Context, res: dict[str, Any]) -> None:
    pyplot = plt()
    names = list(res["tasks"])
    if not names:
        return
    fig, axes = pyplot.subplots(2, len(names), figsize=(3.6 * len(names), 5.6), squeeze=False)
    colors = dict(zip(SYSTEMS, ["C0", "C9", "C3", "C2", "C7"]))
    for j, task in enumerate(names):
        t = res["tasks"][task]
        ax = axes[0][j]
        for i, (s, p) in enumerate(t["systems"].items()):
            wall_max = max(p["wall_s"])
            xs = [i] * len(p["time_s"])
            ys = [v if v is not None else wall_max for v in p["time_s"]]
            marks = ["o" if v is not None else "x" for v in p["time_s"]]
            for x, y, m in zip(xs, ys, marks):
                ax.scatter([x], [y], marker=m, color=colors.get(s, "k"))
            if p["time_median"] is not None:
                ax.hlines(p["time_median"], i - 0.3, i + 0.3, color=colors.get(s, "k"))
        ax.set_xticks(range(len(t["systems"])), [s.replace("_", "\n") for s in t["systems"]], fontsize=7)
        ax.set_ylabel("seconds to target")
        ax.set_title(f"{task}: time to target (x = not reached)", fontsize=8)
        ax = axes[1][j]
        for s, p in t["systems"].items():
            if p["curves"] and p["curves"][0]:
                xs, ys = zip(*p["curves"][0])  # best so far, drawn on to the end of the study
                ax.step([*xs, p["wall_s"][0]], [*ys, ys[-1]], where="post", color=colors.get(s, "k"), label=s,
                        marker="o", ms=2, markevery=list(range(len(xs))))
        ax.axhline(t["target"], color="k", ls=":", lw=0.8)
        ax.set_xlabel("seconds (seed %d)" % res["seeds"][0])
        ax.set_ylabel("best so far")
        if t["direction"] == "minimize":
            ax.set_ylim(t["best_known"] * 0.95, t["best_known"] * 1.6)
        else:
            ax.set_ylim(t["best_known"] - 0.15 * abs(t["best_known"]), t["best_known"] * 1.01)
        if j == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(ctx.out / "time_to_target.png")
    pyplot.close(fig)
