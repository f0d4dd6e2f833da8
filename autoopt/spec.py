"""A study spec: what is searched, how the trials run and where results go, validated so bad input names its field.

The split follows Ray Tune's ``Tuner(param_space, tune_config, run_config)``:
:class:`SearchSpec` (task, :class:`SpaceSpec`, sampler, pruner, budget), :class:`ExecutionSpec`
(workers, resources per trial, retries, Ray address) and :class:`PlacesSpec` (storage, tracking).
A YAML file may use the nested parts or the flat keys of earlier versions.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc")
PRUNERS = ("hyperband", "median", "percentile", "successive_halving", "asha", "learning_curve", "patient", "threshold",
           "none")

#: Constraints each hyperparameter must satisfy whatever the optimizer: name -> (low, high, high_open).
_HP_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, True),
    "weight_decay": (0.0, math.inf, True),
    "beta1": (0.0, 1.0, True),
    "beta2": (0.0, 1.0, True),
    "beta3": (0.0, 1.0, True),
    "momentum": (0.0, 1.0, True),
    "eps": (0.0, math.inf, True),
    "alpha": (0.0, 1.0, False),
}


#: Spec fields that are URLs and may carry credentials.
URL_FIELDS = ("storage", "tracking_uri", "ray_address")


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and what is allowed. ``detail``: what
    is wrong without the field's name, for a validator that names the field itself."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = message if detail is None else detail


class Range(BaseModel):
    """A numeric range to sample from; ``log`` defaults to the catalog's choice for the parameter."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        from autoopt.core.catalog import range_problem

        problem = range_problem(self.low, self.high, log=bool(self.log))
        if problem:
            raise ValueError(problem)
        return self


#: A parameter is fixed (a value), ranged ({low, high}) or a list of choices.
ParamSetting = Union[Range, list[Any], float, int, bool, str, None]


def _check_hp(where: str, name: str, setting: Any) -> None:
    bounds = _HP_BOUNDS.get(name)
    if bounds is None:
        return
    lo, hi, open_high = bounds
    values: list[float] = []
    if isinstance(setting, Range):
        values = [setting.low, setting.high]
    elif isinstance(setting, list):
        values = [v for v in setting if isinstance(v, (int, float)) and not isinstance(v, bool)]
    elif isinstance(setting, (int, float)) and not isinstance(setting, bool):
        values = [setting]
    for v in values:
        bad = v < lo or v > hi or (open_high and v >= hi) or (name in ("lr", "eps") and v <= 0)
        if bad:
            allowed = {
                "lr": "> 0",
                "eps": "> 0",
                "weight_decay": ">= 0",
            }.get(name, f"in [{lo:g}, {hi:g}{')' if open_high else ']'}")
            raise ValueError(f"{where}.{name}: {v!r} is out of range; {name} must be {allowed}")


