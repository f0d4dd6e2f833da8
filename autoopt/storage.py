"""Where studies persist: an Optuna storage from a URL, with embedded and cluster defaults.

Design (measured in bench/, see docs/benchmarks.md): only one process per study ever talks to
the storage, the study's coordinator actor (see runner.py). Ray workers send their epoch
reports to it instead of opening the database themselves. That is Optuna's own advice for
SQLite ("one process owning the storage"), so the embedded default stays a single SQLite file
in the working directory and eight parallel workers never see "database is locked". PostgreSQL
(``postgresql://...``) is the cluster choice; ``journal:///path/file.log`` selects Optuna's
journal file storage for users who want it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
import sqlalchemy
from sqlalchemy.engine import make_url

from autoopt.redaction import redact, redact_text

ENV_STORAGE = "AUTOOPT_STORAGE"
DEFAULT_DB = "autoopt-studies.db"


class StorageError(RuntimeError):
    """The storage URL is malformed or unreachable. The message never contains a password."""


class StorageMissing(StorageError):
    """A read-only command found no storage file: no study was ever run with this URL."""


def default_storage_url(workdir: str | Path | None = None) -> str:
    """$AUTOOPT_STORAGE, else a SQLite file in the working directory (absolute, so Ray actors agree)."""
    env = os.environ.get(ENV_STORAGE)
    if env:
        return env
    path = Path(workdir or os.getcwd()).resolve() / DEFAULT_DB
    return f"sqlite:///{path}"


def sqlalchemy_url(url: str) -> str:
    """psycopg 3 is our PostgreSQL driver: give plain postgresql:// URLs that dialect."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage an ``optuna.Study`` reads and writes.

    Optuna 5 has no public accessor for it (and ``Study.system_attrs`` is gone), yet copying a
    study with its system attributes (the report's in-memory snapshot) needs it: the one place
    autoopt reaches into a Study. Code that opened the storage itself uses that instead.
    """
    return study._storage


_OPEN: dict[str, optuna.storages.BaseStorage] = {}
_OPEN_LOCK = threading.Lock()


def open_storage(url: str | None = None, *, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (default: :func:`default_storage_url`); fails fast if unreachable.

    ``create=False`` is for commands that only read (status, best, list, report, resume): a
    SQLite or journal file that does not exist is an error then, not a new empty file left behind.

    One storage per URL and process: each RDBStorage holds a connection pool (and checks the
    schema when made), so a driver that reopened it for every read would hold idle PostgreSQL
    connections until garbage collection; with several studies, an MLflow server and Ray on one
    server that exhausted ``max_connections``. Pooled connections are pinged before use, so the
    same storage serves again after a database restart.
    """
    url = url or default_storage_url()
    with _OPEN_LOCK:
        storage = _OPEN.get(url)
        if storage is None:
            storage = _OPEN[url] = _open(url, create)
    return storage


def _file_of(url: str, path: str | None, create: bool) -> None:
    """A storage file's folder made (create) or the file required (read-only); StorageError if not."""
    if not path or path == ":memory:":
        return
    file = Path(path)
    if not create:
        if not file.is_file():
            raise StorageMissing(f"no storage at {file}: no study was run with {redact(url)} (check --storage / "
                               f"{ENV_STORAGE})")
        return
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        if file.exists() and not file.is_file():
            raise StorageError(f"cannot open storage {redact(url)}: {file} is not a file")
        with open(file, "ab"):
            pass
    except OSError as exc:
        raise StorageError(f"cannot create storage {redact(url)}: {exc.strerror or exc}: {exc.filename or file}") from None


def _open(url: str, create: bool = True) -> optuna.storages.BaseStorage:
    if url.startswith("journal://"):
        path = url[len("journal://"):]
        _file_of(url, path, create)
        try:
            backend = optuna.storages.journal.JournalFileBackend(path)
        except OSError as exc:
            raise StorageError(f"cannot open storage {redact(url)}: {exc.strerror or exc}") from None
        return optuna.storages.JournalStorage(backend)
    try:
        sa_url = sqlalchemy_url(url)
        dialect = make_url(sa_url).get_backend_name()
    except Exception as exc:
        raise StorageError(f"malformed storage URL {redact(url)}: {redact_text(str(exc).replace(url, redact(url)))}") from None
    engine_kwargs: dict = {"pool_pre_ping": True}
    if dialect == "sqlite":
        _file_of(url, make_url(sa_url).database, create)
        # a second study's coordinator may write to the same file: wait for the lock, don't fail
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif dialect == "postgresql":
        engine_kwargs.update(pool_recycle=300, connect_args={"connect_timeout": 10})
    try:
        for attempt in range(3):
            try:
                storage = optuna.storages.RDBStorage(sa_url, engine_kwargs=engine_kwargs)
                on_disk = make_url(sa_url).database not in (None, "", ":memory:")  # a memory database dies with dispose()
                if dialect == "sqlite" and on_disk and os.environ.get(SQLITE_WAL_ENV, "1").strip().lower() not in ("0", "false", "no", "off"):
                    _fast_sqlite(storage.engine)
                return storage
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
                # two drivers creating a new database at once: the other one wrote the schema
                # (alembic_version, or a table: "already exists") first; opening it again finds it there
                if attempt == 2 or (isinstance(exc, sqlalchemy.exc.OperationalError) and "already exists" not in str(exc)):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"cannot open storage {redact(url)}: {redact_text(reason.replace(url, redact(url)))}") from None


