"""Back-fill MLflow from the Optuna storage: whatever tracking could not log while its server
was away (a study started with MLflow down, trials caught in an outage, runs a Ctrl-C left open).

The Optuna storage is the study's record: params, the per-epoch curve (``autoopt.history``),
state, reason and best trial. Runs are keyed by the tags ``autoopt.study`` + ``autoopt.role``
(+ ``autoopt.trial_number``), so syncing again creates nothing twice; a run whose status and
epoch count (``autoopt.epochs_logged``) already match and that holds its params is left alone.
Runs at the end of a study, on ``autoopt resume``, on Ctrl-C and by ``autoopt sync NAME``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoopt.core import record as R
from autoopt.core.record import EpochRecord, TrialOutcome
from autoopt.redaction import redact, restore

A = R.PREFIX  # MLflow tag prefix (autoopt.study, autoopt.role, autoopt.trial_number, ...)
_EPOCH_FIELDS = {f.name for f in dataclasses.fields(EpochRecord)}


def run_status(trial: FrozenTrial) -> str:
    """The MLflow status of a finished trial's run: an interrupted trial's run was KILLED."""
    if trial.state == TrialState.COMPLETE:
        return "FINISHED"
    if trial.state == TrialState.PRUNED:
        return "KILLED"
    return "KILLED" if str(trial.user_attrs.get(R.REASON) or "").startswith("interrupted") else "FAILED"


def outcome_of(trial: FrozenTrial, direction: str) -> TrialOutcome:
    """A finished trial as the worker reported it, read back from the storage."""
    attrs = trial.user_attrs
    history = [EpochRecord(**{k: v for k, v in h.items() if k in _EPOCH_FIELDS}) for h in attrs.get(R.HISTORY) or []]
    status = attrs.get(R.STATUS) or {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(trial.state, "failed")
    value = trial.value if trial.state == TrialState.COMPLETE else None
    if value is None and history:
        value = (max if direction == "maximize" else min)(h.val_metric for h in history)
    return TrialOutcome(status, value, history, attrs.get(R.REASON), attrs.get(R.STOPPED_AT_EPOCH),
                        int(attrs.get(R.OPTIMIZER_STATE_BYTES) or 0), attrs.get(R.DEVICE) or "cpu",
                        attrs.get(R.HOST) or "", float(attrs.get(R.SECONDS) or 0.0))


def _search(conn: Any, experiment_id: str, filter_string: str) -> list | None:
    runs: list = []
    token = None
    while True:
        ok, page = conn.call("search runs", "search_runs", [experiment_id], filter_string=filter_string,
                             max_results=1000, page_token=token, _force=True)
        if not ok:
            return None
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def sync_study(
    study: optuna.Study,
    tracking_uri: str | None = None,
    *,
    tracker: Any = None,
    finish_parent: bool | None = None,
    set_attrs: Callable[[dict[str, Any]], None] | None = None,
    check_trials: bool = True,
) -> dict[str, Any]:
    """Log to MLflow what the storage has and MLflow lacks. ``finish_parent``: end the study's
    parent run with its results (None: when nothing runs and the parent is not ended yet or
    something was back-filled). ``set_attrs`` records a new parent run in the study (default:
    directly in the storage). ``check_trials=False``: only the parent run (the caller knows every
    trial's run was written: reading back every run costs seconds per thousand trials).
    Returns what was done; ``reachable`` False if MLflow did not answer."""
    from autoopt import tracking

    attrs = study.user_attrs
    spec = attrs.get(R.SPEC) or {}
    if tracker is None:
        # the stored URI has its password hidden: the user's environment holds the full one
        stored = restore(attrs.get(R.TRACKING_URI), [os.environ.get(e) for e in tracking.TRACKING_URI_ENV])
        uri = tracking.resolve_tracking_uri(tracking_uri or stored or spec.get("tracking_uri"))
        tracker = tracking.StudyTracker(tracking.TrackingConfig(
            tracking_uri=uri, experiment_name=spec.get("experiment") or study.study_name))
    uri = tracker.config.tracking_uri
    tracking.retry_now(uri)
    report: dict[str, Any] = {"study_name": study.study_name, "tracking_uri": redact(uri), "reachable": False,
                              "parent_run_id": None, "created": 0, "completed": 0, "unchanged": 0}
    conn = tracker._conn
    name = study.study_name
    if tracker.experiment_id is None:
        experiment_id = tracker._ensure_experiment()
        if experiment_id is None:
            return report
        tracker._experiment_id = experiment_id
    tracker.study_name = name
    tracker.traits = dict(attrs.get(R.TRAITS) or {})
    tracker.metric_name = str(attrs.get(R.METRIC) or tracker.traits.get("metric") or tracker.metric_name)
    parent_created = False
    if tracker.parent_run_id is None:
        parents = _search(conn, tracker.experiment_id, f"tags.`autoopt.study` = '{name}' and tags.`autoopt.role` = 'study'")
        if parents is None:
            return report
        known = attrs.get(R.MLFLOW_PARENT_RUN_ID)
        parents.sort(key=lambda r: (r.info.run_id != known, r.info.start_time or 0))
        if parents:
            tracker._parent_run_id = parents[0].info.run_id
        elif tracker.start(name, spec, spec.get("sampler", "tpe"), spec.get("pruner", "hyperband"), tracker.traits) is None:
            return report
        else:
            parent_created = True
    report["parent_run_id"] = tracker.parent_run_id
    if attrs.get(R.MLFLOW_PARENT_RUN_ID) != tracker.parent_run_id or attrs.get(R.TRACKING_URI) != redact(uri):
        new = {R.MLFLOW_PARENT_RUN_ID: tracker.parent_run_id, R.MLFLOW_EXPERIMENT_ID: tracker.experiment_id,
               R.TRACKING_URI: redact(uri)}
        if set_attrs is not None:
            set_attrs(new)
        else:
            for k, v in new.items():
                study.set_user_attr(k, v)
    trials = study.get_trials(deepcopy=False)
    if check_trials:
        runs = _search(conn, tracker.experiment_id, f"tags.`autoopt.study` = '{name}' and tags.`autoopt.role` = 'trial'")
        if runs is None:
            return report
        by_number: dict[int, Any] = {}
        for run in sorted(runs, key=lambda r: r.info.start_time or 0):
            by_number.setdefault(int(run.data.tags.get(A + "trial_number", -1)), run)
        direction = study.direction.name.lower()
        for trial in trials:
            if not trial.state.is_finished():
                continue
            outcome = outcome_of(trial, direction)
            status = run_status(trial)
            run = by_number.get(trial.number)
            has_params = run is not None and "trial_number" in run.data.params
            if (has_params and run.info.status == status
                    and run.data.tags.get(A + "epochs_logged") == str(len(outcome.history))):
                report["unchanged"] += 1
                continue
            logger = tracker.trial_logger(trial.number, dict(trial.params), R.trial_config(trial),
                                          warm_start=bool(trial.user_attrs.get(R.WARM_START)))
            if run is None:
                if logger.start(outcome.host, outcome.device) is None:
                    return report
                report["created"] += 1
            else:
                logger.run_id = run.info.run_id
                logger._params_logged = has_params
                ok, points = conn.call("read curve", "get_metric_history", run.info.run_id, tracker.metric_name, _force=True)
                logger._logged_epochs = {int(p.step) for p in points} if ok else set()
                report["completed"] += 1
            logger.finish(outcome, status=status)
    idle = not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    if finish_parent is None:
        ok, parent = conn.call("read parent run", "get_run", tracker.parent_run_id, _force=True)
        finish_parent = idle and (parent_created or report["created"] + report["completed"] > 0
                                  or (ok and parent.info.status == "RUNNING"))
    if finish_parent:
        tracker.finish(study)
    report["reachable"] = True
    return report
