"""A new user's first command: ``autoopt run spec.yaml`` in a new folder, nothing running (an
embedded Ray, a SQLite storage and a local MLflow store are made on the spot). Measures the
seconds from launching the command to its first trial's start (the trial's real start, stored by
the worker) and to the command's end, for this checkout and for a baseline checkout of autoopt
(``--baseline``: a folder holding another version's ``autoopt/``, put first on ``PYTHONPATH``),
in interleaved pairs so both see the same machine load.

    git worktree add /tmp/base <commit> && ln -s ../tasks /tmp/base/autoopt/tasks
    python -m bench.cold_cli --baseline /tmp/base --pairs 5 --out bench/results/cold-cli

The study: the reference ``tabular`` task (size 0.25, 2 epochs), 4 trials, 2 workers, Adam with a
constant schedule, no pruner, MLflow on. Prints and appends one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SPEC = """name: cold
task: tabular
task_options: {size: 0.25, epochs: 2}
n_trials: 4
workers: 2
pruner: none
space: {optimizers: [adam], schedulers: [constant]}
"""
REPO = Path(__file__).resolve().parent.parent


def one_run(code: Path) -> dict[str, Any]:
    """One cold ``autoopt run`` with the autoopt found in ``code``."""
    import optuna

    work = Path(tempfile.mkdtemp(prefix="cold-cli-"))
    try:
        (work / "spec.yaml").write_text(SPEC)
        env = {k: v for k, v in os.environ.items()
               if k not in ("AUTOOPT_STORAGE", "AUTOOPT_TRACKING_URI", "AUTOOPT_RAY_ADDRESS", "RAY_ADDRESS")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
        t0 = time.time()
        done = subprocess.run([sys.executable, "-m", "autoopt.cli", "run", "spec.yaml", "--json"], cwd=work,
                              env=env, capture_output=True, text=True, timeout=600)
        wall = time.time() - t0
        if done.returncode != 0:
            return {"error": done.stderr[-500:], "wall_s": wall}
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        trials = optuna.load_study(study_name="cold", storage=f"sqlite:///{work}/autoopt-studies.db").trials
        starts = sorted(t.datetime_start.timestamp() for t in trials if t.datetime_start)
        return {"first_trial_s": round(starts[0] - t0, 3), "wall_s": round(wall, 3),
                "complete": sum(t.state.name == "COMPLETE" for t in trials)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="a folder holding the baseline version's autoopt/")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--out", default=None, help="folder for results.jsonl")
    args = ap.parse_args(argv)
    arms = {"this": REPO, "baseline": Path(args.baseline).resolve()}
    tasks = arms["baseline"] / "autoopt" / "tasks"
    if (arms["baseline"] / "tasks").is_dir() and not tasks.exists():
        # the editable install maps autoopt.tasks to this checkout's tasks/: the baseline would
        # run this checkout's reference tasks, not its own
        ap.error(f"{tasks} is missing, so the baseline would import this checkout's tasks: "
                 f"ln -s ../tasks {tasks}")
    out = Path(args.out) / "results.jsonl" if args.out else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    for pair in range(args.pairs):
        order = list(arms) if pair % 2 == 0 else list(reversed(arms))
        for arm in order:
            row = {"pair": pair, "arm": arm, "code": str(arms[arm]), "loadavg": os.getloadavg()[0],
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **one_run(arms[arm])}
            line = json.dumps(row)
            print(line, flush=True)
            if out is not None:
                with out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