#: "0" keeps SQLite storages in the rollback-journal mode with full syncs (Optuna's default).
SQLITE_WAL_ENV = "AUTOOPT_SQLITE_WAL"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _fast_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Write-ahead log, synced at checkpoints: a commit costs no fsync (it cost about 5 ms, and a
    trial makes several). A committed transaction survives any process being killed (driver,
    coordinator, worker); only an OS crash or power loss can take the last ones back. Readers
    (``autoopt status``, the dashboard) no longer wait for writers. Every later connection of
    the engine gets the settings; ``journal_mode`` is stored in the file itself."""
    sqlalchemy.event.listen(engine, "connect", _sqlite_pragmas)
    engine.dispose()  # the connections opened while the schema was checked get them too, when reopened


#: Optuna's tables, whose statistics PostgreSQL plans a study's reads with
_OPTUNA_TRIAL_TABLES = ("trials", "trial_params", "trial_user_attributes", "trial_system_attributes",
                        "trial_values", "trial_intermediate_values")


def refresh_statistics(storage: optuna.storages.BaseStorage) -> bool:
    """``ANALYZE`` Optuna's trial tables on PostgreSQL (elsewhere nothing; False).

    psycopg prepares a statement on the server after its fifth run, and PostgreSQL may keep one
    generic plan for it, chosen from the tables' statistics. A new study's tables are nearly empty
    when that happens, so the plan scans them whole, and it stays until the tables are analyzed
    again: never where autovacuum is off (as on the machines these benchmarks ran on), once a
    minute at best where it is on. Optuna's read of two or three new trials' attributes and params
    by trial id then cost 1.5-1.7 ms at 1000 trials instead of 0.05 ms, twice a trial each, most of
    a 1000-trial study's growth on PostgreSQL (docs/benchmarks.md, section 2). Analyzing renews the
    statistics and drops the kept plans; the coordinator does it each time its study doubles.
    Planning every run instead (``plan_cache_mode``) cost more than it saved. A user without the
    right to analyze gets PostgreSQL's warning and the plans as they were."""
    rdb = _rdb_backend(storage)
    if rdb is None or rdb.engine.dialect.name != "postgresql":
        return False
    with rdb.engine.connect() as connection:
        connection.execute(sqlalchemy.text("ANALYZE " + ", ".join(_OPTUNA_TRIAL_TABLES)))
        connection.commit()
    return True


