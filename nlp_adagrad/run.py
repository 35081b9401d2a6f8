"""Run code every task's recipe shares: start-up, the run state and its checkpoint form,
checkpoints behind the NaN guard, telemetry snapshots of a sparse table, and the end-of-run
outputs (the figure, hparams, the Projector, token_stats.csv, metrics.json).

A recipe (nlp_adagrad.recipes) writes its loop out top to bottom and calls these; nothing here
decides what a step is.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from nlp_adagrad import distributed, run_info, telemetry
from nlp_adagrad.checkpoint import (
    check_resume_compatible,
    load_for_resume,
    resume_optimizer,
    save_checkpoint,
)
from nlp_adagrad.config import Config, config_to_dict
from nlp_adagrad.errors import TrainingInterrupted, UserError
from nlp_adagrad.figures import FigureData, draw_later
from nlp_adagrad.guard import DivergenceGuard, TrainingDiverged
from nlp_adagrad.optim import Adagrad, RowOptimizer
from nlp_adagrad.run_dir import write_json
from nlp_adagrad.telemetry_writer import open_sink, spare_core, start_ahead
from nlp_adagrad.writer import MetricWriter, NullWriter, TensorBoardWriter

if TYPE_CHECKING:
    from nlp_adagrad.fused_steps import Chunk, FusedSteps

log = logging.getLogger("nlp_adagrad.train")

# metrics.json keys that measure the machine, not the run: left out of equality checks
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


def start(cfg: Config, telemetry: bool = True) -> tuple[distributed.Topology, torch.device]:
    """Threads, the process group (one process, or torchrun's), the device and the seed; on
    the main process of a run with telemetry, its writer process started ahead."""
    if cfg.trainer.num_threads is not None:
        torch.set_num_threads(cfg.trainer.num_threads)
    # numpy's OpenBLAS spreads some calls (TensorBoard's histograms, the evaluation) over a
    # thread per core, which then spin for a while: on 2 cores they took the core torch's
    # second thread needed, and 2-thread runs were slower than 1-thread ones (README, Threads)
    threadpool_limits(1, user_api="blas")
    topology, device = distributed.setup(resolve_device(cfg.trainer.device))
    torch.manual_seed(cfg.trainer.seed)
    if telemetry and topology.is_main and spare_core():  # else the loop writes it (open_sink)
        start_ahead()
    return topology, device


def open_writer(cfg: Config, run_dir: Path, is_main: bool) -> MetricWriter:
    """TensorBoard in `tb/<what the run is>/` for the main process; a NullWriter elsewhere."""
    if not is_main:
        return NullWriter()
    name = run_info.run_name(cfg, run_info.read_overrides(run_dir))
    return TensorBoardWriter(run_dir / "tb" / name)


def progress_bar(cfg: Config, total: int, initial: int, is_main: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not (cfg.trainer.progress and is_main),
        file=sys.stderr,
    )


@dataclass
class RunState:
    """What a loop carries from step to step, and the part of it a checkpoint keeps: the step,
    tokens seen, the loss window cut by a crash, the first snapshot's rates."""

    loss_sum: torch.Tensor  # float64 on the device: summed without a read-back per step
    step: int = 0
    tokens: int = 0
    window_steps: int = 0
    window_tokens: int = 0
    train_loss: float = float("nan")
    first_snapshot: dict[str, float] = field(default_factory=dict)
    loop_seconds: float = 0.0
    telemetry_seconds: float = 0.0
    window_start: float = field(default_factory=time.perf_counter)

    @classmethod
    def fresh(cls, device: torch.device) -> RunState:
        return cls(loss_sum=torch.zeros((), dtype=torch.float64, device=device))

    @classmethod
    def resumed(cls, saved: dict, device: torch.device) -> RunState:
        state = cls.fresh(device)
        state.step, state.tokens = saved["step"], saved["tokens"]
        state.loss_sum += saved["window"]["loss_sum"]  # a window cut by the crash goes on
        state.window_steps, state.window_tokens = (saved["window"][k] for k in ("steps", "tokens"))
        state.train_loss = saved["train_loss"]
        state.first_snapshot = dict(saved.get("telemetry_first") or {})
        return state

    def checkpoint_fields(self) -> dict:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "window": {
                "loss_sum": float(self.loss_sum),
                "steps": self.window_steps,
                "tokens": self.window_tokens,
            },
            "train_loss": self.train_loss,
            "telemetry_first": self.first_snapshot,
        }

    def add_losses(self, losses: list[float]) -> None:
        """Steps' losses into `loss_sum` one at a time in float64, as the step-by-step loop
        adds them (a pairwise sum would round differently)."""
        total = float(self.loss_sum)
        for loss in losses:
            total += loss
        self.loss_sum.fill_(total)

    def add_steps(self, steps: int, tokens: int) -> None:
        """Book steps whose losses are already in `loss_sum`."""
        self.step += steps
        self.tokens += tokens
        self.window_steps += steps
        self.window_tokens += tokens

    def close_window(self, writer: MetricWriter, bar: tqdm, ended: float | None = None) -> None:
        """train/loss (the window's mean) and train/tokens_per_sec, then a new window; `ended`:
        when the window's last step ended, for a window closed after later steps ran."""
        self.train_loss = float(self.loss_sum) / self.window_steps
        now = time.perf_counter() if ended is None else ended
        self.loop_seconds += now - self.window_start
        tokens_per_sec = self.window_tokens / max(now - self.window_start, 1e-9)
        writer.scalars(
            {"train/loss": self.train_loss, "train/tokens_per_sec": tokens_per_sec}, self.step
        )
        if not bar.disable:  # formatting the postfix costs a hidden bar too
            bar.set_postfix(loss=f"{self.train_loss:.4f}", tok_s=f"{tokens_per_sec:,.0f}")
        self.loss_sum.zero_()
        self.window_steps, self.window_tokens = 0, 0
        self.window_start = time.perf_counter() if ended is None else ended

    def timing_metrics(self, prepare_seconds: float) -> dict[str, float]:
        return {
            "train/loss": self.train_loss,
            "train/steps": self.step,
            "train/tokens": self.tokens,
            "train/seconds": self.loop_seconds,
            "train/prepare_seconds": prepare_seconds,
            "train/tokens_per_sec": self.tokens / max(self.loop_seconds, 1e-9),
            "train/telemetry_seconds": self.telemetry_seconds,  # within train/seconds
        }


