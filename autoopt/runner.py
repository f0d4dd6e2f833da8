"""Run a study on Ray: the driver loop and the function each trial runs on a worker.

Data path: spec -> SearchSpace (in the coordinator) -> ask -> ``run_trial`` on a Ray worker
-> train loop -> report/prune through the coordinator -> tell -> storage, while the worker
logs its own nested MLflow run.

A trial is one Ray task holding ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (fractions
allowed); a pruned trial returns at once, so its GPU goes to the next trial immediately.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import ray

from autoopt.core import record as R
from autoopt.coordinator import StudyCoordinator, TaskFacts
from autoopt.ray_session import ENV_RAY_ADDRESS, call_soon, ensure_ray
from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.core.tasks import resolvable
from autoopt.core.traits import MEASURED, TaskTraits
from autoopt.space import TrialConfig
from autoopt.redaction import redact, redact_text
from autoopt.spec import SpecError, StudySpec, objective_label, task_label
from autoopt.storage import StorageError, default_storage_url, open_storage

if TYPE_CHECKING:  # the task module imports torch: a driver imports it while Ray starts (StudyRunner)
    from autoopt.task import Task

REAP_EVERY_S = 15.0
#: How many ranked recommendations a warm start looks through for configurations in the space.
WARM_START_CANDIDATES = 64
#: How often the loop refreshes the progress display when no trial ended (each refresh is a
#: coordinator call, queued ahead of the workers' epoch reports).
PROGRESS_EVERY_S = 1.0
#: Trials handed to Ray beyond the study's workers, each queued behind one running trial (Ray
#: starts it once that trial's result exists, so no more than ``workers`` trials ever run, however
#: many CPUs the node has). The worker that frees starts it at once, where it otherwise waited for
#: the driver to see its result, ask the coordinator and submit the next (the steady gap between
#: two trials of a worker: 34-49 ms on 2 cores, docs/benchmarks.md section 2). Not for a study
#: with a timeout (a trial still queued at the deadline would end as interrupted), nor on the Ray
#: client (a trial on a node that died is found by the coordinator there, and the one queued
#: behind it would wait on a result that never comes). None is queued once no more than
#: ``workers`` trials of the budget are left to ask for: a trial queued behind a long one would
#: then wait while a worker with nothing left to take idles.
QUEUE_AHEAD = 1
#: How Ray says that a task did not start because a result it was given is lost (see QUEUE_AHEAD).
_UPSTREAM_LOST = "input arguments for this task could not be computed"
#: The reason recorded for trials a stop (Ctrl-C, SIGTERM, an error) cut short; they are re-run.
INTERRUPTED = "interrupted: the study was stopped"
_log = logging.getLogger(__name__)

_TASKS: dict[Any, Task] = {}


def _cached_task(task_ref: Any, options: dict[str, Any]) -> Task:
    """Build a task once per worker process (datasets are generated on first use)."""
    key = (task_ref, tuple(sorted(options.items()))) if isinstance(task_ref, str) else None
    if key is not None and key in _TASKS:
        return _TASKS[key]
    from autoopt.task import load_task

    task = load_task(task_ref, **options)
    if key is not None:
        _TASKS[key] = task
    return task


@dataclass(frozen=True)
class ObjectiveFacts:
    """An objective study's part of what a trial needs (a task knows these itself)."""

    ref: Any  # import path, or an ObjectRef to the function
    metric: str
    direction: str
    max_reports: int | None


class EpochReporter:
    """A worker's line to the pruner: ``report(epoch, value) -> stop?``. At epochs where the
    pruner cannot decide (``decides``: the pruner's resource and its decision epochs up to it)
    the value is sent without waiting for the answer: the coordinator stores it in order (one
    caller's calls to an actor run in the order sent) and the trial trains on."""

    def __init__(self, coordinator: Any, number: int, decides: tuple[int, frozenset[int]] | None) -> None:
        self.coordinator = coordinator
        self.number = number
        self.decides = decides
        self.pending: list[Any] = []
        #: the last epoch's (epoch, value), not sent: the outcome carries it and the coordinator
        #: stores it with the trial's end, in the same transaction (one call and one commit fewer
        #: per trial, and nothing to wait for between the training and the result)
        self.last: tuple[int, float] | None = None

    def waits_at(self, epoch: int) -> bool:
        return self.decides is None or epoch > self.decides[0] or epoch in self.decides[1]

    def __call__(self, epoch: int, value: float) -> bool:
        if self.decides is not None and epoch == self.decides[0] and epoch not in self.decides[1]:
            self.last = (int(epoch), float(value))
            return False
        if not self.waits_at(epoch):
            ref = self.coordinator.report.remote(self.number, epoch, value, False)
            self.pending[:] = [ref]  # the actor runs them in order: the last one done means all are
            return False
        ref = self.coordinator.report.remote(self.number, epoch, value)
        self.pending.clear()
        return bool(ray.get(ref))

    def drain(self) -> BaseException | None:
        """Wait until every report sent is stored (before the outcome is told); the error of one
        that failed, as a waited-for report would have raised it into the trial."""
        pending, self.pending = self.pending, []
        try:
            ray.get(pending)
        except Exception as exc:  # noqa: BLE001
            return getattr(exc, "cause", None) or exc
        return None


