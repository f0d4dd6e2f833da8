"""The facts about a workload that optimizer choice depends on: one TaskTraits for tasks, studies and the recommender.

A Task measures its traits (every number known); a recommender query may leave numbers unknown
(None: rules on them do not fire) and add what only a person can say (memory limits, a goal,
flags such as "noisy_gradients"). Both are the same record. Imports neither torch nor numpy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

DOMAINS: tuple[str, ...] = ("cv", "nlp", "tabular", "recsys", "speech", "rl", "gan", "other")
DIRECTIONS: tuple[str, ...] = ("maximize", "minimize")
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
#: Situations a practitioner can report; rules in recommend/data/rules.yaml react to them.
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

#: What a task measures about itself: the traits a study stores (``autoopt.traits``).
MEASURED: tuple[str, ...] = (
    "domain", "batch_size", "grad_sparsity", "n_params", "dataset_size", "metric", "direction", "sparse_gradients",
    "grad_rms",
)
#: What a recommender query holds (``autoopt recommend --json`` prints these).
QUERY: tuple[str, ...] = (
    "domain", "batch_size", "grad_sparsity", "sparse_gradients", "n_params", "dataset_size",
    "memory_limited", "goal", "flags", "grad_rms",
)


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
    """The inverse of :func:`parse_count` for display: 25_000_000 -> '25M'."""
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
class TaskTraits:
    """A workload's traits. Unknown numbers are None; values are validated and normalised on creation."""

    domain: str
    batch_size: int | None = None
    grad_sparsity: float | None = None
    n_params: int | None = None
    dataset_size: int | None = None
    metric: str | None = None
    direction: str | None = None
    sparse_gradients: bool = False
    memory_limited: bool = False
    goal: str | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    #: RMS gradient entry at initialisation (measured by a Task, never asked of a person): the
    #: scale SGD's step ``lr * g`` is taken in. Recorded with every zoo task and study; no answer
    #: uses it yet (placing momentum's lr by it won leaving zoo families out and lost on the
    #: reference tasks: docs/benchmarks.md, section 5)
    grad_rms: float | None = None

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise TraitError("domain", f"{self.domain!r} is not one of {', '.join(DOMAINS)}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise TraitError("direction", f"{self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        if self.batch_size is not None:
            if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
                raise TraitError("batch_size", f"must be a positive integer, got {self.batch_size!r}")
            object.__setattr__(self, "batch_size", int(self.batch_size))
        if self.grad_sparsity is not None:
            g = float(self.grad_sparsity)
            if not 0.0 <= g <= 1.0:
                raise TraitError("grad_sparsity", f"is the fraction of zero gradients, in [0, 1]; got {self.grad_sparsity!r}")
            object.__setattr__(self, "grad_sparsity", g)
        if self.grad_rms is not None:
            r = float(self.grad_rms)
            if not (math.isfinite(r) and r > 0):
                raise TraitError("grad_rms", "is the RMS gradient entry at initialisation, a positive number; "
                                             f"got {self.grad_rms!r}")
            object.__setattr__(self, "grad_rms", r)
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
        """The values rule conditions may test (see recommend/data/rules.yaml)."""
        return {**self.to_dict(QUERY), "flags": self.flags, "full_batch": self.full_batch}

    def to_dict(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """JSON-ready values of ``keys`` (default: all fields); flags as a sorted list."""
        keys = [f.name for f in fields(self)] if keys is None else list(keys)
        d = {k: getattr(self, k) for k in keys}
        if "flags" in d:
            d["flags"] = sorted(self.flags)
        return d

    def replace(self, **changes: Any) -> "TaskTraits":
        return TaskTraits(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_any(cls, obj: Any = None, **overrides: Any) -> "TaskTraits":
        """Traits from a TaskTraits, a Task (measured), a dict, or keywords.

        Keyword aliases: ``task`` for ``domain``, ``batch`` for ``batch_size``, ``sparsity`` for
        ``grad_sparsity``, ``sparse`` for ``sparse_gradients``, ``params`` for ``n_params``,
        ``size`` for ``dataset_size``.
        """
        base: dict[str, Any] = {}
        if obj is None:
            pass
        elif isinstance(obj, TaskTraits):
            base = {f.name: getattr(obj, f.name) for f in fields(obj)}
        elif isinstance(obj, Mapping):
            base = dict(obj)
        elif hasattr(obj, "traits") and callable(obj.traits):  # an autoopt Task: traits are measured
            base = obj.traits().to_dict()
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
_IGNORED = {"name"}


def _normalise_keys(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known = {f.name for f in fields(TaskTraits)}
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