def planned_steps(cfg: Config, steps_per_epoch: int) -> int:
    """The run's optimizer steps: trainer.epochs of them, cut at trainer.max_steps."""
    steps = cfg.trainer.epochs * steps_per_epoch
    return steps if cfg.trainer.max_steps is None else min(steps, cfg.trainer.max_steps)


def fresh_or_resumed(
    cfg: Config, model: torch.nn.Module, optimizer: RowOptimizer, device: torch.device
) -> RunState:
    """A fresh run state, or with trainer.resume the checkpoint's: model, optimizer state
    (with this config's hyperparameters), run state and torch's RNG restored."""
    if not cfg.trainer.resume:
        return RunState.fresh(device)
    path, resumed = load_for_resume(cfg.trainer.resume, map_location=device)
    check_resume_compatible(resumed, cfg, model, path)
    model.load_state_dict(resumed["model"])
    state = RunState.resumed(resumed, device)
    resume_optimizer(optimizer, resumed["optimizer"], state.step)
    torch.set_rng_state(resumed["rng_state"])
    log.info("resumed from %s at step %d", path, state.step)
    return state


class Checkpoints:
    """The NaN guard and the checkpoints behind it: nothing non-finite is ever saved, and a
    divergence names the last good checkpoint."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device,
        is_main,
    ):
        # every step on CPU; on CUDA at the logging interval, which reads the loss back anyway
        every = 1 if device.type == "cpu" else cfg.trainer.log_every
        self.guard = DivergenceGuard(model, check_every=every)
        self.optimizer = optimizer
        self.cfg, self.folder, self.is_main = cfg, run_dir / "checkpoints", is_main
        self.last: Path | None = None

    def diverged(self, bad: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"non-finite {bad} ({self.cfg.optim.name}, optim.lr={self.cfg.optim.lr:g}); "
            f"stopped. Last good checkpoint: "
            f"{self.last or 'none (set trainer.checkpoint_every)'}"
        )

    def after_step(self, loss: torch.Tensor, step: int) -> None:
        bad = self.guard.after_step(loss, step)
        if bad is not None:
            raise self.diverged(bad)

    def check(self, step: int) -> None:
        """Raise if the loss, gradients, any parameter or the optimizer's state went
        non-finite by `step`."""
        bad = self.guard.check(step)
        if bad is None and (name := self.guard.bad_parameter()) is not None:
            bad = f"parameter {name} after step {step}"
        if bad is None and (name := self.guard.bad_state(self.optimizer)) is not None:
            decay = getattr(self.cfg.optim, "weight_decay", 0)
            lower = "optim.lr" + (f" or optim.weight_decay (now {decay:g})" if decay else "")
            bad = (
                f"optimizer state {name} after step {step} (it overflowed, so those rows "
                f"stopped learning: lower {lower})"
            )
        if bad is not None:
            raise self.diverged(bad)

    def save_run(
        self, model: torch.nn.Module, optimizer: RowOptimizer, state: RunState, **extra
    ) -> Path | None:
        """Save what exact resume needs (model, optimizer, torch's RNG, the run state) and
        the recipe's `extra` keys."""
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng_state": torch.get_rng_state(),
            **extra,
            **state.checkpoint_fields(),
        }
        return self.save(payload, state.step)

    def save(self, payload: dict, step: int) -> Path | None:
        """Save (main process only) once the parameters are known to be finite."""
        self.check(step)
        if not self.is_main:
            return None
        return save_checkpoint(
            self.folder,
            {**payload, "config": config_to_dict(self.cfg)},
            keep=self.cfg.trainer.keep_checkpoints,
        )


