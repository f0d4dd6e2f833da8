"""The pruners autoopt adds to Optuna's: a learning-curve-aware pruner, and successive halving
with ASHA's rung rule (:class:`AshaPruner`, below).

A learning-curve-aware pruner stops a trial whose curve cannot reach the study's best.

Hyperband and successive halving compare a trial only with its peers at the same rung, so a
trial that is clearly hopeless after one epoch still runs to the next rung, and a bracket's
first trials run to the end because they have no peers yet. :class:`LearningCurvePruner` asks a
different question at every epoch: *how good could this trial still get?* It takes the most
optimistic of two estimates of the trial's final best value:

* **extrapolation**: a saturating power law ``y(t) = a + b * t**-c`` fitted (least squares, for
  a few fixed decay rates ``c``) to the trial's best-so-far curve, evaluated at the last epoch;
* **matched curves**: the finished trials of the same study: the improvement each made from
  this epoch to its end, a ``quantile`` of them (1.0: the largest) added to this trial's value;
  and, with ``prior_curves``, the finished curves of similar tasks' studies in the meta-dataset
  (``pruner_options: {similar_tasks: true}``: :func:`autoopt.recommend.meta.similar_curves`),
  whose improvements count *relative* to the value they started from, since another task's
  metric has another scale.

If even that estimate falls short of the study's current best (by more than ``margin``,
relative), the trial is pruned. It never prunes before ``n_warmup_steps`` epochs or before
``n_startup_trials`` trials have completed (there is no best, and no finished curve, before);
prior curves stand in for the study's own finished curves, so with them one completed trial
(a best to beat) is enough. It can decide at every epoch.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner, SuccessiveHalvingPruner
from optuna.pruners._successive_halving import (_completed_rung_key, _estimate_min_resource, _get_competing_values,
                                                _get_current_rung)
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

#: decay rates tried by the power-law fit; the smallest decays slowest (most optimistic tail)
DECAY_RATES = (0.5, 1.0, 2.0)


def _best_so_far(values: list[float], minimize: bool) -> list[float]:
    out, best = [], math.inf if minimize else -math.inf
    for v in values:
        best = min(best, v) if minimize else max(best, v)
        out.append(best)
    return out


def trial_curve(trial: FrozenTrial) -> tuple[list[int], list[float]]:
    """A trial's reported (steps, values) in step order, finite values only (also what studies.csv keeps)."""
    steps = sorted(s for s, v in trial.intermediate_values.items() if v is not None and math.isfinite(v))
    return steps, [trial.intermediate_values[s] for s in steps]


def _gain_after(steps: Sequence[int], values: Sequence[float], step: int, minimize: bool,
                relative: bool = False) -> float | None:
    """How much a finished curve's best-so-far improved after ``step`` (None: it ends by then or
    starts after it); ``relative``: as a fraction of its best-so-far at ``step``."""
    if not steps or steps[-1] <= step:
        return None
    at = max((i for i, si in enumerate(steps) if si <= step), default=None)
    if at is None:
        return None
    bsf = _best_so_far(list(values), minimize)
    gain = abs(bsf[-1] - bsf[at])
    if not relative:
        return gain
    return gain / abs(bsf[at]) if bsf[at] != 0 and math.isfinite(bsf[at]) else None


