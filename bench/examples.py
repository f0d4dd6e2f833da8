"""Wall time of each runnable example under examples/, run as a user runs it (issue #14: each under a minute on 2 CPU cores).

    python -m bench.examples [--out bench/results/examples]

Each example runs in a fresh temporary directory (embedded Ray, SQLite, MLflow store). Recorded
per example: wall seconds, CPU seconds of the reaped process tree (a lower bound: processes Ray
does not reap are missed) and the load average before it started, since on a shared machine the
wall time says as much about the neighbours as about the example.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ("torch_loop.py", "lightning_module.py", "hf_trainer.py")


def measure(script: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autoopt-example-") as work:
        proc = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"example": script, "ok": proc.returncode == 0, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_before": round(load, 2), "cpus": os.cpu_count(),
            "last_line": (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or [""])[-1][:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = [measure(s) for s in SCRIPTS]
    for row in rows:
        print(json.dumps(row))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "examples.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
