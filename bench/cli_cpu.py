"""Where a small `autoopt run` spends its CPU: wall time and CPU seconds per process kind.

Runs ``autoopt run SPEC --json`` in a fresh folder (a new SQLite study, a new MLflow store, an
embedded Ray), ``--repeat`` times, sampling every process's CPU time from ``/proc`` every 0.1 s.
On 2 cores CPU seconds, not wall time, decide how many such studies (the test suite's end-to-end
tests, a user's first runs) fit in a minute.

    python -m bench.cli_cpu SPEC [--repeat 3]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _kind(comm: str, cmdline: str) -> str:
    """A process's kind: Ray workers by the task or actor they ran (ray::IDLE until then)."""
    if comm.startswith("ray::"):
        return comm
    words = cmdline.split()
    if not words:
        return comm
    if "-m" in words[:3]:
        return "python -m " + words[words.index("-m") + 1]
    return " ".join(os.path.basename(w) for w in words[:2])


def watch(cmd: list[str], cwd: Path) -> tuple[float, dict[str, float]]:
    """(wall seconds, CPU seconds per process kind) of ``cmd`` and every process started meanwhile."""
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[int, tuple[float, str]] = {}
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_pid = proc.pid

    def scan() -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) < first_pid:  # started before the command
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
            fields = stat.rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            before, kind = seen.get(int(entry), (0.0, ""))
            now = _kind(comm, cmdline)
            # a Ray worker is named by the first work it took (its title says ray::IDLE until then)
            if not kind or (now.startswith("ray::") and not kind.startswith("ray::")) or kind == "ray::IDLE":
                kind = now
            seen[int(entry)] = (max(before, cpu), kind)

    while proc.poll() is None:
        scan()
        time.sleep(0.1)
    scan()
    by_kind: dict[str, float] = collections.defaultdict(float)
    for cpu, kind in seen.values():
        by_kind[kind] += cpu
    return time.time() - start, dict(by_kind)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    autoopt = shutil.which("autoopt") or str(Path(sys.executable).with_name("autoopt"))
    walls, totals = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="cli-cpu-") as folder:
            shutil.copy(args.spec, Path(folder) / args.spec.name)
            wall, by_kind = watch([autoopt, "run", args.spec.name, "--json"], Path(folder))
        total = sum(by_kind.values())
        walls.append(wall)
        totals.append(total)
        top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]) if v >= 0.3)
        print(f"run {i + 1}: wall {wall:.1f} s, CPU {total:.1f} s ({top}); load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"wall {min(walls):.1f}-{max(walls):.1f} s, CPU {min(totals):.1f}-{max(totals):.1f} s over {args.repeat} runs")


if __name__ == "__main__":
    main()
