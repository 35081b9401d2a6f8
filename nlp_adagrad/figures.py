"""The end-of-run figure: effective learning rate against updates and against count.

Two log-log panels of every token (a sample of the cloud when there are many), the binned
means and the least-squares line through them. For Adagrad (whose accumulator is a sum) each
panel also draws the stationary-gradient theory for its axis (nlp_adagrad.fits), anchored at
the first bin (the rarest tokens), so the gap that opens to the right is what real text adds
to the theory. Other optimizers' rates follow other laws: no theory line is drawn for them.

Importing matplotlib and drawing took 0.45 s of a 3 s default run, after training, when the
user waits. `background()` starts a worker process (`python -m nlp_adagrad.figures`) as a
run begins, which imports matplotlib on the other core while the run imports torch and
trains; at the end `draw_later` hands it the figures' data, and the run writes its other files
while the worker draws and encodes them. Without a worker, or when it fails, the figures are
drawn in this process: the same PNG bytes (tested).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlp_adagrad.fits import THEORY_SLOPE_VS_UPDATES, Fit, binned_fit, on_log_scale, theory_vs_count

MAX_SCATTER_POINTS = 50_000  # tokens drawn in each cloud (fits use all): 10^6 dots take 2 s

log = logging.getLogger(__name__)


def _cloud(ax, x: np.ndarray, eff_lr: np.ndarray) -> None:
    shown = np.flatnonzero(on_log_scale(x, eff_lr))
    if len(shown) > MAX_SCATTER_POINTS:
        shown = np.sort(np.random.default_rng(0).choice(shown, MAX_SCATTER_POINTS, replace=False))
    ax.scatter(x[shown], eff_lr[shown], s=3, alpha=0.15, color="0.5", label="tokens")


def _fit_lines(ax, fit: Fit, theory, theory_label: str | None) -> None:
    ax.plot(np.exp(fit.bin_x), np.exp(fit.bin_y), "o", color="C0", label="binned mean")
    lx = np.linspace(fit.bin_x.min(), fit.bin_x.max(), 100)
    ax.plot(
        np.exp(lx),
        np.exp(fit.intercept + fit.slope * lx),
        "-",
        color="C1",
        label=f"least-squares fit: slope {fit.slope:.2f}",
    )
    if theory_label is not None:
        anchor = fit.bin_y[0] - theory(fit.bin_x[:1])[0]
        ax.plot(np.exp(lx), np.exp(anchor + theory(lx)), "--", color="C2", label=theory_label)


def eff_lr_figure(
    counts: np.ndarray,
    updates: np.ndarray,
    eff_lr: np.ndarray,
    steps_per_epoch: int,
    title: str,
    theory: bool,
):
    """A matplotlib figure with the two panels (theory lines if `theory`); `render` draws it."""
    from matplotlib.figure import Figure  # not pyplot: no backend, no global figure list
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(11, 4.5), dpi=100)
    left, right = fig.subplots(1, 2, sharey=True)
    panels = (
        (
            left,
            updates,
            "updates (optimizer steps that touched the row)",
            lambda lx: THEORY_SLOPE_VS_UPDATES * lx,
            "theory (stationary gradients): slope -0.5",
        ),
        (
            right,
            counts,
            "count (occurrences in the training split)",
            lambda lx: theory_vs_count(lx, steps_per_epoch),
            f"theory: (c (1 + c/S))^-1/2, S = {steps_per_epoch} steps/epoch",
        ),
    )
    for ax, x, xlabel, curve, label in panels:
        ax.set_xlabel(xlabel)
        if not on_log_scale(x, eff_lr).any():  # e.g. every accumulator overflowed: rates of 0
            ax.text(0.5, 0.5, "no token with a positive rate", ha="center", transform=ax.transAxes)
            continue
        _cloud(ax, x, eff_lr)
        fit = binned_fit(x, eff_lr)
        if fit is not None:
            _fit_lines(ax, fit, curve, label if theory else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # no minor ticks: on 5-10 log decades they are ~250 tick artists, 0.2 s to draw
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    left.set_ylabel("effective learning rate")
    fig.suptitle(title)
    # fixed margins, what tight_layout chose for this size with room for 10^-10 ticks:
    # tight_layout measures every tick label first, 0.3 s of a 3 s run
    fig.subplots_adjust(left=0.08, right=0.985, bottom=0.135, top=0.895, wspace=0.05)
    return fig


def render(fig) -> np.ndarray:
    """The figure drawn once, as (height, width, 4) uint8 RGBA."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def png(rgba: np.ndarray) -> bytes:
    """RGB PNG bytes of an RGBA image (the figure is opaque): what both the file and
    TensorBoard's image take, encoded once (compress_level 1: 4x faster than PIL's default
    6, files ~1.3x larger)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(out, format="PNG", compress_level=1)
    return out.getvalue()


@dataclass
class FigureData:
    """What one eff_lr figure shows: `eff_lr_figure`'s arguments."""

    counts: np.ndarray
    updates: np.ndarray
    eff_lr: np.ndarray
    steps_per_epoch: int
    title: str
    theory: bool

    def png(self) -> bytes:
        return png(
            render(
                eff_lr_figure(
                    self.counts,
                    self.updates,
                    self.eff_lr,
                    self.steps_per_epoch,
                    self.title,
                    self.theory,
                )
            )
        )


class FigureWorker:
    """A `python -m nlp_adagrad.figures` process: one batch of figures in, their PNGs out."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parent.parent)  # this copy of the package
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nlp_adagrad.figures"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )

    def send(self, figures: list[FigureData]) -> None:
        """Hand over the figures; the worker draws them while the caller goes on."""
        self.process.stdin.write(pickle.dumps(figures))
        self.process.stdin.close()

    def receive(self) -> list[bytes]:
        out = self.process.stdout.read()
        err = self.process.stderr.read().decode(errors="replace").strip()
        if self.process.wait(timeout=120) != 0:
            raise RuntimeError(err.splitlines()[-1] if err else "it exited")
        return pickle.loads(out)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


_worker: FigureWorker | None = None


@contextlib.contextmanager
def background(enabled: bool = True):
    """Within the block, `draw_later` uses a worker started now (if `enabled`)."""
    global _worker
    if not enabled or _worker is not None:
        yield
        return
    try:
        _worker = FigureWorker()
    except OSError as e:  # no process to spare: draw in this one
        log.debug("no figure worker (%s)", e)
    try:
        yield
    finally:
        worker, _worker = _worker, None
        if worker is not None:
            worker.close()


def draw_later(figures: list[FigureData]) -> Callable[[], list[bytes]]:
    """Start drawing the figures; the returned function gives each one as PNG bytes. The
    background worker draws them, when one runs (once: it exits after), while the caller
    goes on; otherwise that function draws them here."""
    global _worker
    worker, _worker = _worker, None

    def here() -> list[bytes]:
        return [figure.png() for figure in figures]

    def give_up(e: Exception) -> None:  # the figures are worth drawing here, not losing
        log.warning("the figure worker failed (%s); drawing the figure here", e)
        worker.close()

    if worker is None:
        return here
    if not figures:  # nothing to draw: the worker is let go
        worker.close()
        return here
    try:
        worker.send(figures)
    except OSError as e:  # it is gone already
        give_up(e)
        return here

    def result() -> list[bytes]:
        try:
            drawn = worker.receive()
        except Exception as e:
            give_up(e)
            return here()
        worker.close()
        return drawn

    return result


if __name__ == "__main__":  # the worker: import while the run trains, then draw what it sends
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401

    figures = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(pickle.dumps([figure.png() for figure in figures]))
