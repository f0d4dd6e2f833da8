"""Build catalog optimizers on a torch model: parameter groups, the builders the catalog names, optimizer state size.

The catalog (:mod:`autoopt.core.catalog`) says *what* each optimizer is as data; this module
is where ``torch.optim`` and ``pytorch-optimizer`` classes are looked up, only when a trial
trains. Biases and normalisation layers (module class names containing ``Norm``) are excluded
from weight decay via ``pytorch_optimizer.get_optimizer_parameters``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from autoopt.core.catalog import OptimizerSpec, get_optimizer

#: Parameter-name / module-class-name substrings excluded from weight decay.
NO_DECAY_PATTERNS: tuple[str, ...] = ("bias", "Norm")

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
# Building a catalog entry
# --------------------------------------------------------------------------------------
def build_optimizer(
    spec: OptimizerSpec | str, model: nn.Module, params: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``spec`` (a catalog entry or its name) for ``model``: ``params`` validated
    and typed by the catalog, missing ones at their defaults."""
    spec = get_optimizer(spec) if isinstance(spec, str) else spec
    b = spec.builder
    if b is None:  # pragma: no cover - every catalog entry has one (test_catalog builds them all)
        raise NotImplementedError(f"optimizer {spec.name!r} has no builder")
    v = spec.resolve(params)
    fixed = dict(b.fixed)
    if b.kind == "custom":
        return _CUSTOM[b.target](model, v, **fixed)
    kwargs = {k: val for k, val in v.items() if k not in ("beta1", "beta2", "weight_decay")}
    if b.betas is not None and "beta1" in v:
        kwargs["betas"] = tuple(v[x] if isinstance(x, str) else x for x in b.betas)
    if b.kind == "torch":
        return getattr(torch.optim, b.target)(_groups(model, v), **kwargs, **fixed)
    from pytorch_optimizer import load_optimizer

    if "weight_decay" in v:
        kwargs["weight_decay"] = v["weight_decay"]
        groups: Any = _groups(model, v)
    else:
        groups = _trainable(model)
    return load_optimizer(b.target)(groups, **kwargs, **fixed)


def _groups(model: nn.Module, v: dict[str, Any]) -> list[dict[str, Any]]:
    return parameter_groups(model, v.get("weight_decay", 0.0))


def _build_sgd(model: nn.Module, v: dict[str, Any], momentum: bool, nesterov: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        _groups(model, v), lr=v["lr"], momentum=v.get("momentum", 0.0) if momentum else 0.0, nesterov=nesterov
    )


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
    return SparseDenseAdam(model, lr=v["lr"], betas=(v["beta1"], v["beta2"]), eps=v["eps"], weight_decay=v["weight_decay"])


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
    base = build_optimizer(v["base"], model, base_params)
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


Builder = Callable[..., torch.optim.Optimizer]
#: The ``Builder("custom", name)`` targets of the catalog.
_CUSTOM: dict[str, Builder] = {
    "sgd": _build_sgd,
    "lbfgs": _build_lbfgs,
    "rprop": _build_rprop,
    "sparse_adam": _build_sparse_adam,
    "adafactor": _build_adafactor,
    "lookahead": _build_lookahead,
    "muon": _build_muon,
}


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


@contextlib.contextmanager
def evaluation_mode(*optimizers: torch.optim.Optimizer) -> Iterator[None]:
    """Inside the block, schedule-free optimizers hold their averaged weights (the ones to evaluate
    and save), after it their training weights again; other optimizers are left alone."""
    for optimizer in optimizers:
        set_optimizer_mode(optimizer, training=False)
    try:
        yield
    finally:
        for optimizer in optimizers:
            set_optimizer_mode(optimizer, training=True)




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


__all__ = [
    "NO_DECAY_PATTERNS",
    "SparseDenseAdam",
    "build_optimizer",
    "evaluation_mode",
    "hidden_matrix_params",
    "optimizer_state_bytes",
    "parameter_groups",
    "set_optimizer_mode",
    "sparse_embedding_params",
]


# --- the same optimizer without autoopt -----------------------------------------------------------
def _differs(value: Any, default: Any) -> bool:
    try:
        return bool(tuple(value) != tuple(default)) if isinstance(value, (list, tuple)) else bool(value != default)
    except Exception:
        return True


def plain_torch_line(config: Mapping[str, Any]) -> str | None:
    """``torch.optim.X(model.parameters(), ...)`` equivalent of ``config``'s optimizer, read off the
    optimizer the catalog actually builds; None for wrappers and multi-group optimizers.

    A trial's worker records it with the outcome (building an optimizer imports ``torch._dynamo``,
    seconds that a driver writing the study's report would otherwise spend)."""
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        opt = build_optimizer(str(config.get("optimizer")), model, dict(config.get("optimizer_params") or {}))
    except Exception:
        return None
    cls = type(opt)
    module = cls.__module__
    if not (module.startswith("torch.optim") or module.startswith("pytorch_optimizer")) or cls.__name__ in ("Lookahead",):
        return None
    accepted = inspect.signature(cls.__init__).parameters
    group = max(opt.param_groups, key=lambda g: g.get("weight_decay", 0) or 0)  # the decayed group
    kwargs = {
        k: group[k]
        for k, p in accepted.items()
        if k in group and k != "params" and not isinstance(group[k], torch.Tensor)
        and (k == "lr" or p.default is inspect.Parameter.empty or _differs(group[k], p.default))
    }
    prefix = "torch.optim" if module.startswith("torch.optim") else "pytorch_optimizer"
    args = "".join(f", {k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in kwargs.items())
    return f"{prefix}.{cls.__name__}(model.parameters(){args})"
