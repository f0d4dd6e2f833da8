"""The joint, conditional search space: optimizer -> its own hyperparameters, schedule -> its own.

Sampling is Optuna define-by-run: :meth:`SearchSpace.sample` asks the trial for the optimizer
first, then only that optimizer's hyperparameters (named ``"<optimizer>.<hp>"`` so each optimizer
keeps its own lr scale), then the scheduler and its parameters, warmup, clipping and batch size.

Categorical choices (optimizer, scheduler, ...) are stored against a fixed *universe* of choices
saved with the study, and :class:`~autoopt.sampling.ChoiceRestrictingSampler` samples only the
currently allowed ones. Plain Optuna rejects a study whose choice list changed (optuna#2328);
with this encoding a resumed study may add or drop optimizers and keep learning from old trials.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from autoopt.core.catalog import CATALOG, SCHEDULERS, HyperParam, range_problem
from autoopt.spec import Range, SpaceSpec, SpecError
from autoopt.core.traits import TaskTraits

#: Batch sizes any study may pick from; a user's list must be a subset (stable across resumes).
BATCH_SIZE_UNIVERSE: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
#: Probability-free "explicit zero" for weight decay: sampled as a boolean switch, then the value.
_ON = "on"


@dataclass
class TrialConfig:
    """One point of the space: everything needed to build optimizer + schedule for a run."""

    optimizer: str
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "constant"
    scheduler_params: dict[str, Any] = field(default_factory=dict)
    warmup_fraction: float = 0.0
    grad_clip: float | None = None
    batch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        return cls(**d)

    def flat_params(self) -> dict[str, Any]:
        """Flat, human-readable params (for MLflow and tables)."""
        out: dict[str, Any] = {"optimizer": self.optimizer, "scheduler": self.scheduler}
        out.update({f"{self.optimizer}.{k}": v for k, v in self.optimizer_params.items()})
        out.update({f"{self.scheduler}.{k}": v for k, v in self.scheduler_params.items()})
        out.update(warmup_fraction=self.warmup_fraction, grad_clip=self.grad_clip, batch_size=self.batch_size)
        return out


@dataclass
class _Param:
    """How one parameter is drawn: fixed, a float/int range, or a restricted categorical."""

    name: str
    fixed: Any = None
    is_fixed: bool = False
    low: float | None = None
    high: float | None = None
    log: bool = False
    kind: str = "float"
    choices: tuple | None = None
    universe: tuple | None = None
    allow_zero: bool = False
    one_minus_log: bool = False
    active_if: tuple[str, tuple] | None = None

    @property
    def stored_name(self) -> str:
        """Optuna's name for the parameter; ``1 - x`` samples get their own name to stay honest."""
        if self.one_minus_log:
            head, _, hp = self.name.rpartition(".")
            return f"{head}.one_minus_{hp}" if head else f"one_minus_{hp}"
        return self.name

    def sample(self, trial: optuna.Trial, restrict: dict[str, tuple], choices: tuple | None = None) -> Any:
        if self.is_fixed:
            return self.fixed
        if self.kind == "categorical":
            assert self.choices is not None and self.universe is not None
            restrict[self.name] = choices or self.choices
            return trial.suggest_categorical(self.name, self.universe)
        if self.allow_zero:
            if trial.suggest_categorical(f"{self.name}.{_ON}", (False, True)) is False:
                return 0.0
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.one_minus_log:
            lo, hi = 1.0 - float(self.high), 1.0 - float(self.low)
            return 1.0 - trial.suggest_float(self.stored_name, lo, hi, log=True)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def default_params(self, value: Any) -> dict[str, Any]:
        """Optuna params that make :meth:`sample` return ``value`` (for enqueueing)."""
        if self.is_fixed:
            return {}
        prefix: dict[str, Any] = {}
        if self.kind != "categorical" and self.allow_zero:
            if not value:
                return {f"{self.name}.{_ON}": False}
            prefix = {f"{self.name}.{_ON}": True}
        if self.kind != "categorical":
            value = _clip(value, self.low, self.high)
        if self.one_minus_log:
            return {**prefix, self.stored_name: 1.0 - value}
        return {**prefix, self.name: value}


def _sample_group(params: list[_Param], trial: optuna.Trial, restrict: dict[str, tuple]) -> dict[str, Any]:
    """Sample a group in order, skipping parameters whose ``active_if`` parent chose otherwise."""
    values: dict[str, Any] = {}
    for p in params:
        hp = p.name.split(".", 1)[1]
        if p.active_if and values.get(p.active_if[0]) not in p.active_if[1]:
            continue
        values[hp] = p.sample(trial, restrict)
    return values


def _clip(v: Any, lo: float | None, hi: float | None) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and lo is not None and hi is not None:
        return type(v)(min(max(v, lo), hi))
    return v


