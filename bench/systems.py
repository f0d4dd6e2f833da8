"""The systems under comparison, each run on the same task code, search space and worker count.

* ``autoopt``        autoopt.run(StudySpec): TPE + Hyperband, coordinator actor, MLflow (warm start on/off).
* ``tune``           ray.tune.Tuner + OptunaSearch (define-by-run over the same SearchSpace, same TPE
                     sampler) + ASHAScheduler, MLflowLoggerCallback.
* ``optuna``         plain Optuna: TPE, no pruning, ``workers`` processes sharing one storage
                     (Optuna's documented way to run in parallel).
* ``random``         plain Optuna with the random sampler, no pruning.

Every trial trains through :func:`autoopt.train.train` with the same per-trial seed rule
(study seed + trial number). Each runner returns a :class:`SystemRun`: wall time from the user's
entry call to its return, and one :class:`TrialEvent` per finished trial (when it finished, the
best validation value it reached, epochs trained) from which the comparisons compute
time-to-target, throughput and epochs.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoopt.core import record as R

SYSTEMS = ("autoopt", "autoopt_ws", "tune", "optuna", "random")
LABELS = {
    "autoopt": "autoopt (TPE + Hyperband)",
    "autoopt_ws": "autoopt + warm start",
    "autoopt_noprune": "autoopt (TPE, no pruning)",
    "autoopt_notrack": "autoopt, MLflow off",
    "tune": "Ray Tune (OptunaSearch + ASHA)",
    "optuna": "Optuna (TPE, no pruning)",
    "random": "random search",
}


@dataclass
class TrialEvent:
    number: int
    t_end: float  # seconds from the entry call
    value: float | None  # best validation value over the epochs it ran (None: failed)
    state: str  # complete | pruned | failed
    epochs: int
    seconds: float | None = None  # time inside the train loop


@dataclass
class SystemRun:
    system: str
    task: str
    seed: int
    workers: int
    n_trials: int
    direction: str
    wall_s: float
    events: list[TrialEvent]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SystemRun":
        d = dict(d)
        d["events"] = [TrialEvent(**e) for e in d["events"]]
        return cls(**d)

    @property
    def epochs(self) -> int:
        return sum(e.epochs for e in self.events)

    def best(self) -> float | None:
        vals = [e.value for e in self.events if e.value is not None and math.isfinite(e.value)]
        if not vals:
            return None
        return max(vals) if self.direction == "maximize" else min(vals)

    def reach(self, target: float) -> tuple[float | None, int | None, int | None]:
        """(seconds, trials finished, epochs trained) when a finished trial first met ``target``."""
        epochs = 0
        for i, e in enumerate(sorted(self.events, key=lambda e: e.t_end), 1):
            epochs += e.epochs
            if e.value is None or not math.isfinite(e.value):
                continue
            if (e.value >= target) if self.direction == "maximize" else (e.value <= target):
                return e.t_end, i, epochs
        return None, None, None


# ----------------------------------------------------------------------------------------------
# shared set-up
# ----------------------------------------------------------------------------------------------
_TASK_INFO: dict[tuple, dict[str, Any]] = {}


def task_info(task: str, task_options: dict[str, Any]) -> dict[str, Any]:
    """Traits and matrix-parameter flag exactly as autoopt's runner computes them (cached)."""
    key = (task, tuple(sorted(task_options.items())))
    if key not in _TASK_INFO:
        from autoopt.optimizers import hidden_matrix_params
        from autoopt.task import load_task

        t = load_task(task, **task_options)
        has_matrix = bool(hidden_matrix_params(t.build_model()))  # as StudyRunner._has_matrix_params
        _TASK_INFO[key] = {"traits": t.traits(), "has_matrix": has_matrix, "direction": t.direction,
                           "epochs": t.epochs, "metric": t.metric, "chance": t.chance_level}
    return _TASK_INFO[key]


def build_space(task: str, task_options: dict[str, Any], space: dict[str, Any]):
    """The SearchSpace autoopt's coordinator would build for this study."""
    from autoopt.space import SearchSpace
    from autoopt.spec import SpaceSpec

    info = task_info(task, task_options)
    return SearchSpace(SpaceSpec.model_validate(space), info["traits"], has_matrix_params=info["has_matrix"])


def build_sampler(name: str, seed: int, space):
    """The sampler autoopt uses (Optuna 5 defaults), wrapped so restricted choices stay restricted."""
    from autoopt.sampling import ChoiceRestrictingSampler, make_sampler

    return ChoiceRestrictingSampler(make_sampler(name, seed=seed), space.restrictions)


def _ts(dt) -> float:
    return dt.timestamp() if dt is not None else float("nan")


def _events_from_study(study, t0: float, direction: str) -> list[TrialEvent]:
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished():
            continue
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(t.state, "failed")
        value = t.value if t.state == TrialState.COMPLETE else None
        inter = [v for v in t.intermediate_values.values() if v is not None and math.isfinite(v)]
        if value is None and inter:
            value = max(inter) if direction == "maximize" else min(inter)
        epochs = int(t.user_attrs.get(R.EPOCHS_RUN, t.user_attrs.get("bench.epochs", len(inter))) or 0)
        out.append(TrialEvent(t.number, _ts(t.datetime_complete) - t0, value, state, epochs,
                              t.user_attrs.get(R.SECONDS, t.user_attrs.get("bench.seconds"))))
    return out


