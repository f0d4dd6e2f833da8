"""The public Python API: run a study to completion, or submit it and get a handle.

    import autoopt
    result = autoopt.run(autoopt.StudySpec(name="digits", task="cv", n_trials=20))
    print(result.best_value, result.best_config)
    result = autoopt.run("studies/quickstart.yaml", n_trials=10)  # a spec file, as the CLI runs it

Submitting a name that exists in the storage continues that study (resume), if it is the same
objective: another task, metric or task_options is refused.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Union

import optuna

from autoopt.core import record as R
from autoopt.spec import StudySpec
from autoopt.redaction import redact
from autoopt.storage import default_storage_url, open_storage

if TYPE_CHECKING:  # reading a study back (status, best) needs neither Ray nor torch nor pandas
    import pandas as pd

    from autoopt.runner import Progress, StudyHooks


@dataclass
class StudyResult:
    """What a finished (or stopped) study gives back."""

    study_name: str
    storage_url: str
    counts: dict[str, int]
    best_value: float | None
    best_config: dict[str, Any] | None
    best_params: dict[str, Any] | None
    mlflow_parent_run_id: str | None
    tracking_uri: str | None
    metric: str
    direction: str
    epochs_run: int = 0
    epochs_budget: int = 0
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: why trials failed, by kind: {kind: {count, trials, example}} (``R.failure_kinds``)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the best trial's number, and whether it was one of the recommender's suggestions (warm start)
    best_trial: int | None = None
    best_from_warm_start: bool | None = None

    @property
    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage_url))

    def trials_dataframe(self) -> pd.DataFrame:
        return trials_dataframe(self.study)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "storage_url": redact(self.storage_url),
            "counts": self.counts,
            "best_value": self.best_value,
            "best_trial": self.best_trial,
            "best_from_warm_start": self.best_from_warm_start,
            "best_params": self.best_params,
            "best_config": self.best_config,
            "metric": self.metric,
            "direction": self.direction,
            "mlflow_parent_run_id": self.mlflow_parent_run_id,
            "tracking_uri": redact(self.tracking_uri),
            "epochs_run": self.epochs_run,
            "epochs_budget": self.epochs_budget,
            "elapsed_s": round(self.elapsed_s, 2),
            "failures": self.failures,
        }


def trials_dataframe(study: optuna.Study) -> pd.DataFrame:
    """Optuna's dataframe plus autoopt's status, reason, epochs and source (warm start) per trial."""
    import pandas as pd

    df = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
    # a study with its metric named (optuna-dashboard's label) calls the column value_<metric>
    df = df.rename(columns={f"value_{name}": "value" for name in study.metric_names or ()})
    extra = pd.DataFrame(
        [
            {
                "number": t.number,
                "optimizer": (t.user_attrs.get(R.CONFIG) or {}).get("optimizer"),
                "scheduler": (t.user_attrs.get(R.CONFIG) or {}).get("scheduler"),
                "epochs_run": t.user_attrs.get(R.EPOCHS_RUN),
                "reason": t.user_attrs.get(R.REASON),
                "host": t.user_attrs.get(R.HOST),
                "device": t.user_attrs.get(R.DEVICE),
                "warm_start": bool(t.user_attrs.get(R.WARM_START)),  # one of the recommender's suggestions
            }
            for t in study.get_trials(deepcopy=False)
        ]
    )
    if df.empty:
        return extra
    return df.merge(extra, on="number", how="left")


def summarize(study_name: str, storage_url: str | None = None, elapsed_s: float = 0.0,
              summary: R.StudySummary | None = None) -> StudyResult:
    """A StudyResult read back from storage (used by ``status``/``best`` and after a run);
    ``summary``: the study as a run just read it (not read again)."""
    url = storage_url or default_storage_url()
    if summary is None:
        summary = R.summarize(optuna.load_study(study_name=study_name, storage=open_storage(url, create=False)))
    best = summary.best
    return StudyResult(
        study_name=study_name,
        storage_url=url,
        counts=summary.counts,
        best_value=best.value if best else None,
        best_config=best.user_attrs.get(R.CONFIG) if best else None,
        best_params=dict(best.params) if best else None,
        mlflow_parent_run_id=summary.attrs.get(R.MLFLOW_PARENT_RUN_ID),
        tracking_uri=summary.attrs.get(R.TRACKING_URI),
        metric=summary.attrs.get(R.METRIC, "value"),
        direction=summary.direction,
        epochs_run=summary.epochs_run,
        epochs_budget=summary.epochs_budget,
        elapsed_s=elapsed_s,
        failures=summary.failures,
        best_trial=best.number if best else None,
        best_from_warm_start=summary.best_from_warm_start,
    )


def recommender_hooks() -> StudyHooks:
    """Warm starts come from the recommender, and finished studies feed its meta-dataset."""
    from autoopt.recommend import add_study_results, recommender
    from autoopt.runner import StudyHooks

    return StudyHooks(recommender.suggest_configs, recommender.top_optimizers, add_study_results)


class StudyHandle:
    """A study running in the background: poll ``status()``, read ``best_*``, or ``wait()``."""

    def __init__(self, spec: StudySpec, on_progress: Callable[[Progress], None] | None = None):
        self.spec = spec
        from autoopt.runner import StudyRunner

        self._runner = StudyRunner(spec, on_progress=on_progress, hooks=recommender_hooks())
        self._result: StudyResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"autoopt-{spec.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._runner.run()
            self._result = summarize(self.spec.name, self._runner.storage_url, self._runner.progress.elapsed,
                                     self._runner.final_summary)
        except BaseException as exc:  # surfaced by wait()
            self._error = exc

    @property
    def storage_url(self) -> str:
        return self._runner.storage_url

    def done(self) -> bool:
        return not self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        p = self._runner.progress
        return {
            "state": "done" if self.done() else "running",
            "counts": dict(p.counts),
            "running": p.running,
            "best_value": p.best_value,
            "elapsed_s": round(p.elapsed, 1),
        }

    @property
    def best_value(self) -> float | None:
        return self._runner.progress.best_value

    @property
    def best_config(self) -> dict[str, Any] | None:
        return self._runner.progress.best_config

    def trials_dataframe(self) -> pd.DataFrame:
        return trials_dataframe(optuna.load_study(study_name=self.spec.name, storage=open_storage(self.storage_url)))

    def stop(self) -> None:
        self._runner.stop()

    def wait(self, timeout: float | None = None) -> StudyResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"study {self.spec.name!r} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        _warn_if_nothing_ran(self._runner)
        return self._result


def _warn_if_nothing_ran(runner: Any) -> None:
    """A study run again with its budget used starts no trial: say so to the caller of run() or
    wait(), with how to add trials (the CLI prints the same as a note)."""
    if runner.nothing_ran:
        warnings.warn(runner.nothing_ran, stacklevel=3)


#: what run and submit take as a spec: the object, its dict, or the path of its YAML file (as the CLI)
SpecLike = Union[StudySpec, dict[str, Any], str, "os.PathLike[str]", None]


def _as_spec(spec: SpecLike, overrides: dict[str, Any]) -> StudySpec:
    if isinstance(spec, (str, os.PathLike)):
        spec = StudySpec.from_yaml(spec)
    if spec is None:
        return StudySpec.from_dict(overrides)  # a SpecError naming the field, as for a dict or a file
    if isinstance(spec, dict):
        return StudySpec.from_dict({**spec, **overrides})
    if not isinstance(spec, StudySpec):
        raise TypeError(f"spec: a StudySpec, a dict or the path of a YAML spec file, not {type(spec).__name__}")
    return spec.replace(**overrides) if overrides else spec


def submit(spec: SpecLike = None, *, objective: Callable[..., Any] | str | None = None,
           on_progress: Callable[[Progress], None] | None = None, **overrides: Any) -> StudyHandle:
    """Start a study in the background and return its handle (non-blocking); ``objective`` as in :func:`run`."""
    if objective is not None:
        overrides["objective"] = objective
    return StudyHandle(_as_spec(spec, overrides), on_progress=on_progress)


def run(spec: SpecLike = None, *, objective: Callable[..., Any] | str | None = None,
        on_progress: Callable[[Progress], None] | None = None, **overrides: Any) -> StudyResult:
    """Run a study to completion (blocking) and return its result.

    ``spec``: a :class:`StudySpec`, its dict, or the path of a YAML spec file (``overrides`` such
    as ``n_trials=10`` apply on top, as the CLI's flags do).
    ``objective``: the user's own training loop, ``def objective(trial: autoopt.Trial) -> float``
    (or its import path), instead of the spec's task.
    """
    if objective is not None:
        overrides["objective"] = objective
    s = _as_spec(spec, overrides)
    from autoopt.runner import StudyRunner

    runner = StudyRunner(s, on_progress=on_progress, hooks=recommender_hooks())
    runner.run()
    _warn_if_nothing_ran(runner)
    return summarize(s.name, runner.storage_url, runner.progress.elapsed, runner.final_summary)
