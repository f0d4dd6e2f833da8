"""Samplers and pruners by name, and the wrapper that lets a study's choice lists change.

:class:`ChoiceRestrictingSampler` wraps any Optuna sampler. Categorical parameters are recorded
against a fixed universe of choices (so storage never sees a changed distribution), while the
wrapped sampler draws from the currently allowed subset and learns only from past trials whose
value is still allowed.
"""

from __future__ import annotations

import bisect
import contextvars
import copy
import inspect
import itertools
from typing import Any, Callable, Sequence

import numpy as np
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

    def _sampling_trials(self, states: tuple, left_out: int | None) -> _Sampling | None:
        """As :meth:`_SnapshotView._sampling_trials`, of the trials this view keeps; None if the
        study under it is not a snapshot."""
        inner = getattr(self._study, "_sampling_trials", None)
        if inner is None:
            return None
        return inner(states, left_out, self._keep, (self._param, frozenset(self._allowed)))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class _Snapshot:
    """The study's trials as read once for the trial being sampled, with what is derived from them
    for each of its parameters: the trials by state, what TPE samples from and its split."""

    def __init__(self, trial_id: int, trials: list[FrozenTrial]):
        self.trial_id, self.trials = trial_id, trials
        self.by_states: dict[tuple, list[FrozenTrial]] = {}
        #: Optuna's own split, memoized per trial list (see _memoized_split)
        self.splits: dict[tuple, tuple[list[FrozenTrial], list[FrozenTrial]]] = {}
        #: per (states, trial left out, choice filter): what TPE samples from (see _Sampling)
        self.sampling: dict[tuple, _Sampling] = {}
        #: id of a list the split returned -> (the list, its trials' numbers): rows of the value store
        self.rows: dict[int, tuple[list[FrozenTrial], np.ndarray]] = {}


class _FinishedIndex:
    """A study's finished trials in the states TPE samples from (and a choice filter keeps), kept
    across the trials sampled from it and updated as trials finish: in number order, and in each
    of the orders TPE's split sorts them by. A finished trial never changes, so each is read once;
    only the trials after the oldest unfinished one are looked at again for the next trial."""

    def __init__(self, states: tuple, keep: Callable[[FrozenTrial], bool] | None, sign: float):
        self.finished_states = frozenset(s for s in states if s != TrialState.RUNNING)
        self.with_running = TrialState.RUNNING in states
        self.keep, self.sign = keep, sign
        self.settled = 0  # a snapshot's first `settled` trials are finished and were read here
        self.read: set[int] = set()  # numbers of the finished trials read (past `settled` too)
        self.numbers: list[int] = []
        self.trials: list[FrozenTrial] = []  # in number order
        # sorted as _split_trials sorts them; ties by number, as its stable sorts leave them
        self.complete: list[tuple] = []  # (sign * value, number, trial)
        self.pruned: list[tuple] = []  # (_get_pruned_trial_score, number, trial)
        self.infeasible: list[tuple] = []  # (_get_infeasible_trial_score, number, trial)

    def update(self, trials: list[FrozenTrial], study: Study) -> list[FrozenTrial] | None:
        """Read the trials finished since the last snapshot; return the running ones the filter
        keeps, in number order. None if ``trials`` is not the study's trials numbered 0, 1, 2, ..."""
        from optuna.samplers._tpe import sampler as tpe

        running: list[FrozenTrial] = []
        settled, advancing = self.settled, True
        for i in range(self.settled, len(trials)):
            trial = trials[i]
            if trial.number != i:
                return None
            state = trial.state
            if not state.is_finished():
                advancing = False
                if state == TrialState.RUNNING and self.with_running and (self.keep is None or self.keep(trial)):
                    running.append(trial)
                continue
            if advancing:
                settled = i + 1
            if i in self.read:
                continue
            self.read.add(i)
            if state not in self.finished_states or (self.keep is not None and not self.keep(trial)):
                continue
            at = bisect.bisect(self.numbers, i)
            self.numbers.insert(at, i)
            self.trials.insert(at, trial)
            score = tpe._get_infeasible_trial_score(trial)
            if score > 0:
                bisect.insort(self.infeasible, (score, i, trial))
            elif state == TrialState.COMPLETE:
                bisect.insort(self.complete, (self.sign * trial.value, i, trial))  # type: ignore[operator]
            else:
                bisect.insort(self.pruned, (tpe._get_pruned_trial_score(trial, study), i, trial))
        self.read.difference_update(range(self.settled, settled))
        self.settled = settled
        return running


