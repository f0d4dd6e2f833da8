"""Only the 100-trivial-trial pairs of :mod:`bench.engine` (SQLite, then PostgreSQL), for repeat
runs of the storage ratios without the 1000-trial and 1-second studies.

    python -m bench.engine_pairs OUT_DIR

Same set-up as ``python -m bench --only engine``: Ray started once, an untimed 8-trial warm-up
study, then autoopt and plain Optuna back to back per storage. Writes ``OUT_DIR/pairs.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench.common import Context, ratio
from bench.overhead import TRIVIAL, _one


def main(out: Path) -> dict:
    from autoopt.runner import ensure_ray

    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=False, out=out, seeds=[0])
    ensure_ray(num_cpus=2)
    _one(ctx, "autoopt", TRIVIAL, {}, 8, 2, "sqlite")  # untimed warm-up, as python -m bench does
    res: dict = {"load_start": os.getloadavg(), "pairs": []}
    for storage in ("sqlite", "postgresql"):
        pair: dict = {"storage": storage}
        for system in ("autoopt", "optuna"):
            pair[system] = _one(ctx, system, TRIVIAL, {}, 100, 2, storage).wall_s
        pair["ratio"] = ratio(pair["autoopt"], pair["optuna"])
        res["pairs"].append(pair)
        print(json.dumps(pair), flush=True)
    res["load_end"] = os.getloadavg()
    (out / "pairs.json").write_text(json.dumps(res, indent=2))
    if hasattr(ctx, "close"):
        ctx.close()
    return res


if __name__ == "__main__":  # spawned plain-Optuna workers import this module again: run once
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/engine-pairs"))
