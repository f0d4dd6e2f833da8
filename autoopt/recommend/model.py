"""The learned part of the recommender: normalised regret as a function of (task traits, optimizer, log lr).

:class:`RegretModel` is a scikit-learn tree ensemble (extra trees or a random forest, chosen
by :func:`select_estimator` with leave-family-out cross-validation) fitted on every
(task, optimizer, grid lr) of the meta-dataset (:func:`autoopt.recommend.regret.training_rows`).
Because lr is an input, the best lr of each optimizer is found *jointly* with the optimizer by
searching a fine lr grid (:class:`autoopt.recommend.recommender.CompiledModel`), and how the
best lr moves with batch size, model size or data size is learned from the zoo, not hand-coded.
The trees' spread is the uncertainty, and the trees are the scenarios the top-k portfolio is
chosen over.

It follows scikit-learn conventions (constructor stores params, ``fit`` validates them and sets
trailing-underscore attributes, ``get_params``/``clone`` work) so it can be logged with
``mlflow.sklearn.log_model``. :meth:`RegretModel.to_arrays` exports it as plain arrays that the
recommender evaluates with numpy only (no scikit-learn at query time).
"""

from __future__ import annotations

import json
import math
from numbers import Integral, Real
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor
from sklearn.utils.validation import check_is_fitted

# scikit-learn checks an estimator's ``_parameter_constraints`` (the named error for a bad
# n_estimators, estimator...) only through these private helpers; there is no public API for
# third-party estimators, so they are imported here and nowhere else.
from sklearn.base import _fit_context  # noqa: E402
from sklearn.utils._param_validation import Interval, StrOptions  # noqa: E402

from autoopt.recommend.features import (  # noqa: F401 - the population helpers are part of this API
    NUMERIC_FEATURES, TraitEncoding, family_balanced, numeric_row, population_mean, population_weights,
)

#: Types inside a fitted model, for loading its skops serialisation (how MLflow stores it);
#: only files this package wrote should be loaded with them.
SKOPS_TRUSTED_TYPES = (
    "autoopt.recommend.model.RegretModel",
    "autoopt.recommend.features.TraitEncoding",
    "sklearn.tree._tree.Tree",
)
ESTIMATORS = {"extra_trees": ExtraTreesRegressor, "random_forest": RandomForestRegressor}
#: What leave-family-out cross-validation chooses among (the shipped model and every
#: evaluation fold run the same selection on their own training families).
CANDIDATES: tuple[dict[str, Any], ...] = (
    {"estimator": "extra_trees", "min_samples_leaf": 3, "max_features": 1.0},
    {"estimator": "extra_trees", "min_samples_leaf": 8, "max_features": 0.6},
    {"estimator": "random_forest", "min_samples_leaf": 5, "max_features": 0.6},
)


def _records(X: Any) -> list[Mapping[str, Any]]:
    """Rows as mappings from a DataFrame, a list of mappings or a mapping of columns."""
    if hasattr(X, "to_dict") and hasattr(X, "columns"):
        return X.to_dict("records")
    if isinstance(X, Mapping):
        keys = list(X)
        n = len(X[keys[0]]) if keys else 0
        return [{k: X[k][i] for k in keys} for i in range(n)]
    rows = list(X)
    if rows and not isinstance(rows[0], Mapping):
        raise TypeError("X must be a DataFrame or rows of {trait: value, 'optimizer': name, 'lr': value}")
    return rows


def _columns(rows: list[Mapping[str, Any]]) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    missing = sorted({c for c in ("domain", "optimizer", "lr") for r in rows if r.get(c) in (None, "")})
    if missing:
        raise ValueError(f"X rows need {', '.join(missing)} (trait columns, optimizer, lr)")
    numeric = np.array([numeric_row(r) for r in rows], dtype=float).reshape(len(rows), len(NUMERIC_FEATURES))
    lrs = np.array([float(r["lr"]) for r in rows], dtype=float)
    if np.any(~(lrs > 0)):
        raise ValueError("lr must be positive")
    return numeric, [str(r["domain"]) for r in rows], [str(r["optimizer"]) for r in rows], lrs