@dataclass
class TableRates:
    """One table's rates at the end of a run, every vocabulary token: what the files show."""

    eff_lr: np.ndarray
    updates: np.ndarray


class Snapshots:
    """Telemetry of a model's sparse tables during a run: log-spaced early snapshots, then
    every `telemetry.every` steps, the first one's rates kept for metrics.json, and their time.

    One table keeps the plain tags (`eff_lr/rare`); several tag each (`eff_lr/<table>/rare`),
    and the first named is the primary one, whose rates also fill the plain metrics keys.
    """

    def __init__(
        self,
        cfg: Config,
        spec,
        optimizer: RowOptimizer,
        tables: dict[str, torch.Tensor],
        writer: MetricWriter,
    ):
        self.cfg, self.spec, self.optimizer, self.tables = cfg.telemetry, spec, optimizer, tables
        self.primary = next(iter(tables))
        for table in tables.values():  # a snapshot's count of updated tokens, kept by the steps
            optimizer.track_updated_rows(table, spec.num_tokens)
        # summarizing and writing a snapshot cost 10x reading it: done off the loop, in order
        # (nlp_adagrad.telemetry_writer); opened now, so a process is up by the first snapshot
        self._sink = open_sink(writer, spec)
        self._pending: list[tuple[str, int]] = []
        self.in_chunks = False  # read by fused steps inside their chunks (`read_in_chunks`)

    def names(self) -> list[str] | None:
        """Table names for tags, or None when there is only one (untagged)."""
        return list(self.tables) if len(self.tables) > 1 else None

    def tag_of(self, name: str) -> str | None:
        """The table name tags carry: None when the model has one table (plain tags)."""
        return name if len(self.tables) > 1 else None

    def read_in_chunks(self, fused: FusedSteps | None, total_steps: int) -> None:
        """Have `fused` steps read the snapshots due inside their chunks, where they can: the
        model's one table is theirs and its count of updated rows is the one a snapshot
        reports (telemetry.read_snapshot's reading, the same numbers: tested). A snapshot no
        longer ends a chunk, and the Python calls around a read (~0.1 ms each) are gone."""
        from nlp_adagrad.fused_steps import Reads

        if fused is None or self.cfg.every <= 0 or len(self.tables) != 1:
            return
        table = self.tables[self.primary]
        limit, _ = self.optimizer.fresh_rows(table)
        if table is not fused.table or limit != self.spec.num_tokens:
            return
        view = self.spec.sample
        ids = np.arange(self.spec.num_tokens) if view.ids is None else view.ids
        rows = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        # the run's snapshots but the last step's (`final` reads it exactly)
        steps = telemetry.snapshot_steps(1, total_steps, self.cfg.every)
        coordinates = self.optimizer.has_coordinate_rates(table)
        fused.reads = Reads(
            torch.tensor(steps, dtype=torch.int64),
            rows,
            torch.tensor([coordinates and self._histograms(s) for s in steps], dtype=torch.bool),
            rows[torch.from_numpy(view.shown_positions)],
        )
        self.in_chunks = True

    def submit_chunk_reads(self, state: RunState, chunk: Chunk) -> None:
        """Hand the snapshots a chunk read (`read_in_chunks`) to the sink. NumPy views only:
        a torch call here, after the C++ steps, cost ~0.1 ms (measured)."""
        started = time.perf_counter()
        steps, rates, updates, tokens_updated, coordinates, seconds = (
            t.numpy() for t in chunk.read
        )
        shown = iter(coordinates)
        for k, step in enumerate(steps.tolist()):
            histograms = self._histograms(step)
            reading = telemetry.Reading(
                self.spec.sample,
                rates[k],
                updates[k],
                int(tokens_updated[k]),
                # read where a histogram is due and the optimizer has coordinate rates
                next(shown) if histograms and len(coordinates) else None,
            )
            self._sink.submit(reading, step, histograms, None)
            self._pending.append((self.primary, step))
        state.telemetry_seconds += float(seconds.sum()) + time.perf_counter() - started

    def _histograms(self, step: int) -> bool:
        return telemetry.histograms_due(step, self.cfg.every, self.cfg.histogram_every)

    def maybe(self, state: RunState, last: bool) -> None:
        """A snapshot when one is due: its rates read now, summarized and written by the
        telemetry sink while training goes on (`settle` waits for them). Nothing where the
        fused steps read them (`read_in_chunks`)."""
        step, every = state.step, self.cfg.every
        if last or self.in_chunks or not telemetry.snapshot_due(step, every):
            return
        started = time.perf_counter()
        histograms = self._histograms(step)
        for name, table in self.tables.items():
            reading = telemetry.read_snapshot(self.spec, self.optimizer, table, histograms)
            self._sink.submit(reading, step, histograms, self.tag_of(name))
            self._pending.append((name, step))
        state.telemetry_seconds += time.perf_counter() - started

    def settle(self, state: RunState, in_loop: bool = True) -> None:
        """Wait until every snapshot taken is written; keep the first one's rates in `state`
        (a checkpoint saves them). A wait in the loop counts as its telemetry time."""
        started = time.perf_counter()
        for (name, step), summary in zip(self._pending, self._sink.results(), strict=True):
            first = not state.first_snapshot and math.isfinite(summary["eff_lr/rare_to_common"])
            if name == self.primary and first:
                state.first_snapshot = first_snapshot_metrics(summary, step)
        self._pending.clear()
        if in_loop:
            state.telemetry_seconds += time.perf_counter() - started

    def close(self) -> None:
        """Stop the telemetry sink once what it was given is written (its event file whole)."""
        self._sink.close()

    def final(self, state: RunState) -> tuple[dict, dict[str, TableRates]]:
        """The exact last snapshot of every table: (metrics, rates by table). The metrics
        hold the primary table's summary, its first snapshot's rates and, with several
        tables, every table's summary and bucket rows under eff_lr/<table>/..."""
        self.settle(state, in_loop=False)
        readings = {}
        for name, table in self.tables.items():
            readings[name] = telemetry.read_snapshot(
                self.spec, self.optimizer, table, histograms=True, exact=True
            )
            self._sink.submit(readings[name], state.step, True, self.tag_of(name))
        summaries = dict(zip(self.tables, self._sink.results(), strict=True))
        self.close()
        metrics, rates = {}, {}
        for name, reading in readings.items():
            tag, summary = self.tag_of(name), summaries[name]
            eff_lr, updates = reading.eff_lr, reading.updates
            rates[name] = TableRates(eff_lr, updates)
            analysis = {**summary, **telemetry.final_analysis(self.spec, eff_lr, updates)}
            if name == self.primary:
                state.first_snapshot = state.first_snapshot or first_snapshot_metrics(
                    summary, state.step
                )
                metrics.update({**analysis, **state.first_snapshot})
            if tag is not None:
                metrics.update({telemetry.table_tag(k, tag): v for k, v in analysis.items()})
        return metrics, rates


