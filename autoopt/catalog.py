"""The optimizers autoopt can choose from, with their hyperparameters and search ranges.

Every entry says where it comes from (``torch.optim`` or the ``pytorch-optimizer`` package),
which guidance supports it (source documents ``000``..``004`` summarised in GUIDANCE.md, or
the AlgoPerf / authors' evidence quoted there), the range each hyperparameter is searched in,
how much optimizer state it keeps per parameter, and how it applies weight decay.

Conventions the search space relies on:

* Ranges are *search* ranges, not hard limits: :meth:`OptimizerSpec.build` accepts any value
  the optimizer's own constructor accepts (it only rejects unknown names and categorical
  values outside ``choices``).
* ``log=True``: sample on a log scale.  ``one_minus_log=True``: sample ``1 - value`` on a log
  scale (momentum-like values near 1: beta1, beta2, momentum, rho; AlgoPerf samples
  ``1 - beta1`` this way).  ``allow_zero=True``: 0 is a valid extra option besides the range
  (weight decay off, momentum off); the default may be that 0.
* ``active_if=(other, values)``: the hyperparameter only matters when hyperparameter ``other``
  takes one of ``values`` (e.g. Lookahead's ``momentum`` only for ``base="momentum"``).
  Parents come first in ``hyperparams``.
* ``priority``: tuning order from Google's deep-learning tuning playbook (lr 0, then
  beta1/momentum 1, structural choices / weight decay 2, eps 3, beta2 4); with very few trials
  a search space may tune only the low-priority-number ones and keep the rest at defaults.
* Weight decay: ``"decoupled"`` is passed as the optimizer's decoupled (AdamW-style) decay,
  ``"l2"`` as coupled L2 in the gradient (torch's ``weight_decay``), ``"none"``: no decay
  hyperparameter.  Biases and normalisation layers (module class names containing ``Norm``)
  are excluded from weight decay via ``pytorch_optimizer.get_optimizer_parameters``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

HyperParamKind = Literal["float", "int", "categorical"]
WeightDecayMode = Literal["decoupled", "l2", "none"]

#: Requirement tags an optimizer may carry (see :meth:`OptimizerSpec.applicable`).
REQUIREMENTS = frozenset({"sparse_gradients", "dense_gradients", "full_batch", "matrix_params"})

#: Parameter-name / module-class-name substrings excluded from weight decay.
NO_DECAY_PATTERNS: tuple[str, ...] = ("bias", "Norm")


# --------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HyperParam:
    """One tunable optimizer (or scheduler) hyperparameter and its search range."""

    name: str
    kind: HyperParamKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    default: Any = None
    allow_zero: bool = False
    help: str = ""
    #: Sample ``1 - value`` on a log scale (for values close to 1 such as betas and momentum).
    one_minus_log: bool = False
    #: ``(other_hp, allowed_values)``: only active when ``other_hp`` is one of ``allowed_values``.
    active_if: tuple[str, tuple] | None = None
    #: Tuning order (lower first), after Google's tuning playbook: lr, beta1, eps, beta2.
    priority: int = 2

    def __post_init__(self) -> None:
        if self.kind not in ("float", "int", "categorical"):
            raise ValueError(f"hyperparameter {self.name!r}: kind {self.kind!r} is not one of float, int, categorical")
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError(f"hyperparameter {self.name!r}: categorical needs non-empty choices")
        else:
            self.validate_range(self.low, self.high)
        if not self.contains(self.default):
            raise ValueError(f"hyperparameter {self.name!r}: default {self.default!r} is outside {self.describe_range()}")

    # -- helpers ----------------------------------------------------------------------
    def validate_range(self, low: float | None, high: float | None) -> None:
        """Raise ValueError unless ``[low, high]`` is a usable range for this hyperparameter."""
        if self.kind == "categorical":
            raise ValueError(f"hyperparameter {self.name!r} is categorical; it has choices, not a range")
        if low is None or high is None:
            raise ValueError(f"hyperparameter {self.name!r}: low and high are required")
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"hyperparameter {self.name!r}: low and high must be finite, got [{low}, {high}]")
        if low > high:
            raise ValueError(f"hyperparameter {self.name!r}: low {low} is above high {high}")
        if self.kind == "int" and (int(low) != low or int(high) != high):
            raise ValueError(f"hyperparameter {self.name!r}: int range needs integer bounds, got [{low}, {high}]")
        if self.log and low <= 0:
            raise ValueError(f"hyperparameter {self.name!r}: a log-scale range needs low > 0, got {low}")
        if self.one_minus_log and not (low < 1 and high < 1):
            raise ValueError(f"hyperparameter {self.name!r}: a 1-x log-scale range needs values below 1, got [{low}, {high}]")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the search range (or choices; 0 when ``allow_zero``)."""
        if self.kind == "categorical":
            return value in self.choices  # type: ignore[operator]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.allow_zero and value == 0:
            return True
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high  # type: ignore[operator]

    def describe_range(self) -> str:
        if self.kind == "categorical":
            return f"choices {list(self.choices)}"  # type: ignore[arg-type]
        scale = "log(1-x)" if self.one_minus_log else ("log" if self.log else "linear")
        zero = " or 0" if self.allow_zero else ""
        return f"[{self.low}, {self.high}] ({scale}){zero}"

    def coerce(self, value: Any) -> Any:
        """``value`` with the right Python type; ValueError naming the field otherwise."""
        if self.kind == "categorical":
            if value not in self.choices:  # type: ignore[operator]
                raise ValueError(f"{self.name}={value!r} is not one of {list(self.choices)}")  # type: ignore[arg-type]
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{self.name} must be a finite number, got {value!r}")
        if self.kind == "int":
            if int(value) != value:
                raise ValueError(f"{self.name} must be an integer, got {value!r}")
            return int(value)
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "one_minus_log": self.one_minus_log,
            "allow_zero": self.allow_zero,
            "choices": list(self.choices) if self.choices is not None else None,
            "default": self.default,
            "active_if": [self.active_if[0], list(self.active_if[1])] if self.active_if else None,
            "priority": self.priority,
            "help": self.help,
        }