def run_trial(
    task_ref: Any,
    task_options: dict[str, Any],
    config: dict[str, Any],
    number: int,
    seed: int,
    coordinator: Any,
    logger: Any,
    threads: int,
    eval_every_steps: int | None = None,
    objective: ObjectiveFacts | None = None,
    decides: tuple[int, frozenset[int]] | None = None,
    announce: bool = False,
    prepared: Any = None,
) -> dict[str, Any]:
    """What a Ray worker runs for one trial: the task's training loop or the user's objective, both
    through one :class:`~autoopt.trial.Trial`. Returns a TrialOutcome dict; never raises for bad configs.

    ``decides``: (the pruner's resource, the epochs up to it at which the pruner can stop a trial);
    reports at other epochs are sent without waiting for the answer (None: wait at every epoch).
    ``announce``: tell the coordinator this worker's node first (the Ray client's lost-node check),
    and wait until it knows: a trial whose node dies must not train unannounced, or the check
    cannot find it (one round trip per trial, on the Ray client only).
    ``prepared``: a :func:`prepare_worker` result, passed so that Ray starts this trial only once
    that worker is ready (and idle: Ray hands the next task the worker freed last), or the result
    of the running trial this one is queued behind (``QUEUE_AHEAD``); not read."""
    if announce:
        try:
            ray.get(coordinator.trial_started.remote(number, ray.get_runtime_context().get_node_id()), timeout=30)
        except ray.exceptions.RayError as exc:  # the backstop is lost for this trial, not the trial
            _log.warning("autoopt: trial %d could not announce its node (%s)", number, _first_line(exc))
    import torch

    from autoopt.train import pick_device, seed_everything
    from autoopt.trial import Trial, load_objective, task_objective

    started_at = time.time()  # the trial's real start (Optuna's is when the coordinator handed it out)
    torch.set_num_threads(threads)
    if objective is None:
        task = _cached_task(task_ref, task_options)
        run = task_objective(task, eval_every_steps)
        metric, direction, max_reports = task.metric, task.direction, None
    else:
        ref = objective.ref
        run = load_objective(ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref)
        metric, direction, max_reports = objective.metric, objective.direction, objective.max_reports
    # the GPU Ray assigned (it sets CUDA_VISIBLE_DEVICES), else CPU even on a GPU node
    device = pick_device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    run_id = None
    if logger is not None:
        logger.start(host=os.uname().nodename, device=str(device), background=True)

    report = EpochReporter(coordinator, number, decides)

    def on_epoch(record: EpochRecord) -> None:
        if logger is not None:
            logger.log_epoch(record)

    def on_traits(traits: TaskTraits) -> None:
        ray.get(coordinator.set_study_attrs.remote({R.TRAITS: traits.to_dict(MEASURED)}))

    trial = Trial(TrialConfig.from_dict(config), number=number, seed=seed, metric=metric, direction=direction,
                  max_reports=max_reports, device=device, pruner=report, on_record=on_epoch, logger=logger,
                  on_traits=on_traits)
    if objective is not None:
        seed_everything(seed)
    outcome: TrialOutcome = trial.run(run)
    lost = report.drain()  # the last report is stored before the outcome is told (the driver is another caller)
    if lost is not None and outcome.status != "failed":
        # as if the report had waited and raised: the trial failed on it (a full disk: re-run on resume)
        outcome = dataclasses.replace(outcome, status="failed", value=None,
                                      reason=f"error: {type(lost).__name__}: {lost}"[:500])
    if logger is not None:
        logger.finish(outcome, background=True)  # the driver checks at the study's end (open_trial_runs)
        run_id = logger.run_id
    result = outcome.to_dict()
    result["mlflow_run_id"] = run_id
    if outcome.status == "complete":  # for the report's best_config.py (see plain_torch_line)
        from autoopt.optimizers import plain_torch_line

        result["torch_line"] = plain_torch_line(config) or ""
    result["node_id"] = ray.get_runtime_context().get_node_id()
    result["started_at"] = started_at
    if report.last is not None:
        result["last_report"] = list(report.last)
    # the driver warns the user: this process's own warning lands in a worker log on the cluster
    result["tracking_failed"] = bool(logger is not None and logger._conn is not None and logger._conn.failed)
    return result


def prepare_worker(task_ref: Any, task_options: dict[str, Any], tracking: bool, objective_ref: Any = None) -> str | None:
    """Make a worker process ready for trials: import what a trial needs and build the task (its
    dataset) or import the objective. On a cluster each study's first trials otherwise wait
    seconds for new processes. Each of a study's first trials starts after one of these ended
    (see ``_dispatch``), on the worker it made ready. A failure is returned, not raised: raised,
    it would fail that trial with the prepare's error before the trial ran; the trial meets the
    same error itself and records it as its own reason."""
    try:
        _prepare_worker(task_ref, task_options, tracking, objective_ref)
    except Exception as exc:  # noqa: BLE001
        return _first_line(exc)
    return None


def _prepare_worker(task_ref: Any, task_options: dict[str, Any], tracking: bool, objective_ref: Any) -> None:
    import torch

    import autoopt.optimizers  # noqa: F401
    import autoopt.train  # noqa: F401
    import autoopt.trial

    # a process's first optimizer imports torch._dynamo (about 0.5 s), and the optimizers beyond
    # torch.optim come from pytorch_optimizer: both now, not inside the first trials
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    import pytorch_optimizer  # noqa: F401

    if tracking:  # MLflow's client (about 1.6 s) imports while the first trial trains
        from autoopt.tracking import import_client_soon

        import_client_soon()
    if objective_ref is not None:
        autoopt.trial.load_objective(ray.get(objective_ref) if isinstance(objective_ref, ray.ObjectRef) else objective_ref)
    else:
        _cached_task(task_ref, task_options)


_run_trial_remote = ray.remote(max_retries=0)(run_trial)
_prepare_worker_remote = ray.remote(max_retries=0)(prepare_worker)
_Coordinator = ray.remote(num_cpus=0, max_concurrency=1, max_restarts=0)(StudyCoordinator)


class CoordinatorPool:
    """Coordinators of this driver's finished studies, kept for its next ones (as Tune's
    ``reuse_actors`` keeps trainables): starting a coordinator (a process, optuna and sqlalchemy
    imports, the storage's schema check) takes about 2 s, which a study of short trials, or a
    notebook running one study after another, feels. Only a coordinator whose study ended
    normally comes back, and a study takes one placed where it would place a new one, started in
    this Ray session (a handle does not outlive ``ray.shutdown``); at most ``size`` wait.
    ``AUTOOPT_REUSE_COORDINATOR=0`` turns it off."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._idle: list[tuple[Any, Any]] = []  # (key, handle)
        self._lock = threading.Lock()

    @staticmethod
    def enabled() -> bool:
        """Off on the Ray client (``ray://``), whose driver is a proxy on the cluster anyway."""
        if ray.util.client.ray.is_connected():
            return False
        return os.environ.get("AUTOOPT_REUSE_COORDINATOR", "1").lower() not in ("0", "false", "no")

    @staticmethod
    def key(placement: Any) -> tuple[str, str]:
        node = getattr(placement, "node_id", None) or ""
        return ray.get_runtime_context().get_job_id(), str(node)

    def take(self, key: Any) -> Any | None:
        with self._lock:
            self._idle = [(k, h) for k, h in self._idle if k[0] == key[0]]  # earlier Ray sessions' are gone
            for i, (k, handle) in enumerate(self._idle):
                if k == key:
                    del self._idle[i]
                    return handle
        return None

    def give(self, key: Any, handle: Any) -> None:
        with self._lock:
            self._idle.append((key, handle))
            del self._idle[:-self.size]  # the oldest go (their handles' release ends them)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()


COORDINATORS = CoordinatorPool()

#: how long a stopping driver waits for the coordinator to record its trials in flight. A live
#: coordinator answers in milliseconds; after a terminal's Ctrl-C, whose SIGINT reaches Ray's
#: processes too, the call may never be answered, and the user is waiting: the driver then records
#: them itself (``_record_interrupt``), or ``autoopt resume`` reaps them.
STOP_CALL_TIMEOUT_S = 15.0
#: on the Ray client, how often the driver asks which running trials are on a dead node
LOST_CHECK_S = 5.0

# Errors that mean the worker (or its node) went away, not that the configuration is bad.
_WORKER_LOST = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.TaskUnschedulableError,
)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:300]}"