class Intervals:
    """What every loop does after an optimizer step: the NaN guard, the run state and the
    progress bar, then on the trainer's intervals the logging window, telemetry snapshots and
    checkpoints, and on Ctrl-C / SIGTERM a checkpoint and TrainingInterrupted. The task's own
    evaluation stays in its recipe (`evaluation_due`)."""

    def __init__(
        self,
        cfg: Config,
        state: RunState,
        total_steps: int,
        writer: MetricWriter,
        bar: tqdm,
        snapshots: Snapshots,
        checkpoints: Checkpoints,
        save: Callable[[], Path | None],
        stop,
    ):
        self.trainer, self.state, self.total_steps = cfg.trainer, state, total_steps
        self.writer, self.bar, self.snapshots, self.checkpoints = (
            writer,
            bar,
            snapshots,
            checkpoints,
        )
        self.save, self.stop = save, stop

    def after_step(self, loss: torch.Tensor, tokens: int) -> bool:
        """Book the step just taken; True when it was the last."""
        self.state.loss_sum += loss.detach().double()
        return self.after_steps(loss, 1, tokens)

    def after_chunk(self, chunk: Chunk, tokens: np.ndarray, checked: bool) -> bool:
        """Book a chunk of fused steps (`tokens`: each step's): the log windows that end
        inside it closed at their last step's end, then its last step as `after_steps`
        books it; True when that was the run's last. `checked`: the kernel found every
        step's loss and gradients finite."""
        every, first = self.trainer.log_every, self.state.step + 1
        losses, booked = chunk.losses.tolist(), 0
        # the steps first + k that end a window, the chunk's last step apart
        for k in range((-first) % every, len(losses) - 1, every) if every else ():
            self.state.add_losses(losses[booked : k + 1])
            self._book(k + 1 - booked, int(tokens[booked : k + 1].sum()))
            self.state.close_window(self.writer, self.bar, ended=float(chunk.ends[k]))
            booked = k + 1
        self.state.add_losses(losses[booked:])
        rest = len(losses) - booked
        return self.after_steps(chunk.losses[-1], rest, int(tokens[booked:].sum()), checked)

    def after_steps(
        self, loss: torch.Tensor, steps: int, tokens: int, checked: bool = False
    ) -> bool:
        """Book `steps` steps just taken (`tokens` in all), their losses already summed into
        the window, `loss` the last one's; True when it was the run's last. Nothing may fall
        due before the last of them (`steps_to_next_event`): the guard judges the last, unless
        every step's loss and gradients were `checked` finite as they were taken (the fused
        steps check each one and stop at the first that is not)."""
        state, trainer = self.state, self.trainer
        if not checked:
            try:
                self.checkpoints.after_step(loss, state.step + steps)
            except TrainingDiverged:
                self._close_outputs()  # the TensorBoard events up to the step before stay
                raise
        self._book(steps, tokens)
        step, last = state.step, state.step >= self.total_steps
        if (trainer.log_every and step % trainer.log_every == 0) or last:
            state.close_window(self.writer, self.bar)
        self.snapshots.maybe(state, last)
        if trainer.checkpoint_every and step % trainer.checkpoint_every == 0:
            self.snapshots.settle(state)
            self.checkpoints.last = self.save()
        if self.stop.requested and not last:
            self.snapshots.settle(state)
            saved = self.save()
            self._close_outputs()
            raise TrainingInterrupted(step, saved)
        return last

    def _book(self, steps: int, tokens: int) -> None:
        self.state.add_steps(steps, tokens)
        self.bar.update(steps)

    def _close_outputs(self) -> None:
        """The progress bar, telemetry and TensorBoard closed, their events on disk before
        the command returns: a run that stops early keeps what it wrote."""
        self.bar.close()
        self.snapshots.close()
        self.writer.close()

    def steps_to_next_event(self, limit: int) -> int:
        """Steps from now to the next one after which something is due (a snapshot, an
        evaluation, a checkpoint, the end), at most `limit`: how many steps may run without
        Python seeing them (nlp_adagrad.fused_steps; its calls cross log points, which
        `after_chunk` closes from the steps' own record, and snapshots where they read them:
        `Snapshots.read_in_chunks`). Arithmetic, not a test of each step: a call may take
        thousands."""
        trainer, step = self.trainer, self.state.step
        gaps = [limit, self.total_steps - step]
        intervals = (trainer.eval_every, trainer.checkpoint_every)
        gaps += [every - step % every for every in intervals if every]
        if not self.snapshots.in_chunks:
            due = telemetry.next_snapshot(step, self.snapshots.cfg.every)
            if due is not None:
                gaps.append(due - step)
        return max(1, min(gaps))

    def evaluation_due(self) -> bool:
        """trainer.eval_every says so, and it is not the last step (the final one follows)."""
        every, step = self.trainer.eval_every, self.state.step
        return bool(every) and step % every == 0 and step < self.total_steps


