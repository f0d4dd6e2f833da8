"""Rank optimizers for a task: the rule prior, blended with the learned model as evidence grows.

For each catalog optimizer that can run on the task:

* prior  p = logistic(sum of fired rule weights - memory penalty)        (rules.py)
* model  m ± s from the fitted ensemble, with n_near = kernel-weighted meta-dataset rows of
  that optimizer near the query in standardised trait space                (model.py)
* score  = w m + (1 - w) p with w = n_near / (n_near + k): the documents decide where there is
  no evidence, the studies decide where there is a lot.

Hyperparameters come the same way: the rules' values (each with the rule behind it), the
learned learning rate blended in log space with weight w, the schedule from rule votes
blended with what won in the similar studies.

This module imports neither torch nor scikit-learn: the shipped model is read from plain
arrays (data/model.npz) and the optimizer catalog is torch-free data (autoopt.core.catalog), so
``autoopt recommend`` answers in well under 2 seconds.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from autoopt.core.catalog import CATALOG, SCHEDULERS
from autoopt.core.traits import QUERY, TaskTraits, human_bytes
from autoopt.recommend.features import TraitEncoding, kernel_weights, lr_batch_shift, numeric_row, trait_distances
from autoopt.recommend.rules import CONFIG_KEYS, Advice, OptimizerAdvice, RuleBook, lr_from_rule

DATA_DIR = Path(__file__).with_name("data")
MODEL_FILE = "model.npz"
#: Standard deviation of the rule prior (it encodes advice, not measurements).
PRIOR_STD = 0.2
#: Meta-dataset rows of the query's domain within this many kernel bandwidths (kernel weight
#: >= 0.2) count as "similar studies" in the explanation.
SIMILAR_BANDWIDTHS = 1.8
#: Bytes per stored value of optimizer state (fp32).
STATE_BYTES = 4


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
@dataclass
class ModelAnswer:
    """The learned model's view of one optimizer for one query."""

    score: float | None
    score_std: float | None
    lr: float | None
    lr_low: float | None
    lr_high: float | None
    n_near: float
    weight: float


class ModelFileError(ValueError):
    """A file given as a recommender model is not one."""