def _task_error_cause(exc: ray.exceptions.RayTaskError) -> Exception | None:
    """The exception a Ray task or actor method raised (a SpecError, a StorageError...), so the
    user reads that one line rather than Ray's wrapped traceback; None when Ray kept none."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else None


def _stop_reason(exc: BaseException) -> str:
    """What the trials in flight are failed with when the loop ends on ``exc``: the real reason
    when the storage's disk is full, else that the study was stopped."""
    from autoopt.coordinator import StorageFullError

    cause = _task_error_cause(exc) if isinstance(exc, ray.exceptions.RayTaskError) else exc
    if isinstance(cause, StorageFullError):
        return f"stopped: {str(cause).split(';')[0]}"
    return INTERRUPTED


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _coordinator_placement() -> Any:
    """Where a study's coordinator lives: on the head node (hard affinity), which outlives worker
    nodes, so a killed worker never takes the study's storage owner with it (a soft affinity
    was seen to land on a worker). Embedded, the head is this machine."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        for node in ray.nodes():
            if node.get("Alive") and "node:__internal_head__" in (node.get("Resources") or {}):
                return NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
    except Exception:  # noqa: BLE001 - fall back to the driver's node
        pass
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)


@dataclass
class Progress:
    """What the live display and ``status`` show."""

    counts: dict[str, int] = field(default_factory=dict)
    running: int = 0
    best_value: float | None = None
    best_config: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    finished_this_run: int = 0
    target: int | None = None
    done: bool = False
    error: str | None = None

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    def eta(self, counted: int) -> float | None:
        if self.target is None or self.finished_this_run == 0:
            return None
        remaining = max(self.target - counted, 0)
        return self.elapsed / self.finished_this_run * remaining


@dataclass
class StudyHooks:
    """The recommender's part in a study, passed in by the caller so the runner never imports it
    (:func:`autoopt.study.recommender_hooks` gives the standard ones).

    ``suggest_configs(traits, k)``: TrialConfig dicts to warm-start with; ``top_optimizers(traits,
    k)``: the optimizers to narrow the space to; ``after_study(study)``: runs on the finished study
    (feeds the meta-dataset); its errors are reported as warnings, the study is kept either way.
    """

    suggest_configs: Callable[[TaskTraits, int], list[dict[str, Any]]] | None = None
    top_optimizers: Callable[[TaskTraits, int], list[str]] | None = None
    after_study: Callable[[Any], Any] | None = None


class StudyRunner:
    """Drives one study: prepares the task, the coordinator and tracking, then dispatches trials."""

    def __init__(self, spec: StudySpec, *, on_progress: Callable[[Progress], None] | None = None,
                 hooks: StudyHooks | None = None, report_here: bool = False):
        """``report_here``: draw the end-of-study report (after ``run`` returns, by default) in
        this process, for a process that runs one study and exits (the CLI). Otherwise a process
        of its own draws it, so that this process's next study does not wait for the plots' CPU."""
        self.spec = spec
        self.report_here = report_here
        self.hooks = hooks or StudyHooks()
        has_recommender = self.hooks.suggest_configs is not None and self.hooks.top_optimizers is not None
        if spec.search.warm_start.enabled and not has_recommender:
            raise SpecError("warm_start needs the recommender: run the study with autoopt.run/submit, "
                            "or pass StudyHooks with suggest_configs and top_optimizers")
        self.storage_url = spec.storage or default_storage_url()
        address = spec.ray_address or os.environ.get(ENV_RAY_ADDRESS) or os.environ.get("RAY_ADDRESS") or ""
        if address.startswith("ray://") and self.storage_url.startswith(("sqlite", "journal")):
            raise SpecError(
                f"storage {redact(self.storage_url)} is a file on this machine, but the study runs on the Ray "
                f"cluster at {redact(address)}: use a storage the cluster can reach, e.g. postgresql://user:pw@host/db"
            )
        open_storage(self.storage_url)  # fail fast (clear, redacted message) before starting Ray
        self.gpus_per_trial = 0.0 if spec.gpus_per_trial == "auto" else float(spec.gpus_per_trial)
        self.resource_request: dict[str, float] = {}
        self._fits_now = True
        #: the workers being made ready for the first trials (prepare_worker's results), one per trial
        self._prepared: list[Any] = []
        #: Ray's start, the resource check and the first workers' prepares, begun on the Ray
        #: thread while this driver loads the task (torch, the dataset) and measures its traits
        self._early: concurrent.futures.Future | None = None
        if resolvable(spec.objective if spec.objective is not None else spec.task):
            self._early = call_soon(self._start_early)
        self.task: Task | None = None
        self.objective = None
        if spec.objective is not None:
            from autoopt.trial import load_objective

            self.objective = load_objective(spec.objective)  # fails fast, here, on a bad import path
            self.metric = spec.search.metric or "value"
            if spec.search.direction is None:
                raise SpecError(f"study {spec.name!r}: an objective needs direction: maximize or minimize "
                                f"(is a higher {self.metric} better?)")
            self.direction = spec.search.direction
            self.traits = self._objective_traits()
        elif spec.task is not None:
            from autoopt.task import load_task

            self.task = load_task(spec.task, **spec.task_options)
            self.metric, self.direction = self.task.metric, self.task.direction
            self.traits = self.task.traits()
        else:
            raise SpecError(f"study {spec.name!r} names neither a task nor an objective: set task: or objective:")
        #: whether the recommender's suggestions run first (``warm_start.enabled``; unset: for a task's study)
        self.warm_start = (spec.search.warm_start.enabled if spec.search.warm_start.enabled is not None
                           else self.task is not None and has_recommender)
        self.on_progress = on_progress
        self.progress = Progress(target=spec.n_trials)
        self.session = uuid.uuid4().hex[:12]
        self._stop = threading.Event()
        self.tracker = None
        self.parent_run_id: str | None = None
        self.coordinator = None
        self.objective_facts: ObjectiveFacts | None = None
        self._tracking_warned = False
        #: a trial whose MLflow run may be missing or unfinished (MLflow away, a lost worker): the study's end syncs
        self._mlflow_gaps = False
        self._resume_run_id: str | None = None
        self._coordinator_args: tuple[tuple, dict[str, Any]] | None = None
        self._in_flight: list[int] = []
        #: trials handed to Ray behind a running one (see QUEUE_AHEAD), until they end: ref -> (that
        #: trial's ref, its number); one is still waiting while the trial it is behind runs
        self._queued_behind: dict[Any, tuple[Any, int]] = {}
        #: those queued behind a trial that ended without a result: they never start (Ray fails them)
        self._doomed: set[Any] = set()
        self._unrecorded: list[int] = []
        self._sigterm_before: Any = None
        self.interrupt: dict[str, Any] | None = None
        self._decides: tuple[int, frozenset[int]] | None = None
        #: trials this run handed to workers
        self._dispatched = 0
        #: set when the study's budget was used before this run began, so no trial ran: what to say
        self.nothing_ran: str | None = None
        #: opens the local MLflow store while the coordinator starts (joined before tracking begins)
        self._warming: threading.Thread | None = None
        #: tells and prepares sent without waiting: their errors surface at the next _check_sent
        self._sent: list[Any] = []
        self._settle = False  # on the Ray client: wait for each sent call (see _run)
        self._futures: dict[Any, Any] = {}  # on the Ray client: each running trial's future (_finished_trials)
        self._lost: dict[Any, str] = {}  # on the Ray client: trials found on a dead node, and why
        self._lost_checked = 0.0
        #: a lost trial's re-run was queued since the loop last looked (its budget slot is free again)
        self._requeued = False
        self._pool_key: Any = None  # where this study's coordinator goes back to (CoordinatorPool)
        self._reopened = False  # a kept coordinator took this study (its reopen answered already)
        #: the study's counts when its coordinator opened it (reopen's or the first summary's answer)
        self._opened_counts: dict[str, int] = {}
        self._progress_write: Any = None  # the last mid-study MLflow progress write (a Future)
        #: the study those writes read, opened once: its trial cache then reads only the trials that
        #: changed since the last write (a study opened anew read all of them every time)
        self._progress_study: Any = None
        #: the study as it ended (set by a run that ended normally): the result needs no new read
        self.final_summary: R.StudySummary | None = None

    # --- set-up ------------------------------------------------------------------------
    def _objective_traits(self) -> TaskTraits:
        """An objective's traits: those ``trial.traits()`` measured in an earlier run of the study, else
        only the metric (unknown numbers: the recommender's rules on them do not fire)."""
        import optuna

        try:
            stored = optuna.load_study(study_name=self.spec.name, storage=open_storage(self.storage_url)).user_attrs.get(R.TRAITS)
            if stored:
                return TaskTraits.from_any(stored)
        except Exception:  # noqa: BLE001 - a new study
            pass
        return TaskTraits(domain="other", metric=self.metric, direction=self.direction)

    def _study_attrs(self) -> dict[str, Any]:
        spec = self.spec.to_dict()
        return {
            R.SPEC: spec,
            R.TASK: spec["task"] if self.task is not None else spec["objective"],
            R.TRAITS: self.traits.to_dict(MEASURED),
            R.METRIC: self.metric,
            R.DIRECTION: self.direction,
            R.MAX_EPOCHS: self._max_reports(),
        }

    def _max_reports(self) -> int | None:
        """Pruner resource: epochs, or evaluations per run with ``eval_every_steps``; an objective's ``max_reports``."""
        if self.task is None:
            return self.spec.search.max_reports
        if not self.spec.eval_every_steps:
            return self.task.epochs
        train_loader, _ = self.task.loaders()
        return max(1, len(train_loader) * self.task.epochs // self.spec.eval_every_steps)

    def _has_matrix_params(self) -> bool:
        """Muon applies only to hidden 2-D weights; does this model have any?"""
        from autoopt.optimizers import hidden_matrix_params

        if self.task is None:  # the user's model is not known here; Muon says so in the trial if it has none
            return True
        return bool(hidden_matrix_params(self.task.build_model()))

    def _start_tracking(self) -> None:
        from autoopt import tracking

        if self._warming is not None:
            self._warming.join(timeout=60)  # the store opened while the coordinator started

        config = tracking.TrackingConfig(
            tracking_uri=tracking.resolve_tracking_uri(self.spec.tracking_uri),
            experiment_name=self.spec.experiment or self.spec.name,
        )
        self.tracker = tracking.StudyTracker(config)
        # the study's plots are drawn after run() returns (its results are stored and logged first)
        self.tracker.report_in_background = tracking.report_in_background_default()
        self.tracker.report_here = self.report_here
        existing = None
        try:
            import optuna

            existing = optuna.load_study(study_name=self.spec.name, storage=open_storage(self.storage_url)).user_attrs.get(
                R.MLFLOW_PARENT_RUN_ID
            )
        except Exception:
            existing = None
        self._resume_run_id = existing
        self._open_parent_run()
        if self.parent_run_id is not None and existing is not None:
            self._sync(finish_parent=False)  # resumed: first log what an earlier outage kept out of MLflow

    def _open_parent_run(self) -> None:
        """Create (or re-open) the study's MLflow run; while MLflow is down the study runs untracked
        and the loop tries again, so trials started after the server is back are tracked live."""
        self.parent_run_id = self.tracker.start(
            self.spec.name,
            self.spec.to_dict(),
            self.spec.sampler,
            self.spec.pruner,
            self.traits.to_dict(MEASURED),
            resume_run_id=self._resume_run_id,
            background=True,
        )
        if self.parent_run_id is not None:
            self._set_study_attrs({
                R.MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                R.MLFLOW_EXPERIMENT_ID: self.tracker.experiment_id,
                R.TRACKING_URI: redact(self.tracker.config.tracking_uri),
            })

    def _set_study_attrs(self, attrs: dict[str, Any]) -> None:
        """Through the coordinator (the storage's one owner); directly once it is gone (Ctrl-C)."""
        try:
            ray.get(self.coordinator.set_study_attrs.remote(attrs))
        except Exception:  # noqa: BLE001
            import optuna

            study = optuna.load_study(study_name=self.spec.name, storage=open_storage(self.storage_url))
            for k, v in attrs.items():
                study.set_user_attr(k, v)

    def _sync(self, finish_parent: bool | None, check_trials: bool = True, study: Any = None) -> dict[str, Any] | None:
        """Back-fill MLflow from the storage (autoopt.sync); warn when MLflow is still away.
        ``study``: the study as just read (default: read now)."""
        import warnings

        import optuna

        from autoopt.sync import sync_study
        from autoopt.tracking import TrackingUnavailableWarning

        if study is None:
            study = optuna.load_study(study_name=self.spec.name, storage=open_storage(self.storage_url))
        try:
            report = sync_study(study, tracker=self.tracker, finish_parent=finish_parent, set_attrs=self._set_study_attrs,
                                check_trials=check_trials)
        except Exception as exc:  # noqa: BLE001 - tracking never loses a study
            report = {"reachable": False, "error": f"{type(exc).__name__}: {exc}"}
        self.parent_run_id = self.tracker.parent_run_id
        if not report["reachable"]:
            warnings.warn(TrackingUnavailableWarning(
                f"MLflow at {redact(self.tracker.config.tracking_uri)} could not be brought up to date "
                f"({redact_text(report.get('error') or 'unreachable')}); every result is in the Optuna storage: "
                f"`autoopt sync {self.spec.name}` logs what is missing once the server answers"), stacklevel=2)
        return report

    def _warm_start(self) -> int:
        """Queue the recommender's suggestions as the study's first trials; how many were queued."""
        ws = self.spec.warm_start
        if not self.warm_start or ws.n_trials == 0:
            return 0
        if ws.enabled is None:  # by default a study starts from the recommender once, not again on resume
            if any(self._opened_counts.get(k) for k in ("complete", "pruned", "failed", "running")):
                return 0
        configs = self._warm_start_configs()
        # never more than the budget: a suggestion queued past it would stay WAITING ahead of the
        # re-runs of lost trials, which then never run
        limit = ws.n_trials if self.spec.n_trials is None else min(ws.n_trials, self.spec.n_trials)
        return int(ray.get(self.coordinator.enqueue.remote(configs, limit))) if configs else 0

    def _warm_start_configs(self) -> list[dict[str, Any]]:
        """The recommender's ranking for this task (a few dozen configurations at most: those
        outside the study's space are skipped, and a narrow space may hold only the lower-ranked
        ones). A failure fails the study where the user asked for the warm start; where it is the
        default, it is a warning and the study starts cold."""
        ws = self.spec.warm_start
        try:
            return self.hooks.suggest_configs(self.traits, max(ws.n_trials * 4, WARM_START_CANDIDATES))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            if ws.enabled:
                raise
            import warnings

            warnings.warn(f"autoopt: no warm start for study {self.spec.name!r}, the recommender failed "
                          f"({type(exc).__name__}: {exc}); set warm_start: {{enabled: false}} to skip it", stacklevel=2)
            return []

    def _make_coordinator(self) -> Any:
        space = self.spec.space
        if self.warm_start and self.spec.warm_start.narrow_to:
            top = self.hooks.top_optimizers(self.traits, self.spec.warm_start.narrow_to)
            allowed = [o for o in top if not space.optimizers or o in space.optimizers]
            if allowed:
                space = space.model_copy(update={"optimizers": allowed})
        search = self.spec.search.model_copy(update={"space": space, "task": task_label(self.spec.search.task),
                                                     "objective": objective_label(self.spec.search.objective)})
        attrs, prior_curves = self._study_attrs(), self._similar_curves()
        if prior_curves is not None:  # what the learning-curve pruner starts from, for the user to see
            attrs[R.PRUNER_PRIOR_CURVES] = len(prior_curves)
        self._coordinator_args = (
            (self.spec.name, search, self.spec.execution, self.spec.places.model_copy(update={"storage": self.storage_url}),
             TaskFacts(self.direction, self.traits, self._max_reports(), self._has_matrix_params())),
            dict(study_attrs=attrs, session=self.session, prior_curves=prior_curves),
        )
        args, kwargs = self._coordinator_args
        placement = _coordinator_placement()
        self._pool_key = CoordinatorPool.key(placement) if CoordinatorPool.enabled() else None
        kept = COORDINATORS.take(self._pool_key) if self._pool_key is not None else None
        if kept is not None:
            try:
                self._opened_counts = ray.get(kept.reopen.remote(*args, keep_refusal=True, **kwargs))["counts"]
                self._reopened = True
                return kept
            except ray.exceptions.RayActorError:
                pass  # it died while idle: start a new one
            except ray.exceptions.RayTaskError as exc:  # the new study's own error (a bad spec, storage)
                raise (_task_error_cause(exc) or exc) from None
        return _Coordinator.options(scheduling_strategy=placement).remote(*args, keep_refusal=True, **kwargs)

    def _similar_curves(self) -> list[tuple[list[int], list[float]]] | None:
        """For ``learning_curve`` with ``similar_tasks: true``: the finished curves of the nearest
        studies in this user's meta-dataset (read here, where finished studies add their runs)."""
        options = dict(self.spec.search.pruner_options)
        if self.spec.search.pruner != "learning_curve" or not options.get("similar_tasks"):
            return None
        from autoopt.recommend.meta import similar_curves

        try:
            return similar_curves(self.traits, self.metric, self.direction,
                                  k=int(options.get("similar_studies", 3)), exclude=self.spec.name)
        except Exception as exc:  # noqa: BLE001 - an unreadable meta-dataset: prune on the study's own curves
            _log.warning("autoopt: similar tasks' curves unavailable (%s: %s)", type(exc).__name__, exc)
            return None

    # --- the loop ------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop dispatching; the trials handed to Ray (those running, and one queued behind them:
        QUEUE_AHEAD) finish and are recorded."""
        self._stop.set()

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM): record it everywhere, then let it propagate
            self._record_interrupt()
            raise
        except ray.exceptions.RayTaskError as exc:
            # the coordinator gave up on an unreachable storage: say so in one line, not a Ray traceback
            cause = _task_error_cause(exc)
            if isinstance(cause, StorageError):
                raise StorageError(str(cause)) from None
            raise
        finally:
            if self._sigterm_before is not None:
                signal.signal(signal.SIGTERM, self._sigterm_before)
                self._sigterm_before = None

    def _fit_resources(self) -> None:
        """Resolve ``gpus_per_trial: auto`` on this cluster; refuse a request no node can ever run."""
        from autoopt import resources

        nodes = resources.alive_nodes()
        self.gpus_per_trial = resources.resolve_gpus(self.spec.gpus_per_trial, self.spec.workers, nodes)
        self.resource_request = {"CPU": self.spec.cpus_per_trial, "GPU": self.gpus_per_trial}
        asked = {"cpus_per_trial": self.spec.cpus_per_trial, "gpus_per_trial": self.spec.gpus_per_trial}
        self._fits_now = resources.check_fits(self.resource_request, nodes, asked)
        if not self._fits_now:
            self._warn_waiting(0.0)

    def _warn_waiting(self, waited_s: float, pending: int | None = None) -> None:
        """On an autoscaling cluster: say so while no node has what a trial asks for."""
        import warnings

        from autoopt import resources

        message = resources.waiting_message(self.resource_request, resources.alive_nodes(),
                                            self.spec.workers if pending is None else pending, waited_s)
        if message is None:
            self._fits_now = True
        else:
            warnings.warn(resources.ResourcesUnavailableWarning(message), stacklevel=2)

    def _start_early(self) -> None:
        """Connect to Ray and check the resources; where the task or objective is an import path
        (not an object this driver has yet to ship), start the first trials' workers too, so their
        cold start (a process, torch, the dataset) overlaps this driver's own."""
        ensure_ray(self.spec.ray_address)
        self._fit_resources()
        task_ref, objective_ref = self._named_refs()
        if task_ref is not None or objective_ref is not None:
            self._prepare_workers(task_ref, objective_ref)

    def _named_refs(self) -> tuple[str | None, str | None]:
        """``(task, objective)`` as the spec names them where a worker loads it by name (an import
        path or a reference task); None for an object this driver has to ship (``_run``), and for
        the one of the two the study does not use."""
        if self.spec.objective is not None:
            return None, self.spec.objective if isinstance(self.spec.objective, str) else None
        return self.spec.task if isinstance(self.spec.task, str) else None, None

    def _prepare_workers(self, task_ref: Any, objective_ref: Any) -> None:
        # each of the first trials starts after one of these, on its worker (_dispatch)
        self._prepared = [
            _prepare_worker_remote.options(
                num_cpus=self.spec.cpus_per_trial, num_gpus=self.gpus_per_trial or None
            ).remote(task_ref, self.spec.task_options, bool(self.spec.tracking), objective_ref)
            for _ in range(self.spec.workers)
        ]

    def _run(self) -> dict[str, Any]:
        if self._early is not None:
            self._early.result()  # its errors (no Ray, a request no node can run) are raised here
        else:
            self._start_early()
        if threading.current_thread() is threading.main_thread():
            # SIGTERM stops the study like Ctrl-C, recorded (Ray, connected on its own thread, sets
            # no handler; started on this thread, its handler exited at once)
            self._sigterm_before = signal.signal(signal.SIGTERM, _interrupt)
        task_ref, objective_ref = self._named_refs()
        if self.objective is not None:
            objective_ref = objective_ref or ray.put(self.objective)
            self.objective_facts = ObjectiveFacts(objective_ref, self.metric, self.direction,
                                                  self.spec.search.max_reports)
        else:
            task_ref = task_ref or ray.put(self.task)
        if not self._prepared:  # an object to ship: its workers start now, beside the coordinator
            self._prepare_workers(task_ref, objective_ref)
        if self.spec.tracking:
            from autoopt import tracking

            self._warming = threading.Thread(target=tracking.warm_store, daemon=True,
                                             args=(tracking.resolve_tracking_uri(self.spec.tracking_uri),))
            self._warming.start()
        self.coordinator = self._make_coordinator()
        try:
            if not self._reopened:  # a new actor: its constructor's error surfaces here
                self._opened_counts = ray.get(self.coordinator.summary.remote())["counts"]
        except ray.exceptions.RayTaskError as exc:  # a refusal the constructor kept (keep_refusal)
            ray.kill(self.coordinator)
            self.coordinator = None
            raise (_task_error_cause(exc) or exc) from None
        except ray.exceptions.RayActorError as exc:
            cause = exc.__cause__ or exc
            raise SpecError(str(getattr(cause, "args", [cause])[0] if getattr(cause, "args", None) else cause)) from None
        if self.spec.tracking:
            self._start_tracking()
        self._warm_start()
        threads = max(1, int(self.spec.cpus_per_trial))
        self._decides = self._decision_epochs()
        running: dict[Any, int] = {}
        deadline = time.time() + self.spec.timeout_s if self.spec.timeout_s else None
        last_beat = last_reap = last_resource_warning = started = last_progress = time.time()
        pending_summary: Any = None  # a progress summary asked for and not read yet
        exhausted = False
        stop_reason = INTERRUPTED
        from autoopt.resources import warn_interval_s

        resource_warn_s = warn_interval_s()

        def may_ask() -> bool:
            out_of_time = deadline is not None and time.time() >= deadline
            return not (exhausted or out_of_time or self._stop.is_set())

        # The sampler works ahead: after each dispatch the coordinator prepares (samples and
        # queues) the next trial while the workers train, so a freed worker's ask only takes it.
        # Calls from here to the coordinator run in the order sent: a freed worker's ask goes
        # before the finished trial's tell, and both are stored before any later call returns.
        self._sent = []
        # On the Ray client (ray://) the sent calls are waited for at once, as before the sampler
        # worked ahead: with them left in flight, the client server's wait on a dead node's trials
        # sometimes never returned (tests/test_cluster.py's killed worker node)
        self._settle = ray.util.client.ray.is_connected()

        def placed() -> tuple[dict[Any, Any], list[Any]]:
            """The trials still waiting in Ray (queued -> the trial it is behind, not ended yet),
            and those on a worker or about to be (not doomed: see ``_doomed``)."""
            waiting = {queued: before for queued, (before, _) in self._queued_behind.items() if before in running}
            return waiting, [ref for ref in running if ref not in waiting and ref not in self._doomed]

        def room() -> bool:
            """Whether a trial handed to Ray now would run at once, or may wait queued (QUEUE_AHEAD)."""
            waiting, busy = placed()
            return len(busy) < self.spec.workers or len(waiting) < queue_ahead()

        def dispatch_next() -> bool:
            item = ray.get(self.coordinator.ask.remote())
            self._check_sent(wait=self._settle)
            if item is None:
                return False
            waiting, busy = placed()
            behind = None
            if len(busy) >= self.spec.workers:  # every worker has its trial: queue behind one of them
                taken = set(waiting.values())
                behind = next((ref for ref in busy if ref not in taken), None)
            ref = self._dispatch(item, task_ref, threads, behind)
            running[ref] = item["number"]
            if behind is not None:
                self._queued_behind[ref] = (behind, running[behind])
            return True

        # trials queued in Ray (QUEUE_AHEAD; not with a timeout nor on the Ray client): the
        # coordinator then samples each trial when asked, after the finished trial's tell,
        # instead of ahead (prepare)
        ahead = QUEUE_AHEAD if deadline is None and not self._settle else 0
        # the trials of the budget this run may still ask for (other drivers' aside), counted when
        # the coordinator opened the study: near the end none is queued, since a queued trial
        # behind a long one would wait while another worker, with nothing left to ask, idles
        budget_left = (None if self.spec.n_trials is None else self.spec.n_trials - sum(
            self._opened_counts.get(k, 0) for k in ("complete", "pruned", "failed", "running")))

        def queue_ahead() -> int:
            if budget_left is not None and budget_left - self._dispatched <= self.spec.workers:
                return 0
            return ahead

        self._queued_behind.clear()
        self._doomed.clear()

        def prepare_next() -> None:
            if not queue_ahead():
                self._send(self.coordinator.prepare.remote())

        try:
            while True:
                while may_ask() and room():
                    if not dispatch_next():
                        exhausted = True
                        break
                    prepare_next()
                if not running:
                    out_of_time = deadline is not None and time.time() >= deadline
                    if out_of_time or self._stop.is_set():
                        break
                    if dispatch_next():
                        # a re-run queued after the budget looked used up: another driver's trial
                        # reaped meanwhile (the periodic reap is not waited for) freed its slot
                        exhausted = False
                        prepare_next()
                        continue
                    if not self._wait_for_foreign():
                        break
                    exhausted = False  # a reaped trial may have been re-enqueued: ask again
                    continue
                for ref in self._finished_trials(running):
                    outcome = self._outcome(ref, running[ref])  # a lost worker, an error: recorded here
                    number = running.pop(ref)
                    self._queued_behind.pop(ref, None)
                    self._doomed.discard(ref)
                    if outcome is None:  # ended without a result: Ray fails the trial queued behind it
                        self._doomed.update(q for q, (before, _) in self._queued_behind.items() if before == ref)
                    if self._requeued:
                        # its re-run is queued: the budget that looked used up (the lost trial
                        # still counted as running) has a slot for it again
                        exhausted, self._requeued = False, False
                    told = bool(queue_ahead()) and outcome is not None
                    if told:
                        # the freed worker took the queued trial already: the result first, so the
                        # next trial is sampled knowing it
                        self._send(self.coordinator.tell.remote(number, outcome))
                    asked = False
                    if may_ask() and room():  # the freed worker's next trial first
                        asked = dispatch_next()
                        exhausted = not asked
                    if not told and outcome is not None:
                        self._send(self.coordinator.tell.remote(number, outcome))
                    if asked:
                        prepare_next()
                now = time.time()
                if now - last_beat >= self.spec.execution.heartbeat_s:
                    self.coordinator.heartbeat.remote()
                    if self.tracker is not None and self.parent_run_id is None:
                        self._open_parent_run()  # MLflow was down at the start: is it back?
                    last_beat = now
                if not self._fits_now and now - last_resource_warning >= resource_warn_s:
                    self._warn_waiting(now - started, min(len(running), self.spec.workers))
                    last_resource_warning = now
                if now - last_reap >= REAP_EVERY_S:
                    self.coordinator.reap_stale.remote()
                    self._log_progress()
                    last_reap = now
                # not on every trial's end: the summary queues behind the tell (and its ask ahead)
                # and before the workers' reports; and not waited for: a freed worker's next trial
                # would wait behind it
                if pending_summary is not None and ray.wait([pending_summary], timeout=0, fetch_local=True)[0]:
                    self._apply_summary(ray.get(pending_summary), min(len(running), self.spec.workers))
                    pending_summary = None
                if pending_summary is None and now - last_progress >= PROGRESS_EVERY_S:
                    pending_summary = self.coordinator.summary.remote(False)
                    last_progress = now
        except BaseException as exc:
            stop_reason = _stop_reason(exc)
            raise
        finally:
            self._fail_in_flight(running, stop_reason)
        self._check_sent(wait=True)
        summary = self._update_progress(0, fresh=True)
        self.nothing_ran = self._budget_already_used(summary) if exhausted and not self._dispatched else None
        if summary.get("storage_outages"):
            import warnings

            warnings.warn(f"autoopt: storage {self.storage_label} was unreachable during the study; the coordinator "
                          f"retried {summary['storage_outages']} time(s) and the study went on", stacklevel=2)
        self._finish()
        if self._pool_key is not None:  # a normal end: the next study of this driver reuses it
            COORDINATORS.give(self._pool_key, self.coordinator)
        self.progress.done = True
        if self.on_progress:
            self.on_progress(self.progress)
        return summary

    def _budget_already_used(self, summary: dict[str, Any]) -> str | None:
        """Run again with the budget it had, a finished study ends at once; say so, and how to add trials."""
        budget = self.spec.n_trials
        if budget is None or summary.get("counted", 0) < budget:
            return None
        c = summary["counts"]
        elsewhere = f", {c['running']} running elsewhere" if c.get("running") else ""
        return (f"study {self.spec.name} already has its budget of {budget} trials ({c.get('complete', 0)} complete, "
                f"{c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed{elsewhere}), so no trial ran. To add trials, "
                f"raise the budget: autoopt resume {self.spec.name} --trials {budget + max(budget // 2, 1)} "
                "(or n_trials in the spec)")

    def _fail_in_flight(self, running: dict[Any, int], reason: str) -> None:
        """The loop ended early: stop the trials in flight and record them as failed (re-run on resume)."""
        self._in_flight = sorted(running.values())
        self._futures.clear()
        self._lost.clear()
        for ref in running:
            ray.cancel(ref, force=True)
        self._unrecorded = []
        reachable = self.coordinator is not None
        why = "no coordinator"
        for number in self._in_flight:
            if reachable:  # after one call that failed, no more: each would wait as long
                try:
                    ray.get(self.coordinator.fail.remote(number, reason, True), timeout=STOP_CALL_TIMEOUT_S)
                    continue
                except Exception as exc:  # noqa: BLE001 - the coordinator went down with Ray: see _record_interrupt
                    reachable = False
                    why = _first_line(exc)
            self._unrecorded.append(number)
            _log.warning("autoopt: trial %d could not be recorded as stopped (%s); `autoopt resume %s` "
                         "will", number, why, self.spec.name)
        if self.coordinator is not None and reachable:
            try:  # and any trial of this session the loop lost track of (a collect cut short)
                ray.get(self.coordinator.fail_running.remote(reason), timeout=STOP_CALL_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001
                _log.warning("autoopt: running trials could not be recorded as stopped (%s)", _first_line(exc))

    def _record_interrupt(self) -> None:
        """After Ctrl-C: trials in flight are FAILED (interrupted) and queued to re-run, the MLflow
        trial and study runs end as KILLED; ``self.interrupt`` says what happened, for the message."""
        import optuna

        from autoopt.coordinator import StudyCoordinator

        if self._unrecorded and self._coordinator_args:
            # Ray died with the interrupt (a terminal's Ctrl-C reaches its processes too): record directly
            args, kwargs = self._coordinator_args
            local = StudyCoordinator(*args, **kwargs)
            for number in self._unrecorded:
                local.fail(number, INTERRUPTED, True)
        study = optuna.load_study(study_name=self.spec.name, storage=open_storage(self.storage_url))
        if self.tracker is not None:
            self._sync(finish_parent=False)
            self.tracker.end(study, "KILLED", "interrupted")
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        self.interrupt = {"study": self.spec.name, "interrupted_trials": self._in_flight, "counts": counts,
                          "mlflow_parent_run_id": self.parent_run_id}

    def _wait_for_foreign(self) -> bool:
        """Budget used up here; if other drivers' trials are still RUNNING, wait for them to finish
        or to be declared abandoned (then they are failed and re-enqueued). True: ask again."""
        if not ray.get(self.coordinator.foreign_running.remote()):
            return False
        ray.get(self.coordinator.heartbeat.remote())
        reaped = ray.get(self.coordinator.reap_stale.remote())
        if not reaped:
            time.sleep(min(self.spec.execution.heartbeat_s, 1.0))
        self._update_progress(0)
        return True

    def _dispatch(self, item: dict[str, Any], task_ref: Any, threads: int, behind: Any = None) -> Any:
        """Hand a trial to Ray: on a worker made ready for it (a first trial), else queued behind
        the running trial ``behind`` (see QUEUE_AHEAD), else on the next free worker."""
        logger = None
        if self.tracker is not None and self.tracker.parent_run_id is None:
            self._mlflow_gaps = True  # MLflow is away: this trial runs untracked until the study's end syncs it
        if self.tracker is not None:
            logger = self.tracker.trial_logger(item["number"], TrialConfig.from_dict(item["config"]).flat_params(), item["config"],
                                               warm_start=bool(item.get("warm_start")))
        seed = (self.spec.seed or 0) + item["number"]
        # a first trial waits for a worker made ready (imports, dataset) and takes it: started at
        # once, it went to another process while that one was still preparing, and prepared again
        prepared = self._prepared.pop(0) if self._prepared else behind
        self._dispatched += 1
        return _run_trial_remote.options(
            num_cpus=self.spec.cpus_per_trial, num_gpus=self.gpus_per_trial or None
        ).remote(task_ref, self.spec.task_options, item["config"], item["number"], seed, self.coordinator, logger,
                  threads, self.spec.eval_every_steps, self.objective_facts, self._decides, self._settle, prepared)

    def _decision_epochs(self) -> tuple[int, frozenset[int]] | None:
        """(resource, epochs at which the study's pruner can stop a trial): the worker waits for the
        coordinator's answer only at those; None (wait at every report) when the length is unknown."""
        from autoopt.sampling import decision_epochs, make_pruner

        max_epochs = self._coordinator_args[0][4].max_epochs if self._coordinator_args else self._max_reports()
        try:
            pruner = make_pruner(self.spec.search.pruner, max_epochs, **dict(self.spec.search.pruner_options))
        except Exception:  # noqa: BLE001 - the coordinator reports a bad pruner; here: wait at every epoch
            return None
        epochs = decision_epochs(pruner, max_epochs)
        return None if epochs is None else (int(max_epochs), epochs)

    def _finished_trials(self, running: dict[Any, int]) -> list[Any]:
        """The refs of trials that ended (with a result, an error or a lost worker), waiting up
        to half a second for one.

        fetch_local=False: a trial's result is read once, by :meth:`_outcome`; pulling it here
        could wait on a node that just died instead of letting the read raise the loss. On the
        Ray client each trial is waited for through its future (the client server's asynchronous
        get) instead: the server's ``WaitObject`` sometimes never returned once a node running
        trials was killed, even with a timeout (seen in ``tests/test_cluster.py``: the driver
        stuck in the gRPC call, the server thread in ``CoreWorkerMemoryStore::Wait``)."""
        if not self._settle:
            return ray.wait(list(running), num_returns=1, timeout=0.5, fetch_local=False)[0]
        futures = {}
        for ref in running:
            future = self._futures.get(ref)
            if future is None:
                future = self._futures[ref] = ref.future()
            futures[future] = ref
        done, _ = concurrent.futures.wait(futures, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
        finished = [futures[f] for f in done]
        now = time.time()
        if now - self._lost_checked >= LOST_CHECK_S:
            # and a backstop for when the client server never learns of the loss at all (its
            # futures then never complete either, seen in the same test): trials whose node
            # Ray's GCS lists as dead, as the coordinator (on the cluster, not behind the client)
            # finds them from the node each trial's worker announced
            self._lost_checked = now
            try:
                numbers = set(ray.get(self.coordinator.lost_trials.remote(), timeout=30))
            except ray.exceptions.RayError as exc:  # a timeout too
                # a backstop only: a coordinator that is gone surfaces at the next call that needs it
                _log.warning("autoopt: lost-trial check skipped (%s)", _first_line(exc))
                numbers = set()
            for ref, number in running.items():
                if number in numbers and ref not in finished:
                    self._lost[ref] = "worker lost: its node died (Ray lists it as dead)"
                    finished.append(ref)
        return finished

    def _outcome(self, ref: Any, number: int) -> dict[str, Any] | None:
        """A finished trial's outcome for the coordinator's tell; None when the trial's worker was
        lost or it raised, which is recorded here (failed, re-run if it may be)."""
        future = self._futures.pop(ref, None)
        lost = self._lost.pop(ref, None)
        if lost is not None:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - its worker is gone already
                pass
            self._requeued |= bool(ray.get(self.coordinator.fail.remote(number, lost, True)))
            return self._not_told()
        behind = self._queued_behind.get(ref)
        try:
            outcome = future.result() if future is not None else ray.get(ref)
        except (*_WORKER_LOST, ray.exceptions.RayTaskError) as exc:
            if behind is not None and _UPSTREAM_LOST in str(exc):
                # queued behind a trial that ended without a result (its worker lost), it never
                # started: run it again (the error is the other trial's, recorded with it)
                reason = f"not started: queued behind trial {behind[1]}, which ended without a result"
                self._requeued |= bool(ray.get(self.coordinator.fail.remote(number, reason, True, not_started=True)))
            elif isinstance(exc, _WORKER_LOST):
                reason = f"worker lost: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                self._requeued |= bool(ray.get(self.coordinator.fail.remote(number, reason[:500], True)))
            else:
                cause = getattr(exc, "cause", None) or exc  # any BaseException the trial raised, named
                ray.get(self.coordinator.fail.remote(number, f"error: {type(cause).__name__}: {cause}"[:500], False))
        except ray.exceptions.TaskCancelledError:
            self._requeued |= bool(ray.get(self.coordinator.fail.remote(number, "cancelled", True)))
        else:
            if outcome.get("tracking_failed"):
                self._mlflow_gaps = True
            if outcome.get("tracking_failed") and self.tracker is not None and not self._tracking_warned:
                import warnings

                from autoopt.tracking import TrackingUnavailableWarning

                self._tracking_warned = True
                warnings.warn(TrackingUnavailableWarning(
                    f"MLflow tracking at {redact(self.tracker.config.tracking_uri)} failed during trial {number} on host "
                    f"{outcome.get('host') or '?'}: the trial ran and is in the Optuna storage, its MLflow run may be "
                    "incomplete; workers retry and go on logging once the server answers again"), stacklevel=2)
            self.progress.finished_this_run += 1
            return outcome
        return self._not_told()

    def _not_told(self) -> None:
        """A trial recorded here as failed (not told): its worker did not end the trial's MLflow run,
        which the study's end syncs."""
        self._mlflow_gaps = True
        self.progress.finished_this_run += 1
        return None

    def _send(self, ref: Any) -> None:
        """A coordinator call not waited for (on the Ray client: waited for at once)."""
        self._sent.append(ref)
        if self._settle:
            self._check_sent(wait=True)

    def _check_sent(self, wait: bool = False) -> None:
        """Raise the error of a tell or prepare sent without waiting (a storage that stayed down),
        as a waited-for call would have; ``wait``: for all of them (the study's end)."""
        if not self._sent:
            return
        ready, self._sent = ray.wait(self._sent, num_returns=len(self._sent), timeout=None if wait else 0,
                                     fetch_local=False)
        ray.get(ready)

    def _log_progress(self) -> None:
        """Keep the MLflow study run's counts and best value live (one small write), on the
        tracking thread: reading the study would hold up the loop (and a freed worker)."""
        if self.tracker is None:
            return
        from autoopt.tracking import tracking_thread

        def log() -> None:
            import optuna

            try:
                if self._progress_study is None:
                    self._progress_study = optuna.load_study(study_name=self.spec.name, storage=open_storage(self.storage_url))
                self.tracker.log_progress(self._progress_study)
            except Exception:
                pass

        if self._progress_write is None or self._progress_write.done():
            self._progress_write = tracking_thread().submit(log)

    def _update_progress(self, running: int, fresh: bool = False) -> dict[str, Any]:
        return self._apply_summary(ray.get(self.coordinator.summary.remote(fresh)), running)

    def _apply_summary(self, summary: dict[str, Any], running: int) -> dict[str, Any]:
        p = self.progress
        p.counts = summary["counts"]
        p.running = running
        if summary["best"]:
            p.best_value = summary["best"]["value"]
            p.best_config = summary["best"]["config"]
        if self.on_progress:
            self.on_progress(p)
        return summary

    def _finish(self) -> None:
        """Log the study's summary and plots, then run the caller's after-study hook."""
        import optuna

        if self._progress_write is not None:  # a mid-study progress write lands before the results
            self._progress_write.result()
        # read once for MLflow's summary, the hook and the result (each would read every trial)
        study = R.StudySnapshot(optuna.load_study(study_name=self.spec.name, storage=open_storage(self.storage_url)))
        if self.tracker is not None:
            # trials an outage (or a lost worker) kept out of MLflow, then the study's results; when
            # every trial's run was written and confirmed, the runs are not read back
            others = any(t.user_attrs.get(R.SESSION) not in (None, self.session) for t in study.get_trials(deepcopy=False))
            if not (self._mlflow_gaps or others) and self.parent_run_id is not None:
                # the workers end their trials' runs in the background: any still open is repaired
                from autoopt.tracking import open_trial_runs

                mine = {t.number for t in study.get_trials(deepcopy=False)
                        if t.state.is_finished() and t.user_attrs.get(R.SESSION) == self.session}
                self._mlflow_gaps = open_trial_runs(self.tracker, mine) != set()
            self._sync(finish_parent=True, check_trials=self._mlflow_gaps or others, study=study)  # others: other drivers, earlier runs
            study.refresh_attrs()  # a new parent run's id, written through the coordinator
        if self.hooks.after_study is not None:
            try:
                self.hooks.after_study(study)
            except Exception as exc:  # the study is stored either way: say what did not happen
                import warnings

                warnings.warn(f"autoopt: the after-study step failed for {self.spec.name!r}: "
                              f"{type(exc).__name__}: {exc}", stacklevel=2)
        self.final_summary = R.summarize(study)

    @property
    def storage_label(self) -> str:
        return redact(self.storage_url)
