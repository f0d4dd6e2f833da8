"""The reference-task studies shared by time-to-target, pruning and recommender comparisons.

Every system searches the space of the task's reference spec (``studies/<task>.yaml``) with the
same trial budget and worker count. Runs are cached on the context, so the pruning and
recommender comparisons reuse the studies that time-to-target ran, seed for seed.
"""

from __future__ import annotations

from typing import Any

from bench.common import REPO, Context
from bench.systems import SystemRun, run_autoopt, run_optuna, run_tune

TASKS_FULL = ["tabular", "cv", "nlp", "recsys"]
TASKS_QUICK = ["tabular"]
TRIALS_FULL = {"tabular": 30, "cv": 24, "nlp": 24, "recsys": 24}
TRIALS_QUICK = {"tabular": 12, "cv": 8, "nlp": 8, "recsys": 8}
#: The systems of the time-to-target comparison; the best value any of them found on a task is
#: the task's "best known" value, and the target is within TOLERANCE (relative) of it.
TARGET_SYSTEMS = ["autoopt", "autoopt_ws", "tune", "optuna", "random"]
TOLERANCE = 0.01
#: also reported: a looser target that short (quick-mode) studies can reach more than once
TOLERANCES = (0.01, 0.05)


def tasks(ctx: Context) -> list[str]:
    return list(ctx.tasks or (TASKS_QUICK if ctx.quick else TASKS_FULL))


def setup(ctx: Context, task: str) -> dict[str, Any]:
    """Space (from the reference spec), options and trial budget for ``task``."""
    from autoopt.spec import StudySpec

    spec = StudySpec.from_yaml(REPO / "studies" / f"{task}.yaml")
    return {
        "space": spec.space.model_dump(mode="json", exclude_defaults=True),
        "task_options": dict(spec.task_options),
        "n_trials": ctx.trials or (TRIALS_QUICK if ctx.quick else TRIALS_FULL)[task],
    }


def study(ctx: Context, system: str, task: str, seed: int) -> SystemRun:
    """Run (or reuse) one study of ``system`` on ``task`` with ``seed``."""
    key = f"{system}/{task}/{seed}"
    if key in ctx.runs:
        return ctx.runs[key]
    s = setup(ctx, task)
    common = dict(seed=seed, n_trials=s["n_trials"], workers=ctx.workers)
    if system in ("autoopt", "autoopt_ws", "autoopt_noprune"):
        run = run_autoopt(task, s["task_options"], s["space"], storage=ctx.sqlite("autoopt"),
                          tracking_uri=ctx.mlflow("autoopt"), pruner="none" if system == "autoopt_noprune" else "hyperband",
                          warm_start=system == "autoopt_ws", system=system, **common)
    elif system == "tune":
        run = run_tune(task, s["task_options"], s["space"], workdir=ctx.work, tracking_uri=ctx.mlflow("tune"),
                       **common)
    elif system in ("optuna", "random"):
        run = run_optuna(task, s["task_options"], s["space"], storage=ctx.sqlite(system),
                         sampler="tpe" if system == "optuna" else "random", system=system, **common)
    else:
        raise ValueError(f"unknown system {system!r}")
    ctx.runs[key] = run
    ctx.note(f"  {system:16s} {task:8s} seed {seed}: wall {run.wall_s:6.1f} s, best {run.best()}, "
             f"{len(run.events)} trials, {run.epochs} epochs")
    return run


def run_studies(ctx: Context, systems: list[str]) -> dict[str, str]:
    """Every (seed, task, system) study not yet cached; the order of systems rotates per task and
    seed so no system always runs first (or last) on the shared machine. Returns errors by key."""
    errors: dict[str, str] = {}
    for seed in ctx.seeds:
        for i, task in enumerate(tasks(ctx)):
            k = (seed + i) % len(systems)
            for system in systems[k:] + systems[:k]:
                try:
                    study(ctx, system, task, seed)
                except Exception as exc:  # noqa: BLE001 - record and go on with the other systems
                    import traceback

                    traceback.print_exc()
                    errors[f"{system}/{task}/{seed}"] = f"{type(exc).__name__}: {exc}"[:500]
                    ctx.note(f"  {system} {task} seed {seed} FAILED: {errors[f'{system}/{task}/{seed}']}")
    return errors


def runs_of(ctx: Context, system: str, task: str) -> list[SystemRun | None]:
    """The cached runs of ``system`` on ``task``, one per seed (None where it failed)."""
    return [ctx.runs.get(f"{system}/{task}/{seed}") for seed in ctx.seeds]


def target(ctx: Context, task: str, tolerance: float = TOLERANCE) -> dict[str, Any] | None:
    """Direction, best known value (over TARGET_SYSTEMS' runs) and the target for ``task``."""
    runs = [r for s in TARGET_SYSTEMS for r in runs_of(ctx, s, task) if r is not None and r.best() is not None]
    if not runs:
        return None
    direction = runs[0].direction
    bests = [r.best() for r in runs]
    best = max(bests) if direction == "maximize" else min(bests)  # type: ignore[type-var]
    tgt = best - tolerance * abs(best) if direction == "maximize" else best + tolerance * abs(best)
    return {"direction": direction, "best_known": best, "target": tgt, "tolerance": tolerance}
