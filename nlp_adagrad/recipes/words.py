"""What the word-vector recipes (skipgram, glove) share beyond nlp_adagrad.run: their outputs
(writer and layout, telemetry, checkpoints), the check that they run in one process, and
scoring the vectors (logged, written to TensorBoard)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from nlp_adagrad import telemetry
from nlp_adagrad.config import Config, PlantedGroupsConfig
from nlp_adagrad.distributed import Topology
from nlp_adagrad.errors import UserError
from nlp_adagrad.optim import RowOptimizer
from nlp_adagrad.run import Checkpoints, Snapshots, open_writer
from nlp_adagrad.words.corpus import WordCorpus
from nlp_adagrad.words.vectors import finish_vectors
from nlp_adagrad.writer import MetricWriter

log = logging.getLogger("nlp_adagrad.train")

# the scalars written to TensorBoard and the log line (metrics.json has every eval/ key)
SHOWN = ("eval/ws353/rho", "eval/simlex/rho", "eval/analogy/accuracy")


def open_outputs(
    cfg: Config,
    run_dir: Path,
    writer: MetricWriter | None,
    corpus: WordCorpus,
    model: torch.nn.Module,
    optimizer: RowOptimizer,
    tables: dict[str, torch.Tensor],
    device: torch.device,
) -> tuple[MetricWriter, Snapshots, Checkpoints]:
    """The writer (with the layout), telemetry of `tables`, the guarded checkpoints, and the
    tokenizer saved in the run dir."""
    writer = writer or open_writer(cfg, run_dir, True)
    spec, missing = telemetry.make_spec(
        corpus.tokens, corpus.counts, cfg.telemetry, cfg.trainer.seed
    )
    if missing:
        log.warning("telemetry.tokens not in the vocabulary: %s", ", ".join(missing))
    corpus.tokenizer.save(str(run_dir / "tokenizer.json"))
    snapshots = Snapshots(cfg, spec, optimizer, tables, writer)
    writer.custom_layout(word_layout(spec, snapshots.names(), cfg))
    return writer, snapshots, Checkpoints(cfg, run_dir, model, optimizer, device, True)


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
