"""`task=glove`: GloVe's weighted least squares on log co-occurrence counts, word and context
vectors and biases as sparse tables, Adagrad by default; the loop written out top to bottom.

Text, vocabulary and counts; the co-occurrence matrix (nlp_adagrad.words.cooccurrence); then
for every step `trainer.batch_size` of its non-zero entries in the epoch's seeded order, the
loss 0.5 f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2 summed over them, and a step; on their
intervals logging, telemetry of the word and context tables, evaluation and checkpoints; at
the end vectors.txt (W + C, as glove.c's default output) and the eval/... metrics.

glove.c's Adagrad differs in one detail: it adds the squared gradient after the step, so its
first step is lr / sqrt(1) = lr times the gradient; ours (PyTorch's order) adds it first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from nlp_adagrad.batching import num_batches
from nlp_adagrad.config import Config
from nlp_adagrad.errors import UserError
from nlp_adagrad.memory import check_memory
from nlp_adagrad.models import build_model
from nlp_adagrad.optim import build_optimizer
from nlp_adagrad.recipes.words import refuse_distributed, train_vectors
from nlp_adagrad.run import planned_steps, start
from nlp_adagrad.words.cooccurrence import (
    EntryBatch,
    cooccurrences,
    entry_batch,
    epoch_permutation,
)
from nlp_adagrad.words.corpus import word_corpus
from nlp_adagrad.writer import MetricWriter

log = logging.getLogger("nlp_adagrad.train")

CHARTED_TABLES = ("word", "context")  # the biases step too; their rates are not charted


def glove(cfg: Config, run_dir: Path, writer: MetricWriter | None = None) -> dict[str, float]:
    """Train GloVe vectors; write the run-dir files and vectors.txt; return the metrics."""
    topology, device = start(cfg)
    refuse_distributed(cfg, topology)
    task, seed = cfg.task, cfg.trainer.seed

    # ---- data: every document's ids and counts, then the co-occurrence entries
    corpus = word_corpus(cfg)
    num_rows = len(corpus.tokens)
    started = time.perf_counter()
    entries = cooccurrences(corpus.text, task.window, num_rows)
    prepare_seconds = corpus.prepare_seconds + time.perf_counter() - started
    log.info("co-occurrences: %d non-zero entries (window %d)", len(entries), task.window)
    if not len(entries):
        raise UserError(
            f"no two vocabulary words share a window of {task.window} in data={cfg.data.name}: "
            f"GloVe has nothing to fit; use longer documents or a lower tokenizer.min_count"
        )
    check_memory(cfg, num_rows, 0, device, tables=2)

    # ---- model and optimizer: word and context vectors and biases, all sparse tables
    model = build_model(cfg.model, num_rows).to(device)
    per_epoch = num_batches(len(entries), cfg.trainer.batch_size)
    total_steps = planned_steps(cfg, per_epoch)
    optimizer = build_optimizer(cfg.optim, model.parameters(), total_steps)

    def epoch_batches(epoch: int, first: int) -> Iterable[EntryBatch]:
        order = epoch_permutation(entries, seed, epoch)
        size = cfg.trainer.batch_size
        for batch_in_epoch in range(first, per_epoch):
            yield entry_batch(entries, order, batch_in_epoch, size, task.x_max, task.alpha)

    def loss_of(batch: EntryBatch) -> tuple[torch.Tensor, int]:
        predicted = model(batch.rows.to(device), batch.cols.to(device))
        residual = predicted - batch.log_counts.to(device)
        loss = 0.5 * (batch.weights.to(device) * residual.square()).sum()
        loss.backward()
        return loss.detach() / len(batch.rows), len(batch.rows)

    # ---- the loop and the finish; telemetry tagged eff_lr/word/... and eff_lr/context/...
    charted = {name: model.sparse_tables()[name] for name in CHARTED_TABLES}
    return train_vectors(
        cfg,
        run_dir,
        writer,
        corpus,
        model,
        optimizer,
        charted,
        device,
        per_epoch=per_epoch,
        total_steps=total_steps,
        epoch_batches=epoch_batches,
        loss_of=loss_of,
        prepare_seconds=prepare_seconds,
        extra_metrics={"train/cooccurrences": len(entries)},
    )