class _Sampling:
    """What TPE's ``_sample`` derives first, for one trial and one list of past trials: how many
    of them are finished, and their split into the good and the bad (Optuna 5.1's
    ``_split_trials``, from the :class:`_FinishedIndex` instead of a pass and sorts over all of
    them for each parameter)."""

    def __init__(self, index: _FinishedIndex, running: list[FrozenTrial], snapshot: _Snapshot):
        self.index, self.running, self.snapshot = index, running, snapshot
        self.n = len(index.trials)  # TPE's count of the trials not running
        self._splits: dict[int, tuple[list[FrozenTrial], list[FrozenTrial]]] = {}

    def split(self, n_below: int) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
        found = self._splits.get(n_below)
        if found is None:
            (below, below_rows), (above, above_rows) = self._split(n_below)
            # the lists' rows in the value store, read by _cached_internal_repr
            self.snapshot.rows[id(below)] = (below, below_rows)
            self.snapshot.rows[id(above)] = (above, above_rows)
            found = self._splits[n_below] = (below, above)
        return found

    def _split(self, n_below: int) -> tuple[tuple[list[FrozenTrial], np.ndarray], tuple[list[FrozenTrial], np.ndarray]]:
        index, below = self.index, []
        for group in (index.complete, index.pruned, index.infeasible):
            take = min(max(0, n_below - len(below)), len(group))
            below.extend(entry[2] for entry in group[:take])
        below.sort(key=lambda trial: trial.number)
        below_rows = np.fromiter((t.number for t in below), np.intp, len(below))
        numbers = np.fromiter(index.numbers, np.intp, len(index.numbers))
        keep = np.ones(len(numbers), bool)
        keep[np.searchsorted(numbers, below_rows)] = False  # the below trials are among the finished
        above, above_rows = list(itertools.compress(index.trials, keep.tolist())), numbers[keep]
        # the running trials are all above: each at its place in number order
        for trial in reversed(self.running):
            at = int(np.searchsorted(above_rows, trial.number))
            above.insert(at, trial)
            above_rows = np.insert(above_rows, at, trial.number)
        return (below, below_rows), (above, above_rows)


class _ValueStore:
    """Trials' values for one search space in TPE's internal representation, a row per trial
    number; finished trials' rows are converted once, running trials' each time."""

    def __init__(self, n_columns: int):
        self.dtypes: list[Any] = [None] * n_columns
        self.columns = [np.zeros(0) for _ in range(n_columns)]
        self.has = np.zeros(0, bool)  # the trial has every parameter of the space
        self.known = np.zeros(0, bool)  # finished, converted

    def reserve(self, rows: int) -> None:
        if rows <= len(self.known):
            return
        size = max(rows, 2 * len(self.known), 64)
        grow = size - len(self.known)
        self.columns = [np.concatenate([c, np.zeros(grow)]) for c in self.columns]
        self.has = np.concatenate([self.has, np.zeros(grow, bool)])
        self.known = np.concatenate([self.known, np.zeros(grow, bool)])