class CompiledModel:
    """A fitted :class:`~autoopt.recommend.model.OptimizerScoreModel` evaluated with numpy only.

    Loaded from ``np.load`` (no pickle); predictions equal the estimator's (tested).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], origin: str = "memory"):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.origin = origin
        self.encoding = TraitEncoding.from_arrays(self.arrays)
        self.bandwidth, self.domain_distance, self.evidence_k, self.reference_batch, self.unknown_distance = (
            float(x) for x in self.arrays["params"]
        )
        self.exponents = dict(zip((str(n) for n in self.arrays["exp_names"]), (float(v) for v in self.arrays["exp_values"])))
        self.train_z = np.atleast_2d(self.arrays["train_z"]).astype(float)
        self.train_domain = self.arrays["train_domain"].astype(str)
        self.train_optimizer = self.arrays["train_optimizer"].astype(str)
        self.has_lr = "lr_roots" in self.arrays
        # optional per-row details for showing evidence (written by meta.fit_model)
        self.rows: list[dict[str, Any]] = json.loads(str(self.arrays["rows_json"])) if "rows_json" in self.arrays else []

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
    def from_estimator(cls, estimator: Any, rows: list[dict[str, Any]] | None = None) -> "CompiledModel":
        arrays = estimator.to_arrays()
        if rows is not None:
            arrays["rows_json"] = np.array(json.dumps(rows))
        return cls(arrays)

    @property
    def optimizers(self) -> list[str]:
        return self.encoding.optimizers

    @property
    def n_rows(self) -> int:
        return len(self.train_optimizer)

    def _forest(self, prefix: str, X: np.ndarray) -> np.ndarray:
        """Per-tree predictions, shape (n_trees, n_rows); same float32 comparisons as sklearn."""
        a = self.arrays
        left, right = a[prefix + "left"], a[prefix + "right"]
        feature, threshold, value = a[prefix + "feature"], a[prefix + "threshold"], a[prefix + "value"]
        roots = a[prefix + "roots"]
        X32 = np.asarray(X, dtype=np.float32).astype(np.float64)
        n = X32.shape[0]
        node = np.repeat(roots[:, None], n, axis=1)
        cols = np.broadcast_to(np.arange(n)[None, :], node.shape)
        active = left[node] != -1
        while active.any():
            f = np.where(active, feature[node], 0)
            go_left = X32[cols, f] <= threshold[node]
            nxt = np.where(go_left, left[node], right[node])
            node = np.where(active, nxt, node)
            active = left[node] != -1
        return value[node]

    def design(self, traits: TaskTraits, optimizers: list[str]) -> tuple[np.ndarray, np.ndarray]:
        numeric = numeric_row(traits)
        rows = np.repeat(numeric[None, :], len(optimizers), axis=0)
        return self.encoding.design(rows, [traits.domain] * len(optimizers), optimizers), numeric

    def evidence(self, traits: TaskTraits, optimizer: str) -> tuple[float, np.ndarray, np.ndarray]:
        """(n_near, indices of this optimizer's training rows, their distances)."""
        idx = np.flatnonzero(self.train_optimizer == optimizer)
        if not len(idx):
            return 0.0, idx, np.zeros(0)
        z = self.encoding.standardise(numeric_row(traits))[0]
        d = trait_distances(
            z, traits.domain, self.train_z[idx], self.train_domain[idx], self.domain_distance, self.unknown_distance
        )
        return float(kernel_weights(d, self.bandwidth).sum()), idx, d

    def answer(self, traits: TaskTraits, optimizers: list[str]) -> dict[str, ModelAnswer]:
        known = [o for o in optimizers if o in set(self.optimizers)]
        out = {o: ModelAnswer(None, None, None, None, None, 0.0, 0.0) for o in optimizers}
        if not known:
            return out
        X, numeric = self.design(traits, known)
        per_tree = self._forest("score_", X)
        mean, std = per_tree.mean(axis=0), per_tree.std(axis=0)
        lr = lo = hi = [None] * len(known)
        if self.has_lr:
            batch_log2 = self.encoding.impute(numeric[None, :])[0, 0]
            shift = lr_batch_shift([self.exponents.get(o, 0.5) for o in known], batch_log2, self.reference_batch)
            q = np.percentile(self._forest("lr_", X), [50, 10, 90], axis=0) + shift
            lr, lo, hi = (10 ** q[0]).tolist(), (10 ** q[1]).tolist(), (10 ** q[2]).tolist()
        for i, o in enumerate(known):
            n_near = self.evidence(traits, o)[0]
            out[o] = ModelAnswer(
                float(mean[i]), float(std[i]), lr[i], lo[i], hi[i], n_near, n_near / (n_near + self.evidence_k)
            )
        return out


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

    def __iter__(self):
        return iter(self.recommendations)

    def __len__(self) -> int:
        return len(self.recommendations)

    def __getitem__(self, i: int) -> Recommendation:
        return self.recommendations[i]

    @property
    def optimizers(self) -> list[str]:
        return [r.optimizer for r in self.recommendations]

    def to_dict(self) -> dict[str, Any]:
        return {
            "traits": self.traits.to_dict(QUERY),
            "recommendations": [r.to_dict() for r in self.recommendations],
            "notes": self.notes,
            "excluded": self.excluded,
            "unmapped": self.unmapped,
            "fired_rules": self.fired_rules,
            "model": self.model,
        }


# ============================================================================ the recommender
class Recommender:
    """Rules + (optional) learned model + catalog -> ranked, ready-to-use recommendations."""

    def __init__(
        self,
        rules: RuleBook | None = None,
        model: CompiledModel | Any | None = None,
        catalog: CatalogView | None = None,
        rows: list[dict[str, Any]] | None = None,
    ):
        self.rules = rules or RuleBook.load()
        if model is not None and not isinstance(model, CompiledModel):
            model = CompiledModel.from_estimator(model, rows)  # a fitted OptimizerScoreModel
        self.model: CompiledModel | None = model
        self.catalog = catalog or CatalogView.current()

    @classmethod
    def default(cls, model_path: str | Path | None = None) -> "Recommender":
        return _default_recommender(str(model_path) if model_path else str(default_model_path()))

    # --- scoring -----------------------------------------------------------------------
    def rank(self, traits: Any, top: int | None = 5, **overrides: Any) -> RecommendationSet:
        """Ranked recommendations for ``traits`` (TaskTraits, TaskTraits, Task, dict or keywords)."""
        t = TaskTraits.from_any(traits, **overrides) if not isinstance(traits, TaskTraits) or overrides else traits
        advice = self.rules.advise(t, self.catalog.names)
        excluded: dict[str, str] = {}
        feasible: list[str] = []
        for name in self.catalog.names:
            ok, why = self.catalog.applicable(name, t)
            (feasible.append(name) if ok else excluded.__setitem__(name, why or "not applicable"))
        answers = self.model.answer(t, feasible) if self.model is not None else {}
        recs = [self._recommend_one(t, advice, advice.optimizers[name], answers.get(name)) for name in feasible]
        recs.sort(key=lambda r: (-r.score, -r.prior_score, r.optimizer))
        for i, r in enumerate(recs, 1):
            r.rank = i
        if top is not None:
            recs = recs[:top]
        return RecommendationSet(
            traits=t,
            recommendations=recs,
            notes=[
                {"text": note, "rule": rule.id, "sources": self.rules.source_files(rule)} for note, rule in advice.notes
            ],
            excluded=excluded,
            unmapped=[
                {"name": name, "rule": rule.id, "why": why} for name, rule, why in _dedupe_unmapped(advice.unmapped)
            ],
            model={
                "fitted": self.model is not None,
                "origin": self.model.origin if self.model else None,
                "meta_rows": self.model.n_rows if self.model else 0,
                "evidence_k": self.model.evidence_k if self.model else None,
                "catalog": self.catalog.origin,
                "rules": self.rules.origin,
            },
            fired_rules=[r.id for r in advice.fired],
        )

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
        w = m.weight if m and m.score is not None else 0.0
        learned = m.score if m and m.score is not None else None
        score = w * learned + (1 - w) * prior if learned is not None else prior
        std = math.sqrt((w * (m.score_std or 0.0)) ** 2 + ((1 - w) * prior_std) ** 2) if learned is not None else prior_std
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
        if m is not None and m.lr is not None and w > 0:
            lr = _geo_blend(m.lr, lr, w)
            lo, hi = _geo_blend(m.lr_low, lo, w), _geo_blend(m.lr_high, hi, w)
            sources["lr"] = f"learned model (weight {w:.2f}) + {sources.get('lr', 'catalog default')}"
        if lr_hp:
            lr = _clip_hp(lr_hp, lr)
            lo, hi = max(lo, lr_hp["low"]), min(hi, lr_hp["high"])
            lo, hi = min(lo, lr), max(hi, lr)
        values["lr"] = lr
        # schedule: rule votes, blended with what won in similar studies
        sched, sched_src = self._scheduler(t, a, w)
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
                out[f"{hp}_range"] = [_round(rng[0]), _round(rng[1])]
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
        if self.model is None or not self.model.rows:
            return {}
        _, idx, d = self.model.evidence(t, name)
        wts = kernel_weights(d, self.model.bandwidth)
        votes: dict[str, float] = {}
        for i, wt in zip(idx, wts):
            sched = (self.model.rows[i].get("best_config") or {}).get("scheduler")
            if sched in self.catalog.schedulers:
                votes[sched] = votes.get(sched, 0.0) + float(wt)
        total = sum(votes.values())
        return {s: v / total for s, v in votes.items()} if total > 0 else {}

    def _evidence(self, t: TaskTraits, name: str, m: ModelAnswer | None) -> dict[str, Any]:
        out: dict[str, Any] = {"n_near": round(m.n_near, 2) if m else 0.0, "similar_studies": 0}
        if self.model is None:
            return out
        _, idx, d = self.model.evidence(t, name)
        near = [
            int(i)
            for i, dist in zip(idx, d)
            if dist <= SIMILAR_BANDWIDTHS * self.model.bandwidth and self.model.train_domain[i] == t.domain
        ]
        out["similar_studies"] = len(near)
        if not near or not self.model.rows:
            return out
        rows = [self.model.rows[i] for i in near]
        scores = [r["normalized_score"] for r in rows if r.get("normalized_score") is not None]
        out["best_in"] = sum(1 for s in scores if s >= 0.999)
        out["median_normalized_score"] = round(float(np.median(scores)), 3) if scores else None
        best = max(rows, key=lambda r: r.get("normalized_score") or 0.0)
        out["example"] = {
            k: best.get(k) for k in ("study", "task", "batch_size", "metric", "best_value", "normalized_score", "best_lr")
        }
        return out

    # --- warm start ----------------------------------------------------------------------
    def top_optimizers(self, traits: Any, k: int = 3) -> list[str]:
        return self.rank(traits, top=k).optimizers

    def suggest_configs(self, traits: Any, k: int = 3) -> list[dict[str, Any]]:
        """TrialConfig dicts of the top-k recommendations (autoopt.space.TrialConfig.from_dict)."""
        return [r.trial_config for r in self.rank(traits, top=k)]


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
    """TrialConfig dicts for the top-k optimizers at their suggested hyperparameters."""
    return Recommender.default().suggest_configs(TaskTraits.from_any(traits), k)


def suggest_trials(traits: Any, k: int = 3, space: Any = None) -> list[dict[str, Any]]:
    """Optuna params for ``study.enqueue_trial``: the top-k suggestions in autoopt's namespaced
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
    out = []
    for r in rec.rank(t, top=None):
        if len(out) >= k:
            break
        try:
            out.append(space.to_optuna_params(r.trial_config))
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
