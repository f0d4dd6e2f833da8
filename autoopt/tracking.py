"""MLflow tracking: one experiment per study, a parent run per study, a nested child run per trial.

Why not Optuna's ``MLflowCallback`` (deprecated, final values only) or Ray Tune's MLflow logger
(driver-side, flat runs)? Users inspect a study in the MLflow UI and want each trial's learning
curve next to its sampled optimizer config, with pruned and failed trials visibly marked.

Layout::

    experiment  <experiment_name>          tag mlflow.experimentKind=custom_model_development
      run  <study name>                    parent: spec, sampler/pruner, best config, counts,
                                           pruning savings, plots/, best_config.py/json
        run  trial-0000 ...                child (mlflow.parentRunId): params, traits as tags,
                                           per-epoch train_loss / <val metric> / lr / epoch_seconds,
                                           state FINISHED / KILLED (pruned) / FAILED

Trials log directly from the worker that runs them (:class:`TrialLogger` is created on the
driver and pickled to the Ray worker). Metrics are buffered and written with
``MlflowClient.log_batch`` every ``flush_every`` epochs. If the tracking store is unreachable
the study still runs: each call is retried a few times with a short backoff, the user is
warned once per process, and nothing is ever raised into the training loop.

Default store: ``sqlite:///<workdir>/mlflow.db`` with artifacts in ``<workdir>/mlartifacts``
(MLflow 3's own default backend is ``sqlite:///mlflow.db``; SQLite takes concurrent writes from
several local worker processes). For workers on other machines use a tracking server
(``MLFLOW_TRACKING_URI`` / ``AUTOOPT_TRACKING_URI`` = ``http://host:5000``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sqlite3
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from autoopt.core import record as R
from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.redaction import is_redacted, redact, redact_text, restore

_logger = logging.getLogger(__name__)

#: Environment variables naming the tracking URI, in order of precedence.
TRACKING_URI_ENV = ("AUTOOPT_TRACKING_URI", "MLFLOW_TRACKING_URI")
LOCAL_DB_NAME = "mlflow.db"
LOCAL_ARTIFACTS_DIR = "mlartifacts"
#: Experiment tag the MLflow 3 UI reads to open an experiment on its training-runs view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"

#: Trial outcome -> MLflow run status.
RUN_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
#: MLflow's limit on metrics in one log_batch request (mlflow.utils.validation.MAX_METRICS_PER_BATCH)
MAX_BATCH_METRICS = 1000


class TrackingUnavailableWarning(UserWarning):
    """The MLflow tracking store could not be reached; the study goes on without (some) tracking."""


# ----------------------------------------------------------------------------------------------
# Where to track
# ----------------------------------------------------------------------------------------------
def default_tracking_uri(workdir: str | Path = ".") -> str:
    """The embedded store: a SQLite database ``mlflow.db`` in ``workdir`` (absolute URI)."""
    return f"sqlite:///{(Path(workdir).expanduser().resolve() / LOCAL_DB_NAME).as_posix()}"


def resolve_tracking_uri(tracking_uri: str | None = None, workdir: str | Path = ".") -> str:
    """Argument, else ``AUTOOPT_TRACKING_URI``, else ``MLFLOW_TRACKING_URI``, else the local store.

    A bare path ending in ``.db`` becomes a SQLite URI; a relative ``sqlite:///`` path is made
    absolute so that worker processes with another working directory find the same file.
    """
    uri = tracking_uri
    for env in TRACKING_URI_ENV:
        if uri:
            break
        uri = os.environ.get(env)
    if not uri:
        return default_tracking_uri(workdir)
    uri = str(uri)
    if "://" not in uri and uri.endswith(".db"):
        return f"sqlite:///{Path(uri).expanduser().resolve().as_posix()}"
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        return f"sqlite:///{(Path(workdir).resolve() / path).as_posix()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///"):].split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    return Path(raw)


def warm_store(tracking_uri: str) -> None:
    """Import MLflow and open a local store (creating its tables on first use: about 3 s) while
    the driver waits for the study's coordinator, instead of after it. Never raises: a problem
    shows when the study's tracker starts."""
    try:
        from mlflow import MlflowClient

        if not is_remote(tracking_uri):  # a server is not called here: it may be down
            _new_store_from_template(tracking_uri)
            MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    except Exception:  # noqa: BLE001
        pass


def _new_store_from_template(uri: str) -> None:
    """A local SQLite store that does not exist yet is copied from an empty one (see local_store)."""
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        from autoopt.local_store import ensure_local_store

        ensure_local_store(path)


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def local_artifact_root(uri: str) -> Path | None:
    """Artifact folder next to a local SQLite store (``<dir>/mlartifacts``); None for other stores."""
    path = sqlite_path(uri)
    return path.parent / LOCAL_ARTIFACTS_DIR if path is not None else None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "experiment"


def _prepare_local_store(uri: str) -> None:
    """Create the SQLite file in WAL mode so UI reads do not block worker writes."""
    path = sqlite_path(uri)
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=20)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


