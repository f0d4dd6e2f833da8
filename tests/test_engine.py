"""The engine's shortcuts keep the study's results (issue #13): the coordinator's tally agrees with a
rescan of the storage, epoch reports the pruner cannot act on are sent without waiting yet all
stored in order, background MLflow writes leave every epoch in the trial's run, and a study's
report written in the background ends its parent run with the plots.

Real parts throughout: SQLite storage, a Ray coordinator actor, an MLflow SQLite store, a small
study through ``autoopt.run``.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from autoopt.core import record as R
from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.core.traits import TaskTraits
from autoopt.coordinator import StudyCoordinator, TaskFacts
from autoopt.sampling import decision_epochs, make_pruner, pruner_decides_at
from autoopt.spec import ExecutionSpec, PlacesSpec, SearchSpec, SpaceSpec, SpecError, StudySpec
from autoopt.storage import open_storage
from autoopt.tracking import StudyTracker, TrackingConfig, default_tracking_uri

TRAITS = TaskTraits("tabular", 32, 0.0, 1000, 500, "accuracy", "maximize")


def coordinator(url: str, pruner: str = "none", max_epochs: int = 3, retries: int = 1) -> StudyCoordinator:
    return StudyCoordinator(
        f"s-{uuid.uuid4().hex[:6]}",
        SearchSpec(task="tabular", space=SpaceSpec(optimizers=["adamw", "sgd"]), n_trials=None, pruner=pruner),
        ExecutionSpec(retries=retries),
        PlacesSpec(storage=url),
        TaskFacts("maximize", TRAITS, max_epochs=max_epochs),
    )


def outcome(status: str, value: float | None, epochs: int) -> dict:
    history = [{"epoch": e, "train_loss": 1.0, "val_metric": 0.1 * e, "lr": 0.1, "seconds": 0.01}
               for e in range(1, epochs + 1)]
    return {"status": status, "value": value, "history": history, "node_id": "n1",
            "reason": None if status == "complete" else f"{status} at epoch {epochs}"}


# --- which epochs the pruner can act on -------------------------------------------------------
def test_pruner_decides_at_rungs_warmups_and_unknown_pruners():
    hb = make_pruner("hyperband", 27)
    assert [e for e in range(1, 28) if pruner_decides_at(hb, e)] == [1, 3, 9, 27]
    sh = make_pruner("successive_halving", 20, min_resource=2, reduction_factor=2)
    assert decision_epochs(sh, 20) == frozenset({2, 4, 8, 16})
    median = make_pruner("median", 10, n_warmup_steps=3, interval_steps=2)
    assert decision_epochs(median, 10) == frozenset({3, 5, 7, 9})
    assert decision_epochs(make_pruner("none", 10), 10) == frozenset()
    assert pruner_decides_at(optuna.pruners.SuccessiveHalvingPruner(min_resource="auto"), 5)  # learnt later

    class Curve(optuna.pruners.BasePruner):  # e.g. a learning-curve pruner: may decide at any epoch
        def prune(self, study, trial):
            return False

    assert decision_epochs(Curve(), 4) == frozenset({1, 2, 3})  # the last epoch: nothing left to save
    assert decision_epochs(hb, None) is None  # an objective of unknown length: wait at every report


# --- the coordinator's tally ------------------------------------------------------------------
def test_summary_tally_agrees_with_a_rescan_after_prunes_failures_and_retries(tmp_path, monkeypatch):
    import autoopt.coordinator

    monkeypatch.setattr(autoopt.coordinator, "TALLY_REFRESH_S", 1e9)  # summary() answers from the counters
    c = coordinator(f"sqlite:///{tmp_path}/s.db", retries=1)
    lost = c.ask()
    assert c.fail(lost["number"], "worker lost: NodeDiedError", retry=True) is True  # queues a re-run
    c.enqueue([{"optimizer": "adamw", "optimizer_params": {"lr": 1e-3}}])  # a warm start
    told = []
    for status, value, epochs in [("complete", 0.5, 3), ("complete", 0.9, 3), ("pruned", None, 1),
                                  ("complete", 0.7, 3), ("failed", None, 2)]:
        item = c.ask()  # the re-run and the warm start first
        for e in range(1, epochs + 1):
            c.report(item["number"], e, 0.1 * e)
        told.append(c.tell(item["number"], outcome(status, value, epochs)))
    assert told == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "FAIL"]
    c.ask()  # left RUNNING

    tally = c.summary()
    fresh = c.summary(fresh=True)
    assert tally == fresh
    stored = R.summarize(optuna.load_study(study_name=c.study_name, storage=c.storage))
    assert tally["counts"] == stored.counts == {"complete": 3, "pruned": 1, "failed": 2, "running": 1, "waiting": 0}
    assert tally["best"]["number"] == stored.best.number and tally["best"]["value"] == pytest.approx(0.9)
    assert tally["best"]["config"] == stored.best.user_attrs[R.CONFIG]
    assert tally["counted"] == 6  # the retried failure does not use the budget

    # what one transaction wrote: the outcome's attributes with the state, and a pruned trial's last value
    trials = {t.number: t for t in c.study.get_trials(deepcopy=False)}
    pruned = next(t for t in trials.values() if t.state == TrialState.PRUNED)
    assert pruned.value == pytest.approx(0.1) and pruned.user_attrs[R.STATUS] == "pruned"
    assert trials[2].user_attrs[R.NODE_ID] == "n1" and trials[2].user_attrs[R.EPOCHS_RUN] == 3
    assert trials[2].user_attrs[R.SESSION] == c.session and trials[2].user_attrs[R.MAX_EPOCHS] == 3


# --- epoch reports that do not wait -----------------------------------------------------------
def test_reports_the_pruner_cannot_act_on_do_not_wait_and_are_all_stored_in_order(ray_local, tmp_path):
    from autoopt.runner import EpochReporter, _Coordinator

    url, name = f"sqlite:///{tmp_path}/s.db", f"s-{uuid.uuid4().hex[:6]}"
    actor = _Coordinator.remote(
        name,
        SearchSpec(task="tabular", space=SpaceSpec(optimizers=["adamw"]), n_trials=None, pruner="hyperband"),
        ExecutionSpec(), PlacesSpec(storage=url), TaskFacts("maximize", TRAITS, max_epochs=9))
    item = ray_local.get(actor.ask.remote())
    reporter = EpochReporter(actor, item["number"], (9, decision_epochs(make_pruner("hyperband", 9), 9)))
    waited = []
    for epoch in range(1, 10):
        stop = reporter(epoch, 0.05 * epoch)
        waited.append(not reporter.pending)  # a report that waited leaves nothing pending
        assert stop is False
    # rungs 1 and 3; not 9, the last epoch (a stop there saves nothing)
    assert waited == [reporter.waits_at(e) for e in range(1, 10)] == [e in (1, 3) for e in range(1, 10)]
    # the last epoch is not sent at all: the outcome carries it, and the tell stores it
    assert reporter.last == (9, pytest.approx(0.45))
    reporter(10, 0.6)  # past the resource: waits (the pruner's range is not known there)
    assert not reporter.pending
    reporter.drain()
    study = optuna.load_study(study_name=name, storage=url)
    assert 9 not in study.get_trials(deepcopy=False)[0].intermediate_values
    ray_local.get(actor.tell.remote(item["number"], {**outcome("complete", 0.6, 10), "last_report": list(reporter.last)}))
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.intermediate_values == {e: pytest.approx(0.05 * e) for e in range(1, 10)} | {10: pytest.approx(0.6)}
    ray_local.kill(actor)


def test_a_report_nobody_waits_for_is_stored_without_asking_the_pruner(tmp_path):
    c = StudyCoordinator(
        f"s-{uuid.uuid4().hex[:6]}",
        SearchSpec(task="tabular", space=SpaceSpec(optimizers=["adamw"]), n_trials=None, pruner="median",
                   pruner_options={"n_startup_trials": 1, "n_warmup_steps": 0}),
        ExecutionSpec(), PlacesSpec(storage=f"sqlite:///{tmp_path}/s.db"), TaskFacts("maximize", TRAITS, max_epochs=9))
    for _ in range(2):  # two finished trials with better curves: the median pruner would stop a worse one
        done = c.ask()
        for e in range(1, 4):
            c.report(done["number"], e, 0.9)
        c.tell(done["number"], outcome("complete", 0.9, 3))
    item = c.ask()
    assert c.report(item["number"], 1, 0.1, False) is False  # stored, the pruner not asked
    assert bool(c.report(item["number"], 2, 0.1)) is True  # asked: it stops the trial
    trial = c.study.get_trials(deepcopy=False)[item["number"]]
    assert trial.intermediate_values == {1: pytest.approx(0.1), 2: pytest.approx(0.1)}


def test_a_prepared_trial_waits_queued_and_the_next_ask_takes_it(tmp_path):
    c = coordinator(f"sqlite:///{tmp_path}/s.db", retries=0)
    c.n_trials = 3
    ran = c.ask()
    number = c.prepare()  # sampled while `ran` trains
    assert number == ran["number"] + 1 and c.prepare() is None  # one queued at a time
    queued = c.study.get_trials(deepcopy=False)[number]
    assert queued.state == TrialState.WAITING and queued.params  # sampled, not running, not counted
    assert c.summary()["counted"] == 1 and c.summary()["counts"]["waiting"] == 1
    c.tell(ran["number"], outcome("complete", 0.6, 3))
    item = c.ask()
    assert item["number"] == number and item["params"] == queued.params  # the sampler's answer, kept
    assert c.summary() == c.summary(fresh=True)
    c.tell(item["number"], outcome("complete", 0.7, 3))
    assert c.prepare() == number + 1
    c.ask()
    assert c.prepare() is None  # the budget is used up: nothing is queued beyond it
    assert [t.state for t in c.study.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]


def test_a_trial_records_when_its_worker_started_it(tmp_path):
    import datetime as dt

    c = coordinator(f"sqlite:///{tmp_path}/s.db", retries=0)
    item = c.ask()
    started = time.time() + 5.0  # the worker got to it later
    c.tell(item["number"], {**outcome("complete", 0.6, 3), "started_at": started})
    trial = c.study.get_trials(deepcopy=False)[item["number"]]
    assert abs(trial.datetime_start - dt.datetime.fromtimestamp(started)) < dt.timedelta(milliseconds=1)


def test_a_study_on_postgresql_renews_its_tables_statistics_as_it_grows(pg_url):
    """psycopg prepares a statement on the server after its fifth run, and PostgreSQL may then keep
    one generic plan for it. Chosen while a study's tables are nearly empty, that plan scans a table
    whole until the table is analyzed again (never, with autovacuum off): Optuna's read of new
    trials' attributes by trial id took 1.5-1.7 ms at 1000 trials instead of 0.05 ms, most of a
    1000-trial study's growth on PostgreSQL (docs/benchmarks.md). The coordinator analyzes Optuna's
    tables when its finished trials reach FIRST_ANALYZE_AT, then each time they double."""
    import sqlalchemy as sa

    from autoopt.coordinator import FIRST_ANALYZE_AT

    engine = open_storage(pg_url).engine
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        # why: a statement prepared and run on a small table keeps a whole-table scan once the
        # table has grown, until the table is analyzed (each step committed, as a study's are)
        # (the shape of Optuna's trial_user_attributes)
        c.execute(sa.text("CREATE TEMP TABLE attrs (id serial PRIMARY KEY, trial_id int NOT NULL,"
                          " key varchar(2048) NOT NULL, value_json text, UNIQUE (trial_id, key))"))
        fill = ("INSERT INTO attrs (trial_id, key, value_json) SELECT t, 'k' || k, repeat('x', 40)"
                " FROM generate_series({}) t, generate_series(1, 12) k")
        c.execute(sa.text(fill.format("1, 20")))
        c.execute(sa.text("PREPARE by_trial(int, int, int) AS SELECT * FROM attrs WHERE trial_id IN ($1, $2, $3)"))
        for i in range(1, 9):
            c.execute(sa.text(f"EXECUTE by_trial({i}, {i + 1}, {i + 2})"))
        c.execute(sa.text(fill.format("21, 1000")))

        def plan() -> str:
            return "\n".join(row[0] for row in c.execute(sa.text("EXPLAIN EXECUTE by_trial(990, 991, 992)")))

        kept = plan()
        c.execute(sa.text("ANALYZE attrs"))
        renewed = plan()
    assert "Seq Scan" in kept, kept
    assert "Seq Scan" not in renewed and "Index" in renewed, renewed

    def analyzed() -> int:
        with engine.connect() as c:
            c.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            return int(c.execute(sa.text("SELECT analyze_count FROM pg_stat_user_tables"
                                         " WHERE relname = 'trial_user_attributes'")).scalar() or 0)

    study = coordinator(pg_url)
    before = analyzed()
    for i in range(FIRST_ANALYZE_AT):
        if i == FIRST_ANALYZE_AT - 1:
            assert analyzed() == before  # not yet
        item = study.ask()
        study.tell(item["number"], outcome("complete", 0.5, 3))
    deadline = time.time() + 10  # the server's statistics counters are written behind
    while analyzed() == before and time.time() < deadline:
        time.sleep(0.2)
    assert analyzed() == before + 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_budget_is_counted_in_one_query_as_a_scan_counts_it(backend, tmp_path, request):
    """The query looks the retried mark up on failed trials only (a lookup per trial cost 2.3 ms at
    1000 trials on PostgreSQL, twice a trial): the counts still agree with a scan on both backends."""
    from autoopt.coordinator import _uses_budget
    from autoopt.storage import budget_counts

    url = f"sqlite:///{tmp_path}/s.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    c = coordinator(url, retries=1)
    for state in ("complete", "pruned"):
        item = c.ask()
        c.tell(item["number"], outcome(state, 0.5, 3))
    item = c.ask()
    c.fail(item["number"], "worker lost", True)  # retried: not counted; its re-run waits queued
    item = c.ask()  # the re-run
    c.fail(item["number"], "error", False)  # not retried: counted
    c.ask()  # running
    c.study.enqueue_trial({"optimizer": "adamw"})
    trials = c.study.get_trials(deepcopy=False)
    scan = (sum(t.state == TrialState.WAITING for t in trials), sum(1 for t in trials if _uses_budget(t)))
    assert budget_counts(c.storage, c.study_id, R.RETRIED) == scan == (1, 4)


@pytest.mark.slow  # a study of 1-s trials run until its timeout
def test_a_study_stopped_by_its_timeout_leaves_its_prepared_trial_queued(ray_local, workdir):
    import autoopt

    spec = StudySpec.from_dict(dict(name="ahead-timeout", task="bench.trivial:SleepTask",
                                    task_options={"sleep_s": 1.0}, n_trials=50, workers=1, seed=0,
                                    timeout_s=4, tracking=False, space={"optimizers": ["adamw"]},
                                    warm_start={"enabled": False}))  # only the sampler's trial ahead is queued
    result = autoopt.run(spec)
    trials = optuna.load_study(study_name="ahead-timeout", storage=open_storage(None)).get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL not in states  # nothing orphaned, nothing failed
    assert states.count(TrialState.WAITING) <= 1 and states.count(TrialState.COMPLETE) >= 1
    assert result.counts["waiting"] == states.count(TrialState.WAITING)
    if TrialState.WAITING in states:  # the next run starts with it: the configuration the sampler chose
        queued = trials[states.index(TrialState.WAITING)]
        resumed = autoopt.run(spec.model_copy(update={"search": spec.search.model_copy(update={"n_trials": len(trials)})}))
        again = optuna.load_study(study_name="ahead-timeout", storage=open_storage(None)).trials[queued.number]
        assert again.state == TrialState.COMPLETE and again.params == queued.params
        assert resumed.counts["waiting"] == 0


# --- MLflow off the trial's path --------------------------------------------------------------
def test_asynchronous_epoch_logging_leaves_every_epoch_in_the_run(tmp_path):
    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="async", flush_every=2))
    assert tracker.start("async", {"n_trials": 1}, "tpe", "none", {}) is not None
    logger = tracker.trial_logger(0, {"optimizer": "sgd"}, {"optimizer": "sgd", "optimizer_params": {"lr": 0.1}})
    run_id = logger.start("h", "cpu")
    history = [EpochRecord(e, 1 / e, e / 10, 0.1, 0.01) for e in range(1, 8)]
    for rec in history:
        logger.log_epoch(rec)
    assert logger._pending  # written by the process's tracking thread, not yet confirmed
    logger.finish(TrialOutcome("complete", 0.7, history))
    assert not logger._pending
    # MLflow's own asynchronous queue stays unused: ending a run that used it waits out its 1-s poll
    from mlflow.tracking._tracking_service.utils import _get_store

    assert _get_store(uri)._async_logging_queue.is_idle()
    run = MlflowClient(uri).get_run(run_id)
    points = MlflowClient(uri).get_metric_history(run_id, "val_metric")
    assert sorted(m.step for m in points) == list(range(1, 8))
    assert run.data.params["optimizer.lr"] == "0.1" and run.info.status == "FINISHED"
    assert run.data.tags["autoopt.epochs_logged"] == "7"


def test_a_trial_run_made_and_ended_in_the_background_is_whole_and_the_driver_finds_an_open_one(tmp_path):
    """A worker creates its trial's run and ends it on its tracking thread (the trial starts and
    returns at once); the driver's end-of-study check waits for those writes and names the runs
    still open, which it then repairs from the storage."""
    from autoopt.tracking import StudyTracker, TrackingConfig, default_tracking_uri, open_trial_runs, tracking_thread

    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="bg", flush_every=2))
    assert tracker.start("bg", {"n_trials": 2}, "tpe", "none", {}, background=True) is not None
    history = [EpochRecord(e, 1 / e, e / 10, 0.1, 0.01) for e in range(1, 6)]
    logger = tracker.trial_logger(0, {"optimizer": "sgd"}, {"optimizer": "sgd", "optimizer_params": {"lr": 0.1}})
    assert logger.start("h", "cpu", background=True) is None  # the run is being made on the tracking thread
    for rec in history:  # epochs reported before the run exists are kept and written after it
        logger.log_epoch(rec)
    logger.finish(TrialOutcome("complete", 0.5, history), background=True)
    # a second trial whose worker died before ending its run: it stays open
    lost = tracker.trial_logger(1, {"optimizer": "sgd"}, {"optimizer": "sgd", "optimizer_params": {"lr": 0.2}})
    lost.start("h", "cpu")
    assert open_trial_runs(tracker, {0, 1}, wait_s=0.5) == {1}
    tracking_thread().submit(lambda: None).result()  # every background write has landed
    run = MlflowClient(uri).get_run(logger.run_id)
    points = MlflowClient(uri).get_metric_history(logger.run_id, "val_metric")
    assert sorted(m.step for m in points) == list(range(1, 6))
    assert run.info.status == "FINISHED" and run.data.params["optimizer.lr"] == "0.1"
    assert run.data.tags["autoopt.epochs_logged"] == "5" and run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    parent = MlflowClient(uri).get_run(tracker.parent_run_id)  # its params, written in the background
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["n_trials"] == "2"


_FIRST_TRIAL_PROBE = """
import pickle, sys, threading
from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.runner import _prepare_worker
from autoopt.tracking import tracking_thread

