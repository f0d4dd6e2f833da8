"""The fair race (issue #13) and the pruning measurement, in resumable pieces.

``python -m bench.race run --out bench/results/race [--part race|pruning|all] [--seeds 5]``
runs every (system, task, seed) study not yet on disk, one JSON file each
(``<out>/<part>/<system>__<task>__<seed>.json``, written as soon as the study ends, with the
UTC start time and the load average before and after), so an interrupted run resumes where it
stopped. ``python -m bench.race report --out bench/results/race`` turns the files into the
tables of docs/benchmarks.md (``<out>/race.md``).

All studies of one invocation run in its driver process on one Ray, so autoopt's trial workers
stay warm from study to study while each Tune ``fit`` starts new actors. The ``*_fresh`` arms
(``FRESH_SYSTEMS``) run each study in a driver process of its own instead (``python -m bench.race
study``, started by ``run``), as ``autoopt run`` or a new Tune script would: everything starts cold.

The race pairs each autoopt pruner with its counterpart in the other systems, same settings:

* autoopt ``successive_halving`` (Optuna's asynchronous SH) -- Tune ``ASHAScheduler`` -- plain
  Optuna ``SuccessiveHalvingPruner``; ``min_resource``/``grace_period`` 1, reduction factor 3,
  ``max_t`` the task's epochs;
* autoopt ``hyperband`` (Optuna's HyperbandPruner: asynchronous SH brackets) -- Tune
  ``AsyncHyperBandScheduler(brackets=n)`` with Optuna's bracket count -- plain Optuna
  ``HyperbandPruner``. Tune's synchronous ``HyperBandScheduler`` pauses trials and resumes them
  from checkpoints; the shared training loop has no mid-trial checkpoint, so a paused Tune trial
  would restart from epoch 0 -- unfair to Tune, so the asynchronous variant is the match.

Tune runs as an expert would: ``reuse_actors=True``, Tune's CSV/JSON/TensorBoard loggers off, no
MLflow, OptunaSearch over the same define-by-run space with the same TPE sampler and seed.
autoopt runs with MLflow off too (same work). Plain Optuna: one process, ``n_jobs=workers``
threads on one in-memory study, one TPE sampler with the same seed, the same pruner.
Every trial trains through ``autoopt.train.train`` with seed = study seed + trial number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, censored_median, fmt, fmt_interval, fmt_spread, median_interval, spread, table

#: race tasks: reference task, options, trials per study. cv-big: the digits CNN at 4x data and a
#: wider net, about 2 s per epoch on one core of this machine (the "not a toy" task).
RACE_TASKS: dict[str, dict[str, Any]] = {
    "tabular": {"task": "tabular", "task_options": {"epochs": 9}, "n_trials": 16},
    "cv": {"task": "cv", "task_options": {"epochs": 9}, "n_trials": 16},
    "cv-big": {"task": "cv", "task_options": {"epochs": 6, "size": 4}, "n_trials": 10},
}
#: pruning tasks: 20 epochs per trial (the issue asks for 20+)
PRUNE_TASKS: dict[str, dict[str, Any]] = {
    "tabular20": {"task": "tabular", "task_options": {"epochs": 20}, "n_trials": 30},
    "cv20": {"task": "cv", "task_options": {"epochs": 20, "size": 0.5}, "n_trials": 24},
}
#: race systems: (runner, pruner) -- paired by pruner
RACE_SYSTEMS = {
    "autoopt_sh": ("autoopt", "successive_halving"),
    "tune_asha": ("tune", "successive_halving"),
    "optuna_sh": ("optuna", "successive_halving"),
    # plain Optuna with autoopt's `asha` pruner object (Tune's rung rule), the `autoopt_asha` pairing
    "optuna_asha": ("optuna", "asha"),
    "autoopt_hb": ("autoopt", "hyperband"),
    "tune_ahb": ("tune", "hyperband"),
    "optuna_hb": ("optuna", "hyperband"),
    # successive halving with Tune's ASHA rung rule (autoopt's `asha`), in the successive-halving pairing
    "autoopt_asha": ("autoopt", "asha"),
    # the same with the recommender's warm start on (its first pick at its lr and half a decade
    # either side run first): autoopt as a user who turns it on runs it; Tune has no counterpart
    "autoopt_asha_warm": ("autoopt", "asha"),
    # no pruning at all: what a cheap, noisy task gives up to successive halving
    "autoopt_none": ("autoopt", "none"),
}
#: race systems that start from the recommender's suggestions
WARM_SYSTEMS = {"autoopt_asha_warm"}
#: the same systems with each study in a driver process of its own, as a user's `autoopt run` or
#: a new Tune script starts: a new Ray job, so its trial workers, actors, imports and data start
#: cold (the other arms run every study in one driver, where autoopt's trial workers stay warm
#: from the untimed warm-up and the earlier studies while each `Tuner.fit` starts new actors)
FRESH_SYSTEMS = {"autoopt_asha_fresh": "autoopt_asha", "tune_asha_fresh": "tune_asha",
                 "autoopt_asha_warm_fresh": "autoopt_asha_warm", "autoopt_none_fresh": "autoopt_none",
                 # plain Optuna as a new script runs it: its clock starts before it imports torch
                 # and loads the data, as autoopt's driver and new workers do under theirs
                 "optuna_asha_fresh": "optuna_asha"}
#: pruning variants, all through plain Optuna (the pruner objects autoopt's make_pruner builds)
PRUNE_SYSTEMS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "hyperband": ("hyperband", {}),
    "sh": ("successive_halving", {"reduction_factor": 3}),
    "sh_rf4": ("successive_halving", {"reduction_factor": 4}),
    "asha": ("asha", {"reduction_factor": 3}),  # the same rungs as sh, Tune's rule for who goes on
    "asha_rf4": ("asha", {"reduction_factor": 4}),
    "learning_curve": ("learning_curve", {}),
    "lc_q50": ("learning_curve", {"quantile": 0.5}),
    # the learning-curve pruner matching, besides its own, the finished curves of one earlier
    # unpruned study of the same task (seed 99, `pruning-history/`): what `similar_tasks: true`
    # hands it from the meta-dataset once a user has run a similar study
    "lc_similar": ("learning_curve", {"similar_tasks": True}),
    "lc_similar_q50": ("learning_curve", {"similar_tasks": True, "quantile": 0.5}),
}
#: the earlier study whose curves lc_similar starts from (another seed: other configurations)
HISTORY_SEED = 99
MIN_RESOURCE, REDUCTION = 1, 3
#: the race's rungs, spelled out (the default successive_halving has since become reduction factor 4)
RUNG_OPTIONS = {"successive_halving": {"min_resource": MIN_RESOURCE, "reduction_factor": REDUCTION},
                "asha": {"min_resource": MIN_RESOURCE, "reduction_factor": REDUCTION},
                "hyperband": {"min_resource": MIN_RESOURCE, "reduction_factor": REDUCTION},
                "none": {}}
SAME_VALUE = 0.005
TRIALS_OVERRIDE: int | None = None  # smoke tests only


def _load() -> dict[str, Any]:
    return {"loadavg": os.getloadavg(), "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def _space(task: str) -> dict[str, Any]:
    from autoopt.spec import StudySpec

    spec = StudySpec.from_yaml(REPO / "studies" / f"{task}.yaml")
    return spec.space.model_dump(mode="json", exclude_defaults=True)


def _n_brackets(max_t: int) -> int:
    """Optuna HyperbandPruner's bracket count for min_resource 1, reduction factor 3."""
    return math.floor(math.log(max_t / MIN_RESOURCE, REDUCTION)) + 1