# Builders for the hyperparameters most entries share -----------------------------------
def _lr(low: float, high: float, default: float, help: str = "peak learning rate") -> HyperParam:
    return HyperParam("lr", "float", low, high, log=True, default=default, help=help, priority=0)


def _beta1(default: float = 0.9, low: float = 0.5, high: float = 0.99, allow_zero: bool = False) -> HyperParam:
    return HyperParam(
        "beta1", "float", low, high, default=default, one_minus_log=True, allow_zero=allow_zero, priority=1,
        help="first-moment (momentum) decay; sampled as 1 - beta1 on a log scale (AlgoPerf)",
    )


def _beta2(default: float = 0.999, low: float = 0.9, high: float = 0.9999) -> HyperParam:
    return HyperParam(
        "beta2", "float", low, high, default=default, one_minus_log=True, priority=4,
        help="second-moment decay; sampled as 1 - beta2 on a log scale",
    )


def _eps(default: float = 1e-8, low: float = 1e-10, high: float = 1e-6) -> HyperParam:
    return HyperParam("eps", "float", low, high, log=True, default=default, priority=3, help="denominator epsilon")


def _momentum(default: float = 0.9, low: float = 0.5, high: float = 0.99, allow_zero: bool = False,
              active_if: tuple[str, tuple] | None = None) -> HyperParam:
    return HyperParam(
        "momentum", "float", low, high, default=default, one_minus_log=True, allow_zero=allow_zero,
        active_if=active_if, priority=1,
        help="momentum coefficient; 0.9 multiplies the effective step by 10, so lower lr with it (001)",
    )


def _wd(mode: WeightDecayMode, default: float = 0.0, low: float | None = None, high: float | None = None) -> HyperParam:
    if mode == "decoupled":
        low, high = low or 1e-5, high or 1.0
        text = "decoupled weight decay (AdamW-style, multiplied by lr); AlgoPerf AdamW range 5e-3..1"
    else:
        low, high = low or 1e-6, high or 1e-2
        text = "coupled L2 penalty added to the gradient (003: L2 for SGD)"
    return HyperParam("weight_decay", "float", low, high, log=True, default=default, allow_zero=True, help=text)


def _bool(name: str, default: bool, help: str) -> HyperParam:
    return HyperParam(name, "categorical", choices=(False, True), default=default, help=help)


# --------------------------------------------------------------------------------------
# Parameter grouping helpers
# --------------------------------------------------------------------------------------
def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Param groups with weight decay, biases and normalisation layers in a group without it."""
    if weight_decay > 0:
        from pytorch_optimizer import get_optimizer_parameters

        return get_optimizer_parameters(model, weight_decay, NO_DECAY_PATTERNS)
    return [{"params": _trainable(model), "weight_decay": 0.0}]


def sparse_embedding_params(model: nn.Module) -> list[nn.Parameter]:
    """Weights of ``nn.Embedding`` / ``nn.EmbeddingBag`` modules built with ``sparse=True``."""
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse:
            w = module.weight
            if w.requires_grad and id(w) not in seen:
                seen.add(id(w))
                out.append(w)
    return out


_MATRIX_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def hidden_matrix_params(model: nn.Module) -> list[nn.Parameter]:
    """Weights Muon should orthogonalise: >= 2-D weights of hidden Linear/Conv layers.

    Excluded (they go to AdamW, as Muon's authors advise): the last Linear/Conv layer in
    registration order (taken to be the output head), any layer whose name contains
    ``head`` or ``classifier``, embeddings, biases and gains.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _MATRIX_LAYERS)]
    if not layers:
        return []
    head = layers[-1][0]
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, module in layers:
        lowered = name.lower()
        if name == head or "head" in lowered or "classifier" in lowered:
            continue
        w = module.weight
        if w.requires_grad and w.ndim >= 2 and id(w) not in seen:
            seen.add(id(w))
            out.append(w)
    return out