# ----------------------------------------------------------------------------------------------
# autoopt
# ----------------------------------------------------------------------------------------------
def run_autoopt(task: str, task_options: dict[str, Any], space: dict[str, Any], *, seed: int, n_trials: int,
                workers: int, storage: str, tracking_uri: str | None, pruner: str = "hyperband",
                sampler: str = "tpe", warm_start: bool = False, system: str = "autoopt",
                pruner_options: dict[str, Any] | None = None,
                gpus_per_trial: float = 0.0, cpus_per_trial: float = 1.0) -> SystemRun:
    import autoopt
    from autoopt.storage import open_storage

    name = f"bench-{system}-{Path(task).name.replace(':', '_')}-{seed}-{uuid.uuid4().hex[:6]}"
    spec = autoopt.StudySpec(
        name=name, task=task, task_options=task_options, space=space, n_trials=n_trials, workers=workers,
        sampler=sampler, pruner=pruner, pruner_options=pruner_options or {}, seed=seed, storage=storage, tracking=tracking_uri is not None,
        tracking_uri=tracking_uri, experiment=name, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
        warm_start={"enabled": warm_start, "n_trials": 3},
    )
    t0 = time.time()
    result = autoopt.run(spec)
    wall = time.time() - t0
    import optuna

    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    info = task_info(task, task_options)
    events = _events_from_study(study, t0, info["direction"])
    trials = study.get_trials(deepcopy=False)
    starts = [_ts(t.datetime_start) - t0 for t in trials if t.datetime_start is not None]
    extra = {
        "study": name,
        "best_value": result.best_value,
        "first_trial_start_s": min(starts) if starts else None,
        "devices": sorted({str(t.user_attrs.get(R.DEVICE)) for t in trials}),
        "warm_started": sum(1 for t in trials if t.user_attrs.get(R.WARM_START)),
    }
    if tracking_uri:  # what MLflow logging cost inside the workers (TrialLogger's own timer)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], "tags.`autoopt.role` = 'trial'") if exp else []
        secs = [r.data.metrics["tracking_seconds"] for r in runs if "tracking_seconds" in r.data.metrics]
        extra["tracking_s_per_trial"] = sum(secs) / len(secs) if secs else None
    return SystemRun(system, task, seed, workers, n_trials, info["direction"], wall, events, extra)


# ----------------------------------------------------------------------------------------------
# Ray Tune: Tuner + OptunaSearch + ASHAScheduler + MLflowLoggerCallback
# ----------------------------------------------------------------------------------------------
def tune_trainable(config: dict[str, Any]) -> None:
    """A Tune function trainable training the same task through the same loop."""
    import torch
    from ray import tune

    from autoopt.runner import _cached_task
    from autoopt.space import TrialConfig
    from autoopt.train import train

    torch.set_num_threads(1)
    task = _cached_task(config["task"], dict(config["task_options"]))
    maximize = task.direction == "maximize"
    best: list[float] = []

    def report(epoch: int, value: float) -> bool:
        b = value if not best else (max(best[0], value) if maximize else min(best[0], value))
        best[:] = [b]
        tune.report({"val_metric": value, "best_val": b, "epoch": epoch})
        return False  # ASHA stops the trial from the driver

    out = train(task, TrialConfig.from_dict(config["cfg"]), report=report, seed=int(config["seed"]))
    if out.status == "failed":
        raise RuntimeError(out.reason)


class DefineByRun:
    """OptunaSearch's define-by-run space: the SearchSpace autoopt samples (picklable for Tune's
    experiment checkpoints). Tune hands the returned dict to the trainable."""

    def __init__(self, space, task: str, task_options: dict[str, Any], seed: int):
        self.space, self.task, self.task_options, self.seed, self.count = space, task, task_options, seed, 0

    def __call__(self, trial) -> dict[str, Any]:
        cfg = self.space.sample(trial)
        self.count += 1
        return {"cfg": cfg.to_dict(), "task": self.task, "task_options": self.task_options,
                "seed": self.seed + self.count - 1}


