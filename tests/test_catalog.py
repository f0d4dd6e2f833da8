"""The optimizer catalog: every entry builds, trains a small model, and reports its state size."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from autoopt.core.catalog import CATALOG, HyperParam, catalog_table, get_optimizer
from autoopt.optimizers import (
    SparseDenseAdam,
    build_optimizer,
    hidden_matrix_params,
    optimizer_state_bytes,
    set_optimizer_mode,
)

REQUIRED = {
    "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "amsgrad", "adamw", "nadam",
    "radam", "adamax", "asgd", "sparse_adam", "lbfgs", "rprop", "ranger", "lookahead", "lion", "adafactor",
    "yogi", "adabelief", "adan", "lamb", "adamp", "sgdp", "prodigy", "schedulefree_adamw", "muon",
}



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread avoids contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

class SparseModel(nn.Module):
    """Bag-of-tokens classifier whose embedding produces torch sparse gradients."""

    def __init__(self, vocab: int = 50, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(vocab, dim, mode="mean", sparse=True)
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens))


def mlp(width: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)
    )


def model_and_batch(name: str, width: int = 32) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    y = torch.randint(0, 3, (64,), generator=gen)
    if name == "sparse_adam":
        return SparseModel(), torch.randint(0, 50, (64, 4), generator=gen), y
    return mlp(width), torch.randn(64, 16, generator=gen), y


def train(spec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, steps: int) -> tuple[float, float]:
    """(loss before, loss after) ``steps`` optimizer steps on one fixed batch."""

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    set_optimizer_mode(optimizer, True)
    with torch.no_grad():
        before = loss().item()
    for _ in range(steps):
        if spec.needs_closure:
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()
    set_optimizer_mode(optimizer, False)
    with torch.no_grad():
        after = loss().item()
    return before, after


def test_catalog_has_the_required_entries():
    assert len(CATALOG) >= 25
    assert REQUIRED <= set(CATALOG)
    for name, spec in CATALOG.items():
        assert spec.name == name
        assert spec.source in ("torch.optim", "pytorch-optimizer")
        assert spec.guidance and spec.display and spec.family
        assert spec.weight_decay in ("decoupled", "l2", "none")
        assert ("weight_decay" in spec.hp_names) == (spec.weight_decay != "none"), name
        assert "lr" in spec.hp_names, name
        assert spec.hyperparams[0].name in ("lr", "base"), name


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_entry_builds_and_trains_at_defaults(name):
    spec = CATALOG[name]
    model, x, y = model_and_batch(name)
    before_params = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(spec, model, {})
    assert isinstance(optimizer, torch.optim.Optimizer)
    loss_before, loss_after = train(spec, model, x, y, optimizer, steps=25)
    changed = [not torch.equal(a, b) for a, b in zip(before_params, model.parameters())]
    assert all(changed), f"{name} left some parameters untouched: {changed}"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert loss_after < loss_before, f"{name}: loss {loss_before:.4f} -> {loss_after:.4f}"


def _corner(spec, which: str) -> dict:
    values = {}
    for hp in spec.hyperparams:
        if hp.kind == "categorical":
            values[hp.name] = hp.choices[0] if which == "low" else hp.choices[-1]
        elif which == "zero" and hp.allow_zero:
            values[hp.name] = 0
        else:
            values[hp.name] = hp.low if which in ("low", "zero") else hp.high
    return values


@pytest.mark.parametrize("which", ["low", "high", "zero"])
@pytest.mark.parametrize("name", sorted(CATALOG))
def test_entry_builds_and_steps_at_range_corners(name, which):
    """Whatever the search samples inside the ranges must construct and step."""
    spec = CATALOG[name]
    model, x, y = model_and_batch(name)
    optimizer = build_optimizer(spec, model, _corner(spec, which))
    train(spec, model, x, y, optimizer, steps=2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_defaults_lie_inside_their_ranges():
    for spec in CATALOG.values():
        for hp in spec.hyperparams:
            assert hp.contains(hp.default), f"{spec.name}.{hp.name} default {hp.default} outside {hp.describe_range()}"
            if hp.kind != "categorical":
                assert hp.low < hp.high
                if hp.log:
                    assert hp.low > 0
            if hp.active_if:
                parent = spec.hyperparam(hp.active_if[0])
                assert set(hp.active_if[1]) <= set(parent.choices)


def test_hyperparam_rejects_bad_definitions():
    with pytest.raises(ValueError, match="default"):
        HyperParam("lr", "float", 1e-3, 1e-1, log=True, default=1.0)
    with pytest.raises(ValueError, match="low > 0"):
        HyperParam("lr", "float", 0.0, 1.0, log=True, default=0.5)
    with pytest.raises(ValueError, match="choices"):
        HyperParam("x", "categorical", choices=(), default=None)
    hp = HyperParam("weight_decay", "float", 1e-5, 1.0, log=True, default=0.0, allow_zero=True)
    assert hp.contains(0.0) and hp.contains(1e-3) and not hp.contains(2.0) and not hp.contains(1e-6)
    with pytest.raises(ValueError, match="above"):
        hp.validate_range(1.0, 1e-3)


def test_hyperparameter_values_reach_the_optimizer():
    model = mlp()
    opt = build_optimizer("adamw", model, {"lr": 0.0123, "beta1": 0.8, "beta2": 0.95, "eps": 1e-7, "weight_decay": 0.05})
    assert isinstance(opt, torch.optim.AdamW)
    for group in opt.param_groups:
        assert group["lr"] == 0.0123 and group["betas"] == (0.8, 0.95) and group["eps"] == 1e-7
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model[0].weight)] == 0.05 and decay[id(model[3].weight)] == 0.05
    # Biases and LayerNorm parameters are excluded from weight decay.
    assert decay[id(model[0].bias)] == 0.0 and decay[id(model[1].weight)] == 0.0 and decay[id(model[1].bias)] == 0.0

    sgd = build_optimizer("nesterov", mlp(), {"lr": 0.2, "momentum": 0.8})
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.8
    assert build_optimizer("sgd", mlp(), {"lr": 0.2}).param_groups[0]["momentum"] == 0.0
    rms = build_optimizer("rmsprop", mlp(), {"centered": True, "momentum": 0.9})
    assert rms.param_groups[0]["centered"] and rms.param_groups[0]["momentum"] == 0.9

    la = build_optimizer("lookahead", mlp(), {"base": "momentum", "lr": 0.05, "momentum": 0.8, "k": 7, "alpha": 0.6})
    assert isinstance(la.optimizer, torch.optim.SGD) and la.optimizer.param_groups[0]["momentum"] == 0.8
    assert (la.k, la.alpha) == (7, 0.6) and la.param_groups[0]["lr"] == 0.05

    muon = build_optimizer("muon", mlp(), {"lr": 0.03, "adamw_lr": 1e-3})
    by_kind = {g["use_muon"]: g["lr"] for g in muon.param_groups}
    assert by_kind == {True: 0.03, False: 1e-3}


def test_lookahead_momentum_is_only_active_for_the_momentum_base():
    spec = get_optimizer("lookahead")
    assert "momentum" not in [hp.name for hp in spec.active_hyperparams({"base": "adamw"})]
    assert "momentum" in [hp.name for hp in spec.active_hyperparams({"base": "momentum"})]


def test_unknown_names_raise_value_errors_listing_allowed():
    with pytest.raises(ValueError) as info:
        get_optimizer("adamz")
    message = str(info.value)
    assert "adamz" in message and "adamw" in message and "sgd" in message and "muon" in message
    with pytest.raises(ValueError, match=r"momentum.*allowed: lr, beta1"):
        build_optimizer("adam", mlp(), {"momentum": 0.9})
    with pytest.raises(ValueError, match=r"base='lbfgs' is not one of"):
        build_optimizer("lookahead", mlp(), {"base": "lbfgs"})
    with pytest.raises(ValueError, match="k must be an integer"):
        build_optimizer("ranger", mlp(), {"k": 2.5})


def test_applicability():
    sparse_adam = get_optimizer("sparse_adam")
    assert sparse_adam.applicable(sparse_gradients=True) == (True, None)
    ok, reason = sparse_adam.applicable(sparse_gradients=False)
    assert not ok and "sparse" in reason

    muon = get_optimizer("muon")
    assert muon.applicable(sparse_gradients=False, has_matrix_params=True) == (True, None)
    ok, reason = muon.applicable(sparse_gradients=False, has_matrix_params=False)
    assert not ok and "2-D" in reason

    for name in ("lbfgs", "rprop"):
        spec = get_optimizer(name)
        assert not spec.mini_batch and spec.excluded_reason.startswith("full-batch method: ")
        ok, reason = spec.applicable(sparse_gradients=False)
        assert not ok and reason == spec.excluded_reason
        assert spec.applicable(sparse_gradients=False, full_batch=True) == (True, None)

    mini_batch = [s for s in CATALOG.values() if s.mini_batch and not s.requires]
    assert len(mini_batch) >= 25
    for spec in mini_batch:
        assert spec.applicable(sparse_gradients=True) == (True, None)
        assert spec.applicable(sparse_gradients=False, has_matrix_params=False) == (True, None)


def test_builders_refuse_models_they_cannot_train():
    with pytest.raises(ValueError, match="sparse=True"):
        build_optimizer("sparse_adam", mlp())
    with pytest.raises(ValueError, match="hidden 2-D"):
        build_optimizer("muon", nn.Linear(4, 2))


def test_hidden_matrix_params_skip_head_embeddings_and_vectors():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 2))
    hidden = hidden_matrix_params(model)
    assert [id(p) for p in hidden] == [id(model[1].weight), id(model[3].weight)]
    assert hidden_matrix_params(nn.Linear(4, 2)) == []


def test_sparse_adam_uses_sparse_adam_for_sparse_grads_and_adamw_for_the_rest():
    model, x, y = model_and_batch("sparse_adam")
    opt = build_optimizer("sparse_adam", model, {"weight_decay": 0.01})
    assert isinstance(opt, SparseDenseAdam)
    assert isinstance(opt.sparse, torch.optim.SparseAdam) and isinstance(opt.dense, torch.optim.AdamW)
    assert [p for g in opt.sparse.param_groups for p in g["params"]] == [model.emb.weight]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert model.emb.weight.grad.is_sparse and not model.fc.weight.grad.is_sparse
    opt.step()
    # One shared state: scheduler-visible groups are the inner optimizers' own dicts.
    assert opt.sparse.state is opt.state and opt.dense.state is opt.state
    assert opt.param_groups[0] is opt.sparse.param_groups[0] and opt.param_groups[1] is opt.dense.param_groups[0]

    # state_dict round trip continues identically.
    clone = copy.deepcopy(model)
    opt2 = build_optimizer("sparse_adam", clone, {"weight_decay": 0.01})
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for o, m in ((opt, model), (opt2, clone)):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), clone.parameters()))


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _one_step(name: str, params: dict | None = None, width: int = 64):
    spec = get_optimizer(name)
    model, x, y = model_and_batch(name, width=width)
    opt = build_optimizer(spec, model, params or {})
    train(spec, model, x, y, opt, steps=1)
    return model, opt


def test_optimizer_state_bytes_for_sgd_momentum_adam():
    model, opt = _one_step("sgd")
    assert optimizer_state_bytes(opt) == 0
    model, opt = _one_step("momentum")
    assert optimizer_state_bytes(opt) == _param_bytes(model)
    model, opt = _one_step("adam")
    ratio = optimizer_state_bytes(opt) / _param_bytes(model)
    assert 2.0 <= ratio < 2.01  # two moments plus scalar step counters
    model, opt = _one_step("lookahead", {"base": "momentum"})
    assert optimizer_state_bytes(opt) == 2 * _param_bytes(model)  # momentum + slow weights


@pytest.mark.parametrize("name", sorted(n for n, s in CATALOG.items() if s.mini_batch))
def test_state_per_param_matches_measured_state(name):
    """The catalog's memory figure agrees with what the optimizer really allocates."""
    model, opt = _one_step(name)
    ratio = optimizer_state_bytes(opt) / _param_bytes(model)
    expected = CATALOG[name].state_per_param
    assert abs(ratio - expected) <= 0.1 + 0.05 * expected, f"{name}: measured {ratio:.3f}x, catalog {expected}x"


