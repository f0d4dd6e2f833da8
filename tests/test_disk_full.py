"""A full disk under the study's SQLite file (a real 6 MiB tmpfs, filled while trials run): the
trials in flight are recorded FAILED with the real reason and queued to re-run, the CLI stops
with one clear line and exit code 2 (not Optuna's "exceeding max length"), the database stays
intact (`autoopt resume` then re-runs the stopped trials, as after any stop)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from polling import trial_states

SPEC = """name: full
task: helper_tasks:GatedTask
task_options: {{gate: {gate}, size: 0.25, epochs: 2}}
n_trials: 4
workers: 2
pruner: none
tracking: false
space: {{optimizers: [adam], schedulers: [constant]}}
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    mnt = Path(f"/tmp/autoopt-full-{uuid.uuid4().hex[:6]}")
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): run as root to test a full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)
    mnt.rmdir()


def _fill(disk: Path) -> Path:
    """Take every last byte: big writes first, then smaller ones until not even one byte fits."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            try:
                while True:
                    f.write(chunk)
            except OSError:
                pass
    return filler


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoopt.cli", *args]


@pytest.mark.slow
def test_full_disk_stops_the_study_with_the_real_reason_and_keeps_the_storage(workdir, small_disk):
    gate = workdir / "gate"
    gate.mkdir()
    (workdir / "full.yaml").write_text(SPEC.format(gate=gate))
    db = small_disk / "studies.db"
    url = f"sqlite:///{db}"
    (gate / "token-0").touch()
    driver = subprocess.Popen(_cli("run", "full.yaml", "--storage", url), cwd=workdir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = sorted(s for s in trial_states(url, "full") if s != "WAITING")  # the next trial, sampled ahead
        if states == ["COMPLETE", "RUNNING", "RUNNING"]:
            break
        time.sleep(0.3)
    else:
        driver.kill()
        pytest.fail("no trial ever ran")
    filler = _fill(small_disk)
    (gate / "open").touch()  # the held trials report and finish now, onto a full disk
    _, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "is full (database or disk is full)" in errors[0] and "autoopt resume full" in errors[0], errors[0]
    assert "max length" not in stderr

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    trials = optuna.load_study(study_name="full", storage=url).trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 1 and done[0].value is not None  # finished before the disk filled: kept
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert len(stopped) == 2 and not [t for t in trials if t.state.name == "RUNNING"], \
        [(t.number, t.state.name, t.user_attrs.get("autoopt.reason")) for t in trials] + [stderr[-3000:]]
    for t in stopped:
        assert "database or disk is full" in t.user_attrs["autoopt.reason"], t.user_attrs["autoopt.reason"]
        assert t.user_attrs["autoopt.retried"] is True

    filler.unlink()  # space again: a new driver opens the study and finds every trial as it was left
    r = subprocess.run(_cli("status", "full", "--storage", url, "--json"), cwd=workdir, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    queued = [t for t in trials if t.state.name == "WAITING" and "autoopt.retry_of" not in t.user_attrs]
    assert len(queued) <= 1  # the trial the coordinator had sampled ahead, if any: run first on resume
    assert json.loads(r.stdout)["counts"] == {"complete": 1, "pruned": 0, "failed": 2, "running": 0,
                                              "waiting": 2 + len(queued)}
