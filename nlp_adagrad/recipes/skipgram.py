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
import time
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from nlp_adagrad.batching import num_batches, prefetched
from nlp_adagrad.config import Config
from nlp_adagrad.interrupt import stop_requests
from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.memory import check_memory
from nlp_adagrad.models import build_model
from nlp_adagrad.optim import build_optimizer
from nlp_adagrad.recipes.words import evaluate_vectors, open_outputs, refuse_distributed
from nlp_adagrad.run import (
    Intervals,
    fresh_or_resumed,
    planned_steps,
    progress_bar,
    rates_line,
    start,
    write_outputs,
)
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
    state = fresh_or_resumed(cfg, model, optimizer, device)
    start_epoch, start_batch = divmod(state.step, per_epoch)

    # ---- outputs: telemetry of both tables, tagged eff_lr/input/... and eff_lr/output/...
    writer, snapshots, checkpoints = open_outputs(
        cfg, run_dir, writer, corpus, model, optimizer, model.sparse_tables(), device
    )

    def checkpoint() -> Path | None:
        return checkpoints.save_run(model, optimizer, state)

    # ---- the loop
    bar = progress_bar(cfg, total_steps, state.step, True)
    model.train()
    log.info("training: steps %d to %d (%d per epoch)", state.step + 1, total_steps, per_epoch)
    state.window_start = time.perf_counter()
    with logging_redirect_tqdm(), stop_requests(True) as stop:
        intervals = Intervals(
            cfg, state, total_steps, writer, bar, snapshots, checkpoints, checkpoint, stop
        )
        for epoch in range(start_epoch, cfg.trainer.epochs):
            if state.step >= total_steps:
                break
            stream = epoch_stream(corpus.text, keep, seed, epoch)
            first = start_batch if epoch == start_epoch else 0

            def make_batch(step_in_epoch: int, stream=stream, epoch=epoch) -> PairBatch:
                return pair_batch(
                    stream,
                    step_in_epoch,
                    cfg.trainer.batch_size,
                    task.window,
                    task.negative,
                    noise,
                    seed,
                    epoch,
                )

            # the next step's pairs are drawn on a second core while this one trains, when
            # the run was given more than one (trainer.num_threads)
            ahead = (cfg.trainer.num_threads or 2) > 1
            for batch in prefetched(make_batch, range(first, per_epoch), ahead):
                optimizer.zero_grad(set_to_none=True)
                # -log sigmoid(context score) - sum log sigmoid(-noise score), summed over
                # pairs: each pair's gradient at full weight, as word2vec applies it
                loss = model.loss_and_gradients(
                    batch.centres.to(device), batch.targets.to(device), kernel
                )
                optimizer.step()
                last = intervals.after_step(loss.detach() / max(batch.num_pairs, 1), batch.words)
                if intervals.evaluation_due():
                    evaluate_vectors(cfg, None, corpus, model, writer, state.step)
                if last:
                    break
    bar.close()

    # ---- final telemetry, evaluation, vectors.txt and the run-dir files
    checkpoints.check(state.step)
    summary, rates = snapshots.final(state)
    metrics = {
        **evaluate_vectors(cfg, run_dir, corpus, model, writer, state.step),
        **state.timing_metrics(corpus.prepare_seconds),
        **summary,
    }
    log.info("%s", rates_line(metrics, cfg))
    write_outputs(cfg, run_dir, writer, snapshots, metrics, rates, per_epoch, model.word_vectors())
    checkpoint()
    return metrics
