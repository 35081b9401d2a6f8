"""Encoded documents -> `(flat_ids, offsets, labels)` batches in a seeded order.

The order of an epoch is a pure function of (seed, epoch), so a run resumed at (epoch, batch)
sees the same batches, and every data-parallel rank sees the same global batches.
Batches are gathered from the CSR arrays with vectorised NumPy, never a loop over tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from nlp_adagrad.vocab import EncodedSplit

T = TypeVar("T")


@dataclass
class Batch:
    ids: torch.Tensor  # int64, all token ids of the batch's documents, concatenated
    offsets: torch.Tensor  # int64, start of each document in ids (EmbeddingBag's offsets)
    labels: torch.Tensor  # int64, one per document

    def to(self, device: torch.device) -> Batch:
        """On `device`; to a GPU through pinned memory, so the copy does not wait for the GPU
        to finish the previous step (a copy from pageable memory would)."""
        tensors = (self.ids, self.offsets, self.labels)
        if device.type == "cuda":
            return Batch(*(t.pin_memory().to(device, non_blocking=True) for t in tensors))
        return Batch(*(t.to(device) for t in tensors))


def epoch_order(num_docs: int, seed: int, epoch: int) -> np.ndarray:
    """The document order of one epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_docs)


def batch_indices(order: np.ndarray, batch_size: int, start: int = 0) -> Iterator[np.ndarray]:
    """Global batches of `batch_size` documents from batch `start` on.

    The last, smaller batch is kept: every document is seen once an epoch.
    """
    for first in range(start, num_batches(len(order), batch_size)):
        yield batches(order, batch_size, first)


def batches(order: np.ndarray, batch_size: int, first: int, count: int = 1) -> np.ndarray:
    """The documents of `count` consecutive batches of an epoch's `order` from batch `first`,
    in order (the epoch's last batch may be smaller)."""
    return order[first * batch_size : (first + count) * batch_size]


def num_batches(num_docs: int, batch_size: int) -> int:
    return -(-num_docs // batch_size)


def gather_documents(split: EncodedSplit, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets): documents `docs` from the CSR arrays, concatenated in that order, and
    where each starts."""
    starts = split.offsets[docs]
    lengths = split.offsets[docs + 1] - starts
    offsets = np.zeros(len(docs), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    # position k of the result belongs to document j: source index = starts[j] + (k - offsets[j])
    positions = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)
    return split.ids[positions], offsets


def make_batch(split: EncodedSplit, docs: np.ndarray) -> Batch:
    """Gather documents `docs` from the CSR arrays into one EmbeddingBag batch."""
    ids, offsets = gather_documents(split, docs)
    return Batch(
        ids=torch.from_numpy(ids),
        offsets=torch.from_numpy(offsets),
        labels=torch.from_numpy(split.labels[docs]),
    )


def prefetched(make: Callable[[int], T], keys: Iterable[int], ahead: bool) -> Iterator[T]:
    """make(k) for each key in order; with `ahead`, the next one is built on a second thread
    while the caller works on the current one (the kernels release the GIL, NumPy mostly
    does). Batches are pure functions of their key, so prefetching never changes a result."""
    keys = iter(keys)
    if not ahead:
        yield from map(make, keys)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") as pool:
        pending = [pool.submit(make, k) for k in itertools.islice(keys, 1)]
        while pending:
            current = pending.pop().result()
            pending.extend(pool.submit(make, k) for k in itertools.islice(keys, 1))
            yield current
