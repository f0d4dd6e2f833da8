"""The one process that talks to a study's storage.

Ray workers never open the database: they send epoch reports here and get the pruner's answer
back. The driver asks this actor for new trials and tells it outcomes. Serialising storage
access through one owner is what makes the embedded SQLite default safe under parallel workers
and lets the same design run against PostgreSQL on a cluster.

Fault tolerance that Optuna only offers for RDB storages (heartbeats, stale-trial retry) lives
here for every storage: each driver session writes a heartbeat, and RUNNING trials whose
session has gone quiet are failed with a reason and, if configured, re-enqueued.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, TypeVar

import optuna
import sqlalchemy
from optuna.trial import TrialState

from autoopt.core import record as R
from autoopt.core.traits import TaskTraits
from autoopt.redaction import redact_text
from autoopt.sampling import ChoiceRestrictingSampler, make_pruner, make_sampler
from autoopt.space import SearchSpace
from autoopt.spec import ExecutionSpec, PlacesSpec, SearchSpec, SpecError
from autoopt.storage import (DeferredParams, StorageError, budget_counts, claim_waiting, open_storage, redact,
                             refresh_statistics, trial_params, write_trial)

_log = logging.getLogger(__name__)
#: On a re-run that a stalled driver took back (_reclaim): the number of the trial it ran first.
RECLAIMED_FROM = R.PREFIX + "reclaimed_from"
#: How stale the coordinator's tally (counts, best) may get before summary recounts from the storage:
#: its own events update it at once; other drivers' trials show up within this time.
TALLY_REFRESH_S = 5.0
STATE_NAMES = {TrialState[k]: v for k, v in R.STATE_COUNTS.items()}
#: Trials finished by a coordinator before it first renews a PostgreSQL storage's statistics; then
#: each time that count doubles (storage.refresh_statistics: reads by trial id stay index reads).
FIRST_ANALYZE_AT = 32
_F = TypeVar("_F", bound=Callable[..., Any])


def is_connection_error(exc: BaseException) -> bool:
    """Does ``exc`` (or what caused it) say the database connection was lost or refused?"""
    import sqlalchemy

    try:
        import psycopg
        dbapi_errors: tuple[type, ...] = (psycopg.OperationalError, psycopg.InterfaceError)
    except ImportError:  # pragma: no cover - psycopg is a dependency
        dbapi_errors = ()
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StorageError):  # an inner call already gave up
            return False
        orig = getattr(e, "orig", None)
        if isinstance(e, sqlite3.Error) or isinstance(orig, sqlite3.Error):  # a file: only a lock is transient
            return "locked" in str(orig if orig is not None else e)
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, *dbapi_errors)):
            return True
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    return False


def disk_full_cause(exc: BaseException) -> str | None:
    """The real error, if ``exc`` (or what caused it) says the storage's disk is full. Optuna
    reports it as "... e.g. exceeding max length", which sends users looking in the wrong place."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for candidate in (e, getattr(e, "orig", None)):
            if isinstance(candidate, OSError) and candidate.errno in (errno.ENOSPC, errno.EDQUOT):
                return f"{candidate.strerror or 'no space left on device'}"
            if isinstance(candidate, sqlite3.Error) and "disk is full" in str(candidate):
                return str(candidate)
            if getattr(candidate, "sqlstate", None) == "53100":  # PostgreSQL disk_full
                return (str(candidate).strip().splitlines() or ["disk full"])[0]
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    return None


#: Calls that still write once the storage was found full: recording how trials ended.
_RECORDING = ("tell", "fail", "fail_running")
#: Calls the driver does not wait for: skipped once the storage is full.
_BACKGROUND = ("heartbeat", "reap_stale")
#: Space set aside next to a SQLite/journal file, given back when its disk is full so that the
#: trials in flight can still be recorded as failed with the real reason.
RESERVE_BYTES = 1 << 20


