"""Per-token effective learning rates: from the optimizer's state and token counts to metrics.

Definitions (DESIGN §5): a token's effective learning rate is the coefficient on its row's
newest gradient, summarised through the row's mean second moment (nlp_adagrad.optim.base),
read from the optimizer, never re-derived from gradients; tokens never updated are missing.
Buckets are decades of training count; `rare` is count <= rare_max_count; `common` the
common_top_k most frequent tokens. Snapshots are log-spaced at the start (steps 1, 2, 3, 5,
10, 20, 50, ...), then every `telemetry.every` steps, so the first points show the rates
before rare and common separate. Slopes: nlp_adagrad.fits.

The functions that read the optimizer import torch themselves: the telemetry process
(nlp_adagrad.telemetry_writer) summarizes and writes with this module and starts in 0.2 s
without torch, 1.7 s with it.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nlp_adagrad import rate_stats
from nlp_adagrad.fits import NUM_FIT_BINS, log_of
from nlp_adagrad.writer import MetricWriter

if TYPE_CHECKING:
    import torch

    from nlp_adagrad.config import TelemetryConfig
    from nlp_adagrad.optim import RowOptimizer

UNSEEN = "unseen"  # tokens with no occurrence in the training split (the unknown token)
# Tokens whose coordinate rates a histogram reads per bucket: enough for its shape, while a
# 5,000-token sample at dim 64 would be 320,000 values for TensorBoard to bin
MAX_COORD_HISTOGRAM_TOKENS = 1_000
# Histogram bins of log10(eff_lr): 20 a decade, each a rate ratio of 1.12, at any rate
LOG10_BIN_WIDTH = 0.05
# Snapshots summarized per C++ call (summarize_all), then written (write_snapshots): their
# logs, made for the call, stay in cache; the logs of a whole burst of ~170 were megabytes of
# fresh pages, and summarizing them took as long on two threads as 16 at a time on one
# (a 2-thread run's readings, measured)
SUMMARIES_AT_ONCE = 16
COORD_CHUNK_ROWS = 65_536  # rows per read of per-coordinate rates (float64 rows x dim)
TOKEN_STATS_COLUMNS = [
    "id",
    "token",
    "count",
    "updates",
    "eff_lr",
    "bucket",
    "eff_lr_coord_min",
    "eff_lr_coord_max",
]


def table_tag(tag: str, table: str | None) -> str:
    """eff_lr/rare -> eff_lr/<table>/rare (and eff_lr_log10/..., the histograms, bucket/...):
    how a model with several sparse tables tells their rates apart. None keeps the tag."""
    head, _, rest = tag.partition("/")
    if table is None or not head.startswith(("eff_lr", "bucket")):
        return tag
    return f"{head}/{table}/{rest}"


def snapshot_due(step: int, every: int) -> bool:
    """Steps 1, 2, 3, 5, 10, 20, 50, 100, ... below `every`, then every `every` steps.

    Adagrad's rates change fastest at the start: evenly spaced snapshots would show lines
    already flat at their first point.
    """
    if every <= 0 or step < 1:
        return False
    if step % every == 0:
        return True
    if step >= every:
        return False
    return step <= 3 or _without_trailing_zeros(step) in (1, 2, 5)


# every step `snapshot_due` may take below `every`: 1, 2, 3, 5, 10, 20, 50, ... up to 5e18
_EARLY_CANDIDATES = sorted({1, 2, 3} | {m * 10**k for k in range(19) for m in (1, 2, 5)})


def snapshot_steps(first: int, end: int, every: int) -> list[int]:
    """The steps in [first, end) where `snapshot_due`, ascending, without asking each step (a
    run's schedule, passed to the fused steps once)."""
    if every <= 0:
        return []
    bound = min(end, every)
    early = [s for s in _EARLY_CANDIDATES if first <= s < bound and snapshot_due(s, every)]
    return early + list(range(-(-max(first, every) // every) * every, end, every))


def next_snapshot(step: int, every: int) -> int | None:
    """The first step after `step` where `snapshot_due`; None when snapshots are off."""
    if every <= 0:
        return None
    return snapshot_steps(step + 1, step + every + 1, every)[0]  # a multiple of every is in it


def histograms_due(step: int, every: int, histogram_every: int) -> bool:
    """Whether a snapshot at `step` carries histograms: at steps 1, 10, 100, ... below
    `every` (a histogram costs ~10 scalar snapshots), then on every histogram_every-th."""
    if step < every:
        return _without_trailing_zeros(step) == 1
    return (step // every) % histogram_every == 0


def _without_trailing_zeros(step: int) -> int:
    """100 -> 1, 200 -> 2, 50 -> 5, 12 -> 12."""
    while step % 10 == 0:
        step //= 10
    return step


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
    rare_max_count: int = 5
    common_top_k: int = 100
    members: dict[str, np.ndarray] = field(default_factory=dict)  # bucket -> token ids
    full: TokenView = field(init=False)  # every token: final metrics, small vocabularies
    sample: TokenView = field(init=False)  # what a snapshot during training reads

    def __post_init__(self) -> None:
        # snapshots select by bucket often: index arrays once, not string compares each time
        self.members = {name: np.flatnonzero(self.buckets == name) for name in self.bucket_names}
        self.full = TokenView(
            ids=None,
            weights=None,
            counts=self.counts,
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
    counts: np.ndarray  # training occurrences of the view's tokens
    members: dict[str, np.ndarray]  # in increasing count order
    rare: np.ndarray
    common: np.ndarray
    followed: dict[str, int]
    # bucket -> positions whose coordinate rates a histogram shows: evenly spaced when there
    # are more (deterministic, and the shape is kept); `shown_positions` all of them in order
    shown: dict[str, np.ndarray] = field(init=False, repr=False)
    shown_positions: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.shown = {
            name: positions[:: -(-len(positions) // MAX_COORD_HISTOGRAM_TOKENS)]
            for name, positions in self.members.items()
            if len(positions)
        }
        self.shown_positions = np.concatenate([np.zeros(0, np.int64), *self.shown.values()])

    @cached_property
    def median_groups(self) -> rate_stats.Groups:
        """rare (weighted), common (not: the top k are all read), then each bucket."""
        groups = [self.rare, self.common, *self.members.values()]
        return rate_stats.Groups.of(groups, [True, False] + [True] * len(self.members))

    @cached_property
    def followed_tags(self) -> tuple[list[str], np.ndarray]:
        """(eff_lr/token/<token> tags, their positions) of the followed tokens."""
        tags = [f"eff_lr/token/{token}" for token in self.followed]
        return tags, np.array(list(self.followed.values()), dtype=np.int64)

    @cached_property
    def log_counts(self) -> np.ndarray:
        """log of `counts`, once a run: a snapshot's fit against count takes it."""
        return log_of(self.counts)


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
        counts=spec.counts[ids],
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
    spec = TelemetrySpec(
        tokens,
        counts,
        buckets,
        bucket_names,
        rare,
        common,
        followed,
        cfg.rare_max_count,
        cfg.common_top_k,
    )
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
    """(eff_lr, updates) of the view's tokens (their rows of `table`): float64, int32."""
    import torch

    if view.ids is None:
        rows = slice(0, spec.num_tokens)
    else:
        rows = torch.from_numpy(view.ids).to(table.device)
    eff_lr, updates = optimizer.rates_and_updates(table, rows)
    return eff_lr.double().cpu().numpy(), updates.cpu().numpy()


def final_analysis(
    spec: TelemetrySpec, eff_lr: np.ndarray, updates: np.ndarray
) -> dict[str, float]:
    """End-of-run extras: the per-bucket table as flat metrics."""
    out = {}
    for row in bucket_rows(spec, eff_lr, updates):
        name = row.pop("bucket")
        out.update({f"bucket/{name}/{k}": float(v) for k, v in row.items()})
    return out


def summarize(
    spec: TelemetrySpec, eff_lr: np.ndarray, updates: np.ndarray, view: TokenView | None = None
) -> dict[str, float]:
    """Per-snapshot scalars: medians for rare, common and each bucket, their ratio, and the
    slopes against updates and against count.

    `eff_lr` and `updates` hold the view's tokens (all of them by default).
    """
    return summarize_all([(eff_lr, updates, view or spec.full)])[0]


def summarize_all(
    snapshots: list[tuple[np.ndarray, np.ndarray, TokenView]], threads: int = 1
) -> list[dict[str, float]]:
    """`summarize` of many (eff_lr, updates, view) snapshots: a C++ call for each of `_batches`
    of them, shared out over `threads` threads (rate_stats.summaries)."""
    out = []
    for batch in _batches(snapshots, view_of=lambda snapshot: snapshot[2]):
        out += _summarize_batch(batch, threads)
    return out


def _summarize_batch(
    batch: list[tuple[np.ndarray, np.ndarray, TokenView]], threads: int
) -> list[dict[str, float]]:
    """`summarize` of one of `_batches`: snapshots of one view, in one C++ call."""
    view = batch[0][2]
    numbers = rate_stats.summaries(
        [rates for rates, _, _ in batch],
        [log_of(rates) for rates, _, _ in batch],
        [log_of(updates) for _, updates, _ in batch],
        view.log_counts,
        view.median_groups,
        view.weights,
        NUM_FIT_BINS,
        threads,
    )
    return [_named(view, row) for row in numbers.tolist()]


def _batches(items: list, view_of: Callable) -> Iterator[list]:
    """Runs of consecutive items of one view (`view_of`), up to SUMMARIES_AT_ONCE each."""
    start = 0
    while start < len(items):
        end, view = start + 1, view_of(items[start])
        while end < min(len(items), start + SUMMARIES_AT_ONCE) and view_of(items[end]) is view:
            end += 1
        yield items[start:end]
        start = end


def _named(view: TokenView, numbers: list[float]) -> dict[str, float]:
    """A snapshot's numbers (rate_stats.summaries' row) under their tags' names."""
    rare, common, *buckets, vs_updates, vs_count = numbers
    out = {"eff_lr/rare": rare, "eff_lr/common": common}
    out["eff_lr/rare_to_common"] = rare / common if common > 0 else float("nan")
    for name, median in zip(view.members, buckets):
        out[f"eff_lr/bucket/{name}"] = median
    out["eff_lr/slope_vs_updates"], out["eff_lr/slope_vs_count"] = vs_updates, vs_count
    return out


def log10_tags(summary: dict[str, float]) -> dict[str, float]:
    """eff_lr_log10/<name> for the medians: rates span decades, and TensorBoard's charts
    start on a linear axis, where a common token's rate would sit on zero."""
    out = {}
    for key, value in summary.items():
        name = key.removeprefix("eff_lr/")
        if name in ("rare", "common", "rare_to_common") or name.startswith("bucket/"):
            out[f"eff_lr_log10/{name}"] = math.log10(value) if value > 0 else float("nan")
    return out


@dataclass
class Reading:
    """What a snapshot reads from the live optimizer state (`read_snapshot`): plain arrays,
    so summarizing and writing them (`write_snapshot`) may happen later, elsewhere."""

    view: TokenView
    eff_lr: np.ndarray  # float64, the view's tokens
    updates: np.ndarray  # the view's tokens
    tokens_updated: int  # exact even when sampled
    # (tokens, columns) float64: the coordinate rates of the view's `shown` tokens, bucket
    # after bucket (histogram snapshots of optimizers with per-coordinate state), else None
    coordinates: np.ndarray | None


def read_snapshot(
    spec: TelemetrySpec,
    optimizer: RowOptimizer,
    table: torch.Tensor,
    histograms: bool = True,
    exact: bool = False,
) -> Reading:
    """Read one snapshot's rates from the optimizer (the part that must happen at the step:
    reads only, every derived number is the writer's).

    A snapshot reads `spec.sample` (every token of a vocabulary up to telemetry.sample_size),
    so its cost does not grow with the vocabulary; `exact` reads every token (the last one).
    """
    import torch

    view = spec.full if exact else spec.sample
    eff_lr, updates = read_rates(optimizer, table, spec, view)
    # kept by the steps where the run tracks it (`RowOptimizer.track_updated_rows`), else a
    # pass over the update counters (~0.15 ms per 10^6 tokens)
    tokens_updated = optimizer.updated_rows(table, spec.num_tokens)
    coordinates = None
    if histograms and optimizer.has_coordinate_rates(table):
        positions = view.shown_positions
        ids = positions if view.ids is None else view.ids[positions]
        rows = torch.from_numpy(ids).to(table.device)
        coordinates = optimizer.effective_lr_coords(table, rows).cpu().numpy()
    return Reading(view, eff_lr, updates, tokens_updated, coordinates)


def write_snapshot(
    writer: MetricWriter,
    spec: TelemetrySpec,
    reading: Reading,
    step: int,
    histograms: bool = True,
    table_name: str | None = None,
) -> dict[str, float]:
    """Write one telemetry point (scalars, followed tokens, histograms) from a reading; return
    its summary. With `table_name` the tags say the table (`table_tag`); the summary does not."""
    return write_snapshots(writer, spec, [(reading, step, histograms, table_name)])[0]


def write_snapshots(
    writer: MetricWriter,
    spec: TelemetrySpec,
    snapshots: list[tuple[Reading, int, bool, str | None]],
    threads: int = 1,
) -> list[dict[str, float]]:
    """`write_snapshot` of (reading, step, histograms, table_name) snapshots in order, their
    summaries computed together over `threads` threads (`summarize_all`); their summaries."""
    summaries = []
    # written a batch at a time, right after its summaries, while its rates are in cache
    for batch in _batches(snapshots, view_of=lambda snapshot: snapshot[0].view):
        done = _summarize_batch([(r.eff_lr, r.updates, r.view) for r, *_ in batch], threads)
        for (reading, step, histograms, table_name), summary in zip(batch, done):
            _write(writer, spec, reading, summary, step, histograms, table_name)
        summaries += done
    return summaries


def _write(
    writer: MetricWriter,
    spec: TelemetrySpec,
    reading: Reading,
    summary: dict[str, float],
    step: int,
    histograms: bool,
    table_name: str | None,
) -> None:
    """One snapshot's events, its summary given (completed with its tokens_updated)."""
    view, eff_lr = reading.view, reading.eff_lr
    summary["eff_lr/tokens_updated"] = float(reading.tokens_updated)
    followed, positions = view.followed_tags
    tags = {**summary, **log10_tags(summary), **dict(zip(followed, eff_lr[positions].tolist()))}
    if table_name is not None:
        tags = {table_tag(tag, table_name): value for tag, value in tags.items()}
    writer.scalars(tags, step)
    if histograms:
        out = {}
        logs = _log10_of_rates(eff_lr)
        for name in spec.bucket_names:
            out[table_tag(f"eff_lr_log10_hist/{name}", table_name)] = logs[view.members[name]]
        for name, logs in _coordinate_histograms(view, reading.coordinates).items():
            out[table_tag(f"eff_lr_log10_coord_hist/{name}", table_name)] = logs
        writer.histograms(out, step, LOG10_BIN_WIDTH)


def _coordinate_histograms(view: TokenView, coordinates: np.ndarray | None) -> dict:
    """bucket -> log10 of the coordinate rates of its shown tokens (`_log10_of_rates`)."""
    out = {}
    if coordinates is None:
        return out
    logs, start = _log10_of_rates(coordinates), 0
    for name, chosen in view.shown.items():
        out[name] = logs[start : start + len(chosen)].ravel()
        start += len(chosen)
    return out


def _log10_of_rates(rates: np.ndarray) -> np.ndarray:
    """log10 of the rates, in one pass for all a histogram snapshot shows: missing (NaN) rates
    and 0, the rate under an overflowed accumulator, give NaN and -inf, which histograms
    leave out (`writer.histograms_summary`, which writes no histogram for a tag with none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(rates)


def bucket_range(name: str) -> tuple[int, int]:
    """count_1e2 -> (100, 999): the training counts a bucket holds."""
    low = 10 ** int(name.rsplit("e", 1)[1])
    return low, 10 * low - 1


def bucket_label(name: str) -> str:
    """count_1e2 -> "count 100-999"."""
    return "count {}-{}".format(*bucket_range(name))


def _exactly(*tags: str) -> list[str]:
    """Custom-scalars tags are regexes matched at the start: anchor both ends."""
    return [f"^{re.escape(tag)}$" for tag in tags]


CLASSIFIER_SCORES = {"test accuracy": ["test/accuracy"]}


def custom_layout(
    spec: TelemetrySpec,
    tables: list[str] | None = None,
    scores: dict[str, list[str]] = CLASSIFIER_SCORES,
) -> dict:
    """TensorBoard custom-scalars layout: per table (one, untagged, when `tables` is None),
    rare vs common first (two series, log10), then their gap, the buckets, the two slopes,
    and the followed tokens grouped by bucket; then training: loss, the task's `scores`
    (chart title -> tags) and throughput."""
    layout = {}
    for table in tables or [None]:
        for category, charts in _rate_charts(spec, table).items():
            layout[category if table is None else f"{category}: {table} table"] = charts
    layout["Training"] = {
        "loss (train: window mean; test: full split)": [
            "Multiline",
            _exactly("train/loss", "test/loss"),
        ],
        **{title: ["Multiline", _exactly(*tags)] for title, tags in scores.items()},
        "training throughput (tokens/s)": ["Multiline", _exactly("train/tokens_per_sec")],
    }
    return layout


def _rate_charts(spec: TelemetrySpec, table: str | None) -> dict:
    def exactly(*tags: str) -> list[str]:
        return _exactly(*(table_tag(tag, table) for tag in tags))

    rare, common = f"count <= {spec.rare_max_count}", f"{spec.common_top_k} most frequent"
    followed: dict[str, list[str]] = {name: [] for name in spec.bucket_names}
    for token, i in spec.followed.items():
        if spec.buckets[i] in followed:
            followed[spec.buckets[i]].append(f"eff_lr/token/{token}")
    return {
        "Per-token effective learning rate": {
            f"log10 median eff_lr: rare ({rare}, top line) vs common ({common})": [
                "Multiline",
                exactly("eff_lr_log10/rare", "eff_lr_log10/common"),
            ],
            "log10 (rare / common): the gap between the two lines above": [
                "Multiline",
                exactly("eff_lr_log10/rare_to_common"),
            ],
            "log10 median eff_lr per training-count bucket (count_1e<k>: 10^k to 10^(k+1)-1)": [
                "Multiline",
                [f"^{re.escape(table_tag('eff_lr_log10/bucket/', table))}"],
            ],
            "slope of log eff_lr against log updates (theory: -0.5)": [
                "Multiline",
                exactly("eff_lr/slope_vs_updates"),
            ],
            "slope of log eff_lr against log count": [
                "Multiline",
                exactly("eff_lr/slope_vs_count"),
            ],
        },
        "Followed tokens: eff_lr, by training-count bucket": {
            f"followed tokens, {bucket_label(name)}": ["Multiline", exactly(*tags)]
            for name, tags in followed.items()
            if tags
        },
    }


def bucket_rows(spec: TelemetrySpec, eff_lr: np.ndarray, updates: np.ndarray) -> list[dict]:
    """Per bucket: count range, tokens, median eff_lr, median updates."""
    rows = []
    for name in spec.bucket_names:
        mask = spec.members[name]
        low, high = bucket_range(name)
        rows.append(
            {
                "bucket": name,
                "count_min": low,
                "count_max": high,
                "tokens": len(mask),
                "median_eff_lr": rate_stats.median(eff_lr, mask),
                "median_updates": rate_stats.median(updates, mask),
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


def projector_data(
    spec: TelemetrySpec, table: torch.Tensor, eff_lr: np.ndarray, max_tokens: int
) -> tuple[np.ndarray, list[list[str]], list[str]]:
    """(vectors, metadata rows, header) of the `max_tokens` most frequent tokens' rows for
    TensorBoard's Projector: token, count, bucket, eff_lr and its log10 (colour by that one:
    the rates span decades) to colour and search by."""
    import torch

    ids = np.argsort(-spec.counts, kind="stable")[:max_tokens]
    ids = ids[spec.counts[ids] >= 1]
    vectors = table.detach()[torch.from_numpy(ids).to(table.device)].float().cpu().numpy()
    # Python numbers: NumPy scalars cost 20 us a row here (0.1 s for 5,000 rows)
    rows = [
        [
            spec.tokens[i],
            str(count),
            bucket,
            _rate_text(rate),
            f"{math.log10(rate):.4f}" if math.isfinite(rate) and rate > 0 else "",
        ]
        for i, count, bucket, rate in zip(
            ids.tolist(),
            spec.counts[ids].tolist(),
            spec.buckets[ids].tolist(),
            eff_lr[ids].tolist(),
        )
    ]
    return vectors, rows, ["token", "count", "bucket", "eff_lr", "log10_eff_lr"]


def coordinate_spread(
    optimizer: RowOptimizer, table: torch.Tensor, num_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) over each token row's coordinate rates, NaN-free where defined; read in
    chunks so a large vocabulary never materialises all its coordinates at once."""
    import torch

    low, high = np.full(num_tokens, np.nan), np.full(num_tokens, np.nan)
    for start in range(0, num_tokens, COORD_CHUNK_ROWS):
        stop = min(start + COORD_CHUNK_ROWS, num_tokens)
        coords = optimizer.effective_lr_coords(table, slice(start, stop))
        defined = ~torch.isnan(coords).all(dim=1)
        inf = torch.tensor(float("inf"), dtype=coords.dtype, device=coords.device)
        low[start:stop] = (
            torch.where(defined, coords.nan_to_num(inf).amin(dim=1), torch.nan).cpu().numpy()
        )
        high[start:stop] = (
            torch.where(defined, coords.nan_to_num(-inf).amax(dim=1), torch.nan).cpu().numpy()
        )
    return low, high


def _rate_text(rate: float) -> str:
    return f"{rate:.9g}" if math.isfinite(rate) else ""


def write_token_stats(
    path: Path,
    spec: TelemetrySpec,
    eff_lr: np.ndarray,
    updates: np.ndarray,
    coord_spread: tuple[np.ndarray, np.ndarray],
) -> None:
    """token_stats.csv: id, token, count, updates, eff_lr, bucket, eff_lr_coord_min,
    eff_lr_coord_max (rates empty when never updated)."""
    low, high = coord_spread
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(TOKEN_STATS_COLUMNS)
        # Python floats and ints: a NumPy scalar per cell costs 3x the formatting (27k rows)
        out.writerows(
            [i, token, count, n, _rate_text(rate), bucket, _rate_text(lo), _rate_text(hi)]
            for i, (token, count, n, rate, bucket, lo, hi) in enumerate(
                zip(
                    spec.tokens,
                    spec.counts.tolist(),
                    updates.tolist(),
                    eff_lr.tolist(),
                    spec.buckets,
                    low.tolist(),
                    high.tolist(),
                )
            )
        )
