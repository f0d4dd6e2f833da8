"""Does the warm start's result on a task repeat? The reference task's quick study (12 trials, 2
workers, TPE + Hyperband, MLflow off), cold and with a warm start of 3 or 1 enqueued
configurations, over seeds; prints each study's best value and writes them as JSON.

    PYTHONPATH=. python -m bench.warm_start_repeat --task tabular --seeds 15 --out bench/results/warmstart-15/repeat-tabular.json

With 2 workers the cold studies need not repeat for a seed: which trials have finished when TPE
samples (and which a pruner compares) depends on timing. Run it beside `python -m bench --only
recommender` to see how much of a cold-against-warm difference is that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

ARMS = (("cold", 0), ("warm3", 3), ("warm1", 1))


def best_value(study) -> float | None:
    """The study's best value as the other bench comparisons count it (a pruned trial by its best report)."""
    from bench.systems import _events_from_study

    direction = "maximize" if study.direction.name == "MAXIMIZE" else "minimize"
    vals = [e.value for e in _events_from_study(study, 0.0, direction) if e.value is not None]
    if not vals:
        return None
    return max(vals) if direction == "maximize" else min(vals)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="tabular")
    p.add_argument("--seeds", type=int, default=15)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import optuna

    import autoopt
    from autoopt.spec import StudySpec
    from bench.common import start_ray
    from bench.reference import REPO

    base = StudySpec.from_yaml(REPO / "studies" / f"{args.task}.yaml")
    space = base.space.model_dump(mode="json", exclude_defaults=True)
    start_ray(num_cpus=4)
    out: dict[str, list[float | None]] = {arm: [] for arm, _ in ARMS}
    with tempfile.TemporaryDirectory(prefix="autoopt-ws-repeat-") as work:
        storage = f"sqlite:///{work}/studies.db"
        for seed in range(args.seeds):
            for arm, n_warm in ARMS:
                name = f"ws-repeat-{args.task}-{arm}-{seed}"
                autoopt.run(autoopt.StudySpec(
                    name=name, task=args.task, task_options=dict(base.task_options), space=space,
                    n_trials=args.trials, workers=2, sampler="tpe", pruner="hyperband", seed=seed,
                    storage=storage, tracking=False, warm_start={"enabled": n_warm > 0, "n_trials": max(n_warm, 1)}))
                value = best_value(optuna.load_study(study_name=name, storage=storage))
                out[arm].append(value)
                print(f"seed {seed} {arm}: best {value}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"task": args.task, "trials": args.trials, "seeds": args.seeds, "best": out}, indent=1))
    for arm, vals in out.items():
        v = [x for x in vals if x is not None]
        print(f"{arm}: median best {statistics.median(v):.4g} over {len(v)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
