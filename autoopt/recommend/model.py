"""The learned part of the recommender: a scikit-learn estimator fitted on the meta-dataset.

:class:`OptimizerScoreModel` maps (task traits, optimizer) to the optimizer's normalised best
score in a study (1 = the best optimizer of that study, 0 = the worst) and to its best
learning rate. Two bootstrapped extra-trees ensembles give the predictions and, from the
spread of their trees, the uncertainty. The model also counts its *evidence* for a query:
kernel-weighted meta-dataset rows of the same optimizer near the query in standardised
trait space; the recommender trusts the model by ``n_near / (n_near + evidence_k)``.

It follows scikit-learn conventions (constructor stores params, ``fit`` validates them and
sets trailing-underscore attributes, ``get_params``/``clone`` work) so it can be logged with
``mlflow.sklearn.log_model``. :meth:`to_arrays` exports the fitted model as plain arrays that
:class:`autoopt.recommend.recommender.CompiledModel` evaluates without importing scikit-learn.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable, Mapping

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.utils.validation import check_is_fitted

# scikit-learn checks an estimator's ``_parameter_constraints`` (the named error for a bad
# n_estimators, bandwidth...) only through these two private helpers; there is no public API for
# third-party estimators, so they are imported here and nowhere else.
from sklearn.base import _fit_context  # noqa: E402
from sklearn.utils._param_validation import Interval  # noqa: E402

from autoopt.recommend.features import (
    NUMERIC_FEATURES,
    TraitEncoding,
    kernel_weights,
    lr_batch_shift,
    numeric_row,
    trait_distances,
)

#: Learning rates are compared at this batch size (see ``lr_batch_exponents``).
REFERENCE_BATCH = 256
#: Types inside a fitted model, for loading its skops serialisation (how MLflow stores it);
#: only files this package wrote should be loaded with them.
SKOPS_TRUSTED_TYPES = (
    "autoopt.recommend.model.OptimizerScoreModel",
    "autoopt.recommend.features.TraitEncoding",
    "sklearn.tree._tree.Tree",
)
#: Columns a model input row needs (besides "optimizer").
TRAIT_COLUMNS = ("domain", "batch_size", "grad_sparsity", "n_params", "dataset_size", "sparse_gradients")


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
        raise TypeError("X must be a DataFrame or rows of {trait: value, 'optimizer': name}")
    return rows


def _columns(rows: list[Mapping[str, Any]]) -> tuple[np.ndarray, list[str], list[str]]:
    missing = {c for c in ("domain", "optimizer") for r in rows if r.get(c) in (None, "")}
    if missing:
        raise ValueError(f"X rows need {', '.join(sorted(missing))} (columns: {', '.join(TRAIT_COLUMNS)}, optimizer)")
    numeric = np.array([numeric_row(r) for r in rows], dtype=float).reshape(len(rows), len(NUMERIC_FEATURES))
    return numeric, [str(r["domain"]) for r in rows], [str(r["optimizer"]) for r in rows]


class OptimizerScoreModel(RegressorMixin, BaseEstimator):
    """Predict how well an optimizer does on a task from the task's traits.

    Parameters
    ----------
    n_estimators : int
        Trees per ensemble (score and learning rate).
    min_samples_leaf : int
        Minimum meta-dataset rows per leaf.
    max_features : float
        Fraction of features tried per split.
    bandwidth : float
        Kernel width, in standardised trait units, of the evidence count.
    domain_distance : float
        Distance added between rows of different domains (standardised units).
    unknown_distance : float
        Distance added per trait unknown in the query or the row (standardised units).
    evidence_k : float
        Evidence at which the learned model and the rule prior weigh the same.
    lr_batch_exponents : dict or None
        optimizer -> exponent ``e`` of ``lr ~ batch ** e`` (1 for SGD, 0.5 for Adam; from the
        rules). Learning rates are learned at ``REFERENCE_BATCH`` and rescaled to the query's.
    random_state : int, RandomState or None
    """

    _parameter_constraints: dict = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "min_samples_leaf": [Interval(Integral, 1, None, closed="left")],
        "max_features": [Interval(Real, 0, 1, closed="right")],
        "bandwidth": [Interval(Real, 0, None, closed="neither")],
        "domain_distance": [Interval(Real, 0, None, closed="left")],
        "unknown_distance": [Interval(Real, 0, None, closed="left")],
        "evidence_k": [Interval(Real, 0, None, closed="neither")],
        "lr_batch_exponents": [dict, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_estimators: int = 60,
        min_samples_leaf: int = 2,
        max_features: float = 1.0,
        bandwidth: float = 2.0,
        domain_distance: float = 2.5,
        unknown_distance: float = 1.0,
        evidence_k: float = 2.0,
        lr_batch_exponents: dict | None = None,
        random_state: Any = 0,
    ):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.bandwidth = bandwidth
        self.domain_distance = domain_distance
        self.unknown_distance = unknown_distance
        self.evidence_k = evidence_k
        self.lr_batch_exponents = lr_batch_exponents
        self.random_state = random_state

    # --- fitting -----------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Iterable[float], lr: Iterable[float] | None = None) -> "OptimizerScoreModel":
        """Fit on meta-dataset rows.

        X : rows with the trait columns (``TRAIT_COLUMNS``) and ``optimizer``.
        y : normalised best score per row (NaN rows are skipped for the score model).
        lr : best learning rate per row (optional; NaN/None where unknown).
        """
        rows = _records(X)
        y = np.asarray(list(y), dtype=float)
        if len(rows) != len(y):
            raise ValueError(f"X has {len(rows)} rows but y has {len(y)}")
        numeric, domains, optimizers = _columns(rows)
        has_score = np.isfinite(y)
        if has_score.sum() < 2:
            raise ValueError("need at least 2 meta-dataset rows with a normalised score to fit")
        if np.any((y[has_score] < -1e-9) | (y[has_score] > 1 + 1e-9)):
            raise ValueError("y is a normalised score in [0, 1]")
        self.encoding_ = TraitEncoding.fit(numeric, optimizers)
        design = self.encoding_.design(numeric, domains, optimizers)
        self.feature_names_ = self.encoding_.feature_names
        self.score_forest_ = self._forest().fit(design[has_score], y[has_score])

        self.lr_forest_ = None
        if lr is not None:
            lr_arr = np.array([math.nan if v is None else float(v) for v in lr], dtype=float)
            if len(lr_arr) != len(rows):
                raise ValueError(f"lr has {len(lr_arr)} values for {len(rows)} rows")
            ok = np.isfinite(lr_arr) & (lr_arr > 0) & np.isfinite(numeric[:, 0])
            if ok.sum() >= 2:
                target = np.log10(lr_arr[ok]) - lr_batch_shift(
                    self._exponents(np.array(optimizers)[ok]), numeric[ok, 0], REFERENCE_BATCH)
                self.lr_forest_ = self._forest().fit(design[ok], target)

        # evidence: the rows with a score, in standardised trait space
        self.train_z_ = self.encoding_.standardise(numeric[has_score])
        self.train_domain_ = np.array(domains, dtype=str)[has_score]
        self.train_optimizer_ = np.array(optimizers, dtype=str)[has_score]
        self.n_rows_ = int(has_score.sum())
        return self

    def _forest(self) -> ExtraTreesRegressor:
        return ExtraTreesRegressor(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            bootstrap=True,
            random_state=self.random_state,
            n_jobs=1,
        )

    def _exponents(self, optimizers: np.ndarray) -> np.ndarray:
        table = self.lr_batch_exponents or {}
        return np.array([float(table.get(str(o), 0.5)) for o in optimizers], dtype=float)

    # --- prediction --------------------------------------------------------------------
    def _design(self, X: Any) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        check_is_fitted(self, "score_forest_")
        rows = _records(X)
        numeric, domains, optimizers = _columns(rows)
        return self.encoding_.design(numeric, domains, optimizers), numeric, domains, optimizers

    def predict(self, X: Any) -> np.ndarray:
        """Predicted normalised score per row."""
        design, *_ = self._design(X)
        return self.score_forest_.predict(design)

    def predict_distribution(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard deviation) of the per-tree score predictions."""
        design, *_ = self._design(X)
        per_tree = np.stack([t.predict(design.astype(np.float32)) for t in self.score_forest_.estimators_])
        return per_tree.mean(axis=0), per_tree.std(axis=0)

    def predict_lr(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lr, low, high) at each row's batch size: tree median and 10th/90th percentiles."""
        design, numeric, _, optimizers = self._design(X)
        n = len(design)
        if self.lr_forest_ is None:
            nan = np.full(n, math.nan)
            return nan, nan.copy(), nan.copy()
        per_tree = np.stack([t.predict(design.astype(np.float32)) for t in self.lr_forest_.estimators_])
        batch_log2 = self.encoding_.impute(numeric)[:, 0]
        shift = lr_batch_shift(self._exponents(np.array(optimizers)), batch_log2, REFERENCE_BATCH)
        q = np.percentile(per_tree, [50, 10, 90], axis=0) + shift
        return 10 ** q[0], 10 ** q[1], 10 ** q[2]

    def evidence(self, X: Any) -> np.ndarray:
        """Kernel-weighted count of scored meta-dataset rows of the same optimizer near each row."""
        _, numeric, domains, optimizers = self._design(X)
        z = self.encoding_.standardise(numeric)
        out = np.zeros(len(z))
        for i in range(len(z)):
            same = self.train_optimizer_ == optimizers[i]
            if not same.any():
                continue
            d = trait_distances(
                z[i], domains[i], self.train_z_[same], self.train_domain_[same], self.domain_distance, self.unknown_distance
            )
            out[i] = kernel_weights(d, self.bandwidth).sum()
        return out

    def learned_weight(self, X: Any) -> np.ndarray:
        """How much the recommender trusts this model per row: n_near / (n_near + evidence_k)."""
        n = self.evidence(X)
        return n / (n + self.evidence_k)

    # --- export ------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted model as plain numpy arrays (for ``np.savez``; no pickle needed to load)."""
        check_is_fitted(self, "score_forest_")
        arrays: dict[str, np.ndarray] = {}
        arrays.update(self.encoding_.to_arrays())
        arrays.update(_flatten_forest(self.score_forest_, "score_"))
        if self.lr_forest_ is not None:
            arrays.update(_flatten_forest(self.lr_forest_, "lr_"))
        exps = self.lr_batch_exponents or {}
        arrays["exp_names"] = np.array(sorted(exps), dtype=str)
        arrays["exp_values"] = np.array([float(exps[k]) for k in sorted(exps)], dtype=float)
        arrays["train_z"] = self.train_z_
        arrays["train_domain"] = self.train_domain_
        arrays["train_optimizer"] = self.train_optimizer_
        arrays["params"] = np.array(
            [self.bandwidth, self.domain_distance, self.evidence_k, REFERENCE_BATCH, self.unknown_distance], dtype=float
        )
        return arrays


def _flatten_forest(forest: ExtraTreesRegressor, prefix: str) -> dict[str, np.ndarray]:
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
        prefix + "left": np.concatenate(lefts),
        prefix + "right": np.concatenate(rights),
        prefix + "feature": np.concatenate(feats),
        prefix + "threshold": np.concatenate(thrs),
        prefix + "value": np.concatenate(vals),
        prefix + "roots": np.array(roots, dtype=np.int64),
    }
