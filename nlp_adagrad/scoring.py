"""A model scored on an encoded split, in batches: logits, and the loss, accuracy and
predictions training reports (the `evaluate` and `predict` commands build on the same logits).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nlp_adagrad.batching import Batch, make_batch
from nlp_adagrad.vocab import EncodedSplit


@torch.no_grad()
def batched_logits(
    model: nn.Module, split: EncodedSplit, batch_size: int, device: torch.device
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """(batch, logits) for a split's documents in order, `batch_size` at a time."""
    for start in range(0, split.num_docs, batch_size):
        docs = np.arange(start, min(start + batch_size, split.num_docs))
        batch = make_batch(split, docs).to(device)
        yield batch, model(batch.ids, batch.offsets)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    predictions: np.ndarray  # predicted label per document


@torch.no_grad()
def evaluate(
    model: nn.Module, split: EncodedSplit, batch_size: int, device: torch.device
) -> EvalResult:
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    predictions = []
    for batch, logits in batched_logits(model, split, batch_size, device):
        loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum").double()
        predictions.append(logits.argmax(dim=1))
    model.train(was_training)
    predicted = torch.cat(predictions).cpu().numpy()
    return EvalResult(
        loss=float(loss_sum) / split.num_docs,
        accuracy=float((predicted == split.labels).mean()),
        predictions=predicted,
    )
