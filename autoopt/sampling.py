"""Samplers and pruners by name, and the wrapper that lets a study's choice lists change.

:class:`ChoiceRestrictingSampler` wraps any Optuna sampler. Categorical parameters are recorded
against a fixed universe of choices (so storage never sees a changed distribution), while the
wrapped sampler draws from the currently allowed subset and learns only from past trials whose
value is still allowed.
"""

from __future__ import annotations

import contextvars
import copy
import inspect
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


class _Snapshot:
    """The study's trials as read once for the trial being sampled, with what is derived from them
    for each of its parameters: the trials by state, and TPE's split of them (see _memoized_split)."""

    def __init__(self, trial_id: int, trials: list[FrozenTrial]):
        self.trial_id, self.trials = trial_id, trials
        self.by_states: dict[tuple, list[FrozenTrial]] = {}
        self.splits: dict[tuple, tuple[list[FrozenTrial], list[FrozenTrial]]] = {}


class _SnapshotView:
    """A study whose trials are read once per trial being sampled (see ChoiceRestrictingSampler)."""

    def __init__(self, study: Study, snapshot: _Snapshot):
        self._study, self._snapshot = study, snapshot

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        if states is None:
            trials = self._snapshot.trials
        else:  # TPE asks for the same states once or twice per parameter
            key = tuple(states)
            trials = self._snapshot.by_states.get(key)  # type: ignore[assignment]
            if trials is None:
                trials = self._snapshot.by_states[key] = [t for t in self._snapshot.trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


#: the splits of the snapshot being sampled from, while a ChoiceRestrictingSampler samples from one
_ACTIVE_SPLITS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("autoopt_tpe_splits", default=None)


def _memoized_split(split: Callable[..., Any]) -> Callable[..., Any]:
    """Optuna's TPE splits the trials into its good and bad groups again for every parameter it
    samples (``optuna.samplers._tpe.sampler._split_trials``: a pass over every finished trial,
    reading each one's constraints, and a sort). From one snapshot the trials and so the split
    are the same for all of a trial's parameters: computed once. At 1000 trials this was the
    largest part of the coordinator's per-trial cost growing with the study (issue #13,
    docs/benchmarks.md). Outside a snapshot (plain Optuna, another sampler) it calls through."""

    def split_once(study: Study, trials: list[FrozenTrial], n_below: int) -> Any:
        memo = _ACTIVE_SPLITS.get()
        if memo is None:
            return split(study, trials, n_below)
        # the same trial objects in the same order: the snapshot holds them (and the memo's
        # lists do), so no id is reused while the memo lives
        key = (n_below, tuple(map(id, trials)))
        found = memo.get(key)
        if found is None:
            found = memo[key] = split(study, trials, n_below)
        below, above = found
        return list(below), list(above)

    split_once.__wrapped__ = split  # type: ignore[attr-defined]
    return split_once


def _install_split_memo() -> bool:
    """Wrap TPE's split once per process; False (sampling unchanged, only slower) if this Optuna
    has no such function with that signature."""
    from optuna.samplers._tpe import sampler as tpe

    split = getattr(tpe, "_split_trials", None)
    if split is None or hasattr(split, "__wrapped__"):
        return split is not None
    if list(inspect.signature(split).parameters) != ["study", "trials", "n_below"]:
        return False
    tpe._split_trials = _memoized_split(split)
    return True


class ChoiceRestrictingSampler(BaseSampler):
    """Sample restricted categoricals from their allowed subset; delegate everything else.

    ``restrictions`` maps a parameter name to its allowed choices; the parameter is suggested
    with the full universe as its distribution.

    ``snapshot``: read the study's trials once per new trial and sample all its parameters from
    that read. Optuna 5's TPE (constant liar on) reads every trial again for each parameter, one
    storage query per parameter; the study's coordinator, the one process sampling for all its
    workers, reads once. Trials other drivers finish during those milliseconds are seen by the
    next trial instead. What TPE derives from the trials for each parameter (the trials by state,
    its split into good and bad) is then derived once per trial too: the same draws, at a cost
    that grows less with the study.
    """

    def __init__(self, base: BaseSampler, restrictions: dict[str, tuple], snapshot: bool = False):
        self.base = base
        self.restrictions = restrictions
        self.snapshot = snapshot
        if snapshot:
            _install_split_memo()
        self._snapshot: _Snapshot | None = None

    def _view(self, study: Study, trial: FrozenTrial) -> Study:
        if not self.snapshot:
            return study
        if self._snapshot is None or self._snapshot.trial_id != trial._trial_id:
            self._snapshot = _Snapshot(trial._trial_id, study._get_trials(deepcopy=False))
        return _SnapshotView(study, self._snapshot)  # type: ignore[return-value]

    def _sampling(self, call: Callable[[Study], Any], study: Study, trial: FrozenTrial) -> Any:
        """``call`` on the study as this sampler shows it; from a snapshot, with its splits memoized."""
        view = self._view(study, trial)
        if self._snapshot is None:
            return call(view)
        token = _ACTIVE_SPLITS.set(self._snapshot.splits)
        try:
            return call(view)
        finally:
            _ACTIVE_SPLITS.reset(token)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.base.infer_relative_search_space(self._view(study, trial), trial)
        return {k: v for k, v in space.items() if not self._restricted(k, v)}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._sampling(lambda view: self.base.sample_relative(view, trial, search_space), study, trial)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if self._restricted(param_name, param_distribution):
            allowed = self.restrictions[param_name]
            assert isinstance(param_distribution, CategoricalDistribution)
            narrowed = CategoricalDistribution([c for c in param_distribution.choices if c in allowed])
            return self._sampling(lambda view: self.base.sample_independent(
                _ChoiceView(view, param_name, narrowed.choices), trial, param_name, narrowed), study, trial)  # type: ignore[arg-type]
        return self._sampling(lambda view: self.base.sample_independent(view, trial, param_name, param_distribution),
                              study, trial)

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
        self._snapshot = None
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


#: the samplers a spec can name (their classes: reading these attributes builds nothing)
SAMPLER_FACTORIES: dict[str, Callable[..., BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
}


def check_sampler_options(name: str, options: dict[str, Any]) -> None:
    """Raise :class:`SpecError` naming any of ``options`` the sampler does not take (read off its
    constructor, without building it: building some samplers imports their numerical stack)."""
    if name not in SAMPLER_FACTORIES:
        raise SpecError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    if "seed" in options:
        detail = "seed is the spec's own `seed` field"
        raise SpecError(f"sampler_options for {name}: {detail}", detail=detail)
    params = inspect.signature(SAMPLER_FACTORIES[name].__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = sorted(k for k in params if k not in ("self", "seed"))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        detail = f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(accepted)}"
        raise SpecError(f"sampler_options for {name}: {detail}", detail=detail)


def make_sampler(name: str, seed: int | None = None, **options: Any) -> BaseSampler:
    """An Optuna sampler by name, with Optuna 5 defaults (TPE is multivariate + constant liar)."""
    if name not in SAMPLER_FACTORIES:
        raise SpecError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    try:
        return SAMPLER_FACTORIES[name](seed=seed, **options)
    except TypeError as exc:
        raise SpecError(f"sampler_options for {name}: {exc}", detail=str(exc)) from None


def make_pruner(name: str, max_epochs: int | None, *, prior_curves: Any = None,
                **options: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner by name. Hyperband and successive halving run over the task's epochs
    (unknown for an objective without ``max_reports``: Hyperband then learns it from the first trials).
    ``prior_curves``: similar tasks' finished curves for ``learning_curve`` with ``similar_tasks``
    (the coordinator reads them from the meta-dataset)."""
    try:
        if name == "hyperband":
            opts = {"min_resource": 1, "max_resource": max_epochs or "auto", "reduction_factor": 3, **options}
            return optuna.pruners.HyperbandPruner(**opts)
        if name == "successive_halving":
            # reduction factor 4 (rungs 1, 4, 16): the setting that met "3x fewer epochs at the same best
            # value" on both 20-epoch tasks in docs/benchmarks.md section 3 (3 missed it on best value)
            return optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": 1, "reduction_factor": 4, **options})
        if name == "asha":
            from autoopt.pruners import AshaPruner

            return AshaPruner(**{"min_resource": 1, "reduction_factor": 4, **options})
        if name == "learning_curve":
            from autoopt.pruners import LearningCurvePruner
            from autoopt.spec import LearningCurveOptions

            opts = LearningCurveOptions.model_validate({"max_resource": max_epochs, **options})
            kw = opts.model_dump(exclude={"similar_tasks", "similar_studies"})
            return LearningCurvePruner(**kw, prior_curves=(prior_curves or ()) if opts.similar_tasks else ())
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
        raise SpecError(f"pruner_options for {name}: {exc}", detail=str(exc)) from None
    raise SpecError(f"unknown pruner {name!r}; allowed: {', '.join(PRUNERS)}")


def pruner_decides_at(pruner: optuna.pruners.BasePruner, epoch: int) -> bool:
    """Can ``pruner`` stop a trial at ``epoch`` (steps reported 1, 2, 3, ...)? Epoch reports it
    cannot act on are sent without waiting for the answer. True for a pruner not known here (one
    that may decide at any epoch), so only known pruners skip the wait.

    Successive halving and Hyperband decide at rungs, ``min_resource * reduction_factor**k``
    (each Hyperband bracket uses a subset of these); median and percentile pruners, and the
    threshold pruner, after their warm-up steps, every ``interval_steps``; Optuna's no-op pruner never.
    """
    if isinstance(pruner, optuna.pruners.NopPruner):
        return False
    if isinstance(pruner, (optuna.pruners.SuccessiveHalvingPruner, optuna.pruners.HyperbandPruner)):
        low, factor = getattr(pruner, "_min_resource", None), getattr(pruner, "_reduction_factor", None)
        if not isinstance(low, int) or not isinstance(factor, int) or low < 1 or factor < 2:
            return True  # "auto": learnt from the first trials
        rung = low
        while rung < epoch:
            rung *= factor
        return rung == epoch
    if type(pruner) in (optuna.pruners.MedianPruner, optuna.pruners.PercentilePruner, optuna.pruners.ThresholdPruner):
        warmup, interval = int(pruner._n_warmup_steps), int(pruner._interval_steps)
        return epoch >= warmup and (epoch - warmup) % interval == 0
    return True


def decision_epochs(pruner: optuna.pruners.BasePruner, max_epochs: int | None) -> frozenset[int] | None:
    """The epochs before the last at which ``pruner`` can decide; None: any epoch (unknown length).
    The last epoch is left out: stopping a trial there saves no training, so its report need not
    wait for the answer (the trial completes with all its epochs)."""
    if not max_epochs:
        return None
    return frozenset(e for e in range(1, int(max_epochs)) if pruner_decides_at(pruner, e))
