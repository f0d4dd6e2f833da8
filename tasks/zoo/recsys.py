"""Recommender families: matrix factorisation of generated ratings, and hashed click-through models.

Both are embedding-dominated: a batch touches few rows of the tables, so most gradient entries
are exactly zero (measured), and the models can emit torch sparse gradients.

* Ratings: a low-rank user x item affinity plus biases and noise; users and items are drawn
  with Zipf popularity, so a long tail of rows is rarely seen. Validation MSE on held-out
  ratings (standardised).
* CTR: ``fields`` categorical fields with Zipf-distributed values; clicks are Bernoulli of a
  logit with a weight per value and low-rank pairwise interactions. Features are hashed into
  ``buckets`` rows of one table (collisions included); the model is a factorisation machine or a
  small MLP over the concatenated embeddings. Validation ROC AUC.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from autoopt.tasks.zoo.base import AUCTask, MSETask, split, zipf_probabilities


class _MF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, sparse: bool) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim, sparse=sparse)
        self.item = nn.Embedding(n_items, dim, sparse=sparse)
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        for table, std in ((self.user, 0.1), (self.item, 0.1), (self.user_bias, 0.0), (self.item_bias, 0.0)):
            nn.init.normal_(table.weight, std=std) if std else nn.init.zeros_(table.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user(users) * self.item(items)).sum(-1, keepdim=True)
        return dot + self.user_bias(users) + self.item_bias(items)


class RatingsMF(MSETask):
    """Biased matrix factorisation of explicit ratings."""

    family = "recsys_mf"
    domain = "recsys"
    supports_sparse_gradients = True
    lr_shift = 0.5
    sgd_lr_shift = 0.5
    variants = (
        dict(users=1000, items=500, rank=4, ratings=20000, noise=0.5, dim=16, batch_size=128, steps=200),
        dict(users=20000, items=5000, rank=8, ratings=100000, noise=0.4, dim=32, batch_size=1024, steps=100),
        dict(users=300, items=200, rank=3, ratings=5000, noise=0.6, dim=8, batch_size=32, steps=250),
        dict(users=5000, items=2000, rank=6, ratings=60000, noise=0.5, dim=24, batch_size=512, steps=150),
        dict(users=2000, items=1000, rank=4, ratings=10000, noise=0.3, dim=16, batch_size=16, steps=300),
        dict(users=10000, items=3000, rank=5, ratings=80000, noise=0.5, dim=8, batch_size=2048, steps=100),
    )

    def make_datasets(self) -> tuple[Any, Any]:
        k, rng = self.knobs, self.rng()
        n_users, n_items, r = k["users"], k["items"], k["rank"]
        u_f = rng.normal(0, 1 / np.sqrt(r), (n_users, r))
        i_f = rng.normal(0, 1, (n_items, r))
        u_b, i_b = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items)
        n = k["ratings"]
        users = rng.permutation(n_users)[rng.choice(n_users, n, p=zipf_probabilities(n_users, 0.8))]
        items = rng.permutation(n_items)[rng.choice(n_items, n, p=zipf_probabilities(n_items, 1.0))]
        rating = (u_f[users] * i_f[items]).sum(1) + u_b[users] + i_b[items] + k["noise"] * rng.standard_normal(n)
        rating = ((rating - rating.mean()) / rating.std())[:, None]
        return split(rng, min(2000, n // 5), users, items, rating)

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        return _MF(self.knobs["users"], self.knobs["items"], self.knobs["dim"], sparse_gradients)


class _CTR(nn.Module):
    """Factorisation machine (``hidden == 0``) or MLP over concatenated field embeddings."""

    def __init__(self, buckets: int, fields: int, dim: int, hidden: int, sparse: bool) -> None:
        super().__init__()
        self.linear = nn.Embedding(buckets, 1, sparse=sparse)
        self.factors = nn.Embedding(buckets, dim, sparse=sparse)
        nn.init.zeros_(self.linear.weight)
        nn.init.normal_(self.factors.weight, std=0.05)
        self.bias = nn.Parameter(torch.zeros(1))
        self.mlp = (nn.Sequential(nn.Linear(fields * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
                    if hidden else None)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        v = self.factors(features)  # (batch, fields, dim)
        first = self.linear(features).sum((1, 2)) + self.bias
        if self.mlp is not None:
            return first + self.mlp(v.flatten(1)).squeeze(-1)
        return first + 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(-1)


class HashedCTR(AUCTask):
    """Click prediction from hashed categorical features."""

    family = "recsys_ctr"
    domain = "recsys"
    supports_sparse_gradients = True
    lr_shift = 0.5
    sgd_lr_shift = 0.5
    variants = (
        dict(fields=8, cardinality=2000, buckets=2**14, dim=8, hidden=0, n_train=20000, batch_size=256, steps=150),
        dict(fields=16, cardinality=20000, buckets=2**17, dim=7, hidden=0, n_train=100000, batch_size=1024, steps=60),
        dict(fields=6, cardinality=500, buckets=2**12, dim=4, hidden=16, n_train=5000, batch_size=32, steps=250),
        dict(fields=12, cardinality=5000, buckets=2**15, dim=8, hidden=32, n_train=50000, batch_size=1024, steps=100),
        dict(fields=10, cardinality=1000, buckets=2**13, dim=4, hidden=0, n_train=8000, batch_size=16, steps=300),
        dict(fields=10, cardinality=10000, buckets=2**16, dim=8, hidden=0, n_train=60000, batch_size=512, steps=120),
    )

    def make_datasets(self) -> tuple[Any, Any]:
        k, rng = self.knobs, self.rng()
        fields, card, n = k["fields"], k["cardinality"], k["n_train"] + 2000
        p = zipf_probabilities(card, 1.1)
        values = np.stack([rng.permutation(card)[rng.choice(card, n, p=p)] for _ in range(fields)], 1)
        weight = rng.normal(0, 0.6, (fields, card))
        latent = rng.normal(0, 0.5, (fields, card, 3))
        cols = np.arange(fields)
        z = latent[cols, values]  # (n, fields, 3)
        logit = weight[cols, values].sum(1) + 0.5 * (z.sum(1) ** 2 - (z**2).sum(1)).sum(-1) / np.sqrt(fields)
        logit = (logit - logit.mean()) / logit.std() * 1.5 - 1.0
        clicks = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        buckets = (values.astype(np.int64) * 2654435761 + cols * 40503 + 17) % k["buckets"]
        return split(rng, 2000, buckets, clicks)

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        k = self.knobs
        return _CTR(k["buckets"], k["fields"], k["dim"], k["hidden"], sparse_gradients)