def _rdb_backend(storage: optuna.storages.BaseStorage) -> Any:
    """The RDBStorage under ``storage`` (Optuna wraps one in a cache when a study opens it), else None."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


class DeferredParams:
    """Stands in for a trial's storage (``trial.storage``) while the sampler suggests its
    parameters: Optuna commits each ``set_trial_param`` on its own, a dozen commits for one
    configuration of autoopt's space. Here they are not written; :func:`trial_params` reads
    them off the trial for :func:`write_trial`, which stores them with the trial's next event
    in its one transaction. Everything else goes to the storage."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage = storage

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


def trial_params(trial: optuna.Trial) -> list[tuple[str, float, Any]]:
    """(name, internal value, distribution) of every parameter the trial has suggested so far."""
    dists = trial.distributions
    return [(name, dists[name].to_internal_repr(value), dists[name]) for name, value in trial.params.items()]


def write_trial(storage: optuna.storages.BaseStorage, trial_id: int, user_attrs: dict[str, Any],
                state: TrialState | None = None, values: list[float] | None = None,
                params: list[tuple[str, float, Any]] | None = None, started: Any = None,
                intermediate: dict[int, float] | None = None,
                known_distributions: dict[str, str] | None = None) -> None:
    """Set a trial's user attributes (and ``params``, see :class:`DeferredParams`) and, with
    ``state``, move it on or close it: one transaction on an RDB storage, so a trial event costs
    one commit instead of one per key (Optuna's public API commits each ``set_trial_user_attr``
    and ``set_trial_param`` on its own). Other storages get the public calls, the state last. A
    finished trial raises ``UpdateFinishedTrialError`` as Optuna's calls do. ``started`` (a
    datetime, RDB storages only): when the trial's worker started it (Optuna's start is when the
    coordinator handed it out). ``intermediate``: reported values ({step: value}) written before
    the state, as ``set_trial_intermediate_value`` would. ``known_distributions``: the study's
    stored distribution per param name, as far as the caller has seen them (see :func:`_add_params`;
    filled in here)."""
    rdb = _rdb_backend(storage)
    if rdb is None:
        stored = storage.get_trial(trial_id).params if params else {}
        for name, value, distribution in params or ():
            if name not in stored:
                storage.set_trial_param(trial_id, name, value, distribution)
        for k, v in user_attrs.items():
            storage.set_trial_user_attr(trial_id, k, v)
        for step, v in (intermediate or {}).items():
            storage.set_trial_intermediate_value(trial_id, step, v)
        if state is not None:
            storage.set_trial_state_values(trial_id, state, values)
        return
    from datetime import datetime

    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(rdb.scoped_session) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=state is not None)
        rdb.check_trial_is_updatable(trial_id, trial.state)
        if params:
            _add_params(session, trial, params, known_distributions)
        _upsert_user_attrs(rdb, session, trial_id, user_attrs)
        for step, v in (intermediate or {}).items():
            rdb._set_trial_intermediate_value_without_commit(session, trial_id, step, v)
        if state is not None:
            for objective, v in enumerate(values or []):
                rdb._set_trial_value_without_commit(session, trial, objective, v)
            trial.state = state
            if state.is_finished():
                trial.datetime_complete = datetime.now()
        if started is not None:
            trial.datetime_start = started


def _add_params(session: Any, trial: Any, params: list[tuple[str, float, Any]],
                known: dict[str, str] | None = None) -> None:
    """Insert the params the trial does not have yet (a retried call's are there), each checked
    against the distribution the study's earlier trials stored under its name, as Optuna's
    ``set_trial_param`` does: two reads for all of them instead of two per param.

    ``known`` ({name: distribution JSON}, kept by the caller for one study) spares the second read
    for names already seen: it scans every param of the study under those names, so it grew with
    the study (on PostgreSQL 1.6 ms a trial at 100 trials, 16 ms at 1000). A stored distribution
    never changes, and every later one was checked against it, so one seen is as good as the
    first."""
    from optuna import distributions as D
    from optuna.storages._rdb import models

    known = {} if known is None else known
    P = models.TrialParamModel
    stored = {name for (name,) in session.query(P.param_name).filter(P.trial_id == trial.trial_id)}
    todo = [p for p in params if p[0] not in stored]
    if not todo:
        return
    unseen = [n for n, _, _ in todo if n not in known]
    if unseen:
        first = (session.query(sqlalchemy.func.min(P.param_id)).join(models.TrialModel)
                 .filter(models.TrialModel.study_id == trial.study_id, P.param_name.in_(unseen))
                 .group_by(P.param_name))
        known.update(session.query(P.param_name, P.distribution_json).filter(P.param_id.in_(first.scalar_subquery())))
    for name, value, distribution in todo:
        if name in known:
            D.check_distribution_compatibility(D.json_to_distribution(known[name]), distribution)
    session.add_all([P(trial_id=trial.trial_id, param_name=name, param_value=value,
                       distribution_json=D.distribution_to_json(distribution)) for name, value, distribution in todo])
    for name, _, distribution in todo:
        known.setdefault(name, D.distribution_to_json(distribution))