class SpaceSpec(BaseModel):
    """Restrict or fix any part of the joint optimizer x hyperparameter x schedule space.

    ``params`` maps an optimizer name (or ``"*"`` for all optimizers) to per-hyperparameter
    settings, e.g. ``{"adamw": {"lr": {"low": 1e-4, "high": 1e-2}, "beta2": 0.999}}``.
    ``scheduler_params`` does the same for schedulers.
    """

    model_config = ConfigDict(extra="forbid")
    optimizers: list[str] | None = None
    families: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    params: dict[str, dict[str, ParamSetting]] = Field(default_factory=dict)
    schedulers: list[str] | None = None
    scheduler_params: dict[str, dict[str, ParamSetting]] = Field(default_factory=dict)
    warmup: ParamSetting = Field(default_factory=lambda: Range(low=0.0, high=0.1, log=False))
    grad_clip: ParamSetting = None
    batch_size: ParamSetting = None

    @field_validator("optimizers", "exclude")
    @classmethod
    def _known_optimizers(cls, names: list[str] | None, info: Any) -> list[str] | None:
        if names is None:
            return None
        from autoopt.core.catalog import CATALOG

        if not names:
            if info.field_name == "optimizers":  # [] once searched the whole catalog, as if left out
                raise ValueError("optimizers must name at least one optimizer (leave it out to search the catalog)")
            return names
        unknown = [n for n in names if n not in CATALOG]
        if unknown:
            raise ValueError(
                f"unknown optimizer {', '.join(map(repr, unknown))}; allowed: {', '.join(CATALOG)}"
            )
        return list(dict.fromkeys(names))

    @field_validator("families")
    @classmethod
    def _known_families(cls, fams: list[str] | None) -> list[str] | None:
        if fams is None:
            return None
        from autoopt.core.catalog import CATALOG

        known = sorted({s.family for s in CATALOG.values()})
        unknown = [f for f in fams if f not in known]
        if unknown:
            raise ValueError(f"unknown family {', '.join(map(repr, unknown))}; allowed: {', '.join(known)}")
        return fams

    @field_validator("schedulers")
    @classmethod
    def _known_schedulers(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        from autoopt.core.catalog import SCHEDULERS

        unknown = [n for n in names if n not in SCHEDULERS]
        if unknown:
            raise ValueError(
                f"unknown scheduler {', '.join(map(repr, unknown))}; allowed: {', '.join(SCHEDULERS)}"
            )
        if not names:
            raise ValueError("schedulers must name at least one scheduler")
        return list(dict.fromkeys(names))

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from autoopt.core.catalog import CATALOG

        for opt, settings in params.items():
            if opt != "*" and opt not in CATALOG:
                raise ValueError(f"params: unknown optimizer {opt!r}; allowed: '*', {', '.join(CATALOG)}")
            for hp, setting in settings.items():
                if opt != "*":
                    names = [h.name for h in CATALOG[opt].hyperparams]
                    if hp not in names:
                        raise ValueError(
                            f"params.{opt}: unknown hyperparameter {hp!r}; {opt} has: {', '.join(names)}"
                        )
                _check_hp(f"params.{opt}", hp, setting)
        return params

    @field_validator("scheduler_params")
    @classmethod
    def _known_scheduler_params(cls, params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from autoopt.core.catalog import SCHEDULERS

        for name, settings in params.items():
            if name not in SCHEDULERS:
                raise ValueError(f"scheduler_params: unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
            names = [h.name for h in SCHEDULERS[name].hyperparams]
            for hp in settings:
                if hp not in names:
                    raise ValueError(
                        f"scheduler_params.{name}: unknown parameter {hp!r}; {name} has: {', '.join(names) or 'none'}"
                    )
        return params

    @field_validator("warmup", "grad_clip", "batch_size")
    @classmethod
    def _plain_setting(cls, v: Any, info: Any) -> Any:
        ok, what = _PLAIN_SETTINGS[info.field_name]
        for x in [v.low, v.high] if isinstance(v, Range) else (v if isinstance(v, list) else [v]):
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not ok(x)):
                raise ValueError(f"{what}, got {x!r}")
        return v


#: warmup / grad_clip / batch_size: what each value of a setting must satisfy, and how to say it.
_PLAIN_SETTINGS: dict[str, tuple[Any, str]] = {
    "warmup": (lambda x: 0 <= x < 1, "warmup is a fraction of total steps in [0, 1)"),
    "grad_clip": (lambda x: x > 0, "grad_clip is a max gradient norm > 0 (or null for none)"),
    "batch_size": (lambda x: int(x) == x and x >= 1, "batch_size must be a positive integer"),
}


class WarmStartSpec(BaseModel):
    """Start from the recommender: enqueue its top suggestions and optionally narrow the optimizers."""

    model_config = ConfigDict(extra="forbid")
    #: None (the default): on for a study of a task, whose traits are measured, when the
    #: recommender is at hand (autoopt.run/submit, the CLI); off for a user's own objective,
    #: whose traits the recommender cannot see. True or False decide.
    enabled: bool | None = None
    n_trials: int = Field(default=3, ge=0)
    narrow_to: int | None = Field(default=None, ge=1, description="keep only the top-N recommended optimizers")


def _env_seconds(name: str, default: float) -> float:
    """A liveness timing from the driver's environment (tests shorten them); read where the spec is built."""
    value = os.environ.get(name)
    return float(value) if value else default


class SearchSpec(BaseModel):
    """What is searched and how the search decides: the task, the space, sampler, pruner and budget."""

    model_config = ConfigDict(extra="forbid")
    task: Any = Field(default=None, description="reference task name, import path 'pkg.mod:Name', or a Task object")
    task_options: dict[str, Any] = Field(default_factory=dict)
    #: The user's own training loop instead of a task: ``def objective(trial) -> float``.
    objective: Any = Field(default=None, description="import path 'pkg.mod:function', or a function taking an autoopt.Trial")
    #: An objective's value: its name and which way is better (a task says both itself).
    metric: str | None = None
    direction: str | None = None
    #: How many times an objective reports (its epochs): the pruner's resource. None: Hyperband sizes it itself.
    max_reports: int | None = Field(default=None, ge=1)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    n_trials: int | None = Field(default=20, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    # successive halving with ASHA's rung rule, reduction factor 4: chosen from the 20-epoch
    # measurement and the tabular race (docs/benchmarks.md, sections 1 and 3)
    pruner: str = "asha"
    pruner_options: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = 0
    eval_every_steps: int | None = Field(default=None, ge=1, description="validate every N steps instead of every epoch")
    warm_start: WarmStartSpec = Field(default_factory=WarmStartSpec)

    @field_validator("task")
    @classmethod
    def _task(cls, v: Any) -> Any:
        from autoopt.core.tasks import REFERENCE_TASKS

        if isinstance(v, str) and v not in REFERENCE_TASKS and ":" not in v:
            raise ValueError(
                f"unknown task {v!r}; use one of {', '.join(REFERENCE_TASKS)} or an import path 'pkg.module:Name'"
            )
        return v

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        if v is None or callable(v):
            return v
        if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", v):
            raise ValueError(f"objective {v!r} must be an import path 'package.module:function' or a function")
        return v

    @field_validator("direction")
    @classmethod
    def _direction(cls, v: str | None) -> str | None:
        if v is not None and v not in ("maximize", "minimize"):
            raise ValueError(f"direction {v!r} must be 'maximize' or 'minimize'")
        return v

    @model_validator(mode="after")
    def _task_or_objective(self) -> "SearchSpec":
        if self.task is not None and self.objective is not None:
            raise ValueError("set either task or objective, not both (a task is autoopt's training loop, "
                             "an objective is yours)")
        if self.task is not None and (self.metric is not None or self.direction is not None):
            raise ValueError("metric and direction come from the task; set them only with an objective")
        return self

    @model_validator(mode="after")
    def _learning_curve_options(self) -> "SearchSpec":
        if self.pruner == "learning_curve":
            LearningCurveOptions.model_validate(self.pruner_options)
        return self

    @field_validator("sampler_options", "pruner_options")
    @classmethod
    def _options_fit(cls, v: dict[str, Any], info: Any) -> dict[str, Any]:
        """A misspelt or wrong option fails when the spec is read, naming it; otherwise it fails
        only once Ray has started and the study's coordinator builds the pruner or sampler."""
        import copy
        import warnings

        from autoopt.sampling import check_sampler_options, make_pruner

        kind = "sampler" if info.field_name == "sampler_options" else "pruner"
        name = info.data.get(kind)
        if name is None:  # its own name was invalid: that error is reported already
            return v
        try:
            if kind == "sampler":
                check_sampler_options(name, v)
            elif name != "learning_curve":  # checked with its own model below
                with warnings.catch_warnings():  # e.g. PatientPruner's ExperimentalWarning: said when the study runs
                    warnings.simplefilter("ignore")
                    make_pruner(name, None, **copy.deepcopy(v))
        except SpecError as exc:
            raise ValueError(exc.detail) from None
        return v

    @field_validator("sampler", "pruner")
    @classmethod
    def _known_name(cls, v: str, info: Any) -> str:
        allowed = {"sampler": SAMPLERS, "pruner": PRUNERS}[info.field_name]
        if v not in allowed:
            raise ValueError(f"unknown {info.field_name} {v!r}; allowed: {', '.join(allowed)}")
        return v


class LearningCurveOptions(BaseModel):
    """``pruner_options`` of ``pruner: learning_curve`` (see :mod:`autoopt.pruners`)."""

    model_config = ConfigDict(extra="forbid")
    n_startup_trials: int = Field(default=3, ge=1)
    n_warmup_steps: int = Field(default=1, ge=0)
    max_resource: int | None = Field(default=None, ge=1)
    quantile: float = Field(default=1.0, ge=0.0, le=1.0)
    margin: float = Field(default=0.0, ge=0.0)
    #: also match the finished curves of similar tasks' studies in the recommender's meta-dataset
    #: (same domain, metric and direction; the nearest ``similar_studies`` by traits)
    similar_tasks: bool = False
    similar_studies: int = Field(default=3, ge=1)


class _RedactedRepr(BaseModel):
    """A model whose repr (in logs, tracebacks, a user's print) shows its URLs without credentials."""

    def __repr_args__(self):  # noqa: ANN204 - pydantic's own signature
        from autoopt.redaction import redact

        for key, value in super().__repr_args__():
            yield key, redact(value) if key in URL_FIELDS and isinstance(value, str) else value


class ExecutionSpec(_RedactedRepr):
    """How trials run: Ray workers, resources per trial, retries, and the driver's liveness timings."""

    model_config = ConfigDict(extra="forbid")
    workers: int = Field(default=2, ge=1)
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float | Literal["auto"] = Field(
        default=0.0, description="GPUs per trial (fractions pack trials); auto: a GPU share where the cluster has GPUs, else 0")
    retries: int = Field(default=1, ge=0, description="re-runs of a trial whose worker died")
    ray_address: str | None = None
    #: A driver writes a heartbeat this often; its RUNNING trials count as abandoned once it has
    #: been silent for ``stale_after_s``. The coordinator keeps retrying an unreachable storage
    #: (a restarting PostgreSQL) for ``storage_retry_s`` before the study stops with a clear error.
    #: Not stored with the study: they belong to this run, and travel to the coordinator in this object.
    heartbeat_s: float = Field(default_factory=lambda: _env_seconds("AUTOOPT_HEARTBEAT_S", 5.0), gt=0)
    stale_after_s: float = Field(default_factory=lambda: _env_seconds("AUTOOPT_STALE_AFTER_S", 30.0), gt=0)
    storage_retry_s: float = Field(default_factory=lambda: _env_seconds("AUTOOPT_STORAGE_RETRY_S", 120.0), ge=0)


    @field_validator("gpus_per_trial", mode="before")
    @classmethod
    def _gpus(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            gpus = float(v)
        except (TypeError, ValueError):
            gpus = math.nan
        if isinstance(v, bool) or not (math.isfinite(gpus) and gpus >= 0):
            raise ValueError(f"must be a number >= 0 or 'auto', got {v!r}")
        return gpus


#: ExecutionSpec fields that are this run's settings, not part of the stored study spec.
RUN_SETTINGS = ("heartbeat_s", "stale_after_s", "storage_retry_s")


class PlacesSpec(_RedactedRepr):
    """Where results go: the Optuna storage and the MLflow tracking store."""

    model_config = ConfigDict(extra="forbid")
    storage: str | None = None
    tracking: bool = Field(default=True, description="log to MLflow")
    tracking_uri: str | None = None
    experiment: str | None = None


#: The groups of a StudySpec and the (flat) keys each holds, as in Ray Tune's
#: Tuner(param_space, tune_config, run_config): what is searched, how it runs, where results go.
GROUPS: dict[str, type[BaseModel]] = {"search": SearchSpec, "execution": ExecutionSpec, "places": PlacesSpec}
_GROUP_OF: dict[str, str] = {key: group for group, model in GROUPS.items() for key in model.model_fields}


class StudySpec(BaseModel):
    """Everything a study needs, in three parts (search / execution / places).

    Loaded from YAML (``StudySpec.from_yaml``) or built in Python. The flat keys of earlier specs
    (``n_trials: 20``, ``workers: 2``, ``storage: ...``) are accepted anywhere and filed into
    their part, and ``spec.n_trials`` reads ``spec.search.n_trials``.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    search: SearchSpec
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    places: PlacesSpec = Field(default_factory=PlacesSpec)

    @model_validator(mode="before")
    @classmethod
    def _file_flat_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        groups: dict[str, Any] = {}
        for group in GROUPS:
            value = data.pop(group, None)
            groups[group] = dict(value) if isinstance(value, dict) else ({} if value is None else value)
        for key in [k for k in data if k in _GROUP_OF]:
            if isinstance(groups[_GROUP_OF[key]], dict):
                groups[_GROUP_OF[key]][key] = data.pop(key)
        return {**data, **groups}

    def __getattr__(self, name: str) -> Any:
        """Flat names read through to their part: ``spec.workers`` is ``spec.execution.workers``."""
        group = _GROUP_OF.get(name)
        if group is not None and group in self.__dict__:
            return getattr(self.__dict__[group], name)
        return super().__getattr__(name)  # type: ignore[misc]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", v):
            raise ValueError("name must be 1-128 characters of letters, digits, '_', '.', '-'")
        return v

    @model_validator(mode="after")
    def _budget(self) -> "StudySpec":
        if self.search.n_trials is None and self.search.timeout_s is None:
            raise ValueError("set a budget: n_trials and/or timeout_s")
        return self

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "StudySpec":
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a study spec is a YAML mapping, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> "StudySpec":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, source)) from None

    def flat(self) -> dict[str, Any]:
        """Every setting under its flat key, as plain Python data (the task as given)."""
        d: dict[str, Any] = {"name": self.name}
        for group in GROUPS:
            d.update(getattr(self, group).model_dump(mode="python"))
        d["description"] = self.description
        d["task"] = self.search.task  # the objects themselves, not dumps of them
        d["objective"] = self.search.objective
        return d

    def replace(self, **flat_changes: Any) -> "StudySpec":
        """A validated copy with some settings changed (flat keys)."""
        return StudySpec.from_dict({**self.flat(), **flat_changes})

    def to_dict(self) -> dict[str, Any]:
        """The stored study spec: JSON-safe flat keys (a Task object by its class path), without
        this run's liveness timings, and its URLs without their credentials (the full ones stay
        in this process only)."""
        from autoopt.redaction import redact

        d: dict[str, Any] = {"name": self.name}
        for group in GROUPS:
            d.update(getattr(self, group).model_dump(mode="json", exclude={"task", "objective", *RUN_SETTINGS}))
        d["description"] = self.description
        d["task"] = task_label(self.task)
        for key in URL_FIELDS:
            d[key] = redact(d.get(key))
        if self.search.objective is None:  # task studies store what they always stored
            for key in ("objective", "metric", "direction", "max_reports"):
                d.pop(key, None)
        else:
            d["objective"] = objective_label(self.search.objective)
        return d


def objective_label(objective: Any) -> str | None:
    """How a spec stores an objective: its import path (a function by its module and name)."""
    if objective is None or isinstance(objective, str):
        return objective
    module = getattr(objective, "__module__", None) or type(objective).__module__
    name = getattr(objective, "__qualname__", None) or type(objective).__qualname__
    return f"{module}:{name}"


def task_label(task: Any) -> str | None:
    if task is None or isinstance(task, str):
        return task
    cls = task if isinstance(task, type) else type(task)
    name = getattr(task, "name", None)
    return f"{cls.__module__}:{cls.__qualname__}" + (f" ({name})" if isinstance(name, str) else "")


def format_validation_error(exc: ValidationError, source: str = "spec") -> str:
    """One line per problem: ``source: field.path: message``."""
    lines = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
        if parts and parts[0] in GROUPS and len(parts) > 1:  # flat keys are unique: name them as written
            parts = parts[1:]
        loc = ".".join(parts)
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc or '(top level)'}: {msg}")
    return "\n".join(dict.fromkeys(lines))
