"""`task=classify`: a bag-of-tokens classifier (logreg or fastText's model) on labelled
documents, trained with a sparse optimizer; the loop written out top to bottom.

Data, tokenizer, model and optimizer; then for every step forward, backward, sparse step, and
on their intervals logging, telemetry, evaluation and checkpoints; then the final evaluation
and the run-dir files. Under torchrun every process follows the same seeded data order and
takes the identical step (nlp_adagrad.distributed); only the main process writes files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from nlp_adagrad import distributed, telemetry
from nlp_adagrad.batching import batches, epoch_order, make_batch, num_batches
from nlp_adagrad.config import Config
from nlp_adagrad.data import load_corpus, split_digest
from nlp_adagrad.fused_steps import FusedSteps
from nlp_adagrad.interrupt import stop_requests
from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.memory import check_memory
from nlp_adagrad.models import build_model
from nlp_adagrad.optim import build_optimizer
from nlp_adagrad.run import (
    Checkpoints,
    Intervals,
    Snapshots,
    fresh_or_resumed,
    open_writer,
    planned_steps,
    progress_bar,
    rates_line,
    start,
    write_outputs,
)
from nlp_adagrad.scoring import evaluate
from nlp_adagrad.token_cache import tokenize_corpus
from nlp_adagrad.vocab import warn_unusual_documents
from nlp_adagrad.writer import MetricWriter

log = logging.getLogger("nlp_adagrad.train")

# how long one fused call may run when nothing falls due sooner: Ctrl-C is heard and the
# progress bar moves between calls, and each costs ~0.4 ms of Python around it (64-step
# calls were ~10% of the 15,000-step synthetic loop; README, "Fused steps")
FUSED_CALL_SECONDS = 0.05


def classify(cfg: Config, run_dir: Path, writer: MetricWriter | None = None) -> dict[str, float]:
    """Train the configured classifier; write the run-dir files (DESIGN §4); return metrics."""
    topology, device = start(cfg)
    is_main = topology.is_main

    # ---- data: corpus -> tokenizer -> token ids (CSR) and per-row training counts
    corpus = load_corpus(cfg.data)
    prepare_start = time.perf_counter()  # raw text in memory -> token ids
    tokenized = tokenize_corpus(corpus, cfg.tokenizer)
    tokenizer, train_split, test_split = tokenized.tokenizer, tokenized.train, tokenized.test
    if tokenized.cache_hit:
        log.info("token ids read from the cache: %s", tokenized.cache_dir)
    tokens = tokenized.tokens
    warn_unusual_documents(train_split, "train")
    warn_unusual_documents(test_split, "test")
    num_rows = len(tokens) + (cfg.tokenizer.buckets if cfg.tokenizer.ngrams == 2 else 0)
    class_names = corpus["train"].features["label"].names
    check_memory(cfg, num_rows, len(class_names), device)
    # the words' counts (telemetry, the run's token files); no one reads the bigram rows'
    counts = tokenized.train_word_counts(cfg.tokenizer)
    prepare_seconds = time.perf_counter() - prepare_start
    # what `evaluate` checks before it scores the run on "its" test split again
    held_out = {"documents": len(corpus["test"]), "digest": split_digest(corpus["test"])}
    log.info(
        "data=%s: %d train / %d test documents, %d classes, %d words (+%d bigram buckets), "
        "%d training tokens",
        cfg.data.name,
        train_split.num_docs,
        test_split.num_docs,
        len(class_names),
        len(tokens),
        num_rows - len(tokens),
        len(train_split.ids),
    )

    # ---- model and optimizer; the token table is the one with sparse gradients
    model = build_model(cfg.model, num_rows, len(class_names)).to(device)
    # the C++ loss and gradients (tested equal to forward + backward to 1e-6); torchrun's
    # ranks pool slices of a batch with torch ops (nlp_adagrad.distributed)
    single_cpu = device.type == "cpu" and topology.world_size == 1
    kernel = native_kernels(cfg.task.kernel, "task.kernel") if single_cpu else None
    batch_size = cfg.trainer.batch_size
    steps_per_epoch = num_batches(train_split.num_docs, batch_size)
    total_steps = planned_steps(cfg, steps_per_epoch)
    optimizer = build_optimizer(cfg.optim, model.parameters(), total_steps)
    state = fresh_or_resumed(cfg, model, optimizer, device)
    # several steps per C++ call where they apply: the same numbers (nlp_adagrad.fused_steps)
    fused = FusedSteps.for_run(model, optimizer, kernel, train_split) if single_cpu else None
    start_epoch, start_batch = divmod(state.step, steps_per_epoch)

    # ---- outputs: only the main process writes
    writer = writer or open_writer(cfg, run_dir, is_main)
    spec, missing = telemetry.make_spec(tokens, counts, cfg.telemetry, cfg.trainer.seed)
    if missing:
        log.warning("telemetry.tokens not in the vocabulary: %s", ", ".join(missing))
    if is_main:
        tokenizer.save(str(run_dir / "tokenizer.json"))
        writer.custom_layout(telemetry.custom_layout(spec))
    snapshots = Snapshots(cfg, spec, optimizer, model.sparse_tables(), writer)
    snapshots.read_in_chunks(fused, total_steps)
    checkpoints = Checkpoints(cfg, run_dir, model, optimizer, device, is_main)

    def checkpoint() -> Path | None:
        return checkpoints.save_run(
            model, optimizer, state, class_names=list(class_names), test_split=held_out
        )

    # ---- the loop
    bar = progress_bar(cfg, total_steps, state.step, is_main)
    doc_lengths = train_split.lengths
    model.train()
    log.info("training: steps %d to %d", state.step + 1, total_steps)
    state.window_start = time.perf_counter()  # the loop's time, not the set-up's
    with logging_redirect_tqdm(), stop_requests(topology.world_size == 1) as stop:
        intervals = Intervals(
            cfg, state, total_steps, writer, bar, snapshots, checkpoints, checkpoint, stop
        )
        for epoch in range(start_epoch, cfg.trainer.epochs):
            if state.step >= total_steps:
                break
            order = epoch_order(train_split.num_docs, cfg.trainer.seed, epoch)
            at = start_batch if epoch == start_epoch else 0  # the epoch's next batch
            while at < steps_per_epoch:
                if fused is not None:  # the steps up to the next event in one C++ call
                    limit = fused.steps_lasting(FUSED_CALL_SECONDS)
                    asked = min(intervals.steps_to_next_event(limit), steps_per_epoch - at)
                    docs = batches(order, batch_size, at, asked)
                    chunk = fused(docs, batch_size)
                    if snapshots.in_chunks:
                        snapshots.submit_chunk_reads(state, chunk)
                    steps = len(chunk.losses)  # fewer only when a step went non-finite
                    lengths = doc_lengths[docs[: steps * batch_size]]
                    tokens = np.add.reduceat(lengths, np.arange(0, len(lengths), batch_size))
                    last = intervals.after_chunk(chunk, tokens, checked=steps == asked)
                else:
                    global_docs = batches(order, batch_size, at)
                    optimizer.zero_grad(set_to_none=True)
                    if topology.world_size == 1:
                        batch = make_batch(train_split, global_docs).to(device)
                        loss = model.loss_and_gradients(
                            batch.ids, batch.offsets, batch.labels, kernel
                        )
                    else:  # each rank pools its slice; gradients as one process computes them
                        loss = distributed.global_batch_backward(
                            model, train_split, global_docs, topology, device
                        )
                    optimizer.step()
                    steps = 1
                    last = intervals.after_step(loss, int(doc_lengths[global_docs].sum()))
                at += steps
                if intervals.evaluation_due():
                    result = evaluate(model, test_split, batch_size, device)
                    writer.scalar("test/loss", result.loss, state.step)
                    writer.scalar("test/accuracy", result.accuracy, state.step)
                    log.info(
                        "step %d: test/accuracy %.4f test/loss %.4f",
                        state.step,
                        result.accuracy,
                        result.loss,
                    )
                if last:
                    break
    bar.close()

    # ---- final evaluation, telemetry and run-dir files
    checkpoints.check(state.step)
    result = evaluate(model, test_split, batch_size, device)
    writer.scalar("test/loss", result.loss, state.step)
    writer.scalar("test/accuracy", result.accuracy, state.step)
    predicted_classes = len(np.unique(result.predictions))
    if predicted_classes == 1 and len(class_names) > 1:
        warn_collapsed(cfg, class_names[int(result.predictions[0])], result.accuracy)
    summary, rates = snapshots.final(state)
    metrics = {
        "test/accuracy": result.accuracy,
        "test/loss": result.loss,
        "test/predicted_classes": predicted_classes,
        **state.timing_metrics(prepare_seconds),
        **summary,
    }
    if device.type == "cuda":
        metrics["train/peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    log.info("test/accuracy %.4f  %s", metrics["test/accuracy"], rates_line(metrics, cfg))
    if is_main:
        write_outputs(cfg, run_dir, writer, snapshots, metrics, rates, steps_per_epoch)
        checkpoint()
    distributed.teardown(topology)
    return metrics


def warn_collapsed(cfg: Config, predicted: str, accuracy: float) -> None:
    """One warning when every test prediction is the same class: an accuracy that looks like
    a result but is the class's share of the split."""
    if cfg.optim.name == "sgd" and cfg.model.mode.value == "mean":
        hint = (
            "with optim=sgd and model.mode=mean a token's gradient is ~1/document length of "
            "the bias's, so no single lr serves both: try model.mode=sum optim.lr=0.01, or "
            "optim=adagrad"
        )
    else:
        hint = f"try another optim.lr (now {cfg.optim.lr:g}) or more trainer.epochs"
    log.warning(
        "every test prediction is class %r: test/accuracy %.4f is that class's share of the "
        "test split, not something learned; %s",
        predicted,
        accuracy,
        hint,
    )
