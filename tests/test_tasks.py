"""Reference tasks: real data generation and real (short) training runs on CPU."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoopt.core.traits import MEASURED, TaskTraits
from autoopt.task import REFERENCE_TASKS, FunctionTask, Task, TaskNotFound, TaskOptionsError, load_task
from autoopt.tasks.cv import DigitsCNN
from autoopt.tasks.nlp import ZipfTextClassification
from autoopt.tasks.recsys import ImplicitMF
from autoopt.tasks.tabular import DiabetesMLP

CPU = torch.device("cpu")
CLASSES = {"cv": DigitsCNN, "tabular": DiabetesMLP, "nlp": ZipfTextClassification, "recsys": ImplicitMF}
OptimizerFactory = Callable[[nn.Module], list[torch.optim.Optimizer]]


@pytest.fixture(autouse=True)
def one_thread():
    """Trials run on one thread per worker; timings and results here match that setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit(task: Task, optimizers: OptimizerFactory, epochs: int, sparse_gradients: bool = False) -> float:
    """A plain training loop (the study's train loop is tested elsewhere); returns the val metric."""
    torch.manual_seed(task.seed)
    model = task.build_model(sparse_gradients=sparse_gradients)
    opts = optimizers(model)
    train_loader, val_loader = task.loaders()
    for _ in range(epochs):
        for batch in train_loader:
            for opt in opts:
                opt.zero_grad()
            output, target = task.forward(model, batch, CPU)
            task.loss(output, target).backward()
            for opt in opts:
                opt.step()
    return task.evaluate(model, val_loader, CPU)


def adam(lr: float) -> OptimizerFactory:
    return lambda model: [torch.optim.Adam(model.parameters(), lr=lr)]


def plain_sgd(lr: float) -> OptimizerFactory:
    return lambda model: [torch.optim.SGD(model.parameters(), lr=lr)]


def better(task: Task, a: float, b: float, margin: float) -> bool:
    """``a`` beats ``b`` by at least ``margin`` in the task's direction."""
    return a - b >= margin if task.direction == "maximize" else b - a >= margin


@pytest.mark.parametrize("name", list(REFERENCE_TASKS))
def test_traits_are_valid_and_sparsity_is_measured(name):
    task = load_task(name)
    traits = task.traits()
    train, _ = task.datasets()
    assert isinstance(traits, TaskTraits)
    assert traits.domain == name
    assert traits.metric == task.metric and traits.direction == task.direction
    assert traits.batch_size == task.default_batch_size
    assert traits.dataset_size == len(train)
    assert traits.n_params == sum(p.numel() for p in task.build_model().parameters())
    assert traits.sparse_gradients is task.supports_sparse_gradients is (name in ("nlp", "recsys"))
    if name in ("nlp", "recsys"):
        assert traits.grad_sparsity > 0.8  # embedding rows untouched by a batch get exactly-zero grads
    else:
        assert traits.grad_sparsity < 0.5
    assert task.describe()["chance_level"] == task.chance_level


# (size, epochs, Adam lr, metric Adam must reach): short runs that still show real learning.
TRAINING = {
    "cv": (0.5, 4, 3e-3, 0.85),
    "tabular": (1.0, 4, 3e-3, 0.7),
    "nlp": (0.5, 3, 1e-2, 0.6),
    "recsys": (0.5, 2, 1e-2, 0.75),
}


@pytest.mark.parametrize("name", list(TRAINING))
def test_adam_beats_chance_and_a_bad_learning_rate_does_not(name):
    size, epochs, lr, target = TRAINING[name]
    task = load_task(name, size=size)
    good = fit(task, adam(lr), epochs)
    bad = fit(task, plain_sgd(1e-4), epochs)
    assert math.isfinite(good) and math.isfinite(bad)
    assert better(task, good, target, 0.0), f"Adam reached {task.metric}={good:.3f}, wanted {target}"
    assert better(task, good, task.chance_level, 0.25 if name != "tabular" else 0.3)
    # The optimizer matters: plain SGD at a tiny lr stays near chance on every task.
    assert better(task, good, bad, 0.2), f"Adam {good:.3f} vs SGD(lr=1e-4) {bad:.3f}"


def sparse_adam_plus_adam(model: nn.Module) -> list[torch.optim.Optimizer]:
    """SparseAdam for the sparse embedding tables, Adam for any dense rest (the usual split)."""
    sparse = [p for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for p in m.parameters()]
    dense = [p for p in model.parameters() if all(p is not s for s in sparse)]
    opts: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(sparse, lr=1e-2)]
    return opts + ([torch.optim.Adam(dense, lr=1e-2)] if dense else [])


