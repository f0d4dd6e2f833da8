"""bench/race_cpu.py charges CPU seconds to kinds of process; its sampler is checked on a real busy
process and its report on hand-made files, since the race's diagnosis rests on both."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from bench.race_cpu import category, sample, summarize


def test_process_titles_map_to_what_they_are_in_the_study():
    assert category("ray::IDLE") == category("ray::ImplicitFunc.train") == category("ray::run_trial") == "trial workers"
    assert category("ray::StudyCoordinator.ask") == "coordinator"
    assert category("/x/.venv/bin/python -m bench.race study --out o --system tune_asha_fresh") == "driver"
    assert category("python") == "driver"  # the driver read after it exited
    assert category("/x/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/s") == "Ray daemons"
    assert category("/usr/sbin/sshd") == "other"


def test_the_sampler_charges_a_busy_process_its_cpu_time(tmp_path):
    out, stop = tmp_path / "cpu.json", tmp_path / "stop"
    import ray  # noqa: F401 - the sampler's psutil, imported before its clock matters

    sampler = threading.Thread(target=sample, args=(out, stop), kwargs={"every_s": 0.05})
    sampler.start()
    time.sleep(0.5)  # its first scan (the baseline) is done
    busy = ("# busy-marker\nimport time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass\n"
            "print('burnt', flush=True)\ntime.sleep(2)")
    proc = subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE, text=True)
    idle = subprocess.Popen([sys.executable, "-c", "# idle-marker\nimport time; time.sleep(2)"])
    assert proc.stdout.readline().strip() == "burnt"
    time.sleep(0.5)  # both are still alive: the last scans see all they used
    stop.touch()
    sampler.join(timeout=30)
    proc.wait(), idle.wait()
    by_title = dict(json.loads(out.read_text()))
    busy_cpu = sum(v for k, v in by_title.items() if "busy-marker" in k)
    assert 0.5 <= busy_cpu <= 1.2, by_title
    assert sum(v for k, v in by_title.items() if "idle-marker" in k) < 0.3
    # the same CPU, second by second by kind of process (the busy one is "other")
    timeline = json.loads((tmp_path / "timeline-cpu.json").read_text())
    assert sum(kinds.get("other", 0.0) for kinds in timeline.values()) >= busy_cpu - 0.05
    assert all(int(second) >= 0 for second in timeline)


def test_the_report_pairs_each_seed_and_leaves_the_benchmark_out(tmp_path):
    (tmp_path / "race").mkdir()
    for seed, (a_workers, t_workers) in enumerate([(40.0, 44.0), (30.0, 30.0)]):
        for system, workers, coord in (("autoopt_asha_fresh", a_workers, 2.0), ("tune_asha_fresh", t_workers, 0.0)):
            cpu = [["ray::IDLE", workers], ["ray::StudyCoordinator", coord], ["python", 3.0],
                   ["python -m bench.race_cpu sample x y", 9.0]]
            (tmp_path / f"cpu-{system}-{seed}.json").write_text(json.dumps([c for c in cpu if c[1]]))
            epochs = [{"epochs": 6}, {"epochs": 4}] if system.startswith("tune") else [{"epochs": 5}]
            (tmp_path / "race" / f"{system}__cv-big__{seed}.json").write_text(json.dumps({"wall_s": 20.0, "events": epochs}))
    text, data = summarize(tmp_path, "cv-big")
    assert data["ratios"]["trial workers"]["n"] == 2
    assert abs(data["ratios"]["trial workers"]["median"] - (40 / 44 + 1.0) / 2) < 1e-9
    assert abs(data["ratios"]["outside trial workers"]["median"] - 5.0 / 3.0) < 1e-9  # the sampler's 9 left out
    assert data["ratios"]["epochs"]["median"] == 0.5
    assert abs(data["ratios"]["trial workers per epoch"]["median"] - 2 * (40 / 44 + 1.0) / 2) < 1e-9
    assert "| 1 | tune_asha_fresh | 20.0 | 10 | 30.0 | 0.0 | 3.0 |" in text
    # the start's timeline: the median over seeds, second by second
    for seed, coord in enumerate([0.5, 1.5, 1.0]):
        (tmp_path / f"timeline-cpu-autoopt_asha_fresh-{seed}.json").write_text(
            json.dumps({"0": {"coordinator": coord, "trial workers": 1.0}, "2": {"coordinator": 0.2}}))
    text, data = summarize(tmp_path, "cv-big")
    assert data["start"]["autoopt_asha_fresh"]["coordinator"][:3] == [1.0, 0.0, 0.2]
    assert "| autoopt_asha_fresh | coordinator | 1.0 | 0.0 | 0.2 |" in text
