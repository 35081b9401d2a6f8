"""The end-of-run figure: effective learning rate against updates and against count.

Two log-log panels of every token (a sample of the cloud when there are many), the binned
means and the least-squares line through them. For Adagrad (whose accumulator is a sum) each
panel also draws the stationary-gradient theory for its axis (nlp_adagrad.fits), anchored at
the first bin (the rarest tokens), so the gap that opens to the right is what real text adds
to the theory. Other optimizers' rates follow other laws: no theory line is drawn for them.
"""

from __future__ import annotations

import numpy as np

from nlp_adagrad.fits import THEORY_SLOPE_VS_UPDATES, Fit, binned_fit, on_log_scale, theory_vs_count

MAX_SCATTER_POINTS = 50_000  # tokens drawn in each cloud (fits use all): 10^6 dots take 2 s


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
    """The figure drawn once, as (height, width, 4) uint8 RGBA: what both the PNG file and
    TensorBoard's image take (add_figure and savefig would each draw it again)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def save_png(rgba: np.ndarray, path) -> None:
    from PIL import Image

    Image.fromarray(rgba).save(path)
