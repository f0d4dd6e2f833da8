"""A new user's first command: ``autoopt run spec.yaml`` in a new folder, nothing running (an
embedded Ray, a SQLite storage and a local MLflow store are made on the spot). Measures the
seconds from launching the command to its first trial's start (the trial's real start, stored by
the worker) and to the command's end, for this checkout and for a baseline checkout of autoopt
(``--baseline``: a folder holding another version's ``autoopt/``, put first on ``PYTHONPATH``),
in interleaved pairs so both see the same machine load.

    git worktree add /tmp/base <commit> && ln -s ../tasks /tmp/base/autoopt/tasks
    python -m bench.cold_cli --baseline /tmp/base --pairs 5 --out bench/results/cold-cli
    python -m bench.cold_cli --report bench/results/cold-cli

The study: the reference ``tabular`` task (size 0.25, 2 epochs), 4 trials, 2 workers, Adam with a
constant schedule, no pruner, MLflow on (``--spec``: another spec file, e.g. the README's demo).
Each run also records the CPU seconds the whole machine spent from the launch until its Ray's
processes had ended (``/proc/stat``: driver, Ray's daemons, coordinator, trial workers, report),
so run it with nothing else on the machine. ``--warm-up N`` untimed runs of each arm first fill
autoopt's cache folder (the bundled datasets, the empty MLflow store) as a user's second
study finds it. Prints and appends one JSON line per run; ``--report`` gives the per-pair ratios.
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
#: after a run, for its embedded Ray's processes to end before the CPU count is read
SETTLE_S = 3.0


def one_run(code: Path, spec: str = SPEC) -> dict[str, Any]:
    """One cold ``autoopt run`` with the autoopt found in ``code``."""
    import optuna
    import yaml

    from bench.suite_cpu import machine_cpu_s

    name = yaml.safe_load(spec)["name"]
    work = Path(tempfile.mkdtemp(prefix="cold-cli-"))
    try:
        (work / "spec.yaml").write_text(spec)
        env = {k: v for k, v in os.environ.items()
               if k not in ("AUTOOPT_STORAGE", "AUTOOPT_TRACKING_URI", "AUTOOPT_RAY_ADDRESS", "RAY_ADDRESS")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
        cpu, t0 = machine_cpu_s(), time.time()
        done = subprocess.run([sys.executable, "-m", "autoopt.cli", "run", "spec.yaml", "--json"], cwd=work,
                              env=env, capture_output=True, text=True, timeout=600)
        wall = time.time() - t0
        time.sleep(SETTLE_S)
        cpu = machine_cpu_s() - cpu
        if done.returncode != 0:
            return {"error": done.stderr[-500:], "wall_s": wall}
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{work}/autoopt-studies.db").trials
        starts = sorted(t.datetime_start.timestamp() for t in trials if t.datetime_start)
        return {"first_trial_s": round(starts[0] - t0, 3), "wall_s": round(wall, 3), "machine_cpu_s": round(cpu, 2),
                "complete": sum(t.state.name == "COMPLETE" for t in trials)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pair, this checkout against the baseline: the ratios of the first trial's start and
    of the command's wall (this / baseline), and the machine CPU seconds saved; their medians and
    ranges over the pairs where both arms ran."""
    from bench.common import spread as common_spread

    by = {(r["pair"], r["arm"]): r for r in rows if "error" not in r}
    pairs = [(by[(p, "baseline")], by[(p, "this")]) for p in sorted({r["pair"] for r in rows})
             if (p, "baseline") in by and (p, "this") in by]

    def spread(values: list[float]) -> dict[str, float] | None:
        s = common_spread(values)
        return {k: round(s[k], 3) for k in ("median", "min", "max")} if s["n"] else None

    return {
        "pairs": len(pairs),
        "first_trial_ratio": spread([t["first_trial_s"] / b["first_trial_s"] for b, t in pairs]),
        "wall_ratio": spread([t["wall_s"] / b["wall_s"] for b, t in pairs]),
        "cpu_saved_s": spread([b["machine_cpu_s"] - t["machine_cpu_s"] for b, t in pairs
                               if "machine_cpu_s" in b and "machine_cpu_s" in t]),
        **{f"{arm}_{k}": spread([r[k] for r in by.values() if r["arm"] == arm and k in r])
           for arm in ("baseline", "this") for k in ("first_trial_s", "wall_s", "machine_cpu_s")},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="a folder holding the baseline version's autoopt/")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--out", default=None, help="folder for results.jsonl")
    ap.add_argument("--spec", type=Path, default=None, help="the study spec to run (default: the 4-trial one above)")
    ap.add_argument("--warm-up", type=int, default=0, help="untimed runs of each arm first")
    ap.add_argument("--report", type=Path, default=None, help="print the per-pair summary of a results folder")
    args = ap.parse_args(argv)
    if args.report is not None:
        rows = [json.loads(line) for line in (args.report / "results.jsonl").read_text().splitlines() if line.strip()]
        print(json.dumps(report(rows), indent=1))
        return
    if args.baseline is None:
        ap.error("--baseline is required (or --report)")
    spec = args.spec.read_text() if args.spec else SPEC
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
    for _ in range(args.warm_up):
        for arm in arms:
            print(json.dumps({"warm_up": arm, **one_run(arms[arm], spec)}), flush=True)
    for pair in range(args.pairs):
        order = list(arms) if pair % 2 == 0 else list(reversed(arms))
        for arm in order:
            row = {"pair": pair, "arm": arm, "code": str(arms[arm]), "loadavg": os.getloadavg()[0],
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **one_run(arms[arm], spec)}
            line = json.dumps(row)
            print(line, flush=True)
            if out is not None:
                with out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
