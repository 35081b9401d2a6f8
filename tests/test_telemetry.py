"""Telemetry math: slopes, buckets and rare/common summaries on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nlp_adagrad.config import TelemetryConfig
from nlp_adagrad.telemetry import binned_fit, count_buckets, log_snapshot, make_spec, summarize
from nlp_adagrad.writer import NullWriter


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
    sampled, eff_lr_s, _ = log_snapshot(NullWriter(), spec, optimizer, table, 1)
    exact, eff_lr, _ = log_snapshot(NullWriter(), spec, optimizer, table, 1, exact=True)
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