# ----------------------------------------------------------------------------------------------
# the systems
# ----------------------------------------------------------------------------------------------
def run_tune_fair(task: str, task_options: dict[str, Any], space: dict[str, Any], *, seed: int, n_trials: int,
                  workers: int, workdir: Path, pruner: str, tracking_uri: str | None = None):
    """Tune as an expert runs it: reused actors, its loggers off, OptunaSearch over the same space,
    sampler and seed, and the scheduler matching ``pruner`` (``none``: FIFO, Tune's default).
    ``tracking_uri``: log to MLflow with Ray's ``MLflowLoggerCallback``, as a Tune user would.
    ``extra["first_trial_start_s"]``: when Tune started its first trial, from the call."""
    import uuid

    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler
    from ray.tune.search.optuna import OptunaSearch

    from bench.systems import DefineByRun, SystemRun, TrialEvent, build_sampler, build_space, task_info, tune_trainable

    info = task_info(task, task_options)
    sp = build_space(task, task_options, space)
    name = f"race-tune-{seed}-{uuid.uuid4().hex[:6]}"
    mode = info["direction"][:3]
    searcher = OptunaSearch(space=DefineByRun(sp, task, task_options, seed), metric="val_metric", mode=mode,
                            sampler=build_sampler("tpe", seed, sp), study_name=name)
    sched, described = None, "FIFOScheduler"
    if pruner != "none":
        brackets = 1 if pruner == "successive_halving" else _n_brackets(info["epochs"])
        # ASHAScheduler is AsyncHyperBandScheduler; brackets=1 is plain ASHA
        sched = AsyncHyperBandScheduler(metric="val_metric", mode=mode, max_t=info["epochs"],
                                        grace_period=MIN_RESOURCE, reduction_factor=REDUCTION, brackets=brackets)
        described = f"AsyncHyperBandScheduler(brackets={brackets})"
    callbacks: list[Any] = []
    if tracking_uri:
        from mlflow.tracking import MlflowClient
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        MlflowClient(tracking_uri=tracking_uri).create_experiment(
            name, artifact_location=(workdir / "mlartifacts" / name).resolve().as_uri())
        callbacks.append(MLflowLoggerCallback(tracking_uri=tracking_uri, experiment_name=name))
    events: list = []
    starts: list[float] = []
    t0 = time.time()

    class Record(tune.Callback):
        def _end(self, trial, state):
            r = trial.last_result or {}
            events.append(TrialEvent(len(events), time.time() - t0, r.get("best_val"), state,
                                     int(r.get("training_iteration", 0) or 0), r.get("time_total_s")))

        def on_trial_start(self, iteration, trials, trial, **kw):
            starts.append(time.time() - t0)

        def on_trial_complete(self, iteration, trials, trial, **kw):
            r = trial.last_result or {}
            self._end(trial, "complete" if int(r.get("training_iteration", 0) or 0) >= info["epochs"] else "pruned")

        def on_trial_error(self, iteration, trials, trial, **kw):
            self._end(trial, "failed")

    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=sched, num_samples=n_trials,
                                    max_concurrent_trials=workers, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(workdir / "ray_results"),
                                  callbacks=[Record(), *callbacks], verbose=0),
    )
    tuner.fit()
    wall = time.time() - t0
    return SystemRun("tune", task, seed, workers, n_trials, info["direction"], wall, events,
                     {"experiment": name, "scheduler": described,
                      "first_trial_start_s": min(starts) if starts else None})