def test_schedule_free_needs_train_eval_mode_and_set_optimizer_mode_switches_weights():
    spec = get_optimizer("schedulefree_adamw")
    assert spec.needs_train_eval_mode and spec.allowed_schedulers == frozenset({"constant"})
    model, x, y = model_and_batch("schedulefree_adamw")
    opt = build_optimizer(spec, model)
    train(spec, model, x, y, opt, steps=5)  # ends in eval mode
    eval_weights = [p.detach().clone() for p in model.parameters()]
    set_optimizer_mode(opt, True)
    assert any(not torch.equal(a, b) for a, b in zip(eval_weights, model.parameters()))
    set_optimizer_mode(opt, False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(eval_weights, model.parameters()))
    # A no-op for optimizers without train/eval.
    adam = build_optimizer("adam", model)
    set_optimizer_mode(adam, True)
    set_optimizer_mode(adam, False)


def test_catalog_table_is_json_serialisable():
    rows = catalog_table()
    assert len(rows) == len(CATALOG)
    text = json.dumps(rows)
    back = json.loads(text)
    keys = {"name", "display", "family", "source", "guidance", "hyperparams", "state_per_param", "weight_decay",
            "mini_batch", "excluded_reason", "requires"}
    for row in back:
        assert keys <= set(row)
        for hp in row["hyperparams"]:
            assert {"name", "kind", "low", "high", "log", "choices", "default"} <= set(hp)
    lbfgs = next(r for r in back if r["name"] == "lbfgs")
    assert lbfgs["mini_batch"] is False and lbfgs["requires"] == ["full_batch"] and lbfgs["needs_closure"] is True