@pytest.mark.parametrize("name", ["nlp", "recsys"])
def test_sparse_gradient_models_produce_sparse_grads(name):
    task = load_task(name, size=0.25)
    torch.manual_seed(0)
    model = task.build_model(sparse_gradients=True)
    output, target = task.forward(model, next(iter(task.loaders()[0])), CPU)
    task.loss(output, target).backward()
    embeddings = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    assert embeddings and all(m.weight.grad.is_sparse for m in embeddings)
    dense_model = task.build_model(sparse_gradients=False)
    assert not any(p.grad is not None and p.grad.is_sparse for p in dense_model.parameters())


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # raised inside torch's Adagrad
@pytest.mark.parametrize(
    "name,optimizers",
    [
        ("nlp", lambda model: [torch.optim.Adagrad(model.parameters(), lr=0.1)]),
        ("nlp", sparse_adam_plus_adam),
        ("recsys", lambda model: [torch.optim.Adagrad(model.parameters(), lr=0.1)]),
        ("recsys", lambda model: [torch.optim.SparseAdam(model.parameters(), lr=1e-2)]),  # all embeddings
    ],
    ids=["nlp-adagrad", "nlp-sparseadam+adam", "recsys-adagrad", "recsys-sparseadam"],
)
def test_sparse_gradient_models_train_with_sparse_optimizers(name, optimizers):
    task = load_task(name, size=0.5)
    value = fit(task, optimizers, epochs=2, sparse_gradients=True)
    assert value > task.chance_level + 0.2, f"{task.metric}={value:.3f}"


def first_rows(task: Task, n: int = 200) -> tuple[torch.Tensor, ...]:
    train, val = task.datasets()
    return (*train.__getitems__(list(range(min(n, len(train))))), *val.__getitems__(list(range(min(n, len(val))))))


def same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(REFERENCE_TASKS))
def test_data_is_deterministic_per_seed(name):
    a, b, other = (load_task(name, size=0.5, seed=s) for s in (7, 7, 8))
    assert same(first_rows(a), first_rows(b))
    assert not same(first_rows(a), first_rows(other))
    assert same(next(iter(a.loaders()[0])), next(iter(b.loaders()[0])))  # same shuffle order too
    torch.manual_seed(123)  # global RNG state must not leak into the data
    assert same(first_rows(load_task(name, size=0.5, seed=7)), first_rows(a))