def run_optuna_fair(task: str, task_options: dict[str, Any], space: dict[str, Any], *, seed: int, n_trials: int,
                    workers: int, pruner: str, pruner_options: dict[str, Any] | None = None,
                    prior_curves: list[tuple[list[int], list[float]]] | None = None, cold: bool = False):
    """Plain Optuna: one in-memory study, one seeded TPE sampler, ``workers`` threads, autoopt's pruner.
    ``cold``: the clock starts at this call, before torch, the task and its data are loaded (a new
    process's study); otherwise after them (as a driver's warm workers hold them)."""
    t_call = time.time()
    import optuna
    import torch

    from autoopt.pruners import trial_curve
    from autoopt.sampling import make_pruner
    from autoopt.task import load_task
    from autoopt.train import train
    from bench.systems import SystemRun, _events_from_study, build_sampler, build_space, task_info

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = task_info(task, task_options)
    sp = build_space(task, task_options, space)
    the_task = load_task(task, **task_options)
    the_task.datasets()  # as the other systems' workers hold it cached
    t0 = t_call if cold else time.time()
    study = optuna.create_study(direction=info["direction"], sampler=build_sampler("tpe", seed, sp),
                                pruner=make_pruner(pruner, info["epochs"], **(pruner_options or {}),
                                                   prior_curves=prior_curves))

    def objective(trial: optuna.Trial) -> float:
        cfg = sp.sample(trial)
        pruned = []

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            if trial.should_prune():
                pruned.append(step)
                return True
            return False

        out = train(the_task, cfg, report=report, seed=seed + trial.number)
        trial.set_user_attr("bench.epochs", len(out.history))
        if out.status == "failed" or out.value is None:
            raise RuntimeError(out.reason)
        if pruned:
            raise optuna.TrialPruned()
        return out.value

    study.optimize(objective, n_trials=n_trials, n_jobs=workers, catch=(RuntimeError,))
    wall = time.time() - t0
    curves = [list(c) for c in map(trial_curve, study.get_trials(deepcopy=False)) if c[0]]
    return SystemRun("optuna", task, seed, workers, n_trials, info["direction"], wall,
                     _events_from_study(study, t0, info["direction"]),
                     {"pruner": pruner, "pruner_options": pruner_options, "curves": curves,
                      "prior_curves": len(prior_curves or ())})


