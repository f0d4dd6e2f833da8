"""Only autoopt's 1000-trivial-trial rows of :mod:`bench.engine`, repeated: the spread of the
last-100 / first-100 ratio, which one run cannot show (the first 100 trials are a 10-s window, and
on a shared 2-core machine its speed moves the ratio by several tenths; docs/benchmarks.md).

    python -m bench.engine_long OUT_DIR [ROUNDS]

Same set-up as ``python -m bench --only engine``: Ray started once, an untimed 8-trial warm-up
study, then per round the SQLite study and the PostgreSQL study (2 workers, MLflow on, the full
default space, TPE with seed 0; each PostgreSQL study in a new database), each started once the
reports of the studies before it are drawn. Writes ``OUT_DIR/long.json``: each run, then the
median and range of the ratio per storage.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from bench.common import Context
from bench.engine import long_study
from bench.overhead import TRIVIAL, _one


def main(out: Path, rounds: int = 3, n: int = 1000) -> dict:
    from autoopt.runner import ensure_ray

    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=False, out=out, seeds=[0])
    ensure_ray(num_cpus=2)
    _one(ctx, "autoopt", TRIVIAL, {}, 8, 2, "sqlite")  # untimed warm-up, as python -m bench does
    res: dict = {"n": n, "rounds": rounds, "load_start": os.getloadavg(), "runs": []}
    try:
        for round_ in range(rounds):
            for storage in ("sqlite", "postgresql"):
                run = {"round": round_, "storage": storage, **long_study(ctx, n, storage), "load": os.getloadavg()}
                res["runs"].append(run)
                print(json.dumps(run), flush=True)
                if storage == "postgresql":  # each PostgreSQL study in a database of its own
                    ctx.renew_postgres()
    finally:
        ctx.close()
        ctx.remove_work()
    res["load_end"] = os.getloadavg()
    for storage in ("sqlite", "postgresql"):
        ratios = [r["ratio"] for r in res["runs"] if r["storage"] == storage and r["ratio"] is not None]
        if ratios:
            res[storage] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                            "met": sum(x <= 1.2 for x in ratios), "runs": len(ratios)}
    (out / "long.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":  # spawned workers import this module again: run once
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/engine-long"),
         int(sys.argv[2]) if len(sys.argv) > 2 else 3)
