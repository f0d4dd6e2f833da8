"""The coordinator's calls survive a lost commit acknowledgement.

When PostgreSQL goes away mid-call (``pg_ctl stop -m fast`` ends every session), a COMMIT can
reach the server while the client only sees the connection die. The coordinator then retries the
whole call, so each call must be idempotent: a retried ``tell`` must not write to the trial it
already closed, a retried ``fail`` must enqueue one re-run, a retried ``ask`` must not leave an
orphan RUNNING trial. The real-process version (a PostgreSQL stopped mid-study) is
``tests/test_cluster.py::test_postgres_restart_mid_study``; here the same loss is produced at
an exact point: the first COMMIT after a chosen statement succeeds on a real PostgreSQL, then
the call sees the error psycopg raises for a dropped connection.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import optuna
import psycopg
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.orm import Session

from autoopt.core import record as R
from autoopt.coordinator import StudyCoordinator, TaskFacts
from autoopt.spec import ExecutionSpec, PlacesSpec, SearchSpec, SpaceSpec
from autoopt.core.traits import TaskTraits

TRAITS = TaskTraits("tabular", 32, 0.0, 1000, 500, "accuracy", "maximize")
OUTCOME = {"status": "complete", "value": 0.75, "history": [{"epoch": 0, "value": 0.75}], "node_id": "n1"}


def coordinator(url: str, retries: int = 1) -> StudyCoordinator:
    return StudyCoordinator(
        f"s-{uuid.uuid4().hex[:6]}",
        SearchSpec(task="tabular", space=SpaceSpec(optimizers=["adamw"]), n_trials=None),
        ExecutionSpec(retries=retries, storage_retry_s=30),
        PlacesSpec(storage=url),
        TaskFacts("maximize", TRAITS, max_epochs=3),
    )


@contextmanager
def ack_lost_after(engine: sa.engine.Engine, statement: str) -> Iterator[list[str]]:
    """The first transaction that runs ``statement`` commits on the server, then its caller gets
    the OperationalError of a dropped connection (once)."""
    seen: list[str] = []
    armed = {"hit": False, "fired": False}

    def after_execute(conn, cursor, sql, params, context, executemany):  # noqa: ANN001
        if not armed["fired"] and sql.lstrip().upper().startswith(statement.upper()):
            armed["hit"] = True
            seen.append(sql)

    def after_commit(session):  # noqa: ANN001
        if armed["hit"] and not armed["fired"]:
            armed["fired"] = True
            raise sa.exc.OperationalError("COMMIT", {}, psycopg.OperationalError(
                "consuming input failed: server closed the connection unexpectedly"))

    event.listen(engine, "after_cursor_execute", after_execute)
    event.listen(Session, "after_commit", after_commit)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", after_execute)
        event.remove(Session, "after_commit", after_commit)
    assert armed["fired"], f"no transaction ran {statement!r}: the fault was never injected"


def test_tell_retried_after_its_commit_keeps_the_outcome(pg_url):
    c = coordinator(pg_url)
    item = c.ask()
    with ack_lost_after(c.storage.engine, "UPDATE trials SET state"):
        assert c.tell(item["number"], OUTCOME) == "COMPLETE"
    assert c.storage_outages == 1  # the call really failed once and was retried
    trial = c.study.get_trials(deepcopy=False)[item["number"]]
    assert trial.state == TrialState.COMPLETE and trial.value == 0.75
    assert trial.user_attrs[R.NODE_ID] == "n1" and trial.user_attrs[R.EPOCHS_RUN] == 1


def test_fail_retried_after_its_commit_enqueues_one_rerun(pg_url):
    c = coordinator(pg_url, retries=2)
    item = c.ask()
    with ack_lost_after(c.storage.engine, "UPDATE trials SET state"):
        assert c.fail(item["number"], "worker lost: NodeDiedError", retry=True) is True
    assert c.storage_outages == 1
    trials = c.study.get_trials(deepcopy=False)
    assert trials[item["number"]].state == TrialState.FAIL
    assert trials[item["number"]].user_attrs[R.REASON] == "worker lost: NodeDiedError"
    reruns = [t for t in trials if t.user_attrs.get(R.RETRY_OF) == item["number"]]
    assert len(reruns) == 1 and reruns[0].state == TrialState.WAITING
    assert reruns[0].system_attrs["fixed_params"] == trials[item["number"]].params
    # the re-run is what ask hands out next, and failing it again still respects `retries`
    again = c.ask()
    assert again["number"] == reruns[0].number and again["params"] == item["params"]
    assert c.fail(again["number"], "worker lost", retry=True) is True
    assert c.fail(c.ask()["number"], "worker lost", retry=True) is False  # attempt 2 of 2: no more


def test_fail_of_a_finished_trial_enqueues_nothing(pg_url):
    c = coordinator(pg_url)
    item = c.ask()
    c.tell(item["number"], OUTCOME)
    assert c.fail(item["number"], "interrupted", retry=True) is False
    trials = c.study.get_trials(deepcopy=False)
    assert len(trials) == 1 and trials[0].state == TrialState.COMPLETE


def test_ask_retried_after_the_trial_was_created_leaves_no_orphan(pg_url):
    c = coordinator(pg_url)
    with ack_lost_after(c.storage.engine, "INSERT INTO trial_params"):  # the trial exists, half-sampled
        item = c.ask()
    assert c.storage_outages == 1
    trials = c.study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [item["number"]] and trials[0].state == TrialState.RUNNING
    assert trials[0].params == item["params"] and trials[0].user_attrs[R.SESSION] == c.session
    c.tell(item["number"], OUTCOME)
    assert c.summary()["counts"] == {"complete": 1, "pruned": 0, "failed": 0, "running": 0, "waiting": 0}



def test_a_trial_created_by_another_driver_is_not_reaped_before_it_has_a_session(pg_url):
    """Between creating a trial and writing its session, another driver's trial has no session:
    it is judged by its start time, not failed at once as abandoned."""
    c = coordinator(pg_url)
    c.stale_after_s = 1.0
    other = optuna.load_study(study_name=c.study_name, storage=c.storage).ask()  # no session written yet
    assert c.reap_stale() == []
    assert c.foreign_running() == 1
    time.sleep(1.2)
    c.heartbeat()  # this driver is alive (the other's silence is not an outage both went through)
    assert c.reap_stale() == [other.number]  # gone quiet for longer than stale_after_s: abandoned
    frozen = c.study.get_trials(deepcopy=False)[other.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs[R.REASON].startswith("abandoned")


def test_a_trial_sampled_ahead_when_the_disk_filled_is_queued_when_the_study_stops(tmp_path):
    """``prepare`` samples the next trial ahead: Optuna's ask (RUNNING), then its params and
    WAITING in one more write. When the disk fills between the two (here SQLite's own error,
    raised at that write's first statement), the study stops, and the stop queues that trial
    with its params (a resume takes it first) instead of leaving it RUNNING with no worker. Seen
    in a real run: tests/test_disk_full.py found it RUNNING after the stop (CI, 2026-12-06)."""
    import sqlite3

    import pytest

    from autoopt.coordinator import StorageFullError

    c = coordinator(f"sqlite:///{tmp_path / 'studies.db'}")
    fired = []

    def disk_full(conn, cursor, sql, params, context, executemany):  # noqa: ANN001
        if not fired and sql.lstrip().upper().startswith("INSERT INTO TRIAL_PARAMS"):
            fired.append(sql)
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(c.storage.engine, "before_cursor_execute", disk_full)
    try:
        with pytest.raises(StorageFullError):
            c.prepare()
    finally:
        event.remove(c.storage.engine, "before_cursor_execute", disk_full)
    assert fired and c.full is not None
    (ahead,) = c.study.get_trials(deepcopy=False)
    assert ahead.state == TrialState.RUNNING and ahead.params == {}  # asked, its WAITING write cut short

    assert c.fail_running(f"stopped: {c.full}") == []  # no worker ran it: nothing to fail
    (queued,) = c.study.get_trials(deepcopy=False)
    assert queued.number == ahead.number and queued.state == TrialState.WAITING
    assert queued.params and queued.params["optimizer"] == "adamw"
    # what a resume's first ask hands out, with the params sampled before the stop
    c.full = None
    item = c.ask()
    assert item["number"] == ahead.number and item["params"] == queued.params


def test_a_trial_queued_from_the_recommender_is_asked_for_as_one(tmp_path):
    """The driver tags the trial's MLflow run from what ``ask`` says; a coordinator opened on a
    study with suggestions still queued (a resume) knows them too."""
    import copy
    import math

    url = f"sqlite:///{tmp_path / 'warm.db'}"
    c = coordinator(url)
    a, b = c.ask(), c.ask()  # two sampled adamw configurations: one between them is in the space too
    assert not a["warm_start"] and not b["warm_start"]

    def between(x: dict, lr: float) -> dict:
        config = copy.deepcopy(x["config"])
        config["optimizer_params"]["lr"] = math.sqrt(config["optimizer_params"]["lr"] * lr)
        return config

    lr_b = b["config"]["optimizer_params"]["lr"]
    c.enqueue([between(a, lr_b)], limit=1)
    queued, sampled = c.ask(), c.ask()
    assert queued["number"] == 2 and queued["warm_start"] is True and sampled["warm_start"] is False
    c.enqueue([between(queued, lr_b)], limit=1)
    reopened = StudyCoordinator(c.study_name, SearchSpec(task="tabular", space=SpaceSpec(optimizers=["adamw"]), n_trials=None),
                                ExecutionSpec(storage_retry_s=30), PlacesSpec(storage=url),
                                TaskFacts("maximize", TRAITS, max_epochs=3))
    again = reopened.ask()
    assert again["number"] == 4 and again["warm_start"] is True
