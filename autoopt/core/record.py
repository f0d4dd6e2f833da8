"""The study/trial record: what a trial produces, the ``autoopt.*`` keys it is stored under, how it is read back, and the one summary.

Optuna storage is autoopt's database. What autoopt adds to it lives in user attributes under
the keys below; the coordinator writes them (:func:`outcome_attrs`), and status, best, the
report, tracking and the recommender's meta-dataset read them back through this module, so a
renamed key changes in one place. Imports neither torch nor Ray.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping

if TYPE_CHECKING:  # optuna is only needed by callers that already hold a study
    import optuna
    from optuna.trial import FrozenTrial

PREFIX = "autoopt."

# --- study user attributes ------------------------------------------------------------------
SPEC = PREFIX + "spec"  #: the StudySpec as a dict
SPACE = PREFIX + "space"
TASK = PREFIX + "task"  #: the task reference from the spec
TRAITS = PREFIX + "traits"  #: TaskTraits.to_dict() of the task, measured
METRIC = PREFIX + "metric"  #: the task's validation metric name
DIRECTION = PREFIX + "direction"
MAX_EPOCHS = PREFIX + "max_epochs"  #: the pruner's resource per trial (also on each trial)
#: Study attr: how many finished curves of similar studies the learning-curve pruner matches
#: (``pruner_options: {similar_tasks: true}``).
PRUNER_PRIOR_CURVES = PREFIX + "pruner_prior_curves"
MLFLOW_PARENT_RUN_ID = PREFIX + "mlflow_parent_run_id"
MLFLOW_EXPERIMENT_ID = PREFIX + "mlflow_experiment_id"
TRACKING_URI = PREFIX + "tracking_uri"
META_DEFAULT = PREFIX + "meta.default"  #: on a meta-dataset trial run at catalog defaults
#: Study *system* attribute prefix: one heartbeat timestamp per driver session.
HEARTBEAT_PREFIX = PREFIX + "heartbeat:"

# --- trial user attributes ------------------------------------------------------------------
CONFIG = PREFIX + "config"  #: the TrialConfig dict the trial trained with
SESSION = PREFIX + "session"  #: the driver session that asked for it
STATUS = PREFIX + "status"  #: complete / pruned / failed, as the worker reported it
REASON = PREFIX + "reason"  #: why it was pruned or failed
HISTORY = PREFIX + "history"  #: per-epoch records (epoch, train_loss, val_metric, lr, seconds)
EPOCHS_RUN = PREFIX + "epochs_run"
STOPPED_AT_EPOCH = PREFIX + "stopped_at_epoch"
DEVICE = PREFIX + "device"
HOST = PREFIX + "host"
NODE_ID = PREFIX + "node_id"
OPTIMIZER_STATE_BYTES = PREFIX + "optimizer_state_bytes"
SECONDS = PREFIX + "seconds"
MLFLOW_RUN_ID = PREFIX + "mlflow_run_id"
#: a completed trial's optimizer as one plain ``torch.optim`` line ("" when there is none), built by its worker
TORCH_LINE = PREFIX + "torch_line"
ATTEMPT = PREFIX + "attempt"  #: 0 for a first run, n for the n-th retry
RETRIED = PREFIX + "retried"  #: a failed trial whose params were enqueued again
RETRY_OF = PREFIX + "retry_of"  #: on the re-run: the number of the failed trial
WARM_START = PREFIX + "warm_start"  #: enqueued from the recommender's suggestions

STATUSES = ("complete", "pruned", "failed", "running")
#: Optuna trial state name -> the count it adds to (``StudySummary.counts``).
STATE_COUNTS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


# --- what a trial produces (plain data, so it crosses Ray and MLflow) -------------------------
TrialStatus = Literal["complete", "pruned", "failed"]


@dataclass
class EpochRecord:
    """One point of a learning curve: an evaluation after an epoch (or every N steps)."""

    epoch: int
    train_loss: float | None  # None: an objective reported no training loss
    val_metric: float
    lr: float
    seconds: float
    step: int = 0  # with eval_every_steps: optimizer steps taken at this evaluation (else 0)

    @property
    def key(self) -> int:
        """The curve's x value: the optimizer step with eval_every_steps, else the epoch."""
        return int(self.step or self.epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialOutcome:
    """How a trial ended. ``value`` is the best validation metric seen (None when failed early)."""

    status: TrialStatus
    value: float | None
    history: list[EpochRecord] = field(default_factory=list)
    reason: str | None = None
    stopped_at_epoch: int | None = None
    optimizer_state_bytes: int = 0
    device: str = "cpu"
    host: str = ""
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epochs_run"] = self.epochs_run
        return d


# --- writing --------------------------------------------------------------------------------
def outcome_attrs(outcome: Mapping[str, Any]) -> tuple[str, float | None, dict[str, Any]]:
    """``(optuna state name, value, user attributes)`` that record a worker's outcome.

    A "complete" outcome without a value is stored as failed, with the reason saying so.
    """
    history = list(outcome.get("history") or [])
    status = outcome["status"]
    state = {"complete": "COMPLETE", "pruned": "PRUNED"}.get(status, "FAIL")
    value = outcome.get("value")
    reason = outcome.get("reason")
    if state == "COMPLETE" and value is None:
        state, status, reason = "FAIL", "failed", "finished without a validation value"
    attrs = {
        STATUS: status,
        REASON: reason,
        HISTORY: history,
        EPOCHS_RUN: len(history),
        STOPPED_AT_EPOCH: outcome.get("stopped_at_epoch"),
        DEVICE: outcome.get("device"),
        HOST: outcome.get("host"),
        NODE_ID: outcome.get("node_id"),
        OPTIMIZER_STATE_BYTES: outcome.get("optimizer_state_bytes", 0),
        SECONDS: outcome.get("seconds"),
        MLFLOW_RUN_ID: outcome.get("mlflow_run_id"),
    }
    if state == "COMPLETE" and outcome.get("torch_line") is not None:
        attrs[TORCH_LINE] = outcome["torch_line"]
    return state, (value if state == "COMPLETE" else None), attrs


def failure_attrs(reason: str, retried: bool | None = None) -> dict[str, Any]:
    """The attributes of a trial failed outside a worker (lost worker, sampling error)."""
    attrs: dict[str, Any] = {STATUS: "failed", REASON: reason}
    if retried is not None:
        attrs[RETRIED] = retried
    return attrs


# --- reading one trial ----------------------------------------------------------------------
def trial_status(trial: FrozenTrial) -> str:
    """complete / pruned / failed / running, from the trial's Optuna state (waiting counts as running)."""
    return STATE_COUNTS.get(trial.state.name, "running").replace("waiting", "running")


def trial_history(trial: FrozenTrial) -> list[dict[str, Any]]:
    """Per-epoch records; falls back to Optuna's intermediate values (val metric only)."""
    history = trial.user_attrs.get(HISTORY)
    if isinstance(history, list) and history:
        return [dict(h) for h in history if isinstance(h, dict) and "epoch" in h]
    return [{"epoch": int(step), "val_metric": float(value)} for step, value in sorted(trial.intermediate_values.items())]


def epochs_run(trial: FrozenTrial) -> int:
    run = trial.user_attrs.get(EPOCHS_RUN)
    return int(run) if run is not None else len(trial_history(trial))


def config_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a TrialConfig dict from namespaced Optuna params (``adamw.lr`` -> optimizer_params)."""
    optimizer = params.get("optimizer")
    scheduler = params.get("scheduler")

    def group(prefix: Any) -> dict[str, Any]:
        if not prefix:
            return {}
        head = f"{prefix}."
        return {k[len(head):]: v for k, v in params.items() if k.startswith(head)}

    return {
        "optimizer": optimizer,
        "optimizer_params": group(optimizer),
        "scheduler": scheduler or "constant",
        "scheduler_params": group(scheduler),
        "warmup_fraction": float(params.get("warmup_fraction", 0.0) or 0.0),
        "grad_clip": params.get("grad_clip"),
        "batch_size": params.get("batch_size"),
    }


def trial_config(trial: FrozenTrial) -> dict[str, Any]:
    """The TrialConfig a trial trained with (rebuilt from its params for trials without one)."""
    config = trial.user_attrs.get(CONFIG)
    if isinstance(config, dict) and config.get("optimizer"):
        return dict(config)
    return config_from_params(trial.params)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- reading a study ------------------------------------------------------------------------
def metric_name(attrs: Mapping[str, Any]) -> str | None:
    """The task's validation metric name from a study's user attributes (None if not stored)."""
    name = attrs.get(METRIC) or (attrs.get(TRAITS) or {}).get("metric")
    return str(name) if name else None


def best_trial(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    """The best complete trial with a finite value (None when there is none)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    complete = [t for t in trials if t.state.name == "COMPLETE" and finite(t.value)]
    if not complete:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(complete, key=lambda t: t.value)


@dataclass
class StudySummary:
    """Counts by state, the best trial and the compute pruning saved: what status, best, the
    report and tracking all say about a study."""

    study_name: str
    direction: str
    metric: str | None
    counts: dict[str, int]
    best: FrozenTrial | None
    #: Epochs the finished trials ran, and what they would have run without pruning.
    epochs_run: int
    epochs_budget: int
    compute_seconds: float
    attrs: dict[str, Any] = field(default_factory=dict)
    #: Why trials failed, by kind (:func:`failure_kinds`), so a study whose trials all fail says why.
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        return sum(self.counts.values())

    @property
    def best_config(self) -> dict[str, Any] | None:
        return trial_config(self.best) if self.best else None

    @property
    def best_from_warm_start(self) -> bool | None:
        """Whether the best trial was one of the recommender's suggestions (None: no best yet)."""
        return bool(self.best.user_attrs.get(WARM_START)) if self.best else None

    def as_dict(self) -> dict[str, Any]:
        """The report's ``summary.json`` (also logged to the MLflow parent run)."""
        saved = self.epochs_budget - self.epochs_run
        best = self.best
        return {
            "study_name": self.study_name,
            "metric": self.metric or "val_metric",
            "direction": self.direction,
            "n_trials": self.n_trials,
            "n_complete": self.counts["complete"],
            "n_pruned": self.counts["pruned"],
            "n_failed": self.counts["failed"],
            "n_running": self.counts["running"] + self.counts["waiting"],
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "best_from_warm_start": self.best_from_warm_start,
            "best_params": dict(best.params) if best else None,
            "best_config": self.best_config,
            "epochs_run": self.epochs_run,
            "epochs_budget": self.epochs_budget,
            "epochs_saved": saved,
            "pruning_saved_fraction": (saved / self.epochs_budget) if self.epochs_budget else 0.0,
            "compute_seconds": self.compute_seconds,
            "est_seconds_saved": (self.compute_seconds / self.epochs_run * saved) if self.epochs_run else 0.0,
            "failures": self.failures,
        }


class StudySnapshot:
    """A study's trials and attributes read once, standing in for the ``optuna.Study``: the end
    of a study hands the study to MLflow's summary, the meta-dataset and the result, and each
    read of every trial costs about a millisecond per trial. Writes and everything else go to
    the study itself."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._trials = study.get_trials(deepcopy=False)
        self._attrs = dict(study.user_attrs)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    @property
    def user_attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    def set_user_attr(self, key: str, value: Any) -> None:
        self._study.set_user_attr(key, value)
        self._attrs[key] = value

    def refresh_attrs(self) -> None:
        """Read the attributes again (something wrote them through another handle)."""
        self._attrs = dict(self._study.user_attrs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def failure_kinds(trials: list[FrozenTrial]) -> dict[str, dict[str, Any]]:
    """Failed trials grouped by the kind of their reason (its words before the first colon:
    'diverged', 'error during training', 'worker lost', 'interrupted', ...), most frequent first:
    kind -> {count, trials (numbers), example (the first one's whole reason)}."""
    from autoopt.redaction import redact_text  # a reason may quote a URL (a storage that went away)

    kinds: dict[str, dict[str, Any]] = {}
    for t in trials:
        if t.state.name != "FAIL":
            continue
        reason = str(t.user_attrs.get(REASON) or "no reason recorded").strip()
        kind = reason.split(":", 1)[0].strip() or reason
        entry = kinds.setdefault(kind, {"count": 0, "trials": [], "example": redact_text(reason)[:300]})
        entry["count"] += 1
        entry["trials"].append(t.number)
    return dict(sorted(kinds.items(), key=lambda kv: (-kv[1]["count"], kv[1]["trials"][0])))


def summarize(study: optuna.Study) -> StudySummary:
    """The one summary of a stored study.

    ``epochs_budget`` is what the finished trials would have run without pruning: each one's
    ``autoopt.max_epochs`` (the study's, or the spec's epochs, for trials without one).
    """
    trials = study.get_trials(deepcopy=False)
    attrs = dict(study.user_attrs)
    counts = {name: 0 for name in STATE_COUNTS.values()}
    default_max = attrs.get(MAX_EPOCHS) or (attrs.get(SPEC) or {}).get("epochs")
    run_total = budget = 0
    seconds = 0.0
    for t in trials:
        counts[STATE_COUNTS[t.state.name]] += 1
        if not t.state.is_finished():
            continue
        run = epochs_run(t)
        run_total += run
        budget += max(int(t.user_attrs.get(MAX_EPOCHS) or default_max or run), run)
        secs = t.user_attrs.get(SECONDS)
        if finite(secs):
            seconds += float(secs)
        elif t.datetime_start and t.datetime_complete:
            seconds += (t.datetime_complete - t.datetime_start).total_seconds()
    return StudySummary(
        study_name=study.study_name,
        direction=study.direction.name.lower(),
        metric=metric_name(attrs),
        counts=counts,
        best=best_trial(study, trials),
        epochs_run=run_total,
        epochs_budget=budget,
        compute_seconds=seconds,
        attrs=attrs,
        failures=failure_kinds(trials),
    )
