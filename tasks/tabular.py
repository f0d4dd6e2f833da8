"""Tabular reference task: an MLP regressor on scikit-learn's bundled diabetes data.

442 patients, 10 features, a disease-progression target; features and target are standardised
with training-split statistics, so predicting the training mean scores a validation MSE near 1.
The data set is small enough to overfit, which makes learning rate, weight decay and early
stopping matter. ``size < 1`` trains on a seeded subset; ``size > 1`` adds seeded jittered
copies of the training rows (Gaussian feature noise) and widens the network.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autoopt.tasks import bundled
from autoopt.tasks.batching import BatchedTask, TensorBatches

VAL_FRACTION = 0.2
JITTER = 0.1  # feature noise (in standard deviations) of the copies added when size > 1


class DiabetesMLP(BatchedTask):
    """10 -> h -> h -> 1 ReLU MLP trained with mean squared error on standardised targets."""

    name = "diabetes_mlp"
    domain = "tabular"
    metric = "val_mse"
    direction = "minimize"
    default_epochs = 10
    default_batch_size = 16
    supports_sparse_gradients = False
    #: Validation MSE of predicting the training mean. Targets are standardised on the training
    #: split, so its expectation is 1.0; once the data is made the instance holds the exact value
    #: for its own seeded split (0.9 to 1.35 over seeds 0-5).
    chance_level = 1.0

    @property
    def hidden(self) -> int:
        return 64 if self.size <= 1 else 32 * max(2, round(2 * math.sqrt(self.size)))

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        h = self.hidden
        return nn.Sequential(
            nn.Linear(10, h),
            nn.ReLU(),
            nn.Linear(h, h),
            nn.ReLU(),
            nn.Linear(h, 1),
            nn.Flatten(0),
        )

    def make_datasets(self) -> tuple[Dataset, Dataset]:
        data = bundled.load("load_diabetes", ("data", "target"), scaled=False)
        x, y = data["data"], data["target"]
        rng = np.random.default_rng([self.seed, 2])
        order = rng.permutation(len(x))
        n_val = round(len(x) * VAL_FRACTION)
        val_idx, pool_idx = order[:n_val], order[n_val:]
        x_mean, x_std = x[pool_idx].mean(0), x[pool_idx].std(0)
        y_mean, y_std = y[pool_idx].mean(), y[pool_idx].std()
        xs, ys = (x - x_mean) / x_std, (y - y_mean) / y_std

        n_train = max(self.batch_size, round(len(pool_idx) * self.size))
        if n_train <= len(pool_idx):
            train_x, train_y = xs[pool_idx[:n_train]], ys[pool_idx[:n_train]]
        else:
            extra = rng.choice(pool_idx, size=n_train - len(pool_idx), replace=True)
            jittered = xs[extra] + rng.normal(0.0, JITTER, size=(len(extra), xs.shape[1]))
            train_x = np.concatenate([xs[pool_idx], jittered])
            train_y = np.concatenate([ys[pool_idx], ys[extra]])

        def as_dataset(a: np.ndarray, b: np.ndarray) -> TensorBatches:
            return TensorBatches(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))

        self.chance_level = float(np.mean((ys[val_idx] - ys[pool_idx].mean()) ** 2))
        return as_dataset(train_x, train_y), as_dataset(xs[val_idx], ys[val_idx])

    def describe(self) -> dict[str, Any]:
        self.datasets()  # so the reported chance_level is the one of this split
        return super().describe()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> float:
        """Mean squared error over the validation set (standardised target units)."""
        model.eval()
        squared_error, count = 0.0, 0
        for batch in loader:
            output, target = self.forward(model, batch, device)
            squared_error += float(((output - target) ** 2).sum().item())
            count += target.numel()
        model.train()
        return squared_error / max(count, 1)
