"""`task=analytic task.problem=text_replay`: where Adagrad's -1/2 slope holds on real text.

Adagrad's accumulators are replayed through the classifier's real batches of BBC News (the
same documents, order and batch size as `task=classify`), with each document's error held
fixed at the untrained model's (softmax 1/K minus the one-hot label): errors that never fall.
A token's row gradient in a step is sum over the batch's documents d holding it of w_dt e_d,
with w_dt = 1 (`task.weighting=binary`) or its count / the document's length (`mean`, the
model's EmbeddingBag); G += the row gradient's mean square; eff_lr = 1 / sqrt(G) (lr and eps
do not move a log-log slope). With batch 1 and binary weights every update adds the same
square, so the slope against updates is -1/2 exactly; batches that sum a token over several
documents, count-weighted rows and (in real training) falling errors each move it, and
comparing the replays with the real run's slope decomposes the difference (README).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from nlp_adagrad.batching import epoch_order, num_batches
from nlp_adagrad.config import Config
from nlp_adagrad.data import load_corpus
from nlp_adagrad.errors import UserError
from nlp_adagrad.fits import binned_fit
from nlp_adagrad.run_dir import write_json
from nlp_adagrad.token_cache import tokenize_corpus
from nlp_adagrad.vocab import EncodedSplit, token_counts
from nlp_adagrad.writer import MetricWriter

log = logging.getLogger("nlp_adagrad.train")


def replay_accumulators(
    split: EncodedSplit, num_classes: int, batch_size: int, epochs: int, seed: int, weighting: str
) -> tuple[np.ndarray, np.ndarray]:
    """(G, updates) per token after `epochs` of the classifier's batches, errors stationary."""
    vocab = int(split.ids.max()) + 1
    docs = np.repeat(np.arange(split.num_docs), split.lengths)
    pairs, per_pair = np.unique(docs * vocab + split.ids, return_counts=True)  # (doc, token)
    pair_doc, pair_token = pairs // vocab, pairs % vocab
    weight = np.ones(len(pairs)) if weighting == "binary" else per_pair / split.lengths[pair_doc]
    errors = np.full((split.num_docs, num_classes), 1.0 / num_classes)
    errors[np.arange(split.num_docs), split.labels] -= 1.0
    G, updates = np.zeros(vocab), np.zeros(vocab, dtype=np.int64)
    for epoch in range(epochs):
        batch_of_doc = np.empty(split.num_docs, dtype=np.int64)
        batch_of_doc[epoch_order(split.num_docs, seed, epoch)] = (
            np.arange(split.num_docs) // batch_size
        )
        keys, slot = np.unique(batch_of_doc[pair_doc] * vocab + pair_token, return_inverse=True)
        row_gradient = np.stack(
            [
                np.bincount(slot, weights=weight * errors[pair_doc, k], minlength=len(keys))
                for k in range(num_classes)
            ],
            axis=1,
        )
        token = keys % vocab
        G += np.bincount(token, weights=(row_gradient**2).mean(axis=1), minlength=vocab)
        updates += np.bincount(token, minlength=vocab)
    return G, updates


def text_replay(cfg: Config, run_dir: Path, writer: MetricWriter | None = None) -> dict:
    """Replay the configured classifier's batches; write metrics.json and replay_stats.csv."""
    if cfg.task.lr_grid:
        raise UserError("task.problem=text_replay has no learning rate: drop task.lr_grid")
    corpus = load_corpus(cfg.data)
    tokenized = tokenize_corpus(corpus, cfg.tokenizer)
    train = tokenized.train
    num_classes = len(corpus["train"].features["label"].names)
    G, updates = replay_accumulators(
        train,
        num_classes,
        cfg.trainer.batch_size,
        cfg.trainer.epochs,
        cfg.trainer.seed,
        cfg.task.weighting,
    )
    counts = token_counts(train, len(G))
    with np.errstate(divide="ignore"):
        rate = np.where(G > 0, 1.0 / np.sqrt(G), np.nan)
    vs_updates, vs_count = binned_fit(updates, rate), binned_fit(counts, rate)
    metrics = {
        "eff_lr/slope_vs_updates": vs_updates.slope if vs_updates else float("nan"),
        "eff_lr/slope_vs_count": vs_count.slope if vs_count else float("nan"),
        "train/steps": float(
            cfg.trainer.epochs * num_batches(train.num_docs, cfg.trainer.batch_size)
        ),
        "replay/tokens_updated": float((updates > 0).sum()),
    }
    with open(run_dir / "replay_stats.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "count", "updates", "G", "eff_lr"])
        for i in np.flatnonzero(updates > 0):
            out.writerow([i, counts[i], updates[i], f"{G[i]:.6g}", f"{rate[i]:.6g}"])
    write_json(run_dir / "metrics.json", metrics)
    if writer is not None:
        writer.close()
    log.info(
        "text replay (batch %d, %s weights, errors held fixed): eff_lr slope vs updates %.3f, "
        "vs count %.3f",
        cfg.trainer.batch_size,
        cfg.task.weighting,
        metrics["eff_lr/slope_vs_updates"],
        metrics["eff_lr/slope_vs_count"],
    )
    return metrics
