"""A task's profile (metric, direction, epochs, measured traits) is kept between studies, so a
later study's driver neither imports torch nor builds the task; a trial worker checks it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import optuna
import pytest

from autoopt.core import profile as task_profile
from autoopt.core import record as R
from autoopt.spec import StudySpec
from autoopt.storage import default_storage_url, open_storage
from autoopt.task import load_task


def test_a_measured_profile_round_trips_and_the_built_task_matches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path))
    task = load_task("tabular", epochs=3)
    measured = task_profile.measure(task)
    assert measured.traits == task.traits() and measured.epochs == 3 and measured.direction == "minimize"
    assert measured.train_batches == len(task.loaders()[0]) and measured.has_matrix_params
    assert task_profile.load("tabular", {"epochs": 3}) is None
    task_profile.save("tabular", {"epochs": 3}, measured)
    assert task_profile.load("tabular", {"epochs": 3}) == measured
    assert task_profile.load("tabular", {"epochs": 4}) is None  # other options: another profile
    assert task_profile.differences(measured, task_profile.check(load_task("tabular", epochs=3))) == {}
    task_profile.forget("tabular", {"epochs": 3})
    assert task_profile.load("tabular", {"epochs": 3}) is None


def test_the_fingerprint_follows_the_task_source_and_its_folder(tmp_path, monkeypatch):
    pkg = tmp_path / "mytasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("WIDTH = 8\n")
    (pkg / "task.py").write_text("from mytasks.model import WIDTH\nclass T: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = task_profile.fingerprint("mytasks.task:T", {})
    assert first is not None and first == task_profile.fingerprint("mytasks.task:T", {})
    assert task_profile.fingerprint("mytasks.task:T", {"size": 2}) != first
    (pkg / "model.py").write_text("WIDTH = 16\n")  # the model's code beside the task changed
    second = task_profile.fingerprint("mytasks.task:T", {})
    assert second != first
    (pkg / "task.py").write_text("from mytasks.model import WIDTH\nclass T:  pass\n")
    assert task_profile.fingerprint("mytasks.task:T", {}) not in (first, second)
    assert task_profile.fingerprint("nosuch.module:T", {}) is None


def test_an_unreadable_profile_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path))
    path = task_profile._path("tabular", {})
    path.parent.mkdir(parents=True)
    path.write_text('{"metric": "val_mse"')  # cut short
    assert task_profile.load("tabular", {}) is None


# builds a study's runner as a driver does and says what it read; Ray's start, which the runner
# begins on a thread of its own beside the task's load, is not under test here and is left out
_DRIVER = """
import sys
import autoopt.runner
from autoopt.spec import StudySpec
autoopt.runner.StudyRunner._start_early = lambda self: None
runner = autoopt.runner.StudyRunner(StudySpec.from_dict({"name": "p", "task": "tabular", "task_options": {"epochs": 2},
                                                         "n_trials": 1, "workers": 1}))
print(runner.profile.traits.dataset_size, runner.profile.epochs, "torch" in sys.modules)
"""


def test_a_later_studys_driver_reads_the_kept_profile_without_torch(tmp_path):
    """The first driver of a task measures it (and imports torch); the next one does not."""
    env = {**os.environ, "AUTOOPT_CACHE_DIR": str(tmp_path / "cache"), "AUTOOPT_STORAGE": f"sqlite:///{tmp_path}/s.db"}
    outs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _DRIVER], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout.split()[-3:])
    assert outs == [["354", "2", "True"], ["354", "2", "False"]]


def test_data_changed_outside_the_source_is_caught_by_a_worker_and_corrected(ray_local, workdir):
    """A task reading its data from a file: the kept profile no longer matches once the file
    changed; the first trial worker's check corrects the study's record, warns, and drops it."""
    import autoopt

    size_file = workdir / "size.txt"
    size_file.write_text("0.5")
    options = {"size_file": str(size_file), "epochs": 1}
    spec = {"task": "helper_tasks:FileSizedTask", "task_options": options, "n_trials": 1, "workers": 1, "seed": 0,
            "tracking": False, "search": {"warm_start": {"enabled": False}}}

    def traits(name: str) -> dict:
        return optuna.load_study(study_name=name, storage=open_storage(default_storage_url())).user_attrs[R.TRAITS]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        autoopt.run(StudySpec.from_dict({**spec, "name": "sized-a"}))  # measured by the driver, kept
        autoopt.run(StudySpec.from_dict({**spec, "name": "sized-b"}))  # the kept profile, checked: it matches
    assert traits("sized-a")["dataset_size"] == traits("sized-b")["dataset_size"] == 177
    assert not [w for w in caught if "no longer matches" in str(w.message)]
    assert task_profile.load("helper_tasks:FileSizedTask", options).traits.dataset_size == 177

    # the data grew; the task's source and options did not. A new driver (its own Ray and
    # workers: this process's warm workers keep the task they built, as they do between studies)
    size_file.write_text("1.0")
    (workdir / "c.yaml").write_text(json.dumps({**spec, "name": "sized-c"}))
    r = subprocess.run([sys.executable, "-m", "autoopt.cli", "run", "c.yaml"], cwd=workdir, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no longer matches" in r.stderr and "dataset_size 177 -> 354" in r.stderr, r.stderr[-3000:]
    assert traits("sized-c")["dataset_size"] == 354, "the study's record has the built task's size"
    assert task_profile.load("helper_tasks:FileSizedTask", options) is None, "measured again by the next study"