def _upsert_user_attrs(rdb: Any, session: Any, trial_id: int, user_attrs: dict[str, Any]) -> None:
    """All of a trial event's user attributes in one statement on SQLite and PostgreSQL (Optuna
    reads the trial and upserts once per key); other databases get Optuna's own per-key write."""
    import json

    from optuna.storages._rdb import models

    if not user_attrs:
        return
    A = models.TrialUserAttributeModel
    dialect = rdb.engine.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):  # upsert
        from sqlalchemy.dialects.sqlite import insert
    else:
        for k, v in user_attrs.items():
            rdb._set_trial_attr_without_commit(session, A, trial_id, k, v)
        return
    stmt = insert(A).values([{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in user_attrs.items()])
    session.execute(stmt.on_conflict_do_update(index_elements=[A.trial_id, A.key],
                                               set_={"value_json": stmt.excluded.value_json}))


def budget_counts(storage: optuna.storages.BaseStorage, study_id: int, retried_key: str) -> tuple[int, int] | None:
    """(WAITING trials, trials that use the budget: all but WAITING ones and failures marked
    ``retried_key``) in one counting query on an RDB storage; None elsewhere (the caller scans).
    Loading every trial to count them made each ``ask`` cost grow with the study."""
    rdb = _rdb_backend(storage)
    if rdb is None:
        return None
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    T, A = models.TrialModel, models.TrialUserAttributeModel
    retried = (sqlalchemy.select(A.trial_id).where(A.trial_id == T.trial_id, A.key == retried_key,
                                                   A.value_json == "true").exists())
    waiting = T.state == TrialState.WAITING
    # only a failed trial is ever marked retried: the attribute lookup runs for failed trials only
    # (AND stops at the state), not once per trial (2.3 ms against 0.3 ms at 1000 trials on PostgreSQL)
    retried_failure = sqlalchemy.and_(T.state == TrialState.FAIL, retried)
    query = sqlalchemy.select(
        sqlalchemy.func.count().filter(waiting),
        sqlalchemy.func.count().filter(sqlalchemy.and_(sqlalchemy.not_(waiting), sqlalchemy.not_(retried_failure))),
    ).where(T.study_id == study_id)
    with _create_scoped_session(rdb.scoped_session) as session:
        n_waiting, counted = session.execute(query).one()
    return int(n_waiting), int(counted)


def claim_waiting(storage: optuna.storages.BaseStorage, trial_id: int, user_attrs: dict[str, Any]) -> bool:
    """Move one WAITING trial to RUNNING with its attributes in one transaction: an atomic claim
    (a conditional update, as Optuna's own ``ask`` claims the oldest queued trial). False if it
    was no longer WAITING (another driver took it) or the storage is not an RDB one."""
    rdb = _rdb_backend(storage)
    if rdb is None:
        return False
    from datetime import datetime, timezone

    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    T = models.TrialModel
    now_utc = datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC
    with _create_scoped_session(rdb.scoped_session) as session:
        claimed = session.execute(
            sqlalchemy.update(T).where(T.trial_id == trial_id, T.state == TrialState.WAITING)
            .values({T.state: TrialState.RUNNING, T._datetime_start_utc: now_utc})
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if claimed:
            _upsert_user_attrs(rdb, session, trial_id, user_attrs)
    return claimed