def resolve_hyperparams(owner: str, hyperparams: Sequence[HyperParam], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every value of ``owner``'s hyperparameters: ``params`` validated and typed, the rest at defaults.

    Shared by optimizers and schedules so both reject unknown names and bad values alike.
    """
    by_name = {hp.name: hp for hp in hyperparams}
    params = dict(params or {})
    unknown = sorted(set(params) - set(by_name))
    if unknown:
        raise ValueError(f"{owner} got unknown hyperparameter(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(by_name) or '(none)'}")
    values = {hp.name: hp.default for hp in hyperparams}
    for name, value in params.items():
        try:
            values[name] = by_name[name].coerce(value)
        except ValueError as exc:
            raise ValueError(f"{owner}: {exc}") from None
    return values


# --------------------------------------------------------------------------------------
# SparseAdam for embeddings + AdamW for the rest, as one optimizer
# --------------------------------------------------------------------------------------
class SparseDenseAdam(torch.optim.Optimizer):
    """``torch.optim.SparseAdam`` for sparse-gradient embeddings, ``AdamW`` for every other parameter.

    One real :class:`torch.optim.Optimizer`, so LR schedulers, ``zero_grad``, ``state_dict``
    and step hooks work unchanged: its ``param_groups`` are the very dicts of the two inner
    optimizers (sparse groups first) and all three share one ``state`` dict, so a scheduler
    changing ``group["lr"]`` drives both.  Weight decay applies to the dense part only
    (SparseAdam has none), biases and norms excluded.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        sparse = sparse_embedding_params(model)
        if not sparse:
            raise ValueError(
                "sparse_adam needs a model with sparse-gradient embeddings "
                "(nn.Embedding/nn.EmbeddingBag with sparse=True); build the task model with sparse_gradients=True"
            )
        sparse_ids = {id(p) for p in sparse}
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr, betas=betas, eps=eps)
        self.dense: torch.optim.Optimizer | None = None
        dense_groups = []
        for group in parameter_groups(model, weight_decay):
            params = [p for p in group["params"] if id(p) not in sparse_ids]
            if params:
                dense_groups.append({**group, "params": params})
        if dense_groups:
            self.dense = torch.optim.AdamW(dense_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self._n_sparse_groups = len(self.sparse.param_groups)
        groups = list(self.sparse.param_groups) + (list(self.dense.param_groups) if self.dense else [])
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps})
        self._share_state()

    def _share_state(self) -> None:
        self.sparse.param_groups = self.param_groups[: self._n_sparse_groups]
        self.sparse.state = self.state
        if self.dense is not None:
            self.dense.param_groups = self.param_groups[self._n_sparse_groups :]
            self.dense.state = self.state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.sparse.step()
        if self.dense is not None:
            self.dense.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share_state()


# --------------------------------------------------------------------------------------
# Optimizer specs
# --------------------------------------------------------------------------------------
Factory = Callable[[nn.Module, dict[str, Any]], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """What autoopt knows about one optimizer: where it comes from, its search space, its costs."""

    name: str
    display: str
    family: str
    source: str
    guidance: str
    hyperparams: tuple[HyperParam, ...]
    state_per_param: float
    weight_decay: WeightDecayMode
    requires: frozenset[str] = frozenset()
    mini_batch: bool = True
    excluded_reason: str | None = None
    description: str = ""
    #: Call ``optimizer.train()`` before training and ``optimizer.eval()`` before evaluating
    #: (schedule-free optimizers); :func:`set_optimizer_mode` does it for any optimizer.
    needs_train_eval_mode: bool = False
    #: ``optimizer.step(closure)`` must get a closure that re-evaluates the loss (L-BFGS).
    needs_closure: bool = False
    #: Schedulers that make sense with it (``None``: any).  Schedule-free wants only warmup.
    allowed_schedulers: frozenset[str] | None = None
    _factory: Factory | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.requires) - REQUIREMENTS
        if unknown:
            raise ValueError(f"optimizer {self.name!r}: unknown requirements {sorted(unknown)}; allowed {sorted(REQUIREMENTS)}")
        names = [hp.name for hp in self.hyperparams]
        if len(names) != len(set(names)):
            raise ValueError(f"optimizer {self.name!r}: duplicate hyperparameter names {names}")
        for i, hp in enumerate(self.hyperparams):
            if hp.active_if and hp.active_if[0] not in names[:i]:
                raise ValueError(f"optimizer {self.name!r}: {hp.name} depends on {hp.active_if[0]!r}, which must come first")

    # -- hyperparameters ---------------------------------------------------------------
    def hyperparam(self, name: str) -> HyperParam:
        for hp in self.hyperparams:
            if hp.name == name:
                return hp
        raise ValueError(
            f"optimizer {self.name!r} has no hyperparameter {name!r}; allowed: {', '.join(self.hp_names) or '(none)'}"
        )

    @property
    def hp_names(self) -> tuple[str, ...]:
        return tuple(hp.name for hp in self.hyperparams)

    def defaults(self) -> dict[str, Any]:
        return {hp.name: hp.default for hp in self.hyperparams}

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """All hyperparameter values: ``params`` validated and typed, missing ones at their defaults."""
        return resolve_hyperparams(f"optimizer {self.name!r}", self.hyperparams, params)

    def active_hyperparams(self, values: Mapping[str, Any] | None = None) -> tuple[HyperParam, ...]:
        """The hyperparameters that matter given the (categorical) values chosen so far."""
        full = {**self.defaults(), **dict(values or {})}
        return tuple(hp for hp in self.hyperparams if not hp.active_if or full.get(hp.active_if[0]) in hp.active_if[1])

    # -- building ----------------------------------------------------------------------
    def build(self, model: nn.Module, params: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
        """The optimizer for ``model`` with hyperparameters ``params`` (missing ones at defaults)."""
        if self._factory is None:  # pragma: no cover - every catalog entry has one
            raise NotImplementedError(f"optimizer {self.name!r} has no builder")
        return self._factory(model, self.resolve(params))

    def applicable(
        self, *, sparse_gradients: bool, has_matrix_params: bool = True, full_batch: bool = False
    ) -> tuple[bool, str | None]:
        """Whether it can train a task; ``(False, reason)`` otherwise.

        ``sparse_gradients``: the task can build its model with sparse-gradient embeddings
        (``TaskTraits.sparse_gradients``).  Optimizers requiring them get such a model
        (``"sparse_gradients" in spec.requires``); every other optimizer gets the dense model,
        so they stay applicable.  ``has_matrix_params``: the model has hidden 2-D weights
        (:func:`hidden_matrix_params`).  ``full_batch``: whole-dataset batches are used.
        """
        if not self.mini_batch and not full_batch:
            return False, self.excluded_reason or f"{self.display} is a full-batch method"
        if "full_batch" in self.requires and not full_batch:
            return False, self.excluded_reason or f"{self.display} needs full-batch training"
        if "sparse_gradients" in self.requires and not sparse_gradients:
            return False, f"{self.display} needs sparse gradients (nn.Embedding(sparse=True)); this task has none"
        if "matrix_params" in self.requires and not has_matrix_params:
            return False, f"{self.display} needs hidden 2-D weight matrices; this model has none"
        return True, None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display": self.display,
            "family": self.family,
            "source": self.source,
            "guidance": self.guidance,
            "hyperparams": [hp.to_dict() for hp in self.hyperparams],
            "state_per_param": self.state_per_param,
            "weight_decay": self.weight_decay,
            "mini_batch": self.mini_batch,
            "excluded_reason": self.excluded_reason,
            "requires": sorted(self.requires),
            "needs_train_eval_mode": self.needs_train_eval_mode,
            "needs_closure": self.needs_closure,
            "allowed_schedulers": sorted(self.allowed_schedulers) if self.allowed_schedulers is not None else None,
            "description": self.description,
        }


