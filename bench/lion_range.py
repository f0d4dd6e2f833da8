"""Lion's lr search range, online: studies restricted to lion with the catalog's range against the
range it had before (1e-6 to 1e-3, given as the spec's ``params`` bound), on the reference tasks.

Each study: 12 trials, 2 workers, TPE with the study's seed, the default pruner, no MLflow, one
driver with Ray started once; the two ranges alternate per seed so neither runs on a warmer
machine. Resumable (one JSON per study). Rule and verdict: docs/benchmarks.md, section 5.

The run had lion's catalog range widened to 0.0316 (`bench/results/lion-range/catalog.diff`); the
verdict reverted it, so against the shipped catalog both arms are the same range: apply that diff
first to repeat the run.

    PYTHONPATH=. python -m bench.lion_range --out bench/results/lion-range [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

#: The range lion had before (2026-12-06): the spec's per-optimizer bound gives it back.
OLD_RANGE = {"lr": {"low": 1e-6, "high": 1e-3}}
ARMS = {"catalog": {"optimizers": ["lion"]}, "old_range": {"optimizers": ["lion"], "params": {"lion": OLD_RANGE}}}
TASKS = ("tabular", "cv")
N_TRIALS = 12


def run(out: Path, seeds: int) -> dict[str, Any]:
    from bench.common import start_ray
    from bench.systems import run_autoopt, task_info

    out.mkdir(parents=True, exist_ok=True)
    todo = [(task, seed, arm) for task in TASKS for seed in range(seeds)
            for arm in (ARMS if seed % 2 == 0 else list(reversed(ARMS)))
            if not (out / f"{task}__{arm}__{seed}.json").exists()]
    if todo:
        start_ray(num_cpus=2)
    for task, seed, arm in todo:
        r = run_autoopt(task, {}, ARMS[arm], seed=seed, n_trials=N_TRIALS, workers=2,
                        storage=f"sqlite:///{(out / 'studies.db').resolve()}", tracking_uri=None,
                        pruner="asha", system=f"lion-{arm}")
        (out / f"{task}__{arm}__{seed}.json").write_text(json.dumps(
            {"task": task, "arm": arm, "seed": seed, "best_value": r.extra["best_value"], "wall_s": r.wall_s,
             "direction": task_info(task, {})["direction"]}))
        print(f"{task} {arm} seed {seed}: best {r.extra['best_value']:.4g} in {r.wall_s:.1f} s", flush=True)
    return report(out)


def report(out: Path) -> dict[str, Any]:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*__*__*.json"))]
    summary: dict[str, Any] = {}
    lines = ["| task | direction | seeds | median best, catalog range | median best, old range | per seed (catalog / old) |",
             "|---|---|---:|---:|---:|---|"]
    for task in TASKS:
        mine = [r for r in rows if r["task"] == task]
        by = {a: {r["seed"]: r["best_value"] for r in mine if r["arm"] == a} for a in ARMS}
        seeds = sorted(set(by["catalog"]) & set(by["old_range"]))
        if not seeds:
            continue
        direction = mine[0]["direction"]
        med = {a: statistics.median(by[a][s] for s in seeds) for a in ARMS}
        better = med["catalog"] >= med["old_range"] if direction == "maximize" else med["catalog"] <= med["old_range"]
        summary[task] = {"direction": direction, "seeds": len(seeds), "median": med, "catalog_no_worse": better,
                         "per_seed": {s: [by["catalog"][s], by["old_range"][s]] for s in seeds}}
        lines.append(f"| {task} | {direction} | {len(seeds)} | {med['catalog']:.4g} | {med['old_range']:.4g} | "
                     + ", ".join(f"{by['catalog'][s]:.4g} / {by['old_range'][s]:.4g}" for s in seeds) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    run(args.out.resolve(), args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