def first_snapshot_metrics(summary: dict[str, float], step: int) -> dict[str, float]:
    """eff_lr/rare_first, ...: the rates before they separate, beside the final ones (from
    the first snapshot with both a rare and a common token updated)."""
    out = {f"{key}_first": summary[key] for key in FIRST_SNAPSHOT_KEYS}
    out["eff_lr/first_snapshot_step"] = step
    return out


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


def write_outputs(
    cfg: Config,
    run_dir: Path,
    writer: MetricWriter,
    snapshots: Snapshots,
    metrics: dict[str, float],
    rates: dict[str, TableRates],
    steps_per_epoch: int,
    projected: torch.Tensor | None = None,
) -> None:
    """The end-of-run files of the main process, per sparse table: the per-bucket table, the
    eff_lr figure and token_stats.csv (the primary table's under DESIGN's names, the others'
    suffixed `_<table>`); then the Projector (`projected`, by default the primary table),
    hparams and metrics.json (DESIGN section 4)."""
    spec, optimizer = snapshots.spec, snapshots.optimizer
    step = int(metrics["train/steps"])
    figures = {}  # table name -> its figure's data
    for name in snapshots.tables:
        tag = telemetry.table_tag("eff_lr/buckets", snapshots.tag_of(name))
        eff_lr, updates = rates[name].eff_lr, rates[name].updates
        table_md = telemetry.bucket_table(spec, eff_lr, updates)
        log.info(
            "effective learning rate by count bucket (%s, %s):\n%s", cfg.optim.name, name, table_md
        )
        writer.text(tag, table_md, step)
        if cfg.telemetry.figure:
            what = "" if snapshots.names() is None else f" ({name} table)"
            figures[name] = FigureData(
                spec.counts,
                updates,
                eff_lr,
                steps_per_epoch,
                f"{cfg.optim.name} on {cfg.data.name}: per-token effective learning rate{what}",
                theory=isinstance(optimizer, Adagrad),  # row-wise Adagrad included
            )
    images = draw_later(list(figures.values()))  # drawn while token_stats.csv is written
    suffixes = {name: "" if name == snapshots.primary else f"_{name}" for name in snapshots.tables}
    for name, table in snapshots.tables.items():
        spread = telemetry.coordinate_spread(optimizer, table, spec.num_tokens)
        eff_lr, updates = rates[name].eff_lr, rates[name].updates
        telemetry.write_token_stats(
            run_dir / f"token_stats{suffixes[name]}.csv", spec, eff_lr, updates, spread
        )
    if cfg.telemetry.projector_tokens:
        primary = rates[snapshots.primary]
        vectors, rows, header = telemetry.projector_data(
            spec,
            snapshots.tables[snapshots.primary] if projected is None else projected,
            primary.eff_lr,
            cfg.telemetry.projector_tokens,
        )
        writer.embedding(vectors, rows, header, "token_table", step)
    for name, encoded in zip(figures, images()):
        (run_dir / f"eff_lr_vs_count{suffixes[name]}.png").write_bytes(encoded)
        tag = telemetry.table_tag("eff_lr/vs_updates_and_count", snapshots.tag_of(name))
        writer.image(tag, encoded, step)
    shown, varied = run_info.hparams(cfg, run_info.read_overrides(run_dir))
    # HParams shows scalar tags: with several tables, the first table's tagged ones
    primary = snapshots.tag_of(snapshots.primary)
    writer.hparams(
        shown,
        {
            telemetry.table_tag(k, primary): float(metrics[k])
            for k in run_info.HPARAM_METRICS
            if k in metrics
        },
        varied,
    )
    writer.close()
    write_json(run_dir / "metrics.json", metrics)
