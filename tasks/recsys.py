"""Recommender reference task: matrix factorisation on generated implicit feedback.

Ground truth is a low-rank user x item affinity plus a Zipf-like item popularity. Each user's
positives are a seeded draw (Gumbel top-k) from that affinity; a few per user are held out for
validation, scored against items the user never touched. Training pairs are the remaining
positives plus uniformly sampled negatives, fitted with binary cross-entropy. A batch touches a
small fraction of user and item rows, so embedding gradients are sparse. ``size`` scales users,
items and interactions together (1,000 users x 1,000 items at size 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autoopt.tasks.batching import BatchedTask, TensorBatches

USERS_PER_SIZE = 1000
ITEMS_PER_SIZE = 1000
TRUE_RANK = 4
AFFINITY_SCALE = 3.0  # weight of the personal (low-rank) part of the true affinity
POPULARITY_SCALE = 0.5  # weight of log-popularity in the true affinity
POSITIVES_PER_USER = 30
HELD_OUT_PER_USER = 2
TRAIN_NEGATIVES_PER_POSITIVE = 1
VAL_NEGATIVES_PER_USER = 4
AFFINITY_CELLS = 2**24  # user x item affinities materialised at once while drawing positives


class MatrixFactorization(nn.Module):
    """score(u, i) = <p_u, q_i> + b_i; every parameter is an embedding, so all can be sparse."""

    def __init__(self, n_users: int, n_items: int, dim: int, sparse: bool = False):
        super().__init__()
        self.user = nn.Embedding(n_users, dim, sparse=sparse)
        self.item = nn.Embedding(n_items, dim, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users) * self.item(items)).sum(-1) + self.item_bias(items).squeeze(-1)


class ImplicitMF(BatchedTask):
    """Rank held-out positives above unseen items; metric is validation ROC AUC."""

    name = "implicit_mf"
    domain = "recsys"
    metric = "val_auc"
    direction = "maximize"
    default_epochs = 8
    default_batch_size = 128
    supports_sparse_gradients = True
    chance_level = 0.5

    @property
    def n_users(self) -> int:
        return max(100, round(USERS_PER_SIZE * self.size))

    @property
    def n_items(self) -> int:
        return max(100, round(ITEMS_PER_SIZE * self.size))

    @property
    def embedding_dim(self) -> int:
        return 32 if self.size <= 1 else 16 * max(2, round(2 * math.sqrt(self.size)))

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        return MatrixFactorization(self.n_users, self.n_items, self.embedding_dim, sparse=sparse_gradients)

    def make_datasets(self) -> tuple[Dataset, Dataset]:
        rng = np.random.default_rng([self.seed, 4])
        n_users, n_items = self.n_users, self.n_items
        user_factors = rng.normal(0.0, 1.0 / math.sqrt(TRUE_RANK), (n_users, TRUE_RANK))
        item_factors = rng.normal(0.0, 1.0, (n_items, TRUE_RANK))
        popularity = -POPULARITY_SCALE * np.log1p(rng.permutation(n_items))

        # Gumbel top-k (affinity - log Exp(1) noise) = sampling POSITIVES_PER_USER items without
        # replacement from softmax(affinity); float32 keeps size=20 data generation in seconds.
        positives = np.empty((n_users, POSITIVES_PER_USER), dtype=np.int64)
        chunk = max(1, AFFINITY_CELLS // n_items)
        for lo in range(0, n_users, chunk):
            hi = min(lo + chunk, n_users)
            affinity = (AFFINITY_SCALE * user_factors[lo:hi] @ item_factors.T + popularity).astype(np.float32)
            noise = rng.standard_exponential(size=affinity.shape, dtype=np.float32)
            keys = affinity - np.log(np.maximum(noise, np.finfo(np.float32).tiny, out=noise), out=noise)
            positives[lo:hi] = np.argpartition(-keys, POSITIVES_PER_USER, axis=1)[:, :POSITIVES_PER_USER]
        positives = rng.permuted(positives, axis=1)
        held_out, train_pos = positives[:, :HELD_OUT_PER_USER], positives[:, HELD_OUT_PER_USER:]
        seen = np.sort((np.arange(n_users)[:, None] * n_items + positives).ravel())

        def unseen_items(users: np.ndarray) -> np.ndarray:
            """Uniform items per user, redrawn (up to a few times) where the user has seen them."""
            items = rng.integers(0, n_items, len(users))
            for _ in range(10):
                clash = np.isin(users * n_items + items, seen)
                if not clash.any():
                    break
                items[clash] = rng.integers(0, n_items, int(clash.sum()))
            return items

        users = np.arange(n_users)
        pos_users = np.repeat(users, train_pos.shape[1])
        neg_users = np.repeat(pos_users, TRAIN_NEGATIVES_PER_POSITIVE)
        train = self._pairs(
            np.concatenate([pos_users, neg_users]),
            np.concatenate([train_pos.ravel(), unseen_items(neg_users)]),
            np.concatenate([np.ones(len(pos_users)), np.zeros(len(neg_users))]),
        )
        val_neg_users = np.repeat(users, VAL_NEGATIVES_PER_USER)
        val = self._pairs(
            np.concatenate([np.repeat(users, HELD_OUT_PER_USER), val_neg_users]),
            np.concatenate([held_out.ravel(), unseen_items(val_neg_users)]),
            np.concatenate([np.ones(n_users * HELD_OUT_PER_USER), np.zeros(len(val_neg_users))]),
        )
        return train, val

    @staticmethod
    def _pairs(users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> TensorBatches:
        return TensorBatches(
            torch.as_tensor(users, dtype=torch.long),
            torch.as_tensor(items, dtype=torch.long),
            torch.as_tensor(labels, dtype=torch.float32),
        )

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> float:
        """ROC AUC of held-out positives against unseen items (0.5 = random ranking)."""
        model.eval()
        scores, labels = [], []
        for batch in loader:
            output, target = self.forward(model, batch, device)
            scores.append(output.float().cpu())
            labels.append(target.cpu())
        model.train()
        y_score = torch.cat(scores).numpy()
        if not np.isfinite(y_score).all():
            return float("nan")  # diverged: the train loop reports non-finite metrics as failures
        return float(roc_auc_score(torch.cat(labels).numpy(), y_score))
