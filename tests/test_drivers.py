"""Two drivers on one study, on a real SQLite file and a real PostgreSQL: the trial budget is
taken atomically (two processes racing for the last slots never overshoot ``n_trials``), and a
driver that was only stalled keeps its trials: a stall both drivers went through (the storage
locked for longer than ``stale_after_s``) reaps nobody, a worker that reports keeps its driver's
session alive, and a stalled driver whose trial was reaped takes its queued re-run over."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
import uuid

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from autoopt.coordinator import StudyCoordinator, TaskFacts
from autoopt.core.traits import TaskTraits
from autoopt.spec import ExecutionSpec, PlacesSpec, SearchSpec, SpaceSpec
from autoopt.storage import open_storage

TRAITS = TaskTraits("tabular", 32, 0.0, 1000, 500, "accuracy", "maximize")
OUTCOME = {"status": "complete", "value": 0.75,
           "history": [{"epoch": 1, "train_loss": 1.0, "val_metric": 0.7, "lr": 0.1, "seconds": 0.1},
                       {"epoch": 2, "train_loss": 0.9, "val_metric": 0.75, "lr": 0.1, "seconds": 0.1}]}


def coordinator_args(url: str, name: str, n_trials: int | None = None, stale_after_s: float = 2.0,
                     heartbeat_s: float = 5.0) -> tuple[tuple, dict]:
    return (
        (name,
         SearchSpec(task="tabular", space=SpaceSpec(optimizers=["adamw", "sgd"]), n_trials=n_trials),
         ExecutionSpec(storage_retry_s=30, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s),
         PlacesSpec(storage=url),
         TaskFacts("maximize", TRAITS, max_epochs=3)),
        dict(session=uuid.uuid4().hex[:12]),
    )


def make(*args, **kw) -> StudyCoordinator:
    args, kwargs = coordinator_args(*args, **kw)
    return StudyCoordinator(*args, **kwargs)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("pg_url")


def _drive(url: str, names: list[str], n_trials: int, start, out) -> None:
    """One driver: take trials until the budget says no, finishing each at once. Its storage is
    slow to create a trial (0.3 s before the INSERT, as on a loaded database server), so the two
    drivers overlap between counting the budget and creating their trial."""
    coordinators = [make(url, name, n_trials) for name in names]

    def slow_insert(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("INSERT INTO TRIALS "):
            time.sleep(0.3)

    sa.event.listen(coordinators[0].storage.engine, "before_cursor_execute", slow_insert)
    start.wait(timeout=120)  # both have imported and connected: race from here
    taken = 0
    for c in coordinators:
        while (item := c.ask()) is not None:
            c.tell(item["number"], OUTCOME)
            taken += 1
    out.put(taken)


def test_two_driver_processes_never_overshoot_the_budget(url):
    names = [f"race-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in names:  # created up front, so both drivers race for trials only
        make(url, name, 3)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(2)
    drivers = [ctx.Process(target=_drive, args=(url, names, 3, start, out)) for _ in range(2)]
    for d in drivers:
        d.start()
    taken = [out.get(timeout=180) for _ in drivers]
    for d in drivers:
        d.join(timeout=30)
    assert sum(taken) == 2 * 3, taken
    for name in names:
        trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, name


def _hold_storage(url: str, seconds: float, locked: threading.Event) -> None:
    """An outage both drivers go through: the storage answers nobody for ``seconds``."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(url[len("sqlite:///"):], timeout=30)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        con.rollback()
        con.close()
        return
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("LOCK TABLE study_system_attributes, trials IN ACCESS EXCLUSIVE MODE"))
        locked.set()
        time.sleep(seconds)
    engine.dispose()