def _survives_storage_outage(method: _F) -> _F:
    """Retry a coordinator call while the storage is unreachable, for up to ``storage_retry_s``.

    The actor serves one call at a time, so workers waiting for a pruning answer and the driver
    waiting for the next trial simply block until the database is back. Then a clear
    StorageError (with the URL's password hidden) ends the study; ``autoopt resume`` continues it.
    """

    @functools.wraps(method)
    def wrapper(self: "StudyCoordinator", *args: Any, **kwargs: Any) -> Any:
        if self.full is not None and method.__name__ not in _RECORDING and not getattr(method, "_reads", False):
            if method.__name__ in _BACKGROUND:
                return None  # the driver stops on the next call it waits for; no noise from these
            raise StorageFullError(self.full)  # no new work once the disk is full
        deadline = time.monotonic() + self.storage_retry_s
        delay = 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only connection errors are retried
                cause = disk_full_cause(exc)
                if cause is not None:
                    if self.full is None:
                        self.full = (f"storage {redact(self.storage_url)} is full ({cause}); the study stopped and "
                                     f"what is stored is intact. Free space, then run `autoopt resume {self.study_name}`.")
                        _release_reserve(self.storage_url)
                    raise StorageFullError(self.full) from None
                if not is_connection_error(exc):
                    raise

                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                if time.monotonic() + delay > deadline:
                    raise StorageError(
                        f"storage {redact(self.storage_url)} unreachable for {self.storage_retry_s:.0f} s "
                        f"({method.__name__}: {first}). Finished trials are kept; when it is back, run "
                        f"`autoopt resume {self.study_name}`."
                    ) from None
                self.storage_outages += 1
                _log.warning("autoopt: storage %s unreachable (%s: %s); retrying in %.1f s",
                             redact(self.storage_url), method.__name__, first, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper  # type: ignore[return-value]


class StorageFullError(StorageError):
    """The storage's disk is full: the study stops (trials in flight are recorded as failed)."""


def _reads(method: _F) -> _F:
    """Mark a call that only reads: it still answers once the storage is full."""
    method._reads = True  # type: ignore[attr-defined]
    return method


def _reserve_path(storage_url: str) -> str | None:
    path = _storage_file(storage_url)
    return f"{path}.autoopt-reserve" if path else None


def _keep_reserve(storage_url: str) -> None:
    path = _reserve_path(storage_url)
    if path is None:
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)  # real blocks, not a sparse file
        finally:
            os.close(fd)
    except OSError:  # no room for it (or no fallocate): the trials in flight may stay RUNNING until resume
        pass


def _release_reserve(storage_url: str) -> None:
    path = _reserve_path(storage_url)
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


#: First key of the PostgreSQL advisory lock that guards a study's trial budget (the second is the study id).
_PG_LOCK_CLASS = 0x6175746F  # "auto"


