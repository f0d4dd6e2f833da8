"""Computer vision reference task: a small CNN on scikit-learn's bundled 8x8 handwritten digits.

The 1,797 digits ship with scikit-learn, so the task needs no download. ``size < 1`` trains on
a seeded subset; ``size > 1`` adds seeded augmented copies (1-pixel shifts plus pixel noise) and
widens the network, so the same task can load a GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from autoopt.tasks import bundled
from autoopt.tasks.batching import BatchedTask, TensorBatches

N_CLASSES = 10
N_VAL = 360  # fixed held-out digits: the metric stays comparable across sizes


def _shift_images(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by up to one pixel in each direction, zero-filled at the border."""
    out = np.zeros_like(images)
    shifts = rng.integers(-1, 2, size=(len(images), 2))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            idx = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
            if idx.size == 0:
                continue
            src = images[idx]
            ys, yd = (slice(0, 8 - dy), slice(dy, 8)) if dy >= 0 else (slice(-dy, 8), slice(0, 8 + dy))
            xs, xd = (slice(0, 8 - dx), slice(dx, 8)) if dx >= 0 else (slice(-dx, 8), slice(0, 8 + dx))
            out[idx, yd, xd] = src[:, ys, xs]
    return out


class DigitsCNN(BatchedTask):
    """Two conv layers + two dense layers on 8x8 digits; no normalisation layers."""

    name = "digits_cnn"
    domain = "cv"
    metric = "val_accuracy"
    direction = "maximize"
    default_epochs = 8
    default_batch_size = 32
    supports_sparse_gradients = False
    chance_level = 1.0 / N_CLASSES

    @property
    def width(self) -> int:
        """Channels of the first conv layer: 16 up to size 1, growing with sqrt(size) beyond."""
        return 16 if self.size <= 1 else 8 * max(2, round(2 * math.sqrt(self.size)))

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        c = self.width
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 16, 4 * c),
            nn.ReLU(),
            nn.Linear(4 * c, N_CLASSES),
        )

    def make_datasets(self) -> tuple[Dataset, Dataset]:
        digits = bundled.load("load_digits", ("images", "target"))
        images = (digits["images"] / 16.0).astype(np.float32)
        labels = digits["target"].astype(np.int64)
        rng = np.random.default_rng([self.seed, 1])
        order = rng.permutation(len(images))
        val_idx, pool_idx = order[:N_VAL], order[N_VAL:]
        n_train = max(self.batch_size, round(len(pool_idx) * self.size))
        if n_train <= len(pool_idx):
            train_x, train_y = images[pool_idx[:n_train]], labels[pool_idx[:n_train]]
        else:
            extra = rng.choice(pool_idx, size=n_train - len(pool_idx), replace=True)
            augmented = _shift_images(images[extra], rng)
            augmented = np.clip(augmented + rng.normal(0.0, 0.05, augmented.shape), 0.0, 1.0)
            train_x = np.concatenate([images[pool_idx], augmented.astype(np.float32)])
            train_y = np.concatenate([labels[pool_idx], labels[extra]])

        def as_dataset(x: np.ndarray, y: np.ndarray) -> TensorBatches:
            return TensorBatches(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1), torch.from_numpy(y))

        return as_dataset(train_x, train_y), as_dataset(images[val_idx], labels[val_idx])