gate = threading.Event()
tracking_thread().submit(gate.wait)  # the tracking thread is held: nothing queued on it runs yet
_prepare_worker("bench.trivial:TrivialTask", {}, True, None)  # a worker made ready for tracked trials
logger = pickle.loads(open(sys.argv[1], "rb").read())  # the driver's logger for the first trial
logger.start("h", "cpu", background=True)
history = [EpochRecord(e, 1 / e, e / 10, 0.1, 0.01) for e in range(1, 5)]
for rec in history:  # flush_every=2: two asynchronous writes are due during the trial
    logger.log_epoch(rec)
print("mlflow imported on the trial's path:", "mlflow" in sys.modules, flush=True)
gate.set()
logger.finish(TrialOutcome("complete", 0.4, history))
print("run", logger.run_id)
"""


def test_a_workers_first_trial_trains_while_mlflow_imports_and_every_epoch_lands(tmp_path):
    """A worker's MLflow client (1.6 s or more to import) loads on its tracking thread, not before
    the first trial: readying the worker, starting the trial's run and logging its epochs import
    none of it on the trial's own thread, and the writes queued behind the import land whole."""
    import pickle
    import subprocess

    uri = default_tracking_uri(tmp_path)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="first", flush_every=2))
    assert tracker.start("first", {"n_trials": 1}, "tpe", "none", {}) is not None
    logger = tracker.trial_logger(0, {"optimizer": "sgd"}, {"optimizer": "sgd", "optimizer_params": {"lr": 0.1}})
    (tmp_path / "logger.pkl").write_bytes(pickle.dumps(logger))
    out = subprocess.run([sys.executable, "-c", _FIRST_TRIAL_PROBE, str(tmp_path / "logger.pkl")],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mlflow imported on the trial's path: False" in out.stdout, out.stdout
    run_id = out.stdout.split("run ")[-1].strip()
    run = MlflowClient(uri).get_run(run_id)
    points = MlflowClient(uri).get_metric_history(run_id, "val_metric")
    assert sorted(m.step for m in points) == [1, 2, 3, 4]
    assert run.info.status == "FINISHED" and run.data.params["optimizer.lr"] == "0.1"
    assert run.data.tags["autoopt.epochs_logged"] == "4"


def test_a_study_result_is_the_studys_own_summary_read_once(ray_local, workdir):
    """The end of a study reads the trials once (MLflow's summary, the meta-dataset hook and
    the result share it); the result equals the study read back afterwards."""
    import autoopt
    from autoopt.study import summarize

    spec = StudySpec.from_dict(dict(name="read-once", task="bench.trivial:TrivialTask", n_trials=5, workers=2, seed=0,
                                    tracking=True, space={"optimizers": ["adamw", "sgd"]}))
    result = autoopt.run(spec)
    again = summarize("read-once", result.storage_url)
    assert result.counts == again.counts and sum(result.counts.values()) == 5
    assert (result.best_value, result.best_params, result.best_config) == (again.best_value, again.best_params, again.best_config)
    assert result.mlflow_parent_run_id == again.mlflow_parent_run_id is not None
    assert (result.epochs_run, result.epochs_budget) == (again.epochs_run, again.epochs_budget)
    trials = optuna.load_study(study_name="read-once", storage=open_storage(result.storage_url)).get_trials(deepcopy=False)
    runs = MlflowClient(result.tracking_uri).search_runs(
        [MlflowClient(result.tracking_uri).get_run(result.mlflow_parent_run_id).info.experiment_id],
        "tags.`autoopt.role` = 'trial'")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 5  # ended by the workers in the background
    assert all(t.datetime_start <= t.datetime_complete for t in trials)
    # the one epoch's value was not reported on its own: it came with the outcome
    for t in trials:
        assert t.intermediate_values == {h["epoch"]: pytest.approx(h["val_metric"]) for h in t.user_attrs[R.HISTORY]}


def test_the_mid_study_progress_reads_only_the_trials_that_changed(ray_local, workdir, monkeypatch):
    """The driver keeps the MLflow study run's counts live every ``REAP_EVERY_S``. It opened the
    study anew for each write, and a new study's trial cache read every trial: at 1000 trials on
    PostgreSQL about 2 s of the driver's CPU every 15 s, growing with the study. It opens the
    study once: after the first write, each reads only the trials new or unfinished since."""
    import threading

    import sqlalchemy as sa

    import autoopt
    import autoopt.runner

    monkeypatch.setattr(autoopt.runner, "REAP_EVERY_S", 0.2)
    url = f"sqlite:///{workdir}/s.db"
    reads: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if (threading.current_thread().name.startswith("autoopt-mlflow")
                and statement.lstrip().startswith("SELECT trials.trial_id AS trials_trial_id, trials.number")):
            reads.append(statement)

    engine = open_storage(url).engine  # the driver's own storage: one per URL and process
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        spec = StudySpec.from_dict(dict(
            name="progress", task="bench.trivial:SleepTask", task_options={"sleep_s": 0.25}, n_trials=12, workers=2,
            seed=0, tracking=True, storage=url, pruner="none", space={"optimizers": ["adamw"]}))
        result = autoopt.run(spec)
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert result.counts["complete"] == 12
    # a read without "trial_id >" reads every trial of the study; the cache reads that way until
    # it has seen a trial finish, and never again after
    incremental = ["trials.trial_id >" in r for r in reads]
    assert incremental.count(True) >= 3, incremental  # several progress writes once trials finished
    first = incremental.index(True)
    assert all(incremental[first:]), f"reads of every trial after the cache had finished ones: {incremental}"


def test_a_first_trial_runs_on_the_worker_made_ready_for_it(ray_local, workdir):
    """One worker on a two-CPU Ray: the first trial waits for the worker its study made ready
    (imports, a dataset that takes 2 s to build) and trains there, instead of starting at once on
    another process that builds the dataset again."""
    import os

    import autoopt

    marks = workdir / "marks"
    marks.mkdir()
    spec = StudySpec.from_dict(dict(
        name="made-ready", task="helper_tasks:BuiltWhereTask", n_trials=2, workers=1, seed=0, tracking=False,
        task_options={"marks": str(marks), "build_s": 2.0, "size": 0.25, "epochs": 1}, pruner="none",
        space={"optimizers": ["adam"], "schedulers": ["constant"]}))
    result = autoopt.run(spec)
    assert result.counts["complete"] == 2
    # the driver builds it too (for the task's traits): the workers are the other processes
    built = {p.name.split("-", 1)[1] for p in marks.glob("built-*")} - {str(os.getpid())}
    trained = {p.name.split("-", 1)[1] for p in marks.glob("trained-*")}
    assert len(built) == 1 and trained == built, (sorted(built), sorted(trained))


def test_a_study_run_again_with_its_budget_used_says_so_and_how_to_add_trials(ray_local, workdir):
    """Running a finished study again with the same budget starts no trial: the caller is told,
    with the command that raises the budget, instead of seeing the old result as if it were new."""
    import warnings

    import autoopt

    spec = StudySpec.from_dict(dict(name="used-up", task="bench.trivial:TrivialTask", n_trials=2, workers=2, seed=0,
                                    tracking=False, pruner="none", space={"optimizers": ["adam"], "schedulers": ["constant"]}))
    with warnings.catch_warnings(record=True) as first:
        warnings.simplefilter("always")
        autoopt.run(spec)
    assert not [w for w in first if "no trial ran" in str(w.message)]
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        result = autoopt.run(spec)
    said = [str(w.message) for w in again if "no trial ran" in str(w.message)]
    assert said == ["study used-up already has its budget of 2 trials (2 complete, 0 pruned, 0 failed), so no trial "
                    "ran. To add trials, raise the budget: autoopt resume used-up --trials 3 (or n_trials in the spec)"]
    assert result.counts["complete"] == 2
    with warnings.catch_warnings(record=True) as handle:  # the same through submit() and wait()
        warnings.simplefilter("always")
        autoopt.submit(spec).wait()
    assert [str(w.message) for w in handle if "no trial ran" in str(w.message)] == said
    with warnings.catch_warnings(record=True) as more:
        warnings.simplefilter("always")
        result = autoopt.run(spec.model_copy(update={"search": spec.search.model_copy(update={"n_trials": 3})}))
    assert result.counts["complete"] == 3 and not [w for w in more if "no trial ran" in str(w.message)]


# --- the report after the result ------------------------------------------------------------
def test_a_study_report_written_in_the_background_ends_the_parent_run(ray_local, workdir, monkeypatch):
    import autoopt
    from autoopt.report import PLOT_NAMES
    from autoopt.tracking import wait_for_reports

    monkeypatch.setenv("AUTOOPT_REPORT_IN_BACKGROUND", "1")
    drawn_here = []  # the report is drawn in a process of its own: this one never draws it
    monkeypatch.setattr(StudyTracker, "_report_and_end", lambda self, *a: drawn_here.append(a))
    spec = StudySpec.from_dict(dict(name="bg-report", task="tabular", task_options={"size": 0.1, "epochs": 2},
                                    n_trials=2, workers=2, seed=0, space={"optimizers": ["adamw"]}))
    result = autoopt.run(spec)
    assert result.counts["complete"] + result.counts["pruned"] == 2
    assert wait_for_reports(timeout=300)
    assert drawn_here == []
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_value"] == pytest.approx(result.best_value)
    plots = {a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {f"{n}.html" for n in PLOT_NAMES} <= plots


def test_a_one_study_process_draws_its_report_itself(ray_local, workdir, monkeypatch):
    """The CLI runs one study per process (``report_here``): a report process would only add its
    own start and imports (about 4 CPU-s), so the study's thread draws the report, still after the
    result is returned, and the parent run gets its plots and ends."""
    import autoopt.report_process
    from autoopt.report import PLOT_NAMES
    from autoopt.runner import StudyRunner
    from autoopt.tracking import wait_for_reports

    monkeypatch.setenv("AUTOOPT_REPORT_IN_BACKGROUND", "1")
    processes = []
    monkeypatch.setattr(autoopt.report_process, "draw_in_process", lambda payload, **kw: processes.append(payload))
    spec = StudySpec.from_dict(dict(name="report-here", task="tabular", task_options={"size": 0.1, "epochs": 2},
                                    n_trials=2, workers=2, seed=0, space={"optimizers": ["adamw"]}))
    runner = StudyRunner(spec, report_here=True)
    runner.run()
    assert wait_for_reports(timeout=300)
    assert processes == []
    client = MlflowClient(runner.tracker.config.tracking_uri)
    parent = client.get_run(runner.parent_run_id)
    assert parent.info.status == "FINISHED" and "best_value" in parent.data.metrics
    plots = {a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {f"{n}.html" for n in PLOT_NAMES} <= plots


def test_a_report_process_that_fails_leaves_the_report_to_the_driver(workdir, monkeypatch):
    """The report's own process could not draw it (here: it cannot import autoopt): the
    driver's thread draws it, so the parent run still gets its plots and ends."""
    import optuna

    from autoopt.report import PLOT_NAMES

    uri = default_tracking_uri(workdir)
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name="fallback"))
    tracker.start("fallback", {}, "tpe", "none", {})
    study = optuna.create_study(study_name="fallback")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    monkeypatch.setattr(sys, "executable", str(workdir / "no-such-python"))
    tracker._report_elsewhere(study, "finished")
    client = MlflowClient(uri)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {f"{n}.html" for n in PLOT_NAMES} <= {a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "plots")}