def history_curves(tname: str, out: Path, workers: int) -> list[tuple[list[int], list[float]]]:
    """The finished curves of one unpruned study of ``tname`` (seed HISTORY_SEED), run once and kept."""
    path = out / "pruning-history" / f"none__{tname}__{HISTORY_SEED}.json"
    if not path.exists():
        t = PRUNE_TASKS[tname]
        run = run_optuna_fair(t["task"], t["task_options"], _space(t["task"]), seed=HISTORY_SEED,
                              n_trials=TRIALS_OVERRIDE or t["n_trials"], workers=workers, pruner="none")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**run.to_dict(), "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())},
                                   default=str))
    return [(s, v) for s, v in json.loads(path.read_text())["extra"]["curves"]]


def one(part: str, system: str, tname: str, seed: int, out: Path, workers: int, *, in_own_driver: bool = False) -> None:
    path = out / part / f"{system}__{tname}__{seed}.json"
    if path.exists():
        return
    if system in FRESH_SYSTEMS and not in_own_driver:
        return _one_in_own_driver(system, tname, seed, out, workers)
    from bench.systems import run_autoopt

    t = (RACE_TASKS if part == "race" else PRUNE_TASKS)[tname]
    space = _space(t["task"])
    kw = dict(seed=seed, n_trials=TRIALS_OVERRIDE or t["n_trials"], workers=workers)
    before, started = _load(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if part == "race":
        base = FRESH_SYSTEMS.get(system, system)  # an own-driver arm runs its one-driver twin's system
        runner, pruner = RACE_SYSTEMS[base]
        if runner == "autoopt":
            work = out / "work"
            work.mkdir(parents=True, exist_ok=True)
            run = run_autoopt(t["task"], t["task_options"], space, storage=f"sqlite:///{(work / 'autoopt.db').resolve()}",
                              tracking_uri=None, pruner=pruner, pruner_options=RUNG_OPTIONS[pruner], system=system,
                              warm_start=base in WARM_SYSTEMS, **kw)
        elif runner == "tune":
            run = run_tune_fair(t["task"], t["task_options"], space, workdir=out / "work", pruner=pruner, **kw)
        else:
            run = run_optuna_fair(t["task"], t["task_options"], space, pruner=pruner, pruner_options=RUNG_OPTIONS[pruner],
                                  cold=in_own_driver, **kw)
    else:
        pruner, opts = PRUNE_SYSTEMS[system]
        prior = history_curves(tname, out, workers) if opts.get("similar_tasks") else None
        before, started = _load(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        run = run_optuna_fair(t["task"], t["task_options"], space, pruner=pruner, pruner_options=opts,
                              prior_curves=prior, **kw)
    run.system = system
    d = run.to_dict()
    d.update(part=part, task_name=tname, started_utc=started, load_before=before, load_after=_load())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, indent=1, default=str))
    print(f"[{time.strftime('%H:%M:%S')}] {part} {system} {tname} seed {seed}: wall {run.wall_s:.1f} s, "
          f"best {run.best()}, {len(run.events)} trials, {run.epochs} epochs, load {before['loadavg'][0]:.1f}", flush=True)


