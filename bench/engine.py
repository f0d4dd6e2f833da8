"""Issue #13's engine targets, measured side by side in one run.

* 100 trivial trials (``bench.trivial:TrivialTask``), 2 workers, MLflow on, against plain Optuna
  (2 spawned processes sharing one storage, no MLflow): wall-time ratio, on SQLite and PostgreSQL.
  Target: at most 1.25x.
* 1-second trials (``bench.trivial:SleepTask``, at least 48), 2 workers, SQLite, MLflow on:
  overhead = 1 - (training seconds / workers) / wall. Target: under 5%. Run with a new
  coordinator, with a kept one while the previous study's report is drawn in this process, and
  with a kept one after it.
* 1000 trivial trials, 2 workers, SQLite, MLflow on: per-trial cost of the last 100 trials
  against the first 100 (from the trials' completion times), next to plain Optuna in memory and
  on SQLite (one process, the same task, space and sampler). Target: within 20%.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from bench.common import Context, fmt, ratio, table, write_json
from bench.overhead import SLEEP, TRIVIAL, _one, rates
from bench.systems import build_sampler, build_space


def _per_trial(ends: list[float], window: int = 100) -> dict[str, float | None]:
    """Seconds per trial over the first and the last ``window`` completions."""
    ends = sorted(ends)
    if len(ends) < 2 * window:
        return {"first_s": None, "last_s": None, "ratio": None}
    first = (ends[window - 1] - ends[0]) / (window - 1)
    last = (ends[-1] - ends[-window]) / (window - 1)
    return {"first_s": first, "last_s": last, "ratio": ratio(last, first)}


def long_study(ctx: Context, n: int, storage: str) -> dict[str, Any]:
    """autoopt's ``n``-trivial-trial study (2 workers, MLflow on): its rates and per-trial cost over
    the first and last 100. It starts once the reports of the studies before it are drawn: a report
    still drawn in the background slows the first 100 trials, which flatters the last/first ratio."""
    from autoopt.tracking import wait_for_reports

    wait_for_reports()
    r = _one(ctx, "autoopt", TRIVIAL, {}, n, 2, storage)
    return {**rates(r), **_per_trial([e.t_end for e in r.events])}


def _optuna_loop(storage: Any, n: int) -> dict[str, Any]:
    """Plain Optuna, one process, the trivial task through autoopt's train loop: completion times."""
    import optuna
    import torch

    from autoopt.task import load_task
    from autoopt.train import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    task = load_task(TRIVIAL)
    sp = build_space(TRIVIAL, {}, {})
    study = optuna.create_study(storage=storage, study_name=f"bench-engine-{uuid.uuid4().hex[:6]}",
                                direction=task.direction, sampler=build_sampler("tpe", 0, sp))
    ends: list[float] = []
    t0 = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        out = train(task, sp.sample(trial), seed=trial.number)
        if out.value is None:
            raise RuntimeError(out.reason)
        return out.value

    def done(study: optuna.Study, trial: Any) -> None:
        ends.append(time.perf_counter() - t0)

    study.optimize(objective, n_trials=n, catch=(RuntimeError,), callbacks=[done])
    return {"wall_s": time.perf_counter() - t0, "trials": n, **_per_trial(ends)}