# --- a coordinator kept between studies ---------------------------------------------------------
def test_a_drivers_next_study_reuses_its_coordinator_and_keeps_the_studies_apart(ray_local, workdir):
    from autoopt.runner import COORDINATORS, StudyRunner

    COORDINATORS.clear()

    def spec(name: str, n: int) -> StudySpec:
        return StudySpec.from_dict(dict(name=name, task="bench.trivial:TrivialTask", n_trials=n, workers=2,
                                        seed=0, tracking=False, space={"optimizers": ["adamw", "sgd"]}))

    first = StudyRunner(spec("reuse-a", 4))
    first.run()
    second = StudyRunner(spec("reuse-b", 5))
    second.run()
    assert second.coordinator._actor_id == first.coordinator._actor_id  # one process served both
    storage = open_storage(None)
    a = optuna.load_study(study_name="reuse-a", storage=storage)
    b = optuna.load_study(study_name="reuse-b", storage=storage)
    assert [t.state for t in a.trials] == [TrialState.COMPLETE] * 4  # nothing of b's landed in a
    assert [t.state for t in b.trials] == [TrialState.COMPLETE] * 5
    assert all(t.user_attrs[R.SESSION] == second.session for t in b.trials)
    assert b.user_attrs[R.SPEC]["name"] == "reuse-b"

    # a study the reused coordinator refuses (its stored direction differs) fails as on a new one,
    # and that coordinator is not kept: the next study starts a fresh one
    optuna.create_study(study_name="reuse-c", storage=storage, direction="maximize")
    with pytest.raises(SpecError, match="direction"):
        StudyRunner(spec("reuse-c", 2)).run()
    third = StudyRunner(spec("reuse-d", 2))
    third.run()
    assert third.coordinator._actor_id != first.coordinator._actor_id
    assert [t.state for t in optuna.load_study(study_name="reuse-d", storage=storage).trials] == [TrialState.COMPLETE] * 2