def _one_in_own_driver(system: str, tname: str, seed: int, out: Path, workers: int) -> None:
    """Run one study of a FRESH_SYSTEMS arm in a new driver process on this invocation's Ray
    (its timing starts at the system's entry call there, after the process's own imports)."""
    import ray

    cmd = [sys.executable, "-m", "bench.race", "study", "--out", str(out), "--system", system, "--task", tname,
           "--seed", str(seed), "--workers", str(workers), "--address", ray.get_runtime_context().gcs_address]
    if TRIALS_OVERRIDE:
        cmd += ["--trials", str(TRIALS_OVERRIDE)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"{system} {tname} seed {seed} in its own driver: exit {done.returncode}\n{done.stderr[-3000:]}")


def cmd_study(args: argparse.Namespace) -> int:
    """One study of a FRESH_SYSTEMS arm, in this new driver process (see ``_one_in_own_driver``)."""
    import ray

    global TRIALS_OVERRIDE
    TRIALS_OVERRIDE = args.trials
    if RACE_SYSTEMS[FRESH_SYSTEMS[args.system]][0] != "optuna":  # plain Optuna uses no Ray
        ray.init(address=args.address, log_to_driver=False)
    one("race", args.system, args.task, args.seed, args.out.resolve(), args.workers, in_own_driver=True)
    return 0


def jobs(part: str, seeds: list[int], race_systems: list[str], prune_systems: list[str]) -> list[tuple[str, str, str, int]]:
    """Seeds outermost, so a cut-short run still has every system on its first seeds; the order of
    systems rotates per seed and task (none always runs first on the shared machine)."""
    out = []
    for seed in seeds:
        if part in ("race", "all"):
            for i, tname in enumerate(RACE_TASKS):
                k = (seed + i) % len(race_systems)
                out += [("race", s, tname, seed) for s in race_systems[k:] + race_systems[:k]]
        if part in ("pruning", "all"):
            for tname in PRUNE_TASKS:
                out += [("pruning", s, tname, seed) for s in prune_systems]
    return out


