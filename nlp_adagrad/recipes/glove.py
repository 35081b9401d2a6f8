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
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from nlp_adagrad.batching import num_batches
from nlp_adagrad.config import Config
from nlp_adagrad.errors import UserError
from nlp_adagrad.interrupt import stop_requests
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
from nlp_adagrad.words.cooccurrence import (
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
    state = fresh_or_resumed(cfg, model, optimizer, device)
    start_epoch, start_batch = divmod(state.step, per_epoch)

    # ---- outputs: telemetry tagged eff_lr/word/... and eff_lr/context/...
    charted = {name: model.sparse_tables()[name] for name in CHARTED_TABLES}
    writer, snapshots, checkpoints = open_outputs(
        cfg, run_dir, writer, corpus, model, optimizer, charted, device
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
            order = epoch_permutation(entries, seed, epoch)
            first = start_batch if epoch == start_epoch else 0
            for batch_in_epoch in range(first, per_epoch):
                batch = entry_batch(
                    entries, order, batch_in_epoch, cfg.trainer.batch_size, task.x_max, task.alpha
                )
                optimizer.zero_grad(set_to_none=True)
                predicted = model(batch.rows.to(device), batch.cols.to(device))
                residual = predicted - batch.log_counts.to(device)
                loss = 0.5 * (batch.weights.to(device) * residual.square()).sum()
                loss.backward()
                optimizer.step()
                last = intervals.after_step(loss.detach() / len(batch.rows), len(batch.rows))
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
        **state.timing_metrics(prepare_seconds),
        "train/cooccurrences": len(entries),
        **summary,
    }
    log.info("%s", rates_line(metrics, cfg))
    write_outputs(cfg, run_dir, writer, snapshots, metrics, rates, per_epoch, model.word_vectors())
    checkpoint()
    return metrics
