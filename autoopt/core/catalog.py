"""The one catalog: the optimizers and LR schedules autoopt can choose from, their hyperparameters and search ranges.

Plain data, importable without torch: the recommender reads it directly (``autoopt recommend``
stays fast) and the trainer builds an entry with :func:`autoopt.optimizers.build_optimizer`, which
reads its declarative :class:`Builder` (that module imports torch; this one never does).

Every entry says where it comes from (``torch.optim`` or the ``pytorch-optimizer`` package),
which guidance supports it (source documents ``000``..``004`` summarised in GUIDANCE.md, or
the AlgoPerf / authors' evidence quoted there), the range each hyperparameter is searched in,
how much optimizer state it keeps per parameter, and how it applies weight decay.

Conventions the search space relies on:

* Ranges are *search* ranges, not hard limits: :func:`~autoopt.optimizers.build_optimizer` accepts any value
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

HyperParamKind = Literal["float", "int", "categorical"]
WeightDecayMode = Literal["decoupled", "l2", "none"]

#: Requirement tags an optimizer may carry (see :meth:`OptimizerSpec.applicable`).
REQUIREMENTS = frozenset({"sparse_gradients", "dense_gradients", "full_batch", "matrix_params"})


# --------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------
def range_problem(low: float | None, high: float | None, *, log: bool = False, one_minus_log: bool = False,
                  integer: bool = False) -> str | None:
    """Why ``[low, high]`` is not a usable search range (None when it is).

    The one range check behind catalog hyperparameters, a spec's ``{low, high}`` and the search
    space that merges the two.
    """
    if low is None or high is None:
        return "low and high are required"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"low and high must be finite, got [{low}, {high}]"
    if low > high:
        return f"low {low} is above high {high}"
    if integer and (int(low) != low or int(high) != high):
        return f"an int range needs integer bounds, got [{low}, {high}]"
    if log and low <= 0:
        return f"a log-scale range needs low > 0, got {low}"
    if one_minus_log and not (0 <= low and high < 1):
        return f"a 1-x log-scale range needs values in [0, 1), got [{low}, {high}]"
    return None


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
        problem = range_problem(low, high, log=self.log, one_minus_log=self.one_minus_log, integer=self.kind == "int")
        if problem:
            raise ValueError(f"hyperparameter {self.name!r}: {problem}")

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
# Optimizer specs
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Builder:
    """How the trainer constructs an optimizer, as data: the torch classes are looked up only then.

    ``kind``: ``"torch"`` (a ``torch.optim`` class), ``"lib"`` (a pytorch-optimizer name for
    ``pytorch_optimizer.load_optimizer``) or ``"custom"`` (a builder in :mod:`autoopt.optimizers`).
    ``betas``: the ``betas`` tuple, hyperparameter names or constants (None: no ``betas`` argument).
    ``fixed``: constructor arguments that are not searched.
    """

    kind: Literal["torch", "lib", "custom"]
    target: str
    betas: tuple[str | float, ...] | None = ("beta1", "beta2")
    fixed: tuple[tuple[str, Any], ...] = ()


def _torch(cls_name: str, **fixed: Any) -> Builder:
    return Builder("torch", cls_name, fixed=tuple(fixed.items()))


def _lib(lib_name: str, betas: tuple[str | float, ...] | None = ("beta1", "beta2"), **fixed: Any) -> Builder:
    return Builder("lib", lib_name, betas=betas, fixed=tuple(fixed.items()))


def _custom(name: str, **fixed: Any) -> Builder:
    return Builder("custom", name, betas=None, fixed=tuple(fixed.items()))


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
    builder: Builder | None = field(default=None, repr=False, compare=False)

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

    # -- where it applies ---------------------------------------------------------------
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
            builder=_custom("sgd", momentum=False, nesterov=False),
        ),
        OptimizerSpec(
            "momentum", "SGD + momentum", "sgd", T, "000, 001, 003, AlgoPerf",
            (_lr(*_SGD_LR, 0.01), _momentum(0.9), _wd("l2")), 1.0, "l2",
            description="Heavy-ball momentum: the CNN default (0.9); AlgoPerf ImageNet ResNet-50 winner with linear decay.",
            builder=_custom("sgd", momentum=True, nesterov=False),
        ),
        OptimizerSpec(
            "nesterov", "SGD + Nesterov", "sgd", T, "000, 001, 003, AlgoPerf",
            (_lr(*_SGD_LR, 0.01), _momentum(0.9), _wd("l2")), 1.0, "l2",
            description="Nesterov accelerated gradient: CNNs, noisy gradients; AlgoPerf fastMRI / OGBG winner.",
            builder=_custom("sgd", momentum=True, nesterov=True),
        ),
        OptimizerSpec(
            "adagrad", "Adagrad", "adagrad", T, "000, 001, 004",
            (_lr(1e-4, 1.0, 1e-2), _eps(1e-10), _wd("l2")), 1.0, "l2",
            description="Per-coordinate accumulated squared gradients: sparse features, rare words.",
            builder=_torch("Adagrad"),
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
            builder=_torch("RMSprop"),
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
            builder=_torch("Adadelta"),
        ),
        OptimizerSpec(
            "adam", "Adam", "adam", T, "000, 001, 003, 004",
            adam_core(), 2.0, "l2",
            description="Adaptive moments: RL, GANs, speech; fast convergence on large data; weight decay as coupled L2.",
            builder=_torch("Adam"),
        ),
        OptimizerSpec(
            "amsgrad", "AMSGrad", "adam", T, "001, 004",
            adam_core(), 3.0, "l2",
            description="Adam with the running max of the second moment (convergence fix).",
            builder=_torch("Adam", amsgrad=True),
        ),
        OptimizerSpec(
            "adamw", "AdamW", "adam", T, "000, 002, 003, 004, AlgoPerf",
            adam_core(wd="decoupled", wd_default=1e-2), 2.0, "decoupled",
            description="Adam with decoupled weight decay: the transformer / NLP default.",
            builder=_torch("AdamW"),
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
            builder=_torch("NAdam", decoupled_weight_decay=True),
        ),
        OptimizerSpec(
            "radam", "RAdam", "adam", T, "003, 004",
            adam_core(wd="decoupled"), 2.0, "decoupled",
            description="Rectified Adam: built-in warmup, robust to lr; small batches and quick experiments.",
            builder=_torch("RAdam", decoupled_weight_decay=True),
        ),
        OptimizerSpec(
            "adamax", "Adamax", "adam", T, "004",
            adam_core(lr=2e-3), 2.0, "l2",
            description="Adam with the infinity norm for the second moment.",
            builder=_torch("Adamax"),
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
            builder=_torch("ASGD"),
        ),
        OptimizerSpec(
            "sparse_adam", "SparseAdam (+AdamW)", "adam", T, "000, 001, 004",
            adam_core(wd="decoupled"), 2.0, "decoupled",
            requires=frozenset({"sparse_gradients"}),
            description="SparseAdam for sparse-gradient embeddings, AdamW for the dense rest "
            "(autoopt.optimizers.SparseDenseAdam); weight decay on the dense part only.",
            builder=_custom("sparse_adam"),
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
            builder=_custom("lbfgs"),
        ),
        OptimizerSpec(
            "rprop", "Rprop", "full_batch", T, "004",
            (_lr(1e-4, 1e-1, 1e-2, help="initial per-weight step size"),),
            2.0, "none",
            requires=frozenset({"full_batch"}), mini_batch=False,
            excluded_reason=_FULL_BATCH.format("gradient-sign comparisons between steps"),
            description="Resilient backprop: per-weight step sizes from gradient signs (full batch only).",
            builder=_custom("rprop"),
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
            builder=_lib("ranger"),
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
            builder=_custom("lookahead"),
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
            builder=_lib("lion"),
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
            builder=_custom("adafactor"),
        ),
        OptimizerSpec(
            "yogi", "Yogi", "adam", P, "001",
            (_lr(*_ADAM_LR, 1e-2), _beta1(), _beta2(), _eps(1e-3, 1e-6, 1e-2), _wd("decoupled")),
            2.0, "decoupled",
            description="Additive second-moment update: for when Adam fails to converge (exploding second moment).",
            builder=_lib("yogi"),
        ),
        OptimizerSpec(
            "adabelief", "AdaBelief", "adam", P, "pytorch-optimizer",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(), _eps(1e-16, 1e-18, 1e-8), _wd("decoupled")),
            2.0, "decoupled",
            description="Adam scaled by the belief (variance of the gradient around its EMA).",
            builder=_lib("adabelief"),
        ),
        OptimizerSpec(
            "adan", "Adan", "adam", P, "pytorch-optimizer",
            (_lr(*_ADAM_LR, 1e-3), _beta1(0.98), _eps(), _wd("decoupled")),
            4.0, "decoupled",
            description="Adaptive Nesterov momentum (betas 0.98/0.92/0.99; beta1 tuned); 4x state.",
            builder=_lib("adan", betas=("beta1", 0.92, 0.99)),
        ),
        OptimizerSpec(
            "lamb", "LAMB", "layerwise", P, "002, AlgoPerf",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(), _eps(1e-6), _wd("decoupled")),
            2.0, "decoupled",
            description="Adam with layer-wise trust ratio: very large batches.",
            builder=_lib("lamb"),
        ),
        OptimizerSpec(
            "adamp", "AdamP", "adam", P, "004",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(), _eps(), _wd("decoupled")),
            2.0, "decoupled",
            description="Adam projecting out the radial update of scale-invariant weights (delta 0.1, wd_ratio 0.1).",
            builder=_lib("adamp", delta=0.1, wd_ratio=0.1),
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
            builder=_lib("sgdp", betas=None, delta=0.1, wd_ratio=0.1),
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
            builder=_lib("prodigy"),
        ),
        OptimizerSpec(
            "schedulefree_adamw", "Schedule-Free AdamW", "schedule_free", P, "AlgoPerf",
            (_lr(*_ADAM_LR, 2.5e-3, help="1-10x a scheduled AdamW's (2.5e-3 in AlgoPerf)"),
             _beta1(), _beta2(), _eps(), _wd("decoupled")),
            2.0, "decoupled",
            needs_train_eval_mode=True, allowed_schedulers=frozenset({"constant"}),
            description="AlgoPerf v0.5 winner (self-tuning and external tuning): no LR schedule, only warmup; "
            "call optimizer.train()/eval() around training/evaluation (set_optimizer_mode).",
            builder=_lib("schedulefreeadamw"),
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
            "(autoopt.optimizers.hidden_matrix_params); AdamW (2x state) for everything else.",
            builder=_custom("muon"),
        ),
        OptimizerSpec(
            "novograd", "NovoGrad", "adam", P, "002, 004",
            (_lr(*_ADAM_LR, 1e-3), _beta1(0.95), _beta2(0.98), _eps(), _wd("l2")),
            1.0, "l2",
            description="Layer-wise second moment (one scalar per layer): ~1x state.",
            builder=_lib("novograd"),
        ),
        OptimizerSpec(
            "diffgrad", "diffGrad", "adam", P, "002",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _beta2(), _eps(), _wd("decoupled")),
            3.0, "decoupled",
            description="Adam with a friction term from the change of the gradient; 3x state.",
            builder=_lib("diffgrad"),
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
            builder=_lib("lars", betas=None),
        ),
        OptimizerSpec(
            "sm3", "SM3", "factored", P, "002",
            (_lr(1e-3, 1.0, 0.1), _momentum(0.0, allow_zero=True)),
            1.05, "none",
            description="Memory-efficient adaptive method (cover-set accumulators, sublinear); the library "
            "always allocates a 1x momentum buffer.",
            builder=_lib("sm3", betas=None),
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
            builder=_lib("adanorm"),
        ),
        OptimizerSpec(
            "pnm", "PNM", "sgd", P, "002",
            (_lr(*_ADAM_LR, 1e-3), _beta1(), _wd("decoupled")),
            2.0, "decoupled",
            description="Positive-negative momentum (two momentum buffers) for better generalization.",
            builder=_lib("pnm", betas=("beta1", 1.0)),
        ),
    ]


CATALOG: dict[str, OptimizerSpec] = {spec.name: spec for spec in _specs()}


def get_optimizer(name: str) -> OptimizerSpec:
    """The catalog entry ``name``; ValueError naming it and listing the allowed names otherwise."""
    try:
        return CATALOG[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(sorted(CATALOG))}") from None

def catalog_table() -> list[dict[str, Any]]:
    """Every entry as a JSON-serialisable dict (``autoopt optimizers --json``)."""
    return [spec.to_dict() for spec in CATALOG.values()]


# --------------------------------------------------------------------------------------
# LR schedules (built by autoopt.schedulers)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerSpec:
    """One LR schedule: its hyperparameters and when it steps (every batch or every epoch)."""

    name: str
    display: str
    hyperparams: tuple[HyperParam, ...]
    per: Literal["step", "epoch_metric"]
    guidance: str
    description: str

    @property
    def hp_names(self) -> tuple[str, ...]:
        return tuple(hp.name for hp in self.hyperparams)

    def defaults(self) -> dict[str, Any]:
        return {hp.name: hp.default for hp in self.hyperparams}

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """All hyperparameter values: ``params`` validated and typed, missing ones at defaults."""
        return resolve_hyperparams(f"scheduler {self.name!r}", self.hyperparams, params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display": self.display,
            "hyperparams": [hp.to_dict() for hp in self.hyperparams],
            "per": self.per,
            "guidance": self.guidance,
            "description": self.description,
        }


def _fraction(name: str, low: float, high: float, default: float, help: str, log: bool = False) -> HyperParam:
    return HyperParam(name, "float", low, high, log=log, default=default, help=help)


_GAMMA_STEP = HyperParam("gamma", "float", 0.05, 0.5, log=True, default=0.1, help="lr multiplier at each drop")
_ETA_MIN = HyperParam(
    "eta_min_ratio", "float", 1e-4, 0.1, log=True, default=0.0, allow_zero=True,
    help="final lr as a fraction of the peak (0: anneal to zero)",
)

SCHEDULERS: dict[str, SchedulerSpec] = {
    spec.name: spec
    for spec in (
        SchedulerSpec(
            "constant", "Constant", (), "step", "001",
            "Peak lr throughout (after warmup). Baseline; the schedule for schedule-free optimizers.",
        ),
        SchedulerSpec(
            "cosine", "Cosine annealing", (_ETA_MIN,), "step", "001, 003, AlgoPerf",
            "CosineAnnealingLR from the peak to eta_min over the run: for SGD/momentum (003); "
            "cosine + warmup was best in the LeNet/Fashion-MNIST example (001); NAdamW + warmup + cosine in AlgoPerf.",
        ),
        SchedulerSpec(
            "cosine_restarts", "Cosine with warm restarts",
            (
                HyperParam("n_cycles", "int", 2, 5, default=3,
                           help="cycles in the run; the first lasts run / (1 + t_mult + ... + t_mult^(n-1))"),
                HyperParam("t_mult", "categorical", choices=(1, 2), default=2, help="cycle length multiplier"),
                _ETA_MIN,
            ),
            "step", "003",
            "CosineAnnealingWarmRestarts (SGDR), a cyclic schedule for SGD (003); the first cycle is sized so "
            "the last cycle ends with the run (annealed, not just restarted).",
        ),
        SchedulerSpec(
            "linear", "Linear decay",
            (HyperParam("end_factor", "float", 1e-3, 0.1, log=True, default=0.01,
                        help="final lr as a fraction of the peak (AlgoPerf: 1e-3..1e-2)"),),
            "step", "003, AlgoPerf",
            "LinearLR from the peak to end_factor x peak: for Adam/RAdam (003); momentum + linear decay "
            "won AlgoPerf ImageNet ResNet-50, Nesterov + linear decay fastMRI and OGBG.",
        ),
        SchedulerSpec(
            "step", "Step decay",
            (_fraction("step_fraction", 0.1, 0.5, 0.3, "interval between drops as a fraction of the run"), _GAMMA_STEP),
            "step", "003",
            "StepLR: multiply by gamma every step_fraction of the run: for Adam/RAdam (003).",
        ),
        SchedulerSpec(
            "multistep", "Multi-step decay",
            (
                HyperParam("milestones", "categorical", choices=("0.5,0.75", "0.3,0.6,0.9", "0.33,0.67"),
                           default="0.5,0.75", help="drop points as fractions of the run"),
                _GAMMA_STEP,
            ),
            "step", "001",
            "MultiStepLR at fixed fractions of the run (multistep: 0.884 vs constant 0.882 in 001's example).",
        ),
        SchedulerSpec(
            "exponential", "Exponential decay",
            (HyperParam("gamma", "float", 0.5, 0.99, default=0.9, one_minus_log=True,
                        help="lr multiplier per epoch (applied smoothly per step)"),),
            "step", "001",
            "ExponentialLR with gamma per epoch, spread over the epoch's steps (001: beaten by polynomial for SGD).",
        ),
        SchedulerSpec(
            "inverse_sqrt", "Inverse square root",
            (_fraction("timescale_fraction", 0.005, 0.2, 0.05,
                       "decay timescale as a fraction of the run: lr = peak / sqrt(1 + t / timescale)", log=True),),
            "step", "001",
            "LambdaLR with peak / sqrt(1 + t / timescale): the transformer decay; beats exponential for SGD (001).",
        ),
        SchedulerSpec(
            "polynomial", "Polynomial decay",
            (HyperParam("power", "float", 0.5, 3.0, log=True, default=1.0, help="decay exponent (1: linear to 0)"),),
            "step", "001",
            "PolynomialLR from the peak to 0 over the run (001: polynomial beats exponential for SGD).",
        ),
        SchedulerSpec(
            "one_cycle", "One-cycle",
            (
                _fraction("pct_start", 0.1, 0.5, 0.3, "fraction of the (post-warmup) run spent ramping up"),
                HyperParam("div_factor", "float", 5.0, 100.0, log=True, default=25.0,
                           help="the ramp starts at peak / div_factor"),
                HyperParam("anneal_strategy", "categorical", choices=("cos", "linear"), default="cos",
                           help="shape of both phases"),
            ),
            "step", "003",
            "OneCycleLR (cyclic LR, 003) with momentum cycling off (the tuned momentum stays); "
            "ends at peak / (div_factor * 1e4). Its ramp absorbs the warmup.",
        ),
        SchedulerSpec(
            "plateau", "Reduce on plateau",
            (
                HyperParam("factor", "float", 0.1, 0.7, default=0.5, help="lr multiplier when the metric stalls (003: 0.5)"),
                HyperParam("patience", "int", 0, 10, default=2, help="epochs without improvement before a drop"),
            ),
            "epoch_metric", "003",
            "ReduceLROnPlateau on the validation metric (respecting the study direction), for any optimizer (003).",
        ),
    )
}


def get_scheduler(name: str) -> SchedulerSpec:
    """The scheduler spec ``name``; ValueError naming it and listing the allowed names otherwise."""
    try:
        return SCHEDULERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}") from None


def scheduler_table() -> list[dict[str, Any]]:
    """Every scheduler as a JSON-serialisable dict."""
    return [spec.to_dict() for spec in SCHEDULERS.values()]