def run_tune(task: str, task_options: dict[str, Any], space: dict[str, Any], *, seed: int, n_trials: int,
             workers: int, workdir: Path, tracking_uri: str | None, optuna_storage: str | None = None,
             scheduler: bool = True, system: str = "tune", gpus_per_trial: float = 0.0) -> SystemRun:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    info = task_info(task, task_options)
    sp = build_space(task, task_options, space)
    define_by_run = DefineByRun(sp, task, task_options, seed)

    storage = None
    name = f"bench-{system}-{seed}-{uuid.uuid4().hex[:6]}"
    if optuna_storage:
        from autoopt.storage import open_storage

        storage = open_storage(optuna_storage)
    searcher = OptunaSearch(space=define_by_run, metric="val_metric", mode=info["direction"][:3],
                            sampler=build_sampler("tpe", seed, sp), storage=storage, study_name=name)
    events: list[TrialEvent] = []
    t0 = time.time()

    starts: list[float] = []

    class Record(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info_):
            starts.append(time.time() - t0)

        def _end(self, trial, state):
            r = trial.last_result or {}
            v = r.get("best_val")
            events.append(TrialEvent(len(events), time.time() - t0, v, state,
                                     int(r.get("training_iteration", 0) or 0), r.get("time_total_s")))

        def on_trial_complete(self, iteration, trials, trial, **info_):
            r = trial.last_result or {}
            done = int(r.get("training_iteration", 0) or 0) >= info["epochs"]
            self._end(trial, "complete" if done else "pruned")

        def on_trial_error(self, iteration, trials, trial, **info_):
            self._end(trial, "failed")

    callbacks: list[Any] = [Record()]
    if tracking_uri:
        from mlflow.tracking import MlflowClient
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        # artifacts next to the store (as autoopt does), not ./mlruns in the working directory
        MlflowClient(tracking_uri=tracking_uri).create_experiment(
            name, artifact_location=(workdir / "mlartifacts" / name).resolve().as_uri())

        callbacks.append(MLflowLoggerCallback(tracking_uri=tracking_uri, experiment_name=name))
    mode = info["direction"][:3]
    sched = (ASHAScheduler(metric="val_metric", mode=mode, max_t=info["epochs"], grace_period=1, reduction_factor=3)
             if scheduler else None)
    resources = {"cpu": 1, "gpu": gpus_per_trial} if gpus_per_trial else {"cpu": 1}
    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=sched, num_samples=n_trials,
                                    max_concurrent_trials=workers),
        run_config=tune.RunConfig(name=name, storage_path=str(workdir / "ray_results"), callbacks=callbacks,
                                  verbose=0),
    )
    tuner.fit()
    wall = time.time() - t0
    return SystemRun(system, task, seed, workers, n_trials, info["direction"], wall, events,
                     {"experiment": name, "first_trial_start_s": min(starts) if starts else None})


# ----------------------------------------------------------------------------------------------
# plain Optuna: TPE (or random), no pruning, `workers` processes on one storage
# ----------------------------------------------------------------------------------------------
def _optuna_worker(args: dict[str, Any]) -> None:
    import optuna
    import torch

    from autoopt.train import train

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from autoopt.storage import open_storage
    from autoopt.task import load_task

    task = load_task(args["task"], **args["task_options"])
    sp = build_space(args["task"], args["task_options"], args["space"])
    study = optuna.load_study(study_name=args["study"], storage=open_storage(args["storage"]),
                              sampler=build_sampler(args["sampler"], args["seed"] + 1000 * args["rank"], sp))

    def objective(trial: optuna.Trial) -> float:
        cfg = sp.sample(trial)
        out = train(task, cfg, seed=args["seed"] + trial.number)
        trial.set_user_attr("bench.epochs", len(out.history))
        trial.set_user_attr("bench.seconds", out.seconds)
        if out.status == "failed" or out.value is None:
            raise RuntimeError(out.reason)
        return out.value

    study.optimize(objective, catch=(RuntimeError,),
                   callbacks=[optuna.study.MaxTrialsCallback(args["n_trials"], states=None)])


def run_optuna(task: str, task_options: dict[str, Any], space: dict[str, Any], *, seed: int, n_trials: int,
               workers: int, storage: str, sampler: str = "tpe", system: str = "optuna") -> SystemRun:
    """Plain Optuna. One worker runs in this process; more run as spawned processes."""
    import optuna

    from autoopt.storage import open_storage

    info = task_info(task, task_options)
    name = f"bench-{system}-{seed}-{uuid.uuid4().hex[:6]}"
    t0 = time.time()
    optuna.create_study(study_name=name, storage=open_storage(storage), direction=info["direction"])
    args = {"task": task, "task_options": task_options, "space": space, "study": name, "storage": storage,
            "sampler": sampler, "seed": seed, "n_trials": n_trials}
    if workers == 1:
        _optuna_worker({**args, "rank": 0})
    else:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_optuna_worker, args=({**args, "rank": r},)) for r in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    wall = time.time() - t0
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    events = _events_from_study(study, t0, info["direction"])
    starts = [_ts(t.datetime_start) - t0 for t in study.get_trials(deepcopy=False) if t.datetime_start is not None]
    return SystemRun(system, task, seed, workers, n_trials, info["direction"], wall, events,
                     {"study": name, "first_trial_start_s": min(starts) if starts else None})


def delete_studies(storage: str, prefix: str = "bench-") -> int:
    """Remove benchmark studies from a shared database (PostgreSQL)."""
    import optuna

    from autoopt.storage import open_storage

    st = open_storage(storage)
    n = 0
    for s in optuna.get_all_study_summaries(st, include_best_trial=False):
        if s.study_name.startswith(prefix):
            optuna.delete_study(study_name=s.study_name, storage=st)
            n += 1
    return n


def env_for_workers(repo: Path) -> None:
    """Make ``bench`` importable in Ray workers and spawned processes."""
    paths = [str(repo)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
