"""What every zoo task shares: knobs per instance, a fixed step budget, and the data helpers.

A zoo family is a :class:`ZooTask` subclass with a tuple of knob dicts (``variants``), one per
instance. An instance trains for a fixed number of optimizer steps whatever its data size, so
one run costs about the same on every instance (a fraction of a second on one core) and the
sweep's time is predictable. The steps are split into ``EVALS`` "epochs" of equal length; the
validation metric is taken after each, and the best one is the run's value.

Data and the data seed are deterministic in (family, knobs, seed); the run's seed (set by
:func:`autoopt.train.seed_everything` before the loaders are built) picks the initial weights
and the batch order.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from autoopt.task import Task
from autoopt.tasks.batching import TensorBatches

#: Validation evaluations per run (the train loop's epochs).
EVALS = 4
#: Largest validation batch (validation sets are at most a few thousand examples).
VAL_BATCH = 1024


class StepBatches:
    """``n_batches`` batches of whole-tensor indexing per pass; a reshuffle each time the data runs out.

    Quacks like a ``DataLoader`` for the train loop (``len`` and iteration). With no generator it
    walks the data once in order (validation).
    """

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, n_batches: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.tensors = tuple(tensors)
        self.n = len(self.tensors[0])
        self.batch_size = max(1, min(int(batch_size), self.n))
        self.generator = generator
        self.n_batches = n_batches if n_batches is not None else math.ceil(self.n / self.batch_size)
        self._order: torch.Tensor | None = None
        self._pos = 0

    def __len__(self) -> int:
        return self.n_batches

    def _next_indices(self) -> torch.Tensor:
        if self._order is None or self._pos + self.batch_size > self.n:
            self._order = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        index = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return index

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.generator is None:
            for lo in range(0, self.n, self.batch_size):
                yield tuple(t[lo:lo + self.batch_size] for t in self.tensors)
            return
        for _ in range(self.n_batches):
            index = self._next_indices()
            yield tuple(t[index] for t in self.tensors)


def instance_seed(instance_id: str) -> int:
    """A stable data seed from the instance id (independent of family order and Python's hash)."""
    return zlib.crc32(instance_id.encode()) % 2**31


class ZooTask(Task):
    """One instance of a zoo family: ``variants[index]`` knobs, a fixed step budget, measured traits."""

    family: str = "zoo"
    #: One knob dict per instance; each holds at least ``batch_size`` and ``steps``.
    variants: tuple[dict[str, Any], ...] = ()
    #: Where this family's lr optimum sits relative to the sweep's base grid, in decades.
    lr_shift: float = 0.0
    #: Extra decades for plain / momentum / Nesterov SGD: with mean-reduced losses, embedding rows
    #: (and recurrent nets) get small gradients, so SGD's best lr sits far above its usual range.
    sgd_lr_shift: float = 0.0

    def __init__(self, index: int = 0, seed: int | None = None, **overrides: Any) -> None:
        if not 0 <= index < len(self.variants):
            raise ValueError(f"{self.family}: instance index {index} out of range 0..{len(self.variants) - 1}")
        self.index = int(index)
        self.instance_id = f"{self.family}-{self.index:02d}"
        self.knobs: dict[str, Any] = {**self.variants[self.index], **overrides}
        unknown = set(overrides) - set(self.variants[self.index])
        if unknown:
            raise ValueError(f"{self.family}: unknown knob(s) {sorted(unknown)}; knobs: {sorted(self.variants[self.index])}")
        self.steps = int(self.knobs["steps"])
        super().__init__(size=1.0, seed=instance_seed(self.instance_id) if seed is None else seed,
                         batch_size=int(self.knobs["batch_size"]), epochs=EVALS)
        self.name = self.instance_id

    def rng(self, stream: int = 0) -> np.random.Generator:
        """The instance's data generator (``stream`` separates independent draws)."""
        return np.random.default_rng([self.seed, stream])

    def loaders(self, batch_size: int | None = None) -> tuple[StepBatches, StepBatches]:
        train, val = self.datasets()
        bs = int(batch_size or self.batch_size)
        # The run's seed (torch's global RNG, seeded by the train loop) picks the batch order.
        order_seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
        gen = torch.Generator().manual_seed(order_seed ^ self.seed)
        per_eval = max(1, math.ceil(self.steps / self.epochs))
        return (StepBatches(train.tensors, bs, per_eval, gen), StepBatches(val.tensors, max(bs, VAL_BATCH)))

    def describe_instance(self) -> dict[str, Any]:
        """The instance's row of the zoo's instances table: knobs and measured traits."""
        traits = self.traits()
        return {
            "instance": self.instance_id,
            "family": self.family,
            "domain": self.domain,
            "knobs": dict(self.knobs),
            "batch_size": traits.batch_size,
            "n_params": self.n_params(),
            "dataset_size": traits.dataset_size,
            "grad_sparsity": round(traits.grad_sparsity, 6),
            "sparse_gradients": traits.sparse_gradients,
            "metric": self.metric,
            "direction": self.direction,
            "steps": self.steps,
            "grad_rms": traits.grad_rms,
        }


def tensors(*arrays: np.ndarray) -> TensorBatches:
    """A dataset of numpy arrays (float64 -> float32, ints -> int64)."""
    out = []
    for a in arrays:
        a = np.ascontiguousarray(a)
        out.append(torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int64)))
    return TensorBatches(*out)


def split(rng: np.random.Generator, n_val: int, *arrays: np.ndarray) -> tuple[TensorBatches, TensorBatches]:
    """Seeded shuffle, then the first ``n_val`` rows for validation and the rest for training."""
    order = rng.permutation(len(arrays[0]))
    val, train = order[:n_val], order[n_val:]
    return tensors(*(a[train] for a in arrays)), tensors(*(a[val] for a in arrays))


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale columns by the training split's mean and std."""
    mean, std = train.mean(0), train.std(0) + 1e-8
    return [(a - mean) / std for a in (train, *others)]


def zipf_probabilities(vocab: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1) ** exponent
    return p / p.sum()


class MSETask(ZooTask):
    """Regression-style zoo tasks: MSE loss, validation MSE (minimised)."""

    metric = "val_mse"
    direction = "minimize"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> float:
        model.eval()
        total = count = 0.0
        for batch in loader:
            output, target = self.forward(model, batch, device)
            total += float(nn.functional.mse_loss(output, target, reduction="sum"))
            count += target.numel()
        model.train()
        return total / max(count, 1)


class AUCTask(ZooTask):
    """Binary click/no-click tasks: logistic loss, validation ROC AUC."""

    metric = "val_auc"
    direction = "maximize"
    chance_level = 0.5

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device) -> float:
        from sklearn.metrics import roc_auc_score

        model.eval()
        scores, labels = [], []
        for batch in loader:
            output, target = self.forward(model, batch, device)
            scores.append(output.float().cpu())
            labels.append(target.cpu())
        model.train()
        s, y = torch.cat(scores).numpy(), torch.cat(labels).numpy()
        if not np.isfinite(s).all():
            return float("nan")
        return float(roc_auc_score(y, s))

