"""``python -m bench.profile [--trials N] [--sleep S] [--workers W]``: where an autoopt study's
wall time goes, phase by phase (driver side), for 1-second trials with MLflow and SQLite on.

Times each StudyRunner phase by wrapping its methods, and cProfiles the study's finish (report
plots + meta-dataset rows), which is what a short study of fast trials pays most for.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--sleep", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import start_ray

    work = Path(tempfile.mkdtemp(prefix="autoopt-profile-"))
    os.environ["AUTOOPT_RECOMMEND_DIR"] = str(work / "recommend")
    start_ray(num_cpus=max(os.cpu_count() or 2, args.workers))

    import autoopt
    from autoopt import runner as R
    from autoopt.core import record
    from autoopt import tracking as T

    phases: dict[str, float] = {}
    profiling: dict[str, cProfile.Profile] = {}  # set after the warm-up

    def timed(cls, name, label, prof=False):
        orig = getattr(cls, name)

        def wrapper(self, *a, **k):
            t0 = time.perf_counter()
            pr = profiling.get("finish") if prof else None
            if pr:
                pr.enable()
            try:
                return orig(self, *a, **k)
            finally:
                if pr:
                    pr.disable()
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t0
        setattr(cls, name, wrapper)

    timed(R.StudyRunner, "_make_coordinator", "coordinator actor: create")
    timed(R.StudyRunner, "_start_tracking", "MLflow: experiment + parent run")
    timed(R.StudyRunner, "_warm_start", "warm start (off)")
    timed(R.StudyRunner, "_finish", "finish: report plots, best config, meta rows", prof=True)
    timed(T.StudyTracker, "finish", "  of which MLflow study summary + plots")

    def spec(name, n):
        return autoopt.StudySpec(name=name, task="bench.trivial:SleepTask", task_options={"sleep_s": args.sleep},
                                 n_trials=n, workers=args.workers, storage=f"sqlite:///{work}/s.db",
                                 tracking_uri=f"sqlite:///{work}/mlflow.db",
                                 warm_start={"enabled": False})  # the engine's path, as before the default

    autoopt.run(spec("warm-up", 2 * args.workers))  # workers import torch/MLflow outside the timing
    phases.clear()
    profiling["finish"] = finish_prof = cProfile.Profile()
    t0 = time.perf_counter()
    res = autoopt.run(spec("profile", args.trials))
    wall = time.perf_counter() - t0
    import optuna

    study = res.study
    trial_s = sum(t.user_attrs.get(record.SECONDS) or 0 for t in study.trials)
    phases["training (sum of trial seconds / workers)"] = trial_s / args.workers
    print(f"{args.trials} trials of {args.sleep:g} s, {args.workers} workers: wall {wall:.1f} s")
    print("| phase | seconds | share of wall |\n|---|---|---|")
    for k, v in phases.items():
        print(f"| {k} | {v:.2f} | {100 * v / wall:.1f}% |")
    rest = wall - sum(v for k, v in phases.items() if not k.startswith("  "))
    print(f"| dispatch loop beyond training (ask/tell, Ray, MLflow per trial) | {rest:.2f} | {100 * rest / wall:.1f}% |")
    s = io.StringIO()
    pstats.Stats(finish_prof, stream=s).sort_stats("cumulative").print_stats(18)
    print("\ncProfile of the finish phase (cumulative):")
    print("\n".join(s.getvalue().splitlines()[:40]))
    del optuna
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
