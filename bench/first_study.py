"""A driver's real first study: a new driver process (a new Ray job, so its trial workers start
cold) on a Ray that is already running, against plain Optuna's first study (2 spawned processes
sharing one SQLite file, no MLflow). 48 trials of ``bench.trivial:SleepTask`` (1 s), 2 workers,
both on the full default space with TPE, seed 0 and no pruner (one-epoch trials).

For autoopt it also says when the study's coordinator was created and ready, against when the
first trial started: whether the coordinator's start is on the first trial's path (it is in
``bench/engine.py``'s "new coordinator" row, whose trial workers are already warm).

    ray start --head --port=6390 --node-ip-address=127.0.0.1 --num-cpus=2 --include-dashboard=false
    python -m bench.first_study autoopt 127.0.0.1:6390 sqlite:////tmp/fs/a.db sqlite:////tmp/fs/mlflow.db
    python -m bench.first_study optuna - sqlite:////tmp/fs/o.db
    python -m bench.first_study pairs OLD_TREE NEW_TREE 127.0.0.1:6390 OUT 4   (two commits, see pairs)

(with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and the head's ``RAY_AUTH_*`` in both processes'
environment and ``PYTHONPATH`` holding this repository). Prints one JSON line; times in seconds
from the call that runs the study.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

N_TRIALS, WORKERS = 48, 2


def _timeline(storage: str, name: str, t0: float, wall: float) -> dict[str, Any]:
    import optuna

    trials = optuna.load_study(study_name=name, storage=storage).trials
    done = [t for t in trials if t.datetime_start and t.datetime_complete]
    starts = sorted(t.datetime_start.timestamp() for t in trials if t.datetime_start)
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / WORKERS
    return {"trials": len(done), "first_trial_start": starts[0] - t0, "wall": wall,
            "trial_seconds_per_worker": busy, "overhead_share": 1 - busy / wall}


def run_autoopt(address: str, storage: str, tracking_uri: str) -> dict[str, Any]:
    import autoopt
    import autoopt.runner as runner

    marks: dict[str, float] = {}
    make, start_tracking = runner.StudyRunner._make_coordinator, runner.StudyRunner._start_tracking

    def timed_make(self: Any) -> Any:
        marks.setdefault("coordinator_created", time.time())
        return make(self)

    def timed_start_tracking(self: Any) -> Any:  # runs once the coordinator has answered
        marks.setdefault("coordinator_ready", time.time())
        return start_tracking(self)

    runner.StudyRunner._make_coordinator, runner.StudyRunner._start_tracking = timed_make, timed_start_tracking
    name = f"first-{uuid.uuid4().hex[:6]}"
    from bench.overhead import SLEEP, SPACE

    # the same task, space, sampler (TPE), seed and pruner (none: one-epoch trials) as plain Optuna's
    spec = autoopt.StudySpec(name=name, task=SLEEP, task_options={"sleep_s": 1.0}, n_trials=N_TRIALS, workers=WORKERS,
                             storage=storage, tracking=True, tracking_uri=tracking_uri, seed=0, ray_address=address,
                             space=SPACE, sampler="tpe", pruner="none", warm_start={"enabled": False})
    t0 = time.time()
    result = autoopt.run(spec)
    out = _timeline(storage, name, t0, time.time() - t0)
    return {"system": "autoopt", **{k: v - t0 for k, v in marks.items()}, **out,
            "finished_trial_runs": _finished_trial_runs(tracking_uri, result.mlflow_parent_run_id)}


def _finished_trial_runs(tracking_uri: str, parent_run_id: str | None) -> int | None:
    """The study's trial runs MLflow holds as FINISHED: every trial's run made and ended."""
    if parent_run_id is None:
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment_id], "tags.`autoopt.role` = 'trial'", max_results=1000)
    return sum(1 for r in runs if r.info.status == "FINISHED")


def run_optuna(storage: str) -> dict[str, Any]:
    from bench.overhead import SLEEP, SPACE
    from bench.systems import run_optuna as plain

    t0 = time.time()
    r = plain(SLEEP, {"sleep_s": 1.0}, SPACE, seed=0, n_trials=N_TRIALS, workers=WORKERS, storage=storage)
    return {"system": "optuna", **_timeline(storage, r.extra["study"], t0, time.time() - t0)}


def pairs(trees: list[str], address: str, out: str, rounds: int) -> None:
    """autoopt's first study from each of ``trees`` (checkouts of two commits), interleaved for
    ``rounds`` rounds with the order alternating: each study a new driver process whose imports,
    and its Ray workers' (Ray hands a worker the driver's ``sys.path``), come from its tree. One
    JSON line per study, with its tree, in ``out/results.jsonl``.

        python -m bench.first_study pairs OLD_TREE NEW_TREE 127.0.0.1:6390 OUT 4
    """
    import os
    import subprocess
    from pathlib import Path

    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            tag = uuid.uuid4().hex[:6]
            env = {**os.environ, "PYTHONPATH": tree}
            line = subprocess.run([sys.executable, "-m", "bench.first_study", "autoopt", address,
                                   f"sqlite:///{folder / f'a-{tag}.db'}", f"sqlite:///{folder / 'mlflow.db'}"],
                                  cwd=tree, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            row = {"tree": tree, "round": r, "loadavg": os.getloadavg(), **json.loads(line)}
            with (folder / "results.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "pairs":
        old, new, address, out, rounds = argv[1:]
        pairs([old, new], address, out, int(rounds))
        return
    system, address, storage, *rest = argv
    out = run_autoopt(address, storage, rest[0]) if system == "autoopt" else run_optuna(storage)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
