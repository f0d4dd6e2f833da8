"""What the recommender knows about a workload (its traits) and how traits become numbers.

Kept free of torch and scikit-learn so ``autoopt recommend`` answers in well under 2 seconds:
both the rule prior and the compiled learned model read traits through this module.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

import numpy as np

#: Same values as :data:`autoopt.task.DOMAINS` (a test keeps them equal; importing task pulls torch).
DOMAINS: tuple[str, ...] = ("cv", "nlp", "tabular", "recsys", "speech", "rl", "gan", "other")
GOALS: tuple[str, ...] = ("fast", "generalization", "balanced")
_GOAL_ALIASES = {
    "fast": "fast",
    "fast-convergence": "fast",
    "fast_convergence": "fast",
    "convergence": "fast",
    "speed": "fast",
    "generalization": "generalization",
    "generalisation": "generalization",
    "balanced": "balanced",
    "balance": "balanced",
}
#: Situations a practitioner can report; rules in data/rules.yaml react to them.
FLAGS: tuple[str, ...] = (
    "noisy_gradients",
    "diverges",
    "exploding_gradients",
    "adam_unstable",
    "adam_not_converging",
    "no_normalization",
    "hard_to_tune",
    "quick_experiment",
)
#: Gradient sparsity at or above this counts as "sparse" where a boolean is needed.
SPARSE_THRESHOLD = 0.5


class TraitError(ValueError):
    """A trait value that cannot be used; the message names the field and what is allowed."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*$")
