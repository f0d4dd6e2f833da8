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

import functools
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import optuna
from optuna.trial import TrialState

from autoopt.core import record as R
from autoopt.core.traits import TaskTraits
from autoopt.sampling import ChoiceRestrictingSampler, make_pruner, make_sampler
from autoopt.space import SearchSpace
from autoopt.spec import ExecutionSpec, PlacesSpec, SearchSpec, SpecError
from autoopt.storage import StorageError, open_storage, redact

_log = logging.getLogger(__name__)
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


def _survives_storage_outage(method: _F) -> _F:
    """Retry a coordinator call while the storage is unreachable, for up to ``storage_retry_s``.

    The actor serves one call at a time, so workers waiting for a pruning answer and the driver
    waiting for the next trial simply block until the database is back. Then a clear
    StorageError (with the URL's password hidden) ends the study; ``autoopt resume`` continues it.
    """

    @functools.wraps(method)
    def wrapper(self: "StudyCoordinator", *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.storage_retry_s
        delay = 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only connection errors are retried
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
    ) -> None:
        if not places.storage:
            raise SpecError("the coordinator needs the storage URL the driver resolved (places.storage)")
        self.session = session or uuid.uuid4().hex[:12]
        self.storage_url = places.storage
        self.study_name = name
        # the driver's settings, passed in: on a cluster this actor's own environment is the head's
        self.storage_retry_s = execution.storage_retry_s
        self.stale_after_s = execution.stale_after_s
        self.storage_outages = 0
        self.max_epochs = task.max_epochs
        self.n_trials = search.n_trials
        self.retries = execution.retries
        self.traits = task.traits
        self.space = SearchSpace(search.space, self.traits, has_matrix_params=task.has_matrix_params)
        self.storage = open_storage(self.storage_url)
        base = make_sampler(search.sampler, seed=search.seed, **search.sampler_options)
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=name,
            direction=task.direction,
            sampler=ChoiceRestrictingSampler(base, self.space.restrictions),
            pruner=make_pruner(search.pruner, task.max_epochs, **search.pruner_options),
            load_if_exists=True,
        )
        if self.study.direction.name.lower() != task.direction:
            raise SpecError(
                f"study {name!r} exists with direction {self.study.direction.name.lower()}, "
                f"but this task's metric is {task.direction}d"
            )
        # the study's rows are read and written through this storage's public API by number and
        # id (an optuna.Study exposes neither its storage nor its id)
        self.study_id = self.storage.get_study_id_from_name(name)
        attrs = self.study.user_attrs
        for key, value in (study_attrs or {}).items():
            if key not in attrs or key in (R.SPEC, R.SPACE):
                self.study.set_user_attr(key, value)
        self._live: dict[int, optuna.Trial] = {}
        self._asking: optuna.Trial | None = None
        self.heartbeat()
        self.reap_stale()

    # --- trials --------------------------------------------------------------------------
    @_survives_storage_outage
    def counted(self) -> int:
        """Trials that use up the budget: all but waiting ones and failures that were retried."""
        return sum(
            1
            for t in self.study.get_trials(deepcopy=False)
            if t.state != TrialState.WAITING and not t.user_attrs.get(R.RETRIED)
        )

    @_survives_storage_outage
    def ask(self) -> dict[str, Any] | None:
        """The next trial to run, or None when the trial budget is used up."""
        if self.n_trials is not None and self.counted() >= self.n_trials:
            return None
        # a call retried after an outage goes on with the trial it had already created: sampling
        # it again returns the stored params, so no orphan RUNNING trial is left behind
        trial = self._asking
        if trial is not None and self.storage.get_trial(self._trial_id(trial.number)).state.is_finished():
            trial = None  # another driver declared it abandoned meanwhile (a long outage): start afresh
        trial = trial if trial is not None else self.study.ask()
        self._asking = trial
        try:
            config = self.space.sample(trial)
        except Exception as exc:  # e.g. an enqueued config outside the current space
            if is_connection_error(exc):
                raise
            self._asking = None
            self._finish(trial.number, TrialState.FAIL, None, R.failure_attrs(f"sampling failed: {exc}"))
            return self.ask()
        trial.set_user_attr(R.CONFIG, config.to_dict())
        trial.set_user_attr(R.SESSION, self.session)
        trial.set_user_attr(R.MAX_EPOCHS, self.max_epochs)
        self._asking = None
        self._live[trial.number] = trial
        return {"number": trial.number, "config": config.to_dict(), "params": dict(trial.params)}

    @_survives_storage_outage
    def report(self, number: int, epoch: int, value: float) -> bool:
        """Record an intermediate value; True means the pruner wants the trial stopped."""
        trial = self._live.get(number)
        if trial is None:
            return True  # the trial was failed meanwhile (e.g. declared stale): stop it
        trial.report(value, step=epoch)
        return trial.should_prune()

    @_survives_storage_outage
    def tell(self, number: int, outcome: dict[str, Any]) -> str:
        """Store a worker's outcome (status, value, curve, reason) and close the trial."""
        state, value, attrs = R.outcome_attrs(outcome)
        self._finish(number, TrialState[state], value, attrs)
        return state

    @_survives_storage_outage
    def fail(self, number: int, reason: str, retry: bool) -> bool:
        """A trial whose worker died: record why; re-enqueue its params if retries are left."""
        trial_id = self._trial_id(number)
        frozen = self.storage.get_trial(trial_id)
        if not frozen.state.is_finished():
            attempt = int(frozen.user_attrs.get(R.ATTEMPT, 0))
            retried = retry and attempt < self.retries
            # close the trial first, then enqueue its re-run: a call retried after an outage
            # between the two finds the trial failed and enqueues the re-run exactly once
            self._finish(number, TrialState.FAIL, None, R.failure_attrs(reason, retried))
            frozen = self.storage.get_trial(trial_id)
        self._live.pop(number, None)
        retried = bool(frozen.state == TrialState.FAIL and frozen.user_attrs.get(R.RETRIED))
        if retried and not any(t.user_attrs.get(R.RETRY_OF) == number for t in self.study.get_trials(deepcopy=False)):
            attempt = int(frozen.user_attrs.get(R.ATTEMPT, 0))
            self.study.enqueue_trial(dict(frozen.params), user_attrs={R.ATTEMPT: attempt + 1, R.RETRY_OF: number}, skip_if_exists=False)
        return retried

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _finish(self, number: int, state: TrialState, value: float | None, attrs: dict[str, Any]) -> None:
        """Write the outcome's attributes, then close the trial. Idempotent: a call retried after
        an outage (the first try may have committed) leaves an already-finished trial as it is."""
        trial_id = self._trial_id(number)
        if self.storage.get_trial(trial_id).state.is_finished():
            self._live.pop(number, None)
            return
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(trial_id, k, v)
        self.study.tell(number, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        self._live.pop(number, None)

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
        return n

    # --- liveness -------------------------------------------------------------------------
    @_survives_storage_outage
    def heartbeat(self) -> None:
        self.storage.set_study_system_attr(self.study_id, R.HEARTBEAT_PREFIX + self.session, time.time())

    @_survives_storage_outage
    def reap_stale(self) -> list[int]:
        """Fail RUNNING trials of sessions that stopped heart-beating (a killed driver)."""
        beats = {
            k[len(R.HEARTBEAT_PREFIX):]: v
            for k, v in self.storage.get_study_system_attrs(self.study_id).items()
            if k.startswith(R.HEARTBEAT_PREFIX)
        }
        now = time.time()
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
    def foreign_running(self) -> int:
        """RUNNING trials that belong to other drivers (alive, or not yet known to be dead)."""
        return sum(
            1
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(R.SESSION) != self.session
        )

    # --- reading ----------------------------------------------------------------------------
    @_survives_storage_outage
    def summary(self) -> dict[str, Any]:
        """Counts by state, the best trial, and this driver's bookkeeping (budget used, outages)."""
        summary = R.summarize(self.study)
        bt = summary.best
        best = {"number": bt.number, "value": bt.value, "config": bt.user_attrs.get(R.CONFIG), "params": bt.params} if bt else None
        return {"counts": summary.counts, "best": best, "counted": self.counted(), "session": self.session,
                "storage_outages": self.storage_outages}

    @_survives_storage_outage
    def set_study_attrs(self, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            self.study.set_user_attr(k, v)
