"""Near-empty tasks for measuring what a framework costs per trial.

autoopt always runs a :class:`~autoopt.task.Task`, so the "trivial objective" is the smallest
task there is: a 4 -> 1 linear model, one batch of 16 rows, one epoch. ``SleepTask`` adds a fixed
sleep to the evaluation so a trial lasts about one second without using a CPU core (the machine
is shared). Both are importable by Ray workers as ``bench.trivial:TrivialTask`` /
``bench.trivial:SleepTask``.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from autoopt.task import Task

N_ROWS = 16


class TrivialTask(Task):
    """Linear regression on 16 fixed rows, one batch, one epoch: training costs about a millisecond."""

    name = "trivial"
    domain = "tabular"
    metric = "val_mse"
    direction = "minimize"
    default_epochs = 1
    default_batch_size = N_ROWS
    chance_level = 1.0

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))

    def make_datasets(self) -> tuple[Dataset, Dataset]:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(N_ROWS, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(N_ROWS, generator=g)
        data = TensorDataset(x, y)
        return data, data

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> float:
        total, n = 0.0, 0
        for x, y in loader:
            total += float(((model(x.to(device)) - y.to(device)) ** 2).sum())
            n += len(y)
        return total / max(n, 1)


class SleepTask(TrivialTask):
    """The trivial task, plus ``sleep_s`` of sleep per evaluation: a trial of known length."""

    name = "sleep"

    def __init__(self, sleep_s: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.sleep_s = float(sleep_s)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> float:
        time.sleep(self.sleep_s)
        return super().evaluate(model, loader, device)