# --------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------
def _betas(v: dict[str, Any]) -> tuple[float, float]:
    return (v["beta1"], v["beta2"])


def _groups(model: nn.Module, v: dict[str, Any]) -> list[dict[str, Any]]:
    return parameter_groups(model, v.get("weight_decay", 0.0))


def _torch(cls_name: str, **fixed: Any) -> Factory:
    """Factory for a torch.optim class taking ``(groups, lr=..., <hp>=...)``."""

    def build(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
        cls = getattr(torch.optim, cls_name)
        kwargs = {k: val for k, val in v.items() if k not in ("beta1", "beta2", "weight_decay")}
        if "beta1" in v:
            kwargs["betas"] = _betas(v)
        return cls(_groups(model, v), **kwargs, **fixed)

    return build


def _lib(lib_name: str, betas: Callable[[dict[str, Any]], tuple] | None = _betas, **fixed: Any) -> Factory:
    """Factory for a pytorch-optimizer class found with ``pytorch_optimizer.load_optimizer``."""

    def build(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
        from pytorch_optimizer import load_optimizer

        cls = load_optimizer(lib_name)
        kwargs = {k: val for k, val in v.items() if k not in ("beta1", "beta2", "weight_decay")}
        if betas is not None and "beta1" in v:
            kwargs["betas"] = betas(v)
        if "weight_decay" in v:
            kwargs["weight_decay"] = v["weight_decay"]
            groups: Any = _groups(model, v)
        else:
            groups = _trainable(model)
        return cls(groups, **kwargs, **fixed)

    return build


def _build_sgd(momentum: bool, nesterov: bool) -> Factory:
    def build(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            _groups(model, v), lr=v["lr"], momentum=v.get("momentum", 0.0) if momentum else 0.0, nesterov=nesterov
        )

    return build


def _build_lbfgs(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.LBFGS(
        _trainable(model),  # L-BFGS supports a single parameter group only
        lr=v["lr"],
        max_iter=v["max_iter"],
        history_size=v["history_size"],
        line_search_fn=None if v["line_search_fn"] == "none" else v["line_search_fn"],
    )


def _build_rprop(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Rprop(_trainable(model), lr=v["lr"])


def _build_sparse_adam(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
    return SparseDenseAdam(model, lr=v["lr"], betas=_betas(v), eps=v["eps"], weight_decay=v["weight_decay"])


def _build_adafactor(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
    from pytorch_optimizer import load_optimizer

    beta1 = v["beta1"] if v["beta1"] > 0 else None  # beta1 = 0: no first moment (original Adafactor)
    return load_optimizer("adafactor")(
        _groups(model, v), lr=v["lr"], betas=(beta1, 0.999), relative_step=v["relative_step"],
        weight_decay=v["weight_decay"],
    )


def _build_lookahead(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
    from pytorch_optimizer import Lookahead

    base_params: dict[str, Any] = {"lr": v["lr"], "weight_decay": v["weight_decay"]}
    if v["base"] == "momentum":
        base_params["momentum"] = v["momentum"]
    base = CATALOG[v["base"]].build(model, base_params)
    return Lookahead(base, k=v["k"], alpha=v["alpha"])


def _build_muon(model: nn.Module, v: dict[str, Any]) -> torch.optim.Optimizer:
    from pytorch_optimizer import load_optimizer

    hidden = hidden_matrix_params(model)
    if not hidden:
        raise ValueError("muon needs hidden 2-D weight matrices (Linear/Conv layers besides the output head)")
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in _trainable(model) if id(p) not in hidden_ids]
    wd = v["weight_decay"]
    groups: list[dict[str, Any]] = [
        {"params": hidden, "use_muon": True, "lr": v["lr"], "weight_decay": wd},
    ]
    matrices = [p for p in rest if p.ndim >= 2]
    gains = [p for p in rest if p.ndim < 2]
    for params, decay in ((matrices, wd), (gains, 0.0)):
        if params:
            groups.append({"params": params, "use_muon": False, "lr": v["adamw_lr"], "weight_decay": decay})
    return load_optimizer("muon")(groups, lr=v["lr"], momentum=v["momentum"], nesterov=v["nesterov"], adamw_lr=v["adamw_lr"])


def set_optimizer_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    """``optimizer.train()`` / ``optimizer.eval()`` for schedule-free optimizers; no-op for others.

    Call with ``training=True`` before each training epoch and ``False`` before evaluation
    (and before saving weights): schedule-free methods evaluate at averaged weights.
    """
    seen: set[int] = set()
    opt: Any = optimizer
    while opt is not None and id(opt) not in seen:
        seen.add(id(opt))
        method = getattr(opt, "train" if training else "eval", None)
        if callable(method):
            method()
            return
        opt = getattr(opt, "optimizer", None)


# --------------------------------------------------------------------------------------
# The catalog
# --------------------------------------------------------------------------------------
_SGD_LR = (1e-3, 1.0)
_ADAM_LR = (1e-5, 1e-1)
_FULL_BATCH = "full-batch method: needs the whole dataset (or a very large batch) per step; stochastic mini-batch gradients break its {}"


def _specs() -> list[OptimizerSpec]:
    T, P = "torch.optim", "pytorch-optimizer"
    adam_core = lambda lr=1e-3, wd="l2", wd_default=0.0: (  # noqa: E731
        _lr(*_ADAM_LR, lr), _beta1(), _beta2(), _eps(), _wd(wd, wd_default)
    )
    return [
        # ---------------------------------------------------------------- torch.optim
        OptimizerSpec(
            "sgd", "SGD", "sgd", T, "001, 003, 004",
            (_lr(*_SGD_LR, 0.1), _wd("l2")), 0.0, "l2",
            description="Plain mini-batch SGD: simple, low-dimensional problems; generalizes well with small batches.",
            _factory=_build_sgd(momentum=False, nesterov=False),
        ),
        OptimizerSpec(
            "momentum", "SGD + momentum", "sgd", T, "000, 001, 003, AlgoPerf",
            (_lr(*_SGD_LR, 0.01), _momentum(0.9), _wd("l2")), 1.0, "l2",
            description="Heavy-ball momentum: the CNN default (0.9); AlgoPerf ImageNet ResNet-50 winner with linear decay.",
            _factory=_build_sgd(momentum=True, nesterov=False),
        ),
        OptimizerSpec(
            "nesterov", "SGD + Nesterov", "sgd", T, "000, 001, 003, AlgoPerf",
            (_lr(*_SGD_LR, 0.01), _momentum(0.9), _wd("l2")), 1.0, "l2",
            description="Nesterov accelerated gradient: CNNs, noisy gradients; AlgoPerf fastMRI / OGBG winner.",
            _factory=_build_sgd(momentum=True, nesterov=True),
        ),
        OptimizerSpec(
            "adagrad", "Adagrad", "adagrad", T, "000, 001, 004",
            (_lr(1e-4, 1.0, 1e-2), _eps(1e-10), _wd("l2")), 1.0, "l2",
            description="Per-coordinate accumulated squared gradients: sparse features, rare words.",
            _factory=_torch("Adagrad"),
        ),
        OptimizerSpec(
            "rmsprop", "RMSprop", "rmsprop", T, "000, 001, 004",
            (
                _lr(*_ADAM_LR, 1e-2),
                HyperParam("alpha", "float", 0.9, 0.9999, default=0.99, one_minus_log=True, priority=4,
                           help="squared-gradient smoothing constant"),
                _eps(),
                _momentum(0.0, allow_zero=True),
                _bool("centered", False, "normalise by the gradient variance estimate"),
                _wd("l2"),
            ),
            1.0, "l2",
            description="Leaky squared-gradient average; plain, centered and momentum variants. "
            "State 1x, +1 centered, +1 with momentum.",
            _factory=_torch("RMSprop"),
        ),
        OptimizerSpec(
            "adadelta", "Adadelta", "adagrad", T, "004",
            (
                _lr(1e-2, 10.0, 1.0, help="scale of the unit-corrected update (1.0 in the paper)"),
                HyperParam("rho", "float", 0.8, 0.99, default=0.9, one_minus_log=True, priority=1,
                           help="running-average coefficient"),
                _eps(1e-6),
                _wd("l2"),
            ),
            2.0, "l2",
            description="Adagrad variant with a window of squared gradients and updates; little lr tuning.",
            _factory=_torch("Adadelta"),
        ),
        OptimizerSpec(
            "adam", "Adam", "adam", T, "000, 001, 003, 004",
            adam_core(), 2.0, "l2",
            description="Adaptive moments: RL, GANs, speech; fast convergence on large data; weight decay as coupled L2.",
            _factory=_torch("Adam"),
        ),
        OptimizerSpec(
            "amsgrad", "AMSGrad", "adam", T, "001, 004",
            adam_core(), 3.0, "l2",
            description="Adam with the running max of the second moment (convergence fix).",
            _factory=_torch("Adam", amsgrad=True),
        ),
        OptimizerSpec(
            "adamw", "AdamW", "adam", T, "000, 002, 003, 004, AlgoPerf",
            adam_core(wd="decoupled", wd_default=1e-2), 2.0, "decoupled",
            description="Adam with decoupled weight decay: the transformer / NLP default.",
            _factory=_torch("AdamW"),
        ),
        OptimizerSpec(
            "nadam", "NAdam(W)", "adam", T, "001, 004, AlgoPerf",
            (
                _lr(*_ADAM_LR, 2e-3), _beta1(), _beta2(), _eps(),
                HyperParam("momentum_decay", "float", 1e-4, 1e-2, log=True, default=4e-3, priority=3,
                           help="Nesterov momentum schedule constant"),
                _wd("decoupled"),
            ),
            2.0, "decoupled",
            description="Adam with Nesterov momentum and decoupled decay (NAdamW): AlgoPerf baseline and "
            "target-setting winner on Criteo, ViT, Conformer, DeepSpeech, WMT.",
            _factory=_torch("NAdam", decoupled_weight_decay=True),
        ),
        OptimizerSpec(
            "radam", "RAdam", "adam", T, "003, 004",
            adam_core(wd="decoupled"), 2.0, "decoupled",
            description="Rectified Adam: built-in warmup, robust to lr; small batches and quick experiments.",
            _factory=_torch("RAdam", decoupled_weight_decay=True),
        ),
        OptimizerSpec(
            "adamax", "Adamax", "adam", T, "004",
            adam_core(lr=2e-3), 2.0, "l2",
            description="Adam with the infinity norm for the second moment.",
            _factory=_torch("Adamax"),
        ),
        OptimizerSpec(
            "asgd", "ASGD", "sgd", T, "004",
            (
                _lr(1e-4, 1.0, 1e-2),
                HyperParam("lambd", "float", 1e-6, 1e-2, log=True, default=1e-4, priority=3, help="decay term"),
                HyperParam("alpha", "float", 0.5, 1.0, default=0.75, priority=3, help="eta update power"),
                HyperParam("t0", "float", 1e2, 1e6, log=True, default=1e6, priority=3,
                           help="step at which averaging starts"),
                _wd("l2"),
            ),
            1.0, "l2",
            description="Averaged SGD (Polyak averaging after t0 steps).",
            _factory=_torch("ASGD"),
        ),
        OptimizerSpec(
            "sparse_adam", "SparseAdam (+AdamW)", "adam", T, "000, 001, 004",
            adam_core(wd="decoupled"), 2.0, "decoupled",
            requires=frozenset({"sparse_gradients"}),
            description="SparseAdam for sparse-gradient embeddings, AdamW for the dense rest "
            "(autoopt.catalog.SparseDenseAdam); weight decay on the dense part only.",
            _factory=_build_sparse_adam,
        ),
        OptimizerSpec(
            "lbfgs", "L-BFGS", "full_batch", T, "004",
            (
                _lr(1e-2, 1.0, 1.0),
                HyperParam("history_size", "int", 5, 100, default=100, priority=3, help="stored curvature pairs"),
                HyperParam("max_iter", "int", 1, 50, default=20, priority=3, help="iterations per step()"),
                HyperParam("line_search_fn", "categorical", choices=("strong_wolfe", "none"),
                           default="strong_wolfe", help="line search ('none': fixed lr)"),
            ),
            2.0 * 100 + 2, "none",
            requires=frozenset({"full_batch"}), mini_batch=False, needs_closure=True,
            excluded_reason=_FULL_BATCH.format("curvature pairs and line search"),
            description="Quasi-Newton with line search; needs a closure and a single param group. "
            "State ~2 x history_size vectors.",
            _factory=_build_lbfgs,
        ),
        OptimizerSpec(
            "rprop", "Rprop", "full_batch", T, "004",
            (_lr(1e-4, 1e-1, 1e-2, help="initial per-weight step size"),),
            2.0, "none",
            requires=frozenset({"full_batch"}), mini_batch=False,
            excluded_reason=_FULL_BATCH.format("gradient-sign comparisons between steps"),
            description="Resilient backprop: per-weight step sizes from gradient signs (full batch only).",
            _factory=_build_rprop,
        ),
        # ---------------------------------------------------------- pytorch-optimizer
        OptimizerSpec(
            "ranger", "Ranger", "lookahead", P, "003",
            (
                _lr(*_ADAM_LR, 1e-3), _beta1(0.95), _beta2(),
                HyperParam("k", "int", 3, 10, default=6, help="fast steps between slow-weight syncs"),
                HyperParam("alpha", "float", 0.3, 0.8, default=0.5, help="slow-weight interpolation"),
                _wd("decoupled"),
            ),
            3.0, "decoupled",
            description="RAdam + Lookahead + gradient centralization: balance of speed and generalization (CV and NLP).",
            _factory=_lib("ranger"),
        ),
        OptimizerSpec(
            "lookahead", "Lookahead", "lookahead", P, "003, 000, 002",
            (
                HyperParam("base", "categorical", choices=("adamw", "radam", "momentum"), default="adamw",
                           help="inner (fast) optimizer"),
                _lr(1e-5, 1.0, 1e-3, help="inner optimizer lr (wide: Adam-like and SGD-like bases share it)"),
                _momentum(0.9, active_if=("base", ("momentum",))),
                HyperParam("k", "int", 3, 10, default=5, help="fast steps between slow-weight syncs (003: 5)"),
                HyperParam("alpha", "float", 0.3, 0.8, default=0.5, help="slow-weight interpolation (003: 0.5)"),
                _wd("decoupled", low=1e-6, high=1e-1),
            ),
            3.0, "decoupled",
            description="Lookahead(k, alpha) around AdamW, RAdam or SGD+momentum; +1x state for slow weights. "
            "Weight decay is decoupled for adamw/radam, coupled L2 for momentum.",
            _factory=_build_lookahead,
        ),
        OptimizerSpec(
            "lion", "Lion", "sign", P, "authors' README (GUIDANCE: newer optimizers)",
            (
                _lr(1e-6, 1e-3, 1e-4, help="3-10x smaller than AdamW's"),
                _beta1(0.9), _beta2(0.99),
                _wd("decoupled", low=3e-5, high=3.0),
            ),
            1.0, "decoupled",
            description="Sign of interpolated momentum; 1x state; lr 3-10x smaller, weight decay 3-10x larger than AdamW.",
            _factory=_lib("lion"),
        ),
        OptimizerSpec(
            "adafactor", "Adafactor", "factored", P, "002, 004, AlgoPerf",
            (
                _lr(*_ADAM_LR, 1e-3, help="used only with relative_step=False"),
                _beta1(0.9, allow_zero=True),
                _bool("relative_step", True, "time-dependent internal step size; the lr and LR schedule are then ignored"),
                _wd("decoupled"),
            ),
            0.55, "decoupled",
            description="Factored second moment (row + column): memory-limited large models. State ~0.05x "
            "without momentum (beta1=0), +0.5x for the bfloat16 momentum buffer.",
            _factory=_build_adafactor,
        ),
        OptimizerSpec(
            "yogi", "Yogi", "adam", P, "001",
            (_lr(*_ADAM_LR, 1e-2), _beta1(), _beta2(), _eps(1e-3, 1e-6, 1e-2), _wd("decoupled")),
            2.0, "decoupled",
            description="Additive second-moment update: for when Adam fails to converge (exploding second moment).",
            _factory=_lib("yogi"),
        ),
        OptimizerSpec(
            "adabelief", "AdaBelief", "adam", P, "pytorch-optimizer",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(), _eps(1e-16, 1e-18, 1e-8), _wd("decoupled")),
            2.0, "decoupled",
            description="Adam scaled by the belief (variance of the gradient around its EMA).",
            _factory=_lib("adabelief"),
        ),
        OptimizerSpec(
            "adan", "Adan", "adam", P, "pytorch-optimizer",
            (_lr(*_ADAM_LR, 1e-3), _beta1(0.98), _eps(), _wd("decoupled")),
            4.0, "decoupled",
            description="Adaptive Nesterov momentum (betas 0.98/0.92/0.99; beta1 tuned); 4x state.",
            _factory=_lib("adan", betas=lambda v: (v["beta1"], 0.92, 0.99)),
        ),
        OptimizerSpec(
            "lamb", "LAMB", "layerwise", P, "002, AlgoPerf",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(), _eps(1e-6), _wd("decoupled")),
            2.0, "decoupled",
            description="Adam with layer-wise trust ratio: very large batches.",
            _factory=_lib("lamb"),
        ),
        OptimizerSpec(
            "adamp", "AdamP", "adam", P, "004",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(), _eps(), _wd("decoupled")),
            2.0, "decoupled",
            description="Adam projecting out the radial update of scale-invariant weights (delta 0.1, wd_ratio 0.1).",
            _factory=_lib("adamp", delta=0.1, wd_ratio=0.1),
        ),
        OptimizerSpec(
            "sgdp", "SGDP", "sgd", P, "004",
            (
                _lr(*_SGD_LR, 0.01), _momentum(0.9),
                _bool("nesterov", False, "Nesterov momentum"),
                _wd("decoupled", low=1e-6, high=1e-1),
            ),
            1.0, "decoupled",
            description="SGD with momentum projecting out radial updates (delta 0.1, wd_ratio 0.1). "
            "Defaults lr 0.01 / momentum 0.9 (library: 1e-3 / 0) to match the momentum entry.",
            _factory=_lib("sgdp", betas=None, delta=0.1, wd_ratio=0.1),
        ),
        OptimizerSpec(
            "prodigy", "Prodigy", "parameter_free", P, "authors' README (GUIDANCE: newer optimizers)",
            (
                _lr(0.1, 10.0, 1.0, help="multiplier on the estimated step size; keep ~1.0"),
                _beta1(), _beta2(),
                HyperParam("d_coef", "float", 0.1, 10.0, log=True, default=1.0, priority=3,
                           help="scale of the estimated distance to the solution"),
                _wd("decoupled"),
            ),
            4.0, "decoupled",
            description="Learning-rate-free Adam (estimates the step size); lr ~1.0; 4x state.",
            _factory=_lib("prodigy"),
        ),
        OptimizerSpec(
            "schedulefree_adamw", "Schedule-Free AdamW", "schedule_free", P, "AlgoPerf",
            (_lr(*_ADAM_LR, 2.5e-3, help="1-10x a scheduled AdamW's (2.5e-3 in AlgoPerf)"),
             _beta1(), _beta2(), _eps(), _wd("decoupled")),
            2.0, "decoupled",
            needs_train_eval_mode=True, allowed_schedulers=frozenset({"constant"}),
            description="AlgoPerf v0.5 winner (self-tuning and external tuning): no LR schedule, only warmup; "
            "call optimizer.train()/eval() around training/evaluation (set_optimizer_mode).",
            _factory=_lib("schedulefreeadamw"),
        ),
        OptimizerSpec(
            "muon", "Muon", "orthogonal", P, "002, authors' README",
            (
                _lr(1e-3, 1e-1, 0.02, help="lr of the orthogonalised updates of hidden matrices"),
                _momentum(0.95, low=0.8),
                _bool("nesterov", True, "Nesterov momentum"),
                HyperParam("adamw_lr", "float", 1e-5, 1e-2, log=True, default=3e-4, priority=1,
                           help="AdamW lr for embeddings, head, biases and gains"),
                _wd("decoupled"),
            ),
            1.0, "decoupled",
            requires=frozenset({"matrix_params"}),
            description="Newton-Schulz orthogonalised momentum for hidden 2-D weights only "
            "(autoopt.catalog.hidden_matrix_params); AdamW (2x state) for everything else.",
            _factory=_build_muon,
        ),
        OptimizerSpec(
            "novograd", "NovoGrad", "adam", P, "002, 004",
            (_lr(*_ADAM_LR, 1e-3), _beta1(0.95), _beta2(0.98), _eps(), _wd("l2")),
            1.0, "l2",
            description="Layer-wise second moment (one scalar per layer): ~1x state.",
            _factory=_lib("novograd"),
        ),
        OptimizerSpec(
            "diffgrad", "diffGrad", "adam", P, "002",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(), _eps(), _wd("decoupled")),
            3.0, "decoupled",
            description="Adam with a friction term from the change of the gradient; 3x state.",
            _factory=_lib("diffgrad"),
        ),
        OptimizerSpec(
            "lars", "LARS", "layerwise", P, "002",
            (
                _lr(1e-2, 10.0, 1.0, help="global lr; matrices move by lr * trust_coefficient * |w| / |g|"),
                _momentum(0.9),
                HyperParam("trust_coefficient", "float", 1e-3, 1e-1, log=True, default=1e-3, priority=3,
                           help="layer-wise trust ratio coefficient"),
                _wd("l2"),
            ),
            1.0, "l2",
            description="SGD with layer-wise trust ratio: very large batches.",
            _factory=_lib("lars", betas=None),
        ),
        OptimizerSpec(
            "sm3", "SM3", "factored", P, "002",
            (_lr(1e-3, 1.0, 0.1), _momentum(0.0, allow_zero=True)),
            1.05, "none",
            description="Memory-efficient adaptive method (cover-set accumulators, sublinear); the library "
            "always allocates a 1x momentum buffer.",
            _factory=_lib("sm3", betas=None),
        ),
        OptimizerSpec(
            "adanorm", "AdaNorm", "adam", P, "002",
            (
                _lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(0.99),
                HyperParam("r", "float", 0.9, 0.99, default=0.95, priority=3, help="gradient-norm EMA factor"),
                _eps(), _wd("decoupled"),
            ),
            2.0, "decoupled",
            description="Adam with gradient-norm correction from the history of norms.",
            _factory=_lib("adanorm"),
        ),
        OptimizerSpec(
            "pnm", "PNM", "sgd", P, "002",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _wd("decoupled")),
            2.0, "decoupled",
            description="Positive-negative momentum (two momentum buffers) for better generalization.",
            _factory=_lib("pnm", betas=lambda v: (v["beta1"], 1.0)),
        ),
    ]


CATALOG: dict[str, OptimizerSpec] = {spec.name: spec for spec in _specs()}


def get_optimizer(name: str) -> OptimizerSpec:
    """The catalog entry ``name``; ValueError naming it and listing the allowed names otherwise."""
    try:
        return CATALOG[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(sorted(CATALOG))}") from None


def _tensor_bytes(t: torch.Tensor) -> int:
    if t.is_sparse:
        return _tensor_bytes(t._values()) + _tensor_bytes(t._indices())
    return t.numel() * t.element_size()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in optimizer state tensors, walking nested state and wrapped optimizers.

    Counts ``optimizer.state`` of the optimizer and of every optimizer it holds as an attribute
    (Lookahead's base, SparseDenseAdam's parts); each tensor once.
    """
    seen_tensors: set[int] = set()
    seen_optimizers: set[int] = set()

    def walk(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            if id(value) in seen_tensors:
                return 0
            seen_tensors.add(id(value))
            return _tensor_bytes(value)
        if isinstance(value, Mapping):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(v) for v in value)
        return 0

    def visit(opt: Any) -> int:
        if id(opt) in seen_optimizers:
            return 0
        seen_optimizers.add(id(opt))
        total = walk(dict(getattr(opt, "state", {})))
        for attr in vars(opt).values():
            if isinstance(attr, torch.optim.Optimizer):
                total += visit(attr)
        return total

    return visit(optimizer)


def catalog_table() -> list[dict[str, Any]]:
    """Every entry as a JSON-serialisable dict (``autoopt optimizers --json``)."""
    return [spec.to_dict() for spec in CATALOG.values()]


__all__ = [
    "CATALOG",
    "HyperParam",
    "NO_DECAY_PATTERNS",
    "OptimizerSpec",
    "REQUIREMENTS",
    "SparseDenseAdam",
    "catalog_table",
    "get_optimizer",
    "hidden_matrix_params",
    "optimizer_state_bytes",
    "parameter_groups",
    "set_optimizer_mode",
    "sparse_embedding_params",
]
