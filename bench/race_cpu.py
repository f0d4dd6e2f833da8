"""Where the CPU goes in the race's own-driver studies: autoopt against Ray Tune (issue #13).

The own-driver race (``bench.race``'s ``*_fresh`` arms) found autoopt and Tune tied on cv-big,
each study in a new driver. This asks why: while each study runs, a sampler process reads every
process's CPU time (user + system) every 0.2 s and charges the difference to the process's title
(trial workers, autoopt's coordinator, the driver, Ray's own daemons, the rest). On a machine whose
cores the trial workers fill, a system can only be faster by spending less CPU outside training,
or by training less.

    python -m bench.race_cpu run --out bench/results/race-cpu --seeds 4
    python -m bench.race_cpu report --out bench/results/race-cpu

The studies are ``bench.race``'s own (``race.one``: the same task, space, seeds, TPE and rungs),
written under ``OUT/race/`` as there; ``OUT/cpu-<system>-<seed>.json`` holds each study's CPU
seconds by process title, ``OUT/timeline-cpu-<system>-<seed>.json`` the same by kind of process in
each second of the study. A diagnosis, not a timing benchmark: the sampler costs about 3% of a
core itself, in both arms alike.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SYSTEMS = ("autoopt_asha_fresh", "tune_asha_fresh")
SAMPLER_LEAD_S = 1.5  # the sampler starts this long before the study's call
START_S = 16  # the report's timeline: the first seconds, where both cold starts are
#: process titles, by what they are in the study (first match wins; a gone driver keeps "python")
CATEGORIES = (
    ("trial workers", ("ray::IDLE", "ray::run_trial", "ray::prepare_worker", "ray::Implicit")),
    ("coordinator", ("ray::StudyCoord",)),
    ("driver", ("-m bench.race study",)),
    ("Ray daemons", ("raylet", "gcs_server", "log_monitor", "ray::DashboardAgent", "dashboard.py", "runtime_env")),
    ("this benchmark", ("bench.race_cpu",)),
)


def category(title: str) -> str:
    if title.strip() == "python":  # the driver, read after it exited (its command line is gone)
        return "driver"
    for name, marks in CATEGORIES:
        if any(m in title for m in marks):
            return name
    return "other"


def sample(out: Path, stop: Path, every_s: float = 0.2) -> None:
    """CPU seconds each process spends from now until ``stop`` exists, summed by its last title."""
    import ray  # noqa: F401 - puts Ray's own psutil on the path
    import psutil

    base: dict = {}
    last: dict = {}
    title: dict = {}
    t0 = time.time()
    #: CPU seconds by kind of process in each whole second since the start (when, not only how much)
    timeline: dict[int, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))

    def scan(first: bool) -> None:
        second = int(time.time() - t0)
        for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_times", "create_time"]):
            ct = p.info["cpu_times"]
            if ct is None:
                continue
            key = (p.info["pid"], p.info["create_time"])
            cpu = ct.user + ct.system
            if first:
                base[key] = cpu
            title[key] = " ".join(p.info["cmdline"] or [])[:120] or (p.info["name"] or "?")
            if not first:
                timeline[second][category(title[key])] += cpu - last.get(key, 0.0)
            last[key] = cpu

    scan(True)
    while not stop.exists():
        time.sleep(every_s)
        scan(False)
    by_title: dict[str, float] = collections.defaultdict(float)
    for key, cpu in last.items():
        if cpu - base.get(key, 0.0) >= 0.01:
            by_title[title[key]] += cpu - base.get(key, 0.0)
    out.write_text(json.dumps(sorted(by_title.items(), key=lambda kv: -kv[1]), indent=0))
    (out.parent / f"timeline-{out.name}").write_text(json.dumps({k: dict(v) for k, v in sorted(timeline.items())}))


def cmd_run(args: argparse.Namespace) -> int:
    import bench.race as race

    out = args.out.resolve()
    race.race_environment(out)  # as `bench.race run` runs its studies, warm-up included
    race.start_race_ray(out)
    systems = tuple(args.systems)
    for seed in range(args.seeds):
        k = seed % len(systems)  # none always first
        for system in systems[k:] + systems[:k]:
            cpu = out / f"cpu-{system}-{seed}.json"
            if cpu.exists():
                continue
            stop = out / "work" / f"stop-{system}-{seed}"
            stop.unlink(missing_ok=True)
            sampler = subprocess.Popen([sys.executable, "-m", "bench.race_cpu", "sample", str(cpu), str(stop)],
                                       env={**os.environ, "PYTHONPATH": str(race.REPO)})
            time.sleep(SAMPLER_LEAD_S)  # its first scan is the baseline
            (out / "race" / f"{system}__{args.task}__{seed}.json").unlink(missing_ok=True)
            race.one("race", system, args.task, seed, out, args.workers)
            stop.touch()
            sampler.wait()
    return 0


def summarize(out: Path, task: str) -> tuple[str, dict]:
    rows: dict[int, dict[str, dict[str, float]]] = collections.defaultdict(dict)
    for path in sorted(out.glob("cpu-*.json")):
        system, seed = path.stem[len("cpu-"):].rsplit("-", 1)
        run = out / "race" / f"{system}__{task}__{seed}.json"
        if not run.exists():
            continue
        cats: dict[str, float] = collections.defaultdict(float)
        for title, cpu in json.loads(path.read_text()):
            cats[category(title)] += cpu
        study = json.loads(run.read_text())
        cats["wall"] = study["wall_s"]
        cats["epochs"] = sum(int(e.get("epochs") or 0) for e in study.get("events", []))
        rows[int(seed)][system] = dict(cats)
    cols = ["wall", "trial workers", "coordinator", "driver", "Ray daemons", "other"]
    lines = ["| seed | system | study wall (s) | epochs | " + " | ".join(f"{c} (CPU-s)" for c in cols[1:])
             + " | trial workers per epoch (CPU-s) |", "|---:|---|---:|---:|" + "---:|" * len(cols)]
    ratios: dict[str, list[float]] = collections.defaultdict(list)
    for seed in sorted(rows):
        for system in sorted(rows[seed]):
            r = rows[seed][system]
            lines.append(f"| {seed} | {system} | {r['wall']:.1f} | {r['epochs']:.0f} | "
                         + " | ".join(f"{r.get(c, 0.0):.1f}" for c in cols[1:])
                         + f" | {r.get('trial workers', 0.0) / max(r['epochs'], 1):.2f} |")
        if all(s in rows[seed] for s in SYSTEMS):
            a, t = (rows[seed][s] for s in SYSTEMS)
            for c in ("wall", "epochs", "trial workers"):
                ratios[c].append(a.get(c, 0.0) / t[c])
            ratios["trial workers per epoch"].append((a["trial workers"] / a["epochs"]) / (t["trial workers"] / t["epochs"]))
            outside = [sum(r.get(c, 0.0) for c in cols[2:]) for r in (a, t)]
            ratios["outside trial workers"].append(outside[0] / outside[1])
    summary = {c: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
               for c, v in ratios.items()}
    lines += ["", "autoopt / Tune, per seed (median, range): " + "; ".join(
        f"{c} {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}, {s['n']} seeds)" for c, s in summary.items())]
    start = _start_timeline(out, cols[1:])
    if start:
        lines += ["", f"CPU-s by kind of process in each of the first {START_S} seconds after the sampler's start "
                      f"(the study's call comes {SAMPLER_LEAD_S} s after it), median over seeds:", ""]
        lines += ["| system | kind | " + " | ".join(str(i) for i in range(START_S)) + " |",
                  "|---|---|" + "---:|" * START_S]
        for system, by_kind in start.items():
            lines += [f"| {system} | {kind} | " + " | ".join(f"{x:.1f}" for x in xs) + " |"
                      for kind, xs in by_kind.items() if any(x >= 0.05 for x in xs)]
    return "\n".join(lines) + "\n", {"rows": rows, "ratios": summary, "start": start}


def _start_timeline(out: Path, kinds: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per system and kind of process, the median over seeds of the CPU seconds in each of the
    first ``START_S`` seconds: what competes with the cold trial workers while they start."""
    per: dict[str, dict[str, list[list[float]]]] = {}
    for path in sorted(out.glob("timeline-cpu-*.json")):
        system = path.stem[len("timeline-cpu-"):].rsplit("-", 1)[0]
        seconds = {int(k): v for k, v in json.loads(path.read_text()).items()}
        for kind in kinds:
            per.setdefault(system, {}).setdefault(kind, []).append(
                [seconds.get(i, {}).get(kind, 0.0) for i in range(START_S)])
    return {system: {kind: [statistics.median(col) for col in zip(*runs)] for kind, runs in by_kind.items()}
            for system, by_kind in per.items()}


def cmd_report(args: argparse.Namespace) -> int:
    text, data = summarize(args.out, args.task)
    (args.out / "summary.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(data, indent=1))
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    import bench.race as race

    p = argparse.ArgumentParser(prog="python -m bench.race_cpu", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the own-driver studies with the sampler beside each")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seeds", type=int, default=4)
    r.add_argument("--task", default="cv-big")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=sorted(race.FRESH_SYSTEMS),
                   help="own-driver arms of bench.race (default: autoopt's and Tune's, cold)")
    rep = sub.add_parser("report", help="CPU seconds by kind of process, per study")
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--task", default="cv-big")
    s = sub.add_parser("sample", help=argparse.SUPPRESS)
    s.add_argument("out", type=Path)
    s.add_argument("stop", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "sample":
        sample(args.out, args.stop)
        return 0
    return {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
