"""Where telemetry snapshots are summarized and written, off the training loop.

A snapshot's rates are read at its step (`telemetry.read_snapshot`, one C++ pass for Adagrad);
turning them into medians, slopes and histograms (C++ through nlp_adagrad.rate_stats) and
writing those costs ~0.09 ms, ~0.4 ms with histograms (on every fifth; microbenchmarks).
On a thread that Python shares the interpreter with the loop, which waited for the GIL each
time it came back from a C++ chunk of steps (BBC News: +30% on a 0.05 s loop). So beside a
TensorBoard run a child process does it, `python -m nlp_adagrad.telemetry_writer`, without
torch (it starts in ~0.2 s): it writes the telemetry tags to an event file of its own in the
run's TensorBoard folder (`events.out.tfevents.*.telemetry`; TensorBoard reads every event
file of a folder as one run). When the training threads take every core there is no core for
it, and the loop writes the same file itself (`InlineSink`). Without TensorBoard (other
ranks, tests) a thread does it.

Either sink writes the snapshots in the order they came and hands back their summaries, in
that order, from `results()`, which waits for them.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

import numpy as np

from nlp_adagrad.errors import UserError
from nlp_adagrad.telemetry import Reading, TelemetrySpec, write_snapshot, write_snapshots
from nlp_adagrad.writer import EventsWriter, HeldBack, MetricWriter, TensorBoardWriter

EVENTS_SUFFIX = ".telemetry"
BLAS_LIBRARIES = ("OPENBLAS", "MKL", "OMP")
PIPE_BYTES = 1 << 20  # a burst of early snapshots (steps 1, 2, 3, 5, ...) fits: sends never wait


class SnapshotSink(Protocol):
    def submit(self, reading: Reading, step: int, histograms: bool, table: str | None) -> None: ...
    def results(self) -> list[dict[str, float]]: ...
    def close(self) -> None: ...


def open_sink(writer: MetricWriter, spec: TelemetrySpec) -> SnapshotSink:
    """Beside a TensorBoard writer, a process while a core is left over from training, else
    the loop itself (`InlineSink`); a thread for any other writer."""
    if isinstance(writer, TensorBoardWriter):
        if spare_core():
            return ProcessSink(writer.logdir, spec)
        import torch

        return InlineSink(writer.logdir, spec, threads=torch.get_num_threads())
    return ThreadSink(writer, spec)


def spare_core() -> bool:
    """Whether the training threads leave a core of this process's for the telemetry: those
    of every process torchrun started on this machine (`LOCAL_WORLD_SIZE`) count."""
    import torch

    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return torch.get_num_threads() * processes < len(os.sched_getaffinity(0))


class InlineSink:
    """Snapshots summarized and written by the loop, into the same event file as the
    process's. For runs whose threads take every core: there the process's work preempted a
    training thread mid-step and the step's other thread waited for it (synthetic corpus, 2
    threads on 2 cores: the process cost the loop 0.9 s against 0.3 s of its own work).

    Readings wait up to HOLD_SECONDS and are written together: right after a chunk of steps
    the summarizing code and data are out of cache, and a snapshot took 1.2 ms there against
    0.4 ms written after another. The event file is flushed every 30 s anyway.

    A burst's summaries are shared out over `threads`, the training threads: right after a
    chunk of steps their OpenMP team waits spinning for the next, so a second thread's share
    costs the loop nothing it was not already spending (`summarize_all` on a 2-thread run's
    readings: ~67 us a snapshot on one thread, ~47 us on two, logs and Python included).
    """

    def __init__(self, logdir: Path, spec: TelemetrySpec, threads: int = 1) -> None:
        self.spec = spec
        self._writer = EventsWriter(logdir, EVENTS_SUFFIX)
        self._held = HeldBack()
        self._done: list[dict[str, float]] = []
        self._threads = threads

    def submit(self, reading: Reading, step: int, histograms: bool, table: str | None) -> None:
        if self._held.add((reading, step, histograms, table)):
            self._write_held()

    def _write_held(self) -> None:
        held = self._held.take()
        self._done += write_snapshots(self._writer, self.spec, held, self._threads)
        self._writer.flush()

    def results(self) -> list[dict[str, float]]:
        self._write_held()
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        self._write_held()
        self._writer.close()


class ThreadSink:
    """Snapshots summarized and written by `writer` on one thread, in order."""

    def __init__(self, writer: MetricWriter, spec: TelemetrySpec) -> None:
        self.writer, self.spec = writer, spec
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="telemetry")
        self._pending: list[Future] = []

    def submit(self, reading: Reading, step: int, histograms: bool, table: str | None) -> None:
        self._pending.append(
            self._thread.submit(
                write_snapshot, self.writer, self.spec, reading, step, histograms, table
            )
        )

    def results(self) -> list[dict[str, float]]:
        done = [written.result() for written in self._pending]  # a failure surfaces here
        self._pending.clear()
        return done

    def close(self) -> None:
        self._thread.shutdown()


class TelemetryWriterStopped(UserError):
    """The telemetry process is gone (killed, out of memory): the run stops, keeping what it
    wrote; not bad input, so its folder stays (exit code 1)."""

    exit_code = 1


class ProcessSink:
    """Snapshots summarized and written by a child process into `logdir`, in order.

    Messages go out through a feeder thread, as multiprocessing.Queue's do: a send never
    makes the loop wait, not even while the process is still starting. The process flushes
    its event file after each burst of snapshots, so TensorBoard shows them ~1 s late.
    """

    def __init__(self, logdir: Path, spec: TelemetrySpec) -> None:
        self.spec = spec
        self._child = _take_child()
        self._outbox = Outbox()
        self._send_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, name="telemetry-feeder", daemon=True)
        self._feeder.start()
        self._submitted = 0
        # the token strings and per-token bucket names stay here (a 10^6-word vocabulary's
        # ~50 MB): summaries use counts and the views' positions
        summarizing = replace_fields(spec, tokens=[], buckets=spec.buckets[:0])
        self._outbox.put(("open", str(logdir), summarizing))

    def submit(self, reading: Reading, step: int, histograms: bool, table: str | None) -> None:
        exact = reading.view is self.spec.full
        self._outbox.hold((reading, exact, step, histograms, table))
        self._submitted += 1

    def results(self) -> list[dict[str, float]]:
        if not self._submitted:
            return []
        self._outbox.put(("results",))
        reply = self._receive()
        if isinstance(reply, str):  # a bug: the child's traceback
            raise RuntimeError(f"the telemetry writer process failed:\n{reply}")
        self._submitted = 0
        return reply

    def close(self) -> None:
        """Flush and stop the process (its event file is complete when this returns)."""
        self._outbox.put(("close",))
        self._outbox.put(("stop",))
        self._feeder.join()
        with contextlib.suppress(TelemetryWriterStopped):
            self._receive()  # "closed": the events are on disk
        self._child.close()

    def _feed(self) -> None:
        """Send the outbox's messages in order, each run of held snapshots as one
        (`send_snapshots`)."""
        while True:
            try:
                for kind, run in itertools.groupby(self._outbox.take(), key=lambda m: m[0]):
                    if kind == "stop":
                        return
                    if kind == "snapshot":
                        send_snapshots(self._child.outbox, [snapshot for _, snapshot in run])
                        continue
                    for message in run:
                        self._child.outbox.send(message)
            except OSError as e:  # the process is gone: `_receive` says so
                self._send_error = e
                return

    def _receive(self):
        try:
            return self._child.inbox.recv()
        except (EOFError, OSError) as e:
            code = self._child.process.wait()
            raise TelemetryWriterStopped(
                f"the telemetry writer process stopped (exit code {code}; a negative code is "
                "the signal that killed it, 9 often the out-of-memory killer); the run's "
                "events and checkpoints so far are kept: resume it with trainer.resume"
            ) from (self._send_error or e)


class Outbox:
    """Messages for ProcessSink's feeder thread, in order. Snapshots are held: the feeder
    takes them once the oldest has waited HOLD_SECONDS, or with the next other message.
    Sent one by one, they kept the pipe, the process and its page faults busy beside the
    loop all through it (the synthetic telemetry config: +12% against `telemetry.every=0`,
    +2% sent together). Only the first held snapshot wakes the feeder, to start its clock:
    a queue woke it for each, and a submit cost the loop ~10 us instead of ~2 us (README,
    "Telemetry against a fast loop")."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._due: list[tuple] = []  # to pass on now: up to the last message not a snapshot
        self._held = HeldBack()  # the snapshots after those

    def hold(self, snapshot: tuple) -> None:
        """Hold a snapshot: (reading, exact, step, histograms, table)."""
        with self._changed:
            self._held.add(("snapshot", snapshot))
            if len(self._held) == 1:  # the feeder starts its clock
                self._changed.notify()

    def put(self, message: tuple) -> None:
        """Pass a message on at once, after the snapshots held before it."""
        with self._changed:
            self._due += [*self._held.take(), message]
            self._changed.notify()

    def take(self) -> list[tuple]:
        """Wait until messages are due (up to one that is not a snapshot, or snapshots whose
        oldest was held HOLD_SECONDS), and return them in order."""
        with self._changed:
            while not self._due and (left := self._held.seconds_left()) != 0:
                self._changed.wait(left)  # None: until a message comes
            taken, self._due = self._due or self._held.take(), []
            return taken


