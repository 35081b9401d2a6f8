"""Skip-gram's training pairs from token ids, vectorised: word2vec's frequent-word
subsampling, its dynamic window, and noise words from the unigram^0.75 distribution.

A step covers `batch_size` corpus words (before subsampling), as word2vec counts words, so
an epoch has a fixed number of steps and SGD's linear decay spans the run exactly. What an
epoch draws (document order, which words subsampling keeps) is a pure function of (seed,
epoch), and a step's windows and noise words of (seed, epoch, step): a resumed run sees the
same pairs. Windows stay inside a document and span the words subsampling kept, as in
word2vec, where removed words never occupy a window slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nlp_adagrad.batching import epoch_order, gather_documents
from nlp_adagrad.vocab import EncodedSplit

NOISE_POWER = 0.75  # word2vec's exponent on counts for the noise distribution


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's chance of keeping an occurrence of each word: (sqrt(f / t) + 1) * t / f with
    f the word's count and t = sample * total words, capped at 1; 1 everywhere when sample=0."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones_like(counts)
    threshold = sample * counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = (np.sqrt(counts / threshold) + 1) * threshold / counts
    return np.where(counts > 0, np.minimum(keep, 1.0), 1.0)


def noise_table(counts: np.ndarray) -> np.ndarray:
    """word2vec's unigram table: word ids repeated in proportion to count^0.75, so a noise word
    is one uniform index (a binary search per draw was most of building a batch). 100 entries
    per vocabulary word (at least 10^6, at most 10^8 as word2vec's): each word's chance is
    quantised to 1 / len(table)."""
    weights = np.asarray(counts, dtype=np.float64) ** NOISE_POWER
    size = int(min(max(100 * len(weights), 10**6), 10**8))
    bounds = np.rint(np.cumsum(weights) / weights.sum() * size).astype(np.int64)
    entries = np.diff(bounds, prepend=0)
    return np.repeat(np.arange(len(weights), dtype=np.int32), entries)


@dataclass
class EpochStream:
    """One epoch's corpus in its document order, after subsampling."""

    ids: np.ndarray  # kept token ids, int64
    doc: np.ndarray  # document of each kept token, int64
    kept_before: np.ndarray  # kept tokens before each raw position (raw tokens + 1 entries)


def epoch_stream(split: EncodedSplit, keep: np.ndarray, seed: int, epoch: int) -> EpochStream:
    """Documents in the epoch's seeded order, each occurrence kept with `keep[id]`."""
    order = epoch_order(split.num_docs, seed, epoch)
    ids, _ = gather_documents(split, order)
    doc = np.repeat(np.arange(len(order)), split.lengths[order])
    kept = np.random.default_rng([seed, epoch, 1]).random(len(ids)) < keep[ids]
    kept_before = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(kept, out=kept_before[1:])
    return EpochStream(ids=ids[kept], doc=doc[kept], kept_before=kept_before)


@dataclass
class PairBatch:
    centres: torch.Tensor  # int64 (pairs,): centre word ids
    targets: torch.Tensor  # int64 (pairs, 1 + negative): the context word, then noise words
    words: int  # corpus words the step covers (before subsampling)

    @property
    def num_pairs(self) -> int:
        return self.centres.numel()


def pair_batch(
    stream: EpochStream,
    step: int,
    batch_size: int,
    window: int,
    negative: int,
    noise: np.ndarray,  # noise_table(counts)
    seed: int,
    epoch: int,
) -> PairBatch:
    """Step `step` (0-based, within the epoch): every kept word of its slice of the corpus as
    a centre, paired with each word within its drawn window (1..window words each side)."""
    raw_start = step * batch_size
    raw_stop = min(raw_start + batch_size, len(stream.kept_before) - 1)
    first, stop = stream.kept_before[raw_start], stream.kept_before[raw_stop]
    centres = np.arange(first, stop)
    rng = np.random.default_rng([seed, epoch, step, 2])
    span = rng.integers(1, window + 1, size=len(centres))
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    context = centres[:, None] + offsets[None, :]
    inside = (context >= 0) & (context < len(stream.ids))
    context = np.where(inside, context, 0)
    valid = inside & (np.abs(offsets)[None, :] <= span[:, None])
    valid &= stream.doc[context] == stream.doc[centres][:, None]
    centre_of_pair = np.nonzero(valid)[0]
    targets = np.empty((len(centre_of_pair), 1 + negative), dtype=np.int64)
    targets[:, 0] = stream.ids[context[valid]]
    targets[:, 1:] = noise[rng.integers(len(noise), size=(len(centre_of_pair), negative))]
    return PairBatch(
        centres=torch.from_numpy(stream.ids[centres[centre_of_pair]]),
        targets=torch.from_numpy(targets),
        words=raw_stop - raw_start,
    )
