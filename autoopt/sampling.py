"""Samplers and pruners by name, and the wrapper that lets a study's choice lists change.

:class:`ChoiceRestrictingSampler` wraps any Optuna sampler. Categorical parameters are recorded
against a fixed universe of choices (so storage never sees a changed distribution), while the
wrapped sampler draws from the currently allowed subset and learns only from past trials whose
value is still allowed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from autoopt.spec import PRUNERS, SAMPLERS, SpecError


class _ChoiceView:
    """A read-only view of a study that hides trials whose ``param`` is outside ``allowed``."""

    def __init__(self, study: Study, param: str, allowed: Sequence[Any]):
        self._study, self._param, self._allowed = study, param, set(allowed)

    def _keep(self, t: FrozenTrial) -> bool:
        return self._param not in t.params or t.params[self._param] in self._allowed

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [t for t in self._study._get_trials(*args, **kwargs) if self._keep(t)]

    def get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(*args, **kwargs) if self._keep(t)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class ChoiceRestrictingSampler(BaseSampler):
    """Sample restricted categoricals from their allowed subset; delegate everything else.

    ``restrictions`` maps a parameter name to its allowed choices; the parameter is suggested
    with the full universe as its distribution.
    """

    def __init__(self, base: BaseSampler, restrictions: dict[str, tuple]):
        self.base = base
        self.restrictions = restrictions

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.base.infer_relative_search_space(study, trial)
        return {k: v for k, v in space.items() if not self._restricted(k, v)}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if self._restricted(param_name, param_distribution):
            allowed = self.restrictions[param_name]
            assert isinstance(param_distribution, CategoricalDistribution)
            narrowed = CategoricalDistribution([c for c in param_distribution.choices if c in allowed])
            view = _ChoiceView(study, param_name, narrowed.choices)
            return self.base.sample_independent(view, trial, param_name, narrowed)  # type: ignore[arg-type]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def _restricted(self, name: str, dist: BaseDistribution) -> bool:
        allowed = self.restrictions.get(name)
        return (
            allowed is not None
            and isinstance(dist, CategoricalDistribution)
            and set(dist.choices) != set(allowed)
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def make_sampler(name: str, seed: int | None = None, **options: Any) -> BaseSampler:
    """An Optuna sampler by name, with Optuna 5 defaults (TPE is multivariate + constant liar)."""
    factories: dict[str, Callable[..., BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    if name not in factories:
        raise SpecError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    try:
        return factories[name](seed=seed, **options)
    except TypeError as exc:
        raise SpecError(f"sampler_options for {name}: {exc}") from None


def make_pruner(name: str, max_epochs: int | None, **options: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner by name. Hyperband and successive halving run over the task's epochs
    (unknown for an objective without ``max_reports``: Hyperband then learns it from the first trials)."""
    try:
        if name == "hyperband":
            opts = {"min_resource": 1, "max_resource": max_epochs or "auto", "reduction_factor": 3, **options}
            return optuna.pruners.HyperbandPruner(**opts)
        if name == "successive_halving":
            # reduction factor 4 (rungs 1, 4, 16): the setting that met "3x fewer epochs at the same best
            # value" on both 20-epoch tasks in docs/benchmarks.md section 3 (3 missed it on best value)
            return optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": 1, "reduction_factor": 4, **options})
        if name == "learning_curve":
            from autoopt.pruners import LearningCurvePruner
            from autoopt.spec import LearningCurveOptions

            opts = LearningCurveOptions.model_validate({"max_resource": max_epochs, **options})
            return LearningCurvePruner(**opts.model_dump())
        if name == "median":
            return optuna.pruners.MedianPruner(**{"n_startup_trials": 4, "n_warmup_steps": 1, **options})
        if name == "percentile":
            return optuna.pruners.PercentilePruner(**{"percentile": 25.0, "n_startup_trials": 4, "n_warmup_steps": 1, **options})
        if name == "patient":
            inner_name = options.pop("wrapped", "median")
            patience = options.pop("patience", 2)
            inner = make_pruner(inner_name, max_epochs, **options.pop("wrapped_options", {}))
            return optuna.pruners.PatientPruner(inner, patience=patience, **options)
        if name == "threshold":
            return optuna.pruners.ThresholdPruner(**options)
        if name == "none":
            return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"pruner_options for {name}: {exc}") from None
    raise SpecError(f"unknown pruner {name!r}; allowed: {', '.join(PRUNERS)}")
