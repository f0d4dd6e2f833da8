"""A study spec: what to tune (task + search space) and how to run it (budget, sampler, pruner,
workers, storage, tracking). Validated by pydantic so a bad YAML file fails with the field's name.

The split follows Ray Tune: :class:`SpaceSpec` says *what* is searched, the rest of
:class:`StudySpec` says *how* the search runs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc")
PRUNERS = ("hyperband", "median", "percentile", "successive_halving", "patient", "threshold", "none")

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


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and what is allowed."""


class Range(BaseModel):
    """A numeric range to sample from; ``log`` defaults to the catalog's choice for the parameter."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
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
    def _known_optimizers(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        from autoopt.catalog import CATALOG

        if not names and names is not None:
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
        from autoopt.catalog import CATALOG

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
        from autoopt.schedulers import SCHEDULERS

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
        from autoopt.catalog import CATALOG

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
        from autoopt.schedulers import SCHEDULERS

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

    @field_validator("warmup")
    @classmethod
    def _warmup_fraction(cls, v: Any) -> Any:
        vals = [v.low, v.high] if isinstance(v, Range) else (v if isinstance(v, list) else [v])
        for x in vals:
            if x is None:
                continue
            if not isinstance(x, (int, float)) or not 0 <= x < 1:
                raise ValueError(f"warmup is a fraction of total steps in [0, 1), got {x!r}")
        return v

    @field_validator("grad_clip")
    @classmethod
    def _grad_clip(cls, v: Any) -> Any:
        vals = [v.low, v.high] if isinstance(v, Range) else (v if isinstance(v, list) else [v])
        for x in vals:
            if x is not None and (not isinstance(x, (int, float)) or x <= 0):
                raise ValueError(f"grad_clip is a max gradient norm > 0 (or null for none), got {x!r}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        vals = [v.low, v.high] if isinstance(v, Range) else (v if isinstance(v, list) else [v])
        for x in vals:
            if x is not None and (not isinstance(x, (int, float)) or int(x) != x or x < 1):
                raise ValueError(f"batch_size must be a positive integer, got {x!r}")
        return v


class WarmStartSpec(BaseModel):
    """Start from the recommender: enqueue its top suggestions and optionally narrow the optimizers."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    n_trials: int = Field(default=3, ge=0)
    narrow_to: int | None = Field(default=None, ge=1, description="keep only the top-N recommended optimizers")


class StudySpec(BaseModel):
    """Everything a study needs. Loaded from YAML (``StudySpec.from_yaml``) or built in Python."""

    model_config = ConfigDict(extra="forbid")
    name: str
    task: Any = Field(description="reference task name, import path 'pkg.mod:Name', or a Task object")
    task_options: dict[str, Any] = Field(default_factory=dict)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    n_trials: int | None = Field(default=20, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    workers: int = Field(default=2, ge=1)
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float | Literal["auto"] = Field(
        default=0.0, description="GPUs per trial (fractions pack trials); auto: a GPU share where the cluster has GPUs, else 0")
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    pruner: str = "hyperband"
    pruner_options: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = 0
    eval_every_steps: int | None = Field(default=None, ge=1, description="validate every N steps instead of every epoch")
    retries: int = Field(default=1, ge=0, description="re-runs of a trial whose worker died")
    storage: str | None = None
    tracking: bool = Field(default=True, description="log to MLflow")
    tracking_uri: str | None = None
    experiment: str | None = None
    ray_address: str | None = None
    warm_start: WarmStartSpec = Field(default_factory=WarmStartSpec)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", v):
            raise ValueError("name must be 1-128 characters of letters, digits, '_', '.', '-'")
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: Any) -> Any:
        from autoopt.task import REFERENCE_TASKS

        if isinstance(v, str) and v not in REFERENCE_TASKS and ":" not in v:
            raise ValueError(
                f"unknown task {v!r}; use one of {', '.join(REFERENCE_TASKS)} or an import path 'pkg.module:Name'"
            )
        return v

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

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; allowed: {', '.join(SAMPLERS)}")
        return v

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, v: str) -> str:
        if v not in PRUNERS:
            raise ValueError(f"unknown pruner {v!r}; allowed: {', '.join(PRUNERS)}")
        return v

    @model_validator(mode="after")
    def _budget(self) -> "StudySpec":
        if self.n_trials is None and self.timeout_s is None:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; a Task object is recorded by its class path."""
        d = self.model_dump(mode="json", exclude={"task"})
        d["task"] = task_label(self.task)
        return d


def task_label(task: Any) -> str:
    if isinstance(task, str):
        return task
    cls = task if isinstance(task, type) else type(task)
    name = getattr(task, "name", None)
    return f"{cls.__module__}:{cls.__qualname__}" + (f" ({name})" if isinstance(name, str) else "")


def format_validation_error(exc: ValidationError, source: str = "spec") -> str:
    """One line per problem: ``source: field.path: message``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc or '(top level)'}: {msg}")
    return "\n".join(dict.fromkeys(lines))
