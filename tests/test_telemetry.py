"""Telemetry math: slopes, buckets, rare/common summaries, the snapshot schedule, the
custom-scalars layout and the coordinate spread, on data with known answers."""

from __future__ import annotations

import itertools
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from nlp_adagrad.config import TelemetryConfig
from nlp_adagrad.fits import binned_fit
from nlp_adagrad.optim import Adagrad
from nlp_adagrad.telemetry import (
    LOG10_BIN_WIDTH,
    bucket_label,
    coordinate_spread,
    count_buckets,
    custom_layout,
    histograms_due,
    make_spec,
    next_snapshot,
    read_snapshot,
    snapshot_due,
    snapshot_steps,
    summarize,
    write_snapshot,
)
from nlp_adagrad.writer import NullWriter, histograms_summary


def test_binned_fit_recovers_a_power_law_whatever_the_token_mix():
    rng = np.random.default_rng(0)
    # many rare tokens, few common ones: binning keeps the rare ones from deciding alone
    x = np.floor(rng.pareto(1.0, 20000) + 1)
    y = 3.0 * x**-0.5 * np.exp(rng.normal(0, 0.05, len(x)))
    fit = binned_fit(x, y)
    assert fit.slope == pytest.approx(-0.5, abs=0.02)
    assert np.exp(fit.intercept) == pytest.approx(3.0, rel=0.05)


def test_binned_fit_ignores_missing_rates_and_needs_two_bins():
    x = np.array([1, 10, 100, 5])
    y = np.array([1.0, 0.1, 0.01, np.nan])
    assert binned_fit(x, y).slope == pytest.approx(-1.0)
    assert binned_fit(np.array([3, 3]), np.array([1.0, 2.0])) is None


def test_count_buckets_are_decades():
    assert count_buckets(np.array([0, 1, 9, 10, 99, 100, 12345])).tolist() == [
        "unseen",
        "count_1e0",
        "count_1e0",
        "count_1e1",
        "count_1e1",
        "count_1e2",
        "count_1e4",
    ]


def test_summary_separates_rare_from_common():
    tokens = ["[UNK]"] + [f"t{i}" for i in range(1, 301)]
    counts = np.array([0] + [1000 - i for i in range(1, 101)] + [3] * 200)
    cfg = TelemetryConfig(
        rare_max_count=5, common_top_k=100, follow_per_bucket=2, tokens=["t7", "nope"]
    )
    spec, missing = make_spec(tokens, counts, cfg, seed=0)
    assert missing == ["nope"] and spec.followed["t7"] == 7
    assert spec.common.sum() == 100 and spec.rare.sum() == 200
    eff_lr = np.where(spec.rare, 10.0, 0.5)
    eff_lr[0] = np.nan
    updates = np.where(counts > 0, 1, 0)
    out = summarize(spec, eff_lr, updates)
    assert out["eff_lr/rare"] == 10.0 and out["eff_lr/common"] == 0.5
    assert out["eff_lr/rare_to_common"] == 20.0
    assert out["eff_lr/bucket/count_1e0"] == 10.0
    # followed tokens: seeded sample per bucket, the same every time
    assert make_spec(tokens, counts, cfg, seed=0)[0].followed == spec.followed


class RowsRecorder:
    """A stand-in optimizer: eff_lr = 1/sqrt(updates), and a record of the rows each read asks."""

    def __init__(self, updates: np.ndarray) -> None:
        self.updates = torch.from_numpy(updates.astype(np.int32))
        self.asked: list[int] = []

    def effective_lr(self, p, rows):
        chosen = self.updates[rows]
        self.asked.append(len(chosen))
        rate = chosen.double().clamp(min=1).rsqrt()
        return rate.masked_fill(chosen == 0, float("nan"))

    def row_updates(self, p):
        return self.updates

    def updated_rows(self, p, limit):
        return int((self.updates[:limit] > 0).sum())

    def rates_and_updates(self, p, rows):
        return self.effective_lr(p, rows), self.updates[rows]

    def has_coordinate_rates(self, p):
        return False