def test_an_outage_both_drivers_went_through_reaps_nobody(url):
    name = f"stall-{uuid.uuid4().hex[:6]}"
    a, b = make(url, name), make(url, name)
    item = a.ask()
    locked = threading.Event()
    holder = threading.Thread(target=_hold_storage, args=(url, 3.0, locked))
    holder.start()
    locked.wait(10)
    assert b.reap_stale() == []  # blocked by the outage, then finds its own heartbeat as old as a's
    holder.join()
    a.heartbeat()  # a is back within stale_after_s of the outage's end
    assert b.reap_stale() == []
    assert a.study.trials[item["number"]].state == TrialState.RUNNING
    a.tell(item["number"], OUTCOME)
    assert a.summary()["counts"]["complete"] == 1


def test_a_reporting_worker_keeps_a_stalled_driver_alive(url):
    name = f"busy-{uuid.uuid4().hex[:6]}"
    a, b = make(url, name, heartbeat_s=0.5), make(url, name, heartbeat_s=0.5)
    item = a.ask()
    for epoch in range(1, 7):  # a's driver loop is stalled (no heartbeats), its worker reports
        time.sleep(0.5)
        assert a.report(item["number"], epoch, 0.5) is False
        b.heartbeat()
        assert b.reap_stale() == []
    a.tell(item["number"], OUTCOME)
    assert [t.state for t in b.study.trials] == [TrialState.COMPLETE]


def test_a_stalled_driver_takes_its_reaped_trial_back(url):
    name = f"back-{uuid.uuid4().hex[:6]}"
    a, b = make(url, name, n_trials=2), make(url, name, n_trials=2)
    first, second = a.ask(), a.ask()
    assert a.report(first["number"], 1, 0.6) is False
    time.sleep(2.5)  # a stalls for longer than stale_after_s while b goes on
    b.heartbeat()
    assert sorted(b.reap_stale()) == [first["number"], second["number"]]
    rerun = b.ask()  # b takes one of the two queued re-runs; the other is still waiting
    taken_by_b = rerun["number"]
    assert a.report(first["number"], 2, 0.7) in (True, False)
    a.tell(first["number"], OUTCOME)
    a.tell(second["number"], OUTCOME)
    b.tell(taken_by_b, OUTCOME)
    trials = b.study.trials
    counted = [t for t in trials if not t.user_attrs.get("autoopt.retried")]
    assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted)
    reclaimed = [t for t in counted if "autoopt.reclaimed_from" in t.user_attrs]
    assert len(reclaimed) == 1 and reclaimed[0].user_attrs["autoopt.session"] == a.session
    original = trials[reclaimed[0].user_attrs["autoopt.reclaimed_from"]]
    assert original.state == TrialState.FAIL and original.user_attrs["autoopt.reason"].startswith("abandoned")
    assert reclaimed[0].params == original.params
    assert reclaimed[0].user_attrs["autoopt.history"] == OUTCOME["history"]
    assert a.summary()["counted"] == 2


