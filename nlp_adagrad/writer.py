"""Where metrics go: a small writer interface, TensorBoard behind it, and a do-nothing default.

Training code calls the writer unconditionally; processes that must not write (non-zero ranks,
tests that do not care) get `NullWriter`, so no code asks "is logging on?".
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nlp_adagrad import rate_stats


class MetricWriter(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def histograms(self, values: dict[str, np.ndarray], step: int, width: float) -> None: ...
    def image(self, tag: str, png: bytes, step: int) -> None: ...
    def text(self, tag: str, text: str, step: int) -> None: ...
    def custom_layout(self, layout: dict) -> None: ...
    def hparams(
        self, hparams: dict[str, Any], metrics: dict[str, float], varied: set[str]
    ) -> None: ...
    def embedding(
        self, vectors: np.ndarray, metadata: list[list[str]], header: list[str], tag: str, step: int
    ) -> None: ...
    def close(self) -> None: ...


class NullWriter:
    """Accepts everything, writes nothing."""

    def scalar(self, tag, value, step):
        pass

    def scalars(self, values, step):
        pass

    def histograms(self, values, step, width):
        pass

    def image(self, tag, png, step):
        pass

    def text(self, tag, text, step):
        pass

    def custom_layout(self, layout):
        pass

    def hparams(self, hparams, metrics, varied):
        pass

    def embedding(self, vectors, metadata, header, tag, step):
        pass

    def close(self):
        pass


HOLD_SECONDS = 1.0  # longest a scalar event or a loop-written snapshot is held back
# sets of scalar tags whose Event an EventsWriter keeps to write again: a snapshot's tags
# change only while buckets and tokens get their first rates (a model with several tables
# writes a set per table)
MAX_REUSED_EVENTS = 16


class HeldBack:
    """Items held back to be handed over together, the oldest at most HOLD_SECONDS: each
    hand-over of one item by itself cost the loop more than the item (writer.py's scalars,
    telemetry_writer's loop-written snapshots)."""

    def __init__(self) -> None:
        self._items: list = []
        self._since = 0.0

    def add(self, item) -> bool:
        """Hold `item`; True when the oldest held one has waited HOLD_SECONDS."""
        now = time.monotonic()
        if not self._items:
            self._since = now
        self._items.append(item)
        return now - self._since >= HOLD_SECONDS

    def seconds_left(self) -> float | None:
        """How long until the oldest held item has waited HOLD_SECONDS; None when none is."""
        if not self._items:
            return None
        return max(0.0, self._since + HOLD_SECONDS - time.monotonic())

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> list:
        """Everything held, in the order it came; nothing is held after."""
        items, self._items = self._items, []
        return items


def scalars_summary(values: dict[str, float]):
    """One Summary holding every finite scalar (the Summary.Value add_scalar builds, without
    its NumPy round trip per tag), or None when none is finite."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    parts = [
        Summary.Value(tag=tag, simple_value=float(v))
        for tag, v in values.items()
        if math.isfinite(v)
    ]
    return Summary(value=parts) if parts else None


def histograms_summary(values: dict[str, np.ndarray], width: float):
    """One Summary holding a histogram per tag of its finite values, in bins `width` wide with
    edges on the multiples of `width` (a value v falls in the bin whose limit is
    ceil(v / width) * width: TensorBoard reads each bin as (previous limit, limit]), or None
    when no tag has one. Not SummaryWriter.add_histogram's bins: those grow 1.1x from 1e-12,
    made for raw values; a log10 rate near -6 got a bin 0.6 decades wide and one near -0.1 a
    bin of 0.01, and bisecting 1,549 edges was 60% of a histogram snapshot's cost."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    summary = Summary()
    for tag, binned in zip(values, rate_stats.histograms(list(values.values()), width)):
        if binned is None:
            continue
        # set in place in the Summary: a HistogramProto built first was copied into it
        histogram = summary.value.add(tag=tag).histo
        histogram.min, histogram.max, histogram.num = binned.low, binned.high, binned.num
        histogram.sum, histogram.sum_squares = binned.sum, binned.sum_squares
        # an empty bin on the left: TensorBoard reads right bin limits only
        limits = np.arange(binned.first - 1, binned.first + len(binned.counts)) * width
        histogram.bucket_limit.extend(limits.tolist())
        # floats: the proto's doubles converted from Python ints cost 5x more (~65 us)
        histogram.bucket.append(0.0)
        histogram.bucket.extend(binned.counts.tolist())
    return summary if summary.value else None


def fast_record_checksums() -> None:
    """TensorBoard without TensorFlow checksums every event record in pure Python (~0.1 us a
    byte: 4 ms for a 40 KB histogram event, most of what the telemetry process spent); this
    puts the same masked CRC-32C through google-crc32c's C code in its place (tested equal)."""
    import google_crc32c
    from tensorboard.summary.writer import record_writer

    def masked_crc32c(data) -> int:
        x = google_crc32c.value(bytes(data))
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    record_writer.masked_crc32c = masked_crc32c


class EventsWriter:
    """Scalars and histograms in an event file of their own, written where they are made,
    with TensorBoard's own RecordWriter and protos: what the telemetry process writes with
    (it never imports torch). Not through TensorBoard's EventFileWriter, which hands each
    event to a writer thread: its wake-ups cost ~0.15 ms a snapshot, a fifth of writing one
    (0.64 -> 0.48 ms, microbenchmark), and it flushes every 30 s. `flush` puts what was
    written on disk: the telemetry sinks call it after each burst of snapshots."""

    def __init__(self, logdir: Path, suffix: str) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        fast_record_checksums()
        logdir.mkdir(parents=True, exist_ok=True)
        # TensorBoard's own file name pattern: it reads every file with "tfevents" in it
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        file = logdir / f"{name}.{next(_EVENT_FILES)}{suffix}"
        self._records = RecordWriter(open(file, "wb"))  # noqa: SIM115 (closed by close())
        self._scalar_events: dict[tuple[str, ...], Any] = {}  # tags -> their last Event
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def _add(self, summary, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        if summary is not None:
            self._write(Event(summary=summary, step=step, wall_time=time.time()))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """The finite ones as one event. The Event of the same tags as an earlier call is
        that one's, its step, time and values set in place (it was written out as it was
        made): a snapshot's 59 Summary.Value messages took ~30 us to build, ~7 us to set, and
        an Event around a kept Summary ~3 us to copy it in."""
        finite = {tag: value for tag, value in values.items() if math.isfinite(value)}
        if not finite:
            return
        tags = tuple(finite)
        event = self._scalar_events.get(tags)
        if event is None:
            from tensorboard.compat.proto.event_pb2 import Event

            if len(self._scalar_events) == MAX_REUSED_EVENTS:
                self._scalar_events.clear()
            event = self._scalar_events[tags] = Event(summary=scalars_summary(finite))
        else:
            for value, number in zip(event.summary.value, finite.values()):
                value.simple_value = number
        event.step, event.wall_time = step, time.time()
        self._write(event)

    def histograms(self, values: dict[str, np.ndarray], step: int, width: float) -> None:
        self._add(histograms_summary(values, width), step)

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


_EVENT_FILES = itertools.count()


class TensorBoardWriter:
    """torch.utils.tensorboard's SummaryWriter (no TensorFlow needed)."""

    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        fast_record_checksums()
        # a deep queue and rare flushes keep the writer thread off the training thread's lock
        self._writer = SummaryWriter(log_dir=str(logdir), max_queue=1000, flush_secs=30)
        self.logdir = Path(logdir)
        self._held = HeldBack()  # scalar events not yet handed to the writer thread

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars({tag: value}, step)  # a bucket with no updated token yet has no value

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Many scalars as one event: a telemetry snapshot costs one event, not dozens.

        Each still reads back as its own tag (not `add_scalars`, which makes a run per key).
        Events are held for up to HOLD_SECONDS and handed over together: each hand-over
        wakes SummaryWriter's writer thread, which then takes the interpreter lock from the
        loop (~0.15 ms a log point, a quarter of a small classifier's loop at log_every=10).
        SummaryWriter flushes its file every 30 s, so a reader waits for that anyway.
        """
        from tensorboard.compat.proto.event_pb2 import Event

        summary = scalars_summary(values)
        if summary is not None and self._held.add(
            Event(summary=summary, step=step, wall_time=time.time())
        ):
            self._hand_over()

    def _hand_over(self) -> None:
        """The held scalar events to the writer thread, before anything written after them."""
        for event in self._held.take():
            self._writer.file_writer.add_event(event, walltime=event.wall_time)

    def histograms(self, values: dict[str, np.ndarray], step: int, width: float) -> None:
        """Histograms as one event (`histograms_summary`: add_histogram's per-call event and
        bookkeeping were 60% of a histogram's cost)."""
        summary = histograms_summary(values, width)
        if summary is not None:
            self._hand_over()
            self._writer.file_writer.add_summary(summary, step)

    def image(self, tag: str, png: bytes, step: int) -> None:
        """A PNG image (a figure: nlp_adagrad.figures.png), as add_image stores it, without
        decoding and encoding it a second time."""
        import io

        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        with Image.open(io.BytesIO(png)) as picture:  # reads the header, not the pixels
            width, height = picture.size
            channels = len(picture.getbands())
        image = Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=png
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self._hand_over()
        self._writer.file_writer.add_summary(summary, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self._hand_over()
        self._writer.add_text(tag, text, step)

    def custom_layout(self, layout: dict) -> None:
        self._hand_over()
        self._writer.add_custom_scalars(layout)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float], varied: set[str]) -> None:
        """HParams in this run's own event file; the metrics are scalar tags it already has.

        `varied` (the keys the user set) are marked `differs`, which TensorBoard sorts first
        and ticks (its table shows the first five hparams and metrics). SummaryWriter's
        add_hparams would open a sibling run folder per call, splitting one run in two.
        """
        from tensorboard.plugins.hparams import plugin_data_pb2
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        experiment, start, end = hparams_summary(hparams, finite)
        value = experiment.value[0]
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in varied
        value.metadata.plugin_data.content = data.SerializeToString()
        self._hand_over()
        for summary in (experiment, start, end):
            self._writer.file_writer.add_summary(summary)

    def embedding(
        self, vectors: np.ndarray, metadata: list[list[str]], header: list[str], tag: str, step: int
    ) -> None:
        """Vectors for the Projector, one metadata row per vector. The header must name 2+
        columns: with one, torch writes it as a data row (pytorch issue 38564)."""
        self._hand_over()
        self._writer.add_embedding(
            vectors, metadata=metadata, metadata_header=header, tag=tag, global_step=step
        )

    def close(self) -> None:
        self._hand_over()
        self._writer.close()
