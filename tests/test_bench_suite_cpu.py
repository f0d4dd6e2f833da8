"""bench/suite_cpu.py: a pytest plugin that charges the machine's CPU seconds to each test, and
its per-file report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.suite_cpu import report

ROOT = Path(__file__).resolve().parents[1]


def test_the_plugin_charges_each_test_the_cpu_it_used(tmp_path):
    (tmp_path / "test_work.py").write_text(
        "import time\n"
        "def test_busy():\n"
        "    end = time.process_time() + 0.6\n"
        "    while time.process_time() < end:\n"
        "        pass\n"
        "def test_child_busy():\n"
        "    import subprocess, sys\n"
        "    subprocess.run([sys.executable, '-c', 'import time\\nend = time.process_time() + 0.6\\n'\n"
        "                    'while time.process_time() < end: pass'], check=True)\n")
    out = tmp_path / "cpu.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "bench.suite_cpu", "-p", "no:cacheprovider",
                           "test_work.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SUITE_CPU_OUT": str(out), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = {r["test"].split("::")[1]: r for r in json.loads(out.read_text())}
    assert rows["test_busy"]["cpu_s"] >= 0.5 and rows["test_busy"]["wall_s"] >= 0.6
    # the CPU of the processes a test starts counts too (its drivers, Ray, servers)
    assert rows["test_child_busy"]["cpu_s"] >= 0.5


def test_the_report_sums_by_file_costliest_first():
    rows = [{"test": "tests/test_a.py::x", "cpu_s": 1.0, "wall_s": 2.0},
            {"test": "tests/test_b.py::y", "cpu_s": 5.0, "wall_s": 3.0},
            {"test": "tests/test_a.py::z", "cpu_s": 2.0, "wall_s": 1.0}]
    text = report(rows)
    assert text.startswith("3 tests: 8 CPU-s in 6 s of tests")
    files = [line for line in text.splitlines() if line.startswith("| tests/test_") and ".py |" in line]
    assert files[0].startswith("| tests/test_b.py | 5.0 | 62.5% |") and files[1].startswith("| tests/test_a.py | 3.0 |")