@dataclass
class TrackingConfig:
    """Where and how to track; picklable (sent to Ray workers inside each TrialLogger)."""

    tracking_uri: str
    experiment_name: str
    enabled: bool = True
    #: Write buffered epoch metrics every N epochs (and at the end of the trial) ...
    flush_every: int = 5
    #: ... or when this many seconds passed since the last write (keeps the UI live on slow epochs).
    flush_seconds: float = 30.0
    #: Attempts per tracking call before the store is considered unreachable.
    retries: int = 3
    #: First pause between attempts; doubles each attempt.
    backoff_seconds: float = 0.2
    #: Per-request HTTP timeout for remote servers (MLflow's own default is 120 s).
    request_timeout_seconds: int = 10
    #: After the store was found unreachable, skip tracking calls for this long (per process);
    #: ``AUTOOPT_TRACKING_COOLDOWN_S`` on the driver sets it.
    offline_cooldown_seconds: float = field(
        default_factory=lambda: float(os.environ.get("AUTOOPT_TRACKING_COOLDOWN_S") or 60.0))
    #: Make and log the study plots when the study finishes.
    log_plots: bool = True
    #: PNG engine for those plots. matplotlib redraws them in about a second; kaleido renders
    #: plotly's own look through a headless browser (several seconds), which ``autoopt report``
    #: uses. Both come with the same HTML plots.
    plot_png_engine: str = "matplotlib"

    def __post_init__(self) -> None:
        if self.flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {self.flush_every}")
        if self.retries < 1:
            raise ValueError(f"retries must be >= 1, got {self.retries}")

    @classmethod
    def resolve(
        cls,
        study_name: str,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        workdir: str | Path = ".",
        **kwargs: Any,
    ) -> "TrackingConfig":
        """Defaults: URI from argument/env/local store; experiment named after the study."""
        return cls(
            tracking_uri=resolve_tracking_uri(tracking_uri, workdir),
            experiment_name=experiment_name or study_name,
            **kwargs,
        )


# ----------------------------------------------------------------------------------------------
# Safe calls: bounded retries, warn once, never raise
# ----------------------------------------------------------------------------------------------
_state_lock = threading.RLock()
_warned: set[str] = set()
_down_until: dict[str, float] = {}

# MLflow error codes that mean "the store answered and refused this request": retrying won't help.
_REJECTIONS = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_STATE",
    "BAD_REQUEST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
}


def retry_now(uri: str) -> None:
    """Forget that ``uri`` was unreachable: the next call tries it at once (an explicit sync)."""
    with _state_lock:
        _down_until.pop(uri, None)


def _warn_once(key: str, message: str) -> None:
    with _state_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, TrackingUnavailableWarning, stacklevel=3)


def _error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


@contextmanager
def _bounded_http(timeout: int) -> Iterator[None]:
    """Turn MLflow's minutes-long HTTP retry policy into one short attempt (we retry ourselves).

    Also keeps MLflow from printing a run link to stdout for every trial run it ends.

    MLflow reads these environment variables per request; values the user set are respected.
    """
    with _state_lock:
        added = []
        for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
                           ("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout)))),
                           # set_terminated would print a "View run" line per trial (and fetch the run).
                           ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")):
            if key not in os.environ:
                os.environ[key] = value
                added.append(key)
        try:
            yield
        finally:
            for key in added:
                os.environ.pop(key, None)


class _Connection:
    """An MlflowClient whose calls retry briefly, time their cost and never raise."""

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self.uri = config.tracking_uri
        self._client = None
        self.seconds = 0.0
        self.requests = 0
        self.failed = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}  # clients hold DB engines / HTTP sessions

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            _new_store_from_template(self.uri)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def available(self) -> bool:
        return self.config.enabled and time.monotonic() >= _down_until.get(self.uri, 0.0)

    def call(self, what: str, method: str, *args: Any, _force: bool = False, **kwargs: Any) -> tuple[bool, Any]:
        """(ok, result) of ``client.<method>(...)``; failures are warned about once, not raised.
        ``_force``: try even during the offline cooldown (a run's final status must not be skipped)."""
        if not self.config.enabled or not (_force or self.available()):
            return False, None
        start = time.perf_counter()
        last: BaseException | None = None
        try:
            for attempt in range(self.config.retries):
                try:
                    if is_remote(self.uri):
                        with _bounded_http(self.config.request_timeout_seconds):
                            result = getattr(self.client, method)(*args, **kwargs)
                    else:
                        result = getattr(self.client, method)(*args, **kwargs)
                    self.requests += 1
                    return True, result
                except Exception as exc:  # noqa: BLE001 - tracking must never break training
                    if _error_code(exc) in _REJECTIONS:
                        _warn_once(f"{self.uri}|rejected|{what}",
                                   f"MLflow at {redact(self.uri)} rejected {what}: {redact_text(str(exc))}")
                        return False, None
                    last = exc
                    if attempt + 1 < self.config.retries:
                        time.sleep(self.config.backoff_seconds * (2**attempt))
            with _state_lock:
                _down_until[self.uri] = time.monotonic() + self.config.offline_cooldown_seconds
            self.failed = True
            _warn_once(
                self.uri,
                f"MLflow tracking at {redact(self.uri)} is unreachable ({what} failed "
                f"{self.config.retries} times: {type(last).__name__}: {redact_text(str(last))[:300]}). "
                "The study continues; this process skips tracking for "
                f"{self.config.offline_cooldown_seconds:.0f} s at a time. Results stay in the Optuna "
                "storage (`autoopt report` rebuilds the plots).",
            )
            return False, None
        finally:
            self.seconds += time.perf_counter() - start


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def flatten_config(config: dict[str, Any]) -> dict[str, str]:
    """TrialConfig dict -> MLflow params: optimizer, optimizer.lr, scheduler, scheduler.T_max, ..."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if key in ("optimizer_params", "scheduler_params") and isinstance(value, dict):
            prefix = key.split("_", 1)[0]
            for hp, hp_value in value.items():
                flat[f"{prefix}.{hp}"] = _param_value(hp_value)
        else:
            flat[key] = _param_value(value)
    return flat


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _entities(metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None, step: int = 0):
    from mlflow.entities import Metric, Param, RunTag

    ts = _now_ms()
    m = [Metric(k, float(v), ts, step) for k, v in (metrics or {}).items()
         if isinstance(v, (int, float)) and not isinstance(v, bool)]
    p = [Param(k, _param_value(v)[:6000]) for k, v in (params or {}).items() if v is not None]
    t = [RunTag(k, str(v)[:8000]) for k, v in (tags or {}).items() if v is not None]
    return m, p, t


_WRITER: Any = None
_WRITER_LOCK = threading.Lock()


def import_client_soon() -> None:
    """Import MLflow's client (about 1.6 s) on this process's tracking thread, not before a
    worker's first trial: the trial trains meanwhile, and its MLflow writes, queued on the same
    thread, follow the import. Never raises: a problem shows at the trial's first write."""
    tracking_thread().submit(_import_client)


