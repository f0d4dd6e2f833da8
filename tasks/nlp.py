"""NLP reference task: bag-of-words text classification over a generated Zipf corpus.

Documents mix Zipf-distributed background words with a few topic words of their class (and
sometimes a few of another class as a distractor). Topic words are drawn from the rare end of the
vocabulary, so most of the signal sits in embedding rows that few batches touch: the embedding
gradient is sparse by nature, the setting where Adagrad / SparseAdam style optimizers are said
to shine. ``size`` scales documents and vocabulary together (5,000 words and 6,000 training
documents at size 1). Generation is deterministic in (seed, size).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from autoopt.tasks.batching import BatchedTask

N_CLASSES = 5
VOCAB_PER_SIZE = 5000
TRAIN_DOCS_PER_SIZE = 6000
VAL_DOCS_PER_SIZE = 1000
ZIPF_EXPONENT = 1.07
TOPIC_WORDS_PER_CLASS = 50
MEAN_DOC_LENGTH = 24


class TokenDocuments(Dataset):
    """Variable-length documents stored as one flat token tensor plus start offsets."""

    def __init__(self, tokens: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
        self.tokens, self.starts, self.lengths, self.labels = tokens, starts, lengths, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Document ``i`` as a batch of one."""
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text, offsets, labels): the flat token batch and bag offsets ``nn.EmbeddingBag`` takes."""
        index = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[index]
        offsets = torch.zeros_like(lengths)
        offsets[1:] = lengths[:-1].cumsum(0)
        # batch token k of document d sits at tokens[start_d + (k - offset_d)]
        shift = torch.repeat_interleave(self.starts[index] - offsets, lengths)
        text = self.tokens[shift + torch.arange(len(shift))]
        return text, offsets, self.labels[index]


class BagOfWordsClassifier(nn.Module):
    """fastText-style: mean of word embeddings, then a linear layer."""

    def __init__(self, vocab_size: int, dim: int, n_classes: int, sparse: bool = False):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", sparse=sparse)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, text: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(text, offsets))


class ZipfTextClassification(BatchedTask):
    """Classify generated documents into one of five topics with an ``nn.EmbeddingBag`` model."""

    name = "zipf_text"
    domain = "nlp"
    metric = "val_accuracy"
    direction = "maximize"
    default_epochs = 8
    default_batch_size = 32
    supports_sparse_gradients = True
    chance_level = 1.0 / N_CLASSES

    @property
    def vocab_size(self) -> int:
        return max(500, round(VOCAB_PER_SIZE * self.size))

    @property
    def embedding_dim(self) -> int:
        return 32 if self.size <= 1 else 16 * max(2, round(2 * math.sqrt(self.size)))

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        return BagOfWordsClassifier(self.vocab_size, self.embedding_dim, N_CLASSES, sparse=sparse_gradients)

    def make_datasets(self) -> tuple[Dataset, Dataset]:
        rng = np.random.default_rng([self.seed, 3])
        vocab = self.vocab_size
        # Word ids are a seeded shuffle of frequency ranks, so id order carries no information.
        word_of_rank = rng.permutation(vocab)
        background = 1.0 / np.arange(1, vocab + 1) ** ZIPF_EXPONENT
        background /= background.sum()
        # Each class owns topic words from the rare end (rank >= 5% of the vocabulary).
        n_topic = min(TOPIC_WORDS_PER_CLASS, (vocab - vocab // 20) // N_CLASSES)
        rare = rng.permutation(np.arange(vocab // 20, vocab))[: n_topic * N_CLASSES]
        topic_words = word_of_rank[rare].reshape(N_CLASSES, n_topic)
        topic_p = 1.0 / np.arange(1, n_topic + 1) ** 0.7
        topic_p /= topic_p.sum()

        n_train = max(self.batch_size, round(TRAIN_DOCS_PER_SIZE * self.size))
        n_val = max(100, round(VAL_DOCS_PER_SIZE * self.size))
        docs = self._generate(rng, n_train + n_val, word_of_rank, background, topic_words, topic_p)
        return self._subset(docs, 0, n_train), self._subset(docs, n_train, n_train + n_val)

    @staticmethod
    def _generate(
        rng: np.random.Generator,
        n_docs: int,
        word_of_rank: np.ndarray,
        background: np.ndarray,
        topic_words: np.ndarray,
        topic_p: np.ndarray,
    ) -> dict[str, np.ndarray]:
        labels = rng.integers(0, N_CLASSES, n_docs)
        lengths = 4 + rng.poisson(MEAN_DOC_LENGTH - 4, n_docs)
        topic_share = rng.beta(3.0, 14.0, n_docs)  # mean ~18% of a document's words are on topic
        distractor_share = rng.beta(1.0, 25.0, n_docs)
        distractor_class = (labels + rng.integers(1, N_CLASSES, n_docs)) % N_CLASSES

        doc_of_token = np.repeat(np.arange(n_docs), lengths)
        n_tokens = len(doc_of_token)
        tokens = word_of_rank[rng.choice(len(background), size=n_tokens, p=background)]
        draw = rng.random(n_tokens)
        on_topic = draw < topic_share[doc_of_token]
        distract = ~on_topic & (draw < topic_share[doc_of_token] + distractor_share[doc_of_token])
        topic_slot = rng.choice(len(topic_p), size=n_tokens, p=topic_p)
        tokens[on_topic] = topic_words[labels[doc_of_token[on_topic]], topic_slot[on_topic]]
        tokens[distract] = topic_words[distractor_class[doc_of_token[distract]], topic_slot[distract]]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return {"tokens": tokens, "starts": starts, "lengths": lengths, "labels": labels}

    @staticmethod
    def _subset(docs: dict[str, np.ndarray], first: int, stop: int) -> TokenDocuments:
        starts, lengths = docs["starts"][first:stop], docs["lengths"][first:stop]
        begin, end = int(starts[0]), int(starts[-1] + lengths[-1])
        return TokenDocuments(
            torch.as_tensor(docs["tokens"][begin:end], dtype=torch.long),
            torch.as_tensor(starts - begin, dtype=torch.long),
            torch.as_tensor(lengths, dtype=torch.long),
            torch.as_tensor(docs["labels"][first:stop], dtype=torch.long),
        )
