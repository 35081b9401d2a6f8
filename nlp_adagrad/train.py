"""Training entry point, `python -m nlp_adagrad.train [overrides]`, and the loop, `train()`.

The loop is written out top to bottom: data, tokenizer, model, optimizer, then for every step
forward, backward, sparse optimizer step, and on their intervals logging, telemetry, evaluation
and checkpoints. Under torchrun every process follows the same seeded data order and takes
the identical step (nlp_adagrad.distributed); only the main process writes files.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import datasets
import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nlp_adagrad import distributed, run_info, telemetry
from nlp_adagrad.batching import batch_indices, epoch_order, make_batch, num_batches
from nlp_adagrad.checkpoint import (
    check_resume_compatible,
    load_for_resume,
    resume_optimizer,
    save_checkpoint,
)
from nlp_adagrad.config import (
    CONF_DIR,
    Config,
    check_override_keys,
    config_to_dict,
    help_text,
    register_configs,
    to_config,
)
from nlp_adagrad.data import load_corpus, split_digest
from nlp_adagrad.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    TrainingInterrupted,
    UserError,
    os_error_line,
)
from nlp_adagrad.figures import eff_lr_figure
from nlp_adagrad.guard import DivergenceGuard, TrainingDiverged
from nlp_adagrad.interrupt import stop_requests
from nlp_adagrad.memory import check_memory
from nlp_adagrad.models import build_model
from nlp_adagrad.optim import Adagrad, build_optimizer
from nlp_adagrad.run_dir import (
    claim_run_dir,
    detach_file_logs,
    discard_unstarted_run,
    refuse_run_dir_arguments,
    tensorboard_command,
    write_json,
)
from nlp_adagrad.scoring import evaluate
from nlp_adagrad.token_cache import tokenize_corpus
from nlp_adagrad.vocab import token_counts, vocabulary, warn_unusual_documents
from nlp_adagrad.writer import MetricWriter, NullWriter, TensorBoardWriter

log = logging.getLogger("nlp_adagrad.train")  # not "__main__" under python -m

TIMING_KEYS = (
    "train/seconds",
    "train/prepare_seconds",
    "train/tokens_per_sec",
    "train/telemetry_seconds",
)
FIRST_SNAPSHOT_KEYS = ("eff_lr/rare", "eff_lr/common", "eff_lr/rare_to_common")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={name} but no CUDA device is visible; use trainer.device=cpu"
        )
    return torch.device(name)


def train(cfg: Config, run_dir: Path, writer: MetricWriter | None = None) -> dict[str, float]:
    """Train the configured model; write the run-dir files (DESIGN §4); return final metrics."""
    if cfg.trainer.num_threads is not None:
        torch.set_num_threads(cfg.trainer.num_threads)
    topology, device = distributed.setup(resolve_device(cfg.trainer.device))
    is_main = topology.is_main
    torch.manual_seed(cfg.trainer.seed)

    # ---- data: corpus -> tokenizer -> token ids (CSR) and per-row training counts
    corpus = load_corpus(cfg.data)
    prepare_start = time.perf_counter()  # raw text in memory -> token ids
    tokenized = tokenize_corpus(corpus, cfg.tokenizer)
    tokenizer, train_split, test_split = tokenized.tokenizer, tokenized.train, tokenized.test
    if tokenized.cache_hit:
        log.info("token ids read from the cache: %s", tokenized.cache_dir)
    tokens = vocabulary(tokenizer)
    warn_unusual_documents(train_split, "train")
    warn_unusual_documents(test_split, "test")
    num_rows = len(tokens) + (cfg.tokenizer.buckets if cfg.tokenizer.ngrams == 2 else 0)
    class_names = corpus["train"].features["label"].names
    check_memory(cfg, num_rows, len(class_names), device)
    counts = token_counts(train_split, num_rows)
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
    steps_per_epoch = num_batches(train_split.num_docs, cfg.trainer.batch_size)
    total_steps = cfg.trainer.epochs * steps_per_epoch
    if cfg.trainer.max_steps is not None:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    optimizer = build_optimizer(cfg.optim, model.parameters(), total_steps)
    table = model.embedding.weight
    step, tokens_seen, resumed = 0, 0, None
    if cfg.trainer.resume:
        path, resumed = load_for_resume(cfg.trainer.resume, map_location=device)
        check_resume_compatible(resumed, cfg, model, path)
        model.load_state_dict(resumed["model"])
        step, tokens_seen = resumed["step"], resumed["tokens"]
        resume_optimizer(optimizer, resumed["optimizer"], step)
        torch.set_rng_state(resumed["rng_state"])
        log.info("resumed from %s at step %d", path, step)
    start_epoch, start_batch = divmod(step, steps_per_epoch)

    # ---- outputs: only the main process writes
    overrides = run_info.read_overrides(run_dir)
    if writer is None:
        name = run_info.run_name(cfg, overrides)
        writer = TensorBoardWriter(run_dir / "tb" / name) if is_main else NullWriter()
    spec, missing = telemetry.make_spec(tokens, counts, cfg.telemetry, cfg.trainer.seed)
    if missing:
        log.warning("telemetry.tokens not in the vocabulary: %s", ", ".join(missing))
    if is_main:
        tokenizer.save(str(run_dir / "tokenizer.json"))
        writer.custom_layout(telemetry.custom_layout(spec))

    # every step on CPU; on CUDA at the logging interval, which reads the loss back anyway
    guard = DivergenceGuard(model, check_every=1 if device.type == "cpu" else cfg.trainer.log_every)
    last_checkpoint = None

    def diverged(bad: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"non-finite {bad} ({cfg.optim.name}, optim.lr={cfg.optim.lr:g}); stopped. "
            f"Last good checkpoint: {last_checkpoint or 'none (set trainer.checkpoint_every)'}"
        )

    def stop_if_diverged(check_parameters: bool) -> None:
        bad = guard.check(step)
        if bad is None and check_parameters and (name := guard.bad_parameter()) is not None:
            bad = f"parameter {name} after step {step}"
        if bad is not None:
            raise diverged(bad)

    def checkpoint() -> Path | None:
        """Save (main process only) once the parameters are known to be finite."""
        stop_if_diverged(check_parameters=True)
        if not is_main:
            return None
        return save_checkpoint(
            run_dir / "checkpoints",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "tokens": tokens_seen,
                "rng_state": torch.get_rng_state(),
                "window": {
                    "loss_sum": float(loss_sum),
                    "steps": window_steps,
                    "tokens": window_tokens,
                },
                "train_loss": train_loss,
                "telemetry_first": first_snapshot,
                "config": config_to_dict(cfg),
                "class_names": list(class_names),
                "test_split": held_out,
            },
            keep=cfg.trainer.keep_checkpoints,
        )

    # ---- the loop
    tele_every, log_every = cfg.telemetry.every, cfg.trainer.log_every
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    window_steps, window_tokens, train_loss = 0, 0, float("nan")
    first_snapshot: dict[str, float] = {}  # the rates at the first snapshot, for metrics.json
    if resumed is not None:  # a window cut by the crash continues where it was
        loss_sum += resumed["window"]["loss_sum"]
        window_steps, window_tokens = resumed["window"]["steps"], resumed["window"]["tokens"]
        train_loss = resumed["train_loss"]
        first_snapshot = dict(resumed.get("telemetry_first") or {})
    loop_seconds, telemetry_seconds, window_start = 0.0, 0.0, time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=step,
        unit="step",
        dynamic_ncols=True,
        disable=not (cfg.trainer.progress and is_main),
        file=sys.stderr,
    )
    doc_lengths = train_split.lengths
    model.train()
    log.info("training: steps %d to %d", step + 1, total_steps)
    with logging_redirect_tqdm(), stop_requests(topology.world_size == 1) as stop:
        for epoch in range(start_epoch, cfg.trainer.epochs):
            if step >= total_steps:
                break
            order = epoch_order(train_split.num_docs, cfg.trainer.seed, epoch)
            first = start_batch if epoch == start_epoch else 0
            for global_docs in batch_indices(order, cfg.trainer.batch_size, first):
                optimizer.zero_grad(set_to_none=True)
                if topology.world_size == 1:
                    batch = make_batch(train_split, global_docs).to(device)
                    logits = model(batch.ids, batch.offsets)
                    loss = F.cross_entropy(logits, batch.labels, reduction="sum") / len(global_docs)
                    loss.backward()
                else:  # each rank pools its slice; gradients as one process computes them
                    loss = distributed.global_batch_backward(
                        model, train_split, global_docs, topology, device
                    )
                optimizer.step()
                step += 1
                bad = guard.after_step(loss, step)
                if bad is not None:
                    raise diverged(bad)
                batch_tokens = int(doc_lengths[global_docs].sum())
                tokens_seen += batch_tokens
                loss_sum += loss.detach().double()
                window_steps += 1
                window_tokens += batch_tokens
                bar.update()

                last = step >= total_steps
                if (log_every and step % log_every == 0) or last:
                    train_loss = float(loss_sum) / window_steps
                    now = time.perf_counter()
                    loop_seconds += now - window_start
                    tokens_per_sec = window_tokens / max(now - window_start, 1e-9)
                    writer.scalar("train/loss", train_loss, step)
                    writer.scalar("train/tokens_per_sec", tokens_per_sec, step)
                    bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_per_sec:,.0f}")
                    loss_sum.zero_()
                    window_steps, window_tokens = 0, 0
                    window_start = time.perf_counter()
                if telemetry.snapshot_due(step, tele_every) and not last:
                    snapshot_start = time.perf_counter()
                    summary, _, _ = telemetry.log_snapshot(
                        writer,
                        spec,
                        optimizer,
                        table,
                        step,
                        histograms=telemetry.histograms_due(
                            step, tele_every, cfg.telemetry.histogram_every
                        ),
                    )
                    if not first_snapshot and math.isfinite(summary["eff_lr/rare_to_common"]):
                        first_snapshot = first_snapshot_metrics(summary, step)
                    telemetry_seconds += time.perf_counter() - snapshot_start
                if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and not last:
                    result = evaluate(model, test_split, cfg.trainer.batch_size, device)
                    writer.scalar("test/loss", result.loss, step)
                    writer.scalar("test/accuracy", result.accuracy, step)
                    log.info(
                        "step %d: test/accuracy %.4f test/loss %.4f",
                        step,
                        result.accuracy,
                        result.loss,
                    )
                if cfg.trainer.checkpoint_every and step % cfg.trainer.checkpoint_every == 0:
                    last_checkpoint = checkpoint()
                if stop.requested and not last:
                    bar.close()
                    saved = checkpoint()
                    writer.close()
                    raise TrainingInterrupted(step, saved)
                if last:
                    break
    bar.close()

    # ---- final evaluation, telemetry and run-dir files
    stop_if_diverged(check_parameters=True)
    result = evaluate(model, test_split, cfg.trainer.batch_size, device)
    writer.scalar("test/loss", result.loss, step)
    writer.scalar("test/accuracy", result.accuracy, step)
    predicted_classes = len(np.unique(result.predictions))
    if predicted_classes == 1 and len(class_names) > 1:
        warn_collapsed(cfg, class_names[int(result.predictions[0])], result.accuracy)
    summary, eff_lr, updates = telemetry.log_snapshot(
        writer, spec, optimizer, table, step, exact=True
    )
    first_snapshot = first_snapshot or first_snapshot_metrics(summary, step)
    metrics = {
        "test/accuracy": result.accuracy,
        "test/loss": result.loss,
        "test/predicted_classes": predicted_classes,
        "train/loss": train_loss,
        "train/steps": step,
        "train/tokens": tokens_seen,
        "train/seconds": loop_seconds,
        "train/prepare_seconds": prepare_seconds,
        "train/tokens_per_sec": tokens_seen / max(loop_seconds, 1e-9),
        "train/telemetry_seconds": telemetry_seconds,  # in-loop snapshots, within train/seconds
        **summary,
        **first_snapshot,
        **telemetry.final_analysis(spec, eff_lr, updates),
    }
    if device.type == "cuda":
        metrics["train/peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    table_md = telemetry.bucket_table(spec, eff_lr, updates)
    log.info("effective learning rate by count bucket (%s):\n%s", cfg.optim.name, table_md)
    log.info("test/accuracy %.4f  %s", metrics["test/accuracy"], rates_line(metrics, cfg))
    if is_main:
        writer.text("eff_lr/buckets", table_md, step)
        if cfg.telemetry.figure:
            import matplotlib.pyplot as plt

            fig = eff_lr_figure(
                spec.counts,
                updates,
                eff_lr,
                steps_per_epoch,
                f"{cfg.optim.name} on {cfg.data.name}: per-token effective learning rate",
                theory=isinstance(optimizer, Adagrad),  # row-wise Adagrad included
            )
            fig.savefig(run_dir / "eff_lr_vs_count.png")
            writer.figure("eff_lr/vs_updates_and_count", fig, step)
            plt.close(fig)
        if cfg.telemetry.projector_tokens:
            vectors, rows, header = telemetry.projector_data(
                spec, table, eff_lr, cfg.telemetry.projector_tokens
            )
            writer.embedding(vectors, rows, header, "token_table", step)
        shown, varied = run_info.hparams(cfg, overrides)
        writer.hparams(
            shown, {k: float(metrics[k]) for k in run_info.HPARAM_METRICS if k in metrics}, varied
        )
        writer.close()
        spread = telemetry.coordinate_spread(optimizer, table, spec.num_tokens)
        telemetry.write_token_stats(run_dir / "token_stats.csv", spec, eff_lr, updates, spread)
        write_json(run_dir / "metrics.json", metrics)
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


def rates_line(metrics: dict[str, float], cfg: Config) -> str:
    """The end-of-run summary of the rates, saying why a number is missing instead of `nan`."""
    rare, common = metrics["eff_lr/rare"], metrics["eff_lr/common"]
    if not math.isfinite(rare):
        return (
            f"eff_lr common {common:.4g}; rare n/a: no token seen <= "
            f"{cfg.telemetry.rare_max_count} times (telemetry.rare_max_count) was updated, "
            f"so there is no rare / common ratio"
        )
    slopes = ", ".join(
        f"vs {x} {metrics[f'eff_lr/slope_vs_{x}']:.3f}"
        if math.isfinite(metrics[f"eff_lr/slope_vs_{x}"])
        else f"vs {x} n/a (all tokens alike)"
        for x in ("updates", "count")
    )
    return (
        f"eff_lr rare / common: {metrics['eff_lr/rare_to_common_first']:.1f}x at step "
        f"{metrics['eff_lr/first_snapshot_step']:.0f}, {metrics['eff_lr/rare_to_common']:.1f}x "
        f"at the end (rare {rare:.4g}, common {common:.4g})  slope {slopes}"
    )


def first_snapshot_metrics(summary: dict[str, float], step: int) -> dict[str, float]:
    """eff_lr/rare_first, ...: the rates before they separate, beside the final ones (from
    the first snapshot with both a rare and a common token updated)."""
    out = {f"{key}_first": summary[key] for key in FIRST_SNAPSHOT_KEYS}
    out["eff_lr/first_snapshot_step"] = step
    return out


register_configs()
_task_started = False  # set once Hydra hands over a composed config


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    global _task_started
    _task_started = True
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    datasets.disable_progress_bars()  # our own bar is the one that matters
    overrides = " ".join(HydraConfig.get().overrides.task)
    try:
        claim_run_dir(run_dir)
    except UserError as e:  # another run's dir: write nothing more into its train.log
        detach_file_logs(run_dir)
        log.error("%s", e)
        sys.exit(e.exit_code)
    log.info("reproduce with: python -m nlp_adagrad.train %s", overrides)
    try:
        config = to_config(cfg)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        metrics = train(config, run_dir)
    except UserError as e:
        log.error("%s", e)
        if e.exit_code == EXIT_USER_ERROR:  # bad input: no run to keep (a divergence keeps its)
            discard_unstarted_run(run_dir)
        sys.exit(e.exit_code)
    except TrainingInterrupted as e:
        log.warning(
            "%s; checkpoint %s; resume with: python -m nlp_adagrad.train %s trainer.resume=%s",
            e,
            e.checkpoint,
            overrides,
            run_dir,
        )
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # outside the steps, where the loop's handler does not run
        log.warning(
            "interrupted while preparing or finishing the run; checkpoints written so far, "
            "if any, are in %s",
            run_dir / "checkpoints",
        )
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:
        if (line := os_error_line(e)) is None:
            raise
        log.error("%s", line)
        sys.exit(EXIT_USER_ERROR)
    log.info("run dir: %s  (%s --logdir %s)", run_dir, tensorboard_command(), run_dir / "tb")
    return metrics


def cli() -> None:
    """Run `main`; a config Hydra refuses (unknown key, bad value) exits 2 like other bad input.

    Under torchrun only rank 0 writes: the other ranks get a throwaway run dir and no logs.
    """
    if int(os.environ.get("RANK", "0")) > 0:
        scratch = tempfile.mkdtemp(prefix="nlp_adagrad-rank")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [
            f"hydra.run.dir={scratch}",
            f"hydra.sweep.dir={scratch}",
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]
    if any(a in ("--help", "-h") for a in sys.argv[1:]):  # ours: keys with their docs
        print(help_text())
        raise SystemExit(0)
    unknown = check_override_keys([a for a in sys.argv[1:] if not a.startswith("-")])
    if unknown is not None:
        print(f"error: {unknown}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    refused = refuse_run_dir_arguments(sys.argv[1:])
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    try:
        main()
    except SystemExit as e:
        if e.code == 1 and not _task_started:
            raise SystemExit(EXIT_USER_ERROR) from None
        raise


if __name__ == "__main__":
    cli()
