"""Rank optimizers for a task: the rule prior, blended with the learned model as evidence grows.

For each catalog optimizer that can run on the task, in regret units (0 = a task's best
configuration, 1 = the median of its lr x optimizer grid):

* prior    p = logistic(sum of fired rule weights - memory penalty), as regret (1 - p) / p  (rules.py)
* model    its best lr (argmin over a fine lr grid), the predicted regret there ± the trees'
           spread, and n_near = kernel-weighted meta-dataset tasks near the query     (model.py);
           each curve shrunk towards the population's (the family-balanced mean of what the
           zoo's tasks measured, leaning on the query's domain where its families agree) by the
           shrinkage cross-validation chose, and all the way far from every task: on a kind of
           task it has never seen, the answer is the best fixed configuration, not a guess
* blend    w r_model + (1 - w) r_prior with w = n_near / (n_near + k): the documents decide where
           there is no evidence (and when the query is outside the zoo's traits), the data where
           there is a lot; ``score`` = 1 / (1 + blended regret).

The answer is a portfolio (portfolio.py): the first pick has the lowest expected regret, each next
pick most lowers the expected best-of. The data may move a rule's favourite out of first place
or out of the top 3 only with strong evidence near the traits (for first place, also a clear
margin); then the answer says which rule and on what evidence (``overrides``: the rule, the
optimizer it favours, the picks that took its place, ``displaced_by``, and their predicted
regrets), and the pick that took the place gives the reason.
Hyperparameters: the rules' values (each with the rule behind it); the learned lr blended in log
space with weight w; the schedule from rule votes blended with the policy the zoo measured.

This module imports neither torch nor scikit-learn: the shipped model is read from plain
arrays (data/model.npz) and the optimizer catalog is torch-free data (autoopt.core.catalog), so
``autoopt recommend`` answers in well under a second.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from autoopt.core.catalog import CATALOG, SCHEDULERS
from autoopt.core.traits import QUERY, TaskTraits, human_bytes, human_count
from autoopt.recommend.features import (
    NUMERIC_FEATURES, TraitEncoding, kernel_weights, numeric_row, population_weights, trait_distances,
)
from autoopt.recommend.portfolio import DEFAULT_SCENARIOS, greedy, prior_scenarios
from autoopt.recommend.rules import CONFIG_KEYS, Advice, OptimizerAdvice, RuleBook, lr_from_rule
from autoopt.recommend.sweep import SWEEP_PARAMS

DATA_DIR = Path(__file__).with_name("data")
MODEL_FILE = "model.npz"
#: Standard deviation of the rule prior (it encodes advice, not measurements).
PRIOR_STD = 0.2
#: Meta-dataset tasks of the query's domain within this many kernel bandwidths (kernel weight
#: >= 0.2) count as "similar studies" in the explanation.
SIMILAR_BANDWIDTHS = 1.8
#: How far the trees' answer moves towards what similar tasks measured (0: trees only, 1: measured only).
SIMILAR_WEIGHT = 0.5
#: Kernel width (in model bandwidths) of the similar-tasks curve: wide, since families differ more than traits say.
SIMILAR_KERNEL = 2.0
#: The most (decades) the lr scaling law moves a similar task's curve.
MAX_LR_SHIFT = 1.5
#: Bytes per stored value of optimizer state (fp32).
STATE_BYTES = 4
#: The data may take first place from the rules' favourite only with at least this learned
#: weight (n_near / (n_near + k)): strong evidence near the queried traits (with the default
#: evidence_k of 0.5, two or more tasks' worth of kernel weight).
STRONG_EVIDENCE_WEIGHT = 0.8
#: ... and at least this many of the query's own domain's tasks that ran the optimizer lie within
#: SIMILAR_BANDWIDTHS of its traits: the kernel evidence adds every task, other domains' too (a
#: recsys query with a few hundred examples gathered 6-11 tasks' worth from cv and tabular tasks
#: with none of its own domain nearby), so the weight alone does not say the evidence is near.
MIN_SIMILAR_TASKS = 2
#: ... and only when its pick beats the rules' favourite in at least this share of the scenarios
#: (0.8 kept the rules first where the data was right: leaving families out, top-1 0.256 vs 0.179 at 0.6).
OVERRIDE_CONFIDENCE = 0.6
#: Evidence (tasks) a library-default lr counts for when blended with the learned lr; an lr
#: from advice (a scaling rule, DCGAN, Lion's README) counts for RULE_LR_K.
DEFAULT_LR_K = 0.25
#: The same for an lr a rule gives: the documents say which lr family to start from, not the
#: lr of this task, and leaving one family out shows the measured lr does better (0.297 -> 0.148 regret).
RULE_LR_K = 0.25
#: How reasons that come from the data cite it.
ZOO_SOURCE = "zoo meta-dataset (autoopt/recommend/data/zoo)"
#: The top positions the rules hold unless the data is strong near the traits (an optimizer the
#: rules alone would not put there enters only with STRONG_EVIDENCE_WEIGHT); an override of them
#: is named in the answer.
OVERRIDE_DEPTH = 3
#: Portfolio positions chosen greedily when every optimizer is asked for (the rest by expected regret).
PORTFOLIO_DEPTH = 5
#: A warm start runs the first pick at its lr and at lr / LR_BRACKET and lr * LR_BRACKET before
#: anything else: leaving whole zoo families out, the first pick's lr misses the held-out task's
#: best grid lr by 0.40 decades RMS (bench/results/recommender-zoo), so its lr is the answer's most
#: uncertain part; half a decade each side is also the meta-dataset's lr grid step.
LR_BRACKET = 10 ** 0.5


def user_dir() -> Path:
    """Where ``meta fit`` writes a refreshed model and studies add rows (AUTOOPT_RECOMMEND_DIR)."""
    return Path(os.environ.get("AUTOOPT_RECOMMEND_DIR") or Path.home() / ".autoopt" / "recommend")


def default_model_path() -> Path:
    """The user's fitted model if there is one, else the shipped one."""
    mine = user_dir() / MODEL_FILE
    return mine if mine.is_file() else DATA_DIR / MODEL_FILE


# ============================================================================ catalog
class CatalogView:
    """The one catalog (:mod:`autoopt.core.catalog`) as the plain dicts the recommender's output is made of."""

    origin = "autoopt.core.catalog"

    def __init__(self) -> None:
        self.optimizers = {name: spec.to_dict() for name, spec in CATALOG.items()}
        self.schedulers = {name: spec.to_dict() for name, spec in SCHEDULERS.items()}

    @classmethod
    @lru_cache(maxsize=1)
    def current(cls) -> "CatalogView":
        return cls()

    @property
    def names(self) -> list[str]:
        return list(self.optimizers)

    def hyperparam(self, optimizer: str, name: str) -> dict[str, Any] | None:
        for hp in self.optimizers[optimizer]["hyperparams"]:
            if hp["name"] == name:
                return hp
        return None

    def applicable(self, name: str, traits: TaskTraits) -> tuple[bool, str | None]:
        """:meth:`OptimizerSpec.applicable` for what the query says (its model is assumed to have matrices)."""
        return CATALOG[name].applicable(sparse_gradients=traits.sparse_gradients, full_batch=bool(traits.full_batch))


# ============================================================================ compiled model
#: The best-lr search: step (decades) of the fine lr grid, and the half-width (decades) of the
#: window each tree's curve is averaged over before the argmin, so the pick sits inside a good
#: plateau rather than at the edge of a cliff (just below divergence).
LR_STEP = 0.05
LR_SMOOTH = 0.25
#: The suggested lr range: where the smoothed predicted regret is within this of the best.
LR_RANGE_MARGIN = 0.15
#: How far outside the meta-dataset's trait range a query may be before the answer says it is
#: extrapolating: log2 batch size, log10 parameters, log10 examples.
EXTRAPOLATION_MARGIN = {0: 1.0, 2: 0.5, 3: 0.5}
#: The learned model's weight is multiplied by this when extrapolating: the rules decide.
EXTRAPOLATION_WEIGHT = 0.15
#: What the regret numbers in an answer's reasons mean.
REGRET_SCALE = "0 = a task's best configuration, 1 = its grid's median"


