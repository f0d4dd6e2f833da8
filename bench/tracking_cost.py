"""What MLflow tracking costs per trial and per epoch against a real store, with no training in the way.

    python -m bench.tracking_cost [--uri sqlite:///tmp/x/mlflow.db] [--trials 5] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.tracking import StudyTracker, TrackingConfig, default_tracking_uri


def measure_overhead(
    tracking_uri: str,
    n_trials: int = 5,
    n_epochs: int = 20,
    flush_every: int = 5,
    experiment_name: str = "autoopt-overhead",
) -> dict[str, float]:
    """Seconds tracking costs per trial and per epoch against a real store (synthetic curves).

    Runs ``n_trials`` trials of ``n_epochs`` epochs through StudyTracker/TrialLogger exactly as
    the runner does (start, log_epoch each epoch, finish) without training, so the measured
    time is all tracking. The parent run is left open-ended (finished without plots).
    """
    config = TrackingConfig(tracking_uri=tracking_uri, experiment_name=experiment_name,
                            flush_every=flush_every, log_plots=False)
    tracker = StudyTracker(config)
    t0 = time.perf_counter()
    tracker.start(f"overhead-{int(time.time())}", {"n_trials": n_trials}, "none", "none",
                  {"metric": "val_accuracy"})
    study_start = time.perf_counter() - t0
    per_trial = []
    for number in range(n_trials):
        logger = tracker.trial_logger(number, {"optimizer": "adamw", "adamw.lr": 1e-3},
                                      {"optimizer": "adamw", "optimizer_params": {"lr": 1e-3},
                                       "scheduler": "cosine", "scheduler_params": {},
                                       "warmup_fraction": 0.0, "grad_clip": None, "batch_size": 32})
        start = time.perf_counter()
        logger.start("localhost", "cpu")
        history = []
        for epoch in range(1, n_epochs + 1):
            rec = EpochRecord(epoch, 1.0 / epoch, 1 - 1.0 / epoch, 1e-3, 0.01)
            history.append(rec)
            logger.log_epoch(rec)
        logger.finish(TrialOutcome("complete", history[-1].val_metric, history, seconds=0.2))
        per_trial.append(time.perf_counter() - start)
    if tracker.parent_run_id:
        tracker._conn.call("end parent run", "set_terminated", tracker.parent_run_id, status="FINISHED")
    mean = sum(per_trial) / len(per_trial)
    return {
        "study_start_seconds": study_start,
        "seconds_per_trial": mean,
        "seconds_per_epoch": mean / n_epochs,
        "max_seconds_per_trial": max(per_trial),
        "n_trials": n_trials,
        "n_epochs": n_epochs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tracking_cost", description=__doc__.split("\n")[0])
    p.add_argument("--uri", default=None, help="tracking store (default: a fresh local SQLite store)")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args(argv)
    uri = args.uri or default_tracking_uri(tempfile.mkdtemp(prefix="autoopt-tracking-cost-"))
    print(json.dumps(measure_overhead(uri, n_trials=args.trials, n_epochs=args.epochs), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