class _Child:
    """A `python -m nlp_adagrad.telemetry_writer` process and its two pipes."""

    def __init__(self) -> None:
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        with contextlib.suppress(AttributeError, OSError):  # Linux: 16 snapshots, not one
            import fcntl

            fcntl.fcntl(to_child, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(from_parent), str(to_parent)],
            pass_fds=(from_parent, to_parent),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the trainer, which closes this in order
            # one BLAS thread, as in the trainer (nlp_adagrad.run.start): a histogram's dot
            # product then sums in the same order, and no spinning thread takes its core
            env={**os.environ, **{f"{lib}_NUM_THREADS": "1" for lib in BLAS_LIBRARIES}},
        )
        os.close(from_parent)
        os.close(to_parent)
        self.outbox = Connection(to_child, readable=False)
        self.inbox = Connection(from_child, writable=False)

    def close(self) -> None:
        self.outbox.close()
        self.inbox.close()
        self.process.wait()


_ahead: _Child | None = None


def start_ahead() -> None:
    """Start the next ProcessSink's process now: its ~0.2 s start-up then overlaps loading
    the data, not the end of a short run (BBC News trains in 0.05 s)."""
    global _ahead
    if _ahead is None or _ahead.process.poll() is not None:
        _ahead = _Child()


def _take_child() -> _Child:
    global _ahead
    child, _ahead = _ahead, None
    return child if child is not None and child.process.poll() is None else _Child()