class _StudyMemo:
    """What the snapshot sampler keeps about one study across the trials it samples: its finished
    trials indexed for TPE's split, and their values in TPE's internal representation.

    TPE reads every past trial again for each parameter of each trial it samples (which are
    finished, their split into good and bad, and each one's values converted). At 1000 trials
    that was most of the coordinator's per-trial cost still growing with the study (issue #13,
    docs/benchmarks.md). A finished trial never changes, so each is read and converted once."""

    def __init__(self, owner: tuple[int, int]):
        self.owner = owner  # (the study's id, its storage's): trial numbers are unique within it
        self.indexes: dict[tuple, _FinishedIndex] = {}  # per (states, choice filter)
        #: per search space (parameter names and distributions): the trials' converted values
        self.values: dict[tuple, _ValueStore] = {}
        #: trial id -> TPE's infeasibility score (the sum of its violated constraints)
        self.infeasibility: dict[int, float] = {}


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

    def _sampling_trials(self, states: tuple, left_out: int | None, keep: Callable[[FrozenTrial], bool] | None = None,
                         keep_key: Any = None) -> _Sampling | None:
        """What TPE's ``_sample`` samples from, the same for every parameter of the trial: the trials
        in ``states`` less the trial numbered ``left_out`` (its constant liar) and any ``keep``
        refuses. None outside a study memo, for a study of several objectives, or for trials not
        numbered in order (the caller then derives them as Optuna does)."""
        memo = _ACTIVE_MEMO.get()
        if memo is None or len(self._study.directions) != 1:
            return None
        key = (states, left_out, keep_key)
        found = self._snapshot.sampling.get(key)
        if found is None:
            index = memo.indexes.get((states, keep_key))
            if index is None:
                sign = 1.0 if self._study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
                index = memo.indexes[(states, keep_key)] = _FinishedIndex(states, keep, sign)
            running = index.update(self._snapshot.trials, self._study)
            if running is None:
                return None
            running = [t for t in running if t.number != left_out]
            found = self._snapshot.sampling[key] = _Sampling(index, running, self._snapshot)
        return found

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


#: the snapshot being sampled from, while a ChoiceRestrictingSampler samples from one
_ACTIVE_SNAPSHOT: contextvars.ContextVar[_Snapshot | None] = contextvars.ContextVar("autoopt_tpe_snapshot", default=None)
#: the study's memo, while a ChoiceRestrictingSampler samples from a snapshot
_ACTIVE_MEMO: contextvars.ContextVar[_StudyMemo | None] = contextvars.ContextVar("autoopt_tpe_memo", default=None)


def _memoized_split(split: Callable[..., Any]) -> Callable[..., Any]:
    """Optuna's TPE splits the trials into its good and bad groups again for every parameter it
    samples (``optuna.samplers._tpe.sampler._split_trials``: a pass over every finished trial,
    reading each one's constraints, and a sort). From one snapshot the trials and so the split
    are the same for all of a trial's parameters: computed once. This is the path of an Optuna
    whose ``_sample`` is not the one :func:`_sample_from_snapshot` repeats; with that one the
    split comes from the :class:`_FinishedIndex`. Outside a snapshot it calls through."""

    def split_once(study: Study, trials: list[FrozenTrial], n_below: int) -> Any:
        snapshot = _ACTIVE_SNAPSHOT.get()
        if snapshot is None:
            return split(study, trials, n_below)
        # the same trial objects in the same order: the snapshot holds them (and the memo's
        # lists do), so no id is reused while the memo lives
        key = (n_below, tuple(map(id, trials)))
        found = snapshot.splits.get(key)
        if found is None:
            found = snapshot.splits[key] = split(study, trials, n_below)
        below, above = found
        return list(below), list(above)

    split_once.__wrapped__ = split  # type: ignore[attr-defined]
    return split_once


