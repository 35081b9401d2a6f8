"""GloVe's co-occurrence counts, built with vectorised code and stored sparse.

X[i, j] sums 1/distance over every occurrence of word j within `window` words of word i in
the same document, counted both ways (glove.c's `cooccur -symmetric 1`, its distance
weighting). One shifted comparison per distance, summed into a SciPy CSR matrix; the
training entries are its non-zeros, in a seeded order per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch

from nlp_adagrad.vocab import EncodedSplit


@dataclass
class Cooccurrences:
    rows: np.ndarray  # int64 word ids
    cols: np.ndarray  # int64 context ids
    counts: np.ndarray  # float64 X_ij

    def __len__(self) -> int:
        return len(self.counts)


def cooccurrences(split: EncodedSplit, window: int, num_rows: int) -> Cooccurrences:
    """X over the split's documents (see the module docstring), entries in row-major order."""
    ids = split.ids
    doc = np.repeat(np.arange(split.num_docs), split.lengths)
    total = scipy.sparse.csr_matrix((num_rows, num_rows), dtype=np.float64)
    for distance in range(1, min(window, max(len(ids) - 1, 0)) + 1):
        same = doc[:-distance] == doc[distance:]
        left, right = ids[:-distance][same], ids[distance:][same]
        weight = np.full(len(left), 1.0 / distance)
        total = total + scipy.sparse.csr_matrix((weight, (left, right)), shape=(num_rows, num_rows))
    total = (total + total.T).tocoo()
    order = np.lexsort((total.col, total.row))
    return Cooccurrences(
        rows=total.row[order].astype(np.int64),
        cols=total.col[order].astype(np.int64),
        counts=total.data[order],
    )


def epoch_permutation(entries: Cooccurrences, seed: int, epoch: int) -> np.ndarray:
    """The order of the entries in one epoch, seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 3]).permutation(len(entries))


@dataclass
class EntryBatch:
    rows: torch.Tensor  # int64
    cols: torch.Tensor  # int64
    log_counts: torch.Tensor  # float32 log X_ij
    weights: torch.Tensor  # float32 f(X_ij)


def entry_batch(
    entries: Cooccurrences,
    order: np.ndarray,
    step: int,
    batch_size: int,
    x_max: float,
    alpha: float,
) -> EntryBatch:
    """Step `step` (0-based, within the epoch) of the epoch's order, with f(x) = min(1,
    (x / x_max)^alpha) and log x."""
    picked = order[step * batch_size : (step + 1) * batch_size]
    x = entries.counts[picked]
    return EntryBatch(
        rows=torch.from_numpy(entries.rows[picked]),
        cols=torch.from_numpy(entries.cols[picked]),
        log_counts=torch.from_numpy(np.log(x).astype(np.float32)),
        weights=torch.from_numpy(np.minimum(1.0, (x / x_max) ** alpha).astype(np.float32)),
    )