def replace_fields(spec: TelemetrySpec, **fields) -> TelemetrySpec:
    """A shallow copy of `spec` with some fields replaced (dataclasses.replace would run
    __post_init__ again, resetting the sample view)."""
    out = copy.copy(spec)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


def send_snapshots(outbox: Connection, snapshots: list[tuple]) -> None:
    """(reading, exact, step, histograms, table) tuples as one message that describes them,
    then each array's bytes as they lie in memory (`receive_snapshots` takes them). Pickled
    in one message, a burst's arrays were copied twice into new memory under the interpreter
    lock the loop waits for: a 15,000-step loop took +15% against `telemetry.every=0`, +6 to
    +9% sent this way (README, "Telemetry against a fast loop")."""
    described, arrays = [], []
    for reading, *rest in snapshots:
        parts = (reading.eff_lr, reading.updates, reading.coordinates)
        layouts = [None if a is None else (a.dtype.str, a.shape) for a in parts]
        described.append((*rest, reading.tokens_updated, layouts))
        arrays += [np.ascontiguousarray(a) for a in parts if a is not None]
    outbox.send(("snapshots", described))
    for array in arrays:
        outbox.send_bytes(array.reshape(-1).view(np.uint8))


def receive_snapshots(inbox: Connection, spec: TelemetrySpec, described: list) -> list[tuple]:
    """What `send_snapshots` sent, as (reading, step, histograms, table) tuples."""
    snapshots = []
    for exact, step, histograms, table, tokens_updated, layouts in described:
        eff_lr, updates, coordinates = (_received(inbox, layout) for layout in layouts)
        view = spec.full if exact else spec.sample
        reading = Reading(view, eff_lr, updates, tokens_updated, coordinates)
        snapshots.append((reading, step, histograms, table))
    return snapshots


def _received(inbox: Connection, layout: tuple | None) -> np.ndarray | None:
    """The next array off the pipe, of `layout` (dtype, shape); None where none was sent."""
    if layout is None:
        return None
    array = np.empty(layout[1], np.dtype(layout[0]))
    inbox.recv_bytes_into(array.reshape(-1).view(np.uint8))
    return array


def serve(inbox: Connection, outbox: Connection) -> None:
    """The child's loop: a run's folder and spec, then snapshots in, events written, and
    summaries out when asked."""
    writer: EventsWriter | None = None
    spec: TelemetrySpec | None = None
    summaries: list[dict[str, float]] = []
    failure = closing = None
    try:
        while not closing:
            try:
                message = inbox.recv()
            except (EOFError, OSError):  # the trainer is gone, maybe mid-message: keep what
                return  # was written
            kind = message[0]
            closing = kind == "close"
            if kind == "open":
                writer, spec = EventsWriter(Path(message[1]), EVENTS_SUFFIX), message[2]
            elif kind == "snapshots":
                snapshots = receive_snapshots(inbox, spec, message[1])  # even after a failure
                try:
                    if failure is None:
                        summaries += write_snapshots(writer, spec, snapshots)
                        writer.flush()
                except Exception:
                    failure = traceback.format_exc()
            elif kind == "results":
                outbox.send(failure or summaries)
                summaries = []
    finally:
        if writer is not None:
            writer.close()
    outbox.send("closed")


if __name__ == "__main__":
    # the trainer says it too, formatted, where NumPy computes the summaries (rate_stats)
    logging.getLogger("nlp_adagrad.rate_stats").disabled = True
    serve(
        Connection(int(sys.argv[1]), writable=False),
        Connection(int(sys.argv[2]), readable=False),
    )
    # the events are closed and on disk: skip tearing the interpreter down (~50 ms of the
    # trainer's wait for this process at the end of every run)
    os._exit(0)