def extrapolate(steps: list[int], values: list[float], horizon: int, minimize: bool) -> float | None:
    """The most optimistic power-law extrapolation of a best-so-far curve to ``horizon``.

    None when there are fewer than 2 points. Fits whose tail points the wrong way (getting
    worse with time) are skipped; a fit never predicts better than the curve's own trend at
    ``c = min(DECAY_RATES)``."""
    if len(steps) < 2:
        return None
    t = np.maximum(np.asarray(steps, dtype=float), 1.0)  # autoopt reports epochs 1, 2, ...
    y = np.asarray(_best_so_far(values, minimize), dtype=float)
    best = None
    for c in DECAY_RATES:
        x = t ** -c
        design = np.stack([np.ones_like(x), x], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        if (b < 0) if minimize else (b > 0):  # a curve that gets worse: no improvement to come
            continue
        pred = a + b * max(float(horizon), 1.0) ** -c
        if best is None or ((pred < best) if minimize else (pred > best)):
            best = float(pred)
    return best


class LearningCurvePruner(BasePruner):
    """Prune a trial whose optimistic final value (extrapolated or from matched finished
    curves) cannot reach the study's best completed value.

    ``max_resource``: the epochs a full trial trains (None: the longest finished curve).
    ``quantile``: which of the finished trials' remaining improvements to assume (1.0 = the
    largest, the most careful). ``margin``: relative slack on the best before pruning.
    """

    def __init__(self, n_startup_trials: int = 3, n_warmup_steps: int = 1, max_resource: int | None = None,
                 quantile: float = 1.0, margin: float = 0.0,
                 prior_curves: Sequence[tuple[Sequence[int], Sequence[float]]] = ()) -> None:
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be at least 1, got {n_startup_trials}")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be non-negative, got {n_warmup_steps}")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        if max_resource is not None and max_resource < 1:
            raise ValueError(f"max_resource must be at least 1, got {max_resource}")
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.max_resource, self.quantile, self.margin = max_resource, quantile, margin
        #: similar tasks' finished curves (steps, values): only those with at least 2 points
        self.prior_curves = [(list(map(int, st)), list(map(float, v))) for st, v in prior_curves
                             if len(st) == len(v) and len(st) >= 2]

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < (1 if self.prior_curves else self.n_startup_trials):
            return False
        minimize = study.direction == StudyDirection.MINIMIZE
        finals = [t.value for t in done if t.value is not None and math.isfinite(t.value)]
        if not finals:
            return False
        best = min(finals) if minimize else max(finals)
        steps, values = trial_curve(trial)
        if not steps:
            return False
        horizon = self.max_resource
        curves = [trial_curve(t) for t in done]
        if horizon is None:
            horizon = max((s[-1] for s, _ in curves if s), default=step)
        if step >= horizon:
            return False  # its last report: nothing left to save
        current = _best_so_far(values, minimize)[-1]
        # matched curves: how much each finished trial improved after this epoch
        gains = [g for g in (_gain_after(s, v, step, minimize) for s, v in curves) if g is not None]
        # similar tasks: the same fraction of the current value (their metric's scale is theirs)
        for s, v in self.prior_curves:
            g = _gain_after(s, v, step, minimize, relative=True)
            if g is not None:
                gains.append(g * abs(current))
        estimates = []
        if gains:
            gain = float(np.quantile(gains, self.quantile))
            estimates.append(current - gain if minimize else current + gain)
        ext = extrapolate(steps, values, horizon, minimize)
        if ext is not None:
            estimates.append(ext)
        if not estimates:
            return False
        optimistic = min(estimates) if minimize else max(estimates)
        slack = self.margin * abs(best)
        return optimistic > best + slack if minimize else optimistic < best - slack



class AshaPruner(SuccessiveHalvingPruner):
    """Successive halving with the rung rule of ASHA as Ray Tune's ``ASHAScheduler`` applies it
    (``AsyncHyperBandScheduler``, Li et al. 2020): a trial reaching a rung goes on if its value is
    at least the ``1 - 1/reduction_factor`` quantile (linearly interpolated) of the values the
    trials before it recorded there; the first trial at a rung always goes on.

    Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner` keeps a trial only if it is among
    the best ``n // reduction_factor`` of the ``n`` values at the rung, itself included, and the
    best of them while ``n < 2 * reduction_factor``: with reduction factor 3, the 3rd, 4th and 5th
    trial at a rung must each beat every trial before them. On a small budget most rungs see that
    few trials, so Optuna's rule stops more of them than Tune's (the race of docs/benchmarks.md,
    tabular: 42 epochs trained against Tune's 58). Same rungs and options as the parent
    (``min_resource``, ``reduction_factor``, ``min_early_stopping_rate``, ``bootstrap_count``).
    """

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        rung = _get_current_rung(trial)
        value = trial.intermediate_values[step]
        maximize = study.direction == StudyDirection.MAXIMIZE
        trials: list[FrozenTrial] | None = None
        while True:
            if self._min_resource is None:  # "auto": Optuna's estimate from the finished trials
                trials = study.get_trials(deepcopy=False) if trials is None else trials
                self._min_resource = _estimate_min_resource(trials)
                if self._min_resource is None:
                    return False
            if step < self._min_resource * self._reduction_factor ** (self._min_early_stopping_rate + rung):
                return False
            if math.isnan(value):
                return True
            trials = study.get_trials(deepcopy=False) if trials is None else trials
            key = _completed_rung_key(rung)
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
            # Optuna's list of the values at the rung, this one last (``trials`` was read before
            # this trial's own write): the rule compares it with those before it
            competing = _get_competing_values(trials, value, key)
            if len(competing) <= self._bootstrap_count:
                return True
            before = competing[:-1]
            finite_before = [v for v in before if v is not None and not math.isnan(v)]
            if finite_before:
                q = 100.0 * (1.0 - 1.0 / self._reduction_factor) if maximize else 100.0 / self._reduction_factor
                cutoff = float(np.percentile(finite_before, q))
                if (value < cutoff) if maximize else (value > cutoff):
                    return True
            rung += 1
