"""Two checkouts of autoopt on the engine bench's short rows, side by side: each run a new driver
process (its own embedded Ray on 2 CPUs) whose imports, and its Ray workers', come from one tree;
the trees alternate, the order flipping each round.

In each driver, as ``python -m bench --only engine`` does: an untimed 8-trial warm-up study
(workers and the coordinator warm), then 100 trivial trials on SQLite with MLflow on against
plain Optuna (2 processes, one SQLite file, no MLflow), then 48 one-second trials with the
coordinator the previous study left, once the previous studies' plots are drawn (the kept-
coordinator row of issue #13's 1-second target).

    python -m bench.engine_trees OLD_TREE NEW_TREE OUT [--rounds 4]
    python -m bench.engine_trees report OUT

(an old tree made with ``git worktree add`` needs ``ln -s ../tasks OLD/autoopt/tasks``, as for
``bench/cold_cli.py``). One JSON line per driver in ``OUT/results.jsonl``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # run as a script (see run): bench/profile.py would shadow the standard library's


def one(out: Path) -> dict[str, Any]:
    """This process's rows (run with the tree under test first on ``PYTHONPATH``)."""
    from autoopt.runner import ensure_ray
    from autoopt.tracking import wait_for_reports
    from bench.common import Context, ratio
    from bench.overhead import SLEEP, TRIVIAL, _one, rates

    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=False, out=out, seeds=[0])
    ensure_ray(num_cpus=2)
    _one(ctx, "autoopt", TRIVIAL, {}, 8, 2, "sqlite")  # untimed warm-up
    row: dict[str, Any] = {"load_start": os.getloadavg()[0]}
    trivial = rates(_one(ctx, "autoopt", TRIVIAL, {}, 100, 2, "sqlite"))
    optuna = _one(ctx, "optuna", TRIVIAL, {}, 100, 2, "sqlite").wall_s
    row.update(trivial_wall_s=trivial["wall_s"], trivial_failed=trivial["failed"], optuna_wall_s=optuna,
               trivial_ratio=ratio(trivial["wall_s"], optuna))
    wait_for_reports()
    r = _one(ctx, "autoopt", SLEEP, {"sleep_s": 1.0}, 48, 2, "sqlite")
    busy = sum(e.seconds or 0.0 for e in r.events) / 2
    one_second = rates(r)
    row.update(one_second_wall_s=r.wall_s, one_second_trials=one_second["trials"],
               one_second_failed=one_second["failed"], one_second_setup_s=one_second["setup_s"],
               one_second_teardown_s=one_second["teardown_s"], one_second_overhead=1 - busy / r.wall_s)
    return row


def run(trees: list[str], out: Path, rounds: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in range(rounds):
        for i, tree in enumerate(trees if r % 2 == 0 else trees[::-1]):
            work = out / f"work-{r}-{i}"
            env = {**os.environ, "PYTHONPATH": tree}
            for var in ("RAY_ADDRESS", "AUTOOPT_RAY_ADDRESS"):
                env.pop(var, None)
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # this file as a script (an old tree has no copy of it); its imports, bench's helpers
            # included, come from the tree
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "one", str(work)], cwd=tree,
                                  env=env, capture_output=True, text=True, timeout=900)
            row: dict[str, Any] = {"round": r, "tree": tree, "at": started}
            if done.returncode != 0:
                row["error"] = done.stderr[-1500:]
            else:
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            with (out / "results.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The second tree against the first, per round: the 1-second overhead share of each (and
    in how many rounds the new one is lower), and the ratio of the trivial studies' walls."""
    trees = list(dict.fromkeys(r["tree"] for r in rows))
    old, new = trees[0], trees[-1]
    by = {(r["round"], r["tree"]): r for r in rows if "error" not in r}
    pairs = [(by[(k, old)], by[(k, new)]) for k in sorted({r["round"] for r in rows})
             if (k, old) in by and (k, new) in by]

    def med(values: list[float]) -> float | None:
        return round(statistics.median(values), 4) if values else None

    return {
        "old": old, "new": new, "rounds": len(pairs),
        "one_second_overhead_old": [round(a["one_second_overhead"], 4) for a, _ in pairs],
        "one_second_overhead_new": [round(b["one_second_overhead"], 4) for _, b in pairs],
        "one_second_overhead_median_old": med([a["one_second_overhead"] for a, _ in pairs]),
        "one_second_overhead_median_new": med([b["one_second_overhead"] for _, b in pairs]),
        "rounds_new_lower": sum(b["one_second_overhead"] < a["one_second_overhead"] for a, b in pairs),
        "trivial_wall_ratio_new_over_old": med([b["trivial_wall_s"] / a["trivial_wall_s"] for a, b in pairs]),
        "trivial_vs_optuna_old": med([a["trivial_ratio"] for a, _ in pairs]),
        "trivial_vs_optuna_new": med([b["trivial_ratio"] for _, b in pairs]),
    }


def main(argv: list[str]) -> None:
    if argv[0] == "one":
        print(json.dumps(one(Path(argv[1]))))
    elif argv[0] == "report":
        rows = [json.loads(line) for line in (Path(argv[1]) / "results.jsonl").read_text().splitlines() if line.strip()]
        print(json.dumps(report(rows), indent=1))
    else:
        rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 4
        old, new, out = argv[0], argv[1], Path(argv[2]).resolve()
        run([str(Path(old).resolve()), str(Path(new).resolve())], out, rounds)


if __name__ == "__main__":  # plain Optuna's spawned workers import this module again: run once
    main(sys.argv[1:])