def race_environment(out: Path) -> None:
    """The environment every race study runs in (also ``bench.race_cpu``'s): warnings off, Tune's
    loggers off, its actor-reuse wait long enough, the recommender's user data inside ``out``."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # a stopped function trainable's thread finishes its epoch before the actor is reused; the
    # default 2 s wait is shorter than a cv-big epoch, which would make Tune start a new actor
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    os.environ["AUTOOPT_RECOMMEND_DIR"] = str(out / "work" / "recommend")


def start_race_ray(out: Path) -> None:
    """One local Ray for the invocation, then an untimed warm-up study (Ray workers import torch once)."""
    from bench.common import start_ray
    from bench.systems import run_autoopt

    start_ray(num_cpus=max(os.cpu_count() or 2, 4))
    (out / "work").mkdir(parents=True, exist_ok=True)
    run_autoopt("bench.trivial:TrivialTask", {}, {}, seed=0, n_trials=4, workers=2,
                storage=f"sqlite:///{(out / 'work' / 'warm-up.db').resolve()}", tracking_uri=None, system="warm-up")


def cmd_run(args: argparse.Namespace) -> int:
    global TRIALS_OVERRIDE
    TRIALS_OVERRIDE = args.trials
    out = args.out.resolve()
    todo = [j for j in jobs(args.part, list(range(args.seeds)), args.race_systems, args.prune_systems)
            if not (out / j[0] / f"{j[1]}__{j[2]}__{j[3]}.json").exists()]
    if args.tasks:
        todo = [j for j in todo if j[2] in args.tasks]
    print(f"{len(todo)} studies to run", flush=True)
    if not todo:
        return 0
    race_environment(out)
    if any(j[0] == "race" for j in todo):
        start_race_ray(out)
    deadline = time.time() + args.budget_s if args.budget_s else None
    for part, system, tname, seed in todo:
        if deadline and time.time() > deadline:
            print("budget spent; stopping (rerun to resume)", flush=True)
            break
        try:
            one(part, system, tname, seed, out, args.workers)
        except Exception as exc:  # noqa: BLE001 - record and go on
            import traceback

            traceback.print_exc()
            print(f"FAILED {part} {system} {tname} {seed}: {type(exc).__name__}: {exc}", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def _runs(out: Path, part: str) -> dict[tuple[str, str], dict[int, Any]]:
    from bench.systems import SystemRun

    res: dict[tuple[str, str], dict[int, Any]] = {}
    for p in sorted((out / part).glob("*.json")):
        d = json.loads(p.read_text())
        meta = {k: d.pop(k) for k in ("part", "task_name", "started_utc", "load_before", "load_after")}
        r = SystemRun.from_dict(d)
        r.extra.update(meta)
        res.setdefault((meta["task_name"], p.name.split("__")[0]), {})[r.seed] = r
    return res


def target_of(best_known: float, direction: str, tol: float) -> float:
    return best_known * (1 + tol) if direction == "minimize" else best_known * (1 - tol)


def race_report(out: Path, tol: float) -> tuple[str, dict[str, Any]]:
    runs = _runs(out, "race")
    lines, summary = [], {}
    pairings = (("autoopt_sh", "tune_asha", "optuna_sh", "autoopt_asha", "autoopt_asha_warm", "autoopt_none",
                 "autoopt_asha_fresh", "tune_asha_fresh", "autoopt_asha_warm_fresh", "autoopt_none_fresh",
                 "optuna_asha", "optuna_asha_fresh"),
                ("autoopt_hb", "tune_ahb", "optuna_hb"))
    for (tname, t), pairing in ((x, p) for p in pairings for x in RACE_TASKS.items()):
        # the best known value (and so the target) is per pruner pairing: a later pairing's runs
        # must not move the target of one already reported
        systems = [s for s in pairing if (tname, s) in runs]
        if not systems:
            continue
        allr = [r for s in systems for r in runs[(tname, s)].values() if r.best() is not None]
        direction = allr[0].direction
        best_known = (min if direction == "minimize" else max)(r.best() for r in allr)
        tgt = target_of(best_known, direction, tol)
        rows = []
        per_sys = {}
        for s in systems:
            rs = runs[(tname, s)]
            times = [rs[k].reach(tgt)[0] for k in sorted(rs)]
            walls = [rs[k].wall_s for k in sorted(rs)]
            per_sys[s] = {"seeds": sorted(rs), "times": times, "walls": walls}
            rows.append([s, f"{sum(x is not None for x in times)}/{len(times)}", fmt(censored_median(times)),
                         fmt_spread(spread(times)), fmt_spread(spread(walls)),
                         fmt_spread(spread([rs[k].best() for k in rs]), 4),
                         fmt_spread(spread([rs[k].epochs for k in rs])),
                         fmt_spread(spread([rs[k].extra["load_before"]["loadavg"][0] for k in rs]), 2)])
        ratios = {}
        for mine, others in (("autoopt_sh", ("tune_asha", "optuna_sh")), ("autoopt_hb", ("tune_ahb", "optuna_hb")),
                             ("autoopt_asha", ("tune_asha", "optuna_sh", "autoopt_sh", "optuna_asha")),
                             ("autoopt_asha_warm", ("tune_asha", "autoopt_asha")),
                             ("autoopt_none", ("tune_asha", "autoopt_asha")),
                             ("autoopt_asha_fresh", ("tune_asha_fresh", "autoopt_asha", "optuna_asha_fresh")),
                             ("autoopt_asha_warm_fresh", ("tune_asha_fresh", "autoopt_asha_fresh", "optuna_asha_fresh")),
                             ("autoopt_none_fresh", ("tune_asha_fresh",))):
            if mine not in per_sys:
                continue
            for o in others:
                if o not in per_sys:
                    continue
                a, b = runs[(tname, mine)], runs[(tname, o)]
                rr, ww, lost = [], [], 0
                for k in sorted(set(a) & set(b)):
                    ta, tb = a[k].reach(tgt)[0], b[k].reach(tgt)[0]
                    if ta is not None:  # not reached by the other: its whole wall (a lower bound)
                        rr.append((tb if tb is not None else b[k].wall_s) / ta)
                    elif tb is not None:  # reached by the other only: a loss, ranked below every ratio
                        rr.append(0.0)
                        lost += 1
                    ww.append(b[k].wall_s / a[k].wall_s)
                ratios[f"{o} / {mine}"] = {"time_to_target": spread(rr), "wall": spread(ww),
                                           "time_to_target_interval": median_interval(rr),
                                           "autoopt_faster_seeds": sum(x > 1 for x in rr), "only_other_reached": lost}
        summary[f"{tname}/{pairing[0]}"] = {"best_known": best_known, "target": tgt, "direction": direction, "ratios": ratios,
                          "n_trials": t["n_trials"], "task_options": t["task_options"]}
        lines.append(f"**{tname}**, {pairing[0].split('_')[1].upper()} pairing (`{t['task']}` {t['task_options']}, {t['n_trials']} trials, {direction}; best known "
                     f"{fmt(best_known, 4)}, target {fmt(tgt, 4)} = within {100 * tol:g}%)\n")
        lines.append(table(["system", "reached", "time to target s (median, unreached = ∞)", "time s (min-max of reached)",
                            "study wall s", "best value", "epochs", "load at start"], rows))
        if ratios:
            lines.append("\n" + table(["ratio (other / autoopt), per seed", "time to target (median, min-max)",
                                       "time to target: middle half; 90% interval of the median (bootstrap)",
                                       "seeds autoopt reached it sooner", "study wall (median, min-max)"],
                                      [[k, f'{fmt_spread(v["time_to_target"], 3)}, {v["time_to_target"]["n"]} seeds',
                                        fmt_interval(v["time_to_target_interval"]),
                                        _seeds_won(v),
                                        f'{fmt_spread(v["wall"], 3)}, {v["wall"]["n"]} seeds']
                                       for k, v in ratios.items()]))
        lines.append("")
    return "\n".join(lines), summary


def _seeds_won(ratio: dict[str, Any]) -> str:
    """In how many seeds autoopt reached the target sooner, and how many only the other reached."""
    n = ratio["time_to_target"]["n"]
    if not n:
        return "-"
    lost = ratio["only_other_reached"]
    return f'{ratio["autoopt_faster_seeds"]} of {n}' + (f" ({lost} reached by the other only, counted as 0)" if lost else "")


def shortfall(pruned: float, full: float, direction: str) -> float:
    return ((full - pruned) if direction == "maximize" else (pruned - full)) / abs(full)


def pruning_report(out: Path) -> tuple[str, dict[str, Any]]:
    runs = _runs(out, "pruning")
    lines, summary = [], {}
    for tname, t in PRUNE_TASKS.items():
        base = runs.get((tname, "none"))
        if not base:
            continue
        rows = []
        for s in PRUNE_SYSTEMS:
            rs = runs.get((tname, s))
            if not rs:
                continue
            seeds = sorted(set(rs) & set(base))
            ratio = [base[k].epochs / rs[k].epochs for k in seeds if rs[k].epochs]
            gap = [shortfall(rs[k].best(), base[k].best(), rs[k].direction) for k in seeds]
            mr, mg = spread(ratio)["median"], spread(gap)["median"]
            met = s != "none" and mr is not None and mr >= 3 and mg <= SAME_VALUE
            summary[f"{tname}/{s}"] = {"epoch_ratio": spread(ratio), "shortfall": spread(gap), "met": met}
            rows.append([s, len(seeds), fmt_spread(spread([rs[k].epochs for k in seeds])), fmt_spread(spread(ratio), 3),
                         fmt_spread(spread([rs[k].best() for k in seeds]), 4), fmt_spread(spread(gap), 3),
                         fmt_spread(spread([sum(e.state == "pruned" for e in rs[k].events) for k in seeds])),
                         fmt_spread(spread([rs[k].wall_s for k in seeds])), "-" if s == "none" else ("met" if met else "not met")])
        lines.append(f"**{tname}** (`{t['task']}` {t['task_options']}, {t['n_trials']} trials, "
                     f"{t['n_trials'] * t['task_options']['epochs']} epochs without pruning)\n")
        lines.append(table(["pruner", "seeds", "epochs", "epochs none / this (per seed)", "best value",
                            "shortfall vs none (relative, > 0 worse)", "trials pruned", "wall s", "≥ 3x at ≤ 0.5%"], rows))
        lines.append("")
    return "\n".join(lines), summary


def cmd_report(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    parts = []
    for tol in (0.01, 0.05):
        md, summ = race_report(out, tol)
        parts.append(f"## Race, target within {100 * tol:g}% of the best known\n\n{md}")
        (out / f"race_{int(100 * tol)}pct.json").write_text(json.dumps(summ, indent=1, default=str))
    md, summ = pruning_report(out)
    parts.append(f"## Pruning\n\n{md}")
    (out / "pruning.json").write_text(json.dumps(summ, indent=1, default=str))
    (out / "race.md").write_text("\n".join(parts))
    print("\n".join(parts))
    return 0


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    p = argparse.ArgumentParser(prog="python -m bench.race", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, default=Path("bench/results/race"))
    r.add_argument("--part", choices=["race", "pruning", "all"], default="all")
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--tasks", nargs="+", default=None)
    r.add_argument("--race-systems", nargs="+", default=["autoopt_sh", "tune_asha", "optuna_sh"])
    r.add_argument("--prune-systems", nargs="+", default=list(PRUNE_SYSTEMS))
    r.add_argument("--trials", type=int, default=None, help="override every study's trials (smoke tests)")
    r.add_argument("--budget-s", type=float, default=None, help="start no study after this many seconds")
    q = sub.add_parser("report")
    q.add_argument("--out", type=Path, default=Path("bench/results/race"))
    o = sub.add_parser("study", help="internal: one study of a FRESH_SYSTEMS arm in its own driver")
    o.add_argument("--out", type=Path, required=True)
    o.add_argument("--system", choices=sorted(FRESH_SYSTEMS), required=True)
    o.add_argument("--task", choices=sorted(RACE_TASKS), required=True)
    o.add_argument("--seed", type=int, required=True)
    o.add_argument("--workers", type=int, default=2)
    o.add_argument("--address", required=True)
    o.add_argument("--trials", type=int, default=None)
    args = p.parse_args(argv)
    return {"run": cmd_run, "report": cmd_report, "study": cmd_study}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