def zipf_vocabulary(num_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = np.sort(np.minimum(rng.zipf(1.3, num_tokens), 10**6))[::-1].copy()
    updates = np.maximum(counts // 3, 0) + rng.integers(0, 2, num_tokens)
    tokens = [f"t{i}" for i in range(num_tokens)]
    return tokens, counts, updates


def test_snapshots_of_a_large_vocabulary_read_a_sample_that_tracks_the_exact_values():
    tokens, counts, updates = zipf_vocabulary(200_000)
    cfg = TelemetryConfig(sample_size=5_000, tokens=["t123456"])
    spec, _ = make_spec(tokens, counts, cfg, seed=0)
    optimizer, table = RowsRecorder(updates), torch.empty(len(tokens), 1)
    sampled_reading = read_snapshot(spec, optimizer, table)
    exact_reading = read_snapshot(spec, optimizer, table, exact=True)
    sampled = write_snapshot(NullWriter(), spec, sampled_reading, 1)
    exact = write_snapshot(NullWriter(), spec, exact_reading, 1)
    eff_lr_s, eff_lr = sampled_reading.eff_lr, exact_reading.eff_lr
    shown = len(spec.full.common) + len(spec.followed)
    assert optimizer.asked[0] <= 5_000 + shown and optimizer.asked[1] == len(tokens)
    # every bucket is represented; small buckets whole, so their medians are exact
    for name in spec.bucket_names:
        assert len(spec.sample.members[name]) > 0
        if len(spec.members[name]) < 100:
            assert sampled[f"eff_lr/bucket/{name}"] == exact[f"eff_lr/bucket/{name}"]
    assert sampled["eff_lr/common"] == exact["eff_lr/common"]
    assert sampled["eff_lr/rare"] == pytest.approx(exact["eff_lr/rare"], rel=0.05)
    assert sampled["eff_lr/slope_vs_updates"] == pytest.approx(-0.5, abs=0.02)
    assert exact["eff_lr/slope_vs_updates"] == pytest.approx(-0.5, abs=0.02)
    assert sampled["eff_lr/tokens_updated"] == exact["eff_lr/tokens_updated"]  # counted exactly
    for token, k in spec.sample.followed.items():  # followed tokens: their own values
        np.testing.assert_equal(eff_lr_s[k], eff_lr[spec.followed[token]])
    assert "t123456" in spec.sample.followed
    again, _ = make_spec(tokens, counts, cfg, seed=0)
    np.testing.assert_array_equal(again.sample.ids, spec.sample.ids)  # seeded


def test_weighted_bins_give_a_stratified_sample_the_population_slope():
    # two strata over the same x range, one 100x larger and cut to the other's size in the
    # sample: unweighted, the small stratum would pull every bin mean halfway to its own line
    rng = np.random.default_rng(1)
    big_x, small_x = np.exp(rng.uniform(0, 7, 50_000)), np.exp(rng.uniform(0, 7, 500))
    x = np.concatenate([big_x, small_x])
    y = np.concatenate([2 * big_x**-0.5, small_x**-1.0])
    keep = np.concatenate([rng.choice(50_000, 500, replace=False), np.arange(50_000, 50_500)])
    weights = np.where(keep < 50_000, 100.0, 1.0)
    population = binned_fit(x, y).slope
    assert binned_fit(x[keep], y[keep], weights=weights).slope == pytest.approx(
        population, abs=0.02
    )
    assert abs(binned_fit(x[keep], y[keep]).slope - population) > 0.1  # what weights prevent


def test_snapshots_are_log_spaced_at_the_start_then_every_n_steps():
    due = [step for step in range(1, 301) if snapshot_due(step, every=50)]
    assert due == [1, 2, 3, 5, 10, 20, 50, 100, 150, 200, 250, 300]
    early = [s for s in range(1, 2001) if snapshot_due(s, every=1000)]
    assert early == [1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    assert not any(snapshot_due(s, every=0) for s in range(1, 100))  # 0: off
    with_histograms = [s for s in due if histograms_due(s, every=50, histogram_every=2)]
    assert with_histograms == [1, 10, 100, 200, 300]
    # the schedule the fused steps get, listed without asking each step: the same steps
    for every, first, steps in itertools.product(
        (0, 1, 3, 7, 50, 1000, 10**6), range(130), (1, 5, 64, 3000)
    ):
        expected = [s for s in range(first, first + steps) if snapshot_due(s, every)]
        assert snapshot_steps(first, first + steps, every) == expected, (every, first, steps)
    # and the next one after any step, for the calls of fused steps that end on it
    for every in (1, 3, 7, 50, 1000):
        for step in range(0, 2500):
            expected = next(s for s in itertools.count(step + 1) if snapshot_due(s, every))
            assert next_snapshot(step, every) == expected, (every, step)
    assert next_snapshot(10, every=0) is None


class Recorder(NullWriter):
    def __init__(self):
        self.tags = {}

    def scalars(self, values, step):
        self.tags.update(values)

    def histograms(self, values, step, width):
        self.tags.update({tag: np.asarray(v) for tag, v in values.items()})


def test_snapshot_writes_log10_medians_and_coordinate_histograms_per_bucket():
    tokens = ["[UNK]"] + [f"t{i}" for i in range(1, 41)]
    counts = np.array([0] + [1000] * 20 + [2] * 20)
    spec, _ = make_spec(tokens, counts, TelemetryConfig(common_top_k=20), seed=0)
    table = nn.Parameter(torch.zeros(41, 3))
    opt = Adagrad([table], lr=1.0, eps=0.0)
    g = np.zeros((41, 3), np.float32)
    g[1:21] = [1.0, 2.0, 2.0]  # common rows: mean square 3, coordinate rates 1, 1/2, 1/2
    g[21:] = [0.1, 0.0, 0.0]  # rare rows: one coordinate only
    table.grad = torch.from_numpy(g).to_sparse(1)  # rows 1-40: one sparse row each
    opt.step()
    writer = Recorder()
    summary = write_snapshot(writer, spec, read_snapshot(spec, opt, table), step=1)
    assert summary["eff_lr/common"] == pytest.approx(1 / 3**0.5)
    assert summary["eff_lr/rare"] == pytest.approx(1 / (0.01 / 3) ** 0.5)
    assert writer.tags["eff_lr_log10/common"] == pytest.approx(np.log10(1 / 3**0.5))
    coords = writer.tags["eff_lr_log10_coord_hist/count_1e3"]
    assert sorted(set(np.round(coords, 6))) == pytest.approx([np.log10(0.5), 0.0])
    # a coordinate that never got a gradient has no rate: NaN, which no histogram counts
    rare = writer.tags["eff_lr_log10_coord_hist/count_1e0"]
    assert np.allclose(rare[np.isfinite(rare)], 1.0) and np.isnan(rare).sum() == 2 * 20
    assert histograms_summary({"rare": rare}, LOG10_BIN_WIDTH).value[0].histo.num == 20
    low, high = coordinate_spread(opt, table, spec.num_tokens)
    assert low[1] == pytest.approx(0.5) and high[1] == pytest.approx(1.0)
    assert low[21] == high[21] == pytest.approx(10.0)
    assert np.isnan(low[0]) and np.isnan(high[0])


def test_custom_layout_charts_exactly_rare_and_common_and_groups_followed_tokens():
    tokens, counts, _ = zipf_vocabulary(3000)
    spec, _ = make_spec(tokens, counts, TelemetryConfig(tokens=["t5"]), seed=0)
    layout = custom_layout(spec)
    charts = {title: tags for charts in layout.values() for title, (_, tags) in charts.items()}
    titles = list(layout["Per-token effective learning rate"])
    assert "rare" in titles[0] and "common" in titles[0] and "log10" in titles[0]
    scalar_tags = [
        "eff_lr_log10/rare", "eff_lr_log10/common", "eff_lr/rare", "eff_lr/rare_to_common",
        "eff_lr_log10/bucket/count_1e0", *(f"eff_lr/token/{t}" for t in spec.followed),
    ]  # fmt: skip
    # custom scalars match a chart's regexes at the start of each tag: exactly two series
    first = [t for t in scalar_tags if any(re.match(r, t) for r in charts[titles[0]])]
    assert first == ["eff_lr_log10/rare", "eff_lr_log10/common"]
    assert len(set(charts)) == sum(len(c) for c in layout.values())  # distinct titles
    followed = layout["Followed tokens: eff_lr, by training-count bucket"]
    shown = [re.sub(r"\\", "", tag)[1:-1] for (_, tags) in followed.values() for tag in tags]
    assert sorted(shown) == sorted(f"eff_lr/token/{t}" for t in spec.followed)
    t5_charts = [title for title, (_, tags) in followed.items() if any("t5$" in t for t in tags)]
    assert t5_charts == [f"followed tokens, {bucket_label(spec.buckets[5])}"]


def _figure_data() -> list:
    from nlp_adagrad.figures import FigureData

    rng = np.random.default_rng(0)
    counts = rng.zipf(1.5, 2_000).astype(float)
    updates = np.minimum(counts, 50)
    return [
        FigureData(counts, updates, 1 / np.sqrt(updates), 10, "a figure", theory=True),
        FigureData(counts, updates, np.full(2_000, np.nan), 10, "no rates", theory=False),
    ]


def test_the_figure_worker_draws_what_this_process_draws():
    from nlp_adagrad import figures

    here = figures.draw_later(_figure_data())()  # no worker: drawn here
    with figures.background():
        assert figures._worker is not None
        pid = figures._worker.process.pid
        there = figures.draw_later(_figure_data())()
        assert figures._worker is None  # used once
    assert there == here and here[0].startswith(b"\x89PNG")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone


def test_a_failed_figure_worker_still_gives_the_figures(caplog):
    from nlp_adagrad import figures

    with figures.background():
        figures._worker.process.kill()
        figures._worker.process.wait()
        got = figures.draw_later(_figure_data())()
    assert got == figures.draw_later(_figure_data())()
    assert "the figure worker failed" in caplog.text
