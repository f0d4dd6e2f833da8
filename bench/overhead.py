"""Comparison 2: what each system costs per trial when the trial itself costs nothing.

* Throughput: the trivial task (``bench.trivial:TrivialTask``: a 4 -> 1 linear model, one batch,
  one epoch, about a millisecond of training) through autoopt (MLflow on and off), Ray Tune
  (Tuner + OptunaSearch + ASHA, MLflowLoggerCallback) and plain Optuna, over the full default
  search space with TPE, at 1 and 2 workers, on SQLite and PostgreSQL. Trials per second over
  the whole call and over the trial window (first trial start to last trial end), and the
  steady-state overhead per trial = window x workers / trials - mean training time.
* Where the time goes (1 worker, SQLite): the sampler (TPE ask + define-by-run sampling on an
  in-memory study), the storage (the same loop on SQLite), then by difference the Ray dispatch +
  coordinator round trips (autoopt with MLflow off) and the MLflow logging (on minus off).
* 1-second trials (``bench.trivial:SleepTask``, the time is a sleep so the shared cores stay
  free): framework overhead as a share of the study's wall time = 1 - (training seconds /
  workers) / wall.
* Storage choice: 8 plain Optuna processes writing one SQLite file directly vs 8 autoopt workers
  going through the study's coordinator actor: "database is locked" errors and lost trials.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from autoopt.core import record as R
from bench.common import Context, fmt, plt, ratio, table, write_json
from bench.systems import LABELS, SystemRun, build_sampler, build_space, run_autoopt, run_optuna, run_tune

TRIVIAL = "bench.trivial:TrivialTask"
SLEEP = "bench.trivial:SleepTask"
SPACE: dict[str, Any] = {}  # the full default space: a real study's sampler cost
SYSTEMS = ["autoopt", "autoopt_notrack", "tune", "optuna"]


def _one(ctx: Context, system: str, task: str, opts: dict[str, Any], n: int, workers: int, storage: str,
         **kw: Any) -> SystemRun:
    url = ctx.sqlite(f"overhead-{system}") if storage == "sqlite" else ctx.postgres()
    if url is None:
        raise RuntimeError("PostgreSQL unavailable")
    if system in ("autoopt", "autoopt_notrack"):
        return run_autoopt(task, opts, SPACE, seed=0, n_trials=n, workers=workers, storage=url,
                           tracking_uri=ctx.mlflow("overhead") if system == "autoopt" else None, system=system, **kw)
    if system == "tune":  # OptunaSearch keeps its study in this storage, like autoopt and Optuna do
        return run_tune(task, opts, SPACE, seed=0, n_trials=n, workers=workers, workdir=ctx.work,
                        tracking_uri=ctx.mlflow("overhead-tune"), optuna_storage=url)
    return run_optuna(task, opts, SPACE, seed=0, n_trials=n, workers=workers, storage=url)


def rates(r: SystemRun) -> dict[str, Any]:
    """Throughput and per-trial overhead of one run."""
    n = len(r.events)
    first = r.extra.get("first_trial_start_s") or 0.0
    last = max((e.t_end for e in r.events), default=0.0)
    window = last - first
    train_s = sum(e.seconds or 0.0 for e in r.events) / max(n, 1)
    return {
        "trials": n, "failed": sum(e.state == "failed" for e in r.events), "wall_s": r.wall_s,
        "trials_per_s": n / r.wall_s if r.wall_s else None,
        "trials_per_s_window": n / window if window > 0 else None,
        "setup_s": first, "teardown_s": r.wall_s - last, "train_s_mean": train_s,
        "overhead_per_trial_s": (window * r.workers / n - train_s) if n and window > 0 else None,
        "mlflow_in_worker_s": r.extra.get("tracking_s_per_trial"),
    }


def run(ctx: Context) -> dict[str, Any]:
    n = ctx.trials or (12 if ctx.quick else 60)
    plan = [(s, w, "sqlite") for w in (1, 2) for s in SYSTEMS]
    # quick mode: PostgreSQL at 2 workers only, and without Tune (its trials cost ~100x autoopt's)
    pg = ["autoopt", "optuna"] if ctx.quick else ["autoopt", "tune", "optuna"]
    plan += [(s, w, "postgresql") for w in ((2,) if ctx.quick else (1, 2)) for s in pg]
    rows: list[dict[str, Any]] = []
    for system, workers, storage in plan:
        try:
            r = _one(ctx, system, TRIVIAL, {}, n, workers, storage)
            row = {"system": system, "workers": workers, "storage": storage, **rates(r)}
        except Exception as exc:  # noqa: BLE001
            row = {"system": system, "workers": workers, "storage": storage, "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        ctx.note(f"  overhead {system:16s} {storage:10s} x{workers}: " + (
            row.get("error") or f"{fmt(row['trials_per_s'])} trials/s ({fmt(row['trials_per_s_window'])} in window), "
                                f"{fmt(row['overhead_per_trial_s'])} s/trial overhead, setup {fmt(row['setup_s'])} s"))
    result: dict[str, Any] = {"n_trials": n, "rows": rows, "breakdown": breakdown(ctx, rows, n),
                              "one_second": one_second(ctx, 2 * n if ctx.quick else 120,
                                                       systems=("autoopt",) if ctx.quick else ("autoopt", "tune")),
                              "contention": contention(ctx, 8, 10 if ctx.quick else 25)}
    result["throughput_vs_tune"] = {
        f"{st} x{w}": ratio(_get(rows, "autoopt", w, st, "trials_per_s"), _get(rows, "tune", w, st, "trials_per_s"))
        for st in ("sqlite", "postgresql") for w in (1, 2) if _get(rows, "tune", w, st, "trials_per_s")}
    result["throughput_vs_tune_window"] = {
        f"{st} x{w}": ratio(_get(rows, "autoopt", w, st, "trials_per_s_window"),
                            _get(rows, "tune", w, st, "trials_per_s_window"))
        for st in ("sqlite", "postgresql") for w in (1, 2) if _get(rows, "tune", w, st, "trials_per_s_window")}
    write_json(ctx.out / "overhead.json", result)
    _plot(ctx, result)
    result["markdown"] = markdown(result)
    return result


def _get(rows: list[dict[str, Any]], system: str, workers: int, storage: str, key: str) -> Any:
    for r in rows:
        if (r["system"], r["workers"], r["storage"]) == (system, workers, storage):
            return r.get(key)
    return None


# ----------------------------------------------------------------------------------------------
# where the time goes
# ----------------------------------------------------------------------------------------------
def sampler_loop(storage: Any, n: int) -> float:
    """Seconds per trial for ask + define-by-run sampling + tell on ``storage`` (one process)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sp = build_space(TRIVIAL, {}, SPACE)
    study = optuna.create_study(storage=storage, study_name=f"bench-loop-{uuid.uuid4().hex[:6]}",
                                sampler=build_sampler("tpe", 0, sp))
    t0 = time.perf_counter()
    for i in range(n):
        trial = study.ask()
        sp.sample(trial)
        trial.report(1.0, step=1)
        study.tell(trial, float(i % 7))
    return (time.perf_counter() - t0) / n


