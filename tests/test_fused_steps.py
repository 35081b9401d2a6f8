"""Several classifier steps in one C++ call (nlp_adagrad.fused_steps) give what stepping batch
by batch with the kernels gives, bit for bit, chunked any way; a run using them writes what a
run stepping batch by batch writes, every event at its step."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nlp_adagrad.batching import make_batch
from nlp_adagrad.fused_steps import FIRST_CALL_STEPS, FusedSteps, Reads
from nlp_adagrad.guard import DivergenceGuard
from nlp_adagrad.kernels import native_kernels
from nlp_adagrad.models import FastText, LogReg
from nlp_adagrad.optim import SGD, Adagrad
from nlp_adagrad.run import RunState
from nlp_adagrad.train import train
from nlp_adagrad.vocab import EncodedSplit
from tests.helpers import make_config
from tests.test_reliability import metrics_without_timing
from tests.test_train import read_tb

ROWS, CLASSES, BATCH = 200, 4, 5


def _split(gen: torch.Generator, docs: int = 37) -> EncodedSplit:
    """Random documents of 0 to 40 tokens (37 of them: the last batch of 5 holds 2)."""
    lengths = torch.randint(0, 41, (docs,), generator=gen).numpy()
    lengths[3] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = torch.randint(0, ROWS, (int(offsets[-1]),), generator=gen).numpy()
    labels = torch.randint(0, CLASSES, (docs,), generator=gen).numpy()
    return EncodedSplit(ids=ids, offsets=offsets, labels=labels)


def _trainer(kind: str, mode: str, seed: int = 0, **adagrad):
    torch.manual_seed(seed)
    model = LogReg(ROWS, CLASSES, mode) if kind == "logreg" else FastText(ROWS, CLASSES, 8, mode)
    defaults = dict(lr=0.5, lr_decay=0.01, initial_accumulator_value=0.1, fused=True)
    return model, Adagrad(model.parameters(), **{**defaults, **adagrad})


def _batch_by_batch(model, optimizer, kernel, split, order, loss_sum) -> list[float]:
    losses = []
    for begin in range(0, len(order), BATCH):
        optimizer.zero_grad(set_to_none=True)
        batch = make_batch(split, order[begin : begin + BATCH])
        loss = model.loss_and_gradients(batch.ids, batch.offsets, batch.labels, kernel)
        optimizer.step()
        loss_sum += loss.double()
        losses.append(loss.item())
    return losses


def _everything(model, optimizer, loss_sum) -> list[torch.Tensor]:
    out = [loss_sum]
    for p in model.parameters():
        state = optimizer.state[p]
        grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
        out += [p.detach(), grad, state["sum"], torch.tensor(state["step"])]
        out += [state[k] for k in ("updates", "last_step") if k in state]
    return out


@pytest.mark.parametrize("kind", ["logreg", "fasttext"])
@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_fused_chunks_equal_batch_by_batch_steps_bit_for_bit(kind, mode):
    kernel = native_kernels("cpp", "task.kernel")
    gen = torch.Generator().manual_seed(3)
    split = _split(gen)
    order = torch.randperm(split.num_docs, generator=gen).numpy()
    model, optimizer = _trainer(kind, mode)
    loss_sum = torch.zeros((), dtype=torch.float64)
    expected = _batch_by_batch(model, optimizer, kernel, split, order, loss_sum)
    want = _everything(model, optimizer, loss_sum)

    model, optimizer = _trainer(kind, mode)
    fused = FusedSteps.for_run(model, optimizer, kernel, split)
    assert fused is not None
    state = RunState.fresh(torch.device("cpu"))
    losses, begin = [], 0
    for steps in (3, 1, 4):  # 8 batches: chunk boundaries must not matter
        chunk = fused(order[begin * BATCH : (begin + steps) * BATCH], BATCH)
        assert len(chunk.ends) == steps and np.all(np.diff(chunk.ends) >= 0)
        state.add_losses(chunk.losses.tolist())
        losses += chunk.losses.tolist()
        begin += steps
    assert losses == expected
    got = _everything(model, optimizer, state.loss_sum)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_a_chunks_reads_are_the_rates_at_their_steps_moved_rows_or_not():
    """Reads inside a call equal the optimizer's own read after the same step, bit for bit:
    rows no step touched since the call's last read keep that read's rate (adagrad.cpp's
    read_rates), the others are read again, with lr decay and never-updated (NaN) rows."""
    kernel = native_kernels("cpp", "task.kernel")
    gen = torch.Generator().manual_seed(5)
    split = _split(gen)
    order = torch.randperm(split.num_docs, generator=gen).numpy()
    rows = torch.arange(ROWS - 1, -1, -1)  # every row, in an order of their own
    model, optimizer = _trainer("fasttext", "mean")
    expected, counts = [], []
    for begin in range(0, 8 * BATCH, BATCH):
        optimizer.zero_grad(set_to_none=True)
        batch = make_batch(split, order[begin : begin + BATCH])
        model.loss_and_gradients(batch.ids, batch.offsets, batch.labels, kernel)
        optimizer.step()
        rates, updates = optimizer.rates_and_updates(model.embedding.weight, rows)
        expected.append(rates.numpy().copy())
        counts.append(updates.numpy().copy())
    moved = [np.mean(a != b) for a, b in itertools.pairwise(counts)]
    assert min(moved) > 0 and max(moved) < 0.5  # most rows kept their counts between reads
    assert np.isnan(expected[0]).any()

    model, optimizer = _trainer("fasttext", "mean")
    fused = FusedSteps.for_run(model, optimizer, kernel, split)
    fused.reads = Reads(torch.arange(1, 9), rows, torch.zeros(8, dtype=torch.bool), rows[:0])
    read, begin = [], 0
    for steps in (5, 3):  # a call's first read reads every row, the later ones what moved
        chunk = fused(order[begin * BATCH : (begin + steps) * BATCH], BATCH)
        assert chunk.read.steps.tolist() == list(range(begin + 1, begin + steps + 1))
        read += list(zip(chunk.read.rates.numpy(), chunk.read.updates.numpy()))
        begin += steps
    for (rates, updates), want, count in zip(read, expected, counts, strict=True):
        np.testing.assert_array_equal(updates, count)
        np.testing.assert_array_equal(rates, want)  # NaN where the other has NaN


def test_fused_steps_stop_after_the_first_non_finite_step_for_the_guard_to_name():
    kernel = native_kernels("cpp", "task.kernel")
    gen = torch.Generator().manual_seed(4)
    split = _split(gen, docs=15)  # 3 batches
    split.ids %= ROWS - 1
    doc = next(d for d in range(10, 15) if split.lengths[d])  # a document of the third batch
    split.ids[split.offsets[doc]] = ROWS - 1  # the only use of the last row
    model, optimizer = _trainer("fasttext", "mean")
    with torch.no_grad():
        model.embedding.weight[ROWS - 1] = float("inf")
    fused = FusedSteps.for_run(model, optimizer, kernel, split)
    order = np.arange(15)
    losses = fused(np.concatenate([order, order]), BATCH).losses
    assert len(losses) == 3 and not losses[-1].isfinite() and losses[:2].isfinite().all()
    assert optimizer.state[model.embedding.weight]["step"] == 3
    assert DivergenceGuard(model).after_step(losses[-1], 3) == "loss at step 3"


def test_fused_steps_apply_only_where_they_give_the_same_numbers():
    kernel = native_kernels("cpp", "task.kernel")
    split = _split(torch.Generator().manual_seed(5))
    model, _ = _trainer("fasttext", "mean")
    assert FusedSteps.for_run(model, _trainer("fasttext", "mean")[1], kernel, split) is None
    for unlike in (dict(weight_decay=0.1), dict(maximize=True), dict(fused=False)):
        model, optimizer = _trainer("fasttext", "mean", **unlike)
        assert FusedSteps.for_run(model, optimizer, kernel, split) is None, unlike
    model, optimizer = _trainer("fasttext", "mean")
    assert FusedSteps.for_run(model, optimizer, None, split) is None  # task.kernel=torch
    handle = optimizer.register_step_post_hook(lambda *args: None)
    assert FusedSteps.for_run(model, optimizer, kernel, split) is None
    handle.remove()
    assert FusedSteps.for_run(model, optimizer, kernel, split) is not None
    assert FusedSteps.for_run(model, SGD(model.parameters(), lr=0.1), kernel, split) is None


def test_a_run_with_fused_steps_writes_what_batch_by_batch_steps_write(tmp_path, monkeypatch):
    """Every event of the loop at its own step: log points, early and regular snapshots,
    evaluations and checkpoints at intervals that fall between and on one another."""
    overrides = [
        "data.max_examples=300",
        "model=fasttext",
        "trainer.epochs=3",
        "trainer.batch_size=8",
        "trainer.log_every=7",
        "trainer.eval_every=11",
        "trainer.checkpoint_every=13",
        "telemetry.every=20",
        "tokenizer.ngrams=2",
        "tokenizer.buckets=5000",
    ]
    calls = []
    call = FusedSteps.__call__

    def counted(self, docs, batch_size):
        calls.append(len(docs))
        first = self.optimizer.state[self.table]["step"] + 1
        chunk = call(self, docs, batch_size)
        last = first + len(chunk.losses) - 1  # snapshots read inside the call, not at its end
        read_inside.extend(step for step in chunk.read.steps.tolist() if step < last)
        return chunk

    read_inside = []
    monkeypatch.setattr(FusedSteps, "__call__", counted)
    fused = train(make_config(*overrides), tmp_path / "fused")
    assert calls and max(calls) > 8  # several steps per call did run
    assert len(read_inside) > 3
    monkeypatch.setattr(FusedSteps, "for_run", classmethod(lambda *args: None))
    stepped = train(make_config(*overrides), tmp_path / "stepped")
    assert fused["train/steps"] == stepped["train/steps"] > 60
    assert_same_run(tmp_path / "fused", tmp_path / "stepped")
    saved = sorted(p.name for p in (tmp_path / "stepped/checkpoints").glob("step_*"))
    assert saved and saved == sorted(
        p.name for p in (tmp_path / "fused/checkpoints").glob("step_*")
    )


def test_how_long_a_call_runs_changes_no_number(tmp_path, monkeypatch):
    """A call takes the steps that fill FUSED_CALL_SECONDS at the last call's pace: one step
    a call or calls to each epoch's end, the run is the same, bit for bit."""
    from nlp_adagrad.recipes import classify

    overrides = ["data.max_examples=300", "trainer.epochs=2", "trainer.batch_size=2"]
    call, calls = FusedSteps.__call__, []

    def counted(self, docs, batch_size):
        calls.append(len(docs) // batch_size)
        return call(self, docs, batch_size)

    monkeypatch.setattr(FusedSteps, "__call__", counted)
    steps = {}
    for name, seconds in (("one step", 1e-12), ("long", 60.0)):
        calls.clear()
        monkeypatch.setattr(classify, "FUSED_CALL_SECONDS", seconds)
        metrics = train(make_config(*overrides, "telemetry.every=50"), tmp_path / name)
        steps[name] = list(calls)
    epoch = metrics["train/steps"] // 2
    assert steps["one step"][0] == FIRST_CALL_STEPS and set(steps["one step"][1:]) == {1}
    assert steps["long"] == [FIRST_CALL_STEPS, epoch - FIRST_CALL_STEPS, epoch]
    assert_same_run(tmp_path / "one step", tmp_path / "long")


def assert_same_run(a, b) -> None:
    """Two run folders hold the same metrics, TensorBoard events (throughput apart) and
    final model and optimizer state, bit for bit."""
    assert metrics_without_timing(a) == metrics_without_timing(b)
    events_a, events_b = read_tb(a), read_tb(b)
    tags = [t for t in events_a.Tags()["scalars"] if "per_sec" not in t]
    assert tags == [t for t in events_b.Tags()["scalars"] if "per_sec" not in t]
    for tag in tags:
        assert [(e.step, e.value) for e in events_a.Scalars(tag)] == [
            (e.step, e.value) for e in events_b.Scalars(tag)
        ], tag
    hists = events_a.Tags()["histograms"]
    assert hists == events_b.Tags()["histograms"] and hists
    for tag in hists:
        assert [(e.step, e.histogram_value) for e in events_a.Histograms(tag)] == [
            (e.step, e.histogram_value) for e in events_b.Histograms(tag)
        ], tag
    x = torch.load(a / "checkpoints/last.pt", weights_only=True)
    y = torch.load(b / "checkpoints/last.pt", weights_only=True)
    torch.testing.assert_close(x["model"], y["model"], rtol=0, atol=0)
    torch.testing.assert_close(x["optimizer"]["state"], y["optimizer"]["state"], rtol=0, atol=0)


def test_snapshots_written_off_the_loop_hold_the_rates_of_their_step(tmp_path, monkeypatch):
    """The rates are read at the step; summarizing and writing them later, in the telemetry
    process (the default) or on a thread while training goes on (made slow here), changes
    nothing against writing each at once, in the trainer's own process; nor does the loop
    writing them itself (`InlineSink`, when training takes every core), no process started."""
    import time

    from nlp_adagrad import run, telemetry, telemetry_writer

    overrides = ["data.max_examples=300", "trainer.epochs=2", "trainer.checkpoint_every=9"]
    process = train(make_config(*overrides), tmp_path / "process")
    assert list((tmp_path / "process/tb").rglob("*.telemetry"))
    with monkeypatch.context() as every_core_trains:
        every_core_trains.setattr(telemetry_writer, "spare_core", lambda: False)
        every_core_trains.setattr(run, "spare_core", lambda: False)
        every_core_trains.setattr(telemetry_writer, "_Child", None)  # calling it would fail
        inline = train(make_config(*overrides), tmp_path / "inline")
    assert list((tmp_path / "inline/tb").rglob("*.telemetry"))
    write = telemetry.write_snapshot

    def slow(*args, **kwargs):
        time.sleep(0.02)
        return write(*args, **kwargs)

    monkeypatch.setattr(telemetry_writer, "write_snapshot", slow)
    monkeypatch.setattr(run, "open_sink", telemetry_writer.ThreadSink)
    later = train(make_config(*overrides), tmp_path / "later")
    monkeypatch.setattr(telemetry_writer, "write_snapshot", write)
    maybe = run.Snapshots.maybe

    def at_once(self, state, last):
        maybe(self, state, last)
        self.settle(state)

    monkeypatch.setattr(run.Snapshots, "maybe", at_once)
    now = train(make_config(*overrides), tmp_path / "now")
    assert process["eff_lr/first_snapshot_step"] == later["eff_lr/first_snapshot_step"] == 1
    assert now["eff_lr/first_snapshot_step"] == inline["eff_lr/first_snapshot_step"] == 1
    b = read_tb(tmp_path / "now")
    tags = [t for t in b.Tags()["scalars"] if t.startswith("eff_lr")]
    hists = b.Tags()["histograms"]
    assert len(tags) > 10 and hists
    expected = metrics_without_timing(tmp_path / "now")
    for run_dir in ("process", "later", "inline"):
        assert metrics_without_timing(tmp_path / run_dir) == expected
        a = read_tb(tmp_path / run_dir)
        assert tags == [t for t in a.Tags()["scalars"] if t.startswith("eff_lr")]
        for tag in tags:
            assert [(e.step, e.value) for e in a.Scalars(tag)] == [
                (e.step, e.value) for e in b.Scalars(tag)
            ], tag
        assert hists == a.Tags()["histograms"]
        for tag in hists:
            assert [(e.step, e.histogram_value) for e in a.Histograms(tag)] == [
                (e.step, e.histogram_value) for e in b.Histograms(tag)
            ], tag
    y = torch.load(tmp_path / "now/checkpoints/step_000000009.pt", weights_only=True)
    for run_dir in ("process", "later", "inline"):
        x = torch.load(tmp_path / run_dir / "checkpoints/step_000000009.pt", weights_only=True)
        assert x["telemetry_first"] == y["telemetry_first"] and x["telemetry_first"]


def test_the_fused_steps_keep_the_count_of_updated_tokens_a_snapshot_reads(tmp_path, monkeypatch):
    """eff_lr/tokens_updated at every snapshot: kept by the fused C++ steps (2 threads, each
    adding its rows) equals a pass over the counters, the bigram buckets after the words
    left out."""
    from nlp_adagrad.optim.base import RowOptimizer

    overrides = [
        "data.max_examples=300",
        "model=fasttext",
        "tokenizer.ngrams=2",
        "tokenizer.buckets=5000",
        "trainer.epochs=2",
        "trainer.num_threads=2",
    ]
    train(make_config(*overrides), tmp_path / "kept")
    monkeypatch.setattr(RowOptimizer, "track_updated_rows", lambda *args: None)
    train(make_config(*overrides), tmp_path / "counted")
    kept, counted = read_tb(tmp_path / "kept"), read_tb(tmp_path / "counted")
    tag = "eff_lr/tokens_updated"
    series = [(e.step, e.value) for e in kept.Scalars(tag)]
    assert series == [(e.step, e.value) for e in counted.Scalars(tag)]
    assert len(series) > 5 and series[0][1] < series[-1][1]


def test_log_windows_inside_a_call_close_at_their_last_steps_loss_and_time():
    """A call of 10 steps at 0.1 s each with log_every=3: the windows ending at steps 3, 6
    and 9 are closed from the call's own record (their losses' mean, 30 tokens in 0.3 s),
    and step 10 starts the next window."""
    from types import SimpleNamespace

    from tqdm import tqdm

    from nlp_adagrad.fused_steps import Chunk
    from nlp_adagrad.run import Intervals
    from nlp_adagrad.writer import NullWriter

    class Scalars(NullWriter):
        def __init__(self):
            self.points = []

        def scalars(self, values, step):
            self.points.append((step, values))

    writer, state = Scalars(), RunState.fresh(torch.device("cpu"))
    state.window_start = 100.0
    nothing = SimpleNamespace(maybe=lambda *args: None, settle=lambda *args: None)
    intervals = Intervals(
        make_config("trainer.log_every=3"),
        state,
        100,
        writer,
        tqdm(disable=True),
        nothing,
        None,  # checkpoints: every step was checked in the call
        lambda: None,
        SimpleNamespace(requested=False),
    )
    losses = torch.arange(1, 11, dtype=torch.float32)
    chunk = Chunk(losses, 100.0 + 0.1 * np.arange(1, 11))
    assert not intervals.after_chunk(chunk, np.full(10, 10), checked=True)
    assert [step for step, _ in writer.points] == [3, 6, 9]
    for (_, values), mean in zip(writer.points, (2.0, 5.0, 8.0)):
        assert values["train/loss"] == mean
        assert values["train/tokens_per_sec"] == pytest.approx(100.0)
    assert state.step == 10 and state.window_steps == 1 and float(state.loss_sum) == 10.0
    assert state.window_start == pytest.approx(100.9) and state.loop_seconds == pytest.approx(0.9)


def test_a_call_of_fused_steps_ends_at_the_next_event_or_its_limit():
    """`steps_to_next_event`, arithmetic, against asking every step: evaluations,
    checkpoints, snapshots (where the calls do not read them) and the run's end."""
    from types import SimpleNamespace

    from nlp_adagrad import telemetry
    from nlp_adagrad.run import Intervals

    for eval_every, checkpoint_every, every, in_chunks in itertools.product(
        (0, 7), (0, 13, 40), (0, 1, 20, 50), (False, True)
    ):
        trainer = SimpleNamespace(eval_every=eval_every, checkpoint_every=checkpoint_every)
        snapshots = SimpleNamespace(in_chunks=in_chunks, cfg=SimpleNamespace(every=every))
        intervals = Intervals.__new__(Intervals)
        intervals.trainer, intervals.snapshots, intervals.total_steps = trainer, snapshots, 600
        for step, limit in itertools.product(range(0, 600, 3), (1, 5, 64, 4096)):
            intervals.state = SimpleNamespace(step=step)
            due = [
                n
                for n in range(1, limit)
                if step + n >= 600
                or any(e and (step + n) % e == 0 for e in (eval_every, checkpoint_every))
                or (not in_chunks and telemetry.snapshot_due(step + n, every))
            ]
            expected = due[0] if due else limit
            assert intervals.steps_to_next_event(limit) == expected, (step, limit, trainer)
