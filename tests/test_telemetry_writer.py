"""The telemetry sinks: the child process writes what the in-process thread writes, binned as
torch's SummaryWriter bins, and a process that dies stops the run with one line."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nlp_adagrad import telemetry
from nlp_adagrad.config import TelemetryConfig
from nlp_adagrad.optim import Adagrad
from nlp_adagrad.telemetry_writer import (
    InlineSink,
    Outbox,
    ProcessSink,
    TelemetryWriterStopped,
    ThreadSink,
    open_sink,
)
from nlp_adagrad.writer import TensorBoardWriter, histograms_summary
from tests.helpers import at_thread_counts


def test_histograms_count_each_finite_value_in_its_uniform_bin():
    """Bins `width` wide on the multiples of `width`, each (previous limit, limit] as
    TensorBoard reads it, an empty one first; counted against an explicit reference."""
    rng = np.random.default_rng(0)
    width = 0.05
    cases = {
        "log rates": np.log10(rng.uniform(1e-6, 1.0, size=5000)),
        "normal": rng.normal(size=1000),
        "one value": np.array([0.5]),
        "on the edges": np.array([0.0, -0.05, 0.05, 0.1, 0.1, -1.0]),
        "with non-finite": np.array([np.nan, np.inf, -np.inf, -2.0, 3.0]),
        "none finite": np.array([np.nan, np.inf]),  # no histogram
        "empty": np.zeros(0),
    }
    ours = {v.tag: v.histo for v in histograms_summary(cases, width).value}
    assert set(ours) == set(cases) - {"none finite", "empty"}
    for tag, histo in ours.items():
        v = cases[tag][np.isfinite(cases[tag])]
        limits = np.array(histo.bucket_limit)
        steps = limits / width
        assert np.allclose(steps, np.round(steps)) and np.allclose(np.diff(limits), width), tag
        # every value in (previous limit, limit]; by the bins' integer indices, not floats
        index = np.round(steps).astype(int)
        expected = [np.sum(np.ceil(v / width) == k) for k in index]
        assert list(histo.bucket) == expected and histo.bucket[0] == 0, tag
        assert limits[0] < v.min() <= limits[1] and limits[-2] < v.max() <= limits[-1], tag
        assert (histo.num, histo.min, histo.max) == (len(v), v.min(), v.max()), tag
        np.testing.assert_allclose([histo.sum, histo.sum_squares], [v.sum(), v.dot(v)], rtol=1e-12)
    edges = ours["on the edges"]
    assert dict(zip(np.round(np.array(edges.bucket_limit) / width).astype(int), edges.bucket)) == {
        -21: 0,
        -20: 1,
        **{k: 0 for k in range(-19, -1)},
        -1: 1,
        0: 1,
        1: 1,
        2: 2,
    }


def test_event_records_are_checksummed_as_tensorboard_checksums_them(tmp_path):
    """google-crc32c's masked CRC-32C in place of TensorBoard's pure-Python one: the same
    numbers, and what the writers use (the readers check every record with TensorBoard's)."""
    import os

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    from tensorboard.summary.writer import record_writer

    writer = TensorBoardWriter(tmp_path)
    writer.close()
    ours = record_writer.masked_crc32c
    assert ours is not masked_crc32c
    for size in (0, 1, 7, 64, 40_000):
        data = os.urandom(size)
        assert ours(data) == masked_crc32c(data), size


def _snapshots(num_tokens: int = 20_000, dim: int = 4):
    """A spec over a Zipf vocabulary (sampled: 5,000 of 20,000) and readings of an Adagrad
    table at steps 1, 2, 3 and 10 (histograms at 1 and 10), then the exact one."""
    rng = np.random.default_rng(0)
    counts = np.sort(np.minimum(rng.zipf(1.3, num_tokens), 10**6))[::-1].copy()
    tokens = [f"t{i}" for i in range(num_tokens)]
    spec, _ = telemetry.make_spec(tokens, counts, TelemetryConfig(sample_size=5_000), seed=0)
    table = torch.nn.Parameter(torch.randn(num_tokens, dim))
    optimizer = Adagrad([table], lr=0.5)
    readings = []
    for step in range(1, 11):
        ids = np.concatenate([rng.integers(0, 2_000, 2_500), rng.integers(0, num_tokens, 500)])
        rows = torch.from_numpy(np.unique(ids))
        values = torch.randn(len(rows), dim)
        table.grad = torch.sparse_coo_tensor(rows[None], values, table.shape, check_invariants=True)
        optimizer.step()
        if step in (1, 2, 3, 10):
            histograms = step in (1, 10)
            reading = telemetry.read_snapshot(spec, optimizer, table, histograms)
            readings.append((reading, step, histograms))
    readings.append((telemetry.read_snapshot(spec, optimizer, table, exact=True), 10, True))
    return spec, readings


def _events(logdir):
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    scalars = {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}
    histograms = {
        t: [(e.step, e.histogram_value) for e in events.Histograms(t)]
        for t in events.Tags()["histograms"]
    }
    return scalars, histograms


def test_the_process_and_the_loop_write_and_summarize_what_the_thread_does(tmp_path):
    spec, readings = _snapshots()
    assert spec.sample is not spec.full and readings[0][0].coordinates is not None
    process = ProcessSink(tmp_path / "process", spec)
    inline = InlineSink(tmp_path / "inline", spec, threads=2)  # its summaries on two threads
    writer = TensorBoardWriter(tmp_path / "thread")
    thread = ThreadSink(writer, spec)
    for sink in (process, inline, thread):
        for reading, step, histograms in readings[:3]:
            sink.submit(reading, step, histograms, None)
    first = process.results()
    np.testing.assert_equal(first, thread.results())  # NaN (a bucket not yet updated) == NaN
    np.testing.assert_equal(first, inline.results())
    assert len(first) == 3 and np.isfinite(first[0]["eff_lr/rare_to_common"])
    for sink in (process, inline, thread):
        for reading, step, histograms in readings[3:]:
            sink.submit(reading, step, histograms, "word")
    last = process.results()
    np.testing.assert_equal(last, thread.results())
    np.testing.assert_equal(last, inline.results())
    for sink in (process, inline, thread):
        sink.close()
    writer.close()
    for folder in ("process", "inline"):
        assert list((tmp_path / folder).glob("events.out.tfevents.*.telemetry"))
    scalars, histograms = _events(tmp_path / "process")
    assert (scalars, histograms) == _events(tmp_path / "thread") == _events(tmp_path / "inline")
    assert len(scalars["eff_lr/rare"]) == 3 and len(scalars["eff_lr/word/rare"]) == 2
    assert {"eff_lr_log10_hist/count_1e0", "eff_lr_log10_coord_hist/count_1e0"} <= set(histograms)


def test_the_loop_holds_its_snapshots_back_at_most_the_hold_time(tmp_path, monkeypatch):
    """InlineSink writes its readings together (written right after a chunk of steps, a
    snapshot found its code and data out of cache): held until the hold time has passed
    since the first, or until results() or close() asks, and always in order."""
    from nlp_adagrad import writer

    spec, readings = _snapshots()
    monkeypatch.setattr(writer, "HOLD_SECONDS", 3600)
    held = InlineSink(tmp_path / "held", spec)
    for reading, step, histograms in readings[:3]:
        held.submit(reading, step, histograms, None)
    assert not held._done and len(held._held) == 3  # nothing summarized yet
    summaries = held.results()
    assert not held._held and len(summaries) == 3
    monkeypatch.setattr(writer, "HOLD_SECONDS", 0)
    at_once = InlineSink(tmp_path / "at_once", spec)
    for reading, step, histograms in readings[:3]:
        at_once.submit(reading, step, histograms, None)
        assert not at_once._held  # the hold time has passed: written at once
    np.testing.assert_equal(at_once.results(), summaries)
    monkeypatch.setattr(writer, "HOLD_SECONDS", 3600)
    for reading, step, histograms in readings[3:]:
        held.submit(reading, step, histograms, "word")
        at_once.submit(reading, step, histograms, "word")
    held.close()  # writes what it still holds
    at_once.close()
    assert _events(tmp_path / "held") == _events(tmp_path / "at_once")
    scalars, _ = _events(tmp_path / "held")
    assert [s for s, _ in scalars["eff_lr/rare"]] == [1, 2, 3]
    assert [s for s, _ in scalars["eff_lr/word/rare"]] == [10, 10]


def _written_steps(logdir, tag: str = "eff_lr/rare") -> list[int] | None:
    """Steps of `tag` on disk now; None before the event file exists."""
    if not list(logdir.glob("events.out.tfevents.*")):
        return None
    return [step for step, _ in _events(logdir)[0].get(tag, [])]


def _wait_for(check, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while (result := check()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def test_the_process_gets_snapshots_together_and_they_are_on_disk_within_the_hold_time(
    tmp_path, monkeypatch
):
    """ProcessSink's feeder holds snapshots back and sends them as one message, once the
    oldest has waited HOLD_SECONDS or when results() asks; the process flushes its event
    file after each burst, so TensorBoard shows them without waiting for the run's end.
    The loop's sink (InlineSink) flushes after each burst too."""
    from nlp_adagrad import writer

    spec, readings = _snapshots()
    monkeypatch.setattr(writer, "HOLD_SECONDS", 3600)
    held = ProcessSink(tmp_path / "held", spec)
    for reading, step, histograms in readings[:2]:
        held.submit(reading, step, histograms, None)
    time.sleep(0.3)
    assert _wait_for(lambda: _written_steps(tmp_path / "held")) == []  # not sent yet
    assert len(held.results()) == 2
    assert _written_steps(tmp_path / "held") == [1, 2]  # flushed before its reply
    held.close()

    monkeypatch.setattr(writer, "HOLD_SECONDS", 0.2)
    soon = ProcessSink(tmp_path / "soon", spec)
    for reading, step, histograms in readings[:2]:
        soon.submit(reading, step, histograms, None)
    # no results() call: the hold time alone sends them, and the process flushes them
    assert _wait_for(lambda: _written_steps(tmp_path / "soon") or None) == [1, 2]
    soon.close()

    monkeypatch.setattr(writer, "HOLD_SECONDS", 0)
    inline = InlineSink(tmp_path / "inline", spec)
    inline.submit(*readings[0], None)
    assert _written_steps(tmp_path / "inline") == [1]  # written and flushed by the loop
    inline.close()


def test_the_feeder_is_woken_once_a_burst_and_gets_messages_in_order(monkeypatch):
    """ProcessSink's outbox: a held snapshot wakes the feeder only when it is the first (a
    wake per snapshot cost the loop ~10 us a submit); the feeder takes them once the oldest
    has waited HOLD_SECONDS, or with the next other message, always in order."""
    import threading

    from nlp_adagrad import writer

    wakes = []

    class CountingCondition(threading.Condition):
        def notify(self, n=1):
            wakes.append(n)
            super().notify(n)

    monkeypatch.setattr(threading, "Condition", CountingCondition)
    monkeypatch.setattr(writer, "HOLD_SECONDS", 3600)
    outbox = Outbox()
    for step in (1, 2, 3):
        outbox.hold(step)
    assert len(wakes) == 1  # the first snapshot only
    taken = []
    feeder = threading.Thread(target=lambda: taken.append(outbox.take()))
    feeder.start()
    feeder.join(timeout=0.3)
    assert feeder.is_alive() and not taken  # held: the hold time has not passed
    outbox.put(("results",))
    feeder.join(timeout=10)
    outbox.hold(4)  # after the message: held with a clock of its own
    assert taken == [[("snapshot", 1), ("snapshot", 2), ("snapshot", 3), ("results",)]]
    monkeypatch.setattr(writer, "HOLD_SECONDS", 0)
    assert outbox.take() == [("snapshot", 4)]  # its hold time has passed


def test_a_snapshot_the_process_cannot_write_is_reported_and_the_rest_still_read(tmp_path):
    """A failure in the process (a bug: here a reading of the wrong length) comes back from
    results() as its traceback, and the arrays sent after it are still read off the pipe:
    the process answers and closes instead of reading array bytes as messages."""
    from dataclasses import replace

    spec, readings = _snapshots()
    sink = ProcessSink(tmp_path, spec)
    broken = replace(readings[0][0], eff_lr=readings[0][0].eff_lr[:3])
    sink.submit(broken, 1, False, None)
    with pytest.raises(RuntimeError, match="telemetry writer process failed"):
        sink.results()
    for reading, step, histograms in readings[1:]:  # a later burst, its arrays after it
        sink.submit(reading, step, histograms, None)
    with pytest.raises(RuntimeError, match="telemetry writer process failed"):
        sink.results()
    sink.close()
    assert sink._child.process.returncode == 0


def test_a_telemetry_process_that_dies_stops_the_run_with_one_line(tmp_path):
    spec, readings = _snapshots()
    sink = ProcessSink(tmp_path, spec)
    sink._child.process.kill()
    sink.submit(*readings[0], None)
    with pytest.raises(TelemetryWriterStopped, match=r"exit code -9.*resume it") as stopped:
        sink.results()
    assert stopped.value.exit_code == 1 and "\n" not in str(stopped.value)
    sink.close()  # still closes


def test_the_telemetry_process_leaves_when_its_trainer_does(tmp_path):
    """A trainer that dies without closing (SIGKILL) closes the pipe: the process writes what
    it has and exits, never lingering."""
    spec, readings = _snapshots()
    sink = ProcessSink(tmp_path, spec)
    sink.submit(*readings[0], None)
    sink._outbox.put(("stop",))  # the feeder stops; the pipes close as a dead trainer's would
    sink._feeder.join()
    sink._child.outbox.close()
    assert sink._child.process.wait(timeout=30) == 0
    scalars, _ = _events(tmp_path)
    assert [step for step, _ in scalars["eff_lr/rare"]] == [1]


def test_the_telemetry_process_never_imports_torch():
    code = "import sys, nlp_adagrad.telemetry_writer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_loop_writes_the_telemetry_when_training_takes_every_core(tmp_path, monkeypatch):
    """A process while a core is spare; the loop itself once the training threads take every
    core (there the process's work preempted a training thread mid-step)."""
    import os

    spec, _ = _snapshots()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    writer = TensorBoardWriter(tmp_path)

    def sink_kind():
        sink = open_sink(writer, spec)
        sink.close()
        return type(sink)

    assert at_thread_counts(sink_kind, counts=(1, 2, 3)) == [ProcessSink, InlineSink, InlineSink]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks here take both cores
    assert at_thread_counts(sink_kind, counts=(1,)) == [InlineSink]
    writer.close()


def test_held_scalars_keep_their_time_and_order_and_reach_the_file_by_close(tmp_path):
    """TensorBoardWriter hands scalar events to SummaryWriter's thread in bunches (a hand-over
    per log point cost the loop its interpreter lock): each keeps the time it was logged, and
    a histogram or the close hands over everything logged before it."""
    import time

    writer = TensorBoardWriter(tmp_path)
    writer.scalar("train/loss", 1.0, 1)
    logged = time.time()
    time.sleep(0.2)
    writer.scalars({"train/loss": 0.5, "train/tokens_per_sec": 10.0, "nan": float("nan")}, 2)
    writer.histograms({"h": np.arange(5.0)}, 2, 0.5)
    writer.scalar("train/loss", 0.25, 3)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert loss[0].wall_time <= logged < loss[1].wall_time
    assert [e.step for e in events.Scalars("train/tokens_per_sec")] == [2]
    assert "nan" not in events.Tags()["scalars"] and events.Tags()["histograms"] == ["h"]
