"""`task=skipgram`: word2vec's skip-gram with negative sampling on two sparse tables (input and
output vectors), trained by any optimizer of the family; the loop written out top to bottom.

Text, vocabulary and counts; the subsampling and noise distributions from the counts; then
for every step a slice of `trainer.batch_size` corpus words becomes (centre, context, noise)
rows (nlp_adagrad.words.pairs), scored, and stepped; on their intervals logging, telemetry of
both tables, evaluation and checkpoints; at the end vectors.txt and the eval/... metrics
(WordSim-353, SimLex-999, analogies; planted groups on data=planted).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from nlp_adagrad.batching import num_batches, prefetched
from nlp_adagrad.config import Config
from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.memory import check_memory
from nlp_adagrad.models import build_model
from nlp_adagrad.optim import build_optimizer
from nlp_adagrad.recipes.words import refuse_distributed, train_vectors
from nlp_adagrad.run import planned_steps, start
from nlp_adagrad.words.corpus import word_corpus
from nlp_adagrad.words.pairs import (
    PairBatch,
    epoch_stream,
    keep_probabilities,
    noise_table,
    pair_batch,
)
from nlp_adagrad.writer import MetricWriter

log = logging.getLogger("nlp_adagrad.train")


def skipgram(cfg: Config, run_dir: Path, writer: MetricWriter | None = None) -> dict[str, float]:
    """Train skip-gram vectors; write the run-dir files and vectors.txt; return the metrics."""
    topology, device = start(cfg)
    refuse_distributed(cfg, topology)
    task, seed = cfg.task, cfg.trainer.seed

    # ---- data: every document's ids and counts; who gets subsampled, who is drawn as noise
    corpus = word_corpus(cfg)
    keep = keep_probabilities(corpus.counts, task.sample)
    noise = noise_table(corpus.counts)
    num_rows = len(corpus.tokens)
    check_memory(cfg, num_rows, 0, device, tables=2)

    # ---- model and optimizer: input and output vectors, both sparse tables
    model = build_model(cfg.model, num_rows).to(device)
    per_epoch = num_batches(len(corpus.text.ids), cfg.trainer.batch_size)  # never 0 words
    total_steps = planned_steps(cfg, per_epoch)
    optimizer = build_optimizer(cfg.optim, model.parameters(), total_steps)
    kernel = native_kernels(task.kernel, "task.kernel") if device.type == "cpu" else None
    # the next step's pairs are drawn on a second core while this one trains, when the run
    # was given more than one (trainer.num_threads)
    ahead = (cfg.trainer.num_threads or 2) > 1

    def epoch_batches(epoch: int, first: int) -> Iterable[PairBatch]:
        stream = epoch_stream(corpus.text, keep, seed, epoch)

        def make_batch(step_in_epoch: int) -> PairBatch:
            size = cfg.trainer.batch_size
            return pair_batch(
                stream, step_in_epoch, size, task.window, task.negative, noise, seed, epoch
            )

        return prefetched(make_batch, range(first, per_epoch), ahead)

    def loss_of(batch: PairBatch) -> tuple[torch.Tensor, int]:
        # -log sigmoid(context score) - sum log sigmoid(-noise score), summed over pairs:
        # each pair's gradient at full weight, as word2vec applies it
        loss = model.loss_and_gradients(batch.centres.to(device), batch.targets.to(device), kernel)
        return loss.detach() / max(batch.num_pairs, 1), batch.words

    # ---- the loop and the finish; telemetry of both tables, eff_lr/input/..., eff_lr/output/...
    return train_vectors(
        cfg,
        run_dir,
        writer,
        corpus,
        model,
        optimizer,
        model.sparse_tables(),
        device,
        per_epoch=per_epoch,
        total_steps=total_steps,
        epoch_batches=epoch_batches,
        loss_of=loss_of,
        prepare_seconds=corpus.prepare_seconds,
    )
