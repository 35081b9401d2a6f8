"""Bag-of-tokens classifiers whose token tables produce sparse gradients.

Both models read a batch as EmbeddingBag input (flat ids plus offsets). The token table is
`model.embedding`, a `SparseBag` (an EmbeddingBag with sparse, coalesced gradients), named by
`sparse_tables()`; everything else is small and dense.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nlp_adagrad.config import FastTextConfig, LogRegConfig, ModelConfig
from nlp_adagrad.sparse_bag import SparseBag


class LogReg(nn.Module):
    """Multinomial logistic regression on the bag of tokens.

    Row i of the table holds token i's weight for every class, so logits = bag(ids) + bias is
    exactly softmax regression on token frequencies (mode=mean) or counts (mode=sum). Zero
    initialisation: the problem is convex, so no symmetry needs breaking.
    """

    def __init__(self, num_rows: int, num_classes: int, mode: str) -> None:
        super().__init__()
        self.embedding = SparseBag(num_rows, num_classes, mode)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.zeros_(self.embedding.weight)

    def sparse_tables(self) -> dict[str, nn.Parameter]:
        """The tables with sparse gradients, by name: what telemetry reads."""
        return {"embedding": self.embedding.weight}

    def classify(self, bags: torch.Tensor) -> torch.Tensor:
        """Logits from the bag outputs (what data parallelism recomputes on every rank)."""
        return bags + self.bias

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embedding(ids, offsets))


class FastText(nn.Module):
    """fastText's supervised model: mean of token vectors, then a linear layer.

    Initialised as fastText does: input vectors uniform in (-1/dim, 1/dim), output zero.
    """

    def __init__(self, num_rows: int, num_classes: int, dim: int, mode: str) -> None:
        super().__init__()
        self.embedding = SparseBag(num_rows, dim, mode)
        self.head = nn.Linear(dim, num_classes)
        nn.init.uniform_(self.embedding.weight, -1.0 / dim, 1.0 / dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def sparse_tables(self) -> dict[str, nn.Parameter]:
        return {"embedding": self.embedding.weight}

    def classify(self, bags: torch.Tensor) -> torch.Tensor:
        return self.head(bags)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embedding(ids, offsets))


_BUILDERS: dict[type, Callable[[ModelConfig, int, int], nn.Module]] = {
    LogRegConfig: lambda c, rows, k: LogReg(rows, k, c.mode.value),
    FastTextConfig: lambda c, rows, k: FastText(rows, k, c.dim, c.mode.value),
}


def build_model(cfg: ModelConfig, num_rows: int, num_classes: int) -> nn.Module:
    """The configured model; its token table has `num_rows` rows (words, then bigram buckets)."""
    return _BUILDERS[type(cfg)](cfg, num_rows, num_classes)
