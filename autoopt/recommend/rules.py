"""The rule prior: the documents' guidance (data/rules.yaml) applied to a query's traits.

Rules are records, not code: :class:`RuleBook` loads and validates them, :meth:`RuleBook.advise`
says which fired and what they add up to for each optimizer — a prior logit, suggested
hyperparameters with the rule behind each value, ranges, learning-rate scaling, schedule votes,
memory penalty and notes. Conflicting sources stay separate rules; higher ``priority`` wins a
hyperparameter and the losers are kept as alternatives, so the answer can show both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from autoopt.core.traits import DOMAINS, FLAGS, GOALS, TaskTraits

DATA_DIR = Path(__file__).with_name("data")
RULES_PATH = DATA_DIR / "rules.yaml"

#: TaskTraits a condition may test, with the kind of value they hold.
CONDITION_TRAITS: dict[str, str] = {
    "domain": "choice",
    "batch_size": "number",
    "grad_sparsity": "number",
    "sparse_gradients": "bool",
    "n_params": "number",
    "dataset_size": "number",
    "memory_limited": "bool",
    "goal": "choice",
    "flags": "set",
    "full_batch": "bool",
}
_CHOICES = {"domain": DOMAINS, "goal": GOALS, "flags": FLAGS}
#: Hyperparameters that belong to the whole trial config rather than the optimizer.
CONFIG_KEYS = ("warmup_fraction", "grad_clip")
_RULE_KEYS = {
    "id", "text", "sources", "when", "optimizers", "applies_to", "hparams", "ranges", "lr_rule",
    "schedulers", "scheduler_params", "memory_penalty", "limits", "note", "priority",
}
SEED_FILE = re.compile(r"^\d{3}_[0-9a-f]{16}\.txt$")


class RuleError(ValueError):
    """A malformed rule record; the message names the rule and the field."""


@dataclass(frozen=True)
class Rule:
    """One piece of guidance. See the header of data/rules.yaml for what each field does."""

    id: str
    text: str
    sources: tuple[str, ...]
    when: Mapping[str, Any]
    optimizers: Mapping[str, float] = field(default_factory=dict)
    applies_to: tuple[str, ...] | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)
    ranges: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)
    lr_rule: Mapping[str, float] | None = None
    schedulers: Mapping[str, float] = field(default_factory=dict)
    scheduler_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    memory_penalty: float | None = None
    limits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    note: str | None = None
    priority: float = 1.0

    def holds(self, view: Mapping[str, Any]) -> bool:
        return condition_holds(self.when, view)


def condition_holds(cond: Mapping[str, Any], view: Mapping[str, Any]) -> bool:
    """Whether every clause holds; a clause on an unknown (None) trait does not."""
    for key, spec in cond.items():
        if key == "any":
            if not any(condition_holds(c, view) for c in spec):
                return False
            continue
        value = view.get(key)
        if value is None:
            return False
        if isinstance(spec, list):
            ok = bool(set(value) & set(spec)) if isinstance(value, (set, frozenset)) else value in spec
        elif isinstance(spec, dict):
            ok = (spec.get("min") is None or value >= spec["min"]) and (spec.get("max") is None or value <= spec["max"])
        else:
            ok = value == spec
        if not ok:
            return False
    return True


@dataclass
class HParamChoice:
    """A suggested value, the rule that set it, and the values other fired rules preferred."""

    value: Any
    rule: str | None
    alternatives: list[tuple[Any, str]] = field(default_factory=list)


@dataclass
class Contribution:
    """A fired rule's effect on one optimizer's prior."""

    rule: Rule
    weight: float
    alias: str | None = None  # why a document's optimizer name was mapped to this entry


@dataclass
class OptimizerAdvice:
    """Everything the fired rules say about one catalog optimizer."""

    name: str
    logit: float = 0.0
    contributions: list[Contribution] = field(default_factory=list)
    hparams: dict[str, HParamChoice] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    lr_base: tuple[float, float, float, str] | None = None  # base, reference batch, exponent, rule
    lr_exponent: tuple[float, str] | None = None
    scheduler_votes: dict[str, float] = field(default_factory=dict)
    scheduler_rules: dict[str, list[str]] = field(default_factory=dict)
    scheduler_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory_penalty: float = 0.0

    @property
    def prior(self) -> float:
        """The prior score in (0, 1): a logistic of the summed rule weights."""
        return 1.0 / (1.0 + math.exp(-self.logit))

    @property
    def supporting(self) -> list[Contribution]:
        return [c for c in self.contributions if c.weight > 0]


@dataclass
class Advice:
    """The rule prior for one query."""

    traits: TaskTraits
    fired: list[Rule]
    optimizers: dict[str, OptimizerAdvice]
    notes: list[tuple[str, Rule]]
    limits: dict[str, dict[str, float]]
    unmapped: list[tuple[str, Rule, str]]  # (name, rule, why) for names with no catalog entry


class RuleBook:
    """The validated rule table plus the lookups it needs (sources, groups, aliases)."""

    def __init__(self, data: Mapping[str, Any], origin: str = "rules"):
        self.origin = origin
        self.sources: dict[str, dict[str, str]] = {str(k): dict(v) for k, v in (data.get("sources") or {}).items()}
        self.groups: dict[str, list[str]] = {k: list(v) for k, v in (data.get("groups") or {}).items()}
        self.aliases: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (data.get("aliases") or {}).items()}
        self.state_per_param: dict[str, float] = {k: float(v) for k, v in (data.get("state_per_param") or {}).items()}
        records = data.get("rules")
        if not isinstance(records, list) or not records:
            raise RuleError(f"{origin}: 'rules' must be a non-empty list")
        self.rules: list[Rule] = []
        seen: set[str] = set()
        for i, rec in enumerate(records):
            rule = self._parse(rec, f"{origin}: rules[{i}]")
            if rule.id in seen:
                raise RuleError(f"{origin}: duplicate rule id {rule.id!r}")
            seen.add(rule.id)
            self.rules.append(rule)

    # --- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> "RuleBook":
        path = Path(path) if path else RULES_PATH
        return _load_cached(str(path.resolve()))

    def _parse(self, rec: Any, where: str) -> Rule:
        if not isinstance(rec, dict):
            raise RuleError(f"{where}: a rule is a mapping")
        rid = rec.get("id")
        if not isinstance(rid, str) or not rid:
            raise RuleError(f"{where}: 'id' is required")
        where = f"{self.origin}: rule {rid!r}"
        unknown = set(rec) - _RULE_KEYS
        if unknown:
            raise RuleError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}")
        if not rec.get("text"):
            raise RuleError(f"{where}: 'text' is required")
        sources = tuple(str(s) for s in rec.get("sources") or ())
        if not sources:
            raise RuleError(f"{where}: 'sources' must cite at least one source")
        for s in sources:
            if s not in self.sources:
                raise RuleError(f"{where}: source {s!r} is not declared under 'sources' ({', '.join(self.sources)})")
        when = rec.get("when")
        if not isinstance(when, dict):
            raise RuleError(f"{where}: 'when' must be a mapping ({{}} for always)")
        _check_condition(when, where)
        optimizers = {str(k): float(v) for k, v in (rec.get("optimizers") or {}).items()}
        applies = rec.get("applies_to")
        for name in [*optimizers, *(applies or [])]:
            if name.startswith("@") and name[1:] not in self.groups:
                raise RuleError(f"{where}: unknown group {name!r}; groups: {', '.join('@' + g for g in self.groups)}")
        ranges: dict[str, dict[str, tuple[float, float]]] = {}
        for opt, hps in (rec.get("ranges") or {}).items():
            ranges[opt] = {}
            for hp, lohi in hps.items():
                if not (isinstance(lohi, list) and len(lohi) == 2 and float(lohi[0]) <= float(lohi[1])):
                    raise RuleError(f"{where}: ranges.{opt}.{hp} must be [low, high] with low <= high")
                ranges[opt][hp] = (float(lohi[0]), float(lohi[1]))
        lr_rule = rec.get("lr_rule")
        if lr_rule is not None:
            if not isinstance(lr_rule, dict) or "exponent" not in lr_rule or set(lr_rule) - {"base", "reference_batch", "exponent"}:
                raise RuleError(f"{where}: lr_rule is {{base?, reference_batch?, exponent}}")
            if "base" in lr_rule and "reference_batch" not in lr_rule:
                raise RuleError(f"{where}: lr_rule with a base needs reference_batch")
            lr_rule = {k: float(v) for k, v in lr_rule.items()}
        limits = rec.get("limits") or {}
        for k, v in limits.items():
            if not isinstance(v, dict) or set(v) - {"min", "max"}:
                raise RuleError(f"{where}: limits.{k} is {{min?, max?}}")
        return Rule(
            id=rid,
            text=str(rec["text"]),
            sources=sources,
            when=when,
            optimizers=optimizers,
            applies_to=tuple(applies) if applies else None,
            hparams=dict(rec.get("hparams") or {}),
            ranges=ranges,
            lr_rule=lr_rule,
            schedulers={str(k): float(v) for k, v in (rec.get("schedulers") or {}).items()},
            scheduler_params={k: dict(v) for k, v in (rec.get("scheduler_params") or {}).items()},
            memory_penalty=None if rec.get("memory_penalty") is None else float(rec["memory_penalty"]),
            limits={k: {kk: float(vv) for kk, vv in v.items()} for k, v in limits.items()},
            note=rec.get("note"),
            priority=float(rec.get("priority", 1.0)),
        )

    # --- lookups -----------------------------------------------------------------------
    def get(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def source_files(self, rule: Rule) -> list[str]:
        """What a rule cites: seed file names for the documents, references for the rest."""
        return [self.sources[s].get("file") or self.sources[s].get("ref") or s for s in rule.sources]

    def expand(self, names: Iterable[str]) -> list[str]:
        out: list[str] = []
        for n in names:
            out.extend(self.groups[n[1:]] if n.startswith("@") else [n])
        return list(dict.fromkeys(out))

    def resolve(self, name: str, catalog: Iterable[str]) -> tuple[str | None, str | None]:
        """(catalog name, alias reason) for a name a rule uses; (None, why) when there is none."""
        catalog = set(catalog)
        if name in catalog:
            return name, None
        alias = self.aliases.get(name)
        if alias and alias.get("use") in catalog:
            return alias["use"], alias.get("why")
        if alias:
            return None, alias.get("why") or "not in catalog"
        return None, "not in catalog"

    def mentioned_optimizers(self) -> set[str]:
        names: set[str] = set()
        for r in self.rules:
            names.update(self.expand(r.optimizers))
            names.update(self.expand(r.applies_to or ()))
            names.update(r.ranges)
        return names

    # --- applying ----------------------------------------------------------------------
    def fired(self, traits: TaskTraits) -> list[Rule]:
        view = traits.rule_view()
        return [r for r in self.rules if r.holds(view)]

    def advise(self, traits: TaskTraits, catalog: Iterable[str]) -> Advice:
        """Apply every fired rule to every catalog optimizer."""
        catalog = list(catalog)
        fired = self.fired(traits)
        advice = {name: OptimizerAdvice(name) for name in catalog}
        notes: list[tuple[str, Rule]] = []
        limits: dict[str, dict[str, float]] = {}
        unmapped: list[tuple[str, Rule, str]] = []
        # hyperparameter candidates: opt -> hp -> [(priority, order, value, rule id)]
        candidates: dict[str, dict[str, list[tuple[float, int, Any, str]]]] = {n: {} for n in catalog}
        for order, rule in enumerate(fired):
            if rule.note:
                notes.append((rule.note, rule))
            for k, v in rule.limits.items():
                limits.setdefault(k, {}).update(v)
            # optimizer weights: within one rule an alias and its target count once (the larger)
            weights: dict[str, float] = {}
            mapped: dict[str, list[str]] = {}
            for name in self.expand(rule.optimizers):
                w = rule.optimizers.get(name)
                if w is None:  # a group entry
                    w = next(rule.optimizers[g] for g in rule.optimizers if g.startswith("@") and name in self.groups[g[1:]])
                target, why = self.resolve(name, catalog)
                if target is None:
                    unmapped.append((name, rule, why or "not in catalog"))
                    continue
                if why:
                    mapped.setdefault(target, []).append(why)
                if target not in weights or abs(w) > abs(weights[target]):
                    weights[target] = w
            for target, w in weights.items():
                advice[target].logit += w
                why = "; ".join(mapped[target]) if target in mapped else None
                advice[target].contributions.append(Contribution(rule, w, why))
            if rule.memory_penalty:
                for a in advice.values():
                    a.memory_penalty = max(a.memory_penalty, rule.memory_penalty)
            # everything else applies to `applies_to` (default: the optimizers it names)
            targets = self.expand(rule.applies_to if rule.applies_to is not None else rule.optimizers)
            resolved = {t for t in (self.resolve(n, catalog)[0] for n in targets) if t}
            resolved |= {t for t in (self.resolve(n, catalog)[0] for n in rule.ranges) if t}
            for name in resolved:
                a = advice[name]
                for hp, value in rule.hparams.items():
                    candidates[name].setdefault(hp, []).append((rule.priority, -order, value, rule.id))
                for opt, hps in rule.ranges.items():
                    if self.resolve(opt, catalog)[0] == name:
                        for hp, lohi in hps.items():
                            a.ranges[hp] = lohi
                if rule.lr_rule:
                    if "base" in rule.lr_rule and (a.lr_base is None or rule.priority >= _priority(self, a.lr_base[3])):
                        a.lr_base = (rule.lr_rule["base"], rule.lr_rule["reference_batch"], rule.lr_rule["exponent"], rule.id)
                    a.lr_exponent = (rule.lr_rule["exponent"], rule.id)
                    if "base" in rule.lr_rule:
                        candidates[name].setdefault("lr", []).append((rule.priority, -order, _LR_FROM_RULE, rule.id))
                for sched, vote in rule.schedulers.items():
                    a.scheduler_votes[sched] = a.scheduler_votes.get(sched, 0.0) + vote
                    a.scheduler_rules.setdefault(sched, []).append(rule.id)
                for sched, params in rule.scheduler_params.items():
                    a.scheduler_params.setdefault(sched, {}).update(params)
        for name, hps in candidates.items():
            a = advice[name]
            for hp, cands in hps.items():
                cands.sort(key=lambda c: (c[0], c[1]), reverse=True)
                _, _, value, rid = cands[0]
                alts = [(v, r) for _, _, v, r in cands[1:] if v != value]
                a.hparams[hp] = HParamChoice(value, rid, alts)
        return Advice(traits, fired, advice, notes, limits, unmapped)


#: Marks an lr candidate computed from the rule's lr_rule (base x batch scaling).
_LR_FROM_RULE = "lr_rule"


def _priority(book: RuleBook, rule_id: str) -> float:
    return book.get(rule_id).priority


def lr_from_rule(advice: OptimizerAdvice, batch_size: int | None) -> float | None:
    """lr = base * (batch / reference) ** exponent; the base when the batch is unknown."""
    if advice.lr_base is None:
        return None
    base, ref, exp, _ = advice.lr_base
    return base * (batch_size / ref) ** exp if batch_size else base


def _check_condition(cond: Mapping[str, Any], where: str) -> None:
    for key, spec in cond.items():
        if key == "any":
            if not isinstance(spec, list) or not spec:
                raise RuleError(f"{where}: when.any must be a non-empty list of conditions")
            for c in spec:
                if not isinstance(c, dict):
                    raise RuleError(f"{where}: when.any entries are mappings")
                _check_condition(c, where)
            continue
        kind = CONDITION_TRAITS.get(key)
        if kind is None:
            raise RuleError(f"{where}: when.{key}: unknown trait; allowed: any, {', '.join(CONDITION_TRAITS)}")
        if isinstance(spec, list):
            allowed = _CHOICES.get(key)
            bad = [v for v in spec if allowed is not None and v not in allowed]
            if bad:
                raise RuleError(f"{where}: when.{key}: {bad} not allowed; allowed: {', '.join(allowed or ())}")
        elif isinstance(spec, dict):
            if kind != "number" or not spec or set(spec) - {"min", "max"}:
                raise RuleError(f"{where}: when.{key}: a range {{min, max}} needs a numeric trait")
        elif kind == "bool" and not isinstance(spec, bool):
            raise RuleError(f"{where}: when.{key} must be true or false")


@lru_cache(maxsize=8)
def _load_cached(path: str) -> RuleBook:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RuleError(f"rule file not found: {p}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(p.read_text(encoding="utf-8"), Loader=loader)
    if not isinstance(data, dict):
        raise RuleError(f"{p}: the rule file is a mapping with 'sources', 'groups', 'aliases', 'rules'")
    return RuleBook(data, origin=p.name)