def _cached_internal_repr(convert: Callable[..., Any]) -> Callable[..., Any]:
    """``TPESampler._get_internal_repr`` reading finished trials' values from the active
    :class:`_StudyMemo`'s value store; the same arrays, in the same order. The rows of a list the
    split returned are looked up once per trial sampled, not once per parameter. Outside a
    snapshot it calls through."""

    def internal_repr(self: Any, trials: list[FrozenTrial], search_space: dict[str, BaseDistribution],
                      study: Study) -> dict[str, np.ndarray]:
        memo, snapshot = _ACTIVE_MEMO.get(), _ACTIVE_SNAPSHOT.get()
        if memo is None or snapshot is None or not search_space:
            return convert(self, trials, search_space, study)
        names = list(search_space)
        key = tuple(search_space.items())
        store = memo.values.get(key)
        if store is None:
            store = memo.values[key] = _ValueStore(len(names))
        kept = snapshot.rows.get(id(trials))
        rows = kept[1] if kept is not None and kept[0] is trials else np.fromiter(
            (t.number for t in trials), np.intp, len(trials))
        if not len(rows):
            return {name: np.asarray([]) for name in names}
        store.reserve(int(rows.max()) + 1)
        for i in np.flatnonzero(~store.known[rows]).tolist():
            trial, row = trials[i], rows[i]
            one = convert(self, [trial], search_space, study)  # TPE's own reading of one trial
            store.has[row] = bool(len(one[names[0]]))
            if store.has[row]:
                for j, name in enumerate(names):
                    store.columns[j][row] = one[name][0]
                    if store.dtypes[j] is None:
                        store.dtypes[j] = one[name].dtype
            store.known[row] = trial.state.is_finished()
        chosen = rows[store.has[rows]]
        if not len(chosen):
            return {name: np.asarray([]) for name in names}
        return {name: column[chosen].astype(dtype, copy=False)
                for name, column, dtype in zip(names, store.columns, store.dtypes)}

    internal_repr.__wrapped__ = convert  # type: ignore[attr-defined]
    return internal_repr


def _cached_infeasibility(score: Callable[[FrozenTrial], float]) -> Callable[[FrozenTrial], float]:
    """TPE's infeasibility score of a trial (``_get_infeasible_trial_score``, read for every trial at
    each split), kept for finished trials in the active :class:`_StudyMemo`."""

    def infeasibility(trial: FrozenTrial) -> float:
        memo = _ACTIVE_MEMO.get()
        if memo is None:
            return score(trial)
        found = memo.infeasibility.get(trial._trial_id)
        if found is None:
            found = score(trial)
            if trial.state.is_finished():
                memo.infeasibility[trial._trial_id] = found
        return found

    infeasibility.__wrapped__ = score  # type: ignore[attr-defined]
    return infeasibility


#: the sources of the ``TPESampler._sample`` that _sample_from_snapshot repeats and of the split
#: functions that _Sampling repeats (Optuna 5.1); another Optuna's are called as they are
_TPE_SOURCES = "6e036b86c8c05c8b"


def _tpe_sources_digest() -> str | None:
    from optuna.samplers._tpe import sampler as tpe

    functions = (getattr(tpe.TPESampler._sample, "__wrapped__", tpe.TPESampler._sample),
                 getattr(tpe._split_trials, "__wrapped__", tpe._split_trials),
                 tpe._split_complete_trials, tpe._split_complete_trials_single_objective,
                 tpe._split_pruned_trials, tpe._split_infeasible_trials, tpe._get_pruned_trial_score)
    return _source_digest(*functions)


