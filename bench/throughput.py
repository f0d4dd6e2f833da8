"""Trial throughput on trivial trials, autoopt against Ray Tune as its experts run it (issue #13's
fair race, for the headline's throughput row that issue #7 measured with Tune starting a process
per trial).

100 trials of ``bench.trivial:TrivialTask`` (a 4->1 linear model, one batch, one epoch: what is
left is each system's cost per trial), 2 workers, the default space, TPE with the study's seed,
no pruning (one-epoch trials). The arms:

* ``autoopt``: as shipped, SQLite storage and MLflow on;
* ``autoopt_notrack``: SQLite storage, MLflow off (the same work as Tune without loggers);
* ``tune``: ``Tuner`` with ``reuse_actors=True``, ``max_concurrent_trials=2``, Tune's CSV, JSON
  and TensorBoard loggers off (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``), OptunaSearch in memory
  (its default) over the same define-by-run space with the same sampler and seed, the FIFO
  scheduler, verbose 0;
* ``tune_mlflow``: the same with Ray's ``MLflowLoggerCallback`` into a SQLite MLflow store, the
  counterpart of ``autoopt``.

Each arm's clock runs around the call a user makes (``autoopt.run`` / ``Tuner.fit``), so Tune's
actor start and autoopt's coordinator (kept from the driver's previous study, as a driver's later
studies get it) are inside it. Each arm runs in a driver process of its own on a local Ray of its
own (2 CPUs), as a user's script runs one system: an untimed study of 4 trials first (the imports),
then its seeds one after another. Sharing one Ray between the systems would not be fair to
either: on 2 CPUs, Ray ends idle worker processes beyond two, so a Tune fit's actors evict
autoopt's warm trial workers and autoopt's next study starts cold. The seeds go in two blocks,
the arms in one order for the first and the reverse for the second, against the machine's drift.

    python -m bench.throughput --out bench/results/throughput-fair --seeds 5
    python -m bench.throughput --report bench/results/throughput-fair
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.common import fmt, fmt_spread, ratio, spread, table

TASK = "bench.trivial:TrivialTask"
ARMS = ("autoopt", "autoopt_notrack", "tune", "tune_mlflow")
#: each autoopt arm's Tune counterpart: the same work, MLflow on or off
PAIRS = (("autoopt", "tune_mlflow"), ("autoopt_notrack", "tune"))
TARGET = 3.0  # the headline's row: at least 3x Tune's trial throughput


def run_tune_expert(n_trials: int, workers: int, seed: int, workdir: Path, tracking_uri: str | None) -> dict[str, Any]:
    """One ``Tuner.fit`` as Tune's experts configure it (see the module docstring): the race's Tune
    arm with the FIFO scheduler that matches autoopt's ``pruner: none``."""
    from bench.race import run_tune_fair

    r = run_tune_fair(TASK, {}, {}, seed=seed, n_trials=n_trials, workers=workers, workdir=workdir, pruner="none",
                      tracking_uri=tracking_uri)
    return _arm_row(r)


def _arm_row(r) -> dict[str, Any]:
    """The bench's row from either system's ``SystemRun``: its wall time and its trial window."""
    return {"wall_s": r.wall_s, "trials": len(r.events), "errors": sum(1 for e in r.events if e.state == "failed"),
            "first_start_s": r.extra.get("first_trial_start_s"),
            "last_end_s": max((e.t_end for e in r.events), default=None)}


def run_autoopt_arm(n_trials: int, workers: int, seed: int, storage: str, tracking_uri: str | None) -> dict[str, Any]:
    from bench.systems import run_autoopt

    r = run_autoopt(TASK, {}, {}, seed=seed, n_trials=n_trials, workers=workers, storage=storage,
                    tracking_uri=tracking_uri, pruner="none")
    return _arm_row(r)


def one(arm: str, seed: int, n_trials: int, workers: int, work: Path) -> dict[str, Any]:
    mlflow_uri = f"sqlite:///{(work / f'mlflow-{arm}.db').resolve()}"
    if arm.startswith("autoopt"):
        out = run_autoopt_arm(n_trials, workers, seed, f"sqlite:///{(work / 'autoopt.db').resolve()}",
                              mlflow_uri if arm == "autoopt" else None)
    else:
        out = run_tune_expert(n_trials, workers, seed, work, mlflow_uri if arm == "tune_mlflow" else None)
    window = (out["last_end_s"] - out["first_start_s"]) if out["first_start_s"] is not None and out["last_end_s"] else None
    return {"arm": arm, "seed": seed, **out, "trials_per_s": out["trials"] / out["wall_s"],
            "trials_per_s_window": out["trials"] / window if window else None, "loadavg": os.getloadavg()}


