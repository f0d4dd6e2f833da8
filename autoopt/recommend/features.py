"""How a workload's traits, an optimizer and an lr become numbers: model input rows and trait-space distances.

Kept free of torch and scikit-learn so ``autoopt recommend`` answers in well under 2 seconds:
both the rule prior and the compiled learned model read traits through this module. The traits
themselves are :class:`autoopt.core.traits.TaskTraits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from autoopt.core.traits import DOMAINS, TaskTraits

# ----------------------------------------------------------------------------- numeric encoding
#: Numeric trait features, in order. log scales make "twice the batch" the same step everywhere.
NUMERIC_FEATURES: tuple[str, ...] = ("log2_batch", "grad_sparsity", "log10_params", "log10_dataset", "sparse_gradients")
#: Lower bound of each feature's scale in trait-space distances (so a constant column in the
#: meta-dataset does not make any change of it look infinitely far).
SCALE_FLOOR = np.array([1.0, 0.1, 0.5, 0.5, 0.5])
#: Learning-rate features of a model input row: log10 lr, and log10(lr / the catalog default lr).
LR_FEATURES: tuple[str, ...] = ("log10_lr", "log10_lr_over_default")


def numeric_row(t: Mapping[str, Any] | TaskTraits) -> np.ndarray:
    """The numeric features of one set of traits; NaN where a trait is unknown."""
    get = (lambda k: getattr(t, k)) if isinstance(t, TaskTraits) else (lambda k: t.get(k))

    def log(v: Any, base: float) -> float:
        try:
            v = float(v)
        except (TypeError, ValueError):
            return math.nan
        return math.log(v, base) if v > 0 and math.isfinite(v) else math.nan

    sparsity = get("grad_sparsity")
    sparse = get("sparse_gradients")
    return np.array(
        [
            log(get("batch_size"), 2),
            float(sparsity) if sparsity is not None and sparsity == sparsity else math.nan,
            log(get("n_params"), 10),
            log(get("dataset_size"), 10),
            float(_truthy(sparse)) if sparse is not None else math.nan,
        ],
        dtype=float,
    )


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return bool(v)


@dataclass
class TraitEncoding:
    """How (traits, optimizer, lr) become one model input row. Learned by :meth:`fit`.

    Columns: the numeric trait features (unknowns imputed by the training medians), a one-hot
    of the domain, a one-hot of the optimizer and of its catalog family (so optimizers of one
    family share evidence), log10 lr and log10(lr / the optimizer's catalog default lr).
    ``scale`` standardises numeric features for trait-space distances (evidence counting).
    """

    optimizers: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    optimizer_family: list[str] = field(default_factory=list)
    default_lr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    median: np.ndarray = field(default_factory=lambda: np.zeros(len(NUMERIC_FEATURES)))
    scale: np.ndarray = field(default_factory=lambda: SCALE_FLOOR.copy())

    @classmethod
    def fit(cls, numeric: np.ndarray, optimizers: Iterable[str], catalog: Mapping[str, Mapping[str, Any]]) -> "TraitEncoding":
        """``catalog``: optimizer name -> its catalog entry (``family`` and the ``lr`` default)."""
        numeric = np.asarray(numeric, dtype=float)
        with np.errstate(all="ignore"):
            median = np.nanmedian(numeric, axis=0) if len(numeric) else np.zeros(numeric.shape[1])
            std = np.nanstd(numeric, axis=0) if len(numeric) else np.zeros(numeric.shape[1])
        median = np.where(np.isfinite(median), median, 0.0)
        std = np.where(np.isfinite(std), std, 0.0)
        names = sorted(set(optimizers))
        fams = [str(catalog[o].get("family") or o) for o in names]
        return cls(
            optimizers=names,
            families=sorted(set(fams)),
            optimizer_family=fams,
            default_lr=np.array([_default_lr(catalog[o]) for o in names], dtype=float),
            median=median,
            scale=np.maximum(std, SCALE_FLOOR),
        )

    @property
    def feature_names(self) -> list[str]:
        return [*NUMERIC_FEATURES, *(f"domain={d}" for d in DOMAINS), *(f"optimizer={o}" for o in self.optimizers),
                *(f"family={f}" for f in self.families), *LR_FEATURES]

    def impute(self, numeric: np.ndarray) -> np.ndarray:
        numeric = np.array(numeric, dtype=float, copy=True)
        mask = ~np.isfinite(numeric)
        if mask.any():
            numeric[mask] = np.broadcast_to(self.median, numeric.shape)[mask]
        return numeric

    def design(self, numeric: np.ndarray, domains: Iterable[str], optimizers: Iterable[str], lrs: Iterable[float]) -> np.ndarray:
        """Model input matrix; an optimizer outside the vocabulary gets all-zero one-hots."""
        numeric = self.impute(np.atleast_2d(numeric))
        domains, optimizers = list(domains), list(optimizers)
        log_lr = np.log10(np.asarray(list(lrs), dtype=float))
        n = numeric.shape[0]
        dom = np.zeros((n, len(DOMAINS)))
        opt = np.zeros((n, len(self.optimizers)))
        fam = np.zeros((n, len(self.families)))
        d_index = {d: i for i, d in enumerate(DOMAINS)}
        o_index = {o: i for i, o in enumerate(self.optimizers)}
        f_index = {f: i for i, f in enumerate(self.families)}
        default = np.full(n, np.nan)
        for i, (d, o) in enumerate(zip(domains, optimizers)):
            if d in d_index:
                dom[i, d_index[d]] = 1.0
            if o in o_index:
                j = o_index[o]
                opt[i, j] = 1.0
                fam[i, f_index[self.optimizer_family[j]]] = 1.0
                default[i] = self.default_lr[j]
        rel = log_lr - np.log10(np.where(np.isfinite(default), default, 1e-3))
        return np.hstack([numeric, dom, opt, fam, log_lr[:, None], rel[:, None]])

    def standardise(self, numeric: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(np.asarray(numeric, dtype=float)) - self.median) / self.scale

    def to_arrays(self, prefix: str = "enc_") -> dict[str, np.ndarray]:
        return {
            prefix + "optimizers": np.array(self.optimizers, dtype=str),
            prefix + "families": np.array(self.families, dtype=str),
            prefix + "optimizer_family": np.array(self.optimizer_family, dtype=str),
            prefix + "default_lr": self.default_lr,
            prefix + "median": self.median,
            prefix + "scale": self.scale,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "enc_") -> "TraitEncoding":
        return cls(
            optimizers=[str(o) for o in arrays[prefix + "optimizers"]],
            families=[str(o) for o in arrays[prefix + "families"]],
            optimizer_family=[str(o) for o in arrays[prefix + "optimizer_family"]],
            default_lr=np.asarray(arrays[prefix + "default_lr"], dtype=float),
            median=np.asarray(arrays[prefix + "median"], dtype=float),
            scale=np.asarray(arrays[prefix + "scale"], dtype=float),
        )


def _default_lr(entry: Mapping[str, Any]) -> float:
    for hp in entry.get("hyperparams") or ():
        if hp.get("name") == "lr" and isinstance(hp.get("default"), (int, float)) and hp["default"] > 0:
            return float(hp["default"])
    return 1e-3


def trait_distances(
    query_z: np.ndarray,
    query_domain: str,
    rows_z: np.ndarray,
    rows_domain: np.ndarray,
    domain_distance: float,
    unknown_distance: float = 0.0,
) -> np.ndarray:
    """Euclidean distance in standardised trait space; a different domain adds ``domain_distance``.

    A trait unknown on either side (NaN) adds ``unknown_distance``: we do not know that it
    matches, so a vague query ("cv, batch 64") is not taken as close to every cv study.
    """
    q = np.asarray(query_z, dtype=float).ravel()
    rows_z = np.atleast_2d(np.asarray(rows_z, dtype=float))
    both = np.isfinite(rows_z) & np.isfinite(q)[None, :]
    diff = np.where(both, rows_z - np.where(np.isfinite(q), q, 0.0)[None, :], 0.0)
    d2 = (
        (diff**2).sum(axis=1)
        + (unknown_distance**2) * (~both).sum(axis=1)
        + (domain_distance**2) * (np.asarray(rows_domain) != query_domain)
    )
    return np.sqrt(d2)


def kernel_weights(distances: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel: a row at distance 0 counts 1, at one bandwidth ~0.61, at three ~0.01."""
    return np.exp(-0.5 * (np.asarray(distances) / bandwidth) ** 2)


# ----------------------------------------------------------------------------- the population
def family_balanced(families: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Task weights over ``mask`` (bool, per task) summing to 1, every family weighing as one task
    (a family with many instances does not outvote the rest); zeros if ``mask`` is empty."""
    families = np.asarray(families)
    w = np.zeros(len(families))
    if not np.any(mask):
        return w
    _, inverse, counts = np.unique(families[mask], return_inverse=True, return_counts=True)
    w[np.flatnonzero(mask)] = 1.0 / counts[inverse]
    return w / w.sum()


def population_mean(curves: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(optimizers, lrs): the weighted mean regret curve of each optimizer over the tasks that ran it
    (NaN where none did)."""
    ran = np.isfinite(curves).all(axis=2)  # (tasks, optimizers)
    w = np.where(ran, np.asarray(weights, dtype=float)[:, None], 0.0)
    total = w.sum(axis=0)
    mean = np.einsum("to,tol->ol", w, np.nan_to_num(curves, nan=0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, mean / total[:, None], np.nan)


def population_weights(families: np.ndarray, domains: np.ndarray, domain: str, domain_weight: float,
                       exclude: np.ndarray | None = None) -> np.ndarray:
    """Task weights of the population a query is judged against: (1 - a) x every family alike +
    a x the families of the query's domain alike (a = ``domain_weight``; all families where the
    domain has none). ``exclude``: tasks left out (bool per task)."""
    domains = np.asarray(domains)
    keep = np.ones(len(families), dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    every = family_balanced(families, keep)
    mine = family_balanced(families, keep & (domains == domain))
    if domain_weight <= 0 or not mine.any():
        return every
    return (1.0 - domain_weight) * every + domain_weight * mine