def _param(prefixed: str, hp: HyperParam, setting: Any, where: str) -> _Param:
    """Merge a catalog hyperparameter with the user's setting (fixed value, range or choices)."""
    p = _Param(
        name=prefixed,
        kind=hp.kind,
        low=hp.low,
        high=hp.high,
        log=hp.log,
        choices=tuple(hp.choices) if hp.choices is not None else None,
        universe=tuple(hp.choices) if hp.choices is not None else None,
        allow_zero=hp.allow_zero,
        one_minus_log=getattr(hp, "one_minus_log", False),
        active_if=getattr(hp, "active_if", None),
    )
    if setting is None:
        return p
    if isinstance(setting, Range):
        if hp.kind == "categorical":
            raise SpecError(f"{where}: {hp.name} is categorical ({hp.choices}); give a value or a list, not a range")
        p.low, p.high = setting.low, setting.high
        if setting.log is not None:
            p.log = setting.log
            if setting.log is False:
                p.one_minus_log = False
        problem = range_problem(p.low, p.high, log=p.log, one_minus_log=p.one_minus_log, integer=hp.kind == "int")
        if problem:
            raise SpecError(f"{where}: {hp.name}: {problem}")
        if p.allow_zero and setting.low == 0:
            p.low = hp.low
        return p
    if isinstance(setting, list):
        if hp.kind != "categorical":
            raise SpecError(f"{where}: {hp.name} is numeric; give a value or {{low, high}}, not a list")
        bad = [c for c in setting if c not in (hp.choices or ())]
        if bad:
            raise SpecError(f"{where}: {hp.name} choices {bad} not allowed; allowed: {list(hp.choices or ())}")
        p.choices = tuple(c for c in (hp.choices or ()) if c in setting)
        return p
    if hp.kind == "categorical" and setting not in (hp.choices or ()):
        raise SpecError(f"{where}: {hp.name}={setting!r} not allowed; allowed: {list(hp.choices or ())}")
    p.fixed, p.is_fixed = setting, True
    return p


def _plain_param(name: str, setting: Any, default: Any, universe: tuple | None = None, kind: str = "float") -> _Param:
    """warmup / grad_clip / batch_size: a value, a range, a list of choices or None (default)."""
    if setting is None:
        return _Param(name=name, fixed=default, is_fixed=True)
    if isinstance(setting, Range):
        return _Param(name=name, low=setting.low, high=setting.high, log=bool(setting.log), kind=kind)
    if isinstance(setting, list):
        choices = tuple(setting)
        if universe is not None:
            bad = [c for c in choices if c not in universe]
            if bad:
                raise SpecError(f"space.{name}: {bad} not in the allowed values {list(universe)}")
            choices = tuple(u for u in universe if u in choices)
        return _Param(name=name, kind="categorical", choices=choices, universe=universe or choices)
    return _Param(name=name, fixed=setting, is_fixed=True)