def _mlflow_store(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments()  # a user's store exists before the study


def run_arm(arm: str, seeds: list[int], out: Path, n_trials: int, workers: int) -> None:
    """One arm's driver: its own local Ray, an untimed warm-up study, then ``seeds`` in turn;
    each study's row is appended to ``out/throughput.jsonl``."""
    from bench.common import start_ray

    work = out / "work"
    start_ray(num_cpus=workers)
    one(arm, 1000, 4, workers, work)  # untimed: the system imports what it needs
    for seed in seeds:
        row = one(arm, seed, n_trials, workers, work)
        with (out / "throughput.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"seed {seed} {arm:16s} wall {row['wall_s']:.2f} s  {row['trials']} trials  "
              f"{row['trials_per_s']:.2f}/s  errors {row['errors']}", flush=True)


def run(out: Path, seeds: int, n_trials: int, workers: int) -> list[dict[str, Any]]:
    import subprocess

    from bench.common import REPO

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ["AUTOOPT_RECOMMEND_DIR"] = str((out / "work" / "recommend").resolve())
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    for arm in ARMS:
        _mlflow_store(f"sqlite:///{(work / f'mlflow-{arm}.db').resolve()}")
    half = (seeds + 1) // 2
    blocks = [(list(range(half)), ARMS), (list(range(half, seeds)), ARMS[::-1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for block, order in blocks:
        for arm in order if block else ():
            subprocess.run([sys.executable, "-m", "bench.throughput", "--arm", arm, "--seed-list",
                            ",".join(map(str, block)), "--out", str(out.resolve()), "--trials", str(n_trials),
                            "--workers", str(workers)], check=True, env=env, cwd=REPO)
    return _rows(out)


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "throughput.jsonl").read_text().splitlines() if line.strip()]


def report(rows: list[dict[str, Any]]) -> str:
    """Medians per arm, and per pair the throughput ratio seed by seed (autoopt / Tune)."""
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["arm"], {})[r["seed"]] = r
    arms = [a for a in ARMS if a in by]
    parts = [table(["arm", "seeds", "wall s (median, min-max)", "trials/s, whole call", "trials/s, first start to last end",
                    "failed trials"],
                   [[a, len(by[a]), fmt_spread(spread(r["wall_s"] for r in by[a].values())),
                     fmt_spread(spread(r["trials_per_s"] for r in by[a].values())),
                     fmt_spread(spread(r["trials_per_s_window"] for r in by[a].values())),
                     sum(r["errors"] for r in by[a].values())] for a in arms])]
    prow = []
    for a, t in PAIRS:
        seeds = sorted(set(by.get(a, {})) & set(by.get(t, {})))
        if not seeds:
            continue
        whole = [ratio(by[a][s]["trials_per_s"], by[t][s]["trials_per_s"]) for s in seeds]
        win = [ratio(by[a][s]["trials_per_s_window"], by[t][s]["trials_per_s_window"]) for s in seeds]
        med = spread(whole)["median"]
        prow.append([f"{a} / {t}", len(seeds), fmt_spread(spread(whole), 2), fmt_spread(spread(win), 2),
                     "yes" if med is not None and med >= TARGET else "no"])
    parts.append(table(["pair (throughput ratio, per seed)", "seeds", "whole call", "trial window",
                        f"met (median whole call >= {TARGET:g}x)?"], prow))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report", type=Path, help="print the report of an earlier run's folder")
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm's driver (run() starts these)
    p.add_argument("--seed-list", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.report:
        print(report(_rows(a.report)))
        return 0
    if a.arm:
        run_arm(a.arm, [int(s) for s in a.seed_list.split(",")], a.out, a.trials, a.workers)
        return 0
    if a.out is None:
        p.error("--out or --report is required")
    a.out.mkdir(parents=True, exist_ok=True)
    rows = run(a.out, a.seeds, a.trials, a.workers)
    text = report(rows)
    (a.out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
