"""Per-token effective learning rates: from the optimizer's state and token counts to metrics.

Definitions (DESIGN §5): a token's effective learning rate is the mean over its row of
clr / (sqrt(G) + eps), read from the optimizer (never re-derived from gradients); tokens never
updated are missing. Buckets are decades of training count; `rare` is count <= rare_max_count;
`common` the common_top_k most frequent tokens. Slopes are least-squares fits of log(eff_lr)
on log(updates) or log(count), over log-spaced bins whose means weigh the same.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nlp_adagrad.config import TelemetryConfig
from nlp_adagrad.optim import RowOptimizer
from nlp_adagrad.writer import MetricWriter

UNSEEN = "unseen"  # tokens with no occurrence in the training split (the unknown token)
NUM_FIT_BINS = 20
NUM_BOOTSTRAP = 200
MAX_SCATTER_POINTS = 50_000  # tokens drawn in the figure's cloud (the fit uses all)
THEORY_SLOPE = -0.5  # stationary squared gradients: G ~ updates, eff_lr ~ updates^-1/2


def count_buckets(counts: np.ndarray) -> np.ndarray:
    """Decade bucket of each training count: 1-9 -> count_1e0, 10-99 -> count_1e1, ...

    Vectorised (a million-word vocabulary is one pass) and exact at powers of ten.
    """
    counts = np.asarray(counts, dtype=np.int64)
    decade = np.searchsorted(10 ** np.arange(19, dtype=np.int64), counts, side="right") - 1
    names = np.array([UNSEEN] + [f"count_1e{k}" for k in range(19)])
    return names[np.where(counts >= 1, decade + 1, 0)]


@dataclass
class TelemetrySpec:
    """What stays fixed through a run: the vocabulary, its counts and the groups drawn from it."""

    tokens: list[str]
    counts: np.ndarray  # training occurrences per vocabulary token
    buckets: np.ndarray  # bucket name per token
    bucket_names: list[str]  # in increasing count order, without UNSEEN
    rare: np.ndarray  # bool mask
    common: np.ndarray  # bool mask
    followed: dict[str, int]  # token -> id, for eff_lr/token/<token>
    members: dict[str, np.ndarray] = field(default_factory=dict)  # bucket -> token ids
    full: TokenView = field(init=False)  # every token: final metrics, small vocabularies
    sample: TokenView = field(init=False)  # what a snapshot during training reads

    def __post_init__(self) -> None:
        # snapshots select by bucket often: index arrays once, not string compares each time
        self.members = {name: np.flatnonzero(self.buckets == name) for name in self.bucket_names}
        self.full = TokenView(
            ids=None,
            weights=None,
            members=self.members,
            rare=np.flatnonzero(self.rare),
            common=np.flatnonzero(self.common),
            followed=dict(self.followed),
        )
        self.sample = self.full

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class TokenView:
    """Tokens a snapshot reads, with the groups as positions into what it reads.

    `ids` None means every vocabulary token, in id order. A sample carries `weights`: how many
    vocabulary tokens each sampled one stands for (0 for tokens read only to be shown, the
    common and followed ones outside the draw).
    """

    ids: np.ndarray | None
    weights: np.ndarray | None
    members: dict[str, np.ndarray]
    rare: np.ndarray
    common: np.ndarray
    followed: dict[str, int]


def stratified_sample(spec: TelemetrySpec, max_tokens: int, seed: int) -> TokenView:
    """At most ~max_tokens tokens drawn by bucket, seeded: the buckets that fit are taken
    whole, the largest are cut to one common size (water-filling), so every decade of counts
    stays represented; the common and followed tokens are added for display.
    """
    if spec.num_tokens <= max_tokens:
        return spec.full
    sizes = np.array([len(spec.members[name]) for name in spec.bucket_names])
    cap = _water_level(sizes, max_tokens)
    rng = np.random.default_rng([seed, 7])
    drawn, weights = [], []
    for name, size in zip(spec.bucket_names, sizes):
        ids = spec.members[name]
        if size > cap:
            ids = np.sort(rng.choice(ids, size=cap, replace=False))
        drawn.append(ids)
        weights.append(np.full(len(ids), size / len(ids)))
    drawn_ids = np.concatenate(drawn)
    shown = np.concatenate([np.flatnonzero(spec.common), list(spec.followed.values())])
    extra = np.setdiff1d(shown.astype(np.int64), drawn_ids)
    ids = np.concatenate([drawn_ids, extra])
    order = np.argsort(ids, kind="stable")
    ids, weight = ids[order], np.concatenate([*weights, np.zeros(len(extra))])[order]
    position = {int(t): k for k, t in enumerate(ids)}
    in_draw = weight > 0
    return TokenView(
        ids=ids,
        weights=weight,
        members={
            name: np.flatnonzero(in_draw & (spec.buckets[ids] == name))
            for name in spec.bucket_names
        },
        rare=np.flatnonzero(in_draw & spec.rare[ids]),
        common=np.flatnonzero(spec.common[ids]),
        followed={token: position[i] for token, i in spec.followed.items()},
    )


def _water_level(sizes: np.ndarray, budget: int) -> int:
    """The largest cap with sum(min(size, cap)) <= budget (at least 1)."""
    low, high = 1, int(sizes.max())
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(sizes, mid).sum() <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def make_spec(
    tokens: list[str], counts: np.ndarray, cfg: TelemetryConfig, seed: int
) -> tuple[TelemetrySpec, list[str]]:
    """The run's telemetry spec, and the names in `cfg.tokens` that are not in the vocabulary."""
    counts = np.asarray(counts[: len(tokens)], dtype=np.int64)
    buckets = count_buckets(counts)
    bucket_names = sorted(set(buckets) - {UNSEEN}, key=lambda b: int(b.rsplit("e", 1)[1]))
    rare = (counts >= 1) & (counts <= cfg.rare_max_count)
    by_count = np.argsort(-counts, kind="stable")
    common = np.zeros(len(tokens), dtype=bool)
    common[by_count[: cfg.common_top_k]] = True
    common &= counts >= 1
    rng = np.random.default_rng(seed)
    followed: dict[str, int] = {}
    for name in bucket_names:
        pool = np.flatnonzero(buckets == name)
        for i in _draw_readable(pool, tokens, cfg.follow_per_bucket, rng):
            followed[tokens[i]] = i
    named = set(cfg.tokens)
    index = {t: i for i, t in enumerate(tokens) if t in named} if named else {}
    missing = [t for t in cfg.tokens if t not in index]
    followed.update({t: index[t] for t in cfg.tokens if t in index})
    spec = TelemetrySpec(tokens, counts, buckets, bucket_names, rare, common, followed)
    spec.sample = stratified_sample(spec, cfg.sample_size, seed)
    return spec, missing