@pytest.mark.parametrize("name", list(REFERENCE_TASKS))
def test_size_scales_the_data(name):
    sizes = [len(load_task(name, size=s).datasets()[0]) for s in (0.25, 1.0, 2.0)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_batches_are_inputs_then_target():
    for name in REFERENCE_TASKS:
        task = load_task(name, size=0.25, batch_size=8)
        train_loader, val_loader = task.loaders()
        batch = next(iter(train_loader))
        assert isinstance(batch, tuple) and len(batch[-1]) == 8, name
        assert len(train_loader) == len(task.datasets()[0]) // 8
        assert next(iter(val_loader))[-1].shape[0] == min(256, len(task.datasets()[1]))


def test_load_task_by_name_and_options():
    for name, cls in CLASSES.items():
        task = load_task(name)
        assert type(task) is cls and task.domain == name
        assert (task.size, task.seed, task.epochs) == (1.0, 0, cls.default_epochs)
    task = load_task("nlp", size=0.5, seed=3, batch_size=64, epochs=2)
    assert (task.size, task.seed, task.batch_size, task.epochs) == (0.5, 3, 64, 2)
    assert type(load_task("autoopt.tasks.recsys:ImplicitMF", size=0.25)) is ImplicitMF
    with pytest.raises(TaskNotFound, match="unknown task 'vision'"):
        load_task("vision")
    with pytest.raises(ValueError, match="size must be > 0"):
        load_task("cv", size=0)


class _PassesOptionsOn(DiabetesMLP):
    def __init__(self, **kw):
        super().__init__(**kw)  # an unknown name is refused only by Task.__init__


class _BrokenInside(DiabetesMLP):
    def __init__(self, size: float = 1.0):
        super().__init__(size=size)
        len(5)  # a TypeError of the task's own: not the user's options


def test_task_options_the_task_does_not_take_are_named():
    with pytest.raises(TaskOptionsError, match="task_options for task 'cv': got an unexpected keyword argument "
                                              "'sizee'; it takes: size, seed, batch_size, epochs"):
        load_task("cv", sizee=1.0)
    with pytest.raises(TaskOptionsError, match="unexpected keyword argument 'sizee'"):
        load_task(_PassesOptionsOn, sizee=1.0)
    assert isinstance(TaskOptionsError("x"), TaskNotFound)  # the CLI's one-line, exit-2 errors
    with pytest.raises(TypeError, match="has no len"):  # the task's own bug is not blamed on its options
        load_task(_BrokenInside, size=0.5)


def test_tabular_chance_level_is_the_mean_predictor():
    task = DiabetesMLP(seed=4)
    _, val_loader = task.loaders()
    train_mean = nn.Sequential(nn.Linear(10, 1), nn.Flatten(0))
    nn.init.zeros_(train_mean[0].weight)
    nn.init.zeros_(train_mean[0].bias)  # standardised targets: the training mean is 0
    assert task.evaluate(train_mean, val_loader, CPU) == pytest.approx(task.chance_level, abs=1e-3)
    assert 0.8 < task.chance_level < 1.5


def test_user_function_task_trains():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    train, val = torch.utils.data.random_split(data, [500, 100], generator=torch.Generator().manual_seed(0))
    task = load_task(
        FunctionTask(
            name="user_linear",
            build_model=lambda: nn.Linear(5, 2),
            make_datasets=lambda: (train, val),
            domain="tabular",
            epochs=3,
            batch_size=20,
        )
    )
    traits = task.traits()
    assert (traits.n_params, traits.dataset_size, traits.batch_size) == (12, 500, 20)
    assert traits.grad_sparsity < 0.2
    assert fit(task, adam(0.05), epochs=task.epochs) > 0.9


def test_the_gradient_scale_at_init_is_measured_from_real_backward_passes():
    """``grad_rms``: the RMS gradient entry of the initial model over its first batches. A loss ten
    times larger has gradients ten times larger; nothing is declared."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 4)).astype(np.float32))
    y = torch.from_numpy(rng.normal(size=(200, 1)).astype(np.float32))
    data = TensorDataset(x, y)

    def task(scale: float) -> FunctionTask:
        return FunctionTask(name=f"scaled_{scale}", build_model=lambda: nn.Linear(4, 1), make_datasets=lambda: (data, data),
                            domain="tabular", batch_size=20, metric="val_loss", direction="minimize",
                            loss=lambda out, target: scale * nn.functional.mse_loss(out, target))

    one, ten = task(1.0).traits(), task(10.0).traits()
    assert one.grad_rms > 0 and ten.grad_rms == pytest.approx(10 * one.grad_rms, rel=1e-3)
    # by hand: the same seed, model and first five batches
    t = task(1.0)
    torch.manual_seed(t.seed)
    model = t.build_model()
    squares = []
    for i, (xb, yb) in enumerate(t.loaders()[0]):
        if i == 5:
            break
        model.zero_grad()
        nn.functional.mse_loss(model(xb), yb).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        squares.append(float(g.double().pow(2).mean()))
    assert one.grad_rms == pytest.approx(math.sqrt(sum(squares) / len(squares)), rel=1e-3)
    assert "grad_rms" in one.to_dict(MEASURED)


@pytest.mark.parametrize("loader, fields, options", [
    ("load_diabetes", ("data", "target"), {"scaled": False}),
    ("load_digits", ("images", "target"), {}),
])
def test_bundled_data_comes_from_a_cache_that_holds_sklearns_arrays(tmp_path, monkeypatch, loader, fields, options):
    """The reference tasks' scikit-learn data is read once and then from .npz files: equal to what
    scikit-learn returns, read without importing it, and made again when a file is cut short."""
    import json
    import os
    import subprocess
    import sys

    import sklearn.datasets

    from autoopt.tasks import bundled

    monkeypatch.setenv("AUTOOPT_CACHE_DIR", str(tmp_path))
    first = bundled.load(loader, fields, **options)
    path = bundled._path(loader, options)
    assert path.is_file()
    fresh = getattr(sklearn.datasets, loader)(**options)
    for f in fields:
        np.testing.assert_array_equal(first[f], fresh[f])
    # another process (a trial worker) reads the file and never imports scikit-learn
    probe = (f"import sys, json; from autoopt.tasks import bundled; a = bundled.load({loader!r}, {fields!r}, **{options!r}); "
             "print(json.dumps([float(a[f].sum()) for f in a] + ['sklearn' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "AUTOOPT_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    *sums, imported = json.loads(out.stdout)
    assert sums == [float(fresh[f].sum()) for f in fields] and imported is False
    path.write_bytes(path.read_bytes()[:100])  # cut short (a full disk, a killed writer)
    again = bundled.load(loader, fields, **options)
    for f in fields:
        np.testing.assert_array_equal(again[f], fresh[f])
    assert np.load(path)[fields[0]].shape == fresh[fields[0]].shape  # and written whole again