def breakdown(ctx: Context, rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    from autoopt.storage import open_storage

    sampler = sampler_loop(None, n)
    storage = sampler_loop(open_storage(ctx.sqlite("overhead-loop")), n) - sampler
    off = _get(rows, "autoopt_notrack", 1, "sqlite", "overhead_per_trial_s")
    on = _get(rows, "autoopt", 1, "sqlite", "overhead_per_trial_s")
    dispatch = off - sampler - storage if off is not None else None
    mlflow = on - off if on is not None and off is not None else None
    return {"sampler_s": sampler, "storage_s": storage, "ray_dispatch_coordinator_s": dispatch,
            "mlflow_s": mlflow, "total_s": on}


# ----------------------------------------------------------------------------------------------
# 1-second trials
# ----------------------------------------------------------------------------------------------
def one_second(ctx: Context, n: int, workers: int = 2, systems: tuple[str, ...] = ("autoopt", "tune")) -> dict[str, Any]:
    out: dict[str, Any] = {"n_trials": n, "workers": workers, "trial_s": 1.0}
    for system in systems:
        try:
            r = _one(ctx, system, SLEEP, {"sleep_s": 1.0}, n, workers, "sqlite")
        except Exception as exc:  # noqa: BLE001
            out[system] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        busy = sum(e.seconds or 0.0 for e in r.events) / workers
        rr = rates(r)
        fixed = rr["setup_s"] + rr["teardown_s"]
        per_trial = (r.wall_s - fixed - busy) * workers / max(len(r.events), 1)  # seconds per trial beyond training
        out[system] = {**rr, "ideal_s": busy, "overhead_share": 1 - busy / r.wall_s,
                       "overhead_share_window": 1 - busy / (r.wall_s - fixed), "fixed_s": fixed,
                       "extra_per_trial_s": per_trial,
                       # the same fixed and per-trial costs over a longer study of 1-second trials
                       "projected_share": {str(N): (fixed + N * per_trial / workers) / (fixed + N * (1 + per_trial) / workers)
                                           for N in (100, 1000)}}
        ctx.note(f"  1-second trials {system}: wall {r.wall_s:.1f} s for {busy:.1f} s of trials per worker: "
                 f"overhead {100 * out[system]['overhead_share']:.0f}% of the wall time")
    return out


# ----------------------------------------------------------------------------------------------
# storage choice: many processes on one SQLite file vs one coordinator owning it
# ----------------------------------------------------------------------------------------------
def _hammer(url: str, study: str, n: int, out: str) -> None:
    """A plain Optuna worker on its own connection to the shared SQLite file (Optuna's defaults)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    errors: Counter[str] = Counter()
    done = 0
    t0 = time.time()
    try:
        s = optuna.load_study(study_name=study, storage=url)
    except Exception as exc:  # noqa: BLE001
        errors[_kind(exc)] += 1
        Path(out).write_text(json.dumps({"done": 0, "errors": errors, "seconds": 0}))
        return

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", -5, 5), trial.suggest_float("y", 1e-4, 1.0, log=True)
        trial.suggest_categorical("opt", ["adamw", "sgd", "lion"])
        trial.report(x * x, step=1)
        return x * x + y

    for _ in range(n):
        try:
            s.optimize(objective, n_trials=1)
            t = s.get_trials(deepcopy=False)[-1]
            done += t.state == TrialState.COMPLETE
        except Exception as exc:  # noqa: BLE001 - count and go on, as a user's retry loop would
            errors[_kind(exc)] += 1
    Path(out).write_text(json.dumps({"done": done, "errors": errors, "seconds": time.time() - t0}))


def _kind(exc: BaseException) -> str:
    msg = str(exc)
    return "database is locked" if "database is locked" in msg else f"{type(exc).__name__}: {msg[:80]}"


def contention(ctx: Context, workers: int, per_worker: int) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    n = workers * per_worker
    url = f"sqlite:///{(ctx.work / f'contention-{uuid.uuid4().hex[:6]}.db').resolve()}"
    name = "bench-contention"
    optuna.create_study(study_name=name, storage=url)
    spawn = mp.get_context("spawn")
    outs = [str(ctx.work / f"hammer-{i}.json") for i in range(workers)]
    t0 = time.time()
    procs = [spawn.Process(target=_hammer, args=(url, name, per_worker, o)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.time() - t0
    res = [json.loads(Path(o).read_text()) if Path(o).exists() else {"done": 0, "errors": {"process died": 1}}
           for o in outs]
    errors: Counter[str] = Counter()
    for r in res:
        errors.update(r["errors"])
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    plain = {"trials_asked": n, "complete": states.get("COMPLETE", 0), "stuck_running": states.get("RUNNING", 0),
             "failed": states.get("FAIL", 0), "errors": dict(errors), "wall_s": wall,
             "lost": n - states.get("COMPLETE", 0)}
    ctx.note(f"  contention, plain Optuna x{workers} on one SQLite file: {plain}")
    try:  # the same number of workers through autoopt's coordinator (MLflow off: storage only)
        from autoopt.storage import open_storage

        url_a = f"sqlite:///{(ctx.work / 'contention-autoopt.db').resolve()}"
        r = run_autoopt(TRIVIAL, {}, SPACE, seed=0, n_trials=n, workers=workers, cpus_per_trial=0.5,
                        storage=url_a, tracking_uri=None, system="autoopt_notrack")
        st = Counter(e.state for e in r.events)
        reasons = Counter(str(t.user_attrs.get(R.REASON))[:60] for t in optuna.load_study(
            study_name=r.extra["study"], storage=open_storage(url_a)).get_trials(deepcopy=False)
            if t.state == TrialState.FAIL)
        mine = {"trials_asked": n, "complete": st.get("complete", 0), "pruned": st.get("pruned", 0),
                "failed": st.get("failed", 0), "lost": n - st.get("complete", 0) - st.get("pruned", 0),
                "wall_s": r.wall_s, "errors": dict(reasons)}
    except Exception as exc:  # noqa: BLE001
        mine = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    ctx.note(f"  contention, autoopt x{workers} through the coordinator: {mine}")
    return {"workers": workers, "trials": n, "plain_optuna": plain, "autoopt": mine,
            "note": "plain Optuna trials finish in microseconds (worst case for lock contention)"}


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def markdown(res: dict[str, Any]) -> str:
    rows = []
    for r in res["rows"]:
        if "error" in r:
            rows.append([LABELS.get(r["system"], r["system"]), r["storage"], r["workers"], f"error: {r['error']}",
                         "", "", "", "", "", ""])
            continue
        rows.append([LABELS.get(r["system"], r["system"]), r["storage"], r["workers"], r["trials_per_s"],
                     r["trials_per_s_window"], r["overhead_per_trial_s"], r.get("mlflow_in_worker_s"), r["setup_s"],
                     r["teardown_s"], f"{r['trials']} ({r['failed']} failed)"])
    parts = [f"Trivial objective, {res['n_trials']} trials per run, full default space, TPE.\n",
             table(["system", "storage", "workers", "trials/s (whole call)", "trials/s (trial window)",
                    "overhead s/trial (steady state)", "MLflow s/trial in worker", "setup s", "teardown s",
                    "trials"], rows)]
    tv, tw = res["throughput_vs_tune"], res["throughput_vs_tune_window"]
    if tv:
        parts.append("\nThroughput autoopt / Ray Tune (whole call): "
                     + ", ".join(f"{k}: {fmt(v, 2)}x" for k, v in tv.items())
                     + "; trial window: " + ", ".join(f"{k}: {fmt(v, 2)}x" for k, v in tw.items()) + "\n")
    b = res["breakdown"]
    parts.append("Overhead per trial, autoopt, 1 worker, SQLite (seconds): "
                 + ", ".join(f"{k.removesuffix('_s')} {fmt(v)}" for k, v in b.items()) + "\n")
    o = res["one_second"]
    orows = [[LABELS.get(s, s), o[s].get("wall_s"), o[s].get("ideal_s"), o[s].get("overhead_share"),
              o[s].get("overhead_share_window"), o[s].get("setup_s"), o[s].get("teardown_s"),
              o[s].get("extra_per_trial_s"), o[s]["projected_share"]["100"], o[s]["projected_share"]["1000"]]
             for s in ("autoopt", "tune") if s in o and "error" not in o[s]]
    parts.append(f"1-second trials: {o['n_trials']} trials, {o['workers']} workers, SQLite, MLflow on.\n")
    parts.append(table(["system", "wall s", "trial s per worker", "overhead share of wall",
                        "share in trial window", "setup s", "teardown s", "extra s per trial",
                        "projected share, 100 trials", "projected share, 1000 trials"], orows))
    c = res["contention"]
    p, a = c["plain_optuna"], c["autoopt"]
    parts.append(f"\nStorage choice: {c['workers']} workers, {c['trials']} trials on one SQLite file.\n")
    parts.append(table(["setup", "complete", "lost (asked - complete)", "stuck RUNNING", "errors", "wall s"], [
        [f"plain Optuna, {c['workers']} processes, direct", p["complete"], p["lost"], p["stuck_running"],
         json.dumps(p["errors"]) if p["errors"] else "none", p["wall_s"]],
        [f"autoopt, {c['workers']} Ray workers via coordinator", a.get("complete", 0) + a.get("pruned", 0),
         a.get("lost"), 0, json.dumps(a.get("errors")) if a.get("errors") else a.get("error", "none"), a.get("wall_s")],
    ]))
    return "\n".join(parts)


def _plot(ctx: Context, res: dict[str, Any]) -> None:
    pyplot = plt()
    fig, (ax, ax2) = pyplot.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [3, 1.2]})
    groups = sorted({(r["storage"], r["workers"]) for r in res["rows"]}, key=lambda g: (g[0] != "sqlite", g[1]))
    width = 0.8 / len(SYSTEMS)
    for i, s in enumerate(SYSTEMS):
        ys = [_get(res["rows"], s, w, st, "trials_per_s") or 0 for st, w in groups]
        ax.bar([j + i * width for j in range(len(groups))], ys, width, label=LABELS.get(s, s))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], [f"{st}\n{w} worker(s)" for st, w in groups])
    ax.set_yscale("log")
    ax.set_ylabel("trials / second (whole call, log)")
    ax.set_title(f"trivial objective, {res['n_trials']} trials")
    ax.legend(fontsize=7)
    b = res["breakdown"]
    parts = [("sampler", b["sampler_s"]), ("storage", b["storage_s"]),
             ("Ray + coordinator", b["ray_dispatch_coordinator_s"]), ("MLflow", b["mlflow_s"])]
    bottom = 0.0
    for label, v in parts:
        v = max(v or 0.0, 0.0)
        ax2.bar([0], [v], bottom=bottom, label=label)
        bottom += v
    ax2.set_xticks([0], ["autoopt\n1 worker"])
    ax2.set_ylabel("seconds per trial")
    ax2.set_title("where the time goes")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.out / "overhead.png")
    pyplot.close(fig)
