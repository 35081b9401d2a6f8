"""What the word-vector recipes (skipgram, glove) share beyond nlp_adagrad.run: their outputs
(writer and layout, telemetry, checkpoints), the training loop and the finish around their own
batches and loss, the check that they run in one process, and scoring the vectors (logged,
written to TensorBoard)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from nlp_adagrad import telemetry
from nlp_adagrad.config import Config, PlantedGroupsConfig
from nlp_adagrad.distributed import Topology
from nlp_adagrad.errors import UserError
from nlp_adagrad.interrupt import stop_requests
from nlp_adagrad.optim import RowOptimizer
from nlp_adagrad.run import (
    Checkpoints,
    Intervals,
    Snapshots,
    fresh_or_resumed,
    open_writer,
    progress_bar,
    rates_line,
    write_outputs,
)
from nlp_adagrad.words.corpus import WordCorpus
from nlp_adagrad.words.vectors import finish_vectors
from nlp_adagrad.writer import MetricWriter

log = logging.getLogger("nlp_adagrad.train")

# the scalars written to TensorBoard and the log line (metrics.json has every eval/ key)
SHOWN = ("eval/ws353/rho", "eval/simlex/rho", "eval/analogy/accuracy")


def train_vectors(
    cfg: Config,
    run_dir: Path,
    writer: MetricWriter | None,
    corpus: WordCorpus,
    model: torch.nn.Module,
    optimizer: RowOptimizer,
    tables: dict[str, torch.Tensor],
    device: torch.device,
    *,
    per_epoch: int,
    total_steps: int,
    epoch_batches: Callable[[int, int], Iterable[Any]],
    loss_of: Callable[[Any], tuple[torch.Tensor, int]],
    prepare_seconds: float,
    extra_metrics: dict[str, float] | None = None,
) -> dict[str, float]:
    """A word recipe's run from its model on: the state (fresh, or the checkpoint's under
    trainer.resume), the outputs (telemetry of `tables`), every epoch's batches from that
    step on (`epoch_batches(epoch, first batch)`), each step (`loss_of(batch)`: forward and
    backward, giving the mean loss and the words it covered), evaluation when due; then the
    final telemetry, evaluation, vectors.txt, the run-dir files and the last checkpoint.
    Returns the metrics (`extra_metrics` among them)."""
    state = fresh_or_resumed(cfg, model, optimizer, device)
    # ---- outputs: the writer with the layout, telemetry, guarded checkpoints, the tokenizer
    writer = writer or open_writer(cfg, run_dir, True)
    spec, missing = telemetry.make_spec(
        corpus.tokens, corpus.counts, cfg.telemetry, cfg.trainer.seed
    )
    if missing:
        log.warning("telemetry.tokens not in the vocabulary: %s", ", ".join(missing))
    corpus.tokenizer.save(str(run_dir / "tokenizer.json"))
    snapshots = Snapshots(cfg, spec, optimizer, tables, writer)
    writer.custom_layout(word_layout(spec, snapshots.names(), cfg))
    checkpoints = Checkpoints(cfg, run_dir, model, optimizer, device, True)
    start_epoch, start_batch = divmod(state.step, per_epoch)

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
            for batch in epoch_batches(epoch, start_batch if epoch == start_epoch else 0):
                optimizer.zero_grad(set_to_none=True)
                loss, words = loss_of(batch)
                optimizer.step()
                last = intervals.after_step(loss, words)
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
        **(extra_metrics or {}),
        **summary,
    }
    log.info("%s", rates_line(metrics, cfg))
    write_outputs(cfg, run_dir, writer, snapshots, metrics, rates, per_epoch, model.word_vectors())
    checkpoint()
    return metrics


def word_layout(spec, tables: list[str] | None, cfg: Config) -> dict:
    """The custom-scalars layout of a word-vector run: rates per table, then the scores."""
    scores = {
        "WordSim-353 and SimLex-999: Spearman rho": ["eval/ws353/rho", "eval/simlex/rho"],
        "analogies (questions-words): accuracy": ["eval/analogy/accuracy"],
    }
    if isinstance(cfg.data, PlantedGroupsConfig):
        scores["planted groups: precision of the nearest group words, per word count"] = [
            f"eval/planted/precision/count_{n}" for n in sorted(set(cfg.data.group_counts))
        ]
    return telemetry.custom_layout(spec, tables, scores)


def refuse_distributed(cfg: Config, topology: Topology) -> None:
    if topology.world_size > 1:
        raise UserError(
            f"task={cfg.task.name} trains in one process; torchrun runs task=classify only"
        )


def evaluate_vectors(
    cfg: Config,
    run_dir: Path | None,
    corpus: WordCorpus,
    model: torch.nn.Module,
    writer: MetricWriter,
    step: int,
) -> dict[str, float]:
    """eval/... metrics of the model's word vectors (and vectors.txt when `run_dir` is given)."""
    vectors = model.word_vectors().float().cpu().numpy()
    metrics = finish_vectors(cfg, run_dir, corpus.tokens, vectors, corpus.counts)
    shown = {k: v for k, v in metrics.items() if k in SHOWN or k.startswith("eval/planted/")}
    writer.scalars(shown, step)
    log.info(
        "step %d: %s (oov %.1f%% / %.1f%% / %.1f%%)",
        step,
        "  ".join(f"{k.removeprefix('eval/')} {v:.4f}" for k, v in shown.items()),
        100 * metrics["eval/ws353/oov"],
        100 * metrics["eval/simlex/oov"],
        100 * metrics["eval/analogy/oov"],
    )
    return metrics