_UNIT = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str | int | float, field_name: str = "params") -> int:
    """'25M' -> 25_000_000, '1.3B', '350k', '1e6', 1200 -> int. Raises TraitError otherwise."""
    if isinstance(text, bool):
        raise TraitError(field_name, f"{text!r} is not a count")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _COUNT.match(str(text))
        if not m:
            raise TraitError(field_name, f"{text!r} is not a count; use a number like 350k, 25M or 1.3B")
        value = float(m.group(1)) * _UNIT[m.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise TraitError(field_name, f"{text!r} must be a positive count")
    return int(round(value))


def human_count(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class Traits:
    """A query to the recommender. Unknown numeric traits are None (rules on them do not fire)."""

    domain: str
    batch_size: int | None = None
    grad_sparsity: float | None = None
    sparse_gradients: bool = False
    n_params: int | None = None
    dataset_size: int | None = None
    memory_limited: bool = False
    goal: str | None = None
    flags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise TraitError("domain", f"{self.domain!r} is not one of {', '.join(DOMAINS)}")
        if self.batch_size is not None:
            if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
                raise TraitError("batch_size", f"must be a positive integer, got {self.batch_size!r}")
            object.__setattr__(self, "batch_size", int(self.batch_size))
        if self.grad_sparsity is not None:
            g = float(self.grad_sparsity)
            if not 0.0 <= g <= 1.0:
                raise TraitError("grad_sparsity", f"is the fraction of zero gradients, in [0, 1]; got {self.grad_sparsity!r}")
            object.__setattr__(self, "grad_sparsity", g)
        for name in ("n_params", "dataset_size"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, parse_count(v, name))
        if self.goal is not None:
            goal = _GOAL_ALIASES.get(str(self.goal).strip().lower())
            if goal is None:
                raise TraitError("goal", f"{self.goal!r} is not one of {', '.join(GOALS)}")
            object.__setattr__(self, "goal", goal)
        flags = frozenset(str(f).strip().lower().replace("-", "_") for f in (self.flags or ()))
        bad = sorted(flags - set(FLAGS))
        if bad:
            raise TraitError("flags", f"{', '.join(map(repr, bad))} not known; allowed: {', '.join(FLAGS)}")
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "sparse_gradients", bool(self.sparse_gradients))
        object.__setattr__(self, "memory_limited", bool(self.memory_limited))

    # --- derived -----------------------------------------------------------------------
    @property
    def full_batch(self) -> bool | None:
        """Whether one batch holds the whole training set (None when either size is unknown)."""
        if self.batch_size is None or self.dataset_size is None:
            return None
        return self.batch_size >= self.dataset_size

    @property
    def sparse(self) -> bool:
        return self.sparse_gradients or (self.grad_sparsity or 0.0) >= SPARSE_THRESHOLD

    def rule_view(self) -> dict[str, Any]:
        """The values rule conditions may test (see data/rules.yaml)."""
        return {
            "domain": self.domain,
            "batch_size": self.batch_size,
            "grad_sparsity": self.grad_sparsity,
            "sparse_gradients": self.sparse_gradients,
            "n_params": self.n_params,
            "dataset_size": self.dataset_size,
            "memory_limited": self.memory_limited,
            "goal": self.goal,
            "flags": self.flags,
            "full_batch": self.full_batch,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["flags"] = sorted(self.flags)
        return d

    def replace(self, **changes: Any) -> "Traits":
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return Traits(**d)

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_any(cls, obj: Any = None, **overrides: Any) -> "Traits":
        """Traits from a Traits, an autoopt TaskTraits, a Task (measured), a dict, or keywords.

        Keyword aliases: ``task`` for ``domain``, ``batch`` for ``batch_size``, ``sparsity`` for
        ``grad_sparsity``, ``sparse`` for ``sparse_gradients``, ``params`` for ``n_params``.
        """
        base: dict[str, Any] = {}
        if obj is None:
            pass
        elif isinstance(obj, Traits):
            base = {f.name: getattr(obj, f.name) for f in fields(obj)}
        elif isinstance(obj, Mapping):
            base = dict(obj)
        elif hasattr(obj, "traits") and callable(obj.traits):  # an autoopt Task: traits are measured
            base = obj.traits().to_dict()
        elif hasattr(obj, "to_dict") and hasattr(obj, "domain"):  # autoopt.task.TaskTraits
            base = obj.to_dict()
        else:
            raise TraitError("traits", f"cannot read traits from {type(obj).__name__}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_normalise_keys(base))


_KEY_ALIASES = {
    "task": "domain",
    "batch": "batch_size",
    "sparsity": "grad_sparsity",
    "sparse": "sparse_gradients",
    "params": "n_params",
    "size": "dataset_size",
}
_IGNORED = {"metric", "direction", "name"}


def _normalise_keys(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known = {f.name for f in fields(Traits)}
    for k, v in d.items():
        key = _KEY_ALIASES.get(k, k)
        if key in _IGNORED:
            continue
        if key not in known:
            raise TraitError(k, f"unknown trait; known: {', '.join(sorted(known))}")
        out[key] = v
    if "domain" not in out:
        raise TraitError("domain", f"is required; one of {', '.join(DOMAINS)}")
    return out


# ----------------------------------------------------------------------------- numeric encoding
#: Numeric trait features, in order. log scales make "twice the batch" the same step everywhere.
NUMERIC_FEATURES: tuple[str, ...] = ("log2_batch", "grad_sparsity", "log10_params", "log10_dataset", "sparse_gradients")
#: Lower bound of each feature's scale in trait-space distances (so a constant column in the
#: meta-dataset does not make any change of it look infinitely far).
SCALE_FLOOR = np.array([1.0, 0.1, 0.5, 0.5, 0.5])


def numeric_row(t: Mapping[str, Any] | Traits) -> np.ndarray:
    """The numeric features of one set of traits; NaN where a trait is unknown."""
    get = (lambda k: getattr(t, k)) if isinstance(t, Traits) else (lambda k: t.get(k))

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
    """How traits and an optimizer name become one model input row. Learned by :meth:`fit`.

    Columns: the numeric features (unknowns imputed by the training medians), a one-hot of the
    domain, and a one-hot of the optimizer. ``scale`` standardises numeric features for
    trait-space distances (evidence counting).
    """

    optimizers: list[str] = field(default_factory=list)
    median: np.ndarray = field(default_factory=lambda: np.zeros(len(NUMERIC_FEATURES)))
    scale: np.ndarray = field(default_factory=lambda: SCALE_FLOOR.copy())

    @classmethod
    def fit(cls, numeric: np.ndarray, optimizers: Iterable[str]) -> "TraitEncoding":
        numeric = np.asarray(numeric, dtype=float)
        with np.errstate(all="ignore"):
            median = np.nanmedian(numeric, axis=0) if len(numeric) else np.zeros(numeric.shape[1])
            std = np.nanstd(numeric, axis=0) if len(numeric) else np.zeros(numeric.shape[1])
        median = np.where(np.isfinite(median), median, 0.0)
        std = np.where(np.isfinite(std), std, 0.0)
        return cls(optimizers=sorted(set(optimizers)), median=median, scale=np.maximum(std, SCALE_FLOOR))

    @property
    def feature_names(self) -> list[str]:
        return [*NUMERIC_FEATURES, *(f"domain={d}" for d in DOMAINS), *(f"optimizer={o}" for o in self.optimizers)]

    def impute(self, numeric: np.ndarray) -> np.ndarray:
        numeric = np.array(numeric, dtype=float, copy=True)
        mask = ~np.isfinite(numeric)
        if mask.any():
            numeric[mask] = np.broadcast_to(self.median, numeric.shape)[mask]
        return numeric

    def design(self, numeric: np.ndarray, domains: Iterable[str], optimizers: Iterable[str]) -> np.ndarray:
        """Model input matrix; an optimizer outside the vocabulary gets an all-zero one-hot."""
        numeric = self.impute(np.atleast_2d(numeric))
        domains, optimizers = list(domains), list(optimizers)
        n = numeric.shape[0]
        dom = np.zeros((n, len(DOMAINS)))
        opt = np.zeros((n, len(self.optimizers)))
        d_index = {d: i for i, d in enumerate(DOMAINS)}
        o_index = {o: i for i, o in enumerate(self.optimizers)}
        for i, (d, o) in enumerate(zip(domains, optimizers)):
            if d in d_index:
                dom[i, d_index[d]] = 1.0
            if o in o_index:
                opt[i, o_index[o]] = 1.0
        return np.hstack([numeric, dom, opt])

    def standardise(self, numeric: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(np.asarray(numeric, dtype=float)) - self.median) / self.scale

    def to_arrays(self, prefix: str = "enc_") -> dict[str, np.ndarray]:
        return {
            prefix + "optimizers": np.array(self.optimizers, dtype=str),
            prefix + "median": self.median,
            prefix + "scale": self.scale,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "enc_") -> "TraitEncoding":
        return cls(
            optimizers=[str(o) for o in arrays[prefix + "optimizers"]],
            median=np.asarray(arrays[prefix + "median"], dtype=float),
            scale=np.asarray(arrays[prefix + "scale"], dtype=float),
        )


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