class SearchSpace:
    """The space a study samples, built from a :class:`SpaceSpec` and the task's traits.

    Optimizers that cannot run on the task (full-batch methods, SparseAdam without sparse
    gradients, Muon without 2-D weights) are left out, each with its reason in ``excluded``.
    """

    def __init__(self, spec: SpaceSpec | None = None, traits: TaskTraits | None = None, *, has_matrix_params: bool = True):
        self.spec = spec or SpaceSpec()
        sparse = bool(traits and traits.sparse_gradients)
        names = list(self.spec.optimizers) if self.spec.optimizers else list(CATALOG)
        if self.spec.families:
            names = [n for n in names if CATALOG[n].family in self.spec.families]
        names = [n for n in names if n not in self.spec.exclude]
        self.excluded: dict[str, str] = {}
        self.optimizers: list[str] = []
        for n in names:
            ok, reason = CATALOG[n].applicable(sparse_gradients=sparse, has_matrix_params=has_matrix_params)
            if ok:
                self.optimizers.append(n)
            else:
                self.excluded[n] = reason or "not applicable"
        if not self.optimizers:
            detail = "; ".join(f"{k}: {v}" for k, v in self.excluded.items()) or "the filters removed all"
            raise SpecError(f"space.optimizers: no optimizer can run on this task ({detail})")
        self.schedulers: list[str] = list(self.spec.schedulers) if self.spec.schedulers else list(SCHEDULERS)

        self._opt_params: dict[str, list[_Param]] = {}
        for n in self.optimizers:
            settings = {**self.spec.params.get("*", {}), **self.spec.params.get(n, {})}
            own = {h.name for h in CATALOG[n].hyperparams}
            self._opt_params[n] = [
                _param(f"{n}.{hp.name}", hp, settings.get(hp.name), f"space.params.{n}")
                for hp in CATALOG[n].hyperparams
            ]
            unknown = set(self.spec.params.get(n, {})) - own
            if unknown:
                raise SpecError(f"space.params.{n}: unknown hyperparameter(s) {sorted(unknown)}")
        self._sched_params: dict[str, list[_Param]] = {
            s: [
                _param(f"{s}.{hp.name}", hp, self.spec.scheduler_params.get(s, {}).get(hp.name), f"space.scheduler_params.{s}")
                for hp in SCHEDULERS[s].hyperparams
            ]
            for s in SCHEDULERS  # all: an optimizer may only allow one outside the user's list
        }
        self._optimizer = _Param(
            "optimizer", kind="categorical", choices=tuple(self.optimizers), universe=tuple(CATALOG)
        )
        self._scheduler = _Param(
            "scheduler", kind="categorical", choices=tuple(self.schedulers), universe=tuple(SCHEDULERS)
        )
        self._warmup = _plain_param("warmup_fraction", self.spec.warmup, 0.0)
        self._grad_clip = _plain_param("grad_clip", self.spec.grad_clip, None)
        self._batch_size = _plain_param("batch_size", self.spec.batch_size, None, universe=BATCH_SIZE_UNIVERSE, kind="int")
        if self._batch_size.kind == "categorical" and self._batch_size.choices:
            self._batch_size.universe = BATCH_SIZE_UNIVERSE
        #: param name -> allowed choices, filled while sampling; read by the sampler wrapper.
        self.restrictions: dict[str, tuple] = {}
        self._collect_restrictions()

    def _collect_restrictions(self) -> None:
        for p in [self._optimizer, self._scheduler, self._batch_size, self._warmup, self._grad_clip,
                  *[q for ps in self._opt_params.values() for q in ps],
                  *[q for ps in self._sched_params.values() for q in ps]]:
            if p.kind == "categorical" and not p.is_fixed and p.choices and p.universe:
                self.restrictions[p.name] = p.choices

    # --- sampling -----------------------------------------------------------------------
    def sample(self, trial: optuna.Trial) -> TrialConfig:
        """Define-by-run: draw one configuration from ``trial``."""
        r = self.restrictions
        opt = self._optimizer.sample(trial, r)
        sched = self._scheduler.sample(trial, r, self._schedulers_for(opt))
        opt_params = _sample_group(self._opt_params[opt], trial, r)
        sched_params = _sample_group(self._sched_params[sched], trial, r)
        warmup = self._warmup.sample(trial, r)
        clip = self._grad_clip.sample(trial, r)
        bs = self._batch_size.sample(trial, r)
        return TrialConfig(
            optimizer=opt,
            optimizer_params=opt_params,
            scheduler=sched,
            scheduler_params=sched_params,
            warmup_fraction=float(warmup or 0.0),
            grad_clip=None if clip is None else float(clip),
            batch_size=None if bs is None else int(bs),
        )

    def _schedulers_for(self, optimizer: str) -> tuple[str, ...]:
        """Schedules the optimizer works with (schedule-free AdamW: constant only, warmup allowed)."""
        allowed = getattr(CATALOG[optimizer], "allowed_schedulers", None)
        if not allowed:
            return tuple(self.schedulers)
        return tuple(s for s in self.schedulers if s in allowed) or tuple(s for s in SCHEDULERS if s in allowed)

    def to_optuna_params(self, config: TrialConfig | dict[str, Any]) -> dict[str, Any]:
        """Optuna params that reproduce ``config`` (for ``study.enqueue_trial``), clipped into the space."""
        if isinstance(config, dict):
            config = TrialConfig.from_dict(config)
        if config.optimizer not in self.optimizers:
            raise SpecError(f"optimizer {config.optimizer!r} is not in this space ({', '.join(self.optimizers)})")
        fits = self._schedulers_for(config.optimizer)
        sched = config.scheduler if config.scheduler in fits else fits[0]
        out: dict[str, Any] = {}
        out.update(self._optimizer.default_params(config.optimizer))
        out.update(self._scheduler.default_params(sched))
        chosen = {**CATALOG[config.optimizer].defaults(), **config.optimizer_params}
        for p in self._opt_params[config.optimizer]:
            hp = p.name.split(".", 1)[1]
            if p.active_if and chosen.get(p.active_if[0]) not in p.active_if[1]:
                continue
            value = chosen.get(hp)
            if value is None and p.kind != "categorical":
                continue
            out.update(p.default_params(value))
        for p in self._sched_params[sched]:
            hp = p.name.split(".", 1)[1]
            value = config.scheduler_params.get(hp, SCHEDULERS[sched].defaults().get(hp) if hasattr(SCHEDULERS[sched], "defaults") else None)
            if value is not None:
                out.update(p.default_params(value))
        if not self._warmup.is_fixed:
            out.update(self._warmup.default_params(config.warmup_fraction))
        if not self._grad_clip.is_fixed and config.grad_clip is not None:
            out.update(self._grad_clip.default_params(config.grad_clip))
        if not self._batch_size.is_fixed and config.batch_size is not None:
            out.update(self._batch_size.default_params(config.batch_size))
        return out