def test_a_trials_params_are_stored_in_one_transaction_with_its_next_event(tmp_path):
    """Sampling a configuration writes no row by itself (Optuna commits each param): prepare()
    stores the params with the trial's WAITING state, ask() with its attributes; a write retried
    after an outage (the first one committed) stores nothing twice."""
    import sqlalchemy as sa

    from autoopt.storage import trial_params, write_trial

    c = coordinator(f"sqlite:///{tmp_path}/s.db", retries=0)
    c.n_trials = 4
    commits: list[int] = []
    sa.event.listen(c.storage.engine, "commit", lambda conn: commits.append(1))
    first = c.ask()  # nothing prepared yet: sampled here
    asked = len(commits)
    number = c.prepare()
    prepared = len(commits) - asked
    trials = c.study.get_trials(deepcopy=False)
    assert len(trials[first["number"]].params) >= 5 and trials[first["number"]].params == first["params"]
    assert trials[number].state == TrialState.WAITING and len(trials[number].params) >= 5
    # the trial's own writes (create; attributes or state) and Optuna's reads (SQLite commits those
    # too); one commit per param would add 8 for this space (14 in all, measured before the change)
    assert asked <= 6 and prepared <= 6, (asked, prepared)
    again = optuna.Trial(c.study, trials[number]._trial_id)
    write_trial(c.storage, trials[number]._trial_id, {}, params=trial_params(again))  # stored already: no duplicates
    assert c.study.get_trials(deepcopy=False)[number].params == trials[number].params


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_write_trial_stores_a_whole_event_in_a_few_statements(backend, tmp_path, request):
    """Attributes go in one upsert (Optuna reads the trial and upserts per key), params in one
    insert after two reads; values round-trip, a second write overwrites, and a param whose
    distribution clashes with an earlier trial's is refused as Optuna refuses it."""
    import sqlalchemy as sa
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from autoopt.storage import write_trial

    url = f"sqlite:///{tmp_path}/w.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=f"w-{uuid.uuid4().hex[:6]}")
    first, second = study.ask(), study.ask()
    lr, opt = FloatDistribution(1e-5, 1.0, log=True), CategoricalDistribution(["adamw", "sgd"])
    statements: list[str] = []
    sa.event.listen(storage.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    attrs = {f"k{i}": {"i": i, "xs": [i, i + 0.5]} for i in range(12)}
    write_trial(storage, first._trial_id, attrs, params=[("lr", 0.01, lr), ("opt", 1, opt)])
    writes = [s for s in statements if not s.lstrip().upper().startswith(("SELECT", "BEGIN", "COMMIT", "RELEASE", "SAVEPOINT"))]
    assert len(statements) <= 8 and len(writes) <= 3, statements  # Optuna's own calls: 12 reads + 12 upserts + 6 for params
    write_trial(storage, first._trial_id, {"k0": "new"}, TrialState.COMPLETE, [0.5])
    done = storage.get_trial(first._trial_id)
    assert done.user_attrs == {**attrs, "k0": "new"} and done.params == {"lr": 0.01, "opt": "sgd"}
    assert done.state == TrialState.COMPLETE and done.value == 0.5
    with pytest.raises(ValueError):
        write_trial(storage, second._trial_id, {}, params=[("opt", 0, CategoricalDistribution(["adam", "lion"]))])
    assert storage.get_trial(second._trial_id).params == {}  # the event's transaction was rolled back


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_param_name_seen_once_is_not_looked_up_again(backend, tmp_path, request):
    """The check of a param against the study's earlier distribution under its name read every
    param of the study under those names (a GROUP BY over all trials): on PostgreSQL it grew from
    1.6 ms a trial at 100 trials to 16 ms at 1000, the most of the coordinator's growth. The
    coordinator keeps the names it has seen (``known_distributions``): the next trials read none,
    a new name is still looked up, and a clash with a stored distribution is still refused."""
    import sqlalchemy as sa
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from autoopt.storage import write_trial

    url = f"sqlite:///{tmp_path}/w.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=f"k-{uuid.uuid4().hex[:6]}")
    trials = [study.ask() for _ in range(4)]
    lr, opt = FloatDistribution(1e-5, 1.0, log=True), CategoricalDistribution(["adamw", "sgd"])
    # another driver stored "opt" first, with other choices than ours will have
    write_trial(storage, trials[0]._trial_id, {}, params=[("opt", 0, CategoricalDistribution(["adam", "lion"]))])
    known: dict[str, str] = {}
    statements: list[str] = []
    sa.event.listen(storage.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    scans = lambda: [s for s in statements if "GROUP BY" in s.upper()]  # noqa: E731
    write_trial(storage, trials[1]._trial_id, {}, params=[("lr", 0.01, lr)], known_distributions=known)
    assert len(scans()) == 1 and "lr" in known
    statements.clear()
    write_trial(storage, trials[2]._trial_id, {}, params=[("lr", 0.02, lr)], known_distributions=known)
    assert scans() == [] and storage.get_trial(trials[2]._trial_id).params == {"lr": 0.02}
    with pytest.raises(ValueError):  # a new name is looked up: the other driver's "opt" clashes
        write_trial(storage, trials[3]._trial_id, {}, params=[("lr", 0.03, lr), ("opt", 1, opt)],
                    known_distributions=known)
    assert len(scans()) == 1 and storage.get_trial(trials[3]._trial_id).params == {}
    with pytest.raises(ValueError):  # and a known name's clash too, without a read
        statements.clear()
        write_trial(storage, trials[3]._trial_id, {}, params=[("lr", 3, CategoricalDistribution([1, 2, 3]))],
                    known_distributions=known)
    assert scans() == []


# --- a study name already used for another objective -------------------------------------------
def test_a_stored_study_of_another_objective_is_refused_and_a_changed_space_is_not(tmp_path):
    url, name = f"sqlite:///{tmp_path}/s.db", f"s-{uuid.uuid4().hex[:6]}"

    def open_with(task="tabular", metric="accuracy", task_options=None, optimizers=("adamw",)):
        spec = {"task": task, "task_options": task_options or {}, "space": {"optimizers": list(optimizers)}}
        return StudyCoordinator(
            name, SearchSpec(task=task, space=SpaceSpec(optimizers=list(optimizers)), n_trials=None),
            ExecutionSpec(), PlacesSpec(storage=url), TaskFacts("maximize", TRAITS, max_epochs=3),
            study_attrs={R.SPEC: spec, R.TASK: task, R.METRIC: metric})

    first = open_with(task_options={"size": 0.25})
    first.tell(first.ask()["number"], outcome("complete", 0.5, 3))
    # how the study searches may change between runs: it is continued
    again = open_with(task_options={"size": 0.25}, optimizers=("adamw", "sgd"))
    assert again.study.user_attrs[R.SPEC]["space"]["optimizers"] == ["adamw", "sgd"]
    for kwargs, needle in (({"task": "cv", "task_options": {"size": 0.25}}, "task 'tabular' (this run: 'cv')"),
                           ({"metric": "loss", "task_options": {"size": 0.25}}, "metric 'accuracy' (this run: 'loss')"),
                           ({"task_options": {"size": 0.5}}, "task_options {'size': 0.25} (this run: {'size': 0.5})"),
                           ({}, "task_options {'size': 0.25} (this run: {})")):
        with pytest.raises(SpecError, match=rf"study '{name}' exists in this storage with") as caught:
            open_with(**kwargs)
        assert needle in str(caught.value), str(caught.value)
    # as a Ray actor: the refusal is kept and raised by the driver's first call, summary()
    kept = StudyCoordinator(
        name, SearchSpec(task="cv", space=SpaceSpec(optimizers=["adamw"]), n_trials=None), ExecutionSpec(),
        PlacesSpec(storage=url), TaskFacts("maximize", TRAITS, max_epochs=3),
        study_attrs={R.SPEC: {"task": "cv"}, R.TASK: "cv", R.METRIC: "accuracy"}, keep_refusal=True)
    with pytest.raises(SpecError, match="task 'tabular' \\(this run: 'cv'\\)"):
        kept.summary()
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.trials) == 1 and study.user_attrs[R.TASK] == "tabular"  # nothing of the refused runs written
    assert study.user_attrs[R.SPEC]["task_options"] == {"size": 0.25}


def _states(url: str, name: str) -> list[TrialState]:
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:  # not created yet
        return []
    return [t.state for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize("timeout_s", [None, 600])
def test_the_next_trial_waits_in_ray_behind_a_running_one_and_never_beside_it(ray_local, workdir, timeout_s):
    """With 1 worker on a 2-CPU Ray, the study hands Ray a second trial while the first runs
    (QUEUE_AHEAD: the worker starts it without waiting for the driver), queued behind that trial:
    the free CPU does not run it. A study with a timeout queues none (one still queued at the
    deadline would end interrupted); its next trial is sampled ahead, WAITING, instead. The last
    trial of the budget is not queued either (it is sampled ahead)."""
    import autoopt

    # two workers with the task built first, so a trial Ray started on the free CPU would reach
    # the gate at once (a cold worker takes seconds to import torch)
    (workdir / "open-gate").mkdir()
    (workdir / "open-gate" / "open").touch()
    autoopt.run(StudySpec.from_dict({"name": f"warm-{uuid.uuid4().hex[:6]}", "task": "helper_tasks:GatedTask",
                                     "task_options": {"gate": str(workdir / "open-gate"), "epochs": 1}, "n_trials": 2,
                                     "workers": 2, "tracking": False, "pruner": "none",
                                     "search": {"warm_start": {"enabled": False}}}))
    gate = workdir / "gate"
    gate.mkdir()
    name = f"queued-{uuid.uuid4().hex[:6]}"
    spec = StudySpec.from_dict({"name": name, "task": "helper_tasks:GatedTask", "n_trials": 3, "workers": 1,
                                "task_options": {"gate": str(gate), "epochs": 1}, "seed": 0, "tracking": False,
                                "pruner": "none", "timeout_s": timeout_s, "search": {"warm_start": {"enabled": False}}})
    handle = autoopt.submit(spec)
    url = handle.storage_url
    deadline = time.time() + 120
    while not list(gate.glob("held-*")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(gate.glob("held-*")), "the first trial never reached its worker"
    queued = 2 if timeout_s is None else 1
    while _states(url, name).count(TrialState.RUNNING) < queued and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # long enough for a trial Ray could start on the free CPU to reach the gate
    states = _states(url, name)
    assert states.count(TrialState.RUNNING) == queued, states
    assert states.count(TrialState.WAITING) <= 1, states  # the last trial, sampled ahead (prepare)
    assert len(list(gate.glob("held-*"))) == 1, "a queued trial started beside the running one"
    (gate / "open").touch()
    result = handle.wait(timeout=180)
    assert result.counts["complete"] == 3 and result.counts["failed"] == 0
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    # each trial's real start (its worker's clock) and the seconds it trained: none began while another trained
    spans = sorted((t.datetime_start.timestamp(), t.user_attrs[R.SECONDS]) for t in trials)
    assert all(later[0] >= sum(earlier) for earlier, later in zip(spans, spans[1:])), spans
