"""Where the test suite's CPU goes: the machine's CPU seconds during each test (the README's
aim is a suite under 10 minutes on 2 cores, which its CPU work alone decides once both cores
are busy).

A pytest plugin reads ``/proc/stat`` (every process's user and system time, idle left out)
before and after each test and writes one row per test. Run the suite serially with nothing
else on the machine, so that each test's row is its own work: the Ray processes, drivers and
servers it starts, and whatever idle Ray the pytest process holds meanwhile.

    python -m pytest -q -p bench.suite_cpu -m "not cluster" -o cache_dir=/tmp/suite-cpu-cache
    python -m bench.suite_cpu report bench/results/suite-cpu/cpu.json

``SUITE_CPU_OUT`` names the JSON file (default ``suite-cpu.json`` in the working directory).
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from pathlib import Path

import pytest

_HZ = os.sysconf("SC_CLK_TCK")
_rows: list[dict] = []


def machine_cpu_s() -> float:
    """CPU seconds all processes have used since boot (``/proc/stat``'s first line, idle and
    iowait left out)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / _HZ


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ANN001 - a pytest hook
    cpu, wall = machine_cpu_s(), time.time()
    try:
        return (yield)
    finally:
        _rows.append({"test": item.nodeid, "cpu_s": machine_cpu_s() - cpu, "wall_s": time.time() - wall})


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001 - a pytest hook
    Path(os.environ.get("SUITE_CPU_OUT", "suite-cpu.json")).write_text(json.dumps(_rows, indent=0))


def report(rows: list[dict], top: int = 25) -> str:
    """Markdown: the whole run, each file's CPU seconds, and the costliest tests."""
    total_cpu, total_wall = sum(r["cpu_s"] for r in rows), sum(r["wall_s"] for r in rows)
    by_file: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        f = by_file[r["test"].split("::")[0]]
        f[0] += r["cpu_s"]
        f[1] += r["wall_s"]
        f[2] += 1
    lines = [f"{len(rows)} tests: {total_cpu:.0f} CPU-s in {total_wall:.0f} s of tests "
             f"(at least {total_cpu / 2 / 60:.1f} minutes on 2 cores)", "",
             "| file | CPU-s | share | wall s | tests |", "|---|---|---|---|---|"]
    for name, (cpu, wall, n) in sorted(by_file.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {name} | {cpu:.1f} | {cpu / total_cpu:.1%} | {wall:.1f} | {n} |")
    lines += ["", f"The {top} costliest tests:", "", "| test | CPU-s | wall s |", "|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["cpu_s"])[:top]:
        lines.append(f"| {r['test']} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "report":
        print("usage: python -m bench.suite_cpu report CPU_JSON", file=sys.stderr)
        return 2
    print(report(json.loads(Path(argv[1]).read_text())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