def _import_client() -> None:
    try:
        import mlflow.tracking  # noqa: F401
        from mlflow.entities import Metric  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        _logger.debug("autoopt: importing MLflow failed (%s)", exc)


def tracking_thread() -> Any:
    """The process's one tracking thread (a ThreadPoolExecutor of one): MLflow writes that need
    not hold up a trial or the driver's loop, in the order submitted (a worker runs one trial at
    a time)."""
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None:
            from concurrent.futures import ThreadPoolExecutor

            _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoopt-mlflow")
        return _WRITER


# ----------------------------------------------------------------------------------------------
# Worker side: one child run per trial
# ----------------------------------------------------------------------------------------------
@dataclass
class TrialLogger:
    """Logs one trial as a nested MLflow run, from whichever process trains it.

    Created by :meth:`StudyTracker.trial_logger` on the driver and pickled to the worker.
    ``overhead_seconds`` / ``requests`` tell what tracking cost this trial.
    """

    config: TrackingConfig
    experiment_id: str | None
    parent_run_id: str | None
    study_name: str
    trial_number: int
    params: dict[str, Any]
    trial_config: dict[str, Any]
    metric_name: str = "val_metric"
    traits: dict[str, Any] = field(default_factory=dict)
    #: one of the recommender's suggestions (the run is tagged ``autoopt.warm_start``)
    warm_start: bool = False
    run_id: str | None = field(default=None, init=False)
    #: the run is being created on the tracking thread (``start(background=True)``)
    _starting: bool = field(default=False, init=False, repr=False)
    _buffer: list[EpochRecord] = field(default_factory=list, init=False, repr=False)
    _buffer_times: list[int] = field(default_factory=list, init=False, repr=False)
    _logged_epochs: set[int] = field(default_factory=set, init=False, repr=False)
    #: the params reached the store (if not, :meth:`finish` writes them with the outcome)
    _params_logged: bool = field(default=False, init=False, repr=False)
    _last_flush: float = field(default=0.0, init=False, repr=False)
    _conn: _Connection | None = field(default=None, init=False, repr=False)
    #: background writes not yet confirmed: (their futures, the epochs they carry)
    _pending: list[tuple[Any, list[EpochRecord], list[int]]] = field(default_factory=list, init=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_conn"] = None
        state["_pending"] = []
        return state

    @property
    def enabled(self) -> bool:
        return self.config.enabled and self.experiment_id is not None

    @property
    def conn(self) -> _Connection:
        if self._conn is None:
            self._conn = _Connection(self.config)
        return self._conn

    @property
    def overhead_seconds(self) -> float:
        """Wall time spent in tracking calls so far (including retries)."""
        return self._conn.seconds if self._conn else 0.0

    @property
    def requests(self) -> int:
        return self._conn.requests if self._conn else 0

    def start(self, host: str = "", device: str = "", background: bool = False) -> str | None:
        """Open the child run under the study's parent run; returns its id (None if not tracking).

        ``background``: on a local store, create the run on this process's tracking thread while
        the trial starts training (returns None; :attr:`run_id` is set once it exists, and
        :meth:`finish` waits for it). A tracking server is always called at once (see
        :meth:`_log_async`)."""
        if not self.enabled:
            return None
        path = sqlite_path(self.config.tracking_uri)
        if path is not None and not path.exists():
            _warn_once(
                f"{self.config.tracking_uri}|missing",
                f"MLflow store {path} is not visible on host {host or socket.gethostname()}; "
                "trials on this machine are not tracked. Run a tracking server (`autoopt ui` or "
                "`mlflow server`) and set tracking_uri to its http:// address for multi-machine studies.",
            )
            self.config = replace(self.config, enabled=False)
            return None
        tags = {
            PARENT_RUN_TAG: self.parent_run_id,
            RUN_NAME_TAG: f"trial-{self.trial_number:04d}",
            "autoopt.role": "trial",
            "autoopt.study": self.study_name,
            "autoopt.trial_number": self.trial_number,
            "autoopt.state": "running",
            "autoopt.host": host or socket.gethostname(),
            "autoopt.device": device or "cpu",
            "autoopt.optuna_params": json.dumps(self.params, default=str),
            "autoopt.warm_start": "true" if self.warm_start else None,  # the recommender's suggestion
            **{f"autoopt.trait.{k}": v for k, v in self.traits.items()},
        }
        tags = {k: str(v) for k, v in tags.items() if v is not None}
        self._last_flush = time.monotonic()
        if background and not is_remote(self.config.tracking_uri):
            self._starting = True
            self._pending.append((tracking_thread().submit(self._create_run, tags), [], []))
            return None
        if not self._create_run(tags)[0]:
            return None
        if is_remote(self.config.tracking_uri):  # a server is written to at once (see _log_async)
            self._log_params()
        else:  # off the trial's path; confirmed in finish()
            self._pending.append((tracking_thread().submit(self._log_params), [], []))
        return self.run_id

    def _param_entities(self) -> list:
        return _entities(params={**flatten_config(self.trial_config), "trial_number": self.trial_number})[1]

    def _create_run(self, tags: dict[str, str]) -> tuple[bool, Any]:
        """Create the run (sets :attr:`run_id`); on the tracking thread it also logs the params."""
        background = self._starting
        ok, run = self.conn.call(f"create_run(trial {self.trial_number})", "create_run", self.experiment_id,
                                 tags=tags, run_name=f"trial-{self.trial_number:04d}")
        if ok:
            self.run_id = run.info.run_id  # set before _starting drops: the run stays open throughout
        self._starting = False
        if ok and background:
            self._log_params()
        return ok, None

    def _log_params(self) -> tuple[bool, Any]:
        ok, result = self.conn.call("log params", "log_batch", self.run_id, params=self._param_entities())
        self._params_logged = ok
        return ok, result

    @property
    def _open(self) -> bool:
        """Whether the run exists or is being created on the tracking thread."""
        return self.run_id is not None or self._starting

    def _log_async(self, what: str, records: list[EpochRecord], times: list[int]) -> bool:
        """Epochs' ``log_batch`` written by this process's tracking thread while the trial trains;
        :meth:`_confirm` waits for it when the trial ends. The metrics are built there too: on a
        worker's first trial that thread may still be importing MLflow (:func:`import_client_soon`),
        and the trial goes on training meanwhile. Not MLflow's own ``synchronous=False``: ending a
        run shuts MLflow's queue down, and that join waits out the queue's 1-second poll on every
        trial. A tracking server (http) is written to synchronously: a dead server must fail
        within the bounded one-attempt policy (:func:`_bounded_http`), not in a thread."""
        if is_remote(self.config.tracking_uri):
            ok, _ = self.conn.call(what, "log_batch", self.run_id, metrics=self._metrics_of(zip(records, times)))
            if ok:
                self._logged_epochs.update(r.key for r in records)
            return ok
        future = tracking_thread().submit(self._log_epochs_later, what, records, times)
        self._pending.append((future, list(records), list(times)))
        return True

    def _log_epochs_later(self, what: str, records: list[EpochRecord], times: list[int]) -> tuple[bool, Any]:
        """On the tracking thread: the run id is read here (a run created in the background
        before it exists, or could not be created: then nothing is written)."""
        if self.run_id is None:
            return False, None
        return self.conn.call(what, "log_batch", self.run_id, metrics=self._metrics_of(zip(records, times)))

    def _confirm(self) -> None:
        """Wait for the background writes; epochs whose write failed go back to the buffer
        (written again synchronously by the caller's flush)."""
        pending, self._pending = self._pending, []
        for future, records, times in pending:
            try:
                ok, _ = future.result()
            except Exception as exc:  # noqa: BLE001 - tracking never breaks a trial
                _logger.debug("autoopt: background MLflow write failed (%s); retrying synchronously", exc)
                ok = False
            if ok:
                self._logged_epochs.update(r.key for r in records)
            else:
                self._buffer.extend(records)
                self._buffer_times.extend(times)

    def log_epoch(self, record: EpochRecord) -> None:
        """Buffer one epoch; written every ``flush_every`` epochs or ``flush_seconds``."""
        if not self.enabled or not self._open:
            return
        self._buffer.append(record)
        self._buffer_times.append(_now_ms())
        due = (len(self._buffer) >= self.config.flush_every
               or time.monotonic() - self._last_flush >= self.config.flush_seconds)
        if due:
            self.flush(wait=False)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """The user's own metrics (``trial.log_metrics``), written at once."""
        if self.enabled and self.run_id is None and self._starting:
            self._confirm()  # the run created in the background first
        if not self.enabled or self.run_id is None:
            return
        m, _, _ = _entities(metrics={k: v for k, v in metrics.items() if _finite_number(v)}, step=int(step))
        if m:
            self.conn.call("log user metrics", "log_batch", self.run_id, metrics=m)

    def _metrics_of(self, timed: Iterable[tuple[EpochRecord, int]]) -> list:
        """MLflow metrics of epochs, each with the time it was reported."""
        return [m for rec, ts in timed for m in self._epoch_metrics(rec, ts)]

    def _epoch_metrics(self, record: EpochRecord, ts: int) -> list:
        from mlflow.entities import Metric

        values = {
            "train_loss": record.train_loss,
            self.metric_name: record.val_metric,
            "lr": record.lr,
            "epoch_seconds": record.seconds,
        }
        return [Metric(k, float(v), ts, record.key) for k, v in values.items()
                if isinstance(v, (int, float)) and v is not None]

    def flush(self, wait: bool = True) -> bool:
        """Write buffered epochs in one ``log_batch``; keeps them buffered if the store is down.
        ``wait=False``: asynchronously (confirmed by the next waiting flush or :meth:`finish`)."""
        self._last_flush = time.monotonic()
        if wait:
            self._confirm()
        if not self._buffer or not self._open:
            return True
        records, times = list(self._buffer), list(self._buffer_times)
        if not wait:
            if self._log_async("log epoch metrics", records, times):
                self._buffer.clear()
                self._buffer_times.clear()
                return True
            return False
        ok, _ = self.conn.call("log epoch metrics", "log_batch", self.run_id, metrics=self._metrics_of(zip(records, times)))
        if ok:
            self._logged_epochs.update(r.key for r in records)
            self._buffer.clear()
            self._buffer_times.clear()
        return ok

    def finish(self, outcome: TrialOutcome, status: str | None = None, background: bool = False) -> None:
        """Flush, record final state / reason / memory / cost, and end the run with its status
        (default: from the outcome; ``autoopt.sync`` ends an interrupted trial's run as KILLED).

        ``background``: on a local store, the last write (outcome and end) goes to this process's
        tracking thread and the trial's result returns at once; the run is ended only if that
        write succeeded, so a run left RUNNING is what the driver's end-of-study check
        (:func:`open_trial_runs`) finds and repairs."""
        if not self.enabled or not self._open:
            return
        # Epochs the runner did not pass through log_epoch still belong on the curve.
        self._confirm()  # the asynchronous writes first (and the run's creation): what failed is buffered again
        if self.run_id is None:
            return
        buffered = {r.key for r in self._buffer}
        for rec in outcome.history:
            if rec.key not in self._logged_epochs and rec.key not in buffered:
                self._buffer.append(rec)
                self._buffer_times.append(_now_ms())
        # the last epochs go in the outcome's batch (one write fewer per trial) if they fit MLflow's
        # 1000-metrics-per-batch limit, beside the outcome's own few metrics
        tail = list(zip(self._buffer, self._buffer_times))
        epochs = self._metrics_of(tail)
        if len(epochs) > MAX_BATCH_METRICS - 100:
            self.flush()
            tail, epochs = [], []
        final_metrics: dict[str, float] = {
            "epochs_run": outcome.epochs_run,
            "trial_seconds": outcome.seconds,
            "optimizer_state_bytes": outcome.optimizer_state_bytes,
        }
        if outcome.value is not None and math.isfinite(outcome.value):
            final_metrics[f"best_{self.metric_name}"] = outcome.value
        if outcome.stopped_at_epoch is not None:
            final_metrics["stopped_at_epoch"] = outcome.stopped_at_epoch
        final_metrics["tracking_seconds"] = self.overhead_seconds
        tags = {
            "autoopt.state": outcome.status,
            "autoopt.reason": outcome.reason,
            "autoopt.stopped_at_epoch": outcome.stopped_at_epoch,
            "autoopt.host": outcome.host or None,
            "autoopt.device": outcome.device or None,
            "autoopt.optimizer_state_bytes": outcome.optimizer_state_bytes,
            # what `autoopt sync` checks: every epoch of the curve reached the store
            "autoopt.epochs_logged": len(self._logged_epochs | {rec.key for rec, _ in tail}),
        }
        if outcome.status != "complete":
            note = f"Trial {self.trial_number} {outcome.status}"
            if outcome.stopped_at_epoch is not None:
                note += f" at epoch {outcome.stopped_at_epoch}"
            tags[NOTE_TAG] = note + (f": {outcome.reason}" if outcome.reason else ".")
        m, _, t = _entities(metrics=final_metrics, tags=tags, step=outcome.epochs_run)
        # params whose write failed (the store went down right after the run was created) go
        # with the outcome; logging a param again with the same value is allowed
        p = [] if self._params_logged else self._param_entities()
        end_status = status or RUN_STATUS.get(outcome.status, "FAILED")
        if background and not is_remote(self.config.tracking_uri):
            tracking_thread().submit(self._write_outcome, epochs + m, t, end_status, tail, True, p)
            return
        self._write_outcome(epochs + m, t, end_status, tail, False, p)

    def _write_outcome(self, metrics: list, tags: list, status: str, tail: list, only_if_logged: bool,
                       params: list | None = None) -> None:
        ok, _ = self.conn.call("log trial outcome", "log_batch", self.run_id, metrics=metrics, tags=tags,
                               params=params or ())
        if ok:
            self._params_logged = self._params_logged or bool(params)
            self._logged_epochs.update(rec.key for rec, _ in tail)
            self._buffer.clear()
            self._buffer_times.clear()
        if ok or not only_if_logged:
            self.conn.call("end trial run", "set_terminated", self.run_id, status=status, _force=True)


def open_trial_runs(tracker: "StudyTracker", numbers: set[int], wait_s: float = 5.0) -> set[int] | None:
    """Which of ``numbers`` (trials that finished) still have a RUNNING MLflow run, after
    waiting up to ``wait_s`` for workers' background writes (:meth:`TrialLogger.finish`) to land:
    one search per poll instead of reading every run back. None: MLflow did not answer."""
    if tracker.experiment_id is None or not numbers:
        return set()
    deadline = time.monotonic() + wait_s
    query = (f"tags.`autoopt.study` = '{tracker.study_name}' and tags.`autoopt.role` = 'trial' "
             "and attributes.status = 'RUNNING'")
    while True:
        ok, runs = tracker._conn.call("search open trial runs", "search_runs", [tracker.experiment_id],
                                      filter_string=query, max_results=1000, _force=True)
        if not ok:
            return None
        still = {int(r.data.tags.get("autoopt.trial_number", -1)) for r in runs} & numbers
        if not still or time.monotonic() >= deadline:
            return still
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# Driver side: experiment + parent run
# ----------------------------------------------------------------------------------------------
class StudyTracker:
    """Owns the study's experiment and parent run; hands out picklable :class:`TrialLogger` s."""

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self._conn = _Connection(config)
        self._experiment_id: str | None = None
        self._parent_run_id: str | None = None
        self.study_name = ""
        self.metric_name = "val_metric"
        self.traits: dict[str, Any] = {}
        #: write the end-of-study plots in a thread (a study run sets it; see :meth:`finish`)
        self.report_in_background = False
        #: draw that report in this process, not a new one (:meth:`_report_elsewhere`): where the
        #: process runs nothing after the study (the CLI), which saves that process's start and imports
        self.report_here = False
        self._start_writes: Any = None  # the parent run's params and spec, written in the background

    @property
    def parent_run_id(self) -> str | None:
        return self._parent_run_id

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    @property
    def overhead_seconds(self) -> float:
        return self._conn.seconds

    # --- experiment ----------------------------------------------------------------------------
    def _ensure_experiment(self) -> str | None:
        name = self.config.experiment_name
        ok, exp = self._conn.call("get_experiment_by_name", "get_experiment_by_name", name)
        if not ok:
            return None
        if exp is None:
            root = local_artifact_root(self.config.tracking_uri)
            location = (root / _slug(name)).resolve().as_uri() if root is not None else None
            tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, "autoopt.created_by": "autoopt"}
            ok, exp_id = self._conn.call("create_experiment", "create_experiment", name,
                                         artifact_location=location, tags=tags)
            if ok:
                return exp_id
            # Another study may have created it in between: read it back.
            ok, exp = self._conn.call("get_experiment_by_name", "get_experiment_by_name", name)
            return exp.experiment_id if ok and exp is not None else None
        if exp.lifecycle_stage == "deleted":
            self._conn.call("restore_experiment", "restore_experiment", exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) is None:
            self._conn.call("tag experiment", "set_experiment_tag", exp.experiment_id,
                            EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

    def start(
        self,
        study_name: str,
        spec: dict[str, Any],
        sampler: str,
        pruner: str,
        traits: dict[str, Any],
        resume_run_id: str | None = None,
        background: bool = False,
    ) -> str | None:
        """Create (or, with ``resume_run_id``, re-open) the study's parent run; returns its id.

        Returns None when tracking is disabled or the store is unreachable (already warned).
        ``background``: on a local store, log the study's params and spec on this process's
        tracking thread while the first trials start (:meth:`finish` waits for them).
        """
        self.study_name = study_name
        self.traits = dict(traits or {})
        self.metric_name = str(self.traits.get("metric") or (spec or {}).get("metric") or "val_metric")
        if not self.config.enabled:
            return None
        if sqlite_path(self.config.tracking_uri) is not None:
            try:
                _prepare_local_store(self.config.tracking_uri)
            except Exception as exc:  # noqa: BLE001
                _warn_once(self.config.tracking_uri, f"cannot create MLflow store {redact(self.config.tracking_uri)}: {exc}")
                return None
        self._experiment_id = self._ensure_experiment()
        if self._experiment_id is None:
            return None
        existing_params: dict[str, str] = {}
        if resume_run_id:
            ok, run = self._conn.call("get parent run", "get_run", resume_run_id)
            if ok and run.info.experiment_id == self._experiment_id:
                self._parent_run_id = resume_run_id
                existing_params = dict(run.data.params)
                self._conn.call("re-open parent run", "update_run", resume_run_id, status="RUNNING")
            else:
                _logger.warning("MLflow run %s not found in experiment %s; starting a new parent run",
                                resume_run_id, self.config.experiment_name)
        if self._parent_run_id is None:
            tags = {
                RUN_NAME_TAG: study_name,
                "autoopt.role": "study",
                "autoopt.study": study_name,
                "autoopt.state": "running",
                **{f"autoopt.trait.{k}": str(v) for k, v in self.traits.items()},
            }
            ok, run = self._conn.call("create parent run", "create_run", self._experiment_id,
                                      tags=tags, run_name=study_name)
            if not ok:
                return None
            self._parent_run_id = run.info.run_id
        params = {"sampler": sampler, "pruner": pruner, "metric": self.metric_name}
        for key, value in (spec or {}).items():
            if isinstance(value, (str, int, float, bool)) and key not in params:
                params[key] = value
        if isinstance((spec or {}).get("task_options"), dict):
            for key, value in spec["task_options"].items():
                params[f"task_options.{key}"] = value
        new = {k: v for k, v in params.items() if k not in existing_params}
        changed = {k: v for k, v in params.items() if k in existing_params and existing_params[k] != _param_value(v)}
        tags = {f"autoopt.resumed.{k}": v for k, v in changed.items()}
        if resume_run_id and self._parent_run_id == resume_run_id:
            tags["autoopt.state"] = "running"
        _, p, t = _entities(params=new, tags=tags)
        run_id, conn = self._parent_run_id, self._conn

        def log_params_and_spec() -> None:
            conn.call("log study params", "log_batch", run_id, params=p, tags=t)
            if spec:
                conn.call("log spec", "log_dict", run_id, _jsonable(spec), "spec.yaml")

        if background and not is_remote(self.config.tracking_uri):
            self._start_writes = tracking_thread().submit(log_params_and_spec)
        else:
            log_params_and_spec()
        return self._parent_run_id

    def trial_logger(self, trial_number: int, params: dict[str, Any], config: dict[str, Any], *,
                     warm_start: bool = False) -> TrialLogger:
        """A picklable logger for one trial (a no-op one if the parent run could not be made);
        ``warm_start``: the trial is one of the recommender's suggestions (tagged so in MLflow)."""
        enabled = self.config.enabled and self._parent_run_id is not None
        return TrialLogger(
            config=self.config if enabled else replace(self.config, enabled=False),
            experiment_id=self._experiment_id if enabled else None,
            parent_run_id=self._parent_run_id,
            study_name=self.study_name,
            trial_number=int(trial_number),
            params=dict(params),
            trial_config=dict(config),
            metric_name=self.metric_name,
            traits=self.traits,
            warm_start=warm_start,
        )

    # --- study-level results -------------------------------------------------------------------
    def _summary_entities(self, study: Any):
        from autoopt.core.record import summarize

        summary = summarize(study).as_dict()
        metrics = {k: summary[k] for k in (
            "n_trials", "n_complete", "n_pruned", "n_failed", "n_running", "epochs_run",
            "epochs_budget", "epochs_saved", "pruning_saved_fraction", "compute_seconds",
            "est_seconds_saved")}
        if summary["best_value"] is not None:
            metrics["best_value"] = summary["best_value"]
            metrics[f"best_{summary['metric']}"] = summary["best_value"]
            metrics["best_trial"] = summary["best_trial"]
        tags = {}
        if summary["best_config"]:
            tags.update({f"autoopt.best.{k}": v for k, v in flatten_config(summary["best_config"]).items()})
            tags["autoopt.best_trial"] = summary["best_trial"]
        return summary, metrics, tags

    def _wait_for_start_writes(self) -> None:
        """The parent run's params and spec (``start(background=True)``) before its results."""
        if self._start_writes is not None:
            self._start_writes.result()
            self._start_writes = None

    def log_progress(self, study: Any) -> None:
        """Update the parent run's counts and best value mid-study (one small write)."""
        if self._parent_run_id is None:
            return
        summary, metrics, tags = self._summary_entities(study)
        step = summary["n_trials"] - summary["n_running"]
        m, _, t = _entities(metrics=metrics, tags=tags, step=step)
        self._conn.call("log study progress", "log_batch", self._parent_run_id, metrics=m, tags=t)

    def end(self, study: Any, status: str, state: str) -> None:
        """End the parent run early (``KILLED`` when the study was interrupted), with its counts."""
        if self._parent_run_id is None:
            return
        self._wait_for_start_writes()
        summary, metrics, tags = self._summary_entities(study)
        tags["autoopt.state"] = state
        m, _, t = _entities(metrics=metrics, tags=tags, step=summary["n_trials"] - summary["n_running"])
        self._conn.call("log study results", "log_batch", self._parent_run_id, metrics=m, tags=t, _force=True)
        self._conn.call("end parent run", "set_terminated", self._parent_run_id, status=status, _force=True)

    def log_report(self, paths: list[Path], artifact_path: str = "plots") -> None:
        """Log report files: plots under ``plots/``, best_config.* and summary.json at the root."""
        if self._parent_run_id is None:
            return
        for path in paths:
            path = Path(path)
            if not path.is_file():
                continue
            dest = None if path.name.startswith(("best_config", "summary")) else artifact_path
            self._conn.call(f"log artifact {path.name}", "log_artifact", self._parent_run_id, str(path), dest)

    def finish(self, study: Any) -> None:
        """Best value/params/config, counts, pruning savings and plots; ends the parent run.
        With ``report_in_background`` the plots and the run's end follow on a thread
        (:func:`wait_for_reports`), in another process unless ``report_here``."""
        if self._parent_run_id is None:
            return
        self._wait_for_start_writes()
        summary, metrics, tags = self._summary_entities(study)
        state = "failed" if summary["n_complete"] == 0 and summary["n_failed"] > 0 else "finished"
        tags["autoopt.state"] = state
        tags[NOTE_TAG] = _study_note(summary)
        step = summary["n_trials"] - summary["n_running"]
        m, _, t = _entities(metrics=metrics, tags=tags, step=step)
        self._conn.call("log study results", "log_batch", self._parent_run_id, metrics=m, tags=t, _force=True)
        if self.report_in_background:
            # the plots take seconds (more with many trials): the study's results are stored and
            # logged already, so the caller gets them now; the process waits for this at exit
            draw = self._report_and_end if self.report_here else self._report_elsewhere
            thread = threading.Thread(target=draw, args=(study, state), daemon=False,
                                      name=f"autoopt-report-{self.study_name}")
            with _state_lock:
                _REPORTS[:] = [t for t in _REPORTS if t.is_alive()] + [thread]
            thread.start()
        else:
            self._report_and_end(study, state)

    def _report_elsewhere(self, study: Any, state: str) -> None:
        """The report drawn in a low-priority process of its own (:mod:`autoopt.report_process`),
        so it does not hold this process's interpreter lock while the next study runs; drawn
        here if that process cannot start or fails."""
        from autoopt.report import study_parts
        from autoopt.report_process import draw_in_process

        try:
            payload = {"tracking_config": self.config, "parent_run_id": self._parent_run_id,
                       "study": study_parts(study), "state": state}
            ok, err = draw_in_process(payload)
        except Exception as exc:  # noqa: BLE001 - e.g. an attribute that does not pickle
            ok, err = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            _logger.debug("autoopt: the report process failed (%s); drawing the report here", redact_text(err))
            self._report_and_end(study, state)

    def _report_and_end(self, study: Any, state: str) -> None:
        """Plots (or only the best configuration), logged to the parent run, which then ends."""
        from autoopt.report import write_best_config, write_report

        with tempfile.TemporaryDirectory(prefix="autoopt-report-") as tmp:
            try:
                if self.config.log_plots:
                    paths = write_report(study, Path(tmp), png=self.config.plot_png_engine)
                else:
                    paths = write_best_config(study, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - plots are a bonus; never fail the study
                _logger.warning("autoopt: study report failed: %s", exc)
                paths = write_best_config(study, Path(tmp))
            self.log_report(paths)
        self._conn.call("end parent run", "set_terminated", self._parent_run_id,
                        status="FAILED" if state == "failed" else "FINISHED", _force=True)


#: Study reports still being written in the background (see StudyTracker.report_in_background).
_REPORTS: list[threading.Thread] = []
#: "0" makes a study's end-of-run report synchronous again (the study returns after its plots).
REPORT_IN_BACKGROUND_ENV = "AUTOOPT_REPORT_IN_BACKGROUND"


def report_in_background_default() -> bool:
    return os.environ.get(REPORT_IN_BACKGROUND_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def wait_for_reports(timeout: float | None = None) -> bool:
    """Wait for the study reports still being written in the background; True when none is left."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _state_lock:
        threads = list(_REPORTS)
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _study_note(summary: dict[str, Any]) -> str:
    """Markdown shown as the parent run's description in the MLflow UI."""
    lines = [
        f"**autoopt study `{summary['study_name']}`** ({summary['direction']} `{summary['metric']}`)",
        "",
        f"Trials: {summary['n_complete']} complete, {summary['n_pruned']} pruned, {summary['n_failed']} failed.",
        f"Pruning ran {summary['epochs_run']} of {summary['epochs_budget']} epochs "
        f"({100 * summary['pruning_saved_fraction']:.0f}% saved).",
    ]
    if summary["best_value"] is not None:
        cfg = summary["best_config"] or {}
        lines += [
            "",
            f"Best: trial {summary['best_trial']}, {summary['metric']} = {summary['best_value']:.6g}, "
            f"`{cfg.get('optimizer')}` {json.dumps(cfg.get('optimizer_params', {}), default=str)} "
            f"with `{cfg.get('scheduler')}` schedule. Ready-to-paste code: `best_config.py`.",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# `autoopt report --log`
# ----------------------------------------------------------------------------------------------
def log_report(study: Any, report: str | Path | list[Path], tracking_uri: str | None = None) -> list[Path]:
    """Log a study report to the study's MLflow parent run; returns the report's paths.

    ``report`` is either a folder (the report is regenerated there from Optuna storage first) or
    the paths :func:`autoopt.report.write_report` returned. The parent run and store come from
    the study's user_attrs (``autoopt.mlflow_parent_run_id``, ``autoopt.tracking_uri``) unless
    ``tracking_uri`` is given.
    """
    from autoopt.report import write_report

    if isinstance(report, (str, Path)):
        paths = write_report(study, Path(report))
    else:
        paths = [Path(p) for p in report]
    attrs = study.user_attrs
    run_id = attrs.get(R.MLFLOW_PARENT_RUN_ID)
    # stored without its password: the full URI comes from this user's settings
    uri = tracking_uri or restore(attrs.get(R.TRACKING_URI), [os.environ.get(e) for e in TRACKING_URI_ENV])
    if not run_id or not uri:
        _logger.warning("study %s has no MLflow parent run; the report is not logged", study.study_name)
        return paths
    if is_redacted(uri):
        _logger.warning("the study's tracking URI %s is stored without its password; set %s to the full URI "
                        "to log the report", uri, TRACKING_URI_ENV[0])
        return paths
    tracker = StudyTracker(TrackingConfig(tracking_uri=uri, experiment_name=study.study_name))
    tracker._parent_run_id = run_id
    tracker.log_report(paths)
    return paths


__all__ = [
    "EXPERIMENT_KIND",
    "StudyTracker",
    "TrackingConfig",
    "TrackingUnavailableWarning",
    "TrialLogger",
    "default_tracking_uri",
    "flatten_config",
    "log_report",
    "resolve_tracking_uri",
]
