"""Several Adagrad steps of a bag classifier in one C++ call (csrc/classify_steps.cpp), for
the stretches of a run where nothing in Python needs to see the steps in between: the loop
(nlp_adagrad/recipes/classify.py) hands it the batches up to the next evaluation or
checkpoint (`Intervals.steps_to_next_event`). Log points may fall inside a chunk: each step's
loss and end time come back, and `Intervals.after_chunk` closes those windows as the steps
did. So may telemetry snapshots: given the run's schedule (`reads`, set by
`Snapshots.read_in_chunks`), the kernel reads each one after its step and the readings come
back with the chunk (`Snapshots.submit_chunk_reads` hands them on); where it cannot read them,
a snapshot ends the chunk and Python reads it.

The numbers are those of stepping one batch at a time with the kernels, bit for bit (tested,
resumed runs included), so it is no setting: it runs wherever it applies, and saves the
~0.3 ms of Python calls a step costs between the kernels (README, Performance). It applies
to a single-process CPU run with the C++ kernels and `optim=adagrad` with its fused step, no
weight decay, not maximizing, one parameter group and no step hooks; elsewhere
`FusedSteps.for_run` gives None and the loop steps batch by batch.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch

from nlp_adagrad.models import NO_HEAD, BagClassifier
from nlp_adagrad.optim.adagrad import Adagrad, fusable
from nlp_adagrad.optim.base import hooks_or_profiler
from nlp_adagrad.vocab import EncodedSplit

FIRST_CALL_STEPS = 64  # before a call has shown the pace
MAX_CALL_STEPS = 4096  # bounds a call's batches, losses and readings in memory


class Reads(NamedTuple):
    """The telemetry snapshots the chunks read after their steps (`Snapshots.read_in_chunks`)."""

    steps: torch.Tensor  # int64: the run's snapshot steps, ascending
    rows: torch.Tensor  # int64: the rows whose rates and update counts each read takes
    coordinates: torch.Tensor  # bool, one per step: also the coordinate rates of...
    coordinate_rows: torch.Tensor  # int64: ...these rows


class ReadRates(NamedTuple):
    """The snapshots a chunk read, one entry per read."""

    steps: torch.Tensor  # int64 (reads,): the steps they followed
    rates: torch.Tensor  # float64 (reads, rows): the effective rates
    updates: torch.Tensor  # int32 (reads, rows): each row's update count
    tokens_updated: torch.Tensor  # int64 (reads,): rows updated so far (the tracked count)
    coordinates: torch.Tensor  # float64 (reads with coordinates, coordinate rows, dim)
    seconds: torch.Tensor  # float64 (reads,): the time each read took


class Chunk(NamedTuple):
    """What a chunk of fused steps gives back, one entry per step taken."""

    losses: torch.Tensor  # float32 mean losses
    ends: np.ndarray  # when each step ended, on time.perf_counter's clock
    read: ReadRates | None = None  # the snapshots it read (`FusedSteps.reads`)


class FusedSteps:
    def __init__(
        self, model: BagClassifier, optimizer: Adagrad, kernel: ModuleType, split: EncodedSplit
    ):
        self.model, self.optimizer, self.kernel = model, optimizer, kernel
        self.group = optimizer.param_groups[0]
        self.table = model.embedding.weight
        self.head, self.bias = model.dense_layer()
        self.params = [p for p in (self.table, self.head, self.bias) if p is not None]
        self.split = tuple(torch.from_numpy(a) for a in (split.ids, split.offsets, split.labels))
        self.reads = NO_READS  # the snapshots to read inside the chunks
        self.step_seconds: float | None = None  # the last call's time a step, set-up included

    @classmethod
    def for_run(
        cls,
        model: BagClassifier,
        optimizer,
        kernel: ModuleType | None,
        split: EncodedSplit,
    ) -> FusedSteps | None:
        """The fused steps for this run, or None where they do not apply (module docstring)."""
        if kernel is None or not isinstance(optimizer, Adagrad) or optimizer._kernels is None:
            return None
        if len(optimizer.param_groups) != 1 or hooks_or_profiler(optimizer):
            return None
        group = optimizer.param_groups[0]
        if group["weight_decay"] or group["maximize"]:
            return None
        fused = cls(model, optimizer, kernel, split)
        ours = {id(p) for p in fused.params}
        if ours != {id(p) for p in group["params"]} or not all(
            fusable(p, None, p) for p in fused.params
        ):
            return None
        return fused

    def __call__(self, docs: np.ndarray, batch_size: int) -> Chunk:
        """Steps on the batches of `docs` (`batch_size` documents each, the last maybe
        fewer): their losses and end times, one per step taken, and the snapshots of
        `self.reads` due after them. After a step whose loss or gradients are not finite it
        stops, as the loop's guard does (that step not read), and that step's gradients are
        left in `.grad` for the guard to name."""
        optimizer, group = self.optimizer, self.group
        states = [optimizer.state[p] for p in self.params]
        first = states[0]["step"] + 1
        if any(s["step"] + 1 != first for s in states):
            raise RuntimeError("fused steps: the classifier's parameters took different steps")
        steps = -(-len(docs) // batch_size)
        alphas = torch.tensor(
            [-Adagrad._clr(first + k, group) for k in range(steps)], dtype=torch.float64
        )
        updates, last_step = optimizer.row_counters(self.table)
        fresh_limit, fresh = optimizer.fresh_rows(self.table)
        model = self.model
        sums = [s["sum"] for s in states]
        called = time.perf_counter()
        with torch.no_grad():
            losses, seconds, rows, row_grads, head_grad, bias_grad, *read = (
                self.kernel.classify_steps(
                    self.table,
                    sums[0],
                    NO_HEAD if self.head is None else self.head,
                    NO_HEAD if self.head is None else sums[1],
                    self.bias,
                    sums[-1],
                    updates,
                    last_step,
                    *self.split,
                    torch.from_numpy(np.ascontiguousarray(docs, dtype=np.int64)),
                    batch_size,
                    alphas,
                    group["eps"],
                    first,
                    model.embedding.mode == "mean",
                    model.slot_scratch(),
                    fresh,
                    fresh_limit,
                    *self.reads,
                    group["lr"],
                    group["lr_decay"],
                )
            )
        for state in states:
            state["step"] += len(losses)
        model.set_gradients(rows, row_grads, None if self.head is None else head_grad, bias_grad)
        ends = seconds.numpy()
        if len(ends):
            self.step_seconds = float(ends[-1]) / len(ends)
        return Chunk(losses, called + ends, ReadRates(*read))

    def steps_lasting(self, seconds: float) -> int:
        """How many steps the next call may take to last about `seconds`, at the last call's
        pace (FIRST_CALL_STEPS before any call), between 1 and MAX_CALL_STEPS."""
        if self.step_seconds is None:
            return FIRST_CALL_STEPS
        return max(1, min(MAX_CALL_STEPS, int(seconds / max(self.step_seconds, 1e-9))))


_NO_ROWS = torch.zeros(0, dtype=torch.int64)
NO_READS = Reads(_NO_ROWS, _NO_ROWS, torch.zeros(0, dtype=torch.bool), _NO_ROWS)
