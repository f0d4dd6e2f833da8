"""NLP families: a tiny transformer encoder, an LSTM/GRU and a bag of embeddings on generated text.

Documents are Zipf-distributed background words (a seeded shuffle of frequency ranks, so ids
carry no order) with a few topic words of their class drawn from the rare end of the
vocabulary. With ``negation`` a document also holds topic words of another class, each right
after a NOT token: only a model that reads order can tell them from the real topic, so
order-aware models have headroom over a bag of words. A few labels are flipped. Token 0 pads,
token 1 is NOT.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from autoopt.tasks.zoo.base import ZooTask, split, zipf_probabilities

PAD, NOT = 0, 1
TOPIC_WORDS_PER_CLASS = 20
LABEL_NOISE = 0.03


def zipf_documents(rng: np.random.Generator, n: int, vocab: int, seq_len: int, n_classes: int,
                   exponent: float, negation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (n, seq_len) zero-padded, lengths, labels) of generated documents."""
    words = vocab - 2
    word_of_rank = 2 + rng.permutation(words)
    rare = rng.permutation(np.arange(words // 20, words))[: TOPIC_WORDS_PER_CLASS * n_classes]
    topic = word_of_rank[rare].reshape(n_classes, -1)
    lengths = rng.integers(max(4, seq_len // 2), seq_len + 1, n)
    tokens = word_of_rank[rng.choice(words, size=(n, seq_len), p=zipf_probabilities(words, exponent))]
    tokens[np.arange(seq_len)[None, :] >= lengths[:, None]] = PAD
    labels = rng.integers(0, n_classes, n)
    rows = np.arange(n)
    # negated distractors first: NOT at q-1, another class's topic word at q
    negated = rng.random(n) < negation
    q = rng.integers(1, lengths)
    other = (labels + rng.integers(1, n_classes, n)) % n_classes
    tokens[rows[negated], q[negated] - 1] = NOT
    tokens[rows[negated], q[negated]] = topic[other[negated], rng.integers(0, TOPIC_WORDS_PER_CLASS, negated.sum())]
    # then 1-3 topic words of the class, never right after a NOT
    for k in range(3):
        put = rows if k == 0 else rows[rng.random(n) < 0.35]
        pos = rng.integers(0, lengths[put])
        ok = (pos == 0) | (tokens[put, np.maximum(pos - 1, 0)] != NOT)
        ok &= tokens[put, pos] != NOT
        put, pos = put[ok], pos[ok]
        tokens[put, pos] = topic[labels[put], rng.integers(0, TOPIC_WORDS_PER_CLASS, len(put))]
    flip = rng.random(n) < LABEL_NOISE
    labels[flip] = rng.integers(0, n_classes, flip.sum())
    return tokens, lengths, labels


class TextTask(ZooTask):
    """Document classification on :func:`zipf_documents`."""

    domain = "nlp"
    #: The model also takes each document's length (recurrent nets read the state at its last token).
    uses_lengths = False

    def make_datasets(self) -> tuple[Any, Any]:
        k, rng = self.knobs, self.rng()
        n_val = int(k.get("n_val", 500))
        tokens, lengths, labels = zipf_documents(rng, k["n_train"] + n_val, k["vocab"], k["seq_len"], k["classes"],
                                                 k["zipf"], k["negation"])
        if self.uses_lengths:
            return split(rng, n_val, tokens, lengths, labels)
        return split(rng, n_val, tokens, labels)


class _Encoder(nn.Module):
    def __init__(self, vocab: int, seq_len: int, dim: int, depth: int, heads: int, n_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == PAD
        h = self.encoder(self.embed(tokens) + self.pos[:, : tokens.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.head(self.norm((h * keep).sum(1) / keep.sum(1).clamp_min(1.0)))


class TinyTransformer(TextTask):
    """Token + position embeddings, ``depth`` pre-norm encoder layers, masked mean pool."""

    family = "nlp_transformer"
    sgd_lr_shift = 0.5
    variants = (
        dict(vocab=2000, seq_len=16, classes=4, zipf=1.1, negation=0.5, n_train=4000, dim=32, depth=1, heads=2, batch_size=32, steps=150),
        dict(vocab=4000, seq_len=16, classes=6, zipf=1.0, negation=0.6, n_train=12000, dim=32, depth=2, heads=4, batch_size=32, steps=100),
        dict(vocab=1000, seq_len=12, classes=3, zipf=1.2, negation=0.4, n_train=1500, dim=24, depth=1, heads=2, batch_size=16, steps=200),
        dict(vocab=4000, seq_len=16, classes=5, zipf=1.05, negation=0.7, n_train=6000, dim=48, depth=1, heads=4, batch_size=32, steps=150),
        dict(vocab=10000, seq_len=12, classes=8, zipf=1.1, negation=0.5, n_train=30000, dim=24, depth=1, heads=2, batch_size=128, steps=80),
        dict(vocab=3000, seq_len=24, classes=4, zipf=1.15, negation=0.5, n_train=3000, dim=32, depth=2, heads=2, batch_size=8, steps=200),
    )

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        k = self.knobs
        return _Encoder(k["vocab"], k["seq_len"], k["dim"], k["depth"], k["heads"], k["classes"])


class _Recurrent(nn.Module):
    def __init__(self, vocab: int, dim: int, hidden: int, cell: str, n_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        last = out[torch.arange(len(tokens)), lengths - 1]
        return self.head(last)


class RecurrentClassifier(TextTask):
    """Embedding, one LSTM or GRU layer, the hidden state at the document's last token."""

    family = "nlp_rnn"
    sgd_lr_shift = 1.0
    uses_lengths = True
    variants = (
        dict(cell="gru", vocab=2000, seq_len=16, classes=4, zipf=1.1, negation=0.5, n_train=4000, dim=32, hidden=32, batch_size=32, steps=150),
        dict(cell="lstm", vocab=5000, seq_len=16, classes=5, zipf=1.0, negation=0.5, n_train=8000, dim=32, hidden=48, batch_size=64, steps=100),
        dict(cell="gru", vocab=1000, seq_len=12, classes=3, zipf=1.2, negation=0.6, n_train=1200, dim=16, hidden=32, batch_size=8, steps=250),
        dict(cell="lstm", vocab=3000, seq_len=12, classes=6, zipf=1.05, negation=0.4, n_train=5000, dim=24, hidden=32, batch_size=16, steps=200),
        dict(cell="gru", vocab=10000, seq_len=12, classes=5, zipf=1.1, negation=0.5, n_train=20000, dim=32, hidden=32, batch_size=128, steps=80),
        dict(cell="lstm", vocab=2000, seq_len=16, classes=4, zipf=1.15, negation=0.7, n_train=3000, dim=16, hidden=24, batch_size=128, steps=100),
    )

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        k = self.knobs
        return _Recurrent(k["vocab"], k["dim"], k["hidden"], k["cell"], k["classes"])


class _Bag(nn.Module):
    def __init__(self, vocab: int, dim: int, hidden: int, n_classes: int, sparse: bool) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=PAD, sparse=sparse)
        self.head = (nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)) if hidden
                     else nn.Linear(dim, n_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


class BagOfEmbeddings(TextTask):
    """fastText-style mean of word embeddings (sparse-capable), then a linear or 1-hidden-layer head."""

    family = "nlp_bag"
    supports_sparse_gradients = True
    lr_shift = 0.5
    sgd_lr_shift = 1.0
    variants = (
        dict(vocab=5000, seq_len=24, classes=5, zipf=1.07, negation=0.0, n_train=6000, dim=32, hidden=0, batch_size=32, steps=200),
        dict(vocab=50000, seq_len=32, classes=8, zipf=1.0, negation=0.2, n_train=40000, dim=16, hidden=0, batch_size=512, steps=80),
        dict(vocab=1000, seq_len=16, classes=4, zipf=1.2, negation=0.3, n_train=800, dim=16, hidden=32, batch_size=8, steps=300),
        dict(vocab=20000, seq_len=24, classes=6, zipf=1.1, negation=0.0, n_train=20000, dim=24, hidden=32, batch_size=128, steps=200),
        dict(vocab=10000, seq_len=48, classes=5, zipf=0.95, negation=0.4, n_train=10000, dim=32, hidden=0, batch_size=256, steps=150),
        dict(vocab=3000, seq_len=16, classes=3, zipf=1.3, negation=0.0, n_train=2000, dim=8, hidden=16, batch_size=16, steps=300),
    )

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        k = self.knobs
        return _Bag(k["vocab"], k["dim"], k["hidden"], k["classes"], sparse_gradients)