@dataclass
class ModelAnswer:
    """The learned model's view of one optimizer for one query (regret: 0 = best, 1 = a grid's median)."""

    score: float | None
    score_std: float | None
    lr: float | None
    lr_low: float | None
    lr_high: float | None
    n_near: float
    weight: float
    regret: float | None = None
    regret_std: float | None = None
    per_tree: np.ndarray | None = None
    lr_weight: float = 0.0


class ModelFileError(ValueError):
    """A file given as a recommender model is not one."""


class CompiledModel:
    """A fitted :class:`~autoopt.recommend.model.RegretModel` evaluated with numpy only.

    Loaded from ``np.load`` (no pickle); its per-tree predictions equal the estimator's (tested).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], origin: str = "memory"):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.origin = origin
        self.encoding = TraitEncoding.from_arrays(self.arrays)
        self.bandwidth, self.domain_distance, self.evidence_k, self.unknown_distance, n_rows = (
            float(x) for x in self.arrays["params"]
        )
        self.n_rows = int(n_rows)
        self.lr_range = {o: tuple(r) for o, r in zip(self.encoding.optimizers, self.arrays["lr_range"].astype(float))}
        self.instances = [str(i) for i in self.arrays["instances"]]
        self.instance_z = np.atleast_2d(self.arrays["instance_z"]).astype(float)
        self.instance_numeric = np.atleast_2d(self.arrays["instance_numeric"]).astype(float)
        self.instance_domain = self.arrays["instance_domain"].astype(str)
        self.instance_family = self.arrays["instance_family"].astype(str)
        self.best_regret = np.atleast_2d(self.arrays["instance_best_regret"]).astype(float)
        self.best_lr = np.atleast_2d(self.arrays["instance_best_lr"]).astype(float)
        self.o_index = {o: j for j, o in enumerate(self.encoding.optimizers)}
        self.n_trees = len(self.arrays["regret_roots"])
        # what similar tasks measured, per lr (models saved before these existed have only the trees)
        self.curves = self.arrays.get("instance_curves")
        self.curve_log_lr = self.arrays.get("curve_log_lr")
        self.lr_slope = self.arrays.get("lr_slope")
        # the population (models saved before it existed: none, and no shrinkage towards it)
        self.pop_domain_weight = {str(d): float(w) for d, w in zip(self.arrays.get("pop_domains", np.zeros(0, dtype=str)),
                                                                   self.arrays.get("pop_domain_weight", np.zeros(0)))}
        self.shrinkage = float(self.arrays["shrinkage"]) if "shrinkage" in self.arrays else None

    @classmethod
    def load(cls, path: str | Path) -> "CompiledModel":
        """The model saved in ``path``; :class:`ModelFileError` if that is not one (never unpickles)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls({k: z[k] for k in z.files}, origin=str(path))
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, say what it is not
            if "pickle" in str(exc):
                reason = "it holds pickled objects, which autoopt never loads"
            elif isinstance(exc, KeyError):
                reason = f"it has no {exc} array"
            else:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"{path} is not a recommender model saved by `autoopt meta fit` (model.npz): {reason}"
            ) from None

    @classmethod
    def from_estimator(cls, estimator: Any) -> "CompiledModel":
        return cls(estimator.to_arrays())

    @property
    def optimizers(self) -> list[str]:
        return self.encoding.optimizers

    @property
    def families(self) -> list[str]:
        return sorted(set(self.instance_family))

    def per_tree(self, X: np.ndarray) -> np.ndarray:
        """Per-tree predictions, shape (n_trees, n_rows); same float32 comparisons as sklearn."""
        a = self.arrays
        left, right = a["regret_left"], a["regret_right"]
        feature, threshold, value = a["regret_feature"], a["regret_threshold"], a["regret_value"]
        X32 = np.asarray(X, dtype=np.float32).astype(np.float64)
        n = X32.shape[0]
        node = np.repeat(a["regret_roots"][:, None], n, axis=1)
        cols = np.broadcast_to(np.arange(n)[None, :], node.shape)
        active = left[node] != -1
        while active.any():
            f = np.where(active, feature[node], 0)
            go_left = X32[cols, f] <= threshold[node]
            node = np.where(active, np.where(go_left, left[node], right[node]), node)
            active = left[node] != -1
        return value[node].astype(np.float64)

    def design(self, traits: Any, optimizers: list[str], lrs: Iterable[float]) -> np.ndarray:
        numeric = numeric_row(traits)
        lrs = list(lrs)
        rows = np.repeat(numeric[None, :], len(lrs), axis=0)
        return self.encoding.design(rows, [_domain(traits)] * len(lrs), optimizers, lrs)

    def evidence(self, traits: Any, optimizer: str, *, any_domain: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
        """(n_near, indices of the tasks that ran this optimizer, their trait distances).

        ``any_domain``: count tasks of every domain alike (the evidence for placing the lr,
        which follows batch, model and data size more than the domain's name).
        """
        j = self.o_index.get(optimizer)
        if j is None:
            return 0.0, np.zeros(0, dtype=int), np.zeros(0)
        idx = np.flatnonzero(np.isfinite(self.best_regret[:, j]))
        if not len(idx):
            return 0.0, idx, np.zeros(0)
        z = self.encoding.standardise(numeric_row(traits))[0]
        d = trait_distances(
            z, _domain(traits), self.instance_z[idx], self.instance_domain[idx],
            0.0 if any_domain else self.domain_distance, self.unknown_distance,
        )
        return float(kernel_weights(d, self.bandwidth).sum()), idx, d

    def extrapolating(self, traits: Any) -> list[dict[str, Any]]:
        """The query's traits that lie outside the meta-dataset's range (by more than a margin), and
        a domain none of its tasks has: its kernel evidence is only the zoo's size seen from afar
        (every task at about two bandwidths), not tasks like it, so the rules decide there."""
        q = numeric_row(traits)
        out = []
        domains = sorted(set(self.instance_domain))
        if _domain(traits) not in domains:
            out.append({"trait": "domain", "value": _domain(traits), "range": domains})
        for col, margin in EXTRAPOLATION_MARGIN.items():
            if not np.isfinite(q[col]):
                continue
            lo, hi = np.nanmin(self.instance_numeric[:, col]), np.nanmax(self.instance_numeric[:, col])
            if q[col] < lo - margin or q[col] > hi + margin:
                base = 2.0 if col == 0 else 10.0
                out.append({"trait": NUMERIC_FEATURES[col].split("_", 1)[1], "value": _sig(base ** q[col]),
                            "range": [_sig(base ** lo), _sig(base ** hi)]})
        return out

    def params_range(self) -> tuple[float, float] | None:
        """The smallest and largest model (parameters) the meta-dataset learned from."""
        col = NUMERIC_FEATURES.index("log10_params")
        known = self.instance_numeric[:, col][np.isfinite(self.instance_numeric[:, col])]
        return (_sig(10 ** known.min()), _sig(10 ** known.max())) if known.size else None

    def lr_curves(self, traits: Any, optimizers: list[str],
                  shrinkage: float | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """optimizer -> (log10 lr grid, per-scenario smoothed predicted regret (n_trees, n_lr)).

        ``shrinkage``: instead of the model's own (what cross-validation tries)."""
        return self.shrunk(self.curve_parts(traits, optimizers), self.shrink_weight(traits, shrinkage))

    def curve_parts(self, traits: Any, optimizers: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """optimizer -> (log10 lr grid, the trees' smoothed curves centred on what similar tasks
        measured, the population's curves or None): :meth:`shrunk` blends the two."""
        known = [o for o in optimizers if o in self.o_index]
        grids = {o: np.arange(self.lr_range[o][0], self.lr_range[o][1] + LR_STEP / 2, LR_STEP) for o in known}
        if not known:
            return {}
        opts = [o for o in known for _ in grids[o]]
        lrs = np.concatenate([10 ** grids[o] for o in known])
        per_tree = self.per_tree(self.design(traits, opts, lrs))
        similar = self.similar_curves(traits, known, grids, self.n_trees) if SIMILAR_WEIGHT > 0 else {}
        population = self.population_curves(traits, known, grids, self.n_trees) if self.shrinkage is not None else {}
        out, start = {}, 0
        half = int(round(LR_SMOOTH / LR_STEP))
        kernel = np.ones(2 * half + 1)
        for o in known:
            n = len(grids[o])
            raw = per_tree[:, start:start + n]
            start += n
            padded = np.pad(raw, ((0, 0), (half, half)), mode="edge")
            smooth = np.stack([np.convolve(row, kernel, mode="valid") / kernel.sum() for row in padded])
            if o in similar:  # scenario s: tree s's deviation around a similar task's measured curve
                smooth = smooth + SIMILAR_WEIGHT * (similar[o] - smooth.mean(axis=0, keepdims=True))
            out[o] = (grids[o], smooth, population.get(o))
        return out

    @staticmethod
    def shrunk(parts: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
               weight: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The model's curves pulled towards the population's by ``weight`` (scenario s: tree s and task s)."""
        return {o: (grid, local if pop is None or weight <= 0 else (1.0 - weight) * local + weight * pop)
                for o, (grid, local, pop) in parts.items()}

    def similar_curves(self, traits: Any, optimizers: list[str], grids: Mapping[str, np.ndarray],
                       n: int) -> dict[str, np.ndarray]:
        """optimizer -> (n, len(grids[optimizer])): measured regret curves of ``n`` zoo tasks drawn
        by trait similarity (every family weighs as one task, so a family with many instances does
        not outvote the rest), on ``grids[optimizer]`` (log10 lr). Draw s is the same task for
        every optimizer, so the portfolio sees which optimizers fail together. On a kind of task
        the zoo has never seen, this falls back to what worked across all of them."""
        if self.curves is None or self.curve_log_lr is None:
            return {}
        z = self.encoding.standardise(numeric_row(traits))[0]
        d = trait_distances(z, _domain(traits), self.instance_z, self.instance_domain, self.domain_distance,
                            self.unknown_distance)
        w = kernel_weights(d, SIMILAR_KERNEL * self.bandwidth) + 1e-9
        _, inverse, counts = np.unique(self.instance_family, return_inverse=True, return_counts=True)
        return self._draw(w / counts[inverse], z, optimizers, grids, n)

    def population_curves(self, traits: Any, optimizers: list[str], grids: Mapping[str, np.ndarray],
                          n: int) -> dict[str, np.ndarray]:
        """optimizer -> (n, len(grids[optimizer])): measured regret curves of ``n`` zoo tasks drawn
        from the population the query is judged against: every family weighing as one task, the
        query's domain's families weighing more where they agreed with each other when fitted
        (``pop_domain_weight``; :func:`autoopt.recommend.model.population_weights`). Their mean
        is the curve whose argmin over (optimizer, lr) is the best *fixed* configuration for the
        query's domain; draw s is the same task for every optimizer, as in :meth:`similar_curves`."""
        if self.curves is None or self.curve_log_lr is None:
            return {}
        z = self.encoding.standardise(numeric_row(traits))[0]
        return self._draw(self.population_weights(traits), z, optimizers, grids, n)

    def population_weights(self, traits: Any) -> np.ndarray:
        """Weights of the meta-dataset's tasks in the query's population (sum 1)."""
        domain = _domain(traits)
        return population_weights(self.instance_family, self.instance_domain, domain,
                                  self.pop_domain_weight.get(domain, 0.0))

    def shrink_weight(self, traits: Any, shrinkage: float | None = None) -> float:
        """How far the answer is pulled towards the population's curves: ``shrinkage`` with
        evidence near the query, rising to 1 (the population only) as the evidence vanishes
        (kernel-weighted tasks n: 1 - (1 - shrinkage) n / (n + evidence_k)). 0 for a model saved
        before populations existed."""
        shrinkage = self.shrinkage if shrinkage is None else shrinkage
        if shrinkage is None or self.curves is None:
            return 0.0
        z = self.encoding.standardise(numeric_row(traits))[0]
        d = trait_distances(z, _domain(traits), self.instance_z, self.instance_domain, self.domain_distance,
                            self.unknown_distance)
        n = float(kernel_weights(d, self.bandwidth).sum())
        return float(1.0 - (1.0 - shrinkage) * n / (n + self.evidence_k))

    def _draw(self, weights: np.ndarray, z: np.ndarray, optimizers: list[str], grids: Mapping[str, np.ndarray],
              n: int) -> dict[str, np.ndarray]:
        """``n`` tasks drawn by ``weights`` (systematic resampling: deterministic, and the same tasks
        for every optimizer that all ran), each curve moved to the query's traits by the learned
        lr scaling law, on ``grids[optimizer]``."""
        ran_all = np.isfinite(self.curves).all(axis=2)  # (tasks, optimizers)
        out = {}
        for o in optimizers:
            j = self.o_index.get(o)
            if j is None or not ran_all[:, j].any():
                continue
            ran = ran_all[:, j]
            p = np.where(ran, weights, 0.0)
            if not p.sum() > 0:
                p = ran.astype(float)
            edges = np.cumsum(p) / p.sum()
            picks = np.minimum(np.searchsorted(edges, (np.arange(n) + 0.5) / n), len(p) - 1)
            shift = np.zeros(n) if self.lr_slope is None else np.clip(
                (np.nan_to_num(z, nan=0.0)[None, :] - np.nan_to_num(self.instance_z[picks], nan=0.0)) @ self.lr_slope[j],
                -MAX_LR_SHIFT, MAX_LR_SHIFT)
            out[o] = np.stack([np.interp(grids[o] - dx, self.curve_log_lr, self.curves[i, j, :])
                               for i, dx in zip(picks, shift)])
        return out

    def best_lrs(self, traits: Any, optimizers: list[str],
                 curves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, ModelAnswer]:
        """Each optimizer's predicted best lr, its range, regret and uncertainty (no evidence
        weighting); ``curves``: :meth:`lr_curves` already computed."""
        out = {}
        for o, (grid, curves) in (self.lr_curves(traits, optimizers) if curves is None else curves).items():
            mean = curves.mean(axis=0)
            i = int(np.argmin(mean))
            ok = mean <= mean[i] + LR_RANGE_MARGIN
            lo = i
            while lo > 0 and ok[lo - 1]:
                lo -= 1
            hi = i
            while hi < len(ok) - 1 and ok[hi + 1]:
                hi += 1
            regret = float(mean[i])
            out[o] = ModelAnswer(
                score=1.0 / (1.0 + regret), score_std=float(curves[:, i].std()) / (1.0 + regret) ** 2,
                lr=float(10 ** grid[i]), lr_low=float(10 ** grid[lo]), lr_high=float(10 ** grid[hi]),
                n_near=0.0, weight=0.0, regret=regret, regret_std=float(curves[:, i].std()), per_tree=curves[:, i],
            )
        return out

    def answer(self, traits: Any, optimizers: list[str]) -> dict[str, ModelAnswer]:
        out = {o: ModelAnswer(None, None, None, None, None, 0.0, 0.0) for o in optimizers}
        for o, m in self.best_lrs(traits, optimizers).items():
            m.n_near = self.evidence(traits, o)[0]
            m.weight = m.n_near / (m.n_near + self.evidence_k)
            n_lr = self.evidence(traits, o, any_domain=True)[0]
            m.lr_weight = n_lr / (n_lr + self.evidence_k)
            out[o] = m
        return out


def _sig(v: float) -> float:
    """A trait value for display: whole counts as integers, small values to 3 significant digits."""
    return float(round(v)) if v >= 100 else float(f"{v:.3g}")


def _domain(traits: Any) -> str:
    return traits.domain if isinstance(traits, TaskTraits) else str(traits["domain"])


# ============================================================================ answers
@dataclass
class Recommendation:
    """One ranked optimizer with everything needed to use it and to trust it."""

    rank: int
    optimizer: str
    display: str
    family: str
    score: float
    score_std: float
    prior_score: float
    learned_score: float | None
    learned_weight: float
    hyperparameters: dict[str, Any]
    memory: dict[str, Any]
    reasons: list[dict[str, Any]]
    hparam_sources: dict[str, str]
    evidence: dict[str, Any]
    trial_config: dict[str, Any]
    predicted_regret: float | None = None
    predicted_regret_std: float | None = None
    portfolio_best_of: float | None = None
    scenarios: np.ndarray | None = None
    #: the catalog's search range for this optimizer's lr (the warm start's bracket stays inside)
    lr_bounds: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "optimizer": self.optimizer,
            "display": self.display,
            "family": self.family,
            "score": round(self.score, 4),
            "score_std": round(self.score_std, 4),
            "prior_score": round(self.prior_score, 4),
            "learned_score": None if self.learned_score is None else round(self.learned_score, 4),
            "learned_weight": round(self.learned_weight, 4),
            "hyperparameters": self.hyperparameters,
            "memory": self.memory,
            "reasons": self.reasons,
            "hparam_sources": self.hparam_sources,
            "evidence": self.evidence,
            "trial_config": self.trial_config,
            "predicted_regret": None if self.predicted_regret is None else round(self.predicted_regret, 4),
            "predicted_regret_std": None if self.predicted_regret_std is None else round(self.predicted_regret_std, 4),
            "portfolio_best_of": None if self.portfolio_best_of is None else round(self.portfolio_best_of, 4),
        }


@dataclass
class RecommendationSet:
    """The answer to one query: ranked recommendations plus notes and what was left out."""

    traits: TaskTraits
    recommendations: list[Recommendation]
    notes: list[dict[str, Any]]
    excluded: dict[str, str]
    unmapped: list[dict[str, Any]]
    model: dict[str, Any]
    fired_rules: list[str] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    extrapolating: list[dict[str, Any]] = field(default_factory=list)

    def __iter__(self):
        return iter(self.recommendations)

    def __len__(self) -> int:
        return len(self.recommendations)

    def __getitem__(self, i: int) -> Recommendation:
        return self.recommendations[i]

    @property
    def optimizers(self) -> list[str]:
        return [r.optimizer for r in self.recommendations]

    def warm_start(self, k: int = 3) -> list[dict[str, Any]]:
        """The first ``k`` trial configurations a warm-started study runs: each recommendation in
        rank order at its lr, then at lr / LR_BRACKET and lr * LR_BRACKET (clipped into the
        catalog's lr range; a bracket that clipping collapses is left out)."""
        out: list[dict[str, Any]] = []
        for r in self.recommendations:
            lr = r.trial_config["optimizer_params"].get("lr")
            low, high = r.lr_bounds or (0.0, math.inf)
            lrs = [None] if lr is None else [lr, *(float(f"{min(max(x, low), high):.3g}")
                                                   for x in (lr / LR_BRACKET, lr * LR_BRACKET))]
            for x in dict.fromkeys(lrs):  # a bracket that clipping made a repeat is left out
                if len(out) >= k:
                    return out
                cfg = copy.deepcopy(r.trial_config)
                if x is not None:
                    cfg["optimizer_params"]["lr"] = x
                out.append(cfg)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "traits": self.traits.to_dict(QUERY),
            "recommendations": [r.to_dict() for r in self.recommendations],
            "warm_start": self.warm_start(3),
            "notes": self.notes,
            "excluded": self.excluded,
            "unmapped": self.unmapped,
            "fired_rules": self.fired_rules,
            "model": self.model,
            "overrides": self.overrides,
            "extrapolating": self.extrapolating,
        }


# ============================================================================ the recommender
class Recommender:
    """Rules + (optional) learned model + catalog -> ranked, ready-to-use recommendations."""

    def __init__(
        self,
        rules: RuleBook | None = None,
        model: CompiledModel | Any | None = None,
        catalog: CatalogView | None = None,
    ):
        self.rules = rules or RuleBook.load()
        if model is not None and not isinstance(model, CompiledModel):
            model = CompiledModel.from_estimator(model)  # a fitted RegretModel
        self.model: CompiledModel | None = model
        self.catalog = catalog or CatalogView.current()

    @classmethod
    def default(cls, model_path: str | Path | None = None) -> "Recommender":
        return _default_recommender(str(model_path) if model_path else str(default_model_path()))

    # --- scoring -----------------------------------------------------------------------
    def rank(self, traits: Any, top: int | None = 5, *, candidates: Iterable[str] | None = None,
             **overrides: Any) -> RecommendationSet:
        """Recommendations for ``traits`` (TaskTraits, Task, dict or keywords), in portfolio order.

        The first is the configuration with the lowest expected regret; each next one is the one
        that most lowers the expected regret of the best of those before it (:mod:`portfolio`).
        ``candidates``: only these optimizers (e.g. the ones an evaluation can look up).
        """
        t = TaskTraits.from_any(traits, **overrides) if not isinstance(traits, TaskTraits) or overrides else traits
        advice = self.rules.advise(t, self.catalog.names)
        excluded: dict[str, str] = {}
        feasible: list[str] = []
        allowed = set(candidates) if candidates is not None else None
        for name in self.catalog.names:
            if allowed is not None and name not in allowed:
                continue
            ok, why = self.catalog.applicable(name, t)
            (feasible.append(name) if ok else excluded.__setitem__(name, why or "not applicable"))
        answers = self.model.answer(t, feasible) if self.model is not None else {}
        extrapolating = self.model.extrapolating(t) if self.model is not None else []
        if extrapolating:
            for m in answers.values():
                m.weight *= EXTRAPOLATION_WEIGHT
                m.lr_weight *= EXTRAPOLATION_WEIGHT
        recs = [self._recommend_one(t, advice, advice.optimizers[name], answers.get(name)) for name in feasible]
        k = PORTFOLIO_DEPTH if top is None else top
        order, best_of = self._portfolio(recs, k)
        ruled, _ = self._portfolio(recs, k, prior_only=True)
        held: dict[str, Any] | None = None
        kept: set[str] = set()  # top picks the guidance kept where the data alone would not have put them
        if order:
            # the guidance keeps first place unless the data near these traits is strong and clear,
            # and its top OVERRIDE_DEPTH unless the data is strong near the traits for each newcomer
            first = order[0] if order[0] == ruled[0] or self._data_is_sure(t, recs, order[0], ruled[0]) else ruled[0]
            depth = min(OVERRIDE_DEPTH, k)
            allowed = set(ruled[:depth]) | {i for i, r in enumerate(recs) if self._strong_evidence(t, r)}
            if first != order[0] or not set(order[:depth]) <= allowed:
                wanted = order
                order, best_of = self._portfolio(recs, k, first=first, eligible=(depth, allowed))
                held = self._held_back_note(t, recs, wanted, order, depth, bool(extrapolating))
                kept = {recs[i].optimizer for i in order[:depth] if i not in wanted[:depth]}
        recs = [recs[i] for i in order]
        for i, r in enumerate(recs, 1):
            r.rank = i
            r.portfolio_best_of = best_of[i - 1] if i <= len(best_of) else None
            if r.learned_weight > 0:
                r.reasons.append({
                    "rule": "zoo-evidence", "weight": 0.0, "sources": [ZOO_SOURCE], "source_ids": [],
                    "text": f"The zoo's tasks near these traits (evidence {r.evidence.get('n_near', 0.0):.1f} tasks, "
                            f"weight {r.learned_weight:.2f}) predict regret {r.predicted_regret:.2f} at lr "
                            f"{r.hyperparameters['lr']:.3g} ({REGRET_SCALE}).",
                })
            if r.optimizer in kept and i <= len(best_of):
                # not chosen for its gain: saying "it does well where the ones before it may not" would be false
                change = (f"with it the expected regret of the best of the first {i} goes from {best_of[i - 2]:.3f} "
                          f"to {best_of[i - 1]:.3f}" if i > 1 else f"its expected regret is {best_of[0]:.3f}")
                r.reasons.append({
                    "rule": "guidance-kept", "weight": 0.0, "sources": [ZOO_SOURCE], "source_ids": [],
                    "text": f"Kept in the top {min(OVERRIDE_DEPTH, k)} by the guidance: the zoo's data alone would not "
                            f"put it there ({change}).",
                })
            elif 1 < i <= len(best_of):
                r.reasons.append({
                    "rule": "portfolio", "weight": 0.0, "sources": [ZOO_SOURCE if self.model else "rule prior"],
                    "source_ids": [],
                    "text": f"Portfolio pick: with it the expected regret of the best of the first {i} falls from "
                            f"{best_of[i - 2]:.3f} to {best_of[i - 1]:.3f} (it does well where the ones before it may not).",
                })
        overrides_found = self._overrides(t, advice, recs, [r.optimizer for r in recs], self._names(ruled, feasible))
        by_taker: dict[str, list[dict[str, Any]]] = {}
        for o in overrides_found:  # the reason goes with the pick that took the rule's place
            by_taker.setdefault(o["instead"], []).append(o)
        for r in recs:
            if r.optimizer in by_taker:
                r.reasons.insert(0, {
                    "rule": "data-override", "text": _override_text(by_taker[r.optimizer]),
                    "sources": [ZOO_SOURCE], "source_ids": [], "weight": 0.0,
                    "overrides": [o["rule"] for o in by_taker[r.optimizer]],
                })
        notes = [{"text": note, "rule": rule.id, "sources": self.rules.source_files(rule)} for note, rule in advice.notes]
        if held:
            notes.insert(0, held)
        if extrapolating:
            what = "; ".join(f"domain {e['value']} (meta-dataset: {', '.join(e['range'])})" if e["trait"] == "domain" else
                             f"{e['trait']} {e['value']:.4g} (meta-dataset {e['range'][0]:.3g}-{e['range'][1]:.3g})"
                             for e in extrapolating)
            notes.insert(0, {"text": f"Extrapolating: {what} lies outside the tasks the model learned from, "
                                     "so the rules decide (the learned model's weight is cut to "
                                     f"{EXTRAPOLATION_WEIGHT:.0%}).", "rule": "extrapolation", "sources": []})
        unsized = self._unsized_note(t, recs)
        if unsized:
            notes.insert(0, unsized)
        if top is not None:
            recs = recs[:top]
        return RecommendationSet(
            traits=t,
            recommendations=recs,
            notes=notes,
            excluded=excluded,
            unmapped=[
                {"name": name, "rule": rule.id, "why": why} for name, rule, why in _dedupe_unmapped(advice.unmapped)
            ],
            model={
                "fitted": self.model is not None,
                "origin": self.model.origin if self.model else None,
                "meta_rows": self.model.n_rows if self.model else 0,
                "tasks": len(self.model.instances) if self.model else 0,
                "families": len(self.model.families) if self.model else 0,
                "evidence_k": self.model.evidence_k if self.model else None,
                "catalog": self.catalog.origin,
                "rules": self.rules.origin,
            },
            fired_rules=[r.id for r in advice.fired],
            overrides=overrides_found,
            extrapolating=extrapolating,
        )

    @staticmethod
    def _names(order: list[int], feasible: list[str]) -> list[str]:
        return [feasible[i] for i in order]

    def _data_is_sure(self, traits: TaskTraits, recs: list[Recommendation], mine: int, ruled: int) -> bool:
        """May the data's pick take first place from the rules' favourite? Only with strong evidence
        near the traits (learned weight, and a query that says its model or data size) and a clear
        margin: it beats the favourite in at least OVERRIDE_CONFIDENCE of the scenarios (a near tie
        keeps the documents' answer)."""
        if not self._strong_evidence(traits, recs[mine]):
            return False
        scenarios = self._scenarios(recs)
        return float(np.mean(scenarios[:, mine] < scenarios[:, ruled])) >= OVERRIDE_CONFIDENCE

    @staticmethod
    def _strong_evidence(traits: TaskTraits, rec: Recommendation) -> bool:
        """Is the data strong enough near the traits to put ``rec`` where the rules would not?"""
        if rec.learned_weight < STRONG_EVIDENCE_WEIGHT:
            return False
        if rec.evidence.get("similar_studies", 0) < MIN_SIMILAR_TASKS:  # the weight came from afar
            return False
        # the zoo's tasks are small: a query that does not say its size is not near them
        return traits.n_params is not None or traits.dataset_size is not None

    def _scenarios(self, recs: list[Recommendation], prior_only: bool = False) -> np.ndarray:
        """(scenarios, len(recs)) regret: the learned scenarios blended with the rule prior's, per learned weight."""
        prior = np.array([_prior_regret(r.prior_score) for r in recs])
        # the rules' own portfolio is the one the rules alone give (with or without a model)
        n = self.model.n_trees if self.model is not None and not prior_only else DEFAULT_SCENARIOS
        scenarios = prior_scenarios(prior, [r.family or r.optimizer for r in recs], n)
        if not prior_only:
            w = np.array([r.learned_weight for r in recs])
            trees = np.stack([r.scenarios if r.scenarios is not None else np.full(n, prior[i]) for i, r in enumerate(recs)], axis=1)
            scenarios = w[None, :] * trees + (1 - w[None, :]) * scenarios
        return scenarios

    def _portfolio(self, recs: list[Recommendation], k: int, prior_only: bool = False,
                   first: int | None = None, eligible: tuple[int, set[int]] | None = None) -> tuple[list[int], list[float]]:
        """Indices of ``recs`` in portfolio order (the first ``k`` greedy, the rest by expected regret)."""
        if not recs:
            return [], []
        scenarios = self._scenarios(recs, prior_only)
        point = (np.array([_prior_regret(r.prior_score) for r in recs]) if prior_only
                 else np.array([r.predicted_regret for r in recs]))
        picks, best_of = greedy(point, scenarios, k, first=first, eligible=eligible)
        rest = sorted((i for i in range(len(recs)) if i not in picks), key=lambda i: (point[i], recs[i].optimizer))
        return picks + rest, best_of

    @staticmethod
    def _held_back_note(t: TaskTraits, recs: list[Recommendation], wanted: list[int], final: list[int], depth: int,
                        extrapolating: bool) -> dict[str, Any] | None:
        """What the data alone would have ranked higher and the guidance kept out, and why: the
        user learns what to tell the recommender (the model's size) to let the data decide."""
        first = wanted[0] != final[0]
        newcomers = [i for i in wanted[:depth] if i not in final[:depth]] or ([wanted[0]] if first else [])
        # only what the data measured: a pick the zoo never ran got its place from the prior's spread
        newcomers = [i for i in newcomers if recs[i].learned_weight > 0]
        if not newcomers:
            return None
        said = ", ".join(f"{recs[i].optimizer} (predicted regret {recs[i].predicted_regret:.2f} at lr "
                         f"{recs[i].hyperparameters['lr']:.3g})" for i in newcomers)
        where = "first" if first and newcomers == [wanted[0]] else f"in the top {depth}"
        if extrapolating:
            why = "the query lies outside the traits of the zoo's tasks"
        elif t.n_params is None and t.dataset_size is None:
            why = ("the query does not give the model's or the data's size, and the zoo's tasks are small "
                   "(give --params or --dataset-size to let measured evidence decide)")
        else:
            w = max(recs[i].learned_weight for i in newcomers)
            similar = max(recs[i].evidence.get("similar_studies", 0) for i in newcomers)
            if w < STRONG_EVIDENCE_WEIGHT:
                why = f"the evidence near these traits is weak (learned weight {w:.2f}, below {STRONG_EVIDENCE_WEIGHT})"
            elif similar < MIN_SIMILAR_TASKS:
                why = (f"{similar or 'none'} of the zoo's {t.domain} tasks {'is' if similar == 1 else 'are'} near these "
                       f"traits (at least {MIN_SIMILAR_TASKS} needed; the rest of its evidence comes from other domains' tasks)")
            else:
                why = "the data's pick does not beat the guidance's clearly enough"
        return {"text": f"Guidance kept: the zoo's data would put {said} {where}; it does not override the "
                        f"documents here because {why}.", "rule": "data-held-back", "sources": [ZOO_SOURCE]}

    def _unsized_note(self, t: TaskTraits, recs: list[Recommendation]) -> dict[str, Any] | None:
        """A query without the model's size gets learned lrs of the zoo's small models: say so, since
        a large model trained at them may diverge (with the size given, a model outside the zoo's
        range is an extrapolation and the rules set the lr)."""
        if self.model is None or t.n_params is not None or not recs or recs[0].learned_weight <= 0:
            return None
        span = self.model.params_range()
        if span is None:
            return None
        return {"text": f"The learned lrs come from the meta-dataset's models of {human_count(span[0])}-{human_count(span[1])} "
                        "parameters (the shipped zoo's runs are 60-300 steps); this query does not give the model's size. "
                        "For a larger model give it (`--params 100M`; traits n_params): outside that range the "
                        "rules set the lr.", "rule": "model-size-unstated", "sources": [ZOO_SOURCE]}

    def _overrides(self, t: TaskTraits, advice: Advice, recs: list[Recommendation], final: list[str],
                   ruled: list[str]) -> list[dict[str, Any]]:
        """Rules whose favourite the rules alone would put first (or in the top 3) and the data moved out."""
        if self.model is None or not final:
            return []
        by_name = {r.optimizer: r for r in recs}
        weights: dict[str, dict[str, float]] = {}
        for name, a in advice.optimizers.items():
            for c in a.contributions:
                weights.setdefault(c.rule.id, {})[name] = c.weight
        out = []
        k = min(OVERRIDE_DEPTH, len(final))
        for rule in advice.fired:
            w = {o: v for o, v in weights.get(rule.id, {}).items() if v > 0 and o in by_name}
            if not w:
                continue
            favoured = {o for o, v in w.items() if v == max(w.values())}
            first_lost = ruled[0] in favoured and final[0] not in favoured
            top_lost = bool(favoured & set(ruled[:k])) and not favoured & set(final[:k])
            if not (first_lost or top_lost):
                continue
            fav = ruled[0] if first_lost else sorted(favoured & set(ruled[:k]))[0]
            theirs = by_name[fav]
            # who took its place: the first pick, or the top-k picks the rules alone would not have made
            took = [final[0]] if first_lost else [o for o in final[:k] if o not in ruled[:k]] or [final[0]]
            near = by_name[took[0]].evidence.get("n_near", 0.0)
            similar = by_name[took[0]].evidence.get("similar_studies", 0)
            evidence = f"on the zoo's tasks near these traits (evidence {near:.1f} tasks, {similar} of them {t.domain} tasks like it)"
            if first_lost:
                lr = by_name[took[0]].hyperparameters["lr"]
                why = (f"{evidence} {took[0]} at lr {lr:.3g} is predicted at regret {_regret(by_name[took[0]])} "
                       f"vs {fav} at {_regret(theirs)}")
            else:  # out of the top k: the portfolio's picks, each chosen for where the ones before it may fail
                said = ", ".join(f"{o} at lr {by_name[o].hyperparameters['lr']:.3g} at regret {_regret(by_name[o])}"
                                 for o in took)
                why = (f"{fav} (predicted regret {_regret(theirs)}) leaves the top {k} for {', '.join(took)}; "
                       f"{evidence} the model predicts {said}, and each pick is the one that most lowers the "
                       f"expected regret of the best of the first {k}")
            out.append({
                "rule": rule.id,
                "favours": fav,
                "instead": took[0],
                "displaced_by": took,
                "position": "first" if first_lost else f"top {k}",
                "evidence": {"n_near": round(near, 2),
                             "similar_tasks": by_name[took[0]].evidence.get("similar_studies", 0),
                             "predicted_regret": {**{o: _r(by_name[o].predicted_regret) for o in took},
                                                  fav: _r(theirs.predicted_regret)}},
                "because": why,
                "text": f"Overrides {rule.id} ({fav}): {why} ({REGRET_SCALE}).",
            })
        return out

    def _recommend_one(self, t: TaskTraits, advice: Advice, a: OptimizerAdvice, m: ModelAnswer | None) -> Recommendation:
        spec = self.catalog.optimizers[a.name]
        reasons = [
            {
                "rule": c.rule.id,
                "text": c.rule.text,
                "sources": self.rules.source_files(c.rule),
                "source_ids": list(c.rule.sources),
                "weight": round(c.weight, 3),
                **({"mapped": c.alias} if c.alias else {}),
            }
            for c in sorted(a.contributions, key=lambda c: -abs(c.weight))
        ]
        logit = a.logit
        state = self._state_per_param(a.name)
        if a.memory_penalty and state:
            penalty = a.memory_penalty * state
            logit -= penalty
            rule = self.rules.get("memory-state-cost")
            reasons.append(
                {
                    "rule": rule.id,
                    "text": f"{rule.text} This one keeps {state:g}x the parameters.",
                    "sources": self.rules.source_files(rule),
                    "source_ids": list(rule.sources),
                    "weight": round(-penalty, 3),
                }
            )
        prior = 1.0 / (1.0 + math.exp(-logit))
        n_support = len(a.supporting)
        prior_std = PRIOR_STD / math.sqrt(1.0 + n_support)
        # blend in regret units (0 = a task's best configuration, 1 = its grid's median): the
        # prior p becomes the regret whose score 1 / (1 + regret) is p
        prior_regret, prior_regret_std = _prior_regret(prior), prior_std / prior**2
        learned = m.score if m and m.score is not None else None
        w = m.weight if learned is not None else 0.0
        if learned is not None:
            regret = w * m.regret + (1 - w) * prior_regret
            regret_std = math.sqrt((w * (m.regret_std or 0.0)) ** 2 + ((1 - w) * prior_regret_std) ** 2)
        else:
            regret, regret_std = prior_regret, prior_regret_std
        score = 1.0 / (1.0 + regret)
        std = regret_std * score**2
        hparams, sources = self._hyperparameters(t, advice, a, m, w)
        evidence = self._evidence(t, a.name, m)
        n_params = t.n_params
        memory = {
            "state_per_param": state,
            "bytes": int(state * n_params * STATE_BYTES) if (state is not None and n_params) else None,
        }
        memory["human"] = (
            f"{state:g}x params" + (f" = {human_bytes(memory['bytes'])}" if memory["bytes"] is not None else "")
            if state is not None
            else "?"
        )
        return Recommendation(
            rank=0,
            optimizer=a.name,
            display=spec.get("display", a.name),
            family=spec.get("family", ""),
            score=float(score),
            score_std=float(std),
            prior_score=float(prior),
            learned_score=learned,
            learned_weight=float(w),
            hyperparameters=hparams,
            memory=memory,
            reasons=reasons,
            hparam_sources=sources,
            evidence=evidence,
            trial_config=_trial_config(a.name, hparams, self.catalog),
            predicted_regret=float(regret),
            predicted_regret_std=float(regret_std),
            scenarios=m.per_tree if learned is not None else None,
            lr_bounds=_lr_bounds(self.catalog.hyperparam(a.name, "lr")),
        )

    def _state_per_param(self, name: str) -> float | None:
        spec = self.catalog.optimizers.get(name) or {}
        if spec.get("state_per_param") is not None:
            return float(spec["state_per_param"])
        return self.rules.state_per_param.get(name)

    # --- hyperparameters ---------------------------------------------------------------
    def _hyperparameters(
        self, t: TaskTraits, advice: Advice, a: OptimizerAdvice, m: ModelAnswer | None, w: float
    ) -> tuple[dict[str, Any], dict[str, str]]:
        name = a.name
        sources: dict[str, str] = {}
        values: dict[str, Any] = {}
        # catalog defaults first, then the rules' values where the optimizer has that hyperparameter
        for hp in self.catalog.optimizers[name]["hyperparams"]:
            values[hp["name"]] = hp["default"]
            sources[hp["name"]] = "catalog default"
        config: dict[str, Any] = {"warmup_fraction": 0.0, "grad_clip": None}
        for hp, choice in a.hparams.items():
            if hp == "lr" and choice.value == "lr_rule":
                lr_value = lr_from_rule(a, t.batch_size)
                if lr_value is None:
                    continue
                values["lr"], sources["lr"] = lr_value, choice.rule or ""
            elif hp in CONFIG_KEYS:
                config[hp], sources[hp] = choice.value, choice.rule or ""
            elif hp in values:
                values[hp], sources[hp] = _clip_hp(self.catalog.hyperparam(name, hp), choice.value), choice.rule or ""
        # learning rate: rule/default value and range, blended with the model's in log space
        lr_hp = self.catalog.hyperparam(name, "lr")
        lr = float(values.get("lr") or 1e-3)
        lo, hi = a.ranges.get("lr", (lr / 10, lr * 10))
        if not lo <= lr <= hi:
            lo, hi = min(lo, lr / 3), max(hi, lr * 3)
        w_lr = m.lr_weight if m is not None else 0.0
        k_lr = DEFAULT_LR_K if _is_default(sources.get("lr")) else RULE_LR_K
        if w_lr > 0 and k_lr is not None:
            # a library default says nothing about this task: weigh it as DEFAULT_LR_K tasks of evidence
            n = w_lr * self.model.evidence_k / (1 - w_lr) if w_lr < 1 else math.inf
            w_lr = n / (n + k_lr) if math.isfinite(n) else 1.0
        if m is not None and m.lr is not None and w_lr > 0:
            lr = _geo_blend(m.lr, lr, w_lr)
            lo, hi = _geo_blend(m.lr_low, lo, w_lr), _geo_blend(m.lr_high, hi, w_lr)
            sources["lr"] = f"learned model (weight {w_lr:.2f}) + {sources.get('lr', 'catalog default')}"
            for hp, v in SWEEP_PARAMS.get(name, {}).items():  # what the zoo measured the lr with
                if hp in values:
                    values[hp], sources[hp] = v, "the zoo sweep's setting (the learned lr was measured with it)"
        if lr_hp:
            lr = _clip_hp(lr_hp, lr)
        # never narrower than the lr's measured error on unseen task families (LR_BRACKET each
        # side): a sharp predicted optimum, or one past the catalog's bound, gave ranges like [0.1, 0.1]
        lo, hi = min(lo, lr / LR_BRACKET), max(hi, lr * LR_BRACKET)
        if lr_hp:
            lo, hi = max(lo, lr_hp["low"]), min(hi, lr_hp["high"])
            lo, hi = min(lo, lr), max(hi, lr)
        values["lr"] = lr
        # schedule: rule votes, blended with what won in similar studies
        sched, sched_src = self._scheduler(t, a, w_lr)
        sources["scheduler"] = sched_src
        sched_params = {
            k: v
            for k, v in (a.scheduler_params.get(sched) or {}).items()
            if any(h["name"] == k for h in self.catalog.schedulers.get(sched, {}).get("hyperparams", []))
        }
        # warmup: capped by the limits rule (<= 10% of steps)
        warm = float(config["warmup_fraction"] or 0.0)
        cap = advice.limits.get("warmup_fraction", {})
        warm = min(max(warm, cap.get("min", 0.0)), cap.get("max", 0.999))
        out: dict[str, Any] = {"lr": _round(lr), "lr_range": [_round(lo), _round(hi)]}
        for hp, v in values.items():
            if hp != "lr":
                out[hp] = _round(v) if isinstance(v, float) else v
        out.update(
            warmup_fraction=_round(warm),
            scheduler=sched,
            scheduler_params=sched_params,
            grad_clip=config["grad_clip"],
        )
        for hp, rng in a.ranges.items():
            if hp != "lr" and hp in values:
                lo, hi = float(rng[0]), float(rng[1])
                v = values[hp]
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    # one rule's range, another's value (AlgoPerf fixes beta2 at 0.999, a transformer
                    # rule says 0.95): the range to search must hold the value suggested
                    lo, hi = min(lo, v), max(hi, v)
                out[f"{hp}_range"] = [_round(lo), _round(hi)]
        return out, sources

    def _scheduler(self, t: TaskTraits, a: OptimizerAdvice, w: float) -> tuple[str, str]:
        allowed = self.catalog.optimizers[a.name].get("allowed_schedulers")
        names = [s for s in self.catalog.schedulers if allowed is None or s in allowed]
        votes = {s: max(a.scheduler_votes.get(s, 0.0), 0.0) for s in names}
        total = sum(votes.values())
        share = {s: v / total for s, v in votes.items()} if total > 0 else {}
        src = "rules: " + ", ".join(sorted({r for s in share for r in a.scheduler_rules.get(s, [])})) if share else "default"
        seen = self._evidence_schedulers(t, a.name)
        if seen and w > 0:
            share = {s: (1 - w) * share.get(s, 0.0) + w * seen.get(s, 0.0) for s in names}
            src = f"similar studies (weight {w:.2f}) + {src}"
        if not share or max(share.values()) <= 0:
            return ("constant" if "constant" in names else names[0]), "default"
        return max(share, key=lambda s: (share[s], -names.index(s))), src

    def _evidence_schedulers(self, t: TaskTraits, name: str) -> dict[str, float]:
        """The schedule the meta-dataset's lrs were measured with (the zoo's one policy)."""
        if self.model is None or name not in self.model.o_index:
            return {}
        return {"constant": 1.0} if name == "schedulefree_adamw" else {"cosine": 1.0}

    def _evidence(self, t: TaskTraits, name: str, m: ModelAnswer | None) -> dict[str, Any]:
        out: dict[str, Any] = {"n_near": round(m.n_near, 2) if m else 0.0, "similar_studies": 0}
        if self.model is None or name not in self.model.o_index:
            return out
        _, idx, d = self.model.evidence(t, name)
        near = [
            int(i)
            for i, dist in zip(idx, d)
            if dist <= SIMILAR_BANDWIDTHS * self.model.bandwidth and self.model.instance_domain[i] == t.domain
        ]
        out["similar_studies"] = len(near)
        if not near:
            return out
        j = self.model.o_index[name]
        regrets = self.model.best_regret[near]
        tuned = regrets[:, j]
        out["best_in"] = int(sum(1 for row in regrets if np.nanargmin(row) == j))
        out["median_tuned_regret"] = round(float(np.median(tuned)), 3)
        out["median_normalized_score"] = round(float(np.median(1.0 / (1.0 + tuned))), 3)
        nearest = near[int(np.argmin([d[list(idx).index(i)] for i in near]))]
        out["example"] = {
            "study": self.model.instances[nearest],
            "task": self.model.instance_family[nearest],
            "batch_size": int(round(2 ** self.model.instance_numeric[nearest, 0])),
            "best_lr": float(f"{self.model.best_lr[nearest, j]:.3g}"),
            "tuned_regret": round(float(self.model.best_regret[nearest, j]), 3),
            "metric": None,  # kept for the --json shape: zoo evidence is in regret units, not a metric's
            "best_value": None,
            "normalized_score": round(float(1.0 / (1.0 + self.model.best_regret[nearest, j])), 3),
        }
        return out

    # --- warm start ----------------------------------------------------------------------
    def top_optimizers(self, traits: Any, k: int = 3) -> list[str]:
        return self.rank(traits, top=k).optimizers

    def suggest_configs(self, traits: Any, k: int = 3) -> list[dict[str, Any]]:
        """The first k TrialConfig dicts of a warm start (autoopt.space.TrialConfig.from_dict):
        :meth:`RecommendationSet.warm_start` over the whole ranking."""
        return self.rank(traits, top=None).warm_start(k)


def _trial_config(name: str, hparams: Mapping[str, Any], catalog: CatalogView) -> dict[str, Any]:
    own = [hp["name"] for hp in catalog.optimizers[name]["hyperparams"]]
    return {
        "optimizer": name,
        "optimizer_params": {hp: hparams[hp] for hp in own if hp in hparams},
        "scheduler": hparams["scheduler"],
        "scheduler_params": dict(hparams.get("scheduler_params") or {}),
        "warmup_fraction": float(hparams.get("warmup_fraction") or 0.0),
        "grad_clip": hparams.get("grad_clip"),
        "batch_size": None,
    }


def _clip_hp(hp: Mapping[str, Any] | None, value: Any) -> Any:
    """A rule's value made valid for the catalog hyperparameter (clipped into its search range)."""
    if hp is None or value is None:
        return value
    if hp["kind"] == "categorical":
        return value if value in hp["choices"] else hp["default"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return hp["default"]
    if hp.get("allow_zero") and value == 0:
        return 0.0 if hp["kind"] == "float" else 0
    v = min(max(float(value), hp["low"]), hp["high"])
    return int(round(v)) if hp["kind"] == "int" else v


def _lr_bounds(hp: Mapping[str, Any] | None) -> tuple[float, float] | None:
    if not hp or hp.get("kind") != "float":
        return None
    return float(hp["low"]), float(hp["high"])


def _is_default(source: str | None) -> bool:
    """Whether an lr comes from a library default (the catalog's, or 004's PyTorch defaults) rather than advice."""
    return source in (None, "", "catalog default") or str(source).startswith("defaults-")


def _prior_regret(prior: float) -> float:
    """The regret whose score 1 / (1 + regret) is the prior ``prior``."""
    return (1.0 - prior) / max(prior, 1e-6)


def _override_text(overrides: list[dict[str, Any]]) -> str:
    """One sentence per distinct reason: several rules that favour the same optimizer and lose it
    to the same picks are named together rather than repeated."""
    groups: dict[tuple[str, str], list[str]] = {}
    for o in overrides:
        groups.setdefault((o["favours"], o["because"]), []).append(o["rule"])
    return " ".join(f"Overrides {', '.join(rules)} ({fav}): {why}." for (fav, why), rules in groups.items()) + \
        f" (Regret {REGRET_SCALE}.)"


def _regret(r: Recommendation) -> str:
    """A recommendation's predicted regret with its spread, as the reasons print it."""
    return f"{r.predicted_regret:.2f}±{r.predicted_regret_std or 0:.2f}"


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


def _geo_blend(a: float | None, b: float, w: float) -> float:
    if a is None or not (a > 0) or not (b > 0):
        return b
    return float(math.exp(w * math.log(a) + (1 - w) * math.log(b)))


def _round(v: Any) -> Any:
    if isinstance(v, float) and v != 0 and math.isfinite(v):
        return float(f"{v:.3g}")
    return v


def _dedupe_unmapped(items: Iterable[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for name, rule, why in items:
        if (name, rule.id) not in seen:
            seen.add((name, rule.id))
            out.append((name, rule, why))
    return out


@lru_cache(maxsize=4)
def _default_recommender(model_path: str) -> Recommender:
    model = CompiledModel.load(model_path) if Path(model_path).is_file() else None
    return Recommender(model=model)


def reload() -> None:
    """Forget the cached default recommender (after ``meta fit`` wrote a new model)."""
    _default_recommender.cache_clear()


# ============================================================================ public functions
def recommend(traits: Any = None, top: int | None = 5, *, model_path: str | Path | None = None, **trait_kw: Any) -> RecommendationSet:
    """Ranked optimizers for a task.

    ``traits``: a :class:`~autoopt.core.traits.TaskTraits`, a Task (its traits are
    measured), a dict, or None with keywords (``domain``/``task``, ``batch_size``/``batch``,
    ``grad_sparsity``/``sparsity``, ``sparse_gradients``/``sparse``, ``n_params``/``params``,
    ``dataset_size``, ``memory_limited``, ``goal``, ``flags``).
    """
    t = TaskTraits.from_any(traits, **trait_kw)
    return Recommender.default(model_path).rank(t, top=top)


def top_optimizers(traits: Any, k: int = 3) -> list[str]:
    """The k best-ranked catalog optimizers that can run on the task (to narrow a study)."""
    return Recommender.default().top_optimizers(TaskTraits.from_any(traits), k)


def suggest_configs(traits: Any, k: int = 3) -> list[dict[str, Any]]:
    """The first k TrialConfig dicts a warm start runs: the first pick at its suggested
    hyperparameters and its lr half a decade either side, then the next picks the same way."""
    return Recommender.default().suggest_configs(TaskTraits.from_any(traits), k)


def suggest_trials(traits: Any, k: int = 3, space: Any = None) -> list[dict[str, Any]]:
    """Optuna params for ``study.enqueue_trial``: the first k warm-start configurations
    (:meth:`RecommendationSet.warm_start`) in autoopt's namespaced
    convention ("optimizer", "<opt>.<hp>", "scheduler", "<scheduler>.<hp>", "warmup_fraction"...).

    ``space`` is the study's :class:`autoopt.space.SearchSpace` (default: the full space for
    these traits); values are clipped into it and optimizers outside it are skipped.
    """
    from autoopt.space import SearchSpace  # imports the catalog (torch); only studies call this
    from autoopt.spec import SpaceSpec, SpecError

    t = TaskTraits.from_any(traits)
    if space is None:
        space = SearchSpace(SpaceSpec(), t)
    rec = Recommender(model=Recommender.default().model, catalog=CatalogView.current())
    ranked = rec.rank(t, top=None)
    out = []
    for config in ranked.warm_start(3 * len(ranked)):
        if len(out) >= k:
            break
        try:
            out.append(space.to_optuna_params(config))
        except SpecError:
            continue
    return out


__all__ = [
    "CatalogView",
    "CompiledModel",
    "Recommendation",
    "RecommendationSet",
    "Recommender",
    "recommend",
    "suggest_configs",
    "suggest_trials",
    "top_optimizers",
]