@contextlib.contextmanager
def budget_lock(storage: Any, storage_url: str, study_id: int) -> Iterator[None]:
    """Held while a driver counts the budget and creates its next trial, across processes and
    machines: a PostgreSQL advisory lock (a transaction-scoped one, released on commit or when a
    connection dies; it does not block Optuna's own row locks), and for a SQLite or journal file
    an ``flock`` on a file next to it (the kernel releases it when the holder dies)."""
    engine = getattr(storage, "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        import sqlalchemy

        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:c, :s)"), {"c": _PG_LOCK_CLASS, "s": study_id})
            yield
        return
    path = _storage_file(storage_url)
    if path is None:  # in-memory: one process
        with _LOCAL_BUDGET_LOCK:
            yield
        return
    with open(f"{path}.autoopt-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_LOCAL_BUDGET_LOCK = threading.Lock()


def _storage_file(url: str) -> str | None:
    if url.startswith("journal://"):
        return url[len("journal://"):]
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        return path if path and path != ":memory:" else None
    return None


def _uses_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Counts against ``n_trials``: every trial but a queued one and a failure that was re-run."""
    return trial.state != TrialState.WAITING and not trial.user_attrs.get(R.RETRIED)


def objective_change(stored: dict[str, Any], new: dict[str, Any]) -> str | None:
    """How a run's objective differs from the one a stored study of the same name measured (None:
    the same, or not known). Its trials would then rank values of another task, metric or data
    side by side, and ``best`` would answer across them; a changed space, sampler, pruner or budget
    is a study continued, not another objective."""
    changes = []
    for key, what in ((R.TASK, "task"), (R.METRIC, "metric")):
        old, now = stored.get(key), new.get(key)
        if old is not None and now is not None and old != now:
            changes.append(f"{what} {old!r} (this run: {now!r})")
    old_spec, new_spec = stored.get(R.SPEC), new.get(R.SPEC)
    if isinstance(old_spec, dict) and isinstance(new_spec, dict) and not changes:
        old, now = old_spec.get("task_options") or {}, new_spec.get("task_options") or {}
        if old != now:
            changes.append(f"task_options {old} (this run: {now})")
    return "; ".join(changes) or None


@dataclass(frozen=True)
class TaskFacts:
    """What the driver measured about the task that the coordinator needs (it never loads the task)."""

    direction: str
    traits: TaskTraits
    #: The pruner's resource: epochs, or evaluations per run with ``eval_every_steps``.
    max_epochs: int
    #: Whether the model has hidden 2-D weights (Muon applies only to those).
    has_matrix_params: bool = True


class StudyCoordinator:
    """Owns one Optuna study: ask, report/prune, tell, fail/retry, heartbeats. Run as a Ray actor."""

    def __init__(
        self,
        name: str,
        search: SearchSpec,
        execution: ExecutionSpec,
        places: PlacesSpec,
        task: TaskFacts,
        *,
        study_attrs: dict[str, Any] | None = None,
        session: str | None = None,
        prior_curves: list[tuple[list[int], list[float]]] | None = None,
        keep_refusal: bool = False,
    ) -> None:
        """``prior_curves``: similar tasks' finished curves, which the driver read from its
        meta-dataset for ``learning_curve`` with ``similar_tasks: true``. ``keep_refusal``: as a
        Ray actor, a refusal of its own (a spec that does not fit the stored study, an
        unreachable storage) is kept and raised by :meth:`summary`, the driver's first call: an
        actor whose constructor raises is dead, and the driver gets only its formatted text (a
        Ray traceback), while a method's error reaches it as the exception itself."""
        self._refusal: Exception | None = None
        try:
            self._open(name, search, execution, places, task, study_attrs=study_attrs, session=session,
                       prior_curves=prior_curves)
        except (SpecError, StorageError) as exc:
            if not keep_refusal:
                raise
            self._refusal = exc

    def _open(self, name: str, search: SearchSpec, execution: ExecutionSpec, places: PlacesSpec, task: TaskFacts, *,
              study_attrs: dict[str, Any] | None, session: str | None,
              prior_curves: list[tuple[list[int], list[float]]] | None) -> None:
        if not places.storage:
            raise SpecError("the coordinator needs the storage URL the driver resolved (places.storage)")
        self.session = session or uuid.uuid4().hex[:12]
        self.storage_url = places.storage
        self.study_name = name
        # the driver's settings, passed in: on a cluster this actor's own environment is the head's
        self.storage_retry_s = execution.storage_retry_s
        self.stale_after_s = execution.stale_after_s
        self.storage_outages = 0
        self.full: str | None = None  # set once the storage's disk was found full
        self.heartbeat_s = execution.heartbeat_s
        self.max_epochs = task.max_epochs
        self.n_trials = search.n_trials
        self.retries = execution.retries
        self.traits = task.traits
        self.space = SearchSpace(search.space, self.traits, has_matrix_params=task.has_matrix_params)
        self.storage = open_storage(self.storage_url)
        #: the study's stored distribution per param name (write_trial's check reads each name once)
        self._distributions: dict[str, str] = {}
        _keep_reserve(self.storage_url)
        base = make_sampler(search.sampler, seed=search.seed, **search.sampler_options)
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=name,
            direction=task.direction,
            sampler=ChoiceRestrictingSampler(base, self.space.restrictions, snapshot=True),
            pruner=make_pruner(search.pruner, task.max_epochs, **{**search.pruner_options, "prior_curves": prior_curves}),
            load_if_exists=True,
        )
        metric = (study_attrs or {}).get(R.METRIC)
        if metric and self.study.metric_names != [metric]:  # optuna-dashboard labels the value with it
            self.study.set_metric_names([metric])
        if self.study.direction.name.lower() != task.direction:
            raise SpecError(
                f"study {name!r} exists with direction {self.study.direction.name.lower()}, "
                f"but this task's metric is {task.direction}d"
            )
        attrs = self.study.user_attrs
        changed = objective_change(attrs, study_attrs or {})
        if changed:
            raise SpecError(
                f"study {name!r} exists in this storage with {changed}: its trials measured another "
                "objective; give this run another name (or use another storage)"
            )
        # the study's rows are read and written through this storage's public API by number and
        # id (an optuna.Study exposes neither its storage nor its id)
        self.study_id = self.storage.get_study_id_from_name(name)
        for key, value in (study_attrs or {}).items():
            if key not in attrs or key in (R.SPEC, R.SPACE, R.PRUNER_PRIOR_CURVES):
                self.study.set_user_attr(key, value)
        self._live: dict[int, optuna.Trial] = {}
        self._waiting: set[int] = set()  # WAITING trial numbers as of the last tally refresh
        self._warm: set[int] = set()  # those of them queued from the recommender (warm start)
        self._asking: optuna.Trial | None = None
        self._trial_ids: dict[int, int] = {}  # number -> storage id
        self._configs: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}  # running here: config, params
        #: trials prepare() sampled and queued: their configuration and params, for ask()
        self._prepared: dict[int, tuple[Any, dict[str, Any]]] = {}
        #: the node each running trial's worker announced (on the Ray client: lost_trials)
        self._nodes: dict[int, str] = {}
        #: a trial prepare() sampled whose WAITING write the storage refused (retried first)
        self._unqueued: tuple[optuna.Trial, Any] | None = None
        self._claimed: dict[int, int] = {}  # a trial this driver ran -> the re-run it took over (_reclaim)
        self._last_beat = 0.0
        self._quiet_until = 0.0  # after a stall of its own, this driver reaps nobody until then
        self._tally: dict[str, Any] = {}
        self._tally_at = 0.0
        self._finished_here = 0
        self._analyze_at = FIRST_ANALYZE_AT  # finished trials here before the tables' statistics are renewed
        self.heartbeat()
        self.reap_stale()
        self._refresh_tally()

    # --- trials --------------------------------------------------------------------------
    @_survives_storage_outage
    @_reads
    def counted(self) -> int:
        """Trials that use up the budget: all but waiting ones and failures that were retried."""
        return self._budget()[1]

    def _budget(self) -> tuple[int, int]:
        """(WAITING trials, trials that use the budget): one counting query on an RDB storage."""
        counts = budget_counts(self.storage, self.study_id, R.RETRIED)
        if counts is not None:
            return counts
        trials = self.study.get_trials(deepcopy=False)
        return sum(t.state == TrialState.WAITING for t in trials), sum(1 for t in trials if _uses_budget(t))

    @_survives_storage_outage
    def ask(self) -> dict[str, Any] | None:
        """The next trial to run, or None when the trial budget is used up."""
        # a call retried after an outage goes on with the trial it had already created: sampling
        # it again returns the stored params, so no orphan RUNNING trial is left behind
        trial = self._asking
        if trial is not None and self.storage.get_trial(self._trial_id(trial.number)).state.is_finished():
            trial = None  # another driver declared it abandoned meanwhile (a long outage): start afresh
        written = False
        if trial is None:
            # counting and taking a slot is one step for all drivers of the study: two drivers
            # that both see one slot left would otherwise both take it
            with budget_lock(self.storage, self.storage_url, self.study_id):
                if self.n_trials is not None and self.counted() >= self.n_trials:
                    return None
                trial, written = self._claim_prepared()
                if trial is None:
                    trial = self.study.ask()
        self._asking = trial
        prepared = self._prepared.pop(trial.number, None)  # sampled ahead by prepare(): not again
        try:
            if prepared is not None:
                config, params = prepared
            else:  # the params are written with the attributes below
                trial.storage, params = DeferredParams(self.storage), None
                config = self.space.sample(trial)
        except Exception as exc:  # e.g. an enqueued config outside the current space
            if is_connection_error(exc):
                raise
            self._asking = None
            self._finish(trial.number, TrialState.FAIL, None, R.failure_attrs(f"sampling failed: {exc}"))
            return self.ask()
        if not written:  # one transaction for the trial's attributes (Optuna's set_user_attr commits each key)
            write_trial(self.storage, trial._trial_id, self._start_attrs(config),
                        params=trial_params(trial) if prepared is None else None,
                        known_distributions=self._distributions)
        trial.storage = self.storage
        self._asking = None
        self._live[trial.number] = trial
        self._trial_ids[trial.number] = trial._trial_id
        self._configs[trial.number] = (config.to_dict(), params if params is not None else dict(trial.params))
        self._count("running", +1, counted=+1, waiting=trial.number in self._waiting)
        self._waiting.discard(trial.number)
        cfg, params = self._configs[trial.number]
        warm = trial.number in self._warm
        self._warm.discard(trial.number)
        return {"number": trial.number, "config": cfg, "params": params, "warm_start": warm}

    def _start_attrs(self, config: Any) -> dict[str, Any]:
        return {R.CONFIG: config.to_dict(), R.SESSION: self.session, R.MAX_EPOCHS: self.max_epochs}

    def _claim_prepared(self) -> tuple[optuna.Trial | None, bool]:
        """This driver's oldest prepared trial, claimed WAITING -> RUNNING with its attributes in
        one transaction: (the trial, True). Optuna's ``ask`` finds a queued trial by reading every
        unfinished one (about 15 ms on SQLite, the larger part of an ask). (None, False) when none
        is prepared, another driver took it first, or the storage is not an RDB one."""
        for number in list(self._prepared):
            config, _ = self._prepared[number]
            trial_id = self._trial_id(number)
            if claim_waiting(self.storage, trial_id, self._start_attrs(config)):
                return optuna.Trial(self.study, trial_id), True
            self._prepared.pop(number)  # taken by another driver (or not claimable here): Optuna's ask decides
            self._waiting.discard(number)
        return None, False

    @_survives_storage_outage
    def report(self, number: int, epoch: int, value: float, decide: bool = True) -> bool:
        """Record an intermediate value; True means the pruner wants the trial stopped.
        ``decide=False``: the worker does not wait for the answer (an epoch where the pruner
        cannot stop it), so the pruner is not asked (it reads the study: a dozen queries)."""
        trial = self._live.get(self._claimed.get(number, number))
        if trial is None:
            return True  # the trial was failed meanwhile (e.g. declared stale): stop it
        try:
            trial.report(value, step=epoch)
        except optuna.exceptions.UpdateFinishedTrialError:
            # another driver took this one for dead (it was stalled) and queued a re-run
            trial = self._reclaim(number)
            if trial is None:
                return True  # the re-run already started elsewhere: that copy goes on, this one stops
            trial.report(value, step=epoch)
        if time.time() - self._last_beat >= self.heartbeat_s:
            self.heartbeat()  # a reporting worker keeps its driver's session alive, stalled loop or not
        return trial.should_prune() if decide else False

    def _reclaim(self, number: int, history: list[dict[str, Any]] | None = None) -> optuna.Trial | None:
        """Trial ``number`` runs here, but another driver failed it as abandoned (this driver was
        stalled longer than ``stale_after_s``) and queued its re-run. Take that re-run over while it
        is still WAITING (an atomic claim, as Optuna's own ask does), with the values reported so
        far, and go on under its number; None if another driver got it first."""
        storage = self.storage
        frozen = storage.get_trial(self._trial_id(number))
        if not str(frozen.user_attrs.get(R.REASON) or "").startswith("abandoned"):
            return None
        rerun = next((t for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                      if t.user_attrs.get(R.RETRY_OF) == number), None)
        if rerun is None or not storage.set_trial_state_values(rerun._trial_id, TrialState.RUNNING):
            self._live.pop(number, None)
            return None
        trial = optuna.Trial(self.study, rerun._trial_id)
        config = self.space.sample(trial)  # its fixed params: the same configuration
        trial.set_user_attr(R.CONFIG, config.to_dict())
        trial.set_user_attr(R.SESSION, self.session)
        trial.set_user_attr(R.MAX_EPOCHS, self.max_epochs)
        trial.set_user_attr(RECLAIMED_FROM, number)
        values = dict(frozen.intermediate_values)
        values.update({i + 1: h["val_metric"] for i, h in enumerate(history or [])})  # the pruner's steps
        for step, value in sorted(values.items()):
            trial.report(value, step=step)
        self._live.pop(number, None)
        self._live[trial.number] = trial
        self._claimed[number] = trial.number
        self._refresh_tally()
        _log.warning("autoopt: trial %d was taken for abandoned while it ran here; it goes on as trial %d",
                     number, trial.number)
        return trial

    @_survives_storage_outage
    def tell(self, number: int, outcome: dict[str, Any]) -> str:
        """Store a worker's outcome (status, value, curve, reason) and close the trial."""
        self._nodes.pop(number, None)
        state, value, attrs = R.outcome_attrs(outcome)
        if self.full is not None and "StorageFullError" in str(outcome.get("reason")):
            # it failed only because its reports could not be stored: recorded as stopped, to run again
            self.fail(number, f"stopped: {self.full.split(';')[0]}", True)
            return TrialState.FAIL.name
        frozen = None
        if number in self._live and number not in self._claimed:
            frozen = self.storage.get_trial(self._trial_id(number))
            if frozen.state.is_finished():
                # failed as abandoned while it ran here: record the outcome on its re-run if still free
                self._reclaim(number, outcome.get("history"))
                frozen = None
        started = outcome.get("started_at")
        last = outcome.get("last_report")  # the last epoch's value, stored with the trial's end
        self._finish(self._claimed.get(number, number), TrialState[state], value, attrs, frozen,
                     started=datetime.fromtimestamp(started) if isinstance(started, (int, float)) else None,
                     intermediate={int(last[0]): float(last[1])} if last else None)
        return state

    def _finished_elsewhere(self, number: int) -> bool:
        return self.storage.get_trial(self._trial_id(number)).state.is_finished()

    @_survives_storage_outage
    def fail(self, number: int, reason: str, retry: bool, not_started: bool = False) -> bool:
        """A trial whose worker died: record why; re-enqueue its params if retries are left.
        ``not_started``: handed to a worker that never started it (queued behind a trial that was
        lost): its params are queued again whatever the retries, as the same attempt."""
        self._nodes.pop(number, None)
        trial_id = self._trial_id(number)
        frozen = self.storage.get_trial(trial_id)
        if not frozen.state.is_finished():
            attempt = int(frozen.user_attrs.get(R.ATTEMPT, 0))
            retried = not_started or (retry and attempt < self.retries)
            # close the trial first, then enqueue its re-run: a call retried after an outage
            # between the two finds the trial failed and enqueues the re-run exactly once
            self._finish(number, TrialState.FAIL, None, R.failure_attrs(reason, retried))
            frozen = self.storage.get_trial(trial_id)
        self._live.pop(number, None)
        retried = bool(frozen.state == TrialState.FAIL and frozen.user_attrs.get(R.RETRIED))
        if retried and not any(t.user_attrs.get(R.RETRY_OF) == number for t in self.study.get_trials(deepcopy=False)):
            attempt = int(frozen.user_attrs.get(R.ATTEMPT, 0)) + (0 if not_started else 1)
            self.study.enqueue_trial(dict(frozen.params), user_attrs={R.ATTEMPT: attempt, R.RETRY_OF: number}, skip_if_exists=False)
            self._refresh_tally()  # a new WAITING trial (rare: a retry)
        return retried

    def trial_started(self, number: int, node_id: str) -> None:
        """A trial's worker says where it runs, before it trains (it waits for this; kept in memory only)."""
        self._nodes[number] = node_id

    def trial_nodes(self) -> dict[int, str]:
        """The node each running trial's worker announced (what :meth:`lost_trials` goes on)."""
        return dict(self._nodes)

    def lost_trials(self) -> list[int]:
        """Announced running trials whose node Ray's GCS lists as dead. The driver on the Ray
        client asks: its client server sometimes never learns that such a trial's worker is gone."""
        import ray

        if not self._nodes:
            return []
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        return sorted(number for number, node in self._nodes.items() if node not in alive)

    @_survives_storage_outage
    def prepare(self) -> int | None:
        """Sample the next trial before a worker asks for it and queue it (WAITING), so the
        sampler runs while the workers train and ``ask`` only takes the queued trial. Nothing to
        do when a trial is already queued or the budget is used up; returns the queued number.

        Queued, the trial is not counted against the budget and not RUNNING: a driver that dies
        leaves it for the next run (or another driver) to take, like an enqueued configuration."""
        with budget_lock(self.storage, self.storage_url, self.study_id):
            # a trial asked before an outage stopped its sampling or its WAITING write (it is
            # RUNNING, with no worker) is queued first, rather than left to the reaper
            if self._unqueued is None:
                # one count for both: a queued trial (any driver's, or enqueued) is taken first, and
                # queued trials will use the budget when they run, so none is queued beyond it
                waiting, counted = self._budget()
                if waiting or (self.n_trials is not None and counted >= self.n_trials):
                    return None
                trial = self.study.ask()
                trial.storage = DeferredParams(self.storage)
                self._unqueued = (trial, None)
            return self._queue_unqueued()

    def _queue_unqueued(self) -> int | None:
        """Sample the asked trial (unless that was done before an outage) and queue it; its
        number, or None when sampling failed (the trial is then recorded FAIL with why)."""
        assert self._unqueued is not None
        trial, config = self._unqueued
        if config is None:
            try:
                config = self.space.sample(trial)  # the sampler's work; the params are stored with the trial
            except Exception as exc:
                if is_connection_error(exc):
                    raise  # retried: the params suggested so far are kept on the trial
                self._unqueued = None
                self._finish(trial.number, TrialState.FAIL, None, R.failure_attrs(f"sampling failed: {exc}"))
                return None
            self._unqueued = (trial, config)
        # the params and RUNNING -> WAITING in one transaction: Optuna's next ask takes it
        write_trial(self.storage, trial._trial_id, {}, TrialState.WAITING, params=trial_params(trial),
                    known_distributions=self._distributions)
        self._unqueued = None
        self._prepared[trial.number] = (config, dict(trial.params))
        self._waiting.add(trial.number)
        self._count("waiting", +1)
        return trial.number

    @_survives_storage_outage
    def fail_running(self, reason: str) -> list[int]:
        """Fail (and queue to re-run) every trial of this driver still RUNNING: the study stopped.
        A trial sampled ahead whose WAITING write the stop's cause cut short (a full disk, an
        outage) is RUNNING with no worker: it is queued now, as ``prepare`` would have, so a
        resume takes it first instead of reaping it as abandoned."""
        mine = [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get(R.SESSION) == self.session]
        for number in mine:
            self.fail(number, reason, True)
        if self._unqueued is not None:
            try:
                with budget_lock(self.storage, self.storage_url, self.study_id):
                    self._queue_unqueued()
            except Exception as exc:  # noqa: BLE001 - best effort: a resume reaps it as abandoned
                _log.debug("autoopt: the trial sampled ahead could not be queued at the stop: %s", exc)
        return mine

    def _trial_id(self, number: int) -> int:
        """A trial's storage id (fixed once the trial exists: looked up once)."""
        trial_id = self._trial_ids.get(number)
        if trial_id is None:
            trial_id = self._trial_ids[number] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return trial_id

    def _finish(self, number: int, state: TrialState, value: float | None, attrs: dict[str, Any],
                frozen: optuna.trial.FrozenTrial | None = None, started: datetime | None = None,
                intermediate: dict[int, float] | None = None) -> None:
        """Write the outcome's attributes and close the trial in one transaction. Idempotent: a
        call retried after an outage (the first try may have committed) leaves an already-finished
        trial as it is. ``frozen``: the trial as just read by the caller (not read again);
        ``intermediate``: reported values the worker did not send (its last epoch's)."""
        trial_id = self._trial_id(number)
        if frozen is None:
            frozen = self.storage.get_trial(trial_id)
        if frozen.state.is_finished():
            self._live.pop(number, None)
            return
        values: list[float] | None = None
        if state == TrialState.COMPLETE:
            values = [float(value)] if value is not None else None
            if values is None or not math.isfinite(values[0]):
                state, values = TrialState.FAIL, None
        elif state == TrialState.PRUNED and frozen.last_step is not None:
            last = frozen.intermediate_values[frozen.last_step]
            values = [float(last)] if math.isfinite(last) else None  # as Optuna's tell records a pruned trial
        # what Study.tell does besides the write: the sampler's hook, then the state (here with the attributes)
        self.study._thread_local.cached_all_trials = None
        try:
            self.study.sampler.after_trial(optuna.pruners._filter_study(self.study, frozen), frozen, state, values)
        finally:
            write_trial(self.storage, trial_id, attrs, state, values, started=started, intermediate=intermediate)
        self._live.pop(number, None)
        self._count(STATE_NAMES[state], +1, running=-1, value=values[0] if values and state == TrialState.COMPLETE
                    else None, number=number, retried=bool(attrs.get(R.RETRIED)))
        self._configs.pop(number, None)
        self._finished_here += 1
        if self._finished_here >= self._analyze_at:
            self._analyze_at *= 2
            try:
                refresh_statistics(self.storage)
            except sqlalchemy.exc.SQLAlchemyError as exc:  # only slower reads: the study goes on
                _log.warning("autoopt: could not renew the storage's statistics: %s", redact_text(str(exc))[:300])

    # --- the tally: counts and best without rescanning the study ---------------------------
    def _refresh_tally(self) -> None:
        """Recount from the storage (picks up other drivers' trials); between refreshes the
        tally follows this coordinator's own events."""
        trials = self.study.get_trials(deepcopy=False)
        counts = {name: 0 for name in R.STATE_COUNTS.values()}
        counted = 0
        for t in trials:
            counts[R.STATE_COUNTS[t.state.name]] += 1
            counted += _uses_budget(t)
        bt = R.best_trial(self.study, trials)
        best = {"number": bt.number, "value": bt.value, "config": bt.user_attrs.get(R.CONFIG), "params": bt.params} if bt else None
        self._waiting = {t.number for t in trials if t.state == TrialState.WAITING}
        self._warm = {t.number for t in trials if t.state == TrialState.WAITING and t.user_attrs.get(R.WARM_START)}
        self._tally = {"counts": counts, "best": best, "counted": counted}
        self._tally_at = time.monotonic()

    def _count(self, name: str, delta: int, *, running: int = 0, counted: int = 0, waiting: bool = False,
               value: float | None = None, number: int | None = None, retried: bool = False) -> None:
        if not self._tally:
            return
        counts = self._tally["counts"]
        counts[name] += delta
        counts["running"] += running
        if waiting:  # an enqueued trial started
            counts["waiting"] -= 1
        self._tally["counted"] += counted - (1 if retried else 0)
        if value is not None and number is not None:
            best = self._tally["best"]
            better = best is None or (value > best["value"] if self.study.direction.name == "MAXIMIZE" else value < best["value"])
            if better:
                known = self._configs.get(number)
                if known is None:
                    trial = self.storage.get_trial(self._trial_id(number))
                    known = (trial.user_attrs.get(R.CONFIG), trial.params)
                self._tally["best"] = {"number": number, "value": value, "config": known[0], "params": known[1]}

    @_survives_storage_outage
    def enqueue(self, configs: list[dict[str, Any]], limit: int | None = None) -> int:
        """Enqueue configurations (TrialConfig dicts) as the next trials, skipping those outside
        the space, at most ``limit``; returns how many."""
        n = 0
        for cfg in configs:
            if limit is not None and n >= limit:
                break
            try:
                params = self.space.to_optuna_params(cfg)
            except SpecError:
                continue
            self.study.enqueue_trial(params, user_attrs={R.WARM_START: True}, skip_if_exists=True)
            n += 1
        self._refresh_tally()
        return n

    # --- liveness -------------------------------------------------------------------------
    @_survives_storage_outage
    def heartbeat(self) -> None:
        now = time.time()
        self.storage.set_study_system_attr(self.study_id, R.HEARTBEAT_PREFIX + self.session, now)
        self._last_beat = now

    @_survives_storage_outage
    def reap_stale(self) -> list[int]:
        """Fail RUNNING trials of sessions that stopped heart-beating (a killed driver)."""
        beats = {
            k[len(R.HEARTBEAT_PREFIX):]: v
            for k, v in self.storage.get_study_system_attrs(self.study_id).items()
            if k.startswith(R.HEARTBEAT_PREFIX)
        }
        now = time.time()
        own = beats.get(self.session)
        if own is None or now - float(own) > self.stale_after_s / 2:
            # this driver was stalled itself (its own heartbeat is old: a storage outage, a paused
            # process): the others' silence may be the same outage, so they get a full
            # stale_after_s from now to be heard again before their trials count as abandoned
            self.heartbeat()
            self._quiet_until = now + self.stale_after_s
        if now <= self._quiet_until:
            return []
        reaped = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            session = t.user_attrs.get(R.SESSION)
            if session == self.session:
                continue
            # a trial another driver has just created has no session yet: its start is its last sign of life
            last = beats.get(session, 0.0) if session else t.datetime_start.timestamp() if t.datetime_start else 0.0
            if now - float(last) > self.stale_after_s:
                self.fail(
                    t.number,
                    f"abandoned: its driver (session {session}) stopped while the trial ran",
                    retry=True,
                )
                reaped.append(t.number)
        return reaped

    @_survives_storage_outage
    @_reads
    def foreign_running(self) -> int:
        """RUNNING trials that belong to other drivers (alive, or not yet known to be dead)."""
        return sum(
            1
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(R.SESSION) != self.session
        )

    # --- reading ----------------------------------------------------------------------------
    @_survives_storage_outage
    @_reads
    def summary(self, fresh: bool = False) -> dict[str, Any]:
        """Counts by state, the best trial, and this driver's bookkeeping (budget used, outages).
        From the tally, recounted from the storage when ``fresh`` or every ``TALLY_REFRESH_S``."""
        if self._refusal is not None:
            raise self._refusal
        if fresh or not self._tally or time.monotonic() - self._tally_at >= TALLY_REFRESH_S:
            self._refresh_tally()
        t = self._tally
        return {"counts": dict(t["counts"]), "best": dict(t["best"]) if t["best"] else None, "counted": t["counted"],
                "session": self.session, "storage_outages": self.storage_outages}

    @_survives_storage_outage
    def set_study_attrs(self, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            self.study.set_user_attr(k, v)

    # --- reuse ------------------------------------------------------------------------------
    def reopen(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Serve another study in this process, with the arguments of ``__init__``: a driver keeps
        its finished studies' coordinators (see ``runner.CoordinatorPool``), since starting one (a
        process, its imports, the storage's schema check) costs seconds that a short study feels.
        Nothing of the previous study is kept but the open storage of the same URL. Returns the
        new study's summary (the driver's first call, in the same round trip)."""
        self.__init__(*args, **kwargs)  # type: ignore[misc]
        return self.summary()