def run(ctx: Context) -> dict[str, Any]:
    # quick mode: smaller studies (the targets need the full mode: 100, 1000 and 48 trials)
    n_short = ctx.trials or (30 if ctx.quick else 100)
    n_long = 300 if ctx.quick else 1000
    n_sleep = 24 if ctx.quick else 48
    load = {"loadavg_start": os.getloadavg()}
    res: dict[str, Any] = {"n_short": n_short, "n_long": n_long, "n_sleep": n_sleep, "load": load, "pairs": []}
    for storage in ("sqlite", "postgresql"):
        pair: dict[str, Any] = {"storage": storage}
        for system in ("autoopt", "optuna"):
            try:
                r = _one(ctx, system, TRIVIAL, {}, n_short, 2, storage)
                pair[system] = rates(r)
            except Exception as exc:  # noqa: BLE001
                pair[system] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        pair["ratio"] = ratio(pair["autoopt"].get("wall_s"), pair["optuna"].get("wall_s"))
        res["pairs"].append(pair)
        ctx.note(f"  engine {storage}: autoopt {fmt(pair['autoopt'].get('wall_s'))} s vs Optuna "
                 f"{fmt(pair['optuna'].get('wall_s'))} s for {n_short} trivial trials: {fmt(pair['ratio'], 2)}x")
    # three times: with a new coordinator process (the first study of a driver,
    # AUTOOPT_REUSE_COORDINATOR=0); with the one the previous study left (a driver's later studies:
    # runner.CoordinatorPool), while that study's plots are still drawn on a thread of this
    # process, as in a notebook that starts its next study at once; and the same once they are done
    from autoopt.tracking import wait_for_reports

    for key, reuse, settle in (("one_second_cold", "0", False), ("one_second", "1", False),
                               ("one_second_reports_done", "1", True)):
        before = os.environ.get("AUTOOPT_REUSE_COORDINATOR")
        os.environ["AUTOOPT_REUSE_COORDINATOR"] = reuse
        if settle:
            waited = time.perf_counter()
            wait_for_reports()
            ctx.note(f"  engine: waited {time.perf_counter() - waited:.1f} s for the previous studies' reports")
        try:
            r = _one(ctx, "autoopt", SLEEP, {"sleep_s": 1.0}, n_sleep, 2, "sqlite")
            busy = sum(e.seconds or 0.0 for e in r.events) / 2
            res[key] = {**rates(r), "ideal_s": busy, "overhead_share": 1 - busy / r.wall_s}
            ctx.note(f"  engine 1-second trials ({key}): wall {r.wall_s:.1f} s, "
                     f"trials {busy:.1f} s per worker: overhead {100 * res[key]['overhead_share']:.1f}%")
        except Exception as exc:  # noqa: BLE001
            res[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            if before is None:
                os.environ.pop("AUTOOPT_REUSE_COORDINATOR", None)
            else:
                os.environ["AUTOOPT_REUSE_COORDINATOR"] = before
    long: dict[str, Any] = {}
    try:
        long["autoopt"] = long_study(ctx, n_long, "sqlite")
    except Exception as exc:  # noqa: BLE001
        long["autoopt"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    from autoopt.storage import open_storage

    long["optuna_memory"] = _optuna_loop(None, n_long)
    long["optuna_sqlite"] = _optuna_loop(open_storage(ctx.sqlite(f"engine-long-{uuid.uuid4().hex[:6]}")), n_long)
    # issue #13: "the same on PostgreSQL": autoopt and plain Optuna each on a PostgreSQL database
    if ctx.postgres():
        try:
            long["autoopt_postgresql"] = long_study(ctx, n_long, "postgresql")
        except Exception as exc:  # noqa: BLE001
            long["autoopt_postgresql"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        long["optuna_postgresql"] = _optuna_loop(open_storage(ctx.postgres()), n_long)
    res["long"] = long
    for k, v in long.items():
        ctx.note(f"  engine {n_long} trials, {k}: wall {fmt(v.get('wall_s'))} s, per trial first 100 "
                 f"{fmt(v.get('first_s'))} s, last 100 {fmt(v.get('last_s'))} s ({fmt(v.get('ratio'), 2)}x)")
    load["loadavg_end"] = os.getloadavg()
    write_json(ctx.out / "engine.json", res)
    res["markdown"] = markdown(res)
    return res


def markdown(res: dict[str, Any]) -> str:
    rows = []
    for p in res["pairs"]:
        a, o = p["autoopt"], p["optuna"]
        rows.append([p["storage"], a.get("wall_s", a.get("error")), o.get("wall_s", o.get("error")), p["ratio"],
                     a.get("setup_s"), a.get("teardown_s"), a.get("overhead_per_trial_s"),
                     "yes" if p["ratio"] is not None and p["ratio"] <= 1.25 else "no"])
    parts = [f"{res['n_short']} trivial trials, 2 workers; autoopt with MLflow on, plain Optuna as 2 spawned "
             "processes sharing the storage, no MLflow. Load average "
             f"{'/'.join(f'{x:.1f}' for x in res['load']['loadavg_start'])} at start, "
             f"{'/'.join(f'{x:.1f}' for x in res['load'].get('loadavg_end', ()))} at end.\n",
             table(["storage", "autoopt wall s", "Optuna wall s", "ratio (target ≤ 1.25)", "autoopt setup s",
                    "autoopt teardown s", "autoopt overhead s/trial", "met?"], rows)]
    for key, label in (("one_second_cold", "a new coordinator"),
                       ("one_second", "the coordinator the previous study left, its plots still being drawn"),
                       ("one_second_reports_done", "the coordinator the previous study left, its plots done")):
        o = res.get(key)
        if o is None:
            continue
        if "error" in o:
            parts.append(f"\n1-second trials ({label}): error: {o['error']}\n")
        else:
            parts.append(f"\n1-second trials, {label}: {res['n_sleep']} trials, 2 workers, SQLite, MLflow on: wall "
                         f"{fmt(o['wall_s'])} s, trials {fmt(o['ideal_s'])} s per worker, overhead "
                         f"**{100 * o['overhead_share']:.1f}%** (target < 5%; setup {fmt(o['setup_s'])} s, teardown "
                         f"{fmt(o['teardown_s'])} s, {fmt(o['overhead_per_trial_s'])} s per trial)\n")
    lrows = [[k, v.get("wall_s", v.get("error")), v.get("first_s"), v.get("last_s"), v.get("ratio")]
             for k, v in res["long"].items()]
    parts.append(f"{res['n_long']} trivial trials (autoopt: 2 workers, MLflow on, SQLite unless the row says "
                 "PostgreSQL; Optuna: one process):\n")
    parts.append(table(["system", "wall s", "s/trial, first 100", "s/trial, last 100", "last / first (target ≤ 1.2)"],
                       lrows))
    return "\n".join(parts)


def _plot(ctx: Context, res: dict[str, Any]) -> None:  # the tables say it all
    return None