class RegretModel(RegressorMixin, BaseEstimator):
    """Predict an optimizer's normalised regret at a learning rate on a task with given traits.

    Parameters
    ----------
    estimator : {"extra_trees", "random_forest"}
    n_estimators : int
        Trees (also the scenarios of the top-k portfolio).
    min_samples_leaf : int
    max_features : float
        Fraction of features tried per split.
    bandwidth : float
        Kernel width, in standardised trait units, of the evidence count.
    domain_distance : float
        Distance added between tasks of different domains (standardised units).
    unknown_distance : float
        Distance added per trait unknown in the query (standardised units): a query that does
        not say its size is not assumed to be as small as the zoo's tasks.
    evidence_k : float
        Evidence (kernel-weighted tasks) at which the learned model and the rule prior weigh the same.
    shrinkage : float
        How far each optimizer's predicted regret curve is pulled towards the population's (the
        family-balanced mean curve of the meta-dataset's tasks, leaning on the query's domain
        where its families agree) when the query has evidence near it; with none near it the
        answer is the population's. 1: the population only.
    catalog : dict or None
        optimizer -> catalog entry (family, hyperparams with the lr default); default: autoopt's.
    random_state : int, RandomState or None
    """

    _parameter_constraints: dict = {
        "estimator": [StrOptions(set(ESTIMATORS))],
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "min_samples_leaf": [Interval(Integral, 1, None, closed="left")],
        "max_features": [Interval(Real, 0, 1, closed="right")],
        "bandwidth": [Interval(Real, 0, None, closed="neither")],
        "domain_distance": [Interval(Real, 0, None, closed="left")],
        "unknown_distance": [Interval(Real, 0, None, closed="left")],
        "evidence_k": [Interval(Real, 0, None, closed="neither")],
        "shrinkage": [Interval(Real, 0, 1, closed="both")],
        "catalog": [dict, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator: str = "extra_trees",
        n_estimators: int = 60,
        min_samples_leaf: int = 3,
        max_features: float = 1.0,
        bandwidth: float = 2.0,
        domain_distance: float = 2.5,
        unknown_distance: float = 2.0,
        evidence_k: float = 0.5,
        shrinkage: float = 0.5,
        catalog: dict | None = None,
        random_state: Any = 0,
    ):
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.bandwidth = bandwidth
        self.domain_distance = domain_distance
        self.unknown_distance = unknown_distance
        self.evidence_k = evidence_k
        self.shrinkage = shrinkage
        self.catalog = catalog
        self.random_state = random_state

    # --- fitting -----------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Iterable[float]) -> "RegretModel":
        """X: rows with the trait columns, ``optimizer``, ``lr`` and ``instance`` (the task they
        come from: evidence is counted in tasks); y: normalised regret per row."""
        rows = _records(X)
        y = np.asarray(list(y), dtype=float)
        if len(rows) != len(y):
            raise ValueError(f"X has {len(rows)} rows but y has {len(y)}")
        if len(rows) < 2 or not np.all(np.isfinite(y)):
            raise ValueError("need at least 2 rows, each with a finite normalised regret")
        if np.any(y < -1e-9):
            raise ValueError("y is a normalised regret (>= 0)")
        numeric, domains, optimizers, lrs = _columns(rows)
        catalog = self.catalog if self.catalog is not None else _catalog()
        unknown = sorted(set(optimizers) - set(catalog))
        if unknown:
            raise ValueError(f"optimizer(s) {unknown} are not in the catalog")
        self.encoding_ = TraitEncoding.fit(numeric, optimizers, catalog)
        design = self.encoding_.design(numeric, domains, optimizers, lrs)
        self.feature_names_ = self.encoding_.feature_names
        est = ESTIMATORS[self.estimator](
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf, max_features=self.max_features,
            bootstrap=True, random_state=self.random_state, n_jobs=1,
        )
        self.forest_ = est.fit(design, y)
        # per-optimizer lr range seen in fitting: the best-lr search stays inside it (trees do not extrapolate)
        opt = np.array(optimizers)
        self.lr_range_ = {o: (float(np.log10(lrs[opt == o]).min()), float(np.log10(lrs[opt == o]).max()))
                          for o in self.encoding_.optimizers}
        # the tasks (evidence): traits, domain, which optimizers each ran, tuned lr/regret per optimizer
        instances = [str(r.get("instance") or f"row{i}") for i, r in enumerate(rows)]
        order = list(dict.fromkeys(instances))
        first = {inst: i for i, inst in reversed(list(enumerate(instances)))}
        idx = np.array([first[i] for i in order])
        self.instances_ = order
        self.instance_z_ = self.encoding_.standardise(numeric[idx])
        self.instance_numeric_ = numeric[idx]
        self.instance_domain_ = np.array([domains[i] for i in idx], dtype=str)
        self.instance_family_ = np.array([str(rows[i].get("family") or instances[i]) for i in idx], dtype=str)
        n_opt = len(self.encoding_.optimizers)
        o_index = {o: j for j, o in enumerate(self.encoding_.optimizers)}
        i_index = {inst: k for k, inst in enumerate(order)}
        best_regret = np.full((len(order), n_opt), np.nan)
        best_lr = np.full((len(order), n_opt), np.nan)
        for inst, o, lr, r in zip(instances, optimizers, lrs, y):
            k, j = i_index[inst], o_index[o]
            if not (best_regret[k, j] <= r):
                best_regret[k, j], best_lr[k, j] = r, lr
        self.instance_best_regret_ = best_regret
        self.instance_best_lr_ = best_lr
        self.instance_curves_ = _instance_curves(instances, optimizers, lrs, y, order, o_index)
        self.lr_slope_ = _lr_slopes(self.instance_z_, best_lr, self.instance_family_)
        self.domain_weight_ = _domain_weights(self.instance_curves_, self.instance_family_, self.instance_domain_)
        self.n_rows_ = len(rows)
        return self

    # --- prediction --------------------------------------------------------------------
    def _design(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "forest_")
        numeric, domains, optimizers, lrs = _columns(_records(X))
        return self.encoding_.design(numeric, domains, optimizers, lrs)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted normalised regret per row."""
        design = self._design(X)
        return self.forest_.predict(design)

    def predict_per_tree(self, X: Any) -> np.ndarray:
        """Per-tree predictions, shape (n_trees, n_rows)."""
        design = self._design(X).astype(np.float32)
        return np.stack([t.predict(design) for t in self.forest_.estimators_])

    # --- export ------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted model as plain numpy arrays (for ``np.savez``; no pickle needed to load)."""
        check_is_fitted(self, "forest_")
        arrays: dict[str, np.ndarray] = {}
        arrays.update(self.encoding_.to_arrays())
        arrays.update(_flatten_forest(self.forest_, "regret_"))
        opts = self.encoding_.optimizers
        arrays["lr_range"] = np.array([self.lr_range_[o] for o in opts], dtype=float).reshape(len(opts), 2)
        arrays["instances"] = np.array(self.instances_, dtype=str)
        arrays["instance_z"] = self.instance_z_
        arrays["instance_numeric"] = self.instance_numeric_
        arrays["instance_domain"] = self.instance_domain_
        arrays["instance_family"] = self.instance_family_
        arrays["instance_best_regret"] = self.instance_best_regret_
        arrays["instance_best_lr"] = self.instance_best_lr_
        arrays["instance_curves"] = self.instance_curves_
        arrays["curve_log_lr"] = CURVE_LOG_LR
        arrays["lr_slope"] = self.lr_slope_
        arrays["pop_domains"] = np.array(sorted(self.domain_weight_), dtype=str)
        arrays["pop_domain_weight"] = np.array([self.domain_weight_[d] for d in sorted(self.domain_weight_)], dtype=float)
        arrays["shrinkage"] = np.array(float(self.shrinkage))
        arrays["params"] = np.array(
            [self.bandwidth, self.domain_distance, self.evidence_k, self.unknown_distance, self.n_rows_], dtype=float
        )
        arrays["estimator_json"] = np.array(json.dumps({k: v for k, v in self.get_params().items() if k != "catalog"}))
        return arrays


#: The log10-lr grid every task's regret curves are kept on (what similar tasks measured, per lr).
CURVE_LOG_LR = np.round(np.arange(-6.0, 1.5 + 1e-9, 0.25), 4)


def _instance_curves(instances: Sequence[str], optimizers: Sequence[str], lrs: np.ndarray, y: np.ndarray,
                     order: Sequence[str], o_index: Mapping[str, int]) -> np.ndarray:
    """(tasks, optimizers, len(CURVE_LOG_LR)) measured regret, interpolated in log lr as
    :meth:`autoopt.recommend.regret.TaskGrid.lookup` does (:func:`~autoopt.recommend.regret.interpolate`);
    NaN where a task did not run an optimizer."""
    from autoopt.recommend.regret import interpolate

    curves = np.full((len(order), len(o_index), len(CURVE_LOG_LR)), np.nan)
    i_index = {inst: k for k, inst in enumerate(order)}
    points: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for inst, o, lr, r in zip(instances, optimizers, np.log10(lrs), y):
        points.setdefault((i_index[inst], o_index[o]), []).append((float(lr), float(r)))
    for (k, j), pts in points.items():
        pts.sort()
        x = np.array([p[0] for p in pts])
        v = np.array([p[1] for p in pts])
        curves[k, j] = interpolate(x, v, CURVE_LOG_LR)
    return curves


def _lr_slopes(instance_z: np.ndarray, best_lr: np.ndarray, families: np.ndarray) -> np.ndarray:
    """(optimizers, traits): how each optimizer's best log10 lr moves per standardised trait unit,
    a ridge fit across the tasks (a learned scaling law: batch size, model and data size). Moving
    a similar task's measured curve by it is how that task's lr carries over to the query.

    An optimizer keeps its law only if it predicts the best lr of families it was not fitted on
    better than their mean does (leave one family out, :data:`LR_SLOPE_MIN_GAIN`): where the zoo's
    families disagree, the slope is noise and moving curves by it only costs regret."""
    from sklearn.linear_model import Ridge

    z = np.nan_to_num(np.asarray(instance_z, dtype=float), nan=0.0)
    families = np.asarray(families)
    slopes = np.zeros((best_lr.shape[1], z.shape[1]))
    for j in range(best_lr.shape[1]):
        ok = np.isfinite(best_lr[:, j]) & (best_lr[:, j] > 0)
        fams = np.unique(families[ok])
        if ok.sum() < 3 or len(fams) < 3:
            continue
        x, y, f = z[ok], np.log10(best_lr[ok, j]), families[ok]
        law = mean = 0.0
        for held in fams:
            tr, te = f != held, f == held
            law += float(((Ridge(alpha=LR_SLOPE_RIDGE).fit(x[tr], y[tr]).predict(x[te]) - y[te]) ** 2).sum())
            mean += float(((y[tr].mean() - y[te]) ** 2).sum())
        if law < (1 - LR_SLOPE_MIN_GAIN) * mean:
            slopes[j] = Ridge(alpha=LR_SLOPE_RIDGE).fit(x, y).coef_
    return slopes


#: How much better than the mean (leaving families out, squared error) a scaling law must predict to be used.
LR_SLOPE_MIN_GAIN = 0.2


# ============================================================================ the population
def _domain_weights(curves: np.ndarray, families: np.ndarray, domains: np.ndarray) -> dict[str, float]:
    """domain -> how much a query of that domain leans on the domain's own families rather than
    all of them (0 = the population of every family, 1 = the domain's families only).

    Chosen per domain by leave one family out *within* the domain: each of its families is
    judged by the configuration (optimizer, lr) that is best on average over the others, with
    the domain's remaining families weighted by each candidate weight in :data:`DOMAIN_WEIGHTS`.
    A weight above 0 is kept only if it lowers that regret by at least :data:`DOMAIN_MIN_GAIN`
    (where the domain's families disagree, leaning on them is noise); a domain needs at least
    two families to be judged at all, else its weight is 0."""
    families, domains = np.asarray(families), np.asarray(domains)
    out: dict[str, float] = {}
    for d in sorted({str(x) for x in domains}):
        inner = sorted(set(families[domains == d]))
        out[d] = 0.0
        if len(inner) < 2:
            continue
        losses = []
        for a in DOMAIN_WEIGHTS:
            lost = []
            for held in inner:
                mean = population_mean(curves, population_weights(families, domains, d, a, exclude=families == held))
                if not np.isfinite(mean).any():
                    continue
                j, x = np.unravel_index(int(np.nanargmin(mean)), mean.shape)
                mine = curves[families == held, j, x]
                if np.isfinite(mine).any():
                    lost.append(float(np.nanmean(mine)))
            losses.append(float(np.mean(lost)) if lost else math.inf)
        best = int(np.argmin(losses))
        if math.isfinite(losses[0]) and losses[best] < (1 - DOMAIN_MIN_GAIN) * losses[0]:
            out[d] = float(DOMAIN_WEIGHTS[best])
    return out


#: Candidate weights of a domain's own families in its population (:func:`_domain_weights`).
DOMAIN_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: How much lower (relative) the left-out families' regret must be for a domain to lean on its own families.
DOMAIN_MIN_GAIN = 0.2
#: Ridge penalty of the lr scaling law (in standardised traits; a task's best lr is noisy: half-decade grid, 2 seeds).
LR_SLOPE_RIDGE = 3.0


def _catalog() -> dict[str, dict[str, Any]]:
    from autoopt.core.catalog import CATALOG

    return {name: spec.to_dict() for name, spec in CATALOG.items()}


def _flatten_forest(forest: Any, prefix: str) -> dict[str, np.ndarray]:
    """Concatenate the trees' node arrays; child indices become global, leaves stay -1."""
    lefts, rights, feats, thrs, vals, roots = [], [], [], [], [], []
    offset = 0
    for est in forest.estimators_:
        t = est.tree_
        left, right = t.children_left.astype(np.int64), t.children_right.astype(np.int64)
        lefts.append(np.where(left >= 0, left + offset, -1))
        rights.append(np.where(right >= 0, right + offset, -1))
        feats.append(t.feature.astype(np.int64))
        thrs.append(t.threshold.astype(np.float64))
        vals.append(t.value[:, 0, 0].astype(np.float64))
        roots.append(offset)
        offset += t.node_count
    return {
        prefix + "left": np.concatenate(lefts).astype(np.int32),
        prefix + "right": np.concatenate(rights).astype(np.int32),
        prefix + "feature": np.concatenate(feats).astype(np.int16),
        prefix + "threshold": np.concatenate(thrs),
        prefix + "value": np.concatenate(vals).astype(np.float32),
        prefix + "roots": np.array(roots, dtype=np.int64),
    }


# ============================================================================ selection
#: Shrinkages towards the population that cross-validation chooses among (:func:`select_estimator`).
SHRINKAGES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def select_estimator(
    grids: Mapping[str, Any],
    candidates: Sequence[Mapping[str, Any]] = CANDIDATES,
    *,
    n_folds: int = 5,
    n_estimators: int = 40,
    catalog: dict | None = None,
    shrinkages: Sequence[float] = SHRINKAGES,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the best candidate's params with its ``shrinkage``, the CV table) by leave-family-out
    cross-validation.

    Families are split into at most ``n_folds`` groups; each candidate is fitted on the other
    groups and judged on what it is for: the true regret, on the held-out tasks' grids, of each
    optimizer at the lr the model picks for it (:meth:`CompiledModel.best_lrs` at shrinkage 0).
    Then, for the chosen candidate, the ``shrinkage`` towards the population is the one whose
    first pick (the optimizer and lr with the lowest predicted regret) has the lowest true regret
    on the held-out tasks; ties go to the larger shrinkage (the simpler answer).
    """
    from autoopt.recommend.recommender import CompiledModel
    from autoopt.recommend.regret import training_rows

    families = sorted({g.family for g in grids.values()})
    if len(families) < 2:
        return dict(candidates[0]), []
    groups = [families[i::min(n_folds, len(families))] for i in range(min(n_folds, len(families)))]
    table = []
    first_picks: list[dict[float, list[float]]] = []
    for cand in candidates:
        losses = []
        top1: dict[float, list[float]] = {s: [] for s in shrinkages}
        for held in groups:
            train = [g for g in grids.values() if g.family not in held]
            test = [g for g in grids.values() if g.family in held]
            rows = training_rows(train)
            model = RegretModel(n_estimators=n_estimators, catalog=catalog, **cand).fit(rows, [r["regret"] for r in rows])
            compiled = CompiledModel(model.to_arrays())
            for g in test:
                opts = [o for o in g.curves if o in compiled.optimizers]
                parts = compiled.curve_parts(g.traits, opts)
                picks = compiled.best_lrs(g.traits, opts, compiled.shrunk(parts, compiled.shrink_weight(g.traits, 0.0)))
                losses.extend(g.lookup(o, picks[o].lr)[0] for o in opts)
                for s in shrinkages:
                    picks = compiled.best_lrs(g.traits, opts, compiled.shrunk(parts, compiled.shrink_weight(g.traits, s)))
                    o = min(picks, key=lambda o: (picks[o].regret, o))
                    top1[s].append(g.lookup(o, picks[o].lr)[0])
        first_picks.append(top1)
        table.append({**cand, "cv_regret_at_picked_lr": round(float(np.mean(losses)), 4) if losses else math.nan,
                      "cv_top1_by_shrinkage": {str(s): round(float(np.mean(v)), 4) for s, v in top1.items() if v}})
    best = min(range(len(table)), key=lambda i: (table[i]["cv_regret_at_picked_lr"], i))
    by_shrinkage = {s: float(np.mean(v)) for s, v in first_picks[best].items() if v}
    shrinkage = min(by_shrinkage, key=lambda s: (round(by_shrinkage[s], 6), -s)) if by_shrinkage else 1.0
    return {**candidates[best], "shrinkage": float(shrinkage)}, table

