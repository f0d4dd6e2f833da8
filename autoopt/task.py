"""What a training workload is: model, data, loss, metric and the traits the recommender reads.

A task is the unit autoopt tunes an optimizer for. Reference tasks live in the top-level
``tasks/`` folder (installed as ``autoopt.tasks``); users plug in their own by subclassing
:class:`Task` or by an import path ``package.module:ClassOrFactory`` in a study spec.
"""

from __future__ import annotations

import importlib
import inspect
import math
import typing
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autoopt.core.tasks import REFERENCE_TASKS
from autoopt.core.traits import MEASURED, TaskTraits


class Task(ABC):
    """A training workload. Subclasses set the class attributes and implement the abstract methods.

    ``size`` scales the data (and, where it makes sense, the model) so the same task serves
    quick CPU tests (size < 1) and GPU benchmarks (size >> 1).
    """

    name: str = "task"
    domain: str = "other"
    metric: str = "val_accuracy"
    direction: str = "maximize"
    default_epochs: int = 5
    default_batch_size: int = 32
    #: The model can produce torch sparse gradients (``build_model(sparse_gradients=True)``).
    supports_sparse_gradients: bool = False
    #: Value of the metric a trivial predictor gets; tests check trained models beat it.
    chance_level: float | None = None

    def __init__(
        self,
        size: float = 1.0,
        seed: int = 0,
        batch_size: int | None = None,
        epochs: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
        self.size = float(size)
        self.seed = int(seed)
        self.batch_size = int(batch_size or self.default_batch_size)
        self.epochs = int(epochs or self.default_epochs)
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        self._data: tuple[Dataset, Dataset] | None = None
        self._measured_gradients: tuple[float, float] | None = None

    # --- what subclasses provide -------------------------------------------------------
    @abstractmethod
    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        """A freshly initialised model (seeded by the caller)."""

    @abstractmethod
    def make_datasets(self) -> tuple[Dataset, Dataset]:
        """(train, validation) datasets; deterministic for a given ``seed`` and ``size``."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    def forward(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model on one batch; returns (output, target). Batches are ``(inputs..., target)``."""
        *inputs, target = [b.to(device) for b in batch]
        return model(*inputs), target

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> float:
        """The validation metric. Default: classification accuracy."""
        model.eval()
        correct = total = 0
        for batch in loader:
            output, target = self.forward(model, batch, device)
            correct += (output.argmax(dim=-1) == target).sum().item()
            total += target.numel()
        model.train()
        return correct / max(total, 1)

    # --- provided -----------------------------------------------------------------------
    def datasets(self) -> tuple[Dataset, Dataset]:
        if self._data is None:
            self._data = self.make_datasets()
        return self._data

    def loaders(self, batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
        train, val = self.datasets()
        bs = int(batch_size or self.batch_size)
        gen = torch.Generator().manual_seed(self.seed)
        return (
            DataLoader(train, batch_size=bs, shuffle=True, generator=gen, drop_last=len(train) > bs),
            DataLoader(val, batch_size=max(bs, 256), shuffle=False),
        )

    def n_params(self) -> int:
        torch.manual_seed(self.seed)
        return sum(p.numel() for p in self.build_model().parameters())

    def measure_grad_sparsity(self, n_batches: int = 5) -> float:
        """Fraction of exactly-zero gradient entries over the first batches (dense grads)."""
        return self._measure_gradients(n_batches)[0]

    def _measure_gradients(self, n_batches: int = 5) -> tuple[float, float]:
        """(sparsity, RMS entry) of the initial model's gradients, from the same backward passes."""
        if self._measured_gradients is not None:
            return self._measured_gradients
        torch.manual_seed(self.seed)
        model = self.build_model()
        device = torch.device("cpu")
        train_loader, _ = self.loaders()
        zeros = total = 0
        squares: list[float] = []
        for i, batch in enumerate(train_loader):
            if i >= n_batches:
                break
            model.zero_grad(set_to_none=False)
            output, target = self.forward(model, batch, device)
            self.loss(output, target).backward()
            batch_zeros, entries, square, _ = gradient_stats(model)
            zeros += batch_zeros
            total += entries
            if entries:
                squares.append(square / entries)
        rms = math.sqrt(sum(squares) / len(squares)) if squares else 0.0
        self._measured_gradients = (zeros / total if total else 0.0, rms)
        return self._measured_gradients

    def traits(self, measure: bool = True) -> TaskTraits:
        """Traits with the gradient's sparsity and RMS entry measured from real backward passes at
        initialisation (``measure=False`` gives sparsity 0.0 and no ``grad_rms``)."""
        train, _ = self.datasets()
        sparsity, rms = self._measure_gradients() if measure else (0.0, 0.0)
        return TaskTraits(
            domain=self.domain,
            batch_size=self.batch_size,
            grad_sparsity=round(float(sparsity), 4),
            n_params=self.n_params(),
            dataset_size=len(train),
            metric=self.metric,
            direction=self.direction,
            sparse_gradients=self.supports_sparse_gradients,
            grad_rms=rms_trait(rms),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "epochs": self.epochs,
            "size": self.size,
            "chance_level": self.chance_level,
            **self.traits().to_dict(MEASURED),
        }


def gradient_stats(model: nn.Module) -> tuple[int, int, float, bool]:
    """(exactly-zero entries, entries, sum of squared entries, whether any is sparse) of the
    gradients ``model`` holds now: the traits' sparsity and RMS entry, from whatever backward
    passes the caller ran (a Task's first batches, ``trial.traits``'s one batch)."""
    zeros = total = 0
    square = 0.0
    sparse = False
    for p in model.parameters():
        if p.grad is None:
            continue
        sparse = sparse or p.grad.is_sparse
        g = p.grad.to_dense() if p.grad.is_sparse else p.grad
        zeros += int((g == 0).sum().item())
        total += g.numel()
        square += float(g.double().pow(2).sum())
    return zeros, total, square, sparse


def rms_trait(rms: float) -> float | None:
    """``grad_rms`` as stored (4 significant digits); None where no gradient was measured."""
    return float(f"{rms:.4g}") if rms > 0 and math.isfinite(rms) else None


class FunctionTask(Task):
    """A task assembled from plain callables, for users who do not want to subclass."""

    def __init__(
        self,
        name: str,
        build_model: Callable[[], nn.Module],
        make_datasets: Callable[[], tuple[Dataset, Dataset]],
        domain: str = "other",
        metric: str = "val_accuracy",
        direction: str = "maximize",
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        evaluate: Callable[[nn.Module, DataLoader, torch.device], float] | None = None,
        epochs: int = 5,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        self.name, self.domain, self.metric, self.direction = name, domain, metric, direction
        self._build_model, self._make_datasets = build_model, make_datasets
        self._loss, self._evaluate = loss, evaluate
        super().__init__(size=1.0, seed=seed, batch_size=batch_size, epochs=epochs)

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        return self._build_model()

    def make_datasets(self) -> tuple[Dataset, Dataset]:
        return self._make_datasets()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss(output, target) if self._loss else super().loss(output, target)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> float:
        if self._evaluate:
            return self._evaluate(model, loader, device)
        return super().evaluate(model, loader, device)


class TaskNotFound(ValueError):
    pass


class TaskOptionsError(TaskNotFound):
    """``task_options`` the task does not take: bad input, reported in one line (exit code 2)."""


def _import_path(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise TaskNotFound(f"task import path {path!r} must look like 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskNotFound(f"cannot import task module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise TaskNotFound(f"module {module_name!r} has no attribute {attr!r}") from None


def load_task(ref: str | Task | Callable[..., Task], **kwargs: Any) -> Task:
    """A Task from a reference name ('cv'), an import path ('pkg.mod:Cls'), a class/factory or an instance.

    An import path must name a Task subclass, a Task instance or a function annotated to return a
    Task: it is checked before anything is called, so a path like ``os:system`` is refused instead
    of being run with ``task_options`` as arguments. A path read back from a storage or a data file
    must pass :func:`autoopt.trust.check_trusted` before it gets here.
    """
    if isinstance(ref, Task):
        return ref
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(ref, str):
        if ref in REFERENCE_TASKS:
            target = _import_path(REFERENCE_TASKS[ref])
        elif ":" in ref:
            target = _import_path(ref)
        else:
            raise TaskNotFound(
                f"unknown task {ref!r}: use one of {', '.join(REFERENCE_TASKS)} or an import path 'pkg.module:Name'"
            )
        if isinstance(target, Task):
            return target
        _check_importable_task(ref, target)
    else:
        target = ref
    if callable(target):
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # no signature to read (a builtin): the call below decides
            signature = None
        if signature is not None:
            try:
                signature.bind(**kwargs)
            except TypeError as exc:
                takes = [n for n, p in signature.parameters.items()
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
                raise TaskOptionsError(f"task_options for task {ref!r}: {exc}; it takes: "
                                       f"{', '.join(takes) or 'no options'}") from None
        try:
            task = target(**kwargs)
        except TypeError as exc:
            if "unexpected keyword argument" not in str(exc):
                raise
            # a task that passes **kwargs on (to Task.__init__) rejects the name only there
            raise TaskOptionsError(f"task_options for task {ref!r}: {exc}") from None
    else:
        task = target
    if not isinstance(task, Task):
        raise TaskNotFound(f"{ref!r} did not produce an autoopt.task.Task (got {type(task).__name__})")
    return task


def _check_importable_task(ref: str, target: Any) -> None:
    """An imported object may be called only if it is a Task subclass or a Task factory."""
    if isinstance(target, type):
        if issubclass(target, Task):
            return
        raise TaskNotFound(f"task {ref!r} is the class {target.__qualname__}, which is not a subclass of autoopt.Task")
    if inspect.isfunction(target):
        try:
            returns = typing.get_type_hints(target).get("return")
        except Exception:  # noqa: BLE001 - an annotation that does not resolve says nothing
            returns = None
        if isinstance(returns, type) and issubclass(returns, Task):
            return
    raise TaskNotFound(
        f"task {ref!r} is a {type(target).__name__}, not an autoopt.Task subclass or a function annotated "
        "'-> Task'; autoopt calls only those with task_options"
    )


__all__ = [
    "FunctionTask",
    "REFERENCE_TASKS",
    "Task",
    "TaskNotFound",
    "load_task",
]
