"""What one zoo sweep run costs: CPU seconds of a training run per instance, on one thread.

``python -m bench.zoo_runs [--out bench/results/zoo-runs] [--families ...] [--optimizers sgd,adam,lamb]``

CPU time (``time.process_time``), not wall time, so the figure holds on a machine other
processes share; the sweep's own ``seconds`` column is wall time inside a loaded worker. Each
instance's data is built first (the sweep builds it once per worker), then one run per optimizer
at the middle of its grid. The projection multiplies the mean by the sweep's run count.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.zoo_runs", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/zoo-runs"))
    p.add_argument("--families", nargs="+", default=None)
    p.add_argument("--optimizers", default="sgd,adam,lamb")
    args = p.parse_args(argv)

    import torch

    from autoopt.recommend import sweep
    from autoopt.tasks.zoo import FAMILIES, instances, load_instance
    from autoopt.train import train

    torch.set_num_threads(1)
    optimizers = [o for o in args.optimizers.split(",") if o]
    rows = []
    warm = load_instance("tab_reg-01")  # first-call costs (imports, kernels) stay out of the figures
    train(warm, sweep.trial_config("adam", 1e-3), seed=0)
    for iid in instances(args.families):
        task = load_instance(iid)
        task.datasets()
        family = FAMILIES[iid.rpartition("-")[0]]
        for opt in optimizers:
            lr = sweep.family_lr_grid(family, opt)[sweep.LR_POINTS // 2]
            c0 = time.process_time()
            outcome = train(task, sweep.trial_config(opt, lr), seed=0)
            rows.append({"instance": iid, "family": family.family, "optimizer": opt, "lr": lr,
                         "cpu_seconds": round(time.process_time() - c0, 4), "status": outcome.status,
                         "steps": task.steps, "batch_size": task.batch_size})
        print(f"{iid:22s} " + " ".join(f"{r['optimizer']}={r['cpu_seconds']:.2f}s" for r in rows[-len(optimizers):]),
              flush=True)
    cpu = [r["cpu_seconds"] for r in rows]
    per_family = {f: round(statistics.mean(r["cpu_seconds"] for r in rows if r["family"] == f), 3)
                  for f in dict.fromkeys(r["family"] for r in rows)}
    n_runs = sweep.SweepPlan.make(args.families).total_runs
    summary = {
        "command": " ".join(["python -m bench.zoo_runs", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs_measured": len(rows),
        "cpu_seconds_mean": round(statistics.mean(cpu), 3),
        "cpu_seconds_median": round(statistics.median(cpu), 3),
        "cpu_seconds_p90": round(sorted(cpu)[int(0.9 * (len(cpu) - 1))], 3),
        "cpu_seconds_max": round(max(cpu), 3),
        "per_family_mean": per_family,
        "sweep_runs": n_runs,
        "sweep_cpu_hours": round(statistics.mean(cpu) * n_runs / 3600, 2),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo_runs.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    return summary


if __name__ == "__main__":
    main()
