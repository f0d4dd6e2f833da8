"""Whole-batch data loading for the reference tasks.

``DataLoader`` normally fetches samples one by one and stacks them, which costs more than the
training step itself for the tiny models here (and for million-row data sets at large ``size``).
Datasets below answer ``__getitems__`` with a ready batch in one indexing operation; the loaders
keep :meth:`autoopt.task.Task.loaders` semantics (same seeded shuffle order, same batch sizes).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset

from autoopt.task import Task


class TensorBatches(TensorDataset):
    """A ``TensorDataset`` that returns a whole batch ``(t[indices] for t in tensors)`` at once."""

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def keep_batch(batch: Any) -> Any:
    """Collate function for datasets whose ``__getitems__`` already returns the batch."""
    return batch


class BatchedTask(Task):
    """A Task whose datasets implement ``__getitems__`` (e.g. :class:`TensorBatches`)."""

    def loaders(self, batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
        train, val = self.datasets()
        bs = int(batch_size or self.batch_size)
        gen = torch.Generator().manual_seed(self.seed)
        return (
            DataLoader(
                train, batch_size=bs, shuffle=True, generator=gen, drop_last=len(train) > bs, collate_fn=keep_batch
            ),
            DataLoader(val, batch_size=max(bs, 256), shuffle=False, collate_fn=keep_batch),
        )

