"""``python -m bench [--quick] [--only NAME ...] [--out bench/results]``: run the comparisons.

Each comparison writes ``<out>/<name>.json`` and ``<out>/<name>.png``; ``<out>/summary.md``
holds every table, the command and the machine. One local Ray serves the whole run, so every
system is measured side by side under the same load.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

COMPARISONS = {
    "time_to_target": "bench.time_to_target",
    "overhead": "bench.overhead",
    "engine": "bench.engine",
    "pruning": "bench.pruning",
    "scaling": "bench.scaling",
    "recommender": "bench.recommender",
    "cli_latency": "bench.cli_latency",
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small budgets: under 10 minutes on 2 CPU cores")
    p.add_argument("--only", nargs="+", choices=list(COMPARISONS), metavar="NAME",
                   help=f"run only these comparisons ({', '.join(COMPARISONS)})")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder (default bench/results)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per task (default: 1 quick, 3 full)")
    p.add_argument("--tasks", nargs="+", default=None, help="reference tasks for time-to-target and pruning")
    p.add_argument("--workers", type=int, default=2, help="parallel trials for every system (default 2)")
    p.add_argument("--trials", type=int, default=None, help="override every study's trial budget (smoke tests)")
    p.add_argument("--replot", action="store_true",
                   help="redraw <out>/*.png and summary.md from the JSON of an earlier run (runs nothing)")
    p.add_argument("--keep-work", action="store_true", help="keep <out>/work (the studies' databases and MLflow stores)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    from bench.common import Context, machine, start_ray, write_json

    names = args.only or list(COMPARISONS)
    if args.replot:
        return replot(args.out.resolve(), names)
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    ctx = Context(quick=args.quick, out=args.out.resolve(), seeds=seeds, workers=args.workers)
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.tasks = args.tasks
    ctx.trials = args.trials
    # finished studies feed the recommender's user meta-dataset: keep the benchmark's rows out of
    # the user's (and warm starts on the shipped model only); Ray workers inherit this
    os.environ["AUTOOPT_RECOMMEND_DIR"] = str(ctx.work / "recommend")
    info = machine()
    import torch

    gpus = torch.cuda.device_count()
    # the CPU run oversubscribes to 4 slots so the scaling comparison can ask for 4 workers; every
    # other comparison caps its own concurrency at --workers
    info["ray_init_s"] = start_ray(num_cpus=max(os.cpu_count() or 2, 4, args.workers), num_gpus=gpus or None)
    # one untimed trivial study first: Ray's worker processes import torch, autoopt and MLflow once here,
    # not inside whichever system happens to be measured first
    from bench.systems import run_autoopt

    t0 = time.time()
    run_autoopt("bench.trivial:TrivialTask", {}, {}, seed=0, n_trials=8, workers=4, storage=ctx.sqlite("warm-up"),
                tracking_uri=ctx.mlflow("warm-up"), system="warm-up")
    info["warm_up_s"] = time.time() - t0
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    ctx.note(f"{command}: {', '.join(names)}; seeds {seeds}; Ray up in {info['ray_init_s']:.1f} s")
    results: dict[str, dict] = {}
    started = time.time()
    try:
        for name in names:
            t0 = time.time()
            ctx.note(f"== {name}")
            try:
                results[name] = importlib.import_module(COMPARISONS[name]).run(ctx)
            except Exception as exc:  # noqa: BLE001 - one broken comparison must not lose the others
                import traceback

                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["seconds"] = time.time() - t0
            ctx.note(f"== {name} done in {results[name]['seconds']:.0f} s")
    finally:
        ctx.close()
        if not args.keep_work:
            ctx.remove_work()
        info["loadavg_end"] = os.getloadavg()
        info["total_s"] = time.time() - started
        write_json(ctx.out / "run.json", {"command": command, "machine": info, "log": ctx.log,
                                          "seconds": {k: v.get("seconds") for k, v in results.items()}})
        if ctx.runs:  # every study's trials (finish time, value, state, epochs): re-analysable later
            write_json(ctx.out / "studies.json", {k: r.to_dict() for k, r in ctx.runs.items()})
        write_summary(ctx.out, command, info, results)
    return 0


def write_summary(out: Path, command: str, info: dict, results: dict[str, dict]) -> None:
    def load(x):
        return "/".join(f"{v:.1f}" for v in x) if x else "-"

    machine = (f"{info.get('date')}; {info.get('cpus')} CPUs ({info.get('platform')}), GPU: {info.get('cuda') or 'none'}; "
               f"Python {info.get('python')}, torch {info.get('torch')}, optuna {info.get('optuna')}, ray {info.get('ray')}, "
               f"mlflow {info.get('mlflow')}; load average {load(info.get('loadavg_start'))} at start, "
               f"{load(info.get('loadavg_end'))} at end; Ray start {info.get('ray_init_s', 0):.1f} s, untimed warm-up "
               f"{info.get('warm_up_s', 0):.1f} s, comparisons {info.get('total_s', 0):.0f} s")
    lines = [f"# Benchmark results\n\nCommand: `{command}`\n", f"Machine: {machine}\n"]
    for name, res in results.items():
        lines.append(f"## {name}\n")
        lines.append(res.get("markdown") or f"error: {res.get('error')}")
        lines.append("")
    (out / "summary.md").write_text("\n".join(lines))


def replot(out: Path, names: list[str]) -> int:
    """Plots and tables again from ``<out>/*.json`` (after a change to a plot or a table)."""
    import json

    from bench.common import Context

    run = json.loads((out / "run.json").read_text())
    ctx = Context(quick=True, out=out, seeds=[])
    results = {}
    for name in names:
        path = out / f"{name}.json"
        if name == "scaling" and not path.exists():
            path = out / "scaling_gpu.json"
        if not path.exists():
            continue
        mod = importlib.import_module(COMPARISONS[name])
        res = json.loads(path.read_text())
        mod._plot(ctx, res)
        res["markdown"] = mod.markdown(res)
        results[name] = res
    write_summary(out, run["command"], run["machine"], results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