def _draw_readable(ids: np.ndarray, tokens: list[str], k: int, rng) -> list[int]:
    """Up to k of `ids`, seeded, whose tokens are alphanumeric (readable tag names).

    Drawn from a random subset first, so a bucket of millions costs what k needs.
    """
    if k == 0 or len(ids) == 0:
        return []
    for size in (min(len(ids), 32 * k), len(ids)):
        candidates = rng.choice(ids, size=size, replace=False)
        readable = [int(i) for i in candidates if tokens[i].isalnum()]
        if len(readable) >= k or size == len(ids):
            return sorted(readable[:k])
    return []


def read_rates(
    optimizer: RowOptimizer, table: torch.Tensor, spec: TelemetrySpec, view: TokenView
) -> tuple[np.ndarray, np.ndarray]:
    """(eff_lr, updates) of the view's tokens (their rows of `table`), float64 / int64 arrays."""
    if view.ids is None:
        rows = slice(0, spec.num_tokens)
    else:
        rows = torch.from_numpy(view.ids).to(table.device)
    eff_lr = optimizer.effective_lr(table, rows)
    updates = optimizer.row_updates(table)[rows]
    return eff_lr.double().cpu().numpy(), updates.cpu().numpy()


def _median(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Median of the finite values; weighted when the weights differ (a sample across buckets)."""
    finite = np.isfinite(values)
    values = values[finite]
    if not len(values):
        return float("nan")
    if weights is None or np.ptp(weights[finite]) == 0:
        return float(np.median(values))
    order = np.argsort(values)
    cumulative = np.cumsum(weights[finite][order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


@dataclass
class Fit:
    slope: float
    intercept: float
    bin_x: np.ndarray  # bin means of log(x)
    bin_y: np.ndarray  # bin means of log(eff_lr)


def _on_log_scale(x: np.ndarray, eff_lr: np.ndarray) -> np.ndarray:
    """Tokens a log-log fit or plot can use: x >= 1 and a finite, positive rate."""
    return (x >= 1) & np.isfinite(eff_lr) & (eff_lr > 0)


def _log_points(x: np.ndarray, eff_lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = _on_log_scale(x, eff_lr)
    return np.log(x[keep].astype(np.float64)), np.log(eff_lr[keep])


def _bin_of(lx: np.ndarray, num_bins: int) -> np.ndarray:
    """Log-spaced bin of each point: equal widths in log(x) between its min and max."""
    span = lx.max() - lx.min()
    return np.minimum(((lx - lx.min()) / span * num_bins).astype(np.int64), num_bins - 1)


def _fit_bins(which, lx, ly, num_bins, weights=None) -> Fit | None:
    n = np.bincount(which, weights=weights, minlength=num_bins)
    full = n > 0
    if full.sum() < 2:
        return None
    w = lx if weights is None else lx * weights
    v = ly if weights is None else ly * weights
    bin_x = np.bincount(which, weights=w, minlength=num_bins)[full] / n[full]
    bin_y = np.bincount(which, weights=v, minlength=num_bins)[full] / n[full]
    dx = bin_x - bin_x.mean()
    slope = float(dx @ (bin_y - bin_y.mean()) / (dx @ dx))  # least squares, closed form
    return Fit(slope, float(bin_y.mean() - slope * bin_x.mean()), bin_x, bin_y)


def binned_fit(
    x: np.ndarray,
    eff_lr: np.ndarray,
    num_bins: int = NUM_FIT_BINS,
    weights: np.ndarray | None = None,
) -> Fit | None:
    """Least-squares line through log-binned means of log(eff_lr) against log(x).

    Binning first gives every range of x the same weight: otherwise the many rare tokens
    decide the slope alone. `weights` make a sample's bin means those of what it stands for.
    None when fewer than two bins hold tokens.
    """
    if weights is not None:  # tokens standing for none (shown only) do not place the bins
        keep = weights > 0
        x, eff_lr, weights = x[keep], eff_lr[keep], weights[keep]
        weights = weights[_on_log_scale(x, eff_lr)]
    lx, ly = _log_points(x, eff_lr)
    if len(lx) == 0 or lx.min() == lx.max():
        return None
    return _fit_bins(_bin_of(lx, num_bins), lx, ly, num_bins, weights=weights)


def slope_interval(
    x: np.ndarray, eff_lr: np.ndarray, seed: int, num_resamples: int = NUM_BOOTSTRAP
) -> tuple[float, float]:
    """Bootstrap 95% interval of the binned slope: tokens resampled with replacement, refit.

    A resample is drawn as per-token multiplicities, so each refit is a few bincounts.
    """
    lx, ly = _log_points(x, eff_lr)
    if len(lx) < 2 or lx.min() == lx.max():
        return float("nan"), float("nan")
    which = _bin_of(lx, NUM_FIT_BINS)
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(num_resamples):
        times = np.bincount(rng.integers(0, len(lx), len(lx)), minlength=len(lx))
        fit = _fit_bins(which, lx, ly, NUM_FIT_BINS, weights=times.astype(np.float64))
        if fit is not None:
            slopes.append(fit.slope)
    if not slopes:
        return float("nan"), float("nan")
    low, high = np.percentile(slopes, [2.5, 97.5])
    return float(low), float(high)


def final_analysis(
    spec: TelemetrySpec, eff_lr: np.ndarray, updates: np.ndarray, seed: int
) -> dict[str, float]:
    """End-of-run extras: the slope against count, slope intervals, the per-bucket table."""
    fit = binned_fit(spec.counts, eff_lr)
    out = {"eff_lr/slope_vs_count": fit.slope if fit else float("nan")}
    for key, x in (("updates", updates), ("count", spec.counts)):
        low, high = slope_interval(x, eff_lr, seed)
        out[f"eff_lr/slope_vs_{key}_ci_low"] = low
        out[f"eff_lr/slope_vs_{key}_ci_high"] = high
    for row in bucket_rows(spec, eff_lr, updates):
        name = row.pop("bucket")
        out.update({f"bucket/{name}/{k}": float(v) for k, v in row.items()})
    return out


def summarize(
    spec: TelemetrySpec, eff_lr: np.ndarray, updates: np.ndarray, view: TokenView | None = None
) -> dict[str, float]:
    """Per-snapshot scalars: medians for rare, common and each bucket; slope vs updates.

    `eff_lr` and `updates` hold the view's tokens (all of them by default).
    """
    view = view or spec.full
    w = view.weights

    def median(positions: np.ndarray) -> float:
        return _median(eff_lr[positions], None if w is None else w[positions])

    out = {"eff_lr/rare": median(view.rare), "eff_lr/common": _median(eff_lr[view.common])}
    for name in spec.bucket_names:
        out[f"eff_lr/bucket/{name}"] = median(view.members[name])
    fit = binned_fit(updates, eff_lr, weights=w)
    out["eff_lr/slope_vs_updates"] = fit.slope if fit else float("nan")
    return out


def log_snapshot(
    writer: MetricWriter,
    spec: TelemetrySpec,
    optimizer: RowOptimizer,
    table: torch.Tensor,
    step: int,
    histograms: bool = True,
    exact: bool = False,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Write one telemetry point (scalars, followed tokens, histograms); return what it read.

    A snapshot reads `spec.sample` (every token of a vocabulary up to telemetry.sample_size),
    so its cost does not grow with the vocabulary; `exact` reads every token (the last one).
    """
    view = spec.full if exact else spec.sample
    eff_lr, updates = read_rates(optimizer, table, spec, view)
    summary = summarize(spec, eff_lr, updates, view)
    # exact even when sampled: one count over the update counters (~0.2 ms per 10^6 tokens)
    summary["eff_lr/tokens_updated"] = float(
        torch.count_nonzero(optimizer.row_updates(table)[: spec.num_tokens])
    )
    followed = {f"eff_lr/token/{token}": float(eff_lr[k]) for token, k in view.followed.items()}
    writer.scalars({**summary, **followed}, step)
    for name in spec.bucket_names if histograms else []:
        values = eff_lr[view.members[name]]
        values = values[np.isfinite(values)]
        if len(values):
            writer.histogram(f"eff_lr_hist/{name}", values, step)
    return summary, eff_lr, updates


def custom_layout(spec: TelemetrySpec) -> dict:
    """TensorBoard custom-scalars layout: rare vs common and the buckets in one chart."""
    buckets = [f"eff_lr/bucket/{name}" for name in spec.bucket_names]
    return {
        "Adagrad: per-token effective learning rate": {
            "rare vs common (median eff_lr)": ["Multiline", ["eff_lr/rare", "eff_lr/common"]],
            "by count bucket (median eff_lr)": [
                "Multiline",
                ["eff_lr/rare", "eff_lr/common", *buckets],
            ],
            "followed tokens": ["Multiline", ["eff_lr/token/.*"]],
            "slope of log eff_lr vs log updates": ["Multiline", ["eff_lr/slope_vs_updates"]],
        },
        "Training": {
            "loss": ["Multiline", ["train/loss", "test/loss"]],
            "accuracy": ["Multiline", ["test/accuracy"]],
        },
    }


def bucket_rows(spec: TelemetrySpec, eff_lr: np.ndarray, updates: np.ndarray) -> list[dict]:
    """Per bucket: count range, tokens, median eff_lr, median updates."""
    rows = []
    for name in spec.bucket_names:
        mask = spec.members[name]
        low = 10 ** int(name.rsplit("e", 1)[1])
        rows.append(
            {
                "bucket": name,
                "count_min": low,
                "count_max": 10 * low - 1,
                "tokens": len(mask),
                "median_eff_lr": _median(eff_lr[mask]),
                "median_updates": _median(updates[mask].astype(np.float64)),
            }
        )
    return rows


def bucket_table(spec: TelemetrySpec, eff_lr: np.ndarray, updates: np.ndarray) -> str:
    """The per-bucket rows as a Markdown table (log, TensorBoard text)."""
    lines = [
        "| bucket | counts | tokens | median eff_lr | median updates |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in bucket_rows(spec, eff_lr, updates):
        lines.append(
            f"| {r['bucket']} | {r['count_min']}-{r['count_max']} | {r['tokens']} | "
            f"{r['median_eff_lr']:.4g} | {r['median_updates']:.4g} |"
        )
    return "\n".join(lines)


def eff_lr_figure(spec: TelemetrySpec, eff_lr: np.ndarray, title: str):
    """Log-log figure of eff_lr against count: tokens, binned means, fitted and theory lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    shown = np.flatnonzero(_on_log_scale(spec.counts, eff_lr))
    if len(shown) > MAX_SCATTER_POINTS:  # the cloud looks the same; drawing 10^6 dots takes 2 s
        rng = np.random.default_rng(0)
        shown = np.sort(rng.choice(shown, size=MAX_SCATTER_POINTS, replace=False))
    ax.scatter(spec.counts[shown], eff_lr[shown], s=3, alpha=0.15, color="0.5", label="tokens")
    fit = binned_fit(spec.counts, eff_lr)
    if fit is not None:
        ax.plot(np.exp(fit.bin_x), np.exp(fit.bin_y), "o", color="C0", label="binned mean")
        xs = np.exp(np.array([fit.bin_x.min(), fit.bin_x.max()]))
        ax.plot(
            xs,
            np.exp(fit.intercept) * xs**fit.slope,
            "-",
            color="C1",
            label=f"fit: slope {fit.slope:.3f}",
        )
        ax.plot(
            xs,
            np.exp(fit.intercept) * xs**THEORY_SLOPE,
            "--",
            color="C2",
            label=f"theory: slope {THEORY_SLOPE}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training count of token")
    ax.set_ylabel("effective learning rate")
    ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig


def write_token_stats(
    path: Path, spec: TelemetrySpec, eff_lr: np.ndarray, updates: np.ndarray
) -> None:
    """token_stats.csv: id, token, count, updates, eff_lr (empty when never updated), bucket."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["id", "token", "count", "updates", "eff_lr", "bucket"])
        for i, token in enumerate(spec.tokens):
            rate = eff_lr[i]
            out.writerow(
                [
                    i,
                    token,
                    int(spec.counts[i]),
                    int(updates[i]),
                    f"{rate:.9g}" if np.isfinite(rate) else "",
                    spec.buckets[i],
                ]
            )