def _sample_from_snapshot(sample: Callable[..., Any]) -> Callable[..., Any]:
    """``TPESampler._sample`` taking the count of finished trials and their split from the
    snapshot's :class:`_Sampling` instead of passes and sorts over every trial per parameter;
    the rest is Optuna 5.1's own, line for line. Outside a snapshot it calls through."""
    from optuna.samplers._tpe import sampler as tpe

    def sample_from_snapshot(self: Any, study: Study, trial: FrozenTrial,
                             search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        derive = getattr(study, "_sampling_trials", None) if _ACTIVE_MEMO.get() is not None else None
        states = (TrialState.COMPLETE, TrialState.PRUNED) + ((TrialState.RUNNING,) if self._constant_liar else ())
        found = derive(states, trial.number if self._constant_liar else None) if derive is not None else None
        if found is None:
            return sample(self, study, trial, search_space)
        if self._gamma is None:
            self._gamma = tpe.default_gamma if len(study.directions) <= 1 else tpe.default_gamma_multiobjective
        below_trials, above_trials = found.split(self._gamma(found.n))
        mpe_below = self._build_parzen_estimator(study, search_space, below_trials, handle_below=True)
        mpe_above = self._build_parzen_estimator(study, search_space, above_trials, handle_below=False)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = tpe.TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret

    sample_from_snapshot.__wrapped__ = sample  # type: ignore[attr-defined]
    return sample_from_snapshot


def _source_digest(*functions: Callable[..., Any]) -> str | None:
    import hashlib

    try:
        return hashlib.sha256("".join(inspect.getsource(f) for f in functions).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def _install_tpe_memos() -> None:
    """Wrap, once per process, what TPE derives from past trials for each parameter: the trials it
    samples from, their split, their infeasibility and their converted values. Each is left as it
    is (sampling unchanged, only slower) if this Optuna's function is not the one wrapped here."""
    from optuna.samplers._tpe import sampler as tpe

    def wrap_once(owner: Any, name: str, parameters: list[str], wrapper: Callable[[Any], Any]) -> None:
        function = getattr(owner, name, None)
        if (function is not None and not hasattr(function, "__wrapped__")
                and list(inspect.signature(function).parameters) == parameters):
            setattr(owner, name, wrapper(function))

    wrap_once(tpe, "_split_trials", ["study", "trials", "n_below"], _memoized_split)
    wrap_once(tpe.TPESampler, "_get_internal_repr", ["self", "trials", "search_space", "study"], _cached_internal_repr)
    wrap_once(tpe, "_get_infeasible_trial_score", ["trial"], _cached_infeasibility)
    sample = getattr(tpe.TPESampler, "_sample", None)
    try:
        matches = _tpe_sources_digest() == _TPE_SOURCES
    except AttributeError:  # an Optuna without one of the split functions
        matches = False
    if sample is not None and not hasattr(sample, "__wrapped__") and matches:
        tpe.TPESampler._sample = _sample_from_snapshot(sample)


class ChoiceRestrictingSampler(BaseSampler):
    """Sample restricted categoricals from their allowed subset; delegate everything else.

    ``restrictions`` maps a parameter name to its allowed choices; the parameter is suggested
    with the full universe as its distribution.

    ``snapshot``: read the study's trials once per new trial and sample all its parameters from
    that read. Optuna 5's TPE (constant liar on) reads every trial again for each parameter, one
    storage query per parameter; the study's coordinator, the one process sampling for all its
    workers, reads once. Trials other drivers finish during those milliseconds are seen by the
    next trial instead. What TPE derives from the trials for each parameter (which are finished,
    their split into good and bad, their values) then comes from the :class:`_StudyMemo`, which
    reads each finished trial once per study: the same draws, at a cost that grows less with
    the study.
    """

    def __init__(self, base: BaseSampler, restrictions: dict[str, tuple], snapshot: bool = False):
        self.base = base
        self.restrictions = restrictions
        self.snapshot = snapshot
        if snapshot:
            _install_tpe_memos()
        self._snapshot: _Snapshot | None = None
        self._memo: _StudyMemo | None = None

    def _view(self, study: Study, trial: FrozenTrial) -> Study:
        if not self.snapshot:
            return study
        if self._snapshot is None or self._snapshot.trial_id != trial._trial_id:
            self._snapshot = _Snapshot(trial._trial_id, study._get_trials(deepcopy=False))
        return _SnapshotView(study, self._snapshot)  # type: ignore[return-value]

    def _sampling(self, call: Callable[[Study], Any], study: Study, trial: FrozenTrial) -> Any:
        """``call`` on the study as this sampler shows it; from a snapshot, with the study's memo."""
        view = self._view(study, trial)
        if self._snapshot is None:
            return call(view)
        owner = (study._study_id, id(study._storage))
        if self._memo is None or self._memo.owner != owner:
            self._memo = _StudyMemo(owner)
        snapshot, memo = _ACTIVE_SNAPSHOT.set(self._snapshot), _ACTIVE_MEMO.set(self._memo)
        try:
            return call(view)
        finally:
            _ACTIVE_MEMO.reset(memo)
            _ACTIVE_SNAPSHOT.reset(snapshot)

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
