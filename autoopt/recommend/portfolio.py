"""The top k as a portfolio: the k configurations whose best-of is expected to be best.

As in TaskSet (Metz et al. 2020) and zero-shot AutoML (Auto-sklearn 2.0): the first pick is the
one with the lowest expected regret; each next pick is the one that most lowers the expected
regret of the best configuration tried so far, over *scenarios* (plausible worlds). Where the
evidence is certain every scenario agrees and the portfolio is simply the best k; where it is
uncertain, a second pick that is good exactly where the first may be bad (often another family)
is worth more than a near-copy of the first.

Scenarios: the learned model's trees (each tree is one plausible regret of every optimizer),
blended with the rule prior, whose uncertainty is mostly *which family* wins, so it is drawn
per family (shared by the optimizers of one family) plus a smaller per-optimizer part.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Spread (log scale) of the rule prior's regret: shared within an optimizer family, and per optimizer.
PRIOR_FAMILY_SIGMA = 0.6
PRIOR_OWN_SIGMA = 0.3
#: Scenarios drawn when no learned model gives any.
DEFAULT_SCENARIOS = 64
#: A pick's lower expected best-of counts only beyond this many standard errors (paired over the
#: scenarios) of the difference; within it the candidates tie and the lower expected regret wins.
TIE_Z = 2.0


def prior_scenarios(prior_regret: np.ndarray, families: Sequence[str], n: int, seed: int = 0) -> np.ndarray:
    """(n, len(prior_regret)) draws of the prior regret: lognormal, mean-preserving, family-correlated."""
    rng = np.random.default_rng(seed)
    names = sorted(set(families))
    fam = rng.standard_normal((n, len(names)))
    own = rng.standard_normal((n, len(prior_regret)))
    col = np.array([names.index(f) for f in families], dtype=int)
    log_noise = PRIOR_FAMILY_SIGMA * fam[:, col] + PRIOR_OWN_SIGMA * own
    return np.asarray(prior_regret)[None, :] * np.exp(log_noise - 0.5 * (PRIOR_FAMILY_SIGMA**2 + PRIOR_OWN_SIGMA**2))


def greedy(point: np.ndarray, scenarios: np.ndarray, k: int, first: int | None = None,
           eligible: tuple[int, set[int]] | None = None) -> tuple[list[int], list[float]]:
    """(the indices of the first k picks, the expected best-of regret after each pick).

    ``point``: (n,) expected regret per candidate (decides the first pick and ties);
    ``scenarios``: (n_scenarios, n) regret per scenario and candidate; ``first``: a fixed first pick;
    ``eligible``: ``(m, allowed)``: the first m picks come from ``allowed`` only (while it has any left).
    """
    point = np.asarray(point, dtype=float)
    scenarios = np.asarray(scenarios, dtype=float)
    n = len(point)
    if n == 0:
        return [], []
    if first is None:
        first = int(np.lexsort((np.arange(n), point))[0])
    picks, best_of = [first], [float(scenarios[:, first].mean())]
    current = scenarios[:, first].copy()
    while len(picks) < min(k, n):
        rest = [i for i in range(n) if i not in picks]
        if eligible is not None and len(picks) < eligible[0]:
            rest = [i for i in rest if i in eligible[1]] or rest
        i = _next_pick(point, scenarios, current, rest)
        picks.append(i)
        current = np.minimum(current, scenarios[:, i])
        best_of.append(float(current.mean()))
    return picks, best_of


def _next_pick(point: np.ndarray, scenarios: np.ndarray, current: np.ndarray, rest: list[int]) -> int:
    """The candidate that most lowers the expected best-of; a candidate whose best-of is not lower
    than that by more than TIE_Z standard errors (a difference the scenarios cannot tell) ties with
    it, and of the tied ones the one with the lowest expected regret wins: a near-copy of the
    first pick rather than an optimizer nobody recommends, when the scenarios barely differ."""
    best_of = np.minimum(current[:, None], scenarios[:, rest])  # (scenarios, len(rest))
    value = best_of.mean(axis=0)
    leader = int(np.lexsort((np.arange(len(rest)), point[rest], np.round(value, 9)))[0])
    diff = best_of - best_of[:, [leader]]  # >= 0 on average: how much worse than the leader
    n = diff.shape[0]
    se = diff.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(rest))
    tied = [j for j in range(len(rest)) if diff[:, j].mean() <= TIE_Z * se[j]]
    return rest[min(tied, key=lambda j: (point[rest[j]], value[j], j))]