@pytest.mark.slow
def test_two_autoopt_run_processes_share_one_budget(url, tmp_path):
    """Two real `autoopt run` drivers (each with its own Ray) on one study: exactly n_trials
    trials, all complete, none re-run, and neither driver reaps the other's live trials.

    Each trial is held at its first evaluation until both drivers have one in a worker (one
    worker each: two held trials at once are one per driver), so both take part however the
    machine's load orders their start-ups; with the plain tabular task, a driver that started
    a few seconds sooner sometimes ran all six trials before the other had its worker."""
    import os
    import subprocess
    import sys

    name = f"shared-{uuid.uuid4().hex[:6]}"
    gate = tmp_path / "gate"
    gate.mkdir()
    spec = tmp_path / "shared.yaml"
    spec.write_text(f"name: {name}\ntask: helper_tasks:GatedTask\ntask_options: {{gate: {gate}, size: 0.25, epochs: 2}}\n"
                    "n_trials: 6\nworkers: 1\npruner: none\ntracking: false\n"
                    "space: {optimizers: [adam], schedulers: [constant]}\n")
    env = {**os.environ, "AUTOOPT_STORAGE": url, "AUTOOPT_HEARTBEAT_S": "1", "AUTOOPT_STALE_AFTER_S": "10"}
    drivers = [subprocess.Popen([sys.executable, "-m", "autoopt.cli", "run", str(spec), "--json"], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    deadline = time.monotonic() + 300
    while len({p.name.split("-")[1] for p in gate.glob("held-*")}) < 2:  # two worker processes
        if time.monotonic() > deadline or any(d.poll() is not None for d in drivers):
            for d in drivers:
                d.kill()
            pytest.fail("the two drivers never had a trial in a worker at once: "
                        + " | ".join(d.communicate()[1][-1500:] for d in drivers))
        time.sleep(0.2)
    (gate / "open").touch()
    for d in drivers:
        _, err = d.communicate(timeout=400)
        assert d.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert not [t for t in trials if t.user_attrs.get("autoopt.retried") or t.user_attrs.get("autoopt.retry_of")]
    assert len({t.user_attrs["autoopt.session"] for t in trials}) == 2  # both drivers ran trials


def test_a_trial_sampled_before_an_outage_is_queued_not_left_running(pg_url):
    """The database drops the coordinator's connection after Optuna's ask stored the new trial
    RUNNING, in the write that queues it (its params and WAITING): the retried prepare queues that
    same trial. Before, it sampled another one and left the first RUNNING with no worker, for the
    reaper to fail stale_after_s later (what a cluster test once caught)."""
    import psycopg

    name = f"ahead-{uuid.uuid4().hex[:6]}"
    c = make(pg_url, name, n_trials=3)
    seen: dict[str, int] = {}

    def drop_the_connection(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        text = statement.lstrip().upper()
        if text.startswith("INSERT INTO TRIALS "):
            seen["asked"] = 1
        elif seen.get("asked") and text.startswith("SELECT") and "FOR UPDATE" in text and "killed" not in seen:
            # the queueing write's first statement (it locks the trial's row); a drop inside
            # Optuna's ask itself (its reads after the INSERT) still leaves the trial to the reaper
            seen["killed"] = conn.connection.dbapi_connection.info.backend_pid
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (seen["killed"],))

    sa.event.listen(c.storage.engine, "before_cursor_execute", drop_the_connection)
    number = c.prepare()
    sa.event.remove(c.storage.engine, "before_cursor_execute", drop_the_connection)
    assert "killed" in seen, "the connection was never dropped: the test did not reach the window"
    assert c.storage_outages >= 1
    trials = optuna.load_study(study_name=name, storage=open_storage(pg_url)).trials
    assert [(t.number, t.state) for t in trials] == [(number, TrialState.WAITING)]
    assert trials[0].params and set(trials[0].params) >= {"optimizer"}
    item = c.ask()
    assert item["number"] == number and item["config"]["optimizer"] == trials[0].params["optimizer"]


def test_lost_trials_are_the_running_ones_whose_node_ray_lists_as_dead(ray_local, tmp_path):
    """What the driver on the Ray client falls back on when its client server never learns that a
    node running trials was killed: the nodes the trials' workers announced, against Ray's GCS."""
    import ray

    c = make(f"sqlite:///{tmp_path / 's.db'}", "lost", n_trials=4)
    here = ray.get_runtime_context().get_node_id()
    gone = "ff" * 28  # a node id no node of this Ray has
    first, second = c.ask(), c.ask()
    assert c.lost_trials() == []  # nothing announced yet
    c.trial_started(first["number"], here)
    c.trial_started(second["number"], gone)
    assert c.lost_trials() == [second["number"]]
    c.fail(second["number"], "worker lost: its node died", True)
    c.tell(first["number"], OUTCOME)
    assert c.lost_trials() == []  # finished trials are forgotten


def test_a_trial_on_the_ray_client_announces_its_node_before_it_trains(ray_local, tmp_path):
    """The announce end to end: from the trial's Ray worker to the coordinator actor, with a node
    id in the form Ray's GCS lists, and known before the trial's first report (its pruning
    question). Without it the lost-node check cannot find a trial whose node dies."""
    import ray

    from autoopt.runner import _Coordinator, _run_trial_remote

    args, kwargs = coordinator_args(f"sqlite:///{tmp_path / 's.db'}", "announce", n_trials=2)
    actor = _Coordinator.remote(*args, **kwargs)
    item = ray.get(actor.ask.remote())
    number = item["number"]

    @ray.remote
    class Witness:
        """Stands in the trial's coordinator: forwards each call, noting what was known when the
        trial first reported."""

        def __init__(self, coordinator):
            self.coordinator, self.known_at_report = coordinator, None

        def trial_started(self, number, node_id):
            return ray.get(self.coordinator.trial_started.remote(number, node_id))

        def report(self, number, *args, **kw):
            if self.known_at_report is None:
                self.known_at_report = ray.get(self.coordinator.trial_nodes.remote())
            return ray.get(self.coordinator.report.remote(number, *args, **kw))

        def seen(self):
            return self.known_at_report

    witness = Witness.remote(actor)
    result = ray.get(_run_trial_remote.remote("tabular", {}, item["config"], number, 0, witness, None, 1, announce=True))
    assert result["status"] == "complete", result
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    assert ray.get(witness.seen.remote()) == {number: result["node_id"]}
    assert result["node_id"] in alive
    assert ray.get(actor.lost_trials.remote()) == []
    ray.get(actor.tell.remote(number, {k: result[k] for k in ("status", "value", "history")}))
    assert ray.get(actor.trial_nodes.remote()) == {}
    ray.kill(actor)


@pytest.mark.slow
def test_a_rerun_queued_after_the_budget_looked_used_up_still_runs_here(ray_local, tmp_path, monkeypatch):
    """Another driver's trial holds the study's last budget slot, so this driver's second worker
    finds no budget. While this driver's one trial runs, the other driver goes silent: its trial
    is reaped and queued again (by the loop's periodic reap, not waited for). That re-run must
    run here before the study ends, not stay WAITING."""
    import autoopt
    import autoopt.runner
    from helper_tasks import SlowTask

    from autoopt.core import record as R
    from autoopt.spec import StudySpec

    monkeypatch.setenv("AUTOOPT_STALE_AFTER_S", "2")
    monkeypatch.setenv("AUTOOPT_HEARTBEAT_S", "0.5")
    monkeypatch.setattr(autoopt.runner, "REAP_EVERY_S", 0.5)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    name = f"reaped-{uuid.uuid4().hex[:6]}"
    task = SlowTask(sleep_s=1.0, size=0.25, epochs=6)
    space = {"optimizers": ["adam"], "schedulers": ["constant"]}
    spec = StudySpec(name=name, task=task, n_trials=2, workers=2, pruner="none", tracking=False, storage=url,
                     space=space)
    other = StudyCoordinator(name, SearchSpec(task="helper_tasks:SlowTask", space=SpaceSpec(**space), n_trials=2),
                             ExecutionSpec(storage_retry_s=30, stale_after_s=2.0, heartbeat_s=0.5),
                             PlacesSpec(storage=url), TaskFacts(task.direction, task.traits(), max_epochs=6),
                             session=uuid.uuid4().hex[:12])
    held = other.ask()["number"]
    ours_running = threading.Event()

    def beat() -> None:  # the other driver is alive until this driver's trial runs, then silent
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        while not ours_running.is_set():
            other.heartbeat()
            if any(t.state == TrialState.RUNNING and t.number != held for t in study.get_trials(deepcopy=False)):
                ours_running.set()
            time.sleep(0.2)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    result = autoopt.run(spec)
    ours_running.set()
    trials = result.study.trials
    assert trials[held].state.name == "FAIL" and trials[held].user_attrs[R.REASON].startswith("abandoned")
    rerun = [t for t in trials if t.user_attrs.get(R.RETRY_OF) == held]
    assert [t.state.name for t in rerun] == ["COMPLETE"]
    assert result.counts["complete"] == 2
